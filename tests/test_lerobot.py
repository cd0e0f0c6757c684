"""LeRobot v3 writer / reader: round trip, on-disk schema, a checked-in fixture (malformed inputs and bad
episodes: tests/corpus/lerobot.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import posevla.data.formats.lerobot.write as lr_write
import posevla.data.formats.lerobot.schema as lr
from posevla.data.formats.lerobot import CameraConfig, Episode, LeRobotV3Dataset, load_lerobot_v3, write_lerobot_v3
from posevla.errors import DataError

from corpus.lerobot import CAM, CONFIG, DATA, EPISODES, H, KEY_DEPTH, KEY_IMG, KEY_K, W, make_episodes

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return make_episodes()


@pytest.fixture(scope="module")
def written(tmp_path_factory, episodes) -> Path:
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    return write_lerobot_v3(root, episodes, fps=10, robot_type="sim_arm", camera_config=CONFIG)


@pytest.fixture
def copy(written, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(written, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# round trip and schema
# ------------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(written, episodes):
    ds = load_lerobot_v3(written)
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (3, 12, 10)
    assert ds.tasks == ["pick up the cube", "open the door"]
    assert ds.camera_config == CONFIG
    for i, ep in enumerate(episodes):
        got = ds.episode(i)
        assert got.task == ep.task
        assert set(got.features) == set(ep.features)
        for k, a in ep.features.items():
            b = got.features[k]
            assert b.dtype == a.dtype and b.shape == a.shape, k
            assert np.array_equal(a, b), k
        assert np.array_equal(ds.frame_task_indices(i), np.full(ep.num_frames, 0 if i != 1 else 1))


def test_stats_match_numpy(written, episodes):
    ds = load_lerobot_v3(written)
    for k in ("action", "observation.ee_pose", "observation.gripper", KEY_K):
        a = np.concatenate([e.features[k] for e in episodes]).astype(np.float64)
        np.testing.assert_allclose(ds.stats[k]["mean"], a.mean(0), atol=1e-12)
        np.testing.assert_allclose(ds.stats[k]["std"], a.std(0), atol=1e-9)
        np.testing.assert_array_equal(ds.stats[k]["min"], a.min(0))
        np.testing.assert_array_equal(ds.stats[k]["max"], a.max(0))
        assert ds.stats[k]["count"].tolist() == [12]
    img = np.concatenate([e.features[KEY_IMG] for e in episodes]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.stats[KEY_IMG]["mean"].reshape(3), img.mean(0), atol=1e-12)
    assert ds.stats[KEY_IMG]["mean"].shape == (3, 1, 1)


def test_on_disk_schema(written):
    info = json.loads((written / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (10, 3, 12, 2)
    assert info["robot_type"] == "sim_arm" and info["data_path"] == lr.DATA_PATH
    feats = info["features"]
    for k in lr.INDEX_COLUMNS:
        assert feats[k]["shape"] == [1]
    assert feats[KEY_IMG] == {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    assert feats[KEY_DEPTH]["dtype"] == "image" and feats[KEY_DEPTH]["shape"] == [H, W, 1]
    assert feats[KEY_K]["dtype"] == "float64" and feats[KEY_K]["shape"] == [3, 3]
    assert feats["observation.ee_pose"]["names"] == ["x", "y", "z", "qw", "qx", "qy", "qz"]
    assert feats["observation.gripper"] == {"dtype": "float32", "shape": [1], "names": None}

    data = pq.read_table(written / DATA)
    assert set(data.column_names) == set(feats)
    assert data.schema.field(KEY_IMG).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert data.schema.field("observation.gripper").type == pa.float32()
    assert data.column("index").to_pylist() == list(range(12))
    paths = data.column(KEY_DEPTH).combine_chunks().field("path").to_pylist()
    assert paths[5] == "images/observation.depth.front/episode-000001/frame-000000.png"
    assert (written / paths[5]).is_file()

    eps = pq.read_table(written / EPISODES).to_pydict()
    assert eps["episode_index"] == [0, 1, 2] and eps["length"] == [5, 4, 3]
    assert eps["dataset_from_index"] == [0, 5, 9] and eps["dataset_to_index"] == [5, 9, 12]
    assert eps["tasks"] == [["pick up the cube"], ["open the door"], ["pick up the cube"]]
    assert eps["data/chunk_index"] == [0, 0, 0] and eps["data/file_index"] == [0, 0, 0]
    assert "stats/action/mean" in eps
    assert pq.read_table(written / "meta" / "tasks.parquet").to_pydict() == {
        "task_index": [0, 1],
        "task": ["pick up the cube", "open the door"],
    }
    stats = json.loads((written / "meta" / "stats.json").read_text())
    assert set(stats["action"]) == {"mean", "std", "min", "max", "count"}
    cams = json.loads((written / "meta" / "cameras.json").read_text())
    assert cams["depth_scale"] == 0.001 and cams["tcp_offset"] == [0.0, 0.0, 0.1]


def test_lazy_pixels(written, episodes):
    ds = load_lerobot_v3(written)
    ep = ds.episode(1, images=False)
    assert KEY_IMG not in ep.features and KEY_DEPTH not in ep.features
    assert np.array_equal(ep.features["action"], episodes[1].features["action"])
    px = ds.frame_images(1, 2)
    assert np.array_equal(px[KEY_IMG], episodes[1].features[KEY_IMG][2])
    assert np.array_equal(px[KEY_DEPTH], episodes[1].features[KEY_DEPTH][2])
    assert ds.image_size(CAM) == (W, H)
    with pytest.raises(DataError, match="out of range"):
        ds.frame_images(1, 4)


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_lerobot_v3_tiny", FIXTURE.parent / "make_lerobot_v3_tiny.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_fixture_decodes_exactly():
    mod = _load_fixture_module()
    ds = load_lerobot_v3(FIXTURE)
    assert (ds.num_episodes, ds.num_frames, ds.info["robot_type"]) == (2, 7, "franka")
    assert ds.camera_config.tcp_offset == (0.0, 0.0, 0.1)
    for i, exp in enumerate(mod.expected()):
        ep = ds.episode(i)
        assert ep.task == exp["task"]
        for k in (
            "observation.images.head",
            "observation.depth.head",
            "observation.ee_pose",
            "observation.gripper",
            "observation.state",
            "action",
        ):
            assert ep.features[k].dtype == exp[k].dtype and np.array_equal(ep.features[k], exp[k]), k
        T = len(exp["action"])
        assert np.array_equal(ep.features["observation.cameras.head.K"], np.broadcast_to(mod.K, (T, 3, 3)))
        assert np.allclose(ep.features["observation.cameras.head.T_world_cam"], mod.camera_pose())
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total <= 200_000


def test_camera_config_from_a_separate_file(tmp_path):
    root = tmp_path / "agibot_like"
    shutil.copytree(FIXTURE, root)
    calib = tmp_path / "calibration.json"
    shutil.move(root / "meta" / "cameras.json", calib)
    bare = load_lerobot_v3(root)  # LeRobot writes no camera file: the dataset loads, uncalibrated
    assert bare.camera_config.cameras == ("head",) and bare.camera_config_file == ""
    assert bare.calibration("head") == {"K": None, "T_world_cam": None}
    from posevla.data.trajectory import collect_waypoint_translations

    with pytest.raises(DataError) as err:
        collect_waypoint_translations(bare)
    assert err.value.field == "observation.cameras.head.K" and err.value.record == "camera head"
    assert all(w in err.value.fix for w in ("meta/cameras.json", "observation.cameras.head.T_world_cam", "--data."))
    with pytest.raises(DataError) as err:
        load_lerobot_v3(root, camera_config=tmp_path / "nope.json")
    assert err.value.file.endswith("nope.json") and err.value.field == "camera_config"
    ds = load_lerobot_v3(root, camera_config=calib)
    assert ds.calibration("head") == {"K": "static", "T_world_cam": "static"}
    assert ds.camera_config.static_K("head") is not None
    ds2 = load_lerobot_v3(root, camera_config=CameraConfig.load(calib))
    assert np.array_equal(
        ds2.episode(0, images=False).features["action"], ds.episode(0, images=False).features["action"]
    )


def test_camera_config_json_round_trip_and_tcp_forms(tmp_path):
    cfg = CameraConfig(
        cameras=("head", "wrist"),
        tcp_offset=(0.0, 0.0, 0.227),
        depth_scale=0.0001,
        gripper_open_positive=False,
        K={"head": np.diag([100.0, 100.0, 1.0])},
        T_world_cam={"head": np.eye(4)},
    )
    back = CameraConfig.load(cfg.save(tmp_path / "c.json"))
    assert back == cfg and hash(back) == hash(cfg)
    T = np.eye(4)
    T[2, 3] = 0.227
    assert np.allclose(cfg.T_ee_tcp(), T)
    assert np.allclose(CameraConfig(cameras=("a",), tcp_offset=tuple(T.reshape(-1))).T_ee_tcp(), T)


def test_write_is_atomic_and_refuses_to_clobber(tmp_path, episodes, monkeypatch):
    root = tmp_path / "ds"
    write_lerobot_v3(root, episodes[:1], fps=5, robot_type="r", camera_config=CONFIG)
    with pytest.raises(DataError, match="not empty"):
        write_lerobot_v3(root, episodes, fps=5, robot_type="r", camera_config=CONFIG)

    calls = {"n": 0}
    real = lr_write._encode_png

    def crash(img):
        calls["n"] += 1
        if calls["n"] > 7:
            raise OSError("disk full")
        return real(img)

    monkeypatch.setattr(lr_write, "_encode_png", crash)
    with pytest.raises(OSError, match="disk full"):
        write_lerobot_v3(root, episodes, fps=5, robot_type="r", camera_config=CONFIG, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        write_lerobot_v3(tmp_path / "fresh", episodes, fps=5, robot_type="r", camera_config=CONFIG)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial folders left behind
    assert load_lerobot_v3(root).num_episodes == 1  # the old dataset is intact
    monkeypatch.setattr(lr_write, "_encode_png", real)
    write_lerobot_v3(root, episodes, fps=5, robot_type="r", camera_config=CONFIG, overwrite=True)
    assert load_lerobot_v3(root).num_episodes == 3


def test_dataset_type_and_repr(written):
    ds = load_lerobot_v3(written)
    assert isinstance(ds, LeRobotV3Dataset) and len(ds) == 3 and "episodes=3" in repr(ds)


# ------------------------------------------------------------------------------------------------
# datasets written by the real lerobot library (tests/fixtures/make_lerobot_real_fixtures.py)
# ------------------------------------------------------------------------------------------------

REAL_IMAGES = FIXTURE.parent / "lerobot_real_images"
REAL_VIDEO = FIXTURE.parent / "lerobot_real_video"
FRONT, FRONT_DEPTH = "observation.images.front", "observation.depth.front"


def _real_module():
    spec = importlib.util.spec_from_file_location("make_lerobot_real", FIXTURE.parent / "make_lerobot_real_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _expected(root: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(root / "expected.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((root / "expected.json").read_text())


def _all_frames(ds: LeRobotV3Dataset, key: str) -> np.ndarray:
    return np.concatenate([ds.episode(e).features[key] for e in range(ds.num_episodes)])


@pytest.mark.parametrize("root", [REAL_IMAGES, REAL_VIDEO], ids=["images", "video"])
def test_lerobot_written_numbers_and_tasks_equal_lerobots(root):
    exp, meta = _expected(root)
    assert meta["versions"]["lerobot"] == "0.4.4"
    assert not (root / "meta" / "cameras.json").exists()
    ds = load_lerobot_v3(root)  # no camera file: loads, uncalibrated
    assert (ds.num_episodes, ds.num_frames, ds.fps) == (2, 9, 10)
    assert ds.camera_config.cameras == ("front",) and ds.calibration("front") == {"K": None, "T_world_cam": None}
    assert ds.tasks == ["pick up the red block", "open the drawer"]
    keys = ["observation.state", "action"] + (["observation.ee_pose"] if root == REAL_VIDEO else [])
    for k in keys:
        got = np.concatenate([ds.episode(e, images=False).features[k] for e in range(2)])
        assert got.dtype == exp[k].dtype and np.array_equal(got, exp[k]), k
    assert [ds.episode_tasks[e][0] for e in range(2) for _ in range(ds.episode_lengths[e])] == meta["tasks"]
    assert [ds.tasks[i] for e in range(2) for i in ds.frame_task_indices(e)] == meta["tasks"]
    mod = _real_module()
    for e in range(2):
        src = mod.source_frames(e)
        for k, name in (("observation.state", "state"), ("action", "action")):
            assert np.array_equal(ds.episode(e, images=False).features[k], src[name])


def test_lerobot_written_png_frames_equal_lerobots_and_the_source():
    exp, _ = _expected(REAL_IMAGES)
    ds = load_lerobot_v3(REAL_IMAGES)
    assert ds.video_keys() == [] and ds.pixel_keys() == [FRONT]
    got = _all_frames(ds, FRONT)
    assert got.dtype == np.uint8 and np.array_equal(got, exp[FRONT])  # what LeRobot's __getitem__ returns
    mod = _real_module()
    assert np.array_equal(got, np.concatenate([mod.source_frames(e)["rgb"] for e in range(2)]))  # PNG: lossless


def test_lerobot_written_video_frames_are_bit_exact_with_lerobots_decoders(tmp_path):
    exp, meta = _expected(REAL_VIDEO)
    assert meta["video_codecs"] == {FRONT: "av1", FRONT_DEPTH: "av1"}
    assert set(meta["decoders"]) == {"torchcodec", "pyav"}
    cams = tmp_path / "cams.json"
    CameraConfig(cameras=("front",), depth_scale=0.01).save(cams)
    ds = load_lerobot_v3(REAL_VIDEO, camera_config=cams)
    assert ds.video_keys() == [FRONT, FRONT_DEPTH]
    rgb, depth = _all_frames(ds, FRONT), _all_frames(ds, FRONT_DEPTH)
    for backend in meta["decoders"]:
        assert np.array_equal(rgb, exp[f"{FRONT}@{backend}"]), backend
        # a depth video is gray RGB: its first channel is the stored unit
        assert np.array_equal(depth, exp[f"{FRONT_DEPTH}@{backend}"][..., 0].astype(np.float32) * np.float32(0.01))
    mod = _real_module()
    src = np.concatenate([mod.source_frames(e)["rgb"] for e in range(2)]).astype(np.int32)
    psnr = 10 * np.log10(255.0**2 / np.mean((rgb.astype(np.float64) - src) ** 2))
    assert psnr > 28.0, psnr  # AV1 crf 30 on 32x24 frames (measured: 31.1 dB)
    src_d = np.concatenate([mod.source_frames(e)["depth"] for e in range(2)]).astype(np.float32) * np.float32(0.01)
    assert np.abs(depth - src_d).mean() < 0.02 and np.abs(depth - src_d).max() <= 0.1  # <= 10 units (measured 6)
    # random access (backwards, shuffled, repeated) gives the same frames as the sequential read
    order = [8, 0, 4, 3, 5, 5, 1, 7, 2, 6]
    starts = [0, 5]
    for row in order:
        e = 0 if row < 5 else 1
        assert np.array_equal(ds.frame_images(e, row - starts[e], [FRONT])[FRONT], rgb[row]), row


def test_task_table_layouts_of_every_lerobot_version(tmp_path):
    import pyarrow.parquet as pq

    assert pq.read_table(REAL_IMAGES / "meta" / "tasks.parquet").column_names == ["task_index", "__index_level_0__"]
    for name, layout in (("set_index", "tasks_set_index.parquet"), ("plain", None)):
        root = tmp_path / name
        shutil.copytree(REAL_IMAGES, root)
        if layout:
            shutil.copy(root / "meta" / layout, root / "meta" / "tasks.parquet")
            assert "task" in pq.read_table(root / "meta" / "tasks.parquet").column_names
        else:  # the newer layout: task_index and a `task` column, no pandas index
            pq.write_table(pa.table({"task_index": [1, 0], "task": ["open the drawer", "pick up the red block"]}),
                           root / "meta" / "tasks.parquet")
        ds = load_lerobot_v3(root)
        assert ds.tasks == ["pick up the red block", "open the drawer"]
        assert ds.episode(1, images=False).task == "open the drawer"


def test_doctor_decodes_every_pixel_feature(tmp_path):
    from posevla.data.doctor import run_doctor

    rep = run_doctor(REAL_VIDEO)
    assert not rep.errors and rep.stats["frames decoded"] == 2 * 2 * 3  # 2 features x 2 episodes x 3 frames
    assert rep.stats["videos"] == f"{FRONT},{FRONT_DEPTH}" and "none for front" in rep.stats["calibration"]
    bad = tmp_path / "ds"
    shutil.copytree(REAL_VIDEO, bad)
    mp4 = bad / "videos" / FRONT / "chunk-000" / "file-000.mp4"
    mp4.write_bytes(mp4.read_bytes()[: int(mp4.stat().st_size * 0.6)])
    rep = run_doctor(bad)
    assert rep.errors and any(f.file and f.file.endswith("file-000.mp4") for f in rep.errors)


def test_video_decode_speed():
    """Sequential decode throughput of the AV1 fixture (printed; a loose floor catches a seek per frame gone wrong)."""
    import time

    ds = load_lerobot_v3(REAL_VIDEO)
    ds.close()
    t0 = time.perf_counter()
    n = 0
    for _ in range(5):
        for e in range(ds.num_episodes):
            for t in range(int(ds.episode_lengths[e])):
                ds.frame_images(e, t, [FRONT])
                n += 1
    fps = n / (time.perf_counter() - t0)
    print(f"decoded {n} frames of 32x24 AV1 at {fps:.0f} frames/s")
    assert fps > 50


def _calibration(tmp_path: Path) -> Path:
    """A cameras json for the real fixtures' 32x24 front camera at (0, -0.6, 0.5) looking at (0, 0, 0.1)."""
    c = np.array([0.0, -0.6, 0.5])
    z = np.array([0.0, 0.0, 0.1]) - c
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = c
    K = np.array([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])
    cfg = CameraConfig(cameras=("front",), tcp_offset=(0.0, 0.0, 0.05), depth_scale=0.01, K={"front": K},
                       T_world_cam={"front": T})
    return cfg.save(tmp_path / "calibration.json")


