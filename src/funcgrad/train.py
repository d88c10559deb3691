"""Jit-compiled training: the lesson's update ``w_new = w - learning_rate * gradient``.

* :func:`optimizer` — ``optax.chain`` of ``clip_by_global_norm`` and/or ``clip``, then
  ``sgd``, with injected hyperparameters (changing the learning rate never recompiles).
* :class:`TrainState` — params, optimizer state, step, PRNG key, count of skipped steps.
* :func:`make_train_step` — a pure ``(state, batch) -> (state, metrics)``, jitted with the
  state donated; metrics stay on the device. Non-finite steps are skipped: params and
  optimizer state come back bitwise unchanged and ``skipped`` counts them.
* :func:`make_fused_steps` — K steps in one dispatch through ``lax.scan``.
* :func:`fit` — deterministic shuffling, a padded last batch (no retrace), evaluation,
  metrics fetched every ``log_every`` steps, checkpoints, data parallelism.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import primitives as P

__all__ = [
    "TrainState",
    "FitResult",
    "optimizer",
    "init_state",
    "classification_loss",
    "make_train_step",
    "make_fused_steps",
    "make_eval",
    "layer_norms",
    "fit",
]

Batch = tuple[jax.Array, jax.Array, jax.Array]  # inputs, integer labels, example weights


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a training run carries from step to step (a pytree).

    Attributes:
        params: model parameters.
        opt_state: optax state (``inject_hyperparams``: hyperparameters are leaves).
        step: number of steps taken (int32 scalar), skipped ones included.
        key: raw ``uint32[2]`` PRNG key; epoch ``e`` is shuffled with ``fold_in(key, e)``.
        skipped: number of steps skipped because their gradients were not finite.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    skipped: jax.Array


def _require_positive(name: str, flag: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name}: {flag} must be a finite number > 0; got {value!r}")


def optimizer(
    learning_rate: float,
    *,
    momentum: float = 0.0,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> Any:
    """SGD with optional gradient clipping, as one optax ``GradientTransformation``.

    The chain is ``clip_by_global_norm(clip_norm)`` (if set), ``clip(clip_value)`` (if
    set), then ``sgd(learning_rate, momentum)``, wrapped in ``optax.inject_hyperparams``
    so every number is a leaf of the optimizer state: set
    ``state.opt_state.hyperparams["learning_rate"]`` to change it without recompiling.

    Args:
        learning_rate: step size, > 0.
        momentum: heavy-ball momentum in ``[0, 1)``; 0 means plain SGD.
        clip_norm: maximum global gradient norm, or ``None``.
        clip_value: maximum absolute value of every gradient element, or ``None``.

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: naming the argument, for a non-positive learning rate or clip, or a
            momentum outside ``[0, 1)``.

    The lesson's update, ``w_new = 3 - 0.1 * 16 = 1.4``:

    Examples:
        >>> import jax.numpy as jnp
        >>> tx = optimizer(0.1)
        >>> updates, _ = tx.update(jnp.array(16.0), tx.init(jnp.array(3.0)))
        >>> round(float(jnp.array(3.0) + updates), 6)
        1.4
    """
    import optax

    _require_positive("optimizer", "learning_rate", learning_rate)
    _require_positive("optimizer", "clip_norm", clip_norm)
    _require_positive("optimizer", "clip_value", clip_value)
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"optimizer: momentum must be in [0, 1); got {momentum!r}")

    def chain(learning_rate, momentum, clip_norm, clip_value):
        parts = []
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(clip_norm))
        if clip_value is not None:
            parts.append(optax.clip(clip_value))
        parts.append(optax.sgd(learning_rate, momentum=momentum))
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(
        learning_rate=float(learning_rate),
        momentum=float(momentum) if momentum else None,
        clip_norm=None if clip_norm is None else float(clip_norm),
        clip_value=None if clip_value is None else float(clip_value),
    )


def init_state(params: Any, tx: Any, seed: int = 0) -> TrainState:
    """Build the initial :class:`TrainState`.

    Args:
        params: model parameters.
        tx: an optax transformation, e.g. from :func:`optimizer`.
        seed: seed of the shuffling key.

    Returns:
        The state at step 0.
    """
    return TrainState(params=params, opt_state=tx.init(params),
                      step=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed),
                      skipped=jnp.zeros((), jnp.int32))


def classification_loss(apply_fn: Callable[[Any, jax.Array], jax.Array]) -> Callable:
    """Weighted mean softmax cross-entropy of ``apply_fn`` built from funcgrad primitives.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``.

    Returns:
        ``loss_fn(params, (x, y, w)) -> (loss, {"correct", "count"})``; examples with
        weight 0 (the padding of a partial batch) do not count.
    """
    def loss_fn(params: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, y, w = batch
        logits = apply_fn(params, x)
        per_example = P.softmax_cross_entropy(logits, y)
        count = jnp.sum(w)
        loss = P.div(P.sum(P.mul(per_example, w)), jnp.maximum(count, 1.0))
        correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == y, w, 0.0))
        return loss, {"correct": correct, "count": count}
    return loss_fn


def _layers(tree: Any) -> list[Any]:
    if isinstance(tree, (list, tuple)):
        return list(tree)
    if isinstance(tree, dict):
        return [tree[k] for k in sorted(tree)]
    return [tree]


def _layer_squares(tree: Any) -> jax.Array:
    """Sum of squares of each layer's leaves: the one reduction every norm is built from."""
    return jnp.stack([sum((jnp.sum(jnp.square(x)) for x in jax.tree.leaves(part)),
                          start=jnp.zeros((), jnp.float32)) for part in _layers(tree)])


