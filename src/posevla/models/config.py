"""Architecture configurations: the Pose-VLM (PaliGemma = SigLIP + Gemma + prior embedders) and the action expert.

`PoseVLMConfig` and `ActionExpertConfig` hold *architecture only*: no learning rates, no paths to data, no
device. A checkpoint saves both (``config.json`` sections ``model`` / ``expert``) and is rebuilt from what it
saved (`posevla.training.checkpoint.load_checkpoint`), never from these registries. Each config can
fabricate a correctly shaped batch (`PoseVLMConfig.fake_batch`, `ActionExpertConfig.fake_batch`), so model
tests need no data. Named VLM sizes live in `MODEL_CONFIGS` and are picked with `get_model_config(name)`:

* ``tiny``: trains on a CPU in minutes (image 128, patch 16 -> 64 tokens per view; SigLIP 128 wide, Gemma 256
  wide). Used by tests and the CPU demo.
* ``paligemma-3b``: the spec's backbone (§1.1): SigLIP So400m/14 at 224 (256 tokens per view) + Gemma-2B.

`to_hf_config` turns a config into a `transformers.PaliGemmaConfig` (the vocabulary size and the special
token ids come from the tokenizer, not from here). Named expert sizes live in `EXPERT_CONFIGS` (``tiny``
pairs with the tiny VLM; ``300m`` is π0's Gemma expert, pairing with Gemma-2B); `check_expert_pairing` says
whether an expert can share attention with a VLM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from posevla.errors import ConfigError

__all__ = [
    "PoseVLMConfig",
    "MODEL_CONFIGS",
    "get_model_config",
    "to_hf_config",
    "config_from_hf",
    "ARCH_FIELDS",
    "ActionExpertConfig",
    "EXPERT_CONFIGS",
    "get_expert_config",
    "check_expert_pairing",
    "to_gemma_config",
    "fake_answers",
]

#: Prompt names of fake batches (different token lengths, so prompts are right-padded).
_FAKE_NAMES = ("cup", "bowl", "master chef can")

#: Fields that must agree with a pretrained HF directory's config.json when ``base`` is a directory.
ARCH_FIELDS = (
    "vision_hidden",
    "vision_layers",
    "vision_heads",
    "vision_mlp",
    "patch_size",
    "image_size",
    "text_hidden",
    "text_layers",
    "text_heads",
    "text_kv_heads",
    "head_dim",
    "text_mlp",
    "projection_dim",
)


@dataclass(frozen=True)
class PoseVLMConfig:
    """Architecture of a Pose-VLM.

    Attributes:
        name: the named size this came from (informational).
        vision_*: SigLIP vision tower (hidden width, layers, heads, MLP width); `patch_size`,
            `image_size` in px.
        text_*: Gemma decoder (hidden width, layers, query heads, KV heads, head_dim, MLP width).
        projection_dim: output width of PaliGemma's multi-modal projector (= Gemma hidden width).
        num_views: image slots per sample (spec: 3 cameras; absent views are zero images).
        prompt_len: fixed length of the text part of the prefix (``<bos>`` + prompt + ``\\n`` + pads).
        prior_dropout: (p_depth, p_ray): probability of zeroing the depth / ray prior per sample in training.
        use_priors: build the depth and ray patch embedders (spec §1.2).
        base: ``"scratch"`` (random init from this config) or a local HF PaliGemma directory.
        pose_tags: add pose-token tags to the image tokens (`posevla.models.pose_tags`): each image token
            carries the embeddings of the ``<loc>`` tokens of its place and of the ``<transZ>``/``<transXY>``
            tokens of the surface it sees. Not in the paper; a from-scratch model needs them to learn to read
            poses off its images on a CPU budget.
        pose_token_init: ``"mean"`` (the paper: new rows = the mean of the existing rows) or ``"ordinal"``
            (each value family gets smooth codes, neighbouring bins alike). Applies to from-scratch models only,
            whose "existing rows" are random, so mean init makes every pose token the same; a pretrained
            checkpoint always gets mean init.
        rope_theta, rms_norm_eps, layer_norm_eps, max_position_embeddings: Gemma/SigLIP constants.
        attn_implementation: transformers attention backend (``"sdpa"`` or ``"eager"``; never flash
            attention, which drops PaliGemma's bidirectional prefix mask).
    """

    name: str = "custom"
    # SigLIP
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_mlp: int = 512
    patch_size: int = 16
    image_size: int = 128
    # Gemma
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 1
    head_dim: int = 64
    text_mlp: int = 1024
    projection_dim: int = 256
    # Pose-VLA
    num_views: int = 3
    prompt_len: int = 24
    prior_dropout: tuple[float, float] = (0.5, 0.5)
    use_priors: bool = True
    base: str = "scratch"
    pose_tags: bool = False
    pose_token_init: str = "mean"
    # constants
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    layer_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "the prior embedders need an integer patch grid aligned with SigLIP's"
            )
        if len(self.prior_dropout) != 2 or not all(0.0 <= p <= 1.0 for p in self.prior_dropout):
            raise ConfigError(
                f"prior_dropout must be two probabilities (depth, ray), got {self.prior_dropout}"
            )
        if self.num_views < 1 or self.prompt_len < 2:
            raise ConfigError(
                f"num_views must be >= 1 and prompt_len >= 2, got {self.num_views}, {self.prompt_len}"
            )
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ConfigError(
                f"attn_implementation {self.attn_implementation!r} is not supported; use 'sdpa' or 'eager' "
                "(flash attention ignores PaliGemma's bidirectional prefix)"
            )
        if self.pose_token_init not in ("mean", "ordinal"):
            raise ConfigError(f"pose_token_init {self.pose_token_init!r} is unknown; use 'mean' or 'ordinal'")
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "prior_dropout", tuple(float(p) for p in self.prior_dropout))

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def tokens_per_view(self) -> int:
        """SigLIP patches (= ``<image>`` tokens) per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_image_tokens(self) -> int:
        """``<image>`` tokens per sample (all views)."""
        return self.num_views * self.tokens_per_view

    @property
    def prefix_len(self) -> int:
        """Length of every prefix: image tokens + the fixed text prefix."""
        return self.n_image_tokens + self.prompt_len

    @property
    def is_scratch(self) -> bool:
        return self.base == "scratch"

    def replace(self, **changes: Any) -> PoseVLMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prior_dropout"] = list(self.prior_dropout)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoseVLMConfig:
        """Inverse of :meth:`to_dict`; an unknown field is a ConfigError naming it and the valid ones."""
        return _from_dict(cls, d)

    def fake_batch(
        self,
        batch_size: int,
        tokenizer: Any,
        codec: Any = None,
        *,
        seed: int = 0,
        prompts: Any = None,
        priors: bool = True,
    ) -> dict[str, Any]:
        """A random, correctly shaped batch for this architecture (openpi's ``fake_obs``).

        Args:
            batch_size: B.
            tokenizer: a `PoseTextTokenizer` with the pose tokens of `codec` (a built model's ``tokenizer``).
            codec: a `PoseCodec`; given, every sample gets a random answer (a `PoseVLM.compute_loss` batch);
                None gives a prefix only (``generate`` / the action expert).
            seed: everything is a function of it (answers from numpy, pixels from a torch generator).
            prompts: one per sample (cycled); default ``detect the {cup | bowl | master chef can}``.
            priors: add ``ray``, ``depth`` and ``prior_mask`` (all present).

        Keys: ``input_ids, attention_mask, token_type_ids (B, L)`` (+ ``labels`` with an answer),
        ``pixel_values (B, V, 3, S, S)`` in [-1, 1], ``ray (B, V, 3, S, S)``, ``depth (B, V, 2, S, S)``,
        ``prior_mask (B, 2)``.
        """
        import numpy as np
        import torch

        rng = np.random.default_rng(seed)
        prompts = list(prompts) if prompts is not None else [f"detect the {n}" for n in _FAKE_NAMES]
        texts = [
            tokenizer.build_example(
                prompts[i % len(prompts)],
                None if codec is None else codec.serialize(fake_answers(rng, self.num_views)),
                n_image_tokens=self.n_image_tokens,
                prompt_len=self.prompt_len,
            )
            for i in range(batch_size)
        ]
        batch = tokenizer.collate(texts)
        g = torch.Generator().manual_seed(seed)
        B, V, S = batch_size, self.num_views, self.image_size
        batch["pixel_values"] = torch.rand(B, V, 3, S, S, generator=g) * 2 - 1  # (B, V, 3, S, S)
        if priors:
            batch["ray"] = torch.randn(B, V, 3, S, S, generator=g)  # (B, V, 3, S, S)
            batch["depth"] = torch.rand(B, V, 2, S, S, generator=g) * 3  # (B, V, 2, S, S) metres, validity
            batch["prior_mask"] = torch.ones(B, 2)  # (B, 2) [depth, ray]
        return batch


MODEL_CONFIGS: dict[str, PoseVLMConfig] = {
    "tiny": PoseVLMConfig(
        # Sized to pre-train on a 2-core CPU in minutes: 128 px views, 8x8 patches each (192 image
        # tokens for 3 views), a 4-layer 128-wide Gemma. Compute is dominated by the text sequence (prefix +
        # ~120 answer tokens), so width and image tokens are what to change when scaling.
        name="tiny",
        vision_hidden=96,
        vision_layers=2,
        vision_heads=3,
        vision_mlp=384,
        patch_size=16,
        image_size=128,
        text_hidden=128,
        text_layers=4,
        text_heads=4,
        text_kv_heads=1,
        head_dim=32,
        text_mlp=512,
        projection_dim=128,
        prompt_len=40,  # the longest MetaWorld instruction is 39 tokens with <bos> and "\n" (test_metaworld)
        max_position_embeddings=2048,
        # Without these two the scratch model's answers do not depend on its images within a CPU budget
        # (image-reliance gap ≈ 0 after 2,400 steps); with them a one-view model starts reading depth off the
        # image after 600-2,000 steps, depending on the scenes and the run (docs/design.md).
        pose_tags=True,
        pose_token_init="ordinal",
    ),
    # spec §1.1: SigLIP So400m/14 @224 + Gemma-2B (paligemma-3b-pt-224).
    "paligemma-3b": PoseVLMConfig(
        name="paligemma-3b",
        vision_hidden=1152,
        vision_layers=27,
        vision_heads=16,
        vision_mlp=4304,
        patch_size=14,
        image_size=224,
        text_hidden=2048,
        text_layers=18,
        text_heads=8,
        text_kv_heads=1,
        head_dim=256,
        text_mlp=16384,
        projection_dim=2048,
        prompt_len=64,
        max_position_embeddings=8192,
    ),
}


def get_model_config(name: str, **overrides: Any) -> PoseVLMConfig:
    """The named architecture, optionally with fields replaced (e.g. ``base="/ckpt/paligemma-3b-pt-224"``)."""
    if name not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model config {name!r}; valid names: {sorted(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[name]
    return cfg.replace(**overrides) if overrides else cfg


def to_hf_config(
    cfg: PoseVLMConfig,
    vocab_size: int,
    image_token_id: int,
    pad_id: int,
    bos_id: int | None = None,
    eos_id: int | None = None,
):
    """A `transformers.PaliGemmaConfig` for `cfg` (random-init path).

    `vocab_size` is the size of the embedding matrix to create (the tokenizer's length *before* pose tokens
    are added, so that scratch and pretrained models go through the same vocabulary-extension code).
    """
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_mlp,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        num_channels=3,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=cfg.layer_norm_eps,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="gelu_pytorch_tanh",
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )
    hf = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vocab_size=vocab_size,
        projection_dim=cfg.projection_dim,
        hidden_size=cfg.text_hidden,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    hf._attn_implementation = cfg.attn_implementation
    return hf


def config_from_hf(hf_config, **fields: Any) -> PoseVLMConfig:
    """A `PoseVLMConfig` whose architecture is read from a `PaliGemmaConfig` (other fields from `fields`)."""
    v, t = hf_config.vision_config, hf_config.text_config
    arch = dict(
        vision_hidden=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_heads=v.num_attention_heads,
        vision_mlp=v.intermediate_size,
        patch_size=int(v.patch_size),
        image_size=int(v.image_size),
        text_hidden=t.hidden_size,
        text_layers=t.num_hidden_layers,
        text_heads=t.num_attention_heads,
        text_kv_heads=t.num_key_value_heads,
        head_dim=t.head_dim,
        text_mlp=t.intermediate_size,
        projection_dim=hf_config.projection_dim,
    )
    arch.update(fields)
    return PoseVLMConfig(**arch)


# -- the action expert ---------------------------------------------------------------------------------------


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
        """Inverse of :meth:`to_dict`; an unknown field is a ConfigError naming it and the valid ones."""
        return _from_dict(cls, d)

    def fake_batch(
        self,
        batch_size: int,
        vlm: PoseVLMConfig,
        tokenizer: Any,
        *,
        state_dim: int = 5,
        action_dim: int = 7,
        seed: int = 0,
        prompts: Any = None,
        priors: bool = True,
    ) -> dict[str, Any]:
        """A random training batch of `posevla.models.pose_vla.PoseVLA.compute_loss` for this expert and `vlm`.

        The prefix is ``vlm.fake_batch(batch_size, tokenizer, seed=seed, ...)`` (no answer); then ``state
        (B, state_dim)`` and ``actions (B, chunk_size, action_dim)`` from N(0, 1) with the seed ``seed + 1``.
        """
        import torch

        batch = vlm.fake_batch(batch_size, tokenizer, seed=seed, prompts=prompts, priors=priors)
        g = torch.Generator().manual_seed(seed + 1)
        batch["state"] = torch.randn(batch_size, state_dim, generator=g)  # (B, Ds)
        batch["actions"] = torch.randn(batch_size, self.chunk_size, action_dim, generator=g)  # (B, H, Da)
        return batch


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


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(known)}")
    return cls(**d)


def fake_answers(rng: Any, num_views: int) -> list[Any]:
    """Random pose answers for `PoseVLMConfig.fake_batch`: one `ViewAnswer` per view, view 1 a negative
    (``bowl<no_object>``), view v ≠ 1 with v + 1 objects; `rng` is a numpy Generator."""
    import numpy as np

    from posevla.tokens import PoseEntry, ViewAnswer

    views = []
    for v in range(num_views):
        if v == 1:
            views.append(ViewAnswer(v, [], no_object="bowl"))
            continue
        entries = [
            PoseEntry(
                name=str(rng.choice(_FAKE_NAMES)),
                anchor=np.sort(rng.uniform(0, 1, 4).reshape(2, 2), axis=0).ravel(),
                translation=np.array([rng.normal(0, 0.2), rng.normal(0, 0.2), rng.uniform(0.5, 2.0)]),
                euler_xyz=rng.uniform(-3, 3, 3),
                size=rng.uniform(0.05, 0.3, 3),
            )
            for _ in range(1 + v)
        ]
        views.append(ViewAnswer(v, entries))
    return views
