"""A user's own ``.npz`` file as a :class:`~funcgrad.data.Dataset`, read without pickle."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ._validate import (
    check_classes,
    check_fraction,
    check_same_length,
    check_seed,
    features,
    labels,
)
from .dataset import Dataset, stratified_split

__all__ = ["load_npz"]


def load_npz(path: str | os.PathLike[str], test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a classification dataset from a user's ``.npz`` file.

    The file must hold an array ``x`` of shape ``(samples, features...)`` (real
    numbers; trailing axes are flattened) and an array ``y`` of shape
    ``(samples,)`` with non-negative integer class labels. If it also holds
    ``x_test`` and ``y_test`` those are used as the test split as they are, and
    ``test_fraction`` and ``seed`` only get validated; otherwise ``x``/``y`` are
    split as in :func:`~funcgrad.data.digits`. Class labels must be ``0 .. K-1``
    with ``K >= 2`` and no gaps (``num_classes`` is ``K``): one class, or a sparse set
    such as ``{0, 1, 2, 99999}``, is an error that suggests a remap. The file is read
    with ``allow_pickle=False`` and is closed again whatever happens.

    Args:
        path: Path of the ``.npz`` file.
        test_fraction: Share of each class put in the test split, in ``(0, 1)``.
        seed: Non-negative integer; the same seed always gives the same split.

    Returns:
        A :class:`Dataset` named after the file's stem.

    Raises:
        FileNotFoundError: If ``path`` is not an existing file.
        TypeError: If an array has an unsuitable dtype (e.g. float labels).
        ValueError: If the file is not a readable ``.npz`` archive, an array is
            missing, needs pickle, has the wrong shape, or holds invalid values.
    """
    fn = "load_npz"
    check_fraction(fn, test_fraction)
    check_seed(fn, seed)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{fn}: file not found; expected an existing .npz file, got {str(file)!r}"
        )
    with open(file, "rb") as handle:  # closed even when numpy gives up half way
        x, y, x_test, y_test = _read_arrays(fn, file, handle)
    if y_test is None and len(y) < 2:
        raise ValueError(
            f"{fn}: arrays 'x' and 'y' must hold at least 2 samples to make a "
            f"train/test split; expected >= 2, got {len(y)}"
        )
    check_classes(fn, y, y_test)
    if x_test is None or y_test is None:
        train, test = stratified_split(y, test_fraction, np.random.default_rng(seed))
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    num_classes = int(max(y.max(), y_test.max())) + 1
    return Dataset(
        x.reshape(len(x), -1),
        y,
        x_test.reshape(len(x_test), -1),
        y_test,
        num_classes=num_classes,
        name=file.stem,
    )


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def _open(fn: str, file: Path, handle: BinaryIO) -> np.lib.npyio.NpzFile:
    """``np.load`` on an open file, with one clear error for anything that is not .npz."""
    try:
        archive = np.load(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(
            f"{fn}: could not read {str(file)!r}: not a valid .npz file; expected a zip "
            f"archive written by numpy.savez, got {type(err).__name__}: {err}"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{fn}: {str(file)!r} is a single .npy array, not an .npz archive; "
            f"expected arrays 'x' and 'y' saved with numpy.savez, "
            f"got one array of shape {np.shape(archive)}"
        )
    return archive


def _read_arrays(fn: str, file: Path, handle: BinaryIO) -> _Arrays:
    """``x``, ``y`` and the optional ``x_test``/``y_test``, validated and converted."""
    with _open(fn, file, handle) as archive:
        keys = sorted(archive.files)
        for name in ("x", "y"):
            if name not in keys:
                raise ValueError(
                    f"{fn}: missing array {name!r} in {str(file)!r}; expected arrays 'x' and "
                    f"'y' (optionally 'x_test' and 'y_test'), got keys {keys}"
                )
        has_x_test, has_y_test = "x_test" in keys, "y_test" in keys
        if has_x_test != has_y_test:
            present, absent = ("x_test", "y_test") if has_x_test else ("y_test", "x_test")
            raise ValueError(
                f"{fn}: array {present!r} is present but {absent!r} is missing; "
                f"expected both or neither, got keys {keys}"
            )
        x = features(fn, "x", _read(fn, archive, "x"))
        y = labels(fn, "y", _read(fn, archive, "y"))
        check_same_length(fn, "x", x, "y", y)
        if not has_x_test:
            return x, y, None, None
        x_test = features(fn, "x_test", _read(fn, archive, "x_test"))
        y_test = labels(fn, "y_test", _read(fn, archive, "y_test"))
    check_same_length(fn, "x_test", x_test, "y_test", y_test)
    for name, arr in (("y", y), ("y_test", y_test)):
        if len(arr) < 1:
            raise ValueError(
                f"{fn}: array {name!r} must hold at least 1 sample; "
                f"expected >= 1, got {len(arr)}"
            )
    if x.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{fn}: arrays 'x' and 'x_test' must have the same feature shape; "
            f"expected x.shape[1:] == x_test.shape[1:], got x.shape={x.shape} "
            f"and x_test.shape={x_test.shape}"
        )
    return x, y, x_test, y_test


def _read(fn: str, archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    """Read one array from an open archive without pickle, with a clear error."""
    try:
        return archive[name]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"{fn}: array {name!r} is an object array, which would need pickle to load; "
                "expected a numeric array (files are read with allow_pickle=False), "
                f"got error: {err}"
            ) from err
        raise ValueError(
            f"{fn}: array {name!r} could not be read; expected a valid .npy entry, got error: {err}"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a corrupt entry
        raise ValueError(
            f"{fn}: array {name!r} could not be read; expected a valid .npy entry, got error: {err}"
        ) from err
