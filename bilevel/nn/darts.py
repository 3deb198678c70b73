"""Differentiable architecture search: DARTS (first and second order) and RARTS.

Continuous relaxation (Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019). Every edge ``(i -> j)`` of a cell carries all candidate operations ``o`` at once,
mixed by the softmax of its architecture parameters ``alpha_ij``:

    h_j = sum_{i<j} sum_o softmax(alpha_ij)_o o(h_i).

The weights ``w`` of the operations and the architecture ``alpha`` solve the bilevel problem

    min_alpha L_val(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha),

and the discrete cell is *derived* from ``alpha`` at the end (:func:`derive`).

DARTS (:class:`DARTS`) alternates one optimizer step on ``w`` along ``grad_w L_train`` with
one step on ``alpha`` along the hypergradient approximation

    first order (xi = 0):  grad_alpha L_val(w, alpha)
    second order:          grad_alpha L_val(w', alpha)
                           - xi grad2_{alpha,w} L_train(w, alpha) grad_w L_val(w', alpha),
                           w' = w - xi grad_w L_train(w, alpha),

both computed by the engine, :func:`bilevel.nn.hypergradient`: ``method="fd"`` is DARTS'
own approximation (the mixed second derivative by central differences with step
``epsilon / ||grad_w L_val(w')||``, its eq. 8; ``xi = 0`` is first order) and
``method="unrolled", steps=1`` the exact derivative of ``L_val(w', alpha)`` through the
virtual step (mirroring the live weight optimizer, momentum and weight decay included, when
``xi`` is not given). The default ``xi`` is the weights' learning rate, as in the paper.

RARTS (:class:`RARTS`; Xue, Qi and Xin, "RARTS: An Efficient First-Order Relaxed
Architecture Search Method", arXiv:2008.03901) replaces the bilevel problem by the
single-level relaxation with two networks of the same architecture, ``w`` trained on the
training data and ``y`` on the validation data, coupled by a penalty:

    L(y, w, alpha) = L_val(y, alpha) + lambda L_train(w, alpha) + beta/2 ||y - w||^2,

and descends it by Gauss-Seidel (block coordinate) steps, each block using the newest
values of the others:

    w     <- w     - eta_w     grad_w     [lambda L_train(w, alpha) + beta/2 ||y - w||^2]
    y     <- y     - eta_y     grad_y     [L_val(y, alpha) + beta/2 ||y - w||^2]
    alpha <- alpha - eta_alpha grad_alpha [L_val(y, alpha) + lambda L_train(w, alpha)]

(the optimizers' updates in place of the plain steps). Only first derivatives of the losses
appear: no mixed second derivatives, no hypergradient.

On the paper's toy problem ``L_train = w^2 - 2 a w + a^2``, ``L_val = a w - 2 a + 1`` (bilevel
optimum ``a = w = 1``), DARTS' fixed point is ``a = w = 2 / (1 + 2 xi)``, and RARTS' the
stationary point of ``L``: ``a = 4 lambda beta / (4 lambda beta - beta - 2 lambda)``,
``w = a (1 - 1 / (2 lambda))``, ``y = 2 - a`` (where ``L`` is strictly convex, ``4 lambda beta
> beta + 2 lambda``), which tends to ``(1, 1)`` as ``lambda, beta -> infinity``.

The search space (:class:`SearchNetwork`) is a cell of ``nodes`` vector nodes after a linear
stem, for inputs such as flattened images: node 0 is the stem's output, node ``j`` mixes the
operations of :data:`OPS` on every earlier node, and the classifier reads the concatenation of
nodes ``1..nodes``. :func:`derive` keeps, as DARTS does, the ``k`` strongest incoming edges of
each node (strength: the largest softmax weight of a non-``"none"`` operation) with their
strongest non-``"none"`` operation; :class:`CellNetwork` is the discrete network of a
:class:`Genotype`, retrained from scratch.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.errors import DivergenceError
from bilevel.methods import BatchStream
from bilevel.nn import optim as functional_optim
from bilevel.nn._functional import Loss, trainable
from bilevel.nn._trainer import BilevelTrainer, TrainResult

__all__ = [
    "DARTS",
    "OPS",
    "RARTS",
    "CellNetwork",
    "Genotype",
    "SearchNetwork",
    "derive",
    "random_genotype",
]

#: Candidate operations on an edge between ``dim``-vectors. The parametric ones are
#: ``act -> Linear -> BatchNorm`` (DARTS' ReLU-Conv-BN order), the batch norm without
#: affine parameters during the search.
OPS = ("none", "skip_connect", "linear", "relu", "tanh", "sigmoid")

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda h: h,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


class _Zero(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return torch.zeros_like(h)


class _Dense(nn.Module):
    """``BatchNorm(Linear(act(h)))``."""

    def __init__(self, activation: str, dim: int, affine: bool) -> None:
        super().__init__()
        self.activation = activation
        self.linear = nn.Linear(dim, dim, bias=False)
        self.norm = nn.BatchNorm1d(dim, affine=affine)

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(self.linear(_ACTIVATIONS[self.activation](h)))


def make_op(name: str, dim: int, affine: bool = True) -> nn.Module:
    """The operation ``name`` of :data:`OPS` on ``dim``-vectors."""
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name in _ACTIVATIONS:
        return _Dense(name, dim, affine)
    raise ValueError(f"unknown operation {name!r}; choose from {OPS}")


def edges_of(nodes: int) -> list[tuple[int, int]]:
    """``(input, node)`` pairs of the cell, in the order of the rows of ``alpha``."""
    return [(i, j) for j in range(1, nodes + 1) for i in range(j)]


class SearchNetwork(nn.Module):
    """The over-parameterised network of the search: ``Linear(n_in, dim)`` stem (node 0),
    ``nodes`` mixed nodes, classifier ``Linear(nodes * dim, n_out)`` on their concatenation.

    ``forward(x, alpha)`` with ``alpha`` of shape ``(len(edges_of(nodes)), len(ops))`` (make
    it with :meth:`init_alpha`) computes every node as its mixed operations (the module
    docstring); the parametric operations of all edges leaving a node are evaluated together
    (one batched matrix product), their batch norm uses the batch statistics (no affine
    parameters, no running averages, as DARTS searches with ``affine=False``).
    ``edge_weight[e, p]`` is the ``Linear`` of the ``p``-th parametric operation on edge ``e``.
    """

    def __init__(self, n_in: int, n_out: int, dim: int = 32, nodes: int = 4, ops: Sequence[str] = OPS) -> None:
        super().__init__()
        if nodes < 1:
            raise ValueError(f"SearchNetwork: nodes must be >= 1, got {nodes}")
        unknown = [o for o in ops if o not in OPS]
        if unknown or len(set(ops)) != len(ops) or not any(o != "none" for o in ops):
            raise ValueError(
                f"SearchNetwork: ops must be distinct names from {OPS}, not only 'none'; got {tuple(ops)}"
            )
        self.ops, self.nodes, self.dim = tuple(ops), nodes, dim
        self.edges = edges_of(nodes)
        self.parametric = tuple(o for o in self.ops if o in _ACTIVATIONS)
        self._param_cols = [self.ops.index(o) for o in self.parametric]
        self._skip_col = self.ops.index("skip_connect") if "skip_connect" in self.ops else None
        self.stem = nn.Linear(n_in, dim)
        bound = 1.0 / math.sqrt(dim)
        self.edge_weight = nn.Parameter(
            torch.empty(len(self.edges), len(self.parametric), dim, dim).uniform_(-bound, bound)
        )
        self.classifier = nn.Linear(nodes * dim, n_out)

    def init_alpha(self, scale: float = 1e-3, generator: torch.Generator | None = None) -> Tensor:
        """Architecture parameters ``scale * N(0, 1)`` (as in DARTS), requiring grad."""
        a = scale * torch.randn(len(self.edges), len(self.ops), generator=generator)
        return a.to(self.stem.weight.dtype).requires_grad_(True)

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor:
        if alpha.shape != (len(self.edges), len(self.ops)):
            raise ValueError(
                f"SearchNetwork: alpha must have shape {(len(self.edges), len(self.ops))}, "
                f"got {tuple(alpha.shape)}"
            )
        weights = torch.softmax(alpha, dim=-1)
        states = [self.stem(x)]
        incoming: list[Tensor | int] = [0] * (self.nodes + 1)
        for i in range(self.nodes):
            h = states[i]
            rows = [e for e, (src, _) in enumerate(self.edges) if src == i]
            mixed: Tensor | None = None
            if self.parametric:
                acts = torch.stack([_ACTIVATIONS[o](h) for o in self.parametric])  # (P, B, D)
                out = torch.einsum("pbi,epoi->bepo", acts, self.edge_weight[rows])
                out = F.batch_norm(out.reshape(len(h), -1), None, None, training=True, eps=1e-5)
                mixed = torch.einsum(
                    "ep,bepo->ebo", weights[rows][:, self._param_cols], out.reshape(out.shape[0], len(rows), -1, self.dim)
                )
            if self._skip_col is not None:
                skip = weights[rows, self._skip_col].reshape(-1, 1, 1) * h
                mixed = skip if mixed is None else mixed + skip
            if mixed is None:
                raise RuntimeError("a cell edge needs at least one operation besides 'none'")
            for k, e in enumerate(rows):
                incoming[self.edges[e][1]] = incoming[self.edges[e][1]] + mixed[k]
            states.append(incoming[i + 1])
        return self.classifier(torch.cat(states[1:], dim=1))


@dataclass(frozen=True)
class Genotype:
    """A discrete cell: ``edges`` of ``(node, input, op)`` with ``1 <= node <= nodes``,
    ``0 <= input < node``."""

    nodes: int
    edges: tuple[tuple[int, int, str], ...]

    def __post_init__(self) -> None:
        for node, src, op in self.edges:
            if not (1 <= node <= self.nodes and 0 <= src < node):
                raise ValueError(f"Genotype: bad edge {(node, src, op)} for {self.nodes} nodes")
            if op not in OPS or op == "none":
                raise ValueError(f"Genotype: edge operation must be one of {OPS[1:]}, got {op!r}")
        for node in range(1, self.nodes + 1):
            if not any(n == node for n, _, _ in self.edges):
                raise ValueError(f"Genotype: node {node} has no incoming edge")

    def __str__(self) -> str:
        parts = []
        for node in range(1, self.nodes + 1):
            ins = " + ".join(f"{op}({src})" for n, src, op in self.edges if n == node)
            parts.append(f"{node} = {ins}")
        return "; ".join(parts)

    def ops_used(self) -> list[str]:
        return [op for _, _, op in self.edges]


def derive(alpha: Tensor, nodes: int, ops: Sequence[str] = OPS, k: int = 2) -> Genotype:
    """The discrete cell of ``alpha`` (DARTS' rule): for each node, its ``min(k, node)``
    incoming edges with the largest non-``"none"`` softmax weight, each with the operation
    of that weight."""
    ops = tuple(ops)
    weights = torch.softmax(alpha.detach().float(), dim=-1)
    allowed = [o for o, name in enumerate(ops) if name != "none"]
    edges = edges_of(nodes)
    chosen = []
    for node in range(1, nodes + 1):
        rows = [(e, src) for e, (src, dst) in enumerate(edges) if dst == node]
        scored = []
        for e, src in rows:
            w = weights[e, allowed]
            best = int(torch.argmax(w))
            scored.append((float(w[best]), src, ops[allowed[best]]))
        scored.sort(key=lambda t: (-t[0], t[1]))
        chosen += [(node, src, op) for _, src, op in sorted(scored[: min(k, node)], key=lambda t: t[1])]
    return Genotype(nodes, tuple(chosen))


def random_genotype(
    nodes: int,
    rng: np.random.Generator,
    ops: Sequence[str] = OPS,
    k: int = 2,
    like: Genotype | None = None,
) -> Genotype:
    """A random cell of the same size as :func:`derive`'s: ``min(k, node)`` distinct random
    inputs per node, each with a uniformly random non-``"none"`` operation.

    With ``like``, a cell of exactly its size: the same number of inputs per node and the
    same number of ``"skip_connect"`` edges (placed at random), the other edges random
    parametric operations, so that :class:`CellNetwork` has the same parameter count.
    """
    allowed = [o for o in ops if o != "none"]
    parametric = [o for o in allowed if o != "skip_connect"]
    if like is not None:
        if like.nodes != nodes:
            raise ValueError(f"random_genotype: like has {like.nodes} nodes, not {nodes}")
        fan_in = [sum(1 for n, _, _ in like.edges if n == node) for node in range(1, nodes + 1)]
        n_skip = sum(1 for _, _, op in like.edges if op == "skip_connect")
        if n_skip and "skip_connect" not in allowed or n_skip < len(like.edges) and not parametric:
            raise ValueError(f"random_genotype: ops {tuple(ops)} cannot reproduce the operations of {like}")
    else:
        fan_in = [min(k, node) for node in range(1, nodes + 1)]
    pairs = [
        (node, int(s))
        for node in range(1, nodes + 1)
        for s in sorted(rng.choice(node, size=fan_in[node - 1], replace=False).tolist())
    ]
    if like is None:
        chosen = [str(allowed[rng.integers(len(allowed))]) for _ in pairs]
    else:
        skip = set(rng.choice(len(pairs), size=n_skip, replace=False).tolist())
        chosen = [
            "skip_connect" if e in skip else str(parametric[rng.integers(len(parametric))])
            for e in range(len(pairs))
        ]
    return Genotype(nodes, tuple((node, src, op) for (node, src), op in zip(pairs, chosen)))


class CellNetwork(nn.Module):
    """The discrete network of a :class:`Genotype`: the same stem and classifier as
    :class:`SearchNetwork`, each kept edge one operation (batch norm with affine parameters)."""

    def __init__(self, genotype: Genotype, n_in: int, n_out: int, dim: int = 32) -> None:
        super().__init__()
        self.genotype = genotype
        self.stem = nn.Linear(n_in, dim)
        self.edge_ops = nn.ModuleList(make_op(op, dim, affine=True) for _, _, op in genotype.edges)
        self.classifier = nn.Linear(genotype.nodes * dim, n_out)

    def forward(self, x: Tensor) -> Tensor:
        states = [self.stem(x)]
        for node in range(1, self.genotype.nodes + 1):
            total = 0
            for (n, src, _), op in zip(self.genotype.edges, self.edge_ops):
                if n == node:
                    total = total + op(states[src])
            states.append(total)
        return self.classifier(torch.cat(states[1:], dim=1))


# ------------------------------------------------------------------------------ DARTS
class DARTS(BilevelTrainer):
    """DARTS: one step on the weights along ``grad_w L_train``, one step on the architecture
    along the first- or second-order hypergradient (see the module docstring), repeated.

    Parameters
    ----------
    model:
        The network (its trainable parameters are ``w``), called by the losses.
    alphas:
        ``{name: tensor}``, the architecture parameters (``requires_grad``).
    train_loss, val_loss:
        ``loss(model, alphas, batch) -> scalar``.
    weight_optimizer, arch_optimizer:
        ``torch.optim`` optimizers over ``w`` and over the ``alphas`` tensors.
    train_data, val_data:
        Iterables of batches.
    order:
        1 (``xi = 0``) or 2.
    xi:
        The virtual step of the second order (default: the weight optimizer's learning rate).
    mode:
        ``"fd"`` (DARTS' finite differences) or ``"unrolled"`` (the exact derivative through
        one virtual step: of the live weight optimizer, with its momentum and weight decay,
        when ``xi`` is None, else of plain SGD with step ``xi``).
    epsilon:
        The finite-difference step of ``"fd"`` (0.01, as in DARTS).
    **trainer_options:
        Passed to :class:`~bilevel.nn.BilevelTrainer` (schedulers, clipping, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        alphas: dict[str, Tensor],
        train_loss: Loss,
        val_loss: Loss,
        *,
        weight_optimizer: torch.optim.Optimizer,
        arch_optimizer: torch.optim.Optimizer,
        train_data: Iterable[Any],
        val_data: Iterable[Any],
        order: int = 2,
        xi: float | None = None,
        mode: str = "fd",
        epsilon: float = 0.01,
        **trainer_options: Any,
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"DARTS: order must be 1 or 2, got {order!r}")
        if mode not in ("fd", "unrolled"):
            raise ValueError(f"DARTS: mode must be 'fd' or 'unrolled', got {mode!r}")
        if xi is not None and not (xi > 0 and math.isfinite(xi)):
            raise ValueError(f"DARTS: xi must be positive and finite, got {xi}")
        self.order, self.mode = order, mode
        options: dict[str, Any]
        if order == 1:
            method, options = "fd", {"xi": 0.0}
        elif mode == "fd":
            step = float(weight_optimizer.param_groups[0]["lr"]) if xi is None else xi
            method, options = "fd", {"xi": step, "epsilon": epsilon}
        else:
            method, options = "unrolled", {"steps": 1}
            if xi is not None:
                options["optimizer"] = functional_optim.SGD(lr=xi)
        self.xi = 0.0 if order == 1 else options.get("xi", xi)
        super().__init__(
            model,
            alphas,
            train_loss,
            val_loss,
            inner_optimizer=weight_optimizer,
            outer_optimizer=arch_optimizer,
            inner_data=train_data,
            outer_data=val_data,
            inner_steps=1,
            method=method,
            method_options=options,
            **trainer_options,
        )


# ------------------------------------------------------------------------------ RARTS
class RARTS:
    """RARTS: Gauss-Seidel descent of the relaxed objective
    ``L_val(y, alpha) + lambda L_train(w, alpha) + beta/2 ||y - w||^2`` (module docstring).

    Parameters
    ----------
    model:
        The network ``w``, trained on the training data.
    val_model:
        The network ``y`` (same architecture and parameter names), trained on the validation
        data; ``None``: a deep copy of ``model``.
    alphas, train_loss, val_loss, train_data, val_data:
        As for :class:`DARTS`.
    weight_optimizer, val_weight_optimizer, arch_optimizer:
        Optimizers over ``w``, ``y`` and the ``alphas``; ``val_weight_optimizer`` may be a
        callable ``params -> optimizer`` (needed when ``val_model`` is created here).
    penalty:
        ``lambda``, the weight of the training loss.
    coupling:
        ``beta``, the weight of the coupling ``||y - w||^2 / 2``.
    """

    def __init__(
        self,
        model: nn.Module,
        alphas: dict[str, Tensor],
        train_loss: Loss,
        val_loss: Loss,
        *,
        weight_optimizer: torch.optim.Optimizer,
        val_weight_optimizer: torch.optim.Optimizer | Callable[[list[Tensor]], torch.optim.Optimizer],
        arch_optimizer: torch.optim.Optimizer,
        train_data: Iterable[Any],
        val_data: Iterable[Any],
        val_model: nn.Module | None = None,
        penalty: float = 1.0,
        coupling: float = 1.0,
    ) -> None:
        for name, value in (("penalty", penalty), ("coupling", coupling)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"RARTS: {name} must be finite and >= 0, got {value}")
        if not alphas or not all(isinstance(a, Tensor) and a.requires_grad for a in alphas.values()):
            raise ValueError("RARTS: alphas must be a non-empty dict of tensors that require grad")
        self.model = model
        self.val_model = copy.deepcopy(model) if val_model is None else val_model
        self.w, self.y = trainable(self.model), trainable(self.val_model)
        if list(self.w) != list(self.y) or any(self.w[k].shape != self.y[k].shape for k in self.w):
            raise ValueError("RARTS: model and val_model must have the same trainable parameters")
        self.alphas = alphas
        self.train_loss, self.val_loss = train_loss, val_loss
        self.weight_optimizer = weight_optimizer
        self.val_weight_optimizer = (
            val_weight_optimizer
            if isinstance(val_weight_optimizer, torch.optim.Optimizer)
            else val_weight_optimizer(list(self.y.values()))
        )
        self.arch_optimizer = arch_optimizer
        self.penalty, self.coupling = penalty, coupling
        self.train_stream = BatchStream(train_data, "train_data")
        self.val_stream = BatchStream(val_data, "val_data")
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def coupling_term(self) -> Tensor:
        """``beta/2 ||y - w||^2`` over all trainable parameters (differentiable in both)."""
        terms = [((self.y[k] - self.w[k]) ** 2).sum() for k in self.w]
        return 0.5 * self.coupling * functools.reduce(operator.add, terms)

    def _descend(self, loss: Tensor, params: list[Tensor], optimizer: torch.optim.Optimizer, what: str) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(f"RARTS: the {what} became {value} at step {self.step} (learning rate too large?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        optimizer.step()
        return value

    def one_step(self) -> dict[str, Any]:
        """One Gauss-Seidel sweep ``w``, ``y``, ``alpha`` on one training and one validation batch."""
        train_batch, val_batch = self.train_stream.next(), self.val_stream.next()
        lam = self.penalty
        ws, ys, arch = list(self.w.values()), list(self.y.values()), list(self.alphas.values())
        train_value = self.train_loss(self.model, self.alphas, train_batch)
        self._descend(lam * train_value + self.coupling_term(), ws, self.weight_optimizer, "w objective")
        val_value = self.val_loss(self.val_model, self.alphas, val_batch)
        self._descend(val_value + self.coupling_term(), ys, self.val_weight_optimizer, "y objective")
        val_new = self.val_loss(self.val_model, self.alphas, val_batch)
        train_new = self.train_loss(self.model, self.alphas, train_batch)
        with torch.no_grad():
            distance_sq = float(sum(((self.y[k] - self.w[k]) ** 2).sum() for k in self.w))
        objective = self._descend(val_new + lam * train_new, arch, self.arch_optimizer, "alpha objective")
        return {
            "inner_loss": float(train_value.detach()),
            "outer_loss": float(val_value.detach()),
            "objective": objective + 0.5 * self.coupling * distance_sq,
            "distance_sq": distance_sq,
        }

    def fit(
        self,
        steps: int,
        *,
        callbacks: Sequence[Callable[[RARTS, dict[str, Any]], bool | None]] = (),
    ) -> TrainResult:
        """Run sweeps until ``steps`` have been done in total; ``callback(self, record)``
        after each (returning True stops). Records: ``step``, ``inner_loss`` (``L_train(w)``),
        ``outer_loss`` (``L_val(y)``, both before the sweep), ``objective`` (``L`` at the new ``w``
        and ``y``, before the ``alpha`` step), ``distance_sq`` (``||y - w||^2``), ``time``."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"RARTS.fit: steps must be an integer >= 0, got {steps!r}")
        start = time.perf_counter() - (self.history[-1]["time"] if self.history else 0.0)
        status = "completed"
        while self.step < steps:
            record = {"step": self.step + 1, **self.one_step(), "time": time.perf_counter() - start}
            self.step += 1
            self.history.append(record)
            if any(cb(self, record) for cb in callbacks):
                status = "stopped"
                break
        return TrainResult(status=status, steps=self.step, history=list(self.history))
