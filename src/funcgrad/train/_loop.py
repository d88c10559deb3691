"""The fit loop: shuffling, padded batches, fused dispatches, logging, eval, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..flow.history import History
from ._step import (
    TrainState,
    classification_loss,
    init_state,
    make_eval,
    make_fused_steps,
    make_train_step,
)

__all__ = ["FitConfig", "FitHooks", "FitResult", "fit"]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The numbers of a :func:`fit` run (each may also be passed to ``fit`` by keyword).

    Attributes:
        batch_size: examples per step.
        epochs: passes over the data.
        seed: seed of the shuffling key.
        steps_per_dispatch: K, the steps fused per dispatch with ``lax.scan``.
        log_every: fetch metrics to the host every this many steps.
        eval_every_epochs: evaluation interval in epochs.

    Raises:
        ValueError: naming the field, if one is not an int >= 1 (``seed``: not an int).
    """

    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    steps_per_dispatch: int = 1
    log_every: int = 50
    eval_every_epochs: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            bad = not isinstance(value, (int, np.integer)) or isinstance(value, bool)
            if f.name != "seed" and (bad or value < 1):
                raise ValueError(f"fit: argument '{f.name}' must be an int >= 1; "
                                 f"got {value!r}")
            if f.name == "seed" and bad:
                raise ValueError(f"fit: argument 'seed' must be an int; got {value!r}")


@dataclasses.dataclass(frozen=True)
class FitHooks:
    """What :func:`fit` calls besides the step (each may also be passed by keyword).

    Attributes:
        progress: ``progress(step, total_steps, record_or_None)``, called after every
            dispatch (a progress bar lives here; the CLI supplies one).
        on_log: called with every logged record.
        wrap_step: decorator for the step functions before jit (tests use
            ``chex.assert_max_traces``).
        flow: a :class:`funcgrad.flow.History`: its ``measure`` runs inside every step,
            the results stay on the device in it and are fetched when ``fit`` logs.
    """

    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None
    on_log: Callable[[dict[str, Any]], None] | None = None
    wrap_step: Callable[[Callable], Callable] | None = None
    flow: Any = None


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


def _split_options(config: FitConfig | None, hooks: FitHooks | None,
                   options: dict[str, Any]) -> tuple[FitConfig, FitHooks]:
    names = {"config": {f.name for f in dataclasses.fields(FitConfig)},
             "hooks": {f.name for f in dataclasses.fields(FitHooks)}}
    unknown = sorted(set(options) - names["config"] - names["hooks"])
    if unknown:
        raise TypeError(f"fit: unexpected keyword argument {unknown[0]!r}; expected one of "
                        f"{sorted(names['config'] | names['hooks'])}")
    config = dataclasses.replace(config or FitConfig(),
                                 **{k: v for k, v in options.items() if k in names["config"]})
    hooks = dataclasses.replace(hooks or FitHooks(),
                                **{k: v for k, v in options.items() if k in names["hooks"]})
    return config, hooks


def _arrays(data: tuple[Any, Any], labels: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(data[0], np.float32), np.asarray(data[1])
    if len(x) == 0 or len(y) != len(x):
        raise ValueError(f"fit: argument '{what}' must hold non-empty x and y of equal "
                         f"length; got "
                         f"x.shape={x.shape}, y.shape={y.shape}")
    if labels and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"fit: argument '{what}' labels y must have an integer dtype "
                        f"(class indices); got {y.dtype}")
    if labels and y.min() < 0:
        raise ValueError(f"fit: argument '{what}' labels y must be class indices >= 0; "
                         f"got {int(y.min())}")
    return x, y.astype(np.int32 if np.issubdtype(y.dtype, np.integer) else np.float32)


def _datasets(train: tuple[Any, Any], eval_data: tuple[Any, Any] | None,
              model: tuple[Callable, Any] | None) -> tuple[tuple[np.ndarray, np.ndarray],
                                                           tuple[np.ndarray, np.ndarray] | None]:
    """Validated host arrays; ``model = (apply_fn, params)`` for the classification loss,
    whose labels must index the model's output."""
    data = _arrays(train, model is not None, "train")
    held_out = None if eval_data is None else _arrays(eval_data, model is not None,
                                                      "eval_data")
    if model is not None:
        x = jax.ShapeDtypeStruct((2, *data[0].shape[1:]), jnp.float32)  # batch norm: N >= 2
        width = jax.eval_shape(model[0], model[1], x).shape[-1]
        for what, arrays in (("train", data), ("eval_data", held_out)):
            if arrays is not None and int(arrays[1].max()) >= width:
                raise ValueError(f"fit: argument '{what}' labels y must be < {width}, the "
                                 f"width of apply_fn's output; got {int(arrays[1].max())}")
    return data, held_out


