"""Faults met in training: the first non-finite step is replayed and reported, skipping
stops when told to, and a resume applies the flags it is given and keeps metrics.jsonl."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import nn, train
from funcgrad.cli import main

SIZES = [4, 6, 3]
DEAD = 2  # the hidden unit that is dead for every input


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _log_relu(p, x):
    """A model with an injected fault: log of a relu, -inf wherever a unit outputs 0."""
    h = fg.log(fg.relu(fg.dense(x, p[0]["w"], p[0]["b"])))
    return fg.dense(h, p[1]["w"], p[1]["b"])


def _dead_unit_params():
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    # every unit is alive for every input except DEAD, whose bias shuts it for all of them
    bias = np.full(SIZES[1], 50.0, np.float32)
    bias[DEAD] = -1e3
    params[0]["b"] = jax.numpy.asarray(bias)
    return params


def _leaves_equal(a, b):
    return all(np.array_equal(u, v) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_a_dead_unit_under_log_is_reported_with_layer_unit_and_cause():
    params, reports = _dead_unit_params(), []
    r = train.fit(params, _data(), apply_fn=_log_relu, tx=train.optimizer(0.1),
                  batch_size=8, epochs=2, log_every=2, on_nonfinite_report=reports.append)
    assert len(reports) == 1 and reports[0] is r.nonfinite
    rep = r.nonfinite
    assert rep["step"] == 0 and rep["exact"] and rep["found"]
    assert (rep["phase"], rep["op"], rep["cause"]) == ("forward", "log", "log_at_zero")
    assert rep["layer"] == "params[0]"
    assert np.unravel_index(rep["index"], (8, SIZES[1]))[1] == DEAD  # the unit
    assert rep["values"] == {"relu": 0.0, "out": "-inf"}
    assert "test_train_faults.py" in rep["source"] and "dead unit" in rep["report"]
    json.dumps(rep, allow_nan=False)  # strict JSON
    # every step was skipped: params and optimizer state bitwise as they started
    assert int(r.state.skipped) == int(r.state.step) == 6
    assert _leaves_equal(r.state.params, params)
    assert r.stopped is None


def test_without_a_hook_the_first_nonfinite_step_is_a_warning():
    with pytest.warns(RuntimeWarning, match="fit: step 0 was not finite and was skipped"):
        train.fit(_dead_unit_params(), _data(), apply_fn=_log_relu, tx=train.optimizer(0.1),
                  batch_size=8, epochs=1)


def test_stop_ends_the_run_at_the_log_that_shows_the_step():
    r = train.fit(_dead_unit_params(), _data(), apply_fn=_log_relu, tx=train.optimizer(0.1),
                  batch_size=8, epochs=3, log_every=2, on_nonfinite="stop",
                  on_nonfinite_report=lambda rep: None)
    assert int(r.state.step) == 2 and "step 0 was not finite" in r.stopped


def test_max_consecutive_skips_ends_the_run():
    r = train.fit(_dead_unit_params(), _data(), apply_fn=_log_relu, tx=train.optimizer(0.1),
                  batch_size=8, epochs=5, log_every=1, max_consecutive_skips=4,
                  on_nonfinite_report=lambda rep: None)
    assert int(r.state.step) == 4 and "4 consecutive steps" in r.stopped


@pytest.mark.parametrize("field,value,words", [
    ("on_nonfinite", "ignore", "'on_nonfinite' must be 'skip' or 'stop'"),
    ("max_consecutive_skips", 0, "'max_consecutive_skips' must be an int >= 1"),
])
def test_bad_nonfinite_options_are_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        train.FitConfig(**{field: value})


def test_a_finite_run_has_no_report():
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    r = train.fit(params, _data(), apply_fn=lambda p, x: nn.mlp(p, x),
                  tx=train.optimizer(0.1), batch_size=8, epochs=1)
    assert r.nonfinite is None and r.stopped is None


def test_resume_applies_the_new_learning_rate_and_says_so(tmp_path):
    from funcgrad.checkpoint import CheckpointManager

    params, seen = nn.init_mlp(jax.random.PRNGKey(0), SIZES), []

    def run(lr, **kw):
        kw.setdefault("epochs", 2)
        return train.fit(params, _data(), apply_fn=lambda p, x: nn.mlp(p, x),
                         tx=train.optimizer(lr, momentum=0.9), batch_size=8, **kw)

    with CheckpointManager(tmp_path / "ck", every=3) as ck:
        run(0.1, epochs=1, checkpoints=ck)  # 3 steps, saved at 3
    with CheckpointManager(tmp_path / "ck", every=3) as ck:
        resumed = run(0.05, checkpoints=ck, resume=True,
                      on_resume=lambda step, changed: seen.append((step, changed)))
    assert seen == [(3, {"learning_rate": (pytest.approx(0.1), pytest.approx(0.05))})]
    hyper = resumed.state.opt_state.hyperparams
    assert float(hyper["learning_rate"]) == pytest.approx(0.05)
    # the new rate was used: the result differs from resuming with the old one
    with CheckpointManager(tmp_path / "ck2", every=3) as ck:
        run(0.1, epochs=1, checkpoints=ck)
    with CheckpointManager(tmp_path / "ck2", every=3) as ck:
        same = run(0.1, checkpoints=ck, resume=True)
    assert not _leaves_equal(resumed.state.params, same.state.params)
    assert _leaves_equal(same.state.params, run(0.1).state.params)  # resume is exact


# ------------------------------------------------------------------ the command line
SMALL = ["train", "--hidden", "16", "--batch-size", "128", "--steps-per-dispatch", "4",
         "--log-every", "4", "--no-progress"]


def _records(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("wall_seconds")
    return rows


@pytest.mark.slow
def test_cli_resume_keeps_metrics_and_applies_a_new_lr(tmp_path, capsys):
    """A run killed after its checkpoint at step 8 resumes into the same --out: metrics.jsonl
    and summary.json end as an uninterrupted run's; a new --lr is applied and announced."""
    ck, out = tmp_path / "ck", tmp_path / "out"
    full = [*SMALL, "--epochs", "2"]
    assert main([*full, "--out", str(tmp_path / "full")]) == 0
    assert main([*SMALL, "--epochs", "1", "--checkpoint-dir", str(ck), "--checkpoint-every",
                 "8", "--out", str(out)]) == 0  # 12 steps: checkpoints at 8 and 12
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # as if killed just after step 12's records: drop checkpoint 12, keep its records
    import shutil
    shutil.rmtree(ck / "12")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([*full, "--checkpoint-dir", str(ck), "--checkpoint-every", "8", "--resume",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resuming from the checkpoint at step 8" in text
    assert _records(out / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "full"))
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "steps"):
        assert a[key] == b[key], key
    # a new learning rate on resume: applied, announced and recorded
    shutil.rmtree(ck / "24")
    assert main([*full, "--checkpoint-dir", str(ck), "--checkpoint-every", "8", "--resume",
                 "--lr", "0.01", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resuming with --lr 0.01 (checkpoint had 0.05" in text
    c = json.loads((out / "summary.json").read_text())
    assert c["config"]["lr"] == 0.01 and c["train_loss"] != b["train_loss"]


@pytest.mark.slow
def test_cli_diverged_run_stops_with_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--lr", "1e6", "--no-clip-norm", "--epochs", "3", "--hidden", "8",
               "--batch-size", "64", "--log-every", "2", "--max-skips", "6", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 3
    assert "was not finite and was skipped" in err and "6 consecutive steps" in err
    report = json.loads((out / "nonfinite.json").read_text(), parse_constant=float.__call__)
    assert report["found"] and report["step"] >= 1 and report["cause"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and summary["skipped_steps"] >= 6


@pytest.mark.parametrize("argv,words", [
    (["--on-nonfinite", "panic"], "--on-nonfinite"),
    (["--max-skips", "0"], "--max-skips"),
])
def test_bad_nonfinite_flags_are_named(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.slow
def test_cli_kill_9_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    """`funcgrad train` killed with SIGKILL after its first checkpoint, then resumed into
    the same --out: the final metrics.jsonl and summary.json are the uninterrupted run's."""
    import subprocess
    import sys
    import time

    args = ["train", "--hidden", "16", "--batch-size", "64", "--epochs", "40",
            "--steps-per-dispatch", "4", "--log-every", "8", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    ck, out = tmp_path / "ck", tmp_path / "out"
    run = [*args, "--checkpoint-dir", str(ck), "--checkpoint-every", "8", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "funcgrad.cli", *run],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if ck.exists() and any((p / "funcgrad_integrity.json").exists()
                                   for p in ck.iterdir() if p.name.isdigit()):
                break  # a verified checkpoint: kill it now, mid-run
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, "the run ended before it could be killed"
    assert main([*run, "--resume"]) == 0
    assert _records(out / "metrics.jsonl") == _records(tmp_path / "full" / "metrics.jsonl")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "full"))
    for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss", "steps"):
        assert a[key] == b[key], key


def test_cli_resume_with_nothing_usable_says_so_and_how_to_start_over(tmp_path, capsys):
    ck = tmp_path / "ck"
    run = [*SMALL, "--epochs", "1", "--checkpoint-dir", str(ck), "--checkpoint-every", "8"]
    assert main(run) == 0
    for record in ck.glob("*/funcgrad_integrity.json"):
        record.unlink()  # no step can be verified any more
    capsys.readouterr()
    assert main([*run, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing could be restored" in err and "run without --resume" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in ck.iterdir() if p.name.isdigit()) or \
        any((ck / ".funcgrad-unverified").iterdir())  # nothing deleted
