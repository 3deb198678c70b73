"""Default step sizes: smoothness constants measured at the starting point.

Every step size an outer algorithm leaves at ``None`` (the default) is set when the run
starts, from constants estimated at ``(x0, y0)`` by :func:`calibrate`:

* ``L_y >= mu_y``: the extreme eigenvalues of ``H = d2_yy [w F + f](x0, y0)`` (``w = 0``
  for the lower objective itself, ``w > 0`` for the penalised objectives of the
  first-order methods), by Lanczos (:func:`bilevel.linalg.lanczos`) with ``min(dim y, 20)``
  products; ``L_y`` is the largest eigenvalue in absolute value (the smoothness constant
  of ``f(x0, .)`` near ``y0``), ``mu_y`` the smallest eigenvalue (negative when ``y0`` is
  not a local minimum).
* ``L_h`` (only when a method needs it): the largest absolute eigenvalue of the Hessian of
  ``h(x) = F(x, y*(x))`` at ``x0``, by Lanczos with ``min(dim x, 10)`` steps on central
  differences of hypergradients, ``(grad h(x0 + delta u) - grad h(x0 - delta u)) /
  (2 delta)``, ``delta = eps^(1/3) max(1, ||x0||)``. Each hypergradient
  ``grad_x F - B v`` (``B = d2_xy f``, ``H v = grad_y F`` solved by CG to ``1e-10``) is
  taken at an inner solution reached by gradient descent with step ``1 / L_y``, run
  until the gradient has dropped by ``1e-8`` (at ``x0``, from ``y0``) or ``1e-6`` (at the
  perturbed points, warm started from ``y*(x0)``), at most 500 steps each.

Products are exact (reverse-over-reverse autograd, counted in ``hvp_calls``) for the
methods that use second derivatives anyway, and central differences of gradients,
``H u ~ (grad(p + e u) - grad(p - e u)) / (2 e)`` (``e = eps^(1/3) max(1, ||p||) /
||u||``, two ``grad_calls``), for the Hessian-free ones, which therefore never call a
Hessian-vector product. On a quadratic problem both are exact up to rounding.

With minibatches (``upper_data``/``lower_data``), the first minibatch of each level is
used throughout, and ``L_y`` is the largest over the first three lower minibatches (an
estimate of the smoothness of the sampled functions, which the stochastic steps need).
The calibration's oracle calls are reported in ``result.info["step_sizes"]["calibration"]``,
apart from the run's ``grad_calls``/``hvp_calls`` (which count the iterations' work).
All of these are estimates at one point: for an objective whose curvature grows away from
``(x0, y0)`` pass explicit step sizes (or the deterministic methods' line search adapts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bilevel.hypergrad._oracles import Linearisation, grad, track
from bilevel.linalg import cg, hessian_matvec, lanczos
from bilevel.problem import BilevelProblem
from bilevel.tree import (
    PyTree,
    tree_axpy,
    tree_map,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_unflatten,
)

Scalar = Callable[[PyTree], torch.Tensor]

#: Lanczos steps for the lower Hessian and for the Hessian of h.
LOWER_STEPS = 20
OUTER_STEPS = 10
#: Inner gradient-descent budget of each accurate inner solve during the calibration.
INNER_BUDGET = 500


@dataclass(frozen=True)
class Calibration:
    """Constants measured by :func:`calibrate` (see the module docstring).

    Attributes
    ----------
    lower_max, lower_min:
        ``L_y`` (largest absolute eigenvalue) and ``mu_y`` (smallest eigenvalue) of the
        lower Hessian (of ``w F + f``) at ``(x0, y0)``.
    outer_max:
        ``L_h``, or ``None`` when not requested.
    gradient_norm:
        ``||grad h(x0)||`` (``None`` when ``L_h`` was not requested).
    penalised_max:
        ``l_gamma``, the largest absolute eigenvalue of the Hessian in ``(x, y)`` of the
        value-function penalty ``F + gamma (f(x, y) - min_z f(x, z))`` at ``(x0, y0)``
        (``joint_penalty=gamma``), by Lanczos (20 steps) on central differences of its
        gradient; ``None`` when not requested.
    grad_calls, hvp_calls:
        Oracle calls the calibration made.
    """

    lower_max: float
    lower_min: float
    outer_max: float | None = None
    gradient_norm: float | None = None
    penalised_max: float | None = None
    grad_calls: int = 0
    hvp_calls: int = 0

    @property
    def lower_condition(self) -> float:
        """``L_y / mu_y`` (``inf`` when ``mu_y <= 0``)."""
        return self.lower_max / self.lower_min if self.lower_min > 0 else math.inf

    @property
    def inner_step(self) -> float:
        """``1 / L_y``: gradient descent on ``f(x, .)`` contracts by ``1 - mu_y / L_y`` per
        step, with a factor-two margin against an underestimated ``L_y``."""
        return 1.0 / self.lower_max

    def outer_step(self) -> float:
        """``1 / L_h`` (``L_h`` must have been requested)."""
        if self.outer_max is None:
            raise RuntimeError("the calibration did not estimate L_h")
        return 1.0 / self.outer_max

    def tracking_step(self, rho: float, ratio: float = 1.0) -> float:
        """``ratio * rho mu_y / L_h`` (``mu_y`` floored at ``1e-3 L_y``): the outer step of
        a single-loop method whose inner variables contract by ``1 - rho mu_y`` per
        iteration, so that they track their moving targets (see
        :class:`~bilevel.methods.SOBA`)."""
        mu = max(self.lower_min, 1e-3 * self.lower_max)
        return ratio * rho * mu * self.outer_step()


class Oracle:
    """Gradients and Hessian-vector products of scalar functions of pytrees: exact
    (``exact=True``, reverse over reverse) or by central differences of gradients; counts
    its calls."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.grad_calls = 0
        self.hvp_calls = 0

    def grad(self, fn: Scalar, point: PyTree) -> PyTree:
        self.grad_calls += 1
        with torch.enable_grad():
            tracked, leaves, spec = track(point)
            return tree_unflatten(grad(fn(tracked), leaves), spec)

    def hessian(self, fn: Scalar, point: PyTree) -> Callable[[PyTree], PyTree]:
        """``u -> d2 fn(point) u``; exact products reuse one linearisation of the gradient
        (:func:`bilevel.linalg.hessian_matvec`)."""
        if not self.exact:
            return lambda u: self.difference(lambda p: self.grad(fn, p), point, u)
        matvec = hessian_matvec(fn, point)

        def product(u: PyTree) -> PyTree:
            self.hvp_calls += 1
            return matvec(u)

        return product

    def difference(self, grad_map: Callable[[PyTree], PyTree], point: PyTree, u: PyTree) -> PyTree:
        """``(g(p + e u) - g(p - e u)) / (2 e)``, ``e = eps^(1/3) max(1, ||p||) / ||u||``."""
        norm_u = float(tree_norm(u))
        if norm_u == 0.0:
            return tree_map(torch.zeros_like, grad_map(point))
        e = fd_step(point) / norm_u
        plus = grad_map(tree_axpy(e, u, point))
        minus = grad_map(tree_axpy(-e, u, point))
        return tree_scale(0.5 / e, tree_sub(plus, minus))


