"""Each inner solver + optimality condition: implicit JVP vs central finite differences
(float64) and vs backpropagation through a long unrolled run of the same solver."""

from __future__ import annotations

import pytest
import torch

from bilevel.errors import ConvergenceWarning
from bilevel.operators import projection_box, projection_non_negative, prox_elastic_net, prox_l1
from bilevel.solvers import (
    LBFGS,
    AugmentedLagrangian,
    GradientDescent,
    MirrorDescent,
    ProjectedGradient,
    ProximalGradient,
)
from tests.conftest import relative_error

N, D = 30, 8


def central_difference(f, theta, direction, eps=1e-5):
    return (f(theta + eps * direction) - f(theta - eps * direction)) / (2 * eps)


def check_against_oracles(solve_implicit, solve_unrolled, theta):
    """JVP (implicit, forward mode) == central FD, and VJP (implicit) == unrolled VJP."""
    direction = torch.randn_like(theta)
    _, jvp_implicit = torch.func.jvp(solve_implicit, (theta,), (direction,))
    assert (
        relative_error(jvp_implicit, central_difference(solve_implicit, theta, direction)) <= 1e-6
    )
    theta_leaf = theta.clone().requires_grad_(True)
    solution = solve_unrolled(theta_leaf)
    cotangent = torch.randn_like(solution)
    (vjp_unrolled,) = torch.autograd.grad((solution * cotangent).sum(), theta_leaf)
    (vjp_implicit,) = torch.autograd.grad(
        (solve_implicit(theta_leaf) * cotangent).sum(), theta_leaf
    )
    assert relative_error(vjp_implicit, vjp_unrolled) <= 1e-6
    # and the adjoint identity between forward and reverse mode
    jvp_dot = torch.dot(jvp_implicit.reshape(-1), cotangent.reshape(-1))
    assert abs(float(jvp_dot - torch.sum(vjp_implicit * direction))) <= 1e-10 * max(
        1.0, abs(float(jvp_dot))
    )
    return jvp_implicit


@pytest.fixture
def regression():
    X = torch.randn(N, D)
    y = X @ torch.randn(D) + 0.1 * torch.randn(N)
    return X, y


