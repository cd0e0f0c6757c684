"""Training data sources and their weighted, deterministic mixture (spec §2.1 sampling, §2.2, open question 4).

A training config names its data as :class:`SourceSpec` s. Each is loaded into an example dataset:

=============  ====================================  ==========================================================
kind           path                                  examples
=============  ====================================  ==========================================================
``generated``  folder with ``dataset.json``          grounding (:class:`~posevla.data.loader.GroundingDataset`);
               (``posevla generate``)                the three rendered cameras are used as they are
``omni3d``     Omni3D json, or its folder            grounding with the spec's Omni3D label filter; single-view
                                                     scenes get 3 pseudo views (crops re-drawn every epoch)
``bop``        BOP dataset root (+ ``split``)        grounding; every image gets 3 pseudo views (BOP crops)
``lerobot``    LeRobot v3 folder                     stage-2 trajectories
                                                     (:class:`~posevla.data.loader.TrajectoryDataset`): camera-
                                                     frame TCP waypoints, prompt = the episode's instruction
=============  ====================================  ==========================================================

**Sampling.** Source ``s`` of size ``n_s`` (entries: (scene, category) pairs or frames) gets the weight
``n_s ** 0.43`` unless the spec gives one (explicit weights are on the same scale), and the share
``p_s = w_s / Σ w``. A batch of ``B`` holds ``q_s = floor(B · p_s)`` items of each source, taken in order
from the source's own per-epoch permutation (exactly :func:`posevla.data.loader.batch_indices` with batch
``q_s``), and the ``B − Σ q_s`` remaining slots pick a source with probability ``∝ B · p_s − q_s`` and an
item uniformly. Every source thus gets ``B · p_s`` items per step in expectation, and the batch of step
``k`` is a pure function of ``(seed, k)``: a resumed run sees the batches of a straight run, and worker
processes build the same batches as the training process. With one source the order is the one of
:func:`~posevla.data.loader.iterate_batches`.

Every batch carries ``source`` (B,) int64, the index of each row's source, from which the trainer
reports per-source loss and token accuracy (:func:`per_source_metrics`) without a second forward pass.

Before training, :func:`check_sources` runs the data doctor on every source and refuses to start on
errors; :func:`fit_source_bins` fits the pose-token bins on the labels of all sources (stage-1 boxes and
stage-2 waypoint translations, open question 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from posevla.data.bop import load_bop
from posevla.data.doctor import DoctorReport, detect_format, run_doctor
from posevla.data.fitting import collect_labels, fit_bins_on_labels, merge_labels, waypoint_labels
from posevla.data.lerobot import LeRobotV3Dataset, load_lerobot_v3
from posevla.data.loader import (
    ExampleSource,
    ExampleSpec,
    GroundingDataset,
    TrajectoryDataset,
    batch_indices,
    collate,
    stream_batches,
)
from posevla.data.omni3d import Scene, load_omni3d
from posevla.data.sample import LabelFilter, stable_seed
from posevla.data.trajectory import TrajectoryConfig, collect_waypoint_translations
from posevla.data.views import BOP_CROPS, DEFAULT_CROPS, PseudoViewConfig
from posevla.errors import ConfigError, DataError, TrainingError
from posevla.tokens import BinSpec

__all__ = [
    "SOURCE_KINDS",
    "WEIGHT_EXPONENT",
    "SourceSpec",
    "LoadedSource",
    "Mixture",
    "detect_source_kind",
    "load_source",
    "check_sources",
    "build_mixture",
    "fit_source_bins",
    "bins_coverage",
    "per_source_metrics",
]

SourceKind = Literal["generated", "omni3d", "bop", "lerobot"]
SOURCE_KINDS: tuple[str, ...] = ("generated", "omni3d", "bop", "lerobot")
GROUNDING_KINDS: tuple[str, ...] = ("generated", "omni3d", "bop")
#: Default per-source weight n ** WEIGHT_EXPONENT (spec §2.1, `weighted_sample=True`).
WEIGHT_EXPONENT = 0.43
_GENERATED_NAME = "posevla-tabletop"  # info.name of `posevla generate` datasets


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One training data source.

    Args:
        kind: ``generated`` | ``omni3d`` | ``bop`` (stage-1 grounding) or ``lerobot`` (stage-2 trajectories).
        path: dataset folder (``omni3d`` also takes the json itself).
        weight: sampling weight; ``None`` = ``n ** 0.43`` of the source's size n (same scale).
        pseudo_views: show each stored image as 3 cropped virtual cameras; ``None`` = automatic (BOP, and
            Omni3D whose scenes are all single-view).
        split: BOP split folder (``test``, ``train_pbr``, ...); one source per split.
        name: label in logs and metrics (default ``<kind>:<folder name>``).
        category_names: BOP obj_id -> name JSON (default: ``<root>/category_names.json`` or built-in).
        horizon: ``lerobot``: waypoints per arm (spec: 5).
        stride: ``lerobot``: frames between waypoints.
        frame_step: ``lerobot``: use every ``frame_step``-th frame as an example.
    """

    kind: SourceKind
    path: str
    weight: float | None = None
    pseudo_views: bool | None = None
    split: str = "test"
    name: str | None = None
    category_names: str | None = None
    horizon: int = 5
    stride: int = 10
    frame_step: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"unknown data source kind {self.kind!r}; valid: {', '.join(SOURCE_KINDS)}")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"source {self.label}: weight must be a positive number or None, got {self.weight!r}")
        for f in ("horizon", "stride", "frame_step"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"source {self.label}: {f} must be a positive integer, got {v!r}")
        if self.kind == "lerobot" and self.pseudo_views:
            raise ConfigError(f"source {self.label}: pseudo views apply to grounding sources, not to 'lerobot'")

    @property
    def label(self) -> str:
        """The source's name in logs and metrics."""
        if self.name:
            return self.name
        p = Path(self.path)
        folder = p.parent.name if p.suffix == ".json" else p.name
        return f"{self.kind}:{folder}" + (f"/{self.split}" if self.kind == "bop" else "")

    @property
    def grounding(self) -> bool:
        """True for stage-1 (3D grounding) sources, False for stage-2 trajectories."""
        return self.kind in GROUNDING_KINDS

    def label_filter(self) -> LabelFilter:
        """The spec's object filter for real Omni3D images; the default filter elsewhere."""
        return LabelFilter.omni3d() if self.kind == "omni3d" else LabelFilter()

    def trajectory_config(self) -> TrajectoryConfig:
        return TrajectoryConfig(horizon=self.horizon, stride=self.stride)

    def crops(self, scenes: Sequence[Scene]) -> PseudoViewConfig | None:
        """The pseudo-view crop ranges this source uses on `scenes`, or None for the stored views."""
        use = self.pseudo_views
        if use is None:
            use = self.kind == "bop" or (self.kind == "omni3d" and all(len(s.views) == 1 for s in scenes))
        if not use:
            return None
        return BOP_CROPS if self.kind == "bop" else DEFAULT_CROPS


