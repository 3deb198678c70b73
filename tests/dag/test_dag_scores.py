"""Scores, inner solvers and acyclicity functions of TOPO against independent oracles."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import scipy.stats as st
from hypothesis import given, settings
from hypothesis import strategies as st_h

from bilevel.dag._order import CholeskyOrder, greedy_order, move_perm
from bilevel.dag.acyclicity import acyclicity, h_expm, h_logdet, h_poly
from bilevel.dag.scores import GaussianNV, LeastSquares, Logistic, make_score
from bilevel.dag.simulate import simulate_dag, simulate_linear_sem, simulate_parameter
from bilevel.errors import NonFiniteError


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small dense problems: multi-threaded BLAS only adds contention."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def linear_data(d=6, n=200, seed=0, k=2, noise_scale=1.0):
    rng = np.random.default_rng(seed)
    B = simulate_dag(d, min(k * d, d * (d - 1) // 2), "ER", rng)
    W = simulate_parameter(B, rng=rng)
    X = simulate_linear_sem(W, n, "gauss", noise_scale=noise_scale, rng=rng)
    return X, W


def lstsq_node(Xc, j, ps, l2=0.0):
    """Oracle: one regression of column j on columns ps (ridge by augmentation)."""
    n = Xc.shape[0]
    if len(ps) == 0:
        return np.zeros(0), 0.5 * np.mean(Xc[:, j] ** 2)
    A = Xc[:, ps]
    y = Xc[:, j]
    if l2 > 0:
        A = np.vstack([A, np.sqrt(n * l2) * np.eye(len(ps))])
        y = np.concatenate([y, np.zeros(len(ps))])
    w = np.linalg.lstsq(A, y, rcond=None)[0]
    r = Xc[:, j] - Xc[:, ps] @ w
    return w, 0.5 * np.mean(r**2) + 0.5 * l2 * (w @ w)


# ---------------------------------------------------------------------------------------
# acyclicity
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logdet", "expm", "poly"])
@pytest.mark.parametrize("transform", ["abs", "square"])
def test_acyclicity_gradient_matches_central_differences(kind, transform):
    rng = np.random.default_rng(1)
    d = 5
    W = rng.uniform(0.05, 0.3, (d, d)) * rng.choice([-1, 1], (d, d))
    h, G = acyclicity(W, kind, transform)
    assert h > 0  # dense graph: cyclic
    eps = 1e-6
    Gfd = np.zeros_like(W)
    for i, j in itertools.product(range(d), range(d)):
        E = np.zeros_like(W)
        E[i, j] = eps
        Gfd[i, j] = (
            acyclicity(W + E, kind, transform)[0] - acyclicity(W - E, kind, transform)[0]
        ) / (2 * eps)
    np.testing.assert_allclose(G, Gfd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("fn", [h_logdet, h_expm, h_poly])
def test_acyclicity_zero_on_dags_and_gradient_pattern_is_reachability(fn):
    rng = np.random.default_rng(2)
    d = 8
    B = simulate_dag(d, 12, "ER", rng)
    A = np.abs(simulate_parameter(B, rng=rng))
    h, G = fn(A)
    assert abs(h) < 1e-9
    g = nx.DiGraph()
    g.add_nodes_from(range(d))
    g.add_edges_from(zip(*np.nonzero(A), strict=True))
    for i, j in itertools.product(range(d), range(d)):
        if i == j:
            continue
        # [grad h]_{ij} == 0  <=>  adding i -> j closes no cycle  <=>  no path j -> i
        assert (abs(G[i, j]) > 1e-12) == nx.has_path(g, j, i), (i, j)
    A[0, 0] = 0.0
    # a 2-cycle makes h positive
    i, j = next(zip(*np.nonzero(A), strict=True))
    A2 = A.copy()
    A2[j, i] = 0.5
    assert fn(A2)[0] > 1e-6


def test_acyclicity_bad_input():
    with pytest.raises(ValueError, match="square"):
        h_logdet(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        h_expm(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="kind"):
        acyclicity(np.zeros((2, 2)), "nope")
    with pytest.raises(ValueError, match="determinant"):
        h_logdet(np.array([[0.0, 2.0], [2.0, 0.0]]))


# ---------------------------------------------------------------------------------------
# least squares: Cholesky inner solver
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_cholesky_order_equals_per_node_regressions(l2):
    X, _ = linear_data(d=7, n=150, seed=3)
    score = LeastSquares(l2=l2).setup(X)
    Xc = X - X.mean(axis=0)
    order = np.random.default_rng(0).permutation(7)
    state = score.state(order)
    W = state.weights()
    total = 0.0
    for k, j in enumerate(order):
        w, loss = lstsq_node(Xc, j, order[:k], l2)
        np.testing.assert_allclose(W[order[:k], j], w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state.node_loss[k], loss, rtol=1e-10, atol=1e-13)
        total += loss
    np.testing.assert_allclose(state.total, total, rtol=1e-12)
    np.testing.assert_allclose(score.objective(W), total, rtol=1e-10)
    # the weights respect the order
    pos = np.argsort(order)
    assert np.all(W[pos[:, None] >= pos[None, :]] == 0)


def test_incremental_moves_equal_fresh_factorisation():
    X, _ = linear_data(d=9, n=300, seed=4)
    score = LeastSquares().setup(X)
    rng = np.random.default_rng(5)
    state = score.state(rng.permutation(9))
    for _ in range(25):
        a, b = sorted(rng.choice(9, size=2, replace=False))
        kind = rng.choice(["swap", "up", "down"])
        perm = move_perm(kind, b - a)
        new_order = state.order.copy()
        new_order[a : b + 1] = new_order[a : b + 1][perm]
        fresh = score.state(new_order)
        np.testing.assert_allclose(
            state.move_losses(a, b, perm), fresh.node_loss[a : b + 1], rtol=1e-10, atol=1e-14
        )
        state.apply(a, b, perm)
        np.testing.assert_array_equal(state.order, new_order)
        np.testing.assert_allclose(state.node_loss, fresh.node_loss, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(state.R, fresh.R, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(state.weights(), fresh.weights(), rtol=1e-9, atol=1e-11)
    # and against lstsq after the whole sequence
    Xc = X - X.mean(axis=0)
    for k, j in enumerate(state.order):
        _, loss = lstsq_node(Xc, j, state.order[:k])
        np.testing.assert_allclose(state.node_loss[k], loss, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st_h.integers(0, 2**31 - 1),
    d=st_h.integers(2, 9),
    moves=st_h.lists(
        st_h.tuples(
            st_h.integers(0, 8), st_h.integers(0, 8), st_h.sampled_from(["swap", "up", "down"])
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_incremental_moves_property(seed, d, moves):
    """Any sequence of moves on any SPD matrix keeps the factor equal to a fresh one."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d + 3, d))
    S = A.T @ A / (d + 3) + 0.1 * np.eye(d)
    state = CholeskyOrder(S, rng.permutation(d), lambda D: 0.5 * D)
    for a, b, kind in moves:
        a, b = sorted((a % d, b % d))
        if a == b:
            continue
        perm = move_perm(kind, b - a)
        state.apply(a, b, perm)
        fresh = CholeskyOrder(S, state.order, lambda D: 0.5 * D)
        np.testing.assert_allclose(
            state.R.T @ state.R, S[np.ix_(state.order, state.order)], rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(state.node_loss, fresh.node_loss, rtol=1e-9, atol=1e-13)
        assert np.all(np.diag(state.R) > 0)


def test_move_perm():
    np.testing.assert_array_equal(move_perm("swap", 3), [3, 1, 2, 0])
    np.testing.assert_array_equal(move_perm("up", 3), [3, 0, 1, 2])
    np.testing.assert_array_equal(move_perm("down", 3), [1, 2, 3, 0])
    with pytest.raises(ValueError):
        move_perm("sideways", 2)


def test_greedy_order_is_top_down_minimum_residual_variance():
    X, _ = linear_data(d=6, n=200, seed=6)
    score = LeastSquares().setup(X)
    Xc = X - X.mean(axis=0)
    order = greedy_order(score._S)
    for k in range(6):
        rest = [j for j in range(6) if j not in order[:k]]
        losses = [lstsq_node(Xc, j, order[:k])[1] for j in rest]
        assert rest[int(np.argmin(losses))] == order[k]


def test_least_squares_gradient_matches_finite_differences():
    X, _ = linear_data(d=5, n=80, seed=7)
    for score in (LeastSquares(l2=0.2).setup(X), GaussianNV(l1=0.0).setup(X)):
        state = score.state(np.arange(5))
        W = state.weights() + 0.0
        G = score.gradient(state)
        eps = 1e-6
        for i, j in itertools.product(range(5), range(5)):
            E = np.zeros((5, 5))
            E[i, j] = eps
            fd = (score.objective(W + E) - score.objective(W - E)) / (2 * eps)
            np.testing.assert_allclose(G[i, j], fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Gaussian non-equal variance
# ---------------------------------------------------------------------------------------


def test_gaussian_nv_equals_multivariate_normal_log_likelihood():
    X, _ = linear_data(d=5, n=400, seed=8)
    Xc = X - X.mean(axis=0)
    score = GaussianNV(l1=0.0).setup(X)
    order = np.array([3, 1, 4, 0, 2])
    state = score.state(order)
    W = state.weights()
    R = Xc - Xc @ W
    var = np.mean(R**2, axis=0)
    IW = np.linalg.inv(np.eye(5) - W)
    cov = IW.T @ np.diag(var) @ IW
    loglik = st.multivariate_normal(np.zeros(5), cov).logpdf(Xc).mean()
    const = 0.5 * 5 * (1 + np.log(2 * np.pi))
    np.testing.assert_allclose(state.total, -loglik - const, rtol=1e-10)
    np.testing.assert_allclose(score.objective(W), state.total, rtol=1e-10)
    # the inner optimum maximises the likelihood among order-consistent W: perturb one entry
    W2 = W.copy()
    W2[order[0], order[1]] += 1e-3
    assert score.objective(W2) > state.total


def test_gaussian_nv_without_penalty_ties_all_orders_at_half_log_det():
    X, _ = linear_data(d=5, n=300, seed=14)
    score = GaussianNV(l1=0.0).setup(X)
    Xc = X - X.mean(axis=0)
    half_logdet = 0.5 * np.linalg.slogdet(Xc.T @ Xc / 300)[1]
    for p in itertools.islice(itertools.permutations(range(5)), 0, 120, 7):
        np.testing.assert_allclose(score.state(np.array(p)).total, half_logdet, rtol=1e-12)


def test_gaussian_nv_l1_node_fits_are_global_and_stationary():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(15)
    B = simulate_dag(6, 8, "ER", rng)
    W0 = simulate_parameter(B, rng=rng)
    X = simulate_linear_sem(W0, 200, "gauss", noise_scale=np.linspace(0.5, 2, 6), rng=rng)
    Xc = X - X.mean(axis=0)
    l1 = 0.05
    score = GaussianNV(l1=l1).setup(X)
    order = np.array([4, 0, 2, 5, 1, 3])
    state = score.state(order)
    # every stationary point of log(q)/2 + l1 |w|_1 is a lasso solution with alpha = l1 q,
    # so a fine grid over the lasso path bounds the global minimum from above
    for k in (2, 5):
        j, ps = order[k], order[:k]
        grid = np.inf
        for alpha in np.geomspace(1e-4, 3.0, 200):
            w = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
            w = w.fit(Xc[:, ps], Xc[:, j]).coef_
            r = Xc[:, j] - Xc[:, ps] @ w
            grid = min(grid, 0.5 * np.log(np.mean(r**2)) + l1 * np.abs(w).sum())
        assert state.node_loss[k] <= grid + 1e-10
        assert state.node_loss[k] >= grid - 1e-3  # the grid is fine enough to be close
    gap = score.kkt_gap(state)
    pos = np.argsort(order)
    assert gap[pos[:, None] < pos[None, :]].max() < 1e-10
    np.testing.assert_allclose(score.objective(state.weights()), state.total, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# least squares with L1 (elastic net per node)
# ---------------------------------------------------------------------------------------


def test_lasso_node_fits_match_cvxpy():
    cp = pytest.importorskip("cvxpy")
    X, _ = linear_data(d=6, n=120, seed=9)
    Xc = X - X.mean(axis=0)
    l1, l2 = 0.05, 0.02
    score = LeastSquares(l1=l1, l2=l2).setup(X)
    order = np.array([2, 0, 5, 1, 4, 3])
    state = score.state(order)
    W = state.weights()
    for k in range(1, 6):
        j, ps = order[k], order[:k]
        w = cp.Variable(k)
        obj = (
            cp.sum_squares(Xc[:, j] - Xc[:, ps] @ w) / (2 * 120)
            + l1 * cp.norm1(w)
            + 0.5 * l2 * cp.sum_squares(w)
        )
        val = cp.Problem(cp.Minimize(obj)).solve()
        np.testing.assert_allclose(state.node_loss[k], val, rtol=1e-6)
        np.testing.assert_allclose(W[np.sort(ps), j], w.value[np.argsort(ps)], atol=2e-4)
    np.testing.assert_allclose(score.objective(W), state.total, rtol=1e-12)
    # subgradient optimality of each node fit, independently of the solver
    gap = score.kkt_gap(state)
    pos = np.argsort(order)
    allowed = pos[:, None] < pos[None, :]
    assert gap[allowed].max() < 1e-7
    # incremental moves for the generic state equal fresh states
    perm = move_perm("swap", 3)
    new = order.copy()
    new[1:5] = new[1:5][perm]
    np.testing.assert_allclose(state.move_losses(1, 4, perm), score.state(new).node_loss[1:5])


# ---------------------------------------------------------------------------------------
# logistic
# ---------------------------------------------------------------------------------------


def binary_data(n=400, seed=10):
    rng = np.random.default_rng(seed)
    x0 = rng.random(n) < 0.5
    x1 = rng.random(n) < np.where(x0, 0.8, 0.3)
    x2 = rng.random(n) < np.where(x0 & x1, 0.9, 0.2)
    x3 = rng.random(n) < 0.4
    return np.column_stack([x0, x1, x2, x3]).astype(float)


def test_logistic_l2_matches_sklearn_with_matching_regularisation():
    from sklearn.linear_model import LogisticRegression

    X = binary_data()
    n = X.shape[0]
    l2 = 0.02
    score = Logistic(l2=l2).setup(X)
    order = np.array([0, 1, 3, 2])
    state = score.state(order)
    W = state.weights()
    b = score._intercepts_of(state)
    for k in range(1, 4):
        j, ps = order[k], np.sort(order[:k])
        clf = LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=10_000)
        clf.fit(X[:, ps], X[:, j])
        np.testing.assert_allclose(W[ps, j], clf.coef_[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b[j], clf.intercept_[0], rtol=1e-6, atol=1e-7)
    # the outer objective (intercepts profiled out) equals the inner total
    np.testing.assert_allclose(score.objective(W), state.total, rtol=1e-10)
    # gradient of the outer objective by central differences
    G = score.gradient(state)
    eps = 1e-6
    for i, j in [(2, 0), (3, 1), (0, 2), (1, 3)]:
        E = np.zeros((4, 4))
        E[i, j] = eps
        fd = (score.objective(W + E) - score.objective(W - E)) / (2 * eps)
        np.testing.assert_allclose(G[i, j], fd, rtol=1e-5, atol=1e-8)


def test_logistic_l1_matches_cvxpy():
    cp = pytest.importorskip("cvxpy")
    X = binary_data(seed=11)
    n = X.shape[0]
    l1 = 0.01
    score = Logistic(l1=l1, l2=0.0).setup(X)
    order = np.array([0, 1, 2, 3])
    state = score.state(order)
    for k in range(1, 4):
        j, ps = order[k], order[:k]
        w, b = cp.Variable(k), cp.Variable()
        m = X[:, ps] @ w + b
        obj = cp.sum(cp.logistic(m) - cp.multiply(X[:, j], m)) / n + l1 * cp.norm1(w)
        val = cp.Problem(cp.Minimize(obj)).solve()
        np.testing.assert_allclose(state.node_loss[k], val, rtol=1e-6)
        assert state.node_loss[k] <= val + 1e-9
    gap = score.kkt_gap(state)
    assert gap[np.triu_indices(4, 1)].max() < 1e-6


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_bad_inputs_have_clear_errors():
    X, _ = linear_data(d=4, n=50, seed=13)
    with pytest.raises(NonFiniteError, match="NaN"):
        Xn = X.copy()
        Xn[0, 0] = np.nan
        LeastSquares().setup(Xn)
    with pytest.raises(NonFiniteError):
        Xi = X.copy()
        Xi[1, 2] = np.inf
        GaussianNV(l1=0.0).setup(Xi)
    with pytest.raises(ValueError, match="constant columns \\[2\\]"):
        Xc = X.copy()
        Xc[:, 2] = 3.0
        LeastSquares().setup(Xc)
    with pytest.raises(ValueError, match="n > d"):
        LeastSquares().setup(X[:4])
    with pytest.raises(ValueError, match="n > d"):
        GaussianNV(l1=0.0).setup(X[:3])
    LeastSquares(l2=0.1).setup(X[:3])  # ridge handles n <= d
    with pytest.raises(ValueError, match="collinear"):
        LeastSquares().setup(np.column_stack([X, X[:, 0] + X[:, 1]]))
    with pytest.raises(ValueError, match="binary"):
        Logistic().setup(X)
    with pytest.raises(ValueError, match="l1 > 0 or l2 > 0"):
        Logistic(l2=0.0).setup(binary_data())
    with pytest.raises(ValueError, match="2-d"):
        LeastSquares().setup(X[:, 0])
    with pytest.raises(ValueError, match="nonnegative"):
        LeastSquares(l1=-1.0).setup(X)
    with pytest.raises(ValueError, match="score must be one of"):
        make_score("bogus")
    assert make_score("ls") == LeastSquares()
    # the cholesky state refuses a singular Gram matrix
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        CholeskyOrder(np.zeros((2, 2)), np.arange(2), lambda D: D)


def test_least_squares_accepts_badly_scaled_columns_and_stays_accurate():
    # raw data of a deep scale-free graph has variances from 1 to 1e9: the Gram matrix's
    # condition number passes 1e12 although the correlation matrix is well conditioned
    X, _ = linear_data(d=6, n=200, seed=3)
    Xs = X * 10.0 ** (1.5 * np.arange(6))  # variances 1 .. 1e15
    score = LeastSquares().setup(Xs)
    order = np.arange(6)
    state = score.state(order)
    Xc = Xs - Xs.mean(axis=0)
    for j in range(1, 6):
        coef, *_ = np.linalg.lstsq(Xc[:, :j], Xc[:, j], rcond=None)
        resid = Xc[:, j] - Xc[:, :j] @ coef
        expected = 0.5 * float(resid @ resid) / len(Xc)
        assert abs(state.node_loss[j] - expected) <= 1e-8 * expected
