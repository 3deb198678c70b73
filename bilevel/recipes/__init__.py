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
``pruning``             BiP: a sparse mask of an MLP on digits by bi-level optimization
                        vs one-shot, fine-tuned and iterative magnitude pruning
``distillation``        a few synthetic digits per class (KIP, or implicit logistic
                        regression) vs random, k-center and herding coresets
``self_tuning``         weight decay, dropout and input noise of an MLP on digits tuned
                        online by a Self-Tuning Network vs grid and random search
``architecture_search`` a cell for digits by DARTS (first/second order) or RARTS vs
                        random cells of the same size
``trigger``             bi-level trigger optimization (BLTO) against SimCLR on digits, with
                        SPC / optimized-SPC detection: red-teaming one's own
                        self-supervised pipeline (:mod:`bilevel.nn.backdoor`)
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
    architecture_search,
    data_mixing,
    distillation,
    hyper_cleaning,
    hyperparameter,
    pruning,
    reweighting,
    self_tuning,
    svm_hyperparameters,
    trigger,
)
from bilevel.recipes._config import ConfigError, RecipeConfig
from bilevel.recipes.architecture_search import ArchitectureSearchConfig, ArchitectureSearchResult
from bilevel.recipes.data_mixing import DataMixingConfig, DataMixingResult
from bilevel.recipes.distillation import DistillationConfig, DistillationResult
from bilevel.recipes.hyper_cleaning import HyperCleaningConfig, HyperCleaningResult
from bilevel.recipes.hyperparameter import HyperparameterConfig, HyperparameterResult
from bilevel.recipes.pruning import PruningConfig, PruningResult
from bilevel.recipes.reweighting import ReweightingConfig, ReweightingResult
from bilevel.recipes.self_tuning import SelfTuningConfig, SelfTuningResult
from bilevel.recipes.svm_hyperparameters import SVMHyperparametersConfig, SVMHyperparametersResult
from bilevel.recipes.trigger import TriggerConfig, TriggerResult

__all__ = [
    "RECIPES",
    "ArchitectureSearchConfig",
    "ArchitectureSearchResult",
    "ConfigError",
    "DataMixingConfig",
    "DataMixingResult",
    "DistillationConfig",
    "DistillationResult",
    "HyperCleaningConfig",
    "HyperCleaningResult",
    "HyperparameterConfig",
    "HyperparameterResult",
    "PruningConfig",
    "PruningResult",
    "Recipe",
    "RecipeConfig",
    "ReweightingConfig",
    "ReweightingResult",
    "SelfTuningConfig",
    "SelfTuningResult",
    "SVMHyperparametersConfig",
    "SVMHyperparametersResult",
    "architecture_search",
    "TriggerConfig",
    "TriggerResult",
    "data_mixing",
    "distillation",
    "get_recipe",
    "hyper_cleaning",
    "hyperparameter",
    "pruning",
    "reweighting",
    "self_tuning",
    "svm_hyperparameters",
    "trigger",
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
    "pruning": Recipe(
        name="pruning",
        summary="BiP pruning of an MLP on digits (bi-level masks, implicit gradient) vs one-shot, "
        "fine-tuned and iterative magnitude pruning",
        config_cls=PruningConfig,
        runner=pruning.run,
    ),
    "distillation": Recipe(
        name="distillation",
        summary="dataset distillation of digits into a few synthetic images per class (KIP or "
        "implicit logistic regression) vs random, k-center and herding coresets",
        config_cls=DistillationConfig,
        runner=distillation.run,
    ),
    "self_tuning": Recipe(
        name="self_tuning",
        summary="Self-Tuning Networks: weight decay, dropout and input noise of an MLP on digits "
        "tuned online by a best-response network vs grid and random search",
        config_cls=SelfTuningConfig,
        runner=self_tuning.run,
    ),
    "architecture_search": Recipe(
        name="architecture_search",
        summary="differentiable architecture search of a cell for digits (DARTS first/second "
        "order, RARTS) vs random cells of the same size",
        config_cls=ArchitectureSearchConfig,
        runner=architecture_search.run,
    ),
    "trigger": Recipe(
        name="trigger",
        summary="bi-level trigger optimization (BLTO) against SimCLR on digits, with SPC "
        "detection: red-teaming one's own self-supervised pipeline (bilevel.nn.backdoor)",
        config_cls=TriggerConfig,
        runner=trigger.run,
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
