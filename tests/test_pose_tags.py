"""Pose-token tags and ordinal token init (posevla.models.pose_tags)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from posevla.errors import ConfigError
from posevla.models import PoseVLM, get_model_config
from posevla.models.pose_tags import PoseTokenTags, ordinal_token_codes
from posevla.tokens import BinCounts, BinSpec, PoseCodec


@pytest.fixture(scope="module")
def bins() -> BinSpec:
    rng = np.random.default_rng(0)
    return BinSpec.fit(
        rng.normal(0, 0.3, 400), rng.uniform(0.2, 2.0, 400), rng.uniform(0.02, 0.4, 400),
        BinCounts(trans_xy=16, trans_z=16, size=8, rot=12, loc=32), description="test",
    )


@pytest.fixture(scope="module")
def model(bins) -> PoseVLM:
    torch.manual_seed(0)
    cfg = get_model_config("tiny", image_size=32, patch_size=16, num_views=1, prompt_len=8)
    return PoseVLM.build(cfg, None, PoseCodec(bins).vocabulary(), bins=bins).eval()


def _signed(model: PoseVLM, k: int, row: torch.Tensor) -> torch.Tensor:
    t = model.pose_tags
    return row[t.perms[k]] * t.signs[k]


def test_tags_name_the_patch_place_and_its_nearest_surface(model, bins):
    """Image token (r, c) gets <loc> of its centre (u from c, v from r) and the bins of the nearest surface
    point: z from the depth map, x, y = ray × z, each under its own signed permutation, × √D."""
    S, G = 32, 2
    E = model.hf.get_input_embeddings().weight.detach()
    loc, xy, zf = model._family_bins(E.device)[:3]
    depth = torch.zeros(1, 2, S, S)
    depth[0, 0] = 1.5
    depth[0, 0, 20, 5] = 0.4  # nearest point of patch (1, 0)
    depth[0, 1] = 1.0
    ray = torch.zeros(1, 3, S, S)
    ray[0, 0], ray[0, 1], ray[0, 2] = 0.1, -0.2, 1.0
    ray[0, 0, 20, 5], ray[0, 1, 20, 5] = 0.5, 0.25
    with torch.no_grad():
        tags = model.pose_tags(E, [loc, xy, zf], model._view_ids(1, E.device), 1, ray, depth, torch.ones(1, 2))
    D = E.shape[1]
    for r in range(G):
        for c in range(G):
            lb = lambda i: int(math.floor((i + 0.5) / G * bins.n_loc))  # noqa: E731
            if (r, c) == (1, 0):
                x, y, z = 0.5 * 0.4, 0.25 * 0.4, 0.4
            else:
                x, y, z = 0.1 * 1.5, -0.2 * 1.5, 1.5
            want = (  # one slot: no slot tag
                _signed(model, 0, E[loc[lb(c)]])
                + _signed(model, 1, E[loc[lb(r)]])
                + _signed(model, 2, E[zf[int(bins.encode("trans_z", z))]])
                + _signed(model, 3, E[xy[int(bins.encode("trans_xy", x))]])
                + _signed(model, 4, E[xy[int(bins.encode("trans_xy", y))]])
            ) * math.sqrt(D)
            torch.testing.assert_close(tags[0, r * G + c], want)


def test_tags_follow_the_priors(model):
    """No depth (absent, dropped or invalid): only the <loc> tags; no ray: no x, y tags."""
    S = 32
    E = model.hf.get_input_embeddings().weight.detach()
    fams = model._family_bins(E.device)
    views = model._view_ids(1, E.device)
    depth = torch.ones(1, 2, S, S)
    ray = torch.ones(1, 3, S, S)
    with torch.no_grad():
        loc_only = model.pose_tags(E, fams, views, 1, None, None, torch.ones(1, 2))
        dropped = model.pose_tags(E, fams, views, 1, ray, depth, torch.tensor([[0.0, 1.0]]))
        invalid = model.pose_tags(E, fams, views, 1, ray, depth * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.ones(1, 2))
        no_ray = model.pose_tags(E, fams, views, 1, None, depth, torch.ones(1, 2))
        no_ray_kept = model.pose_tags(E, fams, views, 1, ray, depth, torch.tensor([[1.0, 0.0]]))
        full = model.pose_tags(E, fams, views, 1, ray, depth, torch.ones(1, 2))
    torch.testing.assert_close(dropped, loc_only)
    torch.testing.assert_close(invalid, loc_only)
    torch.testing.assert_close(no_ray, no_ray_kept)
    assert not torch.allclose(no_ray, loc_only)
    assert not torch.allclose(full, no_ray)


def test_tags_make_image_features_depend_on_depth(model, bins):
    """Through PoseVLM.image_features: moving a surface changes exactly the tokens of its patch."""
    S = 32
    px = torch.zeros(1, 1, 3, S, S)
    depth = torch.ones(1, 1, 2, S, S)
    depth2 = depth.clone()
    depth2[0, 0, 0, 0:16, 16:32] = 0.3  # patch (0, 1) only
    ray = torch.zeros(1, 1, 3, S, S)
    with torch.no_grad():
        a = model.image_features(px, ray, depth, torch.ones(1, 2))
        b = model.image_features(px, ray, depth2, torch.ones(1, 2))
    changed = (a - b).abs().amax(-1)[0] > 1e-6  # (N,)
    # the tags and the depth prior's own embedder both see only that patch: nothing else may change
    assert changed.tolist() == [False, True, False, False]


def test_tags_need_bins(bins):
    cfg = get_model_config("tiny", image_size=32, num_views=1, prompt_len=8)
    m = PoseVLM.build(cfg, None, PoseCodec(bins).vocabulary())  # no bins given
    with pytest.raises(ConfigError, match="set_pose_bins"):
        m.image_features(torch.zeros(1, 1, 3, 32, 32))
    m.set_pose_bins(bins)
    assert m.image_features(torch.zeros(1, 1, 3, 32, 32)).shape == (1, 4, cfg.text_hidden)


def test_view_tags_tell_the_camera_slots_apart(bins):
    """Same pixels in two slots: the tokens differ by the slot's <image{k}> code, the same in every cell."""
    torch.manual_seed(0)
    cfg = get_model_config("tiny", image_size=32, num_views=2, prompt_len=8)
    m = PoseVLM.build(cfg, None, PoseCodec(bins).vocabulary(), bins=bins).eval()
    with torch.no_grad():  # the delimiters start alike (mean init); make them distinct as training does
        emb = m.hf.get_input_embeddings().weight
        emb[m._view_ids(2, emb.device)] = torch.randn(2, emb.shape[1]) * 0.2
    px = torch.zeros(1, 2, 3, 32, 32)
    with torch.no_grad():
        f = m.image_features(px)  # (2, 4, D)
    E = m.hf.get_input_embeddings().weight.detach()
    d = (_signed(m, 5, E[m.tokenizer.token_to_id("<image1>")]) - _signed(m, 5, E[m.tokenizer.token_to_id("<image0>")]))
    assert d.abs().max() > 0.1
    for n in range(4):
        torch.testing.assert_close(f[1, n] - f[0, n], d * math.sqrt(E.shape[1]), atol=1e-5, rtol=1e-4)


