"""Which process of a multi-host run this is, and how the processes agree.

A single-process run (the usual case) never calls into ``jax.distributed``: every helper
here is then a no-op or the identity. In a multi-process run (after
``jax.distributed.initialize``, e.g. ``funcgrad train --coordinator``) every process
takes part in each orbax save and restore; process 0 alone moves, deletes and writes
funcgrad's files (the lock, the integrity records, retention), and the processes meet at
barriers so that none runs ahead of a file another one is still writing.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["Processes"]


class Processes:
    """The processes of this JAX run, as the checkpoint manager sees them.

    Attributes:
        count: how many processes take part (1 without ``jax.distributed``).
        index: this process's index, 0 to ``count - 1``.
    """

    def __init__(self) -> None:
        self.count = int(jax.process_count())
        self.index = int(jax.process_index())
        self._barriers = 0

    @property
    def multi(self) -> bool:
        """True when more than one process takes part."""
        return self.count > 1

    @property
    def primary(self) -> bool:
        """True for process 0, the one that writes funcgrad's own files."""
        return self.index == 0

    def barrier(self, what: str) -> None:
        """Waits until every process reaches the same point (no-op for one process).

        Args:
            what: names the point in the error a mismatched barrier raises.
        """
        if not self.multi:
            return
        from jax.experimental import multihost_utils

        self._barriers += 1
        multihost_utils.sync_global_devices(f"funcgrad.checkpoint.{what}.{self._barriers}")

    def broadcast(self, value: int) -> int:
        """Process 0's ``value`` on every process (the value itself for one process).

        Args:
            value: an int that fits in int64.

        Returns:
            Process 0's value.
        """
        if not self.multi:
            return int(value)
        from jax.experimental import multihost_utils

        out = multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64))
        return int(np.asarray(out))

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process.

        Args:
            flag: this process's verdict.

        Returns:
            The verdict of all processes together.
        """
        if not self.multi:
            return bool(flag)
        from jax.experimental import multihost_utils

        flags: Any = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
        return bool(np.all(np.asarray(flags) == 1))
