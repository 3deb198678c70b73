"""``bilevel robust ...`` commands: ``solve``, ``instances`` and ``generate``.

``bilevel robust solve INSTANCE [--method exact|neur2ro] [--time-limit S] [--out FILE]
[--solver highs|scip]``
reads a JSON instance (``.json``), an Arslan-Detienne knapsack file (anything else) or,
when no such file exists, the bundled published instance of that name (``bilevel robust
instances``), prints one line per iteration (lower/upper bound and gap) and the result
(with the published optimum for a bundled instance); ``--out`` writes the result as strict
JSON (numbers or ``null`` for missing values: never ``NaN`` or infinities) and never
overwrites an existing file. Exit status: 0 when the solve finished (``optimal``, or
``heuristic`` for Neur2RO), 1 for an infeasible or unbounded instance, 2 for bad input, and
3 when a limit stopped it first (``time_limit``, ``max_iterations``, ``stalled``): the
result is then not proven optimal, and when no first-stage decision could be evaluated
the objective is reported as not evaluated.

``bilevel robust instances [--type T] [--h H]`` lists the bundled published instances
with their branch-and-price optima.

``bilevel robust train --out MODEL.pt [--problem knapsack|capital-budgeting] [--n N] ...``
trains one Neur2RO value model for a class of generated instances (the paper's use: train
once, then ``bilevel robust solve INSTANCE --method neur2ro --model MODEL.pt``).

``bilevel robust generate knapsack|capital-budgeting ... --out FILE`` writes a random
instance (JSON), never overwriting.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="robust",
    help="Two-stage robust optimization: solve instances, generate instances.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
generate_app = typer.Typer(
    name="generate", help="Write a random instance (JSON).", no_args_is_help=True
)
app.add_typer(generate_app, name="generate")

EXIT_USAGE = 2
EXIT_FAILURE = 1
#: The solve stopped at a limit (time, iterations, stalled) before proving optimality.
EXIT_INCOMPLETE = 3
INCOMPLETE = ("time_limit", "max_iterations", "stalled")


def _fail(message: str, code: int = EXIT_USAGE) -> typing.NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _check_out(out: Path | None) -> None:
    if out is not None and out.exists():
        _fail(f"{out} exists; refusing to overwrite it")


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


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
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the result as JSON (new file).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-iteration lines.")] = False,
    solver: Annotated[
        str, typer.Option(help="MILP solver of the exact method: highs or scip (optional).")
    ] = "highs",
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Neur2RO: a value model saved by 'bilevel robust train' (default: train "
            "one on the instance itself).",
        ),
    ] = None,
    dual_bound: Annotated[
        float | None,
        typer.Option(
            "--dual-bound",
            help="Exact method, continuous recourse under constraint uncertainty: bound on "
            "the recourse duals of the KKT adversary (default: scaled from the data).",
        ),
    ] = None,
) -> None:
    """Solve a two-stage robust instance and print its progress and result."""
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
        _fail(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if time_limit is not None and not (time_limit > 0):
        _fail("--time-limit must be positive")
    _check_out(out)
    published = None
    if not instance.exists() and str(instance) in published_knapsack_names():
        problem = load_published_knapsack(str(instance))
        published = published_knapsack_result(str(instance))
    else:
        try:
            problem = load_instance(instance)
        except FileNotFoundError as err:
            _fail(f"{err} (nor is it a bundled instance name: see 'bilevel robust instances')")
        except InstanceFormatError as err:
            _fail(f"malformed instance: {err}")
    typer.echo(
        f"{problem.name or instance.name}: n_x={problem.n_x} n_y={problem.n_y} "
        f"n_xi={problem.n_xi} sense={problem.sense} method={method}"
    )

    def progress(row: dict[str, Any]) -> None:
        if quiet:
            return
        line = (
            f"iter {int(row.get('iteration', 0)):4d}  "
            f"LB {_fmt(float(row.get('lower_bound', math.nan))):>12}  "
            f"UB {_fmt(float(row.get('upper_bound', math.nan))):>12}  "
            f"gap {_fmt(float(row.get('gap', math.nan))):>10}  "
            f"time {float(row.get('time', math.nan)):.2f}s"
        )
        if "predicted_adversarial" in row:  # Neur2RO: predicted values, not bounds
            line += f"  predicted {_fmt(float(row['predicted_adversarial']))}"
        typer.echo(line)

    if solver not in ("highs", "scip"):
        _fail(f"--solver must be highs or scip, got {solver!r}")
    options: dict[str, Any] = {"callback": progress}
    if method == "exact":
        options["solver"] = solver
        if dual_bound is not None:
            if not (dual_bound > 0 and math.isfinite(dual_bound)):
                _fail("--dual-bound must be a positive finite number")
            options["dual_bound"] = dual_bound
    elif dual_bound is not None:
        _fail("--dual-bound applies to --method exact only")
    if model is not None:
        if method != "neur2ro":
            _fail("--model applies to --method neur2ro only")
        if not model.is_file():
            _fail(f"no model file {model}")
        options["model"] = model
    if time_limit is not None:
        options["time_limit"] = time_limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            result = solve(problem, method=method, **options)
        except NotImplementedError as err:
            _fail(str(err), EXIT_FAILURE)
        except BilevelError as err:  # e.g. no KKT point within --dual-bound
            _fail(str(err), EXIT_FAILURE)
        except ValueError as err:  # e.g. a saved model for another class or size
            if model is None:
                raise
            _fail(str(err))
        except ImportError as err:
            _fail(f"method {method!r} is unavailable: {err}", EXIT_FAILURE)
    for message in dict.fromkeys(  # each distinct convergence warning once
        str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)
    ):
        typer.echo(f"warning    {message}", err=True)
    for w in caught:  # other warnings go through the normal machinery
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    typer.echo(f"status     {result.status}")
    if result.info.get("message"):
        typer.echo(f"message    {result.info['message']}")
    if math.isfinite(result.objective):
        typer.echo(f"objective  {_fmt(result.objective)} (exact worst case of x, {problem.sense})")
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
    for key in ("data_generation_time", "training_time"):
        if isinstance(result.info.get(key), int | float):
            typer.echo(f"{key.replace('_', ' ')}: {result.info[key]:.2f}s")
    if result.x is not None:
        typer.echo("x          " + " ".join(f"{v:g}" for v in result.x))
    if out is not None:
        payload = result.to_dict()
        payload["instance"] = str(instance)
        try:
            with out.open("x", encoding="utf-8") as fh:
                json.dump(payload, fh, indent=1, allow_nan=False)
                fh.write("\n")
        except FileExistsError:
            _fail(f"{out} exists; refusing to overwrite it")
        typer.echo(f"wrote {out}")
    if result.status in ("infeasible", "unbounded"):
        raise typer.Exit(EXIT_FAILURE)
    if result.status in INCOMPLETE:
        typer.echo(
            f"stopped by a limit ({result.status}): the result is not proven optimal", err=True
        )
        raise typer.Exit(EXIT_INCOMPLETE)


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
        _fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
    names = published_knapsack_names(correlation, h=h)
    if not names:
        _fail("no bundled instance matches these filters")
    typer.echo(f"{'instance':<42} {'published optimum':>17}")
    for name in names:
        typer.echo(f"{name:<42} {_fmt(published_knapsack_result(name).objective):>17}")
    typer.echo(f"{len(names)} instances; solve one with 'bilevel robust solve NAME'")


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", help="Model file to write (must not exist).")],
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
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a Neur2RO value model on generated instances of one class and save it.

    Knapsacks follow Arslan and Detienne's generator with (h, dev, delta) drawn from their
    published grid, so the model suits the published instances of that size and type;
    capital-budgeting instances follow Subramanyam, Gounaris and Wiesemann.
    """
    from bilevel.robust import KNAPSACK_TYPES, generate_capital_budgeting
    from bilevel.robust.generators import sample_knapsack_class
    from bilevel.robust.neur2ro import Neur2ROValueModel, generate_dataset

    _check_out(out)
    if problem == "knapsack":
        if correlation not in KNAPSACK_TYPES:
            _fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
        train = sample_knapsack_class(n, correlation, instances, seed=seed)
    elif problem == "capital-budgeting":
        train = [generate_capital_budgeting(n, seed=10_000 * seed + k) for k in range(instances)]
    else:
        _fail(f"--problem must be knapsack or capital-budgeting, got {problem!r}")
    if encoder not in ("separate", "joint", "auto"):
        _fail(f"--encoder must be separate, joint or auto, got {encoder!r}")
    typer.echo(
        f"labelling {instances} x {n_first_stage} x {n_scenarios} samples exactly "
        f"({problem}, n={n})..."
    )
    data = generate_dataset(train, n_first_stage=n_first_stage, n_scenarios=n_scenarios, seed=seed)
    try:
        fitted = Neur2ROValueModel(encoder=encoder, n_epochs=epochs, seed=seed).fit(data)
    except ValueError as err:  # e.g. the joint encoder on unaligned instances
        _fail(str(err))
    _check_out(out)  # not created meanwhile
    fitted.save(out)
    typer.echo(
        f"{len(data)} samples ({data.n_infeasible} infeasible dropped), data "
        f"{data.generation_time:.1f}s, training {fitted.training_time_:.1f}s, validation MAE "
        f"{fitted.validation_mae_:.4g}"
    )
    typer.echo(f"wrote {out}")


