"""Tests of the flow-matching action expert, the policy model and π0 weight loading (spec §1.4, §2.3)."""

from __future__ import annotations

import json

import pytest
import torch

from posevla.errors import CheckpointError, ConfigError, DataError
from posevla.models.action_expert import joint_attention_mask
from posevla.models.config import (
    EXPERT_CONFIGS,
    ActionExpertConfig,
    check_expert_pairing,
    get_expert_config,
    get_model_config,
)
from posevla.models.flow_matching import (
    flow_matching_loss,
    flow_matching_pair,
    sample_flow_time,
    sinusoidal_time_embedding,
)
from posevla.models.pi0_weights import expert_config_from_pi0, load_pi0_checkpoint, load_pi0_state_dict, map_pi0_key
from posevla.models.pose_vla import PoseVLA
from reference.pi0 import build_pi0_reference

torch.set_num_threads(1)

# A small prefix: 2 views of 32 px (4 patches each) + a 12-token prompt.
VLM_CFG = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, pose_tags=False)
PROMPTS = ["pick up the cup", "open the drawer", "stack"]  # different lengths -> right-padded prefixes


def _prefix_batch(policy: PoseVLA, B: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    return policy.vlm.cfg.fake_batch(B, policy.vlm.tokenizer, seed=seed, prompts=PROMPTS, priors=False)


def _train_batch(policy: PoseVLA, B: int = 2, state_dim: int = 5, action_dim: int = 7, seed: int = 0):
    return policy.cfg.fake_batch(B, policy.vlm.cfg, policy.vlm.tokenizer, state_dim=state_dim, action_dim=action_dim,
                                 seed=seed, prompts=PROMPTS, priors=False)


@pytest.fixture(scope="module")
def policy() -> PoseVLA:
    torch.manual_seed(0)
    return PoseVLA.build(VLM_CFG, get_expert_config("tiny", chunk_size=4)).eval()


# -- configs -------------------------------------------------------------------------------------------------


def test_named_configs_and_pairing():
    big = EXPERT_CONFIGS["300m"]
    assert (big.hidden, big.layers, big.mlp, big.heads, big.kv_heads, big.head_dim) == (
        1024,
        18,
        4096,
        8,
        1,
        256,
    )
    assert (big.max_state_dim, big.max_action_dim) == (32, 32)
    check_expert_pairing(big, get_model_config("paligemma-3b"))
    check_expert_pairing(EXPERT_CONFIGS["tiny"], get_model_config("tiny"))
    with pytest.raises(ConfigError, match="layer count"):
        check_expert_pairing(EXPERT_CONFIGS["tiny"], get_model_config("paligemma-3b"))
    with pytest.raises(ConfigError, match="valid names"):
        get_expert_config("1b")
    with pytest.raises(ConfigError, match="even"):
        ActionExpertConfig(hidden=63)
    with pytest.raises(ConfigError, match="time_min"):
        ActionExpertConfig(time_min=1.0)
    cfg = get_expert_config("tiny", chunk_size=8)
    assert ActionExpertConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ActionExpertConfig.from_dict({"width": 3})


# -- flow matching and mask (pure functions) -----------------------------------------------------------------


def test_flow_matching_hand_computed():
    a = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # (1, H=2, A=2)
    eps = torch.tensor([[[3.0, -1.0], [1.0, 1.0]]])
    tau = torch.tensor([0.25])
    x, u = flow_matching_pair(a, eps, tau)
    assert torch.allclose(x, torch.tensor([[[1.5, 1.25], [0.25, 0.25]]]))  # 0.25·ε + 0.75·a
    assert torch.allclose(u, torch.tensor([[[2.0, -3.0], [1.0, 1.0]]]))  # ε − a
    v = torch.zeros_like(u)
    assert flow_matching_loss(v, u).item() == pytest.approx((4 + 9 + 1 + 1) / 4)
    pad = torch.tensor([[False, True]])  # step 1 past the episode end
    assert flow_matching_loss(v, u, pad).item() == pytest.approx((4 + 9) / 2)
    assert flow_matching_loss(v, u, pad, action_dim=1).item() == pytest.approx(4.0)  # dim 1 is padding
    with pytest.raises(DataError, match="all True"):
        flow_matching_loss(v, u, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(DataError, match="action_is_pad"):
        flow_matching_loss(v, u, torch.zeros(2, 2, dtype=torch.bool))


def test_time_sampling_and_embedding():
    torch.manual_seed(0)
    tau = sample_flow_time(20000)
    assert tau.dtype == torch.float32 and float(tau.min()) >= 0.001 and float(tau.max()) <= 1.0
    # Beta(1.5, 1) has mean 0.6 and P(x < 0.5) = 0.5^1.5; scaled to [0.001, 1].
    assert float(tau.mean()) == pytest.approx(0.001 + 0.999 * 0.6, abs=0.01)
    assert float((tau < 0.001 + 0.999 * 0.5).float().mean()) == pytest.approx(0.5**1.5, abs=0.01)
    emb = sinusoidal_time_embedding(torch.tensor([0.0, 0.5]), 8, 4e-3, 4.0)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 0
    assert emb[1, 3].item() == pytest.approx(
        torch.sin(torch.tensor(2 * torch.pi * 0.5 / 4.0)).item(), abs=1e-6
    )


def test_joint_attention_mask_structure():
    pad = torch.tensor([[True, True, False]])  # prefix of 3, last one padding
    m = joint_attention_mask(pad, horizon=2)[0].int()  # order: p0 p1 pad | state | a0 a1
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],  # prefix: the prefix only, bidirectionally
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],  # padding attends nowhere
            [1, 1, 0, 1, 0, 0],  # state: prefix + itself
            [1, 1, 0, 1, 1, 1],  # actions: prefix, state and every action
            [1, 1, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(m, expected)


# -- the policy model ----------------------------------------------------------------------------------------


def test_shapes_and_input_errors(policy):
    batch = _train_batch(policy, B=2, state_dim=5, action_dim=7)
    out = policy.compute_loss(batch)
    assert out["loss"].ndim == 0 and out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert out["v_pred"].shape == out["target"].shape == (2, 4, 32)
    # the target on padded action dims is pure noise; the loss ignores those dims
    manual = (out["v_pred"][..., :7] - out["target"][..., :7]).pow(2).mean()
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-6)
    acts = policy.sample_actions(batch, num_steps=2)
    assert acts.shape == (2, 4, 32)
    assert policy.sample_actions(batch, num_steps=2, action_dim=7).shape == (2, 4, 7)
    with pytest.raises(DataError, match="max_state_dim"):
        policy.compute_loss({**batch, "state": torch.zeros(2, 33)})
    with pytest.raises(DataError, match="chunk_size"):
        policy.compute_loss({**batch, "actions": torch.zeros(2, 5, 7)})
    with pytest.raises(DataError, match="token_type_ids"):
        policy.compute_loss({**batch, "token_type_ids": torch.ones_like(batch["input_ids"])})
    with pytest.raises(DataError, match="noise"):
        policy.sample_actions(batch, noise=torch.zeros(2, 4, 7))


