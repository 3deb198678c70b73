"""The bilevel trainer: ``inner_steps`` optimizer steps on the model, then one
hyperparameter step on the hypergradient (implementation of :class:`bilevel.nn.BilevelTrainer`).

One outer step ``s`` does

1. ``inner_steps`` times: ``inner_accumulation`` micro-batches of the inner loss,
   ``backward`` into the model's parameters only (under ``inner_autocast``), gradient
   clipping to ``inner_clip``, ``inner_optimizer.step()``, ``inner_scheduler.step()``;
2. ``outer_accumulation`` times: :func:`bilevel.nn.hypergradient` on the next inner (or
   ``hypergradient_data``) and outer batches (always in float32/64: finite-difference probes and linear solves never run
   under autocast), averaged; set as the hyperparameters' ``.grad``, clipped to
   ``outer_clip``, ``outer_optimizer.step()``, ``outer_scheduler.step()``, then the optional
   ``project(hparams)`` (for example clamping weights to be non-negative), in place under
   ``torch.no_grad``.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` by the user (without
``find_unused_parameters``): the inner steps go through DDP, whose hooks average the inner
gradients; the hypergradient averages its own products over the ranks (see
:mod:`bilevel.nn._hypergradient`), and the hyperparameters are broadcast from rank 0 when
training starts, so every rank takes the same outer steps. Each rank reads its shard of the
data (``DistributedSampler``).

A checkpoint holds the model, the hyperparameters, both optimizers and schedulers, the data
streams' positions, the RNG states and the history; :meth:`BilevelTrainer.fit` with
``resume=`` continues bit for bit (see :class:`bilevel.methods.BatchStream` for what the
data must satisfy).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from bilevel.errors import ConvergenceWarning, DivergenceError
from bilevel.methods import BatchStream
from bilevel.nn._distributed import resolve
from bilevel.nn._functional import Hparams, Loss, trainable, unwrap
from bilevel.nn._hypergradient import METHODS, hypergradient

Callback = Callable[["BilevelTrainer", dict[str, Any]], bool | None]

__all__ = ["BilevelTrainer", "TrainResult"]


@dataclass
class TrainResult:
    """Outcome of :meth:`BilevelTrainer.fit`.

    Attributes
    ----------
    status:
        ``"completed"`` (all outer steps), ``"stopped"`` (a callback returned True).
    steps:
        Outer steps done in total (including those before a resume).
    history:
        One record per outer step (the JSON-lines log's records): ``step``, ``inner_loss``
        (mean over the step's inner micro-batches), ``outer_loss``, ``hypergrad_norm``,
        ``inner_lr``, ``outer_lr``, linear-solve ``solve_iterations`` / ``solve_converged``
        where the method solves one, ``time`` (seconds since the start).
    warnings:
        Messages of the warnings raised during training (inner-loss growth, unconverged
        linear solves), also emitted as :class:`~bilevel.errors.ConvergenceWarning`.
    """

    status: str
    steps: int
    history: list[dict[str, Any]] = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    def column(self, key: str) -> list[Any]:
        """``[record[key] for record in history]`` (``None`` where a record lacks it)."""
        return [r.get(key) for r in self.history]


class BilevelTrainer:
    """Alternate inner training steps with hyperparameter steps on ``nn.Module``s.

    Parameters
    ----------
    model:
        The lower-level ``nn.Module`` (optionally ``DistributedDataParallel``).
    hparams:
        A dict of tensors that require grad, or an ``nn.Module`` (weighting network, ...).
    inner_loss, outer_loss:
        ``loss(model, hparams, batch) -> scalar`` (see :func:`bilevel.nn.hypergradient`).
    inner_optimizer, outer_optimizer:
        Any ``torch.optim`` optimizers over the model's and the hyperparameters' tensors.
    inner_data, outer_data:
        Iterables of batches (``DataLoader``s), re-iterated at the end of each pass.
    inner_steps:
        Inner optimizer steps per outer step (``K``).
    method, method_options:
        The hypergradient mode and its options (:func:`bilevel.nn.hypergradient`). For
        ``"unrolled"`` the default optimizer is the functional twin of ``inner_optimizer``
        in its current state (a look-ahead from the current parameters).
    inner_scheduler, outer_scheduler:
        Learning-rate schedulers, stepped after each optimizer step of their level.
    inner_accumulation, outer_accumulation:
        Micro-batches per optimizer step (gradients averaged).
    inner_clip, outer_clip:
        Max gradient norm (``torch.nn.utils.clip_grad_norm_``), or ``None``.
    inner_autocast:
        ``torch.bfloat16`` (or ``float16``) to run the inner steps under
        :func:`torch.autocast`; the hypergradient always runs in full precision.
    hypergradient_data:
        Iterable of the inner-loss batches the hypergradient evaluates ``H`` and ``B`` on
        (for example the whole training set, or larger batches than the inner steps use);
        default: the next batches of ``inner_data``.
    project:
        ``project(hparams)``, called under ``torch.no_grad`` after each outer step to map the
        hyperparameters back into their feasible set in place.
    divergence_factor:
        Warn (``ConvergenceWarning``) when the inner loss exceeds this multiple of its first
        value; a non-finite loss raises :class:`~bilevel.errors.DivergenceError`.
    """

    def __init__(
        self,
        model: nn.Module,
        hparams: Hparams,
        inner_loss: Loss,
        outer_loss: Loss,
        *,
        inner_optimizer: torch.optim.Optimizer,
        outer_optimizer: torch.optim.Optimizer,
        inner_data: Iterable[Any],
        outer_data: Iterable[Any],
        inner_steps: int = 1,
        method: str = "cg",
        method_options: Mapping[str, Any] | None = None,
        inner_scheduler: Any = None,
        outer_scheduler: Any = None,
        inner_accumulation: int = 1,
        outer_accumulation: int = 1,
        inner_clip: float | None = None,
        outer_clip: float | None = None,
        inner_autocast: torch.dtype | None = None,
        hypergradient_data: Iterable[Any] | None = None,
        project: Callable[[Hparams], None] | None = None,
        divergence_factor: float = 1e3,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"BilevelTrainer: method must be one of {METHODS}, got {method!r}")
        for name, value in (
            ("inner_steps", inner_steps),
            ("inner_accumulation", inner_accumulation),
            ("outer_accumulation", outer_accumulation),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BilevelTrainer: {name} must be an integer >= 1, got {value!r}")
        for name, clip in (("inner_clip", inner_clip), ("outer_clip", outer_clip)):
            if clip is not None and not (clip > 0 and math.isfinite(clip)):
                raise ValueError(f"BilevelTrainer: {name} must be positive, got {clip}")
        if not divergence_factor > 1:
            raise ValueError(
                f"BilevelTrainer: divergence_factor must be > 1, got {divergence_factor}"
            )
        for name, opt in (("inner_optimizer", inner_optimizer), ("outer_optimizer", outer_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"BilevelTrainer: {name} must be a torch.optim.Optimizer, got {type(opt).__name__}"
                )
        self.model = model
        self.hparams = hparams
        self.inner_loss = inner_loss
        self.outer_loss = outer_loss
        self.inner_optimizer = inner_optimizer
        self.outer_optimizer = outer_optimizer
        self.inner_scheduler = inner_scheduler
        self.outer_scheduler = outer_scheduler
        self.inner_steps = inner_steps
        self.method = method
        self.method_options = dict(method_options or {})
        self.inner_accumulation = inner_accumulation
        self.outer_accumulation = outer_accumulation
        self.inner_clip = inner_clip
        self.outer_clip = outer_clip
        self.inner_autocast = inner_autocast
        self.project = project
        self.divergence_factor = divergence_factor
        self._inner_data, self._outer_data = inner_data, outer_data
        self.inner_stream = BatchStream(inner_data, "inner_data", source="inner_data")
        self.outer_stream = BatchStream(outer_data, "outer_data", source="outer_data")
        self._hyper_data = hypergradient_data
        self.hyper_stream = (
            None
            if hypergradient_data is None
            else BatchStream(hypergradient_data, "hypergradient_data", source="hypergradient_data")
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._first_inner_loss: float | None = None
        self._warned: list[str] = []
        self._group = resolve(self.method_options.get("distributed"))
        self._checked = False

    # ------------------------------------------------------------------ parameters
    def _hparam_tensors(self) -> dict[str, Tensor]:
        if isinstance(self.hparams, nn.Module):
            return trainable(self.hparams)
        return dict(self.hparams)

    def _model_params(self) -> list[Tensor]:
        return list(trainable(unwrap(self.model)).values())

    def _device_type(self) -> str:
        return self._model_params()[0].device.type

    # ------------------------------------------------------------------ one outer step
    def _inner_step(self) -> float:
        params = self._model_params()
        self.inner_optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(self.inner_accumulation):
            batch = self.inner_stream.next()
            with torch.autocast(
                device_type=self._device_type(),
                dtype=self.inner_autocast or torch.bfloat16,
                enabled=self.inner_autocast is not None,
            ):
                loss = self.inner_loss(self.model, self.hparams, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(
                    f"BilevelTrainer: the inner loss became {value} at outer step {self.step} "
                    "(learning rate too large?)"
                )
            total += value
            (loss / self.inner_accumulation).backward(inputs=params)
        if self.inner_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.inner_clip)
        self.inner_optimizer.step()
        if self.inner_scheduler is not None:
            self.inner_scheduler.step()
        return total / self.inner_accumulation

    def _outer_step(self) -> dict[str, Any]:
        tensors = self._hparam_tensors()
        acc: dict[str, Tensor] = {}
        options = dict(self.method_options)
        if self.method == "unrolled":
            options.setdefault("optimizer", self.inner_optimizer)
        options["check_inputs"] = not self._checked
        options["distributed"] = self.method_options.get("distributed")
        outer_loss, solves = 0.0, []
        for _ in range(self.outer_accumulation):
            inner_batch = (self.hyper_stream or self.inner_stream).next()
            outer_batch = self.outer_stream.next()
            grads = hypergradient(
                self.model,
                self.hparams,
                self.inner_loss,
                self.outer_loss,
                inner_batch,
                outer_batch,
                method=self.method,
                **options,
            )
            self._checked = True
            options["check_inputs"] = False
            outer_loss += grads.info.outer_loss / self.outer_accumulation
            if grads.info.linear_solve is not None and self.method == "cg":
                # (a truncated Neumann series has no tolerance to reach)
                solves.append(grads.info.linear_solve)
            for k, g in grads.items():
                acc[k] = acc[k] + g / self.outer_accumulation if k in acc else g / self.outer_accumulation
        self.outer_optimizer.zero_grad(set_to_none=True)
        for k, t in tensors.items():
            t.grad = acc[k].to(t.dtype).clone()
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in acc.values()))
        if self.outer_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), self.outer_clip)
        self.outer_optimizer.step()
        if self.outer_scheduler is not None:
            self.outer_scheduler.step()
        if self.project is not None:
            with torch.no_grad():
                self.project(self.hparams)
        record: dict[str, Any] = {"outer_loss": outer_loss, "hypergrad_norm": norm}
        if solves:
            record["solve_iterations"] = sum(s.iterations for s in solves)
            record["solve_converged"] = all(s.converged for s in solves)
        return record

    def _warn(self, kind: str, message: str) -> None:
        """Warn once per kind of problem (the first occurrence's message)."""
        if not any(w.startswith(f"[{kind}]") for w in self._warned):
            self._warned.append(f"[{kind}] {message}")
            warnings.warn(message, ConvergenceWarning, stacklevel=3)

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        outer_steps: int,
        *,
        callbacks: Sequence[Callback] = (),
        progress: bool = False,
        log: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 0,
        resume: str | os.PathLike[str] | None = None,
    ) -> TrainResult:
        """Train until ``outer_steps`` outer steps have been done in total.

        Parameters
        ----------
        outer_steps:
            Total number of outer steps (a resumed run continues up to it).
        callbacks:
            ``callback(trainer, record)`` after each outer step; returning True stops.
        progress:
            Show a tqdm bar with the losses.
        log:
            Append one JSON line per outer step to this file (on resume, lines past the
            checkpoint's step are dropped first).
        checkpoint, checkpoint_every:
            Write the whole state to ``checkpoint`` every ``checkpoint_every`` outer steps
            (and at the end); rank 0 writes under ``torch.distributed``.
        resume:
            Load this checkpoint first and continue from its step.
        """
        if not isinstance(outer_steps, int) or outer_steps < 0:
            raise ValueError(f"fit: outer_steps must be an integer >= 0, got {outer_steps!r}")
        if checkpoint_every < 0:
            raise ValueError(f"fit: checkpoint_every must be >= 0, got {checkpoint_every}")
        if resume is not None:
            self.load_checkpoint(resume)
            if log is not None:
                _truncate_log(log, self.step)
        elif self.step == 0:
            self._broadcast_hparams()
        start = time.perf_counter() - (self.history[-1]["time"] if self.history else 0.0)
        bar = None
        if progress and _is_rank0():
            from tqdm.auto import tqdm

            bar = tqdm(total=outer_steps, initial=self.step, desc="bilevel", dynamic_ncols=True)
        status = "completed"
        try:
            while self.step < outer_steps:
                inner = [self._inner_step() for _ in range(self.inner_steps)]
                inner_loss = sum(inner) / len(inner)
                if self._first_inner_loss is None:
                    self._first_inner_loss = inner_loss
                elif inner_loss > self.divergence_factor * max(abs(self._first_inner_loss), 1e-12):
                    self._warn(
                        "inner_growth",
                        f"BilevelTrainer: the inner loss grew to {inner_loss:.4g}, "
                        f"{self.divergence_factor:g} times its first value "
                        f"{self._first_inner_loss:.4g} (diverging inner training?)"
                    )
                record = {"step": self.step + 1, "inner_loss": inner_loss}
                record.update(self._outer_step())
                if record.get("solve_converged") is False:
                    self._warn(
                        "linear_solve",
                        f"BilevelTrainer: the {self.method} linear solve did not reach its "
                        "tolerance (first at outer step "
                        f"{self.step + 1}); raise maxiter, add a ridge, or train the inner "
                        "problem closer to stationarity"
                    )
                record["inner_lr"] = float(self.inner_optimizer.param_groups[0]["lr"])
                record["outer_lr"] = float(self.outer_optimizer.param_groups[0]["lr"])
                record["time"] = time.perf_counter() - start
                self.step += 1
                self.history.append(record)
                if log is not None and _is_rank0():
                    with open(log, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(_jsonable(record)) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        inner=f"{inner_loss:.4g}", outer=f"{record['outer_loss']:.4g}", refresh=False
                    )
                if checkpoint is not None and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint)
                if any(cb(self, record) for cb in callbacks):
                    status = "stopped"
                    break
        finally:
            if bar is not None:
                bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return TrainResult(status=status, steps=self.step, history=list(self.history), warnings=list(self._warned))

    # ------------------------------------------------------------------ distributed
    def _broadcast_hparams(self) -> None:
        if self._group is None:
            return
        for t in self._hparam_tensors().values():
            with torch.no_grad():
                dist.broadcast(t, src=0)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (the data itself excluded)."""
        hp = (
            self.hparams.state_dict()
            if isinstance(self.hparams, nn.Module)
            else {k: v.detach().clone() for k, v in self.hparams.items()}
        )
        return {
            "step": self.step,
            "model": unwrap(self.model).state_dict(),
            "hparams": hp,
            "inner_optimizer": self.inner_optimizer.state_dict(),
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "inner_scheduler": None if self.inner_scheduler is None else self.inner_scheduler.state_dict(),
            "outer_scheduler": None if self.outer_scheduler is None else self.outer_scheduler.state_dict(),
            "streams": (self.inner_stream, self.outer_stream, self.hyper_stream),
            "history": self.history,
            "first_inner_loss": self._first_inner_loss,
            "warned": self._warned,
            "checked": self._checked,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (re-attaching the data streams)."""
        unwrap(self.model).load_state_dict(state["model"])
        if isinstance(self.hparams, nn.Module):
            self.hparams.load_state_dict(state["hparams"])
        else:
            with torch.no_grad():
                for k, v in state["hparams"].items():
                    self.hparams[k].copy_(v)
        self.inner_optimizer.load_state_dict(state["inner_optimizer"])
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        for sched, key in ((self.inner_scheduler, "inner_scheduler"), (self.outer_scheduler, "outer_scheduler")):
            if (sched is None) != (state[key] is None):
                raise ValueError(f"load_state_dict: the checkpoint's {key} does not match this trainer's")
            if sched is not None:
                sched.load_state_dict(state[key])
        self.inner_stream, self.outer_stream, hyper = state["streams"]
        if (hyper is None) != (self.hyper_stream is None):
            raise ValueError("load_state_dict: hypergradient_data differs from the checkpoint's")
        self.inner_stream.attach(self._inner_data)
        self.outer_stream.attach(self._outer_data)
        if hyper is not None:
            self.hyper_stream = hyper.attach(self._hyper_data)
        self.step = state["step"]
        self.history = list(state["history"])
        self._first_inner_loss = state["first_inner_loss"]
        self._warned = list(state["warned"])
        self._checked = state["checked"]
        _set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (rank 0 only under ``torch.distributed``)."""
        if not _is_rank0():
            return
        tmp = f"{os.fspath(path)}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint`."""
        device = self._model_params()[0].device
        state = torch.load(path, map_location=device, weights_only=False)
        self.load_state_dict(state)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _truncate_log(path: str | os.PathLike[str], step: int) -> None:
    if not os.path.exists(path) or not _is_rank0():
        return
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
