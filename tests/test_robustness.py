"""Training loses nothing: bad output folders and full disks are named, damaged checkpoints name their file, a
diverged step never leaves a ruined `latest`, killed runs (also mid-checkpoint) resume exactly, leftovers go."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posevla.errors import CheckpointError, TrainingError
from posevla.training.checkpoint import load_checkpoint, resolve_checkpoint
from posevla.training.config import DataConfig, OptimConfig
from posevla.training.configs import get_config
from posevla.training.trainer import train


def _cfg(data, out, **kw):
    return dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(data)), out_dir=str(out), **kw)


def _losses(out):
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "run"
    train(_cfg(tiny_dataset, out, steps=2, save_every=1))
    return out


def test_output_folder_is_a_file_or_not_writable(tiny_dataset, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TrainingError, match=r"--out-dir .*file is a file, not a folder"):
        train(_cfg(tiny_dataset, f))
    real = Path.write_text

    def refuse(self, *a, **k):
        if self.name.startswith(".write_test_"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(TrainingError, match=r"cannot write to --out-dir .*ro: Permission denied"):
        train(_cfg(tiny_dataset, tmp_path / "ro"))


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_latest(tiny_dataset, tmp_path, monkeypatch):
    import posevla.training.checkpoint as ck

    real, calls = ck.save_file, {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointError, match=r"(?s)step 2 .*No space left on device.*step_0000001 stays latest"):
        train(_cfg(tiny_dataset, tmp_path / "run", steps=4, save_every=1))
    assert resolve_checkpoint(tmp_path / "run").name == "step_0000001"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))


def test_damaged_checkpoint_files_are_named(run, tiny_dataset, tmp_path):
    good = resolve_checkpoint(run)

    def copy(name):
        out = tmp_path / name
        shutil.copytree(run, out)
        return out, out / "checkpoints" / good.name

    # truncated optimizer.pt: the manifest names it
    out, d = copy("trunc")
    (d / "optimizer.pt").write_bytes((d / "optimizer.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"optimizer.pt has 100 bytes, manifest.json says"):
        train(_cfg(tiny_dataset, out, steps=3, save_every=1), resume=True)
    # without a manifest (an older checkpoint) the reader names it too; an empty rng.pt likewise
    (d / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer.pt cannot be read .*truncated or corrupt"):
        train(_cfg(tiny_dataset, out, steps=3, save_every=1), resume=True)
    out, d = copy("rng")
    (d / "manifest.json").unlink()
    (d / "rng.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"rng.pt cannot be read"):
        train(_cfg(tiny_dataset, out, steps=3, save_every=1), resume=True)
    # a trainer_state.json without 'step'
    out, d = copy("state")
    (d / "manifest.json").unlink()
    state = json.loads((d / "trainer_state.json").read_text())
    del state["step"]
    (d / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"trainer_state.json: 'step' must be a non-negative integer, got None"):
        load_checkpoint(out)
    # a model.safetensors changed behind the manifest's back
    out, d = copy("weights")
    with open(d / "model.safetensors", "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match its SHA-256"):
        load_checkpoint(out)


def test_a_cut_off_metrics_line_is_dropped_and_reported(run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "cut"
    shutil.copytree(run, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a run killed while writing its next line
    train(_cfg(tiny_dataset, out, steps=3, save_every=1), resume=True)
    assert "dropped 1 unreadable line(s) (3)" in capsys.readouterr().out
    assert [s for s, _ in _losses(out)] == [1, 2, 3]


def test_leftovers_of_killed_runs_are_cleaned_and_reported(run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "left"
    shutil.copytree(run, out)
    ck = out / "checkpoints"
    stale = ck / ".tmp_step_0000003_999999999"  # a process id that does not run
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    unpromoted = ck / "step_0000009"  # written, never promoted (its next step never came)
    shutil.copytree(resolve_checkpoint(out), unpromoted)
    train(_cfg(tiny_dataset, out, steps=3, save_every=1), resume=True)
    text = capsys.readouterr().out
    assert ".tmp_step_0000003_999999999 (0.0 MB)" in text and "step_0000009" in text
    assert not stale.exists() and not unpromoted.exists()


def test_a_diverging_run_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    """--optim.lr 1e6: the first update ruins the weights (the loss of step 1 is NaN), so the checkpoint written
    after that update never becomes `latest`; nothing ruined is left to resume from."""
    cfg = _cfg(tiny_dataset, tmp_path / "div", steps=6, save_every=1,
               optim=OptimConfig(lr=1e6, min_lr=1e6, warmup_steps=0))
    with pytest.raises(TrainingError, match=r"(?s)non-finite loss \(nan\) at step 1.*step 1, whose weights gave this "
                                            r"loss, was discarded"
                                            r".*No good checkpoint exists yet"):
        train(cfg)
    assert list((tmp_path / "div" / "checkpoints").iterdir()) == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "div")


KILL_SCRIPT = """
import dataclasses, sys, torch
torch.set_num_threads(1)
from posevla.training.config import DataConfig
from posevla.training.configs import get_config
from posevla.training.trainer import train
cfg = dataclasses.replace(get_config("debug"), data=DataConfig(train_data=sys.argv[1]), out_dir=sys.argv[2],
                          steps=int(sys.argv[3]), save_every=1, log_every=1)
train(cfg, resume=True)
"""


def _killed_run(data: Path, out: Path, steps: int, *, during_checkpoint: bool, after_s: float = 0.0) -> None:
    """Start the run in a subprocess and SIGKILL it: when a checkpoint folder is being written, or after `after_s`."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data), str(out), str(steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = out / "checkpoints"
    start = time.time()
    deadline = start + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if during_checkpoint and ck.is_dir() and any(p.name.startswith(".tmp_step_") for p in ck.iterdir()):
                break
            if not during_checkpoint and after_s and time.time() - start > after_s:
                break
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_killed_runs_resume_exactly(tiny_dataset, tmp_path):
    """kill -9 while a checkpoint is being written, and at a random moment: the resumed run's losses equal an
    uninterrupted run's, and nothing the kill left behind survives the restart."""
    straight = tmp_path / "straight"
    train(_cfg(tiny_dataset, straight, steps=6, save_every=1, log_every=1))
    out = tmp_path / "killed"
    killed_mid_checkpoint = 0
    for k in range(3):
        _killed_run(tiny_dataset, out, 6, during_checkpoint=k < 2, after_s=4.0)
        killed_mid_checkpoint += any(p.name.startswith(".tmp_step_") for p in (out / "checkpoints").iterdir()) \
            if (out / "checkpoints").is_dir() else 0
    assert killed_mid_checkpoint >= 1, "no kill landed inside a checkpoint write"
    train(_cfg(tiny_dataset, out, steps=6, save_every=1, log_every=1), resume=True)
    assert _losses(out) == _losses(straight)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp_step_")]
