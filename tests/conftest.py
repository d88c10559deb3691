"""Shared test configuration: hypothesis profiles, cached compiled VJPs, one comparator."""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, settings

from funcgrad.registry import PRIMITIVES

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# funcgrad train/check turn on JAX's persistent compilation cache (and, called in-process,
# keep it on for the rest of that test process): the suite keeps its own per-user cache,
# so it never writes to the user's ~/.cache and a second run of the suite loads its
# programs instead of compiling them. FUNCGRAD_COMPILATION_CACHE=0 turns it off.
os.environ.setdefault("FUNCGRAD_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"funcgrad-tests-{getattr(os, 'getuid', lambda: 0)()}", "jax"))


def builtin_names() -> list[str]:
    """The built-in primitives, in registry order (user primitives registered by other
    tests or examples are checked where they are defined)."""
    return [n for n, p in PRIMITIVES.items()
            if p.fn.__module__.startswith("funcgrad.primitives.")]


def float_positions(prim):
    return tuple(i for i, a in enumerate(prim.args) if a.kind == "float")


def only_args(fn, args, positions):
    """``fn`` as a function of the arguments at ``positions`` only, the others fixed."""
    def g(*values):
        full = list(args)
        for i, v in zip(positions, values, strict=True):
            full[i] = v
        return fn(*full)
    return g


def mismatches(actual, expected, rtol: float, atol: float) -> np.ndarray:
    """Boolean mask of the elements where ``actual`` does not match ``expected``.

    Finite expected values allow ``atol * max(1, max finite |expected|) + rtol * |e|``.
    Non-finite expected values must match exactly: the same infinity (sign included), NaN
    where NaN. A non-finite actual value where the expected one is finite never matches.
    """
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    finite = np.isfinite(e)
    scale = max(1.0, float(np.max(np.abs(e[finite]), initial=0.0)))
    with np.errstate(invalid="ignore"):
        close = np.abs(a - e) <= atol * scale + rtol * np.abs(e)
    same_nonfinite = (np.isnan(a) & np.isnan(e)) | (np.isinf(e) & (a == e))
    return np.where(finite, close & np.isfinite(a), same_nonfinite) == 0


def assert_close(actual, expected, rtol: float, atol: float, what: str) -> None:
    """Raise naming the first mismatching element (see :func:`mismatches`)."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    bad = mismatches(a, e, rtol, atol)
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: element {i} expected {e[i]!r}, got {a[i]!r}")


@functools.cache
def compiled_vjps(name: str, oracle64: bool = False):
    """A jitted ``(args, ct) -> (out, out_ref, vjp, vjp_ref)`` for one primitive.

    jit caches one executable per shape/dtype signature, so tests and hypothesis examples
    that revisit a signature pay no compile. The reference runs in float32 for float16 and
    bfloat16 inputs, and in float64 (call inside ``jax.enable_x64``) when ``oracle64``, so
    the rule is judged against the true value rather than another rounded estimate.
    """
    prim = PRIMITIVES[name]
    pos = float_positions(prim)

    def both(args, ct):
        def restrict(f):
            return only_args(f, args, pos)

        diff = [args[i] for i in pos]
        out, pull = jax.vjp(restrict(prim.call), *diff)
        if oracle64:
            ref_diff = [d.astype(jnp.float64) for d in diff]
        else:
            ref_diff = [d.astype(jnp.float32) if d.dtype.itemsize < 4 else d for d in diff]
        out_ref, pull_ref = jax.vjp(restrict(prim.call_reference), *ref_diff)
        return out, out_ref, pull(ct.astype(out.dtype)), pull_ref(ct.astype(out_ref.dtype))

    return jax.jit(both)


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"funcgrad_example_{name}",
                                                  EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
