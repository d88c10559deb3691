"""The fit loop: compiled whole-epoch programs, logging, evaluation, checkpoints."""

from __future__ import annotations

import collections
import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..flow.history import History, to_jsonable
from ..tensorboard import host_histograms
from ._config import FitConfig, FitHooks, FitResult, split_options
from ._data import DataPlan
from ._nonfinite import nonfinite_report
from ._precision import initial_loss_scale, policy, wrap_loss
from ._programs import Layout, Programs, eval_chunks, initial_control
from ._step import TrainState, classification_loss, loss_with_aux

__all__ = ["FitConfig", "FitHooks", "FitResult", "fit"]


def _arrays(data: tuple[Any, Any], labels: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(data[0], np.float32), np.asarray(data[1])
    if len(x) == 0 or len(y) != len(x):
        raise ValueError(f"fit: argument '{what}' must hold non-empty x and y of equal "
                         f"length; got "
                         f"x.shape={x.shape}, y.shape={y.shape}")
    if labels and y.ndim != 1:
        raise ValueError(f"fit: argument '{what}' labels y must be 1-D class indices, shape "
                         f"({len(x)},); got shape {y.shape}")
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
    if held_out is not None and held_out[0].shape[1:] != data[0].shape[1:]:
        raise ValueError(f"fit: argument 'eval_data' x must hold examples of shape "
                         f"{data[0].shape[1:]}, as train does; got {held_out[0].shape[1:]}")
    if model is not None:
        x = jax.ShapeDtypeStruct((2, *data[0].shape[1:]), jnp.float32)  # batch norm: N >= 2
        try:
            width = jax.eval_shape(model[0], model[1], x).shape[-1]
        except (ValueError, TypeError) as err:  # e.g. a feature count params do not take
            raise ValueError(f"fit: argument 'train' x, examples of shape "
                             f"{data[0].shape[1:]}, does not fit apply_fn with these params "
                             f"(tried on a batch of shape {x.shape}): {err}") from err
        for what, arrays in (("train", data), ("eval_data", held_out)):
            if arrays is not None and int(arrays[1].max()) >= width:
                raise ValueError(f"fit: argument '{what}' labels y must be < {width}, the "
                                 f"width of apply_fn's output; got {int(arrays[1].max())}")
    return data, held_out


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
        "learning_rate": float(last["learning_rate"]),
        **({"loss_scale": float(last["loss_scale"])} if "loss_scale" in last else {}),
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

    def __init__(self, state: TrainState, plan: DataPlan, cfg: FitConfig, hooks: FitHooks,
                 loss_fn: Callable, layout: Layout) -> None:
        self.state, self.plan, self.cfg, self.hooks = state, plan, cfg, hooks
        self.loss_fn, self.layout = loss_fn, layout
        self.control = initial_control()
        self.consecutive_skips = 0
        self.first_bad: int | None = None
        self.nonfinite: dict[str, Any] | None = None
        self.stopped: str | None = None
        self.steps_per_epoch = plan.steps_per_epoch
        self.total = cfg.epochs * self.steps_per_epoch
        self.step = int(jax.device_get(state.step))
        self.key = np.asarray(jax.device_get(state.key))  # the state is donated each step
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.pending_evals: list[tuple[int, int, Any]] = []  # on the device until a fetch
        self.last_eval_step: int | None = None
        # the one device-to-host buffer: step metrics stay on the device until it fetches
        self.buffer = History(log_every=cfg.log_every, keep=False, on_fetch=self._logged)
        self.record: dict[str, Any] | None = None  # the newest record, until taken
        self.inflight: tuple[range, dict[str, Any]] | None = None  # metrics not buffered
        self.scalar_names: tuple[str, ...] = ()  # the columns of the metrics' "scalars"
        self.t0 = time.perf_counter()

    def next_length(self) -> int:
        """Steps of the next program: to the next boundary of whole epochs (or of K
        steps within an epoch), at most a streamed program's worth, at most the rest."""
        per_epoch, k = self.steps_per_epoch, self.cfg.steps_per_dispatch
        if k is None or k >= per_epoch:
            span = per_epoch * (self.cfg.epochs_per_dispatch if k is None else k // per_epoch)
            length = span - self.step % span
        else:
            pos = self.step % per_epoch
            length = min(k - pos % k, per_epoch - pos)
        if not self.plan.resident:
            length = min(length, self.plan.stream_steps)
        return min(length, self.total - self.step)

    def dispatch(self, programs: Programs) -> tuple[int, dict[str, Any]]:
        """Run the next program (no host sync); its length and stacked metrics."""
        length = self.next_length()
        epochs = (self.step + length - 1) // self.steps_per_epoch \
            - self.step // self.steps_per_epoch + 1
        streamed = not self.plan.resident
        data = (self.plan.streamed(self.key, self.step, length) if streamed
                else self.plan.device_data)
        program = programs.get(length, epochs, streamed)
        self.state, self.control, metrics = program(self.state, self.control, data)
        self.scalar_names = programs.scalar_names  # known once the program was traced
        return length, metrics

    def _named(self, packed: Any) -> dict[str, np.ndarray]:
        """Packed scalar metrics (``"scalars"``: one step's vector, or a program's
        ``(steps, k)`` array) by name: the last axis split into its named entries."""
        return dict(zip(self.scalar_names, np.moveaxis(np.asarray(packed), -1, 0),
                        strict=True))

    def _watch(self, rows: list[dict[str, Any]], halted: bool) -> None:
        """Count skipped steps; replay the first one; say why the device stopped."""
        for r in rows:
            self.consecutive_skips = 0 if bool(r["finite"]) else self.consecutive_skips + 1
        bad = [r["step"] for r in rows if not bool(r["finite"])]
        if bad and self.first_bad is None:
            self.first_bad = bad[0]
        if bad and self.nonfinite is None:
            # the state is the one after the newest fetched step; it is bitwise the state
            # before the first bad step when every step since was skipped as well
            after = [bool(r["finite"]) for r in rows if r["step"] > bad[0]]
            after += self._inflight_finite()
            self.nonfinite = nonfinite_report(
                self.loss_fn, jax.device_get(self.state.params),
                self.plan.host_batch(self.key, bad[0]), step=bad[0],
                params_step=bad[0] if not any(after) else int(jax.device_get(self.state.step)))
            if self.hooks.on_nonfinite_report is not None:
                self.hooks.on_nonfinite_report(self.nonfinite)
            else:
                warnings.warn(f"fit: step {bad[0]} was not finite and was skipped (params "
                              f"unchanged): {self.nonfinite['report'].splitlines()[0]}",
                              RuntimeWarning, stacklevel=2)
        if not halted:  # the programs decide when to stop, at a multiple of log_every
            return
        if self.cfg.on_nonfinite == "stop" and self.first_bad is not None:
            self.stopped = f"step {self.first_bad} was not finite (on_nonfinite='stop')"
        else:
            self.stopped = (f"{self.consecutive_skips} consecutive steps were not finite "
                            f"(max_consecutive_skips={self.cfg.max_consecutive_skips})")

    def _inflight_finite(self) -> list[bool]:
        """Which steps of the program not yet buffered were finite (those that ran)."""
        if self.inflight is None:
            return []
        cols = self._named(jax.device_get(self.inflight[1]["scalars"]))
        ran = cols.get("ran", np.ones_like(cols["finite"]))
        return [bool(f) for f, r in zip(cols["finite"], ran, strict=True) if r]

    def _logged(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:  # the packed scalars back under their names
            r.update(self._named(r.pop("scalars")))
        halted = any(bool(r.get("halt", False)) for r in rows)
        rows = [r for r in rows if bool(r.get("ran", True))]  # not the steps after a stop
        if not rows:
            return
        self._watch(rows, halted)
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
        self.resolve_evals()

    def log(self, steps: range, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """Buffer one program's metrics; the record if this program fetched them."""
        if self.hooks.flow is not None:  # stays on the device until the next fetch
            self.hooks.flow.append(metrics.pop("flow"), steps)
        self.buffer.append(metrics, steps)
        if steps.stop == self.total:
            self.buffer.fetch()
        record, self.record = self.record, None
        return record

    def evaluate(self, programs: Programs, chunks: Any, epoch: int) -> None:
        """Dispatch an evaluation of the current params; read back at the next fetch."""
        if chunks is None or self.last_eval_step == self.step:
            return
        self.pending_evals.append((epoch, self.step,
                                   programs.eval(self.state.params, chunks)))
        self.last_eval_step = self.step

    def resolve_evals(self) -> None:
        """Host records of the evaluations dispatched so far."""
        pending, self.pending_evals = self.pending_evals, []
        for (epoch, step, _), (loss, correct, count) in zip(
                pending, jax.device_get([p[2] for p in pending]), strict=True):
            self.evals.append({"epoch": epoch, "step": step,
                               "test_loss": float(loss) / float(count),
                               "test_accuracy": float(correct) / float(count)})
            if self.hooks.writer is not None:
                self.hooks.writer.write_eval(self.evals[-1])

    def advance(self, programs: Programs, checkpoints: Any, chunks: Any) -> None:
        """One program: dispatch, log, checkpoint, evaluate, report progress."""
        before = self.step
        length, metrics = self.dispatch(programs)
        # the previous program's metrics are buffered (and maybe fetched) only now, with
        # this one already queued: a fetch never leaves the device idle. Before a
        # checkpoint or at the end this program's are buffered too, so a checkpoint never
        # holds steps whose records were not written.
        lagged, self.inflight = self.inflight, (range(before, before + length), metrics)
        record = None if lagged is None else self.log(*lagged)
        if self.stopped is None and (checkpoints is not None or before + length == self.total):
            current, self.inflight = self.inflight, None
            record = self.log(*current) or record
        self.step = before + length
        if self.stopped is not None:  # a program stopped at a log inside it; any later
            self.inflight = None      # one left the state unchanged
            self.step = int(jax.device_get(self.state.step))
        if checkpoints is not None:  # at the first boundary that crosses each multiple
            checkpoints.save(self.step, self.state, previous_step=before)
        per_epoch, every = self.steps_per_epoch, self.cfg.eval_every_epochs
        if self.step % per_epoch == 0 and (
                (self.step // per_epoch) // every > (before // per_epoch) // every
                or self.step == self.total):
            self.evaluate(programs, chunks, self.step // per_epoch)
        if self.hooks.progress is not None:
            if record is not None and record["step"] != self.step:  # the previous program's
                self.hooks.progress(record["step"], self.total, record)
                record = None
            self.hooks.progress(self.step, self.total, record)


def _placer(mesh: Any) -> Callable[[Any, int], Any]:
    """``put(batch, axis)``: a host batch onto the device(s), asynchronously."""
    if mesh is None:
        return lambda batch, axis: jax.device_put(batch)
    from .. import parallel

    return lambda batch, axis: parallel.place_batch(batch, mesh, axis)


#: The programs of recent ``fit`` calls, so that fitting the same model again in the
#: same process neither traces nor compiles (bounded; keys hold their objects alive, so
#: an ``id`` is never reused while its entry exists).
_REUSE: collections.OrderedDict[Any, Programs] = collections.OrderedDict()
_REUSE_SIZE = 8


def _programs(loss: tuple[Any, Callable], tx: Any, cfg: FitConfig, hooks: FitHooks, n: int,
              mesh: Any) -> Programs:
    """The compiled programs for this run: reused from an earlier call with the same loss
    (``loss = (what identifies it, loss_fn)``), optimizer, shapes and hooks."""
    layout = Layout(n=n, batch_size=cfg.batch_size, log_every=cfg.log_every,
                    stop_on_nonfinite=cfg.on_nonfinite == "stop",
                    max_skips=cfg.max_consecutive_skips)
    bins = getattr(hooks.writer, "histogram_bins", 0)
    key: Any = (loss[0], cfg.precision, tx, layout, hooks.flow, bins, cfg.taps,
                hooks.wrap_step, mesh)
    try:
        hash(key)
    except TypeError:  # an unhashable optimizer or hook: build afresh
        key = None
    if key is not None and key in _REUSE:
        _REUSE.move_to_end(key)
        return _REUSE[key]
    precision = policy(cfg.precision)
    programs = Programs(wrap_loss(loss[1], precision), tx, layout,  # loss[1] itself in f32
                        stats_fn=None if hooks.flow is None else hooks.flow.measure,
                        histogram_bins=bins, taps=cfg.taps, wrap=hooks.wrap_step, mesh=mesh,
                        loss_scale=initial_loss_scale(precision))
    if key is not None:
        _REUSE[key] = programs
        while len(_REUSE) > _REUSE_SIZE:
            _REUSE.popitem(last=False)
    return programs


def _finish(run: _Run, programs: Programs, checkpoints: Any, chunks: Any,
            resumed_from: int | None) -> FitResult:
    if run.inflight is not None and run.stopped is None:
        run.log(*run.inflight)
    run.inflight = None
    run.buffer.fetch()
    if chunks is not None:
        run.evaluate(programs, chunks, run.step // run.steps_per_epoch)
    run.resolve_evals()
    if checkpoints is not None and run.step > 0 and checkpoints.latest_step() != run.step:
        checkpoints.save(run.step, run.state, force=True)
    jax.block_until_ready(run.state)
    return FitResult(run.state, run.history, run.evals, time.perf_counter() - run.t0,
                     resumed_from, run.nonfinite, run.stopped)


#: A copy of a pytree in one program (one module-level function: compiled once per
#: structure, not once per call).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


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


def _precision_mismatch(err: Any, precision: str) -> ValueError | None:
    """The error naming ``precision`` when a checkpoint misfits (``err``, a
    ``checkpoint.TemplateMismatch``) only by the float16 loss scale, written by a run of
    another precision; else ``None``."""
    saved, wanted = err.only_in_checkpoint, err.only_in_template
    if not (saved or wanted) or not all(p.startswith(".loss_scale") for p in [*saved, *wanted]):
        return None
    was = "'f16'" if saved else "'f32' or 'bf16'"
    return ValueError(
        f"fit: argument 'precision' must match the checkpoint of step {err.step}, written "
        f"with precision {was} ({'with' if saved else 'without'} a float16 loss scale); "
        f"got {precision!r}. Resume with the precision it was written with (--precision on "
        f"the command line), or start a new checkpoint directory")


def _initial_state(params: Any, programs: Programs, cfg: FitConfig,
                   restore: tuple[Any, bool], mesh: Any,
                   hooks: FitHooks) -> tuple[TrainState, int | None]:
    """The state at step 0 (``init_state``'s, built by one program), or restored from
    ``restore = (checkpoints, resume)`` with ``tx``'s hyperparameters; a copy, replicated
    over ``mesh`` when given."""
    checkpoints, resume = restore
    state = programs.init(params, jax.random.PRNGKey(cfg.seed))
    resumed_from = None
    if resume:
        if checkpoints is None:
            raise ValueError("fit: argument 'resume' is True but 'checkpoints' is None; pass "
                             "a CheckpointManager")
        # nothing saved yet: a fresh start; checkpoints that are all unusable: an error
        from ..checkpoint import TemplateMismatch  # the manager's package: loaded already

        fresh = state
        try:
            state, resumed_from = checkpoints.resume(state)
        except TemplateMismatch as err:  # say which setting, where one explains it
            raise _precision_mismatch(err, cfg.precision) or err from None
        if resumed_from is not None:
            opt_state, changed = _use_hyperparameters(state.opt_state, fresh.opt_state)
            state = dataclasses.replace(state, opt_state=opt_state)
            if hooks.on_resume is not None:
                hooks.on_resume(resumed_from, changed)
            # the programs donate their state: never donate buffers the manager holds
            state = _copy_tree(state)
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

    Epoch ``e`` visits the examples in the order ``shuffle(key, [e], n)`` (a sort of
    hashed counters, the same on the host and the device; :func:`shuffle`): a run is
    reproducible from its seed, and a resumed run continues bitwise (on CPU). A partial last
    batch is padded with wrapped-around examples of weight 0, so nothing retraces.

    One compiled program runs a whole epoch (``epochs_per_dispatch`` of them, or
    ``steps_per_dispatch`` steps) as a ``lax.scan``. Training data within
    ``device_data_budget`` is placed on the device once and each epoch is shuffled and
    gathered there; larger data streams from the host one program at a time, the next
    program's batches in flight while the current one trains. Nothing waits on the device
    between programs except the metrics fetch every ``log_every`` steps; evaluations are
    dispatched at epoch ends and read back at the next fetch. A checkpoint is saved at the
    first program boundary past each multiple of ``checkpoints.every``, and at the end.
    With ``on_nonfinite="stop"`` or ``max_consecutive_skips``, the program itself stops at
    the multiple of ``log_every`` that shows why (later steps leave the state unchanged).

    Args:
        params: initial parameters (ignored when resuming from a checkpoint).
        train: ``(x, y)`` NumPy arrays; ``y`` integer class labels for the default loss.
        tx: an optax transformation, e.g. from :func:`funcgrad.train.optimizer`.
        apply_fn: ``apply_fn(params, x) -> logits``, for the default loss.
        loss_fn: ``loss_fn(params, (x, y, w)) -> (loss, aux)``, or a scalar loss alone;
            default ``classification_loss(apply_fn)``. Examples of weight ``w = 0`` are
            padding.
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
    cfg, hooks = split_options(config, hooks, options)
    if loss_fn is None and apply_fn is None:
        raise TypeError("fit: argument 'apply_fn' (for the default classification loss) or "
                        "'loss_fn' is required; got neither")
    data, held_out = _datasets(train, eval_data, None if loss_fn else (apply_fn, params))
    loss = (("classification_loss", apply_fn), classification_loss(apply_fn)) \
        if loss_fn is None else (loss_fn, loss_with_aux(loss_fn, "fit"))
    loss_fn = wrap_loss(loss[1], policy(cfg.precision))  # the non-finite replay's loss
    programs = _programs(loss, tx, cfg, hooks, len(data[0]), mesh)
    state, resumed_from = _initial_state(params, programs, cfg, (checkpoints, resume), mesh,
                                         hooks)
    put = _placer(mesh)
    plan = DataPlan(data, cfg.batch_size, cfg.device_data_budget, mesh, put)
    chunks = None if held_out is None else eval_chunks(held_out, cfg.batch_size, mesh, put)
    run = _Run(state, plan, cfg, hooks, loss_fn, programs.layout)
    while run.step < run.total and run.stopped is None:
        run.advance(programs, checkpoints, chunks)
    return _finish(run, programs, checkpoints, chunks, resumed_from)
