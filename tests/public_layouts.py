"""Checkpoint directories in the published layouts, with random weights at any size (tiny or full).

Used by ``tests/test_local_weights.py`` (tiny) and ``tests/test_full_size_weights.py`` (paper size). The key
names, shapes, sharding and config files are written from the public layouts *as published*, never derived
from posevla's own modules, so a test that loads them checks our readers against the real formats:

* `write_paligemma_dir`: ``google/paligemma-3b-pt-224`` on the Hugging Face hub. Keys as written by
  transformers' ``convert_paligemma_weights_to_hf.py`` (the pre-5.0 nesting: ``vision_tower.vision_model.…``,
  ``multi_modal_projector.linear.…``, ``language_model.model.{embed_tokens,layers.N.…,norm}``; the tied
  ``language_model.lm_head.weight`` is not stored), sharded ``model-0000K-of-0000N.safetensors`` in
  module order with ``model.safetensors.index.json`` (``metadata.total_size`` + ``weight_map``), plus
  config.json, generation_config.json, preprocessor_config.json and the tokenizer files. The tokenizer has
  the published id layout (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``base_vocab`` ordinary
  pieces, then ``<loc0000>``…``<loc1023>``, ``<seg000>``…``<seg127>`` and ``<image>``; 257,153 ids at full
  size and an embedding matrix padded to a multiple of 64 rows, 257,216); its ordinary pieces are synthetic
  (a byte-fallback BPE over a small word list), and ``tokenizer.model`` (the SentencePiece file) is not
  written: transformers reads ``tokenizer.json``.
π0 checkpoints (openpi's PyTorch conversion, LeRobot's ``pi0``) are written by ``tests/pi0_layouts.py`` with
the helpers here.

Weights are streamed to disk tensor by tensor (`write_safetensors`), so a full-size directory needs little
memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "PALIGEMMA_3B",
    "PaliGemmaSize",
    "TensorSpec",
    "gemma_layer_specs",
    "iter_keys",
    "paligemma_specs",
    "random_fill",
    "write_paligemma_dir",
    "write_safetensors",
]

_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: its public key, shape, dtype and how to fill it (``"normal"``, ``"ones"``)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    fill: str = "normal"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class PaliGemmaSize:
    """Sizes of a PaliGemma checkpoint (SigLIP + Gemma + tokenizer layout). `PALIGEMMA_3B` is the paper's."""

    vision_hidden: int = 1152
    vision_layers: int = 27
    vision_heads: int = 16
    vision_mlp: int = 4304
    patch_size: int = 14
    image_size: int = 224
    text_hidden: int = 2048
    text_layers: int = 18
    text_heads: int = 8
    text_kv_heads: int = 1
    head_dim: int = 256
    text_mlp: int = 16384
    base_vocab: int = 256000  # Gemma's SentencePiece pieces before PaliGemma's <loc>/<seg> tokens

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokenizer_len(self) -> int:
        """Ids of the tokenizer: base pieces + 1024 ``<loc>`` + 128 ``<seg>`` + ``<image>``."""
        return self.base_vocab + 1024 + 128 + 1

    @property
    def image_token_id(self) -> int:
        return self.base_vocab + 1024 + 128

    @property
    def embedding_rows(self) -> int:
        """Rows of the embedding matrix: the published conversion resized to ``vocab + 2`` padded to 64."""
        return math.ceil((self.base_vocab + 1024 + 128 + 2) / 64) * 64


PALIGEMMA_3B = PaliGemmaSize()

# -- safetensors ---------------------------------------------------------------------------------------------


def random_fill(spec: TensorSpec, gen: torch.Generator) -> torch.Tensor:
    if spec.fill == "ones":
        t = torch.ones(spec.shape) + 0.02 * torch.randn(spec.shape, generator=gen)
    else:
        t = 0.02 * torch.randn(spec.shape, generator=gen)
    return t.to(spec.dtype)


