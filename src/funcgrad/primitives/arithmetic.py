"""Elementwise arithmetic with NumPy broadcasting, each with a hand-written VJP.

Binary primitives undo broadcasting in their backward pass through
:func:`funcgrad.primitives._broadcast.unbroadcast`. The input shapes travel as static
(non-differentiable) arguments, so a rule that needs no values saves no residuals.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._broadcast import (
    as_float,
    broadcast_shapes,
    promote_floats,
    run_rule,  # noqa: F401  (the docstring examples run the rules with it)
    unbroadcast,
)

__all__ = ["add", "sub", "mul", "div", "neg", "square", "power", "exp", "log"]


def _binary(name: str, x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    x, y = promote_floats(name, ("x", "y"), x, y)
    broadcast_shapes(name, ("x", "y"), x.shape, y.shape)
    return x, y


# --------------------------------------------------------------------------- add
def add(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x + y`` with broadcasting: the lesson's ``[+]`` node.

    Rule: ``dz/dx = 1`` and ``dz/dy = 1``, so ``x̄ = unbroadcast(ḡ)`` and ``ȳ = unbroadcast(ḡ)``.
    Residuals: none. Kinks: none.

    Args:
        x: first operand.
        y: second operand; must broadcast with ``x``.

    Returns:
        ``x + y`` in the common floating dtype of the inputs.

    Examples:
        >>> import jax
        >>> add(2.0, 3.0)
        Array(5., dtype=float32)
        >>> run_rule(_add_fwd, _add_bwd, 2.0, 3.0, static=((), ()))
        [1.0, 1.0]
    """
    x, y = _binary("add", x, y)
    return _add(x.shape, y.shape, x, y)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _add(xs, ys, x, y):
    return x + y


def _add_fwd(xs, ys, x, y):
    return x + y, None


def _add_bwd(xs, ys, _, g):
    return unbroadcast(g, xs), unbroadcast(g, ys)


_add.defvjp(_add_fwd, _add_bwd)


def add_reference(x, y):
    return jnp.add(x, y)


