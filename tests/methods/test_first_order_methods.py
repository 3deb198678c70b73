"""First-order outer algorithms (F2SA, Penalty, BOME, VPBGD) on a quadratic problem.

The penalty methods converge to the stationary point ``x_lambda`` of the penalised function

    L_lambda(x) = min_y [F(x, y) + lambda f(x, y)] - lambda min_z f(x, z),

which for the quadratic problem is computed here in closed form (independently of the
methods). ``|grad h(x_lambda)| = O(1/lambda)``: on the instance below, relative to
``|grad h(0)|``, it is 7.4e-2, 8.0e-3 and 8.1e-4 for lambda = 10, 100, 1000.
"""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.errors import ConvergenceWarning
from bilevel.methods.first_order import BOME, F2SA, VPBGD, Penalty
from bilevel.operators import projection_l2_ball
from bilevel.problem import BilevelProblem
from bilevel.testproblems import QuadraticBilevel

DIM_X, DIM_Y = 4, 8


@pytest.fixture
def quadratic():
    """Instance with lower-level condition number 4 and the optimal inner step 2/(mu + L)."""
    q = QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=3, lower_condition=4.0)
    eigs = torch.linalg.eigvalsh(q.H)
    return q, 2.0 / float(eigs.min() + eigs.max())


def lagrangian_grad(q: QuadraticBilevel, x: torch.Tensor, lam: float) -> torch.Tensor:
    """Closed-form ``grad L_lambda(x)``; ``(A + lam H) y_l = lam (J x + b) - K x - c``."""
    y_lam = torch.linalg.solve(q.A + lam * q.H, lam * (q.J @ x + q.b) - q.K @ x - q.c)
    return q.K.T @ y_lam + q.C @ x + q.d + lam * q.J.T @ (q.y_star(x) - y_lam)


def penalty_point(q: QuadraticBilevel, lam: float) -> torch.Tensor:
    """Minimiser of the quadratic ``L_lambda`` (its gradient is affine in ``x``)."""
    zero = torch.zeros(DIM_X)
    hessian = torch.func.jacfwd(lambda x: lagrangian_grad(q, x, lam))(zero)
    assert float(torch.linalg.eigvalsh(hessian).min()) > 0
    return torch.linalg.solve(hessian, -lagrangian_grad(q, zero, lam))


def relative_hypergrad(q: QuadraticBilevel, x: torch.Tensor) -> float:
    """``|grad h(x)| / |grad h(0)|`` with the exact hypergradient."""
    return float(q.hypergradient(x).norm() / q.hypergradient(torch.zeros(DIM_X)).norm())


def check_history(result) -> None:
    hist = result.history
    assert hist["grad_calls"] == sorted(hist["grad_calls"]) and hist["grad_calls"][-1] > 0
    assert all(calls == 0 for calls in hist["hvp_calls"])


def test_f2sa_reaches_penalty_point_and_bias_shrinks_with_lambda(quadratic):
    q, beta = quadratic
    errors = []
    for lambda_max in (10.0, 100.0, 1000.0):
        seen = []
        method = F2SA(
            inner_steps=3,
            inner_step_size=beta,
            outer_step_size=0.15,
            lambda_init=1.0,
            lambda_increment=lambda_max / 50,
            lambda_max=lambda_max,
        )
        result = bilevel.solve(
            q.problem(),
            torch.zeros(DIM_X),
            torch.zeros(DIM_Y),
            method,
            maxiter=600,
            tol=1e-9,
            callback=lambda it, state, seen=seen: seen.append(state.extra["lambda"]),
        )
        assert result.converged, result.message
        check_history(result)
        # lambda_k = min(lambda_0 + k delta, lambda_max), and convergence only after the cap
        assert seen[:3] == pytest.approx([1.0 + k * lambda_max / 50 for k in (1, 2, 3)])
        assert seen[-1] == lambda_max and result.n_iter > 50
        x_lam = penalty_point(q, lambda_max)
        assert float((result.x - x_lam).norm()) <= 1e-7
        assert float((result.y - q.y_star(result.x)).norm()) <= 3.0 / lambda_max  # y_lambda
        errors.append(relative_hypergrad(q, result.x))
    # O(1/lambda) bias: each tenfold increase of lambda_max divides |grad h| by about 10
    assert errors[1] <= 0.2 * errors[0] and errors[2] <= 0.2 * errors[1]
    assert errors[2] <= 1e-3


