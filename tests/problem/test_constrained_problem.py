"""Bad input for constrained bilevel problems: wrong shapes, NaN, inconsistent bounds,
infeasible and unbounded lower levels."""

from __future__ import annotations

import math

import pytest
import torch

import bilevel
from bilevel.constrained import InfeasibleError
from bilevel.errors import ConvergenceWarning, NonFiniteError

D = torch.float64


def quad(x, y):
    return 0.5 * ((y - x) ** 2).sum()


def upper(x, y):
    return ((x - 1) ** 2).sum() + ((y - 0.8) ** 2).sum()


ONE = torch.zeros(1, dtype=D)


# ------------------------------------------------------------------ problem helpers
def test_constraint_value_checks_shape_type_and_finiteness():
    problem = bilevel.BilevelProblem(
        upper=upper,
        lower=quad,
        lower_ineq=lambda x, y: (y - x).reshape(1, 1),
        lower_eq=lambda x, y: y * math.nan,
        upper_ineq=lambda x, y: 1.0,
    )
    with pytest.raises(ValueError, match=r"lower_ineq must return a 1-D tensor.*\(1, 1\)"):
        problem.constraint_value("lower_ineq", ONE, ONE)
    with pytest.raises(NonFiniteError, match="lower_eq returned NaN"):
        problem.constraint_value("lower_eq", ONE, ONE)
    with pytest.raises(TypeError, match="upper_ineq must return a 1-D tensor, got float"):
        problem.constraint_value("upper_ineq", ONE, ONE)
    assert problem.constraint_value("upper_eq", ONE, ONE) is None
    with pytest.raises(ValueError, match="unknown constraint"):
        problem.constraint_value("lower", ONE, ONE)


def test_bounds_like_broadcasts_and_rejects_mismatched_shapes():
    problem = bilevel.BilevelProblem(
        upper=upper, lower=quad, x_bounds=(0.0, torch.tensor([1.0, 2.0])), y_bounds=None
    )
    lo, hi = problem.bounds_like("x_bounds", torch.zeros(2, dtype=D))
    assert lo.tolist() == [0.0, 0.0] and hi.tolist() == [1.0, 2.0] and lo.dtype == D
    lo, hi = problem.bounds_like("y_bounds", torch.zeros(3, dtype=D))
    assert bool(torch.isinf(lo).all()) and bool((hi == math.inf).all())
    with pytest.raises(ValueError, match="does not broadcast"):
        problem.bounds_like("x_bounds", torch.zeros(3, dtype=D))


@pytest.mark.parametrize(
    "bounds, match",
    [
        ((1.0, 0.0), "inconsistent"),
        ((torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])), "inconsistent"),
        ((0.0, math.nan), "NaN"),
        ((0.0,), "pair"),
        ((torch.zeros(2), torch.ones(3)), "incompatible shapes"),
    ],
)
def test_inconsistent_bounds_are_rejected_at_construction(bounds, match):
    with pytest.raises(ValueError, match=match):
        bilevel.BilevelProblem(upper=upper, lower=quad, y_bounds=bounds)


# ------------------------------------------------------------------ LV-HBA
def test_lv_hba_rejects_wrong_constraint_shapes_and_nan():
    wrong = bilevel.BilevelProblem(
        upper=upper, lower=quad, lower_ineq=lambda x, y: (y + x - 1).reshape(1, 1)
    )
    with pytest.raises(ValueError, match="1-D tensor"):
        bilevel.solve(wrong, ONE, ONE, "lv-hba", maxiter=2)
    nan = bilevel.BilevelProblem(upper=upper, lower=quad, lower_eq=lambda x, y: y * math.nan)
    with pytest.raises(NonFiniteError, match="lower_eq returned NaN"):
        bilevel.solve(nan, ONE, ONE, "lv-hba", maxiter=2)