def fd_step(point: PyTree) -> float:
    """``eps^(1/3) max(1, ||point||)`` for the dtype of ``point`` (central differences)."""
    leaf = torch.utils._pytree.tree_leaves(point)[0]
    return torch.finfo(leaf.dtype).eps ** (1.0 / 3.0) * max(1.0, float(tree_norm(point)))


def _first(data: Any, count: int) -> list[Any]:
    """The first ``count`` minibatches of ``data`` (``[None]`` for a deterministic level)."""
    if data is None:
        return [None]
    batches = list(itertools.islice(iter(data), count))
    if not batches:
        raise ValueError("the problem's data yields no minibatch")
    return batches


def lower_spectrum(
    problem: BilevelProblem,
    x: PyTree,
    y: PyTree,
    oracle: Oracle,
    *,
    upper_weight: float = 0.0,
    batches: tuple[Any, Any] = (None, None),
) -> tuple[float, float]:
    """``(L, mu)``: largest absolute and smallest eigenvalue of ``d2_yy [w F + f](x, y)``."""
    upper_batch, lower_batch = batches

    def fn(y_: PyTree) -> torch.Tensor:
        value = problem.lower_value(x, y_, lower_batch)
        if upper_weight:
            value = value + upper_weight * problem.upper_value(x, y_, upper_batch)
        return value

    spectrum = lanczos(oracle.hessian(fn, y), y, steps=LOWER_STEPS)
    return max(abs(spectrum.smallest), abs(spectrum.largest)), spectrum.smallest


