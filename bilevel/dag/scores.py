"""Score functions for TOPO: the outer objective ``F(W)`` and its inner solver given an order.

Every score decomposes over nodes, ``F(W) = sum_j f_j(W[:, j])``, so the best weights for a
topological order ``pi`` are one fit per node on its predecessors, and moving nodes inside the
positions ``a..b`` of ``pi`` changes only the fits at those positions. Each score is a small
configuration object; :meth:`Score.setup` binds data and returns a *bound* copy that
:class:`bilevel.dag.topo.TopoSearch` queries through

* ``state(order)``: the inner optimum ``W*(pi)`` and the per-position node losses, as an
  object with cheap ``move_losses`` / ``apply`` (see :mod:`bilevel.dag._order`);
* ``gradient(state)``: ``G = grad F`` at ``W*(pi)`` (the smooth part; for the MLP score the norm
  of the gradient of the first-layer weights from ``i`` in the network of ``j``);
* ``kkt_gap(state)``: entrywise distance of ``0`` from the subdifferential of ``F`` in
  ``W_ij`` (``|G_ij|`` for smooth scores; ``|G_ij + l1 sign W_ij|`` or ``max(|G_ij| - l1, 0)``
  with an L1 term);
* ``objective(W)``: ``F`` at an arbitrary weight matrix (not for the nonlinear scores, which
  are functions of the fitted models, not of ``W``);
* ``acyclicity_matrix(state)``: the nonnegative ``A`` whose acyclicity gradient ranks the
  candidate swaps (``|W|``; the squared first-layer norms for the MLP score);
* ``auto_order()``: the initial order of ``init="auto"`` (``None``: the variance order).

Scores
------
:class:`LeastSquares` (equal-variance linear SEM), with optional L1 and L2 terms::

    F(W) = 1/(2n) ||X - X W||_F^2 + l1 ||W||_1 + l2/2 ||W||_F^2

Without L1 the node loss is read from a Cholesky factor of ``X^T X / n + l2 I`` (no
regression); with L1 each node is an elastic-net fit (scikit-learn coordinate descent on the
precomputed Gram matrix).

:class:`GaussianNV` (non-equal-variance Gaussian, profile log-likelihood per sample up to a
constant, optional L1 term; without it all complete DAGs tie, see the class)::

    F(W) = 1/2 sum_j log( ||X_j - X W_j||^2 / n ) + l1 ||W||_1

:class:`Logistic` (binary data), the *same* penalties in the inner fits and the outer
objective, intercepts ``b`` unpenalised and profiled out::

    F(W) = min_b 1/n sum_{s,j} [log(1 + exp(m_sj)) - x_sj m_sj] + l1 ||W||_1 + l2/2 ||W||_F^2,
    m = X W + 1 b^T

:class:`~bilevel.dag.nonlinear.AdditiveScore` (``"gam"``) and
:class:`~bilevel.dag.nonlinear.MLPScore` (``"mlp"``) are the nonlinear least-squares scores
(:mod:`bilevel.dag.nonlinear`).

Prior knowledge
---------------
:meth:`Score.constrain` restricts every node fit to the *allowed* parents among the
predecessors (forbidden edges are never fitted) and exempts *required* parents from the L1
penalty (for least squares and Gaussian NV by partialling them out of the Gram matrix, which
is exact: minimising over the unpenalised weights ``w_R`` first leaves the same penalised
problem in the others with ``G' = G_OO - G_OR G_RR^{-1} G_RO``, ``c' = c_O - G_OR G_RR^{-1}
c_R``). With forbidden edges the least-squares scores fit each node by a linear solve instead
of reading the Cholesky factor.

Pruning
-------
:func:`bic_backward` selects, for a node and its predecessors, the parents of a sparse refit by
backward elimination on the Bayesian information criterion ``n log(RSS/n) + k log n``.

Least-squares-type scores centre the columns of ``X`` (equivalent to unpenalised intercepts).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from bilevel.dag._order import CholeskyOrder, GenericOrder, greedy_order
from bilevel.errors import ConvergenceWarning, NonFiniteError

__all__ = ["GaussianNV", "LeastSquares", "Logistic", "Score", "bic_backward", "make_score"]


def validate_data(X: Any) -> np.ndarray:
    """Common checks: a finite 2-d numeric array with at least two rows and no constant column."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d (n_samples, n_nodes) array, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    X = X.astype(float)
    n, d = X.shape
    if n < 2 or d < 1:
        raise ValueError(f"X needs at least 2 samples and 1 node, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise NonFiniteError("X holds NaN or infinite values")
    const = np.flatnonzero(np.ptp(X, axis=0) == 0)
    if len(const):
        raise ValueError(f"X has constant columns {const.tolist()}; remove them")
    return X


def _l1_kkt_gap(G: np.ndarray, W: np.ndarray, l1: float) -> np.ndarray:
    """Entrywise violation of the KKT conditions of ``min smooth(W) + l1 |W|_1`` with smooth
    gradient ``G``: ``|G + l1 sign(W)|`` on the support, ``max(|G| - l1, 0)`` off it."""
    if l1 == 0:
        return np.abs(G)
    return np.where(W != 0, np.abs(G + l1 * np.sign(W)), np.maximum(np.abs(G) - l1, 0))


def _check_penalty(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite nonnegative number, got {value}")
    return value


class Score:
    """Base class: a configuration; :meth:`setup` returns a copy bound to data."""

    #: whether the initial order "greedy" (top-down residual variance) is meaningful
    supports_greedy: bool = False

    # Set on a bound copy (see :meth:`setup`) and by :class:`~bilevel.dag.TopoSearch`;
    # declared here only, so that an unbound score has none of them.
    _X: np.ndarray
    _cache: dict[Any, Any]
    _prior: Any
    _on_fit: Callable[[], None] | None

    @property
    def cheap_moves(self) -> bool:
        """Whether moves are scored from a factorisation (no model fit per node)."""
        return False

    def setup(self, X: np.ndarray) -> Score:
        bound = copy.copy(self)
        bound._bind(validate_data(X))
        return bound

    def _bind(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def get_params(self, deep: bool = True) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_params().items()))))

    # ---- interface of a bound score -------------------------------------------------
    def state(self, order: np.ndarray):
        raise NotImplementedError

    def gradient(self, state) -> np.ndarray:
        raise NotImplementedError

    def kkt_gap(self, state) -> np.ndarray:
        """Entrywise distance of 0 from the subdifferential of ``F`` at ``W*(pi)``."""
        return np.abs(self.gradient(state))

    def objective(self, W: np.ndarray) -> float:
        raise NotImplementedError(f"{type(self).__name__} has no objective of a weight matrix")

    def greedy_order(self) -> np.ndarray:
        raise NotImplementedError

    def auto_order(self) -> np.ndarray | None:
        """Initial order for ``init="auto"``: the greedy order where supported, else None."""
        return self.greedy_order() if self.supports_greedy else None

    def acyclicity_matrix(self, state) -> np.ndarray:
        """Nonnegative matrix whose acyclicity gradient ranks candidate swaps: ``|W*(pi)|``."""
        return np.abs(state.weights())

    @property
    def supports_pruning(self) -> bool:
        """Whether :meth:`prune_node` exists (BIC refit of a node on its predecessors)."""
        return False

    def prune_node(
        self, j: int, ps: np.ndarray, keep: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parents of ``j`` among ``ps`` after a BIC backward pass (``keep`` always kept)
        and their refitted weights; only where :attr:`supports_pruning`."""
        raise NotImplementedError(f"{type(self).__name__} does not prune")

    def constrain(self, allowed: np.ndarray | None, required: np.ndarray | None) -> None:
        """Prior knowledge for the node fits of this bound score: ``allowed[i, j]`` (``i`` may
        be a parent of ``j``; ``None``: all) and ``required[i, j]`` (unpenalised parent)."""
        d = self._X.shape[1]
        self._allowed = None if allowed is None or allowed.all() else np.asarray(allowed, bool)
        self._required = (
            np.zeros((d, d), dtype=bool) if required is None else np.asarray(required, bool)
        )
        self._cache = {}

    def _allowed_of(self, j: int, ps: np.ndarray) -> np.ndarray:
        allowed = getattr(self, "_allowed", None)
        return ps if allowed is None else ps[allowed[ps, j]]

    def _required_of(self, j: int, ps: np.ndarray) -> np.ndarray:
        req = getattr(self, "_required", None)
        return np.zeros(len(ps), dtype=bool) if req is None else req[ps, j]


def bic_backward(
    G: np.ndarray,
    c: np.ndarray,
    syy: float,
    n: int,
    groups: list[np.ndarray],
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Backward elimination of groups of regressors by the Bayesian information criterion.

    In Gram form (``G = Z^T Z / n`` positive definite, ``c = Z^T y / n``, ``syy = y^T y / n``)
    the least-squares fit on the columns ``S`` has ``beta = G_SS^{-1} c_S`` and
    ``RSS / n = syy - c_S^T beta``. Starting from all groups, the group ``g`` (not in ``keep``)
    whose removal increases ``BIC = n log(RSS / n) + (#columns) log n`` least is removed while
    that increase is negative; removing ``g`` raises ``RSS / n`` by
    ``beta_g^T [(G_SS^{-1})_gg]^{-1} beta_g`` and ``G_SS^{-1}`` is downdated by its Schur
    complement, so each step costs ``O(|S|^2)``.

    Returns
    -------
    numpy.ndarray
        Boolean mask over ``groups``: the groups kept.
    """
    m = len(groups)
    kept = np.ones(m, dtype=bool)
    if m == 0:
        return kept
    keep = np.zeros(m, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    sizes = np.array([len(g) for g in groups])
    cols = np.concatenate(groups)
    Ginv = np.linalg.inv(G[np.ix_(cols, cols)])
    cc = c[cols]
    owner = np.repeat(np.arange(m), sizes)
    beta = Ginv @ cc
    rss = max(float(syy - cc @ beta), 1e-300)
    logn = np.log(n)
    singletons = bool(np.all(sizes == 1))
    while True:
        cand = np.flatnonzero(kept & ~keep)
        if len(cand) == 0:
            return kept
        if singletons:  # owner is the identity on the kept columns: one vectorised pass
            loc = np.searchsorted(owner, cand)
            deltas = beta[loc] ** 2 / np.diag(Ginv)[loc]
        else:
            deltas = np.empty(len(cand))
            for t, g in enumerate(cand):
                idx = np.flatnonzero(owner == g)
                deltas[t] = beta[idx] @ np.linalg.solve(Ginv[np.ix_(idx, idx)], beta[idx])
        change = n * np.log1p(np.maximum(deltas, 0.0) / rss) - sizes[cand] * logn
        best = int(np.argmin(change))
        if change[best] >= 0:
            return kept
        t = int(cand[best])
        idx = owner == t
        rest = ~idx
        Ginv = Ginv[np.ix_(rest, rest)] - Ginv[np.ix_(rest, idx)] @ np.linalg.solve(
            Ginv[np.ix_(idx, idx)], Ginv[np.ix_(idx, rest)]
        )
        cc, owner = cc[rest], owner[rest]
        beta = Ginv @ cc
        rss += float(max(deltas[best], 0.0))
        kept[t] = False


def _gram_prune(S: np.ndarray, l2: float, n: int, j: int, ps: np.ndarray, keep: np.ndarray):
    """BIC backward elimination of single regressors in the Gram matrix ``S`` (ridge ``l2``)
    for node ``j``; returns the kept parents and their refitted weights."""
    if len(ps) == 0:
        return ps, np.zeros(0)
    G = S[np.ix_(ps, ps)] + l2 * np.eye(len(ps))
    c = S[ps, j]
    sel = bic_backward(G, c, float(S[j, j]), n, [np.array([t]) for t in range(len(ps))], keep)
    return ps[sel], np.linalg.solve(G[np.ix_(sel, sel)], c[sel])


def _partial_out(G: np.ndarray, c: np.ndarray, syy: float, req: np.ndarray):
    """Profile the unpenalised weights ``w_R`` (``req``) out of ``q(w) = syy - 2 c^T w +
    w^T G w``: returns ``G', c', syy'`` of the other weights and ``w -> full weights``."""
    if not req.any():
        return G, c, syy, lambda w: w
    R, O = np.flatnonzero(req), np.flatnonzero(~req)
    GRR, GRO = G[np.ix_(R, R)], G[np.ix_(R, O)]
    A = np.linalg.solve(GRR, np.column_stack([GRO, c[R]]))
    Gp = G[np.ix_(O, O)] - GRO.T @ A[:, :-1]
    cp = c[O] - GRO.T @ A[:, -1]
    syyp = syy - c[R] @ A[:, -1]

    def back(wO: np.ndarray) -> np.ndarray:
        w = np.zeros(len(c))
        w[O] = wO
        w[R] = A[:, -1] - A[:, :-1] @ wO
        return w

    return Gp, cp, syyp, back


# --------------------------------------------------------------------------------------
# Gaussian least-squares family
# --------------------------------------------------------------------------------------


class LeastSquares(Score):
    """Least squares ``F(W) = ||X - XW||^2/(2n) + l1 ||W||_1 + l2/2 ||W||^2`` (centred ``X``).

    Parameters
    ----------
    l1, l2 : float
        L1 and L2 penalty strengths. ``l1 = 0`` uses the Cholesky inner solver (no
        regression per node); ``l2 > 0`` also allows ``n <= d`` and collinear columns.
    """

    supports_greedy = True

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = l1
        self.l2 = l2

    def _bind(self, X: np.ndarray) -> None:
        self._l1 = _check_penalty("l1", self.l1)
        self._l2 = _check_penalty("l2", self.l2)
        n, d = X.shape
        if self._l2 == 0 and n <= d:
            raise ValueError(
                f"the unregularised least-squares score needs n > d samples (got n={n}, d={d});"
                " use l2 > 0"
            )
        self._X = X - X.mean(axis=0)
        self._n = n
        self._S = self._X.T @ self._X / n
        self._St = self._S + self._l2 * np.eye(d)
        if self._l2 == 0:
            # The node fits are scale-equivariant and a Cholesky factorisation is accurate
            # for any column scaling (van der Sluis), so collinearity is judged on the
            # correlation matrix: raw data with variances 1 to 1e9 (hubs of a scale-free
            # graph) is fine; only a condition number near 1/(d eps) is refused.
            sd = np.sqrt(np.diag(self._S))  # > 0: constant columns are refused above
            ev = np.linalg.eigvalsh(self._S / np.outer(sd, sd))
            if ev[0] <= d * np.finfo(float).eps * ev[-1]:
                raise ValueError(
                    "X has (numerically) collinear columns; the least-squares score is not "
                    "identifiable; use l2 > 0"
                )
        self._cache: dict = {}
        self._allowed = None

    @property
    def cheap_moves(self) -> bool:
        return float(self.l1) == 0 and getattr(self, "_allowed", None) is None

    def _node_fn(self, D: np.ndarray) -> np.ndarray:
        return 0.5 * (D - self._l2)

    def _fit_node(self, j: int, ps: np.ndarray) -> tuple[float, np.ndarray]:
        S, l1, l2 = self._S, self._l1, self._l2
        if len(ps) == 0:
            return 0.5 * S[j, j], np.zeros(0)
        Gt = S[np.ix_(ps, ps)] + l2 * np.eye(len(ps))
        c = S[ps, j]
        if l1 == 0:
            w = np.linalg.solve(Gt, c)
        else:
            from sklearn.linear_model import lars_path_gram

            # required parents are unpenalised: profile them out, then an elastic net (a
            # lasso with Gram G' = S_pp + l2 I, partialled); LARS stops exactly at alpha = l1
            n = self._n
            Gp, cp, _, back = _partial_out(Gt, c, S[j, j], self._required_of(j, ps))
            wo = np.zeros(len(cp))
            if len(cp):
                _, _, coefs = lars_path_gram(
                    Xy=n * cp,
                    Gram=n * Gp,
                    n_samples=n,
                    alpha_min=l1,
                    method="lasso",
                    max_iter=100 * len(cp),
                )
                wo = coefs[:, -1].copy()
                wo[np.abs(wo) <= 1e-12 * max(1.0, np.abs(wo).max())] = 0.0
                # polish: solve the stationarity equations on the active set and signs found
                act = wo != 0
                if act.any():
                    sgn = np.sign(wo[act])
                    wa = np.linalg.solve(Gp[np.ix_(act, act)], cp[act] - l1 * sgn)
                    if np.all(np.sign(wa) == sgn):
                        wo[act] = wa
            w = back(wo)
        Spp = S[np.ix_(ps, ps)]
        loss = 0.5 * (S[j, j] - 2 * S[ps, j] @ w + w @ Spp @ w)
        loss += l1 * np.abs(w[~self._required_of(j, ps)]).sum() + 0.5 * l2 * (w @ w)
        return float(loss), w

    def state(self, order: np.ndarray):
        if self._l1 == 0 and getattr(self, "_allowed", None) is None:
            return CholeskyOrder(self._St, order, self._node_fn)
        return GenericOrder(order, self._fit_node, self._cache, allowed=self._allowed)

    @property
    def supports_pruning(self) -> bool:
        return float(self.l1) == 0

    def prune_node(self, j: int, ps: np.ndarray, keep: np.ndarray):
        """Parents of ``j`` among ``ps`` after :func:`bic_backward` (``keep`` always kept)
        and their refitted weights."""
        return _gram_prune(self._S, self._l2, self._n, j, ps, keep)

    def _residual_grad(self, W: np.ndarray) -> np.ndarray:
        return -(self._S - self._S @ W) + self._l2 * W

    def gradient(self, state) -> np.ndarray:
        return self._residual_grad(state.weights())

    def kkt_gap(self, state) -> np.ndarray:
        W = state.weights()
        return _l1_kkt_gap(self._residual_grad(W), W, self._l1)

    def objective(self, W: np.ndarray) -> float:
        W = np.asarray(W, dtype=float)
        R = self._X - self._X @ W
        return float(
            0.5 / self._n * np.sum(R * R)
            + self._l1 * np.abs(W).sum()
            + 0.5 * self._l2 * np.sum(W * W)
        )

    def greedy_order(self) -> np.ndarray:
        return greedy_order(self._St)


class GaussianNV(Score):
    """Non-equal-variance Gaussian score
    ``F(W) = 1/2 sum_j log(||X_j - X W_j||^2 / n) + l1 ||W||_1``.

    The first term is the negative profile log-likelihood per sample of a linear Gaussian SEM
    with one noise variance per node, up to the constant ``d (1 + log 2 pi) / 2`` (the
    GOLEM-NV objective restricted to DAGs, where ``log |det(I - W)| = 0``).

    Without a penalty (``l1 = 0``) every *complete* DAG reproduces the sample covariance, so
    all orders have the same score: the likelihood alone cannot rank orders, and TOPO only
    refits the initial order. Hence the default ``l1 = 0.002``, GOLEM-NV's value (Ng, Ghassami
    and Zhang 2020, whose likelihood term has the same scale).

    Node fits: ``l1 = 0`` reads ``log(D_k)/2`` from the Cholesky factor of ``X^T X / n``.
    With ``l1 > 0`` the node problem ``min_w log(q(w))/2 + l1 |w|_1`` (``q`` the residual
    variance) is non-convex, but each of its stationary points is a lasso solution with
    ``alpha = l1 q(w)``; the fit walks the exact lasso path (LARS, scikit-learn), on each
    linear segment of which the objective's stationary points solve a quadratic, and returns
    the global minimiser. Needs ``n > d``.
    """

    supports_greedy = True

    def __init__(self, l1: float = 0.002):
        self.l1 = l1

    def _bind(self, X: np.ndarray) -> None:
        self._l1 = _check_penalty("l1", self.l1)
        n, d = X.shape
        if n <= d:
            raise ValueError(f"the Gaussian NV score needs n > d samples (got n={n}, d={d})")
        self._X = X - X.mean(axis=0)
        self._n = n
        self._S = self._X.T @ self._X / n
        ev = np.linalg.eigvalsh(self._S)
        if ev[0] <= 1e-12 * ev[-1]:
            raise ValueError("X has (numerically) collinear columns; the Gaussian score diverges")
        self._cache: dict = {}
        self._allowed = None

    @property
    def cheap_moves(self) -> bool:
        return float(self.l1) == 0 and getattr(self, "_allowed", None) is None

    @property
    def supports_pruning(self) -> bool:
        return float(self.l1) == 0

    def prune_node(self, j: int, ps: np.ndarray, keep: np.ndarray):
        """As :meth:`LeastSquares.prune_node` (the same regressions)."""
        return _gram_prune(self._S, 0.0, self._n, j, ps, keep)

    @staticmethod
    def _node_fn(D: np.ndarray) -> np.ndarray:
        return 0.5 * np.log(D)

    def _fit_node(self, j: int, ps: np.ndarray) -> tuple[float, np.ndarray]:
        S, l1, n = self._S, self._l1, self._n
        if len(ps) == 0:
            return 0.5 * float(np.log(S[j, j])), np.zeros(0)
        from sklearn.linear_model import lars_path_gram

        G, c, sjj = S[np.ix_(ps, ps)], S[ps, j], S[j, j]
        if l1 == 0:
            w = np.linalg.solve(G, c)
            return 0.5 * float(np.log(sjj - c @ w)), w
        # required parents are unpenalised: profile them out (exact, module docstring)
        G, c, sjj, back = _partial_out(G, c, sjj, self._required_of(j, ps))
        if len(c) == 0:
            w = back(np.zeros(0))
            return 0.5 * float(np.log(sjj)), w
        _, _, coefs = lars_path_gram(
            Xy=n * c, Gram=n * G, n_samples=n, method="lasso", max_iter=100 * len(c)
        )
        # variables leaving the active set sit at ~1e-19 instead of 0 at a breakpoint
        coefs[np.abs(coefs) <= 1e-12 * max(1.0, np.abs(coefs).max())] = 0.0

        def value(w):
            q = sjj - 2 * c @ w + w @ G @ w
            return 0.5 * np.log(q) + l1 * np.abs(w).sum()

        best_f, best_w = value(coefs[:, 0]), coefs[:, 0]
        for k in range(coefs.shape[1] - 1):
            w0, dw = coefs[:, k], coefs[:, k + 1] - coefs[:, k]
            # on the segment w0 + t dw: q(t) = c0 + c1 t + c2 t^2, |w|_1 = L0 + Lp t
            c0 = sjj - 2 * c @ w0 + w0 @ G @ w0
            c1 = 2 * (G @ w0 - c) @ dw
            c2 = dw @ G @ dw
            Lp = np.sign(w0 + 0.5 * dw) @ dw
            # d/dt [log q / 2 + l1 |w|_1] = 0  <=>  q' + 2 l1 Lp q = 0
            roots = np.roots([2 * l1 * Lp * c2, 2 * c2 + 2 * l1 * Lp * c1, c1 + 2 * l1 * Lp * c0])
            ts = [1.0] + [t.real for t in np.atleast_1d(roots) if abs(t.imag) < 1e-12]
            for t in ts:
                if 0.0 <= t <= 1.0:
                    w = w0 + t * dw
                    f = value(w)
                    if f < best_f:
                        best_f, best_w = f, w
        return float(best_f), back(best_w)

    def state(self, order: np.ndarray):
        if self._l1 == 0 and getattr(self, "_allowed", None) is None:
            return CholeskyOrder(self._S, order, self._node_fn)
        return GenericOrder(order, self._fit_node, self._cache, allowed=self._allowed)

    def _grad(self, W: np.ndarray) -> np.ndarray:
        M = self._S - self._S @ W  # X^T R / n
        var = (
            np.diag(self._S)
            - 2 * np.einsum("ij,ij->j", self._S, W)
            + np.einsum("ij,ik,kj->j", W, self._S, W)
        )
        return -M / var[None, :]

    def gradient(self, state) -> np.ndarray:
        return self._grad(state.weights())

    def kkt_gap(self, state) -> np.ndarray:
        W = state.weights()
        return _l1_kkt_gap(self._grad(W), W, self._l1)

    def objective(self, W: np.ndarray) -> float:
        W = np.asarray(W, dtype=float)
        R = self._X - self._X @ W
        return float(
            0.5 * np.sum(np.log(np.sum(R * R, axis=0) / self._n)) + self._l1 * np.abs(W).sum()
        )

    def greedy_order(self) -> np.ndarray:
        return greedy_order(self._S)


# --------------------------------------------------------------------------------------
# Logistic
# --------------------------------------------------------------------------------------


def _logistic_fit(
    Z: np.ndarray,
    y: np.ndarray,
    l1: float | np.ndarray,
    l2: float,
    intercept: bool,
    b0: float | None = None,
) -> tuple[float, np.ndarray, float]:
    """``min_{w, b} 1/n sum logloss(Z w + b, y) + sum_i l1_i |w_i| + l2/2 |w|^2``; returns
    (f, w, b) (``l1`` a scalar or one weight per column)."""
    n, p = Z.shape
    if intercept:
        Zi = np.hstack([Z, np.ones((n, 1))])
    else:
        Zi = Z
    q = Zi.shape[1]
    pen = np.ones(q)
    if intercept:
        pen[-1] = 0.0

    def smooth(v):
        m = Zi @ v
        f = np.mean(np.logaddexp(0.0, m) - y * m) + 0.5 * l2 * np.sum(pen * v * v)
        g = Zi.T @ (expit(m) - y) / n + l2 * pen * v
        return f, g

    v = np.zeros(q)
    if intercept:
        ybar = np.clip(y.mean(), 1e-12, 1 - 1e-12)
        v[-1] = np.log(ybar / (1 - ybar)) if b0 is None else b0
    if q == 0:
        f, _ = smooth(v)
        return float(f), np.zeros(0), 0.0
    if np.all(np.asarray(l1) == 0):
        # damped Newton; the objective is strongly convex in w when l2 > 0
        f, g = smooth(v)
        for _ in range(200):
            m = Zi @ v
            s = expit(m)
            H = (Zi * (s * (1 - s))[:, None]).T @ Zi / n + l2 * np.diag(pen)
            H += 1e-14 * np.eye(q)
            step = np.linalg.solve(H, g)
            t = 1.0
            while True:
                fn, gn = smooth(v - t * step)
                if fn <= f - 1e-4 * t * (g @ step) or t < 1e-12:
                    break
                t *= 0.5
            v, f, g = v - t * step, fn, gn
            # Newton converges quadratically; rounding stalls the gradient near 1e-10 on
            # some data, so 1e-8 (far below any effect on the score) is the test
            if np.max(np.abs(g)) < 1e-8:
                break
        else:
            warnings.warn(
                f"logistic Newton stopped with gradient {np.max(np.abs(g)):.2e}",
                ConvergenceWarning,
                stacklevel=3,
            )
        w, b = (v[:-1], v[-1]) if intercept else (v, 0.0)
        return float(f), w, float(b)

    # L1: split w = u - z with u, z >= 0, smooth bound-constrained problem (L-BFGS-B)
    def split(x):
        u, z = x[:p], x[p : 2 * p]
        v = np.concatenate([u - z, x[2 * p :]])
        f, g = smooth(v)
        gw = g[:p]
        f += float(np.sum(l1 * (u + z)))
        return f, np.concatenate([gw + l1, -gw + l1, g[p:]])

    x0 = np.concatenate([np.maximum(v[:p], 0), np.maximum(-v[:p], 0), v[p:]])
    bounds = [(0, None)] * (2 * p) + [(None, None)] * (q - p)
    res = minimize(
        split,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 30},
    )
    u, z = res.x[:p], res.x[p : 2 * p]
    w = u - z
    b = float(res.x[-1]) if intercept else 0.0
    return float(res.fun), w, b


class Logistic(Score):
    """Logistic score for binary (0/1) data with the same penalties inside and outside.

    ``F(W) = min_b 1/n sum [log(1 + e^m) - x m] + l1 ||W||_1 + l2/2 ||W||^2``,
    ``m = X W + 1 b^T``. Node fits solve exactly this objective (Newton for ``l1 = 0``,
    L-BFGS-B on the split ``w = u - z`` otherwise), so the inner and outer objectives agree;
    scikit-learn's ``LogisticRegression(C=1/(lambda n), fit_intercept=...)`` is the same
    problem with ``lambda = l2`` (L2) or ``l1`` (L1). ``l1 + l2 > 0`` is required (binary
    data are often separable).
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.01, fit_intercept: bool = True):
        self.l1 = l1
        self.l2 = l2
        self.fit_intercept = fit_intercept

    def _bind(self, X: np.ndarray) -> None:
        self._l1 = _check_penalty("l1", self.l1)
        self._l2 = _check_penalty("l2", self.l2)
        if self._l1 + self._l2 == 0:
            raise ValueError("the logistic score needs l1 > 0 or l2 > 0 (separable data)")
        if not np.all((X == 0) | (X == 1)):
            raise ValueError("the logistic score needs binary data with values in {0, 1}")
        self._X = X
        self._n = X.shape[0]
        self._cache: dict = {}
        self._intercepts: dict = {}

    def _fit_node(self, j: int, ps: np.ndarray):
        l1 = np.where(self._required_of(j, ps), 0.0, self._l1)  # required parents: no L1
        f, w, b = _logistic_fit(
            self._X[:, ps], self._X[:, j], l1, self._l2, bool(self.fit_intercept)
        )
        self._intercepts[(j, frozenset(ps.tolist()))] = b
        return f, w

    def state(self, order: np.ndarray):
        return GenericOrder(
            order, self._fit_node, self._cache, allowed=getattr(self, "_allowed", None)
        )

    def _intercepts_of(self, state) -> np.ndarray:
        return np.array(
            [
                self._intercepts[(int(state.order[k]), frozenset(ps.tolist()))]
                for k, (_, ps, _) in enumerate(state.fits)
            ]
        )[np.argsort(state.order)]

    def _profile_intercepts(self, W: np.ndarray) -> np.ndarray:
        M = self._X @ W
        b = np.zeros(W.shape[1])
        if not self.fit_intercept:
            return b
        for j in range(W.shape[1]):
            y, m = self._X[:, j], M[:, j]
            ybar = np.clip(y.mean(), 1e-12, 1 - 1e-12)
            t = np.log(ybar / (1 - ybar))
            for _ in range(100):
                s = expit(m + t)
                g, h = np.mean(s - y), np.mean(s * (1 - s)) + 1e-300
                t -= g / h
                if abs(g) < 1e-13:
                    break
            b[j] = t
        return b

    def _grad(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        M = self._X @ W + b[None, :]
        return self._X.T @ (expit(M) - self._X) / self._n + self._l2 * W

    def gradient(self, state) -> np.ndarray:
        return self._grad(state.weights(), self._intercepts_of(state))

    def kkt_gap(self, state) -> np.ndarray:
        W = state.weights()
        G = self._grad(W, self._intercepts_of(state))
        if self._l1 == 0:
            return np.abs(G)
        return np.where(
            W != 0, np.abs(G + self._l1 * np.sign(W)), np.maximum(np.abs(G) - self._l1, 0)
        )

    def objective(self, W: np.ndarray) -> float:
        W = np.asarray(W, dtype=float)
        b = self._profile_intercepts(W)
        M = self._X @ W + b[None, :]
        f = np.sum(np.mean(np.logaddexp(0.0, M) - self._X * M, axis=0))
        return float(f + self._l1 * np.abs(W).sum() + 0.5 * self._l2 * np.sum(W * W))


SCORE_NAMES = ("ls", "nv", "logistic", "gam", "gam-nv", "mlp")


def _score_classes() -> dict[str, Any]:
    from bilevel.dag.nonlinear import AdditiveScore, MLPScore

    return {
        "ls": LeastSquares,
        "nv": GaussianNV,
        "logistic": Logistic,
        "gam": AdditiveScore,
        "gam-nv": lambda **kw: AdditiveScore(equal_variances=False, **kw),
        "mlp": MLPScore,
    }


def make_score(score: str | Score, **params: Any) -> Score:
    """A score object from a name (``"ls"``, ``"nv"``, ``"logistic"``, ``"gam"``, ``"gam-nv"``
    (additive, one noise variance per node), ``"mlp"``) or itself."""
    if isinstance(score, Score):
        if params:
            raise ValueError("score parameters are given with a Score instance")
        return copy.deepcopy(score)
    if score not in SCORE_NAMES:
        raise ValueError(f"score must be one of {sorted(SCORE_NAMES)} or a Score, got {score!r}")
    return _score_classes()[score](**params)


def __getattr__(name: str) -> Any:  # MLPScore lived here before bilevel.dag.nonlinear
    if name == "MLPScore":
        from bilevel.dag.nonlinear import MLPScore

        return MLPScore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