def test_penalty_reaches_penalty_point_and_bias_shrinks_with_sigma(quadratic):
    q, beta = quadratic
    errors = []
    for sigma_min in (1e-1, 1e-3):
        method = Penalty(
            inner_step_size=beta,
            outer_step_size=0.15,
            inner_tol=1e-3,
            sigma_init=0.1,
            sigma_decay=0.5,
            sigma_min=sigma_min,
        )
        result = bilevel.solve(
            q.problem(), torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=600, tol=1e-9
        )
        assert result.converged, result.message
        check_history(result)
        assert result.n_iter > 10 and method.sigma(result.n_iter) == sigma_min
        x_sigma = penalty_point(q, 1.0 / sigma_min)
        assert float((result.x - x_sigma).norm()) <= 1e-7
        errors.append(relative_hypergrad(q, result.x))
    assert errors[1] <= 0.03 * errors[0]
    assert errors[1] <= 1e-3


def test_penalty_schedule():
    method = Penalty(sigma_init=1.0, sigma_decay=0.5, sigma_min=0.1)
    assert [method.sigma(k) for k in (1, 2, 3, 4, 5, 50)] == [1.0, 0.5, 0.25, 0.125, 0.1, 0.1]


def test_penalty_with_active_constraint_on_x(quadratic):
    """With ``X`` a ball excluding ``x_sigma``: a fixed point of the projected penalty step."""
    q, beta = quadratic
    sigma = 1e-2
    radius = 0.5 * float(penalty_point(q, 1.0 / sigma).norm())
    method = Penalty(
        inner_step_size=beta,
        outer_step_size=0.1,
        sigma_init=sigma,
        sigma_min=sigma,
        project_x=lambda x: projection_l2_ball(x, radius),
    )
    result = bilevel.solve(
        q.problem(), torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=600, tol=1e-9
    )
    assert result.converged, result.message
    x = result.x
    assert float(x.norm()) == pytest.approx(radius, rel=1e-9)
    grad = lagrangian_grad(q, x, 1.0 / sigma)
    assert float(grad.norm()) > 0.1  # the constraint is active ...
    # ... and x is stationary: x = P_X(x - grad L(x))
    assert float((x - projection_l2_ball(x - grad, radius)).norm()) <= 1e-7


def truncated_point(q: QuadraticBilevel, steps: int, beta: float) -> torch.Tensor:
    """Zero of the ``T``-step truncated hypergradient (the ``xi -> 0`` limit of BOME)::

    grad_x F + J^T P_T H^{-1} grad_y F at y*(x),   P_T = I - (I - beta H)^T.
    """
    eye = torch.eye(DIM_Y)
    P = eye - torch.linalg.matrix_power(eye - beta * q.H, steps)

    def grad(x):
        y = q.y_star(x)
        grad_x_F = q.K.T @ y + q.C @ x + q.d
        grad_y_F = q.A @ y + q.K @ x + q.c
        return grad_x_F + q.J.T @ P @ torch.linalg.solve(q.H, grad_y_F)

    zero = torch.zeros(DIM_X)
    return torch.linalg.solve(torch.func.jacfwd(grad)(zero), -grad(zero))


