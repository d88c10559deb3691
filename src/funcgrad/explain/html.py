"""The graph as one self-contained HTML page that steps through backpropagation.

:func:`to_html` writes a single file with inline CSS, inline JavaScript and an inline SVG
drawing: no network requests, no CDN, no Graphviz. The layout is computed here, in Python:
a layered DAG layout (each node one column right of its furthest input, inputs pulled next
to their first consumer, rows ordered by barycentric sweeps). Groups (layers or named
scopes, see :meth:`~funcgrad.explain.Graph.collapse`) get an inner layout of their own; the
page only stacks the columns, so a group can be expanded or collapsed in the browser.

The player reveals the forward pass node by node in topological order, then the backward
pass edge by edge in reverse order, each edge labelled with its chain-rule product
``dL/dy × ∂y/∂w = 8 × 2 = 16`` (a node that feeds several consumers sums the shares), then
the gradient-descent update ``w_new = w − lr · dL/dw``. Clicking a node opens a panel with
its op, formula, shape, dtype, value and gradient (a summary and a histogram for arrays)
and, when given, its gradient-tap record.

Examples:
    >>> from funcgrad.explain import lesson_graph
    >>> page = to_html(lesson_graph("backprop"))
    >>> page.startswith("<!DOCTYPE html>"), "src=" in page, "<link" in page
    (True, False, False)
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .model import GraphModel, Node
from .values import fmt_num, short

__all__ = ["layered_layout", "page_data", "repr_html", "to_html"]

_HIST_BINS = 12
_CHAR_W, _NODE_H, _PAD = 7.2, 64, 14  # px per character, node height, padding
_GAP_X, _GAP_Y, _HEAD = 200, 26, 22  # column gap, row gap, group header height
_SLOTS = re.compile(r"\{\{(?:TITLE|DATA)\}\}|/\*(?:STYLE|SCRIPT)\*/")
_TAP_KEYS = ("norm", "max_abs", "nonfinite", "zero_fraction", "first_nonfinite")


def layered_layout(ids: Sequence[str], preds: Mapping[str, Sequence[str]],
                   sweeps: int = 4) -> dict[str, tuple[int, int]]:
    """Columns and rows of a layered left-to-right drawing of a DAG.

    Each node goes one column right of its furthest predecessor (longest path); a node
    without predecessors goes one column left of its first consumer. Rows are ordered by
    barycentric sweeps: by the mean row of the predecessors, then of the successors (nodes
    without such neighbours go last, so a chain of operations stays on one line).

    Args:
        ids: the node ids in topological order.
        preds: id -> ids of its predecessors (ids outside ``ids`` are ignored).
        sweeps: the number of down-and-up ordering sweeps.

    Returns:
        id -> (column, row).

    Examples:
        >>> layered_layout(["x", "w", "t", "y", "L"], {"y": ["x", "w"], "L": ["y", "t"]})
        {'x': (0, 0), 'w': (0, 1), 't': (1, 1), 'y': (1, 0), 'L': (2, 0)}
    """
    known = set(ids)
    pre = {i: [p for p in preds.get(i, ()) if p in known] for i in ids}
    succ: dict[str, list[str]] = {i: [] for i in ids}
    for i in ids:
        for p in pre[i]:
            succ[p].append(i)
    col = {}
    for i in ids:
        col[i] = 1 + max((col[p] for p in pre[i]), default=-1)
    for i in reversed(ids):  # sources next to their first consumer
        if not pre[i] and succ[i]:
            col[i] = max(0, min(col[s] for s in succ[i]) - 1)
    columns: dict[int, list[str]] = {}
    for i in ids:
        columns.setdefault(col[i], []).append(i)
    row = {i: k for c in columns.values() for k, i in enumerate(c)}
    order = sorted(columns)
    for _ in range(sweeps):
        for cols, nbrs in ((order, pre), (order[::-1], succ)):
            for c in cols:
                def bary(i: str, nb: dict[str, list[str]] = nbrs) -> tuple[float, int]:
                    mean = float(np.mean([row[j] for j in nb[i]])) if nb[i] else np.inf
                    return mean, row[i]

                columns[c].sort(key=bary)
                row.update({i: k for k, i in enumerate(columns[c])})
    return {i: (col[i], row[i]) for i in ids}


def _stats(v: Any) -> dict[str, Any] | None:
    """Summary of an array for the panel: norm, mean, min, max, non-finite counts, histogram."""
    if v is None or isinstance(v, tuple):
        return None
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError):
        return None
    if arr.shape == () or arr.size == 0 or not (np.issubdtype(arr.dtype, np.floating)
                                                or np.issubdtype(arr.dtype, np.integer)):
        return None
    a = arr.astype(np.float64).ravel()
    fin = a[np.isfinite(a)]
    out: dict[str, Any] = {"nan": int(np.isnan(a).sum()), "posinf": int(np.isposinf(a).sum()),
                           "neginf": int(np.isneginf(a).sum()), "finite": int(fin.size)}
    if fin.size:
        counts, edges = np.histogram(fin, bins=_HIST_BINS)
        out.update(norm=fmt_num(np.linalg.norm(fin)), mean=fmt_num(fin.mean()),
                   min=fmt_num(fin.min()), max=fmt_num(fin.max()), hist=counts.tolist(),
                   lo=fmt_num(edges[0]), hi=fmt_num(edges[-1]))
    return out


def _is_scalar(v: Any) -> bool:
    return v is not None and not isinstance(v, tuple) and np.ndim(v) == 0


def _formula(n: Node) -> str:
    if n.formula or not n.primitive:
        return n.formula
    from ..registry import PRIMITIVES

    prim = PRIMITIVES.get(n.op)
    return prim.formula if prim is not None else ""


def _tap(taps: Mapping[str, Any] | None, name: str) -> dict[str, str] | None:
    rec = None if taps is None else taps.get(name)
    if rec is None:
        return None
    if isinstance(rec, Mapping):
        items = dict(rec)
    elif dataclasses.is_dataclass(rec) and not isinstance(rec, type):
        items = dataclasses.asdict(rec)
    else:
        items = {k: getattr(rec, k) for k in _TAP_KEYS if hasattr(rec, k)}
    return {str(k): (fmt_num(v) if _is_scalar(v) and not isinstance(v, str) else str(v))
            for k, v in items.items()}


def _width(*texts: str) -> int:
    return int(max(120, _CHAR_W * max(len(t) for t in texts) + 2 * _PAD))


class _Builder:
    """Turns a graph into the page's data: nodes, groups, edges and player steps."""

    def __init__(self, g: GraphModel, learning_rate: float | None,
                 update: Iterable[str] | None,
                 taps: Mapping[str, Any] | None) -> None:
        self.g, self.lr, self.taps = g, learning_rate, taps
        self.ids = {id(n): f"n{k}" for k, n in enumerate(g.all_nodes)}
        self.loss = g.loss_name
        self.new = {} if learning_rate is None else g.sgd_update(learning_rate, update)
        self.edges = [(i, n) for n in g.all_nodes for i in dict.fromkeys(n.inputs)]
        self.edge_ix = {(id(i), id(n)): k for k, (i, n) in enumerate(self.edges)}
        self._shares: dict[tuple[int, int], tuple[Any, Any]] = {}

    def d(self, n: Node) -> str:
        return f"d{self.loss}/d{n.name}"

    def contribution(self, src: Node, dst: Node) -> tuple[Any, Any]:
        """``src``'s share of its gradient through ``dst``, and ``∂dst/∂src`` for scalars.

        Returns:
            (share or ``None`` where it cannot be separated, local derivative or ``None``).
        """
        key = (id(src), id(dst))
        if key not in self._shares:
            ks = [k for k, i in enumerate(dst.inputs) if i is src]
            parts = [dst.local[k] for k in ks] if dst.local is not None else [None]
            if _is_scalar(dst.grad) and all(_is_scalar(p) for p in parts):
                local = np.sum(np.asarray(parts, dtype=np.asarray(dst.grad).dtype))
                self._shares[key] = (np.asarray(dst.grad) * local, local)
            elif len(ks) == 1 or len(self.g.consumers(src)) == 1:
                self._shares[key] = (self.g.edge_grad(src, dst), None)
            else:  # used twice by dst and by other nodes: the share needs every position
                self._shares[key] = (None, None)
        return self._shares[key]

    def share(self, src: Node, dst: Node) -> tuple[str, str]:
        """The chain-rule product on the edge ``src -> dst``: (symbols, numbers)."""
        sym = f"{self.d(dst)} × ∂{dst.name}/∂{src.name}"
        contrib, local = self.contribution(src, dst)
        if local is not None:
            return sym, f"{fmt_num(dst.grad)} × {fmt_num(local)} = {fmt_num(contrib)}"
        return sym, "VJP = " + ("share not separable" if contrib is None else short(contrib))

    def grad_text(self, n: Node) -> str | None:
        if n.grad is None:
            return None
        total = fmt_num(n.grad) if _is_scalar(n.grad) else short(n.grad)
        cons = self.g.consumers(n)
        if len(cons) > 1 and _is_scalar(n.grad):
            parts = [self.contribution(n, c)[0] for c in cons]
            if all(_is_scalar(p) for p in parts):
                return f"{self.d(n)} = {' + '.join(fmt_num(p) for p in parts)} = {total}"
        return f"{self.d(n)} = {total}"

    def update_text(self, n: Node) -> str | None:
        if n.name not in self.new:
            return None
        v = self.new[n.name]
        if _is_scalar(v):
            grad = fmt_num(n.grad)
            grad = f"({grad})" if grad.startswith("-") else grad
            return f"{n.name}_new = {fmt_num(n.value)} − {self.lr}·{grad} = {fmt_num(v)}"
        return f"{n.name}_new: {short(v)}"

    def node(self, n: Node) -> dict[str, Any]:
        value = fmt_num(n.value) if _is_scalar(n.value) else short(n.value)
        grad, upd = self.grad_text(n), self.update_text(n)
        head = n.name if n.kind in ("input", "const") else f"{n.name} · {n.op}"
        local = None
        if n.local is not None:
            local = [f"∂{n.name}/∂{i.name} = {short(p)}"
                     for i, p in zip(n.inputs, n.local, strict=True) if p is not None]
        return {"id": self.ids[id(n)], "name": n.name, "kind": n.kind, "op": n.op,
                "head": head, "formula": _formula(n), "shape": list(n.shape),
                "dtype": "" if n.dtype is None else str(n.dtype), "value": value,
                "grad": grad, "update": upd, "vstats": _stats(n.value),
                "gstats": _stats(n.grad), "local": local, "tap": _tap(self.taps, n.name),
                "layer": n.layer, "scope": n.scope,
                "w": _width(head, "value " + value, grad or "", upd or "")}

    def steps(self) -> list[dict[str, Any]]:
        """The player's steps; each lists what it reveals (v: values, g: gradients,
        e: edge labels, u: updates)."""
        g, ids = self.g, self.ids
        srcs = [n for n in g.all_nodes if n.kind in ("input", "const")]
        shown = ", ".join(f"{n.name} = {short(n.value)}" for n in srcs[:6])
        if len(srcs) > 6:
            shown += f", ... ({len(srcs)} inputs and constants)"
        steps = [{"t": "Inputs: " + shown, "v": [ids[id(n)] for n in srcs],
                  "f": [ids[id(n)] for n in srcs]}]
        for n in g.nodes:
            args = ", ".join(f"{i.name}" for i in n.inputs)
            steps.append({"t": f"Forward: {n.name} = {n.op}({args}) = {short(n.value)}",
                          "v": [ids[id(n)]], "f": [ids[id(n)]]})
        out = g.output
        steps.append({"t": f"Backward: start at {self.d(out)} = 1", "g": [ids[id(out)]],
                      "f": [ids[id(out)]]})
        pending = {id(n): len(g.consumers(n)) for n in g.all_nodes}
        for n in reversed(g.nodes):
            for i in reversed(list(dict.fromkeys(n.inputs))):
                if i.grad is None:
                    continue
                k = self.edge_ix[(id(i), id(n))]
                sym, num = self.share(i, n)
                rule = f"   [{n.op}: {_formula(n)}]" if _formula(n) else ""
                step = {"t": f"Backward: {sym} = {num}{rule}", "e": [k], "f": [ids[id(i)]]}
                pending[id(i)] -= 1
                if pending[id(i)] == 0 and i is not out:
                    step["g"] = [ids[id(i)]]
                    step["t"] += f"  ⇒  {self.grad_text(i)}"
                steps.append(step)
        if self.new:
            steps.append({"t": f"Update (lr = {self.lr}): w_new = w − lr · d{self.loss}/dw: "
                               + "; ".join(self.update_text(g[k]) or "" for k in self.new),
                          "u": [ids[id(g[k])] for k in self.new],
                          "f": [ids[id(g[k])] for k in self.new]})
        return steps

    def edge(self, k: int) -> dict[str, Any]:
        i, n = self.edges[k]
        label = list(self.share(i, n)) if i.grad is not None else None
        return {"s": self.ids[id(i)], "d": self.ids[id(n)], "label": label}


