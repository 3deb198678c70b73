"""Minibatch streams: :class:`BatchStream`, an endless iterator over an iterable of
minibatches whose position is checkpointed and replayed on resume."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from bilevel.problem import BilevelProblem

__all__ = ["BatchStream", "attach_streams"]


class BatchStream:
    """Endless iterator over an iterable of minibatches, re-iterated at the end of each pass.

    ``data`` is any iterable of minibatches (a list, a generator-producing iterable, a
    :class:`torch.utils.data.DataLoader`, ...); ``None`` means a deterministic problem, and
    :meth:`next` then returns ``None`` (call the objectives without a batch). ``source``
    names the :class:`~bilevel.BilevelProblem` attribute the data comes from
    (``"upper_data"`` or ``"lower_data"``; by default ``name`` when it is one of these, see
    also :meth:`for_problem`), so that a stream restored from a checkpoint can be re-attached
    to the problem by :func:`run_method`.

    Notes
    -----
    For checkpoints, a stream pickles only its position: ``delivered`` (batches handed out),
    ``passes`` (``iter(data)`` calls), ``pass_start`` (``delivered`` when the current pass
    began) and ``pass_rng`` (the global torch CPU RNG state just before the current pass
    called ``iter(data)``), never the data or a live iterator. :meth:`attach` re-binds the
    data and fast-forwards: earlier passes are replayed in full (so an iterable with its own
    seeded generator advances it as it did; lists and tuples skip this), then the current
    pass is re-created from ``pass_rng`` and its first ``delivered - pass_start`` batches are
    skipped; the global RNG state is restored afterwards. The batches after a resume are
    therefore those an uninterrupted run would have drawn when the iterable

    * replays the same batches when re-iterated (lists, tuples, deterministic iterables), or
    * draws its randomness from the global torch CPU RNG (``DataLoader(shuffle=True)`` with
      ``num_workers=0``, a generator sampling ``torch.randint`` per batch), or
    * draws it from its own ``torch.Generator``, rebuilt with the same seed before resuming;

    random state hidden elsewhere (NumPy/Python RNGs, DataLoader worker processes) is not
    reproduced. A stream without a ``source`` pickles its data too (which must then be
    picklable) and re-attaches to it when unpickled.
    """

    def __init__(self, data: Iterable[Any] | None, name: str, *, source: str | None = None):
        if data is not None and not (
            hasattr(type(data), "__iter__") or hasattr(type(data), "__getitem__")
        ):
            raise TypeError(
                f"{name} must be an iterable of minibatches (or None), got {type(data).__name__}"
            )
        self.data = data
        self.name = name
        if source is None and name in _PROBLEM_DATA:
            source = name
        self.source = source
        self.delivered = 0
        self.passes = 0
        self.pass_start = 0
        self.pass_rng: torch.Tensor | None = None
        self.has_data = data is not None
        self.length = _length(data)
        self._iterator: Iterator[Any] | None = None
        self._attached = True

    @property
    def attached(self) -> bool:
        """False for a stream restored from a checkpoint until :meth:`attach` is called."""
        return self._attached

    @classmethod
    def for_problem(cls, problem: BilevelProblem, level: str) -> BatchStream:
        """The stream over ``problem.upper_data`` (``level="upper"``) or ``lower_data``."""
        if level not in ("upper", "lower"):
            raise ValueError(f"level must be 'upper' or 'lower', got {level!r}")
        source = f"{level}_data"
        return cls(getattr(problem, source), source)

    def next(self) -> Any:
        """The next minibatch (``None`` for deterministic data)."""
        if not self._attached:
            raise RuntimeError(
                f"the {self.name} stream was restored from a checkpoint without its data; "
                "call attach(data) (run_method does it on resume)"
            )
        if self.data is None:
            return None
        iterator = self._iterator if self._iterator is not None else self._start_pass(self.data)
        try:
            batch = next(iterator)
        except StopIteration:
            try:
                batch = next(self._start_pass(self.data))
            except StopIteration:
                raise ValueError(f"{self.name} yields no minibatch") from None
        self.delivered += 1
        return batch

    def _start_pass(self, data: Iterable[Any]) -> Iterator[Any]:
        self.pass_rng = torch.get_rng_state()
        self.pass_start = self.delivered
        self.passes += 1
        self._iterator = iter(data)
        return self._iterator

    def attach(self, data: Iterable[Any] | None) -> BatchStream:
        """Bind ``data`` to a stream restored from a checkpoint and fast-forward it to the
        saved position (see the class docstring); the global RNG state is left unchanged."""
        if (data is not None) != self.has_data:
            raise ValueError(
                f"the checkpoint's {self.name} was {'an iterable' if self.has_data else 'None'}"
                f", the problem's is {'None' if data is None else 'an iterable'}"
            )
        length = _length(data)
        if self.length is not None and length is not None and length != self.length:
            raise ValueError(
                f"the checkpoint's {self.name} had {self.length} minibatches, the problem's "
                f"has {length}: resume with the data the run was started with"
            )
        self.data, self._iterator, self._attached = data, None, True
        if data is None or self.delivered == 0:
            return self
        rng = torch.get_rng_state()
        try:
            if not isinstance(data, (list, tuple)):
                for _ in range(self.passes - 1):  # earlier passes, for iterators' own state
                    collections.deque(iter(data), maxlen=0)
            if self.pass_rng is not None:
                torch.set_rng_state(self.pass_rng)
            iterator = iter(data)
            skip = self.delivered - self.pass_start
            if sum(1 for _ in itertools.islice(iterator, skip)) < skip:
                raise ValueError(
                    f"{self.name} yields fewer minibatches than when the checkpoint was "
                    "written: resume with the data the run was started with"
                )
            self._iterator = iterator
        finally:
            torch.set_rng_state(rng)
        return self

    def __getstate__(self) -> dict[str, Any]:
        keys = ["name", "source", "delivered", "passes", "pass_start", "pass_rng", "has_data"]
        saved = {key: getattr(self, key) for key in [*keys, "length"]}
        if self.source is None:  # nothing to re-attach to: keep the data itself
            saved["data"] = self.data
        return saved

    def __setstate__(self, saved: dict[str, Any]) -> None:
        data = saved.pop("data", None)
        self.__dict__.update(saved)
        self.data, self._iterator, self._attached = None, None, False
        if self.source is None:
            self.attach(data)


_PROBLEM_DATA = ("upper_data", "lower_data")


def _length(data: Any) -> int | None:
    try:
        return len(data) if data is not None else None
    except TypeError:
        return None


def attach_streams(extra: Any, problem: BilevelProblem) -> None:
    """Re-attach every :class:`BatchStream` with a ``source`` found in ``extra`` (nested
    dicts, lists and tuples) to the corresponding data of ``problem``."""
    if isinstance(extra, BatchStream):
        if extra.source is not None and not extra.attached:
            extra.attach(getattr(problem, extra.source))
    elif isinstance(extra, dict):
        for value in extra.values():
            attach_streams(value, problem)
    elif isinstance(extra, (list, tuple)):
        for value in extra:
            attach_streams(value, problem)
