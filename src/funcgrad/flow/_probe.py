"""The probe identity of :mod:`funcgrad.flow.taps`: the statistics of a cotangent as a
"gradient".

:func:`identity` passes a primitive call's outputs on unchanged; its backward rule passes
their cotangent on unchanged too and returns :func:`cotangent_stats` of it as the
gradient of a zero-valued probe of length :data:`FIELDS`. :func:`unpack` turns a probe's
gradient back into the five fields of a :class:`funcgrad.flow.Tap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FIELDS", "cotangent_stats", "identity", "stats_dtype", "unpack"]


def stats_dtype(dtypes: Sequence[Any]) -> Any:
    """The dtype of a probe for cotangents of ``dtypes``: float32 at least."""
    return jnp.result_type(jnp.float32, *dtypes)


#: Integers travel in a float probe as ``(x // BASE, x % BASE)``: both parts are exact
#: in float32 for any int32 count or index.
BASE = 4096
#: Length of a probe: sum of squares, max |g|, zero share, count (2 parts), index (2 parts).
FIELDS = 7


def cotangent_stats(gs: Sequence[jax.Array]) -> jax.Array:
    """``[sum of squares, max |g|, zero share, non-finite count, first non-finite]``.

    Plain (vectorised) reductions; the count and the index of non-finite elements are
    computed only when the sum of squares is not finite (a ``lax.cond``; under ``vmap``
    both branches run). A NaN anywhere makes the sum and the maximum NaN. The count and
    the index take two entries each (see :data:`BASE`).
    """
    dtype = stats_dtype([g.dtype for g in gs])
    flats = [jnp.ravel(g).astype(dtype) for g in gs if int(np.prod(g.shape))]
    total = sum(f.shape[0] for f in flats)
    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)
    if not flats:
        return jnp.zeros((FIELDS,), dtype)
    sumsq = sum((jnp.sum(f * f) for f in flats), zero)
    maxabs = jnp.max(jnp.stack([jnp.max(jnp.abs(f)) for f in flats]))
    zeros = sum((jnp.sum(jnp.where(f == 0, one, zero)) for f in flats), zero)

    def nonfinite() -> jax.Array:
        bad, first, offset = jnp.int32(0), jnp.int32(total), 0
        for f in flats:
            n = f.shape[0]
            mask = ~jnp.isfinite(f)
            bad = bad + jnp.sum(mask, dtype=jnp.int32)
            here = jnp.min(jnp.where(mask, jnp.arange(n, dtype=jnp.int32), n))
            first = jnp.where((first == total) & (here < n), here + offset, first)
            offset += n
        return jnp.stack([bad // BASE, bad % BASE, first // BASE,
                          first % BASE]).astype(dtype)

    ints = jax.lax.cond(jnp.isfinite(sumsq), lambda: jnp.zeros((4,), dtype), nonfinite)
    return jnp.concatenate([jnp.stack([sumsq, maxabs, zeros / total]), ints])


@jax.custom_vjp
def identity(outs: tuple, probe: jax.Array) -> tuple:
    """The identity on ``outs``; the probe's gradient is the statistics of the cotangent."""
    del probe
    return outs


def _identity_fwd(outs: tuple, probe: jax.Array) -> tuple[tuple, None]:
    del probe
    return outs, None


def _identity_bwd(_: None, gs: tuple) -> tuple[tuple, jax.Array]:
    return gs, cotangent_stats(gs)


identity.defvjp(_identity_fwd, _identity_bwd)


def unpack(stats: jax.Array) -> tuple[jax.Array, ...]:
    """``(norm, max_abs, nonfinite, zero_fraction, first_nonfinite)`` from a probe's
    gradient (any leading axes), the order of :class:`funcgrad.flow.Tap`'s fields."""
    s = jnp.moveaxis(stats, -1, 0)
    whole = lambda hi, lo: hi.astype(jnp.int32) * BASE + lo.astype(jnp.int32)  # noqa: E731
    bad = whole(s[3], s[4])
    return jnp.sqrt(s[0]), s[1], bad, s[2], jnp.where(bad > 0, whole(s[5], s[6]), -1)
