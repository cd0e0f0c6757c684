"""Load π0 weights (transformers `PI0ForConditionalGeneration`, LeRobot or openpi layouts) into a policy.

`init_expert_from_pi0` initialises only the action expert of a fresh policy (spec §2.3); `load_pi0_checkpoint`
loads any selection of parts. Three checkpoint directories are recognised (`pi0_layout`), each
``config.json`` + ``model.safetensors``: openpi's JAX→PyTorch conversion (keys ``paligemma_with_expert.…``,
``state_proj``, ``action_in_proj``, …; its config names the Gemma variants, `PI0_GEMMA_VARIANTS`), LeRobot's
``pi0`` policy (the same keys under ``model.``; ``"type": "pi0"``) and transformers' ``PI0`` (``dit_config``).

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
    "PI0_GEMMA_VARIANTS",
    "PI0_PARTS",
    "expert_config_from_pi0",
    "init_expert_from_pi0",
    "load_pi0_checkpoint",
    "load_pi0_state_dict",
    "map_pi0_key",
    "pi0_layout",
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
        (_PG + r"(?:language_model\.)?lm_head\.weight$", "vlm.hf.model.language_model.embed_tokens.weight"),
        (_PG + r"(?:model\.)?language_model\.(?:model\.)?", "vlm.hf.model.language_model."),
        (_EX + r"(?:lm_head|model\.embed_tokens)\.weight$", _DROP),
        (_EX + r"model\.(layers|norm)\.", r"expert.\1."),
        (r"^(?:model\.)?" + _PROJ + r"\.", r"expert.\1."),
    )
)
_LM_HEAD = re.compile(_PG + r"(?:language_model\.)?lm_head\.weight$")


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


#: openpi's Gemma variants (``openpi.models.gemma.get_config``; LeRobot's ``PI0Config`` uses the same names):
#: our `ActionExpertConfig` size fields for each.
PI0_GEMMA_VARIANTS: dict[str, dict[str, int]] = {
    "dummy": {"hidden": 64, "layers": 4, "mlp": 128, "heads": 8, "kv_heads": 1, "head_dim": 16},
    "gemma_300m": {"hidden": 1024, "layers": 18, "mlp": 4096, "heads": 8, "kv_heads": 1, "head_dim": 256},
    "gemma_2b": {"hidden": 2048, "layers": 18, "mlp": 16384, "heads": 8, "kv_heads": 1, "head_dim": 256},
}
_HF_TEXT = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "mlp": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
}


def pi0_layout(config: Mapping[str, Any]) -> str | None:
    """Which π0 ``config.json`` this is: ``"transformers"`` (``PI0Config``: ``dit_config``), ``"lerobot"``
    (``"type": "pi0"``), ``"openpi"`` (its PyTorch conversion: ``action_expert_variant`` +
    ``action_horizon``), or None."""
    if "dit_config" in config and config.get("model_type", "pi0") == "pi0":
        return "transformers"
    if config.get("type") == "pi0":
        return "lerobot"
    if "action_expert_variant" in config and "action_horizon" in config:
        return "openpi"
    return None


def read_pi0_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a π0 checkpoint directory in any `pi0_layout` (CheckpointError otherwise)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; expected a π0 checkpoint directory")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or pi0_layout(cfg) is None:
        what = cfg.get("type", cfg.get("model_type")) if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(
            f"{path} (type/model_type {what!r}) is not a π0 config; expected transformers' PI0Config "
            "('dit_config'), LeRobot's ('\"type\": \"pi0\"') or openpi's PyTorch conversion "
            "('action_expert_variant', 'action_horizon'); π0.5 checkpoints are not supported"
        )
    return cfg


def _variant(cfg: Mapping[str, Any], key: str, default: str) -> dict[str, int]:
    name = cfg.get(key, default)
    if name not in PI0_GEMMA_VARIANTS:
        raise CheckpointError(
            f"π0 config field {key}={name!r} is not a known Gemma variant {sorted(PI0_GEMMA_VARIANTS)}"
        )
    return PI0_GEMMA_VARIANTS[name]


def expert_config_from_pi0(
    config: Mapping[str, Any] | str | os.PathLike, **overrides: Any
) -> ActionExpertConfig:
    """An `ActionExpertConfig` with the architecture of a π0 config (dict or checkpoint directory), any layout.

    openpi's config names the expert's Gemma variant and ``action_dim`` (state and actions are padded to it);
    LeRobot's names the variant (older LeRobot configs without it used π0's 300M expert) and
    ``max_state_dim``/``max_action_dim``; transformers' gives the sizes in ``dit_config``.
    """
    cfg = dict(config) if isinstance(config, Mapping) else read_pi0_config(config)
    layout = pi0_layout(cfg)
    fields: dict[str, Any] = {"name": "pi0"}
    if layout == "transformers":
        dit = cfg["dit_config"]
        rope = dit.get("rope_parameters") or {}
        fields.update(
            hidden=dit["hidden_size"],
            layers=dit["num_hidden_layers"],
            mlp=dit["intermediate_size"],
            heads=dit["num_attention_heads"],
            kv_heads=dit["num_key_value_heads"],
            head_dim=dit.get("head_dim") or dit["hidden_size"] // dit["num_attention_heads"],
            chunk_size=cfg.get("chunk_size", 50),
            max_state_dim=cfg.get("max_state_dim", 32),
            max_action_dim=cfg.get("max_action_dim", 32),
            num_inference_steps=cfg.get("num_inference_steps", 10),
            time_beta=(cfg.get("time_sampling_beta_alpha", 1.5), cfg.get("time_sampling_beta_beta", 1.0)),
            time_min=cfg.get("time_sampling_offset", 0.001),
            min_period=cfg.get("min_period", 4e-3),
            max_period=cfg.get("max_period", 4.0),
            rope_theta=rope.get("rope_theta", 10000.0),
            rms_norm_eps=dit.get("rms_norm_eps", 1e-6),
            hidden_act=dit.get("hidden_activation") or dit.get("hidden_act") or "gelu_pytorch_tanh",
        )
    elif layout == "openpi":
        fields.update(_variant(cfg, "action_expert_variant", "gemma_300m"))
        fields.update(
            chunk_size=cfg["action_horizon"],
            max_state_dim=cfg.get("action_dim", 32),
            max_action_dim=cfg.get("action_dim", 32),
        )
    elif layout == "lerobot":
        fields.update(_variant(cfg, "action_expert_variant", "gemma_300m"))
        fields.update(
            chunk_size=cfg.get("chunk_size", 50),
            max_state_dim=cfg.get("max_state_dim", 32),
            max_action_dim=cfg.get("max_action_dim", 32),
            num_inference_steps=cfg.get("num_inference_steps", cfg.get("num_steps", 10)),
            time_beta=(cfg.get("time_sampling_beta_alpha", 1.5), cfg.get("time_sampling_beta_beta", 1.0)),
            time_min=cfg.get("time_sampling_offset", 0.001),
            min_period=cfg.get("min_period", 4e-3),
            max_period=cfg.get("max_period", 4.0),
        )
    else:
        raise CheckpointError(f"not a π0 config (keys {sorted(cfg)[:8]}); see read_pi0_config")
    fields.update(overrides)
    return ActionExpertConfig(**fields)


def _vlm_text_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The π0 checkpoint's Gemma (VLM) sizes, as `ActionExpertConfig`-style names; {} when not stated."""
    if pi0_layout(cfg) == "transformers":
        text = cfg.get("vlm_config", {}).get("text_config", {})
        return {ours: text[hf] for ours, hf in _HF_TEXT.items() if hf in text}
    return dict(_variant(cfg, "paligemma_variant", "gemma_2b"))


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
    "hidden": "text_hidden",
    "layers": "text_layers",
    "mlp": "text_mlp",
    "heads": "text_heads",
    "kv_heads": "text_kv_heads",
    "head_dim": "head_dim",
}
# Checkpoint keys that are not weights of any part (old LeRobot policies stored their normalisation stats).
_NOT_WEIGHTS = re.compile(r"^(?:normalize_inputs|normalize_targets|unnormalize_outputs)\.")


