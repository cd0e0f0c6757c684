"""The robot-side runtime (`posevla.serving.robot`) and relative EE chunks (`posevla.serving.relative`)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from posevla.errors import ConfigError, DataError, InferenceError
from posevla.serving.relative import (
    chunk_to_absolute,
    chunk_to_relative,
    poses_to_absolute,
    poses_to_relative,
    quat_sign_continuity,
    reference_pose,
)
from posevla.serving.robot import ChunkExecutor, RobotInterface, run_robot

H = 8


class FakePolicy:
    """Deterministic chunks: action i of request j is ``[100·j + i, t_obs]``; records every call's kwargs."""

    def __init__(self, horizon: int = H, latency_s: float = 0.0) -> None:
        self.horizon, self.latency_s = horizon, latency_s
        self.calls: list[dict] = []

    def __call__(self, obs, **kwargs):
        j = len(self.calls)
        self.calls.append({"t": obs["t"], **kwargs})
        if self.latency_s:
            time.sleep(self.latency_s)
        i = np.arange(self.horizon, dtype=np.float64)
        return {"actions": np.stack([100.0 * j + i, np.full(self.horizon, float(obs["t"]))], 1)}


def _run(ex: ChunkExecutor, steps: int) -> np.ndarray:
    return np.stack([ex({"t": k}) for k in range(steps)])


# -- scheduling ----------------------------------------------------------------------------------------------


def test_naive_without_delay_is_replan_every_s():
    pol = FakePolicy()
    out = _run(ChunkExecutor(pol, mode="naive", execution_horizon=4), 12)
    assert [c["t"] for c in pol.calls] == [0, 4, 8]
    assert all("action_prefix" not in c for c in pol.calls)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203])


@pytest.mark.parametrize("mode", ["naive", "rtc"])
def test_simulated_delay_schedule(mode):
    pol = FakePolicy()
    ex = ChunkExecutor(pol, mode=mode, execution_horizon=4, inference_delay=2)
    out = _run(ex, 14)
    # a request every s = 4 steps with that step's observation; its chunk starts d = 2 steps later at index 2
    assert [c["t"] for c in pol.calls] == [0, 4, 8, 12]
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 202, 203, 204, 205])
    assert [(w.step, w.start_index) for w in ex.switches] == [(0, 0), (6, 2), (10, 2)]
    assert [r.step for r in ex.requests] == [0, 4, 8, 12]
    # jump = |new[2] - old[6]|: index 100 + 2 vs 6 (dim 0), obs time 4 vs 0 (dim 1)
    assert ex.switches[1].jump == pytest.approx(np.hypot(102 - 6, 4 - 0))
    assert ex.switches[1].seam_delta == pytest.approx(np.hypot(102 - 5, 4 - 0))
    assert ex.switches[0].jump is None
    if mode == "naive":
        assert all("action_prefix" not in c for c in pol.calls)
    else:
        first, second = pol.calls[0], pol.calls[1]
        assert "action_prefix" not in first  # nothing runs before the first chunk
        np.testing.assert_array_equal(second["action_prefix"][:, 0], [4, 5, 6, 7])  # chunk 0 from step 4 on
        assert (second["inference_delay"], second["execution_horizon"]) == (2, 4)
        np.testing.assert_array_equal(pol.calls[2]["action_prefix"][:, 0], [104, 105, 106, 107])
        assert [r.prefix_len for r in ex.requests] == [0, 4, 4, 4]


def test_reset_seeds_and_summary():
    pol = FakePolicy()
    ex = ChunkExecutor(pol, mode="rtc", execution_horizon=4, inference_delay=1, seed=10, num_steps=3)
    _run(ex, 6)
    ex.reset()
    _run(ex, 2)
    assert [c["seed"] for c in pol.calls] == [10, 11, 10 + 100003]
    assert all(c["num_steps"] == 3 for c in pol.calls)
    s = ex.summary()
    assert s["switches"] == 1 and s["mean_jump"] > 0 and len(ex.history) == 1


