"""TensorBoard logs of training: scalars per logged step, gradient histograms binned on device.

* :func:`layer_histograms` — jit-able: a fixed-shape histogram of each layer's gradient,
  computed where the gradients live, to put in a step's metrics. Only ``L x (2 * bins + 6)``
  numbers reach the host, never the gradients themselves.
* :func:`host_histograms` — those arrays as plain lists, for a JSON metrics record.
* :class:`TensorBoardWriter` — writes one record as :func:`funcgrad.fit` logs it
  (``on_log``), through tensorboardX (the optional extra ``funcgrad[tensorboard]``,
  imported only when a writer is made).

Layers are those of :mod:`funcgrad.flow.stats` (whose ``layer_squares`` gives the training
metrics' ``layer_grad_norms``): a list or tuple of parameters is one layer per element, a
dict one per key (sorted), anything else one layer.

Non-finite values, strictly:

* Scalars are written exactly as the record holds them: a NaN or infinite loss or norm is
  written as NaN or inf, never dropped or replaced, so a bad interval shows in the plot.
* Histograms bin the finite elements only; each layer's count of non-finite elements is
  written as the scalar ``grad_nonfinite/<layer>`` at every logged step. A layer with no
  finite element at all gets no histogram at that step (its non-finite count says why).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "HISTOGRAM_FIELDS",
    "INSTALL_HINT",
    "SCALAR_TAGS",
    "TensorBoardWriter",
    "check_logdir",
    "host_histograms",
    "layer_histograms",
    "layer_names",
    "require_tensorboardx",
]

#: What to run when tensorboardX is missing.
INSTALL_HINT = 'pip install "funcgrad[tensorboard]"'

#: The arrays :func:`layer_histograms` returns, each with a leading layer axis.
HISTOGRAM_FIELDS = ("counts", "edges", "min", "max", "sum", "sum_squares", "nonfinite")

#: record key -> TensorBoard scalar tag, for the scalars of a :func:`funcgrad.fit` record.
SCALAR_TAGS = {
    "train_loss": "loss",
    "train_accuracy": "accuracy",
    "grad_norm": "grad_norm",
    "clipped_grad_norm": "clipped_grad_norm",
    "update_norm": "update_norm",
    "nonfinite_steps": "skipped_steps",
}


def _layers(tree: Any) -> list[Any]:
    """The layers of :mod:`funcgrad.flow.stats`: list/tuple elements, dict values by
    sorted key, or the whole tree."""
    if isinstance(tree, (list, tuple)):
        return list(tree)
    if isinstance(tree, dict):
        return [tree[k] for k in sorted(tree)]
    return [tree]


def layer_names(tree: Any) -> list[str]:
    """One TensorBoard tag name per layer of a parameter-shaped pytree.

    The names of :func:`funcgrad.flow.stats.layer_names`, with ``layer_`` before a
    number: a list or tuple gives ``layer_0, layer_1, ...``; a dict its keys (sorted);
    anything else ``["layer_0"]``.

    Args:
        tree: parameters or gradients.

    Returns:
        The names, in the order of ``layer_grad_norms`` and :func:`layer_histograms`.

    Examples:
        >>> layer_names([{"w": 1.0}, {"w": 2.0}])
        ['layer_0', 'layer_1']
        >>> layer_names({"encoder": 1.0, "decoder": 2.0})
        ['decoder', 'encoder']
    """
    from .flow.stats import layer_names as flow_names

    return [f"layer_{n}" if n.isdigit() else n for n in flow_names(tree)]


def _check_bins(bins: Any, fn: str = "layer_histograms", arg: str = "bins") -> int:
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        zero = " (or 0 for none)" if arg == "histogram_bins" else ""
        raise ValueError(f"{fn}: argument '{arg}' must be an int >= 1{zero}; got {bins!r}")
    return int(bins)


def _leaves(part: Any) -> list[jax.Array]:
    """The layer's floating leaves as flat float32 (integer and boolean leaves carry no
    gradient and are left out, as in :mod:`funcgrad.flow.stats`)."""
    leaves = []
    for leaf in map(jnp.asarray, jax.tree.leaves(part)):
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(f"layer_histograms: argument 'grads' must hold real numbers; got "
                            f"a leaf of dtype {leaf.dtype}")
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            leaves.append(jnp.ravel(leaf).astype(jnp.float32))
    return leaves or [jnp.zeros((0,), jnp.float32)]


def _edges(lo: jax.Array, hi: jax.Array, bins: int) -> jax.Array:
    """``bins + 1`` monotone float32 edges from ``lo`` to ``hi``; a unit-wide (at least)
    range around a single value, as ``numpy.histogram`` does."""
    big = jnp.finfo(jnp.float32).max
    half = jnp.maximum(0.5, jnp.abs(lo) * 2.0 ** -20)  # 0.5 ulp-safe at any magnitude
    lo_e = jnp.where(hi > lo, lo, jnp.maximum(lo - half, -big))
    hi_e = jnp.where(hi > lo, hi, jnp.minimum(hi + half, big))
    t = jnp.arange(bins + 1, dtype=jnp.float32) / bins
    edges = jax.lax.cummax(lo_e * (1 - t) + hi_e * t)  # never overflows; monotone
    return edges.at[0].set(lo_e).at[-1].set(hi_e)


def _bin_counts(x: jax.Array, finite: jax.Array, edges: jax.Array) -> jax.Array:
    """Counts of the finite ``x`` in ``edges[j] <= x < edges[j + 1]`` (last bin closed)."""
    bins = edges.shape[0] - 1
    lo, hi = edges[0], edges[-1]
    x = jnp.where(finite, x, lo)
    # XLA turns divisions into products with reciprocals (and (a / b) / c into
    # a / (b * c)), which flush to zero beyond 1e38: scale by a power of two so that the
    # width and its reciprocal stay normal numbers, at any magnitude
    m = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
    f = jnp.where(m > 2.0 ** 100, 2.0 ** -30, jnp.where(m < 2.0 ** -60, 2.0 ** 60, 1.0))
    guess = jnp.floor((x * f - lo * f) / (hi * f - lo * f) * bins)
    idx = jnp.clip(jnp.nan_to_num(guess), 0, bins - 1).astype(jnp.int32)
    # the guess is off by at most one bin by rounding: settle it against the edges
    idx = jnp.clip(idx - (x < edges[idx]), 0, bins - 1)
    idx = idx + ((x >= edges[idx + 1]) & (idx < bins - 1))
    return jnp.zeros((bins,), jnp.int32).at[idx].add(finite.astype(jnp.int32))


def _one_histogram(part: Any, bins: int) -> dict[str, jax.Array]:
    """Histogram of the finite elements of all leaves of one layer, with shared edges."""
    leaves = _leaves(part)
    finite = [jnp.isfinite(x) for x in leaves]
    pairs = list(zip(leaves, finite, strict=True))
    n = sum((jnp.sum(f, dtype=jnp.int32) for f in finite), start=jnp.zeros((), jnp.int32))
    lo = jnp.min(jnp.stack([jnp.min(jnp.where(f, x, jnp.inf), initial=jnp.inf)
                            for x, f in pairs]))
    hi = jnp.max(jnp.stack([jnp.max(jnp.where(f, x, -jnp.inf), initial=-jnp.inf)
                            for x, f in pairs]))
    lo, hi = jnp.where(n > 0, lo, 0.0), jnp.where(n > 0, hi, 0.0)
    edges = _edges(lo, hi, bins)
    zero = jnp.zeros((), jnp.float32)
    return {
        "counts": sum((_bin_counts(x, f, edges) for x, f in pairs),
                      start=jnp.zeros((bins,), jnp.int32)),
        "edges": edges,
        "min": lo,
        "max": hi,
        "sum": sum((jnp.sum(jnp.where(f, x, 0.0)) for x, f in pairs), start=zero),
        "sum_squares": sum((jnp.sum(jnp.square(jnp.where(f, x, 0.0))) for x, f in pairs),
                           start=zero),
        "nonfinite": jnp.asarray(sum(x.size for x in leaves), jnp.int32) - n,
    }


def layer_histograms(grads: Any, bins: int = 30) -> dict[str, jax.Array]:
    """Per-layer histograms of a gradient pytree, computed on the device (jit-able).

    Each layer's finite elements (all its floating leaves together, as float32; integer
    and boolean leaves carry no gradient and are left out) are binned into
    ``bins`` equal bins spanning their minimum to maximum; bin ``j`` holds
    ``edges[j] <= x < edges[j + 1]`` and the last bin also holds the maximum, as in
    ``numpy.histogram``. A layer whose finite elements are all equal (or absent) is binned
    over ``[value - 0.5, value + 0.5]``. Non-finite elements are not binned but counted.
    Every output has a fixed shape, so the result can be part of a jitted step's metrics.

    Args:
        grads: a parameter-shaped pytree of real arrays, split into layers as
            :func:`funcgrad.flow.stats.layer_squares` does (list/tuple: one layer per
            element; dict: one per sorted key; anything else: one layer).
        bins: number of bins, an int >= 1.

    Returns:
        A dict of arrays with a leading axis of length L (layers): ``counts`` int32
        ``(L, bins)``, ``edges`` float32 ``(L, bins + 1)``, and per layer ``min``, ``max``,
        ``sum``, ``sum_squares`` (of the finite elements, float32) and ``nonfinite``
        (int32 count). ``counts[i].sum() + nonfinite[i]`` is layer ``i``'s element count.

    Raises:
        ValueError: if ``bins`` is not an int >= 1.
        TypeError: if a leaf is complex.

    Examples:
        >>> import jax.numpy as jnp
        >>> h = layer_histograms([jnp.array([0.0, 1.0, 1.0, 4.0]), jnp.array([2.0, jnp.nan])],
        ...                      bins=4)
        >>> h["counts"].tolist()
        [[1, 2, 0, 1], [0, 0, 1, 0]]
        >>> h["edges"][0].tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
        >>> h["nonfinite"].tolist()
        [0, 1]
    """
    return _histograms(grads, _check_bins(bins))


@functools.partial(jax.jit, static_argnums=1)  # one program eagerly too; inlined under jit
def _histograms(grads: Any, bins: int) -> dict[str, jax.Array]:
    per_layer = [_one_histogram(part, bins) for part in _layers(grads)]
    return {k: jnp.stack([h[k] for h in per_layer]) for k in HISTOGRAM_FIELDS}


def host_histograms(histograms: Mapping[str, Any]) -> dict[str, list]:
    """The arrays of :func:`layer_histograms` fetched to the host as plain lists.

    Use it to put one step's histograms into a JSON metrics record
    (``record["grad_histograms"]``), which :meth:`TensorBoardWriter.write` reads.

    Args:
        histograms: the dict :func:`layer_histograms` returns (device or NumPy arrays).

    Returns:
        The same keys, each value a (nested) list of Python numbers.

    Raises:
        ValueError: if a field of :data:`HISTOGRAM_FIELDS` is missing.
    """
    missing = [k for k in HISTOGRAM_FIELDS if k not in histograms]
    if missing:
        raise ValueError(f"host_histograms: argument 'histograms' must have the keys "
                         f"{list(HISTOGRAM_FIELDS)}; missing {missing}")
    fetched = jax.device_get({k: histograms[k] for k in HISTOGRAM_FIELDS})
    return {k: np.asarray(v).tolist() for k, v in fetched.items()}


def require_tensorboardx(name: str = "TensorBoardWriter") -> Any:
    """Import tensorboardX, or fail with one line that names the extra to install.

    Args:
        name: who needs it, for the message (e.g. ``"--tensorboard"`` in the CLI).

    Returns:
        The ``tensorboardX`` module.

    Raises:
        ModuleNotFoundError: ``<name> needs tensorboardX, which is not installed; install
            the extra: pip install "funcgrad[tensorboard]"``.
    """
    try:
        import tensorboardX
    except ImportError as e:
        raise ModuleNotFoundError(f"{name} needs tensorboardX, which is not installed; "
                                  f"install the extra: {INSTALL_HINT}") from e
    return tensorboardX


def check_logdir(logdir: Any, name: str = "TensorBoardWriter: argument 'logdir'") -> Path:
    """Validate (and create) a log directory, before any training time is spent.

    Args:
        logdir: a path to a directory that exists or can be created, and is writable.
        name: what the messages call it (e.g. ``"--tensorboard"`` in the CLI).

    Returns:
        The directory as a :class:`pathlib.Path`.

    Raises:
        TypeError: if ``logdir`` is not a str or path.
        ValueError: if ``logdir`` is empty, an existing non-directory (e.g. a file), or
            under one.
        PermissionError: if the directory cannot be created or written.
    """
    if not isinstance(logdir, (str, os.PathLike)) or isinstance(logdir, bytes):
        raise TypeError(f"{name} must be a str or path; got {type(logdir).__name__}")
    if str(logdir) == "":
        raise ValueError(f"{name} must be a directory path; got ''")
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a directory; got '{path}', an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (NotADirectoryError, FileExistsError) as e:
        raise ValueError(f"{name} must be a directory; got '{path}', under an existing file "
                         f"({e.strerror})") from e
    except OSError as e:
        raise PermissionError(f"{name} must be a writable directory; cannot write to "
                              f"'{path}' ({e.strerror})") from e
    return path


def _as_float(value: Any) -> float:
    return float(np.asarray(value, np.float64))


class TensorBoardWriter:
    """Writes :func:`funcgrad.fit`'s logged records as TensorBoard scalars and histograms.

    Use it as ``fit``'s ``on_log`` (it is callable), or call :meth:`write` with each
    record. At the record's ``step`` it writes the scalars ``loss``, ``accuracy``,
    ``grad_norm``, ``clipped_grad_norm`` (the norm after clipping), ``update_norm``,
    ``skipped_steps`` (non-finite steps in the interval) and ``grad_norm/<layer>`` per
    layer; if the record holds ``grad_histograms`` (see :func:`host_histograms`), also a
    histogram ``grad/<layer>`` and the scalar ``grad_nonfinite/<layer>`` per layer.
    Non-finite values: see the module docstring. tensorboardX is imported here, not when
    ``funcgrad`` is.

    Args:
        logdir: directory of the event files; created if missing.
        layer_names: tag names of the layers (e.g. :func:`layer_names` of the params);
            default ``layer_0, layer_1, ...``.
        histogram_bins: bins of the gradient histograms that a training loop given this
            writer computes in each step (:func:`layer_histograms`); 0 for none.
        flush_secs: how often tensorboardX flushes to disk, in seconds.

    Raises:
        ModuleNotFoundError: if tensorboardX is not installed (names the extra to install).
        TypeError, ValueError, PermissionError: for a bad ``logdir``, as in
            :func:`check_logdir`.

    Examples:
        >>> import tempfile
        >>> with TensorBoardWriter(tempfile.mkdtemp()) as tb:  # doctest: +SKIP
        ...     fit(params, data, apply_fn=model, tx=tx, on_log=tb)
    """

    def __init__(self, logdir: str | os.PathLike, *, layer_names: Sequence[str] | None = None,
                 histogram_bins: int = 30, flush_secs: int = 10) -> None:
        tensorboardx = require_tensorboardx()
        none = type(histogram_bins) is int and histogram_bins == 0
        self.histogram_bins = 0 if none else _check_bins(histogram_bins, "TensorBoardWriter",
                                                         "histogram_bins")
        self.logdir = check_logdir(logdir)
        if layer_names is not None and (isinstance(layer_names, str) or not all(
                isinstance(n, str) and n for n in layer_names)):
            raise TypeError(f"TensorBoardWriter: argument 'layer_names' must be a sequence of "
                            f"non-empty str; got {layer_names!r}")
        self.layer_names = None if layer_names is None else list(layer_names)
        self._writer = tensorboardx.SummaryWriter(logdir=str(self.logdir),
                                                  flush_secs=flush_secs)
        self._closed = False

    def _names(self, count: int) -> list[str]:
        if self.layer_names is None:
            return [f"layer_{i}" for i in range(count)]
        if len(self.layer_names) != count:
            raise ValueError(f"TensorBoardWriter.write: the record has {count} layers but "
                             f"'layer_names' has {len(self.layer_names)}: "
                             f"{self.layer_names}")
        return self.layer_names

    def _step(self, record: Mapping[str, Any], method: str) -> int:
        step = record.get("step") if isinstance(record, Mapping) else None
        return self._check_step(step, method, "argument 'record' must be a dict with an int "
                                f"'step' >= 0; got step={step!r}")

    def _check_step(self, step: Any, method: str, expected: str) -> int:
        """``step`` as an int, once the writer is known open and ``step`` an int >= 0."""
        if self._closed:
            raise ValueError(f"TensorBoardWriter.{method}: the writer is closed")
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise ValueError(f"TensorBoardWriter.{method}: {expected}")
        return int(step)

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one logged record at its ``step``.

        Args:
            record: a dict as ``fit`` passes to ``on_log`` (``step``, ``train_loss``,
                ``grad_norm``, ``layer_grad_norms``, ..., optionally
                ``grad_histograms``). Missing scalars are not written.

        Raises:
            ValueError: if the writer is closed, ``step`` is not an int >= 0, or the
                number of layers does not match ``layer_names``.
        """
        step = self._step(record, "write")
        for key, tag in SCALAR_TAGS.items():
            if record.get(key) is not None:
                self._writer.add_scalar(tag, _as_float(record[key]), step)
        norms = record.get("layer_grad_norms")
        if norms is not None:
            norms = np.atleast_1d(np.asarray(norms, np.float64))
            for name, value in zip(self._names(len(norms)), norms, strict=True):
                self._writer.add_scalar(f"grad_norm/{name}", float(value), step)
        if record.get("grad_histograms") is not None:
            self._write_histograms(record["grad_histograms"], step)

    __call__ = write

    def _write_histograms(self, hist: Mapping[str, Any], step: int) -> None:
        h = {k: np.asarray(hist[k]) for k in HISTOGRAM_FIELDS}
        counts = h["counts"]
        if counts.ndim != 2 or h["edges"].shape != (counts.shape[0], counts.shape[1] + 1):
            raise ValueError(f"TensorBoardWriter.write: 'grad_histograms' must have counts "
                             f"(L, bins) and edges (L, bins + 1); got {counts.shape} and "
                             f"{h['edges'].shape}")
        for i, name in enumerate(self._names(counts.shape[0])):
            self._writer.add_scalar(f"grad_nonfinite/{name}", float(h["nonfinite"][i]), step)
            num = int(counts[i].sum())
            if num == 0:  # no finite element in this layer: its non-finite count says so
                continue
            # TensorBoard stores right bin limits only: a leading empty bin keeps the left
            # edge, as tensorboardX's own add_histogram does
            self._writer.add_histogram_raw(
                f"grad/{name}", min=float(h["min"][i]), max=float(h["max"][i]), num=num,
                sum=float(h["sum"][i]), sum_squares=float(h["sum_squares"][i]),
                bucket_limits=[float(e) for e in h["edges"][i]],
                bucket_counts=[0, *(int(c) for c in counts[i])], global_step=step)

    def write_eval(self, record: Mapping[str, Any]) -> None:
        """Write one evaluation record (``fit``'s ``result.evals``) at its ``step``.

        Args:
            record: a dict with ``step``, ``test_loss`` and ``test_accuracy``; written as
                ``eval/loss`` and ``eval/accuracy``.

        Raises:
            ValueError: if the writer is closed or ``step`` is not an int >= 0.
        """
        step = self._step(record, "write_eval")
        for key, tag in (("test_loss", "eval/loss"), ("test_accuracy", "eval/accuracy")):
            if record.get(key) is not None:
                self._writer.add_scalar(tag, _as_float(record[key]), step)

    def purge_from(self, step: int) -> None:
        """Hide the events at ``step`` and later that an earlier run wrote to this logdir.

        For a run resumed from the checkpoint of ``step``: an interrupted run may have
        logged past its last checkpoint, and the resumed run logs those steps again.
        TensorBoard drops every event with a step >= ``step`` that precedes this marker (a
        ``SessionLog.START`` event, as tensorboardX's ``purge_step`` writes).

        Args:
            step: the step the run resumes from, an int >= 0.

        Raises:
            ValueError: if the writer is closed or ``step`` is not an int >= 0.
        """
        step = self._check_step(step, "purge_from",
                                f"argument 'step' must be an int >= 0; got {step!r}")
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._writer.file_writer.add_event(  # what tensorboardX's own purge_step writes
            Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def flush(self) -> None:
        """Write everything pending to disk."""
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