def _read_safetensors(directory: Path, keep: Any = None) -> dict[str, torch.Tensor]:
    """The tensors of a directory's safetensors (single file or index + shards); `keep(key)` filters them
    before they are read."""
    from safetensors import safe_open

    from posevla.models.paligemma_weights import check_weight_files

    out: dict[str, torch.Tensor] = {}
    for path in check_weight_files(directory):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if keep is None or keep(key):
                    out[key] = f.get_tensor(key)
    return out


def _arch_diff(ours: ActionExpertConfig, theirs: ActionExpertConfig) -> dict[str, tuple[Any, Any]]:
    return {
        f: (getattr(ours, f), getattr(theirs, f))
        for f in _EXPERT_ARCH
        if getattr(ours, f) != getattr(theirs, f)
    }


def load_pi0_checkpoint(
    model: torch.nn.Module, directory: str | os.PathLike, *, parts: Iterable[str] = PI0_PARTS
) -> list[str]:
    """Load a π0 checkpoint directory (``config.json`` + safetensors, any `pi0_layout`) into a `PoseVLA`.

    The checkpoint's architecture is checked against the model's first (CheckpointError naming each differing
    field), then the weights go through `load_pi0_state_dict`. Returns the names of the parameters filled.
    """
    directory = Path(directory)
    parts = tuple(parts)
    cfg = read_pi0_config(directory)
    diff = _arch_diff(model.expert.cfg, expert_config_from_pi0(cfg))
    if "vlm" in parts:
        vcfg = model.vlm.cfg
        for name, value in _vlm_text_sizes(cfg).items():
            if value != getattr(vcfg, _VLM_ARCH[name]):
                diff[f"vlm.{_VLM_ARCH[name]}"] = (getattr(vcfg, _VLM_ARCH[name]), value)
    if diff:
        raise CheckpointError(
            f"the π0 checkpoint in {directory} does not match the model: "
            f"{{field: (model, checkpoint)}} = {diff}; fix: build the expert with "
            "expert_config_from_pi0(directory) (and a matching VLM), or restrict `parts`"
        )
    sd = _read_safetensors(directory, keep=lambda k: not _NOT_WEIGHTS.match(k))
    return load_pi0_state_dict(model, sd, parts=parts, source=str(directory))


