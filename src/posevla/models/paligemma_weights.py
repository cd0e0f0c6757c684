"""Strict loading of a local PaliGemma directory (the ``google/paligemma-3b-pt-224`` layout) for `PoseVLM.build`.

The directory holds ``config.json`` and the weights as ``model.safetensors`` or as shards listed in
``model.safetensors.index.json`` (the hub files are ``model-00001-of-00003.safetensors`` … with the pre-5.0 key
names ``language_model.model.…``, ``vision_tower.vision_model.…``, ``multi_modal_projector.linear.…``, which
transformers renames on load). transformers only *warns* about checkpoint keys it could not place and
parameters the checkpoint lacks (those stay randomly initialised); here both are errors, so a wrong or
truncated checkpoint never trains silently from partly random weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from posevla.errors import CheckpointError, ConfigError

__all__ = ["check_weight_files", "load_paligemma_dir"]


def _listing(keys: Any, limit: int = 12) -> str:
    keys = sorted(str(k) for k in keys)
    return f"{len(keys)}: [{', '.join(keys[:limit])}{', …' if len(keys) > limit else ''}]"


def check_weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or index + shards); CheckpointError if absent."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        raise CheckpointError(
            f"{directory} has no model.safetensors or model.safetensors.index.json; copy the checkpoint's weight "
            "files (paligemma-3b-pt-224: model-0000K-of-00003.safetensors + the index; π0: model.safetensors)"
        )
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{index} is not a safetensors index with a 'weight_map' ({exc}); restore it"
        ) from exc
    files = [directory / name for name in sorted(set(weight_map.values()))]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"{index} lists shard(s) {absent} that are missing from {directory}; copy them")
    return files


def load_paligemma_dir(
    directory: str | os.PathLike, *, dtype: torch.dtype | None, attn_implementation: str
) -> torch.nn.Module:
    """`PaliGemmaForConditionalGeneration` from a local directory, every parameter from the checkpoint.

    Args:
        directory: a PaliGemma checkpoint directory (module docstring).
        dtype: parameter dtype (None = transformers' "auto": the checkpoint's).
        attn_implementation: ``"sdpa"`` or ``"eager"``.

    Raises:
        ConfigError: no config.json.
        CheckpointError: weight files absent, transformers cannot read them, or the checkpoint lacks
            parameters of the model / holds keys that fit none / has tensors of the wrong shape (all listed).
    """
    from transformers import PaliGemmaForConditionalGeneration

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"{directory} has no config.json; expected a PaliGemma checkpoint directory such as paligemma-3b-pt-224"
        )
    check_weight_files(directory)
    # Mismatched shapes are reported (and raised below, with their keys) rather than raised by transformers
    # without them.
    kwargs: dict[str, Any] = {
        "attn_implementation": attn_implementation,
        "output_loading_info": True,
        "ignore_mismatched_sizes": True,
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        hf, info = PaliGemmaForConditionalGeneration.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"transformers could not load the PaliGemma checkpoint in {directory}: {exc}; fix: a complete "
            "paligemma-3b-pt-224-format directory (config.json + safetensors whose shapes match it)"
        ) from exc
    problems = []
    if info.get("missing_keys"):
        problems.append(
            f"parameters the checkpoint lacks (would stay random) {_listing(info['missing_keys'])}"
        )
    if info.get("unexpected_keys"):
        problems.append(f"checkpoint keys that fit no parameter {_listing(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        problems.append(f"shape mismatches {_listing(info['mismatched_keys'])}")
    if info.get("error_msgs"):
        problems.append(f"errors {_listing(info['error_msgs'])}")
    if problems:
        raise CheckpointError(
            f"the PaliGemma checkpoint in {directory} does not fit PaliGemmaForConditionalGeneration:\n  "
            + "\n  ".join(problems)
            + "\n  fix: use the checkpoint's original files (google/paligemma-3b-pt-224 layout: keys "
            "language_model.model.*, vision_tower.vision_model.*, multi_modal_projector.linear.*) with a "
            "config.json that describes them"
        )
    return hf