# --------------------------------------------------------------------------- sub
def sub(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x - y`` with broadcasting.

    Rule: ``x̄ = unbroadcast(ḡ)``, ``ȳ = -unbroadcast(ḡ)``. Residuals: none.

    Args:
        x: minuend.
        y: subtrahend; must broadcast with ``x``.

    Returns:
        ``x - y``.

    Examples:
        >>> sub(6.0, 2.0)
        Array(4., dtype=float32)
    """
    x, y = _binary("sub", x, y)
    return _sub(x.shape, y.shape, x, y)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sub(xs, ys, x, y):
    return x - y


def _sub_fwd(xs, ys, x, y):
    return x - y, None


def _sub_bwd(xs, ys, _, g):
    return unbroadcast(g, xs), unbroadcast(-g, ys)


_sub.defvjp(_sub_fwd, _sub_bwd)


def sub_reference(x, y):
    return jnp.subtract(x, y)


# --------------------------------------------------------------------------- mul
def mul(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x * y`` with broadcasting: the lesson's ``[×]`` node.

    Rule: ``dz/dx = y`` and ``dz/dy = x``, so ``x̄ = unbroadcast(ḡ·y)``,
    ``ȳ = unbroadcast(ḡ·x)``. Residuals: ``x`` and ``y``.

    Args:
        x: first factor.
        y: second factor; must broadcast with ``x``.

    Returns:
        ``x * y``.

    The lesson's step 2, ``dy/dw = x = 2``:

    Examples:
        >>> run_rule(_mul_fwd, _mul_bwd, 2.0, 3.0, static=((), ()))  # [dz/dx, dz/dw]
        [3.0, 2.0]
    """
    x, y = _binary("mul", x, y)
    return _mul(x.shape, y.shape, x, y)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mul(xs, ys, x, y):
    return x * y


def _mul_fwd(xs, ys, x, y):
    return x * y, (x, y)


def _mul_bwd(xs, ys, res, g):
    x, y = res
    return unbroadcast(g * y, xs), unbroadcast(g * x, ys)


_mul.defvjp(_mul_fwd, _mul_bwd)


def mul_reference(x, y):
    return jnp.multiply(x, y)


# --------------------------------------------------------------------------- div
def div(x: Any, y: Any) -> jax.Array:
    """Elementwise ``x / y`` with broadcasting.

    Rule: ``x̄ = unbroadcast(ḡ / y)``, ``ȳ = unbroadcast(-ḡ·x / y²)``. Residuals: ``x``, ``y``.
    Division by zero follows IEEE 754 (``±inf`` or ``nan``), like ``jnp.divide``.

    Args:
        x: numerator.
        y: denominator; must broadcast with ``x``.

    Returns:
        ``x / y``.

    Examples:
        >>> run_rule(_div_fwd, _div_bwd, 1.0, 2.0, static=((), ()))
        [0.5, -0.25]
    """
    x, y = _binary("div", x, y)
    return _div(x.shape, y.shape, x, y)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _div(xs, ys, x, y):
    return x / y


def _div_fwd(xs, ys, x, y):
    return x / y, (x, y)


def _div_bwd(xs, ys, res, g):
    x, y = res
    gx = g / y
    return unbroadcast(gx, xs), unbroadcast(-gx * x / y, ys)


_div.defvjp(_div_fwd, _div_bwd)


def div_reference(x, y):
    return jnp.divide(x, y)


# --------------------------------------------------------------------------- neg
def neg(x: Any) -> jax.Array:
    """Elementwise ``-x``.

    Rule: ``x̄ = -ḡ``. Residuals: none.

    Args:
        x: input.

    Returns:
        ``-x``.

    Examples:
        >>> float(neg(3.0))
        -3.0
    """
    return _neg(as_float("neg", "x", x))


@jax.custom_vjp
def _neg(x):
    return -x


def _neg_fwd(x):
    return -x, None


def _neg_bwd(_, g):
    return (-g,)


_neg.defvjp(_neg_fwd, _neg_bwd)


def neg_reference(x):
    return jnp.negative(x)


# ------------------------------------------------------------------------ square
def square(x: Any) -> jax.Array:
    """Elementwise ``x²``: the lesson's ``[(·)²]`` node.

    Rule: ``d(x²)/dx = 2x``, so ``x̄ = 2·x·ḡ``. Residuals: ``x``.

    Args:
        x: input.

    Returns:
        ``x * x``.

    The lesson's ``dL/dy = 2×(y-target) = 2×(6-2) = 8``:

    Examples:
        >>> run_rule(_square_fwd, _square_bwd, 4.0)
        [8.0]
    """
    return _square(as_float("square", "x", x))


@jax.custom_vjp
def _square(x):
    return x * x


def _square_fwd(x):
    return x * x, x


def _square_bwd(x, g):
    return (2 * x * g,)


_square.defvjp(_square_fwd, _square_bwd)


def square_reference(x):
    return jnp.square(x)


# ------------------------------------------------------------------------- power
def power(x: Any, p: float) -> jax.Array:
    """Elementwise ``x ** p`` for a constant (non-differentiable) exponent ``p``.

    Rule: ``x̄ = p·x^(p-1)·ḡ``; for ``p = 0`` the derivative is exactly 0 everywhere.
    Residuals: ``x``. For non-integer ``p`` the domain is ``x > 0``; negative ``x`` gives
    ``nan`` as in ``jnp.power``.

    Args:
        x: base.
        p: exponent, a Python number (static under ``jit``).

    Returns:
        ``x ** p``.

    Examples:
        >>> run_rule(_power_fwd, _power_bwd, 2.0, static=(3.0,))
        [12.0]
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise TypeError(
            f"power: argument 'p' must be a Python int or float (a constant exponent); "
            f"got {type(p).__name__}"
        )
    return _power(float(p), as_float("power", "x", x))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _power(p, x):
    return jnp.power(x, p)


def _power_fwd(p, x):
    return jnp.power(x, p), x


def _power_bwd(p, x, g):
    if p == 0.0:
        return (jnp.zeros_like(x),)
    return (p * jnp.power(x, p - 1.0) * g,)


_power.defvjp(_power_fwd, _power_bwd)


def power_reference(x, p):
    return jnp.power(x, p)


# --------------------------------------------------------------------------- exp
def exp(x: Any) -> jax.Array:
    """Elementwise ``e^x``.

    Rule: ``d(e^x)/dx = e^x``, so ``x̄ = y·ḡ`` with ``y = e^x``. Residuals: the output ``y``.

    Args:
        x: input.

    Returns:
        ``exp(x)``.

    Examples:
        >>> run_rule(_exp_fwd, _exp_bwd, 0.0)
        [1.0]
    """
    return _exp(as_float("exp", "x", x))


@jax.custom_vjp
def _exp(x):
    return jnp.exp(x)


def _exp_fwd(x):
    y = jnp.exp(x)
    return y, y


def _exp_bwd(y, g):
    return (y * g,)


_exp.defvjp(_exp_fwd, _exp_bwd)


def exp_reference(x):
    return jnp.exp(x)


# --------------------------------------------------------------------------- log
def log(x: Any) -> jax.Array:
    """Elementwise natural logarithm.

    Rule: ``d(log x)/dx = 1/x``, so ``x̄ = ḡ / x``. Residuals: ``x``. Domain ``x > 0``:
    following IEEE 754 and ``jnp.log``, ``log(0) = -inf`` (gradient ``+inf``) and
    ``log(x < 0) = nan``. This is not hidden; use :func:`funcgrad.flow.find_nonfinite`
    to locate such values.

    Args:
        x: input, positive.

    Returns:
        ``log(x)``.

    Examples:
        >>> run_rule(_log_fwd, _log_bwd, 4.0)
        [0.25]
    """
    return _log(as_float("log", "x", x))


@jax.custom_vjp
def _log(x):
    return jnp.log(x)


def _log_fwd(x):
    return jnp.log(x), x


def _log_bwd(x, g):
    return (g / x,)


_log.defvjp(_log_fwd, _log_bwd)


def log_reference(x):
    return jnp.log(x)
