"""Loss functions with hand-written VJPs, including the lesson's ``(y - target)²`` node."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._define import primitive
from ._record import BROADCAST_PAIRS

__all__ = [
    "squared_error",
    "mean_squared_error",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
]

_BINARY = dict(unbroadcast=True, category="loss", sample_shapes=BROADCAST_PAIRS)


# ----------------------------------------------------------------- squared_error
def _squared_error_bwd(d, g):
    gd = 2 * d * g
    return gd, -gd


@primitive(bwd=_squared_error_bwd, reference=lambda y, target: (y - target) ** 2, **_BINARY,
           formula="dL/dy = 2(y - target), dL/dtarget = -2(y - target)",
           residuals="y - target")
def squared_error(y: Any, target: Any) -> jax.Array:
    """Elementwise squared error ``(y − target)²``: the lesson's loss node.

    Each cotangent is summed over broadcast axes.

    Args:
        y: predictions.
        target: targets; must broadcast with ``y``.

    Returns:
        ``(y − target)²`` with the broadcast shape.

    The lesson's step 1, ``dL/dy = 2×(6−2) = 8``:

    Examples:
        >>> float(squared_error(6.0, 2.0))
        16.0
        >>> squared_error.vjp(6.0, 2.0)
        (8.0, -8.0)
    """
    d = y - target
    return d * d, d


# ------------------------------------------------------------ mean_squared_error
def _mean_squared_error_check(y, target):
    shape = np.broadcast_shapes(y.shape, target.shape)
    if int(np.prod(shape)) == 0:
        raise ValueError(f"mean_squared_error: inputs are empty (shape {shape}); the mean "
                         "of no elements is undefined")


def _mean_squared_error_bwd(d, g):
    gd = (2 / d.size) * d * g
    return gd, -gd


@primitive(bwd=_mean_squared_error_bwd, reference=lambda y, t: jnp.mean((y - t) ** 2),
           check=_mean_squared_error_check, **_BINARY,
           formula="dL/dy = 2(y - target)/n, dL/dtarget = -2(y - target)/n",
           residuals="y - target")
def mean_squared_error(y: Any, target: Any) -> jax.Array:
    """Mean of ``(y − target)²`` over all elements of the broadcast shape; a scalar.

    ``n`` is the number of elements of the broadcast shape; each cotangent is summed over
    broadcast axes.

    Args:
        y: predictions.
        target: targets; must broadcast with ``y``.

    Returns:
        A scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(mean_squared_error(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])))
        5.0
        >>> mean_squared_error.vjp(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]))
        ([1.0, 3.0], [-1.0, -3.0])
    """
    d = y - target
    return jnp.mean(d * d), d


# --------------------------------------------------------- softmax_cross_entropy
def _softmax_cross_entropy_check(logits, labels):
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


def _softmax_cross_entropy_bwd(res, g):
    probs, labels = res
    num_classes = probs.shape[-1]
    valid = ((labels >= 0) & (labels < num_classes))[..., None]
    # g * (probs - onehot): the one-hot is applied sparsely, -g added at each label by a
    # scatter. It builds no B x C one-hot, and its label-only index work can run while the
    # forward dots do (docs/performance.md, issue 9)
    grad = (g[..., None] * probs).reshape(-1, num_classes)
    cols = jnp.where(valid.reshape(-1), labels.reshape(-1), num_classes)[:, None]  # bad: dropped
    # row i gets -g_i at column cols[i]; the rows are a batching dimension (as in JAX's
    # transpose of take_along_axis), so a batch-sharded step needs no gather of the labels
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,),
        operand_batching_dims=(0,), scatter_indices_batching_dims=(0,))
    grad = jax.lax.scatter_add(grad, cols.astype(jnp.int32), -g.reshape(-1).astype(grad.dtype),
                               dims, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)
    return jnp.where(valid, grad.reshape(probs.shape), jnp.nan), None  # bad label: nan


def _softmax_cross_entropy_reference(logits, labels):
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


@primitive(bwd=_softmax_cross_entropy_bwd, reference=_softmax_cross_entropy_reference,
           labels=("labels",), check=_softmax_cross_entropy_check, category="loss",
           formula="dL/dlogits = softmax(logits) - onehot(label); labels: no gradient",
           residuals="softmax probabilities, labels",
           precision="-inf logits on non-target classes: finite loss, exactly 0 gradient",
           sample_shapes=(((4, 5), (4,)), ((2, 3, 5), (2, 3)), ((5,), ())))
def softmax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against integer class labels, per example.

    ``loss = logsumexp(logits) − logits[label]``; the integer labels get no gradient (a
    ``float0`` zero).

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
        >>> softmax_cross_entropy.vjp(jnp.array([[0.0, 0.0]]), jnp.array([1]))
        ([[0.5, -0.5]], None)
    """
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))  # double-where: all -inf rows
    shifted = logits - m
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(shifted, safe[..., None], axis=-1)
    loss = jnp.where(valid, (lse - picked)[..., 0], jnp.nan)
    return loss, (jnp.exp(shifted - lse), labels)  # the loss; residuals: probs, labels


# --------------------------------------------------- sigmoid_binary_cross_entropy
def _sigmoid_binary_cross_entropy_bwd(res, g):
    x, z = res
    e = jnp.exp(-jnp.abs(x))
    s = jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return g * (s - z), -g * x


@primitive(bwd=_sigmoid_binary_cross_entropy_bwd,
           reference=lambda x, z: jnp.logaddexp(0.0, x) - x * z, **_BINARY,
           domain={"labels": "unit"},
           formula="dL/dx = sigmoid(x) - z, dL/dz = -x", residuals="logits, labels",
           precision="max(x,0) - xz + log1p(e^-|x|): finite at +-1e4")
def sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    """Binary cross-entropy of ``σ(logits)`` against targets in ``[0, 1]``, elementwise.

    ``loss = softplus(x) − x·z = max(x, 0) − x·z + log(1 + e^(−|x|))``, which never
    overflows; each cotangent is summed over broadcast axes.

    Args:
        logits: float array ``x``.
        labels: float targets ``z`` (probabilities, usually 0 or 1); must broadcast with
            ``logits``.

    Returns:
        The loss per element, with the broadcast shape.

    Examples:
        >>> round(float(sigmoid_binary_cross_entropy(0.0, 1.0)), 6)
        0.693147
        >>> sigmoid_binary_cross_entropy.vjp(0.0, 1.0)
        (-0.5, -0.0)
    """
    x, z = logits, labels
    return jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x))), (x, z)
