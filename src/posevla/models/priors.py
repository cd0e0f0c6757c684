"""Patch embedders for the geometry priors (spec §1.2): ray map (3 ch) and depth (2 ch: metres, validity).

`PatchEmbedMlp` is the DUSt3R/Pow3r-style ``PatchEmbed_Mlp``: PixelUnshuffle(p) turns each p×p patch into a
vector of C·p² values, a per-patch MLP maps it to the SigLIP width, and the result is laid out as
(B, N_patches, D) in **row-major patch order** (patch (r, c) at index r·(S/p) + c). That is the order of
SigLIP's patch embedding (``Conv2d(stride=p)`` → ``flatten(2).transpose(1, 2)``), so token i of the prior
lines up with SigLIP token i and the two can simply be added (tests check the alignment).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchEmbedMlp"]


class PatchEmbedMlp(nn.Module):
    """PixelUnshuffle(patch) → Linear(in_ch·p², 4·out_dim) → GELU → Linear(4·out_dim, out_dim) → LayerNorm.

    Input (B, in_ch, S, S) with S a multiple of `patch`; output (B, (S/p)², out_dim). PyTorch default init
    (spec: the embedders are new, randomly initialised modules).

    The closing LayerNorm keeps the prior on the same scale as SigLIP's (post-LayerNorm) output it is added
    to. Without it, the ray embedding (which is the same for every image of a camera) grew to ~25× the
    size of the image features within 1,500 tiny-model steps, the pixels drowned in it, and the model
    stopped looking at them (its loss became invariant to permuting the images across the batch).
    """

    def __init__(self, in_ch: int, patch: int, out_dim: int, hidden_mult: int = 4) -> None:
        super().__init__()
        self.in_ch, self.patch, self.out_dim = in_ch, patch, out_dim
        self.unshuffle = nn.PixelUnshuffle(patch)
        self.fc1 = nn.Linear(in_ch * patch * patch, hidden_mult * out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_mult * out_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) → (B, N, C·p²); feature index c·p² + i·p + j for pixel (i, j) of the patch."""
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"expected (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of patch {self.patch}")
        return self.unshuffle(x).flatten(2).transpose(1, 2)  # (B, C·p², h, w) → (B, h·w, C·p²)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.fc1.weight.dtype)
        return self.norm(self.fc2(self.act(self.fc1(self.patchify(x)))))  # (B, N, out_dim)
