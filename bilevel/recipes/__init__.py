"""Ready-made bilevel experiments ("recipes") with validated configurations.

:data:`RECIPES` maps a name to a :class:`Recipe`; calling it runs the experiment::

    from bilevel.recipes import RECIPES

    result = RECIPES["hyper_cleaning"]({"size": "fast"})     # a dict of options ...
    result = RECIPES["hyper_cleaning"](size="fast", seed=1)   # ... or keyword options
    print(result.metrics())

======================  ===================================================================
recipe                  experiment
======================  ===================================================================
``hyperparameter``      per-feature L2 strengths of logistic regression (breast_cancer),
                        implicit hypergradients vs a shared-strength grid search
``hyper_cleaning``      one weight per noisy training label (digits, 50% corrupted),
                        implicit hypergradients vs noisy and clean-label training
``svm_hyperparameters`` one C per training sample of a squared-hinge linear SVM
                        (breast_cancer) by LV-HBA (constrained lower level) vs a
                        cross-validated single C
``data_mixing``         mixture weights of Markov token sources for a small transformer
                        language model by ScaleBiO (:mod:`bilevel.nn`)
``reweighting``         per-example weights (or a Meta-Weight-Net) for an MLP trained on
                        digits with noisy or long-tailed labels (:mod:`bilevel.nn`)
======================  ===================================================================

Each recipe has a frozen config dataclass (:class:`HyperparameterConfig`,
:class:`HyperCleaningConfig`) whose options all have defaults; ``size="fast"`` selects a
smaller run for tests. Unknown or invalid options raise :class:`ConfigError`. Results are
dataclasses with ``metrics()``, ``history`` (one entry per outer iteration) and
``to_dict()``. The recipes need scikit-learn (the ``demo`` extra); the command line
(``bilevel run``, :mod:`bilevel.cli`) needs the ``cli`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bilevel.recipes import (
    data_mixing,
    hyper_cleaning,
    hyperparameter,
    reweighting,
    svm_hyperparameters,
)
from bilevel.recipes._config import ConfigError, RecipeConfig
from bilevel.recipes.data_mixing import DataMixingConfig, DataMixingResult
from bilevel.recipes.hyper_cleaning import HyperCleaningConfig, HyperCleaningResult
from bilevel.recipes.hyperparameter import HyperparameterConfig, HyperparameterResult
from bilevel.recipes.reweighting import ReweightingConfig, ReweightingResult
from bilevel.recipes.svm_hyperparameters import SVMHyperparametersConfig, SVMHyperparametersResult

__all__ = [
    "RECIPES",
    "ConfigError",
    "DataMixingConfig",
    "DataMixingResult",
    "HyperCleaningConfig",
    "HyperCleaningResult",
    "HyperparameterConfig",
    "HyperparameterResult",
    "Recipe",
    "RecipeConfig",
    "ReweightingConfig",
    "ReweightingResult",
    "SVMHyperparametersConfig",
    "SVMHyperparametersResult",
    "data_mixing",
    "get_recipe",
    "hyper_cleaning",
    "hyperparameter",
    "reweighting",
    "svm_hyperparameters",
]


@dataclass(frozen=True)
class Recipe:
    """A named experiment: ``recipe(config_or_options, progress=False, **options)``.

    ``config_or_options`` is a ``config_cls`` instance, a mapping of options, or ``None``
    (defaults); keyword options are merged over a mapping (not allowed with an instance).
    """

    name: str
    summary: str
    config_cls: type[RecipeConfig]
    runner: Callable[..., Any]

    def config(self, options: RecipeConfig | Mapping[str, Any] | None = None, **more: Any) -> Any:
        """Validate options into a ``config_cls`` instance (raises :class:`ConfigError`)."""
        if isinstance(options, RecipeConfig):
            if not isinstance(options, self.config_cls):
                raise ConfigError(
                    f"recipe {self.name!r} takes a {self.config_cls.__name__}, "
                    f"got {type(options).__name__}"
                )
            return options.replace(**more) if more else options
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(
                f"recipe {self.name!r}: options must be a mapping or a "
                f"{self.config_cls.__name__}, got {type(options).__name__}"
            )
        return self.config_cls.from_options({**(options or {}), **more})

    def __call__(
        self,
        options: RecipeConfig | Mapping[str, Any] | None = None,
        *,
        progress: bool = False,
        **more: Any,
    ) -> Any:
        return self.runner(self.config(options, **more), progress=progress)


RECIPES: dict[str, Recipe] = {
    "hyperparameter": Recipe(
        name="hyperparameter",
        summary="per-feature L2 regularisation of logistic regression on breast_cancer plus "
        "noise features (implicit hypergradients vs shared-strength grid search)",
        config_cls=HyperparameterConfig,
        runner=hyperparameter.run,
    ),
    "hyper_cleaning": Recipe(
        name="hyper_cleaning",
        summary="data hyper-cleaning on digits with 50% wrong training labels "
        "(per-example weights by implicit hypergradients)",
        config_cls=HyperCleaningConfig,
        runner=hyper_cleaning.run,
    ),
    "svm_hyperparameters": Recipe(
        name="svm_hyperparameters",
        summary="per-sample C of a squared-hinge linear SVM on breast_cancer by LV-HBA "
        "(constrained lower level) vs a cross-validated single C",
        config_cls=SVMHyperparametersConfig,
        runner=svm_hyperparameters.run,
    ),
    "reweighting": Recipe(
        name="reweighting",
        summary="learning to reweight noisy labels (Meta-Weight-Net style) of an MLP on digits "
        "with bilevel.nn (per-example weights or a weighting network)",
        config_cls=ReweightingConfig,
        runner=reweighting.run,
    ),
    "data_mixing": Recipe(
        name="data_mixing",
        summary="learning the mixture of token sources for a small transformer language model "
        "(ScaleBiO, first-order min-max) vs uniform mixing",
        config_cls=DataMixingConfig,
        runner=data_mixing.run,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (``-`` and ``_`` are interchangeable)."""
    key = name.replace("-", "_")
    try:
        return RECIPES[key]
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}"
        ) from None
