"""Timing helpers the benchmarks share: median / p95 of repeated calls, timed one after another per repetition
(so drift of a shared machine hits every contender alike), and the CPU bf16 autocast context."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["stats", "alternate", "cpu_autocast"]


def stats(ms: list[float]) -> dict[str, float]:
    """Median and p95 (nearest rank) of a list of milliseconds."""
    s = sorted(ms)
    return {"median_ms": statistics.median(s), "p95_ms": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]}


def alternate(runs: dict[str, Callable[[], Any]], reps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Time every callable `reps` times, one after the other per repetition (after `warmup` untimed rounds);
    returns `stats` per name."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(warmup):
        for f in runs.values():
            f()
    for _ in range(reps):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: stats(v) for k, v in times.items()}


def cpu_autocast(precision: str) -> Any:
    """bf16 autocast on the CPU for ``precision == "bf16"``, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
