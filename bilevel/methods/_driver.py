"""The outer loop shared by every :class:`~bilevel.methods.Method`: :func:`run_method`
(history, stopping, second-order check, divergence, callbacks, progress bar and
checkpoint/resume)."""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable

import torch

from bilevel.errors import ConvergenceWarning, DivergenceError, NonFiniteError
from bilevel.linalg import Spectrum
from bilevel.methods._base import Method, MethodState
from bilevel.methods._checkpoint import load_checkpoint, save_checkpoint
from bilevel.methods._divergence import GrowthMonitor, max_abs
from bilevel.methods._streams import attach_streams
from bilevel.problem import BilevelProblem, BilevelResult
from bilevel.problem._constraints import lower_kkt_residual
from bilevel.solvers._curvature import MAX_ESCAPES, curvature, escape, is_negative
from bilevel.tree import PyTree, check_finite, check_tensor_leaves, tree_leaves, tree_map, tree_norm

__all__ = ["run_method"]


def _has_lower_constraints(problem: BilevelProblem) -> bool:
    """Whether the lower level is constrained (``g``, ``h`` or ``y_bounds``)."""
    return (
        problem.lower_ineq is not None
        or problem.lower_eq is not None
        or problem.y_bounds is not None
    )


def _detach(tree: PyTree) -> PyTree:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


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
    when an iterate or the hypergradient estimate is NaN or infinite or the stopping
    residual is NaN, and when finite iterates blow up: past the overflow scale
    ``sqrt(finfo(dtype).max)`` of their dtype, or growing geometrically (by ``1.2x`` at
    each of 30 consecutive iterations to more than ``1e6 (1 + |(x0, y0)|_inf)``), see
    :class:`~bilevel.methods._divergence.GrowthMonitor`. After a resume the growth streak
    restarts from zero.

    Stopping: deterministic methods stop (status ``"converged"``) when ``state.residual``,
    or ``||state.hypergrad||`` for a method that leaves it ``None``, is at most ``tol``;
    the history records both (``residual``, ``hypergrad_norm``). ``method.prepare`` runs
    at the start of every call, a resumed one included, and its context is given to
    ``init`` and kept in ``state.context`` (never in the checkpoint).

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
        for leaf in tree_leaves(tree):
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
            "residual",
            lower_key,
            "grad_calls",
            "hvp_calls",
            "time",
        )
    }
    start_iteration = 0
    elapsed_before = 0.0
    escapes = 0  # escapes from lower-level negative curvature (checkpointed)
    x0, y0 = _detach(x0), _detach(y0)
    context = method.prepare(problem, x0, y0)
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint, tuple(history))
        state, history, start_iteration = saved.state, saved.history, saved.iteration
        elapsed_before, escapes = saved.elapsed, saved.escapes
        # fast-forward the minibatch streams first: replaying them may draw random numbers
        attach_streams(state.extra, problem)
        torch.set_rng_state(saved.rng)
    elif context is None:
        state = method.init(problem, x0, y0)
    else:
        # the protocol's optional keyword, which Method.init itself does not declare
        init: Callable[..., MethodState] = method.init
        state = init(problem, x0, y0, context=context)
    state.context = context
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
        history["residual"].append(_residual(state) if iteration else math.nan)
        if not deterministic:
            history[lower_key].append(math.nan)
        elif lower_constrained:
            history[lower_key].append(lower_kkt_residual(problem, state.x, state.y))
        else:
            history[lower_key].append(float(tree_norm(lower_grad(state.x, state.y))))
        history["grad_calls"].append(state.grad_calls)
        history["hvp_calls"].append(state.hvp_calls)
        history["time"].append(elapsed_before + time.perf_counter() - t0)

    monitor = GrowthMonitor(initial=max_abs((x0, y0))[0])
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
        norm = _residual(state)
        hypergrad_finite = state.hypergrad is None or math.isfinite(
            float(tree_norm(state.hypergrad))
        )
        if (
            math.isnan(norm)
            or not hypergrad_finite
            or not all(bool(torch.isfinite(leaf).all()) for leaf in tree_leaves((state.x, state.y)))
        ):
            status, message = (
                "diverged",
                f"non-finite iterate, hypergradient or residual at iteration {iteration}",
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
            bar.set_postfix(residual=f"{norm:.2e}")
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
                what = "hypergradient norm" if state.residual is None else "residual"
                status, message = "converged", f"{what} {norm:.3e} <= tol {tol:.1e}"
                done = True
        if checkpoint is not None and iteration % checkpoint_every == 0:
            save_checkpoint(
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


def _residual(state: MethodState) -> float:
    """The stopping measure: ``state.residual``, else ``||state.hypergrad||`` (``inf``
    when the method set neither)."""
    if state.residual is not None:
        return float(state.residual)
    if state.hypergrad is not None:
        return float(tree_norm(state.hypergrad))
    return math.inf