def test_action_padding_mask_in_loss(policy):
    batch = _train_batch(policy, B=2, action_dim=6)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    noise, tau = torch.randn(2, 4, 32), torch.tensor([0.2, 0.7])
    out = policy.compute_loss({**batch, "action_is_pad": pad}, noise=noise, time=tau)
    err = (out["v_pred"][..., :6] - out["target"][..., :6]).pow(2)  # (B, H, 6)
    keep = ~pad
    assert out["loss"].item() == pytest.approx((err.sum(-1)[keep].sum() / (keep.sum() * 6)).item(), rel=1e-6)
    plain = policy.compute_loss(batch, noise=noise, time=tau)["loss"]
    assert plain.item() == pytest.approx(err.mean().item(), rel=1e-6)


def _suffix_out(policy, batch, state, x, tau):
    """Expert hidden states (B, 1+H, D) for given inputs, and the VLM prefix hidden states."""
    seen = {}
    hook = policy.vlm.hf.model.language_model.register_forward_hook(
        lambda m, i, o: seen.__setitem__("prefix", o.last_hidden_state.detach().clone())
    )
    try:
        prefix = policy.encode_prefix(batch)
        h = policy.expert(policy.expert.embed_suffix(state, x, tau), prefix)
    finally:
        hook.remove()
    return h, seen["prefix"]