def layer_norms(tree: Any) -> jax.Array:
    """L2 norm of each layer of a parameter-shaped pytree.

    A list or tuple gives one norm per element; a dict one per key (sorted); anything
    else a single norm.

    Args:
        tree: gradients, parameters or updates.

    Returns:
        A 1-D array of norms.

    Examples:
        >>> import jax.numpy as jnp
        >>> layer_norms([{"w": jnp.array([3.0, 4.0])}, {"w": jnp.ones(4)}]).tolist()
        [5.0, 2.0]
    """
    return jnp.sqrt(_layer_squares(tree))


def _step_body(loss_fn: Callable, tx: Any, stats_fn: Callable | None = None) -> Callable:
    import optax

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # every gradient statistic comes from one sum of squares per layer
        layer_sq = _layer_squares(grads)
        grad_norm = jnp.sqrt(jnp.sum(layer_sq))
        # a nan or inf anywhere makes the sum non-finite (so does a norm beyond float32's
        # range, which no optimizer step could use either)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # bitwise old on a bad step
        hp = getattr(state.opt_state, "hyperparams", {})
        if hp.get("clip_value") is not None:  # the same stateless transforms the chain uses
            clipped = grads
            if hp.get("clip_norm") is not None:
                clipped = optax.clip_by_global_norm(hp["clip_norm"]).update(clipped, None)[0]
            clipped = optax.clip(hp["clip_value"]).update(clipped, None)[0]
            clipped_norm = jnp.sqrt(jnp.sum(_layer_squares(clipped)))
        elif hp.get("clip_norm") is not None:
            # clip_by_global_norm rescales to exactly clip_norm when the norm exceeds it
            clipped_norm = jnp.minimum(grad_norm, hp["clip_norm"].astype(grad_norm.dtype))
        else:
            clipped_norm = grad_norm
        metrics = {
            "loss": loss,
            "accuracy": aux["correct"] / jnp.maximum(aux["count"], 1.0),
            "grad_norm": grad_norm,
            "clipped_grad_norm": clipped_norm,
            "layer_grad_norms": jnp.sqrt(layer_sq),
            "update_norm": jnp.where(finite, jnp.sqrt(jnp.sum(_layer_squares(updates))), 0.0),
            "finite": finite,
        }
        if stats_fn is not None:  # e.g. funcgrad.flow.History.measure
            metrics["flow"] = stats_fn(state.params, grads, updates, batch)
        new_state = TrainState(
            params=jax.tree.map(keep, new_params, state.params),
            opt_state=jax.tree.map(keep, new_opt, state.opt_state),
            step=state.step + 1,
            key=state.key,
            skipped=state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32),
        )
        return new_state, metrics

    return step


