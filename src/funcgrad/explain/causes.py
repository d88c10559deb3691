"""The table of causes :func:`funcgrad.explain.find_nonfinite` diagnoses, in plain language.

:func:`diagnose` matches what was found (the phase, the op, the values at the offending
element, whether the forward value was masked, the arguments' magnitudes) against
:data:`CAUSES`, first match wins, and returns the cause's key, a diagnosis and a fix.

Examples:
    >>> sorted(CAUSES)[:3]
    ['div_by_zero', 'exp_overflow', 'invalid']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CAUSES", "NOT_ELEMENTWISE", "Finding", "diagnose"]

#: A float32 argument above this magnitude at entry counts as blown up.
HUGE = 1e10

#: key -> (what happened, how to fix it). ``{...}`` fields come from :class:`Finding`.
CAUSES: Mapping[str, tuple[str, str]] = {
    "parameters_blown_up": (
        "the arguments are already {entry} when the step starts: an earlier update blew "
        "the parameters up, typically a learning rate too large for this loss",
        "lower the learning rate, clip the gradient norm (optax.clip_by_global_norm), or "
        "warm the learning rate up; restart from the last finite checkpoint"),
    "masked_branch": (
        "{op} gave {out} at element {index} in the forward pass, but a later op masked "
        "it (a where/select, or a saturating op: tanh(-inf) = -1), so the loss is "
        "finite. In the backward pass the masked branch still receives a gradient of 0, "
        "and {op}'s rule multiplies it by its local derivative there, which is infinite: "
        "0 · inf = nan, only in the backward pass",
        "the double-where trick: make the unsafe branch's input safe as well, e.g. "
        "where(x > 0, log(where(x > 0, x, 1.0)), 0.0), so neither pass ever sees log(0)"),
    "masked_forward": (
        "{op} gave {out} at element {index} in the forward pass, but a where/select "
        "masked it: the loss and the gradients are finite. Harmless here, but one input "
        "away from a nan gradient (at log(0) or x/0 the backward pass computes 0 · inf)",
        "the double-where trick: make the unsafe branch's input safe as well, e.g. "
        "where(x > 0, log(where(x > 0, x, 1.0)), 0.0)"),
    "log_at_zero": (
        "log at 0 is -inf (and its derivative 1/x is infinite there){why}",
        "keep the argument away from 0: log(x + eps) or log(maximum(x, eps)); compute in "
        "log space (log_softmax rather than log(softmax))"),
    "log_of_negative": (
        "log of a negative number is nan",
        "make sure the argument is positive (softplus, exp, or clip it)"),
    "div_by_zero": (
        "division by 0 gives inf (or nan for 0/0)",
        "add eps to the denominator, or guard it with the double-where trick"),
    "exp_overflow": (
        "exp overflows {dtype} above x = {limit:.4g}; here x = {x}",
        "subtract the maximum first (logsumexp, a stable softmax), or clip the argument"),
    "sqrt_at_zero": (
        "{op} at 0 is finite, but its derivative (1/(2 sqrt x) for sqrt, p x^(p-1) for a "
        "power p < 1) is infinite there, so the backward pass gets inf",
        "add eps inside: sqrt(x + eps), or a norm as sqrt(sum(x²) + eps)"),
    "sqrt_of_negative": (
        "{op} of a negative number is nan",
        "make sure the argument is >= 0 (square it, or clip it at 0)"),
    "sum_of_squares_overflow": (
        "a sum of squares overflowed {dtype} (largest {max:.3g}): elements of size {x} "
        "square to about {x2}",
        "scale before squaring (norm = s · sqrt(sum((x / s)²)) with s = max|x|), reduce "
        "in float64, or find out why the values are so large"),
    "overflow": (
        "{op} overflowed {dtype} (largest {max:.3g}) from finite inputs",
        "find out why the values are so large (learning rate, initialisation, missing "
        "normalisation); scale them down or compute in a wider dtype"),
    "invalid": (
        "{op} gave nan from finite inputs (inf - inf, 0 · inf or 0/0 inside it)",
        "look at the op's inputs at the element below; guard the invalid case"),
}

#: Ops whose output element does not line up with its inputs' elements.
NOT_ELEMENTWISE = frozenset({
    "dot_general", "matmul", "dense", "sum", "mean", "reduce_sum", "reduce_max",
    "reduce_min", "reduce_prod", "cumsum", "softmax_cross_entropy", "batch_norm",
    "mean_squared_error", "conv_general_dilated", "scan", "transpose", "reshape",
    "gather", "scatter-add", "concatenate", "scan_stack", "scan_index"})

_LOG = {"log", "log1p"}
_DIV = {"div", "divide", "rem"}
_EXP = {"exp", "exp2", "expm1"}
_SQRT = {"sqrt", "rsqrt", "power", "pow", "cbrt"}
_SUMS = {"sum", "reduce_sum", "mean", "dot_general", "matmul", "squared_error",
         "mean_squared_error", "add", "add_any", "cumsum"}
_SQUARES = {"square", "integer_pow", "pow", "power", "squared_error", "mean_squared_error"}


@dataclasses.dataclass
class Finding:
    """What the replay found, as the table reads it.

    Attributes:
        phase: ``"input"``, ``"forward"`` or ``"backward"``.
        op: the equation's op (a funcgrad primitive's name or a JAX primitive's).
        values: ``(name, value)`` at the offending element (``max|name|`` for inputs
            that do not broadcast to it).
        value: the offending value at that element (``nan``, ``inf``, ``-inf``).
        index: the flat element index.
        dtype: the offending array's dtype name.
        masked: backward only: the op's own forward value was not finite (masked).
        squares_in: the op sums values an earlier square-like op computed.
        entry: a description of non-finite or huge arguments at entry, or ``""``.
    """

    phase: str
    op: str
    values: tuple[tuple[str, float], ...]
    value: float
    index: int
    dtype: str
    masked: bool = False
    squares_in: bool = False
    entry: str = ""


def _first_input(f: Finding) -> float | None:
    for name, v in f.values:
        if not name.startswith("max|") and name not in ("out", "dL/dout"):
            return v
    return None


def _second_input(f: Finding) -> float | None:
    ins = [v for n, v in f.values if not n.startswith("max|") and n not in ("out", "dL/dout")]
    return ins[1] if len(ins) > 1 else None


def _key(f: Finding) -> str:
    x = _first_input(f)
    inf = math.isinf(f.value)
    if f.phase == "input":
        return "parameters_blown_up"
    if f.masked:
        return "masked_branch" if f.phase == "backward" else "masked_forward"
    if inf and f.phase == "forward" and (
            f.op in _SQUARES or (f.op in _SUMS and f.squares_in)):
        return "sum_of_squares_overflow"
    if f.entry and inf and f.op not in _EXP:
        return "parameters_blown_up"
    if f.op in _LOG and x is not None:
        return "log_at_zero" if x == 0 else "log_of_negative" if x < 0 else "invalid"
    if f.op in _DIV and _second_input(f) == 0:
        return "div_by_zero"
    if f.op in _EXP and inf:
        return "exp_overflow"
    if f.op in _SQRT and x is not None and (x == 0 or x < 0):
        return "sqrt_at_zero" if x == 0 else "sqrt_of_negative"
    return "overflow" if inf else "invalid"


def diagnose(f: Finding) -> tuple[str, str, str]:
    """Match a finding against :data:`CAUSES`.

    Args:
        f: the :class:`Finding`.

    Returns:
        ``(cause key, diagnosis, fix)``.

    Examples:
        >>> key, text, fix = diagnose(Finding("forward", "log", (("x", 0.0),),
        ...                                   float("-inf"), 2, "float32"))
        >>> key, text.split(" (")[0], fix.split(":")[0]
        ('log_at_zero', 'log at 0 is -inf', 'keep the argument away from 0')
    """
    import numpy as np

    key = _key(f)
    what, fix = CAUSES[key]
    finfo: Any = np.finfo(np.dtype(f.dtype)) if f.dtype else np.finfo(np.float32)
    x = _first_input(f)
    x2 = None if x is None else x * x
    if key == "sum_of_squares_overflow" and x is None:
        x2 = next((v for n, v in f.values if n.startswith("max|")), None)
        x = None if x2 is None else math.sqrt(x2)
    fields = {
        "op": f.op, "value": _num(f.value), "index": f.index, "dtype": f.dtype or "float32",
        "limit": math.log(float(finfo.max)), "x": _num(x), "max": float(finfo.max),
        "x2": _num(x2), "entry": f.entry or "not finite",
        "why": ("; a relu that outputs 0 (a dead unit) feeding log does this"
                if any("relu" in n for n, _ in f.values) else ""),
        "out": _num(dict(f.values).get("out")),
    }
    text = what.format(**fields)
    if f.entry and key != "parameters_blown_up":
        text += (f". The arguments are already {f.entry} at entry: perhaps a learning rate "
                 "that blew the parameters up")
    return key, text, fix


def _num(v: float | None) -> str:
    if v is None:
        return "?"
    try:
        return f"{v:.4g}"
    except (TypeError, ValueError):
        return str(v)
