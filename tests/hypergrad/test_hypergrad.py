"""Hypergradient estimators against the closed form of a quadratic bilevel problem."""

from __future__ import annotations

import pytest
import torch

from bilevel import hypergrad
from bilevel.problem import BilevelProblem
from bilevel.testproblems import MultiBlockQuadratic, QuadraticBilevel
from tests.conftest import relative_error


@pytest.fixture
def quadratic():
    q = QuadraticBilevel.random(dim_x=4, dim_y=8, seed=3, lower_condition=10.0)
    x = torch.randn(4)
    step = 1.0 / float(torch.linalg.eigvalsh(q.H).max())
    return q, q.problem(), x, step


def test_implicit_matches_closed_form(quadratic):
    q, problem, x, _ = quadratic
    for solve in ("cg", "gmres", "dense"):
        est = hypergrad.implicit(problem, x, q.y_star(x), solve=solve, tol=1e-13)
        assert relative_error(est.grad, q.hypergradient(x)) <= 1e-8
        assert est.linear_solve.converged and est.hvp_calls >= 2


def test_unrolled_full_and_truncated_match_closed_form_for_long_runs(quadratic):
    q, problem, x, step = quadratic
    exact = q.hypergradient(x)
    full = hypergrad.unrolled(problem, x, torch.zeros(8), steps=2000, step_size=step)
    assert relative_error(full.grad, exact) <= 1e-8
    assert relative_error(full.y, q.y_star(x)) <= 1e-10
    truncated = hypergrad.unrolled(
        problem, x, torch.zeros(8), steps=2000, truncate=1000, step_size=step
    )
    assert relative_error(truncated.grad, exact) <= 1e-8
    assert truncated.hvp_calls == 1000


def test_truncation_bias_matches_theory(quadratic):
    """From y* itself, K-step truncated ITD has Jacobian (I - (I - eta H)^K) H^{-1} J."""
    q, problem, x, step = quadratic
    K = 5
    est = hypergrad.unrolled(problem, x, q.y_star(x), steps=K, step_size=step)
    y = q.y_star(x)
    contraction = torch.linalg.matrix_power(torch.eye(8) - step * q.H, K)
    jac = (torch.eye(8) - contraction) @ torch.linalg.solve(q.H, q.J)
    expected = q.C @ x + q.d + q.K.T @ y + jac.T @ (q.A @ y + q.K @ x + q.c)
    assert relative_error(est.grad, expected) <= 1e-10


def test_forward_mode_matches_reverse_mode(quadratic):
    q, problem, x, step = quadratic
    fwd = hypergrad.forward(problem, x, torch.zeros(8), steps=50, step_size=step)
    rev = hypergrad.unrolled(problem, x, torch.zeros(8), steps=50, step_size=step)
    assert relative_error(fwd.grad, rev.grad) <= 1e-12
    long = hypergrad.forward(problem, x, torch.zeros(8), steps=2000, step_size=step)
    assert relative_error(long.grad, q.hypergradient(x)) <= 1e-8


def test_neumann_series_includes_first_term_and_step(quadratic):
    """Q = 0 gives v = eta grad_y F exactly (the stocBiO code would give 0)."""
    q, problem, x, step = quadratic
    y = q.y_star(x)
    est0 = hypergrad.neumann(problem, x, y, steps=0, step_size=step)
    gy_F = q.A @ y + q.K @ x + q.c
    expected = q.C @ x + q.d + q.K.T @ y + q.J.T @ (step * gy_F)
    assert relative_error(est0.grad, expected) <= 1e-12
    long = hypergrad.neumann(problem, x, y, steps=3000, step_size=step)
    assert relative_error(long.grad, q.hypergradient(x)) <= 1e-8


def test_penalty_bias_decreases_like_one_over_multiplier(quadratic):
    q, problem, x, step = quadratic
    exact = q.hypergradient(x)
    errors = []
    for multiplier in (10.0, 100.0, 1000.0):
        est = hypergrad.penalty(
            problem, x, q.y_star(x), multiplier=multiplier, steps=5000, step_size=step
        )
        assert est.hvp_calls == 0
        errors.append(relative_error(est.grad, exact))
    assert errors[0] / errors[1] == pytest.approx(10, rel=0.2)
    assert errors[1] / errors[2] == pytest.approx(10, rel=0.2)


def test_pytree_variables():
    """x and y as dicts: implicit estimate equals the flat closed form."""
    q = QuadraticBilevel.random(dim_x=4, dim_y=6, seed=5)

    def lower(x, y):
        return q.lower(torch.cat([x["a"], x["b"]]), torch.cat([y["u"], y["v"]]))

    def upper(x, y):
        return q.upper(torch.cat([x["a"], x["b"]]), torch.cat([y["u"], y["v"]]))

    x_flat = torch.randn(4)
    y_flat = q.y_star(x_flat)
    x = {"a": x_flat[:1], "b": x_flat[1:]}
    y = {"u": y_flat[:2], "v": y_flat[2:]}
    est = hypergrad.implicit(BilevelProblem(upper, lower), x, y, tol=1e-13)
    assert (
        relative_error(torch.cat([est.grad["a"], est.grad["b"]]), q.hypergradient(x_flat)) <= 1e-8
    )


def test_objective_must_return_scalar(quadratic):
    q, _, x, _ = quadratic
    bad = BilevelProblem(upper=lambda x, y: torch.stack([q.upper(x, y)] * 2), lower=q.lower)
    with pytest.raises(ValueError, match="scalar"):
        hypergrad.implicit(bad, x, q.y_star(x))
    with pytest.raises(TypeError, match="callable"):
        BilevelProblem(upper=q.upper, lower="f")


def test_multi_block_problem_hypergradient_is_the_mean_of_blocks():
    """m independent lower problems sharing x: grad h = mean_i grad h_i (closed forms)."""
    multi = MultiBlockQuadratic.random(n_blocks=4, dim_x=3, dim_y=5, seed=10)
    problem = multi.problem()
    x = torch.randn(3)
    y = multi.y_star(x)
    exact = torch.stack([q.hypergradient(x) for q in multi.blocks]).mean(0)
    est = hypergrad.implicit(problem, x, y, tol=1e-13)
    assert relative_error(est.grad, exact) <= 1e-8
    value = torch.stack([q.value(x) for q in multi.blocks]).mean()
    assert abs(float(problem.upper_value(x, y) - value)) <= 1e-12
    with pytest.raises(ValueError, match="leading"):
        problem.upper_value(x, y[:2])
    with pytest.raises(ValueError, match="n_blocks"):
        BilevelProblem(problem.upper, problem.lower, n_blocks=0)
