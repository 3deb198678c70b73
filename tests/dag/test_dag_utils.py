"""Simulation, metrics, diagnostics and baselines of :mod:`bilevel.dag`.

Oracles: closed-form population covariances of linear SEMs, hand-counted accuracy on small
graphs, brute-force per-pair definitions, and matrix-power acyclicity.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bilevel.dag.baselines import empty_graph, sortnregress
from bilevel.dag.diagnostics import r2_coefficients, r2_sortability, sortability, var_sortability
from bilevel.dag.metrics import count_accuracy, is_dag
from bilevel.dag.plotting import plot_graph
from bilevel.dag.simulate import (
    simulate_dag,
    simulate_linear_sem,
    simulate_nonlinear_sem,
    simulate_parameter,
)

# --------------------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------------------


def _acyclic_by_powers(B: np.ndarray) -> bool:
    """A graph is acyclic iff no power A^k, k = 1..d, has a nonzero diagonal."""
    A = (B != 0).astype(float)
    P = np.eye(A.shape[0])
    for _ in range(A.shape[0]):
        P = P @ A
        if np.trace(P) != 0:
            return False
    return True


@pytest.mark.parametrize("graph_type", ["ER", "SF"])
def test_simulate_dag_acyclic_binary_deterministic(graph_type):
    B = simulate_dag(15, 30, graph_type, rng=3)
    assert B.shape == (15, 15)
    assert set(np.unique(B)) <= {0.0, 1.0}
    assert _acyclic_by_powers(B)
    np.testing.assert_array_equal(B, simulate_dag(15, 30, graph_type, rng=3))
    assert not np.array_equal(B, simulate_dag(15, 30, graph_type, rng=4))
    # nodes are permuted: the identity order is (almost surely) not topological
    assert not np.array_equal(B, np.triu(B)) and not np.array_equal(B, np.tril(B))


def test_simulate_dag_er_expected_edges():
    d, s0, reps = 20, 40, 300
    counts = np.array([simulate_dag(d, s0, "ER", rng=r).sum() for r in range(reps)])
    p = s0 / (d * (d - 1) / 2)
    se = np.sqrt(d * (d - 1) / 2 * p * (1 - p) / reps)  # binomial standard error of the mean
    assert abs(counts.mean() - s0) < 4 * se


def test_simulate_dag_sf_edges_and_hubs():
    d, k = 50, 4
    B = simulate_dag(d, k * d, "SF", rng=0)
    assert B.sum() == k * (d - k)  # Barabási–Albert with m = k: m (d - m) edges
    # networkx starts from the star on m + 1 nodes; every node added after it has exactly m
    # out-edges (to older nodes), and preferential attachment makes hubs with many parents
    out_deg = B.sum(axis=1)
    assert np.all(out_deg <= k) and np.sum(out_deg == k) == d - k - 1
    assert B.sum(axis=0).max() >= 3 * k


def test_simulate_dag_errors():
    with pytest.raises(ValueError, match="graph_type"):
        simulate_dag(5, 5, "XX", rng=0)
    with pytest.raises(ValueError, match="exceeds"):
        simulate_dag(4, 7, "ER", rng=0)
    with pytest.raises(ValueError, match="SF graphs"):
        simulate_dag(5, 1, "SF", rng=0)


def test_simulate_parameter_support_and_ranges():
    B = simulate_dag(30, 90, "ER", rng=1)
    W = simulate_parameter(B, rng=2)
    np.testing.assert_array_equal(W != 0, B != 0)
    w = np.abs(W[B != 0])
    assert np.all((w >= 0.5) & (w <= 2.0))
    assert (W > 0).any() and (W < 0).any()
    W2 = simulate_parameter(B, w_ranges=((1.0, 1.5),), rng=2)
    assert np.all((W2[B != 0] >= 1.0) & (W2[B != 0] <= 1.5))
    with pytest.raises(ValueError, match="w_ranges"):
        simulate_parameter(B, w_ranges=((1.0, 0.0),))


def _chain_W():
    # 0 -> 1 -> 2 and 0 -> 2, stored with a permutation to exercise the solve
    W = np.zeros((3, 3))
    W[0, 1], W[1, 2], W[0, 2] = 1.5, -0.8, 0.7
    return W


@pytest.mark.parametrize("scale", [1.0, np.array([0.5, 1.0, 2.0])])
def test_linear_sem_population_covariance(scale):
    """Gaussian linear SEM: Cov X = (I - W)^{-T} diag(s^2) (I - W)^{-1}."""
    W = _chain_W()
    n = 200_000
    X = simulate_linear_sem(W, n, "gauss", scale, rng=0)
    s2 = np.broadcast_to(np.asarray(scale, float) ** 2, (3,))
    A = np.linalg.inv(np.eye(3) - W)
    cov = A.T @ np.diag(s2) @ A
    emp = np.cov(X, rowvar=False)
    # sample covariance standard error is about sqrt(2/n) * scale^2 ~ 0.003 * |cov|
    np.testing.assert_allclose(emp, cov, rtol=0.02, atol=0.02)
    # the structural equations hold exactly: X - X W is the noise, with variance s^2
    Z = X - X @ W
    np.testing.assert_allclose(Z.var(axis=0), s2, rtol=0.02)


@pytest.mark.parametrize(
    ("noise", "check"),
    [
        ("exp", lambda Z, s: np.all(Z >= 0) and np.allclose(Z.mean(0), s, rtol=0.03)),
        (
            "uniform",
            lambda Z, s: np.all(np.abs(Z) <= s) and np.allclose(Z.var(0), s**2 / 3, rtol=0.03),
        ),
        # Gumbel(0, s): mean s * Euler-gamma, variance pi^2 s^2 / 6
        (
            "gumbel",
            lambda Z, s: (
                np.allclose(Z.mean(0), 0.5772156649 * s, rtol=0.03)
                and np.allclose(Z.var(0), np.pi**2 * s**2 / 6, rtol=0.03)
            ),
        ),
    ],
)
def test_linear_sem_noise_laws(noise, check):
    s = np.array([0.5, 1.0, 2.0])
    X = simulate_linear_sem(_chain_W(), 100_000, noise, s, rng=1)
    assert check(X - X @ _chain_W(), s)


def test_linear_sem_errors():
    W = _chain_W()
    with pytest.raises(ValueError, match="noise_type"):
        simulate_linear_sem(W, 10, "cauchy")
    with pytest.raises(ValueError, match="noise_scale"):
        simulate_linear_sem(W, 10, noise_scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="acyclic"):
        simulate_linear_sem(W + W.T, 10)
    with pytest.raises(ValueError, match="positive"):
        simulate_linear_sem(W, 10, noise_scale=0.0)


@pytest.mark.parametrize("sem_type", ["mlp", "mim"])
def test_nonlinear_sem(sem_type):
    B = simulate_dag(6, 8, "ER", rng=5)
    X = simulate_nonlinear_sem(B, 5000, sem_type, rng=0)
    assert X.shape == (5000, 6) and np.all(np.isfinite(X))
    np.testing.assert_array_equal(X, simulate_nonlinear_sem(B, 5000, sem_type, rng=0))
    roots = np.flatnonzero(B.sum(axis=0) == 0)
    children = np.flatnonzero(B.sum(axis=0) > 0)
    assert roots.size and children.size
    # roots are pure N(0, 1) noise; children add a mechanism independent of their noise
    np.testing.assert_allclose(X[:, roots].var(axis=0), 1.0, rtol=0.1)
    assert np.all(X[:, children].var(axis=0) > 1.1)
    with pytest.raises(ValueError, match="sem_type"):
        simulate_nonlinear_sem(B, 10, "gp")


def test_nonlinear_sem_mechanism_is_nonlinear():
    """A single edge 0 -> 1: the MLP mechanism leaves structure a linear fit cannot explain."""
    B = np.array([[0.0, 1.0], [0.0, 0.0]])
    X = simulate_nonlinear_sem(B, 20_000, "mim", noise_scale=[1.0, 0.1], rng=2)
    x, y = X[:, 0], X[:, 1]
    lin = np.polyval(np.polyfit(x, y, 1), x)
    poly = np.polyval(np.polyfit(x, y, 9), x)
    assert np.mean((y - poly) ** 2) < 0.5 * np.mean((y - lin) ** 2)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def test_is_dag_matches_matrix_powers():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = int(rng.integers(1, 7))
        A = (rng.random((d, d)) < 0.3).astype(float)
        assert is_dag(A) == _acyclic_by_powers(A)
    assert not is_dag(np.array([[1.0]]))  # self-loop
    assert is_dag(np.zeros((0, 0)))


def test_count_accuracy_hand_counted():
    # truth: 0 -> 1, 1 -> 2, 0 -> 3 (d = 4, 6 pairs, 3 negatives)
    T = np.zeros((4, 4))
    T[0, 1] = T[1, 2] = T[0, 3] = 1
    # estimate: 0 -> 1 correct, 2 -> 1 reversed, 2 -> 3 extra, 0 -> 3 missing
    E = np.zeros((4, 4))
    E[0, 1], E[2, 1], E[2, 3] = 0.9, -1.2, 0.4
    acc = count_accuracy(T, E)
    assert acc == {"shd": 3, "tpr": 1 / 3, "fdr": 2 / 3, "fpr": 2 / 3, "nnz": 3}
    # perfect and empty estimates
    assert count_accuracy(T, T) == {"shd": 0, "tpr": 1.0, "fdr": 0.0, "fpr": 0.0, "nnz": 3}
    assert count_accuracy(T, np.zeros((4, 4))) == {
        "shd": 3,
        "tpr": 0.0,
        "fdr": 0.0,
        "fpr": 0.0,
        "nnz": 0,
    }
    # all edges reversed: SHD counts each reversal once
    assert count_accuracy(T, T.T)["shd"] == 3


def _brute_force_accuracy(T: np.ndarray, E: np.ndarray) -> dict[str, float]:
    """Per-pair and per-edge definitions, written independently of the vectorised code."""
    d = T.shape[0]
    shd = 0
    for i, j in itertools.combinations(range(d), 2):
        if (T[i, j] != 0, T[j, i] != 0) != (E[i, j] != 0, E[j, i] != 0):
            shd += 1
    pred = [(i, j) for i in range(d) for j in range(d) if E[i, j] != 0]
    true = {(i, j) for i in range(d) for j in range(d) if T[i, j] != 0}
    tp = sum(e in true for e in pred)
    wrong = len(pred) - tp
    neg = d * (d - 1) / 2 - len(true)
    return {
        "shd": shd,
        "tpr": tp / max(len(true), 1),
        "fdr": wrong / max(len(pred), 1),
        "fpr": wrong / max(neg, 1),
        "nnz": len(pred),
    }


def test_count_accuracy_matches_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(300):
        d = int(rng.integers(2, 8))
        T = simulate_dag(d, int(rng.integers(0, d * (d - 1) // 2 + 1)), "ER", rng=rng)
        # estimates: random (possibly cyclic, even 2-cycles) sparse graphs and perturbations
        E = (rng.random((d, d)) < 0.3) * rng.normal(size=(d, d))
        if trial % 2:
            E = T * rng.normal(size=(d, d)) + E * (rng.random((d, d)) < 0.2)
        np.fill_diagonal(E, 0.0)
        got, want = count_accuracy(T, E), _brute_force_accuracy(T, E)
        assert got["shd"] == want["shd"] and got["nnz"] == want["nnz"]
        for key in ("tpr", "fdr", "fpr"):
            assert got[key] == pytest.approx(want[key], abs=1e-15)


def test_count_accuracy_errors():
    T = np.zeros((3, 3))
    with pytest.raises(ValueError, match="shape"):
        count_accuracy(T, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-cycles"):
        count_accuracy(np.ones((3, 3)) - np.eye(3), T)
    # a true 3-cycle is allowed (and scored pair by pair)
    C = np.roll(np.eye(3), 1, axis=1)
    assert (
        count_accuracy(C, C.T) == _brute_force_accuracy(C, C.T)
        and count_accuracy(C, C.T)["shd"] == 3
    )
    with pytest.raises(ValueError, match="self-loops"):
        count_accuracy(T, np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        count_accuracy(T, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="square"):
        is_dag(np.zeros((2, 3)))


# --------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------


def test_sortnregress_recovers_var_sortable_graph():
    """Unit weights and equal noise: variance grows along the order, so the order is right
    and the adaptive Lasso recovers the support and the weights (OLS oracle on the truth)."""
    B = simulate_dag(8, 12, "ER", rng=2)
    W = simulate_parameter(B, w_ranges=((0.8, 1.2),), rng=3)
    X = simulate_linear_sem(W, 5000, rng=4)
    W_est = sortnregress(X)
    assert is_dag(W_est)
    assert count_accuracy(B, W_est)["shd"] == 0
    for j in range(8):
        pa = np.flatnonzero(B[:, j])
        if pa.size:
            Xc = X - X.mean(axis=0)
            ols = np.linalg.lstsq(Xc[:, pa], Xc[:, j], rcond=None)[0]
            np.testing.assert_allclose(W_est[pa, j], ols, atol=0.02)


def test_sortnregress_r2_is_scale_invariant():
    B = simulate_dag(6, 8, "ER", rng=0)
    X = simulate_linear_sem(simulate_parameter(B, rng=1), 2000, rng=2)
    scales = np.array([0.1, 3.0, 1.0, 20.0, 0.5, 2.0])
    W1 = sortnregress(X, order_by="r2")
    W2 = sortnregress(X * scales, order_by="r2")
    # rescaling X_i by a_i rescales W[i, j] by a_j / a_i; the support is unchanged
    np.testing.assert_array_equal(W1 != 0, W2 != 0)
    np.testing.assert_allclose(W2, W1 * scales[None, :] / scales[:, None], rtol=1e-6, atol=1e-9)


def test_baseline_errors_and_empty_graph():
    X = np.random.default_rng(0).normal(size=(20, 4))
    np.testing.assert_array_equal(empty_graph(X), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sortnregress(np.where(X > 1, np.nan, X))
    with pytest.raises(ValueError, match="n > d"):
        sortnregress(X[:4])
    with pytest.raises(ValueError, match="2-d"):
        empty_graph(X[0])
    with pytest.raises(ValueError, match="order_by"):
        sortnregress(X, order_by="mean")


# --------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------


def _brute_force_sortability(s: np.ndarray, B: np.ndarray, tol: float) -> float:
    """Enumerate every directed path by depth-first search and score its endpoints."""
    d = B.shape[0]
    num = den = 0.0

    def walk(start: int, node: int) -> None:
        nonlocal num, den
        for child in np.flatnonzero(B[node]):
            den += 1
            if abs(s[child] - s[start]) <= tol * abs(s[start]):
                num += 0.5
            elif s[child] > s[start]:
                num += 1
            walk(start, int(child))

    for i in range(d):
        walk(i, i)
    return num / den


def test_sortability_matches_path_enumeration():
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = int(rng.integers(2, 8))
        B = simulate_dag(d, int(rng.integers(1, d * (d - 1) // 2 + 1)), "ER", rng=rng)
        if not B.any():
            continue
        s = rng.choice([0.5, 1.0, 2.0, 3.0], size=d)  # repeated values exercise ties
        assert sortability(s, B, tol=1e-12) == pytest.approx(
            _brute_force_sortability(s, B, 1e-12), abs=1e-14
        )


def test_var_sortability_chain_and_standardized():
    # chain 0 -> 1 -> 2 -> 3 with unit weights and unit noise: variances 1, 2, 3, 4
    W = np.diag(np.ones(3), k=1)
    X = simulate_linear_sem(W, 20_000, rng=0)
    assert var_sortability(X, W) == 1.0
    assert var_sortability(X[:, ::-1], W[::-1, ::-1].T) == 0.0  # anti-causal labelling
    Xs = (X - X.mean(0)) / X.std(0)
    assert var_sortability(Xs, W, tol=1e-9) == 0.5
    # R²-sortability is scale invariant
    assert r2_sortability(Xs, W) == r2_sortability(X, W)
    assert np.isnan(var_sortability(X, np.zeros((4, 4))))


def test_r2_coefficients_match_regressions():
    X = simulate_linear_sem(simulate_parameter(simulate_dag(5, 6, "ER", rng=1), rng=2), 300, rng=3)
    r2 = r2_coefficients(X)
    for j in range(5):
        others = np.delete(np.column_stack([np.ones(300), X]), j + 1, axis=1)
        resid = X[:, j] - others @ np.linalg.lstsq(others, X[:, j], rcond=None)[0]
        np.testing.assert_allclose(r2[j], 1 - resid.var() / X[:, j].var(), rtol=1e-10)


def test_sortability_high_on_simulated_benchmarks():
    """The simulated-benchmark artefact the diagnostics exist to expose (Reisach et al.)."""
    B = simulate_dag(20, 40, "ER", rng=0)
    X = simulate_linear_sem(simulate_parameter(B, rng=1), 2000, rng=2)
    assert var_sortability(X, B) > 0.9
    with pytest.raises(ValueError, match="not a DAG"):
        var_sortability(X, np.ones((20, 20)))
    with pytest.raises(ValueError, match="shape"):
        r2_sortability(X, B[:5, :5])


# --------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------


def test_plot_graph_draws_every_edge(tmp_path):
    from matplotlib.patches import FancyArrowPatch

    B = simulate_dag(6, 7, "ER", rng=0)
    W = simulate_parameter(B, rng=1)
    fig = plot_graph(W, list("abcdef"), title="t", path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == int(B.sum())
    # against a truth: learned edges plus the dashed missing ones
    W_est = W.copy()
    i, j = np.argwhere(B)[0]
    W_est[i, j] = 0.0
    fig = plot_graph(W_est, B_true=B)
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == int(B.sum())
    assert sum(p.get_linestyle() == "dashed" for p in arrows) == 1
    with pytest.raises(ValueError, match="names"):
        plot_graph(W, ["a"])
