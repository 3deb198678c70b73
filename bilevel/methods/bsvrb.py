"""BSVRB: blockwise stochastic variance-reduced bilevel methods (Hu, Zhu, Yang et al.,
"Blockwise Stochastic Variance-Reduced Methods with Parallel Speedup for Multi-Block Bilevel
Optimization", ICML 2023): BSVRBv2 (Hessian-vector products, the default) and BSVRBv1
(tracked block Hessians).

The problem is multi-block (``BilevelProblem(..., n_blocks=m)``)::

    min_x (1/m) sum_i F_i(x, y_i*(x)),   y_i*(x) = argmin_y f_i(x, y),   i = 1 .. m

Every iteration samples ``I`` of the ``m`` blocks and updates, for those blocks only, MSVR
estimators (Jiang et al., ICML 2022) of ``grad_y f_i`` and of the residual of the linear
system ``H_i v_i = grad_y F_i`` (v2) or of the Hessian ``H_i`` (v1), then moves ``x`` along
a STORM estimator of the hypergradient averaged over the sampled blocks.

Verification. The update equations below were checked line by line against the official
code, ``quanqihu/BSVRB_ICML2023`` at commit ``a4ed3111bb428e31da359bec4a402fdfc102e5c7``,
``Hyperparameter_Optimization/HO/main.py`` (function ``BSVRB``, methods ``BSVRBv1`` and
``BSVRBv2``) and its run scripts ``run_BSVRBv1.sh``, ``run_BSVRBv2.sh``; the ``"theory"``
MSVR weight is that code's ``auto_gamma`` (``HO_with_distribution_shift/main_BSVRB.py``).
The paper's algorithm boxes (Algorithm 1, BSVRBv1; Algorithm 2, BSVRBv2) were not available
offline while this was written, so equation numbers are not cited; where the library
deliberately differs from the code, :class:`BSVRB` says so under "Differences".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.errors import ConvergenceWarning
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


def _block_v1_oracles(
    problem: BilevelProblem,
    x: PyTree,
    y_i: PyTree,
    hess_est: torch.Tensor,
    i: int,
    lower_batch: Any,
    upper_batch: Any,
) -> tuple[PyTree, torch.Tensor, PyTree]:
    """``(grad_y f_i, d2_yy f_i, grad_x F_i - B_i Hhat^{-1} grad_y F_i)`` at ``(x, y_i)``,
    the Hessian as a dense matrix over the flattened leaves of ``y_i`` and ``Hhat`` the
    tracked estimate ``hess_est``."""
    with torch.enable_grad():
        x_t, x_leaves, x_spec = track(x)
        y_t, y_leaves, y_spec = track(y_i)
        lower = problem.block_lower_value(x_t, y_t, i, lower_batch)
        grad_y = grad(lower, y_leaves, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grad_y])
        rows = []
        for k in range(flat.numel()):
            row = grad(flat[k], y_leaves, retain_graph=True)
            rows.append(torch.cat([r.reshape(-1) for r in row]))
        hessian = torch.stack(rows).detach()
        upper = problem.block_upper_value(x_t, y_t, i, upper_batch)
        upper_grads = grad(upper, x_leaves + y_leaves)
        n = len(x_leaves)
        gy_F = torch.cat([g.reshape(-1) for g in upper_grads[n:]]).detach()
        v = torch.linalg.solve(hess_est, gy_F)
        v_leaves, offset = [], 0
        for leaf in y_leaves:
            v_leaves.append(v[offset : offset + leaf.numel()].reshape(leaf.shape))
            offset += leaf.numel()
        bv = grad(grad_y, x_leaves, v_leaves)
    g = tree_unflatten([t.detach() for t in grad_y], y_spec)
    d = tree_sub(tree_unflatten(upper_grads[:n], x_spec), tree_unflatten(bv, x_spec))
    return g, hessian, d


def _bound_hessian(matrix: torch.Tensor, bound: float | None) -> torch.Tensor:
    """The official code's ``proj_mat``: scale ``matrix`` up to Frobenius norm ``bound``
    when it is smaller (a lower bound that keeps the estimate invertible)."""
    if bound is None:
        return matrix
    norm = float(torch.linalg.matrix_norm(matrix))
    return matrix * (bound / norm) if norm < bound else matrix


@dataclass
class BSVRB(Method):
    """BSVRB (Hu, Zhu, Yang et al., ICML 2023) for multi-block problems
    (``problem.n_blocks = m``): ``variant="v2"`` (default, Hessian-vector products) or
    ``"v1"`` (tracked block Hessians, dense: small ``y_i`` only).

    Notation: ``g_i = grad_y f_i``, ``r_i(x, y_i, v_i) = H_i v_i - grad_y F_i`` (the gradient
    in ``v_i`` of ``1/2 v^T H_i v - v^T grad_y F_i``, minimised at ``v_i* = H_i^{-1} grad_y
    F_i``), ``D_i(x, y_i, v_i) = grad_x F_i - B_i v_i`` with ``H_i = d2_yy f_i``,
    ``B_i = d2_xy f_i``; ``(1/m) sum_i D_i(x, y_i*(x), v_i*(x))`` is the hypergradient.
    At iteration ``t`` the state holds ``x_t``, every block's ``y_i^t``, ``v_i^t`` (v2) or
    ``Hhat_i^t`` (v1), the previous iterates ``x_{t-1}``, ``y^{t-1}``, ``v^{t-1}``
    (``Hhat^{t-1}``), the MSVR estimators ``u_i`` (of ``g_i``) and ``w_i`` (of ``r_i``),
    the STORM estimator ``z`` and each block's delay count ``c_i`` (iterations since it was
    last sampled).

    Iteration ``t`` of ``variant="v2"`` (the official ``BSVRBv2``)::

        I_t = the next I blocks of a random permutation of the m blocks, redrawn every
              floor(m / I) iterations                    (block_sampling="cyclic")
        for i in I_t, with one sample S_i (B lower and B upper minibatches, averaged):
            a_i = (x_t, y_i^t, v_i^t),  p_i = (x_{t-1}, y_i^{t-1}, v_i^{t-1})
            u_i <- (1 - alpha) u_i + alpha g_i(a_i; S_i) + gamma (g_i(a_i; S_i) - g_i(p_i; S_i))
            w_i <- (1 - alpha) w_i + alpha r_i(a_i; S_i) + gamma (r_i(a_i; S_i) - r_i(p_i; S_i))
        G_t = (1/I) sum_{i in I_t} D_i(a_i; S_i),   G'_t = (1/I) sum_{i in I_t} D_i(p_i; S_i)
        z   <- (1 - beta) (z - G'_t) + G_t                                       (STORM)
        for i in I_t:  y_i <- y_i - tau (c_i + 1) u_i,
                       v_i <- P_R(v_i - tau_v (c_i + 1) w_i),   c_i <- 0
        for i not in I_t:  c_i <- c_i + 1                     (y_i, v_i unchanged)
        x_{t+1} = x_t - eta z

    ``P_R`` projects ``v_i`` onto the ball of radius ``R = linear_bound`` (``None``: no
    projection). ``variant="v1"`` (the official ``BSVRBv1``) replaces ``v_i`` by the
    tracked Hessian::

        Hhat_i <- P_H((1 - alpha) Hhat_i + alpha H_i(a_i; S_i) + gamma (H_i(a_i; S_i) - H_i(p_i; S_i)))
        G_t  uses D_i(a_i; S_i) = grad_x F_i - B_i (Hhat_i^t)^{-1} grad_y F_i  at a_i,
        G'_t uses Hhat_i^{t-1} at p_i                    (the estimates before this update)
        y_i <- y_i - tau u_i   for every block i                       (block_update="all")

    where ``P_H`` is ``hessian_bound`` (see below). The correction terms are evaluated with
    the same sample at the current and the previous point (single probe per sampled
    block), as MSVR and STORM require. A block skipped since ``s`` has ``y_i^{t-1} =
    y_i^t``, so its correction only sees the change of ``x``, as in the code.

    With ``I = m`` and no noise the MSVR recursion with ``gamma = 1 - alpha`` keeps ``u_i =
    g_i`` and ``w_i = r_i`` exactly, and ``gamma = 1`` (the default) differs from it by a
    geometrically forgotten lag; either way the fixed points are those of deterministic
    single-loop AID, reached linearly for small enough steps (``tests/methods/test_bsvrb.py``
    reaches ``x*`` to ``1e-8``).

    Differences from the official code (each a deliberate, documented choice):

    * ``linear_bound`` defaults to ``None`` (official: ``R = 10`` always). A bound below
      ``|v_i*| = |H_i^{-1} grad_y F_i|`` moves the fixed point, so ``x`` converges to a
      wrong point; with a bound set, :func:`bilevel.solve` warns
      (:class:`~bilevel.errors.ConvergenceWarning`) when it is active at the end.
    * ``hessian_bound`` (v1) defaults to ``None``; the official ``H_bound = 10`` rescales
      a Hessian estimate of Frobenius norm below 10 up to 10, which changes its inverse.
    * Initialisation: the code draws ``x``, ``y``, ``v``, every estimator and ``Hhat``
      uniformly in ``[0, 1)``; here ``x0``, ``y0`` are the caller's, ``v = 0``, and
      :meth:`init` sets ``u_i``, ``w_i`` (``Hhat_i``) for every block and ``z`` (all blocks
      averaged) from one sample each, and the previous iterates equal to the first ones.
    * Step sizes: ``eta``, ``tau`` and ``tau_v`` are measured from the problem when left at
      ``None`` (the code's ``eta = 1e-3``, ``tau = tau_v = 1`` are a8a-specific).
    * ``blocks_per_iter=None`` means all ``m`` blocks (the scripts use ``I = 10`` of
      ``m = 100``); ``batch_size`` counts minibatches of the problem's data streams per
      sampled block (the code's 32 is a number of data points per minibatch).

    Options that are not the official behaviour, kept for the reasons given:
    ``block_update="sampled"`` (sampled blocks move by ``tau`` without the delay factor)
    and ``"all"`` (every block moves with its stored estimators: the official v1 update,
    selectable for v2); ``block_sampling="uniform"`` (fresh blocks without replacement every
    iteration, the sampling the paper's analysis assumes); ``msvr_gamma="theory"``.

    ``state.hypergrad`` is ``z``; ``state.extra`` holds ``v`` (or ``H``), ``u``, ``w``,
    ``z``, the previous iterates, the delay counts, the block permutation and the streams.

    Data: with ``problem.lower_data`` / ``upper_data`` given, each sampled block consumes
    ``B = batch_size`` minibatches of each level's :class:`~bilevel.methods._base.BatchStream`
    (blocks in the order drawn) and averages its oracles over them; the objectives are called
    as ``f(x, y_i, i, batch)``. ``None`` data means a deterministic level. Blocks are drawn from
    the global torch RNG and the permutation is part of the state, so resumed runs repeat the
    uninterrupted one bit for bit under the conditions of
    :class:`~bilevel.methods._base.BatchStream`.

    Parameters (defaults, sources)
    ------------------------------
    variant:
        ``"v2"`` (default) or ``"v1"``.
    blocks_per_iter:
        ``I``; ``None`` (default) means all ``m`` blocks; ``1 <= I <= m``. The official
        scripts use ``I = 10`` of ``m = 100``; a parallel speed-up study must retune ``tau``
        for each ``I`` (the code diverges with ``I = 1``, ``tau = 1``).
    batch_size:
        ``B = 1`` minibatch per sampled block and level.
    outer_step_size:
        ``eta``; ``0`` freezes ``x``. ``None`` (default): ``SINGLE_LOOP_RATIO * tau_v mu_y /
        L_h`` as :class:`SOBA`'s default, with ``mu_y`` the smallest curvature of the
        blocks' ``f_i`` and ``L_h`` that of ``h = (1/m) sum_i h_i``, measured at
        ``(x0, y0)`` (:mod:`bilevel.methods._defaults`).
    inner_step_size, linear_step_size:
        ``tau``, ``tau_v``; need ``tau < 2 / L_y``. ``None`` (default): ``1 / L_y``, ``L_y``
        the largest curvature of the blocks' ``f_i(x0, .)`` at ``y0``, times ``I / m`` with
        ``block_update="delay"``: a block then moves by ``tau (c_i + 1) = tau m / I`` once per
        pass of the cyclic sampler (``I`` dividing ``m``), so ``tau`` must shrink like
        ``I / m`` for that step to stay below ``2 / L_y`` (the official code diverges with
        ``I = 1``, ``tau = 1``), and divided by ``1 + gamma`` for the MSVR correction
        (see ``msvr_gamma``); the default outer step follows ``tau_v``.
    inner_momentum, linear_momentum:
        ``alpha = 0.9`` in ``(0, 1]`` (official ``--alpha 0.9``), weight of the new sample
        in the MSVR estimators of ``g_i`` and of ``r_i`` (or ``H_i``).
    outer_momentum:
        ``beta = 0.9`` in ``(0, 1]`` (official ``--beta 0.9``), STORM weight.
    msvr_gamma:
        ``gamma``: ``1.0`` (default, official ``--gamma 1`` for every ``I``), a number
        ``>= 0``, or ``"theory"``: the code's ``auto_gamma``, ``(m - I) / (I (1 - alpha))``
        (``0`` when ``alpha = 1``; ``0`` when ``I = m``).
    block_update:
        ``None`` (default): ``"delay"`` for v2 (sampled blocks move by ``tau (c_i + 1)``)
        and ``"all"`` for v1, as the official code; or ``"sampled"``, ``"all"``.
    block_sampling:
        ``"cyclic"`` (default, official) or ``"uniform"``.
    linear_bound:
        ``R`` for v2 (see Differences); ``None`` by default.
    hessian_bound:
        v1 only: lower bound on the Frobenius norm of each ``Hhat_i`` (official ``proj_mat``
        with ``H_bound``); ``None`` by default.

    Oracle calls per iteration (counted): ``2 I B`` lower gradients and ``2 I B`` upper
    gradients (``grad_calls += 4 I B``) and ``4 I B`` products (``H v`` and ``B v`` at two
    points; v1: ``2 n_y + 2`` per sample and point, ``n_y`` the size of ``y_i``);
    :meth:`init` costs ``m`` times the oracles of one point.
    """

    variant: str = "v2"
    blocks_per_iter: int | None = None
    batch_size: int = 1
    outer_step_size: float | None = None
    inner_step_size: float | None = None
    linear_step_size: float | None = None
    inner_momentum: float = 0.9
    linear_momentum: float = 0.9
    outer_momentum: float = 0.9
    msvr_gamma: float | str = 1.0
    block_update: str | None = None
    block_sampling: str = "cyclic"
    linear_bound: float | None = None
    hessian_bound: float | None = None
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
        if self.msvr_gamma != "theory":
            check_positive(self.name, allow_zero=True, msvr_gamma=self.msvr_gamma)
        for what, allowed in (
            ("variant", ("v1", "v2")),
            ("block_update", (None, "delay", "sampled", "all")),
            ("block_sampling", ("cyclic", "uniform")),
        ):
            if getattr(self, what) not in allowed:
                raise ValueError(
                    f"bsvrb: {what} must be one of {allowed}, got {getattr(self, what)!r}"
                )
        if self.linear_bound is not None:
            check_positive(self.name, linear_bound=self.linear_bound)
        if self.hessian_bound is not None:
            check_positive(self.name, hessian_bound=self.hessian_bound)

    # ------------------------------------------------------------------ helpers

    @property
    def update_rule(self) -> str:
        """The resolved ``block_update``."""
        if self.block_update is not None:
            return self.block_update
        return "delay" if self.variant == "v2" else "all"

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

    def gamma(self, m: int, I: int) -> float:
        """MSVR correction weight (see ``msvr_gamma``)."""
        if self.msvr_gamma != "theory":
            return float(self.msvr_gamma)
        alpha = self.inner_momentum
        if alpha >= 1.0:
            return 0.0
        return (m - I) / (I * (1.0 - alpha))

    def _draw(self, state: MethodState, m: int, I: int) -> torch.Tensor:
        """The blocks of this iteration (see ``block_sampling``)."""
        if self.block_sampling == "uniform":
            return torch.randperm(m)[:I] if I < m else torch.arange(m)
        count = state.extra.get("draws", 0)
        chunk = count % (m // I)
        if chunk == 0:
            state.extra["perm"] = torch.randperm(m)
        state.extra["draws"] = count + 1
        return state.extra["perm"][chunk * I : (chunk + 1) * I]

    def _samples(self, problem: BilevelProblem, state: MethodState) -> list[tuple[Any, Any]]:
        upper, lower = batch_streams(problem, state)
        return [(lower.next(), upper.next()) for _ in range(self.batch_size)]

    def _oracles(self, problem, x, y_i, v_i, i, samples):
        """Oracles of block ``i`` averaged over ``samples`` (``v_i``: a tensor ``Hhat_i``
        for v1)."""
        fn = _block_v1_oracles if self.variant == "v1" else _block_oracles
        out = None
        for lower_batch, upper_batch in samples:
            res = fn(problem, x, y_i, v_i, i, lower_batch, upper_batch)
            out = res if out is None else tuple(tree_add(a, b) for a, b in zip(out, res))
        if len(samples) > 1:
            out = tuple(tree_scale(1.0 / len(samples), a) for a in out)
        return out

    def _resolve_steps(self, problem: BilevelProblem, state: MethodState, m: int) -> None:
        """``state.extra["steps"]``, measured where ``None``. The mean lower objective
        ``(1/m) sum_i f_i`` has Hessian ``blockdiag(H_i) / m``: its extreme eigenvalues
        times ``m`` are those over the blocks."""
        steps: dict[str, float | None] = {
            "outer_step_size": self.outer_step_size,
            "inner_step_size": self.inner_step_size,
            "linear_step_size": self.linear_step_size,
        }
        if None in steps.values():
            cal = calibrate_into(
                state, problem, state.x, state.y, outer=self.outer_step_size is None
            )
            _, I = self._n_blocks(problem)
            # "delay": a block moves once per pass of m / I iterations by (m / I) tau
            share = I / m if self.update_rule == "delay" else 1.0
            # The MSVR correction gamma (g(y_new) - g(y_old)) adds up to gamma L ||dy|| to
            # the estimator per step, so the measured step is divided by 1 + gamma: with
            # the official gamma = 1 the undivided 1 / L diverges on a quadratic with lower
            # Hessian eigenvalues in [1, 3] (tests/methods/test_defaults.py), 1 / (2 L) reaches 1e-13.
            share /= 1.0 + self.gamma(m, I)
            for what in ("inner_step_size", "linear_step_size"):
                if steps[what] is None:
                    steps[what] = share * cal.inner_step / m
            linear_step = steps["linear_step_size"]
            assert linear_step is not None  # filled just above
            if steps["outer_step_size"] is None:  # with the blocks' mu_y = m * lower_min
                steps["outer_step_size"] = m * cal.tracking_step(linear_step, SINGLE_LOOP_RATIO)
        state.extra["steps"] = steps

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        info = step_info(state)
        active = state.extra.get("bound_active")
        if active:
            info["linear_bound_active"] = True
            warnings.warn(
                f"bsvrb: the projection of v onto the ball of radius linear_bound="
                f"{self.linear_bound} is active at the last iterate (blocks {active}); the "
                "limit point is then not a stationary point of the bilevel problem: raise "
                "linear_bound or set it to None",
                ConvergenceWarning,
                stacklevel=4,
            )
        return info

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
        index = torch.arange(m)
        us, ws, ds = [], [], []
        if self.variant == "v1":
            leaves = tree_flatten(y0)[0]
            n_y = sum(leaf[0].numel() for leaf in leaves)
            eye = torch.eye(n_y, dtype=leaves[0].dtype, device=leaves[0].device)
            hess = []
            for i in range(m):
                samples = self._samples(problem, state)
                g, h, _ = self._oracles(problem, x0, _block(y0, i), eye, i, samples)
                h = _bound_hessian(h, self.hessian_bound)
                g, _, d = self._oracles(problem, x0, _block(y0, i), h, i, samples)
                us.append(g)
                hess.append(h)
                ds.append(d)
            H = torch.stack(hess)
            state.extra.update(H=H, H_prev=H.clone())
        else:
            v = tree_zeros_like(y0)
            for i in range(m):
                samples = self._samples(problem, state)
                g, r, d = self._oracles(problem, x0, _block(y0, i), _block(v, i), i, samples)
                us.append(g)
                ws.append(r)
                ds.append(d)
            state.extra.update(v=v, v_prev=v, w=_set_blocks(tree_zeros_like(y0), index, ws))
        state.extra.update(
            u=_set_blocks(tree_zeros_like(y0), index, us),
            z=tree_scale(1.0 / m, _sum(ds)),
            x_prev=x0,
            y_prev=y0,
            delay=torch.zeros(m, dtype=torch.long),
        )
        state.grad_calls += 2 * m * self.batch_size
        state.hvp_calls += 2 * m * self.batch_size
        return state

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        m, I = self._n_blocks(problem)
        gamma = self.gamma(m, I)
        alpha_y, alpha_v, beta = self.inner_momentum, self.linear_momentum, self.outer_momentum
        v1 = self.variant == "v1"
        ex = state.extra
        x, y, x_prev, y_prev = state.x, state.y, ex["x_prev"], ex["y_prev"]
        u, z = ex["u"], ex["z"]
        cur = ex["H"] if v1 else ex["v"]
        prev = ex["H_prev"] if v1 else ex["v_prev"]

        blocks = self._draw(state, m, I)
        new_u, new_second, d_cur, d_old = [], [], [], []
        for i in blocks.tolist():
            samples = self._samples(problem, state)
            c_i, p_i = (cur[i], prev[i]) if v1 else (_block(cur, i), _block(prev, i))
            g, r, d = self._oracles(problem, x, _block(y, i), c_i, i, samples)
            g_p, r_p, d_p = self._oracles(problem, x_prev, _block(y_prev, i), p_i, i, samples)
            new_u.append(_msvr(_block(u, i), g, g_p, alpha_y, gamma))
            if v1:
                h = _msvr(cur[i], r, r_p, alpha_v, gamma)
                new_second.append(_bound_hessian(h, self.hessian_bound))
            else:
                new_second.append(_msvr(_block(ex["w"], i), r, r_p, alpha_v, gamma))
            d_cur.append(d)
            d_old.append(d_p)
        # z <- (1 - beta) (z - G') + G
        z = tree_add(
            tree_scale(1.0 / I, _sum(d_cur)),
            tree_scale(1.0 - beta, tree_sub(z, tree_scale(1.0 / I, _sum(d_old)))),
        )
        z = require_finite(z, "the hypergradient estimate z")
        u = ex["u"] = _set_blocks(u, blocks, new_u)
        if v1:
            second = cur.clone()
            second[blocks] = torch.stack(new_second)
        else:
            second = ex["w"] = _set_blocks(ex["w"], blocks, new_second)

        eta, tau_y, tau_v = run_steps(
            self, state, "outer_step_size", "inner_step_size", "linear_step_size"
        )
        delay = ex["delay"]
        sampled = torch.zeros(m, dtype=torch.bool)
        sampled[blocks] = True
        rule = self.update_rule
        if rule == "all":
            factor = torch.ones(m)
        elif rule == "sampled":
            factor = sampled.to(torch.get_default_dtype())
        else:  # "delay": c_i + 1 for the sampled blocks, 0 for the others
            factor = torch.where(sampled, delay + 1, torch.zeros_like(delay)).to(
                torch.get_default_dtype()
            )
        ex["delay"] = torch.where(sampled, torch.zeros_like(delay), delay + 1)
        y_next = _axpy_blocks(-tau_y, factor, u, y)
        ex["x_prev"], ex["y_prev"] = x, y
        if v1:
            ex["H_prev"], ex["H"] = cur, second
        else:
            v_next = _axpy_blocks(-tau_v, factor, second, cur)
            v_next, active = _project_blocks(v_next, self.linear_bound)
            ex["v_prev"] = cur
            ex["v"] = require_finite(v_next, "the linear-system variable v")
            ex["bound_active"] = active
        state.y = require_finite(y_next, "the inner variable y")
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


def _axpy_blocks(a: float, factor: torch.Tensor, tree: PyTree, base: PyTree) -> PyTree:
    """``base[i] + a factor[i] tree[i]`` for every block ``i``."""
    leaves, spec = tree_flatten(tree)
    base_leaves = tree_flatten(base)[0]
    out = []
    for leaf, b in zip(leaves, base_leaves):
        f = factor.to(dtype=leaf.dtype, device=leaf.device).reshape((-1,) + (1,) * (leaf.dim() - 1))
        out.append(b + a * f * leaf)
    return tree_unflatten(out, spec)


def _project_blocks(tree: PyTree, radius: float | None) -> tuple[PyTree, list[int]]:
    """Project each block ``tree[i]`` (all leaves together) onto the ball of ``radius``;
    also the blocks the projection moved."""
    if radius is None:
        return tree, []
    leaves, spec = tree_flatten(tree)
    m = leaves[0].shape[0]
    sq = sum(leaf.reshape(m, -1).pow(2).sum(1) for leaf in leaves)
    scale = torch.clamp(radius / sq.sqrt().clamp_min(torch.finfo(sq.dtype).tiny), max=1.0)
    active = torch.nonzero(scale < 1.0).flatten().tolist()
    out = [leaf * scale.reshape((m,) + (1,) * (leaf.dim() - 1)) for leaf in leaves]
    return tree_unflatten(out, spec), active


def _msvr(old: PyTree, new: PyTree, new_prev: PyTree, alpha: float, gamma: float) -> PyTree:
    """``(1 - alpha) old + alpha new + gamma (new - new_prev)`` (the code's
    ``(1 - alpha) old + (alpha + gamma) new - gamma new_prev``)."""
    out = tree_add(tree_scale(1.0 - alpha, old), tree_scale(alpha, new))
    return tree_axpy(gamma, tree_sub(new, new_prev), out)
