r"""Differentiable Euclidean projections onto convex sets.

Every function in this module returns the Euclidean projection

.. math::

    P_C(x) = \operatorname*{argmin}_{y \in C} \tfrac12 \lVert y - x \rVert_2^2

of its input ``x`` onto a closed convex set :math:`C` that may depend on
hyperparameters :math:`\theta` (a radius, a scale, box bounds, ...).

All operators are written with pure PyTorch tensor operations and contain no
Python control flow that depends on tensor *values*.  They therefore work with
ordinary autograd as well as with :func:`torch.vmap`, :func:`torch.func.grad`,
:func:`torch.func.jvp`, :func:`torch.func.jacrev` and :func:`torch.func.jacfwd`,
and they are differentiable almost everywhere with respect to both ``x`` and the
hyperparameters.  This is what implicit differentiation of fixed points such as
:math:`T(x, \theta) = P_{C(\theta)}(x - \eta \nabla f(x))` requires.

Operators acting on vectors (simplex, balls, hyperplane, half-space) act along
the **last** dimension of ``x``; leading dimensions are batch dimensions.

Input validation (signs of radii, ordering of box bounds, ...) is performed only
on *concrete* values: Python numbers, or plain tensors that are not wrapped by a
``torch.func`` transform (``vmap``, ``grad``, ...) and not being traced by
``torch.compile``.  For wrapped tensors such a check would be data dependent, so
it is skipped silently and the caller is responsible for passing valid values.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_non_negative",
    "projection_simplex",
]

TensorOrScalar = Tensor | float


# --------------------------------------------------------------------------- #
# Helpers (shared with :mod:`bilevel.operators.prox`)
# --------------------------------------------------------------------------- #
def _check_x(x: object, name: str, min_dim: int = 0, arg: str = "x") -> Tensor:
    """Check that the argument ``arg`` is a tensor with at least ``min_dim`` dimensions.

    Integer and boolean tensors are promoted to the default floating dtype.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name}: {arg} must have at least {min_dim} dimension(s) "
            f"(the operator acts along the last dimension), got a {x.dim()}-d tensor."
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x


def _is_concrete(value: object) -> bool:
    """Return ``True`` if the value of ``value`` may be inspected in Python.

    Python numbers are concrete.  A tensor is concrete when it is not wrapped by
    a ``torch.func`` transform (batched by ``vmap``, tracked by ``grad``/``jvp``),
    is not a meta tensor and no ``torch.compile`` tracing is in progress.
    """
    if isinstance(value, numbers.Real):
        return True
    if not isinstance(value, Tensor):
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(value):
        return False
    return not (value.is_meta or torch.compiler.is_compiling())


def _as_param(value: object, x: Tensor, op: str, name: str, nonneg: bool = False) -> Tensor:
    """Convert a hyperparameter to a tensor with the dtype/device of ``x``.

    Tensors are converted with a differentiable ``.to`` so that gradients flow
    back to the caller's tensor.  If ``nonneg`` is set, a negative *Python
    number* raises :class:`ValueError`.
    """
    if isinstance(value, Tensor):
        return value.to(dtype=x.dtype, device=x.device)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{op}: {name} must be a real number or a torch.Tensor, got {type(value).__name__}."
        )
    if nonneg and value < 0:
        raise ValueError(f"{op}: {name} must be non-negative, got {value}.")
    return torch.tensor(float(value), dtype=x.dtype, device=x.device)


def _to_cpu64(value: Tensor | float) -> Tensor:
    """Detached float64 CPU copy of a concrete bound, for validation only."""
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def _batch(param: Tensor) -> Tensor:
    """Append a trailing axis so that a per-vector parameter broadcasts against x.

    A hyperparameter of a vector operator is a scalar or has the batch shape
    ``x.shape[:-1]``; adding an axis makes it broadcast along the last dimension.
    """
    return param.unsqueeze(-1)


