#!/usr/bin/env python
"""Core speed of implicit hypergradients: bilevel against JAXopt under ``jax.jit``.

Both libraries run in ONE process pinned to ONE CPU (``sched_setaffinity``; torch with one
thread, XLA without its multi-threaded Eigen pool), in float64, on the same numbers. Each
figure is the median over ``--rounds`` rounds of the mean time of a batch of calls; within a
round the libraries alternate (the order flips every round), so that a slow period of this
shared machine hits both. Ratios are bilevel / JAXopt of the medians of the same run.

Problem: ridge regression with a per-feature L2 penalty ``lam`` (a vector of size ``d``),
``n = min(2 d, 4000)`` training and ``n // 2`` validation samples::

    w*(lam) = argmin_w  1/(2n) ||X w - y||^2 + 1/2 sum_i lam_i w_i^2,     lam_i = 0.1
    figure  = solve + hypergradient d/dlam 1/(2 n_val) ||X_val w*(lam) - y_val||^2

Sections (``--sections``):

* ``a``: the implicit layer alone, each library's defaults: the inner problem is solved
  exactly by one dense solve, derivatives by ``custom_root(grad_w f)`` with the default
  linear solve (bilevel ``"auto"``; JAXopt ``solve_normal_cg``, tol 1e-5). Also bilevel
  with ``"gmres"`` (its default before issue 19) for the before/after ratio.
* ``b``: ``T = 100`` gradient steps in the inner solver (a Python loop in eager torch, a
  ``fori_loop`` in JAX), CG with ``tol = 1e-10`` in both, plus bilevel's default ``auto``.
* ``vmap``: 64 problems (64 values of ``lam``) through ``torch.vmap(torch.func.grad(.))``
  and ``jax.jit(jax.vmap(jax.grad(.)))``, defaults; throughput in problems per second.
* ``crossover``: bilevel alone, ``root_vjp`` at the exact solution with
  ``auto(dense_max=inf)`` (materialise + Cholesky) against ``auto(dense_max=0)`` (CG), to
  place :data:`bilevel.linalg.DENSE_MAX`.
* ``breakdown``: where bilevel's time goes at ``d = --breakdown-d`` (each piece timed
  alone).

JAXopt's compile time (``jax.jit(...).lower(...).compile()``) is reported separately and
never timed. JSON goes to ``benchmarks/results/core_speed*.json`` (never overwritten).
Run with an interpreter that has jax and jaxopt (``.venv-bench``, see README)::

    .venv-bench/bin/python benchmarks/core_speed.py            # all sections, ~10 min loaded
    .venv-bench/bin/python benchmarks/core_speed.py --quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def setup_process(cpu: int | None) -> None:
    """One CPU, one thread, for every framework in this process (before importing jax)."""
    if cpu is None:
        cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
    import torch

    torch.set_num_threads(1)


def make_data(d: int, seed: int = 0) -> dict[str, Any]:
    n = min(2 * d, 4000)
    n_val = n // 2
    rng = np.random.default_rng([seed, d])
    X = rng.standard_normal((n, d))
    Xv = rng.standard_normal((n_val, d))
    w_true = rng.standard_normal(d) / math.sqrt(d)
    y = X @ w_true + 0.5 * rng.standard_normal(n)
    yv = Xv @ w_true + 0.5 * rng.standard_normal(n_val)
    lam = np.full(d, 0.1)
    lipschitz = 1.01 * float(np.linalg.eigvalsh(X.T @ X / n)[-1]) + 0.1
    return {
        "X": X,
        "y": y,
        "Xv": Xv,
        "yv": yv,
        "lam": lam,
        "n": n,
        "n_val": n_val,
        "step": 1.0 / lipschitz,
        "d": d,
    }


def exact_hypergradient(data: dict[str, Any], lam: np.ndarray | None = None) -> np.ndarray:
    """``-w* . (H^{-1} grad_w val)`` with ``H = X^T X / n + diag(lam)`` (numpy, Cholesky)."""
    X, y, Xv, yv, n, nv = (data[k] for k in ("X", "y", "Xv", "yv", "n", "n_val"))
    lam = data["lam"] if lam is None else lam
    H = X.T @ X / n + np.diag(lam)
    w = np.linalg.solve(H, X.T @ y / n)
    gv = Xv.T @ (Xv @ w - yv) / nv
    return -w * np.linalg.solve(H, gv)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------------------
# The two implementations
# --------------------------------------------------------------------------------------


def torch_hypergradient(data: dict[str, Any], solve: Any, T: int | None) -> Callable[[], Any]:
    """``call() -> gradient`` (numpy) for bilevel; ``T=None``: exact inner solve."""
    import torch

    import bilevel

    X, y, Xv, yv, lam0 = (torch.as_tensor(data[k]) for k in ("X", "y", "Xv", "yv", "lam"))
    n, nv, step, d = data["n"], data["n_val"], data["step"], data["d"]

    def inner(w, lam):
        r = X @ w - y
        return 0.5 * (r @ r) / n + 0.5 * (lam * w * w).sum()

    optimality = torch.func.grad(inner)

    @bilevel.implicit.custom_root(optimality, solve=solve)
    def solver(init, lam):
        if T is None:
            return torch.linalg.solve(X.T @ X / n + torch.diag(lam), X.T @ y / n)
        w = init
        for _ in range(T):
            w = w - step * (X.T @ (X @ w - y) / n + lam * w)
        return w

    init = torch.zeros(d, dtype=torch.float64)

    def outer_of(lam):
        r = Xv @ solver(init, lam) - yv
        return 0.5 * (r @ r) / nv

    def call():
        lam = lam0.clone().requires_grad_(True)
        return torch.autograd.grad(outer_of(lam), lam)[0]

    call.outer_of = outer_of  # type: ignore[attr-defined]
    call.solve_only = lambda: solver(init, lam0)  # type: ignore[attr-defined]
    return call


def jax_hypergradient(
    data: dict[str, Any], solve: Any, T: int | None, batch: np.ndarray | None = None
) -> tuple[Callable[[], Any], float]:
    """``(call, compile seconds)``; ``batch`` (B x d): vmapped over values of lam."""
    import jax
    import jax.numpy as jnp
    from jaxopt import implicit_diff

    X, y, Xv, yv, lam0 = (jnp.asarray(data[k]) for k in ("X", "y", "Xv", "yv", "lam"))
    n, nv, step, d = data["n"], data["n_val"], data["step"], data["d"]

    def inner(w, lam, X, y):
        r = X @ w - y
        return 0.5 * (r @ r) / n + 0.5 * jnp.sum(lam * w * w)

    optimality = jax.grad(inner)
    kwargs = {} if solve is None else {"solve": solve}

    @implicit_diff.custom_root(optimality, **kwargs)
    def solver(init, lam, X, y):
        if T is None:
            return jnp.linalg.solve(X.T @ X / n + jnp.diag(lam), X.T @ y / n)
        return jax.lax.fori_loop(
            0, T, lambda _, w: w - step * ((X @ w - y) @ X / n + lam * w), init
        )

    def outer_of(lam, X, y, Xv, yv):
        r = Xv @ solver(jnp.zeros(d), lam, X, y) - yv
        return 0.5 * (r @ r) / nv

    if batch is None and T is not None:  # the inner solve alone, for the split
        solve_c = jax.jit(solver).lower(jnp.zeros(d), lam0, X, y).compile()
        jax_hypergradient.solve_only = (  # type: ignore[attr-defined]
            lambda: solve_c(jnp.zeros(d), lam0, X, y).block_until_ready()
        )
    fn = jax.grad(outer_of)
    lam_in = lam0
    if batch is not None:
        fn = jax.vmap(fn, in_axes=(0, None, None, None, None))
        lam_in = jnp.asarray(batch)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(lam_in, X, y, Xv, yv).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(lam_in, X, y, Xv, yv).block_until_ready()), compile_s


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def calls_per_batch(fn: Callable[[], Any], target_s: float) -> int:
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(200, int(target_s / one)))


def race(fns: dict[str, Callable[[], Any]], rounds: int, target_s: float) -> dict[str, dict]:
    """Median over rounds of the per-call time of a batch, the libraries alternating."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    sizes = {k: calls_per_batch(fn, target_s) for k, fn in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for _ in range(sizes[k]):
                fns[k]()
            samples[k].append((time.perf_counter() - t0) / sizes[k])
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": v, "calls": sizes[k]}
        for k, v in samples.items()
    }


