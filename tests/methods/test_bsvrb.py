"""BSVRB (v1 and v2) on multi-block quadratics with a closed-form solution.

Oracles: ``MultiBlockQuadratic.x_star`` (a float64 linear solve); for the update rules, the
official code's equations written out by hand (delay factor, cyclic sampling, auto_gamma).
All blocks (``I = m = 3``) with exact oracles: both variants reach ``x*`` to 1e-8. ``I = 2``
sampled blocks with constant steps: a noise floor that scales with the STORM weight; with
minibatch data and all blocks, a floor that scales like ``1 / sqrt(B)`` in the batch size."""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.methods.bsvrb import BSVRB
from bilevel.testproblems import FiniteSumQuadratic, MultiBlockQuadratic, QuadraticBilevel, Sampled
from tests.conftest import relative_error


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


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("gamma", [1.0, "theory"])
def test_all_blocks_without_noise_reach_x_star(variant, gamma):
    """Exact oracles, all blocks: both variants reach the closed-form x* to 1e-8, with the
    official gamma = 1 and with the code's auto_gamma (0 when I = m)."""
    problem, x_star, L, eta = _setup()
    method = BSVRB(
        variant=variant,
        msvr_gamma=gamma,
        outer_step_size=eta,
        inner_step_size=0.5 / L,
        linear_step_size=0.5 / L,
    )
    torch.manual_seed(0)
    result = bilevel.solve(problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=1500)
    assert _rel(result.x, x_star) <= 1e-8


def test_theory_gamma_is_the_official_auto_gamma():
    assert BSVRB(msvr_gamma="theory").gamma(100, 10) == pytest.approx(90 / (10 * 0.1))
    assert BSVRB(msvr_gamma="theory").gamma(5, 5) == 0.0
    assert BSVRB(msvr_gamma="theory", inner_momentum=1.0).gamma(5, 2) == 0.0
    assert BSVRB().gamma(100, 10) == 1.0


def _tail_error(problem, x_star, method, seed, maxiter=1000, tail=300):
    """Mean of ``||x_k - x*|| / ||x*||`` over the last ``tail`` iterations."""
    errors = []
    torch.manual_seed(seed)
    bilevel.solve(
        problem,
        torch.zeros(3),
        torch.zeros(3, 5),
        method,
        maxiter=maxiter,
        tol=-1.0,
        callback=lambda it, state: errors.append(_rel(state.x, x_star)) and None,
    )
    return sum(errors[-tail:]) / tail


def test_sampled_blocks_noise_floor_shrinks_with_the_storm_weight():
    """With I = 2 of m = 3 heterogeneous blocks, ``z`` averages a random subset of block
    hypergradients that differ at x*, so constant steps leave a noise floor whose size scales
    with the STORM weight ``beta_x`` (variance ~ beta_x / (2 - beta_x)). Measured tail means
    (seeds 0, 1): 1.4e-1, 9.8e-2 at beta_x = 0.9; 3.7e-2, 1.6e-2 at beta_x = 0.01."""
    problem, x_star, L, eta = _setup()

    def method(beta_x):
        return BSVRB(
            blocks_per_iter=2,
            outer_step_size=0.3 * eta,
            inner_step_size=0.5 / L,
            linear_step_size=0.5 / L,
            outer_momentum=beta_x,
            block_update="sampled",
            block_sampling="uniform",
        )

    for seed in (0, 1):
        loose = _tail_error(problem, x_star, method(0.9), seed)
        tight = _tail_error(problem, x_star, method(0.01), seed)
        assert tight <= 0.1
        assert tight <= 0.5 * loose


