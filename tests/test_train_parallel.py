"""Data-parallel training over 4 emulated CPU devices equals single-device training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

#: What both subprocess scripts start from: 4 devices, data, model, optimizer, mesh.
SETUP = textwrap.dedent("""
    import json, sys, functools
    import jax, numpy as np
    from funcgrad import nn, train, parallel

    assert len(jax.devices()) == 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=50).astype(np.int32)
    apply = functools.partial(nn.mlp, activation="relu")
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)
    params = nn.init_mlp(jax.random.PRNGKey(0), [6, 16, 3])
    mesh = parallel.local_mesh()
""")

SCRIPT = SETUP + textwrap.dedent("""
    out = {}
    for k in (1, 3):
        single = train.fit(params, (x, y), apply_fn=apply, tx=tx, batch_size=8, epochs=2,
                           steps_per_dispatch=k, eval_data=(x, y))
        multi = train.fit(params, (x, y), apply_fn=apply, tx=tx, batch_size=8, epochs=2,
                          steps_per_dispatch=k, eval_data=(x, y), mesh=mesh)
        diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(single.state.params),
                                 jax.tree.leaves(multi.state.params))]
        leaf = jax.tree.leaves(multi.state.params)[0]
        out[k] = {"max_diff": max(diffs), "replicated": leaf.sharding.is_fully_replicated,
                  "n_devices": len(leaf.sharding.device_set),
                  "acc": [single.evals[-1]["test_accuracy"], multi.evals[-1]["test_accuracy"]]}
    try:
        train.fit(params, (x, y), apply_fn=apply, tx=tx, batch_size=10, mesh=mesh)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_data_parallel_fit_matches_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("1", "3"):
        assert out[k]["max_diff"] < 1e-5, out[k]
        assert out[k]["replicated"] and out[k]["n_devices"] == 4
        assert abs(out[k]["acc"][0] - out[k]["acc"][1]) < 1e-6
    assert "divisible by 4" in out["error"] and "batch_size=10" in out["error"]


def test_cli_data_parallel_names_the_flag():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "funcgrad.cli", "train", "--data-parallel",
                           "--batch-size", "30", "--epochs", "1", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--batch-size" in proc.stderr and "divisible by 4" in proc.stderr


@pytest.mark.slow
def test_two_process_training_on_localhost(tmp_path):
    """`funcgrad train --coordinator ... --data-parallel` in two processes on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "funcgrad.cli", "train", "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i), "--data-parallel", "--epochs", "1",
         "--hidden", "32", "--no-progress", "--out", str(tmp_path / f"p{i}")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "(process 1)" in outs[0][0]  # the mesh spans both processes' devices
    summary = json.loads((tmp_path / "p0" / "summary.json").read_text())
    assert len(summary["devices"]) == 2 and summary["test_accuracy"] > 0.8
    assert not (tmp_path / "p1").exists()  # only process 0 writes
    assert "test_accuracy" in outs[0][0] and "test_accuracy" not in outs[1][0]  # and prints
    assert all("waiting for the coordinator" in out for out, _ in outs)


RESUME_SCRIPT = SETUP + textwrap.dedent("""
    from funcgrad.checkpoint import CheckpointManager

    class Stop(Exception):
        pass

    def crash(step, total, record):
        if step >= 14:
            raise Stop

    def run(**kw):
        return train.fit(params, (x, y), apply_fn=apply, tx=tx, batch_size=8, epochs=4,
                         mesh=mesh, eval_data=(x, y), **kw)

    def same(a, b):
        return all(np.array_equal(np.asarray(u), np.asarray(v))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    full, again = run(), run()
    streamed = run(device_data_budget=0)
    ck_dir = sys.argv[1]
    with CheckpointManager(ck_dir, every=10) as ck:
        try:
            run(checkpoints=ck, progress=crash)
        except Stop:
            pass
        crashed_at = ck.latest_step()
    with CheckpointManager(ck_dir, every=10) as ck:
        resumed = run(checkpoints=ck, resume=True)
    print(json.dumps({"same_seed": same(full.state, again.state),
                      "streamed": same(full.state, streamed.state),
                      "crashed_at": crashed_at, "resumed_from": resumed.resumed_from,
                      "resumed": same(full.state, resumed.state),
                      "sharded": len(jax.tree.leaves(resumed.state.params)[0]
                                     .sharding.device_set)}))
""")


@pytest.mark.slow
def test_whole_epoch_programs_resume_bitwise_on_4_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "ck")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # 7 steps per epoch: whole-epoch programs end at 7, 14, ...; every=10 saves at 14
    assert out == {"same_seed": True, "streamed": True, "crashed_at": 14,
                   "resumed_from": 14, "resumed": True, "sharded": 4}


COLLECTIVES_SCRIPT = SETUP + textwrap.dedent("""
    import re
    step = train.make_train_step(train.classification_loss(apply), tx)
    state = parallel.replicate(train.init_state(params, tx), mesh)
    batch = parallel.shard_batch((x[:48], y[:48], np.ones(48, np.float32)), mesh)
    text = step.lower(state, batch).compile().as_text()
    print(json.dumps(sorted(set(re.findall(
        r"= \\S+ (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)", text)))))
""")


def test_the_batch_sharded_step_only_all_reduces_the_gradients():
    # every primitive's backward keeps the batch dimension local: the cross-entropy's
    # label scatter included (a flattened index made XLA gather labels across devices)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", COLLECTIVES_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["all-reduce"]