def init_expert_from_pi0(policy: torch.nn.Module, directory: str | os.PathLike) -> dict[str, Any]:
    """Initialise only the action expert of a `PoseVLA` (its Gemma layers, final norm and the state / action /
    time projections) from a π0 checkpoint directory; the VLM and the prior embedders are left untouched.

    Spec §2.3: the post-training policy takes its expert from π0. Any `pi0_layout` is accepted (openpi's
    PyTorch conversion, LeRobot's ``pi0``, transformers' ``PI0``); only the expert's tensors are read from the
    safetensors, so the checkpoint's VLM (≈ 6 GB in bf16) is never loaded. Values are cast to the policy's
    dtype.

    Returns:
        ``{"directory", "layout", "loaded": [our parameter names], "ignored": [checkpoint keys not used: the
        VLM, the expert's unused LM head, stored normalisation stats], "n_loaded", "n_ignored"}``.

    Raises:
        CheckpointError: no π0 config / weights; the checkpoint's expert differs from ``policy.expert.cfg``
            (each differing field listed); checkpoint keys that belong to no known part (e.g. a π0.5 expert);
            missing expert keys or shape mismatches (from `load_pi0_state_dict`).
    """
    directory = Path(directory)
    cfg = read_pi0_config(directory)
    layout = pi0_layout(cfg)
    theirs = expert_config_from_pi0(cfg)
    diff = _arch_diff(policy.expert.cfg, theirs)
    if diff:
        raise CheckpointError(
            f"the action expert of the π0 checkpoint in {directory} ({layout} layout) does not match the policy's: "
            f"{{field: (policy, checkpoint)}} = {diff}; fix: build the policy with "
            "expert_config_from_pi0(directory) as its expert config (π0's expert is the '300m' size; its layers, "
            "KV heads and head_dim must also equal the VLM's)"
        )
    ignored: list[str] = []
    unknown: list[str] = []

    def keep(key: str) -> bool:
        target = map_pi0_key(key)
        if target is None:
            (ignored if _NOT_WEIGHTS.match(key) else unknown).append(key)
            return False
        if target == "" or _part_of(target) not in ("expert", "projections"):
            ignored.append(key)
            return False
        return True

    sd = _read_safetensors(directory, keep)
    if unknown:
        raise CheckpointError(
            f"the π0 checkpoint in {directory} ({layout} layout) has keys that belong to no known part "
            f"{_listing(unknown)}; fix: use a π0 (not π0.5) checkpoint in the openpi, LeRobot or transformers layout"
        )
    loaded = load_pi0_state_dict(policy, sd, parts=("expert", "projections"), source=str(directory))
    return {
        "directory": str(directory),
        "layout": layout,
        "loaded": loaded,
        "ignored": sorted(ignored),
        "n_loaded": len(loaded),
        "n_ignored": len(ignored),
    }
