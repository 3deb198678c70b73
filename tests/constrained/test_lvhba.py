"""LV-HBA against closed-form bilevel solutions; projections against cvxpy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import bilevel
from bilevel.constrained import (
    LVHBA,
    InfeasibleError,
    project_affine,
    project_nonlinear,
    project_polyhedron,
)

D = torch.float64
N = 100


def toy_problem(**kwargs) -> bilevel.BilevelProblem:
    """The paper's toy problem (LLC): x* = -0.3 e, y* = (0.7 e, -0.4 e), n = 100."""

    def upper(x, y):
        return 0.5 * ((x - y[N:]) ** 2).sum() + 0.5 * ((y[:N] - 1) ** 2).sum()

    def lower(x, y):
        return 0.5 * (y[:N] ** 2).sum() - x @ y[:N] + y[N:].sum()

    def coupled(x, y):
        return (x.sum() + y.sum()).reshape(1)

    return bilevel.BilevelProblem(upper=upper, lower=lower, lower_eq=coupled, **kwargs)


def test_toy_problem_reaches_relative_error_1e_3_on_x():
    result = bilevel.solve(
        toy_problem(),
        torch.full((N,), 10.0, dtype=D),
        torch.full((2 * N,), 10.0, dtype=D),
        "lv-hba",
        maxiter=2000,
        tol=1e-2,  # on the c_k-scaled residual; measured: converged after 1030 iterations
        record_every=100,
    )
    assert result.converged, result.message
    x_err = torch.linalg.vector_norm(result.x + 0.3) / (0.3 * math.sqrt(N))
    assert x_err <= 1e-3
    y_star = torch.cat([torch.full((N,), 0.7, dtype=D), torch.full((N,), -0.4, dtype=D)])
    assert torch.linalg.vector_norm(result.y - y_star) / torch.linalg.vector_norm(y_star) < 2e-3
    # the lower level's multiplier of e^T x + e^T y = 0 is -1 (stationarity in y2: e + nu e = 0)
    assert result.info["eq_multipliers"].shape == (1,)
    assert abs(float(result.info["eq_multipliers"][0]) + 1.0) < 1e-2
    assert result.info["projection"] == "affine"
    assert result.info["constraint_violation"] < 1e-10
    assert result.info["lower_level_solved"]
    # the recorded lower-level KKT residual (closed form below) falls from 7 to < 1e-2
    residuals = result.history["lower_kkt_residual"]
    assert residuals[0] > 5 and residuals[-1] < 1e-2
    assert residuals[-1] == pytest.approx(_toy_lower_kkt_residual(result.x, result.y), rel=1e-10)


