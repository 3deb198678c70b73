r"""Dataset distillation: learn a few synthetic training examples that train a model as well
as the whole training set does.

Problem
-------
``k`` synthetic examples per class ``(X_s, Y_s)`` (images, and optionally their labels) are
the upper-level variable; the lower level fits a model on them only; the upper loss is that
model's loss on the real training set ``(X_t, Y_t)``::

    min_{X_s, Y_s}  L(w*(X_s, Y_s); X_t, Y_t)
    s.t.            w*(X_s, Y_s) = argmin_w  l(w; X_s, Y_s)

Inner solvers
-------------
* ``kip`` -- kernel ridge regression in closed form (KIP, Nguyen, Chen and Lee, ICLR 2021).
  With a kernel ``k`` (:func:`ntk_kernel`, the neural tangent kernel of an infinitely wide
  fully connected ReLU network, or :func:`rbf_kernel`) the fitted model predicts
  ``f(x) = k(x, X_s) (K_ss + lambda I)^{-1} Y_s`` with ``K_ss = k(X_s, X_s)`` and
  ``lambda = reg * tr(K_ss) / n_s`` (:func:`kernel_ridge`); the upper loss is
  ``1/(2 n_t) ||f(X_t) - Y_t||^2`` (:func:`kip_loss`), differentiated through the
  Cholesky solve by autograd -- the closed form needs no implicit differentiation. Labels
  are one-hot vectors centred by ``1/C``, learnt when ``learn_labels``.
* ``logistic`` -- L2-regularised multinomial logistic regression ``W, b`` on the synthetic
  images (the dataset-distillation demonstration of Blondel et al., "Efficient and modular
  implicit differentiation", NeurIPS 2022)::

      w*(X_s) = argmin_{W, b}  CE(X_s W^T + b, y_s) + l2/2 (||W||^2 + ||b||^2),
      L = CE(X_t W*^T + b*, y_t)

  (the bias is penalised too: the cross-entropy is invariant to adding a constant to every
  logit, so without it the Hessian would be singular);
  the inner problem is solved by L-BFGS (warm-started, to a gradient tolerance; a warning
  and ``converged=False`` otherwise) and the hypergradient ``dL/dX_s`` is the implicit one,
  :func:`bilevel.nn.hypergradient` (``method="cg"``, the linear system
  ``(grad^2_ww l) u = grad_w L`` by conjugate gradients). Labels are fixed.

The synthetic set starts from a random subset of the training set (``k`` images per class)
and is updated by Adam on the hypergradient for ``steps`` steps (:func:`distill`).

Coreset baselines (indices into the training set, ``k`` per class): :func:`random_subset`,
:func:`kcenter` (greedy k-center: the exact 1-center of each class, then repeatedly the
member farthest from those chosen) and :func:`herding` (Welling 2009: repeatedly the member
that brings the mean of those chosen closest to the class mean), in the input space.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bilevel.nn as bnn
from bilevel.errors import ConvergenceWarning

__all__ = [
    "INNER_SOLVERS",
    "KERNELS",
    "Distilled",
    "centred_one_hot",
    "distill",
    "fit_logistic",
    "herding",
    "kcenter",
    "kernel_ridge",
    "kip_loss",
    "ntk_kernel",
    "predict",
    "random_subset",
    "rbf_kernel",
]

INNER_SOLVERS = ("kip", "logistic")
KERNELS = ("ntk", "rbf")


# --------------------------------------------------------------------------------------
# Kernels and kernel ridge regression
# --------------------------------------------------------------------------------------


def ntk_kernel(A: Tensor, B: Tensor, depth: int = 1, bias: float = 0.0) -> Tensor:
    r"""Neural tangent kernel of an infinitely wide fully connected ReLU network with
    ``depth`` hidden layers, He-scaled weights (``sigma_w^2 = 2``) and bias variance
    ``bias``, between the rows of ``A`` and ``B`` (Jacot et al. 2018; Arora et al. 2019):

    .. math::

        \Sigma^0(x, x') = x^\top x' / d + \sigma_b^2, \qquad
        \cos t_h = \Sigma^{h-1}(x, x') / \sqrt{\Sigma^{h-1}(x, x)\,\Sigma^{h-1}(x', x')},

        \Sigma^h = \tfrac{1}{\pi}\sqrt{\Sigma^{h-1}(x,x)\Sigma^{h-1}(x',x')}\,
            (\sin t_h + (\pi - t_h)\cos t_h) + \sigma_b^2, \qquad
        \dot\Sigma^h = (\pi - t_h)/\pi,

        \Theta^0 = \Sigma^0, \qquad \Theta^h = \Theta^{h-1}\dot\Sigma^h + \Sigma^h,
        \qquad k = \Theta^{\text{depth}}.

    The values are exact (``cos t`` clipped to ``[-1, 1]``); the derivative of ``arccos``,
    infinite at ``cos t = 1`` (every diagonal entry), is taken at ``cos t`` clipped to
    ``[-1 + 1e-6, 1 - 1e-6]`` (:func:`_safe_arccos`): zero on the diagonal, where the exact
    derivative of ``cos t = 1`` is zero too.
    """
    if depth < 1:
        raise ValueError(f"ntk_kernel: depth must be >= 1, got {depth}")
    d = A.shape[1]
    sigma = A @ B.T / d + bias
    diag_a = (A * A).sum(1) / d + bias
    diag_b = (B * B).sum(1) / d + bias
    theta = sigma
    for _ in range(depth):
        norm = torch.sqrt(diag_a[:, None] * diag_b[None, :])
        cos, t = _safe_arccos(sigma / norm)
        sigma = norm * (torch.sin(t) + (math.pi - t) * cos) / math.pi + bias
        theta = theta * (math.pi - t) / math.pi + sigma
        diag_a, diag_b = diag_a + bias, diag_b + bias
    return theta


def _safe_arccos(cos: Tensor, margin: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(c, arccos(c))`` for ``c = clip(cos, -1, 1)``, differentiated as if ``c`` were
    clipped to ``[-1 + margin, 1 - margin]`` (finite derivatives, exact values).

    ``c`` within ``8 eps`` of 1 is taken as 1: on the diagonal ``cos t = 1`` up to rounding,
    and ``arccos`` would turn a rounding error ``delta`` into ``t ~ sqrt(2 delta)``.
    """
    exact = cos.clamp(-1.0, 1.0)
    exact = torch.where(exact > 1.0 - 8 * torch.finfo(cos.dtype).eps, torch.ones_like(exact), exact)
    safe = cos.clamp(-1.0 + margin, 1.0 - margin)
    t_safe = torch.arccos(safe)
    return safe + (exact - safe).detach(), t_safe + (torch.arccos(exact) - t_safe).detach()


def rbf_kernel(A: Tensor, B: Tensor, bandwidth: float | None = None) -> Tensor:
    """``exp(-||a - b||^2 / (2 bandwidth^2))``, default ``bandwidth^2`` = the dimension."""
    h2 = A.shape[1] if bandwidth is None else bandwidth**2
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
    return torch.exp(-d2.clamp_min(0) / (2 * h2))


def _kernel(name: str, depth: int) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "ntk":
        return lambda A, B: ntk_kernel(A, B, depth)
    if name == "rbf":
        return rbf_kernel
    raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")


def kernel_ridge(K_ss: Tensor, K_ts: Tensor, Y_s: Tensor, reg: float) -> Tensor:
    r"""Kernel ridge predictions ``K_ts (K_ss + lambda I)^{-1} Y_s`` with
    ``lambda = reg * tr(K_ss) / n_s``, by a Cholesky factorisation (differentiable)."""
    if not (reg > 0 and math.isfinite(reg)):
        raise ValueError(f"kernel_ridge: reg must be positive and finite, got {reg}")
    n = K_ss.shape[0]
    lam = reg * torch.diagonal(K_ss).sum() / n
    L = torch.linalg.cholesky(K_ss + lam * torch.eye(n, dtype=K_ss.dtype, device=K_ss.device))
    return K_ts @ torch.cholesky_solve(Y_s, L)


def kip_loss(
    X_s: Tensor, Y_s: Tensor, X_t: Tensor, Y_t: Tensor,
    kernel: Callable[[Tensor, Tensor], Tensor], reg: float,
) -> Tensor:
    """``1/(2 n_t) ||kernel_ridge(k(X_s, X_s), k(X_t, X_s), Y_s) - Y_t||^2``."""
    pred = kernel_ridge(kernel(X_s, X_s), kernel(X_t, X_s), Y_s, reg)
    return 0.5 * ((pred - Y_t) ** 2).sum(1).mean()


def centred_one_hot(y: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows minus ``1/n_classes`` (KIP's regression targets)."""
    return F.one_hot(y, n_classes).to(dtype) - 1.0 / n_classes


# --------------------------------------------------------------------------------------
# Logistic regression inner problem
# --------------------------------------------------------------------------------------


def _logistic_inner(l2: float) -> Callable[[nn.Module, Any, Any], Tensor]:
    def inner(model: nn.Module, hparams: Any, batch: Tensor) -> Tensor:
        if not isinstance(model, nn.Linear):
            raise TypeError(f"the logistic inner loss needs an nn.Linear, got {type(model)}")
        decay = (model.weight**2).sum() + (model.bias**2).sum()
        return F.cross_entropy(model(hparams["images"]), batch) + 0.5 * l2 * decay

    return inner


def _logistic_outer(model: nn.Module, hparams: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def fit_logistic(
    model: nn.Linear, X: Tensor, y: Tensor, l2: float, *, tol: float = 1e-6, max_iter: int = 500
) -> tuple[bool, float]:
    """Fit ``model`` (warm start) to ``argmin CE(model(X), y) + l2/2 (||W||^2 + ||b||^2)``
    by L-BFGS (:class:`torch.optim.LBFGS`, strong Wolfe line search).

    Returns ``(converged, max |gradient|)``; converged means ``max |gradient| <= tol``.
    """
    inner = _logistic_inner(l2)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0.0,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        value = inner(model, {"images": X}, y)
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
        closure()
    grads = [p.grad for p in model.parameters()]
    if any(g is None for g in grads):
        raise RuntimeError("the closure left a parameter without a gradient")
    worst = max(float(g.abs().max()) for g in grads if g is not None)
    return worst <= tol, worst


# --------------------------------------------------------------------------------------
# Coresets
# --------------------------------------------------------------------------------------


def _members(y: Tensor, c: int) -> Tensor:
    return torch.nonzero(y == c).flatten()


def _check_per_class(y: Tensor, per_class: int) -> list[int]:
    classes = torch.unique(y).tolist()
    for c in classes:
        if int((y == c).sum()) < per_class:
            raise ValueError(f"class {c} has fewer than {per_class} examples")
    return classes


def random_subset(y: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """``per_class`` indices of each class drawn uniformly without replacement."""
    out = []
    for c in _check_per_class(y, per_class):
        idx = _members(y, c)
        out.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(out)


def kcenter(X: Tensor, y: Tensor, per_class: int) -> Tensor:
    """Greedy k-center per class: the exact 1-center (the member whose largest distance to
    the others is smallest), then repeatedly the member farthest from the chosen ones."""
    out = []
    for c in _check_per_class(y, per_class):
        idx = _members(y, c)
        D = torch.cdist(X[idx].double(), X[idx].double())
        chosen = [int(D.max(1).values.argmin())]
        nearest = D[chosen[0]].clone()
        while len(chosen) < per_class:
            j = int(nearest.argmax())
            chosen.append(j)
            nearest = torch.minimum(nearest, D[j])
        out.append(idx[torch.tensor(chosen)])
    return torch.cat(out)


def herding(X: Tensor, y: Tensor, per_class: int) -> Tensor:
    """Herding per class: repeatedly the unchosen member ``x`` minimising
    ``||mu - (sum_chosen + x) / t||`` (``mu`` the class mean, ``t`` the new count)."""
    out = []
    for c in _check_per_class(y, per_class):
        idx = _members(y, c)
        Z = X[idx].double()
        mu = Z.mean(0)
        total = torch.zeros_like(mu)
        free = torch.ones(len(idx), dtype=torch.bool)
        chosen = []
        for t in range(1, per_class + 1):
            dist = ((mu - (total + Z) / t) ** 2).sum(1).masked_fill(~free, math.inf)
            j = int(dist.argmin())
            chosen.append(j)
            free[j] = False
            total = total + Z[j]
        out.append(idx[torch.tensor(chosen)])
    return torch.cat(out)


# --------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------


@dataclass
class Distilled:
    """A distilled data set and the record of its optimisation.

    ``labels`` are the regression targets (``kip``) or the class indices (``logistic``);
    ``classes`` the class of each synthetic example. ``history`` has one entry per recorded
    step (``step``, ``outer_loss``, ``time`` and what the callback adds); ``warnings`` the
    messages of the warnings raised (unconverged inner or linear solves).
    """

    images: Tensor
    labels: Tensor
    classes: Tensor
    inner_solver: str
    history: dict[str, list[float]] = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not self.warnings


@dataclass(frozen=True)
class _Setup:
    inner_solver: str
    kernel: Callable[[Tensor, Tensor], Tensor]
    reg: float
    l2: float
    n_classes: int


def distill(
    X: Tensor,
    y: Tensor,
    images_per_class: int,
    *,
    inner_solver: str = "kip",
    kernel: str = "ntk",
    depth: int = 1,
    reg: float = 1e-6,
    l2: float = 1e-2,
    learn_labels: bool = True,
    steps: int = 300,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    init: Tensor | None = None,
    record_every: int = 10,
    callback: Callable[[int, Tensor, Tensor], dict[str, float]] | None = None,
    cg_tol: float = 1e-8,
    inner_tol: float = 1e-6,
) -> Distilled:
    """Distil ``(X, y)`` into ``images_per_class`` synthetic examples per class.

    Parameters
    ----------
    X, y:
        Training inputs (rows) and integer labels ``0..C-1``.
    inner_solver:
        ``"kip"`` (kernel ridge regression, closed form) or ``"logistic"`` (L2-regularised
        logistic regression, implicit differentiation by :func:`bilevel.nn.hypergradient`).
    kernel, depth, reg:
        KIP's kernel (``"ntk"`` with ``depth`` hidden layers, or ``"rbf"``) and relative
        ridge (:func:`kernel_ridge`).
    l2:
        The logistic regression's L2 strength.
    learn_labels:
        Also learn the labels (``kip`` only).
    steps, lr, batch_size:
        Adam steps, learning rate, and target examples per step (``None``: all).
    seed:
        Seeds the initial random subset and the target batches.
    init:
        Indices of the initial examples (default :func:`random_subset`), ``per_class`` of
        each class in class order.
    record_every, callback:
        Every ``record_every`` steps (and at the end) a history entry is recorded;
        ``callback(step, images, labels)`` may add values to it.
    cg_tol, inner_tol:
        ``logistic``: relative tolerance of the conjugate-gradient solve, and gradient
        tolerance of the inner L-BFGS solve (a :class:`~bilevel.errors.ConvergenceWarning`
        is raised, and recorded, when either is not met).

    Runs in the dtype of ``X`` (float64 is advisable for ``logistic``: in float32 the
    conjugate-gradient solve on the ill-conditioned Hessian of a 10-example logistic
    regression loses positive definiteness to rounding).
    """
    if inner_solver not in INNER_SOLVERS:
        raise ValueError(f"inner_solver must be one of {INNER_SOLVERS}, got {inner_solver!r}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if learn_labels and inner_solver == "logistic":
        raise ValueError("learn_labels is only supported with inner_solver='kip'")
    n_classes = int(y.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    index = random_subset(y, images_per_class, generator) if init is None else init
    images = X[index].detach().clone().requires_grad_(True)
    classes = y[index].clone()
    setup = _Setup(inner_solver, _kernel(kernel, depth), reg, l2, n_classes)
    if inner_solver == "kip":
        labels = centred_one_hot(classes, n_classes, X.dtype).requires_grad_(learn_labels)
    else:
        labels = classes.clone()
    params = [images] + ([labels] if learn_labels else [])
    opt = torch.optim.Adam(params, lr=lr)
    history: dict[str, list[float]] = {"step": [], "outer_loss": [], "time": []}
    caught: list[str] = []
    model = nn.Linear(X.shape[1], n_classes).to(X.dtype) if inner_solver == "logistic" else None
    if model is not None:
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
    started = time.perf_counter()
    for step in range(steps + 1):
        if batch_size is None or batch_size >= len(y):
            Xt, yt = X, y
        else:
            b = torch.randint(0, len(y), (batch_size,), generator=generator)
            Xt, yt = X[b], y[b]
        grads: Sequence[Tensor]
        if model is None:  # inner_solver == "kip"
            with torch.enable_grad():
                loss = kip_loss(images, labels, Xt, centred_one_hot(yt, n_classes, X.dtype), setup.kernel, reg)
                grads = torch.autograd.grad(loss, params)
            value = float(loss.detach())
        else:
            grads, value = _logistic_step(model, images, labels, Xt, yt, setup, cg_tol, inner_tol, caught)
        if step % record_every == 0 or step == steps:
            history["step"].append(step)
            history["outer_loss"].append(value)
            history["time"].append(time.perf_counter() - started)
            if callback is not None:
                for key, v in callback(step, images.detach(), labels.detach()).items():
                    history.setdefault(key, []).append(v)
        if step == steps:
            break
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    if model is not None:
        _fit_or_warn(model, images.detach(), labels, l2, inner_tol, caught)
    return Distilled(images.detach(), labels.detach(), classes, inner_solver, history, caught)


def _fit_or_warn(model: nn.Linear, X: Tensor, y: Tensor, l2: float, tol: float, caught: list[str]) -> None:
    converged, worst = fit_logistic(model, X, y, l2, tol=tol)
    if not converged:
        message = f"logistic regression inner solve: max |gradient| {worst:.3g} > tol {tol:.3g}"
        caught.append(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)


def _logistic_step(
    model: nn.Linear, images: Tensor, labels: Tensor, Xt: Tensor, yt: Tensor,
    setup: _Setup, cg_tol: float, inner_tol: float, caught: list[str],
) -> tuple[list[Tensor], float]:
    """Solve the inner logistic regression at the current images, then the implicit
    hypergradient of the target loss by :func:`bilevel.nn.hypergradient`."""
    _fit_or_warn(model, images.detach(), labels, setup.l2, inner_tol, caught)
    result = bnn.hypergradient(  # warns (ConvergenceWarning) itself when CG stops short
        model, {"images": images}, _logistic_inner(setup.l2), _logistic_outer,
        labels, (Xt, yt), method="cg", tol=cg_tol, maxiter=10 * sum(p.numel() for p in model.parameters()),
    )
    solve = result.info.linear_solve
    if solve is not None and not solve.converged:
        caught.append(f"hypergradient: {solve.message}")
    return [result["images"]], result.info.outer_loss


def predict(
    inner_solver: str, X_s: Tensor, labels: Tensor, X: Tensor, *,
    kernel: str = "ntk", depth: int = 1, reg: float = 1e-6, l2: float = 1e-2,
    n_classes: int | None = None, inner_tol: float = 1e-6,
) -> Tensor:
    """Class predictions on ``X`` of the model fitted on ``(X_s, labels)`` only: kernel ridge
    regression on real-valued labels (``kip``; integer labels are turned into centred
    one-hot rows) or L2-regularised logistic regression on integer labels (``logistic``)."""
    n_classes = n_classes if n_classes is not None else int(labels.max()) + 1
    if inner_solver == "kip":
        Y_s = centred_one_hot(labels, n_classes, X_s.dtype) if not labels.is_floating_point() else labels
        k = _kernel(kernel, depth)
        with torch.no_grad():
            return kernel_ridge(k(X_s, X_s), k(X, X_s), Y_s, reg).argmax(1)
    model = nn.Linear(X_s.shape[1], n_classes).to(X_s.dtype)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    caught: list[str] = []
    _fit_or_warn(model, X_s, labels, l2, inner_tol, caught)
    with torch.no_grad():
        return model(X).argmax(1)
