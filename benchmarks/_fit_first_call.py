"""One first call in a fresh process, for section 5 of ``benchmarks/training.py``.

``python benchmarks/_fit_first_call.py CACHE_DIR [fit|fused|plain]`` turns on the
persistent compilation cache in ``CACHE_DIR`` (:func:`funcgrad.enable_compilation_cache`,
the API's opt-in), runs 3,000 steps of the 64-128-128-10 MLP at batch 128 once and prints
the seconds per step of that first call, tracing, lowering and compiling (or loading from
the cache) included. Run twice with one directory: the first run fills the cache, the
second is the warm first call.

* ``fit`` (the default): the 3,000-step ``fit`` of ``_training_fit.fit_vs_step``;
* ``fused``: ``train.make_fused_steps`` (K = 100) over device batches, 30 calls;
* ``plain``: the plain JAX/optax step (``jax.nn``-style loss, ``clip_by_global_norm`` and
  SGD, no metrics) as one jitted ``lax.scan`` of 100 steps, 30 calls.

The two references show the floor that JAX's per-process tracing, lowering and cache
loading put under any first call of this size.
"""

from __future__ import annotations

import sys
import time

import jax
import optax
from _timing import CLIP, LR, fresh, make_batches, plain_step
from _training_fit import _data

import funcgrad
from funcgrad import nn, train

SIZES, BATCH, PER_EPOCH, EPOCHS = (64, 128, 128, 10), 128, 12, 250
K = 100  # steps per call of the two references


def _fit(params) -> float:
    tx = train.optimizer(LR, clip_norm=CLIP)
    x, y = _data(SIZES, BATCH * PER_EPOCH)
    t0 = time.perf_counter()
    r = train.fit(params, (x, y), apply_fn=nn.mlp, tx=tx, batch_size=BATCH, epochs=EPOCHS,
                  log_every=50)
    jax.block_until_ready(r.state)
    assert int(r.state.step) == EPOCHS * PER_EPOCH
    return time.perf_counter() - t0


def _scan(params, which: str) -> float:
    data = jax.device_put(make_batches(SIZES, BATCH, K))
    if which == "fused":
        tx = train.optimizer(LR, clip_norm=CLIP)
        step = train.make_fused_steps(train.classification_loss(nn.mlp), tx)
        state = train.init_state(fresh(params), tx)
    else:
        tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(LR))
        one = plain_step(tx)
        step = jax.jit(lambda s, d: jax.lax.scan(one, s, d), donate_argnums=0)
        state = (fresh(params), tx.init(params))
    jax.block_until_ready((state, data))
    t0 = time.perf_counter()
    for _ in range(EPOCHS * PER_EPOCH // K):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    return time.perf_counter() - t0


def main(cache_dir: str, which: str = "fit") -> float:
    funcgrad.enable_compilation_cache(cache_dir)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    jax.block_until_ready(params)
    seconds = _fit(params) if which == "fit" else _scan(params, which)
    return seconds / (EPOCHS * PER_EPOCH)


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
