"""Computational graphs with a value and a gradient on every node: the lesson's diagrams.

``funcgrad.explain(fn, *args)`` traces a scalar-valued function, runs it forward and
backward, and returns a :class:`Graph`. Each funcgrad primitive call (``funcgrad.mul``,
``funcgrad.dense``, ...) is one node; any other JAX operation (``jnp.sin``, ``x @ w``) is a
node of its own. Each node records its op, its input edges, its output value, the local
derivative's formula (from :data:`funcgrad.registry.PRIMITIVES`) and ``dL/dnode``, the
gradient of the output with respect to that node.

``funcgrad.explain`` is this package *and* the function: the package is callable, so
``funcgrad.explain(fn, *args)`` calls :func:`funcgrad.explain.explain`, while
``funcgrad.explain.lesson_graph``, ``funcgrad.explain.Graph`` and the other names below are
its contents.

The package, by concern:

* :mod:`.build` -- :func:`explain` itself: trace, evaluate, build the graph;
* :mod:`.tracing` -- the two visitors on the one jaxpr walker (:mod:`funcgrad._jaxpr`);
* :mod:`.model`, :mod:`.graph` -- :class:`Node` and :class:`Graph`;
* :mod:`.text`, :mod:`.dot` -- the text and Graphviz renderings; :mod:`.values` --
  number and array formatting; :mod:`.formulas` -- local derivatives of plain JAX ops;
* :mod:`.nonfinite` -- :func:`find_nonfinite`, on :mod:`.replay` (forward and backward
  replay on the walker) and :mod:`.causes` (the table of diagnoses); :mod:`.lesson` -- the
  lesson's examples; :mod:`.html` -- the step-through HTML page.

A ``lax.scan`` of up to ``unroll_limit`` (16) iterations is drawn one node per iteration
(``h[t]`` for the carry); a longer one is one ``scan`` node that :meth:`Graph.expand`
unrolls.

Examples:
    >>> import funcgrad as fg
    >>> g = fg.explain(lambda x, w, target: fg.squared_error(fg.mul(x, w), target),
    ...                2.0, 3.0, 2.0, names={"mul": "y"})
    >>> [(n.name, n.op, float(n.value), float(n.grad)) for n in g.nodes]
    [('y', 'mul', 6.0, 8.0), ('L', 'squared_error', 16.0, 1.0)]
    >>> float(g["w"].grad), float(g["x"].grad)
    (16.0, 24.0)
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .build import explain
from .dot import GraphvizNotFoundError
from .graph import Graph
from .lesson import LESSON_EXAMPLES, LessonExample, lesson_graph, lesson_html
from .model import Node
from .nonfinite import NonFinite, find_nonfinite
from .values import summarize

__all__ = [
    "LESSON_EXAMPLES",
    "Graph",
    "GraphvizNotFoundError",
    "LessonExample",
    "Node",
    "NonFinite",
    "explain",
    "find_nonfinite",
    "lesson_graph",
    "lesson_html",
    "summarize",
]


class _CallableModule(types.ModuleType):
    """The ``funcgrad.explain`` package, callable as the :func:`explain` function."""

    def __call__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        names: Mapping[str | int, str] | Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> Graph:
        """Call :func:`funcgrad.explain.explain`: ``funcgrad.explain(fn, *args)``."""
        return explain(fn, *args, names=names, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
