"""Synthetic data: interleaved 2-D spirals for decision-boundary pictures."""

from __future__ import annotations

import numpy as np

from ._validate import check_fraction, check_int, check_real, check_seed
from .dataset import Dataset, stratified_split

__all__ = ["spirals"]


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

    Examples:
        >>> ds = spirals(n_per_class=50, num_classes=3)
        >>> ds.x_train.shape[1], ds.num_classes, len(ds.y_train) + len(ds.y_test)
        (2, 3, 150)
    """
    fn = "spirals"
    check_int(fn, "n_per_class", n_per_class, minimum=2)
    check_int(fn, "num_classes", num_classes, minimum=2)
    check_real(fn, "noise", noise, minimum=0.0)
    check_seed(fn, seed)
    check_fraction(fn, test_fraction)

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
    train, test = stratified_split(y, test_fraction, rng)
    return Dataset(
        x[train], y[train], x[test], y[test], num_classes=int(num_classes), name="spirals"
    )