@pytest.mark.parametrize(
    "options",
    [
        {"blocks_per_iter": 0},
        {"batch_size": 0},
        {"inner_momentum": 0.0},
        {"outer_momentum": 1.5},
        {"linear_step_size": -1.0},
        {"outer_step_size": -0.1},
        {"variant": "v3"},
        {"block_update": "some"},
        {"block_sampling": "poisson"},
        {"hessian_bound": 0.0},
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


# ----------------------------------------------------------------------------- minibatch data


def _finite_sum_blocks(multi: MultiBlockQuadratic, lower_data, upper_data):
    """Each block ``i`` as a finite sum (6 lower, 4 upper components) whose mean is exactly
    ``multi.blocks[i]``; a minibatch is a tensor of component indices."""
    sums = [
        FiniteSumQuadratic.build(q, n=6, m=4, noise=0.5, seed=10 + i)
        for i, q in enumerate(multi.blocks)
    ]
    return bilevel.BilevelProblem(
        upper=lambda x, y_i, i, batch: sums[i].upper(x, y_i, batch),
        lower=lambda x, y_i, i, batch: sums[i].lower(x, y_i, batch),
        n_blocks=len(sums),
        upper_data=upper_data,
        lower_data=lower_data,
    )


@pytest.mark.parametrize("blocks_per_iter", [None, 2])
def test_full_minibatches_reproduce_the_deterministic_run(blocks_per_iter):
    """Oracle: with every minibatch holding all components, each averaged sample equals the
    block's exact objective, so the data path must repeat the deterministic trajectory (same
    block draws from the same seed) up to rounding; ``batch_size = 2`` averages two of them."""
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=5, seed=20)
    _, _, L, eta = _setup()
    options = {
        "blocks_per_iter": blocks_per_iter,
        "outer_step_size": 0.3 * eta,
        "inner_step_size": 0.5 / L,
        "linear_step_size": 0.5 / L,
        "inner_momentum": 0.3,
    }

    def run(problem, batch_size):
        torch.manual_seed(0)
        method = BSVRB(batch_size=batch_size, **options)
        return bilevel.solve(problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=150)

    deterministic = run(multi.problem(), 1)
    data = _finite_sum_blocks(multi, [torch.arange(6)], [torch.arange(4)])
    batched = run(data, 2)
    assert relative_error(batched.x, deterministic.x) <= 1e-11
    assert relative_error(batched.y, deterministic.y) <= 1e-11
    assert batched.history["grad_calls"][-1] == 2 * deterministic.history["grad_calls"][-1]


def test_each_sampled_block_consumes_batch_size_minibatches_per_level():
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=5, seed=20)
    problem = _finite_sum_blocks(multi, Sampled(6), Sampled(4))
    method = BSVRB(blocks_per_iter=2, batch_size=3, outer_step_size=1e-3)
    torch.manual_seed(0)
    state = method.init(problem, torch.zeros(3), torch.zeros(3, 5))
    for t in range(5):
        state = method.step(problem, state, t)
    upper, lower = state.extra["streams"]["upper"], state.extra["streams"]["lower"]
    # init: one sample of B batches for each of the m = 3 blocks; then I = 2 blocks per step
    assert lower.delivered == upper.delivered == 3 * 3 + 5 * 2 * 3


@pytest.mark.parametrize("rule", ["delay", "sampled", "all"])
def test_block_updates_follow_the_rule(rule):
    """Official v2 (``"delay"``): only the sampled block moves, by tau (c_i + 1) times its
    freshly updated estimator, c_i the iterations it was skipped; ``"sampled"``: by tau;
    ``"all"``: every block with its stored estimator."""
    problem, _, L, _ = _setup()
    tau = 0.1 / L
    method = BSVRB(blocks_per_iter=1, block_update=rule, inner_step_size=tau)
    torch.manual_seed(0)
    state = method.init(problem, torch.zeros(3), torch.zeros(3, 5))
    skipped = torch.zeros(3)
    for t in range(6):
        y0, v0 = state.y.clone(), state.extra["v"].clone()
        state = method.step(problem, state, t)
        block = int(state.extra["perm"][(t % 3)])
        u, w = state.extra["u"], state.extra["w"]
        tau_v = state.extra["steps"]["linear_step_size"]
        for i in range(3):
            if i == block or rule == "all":
                factor = skipped[i] + 1 if (rule == "delay" and i == block) else 1.0
            else:
                factor = 0.0
            assert torch.allclose(state.y[i], y0[i] - tau * factor * u[i], atol=1e-12)
            assert torch.allclose(state.extra["v"][i], v0[i] - tau_v * factor * w[i], atol=1e-12)
        skipped += 1
        skipped[block] = 0
        assert torch.equal(state.extra["delay"], skipped.long())


def test_cyclic_sampling_visits_every_block_once_per_pass():
    """Official sampling: consecutive chunks of I blocks of a permutation redrawn every
    floor(m / I) iterations."""
    multi = MultiBlockQuadratic.random(n_blocks=7, dim_x=3, dim_y=2, seed=1)
    method = BSVRB(blocks_per_iter=2, outer_step_size=0.0, inner_step_size=0.1)
    torch.manual_seed(0)
    state = method.init(multi.problem(), torch.zeros(3), torch.zeros(7, 2))
    for _ in range(2):  # two passes of floor(7 / 2) = 3 iterations
        seen = []
        for t in range(3):
            state = method.step(multi.problem(), state, t)
            seen += state.extra["perm"][2 * t : 2 * t + 2].tolist()
        assert len(set(seen)) == 6