def _inner_layout(members: Sequence[dict[str, Any]], preds: Mapping[str, Sequence[str]]
                  ) -> tuple[float, float]:
    """Place a group's members inside it (``ix``/``iy``); return the inner width, height."""
    pos = layered_layout([m["id"] for m in members], preds)
    cols: dict[int, list[dict[str, Any]]] = {}
    for m in members:
        cols.setdefault(pos[m["id"]][0], []).append(m)
    x = 0.0
    height = 0.0
    for c in sorted(cols):
        col = sorted(cols[c], key=lambda m: pos[m["id"]][1])
        for r, m in enumerate(col):
            m["ix"], m["iy"] = x, r * (_NODE_H + _GAP_Y)
        x += max(m["w"] for m in col) + _GAP_X * 0.6
        height = max(height, len(col) * (_NODE_H + _GAP_Y) - _GAP_Y)
    return x - _GAP_X * 0.6, height


def page_data(graph: GraphModel, *, learning_rate: float | None = 0.1,
              update: Iterable[str] | None = None, taps: Mapping[str, Any] | None = None,
              collapse: bool | None = None, max_nodes: int = 40) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (nodes, groups, edges, steps).

    Args:
        graph: the graph.
        learning_rate: the step size of the update shown last (``None``: no update).
        update: the inputs to update (default every input with a gradient).
        taps: node name -> gradient-tap record (a mapping or an object with ``norm``,
            ``max_abs``, ``nonfinite``, ``zero_fraction``, ``first_nonfinite``).
        collapse: open with layer/scope groups collapsed (``None``: only when the graph has
            more than ``max_nodes`` operations).
        max_nodes: the threshold for opening collapsed.

    Returns:
        The data as a dict.
    """
    b = _Builder(graph, learning_rate, update, taps)
    nodes = [b.node(n) for n in graph.all_nodes]
    by_id = {d["id"]: d for d in nodes}
    preds = {b.ids[id(n)]: [b.ids[id(i)] for i in n.inputs] for n in graph.all_nodes}
    groups = _groups(graph, b.ids, by_id, preds)
    collapsed = len(graph.nodes) > max_nodes if collapse is None else collapse
    top = [d["id"] for d in nodes if "group" not in d]
    top_preds = {}
    for gr in groups:
        gr["collapsed"] = bool(collapsed)
        for m in gr["members"]:
            top_preds.setdefault(gr["id"], []).extend(preds[m])
    rep = {m: gr["id"] for gr in groups for m in gr["members"]}
    order = list(dict.fromkeys(rep.get(d["id"], d["id"]) for d in nodes))
    for i in top:
        top_preds[i] = preds[i]
    top_preds = {k: list(dict.fromkeys(rep.get(p, p) for p in v if rep.get(p, p) != k))
                 for k, v in top_preds.items()}
    pos = layered_layout(order, top_preds)
    for item in (*(by_id[i] for i in top), *groups):
        item["col"], item["row"] = pos[item["id"]]
    return {"loss": graph.loss_name, "lr": learning_rate, "fn": graph.fn_name,
            "nodes": nodes, "groups": groups,
            "edges": [b.edge(k) for k in range(len(b.edges))], "steps": b.steps(),
            "geom": {"h": _NODE_H, "gapx": _GAP_X, "gapy": _GAP_Y, "head": _HEAD,
                     "pad": _PAD}}


def _groups(graph: GraphModel, ids: Mapping[int, str], by_id: Mapping[str, dict[str, Any]],
            preds: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The layer/scope groups of more than one op, with their members' inner layout."""
    if not any(n.scope or n.layer for n in graph.nodes):
        return []
    groups = []
    for k, gn in enumerate(n for n in graph.collapse().nodes if len(n.members) > 1):
        gid = f"g{k}"
        members = [by_id[ids[id(m)]] for m in gn.members]
        for m in members:
            m["group"] = gid
        inner_w, inner_h = _inner_layout(members, preds)
        exit_id = ids[id(gn.members[-1])]
        head = f"{gn.name} · {len(members)} ops"
        groups.append({"id": gid, "name": gn.name, "head": head, "op": gn.op,
                       "formula": gn.formula, "members": [m["id"] for m in members],
                       "exit": exit_id, "iw": inner_w + 2 * _PAD,
                       "ih": inner_h + _HEAD + 2 * _PAD,
                       "w": max(by_id[exit_id]["w"], _width(head, gn.op))})
    return groups


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("_html_assets", name).read_text("utf-8")


