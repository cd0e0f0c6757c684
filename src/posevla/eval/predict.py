"""3D grounding inference on a dataset: model predictions, the category-mean baseline, ground truth.

`posevla eval grounding` and the demo both go through :func:`evaluate_checkpoint`:
  1. load a checkpoint (weights, bins, tokenizer, resolved config);
  2. for each scene and each category present, prompt `detect the {category}` with the same
     transform chain as training, decode greedily under the pose grammar (always parses);
  3. turn the decoded tokens into camera-frame 3D boxes per view (score = mean token probability
     of the object's tokens) and compute Omni3D-style AP3D and pose errors;
  4. the baseline predicts, for every ground-truth object, its category's mean depth / size /
     rotation (from the training labels) placed at the object's true projected 2D centre.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from posevla.data.collate import ExampleSpec, collate
from posevla.data.formats.omni3d import Scene, load_omni3d, load_rgb
from posevla.data.grounding import (
    CompactView,
    LabelFilter,
    build_grounding_example,
    load_compact_view,
    scene_categories,
)
from posevla.errors import CheckpointError
from posevla.eval.grounding import Box3D, evaluate_grounding
from posevla.geometry import euler_xyz_to_matrix, unproject_points
from posevla.runtime import autocast_context, pick_device_and_precision
from posevla.tokens import GivenAnchorGrammar, PoseCodec, PoseGrammar
from posevla.training.checkpoint import load_checkpoint

Key = tuple[str, int]  # (scene_id, view index)


def ground_truth(scenes: Sequence[Scene], num_views: int, label_filter: LabelFilter | None = None) -> dict[Key, list[Box3D]]:
    lf = label_filter or LabelFilter()
    gt: dict[Key, list[Box3D]] = {}
    for s in scenes:
        for vi, v in enumerate(s.views[:num_views]):
            gt[(s.scene_id, vi)] = [
                Box3D(o.category, np.asarray(o.center_cam), np.asarray(o.dimensions), np.asarray(o.R_cam))
                for o in v.objects
                if lf.keep(o, v.K, v.width, v.height)
            ]
    return gt


@dataclasses.dataclass(frozen=True)
class CategoryMeans:
    """Per-category mean camera depth, size and rotation (chordal mean projected onto SO(3))."""

    z: dict[str, float]
    dims: dict[str, np.ndarray]
    R: dict[str, np.ndarray]

    @staticmethod
    def fit(scenes: Sequence[Scene], label_filter: LabelFilter | None = None) -> CategoryMeans:
        lf = label_filter or LabelFilter()
        zs, ds, Rs = defaultdict(list), defaultdict(list), defaultdict(list)
        for s in scenes:
            for v in s.views:
                for o in v.objects:
                    if lf.keep(o, v.K, v.width, v.height):
                        zs[o.category].append(o.center_cam[2])
                        ds[o.category].append(o.dimensions)
                        Rs[o.category].append(o.R_cam)
        R_mean = {}
        for c, mats in Rs.items():
            U, _, Vt = np.linalg.svd(np.mean(mats, axis=0))
            D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
            R_mean[c] = U @ D @ Vt
        return CategoryMeans(
            z={c: float(np.mean(v)) for c, v in zs.items()},
            dims={c: np.mean(v, axis=0) for c, v in ds.items()},
            R=R_mean,
        )


def baseline_predictions(
    scenes: Sequence[Scene], means: CategoryMeans, num_views: int, label_filter: LabelFilter | None = None
) -> dict[Key, list[Box3D]]:
    """The category's mean pose at each true object's projected 2D centre."""
    lf = label_filter or LabelFilter()
    preds: dict[Key, list[Box3D]] = {}
    for s in scenes:
        for vi, v in enumerate(s.views[:num_views]):
            out = []
            for o in v.objects:
                if not lf.keep(o, v.K, v.width, v.height) or o.category not in means.z:
                    continue
                c = np.asarray(o.center_cam, np.float64)
                uv = (v.K @ c)[:2] / c[2]
                center = unproject_points(v.K, uv[None], np.array([means.z[o.category]]))[0]
                out.append(Box3D(o.category, center, means.dims[o.category], means.R[o.category], 1.0))
            preds[(s.scene_id, vi)] = out
    return preds


def _entry_scores(ids: Sequence[int], logprobs: Sequence[float], sep_id: int) -> list[float]:
    """Mean token probability of each object segment (segments end at the ';' separator)."""
    scores, acc = [], []
    for t, lp in zip(ids, logprobs):
        acc.append(lp)
        if t == sep_id:
            scores.append(float(np.exp(np.mean(acc))))
            acc = []
    return scores


class GroundingPredictor:
    """Loads a stage-1/2 checkpoint (from what it saved) and turns (scene, category) prompts into 3D boxes per view."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str = "auto",
        precision: str = "auto",
        max_instances_per_view: int = 8,
    ) -> None:
        saved = load_checkpoint(checkpoint)
        if saved.expert is not None:
            raise CheckpointError(
                f"{saved.dir} is a post-training checkpoint (VLM + action expert); evaluate 3D grounding on the "
                "stage-1/2 checkpoint it was post-trained from: pass that run as --checkpoint"
            )
        self.saved = saved
        self.bins = saved.bins
        self.mcfg = saved.model
        self.codec = PoseCodec(saved.bins)
        self.model = saved.build_model()
        self.tokenizer = self.model.tokenizer
        self.device, self.use_bf16, _ = pick_device_and_precision(device, precision)
        self.model.to(self.device).eval()
        self.spec = ExampleSpec.from_model(self.mcfg)
        self.token_ids = self.tokenizer.pose_token_ids(self.codec.vocabulary() + [";"])
        self.sep_id = self.token_ids[";"]
        self.max_instances_per_view = max_instances_per_view
        # the pose-value families (transXY, transZ, size, rot): every family of the model but <loc>
        self.value_families = [ids.cpu().numpy() for ids in self.model._family_bins(torch.device("cpu"))[1:]]
        self._scored_given_2d = set(np.concatenate(self.value_families).tolist()) | {self.sep_id}

    def grammar(self, category: str) -> PoseGrammar:
        return PoseGrammar(
            self.token_ids,
            self.tokenizer.eos_id,
            self.tokenizer.name_ids([category]),
            num_views=self.spec.num_views,
            kind="object",
            allow_empty_view=False,
            max_entries_per_view=self.max_instances_per_view,
        )

    def given_anchor_grammar(self, example) -> GivenAnchorGrammar:
        """Forced ground-truth structure and anchors for `example` (its answer = the ground truth)."""
        ids = self.tokenizer.encode_text(self.codec.serialize(example.views)) + [self.tokenizer.eos_id]
        return GivenAnchorGrammar(ids, self.value_families)

    @torch.no_grad()
    def predict(self, examples: Sequence, *, given_2d: bool = False) -> list[list[list[Box3D]]]:
        """For each example: per view, the decoded boxes (the grammar bounds the length, so it always parses).

        With `given_2d`, the ground-truth objects and their 2D boxes are given and the model predicts only
        their 3D poses (`GivenAnchorGrammar`).
        """
        batch = collate(examples, self.codec, self.tokenizer, self.spec, with_answer=False)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if given_2d:
            grammars = [self.given_anchor_grammar(ex) for ex in examples]
        else:
            grammars = [self.grammar(ex.category) for ex in examples]
        max_new = max(g.max_length() for g in grammars)
        with autocast_context(self.device, self.use_bf16):
            results = self.model.generate(batch, grammars, max_new)
        out = []
        for ex, res in zip(examples, results):
            views = self.codec.parse(self.tokenizer.decode(res.ids))
            if given_2d:  # score = confidence in the model's own choices (the 3D values), not the given tokens
                kept = [(t, lp) for t, lp in zip(res.ids, res.logprobs) if t in self._scored_given_2d]
                scores = iter(_entry_scores([t for t, _ in kept], [lp for _, lp in kept], self.sep_id))
            else:
                scores = iter(_entry_scores(res.ids, res.logprobs, self.sep_id))
            per_view = []
            for va in views:
                boxes = []
                for e in va.entries:
                    s = next(scores, 0.0)
                    if e.size is None:
                        continue
                    R = np.asarray(euler_xyz_to_matrix(np.asarray(e.euler_xyz, np.float64)))
                    boxes.append(Box3D(ex.category, np.asarray(e.translation), np.asarray(e.size), R, s))
                per_view.append(boxes)
            out.append(per_view)
        return out


