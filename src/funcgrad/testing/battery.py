"""The full battery for one registered primitive, from its registry record.

:func:`check_primitive` runs every check the record allows and returns one
:class:`Row` per check. A crash inside a check (a rule that forgets to unbroadcast, a
matmul with a wrong transpose, a dtype leak) becomes a failing row carrying the error
text; the battery itself never raises for a bad rule.

Checks, in order:

``primal``
    the plain forward (not under differentiation) against the forward under ``jax.vjp``
    and against the reference, float32 (and at the edge points against a float64 truth).
``reference``
    the rule's VJP against JAX's autodiff of the reference, float32, every sample shape
    (for broadcasting primitives this is the broadcast shape grid). Without a reference,
    against the rule's own float64 VJP.
``finite differences``, ``dot product``, ``grad of grad``
    float64: central differences of every element, ``<vjp(ct), v> = <ct, J v>`` along
    random directions, and the second derivative along random directions.
``kinks``
    the declared derivative at each kink (``kink_points``), float32 and float64, exactly.
``edge points``
    float32/float16/bfloat16 gradients at ``edge_points`` against a float64 truth.
``dtypes``
    float16, bfloat16, float32 and float64 outputs and cotangents keep the primal's dtype;
    float16/bfloat16 values agree element by element with a float64 truth.
``jit``, ``vmap``, ``scan``, ``remat``
    the VJP under each transformation equals the plain one.

Compiling is most of the battery's time, so checks share programs: primal, reference and
the transformations are one float32 program; edge points, dtypes and ``check_vjp``'s
float64 checks one float64 program. If a shared program crashes, each check runs alone,
so a crash fails the row of the check that crashed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _checks as ck
from ._state import Row, _Battery

__all__ = ["Row", "PrimitiveReport", "CHECKS", "check_primitive", "check_registry"]

#: Every check of the battery, in the order rows are reported.
CHECKS = ("primal", "reference", "finite differences", "dot product", "grad of grad",
          "kinks", "edge points", "dtypes", "jit", "vmap", "scan", "remat")
_QUICK = ("primal", "reference", "finite differences", "dot product", "kinks",
          "edge points", "dtypes")
@dataclasses.dataclass(frozen=True)
class PrimitiveReport:
    """The battery's verdict on one primitive.

    Attributes:
        name: the primitive's name.
        formula: its declared derivative.
        rows: one :class:`Row` per check that ran.
        seconds: wall time of the battery.
    """

    name: str
    formula: str
    rows: tuple[Row, ...]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every row passed."""
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> tuple[str, ...]:
        """``"check: detail"`` of every failing row."""
        return tuple(f"{r.check}: {r.detail}" for r in self.rows if not r.ok)

    def __str__(self) -> str:
        lines = [f"{self.name}: {'PASS' if self.ok else 'FAIL'}"]
        lines += [f"  {r.check}: {'ok' if r.ok else 'FAIL'} {r.detail}".rstrip()
                  for r in self.rows]
        return "\n".join(lines)


def check_primitive(prim: Any, *, checks: Sequence[str] | None = None, quick: bool = False,
                    seed: int = 0) -> PrimitiveReport:
    """Run the full battery on one primitive record; never raises for a bad rule.

    Args:
        prim: a registry record (``funcgrad.PRIMITIVES[name]``), or a primitive made by
            ``funcgrad.primitive`` (its ``.record`` is used).
        checks: run only these checks (names from :data:`CHECKS`); default: all.
        quick: only the first sample shape, and no transformations or grad of grad.
        seed: seed for samples, cotangents and directions.

    Returns:
        A :class:`PrimitiveReport` with one :class:`Row` per check.

    Raises:
        ValueError: for an unknown check name.

    Examples:
        >>> import funcgrad as fg
        >>> report = check_primitive(fg.PRIMITIVES["relu"], checks=["primal", "kinks"])
        >>> [(r.check, r.ok) for r in report.rows]
        [('primal', True), ('kinks', True)]
    """
    prim = getattr(prim, "record", prim)  # the primitive itself, or its record
    wanted = tuple(checks) if checks else (_QUICK if quick else CHECKS)
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        raise ValueError(f"check_primitive: unknown check(s) {unknown}; known: {list(CHECKS)}")
    t0 = time.perf_counter()
    b = _Battery(prim, seed)
    _float32_checks(b, wanted, prim.sample_shapes[:1] if quick else prim.sample_shapes)
    if "kinks" in wanted:
        b.run(["kinks"], lambda: ck._kinks(b) if b.unary_elementwise() else
              b.put("kinks", True, "not a unary elementwise rule"))
    f64 = [c for c in ("finite differences", "dot product", "grad of grad") if c in wanted]
    parts = [(row, build) for row, build in (
        (["edge points"], lambda: ck._edges(b)), (["dtypes"], lambda: ck._dtypes(b)))
        if row[0] in wanted]
    if f64:
        parts.append((f64, lambda: ck._float64(b, "grad of grad" in wanted)))
    ck.run_parts(b, parts, x64=True)
    rows = tuple(b.rows[c] for c in CHECKS if c in b.rows and c in wanted)
    return PrimitiveReport(prim.name, getattr(prim, "formula", ""), rows,
                           time.perf_counter() - t0)


def _float32_checks(b: _Battery, wanted: Sequence[str], shapes: Sequence[Any]) -> None:
    """primal, reference and the transformations: one float32 program."""
    parts = []
    if "primal" in wanted:
        parts.append((["primal"], lambda: ck._primal(b)))
    if "reference" in wanted and b.ref is None:
        b.run(["reference"], lambda: ck._reference_f64(b, shapes))
    elif "reference" in wanted:
        parts.append((["reference"], lambda: ck._reference(b, shapes)))
    tr = [c for c in ("jit", "vmap", "scan", "remat") if c in wanted]
    if tr:
        parts.append((tr, lambda: ck._transforms(b, tr)))
    ck.run_parts(b, parts)


def check_registry(names: Sequence[str] | None = None, *,
                   progress: Callable[[str], None] | None = None, workers: int | None = None,
                   **kwargs: Any) -> list[PrimitiveReport]:
    """Run :func:`check_primitive` over the registry (or the named primitives).

    Primitives are checked in ``workers`` threads (XLA compiles outside the GIL, and
    compiling is most of the battery's time); each report is the same as a serial run's.

    Args:
        names: primitive names; default: every primitive in :data:`funcgrad.PRIMITIVES`.
        progress: called with one line per primitive as it finishes.
        workers: threads; default: the number of CPUs, at most 2.
        **kwargs: options of :func:`check_primitive`.

    Returns:
        One report per primitive, in registry order.

    Raises:
        KeyError: naming unknown primitives.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from ..registry import PRIMITIVES

    names = list(PRIMITIVES) if names is None else list(names)
    unknown = [n for n in names if n not in PRIMITIVES]
    if unknown:
        raise KeyError(f"check_registry: unknown primitive(s) {unknown}; known: {list(PRIMITIVES)}")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    reports: dict[str, PrimitiveReport] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(check_primitive, PRIMITIVES[n], **kwargs): n for n in names}
        for k, fut in enumerate(as_completed(futures)):
            r = reports[futures[fut]] = fut.result()
            if progress is not None:
                progress(f"[{k + 1}/{len(names)}] {r.name}: {'PASS' if r.ok else 'FAIL'} "
                         f"({r.seconds:.1f} s)")
    return [reports[n] for n in names]
