"""LV-HBA: the proximal Lagrangian value function approach (Yao et al., ICLR 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel._validation import check_positive
from bilevel.constrained.feasible import (
    InfeasibleError,
    affine_coefficients,
    project_affine,
    project_box,
    project_nonlinear,
    project_polyhedron,
)
from bilevel.errors import DivergenceError
from bilevel.methods import Method, MethodState
from bilevel.operators import projection_halfspace
from bilevel.problem import BilevelProblem, LowerConstraints
from bilevel.problem._constraints import jacobian

__all__ = ["LVHBA"]

Projection = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Context:
    """What :meth:`LVHBA.prepare` builds once per run (never checkpointed): ``Proj_C`` on
    the flat ``w = (x, y)``, its kind, and the lower-level rows ``c = (g, h)``."""

    project: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    rows: LowerConstraints


@dataclass
class LVHBA(Method):
    """LV-HBA: single-loop, Hessian-free method for bilevel problems with constrained (and
    coupled) lower levels (Yao, Yu, Zeng, Zhang, Zhang, ICLR 2024).

    Problem (see :class:`~bilevel.BilevelProblem`)::

        min_{x, y} F(x, y)  s.t.  (x, y) in C,  y in argmin_{t in Y} {f(x, t) : c(x, t) in K}

    with ``c = (g, h)`` the lower constraints (``g <= 0``, ``h = 0``), ``K = R_-^{m_g} x
    {0}^{m_h}``, ``Y = y_bounds`` and ``C = {x in X, y in Y, g(x, y) <= 0, h(x, y) = 0, G(x,
    y) <= 0, H(x, y) = 0}`` (the upper constraints ``G``, ``H`` and ``X = x_bounds`` enter
    only through ``C``). The lower level is replaced by the proximal Lagrangian value
    function::

        v(x, y, z) = min_{t in Y} max_{l in Z} f(x, t) + l^T c(x, t)
                                               + 1/(2 gamma1) ||t - y||^2
                                               - 1/(2 gamma2) ||l - z||^2,

    ``Z = [0, r]^{m_g} x [-r, r]^{m_h}`` (``r = multiplier_bound``), and the constraint
    ``f(x, y) - v(x, y, z) <= 0`` is penalised with the growing weight ``c_k = c0 k^p``.
    Iteration ``k = 1, 2, ...`` (variables ``x, y`` and ``theta``, the inner estimate of
    the proximal point, ``lam`` its multiplier, ``z`` the proximal centre of ``lam``)::

        d_theta = grad_t [f + lam^T c](x, theta) + P1(theta - y)
        d_lam   = -c(x, theta) + P2(lam - z)
        theta   <- Proj_Y(theta - eta d_theta),   lam <- Proj_Z(lam - eta d_lam)
        d_x = grad_x F(x, y) / c_k + grad_x f(x, y) - grad_x [f + lam^T c](x, theta)
        d_y = grad_y F(x, y) / c_k + grad_y f(x, y) - P1(y - theta)
        d_z = P2(z - lam)
        (x, y) <- Proj_C((x, y) - alpha (d_x, d_y)),   z <- Proj_Z(z - beta d_z)

    (the ``d_*`` after the first line use the new ``theta``, ``lam``), with the step sizes
    ``alpha = outer_step_size``, ``eta = inner_step_size``, ``beta = center_step_size``
    (the paper's names). The proximal terms
    follow one of the two step-size conventions of the official scripts, chosen by
    ``gamma_convention``:

    * ``"divide"`` (default; the paper and the official toy scripts): ``P1(u) = u /
      gamma1``, ``P2(u) = u / gamma2``;
    * ``"multiply"`` (the official SVM scripts): ``P1(u) = gamma1 u``, ``P2(u) = gamma2
      u``; equivalent to ``"divide"`` with ``gamma -> 1 / gamma``.

    The official SVM scripts also scale the upper gradient by ``1/sqrt(k+1)``; that is
    ``c0 = 1, p = 0.5`` here.

    Constraint scaling: with ``normalize_constraints=True`` (default) each lower constraint
    ``c_i`` is divided by ``s_i = ||grad_(x, y) c_i||`` at the (projected) starting point
    before the iteration; the feasible set is the same, but the descent-ascent step on
    ``(theta, lam)`` is stable for far larger ``eta`` (it needs ``eta < 2 a / (a^2 +
    ||grad_t c||^2)``, ``a = 1/gamma``, and the toy problem's coupled constraint has
    ``||grad c||^2 = 300``). Reported multipliers are those of the original constraints
    (``lam_i / s_i``); ``multiplier_bound`` applies to the scaled ones. The defaults
    (``alpha = eta = 0.2, beta = 3, gamma1 = gamma2 = 10, c0 = 10, p = 0.49``) reach relative error
    ``1e-3`` on ``x`` for the paper's toy problem within 1000 iterations (``tol = 1e-2`` on
    the scaled residual stops there after 1030 iterations at error ``7e-4``). The official toy
    script's values (``alpha=0.008, beta=0.02, eta=0.01, gamma=10, c0=0.025, p=0.3``,
    unscaled constraint) make ``lam`` oscillate between ``-r`` and ``r`` on that problem
    (the descent-ascent step is unstable), and the error never drops below 1; the theory
    needs ``p < 1/2``.

    Accuracy: for a fixed ``c`` the fixed point of the iteration is a stationary point of
    ``min F/c + f - v`` over ``C``, which is ``O(1/c)`` away from the bilevel solution
    (about ``0.3/c`` in relative error on the toy problem), so the accuracy improves only
    as ``c_k`` grows.

    Projections ``Proj_C`` (chosen by ``projection``):

    * ``"auto"``: a box when there are no constraint functions (exact clipping); otherwise
      every constraint function is tested for being affine in ``(x, y)``
      (:func:`~bilevel.constrained.feasible.affine_coefficients`, at the starting point):
      affine equalities without bounds use the exact closed form, as does a single affine
      inequality without bounds (a half-space); other affine sets use the dual L-BFGS-B
      polyhedral projection, non-affine sets ``"nonlinear"``;
    * ``"affine"``: as ``"auto"`` but raises if a constraint is not affine;
    * ``"nonlinear"``: SLSQP on ``min ||w - v||^2`` over ``C`` (a convex ``C`` is assumed);
    * a callable ``projection(x, y) -> (x, y)`` (e.g. a QP through cvxpy) for any convex
      ``C``; it replaces the built-in projection entirely.

    ``Proj_Y`` is a box (clipping). The starting point is projected onto ``C`` first; an
    empty ``C`` raises :class:`~bilevel.constrained.InfeasibleError` (the lower level is
    infeasible for every ``x``, or the upper constraints exclude all lower-feasible points).

    Stopping: ``state.residual`` is the norm of the fixed-point residual of the iteration
    (no hypergradient is formed: the history's ``hypergrad_norm`` is NaN),
    ``c_k ((x, y) - (x, y)^+)/alpha`` (scaled by ``c_k``: the ``(x, y)`` step is that of
    ``F / c_k + f - v``, whose unscaled residual shrinks like ``1 / c_k`` far from a
    solution), ``(theta - theta^+)/eta``, ``(lam - lam^+)/eta``,
    ``P1(y - theta)`` and ``P2(z - lam)`` (the last two vanish when ``y`` is its own
    proximal point, i.e. solves the lower level, and ``z`` is its multiplier), and
    :func:`bilevel.solve` stops when its norm is at most ``tol``. Iterates whose largest
    entry exceeds ``max_norm`` raise :class:`~bilevel.errors.DivergenceError` (status
    ``"diverged"``). :attr:`~bilevel.BilevelResult.info` holds ``theta``, the multipliers
    ``lam``/``z``, ``c_k``, the ``proximal_gap`` ``||y - theta||``, the constraint violation
    of ``(x, y)`` and the projection used; ``info["lower_level_solved"]`` is ``False`` when
    the ``proximal_gap`` exceeds ``gap_tol * (1 + ||y||)`` (``y`` is not a lower-level
    solution, e.g. for an unbounded lower level: ``theta`` then runs ahead of ``y`` and the
    residual never vanishes, so the run also ends with status ``"max_iterations"`` and a
    :class:`~bilevel.errors.ConvergenceWarning`).

    ``x`` and ``y`` must be tensors (any shape; multipliers are 1-D). Each iteration costs
    five gradient evaluations (``grad_calls``); no Hessians.

    Parameters
    ----------
    outer_step_size, inner_step_size, center_step_size:
        ``alpha`` (the ``(x, y)`` step), ``eta`` (the ``(theta, lam)`` step) and ``beta``
        (the ``z`` step).
    gamma1, gamma2:
        Proximal parameters of ``theta`` and ``lam`` (see ``gamma_convention``).
    c0, p:
        Penalty schedule ``c_k = c0 k^p`` (the theory asks ``0 < p < 1/2``; ``p = 0`` keeps
        ``c`` fixed).
    multiplier_bound:
        ``r`` in ``Z = [0, r]^{m_g} x [-r, r]^{m_h}``.
    normalize_constraints:
        Divide each lower constraint by its gradient norm at the start (see above).
    gamma_convention:
        ``"divide"`` or ``"multiply"`` (see above).
    projection:
        ``"auto"``, ``"affine"``, ``"nonlinear"`` or a callable (see above).
    lam0, z0:
        Initial multipliers and proximal centres (clipped to ``Z``; the official scripts
        start from ``lam0 = 1`` and ``z0 = 1`` or ``-1``).
    max_norm:
        Divergence threshold on ``|x|``, ``|y|``, ``|theta|``.
    gap_tol:
        Relative threshold on ``||y - theta||`` for ``info["lower_level_solved"]``.
    """

    outer_step_size: float = 0.2
    inner_step_size: float = 0.2
    center_step_size: float = 3.0
    gamma1: float = 10.0
    gamma2: float = 10.0
    c0: float = 10.0
    p: float = 0.49
    multiplier_bound: float = 1e3
    normalize_constraints: bool = True
    gamma_convention: str = "divide"
    projection: str | Projection = "auto"
    lam0: float = 0.0
    z0: float = 0.0
    max_norm: float = 1e10
    gap_tol: float = 1e-2
    name: str = field(default="lv-hba", init=False)
    handles_constraints = True

    def __post_init__(self) -> None:
        check_positive(
            "lv-hba",
            outer_step_size=self.outer_step_size,
            inner_step_size=self.inner_step_size,
            center_step_size=self.center_step_size,
            gamma1=self.gamma1,
            gamma2=self.gamma2,
            c0=self.c0,
            multiplier_bound=self.multiplier_bound,
            max_norm=self.max_norm,
            gap_tol=self.gap_tol,
        )
        check_positive("lv-hba", allow_zero=True, p=self.p)
        if self.gamma_convention not in ("divide", "multiply"):
            raise ValueError(
                f"lv-hba: gamma_convention must be 'divide' or 'multiply', got "
                f"{self.gamma_convention!r}"
            )
        if not callable(self.projection) and self.projection not in (
            "auto",
            "affine",
            "nonlinear",
        ):
            raise ValueError(
                "lv-hba: projection must be 'auto', 'affine', 'nonlinear' or a callable "
                f"(x, y) -> (x, y), got {self.projection!r}"
            )

    # ------------------------------------------------------------------ helpers
    def _prox(self, u: torch.Tensor, gamma: float) -> torch.Tensor:
        return u / gamma if self.gamma_convention == "divide" else gamma * u

    @staticmethod
    def _lower_constraints(
        rows: LowerConstraints, x: torch.Tensor, t: torch.Tensor, *, finite: bool = False
    ) -> torch.Tensor:
        """``c(x, t) = (g(x, t), h(x, t))`` (the bounds of ``y`` are a projection here, not
        rows); ``finite=True`` checks the values (not inside ``torch.func``)."""
        return torch.cat([rows.g(x, t, finite=finite), rows.eq(x, t, finite=finite)])

    def _setup_projection(self, problem: BilevelProblem, x: torch.Tensor, y: torch.Tensor):
        """Build ``Proj_C`` on the flat vector ``w = (x, y)``; returns ``(fn, kind)``."""
        nx = x.numel()
        xs, ys = x.shape, y.shape
        xlo, xhi = problem.bounds_like("x_bounds", x)
        ylo, yhi = problem.bounds_like("y_bounds", y)
        lower = torch.cat([xlo.flatten(), ylo.flatten()])
        upper = torch.cat([xhi.flatten(), yhi.flatten()])
        has_bounds = bool(torch.isfinite(lower).any() or torch.isfinite(upper).any())

        def split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return w[:nx].reshape(xs), w[nx:].reshape(ys)

        if callable(self.projection):
            user = self.projection

            def call_user(w: torch.Tensor) -> torch.Tensor:
                px, py = user(*split(w))
                if not (isinstance(px, torch.Tensor) and isinstance(py, torch.Tensor)):
                    raise TypeError("lv-hba: the projection callback must return (x, y) tensors")
                if px.shape != xs or py.shape != ys:
                    raise ValueError(
                        f"lv-hba: the projection callback returned shapes "
                        f"{tuple(px.shape)}, {tuple(py.shape)}; expected {tuple(xs)}, {tuple(ys)}"
                    )
                return torch.cat([px.flatten(), py.flatten()])

            return call_user, "callback"

        def make(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
            if getattr(problem, name) is None:
                return None

            def fn(w: torch.Tensor) -> torch.Tensor:
                value = getattr(problem, name)(*split(w))
                if value.dim() != 1:
                    raise ValueError(
                        f"BilevelProblem.{name} must return a 1-D tensor, got shape "
                        f"{tuple(value.shape)}"
                    )
                return value

            return fn

        ineq = [f for f in (make("lower_ineq"), make("upper_ineq")) if f is not None]
        eq = [f for f in (make("lower_eq"), make("upper_eq")) if f is not None]
        if not ineq and not eq:
            return (lambda w: project_box(w, lower, upper)), "box"

        def stack(fns: list) -> Callable[[torch.Tensor], torch.Tensor] | None:
            if not fns:
                return None
            return lambda w: torch.cat([f(w) for f in fns])

        g_all, h_all = stack(ineq), stack(eq)
        w0 = torch.cat([x.flatten(), y.flatten()])
        if self.projection != "nonlinear":
            gen = torch.Generator().manual_seed(0)
            aff_in = None if g_all is None else affine_coefficients(g_all, w0, generator=gen)
            aff_eq = None if h_all is None else affine_coefficients(h_all, w0, generator=gen)
            affine = (g_all is None or aff_in is not None) and (h_all is None or aff_eq is not None)
            if affine:
                if g_all is None and not has_bounds and aff_eq is not None:
                    A, c = aff_eq
                    return (lambda w: project_affine(w, A, c)), "affine"
                if h_all is None and not has_bounds and aff_in is not None and aff_in[0].shape[0] == 1:
                    a_row, b_val = aff_in[0][0], -aff_in[1][0]
                    return (lambda w: projection_halfspace(w, a_row, b_val)), "halfspace"
                A_in, c_in = aff_in if aff_in is not None else (None, None)
                A_eq, c_eq = aff_eq if aff_eq is not None else (None, None)
                dual: list[Any] = [None]

                def polyhedron(w: torch.Tensor) -> torch.Tensor:
                    res = project_polyhedron(
                        w,
                        A_eq=A_eq,
                        c_eq=c_eq,
                        A_in=A_in,
                        c_in=c_in,
                        lower=lower,
                        upper=upper,
                        dual0=dual[0],
                    )
                    dual[0] = (res.ineq_dual, res.eq_dual)
                    return res.w

                return polyhedron, "polyhedron"
            if self.projection == "affine":
                raise ValueError(
                    "lv-hba: projection='affine' but a constraint function is not affine in "
                    "(x, y); use projection='nonlinear' or a projection callback"
                )
        return (
            lambda w: project_nonlinear(
                w,
                eq=h_all,
                ineq=g_all,
                lower=lower if has_bounds else None,
                upper=upper if has_bounds else None,
            ),
            "nonlinear",
        )

    # ------------------------------------------------------------------ Method API
    def prepare(self, problem: BilevelProblem, x0: Any, y0: Any) -> _Context:
        """Checks the problem and builds ``Proj_C`` and the lower-level rows at the start."""
        if not (isinstance(x0, torch.Tensor) and isinstance(y0, torch.Tensor)):
            raise TypeError("lv-hba: x0 and y0 must be tensors (pytrees are not supported)")
        if problem.n_blocks is not None or problem.upper_data is not None:
            raise ValueError("lv-hba: multi-block and minibatch problems are not supported")
        if problem.lower_data is not None:
            raise ValueError("lv-hba: multi-block and minibatch problems are not supported")
        for name in ("upper_ineq", "upper_eq"):
            problem.constraint_value(name, x0, y0)  # shape/finiteness check
        rows = LowerConstraints(problem, x0, y0)
        project, kind = self._setup_projection(problem, x0, y0)
        return _Context(project=project, kind=kind, rows=rows)

    def init(
        self, problem: BilevelProblem, x0: Any, y0: Any, context: _Context | None = None
    ) -> MethodState:
        if context is None:
            context = self.prepare(problem, x0, y0)
        rows = context.rows
        sizes = (rows.n_g, rows.n_eq)
        ones = y0.new_ones(sum(sizes))
        project, kind = context.project, context.kind
        nx = x0.numel()
        w = project(torch.cat([x0.flatten(), y0.flatten()]))
        x, y = w[:nx].reshape(x0.shape).clone(), w[nx:].reshape(y0.shape).clone()
        ylo, yhi = problem.bounds_like("y_bounds", y)
        m_in, m_eq = sizes
        scale = ones
        if self.normalize_constraints and sum(sizes) > 0:
            nx = x.numel()
            jac = jacobian(
                lambda w: self._lower_constraints(
                    rows, w[:nx].reshape(x.shape), w[nx:].reshape(y.shape)
                ),
                torch.cat([x.flatten(), y.flatten()]),
            )
            norms = torch.linalg.vector_norm(jac, dim=1)
            scale = torch.where(norms > 0, norms, ones).detach()
        r = self.multiplier_bound
        zlo = torch.cat([y.new_zeros(m_in), y.new_full((m_eq,), -r)])
        zhi = y.new_full((m_in + m_eq,), r)
        lam = project_box(y.new_full((m_in + m_eq,), self.lam0), zlo, zhi)
        z = project_box(y.new_full((m_in + m_eq,), self.z0), zlo, zhi)
        extra = {
            "theta": project_box(y.clone(), ylo, yhi),
            "lam": lam,
            "z": z,
            "sizes": sizes,
            "scale": scale,
            "projection_kind": kind,
            "_zbox": (zlo, zhi),
            "_ybox": (ylo, yhi),
            "c_k": self.c0,
        }
        return MethodState(x=x, y=y, extra=extra, context=context)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        x, y, ex = state.x, state.y, state.extra
        theta, lam, z = ex["theta"], ex["lam"], ex["z"]
        zlo, zhi = ex["_zbox"]
        ylo, yhi = ex["_ybox"]
        scale = ex["scale"]
        context = state.context
        if context is None:  # a state unpickled outside the driver
            raise RuntimeError(
                "lv-hba: the state has no context (it is rebuilt by bilevel.solve on resume); "
                "set state.context = method.prepare(problem, x0, y0)"
            )
        rows = context.rows
        c_k = self.c0 * float(iteration) ** self.p

        def lagrangian_grad(
            x_: torch.Tensor, t_: torch.Tensor, l_: torch.Tensor, wrt_x: bool
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """Gradient of ``f + l^T c`` w.r.t. ``t`` (or ``x``) and the scaled ``c(x, t)``."""
            with torch.enable_grad():
                x_ = x_.detach().requires_grad_(wrt_x)
                t_ = t_.detach().requires_grad_(not wrt_x)
                c = self._lower_constraints(rows, x_, t_, finite=True) / scale
                value = problem.lower_value(x_, t_) + torch.dot(l_, c)
                grad = None
                if value.requires_grad:
                    (grad,) = torch.autograd.grad(value, x_ if wrt_x else t_, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(x_ if wrt_x else t_)
            return grad, c.detach()

        def both_grads(fn: Callable, x_: torch.Tensor, y_: torch.Tensor) -> tuple:
            with torch.enable_grad():
                xs, ys = x_.detach().requires_grad_(), y_.detach().requires_grad_()
                value = fn(xs, ys)
                gx = gy = None
                if value.requires_grad:
                    gx, gy = torch.autograd.grad(value, (xs, ys), allow_unused=True)
            return (
                torch.zeros_like(x_) if gx is None else gx,
                torch.zeros_like(y_) if gy is None else gy,
            )

        # (theta, lam): one projected gradient descent-ascent step
        g_theta, c_theta = lagrangian_grad(x, theta, lam, wrt_x=False)
        d_theta = g_theta + self._prox(theta - y, self.gamma1)
        d_lam = -c_theta + self._prox(lam - z, self.gamma2)
        theta_new = project_box(theta - self.inner_step_size * d_theta, ylo, yhi)
        lam_new = project_box(lam - self.inner_step_size * d_lam, zlo, zhi)

        # (x, y, z): projected gradient step on F / c_k + f - v
        gFx, gFy = both_grads(problem.upper_value, x, y)
        gfx, gfy = both_grads(problem.lower_value, x, y)
        gLx, _ = lagrangian_grad(x, theta_new, lam_new, wrt_x=True)
        d_x = gFx / c_k + gfx - gLx
        d_y = gFy / c_k + gfy - self._prox(y - theta_new, self.gamma1)
        d_z = self._prox(z - lam_new, self.gamma2)
        nx = x.numel()
        w = torch.cat(
            [(x - self.outer_step_size * d_x).flatten(), (y - self.outer_step_size * d_y).flatten()]
        )
        try:
            w = context.project(w)
        except InfeasibleError as err:
            raise DivergenceError(f"projection onto the feasible set failed: {err}") from err
        x_new, y_new = w[:nx].reshape(x.shape), w[nx:].reshape(y.shape)
        z_new = project_box(z - self.center_step_size * d_z, zlo, zhi)

        for name, t in (("x", x_new), ("y", y_new), ("theta", theta_new)):
            if not bool(torch.isfinite(t).all()):
                raise DivergenceError(f"lv-hba: {name} became NaN or infinite")
            if t.numel() and float(t.abs().max()) > self.max_norm:
                raise DivergenceError(
                    f"lv-hba: |{name}| exceeded max_norm = {self.max_norm:.1e} (unbounded "
                    "lower level or step sizes too large?)"
                )
        residual = torch.cat(
            [
                # scaled by c_k: the (x, y) step is that of F / c_k + (f - v), so an unscaled
                # residual shrinks like 1 / c_k far from a solution
                (x - x_new).flatten() * (c_k / self.outer_step_size),
                (y - y_new).flatten() * (c_k / self.outer_step_size),
                (theta - theta_new).flatten() / self.inner_step_size,
                (lam - lam_new) / self.inner_step_size,
                self._prox(y_new - theta_new, self.gamma1).flatten(),
                self._prox(z_new - lam_new, self.gamma2),
            ]
        )
        ex.update(theta=theta_new, lam=lam_new, z=z_new, c_k=c_k)
        state.x, state.y = x_new, y_new
        state.residual = float(torch.linalg.vector_norm(residual))
        state.grad_calls += 5
        return state

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        ex = state.extra
        x, y, theta = state.x, state.y, ex["theta"]
        gap = float(torch.linalg.vector_norm(y - theta))
        violation = 0.0
        for name in ("lower_ineq", "upper_ineq", "lower_eq", "upper_eq"):
            value = problem.constraint_value(name, x, y)
            if value is None or value.numel() == 0:
                continue
            v = value.clamp(min=0) if name.endswith("ineq") else value.abs()
            violation = max(violation, float(v.max()))
        for name, var in (("x_bounds", x), ("y_bounds", y)):
            lo, hi = problem.bounds_like(name, var)
            if var.numel():
                violation = max(violation, float((lo - var).clamp(min=0).max()))
                violation = max(violation, float((var - hi).clamp(min=0).max()))
        m_in = ex["sizes"][0]
        lam = ex["lam"] / ex["scale"]
        solved = math.isfinite(gap) and gap <= self.gap_tol * (
            1.0 + float(torch.linalg.vector_norm(y))
        )
        return {
            "theta": theta,
            "ineq_multipliers": lam[:m_in],
            "eq_multipliers": lam[m_in:],
            "z": ex["z"] / ex["scale"],
            "constraint_scale": ex["scale"],
            "c_k": ex["c_k"],
            "proximal_gap": gap,
            "lower_level_solved": solved,
            "constraint_violation": violation,
            "projection": ex["projection_kind"],
        }
