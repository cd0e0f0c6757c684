"""Post-training examples: action spaces, chunk padding, normalisation statistics, collate (spec §2.3)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.data.action_space import ActionConfig, ee_vector, ee_vector_to_pose
from posevla.data.actions import ActionDataset, collate_actions, observation_inputs
from posevla.data.normalize import NormStats, load_norm_stats, save_norm_stats
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.data.collate import ExampleSpec
from posevla.data.grounding import prepare_view
from posevla.errors import CheckpointError, ConfigError, DataError
from posevla.geometry import quat_wxyz_to_matrix
from posevla.models.text import PoseTextTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
SPEC = ExampleSpec(image_size=64, num_views=3, n_image_tokens=16, prompt_len=16)
# The fixture's arm moves in a plane (z = 0.15) and turns about z only: those dims are constant by design.
EE = ActionConfig(chunk_size=4, constant_dims=("z", "R20", "R21"))
JOINTS = ActionConfig(space="joints", joint_key="action", chunk_size=4)


def _expected() -> list[dict]:
    spec = importlib.util.spec_from_file_location(
        "make_lerobot_v3_tiny", FIXTURE.parent / "make_lerobot_v3_tiny.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.expected()


@pytest.fixture(scope="module")
def ds():
    return load_lerobot_v3(FIXTURE)


@pytest.fixture(scope="module")
def tok():
    return PoseTextTokenizer.build_scratch()


# -- vectors and action spaces ------------------------------------------------------------------------------


def test_ee_vector_round_trip():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1])  # w >= 0, the convention ee_vector_to_pose returns
    pose = np.concatenate([rng.normal(size=(20, 3)), q], 1)
    v = ee_vector(pose, np.full((20, 1), 0.3))
    assert v.shape == (20, 10)
    assert np.allclose(
        v[:, 3:9], np.concatenate([quat_wxyz_to_matrix(q)[..., 0], quat_wxyz_to_matrix(q)[..., 1]], -1)
    )
    assert np.allclose(ee_vector_to_pose(v), pose, atol=1e-9)


def test_ee_space_chunk_padding_at_episode_end(ds):
    exp = _expected()
    ad = ActionDataset(ds, EE, SPEC)
    # observed targets are read one frame ahead: the last frame of each episode has no real action
    assert ad.index == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert ad.action_dim == ad.state_dim == 10
    assert ad.stats["actions"].names[:3] == ("x", "y", "z") and ad.stats["actions"].names[-1] == "gripper"
    e0 = exp[0]
    raw = ee_vector(e0["observation.ee_pose"], e0["observation.gripper"])  # (T=4, 10)
    ex = ad.example(2)  # episode 0, frame 2: targets frames 3, (4, 5, 6 past the end)
    assert ex.actions.shape == (4, 10) and ex.actions.dtype == np.float32
    assert ex.action_is_pad.tolist() == [False, True, True, True]
    np.testing.assert_allclose(ad.stats["actions"].denormalize(ex.actions), raw[[3, 3, 3, 3]], atol=1e-5)
    ex0 = ad.example(0)
    assert ex0.action_is_pad.tolist() == [False, False, False, True]
    np.testing.assert_allclose(ad.stats["actions"].denormalize(ex0.actions), raw[[1, 2, 3, 3]], atol=1e-5)
    # the state is the same 6D EE vector at frame t, normalised the same way
    np.testing.assert_allclose(ad.stats["state"].denormalize(ex.state), raw[2], atol=1e-5)
    assert ex.prompt == "pick up the red block" and ex.episode_index == 0 and ex.frame_index == 2


def test_joint_space_from_the_action_feature(ds):
    exp = _expected()
    ad = ActionDataset(ds, JOINTS, SPEC)
    assert len(ad) == 7  # commanded actions start at t: every frame has one
    assert ad.stats["actions"].names == ("action[0]", "action[1]", "action[2]", "action[3]")
    assert ad.stats["state"].names[0] == "observation.state[0]"
    ex = ad.example(5)  # episode 1 (3 frames), frame 1: actions 1, 2 then padding
    assert (ex.episode_index, ex.frame_index) == (1, 1)
    assert ex.action_is_pad.tolist() == [False, False, True, True]
    a = exp[1]["action"]
    np.testing.assert_allclose(ad.stats["actions"].denormalize(ex.actions), a[[1, 2, 2, 2]], atol=1e-6)
    np.testing.assert_allclose(
        ad.stats["state"].denormalize(ex.state), exp[1]["observation.state"][1], atol=1e-6
    )


def test_joint_space_from_observed_joints_and_stride(ds):
    # observation.* joints are targets one stride ahead; here observation.state stands in for joints
    cfg = ActionConfig(space="joints", joint_key="observation.state", chunk_size=3, stride=2)
    ad = ActionDataset(ds, cfg, SPEC)
    assert ad.index == [(0, 0), (0, 1), (1, 0)]
    ex = ad.example(0)
    assert ex.action_is_pad.tolist() == [False, True, True]  # frames 2, then 4 and 6 past the end (T = 4)
    s = _expected()[0]["observation.state"]
    np.testing.assert_allclose(ad.stats["actions"].denormalize(ex.actions), s[[2, 3, 3]], atol=1e-6)


def test_missing_joint_feature_names_it(ds):
    with pytest.raises(DataError, match="observation.joints"):
        ActionDataset(ds, ActionConfig(space="joints"), SPEC)
    with pytest.raises(ConfigError, match="space"):
        ActionConfig(space="cartesian")
    with pytest.raises(ConfigError, match="--action.chunk-size"):
        ActionConfig(chunk_size=0)


# -- normalisation statistics --------------------------------------------------------------------------------


def test_norm_stats_round_trip(ds, tmp_path):
    ad = ActionDataset(ds, EE, SPEC)
    st = ad.stats["actions"]
    assert st.constant == tuple(n in ("z", "R20", "R21") for n in st.names)
    assert all(st.std[i] == 1.0 for i, c in enumerate(st.constant) if c)
    x = np.random.default_rng(0).normal(size=(5, st.dim))
    np.testing.assert_allclose(st.denormalize(st.normalize(x)), x)
    path = save_norm_stats(tmp_path, ad.stats, action_space="ee_pose")
    assert path.name == "norm_stats.json"
    back, space = load_norm_stats(tmp_path)
    assert space == "ee_pose"
    for k in ("state", "actions"):
        assert back[k].names == ad.stats[k].names and back[k].constant == ad.stats[k].constant
        np.testing.assert_array_equal(back[k].mean, ad.stats[k].mean)
        np.testing.assert_array_equal(back[k].std, ad.stats[k].std)
    # normalised values: zero mean / unit std over the data for varying dims
    z = st.normalize(np.concatenate(ad._actions))
    varying = ~np.array(st.constant)
    np.testing.assert_allclose(z.mean(0)[varying], 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0)[varying], 1, atol=1e-9)


def test_degenerate_statistics_raise(ds, tmp_path):
    with pytest.raises(DataError, match=r"state dim 2 \('z'\) is constant.*\n.*constant_dims"):
        ActionDataset(ds, ActionConfig(chunk_size=4), SPEC)
    with pytest.raises(DataError, match=r"'R20'"):  # listing z alone is not enough
        ActionDataset(ds, ActionConfig(chunk_size=4, constant_dims=("z",)), SPEC)
    x = np.ones((4, 2))
    x[:, 0] = [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"actions dim 1 \('b'\)"):
        NormStats.compute("actions", x, ["a", "b"])
    assert NormStats.compute("actions", x, ["a", "b"], constant_dims=["actions.b"]).constant == (False, True)
    # exact names with brackets are not read as fnmatch character classes; patterns work too
    names = ["action[0]", "action[1]"]
    assert NormStats.compute("actions", x, names, constant_dims=["action[1]"]).constant == (False, True)
    assert NormStats.compute("actions", x, names, constant_dims=["action*"]).constant == (False, True)
    x[2, 0] = np.nan
    with pytest.raises(DataError, match=r"dim 0 \('a'\) is nan at sample 2"):
        NormStats.compute("actions", x, ["a", "b"], constant_dims=["b"])
    # stored statistics: NaN / zero std / missing feature / missing file -> CheckpointError naming them
    good = {"names": ["a"], "mean": [0.0], "std": [1.0]}
    for bad, msg in (
        ({**good, "std": [float("nan")]}, r"std of dim 0 \('a'\) is nan"),
        ({**good, "std": [0.0]}, "must be > 0"),
    ):
        (tmp_path / "norm_stats.json").write_text(
            json.dumps({"format": "posevla.norm_stats", "stats": {"state": good, "actions": bad}})
        )
        with pytest.raises(CheckpointError, match=msg):
            load_norm_stats(tmp_path)
    (tmp_path / "norm_stats.json").write_text(
        json.dumps({"format": "posevla.norm_stats", "stats": {"state": good}})
    )
    with pytest.raises(CheckpointError, match="no 'actions' statistics"):
        load_norm_stats(tmp_path)
    with pytest.raises(CheckpointError, match="no normalisation statistics"):
        load_norm_stats(tmp_path / "elsewhere")


# -- the shared transform chain and the collate --------------------------------------------------------------


def test_views_and_prompt_follow_the_training_chain(ds, tok):
    ad = ActionDataset(ds, EE, SPEC)
    ex = ad.example(1)
    obs = ad.observation(0, 1)
    ref = prepare_view(
        obs["observation.images.head"], obs["observation.depth.head"], obs["observation.cameras.head.K"], 64
    )
    np.testing.assert_array_equal(ex.prepared[0].pixels, ref.pixels)
    np.testing.assert_array_equal(ex.prepared[0].ray, ref.ray)
    np.testing.assert_array_equal(ex.prepared[0].depth, ref.depth)
    assert not ex.prepared[1].pixels.any() and ex.cameras == ["head", None, None]  # empty slots
    batch = collate_actions([ex], tok, SPEC, max_state_dim=32)
    text = tok.build_example(ex.prompt, None, n_image_tokens=48, prompt_len=16)
    assert batch["input_ids"][0].tolist() == text["input_ids"].tolist()
    assert int(batch["token_type_ids"].sum()) == 0


def test_collate_shapes(ds, tok):
    ad = ActionDataset(ds, EE, SPEC)
    batch = collate_actions([ad.example(i) for i in range(3)], tok, SPEC, max_state_dim=32, max_action_dim=32)
    P = 3 * 16 + 16
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "pixel_values",
        "ray",
        "depth",
        "prior_mask",
        "state",
        "actions",
        "action_is_pad",
    }
    assert batch["input_ids"].shape == (3, P)
    assert batch["pixel_values"].shape == (3, 3, 3, 64, 64) and batch["depth"].shape == (3, 3, 2, 64, 64)
    assert batch["state"].shape == (3, 32) and batch["state"].dtype == torch.float32
    assert not batch["state"][:, 10:].any()  # zero padding beyond Ds
    assert batch["actions"].shape == (3, 4, 10) and batch["action_is_pad"].dtype == torch.bool
    assert batch["prior_mask"].tolist() == [[1.0, 1.0]] * 3  # head depth present, ray always
    no_priors = collate_actions([ad.example(0)], tok, SPEC, max_state_dim=32, priors=False)
    assert not no_priors["prior_mask"].any()
    with pytest.raises(DataError, match="state has 10 dims.*at most 8"):
        collate_actions([ad.example(0)], tok, SPEC, max_state_dim=8)
    with pytest.raises(DataError, match="actions have 10 dims.*at most 6"):
        collate_actions([ad.example(0)], tok, SPEC, max_state_dim=32, max_action_dim=6)


def test_bad_observations_name_the_key(ds):
    ad = ActionDataset(ds, EE, SPEC)
    good = ad.observation(0, 0)
    kw = dict(
        cfg=EE, stats=ad.stats, cameras=["head"], image_size=64, num_views=3, image_sizes=ad.image_sizes
    )
    observation_inputs(good, **kw)

    def bad(change: dict, drop: str | None = None):
        obs = {**good, **change}
        if drop:
            del obs[drop]
        return obs

    cases = [
        (bad({}, drop="observation.images.head"), "observation.images.head", "missing"),
        (
            bad({"observation.images.head": good["observation.images.head"].astype(np.float32)}),
            "observation.images.head",
            "uint8",
        ),
        (
            bad({"observation.images.head": np.zeros((48, 64, 3), np.uint8)}),
            "observation.images.head",
            "64x48.*32x24",
        ),
        (bad({}, drop="observation.ee_pose"), "observation.ee_pose", "missing"),
        (bad({}, drop="observation.cameras.head.K"), "observation.cameras.head.K", "intrinsics"),
        (bad({"observation.gripper": np.array([np.nan], np.float32)}), "observation.gripper", "non-finite"),
        (bad({"observation.ee_pose": np.full(7, np.inf, np.float32)}), "observation.ee_pose", "non-finite"),
        (bad({}, drop="task"), "task", "instruction"),
    ]
    for obs, key, msg in cases:
        with pytest.raises(DataError, match=msg) as e:
            observation_inputs(obs, **kw)
        assert e.value.field == key, (key, e.value.field)
