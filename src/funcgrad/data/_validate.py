"""Argument and array checks shared by the loaders; every error names the function.

Messages follow the core dialect: ``<function>: <argument> must ...; expected ..., got ...``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "check_classes",
    "check_fraction",
    "check_int",
    "check_real",
    "check_same_length",
    "check_seed",
    "describe",
    "features",
    "labels",
]


def describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def check_fraction(fn: str, value: object) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: test_fraction must be a real number; expected a float in (0, 1), got {value!r}"
        )
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{fn}: test_fraction must lie strictly between 0 and 1; "
            f"expected 0 < test_fraction < 1, got {value!r}"
        )


def check_int(fn: str, arg: str, value: object, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: {arg} must be an integer; expected an int >= {minimum}, got {value!r}"
        )
    if value < minimum:
        raise ValueError(f"{fn}: {arg} is too small; expected an int >= {minimum}, got {value!r}")


def check_seed(fn: str, value: object) -> None:
    check_int(fn, "seed", value, minimum=0)


def check_real(fn: str, arg: str, value: object, minimum: float) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{fn}: {arg} must be a real number; expected a finite float >= {minimum}, "
            f"got {value!r}"
        )
    if not math.isfinite(float(value)) or float(value) < minimum:
        raise ValueError(
            f"{fn}: {arg} is out of range; expected a finite float >= {minimum}, got {value!r}"
        )


def features(fn: str, name: str, arr: np.ndarray) -> np.ndarray:
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


def labels(fn: str, name: str, arr: np.ndarray) -> np.ndarray:
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


def check_same_length(fn: str, x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(
            f"{fn}: arrays {x_name!r} and {y_name!r} must have the same number of samples; "
            f"expected len({x_name}) == len({y_name}), got {x_name}.shape={x.shape} "
            f"and {y_name}.shape={y.shape}"
        )




def check_classes(fn: str, y: np.ndarray, y_test: np.ndarray | None = None) -> None:
    """Class labels must be ``0 .. K-1`` with ``K >= 2`` and every class present.

    One class cannot train a classifier, and a sparse label set such as
    ``{0, 1, 2, 99999}`` would build a 100,000-way output layer for 4 classes.

    Args:
        fn: The calling function's name, for the message.
        y: Training labels (non-negative integers).
        y_test: Test labels, if given separately.

    Raises:
        ValueError: Fewer than 2 classes, or labels with gaps (the message suggests a
            remap).

    Examples:
        >>> check_classes("load_npz", np.array([0, 1, 2, 99999]))
        Traceback (most recent call last):
        ...
        ValueError: load_npz: class labels must be 0..K-1 with no gaps; expected 4 classes ...
    """
    names = "'y'" if y_test is None else "'y' and 'y_test'"
    both = y if y_test is None else np.concatenate([y, y_test])
    present = np.unique(both)
    if len(present) < 2:
        got = "no labels" if len(present) == 0 else f"only class {int(present[0])}"
        raise ValueError(
            f"{fn}: array {names} must hold at least 2 classes; expected labels 0..K-1 "
            f"with K >= 2, got {got}"
        )
    highest = int(present[-1])
    if highest + 1 != len(present):
        values = [str(int(c)) for c in present[:5]]
        if len(present) > 5:
            values += ["...", str(highest)]
        shown = "[" + ", ".join(values) + "]"
        raise ValueError(
            f"{fn}: class labels must be 0..K-1 with no gaps; expected {len(present)} "
            f"classes numbered 0..{len(present) - 1}, got labels {shown} (max {highest} "
            f"would make a {highest + 1}-way classifier); remap them, e.g. with "
            "np.unique(y, return_inverse=True)"
        )