def test_bome_gets_close_to_the_solution(quadratic):
    """BOME with a constant step ``xi`` has no exact fixed point (see its docstring): the
    iterates settle within ``O(xi)`` of ``x_T``, the zero of the ``T``-step truncated
    hypergradient, which is within ``O((1 - beta mu)^T)`` of ``x*``. Observed on this
    instance (``T = 5``, ``|x_T - x*| = 0.035 |x*|``): over the last 50 iterations
    ``|x - x_T| <= 0.049 |x*|`` and ``0.024 |x*|`` for ``xi = 0.04`` and ``0.02`` (about
    ``1.2 xi |x*|``), so ``|x - x*| <= 0.051 |x*|`` at ``xi = 0.02``, from
    ``|x0 - x*| = |x*|``."""
    q, beta = quadratic
    x_star, x_trunc = q.x_star(), truncated_point(q, 5, beta)
    scale = float(x_star.norm())
    assert float((x_trunc - x_star).norm()) <= 0.04 * scale
    # the truncation bias decays geometrically with T (contraction 0.6 per inner step)
    assert float((truncated_point(q, 10, beta) - x_star).norm()) <= 0.1 * 0.04 * scale
    to_trunc = []
    for outer_step_size, maxiter in ((0.04, 300), (0.02, 550)):
        method = BOME(inner_steps=5, inner_step_size=beta, outer_step_size=outer_step_size)
        distances = []
        with pytest.warns(ConvergenceWarning, match="maxiter"):
            result = bilevel.solve(
                q.problem(),
                torch.zeros(DIM_X),
                torch.zeros(DIM_Y),
                method,
                maxiter=maxiter,
                tol=0.0,
                callback=lambda it, s, d=distances: d.append(float((s.x - x_trunc).norm())),
            )
        check_history(result)
        # the iterates cycle: measure the largest distance over the last 50 iterations
        to_trunc.append(max(distances[-50:]) / scale)
    assert to_trunc[1] <= 0.035
    assert to_trunc[1] <= 0.6 * to_trunc[0]  # O(xi): halving xi about halves the distance
    assert float((result.x - x_star).norm()) <= 0.07 * scale
    y_star = q.y_star(result.x)
    assert float((result.y - y_star).norm() / y_star.norm()) <= 0.1


def test_vpbgd_reaches_penalty_point(quadratic):
    q, beta = quadratic
    gamma = 10.0
    # step < 2 / L_joint = 0.029 (largest curvature of the penalised (x, y) problem: 69)
    method = VPBGD(penalty=gamma, step_size=0.025, inner_steps=3, inner_step_size=beta)
    result = bilevel.solve(
        q.problem(), torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=3000, tol=1e-8
    )
    assert result.converged, result.message
    check_history(result)
    x_gamma = penalty_point(q, gamma)
    assert float((result.x - x_gamma).norm()) <= 1e-6
    # bias O(1/gamma): the exact hypergradient is 7.4e-2 |grad h(0)| at gamma = 10
    assert 1e-2 <= relative_hypergrad(q, result.x) <= 0.1


def test_projections_keep_iterates_feasible(quadratic):
    q, beta = quadratic
    radius = 0.3

    def feasible(_, state):
        assert float(state.x.norm()) <= radius + 1e-12
        assert float(state.y.norm()) <= radius + 1e-12

    def ball(t):
        return projection_l2_ball(t, radius)

    for method in (
        Penalty(inner_step_size=beta, outer_step_size=0.1, project_x=ball, project_y=ball),
        VPBGD(step_size=0.02, inner_step_size=beta, project_x=ball, project_y=ball),
    ):
        with pytest.warns(ConvergenceWarning):
            bilevel.solve(
                q.problem(),
                torch.ones(DIM_X),
                torch.ones(DIM_Y),
                method,
                maxiter=20,
                callback=feasible,
            )


def _all_methods(beta: float) -> list:
    return [
        F2SA(inner_steps=2, inner_step_size=beta, outer_step_size=0.1),
        Penalty(inner_steps=5, inner_step_size=beta, outer_step_size=0.1, sigma_init=0.1),
        BOME(inner_steps=2, inner_step_size=beta, outer_step_size=0.02),
        VPBGD(inner_steps=2, inner_step_size=beta, step_size=0.02),
    ]


