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
from posevla.errors import DataError
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


# ----------------------------------------------------------------------------------------------
# layout variants of real BOP datasets (tests/fixtures/make_bop_toolkit_fixture.py, `variants`)
# ----------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
ITODD, MULTI, PBR, TLESS = (FIXTURES / f"bop_{n}_tiny" for n in ("itodd", "multisensor", "pbr", "tless"))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """The fixture script's gray: ITU-R 601 weights, rounded."""
    return np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def _same_labels(a, b, *, exact: bool = True) -> None:
    """Two views with the same camera and objects (a: a variant, b: bop_tiny's)."""
    assert (a.width, a.height) == (b.width, b.height) == (128, 96)
    np.testing.assert_array_equal(a.K, b.K)
    if b.T_world_cam is None:
        assert a.T_world_cam is None
    else:
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, atol=0 if exact else 1e-12)
    assert [o.category for o in a.objects] == [o.category for o in b.objects]
    for oa, ob in zip(a.objects, b.objects, strict=True):
        for key in ("center_cam", "dimensions", "R_cam", "bbox2d"):
            np.testing.assert_allclose(getattr(oa, key), getattr(ob, key), atol=0 if exact else 1e-12, err_msg=key)
        assert (oa.visibility, oa.truncation) == (ob.visibility, ob.truncation)


def _raw_pose(root: Path, rel: str, im: str, k: int):
    """(K 3x3, R_m2c, t_m2c in metres) straight from a variant's json files."""
    scene_dir = root / Path(rel).parent
    cam = _json(root / rel)[im]
    gt = _json(scene_dir / Path(rel).name.replace("scene_camera", "scene_gt"))[im][k]
    return (np.array(cam["cam_K"]).reshape(3, 3), np.array(gt["cam_R_m2c"]).reshape(3, 3),
            np.array(gt["cam_t_m2c"]) / 1000, cam["depth_scale"])


def test_variant_fixtures_are_small_and_in_the_toolkit_layout():
    total = sum(p.stat().st_size for root in (ITODD, MULTI, PBR, TLESS) for p in root.rglob("*") if p.is_file())
    assert total <= 300_000
    assert {p.name for p in (ITODD / "test" / "000001").iterdir()} == {"scene_camera.json", "scene_gt.json",
                                                                       "scene_gt_info.json", "gray", "depth"}
    assert {p.suffix for p in (ITODD / "test" / "000001").rglob("*0*.*")} == {".tif"}
    assert {p.name for p in (MULTI / "test" / "000001").iterdir()} == {
        f"{kind}_{s}{ext}" for s in ("photoneo", "xyz")
        for kind, ext in (("scene_camera", ".json"), ("scene_gt", ".json"), ("scene_gt_info", ".json"), ("depth", ""))
    } | {"rgb_photoneo", "gray_xyz"}
    assert not (MULTI / "camera.json").exists() and (MULTI / "camera_xyz.json").is_file()
    assert sorted(p.name for p in PBR.iterdir() if p.is_dir()) == ["models", "train_pbr"]
    assert sorted(p.name for p in TLESS.glob("*.json")) == ["camera_primesense.json", "category_names.json"]


def test_itodd_gray_tiff_and_tiff_depth():
    from PIL import Image

    scenes = load_bop(ITODD)  # the only split: test
    ref = load_bop(FIXTURE, "test", scene_ids=[1])
    assert [s.scene_id for s in scenes] == [s.scene_id for s in ref] == [f"{S1}/000000", f"{S1}/000005"]
    n_far = 0
    for s, r in zip(scenes, ref):
        v, w = s.views[0], r.views[0]
        _same_labels(v, w)
        assert v.gray and not w.gray and v.image_path.suffix == v.depth_path.suffix == ".tif"
        assert v.depth_scale == pytest.approx(0.05e-3)  # this root's scene_camera.json, not bop_tiny's 0.1 mm
        rgb = load_rgb(v)
        assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb, np.repeat(_luminance(load_rgb(w))[..., None], 3, axis=2))
        raw = np.asarray(Image.open(v.depth_path))  # uint16, twice bop_tiny's values (0.05 mm per unit)
        assert raw.dtype == np.uint16
        np.testing.assert_allclose(load_depth(v), raw * 0.05e-3, rtol=1e-6)
        far = load_depth(w) > 65535 * 0.05e-3  # beyond the range of 0.05 mm units: stored as 0 (invalid)
        n_far += int(far.sum())
        assert not load_depth(v)[far].any()
        np.testing.assert_allclose(load_depth(v)[~far], load_depth(w)[~far], atol=1e-7)
    assert n_far > 0
    K, R, t, ds = _raw_pose(ITODD, "test/000001/scene_camera.json", "5", 1)
    o = scenes[1].views[0].objects[1]
    np.testing.assert_array_equal(scenes[1].views[0].K, K)
    np.testing.assert_array_equal(o.R_cam, R)
    m = _json(ITODD / "models" / "models_info.json")[str(_json(ITODD / S1 / "scene_gt.json")["5"][1]["obj_id"])]
    c = np.array([m["min_x"] + m["size_x"] / 2, m["min_y"] + m["size_y"] / 2, m["min_z"] + m["size_z"] / 2]) / 1000
    np.testing.assert_allclose(o.center_cam, R @ c + t, atol=1e-12)
    np.testing.assert_allclose(o.dimensions, np.array([m["size_z"], m["size_y"], m["size_x"]]) / 1000)
    assert ds == 0.05


