"""One view of the lower level's constraints: :class:`LowerConstraints`.

Row order (the one used everywhere in :mod:`bilevel`: KKT implicit differentiation,
Classical's MPCC, LV-HBA and the ``lower_kkt_residual`` history column). For the lower
level ``min_y f(x, y)  s.t.  g(x, y) <= 0,  h(x, y) = 0,  l <= y <= u`` the inequality rows
``c(x, y) <= 0`` are, in this order,

1. ``g(x, y)`` (:attr:`BilevelProblem.lower_ineq`), its ``n_g`` entries;
2. ``y_i - u_i`` for every finite upper bound of ``y_bounds``, ``i`` ascending over the
   row-major (flattened) entries of ``y`` (:attr:`LowerConstraints.upper_index`);
3. ``l_i - y_i`` for every finite lower bound, in the same order
   (:attr:`LowerConstraints.lower_index`);

and the equality rows are ``h(x, y) = 0`` (:attr:`BilevelProblem.lower_eq`). Multipliers
are ``mu >= 0`` (one per inequality row, same order) and ``nu`` (one per equality); the
Lagrangian is ``L = f + mu^T c + nu^T h``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bilevel.errors import NonFiniteError
from bilevel.problem._problem import BilevelProblem
from bilevel.tree import PyTree, tree_map

__all__ = ["LowerConstraints", "jacobian", "rows_jacobian"]

#: Least-squares matrices of :meth:`LowerConstraints.multipliers` with more entries are
#: solved sparse (SciPy's TRF) instead of dense (exact BVLS).
DENSE_KKT_ENTRIES = 4_000_000


def rows_jacobian(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Jacobian ``d out / d inp`` (rows: entries of the 1-D ``out``, columns: entries of
    ``inp``) of a recorded autograd graph: one batched backward pass (``is_grads_batched``,
    a vmap over the rows of the identity; 7-50x faster than a pass per row on 14-80 rows),
    or one backward pass per row when an operation of the graph has no batching rule. The
    graph is kept (``retain_graph``)."""
    if out.shape[0] == 0:
        return inp.new_zeros(0, inp.numel())
    if not out.requires_grad:
        return inp.new_zeros(out.shape[0], inp.numel())
    with contextlib.suppress(RuntimeError):
        eye = torch.eye(out.shape[0], dtype=out.dtype, device=out.device)
        (jac,) = torch.autograd.grad(
            out, inp, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        return (
            inp.new_zeros(out.shape[0], inp.numel())
            if jac is None
            else jac.reshape(out.shape[0], inp.numel())
        )
    rows = []
    for i in range(out.shape[0]):
        row = None
        if out[i].requires_grad:
            (row,) = torch.autograd.grad(out[i], inp, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(inp) if row is None else row)
    return torch.stack(rows).reshape(out.shape[0], inp.numel())


def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Dense Jacobian ``d fn(w) / d w`` (rows: outputs of the 1-D ``fn``; columns: entries of
    the flat ``w``): :func:`torch.func.jacrev` (vectorised), or :func:`rows_jacobian` on an
    autograd graph when ``fn`` cannot be transformed (e.g. data-dependent Python control
    flow)."""
    with contextlib.suppress(Exception):  # untransformable fn: autograd below
        return torch.func.jacrev(fn)(w.detach()).detach().reshape(-1, w.numel())
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        out = fn(w)
        return rows_jacobian(out.reshape(-1), w).detach()


def _detach(tree: PyTree) -> PyTree:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


class LowerConstraints:
    """The lower-level constraints of ``problem`` at the point ``(x, y)``, in the row order
    of the module docstring (``g``, finite upper bounds, finite lower bounds; then ``h``).

    ``y`` must be a tensor (any shape; rows index its flattened entries); ``x`` is a tensor
    or a pytree. The constraint functions :meth:`ineq` and :meth:`eq` may be evaluated at
    other points (flat or shaped ``y`` with the same number of entries, differentiable and
    usable under :mod:`torch.func`); the number of rows is fixed at construction and checked
    at every call. Raises :class:`ValueError` for a constraint that does not return a 1-D
    tensor or changes its size, :class:`~bilevel.errors.NonFiniteError` for NaN or infinite
    values at ``(x, y)``.

    Attributes
    ----------
    n_g, n_ineq, n_eq:
        Rows of ``g``, inequality rows (``g`` plus finite bounds), equality rows.
    upper_index, lower_index:
        Flat indices of ``y`` with a finite upper (lower) bound, ascending.
    """

    def __init__(self, problem: BilevelProblem, x: PyTree, y: torch.Tensor):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"LowerConstraints: y must be a tensor, got {type(y).__name__}")
        self.problem = problem
        self.x, self.y = _detach(x), y.detach()
        self._x_shape = x.shape if isinstance(x, torch.Tensor) else None
        lo, hi = (b.flatten() for b in problem.bounds_like("y_bounds", self.y))
        self.upper_index = torch.nonzero(torch.isfinite(hi)).flatten()
        self.lower_index = torch.nonzero(torch.isfinite(lo)).flatten()
        self._upper = hi[self.upper_index]
        self._lower = lo[self.lower_index]
        self._sizes: dict[str, int] = {}
        for name in ("lower_ineq", "lower_eq"):
            value = problem.constraint_value(name, self.x, self.y)
            self._sizes[name] = 0 if value is None else value.numel()
        self.n_g = self._sizes["lower_ineq"]
        self.n_eq = self._sizes["lower_eq"]
        self.n_ineq = self.n_g + self.upper_index.numel() + self.lower_index.numel()

    # ------------------------------------------------------------------ row functions
    def _shaped(self, x: PyTree, y: torch.Tensor) -> tuple[PyTree, torch.Tensor]:
        if self._x_shape is not None and isinstance(x, torch.Tensor):
            x = x.reshape(self._x_shape)
        return x, y.reshape(self.y.shape)

    def _rows(self, name: str, x: PyTree, y: torch.Tensor, finite: bool) -> torch.Tensor:
        x, y = self._shaped(x, y)
        if getattr(self.problem, name) is None:
            return y.new_zeros(0)
        if finite:
            checked = self.problem.constraint_value(name, x, y)
            if checked is None:  # cannot happen: the field is set (checked above)
                raise RuntimeError(f"BilevelProblem.{name} is unset")
            value = checked
        else:
            value = getattr(self.problem, name)(x, y)
            if not isinstance(value, torch.Tensor) or value.dim() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"BilevelProblem.{name} must return a 1-D tensor (one entry per "
                    f"constraint), got {shape}"
                )
        if value.shape[0] != self._sizes[name]:
            raise ValueError(
                f"BilevelProblem.{name} returned {value.shape[0]} entries, but "
                f"{self._sizes[name]} at the starting point: the number of constraints must "
                "not change"
            )
        return value.to(y.dtype)

    def g(self, x: PyTree, y: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
        """``g(x, y)`` (rows 1 of the order); ``finite=True`` also raises
        :class:`~bilevel.errors.NonFiniteError` for NaN/inf values (not under
        :mod:`torch.func` transforms)."""
        return self._rows("lower_ineq", x, y, finite)

    def eq(self, x: PyTree, y: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
        """``h(x, y)``, the equality rows."""
        return self._rows("lower_eq", x, y, finite)

    def ineq(self, x: PyTree, y: torch.Tensor, *, finite: bool = False) -> torch.Tensor:
        """``c(x, y) = (g(x, y), y_U - u_U, l_L - y_L)``, every inequality row ``<= 0``."""
        yf = y.reshape(-1)
        return torch.cat(
            [
                self.g(x, y, finite=finite),
                yf[self.upper_index] - self._upper.to(yf.dtype),
                self._lower.to(yf.dtype) - yf[self.lower_index],
            ]
        )

    # ------------------------------------------------------------------ at the point
    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c, h)`` at ``(x, y)``, checked finite."""
        return self.ineq(self.x, self.y, finite=True), self.eq(self.x, self.y, finite=True)

    def objective_gradient(self) -> torch.Tensor:
        """``grad_y f(x, y)``, flattened (zeros when ``f`` does not depend on ``y``)."""
        with torch.enable_grad():
            yf = self.y.detach().flatten().requires_grad_(True)  # never self.y itself
            value = self.problem.lower_value(self.x, yf.reshape(self.y.shape))
            if not value.requires_grad:
                return torch.zeros_like(yf).detach()
            (grad,) = torch.autograd.grad(value, yf, allow_unused=True)
        return (torch.zeros_like(yf) if grad is None else grad).detach()

    def jacobians(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(J_c, J_h)``: the Jacobians in ``y`` of the inequality rows ``(n_ineq, y.numel())``
        and of the equality rows ``(n_eq, y.numel())``, dense (bound rows are ``+-e_i``)."""
        J_g, J_h = self._jacobians()
        eye = torch.eye(self.y.numel(), dtype=J_g.dtype, device=J_g.device)
        return torch.cat([J_g, eye[self.upper_index], -eye[self.lower_index]]), J_h

    def _jacobians(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(J_g, J_h)``, the Jacobians of the constraint functions (bound rows apart)."""
        yf = self.y.flatten()
        m = yf.numel()
        J_g = jacobian(lambda t: self.g(self.x, t), yf) if self.n_g else yf.new_zeros(0, m)
        J_h = jacobian(lambda t: self.eq(self.x, t), yf) if self.n_eq else yf.new_zeros(0, m)
        return J_g, J_h

    def _transpose_product(
        self, J_g: torch.Tensor, J_h: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor
    ) -> torch.Tensor:
        """``J_c^T mu + J_h^T nu`` without forming the bound rows."""
        n_g, k_up = self.n_g, self.upper_index.numel()
        out = J_g.T @ mu[:n_g] + J_h.T @ nu
        out = out.index_add(0, self.upper_index, mu[n_g : n_g + k_up])
        return out.index_add(0, self.lower_index, -mu[n_g + k_up :])

    def multipliers(self, active_tol: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
        """Multipliers ``(mu, nu)`` that best satisfy the KKT conditions at ``(x, y)``::

            min_{mu_N >= 0, nu} ||grad_y f + J_N^T mu_N + J_h^T nu||^2 + ||mu_N * c_N||^2,

        with ``mu_i = 0`` off ``N = {i : c_i >= -active_tol}`` (every row by default): a
        bounded linear least-squares problem (SciPy's ``lsq_linear``: exact BVLS for small
        problems, TRF on a sparse matrix for large ones; with bounds only it separates per
        coordinate and is solved in closed form, see :meth:`kkt_residual`). The
        complementarity term keeps multipliers of inactive rows at zero; on (nearly) active
        rows (``|c_i| <= active_tol``) it changes them by ``O(active_tol^2)``. NaN
        multipliers when the gradient or a Jacobian is not finite.
        """
        return self._fit(active_tol)[:2]

    def kkt_residual(
        self,
        mu: torch.Tensor | None = None,
        nu: torch.Tensor | None = None,
        *,
        ord: float = 2,
    ) -> float:
        """Norm ``ord`` of the KKT conditions at ``(x, y, mu, nu)``: of the vector

            (grad_y f + J_c^T mu + J_h^T nu,  mu * c,  max(c, 0),  h,  max(-mu, 0)),

        stationarity, complementarity, primal and dual feasibility. Without multipliers
        they are :meth:`multipliers` (every row), and for ``ord=2`` the result is::

            r^2 = min_{mu >= 0, nu} ||grad_y f + J_c^T mu + J_h^T nu||^2 + ||mu * c||^2
                  + ||max(c, 0)||^2 + ||h||^2,

        which vanishes exactly at a KKT point, is continuous in ``y`` (no active-set
        threshold) and equals ``||grad_y f||`` without constraints (the
        ``lower_kkt_residual`` history column). NaN when the gradient or a Jacobian is not
        finite. With bounds only the minimisation separates: per coordinate with gradient
        entry ``a`` and the bound row ``c`` that can cancel it (lower bound for ``a > 0``,
        upper for ``a < 0``), ``min_{mu >= 0} (a -+ mu)^2 + (mu c)^2 = a^2 c^2 / (1 + c^2)``
        at ``mu = |a| / (1 + c^2)``.
        """
        fit_mu, fit_nu, grad, J_g, J_h = self._fit(math.inf, fit=mu is None or nu is None)
        mu = fit_mu if mu is None else mu.to(grad.dtype)
        nu = fit_nu if nu is None else nu.to(grad.dtype)
        if not all(bool(torch.isfinite(t).all()) for t in (grad, J_g, J_h, mu, nu)):
            return math.nan
        c, h = self.values()
        parts = [
            grad + self._transpose_product(J_g, J_h, mu, nu),
            mu * c,
            c.clamp(min=0),
            h,
            (-mu).clamp(min=0),
        ]
        return float(torch.linalg.vector_norm(torch.cat(parts).double(), ord=ord))

    def _fit(self, active_tol: float, fit: bool = True):
        """``(mu, nu, grad, J_g, J_h)``, the multipliers of :meth:`multipliers` (zeros when
        ``fit`` is false)."""
        import scipy.sparse
        from scipy.optimize import lsq_linear

        grad = self.objective_gradient()
        J_g, J_h = self._jacobians()
        mu, nu = grad.new_zeros(self.n_ineq), grad.new_zeros(self.n_eq)
        if not fit:
            return mu, nu, grad, J_g, J_h
        if not all(bool(torch.isfinite(t).all()) for t in (grad, J_g, J_h)):
            return mu.fill_(math.nan), nu.fill_(math.nan), grad, J_g, J_h
        c, _ = self.values()
        cn = c.double().cpu().numpy()
        near = cn >= -active_tol
        n_g, k_up, m = self.n_g, self.upper_index.numel(), grad.numel()
        up, down = self.upper_index.cpu().numpy(), self.lower_index.cpu().numpy()
        a = grad.double().cpu().numpy()
        if n_g == 0 and self.n_eq == 0:  # bounds only: separable, closed form
            mu_np = np.zeros(self.n_ineq)
            # an upper-bound row (+e_i) cancels a_i < 0, a lower-bound row (-e_i) a_i > 0
            for rows, index, sign in (
                (np.arange(k_up), up, -1.0),
                (k_up + np.arange(down.size), down, 1.0),
            ):
                ai = sign * a[index]
                ok = (ai > 0) & near[rows]
                mu_np[rows[ok]] = ai[ok] / (1.0 + cn[rows[ok]] ** 2)
            return torch.as_tensor(mu_np, dtype=grad.dtype), nu, grad, J_g, J_h
        N = np.flatnonzero(near)
        p, q = N.size, self.n_eq
        if p + q == 0:
            return mu, nu, grad, J_g, J_h
        # A = [[J_N^T, J_h^T], [diag(c_N), 0]] (m + p rows, p + q columns) from triplets:
        # general rows from J_g, bound rows +-e_i, equality columns from J_h
        Jg, Jh = J_g.double().cpu().numpy(), J_h.double().cpu().numpy()
        pos = np.arange(p)
        is_g, is_lo = N < n_g, N >= n_g + k_up
        is_up = ~is_g & ~is_lo
        g_t = Jg[N[is_g]].T  # m x (rows of g in N)
        g_rows, g_cols = np.nonzero(g_t)
        h_rows, h_cols = np.nonzero(Jh.T)
        rows = np.concatenate(
            [g_rows, up[N[is_up] - n_g], down[N[is_lo] - n_g - k_up], h_rows, m + pos]
        )
        cols = np.concatenate([pos[is_g][g_cols], pos[is_up], pos[is_lo], p + h_cols, pos])
        vals = np.concatenate(
            [
                g_t[g_rows, g_cols],
                np.ones(int(is_up.sum())),
                -np.ones(int(is_lo.sum())),
                Jh.T[h_rows, h_cols],
                cn[N],
            ]
        )
        if (m + p) * (p + q) <= DENSE_KKT_ENTRIES:
            A = np.zeros((m + p, p + q))
            A[rows, cols] = vals
            method, tol = "bvls", 1e-14
        else:
            A = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m + p, p + q)).tocsr()
            method, tol = "trf", 1e-12
        b = np.concatenate([-a, np.zeros(p)])
        lower = np.concatenate([np.zeros(p), np.full(q, -np.inf)])
        sol = lsq_linear(A, b, bounds=(lower, np.inf), method=method, tol=tol)
        fitted = torch.as_tensor(sol.x, dtype=grad.dtype)
        mu[torch.as_tensor(N, dtype=torch.long)] = fitted[:p]
        return mu, fitted[p:].clone(), grad, J_g, J_h

    def __repr__(self) -> str:
        return (
            f"LowerConstraints(n_g={self.n_g}, upper_bounds={self.upper_index.numel()}, "
            f"lower_bounds={self.lower_index.numel()}, n_eq={self.n_eq})"
        )


def lower_kkt_residual(problem: BilevelProblem, x: PyTree, y: Any) -> float:
    """:meth:`LowerConstraints.kkt_residual` at ``(x, y)`` for the history: NaN when ``y``
    is not a tensor (a pytree) or a constraint value is not finite (e.g. the recorded
    iterate of a diverged run)."""
    if not isinstance(y, torch.Tensor):
        return math.nan
    try:
        return LowerConstraints(problem, x, y).kkt_residual()
    except NonFiniteError:
        return math.nan
