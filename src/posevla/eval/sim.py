"""Closed-loop evaluation of a post-trained checkpoint in any registered simulator (`posevla eval sim`, the demo).

The simulator comes from the env registry (:data:`posevla.sim.ENVS`): task names are resolved by it before the
model loads, and environments are made by it. The policy is :class:`posevla.policy.Policy`, built from the
checkpoint alone; cameras render at the training data's image size unless told otherwise. Seeds that were
training demos of the checkpoint's dataset (when its demos report says so) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posevla.errors import ConfigError
from posevla.eval.rollout import evaluate
from posevla.policy import Policy
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


def _check_fits(policy: Policy, e: Any, env: str) -> None:
    """A `ConfigError` when the policy was post-trained for another action space or other cameras than `e` has."""
    missing = [c for c in policy.cameras if c not in e.cameras]
    if policy.action_dim != e.action_dim or missing:
        e.close()
        raise ConfigError(
            f"--checkpoint {policy.checkpoint} was post-trained for {policy.action_dim}-d actions "
            f"({', '.join(policy.action_names)}) seen by cameras {policy.cameras}, but {env} steps {e.action_dim}-d "
            f"actions and renders cameras {list(e.cameras)}: evaluate a policy post-trained on {env} demos "
            f"(`posevla metaworld-demos`, then `posevla train posttrain-tiny --data.train-data DEMOS`)"
        )


def evaluate_policy_checkpoint(
    checkpoint: str | Path,
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
) -> dict[str, Any]:
    """Closed-loop evaluation of a post-trained checkpoint in simulator `env`; returns the eval card.

    Seeds are ``seed, seed + 1, ...`` for every task; the card is written to `out_dir` when given
    (:func:`posevla.eval.rollout.evaluate`).

    Raises:
        ConfigError: unknown simulator or task, or evaluation seeds that were demos the checkpoint was trained on.
        CheckpointError: a missing checkpoint, or one without an action expert.
    """
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"name at least one task of simulator {env!r}, got {tasks!r}")
    tasks = tuple(resolve_task(env, t) for t in tasks)  # unknown names fail before the model loads
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