def detect_source_kind(path: str | Path) -> SourceKind:
    """The kind of the dataset at `path` (``generated`` = an Omni3D json written by ``posevla generate``)."""
    fmt, p = detect_format(path)
    if fmt != "omni3d":
        return fmt  # type: ignore[return-value]
    import json

    try:
        info = json.loads(p.read_text(encoding="utf-8")).get("info") or {}
    except (OSError, ValueError, AttributeError):
        info = {}
    return "generated" if isinstance(info, dict) and info.get("name") == _GENERATED_NAME else "omni3d"


def _omni3d_json(path: str | Path) -> Path:
    p = Path(path)
    return p / "dataset.json" if p.is_dir() else p


@dataclasses.dataclass
class LoadedSource:
    """A source read from disk: grounding scenes (pixels stay on disk) or a LeRobot dataset."""

    spec: SourceSpec
    scenes: list[Scene] | None = None
    robot: LeRobotV3Dataset | None = None


def _require_exists(spec: SourceSpec) -> None:
    if not Path(spec.path).exists():
        raise DataError(
            f"data source {spec.label!r} ({spec.kind}) not found",
            file=str(spec.path),
            fix="fix the path (e.g. --train-data DIR, or --sources.N.path DIR), or create the dataset "
            "(`posevla generate` for generated scenes)",
        )


def load_source(spec: SourceSpec) -> LoadedSource:
    """Read one source with the project's strict readers (DataError names file, record and field)."""
    _require_exists(spec)
    if spec.kind in ("generated", "omni3d"):
        return LoadedSource(spec, scenes=load_omni3d(_omni3d_json(spec.path)))
    if spec.kind == "bop":
        return LoadedSource(spec, scenes=load_bop(spec.path, spec.split, category_names=spec.category_names))
    return LoadedSource(spec, robot=load_lerobot_v3(spec.path))


