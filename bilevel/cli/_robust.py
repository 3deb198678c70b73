"""``bilevel robust ...`` commands: ``solve``, ``train``, ``instances`` and ``generate``.

``bilevel robust solve INSTANCE [--method exact|neur2ro] [--time-limit S] [-o RESULT.json]
[--plot BOUNDS.png] [--model MODEL.pt] [--solver highs|scip] [--seed N] [--jobs N]
[--force] [--quiet]`` reads a JSON instance (``.json``, schema in ``docs/formats.md``), an
Arslan-Detienne knapsack file (anything else) or, when no such file exists, the bundled
published instance of that name (``bilevel robust instances``); it prints one line per
iteration (the bounds it has), the result (worst-case scenario and second-stage decision of
the returned first stage included; the published optimum for a bundled instance), writes
the result as strict JSON with a ``metrics`` table (numbers or ``null``, never ``NaN``) and
plots the bounds against the iterations.

``bilevel robust train -o MODEL.pt [--problem knapsack|capital-budgeting] [--n N] ...
[--metrics TRAIN.json] [--jobs N]`` trains one Neur2RO value model for a class of generated
instances (the paper's use: train once, then ``robust solve INSTANCE --method neur2ro
--model MODEL.pt``); the model file records its training settings.

``bilevel robust generate knapsack|capital-budgeting ... -o FILE.json`` writes a random
instance.

Conventions (the same as every ``bilevel`` command): ``-o/--output`` (``--out`` is the
older name), ``--force`` to replace an existing output (otherwise a usage error, exit 2),
``--seed``, ``--quiet/--no-quiet`` (no progress bars on stderr, no per-iteration lines;
results still printed), boolean ``--flag/--no-flag``. Exit codes: 0 success (``optimal``,
or ``heuristic`` for Neur2RO); 1 infeasible or unbounded instance, or a failure; 2 usage or
bad input; 3 not converged (``max_iterations``, ``stalled``, or a convergence warning);
4 time limit (status ``time_limit``). The result is printed and written in every case.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bilevel.cli._output import (
    EXIT_FAILURE,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    EXIT_TIME_LIMIT,
    ForceOption,
    QuietOption,
    check_output,
    exit_code,
    fail,
    open_output,
    write_json,
)

app = typer.Typer(
    name="robust",
    help="Two-stage robust optimization: solve instances, train Neur2RO models, generate "
    "instances.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
generate_app = typer.Typer(
    name="generate", help="Write a random instance (JSON).", no_args_is_help=True
)
app.add_typer(generate_app, name="generate")

PLOT_FORMATS = ("png", "pdf", "svg")

# Options shared by the commands (one definition, one help text).
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Jobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "--n-jobs",
        help="Parallel labelling workers (joblib; -1: all cores). Neur2RO training only.",
    ),
]


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _vector(values: Any) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _iteration_line(row: dict[str, Any]) -> str:
    """One progress line with the quantities the row has (no ``nan`` fields)."""
    parts = [f"iter {int(row.get('iteration', 0)):4d}"]
    for key, label, width in (
        ("lower_bound", "LB", 12),
        ("upper_bound", "UB", 12),
        ("predicted_adversarial", "predicted", 0),
        ("gap", "gap", 10),
    ):
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            parts.append(f"{label} {_fmt(float(value)):>{width}}")
    parts.append(f"time {float(row.get('time', 0.0)):.2f}s")
    return "  ".join(parts)


def _check_plot(plot: Path | None, force: bool) -> None:
    if plot is None:
        return
    suffix = plot.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        fail(f"--plot must end in one of .{', .'.join(PLOT_FORMATS)}, got {plot.name!r}")
    check_output(plot, force, "--plot")


def plot_bounds(
    path: Path, result: Any, sense: str, published: float | None, force: bool = False
) -> None:
    """Bounds (and Neur2RO's predictions) against the iterations, in the instance's sense,
    with the exact worst case of the returned ``x`` and the published optimum as lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = result.history
    it = list(history.get("iteration", []))
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = (
        ("upper_bound", "upper bound", "tab:blue", "-"),
        ("lower_bound", "lower bound", "tab:orange", "-"),
        ("predicted_adversarial", "network's worst-case estimate", "tab:purple", ":"),
    )
    for key, label, color, style in curves:
        values = [math.nan if v is None else float(v) for v in history.get(key, [])]
        if any(math.isfinite(v) for v in values):
            ax.plot(it, values, style, marker="o", markersize=3, color=color, label=label)
    if math.isfinite(result.objective):
        ax.axhline(
            result.objective,
            color="tab:green",
            linestyle="--",
            linewidth=1.0,
            label="exact worst case of returned x",
        )
    if published is not None and math.isfinite(published):
        ax.axhline(
            published, color="tab:red", linestyle="-.", linewidth=1.0, label="published optimum"
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("worst-case " + ("profit (max)" if sense == "max" else "cost (min)"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    gap = f", gap {result.gap:.2e}" if math.isfinite(result.gap) else ""
    ax.set_title(f"{result.method}: status {result.status}{gap}", fontsize="medium")
    with open_output(path, force, binary=True) as fh:
        fig.savefig(fh, format=path.suffix.lower().lstrip("."), dpi=110)


@app.command("solve")
def solve_command(
    instance: Annotated[
        Path,
        typer.Argument(
            help="Instance file (.json or a knapsack file) or a bundled instance name "
            "(see 'bilevel robust instances')."
        ),
    ],
    method: Annotated[str, typer.Option(help="exact (CCG) or neur2ro.")] = "exact",
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="Seconds for the whole solve.")
    ] = None,
    max_iter: Annotated[
        int | None,
        typer.Option(
            "--max-iter", min=1, help="Most iterations (CCG masters, Neur2RO main problems)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", "--out", help="Write the result and metrics as JSON."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Plot the bounds against the iterations (.png/.pdf/.svg)."),
    ] = None,
    quiet: QuietOption = False,
    force: ForceOption = False,
    seed: Seed = 0,
    solver: Annotated[
        str, typer.Option(help="MILP solver of the exact method: highs or scip (optional).")
    ] = "highs",
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Neur2RO: a value model saved by 'bilevel robust train' (default: train "
            "one on the instance itself, with --seed and --jobs).",
        ),
    ] = None,
    jobs: Jobs = 1,
    warm_start: Annotated[
        bool,
        typer.Option(
            "--warm-start/--no-warm-start",
            help="Exact method: MIP-start each master at the incumbent.",
        ),
    ] = True,
    dual_bound: Annotated[
        float | None,
        typer.Option(
            "--dual-bound",
            help="Exact method, continuous recourse under constraint uncertainty: bound on "
            "the recourse duals of the KKT adversary (default: scaled from the data).",
        ),
    ] = None,
) -> None:
    """Solve a two-stage robust instance; print its progress and result."""
    import warnings

    from bilevel.errors import BilevelError, ConvergenceWarning
    from bilevel.robust import (
        METHODS,
        InstanceFormatError,
        load_instance,
        load_published_knapsack,
        published_knapsack_names,
        published_knapsack_result,
        solve,
    )

    if method not in METHODS:
        fail(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if time_limit is not None and not (time_limit > 0):
        fail("--time-limit must be positive")
    if solver not in ("highs", "scip"):
        fail(f"--solver must be highs or scip, got {solver!r}")
    check_output(output, force)
    _check_plot(plot, force)
    if output is not None and plot is not None and output.resolve() == plot.resolve():
        fail("--output and --plot must be different files")
    options: dict[str, Any] = {"progress": not quiet}
    if method == "exact":
        options.update(solver=solver, warm_start=warm_start)
        if dual_bound is not None:
            if not (dual_bound > 0 and math.isfinite(dual_bound)):
                fail("--dual-bound must be a positive finite number")
            options["dual_bound"] = dual_bound
    else:
        if dual_bound is not None:
            fail("--dual-bound applies to --method exact only")
        if jobs == 0:
            fail("--jobs must be a nonzero integer (-1: all cores)")
        options["seed"] = seed
    if model is not None:
        if method != "neur2ro":
            fail("--model applies to --method neur2ro only")
        if not model.is_file():
            fail(f"no model file {model}")
        options["model"] = model
    elif method == "neur2ro" and jobs != 1:
        options["n_jobs"] = jobs
    published = None
    if not instance.exists() and str(instance) in published_knapsack_names():
        problem = load_published_knapsack(str(instance))
        published = published_knapsack_result(str(instance))
    else:
        try:
            problem = load_instance(instance)
        except FileNotFoundError as err:
            fail(f"{err} (nor is it a bundled instance name: see 'bilevel robust instances')")
        except InstanceFormatError as err:
            fail(f"malformed instance: {err}")
    if not quiet:
        typer.echo(
            f"{problem.name or instance.name}: n_x={problem.n_x} n_y={problem.n_y} "
            f"n_xi={problem.n_xi} sense={problem.sense} method={method}"
        )

    def progress(row: dict[str, Any]) -> None:
        if not quiet:
            typer.echo(_iteration_line(row))

    options["callback"] = progress
    if time_limit is not None:
        options["time_limit"] = time_limit
    if max_iter is not None:
        options["max_iter" if method == "exact" else "max_iterations"] = max_iter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            result = solve(problem, method=method, **options)
        except NotImplementedError as err:
            fail(str(err), EXIT_FAILURE)
        except BilevelError as err:  # e.g. no KKT point within --dual-bound
            fail(str(err), EXIT_FAILURE)
        except ValueError as err:  # e.g. a saved model for another class or size
            if model is None:
                raise
            fail(str(err))
        except ImportError as err:
            fail(f"method {method!r} is unavailable: {err}", EXIT_FAILURE)
    convergence = list(
        dict.fromkeys(  # each distinct convergence warning once
            str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)
        )
    )
    for message in convergence:
        typer.echo(f"warning    {message}", err=True)
    for w in caught:  # other warnings go through the normal machinery
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _print_result(result, problem.sense, published)
    if output is not None:
        payload = result.to_dict()
        payload["instance"] = str(instance)
        payload["seed"] = seed
        payload["warnings"] = convergence
        payload["metrics"] = _metrics(result, published, convergence)
        write_json(output, payload, force, "--output")
        if not quiet:
            typer.echo(f"wrote {output}")
    if plot is not None:
        plot_bounds(plot, result, problem.sense, published.objective if published else None, force)
        if not quiet:
            typer.echo(f"wrote {plot}")
    code = exit_code(result.status, warnings=convergence)
    if code in (EXIT_NOT_CONVERGED, EXIT_TIME_LIMIT):
        typer.echo(
            f"stopped by a limit ({result.status}): the result is not proven optimal", err=True
        )
    if code != EXIT_OK:
        raise typer.Exit(code)


def _print_result(result: Any, sense: str, published: Any) -> None:
    typer.echo(f"status     {result.status}")
    if result.info.get("message"):
        typer.echo(f"message    {result.info['message']}")
    if math.isfinite(result.objective):
        typer.echo(f"objective  {_fmt(result.objective)} (exact worst case of x, {sense})")
    elif result.x is None:
        typer.echo("objective  none (no first-stage decision found)")
    else:
        bounds = result.info.get("objective_bounds")
        within = ""
        if isinstance(bounds, list | tuple) and len(bounds) == 2:
            within = f"; it lies in [{_fmt(float(bounds[0]))}, {_fmt(float(bounds[1]))}]"
        typer.echo(
            "objective  not evaluated (the limit stopped the exact worst-case evaluation of "
            f"x{within})"
        )
    typer.echo(
        f"bounds     [{_fmt(result.lower_bound)}, {_fmt(result.upper_bound)}]  "
        f"gap {_fmt(result.gap)}"
    )
    if published is not None:
        typer.echo(
            f"published  {_fmt(published.objective)} (Arslan-Detienne branch-and-price, "
            f"{'optimal' if published.optimal else 'best known'})"
        )
    typer.echo(f"iterations {result.n_iter}  time {result.time:.2f}s")
    for key in ("data_generation_time", "training_time"):  # only when trained in this run
        if isinstance(result.info.get(key), int | float):
            typer.echo(f"{key.replace('_', ' ')}: {result.info[key]:.2f}s")
    if result.info.get("pretrained"):
        record = result.info.get("model_training") or {}
        trained = ", ".join(
            f"{k} {record[k]}" for k in ("problem", "n", "type", "n_samples") if k in record
        )
        typer.echo(
            f"model      {result.info.get('model_path', 'given')} ({trained or 'pretrained'})"
        )
    if result.x is not None:
        typer.echo("x          " + _vector(result.x))
    if result.xi is not None:
        typer.echo("worst xi   " + _vector(result.xi))
        if result.y is not None:
            typer.echo("recourse y " + _vector(result.y) + " (second stage of x at worst xi)")
        else:
            typer.echo("recourse y none (infeasible at worst xi)")


def _metrics(result: Any, published: Any, warnings: list[str]) -> dict[str, Any]:
    """The headline numbers of a solve (strict-JSON values)."""

    def num(v: float) -> float | None:
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    out: dict[str, Any] = {
        "status": result.status,
        "objective": num(result.objective),
        "lower_bound": num(result.lower_bound),
        "upper_bound": num(result.upper_bound),
        "gap": num(result.gap),
        "n_iter": result.n_iter,
        "time": result.time,
        "converged": result.status in ("optimal", "heuristic") and not warnings,
    }
    for key in ("data_generation_time", "training_time"):
        if key in result.info:
            out[key] = num(result.info[key])
    if published is not None:
        out["published_optimum"] = published.objective
        if math.isfinite(result.objective):
            ref = published.objective
            out["gap_to_published"] = abs(ref - result.objective) / max(1.0, abs(ref))
    return out


@app.command("instances")
def instances_command(
    correlation: Annotated[
        str | None, typer.Option("--type", help="Only this correlation type: UN, WC, ASC, SC.")
    ] = None,
    h: Annotated[int | None, typer.Option("--h", help="Only this capacity ratio (40, 80).")] = None,
) -> None:
    """List the bundled Arslan-Detienne instances (n = 20) with their published optima."""
    from bilevel.robust import KNAPSACK_TYPES, published_knapsack_names, published_knapsack_result

    if correlation is not None and correlation not in KNAPSACK_TYPES:
        fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
    names = published_knapsack_names(correlation, h=h)
    if not names:
        fail("no bundled instance matches these filters")
    typer.echo(f"{'instance':<42} {'published optimum':>17}")
    for name in names:
        typer.echo(f"{name:<42} {_fmt(published_knapsack_result(name).objective):>17}")
    typer.echo(f"{len(names)} instances; solve one with 'bilevel robust solve NAME'")


@app.command("train")
def train_command(
    output: Annotated[
        Path, typer.Option("-o", "--output", "--out", help="Model file to write (.pt).")
    ],
    problem: Annotated[
        str, typer.Option("--problem", help="knapsack or capital-budgeting.")
    ] = "knapsack",
    n: Annotated[int, typer.Option("--n", min=1, help="Items / projects per instance.")] = 20,
    correlation: Annotated[
        str, typer.Option("--type", help="Knapsack correlation type: UN, WC, ASC or SC.")
    ] = "UN",
    instances: Annotated[
        int, typer.Option("--instances", min=1, help="Generated training instances.")
    ] = 60,
    n_first_stage: Annotated[
        int, typer.Option("--n-first-stage", min=1, help="Sampled decisions per instance.")
    ] = 10,
    n_scenarios: Annotated[
        int, typer.Option("--n-scenarios", min=1, help="Sampled scenarios per decision.")
    ] = 10,
    encoder: Annotated[
        str, typer.Option(help="Set encoder: separate (paper), joint or auto.")
    ] = "separate",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 200,
    metrics: Annotated[
        Path | None,
        typer.Option("--metrics", help="Also write the training record as JSON here."),
    ] = None,
    jobs: Jobs = 1,
    seed: Seed = 0,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a Neur2RO value model on generated instances of one class and save it.

    Knapsacks follow Arslan and Detienne's generator with (h, dev, delta) drawn from their
    published grid, so the model suits the published instances of that size and type;
    capital-budgeting instances follow Subramanyam, Gounaris and Wiesemann. Labelling (one
    exact MILP per sample) runs on --jobs joblib workers.
    """
    from bilevel.robust import KNAPSACK_TYPES, generate_capital_budgeting
    from bilevel.robust.generators import sample_knapsack_class
    from bilevel.robust.neur2ro import Neur2ROValueModel, generate_dataset

    check_output(output, force)
    check_output(metrics, force, "--metrics")
    if metrics is not None and metrics.resolve() == output.resolve():
        fail("--output and --metrics must be different files")
    if jobs == 0:
        fail("--jobs must be a nonzero integer (-1: all cores)")
    if problem == "knapsack":
        if correlation not in KNAPSACK_TYPES:
            fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
        train = sample_knapsack_class(n, correlation, instances, seed=seed)
    elif problem == "capital-budgeting":
        train = [generate_capital_budgeting(n, seed=10_000 * seed + k) for k in range(instances)]
    else:
        fail(f"--problem must be knapsack or capital-budgeting, got {problem!r}")
    if encoder not in ("separate", "joint", "auto"):
        fail(f"--encoder must be separate, joint or auto, got {encoder!r}")
    if not quiet:
        typer.echo(
            f"labelling {instances} x {n_first_stage} x {n_scenarios} samples exactly "
            f"({problem}, n={n}, {jobs} worker{'s' if jobs != 1 else ''})"
        )
    data = generate_dataset(
        train,
        n_first_stage=n_first_stage,
        n_scenarios=n_scenarios,
        seed=seed,
        n_jobs=jobs,
        progress=not quiet,
    )
    try:
        fitted = Neur2ROValueModel(encoder=encoder, n_epochs=epochs, seed=seed).fit(
            data, progress=not quiet
        )
    except ValueError as err:  # e.g. the joint encoder on unaligned instances
        fail(str(err))
    fitted.training_info_.update(
        command="bilevel robust train",
        problem=problem,
        n=n,
        type=correlation if problem == "knapsack" else None,
        instances=instances,
        encoder=encoder,
        epochs=epochs,
    )
    try:
        with open_output(output, force, binary=True) as fh:
            fitted.save(fh)
    except FileExistsError:
        fail(f"--output {output} exists; choose another name or pass --force to overwrite it")
    typer.echo(
        f"{len(data)} samples ({data.n_infeasible} infeasible dropped), data "
        f"{data.generation_time:.1f}s, training {fitted.training_time_:.1f}s, validation MAE "
        f"{fitted.validation_mae_:.4g}"
    )
    typer.echo(f"wrote {output}")
    if metrics is not None:
        record = {k: v for k, v in fitted.training_info_.items()}
        record["validation_mae"] = (
            fitted.validation_mae_ if math.isfinite(fitted.validation_mae_) else None
        )
        record["model"] = str(output)
        write_json(metrics, {"metrics": record}, force, "--metrics")
        typer.echo(f"wrote {metrics}")


def _generate_and_write(out: Path, force: bool, build: Callable[[], Any]) -> Any:
    """Build an instance (``ValueError`` -> usage error) and write it to ``out``."""
    from bilevel.robust import write_instance

    check_output(out, force)
    try:
        problem = build()
    except ValueError as err:
        fail(str(err))
    try:
        write_instance(problem, out, overwrite=force)
    except FileExistsError:
        fail(f"--output {out} exists; choose another name or pass --force to overwrite it")
    return problem


@generate_app.command("knapsack")
def generate_knapsack_command(
    output: Annotated[
        Path, typer.Option("-o", "--output", "--out", help="Output JSON instance file.")
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of items.")] = 20,
    correlation: Annotated[
        str, typer.Option("--type", help="Correlation type: UN, WC, ASC or SC.")
    ] = "UN",
    dev: Annotated[float, typer.Option(help="Budget factor: Gamma = n * dev.")] = 0.1,
    delta: Annotated[float, typer.Option(help="Degradation spread in [0, 1].")] = 0.5,
    h: Annotated[
        int,
        typer.Option(
            "--h",
            help="Capacity h/101 of the total weight: an integer 1..100 (the published "
            "instances use 40 and 80).",
        ),
    ] = 40,
    seed: Seed = 0,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Two-stage robust knapsack (Arslan and Detienne 2022 generator)."""
    from bilevel.robust import KNAPSACK_TYPES, generate_knapsack

    if correlation not in KNAPSACK_TYPES:
        fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
    problem = _generate_and_write(
        output,
        force,
        lambda: generate_knapsack(n, correlation, dev=dev, delta=delta, h=h, seed=seed),
    )
    if not quiet:
        typer.echo(f"wrote {output} ({problem.name}, Gamma={problem.uncertainty.gamma:g})")


@generate_app.command("capital-budgeting")
def generate_capital_budgeting_command(
    output: Annotated[
        Path, typer.Option("-o", "--output", "--out", help="Output JSON instance file.")
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of projects.")] = 10,
    theta: Annotated[float, typer.Option(help="Late-investment profit factor.")] = 0.8,
    seed: Seed = 0,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Capital budgeting (Subramanyam, Gounaris and Wiesemann 2020 generator)."""
    from bilevel.robust import generate_capital_budgeting

    problem = _generate_and_write(
        output, force, lambda: generate_capital_budgeting(n, theta=theta, seed=seed)
    )
    if not quiet:
        typer.echo(f"wrote {output} ({problem.name})")