def _epoch_batches(key: np.ndarray, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """Index matrix ``(steps, batch_size)`` of one epoch; the last row wraps around."""
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    steps = math.ceil(n / batch_size)
    return np.resize(perm, steps * batch_size).reshape(steps, batch_size)  # cyclic padding


def _host_record(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One logged record from the host records of the steps since the last one."""
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


class _Run:
    """The mutable part of one :func:`fit` call: state, counters, logs."""

    def __init__(self, state: TrainState, data: tuple[np.ndarray, np.ndarray],
                 cfg: FitConfig, hooks: FitHooks, mesh: Any) -> None:
        self.state, (self.x, self.y), self.cfg, self.hooks = state, data, cfg, hooks
        self.put_batch: Callable[[Any, int], Any] = lambda b, axis: b
        if mesh is not None:
            from .. import parallel

            self.put_batch = lambda b, axis: parallel.place_batch(b, mesh, axis)
        self.mesh = mesh
        self.n = len(self.x)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.total = cfg.epochs * self.steps_per_epoch
        self.step = int(jax.device_get(state.step))
        self.key = np.asarray(jax.device_get(state.key))  # the state is donated each step
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        # the one device-to-host buffer: step metrics stay on the device until it fetches
        self.buffer = History(log_every=cfg.log_every, keep=False, on_fetch=self._logged)
        self.record: dict[str, Any] | None = None  # the newest record, until taken
        self._order: tuple[int, np.ndarray] | None = None
        self.t0 = time.perf_counter()

    def next_batch(self, fused: bool) -> tuple[int, Any]:
        """The next dispatch's size and placed batch (stacked on axis 0 when fused)."""
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_batches(self.key, epoch, self.n, self.cfg.batch_size))
        k_max = self.cfg.steps_per_dispatch
        k = k_max if fused and pos % k_max == 0 and pos + k_max <= self.steps_per_epoch else 1
        rows = self._order[1][pos:pos + k]
        weights = np.ones(rows.shape, np.float32)
        tail = self.steps_per_epoch * self.cfg.batch_size - self.n
        if pos + k == self.steps_per_epoch and tail:  # the padded tail has weight 0
            weights[-1, self.cfg.batch_size - tail:] = 0.0
        if k == 1:
            return 1, self.put_batch((self.x[rows[0]], self.y[rows[0]], weights[0]), 0)
        return k, self.put_batch((self.x[rows], self.y[rows], weights), 1)

    def _logged(self, rows: list[dict[str, Any]]) -> None:
        step = rows[-1]["step"] + 1  # steps done after the last fetched one
        self.record = {"step": step, "epoch": step / self.steps_per_epoch,
                       **_host_record(rows), "wall_seconds": time.perf_counter() - self.t0}
        if self.hooks.flow is not None:
            self.hooks.flow.fetch()
        self.history.append(self.record)
        if self.hooks.on_log is not None:
            self.hooks.on_log(self.record)

    def log(self, metrics: dict[str, Any], k: int) -> dict[str, Any] | None:
        """Buffer one dispatch's metrics; the record if this dispatch fetched them."""
        if self.hooks.flow is not None:  # stays on the device until the next fetch
            self.hooks.flow.append(metrics.pop("flow"),
                                   self.step if k == 1 else range(self.step, self.step + k))
        self.buffer.append(metrics, self.step if k == 1 else range(self.step, self.step + k))
        if self.step + k == self.total:
            self.buffer.fetch()
        record, self.record = self.record, None
        return record

    def evaluate(self, eval_fn: Callable, data: tuple[np.ndarray, np.ndarray] | None,
                 epoch: int) -> None:
        if data is None:
            return
        ex, ey = data
        chunk = max(self.cfg.batch_size, min(4096, len(ex)))
        if self.mesh is not None:
            chunk = math.ceil(chunk / self.cfg.batch_size) * self.cfg.batch_size
        steps = math.ceil(len(ex) / chunk)
        idx = np.arange(steps * chunk) % len(ex)
        weights = (np.arange(steps * chunk) < len(ex)).astype(np.float32)
        totals = [eval_fn(self.state.params, self.put_batch(
            (ex[idx[sl]], ey[idx[sl]], weights[sl]), 0))
            for sl in (slice(s * chunk, (s + 1) * chunk) for s in range(steps))]
        loss, correct, count = (float(sum(np.asarray(t[i]) for t in totals)) for i in range(3))
        self.evals.append({"epoch": epoch, "step": self.step, "test_loss": loss / count,
                           "test_accuracy": correct / count})


def _programs(loss_fn: Callable, tx: Any, cfg: FitConfig,
              hooks: FitHooks) -> tuple[Callable, Callable | None, Callable]:
    """The compiled programs: one step, K fused steps (or ``None``), evaluation."""
    stats_fn = None if hooks.flow is None else hooks.flow.measure
    step_fn = make_train_step(loss_fn, tx, wrap=hooks.wrap_step, stats_fn=stats_fn)
    fused_fn = (make_fused_steps(loss_fn, tx, wrap=hooks.wrap_step, stats_fn=stats_fn)
                if cfg.steps_per_dispatch > 1 else None)
    return step_fn, fused_fn, make_eval(loss_fn)


def _initial_state(params: Any, tx: Any, cfg: FitConfig, restore: tuple[Any, bool],
                   mesh: Any) -> tuple[TrainState, int | None]:
    """The state at step 0, or restored from ``restore = (checkpoints, resume)``; a copy,
    replicated over ``mesh`` when given."""
    checkpoints, resume = restore
    state, resumed_from = init_state(params, tx, cfg.seed), None
    if resume:
        if checkpoints is None:
            raise ValueError("fit: argument 'resume' is True but 'checkpoints' is None; pass "
                             "a CheckpointManager")
        if checkpoints.latest_step() is not None:
            state, resumed_from = checkpoints.restore(state)
    # the step donates its state: never donate buffers the caller still holds
    state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)
    if mesh is not None:
        from .. import parallel

        parallel.check_batch_size(cfg.batch_size, mesh)
        state = parallel.replicate(state, mesh)
    return state, resumed_from


