"""Dataset doctor: good data passes; each planted convention / unit problem is flagged by its check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from posevla.cli import main
from posevla.data.doctor import detect_format, run_doctor
from posevla.tokens import BinCounts, BinSpec

FIXTURE = Path(__file__).parent / "fixtures" / "bop_tiny"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from posevla.sim.tabletop import generate_dataset

    root = tmp_path_factory.mktemp("doc")
    generate_dataset(root, 2, seed=5, width=96, height=64, progress=False)
    return root


@pytest.fixture
def omni(generated, tmp_path) -> Path:
    dst = tmp_path / "omni"
    shutil.copytree(generated, dst)
    return dst


@pytest.fixture
def bop(tmp_path) -> Path:
    dst = tmp_path / "bop"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit(path: Path, fn) -> Path:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))
    return path


def _anns(fn):
    def edit(d):
        for a in d["annotations"]:
            fn(a)
    return edit


def test_good_data_passes(omni, tmp_path):
    for path in (omni, omni / "dataset.json", FIXTURE):
        rep = run_doctor(path)
        assert rep.ok and not rep.errors and not rep.warnings, rep.table()
        assert "no problems found" in rep.table()
    assert run_doctor(FIXTURE).stats["objects"] == 10
    assert detect_format(FIXTURE / "test" / "000001") == ("bop", FIXTURE)
    assert detect_format(FIXTURE / "test") == ("bop", FIXTURE)


def _flip_y(a):
    F = np.diag([1.0, -1.0, 1.0])
    a["center_cam"][1] *= -1
    a["R_cam"] = (F @ np.array(a["R_cam"]) @ F).tolist()


def _quat_xyzw(a):
    a["quaternion"] = Rotation.from_matrix(np.array(a["R_cam"])).as_quat().tolist()  # scipy order: xyzw


def _flip_boxes(d):
    for a in d["annotations"]:
        b = a["bbox2D_proj"]
        a["bbox2D_proj"] = [b[0], 63 - b[3], b[2], 63 - b[1]]


OMNI_PLANTED = {
    "dims_in_mm": (_anns(lambda a: a.__setitem__("dimensions", [x * 1000 for x in a["dimensions"]])), "units", "error"),
    "translations_in_mm": (_anns(lambda a: a.__setitem__("center_cam", [x * 1000 for x in a["center_cam"]])), "units",
                           "error"),
    "depth_scale_wrong": (lambda d: d["info"].__setitem__("depth_scale", 1e-3), "depth scale", "error"),
    "depth_scale_absurd": (lambda d: d["info"].__setitem__("depth_scale", 1.0), "depth scale", "error"),
    # from the boxes alone a y-up label convention is indistinguishable from upside-down images
    "flipped_y_convention": (_anns(_flip_y), "image orientation", "error"),
    "behind_camera": (_anns(lambda a: a["center_cam"].__setitem__(2, -a["center_cam"][2])), "camera frame", "error"),
    "upside_down_boxes": (_flip_boxes, "image orientation", "error"),
    "constant_dims": (_anns(lambda a: a.__setitem__("dimensions", [0.1, 0.1, 0.1])), "constant labels", "warning"),
    "quaternion_xyzw": (_anns(_quat_xyzw), "quaternion", "error"),
    "quaternion_not_unit": (_anns(lambda a: a.__setitem__("quaternion", [2.0, 0, 0, 0])), "quaternion", "error"),
    "R_not_orthonormal": (lambda d: d["annotations"][3].__setitem__("R_cam", (1.3 * np.eye(3)).tolist()), "rotation",
                          "error"),
    "R_reflection": (lambda d: d["annotations"][2].__setitem__("R_cam", (-np.eye(3)).tolist()), "rotation", "error"),
    "K_missing": (lambda d: d["images"][1].pop("K"), "intrinsics", "error"),
    "K_pp_outside": (lambda d: d["images"][0]["K"][0].__setitem__(2, 400.0), "intrinsics", "error"),
    "K_fx_fy_differ": (lambda d: [im["K"][0].__setitem__(0, im["K"][0][0] * 1.5) for im in d["images"]], "intrinsics",
                       "warning"),
    "visibility_above_one": (lambda d: d["annotations"][0].__setitem__("visibility", 3.0), "label ranges", "error"),
    "no_annotations": (lambda d: d.__setitem__("annotations", []), "read", "error"),
}


@pytest.mark.parametrize("case", sorted(OMNI_PLANTED))
def test_planted_omni3d_problem_is_flagged(omni, case):
    fn, check, severity = OMNI_PLANTED[case]
    _edit(omni / "dataset.json", fn)
    rep = run_doctor(omni)
    assert check in rep.checks(severity), rep.table()
    if severity == "error":
        assert not rep.ok
    f = next(f for f in rep.findings if f.check == check and f.severity == severity)
    assert f.fix and f.finding and f.where != "-"
    if case == "upside_down_boxes":
        assert "upside down" in f.finding
    if case == "flipped_y_convention":
        assert "flipped-y" in f.finding
    if case == "quaternion_xyzw":
        assert "xyzw" in f.finding and f.field == "quaternion" and f.record.startswith("annotation id")
    if case == "R_not_orthonormal":
        assert f.field == "R_cam" and f.record == "annotation id 3" and f.file.endswith("dataset.json")


def test_planted_pixel_problems(omni):
    # a truncated RGB file is reported with its path
    img = omni / "images" / "000000_head.png"
    img.write_bytes(img.read_bytes()[:200])
    rep = run_doctor(omni)
    f = next(f for f in rep.errors if f.check == "read")
    assert f.file.endswith("000000_head.png") and f.field == "file_path"


def test_planted_bop_problems(bop):
    # depth in the wrong unit (depth_scale 1.0 instead of 0.1): depth 10x the labelled z
    for s in ("000001", "000002"):
        _edit(bop / "test" / s / "scene_camera.json", lambda d: [c.__setitem__("depth_scale", 1.0) for c in d.values()])
    rep = run_doctor(bop)
    assert "depth scale" in rep.checks("error"), rep.table()
    assert "10" in next(f.finding for f in rep.errors if f.check == "depth scale")
    shutil.copytree(FIXTURE / "test", bop / "test", dirs_exist_ok=True)
    # upside-down images: the ray-cast silhouettes no longer sit in the projected boxes
    for p in (bop / "test").rglob("scene_gt_info.json"):
        _edit(p, lambda d: [r.__setitem__("bbox_visib", [r["bbox_visib"][0], 96 - r["bbox_visib"][1] - r["bbox_visib"][3],
                                                           r["bbox_visib"][2], r["bbox_visib"][3]])
                            for v in d.values() for r in v])
    rep = run_doctor(bop)
    assert "image orientation" in rep.checks("error") and "upside down" in rep.errors[0].finding, rep.table()
    shutil.copytree(FIXTURE / "test", bop / "test", dirs_exist_ok=True)
    # translations stored in metres: the reader's error becomes a finding naming file / record / field
    _edit(bop / "test" / "000002" / "scene_gt.json",
          lambda d: d["1"][0].__setitem__("cam_t_m2c", [x / 1000 for x in d["1"][0]["cam_t_m2c"]]))
    rep = run_doctor(bop)
    f = rep.errors[0]
    assert f.check == "read" and f.file.endswith("scene_gt.json") and f.record == "image 1, object 0"
    assert f.field == "cam_t_m2c"


def test_bin_coverage(omni, tmp_path):
    bins = tmp_path / "bins.json"
    BinSpec.fit(np.linspace(-0.01, 0.01, 50), np.linspace(0.4, 0.5, 50), np.linspace(0.01, 0.02, 50), BinCounts(trans_xy=8, trans_z=8, size=8, rot=36, loc=16)).save(bins)
    rep = run_doctor(omni, bins=bins)
    assert "bin coverage" in rep.checks("error"), rep.table()
    assert {f.field for f in rep.findings if f.check == "bin coverage"} >= {"trans_xy", "size"}
    wide = tmp_path / "wide.json"
    BinSpec.fit(np.linspace(-5, 5, 50), np.linspace(0.0, 10, 50), np.linspace(0.0, 5, 50), BinCounts(trans_xy=8, trans_z=8, size=8, rot=36, loc=16)).save(wide)
    assert "bin coverage" not in run_doctor(omni, bins=wide).checks()


def test_unknown_and_lerobot_formats(tmp_path):
    rep = run_doctor(tmp_path / "missing")
    assert rep.format == "unknown" and rep.errors[0].field == "path"
    lr = tmp_path / "lr"
    (lr / "meta").mkdir(parents=True)
    (lr / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0"}))
    rep = run_doctor(lr)  # never raises, whatever the LeRobot reader says
    assert rep.format == "lerobot"


def test_cli_exit_codes(omni, capsys):
    main(["doctor", str(FIXTURE)])
    out = capsys.readouterr().out
    assert "bop" in out and "no problems found" in out
    _edit(omni / "dataset.json", _anns(lambda a: a.__setitem__("dimensions", [x * 1000 for x in a["dimensions"]])))
    with pytest.raises(SystemExit) as e:
        main(["doctor", str(omni)])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "severity" in out and "units" in out and "dimensions" in out and "plausible range" in out
    # the units error of the whole file, each of the 6 box sides over 3 m, and the stored corners (metres) that
    # no longer match the boxes: 5 listed and one line counting the other 25
    assert "box corners" in out and "13 error(s)" in out


def test_implausibly_far_objects_are_errors_per_kind_of_scene(omni):
    """An object 1,000 km away passes the units medians but not the plausible range of its kind of scene."""
    d = json.loads((omni / "dataset.json").read_text())
    d["annotations"][0]["center_cam"] = [0.0, 0.0, 1.0e6]
    (omni / "dataset.json").write_text(json.dumps(d))
    rep = run_doctor(omni)
    far = [f for f in rep.errors if f.check == "plausible range"]
    assert len(far) == 1 and "1e+06 m from the camera" in far[0].finding and far[0].field == "center_cam"
    assert rep.stats["scene_kind"] == "tabletop" and far[0].record
    from posevla.data.doctor_checks import scene_kind

    assert (scene_kind("KITTI"), scene_kind("SUNRGBD"), scene_kind(None)) == ("outdoor", "indoor", "outdoor")
