"""Recipe: learning the mixture of data sources for a small language model (ScaleBiO).

Setting. ``n_sources`` generating sources of token sequences over a vocabulary of
``vocab`` tokens, each a Markov chain drawn from the seed: source ``s`` has order
``s mod 3`` (order 0: i.i.d. tokens; order 1 and 2: the next token depends on the last one
or two), with transition rows drawn from a Dirichlet(0.3) distribution (peaked, so the
sources are far apart). Each source contributes ``n_train`` training sequences of length
``length``. One source, ``target_source`` (drawn from the seed unless given), also
generates the validation sequences (``n_val``) and a held-out set from the same
distribution (``n_heldout``) on which every reported loss is measured.

Bilevel problem. A causal transformer ``theta`` (``layers`` layers, width ``width``, two
heads, learned positions) trained on the mixture ``lambda = softmax(p)`` of the sources::

    min_p  L_val(theta*(p))
    s.t.   theta*(p) = argmin_theta  sum_s lambda_s L_s(theta)

(next-token cross-entropies). It is solved by ScaleBiO (:class:`bilevel.nn.ScaleBiOTrainer`,
Pan et al. 2024): min over ``(w, p)``, max over ``u`` of
``L_val(w) + alpha [L_train(w, p) - L_train(u, p)]``, one simultaneous Adam step each for
``u``, ``w`` and ``p`` per iteration on one minibatch of every source and one of the
validation set.

Reported. ``source_weights`` (the learnt mixture), ``target_source``, and held-out losses
on the target distribution of models trained from scratch for the same number of steps
on the learnt mixture (``val_loss``) and on the uniform mixture (``uniform_val_loss``);
also ``target_only_val_loss`` (trained on the target source alone, the ideal mixture) and
``scalebio_model_val_loss`` (the ScaleBiO model ``w`` itself, which also saw the
validation set through its objective).
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bilevel.nn as bnn
from bilevel.recipes._common import Progress, jsonable, torch_threads
from bilevel.recipes._config import ConfigError, RecipeConfig, option

__all__ = ["DataMixingConfig", "DataMixingResult", "MarkovSource", "TinyTransformer", "run"]


class MarkovSource:
    """A Markov chain of order ``order`` over ``vocab`` tokens (order 0: i.i.d.), with
    Dirichlet(``concentration``) transition rows drawn from ``rng``."""

    def __init__(self, vocab: int, order: int, rng: np.random.Generator, concentration: float = 0.3):
        self.vocab, self.order = vocab, order
        self.table = rng.dirichlet(np.full(vocab, concentration), size=vocab**order)

    def sample(self, n: int, length: int, rng: np.random.Generator) -> Tensor:
        out = np.empty((n, length), dtype=np.int64)
        out[:, : max(self.order, 1)] = rng.integers(0, self.vocab, size=(n, max(self.order, 1)))
        cum = np.cumsum(self.table, axis=1)
        for t in range(self.order if self.order else 0, length):
            state = np.zeros(n, dtype=np.int64)
            for k in range(self.order):
                state = state * self.vocab + out[:, t - self.order + k]
            u = rng.random(n)[:, None]
            out[:, t] = np.minimum((u > cum[state]).sum(axis=1), self.vocab - 1)
        return torch.as_tensor(out)


class TinyTransformer(nn.Module):
    """A causal transformer language model: token and position embeddings, ``layers``
    pre-norm encoder layers with a causal mask, a linear read-out."""

    mask: Tensor  # a buffer

    def __init__(self, vocab: int, length: int, width: int = 32, layers: int = 2, heads: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.02 * torch.randn(length, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        n = tokens.shape[1]
        h = self.tokens(tokens) + self.positions[:n]
        h = self.encoder(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(h)


def lm_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``tokens`` (batch, length)."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


@dataclass(frozen=True)
class DataMixingConfig(RecipeConfig):
    """Options of the data-mixing recipe."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"steps": 600},
        "fast": {"steps": 150},
    }

    seed: int = option(0, "seed of the sources, the data and the initialisation", minimum=0)
    n_sources: int = option(4, "number of data sources", minimum=2)
    target_source: int = option(-1, "index of the source matching validation (-1: from the seed)", minimum=-1)
    vocab: int = option(12, "vocabulary size", minimum=2)
    length: int = option(24, "tokens per sequence", minimum=4)
    n_train: int = option(2000, "training sequences per source", minimum=10)
    n_val: int = option(200, "validation sequences (target source)", minimum=10)
    n_heldout: int = option(1000, "held-out sequences of the target source", minimum=10)
    batch_size: int = option(32, "sequences per source per step", minimum=1)
    width: int = option(32, "transformer width", minimum=4)
    layers: int = option(2, "transformer layers", minimum=1)
    steps: int = option(None, "ScaleBiO steps (also the baselines' training steps)", minimum=1)
    lr: float = option(3e-3, "Adam learning rate of the models", minimum=0.0, exclusive_minimum=True)
    mixture_lr: float = option(0.05, "Adam learning rate of the mixture logits", minimum=0.0, exclusive_minimum=True)
    alpha: float = option(1.0, "ScaleBiO penalty", minimum=0.0, exclusive_minimum=True)
    tau: float = option(1.0, "penalty growth per stage (1: constant)", minimum=1.0)
    threads: int = option(1, "torch intra-op threads (0: leave unchanged)", minimum=0)

    def _check(self) -> None:
        if self.target_source >= self.n_sources:
            raise ConfigError(
                f"option 'target_source' must be < n_sources = {self.n_sources}, got {self.target_source}"
            )


