"""The lesson's worked examples, ready for :func:`funcgrad.explain`.

Examples:
    >>> sorted(LESSON_EXAMPLES)
    ['backprop', 'chain', 'graph', 'pytorch']
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from .build import explain
from .graph import Graph

__all__ = ["LESSON_EXAMPLES", "LessonExample", "lesson_graph", "lesson_html"]


@dataclasses.dataclass(frozen=True)
class LessonExample:
    """One of the lesson's worked examples, ready for :func:`explain`.

    Attributes:
        title: what the example shows.
        fn: the function.
        args: its arguments.
        names: readable names for the intermediate nodes.
        learning_rate: the step size of the update shown, or ``None``.
        update: the inputs the update is shown for.
    """

    title: str
    fn: Callable[..., Any]
    args: tuple[float, ...]
    names: Mapping[str, str]
    learning_rate: float | None = None
    update: tuple[str, ...] | None = None


def _lesson_graph_fn(x: Any, y: Any, w: Any) -> Any:
    from .. import primitives as fg

    return fg.mul(fg.add(x, y), w)


def _lesson_backprop_fn(x: Any, w: Any, target: Any) -> Any:
    from .. import primitives as fg

    return fg.squared_error(fg.mul(x, w), target)


def _lesson_pytorch_fn(x: Any, w: Any) -> Any:
    from .. import primitives as fg

    y = fg.mul(x, w)
    return fg.square(fg.sub(y, 4.0))


def _lesson_chain_fn(x: Any) -> Any:
    from .. import primitives as fg

    return fg.sigmoid(fg.square(x))


#: The lesson's worked examples, by the names ``funcgrad explain --example`` accepts.
LESSON_EXAMPLES: Mapping[str, LessonExample] = {
    "backprop": LessonExample(
        "the lesson's step-by-step example: y = x × w, L = (y - target)², then one "
        "gradient-descent step", _lesson_backprop_fn, (2.0, 3.0, 2.0), {"mul": "y"},
        learning_rate=0.1, update=("w",)),
    "graph": LessonExample(
        "the lesson's first computational graph: z = (x + y) × w", _lesson_graph_fn,
        (2.0, 3.0, 4.0), {"add": "s", "mul": "z"}),
    "pytorch": LessonExample(
        "the lesson's PyTorch snippet: y = x × w, loss = (y - 4)²", _lesson_pytorch_fn,
        (2.0, 3.0), {"mul": "y", "sub": "r", "square": "loss"}),
    "chain": LessonExample(
        "the chain rule: y = x², z = sigmoid(y), dz/dx = dz/dy × dy/dx", _lesson_chain_fn,
        (1.0,), {"square": "y", "sigmoid": "z"}),
}


def lesson_graph(example: str = "backprop") -> Graph:
    """Explain one of the lesson's worked examples (see :data:`LESSON_EXAMPLES`).

    Args:
        example: ``"backprop"`` (default), ``"graph"``, ``"pytorch"`` or ``"chain"``.

    Returns:
        The example's :class:`Graph`.

    Raises:
        ValueError: for an unknown example name.

    Examples:
        >>> g = lesson_graph("backprop")
        >>> [float(g[n].value) for n in ("y", "L")], float(g["w"].grad), float(g["x"].grad)
        ([6.0, 16.0], 16.0, 24.0)
    """
    try:
        ex = LESSON_EXAMPLES[example]
    except KeyError:
        raise ValueError(f"lesson_graph: argument 'example' must be one of "
                         f"{sorted(LESSON_EXAMPLES)}; got {example!r}") from None
    g = explain(ex.fn, *ex.args, names=ex.names)
    g.fn_name = ex.fn.__name__.removeprefix("_lesson_").removesuffix("_fn")
    return g


def lesson_html(example: str = "backprop", path: str | os.PathLike[str] | None = None
                ) -> str:
    """The page of one of the lesson's worked examples, with the lesson's update step.

    Args:
        example: a name from :data:`funcgrad.explain.LESSON_EXAMPLES` (default
            ``"backprop"``: ``L = (x·w − target)²`` at x=2, w=3, target=2).
        path: if given, also write the page to this file.

    Returns:
        The HTML text.

    Raises:
        ValueError: for an unknown example name.

    Examples:
        >>> "w_new = 3 − 0.1·16 = 1.4" in lesson_html("backprop")
        True
    """
    graph = lesson_graph(example)  # raises the clear error for an unknown name
    ex = LESSON_EXAMPLES[example]
    return graph.to_html(path, learning_rate=ex.learning_rate, update=ex.update,
                   title=f"funcgrad: {ex.title}")
