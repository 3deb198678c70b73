"""BO-REP: bilevel optimization with initialization refinement and periodic updates (Hao, Gong
and Liu, "Bilevel Optimization under Unbounded Smoothness: A New Algorithm and Convergence
Analysis", ICLR 2024).

Verification. The iteration of :class:`BOREP` was checked line by line against the authors'
official code, ``MingruiLiu-ML-Lab/Bilevel-Optimization-under-Unbounded-Smoothness`` at commit
``1b06bcf97053d5d8e44493f314bb5189551e342d`` (``data_cleaning/bo_rep.py``, ``Learner.forward``
and ``Learner.hypergradient``; ``hyperparam_opt/bo_rep.py`` and ``meta_learning`` follow the
same scheme), and follows it by default: the order of the ``H z`` product and the periodic
update, the ``1 + N`` SGD steps of a periodic update, three independent batches for ``H z``,
``grad F`` and the cross term, normalized momentum on ``x``. The paper's algorithm box was not
available offline while this was written; the differences below are deliberate and named.

Minibatches come from ``problem.lower_data`` / ``problem.upper_data`` through the same
:class:`~bilevel.methods._base.BatchStream` objects as :class:`~bilevel.methods.SOBA` (kept
in ``state.extra["streams"]``), so checkpoints resume bit for bit under the same conditions;
``None`` data means a deterministic level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

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
    tree_flatten,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_unflatten,
    tree_zeros_like,
)

#: Default step: gradient-step scale ``SINGLE_LOOP_RATIO * gamma mu_y / L_h`` (half of
#: SOBA's: the momentum average lags, and at the full ratio some quadratics oscillate).
SINGLE_LOOP_RATIO = 0.75
#: Length of the first epoch of the epoch-SGD refinement.
FIRST_EPOCH = 10


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


def _xavier(tree: PyTree) -> PyTree:
    """The code's ``z`` start: ``xavier_uniform_`` on the flattened ``(p, 1)`` vector,
    i.e. uniform in ``[-a, a]`` with ``a = sqrt(6 / (p + 1))``, from the global torch RNG."""
    leaves, spec = tree_flatten(tree)
    p = sum(leaf.numel() for leaf in leaves)
    a = math.sqrt(6.0 / (p + 1))
    return tree_unflatten([(torch.rand_like(leaf) * 2 - 1) * a for leaf in leaves], spec)


@dataclass
class BOREP(Method):
    """BO-REP (Hao, Gong and Liu, ICLR 2024): normalized momentum on ``x``, initialization
    refinement and periodic updates of ``y``, and an SGD-tracked linear-system variable ``z``.

    Sign convention: ``z`` tracks ``z*(x) = H^{-1} grad_y F(x, y*(x))`` (as ``aux["v"]`` of
    :func:`bilevel.hypergrad.implicit`, the opposite of :class:`SOBA`'s ``v``), so that
    ``grad h(x) = grad_x F - B z*`` with ``H = d2_yy f``, ``B = d2_xy f``.

    Initialization (:meth:`init`), the *initialization refinement* at ``x_0``: epoch-SGD
    (``refine="epoch_sgd"``, the paper's refinement subroutine, after Hazan and Kale,
    2014) on ``f(x_0, .)``: epoch ``k = 1, 2, ...`` runs ``10 * 2^(k-1)`` SGD steps of size
    ``alpha / 2^(k-1)`` from the average of the previous epoch's iterates, within the budget
    ``refine_steps``, and returns the last epoch's average; ``refine="sgd"``: ``refine_steps``
    plain SGD steps (the code has no refinement beyond its first periodic update). Then
    ``z_1 = 0`` (``linear_init="zeros"``) or the code's random start (``"xavier"``),
    ``m_0 = 0``.

    Iteration ``t`` (1-based), with independent batches ``i``, ``i'`` (lower) and ``j``
    (upper), as the official code::

        Hz = H(x_t, y_t; i) z_t                                  (before the y update)
        if (t - 1) % I == 0:             (periodic update: t = 1, 1 + I, 1 + 2I, ...)
            y^0 = y_t,  y^1 = P(y^0 - alpha grad_y f(x_t, y^0; i))     (the same batch i)
            y^{k+1} = P(y^k - alpha grad_y f(x_t, y^k; i_k)),  k = 1 .. N  (fresh batches)
            y_{t+1} = y^{N+1},    P = projection onto the ball B(y^0, R_y)
        else y_{t+1} = y_t
        z_{t+1} = Proj_{B(0, R_z)}(z_t - gamma (Hz - grad_y F(x_t, y_{t+1}; j)))
        D_t     = grad_x F(x_t, y_{t+1}; j) - B(x_t, y_{t+1}; i') z_{t+1}
        m_t     = beta m_{t-1} + (1 - beta) D_t
        x_{t+1} = x_t - eta_t m_t / ||m_t||                 (no move when m_t = 0)

    ``eta_t = eta``, or ``eta / sqrt(t)`` with ``decreasing=True``. ``state.hypergrad`` is
    ``D_t``; ``state.extra`` holds ``z``, ``m`` and the streams. Without data, ``i = i'``
    (the cross term reuses the linearisation when ``y`` did not move).

    Differences from the official code (deliberate):

    * The code does not clear the gradient buffers between the SGD steps of a periodic
      update, so its ``k``-th step moves along the sum of the gradients so far; here every
      step is a plain SGD step, as the paper's update (we read the accumulation as
      unintended).
    * ``z`` starts at 0 by default (deterministic and scale-free; the code's xavier start
      has a scale unrelated to the problem's); ``linear_init="xavier"`` is the code's.
    * The refinement is the paper's epoch-SGD subroutine (the code has none).
    * The radii ``R_y``, ``R_z`` of the paper's analysis are options, off by default as in
      the code; step sizes are measured from the problem when left at ``None``.

    Because the ``x`` step has length ``eta`` whatever the gradient, constant ``eta`` leaves
    ``x`` oscillating in an ``O(eta)`` neighbourhood of a stationary point (``||grad h|| =
    O(L eta / (1 - beta))`` without noise). The paper's guarantee is on the *average* of
    ``||grad h(x_t)||`` over the run (``eta ~ epsilon^2`` with noise); the tests check the
    average and best iterate against this floor law (``tests/methods/test_borep.py``), not the last
    iterate, whose gradient norm is up to about ``9 eta_T L`` on the cycle.

    Parameters (defaults, sources)
    ------------------------------
    outer_step_size:
        ``eta``: the length of every ``x`` step (the code's scripts: ``1e-4`` to ``5e-2``);
        ``0`` freezes ``x``. ``None`` (default): scale-aware clipped steps (below).
    momentum:
        ``beta = 0.9`` (code, ``--beta 0.90``); in ``[0, 1)``.
    inner_step_size:
        ``alpha`` for every SGD step on ``y`` (code: ``2e-3`` to ``5e-2`` for RNNs); needs
        ``alpha < 2 / L_y``. ``None`` (default): ``1 / L_y`` measured at ``(x0, y0)``.
    linear_step_size:
        ``gamma`` (code, ``--nu 1e-2``); needs ``gamma < 2 / L_y``. ``None`` (default):
        ``1 / L_y``.
    refine_steps:
        budget of the refinement, ``100`` steps; ``0`` disables it.
    refine:
        ``"epoch_sgd"`` (default) or ``"sgd"``.
    period:
        ``I = 3`` (code, ``hyperparam_opt``: ``--interval 3``; ``data_cleaning``: 2).
    update_steps:
        ``N = 3`` (code, ``--y_warm_start 3``; ``data_cleaning``: 10): fresh-batch steps of
        a periodic update, after its first step on batch ``i``.
    lower_radius, linear_radius:
        ``R_y``, ``R_z`` (paper's analysis); ``None`` = no projection, as the code.
    linear_init:
        ``"zeros"`` (default) or ``"xavier"`` (code).
    decreasing:
        ``False``; ``True`` for ``eta_t = eta / sqrt(t)``.

    Default outer step (``outer_step_size=None``): with ``L_h`` the curvature of ``h`` and
    ``L_y >= mu_y`` those of ``f``, all measured at the start, the step length is::

        eta_t = min(r_t, c ||m_t||),   c = SINGLE_LOOP_RATIO * gamma mu_y / L_h,
        r_t = c ||D_1||  (divided by sqrt(t) with decreasing=True)

    i.e. far from a stationary point a normalized step of length at most ``r_t``, the
    length of the first step; near one a gradient step ``c m_t`` of the size
    :class:`SOBA`'s default takes, slow enough for ``y`` and ``z`` to track their moving
    targets, so deterministic runs converge instead of cycling at distance ``O(eta)``.

    Oracle calls: ``refine_steps`` gradients at init; per iteration 1 upper gradient,
    ``N`` lower gradients every ``I`` iterations (the first step of a periodic update reuses
    the gradient of the ``H z`` product), 2 products (``H z``, ``B z``).
    """

    outer_step_size: float | None = None
    momentum: float = 0.9
    inner_step_size: float | None = None
    linear_step_size: float | None = None
    refine_steps: int = 100
    refine: str = "epoch_sgd"
    period: int = 3
    update_steps: int = 3
    lower_radius: float | None = None
    linear_radius: float | None = None
    linear_init: str = "zeros"
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
        if self.refine not in ("epoch_sgd", "sgd"):
            raise ValueError(f"borep: refine must be 'epoch_sgd' or 'sgd', got {self.refine!r}")
        if self.linear_init not in ("zeros", "xavier"):
            raise ValueError(
                f"borep: linear_init must be 'zeros' or 'xavier', got {self.linear_init!r}"
            )

    def step_size(self, iteration: int, eta: float | None = None) -> float:
        """``eta_t`` at the 1-based ``iteration`` (``eta``: the run's ``eta``, or its clip
        radius ``r`` with the default step)."""
        eta = self.outer_step_size if eta is None else eta
        if eta is None:
            raise ValueError("borep: step_size needs eta (the run's measured outer step)")
        if self.decreasing:
            return eta / math.sqrt(iteration)
        return eta

    def _sgd(
        self,
        problem: BilevelProblem,
        x: PyTree,
        y: PyTree,
        steps: int,
        stream,
        radius,
        alpha,
        center: PyTree | None = None,
    ) -> PyTree:
        center = y if center is None else center
        for _ in range(steps):
            y = tree_axpy(-alpha, lower_grad(problem, x, y, stream.next()), y)
            y = _project(y, center, radius)
        return require_finite(y, "the inner variable y")

    def _refine(self, problem: BilevelProblem, x: PyTree, y: PyTree, stream, alpha) -> PyTree:
        if self.refine == "sgd":
            return self._sgd(problem, x, y, self.refine_steps, stream, None, alpha)
        budget, length, step = self.refine_steps, FIRST_EPOCH, alpha
        while budget > 0:
            length = min(length, budget)
            total = tree_zeros_like(y)
            for _ in range(length):
                y = tree_axpy(-step, lower_grad(problem, x, y, stream.next()), y)
                total = tree_add(total, y)
            y = require_finite(tree_scale(1.0 / length, total), "the inner variable y")
            budget -= length
            length, step = 2 * length, step / 2
        return y

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        state = init_with_streams(problem, x0, y0)
        steps: dict[str, float | None] = {
            "outer_step_size": self.outer_step_size,
            "inner_step_size": self.inner_step_size,
            "linear_step_size": self.linear_step_size,
        }
        if None in steps.values():
            cal = calibrate_into(state, problem, x0, y0, outer=self.outer_step_size is None)
            for what in ("inner_step_size", "linear_step_size"):
                if steps[what] is None:
                    steps[what] = cal.inner_step
            linear_step = steps["linear_step_size"]
            assert linear_step is not None  # filled just above
            if self.outer_step_size is None:
                steps["gradient_step"] = cal.tracking_step(linear_step, SINGLE_LOOP_RATIO)
        state.extra["steps"] = steps
        _, lower = batch_streams(problem, state)
        state.y = self._refine(problem, x0, y0, lower, steps["inner_step_size"])
        state.grad_calls += self.refine_steps
        zeros = tree_zeros_like(y0)
        state.extra["z"] = _xavier(zeros) if self.linear_init == "xavier" else zeros
        state.extra["m"] = tree_zeros_like(x0)
        return state

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        upper, lower = batch_streams(problem, state)
        alpha, gamma = run_steps(self, state, "inner_step_size", "linear_step_size")
        x, y, z, m = state.x, state.y, state.extra["z"], state.extra["m"]
        lin = Linearisation(problem, x, y, lower.next())
        hz = lin.hvp(z)
        moved = (iteration - 1) % self.period == 0
        if moved:
            first = _project(tree_axpy(-alpha, lin.grad_y, y), y, self.lower_radius)
            y = self._sgd(
                problem, x, first, self.update_steps, lower, self.lower_radius, alpha, center=y
            )
            state.grad_calls += self.update_steps
        gx_F, gy_F = upper_grads(problem, x, y, upper.next())
        z = tree_axpy(-gamma, tree_sub(hz, gy_F), z)
        z = require_finite(_project(z, None, self.linear_radius), "the linear-system variable z")
        if moved or problem.lower_data is not None:
            lin = Linearisation(problem, x, y, lower.next())
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
