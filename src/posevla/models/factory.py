"""Build a model from model configs: the Pose-VLM, or the Pose-VLM + action expert (no training types here).

Both builders take architecture configs (`PoseVLMConfig`, `ActionExpertConfig`), the pose-token bins (they
fix the pose vocabulary and, with pose tags, the tags' bin layout) and optionally a tokenizer:

* a **new** model (``embedding_rows=None``): random init (``cfg.base == "scratch"``) or a local PaliGemma
  directory, with the pose tokens added to the vocabulary (`PoseVLM.build`);
* a **skeleton** for checkpoint weights (``embedding_rows`` = the saved embedding matrix's row count, and the
  checkpoint's tokenizer): the same architecture, randomly initialised, without reading ``cfg.base``, ready
  for ``load_state_dict``. `posevla.training.checkpoint.Checkpoint.build_model` uses it.
"""

from __future__ import annotations

from typing import Any

from posevla.errors import ConfigError
from posevla.models.action_expert import GemmaActionExpert
from posevla.models.config import ActionExpertConfig, PoseVLMConfig, check_expert_pairing, to_hf_config
from posevla.models.pose_vla import PoseVLA
from posevla.models.posevlm import PoseVLM
from posevla.models.text import PoseTextTokenizer
from posevla.tokens import BinSpec, PoseCodec

__all__ = ["build_vlm", "build_policy"]


def build_vlm(
    cfg: PoseVLMConfig,
    bins: BinSpec,
    tokenizer: PoseTextTokenizer | None = None,
    *,
    embedding_rows: int | None = None,
    dtype: Any = None,
) -> PoseVLM:
    """The Pose-VLM of `cfg` with the pose vocabulary of `bins` (module docstring for the two modes)."""
    if embedding_rows is not None:
        return _skeleton(cfg, bins, tokenizer, int(embedding_rows))
    kw: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    return PoseVLM.build(cfg, tokenizer, PoseCodec(bins).vocabulary(), bins=bins, **kw)


def build_policy(
    cfg: PoseVLMConfig,
    expert: ActionExpertConfig,
    bins: BinSpec,
    tokenizer: PoseTextTokenizer | None = None,
    *,
    embedding_rows: int | None = None,
    dtype: Any = None,
) -> PoseVLA:
    """The Pose-VLM of `cfg` (as `build_vlm`) + a fresh action expert of `expert` sharing its attention."""
    if embedding_rows is None:
        kw: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
        return PoseVLA.build(cfg, expert, tokenizer, PoseCodec(bins).vocabulary(), bins=bins, **kw)
    check_expert_pairing(expert, cfg)
    vlm = _skeleton(cfg, bins, tokenizer, int(embedding_rows))
    return PoseVLA(vlm, GemmaActionExpert(expert, cfg.attn_implementation))


def _skeleton(cfg: PoseVLMConfig, bins: BinSpec, tokenizer: PoseTextTokenizer | None, rows: int) -> PoseVLM:
    """A randomly initialised Pose-VLM of `cfg` with `rows` embedding rows, for a checkpoint's weights.

    ``cfg.base`` is not read; the tokenizer (the checkpoint's) must already hold every pose token of `bins`.
    """
    from transformers import PaliGemmaForConditionalGeneration

    if tokenizer is None:
        raise ConfigError("a checkpoint skeleton (embedding_rows) needs the checkpoint's tokenizer")
    hf = PaliGemmaForConditionalGeneration(
        to_hf_config(
            cfg,
            vocab_size=rows,
            image_token_id=tokenizer.image_token_id,
            pad_id=tokenizer.pad_id,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
        )
    )
    model = PoseVLM(cfg, hf, tokenizer)
    added = tokenizer.add_pose_tokens(PoseCodec(bins).vocabulary())  # present already: only registered
    if added or tokenizer.vocab_size > rows:
        raise ConfigError(
            f"the checkpoint's tokenizer lacked {len(added)} pose token(s) of its bins or has more tokens "
            f"({tokenizer.vocab_size}) than the weights have rows ({rows}); the tokenizer, bins.json and "
            "model.safetensors come from different runs"
        )
    model.set_pose_bins(bins)
    return model
