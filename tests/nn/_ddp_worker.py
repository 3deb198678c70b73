"""Run by tests/nn/test_nn_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank computes every hypergradient mode on its half of one global batch, then trains
with :class:`bilevel.nn.BilevelTrainer` on a DDP model for 50 outer steps, and saves what it
got to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import bilevel.nn as bnn

N, NV = 64, 32
MODES = {
    "cg": {"tol": 1e-13, "maxiter": 500, "ridge": 0.1},
    "neumann": {"steps": 30, "alpha": 0.5, "ridge": 0.1},
    "fd": {"xi": 0.1},
    "unrolled": {"steps": 3, "optimizer": bnn.optim.SGD(lr=0.1, momentum=0.9)},
    "penalty": {"multiplier": 10.0, "steps": 5, "lr": 0.1},
}


def problem():
    """Data, a pre-trained model and per-example weights, identical on every process."""
    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 5, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    Xv = torch.randn(NV, 5, generator=g)
    yv = (Xv[:, 0] + 0.5 * Xv[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    hp = {"w": (0.3 * torch.randn(N, generator=g)).requires_grad_(True)}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        inner(model, {"w": hp["w"].detach()}, (X, y, torch.arange(N))).backward()
        opt.step()
    return model, hp, (X, y, torch.arange(N)), (Xv, yv)


def inner(m, h, batch):
    xb, yb, ib = batch
    losses = nn.functional.cross_entropy(m(xb), yb, reduction="none")
    return (torch.sigmoid(h["w"][ib]) * losses).mean() + 1e-2 * sum((p**2).sum() for p in m.parameters())


def outer(m, h, batch):
    xb, yb = batch
    return nn.functional.cross_entropy(m(xb), yb)


def shard(batch, rank: int, world: int):
    size = batch[0].shape[0] // world
    return tuple(t[rank * size : (rank + 1) * size] for t in batch)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, hp, train, val = problem()
    result = {}
    for mode, options in MODES.items():
        g = bnn.hypergradient(model, hp, inner, outer, shard(train, rank, world), shard(val, rank, world), method=mode, **options)
        result[mode] = g["w"]

    # 50 outer steps of DDP training on each rank's shard (DistributedSampler)
    ddp = DistributedDataParallel(model)
    trainer = bnn.BilevelTrainer(
        ddp, hp, inner, outer,
        inner_optimizer=torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9),
        outer_optimizer=torch.optim.Adam([hp["w"]], lr=0.05),
        inner_data=DataLoader(TensorDataset(*train), batch_size=16, sampler=DistributedSampler(TensorDataset(*train), seed=1)),
        outer_data=DataLoader(TensorDataset(*val), batch_size=8, sampler=DistributedSampler(TensorDataset(*val), seed=2)),
        inner_steps=2, method="cg", method_options={"maxiter": 20, "ridge": 0.1, "tol": 1e-6},
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = trainer.fit(50).history
    result["params"] = {k: v.detach().clone() for k, v in model.named_parameters()}
    result["w_trained"] = hp["w"].detach().clone()
    result["outer_losses"] = [r["outer_loss"] for r in history]
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