def test_multi_sensor_files_read_one_sensor_at_a_time(tmp_path):
    ref = load_bop(FIXTURE, "test", scene_ids=[1])  # photoneo = bop_tiny's image 0, xyz = its image 5
    pho = load_bop(MULTI, "test", sensor="photoneo")
    xyz = load_bop(MULTI, sensor="xyz")
    assert [s.scene_id for s in pho] == ["test/000001/photoneo/000000"]
    assert [s.scene_id for s in xyz] == ["test/000001/xyz/000000"]
    for (s, r, gray) in ((pho[0], ref[0], False), (xyz[0], ref[1], True)):
        v, w = s.views[0], r.views[0]
        _same_labels(v, w)
        assert v.gray is gray and v.camera == f"test/{'xyz' if gray else 'photoneo'}"
        assert v.depth_scale == pytest.approx(1e-4)
        np.testing.assert_array_equal(load_depth(v), load_depth(w))
        want = np.repeat(_luminance(load_rgb(w))[..., None], 3, axis=2) if gray else load_rgb(w)
        np.testing.assert_array_equal(load_rgb(v), want)
    K, R, _, _ = _raw_pose(MULTI, "test/000001/scene_camera_xyz.json", "0", 2)
    np.testing.assert_array_equal(xyz[0].views[0].K, K)
    np.testing.assert_array_equal(xyz[0].views[0].objects[2].R_cam, R)
    # both sensors see one world: the same object has one world position
    a, b = pho[0].views[0], xyz[0].views[0]
    for oa, ob in zip(a.objects, b.objects, strict=True):
        np.testing.assert_allclose(a.T_world_cam[:3, :3] @ oa.center_cam + a.T_world_cam[:3, 3],
                                   b.T_world_cam[:3, :3] @ ob.center_cam + b.T_world_cam[:3, 3], atol=1e-9)
    with pytest.raises(DataError, match="photoneo.*xyz") as e:
        load_bop(MULTI)  # no sensor is chosen silently
    assert e.value.field == "sensor"
    with pytest.raises(DataError, match="scene_camera_cam1.json"):
        load_bop(MULTI, sensor="cam1")
    with pytest.raises(DataError, match="scene_camera.json"):  # "" = the classic names, absent here
        load_bop(MULTI, sensor="")
    # a known dataset's evaluation sensor is named in the hint, still not chosen
    with pytest.raises(DataError, match="'xyz' is the sensor BOP evaluates xyzibd on"):
        load_bop(shutil.copytree(MULTI, tmp_path / "xyzibd"))


def test_train_pbr_only_root_with_jpeg_rgb():
    scenes = load_bop(PBR)  # default split: the only one, train_pbr
    ref = load_bop(FIXTURE, "test", scene_ids=[1])
    assert [s.scene_id for s in scenes] == ["train_pbr/000000/000000", "train_pbr/000000/000001"]
    for s, r in zip(scenes, ref, strict=True):
        v, w = s.views[0], r.views[0]
        _same_labels(v, w)
        assert v.image_path.suffix == ".jpg" and v.camera == "train_pbr" and not v.gray
        assert v.depth_scale == pytest.approx(_json(PBR / "train_pbr/000000/scene_camera.json")["0"]["depth_scale"]
                                              * 1e-3) == pytest.approx(1e-4)
        np.testing.assert_array_equal(load_depth(v), load_depth(w))
        assert np.abs(load_rgb(v).astype(int) - load_rgb(w).astype(int)).mean() < 10  # JPEG re-encoded
    with pytest.raises(DataError, match="train_pbr") as e:  # no silent 'test': the error lists the splits
        load_bop(PBR, "test")
    assert e.value.field == "split"


def test_split_named_test_primesense_and_camera_primesense(tmp_path):
    scenes = load_bop(TLESS)
    ref = load_bop(FIXTURE, "test", scene_ids=[2])
    assert [s.scene_id for s in scenes] == ["test_primesense/000002/000000", "test_primesense/000002/000001"]
    for s, r in zip(scenes, ref, strict=True):
        _same_labels(s.views[0], r.views[0])
        assert np.abs(load_rgb(s.views[0]).astype(int) - load_rgb(r.views[0]).astype(int)).max() <= 1
        np.testing.assert_array_equal(load_depth(s.views[0]), load_depth(r.views[0]))
    # camera_primesense.json is for sensor simulation: a size that disagrees with the images is not used
    # (T-LESS's train_primesense images are 400x400 under a 720x540 camera_primesense.json)
    root = shutil.copytree(TLESS, tmp_path / "tless")
    _edit(root / "camera_primesense.json", lambda d: d.update(width=720, height=540))
    v = load_bop(root)[0].views[0]
    assert (v.width, v.height) == (128, 96)
    load_rgb(v)