def coupled_inequality_problem(**kwargs) -> bilevel.BilevelProblem:
    """min (x-1)^2 + (y-0.8)^2,  y in argmin {1/2 (y-x)^2 : x + y <= 1}.

    y*(x) = min(x, 1 - x); the solution is x* = 0.6, y* = 0.4 (value 0.32 < 0.34, the best
    value on the branch x <= 1/2), with multiplier mu* = x* - y* = 0.2 > 0.
    """
    return bilevel.BilevelProblem(
        upper=lambda x, y: ((x - 1) ** 2).sum() + ((y - 0.8) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_ineq=lambda x, y: y + x - 1,
        **kwargs,
    )


def test_coupled_inequality_solution_and_multiplier():
    zero = torch.zeros(1, dtype=D)
    result = bilevel.solve(
        coupled_inequality_problem(),
        zero,
        zero,
        "lv-hba",
        maxiter=3000,
        tol=1e-6,
        c0=1.0,
        p=0.3,
        record_every=100,
    )
    assert result.converged, result.message
    assert torch.allclose(result.x, torch.tensor([0.6], dtype=D), atol=1e-5)
    assert torch.allclose(result.y, torch.tensor([0.4], dtype=D), atol=1e-5)
    assert abs(float(result.info["ineq_multipliers"][0]) - 0.2) < 1e-4
    assert result.info["projection"] == "halfspace"


def test_active_upper_bound_on_x_with_polyhedral_projection():
    """With x <= 0.5 the solution moves to the other branch: y*(x) = x for x <= 1/2, so
    F = (x-1)^2 + (x-0.8)^2 on [.., 0.5] is minimised at the bound x = 0.5, y = 0.5."""
    problem = coupled_inequality_problem(x_bounds=(-1.0, 0.5), y_bounds=(-2.0, 2.0))
    zero = torch.zeros(1, dtype=D)
    result = bilevel.solve(
        problem, zero, zero, "lv-hba", maxiter=3000, tol=1e-6, c0=1.0, p=0.3, record_every=100
    )
    assert result.converged, result.message
    assert result.info["projection"] == "polyhedron"
    assert torch.allclose(result.x, torch.tensor([0.5], dtype=D), atol=1e-5)
    assert torch.allclose(result.y, torch.tensor([0.5], dtype=D), atol=1e-5)


def test_upper_level_constraint_enters_the_joint_projection():
    """The same solution as with x_bounds when x <= 0.5 is an upper-level constraint
    G(x, y) = x - 0.5 <= 0 (projected jointly with the lower constraint)."""
    problem = coupled_inequality_problem(upper_ineq=lambda x, y: x - 0.5)
    zero = torch.zeros(1, dtype=D)
    result = bilevel.solve(
        problem, zero, zero, "lv-hba", maxiter=3000, tol=1e-6, c0=1.0, p=0.3, record_every=100
    )
    assert result.converged, result.message
    assert result.info["projection"] == "polyhedron"
    torch.testing.assert_close(result.x, torch.tensor([0.5], dtype=D), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.y, torch.tensor([0.5], dtype=D), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # short runs
def test_gamma_conventions_agree_with_inverted_gammas():
    problem = toy_problem()
    x0, y0 = torch.full((N,), 10.0, dtype=D), torch.full((2 * N,), 10.0, dtype=D)
    results = [
        bilevel.solve(
            problem,
            x0,
            y0,
            LVHBA(gamma1=g1, gamma2=g2, gamma_convention=conv),
            maxiter=30,
            tol=0.0,
            record_every=30,
        )
        for g1, g2, conv in ((10.0, 4.0, "divide"), (0.1, 0.25, "multiply"))
    ]
    torch.testing.assert_close(results[0].x, results[1].x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0].y, results[1].y, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # short runs
def test_projection_callback_reproduces_the_builtin_affine_projection():
    def onto_zero_sum(x, y):
        shift = (x.sum() + y.sum()) / (x.numel() + y.numel())
        return x - shift, y - shift

    problem = toy_problem()
    x0, y0 = torch.full((N,), 10.0, dtype=D), torch.full((2 * N,), 3.0, dtype=D)
    a = bilevel.solve(problem, x0, y0, "lv-hba", maxiter=50, tol=0.0, record_every=50)
    b = bilevel.solve(
        problem, x0, y0, LVHBA(projection=onto_zero_sum), maxiter=50, tol=0.0, record_every=50
    )
    assert b.info["projection"] == "callback"
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # residual > 0
def test_fixed_penalty_fixed_point_matches_the_closed_form():
    """Fixed c (p = 0) on F = 1/2||y - b||^2 + 1/2||x||^2, f = 1/2||y - x||^2.

    The proximal value function is v = 1/(2 (1 + gamma1)) ||y - x||^2, so the iteration's
    fixed point minimises F + c k/2 ||y - x||^2 with k = gamma1/(1 + gamma1):
    x = s b / (1 + 2 s), s = c k; the bilevel solution b/2 is its limit as c -> inf."""
    b = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: 0.5 * ((y - b) ** 2).sum() + 0.5 * (x**2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        y_bounds=(-10.0, 10.0),
    )
    z = torch.zeros(3, dtype=D)
    c, gamma1 = 10.0, 10.0
    result = bilevel.solve(
        problem, z, z, "lv-hba", maxiter=1500, tol=0.0, c0=c, p=0.0, record_every=500
    )
    assert result.info["projection"] == "box"
    s = c * gamma1 / (1 + gamma1)
    torch.testing.assert_close(result.x, s * b / (1 + 2 * s), atol=1e-9, rtol=0)
    torch.testing.assert_close(result.y, b - s * b / (1 + 2 * s), atol=1e-9, rtol=0)
    # y is not the lower-level solution x at finite c: the residual and the gap say so
    assert result.status == "max_iterations"
    assert result.info["proximal_gap"] > 1e-3


# -------------------------------------------------------------------------- projections
def _cvxpy_projection(v, A_eq=None, c_eq=None, A_in=None, c_in=None, lo=None, hi=None):
    cp = pytest.importorskip("cvxpy")
    w = cp.Variable(v.size)
    cons = []
    if A_eq is not None:
        cons.append(A_eq @ w + c_eq == 0)
    if A_in is not None:
        cons.append(A_in @ w + c_in <= 0)
    if lo is not None:
        cons += [w >= lo, w <= hi]
    cp.Problem(cp.Minimize(cp.sum_squares(w - v)), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return w.value


def test_polyhedral_projection_matches_cvxpy():
    rng = np.random.default_rng(0)
    n, m_in, m_eq = 12, 8, 3
    A_in, A_eq = rng.normal(size=(m_in, n)), rng.normal(size=(m_eq, n))
    w_feas = rng.uniform(-0.5, 0.5, size=n)
    c_in = -(A_in @ w_feas) - rng.uniform(0.1, 1.0, size=m_in)  # w_feas strictly feasible
    c_eq = -(A_eq @ w_feas)
    lo, hi = np.full(n, -1.0), np.full(n, 1.0)
    v = 3 * rng.normal(size=n)
    t = lambda a: torch.as_tensor(a, dtype=D)
    res = project_polyhedron(
        t(v), A_eq=t(A_eq), c_eq=t(c_eq), A_in=t(A_in), c_in=t(c_in), lower=t(lo), upper=t(hi)
    )
    expected = _cvxpy_projection(v, A_eq, c_eq, A_in, c_in, lo, hi)
    np.testing.assert_allclose(res.w.numpy(), expected, atol=1e-6)
    assert res.violation < 1e-8


def test_affine_projection_closed_form_and_inconsistent_system():
    rng = np.random.default_rng(1)
    A = torch.as_tensor(rng.normal(size=(3, 7)), dtype=D)
    c = torch.as_tensor(rng.normal(size=3), dtype=D)
    v = torch.as_tensor(rng.normal(size=7), dtype=D)
    w = project_affine(v, A, c)
    assert torch.allclose(A @ w + c, torch.zeros(3, dtype=D), atol=1e-12)
    # optimality: v - w lies in the row space of A
    coef = torch.linalg.lstsq(A.T, (v - w).unsqueeze(-1)).solution
    assert torch.allclose(A.T @ coef.squeeze(-1), v - w, atol=1e-12)
    with pytest.raises(InfeasibleError, match="inconsistent"):
        project_affine(v, torch.cat([A[:1], A[:1]]), torch.tensor([0.0, 1.0], dtype=D))


def test_nonlinear_projection_onto_a_ball_matches_the_closed_form():
    v = torch.tensor([3.0, -4.0, 0.0], dtype=D)
    w = project_nonlinear(v, ineq=lambda w: (w @ w - 4.0).reshape(1))
    torch.testing.assert_close(w, 2.0 * v / 5.0, atol=1e-6, rtol=0)
    with pytest.raises(InfeasibleError):
        project_nonlinear(
            v,
            ineq=lambda w: (w @ w - 1.0).reshape(1),
            lower=torch.full((3,), 2.0, dtype=D),
            upper=torch.full((3,), 3.0, dtype=D),
        )


def test_nonlinear_coupled_constraint_through_lv_hba():
    """min (x - 2)^2 + ||y - (1, 1)||^2 with y in argmin {1/2||y - (x, x)||^2 : ||y||^2 <= 1}.

    For x > 1/sqrt(2) the lower solution is (1, 1)/sqrt(2) regardless of x, so x* = 2."""
    target = torch.ones(2, dtype=D)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: ((x - 2) ** 2).sum() + ((y - target) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_ineq=lambda x, y: (y @ y - 1.0).reshape(1),
    )
    result = bilevel.solve(
        problem,
        torch.ones(1, dtype=D),
        torch.zeros(2, dtype=D),
        "lv-hba",
        maxiter=1500,
        tol=1e-6,
        c0=1.0,
        p=0.3,
        record_every=100,
    )
    assert result.info["projection"] == "nonlinear"
    torch.testing.assert_close(result.x, torch.tensor([2.0], dtype=D), atol=1e-4, rtol=0)
    torch.testing.assert_close(result.y, target / math.sqrt(2), atol=1e-4, rtol=0)


def test_svm_recipe_updates_C_and_decreases_the_upper_objective():
    """The official script never changes C (its ``add`` is not in place): here every run
    must move C and lower the smoothed validation loss."""
    from bilevel.recipes.svm_hyperparameters import SVMHyperparametersConfig, run

    result = run(SVMHyperparametersConfig.from_options({"size": "fast"}))
    assert result.c_change > 1e-3
    values = result.history["upper_value"]
    assert len(values) == result.config.iterations
    assert values[-1] < result.initial_upper_value - 1e-4
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    for key in ("test_accuracy", "cv_test_accuracy", "default_test_accuracy"):
        assert 0.8 < getattr(result, key) <= 1.0, key
    assert set(result.metrics()) >= {"test_accuracy", "cv_test_accuracy", "c_change"}


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # short runs
def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    problem = coupled_inequality_problem(x_bounds=(-1.0, 0.5), y_bounds=(-2.0, 2.0))
    zero = torch.zeros(1, dtype=D)
    path = tmp_path / "lvhba.pt"
    options = {"tol": 0.0, "c0": 1.0, "p": 0.3, "record_every": 5}
    full = bilevel.solve(problem, zero, zero, "lv-hba", maxiter=20, **options)
    bilevel.solve(
        problem, zero, zero, "lv-hba", maxiter=10, checkpoint=path, checkpoint_every=10, **options
    )
    resumed = bilevel.solve(
        problem, zero, zero, "lv-hba", maxiter=20, checkpoint=path, resume=True, **options
    )
    torch.testing.assert_close(resumed.x, full.x, rtol=0, atol=1e-10)
    torch.testing.assert_close(resumed.info["z"], full.info["z"], rtol=0, atol=1e-10)
    # a checkpoint from before the lower_kkt_residual column (old key) still resumes
    saved = torch.load(path, weights_only=False)
    saved["history"]["lower_grad_norm"] = saved["history"].pop("lower_kkt_residual")
    old = tmp_path / "old.pt"
    torch.save(saved, old)
    again = bilevel.solve(
        problem, zero, zero, "lv-hba", maxiter=20, checkpoint=old, resume=True, **options
    )
    torch.testing.assert_close(again.x, full.x, rtol=0, atol=1e-10)
    column = again.history["lower_kkt_residual"]
    assert "lower_grad_norm" not in again.history
    assert len(column) == len(full.history["lower_kkt_residual"])
    n_old = len(saved["history"]["lower_grad_norm"])
    assert all(np.isnan(v) for v in column[:n_old])
    np.testing.assert_allclose(column[n_old:], full.history["lower_kkt_residual"][n_old:])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"gamma_convention": "times"}, "gamma_convention"),
        ({"projection": "qp"}, "projection must be"),
        ({"outer_step_size": 0.0}, "outer_step_size must be a positive"),
        ({"p": -0.1}, "p must be a non-negative"),
    ],
)
def test_invalid_hyperparameters_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        LVHBA(**options)


