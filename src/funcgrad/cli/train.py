"""``funcgrad train``: argument parsing and the run itself (printing lives here)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ._args import ACTIVATIONS, INITIALIZERS, momentum_float, positive_float, positive_int, seed_int
from ._report import MetricsLog, Progress, plot_curves, print_summary, progress_mode, strict_json

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand.

    Args:
        subparsers: the ``add_subparsers()`` object of the ``funcgrad`` parser.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser(
        "train", help="train an MLP (default: the embedded 8x8 digits) with SGD and clipping",
        description="Train an MLP built from funcgrad primitives with optax SGD and gradient "
                    "clipping. Defaults train on the embedded UCI 8x8 digits.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="FILE.npz",
                   help="your own data: an .npz with arrays x (samples, features...) and integer "
                        "labels y (optional x_test, y_test); default: embedded digits")
    g.add_argument("--hidden", type=positive_int("--hidden"), default=512,
                   help="width of each hidden layer (default %(default)s)")
    g.add_argument("--depth", type=positive_int("--depth"), default=1,
                   help="number of hidden layers (default %(default)s)")
    g.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden-layer activation (default %(default)s)")
    g.add_argument("--init", choices=INITIALIZERS, default="he",
                   help="weight initialiser: he (relu), glorot (tanh, sigmoid) or a plain "
                        "normal (default %(default)s)")
    g.add_argument("--init-scale", type=positive_float("--init-scale"), default=1.0,
                   help="gain of he/glorot, or std of normal (default 1)")
    g.add_argument("--residual", action="store_true", help="skip connections between "
                   "hidden layers of equal width")
    g.add_argument("--batch-norm", action="store_true", help="batch-normalise hidden layers")
    g.add_argument("--no-standardize", action="store_true",
                   help="feed raw features (default: standardise each feature with the "
                        "training set's mean and standard deviation)")
    _add_optimisation_args(p.add_argument_group("optimisation"))
    _add_output_args(p.add_argument_group("output and checkpoints"))
    _add_device_args(p.add_argument_group("devices"))
    return p


def _add_optimisation_args(g: Any) -> None:
    g.add_argument("--lr", type=positive_float("--lr"), default=0.05,
                   help="learning rate (default %(default)s)")
    g.add_argument("--momentum", type=momentum_float, default=0.9,
                   help="heavy-ball momentum in [0, 1) (default %(default)s)")
    g.add_argument("--clip-norm", type=positive_float("--clip-norm"), default=1.0,
                   help="clip_by_global_norm threshold (default %(default)s)")
    g.add_argument("--no-clip-norm", action="store_true", help="disable global-norm clipping")
    g.add_argument("--clip-value", type=positive_float("--clip-value"), default=None,
                   help="clip every gradient element to [-v, v]")
    g.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule after the warmup: constant --lr, or cosine "
                        "decay from --lr to 0 at the last step (default %(default)s)")
    g.add_argument("--warmup-steps", type=seed_int("--warmup-steps"), default=0,
                   help="steps of linear warmup from 0 to --lr (default %(default)s)")
    g.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32",
                   help="compute dtype of the forward and backward passes; parameters and "
                        "the optimizer stay float32; f16 adds dynamic loss scaling "
                        "(default %(default)s)")
    g.add_argument("--batch-size", type=positive_int("--batch-size"), default=32,
                   help="examples per step; a partial last batch is padded "
                        "(default %(default)s)")
    g.add_argument("--epochs", type=positive_int("--epochs"), default=30,
                   help="passes over the training set (default %(default)s)")
    g.add_argument("--seed", type=seed_int(), default=0,
                   help="seed of the split, the initialisation and the shuffling, in "
                        "[0, 2**32 - 1] (default %(default)s)")
    g.add_argument("--steps-per-dispatch", type=positive_int("--steps-per-dispatch"),
                   default=None, help="K: training steps fused into one compiled program "
                                      "(lax.scan), never crossing an epoch's end when "
                                      "smaller than an epoch (default: whole epochs, "
                                      "--epochs-per-dispatch of them)")
    g.add_argument("--epochs-per-dispatch", type=positive_int("--epochs-per-dispatch"),
                   default=1, help="whole epochs per compiled program when "
                                   "--steps-per-dispatch is not given (default %(default)s)")
    g.add_argument("--device-data-mib", type=_mib, default=None,
                   help="training data up to this many MiB lives on the device and is "
                        "shuffled there; more streams from the host; 0: always stream "
                        "(default: 256 on CPU, a quarter of an accelerator's memory)")
    g.add_argument("--log-every", type=positive_int("--log-every"), default=50,
                   help="fetch metrics to the host every N steps (default %(default)s)")
    g.add_argument("--on-nonfinite", choices=["skip", "stop"], default="skip",
                   help="a step whose loss or gradient is not finite leaves the parameters "
                        "unchanged and is reported (nonfinite.json with --out); then skip "
                        "it and go on, or stop with exit status 3 (default %(default)s)")
    g.add_argument("--max-skips", type=positive_int("--max-skips"), default=100,
                   help="stop with exit status 3 once N consecutive steps were not finite "
                        "(default %(default)s)")


def _mib(text: str) -> float:
    """``--device-data-mib``: a number of MiB >= 0 (argparse names the flag otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--device-data-mib must be a number >= 0; got "
                                         f"{text!r}")
    return value


