"""The lesson's PyTorch snippet, written with funcgrad and JAX.

PyTorch builds the graph as it runs and ``loss.backward()`` fills ``w.grad`` and ``x.grad``.
In JAX the same thing is a function transformation: ``jax.grad(loss_fn, argnums=(0, 1))``
returns the gradients, and funcgrad's primitives supply the backward rules.

    import torch
    x = torch.tensor(2.0, requires_grad=True)
    w = torch.tensor(3.0, requires_grad=True)
    y = x * w
    loss = (y - 4)**2
    loss.backward()
    print(f"Gradient of loss w.r.t. w: {w.grad}")   # 8
    print(f"Gradient of loss w.r.t. x: {x.grad}")   # 12

Run it:  python examples/pytorch_equivalent.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcgrad as fg


def loss_fn(x, w):
    """loss = (x * w - 4)^2, node for node as in the PyTorch snippet."""
    y = fg.mul(x, w)  # y = x * w
    return fg.square(fg.sub(y, 4.0))  # loss = (y - 4)**2


def main(verbose: bool = True) -> dict:
    """Compute the loss and its gradients like ``loss.backward()`` does.

    Returns:
        ``{"loss", "dloss/dw", "dloss/dx"}`` from ``jax.grad``, plus the graph's own
        ``"graph dloss/dw"`` and ``"graph dloss/dx"``.
    """
    # Create the inputs (no requires_grad: JAX differentiates functions, not tensors).
    x = jnp.float32(2.0)
    w = jnp.float32(3.0)

    # Forward and backward pass: the equivalent of loss.backward().
    loss, (x_grad, w_grad) = jax.value_and_grad(loss_fn, argnums=(0, 1))(x, w)

    graph = fg.explain(loss_fn, x, w, names={"mul": "y", "sub": "r", "square": "loss"})
    numbers = {
        "loss": float(loss),
        "dloss/dw": float(w_grad),
        "dloss/dx": float(x_grad),
        "graph dloss/dw": float(graph["w"].grad),
        "graph dloss/dx": float(graph["x"].grad),
    }
    if verbose:
        print(f"loss = {numbers['loss']:g}")
        print(f"Gradient of loss w.r.t. w: {numbers['dloss/dw']:g}")
        print(f"Gradient of loss w.r.t. x: {numbers['dloss/dx']:g}")
        print("\nThe graph PyTorch would have built, with every value and gradient:\n")
        print(graph.to_text())
    return numbers


if __name__ == "__main__":
    main()
