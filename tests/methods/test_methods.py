"""Outer algorithms on the quadratic problem with known solution; checkpoint/resume."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import bilevel
from bilevel.errors import ConvergenceWarning
from bilevel.methods import Method, MethodState
from bilevel.testproblems import MultiBlockQuadratic, QuadraticBilevel


@pytest.fixture
def quadratic():
    q = QuadraticBilevel.random(dim_x=4, dim_y=8, seed=1, lower_condition=10.0)
    step = 1.0 / float(torch.linalg.eigvalsh(q.H).max())
    return q, step


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("aid", {"inner_steps": 20, "outer_step_size": 0.1}),
        (
            "aid",
            {
                "inner_steps": 20,
                "outer_step_size": 0.1,
                "linear_solver": "neumann",
                "linear_steps": 200,
            },
        ),
        ("itd", {"inner_steps": 150, "outer_step_size": 0.1}),
    ],
)
def test_deterministic_methods_reach_stationarity(quadratic, method, options):
    q, step = quadratic
    result = bilevel.solve(
        q.problem(),
        torch.zeros(4),
        torch.zeros(8),
        method,
        maxiter=3000,
        tol=1e-7,
        inner_step_size=step,
        **options,
    )
    assert result.converged, result.message
    assert float(q.hypergradient(result.x).norm()) <= 1e-5
    assert float((result.x - q.x_star()).norm()) <= 1e-5
    hist = result.history
    assert hist["iteration"][-1] == result.n_iter and len(hist["upper_value"]) == len(
        hist["iteration"]
    )
    assert hist["grad_calls"] == sorted(hist["grad_calls"]) and hist["hvp_calls"][-1] > 0


def test_nonconvergence_is_reported(quadratic):
    q, step = quadratic
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        result = bilevel.solve(
            q.problem(), torch.zeros(4), torch.zeros(8), "aid", maxiter=3, inner_step_size=step
        )
    assert result.status == "max_iterations" and not result.converged


def test_divergence_is_detected(quadratic):
    q, step = quadratic
    with pytest.warns(ConvergenceWarning, match="NaN or inf|grew geometrically"):
        result = bilevel.solve(
            q.problem(),
            torch.zeros(4),
            torch.zeros(8),
            "aid",
            maxiter=2000,
            inner_step_size=step,
            outer_step_size=1e3,
        )
    assert result.status == "diverged"


def test_checkpoint_resume_is_bit_for_bit(quadratic, tmp_path):
    q, step = quadratic
    options = {"inner_step_size": step, "outer_step_size": 0.1, "tol": 0.0}
    with pytest.warns(ConvergenceWarning):
        full = bilevel.solve(
            q.problem(), torch.zeros(4), torch.zeros(8), "aid", maxiter=40, **options
        )
    path = tmp_path / "run.pt"
    stopped = bilevel.solve(
        q.problem(),
        torch.zeros(4),
        torch.zeros(8),
        "aid",
        maxiter=40,
        checkpoint=path,
        checkpoint_every=10,
        callback=lambda it, state: it == 25,
        **options,
    )
    assert stopped.status == "stopped"
    with pytest.warns(ConvergenceWarning):
        resumed = bilevel.solve(
            q.problem(),
            torch.zeros(4),
            torch.zeros(8),
            "aid",
            maxiter=40,
            checkpoint=path,
            checkpoint_every=10,
            resume=True,
            **options,
        )
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    assert resumed.history["hypergrad_norm"][-1] == full.history["hypergrad_norm"][-1]


def test_inputs_are_not_modified_and_bad_options_rejected(quadratic):
    q, step = quadratic
    x0, y0 = torch.zeros(4), torch.zeros(8)
    bilevel.solve(q.problem(), x0, y0, "itd", maxiter=5, tol=1e9, inner_step_size=step)
    assert bool((x0 == 0).all()) and bool((y0 == 0).all())
    with pytest.raises(ValueError, match="unknown method"):
        bilevel.solve(q.problem(), x0, y0, "newton")
    with pytest.raises(TypeError, match="no option"):
        bilevel.solve(q.problem(), x0, y0, "aid", inner_stepsize=0.1)
    with pytest.raises(ValueError, match="NaN"):
        bilevel.solve(q.problem(), torch.full((4,), float("nan")), y0, "aid")


def test_every_registered_method_runs_by_name(quadratic):
    q, step = quadratic
    for name in bilevel.methods.METHODS:
        if name == "bsvrb":  # multi-block only: run by name in the multi-block test below
            continue
        if name == "classical":  # global multistart for small programs: tests/constrained/test_classical.py
            continue
        result = (
            bilevel.solve(
                q.problem(),
                torch.zeros(4),
                torch.zeros(8),
                name,
                maxiter=3,
                tol=1e9,
                inner_step_size=step,
            )
            if name != "vpbgd"
            else bilevel.solve(
                q.problem(),
                torch.zeros(4),
                torch.zeros(8),
                name,
                maxiter=3,
                tol=1e9,
                inner_step_size=step,
                step_size=0.01,
            )
        )
        assert result.n_iter >= 1 and result.history["grad_calls"][-1] > 0, name


def test_aid_on_a_multi_block_problem_reaches_the_mean_solution():
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=5, seed=20)
    blocks, problem = multi.blocks, multi.problem()
    mean_hessian = multi.hessian()
    x_star = multi.x_star()
    # the mean lower objective has Hessian blocks H_i / m: the inner step scales with m
    L = max(float(torch.linalg.eigvalsh(q.H).max()) for q in blocks) / 3
    result = bilevel.solve(
        problem,
        torch.zeros(3),
        torch.zeros(3, 5),
        "aid",
        maxiter=3000,
        tol=1e-8,
        inner_step_size=1.0 / L,
        inner_steps=20,
        outer_step_size=0.5 / float(torch.linalg.eigvalsh(mean_hessian).max()),
    )
    assert result.converged, result.message
    assert float((result.x - x_star).norm()) <= 1e-6 * max(1.0, float(x_star.norm()))
    # the blockwise method, by its registered name, on the same problem (all blocks)
    blockwise = bilevel.solve(
        problem,
        torch.zeros(3),
        torch.zeros(3, 5),
        "bsvrb",
        maxiter=1500,
        tol=0.0,
        outer_step_size=0.5 / float(torch.linalg.eigvalsh(mean_hessian).max()),
        inner_step_size=0.5 / (3 * L),
        linear_step_size=0.5 / (3 * L),
    )
    assert float((blockwise.x - x_star).norm()) <= 1e-6 * max(1.0, float(x_star.norm()))


def test_integer_starting_points_are_rejected_with_a_clear_error(quadratic):
    q, _ = quadratic
    with pytest.raises(TypeError, match="floating-point"):
        bilevel.solve(q.problem(), torch.zeros(4, dtype=torch.long), torch.zeros(8), "aid")


def test_finite_geometric_blow_up_is_reported_as_diverged(quadratic):
    """Regression (review): with an outer step size far too large (2.0; 0.1 converges),
    AID's iterates grow by a factor of about 12 per iteration and stay finite for 100
    iterations (about 1e110, the upper value 1e220), which used to end as "max_iterations". The growth rule (> 1.2x at each of
    30 consecutive iterations, past 1e6 times the initial scale) reports it at iteration
    30, with the ConvergenceWarning that non-finite iterates get."""
    q, step = quadratic
    with pytest.warns(ConvergenceWarning, match="grew geometrically"):
        result = bilevel.solve(
            q.problem(),
            torch.zeros(4),
            torch.zeros(8),
            "aid",
            maxiter=100,
            inner_step_size=step,
            outer_step_size=2.0,
        )
    assert result.status == "diverged" and result.n_iter == 30
    assert bool(torch.isfinite(result.x).all()) and float(result.x.abs().max()) > 1e6
    assert result.history["iteration"][-1] == 30  # the diverged iterate is recorded
    # the same run stopped one iteration earlier is not flagged
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        early = bilevel.solve(
            q.problem(),
            torch.zeros(4),
            torch.zeros(8),
            "aid",
            maxiter=29,
            inner_step_size=step,
            outer_step_size=2.0,
        )
    assert early.status == "max_iterations"


class _Scaling(Method):
    """x <- factor * x, y <- y: a blow-up by a fixed factor per iteration."""

    name = "scaling"

    def __init__(self, factor: float):
        self.factor = factor

    def step(self, problem, state: MethodState, iteration: int) -> MethodState:
        state.x = state.x * self.factor
        state.hypergrad = torch.ones(1)
        return state


@pytest.mark.parametrize(
    ("dtype", "factor", "scale"),
    [(torch.float64, 1e50, "1.341e+154"), (torch.float32, 1e5, "1.845e+19")],
)
def test_iterates_past_the_overflow_scale_are_diverged(dtype, factor, scale):
    """x = factor^k reaches 1e200 (float64) / 1e20 (float32), finite but past
    sqrt(finfo.max): their squares overflow, so the run is diverged at iteration 4."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (x**2).sum(), lower=lambda x, y: ((y - x) ** 2).sum()
    )
    one = torch.ones(1, dtype=dtype)
    with pytest.warns(ConvergenceWarning, match=f"beyond the overflow scale {re.escape(scale)}"):
        result = bilevel.solve(problem, one, one, _Scaling(factor), maxiter=10)
    assert result.status == "diverged" and result.n_iter == 4
    assert float(result.x) == pytest.approx(factor**4, rel=1e-6)


