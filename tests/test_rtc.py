"""Real-time chunking: the soft prefix mask and the guided inpainting sampler (`posevla.models.rtc`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from posevla.errors import ConfigError, DataError
from posevla.models.config import get_expert_config, get_model_config
from posevla.models.pose_vla import PoseVLA
from posevla.models.rtc import guidance_weight, sample_actions_rtc, soft_prefix_weights

torch.set_num_threads(1)

VLM_CFG = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, pose_tags=False)
H, A = 8, 5


@pytest.fixture(scope="module")
def model() -> PoseVLA:
    torch.manual_seed(0)
    return PoseVLA.build(VLM_CFG.replace(use_priors=False), get_expert_config("tiny", chunk_size=H)).eval()


@pytest.fixture(scope="module")
def batch(model) -> dict[str, torch.Tensor]:
    b = model.cfg.fake_batch(2, model.vlm.cfg, model.vlm.tokenizer, state_dim=4, action_dim=A, seed=3,
                             prompts=["reach the goal", "press"], priors=False)
    b.pop("actions")
    return b


def _noise(model, B=2, seed=1):
    return torch.randn(B, H, model.cfg.max_action_dim, generator=torch.Generator().manual_seed(seed))


# -- weights -------------------------------------------------------------------------------------------------


def test_soft_prefix_weights_values():
    w = soft_prefix_weights(16, 2, 8)
    assert w.shape == (16,)
    np.testing.assert_array_equal(w[:2], 1.0)
    np.testing.assert_array_equal(w[8:], 0.0)  # H - s = 8: the old chunk has no actions there
    mid = w[2:8]
    assert np.all(np.diff(mid) < 0) and np.all((mid > 0) & (mid < 1))  # strictly decaying inside (0, 1)
    c = (16 - 8 - 2) / (16 - 8 - 2 + 1)
    assert math.isclose(w[2], c * (math.exp(c) - 1) / (math.e - 1))
    np.testing.assert_array_equal(soft_prefix_weights(4, 0, 4), 0.0)  # no overlap at all
    np.testing.assert_array_equal(soft_prefix_weights(4, 3, 1), [1, 1, 1, 0])  # d = H - s: all frozen


@pytest.mark.parametrize("args", [(8, 5, 4), (8, 0, 9), (8, -1, 2), (8, 1, 0), (0, 0, 1), (8, 1.5, 2)])
def test_soft_prefix_weights_bad_args(args):
    with pytest.raises(ConfigError):
        soft_prefix_weights(*args)


def test_guidance_weight():
    assert guidance_weight(1.0, 5.0) == 5.0  # pure noise: capped at β
    assert guidance_weight(0.0, 5.0) == 0.0
    tau = 0.3
    r2 = tau**2 / (tau**2 + (1 - tau) ** 2)
    assert math.isclose(guidance_weight(tau, 100.0), tau / ((1 - tau) * r2))
    assert guidance_weight(tau, 0.5) == 0.5


# -- sampler -------------------------------------------------------------------------------------------------


def test_zero_weights_equal_unguided_sampler(model, batch):
    noise = _noise(model)
    prefix = torch.randn(2, H, model.cfg.max_action_dim)
    out = sample_actions_rtc(model, batch, noise=noise, prefix_actions=prefix, prefix_weights=np.zeros(H),
                             num_steps=4, action_dim=A)
    assert out.shape == (2, H, A)
    # exactly the plain Euler loop of `expert.velocity` calls ...
    plain = model.sample_actions(batch, noise=noise, num_steps=4, action_dim=A, reuse_prefix=False)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    # ... and the default (fused) sampler up to float rounding
    fused = model.sample_actions(batch, noise=noise, num_steps=4, action_dim=A)
    torch.testing.assert_close(out, fused, rtol=1e-5, atol=1e-5)
    assert not model.training


def test_guidance_pulls_the_chunk_to_the_prefix(model, batch):
    noise = _noise(model, seed=5)
    free = model.sample_actions(batch, noise=noise, num_steps=5)  # (B, H, A_max)
    target = torch.zeros_like(free)
    target[..., :A] = torch.linspace(-1.5, 1.5, H)[None, :, None] + 0.3 * torch.randn(2, H, A)
    d = 3
    guided = sample_actions_rtc(model, batch, noise=noise, prefix_actions=target, prefix_weights=np.ones(H),
                                num_steps=5, max_guidance=50.0, action_dim=A)
    err_free = (free[:, :d, :A] - target[:, :d, :A]).norm()
    err_guided = (guided[:, :d] - target[:, :d, :A]).norm()
    assert err_guided < 0.5 * err_free
    soft = sample_actions_rtc(model, batch, noise=noise, prefix_actions=target,
                              prefix_weights=soft_prefix_weights(H, d, 2), num_steps=5, action_dim=A)
    assert (soft[:, :d] - target[:, :d, :A]).norm() < err_free


def test_bad_arguments(model, batch):
    noise = _noise(model)
    A_max = model.cfg.max_action_dim
    ok = dict(noise=noise, prefix_actions=torch.zeros(2, H, A_max), prefix_weights=np.ones(H), num_steps=2)
    with pytest.raises(DataError, match="prefix_actions"):
        sample_actions_rtc(model, batch, **{**ok, "prefix_actions": torch.zeros(2, H - 1, A_max)})
    bad = torch.zeros(2, H, A_max)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="prefix_actions"):
        sample_actions_rtc(model, batch, **{**ok, "prefix_actions": bad})
    with pytest.raises(DataError, match="prefix_weights"):
        sample_actions_rtc(model, batch, **{**ok, "prefix_weights": np.ones(H + 1)})
    with pytest.raises(DataError, match="prefix_weights"):
        sample_actions_rtc(model, batch, **{**ok, "prefix_weights": -np.ones(H)})
    with pytest.raises(DataError, match="noise"):
        sample_actions_rtc(model, batch, **{**ok, "noise": noise[:, :2]})
    with pytest.raises(ConfigError, match="max_guidance"):
        sample_actions_rtc(model, batch, **ok, max_guidance=float("inf"))
    with pytest.raises(ConfigError, match="num_steps"):
        sample_actions_rtc(model, batch, **{**ok, "num_steps": 0})
    with pytest.raises(ConfigError, match="action_dim"):
        sample_actions_rtc(model, batch, **ok, action_dim=A_max + 1)


# -- Policy.infer with an action prefix ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_and_obs(tmp_path_factory):
    """A 2-step post-trained tiny policy on the LeRobot fixture (as in test_policy) and one observation."""
    import dataclasses
    from pathlib import Path

    from posevla.data.action_space import ActionConfig
    from posevla.data.actions import ActionDataset
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.policy import Policy
    from posevla.training.config import DataConfig
    from posevla.training.configs import get_config
    from posevla.training.trainer import train

    fixture = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
    cfg = get_config("posttrain-tiny")
    out = tmp_path_factory.mktemp("rtc_policy") / "run"
    train(dataclasses.replace(
        cfg, init_checkpoint=None, data=DataConfig(train_data=str(fixture)), out_dir=str(out), steps=2,
        batch_size=2, save_every=2, log_every=1, optim=dataclasses.replace(cfg.optim, warmup_steps=1),
        progress=False, action=ActionConfig(constant_dims=("z", "R20", "R21")),
    ))
    pol = Policy.from_checkpoint(out, device="cpu", precision="fp32")
    data = ActionDataset(load_lerobot_v3(fixture), pol.action_cfg, pol.spec, pol.stats)
    return pol, data.observation(0, 1)


def test_policy_infer_with_action_prefix(policy_and_obs):
    pol, obs = policy_and_obs
    Hp, Ap = pol.chunk_size, pol.action_dim
    free = pol.infer(obs, seed=3, num_steps=4)
    assert "rtc" not in free
    rng = np.random.default_rng(0)
    k, d = 8, 3
    stats = pol.stats["actions"]
    prefix = (stats.mean + stats.std * rng.normal(size=(k, Ap))).astype(np.float32)  # (k, A) de-normalised
    out = pol.infer(obs, seed=3, num_steps=4, action_prefix=prefix, inference_delay=d, max_guidance=50.0)
    assert out["actions"].shape == (Hp, Ap) and out["rtc"] == {"guided": True, "prefix_len": k, "inference_delay": d}
    z = lambda a: stats.normalize(a[:d])  # noqa: E731  (errors in normalised units)
    assert np.linalg.norm(z(out["actions"]) - z(prefix)) < 0.5 * np.linalg.norm(z(free["actions"]) - z(prefix))
    # d = 0 and s = H: every weight is 0, so the chunk is the unguided one
    same = pol.infer(obs, seed=3, num_steps=4, action_prefix=prefix, inference_delay=0, execution_horizon=Hp)
    assert same["rtc"]["guided"] is False
    np.testing.assert_array_equal(same["actions"], free["actions"])


def test_policy_infer_bad_action_prefix(policy_and_obs):
    pol, obs = policy_and_obs
    A_ = pol.action_dim
    ok = np.zeros((4, A_), np.float32) + pol.stats["actions"].mean.astype(np.float32)
    bad_nan = ok.copy()
    bad_nan[1, 2] = np.nan
    for prefix in (np.zeros((4, A_ + 1)), np.zeros((pol.chunk_size + 1, A_)), np.zeros(A_), bad_nan, "abc"):
        with pytest.raises(DataError, match="action_prefix"):
            pol.infer(obs, seed=0, num_steps=1, action_prefix=prefix)
    with pytest.raises(DataError, match="inference_delay"):
        pol.infer(obs, seed=0, num_steps=1, action_prefix=ok, inference_delay=5)
    with pytest.raises(DataError, match="execution_horizon"):
        pol.infer(obs, seed=0, num_steps=1, action_prefix=ok, inference_delay=2, execution_horizon=pol.chunk_size)


def test_rtc_through_the_server(policy_and_obs):
    """The robot runtime sends action_prefix / inference_delay / execution_horizon through the real server."""
    from posevla.serving.client import PolicyClient
    from posevla.serving.robot import ChunkExecutor
    from posevla.serving.server import serve_in_thread

    pol, obs = policy_and_obs
    with serve_in_thread(pol, host="127.0.0.1", port=0) as h:
        client = PolicyClient(h.url)
        try:
            remote = ChunkExecutor(client.infer, mode="rtc", execution_horizon=8, inference_delay=2, seed=5,
                                   num_steps=2)
            local = ChunkExecutor(pol.infer, mode="rtc", execution_horizon=8, inference_delay=2, seed=5, num_steps=2)
            got = np.stack([remote(obs) for _ in range(12)])
            want = np.stack([local(obs) for _ in range(12)])
        finally:
            client.close()
    assert [r.prefix_len for r in remote.requests] == [0, 8]
    np.testing.assert_allclose(got, want, atol=1e-5)  # the same chunks as in process
    assert remote.switches[1].start_index == 2
