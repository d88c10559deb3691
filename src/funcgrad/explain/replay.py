"""Replay a function equation by equation, forward then backward, watching for non-finite
values: the engine of :func:`funcgrad.explain.find_nonfinite`.

:class:`Tape` is a visitor on the one jaxpr walker (:mod:`funcgrad._jaxpr`). Forward, it
evaluates every equation eagerly and keeps its inputs and outputs. :func:`backward` then
runs the backward pass in the order backpropagation runs, one equation at a time, each
through its own rule: a funcgrad primitive's ``custom_vjp`` equation is pulled back by JAX
calling that primitive's hand-written ``fwd`` and ``bwd`` (the rule registered with
:func:`funcgrad.primitive`), a plain JAX operation by JAX's built-in rule. Nothing is
differentiated *inside* a primitive.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jaxpr
from .tracing import Program, is_float

__all__ = ["Entry", "Hit", "Tape", "backward", "first_bad", "source_line"]


def first_bad(value: Any) -> int | None:
    """``None`` if ``value`` is finite (or not a float array), else the flat index of its
    first non-finite element.

    Examples:
        >>> first_bad(np.array([1.0, np.inf, np.nan])), first_bad(np.array([1, 2]))
        (1, None)
    """
    if value is None:
        return None
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.inexact):
        return None
    bad = np.flatnonzero(~np.isfinite(arr))
    return int(bad[0]) if bad.size else None


@dataclasses.dataclass
class Entry:
    """One replayed equation: its step index in the program, inputs and outputs."""

    k: int
    eqn: _jaxpr.Equation
    invals: list[Any]
    outs: list[Any]


@dataclasses.dataclass
class Hit:
    """The first non-finite value met: where, and which element.

    Attributes:
        k: the step index (in :class:`~funcgrad.explain.tracing.Program` order).
        position: the output (forward) or input (backward) position in the equation.
        index: the flat index of the first non-finite element.
        value: the offending array.
        cotangents: backward only: the equation's incoming cotangents, one per output.
    """

    k: int
    position: int
    index: int
    value: Any
    cotangents: list[Any] = dataclasses.field(default_factory=list)


class Tape(_jaxpr.Visitor):
    """Evaluates eagerly, keeping every equation's inputs and outputs; notes the first
    equation whose output is not finite."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.entries: list[Entry] = []
        self.first: Hit | None = None
        self._const = 0

    def const(self, value: Any, literal: bool) -> Any:
        i = self.prog.const_ids[self._const]
        self._const += 1
        return self.prog.consts[i]

    def equation(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[Any]:
        k = len(self.entries)
        outs = eqn.bind(*invals)
        self.entries.append(Entry(k, eqn, list(invals), outs))
        if self.first is None:
            for pos, out in enumerate(outs):
                index = first_bad(out)
                if index is not None:
                    self.first = Hit(k, pos, index, out)
                    break
        return outs


def _pull(entry: Entry, prog: Program, cts_out: list[Any]) -> list[Any]:
    """One equation's cotangents for its float inputs (``None`` for the others)."""
    step = prog.steps[entry.k]
    diff = [j for j, i in enumerate(step.ins) if is_float(prog.avals[i])]
    if not diff:
        return [None] * len(step.ins)

    def fn(*xs: Any) -> list[Any]:
        vals = list(entry.invals)
        for j, x in zip(diff, xs, strict=True):
            vals[j] = x
        return entry.eqn.bind(*vals)

    _, pullback = jax.vjp(fn, *[entry.invals[j] for j in diff])
    cts = []
    for ct, out, aval in zip(cts_out, entry.outs, entry.eqn.out_avals, strict=True):
        if not is_float(aval):
            cts.append(np.zeros(np.shape(out), jax.dtypes.float0))
        else:
            cts.append(jnp.zeros_like(out) if ct is None else ct)
    pulled = pullback(cts)
    result: list[Any] = [None] * len(step.ins)
    for j, c in zip(diff, pulled, strict=True):
        result[j] = c
    return result


def backward(tape: Tape, prog: Program) -> tuple[Hit | None, dict[int, Any]]:
    """Run the backward pass equation by equation, from the output back to the inputs.

    Args:
        tape: the forward replay (its output must be a finite scalar).
        prog: the program it replayed.

    Returns:
        ``(hit, cotangents)``: the first equation whose rule turns finite incoming
        cotangents into a non-finite one for an input (or ``None``), and the cotangent of
        every value id reached so far.
    """
    ct: dict[int, Any] = {prog.out_id: jnp.ones((), prog.avals[prog.out_id].dtype)}
    for entry in reversed(tape.entries):
        step = prog.steps[entry.k]
        cts_out = [ct.get(o) for o in step.outs]
        if all(c is None for c in cts_out) or any(first_bad(c) is not None
                                                  for c in cts_out):
            continue
        for j, (i, c) in enumerate(zip(step.ins, _pull(entry, prog, cts_out), strict=True)):
            if c is None or i not in prog.avals or not is_float(prog.avals[i]):
                continue
            index = first_bad(c)
            if index is not None:
                return Hit(entry.k, j, index, c, cts_out), ct
            ct[i] = c if i not in ct else ct[i] + c
    return None, ct


def source_line(eqn: _jaxpr.Equation) -> str:
    """``file.py:12 (fn)``: the innermost frame of the user's code that traced ``eqn``.

    Frames of JAX and of funcgrad itself are skipped (a primitive's public function is not
    the user's line). Only for reports: nothing is recognised by it.

    Args:
        eqn: the walker's equation.

    Returns:
        The frame, or ``""`` when none is recorded (the made-up equations of a scan).
    """
    raw = getattr(eqn, "_eqn", None)
    if raw is None:
        return ""
    try:
        from jax._src import source_info_util
    except ImportError:  # pragma: no cover - a JAX without it
        return ""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    tb = raw.source_info.traceback
    for frame in source_info_util.user_frames(tb):
        if not frame.file_name.startswith(package):
            return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    return ""


def element_values(names: Sequence[str], arrays: Sequence[Any], shape: tuple[int, ...],
                   index: int, elementwise: bool = True) -> tuple[tuple[str, float], ...]:
    """Each array's value at flat ``index`` of ``shape`` (broadcasting), or its largest
    magnitude (``max|name|``) when it does not broadcast to ``shape`` or the op is not
    ``elementwise``.

    Examples:
        >>> element_values(["x", "b"], [np.array([1.0, 0.0]), np.float32(3)], (2,), 1)
        (('x', 0.0), ('b', 3.0))
    """
    out: list[tuple[str, float]] = []
    for name, arr in zip(names, arrays, strict=True):
        if arr is None:
            continue
        a = np.asarray(arr)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or a.size == 0:
            continue
        try:
            if not elementwise and a.shape != ():
                raise ValueError(name)
            out.append((name, float(np.broadcast_to(a, shape).flat[index])))
        except ValueError:
            out.append((f"max|{name}|", float(np.max(np.abs(a.astype(np.float64))))))
    return tuple(out)
