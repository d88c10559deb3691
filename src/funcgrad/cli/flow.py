"""``funcgrad flow``: the lesson's vanishing and exploding gradient experiments, and the
live flags of ``funcgrad train --flow``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ._args import positive_int, seed_int

__all__ = ["QUICK", "add_parser", "finish_train_history", "run", "train_history"]

#: ``--quick``: a smoke run for tests; too shallow and short to show the effects.
QUICK = {"depth": 6, "width": 16, "steps": 20, "batch_size": 32}


def train_history(log_every: int, apply_fn: Any, echo: bool = True) -> Any:
    """The funcgrad.flow.History of ``funcgrad train --flow``: it prints flags when they fire.

    At every fetch the fetched steps are diagnosed and their flags united: a one-step
    explosion between fetches still shows, and a layer hovering at a threshold does not
    print a line per step. A line is printed only when some flag fires and the flags differ
    from the last ones printed.

    Args:
        log_every: fetch to the host every this many steps.
        apply_fn: the model, for saturation statistics.
        echo: print the flags (process 0 of a multi-host run only).

    Returns:
        A ``funcgrad.flow.History``.
    """
    from .. import flow

    shown = {"flags": ""}

    def on_fetch(records: list[dict]) -> None:
        found = [flow.diagnose(r) for r in records]
        union = flow.Diagnosis(found[0].names, tuple(
            frozenset().union(*layer) for layer in zip(*(d.flags for d in found),
                                                       strict=True)))
        text = union.short() if union.any else ""
        if text and text != shown["flags"] and echo:
            print(f"flow: steps {records[0]['step']}-{records[-1]['step']}: {union}")
        if text:
            shown["flags"] = text

    return flow.History(log_every=log_every, apply_fn=apply_fn, on_fetch=on_fetch)


def finish_train_history(history: Any, out: Path | None) -> dict[str, Any]:
    """Final flags of a ``funcgrad train --flow`` run; flow.json and the plots in ``out``.

    Args:
        history: the History from :func:`train_history`.
        out: the output directory, or ``None``.

    Returns:
        ``{"final_flags", "records"}`` and, with ``out``, the ``files`` written.
    """
    from .. import flow

    history.fetch()
    last = history.records[-1] if history.records else None
    final = flow.diagnose(last).to_dict() if last is not None else {}
    result: dict[str, Any] = {"final_flags": final, "records": len(history.records)}
    if out is not None and last is not None:
        (out / "flow.json").write_text(json.dumps(flow.to_jsonable(
            {"final_flags": final, "thresholds": flow.DEFAULT_THRESHOLDS,
             "history": history.to_dict()}, digits=None), allow_nan=False))
        try:
            pngs = flow.plot(history, out / "flow", title="gradient flow")
        except ImportError:
            pngs = []
        result["files"] = [str(out / "flow.json"), *map(str, pngs)]
        print(f"wrote {', '.join(result['files'])}")
    return result


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``flow`` subcommand.

    Args:
        subparsers: the ``add_subparsers()`` object of the ``funcgrad`` parser.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser(
        "flow", help="measure vanishing and exploding gradients: the lesson's experiments",
        description="Train deep MLPs on the embedded digits with plain SGD and measure the "
                    "gradient norm of every layer: the vanishing-gradient experiment (sigmoid, "
                    "tanh, relu/He, residual, batch norm) and the exploding-gradient "
                    "experiment (large init gain; clipping, a lower learning rate and a proper "
                    "init as cures). Prints the tables; --out writes flow.json and PNG plots.")
    p.add_argument("--experiment", choices=["both", "vanishing", "exploding"], default="both",
                   help="which experiment to run (default %(default)s)")
    p.add_argument("--out", metavar="DIR",
                   help="write flow.json (every configuration's per-layer statistics and "
                        "flags) and the plots flow_vanishing_*.png, flow_exploding_*.png")
    p.add_argument("--depth", type=positive_int("--depth"), default=20,
                   help="dense layers per network (default %(default)s)")
    p.add_argument("--width", type=positive_int("--width"), default=32,
                   help="hidden width (default %(default)s)")
    p.add_argument("--steps", type=positive_int("--steps"), default=300,
                   help="plain SGD steps per network (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64,
                   help="examples per SGD step (default %(default)s)")
    p.add_argument("--seed", type=seed_int(), default=0,
                   help="seed of the initialisation and the batches (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run for tests (depth 6, width 16, 20 steps, batch 32): too "
                        "shallow and short to reproduce the lesson's effects")
    return p


def _check_out(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory; got {str(out)!r}, an existing file")


def _header(settings: dict[str, Any], quick: bool, thresholds: dict[str, float]) -> str:
    th = thresholds
    return (
        f"funcgrad flow: {settings['depth']}-layer MLPs ({settings['depth'] - 1} hidden "
        f"layers of {settings['width']}) on the digits, {settings['steps']} plain SGD steps "
        f"of batch {settings['batch_size']}, seed {settings['seed']}"
        + ("  [--quick: smoke run, too small to show the effects]" if quick else "")
        + f"\nflags: vanishing if |g| < {th['vanishing_ratio']:g} x the largest layer's or < "
        f"{th['vanishing_norm']:g}; exploding if |g| > {th['exploding_norm']:g}, non-finite, "
        f"or |update|/|param| > {th['exploding_update_ratio']:g}; dead if > "
        f"{th['dead_fraction']:.0%} of the gradient is exactly 0. g0/gL = first layer's "
        "gradient norm / last layer's; sat = mean share of saturated sigmoid/tanh units.")


def run(args: argparse.Namespace) -> int:
    """Run ``funcgrad flow`` with parsed arguments.

    Args:
        args: the parsed arguments.

    Returns:
        The exit status.
    """
    from .. import experiments, flow

    t0 = time.perf_counter()
    settings: dict[str, Any] = {"depth": args.depth, "width": args.width, "steps": args.steps,
                                "batch_size": args.batch_size, "seed": args.seed}
    if args.quick:
        settings.update(QUICK)
    if settings["depth"] < 2:
        raise ValueError(f"--depth must be >= 2; got {settings['depth']}")
    out = Path(args.out) if args.out else None
    _check_out(out)  # before the run, not after it
    print(_header(settings, args.quick, flow.DEFAULT_THRESHOLDS))
    report: dict[str, Any] = {"settings": settings, "thresholds": dict(flow.DEFAULT_THRESHOLDS)}
    pngs: list[str] = []
    for name in ("vanishing", "exploding"):
        if args.experiment not in ("both", name):
            continue
        t = time.perf_counter()
        results = getattr(experiments, f"{name}_experiment")(**settings)
        print(f"\n{name} gradients ({time.perf_counter() - t:.1f} s; probe = fixed batch of "
              f"{results[0].settings['probe_size']} training examples)")
        print(getattr(experiments, f"format_{name}_table")(results))
        report[name] = [r.to_dict() for r in results]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            try:
                pngs += map(str, flow.plot({r.config.name: r.history for r in results},
                                           out / f"flow_{name}", title=f"{name} gradients"))
            except ImportError:
                pass
    report["wall_seconds"] = wall = time.perf_counter() - t0
    if out is not None:
        (out / "flow.json").write_text(json.dumps(flow.to_jsonable(report, digits=None),
                                                  allow_nan=False))
        print(f"\nwrote {out / 'flow.json'}"
              + (f", {', '.join(pngs)}" if pngs else " (install matplotlib for the plots)"))
    print(f"\nwall time {wall:.1f} s")
    return 0
