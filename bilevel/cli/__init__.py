"""Command line of :mod:`bilevel` (needs the ``cli`` extra: typer, matplotlib, tqdm).

======================================  ===============================================
command                                 does
======================================  ===============================================
``bilevel list [--no-options]``         the recipes of :data:`bilevel.recipes.RECIPES`
                                        and their options
``bilevel run RECIPE [--name value]``   run a recipe; ``--config file.json|.toml``,
                                        ``-o/--output DIR`` or ``--output-dir PARENT``
``bilevel demo [--fast]``               the hyperparameter recipe with progress bars
``bilevel dag fit|simulate``            DAG learning (:mod:`bilevel.cli._dag`)
``bilevel robust ...``                  two-stage robust optimization
======================================  ===============================================

``bilevel run`` and ``demo`` write into the folder ``-o/--output`` (an existing non-empty
one needs ``--force``) or else a new ``<output-dir>/<recipe>-<timestamp>[-n]`` (default
``runs/``): ``result.json`` (recipe, config, metrics, history per outer iteration,
details, package versions) and ``convergence.png`` (metrics against the outer iteration),
and print the final metrics. Shared conventions (:mod:`bilevel.cli._output`): ``--seed``,
``--quiet``, ``--force``, ``--flag/--no-flag``; exit codes 0 success, 1 failure, 2 usage
error (a one-line ``Error:`` message naming the option), 3 not converged, 4 time limit.
``python -m bilevel`` is the same command; the recipes are imported only by the commands
that need them, so ``bilevel --help`` does not load PyTorch.
"""

from __future__ import annotations

from bilevel.cli._app import app, execute, load_config_file, main, parse_recipe_options

__all__ = ["app", "execute", "load_config_file", "main", "parse_recipe_options"]
