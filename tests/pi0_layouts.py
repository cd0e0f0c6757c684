"""π0 checkpoint directories in the published layouts, with random weights at any size (tiny or full).

Used by ``tests/test_local_weights.py`` and ``tests/test_full_size_weights.py``. Written from the public
formats, never from posevla's own modules (the helpers and the PaliGemma part come from
``tests/public_layouts.py``):

* `write_pi0_dir` with ``layout="openpi"``: what openpi's ``examples/convert_jax_model_to_pytorch.py`` writes
  (``safetensors.torch.save_model`` of ``PI0Pytorch``: one ``model.safetensors``; of the tied PaliGemma
  embedding only ``paligemma_with_expert.paligemma.lm_head.weight`` survives de-duplication; the expert keeps
  its untied ``gemma_expert.lm_head.weight``; ``state_proj``, ``action_in_proj``, ``action_out_proj``,
  ``action_time_mlp_{in,out}`` at the top level; in bf16 the norms and the patch/position embeddings stay
  fp32) and its small ``config.json`` (``action_dim``, ``action_horizon``, ``paligemma_variant``,
  ``action_expert_variant``, ``precision``).
* ``layout="lerobot"``: LeRobot's ``PI0Policy.save_pretrained`` (the openpi port): the same keys under
  ``model.``, and a draccus ``config.json`` with ``"type": "pi0"``.

Sizes use openpi's variant names (``gemma_2b``, ``gemma_300m``, ``dummy``); see `GEMMA_VARIANTS`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from public_layouts import (
    PALIGEMMA_3B,
    PaliGemmaSize,
    TensorSpec,
    gemma_layer_specs,
    paligemma_specs,
    random_fill,
    write_safetensors,
)

__all__ = ["GEMMA_VARIANTS", "pi0_specs", "write_pi0_dir"]

#: openpi's Gemma variants (``openpi.models.gemma.get_config``): width, depth, mlp_dim, heads, kv heads, head_dim.
GEMMA_VARIANTS: dict[str, dict[str, int]] = {
    "dummy": {"width": 64, "depth": 4, "mlp_dim": 128, "num_heads": 8, "num_kv_heads": 1, "head_dim": 16},
    "gemma_300m": {
        "width": 1024,
        "depth": 18,
        "mlp_dim": 4096,
        "num_heads": 8,
        "num_kv_heads": 1,
        "head_dim": 256,
    },
    "gemma_2b": {
        "width": 2048,
        "depth": 18,
        "mlp_dim": 16384,
        "num_heads": 8,
        "num_kv_heads": 1,
        "head_dim": 256,
    },
}


# -- π0 (openpi PyTorch / LeRobot layouts) ------------------------------------------------------------------


def pi0_specs(
    paligemma: PaliGemmaSize,
    expert_variant: str,
    *,
    action_dim: int = 32,
    state_dim: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    prefix: str = "",
    include_vlm: bool = True,
) -> list[TensorSpec]:
    """Stored tensors of an openpi-converted π0 (``prefix="model."`` for LeRobot), in ``PI0Pytorch`` order.

    In bf16 the Gemma norms and SigLIP's patch/position embeddings stay fp32 (openpi's
    ``to_bfloat16_for_selected_params``). ``include_vlm=False`` leaves out the PaliGemma part (a partial file,
    for tests that only need the expert).
    """
    e = GEMMA_VARIANTS[expert_variant]
    pg, ex = prefix + "paligemma_with_expert.paligemma.", prefix + "paligemma_with_expert.gemma_expert."
    out: list[TensorSpec] = []
    if include_vlm:
        rows = paligemma.base_vocab + 1024 + 128  # π0's PaliGemma: vocab 257,152 (no padding rows)
        for s in paligemma_specs(paligemma, dtype):
            s = replace(s, key=_openpi_vlm_key(s.key, pg))
            if s.key.endswith("embed_tokens.weight"):
                # the tied embedding is stored once, under the LM head's name (save_model de-duplication)
                s = replace(s, key=pg + "lm_head.weight", shape=(rows, s.shape[1]))
            out.append(s)
    out += gemma_layer_specs(
        ex + "model.",
        e["depth"],
        e["width"],
        e["num_heads"],
        e["num_kv_heads"],
        e["head_dim"],
        e["mlp_dim"],
        dtype,
    )
    out.append(TensorSpec(ex + "lm_head.weight", (paligemma.base_vocab + 1024 + 128, e["width"]), dtype))
    w = e["width"]
    out += [
        TensorSpec(prefix + "action_in_proj.weight", (w, action_dim), dtype),
        TensorSpec(prefix + "action_in_proj.bias", (w,), dtype),
        TensorSpec(prefix + "action_out_proj.weight", (action_dim, w), dtype),
        TensorSpec(prefix + "action_out_proj.bias", (action_dim,), dtype),
        TensorSpec(prefix + "state_proj.weight", (w, state_dim or action_dim), dtype),
        TensorSpec(prefix + "state_proj.bias", (w,), dtype),
        TensorSpec(prefix + "action_time_mlp_in.weight", (w, 2 * w), dtype),
        TensorSpec(prefix + "action_time_mlp_in.bias", (w,), dtype),
        TensorSpec(prefix + "action_time_mlp_out.weight", (w, w), dtype),
        TensorSpec(prefix + "action_time_mlp_out.bias", (w,), dtype),
    ]
    if dtype == torch.bfloat16:  # parameters the layout keeps in fp32 when the rest is bf16
        keep = _KEEP_FP32_LEROBOT if prefix else _KEEP_FP32_OPENPI
        out = [replace(s, dtype=torch.float32) if any(k in s.key for k in keep) else s for s in out]
    return out


# Substrings of parameter names kept fp32 in bf16 checkpoints: openpi's
# ``PaliGemmaWithExpertModel.to_bfloat16_for_selected_params`` and LeRobot's port of it.
_KEEP_FP32_OPENPI = (
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.embeddings.patch_embedding.bias",
    "vision_tower.vision_model.embeddings.position_embedding.weight",
    "input_layernorm",
    "post_attention_layernorm",
    "model.norm",
)
_KEEP_FP32_LEROBOT = (
    "vision_tower",
    "multi_modal_projector",
    "input_layernorm",
    "post_attention_layernorm",
    "model.norm",
)


def _openpi_vlm_key(hub_key: str, pg: str) -> str:
    """A hub PaliGemma key in openpi's nesting (transformers ≥ 4.52: ``model.language_model.…``)."""
    if hub_key.startswith("language_model.model."):
        return pg + "model.language_model." + hub_key[len("language_model.model.") :]
    return pg + "model." + hub_key