class _Hypergradient:
    """``x -> grad h(x)`` at accurate inner solutions, warm started (for the calibration)."""

    def __init__(
        self, problem: BilevelProblem, oracle: Oracle, step: float, batches: tuple[Any, Any]
    ) -> None:
        self.problem, self.oracle, self.step = problem, oracle, step
        self.upper_batch, self.lower_batch = batches
        self.y_star: PyTree | None = None

    def lower_fn(self, x: PyTree) -> Scalar:
        return lambda y_: self.problem.lower_value(x, y_, self.lower_batch)

    def solve_inner(self, x: PyTree, y: PyTree, reduction: float) -> PyTree:
        """Gradient descent on ``f(x, .)`` until ``||grad|| <= reduction * ||grad(y)||``."""
        fn = self.lower_fn(x)
        grad = self.oracle.grad(fn, y)
        target = reduction * float(tree_norm(grad))
        for _ in range(INNER_BUDGET):
            if not float(tree_norm(grad)) > target:
                break
            y = tree_axpy(-self.step, grad, y)
            grad = self.oracle.grad(fn, y)
        return y

    def __call__(self, x: PyTree, y: PyTree) -> PyTree:
        problem, oracle = self.problem, self.oracle
        gx_F, gy_F = oracle.grad(
            lambda p: problem.upper_value(p[0], p[1], self.upper_batch), (x, y)
        )
        fn = self.lower_fn(x)
        n_y = sum(leaf.numel() for leaf in torch.utils._pytree.tree_leaves(y))
        v, _ = cg(oracle.hessian(fn, y), gy_F, tol=1e-10, maxiter=max(2 * n_y, 20), warn=False)
        return tree_sub(gx_F, self.cross(x, y, v))

    def cross(self, x: PyTree, y: PyTree, v: PyTree) -> PyTree:
        """``B v = d/dx <grad_y f(x, y), v>``."""
        problem, oracle = self.problem, self.oracle
        if oracle.exact:
            oracle.hvp_calls += 1
            return Linearisation(problem, x, y, self.lower_batch).cross(v)
        return oracle.difference(
            lambda y_: oracle.grad(lambda x_: problem.lower_value(x_, y_, self.lower_batch), x),
            y,
            v,
        )


