"""Classical small nonlinear bilevel programs solved to global quality by multistart over
KKT/MPCC and value-function reformulations, with a certified lower level.

Problem (optimistic formulation)::

    min_{x, y}  F(x, y)
    s.t.        G(x, y) <= 0,  H(x, y) = 0,  x in X = [x_lo, x_hi]
                y in S(x) = argmin_theta { f(x, theta) : g(x, theta) <= 0, h(x, theta) = 0,
                                           theta in Y = [y_lo, y_hi] }

Set-up (once, in ``init``):

* **Linear rows.** Rows of ``G, H, g, h`` that are affine in ``(x, y)`` (checked
  numerically) form polyhedra; linear programs (HiGHS) give the box of ``(x, y)`` over the
  high-point relaxation and the box of the lower-level ``y`` at every ``x`` that satisfies
  the upper constraints on ``x`` alone. These boxes are the variable bounds of every NLP
  below (so bounds written as constraints are respected in every phase and ``x`` cannot
  drift away), and an empty polyhedron proves that no feasible point exists
  (:class:`LowerLevelInfeasibleError` naming the LP).
* **Feasibility phase.** If the lower level is infeasible at ``x0`` (or certified
  unbounded), the start is repaired: from ``x0`` and ``n_starts`` sampled points, (1) ``min t``
  s.t. ``g <= t``, ``|h| <= t`` over ``(x, y)`` in the boxes, (2) the Euclidean projection of
  the result onto ``{G <= 0, H = 0, g <= 0, h = 0}``, (3) the first projected point with a
  bounded lower level becomes the start. Only if none is found is an error raised, with the
  smallest violations reached as its evidence.
* **Unboundedness** is reported only with a certificate: a recession direction ``d`` (the
  direction of a diverging lower-level solve, or the LP ``min grad_y f . d`` over the
  recession cone of the linear lower rows) along which ``y + t d`` stays lower-feasible and
  ``f`` falls at least linearly, checked on the model up to ``t = 1e8`` times the scale of
  ``y`` (:class:`UnboundedLowerLevelError` carries it). An ``x`` whose lower level is
  unbounded is not bilevel-feasible and is skipped.

Method (one outer iteration of :class:`Classical` is one *round*):

1. **Starts.** ``n_starts`` points ``(x, y)`` drawn uniformly in the boxes (of half-width
   ``sample_radius`` around ``(x0, y0)`` along infinite sides) and projected onto the
   polyhedron of the linear rows; the first round also starts from ``(x0, y0)`` and later
   rounds from the incumbent and perturbations of it.
2. **KKT/MPCC path** (skipped when the lower level is an LP whose constraints do not
   depend on ``x``: there the value-function path below, with cuts at vertices from exact
   LP solves, is exact once no cut is violated). The lower level is replaced by its KKT
   conditions, with the bounds of
   ``Y`` written as inequalities ``g_full = (g, y - y_hi, y_lo - y)`` (finite entries only,
   the row order of :class:`~bilevel.problem.LowerConstraints`)::

       grad_y f + J_y g_full^T lam + J_y h^T mu = 0,   lam >= 0,   g_full <= 0,  h = 0,

   and the complementarity ``lam_i * g_full_i = 0`` is relaxed as in Scholtes (2001),
   ``-lam_i g_full_i <= t`` with ``t = 1e-2, 1e-6``, each relaxed NLP solved
   by SciPy SLSQP warm-started from the previous one. A final *tightened* NLP fixes the
   active set read off the last iterate (``g_i = 0`` where ``-g_i < lam_i``, ``lam_i = 0``
   otherwise), which removes the relaxation error (TNLP, Scheel and Scholtes 2000).
3. **Value-function path.** ``min F`` over ``G, H, g, h, X, Y`` (the high-point relaxation)
   with the cuts ``f(x, y) <= f(x, y_k)`` for lower-level solutions ``y_k`` found so far.
   When ``g`` and ``h`` do not depend on ``x`` (checked numerically), every ``y_k`` is
   lower-feasible at every ``x``, so each cut is valid: it only removes points whose ``y``
   is not lower-optimal (the discretized value function of Mitsos, Lemonidis and Barton,
   2008). The cuts also enter the MPCC, which excludes KKT points of a nonconvex lower
   level that are not global minimizers.
4. **Certificate.** For the ``n_certify`` best distinct candidates ``x`` of each
   reformulation the lower level is
   solved by SLSQP from ``n_lower_starts`` points of ``Y`` (plus the candidate ``y``),
   giving ``phi(x)`` (the best lower value found) and a lower-level solution ``y_k``. The
   candidate ``y`` is then replaced by the optimistic choice
   ``argmin_y {F(x, y) : f(x, y) <= phi(x), g, h, G, H, Y}``, solved from every
   near-optimal lower solution found; a candidate whose lower level is not optimal adds
   its ``y_k`` to the cuts. At the end of every round the incumbent is checked again from
   fresh random starts; a lower value found there lowers ``phi`` and can revoke the
   certificate (and prevent convergence). The gap ``f(x, y) - phi(x) >= 0`` of the
   returned point is reported; a multistart check is a certificate up to the coverage of its starts, not a
   proof of global optimality (which would need a deterministic global solver).
5. **Anytime.** While no certified incumbent exists, the best candidate of each start is
   certified at once. With ``time_limit``, a deadline is checked between local solves and
   inside SLSQP (a callback); a lower-level certificate that it interrupts is discarded.
6. **Stopping.** The round residual ``state.residual`` (the history's ``residual``; no
   hypergradient is formed, ``hypergrad_norm`` is NaN) is
   ``|F_best(k) - F_best(k-1)| / (1 + |F_best(k)|)`` when the incumbent is feasible and
   certified (gap <= ``gap_tol``), and ``inf`` while there is no certified incumbent from
   this and the previous round; :func:`bilevel.solve` declares convergence when it is ``<= tol``, i.e.
   after a round that does not improve the certified incumbent. Each round costs many NLP
   solves, so pass a small ``maxiter`` (:func:`solve_classical` uses 10).

Gradients and Jacobians of the user's torch functions are computed with
reverse-mode autograd in float64 (one batched backward pass over the constraint rows).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds as _ScipyBounds
from scipy.optimize import minimize

from bilevel.constrained.feasible import InfeasibleError, UnboundedError, project_polyhedron
from bilevel.errors import ConvergenceWarning, NonFiniteError
from bilevel.methods import Method, MethodState, run_method
from bilevel.problem import BilevelProblem, BilevelResult, LowerConstraints
from bilevel.problem._constraints import rows_jacobian as _rows_jacobian

__all__ = [
    "Classical",
    "LowerLevelCertificate",
    "LowerLevelInfeasibleError",
    "UnboundedLowerLevelError",
    "certify_lower_level",
    "solve_classical",
]

_DTYPE = torch.float64
_UNBOUNDED_VALUE = 1e10
_UNBOUNDED_NORM = 1e7


class LowerLevelInfeasibleError(InfeasibleError):
    """The lower-level feasible set ``{y in Y : g(x, y) <= 0, h(x, y) = 0}`` is empty; a
    :class:`bilevel.constrained.InfeasibleError`.

    Raised by :func:`certify_lower_level` at the given ``x`` (no multistart run reached a
    feasible point), and by the solver only after its feasibility phase, with the evidence
    that no ``x`` of the upper feasible set admits a feasible lower level in ``evidence``
    (also in the message): a proof by linear programming when the linear constraint rows
    alone are infeasible, else the smallest constraint violation that the feasibility
    phase reached from its starts."""

    def __init__(self, message: str, *, evidence: str = ""):
        super().__init__(message)
        self.evidence = evidence


class UnboundedLowerLevelError(UnboundedError):
    """``f(x, .)`` is unbounded below on the lower-level feasible set at ``x``; a
    :class:`bilevel.constrained.UnboundedError`.

    Raised only with a certificate (attributes ``x``, ``y``, ``direction``, ``steps``,
    ``values``): a direction ``d`` along which the points ``y + t d`` (``t`` in ``steps``, up
    to ``1e8`` times the scale of ``y``) are lower-feasible and ``f`` decreases at least
    linearly, checked on the model (see :func:`_recession_certificate`)."""

    def __init__(
        self,
        message: str,
        *,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        direction: np.ndarray | None = None,
        steps: np.ndarray | None = None,
        values: np.ndarray | None = None,
    ):
        super().__init__(message)
        self.x, self.y, self.direction, self.steps, self.values = x, y, direction, steps, values


#: The clock of time limits (a module attribute, so that tests can substitute a fake one).
_clock = time.perf_counter

#: Deadline (a ``_clock()`` value) of the solve running in this context, or None.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "classical_deadline", default=None
)


def _past_deadline() -> bool:
    deadline = _DEADLINE.get()
    return deadline is not None and _clock() >= deadline


class _TimeUp(Exception):
    """The deadline passed during a lower-level multistart. Its result is discarded: an
    interrupted local solve overestimates ``phi`` and could certify a point that is not
    lower-optimal."""


# --------------------------------------------------------------------------------------
# Flat view of a BilevelProblem
# --------------------------------------------------------------------------------------


def _bound_arrays(
    problem: BilevelProblem, name: str, like: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` of ``problem.<name>`` as flat float64 arrays with one entry per
    entry of ``like`` (``-inf``/``inf`` if absent): the bounds are broadcast to ``like``'s
    shape, or given entry by entry, by :meth:`BilevelProblem.bounds_like`."""
    low, high = problem.bounds_like(name, like.detach().to(_DTYPE))
    return low.detach().reshape(-1).numpy(), high.detach().reshape(-1).numpy()


