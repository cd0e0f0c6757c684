"""What the corpus cases break: small datasets and runs, made once per session, copied into each case's folder."""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BOP_FIXTURE = FIXTURES / "bop_tiny"  # rendered in the BOP layout (fixtures/make_bop_fixture.py)
LEROBOT_FIXTURE = FIXTURES / "lerobot_v3_tiny"  # written with pyarrow in the LeRobot v3 layout (make_lerobot_v3_tiny.py)
LEGACY = FIXTURES / "legacy_checkpoints"  # checkpoints of the code before the restructure (no manifest)


class Workspace:
    """Lazily built inputs under `root`; every case gets ``case_dir(id)`` and copies what it mutates."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def case_dir(self, case_id: str) -> Path:
        d = self.root / "cases" / re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def _built(self, name: str, build) -> Path:
        """``root/name`` made by ``build(path)`` once (a marker beside it lets a reused workspace skip the work)."""
        path, done = self.root / name, self.root / f".{name}.done"
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
        return path

    @staticmethod
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    # -- datasets ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def scenes(self) -> Path:
        """Two generated tabletop scenes (3 views, 96x64) in the Omni3D json layout."""
        from posevla.sim.tabletop import generate_dataset

        return self._built("scenes", lambda p: generate_dataset(p, 2, seed=3, width=96, height=64, workers=1,
                                                                progress=False))

    @functools.cached_property
    def lerobot(self) -> Path:
        """Three episodes of a moving 16x12 camera written by our LeRobot v3 writer (`corpus.lerobot`)."""
        from posevla.data.formats.lerobot import write_lerobot_v3

        from .lerobot import CONFIG, make_episodes

        return self._built("lerobot", lambda p: write_lerobot_v3(p, make_episodes(), fps=10, robot_type="sim_arm",
                                                                 camera_config=CONFIG))

    # -- runs -------------------------------------------------------------------------------------------------
    @functools.cached_property
    def token_run(self) -> Path:
        """A 2-step `debug` stage-1 run on `scenes` (checkpoints at steps 1 and 2, with manifests)."""
        from posevla.training.config import DataConfig
        from posevla.training.configs import get_config
        from posevla.training.trainer import train

        scenes = self.scenes
        return self._built("token_run", lambda out: train(dataclasses.replace(
            get_config("debug"), data=DataConfig(train_data=str(scenes)), out_dir=str(out), steps=2, save_every=1,
            progress=False)))

    @functools.cached_property
    def action_run(self) -> Path:
        """A 2-step `posttrain-tiny` run on the LeRobot-written fixture (from scratch)."""
        from posevla.data.action_space import ActionConfig
        from posevla.training.config import DataConfig
        from posevla.training.configs import get_config
        from posevla.training.trainer import train

        cfg = get_config("posttrain-tiny")
        return self._built("action_run", lambda out: train(dataclasses.replace(
            cfg, init_checkpoint=None, data=DataConfig(train_data=str(LEROBOT_FIXTURE)), out_dir=str(out), steps=2,
            batch_size=2, save_every=1, log_every=1, optim=dataclasses.replace(cfg.optim, warmup_steps=1),
            progress=False, action=ActionConfig(constant_dims=("z", "R20", "R21")),
        )))

    def step_dir(self, run: Path) -> Path:
        from posevla.training.checkpoint import resolve_checkpoint

        return resolve_checkpoint(run)

    @functools.cached_property
    def policy(self) -> Any:
        from posevla.policy import Policy

        return Policy.from_checkpoint(self.action_run, device="cpu", precision="fp32")

    @functools.cached_property
    def observation(self) -> dict[str, Any]:
        """A valid observation of the fixture's first frame, in the form an environment returns it."""
        from posevla.data.actions import ActionDataset
        from posevla.data.formats.lerobot import load_lerobot_v3

        p = self.policy
        return dict(ActionDataset(load_lerobot_v3(LEROBOT_FIXTURE), p.action_cfg, p.spec, p.stats).observation(0, 0))
