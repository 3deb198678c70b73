"""Learning per-example weights for noisy labels with bilevel.nn, on one process or many.

    python examples/nn_reweighting.py                         # one process
    torchrun --nproc_per_node 2 examples/nn_reweighting.py    # DDP on 2 processes (gloo on CPU)
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 \
        examples/nn_reweighting.py                            # the same on two machines

The lower level trains an MLP ``theta`` on a weighted loss, the upper level tunes the
weights ``w_i = sigmoid(a_i)`` of the training examples on a small clean validation set::

    min_a  CE_val(theta*(a)),   theta*(a) = argmin_theta 1/n sum_i w_i CE_i(theta) + wd/2 ||theta||^2

Under torchrun each process reads its shard of the data (DistributedSampler), the model is
wrapped in DistributedDataParallel for the inner steps, and bilevel.nn averages its
gradients and Hessian-vector products over the processes, so every process takes the same
hyperparameter step.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import bilevel.nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="outer steps (default 150)")
    steps = parser.parse_args().steps
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    # data: digits, 40% of the training labels replaced by random classes
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    train, val, test = perm[:900], perm[900:1300], perm[1300:]
    noisy_y = y.copy()
    flip = rng.permutation(train)[: int(0.4 * len(train))]
    noisy_y[flip] = rng.integers(0, 10, len(flip))
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    train_set = TensorDataset(t(X[train]), t(noisy_y[train], torch.long), t(np.arange(len(train)), torch.long))
    val_set = TensorDataset(t(X[val]), t(y[val], torch.long))

    def loader(dataset: TensorDataset, batch: int) -> DataLoader:
        sampler = DistributedSampler(dataset, seed=0) if distributed else None
        return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=sampler is None)

    # the model (lower level) and the hyperparameters (upper level)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    if distributed:
        model = DistributedDataParallel(model)
    hparams = {"a": torch.zeros(len(train), device=device, requires_grad=True)}

    def inner_loss(m: nn.Module, h: dict, batch: tuple) -> torch.Tensor:
        xb, yb, ib = batch
        losses = F.cross_entropy(m(xb), yb, reduction="none")
        decay = sum((p * p).sum() for p in m.parameters())  # read from the module: fine
        return (torch.sigmoid(h["a"][ib]) * losses).mean() + 5e-4 * decay

    def outer_loss(m: nn.Module, h: dict, batch: tuple) -> torch.Tensor:
        return F.cross_entropy(m(batch[0]), batch[1])

    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = bilevel.nn.BilevelTrainer(
        model, hparams, inner_loss, outer_loss,
        inner_optimizer=inner_opt,
        outer_optimizer=torch.optim.Adam([hparams["a"]], lr=0.3),
        inner_data=loader(train_set, 128),
        outer_data=loader(val_set, 200),
        hypergradient_data=loader(train_set, 450),   # H and B on larger batches
        inner_steps=3,
        method="neumann",
        method_options={"steps": 20, "alpha": 0.1},
    )
    result = trainer.fit(steps, progress=rank == 0)

    if rank == 0:
        net = model.module if distributed else model
        with torch.no_grad():
            acc = (net(t(X[test])).argmax(1) == t(y[test], torch.long)).float().mean().item()
            w = torch.sigmoid(hparams["a"]).cpu().numpy()
        is_noisy = noisy_y[train] != y[train]
        print(f"test accuracy {acc:.3f} after {result.steps} outer steps; mean weight of "
              f"clean examples {w[~is_noisy].mean():.2f}, of noisy ones {w[is_noisy].mean():.2f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
