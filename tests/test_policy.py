"""Post-training in the one training loop, and the Policy built from its checkpoint (spec §2.3)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.data.action_space import ActionConfig
from posevla.data.actions import ActionDataset
from posevla.data.normalize import load_norm_stats
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.errors import CheckpointError, ConfigError, DataError, InferenceError
from posevla.models import build_vlm
from posevla.policy import ActionChunker, Policy
from posevla.training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from posevla.training.config import DataConfig
from posevla.training.configs import get_config
from posevla.training.trainer import train

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
ACTION = ActionConfig(constant_dims=("z", "R20", "R21"))  # chunk H = 16, the default


def _cfg(out: Path, **kw):
    cfg = get_config("posttrain-tiny")
    base = dict(
        init_checkpoint=None,
        data=DataConfig(train_data=str(FIXTURE)),
        out_dir=str(out),
        steps=2,
        batch_size=2,
        save_every=2,
        log_every=1,
        optim=dataclasses.replace(cfg.optim, warmup_steps=1),
        progress=False,
        action=ACTION,
    )
    return dataclasses.replace(cfg, **{**base, **kw})


def _losses(out_dir: Path):
    return [
        (r["step"], r["loss"]) for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("posttrain") / "run"
    train(_cfg(out))
    return out


@pytest.fixture(scope="module")
def policy(run) -> Policy:
    return Policy.from_checkpoint(run, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def data(policy) -> ActionDataset:
    return ActionDataset(load_lerobot_v3(FIXTURE), policy.action_cfg, policy.spec, policy.stats)


# -- training -----------------------------------------------------------------------------------------------


def test_posttrain_configs_and_cli_overrides():
    import tyro

    from posevla.models.config import check_expert_pairing, get_expert_config, get_model_config

    big = get_config("posttrain-paligemma-3b")
    assert (big.objective, big.expert, big.action.chunk_size, big.action.priors) == (
        "actions",
        "300m",
        16,
        False,
    )
    check_expert_pairing(get_expert_config(big.expert), get_model_config(big.model.size))
    tiny = get_config("posttrain-tiny")
    assert tiny.action.chunk_size == 16 and tiny.init_checkpoint is not None
    cfg = tyro.cli(
        type(tiny),
        default=tiny,
        args=["--action.space", "joints", "--action.joint-key", "action", "--init-checkpoint", "None"],
    )
    assert cfg.action.space == "joints" and cfg.action.joint_key == "action" and cfg.init_checkpoint is None
    with pytest.raises(ConfigError, match="objective"):
        dataclasses.replace(tiny, objective="rl")


def test_posttrain_checkpoint_is_self_describing(run):
    saved = load_checkpoint(run)
    d = saved.dir
    assert saved.step == 2 and saved.expert is not None and saved.expert.chunk_size == 16
    conf = json.loads((d / "config.json").read_text())
    assert conf["train"]["objective"] == "actions" and conf["train"]["expert"] == "tiny"
    assert conf["train"]["action"]["chunk_size"] == 16 and conf["expert"]["chunk_size"] == 16
    assert conf["data"]["cameras"] == ["head"] and conf["data"]["image_sizes"] == {"head": [32, 24]}
    stats, space = load_norm_stats(d)
    assert space == "ee_pose" and stats["actions"].dim == 10 and stats["state"].dim == 10
    rows = _losses(run)
    assert [s for s, _ in rows] == [1, 2] and all(np.isfinite(loss) for _, loss in rows)
    assert "device" not in json.dumps(saved.trainer_state)


def test_posttrain_resume_is_exact(tmp_path):
    """4 straight steps == 2 steps + resume, the resumed half with its batches built in a worker process."""
    train(_cfg(tmp_path / "a", steps=4))
    train(_cfg(tmp_path / "b", steps=2))
    train(_cfg(tmp_path / "b", steps=4, data=DataConfig(train_data=str(FIXTURE), num_workers=1)), resume=True)
    assert len(_losses(tmp_path / "a")) == 4
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_vlm_initialised_from_a_pose_checkpoint(tmp_path):
    # a VLM-only (stage-1/2 style) checkpoint: its weights must land in the policy's VLM unchanged
    cfg = _cfg(tmp_path / "post", steps=0)
    torch.manual_seed(123)
    bins = cfg.bins.uniform()
    vlm = build_vlm(cfg.model.resolve(), bins)
    tok = vlm.tokenizer
    save_checkpoint(
        tmp_path / "vlm",
        7,
        model=vlm,
        optimizer=None,
        scheduler=None,
        config={"train": {"name": "stage1", "objective": "tokens"}, "model": vlm.cfg.to_dict()},
        bins_json=bins.to_dict(),
        tokenizer=tok,
        trainer_state={},
    )
    res = train(dataclasses.replace(cfg, init_checkpoint=str(tmp_path / "vlm")))
    from safetensors.torch import load_file

    post = load_file(str(res.checkpoint / "model.safetensors"))
    src = load_file(str(resolve_checkpoint(tmp_path / "vlm") / "model.safetensors"))
    assert all("vlm." + k in post for k in src)  # every VLM tensor carried over, unchanged
    assert all(torch.equal(post["vlm." + k], v) for k, v in src.items())
    assert any(k.startswith("expert.") for k in post)


# -- the Policy ---------------------------------------------------------------------------------------------


def test_infer_shapes_determinism_and_denormalisation(policy, data):
    obs = data.observation(0, 1)
    a = policy.infer(obs, seed=3)
    b = policy.infer(obs, seed=3)
    c = policy.infer(obs, seed=4, num_steps=2)
    assert a["actions"].shape == (16, 10) and a["actions"].dtype == np.float32
    assert np.array_equal(a["actions"], b["actions"]) and not np.allclose(a["actions"], c["actions"])
    assert a["action_names"][:3] == ["x", "y", "z"] and a["num_steps"] == 10 and c["num_steps"] == 2
    assert a["ee_pose"].shape == (16, 1, 7)
    np.testing.assert_allclose(np.linalg.norm(a["ee_pose"][..., 3:], axis=-1), 1.0, atol=1e-5)
    assert set(a["latency_ms"]) == {"preprocess", "model", "plan", "total"} and a["latency_ms"]["total"] > 0
    # the chunk is the model's sample de-normalised with the checkpoint's statistics
    _, batch = policy.preprocess(obs)
    noise = torch.randn((1, 16, policy.model.cfg.max_action_dim), generator=torch.Generator().manual_seed(3))
    z = policy.model.sample_actions(batch, noise=noise, action_dim=10)[0].numpy()
    st = policy.stats["actions"]
    np.testing.assert_allclose(a["actions"], z * st.std + st.mean, rtol=1e-5, atol=1e-6)


def test_infer_with_plan_and_rollout_interface(policy, data):
    out = policy.infer(data.observation(1, 0), seed=0, return_poses=True)
    plan = out["pose_tokens"]
    assert [v["camera"] for v in plan] == ["head", None, None]
    for view in plan:
        for e in view["entries"]:
            assert e["translation"].shape == (3,) and e["euler_xyz"].shape == (3,)
    head = plan[0]["entries"]
    assert all("position_world" in e for e in head)  # T_world_cam comes from the camera config
    from posevla.sim import PolicyOutput

    po = policy(data.observation(1, 0))
    assert isinstance(po, PolicyOutput) and po.actions.shape == (16, 10)


def test_bad_observations(policy, data):
    obs = data.observation(0, 0)
    with pytest.raises(DataError, match="camera 'head' is missing") as e:
        policy.infer({k: v for k, v in obs.items() if k != "observation.images.head"})
    assert e.value.field == "observation.images.head"
    with pytest.raises(DataError, match="uint8"):
        policy.infer({**obs, "observation.images.head": obs["observation.images.head"].astype(np.float64)})
    with pytest.raises(DataError, match="trained on 32x24"):
        policy.infer({**obs, "observation.images.head": np.zeros((24, 31, 3), np.uint8)})
    with pytest.raises(DataError, match="observation.gripper.*missing"):
        policy.infer({k: v for k, v in obs.items() if k != "observation.gripper"})
    with pytest.raises(DataError, match="non-finite") as e:
        policy.infer({**obs, "observation.ee_pose": np.array([0, 0, np.nan, 1, 0, 0, 0], np.float32)})
    assert e.value.field == "observation.ee_pose"
    with pytest.raises(DataError, match="dict"):
        policy.infer([obs])


def test_non_finite_actions_are_never_returned(run):
    p = Policy.from_checkpoint(run, device="cpu")
    with torch.no_grad():
        p.model.expert.action_out_proj.bias.fill_(float("nan"))
    ds = ActionDataset(load_lerobot_v3(FIXTURE), p.action_cfg, p.spec, p.stats)
    with pytest.raises(InferenceError, match="non-finite action"):
        p.infer(ds.observation(0, 0), seed=0)


def test_checkpoint_without_norm_stats_or_expert(run, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(run), ckpt)
    with pytest.raises(CheckpointError, match="norm_stats.json is missing; manifest.json lists it"):
        (ckpt / "norm_stats.json").rename(ckpt / "stats.bak")
        Policy.from_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()  # as a checkpoint written before manifests: the deeper checks speak
    (ckpt / "stats.bak").unlink()
    with pytest.raises(CheckpointError, match="norm_stats.json is missing.*normalisation statistics"):
        Policy.from_checkpoint(ckpt)
    conf = json.loads((ckpt / "config.json").read_text())
    conf["train"]["objective"] = "tokens"
    (ckpt / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="objective 'tokens' but the 'expert' section is present"):
        Policy.from_checkpoint(ckpt)
    del conf["expert"]
    (ckpt / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="does not hold the model its config.json describes"):
        Policy.from_checkpoint(ckpt)  # VLM-only config, policy weights: refused before a model is built
    with pytest.raises(CheckpointError, match="VLM checkpoint.*no action expert"):
        Policy.from_checkpoint(Path(__file__).parent / "fixtures" / "legacy_checkpoints" / "tokens")


def test_action_chunker_replans():
    calls = []

    def fake(obs, **kw):
        calls.append(kw)
        k = len(calls)
        return {"actions": np.arange(16 * 2, dtype=np.float32).reshape(16, 2) + 100 * k}

    ch = ActionChunker(fake, replan_every=5, num_steps=3)
    acts = [ch({}) for _ in range(11)]
    assert ch.queries == 3 and calls[0] == {"num_steps": 3}
    assert (
        acts[0].tolist() == [100, 101] and acts[4].tolist() == [108, 109] and acts[5].tolist() == [200, 201]
    )
    whole = ActionChunker(fake)  # default: execute the whole chunk
    [whole({}) for _ in range(17)]
    assert whole.queries == 2
    whole.reset()
    whole({})
    assert whole.queries == 3
    with pytest.raises(ConfigError, match="replan_every"):
        ActionChunker(fake, replan_every=0)
    with pytest.raises(InferenceError, match="unusable chunk"):
        ActionChunker(lambda obs: {"actions": np.full((4, 2), np.nan)})({})


def test_bad_depth_and_prompts_name_their_key(policy, data):
    obs = data.observation(0, 0)
    key = "observation.depth.head"
    assert key in obs
    for bad, msg in ((np.full_like(obs[key], np.nan), "1 NaN|NaN / inf pixels"), (obs[key] - 5.0, "negative values"),
                     (obs[key][:, :-1], r"depth of camera 'head' has shape \(24, 31\), its image is \(24, 32\)")):
        with pytest.raises(DataError, match=msg) as e:
            policy.infer({**obs, key: bad}, seed=0)
        assert e.value.field == key and e.value.fix
    long = " ".join(["pick up the red block"] * 20)
    for k in ("task", "instruction"):
        o = {kk: v for kk, v in obs.items() if kk != "task"} | {k: long}
        with pytest.raises(DataError, match="instruction .* takes .* tokens") as e:
            policy.infer(o, seed=0)
        assert e.value.field == k and k in e.value.fix


def test_calls_without_a_seed_are_thread_safe(run, data):
    """Seedless calls each get their own generator: from 6 threads the chunks are the 6 of 6 sequential calls."""
    import threading

    obs = data.observation(0, 0)
    seq = Policy.from_checkpoint(run, device="cpu", precision="fp32", seed=5)
    want = sorted(seq.infer(obs, num_steps=2)["actions"].sum() for _ in range(6))
    par = Policy.from_checkpoint(run, device="cpu", precision="fp32", seed=5)
    got: list[float] = []
    threads = [threading.Thread(target=lambda: got.append(par.infer(obs, num_steps=2)["actions"].sum()))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(sorted(got), want, rtol=1e-5)
    assert len(set(np.round(want, 5))) == 6  # every call drew its own noise
