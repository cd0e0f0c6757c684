"""A simulated robot behind the :class:`~posevla.serving.robot.RobotInterface`: `posevla run-robot --env ...`.

The real-robot loop (:func:`posevla.serving.robot.run_robot`) reads observations and applies actions at a fixed
control rate while chunks are requested in the background. :class:`SimRobot` puts one episode of a registered
simulator (:data:`posevla.sim.ENVS`) behind that interface, so the whole real-time path -- control clock,
requests in flight, real-time chunking, a policy server on the network -- runs and is measured without hardware.
A real robot implements the same two methods (``get_observation``, ``apply_action``) around its own drivers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.sim import make_env

__all__ = ["SimRobot"]


class SimRobot:
    """One episode of simulator `env` / `task` from `seed`, as a robot (thread-safe).

    Attributes:
        success: the task was solved at some step; steps: actions applied; done: success or the step limit;
        finished: an event set when done (pass it as `run_robot`'s ``stop``).
    """

    def __init__(self, env: str, task: str, *, seed: int, image_size: int | tuple[int, int] = 128,
                 max_steps: int | None = None) -> None:
        self.env = make_env(env, task, image_size=image_size, max_steps=max_steps)
        self._lock = threading.Lock()
        self._obs = self.env.reset(int(seed))
        self.success = False
        self.done = False
        self.steps = 0
        self.total_reward = 0.0
        self.finished = threading.Event()

    def get_observation(self) -> Mapping[str, Any]:
        with self._lock:
            return dict(self._obs)

    def apply_action(self, action: np.ndarray) -> None:
        a = np.asarray(action, np.float64)
        if a.shape != (self.env.action_dim,) or not np.all(np.isfinite(a)):
            raise DataError(f"the robot takes finite actions of shape ({self.env.action_dim},), got {a.shape}",
                            field="action")
        with self._lock:
            if self.done:
                return
            res = self.env.step(a)
            self._obs = res.obs
            self.steps += 1
            self.total_reward += float(res.reward)
            self.success = self.success or bool(res.success)
            self.done = self.success or bool(res.truncated)
            if self.done:
                self.finished.set()

    def close(self) -> None:
        self.env.close()
