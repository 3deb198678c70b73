"""The ``bilevel`` command (typer): ``list``, ``run`` and ``demo``."""

from __future__ import annotations

import json
import time
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from bilevel.cli import _output
from bilevel.errors import ConvergenceWarning
from bilevel.recipes import RECIPES, ConfigError, Recipe, RecipeConfig, get_recipe

app = typer.Typer(
    name="bilevel",
    help="Bilevel optimisation recipes: run an experiment, save its results and plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2
#: A run that completed but emitted a :class:`~bilevel.errors.ConvergenceWarning` (no
#: convergence, negative curvature, an inaccurate root...) or reports ``converged: False``
#: in its metrics: its results are still printed and saved, with the warnings in
#: ``result.json``.
EXIT_NOT_CONVERGED = 3


def _fail(message: str) -> typing.NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _version_callback(value: bool) -> None:
    if value:
        import bilevel

        typer.echo(f"bilevel {bilevel.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Bilevel optimisation recipes: run an experiment, save its results and plot."""


# --------------------------------------------------------------------------------------
# Options: command line and config files
# --------------------------------------------------------------------------------------


def _bool_options(config_cls: type[RecipeConfig]) -> set[str]:
    hints = typing.get_type_hints(config_cls)
    return {
        name
        for name in config_cls.option_names()
        if hints[name] is bool or bool in typing.get_args(hints[name])
    }


def parse_recipe_options(args: list[str], config_cls: type[RecipeConfig]) -> dict[str, Any]:
    """``--name value``, ``--name=value``, ``--flag`` / ``--no-flag`` -> ``{name: value}``.

    Values stay strings; the config parses and validates them. ``-`` and ``_`` in names are
    interchangeable.
    """
    booleans = _bool_options(config_cls)
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"unexpected argument {token!r}: recipe options are given as --name value"
            )
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
        else:
            name = body
            key = name.replace("-", "_")
            if key in booleans:
                value = True
            elif key.startswith("no_") and key[3:] in booleans:
                name, value = key[3:], False
            elif i + 1 >= len(args):
                raise ConfigError(f"option {token} needs a value")
            else:
                i += 1
                value = args[i]
        key = name.replace("-", "_")
        if not key:
            raise ConfigError(f"malformed option {token!r}")
        if key in options:
            raise ConfigError(f"option --{name} given twice")
        options[key] = value
        i += 1
    return options


def load_config_file(path: Path, recipe: str) -> dict[str, Any]:
    """Options from a ``.json`` or ``.toml`` file.

    The file holds a table of options, or (like a previous run's ``result.json``) a
    ``config`` table, optionally next to ``recipe``, which must then match.
    """
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"config file {path} must end in .json or .toml")
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of options")
    if isinstance(data.get("config"), dict):
        other = data.get("recipe")
        if other is not None and str(other).replace("-", "_") != recipe:
            raise ConfigError(f"config file {path} is for recipe {other!r}, not {recipe!r}")
        data = data["config"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _options_epilog() -> str:
    lines = ["Recipe options (pass as --name value; see `bilevel list --options`):"]
    for recipe in RECIPES.values():
        names = ", ".join(f"--{n.replace('_', '-')}" for n in recipe.config_cls.option_names())
        lines.append(f"\n\n{recipe.name}: {names}")
    return "".join(lines)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


@app.command("list")
def list_recipes(
    options: Annotated[
        bool, typer.Option("--options", "-O", help="Also list every recipe's options.")
    ] = False,
) -> None:
    """List the available recipes."""
    width = max(len(name) for name in RECIPES)
    for recipe in RECIPES.values():
        typer.echo(f"{recipe.name.ljust(width)}  {recipe.summary}")
        if options:
            for name, kind, default, help_text in recipe.config_cls.describe():
                flag = f"--{name.replace('_', '-')}"
                typer.echo(f"    {flag:<18} {kind:<6} default {default:<24} {help_text}")
            typer.echo("")


def execute(
    recipe: Recipe,
    options: dict[str, Any],
    output_dir: Path | None,
    progress: bool,
    sources: dict[str, Any] | None = None,
) -> Path | None:
    """Validate, run, print the metrics and (with ``output_dir``) save the run folder.

    ``sources`` (recorded in ``result.json`` as ``options_given``) says where the options
    came from; the validated, complete config is recorded as ``config``. A result that has
    an ``extra_plots(run_dir) -> list[path]`` method (optional, any recipe) writes further
    figures into the run folder; their names are printed with the others.
    """
    try:
        config = recipe.config(options)
    except ConfigError as exc:
        _fail(f"recipe {recipe.name!r}: {exc}")
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"cannot create output directory {output_dir}: {exc}")
    started = _output.timestamp()
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    typer.echo(f"running {recipe.name} ({config.size} size)", err=True)
    wall = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = recipe.runner(config, progress=progress)
    wall = time.perf_counter() - wall
    problems = []
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            problems.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    metrics = result.metrics()
    typer.echo(f"{recipe.name}: final metrics")
    typer.echo(_output.format_metrics(metrics))
    summary = getattr(result, "summary", None)
    if summary is not None:
        typer.echo(f"{recipe.name}: verdict")
        for line in summary():
            typer.echo(f"  {line}")
    for message in problems:
        typer.echo(f"Warning: {message}", err=True)
    if output_dir is None:
        _exit_if_not_converged(recipe, metrics, problems)
        return None
    run_dir = _output.make_run_dir(output_dir, recipe.name, started)
    payload = {
        "recipe": recipe.name,
        "created": created,
        "options_given": sources if sources is not None else {"options": options},
        "wall_time_s": wall,
        **result.to_dict(),
        "convergence_warnings": problems,
        "versions": _output.versions(),
    }
    _output.write_json(run_dir / "result.json", payload)
    _output.plot_convergence(
        run_dir / "convergence.png",
        f"{recipe.name} ({config.size})",
        payload["history"],
        type(result).PLOT,
        result.reference_lines(),
    )
    written = ["result.json", "convergence.png"]
    if hasattr(result, "extra_plots"):  # recipe-specific figures (e.g. distilled images)
        written += [Path(p).name for p in result.extra_plots(run_dir)]
    typer.echo(f"results written to {_output.relative(run_dir)}/ ({', '.join(written)})")
    _exit_if_not_converged(recipe, metrics, problems)
    return run_dir


