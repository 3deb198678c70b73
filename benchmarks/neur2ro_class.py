"""Neur2RO as in the paper: one value model per instance class, evaluated on unseen instances.

For each knapsack correlation type, a :class:`bilevel.robust.neur2ro.Neur2ROValueModel` is
trained once on instances drawn by :func:`bilevel.robust.generate_knapsack` with ``n = 20``
and ``(h, dev, delta)`` sampled from the grid of Arslan and Detienne's published set
(``h in {40, 80}``, ``dev in {0.1, 0.15, 0.2}``, ``delta in {0.1, 0.5, 1}``), then
``bilevel.robust.solve(problem, method="neur2ro", model=...)`` runs on the bundled
published instances of that type (never seen in training). Every returned decision is
evaluated exactly; ``gap`` is its shortfall from the published branch-and-price optimum,
``(published - objective) / published``.

Prints one row per instance and a summary per type (mean/max gap, instances within 1% and
5%, mean solve time), plus data-generation and training times per type; ``--json`` saves
everything (new file only).
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
    for typ in args.types:
        train = sample_knapsack_class(20, typ, args.train_instances, seed=args.seed)
        data = generate_dataset(
            train,
            n_first_stage=args.n_first_stage,
            n_scenarios=args.n_scenarios,
            seed=args.seed,
        )
        model = Neur2ROValueModel(encoder=args.encoder, n_epochs=args.n_epochs, seed=args.seed).fit(
            data
        )
        print(
            f"\n{typ}: {len(data)} samples from {len(train)} generated instances, data "
            f"{data.generation_time:.1f} s, training {model.training_time_:.1f} s, "
            f"validation MAE {model.validation_mae_:.1f}, encoder "
            f"{model.network_.config.encoder}",
            flush=True,
        )
        print(header)
        names = published_knapsack_names(typ)[:: args.every][: args.max_instances]
        gaps, times = [], []
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
            rows.append(row)
            print(
                f"{name:<42} {result.status:<10} {result.objective:>10.6g} {published:>10.6g} "
                f"{gap:>8.4f} {result.time:>7.2f} {result.n_iter:>5}",
                flush=True,
            )
        gaps_arr = np.array(gaps)
        summary = {
            "type": typ,
            "instances": len(names),
            "mean_gap": float(gaps_arr.mean()),
            "max_gap": float(gaps_arr.max()),
            "within_1pct": int((gaps_arr <= 0.01).sum()),
            "within_5pct": int((gaps_arr <= 0.05).sum()),
            "mean_time": float(np.mean(times)),
            "samples": len(data),
            "data_generation_time": data.generation_time,
            "training_time": model.training_time_,
        }
        summaries.append(summary)
    print(
        "\n| type | instances | mean gap | max gap | within 1% | within 5% | mean solve (s) "
        "| samples | data (s) | training (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(
            f"| {s['type']} | {s['instances']} | {s['mean_gap']:.4f} | {s['max_gap']:.4f} | "
            f"{s['within_1pct']} | {s['within_5pct']} | {s['mean_time']:.2f} | {s['samples']} | "
            f"{s['data_generation_time']:.1f} | {s['training_time']:.1f} |"
        )
    if args.json:
        write_json(args.json, args, summaries=summaries, rows=rows)


if __name__ == "__main__":
    main()
