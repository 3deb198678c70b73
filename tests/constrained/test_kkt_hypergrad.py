"""KKT implicit differentiation against float64 central differences, cvxpylayers and closed
forms; degenerate, singular and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bilevel
from bilevel.constrained import (
    InfeasibleError,
    StrictComplementarityWarning,
    UnboundedError,
    kkt_argmin,
    kkt_hypergradient,
    solve_lower,
)
from bilevel.errors import BilevelError, ConvergenceWarning

cp = pytest.importorskip("cvxpy")
D = torch.float64
TIGHT = {"solver": "CLARABEL", "tol_gap_abs": 1e-13, "tol_gap_rel": 1e-13, "tol_feas": 1e-13}


class RandomQP:
    """min_y 1/2 y^T Q y + q^T y  s.t.  G y <= h,  A y = b;  x = (q, h, b), F = c^T y + ...

    Built from a chosen KKT point: y*, an active set S (half of the rows; n - p rows for an
    LP, Q = 0, so that y* is a vertex), multipliers mu_S > 0 and nu, then h_S = G_S y*,
    h_i = G_i y* + slack_i (slack > 0) off S, b = A y*, q = -(Q y* + G_S^T mu_S + A^T nu):
    strictly complementary, and unique (Q > 0, or a non-degenerate LP vertex)."""

    def __init__(self, seed: int, n: int = 6, m: int = 8, p: int = 2, lp: bool = False):
        rng = np.random.default_rng(seed)
        self.n, self.m, self.p, self.lp = n, m, p, lp
        M = rng.normal(size=(n, n))
        self.Q = np.zeros((n, n)) if lp else M @ M.T + np.eye(n)
        self.G = rng.normal(size=(m, n))
        self.A = rng.normal(size=(p, n))
        self.c = rng.normal(size=n)
        y_star = rng.normal(size=n)
        n_active = n - p if lp else m // 2
        active = rng.permutation(m)[:n_active]
        mu = np.zeros(m)
        mu[active] = rng.uniform(0.5, 2.0, size=n_active)
        nu = rng.normal(size=p)
        h = self.G @ y_star + rng.uniform(0.2, 1.0, size=m)
        h[active] = self.G[active] @ y_star
        b = self.A @ y_star
        q = -(self.Q @ y_star + self.G.T @ mu + self.A.T @ nu)
        self.x0 = np.concatenate([q, h, b])
        self.y_star, self.mu_star, self.nu_star = y_star, mu, nu
        self.t = {k: torch.as_tensor(getattr(self, k), dtype=D) for k in ("Q", "G", "A", "c")}

    def split(self, x):
        n, m = self.n, self.m
        return x[:n], x[n : n + m], x[n + m :]

    def problem(self) -> bilevel.BilevelProblem:
        t = self.t
        return bilevel.BilevelProblem(
            upper=lambda x, y: t["c"] @ y + 0.5 * (x**2).sum(),
            lower=lambda x, y: 0.5 * y @ t["Q"] @ y + self.split(x)[0] @ y,
            lower_ineq=lambda x, y: t["G"] @ y - self.split(x)[1],
            lower_eq=lambda x, y: t["A"] @ y - self.split(x)[2],
        )

    def solve(self, x: np.ndarray):
        q, h, b = self.split(x)
        y = cp.Variable(self.n)
        cons = [self.G @ y <= h, self.A @ y == b]
        objective = q @ y if self.lp else 0.5 * cp.quad_form(y, self.Q) + q @ y
        cp.Problem(cp.Minimize(objective), cons).solve(**TIGHT)
        return y.value, cons[0].dual_value, cons[1].dual_value

    def upper_value(self, x: np.ndarray) -> float:
        return float(self.c @ self.solve(x)[0] + 0.5 * (x**2).sum())


def central_differences(fun, x0: np.ndarray, eps: float) -> np.ndarray:
    out = np.zeros_like(x0)
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e[i] = eps
        out[i] = (fun(x0 + e) - fun(x0 - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("given_multipliers", [True, False])
def test_qp_hypergradient_matches_central_differences(seed, given_multipliers):
    """The QP solution is piecewise affine in (q, h, b): central differences with a step
    that keeps the active set are exact up to the (1e-12) solver accuracy."""
    qp = RandomQP(seed)
    y, mu, nu = qp.solve(qp.x0)
    np.testing.assert_allclose(y, qp.y_star, atol=1e-8)  # the construction is right
    np.testing.assert_allclose(mu, qp.mu_star, atol=1e-8)
    kwargs = {}
    if given_multipliers:
        kwargs = {"ineq_multipliers": torch.as_tensor(mu), "eq_multipliers": torch.as_tensor(nu)}
    result = kkt_hypergradient(qp.problem(), torch.as_tensor(qp.x0), torch.as_tensor(y), **kwargs)
    fd = central_differences(qp.upper_value, qp.x0, 1e-5)
    np.testing.assert_allclose(result.grad.numpy(), fd, atol=1e-6, rtol=1e-6)
    assert result.strict_complementarity and result.kkt_residual < 1e-8
    np.testing.assert_array_equal(result.active.numpy(), mu > 1e-6)
    if not given_multipliers:  # estimated multipliers agree with Clarabel's duals
        np.testing.assert_allclose(result.ineq_multipliers.numpy(), mu, atol=1e-8)
        np.testing.assert_allclose(result.eq_multipliers.numpy(), nu, atol=1e-8)


def _cvxpylayers_grad(qp: RandomQP) -> np.ndarray:
    from cvxpylayers.torch import CvxpyLayer

    q, h, b = cp.Parameter(qp.n), cp.Parameter(qp.m), cp.Parameter(qp.p)
    y = cp.Variable(qp.n)
    objective = q @ y if qp.lp else 0.5 * cp.sum_squares(np.linalg.cholesky(qp.Q).T @ y) + q @ y
    problem = cp.Problem(cp.Minimize(objective), [qp.G @ y <= h, qp.A @ y == b])
    layer = CvxpyLayer(problem, parameters=[q, h, b], variables=[y])
    x = torch.as_tensor(qp.x0).clone().requires_grad_(True)
    (y_star,) = layer(
        *qp.split(x), solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 100000}
    )
    (qp.t["c"] @ y_star + 0.5 * (x**2).sum()).backward()
    return x.grad.numpy()


def test_qp_hypergradient_matches_cvxpylayers():
    qp = RandomQP(2)
    y, _, _ = qp.solve(qp.x0)
    ours = kkt_hypergradient(qp.problem(), torch.as_tensor(qp.x0), torch.as_tensor(y)).grad
    # cvxpylayers differentiates SCS's conic solution (the quadratic as a second-order cone):
    # agreement to its accuracy, about 1e-5 relative here (central differences above check
    # the same estimator to 1e-6 absolute)
    theirs = _cvxpylayers_grad(qp)
    assert np.linalg.norm(ours.numpy() - theirs) <= 1e-4 * np.linalg.norm(theirs)


def test_lp_hypergradient_in_the_right_hand_sides_matches_cvxpylayers_and_differences():
    """For an LP y* is locally constant in the cost q (dy*/dq = 0 away from ties) and
    affine in the right-hand sides (y*_B = G_B^{-1} h_B): the derivative in (h, b) is
    meaningful, and the one in q must vanish."""
    qp = RandomQP(3, n=4, m=7, p=1, lp=True)
    y, mu, _ = qp.solve(qp.x0)
    n_active = int((mu > 1e-7).sum())
    assert n_active + qp.p == qp.n  # a non-degenerate vertex
    np.testing.assert_allclose(y, qp.y_star, atol=1e-7)
    result = kkt_hypergradient(qp.problem(), torch.as_tensor(qp.x0), torch.as_tensor(y))
    grad = result.grad.numpy()
    fd = central_differences(qp.upper_value, qp.x0, 1e-5)
    np.testing.assert_allclose(grad, fd, atol=1e-6)
    np.testing.assert_allclose(grad[: qp.n], qp.x0[: qp.n], atol=1e-10)  # only 1/2||x||^2
    theirs = _cvxpylayers_grad(qp)
    assert np.linalg.norm(grad - theirs) <= 1e-6 * np.linalg.norm(theirs)
    assert result.strict_complementarity


def test_coupled_nonlinear_constraint_matches_the_closed_form():
    """y*(x) = argmin {1/2||y - a(x)||^2 : ||y||^2 <= r(x)^2} = r a / ||a|| when ||a|| > r,
    with a(x) = (x0, 2 x1, x0 x1) and r(x) = 1 + x2^2: compared with autograd through the
    closed form, with y from :func:`solve_lower` (SLSQP)."""

    def a_of(x):
        return torch.stack([x[0], 2 * x[1], x[0] * x[1]])

    def r_of(x):
        return 1 + x[2] ** 2

    w = torch.tensor([0.3, -1.0, 2.0], dtype=D)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: w @ y + (x**2).sum(),
        lower=lambda x, y: 0.5 * ((y - a_of(x)) ** 2).sum(),
        lower_ineq=lambda x, y: (y @ y - r_of(x) ** 2).reshape(1),
    )
    x = torch.tensor([1.5, 1.0, 0.5], dtype=D)
    solution = solve_lower(problem, x, torch.zeros(3, dtype=D))
    assert solution.converged
    result = kkt_hypergradient(problem, x, solution.y)

    xc = x.clone().requires_grad_(True)
    y_closed = r_of(xc) * a_of(xc) / torch.linalg.vector_norm(a_of(xc))
    (w @ y_closed + (xc**2).sum()).backward()
    torch.testing.assert_close(solution.y, y_closed.detach(), atol=1e-8, rtol=0)
    torch.testing.assert_close(result.grad, xc.grad, atol=1e-7, rtol=0)
    # the differentiable wrapper gives the same gradient through autograd
    xa = x.clone().requires_grad_(True)
    y_star, _ = kkt_argmin(problem, xa, torch.zeros(3, dtype=D))
    (w @ y_star + (xa**2).sum()).backward()
    torch.testing.assert_close(xa.grad, xc.grad, atol=1e-7, rtol=0)


def test_bounds_on_y_enter_as_inequality_rows():
    """y*(x) = clip(x, -1, 1) componentwise; F = sum(y * [1, 2, 3])."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: y @ torch.tensor([1.0, 2.0, 3.0], dtype=D),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        y_bounds=(-1.0, 1.0),
    )
    x = torch.tensor([0.5, 2.0, -3.0], dtype=D)
    result = kkt_hypergradient(problem, x, x.clamp(-1, 1))
    torch.testing.assert_close(result.grad, torch.tensor([1.0, 0.0, 0.0], dtype=D))
    # rows: 3 upper bounds, then 3 lower bounds; active: upper of y1, lower of y2
    assert result.active.tolist() == [False, True, False, False, False, True]


