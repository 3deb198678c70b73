"""Tests for :mod:`bilevel.operators` (projections and proximal operators).

Oracles are independent of the closed forms under test: ``scipy.optimize.minimize``
(SLSQP on smooth reformulations), the variational inequality characterising
projections, hand-derived case-by-case formulas, optimality conditions and the
Moreau decomposition.  All tensors are float64 (dtype passed explicitly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bilevel.operators import (
    projection_box,
    projection_halfspace,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_non_negative,
    projection_simplex,
    prox_elastic_net,
    prox_group_lasso,
    prox_l1,
    prox_none,
)

DT = torch.float64
N = 6
LOWER = np.array([-1.0, -0.5, 0.0, -2.0, 0.3, -0.1])
UPPER = LOWER + np.array([0.5, 1.0, 2.0, 0.5, 0.4, 0.3])
A_VEC = np.array([1.0, -2.0, 0.5, 0.3, 1.5, -0.7])
B_VAL = 0.4
SCALE = 2.0
RADIUS = 1.5
FEAS_TOL = 1e-10


def t(a: np.ndarray | float | list[float]) -> torch.Tensor:
    """Float64 tensor from array-like."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DT)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# --------------------------------------------------------------------------- #
# scipy oracles
# --------------------------------------------------------------------------- #
def _slsqp(
    fun: Callable[[np.ndarray], float],
    jac: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    bounds: list[tuple[float | None, float | None]] | None = None,
    constraints: list[dict] | tuple = (),
) -> np.ndarray:
    res = scipy.optimize.minimize(
        fun,
        x0,
        jac=jac,
        method="SLSQP",
        bounds=bounds,
        constraints=constraints,
        options={"ftol": 1e-12, "maxiter": 2000},
    )
    # Status 8 ("positive directional derivative for linesearch") only means that
    # no further progress is possible at this tolerance; accuracy is checked by callers.
    assert res.status in (0, 8), res.message
    return res.x


def _scipy_projection(
    x: np.ndarray,
    bounds: list[tuple[float | None, float | None]] | None = None,
    constraints: list[dict] | tuple = (),
) -> np.ndarray:
    return _slsqp(
        lambda y: 0.5 * float(np.sum((y - x) ** 2)),
        lambda y: y - x,
        np.zeros_like(x),
        bounds,
        constraints,
    )


def oracle_non_negative(x: np.ndarray) -> np.ndarray:
    return _scipy_projection(x, bounds=[(0.0, None)] * x.size)


def oracle_box(x: np.ndarray) -> np.ndarray:
    return _scipy_projection(x, bounds=list(zip(LOWER, UPPER, strict=True)))


def oracle_simplex(x: np.ndarray, scale: float = SCALE) -> np.ndarray:
    cons = [{"type": "eq", "fun": lambda y: np.sum(y) - scale, "jac": lambda y: np.ones_like(y)}]
    return _scipy_projection(x, bounds=[(0.0, None)] * x.size, constraints=cons)


def oracle_l1_ball(x: np.ndarray, radius: float = RADIUS) -> np.ndarray:
    # Smooth reformulation: y = p - q with p, q >= 0 and sum(p + q) <= radius.
    n = x.size

    def fun(z: np.ndarray) -> float:
        return 0.5 * float(np.sum((z[:n] - z[n:] - x) ** 2))

    def jac(z: np.ndarray) -> np.ndarray:
        r = z[:n] - z[n:] - x
        return np.concatenate([r, -r])

    cons = [
        {"type": "ineq", "fun": lambda z: radius - np.sum(z), "jac": lambda z: -np.ones_like(z)}
    ]
    z = _slsqp(fun, jac, np.zeros(2 * n), [(0.0, None)] * (2 * n), cons)
    return z[:n] - z[n:]


def oracle_l2_ball(x: np.ndarray, radius: float = RADIUS) -> np.ndarray:
    cons = [{"type": "ineq", "fun": lambda y: radius**2 - y @ y, "jac": lambda y: -2 * y}]
    return _scipy_projection(x, constraints=cons)


def oracle_hyperplane(x: np.ndarray) -> np.ndarray:
    cons = [{"type": "eq", "fun": lambda y: A_VEC @ y - B_VAL, "jac": lambda y: A_VEC}]
    return _scipy_projection(x, constraints=cons)


def oracle_halfspace(x: np.ndarray) -> np.ndarray:
    cons = [{"type": "ineq", "fun": lambda y: B_VAL - A_VEC @ y, "jac": lambda y: -A_VEC}]
    return _scipy_projection(x, constraints=cons)


