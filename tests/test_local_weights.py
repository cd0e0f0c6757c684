"""Loading local checkpoints in the published layouts, at tiny size: a ``paligemma-3b-pt-224``-layout directory
into the Pose-VLM (`build_vlm`), and π0 checkpoints (openpi's PyTorch conversion, LeRobot's ``pi0``) into the
action expert (`init_expert_from_pi0`). The directories come from `tests/public_layouts.py` and
`tests/pi0_layouts.py`, which write the public key names and files, not ours;
``tests/test_full_size_weights.py`` does the same at paper size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pi0_layouts import write_pi0_dir
from public_layouts import PaliGemmaSize, iter_keys, write_paligemma_dir
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from posevla.errors import CheckpointError, ConfigError
from posevla.models import (
    PoseTextTokenizer,
    PoseVLA,
    build_vlm,
    get_expert_config,
    get_model_config,
    init_expert_from_pi0,
)
from posevla.models.paligemma_weights import load_paligemma_dir
from posevla.models.pi0_weights import expert_config_from_pi0, load_pi0_checkpoint, map_pi0_key, pi0_layout
from posevla.tokens import BinCounts, BinSpec, PoseCodec

torch.set_num_threads(1)

CFG = get_model_config("tiny")
#: The tiny architecture in PaliGemma's layout, with a small base vocabulary (Gemma's is 256,000).
SIZE = PaliGemmaSize(
    vision_hidden=CFG.vision_hidden,
    vision_layers=CFG.vision_layers,
    vision_heads=CFG.vision_heads,
    vision_mlp=CFG.vision_mlp,
    patch_size=CFG.patch_size,
    image_size=CFG.image_size,
    text_hidden=CFG.text_hidden,
    text_layers=CFG.text_layers,
    text_heads=CFG.text_heads,
    text_kv_heads=CFG.text_kv_heads,
    head_dim=CFG.head_dim,
    text_mlp=CFG.text_mlp,
    base_vocab=1200,
)


def _public_to_ours(key: str) -> str:
    """Where transformers ≥ 5 keeps a hub PaliGemma key (its conversion mapping), under `PoseVLM.hf`."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model.") :]
    if key.startswith("vision_tower.vision_model."):
        return "model.vision_tower." + key[len("vision_tower.vision_model.") :]
    return "model." + key


@pytest.fixture(scope="module")
def bins() -> BinSpec:
    rng = np.random.default_rng(0)
    return BinSpec.fit(
        rng.normal(0, 0.3, 200),
        rng.uniform(0.3, 3.0, 200),
        rng.uniform(0.02, 0.5, 200),
        BinCounts(trans_xy=16, trans_z=16, size=8, rot=12),
        description="test",
    )


@pytest.fixture(scope="module")
def pg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("paligemma-tiny-pt")
    return d, write_paligemma_dir(d, SIZE, seed=3)


# -- PaliGemma -----------------------------------------------------------------------------------------------


