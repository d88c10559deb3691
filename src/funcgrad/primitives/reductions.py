"""Reductions ``sum`` and ``mean`` with hand-written VJPs.

The transpose of a sum is a broadcast: every input element receives the cotangent of the
sum it contributed to. ``mean`` divides by the number of reduced elements. Neither saves a
residual: the backward rules read the input's shape from ``primals``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ._define import primitive

__all__ = ["sum", "mean"]

Axis = int | tuple[int, ...] | None


def _normalize_axis(name: str, axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{name}: argument 'axis' must be an int, a tuple of ints or None; "
                            f"got {axis!r}")
        if not -ndim <= a < max(ndim, 1) or (ndim == 0 and a not in (0, -1)):
            raise ValueError(
                f"{name}: argument 'axis' {a} is out of range for an input with ndim={ndim}"
            )
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: argument 'axis' has repeated entries: {axis!r}")
    return tuple(sorted(out)) if ndim else ()


def _expand(g: jax.Array, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool):
    """Broadcast a reduced cotangent back to the input's shape."""
    if not keepdims:
        g = jnp.expand_dims(g, axes) if axes else g
    return jnp.broadcast_to(g, shape)


def _reduction_check(name: str):
    def check(x, axis, keepdims):
        axes = _normalize_axis(name, axis, x.ndim)
        if name == "mean" and math.prod(x.shape[a] for a in axes) == 0:
            raise ValueError(f"mean: cannot average over an empty axis; x.shape={x.shape}, "
                             f"axis={axis!r}")
        return {"axis": axes, "keepdims": bool(keepdims)}
    return check


_REDUCTION = dict(static=("axis", "keepdims"), category="reduction", residuals="none")


# --------------------------------------------------------------------------- sum
def _sum_bwd(_, g, *, axis, keepdims, primals):
    (x,) = primals
    return (_expand(g, x.shape, axis, keepdims),)


@primitive(bwd=_sum_bwd, reference=jnp.sum, check=_reduction_check("sum"), **_REDUCTION,
           formula="d(sum x)/dx_i = 1")
def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> jax.Array:  # noqa: A001
    """Sum of elements over ``axis``.

    Every element gets the cotangent of the sum it fed; the shape is static.

    Args:
        x: input array.
        axis: an int, a tuple of ints, or ``None`` for all axes.
        keepdims: keep reduced axes with size 1.

    Returns:
        The sum.

    Examples:
        >>> import jax.numpy as jnp
        >>> sum.vjp(jnp.array([1.0, 2.0, 3.0]))
        ([1.0, 1.0, 1.0],)
    """
    return jnp.sum(x, axis=axis, keepdims=keepdims), None


# -------------------------------------------------------------------------- mean
def _mean_bwd(_, g, *, axis, keepdims, primals):
    (x,) = primals
    n = math.prod(x.shape[a] for a in axis)
    wide = jnp.promote_types(g.dtype, jnp.float32)  # n itself may not fit in float16
    return ((_expand(g, x.shape, axis, keepdims).astype(wide) / n).astype(g.dtype),)


@primitive(bwd=_mean_bwd, reference=jnp.mean, check=_reduction_check("mean"), **_REDUCTION,
           formula="d(mean x)/dx_i = 1/n",
           precision="divides in float32 for float16/bfloat16: n >= 65520 is inf in float16")
def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> jax.Array:
    """Arithmetic mean over ``axis``.

    ``n`` is the number of reduced elements. For float16 and bfloat16 inputs the division
    happens in float32 and the cotangent is rounded once: ``n = 70000`` cast to float16 is
    ``inf``, which would make every gradient ``0``.

    Args:
        x: input array.
        axis: an int, a tuple of ints, or ``None`` for all axes.
        keepdims: keep reduced axes with size 1.

    Returns:
        The mean.

    Examples:
        >>> import jax.numpy as jnp
        >>> mean.vjp(jnp.array([1.0, 2.0, 3.0, 4.0]))
        ([0.25, 0.25, 0.25, 0.25],)
    """
    return jnp.mean(x, axis=axis, keepdims=keepdims), None