def test_bad_configs():
    with pytest.raises(ConfigError, match="mode"):
        ChunkExecutor(FakePolicy(), mode="fast", execution_horizon=4)
    with pytest.raises(ConfigError, match="execution_horizon"):
        ChunkExecutor(FakePolicy(), execution_horizon=0)
    with pytest.raises(ConfigError, match="inference_delay"):
        ChunkExecutor(FakePolicy(), execution_horizon=2, inference_delay=-1)
    ex = ChunkExecutor(FakePolicy(), mode="rtc", execution_horizon=6, inference_delay=3)  # 6 + 3 > H = 8
    with pytest.raises(ConfigError, match="chunk size"):
        ex({"t": 0})
    ex = ChunkExecutor(lambda obs, **kw: {"actions": np.full((4, 2), np.nan)}, execution_horizon=2)
    with pytest.raises(InferenceError):
        ex({"t": 0})


def test_executor_in_the_rollout_loop():
    """A drop-in policy of `posevla.eval.rollout.rollout` (one action per call)."""
    from posevla.eval.rollout import rollout
    from posevla.sim import StepResult

    class Env:
        task_name, cameras, action_dim, max_steps, fps = "fake", (), 2, 10, 10

        def reset(self, seed):
            self.t = 0
            return {"t": 0}

        def step(self, action):
            self.t += 1
            return StepResult({"t": self.t}, 0.0, False, self.t >= self.max_steps)

        def close(self):
            pass

    pol = FakePolicy()
    ex = ChunkExecutor(pol, mode="rtc", execution_horizon=4, inference_delay=2)
    res = rollout(Env(), ex, seeds=[0, 1])
    assert [e.steps for e in res.episodes] == [10, 10]
    assert [c["t"] for c in pol.calls] == [0, 4, 8] * 2
    assert len(ex.all_switches()) == 4  # the chunk requested at step 8 would start at step 10, the end


# -- relative chunks -----------------------------------------------------------------------------------------


