"""Backprop through time: a tanh RNN's gradients vanish going back through the steps.

The lesson's vanishing-gradient section: "Multiplying many small derivatives together
(chain rule) makes the result tiny." A recurrent network is the same chain laid out in
time. Each step computes ``h_t = tanh(W h_{t-1} + U x_t)``, so

    dL/dh_{t-1} = W^T (tanh'(a_t) * dL/dh_t)

and every step back multiplies the gradient by ``W^T`` and by ``tanh'`` (at most 1). With
a recurrent matrix of spectral norm below 1, ``||dL/dh_t||`` shrinks geometrically from the
last step to the first: the loss barely "sees" early inputs.

This script builds that RNN from funcgrad primitives and runs it with ``lax.scan`` over 12
steps. ``funcgrad.explain`` unrolls scans of up to 16 iterations, so the graph has one node
``h[t]`` per step, each with its value and ``dL/dh[t]``; the script prints their norms.
Fixed seed.

Run it:  python examples/rnn_through_time.py
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import funcgrad as fg

STEPS, HIDDEN, INPUTS = 12, 8, 4


def init(key: jax.Array, scale: float = 0.5, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters and data: ``W`` (recurrent, spectral norm ``scale``), ``U``, ``xs``."""
    kw, ku, kx, kt = jax.random.split(key, 4)
    w = jax.random.normal(kw, (HIDDEN, HIDDEN), dtype)
    return {
        "W": scale * w / jnp.linalg.norm(w, ord=2),
        "U": (jax.random.normal(ku, (HIDDEN, INPUTS)) / INPUTS ** 0.5).astype(dtype),
        "xs": jax.random.normal(kx, (STEPS, INPUTS)).astype(dtype),
        "h0": jnp.zeros((HIDDEN,), dtype),
        "target": jax.random.normal(kt, (HIDDEN,)).astype(dtype),
    }


def step(w: jax.Array, u: jax.Array, h: jax.Array, x: jax.Array) -> jax.Array:
    """One RNN step: ``tanh(W h + U x)``."""
    return fg.tanh(fg.add(fg.matmul(w, h), fg.matmul(u, x)))


def rnn_loss(w: jax.Array, u: jax.Array, xs: jax.Array, h0: jax.Array,
             target: jax.Array) -> jax.Array:
    """Squared error of the last hidden state, after a ``lax.scan`` over the inputs."""

    def body(h: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
        return step(w, u, h, x), None

    h, _ = jax.lax.scan(body, h0, xs)
    return fg.sum(fg.square(fg.sub(h, target)))


def gradient_norms(p: dict[str, Any]) -> list[float]:
    """``||dL/dh[t]||`` for t = 0 .. STEPS-1, read from the explain graph's ``h[t]`` nodes."""
    g = fg.explain(rnn_loss, p["W"], p["U"], p["xs"], p["h0"], p["target"])
    return [float(jnp.linalg.norm(g[f"h[{t}]"].grad)) for t in range(STEPS)]


def main(verbose: bool = True) -> list[float]:
    """Print ``||dL/dh_t||`` from the last step back to the first; return them by ``t``."""
    norms = gradient_norms(init(jax.random.PRNGKey(0)))
    if verbose:
        print(f"tanh RNN, {STEPS} steps, ||W||_2 = 0.5: the gradient reaching each step")
        for t in reversed(range(STEPS)):
            bar = "#" * max(1, round(40 + 4 * float(jnp.log10(norms[t]))))
            print(f"  ||dL/dh[{t:2d}]|| = {norms[t]:.3e}  {bar}")
        print(f"first/last = {norms[0] / norms[-1]:.2e}: vanishing through time")
    return norms


if __name__ == "__main__":
    main()
