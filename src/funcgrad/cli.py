"""The ``funcgrad`` command line: the only module that prints.

Subcommands:
    train    train an MLP on the embedded digits (or your .npz) with SGD and clipping.
    check    run the rule checker over every registered primitive.
    explain  draw one of the lesson's worked examples as a graph with values and gradients.
    flow     measure vanishing and exploding gradients (the lesson's experiments).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ._text import text_table

__all__ = ["main"]


def _fmt_bytes(count_bytes: tuple[int, int]) -> str:
    n, b = count_bytes
    return f"{n} / {b} B"


def _cmd_check(args: argparse.Namespace) -> int:
    from .testing import check_registry

    t0 = time.perf_counter()
    reports = check_registry(args.primitive or None, all_shapes=not args.quick,
                             second_order=not args.no_second_order, seed=args.seed)
    rows = []
    for r in reports:
        rows.append([
            r.name,
            r.formula if len(r.formula) <= 48 else r.formula[:45] + "...",
            _fmt_bytes(r.rule_residuals),
            _fmt_bytes(r.autodiff_residuals),
            f"{r.max_abs_err_f32:.1e}",
            f"{r.max_abs_err_f64:.1e}",
            "PASS" if r.ok else "FAIL",
        ])
    print(text_table(rows, ["primitive", "derivative", "saved (rule)", "saved (jax autodiff)",
                        "max err f32", "max err f64", "status"]))
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"\n{r.name} FAILED:")
        for f in r.failures:
            print("  " + f.replace("\n", "\n  "))
    elapsed = time.perf_counter() - t0
    print(f"\n{len(reports) - len(failed)} passed, {len(failed)} failed "
          f"({elapsed:.1f} s; saved = residual count / bytes at the first sample shape)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([r.__dict__ for r in reports], fh, indent=2, default=list)
    return 1 if failed else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .graph import LESSON_EXAMPLES, lesson_graph

    example = LESSON_EXAMPLES[args.example]
    graph = lesson_graph(args.example)
    lr = example.learning_rate if args.learning_rate is None else args.learning_rate
    update = example.update if args.learning_rate is None else None
    if args.out:
        path = graph.render(args.out)
        print(f"wrote {path}")
        return 0
    if args.format == "dot":
        print(graph.to_dot(), end="")
        return 0
    print(graph.to_text(learning_rate=lr, update=update, ascii=args.ascii,
                        title=f"funcgrad explain --example {args.example}: {example.title}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for the ``funcgrad`` command."""
    parser = argparse.ArgumentParser(
        prog="funcgrad",
        description="funcgrad: hand-written custom VJP rules for JAX, checked, explained "
                    "and trained.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every primitive's VJP rule against jax.grad of "
                                     "its reference and finite differences")
    p.add_argument("--primitive", action="append", metavar="NAME",
                   help="check only this primitive (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="float32 at the first sample shape only")
    p.add_argument("--no-second-order", action="store_true", help="skip grad-of-grad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("explain", help="show one of the lesson's worked examples as a "
                                       "computational graph with values and gradients")
    p.add_argument("--example", choices=["backprop", "graph", "pytorch", "chain"],
                   default="backprop",
                   help="backprop: the step-by-step example (default); graph: z = (x + y) * w; "
                        "pytorch: the PyTorch snippet; chain: the chain rule")
    p.add_argument("--format", choices=["text", "dot"], default="text",
                   help="print the diagram and table (text) or Graphviz DOT (dot)")
    p.add_argument("--out", metavar="FILE",
                   help="write the graph to FILE: .dot (DOT text), .svg, .png or .pdf (these "
                        "need the Graphviz 'dot' program)")
    p.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                   help="also show the update w - LR * dL/dw for every input (the backprop "
                        "example shows LR = 0.1 for w by default)")
    p.add_argument("--ascii", action="store_true", help="plain ASCII instead of box drawing")
    p.set_defaults(func=_cmd_explain)

    from ._cli_train import add_train_parser

    add_train_parser(sub)

    from ._cli_flow import add_flow_parser

    add_flow_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``funcgrad`` command line.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        print(f"funcgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
