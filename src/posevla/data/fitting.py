"""Collect pose labels from datasets and fit the pose-token bin spec on them (spec §1.3, open question 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posevla.data.omni3d import Scene
from posevla.data.sample import LabelFilter
from posevla.errors import DataError
from posevla.geometry import matrix_to_euler_xyz
from posevla.tokens import BinSpec


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


def fit_bins(
    scenes: Sequence[Scene],
    *,
    n_trans_xy: int = 2048,
    n_trans_z: int = 2048,
    n_size: int = 2048,
    n_rot: int = 360,
    n_loc: int = 1024,
    description: str = "",
    label_filter: LabelFilter | None = None,
) -> BinSpec:
    """Quantile bin edges fitted on the kept labels of `scenes`."""
    labels = collect_labels(scenes, label_filter)
    return BinSpec.fit(
        labels["trans_xy"],
        labels["trans_z"],
        labels["size"],
        n_trans_xy=n_trans_xy,
        n_trans_z=n_trans_z,
        n_size=n_size,
        n_rot=n_rot,
        n_loc=n_loc,
        description=description or f"fitted on {len(labels['trans_z'])} objects from {len(scenes)} scenes",
    )
