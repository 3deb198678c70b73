"""Time and peak memory per outer step of :mod:`bilevel.nn` against hand-written unrolled
backprop, Betty and TorchOpt (issue 18), and a check of Betty's finite-difference bug.

Run it from the repository root with the benchmark venv (Betty and TorchOpt installed after
``torch==2.13.0``; see ``benchmarks/nn_engine.md``)::

    .venv-bench/bin/python benchmarks/nn_engine.py --quick      # ~5 min on 2 idle cores
    .venv-bench/bin/python benchmarks/nn_engine.py              # the full grid
    .venv/bin/python benchmarks/nn_engine.py --sections modes   # no peers needed

The script puts its own checkout first on ``sys.path``, so the ``bilevel`` measured is the
one next to it, whatever the interpreter has installed.

The problem (every section). Per-example reweighting, Meta-Weight-Net style: training
examples ``(x_i, y_i)``, one logit ``a_i`` per example, weights ``sigmoid(a_i)``::

    inner  f(theta, a) = 1/n sum_i sigmoid(a_i) CE(model_theta(x_i), y_i) + wd/2 ||theta||^2
    outer  F(theta)    = CE of model_theta on a clean validation batch

on two models:

* ``mlp``: a 64-256-256-10 ReLU network (85 k parameters) on scikit-learn's digits: 512
  training images (40 % of the labels replaced by a uniformly drawn class), 256 clean
  validation images, ``wd = 1e-3``, inner SGD with ``lr = 0.1``;
* ``transformer``: :class:`bilevel.recipes.data_mixing.TinyTransformer` (vocabulary 12,
  length 24, width 32, 2 layers; 17 k parameters) on 4 Markov sources of
  :class:`~bilevel.recipes.data_mixing.MarkovSource` (32 sequences each: 128 weights), the
  validation batch 64 sequences of source 1, ``wd = 1e-4``, inner SGD ``lr = 0.1``. The
  second-order modes run with PyTorch's math attention kernel
  (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``), for every framework: the default
  CPU flash-attention kernel has no double backward (see the .md).

Both start from ``--warm`` SGD-momentum steps on ``f(., 0)`` (cached per seed), so the
implicit modes are evaluated near a stationary point as they assume. The hyperparameters
take one Adam step (``lr = 0.1``) per outer step.

Sections (``--sections``):

* ``modes``: one outer step of every :func:`bilevel.nn.hypergradient` mode. Rows:
  ``baseline T`` = what users write today: ``T`` differentiable SGD steps on
  ``torch.func.functional_call`` parameters, ``torch.autograd.grad`` of ``F`` to ``a``, Adam,
  the model set to ``theta_T``; ``unrolled T`` = the same through
  ``bilevel.nn.hypergradient(method="unrolled", steps=T, optimizer=SGD(lr))``; ``trainer cg
  K`` = one :class:`bilevel.nn.BilevelTrainer` outer step with ``inner_steps=K`` and
  ``method="cg"`` (``K`` SGD steps, then the implicit hypergradient at ``theta_K``);
  ``trainer neumann/fd/penalty K`` likewise. ``T`` and ``K`` from ``--steps``; rows with the
  same number are the same inner progress per outer step.
* ``peers``: the mlp problem with ``K`` (``--peer-steps``) inner SGD steps per outer step,
  the same solver budgets in every framework: 10 CG iterations (bilevel ``tol=0,
  maxiter=10``; TorchOpt ``solve_cg(maxiter=10, rtol=0, atol=0)`` inside
  ``torchopt.diff.implicit.custom_root``; Betty ``cg_iterations=10``), the same 11-term Neumann
  series ``alpha sum_{k<=10} (I - alpha H)^k v`` with ``alpha = lr`` (bilevel ``steps=10``;
  Betty ``neumann_iterations=10``), finite differences with ``epsilon = 0.01`` (bilevel
  ``"fd"`` with ``xi = lr``; Betty ``"darts"``, ``darts_alpha = 0.01``), and ``K``-step
  unrolls (bilevel ``"unrolled"``, TorchOpt ``MetaSGD``, the hand-written baseline). Inner
  steps are ``loss.backward()`` + ``torch.optim.SGD`` in every framework but the unrolled
  rows. The *agreement* column compares the first hypergradient of each row with its bilevel
  counterpart from the same state (relative difference and cosine).
* ``darts``: Betty 0.1.1's ``"darts"`` hypergradient moves the lower-level parameters. The
  section records the parameters before and after one hypergradient (Betty's darts, cg and
  neumann, and bilevel's ``"fd"``) and compares the displacement with
  ``-(darts_alpha / ||v||) v``, ``v`` the validation gradient; then runs Meta-Weight-Net
  (weighting network 1-100-1 on each example's loss; digits, 900 training images with 40 %
  uniform noise, 400 clean validation and 497 test images, minibatches of 100, one inner
  SGD-momentum step per outer Adam step, ``--mwn-steps`` steps) with Betty's darts as shipped
  and with the parameters put back after its probes, at each ``--mwn-alphas`` value, and
  bilevel's ``"fd"`` in the same loop: mean learnt weight of clean and of noisy examples,
  test and validation accuracy.

Measurement. Times: every row of a table lives in this one process (1 torch thread, pinned
to one CPU), takes 2 untimed warm-up steps, then ``--repeat`` rounds in a rotating order,
each round timing a block of consecutive steps (``--block-seconds``); the table gives the
median of the per-step block times and ratios of medians of the same run. Memory: each row
again in a fresh subprocess (same pinning, glibc ``MALLOC_MMAP_THRESHOLD_=65536`` so that
large tensors are unmapped when freed): 2 warm-up steps, then ``gc.collect()``,
``malloc_trim(0)``, the resident set recorded and its high-water mark reset
(``/proc/self/clear_refs``), one outer step, ``peak MiB = VmHWM - VmRSS before``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implicit_diff import RssMeter  # noqa: E402  (the benchmarks' shared RSS meter)

SECTIONS = ("modes", "peers", "darts")
PROBLEMS = ("mlp", "transformer")
DEFAULT_JSON = HERE / "results" / "nn_engine.json"
OUTER_LR = 0.1
PEER_BUDGET = 10  # CG iterations / Neumann products in the peers section


# --------------------------------------------------------------------------------------
# the problems
# --------------------------------------------------------------------------------------


@dataclass
class Problem:
    """Per-example reweighting of ``model`` (see the module docstring)."""

    name: str
    description: str
    state0: dict[str, Tensor]
    factory: Callable[[], nn.Module]
    train: Any
    val: Any
    n: int
    lr: float
    wd: float
    per_example: Callable[[nn.Module, Any], Tensor]
    attention: bool = False

    def model(self) -> nn.Module:
        """A fresh model at the (pre-trained) starting point."""
        model = self.factory()
        model.load_state_dict(self.state0)
        return model.train()

    def context(self) -> contextlib.AbstractContextManager[Any]:
        if not self.attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def inner_value(self, model: nn.Module, a: Tensor, params: Any = None) -> Tensor:
        """``f``: weighted training loss plus weight decay (on ``params`` if given, else on
        ``model.parameters()``)."""
        weights = torch.sigmoid(a)
        decay = sum((p * p).sum() for p in (model.parameters() if params is None else params))
        return (weights * self.per_example(model, self.train)).mean() + 0.5 * self.wd * decay

    def outer_value(self, model: nn.Module) -> Tensor:
        """``F``: mean validation loss."""
        return self.per_example(model, self.val).mean()

    # the bilevel.nn loss signature: loss(model, hparams, batch)
    def inner_loss(self, model: nn.Module, hparams: dict[str, Tensor], batch: Any) -> Tensor:
        return self.inner_value(model, hparams["a"])

    def outer_loss(self, model: nn.Module, hparams: dict[str, Tensor], batch: Any) -> Tensor:
        return self.outer_value(model)

    def gradient_eval(self, model: nn.Module, a: Tensor) -> Callable[[], None]:
        """One plain gradient of ``f`` (the unit of the ``/ grad`` column)."""
        params = list(model.parameters())

        def run() -> None:
            torch.autograd.grad(self.inner_value(model, a.detach()), params)

        return run


def _classification(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _language_model(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
    return ce.view(tokens.shape[0], -1).mean(dim=1)


def digits(seed: int, n_train: int, n_val: int, n_test: int = 0, noise: float = 0.4) -> dict[str, Tensor]:
    """Standardised digits, a seeded split, uniform label noise on the training part."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :][:n_test]
    mean, std = X[tr].mean(0), X[tr].std(0)
    std[std == 0] = 1.0
    labels = y[tr].copy()
    flip = rng.random(n_train) < noise
    labels[flip] = rng.integers(0, 10, int(flip.sum()))

    def feats(idx: np.ndarray) -> Tensor:
        return torch.tensor((X[idx] - mean) / std, dtype=torch.float32)

    return {
        "x_train": feats(tr), "y_train": torch.tensor(labels), "y_true": torch.tensor(y[tr]),
        "x_val": feats(va), "y_val": torch.tensor(y[va]), "x_test": feats(te), "y_test": torch.tensor(y[te]),
    }


