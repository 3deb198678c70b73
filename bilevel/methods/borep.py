"""BO-REP: bilevel optimization with initialization refinement and periodic updates (Hao, Gong
and Liu, "Bilevel Optimization under Unbounded Smoothness: A New Algorithm and Convergence
Analysis", ICLR 2024).

Minibatches come from ``problem.lower_data`` / ``problem.upper_data`` through the same
:class:`~bilevel.methods._base.BatchStream` objects as :class:`~bilevel.methods.SOBA` (kept
in ``state.extra["streams"]``), so checkpoints resume bit for bit under the same conditions;
``None`` data means a deterministic level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bilevel.methods._base import Method, MethodState, require_finite
from bilevel.methods._defaults import calibrate_into, run_steps, step_info
from bilevel.methods._oracles import (
    Linearisation,
    batch_streams,
    init_with_streams,
    lower_grad,
    upper_grads,
)
from bilevel.methods._validation import check_step_sizes
from bilevel.problem import BilevelProblem
from bilevel.tree import (
    PyTree,
    tree_add,
    tree_axpy,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_zeros_like,
)

#: Default step: gradient-step scale ``SINGLE_LOOP_RATIO * gamma mu_y / L_h`` (half of
#: SOBA's: the momentum average lags, and at the full ratio some quadratics oscillate).
SINGLE_LOOP_RATIO = 0.75


def _project(tree: PyTree, center: PyTree | None, radius: float | None) -> PyTree:
    """Euclidean projection of ``tree`` onto the ball of ``radius`` around ``center``
    (``None`` center: the origin; ``None`` radius: no projection)."""
    if radius is None:
        return tree
    diff = tree if center is None else tree_sub(tree, center)
    norm = float(tree_norm(diff))
    if norm <= radius:
        return tree
    diff = tree_scale(radius / norm, diff)
    return diff if center is None else tree_add(center, diff)


@dataclass
class BOREP(Method):
    """BO-REP (Hao, Gong and Liu, ICLR 2024): normalized momentum on ``x``, initialization
    refinement and periodic updates of ``y``, and an SGD-tracked linear-system variable ``z``.

    Sign convention: ``z`` tracks ``z*(x) = H^{-1} grad_y F(x, y*(x))`` (as ``aux["v"]`` of
    :func:`bilevel.hypergrad.implicit`, the opposite of :class:`SOBA`'s ``v``), so that
    ``grad h(x) = grad_x F - B z*`` with ``H = d2_yy f``, ``B = d2_xy f``.

    Initialization (:meth:`init`), the *initialization refinement* for ``x_0``::

        y <- y - alpha grad_y f(x_0, y; i_k),   k = 1 .. refine_steps       (fresh batches)
        z_1 = 0,  m_0 = 0

    Iteration ``t`` (1-based)::

        if (t - 1) % I == 0:             (periodic update: t = 1, 1 + I, 1 + 2I, ...)
            y^0 = y_t
            y^{k+1} = Proj_{B(y^0, R_y)}(y^k - alpha grad_y f(x_t, y^k; i_k)),  k < N
            y_t <- y^N
        z_{t+1} = Proj_{B(0, R_z)}(z_t - gamma (H(x_t, y_t; i) z_t - grad_y F(x_t, y_t; j)))
        D_t     = grad_x F(x_t, y_t; j) - B(x_t, y_t; i) z_{t+1}
        m_t     = beta m_{t-1} + (1 - beta) D_t
        x_{t+1} = x_t - eta_t m_t / ||m_t||                 (no move when m_t = 0)

    (``i`` one lower and ``j`` one upper batch, shared by the ``z`` update and ``D_t``; the
    hypergradient uses the updated ``z_{t+1}``, as the authors' code does.) ``eta_t = eta``,
    or ``eta / sqrt(t)`` with ``decreasing=True``. ``state.hypergrad`` is ``D_t``;
    ``state.extra`` holds ``z``, ``m`` and the streams. Because the ``x`` step has length
    ``eta`` whatever the gradient, constant ``eta`` leaves ``x`` oscillating in an
    ``O(eta)`` neighbourhood of a stationary point (``||grad h|| = O(L eta / (1 - beta))``
    in the deterministic case); the paper's analysis takes ``eta ~ eps^2`` (stochastic).

    Parameters (defaults, sources)
    ------------------------------
    outer_step_size:
        ``eta``: the length of every ``x`` step (the authors' RNN hyper-parameter-optimisation
        script uses ``1e-4``); ``0`` freezes ``x``. ``None`` (default; formerly ``0.01``):
        scale-aware clipped steps (this library's default, see below).
    momentum:
        ``beta = 0.9`` (authors' code, ``--beta 0.90``); in ``[0, 1)``.
    inner_step_size:
        ``alpha`` for every SGD step on ``y`` (the authors' script uses ``2e-3`` for an
        RNN); needs ``alpha < 2 / L_y``. ``None`` (default; formerly ``0.1``): ``1 / L_y``
        measured at ``(x0, y0)`` (:mod:`bilevel.methods._defaults`).
    linear_step_size:
        ``gamma`` (authors' code, ``--nu 1e-2``); needs ``gamma < 2 / L_y``. ``None``
        (default; formerly ``0.01``): ``1 / L_y``.
    refine_steps:
        ``100`` SGD steps of initialization refinement (the paper's subroutine at ``x_0``;
        the paper uses a longer epoch-SGD run, the authors' code none beyond the first
        periodic update); ``0`` disables it.
    period:
        ``I = 3`` (authors' code, ``--interval 3``): ``y`` moves every ``I`` iterations.
    update_steps:
        ``N = 3`` (authors' code, ``--y_warm_start 3``) SGD steps per periodic update.
    lower_radius:
        ``R_y = None``: radius of the ball around ``y^0`` the periodic updates are projected
        onto (the paper's analysis; ``None`` = no projection, as the authors' code).
    linear_radius:
        ``R_z = None``: radius of the ball around ``0`` for ``z`` (the paper uses
        ``C_{F,y} / mu``; ``None`` = no projection, as the authors' code).
    decreasing:
        ``False``; ``True`` for ``eta_t = eta / sqrt(t)``.

    Default outer step (``outer_step_size=None``): with ``L_h`` the curvature of ``h`` and
    ``L_y >= mu_y`` those of ``f``, all measured at the start, the step length is::

        eta_t = min(r_t, c ||m_t||),   c = SINGLE_LOOP_RATIO * gamma mu_y / L_h,
        r_t = c ||D_1||  (divided by sqrt(t) with decreasing=True)

    i.e. far from a stationary point (``||m_t|| > ||D_1||``, e.g. in a region of larger
    smoothness) a normalized step of length at most ``r_t``, the length of the first
    step; near one a gradient step ``c m_t`` of the size :class:`SOBA`'s default takes,
    slow enough for ``y`` and ``z`` (which contract by about ``1 - gamma mu_y`` per
    iteration) to track their moving targets. Unlike a constant ``eta``, this step shrinks
    with ``m_t``, so deterministic runs converge instead of cycling at distance ``O(eta)``.

    Oracle calls: ``refine_steps`` gradients at init; per iteration 1 upper gradient
    (``grad F``), ``N`` lower gradients every ``I`` iterations, 2 products (``H z``, ``B z``).

    Accuracy (tests, ``tests/test_borep.py``, quadratic with ``dim x = 4``, ``dim y = 8``,
    ``H`` in ``[1, 2]``, ``alpha = 0.4``, ``gamma = 0.3``, other defaults): without data and
    constant ``eta``, ``x`` ends on a cycle whose size is proportional to ``eta``: over the
    last 200 iterations ``max ||grad h|| / ||grad h(0)||`` is about ``9e-2`` for
    ``eta = 1e-2`` and ``9e-3`` for ``eta = 1e-3`` (best iterate ``<= 1e-3``);
    ``decreasing=True`` with ``eta = 0.1`` gives ``<= 1e-2`` (measured ``4.3e-3``) after
    3000 iterations. On the finite-sum quadratic (noise 0.05, i.i.d. single-component
    batches), ``decreasing=True``, ``eta = 0.05``: ``<= 2e-2`` (measured ``5.3e-3``) after
    2000 iterations.
    """

    outer_step_size: float | None = None
    momentum: float = 0.9
    inner_step_size: float | None = None
    linear_step_size: float | None = None
    refine_steps: int = 100
    period: int = 3
    update_steps: int = 3
    lower_radius: float | None = None
    linear_radius: float | None = None
    decreasing: bool = False
    name: str = field(default="borep", init=False)
    stochastic = True

    def __post_init__(self) -> None:
        check_step_sizes(self.name, allow_zero=True, outer_step_size=self.outer_step_size)
        check_step_sizes(
            self.name,
            inner_step_size=self.inner_step_size,
            linear_step_size=self.linear_step_size,
        )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"borep: momentum must be in [0, 1), got {self.momentum}")
        if self.refine_steps < 0 or self.update_steps < 0:
            raise ValueError(
                f"borep: refine_steps and update_steps must be >= 0, got {self.refine_steps}, "
                f"{self.update_steps}"
            )
        if self.period < 1:
            raise ValueError(f"borep: period must be >= 1, got {self.period}")
        for what in ("lower_radius", "linear_radius"):
            radius = getattr(self, what)
            if radius is not None and not radius > 0:
                raise ValueError(f"borep: {what} must be positive or None, got {radius}")

    def step_size(self, iteration: int, eta: float | None = None) -> float:
        """``eta_t`` at the 1-based ``iteration`` (``eta``: the run's ``eta``, or its clip
        radius ``r`` with the default step)."""
        eta = self.outer_step_size if eta is None else eta
        if self.decreasing:
            return eta / math.sqrt(iteration)
        return eta

    def _sgd(
        self, problem: BilevelProblem, x: PyTree, y: PyTree, steps: int, stream, radius, alpha
    ) -> PyTree:
        center = y
        for _ in range(steps):
            y = tree_axpy(-alpha, lower_grad(problem, x, y, stream.next()), y)
            y = _project(y, center, radius)
        return require_finite(y, "the inner variable y")

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        state = init_with_streams(problem, x0, y0)
        steps = {
            "outer_step_size": self.outer_step_size,
            "inner_step_size": self.inner_step_size,
            "linear_step_size": self.linear_step_size,
        }
        if None in steps.values():
            cal = calibrate_into(state, problem, x0, y0, outer=self.outer_step_size is None)
            for what in ("inner_step_size", "linear_step_size"):
                if steps[what] is None:
                    steps[what] = cal.inner_step
            if self.outer_step_size is None:
                steps["gradient_step"] = cal.tracking_step(
                    steps["linear_step_size"], SINGLE_LOOP_RATIO
                )
        state.extra["steps"] = steps
        _, lower = batch_streams(problem, state)
        state.y = self._sgd(
            problem, x0, y0, self.refine_steps, lower, None, steps["inner_step_size"]
        )
        state.grad_calls += self.refine_steps
        state.extra["z"] = tree_zeros_like(y0)
        state.extra["m"] = tree_zeros_like(x0)
        return state

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        upper, lower = batch_streams(problem, state)
        alpha, gamma = run_steps(self, state, "inner_step_size", "linear_step_size")
        x, y, z, m = state.x, state.y, state.extra["z"], state.extra["m"]
        if (iteration - 1) % self.period == 0:
            y = self._sgd(problem, x, y, self.update_steps, lower, self.lower_radius, alpha)
            state.grad_calls += self.update_steps
        lin = Linearisation(problem, x, y, lower.next())
        gx_F, gy_F = upper_grads(problem, x, y, upper.next())
        z = tree_axpy(-gamma, tree_sub(lin.hvp(z), gy_F), z)
        z = require_finite(_project(z, None, self.linear_radius), "the linear-system variable z")
        d = tree_sub(gx_F, lin.cross(z))
        m = tree_add(tree_scale(self.momentum, m), tree_scale(1.0 - self.momentum, d))
        m = require_finite(m, "the momentum m")
        norm = float(tree_norm(m))
        steps = state.extra.get("steps", {})
        if "gradient_step" in steps:  # the default: clipped gradient steps
            c = steps["gradient_step"]
            radius = state.extra.setdefault("radius", c * float(tree_norm(d)))
            eta = min(self.step_size(iteration, radius), c * norm)
        else:
            eta = self.step_size(iteration, run_steps(self, state, "outer_step_size")[0])
        if norm > 0:
            x = tree_axpy(-eta / norm, m, x)
        state.x, state.y = x, y
        state.extra["z"], state.extra["m"] = z, m
        state.hypergrad = d
        state.grad_calls += 1
        state.hvp_calls += 2
        return state
