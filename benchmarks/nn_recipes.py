"""The deep-learning recipes of issue 18 over many seeds: reweighting (40% uniform label
noise, per-example weights and Meta-Weight-Net, and a long-tailed variant) and data mixing
(ScaleBiO), at their default settings.

    python benchmarks/nn_recipes.py                 # seeds 0-9
    python benchmarks/nn_recipes.py --quick         # seeds 0-2
    python benchmarks/nn_recipes.py --json out.json --seeds 0 1 2 3

Prints one table per setting (one row per seed, then the min, max and mean) and writes
the raw metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from bilevel.recipes import RECIPES

SETTINGS = {
    "reweighting (example weights, noise 0.4)": ("reweighting", {}),
    "reweighting (Meta-Weight-Net, noise 0.4)": ("reweighting", {"weighting": "network"}),
    "reweighting (long tail 10:1, no noise)": ("reweighting", {"imbalance": 10.0, "noise": 0.0}),
    "data_mixing (ScaleBiO)": ("data_mixing", {}),
}
COLUMNS = {
    "reweighting": [
        "test_accuracy", "baseline_test_accuracy", "clean_test_accuracy",
        "clean_weight_mean", "noisy_weight_mean", "minority_weight_mean",
        "majority_weight_mean", "runtime_s",
    ],
    "data_mixing": [
        "target_source", "target_weight", "val_loss", "uniform_val_loss",
        "target_only_val_loss", "scalebio_model_val_loss", "runtime_s",
    ],
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--quick", action="store_true", help="seeds 0-2")
    parser.add_argument("--only", choices=sorted({r for r, _ in SETTINGS.values()}), default=None)
    parser.add_argument("--json", default=None, help="write the metrics here")
    args = parser.parse_args()
    seeds = [0, 1, 2] if args.quick else args.seeds
    results: dict[str, list[dict]] = {}
    for title, (name, options) in SETTINGS.items():
        if args.only and name != args.only:
            continue
        cols = COLUMNS[name]
        print(f"\n## {title}\n")
        print("| seed | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        rows = []
        for seed in seeds:
            t = time.perf_counter()
            metrics = RECIPES[name](options, seed=seed).metrics()
            metrics["wall_s"] = time.perf_counter() - t
            rows.append(metrics)
            print(f"| {seed} | " + " | ".join(_fmt(metrics[c]) for c in cols) + " |", flush=True)
        for label, agg in (("min", min), ("max", max), ("mean", lambda v: sum(v) / len(v))):
            cells = []
            for c in cols:
                values = [r[c] for r in rows if isinstance(r[c], float) and not math.isnan(r[c])]
                cells.append(_fmt(agg(values)) if values and c != "target_source" else "")
            print(f"| {label} | " + " | ".join(cells) + " |")
        results[title] = rows
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
