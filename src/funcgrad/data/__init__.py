"""Small classification datasets for examples and tests, in pure NumPy.

Every loader returns a :class:`Dataset` holding a train/test split with
``float32`` features of shape ``(samples, features)`` and ``int32`` class labels
of shape ``(samples,)``. Splits are stratified (each class keeps roughly the
same share in both parts) and fully determined by ``seed``.

* :func:`digits` -- the 8x8 UCI handwritten digits (1797 images, 10 classes),
  shipped with this package as ``digits.npz``; see :data:`DIGITS_ATTRIBUTION`.
* :func:`spirals` -- interleaved synthetic 2-D spirals.
* :func:`load_npz` -- a user's own ``.npz`` file with arrays ``x`` and ``y``.

No pickle is ever used to read data: every array is loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "DIGITS_ATTRIBUTION",
    "Dataset",
    "digits",
    "load_npz",
    "spirals",
]

DIGITS_ATTRIBUTION = (
    "Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak, "
    "UCI Machine Learning Repository (1998), CC BY 4.0, https://doi.org/10.24432/C50P49"
)
"""Citation for the data behind :func:`digits`.

The bundled file holds the 8x8 version distributed with scikit-learn
(BSD-3-Clause packaging): 1797 images with integer pixels in ``0..16``.
"""

_DIGITS_FILE = "digits.npz"
_DIGITS_MAX_PIXEL = 16.0


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test split.

    Attributes:
        x_train: Training features, ``float32`` of shape ``(n_train, features)``.
        y_train: Training labels, ``int32`` of shape ``(n_train,)``, in
            ``[0, num_classes)``.
        x_test: Test features, ``float32`` of shape ``(n_test, features)``.
        y_test: Test labels, ``int32`` of shape ``(n_test,)``.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        name: Short human-readable name of the data source.

    Raises:
        TypeError: If an array has the wrong dtype.
        ValueError: If the shapes do not fit together or a label is out of range.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        for field, dtype, ndim, layout in (
            ("x_train", np.float32, 2, "2-D (samples, features)"),
            ("x_test", np.float32, 2, "2-D (samples, features)"),
            ("y_train", np.int32, 1, "1-D (samples,)"),
            ("y_test", np.int32, 1, "1-D (samples,)"),
        ):
            value = getattr(self, field)
            name = np.dtype(dtype).name
            if not isinstance(value, np.ndarray) or value.dtype != dtype:
                raise TypeError(
                    f"Dataset: {field} must be a {name} NumPy array; "
                    f"expected dtype {name}, got {_describe(value)}"
                )
            if value.ndim != ndim:
                raise ValueError(
                    f"Dataset: {field} must be {layout}; "
                    f"expected ndim {ndim}, got shape {value.shape}"
                )
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"Dataset: x_{split} and y_{split} must have the same number of samples; "
                    f"expected equal lengths, got x_{split}.shape={x.shape} "
                    f"and y_{split}.shape={y.shape}"
                )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                "Dataset: x_train and x_test must have the same number of features; "
                f"expected equal, got x_train.shape={self.x_train.shape} "
                f"and x_test.shape={self.x_test.shape}"
            )
        if (
            not isinstance(self.num_classes, numbers.Integral)
            or isinstance(self.num_classes, bool)
            or self.num_classes < 1
        ):
            raise ValueError(
                "Dataset: num_classes must be a positive integer; "
                f"expected >= 1, got {self.num_classes!r}"
            )
        for field in ("y_train", "y_test"):
            y = getattr(self, field)
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"Dataset: {field} labels must lie in [0, num_classes); expected "
                    f"0 <= y < {self.num_classes}, got range [{y.min()}, {y.max()}]"
                )


def digits(test_fraction: float = 0.2, seed: int = 0, normalize: bool = True) -> Dataset:
    """Load the 8x8 handwritten digits (1797 images, 10 classes).

    Each image is flattened to 64 features. See :data:`DIGITS_ATTRIBUTION` for
    the source and licence.

    Args:
        test_fraction: Share of each class put in the test split, in ``(0, 1)``.
        seed: Non-negative integer; the same seed always gives the same split.
        normalize: If true, scale pixels from ``0..16`` to ``[0, 1]``; otherwise
            keep the raw pixel counts (still as ``float32``).

    Returns:
        A stratified :class:`Dataset` named ``"digits"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``test_fraction`` is not in ``(0, 1)`` or ``seed`` is negative.

    Example:
        >>> ds = digits()
        >>> ds.x_train.shape[1], ds.num_classes, len(ds.y_train) + len(ds.y_test)
        (64, 10, 1797)
    """
    fn = "digits"
    _check_fraction(fn, test_fraction)
    _check_seed(fn, seed)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: normalize must be a bool; expected True or False, got {normalize!r}"
        )

    resource = resources.files("funcgrad.data") / _DIGITS_FILE
    with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        images = archive["images"]
        labels = archive["labels"]

    x = images.astype(np.float32)
    if normalize:
        x /= np.float32(_DIGITS_MAX_PIXEL)
    y = labels.astype(np.int32)
    rng = np.random.default_rng(seed)
    train, test = _stratified_split(y, test_fraction, rng)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10, name="digits")


def spirals(
    n_per_class: int = 200,
    num_classes: int = 2,
    noise: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Generate interleaved 2-D spirals, one arm per class.

    Arm ``k`` has points at radius ``r = t`` and angle
    ``theta = 2*pi*k/num_classes + 3*pi*t`` (one and a half turns) for
    ``t`` evenly spaced in ``[0, 1]``, with Gaussian noise of standard
    deviation ``noise`` radians added to each angle. Points lie in the unit disc.

    Args:
        n_per_class: Points per class, an integer ``>= 2``.
        num_classes: Number of arms/classes, an integer ``>= 2``.
        noise: Standard deviation of the angular noise, a finite number ``>= 0``.
        seed: Non-negative integer; the same seed always gives the same data and split.
        test_fraction: Share of each class put in the test split, in ``(0, 1)``.

    Returns:
        A stratified :class:`Dataset` named ``"spirals"`` with 2 features.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range.

    Example:
        >>> ds = spirals(n_per_class=50, num_classes=3)
        >>> ds.x_train.shape[1], ds.num_classes, len(ds.y_train) + len(ds.y_test)
        (2, 3, 150)
    """
    fn = "spirals"
    _check_int(fn, "n_per_class", n_per_class, minimum=2)
    _check_int(fn, "num_classes", num_classes, minimum=2)
    _check_real(fn, "noise", noise, minimum=0.0)
    _check_seed(fn, seed)
    _check_fraction(fn, test_fraction)

    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n_per_class)
    xs, ys = [], []
    for k in range(num_classes):
        theta = 2.0 * np.pi * k / num_classes + 3.0 * np.pi * t
        theta = theta + noise * rng.standard_normal(n_per_class)
        xs.append(np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1))
        ys.append(np.full(n_per_class, k, dtype=np.int32))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys)
    train, test = _stratified_split(y, test_fraction, rng)
    return Dataset(
        x[train], y[train], x[test], y[test], num_classes=int(num_classes), name="spirals"
    )


