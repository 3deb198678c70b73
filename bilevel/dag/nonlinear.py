"""Nonlinear scores for TOPO: additive splines (GAM) and one MLP per node.

Both are least-squares scores of an additive-noise model ``x_j = f_j(x_pa(j)) + z_j`` with equal
noise variances, the nonlinear counterpart of :class:`~bilevel.dag.scores.LeastSquares` (the
objective of NOTEARS-MLP and DAGMA-MLP restricted to a topological order)::

    F = sum_j 1/(2n) ||x_j - f_j(X_pred(j))||^2 + penalties,

where ``f_j`` may use every predecessor of ``j`` in the order. Inputs are centred and scaled to
unit variance inside the models (the targets keep their units, so ``F`` is a sum of residual
variances, as for least squares). The edge strength ``W_ij`` is put on the scale of a linear
coefficient, so that the linear path's ``w_threshold`` applies unchanged: it equals ``|w|``
when ``f_j`` is linear in ``x_i`` with slope ``w``.

:class:`AdditiveScore` (``"gam"``): ``f_j(x) = sum_{i in pred(j)} phi_i(x_i)^T beta_i`` with a
cubic B-spline basis ``phi_i`` per input (scikit-learn's ``SplineTransformer``, centred, one
column dropped for identifiability) and a ridge term ``l2/2 ||beta||^2``. A node fit is one
linear solve with the precomputed Gram matrix of all spline features, ``beta =
(G_PP + l2 I)^{-1} c_P`` and loss ``(s_jj - c_P^T beta) / 2``. ``W_ij = std(phi_i beta_i) /
std(x_i)``. Cheap (microseconds per fit), a good order finder for smooth mechanisms, and the
default initial order of the MLP score. ``equal_variances=False`` scores ``log(q_j) / 2`` instead
(``q_j`` the residual variance; one noise variance per node, CAM's score), which is invariant
to rescaling the variables; its edge strength is then ``std(phi_i beta_i) / std(x_j)``, in
standardized units, so that the whole fit is scale-free.

:class:`MLPScore` (``"mlp"``): ``f_j(x) = a^T sigmoid(U x_P + c) + b`` (``hidden`` units) with
an L1 penalty on the first layer, so an unused input gets an exact zero column::

    f_j-objective = 1/(2n) ||x_j - f_j||^2 + l1 ||U||_1 + l2/2 (||U||_F^2 + ||a||^2),

fitted by L-BFGS-B on the split ``U = U+ - U-`` (``U+-`` >= 0), with the closed-form gradient
of :func:`mlp_node_objective`. ``W_ij`` is the root mean square over the samples of the partial
derivative ``d f_j / d x_i`` (in the units of ``x``). Fits are warm-started across moves: a
node whose predecessor set changes starts from its current network (new inputs at zero,
removed ones dropped), and is not refitted at all when its current network stays a
stationary point of the new node problem -- every removed input has a zero column and every
added input ``i`` satisfies ``max_h |dL/dU[h, i]| <= l1`` (the KKT condition at ``U[:, i] =
0``). The candidate swaps are ranked by the gradient of the acyclicity function at the
NOTEARS-MLP adjacency ``A_ij = ||U_j[:, i]||^2`` (:func:`bilevel.dag.acyclicity.first_layer_acyclicity`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from bilevel.dag._order import GenericOrder
from bilevel.dag.scores import Score, _check_penalty

__all__ = ["AdditiveScore", "MLPScore", "mlp_node_objective"]


def _scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = X.mean(axis=0), X.std(axis=0)
    return (X - mu) / sd, mu, sd


class _NodeFitScore(Score):
    """Common parts of the per-node scores: constraints, the node-fit counter."""

    def _bind_common(self, X: np.ndarray) -> None:
        self._X = X
        self._n, self._d = X.shape
        self._Xs, self._mu, self._sd = _scale(X)
        self._Y = X - self._mu
        self._cache: dict = {}
        self.n_fits_ = 0

    def _count(self) -> None:
        self.n_fits_ += 1
        hook = getattr(self, "_on_fit", None)
        if hook is not None:
            hook()

    def source_gain(self, j: int) -> np.ndarray:
        """First-order gain of a first input for a node without parents: ``|x_i^T r_j| / n``
        with standardized ``x_i`` and the centred target ``r_j``."""
        g = np.abs(self._Xs.T @ self._Y[:, j]) / self._n
        g[j] = 0.0
        return g


# --------------------------------------------------------------------------------------
# Additive splines
# --------------------------------------------------------------------------------------


class AdditiveScore(_NodeFitScore):
    """Additive spline regression per node (GAM), least squares with a ridge term.

    ``f_j(x) = sum_i phi_i(x_i)^T beta_i``, ``n_knots + degree - 2`` centred B-spline features
    per input; node objective ``1/(2n) ||x_j - f_j||^2 + l2/2 ||beta||^2`` solved exactly.

    Parameters
    ----------
    n_knots, degree : int
        Of scikit-learn's :class:`~sklearn.preprocessing.SplineTransformer` (knots at quantiles).
    l2 : float
        Ridge strength on the spline coefficients (inputs standardized).
    equal_variances : bool
        ``True``: the node loss is the ridge objective (half the residual variance, the
        equal-variance least-squares score). ``False``: ``log(q_j) / 2`` with ``q_j`` the
        residual variance of the ridge fit, the profile likelihood of an additive model with
        one noise variance per node (the score of CAM, Buehlmann, Peters and Ernest 2014);
        it is invariant to rescaling the variables.
    """

    supports_greedy = True

    @property
    def supports_pruning(self) -> bool:
        return True

    def __init__(
        self, n_knots: int = 5, degree: int = 3, l2: float = 1e-4, equal_variances: bool = True
    ):
        self.n_knots = n_knots
        self.degree = degree
        self.l2 = l2
        self.equal_variances = equal_variances

    def _bind(self, X: np.ndarray) -> None:
        from sklearn.preprocessing import SplineTransformer

        self._l2 = _check_penalty("l2", self.l2)
        if int(self.n_knots) < 2 or int(self.degree) < 1:
            raise ValueError(f"need n_knots >= 2 and degree >= 1, got {self.n_knots}, {self.degree}")
        self._bind_common(X)
        n, d = X.shape
        spl = SplineTransformer(
            n_knots=int(self.n_knots), degree=int(self.degree), knots="quantile"
        ).fit(self._Xs)
        k = int(self.n_knots) + int(self.degree) - 1
        Phi = spl.transform(self._Xs).reshape(n, d, k)[:, :, :-1]  # partition of unity: drop one
        Phi = Phi - Phi.mean(axis=0)
        self._k = k - 1
        self._Phi = Phi.reshape(n, d * self._k)
        self._G = self._Phi.T @ self._Phi / n
        self._C = self._Phi.T @ self._Y / n
        self._syy = np.einsum("ij,ij->j", self._Y, self._Y) / n
        self._beta: dict = {}

    def _cols(self, ps: np.ndarray) -> np.ndarray:
        k = self._k
        return (np.asarray(ps)[:, None] * k + np.arange(k)[None, :]).ravel()

    def _fit_node(self, j: int, ps: np.ndarray) -> tuple[float, np.ndarray]:
        self._count()
        if len(ps) == 0:
            self._beta[(j, frozenset())] = np.zeros(0)
            v = float(self._syy[j])
            return (0.5 * v if self.equal_variances else 0.5 * float(np.log(v))), np.zeros(0)
        cols = self._cols(ps)
        G = self._G[np.ix_(cols, cols)] + self._l2 * np.eye(len(cols))
        c = self._C[cols, j]
        beta = np.linalg.solve(G, c)
        self._beta[(j, frozenset(ps.tolist()))] = beta
        loss = 0.5 * float(self._syy[j] - c @ beta)
        if not self.equal_variances:  # residual variance of the ridge fit, then the log
            Gb = self._G[np.ix_(cols, cols)]
            q = float(self._syy[j] - 2 * c @ beta + beta @ Gb @ beta)
            loss = 0.5 * float(np.log(q))
        B = beta.reshape(len(ps), self._k)
        Gb = self._G[np.ix_(cols, cols)]
        strength = np.array(
            [
                np.sqrt(max(B[t] @ Gb[t * self._k : (t + 1) * self._k, t * self._k : (t + 1) * self._k] @ B[t], 0.0))
                for t in range(len(ps))
            ]
        )
        if not self.equal_variances:  # scale-free like the score: standardized units
            return loss, strength / self._sd[j]
        # std(phi_i beta_i) in the units of x_j, per unit of x_i's standard deviation
        return loss, strength / self._sd[ps]

    def state(self, order: np.ndarray):
        return GenericOrder(
            order, self._fit_node, self._cache, allowed=getattr(self, "_allowed", None)
        )

    def _grad_blocks(self, state) -> np.ndarray:
        """``G[i, j]``: largest entry of the gradient of node ``j``'s objective in ``beta_i``
        (zero for fitted inputs, the first-order gain for the others; for
        ``equal_variances=False`` the gradient of ``log(q_j) / 2`` with the ridge term's
        gradient divided by ``q_j`` too, which is zero at the fit's own inputs)."""
        d, k = self._d, self._k
        out = np.zeros((d, d))
        for idx, (_, ps, _) in enumerate(state.fits):
            j = int(state.order[idx])
            beta = self._beta[(j, frozenset(ps.tolist()))]
            cols = self._cols(ps)
            g = self._G[:, cols] @ beta - self._C[:, j] if len(ps) else -self._C[:, j]
            if len(ps):
                g[cols] += self._l2 * beta
            if not self.equal_variances:  # d/dbeta log(q)/2 = (dq/dbeta / 2) / q
                q = self._syy[j] - 2 * self._C[cols, j] @ beta + beta @ (self._G[np.ix_(cols, cols)] @ beta) if len(ps) else self._syy[j]
                g = g / q
            out[:, j] = np.abs(g.reshape(d, k)).max(axis=1)
            out[j, j] = 0.0
        return out

    def gradient(self, state) -> np.ndarray:
        return self._grad_blocks(state)

    def greedy_order(self) -> np.ndarray:
        """Top-down: repeatedly place the node with the smallest fitted loss given the nodes
        already placed (for ``equal_variances=False`` the loss minus ``log(var x_j) / 2``,
        the log of the unexplained fraction of the variance, so the order is scale-free)."""
        remaining = list(range(self._d))
        placed: list[int] = []
        offset = np.zeros(self._d) if self.equal_variances else 0.5 * np.log(self._syy)
        while remaining:
            ps = np.array(sorted(placed), dtype=np.intp)
            losses = [self._fit_node(j, ps)[0] - offset[j] for j in remaining]
            placed.append(remaining.pop(int(np.argmin(losses))))
        return np.array(placed, dtype=np.intp)

    def prune_node(self, j: int, ps: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BIC backward elimination of whole inputs (spline blocks) for node ``j``."""
        from bilevel.dag.scores import bic_backward

        k = self._k
        groups = [np.arange(t * k, (t + 1) * k) for t in range(len(ps))]
        cols = self._cols(ps)
        G = self._G[np.ix_(cols, cols)] + self._l2 * np.eye(len(cols))
        sel = bic_backward(G, self._C[cols, j], float(self._syy[j]), self._n, groups, keep)
        kept = ps[sel]
        if len(kept) == 0:
            return kept, np.zeros(0)
        _, strength = self._fit_node(j, kept)
        return kept, strength


# --------------------------------------------------------------------------------------
# One MLP per node
# --------------------------------------------------------------------------------------


def mlp_node_objective(
    v: np.ndarray, Xp: np.ndarray, y: np.ndarray, hidden: int, l2: float, l1w: np.ndarray
) -> tuple[float, np.ndarray]:
    """Node objective of :class:`MLPScore` on the split parameters and its exact gradient.

    ``v = [vec U+, vec U-, c, a, b]`` (``U = U+ - U-`` of shape ``(hidden, p)``, row-major)::

        L(v) = 1/(2n) ||y - sigmoid(Xp U^T + c) a - b||^2 + l2/2 (||U||^2 + ||a||^2)
               + sum_{h,i} l1w_i (U+_hi + U-_hi)

    With ``r = out - y``, ``S = sigmoid(Z)``, ``Z = Xp U^T + c``, ``D = (r a^T / n) * S (1 - S)``:
    ``dL/dU = D^T Xp + l2 U`` (``+ l1w`` for ``U+``, ``- (...) + l1w`` for ``U-``),
    ``dL/dc = 1^T D``, ``dL/da = S^T r / n + l2 a``, ``dL/db = mean(r)``.
    """
    n, p = Xp.shape
    h = hidden
    hp = h * p
    U = (v[:hp] - v[hp : 2 * hp]).reshape(h, p)
    c, a, b = v[2 * hp : 2 * hp + h], v[2 * hp + h : 2 * hp + 2 * h], v[-1]
    S = expit(Xp @ U.T + c)
    r = S @ a + b - y
    f = 0.5 * float(r @ r) / n + 0.5 * l2 * (float(np.sum(U * U)) + float(a @ a))
    f += float(np.sum(l1w[None, :] * (v[:hp] + v[hp : 2 * hp]).reshape(h, p)))
    D = (r[:, None] * a[None, :] / n) * S * (1.0 - S)
    gU = D.T @ Xp + l2 * U
    L1 = np.broadcast_to(l1w[None, :], (h, p)).ravel()
    g = np.concatenate(
        [gU.ravel() + L1, -gU.ravel() + L1, D.sum(axis=0), S.T @ r / n + l2 * a, [r.mean()]]
    )
    return f, g


class MLPScore(_NodeFitScore):
    """One sigmoid MLP per node with an L1 first layer; edge strength on the linear scale.

    ``f_j(x) = a^T sigmoid(U x_P + c) + b`` on standardized inputs, node objective
    ``1/(2n) ||x_j - f_j||^2 + l1 ||U||_1 + l2/2 (||U||^2 + ||a||^2)`` (see the module
    docstring), fitted by L-BFGS-B with the closed-form gradient of :func:`mlp_node_objective`.
    ``W_ij = sqrt(mean_s (d f_j / d x_i)(x_s)^2)``. A first fit of ``(j, P)`` starts from
    weights drawn from a generator seeded by ``(random_state, j, P)``; later fits are warm
    starts from the node's current network, and a node whose network stays stationary for
    its new predecessor set is not refitted (module docstring). The problem is non-convex:
    "the" inner optimum is a local one, as in the paper.

    Parameters
    ----------
    hidden : int
        Hidden units per node.
    l1, l2 : float
        Penalty strengths (inputs standardized, targets in their own units).
    max_iter : int
        L-BFGS-B iterations per fit.
    random_state : int
        Seeds the first fits.
    warm_start : bool
        Warm starts and the stationarity-based reuse (``False``: every fit from scratch).
    tol : float
        L-BFGS-B's relative decrease tolerance ``ftol`` (and ``gtol = 1e-5``).
    init_score : {"gam", None}
        ``init="auto"`` of :class:`~bilevel.dag.topo.TopoSearch` starts from the order TOPO
        finds with :class:`AdditiveScore` (``"gam"``) or from the variance order (``None``).
    """

    def __init__(
        self,
        hidden: int = 10,
        l1: float = 0.01,
        l2: float = 1e-3,
        max_iter: int = 500,
        random_state: int = 0,
        warm_start: bool = True,
        init_score: str | None = "gam",
        tol: float = 1e-8,
    ):
        self.hidden = hidden
        self.l1 = l1
        self.l2 = l2
        self.max_iter = max_iter
        self.random_state = random_state
        self.warm_start = warm_start
        self.init_score = init_score
        self.tol = tol

    def _bind(self, X: np.ndarray) -> None:
        self._l1 = _check_penalty("l1", self.l1)
        self._l2 = _check_penalty("l2", self.l2)
        if int(self.hidden) < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.init_score not in ("gam", None):
            raise ValueError(f"init_score must be 'gam' or None, got {self.init_score!r}")
        self._bind_common(X)
        self._params: dict = {}
        self._required = np.zeros((self._d, self._d), dtype=bool)

    # ---- node fits --------------------------------------------------------------------
    def _l1w(self, j: int, ps: np.ndarray) -> np.ndarray:
        return np.where(self._required[ps, j], 0.0, self._l1)

    def _fit_node(self, j: int, ps: np.ndarray, warm: np.ndarray | None = None):
        key = (int(j), frozenset(ps.tolist()))
        y = self._Y[:, j]
        if len(ps) == 0:
            self._params[key] = None
            return 0.5 * float(y @ y) / self._n, np.zeros(0)
        h, p = int(self.hidden), len(ps)
        old = None if warm is None else self._params.get((int(j), frozenset(warm.tolist())))
        if old is not None and self.warm_start:
            reused = self._reuse(j, ps, old)
            if reused is not None:
                self._params[key] = reused
                return reused["loss"], reused["strength"]
        x0 = self._start(j, ps, old if self.warm_start else None)
        Xp = self._Xs[:, ps]
        l1w = self._l1w(j, ps)
        self._count()
        res = minimize(
            mlp_node_objective,
            x0,
            args=(Xp, y, h, self._l2, l1w),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, None)] * (2 * h * p) + [(None, None)] * (2 * h + 1),
            options={"maxiter": int(self.max_iter), "ftol": self.tol, "gtol": 1e-5, "maxcor": 20},
        )
        hp = h * p
        U = (res.x[:hp] - res.x[hp : 2 * hp]).reshape(h, p)
        net = {
            "ps": ps.copy(),
            "U": U,
            "c": res.x[2 * hp : 2 * hp + h].copy(),
            "a": res.x[2 * hp + h : 2 * hp + 2 * h].copy(),
            "b": float(res.x[-1]),
        }
        self._finish_net(j, net)
        self._params[key] = net
        return net["loss"], net["strength"]

    def _finish_net(self, j: int, net: dict) -> None:
        """Loss, edge strengths and the smooth gradient in the weights of *all* inputs."""
        ps, U, c, a, b = net["ps"], net["U"], net["c"], net["a"], net["b"]
        Xp = self._Xs[:, ps]
        S = expit(Xp @ U.T + c)
        r = S @ a + b - self._Y[:, j]
        n = self._n
        D = (r[:, None] * a[None, :] / n) * S * (1.0 - S)
        G = D.T @ self._Xs  # (h, d): dL_smooth/dU for every input, unused ones at zero
        Ufull = np.zeros((U.shape[0], self._d))
        Ufull[:, ps] = U
        G += self._l2 * Ufull
        J = (S * (1.0 - S) * a[None, :]) @ U  # (n, p): d f / d (standardized x)
        net["strength"] = np.sqrt(np.mean(J * J, axis=0)) / self._sd[ps]
        smooth = 0.5 * float(r @ r) / n + 0.5 * self._l2 * (float(np.sum(U * U)) + float(a @ a))
        net["loss"] = smooth + float(np.sum(self._l1w(j, ps)[None, :] * np.abs(U)))
        net["grad"] = G
        net["Ufull"] = Ufull

    def _reuse(self, j: int, ps: np.ndarray, old: dict) -> dict | None:
        """The current network if it stays a stationary point for the predecessors ``ps``."""
        used = old["ps"][np.any(old["U"] != 0, axis=0)]
        if not np.all(np.isin(used, ps)):
            return None
        added = ps[~np.isin(ps, old["ps"])]
        if len(added):
            gain = np.abs(old["grad"][:, added]).max(axis=0)
            if np.any(gain > self._l1w(j, added) + 1e-7):
                return None
        U = np.zeros((old["U"].shape[0], len(ps)))
        pos = {int(q): t for t, q in enumerate(ps)}
        for t, q in enumerate(old["ps"]):
            if int(q) in pos:
                U[:, pos[int(q)]] = old["U"][:, t]
        net = {"ps": ps.copy(), "U": U, "c": old["c"], "a": old["a"], "b": old["b"]}
        self._finish_net(j, net)
        return net

    def _start(self, j: int, ps: np.ndarray, old: dict | None) -> np.ndarray:
        h, p = int(self.hidden), len(ps)
        if old is None:
            g = np.random.default_rng([int(self.random_state), int(j), *map(int, ps)])
            U = g.normal(0, 1 / np.sqrt(p), (h, p))
            c = np.zeros(h)
            a = g.normal(0, 1 / np.sqrt(h), h)
            b = 0.0
        else:
            U = np.zeros((h, p))
            pos = {int(q): t for t, q in enumerate(ps)}
            for t, q in enumerate(old["ps"]):
                if int(q) in pos:
                    U[:, pos[int(q)]] = old["U"][:, t]
            c, a, b = old["c"], old["a"], old["b"]
        return np.concatenate(
            [np.maximum(U, 0).ravel(), np.maximum(-U, 0).ravel(), c, a, [b]]
        )

    def state(self, order: np.ndarray):
        return GenericOrder(
            order, self._fit_node, self._cache, allowed=getattr(self, "_allowed", None), warm=True
        )

    # ---- interface ---------------------------------------------------------------------
    def _nets(self, state):
        for k, (_, ps, _) in enumerate(state.fits):
            j = int(state.order[k])
            yield j, self._params[(j, frozenset(ps.tolist()))]

    def gradient(self, state) -> np.ndarray:
        """``G[i, j] = max_h |dL_j / dU_j[h, i]|`` (smooth part, all inputs, unused ones at
        zero); for a source node, which has no network, :meth:`source_gain`."""
        G = np.zeros((self._d, self._d))
        for j, net in self._nets(state):
            G[:, j] = self.source_gain(j) if net is None else np.abs(net["grad"]).max(axis=0)
        np.fill_diagonal(G, 0.0)
        return G

    def kkt_gap(self, state) -> np.ndarray:
        """Largest violation over the first-layer weights from ``i`` in the network of ``j``
        of ``0 in dL/dU + l1 d|U|``."""
        gap = np.zeros((self._d, self._d))
        for j, net in self._nets(state):
            if net is None:
                gap[:, j] = np.maximum(self.source_gain(j) - self._l1, 0.0)
                continue
            U, gU = net["Ufull"], net["grad"]
            lw = np.full(self._d, self._l1)
            lw[self._required[:, j]] = 0.0
            e = np.where(
                U != 0, np.abs(gU + lw[None, :] * np.sign(U)), np.maximum(np.abs(gU) - lw[None, :], 0.0)
            )
            gap[:, j] = e.max(axis=0)
        np.fill_diagonal(gap, 0.0)
        return gap

    def first_layers(self, state) -> np.ndarray:
        """``(d, hidden, d)`` array: ``[j]`` is node ``j``'s first layer over all inputs."""
        out = np.zeros((self._d, int(self.hidden), self._d))
        for j, net in self._nets(state):
            if net is not None:
                out[j] = net["Ufull"]
        return out

    def acyclicity_matrix(self, state) -> np.ndarray:
        """NOTEARS-MLP adjacency ``A_ij = ||U_j[:, i]||^2`` of the fitted first layers,
        divided by its largest entry when that exceeds one (``h_logdet`` and ``h_expm`` of an
        acyclic ``A`` grow like products along paths; the pattern of zeros of the gradient,
        which is what marks the free pairs, does not change)."""
        A = np.einsum("jhi,jhi->ij", *(self.first_layers(state),) * 2)
        top = A.max(initial=0.0)
        return A / top if top > 1.0 else A

    def auto_order(self) -> np.ndarray | None:
        if self.init_score is None:
            return None
        from bilevel.dag.topo import TopoSearch

        prior = getattr(self, "_prior", None)
        est = TopoSearch(score=AdditiveScore(), prune="none")
        return est.fit(self._X, **({} if prior is None else prior.as_kwargs())).order_
