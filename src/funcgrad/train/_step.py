"""The train step: a pure ``(state, batch) -> (state, metrics)``, single or scan-fused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import primitives as P
from ..flow.stats import layer_squares as _layer_squares
from ..flow.taps import tapped_value_and_grad
from ..tensorboard import layer_histograms
from ._optimizer import clipped_grad_norm, current_learning_rate, update_norm
from ._precision import scaled_loss, unscale

__all__ = [
    "Batch",
    "TrainState",
    "classification_loss",
    "init_state",
    "make_eval",
    "make_fused_steps",
    "make_train_step",
]

Batch = tuple[jax.Array, jax.Array, jax.Array]  # inputs, targets, example weights


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a training run carries from step to step (a pytree).

    Attributes:
        params: model parameters.
        opt_state: optax state (``inject_hyperparams``: hyperparameters are leaves).
        step: number of steps taken (int32 scalar), skipped ones included.
        key: raw ``uint32[2]`` PRNG key; epoch ``e`` is shuffled with
            ``funcgrad.train.shuffle(key, [e], n)``.
        skipped: number of steps skipped because their gradients were not finite.
        loss_scale: the dynamic :class:`~funcgrad.train.LossScale` of a float16 run, or
            None (no scaling; no leaves).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    skipped: jax.Array
    loss_scale: Any = None


def init_state(params: Any, tx: Any, seed: int = 0, loss_scale: Any = None) -> TrainState:
    """Build the initial :class:`TrainState`.

    Args:
        params: model parameters.
        tx: an optax transformation, e.g. from :func:`funcgrad.train.optimizer`.
        seed: seed of the shuffling key.
        loss_scale: a :class:`~funcgrad.train.LossScale` (float16), or None.

    Returns:
        The state at step 0.
    """
    return TrainState(params=params, opt_state=tx.init(params),
                      step=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed),
                      skipped=jnp.zeros((), jnp.int32), loss_scale=loss_scale)


def classification_loss(apply_fn: Callable[[Any, jax.Array], jax.Array]) -> Callable:
    """Weighted mean softmax cross-entropy of ``apply_fn`` built from funcgrad primitives.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``.

    Returns:
        ``loss_fn(params, (x, y, w)) -> (loss, {"correct", "count"})``; examples with
        weight 0 (the padding of a partial batch) do not count. An ``(x, y)`` batch
        weighs every example 1.

    Raises:
        TypeError: (when called) naming ``batch``, if it is not ``(x, y)`` or ``(x, y, w)``.
    """
    def loss_fn(params: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, y, w = weighted_batch(batch, "classification_loss")
        logits = apply_fn(params, x)
        per_example = P.softmax_cross_entropy(logits, y)
        count = jnp.sum(w)
        loss = P.div(P.sum(P.mul(per_example, w)), jnp.maximum(count, 1.0))
        correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == y, w, 0.0))
        return loss, {"correct": correct, "count": count}
    return loss_fn


def weighted_batch(batch: Any, caller: str) -> Batch:
    """``batch`` as ``(x, y, w)``: itself, or an ``(x, y)`` batch with every weight 1.

    Args:
        batch: ``(x, y, w)`` or ``(x, y)``.
        caller: the function named by an error.

    Returns:
        The inputs, the targets and the example weights.

    Raises:
        TypeError: naming ``caller`` and ``batch``, for anything else.
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return tuple(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1], jnp.ones(jnp.shape(batch[1])[:1], jnp.float32)
    got = (f"a {type(batch).__name__} of length {len(batch)}"
           if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}")
    raise TypeError(f"{caller}: argument 'batch' must be (x, y) or (x, y, w), w the example "
                    f"weights; got {got}")


def loss_with_aux(loss_fn: Callable, caller: str) -> Callable:
    """``loss_fn`` as ``(params, batch) -> (loss, aux)``: a bare scalar loss gets ``aux = {}``.

    Args:
        loss_fn: ``loss_fn(params, batch)`` returning a scalar loss, or ``(loss, aux)``.
        caller: the function named by an error.

    Returns:
        The wrapped loss. When traced, it raises a ``TypeError`` naming ``caller`` and
        ``loss_fn`` if the loss is not a floating-point scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> f = loss_with_aux(lambda p, b: jnp.sum(p * b), "fit")
        >>> f(jnp.ones(2), jnp.ones(2))
        (Array(2., dtype=float32), {})
        >>> loss_with_aux(lambda p, b: p * b, "fit")(jnp.ones(2), jnp.ones(2))
        Traceback (most recent call last):
        ...
        TypeError: fit: argument 'loss_fn' must return ... got a loss of shape (2,) ...
    """
    def with_aux(params: Any, batch: Any) -> tuple[jax.Array, Any]:
        out = loss_fn(params, batch)
        loss, aux = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
        if isinstance(loss, (tuple, list, dict)):
            raise TypeError(f"{caller}: argument 'loss_fn' must return a floating-point "
                            f"scalar loss, or (loss, aux); got a {type(out).__name__} of "
                            f"length {len(out)}")
        shape, dtype = jnp.shape(loss), jnp.result_type(loss)
        if shape != () or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{caller}: argument 'loss_fn' must return a floating-point "
                            f"scalar loss, or (loss, aux); got a loss of shape {shape} and "
                            f"dtype {dtype}")
        return loss, aux
    return with_aux


