"""Checkpoints of :func:`bilevel.methods.run_method`: the method state (without its
context, see :meth:`Method.prepare <bilevel.methods.Method.prepare>`), the history, the
iteration, the elapsed time, the escape count and the global torch RNG state, written
atomically."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from bilevel.methods._base import MethodState

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restores."""

    state: MethodState
    history: dict[str, list[float]]
    iteration: int
    elapsed: float
    escapes: int
    rng: torch.Tensor


def save_checkpoint(
    path: str | os.PathLike[str],
    state: MethodState,
    history: dict[str, list[float]],
    iteration: int,
    elapsed: float,
    escapes: int = 0,
) -> None:
    """Write atomically (temporary file + rename) so an interrupted save never corrupts it."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(
        {
            "state": state,
            "history": history,
            "iteration": iteration,
            "elapsed": elapsed,
            "rng": torch.get_rng_state(),
            "escapes": escapes,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str], columns: tuple[str, ...]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; history ``columns`` that an
    older checkpoint lacks are filled with NaN (``lower_kkt_residual``, which replaced
    ``lower_grad_norm`` for constrained lower levels, and ``residual``)."""
    saved: dict[str, Any] = torch.load(path, weights_only=False)
    history = saved["history"]
    length = len(history.get("iteration", []))
    if "lower_kkt_residual" in columns and "lower_grad_norm" in history:
        # written before constrained lower levels recorded their KKT residual: its
        # gradient norms meant nothing there, the resumed column is NaN
        history.pop("lower_grad_norm")
    for key in columns:
        history.setdefault(key, [math.nan] * length)
    return Checkpoint(
        state=saved["state"],
        history=history,
        iteration=saved["iteration"],
        elapsed=saved["elapsed"],
        escapes=saved.get("escapes", 0),
        rng=saved["rng"],
    )