def make_train_step(loss_fn: Callable, tx: Any, *, jit: bool = True,
                    wrap: Callable[[Callable], Callable] | None = None,
                    stats_fn: Callable | None = None) -> Callable:
    """One training step ``(state, batch) -> (state, metrics)``, jitted, state donated.

    Metrics (device arrays): ``loss``, ``accuracy``, ``grad_norm`` and
    ``clipped_grad_norm`` (global norm before and after clipping), ``layer_grad_norms``,
    ``update_norm`` and ``finite``. If the loss or any gradient is not finite, params and
    optimizer state are returned bitwise unchanged and ``state.skipped`` grows by one.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (loss, {"correct", "count"})``.
        tx: the optax transformation.
        jit: compile with ``jax.jit(..., donate_argnums=0)``.
        wrap: optional decorator applied before jit (e.g. ``chex.assert_max_traces``).
        stats_fn: optional ``stats_fn(params, grads, updates, batch) -> dict`` computed
            inside the step (e.g. :meth:`funcgrad.flow.History.measure`); its result is
            ``metrics["flow"]``.

    Returns:
        The step function.
    """
    step = _step_body(loss_fn, tx, stats_fn)
    if wrap is not None:
        step = wrap(step)
    return jax.jit(step, donate_argnums=0) if jit else step


