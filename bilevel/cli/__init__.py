"""Command line of :mod:`bilevel` (needs the ``cli`` extra: typer, matplotlib, tqdm).

======================================  ===============================================
command                                 does
======================================  ===============================================
``bilevel list [--options]``            list the recipes of :data:`bilevel.recipes.RECIPES`
``bilevel run RECIPE [--name value]``   run a recipe; ``--config file.json|.toml``,
                                        ``--output-dir DIR`` (default ``runs/``)
``bilevel demo [--fast]``               the hyperparameter recipe with a progress bar
======================================  ===============================================

Each ``bilevel run`` writes into a new folder ``<output-dir>/<recipe>-<timestamp>[-n]``
(never an existing one) ``result.json`` (recipe, config, metrics, history per outer
iteration, details, package versions) and ``convergence.png`` (metrics against the outer
iteration), and prints the final metrics. ``python -m bilevel`` is the same command.
Invalid options exit with status 2 and a one-line ``Error:`` message.
"""

from __future__ import annotations

from bilevel.cli._app import app, execute, load_config_file, main, parse_recipe_options

__all__ = ["app", "execute", "load_config_file", "main", "parse_recipe_options"]
