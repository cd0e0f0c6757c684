"""The flow-matching action expert (spec §1.4): a Gemma transformer sharing each attention layer with the VLM.

Architecture (π0 variant, the one the paper's results use):

* **Suffix tokens**: 1 *state* token = ``state_proj(state)`` (state zero-padded to ``max_state_dim``), then H
  *action* tokens = ``mlp_out(silu(mlp_in([action_in_proj(x_τ) ; sincos(τ)])))`` where ``x_τ`` is the noisy
  action chunk (zero-padded to ``max_action_dim``) and ``sincos(τ)`` a sinusoidal embedding of the flow time
  (periods ``min_period`` … ``max_period``). The expert's last hidden states of the H action tokens go through
  ``action_out_proj`` to give the velocity ``v_θ`` (B, H, max_action_dim).
* **Shared attention** (mixture-of-transformers): at layer i the expert's queries attend over the
  concatenation [VLM layer-i keys/values of the prefix | expert layer-i keys/values of the suffix]. Each
  stream keeps its own Q/K/V/O projections, MLP and RMSNorms (transformers' `GemmaDecoderLayer`). Because
  prefix tokens never attend to suffix tokens, the prefix half of this joint attention is exactly the VLM run
  alone; the expert therefore consumes the prefix as per-layer keys/values (``PrefixKV``), computed once per
  batch in training and once per chunk at inference (reused by every Euler step).
* **Attention mask** (`joint_attention_mask`): blocks prefix → state → actions; a query sees the keys of its
  own and earlier blocks: the prefix sees only the prefix (bidirectionally, minus padding), the state token
  sees the prefix and itself, action tokens see the prefix, the state and every action token.
* **Positions**: RoPE positions continue after the prefix's *valid* tokens (``n_valid + k``), so right-padding
  of the prompt does not shift the suffix.

Conditional flow matching (pure functions in `posevla.models.flow_matching`): τ = ``time_min`` +
(1 − ``time_min``)·Beta(1.5, 1) ∈ [0.001, 1], ``x_τ = τ·ε + (1 − τ)·a``, target ``u = ε − a``; the MSE is
averaged over the valid (unpadded) action dims and the chunk steps that lie inside the episode
(``action_is_pad`` False). Sampling integrates ``dx/dτ = v_θ`` with Euler steps from τ = 1 (pure noise) to 0.

The architecture is `posevla.models.config.ActionExpertConfig`; named sizes live in `EXPERT_CONFIGS` (``tiny``
pairs with the tiny VLM; ``300m`` is π0's Gemma expert: width 1024, 18 layers, MLP 4096, 8 heads, 1 KV head,
head_dim 256, pairing with Gemma-2B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from posevla.errors import ConfigError, DataError
from posevla.models.config import ActionExpertConfig, to_gemma_config
from posevla.models.flow_matching import sinusoidal_time_embedding

__all__ = ["GemmaActionExpert", "PrefixKV", "joint_attention_mask"]


# -- attention mask ------------------------------------------------------------------------------------------


def joint_attention_mask(prefix_pad_mask: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, L, L) bool mask (True = may attend) over ``[prefix (P) | state (1) | actions (H)]``, L = P+1+H.

    Blocks prefix=0, state=1, actions=2: query i sees key j iff ``block(j) <= block(i)`` and both are real
    tokens (prefix padding, ``prefix_pad_mask`` False, neither attends nor is attended; its rows are all
    False).
    """
    if prefix_pad_mask.ndim != 2:
        raise DataError(f"prefix_pad_mask must be (B, P), got {tuple(prefix_pad_mask.shape)}")
    B, P = prefix_pad_mask.shape
    dev = prefix_pad_mask.device
    block = torch.cat(
        [
            torch.zeros(P, dtype=torch.long, device=dev),
            torch.ones(1, dtype=torch.long, device=dev),
            torch.full((horizon,), 2, dtype=torch.long, device=dev),
        ]
    )  # (L,)
    valid = torch.cat(
        [prefix_pad_mask.bool(), torch.ones(B, 1 + horizon, dtype=torch.bool, device=dev)], 1
    )  # (B, L)
    causal_blocks = block[None, :] <= block[:, None]  # (L, L) [query, key]
    return causal_blocks[None] & valid[:, None, :] & valid[:, :, None]  # (B, L, L)


