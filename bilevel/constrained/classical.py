"""Classical small nonlinear bilevel programs solved to global quality by multistart over
KKT/MPCC and value-function reformulations, with a certified lower level.

Problem (optimistic formulation)::

    min_{x, y}  F(x, y)
    s.t.        G(x, y) <= 0,  H(x, y) = 0,  x in X = [x_lo, x_hi]
                y in S(x) = argmin_theta { f(x, theta) : g(x, theta) <= 0, h(x, theta) = 0,
                                           theta in Y = [y_lo, y_hi] }

Method (one outer iteration of :class:`Classical` is one *round*):

1. **Starts.** ``n_starts`` points ``(x, y)`` drawn uniformly in ``X x Y`` (a box of
   half-width ``sample_radius`` around ``(x0, y0)`` along infinite bounds); the first round
   also starts from ``(x0, y0)`` and later rounds from the incumbent and perturbations of it.
2. **KKT/MPCC path.** The lower level is replaced by its KKT conditions, with the bounds of
   ``Y`` written as inequalities ``g_full = (g, y_lo - y, y - y_hi)`` (finite entries only)::

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
5. **Stopping.** The residual stored in ``state.hypergrad`` (and reported as
   ``hypergrad_norm`` in the history) is ``|F_best(k) - F_best(k-1)| / (1 + |F_best(k)|)``
   when the incumbent is feasible and certified (gap <= ``gap_tol``), and ``1e100`` (a
   finite stand-in for infinity) while there is no certified incumbent from this and the
   previous round; :func:`bilevel.solve` declares convergence when it is ``<= tol``, i.e.
   after a round that does not improve the certified incumbent. Each round costs many NLP
   solves, so pass a small ``maxiter`` (:func:`solve_classical` uses 10).

Gradients and Jacobians of the user's torch functions are computed with
reverse-mode autograd in float64 (one backward pass per constraint: the graphs are tiny, and
this is several times faster than vectorized :mod:`torch.func` transforms here).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds as _ScipyBounds
from scipy.optimize import lsq_linear, minimize

from bilevel.constrained.feasible import InfeasibleError, UnboundedError
from bilevel.methods._base import Method, MethodState, run_method
from bilevel.problem import BilevelProblem, BilevelResult

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
_NOT_CONVERGED = 1e100  # residual while no certified incumbent exists (finite on purpose)


class LowerLevelInfeasibleError(InfeasibleError):
    """The lower-level feasible set ``{y in Y : g(x, y) <= 0, h(x, y) = 0}`` is empty at the
    given ``x`` (no multistart run reached a feasible point); a
    :class:`bilevel.constrained.InfeasibleError`."""


class UnboundedLowerLevelError(UnboundedError):
    """``f(x, .)`` appears unbounded below on the lower-level feasible set at the given
    ``x`` (the lower value or ``|y|`` diverged); a :class:`bilevel.constrained.UnboundedError`."""


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

    def __init__(self, problem: BilevelProblem, x0: torch.Tensor, y0: torch.Tensor):
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
        self.x_shape, self.y_shape = x0.shape, y0.shape
        self.n, self.m = x0.numel(), y0.numel()
        if self.m == 0:
            raise ValueError("y0 is empty: the lower level needs at least one variable")
        self.x_lo, self.x_hi = _bound_arrays(problem, "x_bounds", x0)
        self.y_lo, self.y_hi = _bound_arrays(problem, "y_bounds", y0)
        self.y_lo_idx = np.flatnonzero(np.isfinite(self.y_lo))
        self.y_hi_idx = np.flatnonzero(np.isfinite(self.y_hi))
        self._y_lo_i, self._y_hi_i = torch.as_tensor(self.y_lo_idx), torch.as_tensor(self.y_hi_idx)
        self._y_lo_t = torch.as_tensor(self.y_lo[self.y_lo_idx], dtype=_DTYPE)
        self._y_hi_t = torch.as_tensor(self.y_hi[self.y_hi_idx], dtype=_DTYPE)
        xf = x0.detach().to(_DTYPE).reshape(-1)
        yf = y0.detach().to(_DTYPE).reshape(-1)
        self.sizes = {}
        with torch.no_grad():
            for name in ("upper_ineq", "upper_eq", "lower_ineq", "lower_eq"):
                self.sizes[name] = self._call(name, xf, yf).numel()
        self.lower_depends_on_x = self._lower_constraints_depend_on_x(xf, yf)

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
        """Lower inequalities including the finite bounds of ``Y`` (``<= 0``)."""
        return torch.cat(
            [self.g(x, y), self._y_lo_t - y[self._y_lo_i], y[self._y_hi_i] - self._y_hi_t]
        )

    @property
    def n_gfull(self) -> int:
        return self.sizes["lower_ineq"] + self.y_lo_idx.size + self.y_hi_idx.size

    def _lower_constraints_depend_on_x(self, x0: torch.Tensor, y0: torch.Tensor) -> bool:
        """Whether ``g`` or ``h`` varies with ``x`` (Jacobian in x at a few sample points)."""
        if self.n == 0 or self.sizes["lower_ineq"] + self.sizes["lower_eq"] == 0:
            return False
        rng = np.random.default_rng(12345)
        xs = [x0] + [torch.as_tensor(v) for v in self.sample_x(rng, 3, x0.numpy())]
        ys = [y0] + [torch.as_tensor(v) for v in self.sample_y(rng, 3, y0.numpy())]

        def gh(x, y):
            return torch.cat([self.g(x, y), self.h(x, y)])

        for x, y in zip(xs, ys):
            jac = torch.func.jacfwd(gh, argnums=0)(x, y)
            if bool((jac.abs() > 1e-13).any()):
                return True
        return False

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
        return self._sample(rng, k, self.x_lo, self.x_hi, center, radius)

    def sample_y(self, rng, k, center, radius=10.0) -> np.ndarray:
        return self._sample(rng, k, self.y_lo, self.y_hi, center, radius)

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
# NLP solves through SciPy SLSQP with autograd derivatives
# --------------------------------------------------------------------------------------


def _rows_jacobian(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Jacobian of the 1-D ``out`` with respect to ``inp`` by one backward pass per row
    (faster than vectorized transforms for the tiny graphs of classical problems)."""
    rows = []
    for i in range(out.shape[0]):
        row = None
        if out[i].requires_grad:
            (row,) = torch.autograd.grad(out[i], inp, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(inp) if row is None else row)
    return torch.stack(rows) if rows else inp.new_zeros(0, inp.numel())


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
        ``gap <= tol`` and ``violation <= feas_tol``.
    """

    value: float
    phi: float
    gap: float
    y_best: torch.Tensor
    solutions: list[torch.Tensor]
    violation: float
    n_starts: int
    certified: bool


def _lower_multistart(
    prog: _Program,
    x: np.ndarray,
    starts: Sequence[np.ndarray],
    *,
    feas_tol: float,
    tol: float,
) -> tuple[float, list[np.ndarray]]:
    """Solve ``min_y f(x, y)`` s.t. ``g, h, Y`` from every start; return ``phi`` and the
    near-optimal solutions; raise if the lower level is infeasible or unbounded."""
    xt = torch.as_tensor(x, dtype=_DTYPE)

    def fn(y):
        return prog.f(xt, y), prog.h(xt, y), prog.g(xt, y)

    found: list[tuple[float, np.ndarray]] = []
    for y0 in starts:
        res = _solve_nlp(fn, y0, prog.y_lo, prog.y_hi, maxiter=300)
        norm = float(np.max(np.abs(res.z), initial=0.0))
        if res.violation <= feas_tol and (
            res.objective < -_UNBOUNDED_VALUE or norm > _UNBOUNDED_NORM
        ):
            raise UnboundedLowerLevelError(
                f"the lower level appears unbounded below at x = {x.tolist()}: a local solve "
                f"reached f = {res.objective:.3e} at |y|_inf = {norm:.3e}; add bounds on y "
                "or constraints that make the lower level bounded"
            )
        if res.violation <= feas_tol:
            found.append((res.objective, res.z))
    if not found:
        raise LowerLevelInfeasibleError(
            f"the lower level is infeasible at x = {x.tolist()}: none of {len(starts)} "
            f"local solves reached a point with constraint violation <= {feas_tol:.1e}"
        )
    phi = min(v for v, _ in found)
    near: list[np.ndarray] = []
    for v, z in sorted(found, key=lambda item: item[0]):
        scale = 1e-6 * (1 + np.max(np.abs(z), initial=0.0))
        if v <= phi + tol and not any(np.max(np.abs(z - w)) <= scale for w in near):
            near.append(z)
    return phi, near


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
    starts = [np.clip(y, prog.y_lo, prog.y_hi)] + list(prog.sample_y(rng, n_starts, y, radius))
    phi, near = _lower_multistart(prog, x, starts, feas_tol=feas_tol, tol=tol)
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
        certified=bool(gap <= tol and violation <= feas_tol),
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

    lo = np.concatenate([prog.x_lo, prog.y_lo])
    hi = np.concatenate([prog.x_hi, prog.y_hi])
    return _solve_nlp(fn, np.concatenate([x0, y0]), lo, hi)


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

    # initial multipliers: least squares on the stationarity with lam >= 0
    xt = torch.as_tensor(x0, dtype=_DTYPE)
    yt = torch.tensor(np.clip(y0, prog.y_lo, prog.y_hi), dtype=_DTYPE, requires_grad=True)
    lam0, mu0 = np.zeros(p), np.zeros(q)
    if p + q:
        with torch.enable_grad():
            cons = torch.cat([prog.g_full(xt, yt), prog.h(xt, yt)])
            jac = _rows_jacobian(cons, yt).T.detach().numpy()  # m x (p + q)
            rhs = -_grad(prog.f(xt, yt), yt).detach().numpy()
        lb = np.concatenate([np.zeros(p), np.full(q, -np.inf)])
        if np.all(np.isfinite(jac)) and np.all(np.isfinite(rhs)):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    sol = lsq_linear(jac, rhs, bounds=(lb, np.full(p + q, np.inf)))
                    if np.all(np.isfinite(sol.x)):
                        lam0, mu0 = sol.x[:p], sol.x[p:]
                except (ValueError, np.linalg.LinAlgError):
                    pass
    yt = yt.detach()
    z = np.concatenate([x0, yt.numpy(), lam0, mu0])
    lo = np.concatenate([prog.x_lo, prog.y_lo, np.zeros(p), np.full(q, -np.inf)])
    hi = np.concatenate([prog.x_hi, prog.y_hi, np.full(p + q, np.inf)])

    result = None
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
        k_lo, k_hi = prog.y_lo_idx.size, prog.y_hi_idx.size
        at_lo = prog.y_lo_idx[active[n_g : n_g + k_lo]]
        at_hi = prog.y_hi_idx[active[n_g + k_lo : n_g + k_lo + k_hi]]
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

    Notes
    -----
    ``x`` and ``y`` are tensors of any shape (flattened internally). ``x_bounds`` and
    ``y_bounds`` are read by :meth:`BilevelProblem.bounds_like`, as in
    :class:`~bilevel.constrained.LVHBA`:
    scalars, tensors broadcasting to the variable's shape (``(3,)`` bounds for a ``(2, 3)``
    ``y`` bound every row), or one entry per entry of the variable in row-major order.

    ``state.hypergrad`` holds the round residual (a 1-element tensor): the relative change
    ``|dF| / (1 + |F|)`` of the certified incumbent's upper value, ``1e100`` while no
    feasible certified point is known (so at least two rounds run).
    :attr:`BilevelResult.info` holds ``upper_value``, ``lower_value``,
    ``lower_value_function`` (phi), ``lower_gap``, ``certified``, ``upper_violation``,
    ``lower_violation``, ``n_starts`` (upper-level starts run), ``n_lower_starts``,
    ``n_rounds``, ``value_cuts`` (number of cuts) and ``lower_constraints_depend_on_x``.
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
    name: str = field(default="classical", init=False)
    handles_constraints = True

    def __post_init__(self) -> None:
        if self.n_starts < 0 or self.n_lower_starts < 0 or self.n_certify < 1:
            raise ValueError("n_starts and n_lower_starts must be >= 0 and n_certify >= 1")
        if not (self.gap_tol >= 0 and self.feas_tol > 0 and self.sample_radius > 0):
            raise ValueError("gap_tol must be >= 0, feas_tol and sample_radius > 0")
        if not (self.use_mpcc or self.use_value_function):
            raise ValueError("enable at least one of use_mpcc and use_value_function")

    def init(self, problem: BilevelProblem, x0: torch.Tensor, y0: torch.Tensor) -> MethodState:
        prog = _Program(problem, x0, y0)
        x = np.clip(x0.detach().to(_DTYPE).reshape(-1).numpy(), prog.x_lo, prog.x_hi)
        # fails clearly when the lower level is infeasible (or unbounded) at x0
        rng = np.random.default_rng([self.seed, 0])
        starts = [np.clip(y0.detach().to(_DTYPE).reshape(-1).numpy(), prog.y_lo, prog.y_hi)]
        starts += list(prog.sample_y(rng, self.n_lower_starts, starts[0], self.sample_radius))
        _lower_multistart(prog, x, starts, feas_tol=self.feas_tol, tol=self.gap_tol)
        extra = {
            "cuts": np.zeros((0, prog.m)),
            "best": None,
            "n_starts": 0,
            "x0": x,
            "y0": starts[0],
        }
        return MethodState(x=x0.detach().to(_DTYPE), y=y0.detach().to(_DTYPE), extra=extra)

    # ----------------------------------------------------------------------------------
    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        prog = _Program(problem, state.x, state.y)
        extra = state.extra
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
        ys = prog.sample_y(rng, self.n_starts, center_y, self.sample_radius)
        starts += list(zip(xs, ys))
        extra["n_starts"] += len(starts)

        candidates: list[tuple[float, np.ndarray, np.ndarray, str]] = []
        for x0, y0 in starts:
            candidates += self._local_solves(prog, x0, y0, extra["cuts"])
        previous = best.F if best is not None and self._certified(best) else math.inf
        # certify the best distinct candidates; candidates whose lower level is not
        # optimal add cuts and are re-solved (up to 3 passes)
        for _ in range(3):
            new_cuts = False
            for cand in self._select(candidates):
                checked, cut = self._check(prog, cand[1], cand[2], rng)
                if cut is not None and self.use_value_function and not prog.lower_depends_on_x:
                    extra["cuts"] = np.vstack([extra["cuts"], cut[None]])
                    new_cuts = True
                if checked is not None and self._better(checked, best):
                    best = checked
            if not new_cuts:
                break
            candidates = []
            for cand in self._select_for_resolve(best, starts):
                candidates += self._local_solves(prog, cand[0], cand[1], extra["cuts"])
        if best is not None:
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
            except LowerLevelInfeasibleError:  # cannot happen for a lower-feasible y
                cert = None
            if cert is not None and cert.phi < best.phi:
                best = dataclasses.replace(best, phi=cert.phi, gap=max(best.f - cert.phi, 0.0))
                if best.gap > self.gap_tol and not prog.lower_depends_on_x:
                    extra["cuts"] = np.vstack([extra["cuts"], cert.y_best.numpy()[None]])
        extra["best"] = best
        if best is not None:
            state.x = torch.as_tensor(best.x).reshape(prog.x_shape).clone()
            state.y = torch.as_tensor(best.y).reshape(prog.y_shape).clone()
        current = best.F if best is not None and self._certified(best) else math.inf
        residual = abs(current - previous) / (1.0 + abs(current))
        if not math.isfinite(residual):  # the driver treats non-finite residuals as divergence
            residual = _NOT_CONVERGED
        state.hypergrad = torch.tensor([residual], dtype=_DTYPE)
        state.grad_calls += 1
        return state

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
        if self.use_mpcc:
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
        lower level is infeasible at ``x``) and a cut point when ``y`` was not optimal."""
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
        except LowerLevelInfeasibleError:
            return None, None
        cut = cert.y_best.numpy() if cert.gap > self.gap_tol else None
        xt = torch.as_tensor(x, dtype=_DTYPE)
        phi = cert.phi

        def optimistic(yt):
            ineq = [prog.G(xt, yt), prog.g(xt, yt), (prog.f(xt, yt) - phi).reshape(1)]
            return prog.F(xt, yt), torch.cat([prog.H(xt, yt), prog.h(xt, yt)]), torch.cat(ineq)

        starts = [s.numpy() for s in cert.solutions]
        if cert.certified:
            starts.insert(0, y)
        best: _Candidate | None = None
        for y0 in starts:
            res = _solve_nlp(optimistic, y0, prog.y_lo, prog.y_hi)
            cand = self._evaluate(prog, x, res.z, phi)
            if self._rank(cand)[0] == 1:  # polishing failed: keep the lower solution itself
                cand = self._evaluate(prog, x, y0, phi)
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
        prog = _Program(problem, state.x, state.y)
        info: dict[str, Any] = {
            "n_starts": state.extra.get("n_starts", 0),
            "n_lower_starts": self.n_lower_starts + 1,
            "n_rounds": state.grad_calls,
            "value_cuts": int(state.extra["cuts"].shape[0]) if "cuts" in state.extra else 0,
            "lower_constraints_depend_on_x": prog.lower_depends_on_x,
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
    **options: Any,
) -> BilevelResult:
    """Solve a small classical bilevel program with :class:`Classical`.

    Equivalent to ``bilevel.solve(problem, x0, y0, method=Classical(**options),
    maxiter=maxiter, tol=tol)``: at most ``maxiter`` rounds, converged once a round leaves
    the certified incumbent's upper value unchanged to ``tol``. The certified lower-level
    gap and the constraint violations are in ``result.info``.
    """
    return run_method(
        Classical(**options),
        problem,
        x0,
        y0,
        maxiter=maxiter,
        tol=tol,
        callback=None,
        progress=False,
        record_every=1,
        checkpoint=None,
        checkpoint_every=1,
        resume=False,
    )