def _add_output_args(g: Any) -> None:
    g.add_argument("--out", metavar="DIR", help="write metrics.jsonl, summary.json and "
                   "curves (PNG, with matplotlib) here")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard events here every --log-every steps: loss, "
                        "accuracy, gradient norms (global, clipped, per layer), update norm, "
                        "skipped steps, per-layer gradient histograms (binned on the device); "
                        'needs pip install "funcgrad[tensorboard]"')
    g.add_argument("--checkpoint-dir", metavar="DIR", help="save orbax checkpoints here")
    g.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=200,
                   help="save a checkpoint whenever a multiple of N steps is passed, and at the "
                        "end (default %(default)s)")
    g.add_argument("--keep-checkpoints", type=positive_int("--keep-checkpoints"), default=3,
                   help="keep the newest N good checkpoints (default %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in --checkpoint-dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--taps", action="store_true",
                   help="record, in every logged record, the gradient reaching each "
                        "primitive call (norm, max |g|, non-finite count, zero share)")
    g.add_argument("--flow", action="store_true",
                   help="record per-layer gradient statistics every step, print vanishing/"
                        "exploding/dead flags when they fire, and with --out write "
                        "flow.json, flow_heatmap.png and flow_layers.png")


def _add_device_args(g: Any) -> None:
    g.add_argument("--platform", choices=["cpu", "gpu", "cuda", "rocm", "tpu"],
                   help="force a JAX backend (default: JAX's default)")
    g.add_argument("--data-parallel", action="store_true",
                   help="shard each batch over all devices, replicate the state")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host: address of process 0 (calls jax.distributed.initialize)")
    g.add_argument("--num-processes", type=positive_int("--num-processes"), default=None,
                   help="multi-host: the number of processes, with --coordinator "
                        "(default: single process)")
    g.add_argument("--process-id", type=int, default=None,
                   help="multi-host: this process's index in [0, --num-processes), with "
                        "--coordinator (default: single process)")


def _load(args: argparse.Namespace) -> Any:
    from .. import data

    if args.data:
        return data.load_npz(args.data, seed=args.seed)
    return data.digits(seed=args.seed)


#: ``--platform`` -> what to install when this jaxlib cannot run it.
_PLATFORM_HINTS = {"gpu": 'pip install "jax[cuda13]"', "cuda": 'pip install "jax[cuda13]"',
                   "rocm": "a ROCm build of jax (see the JAX installation guide)",
                   "tpu": 'pip install "jax[tpu]"', "cpu": "pip install --force-reinstall jax"}


def _check_platform(platform: str) -> None:
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"--platform {platform}: this JAX installation has no {platform} "
                         f"backend ({first[:120]}); install it with "
                         f"{_PLATFORM_HINTS[platform]}, or drop --platform") from None


def _start(args: argparse.Namespace) -> bool:
    """Select the platform, join a multi-host run, check flag combinations.

    Returns:
        Whether this is process 0 (the one that writes files and prints the summary).
    """
    if args.platform:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.platform == "gpu" else args.platform
    import jax

    if args.platform:
        jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    from .. import parallel

    if args.coordinator or args.num_processes or args.process_id is not None:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise ValueError("--coordinator, --num-processes and --process-id must be given "
                             "together")
        print(f"process {args.process_id} of {args.num_processes}: waiting for the "
              f"coordinator at {args.coordinator} and every other process to join ...",
              flush=True)
        parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.platform:
        _check_platform(args.platform)
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    return jax.process_index() == 0


def _prepare(args: argparse.Namespace) -> tuple[Any, tuple[Any, Any], Any, list[str]]:
    """Load and standardise the data, build the mesh, print what the run will use."""
    import jax

    from .. import parallel

    ds = _load(args)
    x_train, x_test = ds.x_train, ds.x_test
    if not args.no_standardize:  # statistics of the training split only
        mu = x_train.mean(axis=0)
        sd = x_train.std(axis=0) + 0.1  # constant pixels (always 0) stay finite
        x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    if args.batch_size > len(x_train):
        print(f"note: --batch-size {args.batch_size} is more than the {len(x_train)} training "
              f"examples; using {len(x_train)}")
        args.batch_size = len(x_train)
    mesh = parallel.local_mesh(jax.devices()) if args.data_parallel else None
    if mesh is not None:
        parallel.check_batch_size(args.batch_size, mesh, name="--batch-size")
    devices = parallel.describe_devices(mesh)
    print(f"funcgrad train: {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test "
          f"examples, {ds.x_train.shape[1]} features, {ds.num_classes} classes")
    print(f"devices: {', '.join(devices)}" + (" (data parallel)" if mesh is not None else ""))
    return ds, (x_train, x_test), mesh, devices


