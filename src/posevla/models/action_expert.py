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

Conditional flow matching (pure functions below): τ = ``time_min`` + (1 − ``time_min``)·Beta(1.5, 1) ∈ [0.001,
1], ``x_τ = τ·ε + (1 − τ)·a``, target ``u = ε − a``; the MSE is averaged over the valid (unpadded) action dims
and the chunk steps that lie inside the episode (``action_is_pad`` False). Sampling integrates ``dx/dτ = v_θ``
with Euler steps from τ = 1 (pure noise) to τ = 0.

Named sizes live in `EXPERT_CONFIGS` (``tiny`` pairs with the tiny VLM; ``300m`` is π0's Gemma expert: width
1024, 18 layers, MLP 4096, 8 heads, 1 KV head, head_dim 256, pairing with Gemma-2B).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from posevla.errors import ConfigError, DataError

__all__ = [
    "EXPERT_CONFIGS",
    "ActionExpertConfig",
    "GemmaActionExpert",
    "PrefixKV",
    "check_expert_pairing",
    "flow_matching_loss",
    "flow_matching_pair",
    "get_expert_config",
    "joint_attention_mask",
    "pad_last_dim",
    "sample_flow_time",
    "sinusoidal_time_embedding",
    "to_gemma_config",
]


@dataclass(frozen=True)
class ActionExpertConfig:
    """Architecture of the action expert and its flow-matching constants.

    Attributes:
        name: the named size this came from (informational).
        hidden, layers, mlp, heads, kv_heads, head_dim: Gemma expert sizes. ``layers``, ``kv_heads`` and
            ``head_dim`` must equal the VLM's (`check_expert_pairing`), because each expert layer attends into
            the keys/values of the VLM layer with the same index.
        chunk_size: H, action steps predicted per chunk.
        max_state_dim, max_action_dim: width state and actions are zero-padded to (32 in π0).
        num_inference_steps: default number of Euler steps in `sample_actions`.
        time_beta: (α, β) of the Beta distribution of the training flow time.
        time_min: τ = time_min + (1 − time_min)·Beta(α, β), so τ ∈ [time_min, 1].
        min_period, max_period: periods of the sinusoidal time embedding.
        rope_theta, rms_norm_eps, hidden_act: Gemma constants.
        stop_gradient_to_vlm: "knowledge insulation": the expert reads the prefix keys/values detached, so the
            action loss sends no gradient into the VLM. Off in the paper's post-training.
    """

    name: str = "custom"
    hidden: int = 64
    layers: int = 4
    mlp: int = 256
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 32
    chunk_size: int = 16
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    time_beta: tuple[float, float] = (1.5, 1.0)
    time_min: float = 0.001
    min_period: float = 4e-3
    max_period: float = 4.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    stop_gradient_to_vlm: bool = False

    def __post_init__(self) -> None:
        sizes = {
            "hidden": self.hidden,
            "layers": self.layers,
            "mlp": self.mlp,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "chunk_size": self.chunk_size,
            "max_state_dim": self.max_state_dim,
            "max_action_dim": self.max_action_dim,
            "num_inference_steps": self.num_inference_steps,
        }
        bad = {k: v for k, v in sizes.items() if int(v) < 1}
        if bad:
            raise ConfigError(f"ActionExpertConfig sizes must be >= 1, got {bad}")
        if self.hidden % 2:
            raise ConfigError(
                f"hidden={self.hidden} must be even (the sinusoidal time embedding is sin ⊕ cos)"
            )
        if self.heads % self.kv_heads:
            raise ConfigError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if len(self.time_beta) != 2 or min(self.time_beta) <= 0:
            raise ConfigError(f"time_beta must be two positive Beta parameters (α, β), got {self.time_beta}")
        if not 0.0 <= self.time_min < 1.0:
            raise ConfigError(f"time_min must be in [0, 1), got {self.time_min}")
        if not 0.0 < self.min_period < self.max_period:
            raise ConfigError(
                "need 0 < min_period < max_period for the time embedding, "
                f"got {self.min_period}, {self.max_period}"
            )
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "time_beta", tuple(float(b) for b in self.time_beta))

    def replace(self, **changes: Any) -> ActionExpertConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["time_beta"] = list(self.time_beta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionExpertConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ActionExpertConfig fields {unknown}; valid fields: {sorted(known)}")
        return cls(**d)


EXPERT_CONFIGS: dict[str, ActionExpertConfig] = {
    # Pairs with the tiny VLM (4 layers, 1 KV head, head_dim 32): half its width, same attention geometry.
    "tiny": ActionExpertConfig(
        name="tiny", hidden=64, layers=4, mlp=256, heads=4, kv_heads=1, head_dim=32, chunk_size=16
    ),
    # spec §1.4: π0's "Gemma 300M" expert, pairing with Gemma-2B (18 layers, MQA, head_dim 256).
    "300m": ActionExpertConfig(
        name="300m", hidden=1024, layers=18, mlp=4096, heads=8, kv_heads=1, head_dim=256, chunk_size=50
    ),
}


def get_expert_config(name: str, **overrides: Any) -> ActionExpertConfig:
    """The named expert architecture, optionally with fields replaced (e.g. ``chunk_size=16``)."""
    if name not in EXPERT_CONFIGS:
        raise ConfigError(f"unknown action-expert config {name!r}; valid names: {sorted(EXPERT_CONFIGS)}")
    cfg = EXPERT_CONFIGS[name]
    return cfg.replace(**overrides) if overrides else cfg


def check_expert_pairing(expert: ActionExpertConfig, vlm: Any) -> None:
    """Raise ConfigError unless `expert` can share attention with the VLM `vlm` (a PoseVLMConfig)."""
    pairs = {
        "layers / text_layers": (expert.layers, vlm.text_layers),
        "kv_heads / text_kv_heads": (expert.kv_heads, vlm.text_kv_heads),
        "head_dim / head_dim": (expert.head_dim, vlm.head_dim),
    }
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if bad:
        raise ConfigError(
            f"action expert {expert.name!r} cannot share attention with VLM {vlm.name!r}: {{expert / vlm: "
            f"(expert, vlm)}} = {bad}; every expert layer attends into the VLM layer with the same index, so "
            "layer count, KV heads and head_dim must match (pick the expert size made for this VLM: "
            "'tiny' for 'tiny', '300m' for 'paligemma-3b')"
        )


def to_gemma_config(cfg: ActionExpertConfig, attn_implementation: str = "sdpa"):
    """A `transformers.GemmaConfig` for the expert's decoder layers (no vocabulary is built from it)."""
    from transformers import GemmaConfig

    if attn_implementation not in ("sdpa", "eager"):
        raise ConfigError(
            f"attn_implementation {attn_implementation!r} is not supported; use 'sdpa' or 'eager' "
            "(flash attention cannot express the block mask over the action chunk)"
        )
    gcfg = GemmaConfig(
        vocab_size=1,  # unused: the expert has no token embedding
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act=cfg.hidden_act,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_dropout=0.0,
        use_bidirectional_attention=True,
    )
    gcfg._attn_implementation = attn_implementation
    return gcfg


# -- flow matching (pure functions) --------------------------------------------------------------------------


def pad_last_dim(x: torch.Tensor, size: int, what: str = "tensor") -> torch.Tensor:
    """Zero-pad the last dim of `x` to `size` (DataError if it is already wider)."""
    n = x.shape[-1]
    if n > size:
        raise DataError(
            f"{what} has {n} dims in its last axis but the model takes at most {size}",
            field=what,
            fix=f"raise ActionExpertConfig.max_{what}_dim or reduce the {what} vector",
        )
    return F.pad(x, (0, size - n)) if n < size else x


def sinusoidal_time_embedding(
    tau: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """(B,) flow times → (B, dim) float32 embedding ``[sin(2π τ / p_k) ; cos(2π τ / p_k)]``.

    The ``dim // 2`` periods ``p_k`` are geometrically spaced from `min_period` to `max_period`.
    """
    if dim % 2:
        raise ConfigError(f"time-embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=tau.device)  # (dim/2,)
    period = min_period * (max_period / min_period) ** fraction  # (dim/2,)
    angle = tau.float()[:, None] * (2.0 * math.pi / period)[None, :]  # (B, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (B, dim)


def sample_flow_time(
    batch_size: int,
    *,
    beta: tuple[float, float] = (1.5, 1.0),
    time_min: float = 0.001,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B,) float32 training flow times τ = time_min + (1 − time_min)·Beta(α, β) ∈ [time_min, 1].

    Uses torch's global RNG (seed it with ``torch.manual_seed`` for reproducibility).
    """
    dist = torch.distributions.Beta(
        torch.tensor(float(beta[0]), device=device), torch.tensor(float(beta[1]), device=device)
    )
    return (time_min + (1.0 - time_min) * dist.sample((batch_size,))).float()  # (B,)


def flow_matching_pair(
    actions: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy input ``x_τ = τ·ε + (1 − τ)·a`` and the velocity target ``u = ε − a``.

    Args:
        actions: (B, H, A) clean action chunk a.
        noise: (B, H, A) ε ~ N(0, I).
        tau: (B,) flow time.
    """
    if actions.shape != noise.shape:
        raise DataError(f"noise of shape {tuple(noise.shape)} for actions of shape {tuple(actions.shape)}")
    if tau.shape != actions.shape[:1]:
        raise DataError(f"flow time of shape {tuple(tau.shape)}, expected ({actions.shape[0]},)")
    t = tau.to(actions.dtype)[:, None, None]  # (B, 1, 1)
    x_tau = t * noise + (1.0 - t) * actions  # (B, H, A)
    return x_tau, noise - actions


def flow_matching_loss(
    v_pred: torch.Tensor,
    target: torch.Tensor,
    action_is_pad: torch.Tensor | None = None,
    action_dim: int | None = None,
) -> torch.Tensor:
    """fp32 MSE between predicted and target velocity over valid entries.

    Args:
        v_pred, target: (B, H, A_max).
        action_is_pad: (B, H) bool, True where the chunk runs past the episode end (excluded);
            None = all valid.
        action_dim: the first `action_dim` dims are real, the rest zero padding (excluded); None = all.

    Returns:
        The mean of ``(v_pred − target)²`` over steps with ``action_is_pad`` False and the first
        `action_dim` dims.
    """
    if v_pred.shape != target.shape:
        raise DataError(f"v_pred {tuple(v_pred.shape)} and target {tuple(target.shape)} differ in shape")
    B, H, A = target.shape
    a = A if action_dim is None else int(action_dim)
    if not 1 <= a <= A:
        raise DataError(f"action_dim={action_dim} must be in [1, {A}]")
    err = (v_pred.float()[..., :a] - target.float()[..., :a]).pow(2)  # (B, H, a)
    if action_is_pad is None:
        return err.mean()
    if action_is_pad.shape != (B, H):
        raise DataError(
            f"action_is_pad of shape {tuple(action_is_pad.shape)}, expected ({B}, {H})", field="action_is_pad"
        )
    keep = (~action_is_pad.to(device=err.device, dtype=torch.bool)).float()  # (B, H)
    n = keep.sum() * a
    if float(n) == 0.0:
        raise DataError(
            "every action step of the batch is padding (action_is_pad all True)", field="action_is_pad"
        )
    return (err * keep[..., None]).sum() / n


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
