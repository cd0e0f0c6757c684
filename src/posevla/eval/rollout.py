"""Closed-loop evaluation of chunked policies in any :class:`posevla.sim.ClosedLoopEnv`.

* :func:`rollout` runs one environment for a list of seeds. The policy is called with the current
  observation and returns an action chunk ``(H, A)`` (or a :class:`posevla.sim.PolicyOutput`);
  :class:`posevla.policy.ActionChunker` executes the first ``min(replan_every, H)`` actions open-loop (the
  whole chunk by default), then queries the policy again. An episode ends at the first success
  (``stop_on_success``), when the environment truncates, or after ``max_steps``. Policy latency is measured
  per call.
* :func:`evaluate` does that for several tasks and writes the evaluation folder::

      <out>/eval_card.json    simulator and package versions, seeds, checkpoint hash, chunk/replan
                              settings, per-task and overall success with Wilson 95 % intervals,
                              policy latency p50/p95
      <out>/results.md        the per-task table
      <out>/videos/<task>_seed<k>.mp4   the first episodes of each task

Videos: :mod:`posevla.eval.video`; the card's statistics (Wilson intervals) and versions:
:mod:`posevla.eval.card`. Seeds for evaluation should not overlap those of the training demonstrations
(MetaWorld demos use ``seed, seed + 1, ...``; evaluate from e.g. 100000).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from posevla.errors import ConfigError, DataError
from posevla.eval.card import (
    checkpoint_sha256,
    eval_versions,
    json_default,
    latency_summary,
    results_markdown,
    success_summary,
    wilson_interval,
)
from posevla.eval.video import VIDEO_FORMAT, OverlayFn, video_frame, write_video
from posevla.policy import ActionChunker
from posevla.sim import REPLAN_EVERY, ClosedLoopEnv, Observation, PolicyOutput, check_int

__all__ = [
    "PolicyFn",
    "EpisodeResult",
    "RolloutResult",
    "NonFiniteActionError",
    "rollout",
    "evaluate",
    "random_policy",
]

#: ``policy(obs) -> (H, A) array | (A,) array | PolicyOutput``. An optional ``policy.reset()`` is
#: called at the start of every episode.
PolicyFn = Callable[[Observation], Any]
#: ``overlay(head_image, obs, output) -> image``: draws on a copy of the head view for videos.


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------


@dataclass
class EpisodeResult:
    """One closed-loop episode.

    Attributes:
        task, seed: what was run.
        success: solved before the episode ended.
        steps: environment steps taken.
        success_step: the step (1-based count) at which success was first reported, or None.
        policy_calls: how often the policy was queried.
        latencies_s: wall-clock seconds of every policy call.
        total_reward: sum of the environment's rewards.
        instruction: the episode's instruction (``obs["task"]``), if the environment gives one.
        video: path of the episode's video, if one was written.
        error: why the episode ended early as a failure (non-finite actions from the policy, which are
            never sent to the simulator, or an exception inside the simulator), else None.
    """

    task: str
    seed: int
    success: bool
    steps: int
    success_step: int | None
    policy_calls: int
    latencies_s: list[float] = field(default_factory=list, repr=False)
    total_reward: float = 0.0
    instruction: str | None = None
    video: str | None = None
    error: str | None = None


@dataclass
class RolloutResult:
    """All episodes of one task, with the chunk settings they ran under."""

    task: str
    episodes: list[EpisodeResult]
    replan_every: int | None
    max_steps: int
    chunk_sizes: list[int] = field(default_factory=list, repr=False)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def rate(self) -> float:
        return self.successes / len(self.episodes) if self.episodes else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, len(self.episodes))

    @property
    def latencies_s(self) -> list[float]:
        return [x for e in self.episodes for x in e.latencies_s]

    def summary(self) -> dict[str, Any]:
        """Success summary + mean steps of successful episodes + latency + chunk sizes seen."""
        out = success_summary(self.successes, len(self.episodes))
        steps = [e.success_step for e in self.episodes if e.success and e.success_step is not None]
        out["mean_steps_to_success"] = float(np.mean(steps)) if steps else None
        out["seeds"] = [e.seed for e in self.episodes]
        out["latency"] = latency_summary(self.latencies_s)
        out["chunk_horizon"] = sorted(set(self.chunk_sizes))
        out["failed_with_error"] = [{"seed": e.seed, "error": e.error} for e in self.episodes if e.error]
        return out


# ----------------------------------------------------------------------------------------------
# policies and drawing helpers
# ----------------------------------------------------------------------------------------------


def random_policy(
    action_dim: int, *, horizon: int = 1, seed: int = 0, low: float = -1.0, high: float = 1.0
) -> PolicyFn:
    """Uniform random action chunks ``(horizon, action_dim)`` in ``[low, high]`` (a 0 % baseline)."""
    action_dim = check_int(action_dim, "action_dim", lo=1)
    horizon = check_int(horizon, "horizon", lo=1)
    rng = np.random.default_rng(seed)

    def policy(obs: Observation) -> np.ndarray:
        return rng.uniform(low, high, size=(int(horizon), int(action_dim))).astype(np.float32)

    return policy




# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------


def _seed_list(episodes: int | None, seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        episodes = check_int(episodes, "episodes (with a first seed)", lo=1)
        return [int(seeds) + i for i in range(int(episodes))]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ConfigError(f"seeds must be a first seed (int) or a non-empty list of ints, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ConfigError(f"seeds must be ints, got {s!r} in {list(seeds)!r}")
        out.append(int(s))
    if episodes is not None and episodes != len(out):
        raise ConfigError(f"episodes={episodes} but {len(out)} seeds were given; pass one seed per episode")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds repeat: {out}; every episode needs its own seed")
    return out


class NonFiniteActionError(DataError):
    """The policy produced NaN/inf actions; the rollout records the episode as failed and goes on."""


def _as_output(out: Any, action_dim: int, task: str, seed: int, step: int) -> PolicyOutput:
    """A policy's raw output (`PolicyOutput`, a `Policy.infer` dict or an array) as a validated `PolicyOutput`."""
    if isinstance(out, Mapping) and "actions" in out:
        out = PolicyOutput(actions=out["actions"], info={k: v for k, v in out.items() if k != "actions"})
    elif not isinstance(out, PolicyOutput):
        out = PolicyOutput(actions=out)
    try:
        a = np.asarray(out.actions, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros((0,))
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 2 and a.shape[0] >= 1 and a.shape[1] == action_dim and not np.all(np.isfinite(a)):
        raise NonFiniteActionError(
            f"the policy returned non-finite actions (NaN/inf) in a chunk of shape {a.shape}; not sent to the simulator",
            record=f"task {task} seed {seed} step {step}", field="actions",
            fix="check the checkpoint's norm stats and the observation (Policy.infer validates both)",
        )
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != action_dim:
        raise DataError(
            f"the policy returned actions of shape {np.shape(out.actions)}"
            + ("" if a.ndim != 2 or a.shape[1] != action_dim else " with non-finite values")
            + f"; expected a finite chunk (H, {action_dim}) with H >= 1 or one action ({action_dim},)",
            record=f"task {task} seed {seed} step {step}", field="actions",
            fix="return the action chunk in the environment's action space (de-normalised)",
        )
    out.actions = a
    return out


def rollout(
    env: ClosedLoopEnv,
    policy_fn: PolicyFn,
    *,
    episodes: int | None = None,
    seeds: int | Sequence[int] = 0,
    max_steps: int | None = None,
    replan_every: int | None = REPLAN_EVERY,
    stop_on_success: bool = True,
    video_dir: str | Path | None = None,
    videos: int = 0,
    video_fps: int = 30,
    overlay_fn: OverlayFn | None = None,
    progress: bool = False,
) -> RolloutResult:
    """Run ``policy_fn`` closed-loop in ``env`` for every seed.

    Args:
        env: the environment (e.g. :func:`posevla.sim.metaworld.make`).
        policy_fn: ``obs -> (H, A) | (A,) | PolicyOutput``; ``policy_fn.reset()`` is called before each
            episode when it exists.
        episodes: number of episodes; with an int ``seeds`` the seeds are ``seeds, seeds + 1, ...``.
        seeds: first seed, or one seed per episode.
        max_steps: step limit per episode (default and maximum: ``env.max_steps``).
        replan_every: actions executed from each chunk before re-querying (fewer if the chunk is shorter);
            None = the whole chunk (:data:`posevla.sim.REPLAN_EVERY`). `posevla.policy.ActionChunker` executes.
        stop_on_success: end an episode at its first success (a success is final either way).
        video_dir: where the videos go; required when ``videos > 0``.
        videos: how many of the first episodes to record.
        video_fps: frame rate of the videos.
        overlay_fn: draws on the head view of each video frame (e.g. :func:`waypoint_overlay`).
        progress: print one line per episode.
    """
    seed_list = _seed_list(episodes, seeds)
    if replan_every is not None:
        replan_every = check_int(replan_every, "replan_every", lo=1)
    limit = int(env.max_steps)
    max_steps = limit if max_steps is None else check_int(max_steps, "max_steps (env limit)", lo=1, hi=limit)
    videos = check_int(videos, "videos", lo=0)
    if videos and video_dir is None:
        raise ConfigError("videos > 0 needs a video_dir to write them to")
    head = env.cameras[0] if env.cameras else None

    result = RolloutResult(task=env.task_name, episodes=[], replan_every=replan_every, max_steps=max_steps)
    for e, seed in enumerate(seed_list):
        record = e < videos
        obs = env.reset(seed)
        if record and (head is None or f"observation.images.{head}" not in obs):
            raise ConfigError(f"cannot record videos: the environment gives no images of camera {head!r}")
        frames: list[np.ndarray] = []
        instruction = obs.get("task") if isinstance(obs.get("task"), str) else None
        ep = EpisodeResult(task=env.task_name, seed=seed, success=False, steps=0, success_step=None,
                           policy_calls=0, instruction=instruction)
        chunker = ActionChunker(
            policy_fn, replan_every,
            to_output=lambda raw, ep=ep: _as_output(raw, env.action_dim, env.task_name, seed, ep.steps),
        )
        chunker.reset()  # calls policy_fn.reset() when it has one
        while ep.steps < max_steps:
            try:
                action = chunker(obs)
            except NonFiniteActionError as exc:  # recorded as a failed episode; the evaluation goes on
                ep.error = str(exc)
                break
            finally:
                ep.policy_calls, ep.latencies_s = chunker.queries, list(chunker.latencies_s)
            if chunker.queried:
                result.chunk_sizes.append(int(chunker.last_output.actions.shape[0]))
            if record:
                img = obs[f"observation.images.{head}"]
                if overlay_fn is not None:
                    img = np.asarray(overlay_fn(img.copy(), obs, chunker.last_output), np.uint8)
                caption = f"{env.task_name} seed {seed} step {ep.steps}"
                frames.append(video_frame(obs, env.cameras, img, caption))
            try:
                res = env.step(action)
            except Exception as exc:  # a simulator crash fails this episode, not the evaluation
                ep.error = f"the environment raised at step {ep.steps}: {type(exc).__name__}: {exc}"
                break
            ep.steps += 1
            ep.total_reward += float(res.reward)
            obs = res.obs
            if res.success and not ep.success:
                ep.success, ep.success_step = True, ep.steps
            if (ep.success and stop_on_success) or res.truncated:
                break
        if record and frames:
            img = obs[f"observation.images.{head}"]
            caption = f"{env.task_name} seed {seed} step {ep.steps}" + (" SUCCESS" if ep.success else " fail")
            frames.append(video_frame(obs, env.cameras, img, caption))
            ep.video = str(write_video(Path(video_dir) / f"{env.task_name}_seed{seed}", frames, video_fps))
        result.episodes.append(ep)
        if progress:
            outcome = "success" if ep.success else ("error: " + ep.error if ep.error else "fail")
            print(f"[rollout] {env.task_name} seed {seed}: {outcome} after {ep.steps} steps, "
                  f"{ep.policy_calls} policy calls", flush=True)
    return result




def evaluate(
    make_env: Callable[[str], ClosedLoopEnv],
    policy_fn: PolicyFn,
    *,
    tasks: Sequence[str],
    episodes_per_task: int,
    seeds: int | Sequence[int] = 100_000,
    max_steps: int | None = None,
    replan_every: int | None = REPLAN_EVERY,
    out_dir: str | Path | None = None,
    videos_per_task: int = 1,
    video_fps: int = 30,
    overlay_fn: OverlayFn | None = None,
    env_name: str = "metaworld",
    policy_name: str = "policy",
    checkpoint: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``policy_fn`` on every task and return (and, with ``out_dir``, write) the eval card.

    Args:
        make_env: ``task -> environment``; each environment is closed after its task.
        policy_fn, max_steps, replan_every, overlay_fn, video_fps: as in :func:`rollout`.
        tasks: task names passed to ``make_env``.
        episodes_per_task: episodes per task.
        seeds: first seed (each task uses ``seeds, seeds + 1, ...``) or one list used for every task.
        out_dir: folder for ``eval_card.json``, ``results.md`` and ``videos/``.
        videos_per_task: episodes recorded per task (needs ``out_dir``).
        env_name: simulator name written into the card.
        policy_name: a label for the policy (e.g. the run name).
        checkpoint: checkpoint file or directory; its SHA-256 goes into the card.
        extra: more json-serialisable facts to record (e.g. the training config name).
    """
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    if replan_every is not None:
        replan_every = check_int(replan_every, "replan_every", lo=1)
    episodes_per_task = check_int(episodes_per_task, "episodes_per_task", lo=1)
    if videos_per_task and out_dir is None:
        videos_per_task = 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt = None if checkpoint is None else {"path": str(checkpoint), "sha256": checkpoint_sha256(checkpoint)}
    t0 = time.perf_counter()
    results: list[RolloutResult] = []
    simulator = {}
    for task in tasks:
        env = make_env(task)
        try:
            simulator = {"env_class": f"{type(env).__module__}.{type(env).__qualname__}", "fps": int(env.fps),
                         "action_dim": int(env.action_dim), "cameras": list(env.cameras)}
            results.append(rollout(
                env, policy_fn, episodes=episodes_per_task, seeds=seeds, max_steps=max_steps,
                replan_every=replan_every, video_dir=None if out is None else out / "videos",
                videos=videos_per_task, video_fps=video_fps, overlay_fn=overlay_fn, progress=progress,
            ))
        finally:
            env.close()
    wall = time.perf_counter() - t0
    all_lat = [x for r in results for x in r.latencies_s]
    horizons = sorted({h for r in results for h in r.chunk_sizes})
    card: dict[str, Any] = {
        "format": "posevla.eval_card",
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": env_name,
        "simulator": simulator,
        "versions": eval_versions(),
        "policy": policy_name,
        "checkpoint": ckpt,
        "tasks": list(tasks),
        "episodes_per_task": int(episodes_per_task),
        "seeds": {r.task: [e.seed for e in r.episodes] for r in results},
        "max_steps": results[0].max_steps,
        "chunk": {"replan_every": replan_every, "horizon": horizons[0] if len(horizons) == 1 else horizons},
        "overall": success_summary(sum(r.successes for r in results), sum(len(r.episodes) for r in results)),
        "per_task": {r.task: r.summary() for r in results},
        "latency": latency_summary(all_lat),
        "videos": [e.video for r in results for e in r.episodes if e.video],
        "video_format": VIDEO_FORMAT,
        "episodes": [
            {k: v for k, v in asdict(e).items() if k != "latencies_s"} for r in results for e in r.episodes
        ],
        "env_steps": sum(e.steps for r in results for e in r.episodes),
        "wall_s": wall,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "extra": dict(extra or {}),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if card["videos"]:
            card["videos"] = [os.path.relpath(v, out) for v in card["videos"]]
            for ep in card["episodes"]:
                if ep["video"]:
                    ep["video"] = os.path.relpath(ep["video"], out)
        tmp = out / "eval_card.json.tmp"
        tmp.write_text(json.dumps(card, indent=2, default=json_default) + "\n", encoding="utf-8")
        os.replace(tmp, out / "eval_card.json")
        (out / "results.md").write_text(results_markdown(card), encoding="utf-8")
    return card


