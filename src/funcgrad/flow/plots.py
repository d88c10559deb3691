"""PNG pictures of gradient flow over training (needs matplotlib: the ``plot`` extra).

matplotlib is imported inside the functions that draw, so importing this module is cheap
and works without it; :func:`plot` then raises an ``ImportError`` that names the extra.

Examples:
    >>> import jax.numpy as jnp
    >>> h = History(log_every=10)
    >>> for step in range(3):
    ...     h.append({"grad_norm": jnp.array([1e-3, 1.0]) * (step + 1)}, step)
    >>> _default_steps(h.steps)
    [0, 1, 2]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .history import History

__all__ = ["plot"]

_NEEDS_MATPLOTLIB = ("plot: matplotlib is not installed; install the plot extra with "
                     "`pip install -e \".[plot]\"` (or `pip install matplotlib`)")


def _prefix(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        return p / "flow"
    return p.with_suffix("") if p.suffix.lower() == ".png" else p


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _default_steps(steps: np.ndarray) -> list[int]:
    if len(steps) == 0:
        return []
    picks = [steps[0], steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]]
    return sorted({int(s) for s in picks})


def _histories(history: History | Mapping[str, History]) -> dict[str, History]:
    hists = {"": history} if isinstance(history, History) else dict(history)
    if not hists:
        raise ValueError("plot: argument 'history' must be a History or a non-empty mapping "
                         "of them; got an empty mapping")
    for name, h in hists.items():
        if not isinstance(h, History) or len(h) == 0:
            what = "an empty History" if isinstance(h, History) else type(h).__name__
            raise ValueError(f"plot: argument 'history' entry {name!r} must be a non-empty "
                             f"History; got {what}")
    return hists


def _color_range(logs: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """One colour scale for all panels, robust to the few huge values just before a run
    diverges (values beyond it take the end colours)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()] + [np.zeros(0)])
    vmin, vmax = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) \
        if finite.size else (-1.0, 1.0)
    return (vmin - 1, vmax + 1) if vmax <= vmin else (vmin, vmax)


def _heatmap(data: Mapping[str, tuple[np.ndarray, np.ndarray]], key: str,
             title: str | None, path: Path) -> None:
    """``log10`` of ``key`` per layer over training, one panel per history."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with np.errstate(divide="ignore", invalid="ignore"):
        logs = {n: np.where(np.isfinite(v) & (v > 0), np.log10(v), np.nan)
                for n, (_, v) in data.items()}
    vmin, vmax = _color_range(logs)
    rows, cols = _grid(len(data))
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    cmap = colormaps["viridis"].with_extremes(bad="0.75")
    image = None
    for ax, (name, (st, values)) in zip(axes, data.items(), strict=False):
        lg = logs[name]
        image = ax.imshow(np.ma.masked_invalid(lg.T), aspect="auto", origin="lower",
                          cmap=cmap, norm=Normalize(vmin, vmax), interpolation="nearest",
                          extent=(st[0] - 0.5, st[-1] + 0.5, -0.5, lg.shape[1] - 0.5))
        ax.set(xlabel="step", ylabel="layer", title=name or f"{key} per layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        bad = np.nonzero(~np.isfinite(values).all(axis=1))[0]
        if bad.size:
            ax.text(0.98, 0.96, f"non-finite from step {int(st[bad[0]])}", ha="right",
                    va="top", transform=ax.transAxes, fontsize="small")
    for ax in axes[len(data):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(data)]), label=f"log10 {key}", extend="both")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)


def _across_layers(data: Mapping[str, tuple[np.ndarray, np.ndarray]], key: str,
                   steps: Sequence[int] | None, title: str | None, path: Path) -> None:
    """The lesson's plot: ``key`` across the layers at chosen steps, log scale."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows, cols = _grid(len(data))
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for ax, (name, (st, values)) in zip(axes, data.items(), strict=False):
        chosen = _default_steps(st) if steps is None else list(steps)
        for s in chosen:
            j = int(np.argmin(np.abs(st - s)))
            v = np.where(np.isfinite(values[j]) & (values[j] > 0), values[j], np.nan)
            ax.plot(np.arange(len(v)), v, "o-", ms=3, label=f"step {int(st[j])}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="layer (input → output)", ylabel=key, title=name or f"{key} across layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(data):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)


def _losses(losses: Mapping[str, History], title: str | None, path: Path) -> None:
    """Minibatch loss curves; a dotted line marks each run's first non-finite step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    firsts, lows = [], []
    for name, h in losses.items():
        st, loss = h.steps, h.array("loss").astype(np.float64)
        ok = loss[np.isfinite(loss) & (loss > 0)]
        if ok.size:
            firsts.append(ok[0])
            lows.append(ok.min())
        line, = ax.plot(st, np.where(np.isfinite(loss) & (loss > 0), loss, np.nan),
                        label=name or "loss")
        bad = np.nonzero(~np.isfinite(loss))[0]
        if bad.size:
            ax.axvline(st[bad[0]], color=line.get_color(), ls=":", lw=1)
    ax.set(xlabel="step", ylabel="training loss (minibatch)", yscale="log",
           title=(title + ": " if title else "") + "loss (dotted: first non-finite step)")
    if firsts:  # a diverging run would flatten the others: cut at 10x the first losses
        ax.set_ylim(0.5 * min(lows), 10 * max(firsts))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=90)


def plot(history: History | Mapping[str, History], path: str | os.PathLike[str], *,
         key: str = "grad_norm", steps: Sequence[int] | None = None,
         title: str | None = None) -> list[Path]:
    """Draw gradient flow as PNG pictures (needs matplotlib).

    Writes ``<prefix>_heatmap.png`` (``log10`` of ``key`` per layer over training, one
    panel per history; non-finite values grey), ``<prefix>_layers.png`` (``key`` across
    the layers at the chosen steps, log scale: the lesson's plot) and, when the histories
    hold a scalar ``loss``, ``<prefix>_loss.png``.

    Args:
        history: a :class:`~funcgrad.flow.History`, or a mapping ``name -> History`` for
            side-by-side panels.
        path: a directory (pictures are named ``flow_*.png``) or a file prefix
            (``out/run`` gives ``out/run_heatmap.png``; a ``.png`` suffix is dropped).
        key: the per-layer statistic to draw.
        steps: the steps of the across-layers plot (default: first, 1/4, 1/2 and last);
            the nearest recorded step is used.
        title: a title over the figures.

    Returns:
        The paths written.

    Raises:
        ImportError: if matplotlib is not installed (the message names the ``plot``
            extra).
        ValueError: if ``history`` is empty or holds an empty or foreign entry.

    Examples:
        >>> plot({}, "out")
        Traceback (most recent call last):
        ...
        ValueError: plot: argument 'history' must be a History or a non-empty mapping ...
    """
    hists = _histories(history)
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(_NEEDS_MATPLOTLIB) from err
    prefix = _prefix(path)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = {name: (h.steps, h.array(key).astype(np.float64)) for name, h in hists.items()}
    written = [prefix.with_name(prefix.name + suffix)
               for suffix in ("_heatmap.png", "_layers.png", "_loss.png")]
    _heatmap(data, key, title, written[0])
    _across_layers(data, key, steps, title, written[1])
    losses = {n: h for n, h in hists.items() if "loss" in h.keys()}
    if not losses:
        return written[:2]
    _losses(losses, title, written[2])
    return written
