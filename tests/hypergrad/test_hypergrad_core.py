"""bilevel.hypergrad's implicit and Neumann estimators on the one IFT core of
bilevel.implicit (issue 15, item 1).

* Old against new: the estimators as they were before the move (an autograd linearisation
  of ``grad_y f`` written in bilevel.hypergrad, any bilevel.linalg solver on it, ``grad_x F
  - B v``) are kept here, frozen, and must agree with the new ones to 1e-12 in float64.
* Against independent oracles: explicit Hessians (torch.func.hessian / jacrev, a dense
  solve) and float64 central differences of ``h(x) = F(x, y*(x))`` with ``y*`` solved by
  Newton's method to machine precision.
* ``root_vjp``'s eager autograd path against its torch.func path, and the product counts.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from bilevel import hypergrad
from bilevel.errors import ConvergenceWarning
from bilevel.implicit import root_vjp
from bilevel.linalg import get_solver
from bilevel.linalg import neumann as neumann_solve
from bilevel.problem import BilevelProblem
from bilevel.testproblems import MultiBlockQuadratic, QuadraticBilevel
from bilevel.tree import ravel, tree_flatten, tree_leaves, tree_unflatten
from tests.conftest import relative_error

# --------------------------------------------------------------------------------------
# the estimators as they were before they moved onto bilevel.implicit (frozen copy)
# --------------------------------------------------------------------------------------


def _old_pieces(problem, x, y, upper_batch=None, lower_batch=None):
    def track(tree):
        leaves, spec = tree_flatten(tree)
        tracked = [leaf.detach().requires_grad_(True) for leaf in leaves]
        return tree_unflatten(tracked, spec), tracked, spec

    def grad(outputs, inputs, cotangents=None, create_graph=False):
        return list(
            torch.autograd.grad(
                outputs, inputs, grad_outputs=cotangents, create_graph=create_graph,
                retain_graph=True, allow_unused=True, materialize_grads=True,
            )
        )

    with torch.enable_grad():
        x_t, xs, x_spec = track(x)
        y_t, ys, y_spec = track(y)
        g = grad(problem.upper_value(x_t, y_t, upper_batch), xs + ys)
        gx_F, gy_F = tree_unflatten(g[: len(xs)], x_spec), tree_unflatten(g[len(xs) :], y_spec)
        x_t, xs, x_spec = track(x)
        y_t, ys, y_spec = track(y)
        grad_y = grad([problem.lower_value(x_t, y_t, lower_batch)], ys, create_graph=True)

    def hvp(u):
        return tree_unflatten([t.detach() for t in grad(grad_y, ys, tree_leaves(u))], y_spec)

    def cross(u):
        return tree_unflatten([t.detach() for t in grad(grad_y, xs, tree_leaves(u))], x_spec)

    return gx_F, gy_F, hvp, cross


def old_implicit(problem, x, y, *, solve="cg", init=None, **options):
    gx_F, gy_F, hvp, cross = _old_pieces(problem, x, y)
    v, info = get_solver(solve)(hvp, gy_F, init=init, **options)
    b_v = cross(v)
    grad = tree_unflatten([a - b for a, b in zip(tree_leaves(gx_F), tree_leaves(b_v))], tree_flatten(gx_F)[1])
    return grad, v, info


def old_neumann(problem, x, y, *, steps, step_size):
    gx_F, gy_F, hvp, cross = _old_pieces(problem, x, y)
    v, info = neumann_solve(hvp, gy_F, alpha=step_size, maxiter=steps + 1, tol=0.0, warn=False)
    b_v = cross(v)
    grad = tree_unflatten([a - b for a, b in zip(tree_leaves(gx_F), tree_leaves(b_v))], tree_flatten(gx_F)[1])
    return grad, v, info


# --------------------------------------------------------------------------------------
# problems: quadratic, multi-block, and a non-quadratic one with pytree variables
# --------------------------------------------------------------------------------------


def logistic_problem(seed: int) -> tuple[BilevelProblem, dict, dict]:
    """Weighted, per-feature-regularised logistic regression (lower) and a validation
    log-loss (upper); x = {"log_reg": (d,), "w": (n,)}, y = {"coef": (d,), "bias": ()}."""
    g = torch.Generator().manual_seed(seed)
    n, d = 30, 5
    X, Xv = torch.randn(n, d, generator=g), torch.randn(20, d, generator=g)
    truth = torch.randn(d, generator=g)
    lab = (X @ truth + 0.5 * torch.randn(n, generator=g) > 0).double()
    labv = (Xv @ truth > 0).double()

    def lower(x, y):
        z = X @ y["coef"] + y["bias"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, lab, reduction="none")
        return (torch.sigmoid(x["w"]) * loss).mean() + 0.5 * (x["log_reg"].exp() * y["coef"] ** 2).sum()

    def upper(x, y):
        z = Xv @ y["coef"] + y["bias"]
        return torch.nn.functional.binary_cross_entropy_with_logits(z, labv) + 1e-2 * (x["w"] ** 2).mean()

    x = {"log_reg": torch.randn(d, generator=g) - 1.0, "w": torch.randn(n, generator=g)}
    y = {"coef": torch.zeros(d), "bias": torch.zeros(())}
    return BilevelProblem(upper, lower), x, newton(lower, x, y)


def newton(lower, x, y0, iterations: int = 50):
    """``argmin_y lower(x, y)`` by Newton's method with explicit Hessians (to rounding)."""
    y_flat, rav = ravel(y0)

    def f(v):
        return lower(x, rav.unravel(v))

    for _ in range(iterations):
        g = torch.func.grad(f)(y_flat)
        if float(g.norm()) < 1e-15:
            break
        y_flat = y_flat - torch.linalg.solve(torch.func.hessian(f)(y_flat), g)
    return rav.unravel(y_flat)