def _mlp(sizes: tuple[int, ...], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).float()


def _pretrain(problem: Problem, model: nn.Module, steps: int) -> dict[str, Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=problem.lr, momentum=0.9)
    a = torch.zeros(problem.n)
    with problem.context():
        for _ in range(steps):
            opt.zero_grad()
            problem.inner_value(model, a).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_problem(name: str, seed: int, warm: int, cache: Path | None) -> Problem:
    """The ``mlp`` or ``transformer`` problem. Its data and pre-trained start are cached in
    ``cache`` (the memory subprocesses then need neither scikit-learn nor the pre-training)."""
    path = None if cache is None else cache / f"{name}-seed{seed}-warm{warm}.pt"
    cached = torch.load(path, weights_only=True) if path is not None and path.exists() else None
    if name == "mlp":
        sizes = (64, 256, 256, 10)
        if cached is None:
            data = digits(seed, 512, 256)
            train, val = (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"])
        else:
            train, val = tuple(cached["train"]), tuple(cached["val"])
        problem = Problem(
            name="mlp",
            description="MLP 64-256-256-10, digits, 512 train (40% noise) / 256 val",
            state0={},
            factory=lambda: _mlp(sizes, seed),
            train=train,
            val=val,
            n=512,
            lr=0.1,
            wd=1e-3,
            per_example=_classification,
        )
    elif name == "transformer":
        from bilevel.recipes.data_mixing import MarkovSource, TinyTransformer

        if cached is None:
            rng = np.random.default_rng(seed)
            sources = [MarkovSource(12, s % 3, rng) for s in range(4)]
            train = torch.cat([s.sample(32, 24, rng) for s in sources])
            val = sources[1].sample(64, 24, rng)
        else:
            train, val = cached["train"], cached["val"]

        def factory() -> nn.Module:
            torch.manual_seed(seed)
            return TinyTransformer(12, 24, width=32, layers=2).float()

        problem = Problem(
            name="transformer",
            description="TinyTransformer (width 32, 2 layers), 4 Markov sources x 32 seqs / 64 val",
            state0={},
            factory=factory,
            train=train,
            val=val,
            n=128,
            lr=0.1,
            wd=1e-4,
            per_example=_language_model,
            attention=True,
        )
    else:
        raise ValueError(f"unknown problem {name!r}")
    if cached is not None:
        problem.state0 = cached["state0"]
    else:
        problem.state0 = _pretrain(problem, problem.factory().train(), warm)
        if path is not None:
            torch.save({"state0": problem.state0, "train": problem.train, "val": problem.val}, path)
    return problem


# --------------------------------------------------------------------------------------
# one outer step per framework and mode ("runners")
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: ``framework`` / ``method`` with ``steps`` inner steps (``T`` or ``K``)."""

    section: str
    problem: str
    framework: str
    method: str
    steps: int
    family: str = ""

    @property
    def label(self) -> str:
        return f"{self.framework} {self.method} {self.steps}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Runner:
    """``step()`` does one outer step; ``last_grad`` is its hypergradient (flat),
    ``products`` the Hessian-type products it used where known."""

    last_grad: Tensor | None = None
    products: float | None = None

    def step(self) -> None:
        raise NotImplementedError


def _adam_step(opt: torch.optim.Optimizer, a: Tensor, grad: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    a.grad = grad
    opt.step()


def _set_params(model: nn.Module, values: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(values[name])


class Baseline(Runner):
    """Hand-written unrolled differentiation: ``T`` SGD steps on
    ``torch.func.functional_call`` parameters with ``create_graph=True``."""

    def __init__(self, problem: Problem, steps: int) -> None:
        self.p, self.T = problem, steps
        self.model = problem.model()
        self.wrapper = _Apply(self.model)
        self.a = torch.zeros(problem.n, requires_grad=True)
        self.opt = torch.optim.Adam([self.a], lr=OUTER_LR)

    def step(self) -> None:
        p, a = self.p, self.a
        theta = {n: t.detach().requires_grad_(True) for n, t in self.model.named_parameters()}
        for _ in range(self.T):
            params = list(theta.values())
            loss = torch.func.functional_call(
                self.wrapper, {f"m.{k}": v for k, v in theta.items()},
                (lambda m: p.inner_value(m, a, params=params),),
            )
            grads = torch.autograd.grad(loss, params, create_graph=True)
            theta = {k: v - p.lr * g for (k, v), g in zip(theta.items(), grads)}
        outer = torch.func.functional_call(
            self.wrapper, {f"m.{k}": v for k, v in theta.items()}, (p.outer_value,)
        )
        (grad,) = torch.autograd.grad(outer, a)
        _set_params(self.model, theta)
        self.last_grad = grad.detach().clone()
        _adam_step(self.opt, a, grad)


class _Apply(nn.Module):
    """``forward(fn) = fn(self.m)``: lets ``functional_call`` substitute ``m``'s tensors
    around an arbitrary function of the model."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, fn: Callable[[nn.Module], Tensor]) -> Tensor:
        return fn(self.m)


class BilevelTrainerRunner(Runner):
    """One :class:`bilevel.nn.BilevelTrainer` outer step (``K`` inner SGD steps + the
    hypergradient of ``method`` + Adam)."""

    def __init__(self, problem: Problem, method: str, steps: int, options: dict[str, Any]) -> None:
        import bilevel.nn as bnn

        self.model = problem.model()
        self.a = torch.zeros(problem.n, requires_grad=True)
        self.trainer = bnn.BilevelTrainer(
            self.model,
            {"a": self.a},
            problem.inner_loss,
            problem.outer_loss,
            inner_optimizer=torch.optim.SGD(self.model.parameters(), lr=problem.lr),
            outer_optimizer=torch.optim.Adam([self.a], lr=OUTER_LR),
            inner_data=[None],
            outer_data=[None],
            inner_steps=steps,
            method=method,
            method_options=options,
        )
        self.iterations: list[int] = []
        if method == "neumann":  # terms of the series (Richardson iterations)
            self.products = options["steps"] + 1

    def step(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fixed budgets: unconverged solves are expected
            self.trainer.fit(self.trainer.step + 1)
        record = self.trainer.history[-1]
        if "solve_iterations" in record:  # mean CG iterations over the steps so far
            self.iterations.append(record["solve_iterations"])
            self.products = sum(self.iterations) / len(self.iterations)
        self.last_grad = self.a.grad.detach().clone()


class BilevelUnrolledRunner(Runner):
    """``bilevel.nn.hypergradient(method="unrolled", steps=T, optimizer=SGD(lr))``, the model
    then set to the unroll's end point (the same work as :class:`Baseline`)."""

    def __init__(self, problem: Problem, steps: int) -> None:
        import bilevel.nn as bnn

        self.bnn, self.p, self.T = bnn, problem, steps
        self.model = problem.model()
        self.a = torch.zeros(problem.n, requires_grad=True)
        self.opt = torch.optim.Adam([self.a], lr=OUTER_LR)
        self.sgd = bnn.optim.SGD(lr=problem.lr)
        self.checked = False

    def step(self) -> None:
        g = self.bnn.hypergradient(
            self.model, {"a": self.a}, self.p.inner_loss, self.p.outer_loss, None, None,
            method="unrolled", steps=self.T, optimizer=self.sgd, check_inputs=not self.checked,
        )
        self.checked = True  # as BilevelTrainer does: validate on the first call only
        _set_params(self.model, g.info.theta)
        self.last_grad = g["a"].clone()
        _adam_step(self.opt, self.a, g["a"])


class TorchOptImplicit(Runner):
    """``torchopt.diff.implicit.custom_root`` around ``K`` in-place SGD steps, the optimality
    condition ``grad_theta f = 0`` by ``torch.func.grad``, CG by
    ``torchopt.linear_solve.solve_cg``."""

    def __init__(self, problem: Problem, steps: int, maxiter: int) -> None:
        import torchopt

        self.p = problem
        self.model = problem.model()
        self.a = torch.zeros(problem.n, requires_grad=True)
        self.opt = torch.optim.Adam([self.a], lr=OUTER_LR)
        sgd = torch.optim.SGD(self.model.parameters(), lr=problem.lr)
        names = [n for n, _ in self.model.named_parameters()]
        model = self.model
        wrapper = _Apply(model)

        def f(params: tuple[Tensor, ...], a: Tensor) -> Tensor:
            tensors = {f"m.{k}": v for k, v in zip(names, params)}
            return torch.func.functional_call(
                wrapper, tensors, (lambda m: problem.inner_value(m, a, params=params),)
            )

        def optimality(params: tuple[Tensor, ...], a: Tensor) -> tuple[Tensor, ...]:
            return torch.func.grad(f)(params, a)

        solve = torchopt.linear_solve.solve_cg(maxiter=maxiter, rtol=0.0, atol=0.0)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def solver(params: tuple[Tensor, ...], a: Tensor) -> tuple[Tensor, ...]:
            with torch.enable_grad():  # custom_root runs the solver under no_grad
                for _ in range(steps):
                    sgd.zero_grad()
                    problem.inner_value(model, a.detach()).backward()
                    sgd.step()
            return tuple(p.detach().clone() for p in model.parameters())

        def outer(params: tuple[Tensor, ...]) -> Tensor:
            tensors = {f"m.{k}": v for k, v in zip(names, params)}
            return torch.func.functional_call(wrapper, tensors, (problem.outer_value,))

        self.solver, self.outer = solver, outer
        self.products = maxiter

    def step(self) -> None:
        params = tuple(p.detach() for p in self.model.parameters())
        solution = self.solver(params, self.a)
        (grad,) = torch.autograd.grad(self.outer(solution), self.a)
        self.last_grad = grad.detach().clone()
        _adam_step(self.opt, self.a, grad)


class TorchOptMetaSGD(Runner):
    """``torchopt.MetaSGD``: ``T`` differentiable SGD steps on the module, backward to ``a``,
    then ``torchopt.stop_gradient`` (TorchOpt's MAML idiom)."""

    def __init__(self, problem: Problem, steps: int) -> None:
        import torchopt

        self.torchopt, self.p, self.T = torchopt, problem, steps
        self.model = problem.model()
        self.meta = torchopt.MetaSGD(self.model, lr=problem.lr)
        self.a = torch.zeros(problem.n, requires_grad=True)
        self.opt = torch.optim.Adam([self.a], lr=OUTER_LR)

    def step(self) -> None:
        for _ in range(self.T):
            self.meta.step(self.p.inner_value(self.model, self.a))
        (grad,) = torch.autograd.grad(self.p.outer_value(self.model), self.a)
        self.torchopt.stop_gradient(self.model)
        self.torchopt.stop_gradient(self.meta)
        self.last_grad = grad.detach().clone()
        _adam_step(self.opt, self.a, grad)


class _Logits(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(n))


def _quiet_betty() -> None:
    """Betty logs problem summaries at INFO on stdout; keep warnings only."""
    from betty.logging.logger_base import get_logger

    betty_logger = get_logger()
    betty_logger.setLevel(logging.WARNING)
    for handler in betty_logger.handlers:
        handler.setLevel(logging.WARNING)


class BettyRunner(Runner):
    """Betty's ``Engine`` with two ``ImplicitProblem``s: ``K = unroll_steps`` inner SGD
    steps, then the outer (Adam) step on the hypergradient of ``kind``."""

    def __init__(self, problem: Problem, kind: str, steps: int, budget: int) -> None:
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
        from betty.problems import ImplicitProblem

        self.K = steps
        model = problem.model()
        logits = _Logits(problem.n)
        runner = self

        class Outer(ImplicitProblem):
            def training_step(self, batch: Any) -> Tensor:
                return problem.outer_value(self.inner.module)

            def param_callback(self, params: list[Tensor]) -> None:
                # called after the optimizer step, before Betty deletes the gradients
                runner.last_grad = params[0].grad.detach().clone()

        class Inner(ImplicitProblem):
            def training_step(self, batch: Any) -> Tensor:
                return problem.inner_value(self.module, self.outer.module.a)

        inner_config = Config(
            type=kind, unroll_steps=steps, darts_alpha=0.01,
            neumann_iterations=budget, neumann_alpha=problem.lr,
            cg_iterations=budget, cg_alpha=1.0,
        )
        dummy = [(torch.zeros(1),)]  # the data is fixed; Betty still wants a loader
        self.outer = Outer(
            name="outer", module=logits, optimizer=torch.optim.Adam(logits.parameters(), lr=OUTER_LR),
            train_data_loader=dummy, config=Config(first_order=True, retain_graph=True), device="cpu",
        )
        self.inner = Inner(
            name="inner", module=model, optimizer=torch.optim.SGD(model.parameters(), lr=problem.lr),
            train_data_loader=dummy, config=inner_config, device="cpu",
        )
        _quiet_betty()
        self.engine = Engine(
            config=EngineConfig(train_iters=10**12, valid_step=10**12),
            problems=[self.outer, self.inner],
            dependencies={"u2l": {self.outer: [self.inner]}, "l2u": {self.inner: [self.outer]}},
        )
        self.engine.train()
        self.products = {"cg": budget, "neumann": budget + 1}.get(kind)  # its / series terms

    def step(self) -> None:
        for _ in range(self.K):
            self.engine.global_step += 1
            self.engine.train_step()


def build(case: Case, problem: Problem) -> Runner:
    """The runner of one row."""
    fw, m, k = case.framework, case.method, case.steps
    if fw == "baseline":
        return Baseline(problem, k)
    if fw == "bilevel" and m == "unrolled":
        return BilevelUnrolledRunner(problem, k)
    if fw == "bilevel":
        if case.section == "peers":
            options = {
                "cg": {"tol": 0.0, "maxiter": PEER_BUDGET},
                "neumann": {"steps": PEER_BUDGET, "alpha": problem.lr},
                "fd": {"xi": problem.lr, "epsilon": 0.01},
            }[m]
        else:
            options = {
                "cg": {"maxiter": 20, "ridge": 0.1},
                "neumann": {"steps": 20, "alpha": problem.lr},
                "fd": {"xi": problem.lr},
                "penalty": {},
            }[m]
        return BilevelTrainerRunner(problem, m, k, options)
    if fw == "torchopt" and m == "implicit-cg":
        return TorchOptImplicit(problem, k, PEER_BUDGET)
    if fw == "torchopt" and m == "metasgd":
        return TorchOptMetaSGD(problem, k)
    if fw == "betty":
        return BettyRunner(problem, m, k, PEER_BUDGET)
    raise ValueError(f"unknown case {case}")


# --------------------------------------------------------------------------------------
# the rows of each section
# --------------------------------------------------------------------------------------


def modes_cases(problem: str, steps: list[int], mode_steps: int) -> list[Case]:
    cases = []
    for T in steps:
        cases.append(Case("modes", problem, "baseline", "unrolled", T, family=f"unrolled {T}"))
        cases.append(Case("modes", problem, "bilevel", "unrolled", T, family=f"unrolled {T}"))
        cases.append(Case("modes", problem, "bilevel", "cg", T, family=f"implicit {T}"))
    for m in ("neumann", "fd", "penalty"):
        cases.append(Case("modes", problem, "bilevel", m, mode_steps, family=f"implicit {mode_steps}"))
    return cases


def peers_cases(steps: list[int], available: dict[str, bool]) -> list[Case]:
    cases = []
    for K in steps:
        rows = [
            ("bilevel", "cg", "cg"), ("torchopt", "implicit-cg", "cg"), ("betty", "cg", "cg"),
            ("bilevel", "neumann", "neumann"), ("betty", "neumann", "neumann"),
            ("bilevel", "fd", "fd"), ("betty", "darts", "fd"),
            ("bilevel", "unrolled", "unrolled"), ("torchopt", "metasgd", "unrolled"),
            ("baseline", "unrolled", "unrolled"),
        ]
        for fw, m, fam in rows:
            if available.get(fw, True):
                cases.append(Case("peers", "mlp", fw, m, K, family=f"{fam} {K}"))
    return cases


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------


def pin(threads: int) -> None:
    """One torch thread, and this process (and its children) on one CPU."""
    torch.set_num_threads(threads)
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})


