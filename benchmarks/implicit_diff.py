#!/usr/bin/env python
"""Benchmark implicit vs unrolled hypergradients, side by side with JAXopt and TorchOpt.

Problem: tune a per-feature L2 regularisation ``lam`` (a vector of size ``d``) of an inner
problem (ridge regression or L2-regularised logistic regression) on a validation loss::

    w_T(lam)   = T steps of gradient descent (step 1/L, from w = 0) on
                 f(w, lam) = training loss(w) + 1/2 sum_i lam_i w_i^2
    hypergrad  = d/dlam  validation_loss(w_T(lam))

Methods (each row of the table):

* ``bilevel-implicit``   the T-step solver decorated with ``bilevel.implicit.custom_root``
  (optimality condition ``grad_w f = 0`` by ``torch.func.grad``, CG linear solve);
* ``bilevel-unrolled``   the same T steps tracked by autograd, backpropagated through;
* ``jaxopt-implicit``    ``jaxopt.implicit_diff.custom_root``, same problem in JAX, jitted
  (compile time excluded), CG (``jaxopt.linear_solve.solve_cg``);
* ``torchopt-implicit``  ``torchopt.diff.implicit.custom_root``, CG
  (``torchopt.linear_solve.solve_cg``).

Peers that cannot be imported are skipped with a note. Sizes: ``n_train = min(2 d, 4000)``,
``n_val = n_train // 2``. Each method lives in its own worker subprocess; for every
configuration the parent runs one untimed memory run per method, then the timed runs
round-robin across methods, so that all methods see the same machine state. By default every
worker is single-threaded and pinned to one CPU (``--threads 1``). Peak memory is the growth
of the worker's resident set (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` after ``malloc_trim``) during one solve + hypergradient.
See ``benchmarks/README.md``.

    python benchmarks/implicit_diff.py --quick      # smoke run, about a minute
    python benchmarks/implicit_diff.py              # default grid, about 12 minutes

Use the interpreter of a venv where jax/jaxopt/torchopt are installed to include the peers.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "implicit_diff.json"

METHODS = ("bilevel-implicit", "bilevel-unrolled", "torchopt-implicit", "jaxopt-implicit")
REFERENCE = "bilevel-implicit"
PEER_MODULES = {"jaxopt-implicit": ("jax", "jaxopt"), "torchopt-implicit": ("torchopt",)}

N_CAP = 4000
LAM0 = 0.1  # initial value of every per-feature regularisation strength


def n_samples(d: int) -> tuple[int, int]:
    """``(n_train, n_val)`` for ``d`` features."""
    n = min(2 * d, N_CAP)
    return n, max(n // 2, 1)


# --------------------------------------------------------------------------------------
# Data (numpy, deterministic: every subprocess and framework sees the same numbers)
# --------------------------------------------------------------------------------------


def make_data(problem: str, d: int, seed: int = 0) -> dict[str, Any]:
    n, n_val = n_samples(d)
    rng = np.random.default_rng([seed, d, 0 if problem == "ridge" else 1])
    X = rng.standard_normal((n, d))
    Xv = rng.standard_normal((n_val, d))
    w_true = rng.standard_normal(d) / math.sqrt(d)
    if problem == "ridge":
        y = X @ w_true + 0.5 * rng.standard_normal(n)
        yv = Xv @ w_true + 0.5 * rng.standard_normal(n_val)
        curvature = 1.0
    elif problem == "logistic":
        y = np.sign(X @ w_true + 0.3 * rng.standard_normal(n))
        yv = np.sign(Xv @ w_true + 0.3 * rng.standard_normal(n_val))
        y[y == 0] = 1.0
        yv[yv == 0] = 1.0
        curvature = 0.25  # sup of the second derivative of log(1 + exp(-m))
    else:
        raise ValueError(f"unknown problem {problem!r}")
    # Lipschitz constant of grad_w f: lambda_max(X^T X / n) * curvature + max(lam), the
    # former by power iteration (deterministic start), with a 1% safety margin.
    v = np.ones(d) / math.sqrt(d)
    lam_max = 0.0
    for _ in range(100):
        u = X.T @ (X @ v) / n
        lam_max = float(np.linalg.norm(u))
        v = u / lam_max
    lipschitz = 1.01 * lam_max * curvature + LAM0
    return {
        "X": X,
        "y": y,
        "Xv": Xv,
        "yv": yv,
        "lam0": np.full(d, LAM0),
        "step": 1.0 / lipschitz,
        "n": n,
        "n_val": n_val,
    }


# --------------------------------------------------------------------------------------
# Memory: growth of the resident set (Linux)
# --------------------------------------------------------------------------------------


class RssMeter:
    """Peak resident-set growth of this process over a code region.

    ``start()`` releases free heap memory to the OS (``malloc_trim``), records the current
    RSS and resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``);
    ``peak()`` returns ``VmHWM - RSS at start`` in bytes.
    """

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/self/clear_refs")
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self._base = 0
        if self.available:
            try:
                self._reset()
            except OSError:
                self.available = False

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def start(self) -> None:
        if not self.available:
            return
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self._base = self._status("VmRSS")
        self._reset()

    def mark(self) -> tuple[int, int] | None:
        """``(peak growth so far, current growth)`` in bytes; resets the high-water mark."""
        if not self.available:
            return None
        peak = self._status("VmHWM") - self._base
        current = self._status("VmRSS") - self._base
        self._reset()
        return max(peak, 0), current

    def peak(self) -> int | None:
        """Peak growth over the RSS at ``start()`` since the last reset, in bytes."""
        if not self.available:
            return None
        return max(self._status("VmHWM") - self._base, 0)


# --------------------------------------------------------------------------------------
# Worker side: one subprocess per method
# --------------------------------------------------------------------------------------


def _stats(xs: list[float]) -> dict[str, Any]:
    arr = np.asarray(xs, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "min": float(arr.min()),
        "samples": [float(x) for x in arr],
    }


def _time_call(fn, min_time: float = 0.2, batches: int = 5) -> float:
    """Seconds per call of ``fn()`` (which must block until its result is ready): the
    smallest mean over ``batches`` batches of at least ``min_time / batches`` seconds each
    (the minimum filters out interruptions by other processes)."""
    fn()
    best = math.inf
    for _ in range(batches):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if (calls >= 2 and elapsed >= min_time / batches) or calls >= 1000:
                break
        best = min(best, elapsed / calls)
    return best


class TorchProblem:
    """The inner/outer objectives in torch (analytic gradient for the inner GD loop)."""

    def __init__(self, problem: str, data: dict[str, Any], dtype: Any) -> None:
        import torch

        self.torch = torch
        self.problem = problem
        to = functools.partial(torch.as_tensor, dtype=dtype)
        self.X, self.y = to(data["X"]), to(data["y"])
        self.Xv, self.yv = to(data["Xv"]), to(data["yv"])
        self.lam0 = to(data["lam0"])
        self.step = float(data["step"])
        self.n, self.n_val = data["n"], data["n_val"]
        self.d = self.X.shape[1]
        self.zero = torch.zeros((), dtype=dtype)

    def inner_obj(self, w, lam):
        X, y = self.X, self.y
        if self.problem == "ridge":
            r = X @ w - y
            loss = 0.5 * (r @ r) / self.n
        else:
            loss = self.torch.logaddexp(self.zero, -y * (X @ w)).mean()
        return loss + 0.5 * (lam * w * w).sum()

    def inner_grad(self, w, lam):
        X, y = self.X, self.y
        if self.problem == "ridge":
            g = X.T @ (X @ w - y)
        else:
            g = X.T @ (-y * self.torch.sigmoid(-y * (X @ w)))
        return g / self.n + lam * w

    def outer(self, w):
        if self.problem == "ridge":
            r = self.Xv @ w - self.yv
            return 0.5 * (r @ r) / self.n_val
        return self.torch.logaddexp(self.zero, -self.yv * (self.Xv @ w)).mean()

    def gd(self, init, lam, T: int):
        w = init
        for _ in range(T):
            w = w - self.step * self.inner_grad(w, lam)
        return w


def _torch_runner(method: str, tp: TorchProblem, T: int, tol: float, maxiter: int, log: dict):
    """Return ``run(mid) -> (w, hypergrad, solve_s, hyper_s)``; ``mid()`` runs untimed
    between the inner solve and the hypergradient."""
    torch = tp.torch
    optimality_grad = torch.func.grad(tp.inner_obj)

    def optimality(w, lam):  # explicit signature (TorchOpt inspects it)
        return optimality_grad(w, lam)

    if method == "bilevel-implicit":
        import bilevel

        def solve(matvec, b):
            x, info = bilevel.linalg.cg(matvec, b, tol=tol, maxiter=maxiter)
            log.setdefault("cg_iterations", []).append(info.iterations)
            log.setdefault("cg_converged", []).append(bool(info.converged))
            return x, info

        @bilevel.implicit.custom_root(optimality, solve=solve)
        def inner_solver(init, lam):
            return tp.gd(init, lam, T)

    elif method == "torchopt-implicit":
        import torchopt

        solve = torchopt.linear_solve.solve_cg(rtol=tol, atol=0.0, maxiter=maxiter)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def inner_solver(init, lam):
            return tp.gd(init, lam, T)

    elif method == "bilevel-unrolled":

        def inner_solver(init, lam):
            return tp.gd(init, lam, T)

    else:
        raise ValueError(method)

    init = torch.zeros(tp.d, dtype=tp.X.dtype)

    def run(mid=None):
        lam = tp.lam0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        w = inner_solver(init, lam)
        t1 = time.perf_counter()
        if mid is not None:
            mid()
        t1b = time.perf_counter()
        loss = tp.outer(w)
        (g,) = torch.autograd.grad(loss, lam)
        t2 = time.perf_counter()
        return w.detach().numpy(), g.numpy(), t1 - t0, t2 - t1b

    def grad_eval():
        with torch.no_grad():
            tp.inner_grad(init, tp.lam0)

    def optimality_eval():
        optimality(init, tp.lam0)

    return run, grad_eval, optimality_eval


def _jax_runner(
    problem: str,
    data: dict[str, Any],
    T: int,
    tol: float,
    maxiter: int,
    dtype: str,
    cache: dict[str, Any],
):
    """``cache`` keeps the arrays and the T-independent compiled programs of one
    (problem, d) across values of T (the worker clears it when the data change)."""
    import jax
    import jax.numpy as jnp
    from jaxopt import implicit_diff, linear_solve

    jdtype = jnp.float64 if dtype == "float64" else jnp.float32
    if "arrays" not in cache:
        cache["arrays"] = tuple(
            jnp.asarray(np.asarray(data[k]), dtype=jdtype) for k in ("X", "y", "Xv", "yv", "lam0")
        )
    X, y, Xv, yv, lam0 = cache["arrays"]
    step = float(data["step"])
    n, n_val = data["n"], data["n_val"]
    d = X.shape[1]

    def inner_obj(w, lam, X, y):
        if problem == "ridge":
            r = X @ w - y
            loss = 0.5 * (r @ r) / n
        else:
            loss = jnp.logaddexp(0.0, -y * (X @ w)).mean()
        return loss + 0.5 * (lam * w * w).sum()

    def inner_grad(w, lam, X, y):
        if problem == "ridge":
            g = (X @ w - y) @ X  # not X.T @ r: XLA:CPU would copy the transpose of X
        else:
            g = (-y * jax.nn.sigmoid(-y * (X @ w))) @ X
        return g / n + lam * w

    def outer(w, Xv, yv):
        if problem == "ridge":
            r = Xv @ w - yv
            return 0.5 * (r @ r) / n_val
        return jnp.logaddexp(0.0, -yv * (Xv @ w)).mean()

    optimality = jax.grad(inner_obj)
    solve = functools.partial(linear_solve.solve_cg, tol=tol, atol=0.0, maxiter=maxiter)

    @implicit_diff.custom_root(optimality, solve=solve)
    def inner_solver(init, lam, X, y):
        return jax.lax.fori_loop(0, T, lambda _, w: w - step * inner_grad(w, lam, X, y), init)

    def hypergrad(w, lam, X, y, Xv, yv):
        v = jax.grad(outer)(w, Xv, yv)
        return implicit_diff.root_vjp(optimality, w, (lam, X, y), v, solve=solve)[0]

    def end_to_end(lam, init, X, y, Xv, yv):
        return outer(inner_solver(init, lam, X, y), Xv, yv)

    init = jnp.zeros(d, dtype=jdtype)
    solve_c = jax.jit(inner_solver).lower(init, lam0, X, y).compile()
    if "hyper" not in cache:  # these do not depend on T
        cache["hyper"] = jax.jit(hypergrad).lower(init, lam0, X, y, Xv, yv).compile()
        cache["grad"] = jax.jit(inner_grad).lower(init, lam0, X, y).compile()
        cache["opt"] = jax.jit(optimality).lower(init, lam0, X, y).compile()
    hyper_c, grad_c, opt_c = cache["hyper"], cache["grad"], cache["opt"]
    e2e_compiled: list[Any] = []

    def run(mid=None):
        t0 = time.perf_counter()
        w = solve_c(init, lam0, X, y).block_until_ready()
        t1 = time.perf_counter()
        if mid is not None:
            mid()
        t1b = time.perf_counter()
        g = hyper_c(w, lam0, X, y, Xv, yv).block_until_ready()
        t2 = time.perf_counter()
        return np.asarray(w), np.asarray(g), t1 - t0, t2 - t1b

    def grad_eval():
        grad_c(init, lam0, X, y).block_until_ready()

    def optimality_eval():
        opt_c(init, lam0, X, y).block_until_ready()

    def e2e():
        if not e2e_compiled:
            e2e_compiled.append(
                jax.jit(jax.grad(end_to_end)).lower(lam0, init, X, y, Xv, yv).compile()
            )
        t0 = time.perf_counter()
        g = e2e_compiled[0](lam0, init, X, y, Xv, yv).block_until_ready()
        return np.asarray(g), time.perf_counter() - t0

    return run, grad_eval, optimality_eval, e2e


def _unrolled_estimate(spec: dict, d: int, T: int, grad_s: float, itemsize: int) -> str | None:
    """A reason to skip an unrolled run, or None."""
    n, _ = n_samples(d)
    # the tape keeps O(n + d) values per step (residual/margins, w, products)
    mem_mib = T * (2 * n + 4 * d) * itemsize / 2**20
    secs = 4.0 * T * grad_s * (spec["repeat"] + 1)
    if mem_mib > spec["unrolled_max_mem_mib"]:
        return f"estimated tape {mem_mib:.0f} MiB > --unrolled-max-mem-mib {spec['unrolled_max_mem_mib']}"
    if secs > spec["unrolled_max_seconds"]:
        return (
            f"estimated {secs:.0f} s for {spec['repeat'] + 1} runs "
            f"(~4 x T x grad eval {grad_s * 1e3:.2f} ms) > --unrolled-max-seconds "
            f"{spec['unrolled_max_seconds']:.0f}"
        )
    return None


class Worker:
    """One method's subprocess: a command server driven by the parent over a pipe.

    Commands (one JSON object per line on stdin; one JSON reply per line on the protocol
    stream): ``setup`` (build a configuration, time one gradient evaluation, or answer
    ``skip``), ``memory`` (first, untimed run with the RSS meter), ``time`` (one timed run),
    ``finish`` (correctness artefacts and the row), ``exit``.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.method = spec["method"]
        self.out_dir = Path(spec["out_dir"])
        self.meter = RssMeter()
        self.is_jax = self.method == "jaxopt-implicit"
        self.dtype = spec["dtype"]
        self.itemsize = 8 if self.dtype == "float64" else 4
        self.tol = 1e-10 if self.dtype == "float64" else 1e-5
        self._data_key: tuple[str, int] | None = None
        self._data: dict[str, Any] | None = None
        self.e2e_done: set[tuple[str, int]] = set()
        self._jax_cache: dict[str, Any] = {}
        self.min_time = 0.05 if spec.get("quick") else 0.2
        # record the warnings of each configuration (e.g. a CG ConvergenceWarning)
        self.caught: list[warnings.WarningMessage] = []
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            self.caught.append(warnings.WarningMessage(message, category, filename, lineno))
        )
        if (
            spec["threads"] == 1
            and spec.get("cpu") is not None
            and hasattr(os, "sched_setaffinity")
        ):
            # one core for every framework: XLA:CPU parallelises dots and fusions over its own
            # thread pool whatever XLA_FLAGS say, so the process itself is pinned
            os.sched_setaffinity(0, {spec["cpu"]})
        if self.is_jax:
            if spec["threads"] == 1:  # must be set before jax initialises its CPU backend
                os.environ["XLA_FLAGS"] = (
                    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                    " intra_op_parallelism_threads=1"
                ).strip()
            import jax

            jax.config.update("jax_enable_x64", self.dtype == "float64")
            from importlib.metadata import version

            self.versions = {"jax": jax.__version__, "jaxopt": version("jaxopt")}
        else:
            import torch

            if spec["threads"] > 0:
                torch.set_num_threads(spec["threads"])
            self.torch_dtype = getattr(torch, self.dtype)
            self.versions = {
                "torch": torch.__version__,
                "torch_threads": str(torch.get_num_threads()),
            }
            if self.method == "torchopt-implicit":
                import torchopt

                self.versions["torchopt"] = torchopt.__version__
            elif self.method.startswith("bilevel"):
                import bilevel

                self.versions["bilevel"] = getattr(bilevel, "__version__", "?")
        # warm-up on a tiny problem: lazy initialisation (threads, autograd, functorch, XLA)
        # must not count as time or memory of the first real configuration
        for problem in spec["problems"]:
            run, grad_eval, opt_eval, _ = self._build(problem, make_data(problem, 8, seed=1), 3, {})
            for _ in range(2):
                run()
                grad_eval()
                opt_eval()

    def _build(self, problem: str, data: dict, T: int, log: dict):
        maxiter = max(10 * data["X"].shape[1], 50)
        if self.is_jax:
            if self._jax_cache.get("data") is not data:
                self._jax_cache = {"data": data}
            return _jax_runner(problem, data, T, self.tol, maxiter, self.dtype, self._jax_cache)
        tp = TorchProblem(problem, data, self.torch_dtype)
        return (*_torch_runner(self.method, tp, T, self.tol, maxiter, log), None)

    def _get_data(self, problem: str, d: int) -> dict[str, Any]:
        if self._data_key != (problem, d):
            self._data = None
            self._jax_cache = {}
            gc.collect()
            self._data = make_data(problem, d, seed=self.spec["seed"])
            self._data_key = (problem, d)
        return self._data

    # -- commands -------------------------------------------------------------------

    def setup(self, problem: str, d: int, T: int) -> dict[str, Any]:
        self.cfg = {"problem": problem, "d": d, "T": T}
        self.log: dict[str, Any] = {}
        self.solve_t: list[float] = []
        self.hyper_t: list[float] = []
        self.w = self.g = None
        self.mem: dict[str, Any] = {}
        self.caught.clear()
        data = self._get_data(problem, d)
        self.cfg.update(n_train=data["n"], n_val=data["n_val"])
        self.run = None
        grad_probe = None
        if self.method == "bilevel-unrolled" and (problem, d) in getattr(self, "_grad_cache", {}):
            grad_probe = self._grad_cache[(problem, d)]
            reason = _unrolled_estimate(self.spec, d, T, grad_probe, self.itemsize)
            if reason:
                return {"skip": reason}
        t0 = time.perf_counter()
        self.run, self.grad_eval, self.opt_eval, self.e2e = self._build(problem, data, T, self.log)
        self.build_s = time.perf_counter() - t0
        self.grad_s = [_time_call(self.grad_eval, self.min_time)]
        self.opt_s = _time_call(self.opt_eval, self.min_time)
        self._grad_cache = {**getattr(self, "_grad_cache", {}), (problem, d): self.grad_s[0]}
        if self.method == "bilevel-unrolled":
            reason = _unrolled_estimate(self.spec, d, T, self.grad_s[0], self.itemsize)
            if reason:
                self.run = None
                return {"skip": reason}
        return {"ok": True}

    def memory(self) -> dict[str, Any]:
        mem = self.mem

        def mid() -> None:
            mark = self.meter.mark()
            if mark is not None:
                mem["forward"], mem["retained"] = mark

        self.meter.start()
        w, g, solve_s, hyper_s = self.run(mid)
        mem["total"] = self.meter.peak()
        if mem.get("total") is not None:
            mem["total"] = max(mem["total"], mem["forward"])
        mem["first_run_s"] = {"solve": solve_s, "hypergrad": hyper_s}
        del w, g
        return {"ok": True}

    def time_once(self) -> dict[str, Any]:
        gc.collect()
        self.w, self.g, s, h = self.run()
        self.solve_t.append(s)
        self.hyper_t.append(h)
        return {"solve": s, "hypergrad": h}

    def finish(self) -> dict[str, Any]:
        problem, d, T = self.cfg["problem"], self.cfg["d"], self.cfg["T"]
        self.grad_s.append(_time_call(self.grad_eval, self.min_time))
        extra: dict[str, Any] = {}
        if self.e2e is not None and (problem, d) not in self.e2e_done:
            # jaxopt's custom_root gradient (jax.grad end to end) vs the root_vjp that is timed
            g_e2e, e2e_s = self.e2e()
            scale = float(np.max(np.abs(self.g))) or 1.0
            extra["jax_custom_root_grad_vs_root_vjp"] = float(
                np.max(np.abs(g_e2e - self.g)) / scale
            )
            extra["jax_end_to_end_s"] = e2e_s
            self.e2e_done.add((problem, d))
        stem = f"{self.method}_{problem}_{d}_{T}"
        np.save(self.out_dir / f"{stem}_g.npy", self.g)
        np.save(self.out_dir / f"{stem}_w.npy", self.w)
        total_t = [s + h for s, h in zip(self.solve_t, self.hyper_t)]
        row = {
            **self.cfg,
            "status": "ok",
            "solve_s": _stats(self.solve_t),
            "hypergrad_s": _stats(self.hyper_t),
            "total_s": _stats(total_t),
            "first_run_s": self.mem.get("first_run_s"),
            # min over two measurements, before and after the timed runs
            "grad_eval_s": min(self.grad_s),
            "grad_eval_samples_s": self.grad_s,
            "optimality_fn_eval_s": self.opt_s,
            "build_s": self.build_s,
            # RSS growth over the pre-run RSS: peak during the inner solve, kept after it
            # (e.g. the unrolled tape), peak over solve + hypergradient
            "peak_mem_forward_bytes": self.mem.get("forward"),
            "retained_after_forward_bytes": self.mem.get("retained"),
            "peak_mem_bytes": self.mem.get("total"),
            **self.log,
            **extra,
            "warnings": sorted(
                {
                    f"{c.category.__name__}: {c.message}"[:300]
                    for c in self.caught
                    if not issubclass(c.category, (FutureWarning, DeprecationWarning))
                }
            ),
            "versions": self.versions,
        }
        self.run = self.e2e = None
        self.w = self.g = None
        gc.collect()
        return {"row": row}


