"""The optimizer: SGD with clipping and a learning-rate schedule, read back through optax.

The train step reads the norm of the gradient *after* clipping from the optimizer state,
under the name :data:`CLIPPED_NORM`. :func:`optimizer` records it with ``optax.snapshot``:
after an element-wise clip it measures the clipped gradient (:func:`measure_clipped_norm`);
a global-norm clip (or none) scales the gradient to norm ``min(|g|, clip_norm)``, which its
snapshot takes from ``|g|``, the very reduction the clip computes. For plain SGD it also
records the update's norm, ``learning_rate * min(|g|, clip_norm)``, as :data:`UPDATE_NORM`,
so the step needs no second pass over the update. Any other optax transformation gets
:func:`clipped_grad_norm`'s documented fallback, which is never silently wrong, and the
update's norm reduced from the update itself.

The learning rate of the last update is the leaf named ``"learning_rate"`` of the state,
for a constant rate and a schedule alike: :func:`current_learning_rate` reads it.
:func:`schedule` builds a schedule whose peak is an injected hyperparameter, so changing
the peak never recompiles a step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CLIPPED_NORM",
    "SCHEDULES",
    "UPDATE_NORM",
    "Schedule",
    "clipped_grad_norm",
    "current_learning_rate",
    "measure_clipped_norm",
    "optimizer",
    "schedule",
]

#: Name of the ``optax.snapshot`` that stores the global norm of the clipped gradient.
CLIPPED_NORM = "funcgrad_clipped_grad_norm"

#: Name of the ``optax.snapshot`` that stores the global norm of the update, where
#: :func:`optimizer` knows it without a reduction (plain SGD, no element-wise clip).
UPDATE_NORM = "funcgrad_update_norm"


def _require_positive(name: str, flag: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name}: argument '{flag}' must be a finite number > 0; "
                         f"got {value!r}")


def measure_clipped_norm() -> Any:
    """An identity transformation that stores the global norm of what reaches it.

    Place it in your own ``optax.chain`` right after your clipping transformation; the
    train step then reports that norm as ``clipped_grad_norm`` (any chain works, Adam
    included). :func:`optimizer` places it for you.

    Returns:
        ``optax.snapshot(CLIPPED_NORM, optax.tree.norm)``.

    Examples:
        >>> import optax, jax.numpy as jnp
        >>> tx = optax.chain(optax.clip_by_global_norm(0.1), measure_clipped_norm(),
        ...                  optax.adam(1e-3))
        >>> _, state = tx.update(jnp.array([30.0, 40.0]), tx.init(jnp.zeros(2)))
        >>> round(float(optax.tree.get(state, CLIPPED_NORM)), 6)
        0.1
    """
    import optax

    return optax.snapshot(CLIPPED_NORM, optax.tree.norm)


#: The names :func:`schedule` accepts.
SCHEDULES = ("constant", "cosine", "exponential")


def _require_steps(name: str, flag: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: argument '{flag}' must be an int >= {low}; got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule ``peak * shape(count)`` (an optax schedule: call it).

    Built by :func:`schedule`. :func:`optimizer` injects ``peak`` as the hyperparameter
    ``"peak_learning_rate"``, so a new peak is a new state leaf, not a new program.

    Attributes:
        name: one of :data:`SCHEDULES`.
        peak: the largest learning rate.
        warmup_steps: steps of linear warmup from 0 to ``peak``.
        total_steps: steps of the whole run (warmup included), or ``None`` (constant).
        shape: ``count -> factor`` in ``[0, 1]``, the schedule of peak 1.
    """

    name: str
    peak: float
    warmup_steps: int
    total_steps: int | None
    shape: Callable[[Any], Any] = dataclasses.field(repr=False, compare=False)

    def __call__(self, count: Any) -> Any:
        """The learning rate of update ``count`` (0 for the first update)."""
        return self.peak * self.shape(count)


