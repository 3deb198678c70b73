"""TOPO (:class:`bilevel.dag.topo.TopoSearch`) against DAGMA, NOTEARS, GOLEM and baselines.

Run with the benchmark environment (``.venv-bench``: dagma, gcastle)::

    .venv-bench/bin/python benchmarks/dag.py --quick
    .venv-bench/bin/python benchmarks/dag.py --graphs ER2 ER4 SF4 --nodes 10 20 50 \\
        --seeds 3 --data raw std --json results.json

Instances: a random DAG (``ERk``: Erdős–Rényi, ``SFk``: Barabási–Albert, ``k d`` expected
edges, :func:`bilevel.dag.simulate.simulate_dag`), weights uniform in ``±[0.5, 2]``, ``n =
1000`` samples of the linear SEM with standard Gaussian noise (equal variances), either raw
or standardized (every column scaled to unit variance; the order is no longer var-sortable).
Instance seeds are ``(seed, d, graph)``; every method sees the same data.

Methods (``--methods``):

* ``topo``: ``TopoSearch(score="ls", w_threshold=0.3)`` with its defaults (init "auto",
  search "wide");
* ``dagma``: ``dagma.linear.DagmaLinear(loss_type="l2").fit(X, lambda1=0.02,
  w_threshold=0.3)`` (the DAGMA paper's linear setting);
* ``notears``: ``castle.algorithms.Notears(lambda1=0.1, loss_type="l2", w_threshold=0.3)``
  (gcastle), only up to ``--notears-max-d`` nodes (it is slow);
* ``golem``: ``castle.algorithms.GOLEM`` (GOLEM-EV, ``lambda_1=0.02, lambda_2=5``,
  ``--golem-iters`` Adam steps, default 20000 instead of the paper's 1e5 to fit the time
  budget), only up to ``--golem-max-d`` nodes;
* ``sortnregress``: :func:`bilevel.dag.baselines.sortnregress` (no threshold);
* ``empty``: the empty graph.

Columns: **score** is the same function for everyone, the least-squares score refit on the
learned support, ``sum_j min_b ||X_j - X_pa(j) b||^2 / (2n)`` with centred ``X`` (lower is
better; a denser support can only lower it, so read it with **nnz**); **SHD**, **TPR**, **FDR**
(:func:`bilevel.dag.metrics.count_accuracy`); **time** in seconds (wall clock, one BLAS
thread and one torch thread, pinned with threadpoolctl and ``torch.set_num_threads``).
**topo<=** counts the instances where TOPO's score is at most the method's score (+1e-9
relative), the issue's target on raw data.

``--sachs`` adds the Sachs et al. (2005) observational data (853 x 11, standardized) with the
SHD against the 18-edge consensus network of cdt (:func:`bilevel.dag.datasets.load_sachs`).
``--check-metrics`` compares :func:`count_accuracy` with gcastle's ``MetricsDAG`` on random
graphs and exits. ``--table a.json [b.json ...]`` prints the tables of earlier ``--json``
files, merged (each is rewritten after every instance, so an interrupted run keeps its
results).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

os.environ.setdefault("CASTLE_BACKEND", "pytorch")

from bilevel.dag.baselines import empty_graph, sortnregress
from bilevel.dag.datasets import load_sachs
from bilevel.dag.metrics import count_accuracy, is_dag, shd_cpdag
from bilevel.dag.simulate import (
    simulate_dag,
    simulate_linear_sem,
    simulate_nonlinear_sem,
    simulate_parameter,
)

GRAPHS = ("ER2", "ER4", "SF4")
METHODS = (
    "topo",
    "topo-mlp",
    "topo-gam",
    "topo-gam-nv",
    "topo-nv",
    "dagma",
    "dagma-mlp",
    "notears",
    "golem",
    "sortnregress",
    "empty",
)


# --------------------------------------------------------------------------------------
# the common score
# --------------------------------------------------------------------------------------


def refit_ls_score(X: np.ndarray, W: np.ndarray) -> float:
    """``sum_j min_b ||X_j - X_pa(j) b||^2 / (2n)`` over the support of ``W`` (centred X)."""
    Xc = X - X.mean(axis=0)
    n, d = Xc.shape
    total = 0.0
    for j in range(d):
        pa = np.flatnonzero(W[:, j])
        r = Xc[:, j]
        if pa.size:
            r = r - Xc[:, pa] @ np.linalg.lstsq(Xc[:, pa], r, rcond=None)[0]
        total += float(r @ r)
    return total / (2 * n)


# --------------------------------------------------------------------------------------
# methods: X -> weighted adjacency
# --------------------------------------------------------------------------------------


def run_topo(X: np.ndarray, seed: int, args) -> np.ndarray:
    from bilevel.dag.topo import TopoSearch

    return TopoSearch(score="ls", w_threshold=0.3, random_state=seed).fit(X).adjacency_


def run_topo_mlp(X: np.ndarray, seed: int, args) -> np.ndarray:
    from bilevel.dag.nonlinear import MLPScore
    from bilevel.dag.topo import TopoSearch

    return TopoSearch(score=MLPScore(), w_threshold=0.3, random_state=seed).fit(X).adjacency_


def run_topo_gam(X: np.ndarray, seed: int, args) -> np.ndarray:
    from bilevel.dag.nonlinear import AdditiveScore
    from bilevel.dag.topo import TopoSearch

    return TopoSearch(score=AdditiveScore(), w_threshold=0.3, random_state=seed).fit(X).adjacency_


def run_topo_gam_nv(X: np.ndarray, seed: int, args) -> np.ndarray:
    from bilevel.dag.topo import TopoSearch

    return TopoSearch(score="gam-nv", w_threshold=0.3, random_state=seed).fit(X).adjacency_


def run_topo_nv(X: np.ndarray, seed: int, args) -> np.ndarray:
    from bilevel.dag.topo import TopoSearch

    return TopoSearch(score="nv", w_threshold=0.3, random_state=seed).fit(X).adjacency_


def run_dagma_mlp(X: np.ndarray, seed: int, args) -> np.ndarray:
    """DAGMA-MLP with the settings of the dagma README / paper (hidden 10, lambda1 = 0.02,
    lambda2 = 0.005, float64, w_threshold 0.3)."""
    import torch
    from dagma.nonlinear import DagmaMLP, DagmaNonlinear

    torch.manual_seed(seed)
    d = X.shape[1]
    eq_model = DagmaMLP(dims=[d, 10, 1], bias=True, dtype=torch.double)
    model = DagmaNonlinear(eq_model, dtype=torch.double)
    with contextlib.redirect_stderr(io.StringIO()):  # DAGMA's tqdm bar
        return model.fit(X, lambda1=0.02, lambda2=0.005)


def run_dagma(X: np.ndarray, seed: int, args) -> np.ndarray:
    import torch
    from dagma.linear import DagmaLinear

    torch.manual_seed(seed)
    with contextlib.redirect_stderr(io.StringIO()):  # DAGMA's tqdm bar
        return DagmaLinear(loss_type="l2").fit(X, lambda1=0.02, w_threshold=0.3)


def _castle(model, X: np.ndarray) -> np.ndarray:
    model.learn(X)
    W = getattr(model, "weight_causal_matrix", None)
    B = np.asarray(model.causal_matrix, dtype=float)
    return np.asarray(W, dtype=float) * (B != 0) if W is not None else B


def run_notears(X: np.ndarray, seed: int, args) -> np.ndarray:
    from castle.algorithms import Notears

    return _castle(Notears(lambda1=0.1, loss_type="l2", w_threshold=0.3), X)


def run_golem(X: np.ndarray, seed: int, args) -> np.ndarray:
    from castle.algorithms import GOLEM

    model = GOLEM(
        lambda_1=0.02,
        lambda_2=5.0,
        equal_variances=True,
        num_iter=args.golem_iters,
        seed=seed,
        graph_thres=0.3,
        device_type="cpu",
    )
    return _castle(model, X)


def run_sortnregress(X: np.ndarray, seed: int, args) -> np.ndarray:
    return sortnregress(X)


def run_empty(X: np.ndarray, seed: int, args) -> np.ndarray:
    return empty_graph(X)


RUNNERS: dict[str, Callable] = {
    "topo": run_topo,
    "topo-mlp": run_topo_mlp,
    "topo-gam": run_topo_gam,
    "topo-gam-nv": run_topo_gam_nv,
    "topo-nv": run_topo_nv,
    "dagma": run_dagma,
    "dagma-mlp": run_dagma_mlp,
    "notears": run_notears,
    "golem": run_golem,
    "sortnregress": run_sortnregress,
    "empty": run_empty,
}


def applicable(method: str, d: int, args) -> bool:
    if method == "notears":
        return d <= args.notears_max_d
    if method == "golem":
        return d <= args.golem_max_d
    return True


# --------------------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------------------


def make_instance(
    graph: str, d: int, seed: int, n: int, sem: str = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    kind, k = graph[:2], int(graph[2:])
    if sem == "mlp":  # NOTEARS/DAGMA's MLP SEM, standard Gaussian noise
        rng = np.random.default_rng([seed, d, 7 + (GRAPHS.index(graph) if graph in GRAPHS else 99)])
        B = simulate_dag(d, k * d, kind, rng)
        return B, simulate_nonlinear_sem(B, n, "mlp", rng=rng)
    rng = np.random.default_rng([seed, d, GRAPHS.index(graph) if graph in GRAPHS else 99])
    B = simulate_dag(d, k * d, kind, rng)
    W = simulate_parameter(B, rng=rng)
    return B, simulate_linear_sem(W, n, "gauss", 1.0, rng=rng)


def standardize(X: np.ndarray) -> np.ndarray:
    return (X - X.mean(axis=0)) / X.std(axis=0)


def evaluate(
    method: str, X: np.ndarray, B: np.ndarray, seed: int, args, linear: bool = True
) -> dict:
    from threadpoolctl import threadpool_limits

    record: dict = {"method": method}
    try:
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            W = np.asarray(RUNNERS[method](X, seed, args), dtype=float)
            record["time"] = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 -- a failing peer is reported, never fatal
        record["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        return record
    np.fill_diagonal(W, 0.0)
    record.update(count_accuracy(B, W))
    record["dag"] = is_dag(W)
    if record["dag"] and is_dag(B):  # the Sachs consensus network has a cycle: no CPDAG
        record["shd_cpdag"] = shd_cpdag(B, W)
    record["edges"] = np.argwhere(W != 0).tolist()
    # the least-squares refit score compares linear methods; nonlinear ones have none
    record["score"] = refit_ls_score(X, W) if linear else float("nan")
    return record


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _unique(results: list[dict]) -> list[dict]:
    """The first record of each (instance, method): merged files may repeat a method."""
    seen, out = set(), []
    for r in results:
        key = tuple(
            r.get(k) for k in ("kind", "sem", "graph", "d", "data", "seed", "method", "score")
        ) if r.get("kind") == "sachs-bootstrap" else tuple(
            r.get(k) for k in ("kind", "sem", "graph", "d", "data", "seed", "method")
        )
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values)), fmt)}"


def tables(results: list[dict]) -> str:
    """Markdown tables: one row per (graph, d, data, method), means ± std over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    topo_score: dict[tuple, float] = {}
    for r in _unique(results):
        if r.get("kind") != "synthetic":
            continue
        data = r["data"] if r.get("sem", "linear") == "linear" else f"{r['data']} mlp-sem"
        r = {**r, "data": data}
        groups[(r["graph"], r["d"], r["data"], r["method"])].append(r)
        if r["method"] == "topo" and "score" in r:
            topo_score[(r["graph"], r["d"], r["data"], r["seed"])] = r["score"]
    lines = [
        "| graph | d | data | method | runs | score | SHD | SHD-CPDAG | TPR | FDR | nnz "
        "| time (s) | topo<= |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(METHODS)}
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], order.get(k[3], 99))):
        graph, d, data, method = key
        ok = [r for r in groups[key] if "score" in r]
        failed = len(groups[key]) - len(ok)
        le = [
            topo_score[(graph, d, data, r["seed"])] <= r["score"] * (1 + 1e-9) + 1e-12
            for r in ok
            if (graph, d, data, r["seed"]) in topo_score and math.isfinite(r["score"])
        ]
        scores = [r["score"] for r in ok if math.isfinite(r["score"])]
        cp = [r["shd_cpdag"] for r in ok if "shd_cpdag" in r]
        runs = f"{len(ok)}" + (f" ({failed} failed)" if failed else "")
        cyclic = sum(not r["dag"] for r in ok)
        if cyclic:
            runs += f" ({cyclic} cyclic)"
        lines.append(
            f"| {graph} | {d} | {data} | {method} | {runs} | "
            f"{_mean_std(scores, '.4f')} | "
            f"{_mean_std([r['shd'] for r in ok], '.1f')} | "
            f"{_mean_std(cp, '.1f')} | "
            f"{_mean_std([r['tpr'] for r in ok], '.2f')} | "
            f"{_mean_std([r['fdr'] for r in ok], '.2f')} | "
            f"{_mean_std([r['nnz'] for r in ok], '.1f')} | "
            f"{_mean_std([r['time'] for r in ok], '.2g')} | "
            f"{sum(le)}/{len(le)} |"
        )
    lines += ["", *time_ratios(results)]
    sachs = [r for r in _unique(results) if r.get("kind") == "sachs"]
    if sachs:
        lines += [
            "",
            "Sachs (853 observational cells; truth: cdt's 18-edge consensus; empty graph: SHD 18):",
            "",
            "| data | method | score | SHD | TPR | FDR | nnz | time (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(sachs, key=lambda r: (r.get("data", "std"), order.get(r["method"], 99))):
            if "shd" not in r:
                lines.append(f"| {r.get('data', 'std')} | {r['method']} | failed: {r['error']} | | | | | |")
                continue
            sc = f"{r['score']:.4f}" if r.get("score") is not None and math.isfinite(r["score"]) else "-"
            lines.append(
                f"| {r.get('data', 'std')} | {r['method']} | {sc} | {r['shd']} | {r['tpr']:.2f} | "
                f"{r['fdr']:.2f} | {r['nnz']} | {r['time']:.2g} |"
            )
    for r in _unique(results):
        if r.get("kind") == "sachs-bootstrap":
            lines += [
                "",
                f"Sachs (raw), bootstrap edge stability of TOPO ({r['score']}, "
                f"{r['n_bootstrap']} refits):",
                "",
                "| edge | frequency | in the fit | in the consensus |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {e['edge']} | {e['frequency']:.2f} | {'yes' if e['in_result'] else 'no'} | "
                f"{e['consensus']} |"
                for e in r["edges"]
                if e["frequency"] >= 0.2
            ]
    return "\n".join(lines)


PAIRS = (("topo", "dagma"), ("topo-mlp", "dagma-mlp"), ("topo-gam", "dagma-mlp"))


def time_ratios(results: list[dict]) -> list[str]:
    """Per setting: the peer's time over TOPO's on the same instance (same run), mean and
    smallest, and the SHD difference."""
    by: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in _unique(results):
        if r.get("kind") == "synthetic" and "time" in r:
            key = (r.get("sem", "linear"), r["graph"], r["d"], r["data"], r["seed"])
            by[key][r["method"]] = r
    out = [
        "| sem | graph | d | data | pair | instances | time ratio (peer / TOPO) mean | min "
        "| TOPO max time (s) | mean SHD TOPO | mean SHD peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for (sem, graph, d, data, _), recs in sorted(by.items()):
        for ours, peer in PAIRS:
            if ours in recs and peer in recs and "shd" in recs[ours] and "shd" in recs[peer]:
                groups[(sem, graph, d, data, f"{ours} vs {peer}")].append((recs[ours], recs[peer]))
    for key, pairs in groups.items():
        ratios = [p["time"] / o["time"] for o, p in pairs]
        out.append(
            f"| {' | '.join(map(str, key))} | {len(pairs)} | {np.mean(ratios):.1f} | "
            f"{np.min(ratios):.1f} | {max(o['time'] for o, _ in pairs):.3g} | "
            f"{np.mean([o['shd'] for o, _ in pairs]):.1f} | "
            f"{np.mean([p['shd'] for _, p in pairs]):.1f} |"
        )
    return out if len(out) > 2 else []


def misses(results: list[dict]) -> list[str]:
    """Raw-data instances where some peer's score is below TOPO's."""
    by_inst: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in _unique(results):
        if (
            r.get("kind") == "synthetic"
            and r["data"] == "raw"
            and "score" in r
            and math.isfinite(r["score"])
        ):
            by_inst[(r["graph"], r["d"], r["seed"])][r["method"]] = r["score"]
    out = []
    for inst, scores in sorted(by_inst.items()):
        if "topo" not in scores:
            continue
        for m, s in scores.items():
            if m != "topo" and scores["topo"] > s * (1 + 1e-9) + 1e-12:
                out.append(f"{inst}: topo {scores['topo']:.6f} > {m} {s:.6f}")
    return out


# --------------------------------------------------------------------------------------
# metric check against gcastle
# --------------------------------------------------------------------------------------


def check_metrics(trials: int = 400) -> None:
    from castle.metrics import MetricsDAG

    rng = np.random.default_rng(0)
    worst, compared = 0.0, 0
    for trial in range(trials):
        d = int(rng.integers(3, 12))
        B = simulate_dag(d, int(rng.integers(1, d * (d - 1) // 2)), "ER", rng)
        # estimates: truth with some edges dropped, reversed and added, kept acyclic
        E = B * (rng.random((d, d)) < 0.7)
        flip = E * (rng.random((d, d)) < 0.3)
        E = E - flip + flip.T
        extra = np.triu(rng.random((d, d)) < 0.1, 1) * 1.0
        perm = rng.permutation(d)
        E = np.clip(E + extra[np.ix_(perm, perm)], 0, 1)
        if not is_dag(E) or not B.any():  # gcastle's gscore asserts a non-empty truth
            continue
        ours = count_accuracy(B, E)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gcastle's F1 divides 0 by 0
            theirs = MetricsDAG(E.copy(), B.copy()).metrics
        for key in ("shd", "tpr", "fdr", "fpr", "nnz"):
            if ours[key] == 0 and theirs[key] == 0:
                continue
            diff = abs(ours[key] - theirs[key])
            # gcastle rounds its rates to 4 decimals
            tol = 0.5e-4 + 1e-12 if key in ("tpr", "fdr", "fpr") else 0
            if diff > tol:
                raise AssertionError(f"trial {trial}: {key} ours {ours[key]} gcastle {theirs[key]}")
            worst = max(worst, diff)
        compared += 1
    print(f"count_accuracy agrees with gcastle MetricsDAG on {compared} random pairs "
          f"(largest difference {worst:.2g}, gcastle rounds rates to 4 decimals)")  # fmt: skip


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ER2, d=10, one seed, raw data")
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS))
    parser.add_argument("--nodes", nargs="+", type=int, default=[10, 20, 50, 100])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--data", nargs="+", default=["raw", "std"], choices=["raw", "std"])
    parser.add_argument(
        "--sem", default="linear", choices=["linear", "mlp"], help="linear SEM or MLP SEM"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--notears-max-d", type=int, default=20)
    parser.add_argument("--golem-max-d", type=int, default=20)
    parser.add_argument("--golem-iters", type=int, default=20_000)
    parser.add_argument("--sachs", action="store_true", help="also run on the Sachs data")
    parser.add_argument("--sachs-bootstrap", type=int, default=0,
                        help="bootstrap edge stability on raw Sachs with this many refits")  # fmt: skip
    parser.add_argument("--sachs-bootstrap-score", default="gam-nv")
    parser.add_argument("--json", help="write all records here (after every instance)")
    parser.add_argument(
        "--table", nargs="+", help="print the tables of earlier --json files (merged) and exit"
    )
    parser.add_argument("--check-metrics", action="store_true")
    args = parser.parse_args(argv)

    if args.table:
        results = []
        for path in args.table:
            with open(path) as f:
                results += [
                    {k: (math.nan if k == "score" and v is None else v) for k, v in r.items()}
                    for r in json.load(f)["results"]
                ]
        print(tables(results))
        print("\nraw-data instances where a peer scores below TOPO:")
        print("\n".join(misses(results)) or "none")
        return
    if args.quick:
        args.graphs, args.nodes, args.seeds, args.data = ["ER2"], [10], 1, ["raw"]
        args.golem_iters = min(args.golem_iters, 5000)

    logging.disable(logging.INFO)  # gcastle logs every iteration at INFO
    import torch

    torch.set_num_threads(1)
    if args.check_metrics:
        check_metrics()
        return
    # import every method's package now, so that no timing includes an import
    import sklearn.linear_model  # noqa: F401  (sortnregress)

    import bilevel.dag.topo  # noqa: F401

    if {"dagma"} & set(args.methods):
        import dagma.linear  # noqa: F401
    if {"dagma-mlp"} & set(args.methods):
        import dagma.nonlinear  # noqa: F401
    if {"topo-mlp", "topo-gam"} & set(args.methods):
        import bilevel.dag.nonlinear  # noqa: F401
    if {"notears", "golem"} & set(args.methods):
        import castle.algorithms  # noqa: F401

    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "threads": "1 BLAS (threadpoolctl), 1 torch",
    }
    results: list[dict] = []

    def save() -> None:
        if args.json:
            clean = [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in results
            ]
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": clean}, f, indent=1, allow_nan=False)

    if args.sachs:
        for data in args.data:
            X, B, names = load_sachs(standardize=data == "std")
            for method in args.methods:
                rec = evaluate(method, X, B, 0, args, linear=not method.endswith(("mlp", "gam", "gam-nv")))
                rec.update(kind="sachs", data=data)
                results.append(rec)
                print(f"sachs {data} {method}: {rec.get('shd', rec.get('error'))}", file=sys.stderr)
            save()
        if args.sachs_bootstrap:
            from bilevel.dag.topo import TopoSearch

            X, B, names = load_sachs(standardize=False)
            est = TopoSearch(
                score=args.sachs_bootstrap_score, n_bootstrap=args.sachs_bootstrap, n_jobs=-1,
                random_state=0,
            ).fit(X)
            S = est.edge_stability_
            rec = {"kind": "sachs-bootstrap", "score": args.sachs_bootstrap_score,
                   "n_bootstrap": args.sachs_bootstrap, "edges": []}  # fmt: skip
            for i, j in sorted(zip(*np.nonzero(S), strict=True), key=lambda e: -S[e]):
                rec["edges"].append({
                    "edge": f"{names[i]}->{names[j]}", "frequency": float(S[i, j]),
                    "in_result": bool(est.adjacency_[i, j] != 0),
                    "consensus": "yes" if B[i, j] else "reversed" if B[j, i] else "no",
                })  # fmt: skip
            results.append(rec)
            save()

    for d in args.nodes:
        for graph in args.graphs:
            for seed in range(args.seed_offset, args.seed_offset + args.seeds):
                B, X_raw = make_instance(graph, d, seed, args.samples, args.sem)
                for data in args.data:
                    X = X_raw if data == "raw" else standardize(X_raw)
                    for method in args.methods:
                        if not applicable(method, d, args):
                            continue
                        rec = evaluate(method, X, B, seed, args, linear=args.sem == "linear")
                        rec.update(
                            kind="synthetic", graph=graph, d=d, seed=seed, data=data, sem=args.sem
                        )
                        results.append(rec)
                        print(
                            f"{graph} d={d} seed={seed} {data} {method}: "
                            + (
                                f"score {rec['score']:.4f} shd {rec['shd']} time {rec['time']:.2f}s"
                                if "score" in rec
                                else rec["error"]
                            ),
                            file=sys.stderr,
                            flush=True,
                        )
                    save()
    print(tables(results))
    print("\nraw-data instances where a peer scores below TOPO:")
    print("\n".join(misses(results)) or "none")
    if args.sem == "linear" and any(math.isnan(r.get("score", 0.0)) for r in results):
        print("warning: NaN scores present", file=sys.stderr)


if __name__ == "__main__":
    main()
