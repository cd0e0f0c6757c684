"""Omni3D as its own converter lays it out: the official folder layout, real KITTI labels, SUN RGB-D depth.

The fixture (``tests/fixtures/omni3d_real``, made by ``make_omni3d_real.py`` without posevla code) holds
KITTI's real label lines for image 000001, converted the way omni3d DATA.md describes, with
``bbox3D_cam`` derived by KITTI's devkit formula; and a SUN RGB-D-style view whose depth PNG uses the
release's bit-rotated millimetres.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from posevla.data.doctor import run_doctor
from posevla.data.formats.omni3d import load_depth, load_omni3d
from posevla.data.grounding import LabelFilter
from posevla.errors import DataError
from posevla.geometry import box_corners, box_extents_xyz

ROOT = Path(__file__).resolve().parent / "fixtures" / "omni3d_real" / "datasets"
KITTI = ROOT / "Omni3D" / "KITTI_test.json"
SUN = ROOT / "Omni3D" / "SUNRGBD_test.json"


def _objects(json_path: Path, **kw):
    (scene,) = load_omni3d(json_path, **kw)
    (view,) = scene.views
    return view, {o.annotation_id: o for o in view.objects}


def test_kitti_boxes_match_bbox3d_cam_on_omni3d_axes():
    """Corners from center, [W, H, L] and R land within 1 mm of the devkit-derived bbox3D_cam; a car's
    length runs along its local x (the heading), its width along z."""
    raw = {a["id"]: a for a in json.loads(KITTI.read_text())["annotations"]}
    view, objs = _objects(KITTI, image_root=ROOT)
    assert sorted(objs) == [100, 101, 102]  # DontCare (valid3D false) and behind_camera records skipped
    for aid, o in objs.items():
        ours = box_corners(o.center_cam, o.dimensions, o.R_cam)
        assert np.abs(ours - np.asarray(raw[aid]["bbox3D_cam"])).max() < 1e-3
    car = objs[101]
    np.testing.assert_allclose(car.dimensions, [1.87, 1.67, 3.69])  # [W, H, L] = KITTI's w, h, l
    np.testing.assert_allclose(box_extents_xyz(car.dimensions), [3.69, 1.67, 1.87])
    heading = car.R_cam[:, 0]  # local x in the camera frame
    np.testing.assert_allclose(heading, [np.cos(1.57), 0.0, -np.sin(1.57)], atol=1e-9)
    # the KITTI centre is the bottom centre lifted by h/2
    np.testing.assert_allclose(car.center_cam, [-16.53, 2.39 - 1.67 / 2, 58.49])


def test_swapped_dimensions_are_an_error_naming_the_record(tmp_path):
    """Dimensions on local x, y, z (posevla's old reading) disagree with bbox3D_cam: the error says so."""
    d = json.loads(KITTI.read_text())
    truck = next(a for a in d["annotations"] if a["id"] == 100)
    truck["dimensions"] = truck["dimensions"][::-1]
    (tmp_path / "k.json").write_text(json.dumps(d))
    with pytest.raises(DataError) as e:
        load_omni3d(tmp_path / "k.json", image_root=ROOT)
    assert e.value.record == "annotation id 100" and e.value.field == "bbox3D_cam"
    # each corner moves (12.34 - 2.63) / 2 = 4.86 m along both x and z: sqrt(2) * 4.86 = 6.87 m
    assert "W and L exchanged" in str(e.value) and "6.87 m" in str(e.value)


def test_unavailable_values_and_placeholders():
    """visibility -1 passes the Omni3D filter (cubercnn ignores unknown values); placeholders are skipped."""
    view, objs = _objects(KITTI, image_root=ROOT)
    assert all(o.visibility == -1 for o in objs.values())
    lf = LabelFilter.omni3d()
    kept = [aid for aid, o in objs.items() if lf.keep(o, view.K, view.width, view.height)]
    assert kept == [100, 101, 102]
    # a known low visibility is still filtered
    o = dataclasses.replace(objs[100], visibility=0.1)
    assert not lf.keep(o, view.K, view.width, view.height)


def test_anchor_is_the_clipped_box_and_proj_the_unclipped(tmp_path):
    raw = {a["id"]: a for a in json.loads(KITTI.read_text())["annotations"]}
    view, objs = _objects(KITTI, image_root=ROOT)
    for aid, o in objs.items():
        np.testing.assert_allclose(o.bbox2d, raw[aid]["bbox2D_trunc"])
        np.testing.assert_allclose(o.bbox2d_proj, raw[aid]["bbox2D_proj"])
    # without bbox2D_trunc (or with its -1 placeholder) the anchor is the clipped projection of the 3D box
    d = json.loads(KITTI.read_text())
    for a in d["annotations"]:
        a["bbox2D_trunc"] = [-1, -1, -1, -1]
    (tmp_path / "k.json").write_text(json.dumps(d))
    _, objs2 = _objects(tmp_path / "k.json", image_root=ROOT)
    for aid, o in objs2.items():
        assert np.abs(o.bbox2d - np.asarray(raw[aid]["bbox2D_trunc"])).max() < 0.6  # clip edge -0.5 vs 0


def test_official_layout_image_root():
    """Omni3D's file_paths start at datasets/: found by default from datasets/Omni3D/, or given."""
    view, _ = _objects(KITTI)  # default: the json's folder is 'Omni3D' -> its parent
    assert view.image_path == ROOT / "KITTI_object/training/image_2/000001.png"
    view, _ = _objects(KITTI, image_root=ROOT)
    assert view.image_path.is_file()


def test_image_root_is_named_when_images_are_elsewhere(tmp_path):
    shutil.copy(KITTI, tmp_path / "KITTI_test.json")
    with pytest.raises(DataError) as e:
        load_omni3d(tmp_path / "KITTI_test.json")
    assert e.value.field == "file_path" and "--image-root" in e.value.fix and "datasets" in e.value.fix
    assert len(load_omni3d(tmp_path / "KITTI_test.json", image_root=ROOT)) == 1


def test_sunrgbd_depth_in_metres_from_the_release_encoding():
    view, _ = _objects(SUN)
    assert view.depth_path == ROOT / "SUNRGBD/kv1/NYUdata/NYU0001/depth/NYU0001.png"
    assert view.depth_encoding == "sunrgbd-toolbox"
    truth = np.load(ROOT.parent / "sunrgbd_depth_m.npy")
    np.testing.assert_allclose(load_depth(view), truth, atol=6e-4)  # the file holds whole millimetres
    # read as 1e-4 m units (the old default) it is 20 % short
    wrong = load_depth(view, depth_scale=1e-4)
    assert np.median(wrong / truth) == pytest.approx(0.8, abs=0.01)


def test_doctor_catches_a_20_percent_depth_scale_error():
    assert run_doctor(SUN).ok
    rep = run_doctor(SUN, depth_encoding="0.1mm")
    (f,) = rep.errors
    assert f.check == "depth scale" and "sunrgbd-toolbox" in f.fix
    assert rep.stats["depth_over_label_z"] < 0.85


def test_doctor_on_the_omni3d_folder_of_several_jsons():
    """KITTI at 45-70 m is not a millimetre error; placeholder poses are not rotation errors."""
    rep = run_doctor(ROOT / "Omni3D")
    assert rep.format == "omni3d" and rep.ok and not rep.warnings, rep.table()
    assert set(rep.stats) == {"KITTI_test:", "SUNRGBD_test:"}


def test_doctor_lists_each_problem_once(tmp_path):
    d = json.loads(KITTI.read_text())
    d["annotations"][0]["visibility"] = 1.5
    (tmp_path / "k.json").write_text(json.dumps(d))
    rep = run_doctor(tmp_path / "k.json", image_root=ROOT)
    ranges = [f for f in rep.findings if f.check == "label ranges"]
    assert len(ranges) == 1 and ranges[0].record == "annotation id 100", rep.table()


def test_commands_take_the_official_layout(tmp_path, capsys):
    """doctor, fit-bins, tokens report, training and eval grounding all read datasets/Omni3D/*.json."""
    from posevla.cli import main
    from posevla.data.sources import SourceSpec, check_sources, load_source
    from posevla.training.config import DataConfig

    elsewhere = tmp_path / "jsons"
    elsewhere.mkdir()
    for j in (KITTI, SUN):
        shutil.copy(j, elsewhere / j.name)
    k, s = str(elsewhere / KITTI.name), str(elsewhere / SUN.name)
    root = ["--image-root", str(ROOT)]
    main(["doctor", k, *root])
    assert "no problems found" in capsys.readouterr().out
    main(["fit-bins", "--data", k, s, *root, "--out", str(tmp_path / "bins.json")])
    main(["tokens", "report", "--bins", str(tmp_path / "bins.json"), "--data", s, *root])
    assert "size" in capsys.readouterr().out
    specs = tuple(SourceSpec("omni3d", p, image_root=str(ROOT)) for p in (k, s))
    assert [r.ok for r in check_sources(specs, log=lambda m: None)] == [True, True]
    assert len(load_source(specs[0]).scenes) == 1
    assert DataConfig(omni3d=(k, s), image_root=str(ROOT)).token_sources() == specs
    main(["train", "debug", "--data.omni3d", k, s, "--data.image-root", str(ROOT), "--steps", "1", "--save-every", "1",
          "--out-dir", str(tmp_path / "run")])
    ckpt = tmp_path / "run"
    main(["eval", "grounding", "--checkpoint", str(ckpt), "--data", s, *root, "--out", str(tmp_path / "ev")])
    res = json.loads((tmp_path / "ev" / "grounding.json").read_text())
    assert res["n_scenes"] == 1 and "ap3d" in res["model"]
