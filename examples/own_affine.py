"""Your own primitive, 3: an affine layer whose parameters are one pytree, ``{"w", "b"}``.

``affine(params, x) = x @ params["w"] + params["b"]``. The backward rule returns one
cotangent per argument with the argument's own structure: a dict ``{"w": x^T G,
"b": sum_rows G}`` for ``params`` and ``G w^T`` for ``x``. ``funcgrad.primitive`` is told
that ``params`` is a pytree; it validates the returned structure, shapes and dtypes at
trace time, and the checker names a wrong element by its path, ``params['b']``.

Run ``python examples/own_affine.py`` or ``funcgrad check --module examples/own_affine.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcgrad as fg


def _affine_fwd(params, x):
    return x @ params["w"] + params["b"], (params["w"], x)


def _affine_bwd(res, g):
    w, x = res
    g2 = g.reshape(-1, g.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return {"w": x2.T @ g2, "b": jnp.sum(g2, axis=0)}, g @ w.T


def _affine_reference(params, x):
    return x @ params["w"] + params["b"]


affine = fg.primitive(
    name="own_affine",
    fwd=_affine_fwd,
    bwd=_affine_bwd,
    formula="x_bar = G w^T, params_bar = {w: x^T G, b: sum_rows G}",
    reference=_affine_reference,
    residuals="w, x",
    pytree=("params",),
    sample_shapes=(({"w": (3, 2), "b": (2,)}, (4, 3)), ({"w": (3, 4), "b": (4,)}, (2, 5, 3))),
)


def main() -> dict:
    """Fit one step of a tiny regression and show the checker's verdict."""
    params = {"w": jnp.array([[1.0], [2.0]]), "b": jnp.array([0.5])}
    x = jnp.array([[1.0, 1.0], [2.0, 0.0]])

    def loss(p):
        return jnp.sum(affine(p, x) ** 2)

    grads = jax.grad(loss)(params)
    report = fg.testing.check_primitive(affine.record)
    print(f"loss = {float(loss(params))}, grads = {jax.tree.map(lambda a: a.tolist(), grads)}")
    print(report)
    print(fg.explain(loss, params).to_text())
    return {"grads": grads, "ok": report.ok}


if __name__ == "__main__":
    main()
