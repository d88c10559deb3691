"""Linear maps: ``matmul`` and the fully connected layer ``dense``."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._broadcast import broadcast_shapes, promote_floats, unbroadcast

__all__ = ["matmul", "dense"]


def _mT(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


# ------------------------------------------------------------------------ matmul
def matmul(a: Any, b: Any) -> jax.Array:
    """Matrix product ``a @ b``, 2-D or batched with broadcast batch dimensions.

    Rule: for ``C = A B``, ``Ā = C̄ Bᵀ`` and ``B̄ = Aᵀ C̄``, each summed over broadcast batch
    dimensions. Residuals: ``a`` and ``b``. A 1-D operand is treated as a row (``a``) or
    column (``b``) vector and that axis is dropped from the result, as in ``jnp.matmul``.

    Args:
        a: array of shape ``(..., n, k)`` or ``(k,)``.
        b: array of shape ``(..., k, m)`` or ``(k,)``.

    Returns:
        The product, shape ``(..., n, m)``.

    Raises:
        ValueError: when the contracted dimensions differ or batch dimensions do not
            broadcast; the message names both shapes.

    Examples:
        >>> import jax.numpy as jnp
        >>> matmul(jnp.ones((2, 3)), jnp.ones((3, 4))).shape
        (2, 4)
    """
    a, b = promote_floats("matmul", ("a", "b"), a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: operands must have at least 1 dimension; got a.shape={a.shape}, "
            f"b.shape={b.shape}. Use funcgrad.mul for scalars."
        )
    squeeze = []
    if a.ndim == 1:
        a = a[None, :]
        squeeze.append(-2)
    if b.ndim == 1:
        b = b[:, None]
        squeeze.append(-1)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"matmul: contracted dimensions differ: a.shape={a.shape} has {a.shape[-1]} "
            f"columns but b.shape={b.shape} has {b.shape[-2]} rows (expected a (..., n, k) "
            "and b (..., k, m))."
        )
    broadcast_shapes("matmul (batch dimensions)", ("a", "b"), a.shape[:-2], b.shape[:-2])
    out = _matmul(a.shape, b.shape, a, b)
    if squeeze:
        out = jnp.squeeze(out, axis=tuple(squeeze))
    return out


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _matmul(ashape, bshape, a, b):
    return jnp.matmul(a, b)


def _matmul_fwd(ashape, bshape, a, b):
    return jnp.matmul(a, b), (a, b)


def _matmul_bwd(ashape, bshape, res, g):
    a, b = res
    return unbroadcast(jnp.matmul(g, _mT(b)), ashape), unbroadcast(jnp.matmul(_mT(a), g), bshape)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul_reference(a, b):
    return jnp.matmul(a, b)


# ------------------------------------------------------------------------- dense
def dense(x: Any, w: Any, b: Any) -> jax.Array:
    """Fully connected layer ``x @ w + b``.

    Rule: with ``x`` flattened to rows ``X`` (all leading axes), ``x̄ = ḡ wᵀ``,
    ``w̄ = Xᵀ Ḡ`` and ``b̄ = Σ_rows ḡ``. Residuals: ``x`` and ``w``.

    Args:
        x: inputs of shape ``(..., in)``.
        w: weights of shape ``(in, out)``.
        b: bias of shape ``(out,)``.

    Returns:
        Outputs of shape ``(..., out)``.

    Raises:
        ValueError: when ``w`` is not ``(in, out)`` for ``x``'s last dimension, or ``b``
            is not ``(out,)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> dense(jnp.ones((4, 3)), jnp.ones((3, 2)), jnp.zeros(2)).tolist()
        [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]
    """
    x, w, b = promote_floats("dense", ("x", "w", "b"), x, w, b)
    if x.ndim < 1:
        raise ValueError(f"dense: argument 'x' must have shape (..., in); got x.shape={x.shape}")
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"dense: argument 'w' must have shape (in, out) = ({x.shape[-1]}, out) to match "
            f"x.shape={x.shape}; got w.shape={w.shape}"
        )
    if b.shape != (w.shape[1],):
        raise ValueError(
            f"dense: argument 'b' must have shape (out,) = ({w.shape[1]},) to match "
            f"w.shape={w.shape}; got b.shape={b.shape}"
        )
    return _dense(x, w, b)


@jax.custom_vjp
def _dense(x, w, b):
    return jnp.matmul(x, w) + b


def _dense_fwd(x, w, b):
    return jnp.matmul(x, w) + b, (x, w)


def _dense_bwd(res, g):
    x, w = res
    rows = g.reshape(-1, g.shape[-1])
    gx = jnp.matmul(g, w.T)
    gw = jnp.matmul(x.reshape(-1, x.shape[-1]).T, rows)
    gb = jnp.sum(rows, axis=0)
    return gx, gw, gb


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_reference(x, w, b):
    return jnp.matmul(x, w) + b
