"""The outer-loop driver shared by all bilevel methods: history, stopping, callbacks,
progress bar and checkpoint/resume."""

from __future__ import annotations

import collections
import functools
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.errors import ConvergenceWarning, DivergenceError, NonFiniteError
from bilevel.linalg import Spectrum
from bilevel.problem import BilevelProblem, BilevelResult
from bilevel.solvers._curvature import MAX_ESCAPES, curvature, escape, is_negative
from bilevel.tree import PyTree, check_finite, check_tensor_leaves, tree_map, tree_norm


@dataclass
class MethodState:
    """Everything a method carries from one outer iteration to the next.

    ``x`` and ``y`` are the outer and inner iterates; ``extra`` holds method-specific tensors
    (warm starts, momentum, ...); ``grad_calls``/``hvp_calls`` are cumulative oracle counts;
    ``hypergrad`` is the last hypergradient estimate (for stopping and the history).
    """

    x: PyTree
    y: PyTree
    extra: dict[str, Any] = field(default_factory=dict)
    grad_calls: int = 0
    hvp_calls: int = 0
    hypergrad: PyTree | None = None


class Method:
    """An outer algorithm: ``init`` builds the state, ``step`` performs one outer iteration.

    Subclasses are dataclasses of hyperparameters whose docstrings state the update
    equations. Stochastic methods draw minibatches through :class:`BatchStream`.
    """

    name = "method"
    stochastic = False
    #: Whether the method handles constraints and bounds (``BilevelProblem.is_constrained``).
    handles_constraints = False
    #: Whether the method uses gradients only: its default step sizes and the final
    #: curvature check then use gradient differences instead of Hessian-vector products.
    hessian_free = False

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        return MethodState(x=x0, y=y0)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        raise NotImplementedError(f"{type(self).__name__} must define step")

    def after_escape(self, problem: BilevelProblem, state: MethodState) -> None:
        """Called by :func:`run_method` after it moved ``state.y`` off negative curvature
        of the lower level: a step size measured at the start, where the curvature may
        have been quite different, is measured again (it only ever shrinks)."""
        from bilevel.methods._defaults import remeasure_inner_step

        remeasure_inner_step(self, problem, state)

    def result_info(self, problem: BilevelProblem, state: MethodState) -> dict[str, Any]:
        """Method-specific diagnostics for :attr:`BilevelResult.info` (e.g. a certified
        lower-level gap or constraint violations); empty by default."""
        return {}


def require_finite(tree: PyTree, what: str) -> PyTree:
    """Return ``tree``, raising :class:`~bilevel.errors.DivergenceError` if it is not finite."""
    for leaf in torch.utils._pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor) and not bool(torch.isfinite(leaf).all()):
            raise DivergenceError(f"{what} became NaN or infinite (step sizes too large?)")
    return tree