def test_tags_module_validates_sizes():
    with pytest.raises(ConfigError, match="multiple"):
        PoseTokenTags(16, 16, 40)


def test_ordinal_codes_are_smooth_and_distinct():
    c = ordinal_token_codes(64, 128, 2.0)
    cos = torch.nn.functional.normalize(c, dim=1) @ torch.nn.functional.normalize(c, dim=1).T
    assert torch.allclose(c.norm(dim=1), torch.full((64,), 2.0), atol=1e-5)
    assert cos[10, 11] > 0.4 > 0.2 > cos[10, 40].abs()  # neighbours alike, far bins not
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    circ, line = unit(ordinal_token_codes(72, 128, 1.0, circular=True)), unit(ordinal_token_codes(72, 128, 1.0))
    assert (circ[0] @ circ[71]) > 0.4 > 0.2 > (circ[0] @ circ[36]).abs()  # rotation wraps around ±π
    assert (line[0] @ line[71]) < 0.2  # a linear family does not


def test_ordinal_init_only_for_scratch_value_families(model, bins):
    """Scratch tiny: each value family's rows are distinct, smooth codes; the paper's mean init makes them alike."""
    E = model.hf.get_input_embeddings().weight.detach()
    loc = model._family_bins(E.device)[0]
    rows = torch.nn.functional.normalize(E[loc], dim=1)
    assert (rows[5] @ rows[6]) > 0.3 and (rows[5] @ rows[6]) - (rows[5] @ rows[25]) > 0.4  # 32 bins: coarse
    mean_cfg = model.cfg.replace(pose_token_init="mean")
    m2 = PoseVLM.build(mean_cfg, None, PoseCodec(bins).vocabulary(), bins=bins)
    E2 = m2.hf.get_input_embeddings().weight.detach()
    spread = (E2[loc] - E2[loc].mean(0)).abs().max()
    assert spread < 1e-3  # the paper's mean init: every new row alike
    with pytest.raises(ConfigError, match="pose_token_init"):
        model.cfg.replace(pose_token_init="random")


def test_tags_refuse_bins_that_do_not_match_the_vocabulary(bins):
    """Bins with another <loc> count than the vocabulary's: a clear error, not misaligned tags."""
    cfg = get_model_config("tiny", image_size=32, num_views=1, prompt_len=8)
    m = PoseVLM.build(cfg, None, PoseCodec(bins).vocabulary(), bins=bins)
    m.pose_tags.set_bins(bins.n_loc * 2, bins.edges("trans_xy"), bins.edges("trans_z"))
    with pytest.raises(ConfigError, match="<loc> tokens in the vocabulary but n_loc"):
        m.image_features(torch.zeros(1, 1, 3, 32, 32))
