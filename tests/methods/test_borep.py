"""BO-REP (Hao, Gong and Liu, ICLR 2024) on the quadratic of ``QuadraticBilevel`` (closed
forms) and on a finite-sum version of it: documented accuracies, one step by hand,
hyperparameter checks, checkpoint/resume."""

from __future__ import annotations

import math

import pytest
import torch

import bilevel
from bilevel.methods.borep import BOREP
from bilevel.testproblems import FiniteSumQuadratic, QuadraticBilevel
from tests.conftest import relative_error

DIM_X, DIM_Y = 4, 8

STEPS = {"inner_step_size": 0.4, "linear_step_size": 0.3}


@pytest.fixture
def q() -> QuadraticBilevel:
    return QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=0, lower_condition=2.0)


def _ratio(q: QuadraticBilevel, x: torch.Tensor) -> float:
    return float(q.hypergradient(x).norm() / q.hypergradient(torch.zeros(DIM_X)).norm())


def _solve(problem, method, maxiter, **kwargs):
    return bilevel.solve(
        problem, torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=maxiter, **kwargs
    )


def _tail_ratios(q, method, maxiter, tail=200):
    ratios = []

    def callback(iteration, state):
        if iteration > maxiter - tail:
            ratios.append(_ratio(q, state.x))

    _solve(q.problem(), method, maxiter, callback=callback)
    return ratios


def test_one_step_matches_the_equations(q):
    a, g, eta, beta = 0.3, 0.2, 0.05, 0.7
    method = BOREP(
        outer_step_size=eta,
        momentum=beta,
        inner_step_size=a,
        linear_step_size=g,
        refine_steps=2,
        refine="sgd",
        period=1,
        update_steps=1,
    )
    x0, y0 = torch.randn(DIM_X), torch.randn(DIM_Y)
    state = method.init(q.problem(), x0, y0)
    state = method.step(q.problem(), state, 1)
    y = y0
    for _ in range(4):  # 2 refinement steps + the periodic update's 1 + N = 2 steps
        y = y - a * (q.H @ y - (q.J @ x0 + q.b))
    grad_y_F = q.A @ y + q.K @ x0 + q.c
    grad_x_F = q.K.T @ y + q.C @ x0 + q.d
    z = g * grad_y_F  # z_1 = 0 - g (H 0 - grad_y F)
    d = grad_x_F + q.J.T @ z  # B z = -J^T z for f = 1/2 y'Hy - y'(Jx + b)
    m = (1 - beta) * d
    assert relative_error(state.y, y) <= 1e-12
    assert relative_error(state.extra["z"], z) <= 1e-12
    assert relative_error(state.hypergrad, d) <= 1e-12
    assert relative_error(state.x, x0 - eta * m / m.norm()) <= 1e-12
    assert state.grad_calls == 4 and state.hvp_calls == 2
    # the second iteration: no y update (period 1 -> updated; check period 2 skips it)
    skip = BOREP(**{**STEPS, "period": 2, "refine_steps": 0})
    s = skip.init(q.problem(), x0, y0)
    s = skip.step(q.problem(), s, 1)
    y1 = s.y.clone()
    s = skip.step(q.problem(), s, 2)
    assert torch.equal(s.y, y1) and s.grad_calls == 3 + 1 + 1


def test_epoch_sgd_refinement_matches_the_schedule(q):
    """refine_steps = 30: an epoch of 10 steps of size alpha from y0, then one of 20 steps of
    size alpha / 2 from the first epoch's average; the result is the second's average."""
    a = 0.3
    method = BOREP(inner_step_size=a, linear_step_size=0.2, outer_step_size=0.1, refine_steps=30)
    x0, y0 = torch.randn(DIM_X), torch.randn(DIM_Y)
    state = method.init(q.problem(), x0, y0)
    y = y0
    for length, step in ((10, a), (20, a / 2)):
        total = torch.zeros(DIM_Y)
        for _ in range(length):
            y = y - step * (q.H @ y - (q.J @ x0 + q.b))
            total = total + y
        y = total / length
    assert relative_error(state.y, y) <= 1e-12
    assert state.grad_calls == 30


def test_batches_per_iteration_follow_the_code(q):
    """Per iteration: one lower batch for H z, N more for a periodic update (its first step
    reuses the H z batch), one fresh lower batch for the cross term, one upper batch."""
    fs = FiniteSumQuadratic.build(q, noise=0.1)
    method = BOREP(outer_step_size=0.01, refine_steps=4, period=2, update_steps=3, **STEPS)
    state = method.init(fs.sampled(), torch.zeros(DIM_X), torch.zeros(DIM_Y))
    upper, lower = state.extra["streams"]["upper"], state.extra["streams"]["lower"]
    for t in range(1, 5):
        state = method.step(fs.sampled(), state, t)
    assert lower.delivered == 4 + 4 * 2 + 2 * 3 and upper.delivered == 4


