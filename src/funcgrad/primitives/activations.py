"""Activation functions with the lesson's derivatives as hand-written VJPs.

Each primitive is one block: the backward rule (its body is the formula), then the forward
rule decorated with :func:`funcgrad.primitive`, which declares the record (formula,
residuals, kinks, edge points, the private reference) beside the rule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._define import primitive

__all__ = ["relu", "sigmoid", "tanh", "softplus", "leaky_relu"]


# -------------------------------------------------------------------------- relu
def _relu_bwd(y, g):
    return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


@primitive(
    bwd=_relu_bwd, reference=jax.nn.relu, category="activation",
    formula="relu'(x) = 1 if x > 0 else 0",
    residuals="output y (mask y > 0)",
    kinks="relu'(0) = 0", kink_points=((0.0, 0.0),),
)
def relu(x: Any) -> jax.Array:
    """Rectified linear unit ``max(0, x)``.

    The lesson's rule, ``x̄ = ḡ · [y > 0]``. At the kink ``x = 0`` the derivative is taken
    as exactly ``0``, as in the lesson and ``jax.nn.relu``. The mask ``y > 0`` is rebuilt
    from the saved output: inside a network the next layer keeps ``y`` as its input anyway,
    so JAX's residual accounting shows no extra array (``jax.nn.relu`` keeps a mask plus a
    zero-filled buffer). XLA may still rematerialise either form; see
    ``docs/performance.md`` for what the compiled program actually holds.

    Args:
        x: pre-activation.

    Returns:
        ``max(0, x)``.

    Examples:
        >>> [relu.vjp(v)[0] for v in (-1.0, 0.0, 2.0)]
        [0.0, 0.0, 1.0]
    """
    y = jnp.maximum(x, 0)
    return y, y  # the output, and the residual for _relu_bwd


# ----------------------------------------------------------------------- sigmoid
def _stable_sigmoid_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Return ``σ(x)`` and ``σ'(x) = σ(x)σ(−x)`` from one ``exp(−|x|)``, without overflow."""
    e = jnp.exp(-jnp.abs(x))
    inv = 1 / (1 + e)
    y = jnp.where(x >= 0, inv, e * inv)
    return y, e * inv * inv


def _sigmoid_bwd(dy, g):
    return (g * dy,)


@primitive(
    bwd=_sigmoid_bwd, reference=jax.nn.sigmoid, category="activation",
    formula="sigmoid'(x) = f(x)(1 - f(x)) = f(x)f(-x)",
    residuals="the derivative f(x)f(-x)",
    precision="stable form f(x)f(-x) = e^(-|x|)/(1 + e^(-|x|))^2: nonzero in float32 at "
              "x = 17 (textbook f(1-f) is 0 there)",
    edge_points=(17.0, 30.0, -30.0),
)
def sigmoid(x: Any) -> jax.Array:
    """Logistic sigmoid ``σ(x) = 1 / (1 + e^(−x))``.

    The lesson's ``σ'(x) = σ(x)(1 − σ(x))`` is computed in the algebraically equal,
    numerically stable form ``σ(x)·σ(−x) = e^(−|x|) / (1 + e^(−|x|))²``. The textbook form
    is exactly ``0`` in float32 for ``x ≥ 17`` (``σ(17)`` rounds to 1), while the true
    derivative there is about ``4.1e-8``; the stable form keeps it. The forward pass saves
    that derivative: the output alone cannot recover it once ``σ(x)`` has rounded to 1.

    Args:
        x: pre-activation.

    Returns:
        ``σ(x)``.

    Examples:
        >>> sigmoid.vjp(0.0)
        (0.25,)
        >>> 3e-8 < sigmoid.vjp(17.0)[0] < 5e-8
        True
    """
    return _stable_sigmoid_parts(x)  # the output σ(x), and the residual σ(x)σ(−x)


# -------------------------------------------------------------------------- tanh
def _tanh_bwd(dy, g):
    return (g * dy,)


