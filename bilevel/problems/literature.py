"""Small nonlinear bilevel programs from the literature, with their best known solutions.

Every entry is transcribed from the AMPL files of BASBLib (Paulavicius and Adjiman,
"BASBLib - a library of bilevel test problems", v2.3, 2019, doi:10.5281/zenodo.3266835,
https://github.com/basblsolver/BASBLib; file ``<class>/<name>.mod``), which restate the
problems of the original papers (cited in each entry) and list the best known solution
``F*, f*, x*, y*`` in their headers. ``F_star`` and the other reference values are those
headers' values (rounded as printed there); an entry whose listed value is not the optimum
of the bilevel program says so in ``note`` and gives the verified optimum in
``F_verified`` (4 entries: c_2002_01, c_2002_04, dd_2012_01, mb_2007_22).

All problems are stated as::

    min_{x, y} F(x, y)  s.t.  G(x, y) <= 0,  x in X,
               y in argmin_theta { f(x, theta) : g(x, theta) <= 0,  theta in Y }

(optimistic formulation; none of these problems has equality constraints), with ``x`` and
``y`` 1-D float64 tensors. A few problems have no upper-level variable (``n_x = 0``, ``x``
is an empty tensor).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

import torch

from bilevel.problem import BilevelProblem
from bilevel.problems._expr import Expression, ExpressionRows

__all__ = ["LITERATURE", "LiteratureProblem", "literature_problem"]

_T = torch.float64
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LiteratureProblem:
    """One published bilevel program and its best known solution.

    Attributes
    ----------
    name:
        BASBLib identifier (e.g. ``"mb_2007_06"``).
    citation:
        Original source: authors, year, example number.
    n_x, n_y:
        Numbers of upper- and lower-level variables.
    upper, lower:
        ``F(x, y)`` and ``f(x, y)`` (0-d tensors).
    upper_ineq, lower_ineq:
        ``G(x, y) <= 0`` and ``g(x, y) <= 0`` (1-D tensors) or ``None``.
    x_bounds, y_bounds:
        ``(lower, upper)`` tuples of floats, one per variable; ``None`` when ``n_x = 0``, or
        when the source writes its bounds as constraints (:mod:`bilevel.problems.bolib`).
    F_star, f_star:
        Best known upper and lower values (``f_star`` is ``None`` when it depends on which
        of several optimal ``x`` is taken).
    x_star, y_star:
        A best known solution as listed by the source (rounded), or ``None``.
    x0:
        Starting point, the centre of ``X`` unless the lower level is infeasible there.
    y0:
        Starting lower-level point listed by the source (default: the centre of ``Y``, or
        zeros when ``Y`` is unbounded).
    source:
        Where ``F_star`` comes from.
    note:
        Remarks: several optimal solutions, corrections of the listed values, ...
    F_verified:
        Only where the listed ``F_star`` is not the optimal value of the bilevel program
        (e.g. its listed point is not lower-level optimal): the optimal value established
        in ``note`` by a closed-form reduction or brute force.
    tags:
        Keywords to select problems by: the source's class (BASBLib's ``"LP-QP"``, ...,
        BOLIB's ``"linear"`` or ``"nonlinear"``) and ``"starts_infeasible"`` where
        :meth:`start` violates a constraint row or a bound.
    """

    name: str
    citation: str
    n_x: int
    n_y: int
    upper: Fn
    lower: Fn
    upper_ineq: Fn | None
    lower_ineq: Fn | None
    x_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None
    y_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None
    F_star: float
    f_star: float | None
    x_star: tuple[float, ...] | None
    y_star: tuple[float, ...] | None
    x0: tuple[float, ...] | None = None
    source: str = ""
    note: str = ""
    F_verified: float | None = None
    y0: tuple[float, ...] | None = None
    tags: tuple[str, ...] = ()

    @property
    def F_reference(self) -> float:
        """``F_verified`` where the listed ``F_star`` was found not to be the optimum of the
        bilevel program (see ``note``), else ``F_star``."""
        return self.F_star if self.F_verified is None else self.F_verified

    def problem(self) -> BilevelProblem:
        """The :class:`~bilevel.BilevelProblem` (float64 bounds)."""
        xb = None
        if self.x_bounds is not None:
            xb = tuple(torch.tensor(b, dtype=_T) for b in self.x_bounds)
        yb = None
        if self.y_bounds is not None:
            yb = tuple(torch.tensor(b, dtype=_T) for b in self.y_bounds)
        return BilevelProblem(
            upper=self.upper,
            lower=self.lower,
            upper_ineq=self.upper_ineq,
            lower_ineq=self.lower_ineq,
            x_bounds=xb,
            y_bounds=yb,
        )

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting point ``(x0, y0)``: ``x0`` as listed (default: centre of ``X``) and ``y0``
        as listed (default: centre of ``Y``, zeros without bounds)."""
        if self.x0 is not None:
            x0 = torch.tensor(self.x0, dtype=_T)
        elif self.x_bounds is None:
            x0 = torch.zeros(0, dtype=_T)
        else:
            lo, hi = (torch.tensor(b, dtype=_T) for b in self.x_bounds)
            x0 = (lo + hi) / 2
        if self.y0 is not None:
            return x0, torch.tensor(self.y0, dtype=_T)
        if self.y_bounds is None:
            return x0, torch.zeros(self.n_y, dtype=_T)
        lo, hi = (torch.tensor(b, dtype=_T) for b in self.y_bounds)
        return x0, (lo + hi) / 2


