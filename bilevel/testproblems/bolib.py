"""Published bilevel programs from BOLIB that are not in :data:`~bilevel.testproblems.LITERATURE`,
as a new user meets them: bounds written as constraints, the source's own starting point.

Every entry is transcribed from BOLIB version 2 (Zhou, Zemkoho and Tin, "BOLIB: Bilevel
Optimization LIBrary of test problems", in *Bilevel Optimization: Advances and Next
Challenges*, Springer, 2020; the 124 nonlinear examples of version 1 are documented in the
2019 report of the same title, whose Table 3 lists ``F*``, ``f*`` and the reference for
each), through the expanded functions of the BOLIB.jl conversion (MIT licence, file
``src/BOLIBver2_converted/<class>/<name>.jl``). BOLIB states every problem as::

    min_{x, y} F(x, y)  s.t.  G(x, y) <= 0,
               y in argmin_theta { f(x, theta) : g(x, theta) <= 0 }

with the bounds of ``x`` and ``y`` and any equality (as two inequalities) inside ``G`` and
``g``; so here ``x_bounds = y_bounds = None`` and the constraints are the source's rows.
The entries live in the table ``bilevel/testproblems/bolib.toml`` (format:
:func:`~bilevel.testproblems.literature.load_problems`), whose rows keep the ``>= 0`` sign
convention of the conversion (``constraint_sense = ">= 0"``; the loaded ``upper_ineq`` and
``lower_ineq`` are their negatives). ``x0``/``y0`` are BOLIB's ``xy_init``; ``F_star``/``f_star`` are its
``Ff_optimal``, and ``source`` says whether BOLIB marks the value as the proven optimum
(``optimal``) or the best value reported in the literature (``best known``).

The selection (:data:`BOLIB`, 91 problems: 23 linear, 68 nonlinear): every linear and nonlinear example of BOLIB
version 2 with a listed value, except

* the 53 nonlinear examples that restate a problem of
  :data:`~bilevel.testproblems.LITERATURE` (same source; the same ``F``, ``f`` and lower-level
  constraint rows at random points), e.g. the Mitsos-Barton, Colson and Nie-Wang-Ye examples, and
* the examples without a known value (``Dempe1992a``, ``DesignCentringP1``-``P4``,
  ``LuDebSinha2016d``-``f``, ``MershaDempe2006Ex1``, ``ShimizuEtal1997a``,
  ``Zlobec2001b``), those that BOLIB.jl does not convert (piecewise or procedural:
  ``GumusFloudas2001Ex5``, ``LuDebSinha2016a``-``c``, ``MorganPatrone2006b``-``c``, two PDE
  examples) and the "simple" bilevel class.

Sizes reach 21 variables (``RobustPortfolioP1``, ``TollSettingP2``), 38 lower-level
constraints and lower levels that are infeasible at the listed start.
"""

from __future__ import annotations

from bilevel.testproblems.literature import LiteratureProblem, _bundled, _lookup, _module_getattr

__all__ = ["BOLIB", "bolib_problem"]

BOLIB: dict[str, LiteratureProblem]
"""The evaluation set, by BOLIB name (the table ``bilevel/testproblems/bolib.toml``, read on
first access)."""


__getattr__ = _module_getattr(__name__, {"BOLIB": "bolib.toml"})  # read on first access


def bolib_problem(name: str) -> LiteratureProblem:
    """The entry ``name`` of :data:`BOLIB` (``KeyError`` naming the valid ones otherwise)."""
    return _lookup(_bundled("bolib.toml"), name, "BOLIB")
