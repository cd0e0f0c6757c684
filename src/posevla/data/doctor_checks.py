"""The checks of the data doctor on grounding scenes: intrinsics, rotations, quaternions, units, camera frame,
image orientation, depth scale, label ranges, constant labels and bin coverage (:mod:`posevla.data.doctor`).

Each check adds findings to a :class:`~posevla.data.doctor.Collector`; none raises on bad data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posevla.data.formats.omni3d import Object3D, Scene, View, check_bbox3d, load_depth, load_rgb
from posevla.data.grounding import LabelFilter
from posevla.errors import DataError
from posevla.geometry import (
    box2d_from_box3d,
    box_corners,
    box_extents_xyz,
    check_K,
    check_rotation_matrix,
    quat_wxyz_to_matrix,
)

_MAX_PER_CHECK = 5  # findings listed per (check, severity); the rest are counted
_QUAT_KEYS = ("quaternion", "quat", "quat_wxyz", "rotation_quat", "q_wxyz", "orientation")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem: severity ``error`` or ``warning``, the check, where, what, and the fix."""

    severity: str
    check: str
    finding: str
    fix: str
    file: str | None = None
    record: str | None = None
    field: str | None = None

    @property
    def where(self) -> str:
        parts = [Path(self.file).name if self.file else "", str(self.record) if self.record is not None else "",
                 self.field or ""]
        return " / ".join(p for p in parts if p) or "-"



