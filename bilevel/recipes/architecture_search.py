"""Recipe: differentiable architecture search on digits -- DARTS (first and second order)
and RARTS, against random architectures of the same size.

Setting. scikit-learn's digits split with a fixed ``seed`` into ``n_train`` (search
training: the weights), ``n_val`` (search validation: the architecture) and ``n_test``
images, standardised on the training part.

Search space (:mod:`bilevel.nn.darts`). A ``Linear(64, dim)`` stem (node 0), a cell of
``nodes`` nodes, each the sum over every earlier node of a mixed operation over
:data:`~bilevel.nn.darts.OPS` (``none``, ``skip_connect``, and ``act -> Linear -> BatchNorm``
for ``act`` in linear, ReLU, tanh, sigmoid), a classifier on the concatenated nodes.

Search (``method``). ``search_steps`` steps on minibatches of ``batch_size`` images: the
weights by SGD (learning rate ``lr``, momentum 0.9, weight decay 3e-4), the architecture by
Adam (``arch_lr``, betas (0.5, 0.999), weight decay 1e-3), the settings of DARTS' code;

* ``first_order``: DARTS with ``xi = 0``;
* ``second_order``: DARTS with ``xi = lr``, the hypergradient by ``mode``: ``"fd"`` (DARTS'
  finite differences) or ``"unrolled"`` (the exact derivative through the virtual step of
  the live SGD, momentum and weight decay included);
* ``rarts``: RARTS's relaxed first-order scheme with a second network on the validation
  data, ``penalty`` (``lambda``) and ``coupling`` (``beta``).

Evaluation. The cell is derived as in DARTS (two strongest non-``none`` inputs per node,
:func:`~bilevel.nn.darts.derive`) and retrained from scratch
(:class:`~bilevel.nn.darts.CellNetwork`: ``retrain_steps`` full-batch Adam steps, learning
rate 3e-3, on the training and validation images together, as DARTS retrains on the whole
training set) with ``retrain_seeds`` initialisations; ``test_accuracy`` is the mean test
accuracy. ``n_random`` random cells of the same size (the same number of inputs per node and
of skip connections, hence the same parameter count; uniformly random inputs and operations
otherwise, :func:`~bilevel.nn.darts.random_genotype`) are retrained the same way.

Reported: ``architecture`` (the derived cell, as text), ``test_accuracy``, ``search_time``
(seconds, the search alone), ``random_architecture_test_accuracy`` (the mean over the random
cells; each one's in ``random_test_accuracies``), ``parameters``, ``supernet_val_accuracy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.nn.darts import (
    DARTS,
    OPS,
    RARTS,
    CellNetwork,
    Genotype,
    SearchNetwork,
    derive,
    random_genotype,
)
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option
from bilevel.recipes._digits import DTYPE, N_CLASSES, N_DIGITS, Split, accuracy, load_digits_split

__all__ = ["ArchitectureSearchConfig", "ArchitectureSearchResult", "plot_cell", "run"]

METHODS = ("first_order", "second_order", "rarts")


@dataclass(frozen=True)
class ArchitectureSearchConfig(RecipeConfig):
    """Options of the architecture-search recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"search_steps": 300, "retrain_steps": 300},
        "fast": {"search_steps": 60, "retrain_steps": 150},
    }

    seed: int = option(0, "seed of the split, the initialisation and the random cells", minimum=0)
    method: str = option("second_order", "search method", choices=METHODS)
    mode: str = option("fd", "second-order hypergradient: 'fd' or 'unrolled'", choices=("fd", "unrolled"))
    n_train: int = option(700, "search training images (weights)", minimum=20)
    n_val: int = option(500, "search validation images (architecture)", minimum=20)
    n_test: int = option(597, "test images", minimum=10)
    dim: int = option(16, "width of the cell's nodes", minimum=1)
    nodes: int = option(4, "intermediate nodes of the cell", minimum=1)
    search_steps: int = option(None, "search iterations", minimum=1)
    batch_size: int = option(128, "minibatch size of the search", minimum=2)
    lr: float = option(0.05, "SGD learning rate of the weights (and DARTS' xi)", minimum=0.0, exclusive_minimum=True)
    arch_lr: float = option(0.01, "Adam learning rate of the architecture", minimum=0.0, exclusive_minimum=True)
    penalty: float = option(1.0, "RARTS: weight lambda of the training loss", minimum=0.0)
    coupling: float = option(1.0, "RARTS: weight beta of ||y - w||^2 / 2", minimum=0.0)
    retrain_steps: int = option(None, "full-batch Adam steps of each retraining", minimum=1)
    retrain_seeds: int = option(2, "initialisations per retrained cell", minimum=1)
    n_random: int = option(3, "random cells of the same size", minimum=1)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        total = self.n_train + self.n_val + self.n_test
        if total > N_DIGITS:
            raise ConfigError(f"n_train + n_val + n_test = {total} exceeds the {N_DIGITS} digits images")
        if self.batch_size > min(self.n_train, self.n_val):
            raise ConfigError(
                f"option 'batch_size' ({self.batch_size}) must not exceed n_train and n_val"
            )


