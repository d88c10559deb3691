"""Transformations that work with custom VJP rules.

``jax.custom_vjp`` functions support reverse mode only: ``jax.jvp``, ``jax.jacfwd`` and
``jax.hessian`` (which is ``jacfwd(jacrev(f))``) raise on them. :func:`hessian` uses reverse
over reverse instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["hessian"]


def hessian(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Hessian of a scalar function by reverse-over-reverse differentiation.

    ``jax.hessian`` uses forward mode, which ``custom_vjp`` rules do not support; this is
    ``jax.jacrev(jax.jacrev(fun))`` and works with every funcgrad primitive.

    Args:
        fun: a function returning a scalar.
        argnums: which positional argument(s) to differentiate.
        has_aux: whether ``fun`` returns ``(value, aux)``.

    Returns:
        A function with ``fun``'s signature that returns the Hessian.

    Examples:
        >>> import jax.numpy as jnp, funcgrad as fg
        >>> fg.hessian(lambda x: fg.sum(fg.power(x, 3)))(jnp.array([1.0, 2.0])).tolist()
        [[6.0, 0.0], [0.0, 12.0]]
    """
    argnums = argnums if isinstance(argnums, int) else tuple(argnums)
    return jax.jacrev(jax.jacrev(fun, argnums=argnums, has_aux=has_aux), argnums=argnums,
                      has_aux=has_aux)