@pytest.mark.parametrize("index", range(4), ids=["f2sa", "penalty", "bome", "vpbgd"])
def test_minibatches_are_drawn_and_passed(quadratic, index):
    """Objectives receive the batches; with batches that scale by 1 the run is unchanged."""
    q, beta = quadratic
    seen = {"upper": 0, "lower": 0}

    def upper(x, y, batch):
        seen["upper"] += 1
        return batch * q.upper(x, y)

    def lower(x, y, batch):
        seen["lower"] += 1
        return batch * q.lower(x, y)

    one = torch.tensor(1.0)
    batched = BilevelProblem(upper=upper, lower=lower, upper_data=[one], lower_data=[one, one])
    runs = []
    for problem in (q.problem(), batched):
        with pytest.warns(ConvergenceWarning):
            runs.append(
                bilevel.solve(
                    problem,
                    torch.zeros(DIM_X),
                    torch.zeros(DIM_Y),
                    _all_methods(beta)[index],
                    maxiter=3,
                    tol=0.0,
                )
            )
    assert seen["upper"] > 0 and seen["lower"] > 0
    torch.testing.assert_close(runs[1].x, runs[0].x, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(runs[1].y, runs[0].y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("cls", "options", "match"),
    [
        (F2SA, {"inner_steps": 0}, "inner_steps must be an integer >= 1"),
        (F2SA, {"inner_steps": 2.5}, "inner_steps must be an integer"),
        (F2SA, {"inner_step_size": -0.1}, "inner_step_size must be a positive"),
        (F2SA, {"outer_step_size": float("nan")}, "outer_step_size must be a positive finite"),
        (F2SA, {"lambda_init": 0.0}, "lambda_init must be a positive"),
        (F2SA, {"lambda_increment": -1.0}, "lambda_increment must be a non-negative"),
        (F2SA, {"lambda_init": 10.0, "lambda_max": 5.0}, "lambda_max .* must be >= lambda_init"),
        (Penalty, {"sigma_decay": 1.5}, r"sigma_decay must be in \(0, 1\]"),
        (Penalty, {"sigma_decay": 0.0}, "sigma_decay must be a positive"),
        (Penalty, {"sigma_min": 2.0}, "sigma_min .* must be <= sigma_init"),
        (Penalty, {"inner_tol": -1.0}, "inner_tol must be a non-negative"),
        (Penalty, {"project_x": 3}, "project_x must be None or a callable"),
        (BOME, {"eta": 0.0}, "eta must be a positive"),
        (BOME, {"phi": "norm"}, "phi must be 'grad_norm' or 'value'"),
        (BOME, {"inner_steps": -1}, "inner_steps must be an integer >= 0"),
        (VPBGD, {"penalty": 0.0}, "penalty must be a positive"),
        (VPBGD, {"step_size": float("inf")}, "step_size must be a positive finite"),
        (VPBGD, {"project_y": "ball"}, "project_y must be None or a callable"),
    ],
)
def test_bad_hyperparameters_raise(cls, options, match):
    with pytest.raises(ValueError, match=match):
        cls(**options)


def test_divergence_is_reported(quadratic):
    q, beta = quadratic
    method = F2SA(inner_step_size=beta, outer_step_size=1e3)
    with pytest.warns(ConvergenceWarning, match="NaN or inf|non-finite"):
        result = bilevel.solve(
            q.problem(), torch.zeros(DIM_X), torch.zeros(DIM_Y), method, maxiter=500
        )
    assert result.status == "diverged"


def _scaled_problem(q: QuadraticBilevel) -> BilevelProblem:
    """``F`` and ``f`` multiplied by the minibatch (a scalar tensor)."""
    return BilevelProblem(
        upper=lambda x, y, batch: batch * q.upper(x, y),
        lower=lambda x, y, batch: batch * q.lower(x, y),
        upper_data=[torch.tensor(1.0), torch.tensor(0.5)],
        lower_data=[torch.tensor(1.0), torch.tensor(0.9), torch.tensor(1.1)],
    )


@pytest.mark.parametrize("with_data", [False, True], ids=["exact", "minibatches"])
@pytest.mark.parametrize("index", range(4), ids=["f2sa", "penalty", "bome", "vpbgd"])
def test_checkpoint_resume_is_bit_for_bit(quadratic, tmp_path, index, with_data):
    """Method state (lambda, z, batch streams) lives in ``state.extra``: a resumed run is
    identical to an uninterrupted one."""
    q, beta = quadratic
    problem = _scaled_problem(q) if with_data else q.problem()
    start = (problem, torch.zeros(DIM_X), torch.zeros(DIM_Y), _all_methods(beta)[index])
    with pytest.warns(ConvergenceWarning):
        full = bilevel.solve(*start, maxiter=12, tol=0.0)
    path = tmp_path / "run.pt"
    options = {"maxiter": 12, "tol": 0.0, "checkpoint": path, "checkpoint_every": 4}
    stopped = bilevel.solve(*start, callback=lambda it, state: it == 6, **options)
    assert stopped.status == "stopped"
    with pytest.warns(ConvergenceWarning):
        resumed = bilevel.solve(*start, resume=True, **options)
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)


def _explicit_gradients(q: QuadraticBilevel):
    """Hand-written gradients of the quadratic problem (no autograd)."""
    return {
        "Fx": lambda x, y: q.K.T @ y + q.C @ x + q.d,
        "Fy": lambda x, y: q.A @ y + q.K @ x + q.c,
        "fx": lambda x, y: -q.J.T @ y,
        "fy": lambda x, y: q.H @ y - q.J @ x - q.b,
    }


