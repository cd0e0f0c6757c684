"""Model-side example layout, the deterministic batch order, and collation into model batches.

The batch order is a pure function of (seed, step): batch `k` of epoch `e` is slice `k` of a
permutation seeded by (seed, e) (:func:`batch_indices`). A run resumed at step N therefore sees exactly the
batches a straight run sees, with no sampler state to save beyond the step counter. The random draws of a
training row are functions of (seed, step, row) too: the priors' modality dropout (:func:`prior_draws`) and
post-training's flow noise and time (:func:`flow_noise_and_time`), so any world size trains on the same draws.
:func:`collate` turns grounding and trajectory examples (same prefix layout) into one model batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from posevla.data.grounding import GroundingExample, stable_seed
from posevla.data.trajectory import TrajectoryExample
from posevla.errors import DataError
from posevla.models.config import PoseVLMConfig


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Model-side facts the data pipeline needs (taken from the model config)."""

    image_size: int
    num_views: int
    n_image_tokens: int  # per view
    prompt_len: int

    @classmethod
    def from_model(cls, cfg: PoseVLMConfig) -> ExampleSpec:
        """The layout of a model config (`posevla.models.PoseVLMConfig`)."""
        return cls(
            image_size=cfg.image_size,
            num_views=cfg.num_views,
            n_image_tokens=cfg.tokens_per_view,
            prompt_len=cfg.prompt_len,
        )


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> tuple[int, np.ndarray]:
    """(epoch, item indices) of training step `step` (0-based); drops the last partial batch."""
    per_epoch = num_items // batch_size
    if per_epoch == 0:
        raise DataError(
            f"batch size {batch_size} is larger than the dataset ({num_items} items)",
            fix="lower --batch-size or generate more scenes",
        )
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng(stable_seed("order", seed, epoch)).permutation(num_items)
    return epoch, perm[k * batch_size : (k + 1) * batch_size]


def prior_draws(seed: int, step: int, rows: Sequence[int] | range) -> torch.Tensor:
    """(len(rows), 2) float32 uniform draws in [0, 1) of the depth / ray modality dropout of batch `step`.

    A function of (seed, step, row), like the batch: a rank of a distributed run draws its rows alone and
    gets what one process draws for them (the model compares them with ``PoseVLMConfig.prior_dropout``).
    """
    u = [np.random.default_rng(stable_seed("prior-drop", seed, step, r)).random(2) for r in rows]
    return torch.from_numpy(np.asarray(u, dtype=np.float32).reshape(-1, 2))


def flow_noise_and_time(
    seed: int, step: int, row: int, horizon: int, action_dim: int, beta: tuple[float, float], time_min: float
) -> tuple[np.ndarray, float]:
    """The flow-matching noise ε (horizon, action_dim) float32 and flow time τ of row `row` of batch `step`.

    A pure function of (seed, step, row), like the batch itself, so a distributed run (each rank drawing only
    its rows), a resumed run and a one-process run train on the same noise. τ = time_min + (1 − time_min)·
    Beta(α, β), the distribution of `posevla.models.flow_matching.sample_flow_time`.
    """
    rng = np.random.default_rng(stable_seed("flow", seed, step, row))
    noise = rng.standard_normal((horizon, action_dim)).astype(np.float32)  # (H, A_max)
    tau = time_min + (1.0 - time_min) * float(rng.beta(beta[0], beta[1]))
    return noise, tau


def collate(
    examples: Sequence[GroundingExample | TrajectoryExample],
    codec,
    tokenizer,
    spec: ExampleSpec,
    *,
    with_answer: bool = True,
) -> dict[str, torch.Tensor]:
    """Turn examples into one model batch (see PoseVLM.compute_loss for the keys).

    Grounding and trajectory examples collate alike (same prefix layout; answers right-padded), so one
    batch may mix both.
    """
    n_img = spec.n_image_tokens * spec.num_views
    texts = [
        tokenizer.build_example(
            ex.prompt,
            codec.serialize(ex.views) if with_answer else None,
            n_image_tokens=n_img,
            prompt_len=spec.prompt_len,
        )
        for ex in examples
    ]
    batch = tokenizer.collate(texts)
    batch["pixel_values"] = torch.from_numpy(np.stack([[p.pixels for p in ex.prepared] for ex in examples]))
    batch["ray"] = torch.from_numpy(np.stack([[p.ray for p in ex.prepared] for ex in examples]))
    batch["depth"] = torch.from_numpy(np.stack([[p.depth for p in ex.prepared] for ex in examples]))
    batch["prior_mask"] = torch.tensor(
        [[float(any(p.has_depth for p in ex.prepared)), 1.0] for ex in examples], dtype=torch.float32
    )  # (B, 2): [depth, ray]
    return batch