def test_weakly_active_constraint_is_reported():
    """y*(x) = min(x, 0): at x = (0, 1) the first constraint y1 <= 0 is active with a zero
    multiplier."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_ineq=lambda x, y: y,
    )
    x = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.warns(StrictComplementarityWarning, match=r"rows \[0\]"):
        result = kkt_hypergradient(problem, x, torch.tensor([0.0, 0.0], dtype=D))
    assert result.degenerate == [0] and not result.strict_complementarity
    # the branch where y1 <= 0 is inactive: dy1/dx1 = 1; y2 is pinned at 0: dy2/dx2 = 0
    torch.testing.assert_close(result.grad, torch.tensor([1.0, 0.0], dtype=D))


def test_singular_kkt_system_is_an_error():
    """Two copies of the active constraint violate LICQ."""
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_ineq=lambda x, y: torch.cat([y, y]),
    )
    x = torch.tensor([1.0], dtype=D)
    with pytest.raises(BilevelError, match="singular"):
        kkt_hypergradient(
            problem,
            x,
            torch.zeros(1, dtype=D),
            ineq_multipliers=torch.tensor([0.5, 0.5], dtype=D),
            eq_multipliers=torch.zeros(0, dtype=D),
        )


def test_bad_inputs_to_the_kkt_estimator_and_the_lower_solver():
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_ineq=lambda x, y: torch.cat([y - x, -y]),  # 0 <= y <= x: empty for x < 0
    )
    with pytest.raises(InfeasibleError, match="infeasible at the given x"):
        solve_lower(problem, -torch.ones(1, dtype=D), torch.zeros(1, dtype=D))
    with pytest.raises(ValueError, match=r"ineq_multipliers must have shape \(2,\)"):
        kkt_hypergradient(
            problem,
            torch.ones(1, dtype=D),
            torch.ones(1, dtype=D),
            ineq_multipliers=torch.zeros(3, dtype=D),
            eq_multipliers=torch.zeros(0, dtype=D),
        )
    unbounded = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: -(y**2).sum() + x.sum(),
        lower_ineq=lambda x, y: y[:1] - 1,
    )
    with pytest.raises(UnboundedError, match="unbounded"):
        solve_lower(unbounded, torch.ones(1, dtype=D), torch.full((2,), 0.5, dtype=D))
    wrong = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        lower_eq=lambda x, y: (y - x).reshape(1, -1),
    )
    with pytest.raises(ValueError, match="1-D tensor"):
        kkt_hypergradient(wrong, torch.ones(2, dtype=D), torch.ones(2, dtype=D))


def test_a_point_that_is_not_a_kkt_point_is_flagged():
    """y outside its bounds is no lower-level solution: the derivative must not pass silently
    (the true hypergradient at y* = clip(x, -1, [1, 0.5]) is a different number)."""
    a = torch.tensor([0.0, 2.0], dtype=torch.float64)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: 0.5 * ((y - a) ** 2).sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
        y_bounds=(-1.0, torch.tensor([1.0, 0.5], dtype=torch.float64)),
    )
    x = torch.tensor([0.5, 0.2], dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="not a KKT point"):
        bad = kkt_hypergradient(problem, x, torch.tensor([5.0, -3.0], dtype=torch.float64))
    assert bad.kkt_residual > 1.0
    good = kkt_hypergradient(problem, x, x.clone())  # y* = x inside the bounds
    assert good.kkt_residual <= 1e-12
    # F = 1/2 |y - a|^2 with dy*/dx = I: grad = y* - a
    assert torch.allclose(good.grad, x - a, atol=1e-12)


def _comparison_cases():
    """(problem, x, y, v) at lower-level KKT points: QPs with equalities, an LP vertex,
    a coupled nonlinear constraint and bounds on y."""
    cases = []
    for seed in (0, 1, 4):
        qp = RandomQP(seed)
        y, _, _ = qp.solve(qp.x0)
        cases.append((qp.problem(), torch.as_tensor(qp.x0), torch.as_tensor(y)))
    lp = RandomQP(3, n=4, m=7, p=1, lp=True)
    cases.append((lp.problem(), torch.as_tensor(lp.x0), torch.as_tensor(lp.solve(lp.x0)[0])))
    coupled = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - torch.stack([x[0], 2 * x[1], x[0] * x[1]])) ** 2).sum(),
        lower_ineq=lambda x, y: (y @ y - (1 + x[2] ** 2) ** 2).reshape(1),
    )
    x = torch.tensor([1.5, 1.0, 0.5], dtype=D)
    cases.append((coupled, x, solve_lower(coupled, x, torch.zeros(3, dtype=D)).y))
    boxed = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * ((y - x) ** 2).sum() + 0.1 * (y[0] * y[1]),
        y_bounds=(-1.0, torch.tensor([1.0, 0.5, 2.0], dtype=D)),
    )
    xb = torch.tensor([0.5, 2.0, -3.0], dtype=D)
    cases.append((boxed, xb, solve_lower(boxed, xb, torch.zeros(3, dtype=D)).y))
    return cases


def _explicit_kkt_vjp(problem, x, y, v, mu, nu, active):
    """The reduced KKT solve written out: K = [[H, J^T], [J, 0]] from explicit autograd
    Hessians and Jacobians (H of the Lagrangian in y, J of (h, g_A) in y), then
    ``-(L_xy p + (dc_A/dx)^T q)`` with ``K [p; q] = [v; 0]``."""
    from torch.autograd.functional import hessian, jacobian

    lo, hi = problem.bounds_like("y_bounds", y)
    up, down = torch.isfinite(hi), torch.isfinite(lo)

    def rows(x_, y_):  # g, finite upper bounds, finite lower bounds (the documented order)
        g = problem.lower_ineq(x_, y_) if problem.lower_ineq is not None else y_.new_zeros(0)
        return torch.cat([g, y_[up] - hi[up], lo[down] - y_[down]])

    def eqs(x_, y_):
        return problem.lower_eq(x_, y_) if problem.lower_eq is not None else y_.new_zeros(0)

    def lagrangian(x_, y_):
        return problem.lower(x_, y_) + mu @ rows(x_, y_) + nu @ eqs(x_, y_)

    def active_rows(x_, y_):
        return torch.cat([eqs(x_, y_), rows(x_, y_)[active]])

    H = hessian(lambda y_: lagrangian(x, y_), y)
    L_yx = jacobian(  # d/dx of grad_y L: rows y, columns x
        lambda x_: jacobian(lambda y_: lagrangian(x_, y_), y, create_graph=True), x
    )
    Jy = jacobian(lambda y_: active_rows(x, y_), y)
    Jx = jacobian(lambda x_: active_rows(x_, y), x)
    n, m = y.numel(), Jy.shape[0]
    K = torch.zeros(n + m, n + m, dtype=D)
    K[:n, :n], K[:n, n:], K[n:, :n] = H, Jy.T, Jy
    sol = torch.linalg.solve(K, torch.cat([v, torch.zeros(m, dtype=D)]))
    return -(L_yx.T @ sol[:n]) - Jx.T @ sol[n:]


@pytest.mark.parametrize("case", range(6))
def test_kkt_vjp_equals_the_explicit_reduced_kkt_solve(case):
    """The KKT hypergradient (on :func:`bilevel.implicit.root_vjp`) equals the reduced KKT
    system built from explicit Hessians and Jacobians and solved by LU, to 1e-12 (float64),
    for random cotangents (the old hand-built path agreed to 1e-12 before it was removed)."""
    from bilevel.constrained import kkt_vjp

    problem, x, y = _comparison_cases()[case]
    gen = torch.Generator().manual_seed(case)
    for _ in range(3):
        v = torch.randn(y.shape, dtype=D, generator=gen)
        ours = kkt_vjp(problem, x, y, v)
        assert ours.active.any() and ours.strict_complementarity
        expected = _explicit_kkt_vjp(
            problem, x, y, v, ours.ineq_multipliers, ours.eq_multipliers, ours.active
        )
        torch.testing.assert_close(ours.grad, expected, rtol=1e-12, atol=1e-12)
        assert 1.0 <= ours.condition_number < 1e8


def test_kkt_jvp_matches_the_closed_form_and_is_the_adjoint_of_kkt_vjp():
    """Forward mode (root_jvp) on the coupled example: ``dy*/dx t`` against torch.func.jvp
    through the closed form ``y* = r a / ||a||``, and ``<v, J t> = <J^T v, t>`` against
    kkt_vjp to 1e-12 on random QPs, an LP vertex and bounds."""
    from bilevel.constrained import kkt_jvp, kkt_vjp

    def closed(x):
        a = torch.stack([x[0], 2 * x[1], x[0] * x[1]])
        return (1 + x[2] ** 2) * a / torch.linalg.vector_norm(a)

    problem, x, y = _comparison_cases()[4]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        t = torch.randn(3, dtype=D, generator=gen)
        _, expected = torch.func.jvp(closed, (x,), (t,))
        torch.testing.assert_close(kkt_jvp(problem, x, y, t).grad, expected, atol=1e-7, rtol=0)
    for case in (0, 1, 3, 5):
        problem, x, y = _comparison_cases()[case]
        t = torch.randn(x.shape, dtype=D, generator=gen)
        v = torch.randn(y.shape, dtype=D, generator=gen)
        forward = float(v.flatten() @ kkt_jvp(problem, x, y, t).grad.flatten())
        reverse = float(kkt_vjp(problem, x, y, v).grad.flatten() @ t.flatten())
        assert forward == pytest.approx(reverse, rel=1e-12, abs=1e-12)
