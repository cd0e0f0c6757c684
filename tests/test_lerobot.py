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
    with pytest.raises(DataError) as err:
        load_lerobot_v3(root)
    assert err.value.file.endswith("cameras.json") and err.value.field == "camera_config"
    ds = load_lerobot_v3(root, camera_config=calib)
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