class BatchStream:
    """Endless iterator over an iterable of minibatches, re-iterated at the end of each pass.

    ``data`` is any iterable of minibatches (a list, a generator-producing iterable, a
    :class:`torch.utils.data.DataLoader`, ...); ``None`` means a deterministic problem, and
    :meth:`next` then returns ``None`` (call the objectives without a batch). ``source``
    names the :class:`~bilevel.BilevelProblem` attribute the data comes from
    (``"upper_data"`` or ``"lower_data"``; by default ``name`` when it is one of these, see
    also :meth:`for_problem`), so that a stream restored from a checkpoint can be re-attached
    to the problem by :func:`run_method`.

    Notes
    -----
    For checkpoints, a stream pickles only its position: ``delivered`` (batches handed out),
    ``passes`` (``iter(data)`` calls), ``pass_start`` (``delivered`` when the current pass
    began) and ``pass_rng`` (the global torch CPU RNG state just before the current pass
    called ``iter(data)``), never the data or a live iterator. :meth:`attach` re-binds the
    data and fast-forwards: earlier passes are replayed in full (so an iterable with its own
    seeded generator advances it as it did; lists and tuples skip this), then the current
    pass is re-created from ``pass_rng`` and its first ``delivered - pass_start`` batches are
    skipped; the global RNG state is restored afterwards. The batches after a resume are
    therefore those an uninterrupted run would have drawn when the iterable

    * replays the same batches when re-iterated (lists, tuples, deterministic iterables), or
    * draws its randomness from the global torch CPU RNG (``DataLoader(shuffle=True)`` with
      ``num_workers=0``, a generator sampling ``torch.randint`` per batch), or
    * draws it from its own ``torch.Generator``, rebuilt with the same seed before resuming;

    random state hidden elsewhere (NumPy/Python RNGs, DataLoader worker processes) is not
    reproduced. A stream without a ``source`` pickles its data too (which must then be
    picklable) and re-attaches to it when unpickled.
    """

    def __init__(self, data: Iterable[Any] | None, name: str, *, source: str | None = None):
        if data is not None and not (
            hasattr(type(data), "__iter__") or hasattr(type(data), "__getitem__")
        ):
            raise TypeError(
                f"{name} must be an iterable of minibatches (or None), got {type(data).__name__}"
            )
        self.data = data
        self.name = name
        if source is None and name in _PROBLEM_DATA:
            source = name
        self.source = source
        self.delivered = 0
        self.passes = 0
        self.pass_start = 0
        self.pass_rng: torch.Tensor | None = None
        self.has_data = data is not None
        self.length = _length(data)
        self._iterator: Iterator[Any] | None = None
        self._attached = True

    @property
    def attached(self) -> bool:
        """False for a stream restored from a checkpoint until :meth:`attach` is called."""
        return self._attached

    @classmethod
    def for_problem(cls, problem: BilevelProblem, level: str) -> BatchStream:
        """The stream over ``problem.upper_data`` (``level="upper"``) or ``lower_data``."""
        if level not in ("upper", "lower"):
            raise ValueError(f"level must be 'upper' or 'lower', got {level!r}")
        source = f"{level}_data"
        return cls(getattr(problem, source), source)

    def next(self) -> Any:
        """The next minibatch (``None`` for deterministic data)."""
        if not self._attached:
            raise RuntimeError(
                f"the {self.name} stream was restored from a checkpoint without its data; "
                "call attach(data) (run_method does it on resume)"
            )
        if self.data is None:
            return None
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._start_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise ValueError(f"{self.name} yields no minibatch") from None
        self.delivered += 1
        return batch

    def _start_pass(self) -> None:
        self.pass_rng = torch.get_rng_state()
        self.pass_start = self.delivered
        self.passes += 1
        self._iterator = iter(self.data)

    def attach(self, data: Iterable[Any] | None) -> BatchStream:
        """Bind ``data`` to a stream restored from a checkpoint and fast-forward it to the
        saved position (see the class docstring); the global RNG state is left unchanged."""
        if (data is not None) != self.has_data:
            raise ValueError(
                f"the checkpoint's {self.name} was {'an iterable' if self.has_data else 'None'}"
                f", the problem's is {'None' if data is None else 'an iterable'}"
            )
        length = _length(data)
        if self.length is not None and length is not None and length != self.length:
            raise ValueError(
                f"the checkpoint's {self.name} had {self.length} minibatches, the problem's "
                f"has {length}: resume with the data the run was started with"
            )
        self.data, self._iterator, self._attached = data, None, True
        if data is None or self.delivered == 0:
            return self
        rng = torch.get_rng_state()
        try:
            if not isinstance(data, (list, tuple)):
                for _ in range(self.passes - 1):  # earlier passes, for iterators' own state
                    collections.deque(iter(data), maxlen=0)
            if self.pass_rng is not None:
                torch.set_rng_state(self.pass_rng)
            iterator = iter(data)
            skip = self.delivered - self.pass_start
            if sum(1 for _ in itertools.islice(iterator, skip)) < skip:
                raise ValueError(
                    f"{self.name} yields fewer minibatches than when the checkpoint was "
                    "written: resume with the data the run was started with"
                )
            self._iterator = iterator
        finally:
            torch.set_rng_state(rng)
        return self

    def __getstate__(self) -> dict[str, Any]:
        keys = ["name", "source", "delivered", "passes", "pass_start", "pass_rng", "has_data"]
        saved = {key: getattr(self, key) for key in [*keys, "length"]}
        if self.source is None:  # nothing to re-attach to: keep the data itself
            saved["data"] = self.data
        return saved

    def __setstate__(self, saved: dict[str, Any]) -> None:
        data = saved.pop("data", None)
        self.__dict__.update(saved)
        self.data, self._iterator, self._attached = None, None, False
        if self.source is None:
            self.attach(data)