@pytest.mark.parametrize("root", [REAL_IMAGES, REAL_VIDEO], ids=["images", "video"])
def test_lerobot_written_dataset_posttrains_without_calibration(root, tmp_path):
    """Post-training (objective 'actions') on a LeRobot-written dataset: no camera file, no EE pose; the default
    action space resolves to joints ('action', state 'observation.state'); 2 steps; the policy serves it."""
    import dataclasses

    import torch

    from posevla.data.actions import ActionDataset, nominal_K
    from posevla.data.action_space import ActionConfig
    from posevla.policy import Policy
    from posevla.training.config import DataConfig
    from posevla.training.configs import get_config
    from posevla.training.trainer import train

    torch.set_num_threads(1)
    base = get_config("posttrain-tiny")
    cfg = dataclasses.replace(
        base, init_checkpoint=None, data=DataConfig(train_data=str(root)), out_dir=str(tmp_path / "run"), steps=2,
        batch_size=2, save_every=2, log_every=1, optim=dataclasses.replace(base.optim, warmup_steps=1),
        progress=False, action=ActionConfig(constant_dims=("R20", "R21")),  # the fixture's EE turns about z only
    )
    assert cfg.action.space == "auto"
    res = train(cfg)
    assert res.steps == 2 and np.isfinite(res.final_loss)
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    act = conf["train"]["action"]
    if root == REAL_IMAGES:  # joint space: what LeRobot robots record
        assert (act["space"], act["joint_key"]) == ("joints", "action")
        assert conf["data"]["action_names"] == [f"action[{i}]" for i in range(6)]
        assert conf["data"]["state_names"] == [f"observation.state[{i}]" for i in range(6)]
        dim = 6
    else:  # the video fixture also records an EE pose (no gripper): the absolute EE-pose space, 9 dims
        assert (act["space"], act["gripper_keys"]) == ("ee_pose", [])
        assert conf["data"]["action_names"] == ["x", "y", "z", "R00", "R10", "R20", "R01", "R11", "R21"]
        dim = 9
    assert np.allclose(conf["data"]["camera_config"]["K"]["front"], nominal_K(32, 24))
    policy = Policy.from_checkpoint(tmp_path / "run", device="cpu", precision="fp32")
    assert policy.action_cfg.space == act["space"]
    data = ActionDataset(load_lerobot_v3(root), policy.action_cfg, policy.spec, policy.stats)
    obs = {k: v for k, v in data.observation(0, 0).items() if k != "action"}  # what a robot sends: no K
    assert not any(k.startswith("observation.cameras.") for k in obs)
    out = policy.infer(obs, seed=0)
    assert out["actions"].shape == (16, dim) and np.all(np.isfinite(out["actions"]))