def check_sources(specs: Sequence[SourceSpec], *, log: Callable[[str], None] = print) -> list[DoctorReport]:
    """Run the data doctor on every source; print warnings, raise TrainingError on errors.

    Raises:
        DataError: a source's path does not exist.
        TrainingError: naming the first source with errors, with the doctor's table.
    """
    reports = []
    seen: dict[tuple[str, str | None, str], DoctorReport] = {}  # BOP splits of one root share a report
    for spec in specs:
        _require_exists(spec)
        key = (str(Path(spec.path).resolve()), spec.category_names, spec.kind)
        if key not in seen:
            seen[key] = run_doctor(spec.path, category_names=spec.category_names, label_filter=spec.label_filter())
        rep = seen[key]
        if rep.errors:
            raise TrainingError(
                f"data source {spec.label!r} ({spec.kind}, {spec.path}) failed the data doctor with "
                f"{len(rep.errors)} error(s); training would learn wrong labels.\n{rep.table()}\n"
                "  fix: correct the data as the table says (re-run `posevla doctor PATH` to check), drop the "
                "source from the config, or pass --no-doctor to train anyway (not recommended)"
            )
        if rep.warnings:
            log(f"[posevla] data doctor: {len(rep.warnings)} warning(s) for source {spec.label!r}:\n{rep.table()}")
        else:
            log(f"[posevla] data doctor: source {spec.label!r} ok ({rep.format})")
        reports.append(rep)
    return reports


def source_labels(src: LoadedSource) -> dict[str, np.ndarray]:
    """The values a source contributes to the token bins: its kept boxes (grounding sources, their own
    label filter, full views) or the camera-frame translations of its listed waypoints (``lerobot``)."""
    if src.scenes is not None:
        return collect_labels(src.scenes, src.spec.label_filter())
    return waypoint_labels(
        collect_waypoint_translations(src.robot, config=src.spec.trajectory_config(), frame_step=src.spec.frame_step)
    )


def fit_source_bins(
    loaded: Sequence[LoadedSource],
    *,
    n_trans_xy: int = 2048,
    n_trans_z: int = 2048,
    n_size: int = 2048,
    n_rot: int = 360,
    n_loc: int = 1024,
    description: str = "",
) -> BinSpec:
    """Quantile bins fitted on every source's labels (open question 1).

    Grounding sources give box translations, sizes and rotations (their own label filter, full views);
    ``lerobot`` sources give the camera-frame translations of the listed waypoints (x, y pooled into
    ``trans_xy``, z into ``trans_z``). Size bins need at least one grounding source.
    """
    parts, counts = [], []
    for src in loaded:
        lab = source_labels(src)
        what = "objects" if src.scenes is not None else "waypoints"
        counts.append(f"{len(lab['trans_z'])} {what} from {src.spec.label}")
        parts.append(lab)
    return fit_bins_on_labels(
        merge_labels(parts),
        n_trans_xy=n_trans_xy,
        n_trans_z=n_trans_z,
        n_size=n_size,
        n_rot=n_rot,
        n_loc=n_loc,
        description=description or "fitted on " + ", ".join(counts),
    )


def bins_coverage(loaded: Sequence[LoadedSource], bins: BinSpec) -> list[str]:
    """Warnings for sources whose translations fall outside given bins (e.g. stage-1 bins used in stage 2).

    Values outside a family's edges are clipped to its end bins when tokenised, so such labels are wrong;
    the warning names the source, the share of values outside and the fix.
    """
    out = []
    for src in loaded:
        try:
            lab = source_labels(src)
        except DataError as e:
            out.append(f"source {src.spec.label!r}: {e}")
            continue
        for fam in ("trans_xy", "trans_z", "size"):
            if fam not in lab or not len(lab[fam]):
                continue
            e = bins.edges(fam)
            share = float(np.mean((lab[fam] < e[0]) | (lab[fam] > e[-1])))
            if share > 0:
                out.append(
                    f"source {src.spec.label!r}: {100 * share:.1f}% of its {fam} labels lie outside the bins "
                    f"[{e[0]:.3f}, {e[-1]:.3f}] m and are clipped to the end bins; fit the bins on all stages' data "
                    "(`posevla fit-bins --data STAGE1 STAGE2`, then --bins for stage 1)"
                )
    return out