class Collector:
    """Collects findings, listing at most a few per (check, severity) and counting the rest."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._count: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, severity: str, check: str, finding: str, fix: str, *, file: Any = None, record: Any = None,
            field: str | None = None) -> None:
        rec = None if record is None else str(record)
        if rec is not None and any(f.check == check and f.record == rec and f.field == field for f in self.findings):
            return  # the same problem of the same record, found by the raw and the parsed checks: list it once
        key = (check, severity)
        self._count[key] += 1
        if self._count[key] <= _MAX_PER_CHECK:
            self.findings.append(Finding(severity, check, finding, fix, None if file is None else str(file),
                                         None if record is None else str(record), field))

    def from_error(self, check: str, e: DataError, severity: str = "error") -> None:
        msg = str(e).split("\n  fix:")[0]
        where = []
        if e.file is not None:
            where.append(f"file {e.file}")
        if e.record is not None:
            where.append(f"record {e.record}")
        if e.field is not None:
            where.append(f"field '{e.field}'")
        prefix = ", ".join(where) + ": "
        if where and msg.startswith(prefix):
            msg = msg[len(prefix):]
        self.add(severity, check, msg, e.fix or "see the message", file=e.file, record=e.record, field=e.field)

    def has(self, record: Any, field: str | None) -> bool:
        return any(f.record == (None if record is None else str(record)) and f.field == field for f in self.findings)

    def finish(self) -> list[Finding]:
        out = list(self.findings)
        for (check, sev), n in self._count.items():
            if n > _MAX_PER_CHECK:
                out.append(Finding(sev, check, f"... and {n - _MAX_PER_CHECK} more like the above", "see above"))
        return out



def _check_quaternion(col: Collector, a: dict, R: np.ndarray | None, file: str, rec: str) -> None:
    for key in _QUAT_KEYS:
        if key not in a:
            continue
        try:
            q = np.asarray(a[key], np.float64).reshape(-1)
        except (TypeError, ValueError):
            q = np.full(1, np.nan)
        if q.shape != (4,) or not np.all(np.isfinite(q)):
            col.add("error", "quaternion", f"'{key}' must be 4 finite numbers", "store quaternions as [w, x, y, z]",
                    file=file, record=rec, field=key)
            continue
        n = float(np.linalg.norm(q))
        if abs(n - 1.0) > 1e-3:
            col.add("error", "quaternion", f"quaternion norm is {n:.4g}, not 1", "normalise the quaternion",
                    file=file, record=rec, field=key)
            continue
        if R is None:
            continue
        ok = np.abs(quat_wxyz_to_matrix(q) - R).max() < 1e-3
        if not ok:
            xyzw = np.abs(quat_wxyz_to_matrix(np.roll(q, 1)) - R).max() < 1e-3
            if xyzw:
                col.add("error", "quaternion", f"'{key}' is stored scalar-last (xyzw); the contract is wxyz",
                        "convert at the scipy boundary with posevla.geometry.scipy_to_quat_wxyz", file=file,
                        record=rec, field=key)
            else:
                col.add("error", "quaternion", f"'{key}' disagrees with the rotation matrix",
                        "store one rotation: the quaternion (wxyz) of R_cam", file=file, record=rec, field=key)


def _check_corners(col: Collector, a: dict, R: np.ndarray | None, file: str, rec: str) -> None:
    """``bbox3D_cam`` against the corners of the box (Omni3D's axes and order): the reader's check, collected."""
    if R is None or a.get("bbox3D_cam") is None:
        return
    try:
        center = np.asarray(a["center_cam"], np.float64)
        dims = np.asarray(a["dimensions"], np.float64)
        if center.shape != (3,) or dims.shape != (3,):
            return
        check_bbox3d(file, a, center, dims, R, rec)
    except DataError as e:
        col.from_error("box corners", e)
    except (KeyError, TypeError, ValueError):
        return  # the reader names a missing or malformed field


def check_raw_omni3d(col: Collector, json_path: Path) -> None:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # the strict reader reports it
    if not isinstance(data, dict):
        return
    file = str(json_path)
    for i, im in enumerate(data.get("images") or []):
        if not isinstance(im, dict):
            continue
        rec = f"image id {im.get('id', i)}"
        if "K" not in im:
            col.add("error", "intrinsics", "K is missing", "store the 3x3 intrinsics of every image", file=file,
                    record=rec, field="K")
            continue
        try:
            K = np.asarray(im["K"], np.float64)
            check_K(K, int(im.get("width", 0)), int(im.get("height", 0)), file=file, record=rec, field="K")
        except DataError as e:
            col.from_error("intrinsics", e)
            continue
        except (TypeError, ValueError):
            continue
        _k_plausibility(col, K, int(im["width"]), int(im["height"]), file, rec)
    for j, a in enumerate(data.get("annotations") or []):
        if not isinstance(a, dict):
            continue
        if a.get("behind_camera") is True or a.get("valid3D") is False:
            continue  # skipped by the reader: Omni3D stores placeholder poses there
        rec = f"annotation id {a['id']}" if "id" in a else f"annotations[{j}]"
        R = None
        if "R_cam" in a:
            try:
                R = np.asarray(a["R_cam"], np.float64)
                check_rotation_matrix(R, what="R_cam", file=file, record=rec)
            except DataError as e:
                col.from_error("rotation", e)
                R = None
            except (TypeError, ValueError):
                R = None
        _check_quaternion(col, a, R, file, rec)
        _check_corners(col, a, R, file, rec)
        for key in ("visibility", "truncation"):
            v = a.get(key)
            known = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v != -1
            if known and not (0 <= v <= 1):
                col.add("error", "label ranges", f"{key} = {v:g} is outside [0, 1]",
                        f"store {key} as a fraction in [0, 1], or -1 where it is unknown", file=file, record=rec,
                        field=key)


def _k_plausibility(col: Collector, K: np.ndarray, w: int, h: int, file: str | None, rec: str) -> None:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if abs(fx / fy - 1.0) > 0.05:
        col.add("warning", "intrinsics", f"fx = {fx:.1f} and fy = {fy:.1f} differ by {abs(fx / fy - 1) * 100:.0f}%",
                "check that K belongs to this image (non-square pixels are rare; an anisotropic resize "
                "without updating K gives this)", file=file, record=rec, field="K")
    if abs(cx - (w - 1) / 2) > 0.25 * w or abs(cy - (h - 1) / 2) > 0.25 * h:
        col.add("warning", "intrinsics", f"principal point ({cx:.1f}, {cy:.1f}) is far from the centre of the "
                f"{w}x{h} image", "check that K was updated after cropping", file=file, record=rec, field="K")


# ----------------------------------------------------------------------------------------------
# semantic checks on canonical scenes
# ----------------------------------------------------------------------------------------------


def _all_views(scenes: Sequence[Scene]) -> list[View]:
    return [v for s in scenes for v in s.views]


def _subsample(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def _rec(v: View, o: Object3D | None = None) -> str:
    if o is not None and o.annotation_id is not None:
        return f"annotation id {o.annotation_id}"  # the reader's and the raw checks' naming
    return f"image id {v.image_id}"


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
    return inter / ua if ua > 0 else 0.0


def _contained(inner: np.ndarray, outer: np.ndarray, margin: float = 1.0) -> float:
    """Share of ``inner``'s area inside ``outer`` grown by ``margin`` pixels."""
    o = outer + np.array([-margin, -margin, margin, margin])
    ix = max(0.0, min(inner[2], o[2]) - max(inner[0], o[0]))
    iy = max(0.0, min(inner[3], o[3]) - max(inner[1], o[1]))
    area = max(inner[2] - inner[0], 0) * max(inner[3] - inner[1], 0)
    return ix * iy / area if area > 0 else 1.0


_FLIPS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "identity": lambda b, w, h: b,
    "upside down (vertical flip)": lambda b, w, h: np.array([b[0], h - 1 - b[3], b[2], h - 1 - b[1]]),
    "mirrored (horizontal flip)": lambda b, w, h: np.array([w - 1 - b[2], b[1], w - 1 - b[0], b[3]]),
    "rotated by 180 degrees": lambda b, w, h: np.array([w - 1 - b[2], h - 1 - b[3], w - 1 - b[0], h - 1 - b[1]]),
}


