"""Iterative and direct solvers for linear systems ``(A + ridge * I) x = b`` on pytrees.

Every solver has the signature::

    solver(matvec, b, *, init=None, tol=None, atol=0.0, maxiter=None, ridge=0.0,
           preconditioner=None, warn=True, **solver_specific) -> (x, LinearSolveInfo)

* ``matvec(v)`` computes ``A v`` for a pytree ``v`` with the structure of ``b``; ``A`` is
  never formed (except by :func:`dense`).
* ``preconditioner(v)`` approximates ``A^{-1} v`` (same structure).
* The stopping rule is ``||b - (A + ridge I) x|| <= max(tol * ||b||, atol)`` in the
  Euclidean norm of the whole pytree, checked on the true residual of the returned ``x``.
  ``tol=None`` picks a dtype-aware default (see :func:`default_tol`).
* ``maxiter=None`` means ``max(10 * n, 50)`` where ``n`` is the total number of entries of
  ``b``, so a 0-d tensor (``n = 1``) still gets 50 iterations.
* If the rule is not met, the returned info has ``converged=False`` and, unless
  ``warn=False``, a :class:`~bilevel.errors.ConvergenceWarning` names the residual reached.

Internally the pytree is raveled into one flat vector (:func:`bilevel.tree.ravel`), so the
algorithms below are written for vectors.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

import torch

from bilevel.errors import ConvergenceWarning, NonFiniteError
from bilevel.tree import PyTree, check_tensor_leaves, ravel, tree_axpy, tree_leaves

Vector = torch.Tensor
Matvec = Callable[[PyTree], PyTree]


@dataclass(frozen=True)
class LinearSolveInfo:
    """Outcome of a linear solve.

    Attributes
    ----------
    solver:
        Name of the algorithm.
    iterations:
        Iterations performed (matrix-vector products for Krylov methods; 1 for ``dense``).
    residual_norm:
        ``||b - (A + ridge I) x||`` for the returned ``x`` (for ``normal_cg``: the residual of
        the normal equations, see its docstring).
    threshold:
        The residual norm that counted as converged, ``max(tol * ||b||, atol)``.
    converged:
        Whether ``residual_norm <= threshold``.
    message:
        Human-readable reason for stopping.
    residual_source:
        Where ``residual_norm`` comes from: ``"true"`` (``b - (A + ridge I) x`` recomputed
        for the returned ``x``), ``"recursive"`` (the residual carried by the iteration's
        recursion, equal to the true one in exact arithmetic; used only to report
        non-convergence, see :func:`cg`) or ``"not computed"`` (``nan``).
    """

    solver: str
    iterations: int
    residual_norm: float
    threshold: float
    converged: bool
    message: str = ""
    residual_source: str = "true"


class LinearSolver(Protocol):
    """Callable protocol shared by all solvers of :mod:`bilevel.linalg`."""

    def __call__(
        self, matvec: Matvec, b: PyTree, *args: Any, **kwargs: Any
    ) -> tuple[PyTree, LinearSolveInfo]: ...


class _Options(TypedDict):
    """The keywords every solver takes (``warn`` apart)."""

    init: PyTree | None
    tol: float | None
    atol: float
    maxiter: int | None
    ridge: float
    preconditioner: Matvec | None


def default_tol(dtype: torch.dtype) -> float:
    """Default relative tolerance: 1e-10 for float64, 1e-5 for float32, 1e-3 below."""
    if dtype in (torch.float64, torch.complex128):
        return 1e-10
    if dtype in (torch.float32, torch.complex64):
        return 1e-5
    return 1e-3


@dataclass
class _Problem:
    """Flat-vector view of a pytree linear system, shared by all solvers."""

    name: str
    matvec: Callable[[Vector], Vector]
    precond: Callable[[Vector], Vector]
    b: Vector
    x0: Vector
    threshold: float
    maxiter: int
    unravel: Callable[[Vector], PyTree]


def _prepare(
    name: str,
    matvec: Matvec,
    b: PyTree,
    init: PyTree | None,
    tol: float | None,
    atol: float,
    maxiter: int | None,
    ridge: float,
    preconditioner: Matvec | None,
) -> _Problem:
    if not callable(matvec):
        raise TypeError(f"{name}: matvec must be callable, got {type(matvec).__name__}")
    check_tensor_leaves(b, f"{name}: right-hand side b")
    b_flat, raveler = ravel(b)
    if init is not None:
        check_tensor_leaves(init, f"{name}: init")
        x0 = raveler.ravel(init)
        if x0.shape != b_flat.shape:
            raise ValueError(f"{name}: init has {x0.numel()} entries but b has {b_flat.numel()}")
    else:
        x0 = torch.zeros_like(b_flat)
    if tol is None:
        tol = default_tol(b_flat.dtype)
    if tol < 0 or atol < 0:
        raise ValueError(f"{name}: tol and atol must be non-negative, got {tol} and {atol}")
    if not math.isfinite(float(ridge)):
        raise ValueError(f"{name}: ridge must be finite, got {ridge}")
    n = b_flat.numel()
    if maxiter is None:
        maxiter = max(10 * n, 50)
    if int(maxiter) < 1:
        raise ValueError(f"{name}: maxiter must be >= 1, got {maxiter}")
    b_norm = float(torch.linalg.vector_norm(b_flat))
    if not math.isfinite(b_norm):
        raise NonFiniteError(f"{name}: the right-hand side contains NaN or inf")
    flat_mv = raveler.linear_map(matvec)
    if ridge:
        base_mv = flat_mv
        flat_mv = lambda v: base_mv(v) + ridge * v
    precond = raveler.linear_map(preconditioner) if preconditioner else (lambda v: v)
    return _Problem(
        name=name,
        matvec=flat_mv,
        precond=precond,
        b=b_flat,
        x0=x0,
        threshold=max(tol * b_norm, atol),
        maxiter=int(maxiter),
        unravel=raveler.unravel,
    )


def _norm(v: Vector) -> float:
    return float(torch.linalg.vector_norm(v))


def _dot(u: Vector, v: Vector) -> Any:
    """``u^H v``: a float for real vectors, a complex for complex ones."""
    return float(torch.dot(u.conj(), v)) if not u.is_complex() else complex(torch.vdot(u, v))


def _finish(
    prob: _Problem,
    x: Vector,
    iterations: int,
    message: str,
    warn: bool,
    residual: float | None = None,
    residual_source: str = "true",
) -> tuple[PyTree, LinearSolveInfo]:
    if residual is None:
        residual = _norm(prob.b - prob.matvec(x))
        residual_source = "true"
    converged = math.isfinite(residual) and residual <= prob.threshold
    if not message:
        message = "converged" if converged else "maximum number of iterations reached"
    info = LinearSolveInfo(
        solver=prob.name,
        iterations=iterations,
        residual_norm=residual,
        threshold=prob.threshold,
        converged=converged,
        message=message,
        residual_source=residual_source,
    )
    if not converged and warn:
        warnings.warn(
            f"{prob.name} did not converge ({message}): residual norm {residual:.3e} > "
            f"threshold {prob.threshold:.3e} after {iterations} iteration(s). "
            "Increase maxiter, add a ridge, use a preconditioner or another solver.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return prob.unravel(x), info


def _cg_flat(
    prob: _Problem, x: Vector, matvec: Callable[[Vector], Vector], b: Vector, x_is_zero: bool
) -> tuple[Vector, int, str, float | None, str]:
    """Preconditioned conjugate gradient on vectors; restarts once the recursion drifts.

    Returns ``(x, iterations, message, residual norm or None if not computed, its source)``.
    Convergence is only ever claimed on the true residual. At ``maxiter`` the recursive
    residual is returned (no extra product) when it exceeds twice the threshold: the verdict
    "not converged" then stands unless the recursion drifted by more than the threshold
    itself; closer to the threshold the caller recomputes the true residual.
    """
    iterations = 0
    message = ""
    r = b if x_is_zero else b - matvec(x)
    while True:  # outer loop: restart from the true residual if the recursive one drifted
        r_norm = _norm(r)
        if r_norm <= prob.threshold or iterations >= prob.maxiter:
            return x, iterations, message, r_norm, "true"
        z = prob.precond(r)
        p = z
        rz = _dot(r, z)
        while iterations < prob.maxiter:
            ap = matvec(p)
            pap = _dot(p, ap)
            iterations += 1
            if not pap > 0 or not math.isfinite(pap):
                return (
                    x,
                    iterations,
                    f"breakdown: p^T A p = {pap:.3e} <= 0, the operator is not positive definite",
                    None,
                    "true",
                )
            alpha = rz / pap
            x = x + alpha * p
            r = r - alpha * ap
            r_norm = _norm(r)
            if r_norm <= prob.threshold:
                break
            z = prob.precond(r)
            rz_new = _dot(r, z)
            p = z + (rz_new / rz) * p
            rz = rz_new
        else:
            if r_norm > 2 * prob.threshold:
                return x, iterations, message, r_norm, "recursive"
            return x, iterations, message, None, "true"
        # recursive residual claims convergence: verify on the true residual
        r = b - matvec(x)


def cg(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Conjugate gradient for symmetric positive definite ``A + ridge I``.

    Minimises ``1/2 x^T (A + ridge I) x - b^T x`` over the Krylov spaces
    ``K_k = span{r_0, M A r_0, ..., (M A)^{k-1} r_0}`` where ``M`` is the preconditioner
    (itself symmetric positive definite). In exact arithmetic it terminates in at most ``n``
    iterations. A non-positive curvature ``p^T A p <= 0`` stops the solver with
    ``converged=False``.

    Every iteration costs one product; convergence is confirmed by one more product (the
    true residual). Stopped by ``maxiter`` (a fixed budget, e.g. ``tol=0``), the solver
    reports the recursive residual instead when it is above twice the threshold
    (``info.residual_source == "recursive"``), so a budget of ``k`` iterations costs
    exactly ``k`` products.
    """
    prob = _prepare("cg", matvec, b, init, tol, atol, maxiter, ridge, preconditioner)
    x, iterations, message, residual, source = _cg_flat(
        prob, prob.x0, prob.matvec, prob.b, x_is_zero=init is None
    )
    return _finish(prob, x, iterations, message, warn, residual, source)