def time_table(
    problem: Problem, cases: list[Case], repeat: int, block_seconds: float, log: Callable[[str], None]
) -> dict[Case, dict[str, Any]]:
    """Median seconds per outer step of every case, interleaved in one process."""
    out: dict[Case, dict[str, Any]] = {}
    runners: dict[Case, Runner] = {}
    with problem.context():
        for case in cases:
            try:
                runners[case] = build(case, problem)
                runners[case].step()  # first step: lazy initialisation; its hypergradient
                first = runners[case].last_grad  # is the one compared across rows
                t0 = time.perf_counter()
                runners[case].step()
                estimate = time.perf_counter() - t0
                out[case] = {"first_grad": first, "estimate": estimate, "times": []}
            except Exception as exc:  # noqa: BLE001
                runners.pop(case, None)
                out[case] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"  {case.label}: error {out[case]['error']}")
                traceback.print_exc(file=sys.stderr)
        grad_model = problem.model()
        grad_eval = problem.gradient_eval(grad_model, torch.zeros(problem.n))
        grad_times: list[float] = []
        live = [c for c in cases if c in runners]
        for r in range(repeat):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            t0 = time.perf_counter()
            for _ in range(10):
                grad_eval()
            grad_times.append((time.perf_counter() - t0) / 10)
            for case in order:
                n = max(1, round(block_seconds / max(out[case]["estimate"], 1e-6)))
                t0 = time.perf_counter()
                for _ in range(n):
                    runners[case].step()
                out[case]["times"].append((time.perf_counter() - t0) / n)
            log(f"  round {r + 1}/{repeat} done")
    grad = statistics.median(grad_times)
    for case in live:
        rec = out[case]
        rec["seconds"] = statistics.median(rec["times"])
        rec["per_grad"] = rec["seconds"] / grad
        rec["products"] = runners[case].products
    out[Case("", problem.name, "", "grad", 0)] = {"seconds": grad}
    return out


