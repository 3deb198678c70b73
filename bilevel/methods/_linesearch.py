"""Adaptive outer step of the deterministic methods (used when their step size is ``None``).

Barzilai-Borwein trial steps safeguarded by a nonmonotone Armijo backtracking (Raydan,
SIAM J. Optim. 1997; the nonmonotone rule of Grippo, Lampariello and Lucidi, SIAM J.
Numer. Anal. 1986). At outer iteration ``k``, with iterate ``w_k``, direction ``d_k`` (the
method's hypergradient estimate) and a merit value ``m_k`` (the method's estimate of the
objective at ``w_k``)::

    a = <s, s> / <s, r>         s = w_k - w_{k-1},  r = d_k - d_{k-1}    (when <s, r> > 0)
    a = 2 a_{k-1}               otherwise;   a_0 = the calibrated 1 / L_h
    a <- clip(a, a_0 1e-6, a_0 1e6)
    while m(w_k - a d_k) > max(m_k, ..., m_{k-M+1}) - c a ||d_k||^2:   a <- a / 2
    w_{k+1} = w_k - a d_k

(with a projection ``P`` onto a feasible set, the trials are ``P(w_k - a d_k)`` and the
decrease term is ``c <d_k, w_k - P(w_k - a d_k)>``)

with ``M = 10`` remembered merits, ``c = 1e-4`` and at most 40 halvings (the last trial is
then taken, and counted in ``failures``). The BB step is the inverse of a secant estimate
of the curvature along the last step, so it adapts to the scale of the problem and,
on ill-conditioned problems, converges much faster than a constant ``1 / L`` step; the
nonmonotone test accepts it whenever the objective does not rise above its recent
maximum, which keeps the iteration globally convergent for smooth objectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bilevel.tree import PyTree, tree_axpy, tree_sub, tree_vdot

MEMORY = 10
ARMIJO = 1e-4
MAX_HALVINGS = 40


@dataclass
class LineSearch:
    """State of the adaptive outer step (kept in ``MethodState.extra["line_search"]``)."""

    initial: float
    step: float | None = None
    merits: list[float] = field(default_factory=list)
    previous: tuple[PyTree, PyTree] | None = None
    trials: int = 0
    failures: int = 0

    def trial_step(self, w: PyTree, d: PyTree) -> float:
        """The Barzilai-Borwein trial step (see the module docstring)."""
        if self.previous is None or self.step is None:
            return self.initial
        s = tree_sub(w, self.previous[0])
        r = tree_sub(d, self.previous[1])
        sr = float(tree_vdot(s, r))
        a = float(tree_vdot(s, s)) / sr if sr > 0 else 2.0 * self.step
        if not math.isfinite(a):
            a = 2.0 * self.step
        return min(max(a, self.initial * 1e-6), self.initial * 1e6)

    def search(
        self,
        w: PyTree,
        d: PyTree,
        merit: float,
        evaluate: Callable[[PyTree], tuple[float, Any]],
        project: Callable[[PyTree], PyTree] | None = None,
    ) -> tuple[PyTree, Any]:
        """``(w_{k+1}, aux)``: ``evaluate(trial) -> (merit, aux)`` is called on each trial
        point, and the ``aux`` of the accepted one is returned."""
        a = self.trial_step(w, d)
        self.merits = (self.merits + [merit])[-MEMORY:]
        reference = max(self.merits)
        for halvings in range(MAX_HALVINGS + 1):
            trial = tree_axpy(-a, d, w)
            if project is not None:
                trial = project(trial)
            value, aux = evaluate(trial)
            self.trials += 1
            decrease = ARMIJO * float(tree_vdot(d, tree_sub(w, trial)))
            if math.isfinite(value) and value <= reference - decrease:
                break
            if halvings == MAX_HALVINGS:
                self.failures += 1
                break
            a *= 0.5
        self.step = a
        self.previous = (w, d)
        return trial, aux
