"""Omni3D json datasets with a bad field, file or pixel: a DataError naming dataset.json (or the pixel file), the
record and the field. The base is two generated scenes in the Omni3D layout (`Workspace.scenes`)."""

from __future__ import annotations

import json
import struct
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from . import InCase, api, case

omni = partial(case, "omni3d")
DS = "dataset.json"


def _copy(ws, tmp) -> Path:
    return ws.copy(ws.scenes, tmp / "ds")


def _json(fn):
    """``load_omni3d`` after ``fn(doc)`` on dataset.json (``fn`` may return a replacement document)."""
    def call(ws, tmp):
        from posevla.data.formats.omni3d import load_omni3d

        p = _copy(ws, tmp) / DS
        d = json.loads(p.read_text())
        out = fn(d)
        p.write_text(json.dumps(d if out is None else out))
        load_omni3d(p)

    return call


def _ann(d, k: int = 0) -> dict:
    return d["annotations"][k]


def _img(d, k: int = 0) -> dict:
    return d["images"][k]


def _set(get, key, value):
    def fn(d):
        rec = get(d)
        rec[key] = value(rec[key]) if callable(value) else value

    return fn


def _pop(get, key):
    return lambda d: get(d).pop(key) and None


def _no_2d_box_behind_camera(d) -> None:
    """No stored 2D box, and a 3D box wholly behind the camera (so none can be computed)."""
    a = _ann(d)
    for k in ("bbox2D_proj", "bbox2D_trunc", "bbox2D_tight", "bbox3D_cam"):
        a.pop(k, None)
    a["center_cam"] = [0.0, 0.0, -5.0]


def _files(fn):
    """``load_omni3d`` after ``fn(root)`` on the dataset's files."""
    def call(ws, tmp):
        from posevla.data.formats.omni3d import load_omni3d

        root = _copy(ws, tmp)
        fn(root)
        load_omni3d(root / DS)

    return call


def _pixels(fn, what: str = "rgb"):
    """`load_rgb` / `load_depth` of the first view after ``fn(view)`` damaged its file."""
    def call(ws, tmp):
        from posevla.data.formats.omni3d import load_depth, load_omni3d, load_rgb

        view = load_omni3d(_copy(ws, tmp) / DS)[0].views[0]
        fn(view)
        (load_rgb if what == "rgb" else load_depth)(view)

    return call


def _truncate(attr: str):
    def fn(view):
        p = getattr(view, attr)
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])

    return fn


def _save(attr: str, mode: str, size, dtype=None):
    def fn(view):
        from PIL import Image

        p = getattr(view, attr)
        if dtype is None:
            Image.new(mode, size).save(p)
        else:
            Image.fromarray(np.zeros(size[::-1], dtype)).save(p)

    return fn


def _png16_rgb(view) -> None:
    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    w, h = view.width, view.height
    rows = b"".join(b"\x00" + np.zeros((w, 3), ">u2").tobytes() for _ in range(h))
    view.image_path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _far_away(d):
    """Move the first object 1,000 km down its viewing ray (the doctor's plausible-range check)."""
    a = _ann(d)
    a["center_cam"] = (np.asarray(a["center_cam"]) * (1e6 / np.linalg.norm(a["center_cam"]))).tolist()


def _doctor_on(fn):
    def argv(ws, tmp):
        root = _copy(ws, tmp)
        p = root / DS
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
        return ["doctor", root]

    return argv


def _R_scaled(s):
    return lambda R: (s * np.array(R)).tolist()