def test_converged_status_means_close_to_the_solution():
    """Regression (review): the (x, y) part of the stopping residual is scaled by c_k, so
    "converged" is not declared merely because steps of size ~1/c_k are small.
    F = (x-3)^2 + (y-2)^2, y*(x) = clip(x, 0, 1): x* = 3, y* = 1. Measured: converged after
    5597 iterations at x = 2.995 (the unscaled residual stopped at x = 2.23)."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: ((x - 3) ** 2).sum() + ((y - 2) ** 2).sum(),
        lower=lambda x, y: ((y - x) ** 2).sum(),
        x_bounds=(-5.0, 5.0),
        y_bounds=(0.0, 1.0),
    )
    zero = torch.zeros(1, dtype=D)
    result = bilevel.solve(problem, zero, zero, "lv-hba", tol=1e-2, maxiter=8000, record_every=100)
    assert result.converged
    assert abs(float(result.x) - 3.0) <= 1e-2
    assert abs(float(result.y) - 1.0) <= 1e-6


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # short runs
def test_bounds_broadcast_or_flat_on_a_matrix_y_give_the_same_run():
    """Bounds of a (2, 3) y given as (3,) tensors (broadcast over the rows), as 6 entries in
    row-major order, or as (2, 3) tensors are the same box (read through
    BilevelProblem.bounds_like, as the classical solver reads them): identical iterates,
    inside the column bounds."""
    lo, hi = torch.tensor([-1.0, 0.0, -2.0], dtype=D), torch.tensor([1.0, 0.5, 2.0], dtype=D)
    b = torch.tensor([[3.0, 0.2, 0.1], [2.0, 0.3, -0.1]], dtype=D)
    runs = []
    for bounds in [(lo, hi), (lo.repeat(2), hi.repeat(2)), (lo.expand(2, 3), hi.expand(2, 3))]:
        problem = bilevel.BilevelProblem(
            upper=lambda x, y: ((x - 1) ** 2).sum() + ((y - b) ** 2).sum(),
            lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
            y_bounds=bounds,
        )
        x0, y0 = torch.zeros(3, dtype=D), torch.zeros(2, 3, dtype=D)
        runs.append(bilevel.solve(problem, x0, y0, "lv-hba", maxiter=30))
    for run in runs[1:]:
        assert torch.equal(run.x, runs[0].x) and torch.equal(run.y, runs[0].y)
    y = runs[0].y
    assert bool((y >= lo).all() and (y <= hi).all()) and float(y[:, 0].max()) == 1.0


def _toy_lower_kkt_residual(x: torch.Tensor, y: torch.Tensor) -> float:
    """Closed form for the toy problem: grad_y f = (y1 - x, e), J_h = e^T (h = e^T x +
    e^T y), so r^2 = min_nu sum (y1 - x + nu)^2 + N (1 + nu)^2 + h^2 with
    nu* = -(sum(y1 - x) + N) / (2 N)."""
    a = y[:N] - x
    nu = -(float(a.sum()) + N) / (2 * N)
    h = float(x.sum() + y.sum())
    return math.sqrt(float(((a + nu) ** 2).sum()) + N * (1 + nu) ** 2 + h**2)


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # maxiter=0
def test_lower_kkt_residual_is_recorded_and_vanishes_at_the_solution():
    """Constrained lower levels record ``lower_kkt_residual`` (stationarity with the best
    multipliers, complementarity, feasibility) instead of the meaningless
    ``lower_grad_norm``: 0 at the toy problem's solution (where |grad_y f| >= sqrt(N) = 10),
    the closed form elsewhere."""
    x_star = torch.full((N,), -0.3, dtype=D)
    y_star = torch.cat([torch.full((N,), 0.7, dtype=D), torch.full((N,), -0.4, dtype=D)])
    at_solution = bilevel.solve(toy_problem(), x_star, y_star, "lv-hba", maxiter=0)
    assert "lower_grad_norm" not in at_solution.history
    assert at_solution.history["lower_kkt_residual"] == [pytest.approx(0.0, abs=1e-12)]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(N, generator=gen, dtype=D)
    y0 = torch.randn(2 * N, generator=gen, dtype=D)
    run = bilevel.solve(toy_problem(), x0, y0, "lv-hba", maxiter=0)  # records the projected start
    expected = _toy_lower_kkt_residual(run.x, run.y)
    assert expected > 1.0
    assert run.history["lower_kkt_residual"][0] == pytest.approx(expected, rel=1e-12)
