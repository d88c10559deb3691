"""One-call shortcuts: save one state, or restore one, without keeping a manager."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from .manager import CheckpointManager

__all__ = ["restore_state", "save_state"]

T = TypeVar("T")


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

    Raises:
        CheckpointLocked: A running manager holds ``directory``.
        CheckpointError: ``directory`` is not writable, or the save failed on disk.
    """
    with CheckpointManager(directory, keep=keep, every=1) as mngr:
        return mngr.save(step, state, metadata=metadata, force=True)


def restore_state(
    directory: str | os.PathLike[str], template: T, step: int | None = None
) -> tuple[T, int]:
    """Restores the newest good checkpoint (or ``step``) from ``directory``.

    Reads only (a ``read_only`` manager): it works on a read-only mount and next to a
    run that is still writing to ``directory``.

    Args:
        directory: Checkpoint root directory.
        template: Pytree with the saved structure, shapes and dtypes.
        step: Restore exactly this step instead of the newest good one.

    Returns:
        ``(state, step)``.

    Raises:
        FileNotFoundError: ``directory`` does not exist or holds no checkpoint.
        NoUsableCheckpointError: It holds checkpoints, but none is usable.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            "restore_state: argument 'directory' must be an existing checkpoint directory; "
            f"got {os.fspath(directory)!r}"
        )
    with CheckpointManager(directory, read_only=True) as mngr:
        return mngr.restore(template, step)
