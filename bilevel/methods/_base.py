"""The outer-algorithm protocol: :class:`Method` and :class:`MethodState`.

A run of :func:`bilevel.solve` (driver: :func:`bilevel.methods.run_method`) calls

1. ``context = method.prepare(problem, x0, y0)``: set-up derived from the problem alone
   (projections, flattened programs, ...); never checkpointed, rebuilt from the same
   ``(problem, x0, y0)`` when a run is resumed;
2. ``state = method.init(problem, x0, y0)`` (``init(problem, x0, y0, context=context)``
   when ``prepare`` returned one); the driver then sets ``state.context = context``;
3. ``state = method.step(problem, state, k)`` for ``k = 1, 2, ...``; the run stops when
   ``state.residual`` (or, when the method leaves it ``None``, the norm of
   ``state.hypergrad``) is at most ``tol``;
4. ``method.result_info(problem, state)`` for :attr:`BilevelResult.info`.

``state`` (its ``context`` apart) is what a checkpoint holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.errors import DivergenceError
from bilevel.problem import BilevelProblem
from bilevel.tree import PyTree, tree_leaves

__all__ = ["Method", "MethodState", "require_finite"]


@dataclass
class MethodState:
    """Everything a method carries from one outer iteration to the next.

    Attributes
    ----------
    x, y:
        The outer and inner iterates.
    extra:
        Method-specific values (warm starts, momentum, batch streams, ...), checkpointed.
    grad_calls, hvp_calls:
        Cumulative oracle counts.
    hypergrad:
        The last hypergradient estimate, or ``None`` for a method that does not form one
        (the history's ``hypergrad_norm`` is then NaN).
    residual:
        The stopping measure of the last step (e.g. a fixed-point residual or the
        relative change of an incumbent; ``inf`` while nothing can be said); ``None``
        means ``||hypergrad||``. The driver stops when it is at most ``tol`` and records
        it in the history's ``residual`` column; NaN counts as divergence.
    context:
        What :meth:`Method.prepare` returned; set by the driver, never checkpointed
        (``None`` in an unpickled state until the driver rebuilds it).
    """

    x: PyTree
    y: PyTree
    extra: dict[str, Any] = field(default_factory=dict)
    grad_calls: int = 0
    hvp_calls: int = 0
    hypergrad: PyTree | None = None
    residual: float | None = None
    context: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["context"] = None  # rebuilt by Method.prepare on resume
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("residual", None)  # checkpoints written before it existed
        self.__dict__.setdefault("context", None)


class Method:
    """An outer algorithm (see the module docstring for the protocol).

    Subclasses are dataclasses of hyperparameters whose docstrings state the update
    equations. Stochastic methods draw minibatches through
    :class:`~bilevel.methods.BatchStream`.
    """

    name = "method"
    stochastic = False
    #: Whether the method handles constraints and bounds (``BilevelProblem.is_constrained``).
    handles_constraints = False
    #: Whether the method uses gradients only: its default step sizes and the final
    #: curvature check then use gradient differences instead of Hessian-vector products.
    hessian_free = False

    def prepare(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> Any:
        """Set-up that depends only on ``(problem, x0, y0)`` and is not checkpointed
        (rebuilt on resume); ``None`` (the default) for none."""
        return None

    def init(self, problem: BilevelProblem, x0: PyTree, y0: PyTree) -> MethodState:
        """The state before the first iteration; a method whose :meth:`prepare` returns
        a context receives it as the keyword ``context``."""
        return MethodState(x=x0, y=y0)

    def step(self, problem: BilevelProblem, state: MethodState, iteration: int) -> MethodState:
        """One outer iteration (``iteration = 1, 2, ...``)."""
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
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor) and not bool(torch.isfinite(leaf).all()):
            raise DivergenceError(f"{what} became NaN or infinite (step sizes too large?)")
    return tree
