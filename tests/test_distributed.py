"""torchrun with 2 gloo ranks on the CPU: DDP and FSDP2 train on the global batch exactly as one process does,
a killed rank's run resumes exactly, and checkpoints reshard between world sizes.

Each launch starts real ranks (`torch.distributed.run`, the module behind ``torchrun``) running
``python -m posevla.cli train``; the one-process reference runs in the test process. fp32 throughout, so the
loss of every step agrees to 1e-5 (float summation order is all that differs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posevla.errors import ConfigError
from posevla.training.checkpoint import load_checkpoint
from posevla.training.config import DataConfig
from posevla.training.configs import get_config
from posevla.training.distributed import DistContext, RankShare, batch_rows, setup
from posevla.training.trainer import train

LEROBOT = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
TOL = 1e-5


def _token_args(data: Path, out: Path, steps: int = 4, save_every: int = 2) -> list[str]:
    return ["debug", "--data.train-data", str(data), "--out-dir", str(out), "--steps", str(steps),
            "--save-every", str(save_every), "--log-every", "1", "--precision", "fp32", "--num-threads", "1"]


def _action_args(out: Path, steps: int = 3) -> list[str]:
    return ["posttrain-tiny", "--init-checkpoint", "None", "--data.train-data", str(LEROBOT), "--out-dir", str(out),
            "--steps", str(steps), "--batch-size", "2", "--save-every", str(steps), "--log-every", "1",
            "--precision", "fp32", "--num-threads", "1", "--optim.warmup-steps", "1"]


def _torchrun(args: list[str], *, ranks: int = 2, extra: tuple[str, ...] = (), timeout: int = 240
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *extra,
           "-m", "posevla.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def _in_process(args: list[str], *, resume: bool = False):
    import tyro

    base = get_config(args[0])
    cfg = tyro.cli(type(base), default=base, args=args[1:])
    return train(dataclasses.replace(cfg, progress=False), resume=resume)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_losses(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert abs(x["loss"] - y["loss"]) <= TOL, (x["step"], x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * max(1.0, x["grad_norm"]), (x, y)


@pytest.fixture(scope="module")
def token_runs(tiny_dataset, tmp_path_factory):
    """One process, DDP and FSDP2 runs of `debug` (4 steps, global batch 2)."""
    root = tmp_path_factory.mktemp("dist")
    _in_process(_token_args(tiny_dataset, root / "one"))
    _torchrun(_token_args(tiny_dataset, root / "ddp") + ["--parallel", "ddp"])
    _torchrun(_token_args(tiny_dataset, root / "fsdp") + ["--parallel", "fsdp"])
    return root


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(token_runs, parallel):
    _assert_same_losses(token_runs / "one", token_runs / parallel)
    one, dist = _rows(token_runs / "one"), _rows(token_runs / parallel)
    # per-source metrics are gathered over the ranks: the same as one process's
    for x, y in zip(one, dist):
        for name, m in x["sources"].items():
            assert y["sources"][name]["tokens"] == m["tokens"]
            assert abs(y["sources"][name]["loss"] - m["loss"]) <= TOL


def test_distributed_checkpoint_layout_and_loading(token_runs):
    ckpt = token_runs / "fsdp" / "checkpoints" / "step_0000004"
    assert (ckpt / "optimizer" / ".metadata").is_file()
    assert sorted(p.name for p in (ckpt / "optimizer").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "optimizer/.metadata" in manifest and "optimizer/__1_0.distcp" in manifest
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["parallel"] == "fsdp"
    # the consolidated weights load like a one-process checkpoint's, and are the DDP run's (same training)
    fsdp, ddp = load_checkpoint(ckpt), load_checkpoint(token_runs / "ddp")
    a, b = fsdp.build_model().state_dict(), ddp.build_model().state_dict()
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_damaged_sharded_optimizer_state_is_named(token_runs, tmp_path):
    """A cut or missing shard of optimizer/ stops the resume with the file's name (the manifest lists them)."""
    import shutil

    from posevla.errors import CheckpointError

    for damage, match in ((lambda d: (d / "__1_0.distcp").write_bytes(b"cut"), r"optimizer/__1_0.distcp has 3 bytes"),
                          (lambda d: (d / ".metadata").unlink(), r"optimizer/.metadata is missing")):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(token_runs / "fsdp", run)
        damage(run / "checkpoints" / "step_0000004" / "optimizer")
        args = _token_args(Path(json.loads((run / "config.json").read_text())["train"]["data"]["train_data"]), run,
                           steps=5)
        with pytest.raises(CheckpointError, match=match):
            _in_process(args, resume=True)