def quadratic_problem(seed: int):
    q = QuadraticBilevel.random(dim_x=4, dim_y=8, seed=seed, lower_condition=30.0)
    x = torch.randn(4, generator=torch.Generator().manual_seed(seed))
    return q.problem(), x, q.y_star(x)


def multiblock_problem(seed: int):
    multi = MultiBlockQuadratic.random(n_blocks=3, dim_x=3, dim_y=4, seed=seed)
    x = torch.randn(3, generator=torch.Generator().manual_seed(seed))
    return multi.problem(), x, multi.y_star(x)


PROBLEMS = {"quadratic": quadratic_problem, "multiblock": multiblock_problem, "logistic": logistic_problem}


def flat(tree) -> torch.Tensor:
    return ravel(tree)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize(
    "solve, options",
    [
        ("cg", {"tol": 1e-13}),
        ("cg", {"tol": 0.0, "maxiter": 3}),  # a fixed budget, stopped by maxiter
        ("gmres", {"tol": 1e-13}),
        ("dense", {}),
        ("auto", {}),
        ("cg", {"tol": 1e-13, "ridge": 0.5}),
    ],
)
def test_implicit_old_and_new_agree_to_1e_12(name, seed, solve, options) -> None:
    problem, x, y = PROBLEMS[name](seed)
    init = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the fixed budget does not converge
        old_grad, old_v, old_info = old_implicit(problem, x, y, solve=solve, init=init, **options)
        new = hypergrad.implicit(problem, x, y, solve=solve, init=init, **options)
    assert relative_error(flat(new.grad), flat(old_grad)) <= 1e-12
    assert relative_error(flat(new.aux["v"]), flat(old_v)) <= 1e-12
    assert new.linear_solve.iterations == old_info.iterations
    assert new.linear_solve.converged == old_info.converged


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_neumann_old_and_new_agree_to_1e_12(name, seed) -> None:
    problem, x, y = PROBLEMS[name](seed)
    old_grad, old_v, _ = old_neumann(problem, x, y, steps=7, step_size=0.05)
    new = hypergrad.neumann(problem, x, y, steps=7, step_size=0.05)
    assert relative_error(flat(new.grad), flat(old_grad)) <= 1e-12
    assert relative_error(flat(new.aux["v"]), flat(old_v)) <= 1e-12
    assert new.hvp_calls == 8  # 7 products with H (the first term is free) and one with B


