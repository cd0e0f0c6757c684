"""Pose-token tags: every image token carries the embeddings of the pose tokens that name its place.

A model trained from scratch has to discover two things before its pose answers can depend on the pixels:
*where* the asked object is (attention from the answer to the right image tokens) and *how to say* what
it finds there in pose tokens (a read-out from image features to ``<loc>``/``<transZ>``/``<transXY>``
logits). Each is useless without the other, so a small model sits on the per-category marginals for a
long time (measured: the loss of the tiny model is unchanged when its images are swapped across the batch,
after 2,400 steps). PaliGemma starts with the read-out for ``<loc>`` already learnt; a scratch model does
not.

`PoseTokenTags` supplies the read-out: to the projected feature of image token (r, c) it adds, in the
language model's input space (× √hidden, like a text token),

* ``<image{k}>``, the answer's delimiter of the token's camera slot k, when there is more than one slot (so
  "the entries after ``<image1>``" and "the image tokens of slot 1" share a code; without it the views'
  tokens of one grid cell carry identical tags),
* ``<loc(u)>`` and ``<loc(v)>`` of the token's patch centre (u, v in the model-input image, the frame the
  answer's anchors use), and, where the depth prior is present,
* ``<transZ(z)>``, ``<transXY(x)>``, ``<transXY(y)>`` of the nearest surface point seen in the patch
  (camera frame: z from the depth map, x, y = ray × z; x, y also need the ray prior).

Each of the six is passed through its own fixed signed permutation of the hidden axis, so u, v, x, y and z
stay separable in one vector; the embedding rows are the model's own (tied) token embeddings, so attending
to the right image token and copying its value already scores the right pose tokens. Tags follow the
priors' modality dropout and absence: a dropped depth map drops the z / x, y tags. The tags have no
parameters of their own; gradients reach the token embeddings through them.

Used by the ``tiny`` configuration (``PoseVLMConfig.pose_tags``); the paper's PaliGemma-3B does not have them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from posevla.errors import ConfigError

__all__ = ["PoseTokenTags", "ordinal_token_codes"]

#: Order of the signed permutations (one per tagged quantity).
TAGGED = ("loc_u", "loc_v", "trans_z", "trans_x", "trans_y", "view")


class PoseTokenTags(nn.Module):
    """Parameter-free tagger; call `set_bins` once the pose bins are known.

    Args:
        hidden: language-model width (rows of the token embedding).
        patch: SigLIP patch size in model-input pixels.
        image_size: model-input side in pixels (a multiple of `patch`).
        seed: seed of the signed permutations (fixed: a checkpoint does not store them).
    """

    def __init__(self, hidden: int, patch: int, image_size: int, seed: int = 0) -> None:
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.hidden, self.patch, self.grid = hidden, patch, image_size // patch
        g = torch.Generator().manual_seed(seed)
        perms = torch.stack([torch.randperm(hidden, generator=g) for _ in TAGGED])  # (6, D)
        signs = torch.randint(0, 2, (len(TAGGED), hidden), generator=g).float() * 2 - 1  # (6, D)
        self.register_buffer("perms", perms, persistent=False)
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("z_edges", torch.empty(0), persistent=False)
        self.register_buffer("xy_edges", torch.empty(0), persistent=False)
        self.n_loc = 0

    def set_bins(self, n_loc: int, trans_xy_edges, trans_z_edges) -> None:
        """Bin layout of the pose tokens (from the run's `BinSpec`)."""
        dev = self.perms.device
        self.n_loc = int(n_loc)
        self.xy_edges = torch.tensor(np.asarray(trans_xy_edges, np.float32), device=dev)
        self.z_edges = torch.tensor(np.asarray(trans_z_edges, np.float32), device=dev)

    @property
    def ready(self) -> bool:
        return self.n_loc > 0 and self.z_edges.numel() > 1 and self.xy_edges.numel() > 1

    def _rows(self, embed: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
        """Embedding rows `ids` (any shape) under signed permutation `k`: (..., D)."""
        return embed[ids][..., self.perms[k]] * self.signs[k].to(embed.dtype)

    def forward(
        self,
        embed: torch.Tensor,
        family_ids: list[torch.Tensor],
        view_ids: torch.Tensor,
        num_images: int,
        ray: torch.Tensor | None,
        depth: torch.Tensor | None,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """Tags to add to the projected image features.

        Args:
            embed: (vocab, D) token embedding matrix (tied with the LM head).
            family_ids: token ids in bin order per family, ``[loc, transXY, transZ, ...]``
                (`PoseVLM._family_bins`).
            view_ids: (V,) token id of each camera slot's delimiter ``<image{k}>``.
            num_images: B·V, the number of images whose features the tags are for (slot k = image i % V).
            ray: (B·V, 3, S, S) ray maps or None; depth: (B·V, 2, S, S) metres + validity or None.
            keep: (B·V, 2) float, 1 where the depth / ray prior is used (after modality dropout).

        Returns:
            (B·V, N, D) tags, already at text-token scale (× √D).
        """
        if not self.ready:
            raise ConfigError(
                "pose tags need the pose bins: call PoseVLM.set_pose_bins(bins) after building the model"
            )
        loc_ids, xy_ids, z_ids = family_ids[0], family_ids[1], family_ids[2]
        if loc_ids.numel() != self.n_loc:
            raise ConfigError(f"{loc_ids.numel()} <loc> tokens in the vocabulary but n_loc = {self.n_loc}")
        G, P, D = self.grid, self.patch, embed.shape[1]
        dev = embed.device
        # patch centres in the normalised model-input frame of the anchors: (j + 1/2) / G
        b = torch.clamp(((torch.arange(G, device=dev) + 0.5) / G * self.n_loc).floor().long(), 0, self.n_loc - 1)
        u = self._rows(embed, loc_ids[b], 0)  # (G, D) by column
        v = self._rows(embed, loc_ids[b], 1)  # (G, D) by row
        V = view_ids.numel()
        if num_images % V:
            raise ConfigError(f"{num_images} images is not a whole number of {V}-view samples")
        grid = (v[:, None, :] + u[None, :, :]).reshape(1, 1, G * G, D)
        if V > 1:  # one slot needs no name
            grid = grid + self._rows(embed, view_ids, 5)[None, :, None, :]  # (1, V, N, D)
        tags = grid.expand(num_images // V, V, -1, -1).reshape(num_images, G * G, D)  # (BV, N, D)
        if depth is not None:
            d = depth[:, 0].float()  # (BV, S, S) metres
            valid = depth[:, 1] > 0
            d = torch.where(valid, d, torch.full_like(d, float("inf")))
            z, arg = _patch_pixels(d[:, None], P)[:, 0].min(-1)  # (BV, N) nearest surface in each patch
            has = torch.isfinite(z) & (keep[:, 0:1] > 0)  # (BV, N)
            z = torch.where(has, z, torch.ones_like(z))
            zb = torch.searchsorted(self.z_edges[1:-1].contiguous(), z.contiguous(), right=True)
            tags = tags + self._rows(embed, z_ids[zb], 2) * has[..., None].to(embed.dtype)
            if ray is not None:
                r = _patch_pixels(ray[:, :2].float(), P)  # (BV, 2, N, P²)
                r = torch.gather(r, 3, arg[:, None, :, None].expand(-1, 2, -1, 1))[..., 0]  # (BV, 2, N)
                xy = r * z[:, None]  # camera-frame x, y of the nearest surface point
                has_xy = has & (keep[:, 1:2] > 0)
                xb = torch.searchsorted(self.xy_edges[1:-1].contiguous(), xy.contiguous(), right=True)
                m = has_xy[..., None].to(embed.dtype)
                tags = tags + (self._rows(embed, xy_ids[xb[:, 0]], 3) + self._rows(embed, xy_ids[xb[:, 1]], 4)) * m
        return tags * math.sqrt(D)


def _patch_pixels(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, S, S) → (B, C, N, p²): the pixels of each patch, patches in SigLIP's row-major order (as
    `PatchEmbedMlp.patchify`, which flattens channels and pixels together)."""
    B, C = x.shape[:2]
    u = nn.functional.pixel_unshuffle(x, patch)  # (B, C·p², S/p, S/p), channel-major
    return u.reshape(B, C, patch * patch, -1).transpose(2, 3)


def ordinal_token_codes(n: int, dim: int, norm: float, *, circular: bool = False, seed: int = 0) -> torch.Tensor:
    """(n, dim) embeddings for an ordered token family: neighbours alike, distant bins nearly orthogonal.

    Radial basis functions over the bin index (24 centres, width max(n/24, 2); wrapped for `circular` families such
    as rotation) plus a little noise, through a fixed random projection, centred, rows scaled to `norm`.
    """
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(n, dtype=torch.float32)
    n_c = 24
    centres = torch.linspace(0, n - 1, n_c) if not circular else torch.arange(n_c) * (n / n_c)
    width = max(n / n_c, 2.0)
    diff = k[:, None] - centres[None]  # (n, C)
    if circular:
        diff = torch.remainder(diff + n / 2, n) - n / 2
    feats = torch.exp(-0.5 * (diff / width) ** 2)
    feats = torch.cat([feats, 0.3 * torch.randn(n, 16, generator=g)], 1)  # (n, C + 16)
    codes = feats @ torch.randn(feats.shape[1], dim, generator=g)  # (n, dim)
    codes = codes - codes.mean(0)
    return codes / codes.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm
