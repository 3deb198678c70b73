"""BSVRB: blockwise stochastic variance-reduced bilevel method (Hu, Zhu, Yang et al.,
"Blockwise Stochastic Variance-Reduced Methods with Parallel Speedup for Multi-Block Bilevel
Optimization", ICML 2023), Hessian-vector-product variant.

The problem is multi-block (``BilevelProblem(..., n_blocks=m)``)::

    min_x (1/m) sum_i F_i(x, y_i*(x)),   y_i*(x) = argmin_y f_i(x, y),   i = 1 .. m

Every iteration samples ``I`` of the ``m`` blocks and updates only their ``y_i`` and their
linear-system variables ``v_i`` (``H_i v_i = grad_y F_i``), with MSVR estimators (Jiang et al.,
ICML 2022: the multi-block single-probe variance-reduced estimator the paper builds on), and a
STORM-style variance-reduced momentum for the ``x`` direction.

Sources: the paper and the official code (``quanqihu/BSVRB_ICML2023``, ``HO/main.py``),
checked line by line against the code: the MSVR block estimators, the single-sample
correction at the previous iterate and the STORM ``x`` estimator are the code's; like the
code, every block's ``y_i`` and ``v_i`` move every iteration with their stored estimators
(``update_all_blocks=True``), and ``v_i`` can be projected onto a ball (``linear_bound``, off
by default). The
MSVR weight ``gamma`` defaults to the official scripts' practice (see :class:`BSVRB`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.methods._base import Method, MethodState, require_finite
from bilevel.methods._defaults import calibrate_into, run_steps, step_info
from bilevel.methods._oracles import batch_streams, grad, track
from bilevel.methods._validation import check_positive, check_step_sizes
from bilevel.problem import BilevelProblem
from bilevel.tree import (
    PyTree,
    tree_add,
    tree_axpy,
    tree_flatten,
    tree_map,
    tree_scale,
    tree_sub,
    tree_unflatten,
    tree_zeros_like,
)

#: Default outer step ``SINGLE_LOOP_RATIO * tau_v mu_y / L_h``, as :class:`SOBA`'s.
SINGLE_LOOP_RATIO = 1.0


def _block(tree: PyTree, i: int) -> PyTree:
    return tree_map(lambda leaf: leaf[i], tree)


def _set_blocks(tree: PyTree, index: torch.Tensor, values: list[PyTree]) -> PyTree:
    """A copy of the stacked ``tree`` whose blocks ``index[k]`` are ``values[k]``."""
    leaves, spec = tree_flatten(tree)
    value_leaves = [tree_flatten(v)[0] for v in values]
    out = []
    for j, leaf in enumerate(leaves):
        leaf = leaf.clone()
        if len(values):
            leaf[index] = torch.stack([v[j] for v in value_leaves])
        out.append(leaf)
    return tree_unflatten(out, spec)


def _block_oracles(
    problem: BilevelProblem,
    x: PyTree,
    y_i: PyTree,
    v_i: PyTree,
    i: int,
    lower_batch: Any,
    upper_batch: Any,
) -> tuple[PyTree, PyTree, PyTree]:
    """``(grad_y f_i, H_i v_i - grad_y F_i, grad_x F_i - B_i v_i)`` at ``(x, y_i, v_i)``."""
    with torch.enable_grad():
        x_t, x_leaves, x_spec = track(x)
        y_t, y_leaves, y_spec = track(y_i)
        lower = problem.block_lower_value(x_t, y_t, i, lower_batch)
        grad_y = grad(lower, y_leaves, create_graph=True)
        v_leaves = [leaf.detach() for leaf in tree_flatten(v_i)[0]]
        products = grad(grad_y, x_leaves + y_leaves, v_leaves)
        upper = problem.block_upper_value(x_t, y_t, i, upper_batch)
        upper_grads = grad(upper, x_leaves + y_leaves)
    n = len(x_leaves)
    g = tree_unflatten([t.detach() for t in grad_y], y_spec)
    bv, hv = tree_unflatten(products[:n], x_spec), tree_unflatten(products[n:], y_spec)
    gx_F, gy_F = tree_unflatten(upper_grads[:n], x_spec), tree_unflatten(upper_grads[n:], y_spec)
    return g, tree_sub(hv, gy_F), tree_sub(gx_F, bv)


@dataclass
class BSVRB(Method):
    """BSVRB (Hu, Zhu, Yang et al., ICML 2023), Hessian-vector-product variant, for
    multi-block problems (``problem.n_blocks = m``).

    Notation: ``g_i = grad_y f_i``, ``r_i(x, y_i, v_i) = H_i v_i - grad_y F_i`` (the gradient
    in ``v_i`` of ``1/2 v^T H_i v - v^T grad_y F_i``, whose minimiser is
    ``v_i* = H_i^{-1} grad_y F_i``), ``D_i(x, y_i, v_i) = grad_x F_i - B_i v_i`` with
    ``H_i = d2_yy f_i``, ``B_i = d2_xy f_i``; ``D_i(x, y_i*(x), v_i*(x))`` averaged over the
    blocks is the hypergradient. State at iteration ``t``: ``x_t``, per-block ``y_i^t``,
    ``v_i^t``, the previous iterates ``x_{t-1}``, ``y_i^{t-1}``, ``v_i^{t-1}``, the estimators
    ``u_i`` (of ``g_i``), ``w_i`` (of ``r_i``) and ``z`` (of the hypergradient).

    Iteration ``t``::

        I_t = first I entries of torch.randperm(m)       (blocks, without replacement)
        for i in I_t, with one sample S_i (B lower and B upper minibatches, averaged):
            a_i = (x_t, y_i^t, v_i^t),  p_i = (x_{t-1}, y_i^{t-1}, v_i^{t-1})
            u_i <- (1 - beta_y) u_i + beta_y g_i(a_i; S_i) + gamma_y (g_i(a_i; S_i) - g_i(p_i; S_i))
            w_i <- (1 - beta_v) w_i + beta_v r_i(a_i; S_i) + gamma_v (r_i(a_i; S_i) - r_i(p_i; S_i))
        (u_i, w_i unchanged for i not in I_t)
        Dbar_t  = (1/I) sum_{i in I_t} D_i(a_i; S_i),  Dbar'_t = (1/I) sum_{i in I_t} D_i(p_i; S_i)
        z <- (1 - beta_x) z + beta_x Dbar_t + (1 - beta_x) (Dbar_t - Dbar'_t)        (STORM)
        y_i^{t+1} = y_i^t - tau_y u_i,   v_i^{t+1} = P_R(v_i^t - tau_v w_i)     (every block i;
                    only i in I_t with update_all_blocks=False)
        x_{t+1}  = x_t - eta z

    where ``P_R`` projects each block's ``v_i`` onto the ball of radius ``R = linear_bound``
    (no projection when ``None``).

    The estimators are updated with the same sample at the current and the previous point
    (single probe per sampled block), as MSVR/STORM require. :meth:`init` sets
    ``v_i^0 = 0``, the previous iterates equal to the first ones (so the first corrections
    vanish) and initialises ``u_i``, ``w_i`` for *every* block and ``z`` (all blocks
    averaged) from one sample each, like the paper's initial large-batch estimators.
    ``state.hypergrad`` is ``z`` (the ``x`` direction); ``state.extra`` holds ``v``, ``u``,
    ``w``, ``z``, ``x_prev``, ``y_prev``, ``v_prev`` and the streams.

    With ``I = m`` and no noise, ``gamma = 1 - beta`` (the default then) and the MSVR recursion keeps
    ``u_i = g_i``, ``w_i = r_i`` and ``z = mean_i D_i`` exactly: the method is then a
    deterministic single-loop AID (one gradient step on every ``y_i`` and ``v_i``, one on
    ``x``), which converges linearly for small enough steps.

    Data: with ``problem.lower_data`` / ``upper_data`` given, each sampled block consumes
    ``B = batch_size`` minibatches of each level's :class:`~bilevel.methods._base.BatchStream`
    (blocks in the order drawn) and averages its oracles over them; the objectives are called
    as ``f(x, y_i, i, batch)``. ``None`` data means a deterministic level. Blocks are drawn from
    the global torch RNG, which checkpoints save: resumed runs repeat the uninterrupted one bit
    for bit under the conditions of :class:`~bilevel.methods._base.BatchStream`.

    Parameters (defaults, sources)
    ------------------------------
    blocks_per_iter:
        ``I``; ``None`` (default) means all ``m`` blocks. The paper's experiments sample a
        small fraction of the tasks; ``1 <= I <= m``.
    batch_size:
        ``B = 1`` minibatch per sampled block and level (library default).
    outer_step_size:
        ``eta``; ``0`` freezes ``x``. ``None`` (default; formerly ``0.01``):
        ``SINGLE_LOOP_RATIO * tau_v mu_y / L_h`` as :class:`SOBA`'s default, with ``mu_y``
        the smallest curvature of the blocks' ``f_i`` and ``L_h`` that of
        ``h = (1/m) sum_i h_i``, measured at ``(x0, y0)`` (:mod:`bilevel.methods._defaults`).
    inner_step_size:
        ``tau_y``; needs ``tau_y < 2 / L_y``. ``None`` (default; formerly ``0.1``):
        ``1 / L_y``, ``L_y`` the largest curvature of the blocks' ``f_i(x0, .)`` at ``y0``.
    linear_step_size:
        ``tau_v``; needs ``tau_v < 2 / L_y``. ``None`` (default; formerly ``0.1``):
        ``1 / L_y``.
    inner_momentum, linear_momentum:
        ``beta_y = beta_v = 0.9`` in ``(0, 1]``: weight of the new sample in the MSVR
        estimators (the official run scripts' ``alpha = 0.9``). ``1`` with ``I = m`` is plain
        stochastic gradient.
    outer_momentum:
        ``beta_x = 0.9`` in ``(0, 1]``: weight of the new sample in STORM (official scripts).
    msvr_gamma:
        ``gamma_y = gamma_v``. ``None`` (default): ``1 - beta`` when ``I = m`` (STORM, exact
        tracking without noise) and ``1`` otherwise (the official run scripts' fixed value);
        ``"theory"``: the MSVR formula ``(m - I) / (I (1 - beta)) + (1 - beta)`` of Jiang et
        al. (2022), which needs small ``beta`` and ``tau gamma L_y <~ 1`` (with ``m = 10``,
        ``I = 2``, ``beta = 0.5`` it gives ``gamma = 8.5`` and diverges at ``tau = 0.5 / L``);
        or a number.
    update_all_blocks:
        ``True`` (default, as the official code): every block's ``y_i``, ``v_i`` move every
        iteration with its stored estimators; ``False``: only the sampled blocks move.
    linear_bound:
        ``R``: radius of the ball each ``v_i`` is projected onto; ``None`` (default) disables
        the projection. The official code uses ``R = 10`` (``v_bound``), a bound that must
        exceed ``|v_i*| = |H_i^{-1} grad_y F_i|``: a smaller one moves the fixed point (the
        method then converges to a wrong ``x`` without any warning), so it is not a safe
        default.

    Oracle calls per iteration (counted): ``2 I B`` lower gradients and ``2 I B`` upper
    gradients (``grad_calls += 4 I B``) and ``4 I B`` products (``H v`` and ``B v`` at two
    points); :meth:`init` costs ``m`` times the oracles of one point.

    Accuracy (``tests/test_bsvrb.py``, three deterministic ``QuadraticBilevel`` blocks,
    ``dim x = 3``, ``dim y = 5``): see the test module for the measured relative errors
    ``||x - x*|| / ||x*||``.
    """

    blocks_per_iter: int | None = None
    batch_size: int = 1
    outer_step_size: float | None = None
    inner_step_size: float | None = None
    linear_step_size: float | None = None
    inner_momentum: float = 0.9
    linear_momentum: float = 0.9
    outer_momentum: float = 0.9
    msvr_gamma: float | str | None = None
    update_all_blocks: bool = True
    linear_bound: float | None = None
    name: str = field(default="bsvrb", init=False)
    stochastic = True

    def __post_init__(self) -> None:
        check_step_sizes(self.name, allow_zero=True, outer_step_size=self.outer_step_size)
        check_step_sizes(
            self.name,
            inner_step_size=self.inner_step_size,
            linear_step_size=self.linear_step_size,
        )
        for what in ("inner_momentum", "linear_momentum", "outer_momentum"):
            value = getattr(self, what)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"bsvrb: {what} must be in (0, 1], got {value}")
        if self.blocks_per_iter is not None and (
            not isinstance(self.blocks_per_iter, int) or self.blocks_per_iter < 1
        ):
            raise ValueError(
                f"bsvrb: blocks_per_iter must be a positive int or None, got "
                f"{self.blocks_per_iter!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"bsvrb: batch_size must be a positive int, got {self.batch_size!r}")
        if self.msvr_gamma is not None and self.msvr_gamma != "theory":
            check_positive(self.name, allow_zero=True, msvr_gamma=self.msvr_gamma)
        if self.linear_bound is not None:
            check_positive(self.name, linear_bound=self.linear_bound)

    # ------------------------------------------------------------------ helpers

    def _n_blocks(self, problem: BilevelProblem) -> tuple[int, int]:
        m = problem.n_blocks
        if m is None:
            raise ValueError(
                "bsvrb needs a multi-block problem: build it with BilevelProblem(..., "
                "n_blocks=m) and objectives F(x, y_i, i[, batch]), f(x, y_i, i[, batch])"
            )
        I = m if self.blocks_per_iter is None else self.blocks_per_iter
        if I > m:
            raise ValueError(f"bsvrb: blocks_per_iter={I} exceeds the problem's n_blocks={m}")
        return m, I

    def _gamma(self, beta: float, m: int, I: int) -> float:
        """MSVR correction weight (see ``msvr_gamma``)."""
        if self.msvr_gamma is None:
            return 1.0 - beta if I == m else 1.0
        if self.msvr_gamma != "theory":
            return float(self.msvr_gamma)
        if I == m:
            return 1.0 - beta
        if beta >= 1.0:
            raise ValueError(
                "bsvrb: MSVR with blocks_per_iter < n_blocks needs momentum parameters < 1"
            )
        return (m - I) / (I * (1.0 - beta)) + (1.0 - beta)

    def _samples(self, problem: BilevelProblem, state: MethodState) -> list[tuple[Any, Any]]:
        upper, lower = batch_streams(problem, state)
        return [(lower.next(), upper.next()) for _ in range(self.batch_size)]

    def _oracles(self, problem, x, y_i, v_i, i, samples):
        """Oracles of block ``i`` averaged over ``samples``."""
        out = None
        for lower_batch, upper_batch in samples:
            res = _block_oracles(problem, x, y_i, v_i, i, lower_batch, upper_batch)
            out = res if out is None else tuple(tree_add(a, b) for a, b in zip(out, res))
        if len(samples) > 1:
            out = tuple(tree_scale(1.0 / len(samples), a) for a in out)
        return out

    def _resolve_steps(self, problem: BilevelProblem, state: MethodState, m: int) -> None:
        """``state.extra["steps"]``, measured where ``None``. The mean lower objective
        ``(1/m) sum_i f_i`` has Hessian ``blockdiag(H_i) / m``: its extreme eigenvalues
        times ``m`` are those over the blocks."""
        steps = {
            "outer_step_size": self.outer_step_size,
            "inner_step_size": self.inner_step_size,
            "linear_step_size": self.linear_step_size,
        }
        if None in steps.values():
            cal = calibrate_into(
                state, problem, state.x, state.y, outer=self.outer_step_size is None
            )
            for what in ("inner_step_size", "linear_step_size"):
                if steps[what] is None:
                    steps[what] = cal.inner_step / m
            if steps["outer_step_size"] is None:  # with the blocks' mu_y = m * lower_min
                steps["outer_step_size"] = m * cal.tracking_step(
                    steps["linear_step_size"], SINGLE_LOOP_RATIO
                )
        state.extra["steps"] = steps

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        return step_info(state)

    # ------------------------------------------------------------------ method

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        m, _ = self._n_blocks(problem)
        for leaf in tree_flatten(y0)[0]:
            if leaf.dim() == 0 or leaf.shape[0] != m:
                raise ValueError(
                    f"bsvrb: every leaf of y needs a leading dimension n_blocks={m}, got "
                    f"shape {tuple(leaf.shape)}"
                )
        state = MethodState(x=x0, y=y0)
        self._resolve_steps(problem, state, m)
        v = tree_zeros_like(y0)
        us, ws, ds = [], [], []
        for i in range(m):
            samples = self._samples(problem, state)
            g, r, d = self._oracles(problem, x0, _block(y0, i), _block(v, i), i, samples)
            us.append(g)
            ws.append(r)
            ds.append(d)
        index = torch.arange(m)
        z = tree_scale(1.0 / m, ds[0] if m == 1 else _sum(ds))
        state.extra.update(
            v=v,
            u=_set_blocks(tree_zeros_like(y0), index, us),
            w=_set_blocks(tree_zeros_like(y0), index, ws),
            z=z,
            x_prev=x0,
            y_prev=y0,
            v_prev=v,
        )
        state.grad_calls += 2 * m * self.batch_size
        state.hvp_calls += 2 * m * self.batch_size
        return state

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        m, I = self._n_blocks(problem)
        gamma_y = self._gamma(self.inner_momentum, m, I)
        gamma_v = self._gamma(self.linear_momentum, m, I)
        beta_y, beta_v, beta_x = self.inner_momentum, self.linear_momentum, self.outer_momentum
        ex = state.extra
        x, y, v = state.x, state.y, ex["v"]
        x_prev, y_prev, v_prev = ex["x_prev"], ex["y_prev"], ex["v_prev"]
        u, w, z = ex["u"], ex["w"], ex["z"]

        blocks = torch.randperm(m)[:I] if I < m else torch.arange(m)
        new_u, new_w, d_cur, d_old = [], [], [], []
        for i in blocks.tolist():
            samples = self._samples(problem, state)
            y_i, v_i = _block(y, i), _block(v, i)
            g, r, d = self._oracles(problem, x, y_i, v_i, i, samples)
            g_p, r_p, d_p = self._oracles(
                problem, x_prev, _block(y_prev, i), _block(v_prev, i), i, samples
            )
            u_i = _msvr(_block(u, i), g, g_p, beta_y, gamma_y)
            w_i = _msvr(_block(w, i), r, r_p, beta_v, gamma_v)
            new_u.append(u_i)
            new_w.append(w_i)
            d_cur.append(d)
            d_old.append(d_p)
        d_bar = tree_scale(1.0 / I, _sum(d_cur))
        d_bar_old = tree_scale(1.0 / I, _sum(d_old))
        # z <- (1 - beta_x) z + beta_x D + (1 - beta_x) (D - D') = D + (1 - beta_x) (z - D')
        z = tree_add(d_bar, tree_scale(1.0 - beta_x, tree_sub(z, d_bar_old)))
        z = require_finite(z, "the hypergradient estimate z")

        ex["x_prev"], ex["y_prev"], ex["v_prev"] = x, y, v
        u = ex["u"] = _set_blocks(u, blocks, new_u)
        w = ex["w"] = _set_blocks(w, blocks, new_w)
        eta, tau_y, tau_v = run_steps(
            self, state, "outer_step_size", "inner_step_size", "linear_step_size"
        )
        y_next = tree_axpy(-tau_y, u, y)
        v_next = _project_blocks(tree_axpy(-tau_v, w, v), self.linear_bound)
        if not self.update_all_blocks and I < m:
            y_next = _set_blocks(y, blocks, [_block(y_next, i) for i in blocks.tolist()])
            v_next = _set_blocks(v, blocks, [_block(v_next, i) for i in blocks.tolist()])
        state.y = require_finite(y_next, "the inner variable y")
        ex["v"] = require_finite(v_next, "the linear-system variable v")
        ex["z"] = z
        state.x = require_finite(tree_axpy(-eta, z, x), "the outer variable x")
        state.hypergrad = z
        state.grad_calls += 4 * I * self.batch_size
        state.hvp_calls += 4 * I * self.batch_size
        return state


def _sum(trees: list[PyTree]) -> PyTree:
    total = trees[0]
    for t in trees[1:]:
        total = tree_add(total, t)
    return total


def _project_blocks(tree: PyTree, radius: float | None) -> PyTree:
    """Project each block ``tree[i]`` (all leaves together) onto the ball of ``radius``."""
    if radius is None:
        return tree
    leaves, spec = tree_flatten(tree)
    m = leaves[0].shape[0]
    sq = sum(leaf.reshape(m, -1).pow(2).sum(1) for leaf in leaves)
    scale = torch.clamp(radius / sq.sqrt().clamp_min(torch.finfo(sq.dtype).tiny), max=1.0)
    return tree_unflatten(
        [leaf * scale.reshape((m,) + (1,) * (leaf.dim() - 1)) for leaf in leaves], spec
    )


def _msvr(old: PyTree, new: PyTree, new_prev: PyTree, beta: float, gamma: float) -> PyTree:
    """``(1 - beta) old + beta new + gamma (new - new_prev)``."""
    out = tree_add(tree_scale(1.0 - beta, old), tree_scale(beta, new))
    return tree_axpy(gamma, tree_sub(new, new_prev), out)
