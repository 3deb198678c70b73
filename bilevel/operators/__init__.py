r"""Differentiable projection and proximal operators.

Projections return :math:`P_C(x) = \operatorname{argmin}_{y \in C} \tfrac12 \lVert y - x \rVert^2`
for convex sets :math:`C` (orthant, box, simplex, :math:`\ell_1` / :math:`\ell_2` balls,
hyperplanes and half-spaces); proximal operators return
:math:`\operatorname{prox}_{s g}(x) = \operatorname{argmin}_y \tfrac12 \lVert y - x \rVert^2
+ s\, g(y, \theta)` for the zero, :math:`\ell_1`, elastic-net and group-lasso penalties.

All operators are pure PyTorch, free of data-dependent Python control flow, and
differentiable almost everywhere in both the input and the hyperparameters, so they
compose with autograd and with :mod:`torch.func` transforms (``vmap``, ``grad``,
``jvp``, ``jacrev``, ``jacfwd``).  They are the building blocks of fixed-point maps
such as projected / proximal gradient steps that are differentiated implicitly.
"""

from __future__ import annotations

from bilevel.operators.projections import (
    projection_box,
    projection_halfspace,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_non_negative,
    projection_simplex,
)
from bilevel.operators.prox import (
    prox_elastic_net,
    prox_group_lasso,
    prox_l1,
    prox_none,
)

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_non_negative",
    "projection_simplex",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "prox_none",
]