def explicit_hypergradient(problem, x, y) -> torch.Tensor:
    """``grad_x F - B^T H^{-1} grad_y F`` from explicit second-derivative matrices."""
    x_flat, rx = ravel(x)
    y_flat, ry = ravel(y)

    def f(xv, yv):
        return problem.lower_value(rx.unravel(xv), ry.unravel(yv))

    def F(xv, yv):
        return problem.upper_value(rx.unravel(xv), ry.unravel(yv))

    H = torch.func.hessian(f, argnums=1)(x_flat, y_flat)
    cross = torch.func.jacrev(torch.func.grad(f, argnums=1), argnums=0)(x_flat, y_flat)  # (ny, nx)
    gx, gy = torch.func.grad(F, argnums=(0, 1))(x_flat, y_flat)
    return gx - cross.T @ torch.linalg.solve(H, gy)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solve", ["cg", "auto", "gmres"])
def test_implicit_matches_explicit_hessians_and_central_differences(seed, solve) -> None:
    problem, x, y = logistic_problem(seed)
    est = hypergrad.implicit(problem, x, y, solve=solve, tol=1e-13)
    exact = explicit_hypergradient(problem, x, y)
    assert relative_error(flat(est.grad), exact) <= 1e-10
    if solve != "auto":
        return  # (the central differences below check the oracle itself, once per seed)
    # central differences of h(x) = F(x, y*(x)), y* re-solved by Newton at each probe
    x_flat, rx = ravel(x)

    def h(xv):
        xt = rx.unravel(xv)
        return float(problem.upper_value(xt, newton(_lower(problem), xt, y)))

    eps = 1e-5
    fd = torch.stack(
        [
            torch.tensor((h(x_flat + eps * e) - h(x_flat - eps * e)) / (2 * eps))
            for e in torch.eye(x_flat.numel())
        ]
    )
    assert relative_error(flat(est.grad), fd) <= 1e-6


def _lower(problem):
    return lambda x, y: problem.lower_value(x, y)


def test_fixed_budget_costs_exactly_its_products() -> None:
    """tol = 0 and maxiter = k: k products with H and one with B; no extra product for the
    residual (the recursive one is reported, and flagged as such)."""
    problem, x, y = quadratic_problem(0)
    with pytest.warns(ConvergenceWarning, match="cg did not converge"):
        est = hypergrad.implicit(problem, x, y, solve="cg", tol=0.0, maxiter=3)
    assert est.hvp_calls == 4
    assert est.linear_solve.residual_source == "recursive"
    # the reported (recursive) residual is the true one to rounding
    _, gy_F, hvp, _ = _old_pieces(problem, x, y)
    true = float((flat(gy_F) - flat(hvp(est.aux["v"]))).norm())
    assert est.linear_solve.residual_norm == pytest.approx(true, rel=1e-10)
    converged = hypergrad.implicit(problem, x, y, solve="cg", tol=1e-12)
    assert converged.linear_solve.residual_source == "true"
    # iterations + the true-residual confirmation + B
    assert converged.hvp_calls == converged.linear_solve.iterations + 2


@pytest.mark.parametrize("seed", [0, 1])
def test_root_vjp_eager_path_matches_torch_func_path(seed) -> None:
    """root_vjp takes the autograd linearisation when nothing differentiates its result and
    torch.func otherwise (e.g. create_graph): both agree to 1e-12."""
    problem, x, y = logistic_problem(seed)

    def optimality(y_, x_):
        return torch.func.grad(lambda yy: problem.lower_value(x_, yy))(y_)

    g = torch.Generator().manual_seed(seed + 7)
    cot = {k: torch.randn(v.shape, generator=g) for k, v in y.items()}
    solve = functools.partial(get_solver("cg"), tol=1e-14)
    (eager,) = root_vjp(optimality, y, (x,), cot, solve)
    x_req = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    with torch.enable_grad():
        (traced,) = root_vjp(optimality, y, (x_req,), cot, solve)
    assert traced["w"].requires_grad  # the torch.func path, differentiable again
    assert relative_error(flat(eager), flat({k: v.detach() for k, v in traced.items()})) <= 1e-12
