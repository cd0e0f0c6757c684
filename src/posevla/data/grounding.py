"""Stage-1 example building: scene views + a category → model inputs and the pose-token answer.

This is the one transform chain shared by the training loader and inference (evaluation, `Policy`):
both call :func:`prepare_view` for the pixels/priors and :func:`view_entries` for the labels, so
there is no train/serve skew.

Per view (spec §1.2, contracts "Pixels and intrinsics"):
  * aspect-preserving resize so the longer side is `image_size`, centred zero padding → S×S;
    `K` is updated exactly (resize, then pad);
  * RGB → float in [−1, 1], (3, S, S);
  * ray map ((u−cx)/fx, (v−cy)/fy, 1) in the *model* frame, zero on padded pixels, (3, S, S);
  * depth prior (metric depth, validity), nearest-neighbour resized, zero on padding, (2, S, S).

Answers (spec §1.3): one `<image i>` block per view; the instances of the prompted category, sorted
near→far by z, each with its 2D box (normalised by the model-input size), camera-frame translation,
size and Euler-xyz rotation; a view without an instance reads `category<no_object>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from posevla.data.formats.omni3d import Object3D, Scene, View, load_depth, load_rgb
from posevla.errors import DataError
from posevla.geometry import (
    K_pad,
    K_resize,
    matrix_to_euler_xyz,
    ray_map,
    resize_pad_params,
)
from posevla.tokens import PoseEntry, ViewAnswer


@dataclasses.dataclass(frozen=True)
class LabelFilter:
    """Which annotated objects are listed in answers and counted as ground truth (spec §2.1).

    ``min_box_area_px`` is the smallest area (pixels²) of the image-clipped 2D box; 0 disables it.
    :meth:`omni3d` gives the spec's filter for real Omni3D images (150 px boxes).
    """

    min_visibility: float = 0.333
    max_truncation: float = 0.33
    min_depth: float = 0.01
    require_center_inside: bool = True
    min_box_area_px: float = 0.0

    @classmethod
    def omni3d(cls) -> LabelFilter:
        """Spec §2.1 filter for Omni3D sources: visibility >= 0.333, truncation <= 0.33, projected
        centre inside the image, depth >= 0.01 m and a visible 2D box of at least 150 px²."""
        return cls(min_box_area_px=150.0)

    def keep(self, obj: Object3D, K: np.ndarray, width: int, height: int) -> bool:
        if obj.center_cam[2] < self.min_depth:
            return False
        if self.min_box_area_px > 0:
            b = np.asarray(obj.bbox2d, np.float64)
            if not (max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0) >= self.min_box_area_px):
                return False
        # -1 = unavailable (Omni3D): a threshold applies only to known values, as cubercnn's is_ignore does
        if 0 <= obj.visibility < self.min_visibility or (obj.truncation >= 0 and obj.truncation > self.max_truncation):
            return False
        if self.require_center_inside:
            u = K[0, 0] * obj.center_cam[0] / obj.center_cam[2] + K[0, 2]
            v = K[1, 1] * obj.center_cam[1] / obj.center_cam[2] + K[1, 2]
            if not (-0.5 <= u <= width - 0.5 and -0.5 <= v <= height - 0.5):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class PreparedView:
    """One view after the model-input transform."""

    pixels: np.ndarray  # (3, S, S) float32 in [-1, 1]
    ray: np.ndarray  # (3, S, S) float32
    depth: np.ndarray  # (2, S, S) float32: metres, validity
    K_model: np.ndarray  # (3, 3) float64, intrinsics of the S×S model input
    scale: tuple[float, float]  # exact resize factors (sx, sy) source → model
    pad: tuple[int, int]  # (left, top) padding in the model input
    has_depth: bool


@dataclasses.dataclass(frozen=True)
class CompactView:
    """A view after resize-pad, before the float expansion: what a loader may cache (~4× smaller)."""

    canvas: np.ndarray  # (S, S, 3) uint8, zero padding
    depth: np.ndarray | None  # (S, S) float32 metres, 0 = invalid or padding
    K_model: np.ndarray  # (3, 3) float64
    scale: tuple[float, float]
    pad: tuple[int, int]  # (left, top)
    size: tuple[int, int]  # (new_w, new_h) of the resized image inside the canvas


def resize_pad_view(rgb: np.ndarray, depth: np.ndarray | None, K: np.ndarray, image_size: int) -> CompactView:
    """Validate one view and resize-pad it to `image_size`² (the expensive, cacheable half of :func:`prepare_view`)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(
            f"expected an RGB image of shape (H, W, 3) and dtype uint8, got {rgb.shape} {rgb.dtype}",
            field="image",
            fix="convert the image to 8-bit RGB before passing it in",
        )
    height, width = rgb.shape[:2]
    if depth is not None and depth.shape != (height, width):
        raise DataError(
            f"depth shape {depth.shape} does not match the image shape {(height, width)}",
            field="depth",
            fix="render/store depth at the image resolution",
        )
    _, new_w, new_h, pad_left, pad_top = resize_pad_params(width, height, image_size)
    S = image_size
    sx, sy = new_w / width, new_h / height  # exact factors (sizes are rounded)
    K_model = K_pad(K_resize(K, sx, sy), pad_left, pad_top)

    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.zeros((S, S, 3), np.uint8)
    canvas[pad_top : pad_top + new_h, pad_left : pad_left + new_w] = resized
    depth_canvas = None
    if depth is not None:
        d = np.asarray(Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32)).resize((new_w, new_h), Image.NEAREST))
        depth_canvas = np.zeros((S, S), np.float32)
        depth_canvas[pad_top : pad_top + new_h, pad_left : pad_left + new_w] = np.where(d > 0, d, 0.0)
    return CompactView(canvas, depth_canvas, K_model, (sx, sy), (pad_left, pad_top), (new_w, new_h))


