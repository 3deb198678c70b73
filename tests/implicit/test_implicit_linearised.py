"""bilevel.implicit.Linearisation / solve_adjoint against closed forms (float64)."""

from __future__ import annotations

import pytest
import torch

from bilevel.implicit import Linearisation, solve_adjoint


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solve", ["auto", "cg", "gmres", "normal_cg"])
def test_quadratic_root_vjp_with_pytrees_and_an_integer_leaf(seed, solve) -> None:
    """y*(x) = A^{-1} (J x_a + c[idx]) for f(y, x) = 1/2 y^T A y - y^T (J x_a + c[idx]):
    the VJP with v is (J^T A^{-1} v, e_idx-scatter of A^{-1} v) and idx (integer) gets None."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(5, 5, generator=g)
    A = M @ M.T + 5 * torch.eye(5)
    J = torch.randn(5, 3, generator=g)
    idx = torch.tensor([4, 0, 2, 1, 3])

    def f(y, x):
        return 0.5 * y["a"] @ A @ y["a"] - y["a"] @ (J @ x["xa"] + x["c"][x["idx"]])

    x = {"xa": torch.randn(3, generator=g), "c": torch.randn(5, generator=g), "idx": idx}
    y = {"a": torch.linalg.solve(A, J @ x["xa"] + x["c"][idx])}
    v = {"a": torch.randn(5, generator=g)}
    u_exact = torch.linalg.solve(A, v["a"])
    for lin in (
        Linearisation.of_objective(f, y, (x,)),
        Linearisation.of_root(lambda y_, x_: {"a": A @ y_["a"] - J @ x_["xa"] - x_["c"][x_["idx"]]}, y, (x,)),
    ):
        assert float(lin.optimality["a"].abs().max()) < 1e-12
        adj = solve_adjoint(lin, v, solve, tol=1e-13)
        (grad,) = adj.vjp
        torch.testing.assert_close(adj.u["a"], u_exact, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grad["xa"], J.T @ u_exact, rtol=1e-9, atol=1e-12)
        expected_c = torch.zeros(5).index_add_(0, idx, u_exact)
        torch.testing.assert_close(grad["c"], expected_c, rtol=1e-9, atol=1e-12)
        assert grad["idx"] is None
        assert not grad["xa"].requires_grad and not adj.u["a"].requires_grad


def test_leaf_mask_skips_arguments() -> None:
    A = torch.diag(torch.tensor([1.0, 2.0]))

    def f(y, a, b):
        return 0.5 * y @ A @ y - y @ (a + 2 * b)

    lin = Linearisation.of_objective(f, torch.zeros(2), (torch.ones(2), torch.ones(2)), leaf_mask=[False, True])
    adj = solve_adjoint(lin, torch.ones(2), "cg")
    assert adj.vjp[0] is None
    torch.testing.assert_close(adj.vjp[1], 2 * torch.tensor([1.0, 0.5]))
    assert lin.calls == adj.info.iterations + 2  # products of CG (+ its true-residual check) and B
