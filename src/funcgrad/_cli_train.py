"""``funcgrad train``: argument parsing and the run itself (printing lives here)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .nn import ACTIVATIONS, INITIALIZERS


def positive_float(flag: str):
    """argparse type: a finite float > 0, with an error that names the flag."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number; got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be > 0; got {text}")
        return value
    return parse


def positive_int(flag: str):
    """argparse type: an int >= 1, with an error that names the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer; got {text!r}") \
                from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1; got {text}")
        return value
    return parse


def momentum_float(text: str) -> float:
    """argparse type for --momentum: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--momentum must be a number; got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--momentum must be in [0, 1); got {text}")
    return value


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``sub``."""
    p = sub.add_parser(
        "train", help="train an MLP (default: the embedded 8x8 digits) with SGD and clipping",
        description="Train an MLP built from funcgrad primitives with optax SGD and gradient "
                    "clipping. Defaults train on the embedded UCI 8x8 digits.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="FILE.npz",
                   help="your own data: an .npz with arrays x (samples, features...) and integer "
                        "labels y (optional x_test, y_test); default: embedded digits")
    g.add_argument("--hidden", type=positive_int("--hidden"), default=512,
                   help="width of each hidden layer (default 512)")
    g.add_argument("--depth", type=positive_int("--depth"), default=1,
                   help="number of hidden layers (default 1)")
    g.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    g.add_argument("--init", choices=sorted(INITIALIZERS), default="he")
    g.add_argument("--init-scale", type=positive_float("--init-scale"), default=1.0,
                   help="gain of he/glorot, or std of normal (default 1)")
    g.add_argument("--residual", action="store_true", help="skip connections between "
                   "hidden layers of equal width")
    g.add_argument("--batch-norm", action="store_true", help="batch-normalise hidden layers")
    g.add_argument("--no-standardize", action="store_true",
                   help="feed raw features (default: standardise each feature with the "
                        "training set's mean and standard deviation)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive_float("--lr"), default=0.05,
                   help="learning rate (default 0.05)")
    g.add_argument("--momentum", type=momentum_float, default=0.9, help="default 0.9")
    g.add_argument("--clip-norm", type=positive_float("--clip-norm"), default=1.0,
                   help="clip_by_global_norm threshold (default 1.0)")
    g.add_argument("--no-clip-norm", action="store_true", help="disable global-norm clipping")
    g.add_argument("--clip-value", type=positive_float("--clip-value"), default=None,
                   help="clip every gradient element to [-v, v]")
    g.add_argument("--batch-size", type=positive_int("--batch-size"), default=32)
    g.add_argument("--epochs", type=positive_int("--epochs"), default=30)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps-per-dispatch", type=positive_int("--steps-per-dispatch"),
                   default=10, help="K: training steps fused into one dispatch with lax.scan")
    g.add_argument("--log-every", type=positive_int("--log-every"), default=50,
                   help="fetch metrics to the host every N steps")
    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--out", metavar="DIR", help="write metrics.jsonl, summary.json and "
                   "curves (PNG, with matplotlib) here")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="save orbax checkpoints here")
    g.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=200,
                   help="steps between checkpoints (default 200)")
    g.add_argument("--keep-checkpoints", type=positive_int("--keep-checkpoints"), default=3)
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in --checkpoint-dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--flow", action="store_true",
                   help="record per-layer gradient statistics every step, print vanishing/"
                        "exploding/dead flags when they fire, and with --out write "
                        "flow.json, flow_heatmap.png and flow_layers.png")
    g = p.add_argument_group("devices")
    g.add_argument("--platform", choices=["cpu", "gpu", "cuda", "rocm", "tpu"],
                   help="force a JAX backend (default: JAX's default)")
    g.add_argument("--data-parallel", action="store_true",
                   help="shard each batch over all devices, replicate the state")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host: address of process 0 (calls jax.distributed.initialize)")
    g.add_argument("--num-processes", type=positive_int("--num-processes"), default=None)
    g.add_argument("--process-id", type=int, default=None)
    p.set_defaults(func=run_train)
    return p


def _load(args: argparse.Namespace) -> Any:
    from . import data

    if args.data:
        return data.load_npz(args.data, seed=args.seed)
    return data.digits(seed=args.seed)


def _plot_curves(history: list[dict], evals: list[dict], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["step"] for h in history]
    ax1.plot(steps, [h["train_loss"] for h in history], label="train")
    ax2.plot(steps, [h["train_accuracy"] for h in history], label="train")
    if evals:
        ax1.plot([e["step"] for e in evals], [e["test_loss"] for e in evals], "o-",
                 label="test")
        ax2.plot([e["step"] for e in evals], [e["test_accuracy"] for e in evals], "o-",
                 label="test")
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax2.set(xlabel="step", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths = []
    for name, fig_ in (("curves.png", fig),):
        fig_.savefig(out / name, dpi=100)
        paths.append(str(out / name))
    plt.close(fig)
    return paths


class _Progress:
    """A rich progress bar on stderr, or nothing when rich is missing or disabled."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.task = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            transient=False)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, step: int, total: int, record: dict | None) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("train", total=total, info="")
        info = None
        if record is not None:
            info = (f"loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.3f}  "
                    f"|g| {record['grad_norm']:.3g}")
        self.bar.update(self.task, completed=step, **({"info": info} if info else {}))


