"""Accuracy of an estimated graph against the true DAG, and an acyclicity check.

The definitions are those of NOTEARS (Zheng et al., 2018, ``utils.count_accuracy``), which
DAGMA, TOPO and most of the literature report:

* ``nnz``: number of predicted edges ``|P|``;
* ``tpr = |P ∩ T| / |T|`` (true positive rate, recall);
* ``fdr = (|R| + |F|) / |P|`` where ``R = P ∩ T^T`` are predicted edges whose reverse is
  true and ``F = P \\ (T ∪ T^T)`` are edges between non-adjacent nodes;
* ``fpr = (|R| + |F|) / (d (d - 1) / 2 - |T|)``;
* ``shd``: structural Hamming distance, the number of unordered node pairs whose
  (non-)edge differs: extra and missing edges of the skeleton, plus reversed edges, each
  counted once.

Denominators of zero are replaced by one (a rate of 0 rather than NaN).

Observational data identify a DAG only up to its Markov equivalence class, represented by
its CPDAG (completed partially directed acyclic graph, or essential graph): the skeleton, with
the edges directed that have the same direction in every member of the class.
:func:`cpdag` builds it from the v-structures and Meek's orientation rules R1-R3 (Meek 1995,
which are complete when no background knowledge is added), and :func:`shd_cpdag` counts the
unordered pairs whose status (no edge, ``i -> j``, ``j -> i``, undirected) differs between
two CPDAGs -- the SHD of two CPDAGs as in pcalg's ``shd``.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

import numpy as np

__all__ = ["count_accuracy", "cpdag", "is_dag", "shd_cpdag"]


def _square(W: np.ndarray, name: str) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {W.shape}")
    if W.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {W.dtype}")
    if W.dtype.kind == "f" and not np.all(np.isfinite(W)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return W


def is_dag(W: np.ndarray) -> bool:
    """Whether the directed graph with an edge ``i -> j`` for every ``W[i, j] != 0`` is acyclic.

    Self-loops (nonzero diagonal entries) are cycles.

    Parameters
    ----------
    W : numpy.ndarray
        ``(d, d)`` (weighted) adjacency matrix.

    Returns
    -------
    bool
    """
    W = _square(W, "W")
    if np.any(np.diag(W) != 0):
        return False
    graph = {j: set(np.flatnonzero(W[:, j]).tolist()) for j in range(W.shape[0])}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError:
        return False
    return True


def count_accuracy(B_true: np.ndarray, B_est: np.ndarray) -> dict[str, float]:
    """Compare an estimated graph with the true DAG (NOTEARS definitions, see module doc).

    Parameters
    ----------
    B_true : numpy.ndarray
        ``(d, d)`` adjacency matrix of the true graph; nonzero entries are edges ``i -> j``.
        Usually a DAG; longer directed cycles are accepted (the consensus network of the
        Sachs data has one), but self-loops and 2-cycles are not, since the definitions
        classify each unordered pair by its single true direction.
    B_est : numpy.ndarray
        ``(d, d)`` estimated (weighted) adjacency matrix; nonzero entries are edges. It need
        not be acyclic; a pair predicted in both directions is one reversed edge when the
        truth has one of them, and one extra edge otherwise.

    Returns
    -------
    dict
        ``{"shd": int, "tpr": float, "fdr": float, "fpr": float, "nnz": int}``.
    """
    T = _square(B_true, "B_true") != 0
    P = _square(B_est, "B_est") != 0
    if T.shape != P.shape:
        raise ValueError(f"B_true has shape {T.shape} but B_est has shape {P.shape}")
    if np.any(np.diag(T)) or np.any(T & T.T):
        raise ValueError("B_true has self-loops or 2-cycles (edges in both directions)")
    if np.any(np.diag(P)):
        raise ValueError("B_est has self-loops (nonzero diagonal)")
    d = T.shape[0]
    n_true = int(T.sum())
    n_pred = int(P.sum())
    true_pos = int((P & T).sum())
    reverse = int((P & T.T & ~T).sum())
    false_pos = int((P & ~T & ~T.T).sum())
    skel_true = np.tril(T | T.T, k=-1)
    skel_est = np.tril(P | P.T, k=-1)
    extra = int((skel_est & ~skel_true).sum())
    missing = int((skel_true & ~skel_est).sum())
    n_neg = d * (d - 1) // 2 - n_true
    return {
        "shd": extra + missing + reverse,
        "tpr": true_pos / max(n_true, 1),
        "fdr": (reverse + false_pos) / max(n_pred, 1),
        "fpr": (reverse + false_pos) / max(n_neg, 1),
        "nnz": n_pred,
    }


def cpdag(B: np.ndarray) -> np.ndarray:
    """CPDAG of the DAG ``B`` as a boolean matrix: ``C[i, j] and not C[j, i]`` is a directed
    edge ``i -> j``, ``C[i, j] and C[j, i]`` an undirected one.

    Keeps the edges of the v-structures ``a -> c <- b`` (``a``, ``b`` non-adjacent) directed,
    makes every other edge undirected, then applies Meek's rules until none applies:
    R1 ``a -> b - c``, ``a``, ``c`` non-adjacent: ``b -> c``; R2 ``a -> c -> b`` and ``a - b``:
    ``a -> b``; R3 ``a - c -> b``, ``a - d -> b``, ``c``, ``d`` non-adjacent, ``a - b``:
    ``a -> b``.
    """
    A = _square(B, "B") != 0
    if not is_dag(A):
        raise ValueError("B is not a DAG; only a DAG has a CPDAG")
    d = A.shape[0]
    adj = A | A.T
    directed = np.zeros_like(A)
    for c in range(d):
        pa = np.flatnonzero(A[:, c])
        for x in range(len(pa)):
            for y in range(x + 1, len(pa)):
                a, b = pa[x], pa[y]
                if not adj[a, b]:
                    directed[a, c] = directed[b, c] = True
    undirected = adj & ~directed & ~directed.T
    changed = True
    while changed:
        changed = False
        for a, b in np.argwhere(np.triu(undirected)):
            for u, v in ((a, b), (b, a)):
                if not undirected[u, v]:
                    continue
                into_u = np.flatnonzero(directed[:, u])
                # R1: w -> u - v with w, v non-adjacent
                r1 = np.any(~adj[into_u, v] & (into_u != v))
                # R2: u -> w -> v
                r2 = np.any(directed[u] & directed[:, v])
                # R3: u - w1 -> v and u - w2 -> v with w1, w2 non-adjacent
                w = np.flatnonzero(undirected[u] & directed[:, v])
                r3 = len(w) >= 2 and bool(np.any(~adj[np.ix_(w, w)] & ~np.eye(len(w), dtype=bool)))
                if r1 or r2 or r3:
                    directed[u, v] = True
                    undirected[u, v] = undirected[v, u] = False
                    changed = True
                    break
    return directed | undirected


def shd_cpdag(B_true: np.ndarray, B_est: np.ndarray) -> int:
    """SHD between the CPDAGs of two DAGs: the number of unordered pairs ``{i, j}`` whose
    status (absent, ``i -> j``, ``j -> i``, undirected) differs. Zero exactly when the two
    DAGs are Markov equivalent."""
    C1, C2 = cpdag(B_true), cpdag(B_est)
    if C1.shape != C2.shape:
        raise ValueError(f"B_true has shape {C1.shape} but B_est has shape {C2.shape}")
    diff = (C1 != C2) | (C1.T != C2.T)
    return int(np.triu(diff, 1).sum())