def test_split_must_be_chosen_when_there_are_several(bop):
    shutil.copytree(bop / "test", bop / "train_pbr")
    with pytest.raises(DataError, match="test, train_pbr") as e:
        load_bop(bop)
    assert e.value.field == "split"
    assert len(load_bop(bop, "train_pbr")) == 4
    with pytest.raises(DataError, match="val/<scene_id>/scene_gt"):
        load_bop(bop, "val")


def test_bop_roots_are_detected_with_camera_json(tmp_path):
    from posevla.data.doctor import detect_format, run_doctor
    root = shutil.copytree(TLESS, tmp_path / "tless")
    (root / "category_names.json").unlink()  # one json left at the root: camera_primesense.json
    shutil.move(root / "camera_primesense.json", root / "camera.json")
    assert detect_format(root) == ("bop", root)
    assert detect_format(root / "camera.json") == ("bop", root)
    shutil.rmtree(root / "test_primesense")  # models/models_info.json alone marks a BOP root
    assert detect_format(root) == ("bop", root)
    assert detect_format(MULTI / "test" / "000001") == ("bop", MULTI)
    assert detect_format(MULTI / "test") == ("bop", MULTI)
    assert detect_format(MULTI / "test" / "000001" / "scene_gt_info_xyz.json") == ("bop", MULTI)
    assert detect_format(MULTI / "camera_xyz.json") == ("bop", MULTI)
    other = tmp_path / "other"
    other.mkdir()
    (other / "camera.json").write_text(json.dumps({"fx": 1.0}))
    with pytest.raises(DataError, match="models_info.json") as e:
        detect_format(other)  # one json that is not Omni3D: neither format
    assert "camera.json" in str(e.value)
    (other / "camera.json").write_text(json.dumps({"images": [], "annotations": []}))
    assert detect_format(other) == ("omni3d", other / "camera.json")
    rep = run_doctor(MULTI)
    assert rep.format == "bop" and rep.stats["splits"] == "test[photoneo,xyz]"
    assert rep.ok, rep.table()
    multi = shutil.copytree(MULTI, tmp_path / "multi")  # the doctor reads each sensor's own scene_gt_info
    _edit(multi / "test/000001/scene_gt_info_xyz.json",
          lambda d: [r.__setitem__("bbox_visib", [128 - r["bbox_visib"][0] - r["bbox_visib"][2], *r["bbox_visib"][1:]])
                     for r in d["0"]])
    assert run_doctor(multi).checks("error") == {"image orientation"}


def test_source_spec_split_defaults_to_the_only_split():
    from posevla.data.sources import SOURCE_KINDS, SourceSpec
    from posevla.errors import ConfigError

    spec = SourceSpec("bop", str(PBR))
    assert spec.split is None and spec.label == "bop:bop_pbr_tiny/train_pbr"  # the only split, as load_bop reads
    assert SourceSpec("bop", str(MULTI.parent / "missing")).label == "bop:missing"
    assert SourceSpec("bop", str(TLESS), split="test_primesense").label == "bop:bop_tless_tiny/test_primesense"
    assert next(s.scene_id for s in SOURCE_KINDS["bop"][0](spec)) == "train_pbr/000000/000000"
    for bad in ("", "a/b", ".."):
        with pytest.raises(ConfigError, match="split"):
            SourceSpec("bop", str(PBR), split=bad)
    with pytest.raises(ConfigError, match="split applies to 'bop'"):
        SourceSpec("omni3d", "x.json", split="val")
    assert SourceSpec("omni3d", "x.json", split="test").split is None  # the old default, in saved configs


def test_source_spec_sensor_reads_one_sensor_of_a_multi_sensor_root():
    from posevla.data.sources import SourceSpec, load_source
    from posevla.errors import ConfigError

    spec = SourceSpec("bop", str(MULTI), sensor="xyz")
    assert spec.label == "bop:bop_multisensor_tiny/test/xyz"
    views = [v for s in load_source(spec).scenes for v in s.views]
    assert views and all(v.image_path.parent.name == "gray_xyz" and v.gray for v in views)
    with pytest.raises(DataError, match="photoneo"):  # several sensors and none named: the error lists them
        load_source(SourceSpec("bop", str(MULTI)))
    with pytest.raises(ConfigError, match="sensor applies to bop"):
        SourceSpec("omni3d", "x.json", sensor="xyz")
