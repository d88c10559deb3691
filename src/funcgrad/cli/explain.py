"""``funcgrad explain``: one of the lesson's worked examples as a graph."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._args import EXAMPLES, finite_float

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``explain`` subcommand.

    Args:
        subparsers: the ``add_subparsers()`` object of the ``funcgrad`` parser.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser("explain", help="show one of the lesson's worked examples as a "
                                              "computational graph with values and gradients")
    p.add_argument("--example", choices=EXAMPLES, default="backprop",
                   help="backprop: the step-by-step example (default); graph: z = (x + y) * w; "
                        "pytorch: the PyTorch snippet; chain: the chain rule")
    p.add_argument("--format", choices=["text", "dot"], default="text",
                   help="print the diagram and table (text, the default) or Graphviz DOT (dot)")
    p.add_argument("--out", metavar="FILE",
                   help="write the graph to FILE: .dot (DOT text), .svg, .png or .pdf (these "
                        "need the Graphviz 'dot' program)")
    p.add_argument("--html", metavar="FILE",
                   help="write one self-contained HTML page that steps through the forward "
                        "pass, backprop and the update (no network, no Graphviz); open it in "
                        "any browser")
    p.add_argument("--learning-rate", type=finite_float("--learning-rate"), default=None,
                   metavar="LR",
                   help="also show the update w - LR * dL/dw for every input (the backprop "
                        "example shows LR = 0.1 for w by default)")
    p.add_argument("--ascii", action="store_true", help="plain ASCII instead of box drawing")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``funcgrad explain`` with parsed arguments.

    Args:
        args: the parsed arguments.

    Returns:
        The exit status.
    """
    from ..explain import LESSON_EXAMPLES, lesson_graph

    example = LESSON_EXAMPLES[args.example]
    graph = lesson_graph(args.example)
    lr = example.learning_rate if args.learning_rate is None else args.learning_rate
    update = example.update if args.learning_rate is None else None
    if args.html:
        if Path(args.html).is_dir():
            raise ValueError(f"--html must be a file; got {args.html!r}, a directory")
        try:
            graph.to_html(args.html, learning_rate=lr, update=update,
                          title=f"funcgrad: {example.title}")
        except OSError as exc:
            raise ValueError(f"--html: cannot write {args.html!r}: "
                             f"{exc.strerror or exc}") from None
        print(f"wrote {args.html}: open it in a browser, then step with the arrow keys")
        return 0
    if args.out:
        print(f"wrote {graph.render(args.out)}")
        return 0
    if args.format == "dot":
        print(graph.to_dot(), end="")
        return 0
    print(graph.to_text(learning_rate=lr, update=update, ascii=args.ascii,
                        title=f"funcgrad explain --example {args.example}: {example.title}"))
    return 0
