"""BLTO (the ``trigger`` recipe) over several seeds at 1% and 5% poisoning.

Run from the repository root::

    python benchmarks/trigger.py                # 5 seeds, rates 0.01 and 0.05
    python benchmarks/trigger.py --seeds 10 --jobs 2
    python benchmarks/trigger.py --ablation     # + first-order / conditional-generator rows
    python benchmarks/trigger.py --table benchmarks/results/trigger.json   # re-print saved results

The JSON goes to ``benchmarks/results/trigger.json`` unless ``--json`` says otherwise.

Each run is ``bilevel run trigger --seed s --poison-rate r`` with the recipe's defaults
(:mod:`bilevel.recipes.trigger`: digits upsampled to 16x16, 1200 training images, target
class 0, l_inf budget 0.25, pattern generator, unrolled hypergradient through one
surrogate step). Columns:

* ``ASR``: attack success rate of the learnt trigger on the victim trained on the poisoned
  set; ``rand`` / ``patch``: the same for the random-noise and patch triggers of the same
  budget (each with its own poisoned victim); ``unp``: the learnt trigger against the
  *unpoisoned* victim (the share of the attack that needs no poisoning);
* ``acc`` / ``acc0``: clean test accuracy of the BLTO victim / the unpoisoned victim;
* ``SPC`` / ``oSPC``: AUROC of scaled prediction consistency and of its optimised (masked,
  bi-level) variant for finding the poisoned training images;
* ``time``: wall-clock seconds of the run (one torch thread).

The issue's targets, checked per seed at 1% poisoning: ``ASR >= rand + 0.20`` and
``|acc - acc0| <= 0.03``. ``--jobs`` runs seeds in parallel with joblib (one thread each).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# the checkout this file belongs to, ahead of any installed copy of bilevel
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = (
    ("ASR", "attack_success_rate"),
    ("rand", "random_trigger_attack_success_rate"),
    ("patch", "patch_trigger_attack_success_rate"),
    ("unp", "unpoisoned_attack_success_rate"),
    ("acc", "clean_accuracy"),
    ("acc0", "unpoisoned_clean_accuracy"),
    ("SPC", "spc_auroc"),
    ("oSPC", "optimized_spc_auroc"),
    ("time", "runtime_s"),
)
ASR_MARGIN, ACC_GAP = 0.20, 0.03
RESULTS = Path(__file__).resolve().parent / "results"


def run_one(options: dict[str, Any]) -> dict[str, Any]:
    """One recipe run; returns its options and metrics."""
    from bilevel.recipes import RECIPES

    started = time.perf_counter()
    metrics = RECIPES["trigger"](options).metrics()
    return {"options": options, "metrics": metrics, "wall_s": time.perf_counter() - started}


def meets_targets(m: dict[str, float]) -> bool:
    return (
        m["attack_success_rate"] >= m["random_trigger_attack_success_rate"] + ASR_MARGIN
        and abs(m["clean_accuracy"] - m["unpoisoned_clean_accuracy"]) <= ACC_GAP
    )


def _label(options: dict[str, Any]) -> str:
    extra = {k: v for k, v in options.items() if k not in ("seed", "poison_rate") and (k, v) != ("size", "default")}
    return ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) or "defaults"


def print_tables(runs: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((_label(r["options"]), r["options"]["poison_rate"]), []).append(r)
    for (label, rate), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "defaults", kv[0])):
        rows = sorted(rows, key=lambda r: r["options"]["seed"])
        print(f"\npoison rate {rate:g} ({label}), {len(rows)} seeds")
        header = f"| {'seed':>4} | " + " | ".join(f"{name:>5}" for name, _ in COLUMNS) + " | target |"
        print(header)
        print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
        for r in rows:
            m = r["metrics"]
            cells = " | ".join(
                f"{m[key]:5.1f}" if name == "time" else f"{m[key]:5.3f}" for name, key in COLUMNS
            )
            ok = "yes" if meets_targets(m) else "NO"
            print(f"| {r['options']['seed']:>4} | {cells} | {ok:>6} |")
        for stat, fn in (("mean", statistics.fmean), ("min", min)):
            cells = " | ".join(
                (f"{fn([r['metrics'][key] for r in rows]):5.1f}" if name == "time"
                 else f"{fn([r['metrics'][key] for r in rows]):5.3f}")
                for name, key in COLUMNS
            )
            print(f"| {stat:>4} | {cells} |        |")
        margin = min(
            r["metrics"]["attack_success_rate"] - r["metrics"]["random_trigger_attack_success_rate"] for r in rows
        )
        gap = max(abs(r["metrics"]["clean_accuracy"] - r["metrics"]["unpoisoned_clean_accuracy"]) for r in rows)
        met = sum(meets_targets(r["metrics"]) for r in rows)
        print(
            f"targets met on {met}/{len(rows)} seeds; min(ASR - rand) = {margin:.3f} (need >= {ASR_MARGIN}), "
            f"max|acc - acc0| = {gap:.3f} (need <= {ACC_GAP})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--size", default="default", choices=("default", "fast"))
    parser.add_argument("--ablation", action="store_true",
                        help="also first-order hypergradient and conditional generator at the first rate")
    parser.add_argument("--jobs", type=int, default=1, help="parallel runs (joblib)")
    parser.add_argument("--json", type=Path, default=RESULTS / "trigger.json", help="write the results here")
    parser.add_argument("--table", type=Path, nargs="+", help="print the tables of saved results and exit")
    args = parser.parse_args(argv)

    if args.table:
        runs = [r for path in args.table for r in json.loads(path.read_text())["runs"]]
        print_tables(runs)
        return 0

    jobs: list[dict[str, Any]] = [
        {"seed": s, "poison_rate": rate, "size": args.size} for rate in args.rates for s in range(args.seeds)
    ]
    if args.ablation:
        for variant in ({"method": "first_order"}, {"generator": "conditional"}):
            jobs += [{"seed": s, "poison_rate": args.rates[0], "size": args.size, **variant}
                     for s in range(args.seeds)]
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv[1:],
        "runs": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        from joblib import Parallel, delayed

        finished = Parallel(n_jobs=args.jobs, return_as="generator")(delayed(run_one)(o) for o in jobs)
    else:
        finished = (run_one(o) for o in jobs)
    for run in finished:  # saved as they finish: an interrupted benchmark keeps its runs
        payload["runs"].append(run)
        args.json.write_text(json.dumps(payload, indent=1, default=float) + "\n")
        m = run["metrics"]
        print(f"done {run['options']}: ASR {m['attack_success_rate']:.3f}, acc {m['clean_accuracy']:.3f}",
              file=sys.stderr, flush=True)
    print_tables(payload["runs"])
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
