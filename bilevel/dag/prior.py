"""Prior knowledge for structure learning: required and forbidden edges, and tiers.

A search over topological orders respects such knowledge through two objects:

* the *precedence* relation ``P[i, j]`` (``i`` must come before ``j`` in every order): a
  required edge ``i -> j`` and every pair with ``tier(i) < tier(j)``. It must be acyclic,
  else the knowledge contradicts itself. An order is feasible when no pair is reversed;
  a move rearranging a block of positions is feasible when the new block is (the rest of
  the order keeps its relative positions).
* the *allowed* parents ``allowed[i, j] = not forbidden[i, j]`` and ``tier(i) <= tier(j)``,
  which restrict every node fit.

Required edges also stay in the result whatever their weight (see
:class:`bilevel.dag.topo.TopoSearch`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bilevel.dag.metrics import is_dag

__all__ = ["PriorKnowledge", "prior_knowledge"]


@dataclass(frozen=True)
class PriorKnowledge:
    """Validated prior knowledge on ``d`` nodes (build it with :func:`prior_knowledge`).

    Attributes
    ----------
    required : (d, d) bool ndarray
        Required edges ``i -> j``.
    forbidden : (d, d) bool ndarray
        Forbidden edges (explicit ones and those against the tiers).
    precedence : (d, d) bool ndarray
        ``i`` must precede ``j`` in every order.
    """

    required: np.ndarray
    forbidden: np.ndarray
    precedence: np.ndarray
    tiers: np.ndarray | None = None

    def as_kwargs(self) -> dict:
        """``required``, ``forbidden`` and ``tiers`` for :meth:`TopoSearch.fit`."""
        return {"required": self.required, "forbidden": self.forbidden, "tiers": self.tiers}

    @property
    def allowed(self) -> np.ndarray | None:
        """``~forbidden``, or None when nothing is forbidden."""
        return None if not self.forbidden.any() else ~self.forbidden

    @property
    def empty(self) -> bool:
        return not (self.precedence.any() or self.forbidden.any())

    def valid(self, block: np.ndarray) -> bool:
        """Whether the nodes of ``block``, in this order, reverse no precedence pair."""
        if not self.precedence.any() or len(block) < 2:
            return True
        P = self.precedence[np.ix_(block, block)]
        return not np.tril(P, -1).any()

    def feasible(self, order: np.ndarray) -> bool:
        return self.valid(np.asarray(order))

    def repair(self, order: np.ndarray) -> np.ndarray:
        """The feasible order closest to ``order`` in the sense of a stable topological sort:
        repeatedly take the earliest node of ``order`` whose required predecessors are all
        placed. Returns ``order`` itself when it is feasible."""
        order = np.asarray(order, dtype=np.intp)
        if self.feasible(order):
            return order
        d = len(order)
        rank = np.empty(d, dtype=np.intp)
        rank[order] = np.arange(d)
        indeg = self.precedence.sum(axis=0).astype(int)
        ready = [(int(rank[v]), int(v)) for v in range(d) if indeg[v] == 0]
        heapq.heapify(ready)
        out = []
        while ready:
            _, v = heapq.heappop(ready)
            out.append(v)
            for w in np.flatnonzero(self.precedence[v]):
                indeg[w] -= 1
                if indeg[w] == 0:
                    heapq.heappush(ready, (int(rank[w]), int(w)))
        return np.array(out, dtype=np.intp)


def _edge_matrix(edges: Any, d: int, name: str) -> np.ndarray:
    if edges is None:
        return np.zeros((d, d), dtype=bool)
    arr = np.asarray(edges) if not isinstance(edges, Iterable) or hasattr(edges, "shape") else None
    if arr is not None and arr.ndim == 2 and arr.shape == (d, d):
        M = arr != 0
    else:
        M = np.zeros((d, d), dtype=bool)
        for pair in edges:
            try:
                i, j = (int(v) for v in pair)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: each edge must be a pair (i, j) of node indices, got {pair!r}") from None
            if not (0 <= i < d and 0 <= j < d):
                raise ValueError(f"{name}: edge ({i}, {j}) refers to a node outside 0..{d - 1}")
            M[i, j] = True
    if np.any(np.diag(M)):
        raise ValueError(f"{name}: self-loops (i, i) are not edges")
    return M


def prior_knowledge(
    d: int, required: Any = None, forbidden: Any = None, tiers: Any = None
) -> PriorKnowledge:
    """Validate and combine prior knowledge on ``d`` nodes.

    Parameters
    ----------
    required, forbidden : None, (d, d) array (nonzero = edge) or iterable of (i, j) pairs
    tiers : None or (d,) integers
        Edges from a higher tier to a lower one are forbidden and lower tiers come first.

    Raises
    ------
    ValueError
        Malformed input, an edge both required and forbidden, or a contradiction (a cycle
        of required edges and tier constraints).
    """
    R = _edge_matrix(required, d, "required")
    F = _edge_matrix(forbidden, d, "forbidden")
    both = np.argwhere(R & F)
    if len(both):
        i, j = both[0]
        raise ValueError(f"edge ({i}, {j}) is both required and forbidden")
    P = R.copy()
    t = None
    if tiers is not None:
        t = np.asarray(tiers)
        if t.shape != (d,) or t.dtype.kind not in "iu":
            raise ValueError(f"tiers must be {d} integers (one tier per node), got {tiers!r}")
        earlier = t[:, None] < t[None, :]
        against = t[:, None] > t[None, :]
        bad = np.argwhere(R & against)
        if len(bad):
            i, j = bad[0]
            raise ValueError(
                f"required edge ({i}, {j}) goes from tier {t[i]} back to tier {t[j]}"
            )
        P |= earlier
        F = F | against
    if not is_dag(R.astype(float)):
        raise ValueError("the required edges contain a directed cycle")
    return PriorKnowledge(required=R, forbidden=F, precedence=P, tiers=t)
