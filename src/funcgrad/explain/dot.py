"""Graphviz rendering: DOT text (no Graphviz needed) and SVG/PNG/PDF through ``dot``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .model import GraphModel, Node
from .text import edge_label
from .values import short, summarize

__all__ = ["GraphvizNotFoundError", "dot_id", "render", "to_dot"]

_DOT_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}


class GraphvizNotFoundError(FileNotFoundError):
    """Raised by :meth:`Graph.render` when the Graphviz ``dot`` program is not installed."""


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def dot_id(s: str) -> str:
    """A DOT identifier: bare when safe, quoted otherwise (DOT keywords are case-blind).

    Args:
        s: the name.

    Returns:
        The identifier.

    Examples:
        >>> dot_id("loss"), dot_id("graph"), dot_id("Node")
        ('loss', '"graph"', '"Node"')
    """
    if s.isidentifier() and s.isascii() and s.lower() not in _DOT_KEYWORDS:
        return s
    return '"' + _escape(s) + '"'


def _node_line(g: GraphModel, n: Node, nid: str) -> str:
    if n.kind == "input":
        head, shape, style = f"{n.name} (input)", "ellipse", ""
    elif n.kind == "const":
        head, shape, style = f"{n.name} (constant)", "ellipse", ', style="dashed"'
    else:
        head = f"{n.name} = {n.op}({', '.join(n.input_names)})"
        shape = "box"
        style = ', style="rounded,filled", fillcolor="#eef3fb"' if n.primitive else \
            ', style="rounded"'
    rows = [head, f"value = {summarize(n.value)}", f"{g._dname(n)} = {summarize(n.grad)}"]
    if n.formula and n.kind != "group":
        rows.append(f"local: {n.formula}")
    elif n.kind == "group":
        rows.append(f"{len(n.members)} ops")
    label = "\\n".join(_escape(r) for r in rows)
    return f'  {nid} [shape={shape}{style}, label="{label}"];'


def to_dot(graph: GraphModel, collapse: bool | None = False, backward: bool = True,
           max_nodes: int = 40) -> str:
    """Graphviz DOT text; see :meth:`funcgrad.explain.Graph.to_dot`.

    Args:
        graph: the graph.
        collapse: group nodes by layer or scope (``None``: only above ``max_nodes``).
        backward: add the dashed gradient edges.
        max_nodes: the threshold for automatic collapsing.

    Returns:
        The DOT source.
    """
    g, _ = graph._maybe_collapse(collapse, max_nodes)
    ids = {id(n): f"n{k}" for k, n in enumerate(g.all_nodes)}
    out = [f"digraph {dot_id(graph.fn_name)} {{", "  rankdir=LR;",
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    out += [_node_line(g, n, ids[id(n)]) for n in g.all_nodes]
    for n in g.all_nodes:
        for i in n.inputs:
            out.append(f'  {ids[id(i)]} -> {ids[id(n)]} [label="{_escape(short(i.value))}"];')
    if backward:
        for n in g.all_nodes:
            for i in n.inputs:
                if i.grad is None:
                    continue
                label = _escape(edge_label(g, i, n))
                out.append(f'  {ids[id(n)]} -> {ids[id(i)]} [style=dashed, '
                           f'color="#c0392b", fontcolor="#c0392b", constraint=false, '
                           f'label="{label}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def render(graph: GraphModel, path: str | os.PathLike[str], format: str | None = None,  # noqa: A002
           collapse: bool | None = False) -> Path:
    """Write the graph as DOT, SVG, PNG or PDF; see :meth:`funcgrad.explain.Graph.render`.

    Args:
        graph: the graph.
        path: the output file.
        format: ``"dot"``, ``"svg"``, ``"png"`` or ``"pdf"``; default from the suffix.
        collapse: as in :func:`to_dot`.

    Returns:
        The path written.

    Raises:
        GraphvizNotFoundError: for SVG/PNG/PDF when ``dot`` is not on ``PATH``.
        ValueError: for an unknown format.
        RuntimeError: when ``dot`` fails.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt in ("gv",):
        fmt = "dot"
    if fmt not in ("dot", "svg", "png", "pdf"):
        raise ValueError(f"render: unknown format {fmt!r} for {str(path)!r}; use a .dot, "
                         ".svg, .png or .pdf file name (or format=...)")
    text = to_dot(graph, collapse=collapse)
    if fmt == "dot":
        path.write_text(text, encoding="utf-8")
        return path
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            f"writing {fmt.upper()} ({str(path)!r}) needs the Graphviz 'dot' program, which "
            "is not installed (not found on PATH). Install Graphviz: 'apt-get install "
            "graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or 'conda install "
            "-c conda-forge graphviz'; or write DOT text instead (a .dot file, "
            "Graph.to_dot()) and render it elsewhere.")
    proc = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text.encode("utf-8"),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"render: dot failed with exit code {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    return path
