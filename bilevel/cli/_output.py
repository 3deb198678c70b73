"""Run folders, ``result.json`` and ``convergence.png`` for ``bilevel run``.

Nothing here ever overwrites: a run folder is created with :func:`os.mkdir` (which fails if
the name exists; the next suffix ``-1``, ``-2``, ... is tried) and files are opened in
exclusive-creation mode (``"x"``).
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
from typing import Any

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


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as strict JSON (no NaN) to a file that must not exist yet."""
    text = json.dumps(payload, indent=2, allow_nan=False, sort_keys=False)
    with open(path, "x", encoding="utf-8") as f:
        f.write(text + "\n")


def plot_convergence(
    path: Path,
    title: str,
    history: Mapping[str, Sequence[float | None]],
    panels: Sequence[str | Sequence[str]],
    reference_lines: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """One panel per entry of ``panels`` (a history key, or several keys drawn together)
    against the outer iteration, with dashed ``reference_lines[key]``; saved as PNG by
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
        for key in group:
            values = [math.nan if v is None else float(v) for v in history[key]]
            iterations = list(history.get("iteration", range(len(values))))
            ax.plot(iterations, values, marker="o", markersize=2.5, linewidth=1.2, label=key)
            finite += [v for v in values if math.isfinite(v)]
            for label, value in reference_lines.get(key, {}).items():
                if value is not None and math.isfinite(value):
                    ax.axhline(value, color="tab:red", linestyle="--", linewidth=1.0, label=label)
        if all(k.endswith("norm") for k in group) and finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("outer iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(group) == 1:
            ax.set_ylabel(group[0])  # several keys: the legend names them
        ax.grid(True, alpha=0.3)
        if len(group) > 1 or any(reference_lines.get(k) for k in group):
            ax.legend(fontsize="small")
    fig.suptitle(title)
    with open(path, "xb") as f:
        fig.savefig(f, format="png", dpi=110)


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
