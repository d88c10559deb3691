"""The bundled 8x8 UCI handwritten digits (``digits.npz`` inside this package)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from ._validate import check_fraction, check_seed
from .dataset import Dataset, stratified_split

__all__ = ["DIGITS_ATTRIBUTION", "digits"]

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

    Examples:
        >>> ds = digits()
        >>> ds.x_train.shape[1], ds.num_classes, len(ds.y_train) + len(ds.y_test)
        (64, 10, 1797)
    """
    fn = "digits"
    check_fraction(fn, test_fraction)
    check_seed(fn, seed)
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
    train, test = stratified_split(y, test_fraction, rng)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10, name="digits")