def worker_main(spec_path: str) -> int:
    """Serve the parent's commands; replies go to the original stdout, anything printed by
    the libraries goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(Path(spec_path).read_text())

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        w = Worker(spec)
    except Exception as exc:  # noqa: BLE001
        reply(
            {
                "error": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()[-2000:],
            }
        )
        return 1
    reply({"ready": True, "versions": w.versions})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "exit":
                reply({"ok": True})
                break
            if cmd["cmd"] == "setup":
                reply(w.setup(cmd["problem"], cmd["d"], cmd["T"]))
            elif cmd["cmd"] == "memory":
                reply(w.memory())
            elif cmd["cmd"] == "time":
                reply(w.time_once())
            elif cmd["cmd"] == "finish":
                reply(w.finish())
            else:
                reply({"error": f"unknown command {cmd['cmd']!r}"})
        except MemoryError as exc:
            w.run = None
            reply({"error": f"MemoryError: {exc}"})
        except Exception as exc:  # noqa: BLE001 - report, never crash the grid
            w.run = None
            reply(
                {
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-2000:],
                }
            )
        gc.collect()
    return 0


# --------------------------------------------------------------------------------------
# Parent side: orchestration, correctness, table, JSON
# --------------------------------------------------------------------------------------


def _peer_missing(method: str) -> str | None:
    for mod in PEER_MODULES.get(method, ()):
        if importlib.util.find_spec(mod) is None:
            return f"{method}: module {mod!r} is not importable in {sys.executable}; skipped"
    return None


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max relative difference ``max_i |a_i - b_i| / max_i |b_i|``."""
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff


class RidgeClosedForm:
    """Exact hypergradients of the ridge problem (float64, Cholesky of the Hessian)."""

    def __init__(self, data: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        X, y = torch.as_tensor(data["X"]), torch.as_tensor(data["y"])
        self.Xv, self.yv = torch.as_tensor(data["Xv"]), torch.as_tensor(data["yv"])
        self.n_val = data["n_val"]
        n = data["n"]
        lam = torch.as_tensor(data["lam0"])
        H = X.T @ X / n + torch.diag(lam)
        self.chol = torch.linalg.cholesky(H)
        self.w_star = self._solve(X.T @ y / n)
        self.g_star = self.at(self.w_star.numpy())

    def _solve(self, b):
        return self.torch.cholesky_solve(b.unsqueeze(1), self.chol).squeeze(1)

    def at(self, w: np.ndarray) -> np.ndarray:
        """IFT hypergradient at ``w`` with an exact solve: ``-w * H^{-1} grad_outer(w)``."""
        w_t = self.torch.as_tensor(np.asarray(w, dtype=np.float64))
        grad_outer = self.Xv.T @ (self.Xv @ w_t - self.yv) / self.n_val
        return (-w_t * self._solve(grad_outer)).numpy()


def _fmt_t(st: dict | None) -> str:
    if not st:
        return "-"
    m, s = st["mean"], st["std"]
    if m >= 1:
        return f"{m:.2f}±{s:.2f}s"
    if m >= 1e-3:
        return f"{m * 1e3:.1f}±{s * 1e3:.1f}ms"
    return f"{m * 1e6:.0f}±{s * 1e6:.0f}us"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_rev() -> str | None:
    """The commit of the bilevel sources being measured, ``+dirty`` if they have local edits
    (read at start: the workers import bilevel once, when they start)."""
    rev = _git("rev-parse", "--short", "HEAD")
    if rev and _git("status", "--porcelain", "--", "bilevel"):
        rev += "+dirty"
    return rev


def _json_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return path
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
    k = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{stamp}-{k}{path.suffix}")
        k += 1
    return candidate


class WorkerHandle:
    """The parent's end of one method's worker subprocess."""

    def __init__(self, method: str, spec_path: Path, timeout: float) -> None:
        self.method = method
        self.timeout = timeout
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
        # kept open for the worker's lifetime, closed by close()
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_worker", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env=env,
        )
        self.dead: str | None = None

    def _stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            return "\n".join(self.stderr.read().strip().splitlines()[-5:])
        except (OSError, ValueError):
            return ""

    def call(self, cmd: dict[str, Any] | None) -> dict[str, Any]:
        """Send ``cmd`` (None: just read the greeting) and wait for the reply."""
        if self.dead:
            return {"error": self.dead}
        try:
            if cmd is not None:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            if not ready:
                self.proc.kill()
                self.dead = f"no reply within --command-timeout {self.timeout:.0f}s; worker killed"
                return {"error": self.dead}
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            line, self.dead = "", f"worker pipe closed ({exc})"
        if not line:
            self.proc.wait(timeout=30)
            self.dead = (
                f"worker exited with {self.proc.returncode}: {self._stderr_tail()}"
                if not self.dead
                else self.dead
            )
            return {"error": self.dead}
        return json.loads(line)

    def close(self, force: bool = False) -> None:
        if force and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.poll() is None and not self.dead:
            try:
                self.call({"cmd": "exit"})
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                self.proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.stderr.close()


