"""Parameter counts of a Pose-VLM (+ action expert), per part: built on the meta device and from the config alone.

Two ways to count, which must agree (``tests/test_paper_configs.py`` checks every paper-size config):

* :func:`module_counts` builds the real module tree with the factory (`posevla.models.factory`) under
  ``torch.device("meta")``: every parameter has its shape and no storage, so even PaliGemma-3B + the 300M expert
  builds in about a second with no memory and no weights read. The factory's checkpoint-skeleton path is used
  (``embedding_rows`` = the final vocabulary), which grows no embedding matrix (mean-resizing needs values).
* :func:`analytic_counts` computes the same numbers from the config numbers (widths, layers, heads, vocabulary).

Parts (:class:`ParamCounts`): ``vision`` (SigLIP tower), ``projector`` (multi-modal projector), ``lm`` (Gemma:
the base vocabulary's embedding rows, tied to the LM head, the decoder layers and the final norm), ``priors``
(the depth and ray-map patch embedders), ``pose_rows`` (embedding rows added for the pose tokens), ``expert``
(the Gemma expert's layers and final norm) and ``expert_proj`` (its state / action / time projections).

The vocabulary: a scratch model's tokenizer is the built-in BPE (`SCRATCH_VOCAB_SIZE` ids) and every pose token
is new. A model from PaliGemma weights (``base`` not ``"scratch"``) has PaliGemma's tokenizer (Gemma's 256,000
ids, 1,024 ``<loc>``, 128 ``<seg>``, ``<image>``: 257,153 ids) and a 257,216-row embedding matrix: the ``<loc>``
tokens exist already, the first 63 new tokens land on the padding rows, the rest grow the matrix. Those
PaliGemma numbers are constants here (no tokenizer is read).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from posevla.models.config import ActionExpertConfig, PoseVLMConfig, check_expert_pairing
from posevla.models.text import SCRATCH_VOCAB_SIZE
from posevla.tokens import BinCounts, PoseCodec

__all__ = [
    "PALIGEMMA_EMBEDDING_ROWS",
    "PALIGEMMA_TOKENIZER_LEN",
    "PART_NAMES",
    "ParamCounts",
    "analytic_counts",
    "build_on_meta",
    "layer_params",
    "module_counts",
    "vocabulary_rows",
]

#: Ids of PaliGemma's tokenizer: Gemma's 256,000 + 1,024 ``<loc>`` + 128 ``<seg>`` + ``<image>`` (id 257,152).
PALIGEMMA_TOKENIZER_LEN = 257_153
#: Rows of paligemma-3b-pt-224's embedding matrix (the tokenizer padded to a multiple of 64).
PALIGEMMA_EMBEDDING_ROWS = 257_216
#: PaliGemma's ``<loc>`` tokens (``<loc0000>`` … ``<loc1023>``), already in its vocabulary.
PALIGEMMA_LOC_TOKENS = 1024

#: The parts of :class:`ParamCounts`, in table order, with their labels.
PART_NAMES: dict[str, str] = {
    "vision": "SigLIP vision tower",
    "projector": "multi-modal projector",
    "lm": "Gemma LM (base vocabulary)",
    "priors": "prior embedders (depth + ray)",
    "pose_rows": "pose-token embedding rows",
    "expert": "action expert (Gemma layers)",
    "expert_proj": "expert projections (state/action/time)",
}


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameters per part (see the module docstring); `embedding_rows` / `base_rows` say how the vocabulary
    splits between ``lm`` and ``pose_rows``."""

    vision: int
    projector: int
    lm: int
    priors: int
    pose_rows: int
    expert: int = 0
    expert_proj: int = 0
    embedding_rows: int = 0
    """Rows of the (tied) embedding matrix of the model."""
    base_rows: int = 0
    """Of those, the rows of the base vocabulary (the PaliGemma checkpoint's matrix, or the scratch BPE's)."""

    def parts(self) -> dict[str, int]:
        """``{part: parameters}`` in `PART_NAMES` order."""
        return {k: int(getattr(self, k)) for k in PART_NAMES}

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    @property
    def vlm(self) -> int:
        """The Pose-VLM: everything but the action expert."""
        return self.total - self.expert - self.expert_proj

    @property
    def base_vlm(self) -> int:
        """The VLM the weights come from (SigLIP + projector + Gemma with its own vocabulary)."""
        return self.vision + self.projector + self.lm

    def table(self, title: str = "") -> str:
        """A markdown table: part, parameters, millions, share of the total."""
        total = self.total
        lines = ([f"**{title}**", ""] if title else []) + ["| part | parameters | M | share |", "|---|---:|---:|---:|"]
        for k, n in self.parts().items():
            if n:
                lines.append(f"| {PART_NAMES[k]} | {n:,} | {n / 1e6:,.1f} | {100 * n / total:.1f} % |")
        lines.append(f"| **total** | **{total:,}** | **{total / 1e6:,.1f}** | 100 % |")
        return "\n".join(lines)