def model_predictions(
    predictor: GroundingPredictor,
    scenes: Sequence[Scene],
    *,
    batch_size: int = 16,
    label_filter: LabelFilter | None = None,
    progress: bool = True,
    given_2d: bool = False,
) -> dict[Key, list[Box3D]]:
    """The model's boxes per (scene, view): one prompt per category a scene holds (`given_2d`: see
    `GroundingPredictor.predict`)."""
    lf = label_filter or LabelFilter()
    jobs = [(s, c) for s in scenes for c in scene_categories(s, lf)]
    preds: dict[Key, list[Box3D]] = {(s.scene_id, vi): [] for s in scenes for vi in range(len(s.views[: predictor.spec.num_views]))}
    cache: dict[tuple[str, int], CompactView] = {}  # each scene is prompted once per category it holds

    def view_loader(scene: Scene):
        def load(vi: int, v) -> CompactView:
            key = (scene.scene_id, vi)
            if key not in cache:
                cache[key] = load_compact_view(v, predictor.spec.image_size)
            return cache[key]

        return load

    for i in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc="grounding eval", unit="batch"):
        chunk = jobs[i : i + batch_size]
        examples = [
            build_grounding_example(
                s,
                c,
                image_size=predictor.spec.image_size,
                num_views=predictor.spec.num_views,
                label_filter=lf,
                view_loader=view_loader(s),
            )
            for s, c in chunk
        ]
        for (s, _), per_view in zip(chunk, predictor.predict(examples, given_2d=given_2d)):
            for vi, boxes in enumerate(per_view[: len(s.views)]):
                preds[(s.scene_id, vi)].extend(boxes)
    return preds


