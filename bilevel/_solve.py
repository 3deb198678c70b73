"""``bilevel.solve`` and the method registry :data:`METHODS`: the top floor, above both
:mod:`bilevel.methods` (the protocol, the driver and the unconstrained algorithms) and
:mod:`bilevel.constrained` (LV-HBA and Classical), so that neither registers itself."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from bilevel.constrained import LVHBA, Classical
from bilevel.methods import (
    AID,
    BOME,
    BOREP,
    BSVRB,
    F2SA,
    ITD,
    SABA,
    SOBA,
    VPBGD,
    Method,
    MethodState,
    Penalty,
    StocBiO,
    run_method,
)
from bilevel.problem import BilevelProblem, BilevelResult
from bilevel.tree import PyTree

__all__ = ["METHODS", "solve"]

#: Outer algorithms by name: those of :mod:`bilevel.methods` and the constrained ones of
#: :mod:`bilevel.constrained` (``"lv-hba"``, ``"classical"``).
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
    "lv-hba": LVHBA,
    "classical": Classical,
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
        Deterministic methods stop when their stopping residual is at most ``tol`` (status
        ``"converged"``): the norm of the hypergradient estimate, or the method's own
        measure (:attr:`MethodState.residual <bilevel.methods.MethodState.residual>`, e.g.
        LV-HBA's fixed-point residual, Classical's round residual); otherwise the result has status
        ``"max_iterations"`` and a :class:`~bilevel.errors.ConvergenceWarning` is raised.
        A run whose iterates become NaN/inf, pass the overflow scale ``sqrt(finfo.max)``
        of their dtype or grow geometrically (more than 1.2x at each of 30 consecutive
        iterations beyond ``1e6`` times their initial scale) ends with status
        ``"diverged"`` and the same warning. The history records ``hypergrad_norm`` (NaN
        for a method that forms no hypergradient), ``residual`` and ``lower_grad_norm`` or,
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
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"METHODS[{method!r}] must be a dataclass of options, got {cls!r}")
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