def _exit_if_not_converged(recipe: Recipe, metrics: dict[str, Any], problems: list[str]) -> None:
    """Exit with ``EXIT_NOT_CONVERGED`` when the run emitted convergence warnings or its
    metrics say ``converged: False``."""
    if metrics.get("converged") is False:
        problems = [*problems, "metrics: converged = False"]
    if problems:
        typer.echo(
            f"{recipe.name}: did not converge ({len(problems)} warning(s)); exit code "
            f"{EXIT_NOT_CONVERGED}",
            err=True,
        )
        raise typer.Exit(EXIT_NOT_CONVERGED)


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=_options_epilog(),
)
def run(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `bilevel list`).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="JSON or TOML file of options (command-line options take precedence).",
            dir_okay=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            "-o",
            help="Parent folder; each run writes into a new <recipe>-<timestamp>[-n] folder.",
            file_okay=False,
        ),
    ] = Path("runs"),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Run RECIPE with [--option value ...], save result.json and convergence.png."""
    try:
        chosen = get_recipe(recipe)
        options = load_config_file(config, chosen.name) if config is not None else {}
        options.update(parse_recipe_options(list(ctx.args), chosen.config_cls))
    except ConfigError as exc:
        _fail(str(exc))
    sources = {"config_file": None if config is None else str(config), "command_line": ctx.args}
    execute(chosen, options, output_dir, progress, sources)


@app.command("demo")
def demo(
    fast: Annotated[bool, typer.Option("--fast", help="Use the small 'fast' size.")] = False,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="Also save result.json and convergence.png in a new folder here.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Per-feature L2 hyperparameter optimisation (breast_cancer plus noise features) with a
    progress bar, against a grid search over one shared strength."""
    recipe = RECIPES["hyperparameter"]
    typer.echo(recipe.summary, err=True)
    execute(recipe, {"size": "fast" if fast else "default"}, output_dir, progress=True)


def _register_subcommands() -> None:
    from bilevel.cli import _dag, _robust

    app.add_typer(_dag.app, name="dag", help="DAG structure learning (TOPO).")
    app.add_typer(_robust.app, name="robust", help="Two-stage robust optimization.")


_register_subcommands()


def main() -> None:
    """Console entry point (``python -m bilevel``)."""
    app(prog_name="bilevel")
