"""Self-Tuning Networks vs grid search vs random search, under the same total compute.

For each seed, ``bilevel.recipes.self_tuning.run`` with the recipe's defaults (or ``--size
fast``): an STN tunes weight decay, dropout and input noise of a 64-64-10 MLP on digits
online, from log weight decay +3 (far from the optimum); the grid (``3^3`` points) and the
random search (as many trials) share the STN's budget of optimizer steps, split evenly over
their trials (see the recipe's module docstring). Printed: validation cross-entropy of each
method's best network, its test accuracy, the ratio STN / grid best (the issue's target:
<= 1.03), the STN's final hyperparameters and the wall times. JSON under
``benchmarks/results/``.

``--retrain`` adds a check that does not share the budget: a plain network trained for the
STN's number of weight steps (``warmup_steps + hyper_steps * train_steps``) at the STN's final
hyperparameters, at the grid's best point, at the random search's best point, and with no
regularisation; their validation losses and test accuracies say whether the hyperparameters
the STN found are good in themselves, not only its own weights.

    python benchmarks/self_tuning.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import math  # noqa: E402

from bilevel.recipes._digits import load_digits_split  # noqa: E402
from bilevel.recipes.self_tuning import SelfTuningConfig, _trial, run  # noqa: E402


def retrain(config: SelfTuningConfig, m: dict, details: dict) -> dict[str, dict[str, float]]:
    """Plain networks trained for the STN's weight steps at four hyperparameter settings."""
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    steps = config.warmup_steps + config.hyper_steps * config.train_steps
    settings = {
        "stn": {"log_weight_decay": math.log(m["final_weight_decay"]), "dropout": m["final_dropout"],
                "input_noise": m["final_input_noise"]},
        "grid": {k: details["grid_best"][k] for k in ("log_weight_decay", "dropout", "input_noise")},
        "random": {k: details["random_search_best"][k] for k in ("log_weight_decay", "dropout", "input_noise")},
        "none": {"log_weight_decay": -30.0, "dropout": 0.0, "input_noise": 0.0},
    }
    return {name: _trial(config, data, hp, steps) for name, hp in settings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--size", default="default", choices=["default", "fast"])
    parser.add_argument("--retrain", action="store_true", help="also train plain networks at the found hyperparameters")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/self_tuning-<time>.json)")
    args = parser.parse_args()

    rows = []
    header = (
        f"{'seed':>4} {'stn val':>8} {'grid val':>8} {'rand val':>8} {'stn/grid':>8} "
        f"{'stn acc':>7} {'grid acc':>8} {'rand acc':>8} {'wd':>7} {'drop':>6} {'noise':>6} "
        f"{'stn s':>6} {'grid s':>6} {'rand s':>6}"
    )
    print(header)
    for seed in args.seeds:
        result = run(SelfTuningConfig(size=args.size, seed=seed))
        m = result.metrics()
        rows.append({"seed": seed, **m})
        if args.retrain:
            t = rows[-1]["retrain"] = retrain(result.config, m, result.to_dict()["details"])
            print("     retrained for the STN's weight steps (val loss / test acc): " + ", ".join(
                f"{n} {t[n]['val_loss']:.4f} / {t[n]['test_accuracy']:.4f}" for n in t), flush=True)
        print(
            f"{seed:>4} {m['val_loss']:8.4f} {m['grid_best_val_loss']:8.4f} "
            f"{m['random_search_best_val_loss']:8.4f} {m['val_loss_over_grid_best']:8.3f} "
            f"{m['test_accuracy']:7.4f} {m['grid_test_accuracy']:8.4f} {m['random_search_test_accuracy']:8.4f} "
            f"{m['final_weight_decay']:7.3f} {m['final_dropout']:6.3f} {m['final_input_noise']:6.3f} "
            f"{m['stn_time_s']:6.1f} {m['grid_time_s']:6.1f} {m['random_search_time_s']:6.1f}",
            flush=True,
        )
    summary = {
        key: {"mean": float(np.mean([r[key] for r in rows])), "min": float(np.min([r[key] for r in rows])),
              "max": float(np.max([r[key] for r in rows]))}
        for key in ("val_loss", "grid_best_val_loss", "random_search_best_val_loss", "val_loss_over_grid_best",
                    "test_accuracy", "grid_test_accuracy", "random_search_test_accuracy",
                    "stn_time_s", "grid_time_s", "random_search_time_s")
    }
    print(
        f"mean {summary['val_loss']['mean']:8.4f} {summary['grid_best_val_loss']['mean']:8.4f} "
        f"{summary['random_search_best_val_loss']['mean']:8.4f} {summary['val_loss_over_grid_best']['mean']:8.3f} "
        f"{summary['test_accuracy']['mean']:7.4f} {summary['grid_test_accuracy']['mean']:8.4f} "
        f"{summary['random_search_test_accuracy']['mean']:8.4f}"
    )
    if args.retrain:
        print("\nplain network, trained for the STN's weight steps at each method's hyperparameters:")
        print(f"{'seed':>4} " + " ".join(f"{n + ' val':>11} {n + ' acc':>11}" for n in ("stn", "grid", "random", "none")))
        for r in rows:
            t = r["retrain"]
            print(f"{r['seed']:>4} " + " ".join(f"{t[n]['val_loss']:11.4f} {t[n]['test_accuracy']:11.4f}"
                                                for n in ("stn", "grid", "random", "none")))
    print(f"worst stn/grid ratio: {summary['val_loss_over_grid_best']['max']:.3f} (target <= 1.03)")
    cfg = SelfTuningConfig(size=args.size)
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"self_tuning-{datetime.now():%Y%m%d-%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "config": cfg.to_dict(),
        "rows": rows,
        "summary": summary,
    }
    with open(out, "x") as f:
        json.dump(payload, f, indent=1)
    print(f"written {out}")


if __name__ == "__main__":
    main()
