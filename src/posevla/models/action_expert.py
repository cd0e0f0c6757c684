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
from posevla.models.flow_matching import euler_schedule, sinusoidal_time_embedding

__all__ = ["GemmaActionExpert", "PrefixKV", "joint_attention_mask", "suffix_attention_mask", "ChunkFlow"]


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


def suffix_attention_mask(prefix_pad_mask: torch.Tensor, suffix_len: int) -> torch.Tensor:
    """(B, S, P+S) bool: the suffix rows of `joint_attention_mask` (S = 1 + H), built directly.

    The state row sees the real prefix tokens and itself; every action row sees the real prefix tokens, the
    state and all actions.
    """
    B, P = prefix_pad_mask.shape
    S, dev = int(suffix_len), prefix_pad_mask.device
    own = torch.ones(S, S, dtype=torch.bool, device=dev)  # (S, S) [query, key] within the suffix
    own[0, 1:] = False  # the state token does not see the actions
    return torch.cat([prefix_pad_mask.bool()[:, None, :].expand(B, S, P), own.expand(B, S, S)], -1)  # (B, S, P+S)


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

    def check_prefix(self, prefix: PrefixKV, batch_size: int) -> None:
        """Raise unless `prefix` holds keys/values of every expert layer for a batch of `batch_size`."""
        cfg = self.cfg
        if len(prefix.kv) != cfg.layers:
            raise ConfigError(
                f"prefix has keys/values of {len(prefix.kv)} layers, the expert has {cfg.layers}"
            )
        B, P = batch_size, prefix.length
        k0 = prefix.kv[0][0]
        if prefix.pad_mask.shape[0] != B or k0.shape != (B, cfg.kv_heads, P, cfg.head_dim):
            raise DataError(
                f"prefix keys of shape {tuple(k0.shape)} / pad mask {tuple(prefix.pad_mask.shape)}, expected "
                f"({B}, {cfg.kv_heads}, P, {cfg.head_dim}) / ({B}, P) for a suffix batch of {B}"
            )

    def forward(self, suffix: torch.Tensor, prefix: PrefixKV) -> torch.Tensor:
        """Expert layers over suffix embeddings (B, 1+H, hidden) against `prefix`; returns (B, 1+H, hidden).

        The output is after the final RMSNorm.
        """
        cfg = self.cfg
        B, S, D = suffix.shape
        if D != cfg.hidden:
            raise DataError(f"suffix embeddings of width {D}, expected {cfg.hidden}")
        self.check_prefix(prefix, B)
        pad = prefix.pad_mask.to(device=suffix.device, dtype=torch.bool)  # (B, P)
        n_valid = pad.long().sum(-1, keepdim=True)  # (B, 1)
        position_ids = n_valid + torch.arange(S, device=suffix.device)[None]  # (B, S)
        allowed = suffix_attention_mask(pad, S)[:, None]  # (B, 1, S, P+S) the suffix rows of joint_attention_mask
        if self.gemma_config._attn_implementation == "eager":  # eager adds its mask to the scores
            mask = torch.zeros(allowed.shape, dtype=suffix.dtype, device=suffix.device)
            mask = mask.masked_fill(~allowed, torch.finfo(suffix.dtype).min)  # (B, 1, S, P+S) additive
        else:
            mask = allowed  # SDPA takes the bool mask as is
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

    @torch.no_grad()
    def sample(
        self,
        state: torch.Tensor,
        noise: torch.Tensor,
        prefix: PrefixKV,
        num_steps: int,
        *,
        compile: bool = False,
    ) -> torch.Tensor:
        """Integrate ``dx/dτ = v_θ`` from τ = 1 (``x = noise``) to τ = 0 in `num_steps` Euler steps (no grad).

        The same flow as calling `velocity` at τ = 1, 1 − 1/n, … (outputs agree to float rounding), with
        everything that does not depend on ``x_τ`` or τ done once per chunk (`ChunkFlow`).

        Args:
            state: (B, max_state_dim) zero-padded state.
            noise: (B, H, max_action_dim) the starting point x_1.
            prefix: the VLM's keys/values of the prefix (`PoseVLA.encode_prefix`).
            num_steps: Euler steps (>= 1).
            compile: run each step through ``torch.compile`` (inductor; opt-in: the first call per shape,
                dtype and autocast state compiles for seconds, later ones reuse it; `posevla bench latency`
                measures whether it pays).

        Returns:
            (B, H, max_action_dim) x_0, in the dtype of ``noise + dt·v`` (noise's, for fp32 noise).
        """
        taus, dt = euler_schedule(num_steps, device=noise.device)  # (steps,)
        flow = ChunkFlow(self, state, prefix, noise.shape[1], taus)
        step = _compiled_velocity() if compile else ChunkFlow._velocity
        x = noise
        for k in range(num_steps):
            x = x + dt * step(flow, x, flow.time_bias[k], False)  # (B, H, A_max)
        return x