_PROBLEM_DATA = ("upper_data", "lower_data")


def _length(data: Any) -> int | None:
    try:
        return len(data) if data is not None else None
    except TypeError:
        return None


def _attach_streams(extra: Any, problem: BilevelProblem) -> None:
    """Re-attach every :class:`BatchStream` with a ``source`` found in ``extra`` (nested
    dicts, lists and tuples) to the corresponding data of ``problem``."""
    if isinstance(extra, BatchStream):
        if extra.source is not None and not extra.attached:
            extra.attach(getattr(problem, extra.source))
    elif isinstance(extra, dict):
        for value in extra.values():
            _attach_streams(value, problem)
    elif isinstance(extra, (list, tuple)):
        for value in extra:
            _attach_streams(value, problem)


def _lower_curvature(
    problem: BilevelProblem, method: Method, x: PyTree, y: PyTree
) -> Spectrum | None:
    """:func:`bilevel.solvers.curvature` of ``f(x, .)`` at ``y`` (gradient differences for a
    Hessian-free method); ``None`` where the check does not apply: minibatches (one
    sampled Hessian says little) or a constrained lower level (the second-order condition
    is then on the reduced Hessian)."""
    if problem.upper_data is not None or problem.lower_data is not None:
        return None
    if _has_lower_constraints(problem):
        return None
    x = _detach(x)

    def fn(y_: PyTree) -> torch.Tensor:
        return problem.lower_value(x, y_)

    matvec = None
    if method.hessian_free:
        from bilevel.methods._defaults import Oracle

        matvec = Oracle(exact=False).hessian(fn, _detach(y))
    return curvature(fn, y, matvec)


#: Geometric-growth divergence rule of :func:`run_method` (see :class:`_GrowthMonitor`).
GROWTH_FACTOR = 1.2
GROWTH_WINDOW = 30
GROWTH_SCALE = 1e6


def _overflow_scale(dtype: torch.dtype) -> float:
    """``sqrt(finfo(dtype).max)``: beyond it, squares (norms, quadratic objectives) of the
    value are not representable in ``dtype`` (1.3e154 in float64, 1.8e19 in float32).
    Half-precision types (float16: 256) are exempt (``inf``): legitimate iterates exceed
    that scale, and their overflow shows up as non-finite values anyway."""
    info = torch.finfo(dtype)
    if info.bits <= 16:
        return math.inf
    return math.sqrt(info.max)


def _max_abs(tree: PyTree) -> tuple[float, float]:
    """``(max |entry|, the smallest overflow scale of the dtypes present)`` over the
    floating-point leaves of ``tree``."""
    largest, scale = 0.0, math.inf
    for leaf in torch.utils._pytree.tree_leaves(tree):
        if not (isinstance(leaf, torch.Tensor) and leaf.numel()):
            continue
        if leaf.is_floating_point() or leaf.is_complex():
            largest = max(largest, float(leaf.detach().abs().max()))
            scale = min(scale, _overflow_scale(leaf.dtype))
    return largest, scale


@dataclass
class _GrowthMonitor:
    """Divergence of finite iterates: ``a_k = max |entry of (x_k, y_k)|`` is reported as
    diverged at iteration ``k`` when

    * ``a_k > sqrt(finfo(dtype).max)`` (the overflow scale: squared norms and quadratic
      objectives of the iterate are no longer finite), or
    * it grew geometrically: ``a_j > GROWTH_FACTOR * a_(j-1)`` (1.2) at each of the last
      ``GROWTH_WINDOW`` (30) iterations and ``a_k > GROWTH_SCALE * (1 + a_0)`` (1e6 times
      the initial scale).

    A run converging to a limit, however far from the start, cannot grow by a fixed factor
    at every one of 30 consecutive iterations (polynomial growth ``k^d`` has ratios
    ``((k+1)/k)^d`` below 1.2 after ``k ~ 5 d``); an unstable iteration (step size too
    large) grows like ``rho^k`` and is caught as soon as it leaves the initial scale.
    """

    initial: float
    previous: float = field(init=False)
    streak: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.previous = self.initial

    def check(self, iteration: int, x: PyTree, y: PyTree) -> str | None:
        """The divergence message for the new iterate, or ``None``."""
        current, overflow = _max_abs((x, y))
        grew = current > GROWTH_FACTOR * self.previous
        self.streak = self.streak + 1 if grew else 0
        self.previous = current
        if current > overflow:
            return (
                f"the iterates grew to |(x, y)|_inf = {current:.3e} at iteration {iteration}, "
                f"beyond the overflow scale {overflow:.3e} of their dtype (their squares are "
                "non-finite); step sizes too large?"
            )
        if self.streak >= GROWTH_WINDOW and current > GROWTH_SCALE * (1.0 + self.initial):
            return (
                f"the iterates grew geometrically (by at least {GROWTH_FACTOR:g}x at each of "
                f"the last {self.streak} iterations) to |(x, y)|_inf = {current:.3e} at "
                f"iteration {iteration}, over {GROWTH_SCALE:.0e} times the initial scale "
                f"1 + {self.initial:.3e}: diverging to non-finite values (step sizes too "
                "large?)"
            )
        return None


