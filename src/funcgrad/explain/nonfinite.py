"""Find where a computation first stops being finite, forward or backward.

:func:`find_nonfinite` is built on :func:`funcgrad.explain`'s graph, itself two visitors
on the one jaxpr walker: the forward values are scanned in topological order, then the
backward pass in the order backpropagation runs. It is re-exported as
``funcgrad.flow.find_nonfinite``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .build import explain
from .values import summarize

__all__ = ["NonFinite", "find_nonfinite"]


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
            value, or -1 when it is a tuple of several outputs.
    """

    phase: str
    node: str
    op: str
    primitive: bool
    inputs: tuple[str, ...]
    detail: str
    input: str = ""
    index: int = -1

    def __str__(self) -> str:
        what = f"funcgrad primitive {self.op!r}" if self.primitive else f"operation {self.op!r}"
        if self.phase == "input":
            return f"input {self.node!r} is not finite: {self.detail}"
        if self.phase == "forward":
            return (f"forward: {what} (node {self.node!r}, inputs {list(self.inputs)}) "
                    f"returned a non-finite value: {self.detail}")
        return (f"backward: {what} (node {self.node!r}) passed a non-finite gradient to "
                f"its input {self.input!r}: {self.detail}")


def _first_bad(value: Any) -> int | None:
    """``None`` if ``value`` is finite, else the flat index of its first non-finite element
    (-1 for a tuple of outputs)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return -1 if any(_first_bad(v) is not None for v in value) else None
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.inexact):
        return None
    bad = np.flatnonzero(~np.isfinite(arr))
    return int(bad[0]) if bad.size else None


def find_nonfinite(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> NonFinite | None:
    """Name the first operation whose forward value, or backward gradient, is not finite.

    Traces ``fn`` with :func:`funcgrad.explain` (one node per funcgrad primitive call, in
    topological order). The forward pass is scanned in order: the first node whose value
    holds ``inf`` or ``nan`` is reported. If every value is finite, the backward pass is
    scanned in the order backpropagation runs (output to inputs): the first node whose
    rule turns a finite incoming gradient into a non-finite one for an input is reported.

    Args:
        fn: a function returning a scalar loss, as for :func:`funcgrad.explain`.
        *args: its arguments.
        **kwargs: its keyword arguments.

    Returns:
        A :class:`NonFinite`, or ``None`` when every value and gradient is finite.

    Examples:
        >>> import jax.numpy as jnp
        >>> import funcgrad as fg
        >>> loss = lambda x: fg.sum(fg.log(fg.relu(x)))
        >>> r = find_nonfinite(loss, jnp.array([1.0, -1.0, 2.0]))
        >>> r.phase, r.op, r.index
        ('forward', 'log', 1)
        >>> find_nonfinite(loss, jnp.array([1.0, 3.0])) is None
        True
    """
    graph = explain(fn, *args, **kwargs)
    for node in graph.all_nodes:
        index = _first_bad(node.value)
        if index is not None:
            phase = "input" if node.kind in ("input", "const") else "forward"
            return NonFinite(phase, node.name, node.op, node.primitive, node.input_names,
                             summarize(node.value), index=index)
    for node in reversed(graph.all_nodes):
        if node.kind not in ("op", "group") or node.grad is None \
                or _first_bad(node.grad) is not None:
            continue
        for src in dict.fromkeys(node.inputs):
            if src.grad is None:
                continue
            share = graph.edge_grad(src, node)
            index = _first_bad(share)
            if index is not None:
                return NonFinite("backward", node.name, node.op, node.primitive,
                                 node.input_names, summarize(share), src.name, index)
    return None