def _one_step(q, method, x0, y0):
    with pytest.warns(ConvergenceWarning):
        return bilevel.solve(q.problem(), x0, y0, method, maxiter=1, tol=0.0)


def test_one_step_matches_the_update_equations(quadratic):
    """One outer iteration of each method, recomputed from the docstring equations."""
    q, beta = quadratic
    g = _explicit_gradients(q)
    x0, y0 = torch.randn(DIM_X), torch.randn(DIM_Y)
    T, alpha = 3, 0.07

    # F2SA, lambda_0 = 2
    lam = 2.0
    y, z = y0.clone(), y0.clone()
    for _ in range(T):
        y, z = y - beta * (g["Fy"](x0, y) / lam + g["fy"](x0, y)), z - beta * g["fy"](x0, z)
    d = g["Fx"](x0, y) + lam * (g["fx"](x0, y) - g["fx"](x0, z))
    method = F2SA(inner_steps=T, inner_step_size=beta, outer_step_size=alpha, lambda_init=lam)
    result = _one_step(q, method, x0, y0)
    torch.testing.assert_close(result.x, x0 - alpha * d)
    torch.testing.assert_close(result.y, y)
    assert result.history["grad_calls"][-1] == 3 * T + 3

    # Penalty with a fixed number of inner steps (inner_tol = 0), sigma_1 = sigma_0 = 0.2
    sigma = 0.2
    y, z = y0.clone(), y0.clone()
    for _ in range(T):
        y = y - beta * (sigma * g["Fy"](x0, y) + g["fy"](x0, y))
        z = z - beta * g["fy"](x0, z)
    d = g["Fx"](x0, y) + (g["fx"](x0, y) - g["fx"](x0, z)) / sigma
    method = Penalty(
        inner_steps=T, inner_step_size=beta, outer_step_size=alpha, inner_tol=0.0, sigma_init=sigma
    )
    result = _one_step(q, method, x0, y0)
    torch.testing.assert_close(result.x, x0 - alpha * d)
    torch.testing.assert_close(result.y, y)
    assert result.history["grad_calls"][-1] == 3 * T + 3

    # BOME, eta = 0.5
    z = y0.clone()
    for _ in range(T):
        z = z - beta * g["fy"](x0, z)
    gq_x, gq_y = g["fx"](x0, y0) - g["fx"](x0, z), g["fy"](x0, y0)
    gF_x, gF_y = g["Fx"](x0, y0), g["Fy"](x0, y0)
    sq = gq_x @ gq_x + gq_y @ gq_y
    lam = torch.clamp(0.5 * sq - (gF_x @ gq_x + gF_y @ gq_y), min=0) / sq
    method = BOME(inner_steps=T, inner_step_size=beta, outer_step_size=alpha)
    result = _one_step(q, method, x0, y0)
    torch.testing.assert_close(result.x, x0 - alpha * (gF_x + lam * gq_x))
    torch.testing.assert_close(result.y, y0 - alpha * (gF_y + lam * gq_y))
    assert result.history["grad_calls"][-1] == T + 3

    # VPBGD, gamma = 10
    gamma = 10.0
    g_x = g["Fx"](x0, y0) + gamma * (g["fx"](x0, y0) - g["fx"](x0, z))
    g_y = g["Fy"](x0, y0) + gamma * g["fy"](x0, y0)
    method = VPBGD(penalty=gamma, step_size=0.01, inner_steps=T, inner_step_size=beta)
    result = _one_step(q, method, x0, y0)
    torch.testing.assert_close(result.x, x0 - 0.01 * g_x)
    torch.testing.assert_close(result.y, y0 - 0.01 * g_y)
    assert result.history["grad_calls"][-1] == T + 3


