"""Crash-safe training checkpoints on top of orbax-checkpoint.

:class:`CheckpointManager` saves an arbitrary JAX pytree (typically a ``TrainState``
dataclass holding params, an optax state, the step, a PRNG key, ...) whenever a multiple
of ``every`` steps is reached or crossed, keeps the newest ``keep`` good checkpoints,
and restores the newest checkpoint that is provably intact.

A step counts as *good* only when its integrity record (``funcgrad_integrity.json``, the
sha256 of every file and every leaf, written last) exists, is itself intact, and every
file it lists still has the recorded size and sha256; a restore also re-hashes every
decoded leaf. Anything else (an unfinished orbax save, a step directory without a
record, truncated or garbled files, orbax failing to read it) is skipped with a
:class:`CheckpointWarning` that names the step and the reason. Only verified old
checkpoints are ever deleted; one that cannot be verified is moved into
``<directory>/.funcgrad-unverified/``.

Every failure a command line should report has a one-line message: a directory that
is locked by another run (:class:`CheckpointLocked`), not writable, or full
(:class:`CheckpointError`), nothing restorable (:class:`NoUsableCheckpointError`),
orbax not installed (:class:`OrbaxMissingError`). :func:`format_warning` prints a
:class:`CheckpointWarning` as one line.

Orbax is an optional dependency (``pip install "funcgrad[checkpoint]"``, or
``pip install -e ".[checkpoint]"`` from a clone); it is imported only when a
:class:`CheckpointManager` is created, so ``import funcgrad.checkpoint`` stays light.
Checkpoints live on a local (or locally mounted, shared) filesystem. In a multi-process
run (``jax.distributed``) every process saves and restores through its own manager on the
same directory: orbax writes each process's shards, and process 0 holds the lock and
writes the integrity records once the save is complete everywhere
(:mod:`~funcgrad.checkpoint.processes`, ``_multihost``). Modules:
:mod:`~funcgrad.checkpoint.manager` (the policy),
:mod:`~funcgrad.checkpoint.steps` (verification cache and retention),
:mod:`~funcgrad.checkpoint.integrity` (records and hashes),
:mod:`~funcgrad.checkpoint.directory` (layout, lock, removal),
:mod:`~funcgrad.checkpoint.shortcuts`, :mod:`~funcgrad.checkpoint.errors`, and ``_orbax``
(all orbax calls).
"""

from .errors import (
    CheckpointError,
    CheckpointLocked,
    CheckpointWarning,
    NoUsableCheckpointError,
    OrbaxMissingError,
    TemplateMismatch,
    format_warning,
)
from .integrity import RECORD_NAME
from .manager import CheckpointManager
from .shortcuts import restore_state, save_state

__all__ = [
    "RECORD_NAME",
    "CheckpointError",
    "CheckpointLocked",
    "CheckpointManager",
    "CheckpointWarning",
    "NoUsableCheckpointError",
    "OrbaxMissingError",
    "TemplateMismatch",
    "format_warning",
    "restore_state",
    "save_state",
]
