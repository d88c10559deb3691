"""The first non-finite training step, replayed: which primitive, where, and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["nonfinite_report"]


def nonfinite_report(loss_fn: Callable, params: Any, batch: Any, *, step: int,
                     params_step: int | None = None) -> dict[str, Any]:
    """Replay one training step eagerly and name where it stopped being finite.

    The step's loss ``loss_fn(params, batch)[0]`` is replayed with
    :func:`funcgrad.explain.find_nonfinite`: the first primitive whose value (forward) or
    gradient (backward) is not finite, its layer, the element index, the input values at
    that element, the user's source line and a diagnosis from a table of causes.

    Args:
        loss_fn: the training loss, ``loss_fn(params, batch) -> (loss, aux)``.
        params: the parameters the step started from.
        batch: the step's batch (host arrays).
        step: the index of the step (0-based, as in the metrics).
        params_step: the step at which ``params`` were taken; ``None`` means ``step``, the
            exact inputs of the step. A later step's params are exact too when every
            step in between was skipped (a skipped step leaves them bitwise unchanged).

    Returns:
        A JSON-ready dict: ``step``, ``params_step``, ``exact``, ``found``, then (when
        found) the fields of :meth:`funcgrad.explain.NonFinite.to_dict` and ``report``,
        the report as text.
    """
    from ..explain import find_nonfinite

    params_step = step if params_step is None else params_step
    out: dict[str, Any] = {"step": int(step), "params_step": int(params_step),
                           "exact": params_step == step}
    def step_loss(params: Any) -> Any:  # its layers are named params[0], params[1], ...
        return loss_fn(params, batch)[0]

    found = find_nonfinite(step_loss, params)
    if found is None:
        out.update(found=False, report=(
            f"step {step} was not finite, but its replay with the parameters of step "
            f"{params_step} is finite everywhere (the parameters changed since)"))
        return out
    out.update(found=True, **found.to_dict(), report=found.describe())
    return out