def to_html(graph: GraphModel, path: str | os.PathLike[str] | None = None, *,
            learning_rate: float | None = 0.1, taps: Mapping[str, Any] | None = None,
            title: str | None = None, update: Iterable[str] | None = None,
            collapse: bool | None = None, max_nodes: int = 40) -> str:
    """The graph as one self-contained HTML page with a step-through backprop player.

    Inline CSS, JavaScript and SVG only: the page makes no network request and needs no
    Graphviz. Buttons, the ← → keys and "play" step through the forward pass, the backward
    pass (the chain-rule product on each edge) and the update ``w − lr · dL/dw``; clicking
    a node shows its op, formula, shape, dtype, value, gradient and tap record; layer and
    scope groups collapse and expand.

    Args:
        graph: the graph (:func:`funcgrad.explain`).
        path: if given, also write the page to this file.
        learning_rate: the step size of the update shown last (``None``: no update step).
        taps: node name -> gradient-tap record (``norm``, ``max_abs``, ``nonfinite``,
            ``zero_fraction``, ``first_nonfinite``), shown in the node's panel.
        title: the page title (default from the function's name).
        update: the inputs to update (default every input with a gradient).
        collapse: open with groups collapsed (``None``: only above ``max_nodes`` ops).
        max_nodes: the threshold for opening collapsed.

    Returns:
        The HTML text.

    Examples:
        >>> from funcgrad.explain import lesson_graph
        >>> page = to_html(lesson_graph("backprop"), learning_rate=0.1)
        >>> "w_new = 3 − 0.1·16 = 1.4" in page
        True
    """
    data = page_data(graph, learning_rate=learning_rate, update=update, taps=taps,
                     collapse=collapse, max_nodes=max_nodes)
    title = title or f"Computational graph of {graph.fn_name}"
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    parts = {"{{TITLE}}": html.escape(title), "{{DATA}}": blob,
             "/*STYLE*/": _asset("style.css"), "/*SCRIPT*/": _asset("player.js")}
    page = _SLOTS.sub(lambda m: parts[m.group(0)], _asset("page.html"))
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def repr_html(graph: GraphModel, height: int = 560) -> str:
    """The page inside an ``<iframe srcdoc>``, for Jupyter's ``_repr_html_``.

    Args:
        graph: the graph.
        height: the frame's height in pixels.

    Returns:
        The HTML fragment.
    """
    doc = html.escape(to_html(graph), quote=True)
    return (f'<iframe srcdoc="{doc}" style="width:100%;height:{height}px;border:0" '
            'sandbox="allow-scripts"></iframe>')
