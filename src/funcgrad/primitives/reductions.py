"""Reductions ``sum`` and ``mean`` with hand-written VJPs.

The transpose of a sum is a broadcast: every input element receives the cotangent of the
sum it contributed to. ``mean`` divides by the number of reduced elements.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._broadcast import (
    as_float,
    run_rule,  # noqa: F401  (the docstring examples run the rules with it)
)

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


# --------------------------------------------------------------------------- sum
def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> jax.Array:  # noqa: A001
    """Sum of elements over ``axis``.

    Rule: ``x̄ = broadcast(ḡ)`` back to ``x.shape`` (every element gets the cotangent of
    the sum it fed). Residuals: none; the shape is static.

    Args:
        x: input array.
        axis: an int, a tuple of ints, or ``None`` for all axes.
        keepdims: keep reduced axes with size 1.

    Returns:
        The sum.

    Examples:
        >>> run_rule(_sum_fwd, _sum_bwd, [1.0, 2.0, 3.0], static=((0,), False, (3,)))
        [[1.0, 1.0, 1.0]]
    """
    x = as_float("sum", "x", x)
    axes = _normalize_axis("sum", axis, x.ndim)
    return _sum(axes, bool(keepdims), x.shape, x)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _sum(axes, keepdims, shape, x):
    return jnp.sum(x, axis=axes, keepdims=keepdims)


def _sum_fwd(axes, keepdims, shape, x):
    return jnp.sum(x, axis=axes, keepdims=keepdims), None


def _sum_bwd(axes, keepdims, shape, _, g):
    return (_expand(g, shape, axes, keepdims),)


_sum.defvjp(_sum_fwd, _sum_bwd)


def sum_reference(x, axis=None, keepdims=False):
    return jnp.sum(x, axis=axis, keepdims=keepdims)


# -------------------------------------------------------------------------- mean
def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> jax.Array:
    """Arithmetic mean over ``axis``.

    Rule: ``x̄ = broadcast(ḡ) / n`` where ``n`` is the number of reduced elements.
    Residuals: none.

    Args:
        x: input array.
        axis: an int, a tuple of ints, or ``None`` for all axes.
        keepdims: keep reduced axes with size 1.

    Returns:
        The mean.

    Examples:
        >>> run_rule(_mean_fwd, _mean_bwd, [1.0, 2.0, 3.0, 4.0], static=((0,), False, (4,)))
        [[0.25, 0.25, 0.25, 0.25]]
    """
    x = as_float("mean", "x", x)
    axes = _normalize_axis("mean", axis, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    if n == 0:
        raise ValueError(f"mean: cannot average over an empty axis; x.shape={x.shape}, "
                         f"axis={axis!r}")
    return _mean(axes, bool(keepdims), x.shape, x)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _mean(axes, keepdims, shape, x):
    return jnp.mean(x, axis=axes, keepdims=keepdims)


def _mean_fwd(axes, keepdims, shape, x):
    return jnp.mean(x, axis=axes, keepdims=keepdims), None


def _mean_bwd(axes, keepdims, shape, _, g):
    n = 1
    for a in axes:
        n *= shape[a]
    return (_expand(g, shape, axes, keepdims) / jnp.asarray(n, g.dtype),)


_mean.defvjp(_mean_fwd, _mean_bwd)


def mean_reference(x, axis=None, keepdims=False):
    return jnp.mean(x, axis=axis, keepdims=keepdims)
