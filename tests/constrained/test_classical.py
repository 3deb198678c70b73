"""Tests of the classical bilevel solver (bilevel.constrained.classical).

Oracles: closed-form bilevel solutions, a brute-force grid of the lower level for the
certificate, and the best known values of published problems (bilevel.testproblems.literature).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import bilevel
from bilevel import BilevelProblem
from bilevel.constrained import InfeasibleError, UnboundedError
from bilevel.constrained.classical import (
    Classical,
    LowerLevelInfeasibleError,
    UnboundedLowerLevelError,
    certify_lower_level,
    solve_classical,
)
from bilevel.errors import ConvergenceWarning
from bilevel.testproblems.literature import LITERATURE

FAST = {"n_starts": 3, "n_lower_starts": 6, "n_certify": 1}


def test_closed_form_unconstrained_lower_level():
    """F = |x - a|^2 + |y - b|^2, f = |y - A x|^2 / 2: y = A x and
    x* = (I + A^T A)^{-1} (a + A^T b)."""
    A = torch.tensor([[1.0, 2.0], [-0.5, 1.5]])
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    problem = BilevelProblem(
        upper=lambda x, y: ((x - a) ** 2).sum() + ((y - b) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y - A @ x) ** 2).sum(),
    )
    x_star = torch.linalg.solve(torch.eye(2) + A.T @ A, a + A.T @ b)
    res = bilevel.solve(
        problem, torch.zeros(2), torch.zeros(2), method=Classical(**FAST), maxiter=4
    )
    assert res.converged
    torch.testing.assert_close(res.x, x_star, atol=1e-8, rtol=0)
    torch.testing.assert_close(res.y, A @ x_star, atol=1e-8, rtol=0)
    assert res.info["certified"] and res.info["lower_gap"] <= 1e-10


def test_closed_form_active_bound():
    """f = (y - x)^2 / 2 on Y = [0, 1] gives y = clip(x, 0, 1); F = (x - 2)^2 + (y - 1.5)^2
    is minimal at x* = 2, y* = 1 (F* = 0.25), where the bound y <= 1 is active."""
    problem = _active_bound_problem()
    res = solve_classical(problem, torch.tensor([-3.0]), torch.tensor([0.5]), **FAST)
    assert res.converged
    assert abs(float(res.x[0]) - 2.0) <= 1e-8 and abs(float(res.y[0]) - 1.0) <= 1e-12
    assert abs(res.info["upper_value"] - 0.25) <= 1e-12
    # the history's lower-level optimality column is the KKT residual: 0 here (the bound
    # y <= 1 takes multiplier x - y = 1), while |grad_y f| = |y - x| = 1
    assert "lower_grad_norm" not in res.history
    assert res.history["lower_kkt_residual"][-1] <= 1e-8


def _double_well(x):
    """f(x, y) = (y^2 - 1)^2 + x y on Y = [-2, 2]: for x = 0.3 the global minimum is near
    y = -1 and a local minimum near y = +1."""
    return BilevelProblem(
        upper=lambda x, y: (y[0] - 1) ** 2,
        lower=lambda x, y: (y[0] ** 2 - 1) ** 2 + x[0] * y[0],
        y_bounds=(-2.0, 2.0),
    )


def test_certificate_gap_of_a_suboptimal_y_matches_brute_force():
    x = torch.tensor([0.3])
    problem = _double_well(x)

    def f(y):
        return (y**2 - 1) ** 2 + 0.3 * y

    # oracle: the two local minima by bounded scalar minimization, the global one checked
    # against a fine grid
    local = minimize_scalar(f, bounds=(0, 2), method="bounded", options={"xatol": 1e-12}).x
    glob = minimize_scalar(f, bounds=(-2, 0), method="bounded", options={"xatol": 1e-12}).x
    grid = np.linspace(-2, 2, 400001)
    assert f(glob) <= f(grid).min() + 1e-9
    cert = certify_lower_level(problem, x, torch.tensor([local]), n_starts=10)
    assert not cert.certified
    assert cert.gap == pytest.approx(f(local) - f(glob), abs=1e-9)
    assert cert.gap > 0.5
    assert float(cert.y_best[0]) == pytest.approx(glob, abs=1e-5)
    assert cert.phi == pytest.approx(f(glob), abs=1e-10)
    good = certify_lower_level(problem, x, torch.tensor([glob]), n_starts=10)
    assert good.certified and 0 <= good.gap <= 1e-10


def test_solver_never_returns_the_local_lower_minimum():
    """F prefers y = 1, but y near 1 is only a local lower-level minimum: the certified
    answer is the global lower minimizer (near -1), F = (y - 1)^2 ~ 4.3."""
    problem = _double_well(None)
    problem = BilevelProblem(
        upper=problem.upper, lower=problem.lower, x_bounds=(0.3, 0.3), y_bounds=(-2.0, 2.0)
    )
    res = solve_classical(problem, torch.tensor([0.3]), torch.tensor([1.0]), **FAST)
    assert res.converged and res.info["certified"]
    assert float(res.y[0]) < -0.9
    cert = certify_lower_level(problem, res.x, res.y, n_starts=30, seed=1)
    assert cert.gap <= 1e-8


@pytest.mark.parametrize("name", ["mb_2007_04", "mb_2007_13v", "dd_2012_01"])
def test_literature_examples(name):
    """Success criterion of the benchmark on a few published problems: nonconvex lower
    level (mb_2007_04, mb_2007_13v) and a lower level without KKT points at the optimum
    (dd_2012_01). The benchmark (benchmarks/classical.py) runs the whole set."""
    p = LITERATURE[name]
    x0, y0 = p.start()
    res = solve_classical(p.problem(), x0, y0, maxiter=4, **FAST)
    assert res.converged
    assert abs(res.info["upper_value"] - p.F_reference) <= 0.01 * max(1.0, abs(p.F_reference))
    assert res.info["lower_gap"] <= 1e-6 and res.info["certified"]
    # the reported gap agrees with an independent check with more starts
    cert = certify_lower_level(p.problem(), res.x, res.y, n_starts=40, seed=7)
    assert cert.gap <= 1e-6


def test_info_and_history():
    p = LITERATURE["mb_2007_13v"]
    x0, y0 = p.start()
    res = bilevel.solve(p.problem(), x0, y0, method=Classical(**FAST), maxiter=4)
    info = res.info
    for key in (
        "upper_value",
        "lower_value",
        "lower_value_function",
        "lower_gap",
        "certified",
        "upper_violation",
        "lower_violation",
        "n_starts",
        "n_lower_starts",
        "n_rounds",
        "value_cuts",
        "lower_constraints_depend_on_x",
    ):
        assert key in info
    assert info["upper_value"] == pytest.approx(float(p.upper(res.x, res.y)), abs=1e-14)
    assert info["lower_value"] == pytest.approx(float(p.lower(res.x, res.y)), abs=1e-14)
    assert info["lower_gap"] == pytest.approx(info["lower_value"] - info["lower_value_function"])
    assert info["upper_violation"] == 0 and info["lower_violation"] == 0
    assert res.history["residual"][-1] <= 1e-6  # the round residual
    assert all(math.isnan(v) for v in res.history["hypergrad_norm"])  # none is formed


def test_one_round_is_not_converged():
    """Convergence needs a round that does not improve the certified incumbent."""
    p = LITERATURE["mb_2007_06"]
    x0, y0 = p.start()
    with pytest.warns(ConvergenceWarning):
        res = solve_classical(p.problem(), x0, y0, maxiter=1, **FAST)
    assert res.status == "max_iterations"


def test_coupled_lower_constraints_disable_cuts():
    """b_1998_07's lower constraints depend on x, so value-function cuts (valid only for an
    x-independent lower feasible set) are never added; one round through the Method API."""
    p = LITERATURE["b_1998_07"]
    x0, y0 = p.start()
    method, problem = Classical(**FAST), p.problem()
    state = method.step(problem, method.init(problem, x0, y0), 1)
    info = method.result_info(problem, state)
    assert info["lower_constraints_depend_on_x"] and info["value_cuts"] == 0
    assert info["certified"] and info["lower_gap"] <= 1e-6
    # one round cannot show convergence; no hypergradient is formed
    assert state.residual == math.inf and state.hypergrad is None


def test_the_program_is_built_once_per_run(monkeypatch):
    """The flattened program (and its linear analysis) is the method's context: built by
    ``prepare`` once per run, not at every round."""
    from bilevel.constrained import classical

    built = []

    class Counting(classical._Program):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(classical, "_Program", Counting)
    p = LITERATURE["mb_2007_13v"]
    x0, y0 = p.start()
    result = bilevel.solve(p.problem(), x0, y0, method=Classical(**FAST), maxiter=4)
    assert result.converged and result.n_iter >= 2 and len(built) == 1


# ------------------------------------------------------------------ bad input


def _simple(**kwargs):
    base = {
        "upper": lambda x, y: (x**2).sum() + (y**2).sum(),
        "lower": lambda x, y: ((y - x) ** 2).sum(),
        "x_bounds": (-1.0, 1.0),
        "y_bounds": (-2.0, 2.0),
    }
    base.update(kwargs)
    return BilevelProblem(**base)


def _infeasible_start_problem():
    """Bounds written as constraints (0 <= x <= 1, y >= 0); the lower level min (y - 1)^2
    s.t. y <= 1 - x1 - x2 is infeasible unless x1 + x2 <= 1, e.g. at x0 = (1, 1). Closed
    form: y* = 1 - x1 - x2, and F = |x - 1|^2 + y^2 is minimal on x1 + x2 = 1 (the
    unconstrained minimiser along x1 = x2 = t, t = 2/3, has x1 + x2 > 1): x* = (1/2, 1/2),
    y* = 0, F* = 1/2."""
    return BilevelProblem(
        upper=lambda x, y: ((x - 1) ** 2).sum() + y[0] ** 2,
        lower=lambda x, y: (y[0] - 1) ** 2,
        upper_ineq=lambda x, y: torch.cat([-x, x - 1]),
        lower_ineq=lambda x, y: torch.stack([x[0] + x[1] + y[0] - 1, -y[0]]),
    )


def test_infeasible_start_is_repaired_by_the_feasibility_phase():
    problem = _infeasible_start_problem()
    x0, y0 = torch.ones(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    with pytest.raises(LowerLevelInfeasibleError, match="infeasible at x"):
        certify_lower_level(problem, x0, y0, n_starts=3)  # the start itself is infeasible
    res = solve_classical(problem, x0, y0, **FAST)
    assert res.converged and res.info["start"] == "feasibility phase"
    torch.testing.assert_close(res.x, torch.tensor([0.5, 0.5]).double(), atol=1e-6, rtol=0)
    assert abs(float(res.y[0])) <= 1e-6
    assert abs(res.info["upper_value"] - 0.5) <= 1e-8
    assert res.info["certified"] and res.info["upper_violation"] <= 1e-7
    assert issubclass(LowerLevelInfeasibleError, InfeasibleError)
    assert issubclass(UnboundedLowerLevelError, UnboundedError)


def test_linear_rows_prove_infeasibility():
    """The lower level needs x >= 3 (0 <= y <= x - 3), the upper level x <= 1: the linear
    rows alone are infeasible, which linear programming proves (no multistart guess)."""
    problem = BilevelProblem(
        upper=lambda x, y: (x**2).sum() + (y**2).sum(),
        lower=lambda x, y: (y**2).sum(),
        upper_ineq=lambda x, y: torch.stack([x[0] - 1, -x[0]]),
        lower_ineq=lambda x, y: torch.stack([y[0] - x[0] + 3, -y[0]]),
    )
    with pytest.raises(LowerLevelInfeasibleError, match="no x satisfying the linear") as err:
        solve_classical(problem, torch.zeros(1), torch.zeros(1), **FAST)
    assert "HiGHS" in err.value.evidence and "infeasible" in err.value.evidence.lower()


def test_nonlinear_infeasibility_names_the_smallest_violation():
    """g = x^2 + y^2 + 1 > 0 everywhere: the feasibility phase reaches the minimum violation
    1 (at x = y = 0) and the error names it as its evidence."""
    problem = _simple(lower_ineq=lambda x, y: (x**2 + y**2 + 1).reshape(1))
    with pytest.raises(LowerLevelInfeasibleError, match="no x of the upper feasible set") as e:
        solve_classical(problem, torch.tensor([0.5]), torch.tensor([0.3]), **FAST)
    assert "smallest lower-level constraint violation" in e.value.evidence
    assert "is 1.000e+00 >" in e.value.evidence


def _linear_lower(**kwargs):
    """f = (x - 2) y: decreasing in y for every x in [-1, 1]."""
    return BilevelProblem(
        upper=lambda x, y: (x**2).sum() + (y**2).sum(),
        lower=lambda x, y: x[0] * y[0] - 2 * y[0],
        x_bounds=(-1.0, 1.0),
        **kwargs,
    )


def test_unbounded_lower_level_has_a_checked_recession_direction():
    with pytest.raises(UnboundedLowerLevelError, match="recession direction") as err:
        solve_classical(_linear_lower(), torch.tensor([0.0]), torch.tensor([0.0]), **FAST)
    cert = err.value
    assert cert.direction.shape == (1,) and cert.direction[0] > 0  # y -> +inf
    # independent check of the certificate on the model: f(x, y + t d) = (x - 2)(y + t d)
    x, y = float(cert.x[0]), float(cert.y[0])
    for t, value in zip(cert.steps, cert.values):
        assert value == pytest.approx((x - 2) * (y + t * cert.direction[0]), rel=1e-12)
    assert cert.steps[-1] >= 1e8 and cert.values[-1] < cert.values[0] - 1e8


def test_bounds_written_as_constraints_are_not_unbounded():
    """The same lower level with -10 <= y <= 10 as constraints: y* = 10 for every x, so
    F = x^2 + 100 and x* = 0, F* = 100 (x stays inside its bounds)."""
    problem = _linear_lower(lower_ineq=lambda x, y: torch.cat([y - 10, -y - 10]))
    res = solve_classical(problem, torch.tensor([0.0]), torch.tensor([0.0]), **FAST)
    assert res.converged and res.info["certified"]
    assert abs(res.info["upper_value"] - 100.0) <= 1e-8
    assert abs(float(res.y[0]) - 10.0) <= 1e-8 and abs(float(res.x[0])) <= 1e-6


def test_time_limit_returns_the_best_certified_point(monkeypatch):
    """A fake clock that advances one unit per reading makes the limit deterministic: the
    first start (x0) is solved and certified at once (anytime mode), then the limit ends the
    round long before its 400 starts are done. The point is the closed-form solution of
    _active_bound_problem (x* = 2, y* = 1, F* = 0.25)."""
    from bilevel.constrained import classical

    ticks = iter(range(10**9))
    monkeypatch.setattr(classical, "_clock", lambda: float(next(ticks)))
    with pytest.warns(ConvergenceWarning, match="time limit of 150 s reached"):
        res = solve_classical(
            _active_bound_problem(),
            torch.tensor([-3.0]),
            torch.tensor([0.5]),
            time_limit=150,
            n_starts=400,
            n_lower_starts=6,
            n_certify=1,
        )
    assert res.status == "time_limit" and "best certified point" in res.message
    assert res.info["time_limit_reached"] and res.info["certified"]
    assert res.info["n_starts"] < 400
    assert abs(res.info["upper_value"] - 0.25) <= 1e-10
    assert abs(float(res.x[0]) - 2.0) <= 1e-6


def test_time_limit_before_any_point():
    """A limit that passes before the first local solve: status time_limit, no point."""
    from bilevel.constrained import classical

    ticks = iter(range(10**9))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(classical, "_clock", lambda: float(next(ticks)) * 1e6)
        with pytest.warns(ConvergenceWarning, match="returning no feasible point"):
            res = solve_classical(
                _active_bound_problem(),
                torch.tensor([-3.0]),
                torch.tensor([0.5]),
                time_limit=1.0,
                **FAST,
            )
    assert res.status == "time_limit" and not res.info["certified"]
    assert res.info["n_starts"] == 0


def test_time_limit_through_bilevel_solve_is_not_silent():
    from bilevel.constrained import classical

    ticks = iter(range(10**9))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(classical, "_clock", lambda: float(next(ticks)) * 1e6)
        with pytest.warns(ConvergenceWarning):
            res = bilevel.solve(
                _active_bound_problem(),
                torch.tensor([-3.0]),
                torch.tensor([0.5]),
                method=Classical(time_limit=1.0, **FAST),
                maxiter=3,
            )
    assert res.status == "max_iterations" and res.info["time_limit_reached"]


@pytest.mark.parametrize(
    "bad",
    [lambda x, y: (y**2).sum(), lambda x, y: (y**2).reshape(1, 1), lambda x, y: [y[0]]],
    ids=["0-d", "2-d", "list"],
)
def test_constraint_of_the_wrong_shape(bad):
    with pytest.raises(ValueError, match="must return a 1-D tensor"):
        solve_classical(_simple(lower_ineq=bad), torch.zeros(1), torch.zeros(1), **FAST)
    with pytest.raises(ValueError, match="must return a 1-D tensor"):
        solve_classical(_simple(upper_eq=bad), torch.zeros(1), torch.zeros(1), **FAST)


def test_constraint_count_must_not_change():
    def varying(x, y):
        return y if float(x[0]) == 0.0 else torch.cat([y, y])

    problem = _simple(lower_ineq=varying)
    with pytest.raises(ValueError, match="number of constraints must not change"):
        solve_classical(problem, torch.zeros(1), torch.zeros(1), **FAST)


def test_inconsistent_bounds():
    with pytest.raises(ValueError, match="inconsistent"):
        _simple(y_bounds=(1.0, 0.0))
    problem = _simple(y_bounds=(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match=r"shape \(3,\), which does not broadcast.*\(1,\)"):
        solve_classical(problem, torch.zeros(1), torch.zeros(1), **FAST)
    # (2, 2) bounds neither broadcast to a (2, 3) y nor list its 6 entries
    problem = _simple(y_bounds=(torch.zeros(2, 2), 1.0))
    with pytest.raises(ValueError, match="does not broadcast.*does not have its 6 entries"):
        solve_classical(problem, torch.zeros(1), torch.zeros(2, 3), **FAST)


# ------------------------------------------------------------------ matrix-shaped y

_LO, _HI = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.5])
_A = torch.tensor([2.0, -1.0])
_B = torch.tensor([[3.0, 0.2], [2.0, 0.3]])
# the KKT/MPCC path alone: the value-function path adds nothing on a convex lower level
_LIGHT = {"n_starts": 1, "n_lower_starts": 2, "n_certify": 1, "use_value_function": False}


def _columns_problem(y_bounds):
    """Column j of the (2, 2) matrix y follows x_j inside [lo_j, hi_j]:
    f = |y - 1 x^T|^2 / 2, so y*_ij = clip(x_j, lo_j, hi_j), and F = |x - a|^2 + |y - B|^2.
    Closed form column by column (1-D piecewise quadratics): x*_0 = 2 with y*_i0 = 1 (upper
    bound active; the interior piece is minimal at x = 7/3 > 1, clipped value 6 > 5), and
    x*_1 = -1 with y*_i1 = 0 (lower bound active; 0.13 < 1.13). y may be given flat."""
    return BilevelProblem(
        upper=lambda x, y: ((x - _A) ** 2).sum() + ((y.reshape(2, 2) - _B) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y.reshape(2, 2) - x) ** 2).sum(),
        y_bounds=y_bounds,
    )


def test_matrix_y_with_broadcast_bounds_matches_flat_y_and_the_closed_form():
    """(2,) bounds broadcast over the rows of a (2, 2) y (NumPy rules, as LV-HBA reads
    them): the run equals the one on the flattened y with explicit 4-entry bounds (also
    accepted for the matrix y: one entry per entry, row-major), and the closed form."""
    full = (_LO.repeat(2), _HI.repeat(2))
    x0 = torch.zeros(2, dtype=torch.float64)
    runs = []
    for shape, bounds in [((2, 2), (_LO, _HI)), ((4,), full), ((2, 2), full)]:
        y0 = torch.zeros(shape, dtype=torch.float64)
        runs.append(solve_classical(_columns_problem(bounds), x0, y0, **_LIGHT))
    matrix, flat, matrix_flat_bounds = runs
    assert matrix.y.shape == (2, 2) and flat.y.shape == (4,)
    for other in (flat, matrix_flat_bounds):
        assert other.status == matrix.status == "converged"
        assert torch.equal(other.x, matrix.x)
        assert torch.equal(other.y.reshape(2, 2), matrix.y)
    torch.testing.assert_close(matrix.x, torch.tensor([2.0, -1.0]).double(), atol=1e-7, rtol=0)
    y_star = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).double()
    torch.testing.assert_close(matrix.y, y_star, atol=1e-8, rtol=0)
    assert matrix.info["certified"] and matrix.info["lower_violation"] == 0


def test_scalar_bounds_on_a_matrix_y():
    """Scalar bounds apply to every entry of a (2, 2) y and give the same run as explicit
    4-entry bounds; with y in [0, 0.5], column 0 is clipped at 0.5 and x*_0 = 2."""
    x0, y0 = torch.zeros(2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    scalar = solve_classical(_columns_problem((0.0, 0.5)), x0, y0, **_LIGHT)
    full = solve_classical(
        _columns_problem((torch.zeros(4), torch.full((4,), 0.5))), x0, y0, **_LIGHT
    )
    assert scalar.converged and torch.equal(scalar.x, full.x) and torch.equal(scalar.y, full.y)
    torch.testing.assert_close(scalar.x, torch.tensor([2.0, -1.0]).double(), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        scalar.y, torch.tensor([[0.5, 0.0], [0.5, 0.0]]).double(), atol=1e-8, rtol=0
    )


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_certify"):
        Classical(n_certify=0)
    with pytest.raises(ValueError, match="enable at least one"):
        Classical(use_mpcc=False, use_value_function=False)
    with pytest.raises(ValueError, match="time_limit must be a positive"):
        Classical(time_limit=0)
    with pytest.raises(TypeError, match="tensor"):
        certify_lower_level(_simple(), [0.0], torch.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        certify_lower_level(_simple(), torch.tensor([float("nan")]), torch.zeros(1))


def _active_bound_problem():
    return BilevelProblem(
        upper=lambda x, y: (x[0] - 2) ** 2 + (y[0] - 1.5) ** 2,
        lower=lambda x, y: 0.5 * (y[0] - x[0]) ** 2,
        x_bounds=(-5.0, 5.0),
        y_bounds=(0.0, 1.0),
    )


@pytest.mark.parametrize("flags", [{"use_mpcc": False}, {"use_value_function": False}])
def test_each_reformulation_alone(flags):
    """The KKT/MPCC path alone and the value-function path alone (cuts are valid: Y does
    not depend on x) both reach the closed-form solution x* = 2, y* = 1."""
    res = solve_classical(
        _active_bound_problem(), torch.tensor([-3.0]), torch.tensor([0.5]), **FAST, **flags
    )
    assert res.converged
    assert abs(float(res.x[0]) - 2.0) <= 1e-6 and abs(float(res.y[0]) - 1.0) <= 1e-9


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Round k draws its starts from default_rng([seed, k]): a run resumed from a one-round
    checkpoint ends where the uninterrupted run does."""
    p = LITERATURE["mb_2007_13v"]
    x0, y0 = p.start()
    path = tmp_path / "classical.pt"
    with pytest.warns(ConvergenceWarning):
        first = bilevel.solve(
            p.problem(),
            x0,
            y0,
            method=Classical(**FAST),
            maxiter=1,
            checkpoint=path,
            checkpoint_every=1,
        )
    assert path.exists() and first.n_iter == 1
    assert torch.load(path, weights_only=False)["iteration"] == 1
    resumed = bilevel.solve(
        p.problem(), x0, y0, method=Classical(**FAST), maxiter=4, checkpoint=path, resume=True
    )
    straight = bilevel.solve(p.problem(), x0, y0, method=Classical(**FAST), maxiter=4)
    assert resumed.converged and resumed.n_iter == straight.n_iter
    assert torch.equal(resumed.x, straight.x) and torch.equal(resumed.y, straight.y)
    assert resumed.info == straight.info


