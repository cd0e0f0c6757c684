"""Pseudo multi-view crops: exact K, recomputed labels, lazy pixels, determinism, and the
label-filter / depth-convention extensions they rely on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from posevla.data.formats.bop import load_bop
from posevla.data.formats.depth_encoding import SOURCE_DEPTH_ENCODINGS, decode_depth, source_depth_encoding
from posevla.data.formats.omni3d import load_depth, load_omni3d, load_rgb
from posevla.data.grounding import LabelFilter, build_grounding_example, scene_categories
from posevla.data.views import BOP_CROPS, DEFAULT_CROPS, PseudoViewConfig, crop_view, pseudo_multiview_scenes, pseudo_views
from posevla.errors import DataError
from posevla.geometry import box2d_from_box3d, box_corners, project_points

FIXTURE = Path(__file__).parent / "fixtures" / "bop_tiny"


@pytest.fixture(scope="module")
def view():
    return load_bop(FIXTURE, scene_ids=[1])[1].views[0]  # image 5: three objects


def test_crop_keeps_projection_and_pixels_exact(view):
    x0, y0, w, h = 17, 9, 80, 60
    c = crop_view(view, x0, y0, w, h)
    p = np.array([[0.05, -0.03, 0.6], [-0.1, 0.07, 0.9]])
    np.testing.assert_allclose(project_points(c.K, p), project_points(view.K, p) - [x0, y0], atol=1e-12)
    np.testing.assert_array_equal(load_rgb(c), load_rgb(view)[y0 : y0 + h, x0 : x0 + w])
    np.testing.assert_array_equal(load_depth(c), load_depth(view)[y0 : y0 + h, x0 : x0 + w])
    assert (c.width, c.height) == (w, h) and c.crop.source_width == view.width
    # crops compose: a crop of a crop is a window of the same stored image
    cc = crop_view(c, 5, 4, 30, 20)
    direct = crop_view(view, x0 + 5, y0 + 4, 30, 20)
    np.testing.assert_allclose(cc.K, direct.K)
    np.testing.assert_array_equal(load_rgb(cc), load_rgb(direct))
    assert view.crop is None and len(view.objects) == 3  # the source view is untouched


def test_crop_recomputes_labels(view):
    # a crop that cuts the mug (x 68..103) in half and leaves the others inside or out
    x0, y0, w, h = 30, 0, 56, 96
    c = crop_view(view, x0, y0, w, h)
    by_cat = {o.category: o for o in c.objects}
    src = {o.category: o for o in view.objects}
    for cat, o in by_cat.items():
        s = src[cat]
        corners = box_corners(s.center_cam, s.dimensions, s.R_cam)
        unclipped, _ = box2d_from_box3d(view.K, corners, 10**6, 10**6)  # (4,), no clipping in practice
        expect = np.clip(unclipped - [x0, y0, x0, y0], [-0.5, -0.5, -0.5, -0.5], [w - 0.5, h - 0.5, w - 0.5, h - 0.5])
        if s.truncation == 0:
            np.testing.assert_allclose(o.bbox2d, expect, atol=1e-9)
        assert o.visibility <= s.visibility + 1e-12
        np.testing.assert_allclose(o.center_cam, s.center_cam)  # 3D labels are camera-frame: unchanged
    mug = by_cat["mug"]
    assert 0.2 < mug.truncation < 0.8 and mug.visibility < src["mug"].visibility
    # an object whose box misses the crop is dropped; the filter drops a centre outside the crop
    far = crop_view(view, 0, 0, 40, 30)
    assert all(np.isfinite(o.bbox2d).all() and o.truncation < 1 for o in far.objects)
    lf = LabelFilter()
    kept = crop_view(view, x0, y0, w, h, label_filter=lf)
    assert {o.category for o in kept.objects} == {o.category for o in c.objects if lf.keep(o, c.K, w, h)}
    assert "mug" not in {o.category for o in kept.objects}


def test_crop_outside_image_is_rejected(view):
    with pytest.raises(DataError) as e:
        crop_view(view, 100, 0, 40, 30)
    assert e.value.field == "crop" and str(view.image_id) in str(e.value.record)


def _area_fraction(v, src):
    return v.width * v.height / (src.width * src.height)


def test_pseudo_views_ranges_aspect_and_determinism(view):
    a = pseudo_views(view, seed=3)
    b = pseudo_views(view, seed=3)
    assert [v.camera for v in a] == ["head", "wrist1", "wrist2"]
    assert [v.crop for v in a] == [v.crop for v in b]
    assert [v.crop for v in pseudo_views(view, seed=4)] != [v.crop for v in a]
    tol = 0.04  # whole-pixel rounding on a 128x96 image
    for seed in range(60):
        for cfg in (DEFAULT_CROPS, BOP_CROPS):
            vs = pseudo_views(view, seed, cfg)
            f = [_area_fraction(v, view) for v in vs]
            assert cfg.head_area[0] - tol <= f[0] <= cfg.head_area[1] + 1e-9
            for x in f[1:]:
                assert cfg.wrist_area[0] - tol <= x <= cfg.wrist_area[1] + tol
            for v in vs:
                assert abs(v.width / v.height - cfg.aspect) < 0.05
                assert 0 <= v.crop.x0 <= view.width - v.width and 0 <= v.crop.y0 <= view.height - v.height
    with pytest.raises(DataError):
        PseudoViewConfig(wrist_area=(0.6, 0.2))


def test_pseudo_multiview_scene_feeds_grounding_example():
    scenes = pseudo_multiview_scenes(load_bop(FIXTURE, "test"), seed=0, config=BOP_CROPS)
    assert len(scenes) == 4 and all(len(s.views) == 3 for s in scenes)
    s = scenes[0]
    lf = LabelFilter()
    cats = scene_categories(s, lf)
    assert cats
    ex = build_grounding_example(s, cats[0], image_size=64, num_views=3, label_filter=lf)
    assert len(ex.views) == 3 and all(p.pixels.shape == (3, 64, 64) for p in ex.prepared)
    for v, ans in zip(s.views, ex.views):
        n = sum(o.category == cats[0] and lf.keep(o, v.K, v.width, v.height) for o in v.objects)
        assert len(ans.entries) == n
        for e in ans.entries:
            assert np.all((e.anchor >= 0) & (e.anchor <= 1))
    # the head view covers most of the image, so its answer lists the category when the source does
    assert ex.views[0].entries


def test_label_filter_min_box_area(view):
    o = view.objects[2]
    area = (o.bbox2d[2] - o.bbox2d[0]) * (o.bbox2d[3] - o.bbox2d[1])
    assert LabelFilter().keep(o, view.K, view.width, view.height)
    assert LabelFilter(min_box_area_px=area - 1).keep(o, view.K, view.width, view.height)
    assert not LabelFilter(min_box_area_px=area + 1).keep(o, view.K, view.width, view.height)
    assert LabelFilter.omni3d().min_box_area_px == 150 and LabelFilter.omni3d().max_truncation == 0.33


def test_omni3d_source_depth_conventions(tmp_path):
    assert source_depth_encoding("SUN RGB-D") == source_depth_encoding("sunrgbd") == "sunrgbd-toolbox"
    assert source_depth_encoding("Hypersim") is None
    assert source_depth_encoding("ARKit_Scenes") == "mm" == SOURCE_DEPTH_ENCODINGS["ARKitScenes"]
    from PIL import Image

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 8), 1000, np.uint16)).save(tmp_path / "d.png")
    K = [[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]]

    def write(info, fp="a.png"):
        d = {"info": info, "images": [{"id": 0, "width": 8, "height": 6, "K": K, "file_path": fp,
                                       "depth_path": "d.png"}], "annotations": []}
        (tmp_path / "x.json").write_text(json.dumps(d))
        return load_omni3d(tmp_path / "x.json", check_files=False)[0].views[0]

    assert write({"source": "SUNRGBD"}).depth_encoding == "sunrgbd-toolbox"
    assert write({"name": "ARKitScenes Train"}).depth_encoding == "mm"
    assert write([{"name": "ARKitScenes Train"}]).depth_encoding == "mm"  # info as a list (cubercnn accepts it)
    assert write({}, fp="ARKitScenes/a.png").depth_encoding == "mm"
    v = write({"source": "SUNRGBD", "depth_scale": 2e-4})
    assert (v.depth_encoding, v.depth_scale) == ("linear", 2e-4)
    assert write({"source": "SUNRGBD", "depth_encoding": "mm"}).depth_encoding == "mm"
    assert write({"source": "Objectron"}).depth_encoding == "linear"
    v = dataclasses.replace(write({"source": "KITTI"}), image_path=tmp_path / "a.png")
    np.testing.assert_allclose(load_depth(v), 1000 / 256)


def test_sunrgbd_toolbox_depth_encoding():
    """SUN RGB-D's release stores millimetres rotated right by 3 bits (read3dPoints.m); values derived by hand."""
    # the file stores mm rotated LEFT by 3 bits within 16 bits:
    # 2.5 m = 2500 mm -> 2500 << 3 = 20000 (no bit wraps round)
    # 8.2 m = 8200 mm = 0b0010_0000_0000_1000 -> (8200 << 3) & 0xFFFF = 64, plus the wrapped top bit 8200 >> 13 = 1
    raw = np.array([[0, 20000, 65]], np.uint16)
    np.testing.assert_allclose(decode_depth(raw, "sunrgbd-toolbox"), [[0.0, 2.5, 8.2]], atol=1e-6)
    # the same file read as 1e-4 m units comes out 20 % short (the mistake this encoding prevents)
    assert decode_depth(raw, "0.1mm")[0, 1] == np.float32(2.0)
    np.testing.assert_allclose(decode_depth(raw, "mm"), raw * 1e-3, rtol=1e-6)
    np.testing.assert_allclose(decode_depth(raw, "linear", 2e-4), raw * 2e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="valid: sunrgbd-toolbox"):
        decode_depth(raw, "metres")
