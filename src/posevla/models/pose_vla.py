"""The Pose-VLA policy: the Pose-VLM as prefix encoder + the flow-matching Gemma action expert (§1.4, §2.3).

`PoseVLA` couples a `PoseVLM` (prefix = 3 image slots (+ depth/ray priors) + prompt) with a
`GemmaActionExpert` whose layers attend into the VLM's per-layer keys/values:

* ``compute_loss(batch)``: one VLM pass over the prefix (with gradient, so the whole model trains, as in the
  paper's post-training), one expert pass over ``[state | x_τ]``, conditional flow-matching MSE.
* ``sample_actions(batch, state)``: the prefix keys/values are computed **once** and reused by every Euler
  step from τ = 1 to τ = 0; the steps run fused (`GemmaActionExpert.sample`: the state token, the masks,
  positions and time terms once per chunk, a static key/value buffer). ``reuse_prefix=False`` runs the plain
  loop of `GemmaActionExpert.velocity` calls with the prefix recomputed per step (same result, for testing).

Batch keys (torch tensors): the VLM prefix ``input_ids, attention_mask (B, P)`` (``token_type_ids`` if present
must be all 0: a policy prefix has no answer part), ``pixel_values (B, V, 3, S, S)``, optional ``ray, depth,
prior_mask`` (see `posevla.models.posevlm`); ``state (B, Ds)`` with Ds ≤ max_state_dim; for training
``actions (B, H, Da)`` with Da ≤ max_action_dim (unpadded: the loss averages over these Da dims) and optional
``action_is_pad (B, H)`` bool (True past the episode end).

The prefix uses RoPE positions ``cumsum(attention_mask) − 1`` (π0's convention) and a fully bidirectional mask
over its real tokens; device and dtype are those of the parameters (move the model with ``.to(...)``).

Training speed on CPUs: under bf16 autocast with gradients, every attention module of the policy runs
transformers' SDPA in fp32 (`posevla.models.cpu_attention`, set up by the constructor), because the CPU flash
kernel is several times slower in bf16; ``posevla bench train`` measures it against transformers' π0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from posevla.errors import ConfigError, DataError
from posevla.models.action_expert import GemmaActionExpert, PrefixKV
from posevla.models.config import ActionExpertConfig, PoseVLMConfig, check_expert_pairing
from posevla.models.flow_matching import (
    euler_schedule,
    flow_matching_loss,
    flow_matching_pair,
    pad_last_dim,
    sample_flow_time,
)
from posevla.models.cpu_attention import install_cpu_bf16_attention
from posevla.models.posevlm import PoseVLM
from posevla.models.text import PoseTextTokenizer

__all__ = ["PoseVLA"]


class PoseVLA(nn.Module):
    """Pose-VLM prefix encoder + flow-matching action expert. Build with `PoseVLA.build`.

    Attributes:
        vlm: the `PoseVLM` (its LM head is unused here; the tokenizer travels with it).
        expert: the `GemmaActionExpert`.
    """

    def __init__(self, vlm: PoseVLM, expert: GemmaActionExpert) -> None:
        super().__init__()
        check_expert_pairing(expert.cfg, vlm.cfg)
        self.vlm = vlm
        self.expert = expert
        install_cpu_bf16_attention(self)  # CPU bf16 training: fp32 attention (faster than SDPA's bf16 kernel)

    @classmethod
    def build(
        cls,
        vlm_cfg: PoseVLMConfig,
        expert_cfg: ActionExpertConfig,
        tokenizer: PoseTextTokenizer | None = None,
        pose_tokens: list[str] | None = None,
        *,
        dtype: torch.dtype | None = torch.float32,
        bins: Any = None,
    ) -> PoseVLA:
        """A policy from configs: the VLM via `PoseVLM.build` (scratch or a PaliGemma dir) + a fresh expert.

        The expert uses the VLM's attention backend and is created in torch's default dtype on the CPU; move
        the whole model with ``.to(device, dtype)``.
        """
        check_expert_pairing(expert_cfg, vlm_cfg)
        vlm = PoseVLM.build(vlm_cfg, tokenizer, pose_tokens, dtype=dtype, bins=bins)
        return cls(vlm, GemmaActionExpert(expert_cfg, vlm_cfg.attn_implementation))

    @property
    def cfg(self) -> ActionExpertConfig:
        return self.expert.cfg

    # -- prefix ----------------------------------------------------------------------------------------------
    def encode_prefix(self, batch: dict[str, torch.Tensor]) -> PrefixKV:
        """Run the VLM over the prefix once; return its per-layer keys/values and the real-token mask.

        The vision tower runs through `PoseVLM.image_features`, the language model is called directly with
        the prefix's key-padding mask (`_prefix_lm`; the keys/values of `PoseVLM._lm`). Columns that are
        padding in every sample (a right-padded prompt of one sample) are dropped first: nothing attends to
        them, so the real tokens' keys/values are unchanged (to float rounding) and the returned prefix is
        shorter than ``input_ids`` (P' ≤ P, with its own ``pad_mask``).
        """
        input_ids = batch["input_ids"]
        if input_ids.ndim != 2:
            raise DataError(f"input_ids must be (B, P), got {tuple(input_ids.shape)}", field="input_ids")
        attn = batch.get("attention_mask")
        attn = torch.ones_like(input_ids) if attn is None else attn
        tt = batch.get("token_type_ids")
        if tt is not None and bool((tt != 0).any()):
            raise DataError(
                "a policy prefix has no answer part but token_type_ids has non-zero entries",
                field="token_type_ids",
                fix="build the prompt with build_example(prompt, None, ...)",
            )
        feats = self.vlm.image_features(
            batch["pixel_values"], batch.get("ray"), batch.get("depth"), batch.get("prior_mask"),
            batch.get("prior_draw"),
        )  # (B·V, N, D_vlm)
        position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
        keep = attn.bool().any(0)  # (P,) columns that are padding in every sample carry nothing: drop them
        if not bool(keep.all()):
            input_ids, attn, position_ids = input_ids[:, keep], attn[:, keep], position_ids[:, keep]  # (B, P')
        out = self._prefix_lm(input_ids, attn, feats, position_ids)
        if out.cache is None:
            raise ConfigError(
                "the VLM returned no keys/values for the prefix; gradient checkpointing on the VLM disables "
                "its cache, which the action expert reads: turn it off "
                "(vlm.hf.gradient_checkpointing_disable())"
            )
        kv = tuple((layer.keys, layer.values) for layer in out.cache.layers)  # per layer (B, kv, P, hd)
        return PrefixKV(kv=kv, pad_mask=attn.bool())

    def _prefix_lm(
        self,
        input_ids: torch.Tensor,
        attn: torch.Tensor,
        feats: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> Any:
        """The Gemma language model over the prefix, called directly with its finished attention mask.

        The same computation as `PoseVLM._lm` with all-zero ``token_type_ids`` (text embeddings with the image
        features in the ``<image>`` slots, bidirectional attention between real tokens, padding never
        attended), minus PaliGemma's per-call mask construction: the mask of a prefix is just its key-padding
        mask, built here once as (B, 1, 1, P) and broadcast over the queries by the attention (no (B, 1, P, P)
        mask is materialised, by us or, per layer, by SDPA).
        """
        hf = self.vlm.hf
        image = input_ids == self.vlm.tokenizer.image_token_id  # (B, P)
        n_img = int(image.sum())
        if n_img != feats.shape[0] * feats.shape[1]:
            raise DataError(
                f"{n_img} <image> tokens in input_ids but {feats.shape[0]}×{feats.shape[1]} image features; "
                "every sample needs num_views × tokens_per_view <image> tokens",
                field="input_ids",
            )
        emb = hf.get_input_embeddings()(input_ids.masked_fill(image, 0))  # (B, P, D)
        emb = emb.masked_scatter(image[..., None], feats.to(emb.dtype))  # (B, P, D)
        keys = attn.bool()[:, None, None, :]  # (B, 1, 1, P) the keys every query may attend, broadcast over queries
        lm = hf.model.language_model
        mask: torch.Tensor = keys
        if lm.config._attn_implementation == "eager":  # eager adds its mask to the scores
            mask = torch.zeros(keys.shape, dtype=emb.dtype, device=emb.device)
            mask = mask.masked_fill(~keys, torch.finfo(emb.dtype).min)  # (B, 1, P, P)
        return lm(inputs_embeds=emb, attention_mask=mask, position_ids=position_ids, use_cache=True)

    # -- training --------------------------------------------------------------------------------------------
    def _state(self, state: torch.Tensor, batch_size: int) -> torch.Tensor:
        if state.ndim != 2 or state.shape[0] != batch_size:
            raise DataError(f"state must be (B={batch_size}, Ds), got {tuple(state.shape)}", field="state")
        return pad_last_dim(state, self.cfg.max_state_dim, "state")  # (B, Ds_max)

    def compute_loss(
        self,
        batch: dict[str, torch.Tensor],
        *,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``dict(loss, v_pred, target)``: conditional flow-matching MSE of one batch (loss fp32).

        Under bf16 autocast on a CPU, attention runs in fp32: SDPA's CPU flash kernel is several times slower
        in bf16, its backward most (`install_cpu_bf16_attention`, set up by ``__init__``).

        Args:
            batch: prefix keys + ``state``, ``actions`` and optional ``action_is_pad`` (module docstring).
            noise: (B, H, max_action_dim) ε; drawn from N(0, I) when None.
            time: (B,) flow time τ; drawn from the config's Beta schedule when None.
        """
        cfg = self.cfg
        actions = batch["actions"]
        if actions.ndim != 3 or actions.shape[1] != cfg.chunk_size:
            raise DataError(
                f"actions must be (B, H={cfg.chunk_size}, Da), got {tuple(actions.shape)}",
                field="actions",
                fix="make the loader's chunk length equal ActionExpertConfig.chunk_size",
            )
        B, _, action_dim = actions.shape
        state = self._state(batch["state"], B)
        dtype = self.expert.dtype
        a = pad_last_dim(actions, cfg.max_action_dim, "action").to(dtype)  # (B, H, A_max)
        if noise is None:
            noise = torch.randn_like(a)
        elif noise.shape != a.shape:
            raise DataError(f"noise of shape {tuple(noise.shape)}, expected {tuple(a.shape)}")
        if time is None:
            time = sample_flow_time(B, beta=cfg.time_beta, time_min=cfg.time_min, device=a.device)
        x_tau, target = flow_matching_pair(a, noise.to(dtype), time.to(a.device))  # (B, H, A_max) each
        prefix = self.encode_prefix(batch)
        v = self.expert.velocity(state, x_tau, time.to(a.device), prefix)  # (B, H, A_max)
        loss = flow_matching_loss(v, target, batch.get("action_is_pad"), action_dim)
        return {"loss": loss, "v_pred": v, "target": target}

    def forward(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.compute_loss(batch, **kwargs)

    # -- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        batch: dict[str, torch.Tensor],
        state: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        *,
        action_dim: int | None = None,
        reuse_prefix: bool = True,
        compile: bool = False,
    ) -> torch.Tensor:
        """Integrate the flow from τ = 1 (noise) to τ = 0 with `num_steps` Euler steps; returns (B, H, A).

        Args:
            batch: the prefix keys (module docstring); ``batch["state"]`` is used when `state` is None.
            state: (B, Ds) robot state (unpadded or padded).
            noise: (B, H, max_action_dim) starting point x_1; drawn from N(0, I) when None.
            num_steps: Euler steps (default ``cfg.num_inference_steps``).
            action_dim: keep only the first `action_dim` dims (default: all ``max_action_dim``).
            reuse_prefix: encode the prefix once and run the fused flow (True), or the plain loop with the
                prefix encoded before every step (False, a reference for tests).
            compile: ``torch.compile`` the fused flow's step (opt-in; `GemmaActionExpert.sample`).

        Runs in eval mode (no prior dropout) and restores the previous mode.
        """
        cfg = self.cfg
        steps = cfg.num_inference_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise DataError(f"num_steps must be >= 1, got {num_steps}")
        B = batch["input_ids"].shape[0]
        state = self._state(batch["state"] if state is None else state, B)
        dtype, device = self.expert.dtype, self.expert.action_in_proj.weight.device
        shape = (B, cfg.chunk_size, cfg.max_action_dim)
        if noise is None:
            noise = torch.randn(shape, device=device, dtype=dtype)
        elif tuple(noise.shape) != shape:
            raise DataError(f"noise of shape {tuple(noise.shape)}, expected {shape}")
        was_training = self.training
        switch = any(m.training for m in self.modules())  # eval() walks every module: only when needed
        if switch:
            self.eval()
        try:
            x = noise.to(device=device, dtype=dtype)  # (B, H, A_max) at τ = 1
            if reuse_prefix:  # the fused flow: prefix, state token, masks and time terms once per chunk
                prefix = self.encode_prefix(batch)
                x = self.expert.sample(state, x, prefix, steps, compile=compile)  # (B, H, A_max) at τ = 0
            else:  # the plain loop, the prefix re-encoded every step (a reference for tests)
                taus, dt = euler_schedule(steps, device=device)  # (steps,)
                for k in range(steps):
                    tau = taus[k].expand(B)  # (B,)
                    v = self.expert.velocity(state, x, tau, self.encode_prefix(batch))  # (B, H, A_max)
                    x = x + dt * v
        finally:
            if switch:
                self.train(was_training)
        return x if action_dim is None else x[..., :action_dim]