def _safe_norm(x: Tensor, dim: int = -1, keepdim: bool = True) -> tuple[Tensor, Tensor]:
    r"""Euclidean norm along ``dim`` with finite derivatives at the origin.

    Returns
    -------
    norm : Tensor
        :math:`\lVert x \rVert_2` (exactly ``0`` at the origin).
    safe_sq : Tensor
        The squared norm with zeros replaced by ones; ``sqrt(safe_sq)`` is
        differentiable everywhere, and is used as a NaN-free divisor.
    """
    sq = torch.sum(x * x, dim=dim, keepdim=keepdim)
    is_zero = sq == 0
    safe_sq = torch.where(is_zero, torch.ones_like(sq), sq)
    norm = torch.where(is_zero, torch.zeros_like(sq), torch.sqrt(safe_sq))
    return norm, safe_sq


# --------------------------------------------------------------------------- #
# Orthant and box
# --------------------------------------------------------------------------- #
def projection_non_negative(x: Tensor) -> Tensor:
    r"""Project onto the non-negative orthant.

    Solves

    .. math::

        \operatorname*{argmin}_{y \ge 0} \tfrac12 \lVert y - x \rVert_2^2,

    whose closed form is the element-wise :math:`y = \max(x, 0)`.

    Parameters
    ----------
    x : Tensor
        Input tensor of any shape.

    Returns
    -------
    Tensor
        ``relu(x)``, same shape as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.
    """
    x = _check_x(x, "projection_non_negative")
    return torch.relu(x)


def projection_box(x: Tensor, lower: TensorOrScalar, upper: TensorOrScalar) -> Tensor:
    r"""Project onto the box :math:`\{y : l \le y \le u\}`.

    Solves

    .. math::

        \operatorname*{argmin}_{l \le y \le u} \tfrac12 \lVert y - x \rVert_2^2,

    whose closed form is the element-wise clipping
    :math:`y_i = \min(\max(x_i, l_i), u_i)`.  The result is differentiable almost
    everywhere in ``x``, ``lower`` and ``upper``:
    :math:`\partial y_i / \partial x_i = 1` inside the box,
    :math:`\partial y_i / \partial l_i = 1` where :math:`x_i < l_i` and
    :math:`\partial y_i / \partial u_i = 1` where :math:`x_i > u_i`.

    Parameters
    ----------
    x : Tensor
        Input tensor.
    lower, upper : Tensor or float
        Bounds, broadcastable against ``x``.  Infinite values are allowed.

    Returns
    -------
    Tensor
        The clipped tensor, with the broadcast shape of ``x``, ``lower`` and
        ``upper``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor, or a bound is neither a number nor a tensor.
    ValueError
        If some ``lower > upper``.  The check is only performed when both bounds
        are concrete (Python numbers or tensors not wrapped by a ``torch.func``
        transform such as ``vmap``); under transforms it is skipped because it
        would depend on traced values.
    """
    x = _check_x(x, "projection_box")
    if _is_concrete(lower) and _is_concrete(upper):
        with torch.no_grad():
            if bool(torch.any(_to_cpu64(lower) > _to_cpu64(upper))):
                raise ValueError(
                    "projection_box: lower must be <= upper element-wise, "
                    "but some lower bound exceeds the corresponding upper bound."
                )
    lo_t = _as_param(lower, x, "projection_box", "lower")
    up_t = _as_param(upper, x, "projection_box", "upper")
    return torch.minimum(torch.maximum(x, lo_t), up_t)


# --------------------------------------------------------------------------- #
# Simplex and balls
# --------------------------------------------------------------------------- #
def projection_simplex(x: Tensor, scale: TensorOrScalar = 1.0) -> Tensor:
    r"""Project onto the scaled probability simplex along the last dimension.

    Solves, for each vector :math:`x \in \mathbb{R}^n` along the last dimension,

    .. math::

        \operatorname*{argmin}_{y \ge 0,\ \mathbf{1}^\top y = s}
        \tfrac12 \lVert y - x \rVert_2^2 .

    The KKT conditions give :math:`y = \max(x - \tau, 0)` where the threshold
    :math:`\tau` solves :math:`\sum_i \max(x_i - \tau, 0) = s`.  With
    :math:`u` the entries of :math:`x` sorted in decreasing order (Held, Wolfe
    and Crowder, 1974; Duchi et al., 2008),

    .. math::

        \rho = \max\Bigl\{k : u_k - \tfrac1k \bigl(\textstyle\sum_{j\le k} u_j - s\bigr)
        > 0\Bigr\},
        \qquad
        \tau = \tfrac1\rho \bigl(\textstyle\sum_{j\le\rho} u_j - s\bigr).

    The implementation uses ``sort``, ``cumsum`` and masks (no loops), costs
    :math:`O(n \log n)` and is differentiable almost everywhere in ``x`` and
    ``s``; on the support :math:`\partial y / \partial s = 1/\rho`.

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``; each vector along the last dimension is
        projected independently.
    scale : Tensor or float, default 1.0
        The simplex scale :math:`s \ge 0`; a scalar or a tensor broadcastable to
        ``x.shape[:-1]`` (one scale per vector).

    Returns
    -------
    Tensor
        The projection, same shape as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor or ``scale`` is not a number or tensor.
    ValueError
        If ``x`` is 0-dimensional, or ``scale`` is a negative Python number
        (the set would be empty).
    """
    x = _check_x(x, "projection_simplex", min_dim=1)
    s = _batch(_as_param(scale, x, "projection_simplex", "scale", nonneg=True))
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - s
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    # The condition holds exactly for k = 1..rho, so counting it gives rho.
    support = (u - css / k) > 0
    rho = torch.clamp(torch.sum(support, dim=-1, keepdim=True), min=1)
    css_rho = torch.gather(css, -1, rho - 1)
    tau = css_rho / rho.to(x.dtype)
    return torch.relu(x - tau)


def projection_l1_ball(x: Tensor, radius: TensorOrScalar = 1.0) -> Tensor:
    r"""Project onto the :math:`\ell_1` ball along the last dimension.

    Solves

    .. math::

        \operatorname*{argmin}_{\lVert y \rVert_1 \le r} \tfrac12 \lVert y - x \rVert_2^2 .

    If :math:`\lVert x \rVert_1 \le r` the solution is :math:`x` itself;
    otherwise (Duchi et al., 2008) it is

    .. math::

        y = \operatorname{sign}(x) \odot P_{\Delta_r}(\lvert x \rvert),

    where :math:`P_{\Delta_r}` is the projection onto the simplex of scale
    :math:`r` (see :func:`projection_simplex`).  Equivalently
    :math:`y = \operatorname{sign}(x) \max(\lvert x \rvert - \tau, 0)` for the
    threshold :math:`\tau \ge 0` making :math:`\lVert y \rVert_1 = r`.  The two
    cases are combined with ``torch.where``.

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``.
    radius : Tensor or float, default 1.0
        Radius :math:`r \ge 0`; scalar or broadcastable to ``x.shape[:-1]``.

    Returns
    -------
    Tensor
        The projection, same shape as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor or ``radius`` is not a number or tensor.
    ValueError
        If ``x`` is 0-dimensional or ``radius`` is a negative Python number.
    """
    x = _check_x(x, "projection_l1_ball", min_dim=1)
    r = _as_param(radius, x, "projection_l1_ball", "radius", nonneg=True)
    inside = torch.sum(torch.abs(x), dim=-1, keepdim=True) <= _batch(r)
    y = torch.sign(x) * projection_simplex(torch.abs(x), r)
    return torch.where(inside, x, y)


def projection_l2_ball(x: Tensor, radius: TensorOrScalar = 1.0) -> Tensor:
    r"""Project onto the Euclidean ball along the last dimension.

    Solves

    .. math::

        \operatorname*{argmin}_{\lVert y \rVert_2 \le r} \tfrac12 \lVert y - x \rVert_2^2,

    whose closed form is the radial rescaling

    .. math::

        y = x \, \min\Bigl(1, \frac{r}{\lVert x \rVert_2}\Bigr).

    The norm and the ratio are computed with masked ("double ``where``")
    arithmetic, so both the value and the derivatives are finite at
    :math:`x = 0` (where :math:`y = x = 0` and :math:`\partial y/\partial x = I`
    whenever :math:`r > 0`).

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``.
    radius : Tensor or float, default 1.0
        Radius :math:`r \ge 0`; scalar or broadcastable to ``x.shape[:-1]``.

    Returns
    -------
    Tensor
        The projection, same shape as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor or ``radius`` is not a number or tensor.
    ValueError
        If ``x`` is 0-dimensional or ``radius`` is a negative Python number.
    """
    x = _check_x(x, "projection_l2_ball", min_dim=1)
    r = _batch(_as_param(radius, x, "projection_l2_ball", "radius", nonneg=True))
    norm, safe_sq = _safe_norm(x)
    outside = norm > r
    safe_norm = torch.where(outside, torch.sqrt(safe_sq), torch.ones_like(norm))
    factor = torch.where(outside, r / safe_norm, torch.ones_like(norm))
    return x * factor


# --------------------------------------------------------------------------- #
# Affine sets
# --------------------------------------------------------------------------- #
def _check_normal(a: Tensor, op: str) -> None:
    """Raise if a concrete normal vector ``a`` is zero (the set is degenerate)."""
    if _is_concrete(a):
        with torch.no_grad():
            if bool(torch.any(torch.sum(a.detach() * a.detach(), dim=-1) == 0)):
                raise ValueError(f"{op}: the normal vector a must be non-zero.")


def projection_hyperplane(x: Tensor, a: Tensor, b: TensorOrScalar) -> Tensor:
    r"""Project onto the hyperplane :math:`\{y : a^\top y = b\}` along the last dimension.

    Solves

    .. math::

        \operatorname*{argmin}_{a^\top y = b} \tfrac12 \lVert y - x \rVert_2^2,

    whose closed form (for :math:`a \ne 0`) is

    .. math::

        y = x - \frac{a^\top x - b}{\lVert a \rVert_2^2}\, a .

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``.
    a : Tensor
        Normal vector(s), shape broadcastable to ``x``; must be non-zero.
    b : Tensor or float
        Offset(s); scalar or broadcastable to ``x.shape[:-1]``.

    Returns
    -------
    Tensor
        The projection, with the broadcast shape of ``x`` and ``a``.

    Raises
    ------
    TypeError
        If ``x`` or ``a`` is not a tensor, or ``b`` is not a number or tensor.
    ValueError
        If ``x`` is 0-dimensional, or ``a`` is concrete (see the module notes)
        and zero.
    """
    return _affine_projection(x, a, b, "projection_hyperplane", inequality=False)


def projection_halfspace(x: Tensor, a: Tensor, b: TensorOrScalar) -> Tensor:
    r"""Project onto the half-space :math:`\{y : a^\top y \le b\}` along the last dimension.

    Solves

    .. math::

        \operatorname*{argmin}_{a^\top y \le b} \tfrac12 \lVert y - x \rVert_2^2,

    whose closed form (for :math:`a \ne 0`) is

    .. math::

        y = x - \frac{\max(a^\top x - b, 0)}{\lVert a \rVert_2^2}\, a .

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``.
    a : Tensor
        Normal vector(s), shape broadcastable to ``x``; must be non-zero.
    b : Tensor or float
        Offset(s); scalar or broadcastable to ``x.shape[:-1]``.

    Returns
    -------
    Tensor
        The projection, with the broadcast shape of ``x`` and ``a``.

    Raises
    ------
    TypeError
        If ``x`` or ``a`` is not a tensor, or ``b`` is not a number or tensor.
    ValueError
        If ``x`` is 0-dimensional, or ``a`` is concrete (see the module notes)
        and zero.
    """
    return _affine_projection(x, a, b, "projection_halfspace", inequality=True)


def _affine_projection(
    x: Tensor, a: Tensor, b: TensorOrScalar, op: str, *, inequality: bool
) -> Tensor:
    """``x - r / ||a||^2 a`` with ``r = a^T x - b`` (clipped at 0 for the half-space)."""
    x = _check_x(x, op, min_dim=1)
    a = _check_x(a, op, min_dim=1, arg="a")
    _check_normal(a, op)
    a = _as_param(a, x, op, "a")
    b_t = _batch(_as_param(b, x, op, "b"))
    residual = torch.sum(a * x, dim=-1, keepdim=True) - b_t
    if inequality:
        residual = torch.relu(residual)
    return x - residual / torch.sum(a * a, dim=-1, keepdim=True) * a