def _box(lo: float, hi: float, k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (lo,) * k, (hi,) * k


def _v(*parts: torch.Tensor | float) -> torch.Tensor:
    """Stack scalar expressions into a 1-D float64 constraint vector."""
    return torch.stack([torch.as_tensor(p, dtype=_T) for p in parts])


_BASB = "BASBLib v2.3 (Paulavicius and Adjiman 2019), file {}"
_MB = "Mitsos and Barton (2006, updated 2007), A test set for bilevel programs, Example {}"
_NWJ = "Nie, Wang and Ye (2017), SIAM J. Optim. 27(3), Example {}"
_BARD98 = "Bard (1998), Practical Bilevel Optimization, Kluwer, Example {}"
_COLSON = "Colson (2002), BIPA test problems, Cahiers du GERAD, problem {}"


def _poly_mb(y: torch.Tensor) -> torch.Tensor:
    return 16 * y**4 + 2 * y**3 - 8 * y**2 - 1.5 * y + 0.5


def _quartic_mb(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (
        y**4
        + (4 / 30) * (1 - x) * y**3
        + (-0.02 * x**2 + 0.16 * x - 0.4) * y**2
        + (0.004 * x**3 - 0.036 * x**2 + 0.08 * x) * y
    )


def _problems() -> list[LiteratureProblem]:
    P = LiteratureProblem
    out: list[LiteratureProblem] = []
    add = out.append

    # ---------------- Mitsos and Barton test set ----------------
    add(
        P(
            "mb_2007_03",
            _MB.format("3.3 (mb_0_1_03)"),
            0,
            1,
            lambda x, y: y[0],
            lambda x, y: y[0] ** 2,
            None,
            lambda x, y: _v(1 - y[0] ** 2),
            None,
            _box(-10, 10, 1),
            -1.0,
            1.0,
            None,
            (-1.0,),
            source=_BASB.format("LP-QP/mb_2007_03.mod"),
        )
    )
    add(
        P(
            "mb_2007_04",
            _MB.format("3.4 (mb_0_1_04)"),
            0,
            1,
            lambda x, y: y[0],
            lambda x, y: -(y[0] ** 2),
            None,
            None,
            None,
            _box(-0.5, 1, 1),
            1.0,
            -1.0,
            None,
            (1.0,),
            source=_BASB.format("LP-QP/mb_2007_04.mod"),
        )
    )
    add(
        P(
            "mb_2007_05",
            _MB.format("3.5 (mb_0_1_05)"),
            0,
            1,
            lambda x, y: y[0],
            lambda x, y: _poly_mb(y[0]),
            None,
            None,
            None,
            _box(-1, 1, 1),
            0.5,
            -1.0,
            None,
            (0.5,),
            source=_BASB.format("LP-NLP/mb_2007_05.mod"),
        )
    )
    add(
        P(
            "mb_2007_06",
            _MB.format("3.6 (mb_0_1_06)"),
            0,
            1,
            lambda x, y: y[0],
            lambda x, y: y[0] ** 3,
            None,
            None,
            None,
            _box(-1, 1, 1),
            -1.0,
            -1.0,
            None,
            (-1.0,),
            source=_BASB.format("LP-NLP/mb_2007_06.mod"),
        )
    )
    add(
        P(
            "mb_2006_01",
            "Mitsos and Barton (2006), Issues in the development of global optimization "
            "algorithms for bilevel programs with a nonconvex inner program, Example 4.2",
            0,
            1,
            lambda x, y: y[0],
            lambda x, y: -(y[0] ** 2),
            None,
            None,
            None,
            _box(-1, 1, 1),
            -1.0,
            -1.0,
            None,
            (-1.0,),
            source=_BASB.format("LP-QP/mb_2006_01.mod"),
        )
    )
    add(
        P(
            "mb_2007_08",
            _MB.format("3.8 (mb_1_1_01)"),
            1,
            1,
            lambda x, y: y[0] ** 2,
            lambda x, y: x[0] * y[0] + torch.exp(x[0]) * y[0],
            lambda x, y: _v(y[0] - 0.1, -y[0] - 0.1),
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.0,
            0.0,
            (-0.567,),
            (0.0,),
            source=_BASB.format("QP-NLP/mb_2007_08.mod"),
            note="x* is the root of x + exp(x) = 0; every other x gives y = +-1, which violates G",
        )
    )
    add(
        P(
            "mb_2007_09",
            _MB.format("3.9 (mb_1_1_02)"),
            1,
            1,
            lambda x, y: x[0],
            lambda x, y: y[0] ** 3,
            lambda x, y: _v(-x[0] + y[0]),
            None,
            _box(-10, 10, 1),
            _box(-1, 1, 1),
            -1.0,
            -1.0,
            (-1.0,),
            (-1.0,),
            source=_BASB.format("LP-NLP/mb_2007_09.mod"),
        )
    )
    add(
        P(
            "mb_2007_10",
            _MB.format("3.10 (mb_1_1_03)"),
            1,
            1,
            lambda x, y: y[0],
            lambda x, y: x[0] * _poly_mb(y[0]),
            None,
            None,
            _box(0.1, 1, 1),
            _box(-1, 1, 1),
            0.5,
            -0.1,
            (0.1,),
            (0.5,),
            source=_BASB.format("LP-NLP/mb_2007_10.mod"),
            note="every x in [0.1, 1] is optimal with y = 0.5; f* = -0.1 is the value at x* = 0.1",
        )
    )
    add(
        P(
            "mb_2007_11",
            _MB.format("3.11 (mb_1_1_04)"),
            1,
            1,
            lambda x, y: y[0],
            lambda x, y: x[0] * _poly_mb(y[0]),
            None,
            None,
            _box(-1, 1, 1),
            _box(-0.8, 1, 1),
            -0.8,
            0.0,
            (0.0,),
            (-0.8,),
            source=_BASB.format("LP-NLP/mb_2007_11.mod"),
            note="isolated optimum: only at x = 0 is f constant in y",
        )
    )
    add(
        P(
            "mb_2007_12",
            _MB.format("3.12 (mb_1_1_05)"),
            1,
            1,
            lambda x, y: -x[0] + x[0] * y[0] + 10 * y[0] ** 2,
            lambda x, y: -x[0] * y[0] ** 2 + 0.5 * y[0] ** 4,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.0,
            0.0,
            (0.0,),
            (0.0,),
            source=_BASB.format("QP-NLP/mb_2007_12.mod"),
        )
    )
    add(
        P(
            "mb_2007_13",
            _MB.format("3.13 (mb_1_1_06)"),
            1,
            1,
            lambda x, y: x[0] - y[0],
            lambda x, y: 0.5 * x[0] * y[0] ** 2 - y[0] * x[0] ** 3,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -1.0,
            0.0,
            (0.0,),
            (1.0,),
            source=_BASB.format("LP-NLP/mb_2007_13.mod"),
        )
    )
    add(
        P(
            "mb_2007_13v",
            "Variation of " + _MB.format("3.13 (mb_1_1_06)"),
            1,
            1,
            lambda x, y: x[0] + y[0],
            lambda x, y: 0.5 * x[0] * y[0] ** 2 - y[0] * x[0] ** 3,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -2.0,
            -1.5,
            (-1.0,),
            (-1.0,),
            source=_BASB.format("LP-NLP/mb_2007_13v.mod"),
        )
    )
    add(
        P(
            "mb_2007_14",
            _MB.format("3.14 (mb_1_1_07)"),
            1,
            1,
            lambda x, y: (x[0] - 0.25) ** 2 + y[0] ** 2,
            lambda x, y: y[0] ** 3 / 3 - x[0] * y[0],
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.25,
            -0.083,
            (0.25,),
            (0.5,),
            source=_BASB.format("QP-NLP/mb_2007_14.mod"),
        )
    )
    add(
        P(
            "mb_2007_15",
            _MB.format("3.15 (mb_1_1_08)"),
            1,
            1,
            lambda x, y: x[0] + y[0],
            lambda x, y: 0.5 * x[0] * y[0] ** 2 - y[0] ** 3 / 3,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.0,
            -0.83,
            (-1.0,),
            (1.0,),
            source=_BASB.format("LP-NLP/mb_2007_15.mod"),
        )
    )
    add(
        P(
            "mb_2007_16",
            _MB.format("3.16 (mb_1_1_09)"),
            1,
            1,
            lambda x, y: 2 * x[0] + y[0],
            lambda x, y: -0.5 * x[0] * y[0] ** 2 - y[0] ** 4 / 4,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -2.0,
            0.0,
            (-1.0,),
            (0.0,),
            source=_BASB.format("LP-NLP/mb_2007_16.mod"),
            note="two optimal solutions: (x, y) = (-1, 0) and (-0.5, -1)",
        )
    )
    add(
        P(
            "mb_2007_17",
            _MB.format("3.17 (mb_1_1_10)"),
            1,
            1,
            lambda x, y: (x[0] + 0.5) ** 2 + 0.5 * y[0] ** 2,
            lambda x, y: 0.5 * x[0] * y[0] ** 2 + y[0] ** 4 / 4,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.1875,
            -0.016,
            (-0.25,),
            (0.5,),
            source=_BASB.format("QP-NLP/mb_2007_17.mod"),
            note="y* = +-0.5",
        )
    )
    add(
        P(
            "mb_2007_18",
            _MB.format("3.18 (mb_1_1_11)"),
            1,
            1,
            lambda x, y: -(x[0] ** 2) + y[0] ** 2,
            lambda x, y: x[0] * y[0] ** 2 - y[0] ** 4 / 2,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -1.0,
            0.0,
            (1.0,),
            (0.0,),
            source=_BASB.format("QP-NLP/mb_2007_18.mod"),
        )
    )
    add(
        P(
            "mb_2007_18v",
            "Variation of " + _MB.format("3.18 (mb_1_1_11)"),
            1,
            1,
            lambda x, y: x[0] ** 2 + y[0] ** 2,
            lambda x, y: x[0] * y[0] ** 2 - y[0] ** 4 / 2,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.25,
            0.0,
            (0.5,),
            (0.0,),
            source=_BASB.format("QP-NLP/mb_2007_18v.mod"),
        )
    )
    add(
        P(
            "mb_2007_19",
            _MB.format("3.19 (mb_1_1_12)"),
            1,
            1,
            lambda x, y: x[0] * y[0] - y[0] + 0.5 * y[0] ** 2,
            lambda x, y: -x[0] * y[0] ** 2 + y[0] ** 4 / 2,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -0.258,
            -0.018,
            (0.189,),
            (0.439,),
            source=_BASB.format("QP-NLP/mb_2007_19.mod"),
        )
    )
    add(
        P(
            "mb_2007_20",
            _MB.format("3.20 (mb_1_1_13)"),
            1,
            1,
            lambda x, y: (x[0] - 0.25) ** 2 + y[0] ** 2,
            lambda x, y: -(x[0] ** 2) * y[0] + y[0] ** 3 / 3,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.313,
            -0.083,
            (0.5,),
            (0.5,),
            source=_BASB.format("QP-NLP/mb_2007_20.mod"),
        )
    )
    add(
        P(
            "mb_2007_21",
            _MB.format("3.21 (mb_1_1_14)"),
            1,
            1,
            lambda x, y: (x[0] + 0.6) ** 2 + y[0] ** 2,
            lambda x, y: _quartic_mb(x[0], y[0]),
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.210,
            -0.069,
            (-0.555,),
            (0.455,),
            source=_BASB.format("QP-NLP/mb_2007_21.mod"),
        )
    )
    add(
        P(
            "mb_2007_22",
            _MB.format("3.22 (mb_1_1_15)"),
            1,
            1,
            lambda x, y: (x[0] - 0.6) ** 2 + y[0] ** 2,
            lambda x, y: _quartic_mb(x[0], y[0]),
            None,
            lambda x, y: _v(0.01 * (1 + x[0] ** 2) - y[0] ** 2),
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.189,
            -0.042,
            (0.635,),
            (-0.433,),
            source=_BASB.format("QP-NLP/mb_2007_22.mod"),
            note="the listed F* = 0.189 evaluates F at the rounded y* = -0.433; at x* = 0.635 "
            "the lower-level minimizer is y = -0.4365 (F = 0.1918), and a brute-force search "
            "(x step 1e-3 on [0.60, 0.66], 2e5-point y grid) gives F = 0.19168 at x = 0.644, "
            "y = -0.4356, within 1.5% of the listed value",
            F_verified=0.19168,
        )
    )
    add(
        P(
            "mb_2007_22v",
            "Variation of " + _MB.format("3.22 (mb_1_1_15)"),
            1,
            1,
            lambda x, y: (x[0] + 0.6) ** 2 + y[0] ** 2,
            lambda x, y: _quartic_mb(x[0], y[0]),
            None,
            lambda x, y: _v(0.01 * (1 + x[0] ** 2) - y[0] ** 2),
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            0.210,
            -0.069,
            (-0.555,),
            (0.455,),
            source=_BASB.format("QP-NLP/mb_2007_22v.mod"),
        )
    )
    add(
        P(
            "mb_2007_23",
            _MB.format("3.24 (mb_1_1_17)"),
            1,
            1,
            lambda x, y: x[0] ** 2 - y[0],
            lambda x, y: ((y[0] - 1 - 0.1 * x[0]) ** 2 - 0.5 - 0.5 * x[0]) ** 2,
            None,
            None,
            _box(0, 1, 1),
            _box(0, 3, 1),
            -1.755,
            0.009,
            (0.211,),
            (1.799,),
            source=_BASB.format("QP-NLP/mb_2007_23.mod"),
        )
    )
    add(
        P(
            "mb_2007_24",
            _MB.format("3.26 (mb_2_3_02)"),
            2,
            3,
            lambda x, y: x[0] * y[0] + x[1] * y[1] ** 2 + x[0] * x[1] * y[2] ** 3,
            lambda x, y: x[0] * y[0] ** 2 + x[1] * y[1] ** 2 + (x[0] - x[1]) * y[2] ** 2,
            lambda x, y: _v(0.1 - x[0] ** 2, 1.5 - (y**2).sum(), (y**2).sum() - 2.5),
            None,
            _box(-1, 1, 2),
            _box(-1, 1, 3),
            -2.35,
            -2.0,
            (-1.0, -1.0),
            (1.0, 1.0, -0.707),
            source=_BASB.format("NLP-NLP/mb_2007_24.mod"),
            note="y* = (1, +-1, -0.707)",
        )
    )
    add(
        P(
            "ka_2014_01",
            "Kleniati and Adjiman (2014), Branch-and-Sandwich Part II, J. Glob. Optim. 60(3), "
            "Example 3 (variant of Mitsos and Barton Example 3.13)",
            1,
            1,
            lambda x, y: x[0] - y[0],
            lambda x, y: 0.5 * x[0] * y[0] ** 2 - x[0] * y[0] ** 3,
            None,
            None,
            _box(-1, 1, 1),
            _box(-1, 1, 1),
            -1.0,
            0.0,
            (0.0,),
            (1.0,),
            source=_BASB.format("LP-NLP/ka_2014_01.mod"),
        )
    )
    add(
        P(
            "ka_2014_02",
            "Kleniati and Adjiman (2014), Branch-and-Sandwich Part II, J. Glob. Optim. 60(3), "
            "Example 4 (variant of Mitsos and Barton Example 3.28)",
            5,
            5,
            lambda x, y: -(x**2).sum() - (y**2).sum(),
            lambda x, y: (
                0.1 * y[2]
                + y[0] ** 3
                + (x[0] + x[1]) * y[1] ** 2
                + (y[3] ** 2 + y[4] ** 2) * x[2] * x[3] * x[4]
            ),
            lambda x, y: _v(-x[0] + y[0] * y[1], x[1] * y[0] ** 2, x[0] + y[2] - torch.exp(x[1])),
            lambda x, y: _v(x[0] - y[2] ** 2 - 0.2),
            _box(-1, 1, 5),
            _box(-1, 1, 5),
            -10.0,
            -3.1,
            (1.0, -1.0, -1.0, -1.0, -1.0),
            (-1.0,) * 5,
            source=_BASB.format("NLP-NLP/ka_2014_02.mod"),
        )
    )

    # ---------------- Nie, Wang and Ye ----------------
    add(
        P(
            "nwj_2017_01",
            _NWJ.format("3.4"),
            1,
            2,
            lambda x, y: x[0] + y[0] + y[1],
            lambda x, y: x[0] * y[0] + x[0] * y[1],
            None,
            lambda x, y: _v(
                -(y[0] ** 2) + y[1] ** 2 + y[0] ** 4 + 2 * y[0] ** 2 * y[1] ** 2 + y[1] ** 4
            ),
            _box(2, 3, 1),
            _box(0, 10, 2),
            2.0,
            0.0,
            (2.0,),
            (0.0, 0.0),
            source=_BASB.format("LP-NLP/nwj_2017_01.mod"),
        )
    )
    add(
        P(
            "nwj_2017_02",
            _NWJ.format("5.2"),
            2,
            3,
            lambda x, y: x[0] * y[0] + x[1] * y[1] + x[0] * x[1] * y[0] * y[1] * y[2],
            lambda x, y: x[0] * y[0] ** 2 + x[1] ** 2 * y[1] * y[2] - y[0] * y[2] ** 2,
            lambda x, y: _v(-(x[0] ** 2) + y[0] * y[1]),
            lambda x, y: _v(1 - (y**2).sum(), (y**2).sum() - 2),
            _box(-1, 1, 2),
            _box(-10, 10, 3),
            -1.71,
            -2.23,
            (-1.0, -1.0),
            (1.11, 0.31, -0.82),
            source=_BASB.format("NLP-NLP/nwj_2017_02.mod"),
        )
    )
    add(
        P(
            "nwj_2017_03",
            _NWJ.format("5.4"),
            4,
            4,
            lambda x, y: x[0] ** 2 * y[0] + x[1] * y[1] + x[2] * y[2] ** 2 + x[3] * y[3] ** 2,
            lambda x, y: y[0] ** 2 - y[1] * (x[0] + x[1]) - (y[2] + y[3]) * (x[2] + x[3]),
            lambda x, y: _v((x**2).sum() - 1, -x[0] + y[0] * y[1], -(x[2] ** 2) + y[2] * y[3]),
            lambda x, y: _v((y**2).sum() - 1, -y[0] + y[1] ** 2 + y[2] ** 2 + y[3] ** 2),
            _box(-1, 1, 4),
            _box(-1, 1, 4),
            -0.437,
            -1.190,
            (0.0, 0.0, -0.707, -0.707),
            (0.618, 0.0, -0.558, -0.554),
            source=_BASB.format("NLP-NLP/nwj_2017_03.mod"),
        )
    )
    add(
        P(
            "nwj_2017_04",
            _NWJ.format("5.7"),
            2,
            3,
            lambda x, y: 0.5 * x[0] ** 2 * y[0] + x[1] * y[1] ** 2 - (x[0] + x[1] ** 2) * y[2],
            lambda x, y: x[1] * (y[0] * y[1] * y[2] + y[1] ** 2 - y[2] ** 3),
            lambda x, y: _v(-x[0] - x[1] + x[0] ** 2 + y[0] ** 2 + y[1] ** 2),
            lambda x, y: _v(-x[0] + (y**2).sum(), -1 + 2 * y[1] * y[2]),
            _box(-1, 1, 2),
            _box(-10, 10, 3),
            -2.0,
            -1.0,
            (1.0, 1.0),
            (0.0, 0.0, 1.0),
            source=_BASB.format("NLP-NLP/nwj_2017_04.mod"),
        )
    )

    # ---------------- Colson's BIPA set ----------------
    add(
        P(
            "c_2002_01",
            _COLSON.format("BIPA1"),
            1,
            1,
            lambda x, y: (10 - x[0]) ** 3 + (10 - y[0]) ** 3,
            lambda x, y: (x[0] + 2 * y[0] - 15) ** 4,
            lambda x, y: _v(-x[0] + y[0]),
            lambda x, y: _v(x[0] + y[0] - 20),
            _box(0, 15, 1),
            _box(0, 20, 1),
            227.691,
            0.0,
            (6.082,),
            (4.487,),
            source=_BASB.format("NLP-NLP/c_2002_01.mod"),
            note="the listed (x*, y*) = (6.082, 4.487) is not lower-level optimal "
            "(f = 9.8e-6 > 0): the lower level has the unique solution y = (15 - x) / 2, so "
            "F(x) = (10 - x)^3 + (2.5 + x / 2)^3 on [5, 15] (G), minimized by bounded scalar "
            "minimization at x = 6.08194, y = 4.45903: F = 230.2677",
            F_verified=230.2677,
        )
    )
    add(
        P(
            "c_2002_02",
            _COLSON.format("BIPA2"),
            1,
            1,
            lambda x, y: (x[0] - 5) ** 2 + (2 * y[0] + 1) ** 2,
            lambda x, y: (y[0] - 1) ** 2 - 1.5 * x[0] * y[0] + x[0] ** 3,
            None,
            lambda x, y: _v(-3 * x[0] + y[0] + 3, x[0] - 0.5 * y[0] - 4, x[0] + y[0] - 7),
            _box(0, 10, 1),
            _box(0, 10, 1),
            17.0,
            2.0,
            (1.0,),
            (0.0,),
            source=_BASB.format("QP-NLP/c_2002_02.mod"),
        )
    )
    add(
        P(
            "c_2002_03",
            _COLSON.format("BIPA3"),
            1,
            1,
            lambda x, y: (x[0] - 5) ** 4 + (2 * y[0] + 1) ** 4,
            lambda x, y: (
                torch.exp(-x[0] + y[0])
                + x[0] ** 2
                + 2 * x[0] * y[0]
                + y[0] ** 2
                + 2 * x[0]
                + 6 * y[0]
            ),
            lambda x, y: _v(x[0] + y[0] - 4),
            lambda x, y: _v(-x[0] + y[0] - 2),
            _box(0, 10, 1),
            _box(0, 10, 1),
            2.0,
            24.018,
            (4.0,),
            (0.0,),
            source=_BASB.format("NLP-NLP/c_2002_03.mod"),
        )
    )
    add(
        P(
            "c_2002_04",
            _COLSON.format("BIPA4"),
            1,
            1,
            lambda x, y: x[0] ** 2 + (y[0] - 10) ** 2,
            lambda x, y: -(x[0] ** 2) + x[0] ** 3 + 2 * y[0] ** 3 + x[0] - 2 * y[0],
            lambda x, y: _v(x[0] + 2 * y[0] - 6),
            lambda x, y: _v(-x[0] + 2 * y[0] - 3),
            _box(0, 10, 1),
            _box(0, 10, 1),
            88.754,
            -0.770,
            (0.0,),
            (0.579,),
            source=_BASB.format("QP-NLP/c_2002_04.mod"),
            note="the lower level gives y = 1/sqrt(3) = 0.5774 for every x, so the exact "
            "optimum is F = (10 - 1/sqrt(3))^2 = 88.786 at x = 0; the listed 88.754 (with the "
            "rounded y* = 0.579) is 0.03% lower",
            F_verified=88.7863,
        )
    )
    add(
        P(
            "c_2002_05",
            _COLSON.format("BIPA5"),
            1,
            2,
            lambda x, y: (x[0] - y[1]) ** 4 + (y[0] - 1) ** 2 + (y[0] - y[1]) ** 2,
            lambda x, y: (
                2 * x[0] + torch.exp(y[0]) + y[0] ** 2 + 4 * y[0] + 2 * y[1] ** 2 - 6 * y[1]
            ),
            None,
            lambda x, y: _v(
                6 * x[0] + y[0] ** 2 + torch.exp(y[1]) - 15, 5 * x[0] + y[0] ** 4 - y[1] - 25
            ),
            _box(0, 10, 1),
            ((0.0, 0.0), (4.0, 2.0)),
            2.750,
            0.548,
            (1.941,),
            (0.0, 1.211),
            x0=(1.0,),
            source=_BASB.format("NLP-NLP/c_2002_05.mod"),
            note="the lower level is infeasible for x > 2.5 (and at the centre of X), hence "
            "the starting point x0 = 1",
        )
    )

    # ---------------- Bard ----------------
    add(
        P(
            "b_1984_02",
            "Bard (1984), Optimality conditions for the bilevel programming problem, Naval "
            "Res. Logist. Q. 31, Example 2",
            2,
            2,
            lambda x, y: -(x[0] ** 2) - 3 * x[1] - 4 * y[0] + y[1] ** 2,
            lambda x, y: 2 * x[0] ** 2 + y[0] ** 2 - 5 * y[1],
            lambda x, y: _v(x[0] ** 2 + 2 * x[1] - 4),
            lambda x, y: _v(
                -(x[0] ** 2) + 2 * x[0] - x[1] ** 2 + 2 * y[0] - y[1] - 3,
                -x[1] - 3 * y[0] + 4 * y[1] + 4,
            ),
            _box(0, 10, 2),
            _box(0, 10, 2),
            -12.687,
            -1.016,
            (0.0, 2.0),
            (1.875, 0.9063),
            source=_BASB.format("QP-QP/b_1984_02.mod"),
            note="the .mod header lists f* = -6.473, inconsistent with its own (x*, y*), where "
            "f = -1.016 (the value listed on BASBLib's page NLP-NLP/b_1984_02.md, commit "
            "75b5430, which states an older variant with -3 x2^2 in F)",
        )
    )
    add(
        P(
            "b_1988_01",
            "Bard (1988), Convex two-level optimization, Math. Program. 40, Example 1",
            1,
            1,
            lambda x, y: (x[0] - 5) ** 2 + (2 * y[0] + 1) ** 2,
            lambda x, y: (y[0] - 1) ** 2 - 1.5 * x[0] * y[0],
            None,
            lambda x, y: _v(-3 * x[0] + y[0] + 3, x[0] - 0.5 * y[0] - 4, x[0] + y[0] - 7),
            _box(0, 10, 1),
            _box(0, 10, 1),
            17.0,
            1.0,
            (1.0,),
            (0.0,),
            source=_BASB.format("QP-QP/b_1988_01.mod"),
        )
    )
    add(
        P(
            "b_1991_02",
            "Bard (1991), Some properties of the bilevel programming problem, JOTA 68(2), "
            "Example 2.1",
            1,
            2,
            lambda x, y: x[0] + y[1],
            lambda x, y: 2 * y[0] + x[0] * y[1],
            None,
            lambda x, y: _v(x[0] - y[0] - y[1] + 4),
            _box(2, 4, 1),
            _box(0, 10, 2),
            2.0,
            12.0,
            (2.0,),
            (6.0, 0.0),
            source=_BASB.format("LP-QP/b_1991_02.mod"),
        )
    )
    add(
        P(
            "b_1998_02",
            _BARD98.format("7.2.1"),
            2,
            1,
            lambda x, y: 0.5 * (x[0] - 0.8) ** 2 + 0.5 * (x[1] - 0.2) ** 2 + 0.5 * (y[0] - 1) ** 2,
            lambda x, y: 0.5 * y[0] ** 2 - y[0] - x[0] * y[0] + 2 * x[1] * y[0],
            None,
            None,
            _box(0, 1, 2),
            _box(0, 1, 1),
            0.0,
            -0.9,
            (0.8, 0.2),
            (1.0,),
            source=_BASB.format("QP-QP/b_1998_02.mod"),
        )
    )
    add(
        P(
            "b_1998_03",
            _BARD98.format("7.2.2"),
            2,
            1,
            lambda x, y: 0.5 * (x[0] - 1) ** 2 + 0.5 * (x[1] - 0.4) ** 2 + 0.5 * (y[0] - 0.8) ** 2,
            lambda x, y: 0.5 * y[0] ** 2 - y[0] - x[0] * y[0] + 3 * x[1] * y[0],
            None,
            None,
            _box(0, 1, 2),
            _box(0, 1, 1),
            0.0,
            -0.320,
            (1.0, 0.4),
            (0.8,),
            source=_BASB.format("QP-QP/b_1998_03.mod"),
        )
    )
    add(
        P(
            "b_1998_04",
            _BARD98.format("8.1.3"),
            1,
            1,
            lambda x, y: (x[0] - 1) ** 2 + (y[0] - 1) ** 2,
            lambda x, y: 0.5 * y[0] ** 2 + 500 * y[0] - 50 * x[0] * y[0],
            None,
            None,
            _box(-100, 100, 1),
            _box(-100, 100, 1),
            81.33,
            -0.336,
            (10.02,),
            (0.82,),
            source=_BASB.format("QP-QP/b_1998_04.mod"),
        )
    )
    add(
        P(
            "b_1998_05",
            _BARD98.format("8.1.3 with y >= 0"),
            1,
            1,
            lambda x, y: (x[0] - 1) ** 2 + (y[0] - 1) ** 2,
            lambda x, y: 0.5 * y[0] ** 2 + 500 * y[0] - 50 * x[0] * y[0],
            None,
            None,
            _box(-100, 100, 1),
            _box(0, 100, 1),
            1.0,
            0.0,
            (1.0,),
            (0.0,),
            source=_BASB.format("QP-QP/b_1998_05.mod"),
        )
    )
    add(
        P(
            "b_1998_07",
            _BARD98.format("8.5.1"),
            1,
            2,
            lambda x, y: (x[0] - 1) ** 2 + 2 * y[0] ** 2 - 2 * x[0],
            lambda x, y: (2 * y[0] - 4) ** 2 + (2 * y[1] - 1) ** 2 + x[0] * y[0],
            None,
            lambda x, y: _v(
                4 * x[0] + 5 * y[0] + 4 * y[1] - 12,
                4 * x[0] - 4 * y[0] + 5 * y[1] - 4,
                -4 * x[0] - 5 * y[0] + 4 * y[1] + 4,
                -4 * x[0] + 4 * y[0] + 5 * y[1] - 4,
            ),
            _box(0, 10, 1),
            _box(0, 10, 2),
            -1.41,
            7.62,
            (1.89,),
            (0.89, 0.0),
            x0=(1.0,),
            source=_BASB.format("QP-QP/b_1998_07.mod"),
            note="the lower level is infeasible for x > 2 (and at the centre of X), hence "
            "the starting point x0 = 1",
        )
    )

    # ---------------- Shimizu, Aiyoshi and others ----------------
    add(
        P(
            "as_1984_01",
            "Aiyoshi and Shimizu (1984), IEEE Trans. Autom. Control 29(12), Example 2",
            2,
            2,
            lambda x, y: 2 * x[0] + 2 * x[1] - 3 * y[0] - 3 * y[1] - 60,
            lambda x, y: (y[0] - x[0] + 20) ** 2 + (y[1] - x[1] + 20) ** 2,
            lambda x, y: _v(x[0] + x[1] + y[0] - 2 * y[1] - 40),
            lambda x, y: _v(-x[0] + 2 * y[0] + 10, -x[1] + 2 * y[1] + 10),
            _box(0, 50, 2),
            _box(-10, 20, 2),
            0.0,
            100.0,
            (0.0, 30.0),
            (-10.0, 10.0),
            source=_BASB.format("LP-QP/as_1984_01.mod"),
            note="with BASBLib's bounds; a second optimum is x = (0, 0), y = (-10, -10)",
        )
    )
    add(
        P(
            "sa_1981_01",
            "Shimizu and Aiyoshi (1981), IEEE Trans. Autom. Control 26(2), Example 1",
            1,
            1,
            lambda x, y: x[0] ** 2 + (y[0] - 10) ** 2,
            lambda x, y: (x[0] + 2 * y[0] - 30) ** 2,
            lambda x, y: _v(-x[0] + y[0]),
            lambda x, y: _v(x[0] + y[0] - 20),
            _box(0, 15, 1),
            _box(0, 20, 1),
            100.0,
            0.0,
            (10.0,),
            (10.0,),
            source=_BASB.format("QP-QP/sa_1981_01.mod"),
        )
    )
    add(
        P(
            "sa_1981_02",
            "Shimizu and Aiyoshi (1981), IEEE Trans. Autom. Control 26(2), Example 2",
            2,
            2,
            lambda x, y: (x[0] - 30) ** 2 + (x[1] - 20) ** 2 - 20 * y[0] + 20 * y[1],
            lambda x, y: (x[0] - y[0]) ** 2 + (x[1] - y[1]) ** 2,
            lambda x, y: _v(-x[0] - 2 * x[1] + 30, x[0] + x[1] - 25),
            None,
            ((0.0, 0.0), (25.0, 15.0)),
            _box(0, 10, 2),
            225.0,
            100.0,
            (20.0, 5.0),
            (10.0, 5.0),
            source=_BASB.format("QP-QP/sa_1981_02.mod"),
        )
    )
    add(
        P(
            "sib_1997_01",
            "Shimizu, Ishizuka and Bard (1997), Nondifferentiable and Two-Level Mathematical "
            "Programming, Kluwer, Example 15.3.1",
            1,
            1,
            lambda x, y: 16 * x[0] ** 2 + 9 * y[0] ** 2,
            lambda x, y: (x[0] + y[0] - 20) ** 4,
            lambda x, y: _v(-4 * x[0] + y[0]),
            lambda x, y: _v(4 * x[0] + y[0] - 50),
            _box(0, 12.5, 1),
            _box(0, 50, 1),
            2250.0,
            194.80,
            (11.25,),
            (5.0,),
            source=_BASB.format("QP-NLP/sib_1997_01.mod"),
            note="the listed f* = 194.80 is inconsistent with the listed (x*, y*), where "
            "f = 3.75^4 = 197.75",
        )
    )
    add(
        P(
            "cw_1990_02",
            "Clark and Westerberg (1990), Comput. Chem. Eng. 14(1), Section 3.2",
            1,
            1,
            lambda x, y: (x[0] - 3) ** 2 + (y[0] - 2) ** 2,
            lambda x, y: (y[0] - 5) ** 2,
            None,
            lambda x, y: _v(-2 * x[0] + y[0] - 1, x[0] - 2 * y[0] + 2, x[0] + 2 * y[0] - 14),
            _box(0, 8, 1),
            _box(0, 8, 1),
            5.0,
            4.0,
            (1.0,),
            (3.0,),
            source=_BASB.format("QP-QP/cw_1990_02.mod"),
        )
    )
    add(
        P(
            "sc_1998_01",
            "Sahin and Ciric (1998), Comput. Chem. Eng. 23(1), Example 3",
            1,
            1,
            lambda x, y: (x[0] - 3) ** 2 + (y[0] - 2) ** 2,
            lambda x, y: (y[0] - 5) ** 2,
            lambda x, y: _v(-2 * x[0] + y[0] - 1, x[0] - 2 * y[0] + 2, x[0] + 2 * y[0] - 14),
            None,
            _box(0, 8, 1),
            _box(0, 10, 1),
            9.0,
            0.0,
            (3.0,),
            (5.0,),
            source=_BASB.format("QP-QP/sc_1998_01.mod"),
        )
    )
    add(
        P(
            "tmh_2007_01",
            "Tuy, Migdalas and Hoai-Phuong (2007), J. Glob. Optim. 38(4), Example 1",
            1,
            1,
            lambda x, y: x[0] ** 2 + y[0] ** 2,
            lambda x, y: -y[0],
            None,
            lambda x, y: _v(3 * x[0] + y[0] - 15, x[0] + y[0] - 7, x[0] + 3 * y[0] - 15),
            _box(0, 10, 1),
            _box(0, 10, 1),
            22.5,
            -4.5,
            (1.5,),
            (4.5,),
            source=_BASB.format("QP-QP/tmh_2007_01.mod"),
        )
    )

    # ---------------- Dempe and others ----------------
    add(
        P(
            "d_1978_01",
            "De Silva (1978), PhD thesis, George Washington University",
            2,
            2,
            lambda x, y: x[0] ** 2 - 2 * x[0] + x[1] ** 2 - 2 * x[1] + y[0] ** 2 + y[1] ** 2,
            lambda x, y: (y[0] - x[0]) ** 2 + (y[1] - x[1]) ** 2,
            None,
            None,
            _box(0, 10, 2),
            _box(0.5, 1.5, 2),
            -1.0,
            0.0,
            (0.5, 0.5),
            (0.5, 0.5),
            source=_BASB.format("QP-QP/d_1978_01.mod"),
        )
    )
    add(
        P(
            "d_1992_01",
            "Dempe (1992), A necessary and a sufficient optimality condition for bilevel "
            "programming problems, Optimization 25(4), Example 4.1",
            1,
            1,
            lambda x, y: (x[0] - 3.5) ** 2 + (y[0] + 4) ** 2,
            lambda x, y: (y[0] - 3) ** 2,
            None,
            lambda x, y: _v(y[0] ** 2 - x[0]),
            _box(1, 10, 1),
            _box(1, 10, 1),
            31.25,
            4.0,
            (1.0,),
            (1.0,),
            source=_BASB.format("QP-QP/d_1992_01.mod"),
        )
    )
    add(
        P(
            "d_2000_01",
            "Dempe (2000), Comput. Optim. Appl. 15(2), Example 5.6 (d = 1)",
            1,
            1,
            lambda x, y: (-x[0] + y[0] + 1) ** 2,
            lambda x, y: x[0] * y[0],
            None,
            lambda x, y: _v(-x[0] - y[0], -x[0] + y[0] - 1),
            _box(-0.5, 10, 1),
            _box(-10, 11, 1),
            0.0,
            -0.25,
            (0.5,),
            (-0.5,),
            source=_BASB.format("QP-QP/d_2000_01.mod"),
        )
    )
    add(
        P(
            "dd_2012_01",
            "Dempe and Dutta (2012), Is bilevel programming a special case of a mathematical "
            "program with complementarity constraints?, Math. Program. 131, Example 2.4",
            1,
            1,
            lambda x, y: (x[0] - 1) ** 2 + y[0] ** 2,
            lambda x, y: x[0] ** 2 * y[0],
            None,
            lambda x, y: _v(y[0] ** 2),
            _box(-10, 10, 1),
            _box(-10, 10, 1),
            1.0,
            0.0,
            (0.0,),
            (0.0,),
            source=_BASB.format("QP-NLP/dd_2012_01.mod"),
            note="the lower-level feasible set is {0} for every x, so F = (x - 1)^2 and the "
            "bilevel optimum is F = 0 at (1, 0); the listed F* = 1 at (0, 0) is the optimum "
            "of the KKT reformulation, whose feasible set is {(0, 0)} because Slater's "
            "condition fails (the point of Dempe and Dutta's example)",
            F_verified=0.0,
        )
    )
    add(
        P(
            "fl_1995_01",
            "Falk and Liu (1995), On bilevel programming, Part I, Math. Program. 70, second "
            "example",
            2,
            2,
            lambda x, y: x[0] ** 2 - 3 * x[0] + x[1] ** 2 - 3 * x[1] + y[0] ** 2 + y[1] ** 2,
            lambda x, y: (y[0] - x[0]) ** 2 + (y[1] - x[1]) ** 2,
            None,
            None,
            _box(0, 10, 2),
            _box(0.5, 1.5, 2),
            -2.25,
            0.0,
            (0.75, 0.75),
            (0.75, 0.75),
            source=_BASB.format("QP-QP/fl_1995_01.mod"),
        )
    )
    add(
        P(
            "fz_1998_01",
            "Gumus and Floudas (2001), Global optimization of nonlinear bilevel programming "
            "problems, J. Glob. Optim. 20(1), Example 2",
            1,
            2,
            lambda x, y: x[0] ** 3 * y[0] + y[1],
            lambda x, y: -y[1],
            None,
            lambda x, y: _v(x[0] * y[0] - 10, y[0] ** 2 + x[0] * y[1] - 1),
            _box(0, 1, 1),
            ((-1.0, 0.0), (1.0, 100.0)),
            1.0,
            -1.0,
            (1.0,),
            (0.0, 1.0),
            source=_BASB.format("NLP-NLP/fz_1998_01.mod"),
        )
    )
    add(
        P(
            "gf_2001_01",
            "Gumus and Floudas (2001), Global optimization of nonlinear bilevel programming "
            "problems, J. Glob. Optim. 20(1), Example 5",
            1,
            2,
            lambda x, y: x[0],
            lambda x, y: -y[0] + 0.5864 * y[0] ** (2 / 3),
            None,
            lambda x, y: _v(
                0.0332333 / y[1] + 0.1 * y[0] - 1,
                4 * x[0] / y[1] + 2 * x[0] ** (-0.71) / y[1] + 0.0332333 * x[0] ** (-1.3) - 1,
            ),
            _box(0.1, 10, 1),
            _box(0.1, 10.0001, 2),
            0.19,
            -7.25,
            (0.194,),
            (9.97, 10.0),
            x0=(0.5,),
            source=_BASB.format("LP-NLP/gf_2001_01.mod"),
            note="the lower level is infeasible for x < x* (and at the centre of X), hence the "
            "starting point x0 = 0.5; F* = 0.19 is listed rounded (x* = 0.194)",
        )
    )
    add(
        P(
            "lmp_1987_01",
            "Lucchetti, Mignanego and Pieri (1987), Optimization 18(6), Example 4.1",
            1,
            1,
            lambda x, y: 0.5 * (1 - x[0]) + x[0] * y[0],
            lambda x, y: (x[0] - 1) * y[0],
            None,
            None,
            _box(0, 1, 1),
            _box(0, 1, 1),
            0.0,
            0.0,
            (1.0,),
            (0.0,),
            source=_BASB.format("QP-QP/lmp_1987_01.mod"),
            note="isolated optimum at x = 1, where every y is lower-optimal",
        )
    )
    add(
        P(
            "y_1996_02",
            "Yezza (1996), First-order necessary optimality conditions for general bilevel "
            "programming problems, JOTA 89(1), Example 3.1",
            1,
            1,
            lambda x, y: -(4 * x[0] - 3) * y[0] + 2 * x[0] + 1,
            lambda x, y: -(1 - 4 * x[0]) * y[0] - 2 * x[0] - 2,
            None,
            None,
            _box(0, 1, 1),
            _box(0, 1, 1),
            1.5,
            -2.5,
            (0.25,),
            (0.0,),
            source=_BASB.format("QP-QP/y_1996_02.mod"),
        )
    )
    add(
        P(
            "yz_2010_01",
            "Ye and Zhu (2010), SIAM J. Optim. 20(4), Example 4.2",
            1,
            1,
            lambda x, y: (x[0] - 1) ** 2 + y[0] ** 2,
            lambda x, y: y[0] ** 3 - 3 * y[0],
            None,
            lambda x, y: _v(x[0] - y[0]),
            _box(-3, 2, 1),
            _box(-10, 10, 1),
            1.0,
            -2.0,
            (1.0,),
            (1.0,),
            source=_BASB.format("QP-NLP/yz_2010_01.mod"),
        )
    )
    return out


LITERATURE: dict[str, LiteratureProblem] = {p.name: p for p in _problems()}
"""All literature problems by name."""


def literature_problem(name: str) -> LiteratureProblem:
    """The literature problem called ``name`` (a key of :data:`LITERATURE`)."""
    try:
        return LITERATURE[name]
    except KeyError:
        raise KeyError(
            f"unknown literature problem {name!r}; choose one of {sorted(LITERATURE)}"
        ) from None


_FIELDS = {f.name for f in fields(LiteratureProblem)}
_REQUIRED = {"name", "citation", "n_x", "n_y", "upper", "lower", "F_star"}
_SENSES = {"<= 0": 1, ">= 0": -1}


def _tuple(value: list[float] | None) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _entry(row: dict[str, Any], sign: int) -> LiteratureProblem:
    """One ``[[problem]]`` table of a problem file as a :class:`LiteratureProblem`."""
    name = row.get("name", "?")
    unknown = set(row) - _FIELDS
    missing = _REQUIRED - set(row)
    if unknown or missing:
        raise ValueError(
            f"problem {name!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )
    n_x, n_y = row["n_x"], row["n_y"]
    kw: dict[str, Any] = dict(row)
    try:
        for key in ("upper", "lower"):
            kw[key] = Expression(row[key], n_x, n_y)
        for key in ("upper_ineq", "lower_ineq"):
            if key in row:
                kw[key] = ExpressionRows(tuple(row[key]), n_x, n_y, sign)
    except ValueError as err:
        raise ValueError(f"problem {name!r}, {key}: {err}") from None
    for key in ("x_bounds", "y_bounds"):
        if key in row:
            kw[key] = (_tuple(row[key][0]), _tuple(row[key][1]))
    for key in ("x_star", "y_star", "x0", "y0"):
        kw[key] = _tuple(row.get(key))
    kw.setdefault("f_star", None)
    kw["tags"] = tuple(row.get("tags", ()))
    kw = {"upper_ineq": None, "lower_ineq": None, "x_bounds": None, "y_bounds": None, **kw}
    return LiteratureProblem(**kw)


def load_problems(filename: str) -> dict[str, LiteratureProblem]:
    """The problems of the package data file ``bilevel/problems/<filename>`` by name.

    The file is TOML: a top-level ``constraint_sense`` (``"<= 0"``, or ``">= 0"`` when its
    constraint rows are written ``r_i(x, y) >= 0``; the loaded functions are then ``-r_i``)
    and one ``[[problem]]`` table per problem, whose keys are the fields of
    :class:`LiteratureProblem`: ``upper``/``lower`` are expressions and
    ``upper_ineq``/``lower_ineq`` lists of expressions (one per row) in the grammar of
    :mod:`bilevel.problems._expr`; absent optional keys are ``None``.
    """
    with (resources.files("bilevel.problems") / filename).open("rb") as fh:
        table = tomllib.load(fh)
    sense = table.get("constraint_sense", "<= 0")
    if sense not in _SENSES:
        raise ValueError(f"{filename}: constraint_sense must be one of {sorted(_SENSES)}")
    try:
        problems = [_entry(row, _SENSES[sense]) for row in table["problem"]]
    except ValueError as err:
        raise ValueError(f"{filename}: {err}") from None
    out = {p.name: p for p in problems}
    if len(out) != len(problems):
        raise ValueError(f"{filename}: duplicate problem names")
    return out