def _hooks(args: argparse.Namespace, out: Path | None, metrics: MetricsLog,
           writer: Any = None) -> dict:
    """What the run prints and writes when it resumes or meets a non-finite step."""

    def on_resume(step: int, changed: dict[str, tuple[Any, Any]]) -> None:
        print(f"resuming from the checkpoint at step {step}", flush=True)
        for name, (old, new) in changed.items():  # the flags win over the checkpoint
            flag = _HYPERPARAMETER_FLAGS.get(name, name)
            print(f"resuming with {flag} {_short(new)} (checkpoint had {_short(old)})",
                  flush=True)
        metrics.start(step)
        if writer is not None:  # TensorBoard hides what an interrupted run logged past it
            writer.purge_from(step)

    def on_nonfinite(report: dict[str, Any]) -> None:
        where = ""
        if out is not None:
            (out / "nonfinite.json").write_text(strict_json(report, indent=2) + "\n")
            where = f"; the full report is in {out / 'nonfinite.json'}"
        print(f"warning: step {report['step']} was not finite and was skipped (params and "
              f"optimizer state unchanged){where}", file=sys.stderr)
        print("\n".join("  " + line for line in report["report"].splitlines()),
              file=sys.stderr, flush=True)

    return {"on_resume": on_resume, "on_nonfinite_report": on_nonfinite, "on_log": metrics.write}


def _short(value: Any) -> str:
    """A float32 hyperparameter as the user typed it (``0.05``, not ``0.0500000007``)."""
    import numpy as np

    return str(np.float32(value)) if isinstance(value, float) else str(value)


#: Injected hyperparameter -> the flag that sets it.
_HYPERPARAMETER_FLAGS = {"learning_rate": "--lr", "peak_learning_rate": "--lr",
                         "momentum": "--momentum", "clip_norm": "--clip-norm",
                         "clip_value": "--clip-value"}


def _fit(args: argparse.Namespace, ds: Any, xs: tuple[Any, Any], mesh: Any,
         out: Path | None, sinks: tuple[MetricsLog, Any, Any], progress: str) -> Any:
    """Build the model and optimizer and run :func:`funcgrad.train.fit`."""
    import jax

    from .. import nn, train

    metrics, flow_history, writer = sinks
    sizes = [ds.x_train.shape[1]] + [args.hidden] * args.depth + [ds.num_classes]
    # one compiled program (cached across runs) rather than an eager op per layer
    params = jax.jit(lambda: nn.init_mlp(
        jax.random.PRNGKey(args.seed), sizes, activation=args.activation, init=args.init,
        scale=args.init_scale, batch_norm=args.batch_norm))()
    tx = train.optimizer(_learning_rate(args, len(ds.x_train)), momentum=args.momentum,
                         clip_norm=None if args.no_clip_norm else args.clip_norm,
                         clip_value=args.clip_value)
    checkpoints, formatwarning = None, warnings.formatwarning
    if args.checkpoint_dir:  # first: a locked or unwritable directory fails before any write
        from ..checkpoint import CheckpointManager, format_warning

        checkpoints = CheckpointManager(args.checkpoint_dir, keep=args.keep_checkpoints,
                                        every=args.checkpoint_every)
        warnings.formatwarning = format_warning  # a CheckpointWarning is one line
    config = train.FitConfig(batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                             steps_per_dispatch=args.steps_per_dispatch,
                             epochs_per_dispatch=args.epochs_per_dispatch,
                             device_data_budget=None if args.device_data_mib is None
                             else int(args.device_data_mib * 2**20),
                             log_every=args.log_every, taps=args.taps,
                             precision=args.precision,
                             on_nonfinite=args.on_nonfinite,
                             max_consecutive_skips=args.max_skips)
    try:
        with Progress(progress) as bar:
            return train.fit(params, (xs[0], ds.y_train), apply_fn=_apply_fn(args), tx=tx,
                             config=config, eval_data=(xs[1], ds.y_test),
                             checkpoints=checkpoints, resume=args.resume, mesh=mesh,
                             hooks=train.FitHooks(progress=bar, flow=flow_history, writer=writer,
                                                  **_hooks(args, out, metrics, writer)))
    except OSError as exc:  # CheckpointError, NoUsableCheckpointError among them
        from ..checkpoint import NoUsableCheckpointError

        if not isinstance(exc, NoUsableCheckpointError):
            raise
        raise ValueError(f"{exc}; to start over, run without --resume (steps that could not "
                         "be verified are moved aside, never deleted)") from None
    finally:
        if checkpoints is not None:
            checkpoints.close()
        warnings.formatwarning = formatwarning


