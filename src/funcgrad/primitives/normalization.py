"""Batch normalisation (training mode) with the classic hand-derived backward pass."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._define import primitive

__all__ = ["batch_norm"]


def _batch_norm_check(x, gamma, beta, eps):
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(
            "batch_norm: argument 'x' must have shape (N, features...) with N >= 2 to form "
            f"batch statistics; got x.shape={x.shape}"
        )
    for name, arr in (("gamma", gamma), ("beta", beta)):
        if arr.shape != x.shape[1:]:
            raise ValueError(
                f"batch_norm: argument '{name}' must have shape x.shape[1:]={x.shape[1:]}; "
                f"got {name}.shape={arr.shape}"
            )
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"batch_norm: argument 'eps' must be a Python float >= 0; got {eps!r}")
    return {"eps": float(eps)}


def _batch_norm_bwd(res, g, *, eps):
    xhat, r, gamma = res
    n = xhat.shape[0]
    gbeta = jnp.sum(g, axis=0)
    ggamma = jnp.sum(g * xhat, axis=0)
    gx = (gamma * r / n) * (n * g - gbeta - xhat * ggamma)
    return gx, ggamma, gbeta


def _batch_norm_reference(x, gamma, beta, eps=1e-5):
    mu = jnp.mean(x, axis=0)
    var = jnp.var(x, axis=0)
    return gamma * (x - mu) / jnp.sqrt(var + eps) + beta


@primitive(bwd=_batch_norm_bwd, reference=_batch_norm_reference, static=("eps",),
           check=_batch_norm_check, category="normalization",
           formula="x_bar = (gamma r / N)(N G - sum G - xhat sum(G xhat)), "
                   "gamma_bar = sum G xhat, beta_bar = sum G",
           residuals="xhat, r = 1/sqrt(var+eps), gamma",
           sample_shapes=(((6, 3), (3,), (3,)), ((5, 2, 3), (2, 3), (2, 3))))
def batch_norm(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> jax.Array:
    """Batch normalisation over axis 0, in training mode (batch statistics).

    Forward: ``μ = mean(x, 0)``, ``σ² = mean((x − μ)², 0)`` (biased), ``x̂ = (x − μ)/√(σ² + ε)``,
    ``y = γ·x̂ + β``. The rule is the classic derivation, with ``N`` the batch size and
    ``r = 1/√(σ² + ε)``; the sums run over axis 0.

    Args:
        x: inputs of shape ``(N, ...)`` with ``N >= 2``.
        gamma: scale of shape ``x.shape[1:]``.
        beta: shift of shape ``x.shape[1:]``.
        eps: a Python float added to the variance (static).

    Returns:
        The normalised, scaled and shifted batch, shape ``x.shape``.

    Examples:
        >>> import jax.numpy as jnp
        >>> y = batch_norm(jnp.array([[1.0], [3.0]]), jnp.ones(1), jnp.zeros(1), eps=0.0)
        >>> y.ravel().tolist()
        [-1.0, 1.0]
    """
    mu = jnp.mean(x, axis=0)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=0)
    r = jax.lax.rsqrt(var + eps)
    xhat = xc * r
    return gamma * xhat + beta, (xhat, r, gamma)