def _check_2d(col: Collector, items: list[tuple[View, Object3D, np.ndarray, str]], file: str | None) -> None:
    """Stored 2D boxes vs the projected 3D boxes: image orientation and camera-frame convention.

    items: (view, object, stored box x1 y1 x2 y2, kind) with kind ``proj`` (the stored box claims to
    be the projected 3D box clipped to the image: IoU), ``unclipped`` (the projection not clipped, Omni3D's
    ``bbox2D_proj``: IoU with that) or ``tight`` (an object silhouette box: contained in the projection).
    """
    scores: dict[str, list[float]] = defaultdict(list)
    centre_in: list[bool] = []
    for v, o, stored, kind in items:
        corners = box_corners(np.asarray(o.center_cam), np.asarray(o.dimensions), np.asarray(o.R_cam))
        proj, trunc = box2d_from_box3d(v.K, corners, v.width, v.height, clip=kind != "unclipped")
        if not np.all(np.isfinite(proj)) or float(trunc) > 0.3 or o.center_cam[2] <= 0:
            continue
        for name, fn in _FLIPS.items():
            s = fn(np.asarray(stored, np.float64), v.width, v.height)
            scores[name].append(_contained(s, proj) if kind == "tight" else _box_iou(proj, s))
        c = v.K @ np.asarray(o.center_cam)
        u, w_ = c[0] / c[2], c[1] / c[2]
        b = np.asarray(stored, np.float64)
        centre_in.append(bool(b[0] - 1 <= u <= b[2] + 1 and b[1] - 1 <= w_ <= b[3] + 1))
    if not scores:
        return
    thresh = 0.7  # share of objects that must agree
    kinds = {kind for *_, kind in items}
    agree = 0.8 if "tight" in kinds else 0.5  # IoU for projected boxes, containment for silhouettes
    good = {k: float(np.mean(np.asarray(s) >= agree)) for k, s in scores.items()}
    best = max(good, key=good.get)
    n = len(scores["identity"])
    if good["identity"] < thresh:
        if best != "identity" and good[best] >= thresh:
            # a vertical flip of the pixels and a y-up label convention look the same from the boxes alone
            also = (" -- or the 3D labels use a flipped-y (y-up) camera convention"
                    if best.startswith("upside") else "")
            col.add("error", "image orientation",
                    f"only {good['identity']:.0%} of {n} stored 2D boxes agree with the projected 3D boxes, but "
                    f"{good[best]:.0%} do if the image is {best}{also}",
                    f"the images (or their 2D boxes) are {best} relative to K and the 3D labels: re-export the "
                    "images upright (row 0 at the top) or fix the 2D boxes; if the images are upright, convert "
                    "the labels to the OpenCV frame (x right, y down, z forward)", file=file, field="bbox2D")
        elif np.mean(centre_in) < 0.5:
            col.add("error", "camera frame",
                    f"projected 3D centres fall outside their stored 2D boxes for {1 - np.mean(centre_in):.0%} of "
                    f"{n} objects", "the 3D labels are not in the OpenCV camera frame (x right, y down, z forward); "
                    "a y-up camera needs y and z flipped: T_cam_opencv = T_cam_gl @ diag(1, -1, -1, 1)",
                    file=file, field="center_cam")
        else:
            col.add("error", "image orientation",
                    f"only {good['identity']:.0%} of {n} stored 2D boxes agree with the projected 3D boxes",
                    "check that K, the image size and the 3D boxes belong to these images", file=file, field="bbox2D")
    elif np.mean(centre_in) < 0.8:
        col.add("warning", "camera frame",
                f"projected 3D centres fall outside their stored 2D boxes for {1 - np.mean(centre_in):.0%} of objects",
                "check the camera-frame convention of the 3D labels (OpenCV: x right, y down, z forward)",
                file=file, field="center_cam")


