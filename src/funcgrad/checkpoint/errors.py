"""What can go wrong with a checkpoint directory, as exceptions and a warning.

Every exception here has a one-line message that names the directory (and the step where
there is one), so a command-line tool can print ``str(error)`` and exit without a
traceback. :func:`format_warning` does the same for :class:`CheckpointWarning`.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "CheckpointError",
    "CheckpointLocked",
    "CheckpointWarning",
    "NoUsableCheckpointError",
    "OrbaxMissingError",
    "TemplateMismatch",
    "filesystem_cause",
    "format_warning",
    "sanitize",
    "save_error",
]

INSTALL_HINT = (
    'pip install "funcgrad[checkpoint]" (or, from a clone of the repository, '
    'pip install -e ".[checkpoint]")'
)
"""How to install the optional checkpoint dependency; the README says the same."""

_MAX_DETAIL = 300


class CheckpointWarning(UserWarning):
    """A checkpoint was found unusable (partial, corrupted, unverifiable) and skipped."""


class TemplateMismatch(ValueError):
    """A restore template does not fit the saved checkpoint (leaves, shapes or dtypes).

    Attributes:
        step: The checkpoint's step.
        only_in_checkpoint: Leaf paths the checkpoint holds and the template lacks.
        only_in_template: Leaf paths the template holds and the checkpoint lacks.
    """

    def __init__(self, message: str, step: int, only_in_checkpoint: list[str],
                 only_in_template: list[str]) -> None:
        super().__init__(message)
        self.step = step
        self.only_in_checkpoint = only_in_checkpoint
        self.only_in_template = only_in_template


class CheckpointError(OSError):
    """A checkpoint directory cannot be used, or a save could not be written.

    Raised for a directory that is not a writable directory, a save that failed on the
    filesystem (a full disk, a read-only mount, ...) and a directory with nothing to
    restore. ``str(error)`` is one line naming the directory and the fix; the
    underlying ``OSError``, if any, is the ``__cause__``. Subclasses ``OSError`` so that
    code catching filesystem errors keeps working.
    """


class CheckpointLocked(CheckpointError):
    """Another live :class:`~funcgrad.checkpoint.CheckpointManager` holds the directory.

    Attributes:
        directory: The checkpoint directory.
        pid: Process id recorded by the holder (None if it could not be read).
    """

    def __init__(self, directory: str | os.PathLike[str], pid: int | None) -> None:
        self.directory = os.fspath(directory)
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            "CheckpointManager: argument 'directory' must not be in use by another run; "
            f"expected an unlocked directory, got {self.directory!r} locked by {holder} "
            "(wait for that run to finish, or choose another directory)"
        )


class NoUsableCheckpointError(CheckpointError, RuntimeError):
    """Checkpoints exist but none could be restored.

    Nothing is deleted: the unusable step directories stay where they are until a later
    save moves them aside (see :class:`~funcgrad.checkpoint.CheckpointManager`).

    Attributes:
        directory: The checkpoint directory.
        reasons: For each step tried, newest first, why it was rejected.
    """

    def __init__(self, directory: str | os.PathLike[str], reasons: dict[int, str]) -> None:
        self.directory = os.fspath(directory)
        self.reasons = dict(reasons)
        per_step = "; ".join(f"step {s}: {r}" for s, r in self.reasons.items())
        super().__init__(
            f"CheckpointManager.restore: nothing could be restored from {self.directory!r}; "
            f"expected at least one verified checkpoint, got {len(self.reasons)} unusable "
            f"({per_step})"
        )


class OrbaxMissingError(ImportError):
    """orbax-checkpoint, the optional dependency of checkpoints, is not installed.

    ``str(error)`` is one line that ends with the install command.
    """


def sanitize(text: object, limit: int = _MAX_DETAIL) -> str:
    """One printable line of at most ``limit`` characters from any message.

    Whitespace runs become one space and every other non-printable character (a NUL
    byte from a zeroed file, say) becomes its ``\\xNN`` escape, so a message quoting a
    damaged file cannot garble a terminal.

    Args:
        text: The message (anything; ``str()`` is taken).
        limit: Longest result before ``...`` is appended.

    Returns:
        The cleaned line.

    Examples:
        >>> sanitize("bad file content: \\x00\\x00 here\\n")
        'bad file content: \\\\x00\\\\x00 here'
    """
    out = []
    for ch in " ".join(str(text).split()):
        out.append(ch if ch.isprintable() else ascii(ch)[1:-1])
    line = "".join(out)
    return line if len(line) <= limit else line[:limit] + "..."


_default_formatwarning = warnings.formatwarning


def format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A :func:`warnings.formatwarning` that shows a :class:`CheckpointWarning` as one line.

    Install it with ``warnings.formatwarning = format_warning`` (the CLI does): a
    :class:`CheckpointWarning` prints as ``CheckpointWarning: <message>`` without the
    file name and Python source line; every other warning is formatted as before.

    Args:
        message: The warning or its text.
        category: The warning class.
        filename: File that issued the warning.
        lineno: Line that issued the warning.
        line: Source line to show (ignored for checkpoint warnings).

    Returns:
        The text to print, ending in a newline.

    Examples:
        >>> format_warning("skipping step 20: truncated", CheckpointWarning, "x.py", 3)
        'CheckpointWarning: skipping step 20: truncated\\n'
    """
    if isinstance(category, type) and issubclass(category, CheckpointWarning):
        return f"{category.__name__}: {sanitize(message, limit=2000)}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def filesystem_cause(e: BaseException) -> OSError | None:
    """The OSError behind a failed save (itself, its ``__cause__``, or named in its text).

    Args:
        e: The exception a save raised.

    Returns:
        The OSError, or None when the failure is not a filesystem one.
    """
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__
    text = str(e)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None


def save_error(directory: Path, step: int, e: BaseException, cause: OSError) -> CheckpointError:
    """The one-line error for a save that the filesystem refused.

    Args:
        directory: The checkpoint root.
        step: The step being saved.
        e: The original exception.
        cause: Its OSError (:func:`filesystem_cause`).

    Returns:
        The :class:`CheckpointError` to raise.
    """
    hint = "; free some disk space" if cause.errno == errno.ENOSPC else ""
    return CheckpointError(
        f"CheckpointManager.save: could not write the checkpoint of step {step} to "
        f"{str(directory)!r}: {sanitize(e)}; the partial save was removed and "
        f"older checkpoints are kept{hint}"
    )
