"""Linear maps: ``matmul`` and the fully connected layer ``dense``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._broadcast import broadcast_shapes, unbroadcast
from ._define import primitive

__all__ = ["matmul", "dense"]


def _mT(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


# ------------------------------------------------------------------------ matmul
def _matmul_check(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: operands must have at least 1 dimension; got a.shape={a.shape}, "
            f"b.shape={b.shape}. Use funcgrad.mul for scalars."
        )
    a2 = a.shape if a.ndim > 1 else (1, *a.shape)
    b2 = b.shape if b.ndim > 1 else (*b.shape, 1)
    if a2[-1] != b2[-2]:
        raise ValueError(
            f"matmul: contracted dimensions differ: a.shape={a2} has {a2[-1]} "
            f"columns but b.shape={b2} has {b2[-2]} rows (expected a (..., n, k) "
            "and b (..., k, m))."
        )
    broadcast_shapes("matmul (batch dimensions)", ("a", "b"), a2[:-2], b2[:-2])


def _matmul_bwd(res, g, *, primals):
    a, b = res
    if a.ndim == 1:  # a row vector: its axis was dropped from the result
        a, g = a[None, :], jnp.expand_dims(g, -2)
    if b.ndim == 1:  # a column vector
        b, g = b[:, None], g[..., None]
    ga, gb = jnp.matmul(g, _mT(b)), jnp.matmul(_mT(a), g)
    sa, sb = (p.shape for p in primals)
    return (unbroadcast(ga, a.shape).reshape(sa), unbroadcast(gb, b.shape).reshape(sb))


@primitive(bwd=_matmul_bwd, reference=jnp.matmul, check=_matmul_check, category="linear",
           formula="d(AB): A_bar = G B^T, B_bar = A^T G", residuals="a, b",
           sample_shapes=(((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                          ((1, 3, 4), (2, 4, 2)), ((4,), (4, 3))))
def matmul(a: Any, b: Any) -> jax.Array:
    """Matrix product ``a @ b``, 2-D or batched with broadcast batch dimensions.

    Each cotangent is summed over the batch dimensions its operand was broadcast along. A
    1-D operand is treated as a row (``a``) or column (``b``) vector and that axis is
    dropped from the result, as in ``jnp.matmul``.

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
        >>> matmul.vjp(jnp.array([[1.0, 2.0]]), jnp.array([[3.0], [4.0]]))
        ([[3.0, 4.0]], [[1.0], [2.0]])
    """
    return jnp.matmul(a, b), (a, b)


# ------------------------------------------------------------------------- dense
def _dense_check(x, w, b):
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


def _dense_bwd(res, g):
    x, w = res
    rows = g.reshape(-1, g.shape[-1])
    gx = jnp.matmul(g, w.T)
    gw = jnp.matmul(x.reshape(-1, x.shape[-1]).T, rows)
    gb = jnp.sum(rows, axis=0)
    return gx, gw, gb


@primitive(bwd=_dense_bwd, reference=lambda x, w, b: jnp.matmul(x, w) + b,
           check=_dense_check, category="linear",
           formula="d(xw+b): x_bar = G w^T, w_bar = x^T G, b_bar = sum_rows G",
           residuals="x, w",
           sample_shapes=(((5, 3), (3, 2), (2,)), ((2, 5, 3), (3, 4), (4,)),
                          ((3,), (3, 2), (2,))))
def dense(x: Any, w: Any, b: Any) -> jax.Array:
    """Fully connected layer ``x @ w + b``.

    ``x`` is flattened to rows ``X`` (all leading axes) for ``w̄``; ``b̄`` sums the rows.

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
    return jnp.matmul(x, w) + b, (x, w)
