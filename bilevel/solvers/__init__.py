"""Inner solvers matching the conditions of :mod:`bilevel.optimality`.

Every solver is a dataclass of settings with ``run(init, *args) -> (solution, SolverInfo)``.
The solution is differentiable with respect to ``args`` by implicit differentiation
(``implicit_diff=True``, the default: memory independent of the iteration count) or by
backpropagation through the iterations (``implicit_diff=False``).

==========================  =============================================  =====================
solver                      problem                                        implicit condition
==========================  =============================================  =====================
:class:`GradientDescent`    ``min_x f(x, *args)``                           ``grad f = 0``
:class:`LBFGS`              ``min_x f(x, *args)``                           ``grad f = 0``
:class:`ProjectedGradient`  ``min_{x in C(hp)} f(x, *args)``               projected-gradient fixed point
:class:`ProximalGradient`   ``min_x f(x, *args) + g(x, hp)``               proximal-gradient fixed point
:class:`MirrorDescent`      ``min_{x in simplex} f(x, *args)``             mirror-descent fixed point
:class:`AugmentedLagrangian` ``min f s.t. h = 0, g <= 0``                  KKT conditions
==========================  =============================================  =====================
"""

from __future__ import annotations

from bilevel.solvers._base import IterativeSolver, SolverInfo
from bilevel.solvers.constrained import AugmentedLagrangian
from bilevel.solvers.first_order import (
    LBFGS,
    GradientDescent,
    MirrorDescent,
    ProjectedGradient,
    ProximalGradient,
    proximal_gradient_loop,
)

__all__ = [
    "LBFGS",
    "AugmentedLagrangian",
    "GradientDescent",
    "IterativeSolver",
    "MirrorDescent",
    "ProjectedGradient",
    "ProximalGradient",
    "SolverInfo",
    "proximal_gradient_loop",
]
