"""Example datasets of the token objective: grounding scenes (stage 1) and robot trajectories (stage 2).

Both expose ``len(ds)``, ``ds.spec`` and ``ds.example(index, epoch)``; everything random in an example
(negatives, pseudo-view crops) is seeded by ``(seed, epoch, index)``, so an example does not depend on which
process builds it or on what was built before. :func:`iterate_batches` streams one dataset's batches in the
deterministic order (:mod:`posevla.data.streaming`); several are mixed by :mod:`posevla.data.mixture`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from posevla.data.collate import ExampleSpec, batch_indices, collate
from posevla.data.formats.lerobot import Episode, LeRobotV3Dataset
from posevla.data.formats.omni3d import Scene, View, load_depth, load_rgb
from posevla.data.grounding import (
    CompactView,
    GroundingExample,
    LabelFilter,
    build_grounding_example,
    load_compact_view,
    negative_category,
    resize_pad_view,
    scene_categories,
    stable_seed,
)
from posevla.data.schema import DEPTH_PREFIX, IMAGE_PREFIX
from posevla.data.streaming import stream_batches
from posevla.data.trajectory import TrajectoryConfig, TrajectoryExample, build_trajectory_example
from posevla.data.views import PseudoViewConfig, pseudo_views
from posevla.errors import DataError


class GroundingDataset:
    """One entry per (scene, category present in the scene); optional negatives (spec §2.1).

    With ``pseudo_views`` every stored view becomes its own entry group and is shown to the model as
    three virtual cameras cropped from it (:func:`posevla.data.views.pseudo_views`); the crops are
    re-drawn every epoch, seeded by ``(seed, epoch)`` and the image. Categories (and negatives) are
    decided on the full view, so a category whose instances all fall outside the crops of one epoch
    answers ``<no_object>`` in every view of that example.

    Args:
        scenes: scenes from :func:`posevla.data.formats.omni3d.load_omni3d` or :func:`posevla.data.formats.bop.load_bop`.
        spec: image size / views / token layout of the model.
        label_filter: which objects are listed in answers.
        negative_prob: probability that an entry is turned into a negative sample.
        seed: decides negatives and crops (per entry and epoch).
        categories: the category vocabulary negatives are drawn from (default: all seen).
        use_depth: read depth images where the views have them.
        cache_views: keep resize-padded views (fixed views) or decoded source images (pseudo views).
        pseudo_views: crop ranges of the virtual cameras; ``None`` = use the stored views as they are.
        source_cache_mb: memory bound of the decoded-source cache of pseudo-view datasets (per process).
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        spec: ExampleSpec,
        *,
        label_filter: LabelFilter | None = None,
        negative_prob: float = 0.1,
        seed: int = 0,
        categories: Sequence[str] | None = None,
        use_depth: bool = True,
        cache_views: bool = True,
        pseudo_views: PseudoViewConfig | None = None,
        source_cache_mb: float = 512.0,
    ) -> None:
        self.pseudo_views = pseudo_views
        if pseudo_views is not None:  # every stored view is one entry group, shown through its crops
            scenes = [
                Scene(s.scene_id if len(s.views) == 1 else f"{s.scene_id}/{i}", [v])
                for s in scenes
                for i, v in enumerate(s.views)
            ]
        self.scenes = list(scenes)
        # Resize-padded views are deterministic, so they are decoded once and kept (uint8 pixels + float32
        # depth ≈ 115 KB per 128² view; 1,000 three-view scenes ≈ 350 MB). Each scene is read once per
        # category it holds, so this removes most PNG decoding after the first epoch. Pseudo views change
        # every epoch, so there the decoded full-size source image is kept instead (LRU, bounded).
        self._view_cache: dict[tuple[int, int], CompactView] | None = {} if cache_views else None
        self._source_cache = _LruCache(int(source_cache_mb * 2**20)) if cache_views else None
        self.spec = spec
        self.label_filter = label_filter or LabelFilter()
        self.negative_prob = negative_prob
        self.seed = seed
        self.use_depth = use_depth
        self.entries: list[tuple[int, str]] = []
        self.scene_cats: list[list[str]] = []
        for i, scene in enumerate(self.scenes):
            cats = scene_categories(scene, self.label_filter)
            self.scene_cats.append(cats)
            self.entries.extend((i, c) for c in cats)
        self.categories = sorted(categories) if categories else sorted({c for _, c in self.entries})
        if not self.entries:
            raise DataError(
                f"no (scene, category) pairs survive the label filter among {len(self.scenes)} scenes",
                fix="check the dataset (visibility/truncation fields) or relax LabelFilter",
            )

    def __len__(self) -> int:
        return len(self.entries)

    def example(self, index: int, epoch: int = 0) -> GroundingExample:
        scene_idx, category = self.entries[index]
        scene = self.scenes[scene_idx]
        rng = np.random.default_rng(stable_seed(self.seed, epoch, index))
        negative_of = None
        if self.negative_prob > 0 and rng.random() < self.negative_prob:
            neg = negative_category(category, self.scene_cats[scene_idx], self.categories, rng)
            if neg is not None:
                negative_of, category = category, neg
        view_loader: Callable[[int, View], CompactView] | None = None
        if self.pseudo_views is not None:
            source = scene.views[0]
            crops = pseudo_views(source, stable_seed("crops", self.seed, epoch), self.pseudo_views,
                                 label_filter=self.label_filter)
            scene = Scene(scene.scene_id, crops)
            if self._source_cache is not None and source.crop is None:
                view_loader = lambda vi, v: self._cropped_view(scene_idx, source, v)  # noqa: E731
        elif self._view_cache is not None:
            view_loader = lambda vi, v: self._cached_view(scene_idx, vi, v)  # noqa: E731
        return build_grounding_example(
            scene,
            category,
            image_size=self.spec.image_size,
            num_views=self.spec.num_views,
            label_filter=self.label_filter,
            negative_of=negative_of,
            use_depth=self.use_depth,
            view_loader=view_loader,
        )

    def _cached_view(self, scene_idx: int, view_idx: int, view: View) -> CompactView:
        key = (scene_idx, view_idx)
        cv = self._view_cache.get(key)
        if cv is None:
            cv = self._view_cache[key] = load_compact_view(view, self.spec.image_size, self.use_depth)
        return cv

    def _cropped_view(self, scene_idx: int, source: View, crop: View) -> CompactView:
        """What :func:`load_compact_view` gives for ``crop``, cut from the cached decoded ``source``."""
        pixels = self._source_cache.get(scene_idx)
        if pixels is None:
            rgb = load_rgb(source)  # (H, W, 3) uint8
            depth = load_depth(source) if (self.use_depth and source.depth_path) else None  # (H, W) metres
            pixels = (rgb, depth)
            self._source_cache.put(scene_idx, pixels, rgb.nbytes + (0 if depth is None else depth.nbytes))
        rgb, depth = pixels
        x0, y0 = crop.crop.x0, crop.crop.y0
        win = np.s_[y0 : y0 + crop.height, x0 : x0 + crop.width]
        return resize_pad_view(
            np.ascontiguousarray(rgb[win]),
            None if depth is None else np.ascontiguousarray(depth[win]),
            crop.K,
            self.spec.image_size,
        )


