"""BOP reader: the numpy-rendered fixture, the same files as the BOP toolkit writes them, and a round trip
through generated MuJoCo scenes (malformed inputs: tests/corpus/bop.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from posevla.data.formats.bop import YCBV_NAMES, load_bop, load_category_names, write_bop
from posevla.data.formats.omni3d import load_depth, load_omni3d, load_rgb
from posevla.geometry import box2d_from_box3d, box_corners

FIXTURE = Path(__file__).parent / "fixtures" / "bop_tiny"
TOOLKIT_FIXTURE = Path(__file__).parent / "fixtures" / "bop_toolkit_tiny"  # make_bop_toolkit_fixture.py
S1 = "test/000001"


@pytest.fixture
def bop(tmp_path) -> Path:
    dst = tmp_path / "bop"
    shutil.copytree(FIXTURE, dst)
    return dst


def _json(path: Path):
    return json.loads(path.read_text())


def _edit(path: Path, fn) -> None:
    d = _json(path)
    fn(d)
    path.write_text(json.dumps(d))


def test_fixture_is_small_and_in_bop_layout():
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total <= 300_000
    for scene in ("000001", "000002"):
        d = FIXTURE / "test" / scene
        assert {p.name for p in d.iterdir()} == {"scene_camera.json", "scene_gt.json", "scene_gt_info.json", "rgb",
                                                 "depth"}
    assert (FIXTURE / "models" / "models_info.json").is_file()


def test_reader_maps_fields_exactly():
    scenes = load_bop(FIXTURE, "test")
    assert [s.scene_id for s in scenes] == [f"{S1}/000000", f"{S1}/000005", "test/000002/000000",
                                            "test/000002/000001"]
    info = _json(FIXTURE / "models" / "models_info.json")
    gt = _json(FIXTURE / S1 / "scene_gt.json")
    gti = _json(FIXTURE / S1 / "scene_gt_info.json")
    cam = _json(FIXTURE / S1 / "scene_camera.json")
    v = scenes[1].views[0]  # image 5 of scene 1
    assert len(scenes[1].views) == 1 and v.width == 128 and v.height == 96
    np.testing.assert_allclose(v.K, np.array(cam["5"]["cam_K"]).reshape(3, 3))
    assert v.depth_scale == pytest.approx(cam["5"]["depth_scale"] * 1e-3)
    assert [o.category for o in v.objects] == ["cracker box", "mug", "foam brick"]
    for o, g, gi in zip(v.objects, gt["5"], gti["5"]):
        m = info[str(g["obj_id"])]
        c_model = np.array([m["min_x"] + m["size_x"] / 2, m["min_y"] + m["size_y"] / 2, m["min_z"] + m["size_z"] / 2])
        R = np.array(g["cam_R_m2c"]).reshape(3, 3)
        np.testing.assert_allclose(o.center_cam, (R @ c_model + np.array(g["cam_t_m2c"])) / 1000, atol=1e-12)
        # Omni3D's [W, H, L] with the model's x spanning L and z spanning W
        np.testing.assert_allclose(o.dimensions, np.array([m["size_z"], m["size_y"], m["size_x"]]) / 1000)
        np.testing.assert_allclose(o.R_cam, R)
        assert o.visibility == pytest.approx(gi["visib_fract"])
        # independent check of the pose/K conventions: the ray-cast silhouette lies in the projected 3D box
        x, y, w, h = gi["bbox_visib"]
        assert o.bbox2d[0] - 1 <= x and o.bbox2d[1] - 1 <= y
        assert x + w - 1 <= o.bbox2d[2] + 1 and y + h - 1 <= o.bbox2d[3] + 1
    # the same object seen from both cameras of a scene has one world pose
    a, b = scenes[0].views[0], scenes[1].views[0]
    for oa, ob in zip(a.objects, b.objects):
        wa = a.T_world_cam[:3, :3] @ oa.center_cam + a.T_world_cam[:3, 3]
        wb = b.T_world_cam[:3, :3] @ ob.center_cam + b.T_world_cam[:3, 3]
        np.testing.assert_allclose(wa, wb, atol=1e-9)
    assert scenes[2].views[0].T_world_cam is None  # scene 2 stores no extrinsics


def test_pixels_load_png_jpeg_and_metric_depth():
    scenes = load_bop(FIXTURE, "test")
    for s in scenes:
        v = s.views[0]
        rgb = load_rgb(v)
        assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
        d = load_depth(v)
        for o in v.objects:  # the surface at the projected centre is within the box's extent of its z
            uv = v.K @ o.center_cam
            u, w = int(round(uv[0] / uv[2])), int(round(uv[1] / uv[2]))
            if o.visibility > 0.9:
                assert abs(d[w, u] - o.center_cam[2]) <= 0.5 * np.linalg.norm(o.dimensions) + 1e-3
    assert scenes[2].views[0].image_path.suffix == ".jpg"


def test_files_written_by_the_bop_toolkit_read_the_same():
    """bop_toolkit_lib.inout's savers (sorted keys, its own number formatting and PNG / JPEG encoders) give the
    same scenes, labels and pixels. JPEGs are re-encoded (imageio's default quality 75: the toolkit's quality
    argument is skipped for a '.jpg' suffix), so they are only close: mean |diff| 5.6 levels; a swapped channel
    order or a flipped image is far beyond the bound."""
    ours, theirs = load_bop(FIXTURE, "test"), load_bop(TOOLKIT_FIXTURE, "test")
    assert [s.scene_id for s in theirs] == [s.scene_id for s in ours]
    for a, b in zip((v for s in ours for v in s.views), (v for s in theirs for v in s.views), strict=True):
        assert (a.width, a.height, a.depth_scale) == (b.width, b.height, b.depth_scale)
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        assert [o.category for o in a.objects] == [o.category for o in b.objects]
        for oa, ob in zip(a.objects, b.objects, strict=True):
            for key in ("center_cam", "dimensions", "R_cam", "bbox2d"):
                np.testing.assert_array_equal(getattr(oa, key), getattr(ob, key), err_msg=key)
            assert (oa.visibility, oa.truncation) == (ob.visibility, ob.truncation)
        np.testing.assert_array_equal(load_depth(a), load_depth(b))
        if a.image_path.suffix == ".png":
            np.testing.assert_array_equal(load_rgb(a), load_rgb(b))
        else:
            assert np.abs(load_rgb(a).astype(int) - load_rgb(b).astype(int)).mean() < 10


def test_category_names_sources(bop):
    names = {o.category for s in load_bop(bop, "test", category_names={1: "box", 2: "cup", 5: "brick"})
             for o in s.views[0].objects}
    assert names == {"box", "cup", "brick"}
    (bop / "category_names.json").unlink()
    assert {o.category for s in load_bop(bop) for o in s.views[0].objects} == {"obj_000001", "obj_000002",
                                                                               "obj_000005"}
    ycbv = bop.parent / "ycbv"
    bop.rename(ycbv)
    assert load_category_names(None, ycbv) == YCBV_NAMES and len(YCBV_NAMES) == 21
    assert load_bop(ycbv, scene_ids=[2])[0].views[0].objects[0].category == "cracker box"  # obj 2 in YCB-V


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from posevla.sim.tabletop import generate_dataset

    root = tmp_path_factory.mktemp("gen")
    generate_dataset(root, 2, seed=11, width=96, height=64, progress=False)
    return root


def test_bop_written_from_generated_scenes_matches_omni3d_labels(generated, tmp_path):
    scenes = load_omni3d(generated / "dataset.json")
    names = write_bop(scenes, tmp_path / "bop", "train_pbr", model_offset=(0.01, -0.02, 0.03))
    bop_scenes = load_bop(tmp_path / "bop", "train_pbr")
    src_views = [v for s in scenes for v in s.views]
    assert len(bop_scenes) == len(src_views) and set(names.values()) <= {o.category for v in src_views for o in v.objects}
    for s, v0 in zip(bop_scenes, src_views):
        v = s.views[0]
        np.testing.assert_allclose(v.K, v0.K)
        np.testing.assert_allclose(v.T_world_cam, v0.T_world_cam, atol=1e-9)
        assert len(v.objects) == len(v0.objects)
        for o, o0 in zip(v.objects, v0.objects):
            assert o.category == o0.category
            np.testing.assert_allclose(o.center_cam, o0.center_cam, atol=1e-9)
            np.testing.assert_allclose(o.dimensions, o0.dimensions, atol=1e-9)
            np.testing.assert_allclose(o.R_cam, o0.R_cam, atol=1e-12)
            np.testing.assert_allclose(o.bbox2d, o0.bbox2d, atol=1e-6)
            assert o.truncation == pytest.approx(o0.truncation, abs=1e-4)
            assert o.visibility == pytest.approx(o0.visibility)
        np.testing.assert_array_equal(load_rgb(v), load_rgb(v0))
        np.testing.assert_allclose(load_depth(v), load_depth(v0), atol=1e-6)


def test_box_helper_agrees_with_reader():
    v = load_bop(FIXTURE, scene_ids=[2])[0].views[0]
    o = v.objects[0]
    box, trunc = box2d_from_box3d(v.K, box_corners(o.center_cam, o.dimensions, o.R_cam), v.width, v.height)
    np.testing.assert_allclose(o.bbox2d, box)
    assert o.truncation == pytest.approx(float(trunc))
