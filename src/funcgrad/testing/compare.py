"""Tolerances and comparators: the one place that decides whether two gradients agree.

Two kinds of comparison, both strict about non-finite values:

* **same precision** (:func:`compare`, float32/float64): an element passes when
  ``|actual - expected| <= atol * scale + rtol * |expected|``, where ``scale`` is the
  largest *finite* ``|expected|`` of that argument (at least 1), so cancellation near zero
  inside a large gradient is judged relative to the gradient's size.
* **low precision against a float64 truth** (``relative=True``, float16/bfloat16): each
  element is judged on its own, ``|actual - expected| <= rtol * |expected| + floor +
  atol * scale``: ``floor`` is tied to the dtype's smallest normal number, and
  ``atol`` is one or two unit roundoffs only, the cancellation a correct rule suffers when
  it subtracts rounded terms of the gradient's size (``softmax - onehot``, batch norm).
  A systematic error must also stay below ``rtol / 3``: the *median* signed relative error
  over 16 or more elements, so a gradient scaled by 0.99 fails in float16 and bfloat16
  (and 0.9 in bfloat16) while rounding noise, which has median about 0, passes.

Non-finite expected values must be matched exactly (same infinity, NaN where NaN); a
non-finite actual value where the expected one is finite always fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "FD_TOLERANCE", "EDGE_AGREEMENT", "tolerance_for", "Mismatch",
           "Comparison", "compare", "merge"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Tolerance for one dtype.

    Attributes:
        rtol: relative tolerance per element.
        atol: absolute tolerance, scaled by the largest finite ``|expected|``; for float16
            and bfloat16 about two unit roundoffs (cancellation only).
        floor: absolute floor per element for low-precision checks against a float64
            truth (tied to the dtype's smallest normal number).
    """

    rtol: float
    atol: float
    floor: float = 0.0


#: The one tolerance table, by dtype name.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-11),
    "float32": Tolerance(rtol=2e-5, atol=2e-6, floor=float(np.finfo(np.float32).tiny) * 16),
    # float16: unit roundoff u = 2^-11 = 4.9e-4; rtol 4u, atol 2u; floor = smallest normal.
    "float16": Tolerance(rtol=2e-3, atol=1e-3, floor=6.103515625e-05),
    # bfloat16: u = 2^-8 = 3.9e-3; rtol 2.5u, atol 2u; floor = 2^10 x smallest normal.
    "bfloat16": Tolerance(rtol=1e-2, atol=8e-3, floor=1.1754943508222875e-38 * 1024),
}

#: Tolerance of float64 central finite differences (step ``fd_eps``) against the rule.
FD_TOLERANCE = Tolerance(rtol=1e-6, atol=1e-7)

#: The rule's float64 value against the reference's float64 value at an edge point: the
#: formula must agree even where ``jax.grad`` of a textbook reference loses digits in
#: float64 (1e-3 relative for ``1 - sigmoid(x)`` at x = 30).
EDGE_AGREEMENT = Tolerance(rtol=1e-2, atol=0.0, floor=1e-300)

#: Minimum number of elements for the low-precision bias check.
BIAS_MIN_ELEMENTS = 16


