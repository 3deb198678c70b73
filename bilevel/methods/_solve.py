"""``bilevel.solve``: one entry point for every outer algorithm."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from bilevel.methods._base import Method, MethodState, run_method
from bilevel.methods.borep import BOREP
from bilevel.methods.bsvrb import BSVRB
from bilevel.methods.deterministic import AID, ITD
from bilevel.methods.first_order import BOME, F2SA, VPBGD, Penalty
from bilevel.methods.stochastic import SABA, SOBA, StocBiO
from bilevel.problem import BilevelProblem, BilevelResult
from bilevel.tree import PyTree

#: Outer algorithms by name. The constrained methods (``"lv-hba"``, ``"classical"``) live in
#: :mod:`bilevel.constrained`, which builds on this package and registers them here when it is
#: imported (``import bilevel`` always does).
METHODS: dict[str, type[Method]] = {
    "aid": AID,
    "itd": ITD,
    "stocbio": StocBiO,
    "soba": SOBA,
    "saba": SABA,
    "f2sa": F2SA,
    "penalty": Penalty,
    "bome": BOME,
    "vpbgd": VPBGD,
    "borep": BOREP,
    "bsvrb": BSVRB,
}


def solve(
    problem: BilevelProblem,
    x0: PyTree,
    y0: PyTree,
    method: str | Method = "aid",
    *,
    maxiter: int = 1000,
    tol: float = 1e-6,
    callback: Callable[[int, MethodState], bool | None] | None = None,
    progress: bool = False,
    record_every: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    **options: Any,
) -> BilevelResult:
    """Solve ``min_x F(x, y*(x))``, ``y*(x) = argmin_y f(x, y)``, by an outer algorithm.

    Parameters
    ----------
    problem:
        The :class:`~bilevel.BilevelProblem`.
    x0, y0:
        Starting outer and inner variables (tensors or pytrees); never modified.
    method:
        A name in :data:`METHODS` (``"aid"``, ``"itd"``, ...) or a configured
        :class:`~bilevel.methods.Method` instance.
    maxiter:
        Maximum number of outer iterations.
    tol:
        Deterministic methods stop when the norm of the hypergradient estimate is at most
        ``tol`` (status ``"converged"``); otherwise the result has status
        ``"max_iterations"`` and a :class:`~bilevel.errors.ConvergenceWarning` is raised.
        A run whose iterates become NaN/inf, pass the overflow scale ``sqrt(finfo.max)``
        of their dtype or grow geometrically (more than 1.2x at each of 30 consecutive
        iterations beyond ``1e6`` times their initial scale) ends with status
        ``"diverged"`` and the same warning. The history records ``lower_grad_norm`` or,
        when the lower level is constrained, ``lower_kkt_residual``.

        Second-order check: at a point meeting ``tol`` (and at the end of every run, when
        the lower level is unconstrained and deterministic) the curvature of ``f(x, .)`` at
        the returned ``y`` is checked by Lanczos (20 Hessian-vector products, gradient
        differences for the Hessian-free methods; :mod:`bilevel.solvers._curvature`). A
        saddle or maximum of the lower level is escaped (``y`` moved along the negative
        curvature, the run continues, at most 3 times); if it remains, the status is
        ``"negative_curvature"`` with a :class:`~bilevel.errors.ConvergenceWarning`.
        ``result.info`` records ``lower_min_curvature`` and
        ``negative_curvature_escapes``.
    callback:
        ``callback(iteration, state)``, called after every outer iteration; returning
        ``True`` stops the run (status ``"stopped"``).
    progress:
        Show a tqdm progress bar.
    record_every:
        Record the history every this many iterations (and at the last one).
    checkpoint, checkpoint_every, resume:
        Save the state, history and RNG state to ``checkpoint`` every ``checkpoint_every``
        iterations (atomically); with ``resume=True`` an existing checkpoint is loaded and the
        run continues from it, producing the same iterates as an uninterrupted run.
    **options:
        Hyperparameters of the method (see its docstring), e.g. ``inner_steps=20``. Step
        sizes left out (``None``) are chosen at the start from smoothness constants
        measured at ``(x0, y0)`` with a few Hessian-vector products
        (:mod:`bilevel.methods._defaults`), and the deterministic methods AID, ITD and
        V-PBGD then adapt their outer step by a line search
        (:mod:`bilevel.methods._linesearch`); ``result.info["step_sizes"]`` records what
        was used. Explicit step sizes are used as given.
    """
    if isinstance(method, Method):
        if options:
            raise TypeError(
                "pass hyperparameters either in the Method instance or as options, not both"
            )
        algorithm = method
    else:
        try:
            cls = METHODS[method]
        except KeyError:
            raise ValueError(
                f"unknown method {method!r}; choose one of {sorted(METHODS)}"
            ) from None
        valid = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(options) - valid
        if unknown:
            raise TypeError(
                f"method {method!r} has no option(s) {sorted(unknown)}; valid: {sorted(valid)}"
            )
        algorithm = cls(**options)
    return run_method(
        algorithm,
        problem,
        x0,
        y0,
        maxiter=maxiter,
        tol=tol,
        callback=callback,
        progress=progress,
        record_every=record_every,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
