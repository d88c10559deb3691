"""funcgrad.checkpoint under faults (issue 12): cadence, nothing lost, one-line errors.

Every test here failed on the code before this change. Public names are looked up as
``ckpt.<name>`` inside the tests so that each test fails on its own against older code.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import pytest

pytest.importorskip("orbax.checkpoint")

from funcgrad import checkpoint as ckpt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATE = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3), "n": jnp.int32(4)}


def state(step: int) -> dict:
    return {"w": STATE["w"] + step, "b": STATE["b"] * step, "n": jnp.int32(step)}


def save(directory: Path, steps, keep: int = 3) -> None:
    with ckpt.CheckpointManager(directory, keep=keep, every=10) as m:
        for s in steps:
            assert m.save(s, state(s))


def truncate(step_dir: Path) -> None:
    data = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    f = max(data, key=lambda p: p.stat().st_size)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def one_line(text: str) -> None:
    assert "\n" not in text and "Traceback" not in text, text


# ------------------------------------------------------------- item 1: save cadence


def test_should_save_when_a_multiple_is_crossed(tmp_path):
    with ckpt.CheckpointManager(tmp_path, every=350) as m:
        assert m.should_save(700) and not m.should_save(696)  # one argument: unchanged
        boundaries = list(range(0, 1351, 8)) + [1350]  # fused dispatches of 8 steps
        due = [b for a, b in zip(boundaries, boundaries[1:], strict=False)
               if m.should_save(b, previous_step=a)]
        assert due == [352, 704, 1056]  # the first boundary past 350, 700 and 1050
        assert m.should_save(400, previous_step=349) and not m.should_save(400, 350)
        with pytest.raises(ValueError, match="should_save: argument 'previous_step'"):
            m.should_save(10, previous_step=11)
        assert m.save(352, state(1), previous_step=344)
        assert not m.save(360, state(2), previous_step=352)
        assert m.all_steps() == [352]


# -------------------------------------------- item 4: nothing restorable, nothing deleted


@pytest.mark.parametrize("damage", ["truncate", "drop-record"])
def test_no_usable_checkpoint_is_reported_and_never_deleted(tmp_path, damage):
    save(tmp_path, [10, 20])
    for s in (10, 20):
        if damage == "truncate":
            truncate(tmp_path / str(s))
        else:
            (tmp_path / str(s) / ckpt.RECORD_NAME).unlink()
    before = {s: tree_bytes(tmp_path / str(s)) for s in (10, 20)}
    with ckpt.CheckpointManager(tmp_path, keep=1, every=10) as m:
        assert sorted(m.unusable_steps()) == [10, 20]
        with pytest.warns(ckpt.CheckpointWarning), pytest.raises(
            ckpt.NoUsableCheckpointError
        ) as info:
            m.resume(STATE)
        message = str(info.value)
        one_line(message)
        assert "nothing could be restored" in message
        assert "step 20:" in message and "step 10:" in message
        assert isinstance(info.value, RuntimeError)  # what restore raised before
        assert set(info.value.reasons) == {10, 20}
        # the run goes on elsewhere; its save must not delete what it could not verify
        with pytest.warns(ckpt.CheckpointWarning, match="moved unverifiable"):
            assert m.save(30, state(30))
        assert m.all_steps() == [30]
    aside = tmp_path / ".funcgrad-unverified"
    moved = {int(p.name.split("-")[0]): tree_bytes(p) for p in aside.iterdir()}
    assert moved == before


def test_resume_on_an_empty_directory_starts_fresh(tmp_path):
    with ckpt.CheckpointManager(tmp_path / "new") as m:
        got, step = m.resume(STATE)
    assert step is None and got is STATE


# --------------------------------------------------- item 6: leftovers of a killed prune


def test_leftover_deleting_directory_is_removed_at_start(tmp_path):
    save(tmp_path, [10])
    trash = tmp_path / ".funcgrad-deleting-5-0123abcd"
    (trash / "default").mkdir(parents=True)
    (trash / "default" / "blob").write_bytes(b"x" * 64)
    with ckpt.CheckpointManager(tmp_path, every=10) as m:
        assert not trash.exists()
        assert m.all_steps() == [10]


# ------------------------------------------------------------- two runs, one directory


def test_second_manager_on_a_directory_is_refused(tmp_path):
    with ckpt.CheckpointManager(tmp_path) as first:
        with pytest.raises(ckpt.CheckpointLocked) as info:
            ckpt.CheckpointManager(tmp_path)
        one_line(str(info.value))
        assert str(tmp_path) in str(info.value) and f"process {os.getpid()}" in str(info.value)
        assert info.value.pid == os.getpid() and isinstance(info.value, ckpt.CheckpointError)
        first.save(100, state(1), force=True)
        # reading is always allowed, even while a run holds the directory
        _, step = ckpt.restore_state(tmp_path, STATE)
        assert step == 100
    with ckpt.CheckpointManager(tmp_path) as again:  # released by close()
        assert again.latest_step() == 100


def test_lock_of_a_killed_process_is_released(tmp_path):
    code = (
        "import sys, time\n"
        "from funcgrad.checkpoint import CheckpointManager\n"
        f"m = CheckpointManager({str(tmp_path)!r})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ckpt.CheckpointLocked, match=f"locked by process {proc.pid}"):
            ckpt.CheckpointManager(tmp_path)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the child
        proc.wait()
    with ckpt.CheckpointManager(tmp_path) as m:
        assert m.latest_step() is None


# ------------------------------------------------- unusable directories fail up front


def test_a_file_or_a_path_under_a_file_fails_at_once(tmp_path):
    afile = tmp_path / "ck"
    afile.write_text("not a directory")
    for path, why in ((afile, "is not a directory"), (afile / "sub", "could not be created")):
        with pytest.raises(ckpt.CheckpointError) as info:
            ckpt.CheckpointManager(path)
        one_line(str(info.value))
        assert str(info.value).startswith("CheckpointManager: argument 'directory'")
        assert why in str(info.value) and str(path) in str(info.value)


def test_unwritable_directory_fails_at_once(tmp_path, monkeypatch):
    from funcgrad.checkpoint import directory

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(directory, "open", read_only, raising=False)
    with pytest.raises(ckpt.CheckpointError, match="is not writable.*Read-only file system"):
        ckpt.CheckpointManager(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write")
def test_read_only_directory_fails_at_once(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ckpt.CheckpointError, match="is not writable"):
            ckpt.CheckpointManager(ro)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("how", ["oserror", "wrapped"])
def test_full_disk_is_one_line_and_keeps_older_checkpoints(tmp_path, monkeypatch, how):
    import orbax.checkpoint as ocp

    save(tmp_path, [10])

    def disk_full(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "half_written").write_bytes(b"\x00" * 8)
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if how == "oserror":
            raise err
        raise ValueError(f"Error writing local file: [Errno 28] {os.strerror(errno.ENOSPC)}")

    with ckpt.CheckpointManager(tmp_path, keep=1, every=10) as m:
        monkeypatch.setattr(ocp.StandardCheckpointHandler, "save", disk_full)
        monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", disk_full)
        with pytest.raises(ckpt.CheckpointError) as info:
            m.save(20, state(20))
        monkeypatch.undo()
        message = str(info.value)
        one_line(message)
        assert "step 20" in message and "No space left on device" in message
        assert "older checkpoints are kept" in message
        assert m.all_steps() == [10]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit()) == ["10"]


# ------------------------------------------------------------------- orbax missing


def test_missing_orbax_is_one_clear_import_error_that_matches_the_readme(tmp_path):
    code = f"""
