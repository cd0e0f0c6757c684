"""BOP datasets with a bad field, file or pixel: a DataError naming the json file, the record (image, object) and
the field. The base is the checked-in BOP fixture (fixtures/bop_tiny, fixtures/make_bop_fixture.py)."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from . import InCase, api, case
from .workspace import BOP_FIXTURE, FIXTURES

bop = partial(case, "bop")
S1 = "test/000001"
CAM, GT, INFO = f"{S1}/scene_camera.json", f"{S1}/scene_gt.json", f"{S1}/scene_gt_info.json"
MODELS, NAMES = "models/models_info.json", "category_names.json"
_DEL = object()


def _copy(ws, tmp) -> Path:
    return ws.copy(BOP_FIXTURE, tmp / "bop")


def _edit(rel: str, fn):
    """``load_bop`` after ``fn(doc)`` on the json file `rel` (``fn`` may return a replacement document)."""
    def call(ws, tmp):
        from posevla.data.formats.bop import load_bop

        root = _copy(ws, tmp)
        p = root / rel
        d = json.loads(p.read_text())
        out = fn(d)
        p.write_text(json.dumps(d if out is None else out))
        load_bop(root, "test")

    return call


def _set(key, value, im="0", k=None):
    def fn(d):
        rec = d[im] if k is None else d[im][k]
        if value is _DEL:
            rec.pop(key)
        else:
            rec[key] = value(rec[key]) if callable(value) else value

    return fn


def _json_case(what, rel, fn, record, fld):
    return bop(what, (Path(rel).name, record, f"field '{fld}'"), call=_edit(rel, fn))


def _R_scaled(s):
    return lambda R: (s * np.array(R)).tolist()


def _files(fn, split: str = "test"):
    def call(ws, tmp):
        from posevla.data.formats.bop import load_bop

        root = _copy(ws, tmp)
        fn(root)
        load_bop(root, split)

    return call


def _variant(name: str, fn=lambda root: None, **kwargs):
    """``load_bop(**kwargs)`` of a copy of the layout variant ``fixtures/<name>`` after ``fn(root)``
    (variants: tests/fixtures/make_bop_toolkit_fixture.py)."""
    def call(ws, tmp):
        from posevla.data.formats.bop import load_bop

        root = ws.copy(FIXTURES / name, tmp / name)
        fn(root)
        load_bop(root, **kwargs)

    return call


def _two_splits(root: Path) -> None:
    shutil.copytree(root / "test", root / "train_pbr")


def _drop_sensor_in_scene_2(root: Path) -> None:
    shutil.copytree(root / "test" / "000001", root / "test" / "000002")
    for p in (root / "test" / "000002").glob("scene_*_xyz.json"):
        p.unlink()


def _cam_model(root: Path) -> None:
    p = root / "test_primesense" / "000002" / "scene_camera.json"
    d = json.loads(p.read_text())
    d["0"]["cam_model"] = {"projection_model_type": "CameraModelType.FISHEYE624", "projection_params": [1.0] * 16}
    d["0"].pop("cam_K")
    p.write_text(json.dumps(d))


def _pixels(fn, what: str = "rgb"):
    """`load_rgb` / `load_depth` of scene 1's first view after ``fn(view)`` damaged its file."""
    def call(ws, tmp):
        from posevla.data.formats.bop import load_bop
        from posevla.data.formats.omni3d import load_depth, load_rgb

        view = load_bop(_copy(ws, tmp), scene_ids=[1])[0].views[0]
        fn(view)
        (load_rgb if what == "rgb" else load_depth)(view)

    return call


def _cut(attr: str, keep: float):
    def fn(view):
        p = getattr(view, attr)
        p.write_bytes(p.read_bytes()[: int(len(p.read_bytes()) * keep)])

    return fn


def _image(attr: str, mode: str, size):
    return lambda view: Image.new(mode, size).save(getattr(view, attr))


