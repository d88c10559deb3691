"""Gradient flow: per-layer gradient statistics, vanishing/exploding/dead flags, plots.

The lesson names the two ways deep training fails (vanishing and exploding gradients) and
says how to check: *plot gradient magnitudes across layers during training*. This package
makes the check one call inside ``jit``. It is a diagnostic: it imports no training code
(the lesson's experiments, which train networks, live in :mod:`funcgrad.experiments`).

* :mod:`~funcgrad.flow.stats` -- :func:`layer_stats` (per layer: gradient norm, mean and
  max ``|g|``, fraction of exact zeros, ``‖update‖ / ‖param‖``; pure JAX, works inside
  ``jit`` and ``lax.scan``) and :func:`layer_squares`, the per-layer reduction that
  ``funcgrad.train``'s metrics use too.
* :mod:`~funcgrad.flow.diagnose` -- :func:`diagnose` flags each layer ``vanishing``,
  ``exploding`` or ``dead`` (thresholds documented there and in
  ``docs/gradient_flow.md``).
* :mod:`~funcgrad.flow.saturation` -- :func:`saturation` / :func:`capture`: the fraction
  of saturated sigmoid and tanh units of any function built from funcgrad primitives.
* :mod:`~funcgrad.flow.history` -- :class:`History`, the device-to-host buffer:
  statistics stay on the device and are fetched every ``log_every`` steps;
  :func:`funcgrad.train.fit` takes one (``flow=``).
* :mod:`~funcgrad.flow.plots` -- :func:`plot`: PNG heatmap of gradient norm per layer
  over training, and the lesson's plot across the layers at chosen steps.
* :mod:`~funcgrad.flow.taps` -- :func:`tap_grad` (``funcgrad.tap_grad``): the gradient
  reaching every primitive call (``dL/dnode``) as pure JAX inside ``jit``, ``vmap`` and
  ``lax.scan``; :func:`tapped_value_and_grad` gives a training step its taps and its
  activations' saturation and dead units from the same forward and backward pass.
* :func:`find_nonfinite` (from :mod:`funcgrad.explain`) names the first primitive whose
  value or gradient stops being finite.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcgrad as fg
    >>> params = fg.nn.init_mlp(jax.random.PRNGKey(0), [4, 8, 8, 3], activation="sigmoid")
    >>> x, y = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)
    >>> loss = lambda p: fg.mean(fg.softmax_cross_entropy(
    ...     fg.nn.mlp(p, x, activation="sigmoid"), y))
    >>> stats = jax.jit(lambda p: layer_stats(jax.grad(loss)(p), p))(params)
    >>> stats["grad_norm"].shape
    (3,)
    >>> print(diagnose(stats))
    no flags (3 layers)
"""

from __future__ import annotations

from ..explain.nonfinite import NonFinite, find_nonfinite
from .diagnose import DEFAULT_THRESHOLDS, FLAGS, Diagnosis, diagnose
from .history import History, to_jsonable
from .plots import plot
from .saturation import (
    SATURATING_OPS,
    Captured,
    capture,
    saturated_fraction,
    saturation,
    saturation_from,
)
from .stats import layer_names, layer_norms, layer_squares, layer_stats
from .taps import Tap, activation_stats, tap_grad, tapped_value_and_grad

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FLAGS",
    "SATURATING_OPS",
    "Tap",
    "activation_stats",
    "Captured",
    "Diagnosis",
    "History",
    "NonFinite",
    "capture",
    "diagnose",
    "find_nonfinite",
    "layer_names",
    "layer_norms",
    "layer_squares",
    "layer_stats",
    "plot",
    "saturated_fraction",
    "saturation",
    "saturation_from",
    "tap_grad",
    "tapped_value_and_grad",
    "to_jsonable",
]