def write_safetensors(
    path: Path,
    specs: list[TensorSpec],
    make: Callable[[TensorSpec], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (header first, then each tensor's bytes in `specs` order)."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.key] = {
            "dtype": _DTYPE_NAMES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for s in specs:
            t = make(s).contiguous()
            if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                raise ValueError(f"{s.key}: made {tuple(t.shape)} {t.dtype}, spec {s.shape} {s.dtype}")
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            del t


def _shards(specs: list[TensorSpec], num_shards: int) -> list[list[TensorSpec]]:
    """Contiguous shards in module order, cut at equal byte fractions (exactly `num_shards` when possible)."""
    total = sum(s.nbytes for s in specs)
    out: list[list[TensorSpec]] = [[] for _ in range(num_shards)]
    seen = 0
    for s in specs:
        out[min(num_shards - 1, seen * num_shards // total)].append(s)
        seen += s.nbytes
    return [group for group in out if group]


# -- PaliGemma (HF hub layout) ------------------------------------------------------------------------------


def paligemma_specs(size: PaliGemmaSize, dtype: torch.dtype = torch.float32) -> list[TensorSpec]:
    """Stored tensors of a ``paligemma-3b-pt-224``-layout checkpoint, in module (= shard) order."""
    d, v = size.text_hidden, size.vision_hidden
    vt, lm = "vision_tower.vision_model.", "language_model.model."
    out = [
        TensorSpec(vt + "embeddings.patch_embedding.weight", (v, 3, size.patch_size, size.patch_size), dtype),
        TensorSpec(vt + "embeddings.patch_embedding.bias", (v,), dtype),
        TensorSpec(vt + "embeddings.position_embedding.weight", (size.n_image_tokens, v), dtype),
    ]
    for i in range(size.vision_layers):
        p = f"{vt}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += [
                TensorSpec(f"{p}self_attn.{proj}.weight", (v, v), dtype),
                TensorSpec(f"{p}self_attn.{proj}.bias", (v,), dtype),
            ]
        out += [
            TensorSpec(p + "layer_norm1.weight", (v,), dtype, "ones"),
            TensorSpec(p + "layer_norm1.bias", (v,), dtype),
            TensorSpec(p + "mlp.fc1.weight", (size.vision_mlp, v), dtype),
            TensorSpec(p + "mlp.fc1.bias", (size.vision_mlp,), dtype),
            TensorSpec(p + "mlp.fc2.weight", (v, size.vision_mlp), dtype),
            TensorSpec(p + "mlp.fc2.bias", (v,), dtype),
            TensorSpec(p + "layer_norm2.weight", (v,), dtype, "ones"),
            TensorSpec(p + "layer_norm2.bias", (v,), dtype),
        ]
    out += [
        TensorSpec(vt + "post_layernorm.weight", (v,), dtype, "ones"),
        TensorSpec(vt + "post_layernorm.bias", (v,), dtype),
        TensorSpec("multi_modal_projector.linear.weight", (d, v), dtype),
        TensorSpec("multi_modal_projector.linear.bias", (d,), dtype),
        TensorSpec(lm + "embed_tokens.weight", (size.embedding_rows, d), dtype),
    ]
    out += gemma_layer_specs(
        lm, size.text_layers, d, size.text_heads, size.text_kv_heads, size.head_dim, size.text_mlp, dtype
    )
    return out


def gemma_layer_specs(
    prefix: str, layers: int, d: int, heads: int, kv: int, hd: int, mlp: int, dtype: torch.dtype
) -> list[TensorSpec]:
    """``{prefix}layers.N.…`` + ``{prefix}norm.weight`` of a Gemma decoder (transformers' names)."""
    nd = dtype
    out: list[TensorSpec] = []
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        out += [
            TensorSpec(p + "self_attn.q_proj.weight", (heads * hd, d), dtype),
            TensorSpec(p + "self_attn.k_proj.weight", (kv * hd, d), dtype),
            TensorSpec(p + "self_attn.v_proj.weight", (kv * hd, d), dtype),
            TensorSpec(p + "self_attn.o_proj.weight", (d, heads * hd), dtype),
            TensorSpec(p + "mlp.gate_proj.weight", (mlp, d), dtype),
            TensorSpec(p + "mlp.up_proj.weight", (mlp, d), dtype),
            TensorSpec(p + "mlp.down_proj.weight", (d, mlp), dtype),
            TensorSpec(p + "input_layernorm.weight", (d,), nd),
            TensorSpec(p + "post_attention_layernorm.weight", (d,), nd),
        ]
    out.append(TensorSpec(prefix + "norm.weight", (d,), nd))
    return out


def _paligemma_config(size: PaliGemmaSize, dtype: torch.dtype) -> dict:
    """config.json of paligemma-3b-pt-224 (its fields; fields that differ from the defaults at other sizes)."""
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    text = {
        "hidden_size": size.text_hidden,
        "intermediate_size": size.text_mlp,
        "model_type": "gemma",
        "num_attention_heads": size.text_heads,
        "num_hidden_layers": size.text_layers,
        "num_image_tokens": size.n_image_tokens,
        "num_key_value_heads": size.text_kv_heads,
        "torch_dtype": name,
        "vocab_size": size.embedding_rows,
    }
    if size.head_dim != 256:  # Gemma's default head_dim; the published file does not write it
        text["head_dim"] = size.head_dim
    vision = {
        "hidden_size": size.vision_hidden,
        "intermediate_size": size.vision_mlp,
        "model_type": "siglip_vision_model",
        "num_attention_heads": size.vision_heads,
        "num_hidden_layers": size.vision_layers,
        "num_image_tokens": size.n_image_tokens,
        "patch_size": size.patch_size,
        "projection_dim": size.text_hidden,
        "projector_hidden_act": "gelu_fast",
        "vision_use_head": False,
    }
    if size.image_size != 224:  # SigLIP's default image_size; not written in the published file
        vision["image_size"] = size.image_size
    return {
        "_name_or_path": "final-hf-ckpts/paligemma-3b-pt-224",
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "bos_token_id": 2,
        "eos_token_id": 1,
        "hidden_size": size.text_hidden,
        "ignore_index": -100,
        "image_token_index": size.image_token_id,
        "model_type": "paligemma",
        "pad_token_id": 0,
        "projection_dim": size.text_hidden,
        "text_config": text,
        "torch_dtype": name,
        "transformers_version": "4.41.0.dev0",
        "vision_config": vision,
        "vocab_size": size.embedding_rows,
    }


_WORDS = (  # ordinary words that get whole-word pieces
    "the a an of in on to and with detect pick place put push pull open close turn press lift move "
    "grasp cup mug bowl plate spoon fork knife bottle can box block cube ball banana apple drawer "
    "door button left right arm gripper robot table red green blue yellow black white small large "
    "caption answer en"
)
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def _tokenizer_json(size: PaliGemmaSize) -> dict:
    """A Gemma-style ``tokenizer.json`` (byte-fallback BPE, ``▁`` for spaces) with PaliGemma's id layout."""
    vocab: dict[str, int] = {t: i for i, t in enumerate(_SPECIALS)}

    def add(piece: str) -> None:
        if piece not in vocab:
            vocab[piece] = len(vocab)

    for b in range(256):
        add(f"<0x{b:02X}>")
    for c in "▁" + "".join(chr(i) for i in range(33, 127)):
        add(c)
    merges: list[list[str]] = []
    for w in _WORDS.split():
        piece = "▁"
        for c in w:
            if piece + c not in vocab:
                merges.append([piece, c])
                add(piece + c)
            piece += c
    if len(vocab) > size.base_vocab:
        raise ValueError(f"base_vocab {size.base_vocab} < {len(vocab)} pieces of the synthetic tokenizer")
    i = 0
    while len(vocab) < size.base_vocab:  # filler pieces up to Gemma's 256,000
        add(f"▁piece{i}")
        i += 1
    extra = [f"<loc{k:04d}>" for k in range(1024)] + [f"<seg{k:03d}>" for k in range(128)]
    for t in extra:
        add(t)
    add("<image>")

    def added(tok: str, special: bool) -> dict:
        return {
            "id": vocab[tok],
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(t, True) for t in _SPECIALS]
        + [added(t, False) for t in extra]
        + [added("<image>", True)],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<bos>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<bos>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _write_tokenizer(directory: Path, size: PaliGemmaSize) -> None:
    tok = _tokenizer_json(size)
    (directory / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    decoder = {
        str(a["id"]): {
            k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        }
        for a in tok["added_tokens"]
    }

    def special(t: str) -> dict:
        return {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "added_tokens_decoder": decoder,
                "additional_special_tokens": ["<image>"],
                "bos_token": "<bos>",
                "clean_up_tokenization_spaces": False,
                "eos_token": "<eos>",
                "model_max_length": 1000000000000000019884624838656,
                "pad_token": "<pad>",
                "processor_class": "PaliGemmaProcessor",
                "sp_model_kwargs": {},
                "spaces_between_special_tokens": False,
                "tokenizer_class": "GemmaTokenizer",
                "unk_token": "<unk>",
                "use_default_system_prompt": False,
            },
            indent=2,
        )
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "additional_special_tokens": [special("<image>")],
                "bos_token": special("<bos>"),
                "eos_token": special("<eos>"),
                "pad_token": special("<pad>"),
                "unk_token": special("<unk>"),
            },
            indent=2,
        )
    )
    (directory / "added_tokens.json").write_text(json.dumps({"<image>": size.image_token_id}, indent=2))


def write_paligemma_dir(
    directory: str | Path,
    size: PaliGemmaSize = PALIGEMMA_3B,
    *,
    dtype: torch.dtype = torch.float32,
    num_shards: int = 3,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write a ``paligemma-3b-pt-224``-layout directory with random weights; return a few written tensors.

    The returned ``{public key: tensor}`` holds spot-check tensors (vision layers, the projector, LM layers, the
    norms and the embedding's first 4096 rows) for comparison after loading; the rest is not kept in memory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs = paligemma_specs(size, dtype)
    shards = _shards(specs, num_shards)
    gen = torch.Generator().manual_seed(seed)
    keep_keys = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        f"vision_tower.vision_model.encoder.layers.{size.vision_layers - 1}.mlp.fc1.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.bias",
        "vision_tower.vision_model.post_layernorm.weight",
        "multi_modal_projector.linear.weight",
        "multi_modal_projector.linear.bias",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.k_proj.weight",
        f"language_model.model.layers.{size.text_layers - 1}.mlp.down_proj.weight",
        "language_model.model.norm.weight",
    }
    kept: dict[str, torch.Tensor] = {}

    def make(s: TensorSpec) -> torch.Tensor:
        t = random_fill(s, gen)
        if s.key in keep_keys:  # of the embedding, the first 4096 rows (the full matrix is 1 GB in bf16)
            kept[s.key] = (t[:4096] if s.key.endswith("embed_tokens.weight") else t).clone()
        return t

    weight_map: dict[str, str] = {}
    n = len(shards)
    for k, group in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        write_safetensors(directory / name, group, make)
        weight_map.update({s.key: name for s in group})
    index = {
        "metadata": {"total_size": sum(s.nbytes for s in specs)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(_paligemma_config(size, dtype), indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps(
            {
                "_from_model_config": True,
                "bos_token_id": 2,
                "eos_token_id": 1,
                "pad_token_id": 0,
                "transformers_version": "4.41.0.dev0",
            },
            indent=2,
        )
    )
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_convert_rgb": None,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "SiglipImageProcessor",
                "image_seq_length": size.n_image_tokens,
                "image_std": [0.5, 0.5, 0.5],
                "processor_class": "PaliGemmaProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "size": {"height": size.image_size, "width": size.image_size},
            },
            indent=2,
        )
    )
    _write_tokenizer(directory, size)
    return kept


def iter_keys(directory: str | Path) -> Iterator[str]:
    """Every tensor key stored in a directory's safetensors files (for assertions on the layout)."""
    from safetensors import safe_open

    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            yield from f.keys()
