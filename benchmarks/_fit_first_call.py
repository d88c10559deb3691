"""One ``fit`` call in a fresh process, for section 5 of ``benchmarks/training.py``.

``python benchmarks/_fit_first_call.py CACHE_DIR`` turns on the persistent compilation
cache in ``CACHE_DIR`` (:func:`funcgrad.enable_compilation_cache`, the API's opt-in), runs
the 3,000-step ``fit`` of ``_training_fit.fit_vs_step`` on the 64-128-128-10 MLP once and
prints the seconds per step of that first call, tracing, lowering and compiling (or
loading from the cache) included. Run twice with one directory: the first run fills the
cache, the second is the warm first call.
"""

from __future__ import annotations

import sys
import time

import jax
from _timing import CLIP, LR
from _training_fit import _data

import funcgrad
from funcgrad import nn, train

SIZES, BATCH, PER_EPOCH, EPOCHS = (64, 128, 128, 10), 128, 12, 250


def main(cache_dir: str) -> float:
    funcgrad.enable_compilation_cache(cache_dir)
    tx = train.optimizer(LR, clip_norm=CLIP)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    jax.block_until_ready(params)
    x, y = _data(SIZES, BATCH * PER_EPOCH)
    t0 = time.perf_counter()
    r = train.fit(params, (x, y), apply_fn=nn.mlp, tx=tx, batch_size=BATCH, epochs=EPOCHS,
                  log_every=50)
    jax.block_until_ready(r.state)
    seconds = time.perf_counter() - t0
    assert int(r.state.step) == EPOCHS * PER_EPOCH
    return seconds / (EPOCHS * PER_EPOCH)


if __name__ == "__main__":
    print(main(sys.argv[1]))
