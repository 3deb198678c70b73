"""The BOLIB evaluation set (bilevel.testproblems.bolib): transcription checks and the new
solver features on a few of its problems.

Oracles: the solution points printed in the BOLIB report (Zhou, Zemkoho and Tin 2019,
"Comment" of each example; independent of the BOLIB.jl functions the entries are
transcribed from) must reproduce the listed F* and be feasible; linear programming (HiGHS,
a solver the data module does not use) decides lower-level feasibility at the listed start.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bilevel.constrained.classical import solve_classical
from bilevel.testproblems import LITERATURE
from bilevel.testproblems.bolib import BOLIB, bolib_problem

# (x*, y*) as printed in the BOLIB report, for entries of the set
REPORTED = {
    "AllendeStill2013": (0.5, 0.5, 0.5, 0.5),
    "AnEtal2009": (0.200001, 1.999997, 3.999998, 4.600005),
    "CalamaiVicente1994c": (0.13085, 0.05195, 0.1022, 0.0674, 0.025, 0.05),
    "DempeEtal2012": (-1, 1),
    "DempeFranke2011Ex41": (0, -1, 1, 2),
    "DempeFranke2014Ex38": (-1, -1, 2, 2),
    "GumusFloudas2001Ex3": (0, 0.9, 0, 0.6, 0.4),
    "HatzEtal2013": (0, 0, 0),
    "HendersonQuandt1958": (93.33333, 26.667),
    "MitsosBarton2006Ex323": (-0.4191, -1),
    "MitsosBarton2006Ex325": (-1, -1, -1, 1, 1),
    "MorganPatrone2006a": (0, 1),
    "MuuQuy2003Ex1": (0.8438, 0.7657, 0),
    "MuuQuy2003Ex2": (0.609, 0.391, 0.0, 0.0, 1.828),
    "NieWangYe2017Ex58": (0.5135, 0.5050, 0.4882, 0.4929, -0.8346, -0.4104, -0.2106, -0.2887),
    "NieWangYe2017Ex61": (0.5708, -1, -0.1639, 0.9865),
    "Outrata1994Ex31": (4.0604, 2.6822, 1.4871),
    "Vogel2012": (-2, -2),
    "WanWangLv2011": (0, 0.75, 0, 0.5, 0),
    "Yezza1996Ex41": (3, 1),
    "Zlobec2001a": (1, 1, 0),
}


def test_size_and_metadata():
    assert len(BOLIB) == 91 and not set(BOLIB) & set(LITERATURE)
    classes = [p.source.split("(")[1].split(")")[0] for p in BOLIB.values()]
    assert classes.count("linear") == 23 and classes.count("nonlinear") == 68
    for p in BOLIB.values():
        assert p.citation and "BOLIB v2" in p.source, p.name
        assert p.source.endswith(("value: optimal", "value: best known")), p.name
        assert p.x_bounds is None and p.y_bounds is None  # bounds are constraint rows
        assert np.isfinite(p.F_star) and p.f_star is not None
        x0, y0 = p.start()
        assert x0.shape == (p.n_x,) and y0.shape == (p.n_y,)
        problem = p.problem()
        assert problem.upper_value(x0, y0).shape == ()
        for fn in (p.upper_ineq, p.lower_ineq):
            if fn is not None:
                assert fn(x0, y0).dim() == 1
    assert sum(p.n_x + p.n_y >= 10 for p in BOLIB.values()) >= 8
    assert max(p.n_x + p.n_y for p in BOLIB.values()) == 21


def test_lookup():
    assert bolib_problem("TollSettingP1").n_y == 8
    with pytest.raises(KeyError, match="unknown BOLIB problem"):
        bolib_problem("nope")


def test_no_restatement_of_the_bundled_set():
    """The selection rule: no entry has the same F, f and lower-level constraints (at random
    points) as a problem of LITERATURE with the same dimensions (LamparielloSagratella2017Ex35
    shares F and f with tmh_2007_01 but not its constraints, nor its optimum)."""
    rng = np.random.default_rng(0)
    for p in BOLIB.values():
        for q in LITERATURE.values():
            if (q.n_x, q.n_y) != (p.n_x, p.n_y):
                continue
            same = True
            for _ in range(3):
                x = torch.tensor(rng.uniform(0.1, 2, p.n_x))
                y = torch.tensor(rng.uniform(0.1, 2, p.n_y))
                same &= bool(torch.isclose(p.upper(x, y), q.upper(x, y), rtol=1e-9))
                same &= bool(torch.isclose(p.lower(x, y), q.lower(x, y), rtol=1e-9))
                g_p = p.lower_ineq(x, y) if p.lower_ineq else torch.zeros(0)
                g_q = q.lower_ineq(x, y) if q.lower_ineq else torch.zeros(0)
                # the bundled entries keep bounds apart: compare the rows they share
                same &= bool(
                    all(torch.isclose(row, g_p, rtol=1e-9).any() for row in g_q.to(g_p.dtype))
                )
            assert not same, (p.name, q.name)


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_reported_solution_reproduces_the_listed_value(name):
    p = BOLIB[name]
    z = torch.tensor(REPORTED[name], dtype=torch.float64)
    x, y = z[: p.n_x], z[p.n_x :]
    scale = max(1.0, abs(p.F_star))
    # the report prints 1-4 digits (f* of GumusFloudas2001Ex3: 0.31 for 0.3148)
    assert abs(float(p.upper(x, y)) - p.F_star) <= 1e-3 * scale
    assert abs(float(p.lower(x, y)) - p.f_star) <= 1e-2 * max(1.0, abs(p.f_star))
    for fn in (p.upper_ineq, p.lower_ineq):
        if fn is not None:
            assert float(fn(x, y).max()) <= 1e-3 * scale


def _lower_feasible_at(p, x):
    """LP oracle for linear lower-level rows: is {y : g(x, y) <= 0} non-empty?"""
    y0 = torch.zeros(p.n_y, dtype=torch.float64)
    b = -p.lower_ineq(x, y0).numpy()
    A = torch.func.jacrev(lambda y: p.lower_ineq(x, y))(y0).numpy()
    res = linprog(np.zeros(p.n_y), A_ub=A, b_ub=b, bounds=[(None, None)] * p.n_y)
    return res.status == 0


@pytest.mark.parametrize("name", ["CandlerTownsley1982", "TuyEtal1993", "ClarkWesterberg1988"])
def test_listed_start_has_an_infeasible_lower_level(name):
    p = BOLIB[name]
    x0, _ = p.start()
    assert not _lower_feasible_at(p, x0)


def test_infeasible_start_solves():
    """TuyEtal1993 from its listed x0 = (0, 0), where the lower level is infeasible."""
    p = BOLIB["TuyEtal1993"]
    x0, y0 = p.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_classical(p.problem(), x0, y0, n_starts=3, n_lower_starts=6, n_certify=1)
    assert res.converged and res.info["start"] == "feasibility phase"
    assert res.info["certified"] and res.info["lower_gap"] <= 1e-6
    assert abs(res.info["upper_value"] - p.F_star) <= 1e-6 * max(1.0, abs(p.F_star))
    assert float(p.upper_ineq(res.x, res.y).max()) <= 1e-7


def test_verified_values():
    """Entries whose listed F* is not the optimum of the problem as stated (see their notes):
    the better point is bilevel-feasible, with the lower level solved by an LP or shown to
    have a single feasible point."""
    assert {p.name for p in BOLIB.values() if p.F_verified is not None} == {
        "HuHuangZhang2009",
        "DempeDutta2012Ex31",
        "DempeLohse2011Ex31a",
        *IMPROVED,
    }
    # HuHuangZhang2009: F(x) = -4x - y1(x) with y(x) from the lower LP, on a grid of x
    p = BOLIB["HuHuangZhang2009"]
    values = []
    for x in np.linspace(0, 2, 181):
        xt = torch.tensor([x], dtype=torch.float64)
        y0 = torch.zeros(2, dtype=torch.float64)
        A = torch.func.jacrev(lambda y, xt=xt: p.lower_ineq(xt, y))(y0).numpy()
        res = linprog([-3.0, 0.0], A_ub=A, b_ub=-p.lower_ineq(xt, y0).numpy())
        assert res.status == 0  # the lower level is bounded and feasible on [0, 2]
        values.append(float(p.upper(xt, torch.tensor(res.x))))
    assert min(values) == pytest.approx(p.F_verified, abs=1e-9)
    assert p.F_verified < p.F_star - 0.3
    # DempeDutta2012Ex31: at x = (1, 1) the two disks touch: y = (0, 2) is the only
    # lower-feasible point (a fine grid around it finds no other), so it is lower-optimal
    p = BOLIB["DempeDutta2012Ex31"]
    x, y = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    assert float(p.lower_ineq(x, y).max()) <= 1e-15 and float(p.upper_ineq(x, y).max()) <= 0
    axis = torch.linspace(-0.2, 0.2, 201, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis) + y
    feasible = [float(p.lower_ineq(x, v).max()) <= 1e-12 for v in grid]
    assert sum(feasible) == 1 and float(p.upper(x, y)) == p.F_verified
    # DempeLohse2011Ex31a: at x = (0, 1/2) the lower LP value is 0, attained at y = (2, 0)
    p = BOLIB["DempeLohse2011Ex31a"]
    x, y = torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([2.0, 0.0])
    A = torch.func.jacrev(lambda v: p.lower_ineq(x, v))(y.double()).numpy()
    res = linprog(x.numpy(), A_ub=A, b_ub=-p.lower_ineq(x, torch.zeros(2)).numpy())
    assert res.status == 0 and float(p.lower(x, y.double())) <= res.fun + 1e-12
    assert float(p.lower_ineq(x, y.double()).max()) <= 0
    assert float(p.upper(x, y.double())) == pytest.approx(p.F_verified, abs=1e-12)


# best known values improved by the solver; the entries list the point (x_star, y_star)
IMPROVED = ["Outrata1990Ex1e", "Outrata1990Ex2d", "WanWangLv2011", "TollSettingP3"]


@pytest.mark.parametrize("name", IMPROVED)
def test_improved_value_is_bilevel_feasible(name):
    """At the listed point the lower level is a convex QP (or LP) in y: an interior-point
    solve (cvxpy/Clarabel, not used by the solver) reaches the point's lower value, the
    constraints hold, and F equals the verified value, below the listed one."""
    cp = pytest.importorskip("cvxpy")
    p = BOLIB[name]
    x, y = (torch.tensor(v, dtype=torch.float64) for v in (p.x_star, p.y_star))
    assert float(p.lower_ineq(x, y).max()) <= 1e-6
    if p.upper_ineq is not None:
        assert float(p.upper_ineq(x, y).max()) <= 1e-6
    zero = torch.zeros(p.n_y, dtype=torch.float64)

    def f(v):
        return p.lower(x, v)

    H = torch.func.hessian(f)(zero).numpy()
    np.testing.assert_allclose(torch.func.hessian(f)(y).numpy(), H, atol=1e-12)  # quadratic
    assert np.linalg.eigvalsh(H).min() >= -1e-12  # convex
    c = torch.func.grad(f)(zero).numpy()
    A = torch.func.jacrev(lambda v: p.lower_ineq(x, v))(zero).numpy()
    b = p.lower_ineq(x, zero).numpy()
    v = cp.Variable(p.n_y)
    qp = cp.Problem(
        cp.Minimize(0.5 * cp.quad_form(v, cp.psd_wrap(H)) + c @ v + float(f(zero))),
        [A @ v + b <= 0],
    )
    qp.solve(solver="CLARABEL")
    assert float(f(y)) <= qp.value + 1e-6 * (1 + abs(qp.value))
    assert float(p.upper(x, y)) == pytest.approx(p.F_verified, abs=1e-6)
    assert p.F_verified < p.F_star - 0.01 * max(1.0, abs(p.F_star))
