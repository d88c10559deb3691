"""Activation functions with the lesson's derivatives as hand-written VJPs.

=============  ==========================  ===================================
activation     derivative                  residual saved
=============  ==========================  ===================================
relu           1 if x > 0 else 0           output y (mask y > 0)
sigmoid        σ(x)(1 − σ(x)) = σ(x)σ(−x)  the derivative σ(x)σ(−x) itself
tanh           1 − tanh²(x)                output y
softplus       σ(x)                        σ(x)
leaky_relu     1 if x > 0 else slope       output y (mask y > 0)
=============  ==========================  ===================================
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

__all__ = ["relu", "sigmoid", "tanh", "softplus", "leaky_relu"]


# -------------------------------------------------------------------------- relu
def relu(x: Any) -> jax.Array:
    """Rectified linear unit ``max(0, x)``.

    Rule (the lesson's): ``relu'(x) = 1 if x > 0 else 0``, so ``x̄ = ḡ · [y > 0]``.
    Kink: at ``x = 0`` the derivative is taken as exactly ``0``, as in the lesson and
    ``jax.nn.relu``. Residuals: the output ``y``; the mask ``y > 0`` is rebuilt from it in
    the backward pass. Inside a network the next layer keeps ``y`` as its input anyway, so
    JAX's residual accounting shows no extra array (``jax.nn.relu`` keeps a mask plus a
    zero-filled buffer). XLA may still rematerialise either form; see
    ``docs/performance.md`` for what the compiled program actually holds.

    Args:
        x: pre-activation.

    Returns:
        ``max(0, x)``.

    Examples:
        >>> [run_rule(_relu_fwd, _relu_bwd, v)[0] for v in (-1.0, 0.0, 2.0)]
        [0.0, 0.0, 1.0]
    """
    return _relu(as_float("relu", "x", x))


@jax.custom_vjp
def _relu(x):
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y, g):
    return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu_reference(x):
    return jax.nn.relu(x)


# ----------------------------------------------------------------------- sigmoid
def _stable_sigmoid_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return ``σ(x)`` and ``σ'(x) = σ(x)σ(−x)`` from one ``exp(−|x|)``, without overflow."""
    e = jnp.exp(-jnp.abs(x))
    inv = 1 / (1 + e)
    y = jnp.where(x >= 0, inv, e * inv)
    return y, e * inv * inv


def sigmoid(x: Any) -> jax.Array:
    """Logistic sigmoid ``σ(x) = 1 / (1 + e^(−x))``.

    Rule: the lesson's ``σ'(x) = σ(x)(1 − σ(x))``, computed in the algebraically equal,
    numerically stable form ``σ(x)·σ(−x) = e^(−|x|) / (1 + e^(−|x|))²``. The textbook form
    is exactly ``0`` in float32 for ``x ≥ 17`` (``σ(17)`` rounds to 1), while the true
    derivative there is about ``4.1e-8``; the stable form keeps it.

    Residuals: one array, the derivative ``σ(x)σ(−x)`` computed in the forward pass (the
    output alone cannot recover it once ``σ(x)`` has rounded to 1). No kinks.

    Args:
        x: pre-activation.

    Returns:
        ``σ(x)``.

    Examples:
        >>> run_rule(_sigmoid_fwd, _sigmoid_bwd, 0.0)
        [0.25]
        >>> 3e-8 < run_rule(_sigmoid_fwd, _sigmoid_bwd, 17.0)[0] < 5e-8
        True
    """
    return _sigmoid(as_float("sigmoid", "x", x))


@jax.custom_vjp
def _sigmoid(x):
    return _stable_sigmoid_parts(x)[0]


def _sigmoid_fwd(x):
    y, dy = _stable_sigmoid_parts(x)
    return y, dy


def _sigmoid_bwd(dy, g):
    return (g * dy,)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def sigmoid_reference(x):
    return jax.nn.sigmoid(x)


# -------------------------------------------------------------------------- tanh
def tanh(x: Any) -> jax.Array:
    """Hyperbolic tangent.

    Rule: the lesson's ``tanh'(x) = 1 − tanh²(x)``, evaluated as ``(1 − y)(1 + y)``, which
    loses less precision than ``1 − y²`` near ``|y| = 1``. Residuals: the output ``y``.
    No kinks.

    Args:
        x: pre-activation.

    Returns:
        ``tanh(x)``.

    Examples:
        >>> run_rule(_tanh_fwd, _tanh_bwd, 0.0)
        [1.0]
    """
    return _tanh(as_float("tanh", "x", x))


@jax.custom_vjp
def _tanh(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


def _tanh_bwd(y, g):
    return (g * (1 - y) * (1 + y),)


_tanh.defvjp(_tanh_fwd, _tanh_bwd)


def tanh_reference(x):
    return jnp.tanh(x)


# ---------------------------------------------------------------------- softplus
def softplus(x: Any) -> jax.Array:
    """Softplus ``log(1 + e^x)``, a smooth relu, computed without overflow.

    Rule: ``softplus'(x) = σ(x)``. Residuals: ``σ(x)``, computed stably in the forward
    pass. No kinks.

    Args:
        x: input.

    Returns:
        ``log(1 + exp(x))``.

    Examples:
        >>> run_rule(_softplus_fwd, _softplus_bwd, 0.0)
        [0.5]
        >>> float(softplus(1e4))
        10000.0
    """
    return _softplus(as_float("softplus", "x", x))


def _softplus_value(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@jax.custom_vjp
def _softplus(x):
    return _softplus_value(x)


def _softplus_fwd(x):
    return _softplus_value(x), _stable_sigmoid_parts(x)[0]


def _softplus_bwd(s, g):
    return (g * s,)


_softplus.defvjp(_softplus_fwd, _softplus_bwd)


def softplus_reference(x):
    return jnp.logaddexp(x, 0.0)


# -------------------------------------------------------------------- leaky_relu
def leaky_relu(x: Any, negative_slope: float = 0.01) -> jax.Array:
    """Leaky relu: ``x`` for ``x > 0``, else ``negative_slope · x``.

    Rule: ``1 if x > 0 else negative_slope``. Kink: at ``x = 0`` the derivative is
    ``negative_slope``, consistent with relu'(0) = 0 at slope 0. Residuals: the output
    ``y`` (for a positive slope, ``y > 0`` exactly when ``x > 0``).

    Args:
        x: pre-activation.
        negative_slope: slope for ``x <= 0``, a Python float ``>= 0`` (static).

    Returns:
        The activation.

    Examples:
        >>> rule = lambda v: run_rule(_leaky_relu_fwd, _leaky_relu_bwd, v, static=(0.01,))
        >>> [round(rule(v)[0], 4) for v in (-1.0, 0.0, 2.0)]
        [0.01, 0.01, 1.0]
    """
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError("leaky_relu: argument 'negative_slope' must be a Python float; "
                        f"got {type(negative_slope).__name__}")
    if negative_slope < 0:
        raise ValueError("leaky_relu: argument 'negative_slope' must be >= 0; "
                         f"got {negative_slope}")
    return _leaky_relu(float(negative_slope), as_float("leaky_relu", "x", x))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _leaky_relu(slope, x):
    return jnp.where(x > 0, x, slope * x)


def _leaky_relu_fwd(slope, x):
    y = jnp.where(x > 0, x, slope * x)
    return y, y


def _leaky_relu_bwd(slope, y, g):
    return (jnp.where(y > 0, g, slope * g),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu_reference(x, negative_slope=0.01):
    return jax.nn.leaky_relu(x, negative_slope)