# -- the expert ----------------------------------------------------------------------------------------------


@dataclass
class PrefixKV:
    """The VLM's per-layer keys/values of a prefix (RoPE already applied) and which prefix tokens are real.

    Attributes:
        kv: per VLM layer, ``(keys, values)`` each (B, kv_heads, P, head_dim).
        pad_mask: (B, P) bool, True on real tokens.
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    pad_mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.pad_mask.shape[1])


class _ReadOnlyPrefixCache:
    """Cache adapter for transformers' attention: returns [prefix | new] keys/values and stores nothing.

    `GemmaAttention` calls ``cache.update(k, v, layer_idx)`` and attends over what it returns; returning the
    concatenation without storing it makes every expert call see exactly the prefix plus its own suffix, so
    one prefix serves any number of denoising steps without cropping.
    """

    def __init__(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]], detach: bool) -> None:
        self.kv = [(k.detach(), v.detach()) if detach else (k, v) for k, v in kv]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ):
        pk, pv = self.kv[layer_idx]
        keys = torch.cat([pk.to(key_states.dtype), key_states], dim=-2)  # (B, kv_heads, P+S, head_dim)
        values = torch.cat([pv.to(value_states.dtype), value_states], dim=-2)  # (B, kv_heads, P+S, head_dim)
        return keys, values


class GemmaActionExpert(nn.Module):
    """π0's Gemma action expert: suffix embedding, Gemma layers sharing attention with the VLM, velocity head.

    Parameter names follow π0 (``state_proj``, ``action_in_proj``, ``action_time_mlp_in/out``,
    ``action_out_proj``; ``layers.i`` / ``norm`` as in a `GemmaModel` without its embedding) so π0 checkpoints
    map onto it by prefix renaming (`posevla.models.pi0_weights`).

    Args:
        cfg: the expert architecture.
        attn_implementation: transformers attention backend, ``"sdpa"`` or ``"eager"``.
    """

    def __init__(self, cfg: ActionExpertConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers.models.gemma.modeling_gemma import (
            GemmaDecoderLayer,
            GemmaRMSNorm,
            GemmaRotaryEmbedding,
        )

        self.cfg = cfg
        gcfg = to_gemma_config(cfg, attn_implementation)
        self.gemma_config = gcfg
        self.layers = nn.ModuleList([GemmaDecoderLayer(gcfg, i) for i in range(cfg.layers)])
        self.norm = GemmaRMSNorm(cfg.hidden, eps=cfg.rms_norm_eps)
        self.rotary_emb = GemmaRotaryEmbedding(gcfg)
        self.state_proj = nn.Linear(cfg.max_state_dim, cfg.hidden)
        self.action_in_proj = nn.Linear(cfg.max_action_dim, cfg.hidden)
        self.action_time_mlp_in = nn.Linear(2 * cfg.hidden, cfg.hidden)
        self.action_time_mlp_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.action_out_proj = nn.Linear(cfg.hidden, cfg.max_action_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    def embed_suffix(
        self, state: torch.Tensor, noisy_actions: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        """``[state token ; H action tokens]`` (B, 1+H, hidden).

        Args:
            state: (B, max_state_dim) zero-padded state.
            noisy_actions: (B, H, max_action_dim) x_τ.
            tau: (B,) flow time of each sample.
        """
        cfg = self.cfg
        B = state.shape[0]
        if state.shape != (B, cfg.max_state_dim):
            raise DataError(
                f"state of shape {tuple(state.shape)}, expected ({B}, {cfg.max_state_dim}) (zero-padded)"
            )
        if (
            noisy_actions.ndim != 3
            or noisy_actions.shape[0] != B
            or noisy_actions.shape[2] != cfg.max_action_dim
        ):
            raise DataError(
                f"noisy actions of shape {tuple(noisy_actions.shape)}, "
                f"expected ({B}, H, {cfg.max_action_dim})"
            )
        if tau.shape != (B,):
            raise DataError(f"flow time of shape {tuple(tau.shape)}, expected ({B},)")
        dtype = self.dtype
        state_tok = self.state_proj(state.to(dtype))[:, None]  # (B, 1, D)
        act = self.action_in_proj(noisy_actions.to(dtype))  # (B, H, D)
        temb = sinusoidal_time_embedding(tau, cfg.hidden, cfg.min_period, cfg.max_period)  # (B, D) fp32
        temb = temb.to(dtype)[:, None].expand_as(act)  # (B, H, D)
        act = self.action_time_mlp_out(
            F.silu(self.action_time_mlp_in(torch.cat([act, temb], dim=-1)))
        )  # (B, H, D)
        return torch.cat([state_tok, act], dim=1)  # (B, 1+H, D)

    def forward(self, suffix: torch.Tensor, prefix: PrefixKV) -> torch.Tensor:
        """Expert layers over suffix embeddings (B, 1+H, hidden) against `prefix`; returns (B, 1+H, hidden).

        The output is after the final RMSNorm.
        """
        cfg = self.cfg
        B, S, D = suffix.shape
        if D != cfg.hidden:
            raise DataError(f"suffix embeddings of width {D}, expected {cfg.hidden}")
        if len(prefix.kv) != cfg.layers:
            raise ConfigError(
                f"prefix has keys/values of {len(prefix.kv)} layers, the expert has {cfg.layers}"
            )
        P = prefix.length
        k0 = prefix.kv[0][0]
        if prefix.pad_mask.shape[0] != B or k0.shape != (B, cfg.kv_heads, P, cfg.head_dim):
            raise DataError(
                f"prefix keys of shape {tuple(k0.shape)} / pad mask {tuple(prefix.pad_mask.shape)}, expected "
                f"({B}, {cfg.kv_heads}, P, {cfg.head_dim}) / ({B}, P) for a suffix batch of {B}"
            )
        pad = prefix.pad_mask.to(device=suffix.device, dtype=torch.bool)  # (B, P)
        n_valid = pad.long().sum(-1, keepdim=True)  # (B, 1)
        position_ids = n_valid + torch.arange(S, device=suffix.device)[None]  # (B, S)
        allowed = joint_attention_mask(pad, S - 1)[:, P:]  # (B, S, P+S) suffix rows
        mask = torch.zeros(allowed.shape, dtype=suffix.dtype, device=suffix.device)
        mask = mask.masked_fill(~allowed, torch.finfo(suffix.dtype).min)[:, None]  # (B, 1, S, P+S) additive
        position_embeddings = self.rotary_emb(suffix, position_ids)  # cos, sin (B, S, head_dim)
        cache = _ReadOnlyPrefixCache(prefix.kv, detach=cfg.stop_gradient_to_vlm)
        h = suffix
        for layer in self.layers:
            h = layer(
                h,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                position_embeddings=position_embeddings,
            )  # (B, S, D)
        return self.norm(h)

    def velocity(
        self, state: torch.Tensor, noisy_actions: torch.Tensor, tau: torch.Tensor, prefix: PrefixKV
    ) -> torch.Tensor:
        """Predicted velocity v_θ(x_τ, τ | prefix, state): (B, H, max_action_dim)."""
        suffix = self.embed_suffix(state, noisy_actions, tau)  # (B, 1+H, D)
        h = self(suffix, prefix)  # (B, 1+H, D)
        return self.action_out_proj(h[:, 1:])  # (B, H, A_max)