@torch.no_grad()
def test_attention_mask_by_perturbation(policy):
    batch = _prefix_batch(policy, B=2)
    state, x, tau = torch.randn(2, 32), torch.randn(2, 4, 32), torch.tensor([0.5, 0.9])
    h0, p0 = _suffix_out(policy, batch, state, x, tau)

    # perturbing the last action: the prefix and the state token are unchanged, every action token changes
    x2 = x.clone()
    x2[:, -1] += 1.0
    h1, p1 = _suffix_out(policy, batch, state, x2, tau)
    assert torch.equal(p0, p1)
    assert torch.allclose(h0[:, 0], h1[:, 0], atol=1e-6)
    assert (h0[:, 1:] - h1[:, 1:]).abs().amax(-1).min() > 1e-4  # action 0 sees action H-1 (bidirectional)

    # perturbing the state: prefix unchanged, state and actions change
    h2, p2 = _suffix_out(policy, batch, state + 1.0, x, tau)
    assert torch.equal(p0, p2)
    assert (h0 - h2).abs().amax(-1).min() > 1e-4

    # the content of a padded prefix token is invisible, a real prefix token is seen
    pad_pos = int((batch["attention_mask"][0] == 0).nonzero()[0])
    b_pad = {**batch, "input_ids": batch["input_ids"].clone()}
    b_pad["input_ids"][0, pad_pos] = 5
    h3, _ = _suffix_out(policy, b_pad, state, x, tau)
    assert torch.allclose(h0, h3, atol=1e-6)
    b_img = {**batch, "pixel_values": batch["pixel_values"].clone()}
    b_img["pixel_values"][0, 0] += 0.5
    h4, _ = _suffix_out(policy, b_img, state, x, tau)
    assert (h0[0] - h4[0]).abs().amax(-1).min() > 1e-5
    assert torch.allclose(h0[1], h4[1], atol=1e-6)  # samples stay independent


def test_prefix_kv_computed_once(policy):
    batch = _train_batch(policy, B=2)
    calls = []
    hook = policy.vlm.hf.model.language_model.register_forward_hook(lambda *a: calls.append(1))
    noise = torch.randn(2, 4, 32)
    try:
        cached = policy.sample_actions(batch, noise=noise, num_steps=5)
        n_cached = len(calls)
        calls.clear()
        fresh = policy.sample_actions(batch, noise=noise, num_steps=5, reuse_prefix=False)
        n_fresh = len(calls)
    finally:
        hook.remove()
    assert (n_cached, n_fresh) == (1, 5)
    assert torch.allclose(cached, fresh, atol=1e-5)


def test_gradients_reach_vlm_and_knowledge_insulation():
    torch.manual_seed(0)
    pol = PoseVLA.build(VLM_CFG, get_expert_config("tiny", chunk_size=4))
    pol.compute_loss(_train_batch(pol))["loss"].backward()
    q = pol.vlm.hf.model.language_model.layers[0].self_attn.k_proj.weight
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert pol.expert.action_in_proj.weight.grad.abs().sum() > 0
    ki = PoseVLA.build(VLM_CFG, get_expert_config("tiny", chunk_size=4, stop_gradient_to_vlm=True))
    ki.compute_loss(_train_batch(ki))["loss"].backward()
    assert ki.vlm.hf.model.language_model.layers[0].self_attn.k_proj.weight.grad is None


