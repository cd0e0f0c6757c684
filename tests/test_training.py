"""CPU smoke runs of the one training loop: train, exact resume, non-finite loss, checkpoint safety."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from posevla.errors import CheckpointError, TrainingError
from posevla.training.checkpoint import load_checkpoint, resolve_checkpoint
from posevla.training.config import DataConfig, ModelChoice
from posevla.training.configs import get_config
from posevla.training.trainer import train


def _cfg(data, out, *, sources=(), num_views=None, num_workers=0, doctor=True, **kw):
    base = get_config("debug")
    data_cfg = DataConfig(train_data=str(data), sources=sources, num_workers=num_workers, doctor=doctor)
    return dataclasses.replace(base, data=data_cfg, model=ModelChoice(num_views=num_views), out_dir=str(out), **kw)


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
    saved = load_checkpoint(tmp_path / "run")
    assert saved.step == 2 and saved.trainer_state["step"] == 2
    assert saved.train.name == "debug" and saved.train == _cfg(tiny_dataset, tmp_path / "run", steps=2, save_every=1)
    assert saved.model.name == "tiny" and saved.expert is None and saved.bins.counts.rot == 72
    conf = json.loads((res.checkpoint / "config.json").read_text())
    assert set(conf) == {"train", "model", "data"} and "categories" in conf["data"]
    for f in ("model.safetensors", "optimizer.pt", "rng.pt", "versions.json", "tokenizer"):
        assert (res.checkpoint / f).exists(), f
    # only `keep_checkpoints` step dirs remain, no temporary leftovers
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["latest.json", "step_0000001", "step_0000002"]
    assert "device" not in json.dumps(saved.trainer_state)
    assert (tmp_path / "run" / "loss_curve.png").exists()


def test_non_finite_loss_stops_and_keeps_last_good(tiny_dataset, tmp_path):
    """A checkpoint becomes `latest` only once the next step's loss is finite: the one written just before a
    non-finite loss is dropped (its weights led there), the one before it stays."""
    def hook(step, loss):
        return loss * float("nan") if step == 2 else loss

    with pytest.raises(TrainingError, match=r"(?s)non-finite loss.*step 2.*step 2, whose weights gave this loss, "
                                            r"was discarded.*step_0000001"):
        train(_cfg(tiny_dataset, tmp_path / "run", steps=4, save_every=1), loss_hook=hook)
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_0000001" and load_checkpoint(ckpt).step == 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest.json", "step_0000001"]
    # the same from the CLI flag, on the last step: the final checkpoint is checked with one more loss
    with pytest.raises(TrainingError, match="non-finite loss.*step 2"):
        train(_cfg(tiny_dataset, tmp_path / "cli", steps=2, save_every=5, debug_nan_at_step=2))
    assert not (tmp_path / "cli" / "checkpoints" / "latest.json").exists()
    assert not list((tmp_path / "cli" / "checkpoints").glob("step_*"))


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    d = tmp_path / "checkpoints" / "step_0000001"
    d.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"dir": "step_0000001", "step": 1}))
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path)


def test_unknown_config_suggests_names():
    from posevla.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean stage1-tiny"):
        get_config("stage1-tiy")


def test_stage2_mixture_resume_is_exact_with_workers(tiny_dataset, tmp_path, capsys):
    """Stage 2 from a stage-1 checkpoint on generated + BOP + LeRobot sources: per-source metrics, and
    2 steps + resume (batches built in a worker process, doctor skipped) == 4 straight in-process steps."""
    from pathlib import Path

    from posevla.data.sources import SourceSpec
    from posevla.training.config import OptimConfig

    fixtures = Path(__file__).parent / "fixtures"
    stage1 = train(_cfg(tiny_dataset, tmp_path / "s1", steps=1, save_every=1))
    sources = (
        SourceSpec("generated", str(tiny_dataset)),
        SourceSpec("bop", str(fixtures / "bop_tiny")),
        SourceSpec("lerobot", str(fixtures / "lerobot_v3_tiny"), stride=1),
    )

    def cfg(out, steps, **kw):
        base = get_config("stage2-tiny")
        return dataclasses.replace(
            base, init_checkpoint=str(stage1.checkpoint), data=DataConfig(sources=sources, **kw), out_dir=str(out),
            steps=steps, batch_size=3, optim=OptimConfig(lr=base.optim.lr, warmup_steps=1), log_every=1,
            save_every=2, progress=False,
        )

    train(cfg(tmp_path / "a", 4))
    assert "data doctor: source 'lerobot:lerobot_v3_tiny' ok" in capsys.readouterr().out
    train(cfg(tmp_path / "b", 2))
    train(cfg(tmp_path / "b", 4, num_workers=1, doctor=False), resume=True)
    assert "data doctor skipped" in capsys.readouterr().out

    def rows(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [(r["step"], r["loss"], r["sources"]) for r in a] == [(r["step"], r["loss"], r["sources"]) for r in b]
    names = {n for r in a for n in r["sources"]}
    assert names == {"generated:" + tiny_dataset.name, "bop:bop_tiny/test", "lerobot:lerobot_v3_tiny"}
    for r in a:  # the per-source means are token-weighted parts of the batch loss
        tot = sum(m["tokens"] for m in r["sources"].values())
        assert sum(m["loss"] * m["tokens"] for m in r["sources"].values()) / tot == pytest.approx(r["loss"], rel=1e-4)
        assert sum(m["samples"] for m in r["sources"].values()) == 3
    resolved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert [s["name"] for s in resolved["data"]["sources"]] == [s.label for s in sources]
    assert load_checkpoint(tmp_path / "a").bins == load_checkpoint(stage1.checkpoint).bins


def test_trainer_refuses_sources_the_doctor_rejects(tiny_dataset, tmp_path):
    import shutil

    from posevla.data.sources import SourceSpec

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    d = json.loads((bad / "dataset.json").read_text())
    d["annotations"][0]["visibility"] = 3.0  # out of [0, 1]
    (bad / "dataset.json").write_text(json.dumps(d))
    cfg = _cfg(tiny_dataset, tmp_path / "run", sources=(SourceSpec("generated", str(tiny_dataset)),
                                                         SourceSpec("generated", str(bad), name="planted")))
    with pytest.raises(TrainingError, match="(?s)'planted'.*label ranges"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_with_fewer_views_initialises_a_three_view_stage(tiny_dataset, tmp_path):
    """`num_views` changes the image slots, not the weights: a 1-view checkpoint starts a 3-view run."""
    one = train(_cfg(tiny_dataset, tmp_path / "one", steps=1, save_every=1, num_views=1))
    assert load_checkpoint(one.checkpoint).model.num_views == 1
    three = train(_cfg(tiny_dataset, tmp_path / "three", steps=1, save_every=1, init_checkpoint=str(one.checkpoint)))
    assert load_checkpoint(three.checkpoint).model.num_views == 3
    assert torch.isfinite(torch.tensor(three.final_loss))