def test_lasso_proximal_gradient():
    X = torch.randn(N, D)
    y = X @ torch.tensor([1.0, -2.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.05]) + 0.1 * torch.randn(N)

    def loss(w, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum() / N

    def make(implicit):
        solver = ProximalGradient(loss, prox_l1, tol=1e-13, maxiter=50_000, implicit_diff=implicit)
        return lambda lam: solver.run(torch.zeros(D), lam, X, y)[0]

    lam = torch.tensor(0.1)
    w = make(True)(lam)
    assert 0 < int((w == 0).sum()) < D  # a genuinely sparse solution, with a support
    check_against_oracles(make(True), make(False), lam)
    _, jvp = torch.func.jvp(make(True), (lam,), (torch.tensor(1.0),))
    # closed form on the support S: dw_S/dlam = -(X_S^T X_S / N)^{-1} sign(w_S)
    support = w != 0
    XS = X[:, support]
    exact = -torch.linalg.solve(XS.T @ XS / N, torch.sign(w[support]))
    assert relative_error(jvp[support], exact) <= 1e-8 and bool((jvp[~support] == 0).all())


def test_logistic_regression_stationarity(regression):
    X, _ = regression
    labels = (torch.rand(N) > 0.5).double()

    def loss(w, lam, X, labels):
        logits = X @ w
        return (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            + 0.5 * lam * (w**2).sum()
        )

    def make(implicit):
        solver = GradientDescent(loss, tol=1e-13, implicit_diff=implicit)
        return lambda lam: solver.run(torch.zeros(D), lam, X, labels)[0]

    check_against_oracles(make(True), make(False), torch.tensor(0.1))
    # L-BFGS reaches the same solution and derivative
    lbfgs = LBFGS(loss, tol=1e-9)
    jac_lbfgs = torch.func.jacrev(lambda lam: lbfgs.run(torch.zeros(D), lam, X, labels)[0])(
        torch.tensor(0.1)
    )
    jac_gd = torch.func.jacrev(make(True))(torch.tensor(0.1))
    assert relative_error(jac_lbfgs, jac_gd) <= 1e-6


def test_non_negative_least_squares_projected_gradient(regression):
    X, y = regression

    def loss(w, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum()

    def make(implicit):
        solver = ProjectedGradient(loss, projection_non_negative, tol=1e-12, implicit_diff=implicit)
        return lambda y_: solver.run(torch.zeros(D), (), X, y_)[0]

    w = make(True)(y)
    assert 0 < int((w == 0).sum()) < D  # some constraints active
    check_against_oracles(make(True), make(False), y)


def test_box_projection_hyperparameters_are_differentiable(regression):
    X, y = regression

    def loss(w, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum()

    solver = ProjectedGradient(loss, projection_box, tol=1e-12)

    def solve(upper):
        return solver.run(torch.zeros(D), (torch.tensor(-0.2), upper), X, y)[0]

    upper = torch.tensor(0.3)
    w = solve(upper)
    assert bool((w == 0.3).any())
    _, jvp = torch.func.jvp(solve, (upper,), (torch.tensor(1.0),))
    assert relative_error(jvp, central_difference(solve, upper, torch.tensor(1.0))) <= 1e-6


def test_simplex_mirror_descent():
    Q = torch.randn(D, D)
    Q = Q @ Q.T / D

    def objective(x, c):
        return 0.5 * x @ Q @ x + c @ x + 0.1 * (x * torch.log(x)).sum()

    def make(implicit):
        solver = MirrorDescent(objective, step_size=0.5, tol=1e-13, implicit_diff=implicit)
        return lambda c: solver.run(torch.full((D,), 1.0 / D), c)[0]

    c = torch.randn(D)
    x = make(True)(c)
    assert abs(float(x.sum()) - 1) < 1e-12 and bool((x > 0).all())
    check_against_oracles(make(True), make(False), c)


def test_entropic_simplex_closed_form():
    """min <c, x> + tau sum x log x over the simplex = softmax(-c / tau)."""
    tau = 0.7
    solver = MirrorDescent(
        lambda x, c: c @ x + tau * (x * torch.log(x)).sum(), step_size=0.5, tol=1e-13
    )
    c = torch.randn(D)
    jac = torch.func.jacrev(lambda c_: solver.run(torch.full((D,), 1.0 / D), c_)[0])(c)
    exact = torch.func.jacrev(lambda c_: torch.softmax(-c_ / tau, dim=0))(c)
    assert relative_error(jac, exact) <= 1e-8


def test_inequality_constrained_qp_kkt():
    P = torch.randn(5, 5)
    P = P @ P.T + torch.eye(5)
    G = torch.randn(4, 5)
    h = torch.tensor([0.1, -0.2, 0.3, 0.05])

    def objective(x, q):
        return 0.5 * x @ P @ x + q @ x

    def ineq(x, q):
        return G @ x - h

    def make(implicit):
        solver = AugmentedLagrangian(
            objective, ineq_constraints=ineq, tol=1e-12, implicit_diff=implicit
        )
        return lambda q: solver.run(torch.zeros(5), q)[0][0]

    q = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    (x, _, mu), info = AugmentedLagrangian(objective, ineq_constraints=ineq, tol=1e-12).run(
        torch.zeros(5), q
    )
    active = mu > 1e-8
    slack = G @ x - h
    assert info.converged and 0 < int(active.sum()) < 4
    assert bool((slack[~active] < -1e-6).all())  # strict complementarity holds
    jvp = check_against_oracles(make(True), make(False), q)
    # closed form from the equality-constrained KKT system on the active set
    GA = G[active]
    kkt = torch.cat([torch.cat([P, GA.T], 1), torch.cat([GA, torch.zeros(len(GA), len(GA))], 1)], 0)
    direction_free = torch.linalg.solve(kkt, torch.cat([-torch.ones(5), torch.zeros(len(GA))]))[:5]
    _, jvp_ones = torch.func.jvp(make(True), (q,), (torch.ones(5),))
    assert relative_error(jvp_ones, direction_free) <= 1e-8
    del jvp


def test_equality_constraints_and_multipliers():
    """min ||x - a||^2 / 2 s.t. sum(x) = s: x = a + (s - sum a)/n, lam = -(s - sum a)/n."""

    def objective(x, a, s):
        return 0.5 * ((x - a) ** 2).sum()

    def eq(x, a, s):
        return (x.sum() - s).reshape(1)

    solver = AugmentedLagrangian(objective, eq_constraints=eq, tol=1e-12)
    a, s = torch.randn(4), torch.tensor(2.0)
    (x, lam, mu), info = solver.run(torch.zeros(4), a, s)
    assert info.converged and mu.numel() == 0
    shift = (s - a.sum()) / 4
    torch.testing.assert_close(x, a + shift, rtol=0, atol=1e-10)
    torch.testing.assert_close(lam, -shift.reshape(1), rtol=0, atol=1e-10)
    ds = torch.func.jacrev(lambda s_: solver.run(torch.zeros(4), a, s_)[0][0])(s)
    torch.testing.assert_close(ds, torch.full((4,), 0.25), rtol=0, atol=1e-10)


def test_elastic_net_hyperparameters(regression):
    X, y = regression

    def loss(w, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum() / N

    solver = ProximalGradient(loss, prox_elastic_net, tol=1e-13, maxiter=50_000)

    def solve(l2):
        return solver.run(torch.zeros(D), (torch.tensor(0.05), l2), X, y)[0]

    l2 = torch.tensor(0.3)
    _, jvp = torch.func.jvp(solve, (l2,), (torch.tensor(1.0),))
    assert relative_error(jvp, central_difference(solve, l2, torch.tensor(1.0))) <= 1e-6


def test_nonconvergence_is_reported_in_info_and_warned(regression):
    X, y = regression

    def loss(w, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum()

    with pytest.warns(ConvergenceWarning, match="optimality error"):
        _, info = GradientDescent(loss, maxiter=3, implicit_diff=False).run(torch.zeros(D), X, y)
    assert not info.converged and info.iterations == 3 and info.error > 0


def test_bad_solver_inputs(regression):
    X, y = regression
    loss = lambda w, X, y: ((X @ w - y) ** 2).sum()
    with pytest.raises(ValueError, match="implicit differentiation only"):
        LBFGS(loss, implicit_diff=False)
    with pytest.raises(ValueError, match="strictly positive"):
        MirrorDescent(lambda x: x.sum()).run(torch.tensor([0.5, 0.0, 0.5]))
    with pytest.raises(ValueError, match="maxiter"):
        GradientDescent(loss, maxiter=0).run(torch.zeros(D), X, y)
    with pytest.raises(ValueError, match="1-D tensor"):
        AugmentedLagrangian(loss, ineq_constraints=lambda w, X, y: w.sum()).run(
            torch.zeros(D), X, y
        )


def test_vmap_over_inner_solver_equals_loop(regression):
    X, y = regression

    def loss(w, lam, X, y):
        return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w**2).sum()

    solver = GradientDescent(loss, tol=1e-12)
    lams = torch.tensor([0.1, 1.0, 5.0])

    def solve(lam):
        return solver.run(torch.zeros(D), lam, X, y)[0]

    batched = torch.vmap(torch.func.jacrev(solve))(lams)
    looped = torch.stack([torch.func.jacrev(solve)(lam) for lam in lams])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-14)
