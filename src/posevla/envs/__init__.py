"""posevla.envs: closed-loop simulation environments behind one small interface.

An environment is reset with an integer seed and stepped with one action; both return observations
as a flat ``dict`` whose keys are the LeRobot feature names the project stores in robot episodes
(``"observation.images.<cam>"``, ``"observation.depth.<cam>"``, ``"observation.cameras.<cam>.K"``,
``"observation.cameras.<cam>.T_world_cam"``, ``"observation.state"``, ``"observation.ee_pose"``,
``"observation.gripper"``, ``"observation.joints"``) plus ``"task"``, the natural-language
instruction. So a recorded frame is an observation, and a policy trained on stored episodes sees
the same keys at evaluation time.

Simulator back-ends are imported lazily: ``import posevla.envs`` does not import MetaWorld.

* :mod:`.metaworld` -- MetaWorld v3 (Sawyer arm, 50 tasks, scripted experts), :func:`make_metaworld`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from posevla.errors import ConfigError

__all__ = ["Observation", "StepResult", "PolicyOutput", "ClosedLoopEnv", "check_int", "make_metaworld"]

#: One observation: LeRobot feature name -> array, plus ``"task"`` -> instruction string.
Observation = dict[str, Any]


@dataclass
class StepResult:
    """What :meth:`ClosedLoopEnv.step` returns.

    Attributes:
        obs: the observation after the action.
        reward: the simulator's dense reward for the transition.
        success: whether the task is solved in ``obs``.
        truncated: the episode hit the environment's step limit (no further steps allowed).
        info: simulator-specific extras (copied, safe to keep).
    """

    obs: Observation
    reward: float
    success: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyOutput:
    """What a policy may return instead of a bare action chunk.

    Attributes:
        actions: (H, A) action chunk (or (A,) for one action), executed open-loop from the current step.
        waypoints: optional (N, 3) predicted end-effector waypoints in the world frame (metres), drawn on
            evaluation videos.
        info: anything else worth keeping per call (not interpreted).
    """

    actions: np.ndarray
    waypoints: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ClosedLoopEnv(Protocol):
    """The interface :func:`posevla.eval.rollout.rollout` drives (MetaWorld implements it).

    Attributes:
        task_name: simulator task identifier (e.g. ``"pick-place-v3"``).
        cameras: camera names, the ``<cam>`` part of the image keys; ``cameras[0]`` is the head view.
        action_dim: length of one action vector.
        max_steps: the most :meth:`step` calls one episode allows.
        fps: control frequency in Hz (frames per second of recorded episodes).
    """

    task_name: str
    cameras: tuple[str, ...]
    action_dim: int
    max_steps: int
    fps: int

    def reset(self, seed: int) -> Observation:
        """Start a new episode whose initial state is a deterministic function of ``seed``."""
        ...

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action of shape ``(action_dim,)``."""
        ...

    def close(self) -> None:
        """Release simulator and rendering resources."""
        ...


def check_int(value: Any, name: str, *, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else a :class:`ConfigError` naming ``name`` and the range."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be an int {rng}, got {value!r}")
    return int(value)


def make_metaworld(*args: Any, **kwargs: Any):  # noqa: ANN201 - returns posevla.envs.metaworld.MetaWorldEnv
    """Lazy alias of :func:`posevla.envs.metaworld.make` (imports MetaWorld on first use)."""
    from posevla.envs.metaworld import make

    return make(*args, **kwargs)
