"""TensorBoard: device-side gradient histograms, the writer, and events read back by
TensorBoard's own reader."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad
from funcgrad import nn, train
from funcgrad import tensorboard as tb

SIZES = [5, 7, 3]
APPLY = functools.partial(nn.mlp, activation="tanh")
BINS = 8
HISTOGRAMS = jax.jit(functools.partial(tb.layer_histograms, bins=BINS))


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=n).astype(np.int32)
    return x, y


def _params(seed=0):
    return nn.init_mlp(jax.random.PRNGKey(seed), SIZES)


def _layer_sizes(params):
    return [sum(leaf.size for leaf in jax.tree.leaves(layer)) for layer in params]


@pytest.fixture(scope="module")
def reader():
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    def read(logdir):
        acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0,
                                                              ea.HISTOGRAMS: 0})
        acc.Reload()
        return acc
    return read


def _layer_values(tree):
    parts = tree if isinstance(tree, list) else [tree[k] for k in sorted(tree)]
    return [np.concatenate([np.ravel(np.asarray(leaf, np.float32))
                            for leaf in jax.tree.leaves(p)]) for p in parts]


def _check_against_numpy(tree, h):
    for i, x in enumerate(_layer_values(tree)):
        good = x[np.isfinite(x)]
        edges = np.asarray(h["edges"][i])
        assert np.all(np.diff(edges) >= 0)
        assert np.array_equal(np.asarray(h["counts"][i]), np.histogram(good, bins=edges)[0])
        assert int(h["counts"][i].sum()) + int(h["nonfinite"][i]) == x.size
        assert int(h["nonfinite"][i]) == x.size - good.size
        if good.size:
            assert float(h["min"][i]) == good.min() and float(h["max"][i]) == good.max()
            wide = good.astype(np.float64)
            with np.errstate(over="ignore"):  # float32 sums: inf beyond float32's range
                want = np.float32([wide.sum(), np.square(wide).sum()])
            np.testing.assert_allclose([h["sum"][i], h["sum_squares"][i]], want, rtol=1e-5,
                                       atol=1e-6 * np.abs(wide).sum())


# ----------------------------------------------------------------------- layer_histograms
def test_layer_histograms_match_numpy_under_jit():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    w[2, 1], w[0, 0] = np.nan, -np.inf
    tree = [{"w": jnp.asarray(w), "b": jnp.asarray(rng.normal(size=4), jnp.float32)},
            {"w": jnp.asarray(rng.normal(size=(4, 3)) * 1e-3, jnp.float32)}]
    h = HISTOGRAMS(tree)
    assert h["counts"].shape == (2, BINS) and h["counts"].dtype == jnp.int32
    assert h["edges"].shape == (2, BINS + 1) and h["edges"].dtype == jnp.float32
    assert all(h[k].shape == (2,) for k in ("min", "max", "sum", "sum_squares", "nonfinite"))
    _check_against_numpy(tree, h)
    assert h["nonfinite"].tolist() == [2, 0]


EDGE_CASES = {
    "huge-range": [3e38, -3e38, 1.0, np.inf, np.nan],     # a range beyond float32's max
    "huge-constant": [3.4e38] * 5,                       # one huge value: widened range
    "constant": [-7.0, -7.0, -7.0],                      # one value
    "no-finite": [np.nan, np.inf],                       # nothing finite
    "tiny": list(np.linspace(-1e-30, 1e-30, 97)),        # tiny numbers
    "ulps": list(1.0 + np.arange(40) * np.finfo(np.float32).eps),  # a few ulps wide
    "exponents": list(np.random.default_rng(2).normal(size=300)  # 1e-35 ... 1e35
                      * np.exp(np.random.default_rng(3).uniform(-80, 80, size=300))),
}


def test_layer_histograms_edge_cases():
    tree = {name: jnp.asarray(values, jnp.float32) for name, values in EDGE_CASES.items()}
    h = HISTOGRAMS(tree)
    _check_against_numpy(tree, h)
    assert bool(jnp.all(jnp.isfinite(h["edges"])))
    assert bool(jnp.all(h["edges"][:, -1] > h["edges"][:, 0]))


@pytest.fixture(scope="module")
def fused_run():
    """Three steps in one fused dispatch with histograms in the metrics, and the records
    fit would log for each step (host scalars + host histograms, through JSON)."""
    params = _params()
    tx = train.optimizer(0.1)
    stats = lambda p, g, u, b: tb.layer_histograms(g, bins=BINS)
    fused = train.make_fused_steps(train.classification_loss(APPLY), tx, stats_fn=stats)
    x, y = _data(12)
    batches = (jnp.asarray(x).reshape(3, 4, -1), jnp.asarray(y).reshape(3, 4),
               jnp.ones((3, 4), jnp.float32))
    _, metrics = fused(train.init_state(params, tx), batches)
    hist = metrics.pop("flow")
    m = jax.device_get(metrics)
    records = [json.loads(json.dumps({
        "step": s + 1, "train_loss": float(m["loss"][s]), "grad_norm": float(m["grad_norm"][s]),
        "layer_grad_norms": np.asarray(m["layer_grad_norms"][s]).tolist(),
        "nonfinite_steps": int(not m["finite"][s]),
        "grad_histograms": tb.host_histograms(jax.tree.map(lambda v, s=s: v[s], hist))}))
        for s in range(3)]
    return params, hist, records


def test_layer_histograms_in_fused_steps_have_a_leading_step_axis(fused_run):
    params, h, _ = fused_run
    assert h["counts"].shape == (3, 2, BINS) and h["edges"].shape == (3, 2, BINS + 1)
    assert np.asarray(h["counts"]).sum(axis=-1).tolist() == [_layer_sizes(params)] * 3
    assert not np.array_equal(h["edges"][0], h["edges"][1])  # one histogram per step


@pytest.mark.parametrize("bins,match", [(0, "got 0"), (True, "got True"), (2.5, "got 2.5")])
def test_layer_histograms_rejects_bad_bins(bins, match):
    with pytest.raises(ValueError, match=f"layer_histograms: argument 'bins' must be an int "
                                         f">= 1; {match}"):
        tb.layer_histograms([jnp.ones(3)], bins=bins)


def test_writer_rejects_bad_histogram_bins(tmp_path, reader):
    with tb.TensorBoardWriter(tmp_path, histogram_bins=0) as writer:
        assert writer.histogram_bins == 0
    with pytest.raises(ValueError, match=r"TensorBoardWriter: argument 'histogram_bins' must "
                                         r"be an int >= 1 \(or 0 for none\); got -1"):
        tb.TensorBoardWriter(tmp_path, histogram_bins=-1)


def test_layer_histograms_rejects_complex_leaves():
    with pytest.raises(TypeError, match="layer_histograms: argument 'grads' must hold real "
                                        "numbers; got a leaf of dtype complex64"):
        tb.layer_histograms([jnp.ones(3, jnp.complex64)])


@pytest.mark.parametrize("tree,names", [
    ([{"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, {"w": jnp.ones((3, 2))}],
     ["layer_0", "layer_1"]),
    ({"out": {"w": jnp.ones(4)}, "emb": (jnp.ones(2), jnp.ones(5))}, ["emb", "out"]),
    (jnp.ones(3), ["layer_0"]),
    ([{"w": jnp.ones(4), "step": jnp.array(3, jnp.int32)}], ["layer_0"]),
], ids=["list", "dict", "leaf", "int-leaf"])
def test_layers_are_those_of_flow_stats(tree, names):
    from funcgrad.flow import stats

    assert tb.layer_names(tree) == names
    assert len(names) == len(stats.layer_names(tree))
    h = HISTOGRAMS(tree)  # the same layers, the same elements: float leaves only
    np.testing.assert_allclose(h["sum_squares"], stats.layer_squares(tree), rtol=1e-6)


def test_host_histograms_are_json_and_reject_missing_fields(fused_run):
    _, hist, _ = fused_run
    h = tb.host_histograms(hist)
    assert json.loads(json.dumps(h)) == h
    assert all(np.array_equal(h[k], hist[k]) for k in tb.HISTOGRAM_FIELDS)
    with pytest.raises(ValueError, match=r"host_histograms: argument 'histograms' must have "
                                         r"the keys .*; missing \['edges'"):
        tb.host_histograms({"counts": [[1]]})


# --------------------------------------------------------------------------------- writer
def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_fit_records_read_back_by_tensorboard(tmp_path, reader):
    lines = []

    with tb.TensorBoardWriter(tmp_path / "tb") as writer:
        def on_log(record):
            lines.append(json.dumps(record))  # what metrics.jsonl holds
            writer(record)
        funcgrad.fit(_params(), _data(), apply_fn=APPLY, tx=train.optimizer(0.1, clip_norm=0.5),
                     batch_size=8, epochs=2, log_every=2, on_log=on_log, steps_per_dispatch=1)
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [2, 4, 6]
    acc = reader(tmp_path / "tb")
    expected = {**{tag: key for key, tag in tb.SCALAR_TAGS.items()},
                "grad_norm/layer_0": 0, "grad_norm/layer_1": 1}
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, key in expected.items():
        want = [(r["step"], r["layer_grad_norms"][key] if isinstance(key, int) else r[key])
                for r in records]
        got = _scalars(acc, tag)
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_array_equal([v for _, v in got],
                                      np.float32([v for _, v in want]), err_msg=tag)
    # clipping showed: the norm after clipping is at most the clip norm
    assert all(v <= 0.5 + 1e-6 for _, v in _scalars(acc, "clipped_grad_norm"))
    assert acc.Tags()["histograms"] == []


def test_histograms_read_back_by_tensorboard(tmp_path, reader, fused_run):
    params, _, records = fused_run
    with tb.TensorBoardWriter(tmp_path, layer_names=["dense_in", "dense_out"]) as writer:
        for r in records:
            writer.write(r)
    acc = reader(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == ["grad/dense_in", "grad/dense_out"]
    for i, (name, size) in enumerate(zip(["dense_in", "dense_out"], _layer_sizes(params),
                                         strict=True)):
        events = acc.Histograms(f"grad/{name}")
        assert [e.step for e in events] == [1, 2, 3]
        for e, r in zip(events, records, strict=True):
            h, want = e.histogram_value, r["grad_histograms"]
            assert h.num == size and sum(h.bucket) == size  # every gradient element
            assert h.bucket == [0.0, *want["counts"][i]]
            np.testing.assert_array_equal(h.bucket_limit, np.float32(want["edges"][i]))
            assert (h.min, h.max) == (want["min"][i], want["max"][i])
            np.testing.assert_allclose([h.sum, h.sum_squares],
                                       [want["sum"][i], want["sum_squares"][i]], rtol=1e-6)
        assert [v for _, v in _scalars(acc, f"grad_nonfinite/{name}")] == [0.0] * 3
        assert [v for _, v in _scalars(acc, f"grad_norm/{name}")] == \
            [np.float32(r["layer_grad_norms"][i]) for r in records]


def test_nonfinite_values_are_written_as_they_are(tmp_path, reader):
    # layer_histograms of [nan, inf] and [1, nan, 2] with 2 bins
    hist = {"counts": [[0, 0], [1, 1]], "edges": [[-0.5, 0.0, 0.5], [1.0, 1.5, 2.0]],
            "min": [0.0, 1.0], "max": [0.0, 2.0], "sum": [0.0, 3.0], "sum_squares": [0.0, 5.0],
            "nonfinite": [2, 1]}
    with tb.TensorBoardWriter(tmp_path) as writer:
        writer.write({"step": 5, "train_loss": float("nan"), "grad_norm": float("inf"),
                      "nonfinite_steps": 1, "layer_grad_norms": [float("nan"), 2.0],
                      "grad_histograms": hist})
    acc = reader(tmp_path)
    assert math.isnan(_scalars(acc, "loss")[0][1])
    assert _scalars(acc, "grad_norm") == [(5, float("inf"))]
    assert _scalars(acc, "skipped_steps") == [(5, 1.0)]
    assert math.isnan(_scalars(acc, "grad_norm/layer_0")[0][1])
    assert _scalars(acc, "grad_nonfinite/layer_0") == [(5, 2.0)]
    assert _scalars(acc, "grad_nonfinite/layer_1") == [(5, 1.0)]
    assert acc.Tags()["histograms"] == ["grad/layer_1"]  # layer 0 had no finite element
    assert acc.Histograms("grad/layer_1")[0].histogram_value.num == 2


def test_eval_records(tmp_path, reader):
    with tb.TensorBoardWriter(tmp_path) as writer:
        writer.write_eval({"epoch": 1, "step": 3, "test_loss": 0.5, "test_accuracy": 0.75})
    acc = reader(tmp_path)
    assert _scalars(acc, "eval/loss") == [(3, 0.5)]
    assert _scalars(acc, "eval/accuracy") == [(3, 0.75)]


def test_a_resumed_run_hides_what_the_interrupted_one_logged_past_its_checkpoint(
        tmp_path, reader):
    import time

    def run(logdir, start, value, purge):
        with tb.TensorBoardWriter(logdir) as writer:
            if purge:
                writer.purge_from(start)
            for step in range(start, 10, 2):
                writer.write({"step": step, "train_loss": value})

    for purge in (False, True):
        run(tmp_path / str(purge), 2, 1.0, False)  # interrupted after step 8
    time.sleep(1.1)  # tensorboardX names event files by the second
    for purge in (False, True):
        run(tmp_path / str(purge), 4, 2.0, purge)  # resumed from the checkpoint of step 4
    # without the purge TensorBoard shows both runs' steps 4-8; with it, the resumed run's
    assert len(_scalars(reader(tmp_path / "False"), "loss")) == 7
    assert _scalars(reader(tmp_path / "True"), "loss") == [(2, 1.0), (4, 2.0), (6, 2.0),
                                                           (8, 2.0)]
    with tb.TensorBoardWriter(tmp_path / "x") as writer, pytest.raises(
            ValueError, match="purge_from: argument 'step' must be an int >= 0; got -1"):
        writer.purge_from(-1)


def test_cli_resume_purges_the_tensorboard_log_from_the_resumed_step(capsys):
    from funcgrad.cli import train as cli_train
    from funcgrad.cli._report import MetricsLog

    class Writer:
        purged: list[int] = []

        def purge_from(self, step):
            self.purged.append(step)

    hooks = cli_train._hooks(None, None, MetricsLog(None), Writer())  # (args: unused here)
    hooks["on_resume"](45, {})
    assert Writer.purged == [45]
    assert "resuming from the checkpoint at step 45" in capsys.readouterr().out


def test_writer_rejects_bad_records(tmp_path, reader):
    writer = tb.TensorBoardWriter(tmp_path, layer_names=["a"])
    with pytest.raises(ValueError, match=r"TensorBoardWriter.write: the record has 2 layers "
                                         r"but 'layer_names' has 1"):
        writer.write({"step": 1, "layer_grad_norms": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"TensorBoardWriter.write: argument 'record' must be "
                                         r"a dict with an int 'step' >= 0; got step=-1"):
        writer.write({"step": -1})
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="TensorBoardWriter.write: the writer is closed"):
        writer.write({"step": 1})
    with pytest.raises(TypeError, match="argument 'layer_names' must be a sequence of "
                                        "non-empty str; got 'ab'"):
        tb.TensorBoardWriter(tmp_path, layer_names="ab")


# ------------------------------------------------------------------------------ bad input
def test_logdir_that_is_a_file(tmp_path, reader):
    target = tmp_path / "events"
    target.write_text("x")
    with pytest.raises(ValueError, match=r"TensorBoardWriter: argument 'logdir' must be a "
                                         r"directory; got '.*events', an existing file"):
        tb.TensorBoardWriter(target)
    with pytest.raises(ValueError, match=r"must be a directory; got '.*events/run', under an "
                                         r"existing file"):
        tb.TensorBoardWriter(target / "run")
    with pytest.raises(TypeError, match="argument 'logdir' must be a str or path; got int"):
        tb.TensorBoardWriter(3)
    with pytest.raises(ValueError, match=r"^--tensorboard must be a directory; got '.*events', "
                                         r"an existing file$"):
        tb.check_logdir(target, name="--tensorboard")


def test_logdir_that_is_not_writable(tmp_path, reader, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tb.tempfile, "TemporaryFile", refuse)
    with pytest.raises(PermissionError, match=r"TensorBoardWriter: argument 'logdir' must be a "
                                              r"writable directory; cannot write to '.*' "
                                              r"\(Permission denied\)"):
        tb.TensorBoardWriter(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write anywhere")
def test_logdir_without_write_permission(tmp_path, reader):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="must be a writable directory"):
        tb.TensorBoardWriter(locked / "run")


def test_missing_tensorboardx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if absent
    with pytest.raises(ModuleNotFoundError, match=r'TensorBoardWriter needs tensorboardX, '
                                                  r'which is not installed; install the '
                                                  r'extra: pip install "funcgrad\[tensorboard\]"'):
        tb.TensorBoardWriter(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created before the check
    with pytest.raises(ModuleNotFoundError, match=r'^--tensorboard needs tensorboardX'):
        tb.require_tensorboardx("--tensorboard")


def test_import_funcgrad_does_not_load_tensorboardx():
    code = ("import sys, funcgrad, funcgrad.tensorboard; "
            "print('tensorboardX' in sys.modules, 'tensorboard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------ fit(writer=...) and the CLI flag
def _wired():
    import dataclasses

    return "writer" in {f.name for f in dataclasses.fields(train.FitHooks)}


wired = pytest.mark.skipif(not _wired(), reason="fit(writer=...) is not wired in yet")


@wired
def test_fit_writer_logs_records_histograms_and_evals(tmp_path, reader):
    params = _params()
    x, y = _data()
    with tb.TensorBoardWriter(tmp_path, histogram_bins=BINS) as writer:
        result = funcgrad.fit(params, (x, y), apply_fn=APPLY, tx=train.optimizer(0.1),
                              eval_data=(x[:8], y[:8]), batch_size=8, epochs=2,
                              steps_per_dispatch=2, log_every=2, writer=writer)
    records = [json.loads(json.dumps(r)) for r in result.history]  # metrics.jsonl's lines
    steps = [r["step"] for r in records]
    acc = reader(tmp_path)
    assert [s for s, _ in _scalars(acc, "loss")] == steps
    np.testing.assert_array_equal([v for _, v in _scalars(acc, "loss")],
                                  np.float32([r["train_loss"] for r in records]))
    assert [(s, v) for s, v in _scalars(acc, "eval/accuracy")] == \
        [(e["step"], np.float32(e["test_accuracy"])) for e in result.evals]
    for i, size in enumerate(_layer_sizes(params)):
        events = acc.Histograms(f"grad/layer_{i}")
        assert [e.step for e in events] == steps
        for e, r in zip(events, records, strict=True):
            assert e.histogram_value.num == size == sum(e.histogram_value.bucket)
            assert e.histogram_value.bucket == [0.0, *r["grad_histograms"]["counts"][i]]


@wired
@pytest.mark.slow
def test_cli_tensorboard_writes_events(tmp_path, capsys, reader):
    from funcgrad.cli import main

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "2", "--hidden", "4",
                 "--batch-size", "16", "--log-every", "2", "--steps-per-dispatch", "1",
                 "--no-progress", "--out", str(tmp_path / "out"),
                 "--tensorboard", str(tmp_path / "tb")]) == 0
    records = [json.loads(line) for line in
               (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    acc = reader(tmp_path / "tb")
    for tag, key in tb.SCALAR_TAGS.items():
        assert _scalars(acc, key) == [(r["step"], np.float32(r[tag])) for r in records], tag
    assert sorted(acc.Tags()["histograms"]) == ["grad/layer_0", "grad/layer_1"]
    assert [e.step for e in acc.Histograms("grad/layer_0")] == [r["step"] for r in records]


@wired
@pytest.mark.parametrize("case", ["file", "unwritable", "no-extra"])
def test_cli_tensorboard_bad_input_is_one_line(case, tmp_path, capsys, monkeypatch):
    from funcgrad.cli import main

    target = tmp_path / "tb"
    if case == "file":
        target.write_text("x")
        want = f"--tensorboard must be a directory; got '{target}', an existing file"
    elif case == "unwritable":
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tb.tempfile, "TemporaryFile", refuse)
        want = (f"--tensorboard must be a writable directory; cannot write to '{target}' "
                f"(Permission denied)")
    else:
        monkeypatch.setitem(sys.modules, "tensorboardX", None)
        want = ('--tensorboard needs tensorboardX, which is not installed; install the '
                'extra: pip install "funcgrad[tensorboard]"')
    assert main(["train", "--tensorboard", str(target), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"funcgrad train: error: {want}"]
    assert "devices" not in captured.out  # it failed before loading data or training