def _has_lower_constraints(problem: BilevelProblem) -> bool:
    """Whether the lower level is constrained (``g``, ``h`` or ``y_bounds``)."""
    return (
        problem.lower_ineq is not None
        or problem.lower_eq is not None
        or problem.y_bounds is not None
    )


_DENSE_KKT_ENTRIES = 4_000_000  # larger least-squares matrices are solved sparse


def _lower_kkt_residual(problem: BilevelProblem, x: PyTree, y: PyTree) -> float:
    """Lower-level KKT residual at ``(x, y)`` (the ``lower_kkt_residual`` history column).

    With ``c(y) = (g(x, y), y_i - u_i, l_i - y_i)`` (the finite bounds of ``y_bounds``
    written as inequalities ``c <= 0``) and ``h(x, y) = 0``::

        r(x, y)^2 = min_{mu >= 0, nu} ||grad_y f + J_c^T mu + J_h^T nu||^2 + ||mu * c||^2
                    + ||max(c, 0)||^2 + ||h||^2,

    stationarity, complementarity and feasibility, minimised over the multipliers (a
    bounded linear least-squares problem, SciPy's ``lsq_linear``: exact BVLS for small
    problems, TRF on a sparse matrix for large ones). ``r = 0`` exactly at a KKT point,
    ``r`` is continuous in ``y`` (no active-set threshold), and without constraints it is
    ``||grad_y f||``. With bounds only (no ``g``, ``h``) the minimisation separates per
    coordinate and is done in closed form. NaN when ``y`` is a pytree (non-tensor).
    """
    import numpy as np
    import scipy.sparse
    from scipy.optimize import lsq_linear

    if not isinstance(y, torch.Tensor):
        return math.nan
    x, y = _detach(x), y.detach()
    shape, m = y.shape, y.numel()
    with torch.enable_grad():
        yf = y.flatten().requires_grad_(True)
        f = problem.lower_value(x, yf.reshape(shape))
        grad = torch.autograd.grad(f, yf)[0] if f.requires_grad else torch.zeros_like(yf)
        yf = yf.detach()

        def jac(name: str, rows: torch.Tensor) -> torch.Tensor:
            fn = getattr(problem, name)
            return torch.autograd.functional.jacobian(
                lambda t: fn(x, t.reshape(shape)), yf
            ).reshape(rows.numel(), m)

        try:
            g = problem.constraint_value("lower_ineq", x, y)
            h = problem.constraint_value("lower_eq", x, y)
        except NonFiniteError:  # e.g. the recorded iterate of a diverged run
            return math.nan
        J_g = None if g is None else jac("lower_ineq", g)
        J_h = None if h is None else jac("lower_eq", h)
    parts = [grad] + [t for t in (J_g, J_h) if t is not None]
    if not all(bool(torch.isfinite(t).all()) for t in parts):
        return math.nan

    def arr(t: torch.Tensor | None, *size: int) -> np.ndarray:
        if t is None:
            return np.zeros(size)
        return t.detach().to(torch.float64).cpu().numpy().reshape(size)

    lo, hi = (b.flatten() for b in problem.bounds_like("y_bounds", y))
    up, down = torch.isfinite(hi), torch.isfinite(lo)
    n_g, n_h = (0 if g is None else g.numel()), (0 if h is None else h.numel())
    c = np.concatenate(
        [
            arr(g, n_g),
            arr(yf[up] - hi[up], int(up.sum())),
            arr(lo[down] - yf[down], int(down.sum())),
        ]
    )
    if g is None and h is None:
        # bounds only: separable per coordinate; with gradient entry a and the bound's
        # c <= 0, min_{mu >= 0} (a -/+ mu)^2 + (mu c)^2 = a^2 c^2 / (1 + c^2) when the
        # bound can cancel a (a > 0: lower bound, a < 0: upper bound), else a^2
        a = arr(grad, m)
        c_up = np.full(m, np.nan)
        c_down = np.full(m, np.nan)
        c_up[up.cpu().numpy()] = arr(yf[up] - hi[up], int(up.sum()))
        c_down[down.cpu().numpy()] = arr(lo[down] - yf[down], int(down.sum()))
        c_act = np.where(a > 0, c_down, c_up)
        with np.errstate(invalid="ignore"):
            term = np.where(np.isnan(c_act), a**2, a**2 * c_act**2 / (1.0 + c_act**2))
        feasibility = float(
            np.sum(np.maximum(np.nan_to_num(c_up, nan=0.0), 0.0) ** 2)
            + np.sum(np.maximum(np.nan_to_num(c_down, nan=0.0), 0.0) ** 2)
        )
        return math.sqrt(float(term.sum()) + feasibility)
    # A = [[J_g^T, +e_i (upper bounds), -e_i (lower bounds), J_h^T], [diag(c), 0]] from
    # (row, column, value) triplets; dense for small problems, sparse for large ones
    p, q = c.size, n_h
    J_cols = np.concatenate([arr(J_g, n_g, m).T, arr(J_h, n_h, m).T], axis=1)  # m x (n_g+q)
    j_rows, j_cols = np.nonzero(J_cols)
    idx_up, idx_down = np.flatnonzero(up.cpu().numpy()), np.flatnonzero(down.cpu().numpy())
    rows = np.concatenate([j_rows, idx_up, idx_down, m + np.arange(p)])
    cols = np.concatenate(
        [np.where(j_cols < n_g, j_cols, j_cols - n_g + p), n_g + np.arange(p - n_g), np.arange(p)]
    )
    vals = np.concatenate(
        [J_cols[j_rows, j_cols], np.ones(idx_up.size), -np.ones(idx_down.size), c]
    )
    if (m + p) * (p + q) <= _DENSE_KKT_ENTRIES:
        A = np.zeros((m + p, p + q))
        A[rows, cols] = vals
    else:
        A = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m + p, p + q)).tocsr()
    b = np.concatenate([-arr(grad, m), np.zeros(p)])
    feasibility = float(np.sum(np.maximum(c, 0.0) ** 2) + np.sum(arr(h, n_h) ** 2))
    if p + q == 0:
        return math.sqrt(float(b @ b) + feasibility)
    lower_bounds = np.concatenate([np.zeros(p), np.full(q, -np.inf)])
    if isinstance(A, np.ndarray):
        sol = lsq_linear(A, b, bounds=(lower_bounds, np.inf), method="bvls", tol=1e-14)
    else:
        sol = lsq_linear(A, b, bounds=(lower_bounds, np.inf), method="trf", tol=1e-12)
    fit = A @ sol.x - b
    return math.sqrt(float(fit @ fit) + feasibility)