@dataclass
class ArchitectureSearchResult:
    """Outcome of the architecture-search recipe (see the module docstring)."""

    config: ArchitectureSearchConfig
    genotype: Genotype
    test_accuracy: float
    test_accuracies: list[float]
    random_genotypes: list[Genotype]
    random_test_accuracies: list[float]
    parameters: int
    random_parameters: list[int]
    supernet_val_accuracy: float
    alpha: list[list[float]]
    history: dict[str, list[float]]
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        ("train_loss", "val_loss"),
        tuple(f"weight_{op}" for op in OPS),
    )

    def metrics(self) -> dict[str, Any]:
        return {
            "architecture": str(self.genotype),
            "test_accuracy": self.test_accuracy,
            "search_time": self.timings["search"],
            "random_architecture_test_accuracy": float(np.mean(self.random_test_accuracies)),
            "random_architectures": [str(g) for g in self.random_genotypes],
            "random_test_accuracies": self.random_test_accuracies,
            "parameters": self.parameters,
            "random_parameters": float(np.mean(self.random_parameters)),
            "supernet_val_accuracy": self.supernet_val_accuracy,
            "method": self.config.method,
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items() if k != "search"},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {
                    "edges": [list(e) for e in self.genotype.edges],
                    "alpha": self.alpha,
                    "ops": list(OPS),
                    "test_accuracies": self.test_accuracies,
                    "random_edges": [[list(e) for e in g.edges] for g in self.random_genotypes],
                },
            }
        )


def plot_cell(genotype: Genotype, path: Path, title: str = "") -> None:
    """The cell as a graph: nodes left to right, each kept edge an arc labelled with its
    operation (Matplotlib's Agg canvas; the file must not exist)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    n = genotype.nodes
    fig = Figure(figsize=(1.9 * (n + 2), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs: dict[int | str, float] = {k: float(k) for k in range(n + 1)}
    xs["out"] = n + 1.0
    colors = {"skip_connect": "tab:gray", "linear": "tab:blue", "relu": "tab:red", "tanh": "tab:green", "sigmoid": "tab:purple"}
    top = 0.3
    for node, src, op in genotype.edges:
        span = node - src
        rad = 0.0 if span == 1 else -0.35  # bends upwards; the apex is at |rad| span / 2
        apex = 0.175 * span if span > 1 else 0.0
        top = max(top, apex)
        ax.add_patch(FancyArrowPatch(
            (xs[src], 0), (xs[node], 0), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
            mutation_scale=12, color=colors.get(op, "black"), linewidth=1.5, shrinkA=14, shrinkB=14,
        ))
        ax.text((xs[src] + xs[node]) / 2, apex + 0.05, op, ha="center", va="bottom", fontsize=8,
                color=colors.get(op, "black"))
    for node in range(1, n + 1):
        ax.add_patch(FancyArrowPatch((xs[node], 0), (xs["out"], 0), connectionstyle="arc3,rad=0.35",
                                     arrowstyle="-|>", mutation_scale=8, color="lightgray", shrinkA=14, shrinkB=14))
    for key, x in xs.items():
        label = "stem" if key == 0 else ("concat" if key == "out" else str(key))
        ax.scatter([x], [0], s=900, color="white", edgecolor="black", zorder=3)
        ax.text(x, 0, label, ha="center", va="center", fontsize=8, zorder=4)
    ax.set_xlim(-0.6, n + 1.6)
    ax.set_ylim(-0.175 * n - 0.3, top + 0.35)
    ax.axis("off")
    ax.set_title(title or str(genotype), fontsize=9)
    with open(path, "xb") as f:
        fig.savefig(f, format="png", dpi=110)


def run(config: ArchitectureSearchConfig | None = None, *, progress: bool = False) -> ArchitectureSearchResult:
    """Search, derive and retrain the cell; retrain random cells of the same size."""
    config = config if config is not None else ArchitectureSearchConfig()
    if not isinstance(config, ArchitectureSearchConfig):
        raise TypeError(f"expected an ArchitectureSearchConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _minibatches(X: Tensor, y: Tensor, batch_size: int, seed: int) -> Any:
    """Endless shuffled minibatches (a fresh permutation per pass, from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)

    class _Epochs:
        def __iter__(self):
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X) - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                yield X[idx], y[idx]

    return _Epochs()


