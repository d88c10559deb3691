"""funcgrad.checkpoint: bitwise round trips, retention, corruption fallback, atomicity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")
optax = pytest.importorskip("optax")

from funcgrad import checkpoint as ckpt  # noqa: E402
from funcgrad.checkpoint import (  # noqa: E402
    CheckpointManager,
    CheckpointWarning,
    integrity,
)
from funcgrad.checkpoint import directory as ckdir  # noqa: E402


@dataclasses.dataclass
class TinyTrainState:
    params: dict
    opt_state: object
    step: jax.Array
    key: jax.Array
    skipped: jax.Array


jax.tree_util.register_dataclass(
    TinyTrainState,
    data_fields=["params", "opt_state", "step", "key", "skipped"],
    meta_fields=[],
)

OPT = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)


def make_state(seed: int) -> TinyTrainState:
    """A small but realistic state: non-trivial momentum, count, hyperparams and key."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "dense": {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))},
        "scale": jnp.float32(1.5 + seed),
    }
    opt_state = OPT.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25 * (seed + 1)), params)
    updates, opt_state = OPT.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return TinyTrainState(
        params=params,
        opt_state=opt_state,
        step=jnp.int32(seed),
        key=k3,
        skipped=jnp.int32(seed % 3),
    )


TEMPLATE = make_state(0)


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        where = jax.tree_util.keystr(path)
        assert np.asarray(x).dtype == np.asarray(y).dtype, where
        assert np.shape(x) == np.shape(y), where
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)
        # bitwise, not just numerically equal (catches -0.0 vs 0.0, NaN payloads)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), where


def data_file(step_dir: Path) -> Path:
    """The largest array-data file of a step (tensorstore/OCDBT chunks live under ``d/``)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != ckpt.RECORD_NAME]
    chunks = [p for p in files if p.parent.name == "d"] or files  # other layouts: any file
    return max(chunks, key=lambda p: (p.stat().st_size, str(p)))


def listing(directory: Path) -> list[str]:
    """Entries of a checkpoint root, minus orbax's ``_*`` metadata files and the lock file."""
    return sorted(
        n for n in os.listdir(directory) if not n.startswith("_") and n != ckdir.LOCK_NAME
    )


def save_steps(directory: Path, steps, keep: int = 3) -> dict[int, TinyTrainState]:
    states = {}
    with CheckpointManager(directory, keep=keep, every=10) as mngr:
        for s in steps:
            states[s] = make_state(s)
            assert mngr.save(s, states[s], metadata={"loss": 1.0 / (s + 1)})
    return states


# ---------------------------------------------------------------------------- round trip


def test_round_trip_is_bitwise_with_optax_and_dataclass_state(tmp_path):
    state = make_state(7)
    # sanity: the state really contains what the round trip has to preserve
    assert isinstance(state.opt_state.hyperparams["momentum"], jax.Array)
    assert state.opt_state.count.dtype == jnp.int32
    assert state.key.dtype == jnp.uint32 and state.key.shape == (2,)
    with CheckpointManager(tmp_path, keep=2, every=5) as mngr:
        assert mngr.save(10, state, metadata={"loss": 0.5, "note": "x"})
        assert mngr.latest_step() == 10

    # a fresh manager, and a template with different values: everything comes from disk
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        with CheckpointManager(tmp_path) as mngr:
            restored, step = mngr.restore(TEMPLATE)
            assert mngr.metadata(10) == {"loss": 0.5, "note": "x"}
    assert step == 10
    assert isinstance(restored, TinyTrainState)
    assert_bitwise_equal(restored, state)

    # abstract template (ShapeDtypeStructs) and the convenience function
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), TEMPLATE)
    restored2, step2 = ckpt.restore_state(tmp_path, abstract, step=10)
    assert step2 == 10
    assert_bitwise_equal(restored2, state)


def test_integrity_record_is_json_and_no_pickle_is_used(tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle must not be used for checkpoints")

    for name in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, name, no_pickle)
    state = make_state(3)
    with CheckpointManager(tmp_path) as mngr:
        assert mngr.save(100, state)
        restored, _ = mngr.restore(TEMPLATE)
    assert_bitwise_equal(restored, state)
    record = json.loads((tmp_path / "100" / ckpt.RECORD_NAME).read_text())
    assert record["step"] == 100
    assert len(record["leaves"]) == len(jax.tree.leaves(state))
    for module in Path(ckpt.__file__).parent.glob("*.py"):
        source = module.read_text()
        assert not re.search(
            r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle)\b", source, re.M
        ), module.name