CASES = [
    # -- the document -----------------------------------------------------------------------------------------------
    omni("file_missing", ("nope.json",), call=api("posevla.data.formats.omni3d:load_omni3d", InCase("nope.json"))),
    omni("json_truncated", (DS, "invalid json"),
         call=_files(lambda r: (r / DS).write_text((r / DS).read_text()[:-50]))),
    omni("top_level_list", (DS,), call=_json(lambda d: [d])),
    omni("images_key_missing", (DS, "images"), call=_json(lambda d: d.pop("images") and None)),
    omni("images_not_a_list", (DS, "field 'images'"), call=_json(lambda d: d.update(images={"0": 1}))),
    omni("annotations_not_a_list", (DS, "field 'annotations'"), call=_json(lambda d: d.update(annotations="none"))),
    omni("info_not_an_object", (DS, "field 'info'"), call=_json(lambda d: d.update(info=[1]))),
    omni("info_a_number", (DS, "field 'info'"), call=_json(lambda d: d.update(info=3))),
    omni("depth_scale_negative", (DS, "depth_scale"), call=_json(lambda d: d["info"].update(depth_scale=-1e-4))),
    omni("depth_scale_text", (DS, "depth_scale"), call=_json(lambda d: d["info"].update(depth_scale="0.1mm"))),
    # -- image records ---------------------------------------------------------------------------------------------
    omni("image_not_an_object", (DS, "images[1]"), call=_json(lambda d: d["images"].__setitem__(1, 7))),
    omni("image_id_duplicate", (DS, "field 'id'"), call=_json(_set(lambda d: _img(d, 1), "id", 0))),
    omni("K_missing", (DS, "field 'K'"), call=_json(_pop(_img, "K"))),
    omni("K_not_3x3", (DS, "field 'K'"), call=_json(_set(_img, "K", [[1, 0, 0], [0, 1, 0]]))),
    omni("K_nan", (DS, "field 'K'"), call=_json(lambda d: _img(d)["K"][0].__setitem__(0, float("nan")))),
    omni("K_principal_point_outside", (DS, "field 'K'"), call=_json(lambda d: _img(d)["K"][0].__setitem__(2, 500.0))),
    omni("K_negative_focal", (DS, "field 'K'"), call=_json(lambda d: _img(d)["K"][1].__setitem__(1, -50.0))),
    omni("K_text", (DS, "field 'K'"), call=_json(_set(_img, "K", "fx fy cx cy"))),
    omni("width_missing", (DS, "field 'width'"), call=_json(_pop(lambda d: _img(d, 1), "width"))),
    omni("width_zero", (DS, "field 'width'"), call=_json(_set(_img, "width", 0))),
    omni("height_float", (DS, "field 'height'"), call=_json(_set(_img, "height", 64.5))),
    omni("file_path_empty", (DS, "field 'file_path'"), call=_json(_set(_img, "file_path", ""))),
    omni("depth_path_number", (DS, "field 'depth_path'"), call=_json(_set(_img, "depth_path", 3))),
    omni("T_world_cam_nan", (DS, "field 'T_world_cam'"),
         call=_json(lambda d: _img(d)["T_world_cam"][0].__setitem__(3, float("nan")))),
    omni("T_world_cam_last_row", (DS, "field 'T_world_cam'"),
         call=_json(lambda d: _img(d)["T_world_cam"][3].__setitem__(0, 0.5))),
    omni("T_world_cam_scaled", (DS, "field 'T_world_cam'"), call=_json(lambda d: _img(d).update(
        T_world_cam=(np.diag([2.0, 2.0, 2.0, 1.0]) @ np.array(_img(d)["T_world_cam"])).tolist()))),
    # -- annotation records ----------------------------------------------------------------------------------------
    omni("annotation_not_an_object", (DS, "annotations[2]"), call=_json(lambda d: d["annotations"].__setitem__(2, []))),
    omni("annotation_id_duplicate", (DS, "field 'id'"), call=_json(_set(lambda d: _ann(d, 1), "id", 0))),
    omni("annotation_unknown_image", (DS, "field 'image_id'"), call=_json(_set(_ann, "image_id", 12345))),
    omni("center_missing", (DS, "field 'center_cam'"), call=_json(_pop(_ann, "center_cam"))),
    omni("center_inf", (DS, "field 'center_cam'"),
         call=_json(lambda d: _ann(d)["center_cam"].__setitem__(1, float("inf")))),
    omni("center_two_numbers", (DS, "field 'center_cam'"), call=_json(_set(_ann, "center_cam", [0.1, 0.2]))),
    omni("R_not_orthonormal", (DS, "field 'R_cam'"), call=_json(_set(_ann, "R_cam", _R_scaled(1.2)))),
    omni("R_reflection", (DS, "field 'R_cam'"), call=_json(_set(_ann, "R_cam", _R_scaled(-1.0)))),
    omni("R_2x3", (DS, "field 'R_cam'"), call=_json(_set(_ann, "R_cam", lambda R: R[:2]))),
    omni("dims_zero", (DS, "field 'dimensions'"), call=_json(lambda d: _ann(d)["dimensions"].__setitem__(2, 0.0))),
    omni("dims_negative", (DS, "field 'dimensions'"), call=_json(lambda d: _ann(d)["dimensions"].__setitem__(0, -0.1))),
    omni("bbox_missing_box_behind", (DS, "field 'bbox2D_trunc'"), call=_json(_no_2d_box_behind_camera)),
    omni("bbox3d_dims_swapped", (DS, "field 'bbox3D_cam'"),
         call=_json(_set(_ann, "dimensions", lambda x: [x[0] * 2, x[1], x[2]]))),
    omni("bbox3d_wrong_shape", (DS, "field 'bbox3D_cam'"), call=_json(_set(_ann, "bbox3D_cam", [[0, 0, 1]] * 7))),
    omni("behind_camera_not_bool", (DS, "field 'behind_camera'"), call=_json(_set(_ann, "behind_camera", "no"))),
    omni("depth_encoding_unknown", (DS, "depth_encoding"),
         call=_json(lambda d: d["info"].update(depth_encoding="metres"))),
    omni("bbox_nan", (DS, "field 'bbox2D_proj'"),
         call=_json(lambda d: _ann(d)["bbox2D_proj"].__setitem__(0, float("nan")))),
    omni("bbox_corners_swapped", (DS, "field 'bbox2D_proj'"),
         call=_json(_set(_ann, "bbox2D_proj", lambda b: [b[2], b[3], b[0], b[1]]))),
    omni("visibility_nan", (DS, "field 'visibility'"), call=_json(_set(_ann, "visibility", float("nan")))),
    omni("valid3D_text", (DS, "field 'valid3D'"), call=_json(_set(_ann, "valid3D", "yes"))),
    omni("category_name_empty", (DS, "field 'category_name'"), call=_json(_set(_ann, "category_name", ""))),
    # -- files ------------------------------------------------------------------------------------------------------
    omni("image_file_missing", ("000000_wrist1.png", "field 'file_path'"),
         call=_files(lambda r: (r / "images" / "000000_wrist1.png").unlink())),
    omni("depth_file_missing", ("000001_head.png", "field 'depth_path'"),
         call=_files(lambda r: (r / "depth" / "000001_head.png").unlink())),
    omni("rgb_truncated", ("000000_head.png", "field 'file_path'"), call=_pixels(_truncate("image_path"))),
    omni("rgb_wrong_size", ("000000_head.png", "width/height"), call=_pixels(_save("image_path", "RGB", (50, 40)))),
    omni("rgb_grayscale", ("000000_head.png", "field 'file_path'"), call=_pixels(_save("image_path", "L", (96, 64)))),
    omni("rgb_16_bit", ("000000_head.png", "16-bit"), call=_pixels(_png16_rgb)),
    omni("depth_truncated", ("000000_head.png", "field 'depth_path'"), call=_pixels(_truncate("depth_path"), "depth")),
    omni("depth_8_bit", ("000000_head.png", "field 'depth_path'"), call=_pixels(_save("depth_path", "L", (96, 64)),
                                                                            "depth")),
    omni("depth_wrong_size", ("000000_head.png", "width/height"),
         call=_pixels(_save("depth_path", None, (10, 10), np.uint16), "depth")),
    omni("depth_scale_unknown", ("depth_scale",), call=_pixels(lambda v: setattr(v, "depth_scale", None), "depth")),
    # -- values that parse but cannot be right: the doctor's findings (exit 1) -------------------------------------
    omni("object_1000_km_away", ("plausible range", "center_cam"), argv=_doctor_on(_far_away)),
]
