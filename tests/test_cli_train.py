"""`funcgrad train` on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from funcgrad.cli import main


def test_train_writes_metrics_summary_and_curves(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--epochs", "2", "--hidden", "32", "--batch-size", "64", "--out",
               str(out), "--log-every",
               "10", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "devices: cpu" in text.lower() or "devices:" in text
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 2 and all("train_loss" in r and "grad_norm" in r for r in records)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_loss", "steps", "wall_seconds", "devices"):
        assert key in summary, key
    assert summary["steps"] == 2 * int(np.ceil(1438 / 64))
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,flag", [
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--activation", "swish"], "--activation"),
    (["--momentum", "1.5"], "--momentum"),
    (["--clip-norm", "0"], "--clip-norm"),
    (["--device-data-mib", "-1"], "--device-data-mib"),
    (["--device-data-mib", "lots"], "--device-data-mib"),
    (["--epochs-per-dispatch", "0"], "--epochs-per-dispatch"),
])
def test_bad_flags_are_named(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_user_data_file_is_validated(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3), np.float32), y=np.zeros(10, np.float32))
    assert main(["train", "--data", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "array 'y'" in err and "integer" in err


def test_user_data_file_trains(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    assert main(["train", "--data", str(path), "--epochs", "3", "--hidden", "8",
                 "--batch-size", "16", "--no-progress"]) == 0
    assert "2 classes" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_and_resume_from_the_command_line(tmp_path, capsys):
    ck = tmp_path / "ck"
    common = ["train", "--epochs", "2", "--hidden", "16", "--batch-size", "128",
              "--steps-per-dispatch", "4", "--checkpoint-dir", str(ck), "--checkpoint-every",
              "8", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert steps[-1] == 2 * 12 and len(steps) <= 3
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    # resuming a finished run restores the final state and trains no further
    assert main([*common, "--resume", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "resumed from checkpoint at step 24: the run was already complete" in out
    assert "None" not in out  # "- (no steps trained)" where a finished run has no value
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["steps_per_second"] is None  # nothing trained: no made-up rate
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["steps"] == first["steps"]


def test_resume_without_checkpoint_dir_is_an_error(capsys):
    assert main(["train", "--resume", "--no-progress"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_default_run_reaches_97_percent_quickly(tmp_path, capsys):
    """The README's main job: `funcgrad train` with no arguments (progress bar off)."""
    assert main(["train", "--no-progress", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97
    assert summary["wall_seconds"] < 60
    assert summary["config"]["clip_norm"] == 1.0 and not summary["config"]["no_clip_norm"]


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_strict_json(tmp_path, capsys):
    """NaN is not JSON: non-finite numbers are written as null (strict parsers accept it)."""
    out = tmp_path / "run"
    assert main(["train", "--lr", "1e6", "--no-clip-norm", "--epochs", "1", "--hidden", "8",
                 "--batch-size", "256", "--log-every", "2", "--steps-per-dispatch", "1",
                 "--no-progress", "--out", str(out)]) == 0
    records = [_strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = _strict((out / "summary.json").read_text())
    assert any(r["train_loss"] is None for r in records) or summary["train_loss"] is None
    assert summary["skipped_steps"] > 0


@pytest.mark.parametrize("flag,words", [
    ("--batch-size", "(default 32)"), ("--epochs", "(default 30)"), ("--seed", "(default 0)"),
    ("--activation", "(default relu)"), ("--init", "(default he)"),
    ("--keep-checkpoints", "(default 3)"), ("--num-processes", "(default: single process)"),
    ("--process-id", "(default: single process)"),
    ("--checkpoint-every", "whenever a multiple"),
])
def test_train_help_explains_every_flag_with_its_default(flag, words, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    entry = text[text.index(flag + " ", text.index("options:")):]  # past the usage line
    assert words in entry[:400], entry[:400]


def test_oversized_batch_is_capped_and_progress_prints_plain_lines(tmp_path, capsys):
    """Without a terminal (capsys, CI, | tee) progress is one plain stderr line per log."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(np.int64))
    assert main(["train", "--data", str(path), "--epochs", "4", "--hidden", "8",
                 "--batch-size", "100000", "--log-every", "2", "--steps-per-dispatch", "1",
                 "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    n_train = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]
    assert f"note: --batch-size 100000 is more than the {n_train['batch_size']} training " \
           f"examples; using {n_train['batch_size']}" in captured.out
    assert n_train["batch_size"] < 60
    assert [line.split()[2] for line in captured.err.splitlines()
            if line.startswith("train: step")] == ["2/4", "4/4"]


def test_platform_without_its_backend_says_what_to_install():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "funcgrad.cli", "train", "--platform", "tpu",
                           "--epochs", "1", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("funcgrad train: error: --platform tpu: this JAX installation has "
                           "no tpu backend")
    assert 'pip install "jax[tpu]"' in line


def test_the_executable_flushes_everything_before_it_skips_the_teardown(tmp_path):
    # `python -m funcgrad.cli` is `funcgrad.cli.console`: main, then os._exit; stdout to a
    # file is block-buffered (PYTHONUNBUFFERED unset), so a missing flush would cut it short
    import os
    import subprocess
    import sys

    out, log = tmp_path / "run", tmp_path / "stdout.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "funcgrad.cli", "train", "--epochs", "1",
                               "--hidden", "8", "--no-progress", "--out", str(out)],
                              stdout=fh, stderr=subprocess.PIPE, text=True, timeout=300,
                              env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = log.read_text()
    assert "steps_per_second" in text  # the summary table
    assert text.splitlines()[-1].startswith(f"wrote {out / 'metrics.jsonl'}")  # the last print
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == json.loads(
        (out / "summary.json").read_text())["steps"]


def test_the_executable_waits_for_a_running_thread_and_keeps_the_exit_status(tmp_path):
    import subprocess
    import sys

    done = tmp_path / "done"
    code = ("import threading, time\n"
            "import funcgrad.cli as cli\n"
            "returned, main = threading.Event(), cli.main\n"
            "cli.main = lambda argv: (main(argv), returned.set())[0]\n"
            "def late():\n"  # still running when main has returned
            "    returned.wait()\n"
            "    time.sleep(0.3)\n"
            f"    open({str(done)!r}, 'w').write('done')\n"
            "threading.Thread(target=late).start()\n"
            "cli.console(['train', '--resume'])\n")  # main returns 2 (not argparse's exit)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "funcgrad train: error: --resume needs --checkpoint-dir" in proc.stderr
    assert done.read_text() == "done"  # the interpreter joined the thread: no os._exit


def test_the_executable_exits_normally_under_a_profiler(tmp_path):
    # cProfile writes its results after the program returns: no os._exit then (cProfile
    # itself swallows the SystemExit, so its status is 0)
    import subprocess
    import sys

    prof = tmp_path / "run.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m",
                           "funcgrad.cli", "train", "--resume"], capture_output=True, text=True,
                          timeout=300)
    assert "funcgrad train: error: --resume needs --checkpoint-dir" in proc.stderr
    assert prof.stat().st_size > 0