def _accuracy(aux: Any) -> jax.Array:
    if isinstance(aux, dict) and "correct" in aux and "count" in aux:
        return aux["correct"] / jnp.maximum(aux["count"], 1.0)
    return jnp.asarray(jnp.nan, jnp.float32)  # a loss without the classification aux


def _step_body(loss_fn: Callable, tx: Any, stats_fn: Callable | None = None,
               histogram_bins: int = 0, taps: bool = False,
               caller: str = "make_train_step") -> Callable:
    import optax

    loss_fn = loss_with_aux(loss_fn, caller)

    # one forward and one backward pass give the loss, the gradients, the taps and the
    # activations' statistics; with neither taps nor stats it is jax.value_and_grad itself
    grad_fn = tapped_value_and_grad(loss_fn, has_aux=True, taps=taps,
                                    activations=stats_fn is not None)
    # float16: the loss times the state's scale S, the gradients divided by S in float32
    scaled_grad_fn = tapped_value_and_grad(scaled_loss(loss_fn), has_aux=True, taps=taps,
                                           activations=stats_fn is not None)

    def step(state: TrainState, batch: Batch,
             active: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
        # active=False (fit's programs after a stop): the state comes back bitwise as it
        # was, its step count included; it rides on the non-finite guard's select
        scale = state.loss_scale
        if scale is None:
            (loss, aux), grads, extra = grad_fn(state.params, batch)
        else:
            (_, (loss, aux)), grads, extra = scaled_grad_fn(state.params, batch, scale.scale)
            grads = unscale(grads, scale.scale)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # every gradient statistic comes from one sum of squares per layer
        layer_sq = _layer_squares(grads)
        grad_norm = jnp.sqrt(jnp.sum(layer_sq))
        # a nan or inf anywhere makes the sum non-finite (so does a norm beyond float32's
        # range, which no optimizer step could use either)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        take = finite if active is None else finite & active
        keep = lambda new, old: jnp.where(take, new, old)  # bitwise old on a bad step
        metrics = {
            "loss": loss,
            "accuracy": _accuracy(aux),
            "grad_norm": grad_norm,
            "clipped_grad_norm": clipped_grad_norm(tx, grads, state.opt_state, new_opt,
                                                   state.params, grad_norm),
            "layer_grad_norms": jnp.sqrt(layer_sq),
            "update_norm": jnp.where(take, update_norm(new_opt, updates), 0.0),
            "finite": finite,
            "learning_rate": current_learning_rate(new_opt),
        }
        if scale is not None:
            metrics["loss_scale"] = scale.scale
        if stats_fn is not None:  # e.g. funcgrad.flow.History.measure
            metrics["flow"] = _measure(stats_fn, state.params, grads, updates, batch, extra)
        if taps:  # {node name: Tap}, the names funcgrad.explain gives the same calls
            metrics["taps"] = extra["taps"]
        if histogram_bins:  # binned here: only L x (2 * bins + 6) numbers leave the device
            metrics["grad_histograms"] = layer_histograms(grads, histogram_bins)
        ran = jnp.int32(1) if active is None else active.astype(jnp.int32)
        new_scale = None if scale is None else scale.adjust(finite)
        if new_scale is not None and active is not None:
            new_scale = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                                     new_scale, scale)
        new_state = TrainState(
            params=jax.tree.map(keep, new_params, state.params),
            opt_state=jax.tree.map(keep, new_opt, state.opt_state),
            step=state.step + ran,
            key=state.key,
            skipped=state.skipped + jnp.where(finite, 0, ran),
            loss_scale=new_scale,
        )
        if active is not None:
            metrics["ran"] = active
        return new_state, metrics

    return step


def _measure(stats_fn: Callable, params: Any, grads: Any, updates: Any, batch: Batch,
             extra: dict[str, Any]) -> Any:
    """``stats_fn`` with the step's own activation statistics when it takes them."""
    import inspect

    try:
        takes = "activations" in inspect.signature(stats_fn).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return stats_fn(params, grads, updates, batch, activations=extra)
    return stats_fn(params, grads, updates, batch)


