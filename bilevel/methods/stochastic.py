"""Stochastic outer algorithms: StocBiO (Ji, Yang and Liang, ICML 2021), SOBA and SABA
(Dagréou, Ablin, Vaiter and Moreau, NeurIPS 2022).

Minibatches come from ``problem.lower_data`` / ``problem.upper_data``; the objectives are then
called as ``f(x, y, batch)`` and ``F(x, y, batch)``. ``None`` data means a deterministic
level, whose objective is called without a batch. Notation: ``H = d2_yy f``,
``B = d2_xy f`` (so ``B v = d/dx <grad_y f, v>``), ``h(x) = F(x, y*(x))``.

Reproducibility
---------------
StocBiO and SOBA draw their batches through :class:`~bilevel.methods._base.BatchStream`
objects kept in ``state.extra["streams"]``; a checkpoint records how many batches each has
delivered (and the RNG state at the start of the current pass), and
:func:`~bilevel.methods.run_method` fast-forwards them on resume before restoring the global
RNG state, so a resumed run repeats the uninterrupted one bit for bit when the iterables are
deterministic (lists, tuples) or draw their randomness from the global torch RNG (see
:class:`~bilevel.methods._base.BatchStream` for the exact guarantee). SABA samples indices
with ``torch.randint`` from the global RNG, which the checkpoint saves, and keeps its memory
tables in ``state.extra``: its resumed runs are always bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.methods._base import Method, MethodState, require_finite
from bilevel.methods._defaults import Calibration, resolve_steps, run_steps, step_info
from bilevel.methods._oracles import (
    Batch,
    Linearisation,
    batch_streams,
    init_with_streams,
    lower_grad,
    lower_oracles,
    upper_grads,
)
from bilevel.methods._validation import check_positive, check_step_sizes
from bilevel.problem import BilevelProblem
from bilevel.tree import (
    PyTree,
    tree_add,
    tree_axpy,
    tree_leaves,
    tree_map,
    tree_scale,
    tree_sub,
    tree_zeros_like,
)

# ----------------------------------------------------------------------------- StocBiO


@dataclass
class StocBiO(Method):
    """StocBiO: stochastic double loop with a Neumann-series hypergradient.

    Outer iteration ``k`` (Ji, Yang and Liang 2021)::

        y^0 = y_{k-1};   y^{t+1} = y^t - beta grad_y f(x_k, y^t; S_t),  t < T,  y_k = y^T
        r_0 = grad_y F(x_k, y_k; D_F),  r_{j} = (I - eta H(x_k, y_k; B_j)) r_{j-1},  j <= Q
        v_Q = eta * sum_{j=0}^{Q} r_j
        x_{k+1} = x_k - alpha (grad_x F(x_k, y_k; D_F) - B(x_k, y_k; D_G) v_Q)

    Every ``S_t``, ``D_F``, ``B_j``, ``D_G`` is a fresh minibatch, drawn in that order: ``T``
    lower batches, one upper batch, ``Q`` Hessian batches (one if shared, see below), one
    cross batch. With ``hessian_batches="independent"`` (the paper's algorithm) the ``B_j``
    are independent, so ``E[v_Q] = eta * sum_{j=0}^{Q} (I - eta H)^j grad_y F`` exactly: the estimate is
    unbiased for the deterministic truncated series (the one of
    :func:`bilevel.hypergrad.neumann`), whose bias ``O((1 - eta mu)^{Q+1})`` vanishes as
    ``Q`` grows. ``"shared"`` uses one batch ``B`` for all ``Q`` products, like the official
    code (one linearisation, cheaper, but ``E[(I - eta H_B)^j] != (I - eta H)^j`` when the
    Hessian is noisy: biased). The series here includes the ``j = 0`` term and the factor
    ``eta`` (the official code scales them differently).

    Parameters (defaults)
    ---------------------
    inner_steps:
        ``T = 10``, as in the official code (``--T 10``) and :class:`AID`.
    inner_step_size:
        ``beta``; needs ``beta < 2 / L_y``. ``None`` (default): ``1 / L_y``, measured at
        ``(x0, y0)`` on the first minibatches (:mod:`bilevel.methods._defaults`; before
        this default existed it was ``0.1``).
    outer_step_size:
        ``alpha``, constant as in the paper; ``0`` freezes ``x``. ``None`` (default):
        ``1 / L_h``, the inverse curvature of ``h`` measured at ``x0`` (formerly ``0.01``).
    neumann_steps:
        ``Q``: ``10`` as in the official code (``--hessian_q 10``) when the step sizes are
        given. ``None`` (default) with ``inner_step_size=None``: the smallest ``Q`` with
        truncation factor ``(1 - eta mu_y)^{Q+1} <= 1e-4`` (``mu_y`` measured at
        ``(x0, y0)``), between 10 and 100 (``Q = 22`` for ``eta = 1 / L_y``,
        ``L_y / mu_y = 3``): with ``Q = 10`` that factor is ``1.2e-2`` there, a bias of
        the same relative size in the hypergradient.
    neumann_step_size:
        ``eta``; ``None`` (default) uses ``beta``, as :class:`AID` does. The expected series
        converges for ``eta < 2 / L_y``; ``eta <= 1 / L_y`` (for every batch) makes each
        factor a contraction, with truncation error at most ``(1 - eta mu)^{Q+1}`` times that
        of ``v = 0``. (The official code uses ``eta = 0.5`` on its own problem scale.)
    hessian_batches:
        ``"independent"`` (default) or ``"shared"``, see above.

    Per iteration: ``T + 1`` gradient calls, ``Q + 1`` Hessian/Jacobian-vector products.

    Accuracy (tests, ``tests/methods/test_stochastic_methods.py``): on a finite-sum quadratic (10
    lower, 5 upper components, relative noise 0.05, ``H`` in ``[1, 2]``) sampled one
    component at a time, ``T = Q = 10``, ``beta = eta = 0.4``, ``alpha = 0.02``:
    ``||grad h(x)|| <= 2e-2 ||grad h(x_0)||`` after 300 iterations (a constant ``alpha``
    leaves an ``O(alpha)`` noise floor). Without data it reproduces :class:`AID` with the
    Neumann solver to 1e-12; the mean of 1500 hypergradient draws at a fixed ``(x, y)``
    matches the deterministic Neumann value within 4.5 standard errors per coordinate.
    """

    inner_steps: int = 10
    inner_step_size: float | None = None
    outer_step_size: float | None = None
    neumann_steps: int | None = None
    neumann_step_size: float | None = None
    hessian_batches: str = "independent"
    name: str = field(default="stocbio", init=False)
    stochastic = True

    def __post_init__(self) -> None:
        if self.inner_steps < 0 or (self.neumann_steps is not None and self.neumann_steps < 0):
            raise ValueError(
                f"stocbio: inner_steps and neumann_steps must be >= 0, got {self.inner_steps}, "
                f"{self.neumann_steps}"
            )
        check_step_sizes(self.name, inner_step_size=self.inner_step_size)
        check_step_sizes(self.name, allow_zero=True, outer_step_size=self.outer_step_size)
        if self.neumann_step_size is not None:
            check_positive(self.name, neumann_step_size=self.neumann_step_size)
        if self.hessian_batches not in ("independent", "shared"):
            raise ValueError(
                "stocbio: hessian_batches must be 'independent' or 'shared', got "
                f"{self.hessian_batches!r}"
            )

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        state = init_with_streams(problem, x0, y0)
        resolve_steps(self, problem, state, lambda cal, beta: cal.outer_step())
        Q = self.neumann_steps
        if Q is None:
            Q = 10
            if self.inner_step_size is None:
                cal = state.extra["calibration"]
                eta = state.extra["steps"]["inner_step_size"]
                eta = eta if self.neumann_step_size is None else self.neumann_step_size
                rate = 1.0 - eta * cal.lower_min
                if 0.0 < rate < 1.0:
                    Q = math.ceil(math.log(NEUMANN_TRUNCATION) / math.log(rate)) - 1
                Q = min(max(Q, 10), 100)
        state.extra["steps"]["neumann_steps"] = Q
        return state

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        upper, lower = batch_streams(problem, state)
        beta, alpha = run_steps(self, state, "inner_step_size", "outer_step_size")
        x, y = state.x, state.y
        for _ in range(self.inner_steps):
            y = tree_axpy(-beta, lower_grad(problem, x, y, lower.next()), y)
        require_finite(y, "the inner variable y")
        eta = beta if self.neumann_step_size is None else self.neumann_step_size
        gx_F, gy_F = upper_grads(problem, x, y, upper.next())
        r, v = gy_F, tree_scale(eta, gy_F)
        lin = None
        (Q,) = run_steps(self, state, "neumann_steps")
        for _ in range(Q):
            # without lower data every linearisation is the same: build it once
            fresh = self.hessian_batches == "independent" and problem.lower_data is not None
            if lin is None or fresh:
                lin = Linearisation(problem, x, y, lower.next())
            r = tree_axpy(-eta, lin.hvp(r), r)
            v = tree_axpy(eta, r, v)
        require_finite(v, "the Neumann series (neumann_step_size too large?)")
        grad = tree_sub(gx_F, Linearisation(problem, x, y, lower.next()).cross(v))
        state.x = tree_axpy(-alpha, grad, x)
        state.y = y
        state.hypergrad = grad
        state.grad_calls += self.inner_steps + 1
        state.hvp_calls += Q + 1
        return state


# ----------------------------------------------------------------------------- SOBA


@dataclass
class SOBA(Method):
    """SOBA: stochastic single-loop bilevel algorithm (Dagréou et al. 2022).

    Sign convention of the paper: ``v`` tracks ``v*(x) = -H^{-1} grad_y F(x, y*(x))`` (the
    opposite of ``aux["v"]`` in :func:`bilevel.hypergrad.implicit`), so that
    ``grad h(x) = grad_x F + B v*``. Iteration ``t`` (1-based) draws one lower batch ``i``
    and one upper batch ``j`` and evaluates all directions at ``(x_t, y_t, v_t)``::

        D_y = grad_y f(x_t, y_t; i)
        D_v = H(x_t, y_t; i) v_t + grad_y F(x_t, y_t; j)     (gradient of 1/2 v'Hv + v'grad_y F)
        D_x = grad_x F(x_t, y_t; j) + B(x_t, y_t; i) v_t
        y_{t+1} = y_t - rho_t D_y,   v_{t+1} = v_t - rho_t D_v,   x_{t+1} = x_t - gamma_t D_x

    (a joint update, ``v_0 = 0``). Step sizes: constant ``rho_t = rho``, ``gamma_t = gamma``
    (default; the authors' benchopt solver instead decays both as ``1 / sqrt(t + 1)``), or
    with ``decreasing=True`` the schedule of the paper's analysis, ``rho_t = rho / t^{2/5}``, ``gamma_t = gamma / t^{3/5}``, for
    which ``min_{t <= T} E||grad h(x_t)||^2 = O(log T / T^{2/5})``. ``state.hypergrad`` is
    ``D_x``.

    Parameters (defaults)
    ---------------------
    inner_step_size:
        ``rho`` (for ``y`` and ``v``); needs ``rho < 2 / L_y``. The benchmark of the paper
        grid-searches ``rho`` and the ratio ``rho / gamma``. ``None`` (default):
        ``1 / L_y`` measured at ``(x0, y0)`` (:mod:`bilevel.methods._defaults`; formerly
        ``0.1``).
    outer_step_size:
        ``gamma``; ``0`` freezes ``x``. ``None`` (default):
        ``gamma = SINGLE_LOOP_RATIO * rho mu_y / L_h`` (formerly ``0.01``): ``y`` and ``v``
        contract by ``1 - rho mu_y`` per iteration, and the outer step is that rate divided
        by the curvature of ``h``, so that they track their moving targets ``y*(x_t)``,
        ``v*(x_t)`` (a larger ratio lets the coupled iteration oscillate; on the
        quadratics of ``tests/methods/test_defaults.py`` ``1.5 rho mu_y / L_h`` diverges).
    decreasing:
        ``False``; ``True`` for the ``t^{-2/5}``, ``t^{-3/5}`` schedule.

    Per iteration: 2 gradient calls (``grad_y f``, ``grad F``), 2 products (``H v``, ``B v``,
    from one linearisation).

    Accuracy (tests, ``tests/methods/test_stochastic_methods.py``): on a finite-sum quadratic (10
    lower, 5 upper components, relative noise 0.05, ``H`` in ``[1, 2]``) sampled one
    component at a time, with ``decreasing=True``, ``rho = 0.4``, ``gamma = 0.1``:
    ``||grad h(x_T)|| <= 1e-2 ||grad h(x_0)||`` after ``T = 1000`` iterations. Without data
    (exact gradients) and constant steps it converges linearly, ``||x_T - x*|| <= 1e-8
    ||x*||`` after 400 iterations.
    """

    inner_step_size: float | None = None
    outer_step_size: float | None = None
    decreasing: bool = False
    name: str = field(default="soba", init=False)
    stochastic = True

    def __post_init__(self) -> None:
        check_step_sizes(self.name, inner_step_size=self.inner_step_size)
        check_step_sizes(self.name, allow_zero=True, outer_step_size=self.outer_step_size)

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        state = init_with_streams(problem, x0, y0)
        state.extra["v"] = tree_zeros_like(y0)
        resolve_steps(self, problem, state, _single_loop_outer_step)
        return state

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def step_sizes(self, iteration: int, state: MethodState | None = None) -> tuple[float, float]:
        """``(rho_t, gamma_t)`` at the 1-based ``iteration`` (``state``: the run whose
        default step sizes were measured)."""
        rho, gamma = run_steps(self, state, "inner_step_size", "outer_step_size")
        if not self.decreasing:
            return rho, gamma
        return rho / iteration**0.4, gamma / iteration**0.6

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        upper, lower = batch_streams(problem, state)
        rho, gamma = self.step_sizes(iteration, state)
        x, y, v = state.x, state.y, state.extra["v"]
        d_y, cross_v, hvp = lower_oracles(problem, x, y, v, lower.next())
        gx_F, gy_F = upper_grads(problem, x, y, upper.next())
        d_v = tree_add(hvp, gy_F)
        d_x = tree_add(gx_F, cross_v)
        state.y = require_finite(tree_axpy(-rho, d_y, y), "the inner variable y")
        state.extra["v"] = require_finite(tree_axpy(-rho, d_v, v), "the linear-system variable v")
        state.x = tree_axpy(-gamma, d_x, x)
        state.hypergrad = d_x
        state.grad_calls += 2
        state.hvp_calls += 2
        return state


# ----------------------------------------------------------------------------- SABA


def _finite_size(data: Any, name: str) -> int:
    """Number of minibatches of an indexable ``data`` (1 for ``None``)."""
    if data is None:
        return 1
    if (
        isinstance(data, (str, bytes, Mapping))
        or not hasattr(type(data), "__len__")
        or not hasattr(type(data), "__getitem__")
    ):
        raise TypeError(
            f"saba: problem.{name} must be a finite indexable sequence of minibatches "
            f"(a list, a tuple, a map-style Dataset with __len__) or None, got "
            f"{type(data).__name__}; SABA keeps one memory entry per minibatch"
        )
    n = len(data)
    if n == 0:
        raise ValueError(f"saba: problem.{name} holds no minibatch")
    return n


def _item(data: Any, index: int) -> Batch:
    return None if data is None else data[index]


def _table(template: PyTree, n: int) -> dict[str, PyTree]:
    """A SAGA memory: ``table`` (one row per index) and its ``mean``."""
    return {
        "table": tree_map(lambda leaf: leaf.new_zeros((n, *leaf.shape)), template),
        "mean": tree_zeros_like(template),
    }


def _saga(memory: dict[str, PyTree], index: int, new: PyTree, n: int) -> PyTree:
    """``new - memory[index] + mean(memory)``; then ``memory[index] = new`` (mean updated)."""
    old = tree_map(lambda t: t[index].clone(), memory["table"])
    diff = tree_sub(new, old)
    direction = tree_add(diff, memory["mean"])
    memory["mean"] = tree_axpy(1.0 / n, diff, memory["mean"])
    for row, value in zip(tree_leaves(memory["table"]), tree_leaves(new)):
        row[index] = value
    return direction


@dataclass
class SABA(Method):
    """SABA: SOBA with SAGA variance reduction on finite sums (Dagréou et al. 2022).

    For ``f = 1/n sum_i f_i`` and ``F = 1/m sum_j F_j``, where ``f_i`` is ``f(x, y, data[i])``
    for ``data = problem.lower_data``, a finite indexable sequence of minibatches (a list),
    and likewise ``F_j`` with ``problem.upper_data`` (``None``: one deterministic
    component). Same sign convention as :class:`SOBA` (``v -> -H^{-1} grad_y F``). Iteration
    ``t`` samples ``i ~ U{0..n-1}``, ``j ~ U{0..m-1}`` with ``torch.randint`` (global RNG)
    and replaces each SOBA term ``g_i`` by its SAGA estimate
    ``g_i(now) - w_i + (1/n) sum_l w_l`` with the memory ``w_i <- g_i(now)`` afterwards::

        D_y = SAGA[grad_y f_i(x_t, y_t)]
        D_v = SAGA[H_i(x_t, y_t) v_t] + SAGA[grad_y F_j(x_t, y_t)]
        D_x = SAGA[grad_x F_j(x_t, y_t)] + SAGA[B_i(x_t, y_t) v_t]
        y_{t+1} = y_t - rho D_y,   v_{t+1} = v_t - rho D_v,   x_{t+1} = x_t - gamma D_x

    with constant step sizes (the paper's analysis: ``O((n + m)^{2/3} / T)`` for the squared
    hypergradient, linear convergence when ``h`` satisfies a PL inequality). The five memory
    tables (one row per minibatch) and their running means live in
    ``state.extra["memory"]``.

    Parameters (defaults)
    ---------------------
    inner_step_size:
        ``rho`` (for ``y`` and ``v``). SAGA-type steps must be smaller than SGD's: a
        fraction of ``1 / L_max`` (``L_max`` the largest smoothness constant of the
        ``f_i(x, .)``), with ``gamma`` a fraction of ``rho``; too large a ratio
        ``gamma / rho`` makes the coupled iteration oscillate or diverge. ``None``
        (default): ``1 / L_y``, ``L_y`` the largest curvature over the first three
        minibatches at ``(x0, y0)`` (formerly ``0.1``).
    outer_step_size:
        ``gamma``; ``0`` freezes ``x``. ``None`` (default): as :class:`SOBA`,
        ``SINGLE_LOOP_RATIO * rho mu_y / L_h`` (formerly ``0.01``).
    init_memory:
        ``"full"`` (default): one pass over all minibatches at ``(x_0, y_0, v_0 = 0)`` fills
        the memory (``n + m`` gradient calls, counted); ``"zero"``: zero memory, as the
        default of the authors' benchmark (early directions are then biased).

    Per iteration: 2 gradient calls and 2 products, as :class:`SOBA`; memory
    ``O((n + m)(dim x + dim y))``.

    Accuracy (tests, ``tests/methods/test_stochastic_methods.py``): on a finite-sum quadratic (10
    lower, 5 upper one-component minibatches, relative noise 0.5, ``H`` in ``[1, 2]``) with
    ``rho = 0.2``, ``gamma = 0.02``: ``||grad h(x_T)|| <= 1e-6 ||grad h(x_0)||``,
    ``||x_T - x*|| <= 1e-6`` and ``v_T`` within 1e-6 (relative) of ``-H^{-1} grad_y F`` after
    ``T = 1000`` iterations (variance reduction: linear convergence), where :class:`SOBA`
    with the same steps and i.i.d. sampling stalls above 1e-3.
    """

    inner_step_size: float | None = None
    outer_step_size: float | None = None
    init_memory: str = "full"
    name: str = field(default="saba", init=False)
    stochastic = True

    def __post_init__(self) -> None:
        check_step_sizes(self.name, inner_step_size=self.inner_step_size)
        check_step_sizes(self.name, allow_zero=True, outer_step_size=self.outer_step_size)
        if self.init_memory not in ("full", "zero"):
            raise ValueError(
                f"saba: init_memory must be 'full' or 'zero', got {self.init_memory!r}"
            )

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        n = _finite_size(problem.lower_data, "lower_data")
        m = _finite_size(problem.upper_data, "upper_data")
        memory = {
            "grad_y_lower": _table(y0, n),
            "hvp": _table(y0, n),
            "cross": _table(x0, n),
            "grad_y_upper": _table(y0, m),
            "grad_x_upper": _table(x0, m),
        }
        state = MethodState(x=x0, y=y0, extra={"v": tree_zeros_like(y0), "memory": memory})
        resolve_steps(self, problem, state, _single_loop_outer_step)
        if self.init_memory == "full":  # with v_0 = 0 the H v and B v rows are zero
            for i in range(n):
                grad_y = lower_grad(problem, x0, y0, _item(problem.lower_data, i))
                _set_row(memory["grad_y_lower"], i, grad_y)
            for j in range(m):
                gx_F, gy_F = upper_grads(problem, x0, y0, _item(problem.upper_data, j))
                _set_row(memory["grad_x_upper"], j, gx_F)
                _set_row(memory["grad_y_upper"], j, gy_F)
            for entry in memory.values():
                entry["mean"] = tree_map(lambda t: t.mean(dim=0), entry["table"])
            state.grad_calls += n + m
        return state

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        memory = state.extra["memory"]
        n = _finite_size(problem.lower_data, "lower_data")
        m = _finite_size(problem.upper_data, "upper_data")
        n_saved = tree_leaves(memory["grad_y_lower"]["table"])[0].shape[0]
        m_saved = tree_leaves(memory["grad_y_upper"]["table"])[0].shape[0]
        if (n, m) != (n_saved, m_saved):
            raise ValueError(
                f"saba: the memory has {n_saved} lower and {m_saved} upper rows but the "
                f"problem has {n} and {m} minibatches: resume with the data the run began with"
            )
        i = int(torch.randint(n, ()).item()) if n > 1 else 0
        j = int(torch.randint(m, ()).item()) if m > 1 else 0
        x, y, v = state.x, state.y, state.extra["v"]
        grad_y, cross_v, hvp = lower_oracles(problem, x, y, v, _item(problem.lower_data, i))
        gx_F, gy_F = upper_grads(problem, x, y, _item(problem.upper_data, j))
        d_y = _saga(memory["grad_y_lower"], i, grad_y, n)
        d_v = tree_add(_saga(memory["hvp"], i, hvp, n), _saga(memory["grad_y_upper"], j, gy_F, m))
        d_x = tree_add(
            _saga(memory["grad_x_upper"], j, gx_F, m), _saga(memory["cross"], i, cross_v, n)
        )
        rho, gamma = run_steps(self, state, "inner_step_size", "outer_step_size")
        state.y = require_finite(tree_axpy(-rho, d_y, y), "the inner variable y")
        state.extra["v"] = require_finite(tree_axpy(-rho, d_v, v), "the linear-system variable v")
        state.x = tree_axpy(-gamma, d_x, x)
        state.hypergrad = d_x
        state.grad_calls += 2
        state.hvp_calls += 2
        return state


def _set_row(memory: dict[str, PyTree], index: int, value: PyTree) -> None:
    for row, leaf in zip(tree_leaves(memory["table"]), tree_leaves(value)):
        row[index] = leaf


# ----------------------------------------------------------------------------- defaults

#: StocBiO's automatic Neumann length makes the truncation factor at most this.
NEUMANN_TRUNCATION = 1e-4

#: Default outer step of the single-loop methods: ``gamma = SINGLE_LOOP_RATIO * rho mu_y /
#: L_h`` (see :class:`SOBA`).
SINGLE_LOOP_RATIO = 1.0


def _single_loop_outer_step(cal: Calibration, rho: float) -> float:
    """``SINGLE_LOOP_RATIO * rho mu_y / L_h`` (:meth:`Calibration.tracking_step`)."""
    return cal.tracking_step(rho, SINGLE_LOOP_RATIO)
