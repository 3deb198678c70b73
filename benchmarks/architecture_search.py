"""Architecture search on digits: DARTS first order, DARTS second order, RARTS, random cells.

For each seed and method, ``bilevel.recipes.architecture_search.run`` (the recipe's ``--size``
preset, plus any ``--set name=value`` overrides): the search on the cell of
``bilevel.nn.darts.SearchNetwork``, the derived cell retrained from scratch, and
``n_random`` random cells of exactly the derived cell's size (same inputs per node, same
number of skip connections, same parameter count) retrained the same way. Printed per run:
the derived cell, its test accuracy, the random cells' mean test accuracy, the search time;
then the mean over seeds per method. JSON (and a drawing of each derived cell) under
``benchmarks/results/``.

    python benchmarks/architecture_search.py --seeds 0 1 2 --size fast
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

from bilevel.recipes.architecture_search import ArchitectureSearchConfig, plot_cell, run  # noqa: E402

METHODS = {
    "darts-1st": {"method": "first_order"},
    "darts-2nd": {"method": "second_order", "mode": "fd"},
    "rarts": {"method": "rarts"},
}


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", default="fast", choices=["default", "fast"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="recipe option overrides")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/architecture_search-<time>.json)")
    args = parser.parse_args()
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}

    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"architecture_search-{datetime.now():%Y%m%d-%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'method':>10} {'seed':>4} {'test acc':>8} {'random acc':>10} {'params':>6} {'search s':>8}  architecture")
    for seed in args.seeds:
        for name in args.methods:
            config = ArchitectureSearchConfig(size=args.size, seed=seed, **METHODS[name], **overrides)
            result = run(config)
            m = result.metrics()
            plot_cell(result.genotype, out.with_name(f"{out.stem}-{name}-seed{seed}.png"), f"{name}, seed {seed}")
            rows.append({**m, "recipe_method": m["method"], "method": name, "seed": seed})
            print(
                f"{name:>10} {seed:>4} {m['test_accuracy']:8.4f} {m['random_architecture_test_accuracy']:10.4f} "
                f"{m['parameters']:>6} {m['search_time']:8.1f}  {m['architecture']}",
                flush=True,
            )
    summary = {}
    print(f"\n{'method':>10} {'test acc':>15} {'random acc':>15} {'search s':>8}   (mean +- std over seeds)")
    for name in args.methods:
        sel = [r for r in rows if r["method"] == name]
        acc = np.array([r["test_accuracy"] for r in sel])
        rnd = np.array([r["random_architecture_test_accuracy"] for r in sel])
        t = np.array([r["search_time"] for r in sel])
        summary[name] = {
            "test_accuracy_mean": float(acc.mean()), "test_accuracy_std": float(acc.std()),
            "random_architecture_test_accuracy_mean": float(rnd.mean()),
            "random_architecture_test_accuracy_std": float(rnd.std()),
            "search_time_mean": float(t.mean()), "wins_over_random": int((acc > rnd).sum()), "runs": len(sel),
        }
        print(f"{name:>10} {acc.mean():8.4f}+-{acc.std():.4f} {rnd.mean():8.4f}+-{rnd.std():.4f} {t.mean():8.1f}")
    payload = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "size": args.size,
        "overrides": overrides,
        "rows": rows,
        "summary": summary,
    }
    with open(out, "x") as f:
        json.dump(payload, f, indent=1)
    print(f"written {out}")


if __name__ == "__main__":
    main()