# -- fused sampling ------------------------------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm with the precomputed fp32 ``scale = 1 + weight`` (computed in fp32, cast back)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, scale.shape, scale, eps)
    return F.rms_norm(x.float(), scale.shape, scale, eps).type_as(x)


def _rotated_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a projection (heads·hd, ...) reordered so that ``x @ result.T = rotate_half(x @ w.T)``.

    RoPE is ``q·cos + rotate_half(q)·sin``; with these rows stacked under the projection, one matmul gives
    both q and rotate_half(q) (the same dot products, permuted and negated).
    """
    w3 = w.view(heads, -1, *w.shape[1:])  # (heads, hd, ...)
    half = w3.shape[1] // 2
    return torch.cat([-w3[:, half:], w3[:, :half]], 1).reshape(w.shape)  # (heads·hd, ...)


@dataclass
class _LayerWeights:
    """One expert layer's weights; q | rotate_half(q) | k | rotate_half(k) | v stacked into one projection.

    The stacking copies the attention projections once per chunk (gate and up stay apart: fusing them saved
    nothing measurable and would copy the largest matrices).
    """

    ln_in: torch.Tensor  # (D,) fp32, 1 + input_layernorm.weight
    w_qkv: torch.Tensor  # ((2·heads + 3·kv_heads)·hd, D): q, rotate_half(q), k, rotate_half(k), v
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # (D, heads·hd)
    b_o: torch.Tensor | None
    ln_post: torch.Tensor  # (D,) fp32, 1 + post_attention_layernorm.weight
    w_gate: torch.Tensor  # (mlp, D)
    w_up: torch.Tensor  # (mlp, D)
    w_down: torch.Tensor  # (D, mlp)
    act: Any  # the MLP activation (transformers' function, unwrapped from its module when it has one)

    @classmethod
    def of(cls, layer: nn.Module, heads: int, kv_heads: int) -> _LayerWeights:
        att, mlp = layer.self_attn, layer.mlp

        def stacked(get: Any) -> torch.Tensor:
            q, k, v = get(att.q_proj), get(att.k_proj), get(att.v_proj)
            return torch.cat([q, _rotated_rows(q, heads), k, _rotated_rows(k, kv_heads), v], 0)

        return cls(
            ln_in=1.0 + layer.input_layernorm.weight.float(),
            w_qkv=stacked(lambda p: p.weight),
            b_qkv=None if att.q_proj.bias is None else stacked(lambda p: p.bias),
            w_o=att.o_proj.weight,
            b_o=att.o_proj.bias,
            ln_post=1.0 + layer.post_attention_layernorm.weight.float(),
            w_gate=mlp.gate_proj.weight,
            w_up=mlp.up_proj.weight,
            w_down=mlp.down_proj.weight,
            act=getattr(mlp.act_fn, "act", mlp.act_fn),
        )


class ChunkFlow:
    """One action chunk's flow with everything independent of ``x_τ`` and τ computed once (inference only).

    What `GemmaActionExpert.velocity` recomputes at every Euler step and this does once per chunk:

    * the **state token**: it attends to the prefix and itself only (`joint_attention_mask`), so its hidden
      states, and its keys/values at every layer, do not depend on the actions or on τ. They are computed here
      and appended to the prefix; each step then runs the H action tokens alone;
    * a **static key/value buffer** per layer, ``[prefix | state | H actions]``, filled once with the prefix
      and the state; each step writes its action keys/values into the tail in place (no concatenation);
      prefix columns that are padding in every sample are dropped, and the mask disappears when no padding is
      left (one sample, or no padding);
    * RoPE cos/sin of the action positions, the attention mask, the time half of ``action_time_mlp_in``
      (``W_τ·sincos(τ_k) + b`` for every step k) and one stacked q | k | v projection that also yields
      rotate_half(q) and rotate_half(k), so RoPE costs two multiplies and an add.

    The layers are Gemma's (transformers' `GemmaDecoderLayer`) written out with the same weights, norms and
    activation, so the velocity agrees with `GemmaActionExpert.velocity` to float rounding. Gradients reach
    ``x_τ`` only (guidance such as RTC); for gradients to the weights use `GemmaActionExpert.velocity`.

    Args:
        expert: the action expert whose weights are used (read at construction).
        state: (B, max_state_dim) zero-padded state.
        prefix: the VLM's prefix keys/values.
        horizon: H, the number of action tokens.
        taus: (steps,) flow time of each step (`posevla.models.flow_matching.euler_schedule`).
    """

    @torch.no_grad()
    def __init__(
        self,
        expert: GemmaActionExpert,
        state: torch.Tensor,
        prefix: PrefixKV,
        horizon: int,
        taus: torch.Tensor,
    ) -> None:
        cfg = expert.cfg
        B = state.shape[0]
        if state.shape != (B, cfg.max_state_dim):
            raise DataError(
                f"state of shape {tuple(state.shape)}, expected ({B}, {cfg.max_state_dim}) (zero-padded)"
            )
        if taus.ndim != 1:
            raise DataError(f"flow times of shape {tuple(taus.shape)}, expected (steps,)")
        expert.check_prefix(prefix, B)
        self.expert, self.cfg, self.B, self.H = expert, cfg, B, int(horizon)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = cfg.head_dim**-0.5
        self.eager = expert.gemma_config._attn_implementation == "eager"
        self.layers = [_LayerWeights.of(layer, cfg.heads, cfg.kv_heads) for layer in expert.layers]
        self.final_norm = 1.0 + expert.norm.weight.float()  # (D,)
        nq, nk = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.qkv_split = [nq, nq, nk, nk, nk]
        dtype, device = expert.dtype, state.device
        D = cfg.hidden

        # time: the τ half of action_time_mlp_in, for every step (the action half stays per step)
        w_in = expert.action_time_mlp_in.weight  # (D, 2D): [action | time] input columns
        self.w_act_in = w_in[:, :D]  # (D, D)
        temb = sinusoidal_time_embedding(taus.to(device), D, cfg.min_period, cfg.max_period)  # (steps, D)
        self.time_bias = F.linear(temb.to(dtype), w_in[:, D:], expert.action_time_mlp_in.bias)  # (steps, D)

        # the prefix: drop columns that are padding in every sample; no mask when none is left
        pad = prefix.pad_mask.to(device=device, dtype=torch.bool)  # (B, P)
        n_valid = pad.long().sum(-1, keepdim=True)  # (B, 1)
        keep = pad.any(0)  # (P,)
        compact = not bool(keep.all())
        pad = pad[:, keep] if compact else pad  # (B, P')
        P = pad.shape[1]
        L = P + 1 + self.H
        self.P, self.L = P, L
        if bool(pad.all()):
            self.mask: torch.Tensor | None = None
        else:
            ones = torch.ones(B, 1 + self.H, dtype=torch.bool, device=device)
            self.mask = torch.cat([pad, ones], 1)[:, None, None, :]  # (B, 1, 1, L) keys each query may see

        # RoPE: positions continue after the prefix's real tokens (state n_valid, actions n_valid + 1 …)
        positions = n_valid + torch.arange(1 + self.H, device=device)[None]  # (B, 1+H)
        probe = torch.empty(0, dtype=dtype, device=device)
        cos, sin = expert.rotary_emb(probe, positions)  # (B, 1+H, hd) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1+H, hd)
        self.cos, self.sin = cos[:, :, 1:], sin[:, :, 1:]  # (B, 1, H, hd) action tokens

        # the state token through every layer; its keys/values join the prefix in the static buffers
        h = expert.state_proj(state.to(dtype))[:, None]  # (B, 1, D)
        self.k_buf: list[torch.Tensor] = []
        self.v_buf: list[torch.Tensor] = []
        state_mask = None if self.mask is None else self.mask[..., : P + 1]  # (B, 1, 1, P+1)
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(lw, h, cos[:, :, :1], sin[:, :, :1])  # (B, heads|kv, 1, hd)
            pk, pv = prefix.kv[i]
            if compact:
                pk, pv = pk[:, :, keep], pv[:, :, keep]  # (B, kv, P', hd)
            kb = torch.empty(B, cfg.kv_heads, L, cfg.head_dim, dtype=k.dtype, device=device)  # (B, kv, L, hd)
            vb = torch.empty_like(kb)
            kb[:, :, :P], vb[:, :, :P] = pk, pv
            kb[:, :, P : P + 1], vb[:, :, P : P + 1] = k, v
            self.k_buf.append(kb)
            self.v_buf.append(vb)
            if i + 1 < len(self.layers):  # the last layer's state output is never read
                h = self._attend_mlp(lw, h, q, kb[:, :, : P + 1], vb[:, :, : P + 1], state_mask)

    # -- one layer -------------------------------------------------------------------------------------------
    def _qkv(
        self, lw: _LayerWeights, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, projected, rotated queries (B, heads, S, hd) and keys / values (B, kv, S, hd)."""
        cfg = self.cfg
        B, S, _ = h.shape
        x = _rms_norm(h, lw.ln_in, self.eps)  # (B, S, D)
        qkv = F.linear(x, lw.w_qkv, lw.b_qkv)  # (B, S, (2 heads + 3 kv)·hd)
        q, qr, k, kr, v = qkv.split(self.qkv_split, -1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, S, -1, cfg.head_dim).transpose(1, 2)  # (B, heads|kv, S, hd)

        q = heads(q) * cos + heads(qr) * sin  # RoPE: q·cos + rotate_half(q)·sin
        k = heads(k) * cos + heads(kr) * sin
        return q, k, heads(v)

    def _attend_mlp(
        self,
        lw: _LayerWeights,
        h: torch.Tensor,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The rest of a Gemma layer: attention over `keys`/`values` (B, kv, K, hd), o_proj, residual, MLP."""
        cfg = self.cfg
        B, S, _ = h.shape
        groups = cfg.heads // cfg.kv_heads
        if self.eager:  # transformers' eager attention: fp32 softmax over masked scores
            keys = keys.repeat_interleave(groups, dim=1) if groups > 1 else keys  # (B, heads, K, hd)
            values = values.repeat_interleave(groups, dim=1) if groups > 1 else values
            scores = torch.matmul(q, keys.transpose(2, 3)) * self.scale  # (B, heads, S, K)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            o = torch.matmul(probs, values)  # (B, heads, S, hd)
        else:
            o = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=groups > 1
            )  # (B, heads, S, hd)
        o = o.transpose(1, 2).reshape(B, S, cfg.heads * cfg.head_dim)  # (B, S, heads·hd)
        h = h + F.linear(o, lw.w_o, lw.b_o)  # (B, S, D)
        x = _rms_norm(h, lw.ln_post, self.eps)  # (B, S, D)
        gate = lw.act(F.linear(x, lw.w_gate))  # (B, S, mlp)
        return h + F.linear(gate * F.linear(x, lw.w_up), lw.w_down)  # (B, S, D)

    # -- per step --------------------------------------------------------------------------------------------
    def velocity(self, noisy_actions: torch.Tensor, step: int) -> torch.Tensor:
        """v_θ (B, H, max_action_dim) at ``x_τ = noisy_actions`` (B, H, max_action_dim), τ = ``taus[step]``.

        Differentiable with respect to `noisy_actions` when it requires grad (the weights, the state and the
        prefix are constants here; the action keys/values are then concatenated instead of written in place).
        """
        graph = torch.is_grad_enabled() and noisy_actions.requires_grad
        if noisy_actions.shape != (self.B, self.H, self.cfg.max_action_dim):
            raise DataError(
                f"noisy actions of shape {tuple(noisy_actions.shape)}, "
                f"expected ({self.B}, {self.H}, {self.cfg.max_action_dim})"
            )
        return self._velocity(noisy_actions, self.time_bias[step], graph)

    def _velocity(self, noisy_actions: torch.Tensor, time_bias: torch.Tensor, graph: bool) -> torch.Tensor:
        """`velocity` given the step's time term ``W_τ·sincos(τ) + b`` (D,): the unit `torch.compile` sees."""
        e, P = self.expert, self.P
        act = F.linear(noisy_actions.to(e.dtype), e.action_in_proj.weight, e.action_in_proj.bias)  # (B, H, D)
        h = F.linear(act, self.w_act_in) + time_bias  # (B, H, D) = action_time_mlp_in([act ; temb])
        out = e.action_time_mlp_out
        h = F.linear(F.silu(h), out.weight, out.bias)  # (B, H, D)
        for lw, kb, vb in zip(self.layers, self.k_buf, self.v_buf):
            q, k, v = self._qkv(lw, h, self.cos, self.sin)  # (B, heads|kv, H, hd)
            if graph:
                kb = torch.cat([kb[:, :, : P + 1], k], 2)  # (B, kv, L, hd)
                vb = torch.cat([vb[:, :, : P + 1], v], 2)
            else:
                kb[:, :, P + 1 :], vb[:, :, P + 1 :] = k, v
            h = self._attend_mlp(lw, h, q, kb, vb, self.mask)  # (B, H, D)
        head = e.action_out_proj
        return F.linear(_rms_norm(h, self.final_norm, self.eps), head.weight, head.bias)  # (B, H, A_max)


_COMPILED: Any = None


def _compiled_velocity() -> Any:
    """`ChunkFlow._velocity` through ``torch.compile`` (made once per process; static shapes)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(ChunkFlow._velocity, dynamic=False)
    return _COMPILED