def expand_view(cv: CompactView) -> PreparedView:
    """Float pixels in [−1, 1] and the ray / depth priors of a resize-padded view (cheap)."""
    S = cv.canvas.shape[0]
    (pad_left, pad_top), (new_w, new_h) = cv.pad, cv.size
    valid = np.zeros((S, S), bool)
    valid[pad_top : pad_top + new_h, pad_left : pad_left + new_w] = True
    pixels = cv.canvas.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0  # (3, S, S)
    pixels[:, ~valid] = 0.0
    ray = ray_map(cv.K_model, S, S, valid)  # (3, S, S)
    depth2 = np.zeros((2, S, S), np.float32)
    if cv.depth is not None:
        depth2[0] = cv.depth
        depth2[1] = (cv.depth > 0).astype(np.float32)
    return PreparedView(
        pixels=pixels,
        ray=ray.astype(np.float32),
        depth=depth2,
        K_model=cv.K_model,
        scale=cv.scale,
        pad=cv.pad,
        has_depth=cv.depth is not None,
    )


def empty_view(image_size: int) -> PreparedView:
    """An all-zero image slot (no pixels, no priors) for samples with fewer views than the model has slots."""
    S = image_size
    return PreparedView(
        pixels=np.zeros((3, S, S), np.float32),
        ray=np.zeros((3, S, S), np.float32),
        depth=np.zeros((2, S, S), np.float32),
        K_model=np.eye(3),
        scale=(1.0, 1.0),
        pad=(0, 0),
        has_depth=False,
    )


def prepare_view(rgb: np.ndarray, depth: np.ndarray | None, K: np.ndarray, image_size: int) -> PreparedView:
    """Resize-pad one view to `image_size`² and compute its priors in the model frame."""
    return expand_view(resize_pad_view(rgb, depth, K, image_size))


def load_compact_view(view: View, image_size: int, use_depth: bool = True) -> CompactView:
    """Read a stored view from disk and resize-pad it."""
    rgb = load_rgb(view)
    depth = load_depth(view) if (use_depth and view.depth_path) else None
    return resize_pad_view(rgb, depth, view.K, image_size)