def fmt(t: float) -> str:
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.0f} µs"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def section_ab(section: str, sizes: list[int], args: argparse.Namespace, out: dict) -> None:
    import torch  # noqa: F401
    from jaxopt import linear_solve

    import bilevel

    T = None if section == "a" else args.inner_iters
    rows = []
    for d in sizes:
        data = make_data(d, args.seed)
        maxiter = max(10 * d, 50)
        if section == "a":
            torch_solves = {
                "bilevel auto (default)": "auto",
                "bilevel gmres (old default)": "gmres",
            }
            jax_solve, jax_name = None, "JAXopt normal_cg (default)"
        else:
            cg = functools.partial(bilevel.linalg.cg, tol=1e-10, maxiter=maxiter)
            torch_solves = {"bilevel cg": cg, "bilevel auto (default)": "auto"}
            jax_solve = functools.partial(
                linear_solve.solve_cg, tol=1e-10, atol=0.0, maxiter=maxiter
            )
            jax_name = "JAXopt cg"
        fns = {k: torch_hypergradient(data, s, T) for k, s in torch_solves.items()}
        jax_call, compile_s = jax_hypergradient(data, jax_solve, T)
        fns[jax_name] = jax_call
        g_jax = np.asarray(jax_call())
        exact = exact_hypergradient(data)
        if T is not None:  # the inner solve alone in each library: the split of the total
            first = next(iter(torch_solves))
            fns[f"{first}: inner solve only"] = fns[first].solve_only
            fns[f"{jax_name}: inner solve only"] = jax_hypergradient.solve_only
        res = race(fns, args.rounds, args.batch_seconds)
        base = res[jax_name]["median_s"]
        for k, r in res.items():
            if k.endswith("inner solve only"):
                r.update(ratio=r["median_s"] / res[f"{jax_name}: inner solve only"]["median_s"])
                rows.append([str(d), k, fmt(r["median_s"]), f"{r['ratio']:.2f}", "–", "–", "–"])
                continue
            g = np.asarray(fns[k]()) if k != jax_name else g_jax
            r.update(
                ratio=r["median_s"] / base,
                err_vs_jax=rel(g, g_jax),
                err_vs_exact=rel(g, exact) if T is None else None,
            )
            rows.append(
                [
                    str(d),
                    k,
                    fmt(r["median_s"]),
                    f"{r['ratio']:.2f}",
                    f"{r['err_vs_jax']:.1e}",
                    "–" if r["err_vs_exact"] is None else f"{r['err_vs_exact']:.1e}",
                    f"{compile_s:.2f} s" if k == jax_name else "–",
                ]
            )
        out.setdefault(section, {})[str(d)] = {**res, "jax_compile_s": compile_s}
        print(f"  [{section}] d={d} done", file=sys.stderr)
    title = (
        "(a) implicit layer alone, defaults"
        if section == "a"
        else f"(b) T = {args.inner_iters} inner GD steps, CG tol 1e-10 in both"
    )
    print_table(
        title,
        [
            "d",
            "method",
            "solve + hypergradient (median)",
            "/ JAXopt",
            "err vs JAXopt",
            "err vs exact",
            "JAXopt compile",
        ],
        rows,
    )


