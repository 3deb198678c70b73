"""Implementation of :mod:`bilevel.problem`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.tree import PyTree

Objective = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class BilevelProblem:
    """``min_x F(x, y*(x))`` subject to ``y*(x) = argmin_y f(x, y)``.

    Parameters
    ----------
    upper:
        ``F(x, y) -> 0-d tensor`` (``F(x, y, batch)`` when ``upper_data`` is given).
    lower:
        ``f(x, y) -> 0-d tensor`` (``f(x, y, batch)`` when ``lower_data`` is given); the
        hypergradient formulas assume ``f(x, .)`` is (locally) strongly convex.
    upper_data, lower_data:
        Optional iterables of minibatches for stochastic methods; deterministic methods
        call the objectives without a batch argument when these are ``None``.

    Notes
    -----
    Both objectives receive ``x`` and ``y`` explicitly (no closed-over tensors that need
    gradients), so every estimator in :mod:`bilevel.hypergrad` can differentiate them with
    :mod:`torch.func`.
    """

    upper: Objective
    lower: Objective
    upper_data: Any = None
    lower_data: Any = None

    def __post_init__(self) -> None:
        for name in ("upper", "lower"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"BilevelProblem.{name} must be callable, got {getattr(self, name)!r}"
                )

    def upper_value(self, x: PyTree, y: PyTree, batch: Any = None) -> torch.Tensor:
        """``F(x, y[, batch])`` with a check that the value is a finite scalar."""
        return _scalar("upper", self.upper(x, y) if batch is None else self.upper(x, y, batch))

    def lower_value(self, x: PyTree, y: PyTree, batch: Any = None) -> torch.Tensor:
        """``f(x, y[, batch])`` with a check that the value is a scalar."""
        return _scalar("lower", self.lower(x, y) if batch is None else self.lower(x, y, batch))


def _scalar(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the {name} objective must return a scalar tensor, got {shape}")
    return value.reshape(())


@dataclass
class BilevelResult:
    """Outcome of :func:`bilevel.solve`.

    Attributes
    ----------
    x, y:
        Final outer and inner variables.
    status:
        ``"converged"``, ``"max_iterations"`` or ``"diverged"``.
    message:
        Human-readable explanation.
    n_iter:
        Outer iterations performed.
    history:
        One list per recorded quantity, one entry per recorded iteration: ``iteration``,
        ``upper_value``, ``hypergrad_norm``, ``lower_grad_norm`` (a lower-level optimality
        gap), ``grad_calls``, ``hvp_calls`` (cumulative oracle counts) and ``time``
        (seconds since the start).
    """

    x: PyTree
    y: PyTree
    status: str
    message: str
    n_iter: int
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """Whether the stopping criterion was met."""
        return self.status == "converged"
