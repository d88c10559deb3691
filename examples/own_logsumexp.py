"""Your own primitive, 1: a numerically stable log-sum-exp, checked at its edge points.

``log(sum(exp(x)))`` overflows in float32 once an element passes about 88.7: the textbook
reference returns ``inf`` at ``x + 100``, and its gradient ``nan``. The rule below shifts by
the maximum first, and its backward pass is the softmax, which the forward pass saves from
the shifted exponentials. Computing it later as ``exp(x - y)`` from the saved output would
lose 3% in float16 at ``x + 100``, where ``y`` itself is rounded to a spacing of 0.06; the
checker's edge points catch exactly that.

The reference stays the textbook form: the checker evaluates it in float64 (exact up to
``|x|`` of about 700) as the truth, and the declared edge points ``x + 100``, ``x + 300``
and ``x - 300`` hold the float32, float16 and bfloat16 rule to that truth.

Run ``python examples/own_logsumexp.py`` or ``funcgrad check --module
examples/own_logsumexp.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcgrad as fg


def _logsumexp_fwd(x):
    m = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - m)  # <= 1: no overflow
    s = jnp.sum(e, axis=-1, keepdims=True)
    y = m[..., 0] + jnp.log(s[..., 0])
    return y, e / s  # the output, and the residual for bwd: softmax(x)


def _logsumexp_bwd(p, g):
    return (g[..., None] * p,)  # d lse / dx = softmax(x)


def _logsumexp_textbook(x):
    return jnp.log(jnp.sum(jnp.exp(x), axis=-1))  # overflows in float32 at x = 89


logsumexp = fg.primitive(
    name="own_logsumexp",
    fwd=_logsumexp_fwd,
    bwd=_logsumexp_bwd,
    formula="d lse(x)/dx_i = softmax(x)_i = exp(x_i - lse(x))",
    reference=_logsumexp_textbook,
    residuals="softmax(x)",
    sample_shapes=(((3, 5),), ((5,),)),
    edge_points=(100.0, 300.0, -300.0),
    precision="max-shifted: finite where the textbook form overflows (x > 88.7 in float32)",
)


def main() -> dict:
    """Show the overflow the rule avoids, the gradient, and the checker's verdict."""
    x = jnp.array([1.0, 2.0, 3.0]) + 100.0
    textbook = float(_logsumexp_textbook(x))
    grad_textbook = jax.grad(_logsumexp_textbook)(x)
    stable = float(logsumexp(x))
    grad = jax.grad(logsumexp)(x)
    report = fg.testing.check_primitive(logsumexp.record)
    print(f"textbook lse(x + 100) = {textbook}, its gradient {grad_textbook}")
    print(f"own_logsumexp(x + 100) = {stable:.6f}, its gradient {grad}")
    print(report)
    print(fg.explain(lambda v: logsumexp(v), jnp.array([1.0, 2.0, 3.0])).to_text())
    return {"textbook": textbook, "stable": stable, "grad": grad, "ok": report.ok}


if __name__ == "__main__":
    main()
