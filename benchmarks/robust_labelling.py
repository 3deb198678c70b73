"""Neur2RO labelling on joblib workers: wall time at ``n_jobs = 1`` and ``n_jobs = 2``.

Labelling is a batch of independent exact second-stage MILPs
(:func:`bilevel.robust.neur2ro.generate_dataset`); with ``n_jobs != 1`` the chunks run on
:class:`joblib.Parallel` (loky processes by default). The runs alternate
(1, 2, 1, 2, ...) so that a change in the machine's load hits both; the 1-minute load
average is recorded before each run, and the labels of every run are checked equal.

The same code on a cluster (joblib's backends; nothing else changes)::

    import joblib, ray
    from ray.util.joblib import register_ray
    ray.init(address="auto"); register_ray()
    with joblib.parallel_config(backend="ray"):
        data = generate_dataset(problems, n_first_stage=10, n_scenarios=10, n_jobs=-1)

    # or Dask: from dask.distributed import Client; client = Client("scheduler:8786")
    with joblib.parallel_config(backend="dask"):
        data = generate_dataset(problems, ..., n_jobs=-1)

``bilevel robust train --jobs N`` uses the same path.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from robust import _limit_threads, write_json  # benchmarks/robust.py (same folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="knapsack items")
    parser.add_argument("--type", default="UN")
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--n-first-stage", type=int, default=5)
    parser.add_argument("--n-scenarios", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    _limit_threads()
    from bilevel.robust.generators import sample_knapsack_class
    from bilevel.robust.neur2ro import generate_dataset

    problems = sample_knapsack_class(args.n, args.type, args.instances, seed=0)
    kw = {"n_first_stage": args.n_first_stage, "n_scenarios": args.n_scenarios, "seed": 0}
    runs, labels = [], None
    for rep in range(args.repeats):
        for jobs in (1, 2):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            data = generate_dataset(problems, n_jobs=jobs, **kw)
            wall = time.perf_counter() - t0
            if labels is None:
                labels = data.label
            assert np.array_equal(labels, data.label), "labels differ between runs"
            runs.append(
                {
                    "repeat": rep,
                    "n_jobs": jobs,
                    "wall": wall,
                    "load_before": load,
                    "load_after": os.getloadavg()[0],
                    "samples": len(data) + data.n_infeasible,
                }
            )
            print(
                f"repeat {rep} n_jobs {jobs}: {wall:.2f} s for {runs[-1]['samples']} MILPs "
                f"(load {load:.1f} -> {runs[-1]['load_after']:.1f})",
                flush=True,
            )
    one = [r["wall"] for r in runs if r["n_jobs"] == 1]
    two = [r["wall"] for r in runs if r["n_jobs"] == 2]
    print(
        f"\nspeed-up at 2 workers: {np.median(one) / np.median(two):.2f}x "
        f"(median of {len(one)} runs each: {np.median(one):.2f} s vs {np.median(two):.2f} s; "
        f"per-pair ratios {[round(a / b, 2) for a, b in zip(one, two)]})"
    )
    if args.json:
        write_json(args.json, args, runs=runs)


if __name__ == "__main__":
    main()
