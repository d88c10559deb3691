"""Timing helpers and reference steps shared by the sections of ``benchmarks/training.py``.

Paired, interleaved repetitions (:func:`interleave`, :func:`paired`), summaries, batches,
XLA cost analysis, the PyTorch reference trainer of the small-model section and the plain
JAX step (``jax.nn``, optax) of the large-model section.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

LR, CLIP = 0.01, 1.0

def n_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1



def summary(values):
    q = np.percentile(values, [25, 75])
    return {"median": statistics.median(values), "q25": float(q[0]), "q75": float(q[1]),
            "min": min(values), "max": max(values), "all": list(values)}


def interleave(variants, reps):
    """Run ``variants`` (name -> ``fn() -> steps done``) ``reps`` times in rotating order.

    Returns name -> list of seconds per step, one entry per repetition.
    """
    names = list(variants)
    out = {k: [] for k in names}
    for r in range(reps):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            steps = variants[k]()
            out[k].append((time.perf_counter() - t0) / steps)
    return out


def paired(times, num, den):
    """Per-repetition ratio ``times[den] / times[num]``: how many times faster ``num`` is."""
    return [d / n for n, d in zip(times[num], times[den], strict=True)]


def fresh(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def cost_flops(compiled):
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - cost analysis is optional per backend
        return None


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(n_cores())
    return torch


def make_batches(sizes, batch, k, seed=1):
    """K distinct batches ``(x, y, w)`` as NumPy arrays with a leading K axis."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], (k, batch), dtype=np.int32)
    return x, y, np.ones((k, batch), np.float32)



def torch_model(torch, params):
    layers = []
    for i, p in enumerate(params):
        lin = torch.nn.Linear(*p["w"].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.asarray(p["w"]).T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_trainer(torch, params):
    model = torch_model(torch, params)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss

    return model, step


def jnp_logits(params, x):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def jnp_loss(params, batch):
    x, y, w = batch
    per_example = optax.softmax_cross_entropy_with_integer_labels(jnp_logits(params, x), y)
    return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)


def jnp_classification_loss(params, batch):
    """``jnp_loss`` with the aux that ``train.make_train_step`` expects."""
    x, y, w = batch
    logits = jnp_logits(params, x)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    count = jnp.sum(w)
    correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == y, w, 0.0))
    return jnp.sum(per_example * w) / jnp.maximum(count, 1.0), {"correct": correct,
                                                               "count": count}


def plain_step(tx):
    """The plain JAX/optax step ``((params, opt_state), batch) -> (state, loss)``, unjitted
    (a ``lax.scan`` body as it is)."""
    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(jnp_loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def make_plain_step(tx):
    return jax.jit(plain_step(tx), donate_argnums=0)
