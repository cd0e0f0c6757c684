"""`posevla bench train` (`posevla.bench.train`) and the paper-size loader bench (`posevla bench data --size`).

No timing is asserted (speed is a ratio the benchmark measures itself). What is checked: the code paths run and
report what they say, the two models the step bench compares compute the same loss on the same weights and
inputs (the check that both do the same work), the CPU bf16 attention route used by `PoseVLA.compute_loss`
changes nothing but rounding, and the arithmetic of the tokens/s and workers-per-GPU figures.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from posevla.bench import train as bench_train
from posevla.bench.data import BenchDataArgs, format_bench_data_paper, gpu_samples_per_s, run_bench_data_paper
from posevla.bench.latency import find_reference
from posevla.bench.train import BenchTrainArgs, build_pair, format_bench_train, rank_tokens_per_s, step_inputs
from posevla.errors import ConfigError
from posevla.models.config import get_model_config
from posevla.models.cpu_attention import cpu_bf16_training_attention
from posevla.models.pose_vla import PoseVLA


def _finite_positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_step_bench_smoke_reports_both_models_and_equal_losses(tmp_path):
    out = tmp_path / "train.json"
    bench_train.main(["--configs", "parity", "--precisions", "fp32", "bf16", "--batch", "2", "--reps", "2",
                      "--warmup", "0", "--peak-size", "256", "--peak-reps", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert _finite_positive(res["peak_flops"]["bf16"]) and _finite_positive(res["peak_flops"]["fp32"])
    (r,) = res["step"]
    expected = {f"{who}/{p}" for who in ("ours", "transformers", "ours+fused") for p in ("fp32", "bf16")}
    assert set(r["timing"]) == expected
    for t in r["timing"].values():
        assert _finite_positive(t["median_ms"]) and t["p95_ms"] >= t["median_ms"]
    for q in (*r["ratios"].values(), r["best"], r["best"]["with_levers"]):
        assert _finite_positive(q["median"]) and _finite_positive(q["p95"])
    assert r["best"]["ours"].startswith("ours/") and r["best"]["transformers"].startswith("transformers/")
    assert all(_finite_positive(v) for v in r["flops_per_step"].values())
    assert _finite_positive(r["achieved_flops"]) and 0 < r["fraction_of_bf16_peak"]
    # the same weights and inputs give the same loss: both models do the same work
    assert r["loss_check"]["fp32"]["abs_diff"] < 1e-5
    assert r["loss_check"]["bf16"]["abs_diff"] < 1e-2
    assert _finite_positive(r["loss_check"]["fp32"]["ours"])
    text = format_bench_train(res)
    assert "best vs best" in text and "matmul peak" in text and "GFLOP/s" in text


def test_losses_and_gradients_match_transformers_for_identical_inputs():
    """Ours and transformers' π0 on one batch, noise and flow time: equal loss and equal expert gradients."""
    ours, ref = build_pair("parity", find_reference())
    batch, noise, tau = step_inputs(ours, 3)
    loss_ours, loss_ref = bench_train._losses(ours, ref, batch, noise, tau)
    a, b = loss_ours(), loss_ref()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    a.backward()
    b.backward()
    g_ours = ours.expert.action_in_proj.weight.grad
    g_ref = ref.embed_action_time.action_in_proj.weight.grad
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_cpu_bf16_attention_route_changes_only_rounding(monkeypatch):
    """Under CPU bf16 autocast `PoseVLA` runs attention in fp32 (`install_cpu_bf16_attention`): its loss and
    gradients agree with SDPA's bf16 kernel to bf16 rounding, fp32 is untouched, and the table is restored."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from posevla.models import cpu_attention

    ours, _ = build_pair("parity", find_reference())
    batch, noise, tau = step_inputs(ours, 2)
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def run(bf16: bool, swap: bool) -> tuple[float, torch.Tensor]:
        with monkeypatch.context() as m:
            m.setattr(cpu_attention, "FP32_ATTENTION_ON_CPU_BF16", swap)  # False: SDPA's bf16 kernel
            ours.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = ours.compute_loss(batch, noise=noise, time=tau)["loss"]
            loss.backward()
        return float(loss.detach()), ours.vlm.hf.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone()

    l32, g32 = run(False, True)
    l32b, g32b = run(False, False)
    assert l32 == l32b and torch.equal(g32, g32b)  # fp32: the swap is not active
    l16, g16 = run(True, True)
    l16b, g16b = run(True, False)
    assert abs(l16 - l16b) < 1e-2 * max(1.0, abs(l16b))
    assert (g16 - g16b).norm() <= 0.05 * g16b.norm()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before  # restored


def test_cpu_bf16_attention_survives_activation_checkpointing():
    """The fp32 route is held per attention module, so a layer recomputed in the backward (torch's composable
    checkpoint, as `--activation-checkpointing` applies it) takes the route of its forward: same gradients."""
    from torch.distributed._composable import checkpoint

    from posevla.training.distributed import transformer_layers

    ours, _ = build_pair("parity", find_reference())
    batch, noise, tau = step_inputs(ours, 2)

    def grads() -> list[torch.Tensor]:
        ours.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ours.compute_loss(batch, noise=noise, time=tau)["loss"]
        loss.backward()
        return [p.grad.clone() for p in ours.expert.parameters() if p.grad is not None]

    plain = grads()
    vlm_layers = {id(m) for m in ours.vlm.modules() if type(m).__name__.endswith("DecoderLayer")}
    for layer in transformer_layers(ours):
        if id(layer) not in vlm_layers:  # SigLIP's and the expert's layers, as `distributed.wrap` does
            checkpoint(layer)
    again = grads()
    assert len(again) == len(plain)
    for a, b in zip(again, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_attention_route_is_installed_once_and_the_context_restores():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ours, _ = build_pair("parity", find_reference())
    again = PoseVLA(ours.vlm, ours.expert)  # the same modules: no second pair of hooks
    attn = again.expert.layers[0].self_attn
    assert len(attn._forward_pre_hooks) == 1 and len(attn._forward_hooks) == 1
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with cpu_bf16_training_attention(), cpu_bf16_training_attention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not before
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before


def test_suffix_mask_is_the_suffix_rows_of_the_joint_mask():
    from posevla.models.action_expert import joint_attention_mask, suffix_attention_mask

    pad = torch.tensor([[True, True, False, True], [True, False, False, False]])  # (B, P)
    H = 3
    assert torch.equal(suffix_attention_mask(pad, 1 + H), joint_attention_mask(pad, H)[:, pad.shape[1]:])


def test_rank_tokens_per_s_from_metrics(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "time_s": 0.5 * s + (3.0 if s > 1 else 0.0), "loss": 1.0} for s in range(1, 11)]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = rank_tokens_per_s(m, tokens_per_step=1000, warmup=2)  # steps 3…10 at 0.5 s each
    assert got["step_s"] == pytest.approx(0.5) and got["tokens_per_s"] == pytest.approx(2000.0)
    with pytest.raises(ConfigError, match="rank-steps"):
        rank_tokens_per_s(m, tokens_per_step=1000, warmup=9)


def test_rank_part_rejects_bad_counts():
    with pytest.raises(ConfigError, match="--ranks"):
        bench_train.run_bench_train(BenchTrainArgs(configs=(), ranks=(0,), peak_size=0))
    with pytest.raises(ConfigError, match="--reps"):
        bench_train.run_bench_train(BenchTrainArgs(reps=0))


def test_gpu_consumption_arithmetic():
    """6·N·T + attention at 40 % of 989 TFLOP/s: the paper-size step eats about 25 samples/s."""
    cfg = get_model_config("paligemma-3b")
    g = gpu_samples_per_s(2_950_000_000, 930, cfg, 989.0, 0.40)
    assert g["dense_flops"] == 6 * 2_950_000_000 * 930
    assert g["attention_flops"] == 12 * 930**2 * 8 * 256 * 18 + 12 * 256**2 * 1152 * 27 * 3
    assert 20 < g["samples_per_s"] < 30
    assert g["samples_per_s"] == pytest.approx(0.40 * 989e12 / g["flops_per_sample"])


def test_paper_size_loader_bench_smoke():
    res = run_bench_data_paper(BenchDataArgs(size="paligemma-3b", num_scenes=2, width=96, height=72,
                                             batch_size=2, batches=1, profile=True))
    assert res["layout"] == {"image_size": 224, "views": 3, "tokens_per_view": 256, "prompt_len": 64,
                             "pseudo_views": True, "priors": ["depth", "ray"]}
    assert _finite_positive(res["worker_samples_per_s"]) and res["workers_per_gpu"] >= 1
    assert res["gpu"]["tokens"] > 3 * 256 + 64  # image tokens + prompt + the answer
    assert res["profile"] and res["profile"][0]["function"].startswith("mixture.py")
    text = format_bench_data_paper(res)
    assert "workers per GPU" in text and "6 · N · T" in text
    with pytest.raises(ConfigError, match="--size"):
        run_bench_data_paper(BenchDataArgs(size="tiny"))
