"""Write the command-line reference page (``cli.md``) from the ``bilevel`` Typer app itself.

Every command's ``--help`` is rendered by Typer's test runner at build time, and every
recipe's options are read from its configuration class, so the page always matches the
code (mkdocs-gen-files script).
"""

from __future__ import annotations

import os

import mkdocs_gen_files
import typer
from typer.testing import CliRunner

from bilevel.cli import app
from bilevel.recipes import RECIPES


def commands(group, path):
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, [*path, name])


def help_text(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise RuntimeError(f"bilevel {' '.join(path)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def recipe_table(name: str) -> str:
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for option, kind, default, meaning in RECIPES[name].config_cls.describe():
        cells = [f"`--{option.replace('_', '-')}`", kind, f"`{default}`", meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


os.environ.setdefault("COLUMNS", "100")
parts = [
    "# Command line reference",
    "The `bilevel` command (the `cli` extra). This page is generated from the command's own "
    "help at build time. Options of `bilevel run RECIPE` are the recipe's options, listed "
    "below; they can also come from a JSON or TOML file (`--config`, see "
    "[Config and instance formats](formats.md)).",
]
for path, command in commands(typer.main.get_command(app), []):
    title = " ".join(["bilevel", *path])
    parts += [f"## `{title}`", "```text\n" + help_text(path) + "\n```"]
parts.append("## Recipe options")
for name, recipe in RECIPES.items():
    parts += [f"### `{name}`", recipe.summary, recipe_table(name)]

with mkdocs_gen_files.open("cli.md", "w") as page:
    page.write("\n\n".join(parts) + "\n")