def fit(
    params: Any,
    train: tuple[np.ndarray, np.ndarray],
    *,
    tx: Any,
    apply_fn: Callable[[Any, jax.Array], jax.Array] | None = None,
    loss_fn: Callable | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    checkpoints: Any = None,
    resume: bool = False,
    mesh: Any = None,
    config: FitConfig | None = None,
    hooks: FitHooks | None = None,
    **options: Any,
) -> FitResult:
    """Train on ``train`` with minibatch steps of ``tx`` and return the final state.

    Epoch ``e`` visits the examples in the order ``permutation(fold_in(key, e))``: a run is
    reproducible from its seed, and a resumed run continues bitwise (on CPU). A partial last
    batch is padded with wrapped-around examples of weight 0, so nothing retraces.
    ``steps_per_dispatch = K > 1`` runs K steps per dispatch with ``lax.scan`` (the rest of
    an epoch as single steps). A checkpoint is saved whenever a dispatch crosses a multiple
    of ``checkpoints.every``, and at the end.

    Args:
        params: initial parameters (ignored when resuming from a checkpoint).
        train: ``(x, y)`` NumPy arrays; ``y`` integer class labels for the default loss.
        tx: an optax transformation, e.g. from :func:`funcgrad.train.optimizer`.
        apply_fn: ``apply_fn(params, x) -> logits``, for the default loss.
        loss_fn: ``loss_fn(params, (x, y, w)) -> (loss, aux)``; default
            ``classification_loss(apply_fn)``. Examples of weight ``w = 0`` are padding.
        eval_data: optional held-out ``(x, y)``, evaluated every ``eval_every_epochs``
            and at the end.
        checkpoints: a :class:`funcgrad.checkpoint.CheckpointManager`, or ``None``.
        resume: restore the newest good checkpoint from ``checkpoints`` first.
        mesh: a ``jax.sharding.Mesh`` for data parallelism (batch sharded on axis 0,
            state replicated; :func:`funcgrad.parallel.place_batch`), or ``None``.
        config: a :class:`FitConfig` (batch size, epochs, seed, ...).
        hooks: a :class:`FitHooks` (progress, on_log, wrap_step, flow).
        **options: any field of :class:`FitConfig` or :class:`FitHooks` by name, e.g.
            ``batch_size=32, epochs=3, progress=bar``; overrides ``config``/``hooks``.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: naming the argument, for a bad option or data.
        TypeError: for an unknown keyword, or non-integer labels with the default loss.
    """
    cfg, hooks = _split_options(config, hooks, options)
    if loss_fn is None and apply_fn is None:
        raise TypeError("fit: argument 'apply_fn' (for the default classification loss) or "
                        "'loss_fn' is required; got neither")
    data, held_out = _datasets(train, eval_data, None if loss_fn else (apply_fn, params))
    loss_fn = classification_loss(apply_fn) if loss_fn is None else loss_fn
    step_fn, fused_fn, eval_fn = _programs(loss_fn, tx, cfg, hooks)
    state, resumed_from = _initial_state(params, tx, cfg, (checkpoints, resume), mesh)
    run = _Run(state, data, cfg, hooks, mesh)
    while run.step < run.total:
        k, batch = run.next_batch(fused_fn is not None)
        run.state, metrics = (step_fn if k == 1 else fused_fn)(run.state, batch)
        record = run.log(metrics, k)
        before, run.step = run.step, run.step + k
        if checkpoints is not None and checkpoints.should_save(run.step, previous_step=before):
            checkpoints.save(run.step, run.state)
        done_epoch, pos = divmod(run.step, run.steps_per_epoch)
        if pos == 0 and (done_epoch % cfg.eval_every_epochs == 0 or run.step == run.total):
            run.evaluate(eval_fn, held_out, done_epoch)
        if hooks.progress is not None:
            hooks.progress(run.step, run.total, record)
    run.buffer.fetch()
    if held_out is not None and (not run.evals or run.evals[-1]["step"] != run.step):
        run.evaluate(eval_fn, held_out, run.step // run.steps_per_epoch)
    if checkpoints is not None and run.step > 0 and checkpoints.latest_step() != run.step:
        checkpoints.save(run.step, run.state, force=True)
    jax.block_until_ready(run.state)
    return FitResult(run.state, run.history, run.evals, time.perf_counter() - run.t0,
                     resumed_from)
