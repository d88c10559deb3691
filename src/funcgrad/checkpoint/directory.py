"""The checkpoint root on disk: its lock, its layout, and how things leave it.

Layout of a checkpoint root::

    <directory>/
      .funcgrad.lock               # flock'ed by the one live CheckpointManager; holds its pid
      10/                          # one orbax step directory per saved step
        default/ ...               # orbax / tensorstore data (no pickle anywhere)
        funcgrad_integrity.json    # written last: sha256 of every file and every leaf
      30.orbax-checkpoint-tmp/     # a save that never finished (removed by the next save)
      .funcgrad-unverified/        # step directories that failed verification, moved aside
        30-20260101T120000Z/       #   (never deleted by funcgrad)
      .funcgrad-deleting-*         # a verified old step being deleted (removed at start)

Only *verified* old checkpoints and orbax's unfinished temporary directories are ever
deleted. A step directory that could not be verified is moved into
``.funcgrad-unverified/`` instead, so a checkpoint is never lost to a bug in a check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from .errors import CheckpointError, CheckpointLocked, sanitize

__all__ = [
    "LOCK_NAME",
    "TRASH_PREFIX",
    "UNVERIFIED_DIR",
    "DirectoryLock",
    "clear_trash",
    "move_aside",
    "prepare_directory",
    "remove_tree",
    "scan",
]

LOCK_NAME = ".funcgrad.lock"
TRASH_PREFIX = ".funcgrad-deleting-"
UNVERIFIED_DIR = ".funcgrad-unverified"
_TMP_MARKER = ".orbax-checkpoint-tmp"
_TMP_RE = re.compile(r"^(\d+)" + re.escape(_TMP_MARKER))


def _unusable(directory: Path, why: str, err: BaseException | None = None) -> CheckpointError:
    detail = f" ({sanitize(err)})" if err is not None else ""
    return CheckpointError(
        f"CheckpointManager: argument 'directory' must be a writable directory; "
        f"got {str(directory)!r}, which {why}{detail}"
    )


def prepare_directory(directory: Path) -> None:
    """Creates ``directory`` if needed and proves that files can be written in it.

    Args:
        directory: The checkpoint root.

    Raises:
        CheckpointError: It is a file, cannot be created, or is not writable.
    """
    if directory.exists() and not directory.is_dir():
        raise _unusable(directory, "is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unusable(directory, "could not be created", e) from e
    probe = directory / f".funcgrad-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as e:
        raise _unusable(directory, "is not writable", e) from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.funcgrad.lock`` for one live manager.

    The lock belongs to the open file, so the operating system releases it when the
    process exits, however it exits (a ``kill -9`` included). The holder's pid is
    written into the file so that a refused second run can name it.

    Args:
        directory: The checkpoint root (must exist).

    Raises:
        CheckpointLocked: Another open manager, in this or another process, holds it.
    """

    def __init__(self, directory: Path) -> None:
        import fcntl  # POSIX only; imported here so the module loads everywhere

        self.path = directory / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointLocked(directory, holder) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Releases the lock (idempotent); the lock file itself stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the file releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def scan(directory: Path) -> tuple[dict[int, Path], dict[int, list[Path]]]:
    """Finalized step directories and unfinished orbax temp directories, by step.

    Args:
        directory: The checkpoint root.

    Returns:
        ``(steps, partial)``: step -> directory, and step -> temporary directories.
    """
    steps: dict[int, Path] = {}
    partial: dict[int, list[Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return steps, partial
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        if e.name.isdigit() and str(int(e.name)) == e.name:
            steps[int(e.name)] = Path(e.path)
        elif m := _TMP_RE.match(e.name):
            partial.setdefault(int(m.group(1)), []).append(Path(e.path))
    return steps, partial


def remove_tree(directory: Path, path: Path) -> None:
    """Deletes ``path`` by first renaming it out of the step namespace, then rmtree.

    A kill between the two leaves a ``.funcgrad-deleting-*`` directory, which
    :func:`clear_trash` removes at the next start.

    Args:
        directory: The checkpoint root.
        path: A verified old step, or an unfinished orbax temp directory.
    """
    trash = directory / f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def move_aside(directory: Path, path: Path) -> Path | None:
    """Moves an unverified step directory into ``.funcgrad-unverified/`` (never deletes).

    Args:
        directory: The checkpoint root.
        path: The step directory.

    Returns:
        Where it now is, or None if it had already gone.
    """
    aside = directory / UNVERIFIED_DIR
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = aside / f"{path.name}-{stamp}"
    while target.exists():
        target = aside / f"{path.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def clear_trash(directory: Path) -> None:
    """Removes leftover ``.funcgrad-deleting-*`` directories of an interrupted prune.

    Args:
        directory: The checkpoint root.
    """
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(directory):
            if e.name.startswith(TRASH_PREFIX):
                shutil.rmtree(e.path, ignore_errors=True)
