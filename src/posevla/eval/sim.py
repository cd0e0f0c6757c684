"""Closed-loop evaluation of a post-trained checkpoint in any registered simulator (`posevla eval sim`, the demo).

The simulator comes from the env registry (:data:`posevla.sim.ENVS`): task names are resolved by it before the
model loads, and environments are made by it. The policy is :class:`posevla.policy.Policy`, built from the
checkpoint alone; cameras render at the training data's image size unless told otherwise. Seeds that were
training demos of the checkpoint's dataset (when its demos report says so) are refused.

With ``server="ws://host:port"`` the same loop runs through a running `posevla serve` instead
(:class:`posevla.serving.client.RemotePolicy`): the checkpoint's facts come from the server's metadata, and
each query sends the noise seed the in-process policy would have used, so both give the same per-seed outcomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posevla.errors import ConfigError
from posevla.eval.rollout import evaluate
from posevla.policy import Policy
from posevla.serving.client import PolicyClient, RemotePolicy
from posevla.sim import REPLAN_EVERY, make_env, resolve_task
from posevla.sim.demos import demo_seeds

__all__ = ["evaluate_policy_checkpoint", "check_eval_seeds"]


def check_eval_seeds(train_data: str | Path, tasks: tuple[str, ...], seed: int, episodes: int) -> None:
    """Refuse evaluation seeds that were training demos of the same task (when the dataset records them)."""
    used = demo_seeds(train_data)
    if not used:
        return
    clash = sorted((t, s) for t in tasks for s in range(seed, seed + episodes) if (t, s) in used)
    if clash:
        raise ConfigError(
            f"evaluation seeds {seed}..{seed + episodes - 1} include training demos of the checkpoint "
            f"({', '.join(f'{t} seed {s}' for t, s in clash[:5])}); pass --seed 100000 or another unused range"
        )


def _check_fits(policy: Policy | RemotePolicy, e: Any, env: str) -> None:
    """A `ConfigError` when the policy was post-trained for another action space or other cameras than `e` has."""
    missing = [c for c in policy.cameras if c not in e.cameras]
    if policy.action_dim != e.action_dim or missing:
        e.close()
        raise ConfigError(
            f"--checkpoint {getattr(policy, 'checkpoint', None) or policy.client.metadata.get('checkpoint')} was post-trained for {policy.action_dim}-d actions "
            f"({', '.join(_action_names(policy))}) seen by cameras {policy.cameras}, but {env} steps {e.action_dim}-d "
            f"actions and renders cameras {list(e.cameras)}: evaluate a policy post-trained on {env} demos "
            f"(`posevla metaworld-demos`, then `posevla train posttrain-tiny --data.train-data DEMOS`)"
        )


def _action_names(policy: Policy | RemotePolicy) -> list[str]:
    return list(policy.action_names) if isinstance(policy, Policy) else list(policy.client.metadata["action_names"])


def evaluate_policy_checkpoint(
    checkpoint: str | Path | None,
    *,
    env: str = "metaworld",
    tasks: tuple[str, ...] | list[str],
    episodes_per_task: int,
    seed: int = 100_000,
    replan_every: int | None = REPLAN_EVERY,
    max_steps: int | None = None,
    out_dir: str | Path | None = None,
    videos_per_task: int = 1,
    image_size: int | None = None,
    device: str = "auto",
    policy_name: str | None = None,
    progress: bool = False,
    server: str | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Closed-loop evaluation of a post-trained checkpoint in simulator `env`; returns the eval card.

    Seeds are ``seed, seed + 1, ...`` for every task; the card is written to `out_dir` when given
    (:func:`posevla.eval.rollout.evaluate`). With `server` the policy is the one that server serves
    (`checkpoint` may then be None; when given, the server must be serving a checkpoint of that name).

    Raises:
        ConfigError: unknown simulator or task, or evaluation seeds that were demos the checkpoint was trained on.
        CheckpointError: a missing checkpoint, or one without an action expert.
    """
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"name at least one task of simulator {env!r}, got {tasks!r}")
    tasks = tuple(resolve_task(env, t) for t in tasks)  # unknown names fail before the model loads
    if server is not None:
        return _evaluate_remote(
            server, api_key, checkpoint, env=env, tasks=tasks, episodes_per_task=episodes_per_task, seed=seed,
            replan_every=replan_every, max_steps=max_steps, out_dir=out_dir, videos_per_task=videos_per_task,
            image_size=image_size, policy_name=policy_name, progress=progress,
        )
    if checkpoint is None:
        raise ConfigError("pass --checkpoint RUN (or --server ws://HOST:PORT to evaluate a served policy)")
    policy = Policy.from_checkpoint(checkpoint, device=device, seed=0)
    check_eval_seeds(policy.train_config.data.train_data, tasks, seed, episodes_per_task)
    if image_size is not None:
        size: int | tuple[int, int] = image_size
    else:
        w, h = policy.image_sizes.get(policy.cameras[0], (128, 128))
        size = (int(h), int(w))

    def make(task: str) -> Any:
        e = make_env(env, task, image_size=size, max_steps=max_steps)
        _check_fits(policy, e, env)
        return e

    return evaluate(
        make, policy, tasks=tasks, episodes_per_task=episodes_per_task, seeds=seed,
        replan_every=replan_every, out_dir=out_dir, videos_per_task=videos_per_task, env_name=env,
        policy_name=policy_name or str(policy.checkpoint), checkpoint=policy.checkpoint,
        extra={"train_config": policy.train_config.name, "init_checkpoint": policy.train_config.init_checkpoint},
        progress=progress,
    )


def _evaluate_remote(
    server: str, api_key: str | None, checkpoint: str | Path | None, *, env: str, tasks: tuple[str, ...],
    episodes_per_task: int, seed: int, replan_every: int | None, max_steps: int | None,
    out_dir: str | Path | None, videos_per_task: int, image_size: int | None, policy_name: str | None,
    progress: bool,
) -> dict[str, Any]:
    """`evaluate_policy_checkpoint` through a running server (module docstring)."""
    policy = RemotePolicy(PolicyClient(server, api_key=api_key), seed=0)
    meta = policy.client.metadata
    served = str(meta.get("checkpoint", ""))
    if checkpoint is not None and Path(str(checkpoint)).name not in served:
        policy.close()
        raise ConfigError(f"--checkpoint {checkpoint} was given but {server} serves {served}; "
                          "leave --checkpoint out or point --server at the right server")
    if meta.get("train_data"):
        check_eval_seeds(meta["train_data"], tasks, seed, episodes_per_task)
    if image_size is not None:
        size: int | tuple[int, int] = image_size
    else:
        shape = next(iter(meta["observation_spec"]["images"].values()))["shape"]
        size = (int(shape[0]), int(shape[1])) if shape else 128

    def make(task: str) -> Any:
        e = make_env(env, task, image_size=size, max_steps=max_steps)
        _check_fits(policy, e, env)
        return e

    try:
        return evaluate(
            make, policy, tasks=tasks, episodes_per_task=episodes_per_task, seeds=seed,
            replan_every=replan_every, out_dir=out_dir, videos_per_task=videos_per_task, env_name=env,
            policy_name=policy_name or served, checkpoint=None,
            extra={"server": server, "served_checkpoint": served, "train_config": meta.get("train_config"),
                   "norm_stats_sha256": meta.get("norm_stats_sha256")},
            progress=progress,
        )
    finally:
        policy.close()
