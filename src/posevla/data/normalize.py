"""Normalisation statistics of state and actions (z-scores) and their ``norm_stats.json`` in a checkpoint.

Missing or malformed statistics raise: a policy never runs on un-normalised inputs, and never returns
actions it could not de-normalise.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posevla.errors import CheckpointError, DataError

NORM_STATS_FILE = "norm_stats.json"
_NORM_FORMAT = "posevla.norm_stats"
_NORM_VERSION = 1


# ----------------------------------------------------------------------------------------------
# normalisation statistics
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dim z-score statistics of one vector feature (``"state"`` or ``"actions"``).

    ``normalize(x) = (x − mean) / std``; ``denormalize`` inverts it. Dims listed in ``constant`` were
    (nearly) constant in the data and explicitly allowed to be; their std is 1.
    """

    feature: str
    names: tuple[str, ...]
    mean: np.ndarray  # (D,) float64
    std: np.ndarray  # (D,) float64, > 0
    constant: tuple[bool, ...]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, np.float64).reshape(-1)
        std = np.asarray(self.std, np.float64).reshape(-1)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "constant", tuple(bool(c) for c in self.constant))
        D = len(self.names)
        if mean.shape != (D,) or std.shape != (D,) or len(self.constant) != D:
            raise DataError(
                f"{self.feature} statistics disagree in size: {D} names, mean {mean.shape}, std {std.shape}, "
                f"{len(self.constant)} constant flags",
                field=self.feature,
                fix="recompute the statistics",
            )
        for arr, what in ((mean, "mean"), (std, "std")):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{self.feature} {what} of dim {i} ('{self.names[i]}') is {arr[i]}",
                    field=f"{self.feature}.{self.names[i]}",
                    fix="recompute the statistics from finite data",
                )
        bad = np.flatnonzero(std <= 0)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.feature} std of dim {i} ('{self.names[i]}') is {std[i]}; it must be > 0",
                field=f"{self.feature}.{self.names[i]}",
                fix="recompute the statistics (constant dims are stored with std 1)",
            )
        mean.setflags(write=False)
        std.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def dim(self) -> int:
        return len(self.names)

    def _check(self, x: np.ndarray | torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise DataError(
                f"{self.feature} has {x.shape[-1]} dims but its statistics have {self.dim} "
                f"({list(self.names)})",
                field=self.feature,
                fix="use the statistics computed for this action space / dataset",
            )

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(..., D) raw values -> z-scores (float64 numpy)."""
        x = np.asarray(x, np.float64)
        self._check(x)
        return (x - self.mean) / self.std

    def denormalize(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., D) z-scores -> raw values (float64 numpy)."""
        z = z.detach().float().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)
        self._check(z)
        return np.asarray(z, np.float64) * self.std + self.mean

    @classmethod
    def compute(
        cls,
        feature: str,
        values: np.ndarray,
        names: Sequence[str],
        *,
        constant_dims: Sequence[str] = (),
        std_eps: float = 1e-6,
        source: str = "",
    ) -> NormStats:
        """Mean / std per dim of ``values`` (N, D); raises DataError on NaN or undeclared constant dims."""
        x = np.asarray(values, np.float64)
        if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] < 1:
            raise DataError(
                f"{feature} values of shape {x.shape} do not match {len(names)} dim names",
                file=source or None,
                field=feature,
            )
        bad = np.argwhere(~np.isfinite(x))
        if bad.size:
            r, c = bad[0].tolist()
            raise DataError(
                f"{feature} dim {c} ('{names[c]}') is {x[r, c]} at sample {r}",
                file=source or None,
                field=f"{feature}.{names[c]}",
                fix="clean the recording: statistics need finite values",
            )
        mean, std = x.mean(0), x.std(0)
        constant = []
        for i, name in enumerate(names):
            qualified = f"{feature}.{name}"
            allowed = any(  # exact names first: "action[3]" would be a character class as a pattern
                p in (name, qualified) or fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(qualified, p)
                for p in constant_dims
            )
            degenerate = not std[i] >= std_eps
            if degenerate and not allowed:
                raise DataError(
                    f"{feature} dim {i} ('{name}') is constant in the data (std {std[i]:.3g} < {std_eps:g}, "
                    f"value {mean[i]:.6g}); a z-score would divide by ~0",
                    file=source or None,
                    field=f"{feature}.{name}",
                    fix="if it is constant by design, list it in ActionConfig.constant_dims "
                    f"(e.g. '{name}'); "
                    "otherwise add data where it varies or pick another action space",
                )
            constant.append(bool(degenerate and allowed))
        std = np.where(constant, 1.0, std)
        return cls(feature, tuple(names), mean, std, tuple(constant))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "constant": list(self.constant),
        }

    @classmethod
    def from_dict(cls, feature: str, d: Any, *, file: str | None = None) -> NormStats:
        """Validate and build from :meth:`to_dict`'s form; problems raise CheckpointError naming the dim."""
        if not isinstance(d, Mapping):
            raise CheckpointError(
                f"{file}: '{feature}' statistics must be a json object, got {type(d).__name__}"
            )
        missing = [k for k in ("names", "mean", "std") if k not in d]
        if missing:
            raise CheckpointError(
                f"{file}: '{feature}' statistics lack {missing}; the file is incomplete. Re-save the "
                "checkpoint "
                "or recompute the statistics from the training dataset"
            )
        names = list(d["names"])
        try:
            return cls(
                feature,
                tuple(names),
                np.asarray(d["mean"], np.float64),
                np.asarray(d["std"], np.float64),
                tuple(d.get("constant", [False] * len(names))),
            )
        except (DataError, ValueError, TypeError) as e:
            raise CheckpointError(f"{file}: invalid '{feature}' statistics: {e}") from e


