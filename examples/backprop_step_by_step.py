"""The lesson's step-by-step backpropagation example, computed with funcgrad.

    x = 2 ──┐
            ├─→ [× (multiply)] ──→ y = 6 ──→ [(y-target)²] ──→ L = 16
    w = 3 ──┘                              ↑
                                       target = 2

Forward pass: y = x × w = 6 and L = (y - target)² = 16. Backward pass: dL/dy = 2(y - target)
= 8, dy/dw = x = 2, so dL/dw = 8 × 2 = 16 (and dL/dx = 8 × w = 24). Update:
w_new = 3 - 0.1 × 16 = 1.4, here done by ``optax.sgd(0.1)``.

Run it:  python examples/backprop_step_by_step.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import funcgrad as fg

LEARNING_RATE = 0.1


def loss_fn(x, w, target):
    """L = (x * w - target)^2: the [×] node, then the [(y-target)²] node."""
    y = fg.mul(x, w)
    return fg.squared_error(y, target)


def main(x: float = 2.0, w: float = 3.0, target: float = 2.0, verbose: bool = True) -> dict:
    """Run the lesson's forward pass, backward pass and one SGD step.

    Returns:
        The lesson's numbers as Python floats: ``y``, ``L``, ``dL/dy``, ``dy/dw``,
        ``dL/dw``, ``dL/dx`` and ``w_new`` (from ``optax.sgd``), plus ``w_new (graph)``
        from :meth:`funcgrad.Graph.sgd_update`.
    """
    graph = fg.explain(loss_fn, x, w, target, names={"mul": "y"})
    y_node = graph["y"]

    # One gradient-descent step with optax, exactly as a training loop would do it.
    params = {"w": jnp.float32(w)}
    grads = jax.grad(lambda p: loss_fn(x, p["w"], target))(params)
    optimizer = optax.sgd(LEARNING_RATE)
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    numbers = {
        "y": float(y_node.value),
        "L": float(graph["L"].value),
        "dL/dy": float(y_node.grad),
        "dy/dw": float(y_node.local[1]),  # local derivative of the [×] node w.r.t. w: x
        "dL/dw": float(graph["w"].grad),
        "dL/dx": float(graph["x"].grad),
        "w_new": float(new_params["w"]),
        "w_new (graph)": float(graph.sgd_update(LEARNING_RATE, ["w"])["w"]),
    }
    if verbose:
        n = numbers
        print("Forward pass")
        print(f"  1. Multiplication node: x × w = {x:g} × {w:g} = {n['y']:g} → y = {n['y']:g}")
        print(f"  2. Loss node: (y - target)² = ({n['y']:g} - {target:g})² = {n['L']:g} "
              f"→ L = {n['L']:g}")
        print("Backward pass")
        print(f"  1. dL/dy = 2×(y-target) = 2×({n['y']:g}-{target:g}) = {n['dL/dy']:g}")
        print(f"  2. dy/dw = x = {n['dy/dw']:g}")
        print(f"  3. dL/dw = (dL/dy) × (dy/dw) = {n['dL/dy']:g} × {n['dy/dw']:g} = "
              f"{n['dL/dw']:g}   (and dL/dx = {n['dL/dy']:g} × w = {n['dL/dx']:g})")
        print("Update (optax.sgd)")
        print(f"  4. w_new = w_old - learning_rate × gradient = {w:g} - {LEARNING_RATE:g} × "
              f"{n['dL/dw']:g} = {n['w_new']:.6g}")
        print("\nThe same computation as funcgrad draws it:\n")
        print(graph.to_text(learning_rate=LEARNING_RATE, update=["w"]))
    return numbers


if __name__ == "__main__":
    main()