#: The farthest object centre (m) and the largest box side (m) plausible per kind of scene; beyond them a
#: label has the wrong units or a broken pose (an object 1,000 km away is not a tabletop object).
PLAUSIBLE = {"tabletop": (10.0, 3.0), "indoor": (30.0, 15.0), "outdoor": (300.0, 40.0)}
#: Omni3D sources by kind of scene (case and ``-_ `` ignored); an unknown source gets the outdoor bounds.
SCENE_KINDS = {"sunrgbd": "indoor", "arkitscenes": "indoor", "hypersim": "indoor", "objectron": "indoor",
               "kitti": "outdoor", "nuscenes": "outdoor", "posevlatabletop": "tabletop"}


#: Largest factor between the depth image at an object's projected centre and the labelled box along that
#: ray (median over objects): a 20 % scale error (SUN RGB-D read as 1e-4 m units) is 1.25x.
DEPTH_RATIO_TOL = 1.1


def _depth_ratio(d: float, o: Object3D) -> float:
    """``d`` over the nearest depth at which the ray through the object's centre is inside its 3D box.

    The visible surface on that ray lies between where the ray enters and leaves the box, so a right
    depth scale gives 1 (within a small slack for label noise); a wrong one gives its factor.
    """
    c = np.asarray(o.center_cam, np.float64)
    ray = c / c[2]  # (3,) point at depth t is t * ray
    R = np.asarray(o.R_cam, np.float64)
    half = 0.5 * np.asarray(box_extents_xyz(np.asarray(o.dimensions, np.float64)))  # local x, y, z
    p0, dr = R.T @ (-c), R.T @ ray  # ray in the box frame: p0 + t * dr
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - p0) / dr, (half - p0) / dr
    t_in = float(np.nanmax(np.minimum(t1, t2)))
    t_out = float(np.nanmin(np.maximum(t1, t2)))
    if not (np.isfinite(t_in) and np.isfinite(t_out)) or t_out < t_in:
        return d / float(c[2])
    slack = 0.01 + 0.02 * float(c[2])
    near, far = max(t_in - slack, 1e-6), t_out + slack
    return d / near if d < near else d / far if d > far else 1.0


def scene_kind(source: str | None) -> str:
    """``tabletop`` / ``indoor`` / ``outdoor`` of an Omni3D source name (``outdoor``, the loosest, if unknown)."""
    key = "".join(ch for ch in str(source or "").lower() if ch not in "-_ ")
    return SCENE_KINDS.get(key, "outdoor")


def _check_plausible(col: Collector, objs: list[tuple[View, Object3D]], kind: str, file: str | None) -> None:
    """Every object within the plausible distance and size of its kind of scene (an error per record)."""
    far, big = PLAUSIBLE[kind]
    for v, o in objs:
        dist = float(np.linalg.norm(np.asarray(o.center_cam, np.float64)))
        side = float(np.max(np.asarray(o.dimensions, np.float64)))
        if dist > far:
            col.add("error", "plausible range", f"object {dist:.4g} m from the camera; {kind} data reaches {far:g} m",
                    "check the units (metres) and the pose of this record, or drop it", file=file, record=_rec(v, o),
                    field="center_cam")
        if side > big:
            col.add("error", "plausible range", f"box side {side:.4g} m; {kind} objects stay below {big:g} m",
                    "check the units (metres) of the dimensions of this record, or drop it", file=file,
                    record=_rec(v, o), field="dimensions")


