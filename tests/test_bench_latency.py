"""`posevla bench latency` (`posevla.bench.latency`): a smoke run of both parts with tiny repetitions.

No timing is asserted (speed is a ratio measured by the benchmark itself); what is checked is that the code
path runs, reports what it says, and that the fused sampler it times gives the chunk of the plain loop.
"""

from __future__ import annotations

import json

import pytest
import torch

from posevla.bench import latency
from posevla.bench.latency import BenchLatencyArgs, format_bench_latency, run_bench_latency
from posevla.errors import ConfigError
from posevla.models.config import get_expert_config, get_model_config
from posevla.models.pose_vla import PoseVLA


def test_expert_part_reports_both_models_and_agreement(tmp_path):
    out = tmp_path / "lat.json"
    latency.main(["--part", "expert", "--configs", "parity", "--precisions", "fp32", "bf16",
                  "--reps", "1", "--warmup", "0", "--steps", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    (r,) = res["expert"]
    assert set(r["timing"]) == {"ours/fp32", "transformers/fp32", "ours/bf16", "transformers/bf16"}
    assert all(t["median_ms"] > 0 and t["p95_ms"] >= t["median_ms"] for t in r["timing"].values())
    assert set(r["ratios"]) == {"fp32", "bf16"} and r["best"]["ours"].startswith("ours/")
    assert r["max_abs_diff"]["ours vs transformers, fp32"] < 1e-5  # same weights, prefix, state and noise
    assert r["max_abs_diff"]["ours vs transformers, bf16"] < 0.05
    text = format_bench_latency(res)
    assert "ours / transformers, fp32" in text and "faster precision" in text


def test_server_part_runs_on_a_tiny_checkpoint():
    res = run_bench_latency(BenchLatencyArgs(part="server", posttrain_steps=1, server_reps=1, warmup=0))
    s = res["server"]
    assert set(s["timing"]) == {"in_process", "server"} and s["ratio"]["median"] > 0
    assert s["actions_shape"][0] == 16 and s["max_abs_diff"] < 1e-6  # the same seed gives the same chunk
    assert "server / in-process" in format_bench_latency(res)


def test_missing_reference_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "REPO", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tests/reference/pi0\.py.*--part server"):
        run_bench_latency(BenchLatencyArgs(part="expert", reps=1))
    with pytest.raises(ConfigError, match="--reps"):
        run_bench_latency(BenchLatencyArgs(reps=0))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fused_sampler_matches_the_plain_loop(attn):
    """What the benchmark times (the fused flow) against the per-step `velocity` loop, padded batch of 3."""
    vlm = get_model_config(
        "tiny", image_size=32, num_views=2, prompt_len=12, pose_tags=False, attn_implementation=attn
    )
    torch.manual_seed(0)
    model = PoseVLA.build(vlm, get_expert_config("tiny", chunk_size=8)).eval()
    batch = model.cfg.fake_batch(3, model.vlm.cfg, model.vlm.tokenizer, state_dim=4, action_dim=5, seed=3,
                                 prompts=["reach the goal", "press", "open it"])
    assert bool((batch["attention_mask"] == 0).any())
    noise = torch.randn(3, 8, model.cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    fused = model.sample_actions(batch, noise=noise, num_steps=4)
    loop = model.sample_actions(batch, noise=noise, num_steps=4, reuse_prefix=False)
    torch.testing.assert_close(fused, loop, rtol=0, atol=1e-5)
    one = model.sample_actions({k: v[:1] for k, v in batch.items()}, noise=noise[:1], num_steps=4)
    torch.testing.assert_close(one, fused[:1], rtol=0, atol=1e-5)  # padding columns dropped, no mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused16 = model.sample_actions(batch, noise=noise, num_steps=4)
        loop16 = model.sample_actions(batch, noise=noise, num_steps=4, reuse_prefix=False)
    torch.testing.assert_close(fused16, loop16, rtol=0, atol=0.05)


def test_prefix_fast_path_gives_the_vlm_keys_and_values():
    """`encode_prefix` calls the language model directly and drops the columns that are padding in every
    sample: the real tokens' keys/values are those of `PoseVLM._lm` over the whole padded prompt."""
    vlm = get_model_config("tiny", image_size=32, num_views=2, prompt_len=12, pose_tags=False)
    torch.manual_seed(0)
    model = PoseVLA.build(vlm, get_expert_config("tiny", chunk_size=4)).eval()
    batch = model.cfg.fake_batch(2, model.vlm.cfg, model.vlm.tokenizer, state_dim=4, action_dim=5, seed=3,
                                 prompts=["reach the goal", "press"])
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        fast = model.encode_prefix(batch)
        feats = model.vlm.image_features(batch["pixel_values"], batch.get("ray"), batch.get("depth"),
                                         batch.get("prior_mask"))
        pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
        ref = model.vlm._lm(ids, attn, torch.zeros_like(ids), feats, use_cache=True, position_ids=pos).cache
    keep = attn.bool().any(0)  # (P,)
    assert not bool(keep.all()) and fast.length == int(keep.sum())  # the shared padding is gone
    assert torch.equal(fast.pad_mask, attn.bool()[:, keep])
    real = fast.pad_mask[:, None, :, None]  # (B, 1, P', 1): what the expert can see
    for (k, v), layer in zip(fast.kv, ref.layers, strict=True):
        torch.testing.assert_close(k * real, layer.keys[:, :, keep] * real, rtol=0, atol=1e-6)
        torch.testing.assert_close(v * real, layer.values[:, :, keep] * real, rtol=0, atol=1e-6)
