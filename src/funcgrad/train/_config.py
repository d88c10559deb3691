"""What :func:`funcgrad.train.fit` takes and returns: its config, hooks and result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ._step import TrainState

__all__ = ["FitConfig", "FitHooks", "FitResult", "split_options"]

#: FitConfig fields that may be ``None``.
_OPTIONAL = ("steps_per_dispatch", "max_consecutive_skips", "device_data_budget")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The numbers of a :func:`fit` run (each may also be passed to ``fit`` by keyword).

    Attributes:
        batch_size: examples per step.
        epochs: passes over the data.
        seed: seed of the shuffling key.
        steps_per_dispatch: how many steps one compiled program (a ``lax.scan``) runs
            per dispatch. ``None`` (the default): whole epochs, ``epochs_per_dispatch``
            of them. An int ``K`` smaller than the steps of an epoch: ``K`` steps, a
            program never crossing an epoch's end (the rest of an epoch is one shorter
            program; it used to be single steps); ``K`` at least the steps of an epoch:
            ``K // steps_per_epoch`` whole epochs. The default used to be 1.
        epochs_per_dispatch: whole epochs per program when ``steps_per_dispatch`` is
            ``None``.
        log_every: fetch metrics to the host every this many steps.
        eval_every_epochs: evaluation interval in epochs (evaluated at the first program
            boundary at or past each multiple; with whole-epoch programs, exactly there).
        device_data_budget: bytes of training data that may live on the device: data
            within it is placed there once and each epoch is shuffled and gathered
            inside the program; larger data streams from the host, one program's
            batches at a time, the next in flight while the current one trains.
            ``None``: 256 MiB on CPU, a quarter of the device's memory (at least 256
            MiB) on accelerators; ``0``: always stream.
        taps: record every primitive call's :class:`funcgrad.flow.taps.Tap` in each
            step's metrics; a logged record holds the last step's as ``"taps"``.
        on_nonfinite: what follows a step whose loss or gradient is not finite (the step
            itself always leaves params and optimizer state bitwise unchanged):
            ``"skip"`` goes on, ``"stop"`` ends the run at the log that shows it.
        max_consecutive_skips: end the run once this many steps in a row were skipped
            (``None``: never).
        precision: ``"f32"``, ``"bf16"`` or ``"f16"``: the compute dtype of the
            :func:`funcgrad.train.policy` the loss runs under (parameters and optimizer
            stay float32); ``"f16"`` adds dynamic loss scaling (``state.loss_scale``).

    Raises:
        ValueError: naming the field, if one is not an int >= 1 (``seed``: not an int;
            ``device_data_budget``: not an int >= 0), or ``on_nonfinite`` is not
            ``"skip"`` or ``"stop"``.
    """

    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    steps_per_dispatch: int | None = None
    epochs_per_dispatch: int = 1
    log_every: int = 50
    eval_every_epochs: int = 1
    taps: bool = False
    on_nonfinite: str = "skip"
    max_consecutive_skips: int | None = None
    device_data_budget: int | None = None
    precision: str = "f32"

    def __post_init__(self) -> None:
        if self.on_nonfinite not in ("skip", "stop"):
            raise ValueError("fit: argument 'on_nonfinite' must be 'skip' or 'stop'; got "
                             f"{self.on_nonfinite!r}")
        if self.precision not in ("f32", "bf16", "f16"):
            raise ValueError("fit: argument 'precision' must be one of ['f32', 'bf16', "
                             f"'f16']; got {self.precision!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("taps", "on_nonfinite", "precision") or (
                    value is None and f.name in _OPTIONAL):
                continue
            bad = not isinstance(value, (int, np.integer)) or isinstance(value, bool)
            low = 0 if f.name == "device_data_budget" else 1
            if f.name != "seed" and (bad or value < low):
                raise ValueError(f"fit: argument '{f.name}' must be an int >= {low}; "
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
        wrap_step: decorator applied, before jit, to each compiled program's function
            (one per program length; tests use ``chex.assert_max_traces``).
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


def split_options(config: FitConfig | None, hooks: FitHooks | None,
                  options: dict[str, Any]) -> tuple[FitConfig, FitHooks]:
    """``config`` and ``hooks`` with ``fit``'s keyword ``options`` applied by field name."""
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