def test_lv_hba_rejects_a_changing_number_of_constraints():
    def flaky(x, y):  # one constraint while x < 0.3, two afterwards
        g = y + x - 1
        return g if float(x.detach()[0]) < 0.3 else torch.cat([g, g])

    problem = bilevel.BilevelProblem(upper=upper, lower=quad, lower_ineq=flaky)
    with pytest.raises(ValueError, match="number of constraints must not change"):
        bilevel.solve(problem, ONE, ONE, "lv-hba", maxiter=500, tol=0.0, projection="nonlinear")


def test_lv_hba_rejects_pytrees():
    problem = bilevel.BilevelProblem(upper=upper, lower=quad, y_bounds=(-1.0, 1.0))
    with pytest.raises(TypeError, match="must be tensors"):
        bilevel.solve(problem, {"a": ONE}, ONE, "lv-hba", maxiter=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        # y <= -1 and y >= 1 (affine: dual L-BFGS-B projection cannot reach feasibility)
        {"lower_ineq": lambda x, y: torch.cat([y + 1, 1 - y])},
        # x + y = 0 and x + y = 1 (affine equalities: inconsistent least squares)
        {"lower_eq": lambda x, y: torch.cat([x + y, x + y - 1])},
        # ||y||^2 <= -1 (nonlinear: SLSQP)
        {"lower_ineq": lambda x, y: (y @ y + 1).reshape(1)},
        # lower level feasible only for x <= -1, but the upper level wants x >= 0
        {"lower_ineq": lambda x, y: torch.cat([y + x + 1, -y]), "x_bounds": (0.0, 5.0)},
    ],
)
def test_lv_hba_reports_an_empty_feasible_set(kwargs):
    problem = bilevel.BilevelProblem(upper=upper, lower=quad, **kwargs)
    with pytest.raises(InfeasibleError):
        bilevel.solve(problem, ONE, ONE, "lv-hba", maxiter=5)


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")  # O(1/c) residual
def test_lower_level_infeasible_at_the_starting_x_is_repaired_by_the_projection():
    """0 <= y <= x + 1 is empty for x < -1: the joint projection moves (x0, y0) = (-3, 5) to
    a point where the lower level is feasible, and the run approaches the solution x* = 0.9
    of min (x-1)^2 + (y-0.8)^2 with y*(x) = argmin {1/2 (y - x)^2 : 0 <= y <= x + 1} = x
    (up to the O(1/c_k) bias of the method)."""
    problem = bilevel.BilevelProblem(
        upper=upper,
        lower=quad,
        lower_ineq=lambda x, y: torch.cat([y - x - 1, -y]),
    )
    seen = []
    result = bilevel.solve(
        problem,
        -ONE - 3,
        ONE + 5,
        "lv-hba",
        maxiter=1500,
        tol=0.0,
        record_every=500,
        callback=lambda k, state: seen.append(
            float((state.y - state.x - 1).clamp(min=0).max() + (-state.y).clamp(min=0).max())
        ),
    )
    assert max(seen) < 1e-8  # every iterate is lower-level feasible
    assert result.info["constraint_violation"] < 1e-8
    assert result.info["lower_level_solved"]
    torch.testing.assert_close(result.x, torch.tensor([0.9], dtype=D), atol=5e-3, rtol=0)
    torch.testing.assert_close(result.y, torch.tensor([0.9], dtype=D), atol=5e-3, rtol=0)


def test_unbounded_lower_level_is_flagged():
    """f(x, y) = -y has no minimiser: theta runs gamma1 ahead of y, the residual stays at 1
    and the result says the lower level was not solved."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: ((x - 1) ** 2).sum() + ((y - 1) ** 2).sum(),
        lower=lambda x, y: -y.sum(),
        x_bounds=(-5.0, 5.0),
    )
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        result = bilevel.solve(problem, ONE, ONE, "lv-hba", maxiter=300, tol=1e-6)
    assert result.status == "max_iterations"
    assert not result.info["lower_level_solved"]
    assert result.info["proximal_gap"] > 5.0  # theta -> y + gamma1 (gamma1 = 10)


def test_unconstrained_methods_refuse_constrained_problems():
    problem = bilevel.BilevelProblem(upper=upper, lower=quad, y_bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="constrained method"):
        bilevel.solve(problem, ONE, ONE, "aid", maxiter=1)
