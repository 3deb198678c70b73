"""Side-by-side benchmark of the outer algorithms of :mod:`bilevel.methods`.

Problems (``--problems``):

* ``quadratic``: :meth:`bilevel.testproblems.QuadraticBilevel.random` (dim_x=10, dim_y=50, lower
  condition number 10). Accuracy = ||grad h(x_k)|| / ||grad h(x_0)|| from the closed form.
  Deterministic methods see the full problem; stochastic ones (``method.stochastic``) see a
  finite sum of ``N_BATCHES`` components whose mean is exactly the full problem.
* ``hpo``: per-feature L2 of logistic regression on breast_cancer (x = log-strengths of the
  30 features, y = weights incl. intercept); metric = validation loss at w*(x_final).
* ``cleaning``: hyper-cleaning on a digits subset with 50% wrong labels (x = per-example weight
  logits, y = 65x10 multinomial logistic regression); metrics = validation loss and test
  accuracy at W*(x_final).

Step sizes come from the Lipschitz constants of each problem (see :func:`step_sizes`); every
run is wrapped so that a failure or divergence is reported, never crashes the benchmark.
Peers (only if importable, never installed by this script; run with ``.venv-bench``): Betty
(``betty-ml``) on the quadratic through :func:`run_betty`, configured like ``aid``. BOAT
(``boat-torch``) is not installable next to torch 2.13 here (its wheel pins numpy<=1.26 and
pulls torchvision), so it has no adapter.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import torch
import torch.nn.functional as F

import bilevel
from bilevel.methods import METHODS, solve
from bilevel.problem import BilevelProblem
from bilevel.testproblems.quadratic import QuadraticBilevel
from bilevel.solvers import LBFGS

DTYPE = torch.float64
N_BATCHES = 10  # finite-sum components given to the stochastic methods


# --------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------
class Setup:
    """A benchmark problem: full and finite-sum BilevelProblems, start point, constants."""

    name: str
    full: BilevelProblem
    finite_sum: BilevelProblem
    x0: torch.Tensor
    y0: torch.Tensor
    L_y: float  # smoothness of f(x, .) at x0 (largest over components for the finite sum)
    mu: float  # strong convexity of f(x, .) at x0
    L_h: float  # (estimate of) smoothness of the value function h
    upper_scale: float  # for stochastic outer steps

    def accuracy(self, x: torch.Tensor) -> float:  # relative hypergradient, quadratic only
        return math.nan

    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {}


def _sym_noise(gen: torch.Generator, n: int, dim: int, scale: float) -> torch.Tensor:
    """``n`` symmetric ``dim x dim`` perturbations with zero mean."""
    e = torch.randn(n, dim, dim, generator=gen, dtype=DTYPE)
    e = (e + e.transpose(1, 2)) / (2 * math.sqrt(dim))
    e = e - e.mean(0, keepdim=True)
    return scale * e


def _noise(gen: torch.Generator, n: int, *shape: int, scale: float) -> torch.Tensor:
    e = torch.randn(n, *shape, generator=gen, dtype=DTYPE)
    return scale * (e - e.mean(0, keepdim=True))


class QuadraticSetup(Setup):
    name = "quadratic"

    def __init__(self, seed: int = 0, rel_noise: float = 0.1) -> None:
        q = QuadraticBilevel.random(dim_x=10, dim_y=50, seed=seed, lower_condition=10.0)
        self.q = q
        M = torch.linalg.solve(q.H, q.J)
        self.hess_h = q.C + q.K.T @ M + M.T @ q.K + M.T @ q.A @ M
        self.g0 = q.hypergradient(torch.zeros_like(q.d))
        self.full = q.problem()
        gen = torch.Generator().manual_seed(seed + 1)
        n, dy, dx = N_BATCHES, q.H.shape[0], q.C.shape[0]
        # components: H_i = H + E_i (E_i symmetric, zero mean, |E_i| ~ rel_noise |H|), etc.
        Hs = q.H + _sym_noise(gen, n, dy, rel_noise * float(torch.linalg.matrix_norm(q.H, 2)))
        Js = q.J + _noise(gen, n, dy, dx, scale=rel_noise)
        bs = q.b + _noise(gen, n, dy, scale=rel_noise)
        As = q.A + _sym_noise(gen, n, dy, rel_noise * float(torch.linalg.matrix_norm(q.A, 2)))
        Ks = q.K + _noise(gen, n, dy, dx, scale=rel_noise / dy)
        cs = q.c + _noise(gen, n, dy, scale=rel_noise)
        lower_data = [(Hs[i], Js[i], bs[i]) for i in range(n)]
        upper_data = [(As[i], Ks[i], cs[i]) for i in range(n)]
        C, d = q.C, q.d

        def lower(x, y, batch):
            H, J, b = batch
            return 0.5 * y @ H @ y - y @ (J @ x + b)

        def upper(x, y, batch):
            A, K, c = batch
            return 0.5 * y @ A @ y + y @ (K @ x) + 0.5 * x @ C @ x + c @ y + d @ x

        self.finite_sum = BilevelProblem(
            upper=upper, lower=lower, upper_data=upper_data, lower_data=lower_data
        )
        self.x0 = torch.zeros(dx, dtype=DTYPE)
        self.y0 = torch.zeros(dy, dtype=DTYPE)
        eig_h = torch.linalg.eigvalsh(q.H)
        self.L_y, self.mu = float(eig_h.max()), float(eig_h.min())
        self.L_y_max = max(float(torch.linalg.eigvalsh(h).max()) for h in Hs)
        self.L_h = float(torch.linalg.eigvalsh(self.hess_h).max())
        self.mu_h = float(torch.linalg.eigvalsh(self.hess_h).min())
        self.norm0 = float(self.g0.norm())
        self.B_norm = float(torch.linalg.matrix_norm(q.J, 2))

    def accuracy(self, x: torch.Tensor) -> float:
        return float((self.hess_h @ x + self.g0).norm()) / self.norm0

    def metrics(self, x, y):
        return {
            "rel_hypergrad": self.accuracy(x),
            "h_gap": float(self.q.value(x) - self.q.value(self.q.x_star())),
        }


def _power_lambda_max(X: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(X.T @ X / X.shape[0]).max())


def _split(n: int, k: int) -> list[torch.Tensor]:
    return list(torch.arange(n).chunk(k))


class HPOSetup(Setup):
    name = "hpo"

    def __init__(self, seed: int = 0, start_strength: float = 0.1) -> None:
        from bilevel.recipes.hyperparameter import cross_entropy, load_data, train_loss

        data = load_data(seed)
        Xtr, ytr, Xv, yv = data["X_train"], data["y_train"], data["X_val"], data["y_val"]
        self.data = data
        self.cross_entropy = cross_entropy
        self.train_loss = train_loss
        p = Xtr.shape[1]

        def lower(x, y, batch=None):
            if batch is None:
                return train_loss(y, x, Xtr, ytr)
            return train_loss(y, x, Xtr[batch], ytr[batch])

        def upper(x, y, batch=None):
            # 0 * x.sum(): F does not depend on x; keeps grad_x well defined
            if batch is None:
                return cross_entropy(y, Xv, yv) + 0.0 * x.sum()
            return cross_entropy(y, Xv[batch], yv[batch]) + 0.0 * x.sum()

        self.full = BilevelProblem(upper=lambda x, y: upper(x, y), lower=lambda x, y: lower(x, y))
        self.finite_sum = BilevelProblem(
            upper=upper,
            lower=lower,
            upper_data=_split(Xv.shape[0], N_BATCHES),
            lower_data=_split(Xtr.shape[0], N_BATCHES),
        )
        self.x0 = torch.full((p - 1,), math.log(start_strength), dtype=DTYPE)
        self.y0 = torch.zeros(p, dtype=DTYPE)
        # logistic loss: Hessian <= X^T X / (4 n); the strengths add up to max exp(x); allow
        # the strengths to grow to ~10x their start before the inner step is unstable
        self.L_y = _power_lambda_max(Xtr) / 4 + 10 * start_strength
        self.L_y_max = max(_power_lambda_max(Xtr[b]) for b in self.finite_sum.lower_data) / 4
        self.L_y_max += 10 * start_strength
        self.mu = start_strength  # (intercept unpenalised: only the data term makes it PD)
        self.L_h = math.nan  # not available in closed form; outer steps chosen empirically
        self.B_norm = float(torch.linalg.matrix_norm(Xtr, 2)) / math.sqrt(Xtr.shape[0])
        self.solver = LBFGS(train_loss, tol=1e-10, maxiter=5000)

    def metrics(self, x, y):
        with torch.no_grad():
            w, _ = self.solver.run(
                y.detach().clone(), x.detach(), self.data["X_train"], self.data["y_train"]
            )
        from bilevel.recipes.hyperparameter import accuracy

        return {
            "val_loss": float(self.cross_entropy(w, self.data["X_val"], self.data["y_val"])),
            "val_loss_own_y": float(self.cross_entropy(y, self.data["X_val"], self.data["y_val"])),
            "test_acc": accuracy(w, self.data["X_test"], self.data["y_test"]),
        }


class CleaningSetup(Setup):
    name = "cleaning"

    def __init__(
        self,
        seed: int = 0,
        n_train: int = 200,
        n_val: int = 200,
        n_test: int = 500,
        reg: float = 0.03,
    ) -> None:
        from bilevel.recipes.hyper_cleaning import load_data, make_weighted_train_loss

        data = load_data(n_train, n_val, n_test, corruption=0.5, seed=seed)
        self.data = data
        Xtr, ytr, Xv, yv = data["X_train"], data["y_train_noisy"], data["X_val"], data["y_val"]
        loss = make_weighted_train_loss(reg)
        self.loss = loss

        def lower(x, y, batch=None):
            if batch is None:
                return loss(y, x, Xtr, ytr)
            return loss(y, x[batch], Xtr[batch], ytr[batch])

        def upper(x, y, batch=None):
            if batch is None:
                return F.cross_entropy(Xv @ y, yv) + 0.0 * x.sum()
            return F.cross_entropy(Xv[batch] @ y, yv[batch]) + 0.0 * x.sum()

        self.full = BilevelProblem(upper=lambda x, y: upper(x, y), lower=lambda x, y: lower(x, y))
        self.finite_sum = BilevelProblem(
            upper=upper,
            lower=lower,
            upper_data=_split(Xv.shape[0], N_BATCHES),
            lower_data=_split(Xtr.shape[0], N_BATCHES),
        )
        self.x0 = torch.zeros(n_train, dtype=DTYPE)
        self.y0 = torch.zeros(Xtr.shape[1], 10, dtype=DTYPE)
        # softmax CE Hessian <= 1/2 X^T X / n per class block; weights sigmoid(a) <= 1
        self.L_y = 0.5 * _power_lambda_max(Xtr) + reg
        self.L_y_max = 0.5 * max(_power_lambda_max(Xtr[b]) for b in self.finite_sum.lower_data)
        self.L_y_max += reg
        self.mu = reg
        self.L_h = math.nan
        self.B_norm = float(torch.linalg.matrix_norm(Xtr, 2)) / Xtr.shape[0]
        self.solver = LBFGS(loss, tol=1e-9, maxiter=5000)

    def metrics(self, x, y):
        from bilevel.recipes.hyper_cleaning import accuracy, detection_auc

        d = self.data
        with torch.no_grad():
            W, _ = self.solver.run(y.detach().clone(), x.detach(), d["X_train"], d["y_train_noisy"])
        return {
            "val_loss": float(F.cross_entropy(d["X_val"] @ W, d["y_val"])),
            "test_acc": accuracy(W, d["X_test"], d["y_test"]),
            "auc": detection_auc(torch.sigmoid(x), d["corrupted"]),
        }


SETUPS: dict[str, Callable[[], Setup]] = {
    "quadratic": QuadraticSetup,
    "hpo": HPOSetup,
    "cleaning": CleaningSetup,
}


# --------------------------------------------------------------------------------------------
# step sizes
# --------------------------------------------------------------------------------------------
def step_sizes(setup: Setup, method: str) -> dict[str, Any]:
    """Options per method, from the constants of ``setup`` (documented in the README table).

    beta = 1/L_y (inner GD, Neumann step); quadratic: alpha = 1/L_h (outer GD); hpo/cleaning:
    alpha chosen by hand (L_h unknown; stated in the README). Stochastic methods use the
    largest smoothness over components, L_y_max, and a smaller outer step.
    """
    beta = 1.0 / setup.L_y
    if setup.name == "quadratic":
        alpha = 1.0 / setup.L_h
    elif setup.name == "hpo":
        alpha = 1.0
    else:  # cleaning: hypergradient w.r.t. one example's logit is O(1/n)
        alpha = 100.0
    beta_s = 0.5 / setup.L_y_max
    # unrolled/truncated steps: enough that (1 - beta mu)^T ~ e^-3 (T = 3 kappa, 10..50)
    T_long = int(min(50, max(10, math.ceil(3 * setup.L_y / setup.mu))))
    if method == "aid":
        return {
            "inner_steps": 10,
            "inner_step_size": beta,
            "outer_step_size": alpha,
            "linear_solver": "cg",
            "linear_steps": 10,
        }
    if method == "itd":
        return {"inner_steps": T_long, "inner_step_size": beta, "outer_step_size": alpha}
    if method == "stocbio":
        return {
            "inner_steps": 10,
            "inner_step_size": beta_s,
            "outer_step_size": 0.5 * alpha,
            "neumann_steps": T_long,
            "neumann_step_size": 1.0 / setup.L_y_max,
        }
    if method in ("soba", "saba"):
        return {"inner_step_size": beta_s, "outer_step_size": 0.1 * alpha}
    if method == "f2sa":
        return {
            "inner_steps": 10,
            "inner_step_size": beta,
            "outer_step_size": alpha,
            "lambda_init": 1.0,
            "lambda_increment": 1.0,
            "lambda_max": 100.0,
        }
    if method == "penalty":
        return {
            "inner_steps": 100,
            "inner_step_size": beta,
            "outer_step_size": alpha,
            "inner_tol": 1e-3,
            "sigma_init": 1.0,
            "sigma_decay": 0.9,
            "sigma_min": 1e-3,
        }
    if method == "bome":
        return {
            "inner_steps": T_long,
            "inner_step_size": beta,
            "outer_step_size": min(alpha, beta),
            "eta": 0.5,
        }
    if method == "vpbgd":
        gamma = 10.0
        ell = gamma * (setup.L_y + setup.B_norm**2 / setup.mu)  # docstring: ell_gamma
        return {
            "penalty": gamma,
            "step_size": min(alpha, 1.0 / ell),
            "inner_steps": 10,
            "inner_step_size": beta,
        }
    if method == "borep":
        # normalized steps: length eta_t = eta / sqrt(t) whatever the gradient size
        return {
            "outer_step_size": 0.1 * alpha * setup.norm0 if setup.name == "quadratic" else 0.1,
            "inner_step_size": beta_s,
            "linear_step_size": beta_s,
            "decreasing": True,
        }
    raise ValueError(method)


# --------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------
def run_one(
    setup: Setup, method: str, maxiter: int, target: float, time_limit: float, record_every: int
) -> dict[str, Any]:
    options = step_sizes(setup, method)
    stochastic = bool(METHODS[method].stochastic)
    problem = setup.finite_sum if stochastic else setup.full
    row: dict[str, Any] = {
        "method": method,
        "data": f"finite sum ({N_BATCHES} batches)" if stochastic else "full",
        "options": options,
    }
    # tol=-1: never stop on the method's own direction norm (BOME's x-direction is exactly 0
    # when lambda_k = 0 and F does not depend on x); runs stop on maxiter, target or time
    track = setup.name == "quadratic"
    box = {"overhead": 0.0, "hit": None, "best": math.inf, "t0": 0.0}

    def callback(iteration: int, state: Any) -> bool:
        t_in = time.perf_counter()
        elapsed = t_in - box["t0"] - box["overhead"]
        stop = elapsed > time_limit
        box["last"] = (iteration, state.grad_calls, state.hvp_calls)
        if track:
            acc = setup.accuracy(state.x)
            if not math.isfinite(acc) or acc > 1e6:
                stop = True
            box["best"] = min(box["best"], acc) if math.isfinite(acc) else box["best"]
            if acc <= target and box["hit"] is None:
                box["hit"] = {
                    "iteration": iteration,
                    "time": elapsed,
                    "oracle_calls": state.grad_calls + state.hvp_calls,
                    "grad_calls": state.grad_calls,
                    "hvp_calls": state.hvp_calls,
                }
                stop = True
        if elapsed > time_limit:
            box["timeout"] = True
        box["overhead"] += time.perf_counter() - t_in
        return stop

    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # untimed warm-up: one-time costs (first torch.func / autograd calls) would
            # otherwise be charged to whichever method runs first
            solve(problem, setup.x0, setup.y0, method, maxiter=2, tol=-1.0, **options)
            torch.manual_seed(0)
            box["t0"] = time.perf_counter()
            res = solve(
                problem,
                setup.x0,
                setup.y0,
                method,
                maxiter=maxiter,
                tol=-1.0,
                callback=callback,
                record_every=record_every,
                **options,
            )
        wall = time.perf_counter() - box["t0"] - box["overhead"]
    except Exception as exc:  # noqa: BLE001 (a failing method is a result, not a crash)
        row.update(
            status="error",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=3),
        )
        return row
    h = res.history
    last = box.get("last", (0, h["grad_calls"][-1], h["hvp_calls"][-1]))
    status = res.status
    if status == "stopped":
        status = (
            "target"
            if box["hit"] is not None
            else ("time_limit" if box.get("timeout") else "diverged")
        )
    x = res.x
    finite = bool(torch.isfinite(x).all()) and bool(torch.isfinite(res.y).all())
    if not finite:
        status = "diverged"
    row.update(
        status=status,
        message=res.message,
        iterations=res.n_iter,
        time=wall,
        grad_calls=last[1],
        hvp_calls=last[2],
        oracle_calls=last[1] + last[2],
        reached_target=box["hit"],
        history={
            k: h[k] for k in ("iteration", "grad_calls", "hvp_calls", "time", "hypergrad_norm")
        },
    )
    if finite:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["metrics"] = setup.metrics(x, res.y)
        except Exception as exc:  # noqa: BLE001
            row["metrics"] = {}
            row["metrics_error"] = f"{type(exc).__name__}: {exc}"
        if track:
            row["metrics"]["best_rel_hypergrad"] = box["best"]
        m = row["metrics"]
        if any(isinstance(v, float) and not math.isfinite(v) for v in m.values()):
            row["status"] = "diverged"
        if track and m.get("rel_hypergrad", 0) > 1e3:
            row["status"] = "diverged"
    return row


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def table(setup: Setup, rows: list[dict[str, Any]], target: float) -> str:
    if setup.name == "quadratic":
        head = [
            "method",
            "data",
            "status",
            "iters",
            "time s",
            "oracles",
            "final rel",
            "best rel",
            f"to {target:g}: iters",
            "time s",
            "oracles",
        ]
    elif setup.name == "hpo":
        head = [
            "method",
            "data",
            "status",
            "iters",
            "time s",
            "oracles",
            "val loss",
            "val loss (own y)",
            "test acc",
        ]
    else:
        head = [
            "method",
            "data",
            "status",
            "iters",
            "time s",
            "oracles",
            "val loss",
            "test acc",
            "AUC",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] == "error":
            cells = [r["method"], r["data"], "error: " + r["error"][:60]]
            cells += [""] * (len(head) - len(cells))
        else:
            m = r.get("metrics", {})
            cells = [
                r["method"],
                r["data"],
                r["status"],
                _fmt(r["iterations"]),
                _fmt(r["time"], ".2f"),
                _fmt(r["oracle_calls"]),
            ]
            if setup.name == "quadratic":
                hit = r["reached_target"] or {}
                cells += [
                    _fmt(m.get("rel_hypergrad"), ".2e"),
                    _fmt(m.get("best_rel_hypergrad"), ".2e"),
                    _fmt(hit.get("iteration")),
                    _fmt(hit.get("time"), ".2f"),
                    _fmt(hit.get("oracle_calls")),
                ]
            elif setup.name == "hpo":
                cells += [
                    _fmt(m.get("val_loss"), ".4f"),
                    _fmt(m.get("val_loss_own_y"), ".4f"),
                    _fmt(m.get("test_acc"), ".3f"),
                ]
            else:
                cells += [
                    _fmt(m.get("val_loss"), ".4f"),
                    _fmt(m.get("test_acc"), ".3f"),
                    _fmt(m.get("auc"), ".3f"),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_table(setup: Setup, methods: list[str]) -> str:
    lines = [
        (
            f"constants: L_y={setup.L_y:.4g}, L_y_max(batches)={setup.L_y_max:.4g}, "
            f"mu={setup.mu:.4g}, L_h={setup.L_h:.4g}"
        ),
        "| method | options |",
        "|---|---|",
    ]
    for m in methods:
        opts = ", ".join(f"{k}={_fmt(v, '.3g')}" for k, v in step_sizes(setup, m).items())
        lines.append(f"| {m} | {opts} |")
    return "\n".join(lines)


def peers() -> dict[str, str]:
    out = {}
    for label, module, note in (
        (
            "BOAT (boat-torch)",
            "boat_torch",
            "importable, but no adapter (its wheel pins numpy<=1.26 and torchvision)",
        ),
        ("Betty (betty-ml)", "betty", "adapter: betty-cg and betty-neumann on the quadratic"),
    ):
        try:
            importlib.import_module(module)
            out[label] = note
        except Exception as exc:  # noqa: BLE001
            out[label] = f"skipped: not importable ({type(exc).__name__}: {exc})"
    return out


class _TargetReached(Exception):
    pass


def run_betty(
    setup: Setup, hypergradient: str, maxiter: int, target: float, time_limit: float
) -> dict[str, Any]:
    """Betty (``betty-ml``) on the deterministic quadratic, configured like ``aid``: ``T = 10``
    inner SGD steps of size ``1/L_y`` per outer step (warm-started), the implicit hypergradient
    by Betty's ``cg`` (10 iterations, ``cg_alpha = 1``) or ``neumann`` (10 terms,
    ``neumann_alpha = 1/L_y``), and an outer SGD step of size ``1/L_h``. Accuracy and stopping
    are measured exactly as for the library's methods (time spent measuring is excluded).

    Betty 0.1.1's ``cg`` is not conjugate gradients as written (its new search direction is
    built from the *previous* residual, and the residual update ignores ``cg_alpha``), so its
    hypergradient is inexact whatever the iteration count; that is what is measured here.
    """
    import logging

    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    logging.getLogger("betty").setLevel(logging.WARNING)  # one INFO line per validation
    q = setup.q
    inner_steps, solver_steps = 10, 10
    row: dict[str, Any] = {
        "method": f"betty-{hypergradient}",
        "data": "full",
        "options": {
            "inner_steps": inner_steps,
            "inner_step_size": 1.0 / setup.L_y,
            "outer_step_size": 1.0 / setup.L_h,
            f"{hypergradient}_iterations": solver_steps,
        },
    }

    class Vector(torch.nn.Module):
        def __init__(self, init: torch.Tensor) -> None:
            super().__init__()
            self.value = torch.nn.Parameter(init.detach().clone())

        def forward(self) -> torch.Tensor:
            return self.value

    class Level(ImplicitProblem):
        """One level: a vector parameter ``start`` trained by SGD with step ``lr``."""

        start: torch.Tensor
        lr: float

        def configure_train_data_loader(self):
            return [torch.zeros(1)]  # deterministic: one dummy batch

        def configure_module(self):
            return Vector(self.start)

        def configure_optimizer(self):
            return torch.optim.SGD(self.module.parameters(), lr=self.lr)

    class Outer(Level):
        start, lr = setup.x0, 1.0 / setup.L_h

        def training_step(self, batch):
            return q.upper(self.module(), self.inner())

    class Inner(Level):
        start, lr = setup.y0, 1.0 / setup.L_y

        def training_step(self, batch):
            return q.lower(self.outer(), self.module())

    box: dict[str, Any] = {"overhead": 0.0, "hit": None, "best": math.inf, "outer": 0}

    class Measured(Engine):
        @torch.no_grad()
        def validation(self):
            t_in = time.perf_counter()
            box["outer"] += 1
            x = outer.module.value.detach()
            acc = setup.accuracy(x)
            box["best"] = min(box["best"], acc) if math.isfinite(acc) else box["best"]
            elapsed = t_in - box["t0"] - box["overhead"]
            box["overhead"] += time.perf_counter() - t_in
            if acc <= target and box["hit"] is None:
                box["hit"] = {"iteration": box["outer"], "time": elapsed}
                raise _TargetReached
            if not math.isfinite(acc) or acc > 1e6 or elapsed > time_limit:
                box["stop"] = "diverged" if elapsed <= time_limit else "time_limit"
                raise _TargetReached
            return {}

    if hypergradient == "cg":
        inner_config = Config(type="cg", cg_iterations=solver_steps, cg_alpha=1.0)
    else:
        inner_config = Config(
            type="neumann", neumann_iterations=solver_steps, neumann_alpha=1.0 / setup.L_y
        )
    inner_config.unroll_steps = inner_steps
    outer = Outer(name="outer", config=Config(first_order=True, retain_graph=True))
    inner = Inner(name="inner", config=inner_config)
    engine = Measured(
        config=EngineConfig(train_iters=maxiter * inner_steps, valid_step=inner_steps),
        problems=[outer, inner],
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            box["t0"] = time.perf_counter()
            try:
                engine.run()
            except _TargetReached:
                pass
            wall = time.perf_counter() - box["t0"] - box["overhead"]
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        return row
    x = outer.module.value.detach()
    status = "target" if box["hit"] else box.get("stop", "max_iterations")
    # oracle calls per outer step: T inner gradients, 1 upper gradient, 1 gradient with graph
    # and solver_steps + 1 Hessian-vector/cross products
    calls = {"grad_calls": inner_steps + 2, "hvp_calls": solver_steps + 1}
    n_outer = box["hit"]["iteration"] if box["hit"] else box["outer"]
    if box["hit"] is not None:
        box["hit"].update(
            oracle_calls=n_outer * sum(calls.values()),
            grad_calls=n_outer * calls["grad_calls"],
            hvp_calls=n_outer * calls["hvp_calls"],
        )
    row.update(
        status=status,
        iterations=n_outer,
        time=wall,
        grad_calls=n_outer * calls["grad_calls"],
        hvp_calls=n_outer * calls["hvp_calls"],
        oracle_calls=n_outer * sum(calls.values()),
        reached_target=box["hit"],
        metrics=setup.metrics(x, inner.module.value.detach()) | {"best_rel_hypergrad": box["best"]},
    )
    return row


def unique_path(path: str) -> str:
    if not os.path.exists(path):
        return path
    base, ext = os.path.splitext(path)
    return f"{base}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{ext}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    single_problem = [
        m for m, cls in METHODS.items() if m != "bsvrb" and not cls.handles_constraints
    ]
    parser.add_argument(
        "--methods",
        nargs="+",
        default=single_problem,
        choices=single_problem,
        help="(bsvrb needs a multi-block problem and the constrained methods constraints: "
        "they are benchmarked elsewhere)",
    )
    parser.add_argument(
        "--maxiter", type=int, default=None, help="outer iterations (default 5000, --quick 1000)"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=1e-3,
        help="relative accuracy ||grad h(x)|| / ||grad h(x0)|| (quadratic)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds per run (default 12, --quick 3)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/solvers.json")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--no-peers", action="store_true", help="skip Betty")
    args = parser.parse_args(argv)
    maxiter = args.maxiter or (1000 if args.quick else 5000)
    time_limit = args.time_limit or (3.0 if args.quick else 12.0)
    torch.set_num_threads(args.threads)

    peer_notes = peers()
    for k, v in peer_notes.items():
        print(f"peer {k}: {v}")
    results: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "args": vars(args) | {"maxiter": maxiter, "time_limit": time_limit},
        "torch": torch.__version__,
        "bilevel": getattr(bilevel, "__version__", "?"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "peers": peer_notes,
        "problems": {},
    }
    t_all = time.perf_counter()
    warnings.simplefilter("ignore")  # ConvergenceWarnings of the reference L-BFGS solves
    for name in args.problems:
        setup = SETUPS[name]()
        print(f"\n## {name}\n")
        print(step_table(setup, args.methods))
        rows = []
        for method in args.methods:
            row = run_one(
                setup, method, maxiter, args.target, time_limit, record_every=max(1, maxiter // 200)
            )
            print(
                f"  {method}: {row['status']}"
                + (f" ({row.get('error')})" if row["status"] == "error" else ""),
                flush=True,
            )
            rows.append(row)
        if name == "quadratic" and not args.no_peers:
            for hypergradient in ("cg", "neumann"):
                try:
                    importlib.import_module("betty")
                except ImportError:
                    break
                row = run_betty(setup, hypergradient, maxiter, args.target, time_limit)
                print(f"  {row['method']}: {row['status']}", flush=True)
                rows.append(row)
        print()
        print(table(setup, rows, args.target))
        extra = {}
        if name in ("hpo", "cleaning"):
            extra["start"] = setup.metrics(setup.x0, setup.y0)
            print("at x0:", {k: round(v, 4) for k, v in extra["start"].items()})
        results["problems"][name] = {
            "constants": {
                "L_y": setup.L_y,
                "L_y_max": setup.L_y_max,
                "mu": setup.mu,
                "L_h": setup.L_h,
            },
            "rows": rows,
            **extra,
        }
    results["total_time"] = time.perf_counter() - t_all
    path = unique_path(args.json)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    print(f"\ntotal {results['total_time']:.1f} s; wrote {path}")


if __name__ == "__main__":
    main()