def test_linear_variable_is_projected_onto_the_ball():
    from bilevel.methods.bsvrb import _project_blocks

    v = {"a": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[0.0], [0.0]])}
    out, active = _project_blocks(v, 1.0)
    assert active == [0]
    assert torch.allclose(out["a"][0], torch.tensor([0.6, 0.8]))  # norm 5 -> 1
    assert torch.equal(out["a"][1], v["a"][1])  # norm 0.5: inside, unchanged
    problem, _, L, _ = _setup()
    method = BSVRB(linear_bound=0.05, inner_step_size=0.5 / L, linear_step_size=0.5 / L)
    torch.manual_seed(0)
    with pytest.warns(bilevel.errors.ConvergenceWarning, match="linear_bound"):
        result = bilevel.solve(
            problem, torch.zeros(3), torch.zeros(3, 5), method, maxiter=20, tol=-1
        )
    assert result.n_iter == 20 and result.info["linear_bound_active"]
    with pytest.raises(ValueError, match="linear_bound"):
        BSVRB(linear_bound=0.0)
    with pytest.raises(ValueError, match="msvr_gamma"):
        BSVRB(msvr_gamma=-1.0)


def test_default_has_no_projection_that_would_move_the_fixed_point():
    """|v*| = 25 here: the official code's bound R = 10 would stop x at 10 instead of
    x* = 25 (F = 1/2 |y - 50|^2 + 1/2 x^2, y*(x) = x, two identical blocks)."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y_i, i: 0.5 * ((y_i - 50.0) ** 2).sum() + 0.5 * (x**2).sum(),
        lower=lambda x, y_i, i: 0.5 * ((y_i - x) ** 2).sum(),
        n_blocks=2,
    )
    method = BSVRB(outer_step_size=0.2, inner_step_size=0.5, linear_step_size=0.5)
    torch.manual_seed(0)
    result = bilevel.solve(problem, torch.zeros(1), torch.zeros(2, 1), method, maxiter=600)
    assert abs(float(result.x) - 25.0) <= 1e-6
    torch.manual_seed(0)
    bounded = BSVRB(
        outer_step_size=0.2, inner_step_size=0.5, linear_step_size=0.5, linear_bound=10.0
    )
    with pytest.warns(bilevel.errors.ConvergenceWarning, match="linear_bound"):
        result = bilevel.solve(
            problem, torch.zeros(1), torch.zeros(2, 1), bounded, maxiter=600, tol=-1
        )
    assert abs(float(result.x) - 10.0) <= 1e-6  # the documented failure mode of a small R


def test_minibatch_floor_scales_with_the_batch_size():
    """All blocks, noisy finite-sum blocks (single-component batches): the updates are
    affine in the sampled data, so the stationary error is driven by the oracle noise, whose
    variance is divided by ``B`` when each block averages ``B`` minibatches. The rms floor
    should shrink like ``1 / sqrt(B)``: from ``B = 1`` to ``B = 4``, by about 2 (tail means
    over the last 200 of 600 iterations, averaged over three seeds)."""
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=5, seed=20)
    x_star = multi.x_star()
    _, _, L, eta = _setup()
    problem = _finite_sum_blocks(multi, Sampled(6), Sampled(4))

    def floor(batch_size):
        method = BSVRB(
            batch_size=batch_size,
            outer_step_size=0.3 * eta,
            inner_step_size=0.5 / L,
            linear_step_size=0.5 / L,
        )
        total = 0.0
        for seed in (0, 1, 2):
            errors = []
            torch.manual_seed(seed)
            bilevel.solve(
                problem,
                torch.zeros(3),
                torch.zeros(3, 5),
                method,
                maxiter=600,
                tol=-1.0,
                callback=lambda it, state, errors=errors: (
                    errors.append(float((state.x - x_star).norm() ** 2)) and None
                ),
            )
            total += sum(errors[-200:]) / 200
        return (total / 3) ** 0.5

    ratio = floor(1) / floor(4)
    assert 1.5 <= ratio <= 2.7, ratio
