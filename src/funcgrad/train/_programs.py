"""``fit``'s compiled programs: a ``lax.scan`` of train steps over whole epochs (or K
steps), the batches gathered on the device or streamed in; and the evaluation.

A program takes ``(state, control, data)`` and returns ``(state, control, metrics)``,
the metrics stacked per step, the scalar ones packed into the columns of one array.
``control`` carries what stops a run on the device (the steps skipped in a row, a
non-finite step since the last log): once a stop condition holds at a multiple of
``log_every``, the rest of the program leaves the state bitwise unchanged, so a run stops
exactly at the log that shows why, wherever programs end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._data import device_order, step_weights
from ._step import _step_body, eval_body, init_state

__all__ = ["Layout", "Programs", "eval_chunks", "initial_control"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static numbers of a run's programs.

    Attributes:
        n: training examples.
        batch_size: examples per step.
        log_every: the steps between logs (where a stop may happen).
        stop_on_nonfinite: stop at the log after a non-finite step.
        max_skips: stop at a log once this many steps in a row were skipped (or ``None``).
    """

    n: int
    batch_size: int
    log_every: int
    stop_on_nonfinite: bool
    max_skips: int | None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @property
    def controlled(self) -> bool:
        return self.stop_on_nonfinite or self.max_skips is not None


def initial_control() -> dict[str, jax.Array]:
    """The control carry at the start of a run (or a resumed one)."""
    import numpy as np

    return jax.device_put({"halted": np.zeros((), bool),
                           "consecutive": np.zeros((), np.int32), "bad": np.zeros((), bool)})