def agreement(results: dict[Case, dict[str, Any]], cases: list[Case]) -> None:
    """Relative difference and cosine of each row's first hypergradient against the bilevel
    row of its family (same state, same budget)."""
    refs: dict[str, Case] = {}
    for c in cases:  # the first bilevel row of each family (cg among the implicit modes)
        if c.framework == "bilevel" and "first_grad" in results.get(c, {}):
            refs.setdefault(c.family, c)
    for c in cases:
        rec, ref = results.get(c, {}), refs.get(c.family)
        if "first_grad" not in rec or ref is None or ref == c:
            continue
        g, r = rec["first_grad"].double(), results[ref]["first_grad"].double()
        rec["rel_diff"] = float((g - r).norm() / r.norm().clamp_min(1e-300))
        rec["cosine"] = float(torch.dot(g, r) / (g.norm() * r.norm()).clamp_min(1e-300))


def memory_of(case: Case, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """Peak resident-set growth of one outer step, in a fresh subprocess."""
    spec = {"case": case.to_dict(), "seed": args.seed, "warm": args.warm, "cache": str(cache),
            "threads": args.threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    with tempfile.NamedTemporaryFile("r", suffix=".json", dir=cache, delete=False) as fh:
        result_path = fh.name
    spec["result"] = result_path
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_memory", json.dumps(spec)],
            env=env, capture_output=True, text=True, timeout=args.command_timeout,
        )
        with open(result_path) as fh:
            text = fh.read()
        if proc.returncode != 0 or not text:
            return {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
        return json.loads(text)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.command_timeout:.0f}s"}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(result_path)


def _memory_worker(spec: dict[str, Any]) -> None:
    torch.set_num_threads(spec["threads"])
    case = Case(**spec["case"])
    problem = make_problem(case.problem, spec["seed"], spec["warm"], Path(spec["cache"]))
    meter = RssMeter()
    with problem.context():
        runner = build(case, problem)
        for _ in range(2):
            runner.step()
        meter.start()
        runner.step()
        peak = meter.peak()
    result = {
        "peak_mib": None if peak is None else peak / 2**20,
        "rss_mib": RssMeter._status("VmRSS") / 2**20 if meter.available else None,
    }
    with open(spec["result"], "w") as fh:
        json.dump(result, fh)


# --------------------------------------------------------------------------------------
# Betty's darts: the parameters after one hypergradient, and Meta-Weight-Net with it
# --------------------------------------------------------------------------------------


def darts_displacement(problem: Problem) -> list[dict[str, Any]]:
    """Lower-level parameters before/after one hypergradient call of each mode."""
    import betty.hypergradient as bh

    import bilevel.nn as bnn

    rows = []
    for kind in ("darts", "cg", "neumann"):
        record: dict[str, Any] = {}
        original = bh.jvp_fn_mapping[kind]

        def spy(vector: Any, curr: Any, prev: Any, original: Any = original, kind: str = kind) -> Any:
            before = [p.detach().clone() for p in curr.trainable_parameters()]
            out = original(vector, curr, prev)
            after = [p.detach().clone() for p in curr.trainable_parameters()]
            delta = torch.cat([(x - y).flatten() for x, y in zip(after, before)]).double()
            v = torch.cat([t.flatten() for t in vector]).double()
            predicted = -(curr.config.darts_alpha / v.norm()) * v
            record.update(
                max_abs_change=float(delta.abs().max()),
                change_norm=float(delta.norm()),
                darts_alpha=curr.config.darts_alpha,
                residual_vs_minus_eps_v=float((delta - predicted).abs().max()) if kind == "darts" else None,
                cosine_with_val_gradient=float(-torch.dot(delta, v) / (delta.norm() * v.norm()))
                if delta.norm() > 0 else None,
            )
            return out

        bh.jvp_fn_mapping[kind] = spy
        try:
            runner = BettyRunner(problem, kind, 1, PEER_BUDGET)
            runner.step()
        finally:
            bh.jvp_fn_mapping[kind] = original
        rows.append({"framework": "betty", "mode": kind, **record})
    # bilevel's "fd" on the same state: bitwise check
    model = problem.model()
    a = torch.zeros(problem.n, requires_grad=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bnn.hypergradient(model, {"a": a}, problem.inner_loss, problem.outer_loss, None, None,
                      method="fd", xi=problem.lr, epsilon=0.01)
    changes = [float((model.state_dict()[k] - v).abs().max()) for k, v in before.items()]
    rows.append({
        "framework": "bilevel", "mode": "fd", "max_abs_change": max(changes),
        "bitwise_equal": all(torch.equal(model.state_dict()[k], v) for k, v in before.items()),
    })
    return rows


class _WeightNet(nn.Module):
    """Meta-Weight-Net: ``w = sigmoid(V(loss))``, ``V`` 1-100-1 ReLU."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.detach().reshape(-1, 1))).reshape(-1)


@contextlib.contextmanager
def _restoring_darts() -> Iterator[None]:
    """Betty's darts with the lower-level parameters put back after its probes (what its
    comment 'reverse weight change' intends)."""
    import betty.hypergradient as bh

    original = bh.jvp_fn_mapping["darts"]

    def restored(vector: Any, curr: Any, prev: Any) -> Any:
        saved = [p.detach().clone() for p in curr.trainable_parameters()]
        out = original(vector, curr, prev)
        with torch.no_grad():
            for p, s in zip(curr.trainable_parameters(), saved):
                p.copy_(s)
        return out

    bh.jvp_fn_mapping["darts"] = restored
    try:
        yield
    finally:
        bh.jvp_fn_mapping["darts"] = original


def mwn_run(
    variant: str, steps: int, seed: int, meta_lr: float = 1e-3, darts_alpha: float = 0.01
) -> dict[str, Any]:
    """Meta-Weight-Net on noisy digits with Betty's darts (``betty``, ``betty-restored``) or
    bilevel's ``"fd"`` (``bilevel-fd``) in the same loop."""
    data = digits(seed, 900, 400, 497)
    x, y, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    noisy = data["y_train"] != data["y_true"]
    gen = torch.Generator().manual_seed(seed)
    batch, meta_batch = 100, 100
    classifier = _mlp((64, 128, 10), seed)
    wnet = _WeightNet(seed + 1)

    def train_batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - batch + 1, batch):
                idx = perm[i : i + batch]
                yield x[idx], y[idx]

    def val_batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            perm = torch.randperm(len(xv), generator=gen)
            for i in range(0, len(xv) - meta_batch + 1, meta_batch):
                idx = perm[i : i + meta_batch]
                yield xv[idx], yv[idx]

    def inner_opt(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)

    def outer_opt(params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=meta_lr, weight_decay=1e-4)

    def weighted(model: nn.Module, weights: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        ce = F.cross_entropy(model(b[0]), b[1], reduction="none")
        return (weights(ce) * ce).mean()

    t0 = time.perf_counter()
    if variant.startswith("betty"):
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
        from betty.problems import ImplicitProblem

        class Outer(ImplicitProblem):
            def training_step(self, b: Any) -> Tensor:
                return F.cross_entropy(self.inner.module(b[0]), b[1])

        class Inner(ImplicitProblem):
            def training_step(self, b: Any) -> Tensor:
                return weighted(self.module, self.outer.module, b)

        outer = Outer(name="outer", module=wnet, optimizer=outer_opt(wnet.parameters()),
                      train_data_loader=_Endless(val_batches()),
                      config=Config(type="darts", retain_graph=True), device="cpu")
        inner = Inner(name="inner", module=classifier, optimizer=inner_opt(classifier.parameters()),
                      train_data_loader=_Endless(train_batches()),
                      config=Config(type="darts", unroll_steps=1, darts_alpha=darts_alpha),
                      device="cpu")
        _quiet_betty()
        engine = Engine(config=EngineConfig(train_iters=steps, valid_step=10**12),
                        problems=[outer, inner],
                        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}})
        ctx = _restoring_darts() if variant == "betty-restored" else contextlib.nullcontext()
        with ctx, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.run()
    else:
        import bilevel.nn as bnn

        trainer = bnn.BilevelTrainer(
            classifier, wnet,
            lambda m, w, b: weighted(m, w, b),
            lambda m, w, b: F.cross_entropy(m(b[0]), b[1]),
            inner_optimizer=inner_opt(classifier.parameters()),
            outer_optimizer=outer_opt(wnet.parameters()),
            inner_data=_Endless(train_batches()), outer_data=_Endless(val_batches()),
            inner_steps=1, method="fd", method_options={"xi": 0.1, "epsilon": darts_alpha},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(steps)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        classifier.eval()
        ce = F.cross_entropy(classifier(x), y, reduction="none")
        w = wnet(ce)
        test = float((classifier(data["x_test"]).argmax(1) == data["y_test"]).float().mean())
        val = float((classifier(xv).argmax(1) == yv).float().mean())
    return {
        "variant": variant, "steps": steps, "meta_lr": meta_lr, "darts_alpha": darts_alpha,
        "seconds": seconds, "test_accuracy": test, "val_accuracy": val,
        "clean_weight_mean": float(w[~noisy].mean()), "noisy_weight_mean": float(w[noisy].mean()),
        "noisy_fraction": float(noisy.float().mean()),
    }


class _Endless:
    """A re-iterable view of one endless generator (Betty and BatchStream call ``iter``)."""

    def __init__(self, gen: Iterator[Any]) -> None:
        self.gen = gen

    def __iter__(self) -> Iterator[Any]:
        return self.gen


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _ms(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    return f"{s * 1e3:.0f}" if s >= 0.1 else f"{s * 1e3:.1f}"


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _ratio(row: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """Median over rounds of the per-round time ratio ``row / ref`` (rows of one round are
    timed minutes apart at most), with its range."""
    if ref is None or ref is row or not row.get("times") or not ref.get("times"):
        return "-"
    ratios = sorted(a / b for a, b in zip(row["times"], ref["times"]))
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def _mem_ratio(row: dict[str, Any], ref: dict[str, Any] | None) -> str:
    if ref is None or ref is row or row.get("peak_mib") is None or not ref.get("peak_mib"):
        return "-"
    return f"{row['peak_mib'] / ref['peak_mib']:.2f}"


def _agreement(row: dict[str, Any]) -> str:
    return f"rel {row['rel_diff']:.1e}, cos {row['cosine']:.4f}" if "rel_diff" in row else "-"


def modes_table(rows: list[dict[str, Any]], grad_s: float) -> str:
    base = {r["steps"]: r for r in rows if r["framework"] == "baseline" and "seconds" in r}
    lines = [
        f"one plain gradient of f: {_ms(grad_s)} ms",
        "",
        "| row | T or K | ms / outer step | / grad | / baseline, same T (range over rounds) "
        "| peak MiB | / baseline mem | solver its | agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["framework"] == "baseline":
            name = "baseline unrolled (hand-written)"
        else:
            name = "bilevel unrolled" if r["method"] == "unrolled" else f"bilevel trainer {r['method']}"
        if "error" in r or "seconds" not in r:
            lines.append(f"| {name} | {r['steps']} | error: {r.get('error', '?')[:80]} |||||||")
            continue
        b = base.get(r["steps"])
        lines.append(
            f"| {name} | {r['steps']} | {_ms(r['seconds'])} | {_f(r['per_grad'], '.1f')} | {_ratio(r, b)} "
            f"| {_f(r.get('peak_mib'), '.1f')} | {_mem_ratio(r, b)} | {_f(r.get('products'), '.0f')} "
            f"| {_agreement(r)} |"
        )
    return "\n".join(lines)


def peers_table(rows: list[dict[str, Any]]) -> str:
    ref = {r["family"]: r for r in rows if r["framework"] == "bilevel" and "seconds" in r}
    lines = [
        "| K | method | framework | ms / outer step | / bilevel (range over rounds) | peak MiB "
        "| / bilevel mem | solver its | agreement with bilevel |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        label = f"{r['framework']} {r['method']}"
        if "error" in r or "seconds" not in r:
            lines.append(f"| {r['steps']} | {r['family'].split()[0]} | {label} | error: {r.get('error', '?')[:80]} ||||||")
            continue
        b = ref.get(r["family"])
        lines.append(
            f"| {r['steps']} | {r['family'].split()[0]} | {label} | {_ms(r['seconds'])} | {_ratio(r, b)} "
            f"| {_f(r.get('peak_mib'), '.1f')} | {_mem_ratio(r, b)} | {_f(r.get('products'), '.0f')} "
            f"| {_agreement(r)} |"
        )
    return "\n".join(lines)


def print_tables(report: dict[str, Any]) -> str:
    """All tables of a saved report (``--table``)."""
    out = []
    for section in ("modes", "peers"):
        problems = dict.fromkeys(r["problem"] for r in report.get(section, []))
        for name in problems:
            rows = [r for r in report[section] if r["problem"] == name]
            title = f"## {section}: {rows[0].get('problem_description', name)}"
            table = modes_table(rows, rows[0]["grad_seconds"]) if section == "modes" else peers_table(rows)
            out.append(f"{title}\n\n{table}\n")
    if report.get("darts"):
        out.append(f"## darts\n\n{darts_tables(report['darts'])}\n")
    return "\n".join(out)


def darts_tables(d: dict[str, Any]) -> str:
    lines = [
        "| framework | mode | max abs change of theta | norm of change | darts_alpha | max abs (change + (alpha/|v|) v) | cos(change, -v) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d.get("displacement", []):
        lines.append(
            f"| {r['framework']} | {r['mode']} | {r['max_abs_change']:.3g} | {_f(r.get('change_norm'), '.4g')} "
            f"| {_f(r.get('darts_alpha'), 'g')} | {_f(r.get('residual_vs_minus_eps_v'), '.2g')} "
            f"| {_f(r.get('cosine_with_val_gradient'), '.6f')} |"
        )
    if d.get("mwn"):
        lines += [
            "",
            "| Meta-Weight-Net run | steps | meta lr | darts_alpha / epsilon | test accuracy "
            "| validation accuracy | clean weight mean | noisy weight mean | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in d["mwn"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | error: {r['error'][:80]} ||||||||")
                continue
            lines.append(
                f"| {r['variant']} | {r['steps']} | {_f(r.get('meta_lr'), 'g')} | {_f(r.get('darts_alpha'), 'g')} "
                f"| {r['test_accuracy']:.3f} | {_f(r.get('val_accuracy'), '.3f')} "
                f"| {r['clean_weight_mean']:.3f} | {r['noisy_weight_mean']:.3f} | {r['seconds']:.0f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("torchopt", "betty-ml", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        out["bilevel_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "bilevel"],
                               capture_output=True, text=True).stdout.strip()
        out["bilevel_dirty"] = str(bool(dirty))
    except OSError:
        pass
    return out


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{path.suffix}")


def _row(case: Case, rec: dict[str, Any]) -> dict[str, Any]:
    return {**case.to_dict(), **{k: v for k, v in rec.items() if k not in ("first_grad",)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring and benchmarks/nn_engine.md for what is measured.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: T, K in {1, 10}, peers K=1, 2 rounds, 150 MWN steps")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="T (unrolled) and K (trainer cg) of the modes section (default 1 10 50)")
    parser.add_argument("--mode-steps", type=int, default=10, help="K of the other trainer modes")
    parser.add_argument("--peer-steps", nargs="+", type=int, default=None,
                        help="inner steps K per outer step in the peers section (default 1 10)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5; quick 2)")
    parser.add_argument("--block-seconds", type=float, default=0.5,
                        help="target length of one timed block of steps")
    parser.add_argument("--warm", type=int, default=100, help="pre-training SGD steps")
    parser.add_argument("--mwn-steps", type=int, default=None,
                        help="Meta-Weight-Net steps per run in the darts section (default 1500)")
    parser.add_argument("--mwn-alphas", nargs="+", type=float, default=[0.01, 0.1],
                        help="Betty darts_alpha values of the Meta-Weight-Net runs (0.01: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--command-timeout", type=float, default=900.0,
                        help="seconds allowed to one memory subprocess")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to save all records (never overwritten: a timestamp is added)")
    parser.add_argument("--table", type=Path, help="print the tables of a saved --json file and exit")
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory:
        _memory_worker(json.loads(args._memory))
        return
    if args.table:
        print(print_tables(json.loads(args.table.read_text())))
        return
    args.steps = args.steps or ([1, 10] if args.quick else [1, 10, 50])
    args.peer_steps = args.peer_steps or ([1] if args.quick else [1, 10])
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.mwn_steps = args.mwn_steps or (150 if args.quick else 1500)
    if args.quick:
        args.block_seconds = min(args.block_seconds, 0.2)

    pin(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchopt")
    warnings.filterwarnings("ignore", category=FutureWarning)
    available = {}
    for fw, module in (("torchopt", "torchopt"), ("betty", "betty")):
        try:
            __import__(module)
            available[fw] = True
        except ImportError:
            available[fw] = False
            print(f"note: {module} is not importable here; its rows are skipped", flush=True)
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "versions": _versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "_memory"},
        "modes": [], "peers": [], "darts": {},
    }

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    t_start = time.perf_counter()
    out_text: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nn_engine-") as tmp:
        cache = Path(tmp)
        jobs: list[tuple[str, str, list[Case]]] = []
        if "modes" in args.sections:
            for name in args.problems:
                jobs.append(("modes", name, modes_cases(name, args.steps, args.mode_steps)))
        if "peers" in args.sections:
            jobs.append(("peers", "mlp", peers_cases(args.peer_steps, available)))
        for section, name, cases in jobs:
            log(f"{section} / {name}: {len(cases)} rows, building the problem")
            problem = make_problem(name, args.seed, args.warm, cache)
            results = time_table(problem, cases, args.repeat, args.block_seconds, log)
            agreement(results, cases)
            grad_s = results.pop(Case("", name, "", "grad", 0))["seconds"]
            if not args.no_memory:
                for case in cases:
                    if "error" in results[case]:
                        continue
                    results[case].update(memory_of(case, args, cache))
                    log(f"  memory {case.label}: {results[case].get('peak_mib', results[case].get('error'))}")
            rows = [_row(c, results[c]) for c in cases]
            for r in rows:
                r["problem_description"] = problem.description
                r["grad_seconds"] = grad_s
            report[section].extend(rows)
            title = f"## {section}: {problem.description}"
            table = modes_table(rows, grad_s) if section == "modes" else peers_table(rows)
            out_text.append(f"{title}\n\n{table}\n")
            print(f"\n{title}\n\n{table}\n", flush=True)
        if "darts" in args.sections and available.get("betty"):
            log("darts: parameters around one hypergradient")
            problem = make_problem("mlp", args.seed, args.warm, cache)
            report["darts"]["displacement"] = darts_displacement(problem)
            report["darts"]["mwn"] = []
            runs = [(v, alpha) for alpha in args.mwn_alphas for v in ("betty", "betty-restored")]
            runs.insert(2, ("bilevel-fd", args.mwn_alphas[0]))
            for variant, alpha in runs:
                log(f"darts: Meta-Weight-Net, {variant}, darts_alpha {alpha}, {args.mwn_steps} steps")
                try:
                    report["darts"]["mwn"].append(
                        mwn_run(variant, args.mwn_steps, args.seed, darts_alpha=alpha)
                    )
                except Exception as exc:  # noqa: BLE001
                    report["darts"]["mwn"].append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"})
            table = darts_tables(report["darts"])
            out_text.append(f"## darts\n\n{table}\n")
            print(f"\n## darts\n\n{table}\n", flush=True)
    report["seconds"] = time.perf_counter() - t_start
    report["machine"]["loadavg_end"] = os.getloadavg()
    path = _unique(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    log(f"done in {report['seconds']:.0f}s; load average {os.getloadavg()}; records in {path}")


if __name__ == "__main__":
    main()
