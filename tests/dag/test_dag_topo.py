"""TopoSearch: recovery, global optimality by brute force, KKT at termination, post-processing."""

from __future__ import annotations

import itertools
import warnings

import networkx as nx
import numpy as np
import pytest

from bilevel.dag.baselines import sortnregress
from bilevel.dag.metrics import count_accuracy, is_dag
from bilevel.dag.nonlinear import MLPScore
from bilevel.dag.scores import GaussianNV, LeastSquares, Logistic
from bilevel.dag.simulate import simulate_dag, simulate_linear_sem, simulate_parameter
from bilevel.dag.topo import TopoSearch, topological_order
from bilevel.errors import ConvergenceWarning, NonFiniteError


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small dense problems: multi-threaded BLAS only adds contention."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def linear_problem(d, k=2, n=2000, seed=0, graph="ER", w_ranges=((-2.0, -0.8), (0.8, 2.0))):
    rng = np.random.default_rng(seed)
    B = simulate_dag(d, min(k * d, d * (d - 1) // 2), graph, rng)
    W = simulate_parameter(B, w_ranges=w_ranges, rng=rng)
    X = simulate_linear_sem(W, n, "gauss", rng=rng)
    return X, B, W


def check_kkt_independently(score, X, est, tol):
    """KKT conditions of min F(W) s.t. h(W) = 0 at est.raw_adjacency_, computed from scratch.

    For every pair (i, j) such that the edge i -> j closes no cycle in supp(W) (checked with
    networkx), 0 must lie in the subdifferential of F in W_ij: |G_ij| <= l1 if W_ij == 0 and
    G_ij + l1 sign(W_ij) == 0 otherwise, with G the gradient of the smooth part.
    """
    W = est.raw_adjacency_
    d = W.shape[0]
    Xc = X - X.mean(axis=0)
    n = X.shape[0]
    R = Xc - Xc @ W
    if isinstance(score, GaussianNV):  # d/dW_ij of log(|R_j|^2 / n) / 2
        G = -Xc.T @ R / np.sum(R * R, axis=0)[None, :]
    else:
        G = -Xc.T @ R / n + score.l2 * W
    g = nx.DiGraph()
    g.add_nodes_from(range(d))
    g.add_edges_from(zip(*np.nonzero(W), strict=True))
    worst = 0.0
    for i, j in itertools.permutations(range(d), 2):
        if nx.has_path(g, j, i):
            continue
        if W[i, j] != 0:
            gap = abs(G[i, j] + score.l1 * np.sign(W[i, j]))
        else:
            gap = max(abs(G[i, j]) - score.l1, 0.0)
        worst = max(worst, gap)
    assert worst <= tol, worst
    return worst


# ---------------------------------------------------------------------------------------
# recovery and optimality
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,seed", [(5, 0), (7, 1), (10, 2)])
@pytest.mark.parametrize("init", ["auto", "random"])
def test_exact_recovery_on_small_well_conditioned_graphs(d, seed, init):
    X, B, _ = linear_problem(d, seed=seed)
    est = TopoSearch(init=init, random_state=seed).fit(X)
    assert count_accuracy(B, est.adjacency_ != 0)["shd"] == 0
    assert is_dag(est.adjacency_)
    # the score reached is no worse than the inner optimum for the true graph's order
    score = LeastSquares().setup(X)
    true_order = topological_order(B)
    assert est.score_ <= score.state(true_order).total + 1e-12
    np.testing.assert_allclose(est.score_, score.objective(est.raw_adjacency_), rtol=1e-10)
    # edges go forward in order_
    pos = np.argsort(est.order_)
    src, dst = np.nonzero(est.raw_adjacency_)
    assert np.all(pos[src] < pos[dst])
    assert est.converged_


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_optimum_by_brute_force_over_orders(seed):
    # weak signal and few samples so that local optima exist
    X, _, _ = linear_problem(5, k=2, n=30, seed=seed, w_ranges=((-1.0, -0.2), (0.2, 1.0)))
    for score in (LeastSquares(), GaussianNV(l1=0.05), LeastSquares(l2=0.5), LeastSquares(l1=0.1)):
        bound = score.setup(X)
        best = min(bound.state(np.array(p)).total for p in itertools.permutations(range(5)))
        est = TopoSearch(score=score, init="random", n_restarts=5, random_state=seed).fit(X)
        np.testing.assert_allclose(est.score_, best, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"search": "paper", "init": "random"},
        {"search": "paper", "size_small": 1, "size_large": 1, "max_large_searches": 0},
    ],
)
@pytest.mark.parametrize("score", [LeastSquares(l1=0.05, l2=0.01), GaussianNV(l1=0.02)])
def test_kkt_conditions_hold_at_termination_with_l1(params, score):
    X, _, _ = linear_problem(8, k=2, n=300, seed=3)
    est = TopoSearch(score=score, random_state=0, **params).fit(X)
    assert est.converged_
    # sklearn's coordinate descent stops at tol 1e-12 on the dual gap; 1e-6 on gradients
    worst = check_kkt_independently(score, X, est, tol=1e-6)
    assert est.kkt_violation_ <= 1e-6
    np.testing.assert_allclose(est.kkt_violation_, worst, atol=1e-9)
    assert is_dag(est.raw_adjacency_)


