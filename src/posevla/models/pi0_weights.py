"""Load π0 weights (transformers `PI0ForConditionalGeneration`, LeRobot or openpi layouts) into a policy.

Spec §2.3 initialises the action expert from π0 and §4.11 its state/action/time projections too; the VLM part
of a π0 checkpoint can be loaded as well (the "PaliGemma+Expert" baseline). Every key layout goes through ONE
table, `map_pi0_key` (``PG`` = ``[model.]paligemma_with_expert.paligemma``, ``EX`` = the same with
``gemma_expert``; the leading ``model.`` is LeRobot's policy wrapper):

* ``model.vlm.<x>`` → ``vlm.hf.model.<x>`` (transformers' in-memory layout);
* ``PG.[model.]vision_tower.[vision_model.]``, ``PG.[model.]multi_modal_projector.``,
  ``PG.[model.]language_model.[model.]`` →
  ``vlm.hf.model.{vision_tower,multi_modal_projector,language_model}.``;
* ``PG.lm_head.weight`` (tied) → ``vlm.hf.model.language_model.embed_tokens.weight`` when the embedding
  itself is absent;
* ``model.dit.{layers,norm}.`` and ``EX.model.{layers,norm}.`` → ``expert.{layers,norm}.``;
* ``[model.|embed_action_time.]{state_proj, action_in_proj, action_time_mlp_in, action_time_mlp_out,
  action_out_proj}.`` → ``expert.<same>.``;
* ``model.dit.embed_tokens``, ``EX.lm_head``, ``EX.model.embed_tokens`` → dropped (the expert has no
  vocabulary).

Loading is strict: keys of the selected parts that the checkpoint lacks, checkpoint keys that map nowhere and
shape mismatches all raise `CheckpointError` listing them. Values are copied into the existing parameters, so
the model keeps its device and dtype.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from posevla.errors import CheckpointError, ConfigError
from posevla.models.config import ActionExpertConfig

__all__ = [
    "PI0_PARTS",
    "expert_config_from_pi0",
    "load_pi0_checkpoint",
    "load_pi0_state_dict",
    "map_pi0_key",
    "read_pi0_config",
]

#: Parts of a policy a π0 checkpoint can fill: the VLM (PaliGemma), the expert's Gemma layers + final norm,
#: and the expert's state/action/time projections and velocity head. Pose-VLA's prior embedders are
#: never in π0.
PI0_PARTS = ("vlm", "expert", "projections")

_DROP = "<drop>"
_PROJ = r"(state_proj|action_in_proj|action_time_mlp_in|action_time_mlp_out|action_out_proj)"
_PG = r"^(?:model\.)?paligemma_with_expert\.paligemma\."
_EX = r"^(?:model\.)?paligemma_with_expert\.gemma_expert\."

# (pattern, replacement), first match wins.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        # transformers' in-memory PI0ForConditionalGeneration layout
        (r"^model\.vlm\.", "vlm.hf.model."),
        (r"^model\.dit\.embed_tokens\.weight$", _DROP),
        (r"^model\.dit\.(layers|norm)\.", r"expert.\1."),
        (r"^embed_action_time\." + _PROJ + r"\.", r"expert.\1."),
        # LeRobot / openpi-PyTorch layout (also what PI0 save_pretrained writes)
        (_PG + r"(?:model\.)?vision_tower\.(?:vision_model\.)?", "vlm.hf.model.vision_tower."),
        (_PG + r"(?:model\.)?multi_modal_projector\.", "vlm.hf.model.multi_modal_projector."),
        (_PG + r"(?:model\.)?language_model\.(?:model\.)?", "vlm.hf.model.language_model."),
        (_PG + r"lm_head\.weight$", "vlm.hf.model.language_model.embed_tokens.weight"),
        (_EX + r"(?:lm_head|model\.embed_tokens)\.weight$", _DROP),
        (_EX + r"model\.(layers|norm)\.", r"expert.\1."),
        (r"^(?:model\.)?" + _PROJ + r"\.", r"expert.\1."),
    )
)
_LM_HEAD = re.compile(_PG + r"lm_head\.weight$")


def map_pi0_key(key: str) -> str | None:
    """Our parameter name for a π0 checkpoint key; ``""`` for deliberately dropped keys; None if unknown."""
    for pattern, repl in _RULES:
        if pattern.search(key):
            return "" if repl == _DROP else pattern.sub(repl, key, count=1)
    return None


def _part_of(our_key: str) -> str | None:
    if our_key.startswith("vlm.hf."):
        return "vlm"
    if our_key.startswith(("expert.layers.", "expert.norm.")):
        return "expert"
    if re.match(r"^expert\." + _PROJ + r"\.", our_key):
        return "projections"
    return None


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: [{shown}{', …' if len(keys) > limit else ''}]"


def load_pi0_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    parts: Iterable[str] = PI0_PARTS,
    source: str = "state dict",
) -> list[str]:
    """Copy a π0-format state dict into a `PoseVLA`; return the names of our parameters it filled.

    Args:
        model: the policy (its ``vlm`` / ``expert`` submodules receive the weights).
        state_dict: π0 keys → tensors, in any layout of the module docstring's table.
        parts: which of `PI0_PARTS` to load; checkpoint keys of other parts are skipped, and only the selected
            parts' parameters must be present.
        source: what to call the state dict in error messages (e.g. the checkpoint path).

    Raises:
        CheckpointError: missing keys, unknown keys or shape mismatches (all listed).
        ConfigError: an unknown part name.
    """
    parts = tuple(parts)
    unknown_parts = sorted(set(parts) - set(PI0_PARTS))
    if unknown_parts:
        raise ConfigError(f"unknown π0 parts {unknown_parts}; valid parts: {list(PI0_PARTS)}")
    ours = model.state_dict()
    # Tied weights (the LM head shares the token embedding) appear under two names; expect the embedding.
    by_storage: dict[int, list[str]] = {}
    for name, tensor in ours.items():
        if tensor.numel() > 0:
            by_storage.setdefault(tensor.data_ptr(), []).append(name)
    aliases: set[str] = set()
    for names in by_storage.values():
        if len(names) > 1:
            keep = next((n for n in names if "lm_head" not in n), names[0])
            aliases.update(n for n in names if n != keep)
    expected = {k for k in ours if _part_of(k) in parts and k not in aliases}

    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    lm_head_fallback: dict[str, tuple[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        target = map_pi0_key(key)
        if target == "":
            continue
        if target is None or target not in ours or target in aliases:
            unexpected.append(key if target is None else f"{key} -> {target}")
            continue
        if _part_of(target) not in parts:
            continue
        bucket = lm_head_fallback if _LM_HEAD.search(key) else mapped
        bucket[target] = (key, value)
    for target, item in lm_head_fallback.items():  # the tied LM head stands in for a missing embedding
        mapped.setdefault(target, item)

    missing = expected - set(mapped)
    mismatched = [
        f"{key} {tuple(value.shape)} -> {target} {tuple(ours[target].shape)}"
        for target, (key, value) in mapped.items()
        if tuple(value.shape) != tuple(ours[target].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys (ours) {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"cannot load π0 weights from {source} into the policy (parts {list(parts)}):\n  "
            + "\n  ".join(problems)
            + "\n  fix: use a complete π0 checkpoint whose architecture matches (expert_config_from_pi0 "
            "reads it), or restrict `parts`; load the VLM before extending its vocabulary with pose tokens"
        )
    with torch.no_grad():
        for target, (_, value) in mapped.items():
            dst = ours[target]
            dst.copy_(value.to(device=dst.device, dtype=dst.dtype))
    return sorted(mapped)


def read_pi0_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a π0 checkpoint directory (CheckpointError if absent or not π0)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; expected a π0 checkpoint directory")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if cfg.get("model_type", "pi0") != "pi0" or "dit_config" not in cfg:
        raise CheckpointError(
            f"{path} describes model_type {cfg.get('model_type')!r} without a 'dit_config'; expected a π0 "
            "checkpoint (transformers PI0Config)"
        )
    return cfg


def expert_config_from_pi0(
    config: Mapping[str, Any] | str | os.PathLike, **overrides: Any
) -> ActionExpertConfig:
    """An `ActionExpertConfig` with the architecture of a π0 config (dict or checkpoint directory)."""
    cfg = dict(config) if isinstance(config, Mapping) else read_pi0_config(config)
    dit = cfg["dit_config"]
    rope = dit.get("rope_parameters") or {}
    fields: dict[str, Any] = {
        "name": "pi0",
        "hidden": dit["hidden_size"],
        "layers": dit["num_hidden_layers"],
        "mlp": dit["intermediate_size"],
        "heads": dit["num_attention_heads"],
        "kv_heads": dit["num_key_value_heads"],
        "head_dim": dit.get("head_dim") or dit["hidden_size"] // dit["num_attention_heads"],
        "chunk_size": cfg.get("chunk_size", 50),
        "max_state_dim": cfg.get("max_state_dim", 32),
        "max_action_dim": cfg.get("max_action_dim", 32),
        "num_inference_steps": cfg.get("num_inference_steps", 10),
        "time_beta": (cfg.get("time_sampling_beta_alpha", 1.5), cfg.get("time_sampling_beta_beta", 1.0)),
        "time_min": cfg.get("time_sampling_offset", 0.001),
        "min_period": cfg.get("min_period", 4e-3),
        "max_period": cfg.get("max_period", 4.0),
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rms_norm_eps": dit.get("rms_norm_eps", 1e-6),
        "hidden_act": dit.get("hidden_activation") or dit.get("hidden_act") or "gelu_pytorch_tanh",
    }
    fields.update(overrides)
    return ActionExpertConfig(**fields)


# Fields that change what the weights mean; chunk_size, step counts and time sampling do not.
_EXPERT_ARCH = (
    "hidden",
    "layers",
    "mlp",
    "heads",
    "kv_heads",
    "head_dim",
    "max_state_dim",
    "max_action_dim",
    "min_period",
    "max_period",
)
_VLM_ARCH = {
    "hidden_size": "text_hidden",
    "num_hidden_layers": "text_layers",
    "intermediate_size": "text_mlp",
    "num_attention_heads": "text_heads",
    "num_key_value_heads": "text_kv_heads",
    "head_dim": "head_dim",
}


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for name in files:
            if not (directory / name).is_file():
                raise CheckpointError(f"{index} lists shard {name}, which is missing from {directory}")
            out.update(load_file(str(directory / name)))
        return out
    raise CheckpointError(
        f"{directory} has no model.safetensors or model.safetensors.index.json; "
        "expected π0 weights as safetensors"
    )


def load_pi0_checkpoint(
    model: torch.nn.Module, directory: str | os.PathLike, *, parts: Iterable[str] = PI0_PARTS
) -> list[str]:
    """Load a π0 checkpoint directory (``config.json`` + safetensors) into a `PoseVLA`.

    The checkpoint's architecture is checked against the model's first (CheckpointError naming each differing
    field), then the weights go through `load_pi0_state_dict`. Returns the names of the parameters filled.
    """
    directory = Path(directory)
    parts = tuple(parts)
    cfg = read_pi0_config(directory)
    theirs = expert_config_from_pi0(cfg)
    ours = model.expert.cfg
    diff = {
        f: (getattr(ours, f), getattr(theirs, f))
        for f in _EXPERT_ARCH
        if getattr(ours, f) != getattr(theirs, f)
    }
    if "vlm" in parts:
        text = cfg.get("vlm_config", {}).get("text_config", {})
        vcfg = model.vlm.cfg
        for hf_name, our_name in _VLM_ARCH.items():
            if hf_name in text and text[hf_name] != getattr(vcfg, our_name):
                diff[f"vlm.{our_name}"] = (getattr(vcfg, our_name), text[hf_name])
    if diff:
        raise CheckpointError(
            f"the π0 checkpoint in {directory} does not match the model: "
            f"{{field: (model, checkpoint)}} = {diff}; fix: build the expert with "
            "expert_config_from_pi0(directory) (and a matching VLM), or restrict `parts`"
        )
    return load_pi0_state_dict(model, _read_safetensors(directory), parts=parts, source=str(directory))
