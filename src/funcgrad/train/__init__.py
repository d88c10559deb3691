"""Jit-compiled training: the lesson's update ``w_new = w - learning_rate * gradient``.

* :func:`optimizer` — ``optax.chain`` of ``clip_by_global_norm`` and/or ``clip``, then
  ``sgd``, with injected hyperparameters (changing the learning rate never recompiles).
* :class:`TrainState` — params, optimizer state, step, PRNG key, count of skipped steps.
* :func:`make_train_step` — a pure ``(state, batch) -> (state, metrics)``, jitted with the
  state donated; metrics stay on the device. Non-finite steps are skipped: params and
  optimizer state come back bitwise unchanged and ``skipped`` counts them.
* :func:`make_fused_steps` — K steps in one dispatch through ``lax.scan``.
* :func:`fit` — deterministic shuffling, a padded last batch (no retrace), evaluation,
  metrics fetched every ``log_every`` steps, checkpoints, data parallelism, taps,
  TensorBoard, and a report on the first non-finite step (:func:`nonfinite_report`).
"""

from ..flow.stats import layer_norms
from ._data import shuffle
from ._loop import FitConfig, FitHooks, FitResult, fit
from ._nonfinite import nonfinite_report
from ._optimizer import (
    CLIPPED_NORM,
    SCHEDULES,
    UPDATE_NORM,
    Schedule,
    clipped_grad_norm,
    current_learning_rate,
    measure_clipped_norm,
    optimizer,
    schedule,
)
from ._precision import (
    PRECISIONS,
    LossScale,
    Policy,
    initial_loss_scale,
    policy,
    scaled_value_and_grad,
    wrap_apply,
    wrap_loss,
)
from ._step import (
    TrainState,
    classification_loss,
    init_state,
    make_eval,
    make_fused_steps,
    make_train_step,
)

__all__ = [
    "CLIPPED_NORM",
    "UPDATE_NORM",
    "PRECISIONS",
    "SCHEDULES",
    "FitConfig",
    "FitHooks",
    "FitResult",
    "LossScale",
    "Policy",
    "Schedule",
    "TrainState",
    "classification_loss",
    "clipped_grad_norm",
    "current_learning_rate",
    "fit",
    "init_state",
    "initial_loss_scale",
    "layer_norms",
    "make_eval",
    "make_fused_steps",
    "make_train_step",
    "measure_clipped_norm",
    "nonfinite_report",
    "optimizer",
    "policy",
    "scaled_value_and_grad",
    "schedule",
    "shuffle",
    "wrap_apply",
    "wrap_loss",
]

# documented (and pickled) under the public package, not the private module
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj
