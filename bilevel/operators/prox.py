r"""Differentiable proximal operators.

Convention: for a convex function :math:`g(\cdot, \theta)` with hyperparameters
:math:`\theta` and a step size (``scaling``) :math:`s \ge 0`,

.. math::

    \operatorname{prox}_{s g}(x, \theta)
    = \operatorname*{argmin}_y \tfrac12 \lVert y - x \rVert_2^2 + s\, g(y, \theta),

and every function here has the signature ``prox(x, hyperparams, scaling=1.0)``.

The operators are closed-form expressions written with pure PyTorch tensor
operations and without Python control flow on tensor values, so they work with
ordinary autograd, :func:`torch.vmap`, :func:`torch.func.grad`,
:func:`torch.func.jvp`, :func:`torch.func.jacrev` and :func:`torch.func.jacfwd`,
and are differentiable almost everywhere in ``x``, the hyperparameters and
``scaling``.  Negative hyperparameters or scalings given as Python numbers raise
:class:`ValueError`; tensor-valued ones are not inspected (their values may be
traced by a transform), so the caller must keep them non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bilevel.operators.projections import _as_param, _batch, _check_x

__all__ = [
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "prox_none",
]

TensorOrScalar = Tensor | float


def _soft_threshold(x: Tensor, threshold: Tensor) -> Tensor:
    r"""Element-wise soft-thresholding :math:`\operatorname{sign}(x)\max(|x| - t, 0)`."""
    return torch.sign(x) * torch.relu(torch.abs(x) - threshold)


def _block_shrink_factor(sq_norm: Tensor, threshold: Tensor) -> Tensor:
    r"""Factor :math:`\max(0, 1 - t / \lVert v \rVert)` from a squared norm, NaN-free.

    Zero norms are masked out before the square root and the division (the
    "double ``where``" trick), so the value is ``0`` and all derivatives are
    finite when the block is zero.
    """
    is_zero = sq_norm == 0
    safe_sq = torch.where(is_zero, torch.ones_like(sq_norm), sq_norm)
    norm = torch.where(is_zero, torch.zeros_like(sq_norm), torch.sqrt(safe_sq))
    shrink = norm > threshold
    safe_norm = torch.where(shrink, torch.sqrt(safe_sq), torch.ones_like(sq_norm))
    return torch.where(shrink, 1 - threshold / safe_norm, torch.zeros_like(sq_norm))


def _group_membership(groups: Tensor | Sequence[int], x: Tensor) -> Tensor:
    """One-hot membership matrix of shape ``(n, n_groups)`` for group labels."""
    if isinstance(groups, Tensor):
        labels = groups.detach().to(device=x.device)
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        labels = torch.as_tensor(list(groups), device=x.device)
    else:
        raise TypeError(
            "prox_group_lasso: groups must be None, an integer tensor or a sequence of "
            f"integers, got {type(groups).__name__}."
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"prox_group_lasso: groups must hold integer labels, got {labels.dtype}.")
    n = x.shape[-1]
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(
            "prox_group_lasso: groups must be a 1-d sequence with one label per entry of the "
            f"last dimension of x (length {n}), got shape {tuple(labels.shape)}."
        )
    unique_labels, index = torch.unique(labels, sorted=True, return_inverse=True)
    return F.one_hot(index, unique_labels.numel()).to(dtype=x.dtype)


def prox_none(x: Tensor, hyperparams: Any = None, scaling: TensorOrScalar = 1.0) -> Tensor:
    r"""Proximal operator of the zero function (the identity).

    Solves

    .. math::

        \operatorname*{argmin}_y \tfrac12 \lVert y - x \rVert_2^2 + s \cdot 0 = x .

    Parameters
    ----------
    x : Tensor
        Input tensor.
    hyperparams : Any, optional
        Ignored; present for signature compatibility.
    scaling : Tensor or float, default 1.0
        Ignored.

    Returns
    -------
    Tensor
        ``x`` unchanged.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.
    """
    del hyperparams, scaling
    return _check_x(x, "prox_none")


def prox_l1(x: Tensor, l1reg: TensorOrScalar, scaling: TensorOrScalar = 1.0) -> Tensor:
    r"""Proximal operator of the (weighted) :math:`\ell_1` norm: soft-thresholding.

    With :math:`g(y) = \sum_i \lambda_i \lvert y_i \rvert` solves

    .. math::

        \operatorname*{argmin}_y \tfrac12 \lVert y - x \rVert_2^2
        + s \sum_i \lambda_i \lvert y_i \rvert,

    whose closed form is the element-wise soft-thresholding

    .. math::

        y_i = \operatorname{sign}(x_i) \max(\lvert x_i \rvert - s \lambda_i, 0).

    Parameters
    ----------
    x : Tensor
        Input tensor.
    l1reg : Tensor or float
        Regularisation strength :math:`\lambda \ge 0`; a scalar, or a tensor
        broadcastable against ``x`` for per-coordinate weights.
    scaling : Tensor or float, default 1.0
        Step size :math:`s \ge 0`.

    Returns
    -------
    Tensor
        The soft-thresholded tensor (broadcast shape of ``x`` and ``l1reg``).

    Raises
    ------
    TypeError
        If ``x`` is not a tensor or a hyperparameter is not a number or tensor.
    ValueError
        If ``l1reg`` or ``scaling`` is a negative Python number.
    """
    x = _check_x(x, "prox_l1")
    lam = _as_param(l1reg, x, "prox_l1", "l1reg", nonneg=True)
    s = _as_param(scaling, x, "prox_l1", "scaling", nonneg=True)
    return _soft_threshold(x, s * lam)


def prox_elastic_net(
    x: Tensor,
    hyperparams: tuple[TensorOrScalar, TensorOrScalar],
    scaling: TensorOrScalar = 1.0,
) -> Tensor:
    r"""Proximal operator of the elastic-net penalty.

    With :math:`g(y) = \lambda_1 \lVert y \rVert_1 + \tfrac12 \lambda_2 \lVert y \rVert_2^2`
    solves

    .. math::

        \operatorname*{argmin}_y \tfrac12 \lVert y - x \rVert_2^2
        + s \lambda_1 \lVert y \rVert_1 + \tfrac{s \lambda_2}{2} \lVert y \rVert_2^2,

    whose closed form is

    .. math::

        y_i = \frac{\operatorname{sign}(x_i) \max(\lvert x_i \rvert - s\lambda_1, 0)}
                   {1 + s \lambda_2}.

    Parameters
    ----------
    x : Tensor
        Input tensor.
    hyperparams : tuple of (Tensor or float, Tensor or float)
        ``(l1reg, l2reg)`` = :math:`(\lambda_1, \lambda_2)`, both non-negative
        and broadcastable against ``x``.
    scaling : Tensor or float, default 1.0
        Step size :math:`s \ge 0`.

    Returns
    -------
    Tensor
        The proximal point.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor, ``hyperparams`` is not a pair, or a
        hyperparameter is not a number or tensor.
    ValueError
        If a hyperparameter or ``scaling`` is a negative Python number.
    """
    x = _check_x(x, "prox_elastic_net")
    if isinstance(hyperparams, Tensor) or not isinstance(hyperparams, Sequence):
        raise TypeError(
            "prox_elastic_net: hyperparams must be a pair (l1reg, l2reg), "
            f"got {type(hyperparams).__name__}."
        )
    if len(hyperparams) != 2:
        raise TypeError(
            "prox_elastic_net: hyperparams must be a pair (l1reg, l2reg), "
            f"got a sequence of length {len(hyperparams)}."
        )
    l1reg, l2reg = hyperparams
    lam1 = _as_param(l1reg, x, "prox_elastic_net", "l1reg", nonneg=True)
    lam2 = _as_param(l2reg, x, "prox_elastic_net", "l2reg", nonneg=True)
    s = _as_param(scaling, x, "prox_elastic_net", "scaling", nonneg=True)
    return _soft_threshold(x, s * lam1) / (1 + s * lam2)


def prox_group_lasso(
    x: Tensor,
    l2reg: TensorOrScalar,
    scaling: TensorOrScalar = 1.0,
    groups: Tensor | Sequence[int] | None = None,
) -> Tensor:
    r"""Proximal operator of the group-lasso penalty: block soft-thresholding.

    With :math:`g(y) = \lambda \sum_{G} \lVert y_G \rVert_2` solves

    .. math::

        \operatorname*{argmin}_y \tfrac12 \lVert y - x \rVert_2^2
        + s \lambda \sum_{G} \lVert y_G \rVert_2,

    which separates over groups with closed form

    .. math::

        y_G = \max\Bigl(0, 1 - \frac{s \lambda}{\lVert x_G \rVert_2}\Bigr) x_G

    (and :math:`y_G = 0` when :math:`x_G = 0`).  The norm and the division are
    masked so that values and derivatives stay finite (no NaN) at
    :math:`x_G = 0`.

    Parameters
    ----------
    x : Tensor
        Input of shape ``(..., n)``.
    l2reg : Tensor or float
        Regularisation strength :math:`\lambda \ge 0`.  It broadcasts against the
        array of group norms: shape ``x.shape[:-1]`` when ``groups`` is ``None``
        (one weight per vector), or ``(..., n_groups)`` otherwise (one weight
        per group, groups ordered by sorted label).
    scaling : Tensor or float, default 1.0
        Step size :math:`s \ge 0`.
    groups : Tensor or sequence of int, optional
        If ``None`` (default) the whole last dimension is one group, so a
        tensor of shape ``(n_groups, group_size)`` has one group per row.
        Otherwise a 1-d integer tensor or sequence of length ``n`` giving the
        group label of each entry of the last dimension (labels need not be
        contiguous).  It must be a plain tensor, not one transformed by ``vmap``.

    Returns
    -------
    Tensor
        The proximal point, same shape as ``x``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor, a hyperparameter is not a number or tensor, or
        ``groups`` does not hold integer labels.
    ValueError
        If ``x`` is 0-dimensional, ``l2reg`` or ``scaling`` is a negative Python
        number, or ``groups`` has the wrong length.
    """
    x = _check_x(x, "prox_group_lasso", min_dim=1)
    lam = _as_param(l2reg, x, "prox_group_lasso", "l2reg", nonneg=True)
    s = _as_param(scaling, x, "prox_group_lasso", "scaling", nonneg=True)
    threshold = s * lam
    if groups is None:
        sq_norm = torch.sum(x * x, dim=-1, keepdim=True)
        return x * _block_shrink_factor(sq_norm, _batch(threshold))
    member = _group_membership(groups, x)
    sq_norm = torch.matmul(x * x, member)
    factor = _block_shrink_factor(sq_norm, threshold)
    return x * torch.matmul(factor, member.transpose(0, 1))
