"""The fit loop: shuffling, padded batches, fused dispatches, logging, eval, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..flow.history import History, to_jsonable
from ..tensorboard import host_histograms
from ._nonfinite import nonfinite_report
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
        taps: record every primitive call's :class:`funcgrad.flow.taps.Tap` in each
            step's metrics; a logged record holds the last step's as ``"taps"``.
        on_nonfinite: what follows a step whose loss or gradient is not finite (the step
            itself always leaves params and optimizer state bitwise unchanged):
            ``"skip"`` goes on, ``"stop"`` ends the run at the log that shows it.
        max_consecutive_skips: end the run once this many steps in a row were skipped
            (``None``: never).

    Raises:
        ValueError: naming the field, if one is not an int >= 1 (``seed``: not an int),
            or ``on_nonfinite`` is not ``"skip"`` or ``"stop"``.
    """

    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    steps_per_dispatch: int = 1
    log_every: int = 50
    eval_every_epochs: int = 1
    taps: bool = False
    on_nonfinite: str = "skip"
    max_consecutive_skips: int | None = None

    def __post_init__(self) -> None:
        if self.on_nonfinite not in ("skip", "stop"):
            raise ValueError("fit: argument 'on_nonfinite' must be 'skip' or 'stop'; got "
                             f"{self.on_nonfinite!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("taps", "on_nonfinite") or (
                    f.name == "max_consecutive_skips" and value is None):
                continue
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
        writer: a :class:`funcgrad.tensorboard.TensorBoardWriter` (or any object with
            ``write(record)``, ``write_eval(record)`` and ``histogram_bins``): each step
            bins its gradients on the device, and every logged record (with the last
            step's ``grad_histograms``) and evaluation is written. ``fit`` does not close it.
        on_resume: ``on_resume(step, changed)`` when the run resumes from the checkpoint
            of ``step``; ``changed`` maps each injected hyperparameter whose value in the
            checkpoint differs from ``tx``'s to ``(checkpoint value, value used)``: the
            run goes on with ``tx``'s.
        on_nonfinite_report: ``on_nonfinite_report(report)`` once, for the first step
            that was not finite (the report of :func:`funcgrad.train.nonfinite_report`).
    """

    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None
    on_log: Callable[[dict[str, Any]], None] | None = None
    wrap_step: Callable[[Callable], Callable] | None = None
    flow: Any = None
    writer: Any = None
    on_resume: Callable[[int, dict[str, tuple[Any, Any]]], None] | None = None
    on_nonfinite_report: Callable[[dict[str, Any]], None] | None = None


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
        nonfinite: the report on the first step that was not finite, or ``None``.
        stopped: why the run ended before its last step, or ``None``.
    """

    state: TrainState
    history: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    wall_seconds: float
    resumed_from: int | None = None
    nonfinite: dict[str, Any] | None = None
    stopped: str | None = None


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


def _tap_dicts(taps: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: dict(tap._asdict()) if hasattr(tap, "_asdict") else tap
            for name, tap in taps.items()}


def _host_record(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One logged record from the host records of the steps since the last one."""
    last = rows[-1]
    finite = [bool(r["finite"]) for r in rows]
    good = [r for r in rows if bool(r["finite"])] or rows
    with np.errstate(invalid="ignore", over="ignore"):  # an interval of skipped steps: nan
        loss = float(np.mean([r["loss"] for r in good]))
        accuracy = float(np.mean([r["accuracy"] for r in good]))
    return {
        "train_loss": loss,
        "train_accuracy": accuracy,
        "grad_norm": float(last["grad_norm"]),
        "clipped_grad_norm": float(last["clipped_grad_norm"]),
        "update_norm": float(last["update_norm"]),
        "layer_grad_norms": [float(v) for v in np.asarray(last["layer_grad_norms"])],
        "nonfinite_steps": int(len(finite) - sum(finite)),
        "steps_in_interval": len(rows),
        **({"taps": to_jsonable(_tap_dicts(last["taps"]), digits=None)}
           if "taps" in last else {}),
        **({"grad_histograms": host_histograms(last["grad_histograms"])}
           if "grad_histograms" in last else {}),
    }


class _Run:
    """The mutable part of one :func:`fit` call: state, counters, logs."""

    def __init__(self, state: TrainState, data: tuple[np.ndarray, np.ndarray],
                 cfg: FitConfig, hooks: FitHooks, mesh: Any, loss_fn: Callable) -> None:
        self.state, (self.x, self.y), self.cfg, self.hooks = state, data, cfg, hooks
        self.loss_fn = loss_fn
        self.consecutive_skips = 0
        self.nonfinite: dict[str, Any] | None = None
        self.stopped: str | None = None
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

    def _rows(self, step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Example indices and weights of steps ``step .. step + k - 1`` (one epoch)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_batches(self.key, epoch, self.n, self.cfg.batch_size))
        rows = self._order[1][pos:pos + k]
        weights = np.ones(rows.shape, np.float32)
        tail = self.steps_per_epoch * self.cfg.batch_size - self.n
        if pos + k == self.steps_per_epoch and tail:  # the padded tail has weight 0
            weights[-1, self.cfg.batch_size - tail:] = 0.0
        return rows, weights

    def next_batch(self, fused: bool) -> tuple[int, Any]:
        """The next dispatch's size and placed batch (stacked on axis 0 when fused)."""
        pos = self.step % self.steps_per_epoch
        k_max = self.cfg.steps_per_dispatch
        k = k_max if fused and pos % k_max == 0 and pos + k_max <= self.steps_per_epoch else 1
        rows, weights = self._rows(self.step, k)
        if k == 1:
            return 1, self.put_batch((self.x[rows[0]], self.y[rows[0]], weights[0]), 0)
        return k, self.put_batch((self.x[rows], self.y[rows], weights), 1)

    def _watch(self, rows: list[dict[str, Any]]) -> None:
        """Count skipped steps; replay the first one; stop when the config says so."""
        for r in rows:
            self.consecutive_skips = 0 if bool(r["finite"]) else self.consecutive_skips + 1
        bad = [r["step"] for r in rows if not bool(r["finite"])]
        if bad and self.nonfinite is None:
            # the state is the one after the newest fetched step; it is bitwise the state
            # before the first bad step when every step since was skipped as well
            after = [bool(r["finite"]) for r in rows if r["step"] > bad[0]]
            rows_, weights = self._rows(bad[0], 1)
            batch = (self.x[rows_[0]], self.y[rows_[0]], weights[0])
            self.nonfinite = nonfinite_report(
                self.loss_fn, jax.device_get(self.state.params), batch, step=bad[0],
                params_step=bad[0] if not any(after) else rows[-1]["step"] + 1)
            if self.hooks.on_nonfinite_report is not None:
                self.hooks.on_nonfinite_report(self.nonfinite)
            else:
                warnings.warn(f"fit: step {bad[0]} was not finite and was skipped (params "
                              f"unchanged): {self.nonfinite['report'].splitlines()[0]}",
                              RuntimeWarning, stacklevel=2)
        limit = self.cfg.max_consecutive_skips
        if bad and self.cfg.on_nonfinite == "stop":
            self.stopped = f"step {bad[0]} was not finite (on_nonfinite='stop')"
        elif limit is not None and self.consecutive_skips >= limit:
            self.stopped = (f"{self.consecutive_skips} consecutive steps were not finite "
                            f"(max_consecutive_skips={limit})")

    def _logged(self, rows: list[dict[str, Any]]) -> None:
        self._watch(rows)
        step = rows[-1]["step"] + 1  # steps done after the last fetched one
        self.record = {"step": step, "epoch": step / self.steps_per_epoch,
                       **_host_record(rows), "wall_seconds": time.perf_counter() - self.t0}
        if self.hooks.flow is not None:
            self.hooks.flow.fetch()
        self.history.append(self.record)
        if self.hooks.on_log is not None:
            self.hooks.on_log(self.record)
        if self.hooks.writer is not None:
            self.hooks.writer.write(self.record)

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
        if self.hooks.writer is not None:
            self.hooks.writer.write_eval(self.evals[-1])


def _programs(loss_fn: Callable, tx: Any, cfg: FitConfig,
              hooks: FitHooks) -> tuple[Callable, Callable | None, Callable]:
    """The compiled programs: one step, K fused steps (or ``None``), evaluation."""
    stats_fn = None if hooks.flow is None else hooks.flow.measure
    bins = getattr(hooks.writer, "histogram_bins", 0)  # 0 without a writer
    step_fn = make_train_step(loss_fn, tx, wrap=hooks.wrap_step, stats_fn=stats_fn,
                              histogram_bins=bins, taps=cfg.taps)
    fused_fn = (make_fused_steps(loss_fn, tx, wrap=hooks.wrap_step, stats_fn=stats_fn,
                                 histogram_bins=bins, taps=cfg.taps)
                if cfg.steps_per_dispatch > 1 else None)
    return step_fn, fused_fn, make_eval(loss_fn)


def _use_hyperparameters(restored: Any, fresh: Any) -> tuple[Any, dict[str, tuple]]:
    """``restored`` optimizer state with ``fresh``'s injected hyperparameters, and what
    changed: ``{name: (checkpoint value, value used)}``."""
    old, new = getattr(restored, "hyperparams", None), getattr(fresh, "hyperparams", None)
    if not isinstance(old, dict) or not isinstance(new, dict) or old.keys() != new.keys():
        return restored, {}
    changed = {}
    for name in old:
        a, b = np.asarray(jax.device_get(old[name])), np.asarray(jax.device_get(new[name]))
        if a.shape != b.shape or not np.array_equal(a, b):
            changed[name] = (a.tolist(), b.tolist())
    if not changed:
        return restored, {}
    return restored._replace(hyperparams={**old, **{k: new[k] for k in changed}}), changed


def _initial_state(params: Any, tx: Any, cfg: FitConfig, restore: tuple[Any, bool],
                   mesh: Any, hooks: FitHooks) -> tuple[TrainState, int | None]:
    """The state at step 0, or restored from ``restore = (checkpoints, resume)`` with
    ``tx``'s hyperparameters; a copy, replicated over ``mesh`` when given."""
    checkpoints, resume = restore
    state, resumed_from = init_state(params, tx, cfg.seed), None
    if resume:
        if checkpoints is None:
            raise ValueError("fit: argument 'resume' is True but 'checkpoints' is None; pass "
                             "a CheckpointManager")
        # nothing saved yet: a fresh start; checkpoints that are all unusable: an error
        fresh = state
        state, resumed_from = checkpoints.resume(state)
        if resumed_from is not None:
            opt_state, changed = _use_hyperparameters(state.opt_state, fresh.opt_state)
            state = dataclasses.replace(state, opt_state=opt_state)
            if hooks.on_resume is not None:
                hooks.on_resume(resumed_from, changed)
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
    state, resumed_from = _initial_state(params, tx, cfg, (checkpoints, resume), mesh, hooks)
    run = _Run(state, data, cfg, hooks, mesh, loss_fn)
    while run.step < run.total and run.stopped is None:
        k, batch = run.next_batch(fused_fn is not None)
        run.state, metrics = (step_fn if k == 1 else fused_fn)(run.state, batch)
        record = run.log(metrics, k)
        before, run.step = run.step, run.step + k
        if checkpoints is not None:  # at the first boundary that crosses each multiple
            checkpoints.save(run.step, run.state, previous_step=before)
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
                     resumed_from, run.nonfinite, run.stopped)