def _loss(model: nn.Module, hparams: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(model(batch[0], hparams["alpha"]), batch[1])


def _run(config: ArchitectureSearchConfig, progress: bool) -> ArchitectureSearchResult:
    started = time.perf_counter()
    data = load_digits_split(config.n_train, config.n_val, config.n_test, config.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    net, alpha, history = _search(config, data, progress)
    timings["search"] = time.perf_counter() - t
    with torch.no_grad():
        supernet_val = float((net(data.X_val, alpha).argmax(1) == data.y_val).float().mean())
    genotype = derive(alpha, config.nodes)

    X = torch.cat([data.X_train, data.X_val])
    y = torch.cat([data.y_train, data.y_val])
    t = time.perf_counter()
    accs = [_retrain(config, genotype, X, y, data, config.seed * 1000 + r) for r in range(config.retrain_seeds)]
    timings["retrain"] = time.perf_counter() - t
    rng = np.random.default_rng(config.seed)
    randoms = [random_genotype(config.nodes, rng, like=genotype) for _ in range(config.n_random)]
    t = time.perf_counter()
    random_accs = [
        float(np.mean([_retrain(config, g, X, y, data, config.seed * 1000 + r) for r in range(config.retrain_seeds)]))
        for g in randoms
    ]
    timings["random"] = time.perf_counter() - t
    return ArchitectureSearchResult(
        config=config,
        genotype=genotype,
        test_accuracy=float(np.mean(accs)),
        test_accuracies=accs,
        random_genotypes=randoms,
        random_test_accuracies=random_accs,
        parameters=_count(CellNetwork(genotype, 64, N_CLASSES, config.dim)),
        random_parameters=[_count(CellNetwork(g, 64, N_CLASSES, config.dim)) for g in randoms],
        supernet_val_accuracy=supernet_val,
        alpha=alpha.detach().tolist(),
        history=history,
        runtime=time.perf_counter() - started,
        timings=timings,
    )


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _search(
    config: ArchitectureSearchConfig, data: Split, progress: bool
) -> tuple[SearchNetwork, Tensor, dict[str, list[float]]]:
    torch.manual_seed(config.seed)
    net = SearchNetwork(64, N_CLASSES, config.dim, config.nodes).to(DTYPE)
    alpha = net.init_alpha(generator=torch.Generator().manual_seed(config.seed))
    alphas = {"alpha": alpha}
    train = _minibatches(data.X_train, data.y_train, config.batch_size, config.seed)
    val = _minibatches(data.X_val, data.y_val, config.batch_size, config.seed + 1)

    def weight_optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=3e-4)

    arch_optimizer = torch.optim.Adam([alpha], lr=config.arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    search: DARTS | RARTS
    if config.method == "rarts":
        search = RARTS(
            net, alphas, _loss, _loss,
            weight_optimizer=weight_optimizer(net.parameters()), val_weight_optimizer=weight_optimizer,
            arch_optimizer=arch_optimizer, train_data=train, val_data=val,
            penalty=config.penalty, coupling=config.coupling,
        )
    else:
        search = DARTS(
            net, alphas, _loss, _loss,
            weight_optimizer=weight_optimizer(net.parameters()), arch_optimizer=arch_optimizer,
            train_data=train, val_data=val, order=1 if config.method == "first_order" else 2,
            mode=config.mode,
        )
    keys = ("iteration", "train_loss", "val_loss", *(f"weight_{op}" for op in OPS), "time")
    history: dict[str, list[float]] = {k: [] for k in keys}

    def record(_: Any, rec: dict[str, Any]) -> None:
        weights = torch.softmax(alpha.detach(), -1).mean(0)
        history["iteration"].append(rec["step"])
        history["train_loss"].append(rec["inner_loss"])
        history["val_loss"].append(rec["outer_loss"])
        for op, w in zip(OPS, weights.tolist()):
            history[f"weight_{op}"].append(w)
        history["time"].append(rec["time"])
        bar.update(train=rec["inner_loss"], val=rec["outer_loss"])

    with Progress(config.search_steps, f"architecture search ({config.method})", progress) as bar:
        search.fit(config.search_steps, callbacks=[record])
    return net, alpha, history


def _retrain(config: ArchitectureSearchConfig, genotype: Genotype, X: Tensor, y: Tensor, data: Split, seed: int) -> float:
    """Train the discrete cell from scratch (full-batch Adam) and return its test accuracy."""
    torch.manual_seed(seed)
    model = CellNetwork(genotype, 64, N_CLASSES, config.dim).to(DTYPE)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(config.retrain_steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), y).backward()
        opt.step()
    model.eval()
    return accuracy(model, data.X_test, data.y_test)