class _LruCache:
    """A least-recently-used dict bounded by the summed size (bytes) of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> Any:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        self._items[key] = (value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            _, (_, n) = self._items.popitem(last=False)
            self._bytes -= n


class TrajectoryDataset:
    """Stage-2 examples: one entry per (episode, frame) of a LeRobot v3 dataset (spec §2.2).

    The answer lists each arm's future TCP waypoints in every camera's frame
    (:func:`posevla.data.trajectory.build_trajectory_example`); the prompt is the episode's
    instruction. Only the pixels of the frame's cameras are decoded; the numeric features of an episode
    are read once and kept. There is nothing random in an example, so ``epoch`` is ignored.

    Args:
        dataset: a loaded :class:`~posevla.data.formats.lerobot.LeRobotV3Dataset`.
        spec: image size / views / token layout of the model.
        config: horizon, stride, arms and cameras of the answers.
        frame_step: use every ``frame_step``-th frame of each episode as an entry.
        use_depth: feed the depth images where the cameras have them.
    """

    def __init__(
        self,
        dataset: LeRobotV3Dataset,
        spec: ExampleSpec,
        *,
        config: TrajectoryConfig | None = None,
        frame_step: int = 1,
        use_depth: bool = True,
    ) -> None:
        if isinstance(frame_step, bool) or not isinstance(frame_step, int) or frame_step < 1:
            raise DataError(f"frame_step must be a positive integer, got {frame_step!r}", field="frame_step",
                            fix="use 1 (every frame) or a larger stride")
        self.dataset = dataset
        self.spec = spec
        self.config = config or TrajectoryConfig()
        self.frame_step = frame_step
        self.use_depth = use_depth
        self.categories: list[str] = []
        cams = list(self.config.cameras if self.config.cameras is not None else dataset.camera_config.cameras)
        dataset.require_calibration(cams[: spec.num_views], "stage-2 trajectories")  # K, T_world_cam per view
        readable = set(dataset.pixel_keys())
        self._keys = [k for c in cams[: spec.num_views] for k in (IMAGE_PREFIX + c, DEPTH_PREFIX + c)
                      if k in readable and (use_depth or k.startswith(IMAGE_PREFIX))]
        self.entries: list[tuple[int, int]] = [
            (e, t) for e in range(dataset.num_episodes) for t in range(0, int(dataset.episode_lengths[e]), frame_step)
        ]
        if not self.entries:
            raise DataError("the dataset has no frames", file=str(dataset.root), field="episode_lengths",
                            fix="write at least one episode with frames")
        self._episodes: dict[int, Episode] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _episode(self, e: int) -> Episode:
        ep = self._episodes.get(e)
        if ep is None:
            ep = self._episodes[e] = self.dataset.episode(e, images=False)
        return ep

    def example(self, index: int, epoch: int = 0) -> TrajectoryExample:
        e, t = self.entries[index]
        return build_trajectory_example(
            self._episode(e),
            t,
            camera_config=self.dataset.camera_config,
            image_size=self.spec.image_size,
            num_views=self.spec.num_views,
            config=self.config,
            use_depth=self.use_depth,
            frame_images=self.dataset.frame_images(e, t, self._keys),
            episode_index=e,
        )


class ExampleSource(Protocol):
    """What the loader needs of a dataset (:class:`GroundingDataset`, :class:`TrajectoryDataset`)."""

    spec: ExampleSpec

    def __len__(self) -> int: ...

    def example(self, index: int, epoch: int = 0) -> GroundingExample | TrajectoryExample: ...


def iterate_batches(
    dataset: ExampleSource,
    batch_size: int,
    seed: int,
    start_step: int,
    codec,
    tokenizer,
    *,
    prefetch: int = 2,
    num_workers: int = 0,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (step, batch) of one dataset forever from `start_step` on, in the deterministic order.

    See :func:`stream_batches` for `prefetch` and `num_workers`; the batches do not depend on either.
    """
    return stream_batches(
        _DatasetBatches(dataset, batch_size, seed, codec, tokenizer),
        start_step,
        prefetch=prefetch,
        num_workers=num_workers,
    )


@dataclasses.dataclass
class _DatasetBatches:
    """Batch `step` of one dataset (a picklable callable, so it can run in a worker process)."""

    dataset: ExampleSource
    batch_size: int
    seed: int
    codec: Any
    tokenizer: Any

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        epoch, idx = batch_indices(len(self.dataset), self.batch_size, self.seed, step)
        examples = [self.dataset.example(int(i), epoch) for i in idx]
        return collate(examples, self.codec, self.tokenizer, self.dataset.spec)