def check_scenes(col: Collector, scenes: Sequence[Scene], file: str | None, *, bins: str | None,
                  label_filter: LabelFilter, max_views: int, max_depth_images: int,
                  stored_boxes: Callable[[View, Object3D], tuple[np.ndarray, str] | None],
                  stats: dict[str, Any], kind: str = "outdoor") -> None:
    views = _all_views(scenes)
    objs = [(v, o) for v in views for o in v.objects]
    stats.update(images=len(views), objects=len(objs))
    if not views:
        col.add("error", "read", "the dataset has no images", "point the doctor at a non-empty dataset", file=file)
        return
    if not objs:
        col.add("error", "read", "the dataset has no annotated objects", "add annotations (or set valid3D true)",
                file=file)
        return
    centers = np.array([o.center_cam for _, o in objs], np.float64)  # (N, 3)
    dims = np.array([o.dimensions for _, o in objs], np.float64)  # (N, 3)
    # camera frame: in front
    front = float(np.mean(centers[:, 2] > 0))
    if front < 0.9:
        col.add("error", "camera frame", f"only {front:.0%} of object centres are in front of the camera (z > 0)",
                "use the OpenCV camera frame (z forward); an OpenGL camera looks down -z: flip y and z",
                file=file, field="center_cam")
    # units
    med_dim = float(np.median(dims))
    med_dist = float(np.median(np.linalg.norm(centers, axis=1)))
    if med_dim > 20:
        col.add("error", "units", f"median box dimension is {med_dim:.4g}: millimetres, not metres",
                "divide dimensions by 1000 (the contract is metres)", file=file, field="dimensions")
    elif med_dim < 0.003:
        col.add("warning", "units", f"median box dimension is {med_dim:.3g} m (smaller than 3 mm)",
                "check the units of the dimensions (metres)", file=file, field="dimensions")
    far = PLAUSIBLE[kind][0]  # outdoor objects at 40-80 m are not a millimetre error
    if med_dist > far:
        col.add("error", "units", f"median object distance is {med_dist:.4g}: millimetres, not metres "
                f"(farther than the {far:g} m plausible for {kind} scenes)",
                "divide translations by 1000 (the contract is metres)", file=file, field="center_cam")
    elif kind != "outdoor" and float(np.median(centers[:, 2])) > 20:
        col.add("warning", "units", f"median object depth is {np.median(centers[:, 2]):.3g} m in {kind} scenes",
                "check the units of the translations (metres)", file=file, field="center_cam")
    _check_plausible(col, objs, kind, file)
    stats["scene_kind"] = kind
    # constant labels
    if len(objs) >= 5:
        for arr, name, fld in ((dims, "dimension", "dimensions"), (centers[:, 2:], "depth z", "center_cam")):
            sd = arr.std(axis=0)
            if np.any(sd < 1e-6 * max(1.0, float(np.abs(arr).mean()))):
                col.add("warning", "constant labels",
                        f"{name} has (near) zero spread over {len(objs)} objects (std {sd.min():.2g})",
                        "a constant label makes z-score normalisation divide by ~0 and collapses quantile bins: "
                        "check the converter, or mix this source with others before fitting bins",
                        file=file, field=fld)
    # label ranges / filter
    for v, o in objs:
        for key in ("visibility", "truncation"):
            val = float(getattr(o, key))
            if not (0.0 <= val <= 1.0) and val != -1.0:
                col.add("error", "label ranges", f"{key} = {val:g} is outside [0, 1]",
                        f"store {key} as a fraction in [0, 1], or -1 where it is unknown", file=file,
                        record=_rec(v, o), field=key)
    kept = sum(label_filter.keep(o, v.K, v.width, v.height) for v, o in objs)
    stats["objects_kept"] = int(kept)
    if kept == 0:
        col.add("error", "label ranges", f"none of {len(objs)} objects passes the label filter {label_filter}",
                "check visibility / truncation values (fractions) and the camera frame", file=file)
    # intrinsics plausibility (one finding per distinct K)
    seen_K: set[bytes] = set()
    for v in views:
        key = np.round(v.K, 3).tobytes() + bytes([v.width % 251, v.height % 251])
        if key not in seen_K:
            seen_K.add(key)
            _k_plausibility(col, v.K, v.width, v.height, file, _rec(v))
    # stored 2D boxes vs projections
    sample = _subsample(views, max_views)
    items = []
    for v in sample:
        for o in v.objects:
            sb = stored_boxes(v, o)
            if sb is not None:
                items.append((v, o, sb[0], sb[1]))
    _check_2d(col, items, file)
    # pixels: RGB readable, depth scale plausible and consistent with the labels
    ratios: list[float] = []
    medians: list[float] = []
    for v in _subsample(views, max_depth_images):
        try:
            load_rgb(v)
        except DataError as e:
            col.from_error("read", e)
        if v.depth_path is None:
            continue
        try:
            d = load_depth(v)
        except DataError as e:
            col.from_error("depth scale", e)
            continue
        valid = d > 0
        if not valid.any():
            col.add("warning", "depth scale", "depth image has no valid pixel", "check the depth file",
                    file=v.depth_path, record=_rec(v), field="depth_path")
            continue
        medians.append(float(np.median(d[valid])))
        for o in v.objects:
            z = float(o.center_cam[2])
            if z <= 0:
                continue
            uv = v.K @ np.asarray(o.center_cam)
            u, w_ = int(round(uv[0] / uv[2])), int(round(uv[1] / uv[2]))
            if 1 <= u < v.width - 1 and 1 <= w_ < v.height - 1:
                patch = d[w_ - 1 : w_ + 2, u - 1 : u + 2]
                if (patch > 0).any():
                    ratios.append(_depth_ratio(float(np.median(patch[patch > 0])), o))
    if medians:
        med = float(np.median(medians))
        stats["median_depth_m"] = round(med, 3)
        lo, hi = (0.05, 120.0) if kind == "outdoor" else (0.05, 20.0)
        if not (lo <= med <= hi):
            col.add("error", "depth scale", f"median valid depth is {med:.4g} m (expected {lo:g}-{hi:g} m)",
                    "fix the depth scale (metres per PNG unit): e.g. SUN RGB-D 1e-4, ARKitScenes 1e-3, BOP "
                    "depth_scale is millimetres per unit", file=file, field="depth_scale")
    if len(ratios) >= 3:
        r = float(np.median(ratios))
        stats["depth_over_label_z"] = round(r, 3)
        if not (1 / DEPTH_RATIO_TOL <= r <= DEPTH_RATIO_TOL):
            col.add("error", "depth scale",
                    f"depth at projected object centres is {r:.3g}x the depth where the ray meets the labelled box "
                    f"(median of {len(ratios)} objects; tolerance {DEPTH_RATIO_TOL:g}x)",
                    f"the depth encoding disagrees with the 3D labels: pick the source's encoding (--depth-encoding: "
                    "sunrgbd-toolbox for SUN RGB-D's release, mm, 0.1mm, kitti), or multiply the depth scale by "
                    f"{1 / r:.3g} (or fix the label units)", file=file, field="depth_scale")
    # bins
    if bins is not None:
        _check_bins(col, scenes, bins, label_filter)


def _check_bins(col: Collector, scenes: Sequence[Scene], bins: str, label_filter: LabelFilter) -> None:
    from posevla.data.fitting import collect_labels
    from posevla.tokens import BinSpec

    try:
        spec = BinSpec.load(bins)
        labels = collect_labels(scenes, label_filter)
    except DataError as e:
        col.from_error("bin coverage", e)
        return
    for fam, vals, edges in (("trans_xy", labels["trans_xy"], spec.trans_xy_edges),
                             ("trans_z", labels["trans_z"], spec.trans_z_edges),
                             ("size", labels["size"], spec.size_edges)):
        out = float(np.mean((vals < edges[0]) | (vals > edges[-1])))
        if out > 0.01:
            sev = "error" if out > 0.2 else "warning"
            col.add(sev, "bin coverage",
                    f"{out:.1%} of {fam} labels lie outside the bin range [{edges[0]:.3g}, {edges[-1]:.3g}] m "
                    "(they clip to the end bins)", "refit the bins on data that includes this dataset "
                    "(posevla fit-bins), or check the units", file=bins, field=fam)


# ----------------------------------------------------------------------------------------------
# per-format drivers
# ----------------------------------------------------------------------------------------------