@torch.no_grad()
def image_reliance(predictor: GroundingPredictor, scenes: Sequence[Scene], *, n_examples: int = 16) -> dict[str, float]:
    """How much the model's answers depend on *these* images: answer loss with the true images vs with
    the images (and priors) of another sample of the batch (a cyclic shift).

    A model that grounds has a clearly positive ``gap``; a gap ≈ 0 means the answers are the same
    whatever the pixels (it predicts category/view marginals only), whatever its AP says.
    """
    lf = LabelFilter()
    jobs = [(s, c) for s in scenes for c in scene_categories(s, lf)][:n_examples]
    if len(jobs) < 2:
        return {"loss": float("nan"), "loss_shuffled_images": float("nan"), "gap": float("nan"), "n_examples": len(jobs)}
    examples = [
        build_grounding_example(s, c, image_size=predictor.spec.image_size, num_views=predictor.spec.num_views, label_filter=lf)
        for s, c in jobs
    ]
    batch = collate(examples, predictor.codec, predictor.tokenizer, predictor.spec)
    batch = {k: v.to(predictor.device) for k, v in batch.items()}
    shift = torch.roll(torch.arange(len(examples), device=predictor.device), 1)
    shuffled = dict(batch)
    for k in ("pixel_values", "ray", "depth", "prior_mask"):
        shuffled[k] = batch[k][shift]
    with autocast_context(predictor.device, predictor.use_bf16):
        loss = float(predictor.model.compute_loss(batch)["loss"])
        loss_shuffled = float(predictor.model.compute_loss(shuffled)["loss"])
    return {"loss": loss, "loss_shuffled_images": loss_shuffled, "gap": loss_shuffled - loss, "n_examples": len(jobs)}


def write_overlays(
    scenes: Sequence[Scene],
    gt: dict[Key, list[Box3D]],
    preds: dict[Key, list[Box3D]],
    out_dir: Path,
    *,
    n: int = 6,
    prefix: str = "overlay",
) -> list[Path]:
    """Side-by-side ground truth (green) and predictions (red) on the first `n` scenes' views."""
    from posevla.eval.overlays import overlay_predictions, save_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in scenes[:n]:
        tiles = []
        for vi, v in enumerate(s.views):
            key = (s.scene_id, vi)
            tiles.append(overlay_predictions(load_rgb(v), v.K, gt.get(key, []), preds.get(key, [])))
        p = out_dir / f"{prefix}_{s.scene_id}.png"
        save_grid(tiles, p, cols=len(tiles))
        paths.append(p)
    return paths


#: "Clearly beats": at least this many times the baseline's AP3D and AP@0.25, and a smaller translation error.
CLEAR_WIN = 1.5
#: Image-reliance gap (nats per answer token) above which the answers depend on the pixels. Measured on the
#: tiny model: runs whose answers ignore the images stay at 0.000-0.003; runs that read depth off the images
#: reach 0.013-0.06 (docs/design.md).
READS_IMAGES_GAP = 0.01


