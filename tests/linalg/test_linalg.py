"""Property tests of bilevel.linalg: residual reaches tol, or non-convergence is reported."""

from __future__ import annotations

import warnings

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import bilevel.linalg as la
from bilevel.errors import ConvergenceWarning

SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
GENERAL = ["gmres", "bicgstab", "normal_cg", "dense", "auto"]


def spd_matrix(n: int, seed: int, cond: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eigs = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return q @ torch.diag(eigs) @ q.T


def nonsymmetric_matrix(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=torch.float64) * (n**0.5 + 1) + torch.randn(
        n, n, generator=gen, dtype=torch.float64
    )


def true_residual(A: torch.Tensor, x: torch.Tensor, b: torch.Tensor, ridge: float = 0.0) -> float:
    return float(torch.linalg.vector_norm(b - A @ x - ridge * x))


def solve_and_check(name, A, b, tol, **kwargs):
    """The property: converged => true residual <= threshold; not converged => warned."""
    solver = la.get_solver(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        x, info = solver(lambda v: A @ v, b, tol=tol, **kwargs)
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    ridge = kwargs.get("ridge", 0.0)
    if name == "normal_cg":
        residual = float(torch.linalg.vector_norm(A.T @ b - A.T @ (A @ x) - ridge * x))
        threshold = tol * float(torch.linalg.vector_norm(A.T @ b))
    else:
        residual = true_residual(A, x, b, ridge)
        threshold = tol * float(torch.linalg.vector_norm(b))
    assert info.solver == name or info.solver.startswith(name + ":")
    assert abs(info.residual_norm - residual) <= 1e-8 * max(1.0, residual) + 1e-12
    if info.converged:
        assert residual <= threshold * (1 + 1e-6) + 1e-300
        assert not warned
    else:
        assert warned, "non-convergence must be reported by a ConvergenceWarning"
    return x, info


@SETTINGS
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    cond=st.sampled_from([1.0, 10.0, 1e3]),
    name=st.sampled_from(["cg", *GENERAL]),
)
def test_spd_systems(n, seed, cond, name):
    A = spd_matrix(n, seed, cond)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    x, info = solve_and_check(name, A, b, tol=1e-10)
    if name != "normal_cg" or cond <= 10:
        assert info.converged
        torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-6 * cond, atol=1e-8 * cond)


@SETTINGS
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), name=st.sampled_from(GENERAL))
def test_nonsymmetric_systems(n, seed, name):
    A = nonsymmetric_matrix(n, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    x, info = solve_and_check(name, A, b, tol=1e-10)
    if info.converged:
        torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-6, atol=1e-7)


@SETTINGS
@given(
    n=st.integers(2, 30),
    seed=st.integers(0, 10_000),
    maxiter=st.integers(1, 3),
    name=st.sampled_from(["cg", "gmres", "bicgstab", "normal_cg", "neumann"]),
)
def test_small_budgets_report_nonconvergence(n, seed, maxiter, name):
    A = spd_matrix(n, seed, 1e4)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    kwargs = {"alpha": 1e-4} if name == "neumann" else {}
    _, info = solve_and_check(name, A, b, tol=1e-12, maxiter=maxiter, **kwargs)
    assert info.iterations <= maxiter * (2 if name == "gmres" else 1)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 20))
def test_neumann_series_converges_for_small_step(seed, n):
    A = spd_matrix(n, seed, 10.0)  # eigenvalues in [1, 10]
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, info = solve_and_check("neumann", A, b, tol=1e-10, alpha=0.15, maxiter=2000)
    assert info.converged


def test_neumann_is_the_truncated_series():
    """K Richardson steps from zero equal alpha * sum_{k<K} (I - alpha A)^k b."""
    A = spd_matrix(5, 0, 4.0)
    b = torch.randn(5)
    alpha, K = 0.2, 7
    series = (
        sum(torch.linalg.matrix_power(torch.eye(5) - alpha * A, k) @ b for k in range(K)) * alpha
    )
    with pytest.warns(ConvergenceWarning):
        x, _info = la.neumann(lambda v: A @ v, b, alpha=alpha, maxiter=K)
    torch.testing.assert_close(x, series, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "name", ["cg", "gmres", "bicgstab", "normal_cg", "neumann", "dense", "auto"]
)
def test_zero_dimensional_system_gets_real_iterations(name):
    """TorchOpt's maxiter for 0-d tensors is 0 (silently zero gradients); ours is >= 50."""
    a, b = torch.tensor(4.0), torch.tensor(2.0)
    kwargs = {"alpha": 0.2} if name == "neumann" else {}
    x, info = la.get_solver(name)(lambda v: a * v, b, **kwargs)
    assert x.shape == () and info.converged
    assert abs(float(x) - 0.5) <= 1e-10


