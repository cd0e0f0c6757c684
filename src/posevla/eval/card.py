"""The eval card of a closed-loop evaluation: success with Wilson intervals, latency, versions, checkpoint hash.

Success rates use the Wilson score interval, which behaves at 0 % and 100 % (the normal approximation collapses
to a zero-width interval there).
"""

from __future__ import annotations

import hashlib
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.eval.report import markdown_table
from posevla.training.integrity import file_sha256
from posevla.runtime import package_versions

__all__ = [
    "wilson_interval",
    "success_summary",
    "latency_summary",
    "checkpoint_sha256",
    "eval_versions",
    "results_markdown",
    "json_default",
]

_Z95 = 1.959963984540054  # two-sided 95 % normal quantile
_VERSION_PACKAGES = ("metaworld", "gymnasium", "imageio", "imageio-ffmpeg", "pillow", "scipy")


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``.
    ``n = 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{name} must be an int, got {v!r}", field=name, fix="count episodes as integers")
    if n < 0 or not 0 <= successes <= n:
        raise DataError(f"need 0 <= successes <= n, got successes={successes}, n={n}", field="successes",
                        fix="successes counts episodes among the n run")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return lo, hi


def success_summary(successes: int, episodes: int) -> dict[str, Any]:
    """``{"successes", "episodes", "rate", "ci95": [lo, hi]}`` (the summary.json closed-loop keys)."""
    lo, hi = wilson_interval(successes, episodes)
    rate = successes / episodes if episodes else float("nan")
    return {"successes": int(successes), "episodes": int(episodes), "rate": rate, "ci95": [lo, hi]}


def latency_summary(latencies_s: Sequence[float]) -> dict[str, Any]:
    """Policy-call latency in milliseconds: ``{"calls", "p50_ms", "p95_ms", "mean_ms", "max_ms"}``."""
    a = np.asarray(latencies_s, np.float64) * 1e3
    if a.size == 0:
        return {"calls": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    p50, p95 = np.percentile(a, [50, 95])
    return {"calls": int(a.size), "p50_ms": float(p50), "p95_ms": float(p95), "mean_ms": float(a.mean()),
            "max_ms": float(a.max())}




# ----------------------------------------------------------------------------------------------
# multi-task evaluation + eval card
# ----------------------------------------------------------------------------------------------


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file, or of a directory's files (relative paths and contents, sorted)."""
    p = Path(path)
    if not p.exists():
        raise DataError("checkpoint not found", file=str(p),
                        fix="pass an existing checkpoint file or directory")

    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p).as_posix()).encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def eval_versions() -> dict[str, str]:
    """Package versions of posevla and of the simulator stack."""
    import importlib.metadata as md

    out = package_versions()
    for name in _VERSION_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def results_markdown(card: Mapping[str, Any]) -> str:
    """The per-task table of an eval card (results.md)."""
    def row(task: str, r: Mapping[str, Any], latency: Mapping[str, Any]) -> dict[str, Any]:
        return {"task": task, "successes": r["successes"], "episodes": r["episodes"],
                "rate %": 100 * r["rate"], "ci95 low %": 100 * r["ci95"][0],
                "ci95 high %": 100 * r["ci95"][1],
                "steps to success": r.get("mean_steps_to_success"), "latency p50 ms": latency["p50_ms"],
                "latency p95 ms": latency["p95_ms"]}

    rows = [row(task, r, r["latency"]) for task, r in card["per_task"].items()]
    rows.append(row("**all**", card["overall"], card["latency"]))
    chunk = card["chunk"]
    head = (f"# Closed-loop evaluation: {card['env']}\n\npolicy: {card['policy']} · replan every "
            f"{chunk['replan_every']} steps · chunk horizon {chunk['horizon']} · "
            f"max steps {card['max_steps']} · {card['episodes_per_task']} episodes per task · "
            "95 % Wilson intervals\n\n")
    return head + markdown_table(rows) + "\n"




def json_default(x: Any) -> Any:
    """JSON encoding of numpy values (and anything else as its str)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