def test_ee_pose_space_without_an_ee_pose_names_the_flag():
    from posevla.data.action_space import ActionConfig
    from posevla.data.actions import ActionDataset
    from posevla.data.collate import ExampleSpec

    ds = load_lerobot_v3(REAL_IMAGES)
    with pytest.raises(DataError) as err:
        ActionDataset(ds, ActionConfig(space="ee_pose"), ExampleSpec(64, 2, 16, 16))
    assert err.value.field == "observation.ee_pose" and "--action.space joints --action.joint-key action" in err.value.fix
    assert ActionConfig().resolve(ds.features).space == "joints"
    assert ActionConfig().resolve(load_lerobot_v3(REAL_VIDEO).features).space == "ee_pose"


def test_stage2_trajectories_from_a_lerobot_written_video_dataset_with_a_cameras_file(tmp_path):
    """A `lerobot` source with SourceSpec.cameras: trajectory examples of decoded video frames, waypoints in the
    camera frame, the depth video as the depth prior."""
    from posevla.data.collate import ExampleSpec
    from posevla.data.datasets import TrajectoryDataset
    from posevla.data.sources import SourceSpec, load_source, source_labels
    from posevla.data.trajectory import ee_pose_to_T, waypoint_frames

    calib = _calibration(tmp_path)
    with pytest.raises(DataError, match="three ways"):  # without the file: the error says how to calibrate
        TrajectoryDataset(load_source(SourceSpec("lerobot", str(REAL_VIDEO))).robot, ExampleSpec(64, 2, 16, 16))
    spec = SourceSpec("lerobot", str(REAL_VIDEO), cameras=str(calib), horizon=3, stride=2)
    src = load_source(spec)
    ds = src.robot
    assert ds.calibration("front") == {"K": "static", "T_world_cam": "static"}
    traj = TrajectoryDataset(ds, ExampleSpec(64, 2, 16, 16), config=spec.trajectory_config())
    assert len(traj) == 9
    exp, meta = _expected(REAL_VIDEO)
    cfg = CameraConfig.load(calib)
    for i, (e, t) in enumerate(traj.entries):
        ex = traj.example(i)
        assert ex.prompt == meta["tasks"][i] and ex.cameras == ["front", None]
        assert ex.prepared[0].has_depth  # the depth video, 0.01 m per unit
        T_cw = np.linalg.inv(cfg.static_T_world_cam("front"))
        ee = exp["observation.ee_pose"][int(ds._from[e]):][waypoint_frames(t, int(ds.episode_lengths[e]), 3, 2)]
        want = T_cw @ ee_pose_to_T(ee) @ cfg.T_ee_tcp()
        assert np.allclose(ex.waypoints[0]["arm"], want, atol=1e-6)
        assert [p.name for p in ex.views[0].entries] == ["arm 0", "arm 1", "arm 2"]
    labels = source_labels(src)
    assert len(labels["trans_z"]) == 9 * 3 and np.all((labels["trans_z"] > 0.3) & (labels["trans_z"] < 0.8))