def calibrate(
    problem: BilevelProblem,
    x0: PyTree,
    y0: PyTree,
    *,
    exact: bool = True,
    outer: bool = True,
    upper_weight: float = 0.0,
    joint_penalty: float | None = None,
) -> Calibration:
    """Measure ``L_y``, ``mu_y``, (``outer=True``) ``L_h`` and (``joint_penalty=gamma``)
    ``l_gamma`` at ``(x0, y0)`` (see the module docstring and :class:`Calibration`);
    ``exact=False`` uses gradient differences instead of Hessian-vector products,
    ``upper_weight = w`` measures ``d2_yy [w F + f]``."""
    oracle = Oracle(exact)
    x0 = tree_map(torch.Tensor.detach, x0)
    y0 = tree_map(torch.Tensor.detach, y0)
    upper_batch = _first(problem.upper_data, 1)[0]
    lower_batches = _first(problem.lower_data, 3)
    lower_max, lower_min = -math.inf, math.inf
    for lower_batch in lower_batches:
        big, small = lower_spectrum(
            problem, x0, y0, oracle, upper_weight=upper_weight, batches=(upper_batch, lower_batch)
        )
        lower_max, lower_min = max(lower_max, big), min(lower_min, small)
    if not (math.isfinite(lower_max) and lower_max > 0):
        raise ValueError(
            "cannot choose default step sizes: the lower-level Hessian d2_yy f(x0, y0) is "
            f"zero or not finite (largest |eigenvalue| {lower_max:.3e}); pass the step "
            "sizes explicitly"
        )
    if not outer and joint_penalty is None:
        return Calibration(
            lower_max, lower_min, grad_calls=oracle.grad_calls, hvp_calls=oracle.hvp_calls
        )
    hypergrad = _Hypergradient(problem, oracle, 1.0 / lower_max, (upper_batch, lower_batches[0]))
    y_star = hypergrad.solve_inner(x0, y0, 1e-8)
    penalised_max = None
    if joint_penalty is not None:
        penalised_max = _penalised_curvature(hypergrad, x0, y0, y_star, joint_penalty)
    if not outer:
        return Calibration(
            lower_max,
            lower_min,
            penalised_max=penalised_max,
            grad_calls=oracle.grad_calls,
            hvp_calls=oracle.hvp_calls,
        )
    g0 = hypergrad(x0, y_star)

    def grad_h(x: PyTree) -> PyTree:
        return hypergrad(x, hypergrad.solve_inner(x, y_star, 1e-6))

    spectrum = lanczos(lambda u: oracle.difference(grad_h, x0, u), x0, steps=OUTER_STEPS)
    outer_max = max(abs(spectrum.smallest), abs(spectrum.largest))
    gradient_norm = float(tree_norm(g0))
    if not (math.isfinite(outer_max) and outer_max > 0):
        # h is flat (to rounding) along every probed direction: a step that moves x by its
        # own scale, or by one unit, along the gradient
        scale = max(1.0, float(tree_norm(x0)))
        outer_max = gradient_norm / scale if gradient_norm > 0 else 1.0
    return Calibration(
        lower_max,
        lower_min,
        outer_max,
        gradient_norm,
        penalised_max,
        oracle.grad_calls,
        oracle.hvp_calls,
    )


def _penalised_curvature(
    hypergrad: _Hypergradient, x0: PyTree, y0: PyTree, y_star: PyTree, gamma: float
) -> float:
    """``l_gamma`` (see :class:`Calibration`), by Lanczos on differences of the gradient
    ``(grad_x F + gamma (grad_x f(x, y) - grad_x f(x, y*(x))), grad_y F + gamma grad_y f)``."""
    problem, oracle = hypergrad.problem, hypergrad.oracle
    ub, lb = hypergrad.upper_batch, hypergrad.lower_batch

    def gradient(w: tuple[PyTree, PyTree]) -> tuple[PyTree, PyTree]:
        x, y = w
        solution = hypergrad.solve_inner(x, y_star, 1e-6)
        gx_F, gy_F = oracle.grad(lambda p: problem.upper_value(p[0], p[1], ub), (x, y))
        gx_f, gy_f = oracle.grad(lambda p: problem.lower_value(p[0], p[1], lb), (x, y))
        gx_v = oracle.grad(lambda x_: problem.lower_value(x_, solution, lb), x)
        return (
            tree_axpy(gamma, tree_sub(gx_f, gx_v), gx_F),
            tree_axpy(gamma, gy_f, gy_F),
        )

    w0 = (x0, y0)
    spectrum = lanczos(lambda u: oracle.difference(gradient, w0, u), w0, steps=LOWER_STEPS)
    return max(abs(spectrum.smallest), abs(spectrum.largest))


# ----------------------------------------------------------------------------- per run


