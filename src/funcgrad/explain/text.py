"""Text rendering of a graph in the lesson's style: forward and backward fans, the chain
rule written out node by node, the node table and the gradient-descent update."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .._text import text_table
from .model import GraphModel, Node
from .values import fmt_num, plural, short, summarize

__all__ = ["edge_label", "fan", "table", "to_text"]

_ASCII = str.maketrans({"─": "-", "┐": "+", "┘": "+", "┤": "+", "├": "+", "┼": "+",
                        "┴": "+", "→": ">", "←": "<", "×": "*", "∂": "p", "²": "^2",
                        "−": "-"})


def fan(labels: list[str], box: str, out: str, left: bool) -> list[str]:
    """Draw inputs converging on one op, the lesson's ``──┐ ├─→ ──┘`` shape.

    Forward (``left=False``): ``x = 2 ──┐ / ├─→ [mul] ──→ y = 6 / w = 3 ──┘``. Backward
    (``left=True``): ``dL/dx = 24 ←─┐ / ├── [mul] ←── dL/dy = 8 / dL/dw = 16 ←─┘``.

    Args:
        labels: one label per input.
        box: the op's label (``[mul]``).
        out: the output's label.
        left: draw arrows pointing left (the backward pass).

    Returns:
        The drawing's lines.

    Examples:
        >>> print("\\n".join(fan(["x = 2", "w = 3"], "[mul]", "y = 6", left=False)))
          x = 2 ──┐
                  ├─→ [mul] ──→ y = 6
          w = 3 ──┘
    """
    stem, tail = ("←─", f"── {box} ←── {out}") if left else ("──", f"─→ {box} ──→ {out}")
    k = len(labels)
    if k == 0:
        return [f"  {box} {'←──' if left else '──→'} {out}"]
    if k == 1:
        return [f"  {labels[0]} {stem}{tail}"]
    w = max(len(s) for s in labels)
    rows = []
    for i, lab in enumerate(labels):
        corner = "┐" if i == 0 else ("┘" if i == k - 1 else "┤")
        rows.append(f"  {lab.ljust(w)} {stem}{corner}")
    if k % 2:
        mid = k // 2
        rows[mid] = f"  {labels[mid].ljust(w)} {stem}┼{tail}"
    else:
        rows.insert(k // 2, " " * (w + 5) + "├" + tail)
    return rows


def _label(n: Node) -> str:
    v = short(n.value)
    if n.kind == "const" and n.name.split("#")[0].rstrip("'") == v:
        return v  # a literal: its name is its value
    return f"{n.name} = {v}" if np.ndim(n.value) == 0 and not isinstance(n.value, tuple) \
        else f"{n.name}: {v}"


def _glabel(g: GraphModel, n: Node) -> str:
    if n.grad is None:
        return f"{n.name} (no gradient)"
    v = short(n.grad)
    sep = " = " if np.ndim(n.grad) == 0 and not isinstance(n.grad, tuple) else ": "
    return f"{g._dname(n)}{sep}{v}"


def edge_label(g: GraphModel, src: Node, dst: Node) -> str:
    """Gradient label of a backward arrow: ``dL/dx = 24``, or ``dL/dx += ...`` for one
    path's share when ``x`` feeds several nodes.

    Args:
        g: the graph.
        src: the edge's input node.
        dst: the consuming node.

    Returns:
        The label.
    """
    if src.grad is None or len(g.consumers(src)) <= 1:
        return _glabel(g, src)
    share = g.edge_grad(src, dst)
    if share is None:
        return _glabel(g, src) + " (total)"
    return f"{g._dname(src)} += {short(share)}"


def _forward_lines(g: GraphModel) -> list[str]:
    lines = []
    for n in g.nodes:
        lines += fan([_label(i) for i in n.inputs], f"[{n.op}]", _label(n), left=False)
    return lines


def _backward_lines(g: GraphModel) -> list[str]:
    lines = []
    for n in reversed(g.nodes):
        labels = [edge_label(g, i, n) for i in n.inputs]
        lines += fan(labels, f"[{n.op}]", _glabel(g, n), left=True)
    return lines


def _chain_line(g: GraphModel, n: Node) -> str | None:
    """``dL/dn = dL/dc × ∂c/∂n = 8 × 2 = 16`` when every consumer has scalar partials."""
    terms_sym, terms_num = [], []
    cons = g.consumers(n)
    if not cons:
        return None
    for c in cons:
        idx = next(k for k, i in enumerate(c.inputs) if i is n)
        part = None if c.local is None else c.local[idx]
        if part is None or np.ndim(part) != 0 or c.grad is None or np.ndim(c.grad) != 0:
            return None
        local = f"∂{c.name}/∂{n.name}"
        if c is g.output:
            terms_sym.append(local)
            terms_num.append(fmt_num(part))
        else:
            terms_sym.append(f"{g._dname(c)} × {local}")
            terms_num.append(f"{fmt_num(c.grad)} × {fmt_num(part)}")
    num = " + ".join(terms_num)
    total = fmt_num(n.grad)
    eq = f"{g._dname(n)} = {' + '.join(terms_sym)}"
    if num != total:
        eq += f" = {num}"
    return f"{eq} = {total}"


def _chain_lines(g: GraphModel) -> list[str]:
    """The chain rule for every scalar node whose consumers have scalar partials."""
    lines = [f"{g._dname(g.output)} = 1"]
    for n in reversed(g.all_nodes):
        if n is g.output or n.grad is None or np.ndim(n.grad) != 0 \
                or isinstance(n.grad, tuple):
            continue
        line = _chain_line(g, n)
        if line is not None:
            lines.append(line)
    return lines if len(lines) > 1 else []


def _local_text(n: Node) -> str:
    text = n.formula
    if n.local is not None and n.kind == "op":
        parts = [f"∂{n.name}/∂{i.name} = {short(p)}"
                 for i, p in zip(n.inputs, n.local, strict=True) if p is not None]
        if parts:
            text = f"{text}; {', '.join(parts)}" if text else ", ".join(parts)
    return text


def table(g: GraphModel, learning_rate: float | None = None,
          update: Iterable[str] | None = None) -> str:
    """The node table: node, op, value, local derivative and ``dL/dnode``.

    Args:
        g: the graph.
        learning_rate: if given, add a column with ``w - learning_rate * dL/dw`` for the
            inputs.
        update: the inputs to update (default all inputs with a gradient).

    Returns:
        The table as text.
    """
    headers = ["node", "op", "value", "local derivative", f"d{g.loss_name}/dnode"]
    new = g.sgd_update(learning_rate, update) if learning_rate is not None else {}
    if new:
        headers.append("w - lr * grad")
    rows = []
    for n in g.all_nodes:
        op = n.kind if n.kind in ("input", "const") else f"{n.op}({', '.join(n.input_names)})"
        row = [n.name, op, summarize(n.value), _local_text(n), summarize(n.grad)]
        if new:
            row.append(summarize(new[n.name]) if n.name in new else "")
        rows.append(row)
    return text_table(rows, headers)


def _update_lines(g: GraphModel, learning_rate: float, update: Iterable[str] | None
                  ) -> list[str]:
    new = g.sgd_update(learning_rate, update)
    if not new:
        return []
    lines = ["", f"Gradient-descent update (learning_rate = {learning_rate}): "
                 "w_new = w - learning_rate × dL/dw"]
    for name, v in new.items():
        n = g[name]
        if np.ndim(v) == 0:
            lines.append(f"  {name}_new = {fmt_num(n.value)} - {learning_rate} × "
                         f"{fmt_num(n.grad)} = {fmt_num(v)}")
        else:
            lines.append(f"  {name}_new = {name} - {learning_rate} × "
                         f"{g._dname(n)}: {summarize(v)}")
    return lines


def to_text(graph: GraphModel, learning_rate: float | None = None,
            update: Iterable[str] | None = None, collapse: bool | None = None,
            max_nodes: int = 40, ascii: bool = False,  # noqa: A002
            title: str | None = None) -> str:
    """The drawing and the table; see :meth:`funcgrad.explain.Graph.to_text`.

    Args:
        graph: the graph.
        learning_rate: show the gradient-descent update with this step size.
        update: the inputs to update (default all inputs with a gradient).
        collapse: group nodes by layer or scope (``None``: only above ``max_nodes``).
        max_nodes: the threshold for automatic collapsing.
        ascii: plain ASCII instead of box-drawing characters.
        title: a line to print first.

    Returns:
        The text.
    """
    g, note = graph._maybe_collapse(collapse, max_nodes)
    lines = [f"Computational graph of {graph.fn_name}: {plural(len(g.nodes), 'op')}, "
             f"{plural(len(g.inputs), 'input')}, {g.output.name} = {short(g.output.value)}"]
    if title:
        lines[:0] = [title, ""]
    if note:
        lines.append(note)
    if not g.nodes:
        lines.append(f"(no operations: the output is {g.output.kind} {g.output.name})")
    lines += ["", "Forward pass (values flow left to right):", *_forward_lines(g)]
    shares = any(len(g.consumers(n)) > 1 for n in g.all_nodes if n.grad is not None)
    lines += ["", "Backward pass (gradients flow right to left; += is one path's share "
                  "of a gradient that sums over paths):" if shares
              else "Backward pass (gradients flow right to left):", *_backward_lines(g)]
    chain = _chain_lines(g)
    if chain:
        lines += ["", "Chain rule, node by node (d = total derivative, ∂ = local "
                      "derivative):", *(f"  {c}" for c in chain)]
    lines += ["", table(g, learning_rate, update)]
    if learning_rate is not None:
        lines += _update_lines(g, learning_rate, update)
    text = "\n".join(lines)
    return text.translate(_ASCII) if ascii else text