def tolerance_for(dtype: Any) -> Tolerance:
    """Return the :data:`TOLERANCES` entry for ``dtype``.

    Args:
        dtype: a floating dtype.

    Returns:
        Its tolerance.

    Raises:
        KeyError: for a dtype with no entry (integers, complex).

    Examples:
        >>> tolerance_for("float32").rtol
        2e-05
    """
    import jax.numpy as jnp

    name = jnp.dtype(dtype).name
    if name not in TOLERANCES:
        raise KeyError(f"tolerance_for: no tolerance for dtype {name}; known: {list(TOLERANCES)}")
    return TOLERANCES[name]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The worst element of one comparison.

    Attributes:
        check: which check: ``"reference"``, ``"finite_differences"``, ``"dot_product"``,
            ``"second_order"``, ``"edge_points"``, ...
        arg: positional index of the argument.
        argname: the argument's name, when known.
        index: the element's index in that argument (leaf).
        expected: the oracle's value there.
        actual: the checked rule's value there.
        abs_err: ``|actual - expected|`` (inf where a non-finite value does not match).
        rel_err: ``abs_err / max(|expected|, tiny)``.
        allowed: the error the tolerance allows at that element.
        cotangent: which random cotangent exposed it (0-based).
        path: the pytree path inside the argument (``"['w']"``), ``""`` for an array.
    """

    check: str
    arg: int
    argname: str
    index: tuple[int, ...]
    expected: float
    actual: float
    abs_err: float
    rel_err: float
    allowed: float
    cotangent: int = 0
    path: str = ""

    def __str__(self) -> str:
        where = f"argument {self.argname!r}{self.path} (position {self.arg}) element {self.index}"
        return (f"[{self.check}] {where}: expected {self.expected:.9g}, got {self.actual:.9g} "
                f"(abs err {self.abs_err:.3g}, rel err {self.rel_err:.3g}, allowed "
                f"{self.allowed:.3g}, cotangent #{self.cotangent})")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Summary of one kind of check over all arguments and cotangents."""

    check: str
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst: Mismatch | None
    note: str = ""


