"""Where ``fit``'s training data lives: on the device (shuffled there) or streamed.

Epoch ``e`` visits the examples in the order ``permutation(fold_in(key, e), n)``, padded
cyclically to whole batches; the padding has weight 0. :func:`epoch_order` computes it on
the host and :func:`device_order` inside a compiled program: the same function of the
same key, so both give the same indices and a device-resident run trains on exactly the
batches a streamed one does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_BUDGET", "STREAM_BYTES", "DataPlan", "device_order", "epoch_order",
           "resolve_budget", "step_weights"]

#: Training data up to this many bytes is placed on a CPU device (and the floor elsewhere).
DEFAULT_BUDGET = 256 * 2**20
#: Streamed data: at most about this many bytes of batches per program.
STREAM_BYTES = 64 * 2**20


def resolve_budget(budget: int | None, device: Any) -> int:
    """The device-data budget in bytes: ``budget``, or the default for ``device``
    (256 MiB on CPU; a quarter of an accelerator's memory, at least 256 MiB)."""
    if budget is not None:
        return int(budget)
    if device.platform == "cpu":
        return DEFAULT_BUDGET
    try:
        limit = int((device.memory_stats() or {}).get("bytes_limit", 0))
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        limit = 0
    return max(DEFAULT_BUDGET, limit // 4)


def epoch_order(key: np.ndarray, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """Host index matrix ``(steps, batch_size)`` of one epoch; the last row wraps around."""
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    steps = math.ceil(n / batch_size)
    return np.resize(perm, steps * batch_size).reshape(steps, batch_size)  # cyclic padding


def device_order(key: jax.Array, first_epoch: jax.Array, epochs: int, n: int,
                 batch_size: int) -> jax.Array:
    """Inside jit: the flat padded orders of ``epochs`` epochs from ``first_epoch``,
    ``(epochs * steps * batch_size,)``; the rows of :func:`epoch_order`, concatenated."""
    steps = math.ceil(n / batch_size)
    wrap = jnp.arange(steps * batch_size) % n

    def one(i: jax.Array) -> jax.Array:
        return jax.random.permutation(jax.random.fold_in(key, first_epoch + i), n)[wrap]

    # one batched shuffle (a sort of (epochs, n) keys), however many epochs the program spans
    return jax.vmap(one)(jnp.arange(epochs, dtype=jnp.int32)).reshape(-1)


def step_weights(pos: Any, n: int, batch_size: int, xp: Any = np) -> Any:
    """Example weights of the step at position ``pos`` of its epoch: 0 for the padding."""
    return ((pos * batch_size + xp.arange(batch_size)) < n).astype(xp.float32)


class DataPlan:
    """The training arrays and how they reach the programs.

    Attributes:
        resident: whether the data lives on the device (else it streams).
        device_data: ``(x, y)`` on the device (replicated over a mesh), or ``None``.
        step_bytes: bytes of one batch.
        stream_steps: the most steps one streamed program takes.
    """

    def __init__(self, data: tuple[np.ndarray, np.ndarray], batch_size: int,
                 budget: int | None, mesh: Any,
                 put_batch: Callable[[Any, int], Any]) -> None:
        self.x, self.y = data
        self.n, self.batch_size = len(self.x), batch_size
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        self.put_batch = put_batch
        self.step_bytes = batch_size * (self.x[0].nbytes + self.y[0].nbytes + 4)
        self.stream_steps = max(1, STREAM_BYTES // self.step_bytes)
        device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
        size = self.x.nbytes + self.y.nbytes
        self.resident = size <= resolve_budget(budget, device) and jax.process_count() == 1
        self.device_data = None
        if self.resident:
            if mesh is not None:
                from .. import parallel

                self.device_data = parallel.replicate((self.x, self.y), mesh)
            else:
                self.device_data = jax.device_put((self.x, self.y))
        self._order: tuple[int, np.ndarray] | None = None

    def rows(self, key: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Host example indices and weights of one step."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(key, epoch, self.n, self.batch_size))
        return self._order[1][pos], step_weights(pos, self.n, self.batch_size)

    def host_batch(self, key: np.ndarray, step: int) -> tuple[np.ndarray, ...]:
        """One step's batch on the host (for the replay of a non-finite step)."""
        rows, weights = self.rows(key, step)
        return self.x[rows], self.y[rows], weights

    def streamed(self, key: np.ndarray, step: int, length: int) -> Any:
        """The placed, stacked batches ``(length, batch_size, ...)`` of a program."""
        parts = [self.rows(key, s) for s in range(step, step + length)]
        rows = np.stack([r for r, _ in parts])
        weights = np.stack([w for _, w in parts])
        return self.put_batch((self.x[rows], self.y[rows], weights), 1)