def _generate_and_write(out: Path, build: Callable[[], Any]) -> Any:
    """Build an instance (``ValueError`` -> usage error) and write it to the new file ``out``."""
    from bilevel.robust import write_instance

    _check_out(out)
    try:
        problem = build()
    except ValueError as err:
        _fail(str(err))
    try:
        write_instance(problem, out)
    except FileExistsError:
        _fail(f"{out} exists; refusing to overwrite it")
    return problem


@generate_app.command("knapsack")
def generate_knapsack_command(
    out: Annotated[Path, typer.Option("--out", help="Output JSON file (must not exist).")],
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
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Two-stage robust knapsack (Arslan and Detienne 2022 generator)."""
    from bilevel.robust import KNAPSACK_TYPES, generate_knapsack

    if correlation not in KNAPSACK_TYPES:
        _fail(f"--type must be one of {', '.join(KNAPSACK_TYPES)}, got {correlation!r}")
    problem = _generate_and_write(
        out, lambda: generate_knapsack(n, correlation, dev=dev, delta=delta, h=h, seed=seed)
    )
    typer.echo(f"wrote {out} ({problem.name}, Gamma={problem.uncertainty.gamma:g})")


@generate_app.command("capital-budgeting")
def generate_capital_budgeting_command(
    out: Annotated[Path, typer.Option("--out", help="Output JSON file (must not exist).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of projects.")] = 10,
    theta: Annotated[float, typer.Option(help="Late-investment profit factor.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Capital budgeting (Subramanyam, Gounaris and Wiesemann 2020 generator)."""
    from bilevel.robust import generate_capital_budgeting

    problem = _generate_and_write(
        out, lambda: generate_capital_budgeting(n, theta=theta, seed=seed)
    )
    typer.echo(f"wrote {out} ({problem.name})")
