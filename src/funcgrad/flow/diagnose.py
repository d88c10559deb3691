"""Flag each layer as vanishing, exploding or dead from :func:`~funcgrad.flow.layer_stats`.

Runs on the host (NumPy) on fetched statistics; the thresholds are documented in
:func:`diagnose` and in ``docs/gradient_flow.md``.

Examples:
    >>> import numpy as np
    >>> d = diagnose({"grad_norm": np.array([1e-6, 0.5, 1.0])})
    >>> d.short(), d.to_dict()["vanishing"]
    ('vanishing 0', [0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .history import History

__all__ = ["DEFAULT_THRESHOLDS", "FLAGS", "Diagnosis", "diagnose"]

#: Default thresholds of :func:`diagnose` (see its docstring for the reasoning).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "vanishing_ratio": 1e-2,
    "vanishing_norm": 1e-8,
    "exploding_norm": 1e3,
    "exploding_update_ratio": 1.0,
    "dead_fraction": 0.9,
}

#: The flags :func:`diagnose` can raise, in report order.
FLAGS: tuple[str, ...] = ("vanishing", "exploding", "dead")

def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start, prev = [], None, None
    for i in list(indices) + [None]:
        if start is None:
            start = prev = i
            continue
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Per-layer flags from :func:`diagnose`.

    Attributes:
        names: the layer names.
        flags: for each layer, the set of flags that fired (``"vanishing"``,
            ``"exploding"``, ``"dead"``); empty when the layer looks healthy.
        thresholds: the thresholds used.
    """

    names: tuple[str, ...]
    flags: tuple[frozenset[str], ...]
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether any flag fired on any layer."""
        return any(self.flags)

    def layers(self, flag: str) -> list[int]:
        """Indices of the layers that carry ``flag``.

        Args:
            flag: ``"vanishing"``, ``"exploding"`` or ``"dead"``.

        Returns:
            The layer indices, ascending.

        Raises:
            ValueError: if ``flag`` is not one of :data:`FLAGS`.
        """
        if flag not in FLAGS:
            raise ValueError(f"Diagnosis.layers: argument 'flag' must be one of "
                             f"{list(FLAGS)}; got {flag!r}")
        return [i for i, f in enumerate(self.flags) if flag in f]

    def short(self) -> str:
        """A compact summary such as ``"vanishing 0-9; dead 3"``, or ``"-"``."""
        parts = [f"{flag} {_ranges(self.layers(flag))}" for flag in FLAGS if self.layers(flag)]
        return "; ".join(parts) or "-"

    def to_dict(self) -> dict[str, list[int]]:
        """``{"vanishing": [...], "exploding": [...], "dead": [...]}`` (JSON-ready)."""
        return {flag: self.layers(flag) for flag in FLAGS}

    def __str__(self) -> str:
        if not self.any:
            return f"no flags ({len(self.names)} layers)"
        n = len(self.names)
        return "; ".join(f"{flag} in layer{'s' if len(ix) > 1 else ''} {_ranges(ix)} of {n}"
                         for flag in FLAGS if (ix := self.layers(flag)))


def diagnose(
    stats: Mapping[str, Any] | History,
    *,
    vanishing_ratio: float = DEFAULT_THRESHOLDS["vanishing_ratio"],
    vanishing_norm: float = DEFAULT_THRESHOLDS["vanishing_norm"],
    exploding_norm: float = DEFAULT_THRESHOLDS["exploding_norm"],
    exploding_update_ratio: float = DEFAULT_THRESHOLDS["exploding_update_ratio"],
    dead_fraction: float = DEFAULT_THRESHOLDS["dead_fraction"],
    names: Sequence[str] | None = None,
) -> Diagnosis:
    """Flag each layer as vanishing, exploding or dead from :func:`layer_stats` output.

    Runs on the host (NumPy) on fetched :func:`funcgrad.flow.layer_stats` statistics.
    A layer is

    * **vanishing** if its gradient norm is below ``vanishing_ratio`` times the largest
      finite layer norm (the layer learns that many times slower under SGD), or below
      ``vanishing_norm`` in absolute terms (``lr · g`` is then below the float32 spacing of
      weights of size ~0.1, about 7e-9, for any learning rate up to 1: the update rounds
      away);
    * **exploding** if its gradient norm is not finite, or above ``exploding_norm``, or if
      ``update_ratio`` (when present) is above ``exploding_update_ratio`` -- one step would
      change the layer by more than its own size. ``exploding_norm`` depends on the loss's
      scale: a mean cross-entropy gives layer norms of order 1 in a healthy network;
    * **dead** if more than ``dead_fraction`` of its gradient elements are exactly zero
      (relu units that never fire pass back exact zeros).

    Args:
        stats: a mapping with 1-D ``grad_norm`` and, optionally, ``grad_zero_fraction``
            and ``update_ratio`` (device or host arrays), such as a record of a
            :class:`~funcgrad.flow.History`; or the ``History`` (its newest record).
        vanishing_ratio: relative threshold for vanishing.
        vanishing_norm: absolute threshold for vanishing.
        exploding_norm: absolute threshold for exploding.
        exploding_update_ratio: threshold on ``‖update‖ / ‖param‖``.
        dead_fraction: threshold on the fraction of exact zeros.
        names: layer names (default ``"0"``, ``"1"``, ...).

    Returns:
        A :class:`Diagnosis`.

    Raises:
        ValueError: if ``grad_norm`` is missing or not 1-D, another statistic or ``names``
            has another length, a threshold is not positive, or a ``History`` has no
            record.

    Examples:
        >>> import numpy as np
        >>> d = diagnose({"grad_norm": np.array([1e-6, 1e-3, 0.5, np.inf]),
        ...               "grad_zero_fraction": np.array([0.0, 0.95, 0.0, 0.0])})
        >>> print(d)
        vanishing in layers 0-1 of 4; exploding in layer 3 of 4; dead in layer 1 of 4
    """
    thresholds = {"vanishing_ratio": vanishing_ratio, "vanishing_norm": vanishing_norm,
                  "exploding_norm": exploding_norm,
                  "exploding_update_ratio": exploding_update_ratio,
                  "dead_fraction": dead_fraction}
    for key, value in thresholds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"diagnose: argument {key!r} must be a number > 0; got {value!r}")
    norm, zeros, ratio = _per_layer_arrays(_newest(stats))
    n = len(norm)
    names = tuple(str(i) for i in range(n)) if names is None else tuple(names)
    if len(names) != n:
        raise ValueError(f"diagnose: argument 'names' must have {n} entries (one per layer); "
                         f"got {len(names)}")
    finite = np.isfinite(norm)
    largest = float(np.max(norm[finite])) if finite.any() else 0.0
    flags = []
    for i in range(n):
        f = set()
        if not finite[i] or norm[i] > exploding_norm or (
                ratio is not None and np.isfinite(ratio[i]) and ratio[i] > exploding_update_ratio):
            f.add("exploding")
        if finite[i] and (norm[i] < vanishing_norm or norm[i] < vanishing_ratio * largest):
            f.add("vanishing")
        if zeros is not None and zeros[i] > dead_fraction:
            f.add("dead")
        flags.append(frozenset(f))
    return Diagnosis(names, tuple(flags), thresholds)


def _newest(stats: Mapping[str, Any] | History) -> Mapping[str, Any]:
    """``stats`` itself, or a History's newest record (pending steps fetched first)."""
    if not isinstance(stats, History):
        return stats
    stats.fetch()
    if not stats.records:
        raise ValueError("diagnose: argument 'stats' is a History without records (none "
                         "appended yet, or keep=False); pass one record, e.g. the argument "
                         "of its on_fetch")
    return stats.records[-1]


def _per_layer_arrays(stats: Mapping[str, Any]
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``grad_norm``, ``grad_zero_fraction`` and ``update_ratio`` as float64 host arrays."""
    if "grad_norm" not in stats:
        raise ValueError(f"diagnose: argument 'stats' must have a 'grad_norm' entry (from "
                         f"layer_stats); got keys {sorted(stats)}")
    norm = np.asarray(jax.device_get(stats["grad_norm"]), np.float64)
    if norm.ndim != 1:
        raise ValueError(f"diagnose: argument 'stats' must hold a 1-D 'grad_norm' (one "
                         f"entry per layer); got shape {norm.shape}")

    def per_layer(key: str) -> np.ndarray | None:
        if key not in stats:
            return None
        arr = np.asarray(jax.device_get(stats[key]), np.float64)
        if arr.shape != norm.shape:
            raise ValueError(f"diagnose: argument 'stats' entry {key!r} must have shape "
                             f"{norm.shape} like 'grad_norm'; got {arr.shape}")
        return arr

    return norm, per_layer("grad_zero_fraction"), per_layer("update_ratio")
