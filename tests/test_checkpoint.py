"""One checkpoint loader, built from what was saved: the registry cannot change how a checkpoint loads, older
checkpoints (a flat train section) still load to the numbers the code that wrote them computed, and the
training config round-trips through its JSON."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.errors import CheckpointError, ConfigError
from posevla.models import config as model_config
from posevla.training.checkpoint import load_checkpoint
from posevla.training.config import DataConfig, TrainConfig
from posevla.training.configs import CONFIGS, get_config
from posevla.training.trainer import train

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "legacy_checkpoints"
GOLDEN = json.loads((LEGACY / "golden.json").read_text())


@pytest.fixture(scope="module")
def stage1(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(tiny_dataset)), out_dir=str(out),
                              steps=1, save_every=1)
    return train(cfg).checkpoint


def _edit_registries(monkeypatch):
    """Change every field of the tiny sizes that a checkpoint depends on (shapes and non-shapes alike)."""
    tiny = model_config.MODEL_CONFIGS["tiny"]
    monkeypatch.setitem(model_config.MODEL_CONFIGS, "tiny", tiny.replace(
        text_layers=2, text_hidden=64, pose_tags=False, rope_theta=500.0, prior_dropout=(0.1, 0.1), num_views=2,
    ))
    expert = model_config.EXPERT_CONFIGS["tiny"]
    monkeypatch.setitem(model_config.EXPERT_CONFIGS, "tiny", expert.replace(layers=2, hidden=32, chunk_size=4))


def test_an_edited_registry_does_not_change_how_a_checkpoint_loads(stage1, monkeypatch):
    from posevla.tokens import PoseCodec

    saved = load_checkpoint(stage1)
    before = saved.build_model().eval()
    batch = saved.model.fake_batch(2, before.tokenizer, PoseCodec(saved.bins), seed=1)
    with torch.no_grad():
        loss_before = before.compute_loss(batch)["loss"]
    _edit_registries(monkeypatch)
    assert model_config.get_model_config("tiny") != saved.model  # the registry really changed
    again = load_checkpoint(stage1)
    assert again.model == saved.model and again.train == saved.train
    after = again.build_model().eval()
    sd_a, sd_b = before.state_dict(), after.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    with torch.no_grad():
        loss_after = after.compute_loss(batch)["loss"]
    assert torch.equal(loss_before, loss_after)  # bit-identical, pose tags (non-persistent buffers) included
    assert after.cfg.pose_tags and after.pose_tags.n_loc == before.pose_tags.n_loc


def test_legacy_checkpoints_load_to_the_numbers_of_the_code_that_wrote_them(tiny_dataset, monkeypatch):
    """Fixtures written at 6a451a0 (flat train section) with a patched, smaller registry; the loader never
    consults the registry, so an edited one changes nothing either."""
    from posevla.data.actions import ActionDataset
    from posevla.data.collate import collate
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.data.formats.omni3d import load_omni3d
    from posevla.data.grounding import LabelFilter, build_grounding_example
    from posevla.eval.predict import GroundingPredictor
    from posevla.policy import Policy

    _edit_registries(monkeypatch)
    tok = load_checkpoint(LEGACY / "tokens")
    assert tok.train.optim.lr == 1e-3 and tok.train.bins.trans_xy == 64 and tok.train.data.train_data.endswith("scenes")
    assert tok.model.text_hidden == 32 and tok.expert is None and "categories" in tok.data
    pred = GroundingPredictor(LEGACY / "tokens", device="cpu", precision="fp32")
    scenes = {s.scene_id: s for s in load_omni3d(tiny_dataset / "dataset.json")}
    for sc in scenes.values():  # the labels as that code wrote them: box extents along local x, y, z
        for v in sc.views:
            v.objects = [dataclasses.replace(o, dimensions=o.dimensions[::-1].copy()) for o in v.objects]
    lf = LabelFilter()
    exs = [build_grounding_example(scenes[sid], cat, image_size=pred.spec.image_size, num_views=pred.spec.num_views,
                                   label_filter=lf) for sid, cat in GOLDEN["tokens_examples"]]
    with torch.no_grad():
        loss = pred.model.compute_loss(collate(exs, pred.codec, pred.tokenizer, pred.spec))["loss"].item()
    assert loss == pytest.approx(GOLDEN["tokens_loss"], rel=1e-6)
    grammar = pred.grammar(exs[0].category)
    prefix = collate(exs[:1], pred.codec, pred.tokenizer, pred.spec, with_answer=False)
    (res,) = pred.model.generate(prefix, [grammar], grammar.max_length())
    assert res.ids == GOLDEN["tokens_answer_ids"]

    act = load_checkpoint(LEGACY / "actions")
    assert act.expert is not None and act.expert.hidden == 16 and act.train.action.chunk_size == 16
    policy = Policy.from_checkpoint(LEGACY / "actions", device="cpu", precision="fp32")
    data = ActionDataset(load_lerobot_v3(FIXTURES / "lerobot_v3_tiny"), policy.action_cfg, policy.spec, policy.stats)
    chunk = policy.infer(data.observation(0, 0), seed=0, num_steps=3)["actions"]
    np.testing.assert_allclose(chunk, np.asarray(GOLDEN["actions_chunk"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_config_round_trips_through_json(name):
    cfg = get_config(name)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_flat_train_sections_and_unknown_keys():
    flat = json.loads((LEGACY / "actions" / "config.json").read_text())["train"]
    cfg = TrainConfig.from_dict(flat)
    assert (cfg.model.size, cfg.optim.warmup_steps, cfg.bins.loc, cfg.data.train_data) == (
        "tiny", 1, 128, flat["train_data"])
    assert cfg.bins_file is None and cfg.action.constant_dims == ("z", "R20", "R21")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})
    with pytest.raises(ConfigError, match=r"train.optim: unknown key\(s\) \['beta'\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "optim": {"beta": 0.9}})


def test_checkpoints_that_cannot_be_rebuilt(stage1, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(stage1, bad)
    (bad / "manifest.json").unlink()  # as a checkpoint written before manifests: the deeper checks speak
    conf = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({k: v for k, v in conf.items() if k != "train"}))
    with pytest.raises(CheckpointError, match="no 'train' section"):
        load_checkpoint(bad)
    (bad / "config.json").write_text(json.dumps({**conf, "model": {**conf["model"], "layers": 3}}))
    with pytest.raises(CheckpointError, match=r"cannot be rebuilt.*unknown PoseVLMConfig fields \['layers'\]"):
        load_checkpoint(bad)
    (bad / "config.json").write_text(json.dumps(conf))
    (bad / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="could not load a tokenizer"):
        load_checkpoint(bad).build_model()