def test_template_mismatch_is_a_value_error_not_corruption(tmp_path):
    save_steps(tmp_path, [10])
    bad = dataclasses.replace(TEMPLATE, skipped=jnp.zeros((2,), jnp.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        with CheckpointManager(tmp_path) as mngr, pytest.raises(ValueError, match="skipped"):
            mngr.restore(bad)
    # a leaf only one side has: a TemplateMismatch that lists it
    extra = dataclasses.replace(TEMPLATE, params={**TEMPLATE.params, "new": jnp.ones(())})
    from funcgrad.checkpoint import TemplateMismatch

    with CheckpointManager(tmp_path) as mngr, pytest.raises(TemplateMismatch) as info:
        mngr.restore(extra)
    assert (info.value.step, info.value.only_in_checkpoint,
            info.value.only_in_template) == (10, [], [".params['new']"])


# ------------------------------------------------------------------------------- policy


def test_should_save_and_keep_last_k(tmp_path):
    with CheckpointManager(tmp_path, keep=3, every=10) as mngr:
        assert mngr.should_save(20) and not mngr.should_save(25)
        assert mngr.save(25, TEMPLATE) is False  # off-interval and not forced
        for s in range(10, 70, 10):
            assert mngr.save(s, make_state(s))
        assert mngr.all_steps() == [40, 50, 60]
        assert mngr.latest_step() == 60
    assert listing(tmp_path) == ["40", "50", "60"]
    with CheckpointManager(tmp_path, keep=3, every=10) as mngr:
        assert mngr.all_steps() == [40, 50, 60]
        restored, step = mngr.restore(TEMPLATE)
    assert step == 60
    assert_bitwise_equal(restored, make_state(60))


def test_existing_good_checkpoint_is_never_overwritten(tmp_path):
    states = save_steps(tmp_path, [10])
    with CheckpointManager(tmp_path, every=10) as mngr:
        with pytest.warns(CheckpointWarning, match="step 10 already exists"):
            assert mngr.save(10, make_state(99), force=True) is False
        restored, step = mngr.restore(TEMPLATE, step=10)
    assert step == 10
    assert_bitwise_equal(restored, states[10])


# --------------------------------------------------------------------------- corruption


def _truncate(step_dir: Path) -> None:
    f = data_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble(step_dir: Path) -> None:
    f = data_file(step_dir)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    f.write_bytes(bytes(data))  # same size: only the checksum can tell


def _delete_file(step_dir: Path) -> None:
    data_file(step_dir).unlink()


def _drop_record(step_dir: Path) -> None:
    (step_dir / ckpt.RECORD_NAME).unlink()


def _garble_record(step_dir: Path) -> None:
    rec = step_dir / ckpt.RECORD_NAME
    rec.write_text(rec.read_text().replace('"sha256": "', '"sha256": "0', 1))


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (_truncate, "truncated"),
        (_garble, "sha256 mismatch"),
        (_delete_file, "missing"),
        (_drop_record, "integrity record .* missing"),
        (_garble_record, "integrity record is corrupted"),
    ],
    ids=["truncated", "garbled", "file-deleted", "no-record", "bad-record"],
)
def test_corrupted_newest_falls_back_to_previous(tmp_path, corrupt, reason):
    states = save_steps(tmp_path, [10, 20])
    corrupt(tmp_path / "20")
    with CheckpointManager(tmp_path, every=10) as mngr:
        assert mngr.latest_step() == 10
        assert mngr.all_steps() == [10]
        with pytest.warns(CheckpointWarning, match=f"step 20.*{reason}"):
            restored, step = mngr.restore(TEMPLATE)
    assert step == 10
    assert_bitwise_equal(restored, states[10])


def _resign(step_dir: Path, edit) -> None:
    """Re-sign a step's record after ``edit(record)`` so that only deeper checks remain."""
    path = step_dir / ckpt.RECORD_NAME
    record = json.loads(path.read_text())
    record.pop("record_sha256")
    edit(record)
    record["files"] = {
        rel: {"size": p.stat().st_size, "sha256": integrity.file_sha256(p)}
        for rel, p in integrity.data_files(step_dir)
    }
    record["record_sha256"] = hashlib.sha256(integrity.canonical(record)).hexdigest()
    path.write_text(json.dumps(record))


def test_leaf_checksum_and_orbax_errors_are_caught_behind_a_valid_record(tmp_path):
    states = save_steps(tmp_path, [10, 20, 30])

    def flip_leaf_digest(record):
        record["leaves"][0]["sha256"] = "0" * 64

    _resign(tmp_path / "30", flip_leaf_digest)  # data intact, recorded leaf digest wrong
    shutil.rmtree(tmp_path / "20" / "default")  # orbax has nothing to read
    _resign(tmp_path / "20", lambda record: None)

    with CheckpointManager(tmp_path, every=10) as mngr:
        assert mngr.latest_step() == 30  # the files match their (re-signed) record ...
        with pytest.warns(CheckpointWarning) as record:
            restored, step = mngr.restore(TEMPLATE)  # ... but restore digs deeper
    messages = [str(w.message) for w in record if issubclass(w.category, CheckpointWarning)]
    assert any("step 30" in m and "checksum mismatch" in m for m in messages), messages
    assert any("step 20" in m and "orbax could not read it" in m for m in messages), messages
    assert step == 10
    assert_bitwise_equal(restored, states[10])


