"""Stage-2 trajectory targets: analytic waypoint geometry, visibility, clamping, grammar round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posevla.data.formats.lerobot import CameraConfig, Episode, load_lerobot_v3, write_lerobot_v3
from posevla.data.trajectory import (
    TrajectoryConfig,
    build_trajectory_example,
    camera_waypoints,
    collect_waypoint_translations,
    ee_pose_to_T,
    iter_waypoint_translations,
    waypoint_frames,
)
from posevla.errors import DataError
from posevla.geometry import euler_xyz_to_matrix
from posevla.tokens import BinCounts, BinSpec, PoseCodec

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
H, W, S = 48, 64, 32
K = np.array([[100.0, 0.0, 31.5], [0.0, 100.0, 23.5], [0.0, 0.0, 1.0]])
# Camera 2 m above the origin looking straight down: OpenCV x = world x, y = world -y, z = world -z.
R_WC = np.diag([1.0, -1.0, -1.0])
T_WC = np.eye(4)
T_WC[:3, :3] = R_WC
T_WC[:3, 3] = [0.0, 0.0, 2.0]
Q_Z90 = [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]  # wxyz, 90 deg about world z
R_Z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def episode(
    xyz: np.ndarray,
    quat=Q_Z90,
    T_world_cam: np.ndarray | None = None,
    task: str = "reach the cup",
    ee_key: str = "observation.ee_pose",
    extra: dict | None = None,
) -> Episode:
    T = len(xyz)
    q = np.broadcast_to(np.asarray(quat, np.float64), (T, 4))
    feats = {
        "observation.images.top": np.full((T, H, W, 3), 128, np.uint8),
        "observation.cameras.top.K": np.broadcast_to(K, (T, 3, 3)).copy(),
        "observation.cameras.top.T_world_cam": (
            np.broadcast_to(T_WC, (T, 4, 4)) if T_world_cam is None else T_world_cam
        ).copy(),
        ee_key: np.concatenate([xyz, q], 1).astype(np.float32),
    }
    feats.update(extra or {})
    return Episode(task, feats)


def static_xyz(p, T: int = 6) -> np.ndarray:
    return np.tile(np.asarray(p, np.float64), (T, 1))


def test_analytic_waypoint_with_tcp_offset_along_flange_z():
    ex = build_trajectory_example(
        episode(static_xyz([0.1, 0.2, 0.5])),
        0,
        camera_config=CameraConfig(cameras=("top",), tcp_offset=(0, 0, 0.2)),
        image_size=S,
        num_views=1,
    )
    entries = ex.views[0].entries
    assert [e.name for e in entries] == [f"arm {k}" for k in range(5)]
    e = entries[0]
    # TCP in the world: (0.1, 0.2, 0.5) + Rz90 @ (0, 0, 0.2) = (0.1, 0.2, 0.7); in the camera: R_WC^T (p - c)
    np.testing.assert_allclose(e.translation, [0.1, -0.2, 1.3], atol=1e-6)
    np.testing.assert_allclose(euler_xyz_to_matrix(e.euler_xyz), R_WC.T @ R_Z90, atol=1e-6)
    # pixel u = 100*0.1/1.3 + 31.5, v = 100*(-0.2)/1.3 + 23.5; model input: x0.5, 4 rows of top padding
    u, v = 100 * 0.1 / 1.3 + 31.5, -100 * 0.2 / 1.3 + 23.5
    um, vm = 0.5 * (u + 0.5) - 0.5, 0.5 * (v + 0.5) - 0.5 + 4
    np.testing.assert_allclose(e.anchor, [(um + 0.5) / S, (vm + 0.5) / S], atol=1e-6)
    assert e.size is None


def test_tcp_offset_is_rotated_with_the_flange_and_4x4_form_matches():
    ep = episode(static_xyz([0.1, 0.0, 0.5]))
    a = build_trajectory_example(
        ep, 0, camera_config=CameraConfig(cameras=("top",), tcp_offset=(0.2, 0, 0)), image_size=S, num_views=1
    )
    # Rz90 @ (0.2, 0, 0) = (0, 0.2, 0): TCP at (0.1, 0.2, 0.5) -> camera (0.1, -0.2, 1.5)
    np.testing.assert_allclose(a.views[0].entries[0].translation, [0.1, -0.2, 1.5], atol=1e-6)
    T = np.eye(4)
    T[0, 3] = 0.2
    b = build_trajectory_example(
        ep,
        0,
        camera_config=CameraConfig(cameras=("top",), tcp_offset=tuple(T.ravel())),
        image_size=S,
        num_views=1,
    )
    np.testing.assert_allclose(b.views[0].entries[0].translation, a.views[0].entries[0].translation)


def test_waypoints_follow_time_and_clamp_at_the_episode_end():
    assert waypoint_frames(8, 10, 5, 2).tolist() == [8, 9, 9, 9, 9]
    assert waypoint_frames(np.array([0, 3]), 10, 3, 4).tolist() == [[0, 4, 8], [3, 7, 9]]
    xyz = np.stack([np.linspace(-0.2, 0.2, 10), np.zeros(10), np.full(10, 1.0)], 1)
    cfg = TrajectoryConfig(horizon=4, stride=3)
    ex = build_trajectory_example(
        episode(xyz), 5, camera_config=CameraConfig(cameras=("top",)), image_size=S, num_views=1, config=cfg
    )
    xs = [e.translation[0] for e in ex.views[0].entries]
    np.testing.assert_allclose(xs, xyz[[5, 8, 9, 9], 0], atol=1e-6)  # frames 5, 8, then clamped to 9


def test_waypoints_use_the_camera_of_the_current_frame():
    T = 6
    Tw = np.broadcast_to(T_WC, (T, 4, 4)).copy()
    Tw[:, 0, 3] = 0.05 * np.arange(T)  # the camera slides along x
    ep = episode(static_xyz([0.0, 0.0, 1.0], T), T_world_cam=Tw)
    ex = build_trajectory_example(
        ep,
        2,
        camera_config=CameraConfig(cameras=("top",)),
        image_size=S,
        num_views=1,
        config=TrajectoryConfig(horizon=3, stride=2),
    )
    for e in ex.views[0].entries:  # all waypoints in camera frame at t = 2
        np.testing.assert_allclose(e.translation, [-0.1, 0.0, 1.0], atol=1e-6)
    ref = camera_waypoints(ee_pose_to_T(ep.features["observation.ee_pose"][[2, 4, 5]]), Tw[2], np.eye(4))
    np.testing.assert_allclose(ex.waypoints[0]["arm"], ref)


@pytest.mark.parametrize(
    "xyz",
    [[0.0, 0.0, 2.5], [5.0, 0.0, 1.0], [0.0, 0.0, 1.995]],
    ids=["behind_camera", "outside_image", "nearer_than_min_depth"],
)
def test_arm_not_listed_when_its_first_waypoint_is_not_visible(xyz):
    ex = build_trajectory_example(
        episode(static_xyz(xyz)), 0, camera_config=CameraConfig(cameras=("top",)), image_size=S, num_views=2
    )
    assert ex.views[0].entries == [] and ex.views[0].no_object == "arm"
    assert ex.views[1].no_object == "arm" and ex.cameras == ["top", None]
    assert not ex.prepared[1].pixels.any()


def test_later_waypoints_may_leave_the_image_with_clipped_anchors():
    xyz = np.array(
        [[0.0, 0.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 2.5]]
    )  # inside, far right, behind the camera
    ex = build_trajectory_example(
        episode(xyz),
        0,
        camera_config=CameraConfig(cameras=("top",)),
        image_size=S,
        num_views=1,
        config=TrajectoryConfig(horizon=3, stride=1),
    )
    a = np.stack([e.anchor for e in ex.views[0].entries])
    assert len(a) == 3 and np.all((a >= 0) & (a <= 1))
    assert a[1, 0] == 1.0  # off the right edge


def test_bimanual_arms_and_per_view_arm_lists():
    left = static_xyz([-0.1, 0.0, 1.0])
    right = static_xyz([0.1, 0.0, 1.0])
    ep = episode(
        left,
        ee_key="observation.ee_pose.left",
        extra={
            "observation.ee_pose.right": np.concatenate([right, np.tile(Q_Z90, (6, 1))], 1).astype(
                np.float32
            ),
            "observation.images.wrist": np.zeros((6, H, W, 3), np.uint8),
            "observation.cameras.wrist.K": np.broadcast_to(K, (6, 3, 3)).copy(),
            "observation.cameras.wrist.T_world_cam": np.broadcast_to(T_WC, (6, 4, 4)).copy(),
        },
    )
    cfg = TrajectoryConfig(
        horizon=2,
        stride=1,
        arms=(("left arm", "observation.ee_pose.left"), ("right arm", "observation.ee_pose.right")),
        view_arms=(("wrist", ("right arm",)),),
    )
    ex = build_trajectory_example(
        ep, 0, camera_config=CameraConfig(cameras=("top", "wrist")), image_size=S, num_views=2, config=cfg
    )
    assert [e.name for e in ex.views[0].entries] == ["left arm 0", "left arm 1", "right arm 0", "right arm 1"]
    assert [e.name for e in ex.views[1].entries] == ["right arm 0", "right arm 1"]
    with pytest.raises(DataError) as err:
        TrajectoryConfig(arms=(("arm", "observation.ee_pose"),), view_arms=(("wrist", ("left arm",)),))
    assert err.value.field == "view_arms"


def _codec(translations: np.ndarray) -> PoseCodec:
    bins = BinSpec.fit(
        translations[:, :2],
        translations[:, 2],
        np.linspace(0.01, 1.0, 50),
        BinCounts(trans_xy=256, trans_z=256, size=16),
    )
    return PoseCodec(bins, num_views=3)


def test_grammar_round_trip(tmp_path):
    T = 20
    t = np.linspace(0, 1, T)
    xyz = np.stack([0.3 * np.sin(3 * t), 0.2 * t - 0.1, 0.8 + 0.3 * t], 1)
    ep = episode(xyz)
    root = write_lerobot_v3(
        tmp_path / "ds",
        [ep],
        fps=10,
        robot_type="r",
        camera_config=CameraConfig(cameras=("top",), tcp_offset=(0, 0, 0.05)),
    )
    ds = load_lerobot_v3(root)
    cfg = TrajectoryConfig(horizon=5, stride=3)
    codec = _codec(collect_waypoint_translations(ds, config=cfg))
    ex = build_trajectory_example(
        ds.episode(0),
        4,
        camera_config=ds.camera_config,
        image_size=S,
        num_views=2,
        config=cfg,
        episode_index=0,
    )
    assert ex.prompt == "reach the cup"
    text = codec.serialize(ex.views)
    assert text.startswith("<image0>arm 0<loc") and text.endswith("</image0><image1>arm<no_object></image1>")
    assert "<size" not in text and text.count(";") == 5
    back = codec.parse(text + "<eos>")
    assert len(back) == 2 and back[1].no_object == "arm"
    b = codec.bins
    for want, got in zip(ex.views[0].entries, back[0].entries, strict=True):
        assert got.name == want.name and got.anchor.shape == (2,) and got.size is None
        assert np.all(np.abs(got.anchor - want.anchor) <= 0.5 / b.n_loc + 1e-12)
        ids = b.encode("trans_xy", want.translation[:2])
        assert np.all(
            np.abs(got.translation[:2] - want.translation[:2]) <= b.half_bin_width("trans_xy", ids) + 1e-12
        )
        dz = abs(got.translation[2] - want.translation[2])
        assert dz <= float(b.half_bin_width("trans_z", b.encode("trans_z", want.translation[2]))) + 1e-12
        d_rot = np.angle(np.exp(1j * (got.euler_xyz - want.euler_xyz)))  # wrapped to (-pi, pi]
        assert np.all(np.abs(d_rot) <= np.pi / (b.n_rot - 1) + 1e-9)
    assert codec.serialize(back) == text  # decoding then re-encoding is stable

    # lazily loaded pixels give the same example
    lazy = build_trajectory_example(
        ds.episode(0, images=False),
        4,
        camera_config=ds.camera_config,
        image_size=S,
        num_views=2,
        config=cfg,
        frame_images=ds.frame_images(0, 4),
    )
    assert codec.serialize(lazy.views) == text
    assert np.array_equal(lazy.prepared[0].pixels, ex.prepared[0].pixels)


def test_collected_translations_match_the_examples():
    ds = load_lerobot_v3(FIXTURE)
    cfg = TrajectoryConfig(horizon=3, stride=2)
    got = collect_waypoint_translations(ds, config=cfg)
    want = []
    for i in range(ds.num_episodes):
        ep = ds.episode(i)
        for t in range(ep.num_frames):
            ex = build_trajectory_example(
                ep, t, camera_config=ds.camera_config, image_size=S, num_views=1, config=cfg
            )
            want += [e.translation for e in ex.views[0].entries]
    np.testing.assert_allclose(got, np.array(want))
    assert got.shape == (7 * 3, 3)
    assert len(list(iter_waypoint_translations(ds, config=cfg, frame_step=2))) == 2
    # independent check on the fixture's static head camera: p_cam = R^T (p_tcp - c)
    ee = ds.episode(0, images=False).features["observation.ee_pose"].astype(np.float64)
    Tc = ds.camera_config.static_T_world_cam("head")
    p_tcp = ee[0, :3] + np.array([0.0, 0.0, 0.1])  # rotation about z keeps the z offset
    np.testing.assert_allclose(got[0], Tc[:3, :3].T @ (p_tcp - Tc[:3, 3]), atol=1e-6)


def test_trajectory_errors():
    ep = episode(static_xyz([0.0, 0.0, 1.0]))
    cc = CameraConfig(cameras=("top",))
    with pytest.raises(DataError) as err:
        build_trajectory_example(ep, 6, camera_config=cc, image_size=S, num_views=1)
    assert err.value.field == "frame_index"
    with pytest.raises(DataError) as err:
        build_trajectory_example(
            ep,
            0,
            camera_config=cc,
            image_size=S,
            num_views=1,
            config=TrajectoryConfig(arms=(("arm", "observation.ee_pose.left"),)),
        )
    assert err.value.field == "observation.ee_pose.left" and err.value.record == "episode -1 frame 0"
    with pytest.raises(DataError) as err:
        build_trajectory_example(
            ep, 0, camera_config=CameraConfig(cameras=("side",)), image_size=S, num_views=1
        )
    assert err.value.field == "observation.images.side"
    with pytest.raises(DataError) as err:
        TrajectoryConfig(stride=0)
    assert err.value.field == "stride"
