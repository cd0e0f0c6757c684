"""MetaWorld adapter and demo generator: camera calibration, image orientation, depth, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posevla.sim import ClosedLoopEnv
from posevla.sim.metaworld import DEFAULT_CAMERAS, JOINT_NAMES, TASKS, TCP_OFFSET, MetaWorldEnv, instruction_for, make
from posevla.sim.render import depth_buffer_to_metres
from posevla.errors import ConfigError, DataError
from posevla.geometry import (
    K_from_fovy,
    check_rotation_matrix,
    invert_T,
    project_points,
    quat_wxyz_to_matrix,
    transform_points,
)

pytestmark = pytest.mark.sim  # runs MuJoCo (rendering, MetaWorld)

H, W = 96, 112  # non-square on purpose: catches swapped height/width


@pytest.fixture(scope="module")
def env():
    e = make("pick-place-v3", image_size=(H, W))
    yield e
    e.close()


def _project(obs, cam: str, p_world) -> tuple[np.ndarray, np.ndarray]:
    T = obs[f"observation.cameras.{cam}.T_world_cam"]
    K = obs[f"observation.cameras.{cam}.K"]
    p_cam = transform_points(invert_T(T), np.asarray(p_world, float)[None])[0]
    return p_cam, project_points(K, p_cam[None])[0]


def test_observation_contract(env: MetaWorldEnv):
    obs = env.reset(0)
    assert isinstance(env, ClosedLoopEnv)
    assert env.cameras == tuple(DEFAULT_CAMERAS) and env.turned_cameras == ("corner", "corner2")
    assert obs["task"] == instruction_for("pick-place-v3", 0) and obs["task"] == env.instruction
    for cam in env.cameras:
        img, depth = obs[f"observation.images.{cam}"], obs[f"observation.depth.{cam}"]
        assert img.shape == (H, W, 3) and img.dtype == np.uint8 and img.std() > 10
        assert depth.shape == (H, W) and depth.dtype == np.float32
        assert np.all(depth >= 0) and np.all(depth < 10) and (depth > 0).mean() > 0.5
        K = obs[f"observation.cameras.{cam}.K"]
        fovy = math.radians(float(env.model.cam_fovy[env._cam_ids[cam]]))
        np.testing.assert_allclose(K, K_from_fovy(fovy, W, H))
        T = obs[f"observation.cameras.{cam}.T_world_cam"]
        assert T.shape == (4, 4) and T.dtype == np.float64
        check_rotation_matrix(T[:3, :3])
    ee = obs["observation.ee_pose"]
    assert ee.shape == (7,) and ee.dtype == np.float32 and ee[3] >= 0
    assert abs(np.linalg.norm(ee[3:]) - 1) < 1e-5
    assert obs["observation.state"].shape == (8,) and obs["observation.gripper"].shape == (1,)
    np.testing.assert_allclose(obs["observation.state"], np.r_[ee, obs["observation.gripper"]])
    assert obs["observation.joints"].shape == (len(JOINT_NAMES),)
    assert obs["observation.environment_state"].shape == (39,)
    assert 0.9 <= obs["observation.gripper"][0] <= 1.0  # starts open


def test_projection_depth_and_orientation(env: MetaWorldEnv):
    """K, T_world_cam, the row flip, the camera half-turn and metric depth agree with the 3D scene."""
    obs = env.reset(5)
    puck = obs["observation.environment_state"][4:7]  # puck centre, 2 cm above the table top (z = 0)
    for cam in ("head", "side", "wrist"):
        depth = obs[f"observation.depth.{cam}"]
        p_cam, uv = _project(obs, cam, puck)
        u, v = np.round(uv).astype(int)
        assert 0 <= u < W and 0 <= v < H, (cam, uv)
        # the puck's top face is between 0 and 4 cm in front of its centre along the ray
        assert -0.005 < p_cam[2] - depth[v, u] < 0.045, (cam, p_cam[2], depth[v, u])
        if cam == "wrist":
            # looking straight down with the camera's up axis along world +y (away from the robot)
            _, uv_far = _project(obs, cam, puck + np.array([0.0, 0.05, 0.0]))
            assert uv_far[1] < uv[1] - 3, (uv, uv_far)
            continue
        # the vertically mirrored pixel sees something else: a flipped image would fail above
        assert abs(depth[H - 1 - v, u] - p_cam[2]) > 0.05, cam
        # up in the world is up in the image (row 0 at the top)
        _, uv_up = _project(obs, cam, puck + np.array([0.0, 0.0, 0.1]))
        assert uv_up[1] < uv[1] - 3, (cam, uv, uv_up)
    # the end effector lands on the gripper in the head view (depth within a few cm of its z)
    obs = env.reset(0)
    depth = obs["observation.depth.head"]
    p_cam, uv = _project(obs, "head", obs["observation.ee_pose"][:3])
    u, v = np.round(uv).astype(int)
    window = depth[max(v - 2, 0) : v + 3, max(u - 2, 0) : u + 3]
    assert -0.02 < p_cam[2] - window[window > 0].min() < 0.08


def test_wrist_camera_moves_and_tcp_offset(env: MetaWorldEnv):
    obs0 = env.reset(1)
    T_head0 = obs0["observation.cameras.head.T_world_cam"]
    T_wrist0 = obs0["observation.cameras.wrist.T_world_cam"]
    obs = obs0
    for _ in range(8):
        obs = env.step(env.expert_action(obs)).obs
        ee = obs["observation.ee_pose"].astype(float)
        tcp = ee[:3] + quat_wxyz_to_matrix(ee[3:]) @ TCP_OFFSET
        np.testing.assert_allclose(tcp, env.tcp_position(), atol=1.5e-3)
    np.testing.assert_array_equal(obs["observation.cameras.head.T_world_cam"], T_head0)
    moved = np.linalg.norm(obs["observation.cameras.wrist.T_world_cam"][:3, 3] - T_wrist0[:3, 3])
    hand_moved = np.linalg.norm(obs["observation.ee_pose"][:3] - obs0["observation.ee_pose"][:3])
    assert moved > 0.01 and abs(moved - hand_moved) < 0.01


def test_reset_is_deterministic(env: MetaWorldEnv):
    a = env.reset(3)
    env.step(np.array([0.5, 0.0, -0.5, 1.0]))
    b = env.reset(3)
    np.testing.assert_array_equal(a["observation.environment_state"], b["observation.environment_state"])
    np.testing.assert_array_equal(a["observation.images.head"], b["observation.images.head"])
    c = env.reset(4)
    assert not np.allclose(a["observation.environment_state"][4:7], c["observation.environment_state"][4:7])
    assert {instruction_for("pick-place-v3", s) for s in range(3)} == set(
        instruction_for("pick-place", s) for s in range(3, 6)
    )


def test_step_limit_and_bad_actions(env: MetaWorldEnv):
    with pytest.raises(DataError, match=r"shape \(4,\)"):
        env.reset(0)
        env.step(np.zeros(3))
    with pytest.raises(DataError, match="non-finite"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    small = make("reach-v3", 0, render=False, max_steps=3)
    try:
        assert "observation.images.head" not in small.last_obs
        assert "observation.cameras.head.K" in small.last_obs
        results = [small.step(np.zeros(4)) for _ in range(3)]
        assert [r.truncated for r in results] == [False, False, True]
        with pytest.raises(DataError, match="reset"):
            small.step(np.zeros(4))
    finally:
        small.close()


def test_clear_errors():
    with pytest.raises(ConfigError, match="pick-place-v3"):
        make("pick-plce-v3")
    with pytest.raises(ConfigError, match="gripperPOV"):  # lists the available cameras
        make("reach-v3", cameras={"head": "nope"}, render=False)
    with pytest.raises(ConfigError, match="seed"):
        instruction_for("reach-v3", -1)
    with pytest.raises(ConfigError, match="seed"):
        instruction_for("reach-v3", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="image_size"):
        make("reach-v3", image_size=4, render=False)
    with pytest.raises(ConfigError, match="max_steps"):
        make("reach-v3", render=False, max_steps=501)
    assert len(TASKS) == 50


def test_depth_buffer_conversion():
    near, far = 0.02, 100.0
    z = np.array([[0.5, 2.0], [far, 0.0]], np.float32)
    # reversed-Z buffer value of a metric depth z: near/z scaled to [0, 1] (0 = far plane)
    raw = np.where(z > 0, (near / np.maximum(z, 1e-9) - near / far) / (1 - near / far), 0.0)
    out = depth_buffer_to_metres(raw.astype(np.float32), near, far)
    np.testing.assert_allclose(out[0], [0.5, 2.0], rtol=1e-3)
    assert out[1, 0] == 0 and out[1, 1] == 0


def test_demo_generation_writes_lerobot_v3(tmp_path):
    import json

    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.sim.demos import REPORT_FILE, ExpertDemoConfig, generate_episodes, write_expert_demos

    cfg = ExpertDemoConfig(tasks=("reach",), episodes_per_task=2, seed=11, image_size=(48, 64),
                     cameras={"head": "corner", "wrist": "gripperPOV"}, frames_after_success=3)
    report = write_expert_demos(tmp_path / "demos", cfg)
    assert report.successes == 2 and report.failures == 0 and report.demos_per_min > 0
    assert [(e["task"], e["seed"]) for e in report.episodes] == [("reach-v3", 11), ("reach-v3", 12)]
    ds = load_lerobot_v3(tmp_path / "demos")
    assert ds.num_episodes == 2 and ds.camera_config.cameras == ("head", "wrist")
    assert ds.camera_config.tcp_offset == tuple(TCP_OFFSET) and ds.info["fps"] == 80
    ep = ds.episode(1)
    assert ep.task == instruction_for("reach-v3", 12)
    T = ep.num_frames
    assert T == report.episodes[1]["frames"]
    f = ep.features
    assert f["action"].shape == (T, 4) and f["observation.images.head"].shape == (T, 48, 64, 3)
    assert f["observation.depth.wrist"].shape == (T, 48, 64)
    assert f["observation.cameras.wrist.T_world_cam"].shape == (T, 4, 4)
    # success first reported 4 frames before the end (frames_after_success = 3), and not before
    success = f["next.success"][:, 0].astype(bool)
    assert success[-4:].all() and not success[: T - 4].any()
    # replaying the stored actions from the same seed reproduces the stored trajectory
    with make("reach-v3", image_size=(48, 64), cameras={"head": "corner", "wrist": "gripperPOV"}) as env:
        obs = env.reset(12)
        np.testing.assert_array_equal(obs["observation.images.head"], f["observation.images.head"][0])
        np.testing.assert_allclose(obs["observation.depth.head"], f["observation.depth.head"][0], atol=6e-4)
        for t in range(T - 1):
            np.testing.assert_allclose(env.expert_action(obs), f["action"][t], atol=1e-6)
            obs = env.step(f["action"][t]).obs
        np.testing.assert_allclose(obs["observation.ee_pose"], f["observation.ee_pose"][-1], atol=1e-6)
    meta = json.loads((tmp_path / "demos" / REPORT_FILE).read_text())
    assert meta["config"]["tasks"] == ["reach-v3"] and meta["successes"] == 2

    # an expert that cannot finish in 10 steps: every attempt fails and is counted, nothing is written
    bad = ExpertDemoConfig(tasks=("pick-place-v3",), episodes_per_task=1, max_steps=10, max_attempts=2,
                     image_size=16, cameras=("corner",), depth=False)
    episodes, rep = generate_episodes(bad)
    assert episodes == [] and rep.per_task["pick-place-v3"]["failed_seeds"] == [0, 1] and rep.failures == 2
    with pytest.raises(ConfigError, match="none of 2 attempts"):
        write_expert_demos(tmp_path / "none", bad)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ConfigError, match="unknown MetaWorld task"):
        ExpertDemoConfig(tasks=("fly-v3",))
    with pytest.raises(ConfigError, match="episodes_per_task"):
        ExpertDemoConfig(episodes_per_task=0)


def test_every_instruction_fits_the_tiny_prompt():
    """Stage 2 / post-training prompt with these instructions: all must fit the tiny model's prompt slot."""
    from posevla.sim.metaworld import TASKS, instruction_for
    from posevla.models import PoseTextTokenizer, get_model_config

    tok = PoseTextTokenizer.build_scratch()
    limit = get_model_config("tiny").prompt_len
    for task in TASKS:
        for seed in range(3):
            text = instruction_for(task, seed)
            assert len(tok.encode_text(text)) + 2 <= limit, (task, text)  # + <bos> and "\n"