class _Program:
    """The problem seen as functions of flat float64 vectors ``x`` (size n) and ``y``
    (size m), with shape-checked constraint functions and bound arrays."""

    def __init__(
        self,
        problem: BilevelProblem,
        x0: torch.Tensor,
        y0: torch.Tensor,
        analysis: _LinearAnalysis | None = None,
    ):
        if problem.n_blocks is not None or problem.upper_data is not None:
            raise ValueError(
                "the classical solver handles deterministic single-block problems only"
            )
        if problem.lower_data is not None:
            raise ValueError("the classical solver handles deterministic problems only")
        for name, value in (("x0", x0), ("y0", y0)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor for the classical solver")
        self.problem = problem
        self.setup_time = 0.0  # seconds spent building it (Classical.prepare)
        self.x_shape, self.y_shape = x0.shape, y0.shape
        self.n, self.m = x0.numel(), y0.numel()
        if self.m == 0:
            raise ValueError("y0 is empty: the lower level needs at least one variable")
        self.x_lo, self.x_hi = _bound_arrays(problem, "x_bounds", x0)
        self.y_lo, self.y_hi = _bound_arrays(problem, "y_bounds", y0)
        xf = x0.detach().to(_DTYPE).reshape(-1)
        yf = y0.detach().to(_DTYPE).reshape(-1)
        self.sizes = {}
        with torch.no_grad():
            for name in ("upper_ineq", "upper_eq", "lower_ineq", "lower_eq"):
                self.sizes[name] = self._call(name, xf, yf).numel()
        #: the lower level's rows ``g_full = (g, finite upper bounds, finite lower bounds)``
        self.lower = LowerConstraints(problem, *self._unflat(xf, yf))
        # working boxes: the explicit bounds until the linear rows are analysed
        self.bx_lo, self.bx_hi = self.x_lo, self.x_hi
        self.by_lo, self.by_hi = self.y_lo, self.y_hi
        self.ly_lo, self.ly_hi = self.y_lo, self.y_hi
        if analysis is None:
            self.lower_depends_on_x = self._lower_constraints_depend_on_x(xf, yf)
            analysis = _analyse(self, xf, yf)
            analysis.lower_depends_on_x = self.lower_depends_on_x
            analysis.lower_affine_in_y = self._lower_affine_in_y(xf, yf)
        self.lower_depends_on_x = analysis.lower_depends_on_x
        self.analysis = analysis
        box = self.analysis
        self.bx_lo, self.bx_hi = box.z_lo[: self.n], box.z_hi[: self.n]
        self.by_lo, self.by_hi = box.z_lo[self.n :], box.z_hi[self.n :]
        self.ly_lo, self.ly_hi = box.lower_y_lo, box.lower_y_hi

    # user functions on flat vectors ---------------------------------------------------
    def _unflat(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.reshape(self.x_shape), y.reshape(self.y_shape)

    def F(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.problem.upper_value(*self._unflat(x, y))

    def f(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.problem.lower_value(*self._unflat(x, y))

    def _call(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.problem, name)
        if fn is None:
            return x.new_zeros(0) if x.numel() else y.new_zeros(0)
        value = fn(*self._unflat(x, y))
        if not isinstance(value, torch.Tensor) or value.dim() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"BilevelProblem.{name} must return a 1-D tensor (one entry per constraint), "
                f"got {shape}"
            )
        expected = getattr(self, "sizes", {}).get(name)
        if expected is not None and value.shape[0] != expected:
            raise ValueError(
                f"BilevelProblem.{name} returned {value.shape[0]} entries, but {expected} "
                "at the starting point: the number of constraints must not change"
            )
        return value.to(_DTYPE)

    def G(self, x, y):
        return self._call("upper_ineq", x, y)

    def H(self, x, y):
        return self._call("upper_eq", x, y)

    def g(self, x, y):
        return self._call("lower_ineq", x, y)

    def h(self, x, y):
        return self._call("lower_eq", x, y)

    def g_full(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Lower inequalities including the finite bounds of ``Y`` (``<= 0``), in the row
        order of :class:`~bilevel.problem.LowerConstraints`."""
        return self.lower.ineq(x, y)

    @property
    def n_gfull(self) -> int:
        return self.lower.n_ineq

    def _lower_constraints_depend_on_x(self, x0: torch.Tensor, y0: torch.Tensor) -> bool:
        """Whether ``g`` or ``h`` varies with ``x`` (Jacobian in x at a few sample points)."""
        if self.n == 0 or self.sizes["lower_ineq"] + self.sizes["lower_eq"] == 0:
            return False
        rng = np.random.default_rng(12345)
        xs = [x0] + [torch.as_tensor(v) for v in self.sample_x(rng, 3, x0.numpy())]
        ys = [y0] + [torch.as_tensor(v) for v in self.sample_y(rng, 3, y0.numpy())]
        for x, y in zip(xs, ys):
            xt = x.clone().requires_grad_(True)
            with torch.enable_grad():
                jac = _rows_jacobian(torch.cat([self.g(xt, y), self.h(xt, y)]), xt)
            if bool((jac.abs() > 1e-13).any()):
                return True
        return False

    def _lower_affine_in_y(self, x0: torch.Tensor, y0: torch.Tensor) -> bool:
        """Whether ``f``, ``g`` and ``h`` are affine in ``y`` at ``x0`` and two sampled
        ``x`` (the lower level is then an LP at every ``x``, up to this numerical test)."""
        rng = np.random.default_rng(4321)
        xs = [x0.numpy(), *self.sample_x(rng, 2, x0.numpy())]
        for x in xs:
            xt = torch.as_tensor(x, dtype=_DTYPE)

            def fn(y, xt=xt):
                return torch.cat([self.f(xt, y).reshape(1), self.g(xt, y), self.h(xt, y)])

            if not _affine_rows(fn, y0.numpy(), rng)[0].all():
                return False
        return True

    # sampling -------------------------------------------------------------------------
    @staticmethod
    def _sample(rng, k, lo, hi, center, radius) -> np.ndarray:
        """``k`` uniform points in the box, finite sides from the bounds, infinite sides at
        ``radius`` from ``center`` (or from the finite side)."""
        center = np.clip(center, lo, hi)
        low = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi, center) - radius)
        high = np.where(np.isfinite(hi), hi, np.where(np.isfinite(lo), lo, center) + radius)
        low = np.where(np.isfinite(lo) | ~np.isfinite(hi), low, np.minimum(low, center - radius))
        high = np.where(np.isfinite(hi) | ~np.isfinite(lo), high, np.maximum(high, center + radius))
        return rng.uniform(low, high, size=(k, lo.size))

    def sample_x(self, rng, k, center, radius=10.0) -> np.ndarray:
        """Points of the box of ``x`` implied by the bounds and the linear constraints."""
        return self._sample(rng, k, self.bx_lo, self.bx_hi, center, radius)

    def sample_y(self, rng, k, center, radius=10.0, *, joint: bool = False) -> np.ndarray:
        """Points of the lower-level box of ``y`` (valid at every ``x`` that satisfies the
        upper constraints on ``x`` alone), or with ``joint=True`` of the box of ``y`` over
        the high-point relaxation (for starts of the upper-level NLPs)."""
        if joint:
            return self._sample(rng, k, self.by_lo, self.by_hi, center, radius)
        return self._sample(rng, k, self.ly_lo, self.ly_hi, center, radius)

    def project_start(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean projection of ``(x, y)`` onto the polyhedron of the linear constraint
        rows and boxes (:func:`~bilevel.constrained.project_polyhedron`), so that starts
        respect bounds written as constraints; ``(x, y)`` clipped to the boxes if the
        projection does not settle."""
        z = np.clip(np.concatenate([x, y]), self.analysis.z_lo, self.analysis.z_hi)
        poly = self.analysis.joint
        if poly.A_in.shape[0] + poly.A_eq.shape[0]:
            with contextlib.suppress(InfeasibleError):
                z = project_polyhedron(
                    torch.as_tensor(z),
                    A_eq=torch.as_tensor(poly.A_eq),
                    c_eq=torch.as_tensor(poly.c_eq),
                    A_in=torch.as_tensor(poly.A_in),
                    c_in=torch.as_tensor(poly.c_in),
                    lower=torch.as_tensor(self.analysis.z_lo),
                    upper=torch.as_tensor(self.analysis.z_hi),
                    tol=1e-9,
                    maxiter=2000,
                ).w.numpy()
        return z[: self.n], z[self.n :]

    # violations -----------------------------------------------------------------------
    def upper_violation(self, x: np.ndarray, y: np.ndarray) -> float:
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        with torch.no_grad():
            G, H = self.G(xt, yt), self.H(xt, yt)
        viol = [np.max(self.x_lo - x, initial=0.0), np.max(x - self.x_hi, initial=0.0)]
        viol += [float(G.clamp_min(0).max()) if G.numel() else 0.0]
        viol += [float(H.abs().max()) if H.numel() else 0.0]
        return float(max(viol))

    def lower_violation(self, x: np.ndarray, y: np.ndarray) -> float:
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        with torch.no_grad():
            g, h = self.g(xt, yt), self.h(xt, yt)
        viol = [np.max(self.y_lo - y, initial=0.0), np.max(y - self.y_hi, initial=0.0)]
        viol += [float(g.clamp_min(0).max()) if g.numel() else 0.0]
        viol += [float(h.abs().max()) if h.numel() else 0.0]
        return float(max(viol))

    def values(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        with torch.no_grad():
            return float(self.F(xt, yt)), float(self.f(xt, yt))


# --------------------------------------------------------------------------------------
# Linear rows: implied boxes and infeasibility proofs (bounds written as constraints)
# --------------------------------------------------------------------------------------


@dataclass
class _Polyhedron:
    """``{z : A_in z + c_in <= 0, A_eq z + c_eq = 0}`` in ``z = (x, y)``."""

    A_in: np.ndarray
    c_in: np.ndarray
    A_eq: np.ndarray
    c_eq: np.ndarray


@dataclass
class _LinearAnalysis:
    """Boxes implied by the affine constraint rows, by linear programming (HiGHS).

    ``joint`` holds every affine row of ``G, H, g, h``; ``lower`` the affine rows of ``g,
    h`` and of the upper constraints that involve ``x`` only. ``z_lo, z_hi`` bound ``(x,
    y)`` over ``joint`` and the explicit bounds (so every point of the high-point
    relaxation, hence every bilevel-feasible point, lies in them); ``lower_y_lo,
    lower_y_hi`` bound the lower-level feasible set at every ``x`` that satisfies the
    upper constraints on ``x`` alone. ``infeasible`` names an empty polyhedron (a proof
    that the bilevel program has no feasible point), else ``""``."""

    joint: _Polyhedron
    lower: _Polyhedron
    z_lo: np.ndarray
    z_hi: np.ndarray
    lower_y_lo: np.ndarray
    lower_y_hi: np.ndarray
    infeasible: str = ""
    n_affine: int = 0
    lower_depends_on_x: bool = False
    lower_affine_in_y: bool = False


def _affine_rows(
    fn: Callable[[torch.Tensor], torch.Tensor], z0: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, A, c)``: the rows ``i`` of the 1-D ``fn`` with ``fn_i(z) = A_i z + c_i`` at
    ``z0`` and two random points around it (Jacobian and value agree to ``1e-10``,
    relative), a numerical test as in :func:`~bilevel.constrained.affine_coefficients`."""
    points = [z0] + [z0 + rng.standard_normal(z0.size) * (1 + np.abs(z0)) for _ in range(2)]
    jacs, vals = [], []
    for z in points:
        zt = torch.tensor(z, dtype=_DTYPE, requires_grad=True)
        with torch.enable_grad():
            out = fn(zt)
            jacs.append(_rows_jacobian(out, zt).detach().numpy())
        vals.append(out.detach().numpy())
    A = jacs[0]
    c = vals[0] - A @ points[0]
    mask = np.ones(A.shape[0], dtype=bool)
    for z, jac, val in zip(points[1:], jacs[1:], vals[1:]):
        scale = 1.0 + np.abs(A).max(axis=1, initial=0.0)
        mask &= np.all(np.abs(jac - A) <= 1e-10 * scale[:, None], axis=1)
        mask &= np.abs(val - (A @ z + c)) <= 1e-9 * (scale * (1 + np.abs(z).max()) + np.abs(c))
        mask &= np.isfinite(val)
    return mask, A[mask], c[mask]


def _lp_box(
    poly: _Polyhedron, lo: np.ndarray, hi: np.ndarray, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    """``min`` and ``max`` of each coordinate in ``coords`` over the polyhedron within
    ``[lo, hi]`` by HiGHS; the message is non-empty when the polyhedron is empty."""
    from scipy.optimize import linprog

    lo, hi = lo.copy(), hi.copy()
    bounds = _linprog_bounds(lo, hi)
    args = {
        "A_ub": poly.A_in if poly.A_in.shape[0] else None,
        "b_ub": -poly.c_in if poly.A_in.shape[0] else None,
        "A_eq": poly.A_eq if poly.A_eq.shape[0] else None,
        "b_eq": -poly.c_eq if poly.A_eq.shape[0] else None,
        "bounds": bounds,
        "method": "highs",
    }
    n = lo.size
    for k in coords:
        for sign in (1.0, -1.0):
            cost = np.zeros(n)
            cost[k] = sign
            res = linprog(cost, **args)
            if res.status == 2:
                return lo, hi, f"HiGHS: {res.message}"
            if res.status == 0:  # no outward padding: F may be singular just outside
                value = sign * res.fun  # (e.g. 1 / (x + 1) with x >= -1 as a row)
                if sign > 0:
                    lo[k] = max(lo[k], value)
                else:
                    hi[k] = min(hi[k], value)
    return lo, hi, ""


def _linprog_bounds(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float | None, float | None]]:
    """``scipy.optimize.linprog``'s ``bounds``: one ``(lo, hi)`` per variable, ``None`` for
    an infinite end."""
    return [
        (float(a) if np.isfinite(a) else None, float(b) if np.isfinite(b) else None)
        for a, b in zip(lo, hi)
    ]


def _analyse(prog: _Program, x0: torch.Tensor, y0: torch.Tensor) -> _LinearAnalysis:
    """Affine rows of the constraints and the boxes they imply (see :class:`_LinearAnalysis`)."""
    n, m = prog.n, prog.m
    z0 = np.concatenate([x0.numpy(), y0.numpy()])
    rng = np.random.default_rng(2024)
    empty = np.zeros((0, n + m)), np.zeros(0)
    rows = {}
    for name in ("upper_ineq", "upper_eq", "lower_ineq", "lower_eq"):
        if prog.sizes[name] == 0:
            rows[name] = (np.zeros(0, dtype=bool), *empty)
            continue

        def fn(z, name=name):
            return prog._call(name, z[:n], z[n:])

        rows[name] = _affine_rows(fn, z0, rng)
    x_only = {
        name: np.abs(rows[name][1][:, n:]).max(axis=1, initial=0.0) == 0
        for name in ("upper_ineq", "upper_eq")
    }
    joint = _Polyhedron(
        np.vstack([rows["upper_ineq"][1], rows["lower_ineq"][1]]),
        np.concatenate([rows["upper_ineq"][2], rows["lower_ineq"][2]]),
        np.vstack([rows["upper_eq"][1], rows["lower_eq"][1]]),
        np.concatenate([rows["upper_eq"][2], rows["lower_eq"][2]]),
    )
    lower = _Polyhedron(
        np.vstack([rows["upper_ineq"][1][x_only["upper_ineq"]], rows["lower_ineq"][1]]),
        np.concatenate([rows["upper_ineq"][2][x_only["upper_ineq"]], rows["lower_ineq"][2]]),
        np.vstack([rows["upper_eq"][1][x_only["upper_eq"]], rows["lower_eq"][1]]),
        np.concatenate([rows["upper_eq"][2][x_only["upper_eq"]], rows["lower_eq"][2]]),
    )
    lo = np.concatenate([prog.x_lo, prog.y_lo])
    hi = np.concatenate([prog.x_hi, prog.y_hi])
    n_affine = joint.A_in.shape[0] + joint.A_eq.shape[0]

    def result(z_lo, z_hi, y_lo, y_hi, why=""):
        return _LinearAnalysis(joint, lower, z_lo, z_hi, y_lo, y_hi, why, n_affine)

    if n_affine == 0:
        return result(lo, hi, prog.y_lo, prog.y_hi)
    low_lo, low_hi, why = _lp_box(lower, lo, hi, np.arange(n, n + m))
    if why:
        return result(
            lo,
            hi,
            prog.y_lo,
            prog.y_hi,
            "no x satisfying the linear upper-level constraints on x alone admits a y "
            f"satisfying the linear lower-level constraints ({why})",
        )
    z_lo, z_hi, why = _lp_box(joint, lo, hi, np.arange(n + m))
    if why:
        return result(
            lo,
            hi,
            low_lo[n:],
            low_hi[n:],
            "no (x, y) satisfies the linear upper- and lower-level constraints together "
            f"({why}), so the high-point relaxation is empty",
        )
    return result(z_lo, z_hi, low_lo[n:], low_hi[n:])


# --------------------------------------------------------------------------------------
# NLP solves through SciPy SLSQP with autograd derivatives
# --------------------------------------------------------------------------------------


def _grad(value: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``d value / d inp`` keeping the graph (for second derivatives)."""
    if not value.requires_grad:
        return torch.zeros_like(inp)
    (g,) = torch.autograd.grad(value, inp, create_graph=True, allow_unused=True)
    return torch.zeros_like(inp) if g is None else g


@dataclass
class _NLPResult:
    z: np.ndarray
    objective: float
    violation: float
    status: int
    message: str


def _solve_nlp(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    z0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    maxiter: int = 200,
    ftol: float = 1e-12,
) -> _NLPResult:
    """``min obj(z)`` s.t. ``eq(z) = 0``, ``ineq(z) <= 0``, ``lo <= z <= hi`` by SLSQP, where
    ``fn(z) = (obj, eq, ineq)`` is evaluated once per new point (with its autograd graph,
    reused for the Jacobian when SLSQP asks for it)."""

    cache: dict[str, Any] = {"key": None}

    def values(z: np.ndarray) -> np.ndarray:
        key = z.tobytes()
        if cache["key"] != key:
            zt = torch.tensor(z, dtype=_DTYPE, requires_grad=True)
            with torch.enable_grad():
                obj, eq, ineq = fn(zt)
                out = torch.cat([obj.reshape(1), eq, ineq])
            cache.update(key=key, zt=zt, out=out, val=out.detach().numpy(), jac=None)
            cache["n_eq"] = eq.numel()
        return cache["val"]

    def jacobian(z: np.ndarray) -> np.ndarray:
        values(z)
        if cache["jac"] is None:
            jac = _rows_jacobian(cache["out"], cache["zt"])
            cache["jac"] = jac.detach().numpy()
        return cache["jac"]

    def evaluate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return values(z), jacobian(z)

    z0 = np.clip(np.asarray(z0, dtype=np.float64), lo, hi)
    val0 = values(z0)
    if not np.all(np.isfinite(val0)):
        return _NLPResult(z0, float(val0[0]), math.inf, -1, "non-finite values at the start")
    n_eq = cache["n_eq"]
    n_ineq = val0.size - 1 - n_eq
    cons = []
    if n_eq:
        cons.append(
            {
                "type": "eq",
                "fun": lambda z: values(z)[1 : 1 + n_eq],
                "jac": lambda z: jacobian(z)[1 : 1 + n_eq],
            }
        )
    if n_ineq:  # SciPy's convention is c(z) >= 0
        cons.append(
            {
                "type": "ineq",
                "fun": lambda z: -values(z)[1 + n_eq :],
                "jac": lambda z: -jacobian(z)[1 + n_eq :],
            }
        )
    bounds = _ScipyBounds(lo, hi) if z0.size else None

    def stop_at_deadline(intermediate_result: Any) -> None:
        if _past_deadline():
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            res = minimize(
                lambda z: float(values(z)[0]),
                z0,
                jac=lambda z: jacobian(z)[0],
                method="SLSQP",
                bounds=bounds,
                constraints=cons,
                options={"maxiter": maxiter, "ftol": ftol},
                callback=stop_at_deadline if _DEADLINE.get() is not None else None,
            )
            z, status, message = np.asarray(res.x, dtype=np.float64), int(res.status), res.message
        except (ValueError, np.linalg.LinAlgError) as err:  # NaN in SLSQP's internals
            z, status, message = z0, -1, str(err)
    if not np.all(np.isfinite(z)):
        z, status, message = z0, -1, "non-finite iterate"
    z = np.clip(z, lo, hi)
    val = values(z)
    eq, ineq = val[1 : 1 + n_eq], val[1 + n_eq :]
    viol = max(np.max(np.abs(eq), initial=0.0), np.max(ineq, initial=0.0))
    if not math.isfinite(viol) or not math.isfinite(val[0]):
        viol = math.inf
    return _NLPResult(z, float(val[0]), float(viol), status, str(message))


# --------------------------------------------------------------------------------------
# Lower level: multistart global check
# --------------------------------------------------------------------------------------


@dataclass
class LowerLevelCertificate:
    """Result of :func:`certify_lower_level`.

    Attributes
    ----------
    value:
        ``f(x, y)`` at the point checked.
    phi:
        Best lower-level value found, ``phi(x) ~= min {f(x, theta) : g <= 0, h = 0, Y}``
        (an upper bound on the true value function).
    gap:
        ``value - phi >= 0``; ``y`` is certified lower-optimal when ``gap <= tol``.
    y_best:
        A lower-level solution attaining ``phi`` (flat float64 tensor).
    solutions:
        Lower-level solutions with value within ``tol`` of ``phi`` (flat tensors).
    violation:
        Lower-level constraint violation of ``y`` (``g``, ``h`` and ``Y``).
    n_starts:
        Number of local lower-level solves run.
    certified:
        ``gap <= tol``, ``violation <= feas_tol`` and at least one local solve converged
        (SLSQP success at a feasible point): a multistart whose solves all fail is no
        certificate, whatever the gap to its starting points.
    n_converged:
        Number of local solves that converged at a feasible point.
    """

    value: float
    phi: float
    gap: float
    y_best: torch.Tensor
    solutions: list[torch.Tensor]
    violation: float
    n_starts: int
    certified: bool
    n_converged: int = 0


def _lower_multistart(
    prog: _Program,
    x: np.ndarray,
    starts: Sequence[np.ndarray],
    *,
    feas_tol: float,
    tol: float,
) -> tuple[float, list[np.ndarray], int]:
    """Solve ``min_y f(x, y)`` s.t. ``g, h, Y`` from every start; return ``phi``, the
    near-optimal solutions and the number of solves that SLSQP reports converged at a
    feasible point; raise if the lower level is infeasible or unbounded. A lower level that
    is a linear program at this ``x`` is solved exactly by HiGHS instead (see
    :func:`_lower_lp`)."""
    xt = torch.as_tensor(x, dtype=_DTYPE)
    exact = _lower_lp(prog, x, starts[0] if len(starts) else np.zeros(prog.m))
    if exact is not None:
        return exact

    def fn(y):
        return prog.f(xt, y), prog.h(xt, y), prog.g(xt, y)

    found: list[tuple[float, np.ndarray]] = []
    converged = 0
    for y0 in starts:
        res = _solve_nlp(fn, y0, prog.ly_lo, prog.ly_hi, maxiter=300)
        norm = float(np.max(np.abs(res.z), initial=0.0))
        if res.violation <= feas_tol and (
            res.objective < -_UNBOUNDED_VALUE or norm > _UNBOUNDED_NORM
        ):
            cert = _recession_certificate(prog, x, res.z, np.asarray(y0), feas_tol)
            if cert is not None:
                d, steps, values = cert
                raise UnboundedLowerLevelError(
                    f"the lower level is unbounded below at x = {_short(x)}: along the "
                    f"direction d = {_short(d)} from y = {_short(res.z)}, the points y + t d "
                    f"(t up to {steps[-1]:.1e}) are lower-feasible and f falls from "
                    f"{values[0]:.3e} to {values[-1]:.3e} at least linearly (a recession "
                    "direction checked on the model); add bounds on y or constraints that "
                    "make the lower level bounded",
                    x=x,
                    y=res.z,
                    direction=d,
                    steps=steps,
                    values=values,
                )
        if _past_deadline():
            raise _TimeUp
        if res.violation <= feas_tol:  # a diverging run without a certificate still
            found.append((res.objective, res.z))  # bounds phi from above
            converged += res.status == 0
    if not found:
        raise LowerLevelInfeasibleError(
            f"the lower level is infeasible at x = {_short(x)}: none of {len(starts)} "
            f"local solves reached a point with constraint violation <= {feas_tol:.1e}",
            evidence=f"no feasible point from {len(starts)} local solves at this x",
        )
    phi = min(v for v, _ in found)
    near: list[np.ndarray] = []
    for v, z in sorted(found, key=lambda item: item[0]):
        scale = 1e-6 * (1 + np.max(np.abs(z), initial=0.0))
        if v <= phi + tol and not any(np.max(np.abs(z - w)) <= scale for w in near):
            near.append(z)
    return phi, near, converged


def _lower_lp(
    prog: _Program, x: np.ndarray, y0: np.ndarray
) -> tuple[float, list[np.ndarray], int] | None:
    """``(phi, [y*], 1)`` when the lower level at ``x`` is a linear program (``f``, ``g``,
    ``h`` affine in ``y``, checked numerically at three points as in :func:`_affine_rows`),
    solved exactly by HiGHS: SLSQP multistart is unreliable there (badly scaled costs, e.g.
    tolls of 1e7, end in false "success" at a vertex that is not optimal). ``None`` when
    the lower level is not an LP or the LP is unbounded (left to the multistart, which
    reports unboundedness only with a certificate). Raises
    :class:`LowerLevelInfeasibleError` when HiGHS proves the lower level infeasible."""
    from scipy.optimize import linprog

    if not prog.analysis.lower_affine_in_y:
        return None
    xt = torch.as_tensor(x, dtype=_DTYPE)
    n_g = prog.sizes["lower_ineq"]

    def fn(y):
        return torch.cat([prog.f(xt, y).reshape(1), prog.g(xt, y), prog.h(xt, y)])

    y0 = np.where(np.isfinite(y0), y0, 0.0)
    mask, A, c = _affine_rows(fn, y0, np.random.default_rng(7))
    if not mask.all():
        return None
    cost = A[0]
    A_in, b_in, A_eq, b_eq = A[1 : 1 + n_g], -c[1 : 1 + n_g], A[1 + n_g :], -c[1 + n_g :]
    bounds = _linprog_bounds(prog.y_lo, prog.y_hi)
    res = linprog(
        cost,
        A_ub=A_in if n_g else None,
        b_ub=b_in if n_g else None,
        A_eq=A_eq if A_eq.shape[0] else None,
        b_eq=b_eq if A_eq.shape[0] else None,
        bounds=bounds,
        method="highs",
    )
    if res.status == 2:
        raise LowerLevelInfeasibleError(
            f"the lower level is infeasible at x = {_short(x)} (a linear program: {res.message})",
            evidence=f"HiGHS: {res.message}",
        )
    if res.status != 0:
        return None
    y = np.asarray(res.x, dtype=np.float64)
    return float(prog.values(x, y)[1]), [y], 1


def _short(v: np.ndarray, k: int = 6) -> str:
    """``v`` for messages: rounded, at most ``k`` entries."""
    v = np.asarray(v, dtype=float).ravel()
    text = ", ".join(f"{e:.4g}" for e in v[:k])
    return f"[{text}{', ...' if v.size > k else ''}]"


_RAY_STEPS = 10.0 ** np.arange(0, 9, 2)  # t / scale = 1, 1e2, ..., 1e8


def _recession_certificate(
    prog: _Program, x: np.ndarray, y: np.ndarray, y_start: np.ndarray, feas_tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A certificate that ``f(x, .)`` is unbounded below on the lower feasible set, from a
    local solve that ran away from ``y_start`` to the feasible ``y``, or ``None``.

    Candidate directions: ``d = (y - y_start) / |y - y_start|_inf`` and, when the lower
    level has linear rows ``A y + b <= 0`` (``= 0``) at this ``x``, the solution of the LP
    ``min grad_y f(x, y) . d`` s.t. ``A d <= 0`` (``= 0``), ``|d|_inf <= 1`` and ``d`` pointing
    into every finite bound of ``Y`` (an exact recession direction of that polyhedron). A
    direction is accepted when, at ``t = s * (1, 1e2, ..., 1e8)`` with ``s = 1 + |y|_inf``,
    every ``y + t d`` is lower-feasible (violation ``<= feas_tol + 1e-12 |y + t d|_inf``) and
    ``f`` falls at least linearly: ``f(y + t_k d) - f(y + t_{k+1} d) >= sigma (t_{k+1} -
    t_k) / 2`` with ``sigma = (f(y) - f(y + t_0 d)) / t_0 > 0``. This is exact for linear
    constraints and a quadratic ``f`` along ``d``; otherwise it is a check at these points.
    Returns ``(d, t, f(y + t d))`` with ``t`` starting at 0.
    """
    from scipy.optimize import linprog

    xt = torch.as_tensor(x, dtype=_DTYPE)
    directions = []
    step = y - y_start
    if np.max(np.abs(step), initial=0.0) > 0:
        directions.append(step / np.max(np.abs(step)))
    lower = prog.analysis.lower
    yt = torch.tensor(y, dtype=_DTYPE, requires_grad=True)
    with torch.enable_grad():
        grad = _grad(prog.f(xt, yt), yt).detach().numpy()
    if np.all(np.isfinite(grad)) and np.max(np.abs(grad), initial=0.0) > 0:
        n = prog.n
        d_lo = np.where(np.isfinite(prog.y_lo), 0.0, -1.0)
        d_hi = np.where(np.isfinite(prog.y_hi), 0.0, 1.0)
        res = linprog(
            grad,
            A_ub=lower.A_in[:, n:] if lower.A_in.shape[0] else None,
            b_ub=np.zeros(lower.A_in.shape[0]) if lower.A_in.shape[0] else None,
            A_eq=lower.A_eq[:, n:] if lower.A_eq.shape[0] else None,
            b_eq=np.zeros(lower.A_eq.shape[0]) if lower.A_eq.shape[0] else None,
            bounds=list(zip(d_lo, d_hi)),
            method="highs",
        )
        if res.status == 0 and res.fun < 0:
            directions.append(res.x / np.max(np.abs(res.x)))
    scale = 1.0 + float(np.max(np.abs(y), initial=0.0))
    steps = np.concatenate([[0.0], scale * _RAY_STEPS])
    for d in directions:
        points = [y + t * d for t in steps]
        if any(prog.lower_violation(x, p) > feas_tol + 1e-12 * np.max(np.abs(p)) for p in points):
            continue
        values = np.array([prog.values(x, p)[1] for p in points])
        if not np.all(np.isfinite(values)):
            continue
        sigma = (values[0] - values[1]) / steps[1]
        drops = -np.diff(values)
        if sigma > 0 and np.all(drops >= 0.5 * sigma * np.diff(steps)):
            return d, steps, values
    return None


def certify_lower_level(
    problem: BilevelProblem,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_starts: int = 20,
    seed: int = 0,
    tol: float = 1e-6,
    feas_tol: float = 1e-7,
    sample_radius: float = 10.0,
) -> LowerLevelCertificate:
    """Multistart global check of the lower level at ``x``.

    Solves ``phi(x) = min_theta {f(x, theta) : g(x, theta) <= 0, h(x, theta) = 0,
    theta in Y}`` by SLSQP from ``y`` and ``n_starts`` points drawn uniformly in ``Y`` (in a
    box of half-width ``sample_radius`` around ``y`` along infinite bounds), and returns the
    gap ``f(x, y) - phi(x)``. The gap is exact for convex lower levels and a lower bound on
    the true gap otherwise (the certificate covers the minima the starts reach).

    Raises
    ------
    LowerLevelInfeasibleError
        If no start reaches a lower-feasible point.
    UnboundedLowerLevelError
        If a local solve diverges (``f < -1e10`` or ``|y| > 1e7``).
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be tensors")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    prog = _Program(problem, x, y)
    xf = x.detach().to(_DTYPE).reshape(-1).numpy()
    yf = y.detach().to(_DTYPE).reshape(-1).numpy()
    rng = np.random.default_rng(seed)
    return _certify(prog, xf, yf, rng, n_starts, tol, feas_tol, sample_radius)


def _certify(prog, x, y, rng, n_starts, tol, feas_tol, radius) -> LowerLevelCertificate:
    starts = [np.clip(y, prog.ly_lo, prog.ly_hi)] + list(prog.sample_y(rng, n_starts, y, radius))
    phi, near, converged = _lower_multistart(prog, x, starts, feas_tol=feas_tol, tol=tol)
    _, value = prog.values(x, y)
    violation = prog.lower_violation(x, y)
    if violation <= feas_tol:
        phi = min(phi, value)
    gap = value - phi
    best = min(near, key=lambda z: prog.values(x, z)[1])
    return LowerLevelCertificate(
        value=value,
        phi=phi,
        gap=gap,
        y_best=torch.as_tensor(best),
        solutions=[torch.as_tensor(z) for z in near],
        violation=violation,
        n_starts=len(starts),
        certified=bool(gap <= tol and violation <= feas_tol and converged > 0),
        n_converged=converged,
    )


# --------------------------------------------------------------------------------------
# Upper-level reformulations
# --------------------------------------------------------------------------------------


def _cut_values(prog: _Program, x, y, cuts: torch.Tensor) -> torch.Tensor:
    if cuts.shape[0] == 0:
        return y.new_zeros(0)
    fy = prog.f(x, y)
    return torch.stack([fy - prog.f(x, yk) for yk in cuts])


def _vf_solve(prog: _Program, x0, y0, cuts: torch.Tensor) -> _NLPResult:
    """High-point relaxation with value-function cuts (variables ``z = (x, y)``)."""
    n = prog.n

    def fn(z):
        x, y = z[:n], z[n:]
        ineq = torch.cat([prog.G(x, y), prog.g(x, y), _cut_values(prog, x, y, cuts)])
        eq = torch.cat([prog.H(x, y), prog.h(x, y)])
        return prog.F(x, y), eq, ineq

    lo = np.concatenate([prog.bx_lo, prog.by_lo])
    hi = np.concatenate([prog.bx_hi, prog.by_hi])
    return _solve_nlp(fn, np.concatenate([x0, y0]), lo, hi)


def _min_lower_violation(prog: _Program, x0: np.ndarray, y0: np.ndarray) -> _NLPResult:
    """Feasibility phase, step 1: ``min t`` over ``(x, y, t)`` s.t. ``g(x, y) <= t``, ``|h(x,
    y)| <= t``, ``t >= 0``, ``x`` and ``y`` in their boxes. Returns ``z = (x, y)`` and, as
    ``violation``, the lower-level violation reached there."""
    n, m = prog.n, prog.m

    def fn(z):
        x, y, t = z[:n], z[n : n + m], z[n + m]
        h = prog.h(x, y)
        ineq = torch.cat([prog.g(x, y) - t, h - t, -h - t])
        return t, z.new_zeros(0), ineq

    x0 = np.clip(x0, prog.bx_lo, prog.bx_hi)
    y0 = np.clip(y0, prog.ly_lo, prog.ly_hi)
    t0 = max(prog.lower_violation(x0, y0), 0.0)
    lo = np.concatenate([prog.bx_lo, prog.ly_lo, [0.0]])
    hi = np.concatenate([prog.bx_hi, prog.ly_hi, [np.inf]])
    res = _solve_nlp(fn, np.concatenate([x0, y0, [t0]]), lo, hi, maxiter=200)
    z = res.z[: n + m]
    violation = prog.lower_violation(z[:n], z[n:])
    return _NLPResult(z, res.objective, violation, res.status, res.message)


def _project_feasible(prog: _Program, x1: np.ndarray, y1: np.ndarray) -> _NLPResult:
    """Feasibility phase, step 2: ``min |(x, y) - (x1, y1)|^2 / 2`` s.t. ``G <= 0``, ``H =
    0``, ``g <= 0``, ``h = 0`` and the boxes: the nearest point of the high-point relaxation
    (upper constraints and a feasible lower level)."""
    n = prog.n
    z1 = torch.as_tensor(np.concatenate([x1, y1]), dtype=_DTYPE)

    def fn(z):
        x, y = z[:n], z[n:]
        eq = torch.cat([prog.H(x, y), prog.h(x, y)])
        ineq = torch.cat([prog.G(x, y), prog.g(x, y)])
        return 0.5 * ((z - z1) ** 2).sum(), eq, ineq

    lo = np.concatenate([prog.bx_lo, prog.by_lo])
    hi = np.concatenate([prog.bx_hi, prog.by_hi])
    return _solve_nlp(fn, z1.numpy(), lo, hi, maxiter=200)


_SCHOLTES = (1e-2, 1e-6)


def _mpcc_solve(prog: _Program, x0, y0, cuts: torch.Tensor, feas_tol: float) -> _NLPResult:
    """KKT reformulation, Scholtes relaxation sequence then the tightened NLP.

    Variables ``z = (x, y, lam, mu)`` with ``lam`` the multipliers of ``g_full`` and ``mu``
    those of ``h``. Returns the result of the last successful stage (``z`` truncated to
    ``(x, y, lam, mu)``)."""
    n, m, p, q = prog.n, prog.m, prog.n_gfull, prog.sizes["lower_eq"]

    def grad_y(x, y, lam, mu):
        return _grad(prog.f(x, y) + lam @ prog.g_full(x, y) + mu @ prog.h(x, y), y)

    def split(z):
        return z[:n], z[n : n + m], z[n + m : n + m + p], z[n + m + p :]

    def base(z):
        x, y, lam, mu = split(z)
        eq = [prog.H(x, y), prog.h(x, y), grad_y(x, y, lam, mu)]
        ineq = [prog.G(x, y), prog.g(x, y), _cut_values(prog, x, y, cuts)]
        return x, y, lam, eq, ineq

    # initial multipliers: the best KKT fit at the start (LowerConstraints.multipliers)
    xt = torch.as_tensor(x0, dtype=_DTYPE)
    yt = torch.tensor(np.clip(y0, prog.by_lo, prog.by_hi), dtype=_DTYPE)
    lam0, mu0 = np.zeros(p), np.zeros(q)
    if p + q:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with contextlib.suppress(ValueError, np.linalg.LinAlgError, NonFiniteError):
                lam, mu = LowerConstraints(prog.problem, *prog._unflat(xt, yt)).multipliers()
                if bool(torch.isfinite(lam).all() and torch.isfinite(mu).all()):
                    lam0, mu0 = lam.numpy(), mu.numpy()
    yt = yt.detach()
    z = np.concatenate([x0, yt.numpy(), lam0, mu0])
    lo = np.concatenate([prog.bx_lo, prog.by_lo, np.zeros(p), np.full(q, -np.inf)])
    hi = np.concatenate([prog.bx_hi, prog.by_hi, np.full(p + q, np.inf)])

    result: _NLPResult | None = None
    stages = _SCHOLTES if p else (0.0,)
    for t in stages:

        def relaxed(zt, t=t):
            x, y, lam, eq, ineq = base(zt)
            if p:
                ineq = [*ineq, -lam * prog.g_full(x, y) - t]
            return prog.F(x, y), torch.cat(eq), torch.cat(ineq)

        res = _solve_nlp(relaxed, z, lo, hi, maxiter=100)
        if res.violation > 1e-3:  # this start does not reach a KKT point: abandon it
            return res if result is None else result
        result, z = res, res.z
    if result is None:  # cannot happen: there is at least one stage
        raise RuntimeError("no relaxation stage ran")
    if p:  # tightened NLP on the active set read off the last iterate
        with torch.no_grad():
            zt = torch.as_tensor(z)
            x, y, lam, _ = split(zt)
            active = (-prog.g_full(x, y) < lam).numpy()
        # inactive multipliers are fixed at 0 and active bounds of Y fix their y entries
        # through the variable bounds (equalities on top of bounds would violate LICQ);
        # active general constraints become equalities
        n_g = prog.sizes["lower_ineq"]
        t_lo, t_hi = lo.copy(), hi.copy()
        lam_slice = slice(n + m, n + m + p)
        t_hi[lam_slice] = np.where(active, np.inf, 0.0)
        k_up = prog.lower.upper_index.numel()
        at_hi = prog.lower.upper_index.numpy()[active[n_g : n_g + k_up]]
        at_lo = prog.lower.lower_index.numpy()[active[n_g + k_up :]]
        t_hi[n + at_lo] = prog.y_lo[at_lo]
        t_lo[n + at_hi] = prog.y_hi[at_hi]
        g_active = torch.as_tensor(active[:n_g])

        def tightened(zt):
            x, y, _, eq, ineq = base(zt)
            eq = [*eq, prog.g(x, y)[g_active]]
            return prog.F(x, y), torch.cat(eq), torch.cat(ineq)

        res = _solve_nlp(tightened, z, t_lo, t_hi, maxiter=100)
        if (
            res.violation <= feas_tol
            and res.objective <= result.objective + 1e-6 * (1 + abs(result.objective))
            or result.violation > feas_tol
            and res.violation < result.violation
        ):
            result = res
    return result


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    x: np.ndarray
    y: np.ndarray
    F: float
    f: float
    phi: float
    gap: float
    upper_violation: float
    lower_violation: float

    def key(self) -> tuple[float, float]:
        return (self.F, self.gap)


@dataclass
class Classical(Method):
    """Global-quality solver for small classical bilevel programs (``n_x + n_y <~ 30``).

    One outer iteration is one round of multistart over the KKT/MPCC reformulation
    (Scholtes relaxation + tightened NLP) and the value-function reformulation with cuts,
    followed by a multistart certificate of the lower level and an optimistic choice of
    ``y`` among the lower-level solutions; see the module docstring for the equations.

    Parameters
    ----------
    n_starts:
        Upper-level starting points per round.
    n_lower_starts:
        Starting points of each lower-level multistart check.
    n_certify:
        Distinct candidate ``x`` certified per round and reformulation (best first).
    gap_tol:
        A point is certified when ``f(x, y) - phi(x) <= gap_tol``.
    feas_tol:
        Constraint-violation tolerance (absolute) for ``G, H, g, h`` and the bounds.
    sample_radius:
        Half-width of the sampling box along infinite bounds.
    seed:
        Seed of the starting points (round ``k`` draws from ``default_rng([seed, k])``).
    use_mpcc, use_value_function:
        Enable the two reformulations.
    time_limit:
        Wall-clock budget in seconds for the whole run (set-up included), or None. When it
        ends a round, the run returns the best certified point found so far and warns
        (:class:`~bilevel.errors.ConvergenceWarning`); :func:`solve_classical` then reports
        ``status="time_limit"``.
    start_progress:
        Show a tqdm bar over the starts of each round (best ``F`` so far);
        ``solve_classical(progress=True)`` turns it on with the driver's bar over rounds.

    Notes
    -----
    ``x`` and ``y`` are tensors of any shape (flattened internally). ``x_bounds`` and
    ``y_bounds`` are read by :meth:`BilevelProblem.bounds_like`, as in
    :class:`~bilevel.constrained.LVHBA`:
    scalars, tensors broadcasting to the variable's shape (``(3,)`` bounds for a ``(2, 3)``
    ``y`` bound every row), or one entry per entry of the variable in row-major order.

    ``state.residual`` holds the round residual: the relative change ``|dF| / (1 + |F|)`` of
    the certified incumbent's upper value, ``inf`` while no feasible certified point is
    known (so at least two rounds run). The context (:meth:`prepare`) is the problem
    flattened to float64 vectors with its linear-row analysis, built once per run.
    :attr:`BilevelResult.info` holds ``upper_value``, ``lower_value``,
    ``lower_value_function`` (phi), ``lower_gap``, ``certified``, ``upper_violation``,
    ``lower_violation``, ``n_starts`` (upper-level starts run), ``n_lower_starts``,
    ``n_rounds``, ``value_cuts`` (number of cuts), ``lower_constraints_depend_on_x``,
    ``start`` (``"start"``, or ``"feasibility phase"`` when the start was repaired) and
    ``time_limit_reached``.
    """

    n_starts: int = 6
    n_lower_starts: int = 10
    n_certify: int = 2
    gap_tol: float = 1e-6
    feas_tol: float = 1e-7
    sample_radius: float = 10.0
    seed: int = 0
    use_mpcc: bool = True
    use_value_function: bool = True
    time_limit: float | None = None
    start_progress: bool = False
    name: str = field(default="classical", init=False)
    handles_constraints = True

    def __post_init__(self) -> None:
        if self.n_starts < 0 or self.n_lower_starts < 0 or self.n_certify < 1:
            raise ValueError("n_starts and n_lower_starts must be >= 0 and n_certify >= 1")
        if not (self.gap_tol >= 0 and self.feas_tol > 0 and self.sample_radius > 0):
            raise ValueError("gap_tol must be >= 0, feas_tol and sample_radius > 0")
        if not (self.use_mpcc or self.use_value_function):
            raise ValueError("enable at least one of use_mpcc and use_value_function")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(
                f"time_limit must be a positive number of seconds, got {self.time_limit}"
            )

    def prepare(self, problem: BilevelProblem, x0: torch.Tensor, y0: torch.Tensor) -> _Program:
        """The problem as functions of flat float64 vectors, with the analysis of its
        linear rows (bound tightening, infeasibility); its set-up time counts against
        ``time_limit``."""
        t0 = _clock()
        token = _DEADLINE.set(None if self.time_limit is None else t0 + self.time_limit)
        try:
            prog = _Program(problem, x0, y0)
        finally:
            _DEADLINE.reset(token)
        prog.setup_time = _clock() - t0
        return prog

    def _program(self, problem: BilevelProblem, state: MethodState) -> _Program:
        if state.context is None:  # a state unpickled outside the driver
            raise RuntimeError(
                "classical: the state has no context (it is rebuilt by bilevel.solve on "
                "resume); set state.context = method.prepare(problem, x0, y0)"
            )
        return state.context

    def init(
        self,
        problem: BilevelProblem,
        x0: torch.Tensor,
        y0: torch.Tensor,
        context: _Program | None = None,
    ) -> MethodState:
        prog = self.prepare(problem, x0, y0) if context is None else context
        t0 = _clock() - prog.setup_time  # the set-up counts against the time limit
        deadline = None if self.time_limit is None else t0 + self.time_limit
        token = _DEADLINE.set(deadline)
        try:
            if prog.analysis.infeasible:
                raise LowerLevelInfeasibleError(
                    f"the bilevel program has no feasible point: {prog.analysis.infeasible}",
                    evidence=prog.analysis.infeasible,
                )
            x = np.clip(x0.detach().to(_DTYPE).reshape(-1).numpy(), prog.bx_lo, prog.bx_hi)
            y = np.clip(y0.detach().to(_DTYPE).reshape(-1).numpy(), prog.ly_lo, prog.ly_hi)
            rng = np.random.default_rng([self.seed, 0])
            x, y, feasibility = self._feasible_start(prog, x, y, rng)
        finally:
            _DEADLINE.reset(token)
        extra = {
            "cuts": np.zeros((0, prog.m)),
            "best": None,
            "n_starts": 0,
            "x0": x,
            "y0": y,
            "feasibility": feasibility,
            "time_used": _clock() - t0,
            "timed_out": feasibility == "time_limit",
        }
        return MethodState(
            x=x0.detach().to(_DTYPE), y=y0.detach().to(_DTYPE), extra=extra, context=prog
        )

    def _feasible_start(
        self, prog: _Program, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """``(x, y, how)``: the start itself when its lower level is feasible and bounded
        (``how = "start"``), else a point found by the feasibility phase (``"feasibility
        phase"``), or the start when the time limit ends the phase (``"time_limit"``).

        Feasibility phase, from the start and ``n_starts`` points of ``X x Y`` (projected
        onto the linear rows): (1) minimise the lower-level violation ``max(g, |h|, 0)``
        over ``(x, y)`` in the boxes; (2) project the result onto ``{G <= 0, H = 0, g <= 0,
        h = 0}``; (3) accept the first projected point whose lower level is bounded.
        Raises :class:`LowerLevelInfeasibleError` (evidence: the smallest violations
        reached) or :class:`UnboundedLowerLevelError` (certificates at the start and at
        every lower-feasible point found) when no start qualifies."""
        y_starts = [y, *prog.sample_y(rng, self.n_lower_starts, y, self.sample_radius)]
        try:
            _lower_multistart(prog, x, y_starts, feas_tol=self.feas_tol, tol=self.gap_tol)
            return x, y, "start"
        except _TimeUp:
            return x, y, "time_limit"
        except LowerLevelInfeasibleError:
            at_start: UnboundedLowerLevelError | None = None
        except UnboundedLowerLevelError as err:
            at_start = err
        starts = [(x, y)]
        xs = prog.sample_x(rng, self.n_starts, x, self.sample_radius)
        ys = prog.sample_y(rng, self.n_starts, y, self.sample_radius, joint=True)
        starts += [prog.project_start(a, b) for a, b in zip(xs, ys)]
        min_lower = min_joint = math.inf
        unbounded = 0
        for x1, y1 in starts:
            if _past_deadline():
                return x, y, "time_limit"
            phase1 = _min_lower_violation(prog, x1, y1)
            min_lower = min(min_lower, phase1.violation)
            phase2 = _project_feasible(prog, phase1.z[: prog.n], phase1.z[prog.n :])
            violation = max(
                prog.upper_violation(phase2.z[: prog.n], phase2.z[prog.n :]),
                prog.lower_violation(phase2.z[: prog.n], phase2.z[prog.n :]),
                phase2.violation,
            )
            min_joint = min(min_joint, violation)
            if violation > self.feas_tol:
                continue
            x2, y2 = phase2.z[: prog.n], phase2.z[prog.n :]
            try:
                _lower_multistart(
                    prog,
                    x2,
                    [y2, *prog.sample_y(rng, self.n_lower_starts, y2, self.sample_radius)],
                    feas_tol=self.feas_tol,
                    tol=self.gap_tol,
                )
            except _TimeUp:
                return x, y, "time_limit"
            except UnboundedLowerLevelError:
                unbounded += 1
                continue
            except LowerLevelInfeasibleError:  # cannot happen: y2 is lower-feasible
                continue
            return x2, y2, "feasibility phase"
        if at_start is not None and min_joint <= self.feas_tol:
            raise UnboundedLowerLevelError(
                f"{at_start}; the feasibility phase found {unbounded} more points of the "
                "upper feasible set with a feasible lower level, each with a certified "
                "unbounded lower level",
                x=at_start.x,
                y=at_start.y,
                direction=at_start.direction,
                steps=at_start.steps,
                values=at_start.values,
            )
        if min_lower > self.feas_tol:
            evidence = (
                f"the smallest lower-level constraint violation max(g, |h|, bounds) over "
                f"(x, y) in X x Y reached from {len(starts)} starts is {min_lower:.3e} > "
                f"feas_tol = {self.feas_tol:.1e}"
            )
        else:
            evidence = (
                f"lower-feasible points exist, but the smallest violation of the upper- and "
                f"lower-level constraints together reached from {len(starts)} starts is "
                f"{min_joint:.3e} > feas_tol = {self.feas_tol:.1e}"
            )
        raise LowerLevelInfeasibleError(
            f"the lower level is infeasible at the start x = {_short(x)}, and no x of the "
            f"upper feasible set with a feasible lower level was found: {evidence} (local "
            "solves: evidence, not a proof, for nonconvex constraints)",
            evidence=evidence,
        )

    # ----------------------------------------------------------------------------------
    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        extra = state.extra
        if not extra.get("timed_out"):
            t0 = _clock()
            deadline = None
            if self.time_limit is not None:
                deadline = t0 + max(self.time_limit - extra.get("time_used", 0.0), 0.0)
            token = _DEADLINE.set(deadline)
            try:
                state, cut_short = self._round(problem, state, iteration)
            finally:
                _DEADLINE.reset(token)
                extra["time_used"] = extra.get("time_used", 0.0) + _clock() - t0
            extra["timed_out"] = cut_short
        if extra["timed_out"]:  # nothing is left to do; say so once
            if not extra.get("warned"):
                extra["warned"] = True
                best = extra["best"]
                found = (
                    "no feasible point"
                    if best is None
                    else f"the best point so far, F = {best.F:.6g} "
                    f"({'certified' if self._certified(best) else 'NOT certified'}, "
                    f"lower gap {best.gap:.1e})"
                )
                warnings.warn(
                    f"classical: time limit of {self.time_limit:g} s reached in round "
                    f"{iteration}; returning {found}",
                    ConvergenceWarning,
                    stacklevel=2,
                )
            state.residual = math.inf
        return state

    def _round(
        self, problem: BilevelProblem, state: MethodState, iteration: int
    ) -> tuple[MethodState, bool]:
        """One round (see the module docstring); returns the state and whether the time
        limit cut it short."""
        extra = state.extra
        prog = self._program(problem, state)
        rng = np.random.default_rng([self.seed, iteration])
        best: _Candidate | None = extra["best"]
        center_x = best.x if best is not None else extra["x0"]
        center_y = best.y if best is not None else extra["y0"]
        starts: list[tuple[np.ndarray, np.ndarray]] = []
        if iteration == 1:
            starts.append((extra["x0"], extra["y0"]))
        if best is not None:
            starts.append((best.x, best.y))
        xs = prog.sample_x(rng, self.n_starts, center_x, self.sample_radius)
        ys = prog.sample_y(rng, self.n_starts, center_y, self.sample_radius, joint=True)
        starts += [prog.project_start(a, b) for a, b in zip(xs, ys)]
        previous = best.F if best is not None and self._certified(best) else math.inf
        bar = None
        if self.start_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(starts), desc=f"classical round {iteration}", leave=False)
        cut_short = False
        candidates: list[tuple[float, np.ndarray, np.ndarray, str]] = []
        try:
            for x0, y0 in starts:
                if _past_deadline():
                    cut_short = True
                    break
                extra["n_starts"] += 1
                mine = self._local_solves(prog, x0, y0, extra["cuts"])
                candidates += mine
                if best is None or not self._certified(best):
                    # anytime: certify at once while there is no certified incumbent
                    for cand in self._select(mine)[:1]:
                        checked, _ = self._check(prog, cand[1], cand[2], rng)
                        if checked is not None and self._better(checked, best):
                            best = checked
                if bar is not None:
                    bar.update(1)
                    if best is not None:
                        bar.set_postfix(
                            F=f"{best.F:.6g}", certified=self._certified(best), refresh=False
                        )
            # certify the best distinct candidates; candidates whose lower level is not
            # optimal add cuts and are re-solved (up to 3 passes)
            for _ in range(3):
                new_cuts = False
                for cand in self._select(candidates):
                    if _past_deadline():
                        cut_short = True
                        break
                    checked, cut = self._check(prog, cand[1], cand[2], rng)
                    if cut is not None and self.use_value_function and not prog.lower_depends_on_x:
                        extra["cuts"] = np.vstack([extra["cuts"], cut[None]])
                        new_cuts = True
                    if checked is not None and self._better(checked, best):
                        best = checked
                if not new_cuts or cut_short:
                    break
                candidates = []
                for cand in self._select_for_resolve(best, starts):
                    if _past_deadline():
                        cut_short = True
                        break
                    candidates += self._local_solves(prog, cand[0], cand[1], extra["cuts"])
            if best is not None and not _past_deadline():
                # independent re-check of the incumbent with fresh starts: a failure revokes
                # its certificate (so the run cannot be declared converged) and adds a cut
                fresh = np.random.default_rng([self.seed, iteration, 1])
                try:
                    cert = _certify(
                        prog,
                        best.x,
                        best.y,
                        fresh,
                        self.n_lower_starts,
                        self.gap_tol,
                        self.feas_tol,
                        self.sample_radius,
                    )
                except (LowerLevelInfeasibleError, UnboundedLowerLevelError):
                    cert = None  # cannot happen for a lower-feasible y with a finite phi
                except _TimeUp:  # the incumbent keeps the certificate it was accepted with
                    cert, cut_short = None, True
                if cert is not None and cert.n_converged and cert.phi < best.phi:
                    best = dataclasses.replace(best, phi=cert.phi, gap=max(best.f - cert.phi, 0.0))
                    if best.gap > self.gap_tol and not prog.lower_depends_on_x:
                        extra["cuts"] = np.vstack([extra["cuts"], cert.y_best.numpy()[None]])
            elif best is not None:
                cut_short = True
        finally:
            if bar is not None:
                bar.close()
        extra["best"] = best
        if best is not None:
            state.x = torch.as_tensor(best.x).reshape(prog.x_shape).clone()
            state.y = torch.as_tensor(best.y).reshape(prog.y_shape).clone()
        current = best.F if best is not None and self._certified(best) else math.inf
        residual = abs(current - previous) / (1.0 + abs(current))
        state.residual = residual if math.isfinite(residual) else math.inf
        state.grad_calls += 1
        return state, cut_short

    def _certified(self, cand: _Candidate) -> bool:
        return (
            cand.gap <= self.gap_tol
            and cand.upper_violation <= self.feas_tol
            and cand.lower_violation <= self.feas_tol
        )

    def _better(self, new: _Candidate, old: _Candidate | None) -> bool:
        if not (new.upper_violation <= self.feas_tol and new.lower_violation <= self.feas_tol):
            return False
        if old is None:
            return True
        if self._certified(new) != self._certified(old):
            return self._certified(new)
        return new.F < old.F - 1e-12 * (1 + abs(old.F))

    def _local_solves(self, prog, x0, y0, cuts) -> list[tuple[float, np.ndarray, np.ndarray, str]]:
        out = []
        cuts_t = torch.as_tensor(cuts, dtype=_DTYPE)
        # an LP lower level with x-independent constraints: the value-function path with
        # vertex cuts from exact LP solves is exact once no cut is violated (finitely many
        # vertices), and the KKT/MPCC path, degenerate for LPs, only costs time
        exact_cuts = (
            self.use_value_function
            and prog.analysis.lower_affine_in_y
            and not prog.lower_depends_on_x
        )
        if self.use_mpcc and not exact_cuts:
            res = _mpcc_solve(prog, x0, y0, cuts_t, self.feas_tol)
            if res.violation <= 1e-4:
                z = res.z
                out.append((res.objective, z[: prog.n], z[prog.n : prog.n + prog.m], "mpcc"))
        if self.use_value_function:
            use_cuts = cuts_t if not prog.lower_depends_on_x else cuts_t[:0]
            res = _vf_solve(prog, x0, y0, use_cuts)
            if res.violation <= 1e-4:
                out.append((res.objective, res.z[: prog.n], res.z[prog.n :], "vf"))
        return out

    def _select(self, candidates):
        """The ``n_certify`` best candidates with distinct ``x`` of each reformulation (the
        value-function objective is a relaxation, not comparable with the MPCC one)."""
        chosen: list[tuple[float, np.ndarray, np.ndarray, str]] = []
        for path in ("mpcc", "vf"):
            mine: list[tuple[float, np.ndarray, np.ndarray, str]] = []
            for cand in sorted((c for c in candidates if c[3] == path), key=lambda c: c[0]):
                scale = 1e-6 * (1 + np.max(np.abs(cand[1]), initial=0.0))
                if not any(np.max(np.abs(cand[1] - c[1]), initial=0.0) <= scale for c in mine):
                    mine.append(cand)
                if len(mine) >= self.n_certify:
                    break
            chosen += mine
        return chosen

    def _select_for_resolve(self, best, starts):
        points = [] if best is None else [(best.x, best.y)]
        return points + starts[: self.n_certify]

    def _check(self, prog, x, y, rng) -> tuple[_Candidate | None, np.ndarray | None]:
        """Certificate at ``x`` and optimistic ``y``; returns the candidate (or None when the
        lower level is infeasible or unbounded at ``x``, which is then not bilevel-feasible)
        and a cut point when ``y`` was not optimal; ``(None, None)`` when the deadline
        interrupts the certificate."""
        try:
            return self._check_now(prog, x, y, rng)
        except _TimeUp:
            return None, None

    def _check_now(self, prog, x, y, rng) -> tuple[_Candidate | None, np.ndarray | None]:
        try:
            cert = _certify(
                prog,
                x,
                y,
                rng,
                self.n_lower_starts,
                self.gap_tol,
                self.feas_tol,
                self.sample_radius,
            )
        except (LowerLevelInfeasibleError, UnboundedLowerLevelError):
            return None, None
        if cert.n_converged == 0:  # every local solve failed: no certificate at this x
            return None, None
        cut = cert.y_best.numpy() if cert.gap > self.gap_tol else None
        xt = torch.as_tensor(x, dtype=_DTYPE)
        phi = cert.phi

        def optimistic(yt):
            ineq = [prog.G(xt, yt), prog.g(xt, yt), (prog.f(xt, yt) - phi).reshape(1)]
            return prog.F(xt, yt), torch.cat([prog.H(xt, yt), prog.h(xt, yt)]), torch.cat(ineq)

        # starts: y itself (when lower-optimal) and the lower solutions, best F first, at
        # most 3 that are distinct at 1e-3 (the solution set of a convex lower level is
        # convex, one start per component suffices; repeated starts cost SLSQP runs on a
        # nearly degenerate feasible set)
        found = sorted((s.numpy() for s in cert.solutions), key=lambda v: prog.values(x, v)[0])
        starts: list[np.ndarray] = []
        for y0 in ([y] if cert.certified else []) + found:
            scale = 1e-3 * (1 + np.max(np.abs(y0), initial=0.0))
            if len(starts) < 3 and not any(np.max(np.abs(y0 - v)) <= scale for v in starts):
                starts.append(y0)
        best: _Candidate | None = None
        for y0 in starts:
            res = _solve_nlp(optimistic, y0, prog.ly_lo, prog.ly_hi, maxiter=100)
            # polishing may fail or end worse (f <= phi cut off a start that is optimal
            # only to within gap_tol): the lower solution itself competes
            for cand in (self._evaluate(prog, x, res.z, phi), self._evaluate(prog, x, y0, phi)):
                if best is None or self._rank(cand) < self._rank(best):
                    best = cand
        return best, cut

    def _rank(self, cand: _Candidate) -> tuple[int, float]:
        feasible = cand.upper_violation <= self.feas_tol and cand.lower_violation <= self.feas_tol
        return (0 if feasible and cand.gap <= self.gap_tol else 1, cand.F)

    def _evaluate(self, prog, x, y, phi) -> _Candidate:
        F, f = prog.values(x, y)
        return _Candidate(
            x=np.array(x),
            y=np.array(y),
            F=F,
            f=f,
            phi=phi,
            gap=max(f - phi, 0.0) if math.isfinite(f) else math.inf,
            upper_violation=prog.upper_violation(x, y),
            lower_violation=prog.lower_violation(x, y),
        )

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        best: _Candidate | None = state.extra.get("best")
        prog = self._program(problem, state)
        info: dict[str, Any] = {
            "n_starts": state.extra.get("n_starts", 0),
            "n_lower_starts": self.n_lower_starts + 1,
            "n_rounds": state.grad_calls,
            "value_cuts": int(state.extra["cuts"].shape[0]) if "cuts" in state.extra else 0,
            "lower_constraints_depend_on_x": prog.lower_depends_on_x,
            "start": state.extra.get("feasibility", "start"),
            "time_limit_reached": bool(state.extra.get("timed_out", False)),
        }
        if best is None:
            info.update(feasible=False, certified=False)
            return info
        info.update(
            feasible=best.upper_violation <= self.feas_tol
            and best.lower_violation <= self.feas_tol,
            upper_value=best.F,
            lower_value=best.f,
            lower_value_function=best.phi,
            lower_gap=best.gap,
            certified=self._certified(best),
            upper_violation=best.upper_violation,
            lower_violation=best.lower_violation,
        )
        return info


def solve_classical(
    problem: BilevelProblem,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    maxiter: int = 10,
    tol: float = 1e-6,
    time_limit: float | None = None,
    progress: bool = False,
    **options: Any,
) -> BilevelResult:
    """Solve a small classical bilevel program with :class:`Classical`.

    Equivalent to ``bilevel.solve(problem, x0, y0, method=Classical(time_limit=time_limit,
    **options), maxiter=maxiter, tol=tol, progress=progress)``: at most ``maxiter`` rounds,
    converged once a round leaves the certified incumbent's upper value unchanged to
    ``tol``. The certified lower-level gap and the constraint violations are in
    ``result.info``.

    Anytime mode: with ``time_limit`` (seconds, wall clock, the feasibility phase
    included) the run stops at the first local solve past the limit and returns the best
    certified point found so far with ``status="time_limit"``, a
    :class:`~bilevel.errors.ConvergenceWarning` and ``info["time_limit_reached"] = True``
    (``info["certified"]`` says whether a certified point was found; lower-level
    a lower-level certificate that the limit interrupts is discarded, never trusted, and a
    local solve stops at its first iteration past the limit). Through :func:`bilevel.solve` the same run ends with the driver's status
    (``"max_iterations"``, with the same warning), since the driver has no time-limit status.
    ``progress=True`` shows tqdm bars over the rounds and over the starts of each round.
    """
    method = Classical(time_limit=time_limit, start_progress=progress, **options)
    result = run_method(
        method,
        problem,
        x0,
        y0,
        maxiter=maxiter,
        tol=tol,
        callback=lambda iteration, state: bool(state.extra.get("timed_out")),
        progress=progress,
        record_every=1,
        checkpoint=None,
        checkpoint_every=1,
        resume=False,
    )
    if result.info.get("time_limit_reached"):
        result.status = "time_limit"
        result.message = (
            f"time limit of {time_limit:g} s reached after {result.info['n_rounds']} round(s); "
            + (
                "best certified point returned"
                if result.info.get("certified")
                else "no certified point found"
            )
        )
    return result
