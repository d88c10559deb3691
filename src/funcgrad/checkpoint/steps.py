"""Which step directories hold good checkpoints, and how old or bad ones leave.

:class:`StepIndex` answers "is step N good?" (cached by the files' stat signature, so
files are hashed once per manager) and carries out retention: only *verified* old
steps are deleted; a step that fails verification is moved into
``.funcgrad-unverified/`` with a :class:`~funcgrad.checkpoint.CheckpointWarning`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from . import directory as _dir
from ._orbax import OrbaxStore
from .errors import CheckpointWarning, sanitize
from .integrity import check_files

__all__ = ["StepIndex"]


class StepIndex:
    """The verified view of the step directories under one checkpoint root.

    Args:
        directory: The checkpoint root.
        store: The orbax store writing into it (re-read after changes).
    """

    def __init__(self, directory: Path, store: OrbaxStore) -> None:
        self.directory = directory
        self.store = store
        # step -> (stat signature of its files, reason or None): avoids re-hashing.
        self._cache: dict[int, tuple[tuple[Any, ...], str | None]] = {}

    def step_dir(self, step: int) -> Path:
        """The directory of ``step`` (which may not exist)."""
        return self.directory / str(step)

    def scan(self) -> tuple[dict[int, Path], dict[int, list[Path]]]:
        """Step directories and unfinished orbax saves (see :func:`directory.scan`)."""
        return _dir.scan(self.directory)

    def good(self) -> list[int]:
        """Steps whose files match their integrity record, oldest first."""
        steps, _ = self.scan()
        return [s for s in sorted(steps) if self.check(s) is None]

    def unusable(self) -> dict[int, str]:
        """Step directories and unfinished saves that are not good, and why, newest first."""
        steps, partial = self.scan()
        out = {s: r for s in steps if (r := self.check(s)) is not None}
        for p in partial:
            out.setdefault(p, f"unfinished orbax save ({partial[p][0].name})")
        return dict(sorted(out.items(), reverse=True))

    def _signature(self, step: int) -> tuple[Any, ...]:
        sig = []
        for root, dirs, files in os.walk(self.step_dir(step)):
            dirs.sort()
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                sig.append((root, name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sig)

    def check(self, step: int) -> str | None:
        """None if the step's files match its integrity record, else the reason."""
        sig = self._signature(step)
        cached = self._cache.get(step)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:
            reason = check_files(self.step_dir(step), step)
        except OSError as e:
            reason = f"unreadable ({sanitize(e)})"
        self._cache[step] = (sig, reason)
        return reason

    def mark_good(self, step: int) -> None:
        """Records that ``step`` was just written and verified (no re-hash needed)."""
        self._cache[step] = (self._signature(step), None)

    def make_room(self, step: int) -> bool:
        """Clears the way for a save of ``step``.

        Returns:
            False if a good checkpoint of ``step`` exists (it is never overwritten).
        """
        step_dir = self.step_dir(step)
        if step_dir.exists():
            reason = self.check(step)
            if reason is None:
                warnings.warn(
                    f"checkpoint for step {step} already exists in {self.directory} and is "
                    "intact; it was not overwritten",
                    CheckpointWarning,
                    stacklevel=4,
                )
                return False
            aside = _dir.move_aside(self.directory, step_dir)
            self._cache.pop(step, None)
            warnings.warn(
                f"replacing unusable checkpoint for step {step} ({sanitize(reason)}); "
                f"the old files were moved to {aside}",
                CheckpointWarning,
                stacklevel=4,
            )
        for tmp in self.scan()[1].get(step, []):  # leftovers of an interrupted save
            _dir.remove_tree(self.directory, tmp)
        return True

    def discard_failed(self, step: int) -> None:
        """Removes what a failed save of ``step`` wrote (it held no checkpoint before)."""
        self.store.settle()
        _dir.remove_tree(self.directory, self.step_dir(step))
        for tmp in self.scan()[1].get(step, []):
            _dir.remove_tree(self.directory, tmp)
        self._cache.pop(step, None)
        self.store.settle()

    def prune(self, newest: int, keep: int) -> None:
        """Keeps the newest ``keep`` good steps; deletes only verified older ones.

        Older step directories that fail verification are moved aside (with a warning),
        never deleted; unfinished orbax saves of steps up to ``newest`` can never
        complete now and are removed.

        Args:
            newest: The step just saved.
            keep: How many good steps to keep.
        """
        steps, partial = self.scan()
        good = [s for s in sorted(steps) if self.check(s) is None]
        kept = good[-keep:]
        oldest_kept = kept[0] if kept else newest
        for s in sorted(steps):
            if s in good:
                if s < oldest_kept:
                    _dir.remove_tree(self.directory, steps[s])
                    self._cache.pop(s, None)
            elif s < newest:
                reason = self.check(s)
                aside = _dir.move_aside(self.directory, steps[s])
                self._cache.pop(s, None)
                warnings.warn(
                    f"moved unverifiable checkpoint for step {s} ({sanitize(reason)}) "
                    f"aside to {aside}; it is kept, not deleted",
                    CheckpointWarning,
                    stacklevel=4,
                )
        for s, paths in partial.items():
            if s <= newest:  # saves are synchronous: these can never complete now
                for p in paths:
                    _dir.remove_tree(self.directory, p)
        _dir.clear_trash(self.directory)
        self.store.settle()
