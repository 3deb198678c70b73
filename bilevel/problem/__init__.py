"""The bilevel problem statement and the result of solving it.

A bilevel problem is::

    min_x  h(x) = F(x, y*(x))    with    y*(x) = argmin_y f(x, y),

where ``x`` (outer/upper variables) and ``y`` (inner/lower variables) are tensors or pytrees
of tensors. ``h`` is the *value function* of the upper level; its gradient, the
*hypergradient*, is (implicit function theorem, when ``f(x, .)`` is strongly convex)::

    grad h(x) = grad_x F(x, y*) - d2_xy f(x, y*) [d2_yy f(x, y*)]^{-1} grad_y F(x, y*).
"""

from __future__ import annotations

from bilevel.problem._constraints import LowerConstraints
from bilevel.problem._problem import BilevelProblem, BilevelResult

__all__ = ["BilevelProblem", "BilevelResult", "LowerConstraints"]
