"""Closed-loop evaluation of chunked policies in any :class:`posevla.sim.ClosedLoopEnv`.

* :func:`rollout` runs one environment for a list of seeds. The policy is called with the current
  observation and returns an action chunk ``(H, A)`` (or a :class:`posevla.sim.PolicyOutput`); the
  first ``min(replan_every, H)`` actions are executed open-loop, then the policy is queried again. An
  episode ends at the first success (``stop_on_success``), when the environment truncates, or after
  ``max_steps``. Policy latency is measured per call.
* :func:`evaluate` does that for several tasks and writes the evaluation folder::

      <out>/eval_card.json    simulator and package versions, seeds, checkpoint hash, chunk/replan
                              settings, per-task and overall success with Wilson 95 % intervals,
                              policy latency p50/p95
      <out>/results.md        the per-task table
      <out>/videos/<task>_seed<k>.mp4   the first episodes of each task

* Videos are H.264 MP4 written through ``imageio-ffmpeg`` (its bundled ffmpeg binary); without it they
  fall back to animated GIF. Each frame shows the head camera (with the optional overlay, e.g. the
  policy's predicted waypoints) next to the other cameras, and a caption line.

Success rates use the Wilson score interval, which behaves at 0 % and 100 % (the normal approximation
collapses to a zero-width interval there). Seeds for evaluation should not overlap those of the
training demonstrations (MetaWorld demos use ``seed, seed + 1, ...``; evaluate from e.g. 100000).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from posevla.sim import ClosedLoopEnv, Observation, PolicyOutput, check_int
from posevla.errors import ConfigError, DataError

__all__ = [
    "PolicyFn",
    "OverlayFn",
    "EpisodeResult",
    "RolloutResult",
    "wilson_interval",
    "success_summary",
    "latency_summary",
    "rollout",
    "evaluate",
    "random_policy",
    "draw_waypoints",
    "waypoint_overlay",
    "write_video",
    "checkpoint_sha256",
    "VIDEO_FORMAT",
]

#: ``policy(obs) -> (H, A) array | (A,) array | PolicyOutput``. An optional ``policy.reset()`` is
#: called at the start of every episode.
PolicyFn = Callable[[Observation], Any]
#: ``overlay(head_image, obs, output) -> image``: draws on a copy of the head view for videos.
OverlayFn = Callable[[np.ndarray, Observation, PolicyOutput], np.ndarray]

_Z95 = 1.959963984540054  # two-sided 95 % normal quantile
_VERSION_PACKAGES = ("metaworld", "gymnasium", "imageio", "imageio-ffmpeg", "pillow", "scipy")


def _video_format() -> str:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "gif"
    return "mp4"


#: "mp4" when imageio-ffmpeg is installed (it is a project dependency), else "gif".
VIDEO_FORMAT = _video_format()


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``.
    ``n = 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{name} must be an int, got {v!r}", field=name, fix="count episodes as integers")
    if n < 0 or not 0 <= successes <= n:
        raise DataError(f"need 0 <= successes <= n, got successes={successes}, n={n}", field="successes",
                        fix="successes counts episodes among the n run")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return lo, hi


def success_summary(successes: int, episodes: int) -> dict[str, Any]:
    """``{"successes", "episodes", "rate", "ci95": [lo, hi]}`` (the summary.json closed-loop keys)."""
    lo, hi = wilson_interval(successes, episodes)
    rate = successes / episodes if episodes else float("nan")
    return {"successes": int(successes), "episodes": int(episodes), "rate": rate, "ci95": [lo, hi]}


def latency_summary(latencies_s: Sequence[float]) -> dict[str, Any]:
    """Policy-call latency in milliseconds: ``{"calls", "p50_ms", "p95_ms", "mean_ms", "max_ms"}``."""
    a = np.asarray(latencies_s, np.float64) * 1e3
    if a.size == 0:
        return {"calls": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    p50, p95 = np.percentile(a, [50, 95])
    return {"calls": int(a.size), "p50_ms": float(p50), "p95_ms": float(p95), "mean_ms": float(a.mean()),
            "max_ms": float(a.max())}


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
    replan_every: int
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


def draw_waypoints(
    image: np.ndarray,
    points_world: np.ndarray,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    *,
    color: tuple[int, int, int] = (255, 220, 0),
    radius: int = 2,
) -> np.ndarray:
    """Draw 3D points (N, 3, world frame) as a dotted polyline on a copy of ``image`` (H, W, 3) uint8.

    Points behind the camera are skipped; the first point gets a white outline.
    """
    from posevla.geometry import invert_T, project_points, transform_points

    pts = np.asarray(points_world, np.float64).reshape(-1, 3)
    p_cam = transform_points(invert_T(np.asarray(T_world_cam, np.float64)), pts)
    front = p_cam[:, 2] > 1e-3
    uv = project_points(np.asarray(K, np.float64), p_cam[front]) if front.any() else np.zeros((0, 2))
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    xy = [(float(u), float(v)) for u, v in uv]
    if len(xy) > 1:
        draw.line(xy, fill=color, width=1)
    for k, (u, v) in enumerate(xy):
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=color,
                     outline=(255, 255, 255) if k == 0 else color)
    return np.asarray(img)


def waypoint_overlay(camera: str) -> OverlayFn:
    """An overlay that draws ``PolicyOutput.waypoints`` with camera ``camera``'s K and T_world_cam."""

    def overlay(image: np.ndarray, obs: Observation, output: PolicyOutput) -> np.ndarray:
        if output.waypoints is None:
            return image
        K = obs[f"observation.cameras.{camera}.K"]
        T = obs[f"observation.cameras.{camera}.T_world_cam"]
        return draw_waypoints(image, output.waypoints, K, T)

    return overlay


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 with yuv420p needs them)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    return frame


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write RGB uint8 frames (same size) as MP4 (imageio-ffmpeg) or, without it, an animated GIF.

    The suffix of ``path`` is replaced by ``.mp4`` / ``.gif`` to match what was written.
    """
    if not frames:
        raise DataError("no frames to write", file=str(path), fix="record at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [_even(np.asarray(f, np.uint8)) for f in frames]
    if VIDEO_FORMAT == "mp4":
        import imageio.v2 as iio

        path = path.with_suffix(".mp4")
        with iio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(f)
    else:
        path = path.with_suffix(".gif")
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def _video_frame(obs: Observation, cameras: Sequence[str], head: np.ndarray, caption: str) -> np.ndarray:
    """Head view (already overlaid) next to the other cameras, a caption strip on top, upscaled x2."""
    views = [head] + [obs[f"observation.images.{c}"] for c in cameras[1:] if f"observation.images.{c}" in obs]
    h = max(v.shape[0] for v in views)
    views = [np.pad(v, ((0, h - v.shape[0]), (0, 0), (0, 0))) for v in views]
    row = np.concatenate(views, axis=1)
    row = np.repeat(np.repeat(row, 2, axis=0), 2, axis=1)
    strip = Image.new("RGB", (row.shape[1], 14), (0, 0, 0))
    ImageDraw.Draw(strip).text((3, 1), caption, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), row], axis=0)


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
    if not isinstance(out, PolicyOutput):
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
    replan_every: int = 1,
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
        replan_every: actions executed from each chunk before re-querying (fewer if the chunk is shorter).
        stop_on_success: end an episode at its first success (a success is final either way).
        video_dir: where the videos go; required when ``videos > 0``.
        videos: how many of the first episodes to record.
        video_fps: frame rate of the videos.
        overlay_fn: draws on the head view of each video frame (e.g. :func:`waypoint_overlay`).
        progress: print one line per episode.
    """
    seed_list = _seed_list(episodes, seeds)
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
        reset = getattr(policy_fn, "reset", None)
        if callable(reset):
            reset()
        obs = env.reset(seed)
        if record and (head is None or f"observation.images.{head}" not in obs):
            raise ConfigError(f"cannot record videos: the environment gives no images of camera {head!r}")
        frames: list[np.ndarray] = []
        instruction = obs.get("task") if isinstance(obs.get("task"), str) else None
        ep = EpisodeResult(task=env.task_name, seed=seed, success=False, steps=0, success_step=None,
                           policy_calls=0, instruction=instruction)
        done = False
        while not done and ep.steps < max_steps:
            t0 = time.perf_counter()
            raw = policy_fn(obs)
            ep.latencies_s.append(time.perf_counter() - t0)
            ep.policy_calls += 1
            try:
                out = _as_output(raw, env.action_dim, env.task_name, seed, ep.steps)
            except NonFiniteActionError as exc:  # recorded as a failed episode; the evaluation goes on
                ep.error = str(exc)
                break
            result.chunk_sizes.append(int(out.actions.shape[0]))
            for action in out.actions[: int(replan_every)]:
                if record:
                    img = obs[f"observation.images.{head}"]
                    if overlay_fn is not None:
                        img = np.asarray(overlay_fn(img.copy(), obs, out), np.uint8)
                    caption = f"{env.task_name} seed {seed} step {ep.steps}"
                    frames.append(_video_frame(obs, env.cameras, img, caption))
                try:
                    res = env.step(action)
                except Exception as exc:  # a simulator crash fails this episode, not the evaluation
                    ep.error = f"the environment raised at step {ep.steps}: {type(exc).__name__}: {exc}"
                    done = True
                    break
                ep.steps += 1
                ep.total_reward += float(res.reward)
                obs = res.obs
                if res.success and not ep.success:
                    ep.success, ep.success_step = True, ep.steps
                if (ep.success and stop_on_success) or res.truncated or ep.steps >= max_steps:
                    done = True
                    break
        if record and frames:
            img = obs[f"observation.images.{head}"]
            caption = f"{env.task_name} seed {seed} step {ep.steps}" + (" SUCCESS" if ep.success else " fail")
            frames.append(_video_frame(obs, env.cameras, img, caption))
            ep.video = str(write_video(Path(video_dir) / f"{env.task_name}_seed{seed}", frames, video_fps))
        result.episodes.append(ep)
        if progress:
            outcome = "success" if ep.success else ("error: " + ep.error if ep.error else "fail")
            print(f"[rollout] {env.task_name} seed {seed}: {outcome} after {ep.steps} steps, "
                  f"{ep.policy_calls} policy calls", flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# multi-task evaluation + eval card
# ----------------------------------------------------------------------------------------------


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file, or of a directory's files (relative paths and contents, sorted)."""
    p = Path(path)
    if not p.exists():
        raise DataError("checkpoint not found", file=str(p),
                        fix="pass an existing checkpoint file or directory")

    def file_hash(f: Path) -> str:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    if p.is_file():
        return file_hash(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p).as_posix()).encode() + b"\0" + file_hash(f).encode() + b"\n")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from posevla.training.checkpoint import package_versions

    out = package_versions()
    for name in _VERSION_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def _results_markdown(card: Mapping[str, Any]) -> str:
    from posevla.eval.report import markdown_table

    def row(task: str, r: Mapping[str, Any], latency: Mapping[str, Any]) -> dict[str, Any]:
        return {"task": task, "successes": r["successes"], "episodes": r["episodes"],
                "rate %": 100 * r["rate"], "ci95 low %": 100 * r["ci95"][0],
                "ci95 high %": 100 * r["ci95"][1],
                "steps to success": r.get("mean_steps_to_success"), "latency p50 ms": latency["p50_ms"],
                "latency p95 ms": latency["p95_ms"]}

    rows = [row(task, r, r["latency"]) for task, r in card["per_task"].items()]
    rows.append(row("**all**", card["overall"], card["latency"]))
    chunk = card["chunk"]
    head = (f"# Closed-loop evaluation: {card['env']}\n\npolicy: {card['policy']} · replan every "
            f"{chunk['replan_every']} steps · chunk horizon {chunk['horizon']} · "
            f"max steps {card['max_steps']} · {card['episodes_per_task']} episodes per task · "
            "95 % Wilson intervals\n\n")
    return head + markdown_table(rows) + "\n"


def evaluate(
    make_env: Callable[[str], ClosedLoopEnv],
    policy_fn: PolicyFn,
    *,
    tasks: Sequence[str],
    episodes_per_task: int,
    seeds: int | Sequence[int] = 100_000,
    max_steps: int | None = None,
    replan_every: int = 1,
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
        "versions": _versions(),
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
        tmp.write_text(json.dumps(card, indent=2, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp, out / "eval_card.json")
        (out / "results.md").write_text(_results_markdown(card), encoding="utf-8")
    return card


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
