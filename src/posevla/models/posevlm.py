"""The Pose-VLM: `transformers.PaliGemmaForConditionalGeneration` + geometry priors + pose vocabulary.

What this module adds to PaliGemma (and nothing else; the VLM itself is transformers' code):

* **Vocabulary**: the pose tokens are added to the tokenizer and the embedding matrix is grown with
  ``resize_token_embeddings(..., mean_resizing=True)`` (new rows ≈ mean of the old rows); the LM head stays
  tied to the input embeddings. Scratch and pretrained models share this code path.
* **Priors** (spec §1.2): two `PatchEmbedMlp` (depth: 2 ch, ray: 3 ch) whose outputs are *added* to SigLIP's
  last hidden state before PaliGemma's multi-modal projector. A missing prior (``prior_mask`` 0 or the key
  absent) is a zero input map, exactly as the original replaces a dropped prior by zeros. In training, each
  prior is zeroed per sample with probability ``cfg.prior_dropout`` (jointly for all views of a sample).
  The image features then go through the usual projector; transformers 5.x applies PaliGemma's scaling
  implicitly (token embeddings are multiplied by √hidden inside Gemma's embedding layer, image features are
  not), so nothing else is needed.
* **Pose tags** (``cfg.pose_tags``, the ``tiny`` size only; not in the paper): the projected image features
  get the embeddings of the ``<image{k}>``/``<loc>``/``<transZ>``/``<transXY>`` tokens that name each image
  token's slot, place and seen surface (`posevla.models.pose_tags`), so a from-scratch model can learn to
  read poses off its images on a CPU budget. They need the run's bins (``build(..., bins=...)``).
* **Views**: ``pixel_values (B, V, 3, S, S)`` are encoded as B·V images; their features fill the
  ``<image>`` positions in order (sample 0 view 0 … view V−1, sample 1 …).
* **Attention** (prefix-LM): PaliGemma builds it from ``token_type_ids`` (0 = prefix: bidirectional,
  1 = answer: causal) with ``create_causal_mask(block_sequence_ids=...)`` whenever no KV cache is filled yet,
  in train *and* eval mode; pads are removed through ``attention_mask``. We therefore pass
  ``token_type_ids`` and let transformers build the mask (checked by perturbation tests).
* **Loss**: next-token cross-entropy on answer tokens only (``labels`` ≠ −100, shifted by one), computed
  in fp32 on the selected positions only (the LM head is applied to those rows, not to the whole sequence).
* **Generation**: greedy decoding with the KV cache and a per-sample grammar mask.

Batch keys (torch tensors): ``input_ids, attention_mask, token_type_ids, labels (B, L)``,
``pixel_values (B, V, 3, S, S)`` in [−1, 1], ``ray (B, V, 3, S, S)``, ``depth (B, V, 2, S, S)``,
``prior_mask (B, 2)`` with column 0 = depth present, column 1 = ray present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posevla.errors import ConfigError, DataError
from posevla.models.cpu_attention import install_cpu_bf16_attention
from posevla.models.config import ARCH_FIELDS, PoseVLMConfig, config_from_hf, to_hf_config
from posevla.models.paligemma_weights import load_paligemma_dir
from posevla.models.pose_tags import PoseTokenTags, ordinal_token_codes
from posevla.models.priors import PatchEmbedMlp
from posevla.models.text import IGNORE_INDEX, PoseTextTokenizer

__all__ = ["PoseVLM", "GenerationResult", "PRIOR_DEPTH", "PRIOR_RAY"]

#: Column of ``prior_mask`` / ``cfg.prior_dropout`` for each prior.
PRIOR_DEPTH, PRIOR_RAY = 0, 1


@dataclass
class GenerationResult:
    """Greedy output of one sample: generated ids (ending with EOS when it was produced) and, per id, the
    log-probability the model gave it under its *unconstrained* distribution (a confidence score)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False


def _grammar_done(grammar: Any, state: Any) -> bool:
    fn = getattr(grammar, "is_done", None) or grammar.done
    return bool(fn(state))


