"""Two-stage robust optimization: exact CCG (and Neur2RO when available) per instance class.

Classes (problem, n, type):

* ``knapsack``: Arslan and Detienne's generator (:func:`bilevel.robust.generate_knapsack`),
  correlation types UN, WC, ASC, SC, ``dev`` (Gamma = n dev), ``delta = 0.5``, ``h = 40``;
* ``cb``: capital budgeting (:func:`bilevel.robust.generate_capital_budgeting`);
* ``published``: Arslan and Detienne's published n = 20 knapsack instances bundled with
  bilevel (``--published NAME ...``, :func:`bilevel.robust.load_published_knapsack`), or
  other files of their set read from ``--ad-dir`` (``--ad-instances``); compared with their
  branch-and-price values (bundled, or ``ResultsForBranchAndPrice.csv`` in ``--ad-dir`` /
  ``--ad-results``).

Per run: ``objective`` is the exact worst-case value of the returned first stage (instance's
own sense: profit for both classes), ``ref`` the published branch-and-price value for
published instances, the exact optimum when CCG closed the gap, otherwise the best value known
(the best returned objective, with the CCG bound quoted); ``gap_ref`` = relative shortfall
of ``objective`` from ``ref``; ``cert_gap`` the result's ``gap`` (exact: the certified CCG
gap; neur2ro: the gap to the bound it reports itself, see its docstring); ``time`` in seconds and
``iters`` (CCG masters / Neur2RO iterations). Neur2RO rows go through
``bilevel.robust.solve(problem, method="neur2ro")``; its data-generation and training
times are listed separately (``datagen``, ``train``) and are not included in ``time``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np


def _limit_threads() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def write_json(path: str, args: argparse.Namespace, **payload: Any) -> None:
    """Write ``payload`` with the run's metadata to ``path`` (a new file only)."""
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "args": vars(args),
    }
    with open(path, "x", encoding="utf-8") as fh:
        json.dump({"meta": meta, **payload}, fh, indent=1, default=str)
    print(f"wrote {path}")


def _run(problem, method: str, time_limit: float, neur2ro_options: dict[str, Any]):
    from bilevel.errors import ConvergenceWarning
    from bilevel.robust import solve

    options: dict[str, Any] = {"time_limit": time_limit}
    if method == "neur2ro":
        options.update(neur2ro_options)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            result = solve(problem, method=method, **options)
        except Exception as err:  # noqa: BLE001 - a failing method is a row, not a crash
            return {
                "status": f"error: {type(err).__name__}: {err}"[:120],
                "wall": time.perf_counter() - t0,
            }
    info = result.info
    return {
        "status": result.status,
        "objective": result.objective,
        "lower_bound": result.lower_bound,
        "upper_bound": result.upper_bound,
        "cert_gap": result.gap,
        "time": result.time,
        "wall": time.perf_counter() - t0,
        "iters": result.n_iter,
        "datagen": info.get("data_generation_time"),
        "train": info.get("training_time"),
        "x": None if result.x is None else [float(v) for v in result.x],
    }


