"""Loss functions with hand-written VJPs, including the lesson's ``(y - target)²`` node."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._broadcast import (
    as_labels,
    broadcast_shapes,
    promote_floats,
    run_rule,  # noqa: F401  (the docstring examples run the rules with it)
    unbroadcast,
)

__all__ = [
    "squared_error",
    "mean_squared_error",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
]


# ----------------------------------------------------------------- squared_error
def squared_error(y: Any, target: Any) -> jax.Array:
    """Elementwise squared error ``(y − target)²``: the lesson's loss node.

    Rule: ``dL/dy = 2(y − target)`` and ``dL/dtarget = −2(y − target)``, each summed over
    broadcast axes. Residuals: the difference ``y − target``.

    Args:
        y: predictions.
        target: targets; must broadcast with ``y``.

    Returns:
        ``(y − target)²`` with the broadcast shape.

    The lesson's step 1, ``dL/dy = 2×(6−2) = 8``:

    Examples:
        >>> float(squared_error(6.0, 2.0))
        16.0
        >>> run_rule(_squared_error_fwd, _squared_error_bwd, 6.0, 2.0, static=((), ()))
        [8.0, -8.0]
    """
    y, target = promote_floats("squared_error", ("y", "target"), y, target)
    broadcast_shapes("squared_error", ("y", "target"), y.shape, target.shape)
    return _squared_error(y.shape, target.shape, y, target)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _squared_error(ys, ts, y, target):
    d = y - target
    return d * d


def _squared_error_fwd(ys, ts, y, target):
    d = y - target
    return d * d, d


def _squared_error_bwd(ys, ts, d, g):
    gd = 2 * d * g
    return unbroadcast(gd, ys), unbroadcast(-gd, ts)


_squared_error.defvjp(_squared_error_fwd, _squared_error_bwd)


def squared_error_reference(y, target):
    return (y - target) ** 2


# ------------------------------------------------------------ mean_squared_error
def mean_squared_error(y: Any, target: Any) -> jax.Array:
    """Mean of ``(y − target)²`` over all elements of the broadcast shape; a scalar.

    Rule: ``dL/dy = 2(y − target) / n`` with ``n`` the number of elements, and
    ``dL/dtarget = −dL/dy``, each summed over broadcast axes. Residuals: ``y − target``.

    Args:
        y: predictions.
        target: targets; must broadcast with ``y``.

    Returns:
        A scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(mean_squared_error(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])))
        5.0
    """
    y, target = promote_floats("mean_squared_error", ("y", "target"), y, target)
    shape = broadcast_shapes("mean_squared_error", ("y", "target"), y.shape, target.shape)
    if int(np.prod(shape)) == 0:
        raise ValueError(f"mean_squared_error: inputs are empty (shape {shape}); the mean "
                         "of no elements is undefined")
    return _mean_squared_error(y.shape, target.shape, y, target)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mean_squared_error(ys, ts, y, target):
    d = y - target
    return jnp.mean(d * d)


def _mean_squared_error_fwd(ys, ts, y, target):
    d = y - target
    return jnp.mean(d * d), d


def _mean_squared_error_bwd(ys, ts, d, g):
    gd = (2 / d.size) * d * g
    return unbroadcast(gd, ys), unbroadcast(-gd, ts)


_mean_squared_error.defvjp(_mean_squared_error_fwd, _mean_squared_error_bwd)


def mean_squared_error_reference(y, target):
    return jnp.mean((y - target) ** 2)


# --------------------------------------------------------- softmax_cross_entropy
def softmax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against integer class labels, per example.

    ``loss = logsumexp(logits) − logits[label]``. Rule: ``dL/dlogits = softmax(logits) −
    onehot(label)``; the integer labels get no gradient (a ``float0`` zero). Residuals:
    the softmax probabilities (plus the integer labels).

    Non-finite safety: a ``-inf`` logit on a non-target class is a mask. The loss stays
    finite and that class's gradient is exactly ``0``, because ``softmax`` there is
    ``exp(-inf) = 0``. If the *target's* logit is ``-inf`` the loss is ``+inf`` (IEEE).
    Labels outside ``[0, num_classes)`` raise an error when they are concrete; under
    ``jit`` they give a ``nan`` loss and a ``nan`` gradient row rather than a silently
    wrong number (a training step then reports non-finite gradients and is skipped).

    Args:
        logits: float array of shape ``(..., num_classes)``.
        labels: integer array of shape ``logits.shape[:-1]``.

    Returns:
        The loss per example, shape ``logits.shape[:-1]``.

    Raises:
        TypeError: if ``labels`` is not an integer array.
        ValueError: if the shapes do not match.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
        >>> round(float(loss[0]), 6)
        0.693147
    """
    (logits,) = promote_floats("softmax_cross_entropy", ("logits",), logits)
    labels = as_labels("softmax_cross_entropy", "labels", labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            "softmax_cross_entropy: argument 'labels' must have shape logits.shape[:-1]; "
            f"got logits.shape={logits.shape}, labels.shape={labels.shape}"
        )
    if not isinstance(labels, jax.core.Tracer):
        lab = np.asarray(labels)
        if lab.size and (lab.min() < 0 or lab.max() >= logits.shape[-1]):
            raise ValueError(
                f"softmax_cross_entropy: argument 'labels' must lie in [0, {logits.shape[-1]}) "
                f"for logits.shape={logits.shape}; got values in [{lab.min()}, {lab.max()}]"
            )
    return _softmax_cross_entropy(logits, labels)


