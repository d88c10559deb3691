"""CheckpointManager: the save policy, retention and verified restore over one directory."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, TypeVar

import jax

from . import directory as _dir
from ._multihost import restore_everywhere, save_everywhere
from ._orbax import OrbaxStore, abstract_leaf, host_target, import_orbax
from .errors import (
    CheckpointError,
    CheckpointWarning,
    NoUsableCheckpointError,
    filesystem_cause,
    sanitize,
    save_error,
)
from .integrity import (
    RECORD_NAME,
    BadCheckpoint,
    atomic_write_json,
    build_record,
    compare_leaves,
    leaf_records,
    read_record,
    template_mismatch,
    template_signature,
)
from .processes import Processes
from .steps import StepIndex

__all__ = ["CheckpointManager"]

T = TypeVar("T")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"CheckpointManager: argument {name!r} must be a positive integer; "
            f"expected an int >= 1, got {value!r}"
        )
    return value


def _json_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as e:
        raise TypeError(
            "CheckpointManager.save: argument 'metadata' must be JSON-serialisable; "
            f"got {sanitize(e)}"
        ) from e


class CheckpointManager:
    """Saves, retains and restores training-state checkpoints with integrity checks.

    Every save is atomic (orbax writes into a temporary directory and renames it once it
    is complete) and is followed by an integrity record with the sha256 of every file and
    of every leaf's bytes, written atomically last. Only then are verified checkpoints
    beyond the newest ``keep`` good ones deleted, so a crash at any point leaves the
    previous good checkpoints untouched. An existing good checkpoint is never
    overwritten, and a checkpoint that cannot be verified is never deleted: it is moved
    into ``<directory>/.funcgrad-unverified/``.

    One manager at a time may write to a directory: creating one takes an exclusive lock
    (released by :meth:`close`, or by the operating system when the process dies) and
    checks that the directory is writable, so a second run or a read-only path fails at
    once with a one-line :class:`~funcgrad.checkpoint.CheckpointError`. In a multi-process
    run every process creates its manager on the same directory and calls :meth:`save`
    and :meth:`restore` together; process 0 holds the lock and writes funcgrad's records.

    Use as a context manager, or call :meth:`close` when done.

    Args:
        directory: Root directory of the checkpoints (created if missing). Local paths
            only.
        keep: How many of the newest good checkpoints to keep (at least 1).
        every: Save interval in steps; see :meth:`should_save`.
        verify: After writing, read the checkpoint back through orbax (onto the host
            CPU where available) and compare every leaf's sha256 with the state that
            was saved before recording it as good. Costs one extra read per save.
        read_only: Only restore and inspect: take no lock, create and move nothing,
            refuse :meth:`save`. For reading the checkpoints of a running job, or a
            read-only mount.

    Raises:
        OrbaxMissingError: orbax-checkpoint is not installed (an ``ImportError``).
        ValueError: ``keep`` or ``every`` is not a positive integer, or ``directory`` is
            a remote URL.
        CheckpointLocked: Another manager holds the directory.
        CheckpointError: ``directory`` is not a writable directory.

    Examples:
        A training loop (not run here)::

            with CheckpointManager("runs/exp1/ckpt", keep=3, every=100) as ckpt:
                state, start = ckpt.resume(state)  # start is None on a fresh directory
                for step in range((start or 0) + 1, num_steps + 1):
                    state = train_step(state, batch)
                    ckpt.save(step, state, metadata={"loss": float(loss)})
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int = 3,
        every: int = 100,
        verify: bool = True,
        read_only: bool = False,
    ) -> None:
        self.keep = _positive_int("keep", keep)
        self.every = _positive_int("every", every)
        if "://" in os.fspath(directory):
            raise ValueError(
                "CheckpointManager: argument 'directory' must be a local path; "
                f"expected a filesystem path, got the URL {os.fspath(directory)!r}"
            )
        ocp = import_orbax()  # before anything touches the disk
        self.directory = Path(os.path.abspath(os.fspath(directory)))
        self.verify = verify
        self.read_only = bool(read_only)
        self._lock: _dir.DirectoryLock | None = None
        self._closed = False
        self._procs = Processes()
        if not self.read_only:
            _dir.prepare_directory(self.directory)
            if self._procs.primary:  # in a multi-process run, process 0 holds the lock
                self._lock = _dir.DirectoryLock(self.directory)
                _dir.clear_trash(self.directory)  # leftovers of a prune that was killed
            self._procs.barrier("opened")
        self._store = OrbaxStore(self.directory, ocp)
        self._steps = StepIndex(self.directory, self._store)

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending orbax work, releases it and the directory lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __del__(self) -> None:  # a forgotten close() must not keep the directory locked
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.directory)!r}, keep={self.keep}, every={self.every})"

    # -- inspection ----------------------------------------------------------------

    def should_save(self, step: int, previous_step: int | None = None) -> bool:
        """Whether a save is due at ``step``.

        A training loop that advances several steps at a time (fused dispatches) rarely
        lands exactly on a multiple of ``every``; passing the step of the previous
        boundary makes the answer "has a multiple of ``every`` been crossed", so every
        multiple leads to one save, at the first boundary at or after it.

        Args:
            step: The training step reached now.
            previous_step: The step reached at the previous boundary (exclusive), or
                None to ask only whether ``step`` itself is a multiple of ``every``.

        Returns:
            True when ``step`` is a multiple of ``every`` (``previous_step`` None), or
            when some multiple of ``every`` lies in ``(previous_step, step]``.

        Raises:
            ValueError: ``previous_step`` is greater than ``step``.

        Examples:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, CheckpointManager(d, every=200) as m:
            ...     print(m.should_save(400), m.should_save(350))
            ...     print(m.should_save(405, previous_step=396), m.should_save(395, 390))
            True False
            True False
        """
        step = int(step)
        if previous_step is None:
            return step % self.every == 0
        previous_step = int(previous_step)
        if previous_step > step:
            raise ValueError(
                "CheckpointManager.should_save: argument 'previous_step' must not exceed "
                f"'step'; expected previous_step <= {step}, got {previous_step}"
            )
        return step // self.every > previous_step // self.every

    def all_steps(self) -> list[int]:
        """Steps that have a complete, verified checkpoint, oldest first.

        Partial or corrupted step directories are not listed (:meth:`restore` warns about
        them). Verification hashes the files once per manager; later calls only re-hash
        files whose size or modification time changed.

        Returns:
            The good steps in ascending order.
        """
        return self._steps.good()

    def latest_step(self) -> int | None:
        """The newest step with a complete, verified checkpoint.

        Returns:
            That step, or None when there is no good checkpoint.
        """
        steps, _ = self._steps.scan()
        for s in sorted(steps, reverse=True):
            if self._steps.check(s) is None:
                return s
        return None

    def unusable_steps(self) -> dict[int, str]:
        """Step directories and unfinished saves that are not good checkpoints, and why.

        Returns:
            step -> reason, newest first.
        """
        return self._steps.unusable()

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
                raise FileNotFoundError(
                    f"CheckpointManager.metadata: no good checkpoint in {str(self.directory)!r}"
                )
        if self._steps.check(int(step)) is not None:
            raise FileNotFoundError(
                f"CheckpointManager.metadata: no good checkpoint for step {step} in "
                f"{str(self.directory)!r}"
            )
        return dict(read_record(self._steps.step_dir(int(step)), int(step))["metadata"])

    # -- save ----------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
        previous_step: int | None = None,
    ) -> bool:
        """Saves ``state`` as the checkpoint of ``step`` if a save is due.

        When this returns True the checkpoint is complete on disk, verified and recorded
        as good, and verified checkpoints beyond the newest ``keep`` good ones have been
        deleted. If anything fails, the new checkpoint's partial files are removed and
        the error is re-raised (a filesystem failure such as a full disk as one-line
        :class:`~funcgrad.checkpoint.CheckpointError`); existing checkpoints are never
        touched by a failed save. A good checkpoint that already exists for ``step`` is
        never overwritten (a :class:`CheckpointWarning` is emitted and nothing is
        written); a partial or corrupted one is moved aside and replaced.

        Args:
            step: The training step (non-negative).
            state: Any pytree of arrays (jax or numpy) and scalars.
            metadata: JSON-serialisable dict stored in the integrity record; read it back
                with :meth:`metadata`.
            force: Save even if :meth:`should_save` is false.
            previous_step: Passed to :meth:`should_save`: save when a multiple of
                ``every`` lies in ``(previous_step, step]``.

        Returns:
            True if a checkpoint was written, False if the step was skipped.

        Raises:
            ValueError: ``step`` is negative.
            TypeError: ``metadata`` is not JSON-serialisable.
            CheckpointError: The checkpoint could not be written (full disk, read-only
                filesystem, a manager opened ``read_only``).
            RuntimeError: The read-back verification failed.
        """
        step = int(step)
        if step < 0:
            raise ValueError(
                f"CheckpointManager.save: argument 'step' must be non-negative; got {step}"
            )
        if self.read_only:
            raise CheckpointError(
                f"CheckpointManager.save: the manager of {str(self.directory)!r} was opened "
                "with read_only=True; expected a writable manager, got a save of step "
                f"{step}"
            )
        if not force and not self.should_save(step, previous_step):
            return False
        metadata = _json_metadata(metadata)
        if self._procs.multi:  # every process takes part; process 0 writes the record
            return save_everywhere(self, step, state, metadata)
        if not self._steps.make_room(step):
            return False
        leaves = leaf_records(state)  # hashed before orbax sees the state
        try:
            self._write(step, state, leaves, metadata)
        except BaseException as e:
            # The step was absent or unusable before, so whatever is there now is ours.
            with contextlib.suppress(Exception):  # never mask the original error
                self._steps.discard_failed(step)
            cause = filesystem_cause(e) if isinstance(e, Exception) else None
            if cause is None:
                raise
            raise save_error(self.directory, step, e, cause) from e
        # The record was just built from these very files: cache the verdict rather than
        # hashing everything a second time.
        self._steps.mark_good(step)
        self._steps.prune(step, self.keep)
        return True

    def _write(self, step: int, state: Any, leaves: list[dict[str, Any]], metadata: Any) -> None:
        step_dir = self._steps.step_dir(step)
        self._store.save(step, state)
        if not step_dir.is_dir():
            raise RuntimeError(
                f"CheckpointManager.save: orbax saved step {step} but {step_dir} is missing"
            )
        if self.verify:
            restored = self._store.restore(step, host_target(state))
            mismatch = compare_leaves(leaves, restored)
            if mismatch:
                raise RuntimeError(
                    f"CheckpointManager.save: the checkpoint of step {step} does not read "
                    f"back as saved: {mismatch}"
                )
        record = build_record(
            step, step_dir, state, leaves, metadata, self._store.version, time.time()
        )
        atomic_write_json(step_dir / RECORD_NAME, record)

    # -- restore -------------------------------------------------------------------

    def restore(self, template: T, step: int | None = None) -> tuple[T, int]:
        """Restores the newest good checkpoint (or the given step) into ``template``'s shape.

        Candidates are tried newest first. Each must have an intact integrity record whose
        files all match, must be readable by orbax, and must decode to leaves whose sha256
        match the record. A candidate that fails any of these (and any newer, unfinished
        save) is skipped with a :class:`CheckpointWarning` naming the step and the reason.
        Nothing is deleted or moved by a restore.

        Args:
            template: A pytree with the structure, shapes and dtypes of the saved state:
                concrete arrays (their shardings are reused) or ``jax.ShapeDtypeStruct``.
            step: Restore exactly this step instead; no fallback.

        Returns:
            ``(state, step)``: the restored pytree (same structure as ``template``) and
            the step it was saved at.

        Raises:
            FileNotFoundError: The directory holds no checkpoint at all (or ``step`` does
                not exist).
            NoUsableCheckpointError: Checkpoints exist but none is usable (a
                ``RuntimeError`` and a :class:`~funcgrad.checkpoint.CheckpointError`);
                its one-line message and ``reasons`` say why, per step.
            ValueError: ``template`` does not match the saved structure, shapes or dtypes.
        """
        steps, partial = self._steps.scan()
        if step is not None:
            step = int(step)
            if step not in steps:
                raise FileNotFoundError(
                    f"CheckpointManager.restore: argument 'step' names no checkpoint; "
                    f"expected one of {sorted(steps)}, got {step} (in {str(self.directory)!r})"
                )
            if self._procs.multi:
                return restore_everywhere(self, template, step)
            try:
                return self._restore_step(template, step), step
            except BadCheckpoint as e:
                raise NoUsableCheckpointError(self.directory, {step: str(e)}) from None
        if not steps and not partial:
            raise FileNotFoundError(
                f"CheckpointManager.restore: no checkpoints in {str(self.directory)!r}; "
                "expected step directories written by CheckpointManager.save, got none"
            )
        if self._procs.multi:  # the same step on every process
            return restore_everywhere(self, template, None)
        tried: dict[int, str] = {}
        for s in sorted(steps, reverse=True):
            try:
                state = self._restore_step(template, s)
            except BadCheckpoint as e:
                tried[s] = str(e)
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
            tried.setdefault(p, f"unfinished orbax save ({partial[p][0].name})")
        raise NoUsableCheckpointError(self.directory, tried)

    def resume(self, template: T) -> tuple[T, int | None]:
        """Restores the newest good checkpoint, or says that there is nothing to resume.

        The call for "continue if there is something to continue": a directory without
        any checkpoint gives back ``template`` unchanged, while a directory whose
        checkpoints are all unusable is an error, never a silent fresh start.

        Args:
            template: As for :meth:`restore`.

        Returns:
            ``(state, step)`` as :meth:`restore`, or ``(template, None)`` when the
            directory holds no checkpoint (and no unfinished save) at all.

        Raises:
            NoUsableCheckpointError: Checkpoints exist but none could be restored; the
                message names each step and why.
            ValueError: ``template`` does not match the saved checkpoint.
        """
        steps, partial = self._steps.scan()
        if not steps and not partial:
            return template, None
        state, step = self.restore(template)
        return state, step

    def _restore_step(self, template: Any, step: int) -> Any:
        reason = self._steps.check(step)
        if reason is not None:
            raise BadCheckpoint(reason)
        record = read_record(self._steps.step_dir(step), step)
        want = [(x["path"], list(x["shape"]), x["dtype"]) for x in record["leaves"]]
        have = template_signature(template)
        if want != have:
            raise template_mismatch(step, want, have)
        abstract = jax.tree.map(abstract_leaf, template)
        try:
            restored = self._store.restore(step, abstract)
        except Exception as e:  # any orbax / tensorstore failure means unusable
            raise BadCheckpoint(
                f"orbax could not read it ({type(e).__name__}: {sanitize(e)})"
            ) from e
        mismatch = compare_leaves(record["leaves"], restored)
        if mismatch:
            raise BadCheckpoint(f"checksum mismatch: {mismatch}")
        return restored
