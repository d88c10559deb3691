"""Shared test configuration: hypothesis profiles and cached, compiled comparators."""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, settings

from funcgrad.registry import PRIMITIVES
from funcgrad.testing import only_args

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


def float_positions(prim):
    return tuple(i for i, a in enumerate(prim.args) if a.kind == "float")


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
