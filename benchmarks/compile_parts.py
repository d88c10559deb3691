"""What the train step's compile time is made of: the same step with parts added one at a time.

Each variant is a freshly built jitted step (a new closure, so nothing is reused from an
earlier trace; no persistent compilation cache), lowered and compiled; the variants are
interleaved over the repetitions and the median wall and process-CPU times are printed,
with the ratio to the plain JAX/optax step.

* ``plain``: ``x @ w + b``, ``jax.nn.relu``, optax's integer-label cross-entropy,
  ``jax.value_and_grad``, ``optax.chain(clip_by_global_norm(1), sgd(0.01))``.
* ``+inject``: the same with ``train.optimizer(0.01, clip_norm=1.0)`` (``inject_hyperparams``).
* ``+primitives``: funcgrad's loss (``nn.mlp`` and ``classification_loss``) instead.
* ``+guard``: the non-finite guard (``jnp.where`` of params and optimizer state).
* ``train_step``: ``train.make_train_step``: all of the above and the metrics.

``--metrics`` splits the metrics instead (small model, process CPU time): the guarded
step with one metric at a time (``accuracy``, ``clipped_grad_norm``, the per-layer and
global gradient norms, ``update_norm``), all four, and ``make_train_step``.

Target (issue 13): ``train_step`` <= 1.15x ``plain``. Run ``python benchmarks/compile_parts.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from _timing import CLIP, LR, jnp_loss, make_batches

from funcgrad import nn, train


def _step(loss, tx, guard):
    def step(state, batch):
        params, opt_state = state
        value, grads = jax.value_and_grad(lambda p: loss(p, batch))(params)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if guard:
            ok = jnp.isfinite(value) & jnp.isfinite(optax.tree.norm(grads))
            new_params = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_params, params)
            new_opt = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_opt, opt_state)
        return (new_params, new_opt), value
    return jax.jit(step, donate_argnums=0)


def variants(sizes, batch):
    params = nn.init_mlp(jax.random.PRNGKey(0), sizes)
    xs, ys, ws = make_batches(sizes, batch, 1)
    b = jax.device_put((xs[0], ys[0], ws[0]))
    plain_tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(LR))
    tx = train.optimizer(LR, clip_norm=CLIP)
    fg_loss = train.classification_loss(nn.mlp)

    def fg_value(p, batch):
        return fg_loss(p, batch)[0]

    return {
        "plain": (lambda: _step(jnp_loss, plain_tx, False), (params, plain_tx.init(params)), b),
        "+inject": (lambda: _step(jnp_loss, tx, False), (params, tx.init(params)), b),
        "+primitives": (lambda: _step(fg_value, tx, False), (params, tx.init(params)), b),
        "+guard": (lambda: _step(fg_value, tx, True), (params, tx.init(params)), b),
        "train_step": (lambda: train.make_train_step(train.classification_loss(nn.mlp), tx),
                       train.init_state(params, tx), b),
    }


def _metric_step(loss, tx, parts):
    from funcgrad.flow.stats import layer_squares
    from funcgrad.train._optimizer import clipped_grad_norm

    def step(state, batch):
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        squares = layer_squares(grads)
        norm = jnp.sqrt(jnp.sum(squares))
        ok = jnp.isfinite(value) & jnp.isfinite(norm)
        m = {"loss": value}
        if "accuracy" in parts:
            m["accuracy"] = aux["correct"] / jnp.maximum(aux["count"], 1.0)
        if "clipped" in parts:
            m["clipped"] = clipped_grad_norm(tx, grads, state.opt_state, new_opt,
                                             state.params, norm)
        if "norms" in parts:
            m["layers"], m["norm"] = jnp.sqrt(squares), norm
        if "update" in parts:
            m["update"] = jnp.where(ok, jnp.sqrt(jnp.sum(layer_squares(updates))), 0.0)
        keep = lambda n, o: jnp.where(ok, n, o)  # noqa: E731
        return train.TrainState(jax.tree.map(keep, new_params, state.params),
                                jax.tree.map(keep, new_opt, state.opt_state),
                                state.step + 1, state.key,
                                state.skipped + jnp.where(ok, 0, 1).astype(jnp.int32)), m
    return jax.jit(step, donate_argnums=0)


def metric_variants():
    sizes, batch = (64, 128, 128, 10), 128
    params = nn.init_mlp(jax.random.PRNGKey(0), sizes)
    xs, ys, ws = make_batches(sizes, batch, 1)
    b = jax.device_put((xs[0], ys[0], ws[0]))
    tx = train.optimizer(LR, clip_norm=CLIP)
    loss = train.classification_loss(nn.mlp)
    state = train.init_state(params, tx)
    parts = {"guard only": (), "+accuracy": ("accuracy",), "+clipped": ("clipped",),
             "+norms": ("norms",), "+update": ("update",),
             "all four": ("accuracy", "clipped", "norms", "update")}
    out = {k: (lambda p=p: _metric_step(loss, tx, p), state, b) for k, p in parts.items()}
    out["train_step"] = (lambda: train.make_train_step(loss, tx), state, b)
    return {"small metrics": out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--metrics", action="store_true", help="split the metrics' share")
    args = p.parse_args(argv)
    print(f"jax {jax.__version__}, load average {os.getloadavg()[0]:.2f}")
    groups = metric_variants() if args.metrics else {
        name: variants(*shape) for name, shape in (
            ("small", ((64, 128, 128, 10), 128)), ("large", ((784, 1024, 1024, 10), 1024)))}
    for name, vs in groups.items():
        wall = {k: [] for k in vs}
        cpu = {k: [] for k in vs}
        for r in range(args.reps):
            names = list(vs)[r % len(vs):] + list(vs)[:r % len(vs)]
            for k in names:
                build, state, b = vs[k]
                fn = build()
                t0, c0 = time.perf_counter(), time.process_time()
                fn.lower(state, b).compile()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        first = next(iter(vs))
        base_w, base_c = statistics.median(wall[first]), statistics.median(cpu[first])
        for k in vs:
            w, c = statistics.median(wall[k]), statistics.median(cpu[k])
            print(f"{name} {k:12s}: lower+compile median {w:.3f} s wall ({w / base_w:.2f}x "
                  f"{first}), {c:.3f} s CPU ({c / base_c:.2f}x {first})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
