"""Local derivatives of the plain JAX (``lax``) operations a graph may show.

A funcgrad primitive's formula is never written here: it comes from its registry record
(:data:`funcgrad.registry.PRIMITIVES`). This table covers only the operations that are not
funcgrad primitives (``jnp.sin``, ``x @ w``).

Examples:
    >>> formula("sin"), formula("frobnicate")
    ('d(sin x)/dx = cos x', "JAX's built-in rule for frobnicate")
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["JAX_FORMULAS", "formula"]

#: Local derivatives of the JAX operations most often met outside funcgrad primitives.
JAX_FORMULAS: Mapping[str, str] = {
    "add": "d(x+y)/dx = 1, d(x+y)/dy = 1",
    "add_any": "d(x+y)/dx = 1, d(x+y)/dy = 1",
    "sub": "d(x-y)/dx = 1, d(x-y)/dy = -1",
    "mul": "d(xy)/dx = y, d(xy)/dy = x",
    "div": "d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2",
    "neg": "d(-x)/dx = -1",
    "exp": "d(e^x)/dx = e^x",
    "exp2": "d(2^x)/dx = 2^x log 2",
    "log": "d(log x)/dx = 1/x",
    "log1p": "d(log(1+x))/dx = 1/(1+x)",
    "expm1": "d(e^x - 1)/dx = e^x",
    "sin": "d(sin x)/dx = cos x",
    "cos": "d(cos x)/dx = -sin x",
    "tan": "d(tan x)/dx = 1 + tan(x)^2",
    "tanh": "tanh'(x) = 1 - tanh(x)^2",
    "logistic": "sigmoid'(x) = f(x)(1 - f(x))",
    "integer_pow": "d(x^n)/dx = n*x^(n-1)",
    "pow": "d(x^y)/dx = y*x^(y-1), d(x^y)/dy = x^y log x",
    "square": "d(x^2)/dx = 2x",
    "sqrt": "d(sqrt x)/dx = 1/(2 sqrt x)",
    "rsqrt": "d(x^-1/2)/dx = -x^(-3/2)/2",
    "abs": "d|x|/dx = sign(x)",
    "sign": "d sign(x)/dx = 0",
    "max": "1 for the larger argument, 0 for the other (a tie splits 1/2, 1/2)",
    "min": "1 for the smaller argument, 0 for the other (a tie splits 1/2, 1/2)",
    "erf": "d erf(x)/dx = 2/sqrt(pi) e^(-x^2)",
    "dot_general": "d(AB): A_bar = G B^T, B_bar = A^T G",
    "reduce_sum": "d(sum x)/dx_i = 1",
    "reduce_max": "1 at the maximum, 0 elsewhere",
    "reduce_min": "1 at the minimum, 0 elsewhere",
    "argmax": "none (integer output)",
    "argmin": "none (integer output)",
    "cumsum": "x_bar = reverse cumulative sum of G",
    "broadcast_in_dim": "1 per copy: gradient summed over the broadcast axes",
    "reshape": "1: gradient reshaped back",
    "squeeze": "1: gradient reshaped back",
    "expand_dims": "1: gradient reshaped back",
    "transpose": "1: gradient transposed back",
    "rev": "1: gradient reversed back",
    "concatenate": "1: gradient sliced back to each piece",
    "stack": "1: gradient split back to each piece",
    "gt": "none (boolean output)",
    "ge": "none (boolean output)",
    "lt": "none (boolean output)",
    "le": "none (boolean output)",
    "eq": "none (boolean output)",
    "ne": "none (boolean output)",
    "pad": "1 on the original elements, 0 on the padding",
    "slice": "1 on the sliced elements, 0 elsewhere",
    "dynamic_slice": "1 on the sliced elements, 0 elsewhere",
    "gather": "1 on the gathered elements, 0 elsewhere (gradient scattered back)",
    "select_n": "1 for the selected case, 0 for the others; none for the predicate",
    "convert_element_type": "1 (a cast)",
    "copy": "1",
    "copy_p": "1",
    "stop_gradient": "0 (gradient stopped)",
    "custom_jvp_call": "the function's custom JVP rule",
    "scan": "backprop through time: the body's rules run once per iteration, last first",
    "scan_index": "1 on xs[t], 0 elsewhere",
    "scan_carry": "1: the carry passes to the next iteration",
    "scan_stack": "1: gradient split back to each iteration",
}


def formula(op: str) -> str:
    """The local derivative of the JAX primitive ``op``, or a generic note.

    Args:
        op: the JAX primitive's name (``"sin"``).

    Returns:
        The formula text.
    """
    return JAX_FORMULAS.get(op, f"JAX's built-in rule for {op}")
