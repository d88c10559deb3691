"""``funcgrad train --epochs 300 --batch-size 128 --hidden 128 --depth 2`` in PyTorch eager.

Section 5 of ``benchmarks/training.py`` runs this script in a subprocess and times it from
outside, as it times ``funcgrad train``: Python start, ``import torch``, the digits data,
3,600 steps and the final evaluation. The run mirrors the command line's defaults: the
bundled digits split (``funcgrad.data.digits``, NumPy only), features standardised with
the training set's mean and standard deviation, a 64-128-128-10 ReLU MLP with He-normal
weights and zero biases, SGD with learning rate 0.05 and momentum 0.9 after
``clip_grad_norm_(1.0)``, batch 128 (the last batch of an epoch holds the rest), the
examples reshuffled every epoch, and the held-out set evaluated after every epoch.
torch uses ``$TORCH_THREADS`` threads, default as many as there are cores (as XLA does).

Run ``python benchmarks/_torch_train.py`` (prints the steps and the final test accuracy).
"""

from __future__ import annotations

import os

import torch

from funcgrad.data import digits

EPOCHS, BATCH, HIDDEN, LR, MOMENTUM, CLIP = 300, 128, 128, 0.05, 0.9, 1.0


def main() -> tuple[int, float]:
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS",
                                             len(os.sched_getaffinity(0)))))
    torch.manual_seed(0)
    ds = digits()
    mean, std = ds.x_train.mean(0), ds.x_train.std(0) + 1e-8
    x = torch.from_numpy((ds.x_train - mean) / std).float()
    y = torch.from_numpy(ds.y_train).long()
    xt = torch.from_numpy((ds.x_test - mean) / std).float()
    yt = torch.from_numpy(ds.y_test).long()
    sizes = (x.shape[1], HIDDEN, HIDDEN, int(y.max()) + 1)
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = torch.nn.Linear(n_in, n_out)
        torch.nn.init.normal_(lin.weight, std=(2.0 / n_in) ** 0.5)
        torch.nn.init.zeros_(lin.bias)
        layers += [lin, torch.nn.ReLU()] if i < len(sizes) - 2 else [lin]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    steps, accuracy = 0, 0.0
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            steps += 1
        with torch.no_grad():
            accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return steps, accuracy


if __name__ == "__main__":
    steps, accuracy = main()
    print(f"steps {steps} test accuracy {accuracy:.4f}")
