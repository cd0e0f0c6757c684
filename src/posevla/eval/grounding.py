"""3D grounding metrics, Omni3D style (spec §3.1, open question 7).

The unit of evaluation is an *image key* (any hashable, e.g. ``(scene_id, view)``). Inputs are two dicts
``key -> list[Box3D]``: the predictions (with scores) and the ground truth.

* **AP** per category over all images: predictions sorted by score (descending, stable), each matched
  greedily to the still-unmatched ground-truth box of the same image with the highest IoU >= threshold
  (exact oriented 3D IoU, :func:`posevla.geometry.iou3d_matrix`), 101-point interpolated precision (COCO).
  A category with ground truth but no predictions scores 0; a category without ground truth is excluded
  (NaN, not averaged).
* **AP3D** = mean over the IoU thresholds 0.05:0.05:0.50 and the categories; **AP15** / **AP25** = mean
  over the categories at IoU 0.15 / 0.25. All APs are in percent.
* **Pose errors** over matched pairs: each ground-truth box is matched to the prediction of the same
  category in the same image with the highest IoU (no threshold; ties and zero overlap broken by the
  nearest centre). ``rot_err_deg`` / ``trans_err_cm`` are medians over the matched pairs;
  ``acc_Xdeg_Ycm`` is the share of *all* ground-truth boxes whose match is within both thresholds
  (ground truth without any prediction counts as a failure), in percent.

The IoU matrix of each (image, category) is computed once and reused for every threshold and for the
pose matching.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posevla.errors import DataError
from posevla.geometry import iou3d_matrix, rotation_angle_between

__all__ = [
    "Box3D",
    "GroundingResult",
    "DEFAULT_THRESHOLDS",
    "SUMMARY_KEYS",
    "average_precision",
    "evaluate_grounding",
    "validate_boxes",
]

#: Omni3D AP3D thresholds: IoU 0.05, 0.10, ..., 0.50.
DEFAULT_THRESHOLDS = np.arange(0.05, 0.501, 0.05)
#: Keys of ``summary.json["grounding"][...]`` (docs: contracts, "The demo's summary"); never renamed.
SUMMARY_KEYS = ("ap3d", "ap15", "ap25", "rot_err_deg", "trans_err_cm", "acc_5deg_5cm")
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_ORTHO_ATOL = 1e-3


@dataclass
class Box3D:
    """One oriented 3D box in the camera frame.

    Args:
        category: class name.
        center: (3,) box centre, metres.
        dims: (3,) Omni3D ``[W, H, L]`` in metres (local x spans L, y spans H, z spans W).
        R: (3, 3) box-to-camera rotation (columns = box axes in the camera frame).
        score: confidence (predictions); ground truth leaves it at 1.0.
    """

    category: str
    center: np.ndarray
    dims: np.ndarray
    R: np.ndarray
    score: float = 1.0

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.dims = np.asarray(self.dims, dtype=np.float64)
        self.R = np.asarray(self.R, dtype=np.float64)
        self.score = float(self.score)


# ----------------------------------------------------------------------------------------------------------
# validation


def _check_box(box: Any, where: str, key: Hashable, index: int) -> None:
    record = f"{where}[{key!r}][{index}]"

    def fail(field_name: str, message: str, fix: str) -> None:
        raise DataError(
            f"{where} image {key!r}, box {index}: {message}", record=record, field=field_name, fix=fix
        )

    if not isinstance(box, Box3D):
        fail("box", f"expected a Box3D, got {type(box).__name__}", "build boxes with eval.grounding.Box3D")
    if not isinstance(box.category, str) or not box.category:
        fail("category", f"must be a non-empty string, got {box.category!r}", "give every box a class name")
    arrays: dict[str, np.ndarray] = {}
    for name, shape in (("center", (3,)), ("dims", (3,)), ("R", (3, 3))):
        try:
            value = np.asarray(getattr(box, name), dtype=np.float64)
        except (TypeError, ValueError):
            fail(name, f"not numeric: {getattr(box, name)!r}", f"pass {name} as floats of shape {shape}")
        if value.shape != shape:
            fail(name, f"shape {value.shape}, expected {shape}", f"pass {name} as an array of shape {shape}")
        arrays[name] = value
        if not np.all(np.isfinite(value)):
            fail(name, f"contains NaN or inf: {value.tolist()}", "drop or repair the box before evaluating")
    if not np.all(arrays["dims"] > 0):
        fail(
            "dims",
            f"dimensions must be > 0, got {arrays['dims'].tolist()}",
            "boxes need positive [W, H, L] in metres",
        )
    R = arrays["R"]
    if not np.allclose(R.T @ R, np.eye(3), atol=_ORTHO_ATOL) or np.linalg.det(R) < 0:
        fail("R", "not a rotation matrix (R^T R != I or det(R) = -1)", "orthonormalise R (SVD) first")
    try:
        score = float(box.score)
    except (TypeError, ValueError):
        score = float("nan")
    if not math.isfinite(score):
        fail("score", f"must be a finite number, got {box.score!r}", "give predictions a finite confidence")


def validate_boxes(boxes_by_key: Mapping[Hashable, Sequence[Box3D]], *, where: str = "boxes") -> None:
    """Raise :class:`DataError` (naming the image key, box index and field) on any bad box."""
    if not isinstance(boxes_by_key, Mapping):
        raise DataError(
            f"{where} must be a dict image key -> list[Box3D], got {type(boxes_by_key).__name__}",
            field=where,
            fix="group boxes by image key",
        )
    for key, boxes in boxes_by_key.items():
        if not isinstance(boxes, (list, tuple)):
            raise DataError(
                f"{where} image {key!r}: expected a list of Box3D, got {type(boxes).__name__}",
                record=f"{where}[{key!r}]",
                field="boxes",
                fix="wrap single boxes in a list",
            )
    # Fast path: one vectorised check over all boxes; the per-box check (precise error) only on failure.
    flat = [(key, i, b) for key, boxes in boxes_by_key.items() for i, b in enumerate(boxes)]
    quick_ok = all(
        isinstance(b, Box3D)
        and isinstance(b.category, str)
        and b.category
        and np.shape(b.center) == (3,)
        and np.shape(b.dims) == (3,)
        and np.shape(b.R) == (3, 3)
        for _, _, b in flat
    )
    if quick_ok and flat:
        try:
            c = np.stack([np.asarray(b.center, dtype=np.float64) for _, _, b in flat])
            d = np.stack([np.asarray(b.dims, dtype=np.float64) for _, _, b in flat])
            R = np.stack([np.asarray(b.R, dtype=np.float64) for _, _, b in flat])
            sc = np.asarray([b.score for _, _, b in flat], dtype=np.float64)
        except (TypeError, ValueError):
            quick_ok = False
    if quick_ok and flat:
        with np.errstate(invalid="ignore"):
            ortho = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2)) <= _ORTHO_ATOL
            quick_ok = bool(
                np.isfinite(c).all()
                and np.isfinite(R).all()
                and np.isfinite(sc).all()
                and (np.isfinite(d) & (d > 0)).all()
                and ortho.all()
                and (np.linalg.det(R) > 0).all()
            )
    if not quick_ok:
        for key, i, box in flat:
            _check_box(box, where, key, i)


# ----------------------------------------------------------------------------------------------------------
# grouping and IoU cache


@dataclass
class _Group:
    """Boxes of one (image, category), with the IoU matrix (n_pred, n_gt) computed once."""

    gt: list[Box3D]
    pred: list[Box3D]
    iou: np.ndarray  # (n_pred, n_gt)


def _stack(boxes: Sequence[Box3D]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.stack([b.center for b in boxes]),
        np.stack([b.dims for b in boxes]),
        np.stack([b.R for b in boxes]),
    )


def _iou(pred: Sequence[Box3D], gt: Sequence[Box3D]) -> np.ndarray:
    """(n_pred, n_gt) exact oriented IoU (geometry rejects non-overlapping pairs cheaply)."""
    if not pred or not gt:
        return np.zeros((len(pred), len(gt)), dtype=np.float64)
    iou = np.asarray(iou3d_matrix(_stack(pred), _stack(gt)), dtype=np.float64)
    return np.clip(iou, 0.0, 1.0)


def _group(
    predictions: Mapping[Hashable, Sequence[Box3D]], ground_truth: Mapping[Hashable, Sequence[Box3D]]
) -> dict[str, list[_Group]]:
    """category -> list of per-image groups, images in a fixed order (GT keys first, then prediction-only)."""
    keys = list(ground_truth.keys()) + [k for k in predictions.keys() if k not in ground_truth]
    out: dict[str, list[_Group]] = {}
    for key in keys:
        by_cat: dict[str, tuple[list[Box3D], list[Box3D]]] = {}
        for b in ground_truth.get(key, ()):
            by_cat.setdefault(b.category, ([], []))[0].append(b)
        for b in predictions.get(key, ()):
            by_cat.setdefault(b.category, ([], []))[1].append(b)
        for cat, (gt, pred) in by_cat.items():
            out.setdefault(cat, []).append(_Group(gt=gt, pred=pred, iou=_iou(pred, gt)))
    return out


# ----------------------------------------------------------------------------------------------------------
# AP


def _interpolated_ap(tp: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP (COCO) from TP flags of score-sorted predictions; in [0, 1]."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = tp_cum / n_gt
    precision = tp_cum / (tp_cum + fp_cum)
    # Precision envelope: the best precision at any recall >= this one.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    q = np.zeros_like(_RECALL_POINTS)
    ok = idx < recall.size
    q[ok] = precision[idx[ok]]
    return float(q.mean())


def _ap_for_groups(groups: Sequence[_Group], thresholds: Sequence[float]) -> np.ndarray:
    """AP (fraction) per threshold for one category; NaN everywhere when the category has no GT."""
    n_gt = sum(len(g.gt) for g in groups)
    if n_gt == 0:
        return np.full(len(thresholds), np.nan)
    # Global stable ordering of all predictions of the category by descending score.
    order_group: list[int] = []
    order_index: list[int] = []
    scores: list[float] = []
    for gi, g in enumerate(groups):
        for pi, p in enumerate(g.pred):
            order_group.append(gi)
            order_index.append(pi)
            scores.append(p.score)
    if not scores:
        return np.zeros(len(thresholds))
    order = np.argsort(-np.asarray(scores), kind="stable")
    seq = [(order_group[o], order_index[o]) for o in order]
    aps = np.empty(len(thresholds))
    for ti, thr in enumerate(thresholds):
        matched = [np.zeros(len(g.gt), dtype=bool) for g in groups]
        tp = np.zeros(len(seq), dtype=bool)
        for si, (gi, pi) in enumerate(seq):
            g = groups[gi]
            if not g.gt:
                continue
            ious = np.where(matched[gi], -1.0, g.iou[pi])
            j = int(np.argmax(ious))
            if ious[j] >= thr:
                matched[gi][j] = True
                tp[si] = True
        aps[ti] = _interpolated_ap(tp, n_gt)
    return aps


def average_precision(
    predictions: Mapping[Hashable, Sequence[Box3D]],
    ground_truth: Mapping[Hashable, Sequence[Box3D]],
    category: str,
    iou_threshold: float,
) -> float:
    """AP (in [0, 1], not %) of one category at one IoU threshold over all images.

    NaN when the category has no ground truth; 0 when it has ground truth but no predictions.
    """
    validate_boxes(predictions, where="predictions")
    validate_boxes(ground_truth, where="ground_truth")
    pred_c = {k: [b for b in v if b.category == category] for k, v in predictions.items()}
    gt_c = {k: [b for b in v if b.category == category] for k, v in ground_truth.items()}
    groups = _group(pred_c, gt_c).get(category, [])
    return float(_ap_for_groups(groups, [float(iou_threshold)])[0])


# ----------------------------------------------------------------------------------------------------------
# evaluation


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v


@dataclass
class GroundingResult:
    """Headline grounding metrics. APs and accuracies in %, rotation in degrees, translation in cm.

    Metrics that are undefined (no ground truth at all, no matched pair) are NaN.
    """

    ap3d: float
    ap15: float
    ap25: float
    rot_err_deg: float
    trans_err_cm: float
    acc_5deg_5cm: float
    acc_10deg_5cm: float
    acc_5deg_2cm: float
    acc_10deg_2cm: float
    n_gt: int
    n_pred: int
    n_matched: int
    thresholds: list[float] = field(default_factory=list)
    #: AP (%) per threshold, mean over categories (same order as ``thresholds``).
    ap_per_threshold: list[float] = field(default_factory=list)
    #: category -> {"ap3d", "ap15", "ap25", "n_gt", "n_pred"}
    per_category: dict[str, dict[str, float | int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the summary keys first (``SUMMARY_KEYS``), then the rest; NaN -> None."""
        d: dict[str, Any] = {k: getattr(self, k) for k in SUMMARY_KEYS}
        d.update(
            acc_10deg_5cm=self.acc_10deg_5cm,
            acc_5deg_2cm=self.acc_5deg_2cm,
            acc_10deg_2cm=self.acc_10deg_2cm,
            n_gt=self.n_gt,
            n_pred=self.n_pred,
            n_matched=self.n_matched,
            thresholds=[round(float(t), 4) for t in self.thresholds],
            ap_per_threshold=list(self.ap_per_threshold),
            per_category={c: dict(v) for c, v in self.per_category.items()},
        )
        return _nan_to_none(d)

    def summary(self) -> dict[str, Any]:
        """Only the ``summary.json`` keys (``SUMMARY_KEYS``), NaN -> None."""
        return {k: _nan_to_none(getattr(self, k)) for k in SUMMARY_KEYS}

    def per_category_rows(self) -> list[dict[str, Any]]:
        """The per-category table as rows (for :func:`posevla.eval.report.markdown_table`)."""
        return [{"category": c, **v} for c, v in self.per_category.items()]