def normal_cg(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    rmatvec: Matvec | None = None,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Conjugate gradient on the normal equations ``M^T M x = M^T b``, ``M = A + ridge I``.

    Works for any non-singular (possibly non-symmetric) ``A`` at the price of squaring its
    condition number; like every solver here it solves ``(A + ridge I) x = b``. ``rmatvec(v) = A^T v`` is derived by differentiating the linear map ``matvec``
    (a vector-Jacobian product) unless given. ``tol``, ``atol`` and the reported residual refer
    to the normal equations, ``||M^T b - M^T M x||``. The preconditioner, if given, must
    be symmetric positive definite (ideally close to ``(M^T M)^{-1}``).
    """
    check_tensor_leaves(b, "normal_cg: right-hand side b")
    if rmatvec is None:
        vjp_fn = torch.func.vjp(matvec, b)[1]

        def rmatvec(v: PyTree) -> PyTree:
            return vjp_fn(v)[0]

    if ridge:
        base_mv, base_rmv = matvec, rmatvec
        matvec = lambda v: tree_axpy(ridge, v, base_mv(v))
        rmatvec = lambda v: tree_axpy(ridge, v, base_rmv(v))

    rhs = rmatvec(b)

    def normal_matvec(v: PyTree) -> PyTree:
        return rmatvec(matvec(v))

    prob = _prepare("normal_cg", normal_matvec, rhs, init, tol, atol, maxiter, 0.0, preconditioner)
    x, iterations, message, residual, source = _cg_flat(
        prob, prob.x0, prob.matvec, prob.b, x_is_zero=init is None
    )
    return _finish(prob, x, iterations, message, warn, residual, source)


def gmres(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    restart: int = 30,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Restarted GMRES(m) for general non-singular ``A``, right-preconditioned.

    Each cycle builds an orthonormal basis ``V`` of the Krylov space of ``A M`` by
    Arnoldi with modified Gram-Schmidt (re-orthogonalised once), and picks
    ``x = x_0 + M V y`` with ``y`` minimising ``||beta e_1 - H y||`` (Givens rotations), i.e.
    the iterate of smallest true residual in the space. ``restart`` bounds the basis size
    (memory ``restart * n``); ``maxiter`` counts Arnoldi steps over all cycles.
    """
    prob = _prepare("gmres", matvec, b, init, tol, atol, maxiter, ridge, preconditioner)
    if restart < 1:
        raise ValueError(f"gmres: restart must be >= 1, got {restart}")
    m = min(int(restart), prob.b.numel())
    x = prob.x0
    iterations = 0
    message = ""
    while iterations < prob.maxiter:
        r = prob.b - prob.matvec(x)
        beta = _norm(r)
        if beta <= prob.threshold:
            break
        basis = [r / beta]
        hess = torch.zeros(m + 1, m, dtype=torch.float64)
        cs: list[float] = []
        sn: list[float] = []
        g = [beta] + [0.0] * m
        k = 0
        for j in range(m):
            w = prob.matvec(prob.precond(basis[j]))
            for _ in range(2):  # two passes of modified Gram-Schmidt
                for i in range(j + 1):
                    h = _dot(basis[i], w)
                    hess[i, j] += h
                    w = w - h * basis[i]
            h_next = _norm(w)
            hess[j + 1, j] = h_next
            for i in range(j):  # apply previous rotations to column j
                a, c = float(hess[i, j]), float(hess[i + 1, j])
                hess[i, j] = cs[i] * a + sn[i] * c
                hess[i + 1, j] = -sn[i] * a + cs[i] * c
            a, c = float(hess[j, j]), float(hess[j + 1, j])
            denom = math.hypot(a, c)
            cj, sj = (1.0, 0.0) if denom == 0 else (a / denom, c / denom)
            cs.append(cj)
            sn.append(sj)
            hess[j, j] = denom
            hess[j + 1, j] = 0.0
            g[j + 1] = -sj * g[j]
            g[j] = cj * g[j]
            k = j + 1
            iterations += 1
            if abs(g[j + 1]) <= prob.threshold or iterations >= prob.maxiter:
                break
            if h_next <= 1e-14 * beta:  # happy breakdown: exact solution in the space
                break
            basis.append(w / h_next)
        upper = hess[:k, :k]
        if bool((torch.diagonal(upper) == 0).any()):
            message = "breakdown: singular Hessenberg matrix (A may be singular)"
            break
        y = torch.linalg.solve_triangular(
            upper, torch.tensor(g[:k], dtype=torch.float64).unsqueeze(1), upper=True
        ).squeeze(1)
        update = sum((float(y[i]) * basis[i] for i in range(k)), torch.zeros_like(basis[0]))
        x = x + prob.precond(update)
    return _finish(prob, x, iterations, message, warn)


def bicgstab(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Preconditioned BiCGSTAB (van der Vorst, 1992) for general non-singular ``A``.

    Short recurrences (memory independent of the iteration count), two products with ``A``
    per iteration; ``maxiter`` counts iterations. A vanishing ``rho = r_hat^T r`` restarts the
    shadow residual ``r_hat`` from the current residual.
    """
    prob = _prepare("bicgstab", matvec, b, init, tol, atol, maxiter, ridge, preconditioner)
    x = prob.x0
    r = prob.b - prob.matvec(x)
    r_hat = r.clone()
    rho = alpha = omega = 1.0
    v = torch.zeros_like(r)
    p = torch.zeros_like(r)
    iterations = 0
    message = ""
    while iterations < prob.maxiter and _norm(r) > prob.threshold:
        rho_new = _dot(r_hat, r)
        if abs(rho_new) <= 1e-300:
            r_hat = r.clone()
            rho_new = _dot(r_hat, r)
            p = torch.zeros_like(r)
            v = torch.zeros_like(r)
            rho = alpha = omega = 1.0
        beta = (rho_new / rho) * (alpha / omega)
        p = r + beta * (p - omega * v)
        p_hat = prob.precond(p)
        v = prob.matvec(p_hat)
        denom = _dot(r_hat, v)
        iterations += 1
        if denom == 0 or not math.isfinite(denom):
            message = "breakdown: r_hat^T A p = 0"
            break
        alpha = rho_new / denom
        s = r - alpha * v
        if _norm(s) <= prob.threshold:
            x = x + alpha * p_hat
            r = s
            break
        s_hat = prob.precond(s)
        t = prob.matvec(s_hat)
        tt = _dot(t, t)
        if tt == 0 or not math.isfinite(tt):
            x = x + alpha * p_hat
            message = "breakdown: t^T t = 0"
            break
        omega = _dot(t, s) / tt
        x = x + alpha * p_hat + omega * s_hat
        r = s - omega * t
        rho = rho_new
        if omega == 0:
            message = "breakdown: omega = 0"
            break
    return _finish(prob, x, iterations, message, warn)


def neumann(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    alpha: float = 1.0,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Truncated Neumann series ``x = alpha * sum_{k=0}^{K} (I - alpha A)^k b``.

    Computed as the Richardson iteration ``x_{k+1} = x_k + alpha M r_k`` from ``x_0 = init``
    (zero by default: then ``x_{K+1}`` is exactly the series above with ``M = I``), with the
    residual carried by the recursion ``r_{k+1} = r_k - alpha A M r_k``, which equals
    ``b - A x_{k+1}`` (one product per term, none for the first term when ``init`` is zero).
    It converges iff the spectral radius of ``I - alpha M A`` is below one, e.g. for symmetric
    positive definite ``A`` when ``0 < alpha < 2 / lambda_max(A)``. The run stops early,
    unconverged, when the residual grows by 1e10 (``alpha`` too large).

    With ``tol = atol = 0`` (a fixed number of terms, as in hypergradient estimators) the
    residual after the last term is not needed to stop, and it is not computed: the series
    then costs ``maxiter - 1`` products and the result reports ``residual_norm = nan``,
    ``converged = False``.
    """
    prob = _prepare("neumann", matvec, b, init, tol, atol, maxiter, ridge, preconditioner)
    if not alpha > 0:
        raise ValueError(f"neumann: alpha must be positive, got {alpha}")
    fixed_terms = prob.threshold == 0.0
    x = prob.x0
    r = prob.b if init is None else prob.b - prob.matvec(x)
    r0 = _norm(r)
    r_norm = r0
    iterations = 0
    message = ""
    while iterations < prob.maxiter:
        if r_norm <= prob.threshold:
            break
        if not math.isfinite(r_norm) or r_norm > 1e10 * max(r0, 1e-300):
            message = f"diverged: the series does not converge for alpha = {alpha}"
            break
        step = alpha * prob.precond(r)
        x = x + step
        iterations += 1
        if fixed_terms and iterations == prob.maxiter:
            r_norm = math.nan
            message = f"fixed number of terms ({iterations}); residual not computed"
            break
        r = r - prob.matvec(step)
        r_norm = _norm(r)
    source = "not computed" if math.isnan(r_norm) else ("true" if iterations == 0 else "recursive")
    return _finish(prob, x, iterations, message, warn, r_norm, source)


def materialize(matvec: Callable[[Vector], Vector], n: int, like: Vector) -> torch.Tensor:
    """Form the ``n x n`` matrix of a linear map on vectors, column by column.

    Uses :func:`torch.vmap` over the identity; falls back to a Python loop when ``matvec``
    cannot be vmapped.
    """
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    try:
        columns = torch.vmap(matvec)(eye)
    except RuntimeError:
        columns = torch.stack([matvec(e) for e in eye])
    return columns.T


def is_symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """Whether each (batched) square ``matrix`` equals its conjugate transpose to rounding.

    The test is ``max |M - M^H| <= 64 * eps * max |M|`` per matrix (a boolean tensor over the
    batch dimensions): autodiff Hessians are symmetric up to a few ulps of their largest entry.
    """
    eps = torch.finfo(matrix.dtype).eps
    scale = matrix.abs().amax(dim=(-2, -1))
    return (matrix - matrix.mH).abs().amax(dim=(-2, -1)) <= 64 * eps * scale


def factor_solve(
    matrix: torch.Tensor, rhs: torch.Tensor, assume: Literal["auto", "general", "spd"] = "auto"
) -> tuple[torch.Tensor, str]:
    """Solve ``matrix @ x = rhs`` by a dense factorisation, batched over leading dimensions.

    ``matrix`` is ``(..., n, n)`` and ``rhs`` ``(..., n, k)``. Cholesky (``A = L L^H``,
    ``n^3 / 3`` flops) is used when every matrix is positive definite and, for
    ``assume="auto"``, symmetric to rounding (:func:`is_symmetric`); otherwise LU with
    partial pivoting (``2 n^3 / 3``). Returns ``(x, "cholesky" | "lu")``. A singular matrix
    raises :class:`torch.linalg.LinAlgError`.
    """
    if assume not in ("auto", "general", "spd"):
        raise ValueError(f"assume must be 'auto', 'general' or 'spd', got {assume!r}")
    if assume == "spd" or (assume == "auto" and bool(is_symmetric(matrix).all())):
        chol, status = torch.linalg.cholesky_ex(matrix)
        if not bool(status.any()):
            return torch.cholesky_solve(rhs, chol), "cholesky"
    lu, pivots, status = torch.linalg.lu_factor_ex(matrix)
    if bool(status.any()):
        n = matrix.shape[-1]
        raise torch.linalg.LinAlgError(
            f"the {n}x{n} matrix is singular (zero pivot {int(status.max())}); "
            "the implicit function theorem needs a non-singular Jacobian: add a ridge."
        )
    return torch.linalg.lu_solve(lu, pivots, rhs), "lu"


def dense(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    assume: Literal["general", "spd"] = "general",
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Direct solve: form ``A + ridge I`` (``n`` products with ``A``), then factorise.

    ``assume="spd"`` uses a Cholesky factorisation (falling back to LU with pivoting if the
    matrix is not numerically positive definite); ``"general"`` uses LU with partial
    pivoting. Costs ``O(n^2)`` memory and ``O(n^3)`` time: for small problems. ``init``,
    ``maxiter`` and ``preconditioner`` are accepted for interface compatibility and ignored.
    The residual of the result is still checked against ``tol``. A singular matrix raises
    :class:`torch.linalg.LinAlgError`.
    """
    del maxiter, preconditioner
    prob = _prepare("dense", matvec, b, init, tol, atol, None, ridge, None)
    if assume not in ("general", "spd"):
        raise ValueError(f"dense: assume must be 'general' or 'spd', got {assume!r}")
    matrix = materialize(prob.matvec, prob.b.numel(), prob.b)
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("dense: the linear operator produced NaN or inf entries")
    try:
        x, _ = factor_solve(matrix, prob.b.unsqueeze(1), assume=assume)
    except torch.linalg.LinAlgError as exc:
        raise torch.linalg.LinAlgError(f"dense: {exc}") from None
    return _finish(prob, x.squeeze(1), 1, "", warn)


#: Largest system size ``n`` that :func:`auto` solves densely (measured crossover, see
#: ``benchmarks/README.md``, section ``core_speed.py``).
DENSE_MAX = 256


def _probe_symmetric(mv: Callable[[Vector], Vector], like: Vector) -> bool:
    """``<s, A r> == <A s, r>`` to ``sqrt(eps)`` for two fixed pseudo-random vectors.

    For a non-symmetric ``A`` the two sides differ by ``s^T (A - A^T) r``, a non-zero
    quadratic form of random vectors, so equality to this tolerance does not happen by
    chance; a symmetric ``A`` computed by autodiff agrees to rounding.
    """
    gen = torch.Generator(device=like.device).manual_seed(0)
    r = torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)
    s = torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)
    ar, as_ = mv(r), mv(s)
    lhs, rhs = torch.vdot(s, ar), torch.vdot(as_, r)
    scale = torch.linalg.vector_norm(ar) * torch.linalg.vector_norm(s) + torch.linalg.vector_norm(
        as_
    ) * torch.linalg.vector_norm(r)
    tol = math.sqrt(torch.finfo(like.dtype).eps)
    return bool((lhs - rhs).abs() <= tol * scale)


def auto(
    matvec: Matvec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    ridge: float = 0.0,
    preconditioner: Matvec | None = None,
    dense_max: int = DENSE_MAX,
    warn: bool = True,
) -> tuple[PyTree, LinearSolveInfo]:
    """Pick the algorithm from the size and structure of ``A`` (the default everywhere).

    * ``n <= dense_max`` and no preconditioner: form ``M = A + ridge I`` with one vmapped
      batch of ``n`` products (:func:`materialize`) and factorise it (:func:`factor_solve`:
      Cholesky if ``M`` is symmetric to rounding and positive definite, LU otherwise). The
      residual ``||b - M x||`` is checked as for every solver; if the factorisation fails
      (singular ``M``) or misses the tolerance, the Krylov branch below runs instead.
    * otherwise: :func:`cg` when a two-vector probe finds ``A`` symmetric
      (``<s, A r> = <A s, r>``), falling back to :func:`gmres` if CG breaks down or does not
      converge; :func:`gmres` for non-symmetric ``A``.

    The crossover ``dense_max`` is measured (``benchmarks/core_speed.py``): below it one
    batched product and an ``O(n^3)`` factorisation beat tens of sequential products.
    ``info.solver`` names the branch taken: ``"auto:cholesky"``, ``"auto:lu"``,
    ``"auto:cg"`` or ``"auto:gmres"``.
    """
    check_tensor_leaves(b, "auto: right-hand side b")
    n = sum(leaf.numel() for leaf in tree_leaves(b))
    if int(dense_max) < 0:
        raise ValueError(f"auto: dense_max must be >= 0, got {dense_max}")
    prob = _prepare("auto", matvec, b, init, tol, atol, maxiter, ridge, preconditioner)
    symmetric: bool | None = None
    if n <= dense_max and preconditioner is None:
        matrix = materialize(prob.matvec, n, prob.b)
        if bool(torch.isfinite(matrix).all()):
            symmetric = bool(is_symmetric(matrix))
            try:
                x, method = factor_solve(matrix, prob.b.unsqueeze(1))
            except torch.linalg.LinAlgError:
                method = ""
            if method:
                x = x.squeeze(1)
                residual = _norm(prob.b - matrix @ x)
                if residual <= prob.threshold:
                    prob.name = f"auto:{method}"
                    return _finish(prob, x, 1, "", warn, residual=residual)
    if symmetric is None:
        symmetric = _probe_symmetric(prob.matvec, prob.b)
    options = _Options(
        init=init, tol=tol, atol=atol, maxiter=maxiter, ridge=ridge, preconditioner=preconditioner
    )
    if symmetric:
        x, info = cg(matvec, b, warn=False, **options)
        if info.converged:
            return x, dataclasses.replace(info, solver="auto:cg")
    x, info = gmres(matvec, b, warn=warn, **options)
    return x, dataclasses.replace(info, solver="auto:gmres")


SOLVERS: dict[str, LinearSolver] = {
    "cg": cg,
    "normal_cg": normal_cg,
    "gmres": gmres,
    "bicgstab": bicgstab,
    "neumann": neumann,
    "dense": dense,
    "auto": auto,
}


def get_solver(solver: str | LinearSolver) -> LinearSolver:
    """Resolve a solver given by name (``"cg"``, ``"gmres"``, ...) or pass a callable through."""
    if callable(solver):
        return solver
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(
            f"unknown linear solver {solver!r}; choose one of {sorted(SOLVERS)} or pass a callable"
        ) from None
