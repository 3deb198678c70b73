"""The command line's shared conventions, and run folders for ``bilevel run``.

Conventions of every command that computes something (``run``, ``demo``, ``dag fit``,
``robust ...``):

* ``-o/--output PATH`` writes a JSON result with the metrics (or, for a command that writes
  several files, a folder); ``--force`` allows replacing an existing output, which is
  otherwise a usage error (:func:`check_output`, exit code 2); files are opened by
  :func:`open_output` (exclusive creation without ``force``, ``\n`` line endings);
* ``--seed INT``, ``--quiet`` (no progress bars, no chatter), boolean ``--flag/--no-flag``;
* exit codes :data:`EXIT_OK`, :data:`EXIT_FAILURE`, :data:`EXIT_USAGE`,
  :data:`EXIT_NOT_CONVERGED`, :data:`EXIT_TIME_LIMIT`, chosen by :func:`exit_code`;
* error messages name the command-line options (:func:`fail`).

Without ``force`` nothing here overwrites: a run folder is created with :func:`os.mkdir`
(which fails if the name exists; the next suffix ``-1``, ``-2``, ... is tried) and files
are opened in exclusive-creation mode (``"x"``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import typer

#: Success.
EXIT_OK = 0
#: Unexpected failure, infeasible or unbounded instance, error.
EXIT_FAILURE = 1
#: Usage error or bad input (typer's own code for bad options).
EXIT_USAGE = 2
#: Finished without converging: a :class:`~bilevel.errors.ConvergenceWarning`, or
#: ``converged: False`` in the metrics. The results are still printed and written.
EXIT_NOT_CONVERGED = 3
#: Stopped by a time limit (a result with status ``"time_limit"``), results written.
EXIT_TIME_LIMIT = 4


#: ``--force/--no-force``, ``--quiet/--no-quiet`` (``-q``) and ``--progress/--no-progress``,
#: the same on every command (``def cmd(force: ForceOption = False, ...)``).
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force/--no-force", help="Overwrite existing outputs (otherwise an error, exit 2)."
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet/--no-quiet", "-q", help="No progress bars, no notes (results still printed)."
    ),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars (on stderr).")
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code`` (default: usage error)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def exit_code(
    status: str | None = None, converged: bool | None = None, warnings: Sequence[str] = ()
) -> int:
    """The exit code of a finished computation: :data:`EXIT_FAILURE` when ``status`` is
    ``"infeasible"``, ``"unbounded"`` or ``"error"``; :data:`EXIT_TIME_LIMIT` when it is
    ``"time_limit"``; :data:`EXIT_NOT_CONVERGED` when it is ``"max_iterations"`` or
    ``"stalled"``, ``converged`` is ``False`` or there were convergence ``warnings``;
    :data:`EXIT_OK` otherwise."""
    if status in ("infeasible", "unbounded", "error"):
        return EXIT_FAILURE
    if status == "time_limit":
        return EXIT_TIME_LIMIT
    if status in ("max_iterations", "stalled") or converged is False or warnings:
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def check_output(path: Path | None, force: bool, option: str = "--output") -> None:
    """Usage error (exit 2) naming ``option`` when ``path`` exists and not ``force``, or
    when its folder does not exist. A folder output counts as existing when not empty."""
    if path is None:
        return
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if exists and not force:
        fail(f"{option} {path} exists; choose another name or pass --force to overwrite it")
    if not path.parent.exists():
        fail(f"{option}: directory {path.parent} does not exist")


def open_output(path: Path, force: bool, binary: bool = False) -> IO[Any]:
    """Open ``path`` for writing: replace it only if ``force`` (exclusive creation
    otherwise, so a file that appeared meanwhile is never clobbered); text files get
    ``\n`` line endings on every platform (``newline=""`` for the csv module)."""
    mode = ("w" if force else "x") + ("b" if binary else "")
    if binary:
        return open(path, mode)
    return open(path, mode, newline="", encoding="utf-8")


_PACKAGES = (
    "bilevel",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "typer",
    "tqdm",
    "threadpoolctl",
)


def timestamp(now: datetime.datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS`` in local time (the run-folder suffix)."""
    return (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")


def make_run_dir(output_dir: Path, recipe: str, stamp: str, max_tries: int = 10_000) -> Path:
    """Create and return a new folder ``output_dir/<recipe>-<stamp>[-n]``, never reusing one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    base = f"{recipe}-{stamp}"
    for n in range(max_tries):
        candidate = output_dir / (base if n == 0 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free run folder name {base}[-n] in {output_dir}")


def versions() -> dict[str, str | None]:
    """Versions of Python, the platform and the packages a result depends on."""
    out: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(
    path: Path, payload: Mapping[str, Any], force: bool = False, option: str = "--output"
) -> None:
    """Write ``payload`` as strict JSON (no NaN) to a file that must not exist yet (unless
    ``force``); a file that appeared while computing is a usage error naming ``option``."""
    text = json.dumps(payload, indent=2, allow_nan=False, sort_keys=False)
    try:
        with open_output(path, force) as f:
            f.write(text + "\n")
    except FileExistsError:
        fail(f"{option} {path} exists; choose another name or pass --force to overwrite it")


_REFERENCE_STYLES = (("tab:red", "--"), ("tab:purple", ":"), ("tab:brown", "-."), ("black", "--"))


def plot_convergence(
    path: Path,
    title: str,
    history: Mapping[str, Sequence[float | None]],
    panels: Sequence[str | Sequence[str]],
    reference_lines: Mapping[str, Mapping[str, float]] | None = None,
    force: bool = False,
) -> None:
    """One panel per entry of ``panels`` (a history key, or several keys drawn together)
    against the outer iteration, with ``reference_lines[key]`` (horizontal, each panel's in
    distinct colours and dashes, named in the legend); every axis labelled; saved as PNG by
    Matplotlib's Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = [[panel] if isinstance(panel, str) else list(panel) for panel in panels]
    groups = [[k for k in group if k in history] for group in groups]
    groups = [group for group in groups if group]
    reference_lines = reference_lines or {}
    n = max(len(groups), 1)
    fig = Figure(figsize=(4.2 * n, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, n, i + 1)
        finite: list[float] = []
        n_lines = 0  # reference lines drawn on this panel, each in its own style
        for key in group:
            values = [math.nan if v is None else float(v) for v in history[key]]
            iterations: list[Any] = list(history.get("iteration", range(len(values))))
            ax.plot(iterations, values, marker="o", markersize=2.5, linewidth=1.2, label=key)
            finite += [v for v in values if math.isfinite(v)]
            for label, value in reference_lines.get(key, {}).items():
                if value is not None and math.isfinite(value):
                    color, style = _REFERENCE_STYLES[n_lines % len(_REFERENCE_STYLES)]
                    ax.axhline(value, color=color, linestyle=style, linewidth=1.2, label=label)
                    n_lines += 1
        if all(k.endswith("norm") for k in group) and finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("outer iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(axis_label(group))
        ax.grid(True, alpha=0.3)
        if len(group) > 1 or any(reference_lines.get(k) for k in group):
            ax.legend(fontsize="small")
    fig.suptitle(title)
    with open_output(path, force, binary=True) as f:
        fig.savefig(f, format="png", dpi=110)


def axis_label(keys: Sequence[str]) -> str:
    """The y label of a panel drawing ``keys``: the key itself, the words all keys end
    with (``val_accuracy``, ``test_accuracy`` -> ``accuracy``), or the keys joined."""
    if len(keys) == 1:
        return keys[0].replace("_", " ")
    words = [k.split("_") for k in keys]
    common: list[str] = []
    while (
        all(len(w) > len(common) for w in words) and len({w[-1 - len(common)] for w in words}) == 1
    ):
        common.insert(0, words[0][-1 - len(common)])
    return " ".join(common) if common else ", ".join(keys)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Aligned ``name  value`` lines."""
    width = max((len(k) for k in metrics), default=0)
    lines = []
    for key, value in metrics.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            shown = "nan"
        elif isinstance(value, float):
            shown = f"{value:.6g}"
        else:
            shown = str(value)
        lines.append(f"  {key.ljust(width)}  {shown}")
    return "\n".join(lines)


def relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)
