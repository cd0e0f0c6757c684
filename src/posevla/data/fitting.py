"""Collect pose labels from datasets and fit the pose-token bin spec on them (spec §1.3, open question 1).

Stage-1 sources give box translations, sizes and rotations (:func:`collect_labels`); stage-2 sources
give waypoint translations (:func:`posevla.data.trajectory.collect_waypoint_translations`). The bins
are quantiles of all of them pooled (:func:`merge_labels`, :func:`fit_bins`), so one bin spec serves both
pre-training stages; :func:`posevla.data.sources.fit_source_bins` does this for the sources of a training
config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from posevla.data.formats.omni3d import Scene
from posevla.data.grounding import LabelFilter
from posevla.errors import DataError
from posevla.geometry import matrix_to_euler_xyz
from posevla.tokens import BinCounts, BinSpec

LABEL_KEYS = ("trans_xy", "trans_z", "size", "rot")


def collect_labels(scenes: Sequence[Scene], label_filter: LabelFilter | None = None) -> dict[str, np.ndarray]:
    """All kept objects' translation x/y (pooled), z, sizes (pooled) and Euler angles."""
    lf = label_filter or LabelFilter()
    centers, dims, rots = [], [], []
    for scene in scenes:
        for v in scene.views:
            for o in v.objects:
                if lf.keep(o, v.K, v.width, v.height):
                    centers.append(o.center_cam)
                    dims.append(o.dimensions)
                    rots.append(o.R_cam)
    if not centers:
        raise DataError(
            f"no labelled objects in {len(scenes)} scenes to fit pose-token bins on",
            fix="check that the dataset has annotations that pass the visibility/truncation filter",
        )
    c = np.asarray(centers, np.float64)
    return {
        "trans_xy": c[:, :2].reshape(-1),
        "trans_z": c[:, 2],
        "size": np.asarray(dims, np.float64).reshape(-1),
        "rot": np.asarray(matrix_to_euler_xyz(np.asarray(rots, np.float64))).reshape(-1),
    }


def merge_labels(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate label dicts per family; a part may lack families (waypoints have no sizes)."""
    return {
        k: np.concatenate([np.asarray(p[k], np.float64).reshape(-1) for p in parts if k in p] or [np.zeros(0)])
        for k in LABEL_KEYS
    }


def waypoint_labels(translations: np.ndarray) -> dict[str, np.ndarray]:
    """Label dict of stage-2 waypoint translations (N, 3): x and y pooled into ``trans_xy``, z into ``trans_z``."""
    t = np.asarray(translations, np.float64).reshape(-1, 3)  # (N, 3) metres
    return {"trans_xy": t[:, :2].reshape(-1), "trans_z": t[:, 2]}


def fit_bins(labels: Mapping[str, np.ndarray], counts: BinCounts | None = None, *, description: str = "") -> BinSpec:
    """Quantile bin edges of pooled labels (``trans_xy``, ``trans_z``, ``size``; see :func:`merge_labels`).

    ``counts`` default: the paper's (:class:`posevla.tokens.BinCounts`).
    """
    for k in ("trans_xy", "trans_z"):
        if len(labels.get(k, ())) == 0:
            raise DataError(f"no {k} labels to fit pose-token bins on", field=k,
                            fix="add a data source with 3D boxes or visible robot waypoints")
    if len(labels.get("size", ())) == 0:
        raise DataError(
            "no object sizes to fit the size bins on: only trajectory sources were given",
            field="size",
            fix="add a stage-1 (generated / omni3d / bop) source to the fit, or pass --bins-file with a bins.json "
            "fitted on stage-1 + stage-2 data (`posevla fit-bins --data STAGE1 STAGE2`)",
        )
    return BinSpec.fit(labels["trans_xy"], labels["trans_z"], labels["size"], counts, description=description)