def _detach(tree: PyTree) -> PyTree:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def run_method(
    method: Method,
    problem: BilevelProblem,
    x0: PyTree,
    y0: PyTree,
    *,
    maxiter: int,
    tol: float,
    callback: Callable[[int, MethodState], bool | None] | None,
    progress: bool,
    record_every: int,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_every: int,
    resume: bool,
) -> BilevelResult:
    """Drive ``method`` for at most ``maxiter`` outer iterations (see :func:`bilevel.solve`).

    Status ``"diverged"`` (with a :class:`~bilevel.errors.ConvergenceWarning` for
    deterministic methods) is reported when the method raises
    :class:`~bilevel.errors.DivergenceError` or :class:`~bilevel.errors.NonFiniteError`,
    when an iterate or the hypergradient estimate is NaN or infinite, and when finite
    iterates blow up: past the overflow scale ``sqrt(finfo(dtype).max)`` of their dtype, or
    growing geometrically (by ``1.2x`` at each of 30 consecutive iterations to more than
    ``1e6 (1 + |(x0, y0)|_inf)``), see :class:`_GrowthMonitor`. After a resume the growth
    streak restarts from zero.

    The history's lower-level column is ``lower_grad_norm`` for an unconstrained lower
    level and ``lower_kkt_residual`` (see :class:`~bilevel.BilevelResult`) for a constrained
    one; the latter costs a bounded least-squares solve per recorded iteration (about 0.6 ms
    for 200 variables and one constraint), so long runs may prefer ``record_every > 1``.
    """
    if problem.is_constrained and not method.handles_constraints:
        raise ValueError(
            f"method {method.name!r} solves unconstrained bilevel problems, but this problem "
            "has constraints or bounds; use a constrained method such as 'lv-hba' or "
            "'classical'"
        )
    check_tensor_leaves(x0, "x0")
    check_tensor_leaves(y0, "y0")
    for name, tree in (("x0", x0), ("y0", y0)):
        for leaf in torch.utils._pytree.tree_leaves(tree):
            if not (leaf.is_floating_point() or leaf.is_complex()):
                raise TypeError(
                    f"{name} must hold floating-point tensors (the iterates move continuously), "
                    f"got dtype {leaf.dtype}; e.g. pass {name}.double()"
                )
    check_finite(x0, "x0")
    check_finite(y0, "y0")
    if maxiter < 0 or record_every < 1:
        raise ValueError(
            f"maxiter must be >= 0 and record_every >= 1, got {maxiter}, {record_every}"
        )
    # lower-level optimality: ||grad_y f|| for an unconstrained lower level, the KKT
    # residual (which reduces to it without constraints) for a constrained one
    lower_constrained = _has_lower_constraints(problem)
    lower_key = "lower_kkt_residual" if lower_constrained else "lower_grad_norm"
    history: dict[str, list[float]] = {
        key: []
        for key in (
            "iteration",
            "upper_value",
            "hypergrad_norm",
            lower_key,
            "grad_calls",
            "hvp_calls",
            "time",
        )
    }
    start_iteration = 0
    elapsed_before = 0.0
    escapes = 0  # escapes from lower-level negative curvature (checkpointed)
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=False)
        state, history, start_iteration = saved["state"], saved["history"], saved["iteration"]
        if lower_key not in history and "lower_grad_norm" in history:
            # a checkpoint written before constrained lower levels recorded their KKT
            # residual: its gradient norms meant nothing there, the resumed column is NaN
            history[lower_key] = [math.nan] * len(history.pop("lower_grad_norm"))
        elapsed_before = saved["elapsed"]
        escapes = saved.get("escapes", 0)
        # fast-forward the minibatch streams first: replaying them may draw random numbers
        _attach_streams(state.extra, problem)
        torch.set_rng_state(saved["rng"])
    else:
        state = method.init(problem, _detach(x0), _detach(y0))
    lower_grad = torch.func.grad(lambda x, y: problem.lower_value(x, y), argnums=1)

    def record(iteration: int) -> None:
        deterministic = problem.upper_data is None and problem.lower_data is None
        history["iteration"].append(iteration)
        history["upper_value"].append(
            float(problem.upper_value(state.x, state.y)) if deterministic else math.nan
        )
        history["hypergrad_norm"].append(
            float(tree_norm(state.hypergrad)) if state.hypergrad is not None else math.nan
        )
        if not deterministic:
            history[lower_key].append(math.nan)
        elif lower_constrained:
            history[lower_key].append(_lower_kkt_residual(problem, state.x, state.y))
        else:
            history[lower_key].append(float(tree_norm(lower_grad(state.x, state.y))))
        history["grad_calls"].append(state.grad_calls)
        history["hvp_calls"].append(state.hvp_calls)
        history["time"].append(elapsed_before + time.perf_counter() - t0)

    monitor = _GrowthMonitor(initial=_max_abs((x0, y0))[0])
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=maxiter, initial=start_iteration, desc=method.name)
    status, message = "max_iterations", f"reached maxiter = {maxiter}"
    iteration = start_iteration
    with torch.no_grad():
        if start_iteration == 0:
            record(0)
    for iteration in range(start_iteration + 1, maxiter + 1):
        try:
            state = method.step(problem, state, iteration)
        except (DivergenceError, NonFiniteError) as exc:  # inputs were checked: the run diverged
            status, message = "diverged", f"iteration {iteration}: {exc}"
            break
        state.x, state.y = _detach(state.x), _detach(state.y)
        norm = float(tree_norm(state.hypergrad)) if state.hypergrad is not None else math.inf
        if not math.isfinite(norm) or not all(
            bool(torch.isfinite(leaf).all())
            for leaf in torch.utils._pytree.tree_leaves((state.x, state.y))
        ):
            status, message = (
                "diverged",
                f"non-finite iterate or hypergradient at iteration {iteration}",
            )
            record(iteration)
            break
        blown_up = monitor.check(iteration, state.x, state.y)
        if blown_up is not None:
            status, message = "diverged", blown_up
            record(iteration)
            break
        if iteration % record_every == 0 or norm <= tol:
            record(iteration)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(hypergrad=f"{norm:.2e}")
        if callback is not None and callback(iteration, state):
            status, message = "stopped", f"callback stopped the run at iteration {iteration}"
            break
        done = False
        if not method.stochastic and norm <= tol:
            # a stationary point of the outer problem at a lower-level saddle or maximum
            # is no solution: escape it (perturb y along the negative curvature and go on)
            spectrum = _lower_curvature(problem, method, state.x, state.y)
            if is_negative(spectrum) and escapes < MAX_ESCAPES:
                escapes += 1
                state.y = escape(functools.partial(problem.lower_value, state.x), state.y, spectrum)
                method.after_escape(problem, state)
            elif is_negative(spectrum):
                status, message = (
                    "negative_curvature",
                    _curvature_message(spectrum, iteration, escapes),
                )
                done = True
            else:
                status, message = "converged", f"hypergradient norm {norm:.3e} <= tol {tol:.1e}"
                done = True
        if checkpoint is not None and iteration % checkpoint_every == 0:
            _save_checkpoint(
                checkpoint,
                state,
                history,
                iteration,
                elapsed_before + time.perf_counter() - t0,
                escapes,
            )
        if done:
            break
    if bar is not None:
        bar.close()
    info = method.result_info(problem, state)
    if status != "diverged":
        spectrum = _lower_curvature(problem, method, state.x, state.y)
        if spectrum is not None:
            info["lower_min_curvature"] = spectrum.smallest
            info["negative_curvature_escapes"] = escapes
        if is_negative(spectrum) and status != "negative_curvature":
            message = f"{message}; {_curvature_message(spectrum, iteration, escapes)}"
            if method.stochastic or status != "max_iterations":
                warnings.warn(f"{method.name}: {message}", ConvergenceWarning, stacklevel=3)
    if status in ("max_iterations", "diverged", "negative_curvature") and not (
        method.stochastic and status != "negative_curvature"
    ):
        warnings.warn(f"{method.name}: {message}", ConvergenceWarning, stacklevel=3)
    return BilevelResult(
        x=state.x,
        y=state.y,
        status=status,
        message=message,
        n_iter=iteration,
        history=history,
        info=info,
    )


def _curvature_message(spectrum: Spectrum, iteration: int, escapes: int) -> str:
    return (
        f"the lower-level Hessian d2_yy f(x, y) has a negative eigenvalue "
        f"{spectrum.smallest:.3e} at the returned y (largest {spectrum.largest:.3e}, "
        f"iteration {iteration}, after {escapes} escape(s) along negative curvature): y is a "
        "saddle point or a maximum of f(x, .), not a lower-level solution"
    )


def _save_checkpoint(
    path: str | os.PathLike[str],
    state: MethodState,
    history: dict,
    iteration: int,
    elapsed: float,
    escapes: int = 0,
) -> None:
    """Write atomically (temporary file + rename) so an interrupted save never corrupts it."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(
        {
            "state": state,
            "history": history,
            "iteration": iteration,
            "elapsed": elapsed,
            "rng": torch.get_rng_state(),
            "escapes": escapes,
        },
        tmp,
    )
    os.replace(tmp, path)
