"""``bilevel dag ...`` commands: learn a DAG from a CSV file, simulate data, run on Sachs.

==================================================  ==========================================
command                                             does
==================================================  ==========================================
``bilevel dag fit DATA.csv -o result.json``         TOPO (:class:`bilevel.dag.topo.TopoSearch`)
``[--graph graph.csv] [--plot graph.png]``          on the columns of ``DATA.csv``; writes a
``[--score ls|nv|logistic|gam|gam-nv|mlp]``         JSON result (edge list, metrics, settings),
``[--w-threshold 0.3] [--standardize] [--seed 0]``  the weighted adjacency (rows: cause,
``[--truth true.csv] [--delimiter ;]``              columns: effect) with the node names and
``[--require A->B] [--forbid B->A] [--tier A,B]``   the plot; prior knowledge, bootstrap edge
``[--bootstrap 50 --jobs -1] [--force] [--quiet]``  stability
``bilevel dag fit --sachs -o sachs.json``           the bundled Sachs observational data
                                                    (raw intensities), scored against the
                                                    18-edge consensus network
``bilevel dag simulate --out data.csv``             linear-SEM (or MLP-SEM) data from a random
``--graph-out true.csv [--nodes 10 --edges 20]``    ER/SF DAG, and its true weighted graph
==================================================  ==========================================

A CSV file has a header row of node names if its first row is not all numbers (or say so with
``--header/--no-header``); without one, nodes are named ``X0, X1, ...``. Its field separator
(comma, semicolon, tab, ``|`` or space) is detected, or given by ``--delimiter``. Written CSV
files have ``\n`` line endings. ``fit`` writes ``graph.csv`` when none of ``-o/--output``,
``--graph``, ``--plot`` is given (``--out`` and ``--json`` are the older names of ``--graph``
and ``--output``). Output files are never overwritten unless ``--force`` is given (exit 2).
Progress goes to stderr (off with ``--quiet``), results to stdout. Invalid input exits with
status 2 and a one-line ``Error:`` message naming the option; a search that stopped at its
iteration limit exits with status 3 after writing its results.
"""

from __future__ import annotations

import csv
import json
import math
import time
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, TypedDict

import numpy as np
import typer

from bilevel.cli._output import (
    EXIT_NOT_CONVERGED,
    EXIT_USAGE,
    ForceOption,
    ProgressOption,
    QuietOption,
    check_output,
    fail,
    open_output,
)