def test_penalty_inner_loops_stop_at_tolerance(quadratic):
    """Cold start: the inner loops run until the gradient is below ``inner_tol * sigma``."""
    q, beta = quadratic
    g = _explicit_gradients(q)
    sigma, tau = 0.1, 1e-3
    states = []
    method = Penalty(inner_step_size=beta, inner_tol=tau, sigma_init=sigma, sigma_min=sigma)
    x0 = torch.randn(DIM_X)
    with pytest.warns(ConvergenceWarning):
        bilevel.solve(
            q.problem(),
            x0,
            torch.zeros(DIM_Y),
            method,
            maxiter=1,
            callback=lambda it, state: states.append(state),
        )
    (state,) = states
    # the last step was taken from a point meeting the tolerance, and contracts further
    assert float((sigma * g["Fy"](x0, state.y) + g["fy"](x0, state.y)).norm()) <= tau * sigma
    assert float(g["fy"](x0, state.extra["z"]).norm()) <= tau * sigma
    # ... and stopped early instead of running all inner_steps
    assert state.grad_calls < 3 * method.inner_steps


def test_bome_does_not_stop_while_y_still_moves():
    """F independent of x: d_x = 0 at the start although y is far from optimal (regression)."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: ((y - 1.0) ** 2).sum(), lower=lambda x, y: ((y - x) ** 2).sum()
    )
    with pytest.warns(ConvergenceWarning):
        result = bilevel.solve(
            problem, torch.zeros(3), torch.zeros(3), BOME(outer_step_size=0.1), maxiter=5, tol=1e-8
        )
    assert result.status == "max_iterations" and result.n_iter == 5
    assert float(result.y.abs().sum()) > 0  # y did move towards argmin F


# ------------------------------------------------------------------- issue 20: F2SA, penalty


def _linear_upper(seed: int = 3) -> QuadraticBilevel:
    """``F = c^T y + 1/2 x^T C x + d^T x`` (``A = K = 0``) with ``C`` positive definite:
    then ``y_lambda - y* = -H^{-1} c / lambda`` and ``grad L_lambda = grad h`` exactly (the
    ``lambda`` cancels), so the penalty point is ``x*`` for every ``lambda``: an oracle for
    the exact-oracle accuracy of the penalty methods."""
    import dataclasses

    q = QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=seed, lower_condition=4.0)
    return dataclasses.replace(
        q,
        A=torch.zeros_like(q.A),
        K=torch.zeros_like(q.K),
        C=torch.eye(DIM_X, dtype=q.C.dtype) * 2.0 + 0.1 * q.C @ q.C.T,
    )


@pytest.mark.filterwarnings("ignore:.*reached maxiter:bilevel.errors.ConvergenceWarning")  # tol=-1
def test_f2sa_exact_oracles_reach_x_star():
    """The linear schedule (lambda capped): linear convergence to the penalty point, here x*.
    (The paper's schedule keeps lambda growing, so y chases y_lambda - y* = -H^{-1} c /
    lambda_k and the error decays only like 1/k: it is a schedule for noisy oracles.)"""
    schedule = "linear"
    q = _linear_upper()
    eigs = torch.linalg.eigvalsh(q.H)
    beta = 2.0 / float(eigs.min() + eigs.max())
    method = F2SA(inner_steps=3, inner_step_size=beta, outer_step_size=0.2, schedule=schedule)
    x0, y0 = torch.zeros(DIM_X, dtype=q.H.dtype), torch.zeros(DIM_Y, dtype=q.H.dtype)
    result = bilevel.solve(q.problem(), x0, y0, method, maxiter=400, tol=-1.0)
    x_star = q.x_star()
    assert float((result.x - x_star).norm() / x_star.norm()) <= 1e-8


@pytest.mark.filterwarnings("ignore:.*reached maxiter:bilevel.errors.ConvergenceWarning")  # tol=-1
def test_penalty_exact_oracles_reach_x_star():
    q = _linear_upper()
    eigs = torch.linalg.eigvalsh(q.H)
    beta = 2.0 / float(eigs.min() + eigs.max())
    method = Penalty(
        inner_step_size=beta, outer_step_size=0.2, inner_tol=1e-9, inner_steps=300, sigma_min=1e-2
    )
    x0, y0 = torch.zeros(DIM_X, dtype=q.H.dtype), torch.zeros(DIM_Y, dtype=q.H.dtype)
    result = bilevel.solve(q.problem(), x0, y0, method, maxiter=150, tol=-1.0)
    x_star = q.x_star()
    assert float((result.x - x_star).norm() / x_star.norm()) <= 1e-8


def test_f2sa_paper_schedule_and_independent_batches():
    """lambda_k = lambda_0 s_k^(1/7), steps s_k^(-4/7) and s_k^(-5/7); every gradient of an
    iteration draws its own minibatch (2 lower per inner step, 2 for the direction)."""
    from bilevel.testproblems import FiniteSumQuadratic

    method = F2SA(schedule="paper", schedule_offset=10.0, lambda_init=2.0, inner_steps=3)
    inner, outer, lam = method.schedule_at(91)
    assert inner == pytest.approx(10.0 ** (-4 / 7))
    assert outer == pytest.approx(10.0 ** (-5 / 7))
    assert lam == pytest.approx(2.0 * 10.0 ** (1 / 7))
    q = QuadraticBilevel.random(dim_x=DIM_X, dim_y=DIM_Y, seed=3, lower_condition=4.0)
    fs = FiniteSumQuadratic.build(q, noise=0.1)
    method = F2SA(schedule="paper", inner_steps=3, inner_step_size=0.1, outer_step_size=0.05)
    state = method.init(fs.sampled(), torch.zeros(DIM_X), torch.zeros(DIM_Y))
    for k in range(1, 4):
        state = method.step(fs.sampled(), state, k)
    assert state.extra["lambda"] == pytest.approx(method.schedule_at(3)[2])
    streams = state.extra["streams"]
    assert streams["lower"].delivered == 3 * (2 * 3 + 2)
    assert streams["upper"].delivered == 3 * (3 + 1)


@pytest.mark.filterwarnings("ignore:.*reached maxiter:bilevel.errors.ConvergenceWarning")  # tol=-1
def test_f2sa_minibatch_floor_scales_with_the_batch_size():
    """Constant steps, noisy finite sum whose mean is the linear-upper quadratic (so the
    penalty point is x* and the only error is noise): every update is affine in the sampled
    data, so the stationary rms error of x is proportional to the noise's standard
    deviation, i.e. to ``1 / sqrt(B)`` for i.i.d. minibatches of ``B`` components. From
    ``B = 1`` to ``B = 16`` it shrinks by about 4 (tail over the last 200 of 500 iterations,
    three seeds)."""
    from bilevel.testproblems import FiniteSumQuadratic, Sampled

    q = _linear_upper()
    fs = FiniteSumQuadratic.build(q, noise=0.1, seed=1)
    x_star = q.x_star()
    eigs = torch.linalg.eigvalsh(q.H)
    beta = 1.0 / float(eigs.max())

    def floor(batch):
        problem = fs.problem(Sampled(fs.n, batch), Sampled(fs.m, batch))
        method = F2SA(
            inner_steps=1, inner_step_size=0.5 * beta, outer_step_size=0.02, lambda_max=10
        )
        total = 0.0
        for seed in (0, 1, 2):
            errors = []
            torch.manual_seed(seed)
            bilevel.solve(
                problem,
                torch.zeros(DIM_X, dtype=q.H.dtype),
                torch.zeros(DIM_Y, dtype=q.H.dtype),
                method,
                maxiter=500,
                tol=-1.0,
                callback=lambda it, st, errors=errors: (
                    errors.append(float((st.x - x_star).norm() ** 2)) and None
                ),
            )
            total += sum(errors[-200:]) / 200
        return (total / 3) ** 0.5

    ratio = floor(1) / floor(16)
    assert 2.8 <= ratio <= 5.5, ratio


def test_bome_pflug_diagnostic_shrinks_the_step_on_oscillation():
    """Alternating directions (an oscillation) make the running sum of successive inner
    products negative: after the window the step is multiplied by PFLUG_FACTOR; directions
    that keep their sign never change it."""
    from bilevel.methods import first_order
    from bilevel.methods._base import MethodState

    method = BOME(step_schedule="pflug")
    assert BOME().schedule == "constant" and method.schedule == "pflug"
    for sign, expected in ((-1.0, first_order.PFLUG_FACTOR), (1.0, 1.0)):
        state = MethodState(x=torch.zeros(2), y=torch.zeros(2))
        state.extra["steps"] = {"outer_step_size": 1.0}
        d = (torch.ones(2), torch.ones(2))
        for k in range(first_order.PFLUG_WINDOW + 1):
            method._pflug(state, tuple(t * sign**k for t in d))
        assert state.extra["steps"]["outer_step_size"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="step_schedule"):
        BOME(step_schedule="cosine")
