"""BOP reader: the numpy-rendered fixture, a round trip through generated MuJoCo scenes, and a
DataError naming file, record and field for each malformed input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posevla.data.formats.bop import YCBV_NAMES, load_bop, load_category_names, write_bop
from posevla.data.formats.omni3d import load_depth, load_omni3d, load_rgb
from posevla.errors import DataError
from posevla.geometry import box2d_from_box3d, box_corners

FIXTURE = Path(__file__).parent / "fixtures" / "bop_tiny"
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
        np.testing.assert_allclose(o.dimensions, np.array([m["size_x"], m["size_y"], m["size_z"]]) / 1000)
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


# ----------------------------------------------------------------------------------------------
# malformed input: (file to edit, edit, file named in the error, record substring, field)
# ----------------------------------------------------------------------------------------------

CAM, GT, INFO, MODELS, NAMES = (f"{S1}/scene_camera.json", f"{S1}/scene_gt.json", f"{S1}/scene_gt_info.json",
                                "models/models_info.json", "category_names.json")


def _set(key, value, im="0", k=None):
    def fn(d):
        rec = d[im] if k is None else d[im][k]
        if value is _DEL:
            rec.pop(key)
        else:
            rec[key] = value(rec[key]) if callable(value) else value
    return fn


_DEL = object()
_R_BAD = lambda R: (1.1 * np.array(R)).tolist()  # noqa: E731
_R_REFL = lambda R: (-np.array(R)).tolist()  # noqa: E731

JSON_CASES = {
    "cam_K_missing": (CAM, _set("cam_K", _DEL), "scene_camera.json", "image 0", "cam_K"),
    "cam_K_short": (CAM, _set("cam_K", lambda K: K[:8]), "scene_camera.json", "image 0", "cam_K"),
    "cam_K_nested": (CAM, _set("cam_K", lambda K: np.array(K).reshape(3, 3).tolist()), "scene_camera.json", "image 0",
                     "cam_K"),
    "cam_K_nan": (CAM, _set("cam_K", lambda K: [float("nan")] + K[1:]), "scene_camera.json", "image 0", "cam_K"),
    "cam_K_pp_outside": (CAM, _set("cam_K", lambda K: K[:2] + [900.0] + K[3:]), "scene_camera.json", "image 0",
                         "cam_K"),
    "cam_K_negative_f": (CAM, _set("cam_K", lambda K: K[:4] + [-110.0] + K[5:]), "scene_camera.json", "image 0",
                         "cam_K"),
    "depth_scale_missing": (CAM, _set("depth_scale", _DEL), "scene_camera.json", "image 0", "depth_scale"),
    "depth_scale_negative": (CAM, _set("depth_scale", -0.1), "scene_camera.json", "image 0", "depth_scale"),
    "depth_scale_absurd": (CAM, _set("depth_scale", 1e6), "scene_camera.json", "image 0", "depth_scale"),
    "depth_scale_string": (CAM, _set("depth_scale", "0.1"), "scene_camera.json", "image 0", "depth_scale"),
    "cam_R_w2c_not_orthonormal": (CAM, _set("cam_R_w2c", _R_BAD), "scene_camera.json", "image 0", "cam_R_w2c"),
    "cam_t_w2c_missing": (CAM, _set("cam_t_w2c", _DEL), "scene_camera.json", "image 0", "cam_t_w2c"),
    "cam_R_m2c_missing": (GT, _set("cam_R_m2c", _DEL, k=1), "scene_gt.json", "image 0, object 1", "cam_R_m2c"),
    "cam_R_m2c_six": (GT, _set("cam_R_m2c", lambda R: R[:6], k=1), "scene_gt.json", "image 0, object 1", "cam_R_m2c"),
    "cam_R_m2c_not_orthonormal": (GT, _set("cam_R_m2c", _R_BAD, k=0), "scene_gt.json", "image 0, object 0",
                                  "cam_R_m2c"),
    "cam_R_m2c_reflection": (GT, _set("cam_R_m2c", _R_REFL, k=2), "scene_gt.json", "image 0, object 2", "cam_R_m2c"),
    "cam_R_m2c_nan": (GT, _set("cam_R_m2c", lambda R: R[:3] + [float("nan")] + R[4:], k=0), "scene_gt.json",
                      "image 0, object 0", "cam_R_m2c"),
    "cam_t_m2c_metres": (GT, _set("cam_t_m2c", lambda t: (np.array(t) / 1000).tolist(), k=1), "scene_gt.json",
                         "image 0, object 1", "cam_t_m2c"),
    "cam_t_m2c_behind": (GT, _set("cam_t_m2c", lambda t: [t[0], t[1], -t[2]], k=1), "scene_gt.json",
                         "image 0, object 1", "cam_t_m2c"),
    "cam_t_m2c_inf": (GT, _set("cam_t_m2c", lambda t: [t[0], float("inf"), t[2]], k=0), "scene_gt.json",
                      "image 0, object 0", "cam_t_m2c"),
    "obj_id_not_in_models": (GT, _set("obj_id", 7, k=2), "scene_gt.json", "image 0, object 2", "obj_id"),
    "obj_id_string": (GT, _set("obj_id", "1", k=0), "scene_gt.json", "image 0, object 0", "obj_id"),
    "obj_id_without_name": (NAMES, lambda d: d.pop("5"), "scene_gt.json", "image 0, object 2", "obj_id"),
    "gt_image_without_camera": (GT, lambda d: d.__setitem__("9", d["0"]), "scene_gt.json", "image 9", "im_id"),
    "gt_key_not_integer": (GT, lambda d: d.__setitem__("first", d.pop("0")), "scene_gt.json", "first", "im_id"),
    "models_size_missing": (MODELS, _set("size_x", _DEL, im="2"), "models_info.json", "obj_id 2", "size_x"),
    "models_size_metres": (MODELS, _set("size_y", 0.093, im="2"), "models_info.json", "obj_id 2", "size_y"),
    "models_size_negative": (MODELS, _set("size_z", -5.0, im="1"), "models_info.json", "obj_id 1", "size_z"),
    "models_min_nan": (MODELS, _set("min_x", float("nan"), im="5"), "models_info.json", "obj_id 5", "min_x"),
    "models_key_not_integer": (MODELS, lambda d: d.__setitem__("mug", d.pop("2")), "models_info.json", "mug",
                               "obj_id"),
    "visib_fract_above_one": (INFO, _set("visib_fract", 1.5, k=0), "scene_gt_info.json", "image 0, object 0",
                              "visib_fract"),
    "visib_fract_missing": (INFO, _set("visib_fract", _DEL, k=1), "scene_gt_info.json", "image 0, object 1",
                            "visib_fract"),
    "gt_info_count_mismatch": (INFO, lambda d: d["0"].pop(), "scene_gt_info.json", "image 0", "visib_fract"),
    "gt_info_image_missing": (INFO, lambda d: d.pop("5"), "scene_gt_info.json", "image 5", "im_id"),
    "bbox_obj_short": (INFO, _set("bbox_obj", [1, 2, 3], k=2), "scene_gt_info.json", "image 0, object 2",
                       "bbox_obj"),
    "empty_scene": (CAM, lambda d: d.clear(), "scene_camera.json", "scene 000001", "im_id"),
    "top_level_list": (GT, lambda d: None, "scene_gt.json", "top level", "im_id"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_malformed_json_names_file_record_field(bop, case):
    rel, fn, fname, record, fld = JSON_CASES[case]
    path = bop / rel
    if case == "top_level_list":
        path.write_text("[]")
    elif case == "empty_scene":
        path.write_text("{}")
    else:
        _edit(path, fn)
    with pytest.raises(DataError) as e:
        load_bop(bop, "test")
    err = e.value
    assert err.file is not None and Path(err.file).name == fname, str(err)
    assert record in str(err.record), str(err)
    assert err.field == fld, str(err)
    assert "fix:" in str(err)


def test_malformed_files_name_file_record_field(bop):
    # truncated json
    p = bop / GT
    p.write_text(p.read_text()[:-40])
    with pytest.raises(DataError) as e:
        load_bop(bop)
    assert Path(e.value.file).name == "scene_gt.json" and e.value.record == "top level" and e.value.field == "json"
    shutil.copy(FIXTURE / GT, p)
    # missing rgb file
    (bop / S1 / "rgb" / "000005.png").unlink()
    with pytest.raises(DataError) as e:
        load_bop(bop)
    assert e.value.file.endswith("rgb") and e.value.record == "image 5" and e.value.field == "rgb"
    shutil.copy(FIXTURE / S1 / "rgb" / "000005.png", bop / S1 / "rgb" / "000005.png")
    # missing models_info.json
    (bop / MODELS).unlink()
    with pytest.raises(DataError) as e:
        load_bop(bop)
    assert "models_info.json" in e.value.file and e.value.record and e.value.field == "models_info"
    shutil.copy(FIXTURE / MODELS, bop / MODELS)
    # unknown split
    with pytest.raises(DataError) as e:
        load_bop(bop, "train_pbr")
    assert e.value.field == "split" and "train_pbr" in e.value.file


def test_malformed_pixels_name_file_record_field(bop):
    v = load_bop(bop, scene_ids=[1])[0].views[0]
    raw = v.image_path.read_bytes()
    v.image_path.write_bytes(raw[: len(raw) // 2])  # truncated PNG
    with pytest.raises(DataError) as e:
        load_rgb(v)
    assert e.value.file == str(v.image_path) and "test/000001/000000" in e.value.record and e.value.field == "file_path"
    Image.new("L", (128, 96)).save(v.depth_path)  # 8-bit depth
    with pytest.raises(DataError) as e:
        load_depth(v)
    assert e.value.file == str(v.depth_path) and "test/000001/000000" in e.value.record
    assert e.value.field == "depth_path"
    raw = (FIXTURE / S1 / "depth" / "000000.png").read_bytes()
    v.depth_path.write_bytes(raw[: len(raw) // 3])  # truncated depth
    with pytest.raises(DataError) as e:
        load_depth(v)
    assert e.value.file == str(v.depth_path) and e.value.record and e.value.field == "depth_path"
    Image.new("RGB", (96, 128)).save(v.image_path)  # rotated by 90 degrees
    with pytest.raises(DataError, match="rotated by 90") as e:
        load_rgb(v)
    assert e.value.field == "width/height"


def test_box_helper_agrees_with_reader():
    v = load_bop(FIXTURE, scene_ids=[2])[0].views[0]
    o = v.objects[0]
    box, trunc = box2d_from_box3d(v.K, box_corners(o.center_cam, o.dimensions, o.R_cam), v.width, v.height)
    np.testing.assert_allclose(o.bbox2d, box)
    assert o.truncation == pytest.approx(float(trunc))
