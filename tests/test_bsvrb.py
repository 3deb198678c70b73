"""BSVRB on a deterministic multi-block quadratic with a closed-form solution.

Measured relative errors ``||x - x*|| / ||x*||`` (float64, three ``QuadraticBilevel`` blocks,
``dim x = 3``, ``dim y = 5``, ``L_y = 10``, ``mu_y = 1``, seed 0): all blocks (``I = m = 3``)
with the default momenta ``beta = 0.5``, ``tau = 1 / L_y``: ``4e-16`` after 1000
iterations (exact single-loop AID); ``I = 2`` sampled blocks, ``beta = 0.2``,
``tau = 0.3 / L_y``, ``eta = 0.3 * (2/3) * 0.5 / lambda_max``: ``1.5e-2`` after 1500
iterations (the estimators of unsampled blocks are stale, so a constant-step run stalls at a
small error rather than converging exactly).
"""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.methods.bsvrb import BSVRB
from bilevel.problems import MultiBlockQuadratic, QuadraticBilevel


def _setup():
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=5, seed=20)
    blocks = multi.blocks
    problem = multi.problem()
    mean_hessian = multi.hessian()
    x_star = multi.x_star()
    L = max(float(torch.linalg.eigvalsh(q.H).max()) for q in blocks)
    eta = 0.5 / float(torch.linalg.eigvalsh(mean_hessian).max())
    return problem, x_star, L, eta


def _rel(x, x_star):
    return float((x - x_star).norm() / x_star.norm())


def test_all_blocks_without_noise_is_exact():
    problem, x_star, L, eta = _setup()
    method = BSVRB(outer_step_size=eta, inner_step_size=1 / L, linear_step_size=1 / L)
    torch.manual_seed(0)
    result = bilevel.solve(problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=1000)
    assert _rel(result.x, x_star) <= 1e-10


def test_sampled_blocks_reach_documented_accuracy():
    problem, x_star, L, eta = _setup()
    s = 0.3
    method = BSVRB(
        blocks_per_iter=2,
        outer_step_size=eta * s * 2 / 3,
        inner_step_size=s / L,
        linear_step_size=s / L,
        inner_momentum=0.2,
        linear_momentum=0.2,
        outer_momentum=0.2,
    )
    torch.manual_seed(0)
    result = bilevel.solve(problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=1500)
    assert _rel(result.x, x_star) <= 5e-2  # measured 1.5e-2


@pytest.mark.parametrize(
    "options",
    [
        {"blocks_per_iter": 0},
        {"batch_size": 0},
        {"inner_momentum": 0.0},
        {"outer_momentum": 1.5},
        {"linear_step_size": -1.0},
        {"outer_step_size": -0.1},
    ],
)
def test_invalid_hyperparameters_raise(options):
    with pytest.raises(ValueError):
        BSVRB(**options)


def test_too_many_blocks_and_single_block_problem_are_rejected():
    problem, *_ = _setup()
    with pytest.raises(ValueError, match="exceeds"):
        bilevel.solve(problem, torch.zeros(3), torch.zeros(3, 5), BSVRB(blocks_per_iter=4))
    q = QuadraticBilevel.random(dim_x=3, dim_y=5, seed=0)
    single = bilevel.BilevelProblem(upper=q.upper, lower=q.lower)
    with pytest.raises(ValueError, match="multi-block"):
        bilevel.solve(single, torch.zeros(3), torch.zeros(5), BSVRB())


def test_checkpoint_resume_is_bit_for_bit(tmp_path):
    problem, _, L, eta = _setup()
    method = BSVRB(blocks_per_iter=2, outer_step_size=0.1 * eta, inner_step_size=0.3 / L)

    def run(**kwargs):
        torch.manual_seed(0)
        return bilevel.solve(
            problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=40, **kwargs
        )

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