def test_failed_local_solves_certify_nothing(monkeypatch):
    """A multistart whose local solves all fail (SLSQP's status 4, "inequality constraints
    incompatible", seen at degenerate x) returns its starting points; the candidate's own
    value is then the best value found, but that is no certificate."""
    from bilevel.constrained import classical

    problem = _double_well(None)
    x, y = torch.tensor([0.3]), torch.tensor([1.0])
    y_best = certify_lower_level(problem, x, y, n_starts=5).y_best
    good = certify_lower_level(problem, x, y_best, n_starts=5)
    assert good.certified and good.n_converged >= 1
    real = classical._solve_nlp

    def failing(fn, z0, lo, hi, **kwargs):
        res = real(fn, z0, lo, hi, maxiter=0)  # evaluates the start, takes no step
        return dataclasses.replace(res, z=np.clip(z0, lo, hi), status=4)

    monkeypatch.setattr(classical, "_solve_nlp", failing)
    cert = certify_lower_level(problem, x, y_best, n_starts=5)
    assert cert.n_converged == 0 and not cert.certified and cert.gap <= 1e-12


def _toll_problem():
    """Toll setting on two parallel arcs: arc 1 costs 1 + x (x >= 0, the toll), arc 2
    costs 3; one unit of flow y = (y1, y2) takes the cheaper arc (the lower level is an LP,
    its constraints written as rows, the equality as two inequalities). The leader's
    revenue x y1 is largest at x = 2, where the arcs tie and the optimistic follower takes
    arc 1: F* = -2."""
    return BilevelProblem(
        upper=lambda x, y: -x[0] * y[0],
        lower=lambda x, y: (1 + x[0]) * y[0] + 3 * y[1],
        upper_ineq=lambda x, y: -x,
        lower_ineq=lambda x, y: torch.stack([y[0] + y[1] - 1, 1 - y[0] - y[1], -y[0], -y[1]]),
    )


def test_lp_lower_level_is_certified_exactly():
    """At a huge toll (1e7) the follower takes arc 2 (phi = 3); the exact LP certificate
    sees the gap of arc 1 (1 + 1e7 - 3), and certifies arc 2."""
    problem = _toll_problem()
    x = torch.tensor([1e7], dtype=torch.float64)
    bad = certify_lower_level(problem, x, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert not bad.certified and bad.phi == pytest.approx(3.0, abs=1e-9)
    assert bad.gap == pytest.approx(1e7 - 2, rel=1e-12)
    good = certify_lower_level(problem, x, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert good.certified and abs(good.gap) <= 1e-9


def test_toll_setting_closed_form():
    res = solve_classical(
        _toll_problem(), torch.zeros(1, dtype=torch.float64), torch.ones(2).double() / 2, **FAST
    )
    assert res.converged and res.info["certified"]
    assert abs(res.info["upper_value"] + 2.0) <= 1e-6 and abs(float(res.x[0]) - 2.0) <= 1e-6
    assert res.info["value_cuts"] >= 1  # the vertex cut of arc 2 bounds the toll
