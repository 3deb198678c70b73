"""Hypergradient estimators: approximations of ``grad h(x)``, ``h(x) = F(x, y*(x))``.

All estimators share one signature, ``estimator(problem, x, y, **options) -> Hypergradient``,
where ``y`` is the current inner iterate (a warm start), and report the oracle calls they
made. With ``H = d2_yy f``, ``B = d2_xy f`` evaluated at ``(x, y)``:

==================  ============================================================  =============
estimator           formula                                                       2nd order?
==================  ============================================================  =============
:func:`implicit`    ``grad_x F - B H^{-1} grad_y F`` (any :mod:`bilevel.linalg`)   HVPs
:func:`neumann`     ``grad_x F - B v``, ``v = eta sum_{k=0}^{Q} (I - eta H)^k grad_y F``  HVPs
:func:`unrolled`    reverse mode through ``T`` inner GD steps (last ``K`` if        HVPs
                    truncated)
:func:`forward`     forward mode through ``T`` inner GD steps (``dim x`` JVPs)      JVPs
:func:`penalty`     ``grad_x F(x, y_l) + l (grad_x f(x, y_l) - grad_x f(x, z))``    none
==================  ============================================================  =============
"""

from __future__ import annotations

from bilevel.hypergrad._estimators import (
    ESTIMATORS,
    Hypergradient,
    forward,
    implicit,
    neumann,
    penalty,
    unrolled,
)

__all__ = ["ESTIMATORS", "Hypergradient", "forward", "implicit", "neumann", "penalty", "unrolled"]
