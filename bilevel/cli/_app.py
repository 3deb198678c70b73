"""The ``bilevel`` command (typer): ``list``, ``run`` and ``demo``.

The recipes (PyTorch, SciPy, scikit-learn) are imported inside the commands, so that
``bilevel --help`` starts without loading them. The conventions shared with ``dag`` and
``robust`` (``-o/--output``, ``--force``, ``--seed``, ``--quiet``, exit codes) are in
:mod:`bilevel.cli._output`.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bilevel.cli import _output
from bilevel.cli._output import EXIT_NOT_CONVERGED, EXIT_TIME_LIMIT, EXIT_USAGE

if TYPE_CHECKING:
    from bilevel.recipes import Recipe, RecipeConfig

__all__ = [
    "EXIT_NOT_CONVERGED",
    "EXIT_TIME_LIMIT",
    "EXIT_USAGE",
    "app",
    "execute",
    "load_config_file",
    "main",
    "parse_recipe_options",
]

app = typer.Typer(
    name="bilevel",
    help="Bilevel optimisation recipes: run an experiment, save its results and plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typing.NoReturn:
    _output.fail(message, EXIT_USAGE)


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
    """``--name value``, ``--name=value``, ``--flag`` / ``--no-flag`` / ``--flag false``
    -> ``{name: value}``.

    Values stay strings; the config parses and validates them. ``-`` and ``_`` in names are
    interchangeable.
    """
    from bilevel.recipes._config import _FALSE, _TRUE, ConfigError

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
        value: str | bool
        if "=" in body:
            name, value = body.split("=", 1)
        else:
            name = body
            key = name.replace("-", "_")
            if key in booleans:
                value = True  # --flag, or --flag true|false (as in a config file)
                if i + 1 < len(args) and args[i + 1].strip().lower() in _TRUE | _FALSE:
                    i += 1
                    value = args[i]
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
    from bilevel.recipes._config import ConfigError

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


def cli_message(text: str, config_cls: type[RecipeConfig] | None = None) -> str:
    """A :class:`~bilevel.recipes.ConfigError` message in command-line terms: ``'n_train'``
    becomes ``--n-train`` (for the option names of ``config_cls``, and the unknown name of
    an ``unknown option`` message)."""

    def flag(name: str) -> str:
        return "--" + name.strip().replace("_", "-")

    text = re.sub(r"unknown option '([^']*)'", lambda m: f"unknown option {flag(m[1])}", text)
    text = re.sub(
        r"\(valid options of \w+: ([^)]*)\)",
        lambda m: "(valid options: " + ", ".join(flag(n) for n in m[1].split(",")) + ")",
        text,
    )
    names = config_cls.option_names() if config_cls is not None else []
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(f"'{name}'", flag(name))
    return text


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


@app.command("list")
def list_recipes(
    options: Annotated[
        bool,
        typer.Option("--options/--no-options", "-O", help="List every recipe's options too."),
    ] = True,
) -> None:
    """List the available recipes and their options (name, type, default, meaning)."""
    from bilevel.recipes import RECIPES

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
    *,
    run_dir: Path | None = None,
    force: bool = False,
    quiet: bool = False,
) -> Path | None:
    """Validate, run, print the metrics and save the run folder; exit with the run's code.

    The run folder is ``run_dir`` when given (``-o/--output``: an existing non-empty folder
    needs ``force``), else a new ``output_dir/<recipe>-<timestamp>[-n]``; with neither,
    nothing is written. Both are checked before the run starts. ``sources`` (recorded in
    ``result.json`` as ``options_given``) says where the options came from; the validated,
    complete config is recorded as ``config``. A result that has an
    ``extra_plots(run_dir) -> list[path]`` method (optional, any recipe) writes further
    figures into the run folder. ``quiet`` drops the progress bar and the notes on stderr
    (metrics and warnings are still printed). Exits with ``EXIT_TIME_LIMIT`` (4) when the
    result's status is ``"time_limit"`` and ``EXIT_NOT_CONVERGED`` (3) after convergence
    warnings or ``converged: False``, once everything is written.
    """
    from bilevel.errors import ConvergenceWarning
    from bilevel.recipes import ConfigError

    try:
        config = recipe.config(options)
    except ConfigError as exc:
        _fail(f"recipe {recipe.name!r}: {cli_message(str(exc), recipe.config_cls)}")
    if run_dir is not None:
        if run_dir.exists() and not run_dir.is_dir():
            _fail(f"--output {run_dir} is a file; it names the run folder")
        _output.check_output(run_dir, force, "--output")
    elif output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"--output-dir: cannot create {output_dir}: {exc}")
    started = _output.timestamp()
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not quiet:
        typer.echo(f"running {recipe.name} ({config.size} size)", err=True)
    wall = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = recipe.runner(config, progress=progress and not quiet)
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
    if run_dir is not None:
        run_dir.mkdir(exist_ok=True)
    elif output_dir is not None:
        run_dir = _output.make_run_dir(output_dir, recipe.name, started)
    if run_dir is not None:
        payload = {
            "recipe": recipe.name,
            "created": created,
            "options_given": sources if sources is not None else {"options": options},
            "wall_time_s": wall,
            **result.to_dict(),
            "convergence_warnings": problems,
            "versions": _output.versions(),
        }
        _output.write_json(run_dir / "result.json", payload, force)
        _output.plot_convergence(
            run_dir / "convergence.png",
            f"{recipe.name} ({config.size})",
            payload["history"],
            type(result).PLOT,
            result.reference_lines(),
            force,
        )
        written = ["result.json", "convergence.png"]
        if hasattr(result, "extra_plots"):  # recipe-specific figures (e.g. distilled images)
            written += [Path(p).name for p in result.extra_plots(run_dir)]
        if not quiet:
            typer.echo(f"results written to {_output.relative(run_dir)}/ ({', '.join(written)})")
    _exit_with_status(recipe, result, metrics, problems)
    return run_dir


def _exit_with_status(
    recipe: Recipe, result: Any, metrics: dict[str, Any], problems: list[str]
) -> None:
    """Exit with ``EXIT_TIME_LIMIT`` when the run stopped at its time limit,
    ``EXIT_NOT_CONVERGED`` when it emitted convergence warnings or its metrics say
    ``converged: False``; return otherwise."""
    status = getattr(result, "status", None) or metrics.get("status")
    code = _output.exit_code(status, metrics.get("converged"), problems)
    if code == EXIT_TIME_LIMIT:
        typer.echo(f"{recipe.name}: stopped at its time limit; exit code {code}", err=True)
    elif code == EXIT_NOT_CONVERGED:
        count = max(len(problems), 1)
        typer.echo(
            f"{recipe.name}: did not converge ({count} warning(s)); exit code {code}", err=True
        )
    if code:
        raise typer.Exit(code)


_OUTPUT_HELP = (
    "The run folder (result.json with the metrics, convergence.png); an existing non-empty "
    "folder needs --force. Default: a new <recipe>-<timestamp>[-n] folder in --output-dir."
)
_OUTPUT_DIR_HELP = "Parent folder of the new <recipe>-<timestamp>[-n] run folders."


def _run_destination(output: Path | None, output_dir: Path | None) -> Path:
    if output is not None and output_dir is not None:
        _fail("give either -o/--output (the run folder) or --output-dir (its parent), not both")
    return output_dir if output_dir is not None else Path("runs")


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Recipe options (--name value, --flag/--no-flag): see `bilevel list`.",
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
    output: Annotated[Path | None, typer.Option("--output", "-o", help=_OUTPUT_HELP)] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help=_OUTPUT_DIR_HELP, file_okay=False)
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="The recipe's seed option (default: its own).")
    ] = None,
    force: _output.ForceOption = False,
    quiet: _output.QuietOption = False,
    progress: _output.ProgressOption = True,
) -> None:
    """Run RECIPE with [--option value ...], save result.json and convergence.png.

    Exit status: 0 success, 2 invalid options, 3 not converged, 4 time limit (results are
    written in every case but 2).
    """
    from bilevel.recipes import ConfigError, get_recipe

    parent = _run_destination(output, output_dir)
    try:
        chosen = get_recipe(recipe)
        options = load_config_file(config, chosen.name) if config is not None else {}
        options.update(parse_recipe_options(list(ctx.args), chosen.config_cls))
    except ConfigError as exc:
        _fail(cli_message(str(exc)))
    _set_seed(options, seed, chosen)
    sources = {"config_file": None if config is None else str(config), "command_line": ctx.args}
    execute(chosen, options, parent, progress, sources, run_dir=output, force=force, quiet=quiet)


def _set_seed(options: dict[str, Any], seed: int | None, recipe: Recipe) -> None:
    if seed is None:
        return
    if "seed" not in recipe.config_cls.option_names():
        _fail(f"--seed: recipe {recipe.name!r} has no seed option")
    options["seed"] = seed


@app.command("demo")
def demo(
    fast: Annotated[
        bool, typer.Option("--fast/--no-fast", help="Use the small 'fast' size.")
    ] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=_OUTPUT_HELP)] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help=_OUTPUT_DIR_HELP, file_okay=False)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and noise.")] = 0,
    force: _output.ForceOption = False,
    quiet: _output.QuietOption = False,
) -> None:
    """Per-feature L2 hyperparameter optimisation (breast_cancer plus noise features) with a
    progress bar, against a grid search over one shared strength; saves result.json and
    convergence.png like `bilevel run hyperparameter`."""
    from bilevel.recipes import RECIPES

    recipe = RECIPES["hyperparameter"]
    parent = _run_destination(output, output_dir)
    if not quiet:
        typer.echo(recipe.summary, err=True)
    options = {"size": "fast" if fast else "default", "seed": seed}
    sources = {"command": "demo", "options": options}
    execute(recipe, options, parent, True, sources, run_dir=output, force=force, quiet=quiet)


def _register_subcommands() -> None:
    from bilevel.cli import _dag, _robust

    app.add_typer(_dag.app, name="dag", help="DAG structure learning (TOPO).")
    app.add_typer(_robust.app, name="robust", help="Two-stage robust optimization.")


_register_subcommands()


def main() -> None:
    """Console entry point (``python -m bilevel``)."""
    app(prog_name="bilevel")