CASES = [
    _json_case("cam_K_missing", CAM, _set("cam_K", _DEL), "image 0", "cam_K"),
    _json_case("cam_K_short", CAM, _set("cam_K", lambda K: K[:8]), "image 0", "cam_K"),
    _json_case("cam_K_nested", CAM, _set("cam_K", lambda K: np.array(K).reshape(3, 3).tolist()), "image 0", "cam_K"),
    _json_case("cam_K_nan", CAM, _set("cam_K", lambda K: [float("nan")] + K[1:]), "image 0", "cam_K"),
    _json_case("cam_K_pp_outside", CAM, _set("cam_K", lambda K: K[:2] + [900.0] + K[3:]), "image 0", "cam_K"),
    _json_case("cam_K_negative_f", CAM, _set("cam_K", lambda K: K[:4] + [-110.0] + K[5:]), "image 0", "cam_K"),
    _json_case("depth_scale_missing", CAM, _set("depth_scale", _DEL), "image 0", "depth_scale"),
    _json_case("depth_scale_negative", CAM, _set("depth_scale", -0.1), "image 0", "depth_scale"),
    _json_case("depth_scale_absurd", CAM, _set("depth_scale", 1e6), "image 0", "depth_scale"),
    _json_case("depth_scale_string", CAM, _set("depth_scale", "0.1"), "image 0", "depth_scale"),
    _json_case("cam_R_w2c_not_orthonormal", CAM, _set("cam_R_w2c", _R_scaled(1.1)), "image 0", "cam_R_w2c"),
    _json_case("cam_t_w2c_missing", CAM, _set("cam_t_w2c", _DEL), "image 0", "cam_t_w2c"),
    _json_case("cam_R_m2c_missing", GT, _set("cam_R_m2c", _DEL, k=1), "image 0, object 1", "cam_R_m2c"),
    _json_case("cam_R_m2c_six", GT, _set("cam_R_m2c", lambda R: R[:6], k=1), "image 0, object 1", "cam_R_m2c"),
    _json_case("cam_R_m2c_not_orthonormal", GT, _set("cam_R_m2c", _R_scaled(1.1), k=0), "image 0, object 0",
               "cam_R_m2c"),
    _json_case("cam_R_m2c_reflection", GT, _set("cam_R_m2c", _R_scaled(-1.0), k=2), "image 0, object 2", "cam_R_m2c"),
    _json_case("cam_R_m2c_nan", GT, _set("cam_R_m2c", lambda R: R[:3] + [float("nan")] + R[4:], k=0),
               "image 0, object 0", "cam_R_m2c"),
    _json_case("cam_t_m2c_metres", GT, _set("cam_t_m2c", lambda t: (np.array(t) / 1000).tolist(), k=1),
               "image 0, object 1", "cam_t_m2c"),
    _json_case("cam_t_m2c_behind", GT, _set("cam_t_m2c", lambda t: [t[0], t[1], -t[2]], k=1), "image 0, object 1",
               "cam_t_m2c"),
    _json_case("cam_t_m2c_inf", GT, _set("cam_t_m2c", lambda t: [t[0], float("inf"), t[2]], k=0), "image 0, object 0",
               "cam_t_m2c"),
    _json_case("obj_id_not_in_models", GT, _set("obj_id", 7, k=2), "image 0, object 2", "obj_id"),
    _json_case("obj_id_string", GT, _set("obj_id", "1", k=0), "image 0, object 0", "obj_id"),
    bop("obj_id_without_name", ("scene_gt.json", "image 0, object 2", "field 'obj_id'"),
        call=_edit(NAMES, lambda d: d.pop("5") and None)),
    _json_case("gt_image_without_camera", GT, lambda d: d.__setitem__("9", d["0"]), "image 9", "im_id"),
    _json_case("gt_key_not_integer", GT, lambda d: d.__setitem__("first", d.pop("0")), "first", "im_id"),
    _json_case("gt_top_level_list", GT, lambda d: [], "top level", "im_id"),
    _json_case("camera_file_empty", CAM, lambda d: {}, "scene 000001", "im_id"),
    _json_case("models_size_missing", MODELS, _set("size_x", _DEL, im="2"), "obj_id 2", "size_x"),
    _json_case("models_size_metres", MODELS, _set("size_y", 0.093, im="2"), "obj_id 2", "size_y"),
    _json_case("models_size_negative", MODELS, _set("size_z", -5.0, im="1"), "obj_id 1", "size_z"),
    _json_case("models_min_nan", MODELS, _set("min_x", float("nan"), im="5"), "obj_id 5", "min_x"),
    _json_case("models_key_not_integer", MODELS, lambda d: d.__setitem__("mug", d.pop("2")), "mug", "obj_id"),
    _json_case("visib_fract_above_one", INFO, _set("visib_fract", 1.5, k=0), "image 0, object 0", "visib_fract"),
    _json_case("visib_fract_missing", INFO, _set("visib_fract", _DEL, k=1), "image 0, object 1", "visib_fract"),
    _json_case("gt_info_count_mismatch", INFO, lambda d: d["0"].pop() and None, "image 0", "visib_fract"),
    _json_case("gt_info_image_missing", INFO, lambda d: d.pop("5") and None, "image 5", "im_id"),
    _json_case("bbox_obj_short", INFO, _set("bbox_obj", [1, 2, 3], k=2), "image 0, object 2", "bbox_obj"),
    # -- files ------------------------------------------------------------------------------------------------------
    bop("gt_json_truncated", ("scene_gt.json", "top level", "field 'json'"),
        call=_files(lambda r: (r / GT).write_text((r / GT).read_text()[:-40]))),
    bop("rgb_file_missing", ("rgb", "image 5", "field 'rgb'"),
        call=_files(lambda r: (r / S1 / "rgb" / "000005.png").unlink())),
    bop("models_info_missing", ("models_info.json", "field 'models_info'"),
        call=_files(lambda r: (r / MODELS).unlink())),
    bop("split_unknown", ("train_pbr", "field 'split'"), call=_files(lambda r: None, split="train_pbr")),
    bop("scene_camera_missing", ("scene_camera.json",), call=_files(lambda r: (r / CAM).unlink())),
    bop("category_names_not_json", (NAMES,), call=_files(lambda r: (r / NAMES).write_text("{1: box}"))),
    bop("root_missing", ("nope", "root not found"), call=api("posevla.data.formats.bop:load_bop", InCase("nope"))),
    bop("scene_folder_empty", ("000001",),
        call=_files(lambda r: [p.unlink() for p in (r / S1).glob("*.json")] and None)),
    # -- layout variants: splits, sensors, gray / per-sensor folders ------------------------------------------------
    bop("split_ambiguous", ("test_primesense, train_pbr", "field 'split'"),
        call=_variant("bop_tless_tiny", lambda r: shutil.copytree(r / "test_primesense", r / "train_pbr"))),
    bop("split_ambiguous_two", ("test, train_pbr", "field 'split'"), call=_files(_two_splits, split=None)),
    bop("split_missing_named", ("val", "scene_gt", "test", "field 'split'"), call=_files(lambda r: None, split="val")),
    bop("split_not_in_pbr_root", ("'test'", "train_pbr", "field 'split'"), call=_variant("bop_pbr_tiny", split="test")),
    bop("split_none_found", ("no split folder", "scene_gt", "field 'split'"),
        call=_variant("bop_pbr_tiny", lambda r: shutil.rmtree(r / "train_pbr"))),
    bop("split_path_not_name", ("'test/000001'", "field 'split'"), call=_files(lambda r: None, split="test/000001")),
    bop("sensor_ambiguous", ("photoneo", "xyz", "scene_camera_xyz.json", "field 'sensor'"),
        call=_variant("bop_multisensor_tiny")),
    bop("sensor_unknown", ("'cam1'", "scene_camera_cam1.json", "photoneo", "field 'sensor'"),
        call=_variant("bop_multisensor_tiny", sensor="cam1")),
    bop("sensor_missing_in_one_scene", ("000002", "scene_camera_xyz.json", "field 'sensor'"),
        call=_variant("bop_multisensor_tiny", _drop_sensor_in_scene_2, sensor="xyz")),
    bop("sensor_picture_folder_missing", ("rgb_xyz/", "gray_xyz/", "image 0"),
        call=_variant("bop_multisensor_tiny", lambda r: shutil.rmtree(r / "test/000001/gray_xyz"), sensor="xyz")),
    bop("gray_tif_missing", ("gray/000005", "tif", "image 5", "field 'gray'"),
        call=_variant("bop_itodd_tiny", lambda r: (r / S1 / "gray" / "000005.tif").unlink())),
    bop("camera_model_not_pinhole", ("scene_camera.json", "image 0", "field 'cam_model'"),
        call=_variant("bop_tless_tiny", _cam_model)),
    # -- pixels -----------------------------------------------------------------------------------------------------
    bop("rgb_truncated", ("000000.png", "test/000001/000000", "field 'file_path'"),
        call=_pixels(_cut("image_path", 0.5))),
    bop("rgb_rotated", ("000000.png", "rotated by 90", "width/height"), call=_pixels(_image("image_path", "RGB",
                                                                                            (96, 128)))),
    bop("depth_8_bit", ("000000.png", "test/000001/000000", "field 'depth_path'"),
        call=_pixels(_image("depth_path", "L", (128, 96)), "depth")),
    bop("depth_truncated", ("000000.png", "field 'depth_path'"), call=_pixels(_cut("depth_path", 0.33), "depth")),
    bop("depth_missing", ("000000.png", "depth"), call=_pixels(lambda v: v.depth_path.unlink(), "depth")),
]