def test_overfits_one_batch():
    torch.manual_seed(0)
    pol = PoseVLA.build(VLM_CFG, get_expert_config("tiny", chunk_size=4)).train()
    batch = _train_batch(pol, B=2, state_dim=4, action_dim=4, seed=3)
    noise = torch.randn(2, 4, 32)
    tau = torch.tensor([0.3, 0.6])
    opt = torch.optim.AdamW(pol.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        loss = pol.compute_loss(batch, noise=noise, time=tau)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


# -- parity with transformers' PI0 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_pair():
    torch.manual_seed(1)
    # π0 has no geometry priors; everything else (views, padding, sizes) as in the tiny policy
    ours = PoseVLA.build(
        VLM_CFG.replace(use_priors=False),
        get_expert_config("tiny", chunk_size=4, max_state_dim=8, max_action_dim=8),
    ).eval()
    torch.manual_seed(2)
    return ours, build_pi0_reference(ours)


def _parity_diffs(ours, ref, batch, noise, tau):
    views = batch["pixel_values"].shape[1]
    common = {
        "input_ids": batch["input_ids"],
        "pixel_values": batch["pixel_values"],
        "attention_mask": batch["attention_mask"],
        "pixel_attention_mask": torch.ones(batch["input_ids"].shape[0], views, dtype=torch.bool),
    }
    with torch.no_grad():
        loss_ours = ours.compute_loss(batch, noise=noise, time=tau)["loss"]
        loss_ref = ref(
            state=batch["state"], noise=noise, timestep=tau, actions=batch["actions"], **common
        ).loss
    act_ours = ours.sample_actions(batch, noise=noise, num_steps=10)
    act_ref = ref.sample_actions(state=batch["state"], noise=noise, num_steps=10, **common)
    return (
        (loss_ours - loss_ref).abs().item(),
        (act_ours - act_ref).abs().max().item(),
        act_ref.abs().max().item(),
    )


def _parity_inputs(pol):
    batch = _train_batch(pol, B=3, state_dim=8, action_dim=8, seed=7)  # full width: π0 averages over all dims
    g = torch.Generator().manual_seed(11)
    return batch, torch.randn(3, 4, 8, generator=g), torch.tensor([0.05, 0.5, 0.95])


@pytest.mark.parity
def test_parity_with_transformers_pi0(parity_pair):
    ours, ref = parity_pair
    batch, noise, tau = _parity_inputs(ours)
    assert bool((batch["attention_mask"] == 0).any())  # right-padded prompts are part of the check
    before, _, _ = _parity_diffs(ours, ref, batch, noise, tau)
    assert before > 1e-3  # independent random inits really differ
    loaded = load_pi0_state_dict(ours, ref.state_dict())
    assert any(k.startswith("expert.layers.") for k in loaded) and any(
        k.startswith("vlm.hf.") for k in loaded
    )
    d_loss, d_act, scale = _parity_diffs(ours, ref, batch, noise, tau)
    print(f"\nπ0 parity: |Δloss| = {d_loss:.3g}, max |Δaction| = {d_act:.3g} (max |action| {scale:.3g})")
    assert d_loss < 1e-5 and d_act < 1e-5


def test_pi0_key_map():
    assert map_pi0_key("model.dit.layers.3.mlp.up_proj.weight") == "expert.layers.3.mlp.up_proj.weight"
    assert map_pi0_key("embed_action_time.state_proj.bias") == "expert.state_proj.bias"
    assert map_pi0_key("model.action_out_proj.weight") == "expert.action_out_proj.weight"
    assert map_pi0_key("model.dit.embed_tokens.weight") == ""
    lr = "model.paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight"
    assert map_pi0_key(lr) == "vlm.hf.model.language_model.layers.0.self_attn.q_proj.weight"
    old = "paligemma_with_expert.paligemma.vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert map_pi0_key(old) == "vlm.hf.model.vision_tower.embeddings.patch_embedding.weight"
    assert map_pi0_key("something.else") is None


@pytest.mark.parity
def test_load_pi0_checkpoint_dir(parity_pair, tmp_path):
    from safetensors.torch import load_file, save_file

    _, ref = parity_pair
    ref.save_pretrained(tmp_path / "pi0")
    expert_cfg = expert_config_from_pi0(tmp_path / "pi0")
    assert (expert_cfg.hidden, expert_cfg.layers, expert_cfg.max_action_dim) == (64, 4, 8)
    torch.manual_seed(5)
    ours = PoseVLA.build(VLM_CFG.replace(use_priors=False), expert_cfg).eval()
    load_pi0_checkpoint(ours, tmp_path / "pi0")
    batch, noise, tau = _parity_inputs(ours)
    d_loss, d_act, _ = _parity_diffs(ours, ref, batch, noise, tau)
    assert d_loss < 1e-5 and d_act < 1e-5

    weights = load_file(str(tmp_path / "pi0" / "model.safetensors"))
    config = (tmp_path / "pi0" / "config.json").read_text()

    def write(name, sd, cfg_text=config):
        d = tmp_path / name
        d.mkdir()
        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text(cfg_text)
        return d

    # a missing expert weight
    gone = "paligemma_with_expert.gemma_expert.model.layers.2.mlp.down_proj.weight"
    bad = write("missing", {k: v for k, v in weights.items() if k != gone})
    with pytest.raises(CheckpointError, match=r"missing keys.*expert\.layers\.2\.mlp\.down_proj\.weight"):
        load_pi0_checkpoint(ours, bad)
    # an unknown key
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra_head"):
        load_pi0_checkpoint(ours, write("extra", {**weights, "extra_head.weight": torch.zeros(2)}))
    # an architecture that does not match the model
    cfg = json.loads(config)
    cfg["dit_config"]["intermediate_size"] = 128
    with pytest.raises(CheckpointError, match="mlp"):
        load_pi0_checkpoint(ours, write("arch", weights, json.dumps(cfg)))
    # a shape mismatch inside the weights
    wide = {**weights, "action_out_proj.bias": torch.zeros(9)}
    with pytest.raises(CheckpointError, match=r"shape mismatches.*action_out_proj"):
        load_pi0_checkpoint(ours, write("shape", wide))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_pi0_checkpoint(ours, tmp_path)

    # the LeRobot layout (leading "model.") loads too; the expert alone leaves the VLM untouched
    lerobot = {f"model.{k}": v for k, v in weights.items()}
    torch.manual_seed(6)
    fresh = PoseVLA.build(VLM_CFG.replace(use_priors=False), expert_cfg)
    vlm_before = {k: v.clone() for k, v in fresh.vlm.state_dict().items()}
    loaded = load_pi0_state_dict(fresh, lerobot, parts=("expert", "projections"))
    assert loaded and all(k.startswith("expert.") for k in loaded)
    assert all(torch.equal(v, fresh.vlm.state_dict()[k]) for k, v in vlm_before.items())
    assert torch.equal(fresh.expert.layers[1].mlp.up_proj.weight, ref.model.dit.layers[1].mlp.up_proj.weight)
    assert torch.equal(fresh.expert.action_time_mlp_in.bias, ref.embed_action_time.action_time_mlp_in.bias)


def test_eager_and_sdpa_attention_agree(policy):
    eager = PoseVLA.build(
        VLM_CFG.replace(attn_implementation="eager"), policy.cfg, tokenizer=policy.vlm.tokenizer
    ).eval()
    eager.load_state_dict(policy.state_dict())
    batch = _train_batch(policy, B=2)
    noise = torch.randn(2, 4, 32)
    a_sdpa = policy.sample_actions(batch, noise=noise, num_steps=3)
    a_eager = eager.sample_actions(batch, noise=noise, num_steps=3)
    assert torch.allclose(a_sdpa, a_eager, atol=1e-4)
