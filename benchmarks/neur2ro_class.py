"""Neur2RO as in the paper: one value model per instance class, evaluated on unseen instances.

For each knapsack correlation type, a :class:`bilevel.robust.neur2ro.Neur2ROValueModel` is
trained once on instances drawn by :func:`bilevel.robust.generate_knapsack` with ``n = 20``
and ``(h, dev, delta)`` sampled from the grid of Arslan and Detienne's published set
(``h in {40, 80}``, ``dev in {0.1, 0.15, 0.2}``, ``delta in {0.1, 0.5, 1}``), then
``bilevel.robust.solve(problem, method="neur2ro", model=...)`` runs on the bundled
published instances of that type (never seen in training). Every returned decision is
evaluated exactly; ``gap`` is its shortfall from the published branch-and-price optimum,
``(published - objective) / published``.

Prints one row per instance and a summary per type (median/mean/max gap, instances within
1% and 5%, mean solve time), plus data-generation and training times per type; ``--json``
saves everything (new file only). ``--jobs`` labels on joblib workers; ``--save-dir`` saves
each class model (with its training settings, ``Neur2ROValueModel.training_info_``) and
reuses a saved one on the next run. ``--exact`` also runs exact CCG on every instance under
the same time limit, cold and warm-started from Neur2RO's decision (``initial_x``; its
reported time adds the Neur2RO solve), and reports which close.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from robust import _limit_threads, write_json  # benchmarks/robust.py (same folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", nargs="+", default=["UN", "WC", "ASC", "SC"])
    parser.add_argument("--train-instances", type=int, default=60)
    parser.add_argument("--n-first-stage", type=int, default=10, help="decisions per instance")
    parser.add_argument("--n-scenarios", type=int, default=10, help="scenarios per decision")
    parser.add_argument("--encoder", default="separate", choices=["auto", "separate", "joint"])
    parser.add_argument("--n-epochs", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=120.0, help="per Neur2RO solve")
    parser.add_argument("--max-instances", type=int, default=None, help="per type")
    parser.add_argument("--every", type=int, default=1, help="every k-th published instance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write rows to this (new) file")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--jobs", type=int, default=1, help="joblib labelling workers")
    parser.add_argument("--save-dir", default=None, help="save / reuse class models here")
    parser.add_argument("--exact", action="store_true", help="also exact CCG, cold and warm")
    parser.add_argument("--h", type=int, default=None, help="only published instances with h")
    args = parser.parse_args()
    if args.quick:
        args.types, args.train_instances, args.max_instances = ["UN"], 5, 2
        args.n_epochs = 20
    _limit_threads()

    from bilevel.errors import ConvergenceWarning
    from bilevel.robust import (
        load_published_knapsack,
        published_knapsack_names,
        published_knapsack_result,
        solve,
    )
    from bilevel.robust.generators import sample_knapsack_class
    from bilevel.robust.neur2ro import Neur2ROValueModel, generate_dataset

    rows, summaries = [], []
    header = (
        f"{'instance':<42} {'status':<10} {'objective':>10} {'published':>10} {'gap':>8} "
        f"{'time':>7} {'iters':>5}"
    )
    from pathlib import Path

    from bilevel.robust import solve_ccg

    for typ in args.types:
        saved = None
        if args.save_dir:
            Path(args.save_dir).mkdir(parents=True, exist_ok=True)
            saved = Path(args.save_dir) / (
                f"kp20_{typ}_{args.train_instances}x{args.n_first_stage}x{args.n_scenarios}"
                f"_e{args.n_epochs}_{args.encoder}_s{args.seed}.pt"
            )
        if saved is not None and saved.exists():
            model = Neur2ROValueModel.load(saved)
            info = model.training_info_
            n_samples, datagen = model.n_samples_, info.get("data_generation_time", float("nan"))
            print(f"\n{typ}: loaded {saved} (trained with {info})", flush=True)
        else:
            train = sample_knapsack_class(20, typ, args.train_instances, seed=args.seed)
            data = generate_dataset(
                train,
                n_first_stage=args.n_first_stage,
                n_scenarios=args.n_scenarios,
                seed=args.seed,
                n_jobs=args.jobs,
            )
            model = Neur2ROValueModel(
                encoder=args.encoder, n_epochs=args.n_epochs, seed=args.seed
            ).fit(data)
            model.training_info_.update(
                problem="knapsack", n=20, type=typ, instances=args.train_instances,
                encoder=args.encoder, epochs=args.n_epochs, command="benchmarks/neur2ro_class.py",
            )  # fmt: skip
            n_samples, datagen = len(data), data.generation_time
            if saved is not None:
                model.save(saved)
            print(
                f"\n{typ}: {len(data)} samples from {len(train)} generated instances, data "
                f"{data.generation_time:.1f} s, training {model.training_time_:.1f} s, "
                f"validation MAE {model.validation_mae_:.1f}, encoder "
                f"{model.network_.config.encoder}",
                flush=True,
            )
        print(header + ("  exact-cold (status/obj/time)   exact-warm" if args.exact else ""))
        names = published_knapsack_names(typ, h=args.h)[:: args.every][: args.max_instances]
        gaps, times = [], []
        exact_rows = []
        for name in names:
            problem = load_published_knapsack(name)
            published = published_knapsack_result(name).objective
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                t0 = time.perf_counter()
                result = solve(problem, method="neur2ro", model=model, time_limit=args.time_limit)
                wall = time.perf_counter() - t0
            gap = (published - result.objective) / abs(published)
            gaps.append(gap)
            times.append(result.time)
            row = {
                "type": typ,
                "instance": name,
                "status": result.status,
                "objective": result.objective,
                "published": published,
                "gap": gap,
                "time": result.time,
                "wall": wall,
                "iters": result.n_iter,
                "termination": result.info.get("termination"),
            }
            extra = ""
            if args.exact:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    cold = solve_ccg(problem, time_limit=args.time_limit)
                    warm = solve_ccg(problem, time_limit=args.time_limit, initial_x=result.x)
                for key, r in (("cold", cold), ("warm", warm)):
                    row[f"exact_{key}_status"] = r.status
                    row[f"exact_{key}_objective"] = r.objective
                    row[f"exact_{key}_gap"] = r.gap
                    row[f"exact_{key}_time"] = r.time
                    row[f"exact_{key}_iters"] = r.n_iter
                row["exact_warm_time_total"] = warm.time + wall
                exact_rows.append(row)
                extra = (
                    f"  {cold.status[:8]} {cold.objective:.6g} {cold.time:.1f}s gap {cold.gap:.2g}"
                    f"  {warm.status[:8]} {warm.objective:.6g} {warm.time + wall:.1f}s "
                    f"gap {warm.gap:.2g}"
                )
            rows.append(row)
            print(
                f"{name:<42} {result.status:<10} {result.objective:>10.6g} {published:>10.6g} "
                f"{gap:>8.4f} {result.time:>7.2f} {result.n_iter:>5}{extra}",
                flush=True,
            )
        gaps_arr = np.array(gaps)
        summary = {
            "type": typ,
            "instances": len(names),
            "median_gap": float(np.median(gaps_arr)),
            "mean_gap": float(gaps_arr.mean()),
            "max_gap": float(gaps_arr.max()),
            "within_1pct": int((gaps_arr <= 0.01).sum()),
            "within_5pct": int((gaps_arr <= 0.05).sum()),
            "mean_time": float(np.mean(times)),
            "samples": n_samples,
            "data_generation_time": datagen,
            "training_time": model.training_time_,
        }
        if exact_rows:
            summary["exact_cold_closed"] = sum(
                r["exact_cold_status"] == "optimal" for r in exact_rows
            )
            summary["exact_warm_closed"] = sum(
                r["exact_warm_status"] == "optimal" for r in exact_rows
            )
            summary["exact_cold_mean_time"] = float(
                np.mean([r["exact_cold_time"] for r in exact_rows])
            )
            summary["exact_warm_mean_time"] = float(
                np.mean([r["exact_warm_time_total"] for r in exact_rows])
            )
        summaries.append(summary)
    print(
        "\n| type | instances | median gap | mean gap | max gap | within 1% | within 5% "
        "| mean solve (s) | samples | data (s) | training (s) | CCG cold closed, mean (s) "
        "| CCG warm closed, mean (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        cold = warm = "-"
        if "exact_cold_closed" in s:
            cold = f"{s['exact_cold_closed']}/{s['instances']}, {s['exact_cold_mean_time']:.1f}"
            warm = f"{s['exact_warm_closed']}/{s['instances']}, {s['exact_warm_mean_time']:.1f}"
        print(
            f"| {s['type']} | {s['instances']} | {s['median_gap']:.4f} | {s['mean_gap']:.4f} | "
            f"{s['max_gap']:.4f} | {s['within_1pct']} | {s['within_5pct']} | "
            f"{s['mean_time']:.2f} | {s['samples']} | {s['data_generation_time']:.1f} | "
            f"{s['training_time']:.1f} | {cold} | {warm} |"
        )
    if args.json:
        write_json(args.json, args, summaries=summaries, rows=rows)


if __name__ == "__main__":
    main()