def section_vmap(args: argparse.Namespace, out: dict) -> None:
    import torch

    rows = []

    def one_size(d: int) -> None:  # one size (closures bind this call's locals)
        data = make_data(d, args.seed)
        rng = np.random.default_rng([args.seed, d, 64])
        lams = 0.1 + 0.1 * rng.random((args.batch, d))
        outer_of = torch_hypergradient(data, "auto", None).outer_of
        lams_t = torch.as_tensor(lams)
        per_problem = torch.vmap(torch.func.grad(outer_of))

        def torch_batch():
            return per_problem(lams_t)

        jax_call, compile_s = jax_hypergradient(data, None, None, batch=lams)
        g_t, g_j = torch_batch().numpy(), np.asarray(jax_call())
        exact = np.stack([exact_hypergradient(data, lam) for lam in lams])
        res = race(
            {"bilevel vmap (auto)": torch_batch, "JAXopt jit(vmap)": jax_call},
            args.rounds,
            args.batch_seconds,
        )
        base = res["JAXopt jit(vmap)"]["median_s"]
        for k, g in (("bilevel vmap (auto)", g_t), ("JAXopt jit(vmap)", g_j)):
            r = res[k]
            r.update(
                ratio=r["median_s"] / base,
                err_vs_exact=rel(g, exact),
                problems_per_s=args.batch / r["median_s"],
            )
            rows.append(
                [
                    str(d),
                    str(args.batch),
                    k,
                    fmt(r["median_s"]),
                    f"{r['problems_per_s']:.0f}",
                    f"{r['ratio']:.2f}",
                    f"{r['err_vs_exact']:.1e}",
                    f"{compile_s:.2f} s" if k.startswith("JAX") else "–",
                ]
            )
        out.setdefault("vmap", {})[str(d)] = {**res, "jax_compile_s": compile_s}
        print(f"  [vmap] d={d} done", file=sys.stderr)

    for d in args.vmap_sizes:
        one_size(d)

    print_table(
        f"vmap over {args.batch} problems (exact inner solve, defaults)",
        [
            "d",
            "batch",
            "method",
            "time per batch (median)",
            "problems / s",
            "/ JAXopt",
            "err vs exact",
        ],
        [r[:7] for r in rows],
    )


