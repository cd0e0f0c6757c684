"""The shared model-input transform: exact K under resize/pad, priors, labels in the model frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posevla.data.grounding import LabelFilter, box2d_to_model, prepare_view
from posevla.errors import DataError
from posevla.geometry import K_from_fovy, project_points


@pytest.mark.parametrize("wh", [(256, 192), (120, 200), (64, 64)])
def test_prepare_view_keeps_projection_exact(wh):
    W, H = wh
    K = K_from_fovy(np.deg2rad(50), W, H)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 2.0, (H, W)).astype(np.float32)
    pv = prepare_view(rgb, depth, K, 128)
    p = np.array([[0.05, -0.03, 0.8], [-0.1, 0.07, 1.3]])
    uv = project_points(K, p)
    uv_model = project_points(pv.K_model, p)
    sx, sy = pv.scale
    expected = np.stack([sx * (uv[:, 0] + 0.5) - 0.5 + pv.pad[0], sy * (uv[:, 1] + 0.5) - 0.5 + pv.pad[1]], -1)
    np.testing.assert_allclose(uv_model, expected, atol=1e-9)
    # the box of a point maps to the same normalised location
    box = np.array([uv[0, 0], uv[0, 1], uv[0, 0], uv[0, 1]])
    np.testing.assert_allclose(box2d_to_model(box, pv, 128)[:2], (uv_model[0] + 0.5) / 128, atol=1e-9)
    assert pv.pixels.shape == (3, 128, 128) and pv.pixels.min() >= -1 and pv.pixels.max() <= 1
    # ray map: zero on padding, (u-cx)/fx inside, third channel 1
    valid = pv.depth[1] > 0
    assert np.all(pv.ray[2][valid] == 1.0)
    if pv.pad[1] > 0:
        assert np.all(pv.ray[:, 0] == 0) and np.all(pv.depth[:, 0] == 0)
    u, v = 64, 64
    np.testing.assert_allclose(pv.ray[0, v, u], (u - pv.K_model[0, 2]) / pv.K_model[0, 0], rtol=1e-5)
    # depth is resized with nearest neighbour: values come from the source
    d = pv.depth[0][valid]
    assert d.min() >= 0.3 - 1e-6 and d.max() <= 2.0 + 1e-6


def test_prepare_view_without_depth_has_zero_prior():
    K = K_from_fovy(1.0, 64, 48)
    pv = prepare_view(np.zeros((48, 64, 3), np.uint8), None, K, 32)
    assert not pv.has_depth and np.all(pv.depth == 0)


@pytest.mark.parametrize(
    "rgb, depth, match",
    [
        (np.zeros((48, 64), np.uint8), None, "RGB image"),
        (np.zeros((48, 64, 3), np.float32), None, "uint8"),
        (np.zeros((48, 64, 4), np.uint8), None, "RGB image"),
        (np.zeros((48, 64, 3), np.uint8), np.zeros((10, 10), np.float32), "depth shape"),
    ],
)
def test_prepare_view_rejects_bad_images(rgb, depth, match):
    with pytest.raises(DataError, match=match):
        prepare_view(rgb, depth, K_from_fovy(1.0, 64, 48), 32)


def test_grounding_example_from_generated_scene(tiny_dataset):
    from posevla.data.formats.omni3d import load_omni3d
    from posevla.data.grounding import build_grounding_example, scene_categories
    from posevla.tokens import BinCounts, BinSpec, PoseCodec

    scenes = load_omni3d(tiny_dataset / "dataset.json")
    lf = LabelFilter()
    scene = next(s for s in scenes if scene_categories(s, lf))
    cat = scene_categories(scene, lf)[0]
    ex = build_grounding_example(scene, cat, image_size=64, num_views=3, label_filter=lf)
    assert ex.prompt == f"detect the {cat}"
    assert len(ex.views) == 3 and len(ex.prepared) == 3
    n_listed = sum(len(v.entries) for v in ex.views)
    assert n_listed >= 1
    for v in ex.views:
        z = [e.translation[2] for e in v.entries]
        assert z == sorted(z)  # near -> far
        assert (v.no_object == cat) == (not v.entries)
    bins = BinSpec.fit(np.linspace(-1, 1, 50), np.linspace(0.1, 2, 50), np.linspace(0.01, 0.4, 50), BinCounts(trans_xy=32, trans_z=32, size=32))
    codec = PoseCodec(bins)
    text = codec.serialize(ex.views)
    back = codec.parse(text)
    assert [len(v.entries) for v in back] == [len(v.entries) for v in ex.views]


def test_cached_views_and_prefetch_give_identical_batches(tiny_dataset):
    """The view cache and the prefetch thread change speed only: batches are bit-identical."""
    from posevla.data.fitting import collect_labels, fit_bins
    from posevla.tokens import BinCounts
    from posevla.data.collate import ExampleSpec
    from posevla.data.datasets import GroundingDataset, iterate_batches
    from posevla.data.formats.omni3d import load_omni3d
    from posevla.models import PoseTextTokenizer
    from posevla.tokens import PoseCodec

    scenes = load_omni3d(tiny_dataset / "dataset.json")
    codec = PoseCodec(fit_bins(collect_labels(scenes), BinCounts(trans_xy=16, trans_z=16, size=16, rot=36, loc=32)))
    tok = PoseTextTokenizer.build_scratch()
    tok.add_pose_tokens(codec.vocabulary() + [";"])
    spec = ExampleSpec(image_size=64, num_views=3, n_image_tokens=16, prompt_len=16)
    plain = GroundingDataset(scenes, spec, seed=3, cache_views=False)
    cached = GroundingDataset(scenes, spec, seed=3, cache_views=True)
    a = iterate_batches(plain, 2, 5, 0, codec, tok, prefetch=0)
    b = iterate_batches(cached, 2, 5, 0, codec, tok, prefetch=2)
    for _ in range(2 * len(plain) // 2 + 1):  # past one epoch, so cached views are reused
        (sa, ba), (sb, bb) = next(a), next(b)
        assert sa == sb and ba.keys() == bb.keys()
        for k in ba:
            assert torch.equal(ba[k], bb[k]), k
    b.close()


def test_prefetch_thread_reraises_data_errors(tiny_dataset):
    from posevla.data.collate import ExampleSpec
    from posevla.data.datasets import GroundingDataset, iterate_batches
    from posevla.data.formats.omni3d import load_omni3d

    scenes = load_omni3d(tiny_dataset / "dataset.json")
    spec = ExampleSpec(image_size=64, num_views=3, n_image_tokens=16, prompt_len=16)
    ds = GroundingDataset(scenes, spec)
    with pytest.raises(DataError, match="batch size"):
        next(iterate_batches(ds, 10_000, 0, 0, None, None, prefetch=2))
