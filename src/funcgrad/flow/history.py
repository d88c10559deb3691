"""The one device-to-host buffer: per-step records kept on the device, fetched in batches.

A training loop produces a few small device arrays per step (a loss, per-layer norms).
Fetching them every step would make the host wait on the device every step. A
:class:`History` instead keeps the arrays where they are and transfers every pending
step in one ``jax.device_get`` once ``log_every`` steps are pending (or when asked).
:func:`funcgrad.train.fit` keeps its step metrics and its ``flow=`` statistics this way.

Examples:
    >>> import jax.numpy as jnp
    >>> h = History(log_every=3)
    >>> for step in range(4):
    ...     h.append({"loss": jnp.float32(1.0 / (step + 1))}, step)
    >>> h.fetches, len(h.records), len(h)
    (1, 3, 4)
    >>> to_jsonable(h.array("loss"))
    [1.0, 0.5, 0.33333, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .saturation import saturation, saturation_from
from .stats import layer_stats

__all__ = ["History", "to_jsonable"]


def to_jsonable(value: Any, digits: int | None = 5) -> Any:
    """Host values to JSON-ready Python; non-finite floats become ``None``.

    Dicts (keys made strings), lists, tuples, NumPy and JAX arrays and scalars are
    converted recursively; arrays become nested lists.

    Args:
        value: a value or a nested structure of them (a :class:`History` record).
        digits: significant digits kept of every float, or ``None`` for all of them.

    Returns:
        ``None``, ``bool``, ``int``, ``float``, ``str``, lists and dicts only.

    Examples:
        >>> import numpy as np
        >>> to_jsonable({"step": 3, "norm": np.array([1 / 3, np.inf]), "ok": np.True_})
        {'step': 3, 'norm': [0.33333, None], 'ok': True}
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, digits) for v in value]
    if isinstance(value, str) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.tolist()
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"to_jsonable: argument 'value' must hold numbers, strings, lists "
                        f"or dicts; got {type(value).__name__} of dtype {arr.dtype}")

    def num(v: float) -> float | None:
        if not math.isfinite(v):
            return None
        return v if digits is None else float(f"{v:.{digits}g}")

    flat = [num(v) for v in arr.astype(np.float64).ravel().tolist()]
    if arr.ndim == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


def _check_log_every(log_every: Any) -> int:
    if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
        raise ValueError(f"History: argument 'log_every' must be an int >= 1; got "
                         f"{log_every!r}")
    return log_every