def test_video_dataset_pickles_for_loader_workers_and_is_thread_safe():
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    ds = load_lerobot_v3(REAL_VIDEO)
    want = _all_frames(ds, FRONT)  # leaves the video file open
    back = pickle.loads(pickle.dumps(ds))  # open files stay behind; the copy reopens them
    assert np.array_equal(_all_frames(back, FRONT), want)
    rows = [(e, t) for e in range(2) for t in range(int(ds.episode_lengths[e]))] * 4
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda et: ds.frame_images(*et, [FRONT])[FRONT], rows))
    assert all(np.array_equal(g, want[int(ds._from[e]) + t]) for g, (e, t) in zip(got, rows))


def test_depth_video_declared_with_one_channel_is_read_the_same(tmp_path):
    """LeRobot 0.4.4 refuses 1-channel video features, so its depth videos are gray RGB [H, W, 3]; a dataset that
    declares the depth video as [H, W, 1] (another writer) is read the same way: first channel x depth_scale."""
    root = tmp_path / "ds"
    shutil.copytree(REAL_VIDEO, root)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][FRONT_DEPTH]["shape"] = [24, 32, 1]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    exp, _ = _expected(REAL_VIDEO)
    d = _all_frames(load_lerobot_v3(root), FRONT_DEPTH)
    assert d.shape == (9, 24, 32) and np.array_equal(d, exp[f"{FRONT_DEPTH}@pyav"][..., 0] * np.float32(0.001))
