"""CheckpointManager in a two-process JAX run on localhost (as jax.distributed runs it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

from funcgrad.checkpoint import CheckpointManager, CheckpointWarning  # noqa: E402

SCRIPT = textwrap.dedent("""
    import json, os, sys, warnings
    pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    import jax
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from funcgrad.checkpoint import CheckpointManager, CheckpointWarning, RECORD_NAME

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def full(k):
        return np.arange(12, dtype=np.float32).reshape(4, 3) + k

    def state(k):
        put = lambda shape, sharding, value: jax.make_array_from_callback(
            shape, sharding, lambda i: np.asarray(value)[i])
        return {"w": put((4, 3), rep, full(k)),           # replicated (data parallel)
                "rows": put((4, 3), rows, 10 * full(k)),  # sharded over the processes
                "step": put((), rep, np.int32(k))}

    def mine(restored, k):
        ok = np.array_equal(np.asarray(restored["w"].addressable_data(0)), full(k))
        ok &= int(np.asarray(restored["step"].addressable_data(0))) == k
        for shard in restored["rows"].addressable_shards:
            ok &= np.array_equal(np.asarray(shard.data), (10 * full(k))[shard.index])
        return bool(ok)

    out = {"pid": pid}
    with CheckpointManager(root, keep=2, every=2) as m:
        for k in range(1, 7):
            m.save(k, state(k), metadata={"k": k})
        out["steps"] = m.all_steps()
    multihost_utils.sync_global_devices("saved")
    with CheckpointManager(root, keep=2, every=2) as m:
        restored, s = m.resume(state(0))
        out["resumed"] = [s, mine(restored, s),
                          restored["w"].sharding.is_fully_replicated,
                          len(restored["rows"].addressable_shards)]
        record = json.loads(open(os.path.join(root, str(s), RECORD_NAME)).read())
        out["record_files"] = sorted(record["files"])
        out["record_leaves"] = {x["path"]: x["sha256"] is not None for x in record["leaves"]}
        out["metadata"] = m.metadata(s)
        multihost_utils.sync_global_devices("read")  # both have read step 6 ...
        if pid == 0:  # ... before process 0 garbles its data on the shared disk
            victim = max((os.path.join(r, f) for r, _, fs in os.walk(os.path.join(root, "6"))
                          for f in fs if f != RECORD_NAME), key=os.path.getsize)
            with open(victim, "r+b") as f:
                f.seek(0)
                f.write(b"garbage!" * 4)
        multihost_utils.sync_global_devices("garbled")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored, s = m.restore(state(0))
        out["fallback"] = [s, mine(restored, s)]
        out["warned"] = [str(w.message) for w in caught if issubclass(w.category,
                                                                       CheckpointWarning)]
    print("RESULT " + json.dumps(out), flush=True)
""")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_and_restore_through_checkpoint_manager(tmp_path):
    root = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = str(_port())
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), port, str(root)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    for r in results:
        assert r["steps"] == [4, 6]  # every=2, keep=2: steps 2 was pruned, odd ones skipped
        assert r["resumed"] == [6, True, True, 1]
        assert r["metadata"] == {"k": 6}
        # the record was written after both processes' shards were on disk
        assert any("process_0" in f for f in r["record_files"])
        assert any("process_1" in f for f in r["record_files"])
        # replicated leaves are hashed from each process's copy; the sharded one is not
        assert r["record_leaves"] == {"['rows']": False, "['step']": True, "['w']": True}
        assert r["fallback"] == [4, True]  # both processes fall back to the same step
        assert any("step 6" in w for w in r["warned"]), r["warned"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["4", "6"]
    assert (root / ".funcgrad.lock").exists()
    # a different process count: this single process reads what two processes wrote
    # the template's shardings (this process's one device) decide the layout
    template = {"rows": jnp.zeros((4, 3)), "step": jnp.int32(0), "w": jnp.zeros((4, 3))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)  # step 6 was garbled above
        with CheckpointManager(root, read_only=True) as m:
            restored, step = m.restore(template)
    full = np.arange(12, dtype=np.float32).reshape(4, 3) + 4
    assert step == 4 and int(restored["step"]) == 4
    np.testing.assert_array_equal(np.asarray(restored["w"]), full)
    np.testing.assert_array_equal(np.asarray(restored["rows"]), 10 * full)


FIT = textwrap.dedent("""
    import json, functools, os, signal, sys
    pid, port, root, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    import jax
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    import numpy as np
    from funcgrad import nn, parallel, train
    from funcgrad.checkpoint import CheckpointManager

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=64).astype(np.int32)
    params = nn.init_mlp(jax.random.PRNGKey(0), [6, 16, 3])
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)

    def progress(step, total, record):  # process 1 dies by SIGKILL past the save of 16
        if mode == "kill" and pid == 1 and step >= 20:
            os.kill(os.getpid(), signal.SIGKILL)

    with CheckpointManager(root, keep=2, every=16) as ckpt:
        result = train.fit(params, (x, y), apply_fn=functools.partial(nn.mlp, activation="relu"),
                           tx=tx, batch_size=8, epochs=4, seed=0, checkpoints=ckpt,
                           resume=mode == "resume", mesh=parallel.local_mesh(jax.devices()),
                           hooks=train.FitHooks(progress=progress))
        steps = ckpt.all_steps()
    host = lambda a: np.asarray(a.addressable_data(0))
    print("RESULT " + json.dumps({
        "resumed_from": result.resumed_from, "steps": steps,
        "step": int(host(result.state.step)),
        "state": [host(a).tobytes().hex() for a in jax.tree.leaves(result.state)]}), flush=True)
