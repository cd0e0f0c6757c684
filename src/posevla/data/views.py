"""Pseudo multi-view from one image by random crops (spec §2.1).

One stored image gives three virtual cameras: a *head* view whose crop covers an area fraction
U(0.90, 1.0) of the image and two *wrist* views with U(0.25, 0.55) (BOP: U(0.15, 0.65)), all with
aspect ratio (width / height) 1.33 at a random position. Each view is a canonical
:class:`~posevla.data.formats.omni3d.View` with ``crop`` set, so :func:`load_rgb` / :func:`load_depth` and
:func:`posevla.data.grounding.build_grounding_example` work on it unchanged:

* ``K`` is updated exactly with :func:`posevla.geometry.K_crop` (``cx' = cx - x0``);
* per object, the 2D box and truncation are recomputed from the projected 3D box against the crop
  (:func:`posevla.geometry.box2d_from_box3d`); objects whose projected box misses the crop are
  dropped, and the label filter (projected centre inside, truncation, visibility) decides the rest;
* the visibility is scaled by the share of the object's in-image 2D box that stays inside the crop
  (occlusion is assumed uniform over the box, since the source labels carry no per-pixel masks).

Crop sizes are whole pixels: ``h = round(sqrt(f W H / a))``, ``w = round(a h)``, each clamped to the
image, so an image narrower than the aspect ratio gets a full-width crop with less area. Everything
is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from posevla.data.formats.omni3d import Crop, Object3D, Scene, View
from posevla.data.grounding import LabelFilter, stable_seed
from posevla.errors import DataError
from posevla.geometry import K_crop, box2d_from_box3d, box_corners

__all__ = ["PseudoViewConfig", "DEFAULT_CROPS", "BOP_CROPS", "crop_view", "sample_crop", "pseudo_views",
           "pseudo_multiview_scenes"]


@dataclasses.dataclass(frozen=True)
class PseudoViewConfig:
    """Crop-area ranges (fractions of the image area) and aspect ratio of the virtual views."""

    head_area: tuple[float, float] = (0.90, 1.0)
    wrist_area: tuple[float, float] = (0.25, 0.55)
    num_wrist: int = 2
    aspect: float = 1.33

    def __post_init__(self) -> None:
        for name in ("head_area", "wrist_area"):
            lo, hi = getattr(self, name)
            if not (0.0 < lo <= hi <= 1.0):
                raise DataError(f"{name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}", field=name,
                                fix="give crop areas as fractions of the image area")
        if not (self.aspect > 0 and math.isfinite(self.aspect)):
            raise DataError(f"aspect must be positive, got {self.aspect}", field="aspect", fix="use e.g. 1.33")
        if self.num_wrist < 0:
            raise DataError(f"num_wrist must be >= 0, got {self.num_wrist}", field="num_wrist", fix="use 2")


#: Omni3D-style sources (spec §2.1).
DEFAULT_CROPS = PseudoViewConfig()
#: BOP datasets: wider wrist-crop range (spec §2.1).
BOP_CROPS = PseudoViewConfig(wrist_area=(0.15, 0.65))


def sample_crop(width: int, height: int, area: float, aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop ``(x0, y0, w, h)`` in pixels of area ``area * W * H`` and aspect ``w / h = aspect``
    (clamped to the image), at a uniformly random integer position."""
    h = int(round(math.sqrt(area * width * height / aspect)))
    w = int(round(aspect * h))
    w, h = max(1, min(w, width)), max(1, min(h, height))
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return x0, y0, w, h