def box2d_to_model(box: np.ndarray, prepared: PreparedView, image_size: int) -> np.ndarray:
    """Map a pixel box x1,y1,x2,y2 of the source view to normalised [0,1] model-input coordinates."""
    left, top = prepared.pad
    sx, sy = prepared.scale
    x = sx * (box[[0, 2]] + 0.5) - 0.5 + left
    y = sy * (box[[1, 3]] + 0.5) - 0.5 + top
    out = np.array([x[0], y[0], x[1], y[1]], np.float64)
    return np.clip((out + 0.5) / image_size, 0.0, 1.0)


def view_entries(
    view: View, category: str, prepared: PreparedView, image_size: int, label_filter: LabelFilter
) -> list[PoseEntry]:
    """The answer entries of `category` in one view, sorted near→far by z."""
    objects = [
        o
        for o in view.objects
        if o.category == category and label_filter.keep(o, view.K, view.width, view.height)
    ]
    objects.sort(key=lambda o: float(o.center_cam[2]))
    return [
        PoseEntry(
            name=category,
            anchor=box2d_to_model(np.asarray(o.bbox2d, np.float64), prepared, image_size),
            translation=np.asarray(o.center_cam, np.float64),
            euler_xyz=np.asarray(matrix_to_euler_xyz(np.asarray(o.R_cam, np.float64)), np.float64),
            size=np.asarray(o.dimensions, np.float64),
        )
        for o in objects
    ]


def scene_categories(scene: Scene, label_filter: LabelFilter) -> list[str]:
    """Categories with at least one kept instance in any view of the scene, sorted."""
    cats = {
        o.category
        for v in scene.views
        for o in v.objects
        if label_filter.keep(o, v.K, v.width, v.height)
    }
    return sorted(cats)


def negative_category(category: str, scene_cats: Sequence[str], all_cats: Sequence[str], rng: np.random.Generator) -> str | None:
    """A random category that shares no word with `category` and is absent from the scene (spec §2.1)."""
    words = set(category.split())
    options = [c for c in all_cats if c not in scene_cats and not (set(c.split()) & words)]
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def stable_seed(*parts: object) -> int:
    """A platform-independent 63-bit seed from any printable parts (Python's hash() is salted)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def prompt_for(category: str) -> str:
    """The stage-1 grounding prompt (spec §1.3)."""
    return f"detect the {category.replace('_', ' ').lower()}"


@dataclasses.dataclass
class GroundingExample:
    """Everything the collate function and the evaluator need for one (scene, category) prompt."""

    scene_id: str
    category: str
    prompt: str
    views: list[ViewAnswer]
    prepared: list[PreparedView]
    negative: bool


def build_grounding_example(
    scene: Scene,
    category: str,
    *,
    image_size: int,
    num_views: int,
    label_filter: LabelFilter,
    negative_of: str | None = None,
    use_depth: bool = True,
    view_loader: Callable[[int, View], CompactView] | None = None,
) -> GroundingExample:
    """Build the views, priors and answer for `detect the {category}` on one scene.

    `negative_of` marks a negative sample: `category` is absent from the scene and every view
    answers `category<no_object>`. `view_loader(view_index, view)` replaces reading the view from
    disk (a dataset passes a caching one); it must return what :func:`load_compact_view` would.
    """
    if not scene.views:
        raise DataError("scene has no views", record=scene.scene_id, fix="drop the scene or add images")
    views = list(scene.views[:num_views])
    prepared: list[PreparedView] = []
    answers: list[ViewAnswer] = []
    for i in range(num_views):
        if i < len(views):
            v = views[i]
            if view_loader is not None:
                pv = expand_view(view_loader(i, v))
            else:
                pv = expand_view(load_compact_view(v, image_size, use_depth))
            entries = [] if negative_of else view_entries(v, category, pv, image_size, label_filter)
        else:  # fewer views than slots: an all-zero slot that answers <no_object>
            pv = empty_view(image_size)
            entries = []
        prepared.append(pv)
        answers.append(ViewAnswer(index=i, entries=entries, no_object=None if entries else category))
    return GroundingExample(
        scene_id=scene.scene_id,
        category=category,
        prompt=prompt_for(category),
        views=answers,
        prepared=prepared,
        negative=negative_of is not None,
    )
