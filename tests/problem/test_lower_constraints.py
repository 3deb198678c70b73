"""LowerConstraints (bilevel.problem): the row order against hand-written rows, Jacobians
against hand-derived ones, multipliers against cvxpy's duals and the closed form for
bounds, the KKT residual against its formula; the layering of methods/constrained/solve."""

from __future__ import annotations

import ast
import math
import pathlib

import numpy as np
import pytest
import torch

import bilevel
from bilevel.problem import LowerConstraints

D = torch.float64
INF = math.inf


def _coupled():
    """A (2, 2) matrix y, g nonlinear and coupled, one equality, partly infinite bounds."""
    lo = torch.tensor([[-0.5, -INF], [0.0, -INF]], dtype=D)
    hi = torch.tensor([[0.3, 1.0], [INF, INF]], dtype=D)
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: (y**2).sum(),
        lower=lambda x, y: 0.5 * ((y - x[0]) ** 2).sum() + 0.25 * (y**4).sum(),
        lower_ineq=lambda x, y: torch.stack([(y**2).sum() - 2.0, y[0, 0] + y[0, 1] * x[0] - 1.0]),
        lower_eq=lambda x, y: (y.sum() - x[1]).reshape(1),
        y_bounds=(lo, hi),
    )
    return problem


def test_rows_follow_the_documented_order_and_jacobians_match_hand_derived_ones():
    problem = _coupled()
    x = torch.tensor([0.7, -0.2], dtype=D)
    y = torch.tensor([[0.3, 0.9], [0.1, -0.4]], dtype=D)
    rows = LowerConstraints(problem, x, y)
    assert (rows.n_g, rows.n_ineq, rows.n_eq) == (2, 6, 1)
    assert rows.upper_index.tolist() == [0, 1] and rows.lower_index.tolist() == [0, 2]
    yf = y.flatten()
    g = [float((y**2).sum() - 2.0), float(y[0, 0] + y[0, 1] * x[0] - 1.0)]
    # g, then finite upper bounds y_i - u_i, then finite lower bounds l_i - y_i
    expected = g + [float(yf[0] - 0.3), float(yf[1] - 1.0), float(-0.5 - yf[0]), float(-yf[2])]
    c, h = rows.values()
    np.testing.assert_allclose(c.numpy(), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(h.numpy(), [float(y.sum() - x[1])], rtol=0, atol=1e-15)
    J_c, J_h = rows.jacobians()
    J_expected = np.array(
        [
            2 * yf.numpy(),
            [1.0, float(x[0]), 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )
    np.testing.assert_allclose(J_c.numpy(), J_expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(J_h.numpy(), np.ones((1, 4)), rtol=0, atol=1e-15)
    # the row functions accept flat y and keep their size fixed
    torch.testing.assert_close(rows.ineq(x, yf), c)
    bad = bilevel.BilevelProblem(
        upper=problem.upper,
        lower=problem.lower,
        lower_ineq=lambda x, y: y.flatten()[: 1 + int(y.flatten()[0] > 0)],
    )
    rows = LowerConstraints(bad, x, y)
    with pytest.raises(ValueError, match="number of constraints must not change"):
        rows.ineq(x, -y)


def _kkt_qp(seed: int):
    """min_y 1/2 y^T Q y + q^T y s.t. G y <= b, A y = e, l <= y <= u, built around a chosen
    KKT point with strictly complementary multipliers (returned for comparison)."""
    rng = np.random.default_rng(seed)
    n, m = 5, 3
    M = rng.normal(size=(n, n))
    Q = M @ M.T + np.eye(n)
    G, A = rng.normal(size=(m, n)), rng.normal(size=(1, n))
    y = rng.normal(size=n)
    lo = np.full(n, -INF)
    hi = np.full(n, INF)
    hi[1], lo[3] = y[1], y[3]  # an active upper bound (row 1) and lower bound (row 3)
    lo[0], hi[4] = y[0] - 1.0, y[4] + 2.0  # inactive bounds
    mu_g = np.array([rng.uniform(0.5, 2.0), 0.0, rng.uniform(0.5, 2.0)])
    b = G @ y + np.array([0.0, 0.7, 0.0])
    mu_up, mu_lo, nu = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.normal(size=1)
    e_up, e_lo = np.eye(n)[1], np.eye(n)[3]
    q = -(Q @ y + G.T @ mu_g + mu_up * e_up - mu_lo * e_lo + A.T @ nu)
    e = A @ y
    arrays = {"Q": Q, "G": G, "A": A, "q": q, "b": b, "e": e}
    t = {k: torch.as_tensor(v, dtype=D) for k, v in arrays.items()}
    problem = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lambda x, y: 0.5 * y @ t["Q"] @ y + (t["q"] + x) @ y,
        lower_ineq=lambda x, y: t["G"] @ y - t["b"],
        lower_eq=lambda x, y: t["A"] @ y - t["e"],
        y_bounds=(torch.as_tensor(lo), torch.as_tensor(hi)),
    )
    return problem, Q, q, G, b, A, lo, hi, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multipliers_match_cvxpy_duals_at_a_kkt_point(seed):
    cp = pytest.importorskip("cvxpy")
    problem, Q, q, G, b, A, lo, hi, y_star = _kkt_qp(seed)
    n = y_star.size
    y = cp.Variable(n)
    up, down = np.isfinite(hi), np.isfinite(lo)
    cons = [G @ y <= b, y[up] <= hi[up], y[down] >= lo[down], A @ y == A @ y_star]
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(y, Q) + q @ y), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13
    )
    x = torch.zeros(n, dtype=D)
    rows = LowerConstraints(problem, x, torch.as_tensor(y.value))
    duals = np.concatenate([cons[0].dual_value, cons[1].dual_value, cons[2].dual_value])
    for active_tol in (math.inf, 1e-7):
        mu, nu = rows.multipliers(active_tol)
        np.testing.assert_allclose(mu.numpy(), duals, atol=1e-7)
        np.testing.assert_allclose(nu.numpy(), cons[3].dual_value, atol=1e-7)
    assert rows.kkt_residual() < 1e-7
    assert rows.kkt_residual(*rows.multipliers(), ord=math.inf) < 1e-7


def test_kkt_residual_at_given_multipliers_is_the_formula():
    problem = _coupled()
    x = torch.tensor([0.7, -0.2], dtype=D)
    y = torch.tensor([[-0.6, 0.2], [0.5, 1.3]], dtype=D)
    rows = LowerConstraints(problem, x, y)
    mu = torch.tensor([0.3, -0.1, 0.0, 2.0, 0.5, 0.7], dtype=D)
    nu = torch.tensor([0.4], dtype=D)
    grad = ((y - x[0]) + y**3).flatten()
    c, h = rows.values()
    J_c, J_h = rows.jacobians()
    vector = torch.cat(
        [grad + J_c.T @ mu + J_h.T @ nu, mu * c, c.clamp(min=0), h, (-mu).clamp(min=0)]
    )
    for order in (2, math.inf):
        expected = float(torch.linalg.vector_norm(vector, ord=order))
        assert rows.kkt_residual(mu, nu, ord=order) == pytest.approx(expected, rel=1e-14)


def test_bounds_only_multipliers_in_closed_form_equal_least_squares():
    """The separable closed form against the general least squares (forced by a constant,
    inactive inequality), inside, on and outside a box with infinite sides."""
    lo = torch.tensor([-0.5, -INF, 0.0, -1.0, 0.2], dtype=D)
    hi = torch.tensor([0.5, 1.0, INF, 1.0, 0.2], dtype=D)

    def lower(x, y):
        return 0.5 * ((y - x) ** 2).sum() + 0.1 * (y**4).sum()

    boxed = bilevel.BilevelProblem(upper=lambda x, y: y.sum(), lower=lower, y_bounds=(lo, hi))
    forced = bilevel.BilevelProblem(
        upper=lambda x, y: y.sum(),
        lower=lower,
        y_bounds=(lo, hi),
        lower_ineq=lambda x, y: y.sum().reshape(1) * 0.0 - 1.0,
    )
    rng = np.random.default_rng(3)
    for _ in range(4):
        x, y = (torch.tensor(rng.normal(size=5) * 2) for _ in range(2))
        y[0] = 0.5
        closed = LowerConstraints(boxed, x, y)
        general = LowerConstraints(forced, x, y)
        mu_closed, _ = closed.multipliers()
        mu_general, _ = general.multipliers()
        torch.testing.assert_close(mu_closed, mu_general[1:], rtol=1e-8, atol=1e-10)
        assert float(mu_general[0]) == pytest.approx(0.0, abs=1e-10)
        assert closed.kkt_residual() == pytest.approx(general.kkt_residual(), rel=1e-9)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_layers_methods_below_constrained_below_solve():
    """bilevel.methods never imports bilevel.constrained (nor, at import time, the top
    floor bilevel._solve); bilevel.constrained uses only the public bilevel.methods; the
    registry lives on the top floor and nothing registers itself."""
    root = pathlib.Path(bilevel.__file__).parent
    for path in (root / "methods").glob("*.py"):
        imports = _imports(path)
        assert not any(name.startswith("bilevel.constrained") for name in imports), path
        if path.name != "__init__.py":  # __init__ forwards bilevel.methods.solve lazily
            assert "bilevel._solve" not in imports, path
    for path in (root / "constrained").glob("*.py"):
        private = {n for n in _imports(path) if n.startswith("bilevel.methods._")}
        assert not private, (path, private)
    assert {"lv-hba", "classical"} <= set(bilevel.METHODS)
    assert bilevel.METHODS["lv-hba"] is bilevel.constrained.LVHBA
    assert bilevel.methods.METHODS is bilevel.METHODS
