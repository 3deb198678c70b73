"""The trained value function of Neur2RO as a scikit-learn-style estimator.

:class:`Neur2ROValueModel` wraps :class:`~bilevel.robust.neur2ro.network.SetValueNetwork`
with the input and label scalings, fits it on a
:class:`~bilevel.robust.neur2ro.data.Neur2RODataset` by minibatch Adam on the mean squared
error (the paper's loss), keeps the epoch with the best validation error, and can be saved
and loaded (torch state dict + plain-data config) so that one trained model serves many
instances of a class.

Scalings. Instance features are standardised with the training mean and standard
deviation; decision values ``x_i`` / ``xi_j`` enter unscaled. A label ``G`` of an instance
with scale ``s`` (:func:`~bilevel.robust.neur2ro.data.label_scale`) is trained as
``(G / s - mu) / sigma``, so the prediction in cost units is::

    G_hat(x, xi) = s (mu + sigma NN(x, xi)),

an increasing affine map of the network output (the argmax over scenarios is unchanged).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bilevel.robust.model import TwoStageRobustProblem
from bilevel.robust.neur2ro.data import InstanceFeatures, Neur2RODataset, instance_features
from bilevel.robust.neur2ro.network import NetworkConfig, SetValueNetwork

__all__ = ["Neur2ROValueModel", "PreparedInstance"]

_FORMAT = "bilevel.robust.neur2ro/1"


@dataclass(frozen=True)
class PreparedInstance:
    """Network inputs of one instance: scaled item features and the label map.

    ``prediction = offset + factor * NN(x, xi)`` in cost units.
    """

    x_features: np.ndarray
    xi_features: np.ndarray
    factor: float
    offset: float


class Neur2ROValueModel:
    """Learned ``G(x, xi) = xi^T C x + Q(x, xi)`` (cost units) for a class of instances.

    Parameters
    ----------
    phi_dims, rho_dims, value_dims:
        Network widths (:class:`~bilevel.robust.neur2ro.network.NetworkConfig`).
    encoder:
        ``"separate"`` (the paper's two set encoders), ``"joint"`` (one encoder of the
        aligned items ``[x_i, xi_i, f_i]``, for instances whose features are
        :attr:`~bilevel.robust.neur2ro.data.InstanceFeatures.aligned`, such as the
        knapsack) or ``"auto"``: joint when the training instances are aligned, else
        separate. See :mod:`bilevel.robust.neur2ro.network`. The default is the paper's
        separate encoder. Measured (``benchmarks/robust.md``): the joint encoder was
        better for models trained on one small knapsack (n = 6: mean gap 1.4% against
        2.8% on ten instances; n = 10: better or equal on the benchmark's four), but worse
        at n = 15 and n = 20 and for class models (published n = 20 UN: mean gap 1.1%
        against 0.5%), whose main problems it also makes slower.
    n_epochs:
        Passes over the training split.
    learning_rate, weight_decay:
        Adam hyperparameters.
    batch_size:
        Minibatch size.
    validation_fraction:
        Share of the sampled decisions (with all their scenarios) held out to select the
        best epoch (0: keep the last epoch).
    ranking_weight:
        Weight ``w`` of a within-decision term added to the paper's mean squared error:
        with ``e`` the scaled errors and ``e_bar(x)`` their mean over the scenarios of the
        same sampled ``x`` in the batch, the loss is ``mean(e^2) + w mean((e - e_bar(x))^2)``.
        The argmax main problem uses the network only to rank scenarios for a fixed ``x``,
        which the second term targets; ``w = 0`` is the paper's loss.
    seed:
        Seeds the initialisation, the split and the shuffling (training is reproducible).
    allow_unseen_sizes:
        A model refuses instances whose ``(n_x, n_xi)`` it never saw in training unless
        this is ``True`` (the set encoder accepts any size, but its accuracy there is
        untested).

    Attributes
    ----------
    network_:
        The trained :class:`SetValueNetwork` (float64, eval mode).
    feature_kind_:
        Featurizer of the training instances (``"knapsack"``, ...).
    trained_sizes_:
        Sorted list of the ``(n_x, n_xi)`` seen in training.
    training_time_, n_samples_, train_loss_, validation_mae_:
        Seconds of training, number of samples, final training loss (scaled units) and the
        selected epoch's validation mean absolute error in cost units (``nan`` without a
        validation split).
    training_info_:
        The training settings and figures (JSON-serialisable, saved with the model): the
        dataset's sampling settings (``n_first_stage``, ``n_scenarios``, ``seed``, ...),
        ``n_instances``, ``n_samples``, times, ``validation_mae``; callers may add entries
        (``bilevel robust train`` records the instance class) before :meth:`save`.
    """

    def __init__(
        self,
        *,
        phi_dims: tuple[int, ...] = (16, 8),
        rho_dims: tuple[int, ...] = (32, 4),
        value_dims: tuple[int, ...] = (16,),
        encoder: str = "separate",
        n_epochs: int = 200,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 64,
        validation_fraction: float = 0.2,
        ranking_weight: float = 1.0,
        seed: int = 0,
        allow_unseen_sizes: bool = False,
    ) -> None:
        self.phi_dims = phi_dims
        self.rho_dims = rho_dims
        self.value_dims = value_dims
        self.encoder = encoder
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.ranking_weight = ranking_weight
        self.seed = seed
        self.allow_unseen_sizes = allow_unseen_sizes

    # ------------------------------------------------------------------ helpers
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters (scikit-learn convention)."""
        names = [
            "phi_dims",
            "rho_dims",
            "value_dims",
            "encoder",
            "n_epochs",
            "learning_rate",
            "weight_decay",
            "batch_size",
            "validation_fraction",
            "ranking_weight",
            "seed",
            "allow_unseen_sizes",
        ]
        return {k: getattr(self, k) for k in names}

    def _check_hyperparameters(self) -> None:
        if self.encoder not in ("auto", "separate", "joint"):
            raise ValueError(f"encoder must be 'auto', 'separate' or 'joint', got {self.encoder!r}")
        for name in ("n_epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must lie in [0, 1), got {self.validation_fraction}"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError(
                "this Neur2ROValueModel is not fitted: call fit(dataset) or load a saved model"
            )

    def prepare(self, problem: TwoStageRobustProblem) -> PreparedInstance:
        """Scaled features of ``problem``; refuses instances the model cannot serve."""
        self._check_fitted()
        feats = instance_features(problem)
        return self._prepare(feats, problem, check=True)

    def _prepare(
        self, feats: InstanceFeatures, problem: TwoStageRobustProblem, *, check: bool
    ) -> PreparedInstance:
        if check:
            if feats.kind != self.feature_kind_:
                raise ValueError(
                    f"the model was trained on {self.feature_kind_!r} instances; this instance "
                    f"has {feats.kind!r} features"
                )
            cfg = self.network_.config
            if feats.x.shape[1] != cfg.x_feature_dim or feats.xi.shape[1] != cfg.xi_feature_dim:
                raise ValueError(
                    f"feature sizes ({feats.x.shape[1]}, {feats.xi.shape[1]}) of this instance do "
                    f"not match the model's ({cfg.x_feature_dim}, {cfg.xi_feature_dim})"
                )
            if self.network_.joint and not feats.aligned:
                raise ValueError(
                    "the model has a joint encoder, which needs aligned instances "
                    "(first-stage item i and uncertainty component i the same object)"
                )
            size = [problem.n_x, problem.n_xi]
            if size not in self.trained_sizes_ and not self.allow_unseen_sizes:
                raise ValueError(
                    f"the model was trained on instances of sizes (n_x, n_xi) in "
                    f"{self.trained_sizes_}, not {tuple(size)}; train on this size or set "
                    "allow_unseen_sizes=True"
                )
        return PreparedInstance(
            x_features=(feats.x - self.x_mean_) / self.x_std_,
            xi_features=(feats.xi - self.xi_mean_) / self.xi_std_,
            factor=feats.scale * self.label_std_,
            offset=feats.scale * self.label_mean_,
        )

    @staticmethod
    def _items(values: np.ndarray, features: np.ndarray) -> np.ndarray:
        return np.hstack([np.asarray(values, dtype=float).reshape(-1, 1), features])

    @staticmethod
    def _pad(blocks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        n_max = max(b.shape[0] for b in blocks)
        width = blocks[0].shape[1]
        out = np.zeros((len(blocks), n_max, width))
        mask = np.zeros((len(blocks), n_max))
        for k, b in enumerate(blocks):
            out[k, : b.shape[0]] = b
            mask[k, : b.shape[0]] = 1.0
        return torch.from_numpy(out), torch.from_numpy(mask)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, dataset: Neur2RODataset, *, progress: bool = False) -> Neur2ROValueModel:
        """Train on ``dataset`` (see the module docstring for the scalings); ``progress``
        shows a tqdm bar over the epochs on stderr (rate, ETA, validation loss)."""
        self._check_hyperparameters()
        if not isinstance(dataset, Neur2RODataset) or len(dataset) == 0:
            raise ValueError("fit needs a non-empty Neur2RODataset")
        if not np.all(np.isfinite(dataset.label)):
            raise ValueError("dataset labels hold NaN or infinite values")
        start = time.perf_counter()
        feats = dataset.features
        kinds = {f.kind for f in feats}
        if len(kinds) != 1:
            raise ValueError(f"the dataset mixes feature kinds {kinds}")
        all_x = np.vstack([f.x for f in feats])
        all_xi = np.vstack([f.xi for f in feats])
        self.x_mean_, self.xi_mean_ = all_x.mean(axis=0), all_xi.mean(axis=0)
        self.x_std_ = np.where(all_x.std(axis=0) > 1e-12, all_x.std(axis=0), 1.0)
        self.xi_std_ = np.where(all_xi.std(axis=0) > 1e-12, all_xi.std(axis=0), 1.0)
        scales = np.array([f.scale for f in feats])[dataset.instance]
        scaled = dataset.label / scales
        self.label_mean_ = float(scaled.mean())
        self.label_std_ = float(scaled.std()) if scaled.std() > 1e-12 else 1.0
        target = torch.from_numpy((scaled - self.label_mean_) / self.label_std_)
        self.feature_kind_ = kinds.pop()
        self.trained_sizes_ = [list(s) for s in sorted({(p.n_x, p.n_xi) for p in dataset.problems})]
        aligned = all(f.aligned for f in feats)
        encoder = self.encoder
        if encoder == "auto":
            encoder = "joint" if aligned else "separate"
        elif encoder == "joint" and not aligned:
            raise ValueError(
                "encoder='joint' needs aligned instances (n_x = n_xi, item i of x and xi the "
                "same object with shared features, as for the knapsack); use 'separate'"
            )
        config = NetworkConfig(
            x_feature_dim=all_x.shape[1],
            xi_feature_dim=all_xi.shape[1],
            phi_dims=tuple(self.phi_dims),
            rho_dims=tuple(self.rho_dims),
            value_dims=tuple(self.value_dims),
            encoder=encoder,
        )
        prepared = [
            self._prepare(f, p, check=False) for f, p in zip(feats, dataset.problems, strict=True)
        ]
        x_blocks = [
            self._items(x, prepared[k].x_features)
            for x, k in zip(dataset.x, dataset.instance, strict=True)
        ]
        xi_blocks = [
            self._items(xi, prepared[k].xi_features)
            for xi, k in zip(dataset.xi, dataset.instance, strict=True)
        ]
        X, X_mask = self._pad(x_blocks)
        XI, XI_mask = self._pad(xi_blocks)

        groups = torch.from_numpy(np.unique(dataset.group, return_inverse=True)[1])
        n_groups = int(groups.max()) + 1
        members = [torch.nonzero(groups == g).flatten() for g in range(n_groups)]
        unit = torch.from_numpy(scales * self.label_std_)  # scaled error -> cost units

        def loss_fn(pred, idx):
            err = pred - target[idx]
            loss = torch.mean(err**2)
            if self.ranking_weight > 0:
                # within-decision term: errors of scenario *differences* for a fixed x
                _, local = torch.unique(groups[idx], return_inverse=True)
                count = torch.zeros(int(local.max()) + 1, dtype=err.dtype).index_add_(
                    0, local, torch.ones_like(err)
                )
                mean = torch.zeros_like(count).index_add_(0, local, err) / count
                loss = loss + self.ranking_weight * torch.mean((err - mean[local]) ** 2)
            return loss

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = SetValueNetwork(config)
            gen = torch.Generator().manual_seed(self.seed)
            n = len(target)
            perm = torch.randperm(n_groups, generator=gen)
            n_val_groups = round(self.validation_fraction * n_groups) if n_groups >= 5 else 0
            val_groups, tr_groups = perm[:n_val_groups], perm[n_val_groups:]
            val_idx = (
                torch.cat([members[g] for g in val_groups.tolist()])
                if n_val_groups
                else torch.zeros(0, dtype=torch.long)
            )
            per_batch = max(1, round(self.batch_size * n_groups / n))
            opt = torch.optim.Adam(
                net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
            )
            best_state, best_val, best_mae = copy.deepcopy(net.state_dict()), math.inf, math.nan
            train_loss = math.nan
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=self.n_epochs, desc="training", unit="epoch", leave=False, delay=2.0
                )
            for _ in range(self.n_epochs):
                net.train()
                order = tr_groups[torch.randperm(len(tr_groups), generator=gen)].tolist()
                total, count = 0.0, 0
                for b in range(0, len(order), per_batch):
                    idx = torch.cat([members[g] for g in order[b : b + per_batch]])
                    loss = loss_fn(net(X[idx], XI[idx], X_mask[idx], XI_mask[idx]), idx)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                train_loss = total / max(count, 1)
                if n_val_groups:
                    net.eval()
                    with torch.no_grad():
                        pred = net(X[val_idx], XI[val_idx], X_mask[val_idx], XI_mask[val_idx])
                        val = float(loss_fn(pred, val_idx))
                    if val < best_val:
                        best_val, best_state = val, copy.deepcopy(net.state_dict())
                        best_mae = float(
                            torch.mean(torch.abs(pred - target[val_idx]) * unit[val_idx])
                        )
                if bar is not None:
                    bar.set_postfix_str(f"loss {train_loss:.3g} val MAE {best_mae:.3g}", False)
                    bar.update(1)
            if bar is not None:
                bar.close()
            if n_val_groups:
                net.load_state_dict(best_state)
        net.eval()
        self.network_ = net
        self.n_samples_ = int(n)
        self.train_loss_ = float(train_loss)
        self.validation_mae_ = best_mae
        self.training_time_ = time.perf_counter() - start
        self.training_info_ = {
            **{k: v for k, v in dataset.info.items() if _jsonable(v)},
            "n_instances": len(dataset.problems),
            "n_samples": int(n),
            "n_infeasible_samples": int(dataset.n_infeasible),
            "data_generation_time": float(dataset.generation_time),
            "training_time": float(self.training_time_),
            "validation_mae": float(best_mae),
        }
        return self

    @torch.no_grad()
    def predict(self, problem: TwoStageRobustProblem, x: Any, xi: Any) -> np.ndarray:
        """Predicted ``G(x, xi)`` in cost units for rows of ``x`` (``(k, n_x)`` or one
        ``(n_x,)``) and of ``xi`` (broadcast against each other)."""
        prep = self.prepare(problem)
        return self.predict_prepared(prep, x, xi)

    @torch.no_grad()
    def codes(
        self, prep: PreparedInstance, x: Any | None = None, xi: Any | None = None
    ) -> np.ndarray:
        """Set encoding ``rho_x(sum phi_x)`` of one ``x`` (or ``rho_xi(sum phi_xi)`` of one
        ``xi``) as a numpy vector; exactly one of ``x`` and ``xi`` must be given (separate
        encoder only)."""
        if (x is None) == (xi is None):
            raise ValueError("give exactly one of x and xi")
        if x is not None:
            items = self._items(x, prep.x_features)
            out = self.network_.encode_x(torch.from_numpy(items)[None])
        elif xi is not None:
            items = self._items(xi, prep.xi_features)
            out = self.network_.encode_xi(torch.from_numpy(items)[None])
        return out[0].numpy()

    @torch.no_grad()
    def predict_prepared(self, prep: PreparedInstance, x: Any, xi: Any) -> np.ndarray:
        """:meth:`predict` for already :meth:`prepare`-d features."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        xi = np.atleast_2d(np.asarray(xi, dtype=float))
        if x.shape[1] != prep.x_features.shape[0] or xi.shape[1] != prep.xi_features.shape[0]:
            raise ValueError(
                f"x must have {prep.x_features.shape[0]} and xi {prep.xi_features.shape[0]} "
                f"columns, got {x.shape} and {xi.shape}"
            )
        k = max(len(x), len(xi))
        x = np.broadcast_to(x, (k, x.shape[1]))
        xi = np.broadcast_to(xi, (k, xi.shape[1]))
        X = torch.from_numpy(
            np.concatenate(
                [x[:, :, None], np.broadcast_to(prep.x_features, (k, *prep.x_features.shape))],
                axis=2,
            )
        )
        XI = torch.from_numpy(
            np.concatenate(
                [xi[:, :, None], np.broadcast_to(prep.xi_features, (k, *prep.xi_features.shape))],
                axis=2,
            )
        )
        out = self.network_(X, XI).numpy()
        return prep.offset + prep.factor * out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike | Any) -> None:
        """Write hyperparameters, scalings, the state dict and :attr:`training_info_` with
        :func:`torch.save` (``path``: a file name or a binary file object)."""
        self._check_fitted()
        payload = {
            "format": _FORMAT,
            "params": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()
            },
            "config": self.network_.config.to_dict(),
            "state_dict": self.network_.state_dict(),
            "fitted": {
                "feature_kind": self.feature_kind_,
                "trained_sizes": self.trained_sizes_,
                "x_mean": self.x_mean_.tolist(),
                "x_std": self.x_std_.tolist(),
                "xi_mean": self.xi_mean_.tolist(),
                "xi_std": self.xi_std_.tolist(),
                "label_mean": self.label_mean_,
                "label_std": self.label_std_,
                "n_samples": self.n_samples_,
                "train_loss": self.train_loss_,
                "validation_mae": self.validation_mae_,
                "training_time": self.training_time_,
                "training_info": self.training_info_,
            },
        }
        torch.save(payload, path if hasattr(path, "write") else os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Neur2ROValueModel:
        """Inverse of :meth:`save` (``weights_only`` loading: no code is unpickled)."""
        payload = torch.load(os.fspath(path), weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a saved Neur2ROValueModel")
        params: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in payload["params"].items()
        }
        model = cls(**params)
        net = SetValueNetwork(NetworkConfig.from_dict(payload["config"]))
        net.load_state_dict(payload["state_dict"])
        net.eval()
        fitted = payload["fitted"]
        model.network_ = net
        model.feature_kind_ = fitted["feature_kind"]
        model.trained_sizes_ = [list(s) for s in fitted["trained_sizes"]]
        for key in ("x_mean", "x_std", "xi_mean", "xi_std"):
            setattr(model, key + "_", np.asarray(fitted[key], dtype=float))
        for key in ("label_mean", "label_std", "train_loss", "validation_mae", "training_time"):
            setattr(model, key + "_", float(fitted[key]))
        model.n_samples_ = int(fitted["n_samples"])
        model.training_info_ = dict(fitted.get("training_info", {}))  # absent before 0.2
        return model


def _jsonable(value: Any) -> bool:
    """Whether ``value`` is a plain JSON scalar or a list/dict of them (``torch.save``'s
    ``weights_only`` loading accepts these)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False
