"""Scripted-expert demonstrations of a registered simulator, written as a LeRobot v3 dataset.

``write_expert_demos(root, ExpertDemoConfig(tasks=("pick-place-v3", "reach-v3"), episodes_per_task=10))``
runs the simulator's scripted expert (``env.expert_action``; MetaWorld: its own ``metaworld.policies``) for
every task, keeps only successful episodes and writes them with
:func:`posevla.data.formats.lerobot.write_lerobot_v3`. The environment comes from the env registry
(:func:`posevla.sim.make_env`), so any simulator whose environments have a scripted expert, ``fps``,
``cameras``, ``tcp_offset`` and ``robot_type`` records demos through this module.

* **Deterministic.** Attempt ``k`` of a task resets the environment with seed ``config.seed + k``
  (MetaWorld: object/goal placement and instruction template follow from it, see :mod:`posevla.sim.metaworld`).
  Attempts continue until ``episodes_per_task`` successes or ``max_attempts`` attempts; failed seeds
  are counted and listed in the report, never written.
* **Truncation.** An episode ends ``frames_after_success`` steps after the first step that reports
  success (or at ``max_steps``, which is a failure).
* **Frames.** Frame ``t`` holds the observation the expert saw and the action it took there
  (``action`` = the expert's 4-D MetaWorld action), plus ``next.reward`` and ``next.success`` of that
  transition. Features: every key of the observation (images, metric depth, per-frame ``K`` and
  ``T_world_cam`` of each camera, ``observation.state`` / ``ee_pose`` / ``gripper`` / ``joints``) and
  ``observation.environment_state`` (MetaWorld's privileged 39-D state, float32).
* **Camera config.** Cameras in view order, the environment's TCP offset (MetaWorld: 4.5 cm along the
  hand's x axis, :data:`posevla.sim.metaworld.TCP_OFFSET`), depth PNGs in millimetres, gripper 1 = open.

Next to the dataset's metadata, :data:`REPORT_FILE` records the simulator, the configuration, the
(task, seed) of every written episode, the failures and the throughput; ``posevla eval sim`` reads it to
refuse evaluation seeds that were training demos.

All episodes are held in memory until they are written (about 35 MB per 100-frame episode at 128x128
with 3 cameras); generate large sets as several datasets.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.formats.lerobot import CameraConfig, Episode, write_lerobot_v3
from posevla.errors import ConfigError, DataError
from posevla.sim import check_int, env_module, make_env, resolve_task

__all__ = [
    "REPORT_FILE",
    "ExpertDemoConfig",
    "DemoReport",
    "record_expert_episode",
    "generate_episodes",
    "write_expert_demos",
    "demo_seeds",
]

#: Written next to the dataset's metadata (the name predates other simulators; kept for existing datasets).
REPORT_FILE = "meta/metaworld_demos.json"


@dataclass(frozen=True)
class ExpertDemoConfig:
    """What to generate.

    Attributes:
        env: the simulator (a key of :data:`posevla.sim.ENVS`).
        tasks: the simulator's task names (MetaWorld v3: ``reach-v3``, ...; the ``-v3`` may be left out).
        episodes_per_task: successful episodes wanted per task.
        seed: seed of a task's first attempt; attempt k uses ``seed + k``.
        image_size: ``int`` or ``(height, width)``.
        cameras: dataset camera -> simulator camera (MetaWorld default: head=corner, side=corner2,
            wrist=gripperPOV).
        depth: store metric depth per camera.
        max_steps: step limit of one attempt (at most 500).
        frames_after_success: steps recorded after the first success.
        max_attempts: attempts per task before giving up (default ``2 * episodes_per_task + 5``).
    """

    env: str = "metaworld"
    tasks: tuple[str, ...] = ("pick-place-v3", "reach-v3")
    episodes_per_task: int = 10
    seed: int = 0
    image_size: int | tuple[int, int] = 128
    cameras: dict[str, str] | tuple[str, ...] | None = None
    depth: bool = True
    max_steps: int = 500
    frames_after_success: int = 10
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if not tasks:
            raise ConfigError("--tasks (ExpertDemoConfig.tasks) is empty: name at least one task, e.g. 'reach-v3'")
        object.__setattr__(self, "tasks", tuple(resolve_task(self.env, t) for t in tasks))
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"--tasks (ExpertDemoConfig.tasks) has duplicates: {list(self.tasks)}")
        check_int(self.seed, "--seed (ExpertDemoConfig.seed)", lo=0, hi=2**32 - 1)
        check = getattr(env_module(self.env), "check_options", None)
        if check is not None:  # image size and camera names, before minutes of simulation
            check(image_size=self.image_size, cameras=self.cameras)
        check_int(self.episodes_per_task, "--episodes-per-task (ExpertDemoConfig.episodes_per_task)", lo=1)
        check_int(self.frames_after_success, "--frames-after-success (ExpertDemoConfig.frames_after_success)", lo=0)
        check_int(self.max_steps, "--max-steps (ExpertDemoConfig.max_steps)", lo=1)
        if self.max_attempts is not None:
            check_int(self.max_attempts, "--max-attempts (ExpertDemoConfig.max_attempts)", lo=self.episodes_per_task)

    @property
    def attempts_per_task(self) -> int:
        """The attempt limit per task."""
        return self.max_attempts if self.max_attempts is not None else 2 * self.episodes_per_task + 5


@dataclass
class DemoReport:
    """Outcome of a generation run (also written to ``meta/metaworld_demos.json``).

    Attributes:
        per_task: task -> {successes, attempts, failures, failed_seeds, frames}.
        episodes: per written episode, in dataset order: {episode_index, task, seed, instruction, frames}.
        seconds: wall-clock time of simulation and rendering (writing excluded).
        env_steps: simulator steps taken, failed attempts included.
        root: the dataset folder, when written.
        env: the simulator's name, fps, cameras (and their simulator names), TCP offset and robot type.
    """

    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    env_steps: int = 0
    write_seconds: float = 0.0
    root: str | None = None
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return sum(v["successes"] for v in self.per_task.values())

    @property
    def failures(self) -> int:
        return sum(v["failures"] for v in self.per_task.values())

    @property
    def demos_per_min(self) -> float:
        """Successful demos per minute of generation (simulation + rendering, writing excluded)."""
        return 60.0 * self.successes / self.seconds if self.seconds > 0 else float("nan")

    @property
    def steps_per_s(self) -> float:
        """Environment steps per second including rendering of every camera."""
        return self.env_steps / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(successes=self.successes, failures=self.failures, demos_per_min=self.demos_per_min,
                 steps_per_s=self.steps_per_s)
        return d


def record_expert_episode(env: Any, seed: int, *, frames_after_success: int = 10) -> tuple[Any | None, int]:
    """Run the scripted expert of ``env`` (e.g. a :class:`posevla.sim.metaworld.MetaWorldEnv`) from ``seed``.

    Returns:
        ``(episode, steps)``: the :class:`posevla.data.formats.lerobot.Episode` if the expert succeeded (else
        None), and the number of environment steps taken.
    """
    obs = env.reset(seed)
    frames: list[dict[str, Any]] = []
    actions, rewards, successes = [], [], []
    success_at: int | None = None
    steps = 0
    for t in range(env.max_steps):
        action = env.expert_action(obs)
        res = env.step(action)
        steps += 1
        frames.append(obs)
        actions.append(action.astype(np.float32))
        rewards.append(res.reward)
        successes.append(res.success)
        obs = res.obs
        if res.success and success_at is None:
            success_at = t
        if success_at is not None and t - success_at >= frames_after_success:
            break
        if res.truncated:
            break
    if success_at is None:
        return None, steps
    feats: dict[str, np.ndarray] = {}
    for key in frames[0]:
        if key == "task":
            continue
        arr = np.stack([f[key] for f in frames])
        feats[key] = arr.astype(np.float32) if key == "observation.environment_state" else arr
    feats["action"] = np.stack(actions)
    feats["next.reward"] = np.asarray(rewards, np.float32)[:, None]
    feats["next.success"] = np.asarray(successes, bool)[:, None]
    return Episode(task=frames[0]["task"], features=feats), steps


def generate_episodes(config: ExpertDemoConfig, *, progress: bool = False) -> tuple[list[Any], DemoReport]:
    """Generate the successful expert episodes of ``config`` in memory (see the module docstring)."""
    report = DemoReport()
    episodes: list[Any] = []
    t0 = time.perf_counter()
    for task in config.tasks:
        env = make_env(config.env, task, image_size=config.image_size, cameras=config.cameras, depth=config.depth,
                       max_steps=config.max_steps)
        stats = {"successes": 0, "attempts": 0, "failures": 0, "failed_seeds": [], "frames": 0}
        try:
            for k in range(config.attempts_per_task):
                if stats["successes"] == config.episodes_per_task:
                    break
                seed = config.seed + k
                ep, steps = record_expert_episode(env, seed, frames_after_success=config.frames_after_success)
                report.env_steps += steps
                stats["attempts"] += 1
                if ep is None:
                    stats["failures"] += 1
                    stats["failed_seeds"].append(seed)
                else:
                    stats["successes"] += 1
                    stats["frames"] += ep.num_frames
                    report.episodes.append({"episode_index": len(episodes), "task": task, "seed": seed,
                                            "instruction": ep.task, "frames": ep.num_frames})
                    episodes.append(ep)
                if progress:
                    print(f"[{config.env} demos] {task} seed {seed}: {'ok' if ep is not None else 'FAILED'} "
                          f"({steps} steps, {stats['successes']}/{config.episodes_per_task})", flush=True)
            report.env = {"name": config.env, "fps": int(env.fps), "cameras": list(env.cameras),
                          "camera_sources": dict(getattr(env, "camera_sources", {})),
                          "tcp_offset": [float(x) for x in env.tcp_offset], "robot_type": env.robot_type}
        finally:
            env.close()
        report.per_task[task] = stats
    report.seconds = time.perf_counter() - t0
    return episodes, report


def write_expert_demos(
    root: str | Path, config: ExpertDemoConfig, *, overwrite: bool = False, progress: bool = False
) -> DemoReport:
    """Generate ``config``'s expert demos and write them as a LeRobot v3 dataset at ``root``.

    Raises:
        ConfigError: bad configuration, or no task produced a single successful episode.
        DataError: from the writer (e.g. ``root`` exists and ``overwrite`` is False).
    """
    root = Path(root)
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        # fail before minutes of simulation, with the writer's own wording
        raise DataError("the target exists and is not empty", file=str(root),
                        fix="choose a new folder, or pass overwrite=True (--overwrite on the command line)")
    episodes, report = generate_episodes(config, progress=progress)
    if not episodes:
        attempts = sum(v["attempts"] for v in report.per_task.values())
        raise ConfigError(
            f"the scripted expert succeeded in none of {attempts} attempts for tasks {list(config.tasks)}; "
            "raise max_steps or max_attempts"
        )
    env = report.env
    cam_cfg = CameraConfig(cameras=tuple(env["cameras"]), tcp_offset=tuple(env["tcp_offset"]), depth_scale=0.001,
                           gripper_open_positive=True)
    t0 = time.perf_counter()
    write_lerobot_v3(
        root, episodes, fps=env["fps"], robot_type=env["robot_type"], camera_config=cam_cfg, overwrite=overwrite
    )
    report.write_seconds = time.perf_counter() - t0
    report.root = str(root)
    out = report.to_dict()
    out["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    out["config"]["cameras"] = env["camera_sources"] or env["cameras"]
    (root / REPORT_FILE).write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
    return report


def demo_seeds(dataset_root: str | Path) -> set[tuple[str, int]] | None:
    """The (task, seed) of every episode of a dataset written here, or None if it has no :data:`REPORT_FILE`."""
    report = Path(dataset_root) / REPORT_FILE
    if not report.is_file():
        return None
    return {(e["task"], int(e["seed"])) for e in json.loads(report.read_text()).get("episodes", [])}