def _stream(n: int, q: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(epochs (q,), items (q,)) of step `step` in a source's stream of per-epoch permutations, q per step.

    A source at least as large as `q` follows :func:`batch_indices` (the last partial batch of an epoch
    is dropped); a smaller one cycles through several permutations within one step.
    """
    if n >= q:
        epoch, idx = batch_indices(n, q, seed, step)
        return np.full(q, epoch, np.int64), idx
    pos = step * q + np.arange(q, dtype=np.int64)
    epochs = pos // n
    items = np.array(
        [np.random.default_rng(stable_seed("order", seed, int(e))).permutation(n)[int(p % n)] for e, p in zip(epochs, pos)],
        np.int64,
    )
    return epochs, items


class Mixture:
    """Weighted mixture of example datasets whose batch of step k is a pure function of (seed, k).

    Args:
        datasets: the sources' example datasets (same :class:`ExampleSpec`).
        names: one label per dataset (metrics keys).
        batch_size: examples per step.
        seed: the run's seed; source 0 uses it as is, source i > 0 a seed derived from it.
        weights: per dataset a weight or ``None`` (= ``n ** exponent``).
        exponent: the default weight's exponent (spec: 0.43).
    """

    def __init__(
        self,
        datasets: Sequence[ExampleSource],
        names: Sequence[str],
        *,
        batch_size: int,
        seed: int,
        weights: Sequence[float | None] | None = None,
        exponent: float = WEIGHT_EXPONENT,
    ) -> None:
        if not datasets:
            raise ConfigError("a training run needs at least one data source")
        if len(names) != len(datasets) or len(set(names)) != len(names):
            raise ConfigError(f"data sources need distinct names, got {list(names)}; set SourceSpec.name")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        specs = {d.spec for d in datasets}
        if len(specs) != 1:
            raise ConfigError(f"all data sources must use the model's example layout, got {specs}")
        self.datasets = list(datasets)
        self.names = list(names)
        self.spec: ExampleSpec = self.datasets[0].spec
        self.batch_size = batch_size
        self.seed = seed
        self.exponent = exponent
        self.sizes = np.array([len(d) for d in self.datasets], np.int64)
        given = list(weights) if weights is not None else [None] * len(self.datasets)
        self.weights = np.array(
            [float(n) ** exponent if w is None else float(w) for n, w in zip(self.sizes, given)], np.float64
        )
        self.probs = self.weights / self.weights.sum()  # (S,)
        self.quota = np.floor(batch_size * self.probs + 1e-9).astype(np.int64)  # (S,) fixed slots per step
        # (S,) expected extra slots per step; sums to B - Σq
        self.extra = np.clip(batch_size * self.probs - self.quota, 0.0, None)
        self.seeds = [seed] + [stable_seed("source", seed, i) for i in range(1, len(self.datasets))]

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def categories(self) -> list[str]:
        """Sorted union of the grounding sources' categories."""
        return sorted({c for d in self.datasets for c in getattr(d, "categories", [])})

    def describe(self) -> list[dict[str, Any]]:
        """Per source: name, size, weight, share of the samples and fixed slots per batch."""
        return [
            {"name": n, "size": int(s), "weight": round(float(w), 4), "share": round(float(p), 4), "per_batch": int(q)}
            for n, s, w, p, q in zip(self.names, self.sizes, self.weights, self.probs, self.quota)
        ]

    def table(self) -> str:
        rows = self.describe()
        w = max(len(r["name"]) for r in rows)
        lines = [f"{'source'.ljust(w)} | {'size':>7} | {'weight':>8} | {'share':>6} | per batch (fixed)"]
        lines += [
            f"{r['name'].ljust(w)} | {r['size']:>7} | {r['weight']:>8.2f} | {r['share']:>6.3f} | "
            f"{self.batch_size * r['share']:.2f} ({r['per_batch']})"
            for r in rows
        ]
        return "\n".join(lines)

    def plan(self, step: int) -> list[tuple[int, int, int]]:
        """The ``(source, item, epoch)`` of every row of batch `step`, in row order."""
        rows: list[tuple[int, int, int]] = []
        for s, q in enumerate(self.quota):
            if q > 0:
                epochs, items = _stream(int(self.sizes[s]), int(q), self.seeds[s], step)
                rows += [(s, int(i), int(e)) for e, i in zip(epochs, items)]
        rest = self.batch_size - len(rows)
        if rest > 0:
            rng = np.random.default_rng(stable_seed("mix", self.seed, step))
            picks = rng.choice(len(self.datasets), size=rest, p=self.extra / self.extra.sum())
            for s in picks:
                n = int(self.sizes[s])
                # the epoch the source's stream is in, on average, at this step
                epoch = int(step * self.batch_size * self.probs[s] // n)
                rows.append((int(s), int(rng.integers(n)), epoch))
        return rows

    def batch(self, step: int, codec: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
        """Model batch of step `step` plus ``source`` (B,) int64."""
        plan = self.plan(step)
        examples = [self.datasets[s].example(i, e) for s, i, e in plan]
        out = collate(examples, codec, tokenizer, self.spec)
        out["source"] = torch.tensor([s for s, _, _ in plan], dtype=torch.int64)  # (B,)
        return out

    def batches(
        self,
        start_step: int,
        codec: Any,
        tokenizer: Any,
        *,
        num_workers: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """``(step, batch)`` from `start_step` on forever; identical for any `num_workers` / `prefetch`."""
        return stream_batches(
            _MixtureBatches(self, codec, tokenizer),
            start_step,
            prefetch=prefetch,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )


@dataclasses.dataclass
class _MixtureBatches:
    mixture: Mixture
    codec: Any
    tokenizer: Any

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return self.mixture.batch(step, self.codec, self.tokenizer)


def build_mixture(
    loaded: Sequence[LoadedSource],
    spec: ExampleSpec,
    *,
    batch_size: int,
    seed: int,
    negative_prob: float = 0.1,
    exponent: float = WEIGHT_EXPONENT,
) -> Mixture:
    """Example datasets for loaded sources (grounding or trajectories, pseudo views where due), mixed."""
    seeds = [seed] + [stable_seed("source", seed, i) for i in range(1, len(loaded))]
    datasets: list[ExampleSource] = []
    for src, s in zip(loaded, seeds):
        if src.scenes is not None:
            datasets.append(
                GroundingDataset(
                    src.scenes,
                    spec,
                    label_filter=src.spec.label_filter(),
                    negative_prob=negative_prob,
                    seed=s,
                    pseudo_views=src.spec.crops(src.scenes),
                )
            )
        else:
            datasets.append(
                TrajectoryDataset(src.robot, spec, config=src.spec.trajectory_config(), frame_step=src.spec.frame_step)
            )
    return Mixture(
        datasets,
        [src.spec.label for src in loaded],
        batch_size=batch_size,
        seed=seed,
        weights=[src.spec.weight for src in loaded],
        exponent=exponent,
    )


def per_source_metrics(
    out: dict[str, torch.Tensor], source: torch.Tensor, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean loss and token accuracy over each source's answer tokens in one batch (no second forward).

    Args:
        out: ``PoseVLM.compute_loss`` output with ``token_loss`` (N,), ``token_correct`` (N,) and
            ``token_row`` (N,), the batch row of each answer token.
        source: (B,) source index per batch row.
        names: source names by index.

    Returns:
        ``{name: {"loss", "token_acc", "samples", "tokens"}}`` for the sources present in the batch.
    """
    if "token_loss" not in out:
        return {}
    S = len(names)
    src = source.to(out["token_row"].device)[out["token_row"]]  # (N,) source of each answer token
    n_tok = torch.bincount(src, minlength=S)
    loss_sum = torch.bincount(src, weights=out["token_loss"].detach().float(), minlength=S)
    hit_sum = torch.bincount(src, weights=out["token_correct"].float(), minlength=S)
    n_rows = torch.bincount(source, minlength=S)
    n_tok, loss_sum, hit_sum, n_rows = (t.tolist() for t in (n_tok, loss_sum, hit_sum, n_rows))
    return {
        names[s]: {
            "loss": loss_sum[s] / n_tok[s],
            "token_acc": hit_sum[s] / n_tok[s],
            "samples": int(n_rows[s]),
            "tokens": int(n_tok[s]),
        }
        for s in range(S)
        if n_tok[s] > 0
    }
