"""fit's compiled programs: the device shuffle equals the host's, device-resident and
streamed data train bitwise alike, whole-epoch programs resume bitwise, and a second
command-line run loads its programs from the persistent compilation cache."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import nn, train
from funcgrad.train import _data

SIZES = [6, 8, 3]
APPLY = functools.partial(nn.mlp, activation="tanh")


def _data_xy(n=22, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, SIZES[0])).astype(np.float32),
            rng.integers(0, SIZES[-1], size=n).astype(np.int32))


def _fit(**kw):
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    kw.setdefault("tx", train.optimizer(0.1, momentum=0.9, clip_norm=1.0))
    return train.fit(params, _data_xy(), apply_fn=APPLY, batch_size=8, epochs=4,
                     eval_data=_data_xy(7, seed=1), **kw)


def _same(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_device_order_is_the_host_order():
    key = np.asarray(jax.random.PRNGKey(7))
    n, b = 22, 8  # 3 steps per epoch, the last one wrapping around
    order = jax.jit(lambda k, e: _data.device_order(k, e, 2, n, b))(key, jnp.int32(5))
    host = np.concatenate([_data.epoch_order(key, e, n, b).ravel() for e in (5, 6)])
    np.testing.assert_array_equal(np.asarray(order), host)
    np.testing.assert_array_equal(_data.step_weights(2, n, b), [1] * 6 + [0] * 2)


@pytest.mark.parametrize("n", [1, 2, 1536, 2**16, 2**16 + 1])
def test_the_shuffle_is_one_function_on_host_and_device(n):
    # n <= 2**16: one-operand sorts of packed keys; above: two sort keys
    key = np.asarray(jax.random.PRNGKey(11))
    host = _data.shuffle(key, np.arange(3, 6), n)
    device = jax.jit(lambda k, e: _data.shuffle(k, e, n, jnp))(key, jnp.arange(3, 6))
    np.testing.assert_array_equal(np.asarray(device), host)
    assert host.dtype == np.int32
    assert all(np.array_equal(np.sort(row), np.arange(n)) for row in host)
    assert n < 3 or not np.array_equal(host[0], host[1])  # epochs differ


def test_the_shuffle_names_a_bad_argument():
    key = np.zeros(2, np.uint32)
    with pytest.raises(ValueError, match=r"shuffle: argument 'key' .* got shape \(4,\)"):
        _data.shuffle(np.zeros(4, np.uint32), np.arange(2), 5)
    with pytest.raises(ValueError, match=r"shuffle: argument 'epochs' must be 1-D .* \(\)"):
        _data.shuffle(key, 3, 5)
    with pytest.raises(ValueError, match=r"shuffle: argument 'n' must be an int .* got 0"):
        _data.shuffle(key, np.arange(2), 0)


def test_the_shuffle_is_uniform():
    # 30,000 epochs of 5 examples: where each example lands (16 degrees of freedom) and
    # how often each of the 120 orders occurs (119); chi-square far below p = 0.001
    # (39.3 and 165.8), and each of the 2 x 2 epoch seeds gives a different order
    key = np.asarray(jax.random.PRNGKey(0))
    orders = _data.shuffle(key, np.arange(30000), 5)
    counts = np.stack([np.bincount(orders[:, j], minlength=5) for j in range(5)])
    assert ((counts - 6000) ** 2 / 6000).sum() < 39.3
    _, per_order = np.unique(orders, axis=0, return_counts=True)
    assert len(per_order) == 120
    assert ((per_order - 250) ** 2 / 250).sum() < 165.8
    other = _data.shuffle(np.asarray(jax.random.PRNGKey(1)), np.arange(30000), 5)
    assert (orders != other).any(axis=1).mean() > 0.95  # another seed, other orders


def test_device_resident_and_streamed_data_train_alike(monkeypatch):
    resident = _fit(log_every=2)
    streamed = _fit(log_every=2, device_data_budget=0)
    assert _same(resident.state, streamed.state)
    assert [h["train_loss"] for h in resident.history] == \
        [h["train_loss"] for h in streamed.history]
    assert resident.evals == streamed.evals
    # streamed in programs of 2 steps (a budget of 2 batches), crossing epoch ends
    monkeypatch.setattr(_data, "STREAM_BYTES", 2 * 8 * (6 * 4 + 4 + 4))
    chunked = _fit(log_every=2, device_data_budget=0, wrap_step=chex.assert_max_traces(n=1))
    assert _same(resident.state.params, chunked.state.params)


def test_each_record_holds_its_steps_metrics():
    # the programs return their scalar metrics packed in one array; each record must still
    # hold the metrics make_train_step gives for the same steps, under the same names
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    x, y = _data_xy()
    r = train.fit(params, (x, y), apply_fn=APPLY, tx=tx, batch_size=8, epochs=2,
                  log_every=1, steps_per_dispatch=2, seed=5)
    step = train.make_train_step(train.classification_loss(APPLY), tx)
    state = train.init_state(params, tx, seed=5)
    key = np.asarray(state.key)
    assert [h["step"] for h in r.history] == [2, 3, 5, 6]  # programs of 2, 1, 2, 1 steps
    records = {h["step"] - 1: h for h in r.history}  # a record shows its last step's norms
    losses = []
    for s in range(6):
        rows = _data.epoch_order(key, s // 3, len(x), 8)[s % 3]
        state, m = step(state, (x[rows], y[rows], _data.step_weights(s % 3, len(x), 8)))
        losses.append((float(m["loss"]), float(m["accuracy"])))
        if s in records:
            h = records[s]
            for name in ("grad_norm", "clipped_grad_norm", "update_norm", "learning_rate"):
                np.testing.assert_allclose(h[name], float(m[name]), rtol=1e-5, err_msg=name)
            np.testing.assert_allclose(h["layer_grad_norms"], np.asarray(m["layer_grad_norms"]),
                                       rtol=1e-5)
            first = max(k for k in [-1, *records] if k < s) + 1  # the record's steps
            np.testing.assert_allclose(
                [h["train_loss"], h["train_accuracy"]],
                np.mean(losses[first:s + 1], axis=0), rtol=1e-5)
            assert h["nonfinite_steps"] == 0 and h["steps_in_interval"] == s + 1 - first
    assert _same(r.state.params, state.params)


def test_whole_epoch_programs_compile_once():
    r = _fit(wrap_step=chex.assert_max_traces(n=1), log_every=1)
    assert int(r.state.step) == 12
    assert [e["epoch"] for e in r.evals] == [1, 2, 3, 4]


@pytest.mark.slow
def test_several_epochs_per_program_resume_bitwise(tmp_path):
    from funcgrad.checkpoint import CheckpointManager

    class Stop(Exception):
        pass

    def crash(step, total, record):
        if step >= 6:
            raise Stop

    full = _fit(epochs_per_dispatch=2)
    with CheckpointManager(tmp_path / "ck", every=5) as ck:
        with pytest.raises(Stop):
            _fit(epochs_per_dispatch=2, checkpoints=ck, progress=crash)
        assert ck.latest_step() == 6  # the first program boundary past 5
    with CheckpointManager(tmp_path / "ck", every=5) as ck:
        resumed = _fit(epochs_per_dispatch=2, checkpoints=ck, resume=True)
    assert resumed.resumed_from == 6
    assert _same(full.state, resumed.state)
    assert [e["epoch"] for e in full.evals] == [2, 4]  # at program boundaries


def test_bad_budget_is_named():
    with pytest.raises(ValueError, match="'device_data_budget' must be an int >= 0; got -1"):
        train.FitConfig(device_data_budget=-1)
    with pytest.raises(ValueError, match="'epochs_per_dispatch' must be an int >= 1; got 0"):
        train.FitConfig(epochs_per_dispatch=0)


CACHE_RUN = textwrap.dedent("""
    import json, sys
    from jax._src import monitoring
    counts = {"hits": 0, "misses": 0}
    def listen(event, **kw):
        if event.endswith("/cache_hits"):
            counts["hits"] += 1
        elif event.endswith("/cache_misses"):
            counts["misses"] += 1
    monitoring.register_event_listener(listen)
    from funcgrad.cli import main
    rc = main(["train", "--epochs", "2", "--hidden", "8", "--no-progress"])
    print(json.dumps({"rc": rc, **counts}))
""")


@pytest.mark.slow
def test_a_second_cli_run_hits_the_compilation_cache(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "FUNCGRAD_CACHE_DIR": str(tmp_path / "c")}
    env.pop("FUNCGRAD_COMPILATION_CACHE", None)
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CACHE_RUN], env=env, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["rc"] == second["rc"] == 0
    assert first["hits"] == 0 and first["misses"] >= 3  # init, the epoch program, eval
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert any((tmp_path / "c").iterdir())


def test_a_report_judges_exactness_with_the_queued_program():
    # one NaN example: the step that draws it is skipped, the others train; the first
    # program's metrics are fetched with the second already queued (and run)
    x, y = _data_xy()
    x[5, 0] = np.nan
    reports = []
    r = train.fit(nn.init_mlp(jax.random.PRNGKey(0), SIZES), (x, y), apply_fn=APPLY,
                  tx=train.optimizer(0.1), batch_size=8, epochs=3, log_every=1,
                  on_nonfinite_report=reports.append)
    assert len(reports) == 1 and int(r.state.skipped) == 3  # once per epoch
    rep = reports[0]
    assert rep["step"] < 3 and not rep["exact"]
    assert rep["params_step"] == 6  # the state after the queued second epoch
