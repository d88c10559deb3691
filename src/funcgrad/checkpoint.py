"""Crash-safe training checkpoints on top of orbax-checkpoint.

:class:`CheckpointManager` saves an arbitrary JAX pytree (typically a ``TrainState``
dataclass holding params, an optax state, the step, a PRNG key, ...) every ``every``
steps, keeps the newest ``keep`` good checkpoints, and restores the newest checkpoint
that is provably intact.

Layout of ``directory``::

    <directory>/
      10/                          # one orbax step directory per saved step
        default/ ...               # orbax / tensorstore data (no pickle anywhere)
        funcgrad_integrity.json    # written last: sha256 of every file and every leaf
      20/ ...
      30.orbax-checkpoint-tmp/     # a save that never finished: ignored (with a warning)

A step counts as *good* only when its integrity record exists, is itself intact, and
every file it lists still has the recorded size and sha256. :meth:`CheckpointManager.restore`
additionally checks that every restored leaf hashes to the recorded digest, so a
checkpoint that orbax can read but that decodes to different values is rejected too.
Anything else (a leftover orbax temporary directory, a step directory without a record,
truncated or garbled files, a file that vanished, orbax failing to read it) is skipped
with a :class:`CheckpointWarning` that names the step and the reason, and the next
newest good checkpoint is used.

Orbax is an optional dependency (``pip install "funcgrad[checkpoint]"``); it is imported
only when a :class:`CheckpointManager` is created, so ``import funcgrad.checkpoint`` stays
light. Checkpoints live on a local (or locally mounted) filesystem and are written by a
single process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = [
    "CheckpointManager",
    "CheckpointWarning",
    "restore_state",
    "save_state",
]

T = TypeVar("T")

RECORD_NAME = "funcgrad_integrity.json"
_RECORD_FORMAT = "funcgrad-checkpoint-integrity"
_RECORD_VERSION = 1
_TMP_MARKER = ".orbax-checkpoint-tmp"
_TMP_RE = re.compile(r"^(\d+)" + re.escape(_TMP_MARKER))
_TRASH_PREFIX = ".funcgrad-deleting-"
_CHUNK = 1 << 20
_INSTALL_HINT = 'pip install "funcgrad[checkpoint]"'


class CheckpointWarning(UserWarning):
    """A checkpoint was found unusable (partial, corrupted, unverifiable) and skipped."""


def _import_orbax() -> Any:
    """Imports ``orbax.checkpoint`` or raises an ImportError with the install hint."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # ModuleNotFoundError, or None planted in sys.modules
        raise ImportError(
            "funcgrad.checkpoint needs the optional dependency orbax-checkpoint, which could "
            f"not be imported ({e}). Install it with: {_INSTALL_HINT}"
        ) from e
    return ocp


# ----------------------------------------------------------------------------- logging


class _DropOrbaxRecords(logging.Filter):
    """Drops absl log records emitted from orbax's own source files below ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        return "orbax" not in Path(record.pathname).parts


@contextlib.contextmanager
def _quiet_orbax(level: int) -> Iterator[None]:
    """Hides orbax's (absl) log records below ``level`` for the duration of the block.

    Only records logged from orbax source files are affected; this module reports its own
    findings through :mod:`warnings` and exceptions, which are never filtered.
    """
    logger = logging.getLogger("absl")
    flt = _DropOrbaxRecords(level)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


# ----------------------------------------------------------------------------- hashing


def _host_array(leaf: Any) -> np.ndarray:
    """A host numpy view of one pytree leaf (typed PRNG keys as their raw key data)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            raise NotImplementedError(
                "funcgrad.checkpoint hashes every leaf on the host and so supports only "
                "fully addressable (single-process) arrays"
            )
        return np.asarray(jax.device_get(leaf))
    return np.asarray(leaf)


