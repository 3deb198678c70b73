"""Divergence of finite iterates: the overflow scale of a dtype and the geometric-growth
rule of :func:`bilevel.methods.run_method` (:class:`GrowthMonitor`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bilevel.tree import PyTree, tree_leaves

__all__ = ["GROWTH_FACTOR", "GROWTH_SCALE", "GROWTH_WINDOW", "GrowthMonitor", "max_abs"]


#: Geometric-growth divergence rule of :func:`run_method` (see :class:`GrowthMonitor`).
GROWTH_FACTOR = 1.2
GROWTH_WINDOW = 30
GROWTH_SCALE = 1e6


def _overflow_scale(dtype: torch.dtype) -> float:
    """``sqrt(finfo(dtype).max)``: beyond it, squares (norms, quadratic objectives) of the
    value are not representable in ``dtype`` (1.3e154 in float64, 1.8e19 in float32).
    Half-precision types (float16: 256) are exempt (``inf``): legitimate iterates exceed
    that scale, and their overflow shows up as non-finite values anyway."""
    info = torch.finfo(dtype)
    if info.bits <= 16:
        return math.inf
    return math.sqrt(info.max)


def max_abs(tree: PyTree) -> tuple[float, float]:
    """``(max |entry|, the smallest overflow scale of the dtypes present)`` over the
    floating-point leaves of ``tree``."""
    largest, scale = 0.0, math.inf
    for leaf in tree_leaves(tree):
        if not (isinstance(leaf, torch.Tensor) and leaf.numel()):
            continue
        if leaf.is_floating_point() or leaf.is_complex():
            largest = max(largest, float(leaf.detach().abs().max()))
            scale = min(scale, _overflow_scale(leaf.dtype))
    return largest, scale


@dataclass
class GrowthMonitor:
    """Divergence of finite iterates: ``a_k = max |entry of (x_k, y_k)|`` is reported as
    diverged at iteration ``k`` when

    * ``a_k > sqrt(finfo(dtype).max)`` (the overflow scale: squared norms and quadratic
      objectives of the iterate are no longer finite), or
    * it grew geometrically: ``a_j > GROWTH_FACTOR * a_(j-1)`` (1.2) at each of the last
      ``GROWTH_WINDOW`` (30) iterations and ``a_k > GROWTH_SCALE * (1 + a_0)`` (1e6 times
      the initial scale).

    A run converging to a limit, however far from the start, cannot grow by a fixed factor
    at every one of 30 consecutive iterations (polynomial growth ``k^d`` has ratios
    ``((k+1)/k)^d`` below 1.2 after ``k ~ 5 d``); an unstable iteration (step size too
    large) grows like ``rho^k`` and is caught as soon as it leaves the initial scale.
    """

    initial: float
    previous: float = field(init=False)
    streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.previous = self.initial

    def check(self, iteration: int, x: PyTree, y: PyTree) -> str | None:
        """The divergence message for the new iterate, or ``None``."""
        current, overflow = max_abs((x, y))
        grew = current > GROWTH_FACTOR * self.previous
        self.streak = self.streak + 1 if grew else 0
        self.previous = current
        if current > overflow:
            return (
                f"the iterates grew to |(x, y)|_inf = {current:.3e} at iteration {iteration}, "
                f"beyond the overflow scale {overflow:.3e} of their dtype (their squares are "
                "non-finite); step sizes too large?"
            )
        if self.streak >= GROWTH_WINDOW and current > GROWTH_SCALE * (1.0 + self.initial):
            return (
                f"the iterates grew geometrically (by at least {GROWTH_FACTOR:g}x at each of "
                f"the last {self.streak} iterations) to |(x, y)|_inf = {current:.3e} at "
                f"iteration {iteration}, over {GROWTH_SCALE:.0e} times the initial scale "
                f"1 + {self.initial:.3e}: diverging to non-finite values (step sizes too "
                "large?)"
            )
        return None
