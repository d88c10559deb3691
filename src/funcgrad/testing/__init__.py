"""The rule checker: prove any custom VJP rule right, and put your own primitives under it.

* :func:`check_vjp` checks one function at given arguments (arrays or pytrees) against a
  reference, a float64 truth, float64 finite differences and a dot-product test, and names
  the worst element: argument, pytree path, index, expected and actual.
* :func:`check_primitive` runs the full battery on a registry record, one row per check;
  :func:`check_registry` runs it over the registry (``funcgrad check``).
* :func:`assert_primitive_ok` and :func:`parametrize_primitives` put your own rules under
  the battery in one line of pytest.

Tolerances live in one table, :data:`TOLERANCES`, keyed by dtype name (see
:mod:`funcgrad.testing.compare`).
"""

from __future__ import annotations

from typing import Any

from ._leaves import only_args as only_args  # used by tests; not public API
from .battery import CHECKS, PrimitiveReport, Row, check_primitive, check_registry
from .compare import (
    FD_TOLERANCE,
    TOLERANCES,
    Comparison,
    Mismatch,
    Tolerance,
    tolerance_for,
)
from .plugin import assert_primitive_ok, parametrize_primitives
from .vjp import CheckResult, assert_vjp_matches, check_vjp

__all__ = [
    "TOLERANCES",
    "FD_TOLERANCE",
    "Tolerance",
    "Mismatch",
    "Comparison",
    "CheckResult",
    "check_vjp",
    "assert_vjp_matches",
    "tolerance_for",
    "saved_residual_bytes",
    "CHECKS",
    "Row",
    "PrimitiveReport",
    "check_primitive",
    "check_registry",
    "assert_primitive_ok",
    "parametrize_primitives",
]


def saved_residual_bytes(fn: Any, *args: Any) -> tuple[int, int]:
    """Count the residuals reverse mode saves for ``fn`` at ``args``, and their bytes.

    Uses JAX's own residual accounting (the data behind
    ``jax.ad_checkpoint.print_saved_residuals``), so custom rules and JAX's autodiff are
    measured the same way. Arguments that are saved count too.

    Args:
        fn: the function, differentiated with respect to all ``args``.
        *args: floating-point arrays.

    Returns:
        ``(count, bytes)``.

    Examples:
        >>> import jax.numpy as jnp, funcgrad as fg
        >>> saved_residual_bytes(fg.tanh, jnp.ones(4))
        (1, 16)
    """
    import jax.numpy as jnp
    import numpy as np
    from jax._src.ad_checkpoint import saved_residuals  # no public equivalent returns data

    total = 0
    res = saved_residuals(fn, *args)
    for aval, _ in res:
        total += int(np.prod(aval.shape, dtype=np.int64)) * jnp.dtype(aval.dtype).itemsize
    return len(res), total