# -- the vocabulary ----------------------------------------------------------------------------------------


def _pose_tokens(bins: BinCounts) -> list[str]:
    """The pose-token strings of a model with these token counts (the factory adds exactly these)."""
    return PoseCodec(bins.uniform()).vocabulary()


def vocabulary_rows(cfg: PoseVLMConfig, bins: BinCounts) -> tuple[int, int, int]:
    """``(tokenizer_len, base_rows, embedding_rows)`` of a new model of `cfg` with the pose tokens of `bins`.

    ``tokenizer_len`` is the tokenizer's length after the pose tokens are added; ``base_rows`` the rows of the
    embedding matrix before they are (the base vocabulary); ``embedding_rows`` after.
    """
    n_pose = len(_pose_tokens(bins))
    if cfg.is_scratch:
        length = SCRATCH_VOCAB_SIZE + n_pose  # none of the pose tokens is in the scratch BPE
        return length, SCRATCH_VOCAB_SIZE, length
    present = min(bins.loc, PALIGEMMA_LOC_TOKENS)  # <loc0000>… up to <loc1023> exist already
    length = PALIGEMMA_TOKENIZER_LEN + n_pose - present
    return length, PALIGEMMA_EMBEDDING_ROWS, max(length, PALIGEMMA_EMBEDDING_ROWS)


# -- analytic ----------------------------------------------------------------------------------------------


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _gemma_layer(hidden: int, heads: int, kv_heads: int, head_dim: int, mlp: int) -> int:
    """One Gemma decoder layer: q/k/v/o (no biases), gate/up/down MLP, two RMSNorms."""
    attn = _linear(hidden, heads * head_dim, False) + 2 * _linear(hidden, kv_heads * head_dim, False)
    attn += _linear(heads * head_dim, hidden, False)
    return attn + 3 * hidden * mlp + 2 * hidden


def _patch_embed_mlp(in_ch: int, patch: int, out_dim: int, mult: int = 4) -> int:
    """`posevla.models.priors.PatchEmbedMlp`: Linear(C·p², 4D) → GELU → Linear(4D, D) → LayerNorm(D)."""
    return _linear(in_ch * patch * patch, mult * out_dim) + _linear(mult * out_dim, out_dim) + 2 * out_dim


def analytic_counts(cfg: PoseVLMConfig, expert: ActionExpertConfig | None = None,
                    bins: BinCounts | None = None) -> ParamCounts:
    """Parameters per part from the config numbers alone (the module tree is not built); `bins`: the pose-token
    counts (default: the paper's)."""
    bins = BinCounts() if bins is None else bins
    v, d = cfg.vision_hidden, cfg.text_hidden
    layers = layer_params(cfg, expert)
    vision = (
        3 * cfg.patch_size**2 * v + v  # patch embedding: Conv2d(3, v, p, stride=p) with bias
        + cfg.tokens_per_view * v  # learned position embedding
        + cfg.vision_layers * layers["siglip"][0]  # 2 LayerNorms, q/k/v/o, fc1/fc2 (all with biases)
        + 2 * v  # post LayerNorm (no pooling head)
    )
    projector = _linear(v, cfg.projection_dim)
    _, base_rows, rows = vocabulary_rows(cfg, bins)
    lm = base_rows * d + cfg.text_layers * layers["gemma"][0] + d  # tied embedding / LM head, layers, final RMSNorm
    priors = _patch_embed_mlp(2, cfg.patch_size, v) + _patch_embed_mlp(3, cfg.patch_size, v) if cfg.use_priors else 0
    ex = ex_proj = 0
    if expert is not None:
        e = expert
        ex = e.layers * layers["expert"][0] + e.hidden
        ex_proj = (
            _linear(e.max_state_dim, e.hidden)  # state_proj
            + _linear(e.max_action_dim, e.hidden)  # action_in_proj
            + _linear(2 * e.hidden, e.hidden)  # action_time_mlp_in
            + _linear(e.hidden, e.hidden)  # action_time_mlp_out
            + _linear(e.hidden, e.max_action_dim)  # action_out_proj
        )
    return ParamCounts(vision=vision, projector=projector, lm=lm, priors=priors, pose_rows=(rows - base_rows) * d,
                       expert=ex, expert_proj=ex_proj, embedding_rows=rows, base_rows=base_rows)