def section_crossover(args: argparse.Namespace, out: dict) -> None:
    import torch

    import bilevel

    rows = []

    def one_size(d: int) -> None:  # one size (closures bind this call's locals)
        data = make_data(d, args.seed)
        X, y, lam = (torch.as_tensor(data[k]) for k in ("X", "y", "lam"))
        n = data["n"]

        def F(w, lam):
            return X.T @ (X @ w - y) / n + lam * w

        sol = torch.linalg.solve(X.T @ X / n + torch.diag(lam), X.T @ y / n)
        v = torch.as_tensor(np.random.default_rng(d).standard_normal(d))
        dense = functools.partial(bilevel.linalg.auto, dense_max=10**9)
        krylov = functools.partial(bilevel.linalg.auto, dense_max=0)
        fns = {
            "dense": lambda: bilevel.implicit.root_vjp(F, sol, (lam,), v, dense),
            "cg": lambda: bilevel.implicit.root_vjp(F, sol, (lam,), v, krylov),
        }
        res = race(fns, args.rounds, args.batch_seconds)
        ratio = res["dense"]["median_s"] / res["cg"]["median_s"]
        _, vjp_fn = torch.func.vjp(lambda s: F(s, lam), sol)
        iters = krylov(lambda u: vjp_fn(u)[0], v)[1].iterations
        rows.append(
            [
                str(d),
                fmt(res["dense"]["median_s"]),
                fmt(res["cg"]["median_s"]),
                str(iters),
                f"{ratio:.2f}",
            ]
        )
        out.setdefault("crossover", {})[str(d)] = {
            **res,
            "dense_over_cg": ratio,
            "cg_iterations": iters,
        }
        print(f"  [crossover] d={d} done", file=sys.stderr)

    for d in args.crossover_sizes:
        one_size(d)

    print_table(
        "crossover: root_vjp, materialise + Cholesky vs CG (tol 1e-10)",
        ["n", "dense", "CG", "CG iterations", "dense / CG"],
        rows,
    )