import sys
sys.modules["orbax"] = None
sys.modules["orbax.checkpoint"] = None
from funcgrad.checkpoint import CheckpointManager, OrbaxMissingError
try:
    CheckpointManager({str(tmp_path / "ck")!r})
except OrbaxMissingError as e:
    assert isinstance(e, ImportError)
    assert e.__cause__ is None and e.__suppress_context__
    print(e)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("\n") == 1, out
    assert 'pip install "funcgrad[checkpoint]"' in out
    assert 'pip install -e ".[checkpoint]"' in out
    assert 'pip install -e ".[checkpoint]"' in (ROOT / "README.md").read_text()


# --------------------------------------------------------------- warnings and log noise


def test_checkpoint_warning_prints_as_one_line(tmp_path):
    text = ckpt.format_warning(
        ckpt.CheckpointWarning("skipping step 20: bad\x00"), ckpt.CheckpointWarning,
        "/x/manager.py", 12, "warnings.warn(...)",
    )
    assert text == "CheckpointWarning: skipping step 20: bad\\x00\n"
    script = tmp_path / "run.py"
    script.write_text(
        "import warnings\n"
        "from funcgrad.checkpoint import CheckpointWarning, format_warning\n"
        "warnings.formatwarning = format_warning\n"
        "warnings.warn('skipping step 7', CheckpointWarning)\n"
        "warnings.warn('plain', UserWarning)\n"
    )
    err = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    ).stderr
    lines = err.splitlines()
    assert lines[0] == "CheckpointWarning: skipping step 7", err
    assert "UserWarning: plain" in lines[1] and "warnings.warn('plain'" in lines[2], err
    assert "warnings.warn('skipping" not in err  # no source line for checkpoint warnings