def load_npz(path: str | os.PathLike[str], test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a classification dataset from a user's ``.npz`` file.

    The file must hold an array ``x`` of shape ``(samples, features...)`` (real
    numbers; trailing axes are flattened) and an array ``y`` of shape
    ``(samples,)`` with non-negative integer class labels. If it also holds
    ``x_test`` and ``y_test`` those are used as the test split as they are, and
    ``test_fraction`` and ``seed`` only get validated; otherwise ``x``/``y`` are
    split as in :func:`digits`. ``num_classes`` is one more than the largest
    label. The file is read with ``allow_pickle=False``.

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
    _check_fraction(fn, test_fraction)
    _check_seed(fn, seed)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{fn}: file not found; expected an existing .npz file, got {str(file)!r}"
        )

    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(
            f"{fn}: could not read {str(file)!r} as an .npz archive; "
            f"expected a file written by numpy.savez, got error: {err}"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{fn}: {str(file)!r} is a single .npy array, not an .npz archive; "
            f"expected arrays 'x' and 'y' saved with numpy.savez, "
            f"got one array of shape {np.shape(archive)}"
        )

    with archive:
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
        x = _features(fn, "x", _read(fn, archive, "x"))
        y = _labels(fn, "y", _read(fn, archive, "y"))
        _check_same_length(fn, "x", x, "y", y)
        if has_x_test:
            x_test = _features(fn, "x_test", _read(fn, archive, "x_test"))
            y_test = _labels(fn, "y_test", _read(fn, archive, "y_test"))
            _check_same_length(fn, "x_test", x_test, "y_test", y_test)
        else:
            x_test = y_test = None

    if x_test is None or y_test is None:
        if len(y) < 2:
            raise ValueError(
                f"{fn}: arrays 'x' and 'y' must hold at least 2 samples to make a "
                f"train/test split; expected >= 2, got {len(y)}"
            )
        num_classes = int(y.max()) + 1
        train, test = _stratified_split(y, test_fraction, np.random.default_rng(seed))
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    else:
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
        num_classes = int(max(y.max(), y_test.max())) + 1
        x_train, y_train = x, y

    return Dataset(
        x_train.reshape(len(x_train), -1),
        y_train,
        x_test.reshape(len(x_test), -1),
        y_test,
        num_classes=num_classes,
        name=file.stem,
    )