def test_kkt_repair_moves_lower_the_score_for_every_violating_pair():
    X, _, _ = linear_problem(8, k=2, n=300, seed=4)
    score = LeastSquares(l1=0.1)
    bound = score.setup(X)
    est = TopoSearch(score=score)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(8)
        state = bound.state(order)
        W = state.weights()
        pos = np.argsort(order)
        G = -bound._S + bound._S @ W
        g = nx.DiGraph()
        g.add_nodes_from(range(8))
        g.add_edges_from(zip(*np.nonzero(W), strict=True))
        violating = [
            (i, j)
            for i, j in itertools.permutations(range(8), 2)
            if pos[i] > pos[j] and not nx.has_path(g, j, i) and abs(G[i, j]) > 0.1 + 1e-6
        ]
        moves = est._kkt_moves(bound, state, pos, tol=0.0)
        # one strictly improving move per violating pair
        assert len(moves) == len(violating)
        for delta, a, b, perm in moves:
            assert delta < 0
            new = order.copy()
            new[a : b + 1] = new[a : b + 1][perm]
            np.testing.assert_allclose(bound.state(new).total - state.total, delta, rtol=1e-8)
            # the new order still admits every edge of W
            p2 = np.argsort(new)
            src, dst = np.nonzero(W)
            assert np.all(p2[src] < p2[dst])


def test_kkt_conditions_hold_for_least_squares():
    X, _, _ = linear_problem(8, k=2, n=300, seed=4)
    est = TopoSearch().fit(X)
    check_kkt_independently(LeastSquares(), X, est, tol=1e-8)


def test_paper_search_from_random_order_stalls_where_wide_search_does_not():
    """The failure mode of the official code (random init, paper candidate sets) on a dense
    graph, and the fix: the wide search from the same random order reaches a lower score."""
    X, _, _ = linear_problem(20, k=4, n=1000, seed=5, w_ranges=((-2.0, -0.5), (0.5, 2.0)))
    paper = TopoSearch(init="random", search="paper", random_state=0).fit(X)
    wide = TopoSearch(init="random", search="wide", random_state=0).fit(X)
    auto = TopoSearch().fit(X)
    assert wide.score_ < paper.score_
    assert auto.score_ <= paper.score_


def test_auto_search_is_wide_only_for_factorised_scores():
    X, _, _ = linear_problem(8, k=2, n=300, seed=5)
    wide = TopoSearch(init="random", random_state=0).fit(X)
    # the final pass of a wide search visits every forbidden pair: a swap or insertion that
    # improves can no longer exist, checked against the fresh state of every such move
    score = LeastSquares().setup(X)
    order = wide.order_
    for a, b in itertools.combinations(range(8), 2):
        for perm in (np.r_[b - a, 1 : b - a, 0], np.r_[b - a, 0 : b - a], np.r_[1 : b - a + 1, 0]):
            new = order.copy()
            new[a : b + 1] = new[a : b + 1][perm]
            assert score.state(new).total >= wide.score_ - 1e-12
    records = []
    TopoSearch(score=LeastSquares(l1=0.05), init="random", callback=records.append).fit(X)
    assert all(r["stage"] != "wide" for r in records)