def layer_params(cfg: PoseVLMConfig, expert: ActionExpertConfig | None = None) -> dict[str, tuple[int, int]]:
    """``{layer type: (parameters per layer, layers)}`` of the transformer layers (SigLIP, Gemma, expert): the
    units FSDP shards and activation checkpointing recomputes."""
    v = cfg.vision_hidden
    siglip = 4 * v + 4 * _linear(v, v) + _linear(v, cfg.vision_mlp) + _linear(cfg.vision_mlp, v)
    out = {
        "siglip": (siglip, cfg.vision_layers),
        "gemma": (_gemma_layer(cfg.text_hidden, cfg.text_heads, cfg.text_kv_heads, cfg.head_dim, cfg.text_mlp),
                  cfg.text_layers),
    }
    if expert is not None:
        e = expert
        out["expert"] = (_gemma_layer(e.hidden, e.heads, e.kv_heads, e.head_dim, e.mlp), e.layers)
    return out


# -- on the meta device ------------------------------------------------------------------------------------


class _IdsOnly:
    """The parts of a `PoseTextTokenizer` the factory's skeleton path reads, for a vocabulary of `length` ids that
    already holds every pose token (PaliGemma's tokenizer is not read to count parameters)."""

    def __init__(self, length: int) -> None:
        self.vocab_size = length
        self.pad_id, self.eos_id, self.bos_id = 0, 1, 2  # PaliGemma's
        self.image_token_id = PALIGEMMA_TOKENIZER_LEN - 1

    def add_pose_tokens(self, pose_tokens: Any) -> list[int]:
        return []  # present already


def build_on_meta(cfg: PoseVLMConfig, expert: ActionExpertConfig | None = None,
                  bins: BinCounts | None = None) -> nn.Module:
    """The `PoseVLM` (or, with `expert`, the `PoseVLA`) of `cfg` on the meta device: shapes, no storage.

    A scratch model gets the real scratch tokenizer with the pose tokens added; a model from PaliGemma weights a
    stand-in with PaliGemma's ids (`_IdsOnly`). ``cfg.base`` is not read. `bins`: default the paper's counts.
    """
    bins = BinCounts() if bins is None else bins
    from posevla.models.factory import build_policy, build_vlm
    from posevla.models.text import PoseTextTokenizer

    spec = bins.uniform()
    _, _, rows = vocabulary_rows(cfg, bins)
    if cfg.is_scratch:
        tok: Any = PoseTextTokenizer.build_scratch()
        tok.add_pose_tokens(PoseCodec(spec).vocabulary())
    else:
        tok = _IdsOnly(vocabulary_rows(cfg, bins)[0])
    if expert is not None:
        check_expert_pairing(expert, cfg)
    with torch.device("meta"):
        if expert is None:
            return build_vlm(cfg, spec, tok, embedding_rows=rows)
        return build_policy(cfg, expert, spec, tok, embedding_rows=rows)


def _count(module: nn.Module | None, seen: set[int]) -> int:
    """Parameters of `module` not counted before (tied weights once)."""
    if module is None:
        return 0
    n = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def module_counts(model: nn.Module, base_rows: int) -> ParamCounts:
    """Parameters per part of a built `PoseVLM` / `PoseVLA` (e.g. from :func:`build_on_meta`).

    Args:
        model: the model; its parameters may live on any device (meta included).
        base_rows: rows of the base vocabulary (:func:`vocabulary_rows`); the rest of the embedding matrix is
            ``pose_rows``.

    Raises:
        AssertionError: a parameter of the model belongs to no part (a part this module does not know).
    """
    vlm = getattr(model, "vlm", model)
    expert = getattr(model, "expert", None)
    hf = vlm.hf
    seen: set[int] = set()
    vision = _count(hf.model.vision_tower, seen)
    projector = _count(hf.model.multi_modal_projector, seen)
    emb = hf.get_input_embeddings().weight
    rows, width = emb.shape
    lm = _count(hf.model.language_model, seen) + _count(hf.lm_head, seen) - (rows - base_rows) * width
    priors = _count(getattr(vlm, "depth_embed", None), seen) + _count(getattr(vlm, "ray_embed", None), seen)
    ex = ex_proj = 0
    if expert is not None:
        ex = _count(expert.layers, seen) + _count(expert.norm, seen)
        ex_proj = _count(expert, seen)  # what remains of it: the projections
    left = _count(model, seen)
    assert left == 0, f"{left} parameters of {type(model).__name__} belong to no part; extend module_counts"
    return ParamCounts(vision=vision, projector=projector, lm=lm, priors=priors, pose_rows=(rows - base_rows) * width,
                       expert=ex, expert_proj=ex_proj, embedding_rows=int(rows), base_rows=base_rows)
