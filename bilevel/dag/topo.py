"""TOPO: DAG learning by topological swaps (Deng, Bello, Aragam and Ravikumar, ICML 2023).

The NOTEARS-type problem ``min_W F(W) s.t. h(W) = 0`` is solved as a bilevel problem:

* inner: for a topological order ``pi``, ``W*(pi) = argmin {F(W) : W_ij = 0 unless i precedes
  j in pi}`` -- one fit per node, read from a Cholesky factor for least-squares scores
  (see :mod:`bilevel.dag._order` and :mod:`bilevel.dag.scores`);
* outer: a local search over orders. For ``W = W*(pi)`` the pairs ``(i, j)`` with ``i`` after
  ``j`` (edge ``i -> j`` forbidden) are ranked by ``[grad_A h(|W|)]_ij``, which is zero exactly
  when the edge would close no cycle and small when it closes only weak ones; pairs whose
  edge cannot lower the score to first order (KKT gap ``<= grad_tol``) are dropped. The
  ``size_small`` best pairs are tried first, then the ``size_large`` best; each try swaps
  ``i`` and ``j`` in ``pi`` and rescores only the positions between them. Improving swaps
  are applied greedily (best first) as long as their position ranges do not overlap, so
  their gains add up exactly.

Stopping: the search stops when no candidate improves the score *and* ``W*(pi)`` satisfies
the KKT conditions of the paper (Wei et al. 2020's reformulation): for every pair ``(i, j)``
such that adding ``i -> j`` to the support of ``W`` closes no cycle, ``0`` is in the
subdifferential of ``F`` in ``W_ij`` (up to ``kkt_tol``). A violating pair is repaired by a
move that is guaranteed to lower the score: inside the positions between ``j`` and ``i`` the
ancestors of ``i`` are moved in front, which keeps ``W`` feasible and admits the edge
``i -> j``.

Beyond the official code (which stalls on dense graphs from a random order):

* ``init="auto"``: a cheap initial order -- for least-squares-type scores the top-down greedy
  order (smallest residual variance given the nodes already placed), otherwise the order of
  increasing variance used by sortnregress;
* ``search="wide"``: when the paper's candidate sets are exhausted, all forbidden pairs are
  tried, each with three moves (swap; move ``i`` just before ``j``; move ``j`` just after
  ``i``), before stopping (the default, ``"auto"``, uses it for the scores whose moves are
  scored from a factorisation: least squares and Gaussian NV without L1);
* ``n_restarts``: iterated local search -- perturb the best order by random swaps and search
  again, keeping the best.

Post-processing (the paper's advertised use): ``fit(X, init=W)`` starts from a topological
order of the support of a given acyclic ``W`` (or ``init=order``); the result's ``score_`` is
never larger than ``F(W)`` because ``W`` is feasible for that order and the search only
decreases the score.
"""

from __future__ import annotations

import heapq
import inspect
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bilevel.dag._order import move_perm
from bilevel.dag.acyclicity import ACYCLICITY_FUNCTIONS, h_logdet
from bilevel.dag.prior import PriorKnowledge, prior_knowledge
from bilevel.dag.scores import Score, make_score, validate_data
from bilevel.errors import ConvergenceWarning

__all__ = ["TopoSearch", "topological_order"]


def topological_order(W: np.ndarray) -> np.ndarray:
    """A topological order of the support of ``W`` (``W[i, j] != 0``: edge ``i -> j``).

    Kahn's algorithm taking the smallest available index first; raises ``ValueError`` if the
    support has a cycle.
    """
    B = np.asarray(W) != 0
    d = B.shape[0]
    indeg = B.sum(axis=0).astype(int)
    ready = sorted(np.flatnonzero(indeg == 0).tolist())
    order = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in np.flatnonzero(B[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, int(j))
    if len(order) != d:
        raise ValueError("the support of W has a directed cycle; it has no topological order")
    return np.array(order, dtype=np.intp)


def _reachability(W: np.ndarray) -> np.ndarray:
    """``P[u, v]``: a directed path ``u -> ... -> v`` of length >= 1 exists in supp(W)."""
    B = (np.asarray(W) != 0).astype(float)
    P = B.copy()
    while True:
        Pn = ((P + P @ P) > 0).astype(float)
        if np.array_equal(Pn, P):
            return P > 0
        P = Pn


def _bootstrap_fit(
    params: dict, X: np.ndarray, seed: int, prior: PriorKnowledge
) -> tuple[np.ndarray, bool]:
    """One bootstrap refit (a joblib task): the support of ``adjacency_`` on resampled rows,
    and whether its search converged (the caller warns once for all)."""
    rng = np.random.default_rng(seed)
    Xb = X[rng.integers(X.shape[0], size=X.shape[0])]
    est = TopoSearch(**{**params, "random_state": seed})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Xb, **prior.as_kwargs())
    return (est.adjacency_ != 0).astype(float), bool(est.converged_)