def _learning_rate(args: argparse.Namespace, n_train: int) -> Any:
    """``--lr``, or the schedule of ``--schedule``/``--warmup-steps`` peaking at it."""
    from .. import train

    if args.schedule == "constant" and args.warmup_steps == 0:
        return args.lr  # the optimizer state of every earlier run
    total = args.epochs * -(-n_train // args.batch_size)  # a padded last batch is a step
    if args.schedule == "cosine" and args.warmup_steps >= total:
        raise ValueError(f"--warmup-steps must be less than the run's {total} steps "
                         f"(--epochs x steps per epoch) for --schedule cosine; got "
                         f"{args.warmup_steps}")
    return train.schedule(args.schedule, args.lr, warmup_steps=args.warmup_steps,
                          total_steps=total)


def _apply_fn(args: argparse.Namespace) -> Any:
    from .. import nn

    def apply_fn(p: Any, x: Any) -> Any:
        return nn.mlp(p, x, activation=args.activation, residual=args.residual)

    return apply_fn


def _summary(args: argparse.Namespace, result: Any, ds: Any, devices: list[str],
             records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary; ``records`` are every logged record, a resumed run's kept ones
    included, so a resumed run's summary is an uninterrupted one's."""
    import jax

    last = records[-1] if records else {}
    final = result.evals[-1] if result.evals else {}
    steps = int(jax.device_get(result.state.step))
    trained = steps - (result.resumed_from or 0)  # steps this run took
    return {
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "steps": steps,
        "epochs": args.epochs,
        "skipped_steps": int(jax.device_get(result.state.skipped)),
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "wall_seconds": result.wall_seconds,
        "steps_per_second": trained / result.wall_seconds if trained and result.wall_seconds
        else None,
        "devices": devices,
        "dataset": ds.name,
        "config": dict(vars(args)),  # what the run used: on --resume the flags win
    }


def _output_dir(args: argparse.Namespace, is_main: bool) -> Path | None:
    if not args.out or not is_main:
        return None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory; got {str(out)!r}, an existing file")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _tensorboard_writer(args: argparse.Namespace, is_main: bool) -> Any:
    """The ``--tensorboard`` writer (process 0 only), checked before any work."""
    if not args.tensorboard or not is_main:
        return None
    from .. import tensorboard

    try:  # one line naming the flag: missing extra, a file, an unwritable directory
        tensorboard.require_tensorboardx("--tensorboard")
        tensorboard.check_logdir(args.tensorboard, name="--tensorboard")
    except (ImportError, OSError) as exc:
        raise ValueError(str(exc)) from None
    return tensorboard.TensorBoardWriter(args.tensorboard)


def run(args: argparse.Namespace) -> int:
    """Run ``funcgrad train`` with parsed arguments.

    Args:
        args: the parsed arguments.

    Returns:
        The exit status.
    """
    is_main = _start(args)
    from .._cache import enable_for_cli

    enable_for_cli()  # a second run with the same shapes skips compiling
    out = _output_dir(args, is_main)  # before any work: a bad --out fails at once
    writer = _tensorboard_writer(args, is_main)  # likewise a bad --tensorboard
    ds, xs, mesh, devices = _prepare(args)
    flow_history = None
    if args.flow:
        from .flow import train_history

        flow_history = train_history(args.log_every, _apply_fn(args), echo=is_main)
    metrics = MetricsLog(out)
    try:
        result = _fit(args, ds, xs, mesh, out, (metrics, flow_history, writer),
                      progress_mode(args, is_main))
    finally:
        metrics.close()
        if writer is not None:
            writer.close()
    if result.resumed_from is not None and result.resumed_from == int(result.state.step):
        print(f"resumed from checkpoint at step {result.resumed_from}: the run was already "
              "complete, nothing left to train")
    summary = _summary(args, result, ds, devices, metrics.records)
    if flow_history is not None:
        from .flow import finish_train_history

        summary["flow"] = finish_train_history(flow_history, out)
    if is_main:
        print_summary(summary)
    if out is not None:
        (out / "summary.json").write_text(strict_json(summary, indent=2))
        pngs = plot_curves(metrics.records, result.evals, out)
        print(f"wrote {out / 'metrics.jsonl'}, {out / 'summary.json'}"
              + (f", {', '.join(pngs)}" if pngs else " (install matplotlib for PNG curves)"))
    if result.stopped is not None:
        print(f"funcgrad train: stopped: {result.stopped}"
              + (f"; see {out / 'nonfinite.json'}" if out is not None and result.nonfinite
                 else ""), file=sys.stderr)
        return 3
    return 0
