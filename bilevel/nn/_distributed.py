"""Averaging over ``torch.distributed`` ranks for the hypergradient engine.

Each rank evaluates the losses on its own shard of the batch. The global losses are the
means of the local ones (equal shard sizes), and every quantity the hypergradient combines
is linear in the loss, so averaging the local gradients, the local products ``H v`` inside
the linear solve and the local ``B u`` gives the hypergradient of the global losses. The
solver then sees identical numbers on every rank and takes identical decisions (stopping
tests), so all ranks return the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bilevel.linalg import LinearSolveInfo

Group = Any  # None: not distributed; otherwise a process group (or dist.group.WORLD)
_WORLD = object()


def resolve(option: Any) -> Group:
    """``None``: the default group when ``torch.distributed`` runs more than one process;
    ``False``: none; a process group: that group."""
    if option is False:
        return None
    if option is None or option is True:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return _WORLD
        if option is True:
            raise RuntimeError("distributed=True but torch.distributed is not initialised")
        return None
    return option


def _group(group: Group) -> Any:
    return None if group is _WORLD else group


def mean(tree: dict[str, Tensor], group: Group) -> dict[str, Tensor]:
    """Average every tensor of ``tree`` over the ranks of ``group`` (one all-reduce)."""
    if group is None or not tree:
        return tree
    names = list(tree)
    flat = torch.cat([tree[n].detach().reshape(-1) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=_group(group))
    flat /= dist.get_world_size(_group(group))
    out, offset = {}, 0
    for n in names:
        size = tree[n].numel()
        out[n] = flat[offset : offset + size].view_as(tree[n])
        offset += size
    return out


def mean_differentiable(tree: dict[str, Tensor], group: Group) -> dict[str, Tensor]:
    """:func:`mean` that autograd differentiates (its backward all-reduces the cotangents),
    for reductions inside a differentiated unroll."""
    if group is None or not tree:
        return tree
    from torch.distributed.nn.functional import all_reduce

    world = dist.get_world_size(_group(group))
    return {
        k: all_reduce(v, op=dist.ReduceOp.SUM, group=_group(group) or dist.group.WORLD) / world
        for k, v in tree.items()
    }


def mean_scalar(value: Tensor, group: Group) -> Tensor:
    """Average a scalar over the ranks."""
    if group is None:
        return value
    return mean({"v": value.reshape(1)}, group)["v"].reshape(())


def reducing_solver(
    solve: Callable[..., tuple[Any, LinearSolveInfo]], group: Group, record: list[LinearSolveInfo]
) -> Callable[..., tuple[Any, LinearSolveInfo]]:
    """``solve`` with its matrix-vector products averaged over ranks; appends the solve's
    info to ``record``."""

    def reduced(matvec: Callable[[Any], Any], b: Any, **kwargs: Any) -> tuple[Any, LinearSolveInfo]:
        mv = matvec if group is None else (lambda v: mean(matvec(v), group))
        x, info = solve(mv, b, **kwargs)
        record.append(info)
        return x, info

    return reduced