@pytest.mark.parametrize("acyclicity", ["logdet", "expm", "poly"])
def test_acyclicity_choices_all_work(acyclicity):
    X, B, _ = linear_problem(6, seed=6)
    est = TopoSearch(acyclicity=acyclicity, init="random", random_state=0).fit(X)
    assert count_accuracy(B, est.adjacency_ != 0)["shd"] == 0


# ---------------------------------------------------------------------------------------
# post-processing
# ---------------------------------------------------------------------------------------


def test_post_processing_never_worsens_a_given_w():
    X, _, W_true = linear_problem(10, k=2, n=500, seed=7)
    score = LeastSquares().setup(X)
    rng = np.random.default_rng(0)
    givens = [sortnregress(X), W_true, np.zeros((10, 10))]
    # a wrong graph: the true one with half its edges reversed
    Wr = W_true.copy()
    for i, j in zip(*np.nonzero(W_true), strict=True):
        if rng.random() < 0.5:
            Wr[j, i], Wr[i, j] = Wr[i, j], 0.0
    if is_dag(Wr):
        givens.append(Wr)
    for Wg in givens:
        est = TopoSearch(search="paper").fit(X, init=Wg)
        assert est.score_ <= score.objective(Wg) + 1e-12
        # and the starting order's inner optimum is itself no worse than Wg
        assert score.state(topological_order(Wg)).total <= score.objective(Wg) + 1e-12
    # an order works as init too
    est = TopoSearch().fit(X, init=np.arange(10)[::-1])
    assert est.score_ <= score.state(np.arange(10)[::-1]).total
    with pytest.raises(ValueError, match="cycle"):
        TopoSearch().fit(X, init=W_true + W_true.T)
    with pytest.raises(ValueError, match="permutation"):
        TopoSearch().fit(X, init=np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="self-loops"):
        TopoSearch().fit(X, init=np.eye(10))


# ---------------------------------------------------------------------------------------
# other scores
# ---------------------------------------------------------------------------------------