# --------------------------------------------------------------------------- #
# Projection cases: operator, feasibility test, sampler of feasible points, oracle
# --------------------------------------------------------------------------- #
def _sparsify(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    mask = rng.random(v.shape) < 0.3
    return np.where(mask, 0.0, v)


def _sample_simplex(rng: np.random.Generator) -> np.ndarray:
    w = _sparsify(rng, rng.dirichlet(np.ones(N)))
    if w.sum() == 0:
        w[0] = 1.0
    return SCALE * w / w.sum()


def _sample_norm_ball(rng: np.random.Generator, order: int, radius: float) -> np.ndarray:
    v = _sparsify(rng, rng.standard_normal(N))
    if not v.any():
        v[0] = 1.0
    r = radius if rng.random() < 0.5 else radius * rng.random()
    return r * v / np.linalg.norm(v, ord=order)


def _sample_halfspace(rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal(N) * 2
    gap = A_VEC @ z - B_VAL
    if gap > 0:  # reflect through the boundary hyperplane
        z = z - 2 * gap / (A_VEC @ A_VEC) * A_VEC
    return z


def _sample_hyperplane(rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal(N) * 2
    return z - (A_VEC @ z - B_VAL) / (A_VEC @ A_VEC) * A_VEC


@dataclass(frozen=True)
class SetCase:
    name: str
    project: Callable[[torch.Tensor], torch.Tensor]
    feasible: Callable[[np.ndarray], bool]
    sample: Callable[[np.random.Generator], np.ndarray]
    oracle: Callable[[np.ndarray], np.ndarray]


SET_CASES = [
    SetCase(
        "non_negative",
        projection_non_negative,
        lambda y: bool(np.all(y >= 0)),
        lambda rng: _sparsify(rng, np.abs(rng.standard_normal(N))),
        oracle_non_negative,
    ),
    SetCase(
        "box",
        lambda x: projection_box(x, t(LOWER), t(UPPER)),
        lambda y: bool(np.all(y >= LOWER) and np.all(y <= UPPER)),
        lambda rng: rng.uniform(LOWER, UPPER),
        oracle_box,
    ),
    SetCase(
        "simplex",
        lambda x: projection_simplex(x, SCALE),
        lambda y: bool(np.all(y >= 0) and abs(y.sum() - SCALE) <= FEAS_TOL),
        _sample_simplex,
        oracle_simplex,
    ),
    SetCase(
        "l1_ball",
        lambda x: projection_l1_ball(x, RADIUS),
        lambda y: bool(np.abs(y).sum() <= RADIUS + FEAS_TOL),
        lambda rng: _sample_norm_ball(rng, 1, RADIUS),
        oracle_l1_ball,
    ),
    SetCase(
        "l2_ball",
        lambda x: projection_l2_ball(x, RADIUS),
        lambda y: bool(np.linalg.norm(y) <= RADIUS + FEAS_TOL),
        lambda rng: _sample_norm_ball(rng, 2, RADIUS),
        oracle_l2_ball,
    ),
    SetCase(
        "hyperplane",
        lambda x: projection_hyperplane(x, t(A_VEC), B_VAL),
        lambda y: bool(abs(A_VEC @ y - B_VAL) <= FEAS_TOL),
        _sample_hyperplane,
        oracle_hyperplane,
    ),
    SetCase(
        "halfspace",
        lambda x: projection_halfspace(x, t(A_VEC), B_VAL),
        lambda y: bool(A_VEC @ y - B_VAL <= FEAS_TOL),
        _sample_halfspace,
        oracle_halfspace,
    ),
]
SET_IDS = [c.name for c in SET_CASES]


def _test_points(rng: np.random.Generator, n_points: int) -> np.ndarray:
    """Mix of large (mostly outside the sets) and small (often inside) points."""
    big = 2.0 * rng.standard_normal((n_points, N))
    small = 0.1 * rng.standard_normal((n_points, N))
    return np.concatenate([big, small])


@pytest.mark.parametrize("case", SET_CASES, ids=SET_IDS)
def test_projection_feasible(case: SetCase, rng: np.random.Generator) -> None:
    X = _test_points(rng, 20)
    Y = case.project(t(X)).numpy()  # batched along the leading dimension
    assert Y.shape == X.shape
    for y in Y:
        assert case.feasible(y)


@pytest.mark.parametrize("case", SET_CASES, ids=SET_IDS)
def test_projection_idempotent(case: SetCase, rng: np.random.Generator) -> None:
    Y = case.project(t(_test_points(rng, 20)))
    torch.testing.assert_close(case.project(Y), Y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", SET_CASES, ids=SET_IDS)
def test_projection_fixes_feasible_points(case: SetCase, rng: np.random.Generator) -> None:
    Y = np.stack([case.sample(rng) for _ in range(20)])
    for y in Y:
        assert case.feasible(y)
    np.testing.assert_allclose(case.project(t(Y)).numpy(), Y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", SET_CASES, ids=SET_IDS)
def test_projection_variational_inequality(case: SetCase, rng: np.random.Generator) -> None:
    # P(x) is the projection iff <x - P(x), y - P(x)> <= 0 for every feasible y.
    X = _test_points(rng, 5)
    P = case.project(t(X)).numpy()
    Ys = np.stack([case.sample(rng) for _ in range(60)])
    for x, p in zip(X, P, strict=True):
        assert np.max((Ys - p) @ (x - p)) <= 1e-10


@pytest.mark.parametrize("case", SET_CASES, ids=SET_IDS)
def test_projection_matches_scipy(case: SetCase, rng: np.random.Generator) -> None:
    X = _test_points(rng, 3)
    P = case.project(t(X)).numpy()
    for x, p in zip(X, P, strict=True):
        np.testing.assert_allclose(p, case.oracle(x), rtol=0, atol=1e-6)


def test_simplex_projects_each_row_and_handles_batched_scale(rng: np.random.Generator) -> None:
    X = rng.standard_normal((3, 4, N))
    scales = np.array([[0.5, 1.0, 2.0, 0.0]] * 3)
    Y = projection_simplex(t(X), t(scales)).numpy()
    for i in range(3):
        for j in range(4):
            np.testing.assert_allclose(Y[i, j], oracle_simplex(X[i, j], scales[i, j]), atol=1e-6)
    np.testing.assert_allclose(Y.sum(-1), scales, atol=1e-12)
    assert np.all(Y[..., 3, :] == 0)


def test_simplex_known_values() -> None:
    x = t([0.5, 0.2, -1.0])
    # tau = (0.5 + 0.2 - 1) / 2 = -0.15 -> y = (0.65, 0.35, 0)
    torch.testing.assert_close(projection_simplex(x), t([0.65, 0.35, 0.0]))
    torch.testing.assert_close(projection_simplex(t([3.0, 3.0])), t([0.5, 0.5]))
    torch.testing.assert_close(projection_simplex(t([5.0])), t([1.0]))


def test_l1_ball_inside_is_identity_and_zero_radius() -> None:
    x = t([0.1, -0.2, 0.3])
    assert torch.equal(projection_l1_ball(x, 1.0), x)
    assert torch.equal(projection_l1_ball(x, 0.0), torch.zeros_like(x))
    assert torch.equal(projection_l2_ball(x, 0.0), torch.zeros_like(x))
    torch.testing.assert_close(projection_l1_ball(t([2.0, -1.0]), 1.0), t([1.0, 0.0]))


def test_l2_ball_closed_form() -> None:
    torch.testing.assert_close(projection_l2_ball(t([3.0, 4.0]), 1.0), t([0.6, 0.8]))
    torch.testing.assert_close(projection_l2_ball(t([0.3, 0.4]), 1.0), t([0.3, 0.4]))


def test_float32_dtype_is_preserved() -> None:
    x = torch.randn(4, 5, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    for out in (
        projection_simplex(x, t(1.0)),
        projection_box(x, -0.1, t(0.2)),
        projection_l1_ball(x),
        projection_l2_ball(x),
        projection_halfspace(x, torch.ones(5, dtype=DT), 0.0),
        prox_l1(x, t(0.1)),
        prox_elastic_net(x, (0.1, t(0.2))),
        prox_group_lasso(x, 0.1),
    ):
        assert out.dtype == torch.float32


# --------------------------------------------------------------------------- #
# Proximal operators
# --------------------------------------------------------------------------- #
def soft_threshold_cases(x: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Hand-derived case-by-case soft-thresholding."""
    out = np.empty_like(x)
    for i, (xi, ti) in enumerate(zip(x, np.broadcast_to(thr, x.shape), strict=True)):
        if xi > ti:
            out[i] = xi - ti
        elif xi < -ti:
            out[i] = xi + ti
        else:
            out[i] = 0.0
    return out


def oracle_elastic_net(x: np.ndarray, l1: np.ndarray | float, l2: float, s: float) -> np.ndarray:
    """scipy on the smooth split reformulation y = p - q, p, q >= 0."""
    n = x.size
    w = np.broadcast_to(s * np.asarray(l1), x.shape)

    def fun(z: np.ndarray) -> float:
        y = z[:n] - z[n:]
        return float(0.5 * np.sum((y - x) ** 2) + w @ (z[:n] + z[n:]) + 0.5 * s * l2 * y @ y)

    def jac(z: np.ndarray) -> np.ndarray:
        y = z[:n] - z[n:]
        gy = y - x + s * l2 * y
        return np.concatenate([gy + w, -gy + w])

    z = _slsqp(fun, jac, np.zeros(2 * n), [(0.0, None)] * (2 * n))
    return z[:n] - z[n:]


def oracle_group_lasso(x: np.ndarray, labels: np.ndarray, thr: float) -> np.ndarray:
    """min 0.5||y - x||^2 + thr * sum_g ||y_g||_2 as a second-order cone program through
    cvxpy, solved by Clarabel (an interior-point conic solver) to 1e-9 (errors of about
    1e-9 in y).

    A conic solver handles the non-smooth norms exactly (as cones) instead of through the
    squared epigraph constraints ``u_g^2 >= ||y_g||^2`` that SLSQP needed, whose accuracy
    varied with the SciPy release (3% off with SciPy 1.17.1)."""
    import cvxpy as cp

    y = cp.Variable(x.size)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    objective = 0.5 * cp.sum_squares(y - x) + thr * sum(cp.norm(y[idx], 2) for idx in groups)
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9, max_iter=200
    )
    assert problem.status == cp.OPTIMAL, problem.status
    return np.asarray(y.value)


@pytest.mark.parametrize("scaling", [1.0, 0.7])
def test_prox_l1_matches_cases_and_scipy(rng: np.random.Generator, scaling: float) -> None:
    x = 1.5 * rng.standard_normal(N)
    for l1reg in (0.4, rng.uniform(0.1, 1.0, N)):
        y = prox_l1(t(x), t(l1reg) if isinstance(l1reg, np.ndarray) else l1reg, scaling).numpy()
        np.testing.assert_allclose(
            y, soft_threshold_cases(x, scaling * np.asarray(l1reg)), atol=1e-14
        )
        np.testing.assert_allclose(y, oracle_elastic_net(x, l1reg, 0.0, scaling), atol=1e-7)


@pytest.mark.parametrize("scaling", [1.0, 0.7])
def test_prox_elastic_net_matches_scipy(rng: np.random.Generator, scaling: float) -> None:
    for _ in range(3):
        x = 1.5 * rng.standard_normal(N)
        l1, l2 = rng.uniform(0.1, 1.0), rng.uniform(0.1, 2.0)
        y = prox_elastic_net(t(x), (l1, t(l2)), scaling).numpy()
        np.testing.assert_allclose(y, oracle_elastic_net(x, l1, l2, scaling), atol=1e-7)
        expected = soft_threshold_cases(x, np.asarray(scaling * l1)) / (1 + scaling * l2)
        np.testing.assert_allclose(y, expected, atol=1e-14)


def _check_group_lasso_optimality(x: np.ndarray, y: np.ndarray, labels: np.ndarray, thr: float):
    """Subgradient optimality: 0 in y_g - x_g + thr * d||y_g||."""
    for g in np.unique(labels):
        xg, yg = x[labels == g], y[labels == g]
        ny = np.linalg.norm(yg)
        if ny == 0:
            assert np.linalg.norm(xg) <= thr + 1e-12
        else:
            np.testing.assert_allclose(yg - xg + thr * yg / ny, 0.0, atol=1e-12)


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_prox_group_lasso_rows_match_scipy(rng: np.random.Generator, scaling: float) -> None:
    # Default grouping: one group per row.  Rows of different norms, some zeroed.
    X = rng.standard_normal((5, 4)) * np.array([[0.1], [0.5], [1.0], [2.0], [0.0]])
    l2reg = 0.6
    Y = prox_group_lasso(t(X), l2reg, scaling).numpy()
    thr = scaling * l2reg
    for x, y in zip(X, Y, strict=True):
        labels = np.zeros(x.size, dtype=int)
        _check_group_lasso_optimality(x, y, labels, thr)
        np.testing.assert_allclose(y, oracle_group_lasso(x, labels, thr), atol=1e-7)
    assert np.all(Y[0] == 0) and np.all(Y[4] == 0)


def test_prox_group_lasso_explicit_groups(rng: np.random.Generator) -> None:
    labels = np.array([3, 3, 7, 1, 1, 1, 7])  # non-contiguous, unsorted labels
    x = rng.standard_normal(labels.size) * np.array([0.1, 0.1, 2, 1.5, 1.5, 1.5, 2])
    thr = 0.5
    y = prox_group_lasso(t(x), thr, groups=labels.tolist()).numpy()
    _check_group_lasso_optimality(x, y, labels, thr)
    np.testing.assert_allclose(y, oracle_group_lasso(x, labels, thr), atol=1e-7)
    # Same result with a tensor of labels, and per-group weights (sorted labels 1, 3, 7).
    y2 = prox_group_lasso(t(x), t([thr, thr, thr]), groups=torch.tensor(labels)).numpy()
    np.testing.assert_allclose(y2, y, atol=1e-15)
    w = np.array([0.2, 5.0, 0.1])
    y3 = prox_group_lasso(t(x), t(w), groups=torch.tensor(labels)).numpy()
    for g, wg in zip([1, 3, 7], w, strict=True):
        m = labels == g
        np.testing.assert_allclose(y3[m], prox_group_lasso(t(x[m]), wg).numpy(), atol=1e-15)


def test_prox_none_is_identity(rng: np.random.Generator) -> None:
    x = t(rng.standard_normal((3, N)))
    assert torch.equal(prox_none(x), x)
    assert torch.equal(prox_none(x, (1.0, 2.0), 0.3), x)


@pytest.mark.parametrize("scaling", [1.0, 0.3])
def test_moreau_decomposition(rng: np.random.Generator, scaling: float) -> None:
    # x = prox_{s g}(x) + s prox_{g*/s}(x/s); for norms g* is the indicator of the
    # dual-norm ball, so the second term is a projection onto the ball of radius s*lam.
    X = t(1.5 * rng.standard_normal((4, N)))
    lam = 0.7
    thr = scaling * lam
    torch.testing.assert_close(
        prox_l1(X, lam, scaling) + projection_box(X, -thr, thr), X, rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        prox_group_lasso(X, lam, scaling) + projection_l2_ball(X, thr), X, rtol=0, atol=1e-14
    )
    # Cone case: the polar of the non-negative orthant is the non-positive orthant.
    torch.testing.assert_close(
        projection_non_negative(X) - projection_non_negative(-X), X, rtol=0, atol=0
    )
    # Zero function: its conjugate is the indicator of {0}.
    torch.testing.assert_close(prox_none(X, None, scaling), X, rtol=0, atol=0)


def test_prox_scaling_convention(rng: np.random.Generator) -> None:
    x = t(rng.standard_normal(N))
    torch.testing.assert_close(prox_l1(x, 0.4, 0.5), prox_l1(x, 0.2))
    torch.testing.assert_close(
        prox_elastic_net(x, (0.4, 1.0), 0.5), prox_elastic_net(x, (0.2, 0.5))
    )
    torch.testing.assert_close(prox_group_lasso(x, 0.4, 0.5), prox_group_lasso(x, 0.2))


# --------------------------------------------------------------------------- #
# Derivatives: gradcheck, jacrev == jacfwd, NaN-free at the origin
# --------------------------------------------------------------------------- #
def _req(a: np.ndarray | float) -> torch.Tensor:
    return t(a).requires_grad_(True)


def _away_from_threshold(rng: np.random.Generator, thr: np.ndarray | float) -> np.ndarray:
    """Entries with |x_i| at least 0.1 away from the threshold thr."""
    thr_b = np.broadcast_to(thr, (N,))
    mag = np.where(rng.random(N) < 0.5, thr_b + 0.1 + rng.random(N), thr_b * rng.random(N) * 0.7)
    return np.where(rng.random(N) < 0.5, -mag, mag)


def _simplex_margin(x: np.ndarray, y: np.ndarray) -> float:
    """Distance of x to the kinks of the simplex projection y = max(x - tau, 0)."""
    support = y > 0
    tau = np.mean(x[support] - y[support])
    return float(np.min(np.abs(x - tau)))


def _diff_cases(rng: np.random.Generator) -> list[tuple[str, Callable, tuple[torch.Tensor, ...]]]:
    cases: list[tuple[str, Callable, tuple[torch.Tensor, ...]]] = []

    x = rng.standard_normal(N)
    cases.append(("non_negative", projection_non_negative, (_req(x + 0.1 * np.sign(x)),)))

    choice = rng.integers(0, 3, N)
    xb = np.select(
        [choice == 0, choice == 1], [LOWER - 0.2 - rng.random(N), (LOWER + UPPER) / 2], UPPER + 0.2
    )
    cases.append(("box", projection_box, (_req(xb), _req(LOWER), _req(UPPER))))

    xs = rng.standard_normal(N)
    assert _simplex_margin(xs, oracle_simplex(xs, 1.3)) > 1e-3
    cases.append(("simplex", projection_simplex, (_req(xs), _req(1.3))))

    xl1 = 2.0 * rng.standard_normal(N)
    assert np.abs(xl1).sum() > RADIUS + 0.1
    yl1 = oracle_l1_ball(xl1)
    assert _simplex_margin(np.abs(xl1), np.abs(yl1)) > 1e-3
    cases.append(("l1_ball_outside", projection_l1_ball, (_req(xl1), _req(RADIUS))))
    cases.append(("l1_ball_inside", projection_l1_ball, (_req(0.1 * xl1), _req(RADIUS))))

    xl2 = rng.standard_normal(N)
    xl2 /= np.linalg.norm(xl2)
    cases.append(("l2_ball_outside", projection_l2_ball, (_req(3 * xl2), _req(RADIUS))))
    cases.append(("l2_ball_inside", projection_l2_ball, (_req(0.5 * xl2), _req(RADIUS))))

    xh = rng.standard_normal(N)
    cases.append(("hyperplane", projection_hyperplane, (_req(xh), _req(A_VEC), _req(B_VAL))))
    for sign, name in ((1.0, "halfspace_active"), (-1.0, "halfspace_inactive")):
        xh2 = xh + (sign * (1.0 + abs(A_VEC @ xh - B_VAL)) - (A_VEC @ xh - B_VAL)) * A_VEC / (
            A_VEC @ A_VEC
        )
        assert abs(A_VEC @ xh2 - B_VAL) > 0.5
        cases.append((name, projection_halfspace, (_req(xh2), _req(A_VEC), _req(B_VAL))))

    lam, s = 0.5, 0.8
    cases.append(
        ("prox_l1", prox_l1, (_req(_away_from_threshold(rng, lam * s)), _req(lam), _req(s)))
    )
    lam_vec = rng.uniform(0.2, 1.0, N)
    cases.append(
        (
            "prox_l1_weights",
            prox_l1,
            (_req(_away_from_threshold(rng, lam_vec * s)), _req(lam_vec), _req(s)),
        )
    )
    cases.append(
        (
            "prox_elastic_net",
            lambda x, a, b, sc: prox_elastic_net(x, (a, b), sc),
            (_req(_away_from_threshold(rng, lam * s)), _req(lam), _req(0.3), _req(s)),
        )
    )
    Xg = rng.standard_normal((4, 3))
    Xg /= np.linalg.norm(Xg, axis=1, keepdims=True)
    Xg *= np.array([[0.1], [0.3], [1.0], [2.0]])  # threshold 0.4: two zeroed rows
    cases.append(("prox_group_lasso", prox_group_lasso, (_req(Xg), _req(0.5), _req(s))))
    cases.append(
        (
            "prox_group_lasso_groups",
            lambda x, a, sc: prox_group_lasso(x, a, sc, groups=[0, 0, 1, 1, 2, 2]),
            (_req(Xg.reshape(2, 6)[1]), _req([0.5, 0.1, 0.5]), _req(s)),
        )
    )
    cases.append(("prox_none", prox_none, (_req(x),)))
    return cases


_CASE_NAMES = [name for name, _, _ in _diff_cases(np.random.default_rng(0))]


@pytest.mark.parametrize("index", range(len(_CASE_NAMES)), ids=_CASE_NAMES)
def test_gradcheck(index: int) -> None:
    _, fn, inputs = _diff_cases(np.random.default_rng(index))[index]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("index", range(len(_CASE_NAMES)), ids=_CASE_NAMES)
def test_jacrev_equals_jacfwd(index: int) -> None:
    _, fn, inputs = _diff_cases(np.random.default_rng(index))[index]
    inputs = tuple(i.detach() for i in inputs)
    argnums = tuple(range(len(inputs)))
    jr = torch.func.jacrev(fn, argnums=argnums)(*inputs)
    jf = torch.func.jacfwd(fn, argnums=argnums)(*inputs)
    for a, b in zip(jr, jf, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_derivative_values(rng: np.random.Generator) -> None:
    # sum(P_simplex(x, s)) = s and ||P_l1(x, r)||_1 = r (outside) give unit derivatives.
    x = t(rng.standard_normal(N))
    g = torch.func.grad(lambda s: projection_simplex(x, s).sum())(t(1.3))
    torch.testing.assert_close(g, t(1.0))
    g = torch.func.grad(lambda r: projection_l1_ball(3 * x, r).abs().sum())(t(RADIUS))
    torch.testing.assert_close(g, t(1.0))
    g = torch.func.grad(lambda r: torch.linalg.vector_norm(projection_l2_ball(3 * x, r)))(t(0.5))
    torch.testing.assert_close(g, t(1.0))
    # Inside the ball the projection does not depend on the radius.
    g = torch.func.grad(lambda r: projection_l1_ball(0.01 * x, r).sum())(t(RADIUS))
    torch.testing.assert_close(g, t(0.0))


@pytest.mark.parametrize("radius", [1.0, 0.0])
def test_no_nan_at_origin(radius: float) -> None:
    zero = torch.zeros(N, dtype=DT)
    r = t(radius)
    ops: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = [
        projection_l2_ball,
        projection_l1_ball,
        prox_group_lasso,
        lambda x, a: prox_group_lasso(x, a, groups=[0, 0, 0, 1, 1, 1]),
        lambda x, a: projection_simplex(x, a),
        prox_l1,
    ]
    for op in ops:
        val = op(zero, r)
        assert torch.isfinite(val).all()
        for jac in (torch.func.jacrev, torch.func.jacfwd):
            jx, jr = jac(op, argnums=(0, 1))(zero, r)
            assert torch.isfinite(jx).all() and torch.isfinite(jr).all()
        x = zero.clone().requires_grad_(True)
        rr = r.clone().requires_grad_(True)
        op(x, rr).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(rr.grad).all()
    # With a positive radius the l2 projection is the identity near 0.
    if radius > 0:
        jx = torch.func.jacrev(projection_l2_ball)(zero, r)
        torch.testing.assert_close(jx, torch.eye(N, dtype=DT))
    # Group lasso at a zero group has zero Jacobian.
    jx = torch.func.jacfwd(prox_group_lasso)(zero, t(0.5))
    assert torch.equal(jx, torch.zeros(N, N, dtype=DT))


def test_func_grad_matches_autograd(rng: np.random.Generator) -> None:
    x = t(rng.standard_normal(N))
    w = t(rng.standard_normal(N))

    def loss(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (w * projection_simplex(x, s)).sum() + (w * prox_l1(x, s)).sum()

    gx, gs = torch.func.grad(loss, argnums=(0, 1))(x, t(0.7))
    xr, sr = x.clone().requires_grad_(True), t(0.7).requires_grad_(True)
    loss(xr, sr).backward()
    torch.testing.assert_close(gx, xr.grad)
    torch.testing.assert_close(gs, sr.grad)
    # jvp agrees with the Jacobian.
    v = t(rng.standard_normal(N))
    _, tangent = torch.func.jvp(lambda z: projection_simplex(z, 0.7), (x,), (v,))
    jac = torch.func.jacrev(lambda z: projection_simplex(z, 0.7))(x)
    torch.testing.assert_close(tangent, jac @ v)


# --------------------------------------------------------------------------- #
# vmap
# --------------------------------------------------------------------------- #
VMAP_OPS: list[tuple[str, Callable[..., torch.Tensor], int]] = [
    # (name, op taking (x, *hyper), number of hyperparameters)
    ("non_negative", projection_non_negative, 0),
    ("box", projection_box, 2),
    ("simplex", projection_simplex, 1),
    ("l1_ball", projection_l1_ball, 1),
    ("l2_ball", projection_l2_ball, 1),
    ("hyperplane", projection_hyperplane, 2),
    ("halfspace", projection_halfspace, 2),
    ("prox_l1", prox_l1, 2),
    ("prox_elastic_net", lambda x, a, b, s: prox_elastic_net(x, (a, b), s), 3),
    ("prox_group_lasso", prox_group_lasso, 2),
    ("prox_group_lasso_groups", lambda x, a: prox_group_lasso(x, a, groups=[1, 1, 0, 0, 0, 2]), 1),
    ("prox_none", prox_none, 0),
]


def _vmap_hypers(name: str, rng: np.random.Generator, batch: int) -> list[torch.Tensor]:
    """Batched hyperparameters (leading dimension ``batch``) for each operator."""

    def pos(*shape: int) -> torch.Tensor:
        return t(rng.uniform(0.2, 1.5, (batch, *shape)))

    if name == "box":
        lo = rng.uniform(-1.0, 0.0, (batch, N))
        return [t(lo), t(lo + rng.uniform(0.0, 1.0, (batch, N)))]
    if name in ("hyperplane", "halfspace"):
        return [t(rng.standard_normal((batch, N))), t(rng.standard_normal(batch))]
    if name == "prox_group_lasso_groups":
        return [pos(3)]
    counts = {"simplex": 1, "l1_ball": 1, "l2_ball": 1, "prox_l1": 2, "prox_group_lasso": 2}
    counts["prox_elastic_net"] = 3
    return [pos() for _ in range(counts.get(name, 0))]


@pytest.mark.parametrize(("name", "op", "n_hyper"), VMAP_OPS, ids=[v[0] for v in VMAP_OPS])
def test_vmap_matches_loop(
    name: str, op: Callable[..., torch.Tensor], n_hyper: int, rng: np.random.Generator
) -> None:
    batch = 7
    X = t(1.5 * rng.standard_normal((batch, N)))
    hypers = _vmap_hypers(name, rng, batch)
    assert len(hypers) == n_hyper

    # Batched x and hyperparameters.
    out = torch.vmap(op)(X, *hypers)
    loop = torch.stack([op(X[i], *(h[i] for h in hypers)) for i in range(batch)])
    torch.testing.assert_close(out, loop, rtol=0, atol=1e-14)

    # Batched x only, shared (unbatched) hyperparameters.
    fixed = [h[0] for h in hypers]
    out = torch.vmap(lambda x: op(x, *fixed))(X)
    loop = torch.stack([op(X[i], *fixed) for i in range(batch)])
    torch.testing.assert_close(out, loop, rtol=0, atol=1e-14)

    # Per-example Jacobians (as used by implicit differentiation).
    jac = torch.vmap(torch.func.jacrev(lambda x: op(x, *fixed)))(X)
    loop = torch.stack([torch.func.jacfwd(lambda x: op(x, *fixed))(X[i]) for i in range(batch)])
    torch.testing.assert_close(jac, loop, rtol=0, atol=1e-12)


def test_nested_vmap_simplex(rng: np.random.Generator) -> None:
    X = t(rng.standard_normal((3, 4, N)))
    S = t(rng.uniform(0.1, 2.0, (3, 4)))
    out = torch.vmap(torch.vmap(projection_simplex))(X, S)
    torch.testing.assert_close(out, projection_simplex(X, S), rtol=0, atol=1e-14)


def test_vmap_skips_box_validation_on_batched_bounds() -> None:
    # Under vmap the bound check would be data dependent: it is skipped, not an error.
    lo = t([[0.0, 0.0], [0.0, 0.0]])
    up = t([[1.0, 1.0], [2.0, 2.0]])
    out = torch.vmap(projection_box)(t([[5.0, -5.0], [5.0, -5.0]]), lo, up)
    torch.testing.assert_close(out, t([[1.0, 0.0], [2.0, 0.0]]))


def test_fixed_point_map_composes_with_transforms(rng: np.random.Generator) -> None:
    # T(x, theta) = P_simplex(x - eta * grad f(x), theta) with f(x) = 0.5||x - c||^2.
    c = t(rng.standard_normal(N))
    eta = 0.5

    def T(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grad_f = torch.func.grad(lambda z: 0.5 * ((z - c) ** 2).sum())(x)
        return projection_simplex(x - eta * grad_f, theta)

    theta = t(1.2)
    x_star = projection_simplex(c, theta)  # minimiser of f over the simplex
    torch.testing.assert_close(T(x_star, theta), x_star)
    jx, jt = torch.func.jacfwd(T, argnums=(0, 1))(x_star, theta)
    # Implicit function theorem: dx*/dtheta = (I - dT/dx)^{-1} dT/dtheta.
    dx = torch.linalg.solve(torch.eye(N, dtype=DT) - jx, jt)
    direct = torch.func.jacrev(projection_simplex, argnums=1)(c, theta)
    torch.testing.assert_close(dx, direct)


# --------------------------------------------------------------------------- #
# Hypothesis property tests
# --------------------------------------------------------------------------- #
_float_arrays = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=10),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=50, deadline=None)
@given(x=_float_arrays, scale=st.floats(0.0, 100.0))
def test_simplex_property(x: np.ndarray, scale: float) -> None:
    y = projection_simplex(t(x), scale)
    tol = 1e-11 * (1.0 + scale + float(np.abs(x).max())) * x.shape[-1]
    assert y.shape == x.shape
    assert bool((y >= 0).all())
    np.testing.assert_allclose(y.sum(-1).numpy(), scale, rtol=0, atol=tol)
    np.testing.assert_allclose(projection_simplex(y, scale).numpy(), y.numpy(), rtol=0, atol=tol)


@settings(max_examples=50, deadline=None)
@given(x=_float_arrays, radius=st.floats(0.0, 100.0))
def test_l1_ball_property(x: np.ndarray, radius: float) -> None:
    y = projection_l1_ball(t(x), radius)
    tol = 1e-11 * (1.0 + radius + float(np.abs(x).max())) * x.shape[-1]
    assert y.shape == x.shape
    assert bool((y.abs().sum(-1) <= radius + tol).all())
    np.testing.assert_allclose(projection_l1_ball(y, radius).numpy(), y.numpy(), rtol=0, atol=tol)
    inside = np.abs(x).sum(-1) <= radius
    np.testing.assert_array_equal(y.numpy()[inside], x[inside])
    # Signs are preserved and magnitudes never grow.
    assert bool((y * t(x) >= 0).all()) and bool((y.abs() <= t(np.abs(x))).all())


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #
def test_non_tensor_input_raises_type_error() -> None:
    ops: list[Callable[[object], torch.Tensor]] = [
        projection_non_negative,
        lambda x: projection_box(x, 0.0, 1.0),  # type: ignore[arg-type]
        projection_simplex,  # type: ignore[list-item]
        projection_l1_ball,  # type: ignore[list-item]
        projection_l2_ball,  # type: ignore[list-item]
        lambda x: projection_hyperplane(x, t([1.0, 1.0]), 0.0),  # type: ignore[arg-type]
        lambda x: projection_halfspace(x, t([1.0, 1.0]), 0.0),  # type: ignore[arg-type]
        lambda x: prox_l1(x, 0.1),  # type: ignore[arg-type]
        lambda x: prox_elastic_net(x, (0.1, 0.1)),  # type: ignore[arg-type]
        lambda x: prox_group_lasso(x, 0.1),  # type: ignore[arg-type]
        prox_none,  # type: ignore[list-item]
    ]
    for op in ops:
        with pytest.raises(TypeError, match="must be a torch.Tensor"):
            op([1.0, 2.0])
        with pytest.raises(TypeError, match="must be a torch.Tensor"):
            op(np.ones(2))


def test_negative_hyperparameters_raise_value_error() -> None:
    x = t([1.0, 2.0])
    with pytest.raises(ValueError, match="scale must be non-negative"):
        projection_simplex(x, -1.0)
    with pytest.raises(ValueError, match="radius must be non-negative"):
        projection_l1_ball(x, -0.5)
    with pytest.raises(ValueError, match="radius must be non-negative"):
        projection_l2_ball(x, -0.5)
    with pytest.raises(ValueError, match="l1reg must be non-negative"):
        prox_l1(x, -0.1)
    with pytest.raises(ValueError, match="scaling must be non-negative"):
        prox_l1(x, 0.1, -1.0)
    with pytest.raises(ValueError, match="l2reg must be non-negative"):
        prox_elastic_net(x, (0.1, -0.1))
    with pytest.raises(ValueError, match="l2reg must be non-negative"):
        prox_group_lasso(x, -0.1)


def test_box_bounds_validation() -> None:
    x = t([1.0, 2.0])
    with pytest.raises(ValueError, match="lower must be <= upper"):
        projection_box(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        projection_box(x, t([0.0, 3.0]), t([1.0, 2.0]))
    with pytest.raises(ValueError, match="lower must be <= upper"):
        projection_box(x, t([0.0, 3.0]), 2.5)
    with pytest.raises(TypeError, match="lower must be a real number or a torch.Tensor"):
        projection_box(x, "0", 1.0)  # type: ignore[arg-type]
    # Equal bounds and infinite bounds are fine.
    torch.testing.assert_close(projection_box(x, 0.5, 0.5), t([0.5, 0.5]))
    torch.testing.assert_close(projection_box(x, -float("inf"), 1.5), t([1.0, 1.5]))


def test_other_bad_inputs() -> None:
    x = t([1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1 dimension"):
        projection_simplex(t(1.0))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        prox_group_lasso(t(1.0), 0.1)
    with pytest.raises(ValueError, match="normal vector a must be non-zero"):
        projection_hyperplane(x, t([0.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="normal vector a must be non-zero"):
        projection_halfspace(x, t([0.0, 0.0]), 1.0)
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        projection_hyperplane(x, [1.0, 1.0], 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hyperparams must be a pair"):
        prox_elastic_net(x, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hyperparams must be a pair"):
        prox_elastic_net(x, (0.1, 0.2, 0.3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="radius must be a real number"):
        projection_l2_ball(x, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one label per entry"):
        prox_group_lasso(x, 0.1, groups=[0, 0, 1])
    with pytest.raises(TypeError, match="integer labels"):
        prox_group_lasso(x, 0.1, groups=t([0.0, 1.0]))
    with pytest.raises(TypeError, match="groups must be None"):
        prox_group_lasso(x, 0.1, groups="ab")  # type: ignore[arg-type]
