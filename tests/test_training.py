"""CPU smoke runs of the one training loop: train, exact resume, non-finite loss, checkpoint safety."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from posevla.errors import CheckpointError, TrainingError
from posevla.training.checkpoint import read_checkpoint_meta, resolve_checkpoint
from posevla.training.config import get_config
from posevla.training.trainer import train


def _cfg(data, out, **kw):
    return dataclasses.replace(get_config("debug"), train_data=str(data), out_dir=str(out), **kw)


def _losses(out_dir):
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def test_resume_is_exact(tiny_dataset, tmp_path):
    straight = train(_cfg(tiny_dataset, tmp_path / "a", steps=4, save_every=2))
    half = train(_cfg(tiny_dataset, tmp_path / "b", steps=2, save_every=2))
    assert half.steps == 2
    resumed = train(_cfg(tiny_dataset, tmp_path / "b", steps=4, save_every=2), resume=True)
    assert resumed.steps == 4
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert all(torch.isfinite(torch.tensor(l)) for _, l in _losses(tmp_path / "a"))


def test_checkpoint_is_self_describing(tiny_dataset, tmp_path):
    res = train(_cfg(tiny_dataset, tmp_path / "run", steps=2, save_every=1))
    meta = read_checkpoint_meta(tmp_path / "run")
    assert meta["trainer_state"]["step"] == 2
    assert meta["config"]["train"]["name"] == "debug"
    assert "edges" in json.dumps(meta["bins"])
    for f in ("model.safetensors", "optimizer.pt", "rng.pt", "versions.json", "tokenizer"):
        assert (res.checkpoint / f).exists(), f
    # only `keep_checkpoints` step dirs remain, no temporary leftovers
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["latest.json", "step_0000001", "step_0000002"]
    assert "device" not in json.dumps(meta["trainer_state"])
    assert (tmp_path / "run" / "loss_curve.png").exists()


def test_non_finite_loss_stops_and_keeps_last_good(tiny_dataset, tmp_path):
    def hook(step, loss):
        return loss * float("nan") if step == 2 else loss

    with pytest.raises(TrainingError, match="non-finite loss.*step 2"):
        train(_cfg(tiny_dataset, tmp_path / "run", steps=4, save_every=1), loss_hook=hook)
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_0000002"
    assert read_checkpoint_meta(ckpt)["trainer_state"]["step"] == 2


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    d = tmp_path / "checkpoints" / "step_0000001"
    d.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"dir": "step_0000001", "step": 1}))
    with pytest.raises(CheckpointError, match="incomplete"):
        read_checkpoint_meta(tmp_path)


def test_unknown_config_suggests_names():
    from posevla.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean stage1-tiny"):
        get_config("stage1-tiy")