# --------------------------------------------------------------------------- helpers


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _check_fraction(fn: str, value: object) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: test_fraction must be a real number; expected a float in (0, 1), got {value!r}"
        )
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{fn}: test_fraction must lie strictly between 0 and 1; "
            f"expected 0 < test_fraction < 1, got {value!r}"
        )


def _check_int(fn: str, arg: str, value: object, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: {arg} must be an integer; expected an int >= {minimum}, got {value!r}"
        )
    if value < minimum:
        raise ValueError(f"{fn}: {arg} is too small; expected an int >= {minimum}, got {value!r}")


def _check_seed(fn: str, value: object) -> None:
    _check_int(fn, "seed", value, minimum=0)


def _check_real(fn: str, arg: str, value: object, minimum: float) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: {arg} must be a real number; expected a finite float >= {minimum}, "
            f"got {value!r}"
        )
    if not math.isfinite(float(value)) or float(value) < minimum:
        raise ValueError(
            f"{fn}: {arg} is out of range; expected a finite float >= {minimum}, got {value!r}"
        )


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
    except (OSError, EOFError) as err:  # e.g. a truncated or corrupt entry
        raise ValueError(
            f"{fn}: array {name!r} could not be read; expected a valid .npy entry, got error: {err}"
        ) from err


def _features(fn: str, name: str, arr: np.ndarray) -> np.ndarray:
    """Validate a feature array and convert it to float32 (shape is kept)."""
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{fn}: array {name!r} must be a real numeric array; "
            f"expected a bool, integer or float dtype, got {arr.dtype}"
        )
    if arr.ndim < 2:
        raise ValueError(
            f"{fn}: array {name!r} must have at least 2 dimensions (samples, features...); "
            f"expected ndim >= 2, got shape {arr.shape}"
        )
    if math.prod(arr.shape[1:]) == 0:
        raise ValueError(
            f"{fn}: array {name!r} must have at least one feature per sample; "
            f"expected a non-empty feature shape, got shape {arr.shape}"
        )
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(
            f"{fn}: array {name!r} must hold finite values; "
            f"expected no NaN or infinity (after conversion to float32), "
            f"got {int(np.size(out) - np.isfinite(out).sum())} non-finite values"
        )
    return out


def _labels(fn: str, name: str, arr: np.ndarray) -> np.ndarray:
    """Validate a label array and convert it to int32."""
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{fn}: array {name!r} must have an integer dtype (class labels), got {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ValueError(
            f"{fn}: array {name!r} must be 1-D (one class label per sample); "
            f"expected ndim 1, got shape {arr.shape}"
        )
    if arr.size:
        lowest, highest = arr.min(), arr.max()
        if lowest < 0:
            raise ValueError(
                f"{fn}: array {name!r} must hold non-negative class labels; "
                f"expected min({name}) >= 0, got {lowest}"
            )
        limit = np.iinfo(np.int32).max - 1
        if highest > limit:
            raise ValueError(
                f"{fn}: array {name!r} has a class label too large for int32; "
                f"expected max({name}) <= {limit}, got {highest}"
            )
    return arr.astype(np.int32)


def _check_same_length(fn: str, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(
            f"{fn}: arrays {x_name!r} and {y_name!r} must have the same number of samples; "
            f"expected len({x_name}) == len({y_name}), got {x_name}.shape={x.shape} "
            f"and {y_name}.shape={y.shape}"
        )


def _stratified_split(
    y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into shuffled train and test index arrays.

    Each class with ``m >= 2`` samples sends ``round(test_fraction * m)`` of them,
    clipped to ``[1, m - 1]``, to the test split; a class with a single sample goes
    to train. If that leaves the test split empty (every class has one sample),
    one random sample is moved to it. Needs ``len(y) >= 2``.
    """
    train_parts, test_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        m = len(members)
        n_test = min(max(round(test_fraction * m), 1), m - 1) if m >= 2 else 0
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = np.concatenate(train_parts)
    test = np.concatenate(test_parts)
    if test.size == 0:
        pick = int(rng.integers(len(train)))
        test = train[pick : pick + 1]
        train = np.delete(train, pick)
    return rng.permutation(train), rng.permutation(test)
