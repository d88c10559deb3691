"""Elementwise arithmetic with NumPy broadcasting, each with a hand-written VJP.

Binary primitives are declared with ``unbroadcast=True``: :func:`funcgrad.primitive`
checks that the inputs broadcast, and sums each cotangent back to its input's shape with
the shared :func:`~funcgrad.primitives.unbroadcast`, so a rule that needs no values saves
no residuals. Each primitive is one block: the backward rule (its body is the formula), then
the forward rule decorated with its record.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._define import primitive
from ._record import BROADCAST_PAIRS

__all__ = ["add", "sub", "mul", "div", "neg", "square", "power", "exp", "log"]

_BINARY = dict(unbroadcast=True, category="arithmetic", sample_shapes=BROADCAST_PAIRS)


# --------------------------------------------------------------------------- add
def _add_bwd(_, g):
    return g, g


@primitive(bwd=_add_bwd, reference=jnp.add, **_BINARY,
           formula="d(x+y)/dx = 1, d(x+y)/dy = 1", residuals="none")
def add(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x + y`` with broadcasting: the lesson's ``[+]`` node.

    Args:
        x: first operand.
        y: second operand; must broadcast with ``x``.

    Returns:
        ``x + y`` in the common floating dtype of the inputs.

    Examples:
        >>> add(2.0, 3.0)
        Array(5., dtype=float32)
        >>> add.vjp(2.0, 3.0)
        (1.0, 1.0)
    """
    return x + y, None


# --------------------------------------------------------------------------- sub
def _sub_bwd(_, g):
    return g, -g


@primitive(bwd=_sub_bwd, reference=jnp.subtract, **_BINARY,
           formula="d(x-y)/dx = 1, d(x-y)/dy = -1", residuals="none")
def sub(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x - y`` with broadcasting.

    Args:
        x: minuend.
        y: subtrahend; must broadcast with ``x``.

    Returns:
        ``x - y``.

    Examples:
        >>> sub(6.0, 2.0)
        Array(4., dtype=float32)
        >>> sub.vjp(6.0, 2.0)
        (1.0, -1.0)
    """
    return x - y, None


# --------------------------------------------------------------------------- mul
def _mul_bwd(res, g):
    x, y = res
    return g * y, g * x


@primitive(bwd=_mul_bwd, reference=jnp.multiply, **_BINARY,
           formula="d(xy)/dx = y, d(xy)/dy = x", residuals="x, y")
def mul(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x * y`` with broadcasting: the lesson's ``[×]`` node.

    Args:
        x: first factor.
        y: second factor; must broadcast with ``x``.

    Returns:
        ``x * y``.

    The lesson's step 2, ``dy/dw = x = 2``:

    Examples:
        >>> mul.vjp(2.0, 3.0)  # (dz/dx, dz/dw)
        (3.0, 2.0)
    """
    return x * y, (x, y)


# --------------------------------------------------------------------------- div
def _div_bwd(res, g):
    x, y = res
    gx = g / y
    return gx, -gx * x / y


@primitive(bwd=_div_bwd, reference=jnp.divide, **_BINARY, domain={"y": "nonzero"},
           formula="d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2", residuals="x, y",
           precision="IEEE 754 at y = 0 (inf or nan)")
def div(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x / y`` with broadcasting.

    Division by zero follows IEEE 754 (``±inf`` or ``nan``), like ``jnp.divide``.

    Args:
        x: numerator.
        y: denominator; must broadcast with ``x``.

    Returns:
        ``x / y``.

    Examples:
        >>> div.vjp(1.0, 2.0)
        (0.5, -0.25)
    """
    return x / y, (x, y)


# --------------------------------------------------------------------------- neg
def _neg_bwd(_, g):
    return (-g,)


@primitive(bwd=_neg_bwd, reference=jnp.negative, category="arithmetic",
           formula="d(-x)/dx = -1", residuals="none")
def neg(x: Any) -> jax.Array:
    """Elementwise ``-x``.

    Args:
        x: input.

    Returns:
        ``-x``.

    Examples:
        >>> float(neg(3.0)), neg.vjp(3.0)
        (-3.0, (-1.0,))
    """
    return -x, None


# ------------------------------------------------------------------------ square
def _square_bwd(x, g):
    return (2 * x * g,)


@primitive(bwd=_square_bwd, reference=jnp.square, category="arithmetic",
           formula="d(x^2)/dx = 2x", residuals="x")
def square(x: Any) -> jax.Array:
    """Elementwise ``x²``: the lesson's ``[(·)²]`` node.

    Args:
        x: input.

    Returns:
        ``x * x``.

    The lesson's ``dL/dy = 2×(y-target) = 2×(6-2) = 8``:

    Examples:
        >>> square.vjp(4.0)
        (8.0,)
    """
    return x * x, x


# ------------------------------------------------------------------------- power
def _power_check(x, p):
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise TypeError(
            f"power: argument 'p' must be a Python int or float (a constant exponent); "
            f"got {type(p).__name__}"
        )
    return {"p": float(p)}


def _power_bwd(x, g, *, p):
    if p == 0.0:
        return (jnp.zeros_like(x),)
    return (p * jnp.power(x, p - 1.0) * g,)


@primitive(bwd=_power_bwd, reference=lambda x, p: jnp.power(x, p), category="arithmetic",
           static=("p",), check=_power_check, params={"p": 2.5}, domain={"x": "positive"},
           formula="d(x^p)/dx = p*x^(p-1)", residuals="x",
           kinks="p = 0: derivative exactly 0", precision="non-integer p: domain x > 0")
def power(x: Any, p: float) -> jax.Array:
    """Elementwise ``x ** p`` for a constant (non-differentiable) exponent ``p``.

    For ``p = 0`` the derivative is exactly 0 everywhere. For non-integer ``p`` the domain
    is ``x > 0``; negative ``x`` gives ``nan`` as in ``jnp.power``.

    Args:
        x: base.
        p: exponent, a Python number (static under ``jit``).

    Returns:
        ``x ** p``.

    Examples:
        >>> power.vjp(2.0, 3.0)
        (12.0,)
    """
    return jnp.power(x, p), x


# --------------------------------------------------------------------------- exp
def _exp_bwd(y, g):
    return (y * g,)


@primitive(bwd=_exp_bwd, reference=jnp.exp, category="arithmetic",
           formula="d(e^x)/dx = e^x", residuals="output y = e^x",
           edge_points=(50.0, -50.0))
def exp(x: Any) -> jax.Array:
    """Elementwise ``e^x``.

    Args:
        x: input.

    Returns:
        ``exp(x)``.

    Examples:
        >>> exp.vjp(0.0)
        (1.0,)
    """
    y = jnp.exp(x)
    return y, y


# --------------------------------------------------------------------------- log
def _log_bwd(x, g):
    return (g / x,)


@primitive(bwd=_log_bwd, reference=jnp.log, category="arithmetic", domain={"x": "positive"},
           formula="d(log x)/dx = 1/x", residuals="x",
           precision="IEEE 754: log(0) = -inf, log(x<0) = nan",
           edge_points=(1e-3, 1e-20))
def log(x: Any) -> jax.Array:
    """Elementwise natural logarithm.

    Domain ``x > 0``: following IEEE 754 and ``jnp.log``, ``log(0) = -inf`` (gradient
    ``+inf``) and ``log(x < 0) = nan``. This is not hidden; use
    :func:`funcgrad.flow.find_nonfinite` to locate such values.

    Args:
        x: input, positive.

    Returns:
        ``log(x)``.

    Examples:
        >>> log.vjp(4.0)
        (0.25,)
    """
    return jnp.log(x), x
