"""The outer-loop driver shared by all bilevel methods: history, stopping, callbacks,
progress bar and checkpoint/resume."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.errors import ConvergenceWarning, DivergenceError, NonFiniteError
from bilevel.problem import BilevelProblem, BilevelResult
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
    equations. Stochastic methods draw minibatches through :meth:`batches`.
    """

    name = "method"
    stochastic = False

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        return MethodState(x=x0, y=y0)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        raise NotImplementedError(f"{type(self).__name__} must define step")


def require_finite(tree: PyTree, what: str) -> PyTree:
    """Return ``tree``, raising :class:`~bilevel.errors.DivergenceError` if it is not finite."""
    for leaf in torch.utils._pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor) and not bool(torch.isfinite(leaf).all()):
            raise DivergenceError(f"{what} became NaN or infinite (step sizes too large?)")
    return tree


class BatchStream:
    """Endless iterator over a finite iterable of minibatches (re-iterated each epoch)."""

    def __init__(self, data: Iterable[Any] | None, name: str) -> None:
        self.data = data
        self.name = name
        self._iterator: Iterator[Any] | None = None

    def next(self) -> Any:
        if self.data is None:
            return None
        if self._iterator is None:
            self._iterator = iter(self.data)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.data)
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError(f"{self.name} yields no minibatch") from None


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
    """Drive ``method`` for at most ``maxiter`` outer iterations (see :func:`bilevel.solve`)."""
    check_tensor_leaves(x0, "x0")
    check_tensor_leaves(y0, "y0")
    check_finite(x0, "x0")
    check_finite(y0, "y0")
    if maxiter < 0 or record_every < 1:
        raise ValueError(
            f"maxiter must be >= 0 and record_every >= 1, got {maxiter}, {record_every}"
        )
    history: dict[str, list[float]] = {
        key: []
        for key in (
            "iteration",
            "upper_value",
            "hypergrad_norm",
            "lower_grad_norm",
            "grad_calls",
            "hvp_calls",
            "time",
        )
    }
    start_iteration = 0
    elapsed_before = 0.0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, weights_only=False)
        state, history, start_iteration = saved["state"], saved["history"], saved["iteration"]
        elapsed_before = saved["elapsed"]
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
        history["lower_grad_norm"].append(
            float(tree_norm(lower_grad(state.x, state.y))) if deterministic else math.nan
        )
        history["grad_calls"].append(state.grad_calls)
        history["hvp_calls"].append(state.hvp_calls)
        history["time"].append(elapsed_before + time.perf_counter() - t0)

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
            bool(torch.isfinite(leaf).all()) for leaf in torch.utils._pytree.tree_leaves(state.x)
        ):
            status, message = (
                "diverged",
                f"non-finite iterate or hypergradient at iteration {iteration}",
            )
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
        if checkpoint is not None and iteration % checkpoint_every == 0:
            _save_checkpoint(
                checkpoint, state, history, iteration, elapsed_before + time.perf_counter() - t0
            )
        if not method.stochastic and norm <= tol:
            status, message = "converged", f"hypergradient norm {norm:.3e} <= tol {tol:.1e}"
            break
    if bar is not None:
        bar.close()
    if status in ("max_iterations", "diverged") and not method.stochastic:
        warnings.warn(f"{method.name}: {message}", ConvergenceWarning, stacklevel=3)
    return BilevelResult(
        x=state.x, y=state.y, status=status, message=message, n_iter=iteration, history=history
    )


def _save_checkpoint(
    path: str | os.PathLike[str], state: MethodState, history: dict, iteration: int, elapsed: float
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
        },
        tmp,
    )
    os.replace(tmp, path)
