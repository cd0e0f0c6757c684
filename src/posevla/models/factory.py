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

from posevla.models.config import ActionExpertConfig, PoseVLMConfig
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
    kw: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    return PoseVLM.build(
        cfg, tokenizer, PoseCodec(bins).vocabulary(), bins=bins, embedding_rows=embedding_rows, **kw
    )


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
    kw: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    return PoseVLA.build(
        cfg, expert, tokenizer, PoseCodec(bins).vocabulary(), bins=bins, embedding_rows=embedding_rows, **kw
    )
