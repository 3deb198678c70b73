"""Second-order check of a stationary point: certify negative curvature, and escape it.

A point ``z`` where ``grad f(z) = 0`` may be a minimum, a saddle or a maximum; first-order
methods (and their stopping tests) cannot tell. With ``H = d2 f(z)``:

* :func:`curvature` runs Lanczos on ``H`` (:func:`bilevel.linalg.lanczos`,
  ``CURVATURE_STEPS = 20`` Hessian-vector products). Its smallest Ritz value
  ``theta = u^T H u`` is a Rayleigh quotient, so :func:`is_negative`,
  ``theta < -CURVATURE_TOL max(|theta|, |theta_max|)`` with ``CURVATURE_TOL = 1e-6``,
  *certifies* a direction ``u`` of negative curvature (up to rounding in the products);
  a non-negative ``theta`` is evidence, not a proof, of a local minimum when ``H`` is
  larger than the Krylov space explored.
* :func:`escape` moves along ``s u``, ``s = -sign(<grad f(z), u>)`` (``+1`` at a
  stationary point), by the longest ``t = t0 / 2^j``, ``t0 = max(1, ||z||)``, with
  ``f(z + t s u) <= f(z) + t^2 theta / 4``, half the decrease of the quadratic model
  ``f(z) + t^2 theta / 2``; the iteration that follows then leaves the saddle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeGuard

import torch

from bilevel.linalg import Spectrum, hessian_matvec, lanczos
from bilevel.tree import PyTree, tree_axpy, tree_leaves, tree_map, tree_norm, tree_vdot

CURVATURE_STEPS = 20
CURVATURE_TOL = 1e-6
#: Escapes a solver or :func:`bilevel.solve` attempts before reporting a saddle.
MAX_ESCAPES = 3

Scalar = Callable[[PyTree], torch.Tensor]


def curvature(
    fn: Scalar,
    point: PyTree,
    matvec: Callable[[PyTree], PyTree] | None = None,
) -> Spectrum | None:
    """Extreme Ritz pairs of ``d2 fn(point)`` (``matvec``: the Hessian's products, by
    default exact ones); ``None`` when they cannot be computed (an operation without
    double backward, say)."""
    point = tree_map(torch.Tensor.detach, point)
    try:
        return lanczos(matvec or hessian_matvec(fn, point), point, steps=CURVATURE_STEPS)
    except (RuntimeError, NotImplementedError):
        return None


def is_negative(spectrum: Spectrum | None) -> TypeGuard[Spectrum]:
    """Whether ``spectrum`` certifies negative curvature (see the module docstring)."""
    if spectrum is None:
        return False
    scale = max(abs(spectrum.smallest), abs(spectrum.largest))
    return spectrum.smallest < -CURVATURE_TOL * scale


def escape(fn: Scalar, point: PyTree, spectrum: Spectrum) -> PyTree:
    """A point of lower ``fn`` along the negative curvature of ``spectrum`` (module
    docstring); ``point`` itself if no step ``j < 40`` decreases enough."""
    u, theta = spectrum.smallest_vector, spectrum.smallest
    point = tree_map(torch.Tensor.detach, point)
    with torch.enable_grad():
        tracked = tree_map(lambda t: t.clone().requires_grad_(True), point)
        value = fn(tracked)
        leaves = tree_leaves(tracked)
        grads = torch.autograd.grad(value, leaves, allow_unused=True) if value.requires_grad else []
    grad = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)] or [
        torch.zeros_like(t) for t in leaves
    ]
    slope = float(tree_vdot(grad, tree_leaves(u)))
    sign = -1.0 if slope > 0 else 1.0
    f0 = float(value.detach())
    t = max(1.0, float(tree_norm(point)))
    with torch.no_grad():
        for _ in range(40):
            candidate = tree_axpy(sign * t, u, point)
            f1 = float(fn(candidate))
            if math.isfinite(f1) and f1 <= f0 + 0.25 * t * t * theta:
                return candidate
            t *= 0.5
    return point