def _tail_mean_best(q, method, maxiter, tail=200):
    ratios = _tail_ratios(q, method, maxiter, tail)
    return sum(ratios) / len(ratios), min(ratios)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deterministic_floor_scales_with_eta(seed):
    """Constant eta, exact oracles: x ends on an O(eta) cycle, so the mean of ||grad h||
    over the last 200 iterates (the quantity the paper bounds) scales like eta: dividing
    eta by 2.5 divides it by about 2.5; the best iterate is below the mean."""
    q = QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=seed, lower_condition=2.0)
    coarse, _ = _tail_mean_best(q, BOREP(outer_step_size=1e-2, **STEPS), 1500)
    fine, best = _tail_mean_best(q, BOREP(outer_step_size=4e-3, **STEPS), 2500)
    assert 1.6 <= coarse / fine <= 4.0, (coarse, fine)
    assert best <= fine <= 0.05


def test_deterministic_decreasing_eta(q):
    """eta_t = 0.1 / sqrt(t): the mean of ||grad h|| / ||grad h(0)|| over the last 200 of
    3000 iterations is O(eta_T) = O(1.8e-3), the best iterate well below."""
    method = BOREP(outer_step_size=0.1, decreasing=True, **STEPS)
    assert method.step_size(4) == pytest.approx(0.05)
    mean, best = _tail_mean_best(q, method, 3000)
    assert mean <= 10 * 0.1 / math.sqrt(3000) and best <= mean / 2


def test_stochastic_finite_sum_reaches_documented_accuracy(q):
    """i.i.d. single-component batches, noise 0.05, eta_t = 0.05 / sqrt(t):
    ||grad h(x_T)|| <= 2e-2 ||grad h(0)|| after T = 2000 iterations; y within the SGD noise
    floor of y*(x_T) (measured 7.0e-2 relative: the last periodic update ends on N single-
    component SGD steps of size alpha = 0.4)."""
    fs = FiniteSumQuadratic.build(q, noise=0.05)
    method = BOREP(outer_step_size=0.05, decreasing=True, **STEPS)
    result = _solve(fs.sampled(), method, 2000, record_every=500)
    assert _ratio(q, result.x) <= 2e-2
    assert relative_error(result.y, q.y_star(result.x)) <= 1.5e-1
    # 100 refinement + 3 every 3 iterations + 1 per iteration
    assert result.history["grad_calls"][-1] == 100 + 3 * 667 + 2000


def test_projections(q):
    method = BOREP(linear_radius=1e-3, lower_radius=1e-4, refine_steps=0, **STEPS)
    state = method.init(q.problem(), torch.zeros(DIM_X), torch.zeros(DIM_Y))
    for it in range(1, 7):
        y_before = state.y.clone()
        state = method.step(q.problem(), state, it)
        assert float(state.extra["z"].norm()) <= 1e-3 * (1 + 1e-12)
        assert float((state.y - y_before).norm()) <= 1e-4 * (1 + 1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"outer_step_size": -1.0}, "non-negative"),
        ({"inner_step_size": 0.0}, "positive"),
        ({"linear_step_size": -0.1}, "positive"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"refine_steps": -1}, ">= 0"),
        ({"update_steps": -1}, ">= 0"),
        ({"period": 0}, "period"),
        ({"linear_radius": 0.0}, "linear_radius"),
        ({"lower_radius": -1.0}, "lower_radius"),
        ({"refine": "adam"}, "refine"),
        ({"linear_init": "ones"}, "linear_init"),
    ],
)
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BOREP(**kwargs)


def test_checkpoint_resume_is_bit_for_bit(q, tmp_path):
    fs = FiniteSumQuadratic.build(q, noise=0.5)
    method = BOREP(outer_step_size=0.02, refine_steps=5, inner_step_size=0.2)

    def run(**kwargs):
        torch.manual_seed(0)
        return _solve(fs.problem(*fs.singletons()), method, 40, **kwargs)

    full = run()
    path = tmp_path / "run.pt"
    stopped = run(checkpoint=path, checkpoint_every=10, callback=lambda it, state: it == 25)
    assert stopped.status == "stopped"
    torch.manual_seed(123)
    torch.rand(7)
    resumed = run(checkpoint=path, checkpoint_every=10, resume=True)
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    assert resumed.history["hypergrad_norm"][1:] == full.history["hypergrad_norm"][1:]
    assert resumed.history["grad_calls"] == full.history["grad_calls"]


def test_default_step_with_exact_oracles_reaches_x_star(q):
    """The default (clipped gradient) outer step shrinks with ``m_t``, so without noise the
    iterates converge to x* (the closed form) instead of cycling."""
    result = _solve(q.problem(), BOREP(), 3000, tol=-1.0)
    assert relative_error(result.x, q.x_star()) <= 1e-8