def _random_pose(rng, arms):
    q = rng.normal(size=(arms, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.concatenate([rng.normal(size=(arms, 3)), q], -1)  # (arms, 7)


def test_relative_chunk_round_trip_and_known_values():
    from posevla.data.action_space import ee_vector

    rng = np.random.default_rng(0)
    for arms in (1, 2):
        poses = np.stack([_random_pose(rng, arms) for _ in range(H)])  # (H, arms, 7)
        grip = rng.uniform(size=(H, arms, 1))
        chunk = np.concatenate([ee_vector(poses, grip)], -1).reshape(H, -1)  # (H, arms * 10)
        ref = _random_pose(rng, arms)
        rel = chunk_to_relative(chunk, ref, num_arms=arms)
        np.testing.assert_allclose(chunk_to_absolute(rel, ref, num_arms=arms), chunk, atol=1e-12)
        np.testing.assert_array_equal(rel.reshape(H, arms, -1)[..., 9:], grip)  # grippers pass through
    # the reference itself is the identity; a pure translation just subtracts
    ref = np.array([0.1, 0.2, 0.3, 1.0, 0.0, 0.0, 0.0])
    chunk = ee_vector(np.stack([ref, ref]), np.zeros((2, 1)))
    np.testing.assert_allclose(chunk_to_relative(chunk, ref)[:, :9], [[0, 0, 0, 1, 0, 0, 0, 1, 0]] * 2, atol=1e-12)
    with pytest.raises(DataError, match="actions"):
        chunk_to_relative(np.zeros((4, 5)), ref)
    with pytest.raises(DataError, match="reference_pose"):
        chunk_to_relative(chunk, ref[:6])


def test_relative_poses_round_trip_and_sign_continuity():
    rng = np.random.default_rng(1)
    ref = _random_pose(rng, 1)[0]
    poses = np.stack([_random_pose(rng, 1)[0] for _ in range(H)])  # (H, 7)
    rel = poses_to_relative(poses, ref)
    back = poses_to_absolute(rel, ref)
    np.testing.assert_allclose(back[:, :3], poses[:, :3], atol=1e-12)
    same = np.abs((back[:, 3:] * poses[:, 3:]).sum(-1))  # |<q, q'>| = 1: the same rotation
    np.testing.assert_allclose(same, 1.0, atol=1e-12)
    for q in (rel[:, 3:], back[:, 3:]):
        assert np.all((q[1:] * q[:-1]).sum(-1) >= 0)
    flipped = quat_sign_continuity(np.array([[1.0, 0, 0, 0], [-0.99, -0.1, 0, 0]]))
    assert flipped[1, 0] > 0
    np.testing.assert_allclose(reference_pose({"observation.ee_pose": ref}), ref[None])


def test_executor_makes_relative_replies_absolute():
    from posevla.data.action_space import ee_vector

    rng = np.random.default_rng(2)
    absolute = ee_vector(np.stack([_random_pose(rng, 1)[0] for _ in range(H)]), np.zeros((H, 1)))  # (H, 10)

    def server(obs, **kw):  # converts with the pose in the request's observation, like the server
        return {"actions": chunk_to_relative(absolute, obs["observation.ee_pose"]), "relative": True}

    ee = _random_pose(rng, 1)[0]
    ex = ChunkExecutor(server, mode="rtc", execution_horizon=4)
    got = np.stack([ex({"observation.ee_pose": ee}) for _ in range(4)])
    np.testing.assert_allclose(got, absolute[:4], atol=1e-5)


# -- the real-time loop --------------------------------------------------------------------------------------


class FakeRobot:
    def __init__(self) -> None:
        self.t, self.applied = 0, []
        self.lock = threading.Lock()

    def get_observation(self):
        with self.lock:
            return {"t": self.t}

    def apply_action(self, action):
        with self.lock:
            self.applied.append(np.asarray(action).copy())
            self.t += 1


def test_threaded_loop_fake_robot_50hz():
    robot, pol = FakeRobot(), FakePolicy(horizon=16, latency_s=0.05)  # 50 ms at 50 Hz: d = 3 ticks
    assert isinstance(robot, RobotInterface)
    res = run_robot(robot, pol, 50.0, mode="rtc", execution_horizon=8, max_steps=45)
    assert res.steps == 45  # a tick count, not a duration: timing-independent on a loaded machine
    assert res.applied == len(robot.applied) and res.applied + res.starved == res.steps
    slowest = max(r.latency_s for r in res.requests if r.latency_s is not None)
    assert res.starved == 0 or slowest > 8 / 50  # the 8 actions left cover any request faster than 160 ms
    assert len(res.requests) >= 3 and res.requests[0].prefix_len == 0
    later = pol.calls[1:]
    assert all(c["execution_horizon"] == 8 and len(c["action_prefix"]) == 8 for c in later)
    # the delay is measured from the latencies: ceil(0.05 s × 50 Hz) = 3, more on a busy machine
    assert all(2 <= c["inference_delay"] <= 8 for c in later) and later[-1]["inference_delay"] >= 3
    for w in res.switches[1:]:  # each chunk starts at the ticks elapsed since its request
        req = next(r for r in res.requests if r.step == w.step - w.start_index)
        assert w.start_index >= 1 and req.latency_s is not None
    # chunk j's first executed action is index start_index, its obs the robot's step at the request
    applied = np.stack(robot.applied)
    assert applied[0, 0] == 0


def test_threaded_loop_naive_and_errors():
    robot, pol = FakeRobot(), FakePolicy(horizon=8)
    res = run_robot(robot, pol, 200.0, mode="naive", execution_horizon=4, inference_delay=0, max_steps=20)
    assert res.steps == 20 and all("action_prefix" not in c for c in pol.calls)
    with pytest.raises(ConfigError, match="end"):
        run_robot(robot, pol, 50.0, execution_horizon=4)
    with pytest.raises(ConfigError, match="rate_hz"):
        run_robot(robot, pol, 0.0, execution_horizon=4, max_steps=1)
    with pytest.raises(ConfigError, match="chunk size"):
        run_robot(robot, pol, 50.0, execution_horizon=9, max_steps=1)


def test_robot_modules_do_not_import_torch():
    code = ("import sys, posevla.serving.robot, posevla.serving.relative; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_bare_infer_gets_the_keys_in_the_request():
    """A ``PolicyClient.infer(obs)``-like callable (no keyword arguments): the RTC keys go into the request."""
    seen = []

    def infer(obs):
        seen.append(dict(obs))
        return {"actions": np.zeros((H, 2))}

    ex = ChunkExecutor(infer, mode="rtc", execution_horizon=4, inference_delay=1, seed=7)
    for k in range(5):
        ex({"t": k})
    assert seen[0] == {"t": 0, "seed": 7}
    assert seen[1]["t"] == 4 and seen[1]["inference_delay"] == 1 and seen[1]["action_prefix"].shape == (4, 2)
