"""Shared state of one primitive's battery: host-side samples, rows, error text."""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .compare import Comparison
from .vjp import _deferred, check_vjp

__all__ = ["Row"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One check of one primitive.

    Attributes:
        primitive: the primitive's name.
        check: the check's name (one of :data:`CHECKS`).
        ok: whether it passed.
        detail: on failure the worst element or the error; on success a short summary.
    """

    primitive: str
    check: str
    ok: bool
    detail: str = ""


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def _draw(domain: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if domain == "unit":
        return rng.uniform(size=shape)
    x = rng.standard_normal(shape)
    if domain == "positive":
        return 0.5 + np.abs(x)
    if domain == "nonzero":
        return np.where(x >= 0, 0.5 + x, x - 0.5)
    return x


def _sample(prim: Any, seed: int, shapes: Any, dtype: Any) -> tuple:
    """Arguments inside each argument's domain, like ``registry.sample_args``, drawn with
    NumPy: no device program is compiled per sample shape."""
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    for arg, shape in zip(prim.args, shapes, strict=True):
        if arg.kind == "labels":
            num = prim.sample_shapes[0][0][-1] if not out else jax.tree.leaves(out[0])[0].shape[-1]
            out.append(jax.device_put(rng.integers(0, num, size=shape).astype(np.int32)))
            continue
        leaves, treedef = jax.tree.flatten(shape, is_leaf=_is_shape)
        drawn = [jax.device_put(_draw(arg.domain, s, rng).astype(jnp.dtype(dtype))) for s in leaves]
        out.append(jax.tree.unflatten(treedef, drawn))
    return tuple(out)


def _error_text(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    first = next((m for m in msg if m.strip()), "")
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"crashed: {type(exc).__name__}: {first[:400]}{where}"


def _summary(c: Comparison) -> str:
    if not c.ok:
        text = str(c.worst) if c.worst is not None else ""
        return "; ".join(t for t in (text, c.note) if t)
    return f"max abs err {c.max_abs_err:.1e}"


class _Battery:
    """Shared state of one primitive's checks: samples, leaves, the rows found so far."""

    def __init__(self, prim: Any, seed: int):
        self.prim, self.seed, self.rows = prim, seed, {}
        self.names = [a.name for a in prim.args]
        self.argnums = [i for i, a in enumerate(prim.args) if a.kind == "float"]
        self.ref = prim.call_reference if getattr(prim, "reference", None) is not None else None

    def args(self, dtype: Any, shapes: Any = None, seed: int | None = None) -> tuple:
        shapes = self.prim.sample_shapes[0] if shapes is None else shapes
        return _sample(self.prim, self.seed if seed is None else seed, shapes, dtype)

    def put(self, check: str, ok: bool, detail: str = "") -> None:
        old = self.rows.get(check)
        if old is None or (old.ok and not ok):
            self.rows[check] = Row(self.prim.name, check, bool(ok), detail)

    def run(self, checks: Iterable[str], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a crashing rule is a failing row, never an exception
            for c in checks:
                self.put(c, False, _error_text(exc))

    def vjp(self, fn: Any, *, deferred: bool = False, **kw: Any):
        """``check_vjp`` with this battery's arguments, names and seed (``deferred``: as
        ``(program, inputs, verdict)``, float64 only)."""
        return (_deferred if deferred else check_vjp)(
            fn, *kw.pop("args"), argnums=self.argnums, argnames=self.names, seed=self.seed, **kw)

    def unary_elementwise(self) -> bool:
        if len(self.prim.args) != 1 or self.argnums != [0]:
            return False
        x = jax.ShapeDtypeStruct((3,), jnp.float32)
        out = jax.eval_shape(self.prim.call, x)
        return getattr(out, "shape", None) == (3,)


def _size(shapes: Any) -> int:
    try:
        return sum(int(np.prod(s)) for s in shapes if isinstance(s, tuple))
    except TypeError:
        return 0