def _next_control(layout: Layout, ctrl: dict[str, jax.Array], finite: jax.Array,
                  active: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    consecutive = jnp.where(active, jnp.where(finite, 0, ctrl["consecutive"] + 1),
                            ctrl["consecutive"])
    bad = ctrl["bad"] | (active & ~finite)
    at_log = active & (step % layout.log_every == 0)
    halt = jnp.zeros((), bool)
    if layout.stop_on_nonfinite:
        halt = halt | bad
    if layout.max_skips is not None:
        halt = halt | (consecutive >= layout.max_skips)
    return {"halted": ctrl["halted"] | (at_log & halt), "consecutive": consecutive,
            "bad": bad & ~at_log}


class Programs:
    """Compiled programs of one ``fit`` call, one per ``(length, epochs spanned, streamed)``.

    Args:
        loss_fn: the training loss.
        tx: the optax transformation.
        layout: the run's :class:`Layout`.
        options: ``stats_fn``, ``histogram_bins``, ``taps`` (as in ``make_train_step``),
            ``wrap`` (applied to each program's function before jit) and ``mesh``.
    """

    def __init__(self, loss_fn: Callable, tx: Any, layout: Layout, **options: Any) -> None:
        self.body = _step_body(loss_fn, tx, options.get("stats_fn"),
                               options.get("histogram_bins", 0), options.get("taps", False),
                               "fit")
        self.layout, self.wrap = layout, options.get("wrap")
        self.mesh = options.get("mesh")
        self.cache: dict[tuple[int, int, bool], Callable] = {}
        self.scalar_names: tuple[str, ...] = ()  # the columns of a program's "scalars"
        self.eval = _eval_program(loss_fn)
        # the initial state in one program (not an eager op per leaf); its outputs are new
        # buffers, so the caller's params are never donated
        # (init_state's own state, with the run's key: any field init_state gains follows)
        loss_scale = options.get("loss_scale")  # a LossScale (float16) or None
        self.init = jax.jit(lambda params, key: dataclasses.replace(
            init_state(jax.tree.map(jnp.copy, params), tx, 0, loss_scale=loss_scale),
            key=key))

    def get(self, length: int, epochs: int, streamed: bool) -> Callable:
        """The program of ``length`` steps spanning ``epochs`` epochs (compiled on first use)."""
        key = (length, 0 if streamed else epochs, streamed)
        if key not in self.cache:
            fn = self._build(length, epochs, streamed)
            if self.wrap is not None:
                fn = self.wrap(fn)
            self.cache[key] = jax.jit(fn, donate_argnums=(0, 1))
        return self.cache[key]

    def _gather(self, data: Any, order: jax.Array, first_epoch: jax.Array,
                step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        lay, (x, y) = self.layout, data
        start = (step - first_epoch * lay.steps_per_epoch) * lay.batch_size
        idx = jax.lax.dynamic_slice(order, (start,), (lay.batch_size,))
        pos = step % lay.steps_per_epoch
        # the indices are in range by construction: clip, not the default fill's bounds masks
        batch = (jnp.take(x, idx, axis=0, mode="clip"), jnp.take(y, idx, axis=0, mode="clip"),
                 step_weights(pos, lay.n, lay.batch_size, jnp))
        if self.mesh is not None:
            from .. import parallel

            batch = jax.lax.with_sharding_constraint(
                batch, parallel.batch_sharding(self.mesh, 0))
        return batch

    def _build(self, length: int, epochs: int, streamed: bool) -> Callable:
        lay, body = self.layout, self.body

        def program(state: Any, ctrl: dict[str, jax.Array], data: Any) -> tuple:
            start = state.step
            first_epoch = start // lay.steps_per_epoch
            order = None if streamed else device_order(state.key, first_epoch, epochs,
                                                       lay.n, lay.batch_size)

            def one(carry: tuple, item: Any) -> tuple:
                state, ctrl = carry
                batch = item if streamed else self._gather(data, order, first_epoch,
                                                          start + item)
                if not lay.controlled:
                    state, metrics = body(state, batch)
                    return (state, ctrl), self._pack(metrics)
                active = ~ctrl["halted"]
                state, metrics = body(state, batch, active)
                ctrl = _next_control(lay, ctrl, metrics["finite"], active, state.step)
                return (state, ctrl), self._pack({**metrics, "ran": active,
                                                  "halt": ctrl["halted"]})

            xs = data if streamed else jnp.arange(length, dtype=jnp.int32)
            (state, ctrl), metrics = jax.lax.scan(one, (state, ctrl), xs)
            return state, ctrl, metrics

        program.__name__ = f"fit_program_{length}"
        return program

    def _pack(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """One step's scalar metrics as one vector, ``"scalars"``, named by
        :attr:`scalar_names` (set while tracing); the rest (per-layer norms, taps, flow,
        histograms) as it is. Stacked by the scan, the scalars are the columns of one
        array: the host fetches one array per program for them, not one per metric, and
        XLA computes them in fewer kernels (71 against 79 in the epoch program of the
        64-128-128-10 model)."""
        names = tuple(sorted(k for k, v in metrics.items()
                             if not isinstance(v, dict) and jnp.ndim(v) == 0))
        dtype = jnp.result_type(jnp.float32, *(metrics[k].dtype for k in names))
        self.scalar_names = names
        return {"scalars": jnp.stack([metrics[k].astype(dtype) for k in names]),
                **{k: v for k, v in metrics.items() if k not in names}}


def _eval_program(loss_fn: Callable) -> Callable:
    """Jitted ``(params, chunks) -> (loss sum, correct, count)`` over stacked chunks."""
    one = eval_body(loss_fn, "fit")

    def evaluate(params: Any, chunks: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        def add(total: tuple, batch: Any) -> tuple:
            out = one(params, batch)
            return tuple(t + o for t, o in zip(total, out, strict=True)), None

        zero = (jnp.zeros((), jnp.float32),) * 3
        return jax.lax.scan(add, zero, chunks)[0]

    return jax.jit(evaluate)


def eval_chunks(data: tuple[Any, Any], batch_size: int, mesh: Any,
                put_batch: Callable[[Any, int], Any]) -> Any:
    """Held-out ``(x, y)`` as placed, padded chunks ``(c, chunk, ...)`` (weights 0 pad)."""
    import numpy as np

    ex, ey = data
    chunk = max(batch_size, min(4096, len(ex)))
    if mesh is not None:
        chunk = math.ceil(chunk / batch_size) * batch_size
    steps = math.ceil(len(ex) / chunk)
    idx = (np.arange(steps * chunk) % len(ex)).reshape(steps, chunk)
    weights = (np.arange(steps * chunk) < len(ex)).astype(np.float32).reshape(steps, chunk)
    return put_batch((ex[idx], ey[idx], weights), 1)
