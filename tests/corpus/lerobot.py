"""LeRobot v3 datasets with a bad file, column, value or pixel, and bad episodes handed to our writer: a DataError
naming the file (relative to the root), the field (feature) and the record (episode, frame).

Bases: three episodes of a moving camera written by our writer (`make_episodes`, `Workspace.lerobot`); the
fixture written with pyarrow / PIL in LeRobot's layout (fixtures/lerobot_v3_tiny, make_lerobot_v3_tiny.py); and
the two datasets written by the real ``lerobot`` library (fixtures/lerobot_real_images, lerobot_real_video:
make_lerobot_real_fixtures.py; PNG frames and AV1 videos, no camera file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from . import InCase, api, case
from .workspace import FIXTURES, LEROBOT_FIXTURE

lerobot = partial(case, "lerobot")

H, W = 12, 16
CAM = "front"
KEY_IMG, KEY_DEPTH = f"observation.images.{CAM}", f"observation.depth.{CAM}"
KEY_K, KEY_T = f"observation.cameras.{CAM}.K", f"observation.cameras.{CAM}.T_world_cam"
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
INFO, STATS, CAMS, TASKS = "meta/info.json", "meta/stats.json", "meta/cameras.json", "meta/tasks.parquet"
IMG0 = "images/observation.images.front/episode-000000/frame-000002.png"
DEPTH0 = "images/observation.depth.front/episode-000000/frame-000000.png"
EPISODE_SPECS = [(5, "pick up the cube"), (4, "open the door"), (3, "pick up the cube")]
REAL = {"real_images": FIXTURES / "lerobot_real_images", "real_video": FIXTURES / "lerobot_real_video"}
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"
KEY_FRONT = "observation.images.front"


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_episode(T: int, task: str, seed: int):
    """One episode of `T` frames: a moving (wrist-like) camera, depth in metres, every feature kind."""
    from posevla.data.formats.lerobot import Episode

    rng = np.random.default_rng(seed)
    K = np.array([[20.0, 0.0, (W - 1) / 2], [0.0, 20.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    Tw = np.zeros((T, 4, 4))
    for t in range(T):
        Tw[t] = np.eye(4)
        Tw[t, :3, :3] = _rot_z(0.1 * t)
        Tw[t, :3, 3] = [0.01 * t, 0.0, -1.0]
    q = rng.normal(size=(T, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    depth_mm = rng.integers(0, 3000, (T, H, W)).astype(np.uint16)
    return Episode(task, {
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
    })


def make_episodes() -> list:
    return [make_episode(T, task, i) for i, (T, task) in enumerate(EPISODE_SPECS)]


def _camera_config():
    from posevla.data.formats.lerobot import CameraConfig

    return CameraConfig(cameras=(CAM,), tcp_offset=(0.0, 0.0, 0.1))


CONFIG = _camera_config()


# -- mutations of a dataset folder ---------------------------------------------------------------------------------
def _edit_json(rel: str, fn: Callable[[dict], None]):
    def mutate(root: Path) -> None:
        p = root / rel
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))

    return mutate


def _edit_column(rel: str, name: str, fn: Callable[[np.ndarray], np.ndarray]):
    def mutate(root: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(root / rel)
        typ = table.schema.field(name).type
        new = fn(np.array(table.column(name).to_pylist()))
        table = table.set_column(table.column_names.index(name), name, pa.array(new.tolist(), typ))
        pq.write_table(table, root / rel)

    return mutate


def _set(index, value):
    def fn(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a

    return fn


def _drop_column(name: str, rel: str = DATA):
    def mutate(root: Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(root / rel).drop_columns([name]), root / rel)

    return mutate


def _truncate(rel: str, keep: float = 0.5):
    def mutate(root: Path) -> None:
        p = root / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return mutate


def _unlink(rel: str):
    return lambda root: (root / rel).unlink()


def _write(rel: str, text: str):
    return lambda root: (root / rel).write_text(text)


def _bad_rotation(a: np.ndarray) -> np.ndarray:
    a[7, :3, :3] *= 1.1  # episode 1 frame 2
    return a


def _shift_lengths(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(root / EPISODES)
    for name, vals in (("length", [6, 3, 3]), ("dataset_from_index", [0, 6, 9]), ("dataset_to_index", [6, 9, 12])):
        t = t.set_column(t.column_names.index(name), name, pa.array(vals, pa.int64()))
    pq.write_table(t, root / EPISODES)


def _frame_gap(a: np.ndarray) -> np.ndarray:
    a[5:9] = [0, 1, 3, 4]  # episode 1
    return a


def _decode_without_header_check(ws, tmp) -> None:
    """A truncated PNG in a dataset loaded with ``check_images=False``: named when the frame is decoded."""
    from posevla.data.formats.lerobot import load_lerobot_v3

    root = ws.copy(ws.lerobot, tmp / "ds")
    _truncate(IMG0, 0.7)(root)
    ds = load_lerobot_v3(root, check_images=False)
    ds.episode(1)
    ds.frame_images(0, 2)


def _grayscale_png(rel: str, size: tuple[int, int] = (W, H)):
    """An 8-bit grayscale PNG of `size` (width, height) in place of the file `rel`."""
    return lambda root: Image.new("L", size).save(root / rel)


def _dataset(what: str, mutate, file: str, field: str | None, record: str | None = None, *, base: str = "ours",
             episodes: bool = False, pixels: str | None = None):
    """Load the mutated dataset (and decode every episode when `episodes`, the first frame of feature `pixels`):
    the error names `file` (relative to the root), ``field 'FIELD'`` and ``record RECORD`` where given."""
    names = [file] + ([f"field '{field}'"] if field else []) + ([f"record {record}"] if record else [])

    def call(ws, tmp):
        from posevla.data.formats.lerobot import load_lerobot_v3

        root = ws.copy(ws.lerobot if base == "ours" else REAL.get(base, LEROBOT_FIXTURE), tmp / "ds")
        mutate(root)
        ds = load_lerobot_v3(root)
        if episodes:
            for i in range(ds.num_episodes):
                ds.episode(i)
        if pixels:
            ds.frame_images(0, 0, keys=[pixels])

    return lerobot(what if base == "ours" else f"lerobot_{'tool' if base == 'tool' else base}/{what}", names,
                   call=call)


def _garble(rel: str):
    """Overwrite the file with bytes that are no video."""
    return lambda root: (root / rel).write_bytes(np.random.default_rng(0).integers(0, 256, 1500, np.uint8).tobytes())


def _shorten_video(rel: str, keep: int):
    """Re-encode the video with only its first `keep` frames (same size, rate and codec family)."""
    def mutate(root: Path) -> None:
        import av

        p = root / rel
        with av.open(str(p)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:keep]
        with av.open(str(p), "w") as out:
            s = out.add_stream("mpeg4", rate=10)
            s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            for a in frames:
                for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                    out.mux(pkt)
            for pkt in s.encode():
                out.mux(pkt)

    return mutate


def _stage2_without_calibration(ws, tmp) -> None:
    """A LeRobot-written dataset (no camera file, no per-frame K) used as a stage-2 source."""
    from posevla.data.sources import SourceSpec, load_source, source_labels

    root = ws.copy(REAL["real_video"], tmp / "ds")
    source_labels(load_source(SourceSpec("lerobot", str(root))))


def _stage2_calibration_file_missing(ws, tmp) -> None:
    from posevla.data.sources import SourceSpec, load_source

    root = ws.copy(REAL["real_video"], tmp / "ds")
    load_source(SourceSpec("lerobot", str(root), cameras=str(tmp / "calibration.json")))


def _posttrain_auto_space_without_actions(ws, tmp) -> None:
    """`--action.space auto` on a dataset with neither an EE pose nor an `action` / `observation.state` pair (its
    `action` feature dropped)."""
    from posevla.data.action_space import ActionConfig
    from posevla.data.formats.lerobot import load_lerobot_v3

    root = ws.copy(REAL["real_images"], tmp / "ds")
    _edit_json(INFO, lambda d: d["features"].pop("action"))(root)
    ActionConfig().resolve(load_lerobot_v3(root).features, source=str(root / INFO))


# -- bad episodes handed to the writer ---------------------------------------------------------------------------
def _writer(what: str, idx: int, key: str, fn, record: str):
    def call(ws, tmp):
        from posevla.data.formats.lerobot import Episode, write_lerobot_v3

        eps = make_episodes()
        feats = {k: v.copy() for k, v in eps[idx].features.items()}
        if fn is None:
            del feats[key]
        else:
            feats[key] = fn(feats[key])
        eps[idx] = Episode(eps[idx].task, feats)
        try:
            write_lerobot_v3(tmp / "ds", eps, fps=10, robot_type="r", camera_config=CONFIG)
        finally:
            assert not (tmp / "ds").exists(), "a refused write left a partial dataset behind"

    return lerobot(f"writer/{what}", (f"field '{key}'", f"record {record}"), call=call)


def _writer_args(what: str, field: str, episodes: Callable[[list], list] = lambda e: e, **kw):
    """`write_lerobot_v3` of ``episodes(make_episodes())`` with the arguments `kw` changed."""
    def call(ws, tmp):
        from posevla.data.formats.lerobot import write_lerobot_v3

        write_lerobot_v3(tmp / "ds", episodes(make_episodes()), **(dict(fps=10, robot_type="r", camera_config=CONFIG)
                                                                   | kw))

    return lerobot(f"writer/{what}", (f"field '{field}'",), call=call)


def _with_index_feature(eps: list) -> list:
    from posevla.data.formats.lerobot import Episode

    return [Episode("x", {**eps[0].features, "index": np.zeros((5, 1))})]


def _with_empty_task(eps: list) -> list:
    from posevla.data.formats.lerobot import Episode

    return [Episode("", eps[0].features)]


def _static_K_config():
    from posevla.data.formats.lerobot import CameraConfig

    return CameraConfig(cameras=(CAM,), K={CAM: np.eye(3)})


def _camera(what: str, field: str, **kw):
    def call(ws, tmp):
        from posevla.data.formats.lerobot import CameraConfig

        CameraConfig(**kw)

    return lerobot(f"camera_config/{what}", (f"field '{field}'",), call=call)


CASES = [
    _dataset("info_missing", _unlink(INFO), INFO, None),
    _dataset("info_not_json", _write(INFO, '{"codebase_version": '), INFO, None),
    _dataset("codebase_v2_1", _edit_json(INFO, lambda d: d.update(codebase_version="v2.1")), INFO, "codebase_version"),
    _dataset("empty_dataset", _edit_json(INFO, lambda d: d.update(total_episodes=0, total_frames=0)), INFO,
             "total_episodes"),
    _dataset("total_frames_wrong", _edit_json(INFO, lambda d: d.update(total_frames=13)), INFO, "total_frames"),
    _dataset("feature_shape_mismatch", _edit_json(INFO, lambda d: d["features"]["action"].update(shape=[5])), DATA,
             "action"),
    _dataset("column_missing", _drop_column("frame_index"), DATA, "frame_index"),
    _dataset("feature_column_missing", _drop_column("observation.state"), DATA, "observation.state"),
    _dataset("parquet_truncated", _truncate(DATA), DATA, None),
    _dataset("episodes_parquet_truncated", _truncate(EPISODES, 0.8), EPISODES, None),
    _dataset("ee_pose_nan", _edit_column(DATA, "observation.ee_pose", _set((3, 1), np.nan)), DATA,
             "observation.ee_pose", "episode 0 frame 3"),
    _dataset("quaternion_not_unit", _edit_column(DATA, "observation.ee_pose", _set((10, slice(3, 7)), 0.9)), DATA,
             "observation.ee_pose", "episode 2 frame 1"),
    _dataset("action_inf", _edit_column(DATA, "action", _set((0, 2), np.inf)), DATA, "action", "episode 0 frame 0"),
    _dataset("T_world_cam_not_orthonormal", _edit_column(DATA, KEY_T, _bad_rotation), DATA, KEY_T, "episode 1 frame 2"),
    _dataset("T_world_cam_last_row", _edit_column(DATA, KEY_T, _set((4, 3, 0), 0.5)), DATA, KEY_T, "episode 0 frame 4"),
    _dataset("K_for_another_image_size", _edit_column(DATA, KEY_K, _set((slice(9, 12), 0, 2), 319.5)), DATA, KEY_K,
             "episode 2 frame 0"),
    _dataset("frame_index_gap", _edit_column(DATA, "frame_index", _frame_gap), DATA,
             "frame_index", "episode 1 frame 2"),
    _dataset("episode_length_mismatch", _shift_lengths, DATA, "episode_index", "episode 0"),
    _dataset("from_to_inconsistent", _edit_column(EPISODES, "dataset_to_index", _set(1, 10)), EPISODES, "length",
             "episode 1"),
    _dataset("task_index_unknown", _edit_column(DATA, "task_index", _set(6, 7)), DATA, "task_index",
             "episode 1 frame 1"),
    _dataset("timestamp_off_grid", _edit_column(DATA, "timestamp", _set(2, 0.25)), DATA, "timestamp",
             "episode 0 frame 2"),
    _dataset("index_not_contiguous", _edit_column(DATA, "index", _set(4, 40)), DATA, "index", "episode 0 frame 4"),
    _dataset("tasks_parquet_gap", _edit_column(TASKS, "task_index", _set(1, 5)), TASKS, "task_index"),
    _dataset("stats_missing", _unlink(STATS), STATS, None),
    _dataset("stats_wrong_shape", _edit_json(STATS, lambda d: d["action"].update(mean=[0.0])), STATS, "action.mean"),
    _dataset("K_static_and_per_frame", _edit_json(CAMS, lambda d: d.update(K={CAM: np.eye(3).tolist()})), CAMS, "K"),
    _dataset("camera_without_images", _edit_json(CAMS, lambda d: d.update(cameras=[CAM, "side"])), CAMS, "cameras"),
    _dataset("png_missing", _unlink(IMG0), IMG0, KEY_IMG, "episode 0 frame 2"),
    _dataset("png_truncated", _truncate(IMG0, 0.7), IMG0, KEY_IMG, "episode 0 frame 2"),
    _dataset("rgb_png_grayscale", _grayscale_png(IMG0), IMG0, KEY_IMG, "episode 0 frame 2"),
    _dataset("depth_in_wrong_units", _edit_json(CAMS, lambda d: d.update(depth_scale=1.0)), DEPTH0, KEY_DEPTH,
             "episode 0 frame 0", episodes=True),
    _dataset("cameras_json_not_json", _write(CAMS, "{"), CAMS, None),
    lerobot("root_missing", ("nope", "not found", "meta/info.json"),
            call=api("posevla.data.formats.lerobot:load_lerobot_v3", InCase("nope"))),
    lerobot("png_truncated_found_on_decode", (IMG0, f"field '{KEY_IMG}'", "record episode 0 frame 2"),
            call=lambda ws, tmp: _decode_without_header_check(ws, tmp)),
    # -- the checked-in v3 fixture (pyarrow-written; lerobot_real_* are the ones LeRobot wrote) ---------------------
    _dataset("info_missing", _unlink(INFO), INFO, None, base="tool"),
    _dataset("codebase_v2_1", _edit_json(INFO, lambda d: d.update(codebase_version="v2.1")), INFO, "codebase_version",
             base="tool"),
    _dataset("fps_zero", _edit_json(INFO, lambda d: d.update(fps=0)), INFO, "fps", base="tool"),
    _dataset("features_missing", _edit_json(INFO, lambda d: d.pop("features")), INFO, "features", base="tool"),
    _dataset("video_feature_without_video_columns", _edit_json(INFO, lambda d: d["features"][
        "observation.images.head"].update(dtype="video")), EPISODES, "videos/observation.images.head/chunk_index",
        base="tool"),
    _dataset("data_file_missing", _unlink(DATA), DATA, None, base="tool"),
    _dataset("tasks_missing", _unlink(TASKS), TASKS, None, base="tool"),
    _dataset("episodes_missing", _unlink(EPISODES), "meta/episodes", None, base="tool"),
    _dataset("action_nan", _edit_column(DATA, "action", _set((1, 0), np.nan)), DATA, "action", "episode 0 frame 1",
             base="tool"),
    _dataset("depth_png_missing", _unlink("images/observation.depth.head/episode-000001/frame-000002.png"),
             "frame-000002.png", "observation.depth.head", "episode 1 frame 2", base="tool"),
    _dataset("depth_png_8_bit",
             _grayscale_png("images/observation.depth.head/episode-000000/frame-000001.png", (32, 24)),
             "frame-000001.png", "observation.depth.head", "episode 0 frame 1", base="tool", episodes=True),
    lerobot("lerobot_tool/cameras_json_given_but_missing", ("nope.json", "field 'camera_config'"),
            call=api("posevla.data.formats.lerobot:load_lerobot_v3", str(LEROBOT_FIXTURE),
                     camera_config=InCase("nope.json"))),
    _dataset("camera_K_nan", _edit_json(CAMS, lambda d: d["K"]["head"][0].__setitem__(0, float("nan"))), CAMS, "K",
             base="tool"),
    _dataset("camera_T_reflection", _edit_json(CAMS, lambda d: d["T_world_cam"]["head"][0].__setitem__(0, -1.0)),
             CAMS, "T_world_cam[head]", base="tool"),
    _dataset("timestamp_column_missing", _drop_column("timestamp"), DATA, "timestamp", base="tool"),
    # -- the datasets the real lerobot library wrote (PNG frames; AV1 videos) ------------------------------------
    _dataset("video_missing", _unlink(VIDEO), VIDEO, KEY_FRONT, "episode 0", base="real_video"),
    _dataset("video_truncated", _truncate(VIDEO, 0.6), VIDEO, KEY_FRONT, "episode 0 frame 4", base="real_video"),
    _dataset("video_not_a_video", _garble(VIDEO), VIDEO, KEY_FRONT, "episode 0", base="real_video"),
    _dataset("video_shorter_than_episode", _shorten_video(VIDEO, 7), VIDEO, KEY_FRONT, "episode 1 frame 3",
             base="real_video"),
    _dataset("video_segment_ends_early", _edit_column(EPISODES, f"videos/{KEY_FRONT}/to_timestamp", _set(1, 0.7)),
             EPISODES, f"videos/{KEY_FRONT}/to_timestamp", "episode 1 frame 3", base="real_video"),
    _dataset("video_path_template_bad", _edit_json(INFO, lambda d: d.update(video_path="videos/{camera}.mp4")), INFO,
             "video_path", base="real_video"),
    _dataset("tasks_without_text", _drop_column("__index_level_0__", TASKS), TASKS, "task", base="real_images"),
    lerobot("lerobot_real_video/stage2_without_calibration",
            (INFO, "field 'observation.cameras.front.K'", "record camera front", "meta/cameras.json",
             "observation.cameras.front.T_world_cam", "--data.sources.N.cameras"),
            call=_stage2_without_calibration),
    lerobot("lerobot_real_video/stage2_calibration_file_missing", ("calibration.json", "field 'camera_config'"),
            call=_stage2_calibration_file_missing),
    lerobot("lerobot_real_images/auto_action_space_fits_nothing", (INFO, "field 'action.space'", "--action.space"),
            call=_posttrain_auto_space_without_actions),
    # -- the writer ----------------------------------------------------------------------------------------------
    _writer("depth_in_millimetres", 1, KEY_DEPTH, lambda a: a * 1000, "episode 1 frame 0"),
    _writer("depth_negative", 0, KEY_DEPTH, _set((2, 0, 0), -0.5), "episode 0 frame 2"),
    _writer("quaternion_not_unit", 2, "observation.ee_pose", _set((1, 3), 3.0), "episode 2 frame 1"),
    _writer("state_nan", 0, "observation.state", _set((4, 0), np.nan), "episode 0 frame 4"),
    _writer("K_for_another_image_size", 1, KEY_K, _set((slice(None), 0, 2), 319.5), "episode 1 frame 0"),
    _writer("T_world_cam_reflection", 0, KEY_T, _set((0, 0, 0), -1.0), "episode 0 frame 0"),
    _writer("image_float", 0, KEY_IMG, lambda a: a.astype(np.float32), "episode 0"),
    _writer("frame_count_mismatch", 1, "action", lambda a: a[:-1], "episode 1"),
    _writer("scalar_without_trailing_dim", 0, "observation.gripper", lambda a: a[:, 0], "episode 0"),
    _writer("keys_differ", 1, "observation.joints", None, "episode 1"),
    _writer("shape_differs", 2, "action", lambda a: np.concatenate([a, a], 1), "episode 2"),
    _writer_args("no_episodes", "episodes", episodes=lambda e: []),
    _writer_args("reserved_feature_name", "index", episodes=_with_index_feature),
    _writer_args("fps_zero", "fps", fps=0),
    _writer_args("empty_task", "task", episodes=_with_empty_task),
    _writer_args("static_K_and_per_frame_K", KEY_K, camera_config=_static_K_config()),
    _camera("no_cameras", "cameras", cameras=()),
    _camera("duplicate_cameras", "cameras", cameras=("a", "a")),
    _camera("dotted_camera_name", "cameras", cameras=("a.b",)),
    _camera("tcp_offset_two_numbers", "tcp_offset", cameras=("a",), tcp_offset=(0.0, 0.1)),
    _camera("depth_scale_zero", "depth_scale", cameras=("a",), depth_scale=0.0),
    _camera("K_for_unknown_camera", "K", cameras=("a",), K={"b": np.eye(3)}),
    _camera("T_world_cam_reflection", "T_world_cam[a]", cameras=("a",), T_world_cam={"a": np.diag([1.0, 1, -1, 1])}),
]