def _leaf_record(path: Any, leaf: Any) -> dict[str, Any]:
    arr = np.ascontiguousarray(_host_array(leaf))
    return {
        "path": jax.tree_util.keystr(path),
        "shape": list(np.shape(leaf)),
        "dtype": str(getattr(leaf, "dtype", arr.dtype)),
        "sha256": hashlib.sha256(arr.view(np.uint8).reshape(-1)).hexdigest(),
    }


def _leaf_records(tree: Any) -> list[dict[str, Any]]:
    """Path, shape, dtype and sha256 of the bytes of every leaf, in flattening order."""
    return [_leaf_record(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _template_signature(template: Any) -> list[tuple[str, list[int], str]]:
    """Path, shape and dtype of every leaf of ``template`` (arrays or ShapeDtypeStructs)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        out.append((jax.tree_util.keystr(path), list(np.shape(leaf)), str(dtype)))
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _data_files(step_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``step_dir`` except the integrity record (and its temp)."""
    out = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(step_dir).as_posix()
            if rel == RECORD_NAME or rel.startswith(RECORD_NAME + "."):
                continue
            out.append((rel, p))
    return out


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temp file, fsync and ``os.replace``."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _abstract_leaf(leaf: Any) -> Any:
    """The restore target for one template leaf (what ``to_shape_dtype_struct`` gives)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, np.ndarray | np.generic):
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
    return leaf  # Python scalars are their own target


class _BadCheckpoint(Exception):
    """Internal: the checkpoint of one step is unusable; ``str(e)`` says why."""


# ----------------------------------------------------------------------------- manager


class CheckpointManager:
    """Saves, retains and restores training-state checkpoints with integrity checks.

    Every save is atomic (orbax writes into a temporary directory and renames it once it
    is complete) and is followed by an integrity record with the sha256 of every file and
    of every leaf's bytes, written atomically last. Only then are checkpoints beyond the
    newest ``keep`` good ones deleted, so a crash at any point leaves the previous good
    checkpoints untouched. An existing good checkpoint is never overwritten.

    Use as a context manager, or call :meth:`close` when done. Example (not run)::

        with CheckpointManager("runs/exp1/ckpt", keep=3, every=100) as ckpt:
            if ckpt.latest_step() is not None:
                state, step = ckpt.restore(state)
            for step in range(step + 1, num_steps + 1):
                state = train_step(state, batch)
                ckpt.save(step, state, metadata={"loss": float(loss)})  # every 100 steps

    Args:
        directory: Root directory of the checkpoints (created if missing). Local paths
            only.
        keep: How many of the newest good checkpoints to keep (at least 1).
        every: Save interval in steps: :meth:`should_save` is true for multiples of it.
        verify: After writing, read the checkpoint back through orbax (onto the host
            CPU where available) and compare every leaf's sha256 with the state that
            was saved before recording it as good. Costs one extra read per save.

    Raises:
        ImportError: orbax-checkpoint is not installed.
        ValueError: ``keep`` or ``every`` is not a positive integer, or ``directory`` is
            a remote URL.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int = 3,
        every: int = 100,
        verify: bool = True,
    ) -> None:
        ocp = _import_orbax()
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if "://" in os.fspath(directory):
            raise ValueError(f"only local directories are supported, got {directory!r}")
        self.directory = Path(os.path.abspath(os.fspath(directory)))
        self.keep = keep
        self.every = every
        self.verify = verify
        self._ocp = ocp
        # Orbax does the atomic write; retention, step policy and verification are ours,
        # so orbax keeps everything (no max_to_keep) and never deletes tmp dirs on start.
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
        with _quiet_orbax(logging.WARNING):
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
        # step -> (stat signature of its files, reason or None): avoids re-hashing.
        self._check_cache: dict[int, tuple[tuple[Any, ...], str | None]] = {}
        self._closed = False

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending orbax work and releases its resources (idempotent)."""
        if not self._closed:
            self._closed = True
            with _quiet_orbax(logging.WARNING):
                self._mngr.wait_until_finished()
                self._mngr.close()

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.directory)!r}, keep={self.keep}, every={self.every})"

    # -- inspection ----------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is on the save interval.

        Args:
            step: The training step.

        Returns:
            True when ``step`` is a multiple of ``every``.
        """
        return int(step) % self.every == 0

    def all_steps(self) -> list[int]:
        """Steps that have a complete, verified checkpoint, oldest first.

        Partial or corrupted step directories are not listed (:meth:`restore` warns about
        them). Verification hashes the files once per manager; later calls only re-hash
        files whose size or modification time changed.

        Returns:
            The good steps in ascending order.
        """
        steps, _ = self._scan()
        return [s for s in sorted(steps) if self._check(s) is None]

    def latest_step(self) -> int | None:
        """The newest step with a complete, verified checkpoint.

        Returns:
            That step, or None when there is no good checkpoint.
        """
        steps, _ = self._scan()
        for s in sorted(steps, reverse=True):
            if self._check(s) is None:
                return s
        return None

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The user metadata stored with a good checkpoint.

        Args:
            step: The step; defaults to :meth:`latest_step`.

        Returns:
            The ``metadata`` dict given to :meth:`save` (empty if none was given).

        Raises:
            FileNotFoundError: There is no good checkpoint for ``step``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no good checkpoint in {self.directory}")
        if self._check(int(step)) is not None:
            raise FileNotFoundError(f"no good checkpoint for step {step} in {self.directory}")
        return dict(self._read_record(int(step))["metadata"])

    # -- save ----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` as the checkpoint of ``step`` if it is on the save interval.

        When this returns True the checkpoint is complete on disk, verified and recorded
        as good, and checkpoints beyond the newest ``keep`` good ones have been deleted.
        If anything fails, the new checkpoint's directory is removed and the error is
        re-raised; existing checkpoints are never touched by a failed save. A good
        checkpoint that already exists for ``step`` is never overwritten (a
        :class:`CheckpointWarning` is emitted and nothing is written); a partial or
        corrupted one is replaced.

        Args:
            step: The training step (non-negative).
            state: Any pytree of arrays (jax or numpy) and scalars.
            metadata: JSON-serialisable dict stored in the integrity record; read it back
                with :meth:`metadata`.
            force: Save even if :meth:`should_save` is false for ``step``.

        Returns:
            True if a checkpoint was written, False if the step was skipped.

        Raises:
            ValueError: ``step`` is negative.
            TypeError: ``metadata`` is not JSON-serialisable.
            RuntimeError: the read-back verification failed.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if not force and not self.should_save(step):
            return False
        if metadata is None:
            metadata = {}
        try:
            metadata = json.loads(json.dumps(dict(metadata)))
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from e

        step_dir = self._step_dir(step)
        if step_dir.exists():
            reason = self._check(step)
            if reason is None:
                warnings.warn(
                    f"checkpoint for step {step} already exists in {self.directory} and is "
                    "intact; it was not overwritten",
                    CheckpointWarning,
                    stacklevel=2,
                )
                return False
            warnings.warn(
                f"replacing unusable checkpoint for step {step} ({reason})",
                CheckpointWarning,
                stacklevel=2,
            )
            self._remove(step_dir)
        for tmp in self._scan()[1].get(step, []):  # leftovers of an interrupted save
            self._remove(tmp)

        leaves = _leaf_records(state)  # hashed before orbax sees the state
        ocp = self._ocp
        try:
            with _quiet_orbax(logging.WARNING):
                self._mngr.reload()
                self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
                self._mngr.wait_until_finished()
            if not step_dir.is_dir():
                raise RuntimeError(f"orbax saved step {step} but {step_dir} is missing")
            if self.verify:
                self._verify_readback(step, state, leaves)
            files = {
                rel: {"size": p.stat().st_size, "sha256": _file_sha256(p)}
                for rel, p in _data_files(step_dir)
            }
            body = {
                "format": _RECORD_FORMAT,
                "version": _RECORD_VERSION,
                "step": step,
                "created_unix": time.time(),
                "orbax_checkpoint_version": getattr(ocp, "__version__", "unknown"),
                "treedef": str(jax.tree_util.tree_structure(state)),
                "leaves": leaves,
                "files": files,
                "metadata": metadata,
            }
            record = dict(body, record_sha256=hashlib.sha256(_canonical(body)).hexdigest())
            _atomic_write_json(step_dir / RECORD_NAME, record)
        except BaseException:
            # The step was absent or unusable before, so whatever is there now is ours.
            with contextlib.suppress(Exception):  # never mask the original error
                self._discard_failed(step)
            raise
        # The record was just built from these very files: cache the verdict rather than
        # hashing everything a second time.
        self._check_cache[step] = (self._signature(step), None)
        self._prune(step)
        return True

    def _verify_readback(self, step: int, state: Any, leaves: list[dict[str, Any]]) -> None:
        """Reads step back through orbax (onto the host CPU if possible) and compares."""
        try:
            cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        except RuntimeError:  # no CPU backend (e.g. JAX_PLATFORMS=cuda): default device
            cpu = None

        def target(leaf: Any) -> Any:
            a = _abstract_leaf(leaf)
            is_key = isinstance(a, jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
                a.dtype, jax.dtypes.prng_key
            )
            if cpu is not None and isinstance(a, jax.ShapeDtypeStruct) and not is_key:
                return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu)
            return a

        restored = self._orbax_restore(step, jax.tree.map(target, state))
        mismatch = _compare_leaves(leaves, restored)
        if mismatch:
            raise RuntimeError(
                f"checkpoint for step {step} does not read back as saved: {mismatch}"
            )

    # -- restore -------------------------------------------------------------------

    def restore(self, template: T, step: int | None = None) -> tuple[T, int]:
        """Restores the newest good checkpoint (or the given step) into ``template``'s shape.

        Candidates are tried newest first. Each must have an intact integrity record whose
        files all match, must be readable by orbax, and must decode to leaves whose sha256
        match the record. A candidate that fails any of these (and any newer, unfinished
        save) is skipped with a :class:`CheckpointWarning` naming the step and the reason.

        Args:
            template: A pytree with the structure, shapes and dtypes of the saved state:
                concrete arrays (their shardings are reused) or ``jax.ShapeDtypeStruct``.
            step: Restore exactly this step instead; no fallback.

        Returns:
            ``(state, step)``: the restored pytree (same structure as ``template``) and
            the step it was saved at.

        Raises:
            FileNotFoundError: No checkpoint exists (or ``step`` does not exist).
            RuntimeError: Checkpoints exist but none is usable; the message lists each
                step tried and why it was rejected.
            ValueError: ``template`` does not match the saved structure, shapes or dtypes.
        """
        steps, partial = self._scan()
        if step is not None:
            step = int(step)
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
            try:
                return self._restore_step(template, step), step
            except _BadCheckpoint as e:
                raise RuntimeError(f"checkpoint for step {step} is unusable: {e}") from None
        if not steps and not partial:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")

        tried: list[str] = []
        for s in sorted(steps, reverse=True):
            try:
                state = self._restore_step(template, s)
            except _BadCheckpoint as e:
                tried.append(f"step {s}: {e}")
                warnings.warn(
                    f"skipping checkpoint step {s} in {self.directory}: {e}",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            for p in sorted(partial):
                if p > s:
                    warnings.warn(
                        f"ignoring incomplete checkpoint for step {p} in {self.directory} "
                        f"(unfinished orbax save: {partial[p][0].name})",
                        CheckpointWarning,
                        stacklevel=2,
                    )
            return state, s
        for p in sorted(partial, reverse=True):
            tried.append(f"step {p}: unfinished orbax save ({partial[p][0].name})")
        if not steps:
            raise FileNotFoundError(
                f"no complete checkpoints in {self.directory}; " + "; ".join(tried)
            )
        raise RuntimeError(f"no usable checkpoint in {self.directory}; tried " + "; ".join(tried))

    def _restore_step(self, template: Any, step: int) -> Any:
        reason = self._check(step)
        if reason is not None:
            raise _BadCheckpoint(reason)
        record = self._read_record(step)
        want = [(x["path"], list(x["shape"]), x["dtype"]) for x in record["leaves"]]
        have = _template_signature(template)
        if want != have:
            raise ValueError(_describe_mismatch(step, want, have))
        abstract = jax.tree.map(_abstract_leaf, template)
        try:
            restored = self._orbax_restore(step, abstract)
        except Exception as e:  # any orbax / tensorstore failure means unusable
            msg = " ".join(str(e).split())
            if len(msg) > 300:
                msg = msg[:300] + "..."
            raise _BadCheckpoint(f"orbax could not read it ({type(e).__name__}: {msg})") from e
        mismatch = _compare_leaves(record["leaves"], restored)
        if mismatch:
            raise _BadCheckpoint(f"checksum mismatch: {mismatch}")
        return restored

    def _orbax_restore(self, step: int, abstract: Any) -> Any:
        ocp = self._ocp
        with _quiet_orbax(logging.CRITICAL + 1):
            self._mngr.reload()
            return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))

    # -- filesystem ----------------------------------------------------------------

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _scan(self) -> tuple[dict[int, Path], dict[int, list[Path]]]:
        """Finalized step directories and unfinished orbax temp directories, by step."""
        steps: dict[int, Path] = {}
        partial: dict[int, list[Path]] = {}
        try:
            entries = list(os.scandir(self.directory))
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

    def _read_record(self, step: int) -> dict[str, Any]:
        path = self._step_dir(step) / RECORD_NAME
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            raise _BadCheckpoint(f"integrity record {RECORD_NAME} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _BadCheckpoint(f"integrity record is unreadable ({e})") from None
        if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
            raise _BadCheckpoint("integrity record has an unknown format")
        digest = record.pop("record_sha256", None)
        if digest != hashlib.sha256(_canonical(record)).hexdigest():
            raise _BadCheckpoint("integrity record is corrupted (its own checksum differs)")
        if record.get("version") != _RECORD_VERSION:
            raise _BadCheckpoint(f"integrity record version {record.get('version')!r}")
        if record.get("step") != step:
            raise _BadCheckpoint(f"integrity record is for step {record.get('step')!r}")
        return record

    def _signature(self, step: int) -> tuple[Any, ...]:
        sig = []
        for root, dirs, files in os.walk(self._step_dir(step)):
            dirs.sort()
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                sig.append((root, name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sig)

    def _check(self, step: int) -> str | None:
        """None if the step's files match its integrity record, else the reason."""
        sig = self._signature(step)
        cached = self._check_cache.get(step)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:
            reason = self._check_uncached(step)
        except OSError as e:
            reason = f"unreadable ({e})"
        self._check_cache[step] = (sig, reason)
        return reason

    def _check_uncached(self, step: int) -> str | None:
        step_dir = self._step_dir(step)
        if not step_dir.is_dir():
            return "step directory is missing"
        try:
            record = self._read_record(step)
        except _BadCheckpoint as e:
            return str(e)
        files = record.get("files")
        if not isinstance(files, dict) or not files:
            return "integrity record lists no files"
        for rel, want in sorted(files.items()):
            p = step_dir / rel
            if not p.is_file():
                return f"file {rel} is missing"
            size = p.stat().st_size
            if size != want["size"]:
                return f"file {rel} has {size} bytes, expected {want['size']} (truncated?)"
            if _file_sha256(p) != want["sha256"]:
                return f"file {rel} is corrupted (sha256 mismatch)"
        return None

    def _remove(self, path: Path) -> None:
        """Deletes a directory by first renaming it out of the step namespace."""
        trash = self.directory / f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _discard_failed(self, step: int) -> None:
        with contextlib.suppress(Exception):
            self._mngr.wait_until_finished()
        self._remove(self._step_dir(step))
        for tmp in self._scan()[1].get(step, []):
            self._remove(tmp)
        self._check_cache.pop(step, None)
        with contextlib.suppress(Exception), _quiet_orbax(logging.WARNING):
            self._mngr.reload()

    def _prune(self, newest: int) -> None:
        """Keeps the newest ``keep`` good steps; drops older steps and stale leftovers."""
        steps, partial = self._scan()
        good = [s for s in sorted(steps) if self._check(s) is None]
        kept = good[-self.keep :]
        oldest_kept = kept[0] if kept else newest
        for s in sorted(steps):
            if s < oldest_kept:
                self._remove(steps[s])
                self._check_cache.pop(s, None)
        for s, paths in partial.items():
            if s <= newest:  # saves are synchronous: these can never complete now
                for p in paths:
                    self._remove(p)
        for e in os.scandir(self.directory):
            if e.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(e.path, ignore_errors=True)
        with _quiet_orbax(logging.WARNING):
            self._mngr.reload()


def _compare_leaves(leaves: list[dict[str, Any]], restored: Any) -> str | None:
    got = _leaf_records(restored)
    if len(got) != len(leaves):
        return f"{len(got)} leaves restored, {len(leaves)} recorded"
    for w, g in zip(leaves, got, strict=True):
        for field in ("path", "shape", "dtype", "sha256"):
            if w[field] != g[field]:
                return f"leaf {w['path']}: {field} {g[field]!r} != recorded {w[field]!r}"
    return None


def _describe_mismatch(
    step: int, want: list[tuple[str, list[int], str]], have: list[tuple[str, list[int], str]]
) -> str:
    head = f"template does not match the checkpoint of step {step}"
    wp = {p: (s, d) for p, s, d in want}
    hp = {p: (s, d) for p, s, d in have}
    missing = [p for p in wp if p not in hp]
    extra = [p for p in hp if p not in wp]
    if missing or extra:
        return (
            f"{head}: leaves only in the checkpoint {missing[:5]}, only in the template {extra[:5]}"
        )
    for p, (s, d) in wp.items():
        if hp[p] != (s, d):
            return (
                f"{head}: leaf {p} is {s} {d} in the checkpoint, {hp[p][0]} {hp[p][1]} "
                "in the template"
            )
    return f"{head}: leaf order differs"


# ----------------------------------------------------------------------------- helpers


def save_state(
    directory: str | os.PathLike[str],
    step: int,
    state: Any,
    *,
    metadata: dict[str, Any] | None = None,
    keep: int = 3,
) -> bool:
    """Saves one checkpoint of ``state`` at ``step`` (regardless of any save interval).

    Args:
        directory: Checkpoint root directory.
        step: The training step.
        state: The pytree to save.
        metadata: JSON-serialisable dict stored alongside.
        keep: How many of the newest good checkpoints to keep.

    Returns:
        True if written, False if a good checkpoint for ``step`` already existed.
    """
    with CheckpointManager(directory, keep=keep, every=1) as mngr:
        return mngr.save(step, state, metadata=metadata, force=True)


def restore_state(
    directory: str | os.PathLike[str], template: T, step: int | None = None
) -> tuple[T, int]:
    """Restores the newest good checkpoint (or ``step``) from ``directory``.

    Args:
        directory: Checkpoint root directory.
        template: Pytree with the saved structure, shapes and dtypes.
        step: Restore exactly this step instead of the newest good one.

    Returns:
        ``(state, step)``.

    Raises:
        FileNotFoundError: ``directory`` does not exist or holds no checkpoint.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {os.fspath(directory)!r}")
    with CheckpointManager(directory) as mngr:
        return mngr.restore(template, step)
