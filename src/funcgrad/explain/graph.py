""":class:`Graph`: the graph model with its text and DOT renderings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import dot, text
from .model import GraphModel

__all__ = ["Graph"]


class Graph(GraphModel):
    """A traced computation: nodes in topological order, each with a value and a gradient.

    Built by :func:`funcgrad.explain`. ``graph["w"]`` looks a node up by name.

    Attributes:
        all_nodes: every node (inputs, constants, operations) in topological order.
        output: the node whose value is the function's (scalar) result ``L``.
        fn_name: the traced function's name.
        loss_name: the name gradients are written against (``dL/dw``).
    """

    def table(self, learning_rate: float | None = None,
              update: Iterable[str] | None = None) -> str:
        """The node table: node, op, value, local derivative and ``dL/dnode``.

        Args:
            learning_rate: if given, add a column with ``w - learning_rate * dL/dw`` for the
                inputs.
            update: the inputs to update (default all inputs with a gradient).

        Returns:
            The table as text.
        """
        return text.table(self, learning_rate, update)

    def to_text(
        self,
        learning_rate: float | None = None,
        update: Iterable[str] | None = None,
        collapse: bool | None = None,
        max_nodes: int = 40,
        ascii: bool = False,  # noqa: A002
        title: str | None = None,
    ) -> str:
        """Draw the forward and backward passes in the lesson's style, then the node table.

        Forward arrows carry values (``x = 2 ──┐ ... ├─→ [mul] ──→ y = 6``); backward
        arrows carry gradients (``dL/dw = 16 ←──┘``). For scalar graphs the chain rule is
        written out node by node (``dL/dw = dL/dy × ∂y/∂w = 8 × 2 = 16``).

        Args:
            learning_rate: if given, also show the gradient-descent update
                ``w_new = w - learning_rate * dL/dw`` for the inputs.
            update: the inputs to update (default all inputs with a gradient).
            collapse: group nodes by layer or named scope (:meth:`collapse`); the default
                ``None`` collapses only graphs with more than ``max_nodes`` operations.
            max_nodes: the threshold for automatic collapsing.
            ascii: use plain ASCII instead of box-drawing characters (``∂`` becomes ``p``).
            title: a line to print first.

        Returns:
            The drawing and the table as one string.
        """
        return text.to_text(self, learning_rate, update, collapse, max_nodes, ascii, title)

    def __str__(self) -> str:
        return self.to_text()

    def to_dot(self, collapse: bool | None = False, backward: bool = True,
               max_nodes: int = 40) -> str:
        """Graphviz DOT text: one box per node with its value and gradient.

        Forward edges are labelled with the value that flows along them; with
        ``backward=True`` a dashed red edge runs back along every edge into a node that has
        a gradient, labelled with that gradient. No Graphviz installation is needed to make
        the text (only to draw it, see :meth:`render`).

        Args:
            collapse: group nodes by layer or scope (``None``: only above ``max_nodes``).
            backward: add the dashed gradient edges.
            max_nodes: the threshold for automatic collapsing.

        Returns:
            The DOT source.
        """
        return dot.to_dot(self, collapse, backward, max_nodes)

    def render(self, path: str | os.PathLike[str], format: str | None = None,  # noqa: A002
               collapse: bool | None = False) -> Path:
        """Write the graph as DOT, SVG, PNG or PDF, chosen by ``format`` or the suffix.

        ``.dot``/``.gv`` is written directly. The other formats run the Graphviz ``dot``
        program, which must be installed.

        Args:
            path: the output file.
            format: ``"dot"``, ``"svg"``, ``"png"`` or ``"pdf"``; default from the suffix.
            collapse: as in :meth:`to_dot`.

        Returns:
            The path written.

        Raises:
            GraphvizNotFoundError: for SVG/PNG/PDF when ``dot`` is not on ``PATH``.
            ValueError: for an unknown format.
        """
        return dot.render(self, path, format, collapse)

    def expand(self, node: str | None = None) -> Graph:
        """The graph again, with a summarised ``scan`` node unrolled into its iterations.

        ``explain`` unrolls every scan of at most ``unroll_limit`` iterations and shows a
        longer one as one ``scan`` node. ``expand("scan")`` runs :func:`funcgrad.explain`
        again with ``unroll_limit`` raised to that scan's length (so any other scan at most
        that long is unrolled too); ``expand()`` unrolls every scan node.

        Args:
            node: the ``scan`` node's name, or ``None`` for all of them.

        Returns:
            A new graph.

        Raises:
            ValueError: if ``node`` is not a ``scan`` node, or the graph was not built by
                :func:`funcgrad.explain` (a collapsed graph: expand before collapsing).
        """
        scans = [n for n in self.nodes if n.length is not None]
        if node is not None:
            scans = [self[node]]
            if scans[0].length is None:
                raise ValueError(f"expand: node {node!r} is not a scan node (op "
                                 f"{scans[0].op!r}); scan nodes: "
                                 f"{[n.name for n in self.nodes if n.length is not None]}")
        if self._rebuild is None or self.unroll_limit is None:
            raise ValueError("expand: this graph was not built by funcgrad.explain (a "
                             "collapsed graph?); call expand on explain's graph")
        limit = max([self.unroll_limit, *(n.length or 0 for n in scans)])
        return self._rebuild(limit)

    def to_html(self, path: str | os.PathLike[str] | None = None, **kw: Any) -> str:
        """One self-contained HTML page that steps through backprop.

        See :func:`funcgrad.explain.html.to_html` for the keywords (learning_rate, taps,
        title, update, collapse).

        Args:
            path: if given, also write the page there.
            **kw: keywords of :func:`funcgrad.explain.html.to_html`.

        Returns:
            The page.
        """
        from . import html
        return html.to_html(self, path, **kw)

    def _repr_html_(self) -> str:
        from . import html
        return html.repr_html(self)