def test_paligemma_writer_matches_the_published_layout(pg_dir):
    d, _ = pg_dir
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(
        [
            "added_tokens.json",
            "config.json",
            "generation_config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
            "preprocessor_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    index = json.loads((d / "model.safetensors.index.json").read_text())
    stored: dict[str, str] = {}
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(d / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for k in f.keys():  # noqa: SIM118
                stored[k] = shard
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    assert stored == index["weight_map"] and index["metadata"]["total_size"] == total
    prefixes = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.linear.")
    assert all(k.startswith(prefixes) for k in stored)
    assert "language_model.lm_head.weight" not in stored  # tied: not stored
    assert index["weight_map"]["vision_tower.vision_model.embeddings.patch_embedding.weight"].startswith(
        "model-00001"
    )
    assert index["weight_map"]["language_model.model.norm.weight"].startswith("model-00003")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["PaliGemmaForConditionalGeneration"] and cfg["model_type"] == "paligemma"
    assert (
        cfg["image_token_index"] == SIZE.image_token_id
        and cfg["text_config"]["vocab_size"] == SIZE.embedding_rows
    )
    assert SIZE.embedding_rows % 64 == 0 and SIZE.embedding_rows >= SIZE.tokenizer_len + 1


def test_build_vlm_from_public_paligemma_dir(pg_dir, bins):
    d, written = pg_dir
    vlm = build_vlm(CFG.replace(base=str(d)), bins)
    sd = vlm.hf.state_dict()
    emb_key = "language_model.model.embed_tokens.weight"
    for key, value in written.items():  # a vision layer, the projector, LM layers, the norms
        if key != emb_key:
            assert torch.equal(sd[_public_to_ours(key)], value), key
    emb = vlm.hf.get_input_embeddings().weight.detach()
    n_tok = SIZE.tokenizer_len
    assert torch.equal(emb[:n_tok], written[emb_key][:n_tok])  # the checkpoint's rows, unchanged
    assert vlm.hf.lm_head.weight.data_ptr() == emb.data_ptr()  # still tied
    # the tokenizer: PaliGemma's ids, then our pose tokens (those already present keep their ids)
    tok = vlm.tokenizer
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.image_token_id) == (0, 1, 2, SIZE.image_token_id)
    assert (
        tok.token_to_id("<loc0000>") == SIZE.base_vocab
        and tok.token_to_id("<seg127>") == SIZE.image_token_id - 1
    )
    vocab = PoseCodec(bins).vocabulary()
    base = PoseTextTokenizer.load(d)
    assert len(base) == n_tok and base.hf.convert_tokens_to_ids("<image>") == SIZE.image_token_id
    added = set(vocab) - set(base.hf.get_vocab())
    assert added and len(tok) == n_tok + len(added)
    assert {t: tok.token_to_id(t) for t in vocab if t not in added} == {
        t: base.token_to_id(t) for t in vocab if t not in added
    }  # e.g. <loc…>: the checkpoint's ids
    assert all(len(tok.encode_text(t)) == 1 for t in vocab)
    assert emb.shape[0] == max(len(tok), SIZE.embedding_rows) and vlm.vocab_size == emb.shape[0]
    assert tok.decode(tok.encode_text("detect the cup")) == "detect the cup"
    batch = vlm.cfg.fake_batch(1, tok, PoseCodec(bins, num_views=CFG.num_views), seed=0)
    assert torch.isfinite(vlm.compute_loss(batch)["loss"])


def test_build_vlm_from_a_dir_transformers_saved(pg_dir, bins, tmp_path):
    """A directory written by transformers' own `save_pretrained` (sharded, with its index) loads the same way:
    no missing / unexpected keys, the same weights as the public-layout directory it was read from."""
    import shutil

    from transformers import PaliGemmaForConditionalGeneration

    d, written = pg_dir
    out = tmp_path / "saved"
    PaliGemmaForConditionalGeneration.from_pretrained(str(d)).save_pretrained(str(out), max_shard_size="200KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    for f in d.iterdir():  # the tokenizer and processor files (save_pretrained writes the model only)
        if f.suffix == ".json" and not f.name.startswith(("model", "config")) or f.suffix == ".model":
            shutil.copy(f, out / f.name)
    sd = build_vlm(CFG.replace(base=str(out)), bins).hf.state_dict()  # CheckpointError on any missing key
    emb_key = "language_model.model.embed_tokens.weight"
    for key, value in written.items():
        got = sd[_public_to_ours(key)]
        assert torch.equal(got[: SIZE.tokenizer_len] if key == emb_key else got, value[: SIZE.tokenizer_len]
                           if key == emb_key else value), key


def _rewrite_shard(src, dst, edit) -> None:
    """Copy a PaliGemma dir to `dst` with `edit(dict)` applied to the shard holding the LM's first layer."""
    import shutil

    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["language_model.model.layers.0.mlp.gate_proj.weight"]
    tensors = load_file(str(dst / shard))
    edit(tensors)
    save_file(tensors, str(dst / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in tensors})
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))


def test_incomplete_paligemma_checkpoints_raise(pg_dir, tmp_path, bins):
    d, _ = pg_dir
    gate = "language_model.model.layers.0.mlp.gate_proj.weight"
    _rewrite_shard(d, tmp_path / "missing", lambda t: t.pop(gate))
    with pytest.raises(CheckpointError, match=r"lacks.*language_model\.layers\.0\.mlp\.gate_proj\.weight"):
        load_paligemma_dir(tmp_path / "missing", dtype=torch.float32, attn_implementation="sdpa")
    _rewrite_shard(
        d, tmp_path / "renamed", lambda t: t.__setitem__(gate.replace("gate_proj", "gate"), t.pop(gate))
    )
    with pytest.raises(CheckpointError, match=r"fit no parameter.*mlp\.gate\.weight"):
        build_vlm(CFG.replace(base=str(tmp_path / "renamed")), bins)
    _rewrite_shard(d, tmp_path / "shape", lambda t: t.__setitem__(gate, torch.zeros(3, CFG.text_hidden)))
    with pytest.raises(CheckpointError, match="gate_proj"):
        load_paligemma_dir(tmp_path / "shape", dtype=torch.float32, attn_implementation="sdpa")
    _rewrite_shard(d, tmp_path / "noshard", lambda t: None)
    (tmp_path / "noshard" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors.*missing"):
        build_vlm(CFG.replace(base=str(tmp_path / "noshard")), bins)
    with pytest.raises(ConfigError, match="does not match the checkpoint"):
        build_vlm(CFG.replace(base=str(d), text_mlp=256), bins)


# -- π0 → action expert ----------------------------------------------------------------------------------------

#: A VLM whose attention geometry pairs with openpi's ``dummy`` Gemma (4 layers, 1 KV head, head_dim 16).
PI0_VLM = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, pose_tags=False, head_dim=16)
PI0_SIZE = PaliGemmaSize(
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    vision_mlp=64,
    patch_size=16,
    image_size=32,
    text_hidden=64,
    text_layers=4,
    text_heads=4,
    text_kv_heads=1,
    head_dim=16,
    text_mlp=128,
    base_vocab=600,
)


def _pi0_to_ours(key: str) -> str:
    key = key.removeprefix("model.")
    key = key.replace("paligemma_with_expert.gemma_expert.model.", "")
    return "expert." + key


@pytest.mark.parametrize("layout", ["openpi", "lerobot"])
def test_init_expert_from_pi0(layout, tmp_path):
    d = tmp_path / layout
    written = write_pi0_dir(
        d,
        layout=layout,
        paligemma=PI0_SIZE,
        expert_variant="dummy",
        action_dim=8,
        action_horizon=4,
        dtype=torch.bfloat16,
        seed=4,
    )
    keys = set(iter_keys(d))
    pre = "model." if layout == "lerobot" else ""
    assert {
        pre + "paligemma_with_expert.paligemma.lm_head.weight",
        pre + "state_proj.weight",
        pre + "paligemma_with_expert.gemma_expert.lm_head.weight",
        pre + "paligemma_with_expert.gemma_expert.model.layers.3.mlp.down_proj.weight",
    } <= keys
    assert pi0_layout(json.loads((d / "config.json").read_text())) == layout
    expert_cfg = expert_config_from_pi0(d)
    assert (
        expert_cfg.hidden,
        expert_cfg.layers,
        expert_cfg.mlp,
        expert_cfg.heads,
        expert_cfg.head_dim,
        expert_cfg.chunk_size,
        expert_cfg.max_action_dim,
    ) == (64, 4, 128, 8, 16, 4, 8)
    torch.manual_seed(0)
    policy = PoseVLA.build(PI0_VLM, expert_cfg)
    vlm_before = {k: v.clone() for k, v in policy.vlm.state_dict().items()}
    report = init_expert_from_pi0(policy, d)
    assert report["layout"] == layout and report["n_loaded"] == len(report["loaded"]) == len(written)
    ours = policy.state_dict()
    expert_params = {k for k in ours if k.startswith("expert.")}
    assert set(report["loaded"]) == expert_params  # every expert parameter, nothing else
    for key, value in written.items():
        assert torch.equal(ours[_pi0_to_ours(key)], value.float()), key  # bf16/fp32 values, cast to fp32
    assert all(torch.equal(v, policy.vlm.state_dict()[k]) for k, v in vlm_before.items())  # VLM untouched
    assert pre + "paligemma_with_expert.gemma_expert.lm_head.weight" in report["ignored"]
    assert report["n_ignored"] == len(keys) - len(written)
    batch = policy.cfg.fake_batch(
        2, policy.vlm.cfg, policy.vlm.tokenizer, state_dim=5, action_dim=7, priors=False
    )
    assert torch.isfinite(policy.compute_loss(batch)["loss"])
    # the same directory through the general loader, expert parts only
    assert load_pi0_checkpoint(policy, d, parts=("expert", "projections")) == report["loaded"]


def test_init_expert_from_pi0_errors(tmp_path):
    d = tmp_path / "openpi"
    write_pi0_dir(
        d,
        layout="openpi",
        paligemma=PI0_SIZE,
        expert_variant="dummy",
        action_dim=8,
        action_horizon=4,
        include_vlm=False,
    )
    torch.manual_seed(0)
    wrong = PoseVLA.build(
        PI0_VLM,
        get_expert_config("tiny", head_dim=16, heads=8, max_action_dim=8, max_state_dim=8, chunk_size=4),
    )  # mlp 256, not 128
    with pytest.raises(CheckpointError, match=r"does not match.*'mlp': \(256, 128\).*expert_config_from_pi0"):
        init_expert_from_pi0(wrong, d)
    policy = PoseVLA.build(PI0_VLM, expert_config_from_pi0(d))
    weights = load_file(str(d / "model.safetensors"))

    def variant(name: str, sd: dict, cfg: dict | None = None):
        out = tmp_path / name
        out.mkdir()
        save_file(sd, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(cfg or json.loads((d / "config.json").read_text())))
        return out

    gone = "paligemma_with_expert.gemma_expert.model.layers.1.self_attn.v_proj.weight"
    with pytest.raises(CheckpointError, match=r"missing keys.*expert\.layers\.1\.self_attn\.v_proj\.weight"):
        init_expert_from_pi0(policy, variant("missing", {k: v for k, v in weights.items() if k != gone}))
    adarms = {**weights, "paligemma_with_expert.gemma_expert.model.norm.dense.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*norm\.dense\.weight"):
        init_expert_from_pi0(policy, variant("adarms", adarms))
    with pytest.raises(CheckpointError, match=r"no known part.*time_mlp_in"):
        init_expert_from_pi0(policy, variant("pi05", {**weights, "time_mlp_in.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"'pi05'\) is not a π0 config"):
        init_expert_from_pi0(policy, variant("type", weights, {"type": "pi05", "chunk_size": 4}))
    with pytest.raises(CheckpointError, match="not a known Gemma variant"):
        init_expert_from_pi0(
            policy,
            variant(
                "var", weights, {"action_horizon": 4, "action_dim": 8, "action_expert_variant": "gemma_1b"}
            ),
        )
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        init_expert_from_pi0(policy, tmp_path / "noweights")


def test_old_lerobot_pi0_keys_map():
    """LeRobot ≤ 0.3 (transformers 4.48 nesting) stored the tied LM head under ``language_model.lm_head``."""
    pg = "model.paligemma_with_expert.paligemma."
    assert (
        map_pi0_key(pg + "language_model.lm_head.weight") == "vlm.hf.model.language_model.embed_tokens.weight"
    )
    assert map_pi0_key(pg + "language_model.model.layers.2.mlp.up_proj.weight") == (
        "vlm.hf.model.language_model.layers.2.mlp.up_proj.weight"
    )
    assert map_pi0_key("model.paligemma_with_expert.gemma_expert.lm_head.weight") == ""
    cfg = {"type": "pi0", "chunk_size": 50, "max_state_dim": 32, "max_action_dim": 32, "proj_width": 1024}
    assert expert_config_from_pi0(cfg).hidden == get_expert_config("300m").hidden  # its fixed 300M expert
