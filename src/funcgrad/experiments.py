"""The lesson's vanishing and exploding gradient experiments, measured.

Each experiment trains deep MLPs on the digits with plain SGD and measures their gradient
flow with :mod:`funcgrad.flow` before, during and after training: the lesson's claims
(sigmoid nets vanish, relu/He and batch norm do not, a large init explodes and clipping,
a lower learning rate or a proper init cure it) become numbers. ``funcgrad flow`` on the
command line runs both and prints the tables.

This module sits above training (it imports :mod:`funcgrad.train`, :mod:`funcgrad.nn` and
:mod:`funcgrad.data`); the diagnostics in :mod:`funcgrad.flow` never import it.

Examples:
    >>> [c.name for c in EXPLODING_CONFIGS][:2]
    ['He x1.5, lr 0.05', 'He x1.5, lr 0.05, clip 1.0']
    >>> NetConfig("tanh, Glorot init", "tanh", "glorot").learning_rate
    0.05
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import data as _data
from . import nn, train
from ._text import text_table
from .flow.diagnose import Diagnosis, diagnose
from .flow.history import History, to_jsonable
from .flow.saturation import saturation
from .flow.stats import layer_stats

__all__ = [
    "EXPLODING_CONFIGS",
    "VANISHING_CONFIGS",
    "NetConfig",
    "RunResult",
    "exploding_experiment",
    "format_exploding_table",
    "format_vanishing_table",
    "run_config",
    "vanishing_experiment",
]


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """One network and optimizer setting of the lesson's experiments.

    Attributes:
        name: a label for tables and plots.
        activation: hidden activation (a name in :data:`funcgrad.nn.ACTIVATIONS`).
        init: ``"he"``, ``"glorot"`` or ``"normal"``.
        scale: the init gain (He/Glorot) or standard deviation (normal).
        depth_scaled: multiply the init gain by ``1/sqrt(depth)`` (residual branches).
        residual: skip connections between hidden layers.
        batch_norm: batch-normalise hidden layers.
        learning_rate: SGD step size.
        clip_norm: ``clip_by_global_norm`` threshold, or ``None``.
    """

    name: str
    activation: str = "relu"
    init: str = "he"
    scale: float = 1.0
    depth_scaled: bool = False
    residual: bool = False
    batch_norm: bool = False
    learning_rate: float = 0.05
    clip_norm: float | None = None


#: The vanishing-gradient experiment: 20-layer, 32-wide MLPs on the digits.
VANISHING_CONFIGS: tuple[NetConfig, ...] = (
    NetConfig("sigmoid, normal(1) init", "sigmoid", "normal", 1.0),
    NetConfig("sigmoid, Glorot init", "sigmoid", "glorot"),
    NetConfig("tanh, Glorot init", "tanh", "glorot"),
    NetConfig("relu, He init", "relu", "he"),
    NetConfig("relu, He, residual", "relu", "he", residual=True),
    NetConfig("relu, He/sqrt(depth), residual", "relu", "he", depth_scaled=True,
              residual=True),
    NetConfig("sigmoid, normal(1), batch norm", "sigmoid", "normal", 1.0, batch_norm=True),
)

#: The exploding-gradient experiment: the same MLP shape, relu, He init with gain 1.5.
EXPLODING_CONFIGS: tuple[NetConfig, ...] = (
    NetConfig("He x1.5, lr 0.05", "relu", "he", 1.5, learning_rate=0.05),
    NetConfig("He x1.5, lr 0.05, clip 1.0", "relu", "he", 1.5, learning_rate=0.05,
              clip_norm=1.0),
    NetConfig("He x1.5, lr 1e-4", "relu", "he", 1.5, learning_rate=1e-4),
    NetConfig("He x1, lr 0.05", "relu", "he", 1.0, learning_rate=0.05),
)


@dataclasses.dataclass
class RunResult:
    """What :func:`run_config` measured.

    Attributes:
        config: the :class:`NetConfig`.
        settings: depth, width, steps, batch size, seed, probe size.
        init: :func:`layer_stats` (plus ``saturation`` and ``loss``) on the fixed probe
            batch before training, as NumPy arrays.
        final: the same after training.
        init_flags: :func:`diagnose` of ``init``.
        final_flags: :func:`diagnose` of ``final``.
        history: per-step minibatch statistics with ``loss`` and ``finite``.
        first_nonfinite: the first step whose loss or gradient was not finite, or
            ``None``. Steps are plain SGD steps: nothing is skipped.
    """

    config: NetConfig
    settings: dict[str, Any]
    init: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    init_flags: Diagnosis
    final_flags: Diagnosis
    history: History
    first_nonfinite: int | None

    @staticmethod
    def _ratio(stats: Mapping[str, np.ndarray]) -> float:
        g = stats["grad_norm"]
        return float(g[0] / g[-1]) if g[-1] != 0 else float("nan")

    @property
    def init_ratio(self) -> float:
        """First layer's gradient norm over the last layer's, before training."""
        return self._ratio(self.init)

    @property
    def final_ratio(self) -> float:
        """First layer's gradient norm over the last layer's, after training."""
        return self._ratio(self.final)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (non-finite numbers become ``None``)."""
        return {
            "config": dataclasses.asdict(self.config),
            "settings": self.settings,
            "first_to_last_ratio": {"init": to_jsonable(self.init_ratio),
                                    "final": to_jsonable(self.final_ratio)},
            "init": {k: to_jsonable(v) for k, v in self.init.items()},
            "final": {k: to_jsonable(v) for k, v in self.final.items()},
            "flags": {"init": self.init_flags.to_dict(), "final": self.final_flags.to_dict()},
            "first_nonfinite_step": self.first_nonfinite,
            # per step: the per-layer norms and the loss (the other statistics are kept for
            # the probe batch above, which keeps the file small)
            "history": {k: v for k, v in self.history.to_dict().items()
                        if k in ("steps", "grad_norm", "loss", "finite")},
        }


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' training split, standardised as ``funcgrad train`` does."""
    ds = _data.digits(seed=0)
    mu, sd = ds.x_train.mean(axis=0), ds.x_train.std(axis=0) + 0.1
    return ((ds.x_train - mu) / sd).astype(np.float32), ds.y_train.astype(np.int32)


