"""Save and restore when several processes share one checkpoint directory.

Every process calls :meth:`CheckpointManager.save` and :meth:`~CheckpointManager.restore`
with the same arguments. orbax writes each process's shards and process 0 finalizes the
step; funcgrad's part is ordered around it:

save
    1. process 0 clears the way (an unusable old step of the same number moves aside) and
       tells the others whether a good checkpoint of the step already exists;
    2. every process saves through orbax, then all meet (the save is complete everywhere);
    3. with ``verify``, every process reads the step back and compares what it holds;
    4. process 0 writes the integrity record, all meet, process 0 applies keep-last-k,
       all meet again. A failure on any process is a failure on all of them.

restore
    Process 0's list of candidate steps, newest first, is everyone's. A step is taken only
    when its files check out on every process and every process read it back intact;
    otherwise all of them go on to the next one, so they never restore different steps.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import jax

from .errors import CheckpointWarning, NoUsableCheckpointError, sanitize
from .integrity import (
    RECORD_NAME,
    atomic_write_json,
    build_record,
    compare_leaves,
    leaf_records,
    read_record,
    template_mismatch,
    template_signature,
)

if TYPE_CHECKING:
    from .manager import CheckpointManager

__all__ = ["restore_everywhere", "save_everywhere"]


def _agree(m: CheckpointManager, ok: bool, what: str, step: int, error: Any) -> None:
    """Raises on every process when ``ok`` is false on any of them."""
    if m._procs.all_true(ok):
        return
    if m._procs.primary:  # the step was absent or unusable before: what is there is ours
        m._steps.discard_failed(step)
    m._procs.barrier("discarded")
    if isinstance(error, BaseException):
        raise error
    raise RuntimeError(f"CheckpointManager.save: {what} of step {step} failed on another "
                       f"process (process {m._procs.index} was fine)")


def save_everywhere(m: CheckpointManager, step: int, state: Any, metadata: Any) -> bool:
    """The multi-process body of :meth:`CheckpointManager.save` (after its checks).

    Args:
        m: The manager (one per process, same directory).
        step: The step.
        state: The pytree, the same on every process (global arrays).
        metadata: The JSON-ready metadata.

    Returns:
        True if the checkpoint was written, False if a good one already existed.
    """
    procs = m._procs
    room = procs.broadcast(int(m._steps.make_room(step)) if procs.primary else 0)
    if not room:
        return False
    leaves = leaf_records(state)  # this process's copies, hashed before orbax sees them
    error: BaseException | None = None
    try:
        m._store.save(step, state)
    except Exception as e:  # noqa: BLE001  (every process must hear about it)
        error = e
    _agree(m, error is None, "the orbax save", step, error)
    procs.barrier("saved")  # complete everywhere before anyone looks at the files
    mismatch = None
    if m.verify:
        try:
            restored = m._store.restore(step, jax.tree.map(_target, state))
            mismatch = compare_leaves(leaves, restored)
        except Exception as e:  # noqa: BLE001
            mismatch = f"orbax could not read it back ({type(e).__name__}: {sanitize(e)})"
    error = RuntimeError(f"CheckpointManager.save: the checkpoint of step {step} does not "
                         f"read back as saved on process {procs.index}: {mismatch}")
    _agree(m, mismatch is None, "the read-back", step, error if mismatch else None)
    if procs.primary:
        step_dir = m._steps.step_dir(step)
        record = build_record(step, step_dir, state, leaves, metadata, m._store.version,
                              time.time())
        atomic_write_json(step_dir / RECORD_NAME, record)
    procs.barrier("recorded")
    m._steps.mark_good(step)
    if procs.primary:
        m._steps.prune(step, m.keep)
    procs.barrier("pruned")
    m._store.settle()
    return True


def _target(leaf: Any) -> Any:
    from ._orbax import abstract_leaf

    return abstract_leaf(leaf)


def _candidates(m: CheckpointManager, steps: dict[int, Any]) -> list[int]:
    """Process 0's candidate steps, newest first, on every process."""
    procs = m._procs
    mine = sorted(steps, reverse=True)
    n = procs.broadcast(len(mine))
    return [procs.broadcast(mine[i] if i < len(mine) else -1) for i in range(n)]


def restore_everywhere(m: CheckpointManager, template: Any,
                       step: int | None) -> tuple[Any, int]:
    """The multi-process body of :meth:`CheckpointManager.restore`.

    Args:
        m: The manager.
        template: As for :meth:`CheckpointManager.restore` (global arrays keep their
            shardings).
        step: Restore exactly this step, or None for the newest good one.

    Returns:
        ``(state, step)``, the same step on every process.

    Raises:
        FileNotFoundError: No checkpoint at all.
        NoUsableCheckpointError: None usable on every process.
        ValueError: The template does not match.
    """
    steps, partial = m._steps.scan()
    candidates = _candidates(m, steps) if step is None else [int(step)]
    if not candidates:
        raise FileNotFoundError(
            f"CheckpointManager.restore: no checkpoints in {str(m.directory)!r}; "
            "expected step directories written by CheckpointManager.save, got none")
    tried: dict[int, str] = {}
    abstract = jax.tree.map(_target, template)
    for s in candidates:
        reason = m._steps.check(s)
        if not m._procs.all_true(reason is None):
            tried[s] = reason or "unusable on another process"
            warnings.warn(f"skipping checkpoint step {s} in {m.directory}: {tried[s]}",
                          CheckpointWarning, stacklevel=3)
            continue
        record = read_record(m._steps.step_dir(s), s)
        want = [(x["path"], list(x["shape"]), x["dtype"]) for x in record["leaves"]]
        if want != template_signature(template):
            raise template_mismatch(s, want, template_signature(template))
        restored, problem = None, None
        try:
            restored = m._store.restore(s, abstract)
            mismatch = compare_leaves(record["leaves"], restored)
            problem = None if mismatch is None else f"checksum mismatch: {mismatch}"
        except Exception as e:  # noqa: BLE001  (any orbax failure means unusable)
            problem = f"orbax could not read it ({type(e).__name__}: {sanitize(e)})"
        if m._procs.all_true(problem is None):
            return restored, s
        tried[s] = problem or "unusable on another process"
        warnings.warn(f"skipping checkpoint step {s} in {m.directory}: {tried[s]}",
                      CheckpointWarning, stacklevel=3)
    for p in sorted(partial, reverse=True):
        tried.setdefault(p, f"unfinished orbax save ({partial[p][0].name})")
    raise NoUsableCheckpointError(m.directory, tried)