def _grammar_mask(grammar: Any, state: Any, vocab_size: int) -> np.ndarray:
    fn = getattr(grammar, "allowed_mask", None)
    if fn is not None:
        return np.asarray(fn(state, vocab_size), dtype=bool)
    mask = np.zeros(vocab_size, dtype=bool)
    mask[np.asarray(list(grammar.allowed(state)), dtype=np.int64)] = True
    return mask


class PoseVLM(nn.Module):
    """PaliGemma with pose tokens and additive geometry priors. Build with `PoseVLM.build`.

    Attributes:
        cfg: the architecture.
        hf: the wrapped `PaliGemmaForConditionalGeneration`.
        tokenizer: the `PoseTextTokenizer` (not a module; saved by the trainer next to the weights).
        depth_embed, ray_embed: the prior embedders (absent when ``cfg.use_priors`` is False).
    """

    def __init__(self, cfg: PoseVLMConfig, hf_model: nn.Module, tokenizer: PoseTextTokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf = hf_model
        self.tokenizer = tokenizer
        if cfg.use_priors:
            self.depth_embed = PatchEmbedMlp(2, cfg.patch_size, cfg.vision_hidden)
            self.ray_embed = PatchEmbedMlp(3, cfg.patch_size, cfg.vision_hidden)
            p = next(hf_model.parameters())
            self.depth_embed.to(device=p.device, dtype=p.dtype)
            self.ray_embed.to(device=p.device, dtype=p.dtype)
        if cfg.pose_tags:
            self.pose_tags = PoseTokenTags(cfg.text_hidden, cfg.patch_size, cfg.image_size)
            self.pose_tags.to(device=next(hf_model.parameters()).device)
        install_cpu_bf16_attention(self)  # CPU bf16 training: fp32 attention (`posevla.models.cpu_attention`)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        cfg: PoseVLMConfig,
        tokenizer: PoseTextTokenizer | None = None,
        pose_tokens: list[str] | None = None,
        *,
        dtype: torch.dtype | None = torch.float32,
        bins: Any = None,
    ) -> PoseVLM:
        """Build from `cfg`: random init (``cfg.base == "scratch"``) or a local PaliGemma directory.

        Args:
            cfg: architecture; for a directory its architecture fields must match the checkpoint's.
            tokenizer: defaults to the scratch BPE (scratch) or the directory's own tokenizer.
            pose_tokens: token strings to add (``PoseCodec(bins).vocabulary()``); those already present keep
                their ids. None adds nothing.
            dtype: parameter dtype when loading a directory (None = transformers' "auto").
            bins: the run's `BinSpec` (needed by ``cfg.pose_tags``; see `set_pose_bins`).

        A posevla checkpoint is rebuilt by `posevla.models.factory` instead (a skeleton of the saved size).
        """
        from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

        if cfg.is_scratch:
            tokenizer = tokenizer if tokenizer is not None else PoseTextTokenizer.build_scratch()
            hf_cfg = to_hf_config(
                cfg,
                vocab_size=tokenizer.vocab_size,
                image_token_id=tokenizer.image_token_id,
                pad_id=tokenizer.pad_id,
                bos_id=tokenizer.bos_id,
                eos_id=tokenizer.eos_id,
            )
            hf = PaliGemmaForConditionalGeneration(hf_cfg)
        else:
            base = Path(cfg.base)
            if not (base / "config.json").is_file():
                raise ConfigError(
                    f"cfg.base={cfg.base!r} is neither 'scratch' nor a directory with config.json "
                    "(a PaliGemma checkpoint such as paligemma-3b-pt-224)"
                )
            got = config_from_hf(PaliGemmaConfig.from_pretrained(str(base)))  # checked before reading weights
            pairs = {k: (getattr(cfg, k), getattr(got, k)) for k in ARCH_FIELDS}
            bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
            if bad:
                raise ConfigError(
                    f"cfg does not match the checkpoint in {base}: {{field: (cfg, checkpoint)}} = {bad}; use "
                    "PoseVLM.from_hf_dir(dir) or config_from_hf(...) to take the architecture from the "
                    "checkpoint"
                )
            hf = load_paligemma_dir(base, dtype=dtype, attn_implementation=cfg.attn_implementation)
            tokenizer = tokenizer if tokenizer is not None else PoseTextTokenizer.load(base)
            if tokenizer.image_token_id != hf.config.image_token_id:
                raise ConfigError(
                    f"tokenizer's <image> id {tokenizer.image_token_id} != checkpoint image_token_id "
                    f"{hf.config.image_token_id} in {base}"
                )
        model = cls(cfg, hf, tokenizer)
        if pose_tokens:
            model.extend_vocabulary(pose_tokens)
        if bins is not None:
            model.set_pose_bins(bins)
        return model

    def set_pose_bins(self, bins: Any) -> None:
        """Tell the pose tags (``cfg.pose_tags``) the run's bin layout (`posevla.tokens.BinSpec`); no-op without tags."""
        if self.cfg.pose_tags:
            self.pose_tags.set_bins(bins.n_loc, bins.edges("trans_xy"), bins.edges("trans_z"))

    @classmethod
    def from_hf_dir(
        cls,
        directory: str | os.PathLike,
        cfg: PoseVLMConfig | None = None,
        pose_tokens: list[str] | None = None,
        *,
        dtype: torch.dtype | None = torch.float32,
        bins: Any = None,
    ) -> PoseVLM:
        """Load a ``paligemma-3b-pt-224``-format directory (config.json + safetensors + tokenizer files).

        The architecture comes from the checkpoint; the Pose-VLA fields (views, prompt length, priors,
        dropout) from `cfg` when given.
        """
        from transformers import PaliGemmaConfig

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{directory} has no config.json; expected a PaliGemma checkpoint directory")
        hf_cfg = PaliGemmaConfig.from_pretrained(str(directory))
        keep = {}
        if cfg is not None:
            keep = {k: v for k, v in cfg.to_dict().items() if k not in ARCH_FIELDS}
        keep["base"] = str(directory)
        keep.setdefault("name", directory.name)
        return cls.build(config_from_hf(hf_cfg, **keep), None, pose_tokens, dtype=dtype, bins=bins)

    @torch.no_grad()
    def extend_vocabulary(self, pose_tokens: list[str]) -> list[int]:
        """Add missing pose tokens to the tokenizer and grow the (tied) embedding matrix; return new ids.

        New rows are mean-initialised (HF ``mean_resizing``: a draw from N(mean, 1e-9·cov) of the old rows).
        Ids that land on rows the checkpoint already had but its tokenizer did not use (PaliGemma pads its
        matrix to 257,216 rows) are set to the same mean, so every new token starts alike.
        """
        emb = self.hf.get_input_embeddings()
        n_rows = emb.weight.shape[0]
        first_new = self.tokenizer.vocab_size
        new_ids = self.tokenizer.add_pose_tokens(pose_tokens)
        if not new_ids:
            return []
        old_mean = emb.weight[: min(first_new, n_rows)].float().mean(0)
        if self.tokenizer.vocab_size > n_rows:
            self.hf.resize_token_embeddings(self.tokenizer.vocab_size, mean_resizing=True)
        emb = self.hf.get_input_embeddings()
        reused = [i for i in new_ids if i < n_rows]
        if reused:
            emb.weight[torch.as_tensor(reused, device=emb.weight.device)] = old_mean.to(emb.weight.dtype)
        if self.cfg.pose_token_init == "ordinal" and self.cfg.is_scratch:
            self._ordinal_init(emb.weight, set(new_ids), float(emb.weight[:first_new].float().norm(dim=1).mean()))
        self.hf.tie_weights()
        if self.hf.lm_head.weight.data_ptr() != emb.weight.data_ptr():
            raise ConfigError("the LM head is not tied to the input embeddings after the resize")
        return new_ids

    def _ordinal_init(self, weight: torch.Tensor, new_ids: set[int], norm: float) -> None:
        """Smooth codes (`ordinal_token_codes`) for the newly added rows of each value family."""
        for fam, ids in enumerate(self._family_bins(weight.device)):
            fresh = [i for i, t in enumerate(ids.tolist()) if t in new_ids]
            if not fresh:
                continue
            circular = self._FAMILY_PREFIXES[fam] == "<rot"
            codes = ordinal_token_codes(len(ids), weight.shape[1], norm, circular=circular, seed=fam)
            sel = torch.as_tensor(fresh, dtype=torch.long)
            weight[ids[sel]] = codes[sel].to(device=weight.device, dtype=weight.dtype)

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix (= logits width; may exceed the tokenizer's length)."""
        return int(self.hf.get_input_embeddings().weight.shape[0])

    @property
    def prefix_len(self) -> int:
        return self.cfg.prefix_len

    # -- vision + priors ---------------------------------------------------------------------------
    def _prior_keep(
        self, prior_mask: torch.Tensor | None, batch: int, device: torch.device, draw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 2) float: 1 where the prior is used, after modality dropout in training.

        `draw` (B, 2) in [0, 1): the batch's uniform draws (``prior_draw``, a function of seed, step and row
        that the training loaders add, so any world size drops the same priors); None = torch's global RNG.
        """
        keep = torch.ones(batch, 2, device=device) if prior_mask is None else prior_mask.to(device).float()
        if self.training:
            p = torch.tensor(self.cfg.prior_dropout, device=device)
            u = torch.rand(batch, 2, device=device) if draw is None else draw.to(device=device, dtype=torch.float32)
            keep = keep * (u >= p).float()
        return keep

    def _embed_prior(
        self, embed: PatchEmbedMlp, x: torch.Tensor | None, keep: torch.Tensor, B: int, V: int, S: int
    ) -> torch.Tensor:
        """(B·V, N, Dv) embedding of a prior; absent/dropped priors are embedded zero maps."""
        if x is None:
            zero = embed(torch.zeros(1, embed.in_ch, S, S, device=keep.device))
            return zero.expand(B * V, -1, -1)
        if x.shape[:3] != (B, V, embed.in_ch):
            raise DataError(f"prior of shape {tuple(x.shape)}, expected ({B}, {V}, {embed.in_ch}, {S}, {S})")
        x = x * keep.to(x.dtype).view(B, 1, 1, 1, 1)
        return embed(x.flatten(0, 1))

    def image_features(
        self,
        pixel_values: torch.Tensor,
        ray: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        prior_mask: torch.Tensor | None = None,
        prior_draw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V, 3, S, S) images (+ priors) → (B·V, tokens_per_view, text_hidden) projected features.

        ``prior_draw`` (B, 2): the uniform draws of the priors' modality dropout in training (`_prior_keep`)."""
        if pixel_values.ndim != 5:
            raise DataError(f"pixel_values must be (B, V, 3, S, S), got {tuple(pixel_values.shape)}")
        B, V, _, S, _ = pixel_values.shape
        vision = self.hf.model.vision_tower
        feats = vision(pixel_values=pixel_values.flatten(0, 1)).last_hidden_state  # (B·V, N, Dv)
        keep = self._prior_keep(prior_mask, B, feats.device, prior_draw)  # (B, 2)
        if self.cfg.use_priors:
            d = self._embed_prior(self.depth_embed, depth, keep[:, PRIOR_DEPTH], B, V, S)
            r = self._embed_prior(self.ray_embed, ray, keep[:, PRIOR_RAY], B, V, S)
            feats = feats + d.to(feats.dtype) + r.to(feats.dtype)
        out = self.hf.model.multi_modal_projector(feats)  # (B·V, N, D)
        if self.cfg.pose_tags:
            tags = self.pose_tags(
                self.hf.get_input_embeddings().weight,
                self._family_bins(out.device),
                self._view_ids(V, out.device),
                B * V,
                ray.flatten(0, 1) if ray is not None and self.cfg.use_priors else None,
                depth.flatten(0, 1) if depth is not None and self.cfg.use_priors else None,
                keep.repeat_interleave(V, dim=0),  # (B·V, 2)
            )
            out = out + tags.to(out.dtype)
        return out

    # -- language model ----------------------------------------------------------------------------
    def _lm(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        image_feats: torch.Tensor | None,
        cache: Any = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
    ):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        mm = None
        if image_feats is not None:
            n_img = int((input_ids == self.tokenizer.image_token_id).sum())
            if n_img != image_feats.shape[0] * image_feats.shape[1]:
                raise DataError(
                    f"{n_img} <image> tokens in input_ids but {image_feats.shape[0]}×{image_feats.shape[1]} "
                    "image features; every sample needs num_views × tokens_per_view <image> tokens",
                    field="input_ids",
                )
            mm = {"image": BaseModelOutputWithPooling(pooler_output=image_feats)}
        return self.hf.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            mm_encoder_outputs=mm,
            cache=cache,
            use_cache=use_cache,
            position_ids=position_ids,
        )

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.hf.lm_head(hidden).float()
        cap = getattr(self.hf.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _features_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_features(
            batch["pixel_values"], batch.get("ray"), batch.get("depth"), batch.get("prior_mask"),
            batch.get("prior_draw"),
        )

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states (B, L, D) of the language model for a batch."""
        out = self._lm(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            self._features_from_batch(batch),
        )
        return out.last_hidden_state

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full fp32 logits (B, L, vocab); position t predicts token t+1. For tests and analysis."""
        return self._head(self.hidden_states(batch))

    def compute_loss(self, batch: dict[str, torch.Tensor], *, ordinal_sigma: float = 0.0) -> dict[str, torch.Tensor]:
        """``dict(loss, n_tokens, token_acc, token_loss, token_correct, token_row)``: mean fp32 CE over answer
        tokens (labels ≠ −100), plus per answer token (N,) its detached loss, whether the argmax was right,
        and its batch row (so callers can average per sample group without a second forward pass).

        Args:
            ordinal_sigma: 0 = plain next-token cross-entropy (the paper). > 0 = for targets in an ordinal
                pose-token family (loc / transXY / transZ / size / rot), the target distribution is a Gaussian
                over that family's bins centred on the true bin with this std (in bins), so a prediction
                one bin off is penalised less than one far off. Speeds up learning of the value tokens for
                small models trained from scratch; the argmax target is unchanged.
        """
        hidden = self.hidden_states(batch)
        targets = batch["labels"][:, 1:].to(hidden.device)
        sel = targets != IGNORE_INDEX
        n = sel.sum()
        if int(n) == 0:
            raise DataError("batch has no answer tokens (all labels are -100)", field="labels")
        logits = self._head(hidden[:, :-1][sel])  # (N, vocab) fp32
        tgt = targets[sel]
        if ordinal_sigma > 0:
            per_token = self._ordinal_cross_entropy(logits, tgt, ordinal_sigma)  # (N,)
            loss = per_token.mean()
        else:
            loss = F.cross_entropy(logits, tgt)
            per_token = None
        with torch.no_grad():
            if per_token is None:
                per_token = F.cross_entropy(logits, tgt, reduction="none")  # (N,)
            correct = logits.argmax(-1) == tgt  # (N,)
            acc = correct.float().mean()
        return {
            "loss": loss,
            "n_tokens": n,
            "token_acc": acc,
            "token_loss": per_token.detach(),
            "token_correct": correct,
            "token_row": sel.nonzero()[:, 0],  # (N,) batch row of each answer token
        }

    def _family_bins(self, device: torch.device) -> list[torch.Tensor]:
        """Per ordinal family, the token ids ordered by bin index (cached)."""
        cache = getattr(self, "_family_bins_cache", None)
        if cache is None or cache[0] != self.tokenizer.vocab_size:
            fams: list[dict[int, int]] = [{} for _ in self._FAMILY_PREFIXES]
            for tok in self.tokenizer.pose_tokens:
                for g, prefix in enumerate(self._FAMILY_PREFIXES):
                    if tok.startswith(prefix) and tok[len(prefix) : -1].isdigit():
                        fams[g][int(tok[len(prefix) : -1])] = self.tokenizer.token_to_id(tok)
                        break
            ids = [torch.tensor([f[k] for k in sorted(f)], dtype=torch.long) for f in fams]
            cache = (self.tokenizer.vocab_size, ids)
            self._family_bins_cache = cache
        return [t.to(device) for t in cache[1]]

    def _ordinal_cross_entropy(self, logits: torch.Tensor, tgt: torch.Tensor, sigma: float) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)  # (N, V)
        per_token = -logp.gather(1, tgt[:, None])[:, 0]  # (N,) plain CE
        for ids in self._family_bins(logits.device):
            if ids.numel() == 0:
                continue
            rank = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=logits.device)
            rank[ids] = torch.arange(len(ids), device=logits.device)
            k = rank[tgt]  # (N,) bin index of the target, -1 outside this family
            rows = (k >= 0).nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            bins = torch.arange(len(ids), device=logits.device, dtype=torch.float32)
            q = torch.exp(-0.5 * ((bins[None] - k[rows, None].float()) / sigma) ** 2)  # (n, K)
            q = q / q.sum(-1, keepdim=True)
            per_token = per_token.index_put((rows,), -(q * logp[rows][:, ids]).sum(-1))
        return per_token  # (N,)

    def forward(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """:meth:`compute_loss` (the call DDP / FSDP wrappers hook)."""
        return self.compute_loss(batch, **kwargs)

    # -- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        batch_prefix: dict[str, torch.Tensor],
        grammars: list[Any | None],
        max_new_tokens: int,
        *,
        use_cache: bool = True,
        family_decisions: bool = True,
        median_values: bool = True,
    ) -> list[GenerationResult]:
        """Greedy decoding from equal-length prefixes, one grammar (or None = unconstrained) per sample.

        The prefix is encoded once and each new token is fed with the KV cache (``use_cache=False`` re-runs
        the whole sequence every step; same ids, for testing). At each step the sample's grammar mask
        (`allowed_mask`) is applied to the logits before the argmax. A sample stops at EOS or when its grammar
        is done; finished samples are fed PAD (ignored). Runs in eval mode (no prior dropout).

        With ``family_decisions`` (default) a step first picks the *kind* of token by total probability, then
        the most likely token of that kind: the choice "another object (a ``<loc…>`` token, any of 1024)"
        versus ``<no_object>`` or ``</image i>`` compares the summed mass of the whole loc family with the
        single structural token. Plain per-token greedy would almost always stop early, because the mass of
        "there is an object" is spread over many loc bins while "no object" is one token.
        With ``median_values`` (default) a value token of a linear family (loc, transXY, transZ, size) is the
        median bin of the predicted distribution over that family instead of its mode: the L1-optimal point
        estimate, more robust than the mode when the distribution is broad or multi-peaked. Rotation bins
        wrap around at ±π, so they keep the mode.
        """
        input_ids = batch_prefix["input_ids"]
        B, P = input_ids.shape
        if len(grammars) != B:
            raise DataError(f"{len(grammars)} grammars for a batch of {B}")
        tt = batch_prefix.get("token_type_ids")
        if tt is not None and bool((tt != 0).any()):
            raise DataError(
                "generate() takes prefix-only batches (token_type_ids all 0); build them with "
                "build_example(prompt, None, ...)",
                field="token_type_ids",
            )
        was_training = self.training
        self.eval()
        try:
            device = input_ids.device
            attn = batch_prefix.get("attention_mask")
            attn = torch.ones_like(input_ids) if attn is None else attn
            ttype = torch.zeros_like(input_ids)
            feats = self._features_from_batch(batch_prefix)
            eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
            states = [g.start() if g is not None else None for g in grammars]
            results = [GenerationResult() for _ in range(B)]
            done = [False] * B

            out = self._lm(input_ids, attn, ttype, feats, use_cache=use_cache)
            logits = self._head(out.last_hidden_state[:, -1])
            groups = self._token_groups(logits.shape[-1], device) if family_decisions else None
            cache = out.cache if use_cache else None
            seq, seq_attn, seq_type = input_ids, attn, ttype
            for _ in range(max_new_tokens):
                logp = torch.log_softmax(logits, dim=-1)
                V = logits.shape[-1]
                allowed = torch.ones(B, V, dtype=torch.bool)
                for i, g in enumerate(grammars):
                    if g is not None and not done[i]:
                        m = torch.from_numpy(_grammar_mask(g, states[i], V))
                        if not bool(m.any()):  # dead end: the grammar allows nothing; stop with EOS
                            m[eos] = True
                        allowed[i] = m
                masked = logits.masked_fill(~allowed.to(device), float("-inf"))
                if family_decisions:
                    masked = self._keep_best_family(masked, groups)
                nxt = masked.argmax(-1)
                if family_decisions and median_values:
                    nxt = self._median_in_family(masked, nxt, groups)
                for i in range(B):
                    if done[i]:
                        nxt[i] = pad
                        continue
                    tok = int(nxt[i])
                    results[i].ids.append(tok)
                    results[i].logprobs.append(float(logp[i, tok]))
                    if grammars[i] is not None:
                        states[i] = grammars[i].advance(states[i], tok)
                    if tok == eos or (grammars[i] is not None and _grammar_done(grammars[i], states[i])):
                        done[i] = True
                        results[i].finished = True
                if all(done):
                    break
                step = nxt.view(B, 1).to(device)
                ones = torch.ones(B, 1, dtype=seq_attn.dtype, device=device)
                seq_attn = torch.cat([seq_attn, ones], 1)
                if use_cache:
                    out = self._lm(step, seq_attn, None, None, cache=cache, use_cache=True)
                    cache = out.cache
                else:
                    seq = torch.cat([seq, step], 1)
                    seq_type = torch.cat([seq_type, torch.ones_like(step)], 1)
                    out = self._lm(seq, seq_attn, seq_type, feats)
                logits = self._head(out.last_hidden_state[:, -1])
            return results
        finally:
            self.train(was_training)

    generate_poses = generate  # docs/design.md name

    _FAMILY_PREFIXES = ("<loc", "<transXY", "<transZ", "<size", "<rot")

    def _view_ids(self, num_views: int, device: torch.device) -> torch.Tensor:
        """(V,) ids of the view delimiters ``<image0>`` … ``<image{V-1}>`` (cached)."""
        key = (self.tokenizer.vocab_size, num_views)
        cache = getattr(self, "_view_ids_cache", None)
        if cache is None or cache[0] != key:
            ids = [self.tokenizer.token_to_id(f"<image{k}>") for k in range(num_views)]
            cache = (key, torch.tensor(ids, dtype=torch.long))
            self._view_ids_cache = cache
        return cache[1].to(device)

    def _token_groups(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """(V,) group id per token: one group per pose-token family, every other token its own group."""
        groups = torch.arange(vocab_size, dtype=torch.long, device=device) + len(self._FAMILY_PREFIXES)
        for g, ids in enumerate(self._family_bins(device)):
            groups[ids] = g
        return groups

    _LINEAR_FAMILIES = (0, 1, 2, 3)  # loc, transXY, transZ, size (rot wraps around)

    def _median_in_family(self, masked_logits: torch.Tensor, nxt: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Replace each row's token of a linear value family by the median bin of that family."""
        out = nxt.clone()
        fams = self._family_bins(masked_logits.device)
        for g in self._LINEAR_FAMILIES:
            ids = fams[g]
            rows = (groups[nxt] == g).nonzero()[:, 0]
            if rows.numel() == 0 or ids.numel() == 0:
                continue
            p = torch.softmax(masked_logits[rows][:, ids].float(), dim=-1)  # (n, K) bins in order
            k = (p.cumsum(-1) < 0.5).sum(-1).clamp(max=ids.numel() - 1)  # first bin with cdf >= 0.5
            out[rows] = ids[k]
        return out

    @staticmethod
    def _keep_best_family(masked_logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Mask every token outside the group with the largest total probability (per row)."""
        probs = torch.softmax(masked_logits.float(), dim=-1)  # (B, V); disallowed tokens have 0
        mass = torch.zeros(probs.shape[0], int(groups.max()) + 1, device=probs.device)
        mass.scatter_add_(1, groups.expand_as(probs), probs)  # (B, n_groups)
        best = mass.argmax(-1, keepdim=True)  # (B, 1)
        return masked_logits.masked_fill(groups.unsqueeze(0) != best, float("-inf"))
