"""MuJoCo tabletop generator: determinism, label geometry, image orientation, depth validity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from posevla.sim import objects
from posevla.data.formats.omni3d import load_depth, load_omni3d, load_rgb
from posevla.sim.tabletop import CAMERAS, DEPTH_SCALE, WORKSPACE_HALF, CameraPose, SceneRenderer, look_at, generate_dataset, sample_scene
from posevla.geometry.boxes import box_corners

pytestmark = pytest.mark.sim  # runs MuJoCo (rendering, MetaWorld)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds0")
    stats = generate_dataset(root, 3, seed=0, progress=False)
    assert stats["scenes"] == 3 and stats["images"] == 9
    assert stats["annotations"] > 0 and stats["scenes_per_s"] > 0
    return root


def _all_bytes(root: Path) -> dict[str, bytes]:
    files = [root / "dataset.json"] + sorted((root / "images").glob("*.png")) + sorted((root / "depth").glob("*.png"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_catalogue_has_ten_real_categories_in_metres(tmp_path):
    names = objects.category_names()
    assert len(names) == len(set(names))
    assert all(n == n.lower() and "_" not in n for n in names)
    meshes = objects.load_catalogue(tmp_path / "cache")
    assert len(meshes) >= 10
    for name, m in meshes.items():
        assert m.stl_path.is_file() and m.stl_path.parent == (tmp_path / "cache").resolve()
        assert np.all(m.extents > 0.01) and np.all(m.extents < 0.5), (name, m.extents)  # metres
        assert np.allclose(m.vertices.min(0) + m.vertices.max(0), 0, atol=1e-6)  # AABB centred
        assert np.allclose(m.vertices.max(0) - m.vertices.min(0), m.extents)
        assert m.points.shape == m.normals.shape == (objects.N_SURFACE_POINTS, 3)
        assert np.all(np.abs(m.points) <= m.extents / 2 + 1e-6)
    # a second load from the on-disk cache gives the same geometry
    objects._load_mesh_cached.cache_clear()
    again = objects.load_mesh("mug", tmp_path / "cache")
    assert np.array_equal(again.vertices, meshes["mug"].vertices)
    prims = [s for s in objects.CATALOGUE if s.kind != "mesh"]
    assert {s.name for s in prims} >= {"block", "cylinder", "ball"}


def test_scene_sampling_no_overlap_and_resting():
    for i in range(25):
        sc = sample_scene(7, i)
        assert 3 <= len(sc.objects) <= 6
        rects = []
        for o in sc.objects:
            half = np.abs(o.R_world) @ (o.dims / 2)
            assert o.center_world[2] == pytest.approx(half[2])  # touches the table top z = 0
            assert np.allclose(o.R_world.T @ o.R_world, np.eye(3), atol=1e-9)
            pts = o.points @ o.R_world.T + o.center_world
            assert pts[:, 2].min() >= -1e-6
            rects.append(np.r_[o.center_world[:2] - half[:2], o.center_world[:2] + half[:2]])
            assert np.all(np.abs(o.center_world[:2]) + half[:2] <= np.minimum(sc.table_half, WORKSPACE_HALF) + 1e-9)
        for a in range(len(rects)):
            for b in range(a + 1, len(rects)):
                ra, rb = rects[a], rects[b]
                overlap = ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]
                assert not overlap
        head, w1, w2 = sc.cameras
        d = np.linalg.norm(head.T_world_cam[:3, 3] - 0)  # table centre at origin (target jitter 8 cm)
        assert 0.6 - 0.12 < d < 0.9 + 0.12  # head distance range (0.6, 0.9) m, target jitter
        for w in (w1, w2):
            dmin = min(np.linalg.norm(w.T_world_cam[:3, 3] - o.center_world) for o in sc.objects)
            assert dmin < 0.7
    # colours vary per instance
    cols = [tuple(o.rgba) for o in sample_scene(0, 0).objects]
    assert len(set(cols)) == len(cols)


def test_layout_and_reload(ds):
    data = json.loads((ds / "dataset.json").read_text())
    assert data["info"]["depth_scale"] == DEPTH_SCALE
    assert len(data["categories"]) >= 13
    scenes = load_omni3d(ds / "dataset.json")
    assert len(scenes) == 3
    for sc in scenes:
        assert [v.camera for v in sc.views] == list(CAMERAS)
        for v in sc.views:
            rgb = load_rgb(v)
            assert rgb.dtype == np.uint8 and rgb.shape == (192, 256, 3)
            depth = load_depth(v)
            assert depth.dtype == np.float32 and depth.shape == (192, 256)
            assert depth.max() < 65535 * DEPTH_SCALE - 1e-3  # never the far plane
    for a in data["annotations"]:
        assert set(a) >= {"id", "image_id", "category_id", "category_name", "center_cam", "dimensions", "R_cam",
                          "bbox3D_cam", "bbox2D_proj", "visibility", "truncation", "valid3D", "depth_min"}


def test_same_seed_identical_any_workers_and_other_seed_differs(ds, tmp_path):
    ref = _all_bytes(ds)
    generate_dataset(tmp_path / "again", 3, seed=0, workers=2, progress=False)
    again = _all_bytes(tmp_path / "again")
    assert again.keys() == ref.keys()
    for k in ref:
        assert again[k] == ref[k], k
    generate_dataset(tmp_path / "other", 2, seed=1, progress=False)
    other = _all_bytes(tmp_path / "other")
    assert other["dataset.json"] != ref["dataset.json"]
    assert other["images/000000_head.png"] != ref["images/000000_head.png"]


def test_intrinsics_match_fovy(ds):
    data = json.loads((ds / "dataset.json").read_text())
    for im in data["images"]:
        K = np.array(im["K"])
        W, H = im["width"], im["height"]
        f = (H / 2) / math.tan(math.radians(im["fovy_deg"]) / 2)
        assert np.allclose(K, [[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
        T = np.array(im["T_world_cam"])
        assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-6)
        assert np.linalg.det(T[:3, :3]) > 0
        # every camera looks down at the table: optical axis (OpenCV +z) has negative world z
        assert T[2, 2] < -0.3
        # OpenCV y (down in the image) points downward in the world for an upright camera
        assert T[2, 1] < 0


def test_labels_consistent_with_pixels(ds):
    scenes = load_omni3d(ds / "dataset.json")
    n_checked = n_ok = 0
    for sc in scenes:
        for v in sc.views:
            depth = load_depth(v)
            for o in v.objects:
                R = o.R_cam
                assert np.allclose(R.T @ R, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0.999
                assert o.center_cam[2] > 0 and 0 <= o.truncation <= 1 and 0 < o.visibility <= 1
                x1, y1, x2, y2 = o.bbox2d
                assert -0.5 <= x1 <= x2 <= v.width - 0.5 and -0.5 <= y1 <= y2 <= v.height - 0.5
                u, w = (v.K @ o.center_cam)[:2] / o.center_cam[2]
                if not (-0.5 <= u <= v.width - 0.5 and -0.5 <= w <= v.height - 0.5):
                    continue
                assert x1 - 1e-6 <= u <= x2 + 1e-6 and y1 - 1e-6 <= w <= y2 + 1e-6
                if o.visibility < 0.8:
                    continue
                corners = box_corners(o.center_cam, o.dimensions, o.R_cam)
                zlo, zhi = corners[:, 2].min() - 0.02, corners[:, 2].max() + 0.02
                ui, vi = int(round(u)), int(round(w))
                win = depth[max(vi - 2, 0): vi + 3, max(ui - 2, 0): ui + 3]
                n_checked += 1
                n_ok += bool(np.any((win >= zlo) & (win <= zhi)))
    assert n_checked >= 5
    assert n_ok >= 0.8 * n_checked, (n_ok, n_checked)


def test_bbox3d_matches_pose(ds):
    data = json.loads((ds / "dataset.json").read_text())
    for a in data["annotations"]:
        c = box_corners(np.array(a["center_cam"]), np.array(a["dimensions"]), np.array(a["R_cam"]))
        assert np.allclose(c, np.array(a["bbox3D_cam"]), atol=1e-9)
        assert a["depth_min"] <= a["center_cam"][2]


def test_image_orientation_and_empty_depth(ds, tmp_path):
    scenes = load_omni3d(ds / "dataset.json")
    for sc in scenes:
        head = sc.views[0]
        d = load_depth(head)
        valid = d > 0
        # a downward-looking camera over a horizontal table/floor: the bottom rows are hit and nearer
        assert valid[-10:].mean() > 0.9
        top = d[: d.shape[0] // 3][valid[: d.shape[0] // 3]]
        bottom = d[-d.shape[0] // 3:][valid[-d.shape[0] // 3:]]
        assert top.size == 0 or np.median(top) > np.median(bottom)

    with SceneRenderer(64, 48, cache_dir=None) as r:
        sc = sample_scene(0, 0)
        r.set_scene(sc)
        # looking straight up from above the table: nothing is hit -> depth 0 everywhere, black sky
        up = CameraPose("up", look_at(np.array([0, 0, 1.0]), np.array([0.001, 0, 2.0]), 0.0), 60.0)
        rgb, depth, _ = r.render(up)
        assert np.all(depth == 0) and rgb.max() == 0
        # a camera above a known object: put it at the top of the image and check it lands there
        obj = sc.objects[0]
        target = obj.center_world
        pos = target + np.array([0.0, -0.25, 0.45])
        T = look_at(pos, target, 0.0)
        # tilt the camera down by 12 degrees so the object moves towards the image top
        c, s = math.cos(math.radians(-12)), math.sin(math.radians(-12))
        T[:3, :3] = T[:3, :3] @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        rgb, depth, Tw = r.render(CameraPose("t", T, 50.0))
        p = np.linalg.inv(Tw) @ np.r_[target, 1.0]
        assert p[1] < 0  # above the optical axis in OpenCV (y down)
        K = np.array([[(48 / 2) / math.tan(math.radians(25)), 0, 31.5], [0, (48 / 2) / math.tan(math.radians(25)), 23.5],
                      [0, 0, 1]])
        u, v = (K @ p[:3])[:2] / p[2]
        assert v < 23.5
        # the rendered object is at (u, v): depth there is near the object's depth, and the object's
        # colour is found there, not mirrored at the bottom
        vi, ui = int(round(v)), int(round(u))
        assert abs(depth[vi, ui] - p[2]) < max(obj.dims) * 0.75
        col = rgb[vi, ui].astype(float)
        ref = obj.rgba[:3]
        assert col @ ref / (np.linalg.norm(col) * np.linalg.norm(ref) + 1e-9) > 0.9
        flipped = depth[47 - vi, ui]
        assert abs(flipped - p[2]) > 0.01 or flipped == 0 or abs(47 - vi - vi) <= 2


def test_category_subset_and_unknown_category():
    from posevla.errors import DataError

    subset = ("mug", "ball")
    for i in range(5):
        assert {o.category for o in sample_scene(3, i, categories=subset).objects} <= set(subset)
    with pytest.raises(DataError, match=r"(?s)unknown or empty category list.*fix: choose from"):
        sample_scene(3, 0, categories=("mug", "teapot"))