@pytest.mark.parametrize("name", ["cg", "gmres", "bicgstab", "normal_cg", "dense", "neumann"])
def test_pytree_systems_ridge_warm_start_and_preconditioner(name):
    A1, A2 = spd_matrix(4, 1, 5.0), spd_matrix(3, 2, 5.0)
    b = {"a": torch.randn(4), "b": (torch.randn(3),)}
    ridge = 0.5

    def matvec(v):
        return {"a": A1 @ v["a"], "b": (A2 @ v["b"][0],)}

    diag = {"a": 1.0 / (torch.diagonal(A1) + ridge), "b": (1.0 / (torch.diagonal(A2) + ridge),)}

    def precond(v):
        return {"a": diag["a"] * v["a"], "b": (diag["b"][0] * v["b"][0],)}

    exact_a = torch.linalg.solve(A1 + ridge * torch.eye(4), b["a"])
    exact_b = torch.linalg.solve(A2 + ridge * torch.eye(3), b["b"][0])
    init = {"a": exact_a + 1e-3, "b": (exact_b - 1e-3,)}
    kwargs = {"alpha": 0.2, "maxiter": 5000} if name == "neumann" else {}
    x, info = la.get_solver(name)(
        matvec, b, init=init, ridge=ridge, preconditioner=precond, tol=1e-11, **kwargs
    )
    assert info.converged
    torch.testing.assert_close(x["a"], exact_a, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(x["b"][0], exact_b, rtol=1e-8, atol=1e-9)
    # a warm start at the solution needs no iteration at all
    exact = {"a": exact_a, "b": (exact_b,)}
    warm = la.get_solver(name)(matvec, b, init=exact, ridge=ridge, tol=1e-11, **kwargs)[1]
    assert warm.converged
    if name != "dense":
        assert warm.iterations == 0


def test_cg_reports_indefinite_operator():
    A = torch.diag(torch.tensor([1.0, -1.0, 2.0]))
    with pytest.warns(ConvergenceWarning, match="not positive definite"):
        _, info = la.cg(lambda v: A @ v, torch.ones(3))
    assert not info.converged


def test_dense_singular_matrix_raises_clear_error():
    A = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        la.dense(lambda v: A @ v, torch.ones(2))


def test_bad_inputs():
    with pytest.raises(TypeError, match="matvec must be callable"):
        la.cg("not a function", torch.ones(2))
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        la.gmres(lambda v: v, [torch.ones(2), 3.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        la.bicgstab(lambda v: v, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="maxiter"):
        la.cg(lambda v: v, torch.ones(2), maxiter=0)
    with pytest.raises(ValueError, match="unknown linear solver"):
        la.get_solver("lu")


def test_float32_default_tolerance_is_attainable():
    A = spd_matrix(30, 3, 100.0).float()
    b = torch.randn(30, dtype=torch.float32)
    _x, info = la.cg(lambda v: A @ v, b)
    assert info.converged and info.threshold == pytest.approx(1e-5 * float(b.norm()), rel=1e-6)


@SETTINGS
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    symmetric=st.booleans(),
    dense_max=st.sampled_from([0, 256]),
)
def test_auto_both_branches(n, seed, symmetric, dense_max):
    """auto's dense and Krylov branches: the residual property, and the branch it reports
    matches the structure of A (Cholesky/CG for SPD, LU/GMRES otherwise)."""
    A = spd_matrix(n, seed, 100.0) if symmetric else nonsymmetric_matrix(n, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    x, info = solve_and_check("auto", A, b, tol=1e-10, dense_max=dense_max)
    assert info.converged
    expected = {(True, True): "cholesky", (True, False): "cg", (False, True): "lu"}
    if n > 1 and (symmetric, dense_max > 0) in expected:
        assert info.solver == "auto:" + expected[(symmetric, dense_max > 0)]
    elif n > 1:
        assert info.solver == "auto:gmres"
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-6, atol=1e-7)