def _print_summary(summary: dict[str, Any]) -> None:
    rows = [(k, summary[k]) for k in ("test_accuracy", "test_loss", "train_loss",
                                      "train_accuracy", "steps", "epochs", "skipped_steps",
                                      "steps_per_second", "wall_seconds", "devices")]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for k, v in rows:
            print(f"{k:>18}: {v}")
        return
    table = Table(title="funcgrad train: summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        table.add_row(k, str(v))
    Console().print(table)


def run_train(args: argparse.Namespace) -> int:
    """Run ``funcgrad train`` with parsed arguments; returns the exit status."""
    if args.platform:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.platform == "gpu" else args.platform
    import jax

    if args.platform:
        jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    from . import nn, parallel, train

    if args.coordinator or args.num_processes or args.process_id is not None:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise ValueError("--coordinator, --num-processes and --process-id must be given "
                             "together")
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    if args.checkpoint_dir and jax.process_count() > 1:
        raise ValueError("--checkpoint-dir is single-process for now; multi-host runs "
                         "(--coordinator) cannot checkpoint yet")
    is_main = jax.process_index() == 0  # only process 0 writes files

    ds = _load(args)
    x_train, x_test = ds.x_train, ds.x_test
    if not args.no_standardize:  # statistics of the training split only
        mu = x_train.mean(axis=0)
        sd = x_train.std(axis=0) + 0.1  # constant pixels (always 0) stay finite
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    mesh = parallel.local_mesh(jax.devices()) if args.data_parallel else None
    if mesh is not None:
        parallel.check_batch_size(args.batch_size, mesh, name="--batch-size")
    devices = parallel.describe_devices(mesh)
    print(f"funcgrad train: {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test "
          f"examples, {ds.x_train.shape[1]} features, {ds.num_classes} classes")
    print(f"devices: {', '.join(devices)}" + (" (data parallel)" if mesh is not None else ""))
    sizes = [ds.x_train.shape[1]] + [args.hidden] * args.depth + [ds.num_classes]
    params = nn.init_mlp(jax.random.PRNGKey(args.seed), sizes, activation=args.activation,
                         init=args.init, scale=args.init_scale, residual=args.residual,
                         batch_norm=args.batch_norm)
    tx = train.optimizer(args.lr, momentum=args.momentum,
                         clip_norm=None if args.no_clip_norm else args.clip_norm,
                         clip_value=args.clip_value)

    def apply_fn(p: Any, x: Any) -> Any:
        return nn.mlp(p, x, activation=args.activation, residual=args.residual)

    out = Path(args.out) if args.out and is_main else None
    metrics_file = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        metrics_file = open(out / "metrics.jsonl", "w")  # noqa: SIM115 - closed below

    def on_log(record: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    flow_history = None
    if args.flow:
        from ._cli_flow import train_history

        flow_history = train_history(args.log_every, apply_fn, echo=is_main)
    checkpoints = None
    if args.checkpoint_dir:
        from .checkpoint import CheckpointManager

        checkpoints = CheckpointManager(args.checkpoint_dir, keep=args.keep_checkpoints,
                                        every=args.checkpoint_every)
    try:
        with _Progress(not args.no_progress and sys.stderr.isatty() or
                       os.environ.get("FUNCGRAD_PROGRESS") == "1") as bar:
            result = train.fit(
                params, (x_train, ds.y_train), apply_fn=apply_fn, tx=tx,
                batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                steps_per_dispatch=args.steps_per_dispatch, log_every=args.log_every,
                eval_data=(x_test, ds.y_test), checkpoints=checkpoints,
                resume=args.resume, mesh=mesh, progress=bar, on_log=on_log,
                flow=flow_history)
    finally:
        if metrics_file is not None:
            metrics_file.close()
        if checkpoints is not None:
            checkpoints.close()
    if result.resumed_from is not None:
        print(f"resumed from checkpoint at step {result.resumed_from}")
    last = result.history[-1] if result.history else {}
    final = result.evals[-1] if result.evals else {}
    steps = int(jax.device_get(result.state.step))
    summary = {
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "steps": steps,
        "epochs": args.epochs,
        "skipped_steps": int(jax.device_get(result.state.skipped)),
        "wall_seconds": result.wall_seconds,
        "steps_per_second": steps / result.wall_seconds if result.wall_seconds else None,
        "devices": devices,
        "dataset": ds.name,
        "config": {k: v for k, v in vars(args).items() if k != "func"},
    }
    if flow_history is not None:
        from ._cli_flow import finish_train_history

        summary["flow"] = finish_train_history(flow_history, out)
    _print_summary(summary)
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        pngs = _plot_curves(result.history, result.evals, out)
        print(f"wrote {out / 'metrics.jsonl'}, {out / 'summary.json'}"
              + (f", {', '.join(pngs)}" if pngs else " (install matplotlib for PNG curves)"))
    return 0