app = typer.Typer(
    name="dag",
    help="DAG structure learning by topological swaps (TOPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SCORES = ("ls", "nv", "logistic", "gam", "gam-nv", "mlp")


class CLIInputError(ValueError):
    """A problem with a command-line input, reported as one ``Error:`` line."""


def _fail(message: str) -> typing.NoReturn:
    fail(message, EXIT_USAGE)


def _info(message: str) -> None:
    typer.echo(message, err=True)


# --------------------------------------------------------------------------------------
# CSV input and output
# --------------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t", "|": "|", "space": " "}


def delimiter_of(text: str, given: str | None, path: Path, option: str = "--delimiter") -> str:
    """The field separator: ``given`` (``,``, ``;``, ``tab``, ``|`` or ``space``), or the one
    :class:`csv.Sniffer` finds among those in the first lines of ``text`` (``,`` when the
    file has a single column)."""
    if given is not None:
        if given not in DELIMITERS:
            raise CLIInputError(f"{option} must be one of , ; tab | space, got {given!r}")
        return DELIMITERS[given]
    lines = [line for line in text.splitlines() if line.strip()][:50]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t| ").delimiter
    except csv.Error:  # ragged rows: the separator that splits the most lines like the first
        pass
    best, agreeing = ",", 0
    for sep in ",;\t| ":
        counts = [len(row) for row in csv.reader(lines, delimiter=sep, skipinitialspace=True)]
        if counts and counts[0] > 1 and counts.count(counts[0]) > agreeing:
            best, agreeing = sep, counts.count(counts[0])
    if agreeing == 0 and any(sep in line for line in lines for sep in ",;\t|"):
        raise CLIInputError(f"{path}: cannot tell the field separator; give it with {option}")
    return best


def _read_rows(path: Path, delimiter: str | None) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    sep = delimiter_of(text, delimiter, path)
    rows = csv.reader(text.splitlines(), delimiter=sep, skipinitialspace=sep == " ")
    return [row for row in rows if row and any(cell.strip() for cell in row)]


def read_data_csv(
    path: Path, header: bool | None = None, delimiter: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """Read an ``(n, d)`` numeric table; the first row is a header if ``header`` (``None``:
    if any of its cells is not a number); fields are separated by ``delimiter`` (see
    :func:`delimiter_of`; ``None``: sniffed). Raises :class:`CLIInputError` with the
    position of the first bad cell."""
    rows = _read_rows(path, delimiter)
    if not rows:
        raise CLIInputError(f"{path} is empty")
    first = [cell.strip() for cell in rows[0]]
    if header is None:
        header = not all(_is_number(cell) for cell in first)
    if header:
        names, body, offset = first, rows[1:], 2
        if len(set(names)) != len(names) or any(not name for name in names):
            raise CLIInputError(f"{path}: the header names must be distinct and non-empty")
    else:
        names, body, offset = [f"X{k}" for k in range(len(first))], rows, 1
    d = len(names)
    if not body:
        raise CLIInputError(f"{path} has no data rows")
    X = np.empty((len(body), d))
    for r, row in enumerate(body):
        if len(row) != d:
            raise CLIInputError(f"{path} line {r + offset}: {len(row)} fields, expected {d}")
        for c, cell in enumerate(row):
            try:
                X[r, c] = float(cell)
            except ValueError:
                raise CLIInputError(
                    f"{path} line {r + offset}, column {names[c]!r}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(X[r, c]):
                raise CLIInputError(
                    f"{path} line {r + offset}, column {names[c]!r}: {cell.strip()} (NaN or inf)"
                )
    return X, names


def write_matrix_csv(path: Path, W: np.ndarray, names: list[str], force: bool) -> None:
    """Adjacency matrix with the node names as header and first column (row = cause);
    ``\n`` line endings."""
    with open_output(path, force) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["", *names])
        for name, row in zip(names, W, strict=True):
            writer.writerow([name, *(repr(float(w)) for w in row)])


def read_matrix_csv(path: Path, names: list[str], delimiter: str | None = None) -> np.ndarray:
    """Read an adjacency matrix written by :func:`write_matrix_csv` (or a bare ``d x d``
    table; the separator sniffed unless given) and check it has the given nodes."""
    rows = _read_rows(path, delimiter)
    d = len(names)
    if rows and len(rows[0]) == d + 1 and not _is_number(rows[0][1]):
        cols = [c.strip() for c in rows[0][1:]]
        if cols != names:
            raise CLIInputError(f"{path}: node names {cols} differ from the data's {names}")
        rows = [row[1:] for row in rows[1:]]
    try:
        B = np.array(rows, dtype=float)
    except ValueError:
        raise CLIInputError(f"{path} is not a numeric {d} x {d} adjacency matrix") from None
    if B.shape != (d, d):
        raise CLIInputError(f"{path}: adjacency of shape {B.shape}, the data have {d} nodes")
    return B


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


class _Progress:
    """tqdm bars on stderr, one per phase of the fit (initial order, search, pruning,
    bootstrap), fed by :class:`~bilevel.dag.topo.TopoSearch`'s ``progress`` hook; the search
    bar counts model fits (or outer iterations), so it advances with the work."""

    LABELS: typing.ClassVar[dict[str, str]] = {
        "init": "initial order",
        "search": "TOPO search",
        "prune": "pruning",
        "bootstrap": "bootstrap fits",
    }

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            unit = "fit" if phase in ("search", "bootstrap") else "step"
            bar = self.bars[phase] = tqdm(
                desc=self.LABELS.get(phase, phase), total=total, unit=unit, leave=False
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _fit_topo(X: np.ndarray, options: dict, prior: _Prior, progress: bool):
    from bilevel.dag.topo import TopoSearch
    from bilevel.errors import ConvergenceWarning

    bar = _Progress(progress)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est = TopoSearch(**options, progress=bar).fit(X, **prior)
    finally:
        bar.close()
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            _info(f"Warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return est


class _Prior(TypedDict):
    """Prior knowledge as keywords of :meth:`TopoSearch.fit` and :func:`prior_knowledge`."""

    required: list[tuple[int, int]]
    forbidden: list[tuple[int, int]]
    tiers: np.ndarray | None


def _parse_edges(specs: list[str], names: list[str], option: str) -> list[tuple[int, int]]:
    """``"A->B"`` (node names or 0-based indices) -> index pairs, errors naming ``option``."""
    index = {name: k for k, name in enumerate(names)}
    edges = []
    for spec in specs:
        for part in spec.split(","):
            if not part.strip():
                continue
            if "->" not in part:
                raise CLIInputError(f"{option} {part!r}: write an edge as CAUSE->EFFECT")
            ends = [_node(x.strip(), index, len(names), option) for x in part.split("->", 1)]
            if ends[0] == ends[1]:
                raise CLIInputError(f"{option} {part!r}: a node cannot be its own parent")
            edges.append((ends[0], ends[1]))
    return edges


def _node(text: str, index: dict, d: int, option: str) -> int:
    if text in index:
        return index[text]
    if text.isdigit() and int(text) < d:
        return int(text)
    raise CLIInputError(f"{option}: unknown node {text!r}; the nodes are {', '.join(index)}")


def _parse_tiers(specs: list[str], names: list[str]) -> np.ndarray | None:
    """``--tier A,B --tier C``: tier 0 holds A and B, tier 1 C; unlisted nodes go last."""
    if not specs:
        return None
    index = {name: k for k, name in enumerate(names)}
    tiers = np.full(len(names), len(specs), dtype=int)
    seen: set[int] = set()
    for t, spec in enumerate(specs):
        for part in spec.split(","):
            if not part.strip():
                continue
            k = _node(part.strip(), index, len(names), "--tier")
            if k in seen:
                raise CLIInputError(f"--tier: node {names[k]!r} is in two tiers")
            seen.add(k)
            tiers[k] = t
    return tiers


def _scaling_warnings(
    X_fit: np.ndarray, W: np.ndarray, score: str, standardized: bool
) -> list[str]:
    """When the data's scaling makes the chosen score unreliable, say so."""
    from bilevel.dag.diagnostics import var_sortability

    out = []
    equal_variance = score in ("ls", "gam", "mlp")
    if equal_variance and standardized:
        out.append(
            f"the {score!r} score assumes equal noise variances, which standardizing the "
            "columns breaks: the order it finds is not identified (Reisach et al. 2021); "
            "prefer --no-standardize or --score nv"
        )
    if W.any():
        vs = var_sortability(X_fit, W)
        if equal_variance and vs >= 0.9 and not standardized:
            out.append(
                f"var-sortability of the learned graph is {vs:.2f}: its edges follow the "
                "columns' marginal variances, so rescaling a variable (a change of units) "
                "could change the graph"
            )
    sd = X_fit.std(axis=0)
    ratio = float(sd.max() / sd.min())
    if equal_variance and not standardized and ratio > 100:
        out.append(
            f"column standard deviations differ by a factor {ratio:.3g}: the {score!r} score "
            "compares residual variances in these units"
        )
    return out


def _edges_json(W: np.ndarray, names: list[str], stability: np.ndarray | None) -> list[dict]:
    out = []
    for i, j in zip(*np.nonzero(W), strict=True):
        rec = {"source": names[i], "target": names[j], "weight": float(W[i, j])}
        if stability is not None:
            rec["stability"] = float(stability[i, j])
        out.append(rec)
    return out


@app.command("fit")
def fit(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="CSV file, one column per variable (optional header row of node names).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--graph",
            "--out",
            help="Write the weighted adjacency matrix (CSV) here. Default: graph.csv when "
            "neither --output nor --plot is given.",
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the learned graph (PNG, PDF, SVG).")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            "--json",
            help="Write the JSON result: the edge list (weights, bootstrap stability), the "
            "metrics and the settings.",
        ),
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            "--delimiter",
            help="Field separator of DATA and --truth: , ; tab | or space (default: detected).",
        ),
    ] = None,
    sachs: Annotated[
        bool,
        typer.Option(
            "--sachs/--no-sachs",
            help="Use the bundled Sachs et al. (2005) observational data (853 x 11, raw "
            "intensities unless --standardize) instead of DATA and score the result against "
            "its 18-edge consensus network.",
        ),
    ] = False,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="CSV adjacency matrix of the true graph (as written by `simulate`): print "
            "SHD, CPDAG-level SHD, TPR, FDR.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            "--score",
            help="ls: least squares (equal noise variances); nv: Gaussian likelihood with "
            "non-equal variances; logistic: binary data; gam: additive splines (equal "
            "variances); gam-nv: additive splines, one noise variance per node (scale-free); "
            "mlp: one MLP per node (nonlinear, equal variances).",
        ),
    ] = "ls",
    l1: Annotated[
        float | None,
        typer.Option("--l1", help="L1 penalty of the score (default: the score's own)."),
    ] = None,
    l2: Annotated[
        float | None,
        typer.Option("--l2", help="L2 penalty of the score (ls, logistic, gam, mlp)."),
    ] = None,
    w_threshold: Annotated[
        float, typer.Option("--w-threshold", help="Drop edges with |weight| below this.")
    ] = 0.3,
    prune: Annotated[
        str,
        typer.Option(
            "--prune",
            help="auto, bic (backward BIC elimination per node before the threshold) or none.",
        ),
    ] = "auto",
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help="Required edge CAUSE->EFFECT (names or 0-based indices; "
            "repeat or separate by commas).",
        ),
    ] = None,
    forbid: Annotated[
        list[str] | None,
        typer.Option("--forbid", help="Forbidden edge CAUSE->EFFECT (repeatable)."),
    ] = None,
    tier: Annotated[
        list[str] | None,
        typer.Option(
            "--tier",
            help="Comma-separated nodes of the next tier (repeat, earliest "
            "first); no edge points to an earlier tier; unlisted nodes come last.",
        ),
    ] = None,
    bootstrap: Annotated[
        int,
        typer.Option("--bootstrap", min=0, help="Bootstrap refits for edge stability."),
    ] = 0,
    jobs: Annotated[
        int | None, typer.Option("--jobs", help="joblib workers for --bootstrap (-1: all).")
    ] = None,
    standardize: Annotated[
        bool,
        typer.Option(
            "--standardize/--no-standardize",
            help="Scale each column to zero mean and unit variance first (breaks the equal-"
            "variance assumption of ls, gam and mlp).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the search.")] = 0,
    header: Annotated[
        bool | None,
        typer.Option(
            "--header/--no-header",
            help="Whether DATA's first row holds node names (default: detected).",
        ),
    ] = None,
    force: ForceOption = False,
    progress: ProgressOption = True,
    quiet: QuietOption = False,
) -> None:
    """Learn a DAG from data with TOPO and write its weighted adjacency matrix.

    Exit status: 0 on success, 2 for invalid input, 3 when the search stopped before a
    local optimum (the results are still written, with a warning).
    """
    from bilevel.dag.metrics import count_accuracy, is_dag, shd_cpdag

    if score not in SCORES:
        _fail(f"--score must be one of {', '.join(SCORES)}, got {score!r}")
    if prune not in ("auto", "bic", "none"):
        _fail(f"--prune must be auto, bic or none, got {prune!r}")
    from bilevel.dag.scores import make_score

    penalties = {k: v for k, v in (("l1", l1), ("l2", l2)) if v is not None}
    try:
        score_obj = make_score(score, **penalties)
    except (TypeError, ValueError) as err:
        _fail(f"--score {score} with {', '.join(f'--{k}' for k in penalties)}: {err}")
    if not (math.isfinite(w_threshold) and w_threshold >= 0):
        _fail(f"--w-threshold must be a nonnegative number, got {w_threshold}")
    if prune == "bic" and not score_obj.supports_pruning:
        _fail(f"--prune bic needs --score ls, nv or gam without --l1, got --score {score}")
    if sachs == (data is not None):
        _fail("give either a DATA file or --sachs (exactly one)")
    if out is None and plot is None and json_out is None:
        out = Path("graph.csv")
    named = {"--graph": out, "--plot": plot, "--output": json_out}
    outputs = [p for p in named.values() if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        _fail("--graph, --plot and --output must be different files")
    if data is not None and any(p.resolve() == data.resolve() for p in outputs):
        _fail("the output files must differ from the DATA file (even with --force)")
    if plot is not None and plot.suffix.lower().lstrip(".") not in _plot_formats():
        _fail(f"--plot: unsupported format {plot.suffix!r}; use one of .png, .pdf, .svg")
    for option, path in named.items():
        check_output(path, force, option)
    progress = progress and not quiet

    B_true = None
    try:
        if data is None:  # --sachs (exactly one of the two, checked above)
            from bilevel.dag.datasets import load_sachs

            X, B_true, names = load_sachs(standardize=False)
            source = "Sachs et al. (2005), 853 observational cells"
        else:
            X, names = read_data_csv(data, header, delimiter)
            source = str(data)
        if standardize:
            std = X.std(axis=0)
            if np.any(std == 0):
                const = [names[k] for k in np.flatnonzero(std == 0)]
                raise CLIInputError(f"constant column(s) {const} cannot be standardized")
            X = (X - X.mean(axis=0)) / std
        if truth is not None:
            B_true = read_matrix_csv(truth, names, delimiter)
        prior = _Prior(
            required=_parse_edges(require or [], names, "--require"),
            forbidden=_parse_edges(forbid or [], names, "--forbid"),
            tiers=_parse_tiers(tier or [], names),
        )
        from bilevel.dag.prior import prior_knowledge

        prior_knowledge(len(names), **prior)
    except (CLIInputError, OSError) as exc:
        _fail(str(exc))
    except ValueError as exc:  # contradictory prior knowledge
        _fail(f"--require/--forbid/--tier: {exc}")

    n, d = X.shape
    if not quiet:
        _info(f"{source}: {n} samples, {d} variables; TOPO with the {score!r} score")
    options = {
        "score": score_obj,
        "w_threshold": w_threshold,
        "random_state": seed,
        "prune": prune,
        "n_bootstrap": bootstrap,
        "n_jobs": jobs,
    }
    start = time.perf_counter()
    try:
        est = _fit_topo(X, options, prior, progress)
    except ValueError as exc:  # bad data for the score: NaN, constant column, n < d, ...
        _fail(str(exc))
    elapsed = time.perf_counter() - start
    W = np.asarray(est.adjacency_, dtype=float)
    if not is_dag(W):  # the estimator guarantees it; never write a cyclic graph silently
        _fail("internal error: the learned graph is not acyclic")

    metrics: dict[str, Any] = {
        "edges": int((W != 0).sum()),
        "score": float(est.score_),
        "outer_iterations": int(est.n_iter_),
        "converged": bool(est.converged_),
        "kkt_violation": float(est.kkt_violation_),
        "time_s": elapsed,
    }
    lines = [
        f"edges: {metrics['edges']}",
        f"score: {float(est.score_):.8g}",
        f"outer iterations: {est.n_iter_}",
        f"time: {elapsed:.2f} s",
    ]
    from bilevel.dag.diagnostics import var_sortability

    if B_true is not None:
        acc = count_accuracy(B_true, W)
        metrics.update(acc)
        truth_name = "the 18-edge consensus network" if sachs else str(truth)
        line = (
            f"against {truth_name}: SHD {acc['shd']}, TPR {acc['tpr']:.3f}, "
            f"FDR {acc['fdr']:.3f}, FPR {acc['fpr']:.3f}, {acc['nnz']} predicted edges"
        )
        if is_dag(B_true):
            metrics["shd_cpdag"] = shd_cpdag(B_true, W)
            metrics["var_sortability_truth"] = var_sortability(X, B_true)
            line += f"; CPDAG-level SHD {metrics['shd_cpdag']}"
        lines.append(line)
    if W.any():
        metrics["var_sortability"] = var_sortability(X, W)
    stability = est.edge_stability_
    if stability is not None:
        stable = [
            f"{names[i]}->{names[j]} {stability[i, j]:.2f}"
            for i, j in zip(*np.nonzero(W), strict=True)
        ]
        lines.append(f"bootstrap stability ({bootstrap} fits): " + ", ".join(stable))
        metrics["n_bootstrap"] = bootstrap
    for message in _scaling_warnings(X, W, score, standardize):
        _info(f"Warning: {message}")

    written = []
    if out is not None:
        write_matrix_csv(out, W, names, force)
        written.append(str(out))
    if json_out is not None:
        payload = {
            "nodes": names,
            "edges": _edges_json(W, names, stability),
            "order": [names[k] for k in est.order_],
            "metrics": metrics,
            "settings": {
                "data": source,
                "score": repr(score_obj),
                "w_threshold": w_threshold,
                "prune": prune,
                "standardize": standardize,
                "seed": seed,
                "required": [[names[i], names[j]] for i, j in prior["required"]],
                "forbidden": [[names[i], names[j]] for i, j in prior["forbidden"]],
                "tiers": None if prior["tiers"] is None else prior["tiers"].tolist(),
            },
        }
        if stability is not None:
            payload["stability"] = [
                {"source": names[i], "target": names[j], "frequency": float(stability[i, j])}
                for i, j in zip(*np.nonzero(stability), strict=True)
            ]
        text = json.dumps(payload, indent=2, allow_nan=False)
        with open_output(json_out, force) as f:
            f.write(text + "\n")
        written.append(str(json_out))
    if plot is not None:
        from bilevel.dag.plotting import plot_graph

        title = f"TOPO ({score}) on {'Sachs' if sachs else Path(source).name}"
        plot_graph(W, names, B_true=B_true, title=title, path=plot, stability=stability)
        written.append(str(plot))
    for line in lines:
        typer.echo(line)
    typer.echo(f"written: {', '.join(written)}")
    if not est.converged_:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _plot_formats() -> set[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------


@app.command("simulate")
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Data CSV to write.")] = Path("data.csv"),
    graph_out: Annotated[
        Path, typer.Option("--graph-out", help="CSV of the true weighted adjacency matrix.")
    ] = Path("true_graph.csv"),
    nodes: Annotated[int, typer.Option("--nodes", "-d", min=2, help="Number of variables.")] = 10,
    edges: Annotated[
        int, typer.Option("--edges", "-s", min=0, help="Expected number of edges (ERk: k*d).")
    ] = 20,
    graph: Annotated[str, typer.Option("--graph", help="ER or SF.")] = "ER",
    samples: Annotated[int, typer.Option("--samples", "-n", min=1)] = 1000,
    noise: Annotated[str, typer.Option("--noise", help="gauss, exp, gumbel or uniform.")] = "gauss",
    sem: Annotated[str, typer.Option("--sem", help="linear, or mlp (nonlinear).")] = "linear",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    force: ForceOption = False,
) -> None:
    """Simulate SEM data from a random DAG (header X0, X1, ...) and write its true graph."""
    from bilevel.dag.simulate import (
        simulate_dag,
        simulate_linear_sem,
        simulate_nonlinear_sem,
        simulate_parameter,
    )

    if out.resolve() == graph_out.resolve():
        _fail("--out and --graph-out must be different files")
    if sem not in ("linear", "mlp"):
        _fail(f"--sem must be 'linear' or 'mlp', got {sem!r}")
    if sem == "mlp" and noise != "gauss":
        _fail("--sem mlp supports only --noise gauss")
    if graph not in ("ER", "SF"):
        _fail(f"--graph must be ER or SF, got {graph!r}")
    if noise not in ("gauss", "exp", "gumbel", "uniform"):
        _fail(f"--noise must be gauss, exp, gumbel or uniform, got {noise!r}")
    if graph == "ER" and edges > nodes * (nodes - 1) // 2:
        _fail(f"--edges {edges} exceeds the {nodes * (nodes - 1) // 2} possible edges of "
              f"--nodes {nodes}")  # fmt: skip
    if graph == "SF" and not 1 <= round(edges / nodes) < nodes:
        _fail(f"--graph SF attaches round(--edges / --nodes) edges per node, which must be in "
              f"[1, --nodes); got --edges {edges}, --nodes {nodes}")  # fmt: skip
    check_output(out, force, "--out")
    check_output(graph_out, force, "--graph-out")
    rng = np.random.default_rng(seed)
    try:
        B = simulate_dag(nodes, edges, graph, rng)
        if sem == "linear":
            W = simulate_parameter(B, rng=rng)
            X = simulate_linear_sem(W, samples, noise, rng=rng)
        else:
            W = B
            X = simulate_nonlinear_sem(B, samples, "mlp", rng=rng)
    except ValueError as exc:
        _fail(str(exc))
    names = [f"X{k}" for k in range(nodes)]
    with open_output(out, force) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[repr(float(v)) for v in row] for row in X])
    write_matrix_csv(graph_out, W, names, force)
    typer.echo(
        f"{samples} samples of {nodes} variables, {int(B.sum())} true edges ({graph}, {sem} SEM, "
        f"{noise} noise); written: {out}, {graph_out}"
    )
