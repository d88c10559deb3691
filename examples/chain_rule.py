"""The chain rule, numerically: dz/dx = dz/dy × dy/dx.

Compose y = g(x) = x² (``funcgrad.square``) and z = f(y) = sigmoid(y) (``funcgrad.sigmoid``).
Each primitive knows only its own local derivative: dy/dx = 2x and dz/dy = σ(y)(1 - σ(y)).
Multiplying them gives dz/dx, which this script compares with ``jax.grad`` of the whole
composition, written both with funcgrad and in plain ``jax.numpy``.

Run it:  python examples/chain_rule.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcgrad as fg

POINTS = (-2.0, -0.5, 0.5, 1.0, 2.0)


def g(x):
    """y = x^2."""
    return fg.square(x)


def f(y):
    """z = sigmoid(y)."""
    return fg.sigmoid(y)


def z_fn(x):
    """z = f(g(x)) = sigmoid(x^2)."""
    return f(g(x))


def z_reference(x):
    """The same composition in plain jax.numpy (no custom rules)."""
    return jax.nn.sigmoid(jnp.square(x))


def chain(x: float) -> dict:
    """Local derivatives, their product, and jax.grad at one point."""
    x = jnp.float32(x)
    y = g(x)
    dz_dy = jax.grad(f)(y)  # local derivative of the outer function, at y
    dy_dx = jax.grad(g)(x)  # local derivative of the inner function, at x
    return {
        "x": float(x),
        "y": float(y),
        "z": float(f(y)),
        "dz/dy": float(dz_dy),
        "dy/dx": float(dy_dx),
        "dz/dy * dy/dx": float(dz_dy * dy_dx),
        "jax.grad (funcgrad)": float(jax.grad(z_fn)(x)),
        "jax.grad (jnp reference)": float(jax.grad(z_reference)(x)),
    }


def main(x: float = 1.0, verbose: bool = True) -> dict:
    """Show the chain rule at ``x`` (as a graph) and at several points (as a table).

    Returns:
        The numbers at ``x`` (see :func:`chain`), with ``"points"``: one such dict per point
        in ``POINTS``.
    """
    numbers = chain(x)
    numbers["points"] = [chain(p) for p in POINTS]
    if verbose:
        n = numbers
        print(f"y = x², z = sigmoid(y), at x = {x:g}:")
        print(f"  dy/dx = 2x = {n['dy/dx']:.6g}")
        print(f"  dz/dy = σ(y)(1 - σ(y)) = {n['dz/dy']:.6g}")
        print(f"  dz/dx = dz/dy × dy/dx = {n['dz/dy']:.6g} × {n['dy/dx']:.6g} = "
              f"{n['dz/dy * dy/dx']:.6g}")
        print(f"  jax.grad of the composition: {n['jax.grad (funcgrad)']:.6g} (funcgrad), "
              f"{n['jax.grad (jnp reference)']:.6g} (plain jnp)\n")
        header = f"{'x':>6}  {'dz/dy':>10}  {'dy/dx':>8}  {'product':>10}  {'jax.grad':>10}"
        print(header)
        print("-" * len(header))
        for r in n["points"]:
            print(f"{r['x']:>6g}  {r['dz/dy']:>10.6g}  {r['dy/dx']:>8.6g}  "
                  f"{r['dz/dy * dy/dx']:>10.6g}  {r['jax.grad (funcgrad)']:>10.6g}")
        graph = fg.explain(z_fn, x, names={"square": "y", "sigmoid": "z"})
        print("\nThe graph, with the chain rule written out node by node:\n")
        print(graph.to_text())
    return numbers


if __name__ == "__main__":
    main()