class History:
    """Per-step records kept on the device and fetched to the host every ``log_every`` steps.

    The interface, for any loop that produces per-step device arrays:

    * :meth:`append` ``(stats, steps)`` stores one step's pytree of arrays (a dict, which
      may nest), or K steps stacked on a leading axis (from ``lax.scan``) with their K
      step numbers. Nothing is transferred.
    * When the appended steps reach or cross a multiple of ``log_every`` (counting steps
      done: step ``s`` is the ``s + 1``-th), :meth:`append` calls :meth:`fetch`, so the
      fetches land on the same steps however the steps were grouped into dispatches, and
      a run resumed at a fetch step logs what an uninterrupted one logs. One
      ``jax.device_get`` of everything pending, split into one host record per step,
      ``{"step": int, key: np.ndarray or nested dict, ...}``, in append order. The new
      records go to :attr:`records` (unless ``keep=False``) and to ``on_fetch``. A loop
      that logs on its own schedule calls :meth:`fetch` itself (``fit`` does, at the end).
    * :meth:`steps`, :meth:`keys`, :meth:`array` and :meth:`to_dict` read the records
      (fetching pending steps first); :func:`to_jsonable` turns any record into JSON.
    * :meth:`measure` is the flow statistics of one step, to be called inside the jitted
      step (:func:`funcgrad.train.fit` does, given ``flow=history``).

    Attributes:
        log_every: a fetch happens whenever the steps done cross a multiple of it.
        apply_fn: ``apply_fn(params, x)``; when set, :meth:`measure` also records the
            ``saturation`` of its sigmoid/tanh layers on the step's batch.
        eps: saturation threshold (see :func:`~funcgrad.flow.saturated_fraction`).
        on_fetch: called with the list of new host records after every fetch.
        keep: whether fetched records are kept in :attr:`records` (``False``: only
            ``on_fetch`` sees them, and memory stays constant over a long run).
        records: host records, ``{"step": int, key: np.ndarray, ...}``, in step order.
        fetches: how many host transfers have happened.

    Examples:
        >>> import jax.numpy as jnp
        >>> h = History(log_every=2)
        >>> for step in range(5):
        ...     h.append({"grad_norm": jnp.array([1.0, 0.1]) * step}, step)
        >>> len(h.records), h.fetches, len(h)
        (4, 2, 5)
        >>> h.array("grad_norm").shape
        (5, 2)
        >>> h.append({"grad_norm": jnp.ones((3, 2))}, range(5, 8))  # 3 stacked steps
        >>> h.steps.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
    """

    def __init__(self, log_every: int = 50, *, apply_fn: Callable | None = None,
                 eps: float = 0.01,
                 on_fetch: Callable[[list[dict[str, Any]]], None] | None = None,
                 keep: bool = True) -> None:
        self.log_every = _check_log_every(log_every)
        self.apply_fn = apply_fn
        self.eps = eps
        self.on_fetch = on_fetch
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self.fetches = 0
        self._pending: list[tuple[np.ndarray, Any, bool]] = []
        self._pending_steps = 0
        self._fetched_steps = 0
        self._next_step = 0

    def measure(self, params: Any, grads: Any, updates: Any = None,
                batch: Any = None, activations: Mapping[str, Any] | None = None
                ) -> dict[str, jax.Array]:
        """The flow statistics of one step, computed inside jit.

        Saturation and dead units come from the step's own forward pass: a step that
        differentiates with :func:`funcgrad.flow.taps.tapped_value_and_grad` passes its
        ``extra`` as ``activations`` and nothing runs the model again. Without
        ``activations``, but with :attr:`apply_fn` and ``batch``, the model is run once
        more on ``x`` to measure saturation.

        Args:
            params: parameters before the step.
            grads: their gradients.
            updates: the optimizer's updates, or ``None``.
            batch: the step's batch ``(x, ...)``; used only without ``activations``.
            activations: the step's forward statistics, ``{"saturation": {name: share},
                "dead": {name: share}}`` (from ``tapped_value_and_grad``).

        Returns:
            :func:`~funcgrad.flow.layer_stats` output, plus ``saturation`` (one share per
            sigmoid/tanh call, in order) when measurable, and ``dead_units`` (one share per
            relu call) when ``activations`` has relu calls.
        """
        stats = layer_stats(grads, params, updates)
        if activations is not None:
            if activations.get("saturation") or self.apply_fn is not None:
                stats["saturation"] = saturation_from(activations)
            if activations.get("dead"):
                stats["dead_units"] = saturation_from(activations, "dead")
        elif self.apply_fn is not None and batch is not None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            stats["saturation"] = saturation(self.apply_fn, params, x, eps=self.eps)
        return stats

    def append(self, stats: Mapping[str, Any], steps: int | Sequence[int] | None = None
               ) -> None:
        """Store one step's statistics (or K stacked steps') without a host transfer.

        Args:
            stats: a dict of arrays, which may nest (device arrays stay on the device
                until fetched).
            steps: the step number (then ``stats`` is one step), or a sequence of K step
                numbers (then every array has a leading axis of length K); default: the
                step after the last one appended.

        Raises:
            ValueError: if ``steps`` is a sequence and an array of ``stats`` has no
                leading axis of its length.
        """
        if steps is None:
            steps = self._next_step
        stacked = np.ndim(steps) > 0
        steps_arr = np.atleast_1d(np.asarray(steps, np.int64))
        if stacked:
            for path, value in jax.tree_util.tree_flatten_with_path(dict(stats))[0]:
                if np.shape(value)[:1] != (len(steps_arr),):
                    raise ValueError(
                        f"History.append: argument 'stats' entry "
                        f"{jax.tree_util.keystr(path)} must have a leading axis of length "
                        f"{len(steps_arr)} (one row per step in 'steps'); got shape "
                        f"{np.shape(value)}")
        self._pending.append((steps_arr, dict(stats), stacked))
        self._pending_steps += len(steps_arr)
        self._next_step = int(steps_arr[-1]) + 1
        if (int(steps_arr[-1]) + 1) // self.log_every > int(steps_arr[0]) // self.log_every:
            self.fetch()

    def fetch(self) -> list[dict[str, Any]]:
        """Transfer the pending steps to the host (one ``device_get``).

        Returns:
            The new records (also appended to :attr:`records` when ``keep``); empty if
            none is pending.
        """
        if not self._pending:
            return []
        host = jax.device_get([s for _, s, _ in self._pending])
        new: list[dict[str, Any]] = []
        for (steps_arr, _, stacked), stats in zip(self._pending, host, strict=True):
            leaves, treedef = jax.tree.flatten(stats)
            leaves = [np.asarray(v) for v in leaves]  # once per array, not per row
            for j, step in enumerate(steps_arr):
                row = [np.asarray(v[j]) for v in leaves] if stacked else leaves
                new.append({"step": int(step), **treedef.unflatten(row)})
        self._pending, self._pending_steps = [], 0
        self._fetched_steps += len(new)
        if self.keep:
            self.records.extend(new)
        self.fetches += 1
        if self.on_fetch is not None:
            self.on_fetch(new)
        return new

    def __len__(self) -> int:
        """Steps appended so far, fetched or pending."""
        return self._fetched_steps + self._pending_steps

    @property
    def steps(self) -> np.ndarray:
        """The step numbers of all records (fetches pending steps first)."""
        self.fetch()
        return np.array([r["step"] for r in self.records], np.int64)

    def keys(self) -> list[str]:
        """The statistics recorded (fetches pending steps first)."""
        self.fetch()
        return [k for k in (self.records[0] if self.records else {}) if k != "step"]

    def array(self, key: str) -> Any:
        """One statistic over time, shape ``(steps, ...)`` (fetches pending steps first).

        Args:
            key: e.g. ``"grad_norm"``.

        Returns:
            The stacked values (a dict of them for a nested entry).

        Raises:
            KeyError: if no record holds ``key``.
        """
        self.fetch()
        if not self.records or key not in self.records[0]:
            raise KeyError(f"History.array: argument 'key' must name a recorded statistic "
                           f"{self.keys()}; got {key!r}")
        return jax.tree.map(lambda *v: np.stack(v), *[r[key] for r in self.records])

    def to_dict(self) -> dict[str, Any]:
        """The history as JSON-ready lists: ``{"steps": [...], key: [[...], ...]}``."""
        return {"steps": self.steps.tolist(),
                **{k: to_jsonable(self.array(k)) for k in self.keys()}}