def _sce_forward(logits, labels):
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))  # double-where: all -inf rows
    shifted = logits - m
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(shifted, safe[..., None], axis=-1)
    loss = (lse - picked)[..., 0]
    loss = jnp.where(valid, loss, jnp.nan)
    probs = jnp.exp(shifted - lse)
    return loss, probs


@jax.custom_vjp
def _softmax_cross_entropy(logits, labels):
    return _sce_forward(logits, labels)[0]


def _softmax_cross_entropy_fwd(logits, labels):
    loss, probs = _sce_forward(logits, labels)
    return loss, (probs, labels)


def _softmax_cross_entropy_bwd(res, g):
    probs, labels = res
    num_classes = probs.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
    valid = ((labels >= 0) & (labels < num_classes))[..., None]
    grad = jnp.where(valid, g[..., None] * (probs - onehot), jnp.nan)  # bad label: nan, loudly
    return grad, None


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


def softmax_cross_entropy_reference(logits, labels):
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


# --------------------------------------------------- sigmoid_binary_cross_entropy
def sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    """Binary cross-entropy of ``σ(logits)`` against targets in ``[0, 1]``, elementwise.

    ``loss = softplus(x) − x·z = max(x, 0) − x·z + log(1 + e^(−|x|))``, which never
    overflows. Rule: ``dL/dx = σ(x) − z`` and ``dL/dz = −x``, each summed over broadcast
    axes. Residuals: ``x`` and ``z``.

    Args:
        logits: float array ``x``.
        labels: float targets ``z`` (probabilities, usually 0 or 1); must broadcast with
            ``logits``.

    Returns:
        The loss per element, with the broadcast shape.

    Examples:
        >>> import jax
        >>> round(float(sigmoid_binary_cross_entropy(0.0, 1.0)), 6)
        0.693147
        >>> run_rule(_sigmoid_bce_fwd, _sigmoid_bce_bwd, 0.0, 1.0, static=((), ()))
        [-0.5, -0.0]
    """
    x, z = promote_floats("sigmoid_binary_cross_entropy", ("logits", "labels"), logits, labels)
    broadcast_shapes("sigmoid_binary_cross_entropy", ("logits", "labels"), x.shape, z.shape)
    return _sigmoid_bce(x.shape, z.shape, x, z)


def _bce_value(x, z):
    return jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sigmoid_bce(xs, zs, x, z):
    return _bce_value(x, z)


def _sigmoid_bce_fwd(xs, zs, x, z):
    return _bce_value(x, z), (x, z)


def _sigmoid_bce_bwd(xs, zs, res, g):
    x, z = res
    e = jnp.exp(-jnp.abs(x))
    s = jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return unbroadcast(g * (s - z), xs), unbroadcast(-g * x, zs)


_sigmoid_bce.defvjp(_sigmoid_bce_fwd, _sigmoid_bce_bwd)


def sigmoid_binary_cross_entropy_reference(logits, labels):
    return jnp.logaddexp(0.0, logits) - logits * labels
