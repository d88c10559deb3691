"""The optimizer: SGD with clipping, and the clipped gradient norm read through optax.

:func:`optimizer` places ``optax.snapshot`` (:func:`measure_clipped_norm`) right after the
clip, so the train step reads the norm of the gradient *after* clipping from the optimizer
state, under the name :data:`CLIPPED_NORM`. Any other optax transformation gets
:func:`clipped_grad_norm`'s documented fallback, which is never silently wrong.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["CLIPPED_NORM", "clipped_grad_norm", "measure_clipped_norm", "optimizer"]

#: Name of the ``optax.snapshot`` that stores the global norm of the clipped gradient.
CLIPPED_NORM = "funcgrad_clipped_grad_norm"


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


def optimizer(
    learning_rate: float,
    *,
    momentum: float = 0.0,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> Any:
    """SGD with optional gradient clipping, as one optax ``GradientTransformation``.

    The chain is ``clip_by_global_norm(clip_norm)`` (if set), ``clip(clip_value)`` (if
    set), :func:`measure_clipped_norm`, then ``sgd(learning_rate, momentum)``, wrapped in
    ``optax.inject_hyperparams`` so every number is a leaf of the optimizer state: set
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
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
            or not 0.0 <= momentum < 1.0:
        raise ValueError(f"optimizer: argument 'momentum' must be in [0, 1); "
                         f"got {momentum!r}")

    def chain(learning_rate, momentum, clip_norm, clip_value):
        parts = []
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(clip_norm))
        if clip_value is not None:
            parts.append(optax.clip(clip_value))
        parts += [measure_clipped_norm(), optax.sgd(learning_rate, momentum=momentum)]
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(
        learning_rate=float(learning_rate),
        momentum=float(momentum) if momentum else None,
        clip_norm=None if clip_norm is None else float(clip_norm),
        clip_value=None if clip_value is None else float(clip_value),
    )


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
    import optax

    found = optax.tree.get(new_opt_state, CLIPPED_NORM, default=None)
    if found is not None:
        return jnp.asarray(found, jnp.float32)

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