def _measure_config(
    handles: dict[str, WorkerHandle],
    problem: str,
    d: int,
    T: int,
    args: argparse.Namespace,
    notes: list[str],
    loads: dict[str, float],
    machine: dict[str, Any],
) -> list[dict[str, Any]]:
    """One (problem, d, T): set up every method, one memory run each, then ``repeat`` timed
    runs interleaved across methods (round robin, rotating the order), then the rows."""
    base = {"problem": problem, "d": d, "T": T}
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()[0]
    loads[f"{problem}/{d}/{T}"] = load
    t0 = time.perf_counter()
    print(f"[run ] {problem} d={d} T={T} (load average {load:.2f})", flush=True)
    if load > machine["cores"] - 0.5:
        print(
            f"[warn] busy machine: 1-min load {load:.2f} on {machine['cores']} cores (this "
            "benchmark itself adds about 1 per busy thread); other processes slow the timings "
            "down and multi-threaded runs (--threads 0) suffer most"
        )

    def fail(method: str, status: str, note: str) -> None:
        msg = f"{method} {problem} d={d} T={T}: {status}: {note}"
        print(f"[{status[:4]:4}] {msg}")
        notes.append(msg)
        rows.append({**base, "method": method, "status": status, "note": note})

    active = []
    for method, h in handles.items():
        rep = h.call({"cmd": "setup", **base})
        if "skip" in rep:
            fail(method, "skipped", rep["skip"])
        elif "error" in rep:
            fail(method, "error", rep["error"])
        else:
            active.append(method)
    for method in list(active):
        rep = handles[method].call({"cmd": "memory"})
        if "error" in rep:
            fail(method, "error", rep["error"])
            active.remove(method)
    for k in range(args.repeat):
        shift = k % max(len(active), 1)
        for method in active[shift:] + active[:shift]:
            rep = handles[method].call({"cmd": "time"})
            if "error" in rep:
                fail(method, "error", rep["error"])
                active.remove(method)
    for method in active:
        rep = handles[method].call({"cmd": "finish"})
        if "error" in rep:
            fail(method, "error", rep["error"])
        else:
            rows.append({**rep["row"], "method": method})
    hg = "  ".join(
        f"{r['method']}: {_fmt_t(r['hypergrad_s'])}" for r in rows if r.get("status") == "ok"
    )
    print(
        f"[done] {problem} d={d} T={T}: {len(active)} methods in {time.perf_counter() - t0:.1f}s"
        f"  | hypergradient {hg}",
        flush=True,
    )
    return rows


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (documented in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="numbers of features d (inner variable size); n_train = min(2d, 4000) "
        "[default: 100 1000 5000; 50 200 with --quick]",
    )
    p.add_argument(
        "--inner-iters",
        type=int,
        nargs="+",
        default=None,
        help="numbers T of inner gradient-descent steps [default: 10 100 1000; 10 100 with --quick]",
    )
    p.add_argument(
        "--problems", nargs="+", default=["ridge", "logistic"], choices=["ridge", "logistic"]
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed runs per configuration [default: 3; 2 with --quick]",
    )
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"output file (default {DEFAULT_JSON.relative_to(REPO)}; never "
        "overwritten: a timestamp suffix is added if it exists)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sizes 50 200, T 10 100, repeat 2 unless given (about 1 min)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1: every worker single-threaded and pinned to one CPU (--cpu) "
        "(torch.set_num_threads(1); XLA flags + affinity); N > 1: torch.set_num_threads(N), "
        "XLA default; 0: each framework's default (all cores)",
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="with --threads 1, the CPU every worker is pinned to (default: the last CPU this "
        "process may use)",
    )
    p.add_argument(
        "--unrolled-max-seconds",
        type=float,
        default=60.0,
        help="skip an unrolled configuration whose estimated time (all runs) exceeds this",
    )
    p.add_argument(
        "--unrolled-max-mem-mib",
        type=float,
        default=4096.0,
        help="skip an unrolled configuration whose estimated tape exceeds this",
    )
    p.add_argument(
        "--command-timeout",
        type=float,
        default=600.0,
        help="seconds a worker may take for one command (setup, one run, ...) "
        "before it is killed and its method skipped",
    )
    p.add_argument("--_worker", dest="worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [50, 200] if args.quick else [100, 1000, 5000]
    if args.inner_iters is None:
        args.inner_iters = [10, 100] if args.quick else [10, 100, 1000]
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.threads == 1 and args.cpu is None and hasattr(os, "sched_getaffinity"):
        args.cpu = max(os.sched_getaffinity(0))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    started = time.time()
    machine = _machine()
    git_rev = _git_rev()
    print(
        f"bilevel implicit-diff benchmark  |  bilevel {git_rev}  |  {machine['cpu']}  |  "
        f"{machine['cores']} cores  |  "
        f"dtype {args.dtype}  |  threads/framework {args.threads or 'default'}"
        + (f" (pinned to CPU {args.cpu})" if args.threads == 1 and args.cpu is not None else "")
        + f"  |  python {sys.executable}"
    )
    print(
        f"sizes d={args.sizes}  T={args.inner_iters}  problems={args.problems}  repeat={args.repeat}  "
        f"n_train=min(2d, {N_CAP}), n_val=n_train//2, lam0={LAM0}, CG tol="
        f"{'1e-10' if args.dtype == 'float64' else '1e-5'}"
    )
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    loads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bilevel-bench-") as tmp:
        out_dir = Path(tmp)
        handles: dict[str, WorkerHandle] = {}
        for method in args.methods:
            missing = _peer_missing(method)
            if missing:
                print(f"[note] {missing}")
                notes.append(missing)
                continue
            spec = {
                "method": method,
                "out_dir": str(out_dir),
                "problems": args.problems,
                "dtype": args.dtype,
                "seed": args.seed,
                "threads": args.threads,
                "cpu": args.cpu,
                "quick": args.quick,
                "unrolled_max_seconds": args.unrolled_max_seconds,
                "unrolled_max_mem_mib": args.unrolled_max_mem_mib,
                "repeat": args.repeat,
            }
            spec_path = out_dir / f"{method}.spec.json"
            spec_path.write_text(json.dumps(spec))
            handles[method] = WorkerHandle(method, spec_path, args.command_timeout)
        for method, handle in list(handles.items()):  # the workers start in parallel
            ready = handle.call(None)
            if "ready" in ready:
                print(f"[ok  ] {method}: {ready['versions']}")
            else:
                msg = f"{method}: could not start ({ready.get('error')}); skipped"
                print(f"[note] {msg}")
                notes.append(msg)
                handle.close()
                del handles[method]

        def _terminate(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _terminate)
        interrupted = False
        try:
            for problem in args.problems:
                for d in args.sizes:
                    for T in args.inner_iters:
                        rows.extend(
                            _measure_config(handles, problem, d, T, args, notes, loads, machine)
                        )
        except KeyboardInterrupt:
            interrupted = True
            msg = "interrupted: the configurations measured so far are reported"
            print(f"\n[note] {msg}")
            notes.append(msg)
        finally:
            for handle in handles.values():
                handle.close(force=interrupted)

        # ---------------- correctness and ratios ----------------
        def load(method: str, problem: str, d: int, T: int, what: str) -> np.ndarray | None:
            f = out_dir / f"{method}_{problem}_{d}_{T}_{what}.npy"
            return np.load(f) if f.exists() else None

        closed: dict[tuple[str, int], RidgeClosedForm] = {}
        index = {
            (r["method"], r["problem"], r["d"], r["T"]): r for r in rows if r["status"] == "ok"
        }
        for r in rows:
            if r["status"] != "ok":
                continue
            key = (r["problem"], r["d"], r["T"])
            ref = index.get((REFERENCE, *key))
            g = load(r["method"], *key, "g")
            g_ref = load(REFERENCE, *key, "g")
            if g is not None and g_ref is not None:
                r["rel_err_vs_bilevel"] = _rel(g, g_ref)
            if ref is not None:
                r["ratio_hypergrad_vs_bilevel"] = (
                    r["hypergrad_s"]["mean"] / ref["hypergrad_s"]["mean"]
                )
                r["ratio_total_vs_bilevel"] = r["total_s"]["mean"] / ref["total_s"]["mean"]
            r["ratio_hypergrad_vs_grad"] = r["hypergrad_s"]["mean"] / r["grad_eval_s"]
            if r.get("peak_mem_bytes") is not None:
                r["peak_mem_mib"] = r["peak_mem_bytes"] / 2**20
            if r["problem"] == "ridge" and args.dtype in ("float64", "float32"):
                if (r["problem"], r["d"]) not in closed:
                    closed[(r["problem"], r["d"])] = RidgeClosedForm(
                        make_data("ridge", r["d"], seed=args.seed)
                    )
                cf = closed[(r["problem"], r["d"])]
                w = load(r["method"], *key, "w")
                if g is not None:
                    r["rel_err_vs_exact_hypergrad"] = _rel(g, cf.g_star)
                    if w is not None:
                        r["rel_err_vs_closed_form_at_wT"] = _rel(g, cf.at(w))
                    r["inner_rel_err_wT_vs_wstar"] = (
                        float(
                            np.linalg.norm(w - cf.w_star.numpy())
                            / np.linalg.norm(cf.w_star.numpy())
                        )
                        if w is not None
                        else None
                    )

    # ---------------- table ----------------
    header = (
        f"{'problem':8} {'d':>5} {'T':>5} {'method':18} {'inner solve':>15} {'hypergrad':>15} "
        f"{'total':>15} {'hg/bl':>6} {'tot/bl':>6} {'grad eval':>9} {'hg/grad':>8} "
        f"{'peak MiB':>9} {'err vs bl':>9} {'err cf(wT)':>10} {'err exact':>9}"
    )
    print()
    print(header)
    print("-" * len(header))
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (args.problems.index(r["problem"]), r["d"], r["T"], order[r["method"]]))
    for r in rows:
        lead = f"{r['problem']:8} {r['d']:>5} {r['T']:>5} {r['method']:18} "
        if r["status"] != "ok":
            print(lead + f"{r['status']}: {r.get('note', '')}"[:120])
            continue
        ge = r["grad_eval_s"]
        ge_s = f"{ge * 1e3:.3f}ms" if ge < 1 else f"{ge:.2f}s"
        print(
            lead
            + f"{_fmt_t(r['solve_s']):>15} {_fmt_t(r['hypergrad_s']):>15} {_fmt_t(r['total_s']):>15} "
            f"{_fmt(r.get('ratio_hypergrad_vs_bilevel'), '.2f'):>6} {_fmt(r.get('ratio_total_vs_bilevel'), '.2f'):>6} "
            f"{ge_s:>9} {_fmt(r.get('ratio_hypergrad_vs_grad'), '.1f'):>8} "
            f"{_fmt(r.get('peak_mem_mib'), '.1f'):>9} {_fmt(r.get('rel_err_vs_bilevel'), '.1e'):>9} "
            f"{_fmt(r.get('rel_err_vs_closed_form_at_wT'), '.1e'):>10} {_fmt(r.get('rel_err_vs_exact_hypergrad'), '.1e'):>9}"
        )
    print()
    print(
        "hg/bl, tot/bl: hypergradient / total time over bilevel-implicit's; hg/grad: hypergradient "
        "time over one inner gradient evaluation (same framework); peak MiB: resident-set growth "
        "during one solve + hypergradient; err: max_i|g_i - ref_i| / max_i|ref_i| vs bilevel-implicit, "
        "vs the exact IFT hypergradient at the method's own w_T (ridge), vs the exact hypergradient "
        "at the exact inner solution w* (ridge)."
    )

    # ---------------- summary ----------------
    summary: dict[str, Any] = {"peers": [], "memory_vs_T": []}
    print("\nSummary: bilevel-implicit hypergradient time over each peer's (< 1: bilevel faster);")
    print("'per grad' divides each side by its own framework's inner-gradient time first")
    for problem in args.problems:
        for d in args.sizes:
            for T in args.inner_iters:
                bl = index.get((REFERENCE, problem, d, T))
                if bl is None:
                    continue
                parts = []
                for peer in ("jaxopt-implicit", "torchopt-implicit"):
                    r = index.get((peer, problem, d, T))
                    if r is None:
                        continue
                    ratio = bl["hypergrad_s"]["mean"] / r["hypergrad_s"]["mean"]
                    per_grad = bl["ratio_hypergrad_vs_grad"] / r["ratio_hypergrad_vs_grad"]
                    total = bl["total_s"]["mean"] / r["total_s"]["mean"]
                    summary["peers"].append(
                        {
                            "problem": problem,
                            "d": d,
                            "T": T,
                            "peer": peer,
                            "bilevel_over_peer_hypergrad": ratio,
                            "bilevel_over_peer_hypergrad_per_grad": per_grad,
                            "bilevel_over_peer_total": total,
                            "bilevel_hypergrad_le_peer": ratio <= 1.0,
                        }
                    )
                    name = peer.split("-")[0]
                    verdict = "<=" if ratio <= 1.0 else "> "
                    parts.append(
                        f"vs {name}: {ratio:6.2f} ({verdict}; per grad {per_grad:5.2f}; "
                        f"total {total:5.2f})"
                    )
                if parts:
                    print(f"  {problem:8} d={d:<5} T={T:<5} " + "  ".join(parts))
    jax_rows = [x for x in summary["peers"] if x["peer"] == "jaxopt-implicit"]
    if jax_rows:
        held = sum(x["bilevel_hypergrad_le_peer"] for x in jax_rows)
        print(
            f"  'bilevel implicit hypergradient time <= JAXopt's' holds in {held}/{len(jax_rows)} "
            "configurations"
        )
    print("Peak memory (MiB) by T:")
    for m in METHODS:
        for problem in args.problems:
            for d in args.sizes:
                mems = [
                    (T, index[(m, problem, d, T)].get("peak_mem_mib"))
                    for T in args.inner_iters
                    if (m, problem, d, T) in index
                ]
                mems = [(T, v) for T, v in mems if v is not None]
                if len(mems) < 2:
                    continue
                lo, hi = min(v for _, v in mems), max(v for _, v in mems)
                # flat: the spread over T stays within 1 MiB or 25 %
                flat = hi - lo <= max(1.0, 0.25 * hi)
                summary["memory_vs_T"].append(
                    {
                        "method": m,
                        "problem": problem,
                        "d": d,
                        "peak_mem_mib_by_T": dict(mems),
                        "flat": flat,
                    }
                )
                print(
                    f"  {m:18} {problem:8} d={d:<5} "
                    + ", ".join(f"T={T}: {v:.1f}" for T, v in mems)
                    + ("  -> flat" if flat else "  -> grows with T")
                )

    result = {
        "meta": {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine,
            "git_rev": git_rev,
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
            "n_train_rule": f"min(2*d, {N_CAP})",
            "n_val_rule": "n_train // 2",
            "lam0": LAM0,
            "cg_tol": 1e-10 if args.dtype == "float64" else 1e-5,
            "memory_method": "peak of VmHWM - VmRSS before the run (after gc.collect, malloc_trim(0) "
            "and echo 5 > /proc/self/clear_refs), over one solve + hypergradient",
            "wall_s": time.time() - started,
            "load_average_1min_at_config_start": loads,
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "notes": notes,
        "results": rows,
        "summary": summary,
    }
    out = _json_path(args.json if args.json is not None else DEFAULT_JSON)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}  (total wall time {time.time() - started:.0f}s)")
    ok = any(r["method"] == REFERENCE and r["status"] == "ok" for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