def schedule(name: str, peak: float, *, warmup_steps: int = 0, total_steps: int | None = None,
             end_fraction: float = 0.0, decay_rate: float = 0.01) -> Schedule:
    """A learning-rate schedule from optax with linear warmup, for :func:`optimizer`.

    * ``"constant"``: warmup from 0 to ``peak`` over ``warmup_steps``, then ``peak``.
    * ``"cosine"``: ``optax.warmup_cosine_decay_schedule(0, peak, warmup_steps,
      total_steps, end_fraction * peak)``.
    * ``"exponential"``: ``optax.warmup_exponential_decay_schedule(0, peak, warmup_steps,
      total_steps - warmup_steps, decay_rate)``: the rate falls to ``decay_rate * peak``
      at ``total_steps`` (and on beyond it).

    Args:
        name: one of :data:`SCHEDULES`.
        peak: the largest learning rate, > 0.
        warmup_steps: steps of linear warmup, >= 0.
        total_steps: all steps of the run (e.g. epochs times steps per epoch); required,
            and greater than ``warmup_steps``, for ``"cosine"`` and ``"exponential"``.
        end_fraction: ``"cosine"`` ends at this fraction of the peak, in ``[0, 1]``.
        decay_rate: ``"exponential"`` falls by this factor over the decay, in ``(0, 1]``.

    Returns:
        A :class:`Schedule`, callable as any optax schedule.

    Raises:
        ValueError: naming the argument, for an unknown name or a bad number.

    Examples:
        >>> s = schedule("cosine", 0.1, warmup_steps=10, total_steps=110)
        >>> [round(float(s(n)), 6) for n in (0, 5, 10, 60, 110)]
        [0.0, 0.05, 0.1, 0.05, 0.0]
    """
    import optax

    if name not in SCHEDULES:
        raise ValueError(f"schedule: argument 'name' must be one of {list(SCHEDULES)}; "
                         f"got {name!r}")
    _require_positive("schedule", "peak", peak)
    warmup = _require_steps("schedule", "warmup_steps", warmup_steps, 0)
    if not isinstance(end_fraction, (int, float)) or not 0.0 <= end_fraction <= 1.0:
        raise ValueError(f"schedule: argument 'end_fraction' must be in [0, 1]; "
                         f"got {end_fraction!r}")
    if not isinstance(decay_rate, (int, float)) or not 0.0 < decay_rate <= 1.0:
        raise ValueError(f"schedule: argument 'decay_rate' must be in (0, 1]; "
                         f"got {decay_rate!r}")
    if name == "constant":
        if total_steps is not None:
            _require_steps("schedule", "total_steps", total_steps, 1)
        ramp = optax.linear_schedule(0.0, 1.0, warmup) if warmup else optax.constant_schedule(1.0)
        shape = optax.join_schedules([ramp, optax.constant_schedule(1.0)], [warmup])
        return Schedule(name, float(peak), warmup, total_steps, shape)
    if total_steps is None or isinstance(total_steps, bool) or not isinstance(total_steps, int) \
            or total_steps <= warmup:
        raise ValueError(f"schedule: argument 'total_steps' must be an int > warmup_steps "
                         f"({warmup}) for {name!r}; got {total_steps!r}")
    if name == "cosine":
        shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps,
                                                   float(end_fraction))
    else:
        shape = optax.warmup_exponential_decay_schedule(0.0, 1.0, warmup, total_steps - warmup,
                                                        float(decay_rate))
    return Schedule(name, float(peak), warmup, total_steps, shape)


class ScheduledRateState(NamedTuple):
    """State of the scheduled step: updates taken, and the rate the last one used."""

    count: jax.Array
    learning_rate: jax.Array


