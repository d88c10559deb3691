"""Mixed precision: a jmp-style policy, and dynamic loss scaling for float16.

A :class:`Policy` keeps the parameters in ``param_dtype`` (float32: the *master
weights* the optimizer updates), computes the forward and backward passes in
``compute_dtype`` (bfloat16 or float16) and returns the loss in ``output_dtype``
(float32). :func:`wrap_loss` applies it to a loss function: the cast of the parameters
is part of the differentiated function, so its backward rule casts the gradients back
to float32, and the optimizer, the clip and the gradient norms all work in float32.

float16 keeps 5 exponent bits: gradients below about 6e-8 flush to zero. Scaling the
loss by ``S`` scales every gradient of the backward pass by ``S`` too;
:func:`scaled_value_and_grad` divides it out again in float32. :class:`LossScale` is
the dynamic rule: a step whose gradients are not finite halves ``S`` (the step itself is
skipped by the train step, bitwise), and ``period`` finite steps in a row double it.

These are the few lines of `jmp <https://github.com/google-deepmind/jmp>`_ that funcgrad
needs, written here rather than depended on: jmp's last release (0.0.4) is from January
2023.

Examples:
    >>> import jax.numpy as jnp
    >>> p = policy("bf16")
    >>> p.cast_to_compute({"w": jnp.ones(2), "n": jnp.arange(2)})["w"].dtype
    dtype(bfloat16)
    >>> ls = LossScale.create(2.0 ** 15, period=2)
    >>> [float(ls.adjust(jnp.array(False)).scale), float(ls.adjust(True).adjust(True).scale)]
    [16384.0, 65536.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "PRECISIONS",
    "LossScale",
    "Policy",
    "initial_loss_scale",
    "policy",
    "scaled_loss",
    "scaled_value_and_grad",
    "unscale",
    "wrap_apply",
    "wrap_loss",
]

#: The names :func:`policy` accepts (and ``funcgrad train --precision`` offers).
PRECISIONS = ("f32", "bf16", "f16")
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}


def _cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` as ``dtype``; integer, boolean and key leaves stay."""
    def cast(x: Any) -> Any:
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(x, "dtype"):
            if jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(dtype)
        return x
    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype the parameters, the computation and the output have.

    Attributes:
        param_dtype: dtype of the stored parameters (the optimizer's master weights).
        compute_dtype: dtype the forward and backward passes run in.
        output_dtype: dtype of the loss (and floating aux values) handed back.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    @property
    def name(self) -> str:
        """``"f32"``, ``"bf16"`` or ``"f16"``: the compute dtype's short name."""
        for key, dtype in _DTYPES.items():
            if jnp.dtype(dtype) == jnp.dtype(self.compute_dtype):
                return key
        return str(jnp.dtype(self.compute_dtype))

    @property
    def needs_loss_scale(self) -> bool:
        """True for float16 compute, whose range is too small for raw gradients."""
        return jnp.dtype(self.compute_dtype) == jnp.dtype(jnp.float16)

    def cast_to_compute(self, tree: Any) -> Any:
        """Floating leaves of ``tree`` as ``compute_dtype`` (others unchanged)."""
        return _cast_floats(tree, self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """Floating leaves of ``tree`` as ``param_dtype`` (others unchanged)."""
        return _cast_floats(tree, self.param_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Floating leaves of ``tree`` as ``output_dtype`` (others unchanged)."""
        return _cast_floats(tree, self.output_dtype)


def policy(name: str) -> Policy:
    """The policy ``"f32"``, ``"bf16"`` or ``"f16"``: float32 parameters and output.

    Args:
        name: one of :data:`PRECISIONS`: the compute dtype.

    Returns:
        ``Policy(param_dtype=float32, compute_dtype=<name>, output_dtype=float32)``.

    Raises:
        ValueError: naming the argument, for any other name.

    Examples:
        >>> policy("f16").compute_dtype.__name__, policy("f16").needs_loss_scale
        ('float16', True)
    """
    if name not in _DTYPES:
        raise ValueError(f"policy: argument 'name' must be one of {list(PRECISIONS)}; "
                         f"got {name!r}")
    return Policy(jnp.float32, _DTYPES[name], jnp.float32)


def _inputs_to_compute(batch: Any, p: Policy) -> Any:
    """The batch with its inputs (the first element of a tuple or list) in compute dtype."""
    if isinstance(batch, (tuple, list)) and batch:
        return type(batch)([p.cast_to_compute(batch[0]), *batch[1:]])
    return p.cast_to_compute(batch)


def wrap_loss(loss_fn: Callable, p: Policy) -> Callable:
    """``loss_fn`` under policy ``p``: params and inputs in compute dtype, loss in output dtype.

    The inputs are the first element of a tuple batch (``(x, y, w)``: targets and example
    weights keep their dtypes); any other batch has all its floating leaves cast. Floating
    values of the aux come back in ``output_dtype`` too. Gradients with respect to the
    float32 parameters are float32: the cast's backward rule casts them back.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (loss, aux)``.
        p: the policy.

    Returns:
        The wrapped ``loss_fn``; ``loss_fn`` itself when ``p`` computes in ``param_dtype``.
    """
    if jnp.dtype(p.compute_dtype) == jnp.dtype(p.param_dtype) \
            and jnp.dtype(p.output_dtype) == jnp.dtype(p.param_dtype):
        return loss_fn

    def wrapped(params: Any, batch: Any) -> tuple[jax.Array, Any]:
        loss, aux = loss_fn(p.cast_to_compute(params), _inputs_to_compute(batch, p))
        return jnp.asarray(loss).astype(p.output_dtype), p.cast_to_output(aux)
    return wrapped


def wrap_apply(apply_fn: Callable, p: Policy) -> Callable:
    """``apply_fn(params, x)`` under ``p``: computed in compute dtype, output in output dtype.

    For :func:`funcgrad.train.classification_loss`: the logits come back as float32, so
    the softmax cross-entropy and its sums run in float32.

    Args:
        apply_fn: ``apply_fn(params, x) -> outputs``.
        p: the policy.

    Returns:
        The wrapped function (``apply_fn`` itself for a float32 policy).
    """
    if jnp.dtype(p.compute_dtype) == jnp.dtype(p.param_dtype) \
            and jnp.dtype(p.output_dtype) == jnp.dtype(p.param_dtype):
        return apply_fn

    def wrapped(params: Any, x: Any) -> Any:
        return p.cast_to_output(apply_fn(p.cast_to_compute(params), p.cast_to_compute(x)))
    return wrapped


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossScale:
    """Dynamic loss scale (a pytree; ``period``, ``factor``, ``min_scale`` are static).

    Attributes:
        scale: the current scale ``S`` (float32 scalar).
        good_steps: finite steps since the scale last changed (int32 scalar).
        period: after this many finite steps in a row the scale grows by ``factor``.
        factor: the growth and shrink factor (2).
        min_scale: the scale never falls below this (1).
        max_scale: the scale never grows beyond this (2 ** 24).
    """

    scale: jax.Array
    good_steps: jax.Array
    period: int = dataclasses.field(default=2000, metadata={"static": True})
    factor: float = dataclasses.field(default=2.0, metadata={"static": True})
    min_scale: float = dataclasses.field(default=1.0, metadata={"static": True})
    max_scale: float = dataclasses.field(default=2.0 ** 24, metadata={"static": True})

    @classmethod
    def create(cls, initial: float = 2.0 ** 15, *, period: int = 2000,
               factor: float = 2.0) -> LossScale:
        """A loss scale starting at ``initial``.

        Args:
            initial: the first scale, >= 1.
            period: finite steps in a row before the scale grows, >= 1.
            factor: growth and shrink factor, > 1.

        Returns:
            The state.

        Raises:
            ValueError: naming the argument.
        """
        if isinstance(initial, bool) or not isinstance(initial, (int, float)) \
                or not 1.0 <= initial <= 2.0 ** 24:
            raise ValueError("LossScale.create: argument 'initial' must be a number in "
                             f"[1, 2**24]; got {initial!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"LossScale.create: argument 'period' must be an int >= 1; "
                             f"got {period!r}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or not 1.0 < factor <= 2.0 ** 8:
            raise ValueError("LossScale.create: argument 'factor' must be a number in "
                             f"(1, 256]; got {factor!r}")
        return cls(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32),
                   period=period, factor=float(factor))

    def adjust(self, finite: Any) -> LossScale:
        """The state after a step: lowered if ``finite`` is false, raised every ``period``.

        Args:
            finite: whether the step's loss and gradients were finite (bool scalar).

        Returns:
            The new state (works inside ``jit``).
        """
        finite = jnp.asarray(finite, bool)
        grown = self.good_steps + 1 >= self.period
        up = jnp.where(grown, jnp.minimum(self.scale * self.factor, self.max_scale),
                       self.scale)
        down = jnp.maximum(self.scale / self.factor, self.min_scale)
        return dataclasses.replace(
            self,
            scale=jnp.where(finite, up, down).astype(jnp.float32),
            good_steps=jnp.where(finite & ~grown, self.good_steps + 1, 0).astype(jnp.int32),
        )


def initial_loss_scale(p: Policy, initial: float = 2.0 ** 15, *,
                       period: int = 2000) -> LossScale | None:
    """The loss-scale state a run under ``p`` starts with: None unless ``p`` needs one.

    Args:
        p: the policy.
        initial: the first scale (float16 only).
        period: finite steps between growths (float16 only).

    Returns:
        A :class:`LossScale` for float16 compute, else None (no scaling).
    """
    return LossScale.create(initial, period=period) if p.needs_loss_scale else None


def scaled_loss(loss_fn: Callable) -> Callable:
    """``(params, batch, scale) -> (scale * loss, (loss, aux))``, to differentiate.

    The scale is an argument, not a constant, so one traced function serves every scale
    (with :func:`funcgrad.flow.taps.tapped_value_and_grad` too: it passes it through).

    Args:
        loss_fn: ``loss_fn(params, batch) -> (loss, aux)``.

    Returns:
        The scaled loss function, ``has_aux`` style.
    """
    def fn(params: Any, batch: Any, scale: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        loss, aux = loss_fn(params, batch)
        loss = jnp.asarray(loss)
        return loss * jnp.asarray(scale, loss.dtype), (loss, aux)
    return fn


def unscale(grads: Any, scale: Any) -> Any:
    """Floating gradients divided by ``scale``, computed in (at least) float32.

    Args:
        grads: the gradients of the scaled loss.
        scale: the loss scale.

    Returns:
        The gradients of the loss, each leaf as float32 (float64 stays float64).
    """
    def one(g: Any) -> Any:
        if not jnp.issubdtype(g.dtype, jnp.floating):
            return g
        dtype = jnp.promote_types(g.dtype, jnp.float32)
        return (g.astype(dtype) / jnp.asarray(scale, dtype)).astype(dtype)
    return jax.tree.map(one, grads)


def scaled_value_and_grad(loss_fn: Callable, p: Policy) -> Callable:
    """``jax.value_and_grad`` of ``wrap_loss(loss_fn, p)`` with the loss scaled by ``S``.

    The returned function is pure: ``fn(params, batch, loss_scale) -> ((loss, aux),
    grads)``; ``loss_scale`` is a :class:`LossScale` or None (no scaling). The loss is the
    unscaled one, the gradients are float32 and unscaled. The caller checks them for
    finiteness and calls ``loss_scale.adjust(finite)``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (loss, aux)``.
        p: the policy.

    Returns:
        The function.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = lambda w, x: ((w * x) ** 2, {})
        >>> fn = scaled_value_and_grad(loss, policy("f16"))
        >>> (value, _), g = fn(jnp.float32(3.0), jnp.float32(2.0), LossScale.create(1024.0))
        >>> value.dtype, float(value), g.dtype, float(g)  # dL/dw = 2 w x^2
        (dtype('float32'), 36.0, dtype('float32'), 24.0)
    """
    wrapped = wrap_loss(loss_fn, p)
    scaled_grad = jax.value_and_grad(scaled_loss(wrapped), has_aux=True)

    def fn(params: Any, batch: Any, loss_scale: LossScale | None) -> tuple[Any, Any]:
        if loss_scale is None:
            value, grads = jax.value_and_grad(wrapped, has_aux=True)(params, batch)
            return value, unscale(grads, 1.0)
        (_, value), grads = scaled_grad(params, batch, loss_scale.scale)
        return value, unscale(grads, loss_scale.scale)
    return fn
