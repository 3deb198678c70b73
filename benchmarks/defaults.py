"""Accuracy of every outer algorithm with its default step sizes (issue 11, item 2).

Problems: ``QuadraticBilevel.random(dim_x=5, dim_y=8, seed=s, lower_condition=3)`` (lower
Hessian eigenvalues in [1, 3]; the curvature of ``h`` ranges from 1 to about 41 over the
seeds), optionally with both objectives multiplied by ``--scales`` (100: every curvature
times 100, same solution). Each method is called as ``bilevel.solve(problem, 0, 0,
method=m)``: no step size, the default budget of 1000 iterations and ``tol = 1e-6``.
BSVRB, multi-block only, runs on ``MultiBlockQuadratic`` problems made of three such
blocks (seeds ``10 s``, ``10 s + 1``, ``10 s + 2``).

Reported per method: the worst and median relative error ``||x - x*|| / ||x*||`` over the
seeds and scales (``x*`` in closed form), the iterations used (worst case), the status, and
the wall time per run. Targets (issue 11): 1e-4 for AID and ITD, 1e-2 for the others.

Usage::

    python benchmarks/defaults.py [--seeds 10] [--scales 1 100] [--methods aid itd ...] [--quick]
                                  [--json benchmarks/results/defaults.json (default)]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

# measure the checkout this script lives in (not an installed copy of the package)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from threadpoolctl import threadpool_limits

import bilevel
from bilevel.errors import ConvergenceWarning
from bilevel.testproblems import MultiBlockQuadratic, QuadraticBilevel

METHODS = ["aid", "itd", "stocbio", "soba", "saba", "f2sa", "penalty", "bome", "vpbgd"]
METHODS += ["borep", "bsvrb"]
TARGET = {"aid": 1e-4, "itd": 1e-4}


def _scaled(q: QuadraticBilevel, scale: float) -> QuadraticBilevel:
    if scale == 1.0:
        return q
    return dataclasses.replace(q, **{k: getattr(q, k) * scale for k in "HJbAKCcd"})


def run_one(method: str, seed: int, scale: float) -> dict:
    if method == "bsvrb":
        blocks = tuple(
            _scaled(QuadraticBilevel.random(5, 8, seed=10 * seed + i, lower_condition=3.0), scale)
            for i in range(3)
        )
        exact = MultiBlockQuadratic(blocks)
        y0 = torch.zeros(3, 8, dtype=torch.float64)
    else:
        exact = _scaled(QuadraticBilevel.random(5, 8, seed=seed, lower_condition=3.0), scale)
        y0 = torch.zeros(8, dtype=torch.float64)
    x_star = exact.x_star()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = bilevel.solve(exact.problem(), torch.zeros(5, dtype=torch.float64), y0, method)
    return {
        "method": method,
        "seed": seed,
        "scale": scale,
        "error": float((result.x - x_star).norm() / x_star.norm()),
        "n_iter": result.n_iter,
        "status": result.status,
        "time": time.perf_counter() - t0,
        "step_sizes": {
            k: v for k, v in result.info.get("step_sizes", {}).items() if isinstance(v, float)
        },
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | target | worst rel. error | median | worst iterations | statuses | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        errors = [r["error"] for r in mine]
        target = TARGET.get(method, 1e-2)
        verdict = "" if max(errors) <= target else " (missed)"
        statuses = ", ".join(sorted({r["status"] for r in mine}))
        lines.append(
            f"| {method} | {target:.0e} | {max(errors):.1e}{verdict} | "
            f"{statistics.median(errors):.1e} | {max(r['n_iter'] for r in mine)} | {statuses} | "
            f"{statistics.mean(r['time'] for r in mine):.1f} |"
        )
    return "\n".join(lines)


def per_seed_table(rows: list[dict]) -> str:
    """One row per method, one column per (seed, scale): the relative error on ``x``."""
    cases = list(dict.fromkeys((r["seed"], r["scale"]) for r in rows))
    head = " | ".join(f"seed {s}" + ("" if c == 1.0 else f" x{c:g}") for s, c in cases)
    lines = [f"| method | target | {head} |", "|---|---|" + "---|" * len(cases)]
    for method in dict.fromkeys(r["method"] for r in rows):
        target = TARGET.get(method, 1e-2)
        found = {(r["seed"], r["scale"]): r["error"] for r in rows if r["method"] == method}
        cells = []
        for case in cases:
            error = found.get(case)
            mark = "" if error is None or error <= target else " (missed)"
            cells.append("-" if error is None else f"{error:.1e}{mark}")
        lines.append(f"| {method} | {target:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 100.0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--quick", action="store_true", help="2 seeds, scale 1 only")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "defaults.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.scales = 2, [1.0]
    torch.set_num_threads(1)
    meta = {
        "bilevel": str(Path(bilevel.__file__).parent),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seeds": args.seeds,
        "scales": args.scales,
    }
    rows = []
    with threadpool_limits(1):
        # seed by seed (all methods), saving as it goes: an interrupted run still covers
        # every method on the first seeds
        for scale in args.scales:
            for seed in range(args.seeds):
                for method in args.methods:
                    row = run_one(method, seed, scale)
                    rows.append(row)
                    print(
                        f"{method:8s} seed {seed} scale {scale:g}: error {row['error']:.2e}, "
                        f"{row['n_iter']} iterations, {row['status']}, {row['time']:.1f} s",
                        flush=True,
                    )
                    if args.json is not None:
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print()
    print("Relative error ||x - x*|| / ||x*|| per method and seed:")
    print(per_seed_table(rows))
    print()
    print(table(rows))
    if args.json is not None:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
