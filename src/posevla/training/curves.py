"""The loss curve of a training run (``loss_curve.png`` next to its metrics.jsonl)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import DataError

__all__ = ["plot_loss_curve"]


def _read_loss_rows(
    source: str | Path | Sequence[Mapping[str, Any]], key: str
) -> tuple[np.ndarray, np.ndarray]:
    rows: list[tuple[float, float]] = []
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise DataError("loss log not found", file=str(p), fix="pass a training metrics .jsonl")
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg})", file=str(p), record=f"line {n}",
                                fix="each line must be one JSON object") from None
            if isinstance(rec, dict) and key in rec and "step" in rec:
                rows.append((float(rec["step"]), float(rec[key])))
    else:
        for n, rec in enumerate(source):
            if isinstance(rec, Mapping) and key in rec and "step" in rec:
                rows.append((float(rec["step"]), float(rec[key])))
    rows = [(s, v) for s, v in rows if math.isfinite(s) and math.isfinite(v)]
    if not rows:
        raise DataError(f"no records with 'step' and '{key}'", field=key,
                        fix="log dicts like {\"step\": 10, \"loss\": 1.23}")
    rows.sort(key=lambda r: r[0])
    a = np.asarray(rows, dtype=np.float64)
    return a[:, 0], a[:, 1]


def _ema(y: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard-style smoothing)."""
    out = np.empty_like(y)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def plot_loss_curve(
    source: str | Path | Sequence[Mapping[str, Any]],
    png_path: str | Path,
    *,
    key: str = "loss",
    smoothing: float = 0.9,
    title: str | None = None,
) -> Path:
    """Plot ``key`` against ``step``: raw points faint, EMA-smoothed line on top, log-scale y.

    ``source`` is a ``.jsonl`` file (one JSON object per line; lines without ``step``/``key`` are skipped)
    or a list of such dicts. Returns the PNG path. Uses the Agg canvas directly (no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, values = _read_loss_rows(source, key)
    smooth = _ema(values, float(np.clip(smoothing, 0.0, 0.999)))
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, values, ".", color="tab:blue", alpha=0.3, markersize=3, label="raw")
    ax.plot(steps, smooth, "-", color="tab:blue", linewidth=1.8, label=f"EMA {smoothing:g}")
    if np.all(values > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, format="png")
    return png_path
