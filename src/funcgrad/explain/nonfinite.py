"""Find where a computation first stops being finite, forward or backward, and say why.

:func:`find_nonfinite` is a visitor on the one jaxpr walker (:mod:`funcgrad._jaxpr`), run
by :mod:`.replay`: the function is evaluated equation by equation, then the backward pass
runs equation by equation, each through its own rule (a funcgrad primitive through its
hand-written ``fwd``/``bwd``). The first equation that turns finite values into a
non-finite one is reported with the names :func:`funcgrad.explain` gives, the user's
source line, the element and a diagnosis from the table in :mod:`.causes`. It is
re-exported as ``funcgrad.flow.find_nonfinite``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .. import _jaxpr
from .arguments import flatten_arguments
from .build import _check_output, _resolve, skeleton
from .causes import _SQUARES, NOT_ELEMENTWISE, Finding, diagnose
from .replay import Hit, Tape, backward, element_values, first_bad, source_line
from .tracing import Program, record
from .values import summarize

__all__ = ["UNROLL_LIMIT", "NonFinite", "find_nonfinite"]

#: :func:`find_nonfinite` unrolls scans of up to this many iterations (names as
#: ``explain(..., unroll_limit=UNROLL_LIMIT)`` gives them).
UNROLL_LIMIT = 1024


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """Where a computation first stops being finite (from :func:`find_nonfinite`).

    Attributes:
        phase: ``"input"`` (an argument already is), ``"forward"`` (the node's value) or
            ``"backward"`` (the gradient the node's rule passes to one of its inputs).
        node: the node's name in :func:`funcgrad.explain`'s graph.
        op: the operation (a funcgrad primitive's registry name such as ``"log"``).
        primitive: whether ``op`` is a funcgrad primitive.
        inputs: the node's input names.
        detail: a summary of the offending value.
        input: for ``"backward"``, the input whose gradient is not finite.
        index: the flat (row-major) index of the first non-finite element of the offending
            value.
        layer: the node's layer, as :func:`funcgrad.explain` gives it (``params[0]``).
        scope: the ``jax.named_scope`` path it was traced in.
        source: the line of the user's code that called the op (``model.py:12 (loss)``),
            or ``""``.
        values: ``(name, value)`` at that element: the op's inputs (``max|name|`` for an
            input that does not broadcast to it), ``out`` (its forward value) and, for
            ``"backward"``, ``dL/dout`` (the incoming gradient).
        cause: the key of the diagnosed cause in :data:`funcgrad.explain.causes.CAUSES`.
        diagnosis: what happened, in plain language.
        fix: how to fix it.
        masked: the op's forward non-finite value was masked (by ``where``) so the loss is
            finite; for ``"backward"``, it became ``nan`` only in the backward pass.
    """

    phase: str
    node: str
    op: str
    primitive: bool
    inputs: tuple[str, ...]
    detail: str
    input: str = ""
    index: int = -1
    layer: str = ""
    scope: str = ""
    source: str = ""
    values: tuple[tuple[str, float], ...] = ()
    cause: str = ""
    diagnosis: str = ""
    fix: str = ""
    masked: bool = False

    def __str__(self) -> str:
        what = f"funcgrad primitive {self.op!r}" if self.primitive else f"operation {self.op!r}"
        if self.phase == "input":
            return f"input {self.node!r} is not finite: {self.detail}"
        if self.phase == "forward":
            return (f"forward: {what} (node {self.node!r}, inputs {list(self.inputs)}) "
                    f"returned a non-finite value: {self.detail}")
        return (f"backward: {what} (node {self.node!r}) passed a non-finite gradient to "
                f"its input {self.input!r}: {self.detail}")

    def describe(self) -> str:
        """The full report: :meth:`__str__`, then where, the element, cause and fix.

        Returns:
            Several lines of text.
        """
        where = ", ".join(f"{k} {v}" for k, v in (("layer", self.layer),
                                                  ("scope", self.scope)) if v)
        lines = [str(self), f"  node {self.node!r}" + (f" ({where})" if where else "")
                 + (f" at {self.source}" if self.source else "")]
        if self.values:
            vals = ", ".join(f"{k} = {v:.4g}" for k, v in self.values)
            lines.append(f"  element {self.index}: {vals}")
        if self.diagnosis:
            lines.append(f"  cause ({self.cause}): {self.diagnosis}")
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (strict JSON: non-finite numbers as ``"nan"``/``"inf"``).

        Returns:
            Every field; ``values`` as a ``{name: value}`` mapping; ``"message"`` as
            :meth:`__str__`.
        """
        out = dataclasses.asdict(self)
        out["inputs"] = list(self.inputs)
        out["values"] = {k: _json_num(v) for k, v in self.values}
        out["message"] = str(self)
        return out


def _json_num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _owner(prog: Program, k: int) -> int:
    """The shown step a hidden step (a cast, ``xs[t]``) is folded into (itself if shown)."""
    stack, seen = [k], set()
    while stack:
        h = stack.pop(0)
        if not prog.steps[h].hidden:
            return h
        seen.add(h)
        outs = set(prog.steps[h].outs)
        stack += [j for j, s in enumerate(prog.steps)
                  if j not in seen and outs.intersection(s.ins)]
    return k


class _Names:
    """Names of steps and values, as :func:`funcgrad.explain` gives them."""

    def __init__(self, prog: Program, leaf_names: list[str]) -> None:
        self.prog, self.sk = prog, skeleton(prog, leaf_names)
        self.shown = set(self.sk.nodes_by_id)

    def value(self, i: int) -> str:
        (src, *_), _ = _resolve(self.prog, [i], self.shown)
        node = self.sk.nodes_by_id.get(src)
        return node.name if node is not None else "const"

    def node(self, k: int) -> Any:
        return self.sk.node_of_step.get(_owner(self.prog, k))


def _squares_in(prog: Program, k: int) -> bool:
    for i in prog.steps[k].ins:
        p = prog.producer.get(i)
        while p is not None and prog.steps[p].hidden and prog.steps[p].ins:
            p = prog.producer.get(prog.steps[p].ins[0])
        if p is not None and prog.steps[p].op in _SQUARES:
            return True
    return False


def _report(names: _Names, tape: Tape, hit: Hit, phase: str, entry: str,
            masked: bool) -> NonFinite:
    prog = names.prog
    step, rec = prog.steps[hit.k], tape.entries[hit.k]
    node = names.node(hit.k)
    in_names = [names.value(i) for i in step.ins]
    shape = tuple(np.shape(hit.value))
    vals = list(element_values(in_names, rec.invals, shape, hit.index,
                               step.op not in NOT_ELEMENTWISE))
    if phase == "forward":
        outs = [("out", hit.value)]
    else:
        outs = [(n, a) for n, a in (("out", rec.outs[0]), ("dL/dout", hit.cotangents[0]))
                if len(rec.outs) == 1 and np.shape(a) == shape]
    vals += element_values([n for n, _ in outs], [a for _, a in outs], shape, hit.index)
    bad = float(np.asarray(hit.value).flat[hit.index])
    finding = Finding(phase, step.op, tuple(vals), bad, hit.index,
                      np.asarray(hit.value).dtype.name, masked=masked,
                      squares_in=_squares_in(prog, hit.k), entry=entry)
    cause, diagnosis, fix = diagnose(finding)
    owner_step = prog.steps[_owner(prog, hit.k)]
    return NonFinite(
        phase, node.name if node is not None else step.op, step.op, step.primitive,
        node.input_names if node is not None else tuple(in_names), summarize(hit.value),
        in_names[hit.position] if phase == "backward" else "", hit.index,
        node.layer if node is not None else "", step.scope,
        source_line(step.eqn) or source_line(owner_step.eqn), tuple(vals), cause,
        diagnosis, fix, masked)


def _entry(leaves: list[Any], leaf_names: list[str]) -> str:
    """A note on arguments that are huge at entry (``""`` if none)."""
    from .causes import HUGE

    for leaf, name in zip(leaves, leaf_names, strict=True):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and a.size:
            m = float(np.max(np.abs(a.astype(np.float64))))
            if m > HUGE:
                return f"huge (max |{name}| = {m:.3g})"
    return ""


def _input_report(leaves: list[Any], leaf_names: list[str]) -> NonFinite | None:
    for leaf, name in zip(leaves, leaf_names, strict=True):
        index = first_bad(leaf)
        if index is not None:
            value = float(np.asarray(leaf).flat[index])
            cause, diagnosis, fix = diagnose(Finding(
                "input", "input", ((name, value),), value, index,
                np.asarray(leaf).dtype.name))
            return NonFinite("input", name, "input", False, (), summarize(leaf), "", index,
                             values=((name, value),), cause=cause, diagnosis=diagnosis,
                             fix=fix)
    return None


def find_nonfinite(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> NonFinite | None:
    """Name the first operation whose forward value, or backward gradient, is not finite.

    The arguments are checked first (``phase="input"``). Then ``fn`` is replayed equation
    by equation (scans of up to :data:`UNROLL_LIMIT` iterations unrolled). If the loss is
    not finite, the first operation whose value holds ``inf`` or ``nan`` is reported.
    Otherwise the backward pass runs in the order backpropagation runs, each operation
    through its own rule, and the first one that turns a finite incoming gradient into a
    non-finite one for an input is reported; when that operation's own forward value was
    non-finite but masked (``where(x > 0, log(x), 0)``), the report says so
    (``masked=True``) and gives the double-``where`` fix. A masked forward value whose
    gradient stays finite is reported last, with ``masked=True``.

    Args:
        fn: a function returning a scalar loss, as for :func:`funcgrad.explain`.
        *args: its arguments.
        **kwargs: its keyword arguments.

    Returns:
        A :class:`NonFinite` (see :meth:`NonFinite.describe` and
        :meth:`NonFinite.to_dict`), or ``None`` when every value and gradient is finite.

    Raises:
        ValueError: if ``fn`` does not return one real scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> import funcgrad as fg
        >>> loss = lambda x: fg.sum(fg.log(fg.relu(x)))
        >>> r = find_nonfinite(loss, jnp.array([1.0, -1.0, 2.0]))
        >>> r.phase, r.op, r.index, r.cause, dict(r.values)
        ('forward', 'log', 1, 'log_at_zero', {'relu': 0.0, 'out': -inf})
        >>> find_nonfinite(loss, jnp.array([1.0, 3.0])) is None
        True
    """
    fn_name = getattr(fn, "__name__", None) or type(fn).__name__
    leaves, leaf_names, flat_fn = flatten_arguments(fn, args, kwargs, "find_nonfinite")
    report = _input_report(leaves, leaf_names)
    if report is not None:
        return report
    closed = jax.make_jaxpr(flat_fn)(*leaves)
    _check_output(fn_name, closed.out_avals, "find_nonfinite")
    prog = record(closed, UNROLL_LIMIT)
    names = _Names(prog, leaf_names)
    tape = Tape(prog)
    (out,) = _jaxpr.walk(closed, leaves, tape, unroll_limit=UNROLL_LIMIT)
    entry = _entry(leaves, leaf_names)
    if tape.first is not None and first_bad(out) is not None:
        return _report(names, tape, tape.first, "forward", entry, masked=False)
    hit, _ = backward(tape, prog)
    if hit is not None:
        masked = any(first_bad(o) is not None for o in tape.entries[hit.k].outs)
        return _report(names, tape, hit, "backward", entry, masked)
    if tape.first is not None:
        return _report(names, tape, tape.first, "forward", entry, masked=True)
    return None