def write_pi0_dir(
    directory: str | Path,
    *,
    layout: str = "openpi",
    paligemma: PaliGemmaSize = PALIGEMMA_3B,
    paligemma_variant: str = "gemma_2b",
    expert_variant: str = "gemma_300m",
    action_dim: int = 32,
    action_horizon: int = 50,
    dtype: torch.dtype = torch.bfloat16,
    include_vlm: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write a π0 checkpoint (``layout`` ``"openpi"`` or ``"lerobot"``); return the expert's tensors by key.

    The returned dict holds every expert-layer and projection tensor (small next to the VLM), keyed by the
    public name, for comparison after `init_expert_from_pi0`.
    """
    if layout not in ("openpi", "lerobot"):
        raise ValueError(f"layout {layout!r}: 'openpi' or 'lerobot'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "model." if layout == "lerobot" else ""
    specs = pi0_specs(
        paligemma, expert_variant, action_dim=action_dim, dtype=dtype, prefix=prefix, include_vlm=include_vlm
    )
    gen = torch.Generator().manual_seed(seed)
    kept: dict[str, torch.Tensor] = {}

    def make(s: TensorSpec) -> torch.Tensor:
        t = random_fill(s, gen)
        if "paligemma_with_expert.paligemma." not in s.key and not s.key.endswith("lm_head.weight"):
            kept[s.key] = t.clone()  # expert layers, final norm and projections
        return t

    write_safetensors(directory / "model.safetensors", specs, make)
    precision = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    if layout == "openpi":
        config: dict = {
            "action_dim": action_dim,
            "action_horizon": action_horizon,
            "paligemma_variant": paligemma_variant,
            "action_expert_variant": expert_variant,
            "precision": precision,
        }
    else:
        config = {
            "type": "pi0",
            "n_obs_steps": 1,
            "input_features": {},
            "output_features": {},
            "device": "cpu",
            "use_amp": False,
            "push_to_hub": False,
            "repo_id": None,
            "private": None,
            "tags": None,
            "license": None,
            "paligemma_variant": paligemma_variant,
            "action_expert_variant": expert_variant,
            "dtype": precision,
            "chunk_size": action_horizon,
            "n_action_steps": action_horizon,
            "max_state_dim": action_dim,
            "max_action_dim": action_dim,
            "num_inference_steps": 10,
            "time_sampling_beta_alpha": 1.5,
            "time_sampling_beta_beta": 1.0,
            "time_sampling_scale": 0.999,
            "time_sampling_offset": 0.001,
            "min_period": 0.004,
            "max_period": 4.0,
            "image_resolution": [paligemma.image_size, paligemma.image_size],
            "empty_cameras": 0,
            "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
            "gradient_checkpointing": False,
            "compile_model": False,
            "compile_mode": "max-autotune",
            "freeze_vision_encoder": False,
            "train_expert_only": False,
            "optimizer_lr": 2.5e-05,
            "optimizer_betas": [0.9, 0.95],
            "optimizer_eps": 1e-08,
            "optimizer_weight_decay": 0.01,
            "optimizer_grad_clip_norm": 1.0,
            "scheduler_warmup_steps": 1000,
            "scheduler_decay_steps": 30000,
            "scheduler_decay_lr": 2.5e-06,
            "tokenizer_max_length": 48,
        }
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    return kept
