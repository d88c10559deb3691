"""Saturation of sigmoid and tanh units, captured from any function built from primitives.

:func:`capture` is a visitor on the one jaxpr walker (:mod:`funcgrad._jaxpr`): it runs the
function equation by equation and keeps the input of every ``sigmoid``/``tanh`` primitive
call, recognised by its ``funcgrad.<name>`` scope. :func:`saturation` turns those inputs
into fractions of saturated units with :func:`saturated_fraction`. The model's code is not
touched. Re-exported by :mod:`funcgrad.flow`.

Inside a training step the model is not run again: the step's own forward pass, read by
:func:`funcgrad.flow.taps.tapped_value_and_grad` with the same :func:`saturated_fraction`,
gives the same shares, and :func:`saturation_from` turns them into :func:`saturation`'s
array (:meth:`funcgrad.flow.History.measure` takes them as ``activations``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .. import _jaxpr

__all__ = ["SATURATING_OPS", "Captured", "capture", "saturated_fraction", "saturation",
           "saturation_from"]

#: The activations whose saturation :func:`saturation` measures.
SATURATING_OPS: tuple[str, ...] = ("sigmoid", "tanh")


@dataclasses.dataclass(frozen=True)
class Captured:
    """One call of a saturating activation found by :func:`capture`.

    Attributes:
        op: the funcgrad primitive (``"sigmoid"`` or ``"tanh"``).
        scope: the ``jax.named_scope`` it ran in (``"layer_3"`` inside
            :func:`funcgrad.nn.mlp`), or ``""``.
        index: its position among the captured calls, in execution order.
        x: its input, the pre-activation.
    """

    op: str
    scope: str
    index: int
    x: jax.Array


def saturated_fraction(op: str, x: Any, eps: float = 0.01) -> jax.Array:
    """The share of elements of ``x`` where ``op`` is saturated. Works in jit.

    A unit is saturated when its local derivative is below ``eps`` times the activation's
    largest derivative (the one at 0): ``σ'(x)/σ'(0) = 4σ(x)σ(−x) < eps`` for sigmoid, and
    ``tanh'(x)/tanh'(0) = 1 − tanh²(x) < eps`` for tanh. With ``eps = 0.01`` that is
    ``|x| > 5.99`` for sigmoid and ``|x| > 2.99`` for tanh: the unit passes back less than
    1% of the gradient it could.

    Args:
        op: ``"sigmoid"`` or ``"tanh"``.
        x: pre-activations.
        eps: relative derivative threshold in ``(0, 1)``.

    Returns:
        A float32 scalar in ``[0, 1]``.

    Raises:
        ValueError: for an unknown ``op`` or an ``eps`` outside ``(0, 1)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(saturated_fraction("sigmoid", jnp.array([0.0, 5.9, -6.1, 20.0])))
        0.5
        >>> float(saturated_fraction("tanh", jnp.array([0.0, 2.9, -3.1, 20.0])))
        0.5
    """
    if op not in SATURATING_OPS:
        raise ValueError(f"saturated_fraction: argument 'op' must be one of "
                         f"{list(SATURATING_OPS)}; got {op!r}")
    if not 0 < eps < 1:
        raise ValueError(f"saturated_fraction: argument 'eps' must be in (0, 1); got {eps!r}")
    a = jnp.abs(jnp.asarray(x, jnp.float32))
    if op == "tanh":
        a = 2 * a  # 1 - tanh²(x) = sech²(x) = 4 e^(-2|x|) / (1 + e^(-2|x|))²
    e = jnp.exp(-a)
    rel = 4 * e / jnp.square(1 + e)  # 4σ(a)σ(-a), without overflow
    return jnp.mean((rel < eps).astype(jnp.float32))


class _Capture(_jaxpr.Visitor):
    """Evaluates, keeping the input of every call of the chosen primitives."""

    def __init__(self, ops: frozenset[str]) -> None:
        self.ops = ops
        self.found: list[Captured] = []

    def equation(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[Any]:
        if eqn.funcgrad in self.ops:
            x = invals[eqn.num_consts]
            self.found.append(Captured(eqn.funcgrad, eqn.scope, len(self.found), x))
        return eqn.bind(*invals)


def _check_ops(fn: str, ops: Sequence[str]) -> frozenset[str]:
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    bad = [o for o in ops if o not in SATURATING_OPS]
    if bad or not ops:
        raise ValueError(f"{fn}: argument 'ops' must name some of {list(SATURATING_OPS)}; "
                         f"got {list(ops)}")
    return frozenset(ops)


def capture(fn: Callable[..., Any], *args: Any, ops: Sequence[str] = SATURATING_OPS,
            **kwargs: Any) -> tuple[Any, list[Captured]]:
    """Run ``fn`` and capture the inputs of its sigmoid and tanh calls, without editing it.

    ``fn`` is traced to a jaxpr, which the one walker (:mod:`funcgrad._jaxpr`) evaluates
    equation by equation; a funcgrad primitive is one ``custom_vjp_call`` recognised by its
    ``funcgrad.<name>`` scope, and the inputs of the ``ops`` calls are kept. Calls inside
    ``jax.jit`` functions and ``jax.checkpoint`` are seen; calls inside
    ``lax.scan``/``cond``/``while`` bodies are not. Works inside ``jit``.

    Args:
        fn: a function built from funcgrad primitives.
        *args: its arguments (arrays or pytrees of arrays; bind other options with
            ``functools.partial``).
        ops: which activations to capture, a subset of :data:`SATURATING_OPS`.
        **kwargs: keyword arguments for ``fn`` (arrays or pytrees of arrays).

    Returns:
        ``(fn's output, [Captured, ...])`` with the calls in execution order.

    Raises:
        ValueError: if ``ops`` names an activation outside :data:`SATURATING_OPS`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcgrad as fg
        >>> params = fg.nn.init_mlp(jax.random.PRNGKey(0), [2, 4, 4, 1], activation="tanh")
        >>> out, calls = capture(lambda p, x: fg.nn.mlp(p, x, activation="tanh"),
        ...                      params, jnp.ones((3, 2)))
        >>> [(c.op, c.scope, c.x.shape) for c in calls]
        [('tanh', 'layer_0', (3, 4)), ('tanh', 'layer_1', (3, 4))]
    """
    visitor = _Capture(_check_ops("capture", ops))
    flat, in_tree = jax.tree.flatten((args, kwargs))

    def flat_fn(*leaves: Any) -> Any:
        a, k = jax.tree.unflatten(in_tree, leaves)
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
    outs = _jaxpr.walk(closed, flat, visitor)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs), visitor.found


def saturation(fn: Callable[..., Any], *args: Any, eps: float = 0.01,
               ops: Sequence[str] = SATURATING_OPS, **kwargs: Any) -> jax.Array:
    """Fraction of saturated units of every sigmoid/tanh call in ``fn``. Works in jit.

    Uses :func:`capture` (no change to the model) and :func:`saturated_fraction` (the
    definition of saturated).

    Args:
        fn: a function built from funcgrad primitives, e.g. ``lambda p, x: mlp(p, x)``.
        *args: its arguments.
        eps: relative derivative threshold (0.01: ``|x| > 5.99`` for sigmoid, ``> 2.99``
            for tanh).
        ops: which activations to measure.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        A 1-D float32 array, one entry per captured call in execution order (for
        :func:`funcgrad.nn.mlp` one per hidden layer); empty if there is none.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcgrad as fg
        >>> f = lambda x: fg.sigmoid(fg.mul(x, 10.0))
        >>> saturation(f, jnp.array([0.0, 0.1, 1.0, -2.0])).tolist()
        [0.5]
    """
    _, calls = capture(fn, *args, ops=ops, **kwargs)
    if not calls:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([saturated_fraction(c.op, c.x, eps) for c in calls])


def saturation_from(activations: Mapping[str, Any], kind: str = "saturation") -> jax.Array:
    """The :func:`saturation` array from forward statistics a step already recorded.

    A step differentiated with :func:`funcgrad.flow.taps.tapped_value_and_grad` (or a run
    of :func:`funcgrad.flow.taps.activation_stats`) reads each activation's forward pass
    once; this turns its ``{"saturation": {name: share}, "dead": {name: share}}`` into
    one share per call, in execution order, without running the model again. A call
    inside a ``lax.scan`` body (one row per iteration) counts with its mean.

    Args:
        activations: the forward statistics.
        kind: ``"saturation"`` (sigmoid/tanh) or ``"dead"`` (relu units).

    Returns:
        A 1-D float32 array (empty if there is no such call).

    Raises:
        ValueError: for an unknown ``kind``.

    Examples:
        >>> import jax.numpy as jnp
        >>> saturation_from({"saturation": {"tanh_1": jnp.float32(0.5),
        ...                                 "tanh[:]": jnp.array([0.0, 1.0])}}).tolist()
        [0.5, 0.5]
    """
    if kind not in ("saturation", "dead"):
        raise ValueError(f"saturation_from: argument 'kind' must be 'saturation' or 'dead'; "
                         f"got {kind!r}")
    values = list(activations.get(kind, {}).values())
    if not values:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([jnp.mean(jnp.asarray(v, jnp.float32)) for v in values])