@dataclass
class DataMixingResult:
    """Outcome of the data-mixing recipe (see the module docstring)."""

    config: DataMixingConfig
    source_weights: list[float]
    target_source: int
    val_loss: float
    uniform_val_loss: float
    target_only_val_loss: float
    scalebio_model_val_loss: float
    source_orders: list[int]
    history: dict[str, list[Any]]
    runtime: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    PLOT: ClassVar[tuple[str | tuple[str, ...], ...]] = ("target_weight", "val_loss", "gap")

    def metrics(self) -> dict[str, Any]:
        return {
            "source_weights": self.source_weights,
            "target_source": self.target_source,
            "target_weight": self.source_weights[self.target_source],
            "val_loss": self.val_loss,
            "uniform_val_loss": self.uniform_val_loss,
            "target_only_val_loss": self.target_only_val_loss,
            "scalebio_model_val_loss": self.scalebio_model_val_loss,
            "runtime_s": self.runtime,
            **{f"{k}_time_s": v for k, v in self.timings.items()},
        }

    def reference_lines(self) -> dict[str, dict[str, float]]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "config": self.config.to_dict(),
                "metrics": self.metrics(),
                "history": self.history,
                "details": {"source_orders": self.source_orders},
            }
        )


def run(config: DataMixingConfig | None = None, *, progress: bool = False) -> DataMixingResult:
    """Learn the mixture by ScaleBiO, then train from scratch on it and on the baselines."""
    config = config if config is not None else DataMixingConfig()
    if not isinstance(config, DataMixingConfig):
        raise TypeError(f"expected a DataMixingConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _run(config, progress)


def _batches(data: list[Tensor], batch_size: int, seed: int) -> Any:
    """An endless stream of tuples with one shuffled minibatch per source."""
    gen = torch.Generator().manual_seed(seed)

    class _Epochs:
        def __iter__(self):
            perms = [torch.randperm(len(d), generator=gen) for d in data]
            n = min(len(d) for d in data) // batch_size
            for i in range(n):
                yield tuple(d[p[i * batch_size : (i + 1) * batch_size]] for d, p in zip(data, perms))

    return _Epochs()


def _train_on_mixture(
    config: DataMixingConfig, weights: Tensor, data: list[Tensor], seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyTransformer(config.vocab, config.length - 1, config.width, config.layers).float()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    stream: Iterator[Any] = iter(())
    batches = _batches(data, config.batch_size, seed + 1)
    for _ in range(config.steps):
        batch = next(stream, None)
        if batch is None:
            stream = iter(batches)
            batch = next(stream)
        loss = sum(w * lm_loss(model, b) for w, b in zip(weights, batch) if w > 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def _heldout(model: nn.Module, tokens: Tensor) -> float:
    return float(lm_loss(model, tokens))


def _run(config: DataMixingConfig, progress: bool) -> DataMixingResult:
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    S = config.n_sources
    orders = [s % 3 for s in range(S)]
    sources = [MarkovSource(config.vocab, order, rng) for order in orders]
    target = int(rng.integers(S)) if config.target_source < 0 else config.target_source
    train = [src.sample(config.n_train, config.length, rng) for src in sources]
    val = sources[target].sample(config.n_val, config.length, rng)
    heldout = sources[target].sample(config.n_heldout, config.length, rng)
    model_seed = config.seed + 1000

    torch.manual_seed(model_seed)
    model = TinyTransformer(config.vocab, config.length - 1, config.width, config.layers).float()
    hparams = {"logits": torch.zeros(S, dtype=torch.float32, requires_grad=True)}

    def inner_loss(m: nn.Module, h: dict[str, Tensor], batch: tuple[Tensor, ...]) -> Tensor:
        weights = torch.softmax(h["logits"], 0)
        return functools.reduce(operator.add, (weights[s] * lm_loss(m, b) for s, b in enumerate(batch)))

    def outer_loss(m: nn.Module, h: dict[str, Tensor], batch: Tensor) -> Tensor:
        return lm_loss(m, batch)

    val_gen = torch.Generator().manual_seed(config.seed + 2)

    class _ValBatches:
        def __iter__(self):
            perm = torch.randperm(len(val), generator=val_gen)
            for i in range(0, len(val) - config.batch_size + 1, config.batch_size):
                yield val[perm[i : i + config.batch_size]]

    trainer = bnn.ScaleBiOTrainer(
        model,
        hparams,
        inner_loss,
        outer_loss,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=config.lr),
        outer_optimizer=torch.optim.Adam([hparams["logits"]], lr=config.mixture_lr),
        inner_data=_batches(train, config.batch_size, config.seed + 3),
        outer_data=_ValBatches(),
        alpha=config.alpha,
        tau=config.tau,
        stage_steps=max(config.steps // 4, 1),
    )
    history: dict[str, list[Any]] = {k: [] for k in ("iteration", "target_weight", "val_loss", "gap", "weights", "time")}
    every = max(config.steps // 100, 1)

    def record(tr: bnn.ScaleBiOTrainer, rec: dict[str, float]) -> None:
        bar.update(val=rec["outer_loss"], gap=rec["gap"])
        if rec["step"] % every and rec["step"] != config.steps:
            return
        w = torch.softmax(hparams["logits"].detach(), 0)
        history["iteration"].append(rec["step"])
        history["target_weight"].append(float(w[target]))
        history["val_loss"].append(rec["outer_loss"])
        history["gap"].append(rec["gap"])
        history["weights"].append(w.tolist())
        history["time"].append(rec["time"])

    timings: dict[str, float] = {}
    t = time.perf_counter()
    with Progress(config.steps, "data_mixing: ScaleBiO", progress) as bar:
        trainer.fit(config.steps, callbacks=[record])
    timings["scalebio"] = time.perf_counter() - t
    learnt = torch.softmax(hparams["logits"].detach(), 0)
    uniform = torch.full((S,), 1.0 / S, dtype=torch.float32)
    one_hot = torch.zeros(S, dtype=torch.float32)
    one_hot[target] = 1.0
    losses = {}
    for name, weights in (("learnt", learnt), ("uniform", uniform), ("target_only", one_hot)):
        t = time.perf_counter()
        trained = _train_on_mixture(config, weights, train, model_seed)
        timings[f"{name}_training"] = time.perf_counter() - t
        losses[name] = _heldout(trained, heldout)
    return DataMixingResult(
        config=config,
        source_weights=learnt.tolist(),
        target_source=target,
        val_loss=losses["learnt"],
        uniform_val_loss=losses["uniform"],
        target_only_val_loss=losses["target_only"],
        scalebio_model_val_loss=_heldout(model, heldout),
        source_orders=orders,
        history=history,
        runtime=time.perf_counter() - started,
        timings=timings,
    )