def test_post_training_on_two_ranks_matches_one_process(tmp_path):
    _in_process(_action_args(tmp_path / "one"))
    for parallel in ("ddp", "fsdp"):
        _torchrun(_action_args(tmp_path / parallel) + ["--parallel", parallel])
        _assert_same_losses(tmp_path / "one", tmp_path / parallel)


def test_killed_rank_resumes_exactly(tiny_dataset, token_runs, tmp_path):
    """Rank 1 is SIGKILLed before step 3; torchrun restarts both ranks, which resume from step 2."""
    res = _torchrun(_token_args(tiny_dataset, tmp_path / "kill", save_every=1)
                    + ["--parallel", "fsdp", "--debug-kill-at-step", "3"], extra=("--max-restarts", "1"))
    out = res.stdout + res.stderr
    assert "torchrun restart 1: resuming" in out and "resumed from" in out
    _assert_same_losses(token_runs / "fsdp", tmp_path / "kill")


def test_checkpoints_reshard_between_world_sizes(tiny_dataset, token_runs, tmp_path):
    # 2 FSDP2 ranks -> 1 process
    _torchrun(_token_args(tiny_dataset, tmp_path / "a", steps=2) + ["--parallel", "fsdp"])
    _in_process(_token_args(tiny_dataset, tmp_path / "a", steps=4), resume=True)
    _assert_same_losses(token_runs / "one", tmp_path / "a")
    # 1 process -> 2 FSDP2 ranks (the positional optimizer state renamed to parameter names)
    _in_process(_token_args(tiny_dataset, tmp_path / "b", steps=2))
    _torchrun(_token_args(tiny_dataset, tmp_path / "b", steps=4) + ["--parallel", "fsdp", "--resume"])
    _assert_same_losses(token_runs / "one", tmp_path / "b")


def test_activation_checkpointing_changes_memory_not_losses(tiny_dataset, token_runs, tmp_path):
    _in_process(_token_args(tiny_dataset, tmp_path / "ac") + ["--activation-checkpointing"])
    _assert_same_losses(token_runs / "one", tmp_path / "ac")


def test_rank_shares_are_the_global_batch(tiny_dataset):
    """Each rank builds only its rows; together they are the one-process batch, row for row."""
    import tyro

    from posevla.training.objectives import make_objective

    for args in (_token_args(tiny_dataset, Path("unused")), _action_args(Path("unused"))):
        base = get_config(args[0])
        cfg = dataclasses.replace(tyro.cli(type(base), default=base, args=args[1:]), batch_size=4)
        obj = make_objective(cfg, log=lambda *_: None)
        obj.load_data()
        bins = obj.bins(None)
        model = obj.build_model(bins, None, None)
        make_batch = obj.batches(model, bins, None)
        full = make_batch(1)
        parts = [RankShare(make_batch, *batch_rows(4, DistContext(rank=r, world_size=2)))(1) for r in range(2)]
        for key in ("prior_draw", "flow_noise", "flow_time", "state", "actions", "pixel_values", "source"):
            if key in full:
                assert torch.equal(torch.cat([p[key] for p in parts]), full[key]), key


def test_setup_refuses_what_cannot_run(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="--parallel is 'none'; pass --parallel ddp"):
        setup("none", torch.device("cpu"), 4)
    with pytest.raises(ConfigError, match=r"--batch-size 3 \(the global batch\) does not divide by the 2 ranks"):
        setup("ddp", torch.device("cpu"), 3)
    with pytest.raises(ConfigError, match="--parallel 'zero3' is unknown"):
        dataclasses.replace(get_config("debug"), parallel="zero3", data=DataConfig(train_data="x"))