def test_zeroed_metadata_file_logs_no_nul_bytes(tmp_path, caplog, capfd):
    save(tmp_path, [10, 20])
    meta = tmp_path / "20" / "_CHECKPOINT_METADATA"
    meta.write_bytes(b"\x00" * meta.stat().st_size)
    caplog.set_level(logging.WARNING)
    with ckpt.CheckpointManager(tmp_path, every=10) as m:
        with pytest.warns(ckpt.CheckpointWarning, match="step 20"):
            _, step = m.restore(STATE)
        with pytest.warns(ckpt.CheckpointWarning, match="step 20"):
            m.save(20, state(20))
    assert step == 10
    out, err = capfd.readouterr()
    logged = [r.getMessage() for r in caplog.records]
    assert any("_CHECKPOINT_METADATA" in t for t in logged), logged  # orbax did complain
    for text in [out, err, *logged]:
        assert "\x00" not in text


def test_sanitize_keeps_messages_printable():
    assert ckpt.errors.sanitize("a\x00b\n\tc\x1b[31m") == "a\\x00b c\\x1b[31m"
    assert ckpt.errors.sanitize("x" * 50, limit=10) == "x" * 10 + "..."


# ------------------------------------------------------------------ kill -9 mid-save

_WRITER = """
import sys
import jax.numpy as jnp
from funcgrad.checkpoint import CheckpointManager

def state(step):
    return {"w": jnp.arange(6.0).reshape(2, 3) + step, "n": jnp.int32(step)}

with CheckpointManager(sys.argv[1], keep=2, every=1) as m:
    _, start = m.resume(state(0))
    step = start or 0
    while True:
        step += 1
        m.save(step, state(step))
        print(step, flush=True)
"""


@pytest.mark.slow
def test_kill_9_mid_save_loses_nothing_and_unlocks(tmp_path):
    directory = tmp_path / "ck"
    last = 0
    for delay in (0.0, 0.07):  # the second writer resumes after the first is killed
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            for _ in range(3):
                last = int(proc.stdout.readline())
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait()
        with ckpt.CheckpointManager(directory, keep=2, every=1) as m:  # the lock is free
            leftovers = [p.name for p in directory.iterdir()
                         if p.name.startswith(".funcgrad-deleting-")]
            assert leftovers == []
            assert all(s > last for s in m.unusable_steps())  # only a save in flight
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ckpt.CheckpointWarning)
                got, step = m.restore({"w": STATE["w"], "n": jnp.int32(0)})
        assert step >= last
        assert float(got["w"][0, 0]) == step and int(got["n"]) == step