@functools.cache
def _programs(activation: str, residual: bool, clipped: bool) -> tuple[Callable, Callable]:
    """Two jitted programs: probe statistics, and ``k`` plain SGD steps in one scan.

    Cached on the structure only: the learning rate, clip threshold and init are values
    (``inject_hyperparams`` leaves), so configurations differing only there share them,
    and the probe program is compiled once for the measurements before and after.
    """
    import optax

    def apply_fn(p: Any, x: jax.Array) -> jax.Array:
        return nn.mlp(p, x, activation=activation, residual=residual)

    loss_fn = train.classification_loss(apply_fn)
    tx = train.optimizer(0.1, clip_norm=1.0 if clipped else None)

    def grads_at(p: Any, batch: Any) -> tuple[jax.Array, Any]:
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        return loss, g

    def probe_stats(p: Any, opt: Any, probe: Any) -> dict[str, jax.Array]:
        loss, g = grads_at(p, probe)
        updates, _ = tx.update(g, opt, p)
        stats = layer_stats(g, p, updates)
        stats["saturation"] = saturation(apply_fn, p, probe[0])
        stats["loss"] = loss
        return stats

    def steps(params: Any, opt: Any, x: jax.Array, y: jax.Array, rows: jax.Array
              ) -> tuple[Any, Any, dict[str, jax.Array]]:
        ones = jnp.ones(rows.shape[1], jnp.float32)

        def body(carry: Any, idx: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
            p, o = carry
            loss, g = grads_at(p, (x[idx], y[idx], ones))
            updates, o = tx.update(g, o, p)
            stats = layer_stats(g)
            stats["loss"] = loss
            stats["finite"] = jnp.isfinite(loss) & jnp.all(jnp.isfinite(stats["grad_norm"]))
            return (optax.apply_updates(p, updates), o), stats

        (p, o), per_step = jax.lax.scan(body, (params, opt), rows)
        return p, o, per_step

    return jax.jit(probe_stats), jax.jit(steps)


def run_config(
    config: NetConfig,
    *,
    depth: int = 20,
    width: int = 32,
    steps: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    probe_size: int = 512,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> RunResult:
    """Train one configuration with plain SGD and measure its gradient flow.

    The MLP has ``depth`` dense layers (``depth - 1`` hidden layers of ``width`` units).
    Minibatches are drawn with replacement from ``data`` by a fixed key; statistics are
    measured on a fixed probe batch (the first ``probe_size`` examples) before and after
    ``steps`` steps, and on every minibatch during training (kept in a :class:`History`).
    Steps are never skipped, so a run that diverges shows its first non-finite step.

    Args:
        config: the network and optimizer.
        depth: number of dense layers, >= 2.
        width: hidden width.
        steps: SGD steps.
        batch_size: minibatch size.
        seed: seed of the init and of the minibatch draw.
        probe_size: examples in the probe batch.
        data: ``(x, y)``; default the standardised digits' training split.

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: if a size or count is not an int of at least its minimum.
    """
    for arg, value, low in (("depth", depth, 2), ("width", width, 1), ("steps", steps, 1),
                            ("batch_size", batch_size, 1), ("probe_size", probe_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"run_config: argument {arg!r} must be an int >= {low}; got "
                             f"{value!r}")
    x, y = _digits() if data is None else (np.asarray(data[0], np.float32),
                                           np.asarray(data[1], np.int32))
    sizes = [x.shape[1]] + [width] * (depth - 1) + [int(y.max()) + 1]
    scale = config.scale / math.sqrt(depth) if config.depth_scaled else config.scale
    key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
    params = nn.init_mlp(key_init, sizes, activation=config.activation, init=config.init,
                         scale=scale, batch_norm=config.batch_norm)
    tx = train.optimizer(config.learning_rate, clip_norm=config.clip_norm)
    opt = tx.init(params)
    rows = jax.random.randint(key_data, (steps, batch_size), 0, len(x))
    n = min(probe_size, len(x))
    probe = (x[:n], y[:n], np.ones(n, np.float32))
    probe_fn, steps_fn = _programs(config.activation, config.residual,
                                   config.clip_norm is not None)
    init = probe_fn(params, opt, probe)
    trained, opt, per_step = steps_fn(params, opt, x, y, rows)
    final = probe_fn(trained, opt, probe)
    history = History(log_every=steps)
    history.append(per_step, steps=range(steps))
    init, final = jax.device_get((init, final))
    init = {k: np.asarray(v) for k, v in init.items()}
    final = {k: np.asarray(v) for k, v in final.items()}
    finite = history.array("finite")
    bad = np.nonzero(~finite)[0]
    settings = {"depth": depth, "width": width, "steps": steps, "batch_size": batch_size,
                "seed": seed, "probe_size": n, "optimizer": "plain SGD (momentum 0)",
                "init_scale": scale}
    return RunResult(config, settings, init, final, diagnose(init), diagnose(final),
                     history, int(history.steps[bad[0]]) if bad.size else None)


def vanishing_experiment(configs: Sequence[NetConfig] = VANISHING_CONFIGS,
                         **kwargs: Any) -> list[RunResult]:
    """The lesson's vanishing-gradient experiment: one :func:`run_config` per network.

    Expected (fixed seeds, default sizes): the sigmoid network is flagged vanishing in
    its early layers; relu/He, the depth-scaled residual and the batch-norm networks are
    not flagged. The plain He-init residual network is not vanishing but exploding: its
    branches double the signal's variance per block (see ``docs/gradient_flow.md``).

    Args:
        configs: the networks.
        **kwargs: passed to :func:`run_config` (``depth``, ``width``, ``steps``, ...).

    Returns:
        One :class:`RunResult` per configuration.
    """
    return [run_config(c, **kwargs) for c in configs]


def exploding_experiment(configs: Sequence[NetConfig] = EXPLODING_CONFIGS,
                         **kwargs: Any) -> list[RunResult]:
    """The lesson's exploding-gradient experiment and its three cures.

    Expected: with a large init gain and no clipping the loss stops being finite within a
    few steps; ``clip_by_global_norm``, a lower learning rate or a proper (He x1) init keep
    it finite and falling.

    Args:
        configs: the settings.
        **kwargs: passed to :func:`run_config`.

    Returns:
        One :class:`RunResult` per configuration.
    """
    return [run_config(c, **kwargs) for c in configs]


def _num(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.2g}" if abs(v) < 1e4 and abs(v) >= 0.1 \
        else f"{v:.1e}"


def _after(r: RunResult) -> str:
    """Flags after training; a run that diverged shows that instead (its flags would only
    describe NaN parameters)."""
    return "diverged (NaN)" if r.first_nonfinite is not None else r.final_flags.short()


def _sat(stats: Mapping[str, np.ndarray]) -> str:
    s = stats.get("saturation")
    return "-" if s is None or s.size == 0 else f"{100 * float(np.mean(s)):.0f}%"


def format_vanishing_table(results: Sequence[RunResult]) -> str:
    """The vanishing experiment's table: first/last gradient ratio, flags, saturation.

    Args:
        results: from :func:`vanishing_experiment`.

    Returns:
        A plain-text table.
    """
    if not results:
        return "(no results)"
    n = results[0].settings["steps"]
    rows = [[r.config.name, _num(r.init_ratio), r.init_flags.short(), _sat(r.init),
             _num(r.final_ratio), _after(r), _sat(r.final),
             f"{_num(float(r.init['loss']))} -> {_num(float(r.final['loss']))}",
             "-" if r.first_nonfinite is None else str(r.first_nonfinite)]
            for r in results]
    return text_table(rows, ["network", "g0/gL init", "flags init", "sat init",
                         f"g0/gL {n}", f"flags after {n}", f"sat {n}", "probe loss",
                         "non-finite at"])


def format_exploding_table(results: Sequence[RunResult]) -> str:
    """The exploding experiment's table: loss, gradient norm, first non-finite step.

    Args:
        results: from :func:`exploding_experiment`.

    Returns:
        A plain-text table.
    """
    if not results:
        return "(no results)"
    n = results[0].settings["steps"]
    rows = []
    for r in results:
        loss = r.history.array("loss").astype(np.float64)
        tail = loss[-min(20, len(loss)):]
        rows.append([r.config.name, _num(float(r.init["loss"])),
                     _num(float(np.max(r.init["grad_norm"]))),
                     "-" if r.first_nonfinite is None else str(r.first_nonfinite),
                     _num(float(np.mean(tail))), _num(float(r.final["loss"])),
                     r.init_flags.short(), _after(r)])
    return text_table(rows, ["run", "loss step 0", "max layer |g| step 0", "non-finite at",
                         f"loss last 20 of {n}", "probe loss after", "flags step 0",
                         f"flags after {n}"])
