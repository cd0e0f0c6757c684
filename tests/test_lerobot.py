"""LeRobot v3 writer / reader: round trip, on-disk schema, a checked-in fixture and malformed inputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import posevla.data.formats.lerobot.write as lr_write
import posevla.data.formats.lerobot.schema as lr
from posevla.data.formats.lerobot import CameraConfig, Episode, LeRobotV3Dataset, load_lerobot_v3, write_lerobot_v3
from posevla.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
H, W = 12, 16
CAM = "front"
KEY_IMG, KEY_DEPTH = f"observation.images.{CAM}", f"observation.depth.{CAM}"
KEY_K, KEY_T = f"observation.cameras.{CAM}.K", f"observation.cameras.{CAM}.T_world_cam"


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_episode(T: int, task: str, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    K = np.array([[20.0, 0.0, (W - 1) / 2], [0.0, 20.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    Tw = np.zeros((T, 4, 4))
    for t in range(T):  # a moving (wrist-like) camera
        Tw[t] = np.eye(4)
        Tw[t, :3, :3] = _rot_z(0.1 * t)
        Tw[t, :3, 3] = [0.01 * t, 0.0, -1.0]
    q = rng.normal(size=(T, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    depth_mm = rng.integers(0, 3000, (T, H, W)).astype(np.uint16)
    return Episode(
        task,
        {
            KEY_IMG: rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
            KEY_DEPTH: depth_mm.astype(np.float32) * np.float32(0.001),
            KEY_K: np.broadcast_to(K, (T, 3, 3)).copy(),
            KEY_T: Tw,
            "observation.ee_pose": np.concatenate([rng.normal(size=(T, 3)), q], 1).astype(np.float32),
            "observation.gripper": rng.uniform(0, 1, (T, 1)).astype(np.float32),
            "observation.state": rng.normal(size=(T, 6)).astype(np.float32),
            "observation.joints": rng.normal(size=(T, 7)).astype(np.float32),
            "action": rng.normal(size=(T, 4)).astype(np.float32),
            "observation.contact": rng.integers(0, 2, (T, 2)).astype(np.int64),
            "next.success": (np.arange(T) >= T - 2)[:, None],
        },
    )


EPISODE_SPECS = [(5, "pick up the cube"), (4, "open the door"), (3, "pick up the cube")]
CONFIG = CameraConfig(cameras=(CAM,), tcp_offset=(0.0, 0.0, 0.1))


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [make_episode(T, task, i) for i, (T, task) in enumerate(EPISODE_SPECS)]


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


# ------------------------------------------------------------------------------------------------
# malformed inputs
# ------------------------------------------------------------------------------------------------


def _edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _edit_column(path: Path, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    table = pq.read_table(path)
    typ = table.schema.field(name).type
    values = np.array(table.column(name).to_pylist())
    new = fn(values.copy())
    i = table.column_names.index(name)
    table = table.set_column(i, name, pa.array(new.tolist(), typ))
    pq.write_table(table, path)


def _set(index, value):
    def fn(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a

    return fn


def _drop_column(name: str):
    def mutate(root: Path) -> None:
        t = pq.read_table(root / DATA)
        pq.write_table(t.drop_columns([name]), root / DATA)

    return mutate


def _truncate(rel: str, keep: float = 0.5):
    def mutate(root: Path) -> None:
        p = root / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return mutate


def _bad_rotation(a: np.ndarray) -> np.ndarray:
    a[7, :3, :3] *= 1.1  # episode 1 frame 2
    return a


def _shift_lengths(root: Path) -> None:
    p = root / EPISODES
    t = pq.read_table(p)
    for name, vals in (
        ("length", [6, 3, 3]),
        ("dataset_from_index", [0, 6, 9]),
        ("dataset_to_index", [6, 9, 12]),
    ):
        t = t.set_column(t.column_names.index(name), name, pa.array(vals, pa.int64()))
    pq.write_table(t, p)


def _frame_gap(a: np.ndarray) -> np.ndarray:
    a[5:9] = [0, 1, 3, 4]  # episode 1
    return a


IMG0 = "images/observation.images.front/episode-000000/frame-000002.png"
DEPTH0 = "images/observation.depth.front/episode-000000/frame-000000.png"

# (id, mutate, file the error must name, field it must name (None: the whole file), record or None, stage)
MALFORMED = [
    ("missing_info", lambda r: (r / "meta" / "info.json").unlink(), "meta/info.json", None, None, "load"),
    (
        "info_not_json",
        lambda r: (r / "meta" / "info.json").write_text('{"codebase_version": '),
        "meta/info.json",
        None,
        None,
        "load",
    ),
    (
        "wrong_codebase_version",
        lambda r: _edit_json(r / "meta" / "info.json", lambda d: d.update(codebase_version="v2.1")),
        "meta/info.json",
        "codebase_version",
        None,
        "load",
    ),
    (
        "empty_dataset",
        lambda r: _edit_json(r / "meta" / "info.json", lambda d: d.update(total_episodes=0, total_frames=0)),
        "meta/info.json",
        "total_episodes",
        None,
        "load",
    ),
    (
        "total_frames_wrong",
        lambda r: _edit_json(r / "meta" / "info.json", lambda d: d.update(total_frames=13)),
        "meta/info.json",
        "total_frames",
        None,
        "load",
    ),
    (
        "feature_shape_mismatch",
        lambda r: _edit_json(r / "meta" / "info.json", lambda d: d["features"]["action"].update(shape=[5])),
        DATA,
        "action",
        None,
        "load",
    ),
    ("missing_column", _drop_column("frame_index"), DATA, "frame_index", None, "load"),
    ("missing_feature_column", _drop_column("observation.state"), DATA, "observation.state", None, "load"),
    ("truncated_parquet", _truncate(DATA), DATA, None, None, "load"),
    ("truncated_episodes_parquet", _truncate(EPISODES, 0.8), EPISODES, None, None, "load"),
    (
        "nan_in_ee_pose",
        lambda r: _edit_column(r / DATA, "observation.ee_pose", _set((3, 1), np.nan)),
        DATA,
        "observation.ee_pose",
        "episode 0 frame 3",
        "load",
    ),
    (
        "non_unit_quaternion",
        lambda r: _edit_column(r / DATA, "observation.ee_pose", _set((10, slice(3, 7)), 0.9)),
        DATA,
        "observation.ee_pose",
        "episode 2 frame 1",
        "load",
    ),
    (
        "nan_in_action",
        lambda r: _edit_column(r / DATA, "action", _set((0, 2), np.inf)),
        DATA,
        "action",
        "episode 0 frame 0",
        "load",
    ),
    (
        "non_orthonormal_T_world_cam",
        lambda r: _edit_column(r / DATA, KEY_T, _bad_rotation),
        DATA,
        KEY_T,
        "episode 1 frame 2",
        "load",
    ),
    (
        "T_world_cam_last_row",
        lambda r: _edit_column(r / DATA, KEY_T, _set((4, 3, 0), 0.5)),
        DATA,
        KEY_T,
        "episode 0 frame 4",
        "load",
    ),
    (
        "K_inconsistent_with_image_size",
        lambda r: _edit_column(r / DATA, KEY_K, _set((slice(9, 12), 0, 2), 319.5)),
        DATA,
        KEY_K,
        "episode 2 frame 0",
        "load",
    ),
    (
        "frame_index_gap",
        lambda r: _edit_column(r / DATA, "frame_index", _frame_gap),
        DATA,
        "frame_index",
        "episode 1 frame 2",
        "load",
    ),
    ("episode_length_mismatch", _shift_lengths, DATA, "episode_index", "episode 0", "load"),
    (
        "inconsistent_from_to",
        lambda r: _edit_column(r / EPISODES, "dataset_to_index", _set(1, 10)),
        EPISODES,
        "length",
        "episode 1",
        "load",
    ),
    (
        "unknown_task_index",
        lambda r: _edit_column(r / DATA, "task_index", _set(6, 7)),
        DATA,
        "task_index",
        "episode 1 frame 1",
        "load",
    ),
    (
        "timestamp_off_grid",
        lambda r: _edit_column(r / DATA, "timestamp", _set(2, 0.25)),
        DATA,
        "timestamp",
        "episode 0 frame 2",
        "load",
    ),
    (
        "index_not_contiguous",
        lambda r: _edit_column(r / DATA, "index", _set(4, 40)),
        DATA,
        "index",
        "episode 0 frame 4",
        "load",
    ),
    (
        "task_gap_in_tasks_parquet",
        lambda r: _edit_column(r / "meta" / "tasks.parquet", "task_index", _set(1, 5)),
        "meta/tasks.parquet",
        "task_index",
        None,
        "load",
    ),
    ("missing_stats", lambda r: (r / "meta" / "stats.json").unlink(), "meta/stats.json", None, None, "load"),
    (
        "stats_wrong_shape",
        lambda r: _edit_json(r / "meta" / "stats.json", lambda d: d["action"].update(mean=[0.0])),
        "meta/stats.json",
        "action.mean",
        None,
        "load",
    ),
    (
        "camera_K_both_static_and_per_frame",
        lambda r: _edit_json(r / "meta" / "cameras.json", lambda d: d.update(K={CAM: np.eye(3).tolist()})),
        "meta/cameras.json",
        "K",
        None,
        "load",
    ),
    (
        "camera_without_images",
        lambda r: _edit_json(r / "meta" / "cameras.json", lambda d: d.update(cameras=[CAM, "side"])),
        "meta/cameras.json",
        "cameras",
        None,
        "load",
    ),
    ("missing_png", lambda r: (r / IMG0).unlink(), IMG0, KEY_IMG, "episode 0 frame 2", "load"),
    ("truncated_png", _truncate(IMG0, 0.7), IMG0, KEY_IMG, "episode 0 frame 2", "load"),
    (
        "rgb_png_is_grayscale",
        lambda r: __import__("PIL.Image").Image.new("L", (W, H)).save(r / IMG0),
        IMG0,
        KEY_IMG,
        "episode 0 frame 2",
        "load",
    ),
    (
        "depth_in_wrong_units",
        lambda r: _edit_json(r / "meta" / "cameras.json", lambda d: d.update(depth_scale=1.0)),
        DEPTH0,
        KEY_DEPTH,
        "episode 0 frame 0",
        "episode",
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_dataset(copy, case):
    _, mutate, file, fld, record, stage = case
    mutate(copy)
    with pytest.raises(DataError) as err:
        ds = load_lerobot_v3(copy)
        if stage == "episode":
            for i in range(ds.num_episodes):
                ds.episode(i)
    e = err.value
    assert e.file is not None and e.file.replace("\\", "/").endswith(file), (e.file, str(e))
    assert e.field == fld, str(e)
    if record is not None:
        assert e.record == record, str(e)
    assert "fix:" in str(e)


def test_truncated_png_without_header_check_fails_on_decode(copy):
    _truncate(IMG0, 0.7)(copy)
    ds = load_lerobot_v3(copy, check_images=False)
    ds.episode(1)
    with pytest.raises(DataError) as err:
        ds.frame_images(0, 2)
    assert (
        err.value.file.endswith(IMG0)
        and err.value.field == KEY_IMG
        and err.value.record == "episode 0 frame 2"
    )


def test_load_rejects_a_non_dataset_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_lerobot_v3(tmp_path / "nope")
    assert err.value.file.endswith("nope")


# ------------------------------------------------------------------------------------------------
# writer input validation
# ------------------------------------------------------------------------------------------------


def _with(ep: Episode, key: str, fn: Callable[[np.ndarray], np.ndarray] | None) -> Episode:
    feats = {k: v.copy() for k, v in ep.features.items()}
    if fn is None:
        del feats[key]
    else:
        feats[key] = fn(feats[key])
    return Episode(ep.task, feats)


WRITER_CASES = [
    ("depth_in_millimetres", 1, KEY_DEPTH, lambda a: a * 1000, "episode 1 frame 0"),
    ("depth_negative", 0, KEY_DEPTH, _set((2, 0, 0), -0.5), "episode 0 frame 2"),
    ("non_unit_quaternion", 2, "observation.ee_pose", _set((1, 3), 3.0), "episode 2 frame 1"),
    ("nan_state", 0, "observation.state", _set((4, 0), np.nan), "episode 0 frame 4"),
    ("K_for_another_image_size", 1, KEY_K, _set((slice(None), 0, 2), 319.5), "episode 1 frame 0"),
    ("reflection_T_world_cam", 0, KEY_T, _set((0, 0, 0), -1.0), "episode 0 frame 0"),
    ("image_float", 0, KEY_IMG, lambda a: a.astype(np.float32), "episode 0"),
    ("frame_count_mismatch", 1, "action", lambda a: a[:-1], "episode 1"),
    ("scalar_without_trailing_dim", 0, "observation.gripper", lambda a: a[:, 0], "episode 0"),
    ("different_keys", 1, "observation.joints", None, "episode 1"),
    ("different_shape", 2, "action", lambda a: np.concatenate([a, a], 1), "episode 2"),
]


@pytest.mark.parametrize("case", WRITER_CASES, ids=[c[0] for c in WRITER_CASES])
def test_writer_rejects_bad_episodes(tmp_path, episodes, case):
    _, idx, key, fn, record = case
    eps = list(episodes)
    eps[idx] = _with(eps[idx], key, fn)
    with pytest.raises(DataError) as err:
        write_lerobot_v3(tmp_path / "ds", eps, fps=10, robot_type="r", camera_config=CONFIG)
    assert err.value.field == key and err.value.record == record, str(err.value)
    assert not (tmp_path / "ds").exists()


def test_writer_rejects_bad_arguments(tmp_path, episodes):
    with pytest.raises(DataError) as err:
        write_lerobot_v3(tmp_path / "ds", [], fps=10, robot_type="r", camera_config=CONFIG)
    assert err.value.field == "episodes"
    bad = Episode("x", {**episodes[0].features, "index": np.zeros((5, 1))})
    with pytest.raises(DataError) as err:
        write_lerobot_v3(tmp_path / "ds", [bad], fps=10, robot_type="r", camera_config=CONFIG)
    assert err.value.field == "index"
    with pytest.raises(DataError) as err:
        write_lerobot_v3(tmp_path / "ds", episodes, fps=0, robot_type="r", camera_config=CONFIG)
    assert err.value.field == "fps"
    with pytest.raises(DataError) as err:  # static K given while the episodes carry per-frame K
        write_lerobot_v3(
            tmp_path / "ds",
            episodes,
            fps=10,
            robot_type="r",
            camera_config=CameraConfig(cameras=(CAM,), K={CAM: np.eye(3)}),
        )
    assert err.value.field == KEY_K
    with pytest.raises(DataError) as err:
        Episode("", {})
        write_lerobot_v3(
            tmp_path / "ds", [Episode("", episodes[0].features)], fps=10, robot_type="r", camera_config=CONFIG
        )
    assert err.value.field == "task"


@pytest.mark.parametrize(
    "kwargs, fld",
    [
        (dict(cameras=()), "cameras"),
        (dict(cameras=("a", "a")), "cameras"),
        (dict(cameras=("a.b",)), "cameras"),
        (dict(cameras=("a",), tcp_offset=(0.0, 0.1)), "tcp_offset"),
        (dict(cameras=("a",), depth_scale=0.0), "depth_scale"),
        (dict(cameras=("a",), K={"b": np.eye(3)}), "K"),
        (dict(cameras=("a",), T_world_cam={"a": np.diag([1.0, 1.0, -1.0, 1.0])}), "T_world_cam[a]"),
    ],
)
def test_camera_config_validation(kwargs, fld):
    with pytest.raises(DataError) as err:
        CameraConfig(**kwargs)
    assert err.value.field == fld


def test_dataset_type_and_repr(written):
    ds = load_lerobot_v3(written)
    assert isinstance(ds, LeRobotV3Dataset) and len(ds) == 3 and "episodes=3" in repr(ds)