def _recompute(obj: Object3D, K_src: np.ndarray, K_new: np.ndarray, src_size: tuple[int, int],
               size: tuple[int, int]) -> Object3D | None:
    corners = box_corners(np.asarray(obj.center_cam, np.float64), np.asarray(obj.dimensions, np.float64),
                          np.asarray(obj.R_cam, np.float64))
    box, trunc = box2d_from_box3d(K_new, corners, size[0], size[1])
    box = np.asarray(box, np.float64)
    if not np.all(np.isfinite(box)) or float(trunc) >= 1.0:
        return None
    src_box, _ = box2d_from_box3d(K_src, corners, src_size[0], src_size[1])
    src_area = float(np.prod(np.clip(np.asarray(src_box)[2:] - np.asarray(src_box)[:2], 0.0, None)))
    new_area = float(np.prod(np.clip(box[2:] - box[:2], 0.0, None)))
    keep = min(1.0, new_area / src_area) if src_area > 0 else 1.0
    vis = float(obj.visibility) * keep if obj.visibility >= 0 else -1.0  # -1: unavailable, stays so
    proj, _ = box2d_from_box3d(K_new, corners, size[0], size[1], clip=False)
    return dataclasses.replace(obj, bbox2d=box, truncation=float(trunc), visibility=vis,
                               bbox2d_proj=np.asarray(proj, np.float64))


def crop_view(view: View, x0: int, y0: int, width: int, height: int, *, camera: str | None = None,
              label_filter: LabelFilter | None = None) -> View:
    """The window ``[x0, x0+width) x [y0, y0+height)`` of ``view`` as a new view (labels recomputed).

    Crops compose: cropping a cropped view gives a window of the same stored image. With
    ``label_filter`` the objects it rejects in the new view are dropped as well.
    """
    x0, y0, width, height = int(x0), int(y0), int(width), int(height)
    if width < 1 or height < 1 or x0 < 0 or y0 < 0 or x0 + width > view.width or y0 + height > view.height:
        raise DataError(
            f"crop (x0={x0}, y0={y0}, w={width}, h={height}) does not fit the {view.width}x{view.height} view",
            record=str(view.image_id), field="crop", fix="choose a window inside the image")
    base = view.crop
    crop = Crop(
        x0 + (base.x0 if base else 0),
        y0 + (base.y0 if base else 0),
        base.source_width if base else view.width,
        base.source_height if base else view.height,
    )
    K_new = np.asarray(K_crop(np.asarray(view.K, np.float64), x0, y0), np.float64)
    objects = []
    for o in view.objects:
        r = _recompute(o, view.K, K_new, (view.width, view.height), (width, height))
        if r is not None and (label_filter is None or label_filter.keep(r, K_new, width, height)):
            objects.append(r)
    return dataclasses.replace(view, K=K_new, width=width, height=height, objects=objects, crop=crop,
                               camera=camera if camera is not None else view.camera)


def pseudo_views(view: View, seed: int, config: PseudoViewConfig = DEFAULT_CROPS, *,
                 label_filter: LabelFilter | None = None) -> list[View]:
    """Head + wrist views (in that order, cameras ``head``, ``wrist1``, ...) cropped from ``view``."""
    rng = np.random.default_rng(stable_seed("pseudo-views", seed, view.image_id, str(view.image_path)))
    out = []
    ranges = [("head", config.head_area)] + [(f"wrist{i + 1}", config.wrist_area) for i in range(config.num_wrist)]
    for name, (lo, hi) in ranges:
        area = float(rng.uniform(lo, hi))
        x0, y0, w, h = sample_crop(view.width, view.height, area, config.aspect, rng)
        out.append(crop_view(view, x0, y0, w, h, camera=name, label_filter=label_filter))
    return out


def pseudo_multiview_scenes(scenes: Sequence[Scene], seed: int, config: PseudoViewConfig = DEFAULT_CROPS, *,
                            label_filter: LabelFilter | None = None) -> list[Scene]:
    """Every view of every scene becomes a 3-view scene ``<scene_id>/<view index>`` of its crops.

    Use a different ``seed`` per epoch (e.g. ``stable_seed(seed, epoch)``) for fresh crops.
    """
    out = []
    for s in scenes:
        for i, v in enumerate(s.views):
            sid = s.scene_id if len(s.views) == 1 else f"{s.scene_id}/{i}"
            out.append(Scene(sid, pseudo_views(v, seed, config, label_filter=label_filter)))
    return out
