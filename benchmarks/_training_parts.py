"""Pieces of the small- and large-model sections of ``benchmarks/training.py``: the
one-step correctness checks, the compiled programs and the paired ratios they report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _timing import (
    cost_flops,
    fresh,
    jnp_classification_loss,
    make_plain_step,
    n_cores,
    paired,
    summary,
    torch_trainer,
)

from funcgrad import nn, train


def small_checks(step, fused, tx, params, host, singles, stacked, torch, log):
    """Same computation? One step from the same parameters on batch 0: loop, fused, torch."""
    xs, ys = host
    k = len(singles)
    s1, m1 = step(train.init_state(fresh(params), tx), singles[0])
    sf, mf = fused(train.init_state(fresh(params), tx), jax.tree.map(lambda a: a[:1], stacked))
    diff = max(float(jnp.max(jnp.abs(a - b)))
               for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(sf.params),
                               strict=True))
    log(f"check: step-0 loss {float(m1['loss']):.6f} (fused {float(mf['loss'][0]):.6f}), "
        f"grad norm {float(m1['grad_norm']):.4f}; max |params loop - fused| after one step "
        f"{diff:.1e}")
    if torch is None:
        log("torch is not importable: the torch comparison is skipped")
        return m1, diff, None, None, None
    tx_in = [torch.from_numpy(xs[i]) for i in range(k)]
    tx_out = [torch.from_numpy(ys[i].astype(np.int64)) for i in range(k)]
    model, tstep = torch_trainer(torch, params)
    t_loss = float(tstep(tx_in[0], tx_out[0]).detach())
    t_params = [(lin.weight.detach().numpy().T, lin.bias.detach().numpy())
                for lin in model if isinstance(lin, torch.nn.Linear)]
    t_diff = max(max(float(np.max(np.abs(np.asarray(p["w"]) - tw))),
                     float(np.max(np.abs(np.asarray(p["b"]) - tb))))
                 for p, (tw, tb) in zip(s1.params, t_params, strict=True))
    log(f"check: torch step-0 loss {t_loss:.6f}; max |params funcgrad - torch| after one "
        f"step {t_diff:.1e}")
    log(f"torch {torch.__version__}: set_num_threads({n_cores()}), get_num_threads() = "
        f"{torch.get_num_threads()}, interop threads {torch.get_num_interop_threads()}")
    return m1, diff, {"loss": t_loss, "max_abs_param_diff_after_one_step": t_diff}, tx_in, tx_out


def large_programs(tx, params, b, sizes, batch, log):
    """Compiled steps (funcgrad, the jnp model in make_train_step, plain) and their FLOPs."""
    fg_step = train.make_train_step(train.classification_loss(nn.mlp), tx)
    jt_step = train.make_train_step(jnp_classification_loss, tx)
    plain = make_plain_step(tx)
    states = {"funcgrad": train.init_state(fresh(params), tx),
              "jnp_train_step": train.init_state(fresh(params), tx),
              "plain": (fresh(params), tx.init(fresh(params)))}
    fns = {"funcgrad": fg_step.lower(states["funcgrad"], b).compile(),
           "jnp_train_step": jt_step.lower(states["jnp_train_step"], b).compile(),
           "plain": plain.lower(states["plain"], b).compile()}
    flops = {k: cost_flops(c) for k, c in fns.items()}
    textbook = 6.0 * batch * sum(i * o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    for k, f in flops.items():
        log(f"step FLOPs {k:14s}: XLA cost analysis "
            f"{(f or float('nan')) / 1e9:.3f} GFLOP (textbook 6*B*sum(in*out) = "
            f"{textbook / 1e9:.3f}; the first layer needs no input gradient)")
    return states, fns, flops, textbook


def large_ratios(times, gflops, log):
    """The paired ratios of section 3, logged."""
    r = {"fraction_of_peak": summary([s / p for s, p in zip(gflops["funcgrad"],
                                                             gflops["peak"], strict=True)]),
         "plain_fraction_of_peak": summary([s / p for s, p in zip(gflops["plain"],
                                                                   gflops["peak"], strict=True)]),
         "time_over_plain": summary(paired(times, "plain", "funcgrad")),
         "jnp_train_step_over_plain": summary(paired(times, "plain", "jnp_train_step")),
         "funcgrad_over_jnp_train_step": summary(paired(times, "jnp_train_step", "funcgrad")),
         "aa_control_plain_again_over_plain": summary(paired(times, "plain", "plain_again"))}
    frac, t_ratio = r["fraction_of_peak"], r["time_over_plain"]
    t_aa = r["aa_control_plain_again_over_plain"]
    log(f"funcgrad fraction of peak: median of paired ratios {frac['median']:.3f} "
        f"(IQR {frac['q25']:.3f}-{frac['q75']:.3f}); plain "
        f"{r['plain_fraction_of_peak']['median']:.3f} (same FLOP count)")
    log(f"time funcgrad/plain: median of paired ratios {t_ratio['median']:.3f} "
        f"(IQR {t_ratio['q25']:.3f}-{t_ratio['q75']:.3f})")
    log(f"  split: jnp model in make_train_step / plain "
        f"{r['jnp_train_step_over_plain']['median']:.3f} (funcgrad.train's metrics and skip "
        f"logic), funcgrad / jnp in make_train_step "
        f"{r['funcgrad_over_jnp_train_step']['median']:.3f} (the primitives)")
    log(f"  A/A control plain_again/plain: median {t_aa['median']:.3f} (IQR {t_aa['q25']:.3f}-"
        f"{t_aa['q75']:.3f}, min {t_aa['min']:.3f}, max {t_aa['max']:.3f})")
    return r


def small_ratios(times, torch, log):
    """The paired ratios of section 2, logged: fused/loop and, with torch, fused/torch."""
    r_loop = summary(paired(times, "fused", "loop"))
    log(f"fused/loop  steps/s: median of paired ratios {r_loop['median']:.3f} "
        f"(IQR {r_loop['q25']:.3f}-{r_loop['q75']:.3f})")
    r_torch = loop_torch = r_torch1 = None
    if torch is not None:
        r_torch = summary(paired(times, "fused", "torch"))
        loop_torch = summary(paired(times, "loop", "torch"))
        log(f"fused/torch steps/s: median of paired ratios {r_torch['median']:.3f} "
            f"(IQR {r_torch['q25']:.3f}-{r_torch['q75']:.3f})")
        log(f"loop/torch  steps/s: median of paired ratios {loop_torch['median']:.3f} "
            f"(IQR {loop_torch['q25']:.3f}-{loop_torch['q75']:.3f}) (informational)")
        r_torch1 = summary(paired(times, "fused", "torch_1thread"))
        log(f"fused/torch with torch.set_num_threads(1): median of paired ratios "
            f"{r_torch1['median']:.3f} (IQR {r_torch1['q25']:.3f}-{r_torch1['q75']:.3f})")
    return {"fused_over_loop": r_loop, "fused_over_torch": r_torch,
            "loop_over_torch": loop_torch, "fused_over_torch_1thread": r_torch1}
