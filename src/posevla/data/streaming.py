"""Batches of any objective, built in the training process (with a prefetch thread) or in worker processes.

:func:`stream_batches` takes a pure function ``make_batch(step)`` (every loader here is one: the token
mixture, the action chunks) and yields ``(step, batch)`` forever from a start step. Where the batches are
built changes speed only, never the batches, so ``--data.num-workers`` cannot change a run.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from posevla.errors import ConfigError


class _StepDataset(torch.utils.data.Dataset):
    """Map-style view of a batch function: item `step` is the whole batch of that step."""

    def __init__(self, make_batch: Callable[[int], dict[str, torch.Tensor]]) -> None:
        self.make_batch = make_batch

    def __getitem__(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        return step, self.make_batch(step)


def _as_is(item: Any) -> Any:
    return item


def _count_from(start: int) -> Iterator[int]:
    step = start
    while True:
        yield step
        step += 1


def stream_batches(
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    start_step: int,
    *,
    prefetch: int = 2,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(step, make_batch(step))`` for step = start_step, start_step + 1, ... forever.

    ``make_batch`` must be a pure function of the step (all loaders here are), so where it runs changes
    speed only:

    * ``num_workers == 0``: in this process; with ``prefetch`` > 0 a background thread builds the next
      ``prefetch`` batches while the caller trains (PNG decoding and resizing release the GIL).
    * ``num_workers > 0``: in that many worker processes (``torch.utils.data.DataLoader``, forked where the
      platform allows, so the datasets are not pickled), ``prefetch`` batches ahead per worker, yielded in
      step order. Each worker keeps its own view caches.

    A :class:`~posevla.errors.PoseVLAError` raised while building a batch is re-raised to the caller.
    Call ``.close()`` on the returned generator to stop the thread / workers early.
    """
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}: use 0 (build batches in the training "
                          "process) or a positive worker count")
    if num_workers > 0:
        return _worker_batches(make_batch, start_step, num_workers, max(1, prefetch), pin_memory)
    return _thread_batches(make_batch, start_step, prefetch)


def _worker_batches(
    make_batch: Callable[[int], dict[str, torch.Tensor]], start_step: int, num_workers: int, prefetch: int,
    pin_memory: bool,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    # Forked workers inherit the tokenizer; HF tokenizers' own thread pool must not be used across a fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(
        _StepDataset(make_batch),
        batch_size=None,
        sampler=_count_from(start_step),
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=prefetch,
        pin_memory=pin_memory,
        multiprocessing_context=ctx,
        # its own generator: seeding the workers must not draw from the global torch RNG, whose state the
        # trainer checkpoints (prior dropout) — otherwise num_workers would change the training run
        generator=torch.Generator(),
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _thread_batches(
    make_batch: Callable[[int], dict[str, torch.Tensor]], start_step: int, prefetch: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    if prefetch <= 0:
        step = start_step
        while True:
            yield step, make_batch(step)
            step += 1

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        step = start_step
        while not stop.is_set():
            try:
                item: Any = (step, make_batch(step))
            except BaseException as e:  # handed to the consumer, which re-raises it
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    worker = threading.Thread(target=produce, name="posevla-batches", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
