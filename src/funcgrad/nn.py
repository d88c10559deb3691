"""Pure-functional models and initialisers built only from funcgrad primitives.

Parameters are plain pytrees: an MLP is a list of layer dicts ``{"w", "b"}`` (plus
``{"gamma", "beta"}`` for batch-normalised hidden layers), so optax, orbax and
``jax.tree`` work on them directly and per-layer statistics are one ``for`` loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import primitives as P

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "he_normal",
    "glorot_normal",
    "normal",
    "init_mlp",
    "mlp",
]

Params = list[dict[str, jax.Array]]
Initializer = Callable[[jax.Array, tuple[int, int], Any], jax.Array]

#: Activation name -> funcgrad primitive.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": P.relu,
    "sigmoid": P.sigmoid,
    "tanh": P.tanh,
    "softplus": P.softplus,
    "leaky_relu": P.leaky_relu,
}


def he_normal(gain: float = 1.0) -> Initializer:
    """He (Kaiming) normal initialiser: ``std = gain * sqrt(2 / fan_in)``, for relu.

    Args:
        gain: multiplies the standard deviation (a large gain makes gradients explode).

    Returns:
        ``init(key, (fan_in, fan_out), dtype) -> array``.

    Examples:
        >>> import jax
        >>> he_normal()(jax.random.PRNGKey(0), (64, 32), "float32").shape
        (64, 32)
    """
    def init(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> jax.Array:
        return gain * jnp.sqrt(2.0 / shape[0]) * jax.random.normal(key, shape, dtype)
    return init


def glorot_normal(gain: float = 1.0) -> Initializer:
    """Glorot (Xavier) normal initialiser: ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    Args:
        gain: multiplies the standard deviation.

    Returns:
        ``init(key, (fan_in, fan_out), dtype) -> array``.
    """
    def init(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> jax.Array:
        return gain * jnp.sqrt(2.0 / (shape[0] + shape[1])) * jax.random.normal(key, shape,
                                                                                 dtype)
    return init


def normal(std: float = 1.0) -> Initializer:
    """Plain normal initialiser with a fixed standard deviation (the naive choice).

    Args:
        std: the standard deviation, independent of the layer's width.

    Returns:
        ``init(key, (fan_in, fan_out), dtype) -> array``.
    """
    def init(key: jax.Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> jax.Array:
        return std * jax.random.normal(key, shape, dtype)
    return init


#: Initialiser name -> factory taking a gain / standard deviation.
INITIALIZERS: dict[str, Callable[[float], Initializer]] = {
    "he": he_normal,
    "glorot": glorot_normal,
    "normal": normal,
}


def _validate_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1
                             for s in sizes):
        raise ValueError(f"init_mlp: argument 'sizes' must list at least two positive ints "
                         f"(input, ..., output); got {sizes!r}")
    return sizes


def init_mlp(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    init: str | Initializer = "he",
    scale: float = 1.0,
    batch_norm: bool = False,
    dtype: Any = jnp.float32,
) -> Params:
    """Initialise an MLP's parameters.

    Args:
        key: PRNG key.
        sizes: layer widths ``(input, hidden..., output)``.
        activation: name in :data:`ACTIVATIONS`; validated here so typos fail early (the
            same name must be passed to :func:`mlp`).
        init: ``"he"``, ``"glorot"``, ``"normal"`` or an initialiser callable.
        scale: the gain of He/Glorot, or the standard deviation of ``"normal"``.
        batch_norm: add ``gamma``/``beta`` to every hidden layer.
        dtype: parameter dtype.

    Returns:
        A list of layer dicts with ``w`` of shape ``(fan_in, fan_out)`` and ``b`` zeros.

    Examples:
        >>> import jax
        >>> params = init_mlp(jax.random.PRNGKey(0), [4, 8, 3])
        >>> [(p["w"].shape, p["b"].shape) for p in params]
        [((4, 8), (8,)), ((8, 3), (3,))]
    """
    sizes = _validate_sizes(sizes)
    if activation not in ACTIVATIONS:
        raise ValueError(f"init_mlp: argument 'activation' must be one of "
                         f"{sorted(ACTIVATIONS)}; got {activation!r}")
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ValueError(f"init_mlp: argument 'init' must be one of "
                             f"{sorted(INITIALIZERS)} or a callable; got {init!r}")
        init_fn = INITIALIZERS[init](scale)
    elif callable(init):
        init_fn = init
    else:
        raise TypeError(f"init_mlp: argument 'init' must be one of {sorted(INITIALIZERS)} "
                        f"or a callable; got {init!r}")
    keys = jax.random.split(key, len(sizes) - 1)
    params: Params = []
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        layer = {"w": init_fn(k, (fan_in, fan_out), dtype), "b": jnp.zeros((fan_out,), dtype)}
        if batch_norm and i < len(sizes) - 2:
            layer["gamma"] = jnp.ones((fan_out,), dtype)
            layer["beta"] = jnp.zeros((fan_out,), dtype)
        params.append(layer)
    return params


def mlp(params: Params, x: Any, *, activation: str = "relu", residual: bool = False,
        capture: Callable[[int, jax.Array, jax.Array], None] | None = None) -> jax.Array:
    """Apply an MLP built only from funcgrad primitives; returns logits.

    Hidden layer ``i`` computes ``h = act(bn(dense(h, w, b)))`` (batch norm in training
    mode when the layer has ``gamma``); with ``residual=True`` a hidden layer whose input
    and output widths agree adds its input back: ``h = h + act(...)`` (the lesson's skip
    connections). The last layer is linear.

    Args:
        params: parameters from :func:`init_mlp`.
        x: inputs of shape ``(batch, input)``.
        activation: name in :data:`ACTIVATIONS`.
        residual: add skip connections where widths agree.
        capture: optional ``capture(layer, pre_activation, activation)`` hook, called at
            trace time, used by :mod:`funcgrad.flow` to measure saturation.

    Returns:
        Logits of shape ``(batch, output)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> params = init_mlp(jax.random.PRNGKey(0), [4, 8, 3])
        >>> mlp(params, jnp.ones((2, 4))).shape
        (2, 3)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: argument 'activation' must be one of "
                         f"{sorted(ACTIVATIONS)}; got {activation!r}")
    act = ACTIVATIONS[activation]
    h = x
    last = len(params) - 1
    for i, layer in enumerate(params):
        with jax.named_scope(f"layer_{i}"):
            z = P.dense(h, layer["w"], layer["b"])
            if i == last:
                return z
            if "gamma" in layer:
                z = P.batch_norm(z, layer["gamma"], layer["beta"])
            a = act(z)
            if capture is not None:
                capture(i, z, a)
            h = P.add(h, a) if residual and h.shape[-1] == a.shape[-1] and i > 0 else a
    return h