@primitive(
    bwd=_tanh_bwd, reference=jnp.tanh, category="activation",
    formula="tanh'(x) = 1 - tanh(x)^2",
    residuals="the derivative 4e^(-2|x|)/(1 + e^(-2|x|))^2",
    precision="stable form 1 - tanh^2 = 4e^(-2|x|)/(1 + e^(-2|x|))^2: float32 keeps "
              "4.5e-7 at x = 8 (the output form (1-y)(1+y) is 0 there and 0.9% off at x = 6)",
    edge_points=(6.0, 8.0, 9.0, 10.0, -8.0),
)
def tanh(x: Any) -> jax.Array:
    """Hyperbolic tangent.

    The lesson's ``tanh'(x) = 1 − tanh²(x)`` is computed in the algebraically equal,
    numerically stable form ``4e^(−2|x|) / (1 + e^(−2|x|))²``. Computed from the rounded
    output as ``(1 − y)(1 + y)``, it is already 0.9% off in float32 at ``x = 6`` and exactly
    ``0`` from ``x ≈ 8.7`` on (``tanh`` rounds to 1), while the truth at ``x = 10`` is
    ``8.2e-9``. The forward pass saves that derivative, as :func:`sigmoid` does.

    Args:
        x: pre-activation.

    Returns:
        ``tanh(x)``.

    Examples:
        >>> tanh.vjp(0.0)
        (1.0,)
        >>> 8e-9 < tanh.vjp(10.0)[0] < 8.5e-9
        True
    """
    e = jnp.exp(-2 * jnp.abs(x))
    return jnp.tanh(x), 4 * e / ((1 + e) * (1 + e))  # the output, and the residual tanh'(x)


# ---------------------------------------------------------------------- softplus
def _softplus_bwd(s, g):
    return (g * s,)


@primitive(
    bwd=_softplus_bwd, reference=lambda x: jnp.logaddexp(x, 0.0), category="activation",
    formula="softplus'(x) = sigmoid(x)",
    residuals="sigmoid(x)",
    precision="max(x,0) + log1p(e^-|x|): no overflow",
    edge_points=(-100.0, 100.0, 1e4),
)
def softplus(x: Any) -> jax.Array:
    """Softplus ``log(1 + e^x)``, a smooth relu, computed without overflow.

    Args:
        x: input.

    Returns:
        ``log(1 + exp(x))``.

    Examples:
        >>> softplus.vjp(0.0)
        (0.5,)
        >>> float(softplus(1e4))
        10000.0
    """
    y = jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return y, _stable_sigmoid_parts(x)[0]  # the output, and the residual σ(x)


# -------------------------------------------------------------------- leaky_relu
def _leaky_relu_check(x, negative_slope):
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError("leaky_relu: argument 'negative_slope' must be a Python float; "
                        f"got {type(negative_slope).__name__}")
    if negative_slope < 0:
        raise ValueError("leaky_relu: argument 'negative_slope' must be >= 0; "
                         f"got {negative_slope}")
    return {"negative_slope": float(negative_slope)}


def _leaky_relu_bwd(y, g, *, negative_slope):
    return (jnp.where(y > 0, g, negative_slope * g),)


@primitive(
    bwd=_leaky_relu_bwd, reference=jax.nn.leaky_relu, category="activation",
    static=("negative_slope",), check=_leaky_relu_check, params={"negative_slope": 0.1},
    formula="leaky_relu'(x) = 1 if x > 0 else slope",
    residuals="output y (mask y > 0)",
    kinks="leaky_relu'(0) = slope", kink_points=((0.0, 0.1),),
)
def leaky_relu(x: Any, negative_slope: float = 0.01) -> jax.Array:
    """Leaky relu: ``x`` for ``x > 0``, else ``negative_slope · x``.

    At the kink ``x = 0`` the derivative is ``negative_slope``, consistent with
    relu'(0) = 0 at slope 0. For a positive slope, ``y > 0`` exactly when ``x > 0``, so the
    saved output gives the mask.

    Args:
        x: pre-activation.
        negative_slope: slope for ``x <= 0``, a Python float ``>= 0`` (static).

    Returns:
        The activation.

    Examples:
        >>> [round(leaky_relu.vjp(v)[0], 4) for v in (-1.0, 0.0, 2.0)]
        [0.01, 0.01, 1.0]
    """
    y = jnp.where(x > 0, x, negative_slope * x)
    return y, y  # the output, and the residual for _leaky_relu_bwd