def make_train_step(loss_fn: Callable, tx: Any, *, jit: bool = True,
                    wrap: Callable[[Callable], Callable] | None = None,
                    stats_fn: Callable | None = None, histogram_bins: int = 0,
                    taps: bool = False) -> Callable:
    """One training step ``(state, batch) -> (state, metrics)``, jitted, state donated.

    Metrics (device arrays): ``loss``, ``accuracy`` (NaN when the loss's aux has no
    ``correct``/``count``), ``grad_norm`` and ``clipped_grad_norm`` (global norm before and
    after clipping; see :func:`funcgrad.train.clipped_grad_norm` for any optax chain),
    ``layer_grad_norms``, ``update_norm`` and ``finite``. If the loss or any gradient is
    not finite, params and optimizer state are returned bitwise unchanged and
    ``state.skipped`` grows by one.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (loss, aux)``, or a scalar loss alone (no
            aux); aux ``{"correct", "count"}`` gives the accuracy.
        tx: the optax transformation.
        jit: compile with ``jax.jit(..., donate_argnums=0)``.
        wrap: optional decorator applied before jit (e.g. ``chex.assert_max_traces``).
        stats_fn: optional ``stats_fn(params, grads, updates, batch) -> dict`` computed
            inside the step (e.g. :meth:`funcgrad.flow.History.measure`); its result is
            ``metrics["flow"]``.
        histogram_bins: if > 0, ``metrics["grad_histograms"]`` holds per-layer gradient
            histograms with this many bins (:func:`funcgrad.tensorboard.layer_histograms`).
        taps: ``metrics["taps"]`` maps every primitive call of ``loss_fn`` (by its
            :func:`funcgrad.explain` node name) to the :class:`funcgrad.flow.taps.Tap`
            of the gradient that reached its output (see :func:`funcgrad.tap_grad`).

    Returns:
        The step function.
    """
    step = _step_body(loss_fn, tx, stats_fn, histogram_bins, taps, "make_train_step")
    if wrap is not None:
        step = wrap(step)
    return jax.jit(step, donate_argnums=0) if jit else step


def make_fused_steps(loss_fn: Callable, tx: Any, *, jit: bool = True,
                     wrap: Callable[[Callable], Callable] | None = None,
                     stats_fn: Callable | None = None, histogram_bins: int = 0,
                     taps: bool = False) -> Callable:
    """K training steps in one dispatch: ``(state, batches) -> (state, stacked metrics)``.

    ``batches`` has a leading axis of length K; ``lax.scan`` runs the same step as
    :func:`make_train_step` over it, so small models pay one dispatch per K steps.

    Args:
        loss_fn: as in :func:`make_train_step`.
        tx: the optax transformation.
        jit: compile with the state donated.
        wrap: optional decorator applied before jit.
        stats_fn: as in :func:`make_train_step`.
        histogram_bins: as in :func:`make_train_step`.
        taps: as in :func:`make_train_step`.

    Returns:
        The fused function; its metrics have a leading axis of length K.
    """
    body = _step_body(loss_fn, tx, stats_fn, histogram_bins, taps, "make_fused_steps")

    def fused(state: TrainState, batches: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        return jax.lax.scan(body, state, batches)

    if wrap is not None:
        fused = wrap(fused)
    return jax.jit(fused, donate_argnums=0) if jit else fused


def make_eval(loss_fn: Callable) -> Callable:
    """Jitted ``(params, batch) -> (weighted loss sum, correct, count)``.

    Args:
        loss_fn: as in :func:`make_train_step`.

    Returns:
        The evaluation function.
    """
    return jax.jit(eval_body(loss_fn))


def _example_count(batch: Any) -> jax.Array:
    """The weight of a batch: its weights' sum for ``(x, y, w)``, else its examples."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return jnp.sum(batch[2])
    return jnp.asarray(jnp.shape(jax.tree.leaves(batch)[0])[0], jnp.float32)


def eval_body(loss_fn: Callable, caller: str = "make_eval") -> Callable:
    """The function :func:`make_eval` compiles (for use inside other programs)."""
    loss_fn = loss_with_aux(loss_fn, caller)

    def evaluate(params: Any, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        loss, aux = loss_fn(params, batch)
        count = aux["count"] if isinstance(aux, dict) and "count" in aux \
            else _example_count(batch)
        correct = aux.get("correct", jnp.nan) if isinstance(aux, dict) else jnp.nan
        return loss * count, jnp.asarray(correct, jnp.float32), jnp.asarray(count,
                                                                            jnp.float32)
    return evaluate
