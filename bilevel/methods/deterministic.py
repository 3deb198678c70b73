"""Deterministic double-loop methods: AID and ITD (Ji, Yang and Liang, ICML 2021).

Default step sizes
------------------
Both methods take ``inner_step_size=None`` and ``outer_step_size=None`` by default:

* the inner step is ``beta = 1 / L_y``, ``L_y`` the largest eigenvalue of
  ``d2_yy f(x0, y0)`` measured by Lanczos (:mod:`bilevel.methods._defaults`);
* the outer step is adaptive: Barzilai-Borwein trial steps with a nonmonotone Armijo
  backtracking (:mod:`bilevel.methods._linesearch`), started at ``1 / L_h`` (``L_h``, the
  curvature of ``h`` at ``x0``, also measured at the start). The merit function is, for
  ITD, exactly the function it differentiates, ``F(x, y_T(x))``; for AID the Lagrangian
  ``F(x, y) - <v, grad_y f(x, y)>`` (``v`` the current solution of ``H v = grad_y F``),
  which is ``h(x)`` up to ``O(||y - y*(x)||^2)`` where ``F(x, y)`` alone errs by
  ``O(||y - y*(x)||)``: the test stays reliable near the solution, where the inner
  solution is only as accurate as ``T`` warm-started steps make it.

Explicit step sizes give the constant-step iterations of the paper, exactly as before.
``result.info["step_sizes"]`` records the steps taken, the measured constants and the
calibration's oracle calls (which ``grad_calls``/``hvp_calls``, counting the iterations'
work, leave out); the line search's evaluations are counted in ``grad_calls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bilevel.hypergrad import implicit, neumann, unrolled
from bilevel.hypergrad._oracles import lower_grad
from bilevel.methods._base import Method, MethodState, require_finite
from bilevel.methods._defaults import Calibration, calibrate_into, run_steps, step_info
from bilevel.methods._linesearch import LineSearch
from bilevel.methods._validation import check_count, check_step_sizes
from bilevel.problem import BilevelProblem
from bilevel.tree import PyTree, tree_axpy, tree_vdot

#: ITD's automatic number of inner steps makes the truncation factor (1 - mu/L)^T of its
#: Jacobian at most this, within [ITD_MIN_STEPS, ITD_MAX_STEPS].
ITD_TRUNCATION = 1e-6
ITD_MIN_STEPS, ITD_MAX_STEPS = 10, 100


def inner_gradient_steps(
    problem: BilevelProblem, x: PyTree, y: PyTree, steps: int, step_size: float, batch: Any = None
) -> PyTree:
    """``steps`` gradient-descent steps ``y <- y - beta grad_y f(x, y)`` (no tracking)."""
    for _ in range(steps):
        y = tree_axpy(-step_size, lower_grad(problem, x, y, batch), y)
    return y


@dataclass
class AID(Method):
    """Approximate implicit differentiation, double loop (AID-CG / AID-FP).

    Outer iteration ``k``::

        y_k   = GD^T(f(x_k, .), y_{k-1})                 T = inner_steps, step beta
        v_k  ~= H^{-1} grad_y F(x_k, y_k)                CG warm-started at v_{k-1}
                                                          (linear_solver="cg"), or
                                                          the Neumann series (="neumann")
        x_{k+1} = x_k - alpha (grad_x F - B v_k)         H = d2_yy f, B = d2_xy f

    Defaults follow the deterministic experiments of Ji, Yang and Liang (2021): ``T = 10``
    inner steps, ``Q = 10`` linear-solver iterations. Explicit step sizes must suit the
    problem: ``beta < 2 / L_y``, ``alpha <= 1 / L_h``. Left at ``None`` (the default),
    ``beta = 1 / L_y`` is measured at ``(x0, y0)`` and ``alpha`` is chosen at every
    iteration by the line search of the module docstring; then one iteration is::

        g_k = grad_x F - B v_k at (x_k, y_k)               (y_k: T steps at x_k, done)
        x_{k+1} = x_k - a_k g_k,  y_{k+1} = GD^T(f(x_{k+1}, .), y_k)   (a_k: line search)

    the inner steps of each accepted trial being those of the next iteration.
    """

    inner_steps: int = 10
    inner_step_size: float | None = None
    outer_step_size: float | None = None
    linear_solver: str = "cg"
    linear_steps: int = 10
    name: str = field(default="aid", init=False)

    def __post_init__(self) -> None:
        check_step_sizes(
            self.name, inner_step_size=self.inner_step_size, outer_step_size=self.outer_step_size
        )
        check_count(self.name, 0, inner_steps=self.inner_steps, linear_steps=self.linear_steps)

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        return _init(self, problem, x0, y0)

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        beta, alpha = run_steps(self, state, "inner_step_size", "outer_step_size")
        x, y = state.x, state.y
        if not state.extra.pop("inner_done", False):  # the line search did them already
            y = inner_gradient_steps(problem, x, y, self.inner_steps, beta)
            require_finite(y, "the inner variable y")
            state.grad_calls += self.inner_steps
        if self.linear_solver == "neumann":
            est = neumann(problem, x, y, steps=self.linear_steps, step_size=beta)
        else:
            est = implicit(
                problem,
                x,
                y,
                solve=self.linear_solver,
                init=state.extra.get("v"),
                maxiter=self.linear_steps,
                tol=0.0,
                warn=False,
            )
            assert est.aux is not None  # implicit() always reports its adjoint v
            state.extra["v"] = est.aux["v"]
        state.hypergrad = est.grad
        state.grad_calls += est.grad_calls
        state.hvp_calls += est.hvp_calls
        if "line_search" not in state.extra:
            state.x = tree_axpy(-alpha, est.grad, x)
            state.y = y
            return state
        assert est.aux is not None  # both estimators report their adjoint v
        v = est.aux["v"]  # H v = grad_y F

        def lagrangian(x_: PyTree, y_: PyTree) -> float:
            state.grad_calls += 1
            return float(
                problem.upper_value(x_, y_) - tree_vdot(v, lower_grad(problem, x_, y_, None))
            )

        def evaluate(x_trial: PyTree) -> tuple[float, PyTree]:
            y_trial = inner_gradient_steps(problem, x_trial, y, self.inner_steps, beta)
            state.grad_calls += self.inner_steps
            return _finite(lambda: lagrangian(x_trial, y_trial)), y_trial

        merit = lagrangian(x, y)
        state.x, state.y = state.extra["line_search"].search(x, est.grad, merit, evaluate)
        require_finite(state.y, "the inner variable y")
        state.extra["inner_done"] = True
        return state


@dataclass
class ITD(Method):
    """Iterative differentiation, double loop (reverse mode through the inner loop).

    Outer iteration ``k``::

        y_T(x_k)  = GD^T(f(x_k, .), y_{k-1})             differentiable in x_k
        x_{k+1}   = x_k - alpha d/dx F(x, y_T(x)) |_{x_k}

    with ``truncate = K`` to differentiate only the last ``K`` inner steps. Memory grows
    with the differentiated steps. Defaults: ``T = 10`` as in Ji, Yang and Liang (2021)
    when ``inner_step_size`` is given. Left at ``None`` (the default), ``beta = 1 / L_y``
    is measured at ``(x0, y0)`` (module docstring) and, unless ``inner_steps`` is given,
    ``T`` is chosen so that the Jacobian of ``y_T`` is truncated by at most
    ``(1 - mu_y / L_y)^T <= 1e-6`` (``T = 35`` for ``L_y / mu_y = 3``; between 10 and
    100, and 10 when ``mu_y <= 0``): ITD's fixed point then differs from the bilevel
    solution by that factor only. ``outer_step_size=None`` uses the line search of the
    module docstring on ``phi_k(x) = F(x, y_T(x))`` (``y_T`` started from ``y_k``), whose
    gradient ITD computes exactly, with ``y_{k+1} = y_T(x_{k+1})``.
    """

    inner_steps: int | None = None
    inner_step_size: float | None = None
    outer_step_size: float | None = None
    truncate: int | None = None
    name: str = field(default="itd", init=False)

    def __post_init__(self) -> None:
        check_step_sizes(
            self.name, inner_step_size=self.inner_step_size, outer_step_size=self.outer_step_size
        )
        if self.inner_steps is not None:
            check_count(self.name, 0, inner_steps=self.inner_steps)

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        return _init(self, problem, x0, y0)

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        require_finite(state.x, "the outer variable x")
        T, beta, alpha = run_steps(self, state, "inner_steps", "inner_step_size", "outer_step_size")
        T = 10 if T is None else T  # a state saved before T could be chosen automatically
        est = unrolled(problem, state.x, state.y, steps=T, step_size=beta, truncate=self.truncate)
        state.grad_calls += est.grad_calls
        state.hvp_calls += est.hvp_calls
        state.hypergrad = est.grad
        if "line_search" not in state.extra:
            state.x = tree_axpy(-alpha, est.grad, state.x)
            state.y = est.y
            return state
        y_start = state.y

        def evaluate(x_trial: PyTree) -> tuple[float, PyTree]:
            y_trial = inner_gradient_steps(problem, x_trial, y_start, T, beta)
            state.grad_calls += T + 1
            return _finite(lambda: float(problem.upper_value(x_trial, y_trial))), y_trial

        merit = float(problem.upper_value(state.x, est.y))
        state.x, state.y = state.extra["line_search"].search(state.x, est.grad, merit, evaluate)
        require_finite(state.y, "the inner variable y")
        return state


# ----------------------------------------------------------------------------- shared


def _finite(value: Any) -> float:
    """``value()``, or ``inf`` when the trial point makes it non-finite or overflow."""
    try:
        out = value()
    except (FloatingPointError, OverflowError):
        return math.inf
    return out if math.isfinite(out) else math.inf


def _init(method: AID | ITD, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
    """The state, with the step sizes (measured where ``None``) in ``extra["steps"]``."""
    state = MethodState(x=x0, y=y0)
    steps: dict[str, Any] = {
        "inner_step_size": method.inner_step_size,
        "outer_step_size": method.outer_step_size,
    }
    if isinstance(method, ITD):
        steps["inner_steps"] = method.inner_steps
    if method.inner_step_size is None or method.outer_step_size is None:
        cal = calibrate_into(state, problem, x0, y0, outer=method.outer_step_size is None)
        if method.inner_step_size is None:
            steps["inner_step_size"] = cal.inner_step
        if method.outer_step_size is None:
            state.extra["line_search"] = LineSearch(initial=cal.outer_step())
    if isinstance(method, ITD) and steps["inner_steps"] is None:
        steps["inner_steps"] = (
            _itd_steps(state.extra["calibration"]) if method.inner_step_size is None else 10
        )
    state.extra["steps"] = steps
    return state


def _itd_steps(cal: Calibration) -> int:
    """``T`` with ``(1 - mu_y / L_y)^T <= ITD_TRUNCATION``, within the bounds."""
    rate = 1.0 - cal.lower_min / cal.lower_max
    if not 0.0 < rate < 1.0:  # mu_y <= 0 (no contraction to speak of) or mu_y = L_y
        return ITD_MIN_STEPS
    T = math.ceil(math.log(ITD_TRUNCATION) / math.log(rate))
    return min(max(T, ITD_MIN_STEPS), ITD_MAX_STEPS)
