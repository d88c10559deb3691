"""What ``funcgrad train`` shows and writes: progress, the summary table, strict-JSON
files (``metrics.jsonl`` kept across resumes, ``summary.json``, ``nonfinite.json``) and the
curves."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "Progress", "plot_curves", "print_summary", "progress_mode",
           "strict_json"]


def strict_json(value: Any, indent: int | None = None) -> str:
    """JSON that strict parsers accept: non-finite numbers are written as ``null``."""
    from ..flow import to_jsonable

    return json.dumps(to_jsonable(value, digits=None), indent=indent, allow_nan=False)


def plot_curves(history: list[dict], evals: list[dict], out: Path) -> list[str]:
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


class Progress:
    """Progress on stderr: a rich bar on a terminal, a plain line per logged record
    elsewhere (CI, ``| tee``, nohup), nothing with ``--no-progress``."""

    def __init__(self, mode: str):
        self.bar = None
        self.task = None
        self.lines = mode == "lines"
        if mode != "bar":
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
            self.lines = True
            return
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            transient=False)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, step: int, total: int, record: dict | None) -> None:
        info = None
        if record is not None:
            info = (f"loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.3f}  "
                    f"|g| {record['grad_norm']:.3g}")
        if self.lines and info is not None:
            print(f"train: step {step}/{total}  {info}", file=sys.stderr, flush=True)
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("train", total=total, info="")
        self.bar.update(self.task, completed=step, **({"info": info} if info else {}))


def progress_mode(args: argparse.Namespace, is_main: bool) -> str:
    if args.no_progress or not is_main:
        return "off"
    tty = sys.stderr.isatty() or os.environ.get("FUNCGRAD_PROGRESS") == "1"
    return "bar" if tty else "lines"


def print_summary(summary: dict[str, Any]) -> None:
    rows = [(k, "- (no steps trained)" if summary[k] is None else summary[k])
            for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps",
                      "epochs", "skipped_steps", "steps_per_second", "wall_seconds",
                      "devices")]
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




class MetricsLog:
    """``metrics.jsonl``, one strict-JSON record per logged step, kept across resumes.

    A fresh run starts the file anew. A resumed run keeps the records up to the step it
    resumed from, drops any past it (they belong to steps that will be trained again) and
    appends from there, so the file ends as an uninterrupted run's would.
    """

    def __init__(self, out: Path | None) -> None:
        self.path = None if out is None else out / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []  # every record in the file, kept ones first
        self._file: Any = None

    def start(self, resumed_from: int | None = None) -> None:
        """Open the file: anew, or keeping the records up to ``resumed_from``."""
        if self.path is None or self._file is not None:
            return
        if resumed_from is not None and self.path.exists():
            self.records = [r for r in _read_jsonl(self.path) if r["step"] <= resumed_from]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(strict_json(r) + "\n" for r in self.records))
        os.replace(tmp, self.path)  # a kill now leaves the old file or the kept part
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (``start`` first if nothing did)."""
        self.start()
        self.records.append(record)
        if self._file is not None:
            self._file.write(strict_json(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line cut short by a kill ends the list."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records