def test_logistic_score_on_binary_data():
    rng = np.random.default_rng(8)
    n = 2000
    x0 = rng.random(n) < 0.5
    x1 = rng.random(n) < np.where(x0, 0.9, 0.1)
    x2 = rng.random(n) < np.where(x1, 0.85, 0.15)
    X = np.column_stack([x0, x1, x2]).astype(float)
    est = TopoSearch(score=Logistic(l2=1e-3), w_threshold=1.0).fit(X)
    assert is_dag(est.adjacency_)
    skeleton = (est.adjacency_ != 0) | (est.adjacency_ != 0).T
    np.testing.assert_array_equal(skeleton, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    score = Logistic(l2=1e-3).setup(X)
    np.testing.assert_allclose(est.score_, score.objective(est.raw_adjacency_), rtol=1e-9)
    assert est.kkt_violation_ < 1e-6


def test_mlp_score_runs_on_a_tiny_nonlinear_chain():
    rng = np.random.default_rng(9)
    n = 150
    x0 = rng.uniform(-2, 2, n)
    x1 = np.tanh(2 * x0) + 0.1 * rng.normal(size=n)
    X = np.column_stack([x0, x1])
    est = TopoSearch(score=MLPScore(hidden=4, max_iter=200), w_threshold=0.1).fit(X)
    assert is_dag(est.adjacency_)
    assert np.count_nonzero(est.adjacency_) == 1


# ---------------------------------------------------------------------------------------
# API, progress, errors
# ---------------------------------------------------------------------------------------


def test_sklearn_conventions():
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    est = TopoSearch(score=LeastSquares(l1=0.1), w_threshold=0.2)
    check_no_attributes_set_in_init("TopoSearch", est)
    check_parameters_default_constructible("TopoSearch", est)
    check_get_params_invariance("TopoSearch", est)
    check_set_params("TopoSearch", est)
    c = clone(est)
    assert c.get_params()["w_threshold"] == 0.2 and c.score == est.score
    assert est.set_params(w_threshold=0.5) is est and est.w_threshold == 0.5
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(bogus=1)
    assert "w_threshold=0.5" in repr(est)


def test_callback_verbose_determinism_and_restarts(capsys):
    X, _, _ = linear_problem(8, k=2, n=200, seed=10)
    records = []
    est = TopoSearch(init="random", random_state=3, callback=records.append, verbose=True)
    est.fit(X)
    assert records and records == est.history_
    assert [r["iteration"] for r in records if r["restart"] == 0] == list(range(1, est.n_iter_ + 1))
    assert all(b["score"] < a["score"] for a, b in itertools.pairwise(records))
    assert "[topo]" in capsys.readouterr().out
    again = TopoSearch(init="random", random_state=3).fit(X)
    np.testing.assert_array_equal(again.order_, est.order_)
    more = TopoSearch(init="random", random_state=3, n_restarts=3).fit(X)
    assert more.score_ <= est.score_ + 1e-12


def test_max_iter_warns():
    X, _, _ = linear_problem(8, k=2, n=200, seed=11)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        est = TopoSearch(init="random", max_iter=1, random_state=0).fit(X)
    assert not est.converged_


def test_bad_input_and_parameters():
    X, _, _ = linear_problem(5, seed=12, n=100)
    with pytest.raises(NonFiniteError):
        Xn = X.copy()
        Xn[3, 1] = np.nan
        TopoSearch().fit(Xn)
    with pytest.raises(ValueError, match="constant"):
        Xc = X.copy()
        Xc[:, 0] = 1.0
        TopoSearch().fit(Xc)
    with pytest.raises(ValueError, match="n > d"):
        TopoSearch().fit(X[:5])
    with pytest.raises(ValueError, match="binary"):
        TopoSearch(score="logistic").fit(X)
    for bad in (
        {"init": "nope"},
        {"search": "deep"},
        {"acyclicity": "trace"},
        {"w_threshold": -1},
        {"n_restarts": -1},
        {"max_iter": 0},
        {"size_small": 0},
        {"size_large": 100},
        {"grad_tol": np.nan},
        {"score": "nope"},
        {"init": "greedy", "score": "logistic"},
    ):
        Xb = (X > 0).astype(float) if bad.get("score") == "logistic" else X
        with pytest.raises(ValueError):
            TopoSearch(**bad).fit(Xb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = TopoSearch().fit(X[:, :1])  # one node: nothing to search
    assert est.order_.tolist() == [0] and est.adjacency_.shape == (1, 1)


def test_acyclicity_gradient_stays_finite_when_path_sums_overflow():
    # a chain of weight 5 over 500 nodes: the path sums of (I - A)^{-1} reach 5^499 and
    # overflow at s = 1; the ranking matrix must stay finite with the cycle pattern intact
    rng = np.random.default_rng(0)
    d = 500
    A = np.diag(np.full(d - 1, 5.0), 1)
    A += np.triu(rng.uniform(0.5, 2.0, (d, d)) * (rng.random((d, d)) < 1.0 / d), 2)
    perm = rng.permutation(d)
    A = A[perm][:, perm]
    with np.errstate(over="ignore", invalid="ignore"):
        G = TopoSearch()._grad_h(A)
    assert np.all(np.isfinite(G))
    reach = nx.to_numpy_array(nx.transitive_closure_dag(nx.DiGraph(A)), nodelist=range(d)) > 0
    expected = reach.T | np.eye(d, dtype=bool)  # G_ij > 0 iff a path j -> i (or i == j)
    assert np.array_equal(G > 0, expected)
