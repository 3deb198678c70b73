r"""Backdoor trigger optimization against contrastive learning (BLTO) and backdoor-data
detection (SPC, optimized SPC): a robustness evaluation for self-supervised pipelines.

**Purpose.** This module is for red-teaming *one's own* self-supervised pipelines: it
measures how much a small fraction of poisoned, unlabelled training images can bias an
encoder trained by contrastive learning, and whether scaled-prediction-consistency
detection would find those images. Run it on pipelines and data you are responsible for.

Threat model (Sun et al., "Backdoor Contrastive Learning via Bi-level Trigger
Optimization", ICLR 2024). A victim trains an encoder ``f_theta`` by SimCLR on an
unlabelled set ``D``; the attacker controls a few images ``D_p`` of a target class (a
fraction ``poison rate`` of ``D``), to which it applies a trigger ``g_psi`` with
``||g_psi(x) - x||_inf <= eps`` (labels are never touched). Downstream, a linear probe on
clean labels classifies; the attack succeeds on a non-target image ``x`` when the probe
assigns ``g_psi(x)`` to the target class.

BLTO (:func:`optimize_trigger`) chooses ``psi`` by the bi-level problem

.. math::

    \max_\psi\ \mathbb{E}_{x, x^r, t, t'}\ \cos\big(f_{\theta^*(\psi)}(t(g_\psi(x))),\
    f_{\theta^*(\psi)}(t'(x^r))\big)
    \quad\text{s.t.}\quad \theta^*(\psi) \in \arg\min_\theta\
    \mathcal{L}_{\mathrm{NT\text{-}Xent}}\big(\theta;\ D \setminus D_p \cup g_\psi(D_p)\big),

``x`` images of other classes, ``x^r`` target-class references, ``t, t'`` random
augmentations: triggered images should embed next to the target class *after* the victim
trained on the poisoned set. The lower level is simulated by a surrogate encoder that
trains on the poisoned set while the trigger is optimised, re-initialised periodically; the
hypergradient goes through the surrogate's optimizer steps (:func:`bilevel.nn.hypergradient`,
``method="unrolled"``, optionally truncated) or treats the surrogate as fixed (first
order). It runs on :class:`bilevel.nn.BilevelTrainer`; there is no unrolling code here.

Pieces:

* contrastive learning (``_contrastive``): :class:`Augmentation` (random affine crops and
  intensity jitter, differentiable in the image, parameters drawn once per batch),
  :func:`nt_xent`, :class:`ContrastiveEncoder`, :class:`ContrastiveBatches`,
  :func:`contrastive_loss` (the lower-level loss), :func:`train_contrastive` (the victim),
  :func:`fit_linear_probe` / :class:`LinearProbe`;
* triggers (``_trigger``): :func:`project_linf` (projection onto the budget and the pixel
  range), :class:`TriggerGenerator` (``g_psi``), :class:`FixedTrigger` (patch and
  random-noise baselines of the same budget), :func:`target_similarity` (the upper-level
  objective), :func:`optimize_trigger`, :func:`attack_success_rate`;
* detection (``_detection``): :func:`scaled_prediction_consistency` (SPC, Guo et al. 2023),
  :func:`optimized_spc` (the masked, bi-level optimised SPC of Pal et al., "Backdoor
  Secrets Unveiled", ICLR 2024), :func:`auroc`.

The experiment on digits with all baselines is the ``trigger`` recipe
(:mod:`bilevel.recipes.trigger`, ``bilevel run trigger``).
"""

from __future__ import annotations

from bilevel.nn.backdoor._contrastive import (
    Augmentation,
    ContrastiveBatch,
    ContrastiveBatches,
    ContrastiveEncoder,
    LinearProbe,
    contrastive_loss,
    fit_linear_probe,
    nt_xent,
    train_contrastive,
)
from bilevel.nn.backdoor._detection import (
    DEFAULT_SCALES,
    OptimizedSPCResult,
    auroc,
    optimized_spc,
    scaled_prediction_consistency,
)
from bilevel.nn.backdoor._trigger import (
    TRIGGER_METHODS,
    AttackBatch,
    AttackBatches,
    FixedTrigger,
    TriggerGenerator,
    TriggerOptimization,
    attack_success_rate,
    optimize_trigger,
    project_linf,
    target_similarity,
)

__all__ = [
    "DEFAULT_SCALES",
    "TRIGGER_METHODS",
    "AttackBatch",
    "AttackBatches",
    "Augmentation",
    "ContrastiveBatch",
    "ContrastiveBatches",
    "ContrastiveEncoder",
    "FixedTrigger",
    "LinearProbe",
    "OptimizedSPCResult",
    "TriggerGenerator",
    "TriggerOptimization",
    "attack_success_rate",
    "auroc",
    "contrastive_loss",
    "fit_linear_probe",
    "nt_xent",
    "optimize_trigger",
    "optimized_spc",
    "project_linf",
    "scaled_prediction_consistency",
    "target_similarity",
    "train_contrastive",
]