#: ``search="auto"`` uses the wide search up to this many nodes: its final pass scores
#: ``3 d (d - 1) / 2`` moves, each a QR of up to ``d x d`` (d = 200 ER4: 850 000 moves, 93 % of
#: a 200 s fit, for the same SHD 0 after BIC pruning as the paper's search in 19 s)
WIDE_MAX_D = 100


def _default_sizes(d: int) -> tuple[int, int]:
    """Candidate-set sizes of the official code for linear models."""
    full = d * (d - 1) // 2
    if d < 2:
        return 0, 0
    mid = int(math.sqrt(d) * (d - 1) * math.log10(d))
    small = max(1, min(int(1.5 * d), mid, full))
    large = max(int(1.5 * d), min(mid, full))
    return small, min(large, full)


class TopoSearch:
    """DAG structure learning by topological swaps (TOPO), scikit-learn style.

    Parameters
    ----------
    score : {"ls", "nv", "logistic", "mlp"} or Score
        The objective ``F`` (see :mod:`bilevel.dag.scores`); a string uses default settings,
        a :class:`~bilevel.dag.scores.Score` instance (e.g. ``LeastSquares(l1=0.05)``) sets
        penalties.
    w_threshold : float
        ``adjacency_`` keeps the entries of ``W*(pi)`` with ``|W_ij| >= w_threshold``.
    init : {"auto", "greedy", "varsort", "random"}
        Initial order when ``fit`` gets no ``init``: ``"greedy"`` (least-squares-type scores:
        top-down smallest residual variance), ``"varsort"`` (increasing variance, the order of
        sortnregress), ``"random"`` (the official code), ``"auto"`` (greedy when the score
        supports it, else varsort).
    search : {"auto", "wide", "paper"}
        ``"paper"``: small then large candidate sets (at most ``max_large_searches`` successful
        uses of the large set), swaps only. ``"wide"``: no limit on large searches, then all
        forbidden pairs with swap and two insertion moves before stopping; a final wide pass
        scores ``3 d (d - 1) / 2`` moves. ``"auto"``: ``"wide"`` when moves are scored from a
        Cholesky factor (least squares and Gaussian NV without L1) and ``d <= 100``,
        ``"paper"`` otherwise (each move refits models: L1 penalties, logistic, GAM, MLP; or
        the final wide pass would dominate the time).
    size_small, size_large : int or None
        Candidate-set sizes; ``None`` uses the official code's defaults
        (``~1.5 d`` and ``~sqrt(d) (d - 1) log10(d)``, capped at ``d (d - 1) / 2``).
    max_large_searches : int or None
        For ``search="paper"``: how many times the large set may be used (``None``: the
        official default ``min(d // 10, 1)``).
    acyclicity : {"logdet", "expm", "poly"}
        The function ``h`` whose gradient at ``A = |W|`` ranks candidate pairs.
    n_restarts : int
        Iterated local search: after the first local optimum, ``n_restarts`` times perturb the
        best order by ``max(2, d // 10)`` random swaps, search again and keep the better one.
    grad_tol : float
        Candidate pairs need a KKT gap larger than ``grad_tol`` (the edge would lower ``F``).
    kkt_tol : float
        Tolerance of the KKT conditions checked (and enforced) at termination.
    max_iter : int
        Maximum number of outer iterations per local search; reaching it warns with
        :class:`~bilevel.errors.ConvergenceWarning`.
    verbose : bool
        Print one line per outer iteration.
    callback : callable or None
        Called with a dict ``{"restart", "iteration", "score", "stage", "n_moves", "time"}``
        after every outer iteration (progress bars, logging).
    random_state : int, numpy Generator or None
        Seeds ``init="random"``, the restarts and the bootstrap samples.
    prune : {"auto", "bic", "none"}
        How ``adjacency_`` is read from ``W*(order_)``. ``"bic"``: for every node, backward
        elimination of its predecessors on the Bayesian information criterion
        (:func:`~bilevel.dag.scores.bic_backward`; whole spline blocks for the additive
        score), a refit on the kept parents, then the threshold. The unpenalised
        least-squares fit on *all* predecessors gives every non-parent a coefficient of
        standard error ``sigma / sqrt(n v)`` (``v`` its residual variance given the other
        predecessors, small for hubs), so on dense graphs a fixed threshold alone keeps
        spurious edges (d = 200 ER4: 65 of them). ``"none"``: threshold ``W*(order_)``.
        ``"auto"``: ``"bic"`` for the scores without an L1 term that support it (least
        squares, Gaussian NV, additive), else ``"none"``.
    n_bootstrap : int
        After the fit, refit on ``n_bootstrap`` resamples of the rows (with replacement, same
        settings and prior knowledge, no further bootstrap) and report in
        ``edge_stability_`` how often each edge was found.
    n_jobs : int or None
        joblib workers for the bootstrap fits (``None``: one; ``-1``: all cores).
    progress : callable or None
        ``progress(phase, done, total)`` as work advances, for progress bars: phases
        ``"init"`` (initial order), ``"search"`` (``done`` counts model fits for the scores
        that fit models per node, outer iterations otherwise; ``total`` None), ``"prune"``
        (nodes, of ``d``) and ``"bootstrap"`` (fits, of ``n_bootstrap``).

    Prior knowledge
    ---------------
    :meth:`fit` takes ``required`` and ``forbidden`` edges and ``tiers``. The search only
    visits orders in which every required edge and every pair of tiers point forward (an
    initial order is first made to satisfy them, keeping its relative order as far as
    possible), node fits never use a forbidden parent, required parents are not penalised
    (L1) and never pruned or thresholded away.

    Attributes
    ----------
    adjacency_ : (d, d) ndarray
        Thresholded weighted adjacency, acyclic; ``adjacency_[i, j] != 0`` is an edge
        ``i -> j``.
    raw_adjacency_ : (d, d) ndarray
        ``W*(order_)`` before thresholding.
    order_ : (d,) ndarray
        The topological order found (``order_[0]`` is a source).
    score_ : float
        ``F(raw_adjacency_)``, the objective value of the inner optimum.
    n_iter_ : int
        Outer iterations (accepted rounds of moves) over all local searches.
    kkt_violation_ : float
        Largest KKT gap at termination over the pairs whose edge would close no cycle. For
        the node problems solved to optimality (least squares, Gaussian NV, logistic) it is
        at most ``kkt_tol`` whenever ``converged_``, except for violations so small that
        their repair gains less than the relative improvement tolerance ``1e-12 |F|`` (a
        violation ``g`` gains about ``g^2 / (2 var)``); for the MLP score, whose fits are
        local, repair moves are tried but need not improve, and this reports what remains.
    converged_ : bool
        Whether the search stopped because no move improves (rather than at ``max_iter``);
        with ``n_restarts`` this refers to the search that produced the result.
    history_ : list of dict
        The callback records.
    edge_stability_ : (d, d) ndarray or None
        With ``n_bootstrap > 0``: fraction of bootstrap fits whose ``adjacency_`` has the
        edge ``i -> j``; else None.
    n_features_in_ : int
    """

    def __init__(
        self,
        score: str | Score = "ls",
        w_threshold: float = 0.3,
        init: str = "auto",
        search: str = "auto",
        size_small: int | None = None,
        size_large: int | None = None,
        max_large_searches: int | None = None,
        acyclicity: str = "logdet",
        n_restarts: int = 0,
        grad_tol: float = 1e-8,
        kkt_tol: float = 1e-6,
        max_iter: int = 10_000,
        verbose: bool = False,
        callback: Callable[[dict], Any] | None = None,
        random_state: int | np.random.Generator | None = None,
        prune: str = "auto",
        n_bootstrap: int = 0,
        n_jobs: int | None = None,
        progress: Callable[[str, int, int | None], Any] | None = None,
    ):
        self.score = score
        self.w_threshold = w_threshold
        self.init = init
        self.search = search
        self.size_small = size_small
        self.size_large = size_large
        self.max_large_searches = max_large_searches
        self.acyclicity = acyclicity
        self.n_restarts = n_restarts
        self.grad_tol = grad_tol
        self.kkt_tol = kkt_tol
        self.max_iter = max_iter
        self.verbose = verbose
        self.callback = callback
        self.random_state = random_state
        self.prune = prune
        self.n_bootstrap = n_bootstrap
        self.n_jobs = n_jobs
        self.progress = progress

    # ---- scikit-learn parameter protocol ------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params: Any) -> TopoSearch:
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for TopoSearch; valid: {valid}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = {
            k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if not (isinstance(v, type(defaults[k])) and v == defaults[k])
        ]
        return f"TopoSearch({', '.join(changed)})"

    # ---- validation -----------------------------------------------------------------
    def _check_params(self, d: int) -> dict:
        if self.init not in ("auto", "greedy", "varsort", "random"):
            raise ValueError(
                f"init must be 'auto', 'greedy', 'varsort' or 'random', got {self.init!r}"
            )
        if self.search not in ("auto", "wide", "paper"):
            raise ValueError(f"search must be 'auto', 'wide' or 'paper', got {self.search!r}")
        if self.acyclicity not in ACYCLICITY_FUNCTIONS:
            raise ValueError(
                f"acyclicity must be one of {sorted(ACYCLICITY_FUNCTIONS)}, got {self.acyclicity!r}"
            )
        thr = float(self.w_threshold)
        if not (np.isfinite(thr) and thr >= 0):
            raise ValueError(f"w_threshold must be finite and >= 0, got {self.w_threshold}")
        if self.prune not in ("auto", "bic", "none"):
            raise ValueError(f"prune must be 'auto', 'bic' or 'none', got {self.prune!r}")
        if not isinstance(self.n_bootstrap, (int, np.integer)) or self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be a nonnegative integer, got {self.n_bootstrap!r}")
        for name in ("n_restarts", "max_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < (0 if name == "n_restarts" else 1):
                raise ValueError(
                    f"{name} must be a {'nonnegative' if name == 'n_restarts' else 'positive'} integer, got {v!r}"
                )
        for name in ("grad_tol", "kkt_tol"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        small0, large0 = _default_sizes(d)
        full = d * (d - 1) // 2
        small = small0 if self.size_small is None else int(self.size_small)
        large = large0 if self.size_large is None else int(self.size_large)
        if d > 1 and not (1 <= small <= full and 1 <= large <= full):
            raise ValueError(
                f"size_small and size_large must be in [1, d(d-1)/2 = {full}], got "
                f"{small} and {large}"
            )
        if self.max_large_searches is None:
            n_large = min(d // 10, 1)
        else:
            n_large = int(self.max_large_searches)
            if n_large < 0:
                raise ValueError("max_large_searches must be >= 0")
        return {"small": small, "large": max(large, small), "n_large": n_large}

    # ---- fit ------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any = None,
        init: np.ndarray | None = None,
        *,
        required: Any = None,
        forbidden: Any = None,
        tiers: Any = None,
    ) -> TopoSearch:
        """Learn a DAG from data ``X`` of shape ``(n_samples, n_nodes)``.

        Parameters
        ----------
        X : array of shape (n, d)
        y : ignored
            Present for scikit-learn compatibility.
        init : None, (d,) permutation or (d, d) acyclic weight matrix
            Post-processing: start from this order, or from a topological order of the
            support of this ``W``. ``None`` uses the ``init`` hyperparameter.
        required, forbidden : None, (d, d) boolean matrix or iterable of (i, j) pairs
            Edges ``i -> j`` that must be in / must not be in the graph.
        tiers : None or (d,) integers
            Tier of every node: an edge may not go from a later tier to an earlier one (the
            order puts all of tier ``t`` before tier ``t + 1``); edges inside a tier are
            free.

        Notes
        -----
        BLAS is limited to one thread while fitting (when ``threadpoolctl`` is installed):
        all linear algebra is on blocks of at most ``d x d``.

        Returns
        -------
        self
        """
        X = validate_data(X)
        d = X.shape[1]
        cfg = self._check_params(d)
        prior = prior_knowledge(d, required=required, forbidden=forbidden, tiers=tiers)
        # every step works on small dense blocks, where multi-threaded BLAS only adds
        # synchronisation (as scikit-learn's KMeans, limit it while fitting)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            self._fit(X, d, cfg, init, prior)
        else:
            with threadpool_limits(limits=1, user_api="blas"):
                self._fit(X, d, cfg, init, prior)
        self.edge_stability_ = None
        if int(self.n_bootstrap) > 0:
            self.edge_stability_ = self._bootstrap(X, prior)
        return self

    def _report(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def _fit(self, X: np.ndarray, d: int, cfg: dict, init: Any, prior: PriorKnowledge):
        rng = np.random.default_rng(self.random_state)
        score = make_score(self.score).setup(X)
        score.constrain(prior.allowed, prior.required)
        score._prior = prior
        self.n_features_in_ = d
        self._prior = prior

        self._report("init", 0, 1)
        order0 = prior.repair(self._initial_order(score, d, init, rng))
        self._report("init", 1, 1)
        fits = [0]

        def on_fit() -> None:
            fits[0] += 1
            self._report("search", fits[0], None)

        score._on_fit = on_fit if self.progress is not None else None
        t0 = time.perf_counter()
        self.history_: list[dict] = []
        self.n_iter_ = 0
        best, converged = self._local_search(score, order0, cfg, restart=0, t0=t0)
        kicks = max(2, d // 10)
        for r in range(1, int(self.n_restarts) + 1):
            if d < 2:
                break
            order = best.order.copy()
            for _ in range(kicks):
                a, b = rng.choice(d, size=2, replace=False)
                order[[a, b]] = order[[b, a]]
            cand, conv = self._local_search(score, prior.repair(order), cfg, restart=r, t0=t0)
            if cand.total < best.total - 1e-12 * max(1.0, abs(best.total)):
                best, converged = cand, conv
        score._on_fit = None

        W = best.weights()
        self.raw_adjacency_ = W
        self.order_ = best.order.copy()
        self.score_ = float(best.total)
        self.kkt_violation_ = float(self._kkt_violation(score, best))
        self.converged_ = bool(converged)
        prune = self.prune
        if prune == "auto":
            prune = "bic" if score.supports_pruning else "none"
        if prune == "bic":
            if not score.supports_pruning:
                raise ValueError(f"prune='bic' is not available for {score!r}")
            A = np.zeros_like(W)
            for k, j in enumerate(self.order_):
                ps = self.order_[:k]
                if prior.allowed is not None:
                    ps = ps[prior.allowed[ps, j]]
                ps = np.sort(ps)
                kept, w = score.prune_node(int(j), ps, prior.required[ps, j])
                A[kept, j] = w
                self._report("prune", k + 1, d)
        else:
            A = W.copy()
        A[(np.abs(A) < float(self.w_threshold)) & ~prior.required] = 0.0
        self.adjacency_ = A
        return self

    def _bootstrap(self, X: np.ndarray, prior: PriorKnowledge) -> np.ndarray:
        """Edge frequencies over ``n_bootstrap`` refits on resampled rows (joblib)."""
        from joblib import Parallel, delayed

        nb = int(self.n_bootstrap)
        rng = np.random.default_rng(self.random_state)
        seeds = rng.integers(2**32, size=nb)
        params = self.get_params()
        params.update(n_bootstrap=0, callback=None, progress=None, verbose=False)
        tasks = (
            delayed(_bootstrap_fit)(params, X, int(seed), prior) for seed in seeds.tolist()
        )
        total = np.zeros((X.shape[1], X.shape[1]))
        self._report("bootstrap", 0, nb)
        results = Parallel(n_jobs=self.n_jobs, return_as="generator")(tasks)
        stalled = 0
        for b, (B, conv) in enumerate(results, start=1):
            total += B
            stalled += not conv
            self._report("bootstrap", b, nb)
        if stalled:
            warnings.warn(
                f"{stalled} of {nb} bootstrap searches stopped at max_iter={self.max_iter} "
                "before a local optimum",
                ConvergenceWarning,
                stacklevel=3,
            )
        return total / nb

    def _initial_order(self, score: Score, d: int, init: Any, rng) -> np.ndarray:
        if init is not None:
            init = np.asarray(init)
            if init.ndim == 1:
                if init.shape != (d,) or not np.array_equal(np.sort(init), np.arange(d)):
                    raise ValueError(f"init order must be a permutation of 0..{d - 1}")
                return init.astype(np.intp)
            if init.shape != (d, d):
                raise ValueError(f"init must be a (d,) order or a (d, d) matrix, d={d}")
            if not np.all(np.isfinite(init)):
                raise ValueError("init holds NaN or infinite values")
            if np.any(np.diag(init) != 0):
                raise ValueError("init W has self-loops (nonzero diagonal)")
            return topological_order(init)
        method = self.init
        if method == "auto":
            auto = score.auto_order()
            if auto is not None:
                return np.asarray(auto, dtype=np.intp)
            method = "varsort"
        if method == "greedy":
            if not score.supports_greedy:
                raise ValueError(f"init='greedy' is not available for {type(score).__name__}")
            return score.greedy_order()
        if method == "varsort":
            return np.argsort(score._X.var(axis=0), kind="stable").astype(np.intp)
        return rng.permutation(d).astype(np.intp)

    def _grad_h(self, A: np.ndarray) -> np.ndarray:
        """``grad h(A)`` at the nonnegative matrix ``A`` from the score (``|W|``, or the
        squared first-layer norms of the MLP score)."""
        h = ACYCLICITY_FUNCTIONS[self.acyclicity]
        if self.acyclicity != "logdet":
            return h(A)[1]
        try:
            G = h(A)[1]
            if np.all(np.isfinite(G)):
                return G
        except ValueError:
            pass
        # A is acyclic here, so (sI - A)^{-1} = sum_k A^k / s^(k+1) for every s > 0 and its
        # zero pattern (which pairs would close a cycle) does not depend on s. At s = 1 the
        # path sums overflow on large dense orders (d = 500: LU then even loses the sign of
        # det = 1); with s above the largest row sum sI - A is strictly diagonally dominant,
        # every term is bounded, and the ranking stays finite.
        s = 1.0 + float(A.sum(axis=1).max())
        return h_logdet(A, s=s)[1]

    def _valid(self, block: np.ndarray) -> bool:
        prior = getattr(self, "_prior", None)
        return prior is None or prior.valid(block)

    def _gap(self, score: Score, state) -> np.ndarray:
        """KKT gaps, zero on the forbidden pairs (not variables of the problem)."""
        gap = score.kkt_gap(state)
        prior = getattr(self, "_prior", None)
        if prior is not None and prior.allowed is not None:
            gap = np.where(prior.allowed, gap, 0.0)
        return gap

    def _kkt_violation(self, score: Score, state) -> float:
        W = state.weights()
        gap = self._gap(score, state)
        reach = _reachability(W)
        free = ~reach.T  # (i, j): no path j -> i, so i -> j closes no cycle
        np.fill_diagonal(free, False)
        return float(gap[free].max()) if free.any() else 0.0

    def _evaluate(self, state, pairs, pos, kinds, tol):
        """Score moves for candidate pairs; return improving (delta, a, b, perm) tuples."""
        out = []
        loss = state.node_loss
        valid = self._valid
        for i, j in pairs:
            a, b = int(pos[j]), int(pos[i])
            old = loss[a : b + 1].sum()
            for kind in kinds:
                perm = move_perm(kind, b - a)
                if not valid(state.order[a : b + 1][perm]):
                    continue
                delta = state.move_losses(a, b, perm).sum() - old
                if delta < -tol:
                    out.append((float(delta), a, b, perm))
        return out

    def _kkt_moves(self, score: Score, state, pos, tol, limit: int | None = None):
        """Moves that repair KKT violations; each one is guaranteed to lower ``F``."""
        W = state.weights()
        gap = self._gap(score, state)
        reach = _reachability(W)
        rev = pos[:, None] > pos[None, :]
        viol = rev & ~reach.T & (gap > float(self.kkt_tol))
        np.fill_diagonal(viol, False)
        moves = []
        order = state.order
        ii, jj = np.nonzero(viol)
        # largest violations first; with an exact inner solver the first one already gives
        # an improving move, so capping the number tried keeps the termination guarantee
        worst = np.argsort(-gap[ii, jj], kind="stable")[:limit]
        for i, j in zip(ii[worst], jj[worst], strict=True):
            a, b = int(pos[j]), int(pos[i])
            block = order[a : b + 1]
            anc = reach[block, i].copy()
            anc[-1] = True  # i itself
            perm = np.concatenate([np.flatnonzero(anc), np.flatnonzero(~anc)])
            if not self._valid(block[perm]):
                continue
            delta = state.move_losses(a, b, perm).sum() - state.node_loss[a : b + 1].sum()
            if delta < -tol:
                moves.append((float(delta), a, b, perm))
        return moves

    def _local_search(self, score: Score, order: np.ndarray, cfg: dict, restart: int, t0: float):
        state = score.state(order)
        d = len(order)
        wide = self.search == "wide" or (
            self.search == "auto" and score.cheap_moves and d <= WIDE_MAX_D
        )
        large_used = 0
        it = 0
        converged = False
        while it < int(self.max_iter):
            tol = 1e-12 * max(1.0, abs(state.total))
            pos = np.empty(d, dtype=np.intp)
            pos[state.order] = np.arange(d)
            if d < 2:
                converged = True
                break
            gap = self._gap(score, state)
            Gh = self._grad_h(score.acyclicity_matrix(state))
            rev = pos[:, None] > pos[None, :]
            mask = rev & (gap > float(self.grad_tol))
            ii, jj = np.nonzero(mask)
            rank = np.lexsort((-gap[ii, jj], Gh[ii, jj]))
            pairs = list(zip(ii[rank].tolist(), jj[rank].tolist(), strict=True))
            small, large = pairs[: cfg["small"]], pairs[cfg["small"] : cfg["large"]]
            stage = "small"
            moves = self._evaluate(state, small, pos, ("swap",), tol)
            if not moves and large and (wide or large_used < cfg["n_large"]):
                stage = "large"
                moves = self._evaluate(state, large, pos, ("swap",), tol)
                if moves:
                    large_used += 1
            if not moves and wide:
                # all forbidden pairs, three moves each, in chunks of ``size_large`` pairs in
                # the order of the ranking; stop at the first chunk with an improving move
                stage = "wide"
                for start in range(0, len(pairs), cfg["large"]):
                    chunk = pairs[start : start + cfg["large"]]
                    moves = self._evaluate(state, chunk, pos, ("swap", "up", "down"), tol)
                    if moves:
                        break
            if not moves:
                stage = "kkt"
                moves = self._kkt_moves(score, state, pos, tol, limit=cfg["large"])
            if not moves:
                converged = True
                break
            moves.sort(key=lambda m: m[0])
            taken: list[tuple[int, int]] = []
            for _, a, b, perm in moves:
                if all(b < a2 or a > b2 for a2, b2 in taken):
                    state.apply(a, b, perm)
                    taken.append((a, b))
            it += 1
            self.n_iter_ += 1
            rec = {
                "restart": restart,
                "iteration": it,
                "score": state.total,
                "stage": stage,
                "n_moves": len(taken),
                "time": time.perf_counter() - t0,
            }
            self.history_.append(rec)
            if self.verbose:
                print(
                    f"[topo] restart {restart} iter {it:4d} score {state.total:.6f} "
                    f"stage {stage:5s} moves {len(taken)}",
                    flush=True,
                )
            if self.callback is not None:
                self.callback(rec)
        if not converged:
            warnings.warn(
                f"TopoSearch stopped after max_iter={self.max_iter} outer iterations before "
                "reaching a local optimum",
                ConvergenceWarning,
                stacklevel=3,
            )
        return state, converged
