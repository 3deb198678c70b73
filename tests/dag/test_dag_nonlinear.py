"""Nonlinear TOPO scores (additive splines, warm-started MLPs) and the first-layer acyclicity
gradient, against float64 central differences and direct refits."""

from __future__ import annotations

import numpy as np
import pytest

from bilevel.dag.acyclicity import first_layer_acyclicity
from bilevel.dag.metrics import count_accuracy, is_dag
from bilevel.dag.nonlinear import AdditiveScore, MLPScore, mlp_node_objective
from bilevel.dag.simulate import simulate_dag, simulate_nonlinear_sem
from bilevel.dag.topo import TopoSearch


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def central_diff(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e.flat[k] = eps
        g.flat[k] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_node_objective_gradient_matches_central_differences(seed):
    rng = np.random.default_rng(seed)
    n, p, h = 40, 3, 4
    Xp, y = rng.normal(size=(n, p)), rng.normal(size=n)
    l1w = np.array([0.05, 0.0, 0.2])  # one unpenalised (required) input
    v = np.concatenate([rng.uniform(0, 1, 2 * h * p), rng.normal(size=2 * h + 1)])
    f, g = mlp_node_objective(v, Xp, y, h, 0.01, l1w)
    num = central_diff(lambda x: mlp_node_objective(x, Xp, y, h, 0.01, l1w)[0], v)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    # the value is the documented formula, computed independently
    U = (v[: h * p] - v[h * p : 2 * h * p]).reshape(h, p)
    c, a, b = v[2 * h * p : 2 * h * p + h], v[2 * h * p + h : -1], v[-1]
    out = (1 / (1 + np.exp(-(Xp @ U.T + c)))) @ a + b
    ref = 0.5 * np.mean((y - out) ** 2) + 0.005 * (np.sum(U**2) + a @ a)
    ref += np.sum(l1w * (v[: h * p] + v[h * p : 2 * h * p]).reshape(h, p))
    np.testing.assert_allclose(f, ref, rtol=1e-13)


@pytest.mark.parametrize("kind", ["logdet", "expm", "poly"])
def test_first_layer_acyclicity_gradient_matches_central_differences(kind):
    rng = np.random.default_rng(3)
    d, h = 4, 3
    U = 0.3 * rng.normal(size=(d, h, d))
    for j in range(d):
        U[j, :, j] = 0.0
    val, G = first_layer_acyclicity(U, kind)
    num = central_diff(lambda V: first_layer_acyclicity(V, kind)[0], U)
    np.testing.assert_allclose(G, num, rtol=1e-6, atol=1e-9)
    assert val > 0  # dense random networks have cycles
    # networks that respect an order: h = 0 and the gradient vanishes exactly on the weights
    # whose edge closes no cycle
    U_dag = U.copy()
    for j in range(d):
        U_dag[j, :, j:] = 0.0  # node j uses inputs 0..j-1 only
    val, G = first_layer_acyclicity(U_dag, kind)
    assert abs(val) < 1e-12
    np.testing.assert_allclose(G, 0.0, atol=1e-12)  # every weight is zero or order-respecting
    with pytest.raises(ValueError, match="shape"):
        first_layer_acyclicity(U[:, :, :3], kind)


def _chain(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-2, 2, n)
    x1 = np.tanh(1.5 * x0) * 2 + 0.3 * rng.normal(size=n)
    x2 = rng.normal(size=n)  # independent of everything
    return np.column_stack([x0, x1, x2])


def test_mlp_warm_start_reuses_a_stationary_network_and_refits_otherwise():
    X = _chain()
    score = MLPScore(hidden=4, l1=0.05, max_iter=300).setup(X)
    loss1, s1 = score._fit_node(1, np.array([0]))
    fits = score.n_fits_
    net = score._params[(1, frozenset([0]))]
    # adding the independent input 2: its first-order gain is below l1 -> same network
    assert np.abs(net["grad"][:, 2]).max() <= 0.05
    loss2, s2 = score._fit_node(1, np.array([0, 2]), warm=np.array([0]))
    assert score.n_fits_ == fits  # no optimisation ran
    assert s2[1] == 0.0
    np.testing.assert_allclose([loss2, s2[0]], [loss1, s1[0]], rtol=1e-12)
    # ... and it is stationary for the new problem: the KKT gap of the added input is zero
    new = score._params[(1, frozenset([0, 2]))]
    assert np.all(np.maximum(np.abs(new["grad"][:, 2]) - 0.05, 0) == 0)
    # the stored gradient is the gradient of the smooth objective (central differences)
    h = 4
    Xs, y = score._Xs[:, [0, 2]], score._Y[:, 1]

    def smooth(U):
        v = np.concatenate([np.maximum(U, 0).ravel(), np.maximum(-U, 0).ravel(), new["c"],
                            new["a"], [new["b"]]])  # fmt: skip
        return mlp_node_objective(v, Xs, y, h, score._l2, np.zeros(2))[0]

    num = central_diff(smooth, new["U"].copy())
    np.testing.assert_allclose(new["grad"][:, [0, 2]], num, rtol=1e-5, atol=1e-8)
    # node 0 gaining its child as input: a useful input, so the network is refitted
    loss0, _ = score._fit_node(0, np.array([]))
    fits = score.n_fits_
    loss0b, _ = score._fit_node(0, np.array([1]), warm=np.array([], dtype=int))
    assert score.n_fits_ == fits + 1 and loss0b < loss0


def test_mlp_edge_strength_is_on_the_linear_scale():
    rng = np.random.default_rng(4)
    n = 400
    x0 = rng.normal(size=n) * 3.0
    X = np.column_stack([x0, 0.7 * x0 + 0.2 * rng.normal(size=n)])
    slope = np.polyfit(X[:, 0], X[:, 1], 1)[0]  # the linear path's weight
    score = MLPScore(hidden=4, l1=0.0, max_iter=500).setup(X)
    _, strength = score._fit_node(1, np.array([0]))
    np.testing.assert_allclose(strength[0], slope, rtol=0.03)
    gam = AdditiveScore().setup(X)
    _, strength = gam._fit_node(1, np.array([0]))
    np.testing.assert_allclose(strength[0], slope, rtol=0.02)


def test_additive_node_fit_is_the_ridge_regression_on_spline_features():
    from sklearn.preprocessing import SplineTransformer

    X = _chain(n=200, seed=5)
    score = AdditiveScore(n_knots=4, degree=3, l2=0.01).setup(X)
    loss, strength = score._fit_node(1, np.array([0, 2]))
    # oracle: the features built independently, the ridge solved by augmentation (lstsq)
    Z = (X - X.mean(0)) / X.std(0)
    F = SplineTransformer(n_knots=4, degree=3, knots="quantile").fit(Z).transform(Z)
    F = F.reshape(200, 3, 6)[:, [0, 2], :-1].reshape(200, 10)
    F = F - F.mean(0)
    y = X[:, 1] - X[:, 1].mean()
    A = np.vstack([F / np.sqrt(200), np.sqrt(0.01) * np.eye(10)])
    beta = np.linalg.lstsq(A, np.concatenate([y / np.sqrt(200), np.zeros(10)]), rcond=None)[0]
    ref = 0.5 * np.mean((y - F @ beta) ** 2) + 0.005 * beta @ beta
    np.testing.assert_allclose(loss, ref, rtol=1e-10)
    comp = F[:, :5] @ beta[:5]
    np.testing.assert_allclose(strength[0], comp.std() / X[:, 0].std(), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_gam_and_mlp_topo_on_small_mlp_sem(seed):
    rng = np.random.default_rng(seed)
    B = simulate_dag(5, 5, "ER", rng)
    X = simulate_nonlinear_sem(B, 400, "mlp", rng=rng)
    phases = []
    gam = TopoSearch(score="gam").fit(X)
    mlp = TopoSearch(
        score=MLPScore(hidden=5, max_iter=200),
        progress=lambda phase, done, total: phases.append(phase),
    ).fit(X)
    for est in (gam, mlp):
        assert is_dag(est.adjacency_)
        assert count_accuracy(B, est.adjacency_)["shd"] <= count_accuracy(B, 0 * B)["shd"]
    assert count_accuracy(B, mlp.adjacency_)["shd"] <= 2
    assert "search" in phases and "init" in phases  # progress on every phase
