"""Tracing for :func:`funcgrad.explain`: two visitors on the one jaxpr walker.

1. :class:`Recorder` walks the jaxpr with integer ids as values and records the program:
   one :class:`Step` per equation (nested ``jit`` calls inlined by the walker), and the
   constants and literals it meets. Each step knows whether it is a funcgrad primitive
   (by its ``funcgrad.<name>`` scope, through the walker) and its local derivative's
   formula (from the registry for primitives, :mod:`.formulas` otherwise).
2. :func:`evaluate` walks again with real values, inside one jitted
   ``jax.value_and_grad``: a zero "probe" is added to every displayed value, so the
   gradient with respect to the probes is ``dL/dnode`` for every node at once, through
   the primitives' own backward rules.

Dtype casts that a primitive's public function emits before its ``custom_vjp`` call are
*hidden*: a ``convert_element_type`` whose every consumer is a funcgrad primitive (or
another hidden cast) is folded into that primitive's node, as is any identity cast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jaxpr
from .formulas import JAX_FORMULAS, formula

__all__ = ["Program", "Recorder", "Step", "evaluate", "is_float", "record"]


@dataclasses.dataclass
class Step:
    """One recorded equation over value ids.

    Attributes:
        eqn: the walker's equation.
        ins: input value ids.
        outs: output value ids.
        op: the node's op name.
        formula: the local derivative.
        primitive: whether it is a funcgrad primitive.
        hidden: folded into the node it feeds (a primitive's input cast, an unrolled
            scan's ``xs[t]`` and stacking, a carry folded into the op computing it).
        label: the node's name when fixed by the program (``h[3]``, the carry leaving
            iteration 3 of an unrolled scan), else ``""``.
    """

    eqn: _jaxpr.Equation
    ins: list[int]
    outs: list[int]
    op: str
    formula: str
    primitive: bool
    hidden: bool = False
    label: str = ""

    @property
    def scope(self) -> str:
        """The step's named-scope path."""
        return self.eqn.scope


@dataclasses.dataclass
class Program:
    """The recorded equations of a traced function, over integer value ids.

    Attributes:
        steps: the equations, in execution order.
        avals: id -> abstract value (shape, dtype).
        consts: id -> value, for constants and literals.
        const_ids: the constant ids in the order the walker met them.
        literal: the ids that are literals.
        producer: id -> index of the step that computes it.
        in_ids: the function's input ids.
        out_id: the output's id.
    """

    steps: list[Step] = dataclasses.field(default_factory=list)
    avals: dict[int, Any] = dataclasses.field(default_factory=dict)
    consts: dict[int, Any] = dataclasses.field(default_factory=dict)
    const_ids: list[int] = dataclasses.field(default_factory=list)
    literal: set[int] = dataclasses.field(default_factory=set)
    producer: dict[int, int] = dataclasses.field(default_factory=dict)
    in_ids: list[int] = dataclasses.field(default_factory=list)
    out_id: int = -1

    def new_id(self, aval: Any) -> int:
        """A fresh id for a value with abstract value ``aval``."""
        i = len(self.avals)
        self.avals[i] = aval
        return i


def _formula(eqn: _jaxpr.Equation) -> tuple[str, str, bool]:
    """(op, local derivative, is a funcgrad primitive) for one equation."""
    if eqn.funcgrad is not None:
        from ..registry import PRIMITIVES

        prim = PRIMITIVES.get(eqn.funcgrad)
        if prim is not None:
            return eqn.funcgrad, prim.formula, True
        return eqn.funcgrad, f"custom VJP rule {eqn.bwd_name}".rstrip(), True
    if eqn.custom_vjp:
        return eqn.name, f"custom VJP rule {eqn.bwd_name}".rstrip(), False
    if eqn.primitive in _jaxpr.CUSTOM_JVP_PRIMITIVES:
        return eqn.name, JAX_FORMULAS["custom_jvp_call"], False
    return eqn.name, formula(eqn.name), False


