"""Prior knowledge, BIC pruning, bootstrap stability and CPDAG metrics of bilevel.dag."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from bilevel.dag.metrics import count_accuracy, cpdag, is_dag, shd_cpdag
from bilevel.dag.prior import prior_knowledge
from bilevel.dag.scores import GaussianNV, LeastSquares, bic_backward
from bilevel.dag.simulate import simulate_dag, simulate_linear_sem, simulate_parameter
from bilevel.dag.topo import TopoSearch


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def problem(d=6, k=2, n=500, seed=0):
    rng = np.random.default_rng(seed)
    B = simulate_dag(d, min(k * d, d * (d - 1) // 2), "ER", rng)
    W = simulate_parameter(B, rng=rng)
    return simulate_linear_sem(W, n, rng=rng), B


def precedes(order, i, j):
    pos = np.empty(len(order), int)
    pos[order] = np.arange(len(order))
    return pos[i] < pos[j]


# ---------------------------------------------------------------------------------------
# prior knowledge
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "score"),
    [(s, sc) for s in (0, 1, 2) for sc in ("ls", "nv", "gam")] + [(0, "mlp")],
)
def test_search_respects_required_forbidden_and_tiers(seed, score):
    X, B = problem(seed=seed)
    d = B.shape[0]
    i, j = np.argwhere(B)[0]  # a true edge
    est = TopoSearch(score=score).fit(X, forbidden=[(i, j)], required=[(j, i)])
    A = est.adjacency_
    assert A[i, j] == 0 and A[j, i] != 0 and is_dag(A)
    assert est.raw_adjacency_[i, j] == 0  # never fitted, not only pruned
    assert precedes(est.order_, j, i)
    # tiers: a random split; no edge may point back to an earlier tier
    tiers = np.random.default_rng(seed).integers(0, 3, d)
    est = TopoSearch(score=score).fit(X, tiers=tiers)
    src, dst = np.nonzero(est.raw_adjacency_)
    assert np.all(tiers[src] <= tiers[dst])
    assert np.all(np.diff(tiers[est.order_]) >= 0)


def test_forbidden_edges_give_the_exact_constrained_fit():
    """With a forbidden edge the least-squares state fits every node on its allowed
    predecessors; the score equals F of the returned weights, and each column is the OLS
    fit on exactly those predecessors (lstsq oracle)."""
    X, B = problem(d=5, seed=3)
    forbidden = [tuple(e) for e in np.argwhere(B)[:2]]
    est = TopoSearch(score="ls", prune="none").fit(X, forbidden=forbidden)
    score = LeastSquares().setup(X)
    np.testing.assert_allclose(est.score_, score.objective(est.raw_adjacency_), rtol=1e-10)
    Xc = X - X.mean(0)
    F = np.zeros((5, 5), bool)
    for a, b in forbidden:
        F[a, b] = True
    for k, j in enumerate(est.order_):
        ps = [p for p in est.order_[:k] if not F[p, j]]
        w = np.linalg.lstsq(Xc[:, ps], Xc[:, j], rcond=None)[0] if ps else []
        np.testing.assert_allclose(est.raw_adjacency_[ps, j], w, rtol=1e-8, atol=1e-10)
        assert np.all(est.raw_adjacency_[F[:, j], j] == 0)


def test_required_parents_are_unpenalised_in_l1_fits():
    """Partialling the required parents out of the lasso is exact: compare with a direct
    L-BFGS-B solve of the split problem with no L1 on the required weight."""
    X, _ = problem(d=4, n=300, seed=4)
    score = LeastSquares(l1=0.3, l2=0.01).setup(X)
    req = np.zeros((4, 4), bool)
    req[0, 3] = True
    score.constrain(None, req)
    ps = np.array([0, 1, 2])
    loss, w = score._fit_node(3, ps)
    S = score._S
    pen = np.array([0.0, 0.3, 0.3])

    def f(x):
        v = x[:3] - x[3:]
        val = 0.5 * (S[3, 3] - 2 * S[ps, 3] @ v + v @ S[np.ix_(ps, ps)] @ v) + 0.005 * v @ v
        g = -S[ps, 3] + S[np.ix_(ps, ps)] @ v + 0.01 * v
        return val + pen @ (x[:3] + x[3:]), np.concatenate([g + pen, -g + pen])

    res = minimize(f, np.zeros(6), jac=True, method="L-BFGS-B", bounds=[(0, None)] * 6,
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})  # fmt: skip
    np.testing.assert_allclose(w, res.x[:3] - res.x[3:], atol=1e-6)
    np.testing.assert_allclose(loss, res.fun, rtol=1e-9)
    # the same for the Gaussian NV score (log of the residual variance)
    nv = GaussianNV(l1=0.05).setup(X)
    nv.constrain(None, req)
    loss_nv, w_nv = nv._fit_node(3, ps)

    lw = np.array([0.0, 0.05, 0.05])

    def g_nv(x):
        v = x[:3] - x[3:]
        r = S[np.ix_(ps, ps)] @ v - S[ps, 3]
        q = S[3, 3] - 2 * S[ps, 3] @ v + v @ S[np.ix_(ps, ps)] @ v
        g = r / q
        return 0.5 * np.log(q) + lw @ (x[:3] + x[3:]), np.concatenate([g + lw, -g + lw])

    starts = [np.zeros(6), np.concatenate([np.maximum(w_nv, 0), np.maximum(-w_nv, 0)])]
    starts += [np.random.default_rng(k).uniform(0, 1, 6) for k in range(5)]
    best = min(
        (minimize(g_nv, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * 6,
                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000}).fun
         for x0 in starts),
    )  # fmt: skip
    np.testing.assert_allclose(loss_nv, best, rtol=1e-8)
    # first-order conditions from scratch: the required weight is at a stationary point
    q = S[3, 3] - 2 * S[ps, 3] @ w_nv + w_nv @ S[np.ix_(ps, ps)] @ w_nv
    grad = (S[np.ix_(ps, ps)] @ w_nv - S[ps, 3]) / q
    assert abs(grad[0]) < 1e-8


def test_prior_knowledge_validation():
    with pytest.raises(ValueError, match="both required and forbidden"):
        prior_knowledge(3, required=[(0, 1)], forbidden=[(0, 1)])
    with pytest.raises(ValueError, match="cycle"):
        prior_knowledge(3, required=[(0, 1), (1, 2), (2, 0)])
    with pytest.raises(ValueError, match="tier"):
        prior_knowledge(3, required=[(1, 0)], tiers=[0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        prior_knowledge(3, forbidden=[(0, 5)])
    with pytest.raises(ValueError, match="tiers must be"):
        prior_knowledge(3, tiers=[0, 1])
    pk = prior_knowledge(4, required=[(2, 0)], tiers=[0, 0, 0, 1])
    order = pk.repair(np.array([3, 0, 1, 2]))
    assert order.tolist() == [1, 2, 0, 3]  # stable: keeps 1 before 2 before 3's tier
    assert pk.feasible(order) and not pk.feasible(np.array([3, 0, 1, 2]))


# ---------------------------------------------------------------------------------------
# BIC pruning
# ---------------------------------------------------------------------------------------


def brute_backward(Z, y, groups, keep):
    """Oracle: the same backward elimination with a fresh lstsq for every candidate."""
    n = len(y)
    kept = list(range(len(groups)))

    def bic(S):
        cols = [c for g in S for c in groups[g]]
        r = y - Z[:, cols] @ np.linalg.lstsq(Z[:, cols], y, rcond=None)[0] if cols else y
        return n * np.log(r @ r / n) + len(cols) * np.log(n)

    while True:
        cur = bic(kept)
        trials = [(bic([g for g in kept if g != t]) - cur, t) for t in kept if not keep[t]]
        if not trials or min(trials)[0] >= 0:
            return np.isin(np.arange(len(groups)), kept)
        kept.remove(min(trials)[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bic_backward_matches_refitting_oracle(seed):
    rng = np.random.default_rng(seed)
    n, p = 120, 7
    Z = rng.normal(size=(n, p))
    Z[:, 3] += 0.8 * Z[:, 0]  # some collinearity
    y = 1.0 * Z[:, 0] - 0.4 * Z[:, 2] + 0.15 * Z[:, 5] + rng.normal(size=n)
    groups = [np.array([0]), np.array([1, 2]), np.array([3]), np.array([4, 5, 6])]
    keep = np.array([False, False, seed % 2 == 1, False])
    got = bic_backward(Z.T @ Z / n, Z.T @ y / n, y @ y / n, n, groups, keep)
    np.testing.assert_array_equal(got, brute_backward(Z, y, groups, keep))
    singles = [np.array([t]) for t in range(p)]
    got = bic_backward(Z.T @ Z / n, Z.T @ y / n, y @ y / n, n, singles, np.zeros(p, bool))
    np.testing.assert_array_equal(got, brute_backward(Z, y, singles, np.zeros(p, bool)))


def test_prune_removes_spurious_hub_edges_and_keeps_required_ones():
    X, B = problem(d=12, k=4, n=400, seed=5)
    raw = TopoSearch(prune="none").fit(X)
    bic = TopoSearch(prune="bic").fit(X)
    np.testing.assert_array_equal(raw.order_, bic.order_)  # pruning only reads the result
    assert count_accuracy(B, bic.adjacency_)["shd"] <= count_accuracy(B, raw.adjacency_)["shd"]
    # a required non-edge survives pruning and the threshold
    i, j = next((a, b) for a, b in itertools.permutations(range(12), 2)
                if not B[a, b] and not B[b, a] and precedes(bic.order_, a, b))  # fmt: skip
    req = TopoSearch(prune="bic").fit(X, required=[(i, j)])
    assert req.adjacency_[i, j] != 0
    with pytest.raises(ValueError, match="prune"):
        TopoSearch(prune="bic", score=LeastSquares(l1=0.1)).fit(X)


# ---------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------


def test_bootstrap_edge_stability_with_joblib_workers():
    X, B = problem(d=5, n=300, seed=6)
    calls = []
    est = TopoSearch(n_bootstrap=4, n_jobs=2, random_state=0,
                     progress=lambda p, done, total: calls.append((p, done, total))).fit(X)  # fmt: skip
    S = est.edge_stability_
    assert S.shape == (5, 5) and np.all((S * 4) == np.round(S * 4))
    # easy instance: every true edge in every bootstrap fit, the frequencies reproducible
    assert np.all(S[B != 0] == 1.0)
    again = TopoSearch(n_bootstrap=4, n_jobs=1, random_state=0).fit(X)
    np.testing.assert_array_equal(again.edge_stability_, S)
    assert ("bootstrap", 4, 4) in calls
    assert TopoSearch().fit(X).edge_stability_ is None


# ---------------------------------------------------------------------------------------
# CPDAG
# ---------------------------------------------------------------------------------------


def test_cpdag_small_cases():
    chain = np.zeros((3, 3))
    chain[0, 1] = chain[1, 2] = 1
    C = cpdag(chain)
    assert C[0, 1] and C[1, 0] and C[1, 2] and C[2, 1]  # all undirected
    collider = np.zeros((4, 4))
    collider[0, 2] = collider[1, 2] = collider[2, 3] = 1
    C = cpdag(collider)
    assert C[0, 2] and not C[2, 0] and C[1, 2] and not C[2, 1]
    assert C[2, 3] and not C[3, 2]  # Meek R1
    with pytest.raises(ValueError, match="not a DAG"):
        cpdag(np.ones((2, 2)) - np.eye(2))


@pytest.mark.parametrize("seed", range(6))
def test_shd_cpdag_zero_exactly_on_markov_equivalent_dags(seed):
    rng = np.random.default_rng(seed)
    B = simulate_dag(7, 9, "ER", rng)
    # reversing a covered edge (pa(j) = pa(i) + {i}) gives a Markov-equivalent DAG
    covered = [(i, j) for i, j in np.argwhere(B)
               if set(np.flatnonzero(B[:, j])) == set(np.flatnonzero(B[:, i])) | {i}]  # fmt: skip
    for i, j in covered:
        E = B.copy()
        E[i, j], E[j, i] = 0, 1
        assert is_dag(E) and shd_cpdag(B, E) == 0
    # reversing a non-covered edge changes the v-structures when it keeps acyclicity
    for i, j in np.argwhere(B):
        if (i, j) in covered:
            continue
        E = B.copy()
        E[i, j], E[j, i] = 0, 1
        if is_dag(E):
            assert shd_cpdag(B, E) > 0
    assert shd_cpdag(B, B) == 0
    assert shd_cpdag(B, np.zeros_like(B)) == int(B.sum())
