"""Oracle tests of bilevel.implicit on ridge regression (closed form) and pytrees."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp

import bilevel
from bilevel.errors import ClosureError
from bilevel.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp
from tests.conftest import relative_error

N_SAMPLES, N_FEATURES = 40, 6


def ridge_objective(w, lam, X, y):
    return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w**2).sum()


def ridge_closed_form(lam, X, y):
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype)
    return torch.linalg.solve(A, X.T @ y)


def ridge_gradient_descent(init, lam, X, y):
    """A genuinely iterative inner solver (so nothing but the IFT provides derivatives)."""
    lipschitz = torch.linalg.matrix_norm(X, ord=2) ** 2 + lam
    w = init
    for _ in range(5000):
        g = grad(ridge_objective)(w, lam, X, y)
        if torch.linalg.vector_norm(g) < 1e-13:
            break
        w = w - g / lipschitz
    return w


@pytest.fixture
def data():
    X = torch.randn(N_SAMPLES, N_FEATURES)
    y = X @ torch.randn(N_FEATURES) + 0.1 * torch.randn(N_SAMPLES)
    return X, y


@pytest.fixture(params=["cg", "gmres", "bicgstab", "normal_cg", "dense"])
def ridge_solver(request):
    solve = functools.partial(bilevel.linalg.get_solver(request.param), tol=1e-12)
    return custom_root(grad(ridge_objective), solve=solve)(ridge_gradient_descent)


def test_ridge_hypergradient_reverse_and_forward_match_closed_form(data, ridge_solver):
    X, y = data
    lam = torch.tensor(3.0)
    init = torch.zeros(N_FEATURES)
    # Closed form: dw/dlam = -(X^T X + lam I)^{-1} w*
    w_star = ridge_closed_form(lam, X, y)
    exact = -torch.linalg.solve(X.T @ X + lam * torch.eye(N_FEATURES), w_star)
    # reverse mode through loss.backward()
    lam_leaf = lam.clone().requires_grad_(True)
    v = torch.randn(N_FEATURES)
    (ridge_solver(init, lam_leaf, X, y) @ v).backward()
    assert relative_error(lam_leaf.grad, exact @ v) <= 1e-8
    # reverse mode through torch.func
    assert relative_error(jacrev(ridge_solver, argnums=1)(init, lam, X, y), exact) <= 1e-8
    # forward mode
    _, tangent = jvp(lambda lam_: ridge_solver(init, lam_, X, y), (lam,), (torch.tensor(1.0),))
    assert relative_error(tangent, exact) <= 1e-8


def test_ridge_jacobian_wrt_training_data(data):
    X, y = data
    lam = torch.tensor(0.7)
    solver = custom_root(grad(ridge_objective), solve="cg")(ridge_gradient_descent)
    init = torch.zeros(N_FEATURES)
    jac_X = jacrev(solver, argnums=2)(init, lam, X, y)
    jac_y = jacfwd(solver, argnums=3)(init, lam, X, y)
    assert relative_error(jac_X, jacrev(ridge_closed_form, argnums=1)(lam, X, y)) <= 1e-8
    assert relative_error(jac_y, jacrev(ridge_closed_form, argnums=2)(lam, X, y)) <= 1e-8


def test_forward_reverse_adjoint_identity(data):
    """<J u, v> = <u, J^T v> with J = d w* / d X."""
    X, y = data
    lam = torch.tensor(1.5)
    init = torch.zeros(N_FEATURES)
    solver = custom_root(grad(ridge_objective), solve="gmres")(ridge_gradient_descent)
    u = torch.randn_like(X)
    v = torch.randn(N_FEATURES)
    f = lambda X_: solver(init, lam, X_, y)
    _, Ju = jvp(f, (X,), (u,))
    _, vjp_fn = vjp(f, X)
    (JTv,) = vjp_fn(v)
    lhs, rhs = torch.dot(Ju, v), torch.sum(u * JTv)
    assert abs(float(lhs - rhs)) <= 1e-10 * max(1.0, abs(float(lhs)))


def test_vmap_equals_python_loop(data):
    X, y = data
    init = torch.zeros(N_FEATURES)
    solver = custom_root(grad(ridge_objective), solve="cg")(ridge_gradient_descent)
    lams = torch.tensor([0.1, 1.0, 10.0])

    def val_loss(lam):
        return ((X @ solver(init, lam, X, y) - y) ** 2).mean()

    batched_sol = torch.vmap(solver, in_dims=(None, 0, None, None))(init, lams, X, y)
    looped_sol = torch.stack([solver(init, lam, X, y) for lam in lams])
    torch.testing.assert_close(batched_sol, looped_sol, rtol=1e-12, atol=1e-12)
    batched_grad = torch.vmap(grad(val_loss))(lams)
    looped_grad = torch.stack([grad(val_loss)(lam) for lam in lams])
    torch.testing.assert_close(batched_grad, looped_grad, rtol=1e-12, atol=1e-14)
    closed = torch.stack(
        [
            grad(lambda lam_: ((X @ ridge_closed_form(lam_, X, y) - y) ** 2).mean())(lam)
            for lam in lams
        ]
    )
    assert relative_error(batched_grad, closed) <= 1e-8
    # batches of whole problems (different data sets)
    Xs = torch.randn(4, N_SAMPLES, N_FEATURES)
    batched = torch.vmap(solver, in_dims=(None, None, 0, None))(init, lams[1], Xs, y)
    torch.testing.assert_close(
        batched, torch.stack([ridge_closed_form(lams[1], Xi, y) for Xi in Xs])
    )


def test_pytree_parameters_with_functional_call():
    """Inner variable = parameter dict of an nn.Module; hyperparameter = per-tensor weight decay."""
    model = torch.nn.Linear(5, 3)
    X, Y = torch.randn(30, 5), torch.randn(30, 3)

    def objective(params, decay, X, Y):
        pred = functional_call(model, params, (X,))
        reg = (
            decay["weight"] * (params["weight"] ** 2).sum()
            + decay["bias"] * (params["bias"] ** 2).sum()
        )
        return 0.5 * ((pred - Y) ** 2).sum() + 0.5 * reg

    def solver(init, decay, X, Y):
        Xa = torch.cat([X, torch.ones(X.shape[0], 1)], dim=1)
        reg = torch.diag(torch.cat([decay["weight"].expand(5), decay["bias"].reshape(1)]))
        W = torch.linalg.solve(Xa.T @ Xa + reg, Xa.T @ Y)
        return {"weight": W[:5].T.contiguous(), "bias": W[5].contiguous()}

    implicit = custom_root(grad(objective), solve="cg")(solver)
    init = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    decay = {"weight": torch.tensor(0.3), "bias": torch.tensor(2.0)}

    def outer(decay, solve_fn):
        params = solve_fn(init, decay, X, Y)
        return sum((p**2).sum() for p in params.values())

    g_implicit = grad(outer)(decay, implicit)
    g_exact = grad(outer)(decay, solver)  # autograd through the direct solve
    for key in decay:
        assert relative_error(g_implicit[key], g_exact[key]) <= 1e-8


def test_custom_fixed_point_and_has_aux(data):
    X, y = data
    lam = torch.tensor(2.0)
    step = 1.0 / float(torch.linalg.matrix_norm(X, ord=2) ** 2 + 2.0)

    def T(w, lam, X, y):
        return w - step * grad(ridge_objective)(w, lam, X, y)

    @custom_fixed_point(T, has_aux=True)
    def solver(init, lam, X, y):
        w = ridge_gradient_descent(init, lam, X, y)
        return w, {"iterations": 5000, "final": w.sum()}

    _w, aux = solver(torch.zeros(N_FEATURES), lam, X, y)
    assert aux["iterations"] == 5000 and aux["final"].requires_grad is False
    jac = jacrev(lambda lam_: solver(torch.zeros(N_FEATURES), lam_, X, y)[0])(lam)
    exact = jacrev(ridge_closed_form)(lam, X, y)
    assert relative_error(jac, exact) <= 1e-8


def test_root_vjp_and_root_jvp_functional_api(data):
    X, y = data
    lam = torch.tensor(0.5)
    w = ridge_closed_form(lam, X, y)
    F = grad(ridge_objective)
    v = torch.randn(N_FEATURES)
    g_lam, g_X, g_y = root_vjp(F, w, (lam, X, y), v, solve="cg")
    _, vjp_fn = vjp(ridge_closed_form, lam, X, y)
    for mine, ref in zip((g_lam, g_X, g_y), vjp_fn(v)):
        assert relative_error(mine, ref) <= 1e-8
    t = (torch.tensor(1.0), torch.zeros_like(X), torch.zeros_like(y))
    assert (
        relative_error(
            root_jvp(F, w, (lam, X, y), t, solve="dense"), jacrev(ridge_closed_form)(lam, X, y)
        )
        <= 1e-8
    )


def test_closed_over_tensor_that_requires_grad_is_refused(data):
    X, y = data
    lam = torch.tensor(1.0, requires_grad=True)

    def optimality(w, X, y):
        return grad(ridge_objective)(w, lam, X, y)  # lam is closed over

    @custom_root(optimality)
    def solver(init, X, y):
        return ridge_closed_form(lam.detach(), X, y)

    with pytest.raises(ClosureError, match="closed over"):
        solver(torch.zeros(N_FEATURES), X, y)
    # the same inside torch.func.grad, where the closed-over tensor is the one differentiated
    with pytest.raises(ClosureError):
        grad(
            lambda l: custom_root(lambda w, X, y: grad(ridge_objective)(w, l, X, y))(
                lambda init, X, y: ridge_closed_form(l, X, y)
            )(torch.zeros(N_FEATURES), X, y).sum()
        )(torch.tensor(1.0))
    # explicitly detached closures are fine, and the check can be disabled
    custom_root(optimality, check_closure=False)(solver.__wrapped__)(torch.zeros(N_FEATURES), X, y)


def test_optimality_output_structure_mismatch_names_both(data):
    X, y = data

    def bad_optimality(w, lam, X, y):
        return grad(ridge_objective)(w, lam, X, y)[:-1]

    solver = custom_root(bad_optimality)(ridge_gradient_descent)
    with pytest.raises(ValueError, match=r"Tensor\(5,\).*Tensor\(6,\)"):
        solver(torch.zeros(N_FEATURES), torch.tensor(1.0), X, y)

    def dict_optimality(w, lam, X, y):
        return {"w": grad(ridge_objective)(w, lam, X, y)}

    with pytest.raises(ValueError, match="same pytree structure"):
        custom_root(dict_optimality)(ridge_gradient_descent)(
            torch.zeros(N_FEATURES), torch.tensor(1.0), X, y
        )


def test_nan_inf_and_non_tensor_inputs_are_refused(data):
    X, y = data
    solver = custom_root(grad(ridge_objective))(ridge_gradient_descent)
    bad_X = X.clone()
    bad_X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="argument 2.*NaN"):
        solver(torch.zeros(N_FEATURES), torch.tensor(1.0), bad_X, y)
    with pytest.raises(ValueError, match="init.*infinite"):
        solver(torch.full((N_FEATURES,), float("inf")), torch.tensor(1.0), X, y)
    with pytest.raises(TypeError, match="argument 1.*float.*not a torch.Tensor"):
        solver(torch.zeros(N_FEATURES), 1.0, X, y)


def test_keyword_arguments_are_bound_positionally(data):
    X, y = data
    solver = custom_root(grad(ridge_objective), solve="cg")(ridge_gradient_descent)
    lam = torch.tensor(2.0)
    by_kw = jacrev(lambda l: solver(torch.zeros(N_FEATURES), X=X, y=y, lam=l))(lam)
    assert relative_error(by_kw, jacrev(ridge_closed_form)(lam, X, y)) <= 1e-8


def test_nonconvergent_linear_solve_warns_with_residual(data):
    X, y = data
    solve = functools.partial(bilevel.linalg.cg, maxiter=1, tol=1e-14)
    solver = custom_root(grad(ridge_objective), solve=solve)(ridge_gradient_descent)
    lam = torch.tensor(1.0, requires_grad=True)
    with pytest.warns(bilevel.errors.ConvergenceWarning, match="residual norm"):
        solver(torch.zeros(N_FEATURES), lam, X, y).sum().backward()


def test_scalar_solution_gets_nonzero_gradient():
    """0-d solution: sqrt(theta) as the root of x^2 - theta (TorchOpt returns zeros here)."""

    @custom_root(lambda x, theta: x**2 - theta, solve="cg")
    def sqrt_solver(init, theta):
        x = init
        for _ in range(100):
            x = 0.5 * (x + theta / x)
        return x

    theta = torch.tensor(4.0)
    deriv, value = torch.func.grad_and_value(sqrt_solver, argnums=1)(torch.tensor(1.0), theta)
    # dx/dtheta = 1 / (2 sqrt(theta)) = 0.25 (closed form)
    assert abs(float(value) - 2.0) < 1e-14 and abs(float(deriv) - 0.25) < 1e-12


def test_aux_under_vmap_becomes_a_list_per_batch_element(data):
    X, y = data

    @custom_root(grad(ridge_objective), solve="cg", has_aux=True)
    def solver(init, lam, X, y):
        return ridge_closed_form(lam, X, y), {"lam": float(lam), "norm": lam * 2}

    lams = torch.tensor([0.5, 2.0])
    captured = {}

    def solve(lam):
        w, aux = solver(torch.zeros(N_FEATURES), lam, X, y)
        captured.update(aux)
        return w

    torch.vmap(solve)(lams)
    assert captured["lam"] == [0.5, 2.0]
    _, aux = solver(torch.zeros(N_FEATURES), lams[0], X, y)
    assert aux["lam"] == 0.5 and float(aux["norm"]) == 1.0


def test_integer_arguments_are_held_fixed():
    """Index tensors are valid arguments; they get no gradient, the float ones do."""

    @custom_root(lambda x, theta, idx: x - theta[idx] ** 2, solve="cg")
    def solver(init, theta, idx):
        return theta[idx].clone() ** 2

    theta = torch.tensor([1.0, 2.0, 3.0])
    idx = torch.tensor([0, 2])
    jac = jacrev(solver, argnums=1)(torch.zeros(2), theta, idx)
    torch.testing.assert_close(jac, torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 6.0]]))
    _, tangent = jvp(lambda t: solver(torch.zeros(2), t, idx), (theta,), (torch.ones(3),))
    torch.testing.assert_close(tangent, torch.tensor([2.0, 6.0]))
    theta_leaf = theta.clone().requires_grad_(True)
    solver(torch.zeros(2), theta_leaf, idx).sum().backward()
    torch.testing.assert_close(theta_leaf.grad, torch.tensor([2.0, 0.0, 6.0]))


def test_closed_over_forward_mode_dual_is_refused():
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        w = fwAD.make_dual(torch.ones(2), torch.ones(2))

        @custom_root(lambda x, a: x - a * w)
        def solver(init, a):
            return a * fwAD.unpack_dual(w).primal

        with pytest.raises(ClosureError, match="forward-mode tangent"):
            solver(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("solve", ["cg", "gmres", "dense", "auto"])
def test_second_order_through_custom_root_matches_closed_form(data, solve):
    """torch.func.hessian through the decorated solver (reverse over reverse and forward over
    reverse) against the Hessian of the closed-form ridge solution."""
    X, y = data
    tight = functools.partial(bilevel.linalg.get_solver(solve), tol=1e-13)
    solver = custom_root(grad(ridge_objective), solve=tight)(ridge_gradient_descent)
    v = torch.randn(N_FEATURES)
    lam = torch.tensor(1.3)
    exact = torch.func.hessian(lambda l: ridge_closed_form(l, X, y) @ v)(lam)
    implicit = lambda l: solver(torch.zeros(N_FEATURES), l, X, y) @ v  # noqa: E731
    assert relative_error(torch.func.hessian(implicit)(lam), exact) <= 1e-8
    assert relative_error(jacrev(jacrev(implicit))(lam), exact) <= 1e-8
    lam_leaf = lam.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(implicit(lam_leaf), lam_leaf, create_graph=True)
    (h,) = torch.autograd.grad(g, lam_leaf)
    assert relative_error(h, exact) <= 1e-8