class Recorder(_jaxpr.Visitor):
    """Walks with integer ids as values and records a :class:`Program`."""

    def __init__(self) -> None:
        self.prog = Program()

    def const(self, value: Any, literal: bool) -> int:
        arr = jnp.asarray(value)
        i = self.prog.new_id(jax.ShapeDtypeStruct(arr.shape, arr.dtype))
        self.prog.consts[i] = arr
        self.prog.const_ids.append(i)
        if literal:
            self.prog.literal.add(i)
        return i

    def equation(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[int]:
        outs = [self.prog.new_id(a) for a in eqn.out_avals]
        k = len(self.prog.steps)
        for o in outs:
            self.prog.producer[o] = k
        op, text, primitive = _formula(eqn)
        self.prog.steps.append(Step(eqn, list(invals), outs, op, text, primitive))
        return outs


def _hide_casts(prog: Program) -> None:
    """Mark identity casts, and casts that feed only funcgrad primitives, as hidden."""
    consumers: dict[int, list[Step]] = {}
    for s in prog.steps:
        for i in s.ins:
            consumers.setdefault(i, []).append(s)
    for s in reversed(prog.steps):
        if s.eqn.primitive != "convert_element_type" or len(s.ins) != 1:
            continue
        same = np.dtype(s.eqn.in_avals[0].dtype) == np.dtype(s.eqn.out_avals[0].dtype)
        users = consumers.get(s.outs[0], [])
        feeds_primitive = bool(users) and prog.out_id not in s.outs and all(
            u.primitive or u.hidden for u in users)
        s.hidden = same or feeds_primitive


def _fold_loops(prog: Program, carries: bool) -> None:
    """Hide an unrolled scan's ``xs[t]`` and stacking; name each carry ``h[t]``.

    With ``carries``, a carry computed by an op of the same iteration is folded into that
    op, which takes the carry's name; any other carry stays a node of its own.
    """
    for s in prog.steps:
        if s.eqn.primitive in ("scan_index", "scan_stack"):
            s.hidden = True
        if not carries or s.eqn.primitive != "scan_carry":
            continue
        k = prog.producer.get(s.ins[0])
        src = prog.steps[k] if k is not None else None
        if (src is not None and not src.hidden and not src.label
                and src.eqn.primitive not in _jaxpr.LOOP_PRIMITIVES
                and (src.eqn.loop, src.eqn.iteration) == (s.eqn.loop, s.eqn.iteration)):
            src.label, s.hidden = s.eqn.label, True
        else:
            s.label = s.eqn.label


def record(closed: Any, unroll_limit: int = _jaxpr.UNROLL_LIMIT) -> Program:
    """Record the program of a closed jaxpr (see :class:`Recorder`).

    Args:
        closed: the closed jaxpr of the function, traced on its flattened arguments.
        unroll_limit: scans of at most this many iterations are unrolled.

    Returns:
        The :class:`Program`, with hidden steps marked and unrolled carries named.
    """
    rec = Recorder()
    prog = rec.prog
    prog.in_ids = [prog.new_id(a) for a in closed.in_avals]
    (prog.out_id,) = _jaxpr.walk(closed, prog.in_ids, rec, unroll_limit=unroll_limit)
    _fold_loops(prog, carries=False)
    _hide_casts(prog)
    _fold_loops(prog, carries=True)
    return prog


def is_float(aval: Any) -> bool:
    """Whether values of ``aval`` have a gradient (a floating or complex dtype)."""
    return jnp.issubdtype(aval.dtype, jnp.inexact)


class _Evaluator(_jaxpr.Visitor):
    """Walks with values, adding a probe to each probed value and keeping the shown ones."""

    def __init__(self, prog: Program, probes: dict[int, Any], keep: set[int]) -> None:
        self.prog, self.probes, self.keep = prog, probes, keep
        self.values: dict[int, Any] = {}
        self._const = 0
        self._step = 0

    def _seen(self, i: int, value: Any) -> Any:
        if i in self.probes:
            value = value + self.probes[i]
        if i in self.keep:
            self.values[i] = value
        return value

    def const(self, value: Any, literal: bool) -> Any:
        i = self.prog.const_ids[self._const]
        self._const += 1
        return self._seen(i, self.prog.consts[i])

    def equation(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[Any]:
        step = self.prog.steps[self._step]
        self._step += 1
        outs = eqn.bind(*invals)
        if step.hidden:
            return outs
        return [self._seen(o, v) for o, v in zip(step.outs, outs, strict=True)]


def evaluate(closed: Any, prog: Program, leaves: Sequence[Any], probe_ids: Sequence[int],
             keep: set[int], unroll_limit: int = _jaxpr.UNROLL_LIMIT
             ) -> tuple[dict[int, Any], dict[int, Any]]:
    """Run forward and backward: the kept values, and the gradient of every probed id.

    Args:
        closed: the closed jaxpr :func:`record` recorded ``prog`` from.
        prog: the program.
        leaves: the flattened arguments.
        probe_ids: the ids to take ``dL/d(value)`` for (float values only).
        keep: the ids whose values to return.
        unroll_limit: as given to :func:`record`.

    Returns:
        ``(values, grads)``: id -> value for ``keep``, id -> gradient for ``probe_ids``.
    """
    def run(probes: dict[int, Any], leaves: Sequence[Any]) -> tuple[Any, dict[int, Any]]:
        ev = _Evaluator(prog, probes, keep)
        args = [ev._seen(i, x) for i, x in zip(prog.in_ids, leaves, strict=True)]
        (out,) = _jaxpr.walk(closed, args, ev, unroll_limit=unroll_limit)
        return out, ev.values

    zeros = {i: np.zeros(prog.avals[i].shape, prog.avals[i].dtype) for i in probe_ids}
    # One XLA program for forward and backward: one compilation (~0.5 s for a 20-layer
    # MLP) beats compiling and dispatching every operation eagerly (~3 s).
    forward_backward: Callable[..., Any] = jax.jit(jax.value_and_grad(run, has_aux=True))
    (_, values), grads = _compiled(forward_backward, zeros, list(leaves))(zeros, list(leaves))
    return values, grads


def _compiled(fn: Any, *args: Any) -> Callable[..., Any]:
    """``fn`` compiled for ``args`` with XLA's backend optimisation off.

    The program runs once, for display: LLVM's optimisation passes cost more than they
    save (a 20-layer MLP's graph compiles in ~0.3 s instead of ~0.8 s on CPU). Falls
    back to the default compilation where the option is unknown.
    """
    lowered = fn.lower(*args)
    try:
        return lowered.compile({"xla_backend_optimization_level": 0})
    except Exception:  # noqa: BLE001 - an XLA build without the option
        return lowered.compile()
