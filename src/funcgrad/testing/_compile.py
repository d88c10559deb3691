"""How the checker compiles its programs: for a short compile, with the same verdicts.

Compiling is most of the battery's time (hundreds of small programs, each run once), so
the checker's programs ask XLA for a fast compile rather than fast code:

``xla_backend_optimization_level: 0``
    LLVM's lowest optimization level (about 30% less compile time; no fast math).
``xla_cpu_use_fusion_emitters: False``
    XLA:CPU's classic elemental emitters instead of the MLIR fusion pipeline: about half
    the compile time of each program on CPU (measured on the whole battery, issue 10).
``xla_cpu_parallel_codegen_split_count: 1``
    one LLVM module per program: splitting a small program for parallel code generation
    costs more than it saves, and ``funcgrad check`` already compiles in two threads.

The ``xla_cpu_*`` options do nothing on other backends. An XLA build that does not know
an option rejects it at compile time, so the options are probed once on a tiny program
and only the accepted ones are used (on a build that knows none of them the checker
compiles with XLA's defaults, just more slowly).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__: list[str] = []

#: The options the checker asks for, in order of importance.
FAST_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


def _accepted(options: dict[str, Any]) -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # an unknown option name or value: XLA's error type varies by version
        return False
    return True


@functools.cache
def compiler_options() -> dict[str, Any]:
    """The subset of :data:`FAST_COMPILE` that this XLA build accepts (probed once).

    Returns:
        The options every checker program is compiled with.
    """
    if _accepted(FAST_COMPILE):
        return dict(FAST_COMPILE)
    return {k: v for k, v in FAST_COMPILE.items() if _accepted({k: v})}


def _jit(f: Callable) -> Callable:
    """``jax.jit`` with the checker's compiler options."""
    return jax.jit(f, compiler_options=compiler_options())