def _errors(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``|a - e|``, 0 where both are the same non-finite value, inf on any other mismatch."""
    finite_e = np.isfinite(e)
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - e)
    err = np.where(finite_e, err, np.where(same, 0.0, np.inf))
    return np.where(np.isnan(err), np.inf, err)  # NaN actual against finite expected


def _allowed(e: np.ndarray, tol: Tolerance, relative: bool) -> np.ndarray:
    mag = np.where(np.isfinite(e), np.abs(e), 0.0)  # a non-finite oracle allows nothing
    if relative:
        return tol.rtol * mag + tol.floor + tol.atol * float(np.max(mag, initial=0.0))
    scale = max(1.0, float(np.max(mag, initial=0.0)))
    return tol.atol * scale + tol.rtol * mag


def _bias(a: np.ndarray, e: np.ndarray, tol: Tolerance) -> float:
    """Median signed relative error over elements well above the floor (0 if too few)."""
    big = np.isfinite(e) & np.isfinite(a) & (np.abs(e) > 1e3 * max(tol.floor, 1e-300))
    if int(big.sum()) < BIAS_MIN_ELEMENTS:
        return 0.0
    return float(np.median((a[big] - e[big]) / e[big]))


def _judge(a: np.ndarray, e: np.ndarray, tol: Tolerance, relative: bool,
           m: np.ndarray | None, base: np.ndarray | None) -> tuple:
    """Per-element error, allowance, relative error and score (> 0 fails); baseline bias."""
    err = _errors(a, e)
    allowed = _allowed(e, tol, relative)
    base_bias = 0.0
    if base is not None:
        with np.errstate(invalid="ignore"):
            allowed = allowed + 2 * np.where(np.isfinite(e), _errors(base, e), 0.0)
        base_bias = abs(_bias(base, e, tol))
    if m is not None:
        err, allowed = np.where(m, err, 0.0), np.where(m, allowed, np.inf)
    rel = err / np.maximum(np.abs(np.where(np.isfinite(e), e, 1.0)), np.finfo(np.float64).tiny)
    with np.errstate(invalid="ignore"):
        score = np.where(np.isinf(err), np.inf, err - allowed)
    return err, allowed, rel, score, base_bias


def compare(check: str, actual: Sequence[Any], expected: Sequence[Any],
            positions: Sequence[int], names: Sequence[str], tol: Tolerance, cot: int = 0,
            *, relative: bool = False, paths: Sequence[str] | None = None,
            mask: Sequence[Any] | None = None, baseline: Sequence[Any] | None = None,
            round_to: Any = None) -> Comparison:
    """Compare leaf by leaf; report the element furthest past (or closest to) its tolerance.

    Args:
        check: name of the check, copied into the :class:`Mismatch`.
        actual: the checked values, one array per leaf.
        expected: the oracle's values, same shapes.
        positions: the positional argument index of each leaf.
        names: argument names, indexed by position.
        tol: the tolerance.
        cot: which cotangent produced these values.
        relative: per-element relative comparison with an absolute floor (low precision
            against a float64 truth), plus the systematic-error (median) check.
        paths: the pytree path of each leaf inside its argument.
        mask: optional boolean arrays; only ``True`` elements are judged.
        baseline: optional; JAX's autodiff of the reference in the same low precision.
            An element may be off by twice the baseline's own error there (and the median
            by twice the baseline's median): a rule is held to what the dtype allows for
            that function (batch norm in float16 is ill-conditioned), not to more.
        round_to: a dtype; the expected values are first rounded to it (a float64 truth
            beyond float16's range is ``inf`` in float16).

    Returns:
        A :class:`Comparison`.

    Raises:
        AssertionError: if a leaf's shape differs from the oracle's.

    Examples:
        >>> import numpy as np
        >>> c = compare("reference", [np.array([1.0, 0.0])], [np.array([1.0, np.inf])],
        ...             [0], ["x"], TOLERANCES["float32"])
        >>> c.ok, c.worst.index, c.worst.expected
        (False, (1,), inf)
    """
    worst, worst_score, ok = None, -np.inf, True
    max_abs = max_rel = 0.0
    notes = []
    paths = list(paths) if paths is not None else [""] * len(actual)
    for k, (pos, a, e) in enumerate(zip(positions, actual, expected, strict=True)):
        a = np.asarray(a).astype(np.float64)  # bfloat16/float16 widen exactly
        e = np.asarray(e).astype(np.float64)
        if round_to is not None:
            with np.errstate(over="ignore"):
                e = e.astype(round_to).astype(np.float64)
        if a.shape != e.shape:
            raise AssertionError(f"check_vjp [{check}]: cotangent of argument {names[pos]!r}"
                                 f"{paths[k]} has shape {a.shape}, expected {e.shape}")
        if a.size == 0:
            continue
        m = None if mask is None else np.asarray(mask[k], bool)
        base = None if baseline is None else np.asarray(baseline[k]).astype(np.float64)
        err, allowed, rel, score, base_bias = _judge(a, e, tol, relative, m, base)
        i = int(np.argmax(score))
        idx = tuple(int(v) for v in np.unravel_index(i, a.shape))
        max_abs = max(max_abs, float(np.max(err)))
        max_rel = max(max_rel, float(np.max(np.where(err == 0, 0.0, rel))))
        if np.any(score > 0):
            ok = False
        if relative:
            b = _bias(a if mask is None else np.where(m, a, e), e, tol)
            limit = tol.rtol / 3 + 2 * base_bias
            if abs(b) > limit:
                ok = False
                notes.append(f"argument {names[pos]!r}{paths[k]}: systematic relative error "
                             f"{b:+.3g} (median over elements; allowed {limit:.3g})")
        if float(score.flat[i]) > worst_score or worst is None:
            worst_score = float(score.flat[i])
            worst = Mismatch(check, pos, names[pos], idx, float(e.flat[i]), float(a.flat[i]),
                             float(err.flat[i]), float(rel.flat[i]),
                             float(allowed.flat[i]), cot, paths[k])
    return Comparison(check, ok, max_abs, max_rel, worst, "; ".join(notes))


def merge(check: str, parts: Sequence[Comparison]) -> Comparison:
    """Merge comparisons of one check (several cotangents) into one.

    Args:
        check: the merged check's name.
        parts: the comparisons.

    Returns:
        A :class:`Comparison` that fails if any part fails, with the worst element.
    """
    worst, best = None, -np.inf
    for p in parts:
        if p.worst is not None:
            score = p.worst.abs_err - p.worst.allowed
            if np.isnan(score):
                score = np.inf
            if score > best or worst is None:
                best, worst = score, p.worst
    notes = "; ".join(p.note for p in parts if p.note)
    return Comparison(check, all(p.ok for p in parts),
                      max((p.max_abs_err for p in parts), default=0.0),
                      max((p.max_rel_err for p in parts), default=0.0), worst, notes)
