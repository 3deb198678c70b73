"""Optimality conditions: maps that vanish (roots) or are fixed (fixed points) at a solution.

Each factory returns a function to hand to :func:`bilevel.implicit.custom_root` or
:func:`bilevel.implicit.custom_fixed_point`; the matching inner solvers live in
:mod:`bilevel.solvers`.

===================================  ======================================================
condition                            solution of
===================================  ======================================================
:func:`stationarity`                 ``min_x f(x, *args)`` (smooth, unconstrained)
:func:`projected_gradient_fixed_point` ``min_{x in C(hp)} f(x, *args)``
:func:`proximal_gradient_fixed_point`  ``min_x f(x, *args) + g(x, hp)``
:func:`mirror_descent_fixed_point`     ``min_{x in simplex} f(x, *args)``, interior solution
:func:`kkt_conditions`               ``min_x f(x) s.t. h(x) = 0, g(x) <= 0`` (with multipliers)
===================================  ======================================================
"""

from __future__ import annotations

from bilevel.optimality._conditions import (
    apply_with_hyperparams,
    kkt_conditions,
    mirror_descent_fixed_point,
    projected_gradient_fixed_point,
    proximal_gradient_fixed_point,
    stationarity,
)

__all__ = [
    "apply_with_hyperparams",
    "kkt_conditions",
    "mirror_descent_fixed_point",
    "projected_gradient_fixed_point",
    "proximal_gradient_fixed_point",
    "stationarity",
]