""")


def _pair(mode: str, root, timeout: float = 240) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = str(_port())
    procs = [subprocess.Popen([sys.executable, "-c", FIT, str(i), port, str(root), mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        if mode == "kill":
            procs[1].wait(timeout=timeout)
            assert procs[1].returncode == -signal.SIGKILL, procs[1].stderr.read()[-3000:]
            procs[0].kill()  # its partner is gone: kill -9 the survivor too
            procs[0].wait(timeout=60)
            return []
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    return results


@pytest.mark.slow
def test_two_process_fit_killed_and_resumed_ends_bitwise_equal(tmp_path):
    """kill -9 one process of a two-process data-parallel fit, restart both with resume."""
    plain = _pair("plain", tmp_path / "plain")
    assert plain[0]["steps"] == [16, 32] and plain[0]["step"] == 32
    assert plain[0]["state"] == plain[1]["state"]  # replicated
    _pair("kill", tmp_path / "killed")
    saved = sorted(p.name for p in (tmp_path / "killed").iterdir() if p.name.isdigit())
    assert saved == ["16"], saved  # steps 17 to 20 or more were done and lost
    resumed = _pair("resume", tmp_path / "killed")
    for r in resumed:
        assert r["resumed_from"] == 16 and r["step"] == 32 and r["steps"] == [16, 32]
        assert r["state"] == plain[0]["state"]  # bitwise: params, optimizer state, step, key


def _cli_refuses_multihost_checkpoints() -> bool:
    import inspect

    from funcgrad.cli import train as cli_train

    return "single-process for now" in inspect.getsource(cli_train)


def _cli_pair(root, port: str, *extra: str) -> list[subprocess.Popen]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return [subprocess.Popen(
        [sys.executable, "-m", "funcgrad.cli", "train", "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i), "--data-parallel", "--epochs", "12",
         "--hidden", "32", "--no-progress", "--checkpoint-dir", str(root),
         "--checkpoint-every", "135", "--keep-checkpoints", "2", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs: list[subprocess.Popen]) -> None:
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]


def _final_leaves(root) -> list:
    record = json.loads((root / "540" / "funcgrad_integrity.json").read_text())
    return [(x["path"], x["sha256"]) for x in record["leaves"]]


@pytest.mark.slow
@pytest.mark.skipif(_cli_refuses_multihost_checkpoints(),
                    reason="funcgrad train still refuses --checkpoint-dir with --coordinator")
def test_cli_two_processes_killed_and_resumed_end_bitwise_equal(tmp_path):
    """`funcgrad train --coordinator ... --checkpoint-dir`: kill -9 one process mid-run,
    restart both with --resume, end bitwise equal to an uninterrupted two-process run."""
    import time

    _finish(_cli_pair(tmp_path / "plain", str(_port())))
    killed = tmp_path / "killed"
    procs = _cli_pair(killed, str(_port()))
    try:
        deadline = time.monotonic() + 240
        while not (killed / "135" / "funcgrad_integrity.json").exists():
            assert time.monotonic() < deadline and procs[1].poll() is None, \
                procs[1].stderr.read()[-3000:] if procs[1].poll() is not None else "timeout"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)  # mid-run, past the first checkpoint
        procs[1].wait(timeout=60)
        procs[0].kill()
        procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == -signal.SIGKILL
    assert not (killed / "540").exists()  # the run was cut short
    _finish(_cli_pair(killed, str(_port()), "--resume"))
    assert _final_leaves(killed) == _final_leaves(tmp_path / "plain")