def _nanmean(x: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def _pose_errors(groups_by_cat: Mapping[str, Sequence[_Group]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Rotation (deg) and translation (cm) errors of matched pairs, and the number of GT boxes."""
    rot: list[float] = []
    trans: list[float] = []
    n_gt = 0
    for groups in groups_by_cat.values():
        for g in groups:
            n_gt += len(g.gt)
            if not g.gt or not g.pred:
                continue
            pc = np.stack([p.center for p in g.pred])
            for j, gt in enumerate(g.gt):
                dist = np.linalg.norm(pc - gt.center, axis=1)
                # Highest IoU; ties (incl. no overlap at all) broken by the nearest centre.
                i = int(np.lexsort((dist, -g.iou[:, j]))[0])
                p = g.pred[i]
                ang = float(rotation_angle_between(np.asarray(p.R), np.asarray(gt.R)))
                rot.append(math.degrees(ang))
                trans.append(100.0 * float(dist[i]))
    return np.asarray(rot), np.asarray(trans), n_gt


def evaluate_grounding(
    predictions: Mapping[Hashable, Sequence[Box3D]],
    ground_truth: Mapping[Hashable, Sequence[Box3D]],
    *,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
) -> GroundingResult:
    """Omni3D-style AP3D / AP15 / AP25 plus pose errors; see the module docstring."""
    validate_boxes(predictions, where="predictions")
    validate_boxes(ground_truth, where="ground_truth")
    thr = [round(float(t), 6) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not thr or any(not (0.0 < t <= 1.0) for t in thr):
        raise DataError(
            f"IoU thresholds must lie in (0, 1], got {thr}", field="thresholds", fix="use e.g. 0.05:0.05:0.50"
        )
    all_thr = sorted(set(thr) | {0.15, 0.25})
    groups_by_cat = _group(predictions, ground_truth)

    per_category: dict[str, dict[str, float | int]] = {}
    ap_matrix: list[np.ndarray] = []  # rows: categories with GT; cols: thr
    ap15s: list[float] = []
    ap25s: list[float] = []
    for cat in sorted(groups_by_cat):
        groups = groups_by_cat[cat]
        aps = _ap_for_groups(groups, all_thr) * 100.0
        by_thr = dict(zip(all_thr, aps))
        cat_ap_thr = np.asarray([by_thr[t] for t in thr])
        n_gt_c = sum(len(g.gt) for g in groups)
        per_category[cat] = {
            "ap3d": float(cat_ap_thr.mean()) if n_gt_c else float("nan"),
            "ap15": float(by_thr[0.15]),
            "ap25": float(by_thr[0.25]),
            "n_gt": int(n_gt_c),
            "n_pred": int(sum(len(g.pred) for g in groups)),
        }
        if n_gt_c:
            ap_matrix.append(cat_ap_thr)
            ap15s.append(float(by_thr[0.15]))
            ap25s.append(float(by_thr[0.25]))

    if ap_matrix:
        m = np.stack(ap_matrix)
        ap3d = float(m.mean())
        ap_per_thr = [float(x) for x in m.mean(axis=0)]
    else:
        ap3d = float("nan")
        ap_per_thr = [float("nan")] * len(thr)

    rot, trans, n_gt = _pose_errors(groups_by_cat)
    n_pred = sum(len(v) for v in predictions.values())

    def acc(max_deg: float, max_cm: float) -> float:
        if n_gt == 0:
            return float("nan")
        ok = (rot <= max_deg + 1e-9) & (trans <= max_cm + 1e-9)
        return 100.0 * float(ok.sum()) / n_gt

    return GroundingResult(
        ap3d=ap3d,
        ap15=_nanmean(ap15s),
        ap25=_nanmean(ap25s),
        rot_err_deg=float(np.median(rot)) if rot.size else float("nan"),
        trans_err_cm=float(np.median(trans)) if trans.size else float("nan"),
        acc_5deg_5cm=acc(5.0, 5.0),
        acc_10deg_5cm=acc(10.0, 5.0),
        acc_5deg_2cm=acc(5.0, 2.0),
        acc_10deg_2cm=acc(10.0, 2.0),
        n_gt=int(n_gt),
        n_pred=int(n_pred),
        n_matched=int(rot.size),
        thresholds=thr,
        ap_per_threshold=ap_per_thr,
        per_category=per_category,
    )
