"""The only module that talks to orbax-checkpoint, imported on first use.

Orbax does the atomic write of each step (a temporary directory renamed once complete).
Retention, the save policy and verification are funcgrad's, so orbax keeps everything
(no ``max_to_keep``) and never deletes temporary directories itself. Orbax's absl log
records are filtered while it works, and any that are shown are cleaned of non-printable
bytes (a zeroed metadata file would otherwise dump raw NUL bytes to the terminal).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .errors import INSTALL_HINT, OrbaxMissingError, sanitize


def import_orbax() -> Any:
    """Imports ``orbax.checkpoint``.

    Returns:
        The module.

    Raises:
        OrbaxMissingError: It is not installed; the message carries the install hint.
    """
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # ModuleNotFoundError, or None planted in sys.modules
        raise OrbaxMissingError(
            "CheckpointManager: checkpoints need the optional dependency orbax-checkpoint, "
            f"which could not be imported ({sanitize(e)}); install it with: {INSTALL_HINT}"
        ) from None
    return ocp


class _OrbaxRecords(logging.Filter):
    """Drops orbax's absl records below ``level`` and sanitizes the ones it lets through."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in Path(record.pathname).parts:
            return True
        if record.levelno < self.level:
            return False
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: show it unformatted
            text = str(record.msg)
        record.msg, record.args = sanitize(text), None
        return True


@contextlib.contextmanager
def quiet_orbax(level: int = logging.WARNING) -> Iterator[None]:
    """Hides orbax's (absl) log records below ``level`` for the duration of the block.

    Only records logged from orbax source files are affected; funcgrad reports its own
    findings through :mod:`warnings` and exceptions, which are never filtered.

    Args:
        level: Records below this level are dropped; the rest are sanitized.

    Yields:
        Nothing.
    """
    logger = logging.getLogger("absl")
    flt = _OrbaxRecords(level)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def abstract_leaf(leaf: Any) -> Any:
    """The restore target for one template leaf (what ``to_shape_dtype_struct`` gives).

    Args:
        leaf: An array, ``jax.ShapeDtypeStruct`` or Python scalar.

    Returns:
        A ``jax.ShapeDtypeStruct`` (the scalar itself for Python scalars).
    """
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, np.ndarray | np.generic):
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype)
    return leaf


def host_target(state: Any) -> Any:
    """Restore targets for ``state`` on the host CPU where a CPU backend exists.

    Args:
        state: The pytree that was saved.

    Returns:
        A pytree of restore targets.
    """
    try:
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    except RuntimeError:  # no CPU backend (e.g. JAX_PLATFORMS=cuda): default device
        cpu = None

    def target(leaf: Any) -> Any:
        a = abstract_leaf(leaf)
        is_key = isinstance(a, jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
            a.dtype, jax.dtypes.prng_key
        )
        if cpu is not None and isinstance(a, jax.ShapeDtypeStruct) and not is_key:
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu)
        return a

    return jax.tree.map(target, state)


class OrbaxStore:
    """One orbax ``CheckpointManager`` over ``directory``, created on first use.

    Args:
        directory: The checkpoint root (must exist).
        ocp: The imported ``orbax.checkpoint`` module.
    """

    def __init__(self, directory: Path, ocp: Any) -> None:
        self.directory = directory
        self.ocp = ocp
        self._mngr: Any = None

    @property
    def version(self) -> str:
        """The orbax-checkpoint version string."""
        return str(getattr(self.ocp, "__version__", "unknown"))

    def _manager(self) -> Any:
        if self._mngr is None:
            options = self.ocp.CheckpointManagerOptions(
                create=False, enable_async_checkpointing=False
            )
            with quiet_orbax():
                self._mngr = self.ocp.CheckpointManager(self.directory, options=options)
        return self._mngr

    def save(self, step: int, state: Any) -> None:
        """Writes ``state`` as orbax step ``step`` and waits until it is on disk.

        Args:
            step: The step.
            state: The pytree.
        """
        mngr = self._manager()
        with quiet_orbax():
            mngr.reload()
            mngr.save(step, args=self.ocp.args.StandardSave(state), force=True)
            mngr.wait_until_finished()

    def restore(self, step: int, abstract: Any) -> Any:
        """Reads step ``step`` into the structure of ``abstract`` (orbax logs hidden).

        Args:
            step: The step.
            abstract: Restore targets (see :func:`abstract_leaf`).

        Returns:
            The restored pytree.
        """
        mngr = self._manager()
        with quiet_orbax(logging.CRITICAL + 1):
            mngr.reload()
            return mngr.restore(step, args=self.ocp.args.StandardRestore(abstract))

    def settle(self) -> None:
        """Waits for pending work and re-reads the directory (after a failure or prune)."""
        if self._mngr is None:
            return
        with contextlib.suppress(Exception), quiet_orbax():
            self._mngr.wait_until_finished()
        with contextlib.suppress(Exception), quiet_orbax():
            self._mngr.reload()

    def close(self) -> None:
        """Waits for pending orbax work and releases its resources."""
        if self._mngr is not None:
            mngr, self._mngr = self._mngr, None
            with quiet_orbax():
                mngr.wait_until_finished()
                mngr.close()
