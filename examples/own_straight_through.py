"""Your own primitive, 2: gradient surgery, a straight-through sign estimator.

The forward pass is ``sign(x)``, whose true derivative is 0 almost everywhere: nothing
would flow back. A straight-through estimator passes the cotangent through where
``|x| <= 1`` (the derivative of ``clip(x, -1, 1)``) instead. The gradient is a different
function from the forward's derivative *by design*, so finite differences of ``sign``
cannot judge it. The rule declares its formula with a reference written in plain JAX
with the ``stop_gradient`` idiom: forward ``sign(x)``, autodiff gradient
``1{|x| <= 1}``. The checker sees that the reference's own autodiff differs from finite
differences of its forward, holds the rule to that declared gradient, and checks the
declared convention at the kinks x = -1, 0 and 1 exactly.

Run ``python examples/own_straight_through.py`` or ``funcgrad check --module
examples/own_straight_through.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcgrad as fg


def _sign_ste_fwd(x):
    return jnp.sign(x), x


def _sign_ste_bwd(x, g):
    return (jnp.where(jnp.abs(x) <= 1, g, jnp.zeros_like(g)),)


def _sign_ste_declared(x):
    clipped = jnp.clip(x, -1.0, 1.0)
    return clipped + jax.lax.stop_gradient(jnp.sign(x) - clipped)


sign_ste = fg.primitive(
    name="own_sign_ste",
    fwd=_sign_ste_fwd,
    bwd=_sign_ste_bwd,
    formula="forward sign(x); backward (straight through) g * 1{|x| <= 1}",
    reference=_sign_ste_declared,
    residuals="x",
    kinks="the cotangent passes at |x| = 1 and at x = 0",
    kink_points=((-1.0, 1.0), (0.0, 1.0), (1.0, 1.0)),
)


def main() -> dict:
    """Show the estimator's gradient and the checker's verdict."""
    x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.0, 1.5])
    grad = jax.grad(lambda v: jnp.sum(sign_ste(v) * 2.0))(x)
    report = fg.testing.check_primitive(sign_ste.record)
    print(f"sign_ste({x}) = {sign_ste(x)}")
    print(f"gradient of sum(2 * sign_ste(x)) = {grad}")
    print(report)
    print(fg.explain(lambda v: sign_ste(v) * 2.0, jnp.array(0.5)).to_text())
    return {"grad": grad, "ok": report.ok}


if __name__ == "__main__":
    main()
