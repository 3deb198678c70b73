"""Published bilevel programs from BOLIB that are not in :data:`~bilevel.problems.LITERATURE`,
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
``g``; so here ``x_bounds = y_bounds = None`` and the constraints are the source's rows
(``_v(...)`` stacks them; the leading minus undoes the ``>= 0`` sign convention of the
conversion). ``x0``/``y0`` are BOLIB's ``xy_init``; ``F_star``/``f_star`` are its
``Ff_optimal``, and ``source`` says whether BOLIB marks the value as the proven optimum
(``optimal``) or the best value reported in the literature (``best known``).

The selection (:data:`BOLIB`, 91 problems: 23 linear, 68 nonlinear): every linear and nonlinear example of BOLIB
version 2 with a listed value, except

* the 53 nonlinear examples that restate a problem of
  :data:`~bilevel.problems.LITERATURE` (same source; the same ``F``, ``f`` and lower-level
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

import math

import torch

from bilevel.problems.literature import LiteratureProblem

__all__ = ["BOLIB", "bolib_problem"]

_T = torch.float64
_SRC = "BOLIB v2 ({}), example {}; value: {}"


def _v(*parts: torch.Tensor | float) -> torch.Tensor:
    """Stack scalar expressions into a 1-D float64 constraint vector."""
    return torch.stack([torch.as_tensor(p, dtype=_T) for p in parts])


def _P(name, citation, n_x, n_y, upper, lower, upper_ineq, lower_ineq, **kw) -> LiteratureProblem:
    return LiteratureProblem(
        name,
        citation,
        n_x,
        n_y,
        upper,
        lower,
        upper_ineq,
        lower_ineq,
        x_bounds=None,
        y_bounds=None,
        **{"x_star": None, "y_star": None, **kw},
    )


def _problems() -> list[LiteratureProblem]:
    out: list[LiteratureProblem] = []
    add = out.append

    # ---------------- linear ----------------
    add(
        _P(
            "AnandalinghamWhite1990",
            "Anandalingam and White (1990)",
            1,
            1,
            lambda x, y: -x[0] - 3 * y[0],
            lambda x, y: 3 * y[0] - x[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + 2 * y[0] - 10,
                    2 * y[0] - x[0] + 6,
                    y[0] - 2 * x[0] + 21,
                    38 - 2 * y[0] - x[0],
                    x[0] - 2 * y[0] + 18,
                    y[0],
                )
            ),
            F_star=-49.0,
            f_star=15.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "AnandalinghamWhite1990", "optimal"),
        )
    )
    add(
        _P(
            "Bard1984a",
            "Bard (1984)",
            1,
            1,
            lambda x, y: x[0] + y[0],
            lambda x, y: -5 * x[0] - y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + y[0] / 2 - 2,
                    x[0] / 4 - y[0] + 2,
                    8 - y[0] / 2 - x[0],
                    2 * y[0] - x[0] + 4,
                    y[0],
                )
            ),
            F_star=3.11111111111111,
            f_star=-6.66666666666667,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "Bard1984a", "optimal"),
        )
    )
    add(
        _P(
            "Bard1984b",
            "Bard (1984)",
            1,
            1,
            lambda x, y: -5 * x[0] - y[0],
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + y[0] / 2 - 2,
                    x[0] / 4 - y[0] + 2,
                    8 - y[0] / 2 - x[0],
                    2 * y[0] - x[0] + 4,
                    y[0],
                )
            ),
            F_star=-37.6,
            f_star=1.6,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "Bard1984b", "optimal"),
        )
    )
    add(
        _P(
            "Bard1991Ex2",
            "Bard (1991), Example 2",
            1,
            2,
            lambda x, y: 10 * y[0] - x[0] - y[1],
            lambda x, y: -y[0] - y[1],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    1 - y[0] - x[0],
                    1 - y[1] - x[0],
                    1 - y[1] - y[0],
                    y[0],
                    y[1],
                )
            ),
            F_star=-1.0,
            f_star=-1.0,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("linear", "Bard1991Ex2", "optimal"),
        )
    )
    add(
        _P(
            "BardFalk1982Ex2",
            "Bard and Falk (1982), Example 2",
            2,
            2,
            lambda x, y: x[1] - 2 * x[0] + y[0] / 2,
            lambda x, y: x[0] + x[1] - 4 * y[0] + y[1],
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * x[0] - y[0] + y[1] - 5 / 2,
                    3 * x[1] - x[0] - y[1] + 2,
                    2 - x[1] - x[0],
                    y[0],
                    y[1],
                )
            ),
            F_star=-3.25,
            f_star=-4.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "BardFalk1982Ex2", "optimal"),
        )
    )
    add(
        _P(
            "BenAyedBlair1990a",
            "Ben-Ayed and Blair (1990)",
            1,
            2,
            lambda x, y: -(3 * x[0]) / 2 - 6 * y[0] - y[1],
            lambda x, y: -y[0] - 5 * y[1],
            lambda x, y: (
                -_v(
                    x[0],
                    1 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    5 - 3 * y[0] - y[1] - x[0],
                    5 - y[0] - 3 * y[1] - 2 * x[0],
                    y[0],
                    y[1],
                )
            ),
            F_star=-2.5,
            f_star=-5.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "BenAyedBlair1990a", "optimal"),
        )
    )
    add(
        _P(
            "BenAyedBlair1990b",
            "Ben-Ayed and Blair (1990)",
            1,
            1,
            lambda x, y: -x[0] - y[0],
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    4 * x[0] + 3 * y[0] - 19,
                    11 - 2 * y[0] - x[0],
                    13 - y[0] - 3 * x[0],
                    y[0],
                )
            ),
            F_star=-6.0,
            f_star=5.0,
            x0=(3.0,),
            y0=(4.0,),
            source=_SRC.format("linear", "BenAyedBlair1990b", "optimal"),
        )
    )
    add(
        _P(
            "BialasKarwan1984a",
            "Bialas and Karwan (1984)",
            1,
            2,
            lambda x, y: -x[0] - y[1],
            lambda x, y: -y[1],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    3 - y[0] - y[1] - x[0],
                    x[0] + y[0] - y[1] - 1,
                    x[0] - y[0] - y[1] + 1,
                    y[0] - x[0] - y[1] + 1,
                    1 / 2 - y[1],
                    y[0],
                    y[1],
                )
            ),
            F_star=-2.0,
            f_star=-0.5,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "BialasKarwan1984a", "optimal"),
        )
    )
    add(
        _P(
            "BialasKarwan1984b",
            "Bialas and Karwan (1984)",
            1,
            1,
            lambda x, y: -y[0],
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + 2 * y[0] - 10,
                    38 - 2 * y[0] - x[0],
                    x[0] - 2 * y[0] + 18,
                    2 * y[0] - x[0] + 6,
                    y[0] - 2 * x[0] + 21,
                    y[0],
                )
            ),
            F_star=-11.0,
            f_star=11.0,
            x0=(10.0,),
            y0=(14.0,),
            source=_SRC.format("linear", "BialasKarwan1984b", "optimal"),
        )
    )
    add(
        _P(
            "CandlerTownsley1982",
            "Candler and Townsley (1982)",
            2,
            3,
            lambda x, y: 4 * y[0] - 4 * x[1] - 8 * x[0] - 40 * y[1] - 4 * y[2],
            lambda x, y: x[0] + 2 * x[1] + y[0] + y[1] + 2 * y[2],
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] - y[1] - y[2] + 1,
                    y[0] - 2 * x[0] - 2 * y[1] + y[2] / 2 + 1,
                    y[1] - 2 * y[0] - 2 * x[1] + y[2] / 2 + 1,
                    y[0],
                    y[1],
                    y[2],
                )
            ),
            F_star=-29.2,
            f_star=3.2,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "CandlerTownsley1982", "optimal"),
        )
    )
    add(
        _P(
            "ClarkWesterberg1988",
            "Clark and Westerberg (1988)",
            1,
            1,
            lambda x, y: x[0] - 4 * y[0],
            lambda x, y: y[0],
            None,
            lambda x, y: (
                -_v(
                    2 * x[0] - y[0],
                    108 - 5 * y[0] - 2 * x[0],
                    3 * y[0] - 2 * x[0] - 4,
                )
            ),
            F_star=-37.0,
            f_star=14.0,
            x0=(20.0,),
            y0=(0.0,),
            source=_SRC.format("linear", "ClarkWesterberg1988", "optimal"),
        )
    )
    add(
        _P(
            "ClarkWesterberg1990b",
            "Clark and Westerberg (1990)",
            1,
            2,
            lambda x, y: 2 * y[1] - 3 * y[0] - x[0],
            lambda x, y: -y[0],
            lambda x, y: (
                -_v(
                    x[0],
                    8 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    4 - y[0],
                    2 * x[0] - y[0] - 4 * y[1] + 16,
                    2 * y[1] - 3 * y[0] - 8 * x[0] + 48,
                    2 * x[0] - y[0] + 3 * y[1] - 12,
                )
            ),
            F_star=-13.0,
            f_star=-4.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "ClarkWesterberg1990b", "optimal"),
        )
    )
    add(
        _P(
            "GlackinEtal2009",
            "Glackin et al. (2009)",
            2,
            1,
            lambda x, y: 4 * x[1] - 2 * x[0] + 3 * y[0],
            lambda x, y: -y[0],
            lambda x, y: (
                -_v(
                    x[1] - x[0] - 1,
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    4 - x[1] - y[0] - x[0],
                    6 - 2 * x[1] - y[0] - 2 * x[0],
                    y[0],
                )
            ),
            F_star=6.0,
            f_star=0.0,
            x0=(
                0.0,
                1.0,
            ),
            y0=(0.0,),
            source=_SRC.format("linear", "GlackinEtal2009", "optimal"),
        )
    )
    add(
        _P(
            "HaurieSavardWhite1990",
            "Haurie, Savard and White (1990)",
            1,
            1,
            lambda x, y: x[0] + 5 * y[0],
            lambda x, y: -y[0],
            None,
            lambda x, y: (
                -_v(
                    3 * x[0] - 2 * y[0] + 6,
                    48 - 4 * y[0] - 3 * x[0],
                    5 * y[0] - 2 * x[0] + 9,
                    x[0] + y[0] - 8,
                )
            ),
            F_star=27.0,
            f_star=-3.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "HaurieSavardWhite1990", "optimal"),
        )
    )
    add(
        _P(
            "HuHuangZhang2009",
            "Hu, Huang and Zhang (2009)",
            1,
            2,
            lambda x, y: -4 * x[0] - y[0] - y[1],
            lambda x, y: -x[0] - 3 * y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    25 / 9 - y[0] - y[1] - x[0],
                    2 - y[1] - x[0],
                    8 / 9 - y[1] - y[0],
                    y[0],
                    y[1],
                )
            ),
            F_star=-8.44444444444444,
            f_star=-4.55555555555556,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "HuHuangZhang2009", "optimal"),
            F_verified=-8.777777777777779,
            note=(
                "The lower level max y1 over y1 + y2 <= 25/9 - x, y2 <= 2 - x, y1 + y2 <= "
                "8/9, y >= 0 gives y2 = 0, y1 = min(25/9 - x, 8/9), feasible for 0 <= x <= "
                "2; F = -4x - y1 is -4x - 8/9 up to x = 17/9 (the listed -76/9) and -3x - "
                "25/9 beyond, so the optimum is -79/9 at x = 2, y = (7/9, 0) (found by the "
                "solver; tests/test_bolib.py checks it on a grid)."
            ),
        )
    )
    add(
        _P(
            "LanWenShihLee2007",
            "Lan, Wen, Shih and Lee (2007)",
            1,
            1,
            lambda x, y: 2 * x[0] - 11 * y[0],
            lambda x, y: x[0] + 3 * y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * y[0] - x[0] + 4,
                    y[0] - 2 * x[0] + 24,
                    96 - 4 * y[0] - 3 * x[0],
                    126 - 7 * y[0] - x[0],
                    4 * x[0] - 5 * y[0] + 65,
                    x[0] + 4 * y[0] - 8,
                    y[0],
                )
            ),
            F_star=-85.0855,
            f_star=50.174,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "LanWenShihLee2007", "best known"),
        )
    )
    add(
        _P(
            "LiuHart1994",
            "Liu and Hart (1994)",
            1,
            1,
            lambda x, y: -x[0] - 3 * y[0],
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] - y[0] + 3,
                    12 - 2 * y[0] - x[0],
                    y[0] - 4 * x[0] + 12,
                    y[0],
                )
            ),
            F_star=-16.0,
            f_star=4.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "LiuHart1994", "optimal"),
        )
    )
    add(
        _P(
            "MershaDempe2006Ex2",
            "Mersha and Dempe (2006), Example 2",
            1,
            1,
            lambda x, y: -x[0] - 2 * y[0],
            lambda x, y: -y[0],
            lambda x, y: (
                -_v(
                    2 * x[0] - 3 * y[0] + 12,
                    14 - y[0] - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    3 * x[0] - y[0] - 3,
                    30 - y[0] - 3 * x[0],
                )
            ),
            F_star=-20.0,
            f_star=-6.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "MershaDempe2006Ex2", "optimal"),
        )
    )
    add(
        _P(
            "TuyEtal1993",
            "Tuy et al. (1993)",
            2,
            2,
            lambda x, y: x[1] - 2 * x[0] + y[0] / 2,
            lambda x, y: y[1] - 4 * y[0],
            lambda x, y: (
                -_v(
                    2 - x[1] - x[0],
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * x[0] - y[0] + y[1] - 5 / 2,
                    3 * x[1] - x[0] - y[1] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-3.25,
            f_star=-6.0,
            x0=(
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("linear", "TuyEtal1993", "optimal"),
        )
    )
    add(
        _P(
            "TuyEtal1994",
            "Tuy et al. (1994)",
            2,
            2,
            lambda x, y: 3 * x[0] + 2 * x[1] + y[0] + y[1],
            lambda x, y: 4 * y[0] + y[1],
            lambda x, y: (
                -_v(
                    4 - x[1] - y[0] - y[1] - x[0],
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    3 * x[0] + 5 * x[1] + 6 * y[0] + 2 * y[1] - 15,
                    y[0],
                    y[1],
                )
            ),
            F_star=6.0,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "TuyEtal1994", "optimal"),
        )
    )
    add(
        _P(
            "TuyEtal2007Ex3",
            "Tuy, Migdalas and Hoai-Phuong (2007), Example 3",
            10,
            6,
            lambda x, y: (
                12 * x[0]
                - x[1]
                - 12 * x[2]
                + 13 * x[3]
                + 2 * x[5]
                - 5 * x[7]
                + 6 * x[8]
                - 11 * x[9]
                - 5 * y[0]
                - 6 * y[1]
                - 4 * y[2]
                - 7 * y[3]
            ),
            lambda x, y: 3 * y[0] - 2 * y[1] - 3 * y[2] - 3 * y[3] + y[4] + 6 * y[5],
            lambda x, y: (
                -_v(
                    2 * x[0]
                    + 3 * x[1]
                    - 14 * x[2]
                    + 2 * x[3]
                    + 9 * x[4]
                    - 2 * x[5]
                    - x[6]
                    + 4 * x[7]
                    - 2 * x[9]
                    + 3 * y[0]
                    - 9 * y[1]
                    + 2 * y[2]
                    + 8 * y[3]
                    - y[4]
                    + 8 * y[5]
                    + 30,
                    7 * x[1]
                    - x[0]
                    - 13 * x[2]
                    + 15 * x[4]
                    - 2 * x[5]
                    + 8 * x[6]
                    + 4 * x[7]
                    - 4 * x[8]
                    + 7 * x[9]
                    + 6 * y[0]
                    + 2 * y[1]
                    - 6 * y[2]
                    - 2 * y[3]
                    - 8 * y[4]
                    + 4 * y[5]
                    - 134,
                    x[0],
                    x[1],
                    x[2],
                    x[3],
                    x[4],
                    x[5],
                    x[6],
                    x[7],
                    x[8],
                    x[9],
                )
            ),
            lambda x, y: (
                -_v(
                    5 * x[0]
                    - 7 * x[1]
                    - 4 * x[2]
                    + 2 * x[3]
                    - 3 * x[4]
                    + 9 * x[5]
                    - 9 * x[6]
                    + x[7]
                    + 3 * x[8]
                    - 11 * x[9]
                    - 10 * y[0]
                    + 9 * y[1]
                    + 6 * y[2]
                    - 4 * y[3]
                    - 6 * y[4]
                    + 3 * y[5]
                    + 83,
                    5 * x[1]
                    - 6 * x[0]
                    + 3 * x[2]
                    + 2 * x[3]
                    - 8 * x[4]
                    - 5 * x[5]
                    - 8 * x[6]
                    + 3 * x[7]
                    - 7 * x[8]
                    - 3 * x[9]
                    + 5 * y[0]
                    + 7 * y[1]
                    - y[2]
                    - y[3]
                    + 6 * y[4]
                    - 4 * y[5]
                    + 92,
                    6 * x[0]
                    + 4 * x[1]
                    - 2 * x[2]
                    + 2 * x[4]
                    - 3 * x[5]
                    + 3 * x[6]
                    - 2 * x[7]
                    - 2 * x[8]
                    - 4 * x[9]
                    - 10 * y[0]
                    - 5 * y[1]
                    - 6 * y[2]
                    + 4 * y[3]
                    - 3 * y[4]
                    + y[5]
                    + 168,
                    4 * x[3]
                    - 6 * x[1]
                    - 5 * x[0]
                    - 3 * x[4]
                    + 8 * x[5]
                    - x[6]
                    - 2 * x[8]
                    + 3 * x[9]
                    + 4 * y[0]
                    + 3 * y[1]
                    + 4 * y[2]
                    + 4 * y[3]
                    - y[4]
                    - y[5]
                    - 96,
                    11 * x[1]
                    - 11 * x[0]
                    - 4 * x[2]
                    - 5 * x[3]
                    + 10 * x[4]
                    + 6 * x[5]
                    - 14 * x[6]
                    + 7 * x[7]
                    + 11 * x[8]
                    + 3 * x[9]
                    + 10 * y[0]
                    + 7 * y[1]
                    - 7 * y[2]
                    - 7 * y[3]
                    - 2 * y[4]
                    - 7 * y[5]
                    - 133,
                    12 * x[1]
                    - 9 * x[0]
                    + 4 * x[2]
                    + 10 * x[3]
                    - 2 * x[4]
                    - 8 * x[5]
                    - 5 * x[6]
                    + 11 * x[7]
                    + 4 * x[8]
                    - x[9]
                    - 2 * y[0]
                    + 5 * y[1]
                    - 10 * y[2]
                    - y[3]
                    - 4 * y[4]
                    - 5 * y[5]
                    + 89,
                    2 * x[1]
                    - 7 * x[0]
                    + 6 * x[2]
                    + 11 * x[4]
                    - x[5]
                    + 2 * x[6]
                    + 2 * x[7]
                    + x[8]
                    + 2 * x[9]
                    + 5 * y[0]
                    + 5 * y[1]
                    + 6 * y[2]
                    + 5 * y[3]
                    - y[4]
                    + 12 * y[5]
                    - 192,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                )
            ),
            F_star=-467.4613,
            f_star=-11.6194,
            x0=(
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
            ),
            y0=(
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
                10.0,
            ),
            source=_SRC.format("linear", "TuyEtal2007Ex3", "best known"),
        )
    )
    add(
        _P(
            "VisweswaranEtal1996",
            "Visweswaran et al. (1996)",
            1,
            1,
            lambda x, y: x[0] + y[0],
            lambda x, y: -5 * x[0] - y[0],
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + y[0] / 2 - 2,
                    x[0] / 4 - y[0] + 2,
                    8 - y[0] / 2 - x[0],
                    2 * y[0] - x[0] + 2,
                    y[0],
                )
            ),
            F_star=3.11111111111111,
            f_star=-6.66666666666667,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("linear", "VisweswaranEtal1996", "optimal"),
        )
    )
    add(
        _P(
            "WangJiaoLi2005",
            "Wang, Jiao and Li (2005)",
            1,
            2,
            lambda x, y: -100 * x[0] - 1000 * y[0],
            lambda x, y: -y[0] - y[1],
            lambda x, y: (
                -_v(
                    x[0],
                    1 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[1] - y[0] - x[0] + 1,
                    1 - y[1] - y[0],
                )
            ),
            F_star=-1000.0,
            f_star=-1.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("linear", "WangJiaoLi2005", "optimal"),
        )
    )

    # ---------------- nonlinear ----------------
    add(
        _P(
            "AllendeStill2013",
            "Allende and Still (2013), Solving bilevel programs with the KKT-approach, Math. Program. 138",
            2,
            2,
            lambda x, y: (x[0] - 1) ** 2 + (x[1] - 1) ** 2 + y[0] ** 2 + y[1] ** 2,
            lambda x, y: y[0] ** 2 - 2 * x[1] * y[1] - 2 * x[0] * y[0] + y[1] ** 2,
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    2 - x[0],
                    y[0],
                    y[1],
                )
            ),
            lambda x, y: (
                -_v(
                    1 / 4 - (y[0] - 1) ** 2,
                    1 / 4 - (y[1] - 1) ** 2,
                )
            ),
            F_star=1.0,
            f_star=-0.5,
            x0=(
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "AllendeStill2013", "optimal"),
        )
    )
    add(
        _P(
            "AnEtal2009",
            "An, Tao, Canh and Thoai (2009), DC programming techniques for solving a class of nonlinear bilevel programs, J. Glob. Optim. 44(3)",
            2,
            2,
            lambda x, y: (
                y[0]
                * ((3 * x[0]) / 5 + (3 * x[1]) / 10 + y[1] / 5 + 4291154981323245 / 35184372088832)
                + y[1]
                * ((9 * x[1]) / 10 - (11 * x[0]) / 10 + y[0] / 5 + 2632215443732955 / 8796093022208)
                + x[1]
                * (
                    (11 * x[0]) / 5
                    - (11 * x[1]) / 10
                    + (3 * y[0]) / 10
                    + (9 * y[1]) / 10
                    + 1539959097364463 / 17592186044416
                )
                + x[0]
                * (
                    (11 * x[1]) / 5
                    - (19 * x[0]) / 10
                    + (3 * y[0]) / 5
                    - (11 * y[1]) / 10
                    + 8230897778081839 / 8796093022208
                )
            ),
            lambda x, y: (
                (
                    y[1]
                    * (
                        (1663000605777713 * y[0]) / 140737488355328
                        - (8134052617985469 * y[1]) / 562949953421312
                    )
                )
                / 2
                + y[1]
                * ((1213 * x[0]) / 40 + (1213 * x[1]) / 40 + 1836994362631405 / 140737488355328)
                - y[0]
                * ((357 * x[0]) / 20 - (263 * x[1]) / 40 + 2562904253819351 / 140737488355328)
                + (
                    y[0]
                    * (
                        (5939696217547331 * y[0]) / 281474976710656
                        + (1663000605777713 * y[1]) / 140737488355328
                    )
                )
                / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    y[0],
                    y[1],
                    8666302095696949 / 140737488355328
                    - (1376100198890959 * y[0]) / 281474976710656
                    - (523855893905969 * y[1]) / 70368744177664
                    - (1094625222180303 * x[1]) / 281474976710656,
                    2 * x[0]
                    - (1235362710535631 * x[1]) / 140737488355328
                    + (1438649568215601 * y[0]) / 281474976710656
                    - (88889 * y[1]) / 100000
                    + 4 / 5,
                )
            ),
            lambda x, y: (
                -_v(
                    1394082931465561 / 35184372088832
                    - (523855893905969 * x[1]) / 70368744177664
                    - (1094625222180303 * y[0]) / 281474976710656
                    - (88889 * y[1]) / 50000
                    - 5 * x[0],
                    (2345623867672211 * x[0]) / 281474976710656
                    - 3 * x[1]
                    - (1939050152312271 * y[0]) / 281474976710656
                    - (1720124544926257 * y[1]) / 281474976710656
                    + 60,
                    (2439450736408941 * x[0]) / 281474976710656
                    + (602044012936655 * x[1]) / 70368744177664
                    + (1501198937540243 * y[0]) / 281474976710656
                    + 7 * y[1]
                    - 2546566742483623 / 35184372088832,
                    (1438649568215601 * x[1]) / 281474976710656
                    - (453487149728305 * x[0]) / 70368744177664
                    - (36111 * y[0]) / 25000
                    - (312749661372977 * y[1]) / 70368744177664
                    + 4866389910103093 / 281474976710656,
                )
            ),
            F_star=2251.55,
            f_star=565.78,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "AnEtal2009", "optimal"),
        )
    )
    add(
        _P(
            "Bard1988Ex2",
            "Bard (1988), Convex two-level optimization, Math. Program. 40, Example 2",
            4,
            4,
            lambda x, y: (y[1] + y[3]) * (y[1] + y[3] - 160) + (y[0] + y[2]) * (y[0] + y[2] - 200),
            lambda x, y: (y[0] - 4) ** 2 + (y[3] - 2) ** 2 + (y[1] - 13) ** 2 + (y[2] - 35) ** 2,
            lambda x, y: (
                -_v(
                    40 - x[1] - x[2] - x[3] - x[0],
                    10 - x[0],
                    5 - x[1],
                    15 - x[2],
                    20 - x[3],
                    x[0],
                    x[1],
                    x[2],
                    x[3],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] - (2 * y[0]) / 5 - (7 * y[1]) / 10,
                    x[1] - (3 * y[0]) / 5 - (3 * y[1]) / 10,
                    x[2] - (2 * y[2]) / 5 - (7 * y[3]) / 10,
                    x[3] - (3 * y[2]) / 5 - (3 * y[3]) / 10,
                    20 - y[0],
                    20 - y[1],
                    40 - y[2],
                    40 - y[3],
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                )
            ),
            F_star=-6600.0,
            f_star=54.0,
            x0=(
                5.0,
                5.0,
                15.0,
                15.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Bard1988Ex2", "optimal"),
        )
    )
    add(
        _P(
            "BardBook1998",
            "Bard (1998), Practical Bilevel Optimization, Kluwer",
            2,
            2,
            lambda x, y: (y[0] - x[0] + 20) ** 2 + (y[1] - x[1] + 20) ** 2,
            lambda x, y: 2 * x[0] + 2 * x[1] - 3 * y[0] - 3 * y[1] - 60,
            lambda x, y: (
                -_v(
                    50 - x[0],
                    50 - x[1],
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * y[1] - x[1] - y[0] - x[0] + 40,
                    x[0] - 2 * y[0] - 10,
                    x[1] - 2 * y[1] - 10,
                    20 - y[0],
                    20 - y[1],
                    y[0] + 10,
                    y[1] + 10,
                )
            ),
            F_star=0.0,
            f_star=5.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "BardBook1998", "optimal"),
        )
    )
    add(
        _P(
            "CalamaiVicente1994a",
            "Calamai and Vicente (1994), Generating quadratic bilevel programming test problems, ACM TOMS 20(1)",
            1,
            1,
            lambda x, y: (x[0] - 1) ** 2 / 2 + y[0] ** 2 / 2,
            lambda x, y: y[0] / 2 - x[0] * y[0],
            None,
            lambda x, y: (
                -_v(
                    y[0] - x[0] + 1,
                    x[0] + y[0] - 1,
                    1 - y[0] - x[0],
                )
            ),
            F_star=0.0,
            f_star=0.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "CalamaiVicente1994a", "optimal"),
        )
    )
    add(
        _P(
            "CalamaiVicente1994b",
            "Calamai and Vicente (1994), Generating quadratic bilevel programming test problems, ACM TOMS 20(1)",
            4,
            2,
            lambda x, y: (
                (x[0] - 1) ** 2 / 2
                + (x[1] - 1) ** 2 / 2
                + (x[2] - 1) ** 2 / 2
                + (x[3] - 1) ** 2 / 2
                + y[0] ** 2 / 2
                + y[1] ** 2 / 2
            ),
            lambda x, y: y[0] ** 2 / 2 - x[1] * y[1] - x[0] * y[0] + y[1] ** 2 / 2,
            None,
            lambda x, y: (
                -_v(
                    y[0] - x[0] + 1,
                    y[1] - x[1] + 1,
                    3 / 2 - y[0] - x[0],
                    3 - y[1] - x[1],
                    x[0] + y[0] - 1,
                    x[1] + y[1] - 1,
                )
            ),
            F_star=0.3125,
            f_star=-0.4063,
            x0=(
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "CalamaiVicente1994b", "optimal"),
        )
    )
    add(
        _P(
            "CalamaiVicente1994c",
            "Calamai and Vicente (1994), Generating quadratic bilevel programming test problems, ACM TOMS 20(1)",
            4,
            2,
            lambda x, y: (
                (x[1] * ((162 * x[0]) / 5 + (554 * x[1]) / 5 - (216 * x[2]) / 5 - (72 * x[3]) / 5))
                / 2
                - (238 * x[1]) / 25
                - (248 * x[2]) / 25
                - (416 * x[3]) / 25
                - (214 * x[0]) / 25
                + (
                    x[0]
                    * ((986 * x[0]) / 5 + (162 * x[1]) / 5 - (648 * x[2]) / 5 - (216 * x[3]) / 5)
                )
                / 2
                - (
                    x[3]
                    * ((216 * x[0]) / 5 + (72 * x[1]) / 5 + (162 * x[2]) / 5 - (1946 * x[3]) / 5)
                )
                / 2
                - (
                    x[2]
                    * ((648 * x[0]) / 5 + (216 * x[1]) / 5 - (1514 * x[2]) / 5 + (162 * x[3]) / 5)
                )
                / 2
                + 50 * y[0] ** 2
                + 50 * y[1] ** 2
                + 2
            ),
            lambda x, y: (
                50 * y[0] ** 2
                - y[0] * ((662 * x[0]) / 5 + (54 * x[1]) / 5 - (216 * x[2]) / 5 - (72 * x[3]) / 5)
                - y[1] * ((54 * x[0]) / 5 + (518 * x[1]) / 5 - (72 * x[2]) / 5 - (24 * x[3]) / 5)
                + 50 * y[1] ** 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (108 * x[2]) / 25
                    - (27 * x[1]) / 25
                    - (331 * x[0]) / 25
                    + (36 * x[3]) / 25
                    + 10 * y[0]
                    + 1,
                    (36 * x[2]) / 25
                    - (259 * x[1]) / 25
                    - (27 * x[0]) / 25
                    + (12 * x[3]) / 25
                    + 10 * y[1]
                    + 1,
                    (108 * x[2]) / 25
                    - (27 * x[1]) / 25
                    - (331 * x[0]) / 25
                    + (36 * x[3]) / 25
                    - 10 * y[0]
                    + 3 / 2,
                    (36 * x[2]) / 25
                    - (259 * x[1]) / 25
                    - (27 * x[0]) / 25
                    + (12 * x[3]) / 25
                    - 10 * y[1]
                    + 3,
                    (331 * x[0]) / 25
                    + (27 * x[1]) / 25
                    - (108 * x[2]) / 25
                    - (36 * x[3]) / 25
                    + 10 * y[0]
                    - 1,
                    (27 * x[0]) / 25
                    + (259 * x[1]) / 25
                    - (36 * x[2]) / 25
                    - (12 * x[3]) / 25
                    + 10 * y[1]
                    - 1,
                )
            ),
            F_star=0.3125,
            f_star=-0.4063,
            x0=(
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "CalamaiVicente1994c", "optimal"),
        )
    )
    add(
        _P(
            "CalveteGale1999P1",
            "Calvete and Gale (1999), The bilevel linear/linear fractional programming problem, EJOR 114(1), instance P1",
            2,
            3,
            lambda x, y: 4 * y[0] - 4 * x[1] - 8 * x[0] - 40 * y[1] - 4 * y[2],
            lambda x, y: (
                (x[0] + x[1] + 2 * y[0] - y[1] + y[2] + 1) / (2 * x[0] + y[0] + y[1] - 3 * y[2] + 6)
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                    y[2],
                    y[0] - y[1] - y[2] + 1,
                    y[0] - 2 * x[0] - 2 * y[1] + y[2] / 2 + 1,
                    y[1] - 2 * y[0] - 2 * x[1] + y[2] / 2 + 1,
                )
            ),
            F_star=-29.2,
            f_star=0.31,
            x0=(
                0.0,
                0.5,
            ),
            y0=(
                0.0,
                0.5,
                0.0,
            ),
            source=_SRC.format("nonlinear", "CalveteGale1999P1", "optimal"),
        )
    )
    add(
        _P(
            "DempeDutta2012Ex31",
            "Dempe and Dutta (2012), Is bilevel programming a special case of a mathematical program with complementarity constraints?, Math. Program. 131, Example 3.1",
            2,
            2,
            lambda x, y: -y[1],
            lambda x, y: (y[1] + 1) ** 2 + y[0] ** 2,
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    -y[0] * y[1],
                    y[0] * y[1],
                )
            ),
            lambda x, y: (
                -_v(
                    1 - (x[0] - y[1] + 1) ** 2 - (x[0] - y[0]) ** 2,
                    1 - (x[1] + y[0]) ** 2 - (x[1] - y[1] + 1) ** 2,
                )
            ),
            F_star=-1.0,
            f_star=4.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeDutta2012Ex31", "optimal"),
            F_verified=-2.0,
            note=(
                "The lower feasible set is the intersection of the unit disks centred at "
                "(x1, x1 + 1) and (-x2, x2 + 1); at x = (1, 1) they touch in the single "
                "point y = (0, 2), which is therefore lower-optimal and satisfies y1 y2 = "
                "0: F = -2 < -1 (found by the solver; along x1 = x2 = t the lower solution "
                "is (0, t + 1 - sqrt(1 - t^2)), and a grid over x in [0, 1.42]^2 with a "
                "convex lower solve per point finds nothing below -2)."
            ),
        )
    )
    add(
        _P(
            "DempeEtal2012",
            "Dempe, Mordukhovich and Zemkoho (2012), Sensitivity analysis for two-level value functions with applications to bilevel programming, SIAM J. Optim. 22(4)",
            1,
            1,
            lambda x, y: x[0],
            lambda x, y: x[0] * y[0],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    1 - y[0],
                )
            ),
            F_star=-1.0,
            f_star=-1.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "DempeEtal2012", "optimal"),
        )
    )
    add(
        _P(
            "DempeFranke2011Ex41",
            "Dempe and Franke (2011), An algorithm for solving a class of bilevel programming problems, Preprint 2011-04, TU Bergakademie Freiberg, Example 4.1",
            2,
            2,
            lambda x, y: x[0] + y[0] ** 2 + y[1] ** 2,
            lambda x, y: x[0] * y[0] + x[1] * y[1],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                    x[1] + 1,
                    -x[1] - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    2 * y[0] - y[1],
                    2 - y[0],
                    2 - y[1],
                    y[1],
                )
            ),
            F_star=5.0,
            f_star=-2.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeFranke2011Ex41", "optimal"),
        )
    )
    add(
        _P(
            "DempeFranke2011Ex42",
            "Dempe and Franke (2011), An algorithm for solving a class of bilevel programming problems, Preprint 2011-04, TU Bergakademie Freiberg, Example 4.2",
            2,
            2,
            lambda x, y: x[0] + (y[0] - 1) ** 2 + y[1] ** 2,
            lambda x, y: x[0] * y[0] + x[1] * y[1],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                    x[1] + 1,
                    -x[1] - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] - y[1] + 1,
                    7 / 2 - y[1] - y[0],
                    2 - y[1],
                )
            ),
            F_star=2.13,
            f_star=-3.5,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeFranke2011Ex42", "optimal"),
        )
    )
    add(
        _P(
            "DempeFranke2014Ex38",
            "Dempe and Franke (2014), Solution algorithm for an optimistic linear Stackelberg problem, Comput. Oper. Res. 41, Example 3.8",
            2,
            2,
            lambda x, y: 2 * x[0] + x[1] + 2 * y[0] - y[1],
            lambda x, y: x[0] * y[0] + x[1] * y[1],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                    x[1] + 1,
                    -x[1] - 3 / 4,
                )
            ),
            lambda x, y: (
                -_v(
                    2 * y[0] - y[1],
                    2 - y[0],
                    2 - y[1],
                    y[1],
                )
            ),
            F_star=-1.0,
            f_star=-4.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeFranke2014Ex38", "optimal"),
        )
    )
    add(
        _P(
            "DempeLohse2011Ex31a",
            "Dempe and Lohse (2011), Dependence of bilevel programming on irrelevant data, TU Bergakademie Freiberg, Example 31a",
            2,
            2,
            lambda x, y: (x[0] - 1 / 2) ** 2 - 3 * y[1] - 3 * y[0] + (x[1] - 1 / 2) ** 2,
            lambda x, y: x[0] * y[0] + x[1] * y[1],
            None,
            lambda x, y: (
                -_v(
                    2 - y[1] - y[0],
                    y[0] - y[1],
                    y[0],
                    y[1],
                )
            ),
            F_star=-5.5,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeLohse2011Ex31a", "optimal"),
            F_verified=-5.75,
            note=(
                "The lower level minimises x1 y1 + x2 y2 over the triangle (0, 0), (2, 0), "
                "(1, 1) (rows y1 + y2 <= 2, y2 <= y1, y >= 0). At x = (0, 1/2) its solutions "
                "are [0, 2] x {0}, and the optimistic choice y = (2, 0) gives F = 1/4 - 6 = "
                "-5.75, below the listed -5.5 at (0, 0, 1, 1): the vertex (2, 0) is "
                "lower-optimal iff x1 <= 0 and x1 <= x2, and the nearest such x to (1/2, 1/2) "
                "in F = |x - 1/2|^2 - 3 (y1 + y2) is (0, 1/2); the vertex (1, 1) gives -5.5 "
                "(found by the solver)."
            ),
        )
    )
    add(
        _P(
            "DempeLohse2011Ex31b",
            "Dempe and Lohse (2011), Dependence of bilevel programming on irrelevant data, TU Bergakademie Freiberg, Example 31b",
            3,
            3,
            lambda x, y: (
                (x[0] - 1 / 2) ** 2
                - 3 * y[1]
                - 6 * y[2]
                - 3 * y[0]
                + (x[1] - 1 / 2) ** 2
                + x[2] ** 2
            ),
            lambda x, y: x[0] * y[0] + x[1] * y[1] + x[2] * y[2],
            None,
            lambda x, y: (
                -_v(
                    2 - y[1] - y[2] - y[0],
                    y[0] - y[1],
                    y[0],
                    y[1],
                    y[2],
                )
            ),
            F_star=-12.0,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "DempeLohse2011Ex31b", "optimal"),
        )
    )
    add(
        _P(
            "GumusFloudas2001Ex3",
            "Gumus and Floudas (2001), Global optimization of nonlinear bilevel programming problems, J. Glob. Optim. 20(1), Example 3",
            2,
            3,
            lambda x, y: 4 * y[0] - 4 * x[1] - 8 * x[0] - 40 * y[1] - 4 * y[2],
            lambda x, y: (
                (x[0] + x[1] + 2 * y[0] - y[1] + y[2] + 1) / (2 * x[0] + y[0] + y[1] - 3 * y[2] + 6)
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    2 - x[0],
                    2 - x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                    y[2],
                    2 - y[0],
                    2 - y[1],
                    2 - y[2],
                    y[0] - y[1] - y[2] + 1,
                    y[0] - 2 * x[0] - 2 * y[1] + y[2] / 2 + 1,
                    y[1] - 2 * y[0] - 2 * x[1] + y[2] / 2 + 1,
                )
            ),
            F_star=-29.2,
            f_star=0.31,
            x0=(
                0.0,
                0.5,
            ),
            y0=(
                0.0,
                0.5,
                0.0,
            ),
            source=_SRC.format("nonlinear", "GumusFloudas2001Ex3", "optimal"),
        )
    )
    add(
        _P(
            "HatzEtal2013",
            "Hatz, Leyffer, Schloder and Bock (2013), Regularizing bilevel nonlinear programs by lifting, Argonne preprint",
            1,
            2,
            lambda x, y: 2 * y[0] - x[0] + y[1],
            lambda x, y: (x[0] - y[0]) ** 2 + y[1] ** 2,
            None,
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                )
            ),
            F_star=0.0,
            f_star=0.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "HatzEtal2013", "optimal"),
        )
    )
    add(
        _P(
            "HendersonQuandt1958",
            "Henderson and Quandt (1958), Microeconomic Theory: a Mathematical Approach, McGraw-Hill",
            1,
            1,
            lambda x, y: x[0] * (x[0] / 2 + y[0] / 2 - 95),
            lambda x, y: y[0] * (x[0] / 2 + y[0] - 100),
            lambda x, y: (
                -_v(
                    200 - x[0],
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                )
            ),
            F_star=-3266.67,
            f_star=-711.11,
            x0=(0.0,),
            y0=(0.0,),
            source=_SRC.format("nonlinear", "HendersonQuandt1958", "best known"),
        )
    )
    add(
        _P(
            "HenrionSurowiec2011",
            "Henrion and Surowiec (2011), On calmness conditions in convex bilevel programming, Appl. Anal. 90(6) (c = 0)",
            1,
            1,
            lambda x, y: x[0] ** 2,
            lambda x, y: -y[0] * (x[0] - y[0] / 2),
            None,
            None,
            F_star=0.0,
            f_star=0.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "HenrionSurowiec2011", "optimal"),
        )
    )
    add(
        _P(
            "IshizukaAiyoshi1992a",
            "Ishizuka and Aiyoshi (1992), Double penalty method for bilevel optimization problems, Ann. Oper. Res. 34",
            1,
            2,
            lambda x, y: x[0] * y[1] ** 2,
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0] + 3 / 2,
                )
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[0] + y[0],
                    x[0] - y[0],
                    y[0] + y[1] + 3 / 2,
                    3 / 2 - y[1] - y[0],
                )
            ),
            F_star=0.0,
            f_star=-1.5,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "IshizukaAiyoshi1992a", "optimal"),
        )
    )
    add(
        _P(
            "LamparielloSagratella2017Ex23",
            "Lampariello and Sagratella (2017), Numerically tractable optimistic bilevel problems, Optimization Online, Example 2.3",
            1,
            2,
            lambda x, y: x[0],
            lambda x, y: (x[0] - y[0]) ** 2 + (y[1] + 1) ** 2,
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[1] - y[0] ** 3,
                    y[1],
                )
            ),
            F_star=-1.0,
            f_star=1.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "LamparielloSagratella2017Ex23", "optimal"),
        )
    )
    add(
        _P(
            "LamparielloSagratella2017Ex31",
            "Lampariello and Sagratella (2017), A bridge between bilevel programs and Nash games, JOTA 174(2), Example 3.1",
            1,
            1,
            lambda x, y: x[0] ** 2 + y[0] ** 2,
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0] - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + y[0] - 1,
                )
            ),
            F_star=1.0,
            f_star=0.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "LamparielloSagratella2017Ex31", "optimal"),
        )
    )
    add(
        _P(
            "LamparielloSagratella2017Ex32",
            "Lampariello and Sagratella (2017), A bridge between bilevel programs and Nash games, JOTA 174(2), Example 3.2",
            1,
            1,
            lambda x, y: x[0] ** 2 + y[0] ** 2,
            lambda x, y: (x[0] + y[0] - 1) ** 2,
            None,
            None,
            F_star=0.5,
            f_star=0.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "LamparielloSagratella2017Ex32", "optimal"),
        )
    )
    add(
        _P(
            "LamparielloSagratella2017Ex33",
            "Lampariello and Sagratella (2017), A bridge between bilevel programs and Nash games, JOTA 174(2), Example 3.3",
            1,
            2,
            lambda x, y: (y[0] + y[1]) ** 2 + x[0] ** 2,
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0] - 1 / 2,
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] + y[0] + y[1] - 1,
                    y[0],
                    y[1],
                )
            ),
            F_star=0.5,
            f_star=0.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "LamparielloSagratella2017Ex33", "optimal"),
        )
    )
    add(
        _P(
            "LamparielloSagratella2017Ex35",
            "Lampariello and Sagratella (2017), A bridge between bilevel programs and Nash games, JOTA 174(2), Example 3.5",
            1,
            1,
            lambda x, y: x[0] ** 2 + y[0] ** 2,
            lambda x, y: -y[0],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    2 - y[0] - 2 * x[0],
                    y[0],
                    1 - y[0],
                )
            ),
            F_star=0.8,
            f_star=-0.4,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "LamparielloSagratella2017Ex35", "optimal"),
        )
    )
    add(
        _P(
            "Mirrlees1999",
            "Mirrlees (1999), The theory of moral hazard and unobservable behaviour: Part I, Rev. Econ. Stud. 66(1)",
            1,
            1,
            lambda x, y: (x[0] - 2) ** 2 + (y[0] - 1) ** 2,
            lambda x, y: -torch.exp(-((y[0] - 1) ** 2)) - x[0] * torch.exp(-((y[0] + 1) ** 2)),
            None,
            lambda x, y: (
                -_v(
                    2 - y[0],
                    y[0] + 2,
                )
            ),
            F_star=1.002,
            f_star=-1.02,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "Mirrlees1999", "optimal"),
        )
    )
    add(
        _P(
            "MitsosBarton2006Ex323",
            "Mitsos and Barton (2006), A test set for bilevel programs, technical report, MIT, Example 3.23",
            1,
            1,
            lambda x, y: x[0] ** 2,
            lambda x, y: y[0],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    1 - x[0],
                    y[0] - x[0] + 9 * x[0] ** 2 - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] + 1,
                    1 - y[0],
                    -(y[0] ** 2) * (x[0] - 1 / 2),
                )
            ),
            F_star=0.176,
            f_star=-1.0,
            x0=(0.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "MitsosBarton2006Ex323", "optimal"),
        )
    )
    add(
        _P(
            "MitsosBarton2006Ex325",
            "Mitsos and Barton (2006), A test set for bilevel programs, technical report, MIT, Example 3.25",
            2,
            3,
            lambda x, y: x[0] * y[0] + x[1] * y[0] ** 2 - x[0] * x[1] * y[2],
            lambda x, y: x[0] * y[0] ** 2 + x[1] * y[1] * y[2],
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    x[1] + 1,
                    1 - x[0],
                    1 - x[1],
                    x[0] ** 2 - (y[0] * y[1]) / 10,
                    -x[1] * y[0] ** 2,
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] + 1,
                    y[1] + 1,
                    y[2] + 1,
                    1 - y[0],
                    1 - y[1],
                    1 - y[2],
                    y[1] * y[2] - y[0] ** 2,
                    x[0] * y[0] - y[1] ** 2 * y[2],
                    y[2] ** 2 - 1 / 10,
                )
            ),
            F_star=-1.0,
            f_star=-2.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "MitsosBarton2006Ex325", "best known"),
        )
    )
    add(
        _P(
            "MitsosBarton2006Ex327",
            "Mitsos and Barton (2006), A test set for bilevel programs, technical report, MIT, Example 3.27",
            5,
            5,
            lambda x, y: (
                x[0] ** 2
                + x[1] ** 2
                + x[2] ** 2
                + x[3] ** 2
                + x[4] ** 2
                + y[0] ** 2
                + y[1] ** 2
                + y[2] ** 2
                + y[3] ** 2
                + y[4] ** 2
            ),
            lambda x, y: (
                y[2] / 10
                + y[1] ** 2 * (x[0] + x[1])
                + y[0] ** 3
                + x[2] * x[3] * x[4] * (y[3] ** 2 + y[4] ** 2)
            ),
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    x[1] + 1,
                    x[2] + 1,
                    x[3] + 1,
                    x[4] + 1,
                    1 - x[0],
                    1 - x[1],
                    1 - x[2],
                    1 - x[3],
                    1 - x[4],
                    x[0] - y[0] * y[1],
                    torch.exp(x[1]) - y[2] - x[0],
                    -x[1] * y[0] ** 2,
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] + 1,
                    y[1] + 1,
                    y[2] + 1,
                    y[3] + 1,
                    y[4] + 1,
                    1 - y[0],
                    1 - y[1],
                    1 - y[2],
                    1 - y[3],
                    1 - y[4],
                    3 / 10 - y[0] * y[1],
                    y[2] ** 2 - x[0] + 1 / 5,
                    torch.exp(y[2]) - y[3] * y[4] + 1 / 10,
                )
            ),
            F_star=2.0,
            f_star=-1.1,
            x0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "MitsosBarton2006Ex327", "best known"),
        )
    )
    add(
        _P(
            "MorganPatrone2006a",
            "Morgan and Patrone (2006), Stackelberg problems: subgame perfect equilibria via Tikhonov regularization, Advances in Dynamic Games",
            1,
            1,
            lambda x, y: -x[0] - y[0],
            lambda x, y: x[0] * y[0],
            lambda x, y: (
                -_v(
                    x[0] + 1 / 2,
                    1 / 2 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] + 1,
                    1 - y[0],
                )
            ),
            F_star=-1.0,
            f_star=0.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "MorganPatrone2006a", "optimal"),
        )
    )
    add(
        _P(
            "MuuQuy2003Ex1",
            "Muu and Quy (2003), A global optimization method for solving convex quadratic bilevel programming problems, J. Glob. Optim. 26(2), Example 1",
            1,
            2,
            lambda x, y: x[0] ** 2 - 4 * x[0] + y[0] ** 2 + y[1] ** 2,
            lambda x, y: (
                y[0] * y[1] - y[0] * (3 * x[0] - 1) + y[1] * (x[0] + 1) + y[0] ** 2 + y[1] ** 2 / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    2 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * x[0] - 2 * y[0] - y[1] + 1,
                    y[0],
                    y[1],
                )
            ),
            F_star=-2.0769,
            f_star=-0.5868,
            x0=(2.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "MuuQuy2003Ex1", "best known"),
        )
    )
    add(
        _P(
            "MuuQuy2003Ex2",
            "Muu and Quy (2003), A global optimization method for solving convex quadratic bilevel programming problems, J. Glob. Optim. 26(2), Example 2",
            2,
            3,
            lambda x, y: 4 * x[1] - 7 * x[0] - 4 * y[1] - y[0] * y[2] + y[0] ** 2 + y[2] ** 2,
            lambda x, y: (
                y[0] * y[1]
                - y[0] * (3 * x[0] - 1)
                + y[1] * (x[1] + 1)
                + y[0] ** 2
                + y[1] ** 2 / 2
                + y[2] ** 2 / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    1 - x[1] - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    2 * x[1] - x[0] - 2 * y[0] - y[1] + y[2] - 2,
                    y[0],
                    y[1],
                    y[2],
                )
            ),
            F_star=0.6426,
            f_star=1.6708,
            x0=(
                0.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "MuuQuy2003Ex2", "best known"),
        )
    )
    add(
        _P(
            "NetworkDesignP1",
            "network design problem (BOLIB v2 application example), instance P1",
            5,
            5,
            lambda x, y: (
                100 * x[0]
                + 100 * x[1]
                + 100 * x[2]
                + 100 * x[3]
                + 100 * x[4]
                + y[2] * (y[2] / (x[2] + 1) + 10)
                + y[0] * (y[0] / (x[0] + 1) + 50)
                + y[4] * (y[4] / (x[4] + 1) + 50)
                + (10 * y[1] ** 2) / (x[1] + 1)
                + (10 * y[3] ** 2) / (x[3] + 1)
            ),
            lambda x, y: (
                y[2] * (y[2] / (2 * (x[2] + 1)) + 10)
                + y[0] * (y[0] / (2 * (x[0] + 1)) + 50)
                + y[4] * (y[4] / (2 * (x[4] + 1)) + 50)
                + (5 * y[1] ** 2) / (x[1] + 1)
                + (5 * y[3] ** 2) / (x[3] + 1)
            ),
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    x[1] + 1,
                    x[2] + 1,
                    x[3] + 1,
                    x[4] + 1,
                )
            ),
            lambda x, y: (
                -_v(
                    6 - y[2] - y[4] - y[0],
                    y[2] - y[1] + y[4],
                    y[0] + y[2] - y[3],
                    y[0] + y[2] + y[4] - 6,
                    y[1] - y[2] - y[4],
                    y[3] - y[2] - y[0],
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                )
            ),
            F_star=300.5,
            f_star=419.8,
            x0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "NetworkDesignP1", "best known"),
        )
    )
    add(
        _P(
            "NetworkDesignP2",
            "network design problem (BOLIB v2 application example), instance P2",
            5,
            5,
            lambda x, y: (
                x[0]
                + x[1]
                + x[2]
                + x[3]
                + x[4]
                + y[2] * (y[2] / (x[2] + 1) + 10)
                + y[0] * (y[0] / (x[0] + 1) + 50)
                + y[4] * (y[4] / (x[4] + 1) + 50)
                + (10 * y[1] ** 2) / (x[1] + 1)
                + (10 * y[3] ** 2) / (x[3] + 1)
            ),
            lambda x, y: (
                y[2] * (y[2] / (2 * (x[2] + 1)) + 10)
                + y[0] * (y[0] / (2 * (x[0] + 1)) + 50)
                + y[4] * (y[4] / (2 * (x[4] + 1)) + 50)
                + (5 * y[1] ** 2) / (x[1] + 1)
                + (5 * y[3] ** 2) / (x[3] + 1)
            ),
            lambda x, y: (
                -_v(
                    x[0] + 1,
                    x[1] + 1,
                    x[2] + 1,
                    x[3] + 1,
                    x[4] + 1,
                )
            ),
            lambda x, y: (
                -_v(
                    6 - y[2] - y[4] - y[0],
                    y[2] - y[1] + y[4],
                    y[0] + y[2] - y[3],
                    y[0] + y[2] + y[4] - 6,
                    y[1] - y[2] - y[4],
                    y[3] - y[2] - y[0],
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                )
            ),
            F_star=142.9,
            f_star=81.95,
            x0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "NetworkDesignP2", "best known"),
        )
    )
    add(
        _P(
            "NieWangYe2017Ex58",
            "Nie, Wang and Ye (2017), Bilevel polynomial programs and semidefinite relaxation methods, SIAM J. Optim. 27(3), Example 5.8",
            4,
            4,
            lambda x, y: (x[0] + x[1] + x[2] + x[3]) * (y[0] + y[1] + y[2] + y[3]),
            lambda x, y: y[2] / 10 + y[3] / 2 + x[0] * y[0] + x[1] * y[1] - y[2] * y[3],
            lambda x, y: (
                -_v(
                    1 - x[1] ** 2 - x[2] ** 2 - x[3] ** 2 - x[0] ** 2,
                    x[3] - y[2] ** 2,
                    x[0] - y[1] * y[3],
                )
            ),
            lambda x, y: (
                -_v(
                    x[1]
                    + x[3]
                    + x[0] ** 2
                    + x[2] ** 2
                    - y[0] ** 2
                    - 2 * y[1] ** 2
                    - 3 * y[2] ** 2
                    - 4 * y[3] ** 2,
                    y[0] * y[3] - y[1] * y[2],
                )
            ),
            F_star=-3.488,
            f_star=-0.862,
            x0=(
                0.5442,
                0.4682,
                0.4904,
                0.4942,
            ),
            y0=(
                -0.7792,
                -0.5034,
                -0.2871,
                -0.1855,
            ),
            source=_SRC.format("nonlinear", "NieWangYe2017Ex58", "best known"),
        )
    )
    add(
        _P(
            "NieWangYe2017Ex61",
            "Nie, Wang and Ye (2017), Bilevel polynomial programs and semidefinite relaxation methods, SIAM J. Optim. 27(3), Example 6.1",
            2,
            2,
            lambda x, y: (
                x[1] ** 3 * y[1] - y[0] ** 3 * (3 * x[0] * x[1] - x[0] ** 2) - y[0] ** 2 * y[1]
            ),
            lambda x, y: y[0] * y[1] ** 2 - y[0] ** 2 * (x[1] - x[0] ** 2) - y[1] ** 3,
            lambda x, y: (
                -_v(
                    1 - x[0],
                    1 - x[1],
                    x[0] + 1,
                    x[1] + 1,
                    y[1] - y[0] * (x[0] ** 2 - 1),
                )
            ),
            lambda x, y: (
                -_v(
                    1 - y[1] ** 2 - y[0] ** 2,
                )
            ),
            F_star=-1.022,
            f_star=-1.084,
            x0=(
                1.0,
                -1.0,
            ),
            y0=(
                -1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "NieWangYe2017Ex61", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex1a",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 1a",
            2,
            2,
            lambda x, y: (
                (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2 + x[0] ** 2 / 10 + x[1] ** 2 / 10 - 25 / 2
            ),
            lambda x, y: (
                (y[0] * (y[0] - 2 * y[1])) / 2
                - x[1] * y[1]
                - x[0] * y[0]
                - (y[1] * (2 * y[0] - 5 * y[1])) / 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-8.92,
            f_star=-6.05,
            x0=(
                0.0,
                0.0,
            ),
            y0=(
                3.0,
                3.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex1a", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex1b",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 1b",
            2,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2 + x[0] ** 2 + x[1] ** 2 - 25 / 2,
            lambda x, y: (
                (y[0] * (y[0] - 2 * y[1])) / 2
                - x[1] * y[1]
                - x[0] * y[0]
                - (y[1] * (2 * y[0] - 5 * y[1])) / 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-7.56,
            f_star=-0.58,
            x0=(
                0.0,
                0.0,
            ),
            y0=(
                3.0,
                3.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex1b", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex1c",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 1c",
            2,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2 - 25 / 2,
            lambda x, y: (
                (y[0] * (y[0] + 3 * y[1])) / 2
                - x[1] * y[1]
                - x[0] * y[0]
                + (y[1] * (3 * y[0] + 10 * y[1])) / 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-12.0,
            f_star=-112.71,
            x0=(
                0.0,
                0.0,
            ),
            y0=(
                3.0,
                3.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex1c", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex1d",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 1d",
            2,
            2,
            lambda x, y: (
                (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2 + x[0] ** 2 / 10 + x[1] ** 2 / 10 - 25 / 2
            ),
            lambda x, y: (
                (y[0] * (y[0] + 3 * y[1])) / 2
                - x[1] * y[1]
                - x[0] * y[0]
                + (y[1] * (3 * y[0] + 10 * y[1])) / 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-3.6,
            f_star=-2.0,
            x0=(
                6.0,
                -3.0,
            ),
            y0=(
                3.0,
                3.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex1d", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex1e",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 1e",
            2,
            2,
            lambda x, y: (
                (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2 + x[0] ** 2 / 10 + x[1] ** 2 / 10 - 25 / 2
            ),
            lambda x, y: (
                x[0] * (y[0] - 3 * y[1])
                + (y[0] * (y[0] + 3 * y[1])) / 2
                - x[1] * (2 * y[0] - 3 * y[1])
                + (y[1] * (3 * y[0] + 10 * y[1])) / 2
            ),
            None,
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=-3.15,
            f_star=-16.29,
            x0=(
                6.0,
                -3.0,
            ),
            y0=(
                3.0,
                3.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex1e", "best known"),
            x_star=(-0.4, 0.8),
            y_star=(2.0, 0.0),
            F_verified=-3.92,
            note=(
                "Improves the listed best known value -3.15 (a local method's): at x = "
                "(-0.4, 0.8), y = (2, 0) (x_star, y_star; found by the solver) the lower "
                "level, a strictly convex QP in y, has its minimum (checked with an "
                "interior-point QP solver in tests/test_bolib.py), so the point is "
                "bilevel-feasible with F = -3.92."
            ),
        )
    )
    add(
        _P(
            "Outrata1990Ex2a",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 2a",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                y[0] ** 2 / 2 - x[0] * y[1] - y[0] * ((1333 * x[0]) / 1000 + 3) + y[1] ** 2 / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=0.5,
            f_star=-14.53,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex2a", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex2b",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 2b",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                (y[0] ** 2 * (x[0] + 1)) / 2 - y[0] * ((1333 * x[0]) / 1000 + 3) - x[0] * y[1]
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=0.5,
            f_star=-4.5,
            x0=(5.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex2b", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex2c",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 2c",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                (y[0] ** 2 * (x[0] + 1)) / 2
                - y[0] * ((1333 * x[0]) / 1000 + 3)
                - x[0] * y[1]
                + (y[1] ** 2 * (x[0] / 10 + 1)) / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - y[1] + 2,
                    (333 * y[1]) / 1000 - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=1.86,
            f_star=-10.931,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex2c", "best known"),
        )
    )
    add(
        _P(
            "Outrata1990Ex2d",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 2d",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                y[0] ** 2 / 2 - x[0] * y[1] - y[0] * ((1333 * x[0]) / 1000 + 3) + y[1] ** 2 / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] - y[1] - y[0] * (x[0] / 10 - 333 / 1000),
                    y[1] * (x[0] / 10 + 333 / 1000) - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=0.92,
            f_star=-19.47,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex2d", "best known"),
            x_star=(2.856343,),
            y_star=(3.880745, 3.040157),
            F_verified=0.8485049,
            note=(
                "Improves the listed best known value 0.92 (a local method's): at x = "
                "2.856343, y = (3.880745, 3.040157) (x_star, y_star; found by the solver) "
                "the lower level, a strictly convex QP in y at fixed x, has its minimum "
                "(checked with an interior-point QP solver in tests/test_bolib.py), so the "
                "point is bilevel-feasible with F = 0.8485."
            ),
        )
    )
    add(
        _P(
            "Outrata1990Ex2e",
            "Outrata (1990), On the numerical solution of a class of Stackelberg problems, ZOR 34(4), Example 2e",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                (y[0] ** 2 * (x[0] + 1)) / 2
                - y[0] * ((1333 * x[0]) / 1000 + 3)
                - x[0] * y[1]
                + y[1] ** 2 / 2
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] - y[1] - y[0] * (x[0] / 10 - 333 / 1000),
                    y[1] * (x[0] / 10 + 333 / 1000) - y[0] + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=0.9,
            f_star=-14.94,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1990Ex2e", "best known"),
        )
    )
    add(
        _P(
            "Outrata1993Ex31",
            "Outrata (1993), Necessary optimality conditions for Stackelberg problems, JOTA 76(2), Example 3.1",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                y[0] ** 2 * (x[0] / 10 + 1 / 2)
                - x[0] * y[1]
                - y[0] * ((1333 * x[0]) / 1000 + 3)
                + y[1] ** 2 * (x[0] / 20 + 1 / 2)
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    2 - y[1] - y[0] * (x[0] / 10 - 333 / 1000) - x[0] / 10,
                    y[1] * (x[0] / 10 + 333 / 1000) - y[0] - x[0] / 10 + 2,
                    y[0],
                    y[1],
                )
            ),
            F_star=1.56,
            f_star=-11.68,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1993Ex31", "best known"),
        )
    )
    add(
        _P(
            "Outrata1993Ex32",
            "Outrata (1993), Necessary optimality conditions for Stackelberg problems, JOTA 76(2), Example 3.2",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                y[0] ** 2 * (x[0] / 10 + 1 / 2)
                - x[0] * y[1]
                - y[0] * ((1333 * x[0]) / 1000 + 3)
                + y[1] ** 2 * (x[0] / 20 + 1 / 2)
            ),
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - x[0] / 10 - y[1] + 1,
                    x[0] / 10 - y[0] ** 2 - y[1] ** 2 + 9,
                    y[0],
                    y[1],
                )
            ),
            F_star=3.208,
            f_star=-20.531,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1993Ex32", "best known"),
        )
    )
    add(
        _P(
            "Outrata1994Ex31",
            "Outrata (1994), On optimization problems with variational inequality constraints, SIAM J. Optim. 4(2), Example 3.1",
            1,
            2,
            lambda x, y: (y[0] - 3) ** 2 / 2 + (y[1] - 4) ** 2 / 2,
            lambda x, y: (
                y[0] ** 2 * (x[0] / 10 + 1 / 2)
                - x[0] * y[1]
                - y[0] * ((1333 * x[0]) / 1000 + 3)
                + y[1] ** 2 * (x[0] / 20 + 1 / 2)
            ),
            lambda x, y: (
                -_v(
                    10 - x[0],
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    (333 * y[0]) / 1000 - x[0] / 10 - y[1] + 1,
                    x[0] / 10 - y[0] ** 2 - y[1] ** 2 + 9,
                    y[0],
                    y[1],
                )
            ),
            F_star=3.208,
            f_star=-20.531,
            x0=(0.0,),
            y0=(
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "Outrata1994Ex31", "best known"),
        )
    )
    add(
        _P(
            "OutrataCervinka2009",
            "Outrata and Cervinka (2009), On the implicit programming approach in a class of MPECs, Control Cybern. 38(4B)",
            2,
            2,
            lambda x, y: -2 * x[0] - x[1] / 2 - y[1],
            lambda x, y: y[0] - y[1] + x[0] * y[0] + x[1] * y[1] + y[0] ** 2 / 2 + y[1] ** 2 / 2,
            lambda x, y: (
                -_v(
                    -x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    -y[1],
                    y[0] - y[1],
                    -y[0] - y[1],
                )
            ),
            F_star=0.0,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "OutrataCervinka2009", "optimal"),
        )
    )
    add(
        _P(
            "RobustPortfolioP1",
            "robust portfolio problem (BOLIB v2 application example), instance P1",
            11,
            10,
            lambda x, y: -x[10],
            lambda x, y: (
                x[0] * y[0]
                - x[10]
                + x[1] * y[1]
                + x[2] * y[2]
                + x[3] * y[3]
                + x[4] * y[4]
                + x[5] * y[5]
                + x[6] * y[6]
                + x[7] * y[7]
                + x[8] * y[8]
                + x[9] * y[9]
            ),
            lambda x, y: (
                -_v(
                    x[0] * y[0]
                    - x[10]
                    + x[1] * y[1]
                    + x[2] * y[2]
                    + x[3] * y[3]
                    + x[4] * y[4]
                    + x[5] * y[5]
                    + x[6] * y[6]
                    + x[7] * y[7]
                    + x[8] * y[8]
                    + x[9] * y[9],
                    x[0],
                    x[1],
                    x[2],
                    x[3],
                    x[4],
                    x[5],
                    x[6],
                    x[7],
                    x[8],
                    x[9],
                    1 - x[1] - x[2] - x[3] - x[4] - x[5] - x[6] - x[7] - x[8] - x[9] - x[0],
                    x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7] + x[8] + x[9] - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    9 / 4
                    - (72 * (25 * y[1] - 29) ** 2) / 55
                    - (9 * (40 * y[4] - 47) ** 2) / 44
                    - (6 * (50 * y[5] - 59) ** 2) / 55
                    - (9 * (100 * y[3] - 117) ** 2) / 220
                    - (9 * (100 * y[7] - 119) ** 2) / 440
                    - (9 * (200 * y[0] - 231) ** 2) / 220
                    - (3 * (200 * y[2] - 233) ** 2) / 220
                    - (9 * (200 * y[6] - 237) ** 2) / 1540
                    - (200 * y[8] - 239) ** 2 / 220
                    - (72 * (5 * y[9] - 6) ** 2) / 11,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                    y[6],
                    y[7],
                    y[8],
                    y[9],
                )
            ),
            F_star=-1.15,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "RobustPortfolioP1", "best known"),
        )
    )
    add(
        _P(
            "RobustPortfolioP2",
            "robust portfolio problem (BOLIB v2 application example), instance P2",
            11,
            10,
            lambda x, y: -x[10],
            lambda x, y: (
                x[0] * y[0]
                - x[10]
                + x[1] * y[1]
                + x[2] * y[2]
                + x[3] * y[3]
                + x[4] * y[4]
                + x[5] * y[5]
                + x[6] * y[6]
                + x[7] * y[7]
                + x[8] * y[8]
                + x[9] * y[9]
            ),
            lambda x, y: (
                -_v(
                    x[0] * y[0]
                    - x[10]
                    + x[1] * y[1]
                    + x[2] * y[2]
                    + x[3] * y[3]
                    + x[4] * y[4]
                    + x[5] * y[5]
                    + x[6] * y[6]
                    + x[7] * y[7]
                    + x[8] * y[8]
                    + x[9] * y[9],
                    x[0],
                    x[1],
                    x[2],
                    x[3],
                    x[4],
                    x[5],
                    x[6],
                    x[7],
                    x[8],
                    x[9],
                    1 - x[1] - x[2] - x[3] - x[4] - x[5] - x[6] - x[7] - x[8] - x[9] - x[0],
                    x[0] + x[1] + x[2] + x[3] + x[4] + x[5] + x[6] + x[7] + x[8] + x[9] - 1,
                )
            ),
            lambda x, y: (
                -_v(
                    (
                        9
                        * (
                            (10 * x[0] - 1) ** 2
                            + (10 * x[1] - 1) ** 2
                            + (10 * x[2] - 1) ** 2
                            + (10 * x[3] - 1) ** 2
                            + (10 * x[4] - 1) ** 2
                            + (10 * x[5] - 1) ** 2
                            + (10 * x[6] - 1) ** 2
                            + (10 * x[7] - 1) ** 2
                            + (10 * x[8] - 1) ** 2
                            + (10 * x[9] - 1) ** 2
                            + 100
                        )
                        ** 2
                    )
                    / 40000
                    - (72 * (25 * y[1] - 29) ** 2) / 55
                    - (9 * (40 * y[4] - 47) ** 2) / 44
                    - (6 * (50 * y[5] - 59) ** 2) / 55
                    - (9 * (100 * y[3] - 117) ** 2) / 220
                    - (9 * (100 * y[7] - 119) ** 2) / 440
                    - (9 * (200 * y[0] - 231) ** 2) / 220
                    - (3 * (200 * y[2] - 233) ** 2) / 220
                    - (9 * (200 * y[6] - 237) ** 2) / 1540
                    - (200 * y[8] - 239) ** 2 / 220
                    - (72 * (5 * y[9] - 6) ** 2) / 11,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                    y[6],
                    y[7],
                    y[8],
                    y[9],
                )
            ),
            F_star=-1.15,
            f_star=0.0,
            x0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "RobustPortfolioP2", "best known"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP3",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP3",
            2,
            2,
            lambda x, y: y[1] ** 2 - x[0] ** 2 - 3 * x[1] ** 2 - 4 * y[0],
            lambda x, y: 2 * x[0] ** 2 - 5 * y[1] + y[0] ** 2,
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    4 - x[0] ** 2 - 2 * x[1],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                    x[1] + 3 * y[0] - 4 * y[1] - 4,
                    y[1] - 2 * y[0] - 2 * x[0] + x[0] ** 2 + x[1] ** 2 + 3,
                )
            ),
            F_star=-18.679,
            f_star=-1.016,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP3", "best known"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP6",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP6",
            1,
            2,
            lambda x, y: 2 * y[0] - 2 * x[0] + (x[0] - 1) ** 2,
            lambda x, y: x[0] * y[0] + (2 * y[1] - 1) ** 2 + (2 * y[0] - 4) ** 2,
            lambda x, y: (
                -_v(
                    x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                    12 - 5 * y[0] - 4 * y[1] - 4 * x[0],
                    4 * x[0] + 5 * y[0] - 4 * y[1] - 4,
                    4 * y[0] - 4 * x[0] - 5 * y[1] + 4,
                    4 * x[0] - 4 * y[0] - 5 * y[1] + 4,
                )
            ),
            F_star=-1.209,
            f_star=7.615,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP6", "best known"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP7",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP7",
            2,
            2,
            lambda x, y: -((x[0] + y[0]) * (x[1] + y[1])) / (x[0] * y[0] + x[1] * y[1] + 1),
            lambda x, y: ((x[0] + y[0]) * (x[1] + y[1])) / (x[0] * y[0] + x[1] * y[1] + 1),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    x[1] - x[0],
                    100 - x[1] ** 2 - x[0] ** 2,
                )
            ),
            lambda x, y: (
                -_v(
                    y[0],
                    y[1],
                    x[0] - y[0],
                    x[1] - y[1],
                )
            ),
            F_star=-1.961,
            f_star=1.961,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                0.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP7", "best known"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP8",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP8",
            2,
            2,
            lambda x, y: (3 * y[0] - 2 * x[1] - 2 * x[0] + 3 * y[1] + 60) ** 2,
            lambda x, y: (y[0] - x[0] + 20) ** 2 + (y[1] - x[1] + 20) ** 2,
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    50 - x[0],
                    50 - x[1],
                    2 * y[1] - x[1] - y[0] - x[0] + 40,
                )
            ),
            lambda x, y: (
                -_v(
                    x[0] - 2 * y[0] - 10,
                    x[1] - 2 * y[1] - 10,
                    20 - y[0],
                    20 - y[1],
                    y[0] + 10,
                    y[1] + 10,
                )
            ),
            F_star=0.0,
            f_star=100.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP8", "optimal"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP9",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP9",
            10,
            10,
            lambda x, y: (
                (x[0] - 1) ** 2
                + (x[1] - 1) ** 2
                + (x[2] - 1) ** 2
                + (x[3] - 1) ** 2
                + (x[4] - 1) ** 2
                + (x[5] - 1) ** 2
                + (x[6] - 1) ** 2
                + (x[7] - 1) ** 2
                + (x[8] - 1) ** 2
                + (x[9] - 1) ** 2
                + y[0] ** 2
                + y[1] ** 2
                + y[2] ** 2
                + y[3] ** 2
                + y[4] ** 2
                + y[5] ** 2
                + y[6] ** 2
                + y[7] ** 2
                + y[8] ** 2
                + y[9] ** 2
            ),
            lambda x, y: torch.exp(
                (
                    x[0] ** 2
                    + x[1] ** 2
                    + x[2] ** 2
                    + x[3] ** 2
                    + x[4] ** 2
                    + x[5] ** 2
                    + x[6] ** 2
                    + x[7] ** 2
                    + x[8] ** 2
                    + x[9] ** 2
                )
                * (
                    y[0] ** 2 / 4000
                    + y[1] ** 2 / 4000
                    + y[2] ** 2 / 4000
                    + y[3] ** 2 / 4000
                    + y[4] ** 2 / 4000
                    + y[5] ** 2 / 4000
                    + y[6] ** 2 / 4000
                    + y[7] ** 2 / 4000
                    + y[8] ** 2 / 4000
                    + y[9] ** 2 / 4000
                    - torch.cos(y[3] / 2)
                    * torch.cos(y[8] / 3)
                    * torch.cos((2 ** (1 / 2) * y[1]) / 2)
                    * torch.cos((3 ** (1 / 2) * y[2]) / 3)
                    * torch.cos((2 ** (1 / 2) * y[7]) / 4)
                    * torch.cos((5 ** (1 / 2) * y[4]) / 5)
                    * torch.cos((6 ** (1 / 2) * y[5]) / 6)
                    * torch.cos((7 ** (1 / 2) * y[6]) / 7)
                    * torch.cos((10 ** (1 / 2) * y[9]) / 10)
                    * torch.cos(y[0])
                    + 1
                )
            ),
            None,
            lambda x, y: (
                -_v(
                    math.pi - y[0],
                    math.pi - y[1],
                    math.pi - y[2],
                    math.pi - y[3],
                    math.pi - y[4],
                    math.pi - y[5],
                    math.pi - y[6],
                    math.pi - y[7],
                    math.pi - y[8],
                    math.pi - y[9],
                    y[0] + math.pi,
                    y[1] + math.pi,
                    y[2] + math.pi,
                    y[3] + math.pi,
                    y[4] + math.pi,
                    y[5] + math.pi,
                    y[6] + math.pi,
                    y[7] + math.pi,
                    y[8] + math.pi,
                    y[9] + math.pi,
                )
            ),
            F_star=0.0,
            f_star=1.0,
            x0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP9", "best known"),
        )
    )
    add(
        _P(
            "SinhaMaloDeb2014TP10",
            "Sinha, Malo and Deb (2014), An improved bilevel evolutionary algorithm based on quadratic approximations, IEEE CEC 2014, test problem TP10",
            10,
            10,
            lambda x, y: (
                (x[0] - 1) ** 2
                + (x[1] - 1) ** 2
                + (x[2] - 1) ** 2
                + (x[3] - 1) ** 2
                + (x[4] - 1) ** 2
                + (x[5] - 1) ** 2
                + (x[6] - 1) ** 2
                + (x[7] - 1) ** 2
                + (x[8] - 1) ** 2
                + (x[9] - 1) ** 2
                + y[0] ** 2
                + y[1] ** 2
                + y[2] ** 2
                + y[3] ** 2
                + y[4] ** 2
                + y[5] ** 2
                + y[6] ** 2
                + y[7] ** 2
                + y[8] ** 2
                + y[9] ** 2
            ),
            lambda x, y: torch.exp(
                (x[0] ** 2 * y[0] ** 2) / 4000
                + (x[1] ** 2 * y[1] ** 2) / 4000
                + (x[2] ** 2 * y[2] ** 2) / 4000
                + (x[3] ** 2 * y[3] ** 2) / 4000
                + (x[4] ** 2 * y[4] ** 2) / 4000
                + (x[5] ** 2 * y[5] ** 2) / 4000
                + (x[6] ** 2 * y[6] ** 2) / 4000
                + (x[7] ** 2 * y[7] ** 2) / 4000
                + (x[8] ** 2 * y[8] ** 2) / 4000
                + (x[9] ** 2 * y[9] ** 2) / 4000
                - torch.cos((2 ** (1 / 2) * x[1] * y[1]) / 2)
                * torch.cos((3 ** (1 / 2) * x[2] * y[2]) / 3)
                * torch.cos((5 ** (1 / 2) * x[4] * y[4]) / 5)
                * torch.cos((2 ** (1 / 2) * x[7] * y[7]) / 4)
                * torch.cos((6 ** (1 / 2) * x[5] * y[5]) / 6)
                * torch.cos((7 ** (1 / 2) * x[6] * y[6]) / 7)
                * torch.cos((10 ** (1 / 2) * x[9] * y[9]) / 10)
                * torch.cos(x[0] * y[0])
                * torch.cos((x[3] * y[3]) / 2)
                * torch.cos((x[8] * y[8]) / 3)
                + 1
            ),
            None,
            lambda x, y: (
                -_v(
                    math.pi - y[0],
                    math.pi - y[1],
                    math.pi - y[2],
                    math.pi - y[3],
                    math.pi - y[4],
                    math.pi - y[5],
                    math.pi - y[6],
                    math.pi - y[7],
                    math.pi - y[8],
                    math.pi - y[9],
                    y[0] + math.pi,
                    y[1] + math.pi,
                    y[2] + math.pi,
                    y[3] + math.pi,
                    y[4] + math.pi,
                    y[5] + math.pi,
                    y[6] + math.pi,
                    y[7] + math.pi,
                    y[8] + math.pi,
                    y[9] + math.pi,
                )
            ),
            F_star=0.0,
            f_star=1.0,
            x0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "SinhaMaloDeb2014TP10", "best known"),
        )
    )
    add(
        _P(
            "TollSettingP1",
            "toll-setting problem (BOLIB v2 application example), instance P1",
            3,
            8,
            lambda x, y: -x[0] * y[2] - x[1] * y[3] - x[2] * y[7],
            lambda x, y: (
                2 * y[0]
                + 6 * y[1]
                + 4 * y[4]
                + 2 * y[5]
                + 6 * y[6]
                + x[1] * y[3]
                + x[2] * y[7]
                + y[2] * (x[0] + 5)
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    x[2],
                )
            ),
            lambda x, y: (
                -_v(
                    1 - y[1] - y[2] - y[0],
                    y[0] - y[3] - y[4],
                    y[1] + y[3] - y[5] - y[6],
                    y[4] + y[5] - y[7],
                    1 - y[6] - y[7] - y[2],
                    y[0] + y[1] + y[2] - 1,
                    y[3] - y[0] + y[4],
                    y[5] - y[3] - y[1] + y[6],
                    y[7] - y[5] - y[4],
                    y[2] + y[6] + y[7] - 1,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                    y[6],
                    y[7],
                )
            ),
            F_star=-7.0,
            f_star=12.0,
            x0=(
                0.0,
                5.0,
                5.0,
            ),
            y0=(
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "TollSettingP1", "best known"),
        )
    )
    add(
        _P(
            "TollSettingP2",
            "toll-setting problem (BOLIB v2 application example), instance P2",
            3,
            18,
            lambda x, y: -x[0] * (y[0] + y[1]) - x[1] * (y[2] + y[3]) - x[2] * (y[4] + y[5]),
            lambda x, y: (
                5 * y[6]
                + 7 * y[7]
                + 14 * y[8]
                + 7 * y[9]
                + 2 * y[10]
                + 4 * y[11]
                + 29 * y[12]
                + 20 * y[13]
                + 12 * y[14]
                + 8 * y[15]
                + 5 * y[16]
                + 2 * y[17]
                + 2 * x[0] * y[0]
                + 2 * x[0] * y[1]
                + 2 * x[1] * y[2]
                + 2 * x[1] * y[3]
                + 2 * x[2] * y[4]
                + 2 * x[2] * y[5]
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    x[2],
                )
            ),
            lambda x, y: (
                -_v(
                    1 - y[7] - y[8] - y[6],
                    1 - y[10] - y[11] - y[9],
                    1 - y[13] - y[14] - y[12],
                    1 - y[16] - y[17] - y[15],
                    y[6] - y[4] - y[0] - y[12],
                    y[9] - y[5] - y[1] - y[15],
                    y[0] - y[2] + y[7] - y[13],
                    y[1] - y[3] + y[10] - y[16],
                    y[2] + y[4] + y[8] - y[14],
                    y[3] + y[5] + y[11] - y[17],
                    y[6] + y[7] + y[8] - 1,
                    y[9] + y[10] + y[11] - 1,
                    y[12] + y[13] + y[14] - 1,
                    y[15] + y[16] + y[17] - 1,
                    y[0] + y[4] - y[6] + y[12],
                    y[1] + y[5] - y[9] + y[15],
                    y[2] - y[0] - y[7] + y[13],
                    y[3] - y[1] - y[10] + y[16],
                    y[14] - y[4] - y[8] - y[2],
                    y[17] - y[5] - y[11] - y[3],
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                    y[6],
                    y[7],
                    y[8],
                    y[9],
                    y[10],
                    y[11],
                    y[12],
                    y[13],
                    y[14],
                    y[15],
                    y[16],
                    y[17],
                )
            ),
            F_star=-4.5,
            f_star=32.0,
            x0=(
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                10.0,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                10.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
                10.0,
            ),
            source=_SRC.format("nonlinear", "TollSettingP2", "best known"),
        )
    )
    add(
        _P(
            "TollSettingP3",
            "toll-setting problem (BOLIB v2 application example), instance P3",
            3,
            18,
            lambda x, y: (
                -x[0] * (y[0] + 10 * y[1]) - x[1] * (y[2] + 10 * y[3]) - x[2] * (y[4] + 10 * y[5])
            ),
            lambda x, y: (
                5 * y[6]
                + 7 * y[7]
                + 14 * y[8]
                + 7 * y[9]
                + 2 * y[10]
                + 4 * y[11]
                + 29 * y[12]
                + 20 * y[13]
                + 12 * y[14]
                + 8 * y[15]
                + 5 * y[16]
                + 2 * y[17]
                + 2 * x[0] * y[0]
                + 20 * x[0] * y[1]
                + 2 * x[1] * y[2]
                + 20 * x[1] * y[3]
                + 2 * x[2] * y[4]
                + 20 * x[2] * y[5]
            ),
            lambda x, y: (
                -_v(
                    x[0],
                    x[1],
                    x[2],
                )
            ),
            lambda x, y: (
                -_v(
                    1 - y[7] - y[8] - y[6],
                    1 - y[10] - y[11] - y[9],
                    1 - y[13] - y[14] - y[12],
                    1 - y[16] - y[17] - y[15],
                    y[6] - y[4] - y[0] - y[12],
                    y[9] - 10 * y[5] - 10 * y[1] - y[15],
                    y[0] - y[2] + y[7] - y[13],
                    10 * y[1] - 10 * y[3] + y[10] - y[16],
                    y[2] + y[4] + y[8] - y[14],
                    10 * y[3] + 10 * y[5] + y[11] - y[17],
                    y[6] + y[7] + y[8] - 1,
                    y[9] + y[10] + y[11] - 1,
                    y[12] + y[13] + y[14] - 1,
                    y[15] + y[16] + y[17] - 1,
                    y[0] + y[4] - y[6] + y[12],
                    10 * y[1] + 10 * y[5] - y[9] + y[15],
                    y[2] - y[0] - y[7] + y[13],
                    10 * y[3] - 10 * y[1] - y[10] + y[16],
                    y[14] - y[4] - y[8] - y[2],
                    y[17] - 10 * y[5] - y[11] - 10 * y[3],
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                    y[4],
                    y[5],
                    y[6],
                    y[7],
                    y[8],
                    y[9],
                    y[10],
                    y[11],
                    y[12],
                    y[13],
                    y[14],
                    y[15],
                    y[16],
                    y[17],
                )
            ),
            F_star=-3.5,
            f_star=32.0,
            x0=(
                0.0,
                0.0,
                0.0,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
                10.0,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                10.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
                10.0,
            ),
            source=_SRC.format("nonlinear", "TollSettingP3", "best known"),
            x_star=(7.880839, 11.491303, 4.5),
            y_star=(
                0.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
                1.0,
                0.0,
                0.0,
                1.0,
            ),
            F_verified=-4.5,
            note=(
                "Improves the listed best known value -3.5: at the tolls x = (7.880839, "
                "11.491303, 4.5) (x_star; found by the solver) the follower's LP has the "
                "optimal value 32, attained by the flow y_star that uses the arc tolled by "
                "x3 (an optimistic tie), so the revenue is 4.5 (checked with an "
                "interior-point LP solve in tests/test_bolib.py)."
            ),
        )
    )
    add(
        _P(
            "TollSettingP4",
            "toll-setting problem (BOLIB v2 application example), instance P4",
            2,
            4,
            lambda x, y: -x[0] * (y[1] + y[2]) - x[1] * y[2],
            lambda x, y: (
                8 * y[0] + 6 * y[3] + y[1] * (2 * x[0] + 3) + y[2] * (2 * x[0] + 2 * x[1] + 3)
            ),
            None,
            lambda x, y: (
                -_v(
                    1 - y[1] - y[0],
                    1 - y[3] - y[2],
                    y[0] + y[1] - 1,
                    y[2] + y[3] - 1,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                )
            ),
            F_star=-4.0,
            f_star=14.0,
            x0=(
                1.0,
                1.0,
            ),
            y0=(
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "TollSettingP4", "best known"),
        )
    )
    add(
        _P(
            "TollSettingP5",
            "toll-setting problem (BOLIB v2 application example), instance P5",
            1,
            4,
            lambda x, y: -x[0] * (y[1] + y[2]),
            lambda x, y: 8 * y[0] + 6 * y[3] + y[1] * (2 * x[0] + 3) + y[2] * (2 * x[0] + 4),
            None,
            lambda x, y: (
                -_v(
                    1 - y[1] - y[0],
                    1 - y[3] - y[2],
                    y[0] + y[1] - 1,
                    y[2] + y[3] - 1,
                    y[0],
                    y[1],
                    y[2],
                    y[3],
                )
            ),
            F_star=-2.5,
            f_star=14.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "TollSettingP5", "best known"),
        )
    )
    add(
        _P(
            "Vogel2012",
            "Vogel (2012), Zwei-Ebenen-Optimierungsaufgaben mit nichtkonvexer Zielfunktion in der unteren Ebene, PhD thesis, TU Bergakademie Freiberg",
            1,
            1,
            lambda x, y: (y[0] + 1) ** 2,
            lambda x, y: y[0] ** 3 - 3 * y[0],
            lambda x, y: (
                -_v(
                    x[0] + 3,
                    2 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] - x[0],
                )
            ),
            F_star=1.0,
            f_star=-2.0,
            x0=(1.0,),
            y0=(1.0,),
            source=_SRC.format("nonlinear", "Vogel2012", "optimal"),
        )
    )
    add(
        _P(
            "WanWangLv2011",
            "Wan, Wang and Lv (2011), A dual-relax penalty function approach for solving nonlinear bilevel programming with linear lower level problem, Acta Math. Sci. 31(2)",
            2,
            3,
            lambda x, y: (x[0] - x[1] + 2 * y[1] + 1) * (y[1] - 2 * y[0] - x[0] + 5 * y[2] + 8),
            lambda x, y: 2 * y[0] - y[1] + y[2],
            None,
            lambda x, y: (
                -_v(
                    y[0] - y[1] - y[2] + 1,
                    y[0] - 2 * x[0] - 2 * y[1] + y[2] / 2 + 1,
                    y[1] - 2 * y[0] - 2 * x[1] + y[2] / 2 + 1,
                    x[0],
                    x[1],
                    y[0],
                    y[1],
                    y[2],
                )
            ),
            F_star=10.62,
            f_star=-0.5,
            x0=(
                0.0,
                0.5,
            ),
            y0=(
                0.0,
                0.0,
                0.0,
            ),
            source=_SRC.format("nonlinear", "WanWangLv2011", "optimal"),
            x_star=(0.5, 0.5),
            y_star=(0.0, 0.0, 0.0),
            F_verified=7.5,
            note=(
                "Improves the listed 10.625 at (0, 0.75, 0, 0.5, 0): at x = (1/2, 1/2) the "
                "lower LP min 2 y1 - y2 + y3 has the solution y = 0 (value 0; checked with "
                "an interior-point solver in tests/test_bolib.py), and F = (x1 - x2 + 2 y2 "
                "+ 1)(y2 - 2 y1 - x1 + 5 y3 + 8) = 1 x 7.5 = 7.5 (found by the solver)."
            ),
        )
    )
    add(
        _P(
            "YeZhu2010Ex43",
            "Ye and Zhu (2010), New necessary optimality conditions for bilevel programs by combining the MPEC and value function approaches, SIAM J. Optim. 20(4), Example 4.3",
            1,
            1,
            lambda x, y: (x[0] - 1 / 2) ** 2 + (y[0] - 2) ** 2,
            lambda x, y: y[0] ** 3 - 3 * y[0],
            lambda x, y: (
                -_v(
                    x[0],
                    4 - x[0],
                )
            ),
            lambda x, y: (
                -_v(
                    y[0] - x[0] + 3,
                )
            ),
            F_star=1.25,
            f_star=-2.0,
            x0=(-1.0,),
            y0=(-1.0,),
            source=_SRC.format("nonlinear", "YeZhu2010Ex43", "optimal"),
        )
    )
    add(
        _P(
            "Yezza1996Ex41",
            "Yezza (1996), First-order necessary optimality conditions for general bilevel programming problems, JOTA 89(1), Example 4.1",
            1,
            1,
            lambda x, y: (y[0] - x[0] + 2) ** 2 / 2 + (y[0] - 2) ** 2 / 2,
            lambda x, y: x[0] - y[0] + y[0] ** 2 / 2,
            None,
            lambda x, y: (
                -_v(
                    y[0],
                    x[0] - y[0],
                )
            ),
            F_star=0.5,
            f_star=2.5,
            x0=(-1.0,),
            y0=(-1.0,),
            source=_SRC.format("nonlinear", "Yezza1996Ex41", "optimal"),
        )
    )
    add(
        _P(
            "Zlobec2001a",
            "Zlobec (2001), Bilevel programming: optimality conditions and duality, Encyclopedia of Optimization, Springer",
            1,
            2,
            lambda x, y: -y[0] / x[0],
            lambda x, y: -y[0] - y[1],
            None,
            lambda x, y: (
                -_v(
                    1 - x[0] * y[1] - y[0],
                    y[0],
                    y[1],
                )
            ),
            F_star=-1.0,
            f_star=-1.0,
            x0=(1.0,),
            y0=(
                1.0,
                1.0,
            ),
            source=_SRC.format("nonlinear", "Zlobec2001a", "optimal"),
        )
    )
    return out


#: The evaluation set, by BOLIB name.
BOLIB: dict[str, LiteratureProblem] = {p.name: p for p in _problems()}


def bolib_problem(name: str) -> LiteratureProblem:
    """The entry ``name`` of :data:`BOLIB` (``KeyError`` naming the valid ones otherwise)."""
    try:
        return BOLIB[name]
    except KeyError:
        raise KeyError(f"unknown BOLIB problem {name!r}; known: {sorted(BOLIB)}") from None
