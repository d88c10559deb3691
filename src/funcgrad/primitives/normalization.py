"""Batch normalisation (training mode) with the classic hand-derived backward pass."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._broadcast import promote_floats

__all__ = ["batch_norm"]


def batch_norm(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> jax.Array:
    """Batch normalisation over axis 0, in training mode (batch statistics).

    Forward: ``μ = mean(x, 0)``, ``σ² = mean((x − μ)², 0)`` (biased), ``x̂ = (x − μ)/√(σ² + ε)``,
    ``y = γ·x̂ + β``.

    Rule (the classic derivation), with ``N`` the batch size and ``r = 1/√(σ² + ε)``:
    ``β̄ = Σ ḡ``, ``γ̄ = Σ ḡ·x̂`` and ``x̄ = (γ·r/N)·(N·ḡ − Σ ḡ − x̂·Σ ḡ·x̂)``, sums over axis 0.
    Residuals: ``x̂``, ``r`` and ``γ``.

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
    x, gamma, beta = promote_floats("batch_norm", ("x", "gamma", "beta"), x, gamma, beta)
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
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"batch_norm: argument 'eps' must be a Python float >= 0; got {eps!r}")
    return _batch_norm(float(eps), x, gamma, beta)


def _bn_forward(eps, x, gamma, beta):
    mu = jnp.mean(x, axis=0)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=0)
    r = jax.lax.rsqrt(var + eps)
    xhat = xc * r
    return gamma * xhat + beta, xhat, r


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _batch_norm(eps, x, gamma, beta):
    return _bn_forward(eps, x, gamma, beta)[0]


def _batch_norm_fwd(eps, x, gamma, beta):
    y, xhat, r = _bn_forward(eps, x, gamma, beta)
    return y, (xhat, r, gamma)


def _batch_norm_bwd(eps, res, g):
    xhat, r, gamma = res
    n = xhat.shape[0]
    gbeta = jnp.sum(g, axis=0)
    ggamma = jnp.sum(g * xhat, axis=0)
    gx = (gamma * r / n) * (n * g - gbeta - xhat * ggamma)
    return gx, ggamma, gbeta


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def batch_norm_reference(x, gamma, beta, eps=1e-5):
    mu = jnp.mean(x, axis=0)
    var = jnp.var(x, axis=0)
    return gamma * (x - mu) / jnp.sqrt(var + eps) + beta
