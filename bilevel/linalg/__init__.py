"""Linear solvers on pytrees, driven by a matrix-vector product callable.

All solvers share one signature and return ``(x, LinearSolveInfo)``; see
:mod:`bilevel.linalg._solvers` for the conventions (tolerances, ``maxiter`` defaults,
warnings on non-convergence).

=============  ==============================================  ========================
solver         for                                             cost per iteration
=============  ==============================================  ========================
``cg``         symmetric positive definite ``A``                1 matvec
``normal_cg``  any non-singular ``A`` (squares the condition)   1 matvec + 1 transpose
``gmres``      any non-singular ``A``                           1 matvec, ``restart`` vectors
``bicgstab``   any non-singular ``A``, short recurrences        2 matvecs
``neumann``    ``rho(I - alpha A) < 1`` (e.g. SPD, small alpha) 1 matvec
``dense``      small ``n``: forms ``A`` and factorises it       ``n`` matvecs, once
``auto``       the default: ``dense`` (Cholesky/LU) for         one batch of ``n``
               ``n <= DENSE_MAX``, else ``cg`` (symmetric ``A``)  matvecs, or as cg/gmres
               or ``gmres``
=============  ==============================================  ========================

:func:`lanczos` estimates the extreme eigenvalues of a symmetric ``A`` (smoothness and
strong-convexity constants, negative-curvature checks) from a few matrix-vector products.
"""

from __future__ import annotations

from bilevel.linalg._solvers import (
    DENSE_MAX,
    SOLVERS,
    LinearSolveInfo,
    LinearSolver,
    auto,
    bicgstab,
    cg,
    default_tol,
    dense,
    factor_solve,
    get_solver,
    gmres,
    is_symmetric,
    materialize,
    neumann,
    normal_cg,
)
from bilevel.linalg._spectrum import Spectrum, hessian_matvec, hessian_spectrum, lanczos

__all__ = [
    "DENSE_MAX",
    "SOLVERS",
    "LinearSolveInfo",
    "LinearSolver",
    "Spectrum",
    "auto",
    "bicgstab",
    "cg",
    "default_tol",
    "dense",
    "factor_solve",
    "get_solver",
    "gmres",
    "hessian_matvec",
    "hessian_spectrum",
    "is_symmetric",
    "lanczos",
    "materialize",
    "neumann",
    "normal_cg",
]