def make_fused_steps(loss_fn: Callable, tx: Any, *, jit: bool = True,
                     wrap: Callable[[Callable], Callable] | None = None,
                     stats_fn: Callable | None = None) -> Callable:
    """K training steps in one dispatch: ``(state, batches) -> (state, stacked metrics)``.

    ``batches`` has a leading axis of length K; ``lax.scan`` runs the same step as
    :func:`make_train_step` over it, so small models pay one dispatch per K steps.

    Args:
        loss_fn: as in :func:`make_train_step`.
        tx: the optax transformation.
        jit: compile with the state donated.
        wrap: optional decorator applied before jit.
        stats_fn: as in :func:`make_train_step`.

    Returns:
        The fused function; its metrics have a leading axis of length K.
    """
    body = _step_body(loss_fn, tx, stats_fn)

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
    def evaluate(params: Any, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        loss, aux = loss_fn(params, batch)
        return loss * aux["count"], aux["correct"], aux["count"]
    return jax.jit(evaluate)


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        state: the final :class:`TrainState`.
        history: one host-side record per logged step (means over the interval).
        evals: one record per evaluation (``epoch``, ``step``, ``test_loss``,
            ``test_accuracy``).
        wall_seconds: wall time of the loop, compilation included.
        resumed_from: the checkpoint step the run resumed from, or ``None``.
    """

    state: TrainState
    history: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    wall_seconds: float
    resumed_from: int | None = None


def _epoch_batches(key: jax.Array, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """Index matrix ``(steps, batch_size)`` of one epoch; the last row wraps around."""
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    steps = math.ceil(n / batch_size)
    return np.resize(perm, steps * batch_size).reshape(steps, batch_size)  # cyclic padding


def _evaluate(eval_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray, chunk: int,
              put: Callable[[Any], Any]) -> tuple[float, float]:
    n = len(x)
    steps = math.ceil(n / chunk)
    idx = np.arange(steps * chunk) % n
    weights = (np.arange(steps * chunk) < n).astype(np.float32)
    totals = []
    for s in range(steps):
        sl = slice(s * chunk, (s + 1) * chunk)
        totals.append(eval_fn(params, put((x[idx[sl]], y[idx[sl]], weights[sl]))))
    loss_sum, correct, count = (float(sum(np.asarray(t[i]) for t in totals)) for i in range(3))
    return loss_sum / count, correct / count


def _host_record(pending: list[dict[str, Any]]) -> dict[str, Any]:
    fetched = jax.device_get(pending)
    rows: list[dict[str, np.ndarray]] = []
    for m in fetched:  # single steps have scalar metrics, fused ones a leading K axis
        if np.ndim(m["loss"]) == 0:
            rows.append(m)
        else:
            rows += [{k: v[i] for k, v in m.items()} for i in range(len(m["loss"]))]
    last = rows[-1]
    finite = [bool(r["finite"]) for r in rows]
    good = [r for r in rows if bool(r["finite"])] or rows
    return {
        "train_loss": float(np.mean([r["loss"] for r in good])),
        "train_accuracy": float(np.mean([r["accuracy"] for r in good])),
        "grad_norm": float(last["grad_norm"]),
        "clipped_grad_norm": float(last["clipped_grad_norm"]),
        "update_norm": float(last["update_norm"]),
        "layer_grad_norms": [float(v) for v in np.asarray(last["layer_grad_norms"])],
        "nonfinite_steps": int(len(finite) - sum(finite)),
        "steps_in_interval": len(rows),
    }


def fit(
    params: Any,
    train: tuple[np.ndarray, np.ndarray],
    *,
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    tx: Any,
    batch_size: int = 64,
    epochs: int = 10,
    seed: int = 0,
    steps_per_dispatch: int = 1,
    log_every: int = 50,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    eval_every_epochs: int = 1,
    checkpoints: Any = None,
    resume: bool = False,
    mesh: Any = None,
    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    wrap_step: Callable[[Callable], Callable] | None = None,
    flow: Any = None,
) -> FitResult:
    """Train ``apply_fn`` on ``train`` with minibatch SGD and return the final state.

    Epoch ``e`` visits the examples in the order ``permutation(fold_in(key, e))``, so a run
    is reproducible from its seed, and a resumed run continues bitwise where the
    checkpoint left off (on CPU). A last, partial batch is padded with wrapped-around
    examples of weight 0, so every step has the same shape and nothing retraces.
    ``steps_per_dispatch = K > 1`` runs K steps per dispatch with ``lax.scan``; the
    remainder of an epoch runs as single steps (one more compiled program).

    Args:
        params: initial parameters (ignored when resuming from a checkpoint).
        train: ``(x, y)`` NumPy arrays; ``y`` integer class labels.
        apply_fn: ``apply_fn(params, x) -> logits``.
        tx: an optax transformation, e.g. from :func:`optimizer`.
        batch_size: examples per step, > 0.
        epochs: passes over the data, > 0.
        seed: seed of the shuffling key.
        steps_per_dispatch: K, the steps fused per dispatch, > 0.
        log_every: fetch metrics to the host every this many steps.
        eval_data: optional held-out ``(x, y)``, evaluated every ``eval_every_epochs``
            and at the end.
        eval_every_epochs: evaluation interval in epochs.
        checkpoints: a :class:`funcgrad.checkpoint.CheckpointManager`, or ``None``.
        resume: restore the newest good checkpoint from ``checkpoints`` first.
        mesh: a ``jax.sharding.Mesh`` for data parallelism (batch sharded on axis 0,
            state replicated), or ``None``.
        progress: ``progress(step, total_steps, record_or_None)``, called after every
            dispatch (a progress bar lives here; the CLI supplies one).
        on_log: called with every logged record.
        wrap_step: decorator for the step functions before jit (tests use
            ``chex.assert_max_traces``).
        flow: a :class:`funcgrad.flow.History`: its ``measure`` runs inside every step
            (per-layer gradient statistics), the results stay on the device in it and are
            fetched when ``fit`` logs (or every ``flow.log_every`` steps).

    Returns:
        A :class:`FitResult`.
    """
    x, y = train
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    n = len(x)
    for flag, value in (("batch_size", batch_size), ("epochs", epochs),
                        ("steps_per_dispatch", steps_per_dispatch), ("log_every", log_every),
                        ("eval_every_epochs", eval_every_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit: {flag} must be an int >= 1; got {value!r}")
    if n == 0 or len(y) != n:
        raise ValueError(f"fit: train x and y must be non-empty with equal length; got "
                         f"x.shape={x.shape}, y.shape={y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"fit: train labels y must have an integer dtype; got {y.dtype}")
    y = y.astype(np.int32)

    put_state: Callable[[Any], Any] = lambda t: t
    put_batch: Callable[[Any, int], Any] = lambda b, axis: b
    if mesh is not None:
        from . import parallel

        parallel.check_batch_size(batch_size, mesh)
        put_state = lambda t: parallel.replicate(t, mesh)
        if jax.process_count() > 1:
            # every process builds the same global batch from the same key; each one feeds
            # only its own contiguous slice, which lands on its own devices
            nproc, rank = jax.process_count(), jax.process_index()

            def put_batch(b: Any, axis: int) -> Any:
                def mine(a: np.ndarray) -> np.ndarray:
                    size = a.shape[axis] // nproc
                    return np.take(a, np.arange(rank * size, (rank + 1) * size), axis=axis)
                return parallel.global_batch_from_local(jax.tree.map(mine, b), mesh, axis)
        else:
            put_batch = lambda b, axis: parallel.shard_batch(b, mesh, axis=axis)

    loss_fn = classification_loss(apply_fn)
    stats_fn = None if flow is None else flow.measure
    step_fn = make_train_step(loss_fn, tx, wrap=wrap_step, stats_fn=stats_fn)
    fused_fn = (make_fused_steps(loss_fn, tx, wrap=wrap_step, stats_fn=stats_fn)
                if steps_per_dispatch > 1 else None)
    eval_fn = make_eval(loss_fn)

    state = init_state(params, tx, seed)
    resumed_from = None
    if resume:
        if checkpoints is None:
            raise ValueError("fit: resume=True needs a checkpoint manager (checkpoints=...)")
        if checkpoints.latest_step() is not None:
            state, resumed_from = checkpoints.restore(state)
    # the step donates its state: never donate buffers the caller still holds
    state = put_state(jax.tree.map(lambda a: jnp.array(a, copy=True), state))

    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = int(jax.device_get(state.step))
    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    last_logged = step
    order_cache: dict[int, np.ndarray] = {}
    key = np.asarray(jax.device_get(state.key))  # the state itself is donated each step
    t0 = time.perf_counter()

    def run_eval(epoch: int) -> None:
        if eval_data is None:
            return
        ex, ey = np.asarray(eval_data[0], np.float32), np.asarray(eval_data[1], np.int32)
        chunk = max(batch_size, min(4096, len(ex)))
        if mesh is not None:
            chunk = math.ceil(chunk / batch_size) * batch_size
        loss, acc = _evaluate(eval_fn, state.params, ex, ey, chunk,
                              lambda b: put_batch(b, 0))
        evals.append({"epoch": epoch, "step": step, "test_loss": loss, "test_accuracy": acc})

    def flush() -> dict[str, Any] | None:
        nonlocal pending, last_logged
        if not pending:
            return None
        record = {"step": step, "epoch": step / steps_per_epoch, **_host_record(pending),
                  "wall_seconds": time.perf_counter() - t0}
        pending = []
        last_logged = step
        if flow is not None:
            flow.fetch()
        history.append(record)
        if on_log is not None:
            on_log(record)
        return record

    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = _epoch_batches(key, epoch, n, batch_size)
        order = order_cache[epoch]
        k = steps_per_dispatch if fused_fn is not None and pos % steps_per_dispatch == 0 \
            and pos + steps_per_dispatch <= steps_per_epoch else 1
        rows = order[pos:pos + k]
        weights = np.ones(rows.shape, np.float32)
        if pos + k == steps_per_epoch:  # the padded tail of the last batch has weight 0
            tail = steps_per_epoch * batch_size - n
            if tail:
                weights[-1, batch_size - tail:] = 0.0
        if k == 1:
            batch = put_batch((x[rows[0]], y[rows[0]], weights[0]), 0)
            state, metrics = step_fn(state, batch)
        else:
            batch = put_batch((x[rows], y[rows], weights), 1)
            state, metrics = fused_fn(state, batch)
        if flow is not None:  # stays on the device until the next fetch
            flow_stats = metrics.pop("flow")
            flow.append(flow_stats, step if k == 1 else range(step, step + k))
        pending.append(metrics)
        step += k
        record = None
        if step - last_logged >= log_every or step == total:
            record = flush()
        if checkpoints is not None and checkpoints.should_save(step):
            checkpoints.save(step, state)
        if step % steps_per_epoch == 0:
            done_epoch = step // steps_per_epoch
            if done_epoch % eval_every_epochs == 0 or step == total:
                run_eval(done_epoch)
        if progress is not None:
            progress(step, total, record)
    flush()
    if eval_data is not None and (not evals or evals[-1]["step"] != step):
        run_eval(step // steps_per_epoch)
    if checkpoints is not None and step > 0 and checkpoints.latest_step() != step:
        checkpoints.save(step, state, force=True)
    jax.block_until_ready(state)
    return FitResult(state, history, evals, time.perf_counter() - t0, resumed_from)