def test_partial_checkpoints_are_ignored_with_a_warning(tmp_path):
    states = save_steps(tmp_path, [10])
    tmp_dir = tmp_path / "20.orbax-checkpoint-tmp"  # a save killed mid-write
    (tmp_dir / "default").mkdir(parents=True)
    (tmp_dir / "default" / "junk").write_bytes(b"\x00" * 16)
    (tmp_path / "30").mkdir()  # a step directory without an integrity record
    (tmp_path / "30" / "junk").write_bytes(b"\x01" * 16)

    with CheckpointManager(tmp_path, every=10) as mngr:
        assert mngr.latest_step() == 10
        with pytest.warns(CheckpointWarning) as record:
            restored, step = mngr.restore(TEMPLATE)
        messages = [str(w.message) for w in record]
        assert any("step 30" in m and "integrity record" in m for m in messages), messages
        assert any("step 20" in m and "incomplete" in m for m in messages), messages
        assert step == 10
        assert_bitwise_equal(restored, states[10])

        # the next save replaces the bad step 30 and clears the stale temp dir
        with pytest.warns(CheckpointWarning, match="replacing unusable checkpoint for step 30"):
            assert mngr.save(30, make_state(30))
        assert mngr.all_steps() == [10, 30]
    # the unverifiable old step 30 was moved aside, not deleted
    assert listing(tmp_path) == [ckdir.UNVERIFIED_DIR, "10", "30"]
    (aside,) = (tmp_path / ckdir.UNVERIFIED_DIR).iterdir()
    assert aside.name.startswith("30-")
    assert (aside / "junk").read_bytes() == b"\x01" * 16


def test_no_usable_checkpoint_raises(tmp_path):
    with CheckpointManager(tmp_path) as mngr, pytest.raises(FileNotFoundError):
        mngr.restore(TEMPLATE)
    save_steps(tmp_path, [10])
    _truncate(tmp_path / "10")
    with CheckpointManager(tmp_path) as mngr:
        assert mngr.latest_step() is None
        with pytest.warns(CheckpointWarning), pytest.raises(RuntimeError, match="step 10"):
            mngr.restore(TEMPLATE)


# ----------------------------------------------------------------------------- atomicity


def test_failed_save_midway_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    states = save_steps(tmp_path, [10])

    def fail_midway(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "half_written").write_bytes(b"\x00" * 8)
        raise OSError("disk full (simulated)")

    with CheckpointManager(tmp_path, keep=1, every=10) as mngr:
        with monkeypatch.context() as m:
            m.setattr(ocp.StandardCheckpointHandler, "save", fail_midway)
            m.setattr(ocp.StandardCheckpointHandler, "async_save", fail_midway)
            with pytest.raises(OSError, match="disk full"):
                mngr.save(20, make_state(20))
        assert mngr.all_steps() == [10]

        # a crash after orbax finished but before the integrity record was written
        original = ocp.CheckpointManager.save

        def save_then_die(self, *args, **kwargs):
            original(self, *args, **kwargs)
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(ocp.CheckpointManager, "save", save_then_die)
            with pytest.raises(KeyboardInterrupt):
                mngr.save(30, make_state(30))
        assert mngr.all_steps() == [10]  # keep=1 did not delete the good one
    assert listing(tmp_path) == ["10"]
    restored, step = ckpt.restore_state(tmp_path, TEMPLATE)
    assert step == 10
    assert_bitwise_equal(restored, states[10])


def test_bad_metadata_writes_nothing(tmp_path):
    with CheckpointManager(tmp_path) as mngr:
        with pytest.raises(TypeError, match="JSON"):
            mngr.save(10, TEMPLATE, metadata={"bad": object()}, force=True)
        assert mngr.all_steps() == []
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------ optional orbax


def test_import_is_light_and_missing_orbax_is_a_clear_import_error(tmp_path):
    code = f"""
import sys
import funcgrad.checkpoint as c
assert "orbax" not in sys.modules, "import funcgrad.checkpoint imported orbax"
sys.modules["orbax"] = None
sys.modules["orbax.checkpoint"] = None
try:
    c.CheckpointManager({str(tmp_path / "ck")!r})
except ImportError as e:
    print(e)
else:
    raise SystemExit("no ImportError")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert 'pip install "funcgrad[checkpoint]"' in out
    assert not (tmp_path / "ck").exists()