def section_breakdown(args: argparse.Namespace, out: dict) -> None:
    """Each piece of bilevel's (a) pipeline at one size, timed alone."""
    import torch

    import bilevel

    d = args.breakdown_d
    data = make_data(d, args.seed)
    X, y, lam = (torch.as_tensor(data[k]) for k in ("X", "y", "lam"))
    n = data["n"]

    def inner(w, lam):
        r = X @ w - y
        return 0.5 * (r @ r) / n + 0.5 * (lam * w * w).sum()

    F = torch.func.grad(inner)
    sol = torch.linalg.solve(X.T @ X / n + torch.diag(lam), X.T @ y / n)
    u = torch.ones(d, dtype=torch.float64)
    _, vjp_fn = torch.func.vjp(lambda s: F(s, lam), sol)
    eye = torch.eye(d, dtype=torch.float64)
    H = X.T @ X / n + torch.diag(lam)
    call = torch_hypergradient(data, "auto", None)
    pieces = {
        "whole (a) pipeline, auto": call,
        "inner solve alone (torch.linalg.solve)": lambda: torch.linalg.solve(
            X.T @ X / n + torch.diag(lam), X.T @ y / n
        ),
        "analytic gradient": lambda: X.T @ (X @ sol - y) / n + lam * sol,
        "F = torch.func.grad(f) evaluation": lambda: F(sol, lam),
        "torch.func.vjp(F) trace (linearise)": lambda: torch.func.vjp(lambda s: F(s, lam), sol),
        "one product A^T u (vjp_fn)": lambda: vjp_fn(u),
        "materialise A (vmap(vjp_fn) on I)": lambda: torch.vmap(vjp_fn)(eye),
        "Cholesky factor + solve": lambda: torch.cholesky_solve(
            u.unsqueeze(1), torch.linalg.cholesky_ex(H)[0]
        ),
        "root_vjp (auto), total": lambda: bilevel.implicit.root_vjp(F, sol, (lam,), u),
        "root_vjp (gmres), total": lambda: bilevel.implicit.root_vjp(F, sol, (lam,), u, "gmres"),
        "float() host sync": lambda: float(u[0]),
    }
    res = race(pieces, args.rounds, args.batch_seconds)
    base = res["whole (a) pipeline, auto"]["median_s"]
    rows = [[k, fmt(r["median_s"]), f"{r['median_s'] / base:.2f}"] for k, r in res.items()]
    out["breakdown"] = {"d": d, **res}
    print_table(
        f"breakdown of bilevel at d = {d} (each piece alone)", ["piece", "median", "/ whole"], rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sections",
        nargs="+",
        default=["a", "b", "vmap", "crossover", "breakdown"],
        choices=["a", "b", "vmap", "crossover", "breakdown"],
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 1000])
    p.add_argument("--inner-iters", type=int, default=100)
    p.add_argument("--vmap-sizes", nargs="+", type=int, default=[10, 100])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--crossover-sizes", nargs="+", type=int, default=[50, 100, 200, 300, 500])
    p.add_argument("--breakdown-d", type=int, default=100)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--batch-seconds", type=float, default=0.2, help="seconds per timed batch")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 rounds, short batches")
    p.add_argument("--json", type=Path, default=HERE / "results" / "core_speed.json")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.batch_seconds = 3, 0.05
    setup_process(args.cpu)
    import jax

    jax.config.update("jax_enable_x64", True)
    from importlib.metadata import version

    import torch

    started = _dt.datetime.now(_dt.UTC)
    out: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "jax": jax.__version__,
            "jaxopt": version("jaxopt"),
            "python": platform.python_version(),
        },
        "cpu": sorted(os.sched_getaffinity(0)),
        "load_before": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(
        f"bilevel vs JAXopt, float64, one pinned CPU {out['cpu']}, torch {torch.__version__},"
        f" jax {jax.__version__}, jaxopt {out['versions']['jaxopt']}; load {out['load_before']}"
    )
    for section in args.sections:
        if section in ("a", "b"):
            section_ab(section, args.sizes, args, out)
        elif section == "vmap":
            section_vmap(args, out)
        elif section == "crossover":
            section_crossover(args, out)
        else:
            section_breakdown(args, out)
    out["load_after"] = os.getloadavg()
    out["wall_s"] = (_dt.datetime.now(_dt.UTC) - started).total_seconds()
    path = args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path = path.with_name(f"{path.stem}-{started:%Y%m%d-%H%M%S}{path.suffix}")
    path.write_text(json.dumps(out, indent=1))
    print(
        f"\nload {out['load_before']} -> {out['load_after']}; wall {out['wall_s']:.0f} s; "
        f"JSON: {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