def norm_stats_json(stats: Mapping[str, NormStats], *, action_space: str) -> dict[str, Any]:
    """The ``norm_stats.json`` document: format, version, action space, per-feature mean/std/constant."""
    return {
        "format": _NORM_FORMAT,
        "version": _NORM_VERSION,
        "action_space": action_space,
        "stats": {k: v.to_dict() for k, v in stats.items()},
    }


def save_norm_stats(path: str | os.PathLike, stats: Mapping[str, NormStats], *, action_space: str) -> Path:
    """Write :func:`norm_stats_json` to `path` (a file, or a checkpoint directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / NORM_STATS_FILE
    p.write_text(json.dumps(norm_stats_json(stats, action_space=action_space), indent=2) + "\n")
    return p


def load_norm_stats(path: str | os.PathLike) -> tuple[dict[str, NormStats], str]:
    """(``{"state", "actions"}`` stats, action space) of ``norm_stats.json``; CheckpointError if unusable."""
    p = Path(path)
    if p.is_dir():
        p = p / NORM_STATS_FILE
    if not p.is_file():
        raise CheckpointError(
            f"{p} is missing: the checkpoint has no normalisation statistics for state/actions, so actions "
            "cannot be de-normalised. Use a post-training checkpoint (`posevla train posttrain-tiny ...`), "
            "or recompute them with posevla.data.actions.compute_norm_stats on the training dataset and "
            "save_norm_stats into the checkpoint directory"
        )
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not isinstance(doc, dict) or doc.get("format") != _NORM_FORMAT:
        raise CheckpointError(f"{p} is not a posevla normalisation-statistics file (format {_NORM_FORMAT!r})")
    stats = doc.get("stats")
    if not isinstance(stats, dict):
        raise CheckpointError(f"{p} has no 'stats' object")
    out = {}
    for feature in ("state", "actions"):
        if feature not in stats:
            raise CheckpointError(
                f"{p} has no '{feature}' statistics (has {sorted(stats)}); recompute them on the training "
                "dataset"
            )
        out[feature] = NormStats.from_dict(feature, stats[feature], file=str(p))
    return out, str(doc.get("action_space", ""))
