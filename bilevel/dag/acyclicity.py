"""NOTEARS-type acyclicity functions ``h`` and their gradients.

Each function takes a nonnegative matrix ``A`` (``A = |W|`` or ``A = W * W`` for a weighted
adjacency ``W``) and returns ``(h(A), grad_A h(A))``. For every one of them ``h(A) >= 0`` with
equality if and only if the graph of ``A`` is acyclic, and for an acyclic ``A`` the gradient
entry ``[grad_A h(A)]_{ij}`` is zero exactly when there is no directed path ``j -> ... -> i``,
i.e. when adding the edge ``i -> j`` would not close a cycle. This is the property TOPO uses to
pick candidate swaps (Deng et al., ICML 2023).

* ``logdet`` (DAGMA, Bello et al. 2022): ``h(A) = -log det(sI - A) + d log s``,
  ``grad = (sI - A)^{-T}``; defined on ``{A : spectral radius(A) < s}``, which contains all
  acyclic ``A`` for any ``s > 0``.
* ``expm`` (NOTEARS, Zheng et al. 2018): ``h(A) = tr exp(A) - d``, ``grad = exp(A)^T``.
* ``poly`` (Yu et al. 2019): ``h(A) = tr (I + A/d)^d - d``, ``grad = ((I + A/d)^{d-1})^T``.

:func:`acyclicity` composes them with ``A = |W|`` or ``A = W * W`` and applies the chain rule;
:func:`first_layer_acyclicity` with the adjacency of a nonlinear model (NOTEARS-MLP), ``A_ij =
sum_h U_j[h, i]^2`` over the first-layer weights from ``i`` in the network of ``j``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg as sla

__all__ = [
    "ACYCLICITY_FUNCTIONS",
    "acyclicity",
    "first_layer_acyclicity",
    "h_expm",
    "h_logdet",
    "h_poly",
]


def _check_square(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError("the matrix holds NaN or infinite values")
    return A


def h_logdet(A: np.ndarray, s: float = 1.0) -> tuple[float, np.ndarray]:
    """Log-determinant acyclicity ``h(A) = -log det(sI - A) + d log s`` and its gradient.

    Raises ``ValueError`` when ``sI - A`` is not an M-matrix (``det <= 0``), i.e. outside the
    domain where ``h`` characterises acyclicity.
    """
    A = _check_square(A)
    d = A.shape[0]
    M = s * np.eye(d) - A
    sign, logabsdet = np.linalg.slogdet(M)
    if sign <= 0:
        raise ValueError("sI - A is singular or has a nonpositive determinant; increase s")
    G = np.linalg.solve(M, np.eye(d)).T
    return float(-logabsdet + d * np.log(s)), G


def h_expm(A: np.ndarray) -> tuple[float, np.ndarray]:
    """Trace-exponential acyclicity ``h(A) = tr exp(A) - d`` and its gradient ``exp(A)^T``."""
    A = _check_square(A)
    E = sla.expm(A)
    return float(np.trace(E) - A.shape[0]), E.T


def h_poly(A: np.ndarray) -> tuple[float, np.ndarray]:
    """Polynomial acyclicity ``h(A) = tr (I + A/d)^d - d`` and its gradient."""
    A = _check_square(A)
    d = A.shape[0]
    M = np.eye(d) + A / d
    P = np.linalg.matrix_power(M, d - 1)
    return float(np.sum(P.T * M) - d), P.T


ACYCLICITY_FUNCTIONS = {"logdet": h_logdet, "expm": h_expm, "poly": h_poly}


def acyclicity(
    W: np.ndarray,
    kind: Literal["logdet", "expm", "poly"] = "logdet",
    transform: Literal["abs", "square"] = "square",
) -> tuple[float, np.ndarray]:
    """``h(A(W))`` and its gradient with respect to ``W``.

    Parameters
    ----------
    W : (d, d) array
        Weighted adjacency, ``W[i, j] != 0`` meaning an edge ``i -> j``.
    kind : {"logdet", "expm", "poly"}
        The acyclicity function applied to ``A``.
    transform : {"abs", "square"}
        ``A = |W|`` (gradient ``sign(W) * grad_A h``, the subgradient with ``sign(0) = 0``) or
        ``A = W * W`` (gradient ``2 W * grad_A h``).

    Returns
    -------
    h : float
    grad : (d, d) array
    """
    if kind not in ACYCLICITY_FUNCTIONS:
        raise ValueError(f"kind must be one of {sorted(ACYCLICITY_FUNCTIONS)}, got {kind!r}")
    W = _check_square(W)
    if transform == "abs":
        h, G = ACYCLICITY_FUNCTIONS[kind](np.abs(W))
        return h, np.sign(W) * G
    if transform == "square":
        h, G = ACYCLICITY_FUNCTIONS[kind](W * W)
        return h, 2.0 * W * G
    raise ValueError(f"transform must be 'abs' or 'square', got {transform!r}")


def first_layer_acyclicity(
    U: np.ndarray, kind: Literal["logdet", "expm", "poly"] = "logdet"
) -> tuple[float, np.ndarray]:
    """Acyclicity of per-node networks through their first layers, and its gradient.

    ``U[j]`` (shape ``(hidden, d)``) is the first layer of the network of node ``j`` over all
    ``d`` inputs. With ``A_ij = sum_h U[j, h, i]^2`` (zero exactly when ``j`` does not
    depend on ``i``), returns ``h(A)`` and ``dh/dU[j, h, i] = 2 U[j, h, i] [grad_A h(A)]_ij``.
    """
    U = np.asarray(U, dtype=float)
    if U.ndim != 3 or U.shape[0] != U.shape[2]:
        raise ValueError(f"U must have shape (d, hidden, d), got {U.shape}")
    if not np.all(np.isfinite(U)):
        raise ValueError("U holds NaN or infinite values")
    if kind not in ACYCLICITY_FUNCTIONS:
        raise ValueError(f"kind must be one of {sorted(ACYCLICITY_FUNCTIONS)}, got {kind!r}")
    A = np.einsum("jhi,jhi->ij", U, U)
    h, G = ACYCLICITY_FUNCTIONS[kind](A)
    return h, 2.0 * U * G.T[:, None, :]