def calibrate_into(
    state: Any, problem: BilevelProblem, x0: PyTree, y0: PyTree, **options: Any
) -> Calibration:
    """:func:`calibrate`, kept in ``state.extra["calibration"]``. Its oracle calls are
    reported there (and in ``result.info["step_sizes"]["calibration"]``), apart from the
    algorithm's ``grad_calls``/``hvp_calls``, which count the iterations' work."""
    cal = calibrate(problem, x0, y0, **options)
    state.extra["calibration"] = cal
    return cal


def resolve_steps(
    method: Any,
    problem: BilevelProblem,
    state: Any,
    outer_rule: Callable[[Calibration, float], float],
    **options: Any,
) -> None:
    """``state.extra["steps"] = {"inner_step_size": beta, "outer_step_size": alpha}`` for a
    method with these two fields: each the method's own, or where it is ``None`` measured
    at ``(state.x, state.y)`` by :func:`calibrate` (``options``: its keywords), ``beta =
    1 / L`` and ``alpha = outer_rule(calibration, beta)``."""
    inner, outer = method.inner_step_size, method.outer_step_size
    if inner is None or outer is None:
        cal = calibrate_into(state, problem, state.x, state.y, outer=outer is None, **options)
        inner = cal.inner_step if inner is None else inner
        outer = outer_rule(cal, inner) if outer is None else outer
    state.extra["steps"] = {"inner_step_size": inner, "outer_step_size": outer}


def run_steps(method: Any, state: Any | None, *fields: str) -> tuple[Any, ...]:
    """The values of ``fields`` for this run: ``state.extra["steps"]`` (set by the method's
    ``init``, measured where the field is ``None``), or the method's own field without a
    state or for a state saved by an older version."""
    steps = {} if state is None else state.extra.get("steps", {})
    return tuple(steps[what] if what in steps else getattr(method, what) for what in fields)


def step_info(state: Any) -> dict[str, Any]:
    """``{"step_sizes": ...}`` for :attr:`~bilevel.BilevelResult.info`: the steps used and,
    when some were chosen automatically, the measured constants and the line-search
    record."""
    steps = dict(state.extra.get("steps", {}))
    cal = state.extra.get("calibration")
    search = state.extra.get("line_search")
    if search is not None:
        steps["line_search"] = {
            "last_step": search.step,
            "trials": search.trials,
            "failures": search.failures,
        }
    if cal is not None:
        steps["calibration"] = {
            "lower_max": cal.lower_max,
            "lower_min": cal.lower_min,
            "outer_max": cal.outer_max,
            "penalised_max": cal.penalised_max,
            "grad_calls": cal.grad_calls + state.extra.get("remeasure_calls", (0, 0))[0],
            "hvp_calls": cal.hvp_calls + state.extra.get("remeasure_calls", (0, 0))[1],
        }
    return {"step_sizes": steps} if steps else {}


def remeasure_inner_step(method: Any, problem: BilevelProblem, state: Any) -> None:
    """After ``y`` moved to a region of different curvature (an escape from a lower-level
    saddle), measure ``L_y`` again at ``(x, y)`` and shrink an automatic
    ``inner_step_size`` to ``1 / L_y`` if that is smaller (explicit steps are kept)."""
    steps = state.extra.get("steps")
    if not steps or "inner_step_size" not in steps:
        return
    if getattr(method, "inner_step_size", 0.0) is not None:
        return
    oracle = Oracle(exact=not getattr(method, "hessian_free", False))
    batches = (_first(problem.upper_data, 1)[0], _first(problem.lower_data, 1)[0])
    big, _ = lower_spectrum(problem, state.x, state.y, oracle, batches=batches)
    grads, hvps = state.extra.get("remeasure_calls", (0, 0))
    state.extra["remeasure_calls"] = (grads + oracle.grad_calls, hvps + oracle.hvp_calls)
    if big > 0 and 1.0 / big < steps["inner_step_size"]:
        steps["inner_step_size"] = 1.0 / big