def test_half_precision_iterates_above_256_are_not_diverged():
    """sqrt(finfo(float16).max) is 256: legitimate half-precision iterates exceed it, so the
    overflow rule does not apply there (x = 2^k stays finite up to 2^10 = 1024)."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: x.sum(), lower=lambda x, y: ((y - x) ** 2).sum()
    )
    one = torch.ones(1, dtype=torch.float16)
    with pytest.warns(ConvergenceWarning, match="reached maxiter"):
        result = bilevel.solve(problem, one, one, _Scaling(2.0), maxiter=10)
    assert result.status == "max_iterations" and float(result.x) == 1024.0


def test_far_away_solution_is_not_mistaken_for_divergence():
    """A convergent run to x* = 1e9 from 0 (a million-fold the initial scale at the first
    step) is not flagged: its growth ratios decay to 1 (2, 1.5, 1.17, ...)."""
    target = 1e9
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: 0.5 * ((y - target) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
    )
    result = bilevel.solve(
        problem,
        torch.zeros(3),
        torch.zeros(3),
        "aid",
        maxiter=200,
        tol=1e-4,
        inner_steps=5,
        inner_step_size=1.0,
        outer_step_size=0.5,
    )
    assert result.converged
    torch.testing.assert_close(result.x, torch.full((3,), target), rtol=1e-12, atol=1e-4)


@pytest.mark.parametrize("dense_limit", [4_000_000, 0], ids=["dense-bvls", "sparse-trf"])
def test_lower_kkt_residual_matches_a_cvxpy_oracle(monkeypatch, dense_limit):
    """The recorded lower-level KKT residual, r^2 = min_{mu >= 0, nu} |grad_y f + J_c^T mu
    + J_h^T nu|^2 + |mu * c|^2 + |max(c, 0)|^2 + |h|^2 (c: g and the finite bounds), against
    the same minimisation written with hand-derived Jacobians and solved by cvxpy, for a
    (2, 2) matrix y with a nonlinear g, an equality and partly infinite bounds."""
    cp = pytest.importorskip("cvxpy")
    from bilevel.problem import _constraints
    from bilevel.problem._constraints import lower_kkt_residual as _lower_kkt_residual

    monkeypatch.setattr(_constraints, "DENSE_KKT_ENTRIES", dense_limit)

    inf = float("inf")
    lo = torch.tensor([[-0.5, -inf], [0.0, -inf]])
    hi = torch.tensor([[0.3, 1.0], [inf, inf]])
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (y**2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum() + 0.25 * (y**4).sum(),
        lower_ineq=lambda x, y: torch.stack([(y**2).sum() - 2.0, y[0, 0] + y[0, 1] * x[0] - 1.0]),
        lower_eq=lambda x, y: (y.sum() - x[1]).reshape(1),
        y_bounds=(lo, hi),
    )
    x = torch.tensor([0.7, -0.2])
    for y in (torch.tensor([[0.3, 0.9], [0.1, -0.4]]), torch.tensor([[-0.6, 0.2], [0.5, 1.3]])):
        grad = ((y - x) + y**3).flatten().numpy()
        g = np.array([float((y**2).sum() - 2.0), float(y[0, 0] + y[0, 1] * x[0] - 1.0)])
        J_g = np.stack([2 * y.flatten().numpy(), np.array([1.0, float(x[0]), 0.0, 0.0])])
        yf, lof, hif = y.flatten().numpy(), lo.flatten().numpy(), hi.flatten().numpy()
        up, down = np.flatnonzero(np.isfinite(hif)), np.flatnonzero(np.isfinite(lof))
        c = np.concatenate([g, yf[up] - hif[up], lof[down] - yf[down]])
        J_c = np.vstack([J_g, np.eye(4)[up], -np.eye(4)[down]])
        h = float(y.sum() - x[1])
        mu, nu = cp.Variable(c.size), cp.Variable(1)
        objective = cp.sum_squares(grad + J_c.T @ mu + np.ones((4, 1)) @ nu)
        objective += cp.sum_squares(cp.multiply(c, mu))
        value = cp.Problem(cp.Minimize(objective), [mu >= 0]).solve(solver="CLARABEL")
        expected = np.sqrt(value + np.sum(np.maximum(c, 0) ** 2) + h**2)
        assert expected > 0.1
        assert _lower_kkt_residual(problem, x, y) == pytest.approx(expected, rel=1e-7)


def test_unconstrained_lower_level_keeps_lower_grad_norm(quadratic):
    """Without lower-level constraints the column stays ``lower_grad_norm`` = |H y - J x - b|
    (the KKT residual would equal it); upper-level bounds alone do not change that."""
    q, step = quadratic
    with pytest.warns(ConvergenceWarning):
        result = bilevel.solve(
            q.problem(), torch.zeros(4), torch.zeros(8), "aid", maxiter=2, inner_step_size=step
        )
    assert "lower_kkt_residual" not in result.history
    grad = q.H @ result.y - q.J @ result.x - q.b
    assert result.history["lower_grad_norm"][-1] == pytest.approx(float(grad.norm()), rel=1e-12)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: ((x - 3) ** 2).sum(),
        lower=lambda x, y: ((y - x) ** 2).sum(),
        x_bounds=(-1.0, 1.0),
    )
    with pytest.warns(ConvergenceWarning):
        result = bilevel.solve(problem, torch.zeros(1), torch.ones(1), "lv-hba", maxiter=2)
    assert "lower_kkt_residual" not in result.history
    expected = float((2 * (result.y - result.x)).norm())
    assert result.history["lower_grad_norm"][-1] == pytest.approx(expected, rel=1e-12)


def test_lower_kkt_residual_closed_form_for_bounds_equals_least_squares():
    """Bounds only: the separable closed form equals the general bounded least squares
    (forced by adding a constant, inactive inequality, which changes nothing), for iterates
    inside, on and outside a box with some infinite sides, and for a pytree x."""
    from bilevel.problem._constraints import lower_kkt_residual as _lower_kkt_residual

    inf = float("inf")
    lo = torch.tensor([-0.5, -inf, 0.0, -1.0, 0.2])
    hi = torch.tensor([0.5, 1.0, inf, 1.0, 0.2])

    def lower(x, y):
        return 0.5 * ((y - x["a"]) ** 2).sum() + 0.1 * (y**4).sum()

    boxed = bilevel.BilevelProblem(upper=lambda x, y: (y**2).sum(), lower=lower, y_bounds=(lo, hi))
    forced = bilevel.BilevelProblem(
        upper=lambda x, y: (y**2).sum(),
        lower=lower,
        y_bounds=(lo, hi),
        lower_ineq=lambda x, y: y.sum().reshape(1) * 0.0 - 1.0,
    )
    rng = np.random.default_rng(0)
    x = {"a": torch.tensor(rng.normal(size=5) * 2)}
    for _ in range(5):
        y = torch.tensor(rng.normal(size=5))
        y[0] = 0.5  # on a bound
        closed = _lower_kkt_residual(boxed, x, y)
        general = _lower_kkt_residual(forced, x, y)
        assert np.isfinite(closed) and closed > 0
        assert closed == pytest.approx(general, rel=1e-9, abs=1e-12)


def test_protocol_prepare_context_and_residual(tmp_path):
    """``prepare`` runs once per call (a resumed one included) and its context reaches
    ``init`` and ``step`` but never the checkpoint; ``state.residual`` drives stopping and
    the history's ``residual`` column, while ``hypergrad_norm`` stays NaN for a method that
    forms no hypergradient. The method halves ``x`` (residual ``|x|``) until ``|x| <= tol``."""
    from dataclasses import dataclass

    calls = []

    @dataclass
    class Halving(Method):
        name = "halving"

        def prepare(self, problem, x0, y0):
            calls.append("prepare")
            return {"factor": 0.5}

        def init(self, problem, x0, y0, context=None):
            calls.append(("init", context["factor"]))
            return MethodState(x=x0, y=y0)

        def step(self, problem, state, iteration):
            state.x = state.x * state.context["factor"]
            state.residual = float(state.x.abs().max())
            return state

    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (x**2).sum(), lower=lambda x, y: ((y - x) ** 2).sum()
    )
    x0, y0 = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    path = tmp_path / "run.pt"
    full = bilevel.solve(problem, x0, y0, Halving(), maxiter=30, tol=1e-3)
    assert full.converged and full.n_iter == 10  # 2^-10 <= 1e-3 < 2^-9
    assert full.history["residual"][1:] == [2.0**-k for k in range(1, 11)]
    assert all(math.isnan(v) for v in full.history["hypergrad_norm"])
    assert "residual" in full.message
    assert calls == ["prepare", ("init", 0.5)]
    calls.clear()
    with pytest.warns(ConvergenceWarning):
        bilevel.solve(problem, x0, y0, Halving(), maxiter=4, tol=1e-3, checkpoint=path,
                      checkpoint_every=4)
    saved = torch.load(path, weights_only=False)
    assert saved["state"].context is None and saved["state"].residual == 2.0**-4
    resumed = bilevel.solve(
        problem, x0, y0, Halving(), maxiter=30, tol=1e-3, checkpoint=path, resume=True
    )
    assert calls == ["prepare", ("init", 0.5), "prepare"]  # rebuilt, init not re-run
    assert resumed.history["residual"][1:] == full.history["residual"][1:]
    torch.testing.assert_close(resumed.x, full.x, rtol=0, atol=0)