def _scale_by_scheduled_rate(factor: Any, shape: Callable[[Any], Any]) -> Any:
    """``updates * -(factor * shape(count))``, remembering the rate as ``learning_rate``."""
    import optax

    def init(params: Any) -> ScheduledRateState:
        del params
        return ScheduledRateState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def update(updates: Any, state: ScheduledRateState, params: Any = None) -> tuple:
        del params
        rate = jnp.asarray(factor * shape(state.count), jnp.float32)
        updates = jax.tree.map(lambda g: (-rate * g).astype(g.dtype), updates)
        return updates, ScheduledRateState(optax.safe_int32_increment(state.count), rate)

    return optax.GradientTransformation(init, update)


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the last update, read from the optimizer state.

    For :func:`optimizer`'s state, constant or scheduled, this is
    ``optax.tree.get(opt_state, "learning_rate")`` as float32 (before the first update a
    scheduled state holds 0). Works inside ``jit``.

    Args:
        opt_state: the optimizer state.

    Returns:
        A float32 scalar; NaN when the state holds no leaf named ``"learning_rate"``.

    Examples:
        >>> import jax.numpy as jnp
        >>> tx = optimizer(schedule("constant", 0.5, warmup_steps=4))
        >>> state = tx.init(jnp.zeros(2))
        >>> for _ in range(3):
        ...     _, state = tx.update(jnp.ones(2), state)
        >>> float(current_learning_rate(state))
        0.25
    """
    found = _named_leaf(opt_state, "learning_rate")
    return jnp.asarray(jnp.nan, jnp.float32) if found is None else found


def _named_leaf(opt_state: Any, name: str) -> jax.Array | None:
    """The one leaf named ``name`` in an optax state (a snapshot, an injected
    hyperparameter) as float32; ``None`` if there is none, or several (no single answer)."""
    import optax

    try:
        found = optax.tree.get(opt_state, name, default=None)
    except KeyError:  # several leaves of that name
        return None
    return None if found is None else jnp.asarray(found, jnp.float32)


def update_norm(opt_state: Any, updates: Any) -> jax.Array:
    """Global norm of the update: the :data:`UPDATE_NORM` snapshot of the state ``tx.update``
    returned, where the chain keeps one (:func:`optimizer`'s plain SGD), else reduced from
    ``updates``.

    Args:
        opt_state: the optimizer state ``tx.update`` returned.
        updates: the updates it returned.

    Returns:
        A float32 scalar (float64 for float64 updates under x64).
    """
    from ..flow.stats import layer_squares

    found = _named_leaf(opt_state, UPDATE_NORM)
    return jnp.sqrt(jnp.sum(layer_squares(updates))) if found is None else found


def optimizer(
    learning_rate: float | Schedule | Callable[[Any], Any],
    *,
    momentum: float = 0.0,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> Any:
    """SGD with optional gradient clipping, as one optax ``GradientTransformation``.

    The chain is ``clip_by_global_norm(clip_norm)`` (if set), ``clip(clip_value)`` (if
    set), then ``sgd(learning_rate, momentum)``, with snapshots of the clipped gradient's
    norm (:data:`CLIPPED_NORM`) and, for plain SGD, the update's norm
    (:data:`UPDATE_NORM`) for the train step's metrics. It is wrapped in
    ``optax.inject_hyperparams`` so every number is a leaf of the optimizer state: set
    ``state.opt_state.hyperparams["learning_rate"]`` to change it without recompiling.

    A schedule replaces the constant rate:

    * a :class:`Schedule` from :func:`schedule`: its peak is the injected hyperparameter
      ``"peak_learning_rate"`` (set it to change the peak without recompiling);
    * any other optax schedule ``count -> rate`` (``optax.exponential_decay(...)``): it is
      multiplied by the injected ``"learning_rate_scale"``, 1.0 to begin with.

    Either way the rate of the last update is the state's leaf ``"learning_rate"``
    (:func:`current_learning_rate`), and the schedule counts updates that were applied
    (a step skipped for non-finite gradients keeps the whole state, count included).

    Args:
        learning_rate: step size, > 0, or a schedule.
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

    scheduled = callable(learning_rate)
    if not scheduled:
        _require_positive("optimizer", "learning_rate", learning_rate)
    _require_positive("optimizer", "clip_norm", clip_norm)
    _require_positive("optimizer", "clip_value", clip_value)
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
            or not 0.0 <= momentum < 1.0:
        raise ValueError(f"optimizer: argument 'momentum' must be in [0, 1); "
                         f"got {momentum!r}")

    numbers = {
        "momentum": float(momentum) if momentum else None,
        "clip_norm": None if clip_norm is None else float(clip_norm),
        "clip_value": None if clip_value is None else float(clip_value),
    }
    if scheduled:
        return _scheduled_optimizer(learning_rate, numbers)

    def chain(learning_rate, momentum, clip_norm, clip_value):
        rate = learning_rate if momentum is None else None
        return optax.chain(*_clipped(clip_norm, clip_value, rate),
                           optax.sgd(learning_rate, momentum=momentum))

    return optax.inject_hyperparams(chain)(learning_rate=float(learning_rate), **numbers)


def _clipped(clip_norm: Any, clip_value: Any, sgd_rate: Any = None) -> list[Any]:
    """The clipping transformations and the snapshots of the norms they leave.

    After an element-wise clip the snapshot measures the clipped gradient. A global-norm
    clip, or none, leaves norm ``min(|g|, clip_norm)``: the snapshots, placed before the
    clip, take it from ``|g|`` (``optax.tree.norm``, which XLA shares with the clip's own),
    and with ``sgd_rate`` (plain SGD: update ``-rate * clipped``) record the update's norm.
    """
    import optax

    clip = [optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []
    if clip_value is not None:
        return [*clip, optax.clip(clip_value), measure_clipped_norm()]

    def clipped(updates: Any) -> jax.Array:
        norm = optax.tree.norm(updates)
        if clip_norm is None:
            return norm
        # as the clip: kept below the bound; rescaled to it above; NaN if |g| is not finite
        return jnp.where(norm < clip_norm, norm,
                         jnp.where(jnp.isfinite(norm), clip_norm, jnp.nan))

    snapshots = [optax.snapshot(CLIPPED_NORM, clipped)]
    if sgd_rate is not None:
        snapshots.append(optax.snapshot(UPDATE_NORM, lambda u: sgd_rate * clipped(u)))
    return [*snapshots, *clip]


def _scheduled_optimizer(learning_rate: Schedule | Callable[[Any], Any],
                         numbers: dict[str, float | None]) -> Any:
    """:func:`optimizer` with a schedule: clip, momentum, then ``-factor * shape(count)``.

    The schedule's shape is closed over (a callable hyperparameter would be evaluated by
    ``inject_hyperparams``); only the factor is a leaf of the state.
    """
    import optax

    def scheduled_chain(factor, momentum, clip_norm, clip_value, shape):
        trace = [optax.trace(decay=momentum)] if momentum is not None else []
        return optax.chain(*_clipped(clip_norm, clip_value), *trace,
                           _scale_by_scheduled_rate(factor, shape))

    if isinstance(learning_rate, Schedule):
        shape = learning_rate.shape

        def peak_chain(peak_learning_rate, momentum, clip_norm, clip_value):
            return scheduled_chain(peak_learning_rate, momentum, clip_norm, clip_value, shape)

        return optax.inject_hyperparams(peak_chain)(
            peak_learning_rate=float(learning_rate.peak), **numbers)

    def scale_chain(learning_rate_scale, momentum, clip_norm, clip_value):
        return scheduled_chain(learning_rate_scale, momentum, clip_norm, clip_value,
                               learning_rate)

    return optax.inject_hyperparams(scale_chain)(learning_rate_scale=1.0, **numbers)


def _dot(a: Any, b: Any) -> jax.Array:
    return sum((jnp.vdot(u, v).real for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True)),
               start=jnp.zeros((), jnp.float32))


def clipped_grad_norm(tx: Any, grads: Any, opt_state: Any, new_opt_state: Any, params: Any,
                      grad_norm: jax.Array) -> jax.Array:
    """Global norm of the gradient after clipping, for any optax transformation.

    1. If the chain holds :func:`measure_clipped_norm` (as :func:`optimizer`'s does), its
       snapshot in ``new_opt_state`` is the answer.
    2. Otherwise the clip is recovered from the chain's behaviour: ``U(g)`` is the update
       for gradient ``g``. A chain that rescales the gradient globally by ``r`` (a global
       norm clip; ``r = 1`` without one) and then applies a linear map ``A`` (SGD, momentum,
       weight decay, schedules) has ``U(g) - U(0) = r A(g)``, and ``A(g)`` is the
       derivative of ``U(t g)`` at ``t = 0``, where nothing is clipped. The answer is
       ``r |g|``.
    3. If ``U(g) - U(0)`` is not such a multiple (Adam, element-wise ``optax.clip``, ...)
       the answer is NaN: unknown, never a wrong number. Put :func:`measure_clipped_norm`
       after your clip to measure such a chain.

    Args:
        tx: the optax transformation.
        grads: the raw gradients.
        opt_state: the optimizer state the update started from.
        new_opt_state: the state ``tx.update`` returned.
        params: the parameters.
        grad_norm: the global norm of ``grads``.

    Returns:
        A float32 scalar, NaN when the norm after clipping cannot be known.
    """
    found = _named_leaf(new_opt_state, CLIPPED_NORM)
    if found is not None:
        return found

    def update(t: jax.Array) -> Any:
        return tx.update(jax.tree.map(lambda g: (t * g).astype(g.dtype), grads), opt_state,
                         params)[0]

    zero = jnp.zeros((), jnp.float32)
    full, base = update(jnp.ones((), jnp.float32)), update(zero)
    linear = jax.jvp(update, (zero,), (jnp.ones((), jnp.float32),))[1]
    diff = jax.tree.map(jnp.subtract, full, base)
    ll = _dot(linear, linear)
    r = _dot(diff, linear) / ll
    off = jax.tree.map(lambda d, v: d - r * v, diff, linear)  # zero for rescale-then-linear
    ok = (ll > 0) & (r >= 0) & (r <= 1 + 1e-4) & (_dot(off, off) <= 1e-6 * _dot(diff, diff))
    value = jnp.where(ok, jnp.minimum(r, 1.0) * grad_norm, jnp.nan)
    return jnp.where(grad_norm == 0, 0.0, value).astype(jnp.float32)