def grounding_verdict(ev: dict[str, Any]) -> dict[str, Any]:
    """Claims about a grounding checkpoint, from an `evaluate_checkpoint` result with the baseline: does the
    model clearly beat the category-mean baseline when it is given the baseline's information (the true 2D
    boxes), does it when it detects on its own, and do its answers depend on its images? With the numbers
    behind each, in words (``text``). A metric that could not be computed (None / NaN) never counts as a win.
    """

    def num(x: Any) -> float:
        return float("nan") if x is None else float(x)

    def beats(name: str) -> bool:
        m, b = ev[name], ev["baseline"]
        return bool(
            num(m["ap3d"]) >= CLEAR_WIN * num(b["ap3d"])
            and num(m["ap25"]) >= CLEAR_WIN * num(b["ap25"])
            and num(m["trans_err_cm"]) < num(b["trans_err_cm"])
        )

    gap = num(ev["image_reliance"]["gap"])
    v: dict[str, Any] = {
        "beats_baseline_given_2d": beats("model_given_2d"),
        "beats_baseline_detecting": beats("model"),
        "reads_images": bool(gap >= READS_IMAGES_GAP),
    }
    b, g, m = ev["baseline"], ev["model_given_2d"], ev["model"]

    def f(x: Any) -> str:
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.1f}"

    v["text"] = (
        f"given the true 2D boxes, the model {'clearly beats' if v['beats_baseline_given_2d'] else 'does not clearly beat'} "
        f"the category-mean baseline (AP3D {f(g['ap3d'])} vs {f(b['ap3d'])}, AP@0.25 {f(g['ap25'])} vs {f(b['ap25'])}, "
        f"translation error {f(g['trans_err_cm'])} vs {f(b['trans_err_cm'])} cm); detecting on its own it "
        f"{'clearly beats it too' if v['beats_baseline_detecting'] else 'does not'} (AP3D {f(m['ap3d'])}); its answers "
        f"{'depend on its images' if v['reads_images'] else 'do not depend on its images'} "
        f"(image-reliance gap {gap:.3f} nats per answer token, threshold {READS_IMAGES_GAP})."
    )
    return v


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    train_data: str | Path | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    max_scenes: int | None = None,
    overlays: int = 6,
    device: str = "auto",
    progress: bool = True,
    given_2d: bool = True,
    image_root: str | Path | None = None,
    depth_encoding: str | None = None,
) -> dict[str, Any]:
    """Evaluate model (and, given `train_data`, the category-mean baseline) on a grounding dataset.

    ``model`` detects (finds the objects and their 2D boxes itself); with `given_2d` also ``model_given_2d``:
    the true objects and 2D boxes are given and the model predicts their 3D poses, the information the
    baseline gets. `image_root` / `depth_encoding` are passed to the Omni3D reader of `data` and
    `train_data` (the official layout: ``--image-root datasets``).
    """
    t0 = time.time()
    read_kw: dict[str, Any] = dict(image_root=image_root, depth_encoding=depth_encoding)
    data_json = Path(data) / "dataset.json" if Path(data).is_dir() else Path(data)
    scenes = load_omni3d(data_json, **read_kw)[:max_scenes]
    predictor = GroundingPredictor(checkpoint, device=device)
    nv = predictor.spec.num_views
    gt = ground_truth(scenes, nv)
    preds = model_predictions(predictor, scenes, batch_size=batch_size, progress=progress)
    result: dict[str, Any] = {"model": evaluate_grounding(preds, gt).to_dict()}
    if given_2d:
        given = model_predictions(predictor, scenes, batch_size=batch_size, progress=progress, given_2d=True)
        result["model_given_2d"] = evaluate_grounding(given, gt).to_dict()
    if train_data is not None:
        tj = Path(train_data) / "dataset.json" if Path(train_data).is_dir() else Path(train_data)
        means = CategoryMeans.fit(load_omni3d(tj, **read_kw))
        result["baseline"] = evaluate_grounding(baseline_predictions(scenes, means, nv), gt).to_dict()
    result["image_reliance"] = image_reliance(predictor, scenes)
    if "baseline" in result and "model_given_2d" in result:
        result["verdict"] = grounding_verdict(result)
    result["n_scenes"] = len(scenes)
    result["seconds"] = round(time.time() - t0, 2)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if overlays:
            result["overlays"] = [str(p.relative_to(out)) for p in write_overlays(scenes, gt, preds, out / "overlays", n=overlays)]
        (out / "grounding.json").write_text(json.dumps(result, indent=2, default=float))
    return result
