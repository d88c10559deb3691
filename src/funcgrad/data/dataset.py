"""The :class:`Dataset` container and the stratified train/test split."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._validate import describe

__all__ = ["Dataset", "stratified_split"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test split.

    Attributes:
        x_train: Training features, ``float32`` of shape ``(n_train, features)``.
        y_train: Training labels, ``int32`` of shape ``(n_train,)``, in
            ``[0, num_classes)``.
        x_test: Test features, ``float32`` of shape ``(n_test, features)``.
        y_test: Test labels, ``int32`` of shape ``(n_test,)``.
        num_classes: Number of classes (at least 2); labels are ``0 .. num_classes - 1``.
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
                    f"expected dtype {name}, got {describe(value)}"
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
            or self.num_classes < 2
        ):
            raise ValueError(
                "Dataset: num_classes must be an integer >= 2 (a classifier needs at least "
                f"two classes); expected >= 2, got {self.num_classes!r}"
            )
        for field in ("y_train", "y_test"):
            y = getattr(self, field)
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"Dataset: {field} labels must lie in [0, num_classes); expected "
                    f"0 <= y < {self.num_classes}, got range [{y.min()}, {y.max()}]"
                )


def stratified_split(
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