def _published_values(path: Path) -> dict[str, float]:
    out = {}
    with path.open(encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            out[row["File name"].strip()] = float(row["Best primal bound"])
    return out


def _instances(args) -> list[tuple[str, int, str, str, Any, float | None]]:
    from bilevel.robust import (
        generate_capital_budgeting,
        generate_knapsack,
        load_published_knapsack,
        published_knapsack_result,
        read_knapsack_instance,
    )

    items = []
    for n in args.knapsack_sizes:
        for typ in args.types:
            for seed in range(args.seeds):
                p = generate_knapsack(n, typ, dev=args.dev, delta=0.5, h=40, seed=seed)
                items.append(("knapsack", n, typ, f"seed{seed}", p, None))
    for n in args.cb_sizes:
        for seed in range(args.seeds):
            p = generate_capital_budgeting(n, seed=seed)
            items.append(("cb", n, "-", f"seed{seed}", p, None))
    for name in args.published:
        p = load_published_knapsack(name)
        typ = name.split("_")[1]
        items.append(("published", p.n_x, typ, name, p, published_knapsack_result(name).objective))
    if args.ad_dir:
        ad = Path(args.ad_dir)
        results = Path(args.ad_results) if args.ad_results else ad / "ResultsForBranchAndPrice.csv"
        published = _published_values(results)
        for name in args.ad_instances:
            p = read_knapsack_instance(ad / name)
            typ = name.split("_")[1]
            items.append(("published", p.n_x, typ, name, p, published.get(name)))
    return items


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=["exact", "neur2ro"], choices=["exact", "neur2ro"]
    )
    parser.add_argument("--knapsack-sizes", nargs="*", type=int, default=[10, 15])
    parser.add_argument("--types", nargs="+", default=["UN", "WC", "ASC", "SC"])
    parser.add_argument("--dev", type=float, default=0.15)
    parser.add_argument("--cb-sizes", nargs="*", type=int, default=[5, 8])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument(
        "--published",
        nargs="*",
        default=[f"RKP_{t}_n20_R1000_H100_h80_dev0.15_d0.5" for t in ("UN", "WC", "ASC", "SC")],
        help="bundled Arslan-Detienne instances (bilevel.robust.published_knapsack_names())",
    )
    parser.add_argument("--ad-dir", default=None, help="folder of other Arslan-Detienne files")
    parser.add_argument("--ad-results", default=None, help="their ResultsForBranchAndPrice.csv")
    parser.add_argument("--ad-instances", nargs="*", default=[])
    parser.add_argument("--neur2ro-options", default="{}", help="JSON dict of solve options")
    parser.add_argument("--json", default=None, help="write all rows to this (new) file")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.knapsack_sizes, args.types, args.cb_sizes = [6], ["UN", "ASC"], [4]
        args.time_limit = min(args.time_limit, 20.0)
        args.ad_instances = args.ad_instances[:1]
        args.published = args.published[:1]
    _limit_threads()
    neur2ro_options = json.loads(args.neur2ro_options)

    rows = []
    header = (
        f"{'problem':<10} {'n':>3} {'type':<4} {'instance':<42} {'method':<8} "
        f"{'status':<11} {'objective':>11} {'ref':>11} {'ref kind':<10} {'gap_ref':>9} "
        f"{'cert_gap':>9} {'time':>7} {'iters':>5} {'datagen':>8} {'train':>7}"
    )
    print(header)
    print("-" * len(header))
    for problem_kind, n, typ, name, problem, published in _instances(args):
        runs = {m: _run(problem, m, args.time_limit, neur2ro_options) for m in args.methods}
        exact = runs.get("exact", {})
        if published is not None:
            ref, ref_kind = published, "published"
        elif exact.get("status") == "optimal":
            ref, ref_kind = exact["objective"], "optimum"
        else:
            objs = [
                r["objective"]
                for r in runs.values()
                if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])
            ]
            sense = problem.sense
            ref = (max(objs) if sense == "max" else min(objs)) if objs else math.nan
            ref_kind = "best known"
        for method, r in runs.items():
            obj = r.get("objective", math.nan)
            if isinstance(obj, float) and math.isfinite(obj) and math.isfinite(ref):
                short = (ref - obj) if problem.sense == "max" else (obj - ref)
                gap_ref = short / max(1.0, abs(ref))
            else:
                gap_ref = math.nan
            row = {
                "problem": problem_kind,
                "n": n,
                "type": typ,
                "instance": name,
                "method": method,
                "ref": ref,
                "ref_kind": ref_kind,
                "gap_ref": gap_ref,
                "published": published,
                **r,
            }
            rows.append(row)
            print(
                f"{problem_kind:<10} {n:>3} {typ:<4} {name[:42]:<42} {method:<8} "
                f"{str(r['status'])[:11]:<11} {_fmt(obj, 8):>11} {_fmt(ref, 8):>11} "
                f"{ref_kind:<10} {_fmt(gap_ref, 3):>9} {_fmt(r.get('cert_gap'), 3):>9} "
                f"{_fmt(r.get('time'), 4):>7} {_fmt(r.get('iters')):>5} "
                f"{_fmt(r.get('datagen'), 3):>8} {_fmt(r.get('train'), 3):>7}",
                flush=True,
            )
    if args.json:
        write_json(args.json, args, rows=rows)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
