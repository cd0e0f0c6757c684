"""Omni3D reader: grouping and lazy pixels (malformed inputs: tests/corpus/omni3d.py)."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from posevla.data.formats.omni3d import Object3D, Scene, View, load_depth, load_omni3d, load_rgb
from posevla.sim.tabletop import generate_dataset


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
