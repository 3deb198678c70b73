"""Inner problem of TOPO: the best weights and the score of a fixed topological order.

Two implementations of one small interface (``order``, ``node_loss``, ``move_losses``,
``apply``, ``weights``, ``copy``):

* :class:`CholeskyOrder` for Gaussian least-squares-type scores. With ``S`` the (ridge-shifted)
  Gram matrix and ``S[pi, pi] = R^T R`` its upper Cholesky factor in the order ``pi``, the
  residual variance of the node at position ``k`` given all earlier nodes is ``R[k, k]^2``
  (``S = L D L^T`` with ``D = diag(R)^2``), and the regression weights are
  ``B = I - R^{-1} diag(diag R)`` in order coordinates. Rearranging the nodes inside the
  positions ``a..b`` only changes rows ``a..b`` of ``R``: ``R[a:b+1, a:b+1] P = Q R'`` (a small
  QR), rows ``a..b`` become ``[R', Q^T R[a:b+1, b+1:]]``, and rows after ``b`` are unchanged,
  since the set of predecessors of every later node is unchanged. Scoring a move costs one
  ``(b-a+1)``-square QR and no regression.
* :class:`GenericOrder` for scores that fit one model per node (lasso, logistic, MLP): moving
  nodes inside ``a..b`` refits only the nodes at positions ``a..b``; fits are memoised by
  ``(node, parent set)``.

A *move* is ``(a, b, perm)``: the nodes at positions ``a..b`` are rearranged so that the new
node at position ``a + t`` is the old node at position ``a + perm[t]``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import scipy.linalg as sla

_geqrf = sla.get_lapack_funcs("geqrf", dtype=np.float64)

__all__ = ["CholeskyOrder", "GenericOrder", "greedy_order", "move_perm"]


@lru_cache(maxsize=4096)
def move_perm(kind: str, m: int) -> np.ndarray:
    """Local permutation of a block of ``m + 1`` positions for one move (read-only array).

    ``"swap"`` exchanges the two ends, ``"up"`` moves the last node to the front (the others
    shift back), ``"down"`` moves the first node to the end.
    """
    perm = _perm(kind, m)
    perm.setflags(write=False)
    return perm


def _perm(kind: str, m: int) -> np.ndarray:
    perm = np.arange(m + 1)
    if kind == "swap":
        perm[0], perm[m] = m, 0
    elif kind == "up":
        perm = np.concatenate([[m], np.arange(m)])
    elif kind == "down":
        perm = np.concatenate([np.arange(1, m + 1), [0]])
    else:
        raise ValueError(f"unknown move {kind!r}")
    return perm


class CholeskyOrder:
    """Score of a topological order for the Gaussian least-squares family.

    Node losses (per position) are ``node_fn(D_k)`` with ``D_k = R[k, k]^2`` the residual
    variance of the node at position ``k`` given its predecessors (ridge-shifted when
    ``S = X^T X / n + l2 I``).
    """

    def __init__(
        self,
        S: np.ndarray,
        order: np.ndarray,
        node_fn: Callable[[np.ndarray], np.ndarray],
        R: np.ndarray | None = None,
    ):
        self.S = S
        self.order = np.asarray(order, dtype=np.intp).copy()
        self.node_fn = node_fn
        if R is None:
            P = S[np.ix_(self.order, self.order)]
            try:
                R = sla.cholesky(P, lower=False)
            except np.linalg.LinAlgError as exc:
                raise np.linalg.LinAlgError(
                    "the Gram matrix is singular (collinear columns or n < d); "
                    "use an L2-regularised score"
                ) from exc
        self.R = R
        self.node_loss = node_fn(np.diag(R) ** 2)

    @property
    def total(self) -> float:
        return float(self.node_loss.sum())

    def copy(self) -> CholeskyOrder:
        return CholeskyOrder(self.S, self.order, self.node_fn, self.R.copy())

    def block_variances(self, a: int, b: int, perm: np.ndarray) -> np.ndarray:
        """Residual variances of positions ``a..b`` after the move, from one small QR."""
        T = self.R[a : b + 1, a + perm]
        if len(perm) == 1:
            return T[0] ** 2
        qr, _, _, info = _geqrf(T.T.copy().T, overwrite_a=True)  # Fortran-ordered copy
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise np.linalg.LinAlgError(f"geqrf failed with info={info}")
        return np.diagonal(qr) ** 2

    def move_losses(self, a: int, b: int, perm: np.ndarray) -> np.ndarray:
        return self.node_fn(self.block_variances(a, b, perm))

    def apply(self, a: int, b: int, perm: np.ndarray) -> None:
        """Apply a move in place, updating only rows ``a..b`` of the factor."""
        R = self.R
        R[: b + 1, a : b + 1] = R[: b + 1, a : b + 1][:, perm]
        Q, Rm = np.linalg.qr(R[a : b + 1, a : b + 1])
        sgn = np.where(np.diag(Rm) < 0, -1.0, 1.0)
        Rm *= sgn[:, None]
        Q = Q * sgn[None, :]
        R[a : b + 1, a : b + 1] = Rm
        R[a : b + 1, b + 1 :] = Q.T @ R[a : b + 1, b + 1 :]
        self.order[a : b + 1] = self.order[a : b + 1][perm]
        self.node_loss[a : b + 1] = self.node_fn(np.diag(Rm) ** 2)

    def weights(self) -> np.ndarray:
        """``W*(pi)``: ``W[i, j]`` is the weight of ``i`` in the regression of ``j``."""
        d = self.R.shape[0]
        r = np.diag(self.R)
        B = np.eye(d) - sla.solve_triangular(self.R, np.diag(r), lower=False)
        B = np.triu(B, 1)
        W = np.zeros((d, d))
        W[np.ix_(self.order, self.order)] = B
        return W


class GenericOrder:
    """Score of a topological order for scores that fit one model per node.

    ``fit_node(j, parents)`` returns ``(loss_j, coef)`` where ``coef`` is the column of edge
    strengths from ``parents`` to ``j``; results are memoised in ``cache``. The parents of a
    node are its predecessors, restricted to ``allowed[:, j]`` when given (forbidden edges).
    With ``warm=True`` a refit also gets the node's current parent set,
    ``fit_node(j, parents, warm=previous_parents)``, for warm starts.
    """

    def __init__(
        self,
        order: np.ndarray,
        fit_node: Callable[..., tuple[float, np.ndarray]],
        cache: dict | None = None,
        _fits: list | None = None,
        allowed: np.ndarray | None = None,
        warm: bool = False,
    ):
        self.order = np.asarray(order, dtype=np.intp).copy()
        self.fit_node = fit_node
        self.cache = {} if cache is None else cache
        self.allowed = allowed
        self.warm = warm
        if _fits is None:
            _fits = [self._fit(self.order[k], self.order[:k]) for k in range(len(self.order))]
        self.fits = _fits
        self.node_loss = np.array([f[0] for f in self.fits])

    @property
    def total(self) -> float:
        return float(self.node_loss.sum())

    def _fit(self, j: int, parents: np.ndarray, previous=None) -> tuple[float, np.ndarray, np.ndarray]:
        if self.allowed is not None:
            parents = parents[self.allowed[parents, j]]
        key = (int(j), frozenset(parents.tolist()))
        hit = self.cache.get(key)
        if hit is None:
            ps = np.sort(parents)
            if self.warm and previous is not None:
                loss, coef = self.fit_node(int(j), ps, warm=previous[1])
            else:
                loss, coef = self.fit_node(int(j), ps)
            hit = (float(loss), ps, np.asarray(coef, dtype=float))
            self.cache[key] = hit
        return hit

    def copy(self) -> GenericOrder:
        return GenericOrder(
            self.order, self.fit_node, self.cache, list(self.fits), self.allowed, self.warm
        )

    def _block_fits(self, a: int, b: int, perm: np.ndarray) -> list:
        new = self.order.copy()
        new[a : b + 1] = new[a : b + 1][perm]
        return [
            self._fit(new[k], new[:k], self.fits[a + perm[k - a]]) for k in range(a, b + 1)
        ]

    def move_losses(self, a: int, b: int, perm: np.ndarray) -> np.ndarray:
        return np.array([f[0] for f in self._block_fits(a, b, perm)])

    def apply(self, a: int, b: int, perm: np.ndarray) -> None:
        fits = self._block_fits(a, b, perm)
        self.order[a : b + 1] = self.order[a : b + 1][perm]
        self.fits[a : b + 1] = fits
        self.node_loss[a : b + 1] = [f[0] for f in fits]

    def weights(self) -> np.ndarray:
        d = len(self.order)
        W = np.zeros((d, d))
        for k, (_, ps, coef) in enumerate(self.fits):
            if len(ps):
                W[ps, self.order[k]] = coef
        return W


def greedy_order(S: np.ndarray) -> np.ndarray:
    """Top-down order for the least-squares score: repeatedly take the node with the smallest
    residual variance given the nodes already taken (Chen, Drton and Wang 2019).

    ``S`` is a positive definite (ridge-shifted) Gram matrix; ``O(d^3)`` through rank-one
    downdates of the Schur complement.
    """
    C = np.array(S, dtype=float, copy=True)
    d = C.shape[0]
    remaining = list(range(d))
    order = []
    for _ in range(d):
        diag = np.diag(C)
        k = int(np.argmin(diag))
        order.append(remaining[k])
        c = C[:, k].copy()
        if c[k] > 0:
            C = C - np.outer(c, c) / c[k]
        keep = [t for t in range(len(remaining)) if t != k]
        C = C[np.ix_(keep, keep)]
        remaining.pop(k)
    return np.array(order, dtype=np.intp)
