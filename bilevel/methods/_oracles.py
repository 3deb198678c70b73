"""Oracles shared by the outer algorithms: the autograd oracles of
:mod:`bilevel.hypergrad._oracles` and the batch streams kept in ``MethodState.extra``."""

from __future__ import annotations

from typing import Any

from bilevel.hypergrad._oracles import (
    Linearisation,
    grad,
    lower_grad,
    lower_oracles,
    track,
    upper_grads,
)
from bilevel.methods._base import MethodState
from bilevel.methods._streams import BatchStream
from bilevel.problem import BilevelProblem
from bilevel.tree import PyTree

Batch = Any

__all__ = [
    "Batch",
    "Linearisation",
    "batch_streams",
    "grad",
    "init_with_streams",
    "lower_grad",
    "lower_oracles",
    "next_batches",
    "track",
    "upper_grads",
]


def batch_streams(problem: BilevelProblem, state: MethodState) -> tuple[BatchStream, BatchStream]:
    """The ``(upper, lower)`` batch streams of ``state``, created or re-attached if needed."""
    streams = state.extra.setdefault("streams", {})
    for level in ("upper", "lower"):
        stream = streams.get(level)
        if stream is None:
            streams[level] = BatchStream.for_problem(problem, level)
        elif not stream.attached:  # a state unpickled outside run_method
            stream.attach(getattr(problem, f"{level}_data"))
    return streams["upper"], streams["lower"]


def init_with_streams(problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
    state = MethodState(x=x0, y=y0)
    batch_streams(problem, state)
    return state


def next_batches(problem: BilevelProblem, state: MethodState) -> tuple[Batch, Batch]:
    """The next ``(upper, lower)`` minibatches (``None`` for a deterministic level)."""
    upper, lower = batch_streams(problem, state)
    return upper.next(), lower.next()
