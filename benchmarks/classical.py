"""Success rate and time of the classical bilevel solver on two test sets.

* ``--set literature`` (default): the 61 problems of :data:`bilevel.testproblems.LITERATURE`
  (BASBLib), explicit bounds, at most ``--rounds`` rounds (issue 4).
* ``--set bolib``: the 91 further problems of :data:`bilevel.testproblems.bolib.BOLIB` as a new
  user meets them (bounds written as constraints, the source's start point), each with
  ``time_limit=--time-limit`` seconds (default 57, so that a run, which may pass the
  limit by one SLSQP iteration, ends within 60 s) and at most ``--rounds`` rounds (issue 16).

Success: ``|F - F*| <= 1% of max(1, |F*|)`` and certified lower-level gap ``<= 1e-4``.
``F*`` is the entry's reference value: the value listed by the source, or the verified
optimum for the entries whose listed value is not the bilevel optimum (see
``LiteratureProblem.F_verified``); the success rate against the listed values alone is
printed too. Every problem is solved from its listed starting point with the default
:class:`~bilevel.constrained.classical.Classical` settings.

Usage::

    python benchmarks/classical.py [--set bolib] [--quick] [--rounds 5] [--json out.json] [names ...]
    python benchmarks/classical.py --rescore out.json   # the table of a saved run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings

import torch
from threadpoolctl import threadpool_limits

from bilevel.constrained.classical import solve_classical
from bilevel.errors import ConvergenceWarning
from bilevel.testproblems.bolib import BOLIB
from bilevel.testproblems.literature import LITERATURE

SETS = {"literature": LITERATURE, "bolib": BOLIB}
QUICK = {
    "literature": [
        "mb_2007_04",
        "mb_2007_13v",
        "dd_2012_01",
        "b_1998_05",
        "sa_1981_01",
        "mb_2007_24",
    ],
    "bolib": ["CandlerTownsley1982", "TuyEtal1993", "Outrata1990Ex1a", "TollSettingP4"],
}


def _problem(name: str):
    return LITERATURE[name] if name in LITERATURE else BOLIB[name]


def run_one(name: str, rounds: int, seed: int, time_limit: float | None = None) -> dict:
    p = _problem(name)
    x0, y0 = p.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            res = solve_classical(
                p.problem(), x0, y0, maxiter=rounds, seed=seed, time_limit=time_limit
            )
            error = ""
        except Exception as exc:  # noqa: BLE001 - reported in the table
            res, error = None, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    return {
        "name": name,
        "n_x": p.n_x,
        "n_y": p.n_y,
        "F_star": p.F_star,
        "F": res.info.get("upper_value", math.nan) if res is not None else math.nan,
        "gap": res.info.get("lower_gap", math.nan) if res is not None else math.nan,
        "status": res.status if res is not None else "error",
        "rounds": res.n_iter if res is not None else 0,
        "start": res.info.get("start", "") if res is not None else "",
        "certified": bool(res.info.get("certified", False)) if res is not None else False,
        "seconds": seconds,
        "x": res.x.tolist() if res is not None else None,
        "y": res.y.tolist() if res is not None else None,
        "error": error,
    }


def score(row: dict) -> dict:
    """Success against the reference value and against the listed value."""
    p = _problem(row["name"])
    F, gap = row["F"], row["gap"]
    row["F_reference"] = p.F_reference
    row["rel_error"] = abs(F - p.F_reference) / max(1.0, abs(p.F_reference))
    row["success"] = bool(row["rel_error"] <= 0.01 and gap <= 1e-4)
    listed = abs(F - p.F_star) / max(1.0, abs(p.F_star))
    row["success_listed"] = bool(listed <= 0.01 and gap <= 1e-4)
    return row


COLUMNS = [
    ("problem", 12),
    ("n_x", 3),
    ("n_y", 3),
    ("F* (ref)", 11),
    ("F found", 12),
    ("rel. err", 8),
    ("lower gap", 9),
    ("ok", 2),
    ("status", 10),
    ("start", 5),
    ("rounds", 6),
    ("time (s)", 8),
]


def print_header(width: int = 12) -> None:
    cols = [(name, width if name == "problem" else w) for name, w in COLUMNS]
    print("| " + " | ".join(f"{name:{w}s}" for name, w in cols) + " |")
    print("|" + "|".join("-" * (w + 2) for _, w in cols) + "|")


def print_row(row: dict, width: int = 12) -> None:
    mark = "+" if _problem(row["name"]).F_verified is not None else " "
    start = {"feasibility phase": "feas"}.get(row.get("start", ""), "x0")
    print(
        f"| {row['name']:{width}s} | {row['n_x']:3d} | {row['n_y']:3d} | "
        f"{row['F_reference']:10.6g}{mark} | {row['F']:12.6g} | {row['rel_error']:8.1e} | "
        f"{row['gap']:9.1e} | {'y' if row['success'] else 'N':>2s} | {row['status']:10s} | "
        f"{start:5s} | {row['rounds']:6d} | {row['seconds']:8.1f} |"
        + (f" {row['error']}" if row["error"] else ""),
        flush=True,
    )


def summary(rows: list[dict]) -> None:
    n_ok = sum(r["success"] for r in rows)
    n_listed = sum(r["success_listed"] for r in rows)
    times = sorted(r["seconds"] for r in rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    feas = sum(r.get("start") == "feasibility phase" for r in rows)
    print(
        f"\nsuccess: {n_ok}/{len(rows)} = {100 * n_ok / len(rows):.1f}% against the reference "
        f"values (+: verified optimum, see the entry's note), {n_listed}/{len(rows)} = "
        f"{100 * n_listed / len(rows):.1f}% against the listed values; criterion "
        "|F - F*| <= 1% max(1, |F*|) and lower gap <= 1e-4"
    )
    print(
        f"time per problem: median {times[len(times) // 2]:.1f} s, mean "
        f"{sum(times) / len(times):.1f} s, max {times[-1]:.1f} s, total {sum(times):.0f} s "
        f"({platform.machine()}, torch {torch.__version__}, 1 thread)"
    )
    print(
        "statuses: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; started by the feasibility phase: {feas}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="problems to run (default: all of the set)")
    parser.add_argument("--set", choices=sorted(SETS), default="literature", dest="test_set")
    parser.add_argument("--quick", action="store_true", help="a few problems of the set")
    parser.add_argument("--rounds", type=int, default=None, help="maximum rounds per problem")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds per problem (bolib: 57)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--rescore", help="print the table of rows saved with --json")
    args = parser.parse_args()
    if args.rescore:
        with open(args.rescore) as fh:
            rows = [score(row) for row in json.load(fh)]
        width = max(12, *(len(row["name"]) for row in rows))
        print_header(width)
        for row in rows:
            print_row(row, width)
        summary(rows)
        return
    torch.set_num_threads(1)
    bolib = args.test_set == "bolib"
    rounds = args.rounds if args.rounds is not None else (10 if bolib else 5)
    time_limit = args.time_limit if args.time_limit is not None else (57.0 if bolib else None)
    problems = SETS[args.test_set]
    names = args.names or (QUICK[args.test_set] if args.quick else list(problems))
    rows = []
    width = max(12, *(len(name) for name in names))
    print_header(width)
    with threadpool_limits(1):
        for name in names:
            row = score(run_one(name, rounds, args.seed, time_limit))
            rows.append(row)
            print_row(row, width)
    summary(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
