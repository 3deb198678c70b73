"""The default ``solve="auto"`` path of bilevel.implicit, its batched vmap rule and second
order, against closed forms, tightly converged CG and float64 central differences."""

from __future__ import annotations

import functools
import warnings
from unittest import mock

import pytest
import torch
from torch.func import grad, jacrev, jvp

import bilevel
import bilevel.linalg as la
from bilevel.errors import ConvergenceWarning
from bilevel.implicit import _core, custom_fixed_point, custom_root, root_jvp, root_vjp
from tests.conftest import relative_error

SEEDS = [0, 1, 2]


def make_ridge(seed: int, n: int = 40, d: int = 8):
    """Ridge with a per-feature penalty ``lam`` (a vector), data and validation set."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen)
    y = X @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n, generator=gen)
    Xv = torch.randn(n // 2, d, generator=gen)
    yv = Xv @ torch.randn(d, generator=gen)
    lam = torch.rand(d, generator=gen) + 0.1
    return X, y, Xv, yv, lam


def inner_objective(w, lam, X, y):
    return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * (lam * w * w).sum()


def closed_form(lam, X, y):
    return torch.linalg.solve(X.T @ X + torch.diag(lam), X.T @ y)


def exact_solver(init, lam, X, y):
    """The inner problem solved exactly (only the implicit layer differentiates it)."""
    return closed_form(lam, X, y)


def outer(w, Xv, yv):
    return 0.5 * ((Xv @ w - yv) ** 2).sum()


def record_batched(returns):
    """Patch of the batched vmap rule that records what it returned (None = loop)."""
    original = _core._batched_dense_solve

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        returns.append(out)
        return out

    return mock.patch.object(_core, "_batched_dense_solve", wrapper)


def hypergradient_fn(solve, X, y, Xv, yv):
    solver = custom_root(grad(inner_objective), solve=solve)(exact_solver)
    d = X.shape[1]
    return lambda lam: outer(solver(torch.zeros(d, dtype=X.dtype), lam, X, y), Xv, yv)


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_dense_cg_and_closed_form_agree(seed):
    X, y, Xv, yv, lam = make_ridge(seed)
    exact = grad(lambda l: outer(closed_form(l, X, y), Xv, yv))(lam)
    results = {}
    for name in ["auto", "dense", "cg", "gmres"]:
        solve = functools.partial(la.get_solver(name), tol=1e-13)
        results[name] = grad(hypergradient_fn(solve, X, y, Xv, yv))(lam)
        assert relative_error(results[name], exact) <= 1e-10, name
    # the default (no options) agrees with the old default path to 1e-8
    default = grad(hypergradient_fn("auto", X, y, Xv, yv))(lam)
    assert relative_error(default, results["gmres"]) <= 1e-8
    assert relative_error(default, results["cg"]) <= 1e-8


def test_auto_is_the_default_and_reports_its_branch():
    X, y, _, _, lam = make_ridge(0)
    sol = closed_form(lam, X, y)
    seen = []

    def spy(matvec, b, **kw):
        x, info = la.auto(matvec, b, **kw)
        seen.append(info.solver)
        return x, info

    with mock.patch.object(
        _core, "get_solver", side_effect=lambda s: spy if s == "auto" else la.get_solver(s)
    ):
        root_vjp(grad(inner_objective), sol, (lam, X, y), torch.ones(8))
    assert seen == ["auto:cholesky"]
    assert custom_root.__defaults__[0] == "auto" and root_vjp.__defaults__[0] == "auto"


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_branches_on_a_nonsymmetric_fixed_point(seed):
    """T(x, theta) = tanh(W x + theta): A = D W - I is not symmetric (LU / GMRES), checked
    against the explicit IFT Jacobian."""
    gen = torch.Generator().manual_seed(seed)
    n = 12
    W = 0.4 * torch.randn(n, n, generator=gen) / n**0.5
    theta = torch.randn(n, generator=gen)

    def T(x, theta):
        return torch.tanh(W @ x + theta)

    def iterate(init, theta):
        x = init
        for _ in range(200):
            x = T(x, theta)
        return x

    x_star = iterate(torch.zeros(n), theta)
    D = torch.diag(1 - torch.tanh(W @ x_star + theta) ** 2)
    exact = torch.linalg.solve(torch.eye(n) - D @ W, D)  # d x* / d theta
    for options in [{}, {"dense_max": 0}]:
        solve = functools.partial(la.auto, tol=1e-13, **options)
        jac = jacrev(custom_fixed_point(T, solve=solve)(iterate), argnums=1)(torch.zeros(n), theta)
        assert relative_error(jac, exact) <= 1e-10
        cot = torch.randn(n, generator=gen)
        mv = lambda u: torch.func.vjp(lambda x: T(x, theta) - x, x_star)[1](u)[0]
        _, info = la.auto(mv, cot, **options)
        assert info.solver == ("auto:lu" if not options else "auto:gmres") and info.converged


def test_auto_krylov_branch_and_fallback_from_singular_dense():
    A = torch.diag(torch.tensor([2.0, 1.0, 0.0]))
    b = torch.tensor([2.0, 1.0, 0.0])  # consistent: x = (1, 1, anything)
    x, info = la.auto(lambda v: A @ v, b)  # LU fails on the zero pivot -> CG
    assert info.solver == "auto:cg" and info.converged
    torch.testing.assert_close(A @ x, b)
    spd = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    _, info = la.auto(lambda v: spd @ v, torch.ones(2), dense_max=0)
    assert info.solver == "auto:cg"
    # inconsistent singular system: nothing converges and the user is told
    with pytest.warns(ConvergenceWarning):
        _, info = la.auto(lambda v: A @ v, torch.ones(3))
    assert not info.converged


def test_factor_solve_batched_and_symmetry_test():
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(4, 5, 5, generator=gen)
    spd = B @ B.mT + torch.eye(5)
    rhs = torch.randn(4, 5, 2, generator=gen)
    x, method = la.factor_solve(spd, rhs)
    assert method == "cholesky"
    torch.testing.assert_close(spd @ x, rhs)
    x, method = la.factor_solve(B + 5 * torch.eye(5), rhs)
    assert method == "lu"
    torch.testing.assert_close((B + 5 * torch.eye(5)) @ x, rhs)
    assert la.is_symmetric(spd).all() and not la.is_symmetric(B).any()


# ----------------------------------------------------------------------------------------
# torch.vmap: one batched solve
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_vmap_hypergradients_match_the_per_element_loop(seed):
    X, y, Xv, yv, lam = make_ridge(seed)
    lams = lam + torch.rand(6, lam.numel(), generator=torch.Generator().manual_seed(seed))
    g = grad(hypergradient_fn("auto", X, y, Xv, yv))
    returns = []
    with record_batched(returns):
        batched = torch.vmap(g)(lams)
    assert returns and all(r is not None for r in returns)
    loop = torch.stack([g(l) for l in lams])
    exact = torch.stack([grad(lambda l: outer(closed_form(l, X, y), Xv, yv))(l) for l in lams])
    assert relative_error(batched, loop) <= 1e-12
    assert relative_error(batched, exact) <= 1e-10


def test_vmap_over_data_and_jacobians(data_seed=3):
    """Batched operands (different X per element) and a batched right-hand side only
    (jacrev: one factorisation, many columns)."""
    X, y, _, _, lam = make_ridge(data_seed)
    Xs = X + 0.1 * torch.randn(5, *X.shape, generator=torch.Generator().manual_seed(1))
    solver = custom_root(grad(inner_objective))(exact_solver)
    d = X.shape[1]
    jac = torch.vmap(lambda Xb: jacrev(solver, argnums=1)(torch.zeros(d), lam, Xb, y))(Xs)
    for i in range(5):
        exact = jacrev(closed_form)(lam, Xs[i], y)
        assert relative_error(jac[i], exact) <= 1e-10
    jac_y = jacrev(solver, argnums=3)(torch.zeros(d), lam, X, y)
    assert relative_error(jac_y, jacrev(closed_form, argnums=2)(lam, X, y)) <= 1e-10


def test_vmap_large_system_falls_back_to_the_loop():
    X, y, Xv, yv, lam = make_ridge(0)
    g = grad(hypergradient_fn(functools.partial(la.auto, dense_max=4, tol=1e-13), X, y, Xv, yv))
    lams = lam + torch.rand(3, lam.numel())
    returns = []
    with record_batched(returns):
        batched = torch.vmap(g)(lams)
    assert returns and all(r is None for r in returns)
    assert relative_error(batched, torch.stack([g(l) for l in lams])) <= 1e-10


# ----------------------------------------------------------------------------------------
# Higher order: Hessian-vector products of the outer objective through custom_root
# ----------------------------------------------------------------------------------------


def central_difference_hvp(g, lam, v, h=1e-4):
    return (g(lam + h * v) - g(lam - h * v)) / (2 * h)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("solve", ["auto", "cg", "gmres"])
def test_outer_hvp_matches_central_differences_of_the_hypergradient(seed, solve):
    X, y, Xv, yv, lam = make_ridge(seed)
    tight = functools.partial(la.get_solver(solve), tol=1e-14)
    h = hypergradient_fn(tight, X, y, Xv, yv)
    g = grad(h)
    v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(seed + 100))
    fd = central_difference_hvp(g, lam, v)
    exact = torch.func.hessian(lambda l: outer(closed_form(l, X, y), Xv, yv))(lam) @ v
    # forward over reverse, reverse over reverse, and autograd's create_graph
    fwd = jvp(g, (lam,), (v,))[1]
    rev = grad(lambda l: g(l) @ v)(lam)
    lam_leaf = lam.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(h(lam_leaf), lam_leaf, create_graph=True)
    (ag,) = torch.autograd.grad(g1 @ v, lam_leaf)
    for hvp in (fwd, rev, ag):
        assert relative_error(hvp, fd) <= 1e-6
        assert relative_error(hvp, exact) <= 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_second_order_of_a_nonsymmetric_fixed_point_matches_central_differences(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 6
    W = 0.5 * torch.randn(n, n, generator=gen) / n**0.5
    c = torch.randn(n, generator=gen)

    def T(x, theta):
        return torch.tanh(W @ x + theta)

    @custom_fixed_point(T, solve=functools.partial(la.auto, tol=1e-14))
    def iterate(init, theta):
        x = init
        for _ in range(400):
            x = T(x, theta)
        return x

    def loss(theta):
        return torch.sin(iterate(torch.zeros(n), theta)) @ c

    theta = torch.randn(n, generator=gen)
    v = torch.randn(n, generator=gen)
    fd = central_difference_hvp(grad(loss), theta, v)
    assert relative_error(jvp(grad(loss), (theta,), (v,))[1], fd) <= 1e-6
    assert relative_error(grad(lambda t: grad(loss)(t) @ v)(theta), fd) <= 1e-6


def test_root_jvp_and_vjp_are_adjoint_with_one_linearisation():
    """<root_vjp(v), t> = <v, root_jvp(t)> (the matvec of forward mode is the transpose of
    the reverse one's, both from one linearisation)."""
    X, y, _, _, lam = make_ridge(4)
    sol = closed_form(lam, X, y)
    F = grad(inner_objective)
    v, t = torch.randn(8), torch.randn(8)
    for solve in ["auto", functools.partial(la.gmres, tol=1e-13)]:
        (lam_bar, _, _) = root_vjp(F, sol, (lam, X, y), v, solve)
        x_dot = root_jvp(F, sol, (lam, X, y), (t, torch.zeros_like(X), torch.zeros_like(y)), solve)
        assert abs(float(lam_bar @ t - v @ x_dot)) <= 1e-10 * float(lam_bar.norm() * t.norm())


def test_float32_default_path_converges_without_warning():
    X, y, Xv, yv, lam = (t.float() for t in make_ridge(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        g = grad(hypergradient_fn("auto", X, y, Xv, yv))(lam)
    X, y, Xv, yv = (t.double() for t in (X, y, Xv, yv))
    exact = grad(lambda l: outer(closed_form(l, X, y), Xv, yv))(lam.double())
    assert relative_error(g.double(), exact) <= 1e-3


def test_bilevel_namespace_exports():
    assert bilevel.linalg.SOLVERS["auto"] is la.auto and la.DENSE_MAX >= 1


def test_vmap_runs_a_vmappable_solver_once_and_loops_otherwise():
    X, y, Xv, yv, lam = make_ridge(5)
    lams = lam + torch.rand(4, lam.numel(), generator=torch.Generator().manual_seed(5))
    calls = []

    def counted_exact(init, lam, X, y):
        calls.append("exact")
        return closed_form(lam, X, y)

    def counted_iterative(init, lam, X, y):  # data-dependent stopping test: not vmappable
        calls.append("iterative")
        H = X.T @ X + torch.diag(lam)
        w = init
        for _ in range(10_000):
            g = H @ w - X.T @ y
            if torch.linalg.vector_norm(g) < 1e-12:
                break
            w = w - g / torch.linalg.matrix_norm(H, ord=2)
        return w

    def hyper(solver):
        solver = custom_root(grad(inner_objective))(solver)
        return grad(lambda l: outer(solver(torch.zeros(8), l, X, y), Xv, yv))

    exact = torch.stack([grad(lambda l: outer(closed_form(l, X, y), Xv, yv))(l) for l in lams])
    assert relative_error(torch.vmap(hyper(counted_exact))(lams), exact) <= 1e-10
    assert calls == ["exact"]
    calls.clear()
    assert relative_error(torch.vmap(hyper(counted_iterative))(lams), exact) <= 1e-8
    assert calls == ["iterative"] * 5  # one failed vmapped attempt, then the loop

    def broken(init, lam, X, y):
        raise ValueError("solver bug")

    with pytest.raises(ValueError, match="solver bug"):
        torch.vmap(hyper(broken))(lams)
