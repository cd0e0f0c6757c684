"""Omni3D reader: grouping, lazy pixels, and a DataError naming file + field for each malformed input."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posevla.data.formats.omni3d import Object3D, Scene, View, load_depth, load_omni3d, load_rgb
from posevla.sim.tabletop import generate_dataset
from posevla.errors import DataError


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("omni")
    generate_dataset(root, 2, seed=3, width=96, height=64, progress=False)
    return root


@pytest.fixture
def ds(base, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(base, dst)
    return dst


def _edit(root: Path, fn) -> Path:
    p = root / "dataset.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))
    return p


def _png16_rgb(path: Path, w: int, h: int) -> None:
    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + np.zeros((w, 3), ">u2").tobytes() for _ in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_reader_groups_views_and_is_lazy(ds):
    scenes = load_omni3d(ds / "dataset.json")
    assert [s.scene_id for s in scenes] == ["000000", "000001"]
    assert all(isinstance(s, Scene) and len(s.views) == 3 for s in scenes)
    v = scenes[0].views[0]
    assert isinstance(v, View) and v.camera == "head" and v.K.shape == (3, 3) and v.T_world_cam.shape == (4, 4)
    assert v.width == 96 and v.height == 64
    assert all(isinstance(o, Object3D) and o.bbox2d.shape == (4,) for s in scenes for w in s.views for o in w.objects)
    assert load_rgb(v).shape == (64, 96, 3)
    d1 = load_depth(v)
    d2 = load_depth(v, depth_scale=2e-4)
    assert np.allclose(d2, 2 * d1)
    # an image without scene_id is its own scene; annotations with valid3D false are skipped
    def f(d):
        del d["images"][0]["scene_id"]
        for a in d["annotations"]:
            a["valid3D"] = False
    scenes = load_omni3d(_edit(ds, f))
    assert scenes[0].scene_id == "image:0" and len(scenes[0].views) == 1 and len(scenes) == 3
    assert all(not v.objects for s in scenes for v in s.views)


def _first_ann(d):
    return d["annotations"][0]


CASES = {
    "missing_images_key": (lambda d: d.pop("images"), "images"),
    "missing_K": (lambda d: d["images"][0].pop("K"), "K"),
    "missing_center": (lambda d: _first_ann(d).pop("center_cam"), "center_cam"),
    "missing_width": (lambda d: d["images"][1].pop("width"), "width"),
    "K_not_3x3": (lambda d: d["images"][0].__setitem__("K", [[1, 0, 0], [0, 1, 0]]), "K"),
    "K_nan": (lambda d: d["images"][0]["K"][0].__setitem__(0, float("nan")), "K"),
    "K_pp_outside": (lambda d: d["images"][0]["K"][0].__setitem__(2, 500.0), "K"),
    "K_negative_focal": (lambda d: d["images"][0]["K"][1].__setitem__(1, -50.0), "K"),
    "R_not_orthonormal": (lambda d: _first_ann(d).__setitem__("R_cam", (1.2 * np.array(_first_ann(d)["R_cam"])).tolist()),
                          "R_cam"),
    "R_reflection": (lambda d: _first_ann(d).__setitem__("R_cam", (-np.array(_first_ann(d)["R_cam"])).tolist()), "R_cam"),
    "center_inf": (lambda d: _first_ann(d)["center_cam"].__setitem__(1, float("inf")), "center_cam"),
    "bbox_nan": (lambda d: _first_ann(d)["bbox2D_proj"].__setitem__(0, float("nan")), "bbox2D_proj"),
    "visibility_nan": (lambda d: _first_ann(d).__setitem__("visibility", float("nan")), "visibility"),
    "dims_zero": (lambda d: _first_ann(d)["dimensions"].__setitem__(2, 0.0), "dimensions"),
    "dims_negative": (lambda d: _first_ann(d)["dimensions"].__setitem__(0, -0.1), "dimensions"),
    "unknown_image_id": (lambda d: _first_ann(d).__setitem__("image_id", 12345), "image_id"),
    "T_nan": (lambda d: d["images"][0]["T_world_cam"][0].__setitem__(3, float("nan")), "T_world_cam"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_json_fields(ds, case):
    fn, fld = CASES[case]
    p = _edit(ds, fn)
    with pytest.raises(DataError) as e:
        load_omni3d(p)
    msg = str(e.value)
    assert "dataset.json" in msg and fld in msg, msg
    assert "fix:" in msg


def test_missing_and_invalid_json(ds, tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        load_omni3d(tmp_path / "nope.json")
    p = ds / "dataset.json"
    p.write_text(p.read_text()[:-50])
    with pytest.raises(DataError, match="dataset.json") as e:
        load_omni3d(p)
    assert "invalid json" in str(e.value)


def test_missing_files(ds):
    (ds / "images" / "000000_wrist1.png").unlink()
    with pytest.raises(DataError) as e:
        load_omni3d(ds / "dataset.json")
    assert "000000_wrist1.png" in str(e.value) and "file_path" in str(e.value)
    shutil.copy(ds / "images" / "000000_head.png", ds / "images" / "000000_wrist1.png")
    (ds / "depth" / "000001_head.png").unlink()
    with pytest.raises(DataError) as e:
        load_omni3d(ds / "dataset.json")
    assert "000001_head.png" in str(e.value) and "depth_path" in str(e.value)


def _view(ds, k=0) -> View:
    return load_omni3d(ds / "dataset.json")[0].views[k]


def test_bad_pixel_files(ds):
    v = _view(ds)
    # truncated RGB
    raw = v.image_path.read_bytes()
    v.image_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        load_rgb(v)
    assert v.image_path.name in str(e.value) and "file_path" in str(e.value)
    # wrong size
    Image.new("RGB", (50, 40)).save(v.image_path)
    with pytest.raises(DataError) as e:
        load_rgb(v)
    assert v.image_path.name in str(e.value) and "width/height" in str(e.value)
    # grayscale
    Image.new("L", (96, 64)).save(v.image_path)
    with pytest.raises(DataError, match="file_path") as e:
        load_rgb(v)
    assert v.image_path.name in str(e.value)
    # 16-bit RGB
    _png16_rgb(v.image_path, 96, 64)
    with pytest.raises(DataError, match="16-bit") as e:
        load_rgb(v)
    assert v.image_path.name in str(e.value) and "file_path" in str(e.value)
    # depth: truncated, 8-bit, wrong size
    raw = v.depth_path.read_bytes()
    v.depth_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        load_depth(v)
    assert v.depth_path.name in str(e.value) and "depth_path" in str(e.value)
    Image.new("L", (96, 64)).save(v.depth_path)
    with pytest.raises(DataError, match="depth_path"):
        load_depth(v)
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(v.depth_path)
    with pytest.raises(DataError, match="width/height"):
        load_depth(v)
    # unknown depth scale
    v.depth_scale = None
    with pytest.raises(DataError, match="depth_scale"):
        load_depth(v)
