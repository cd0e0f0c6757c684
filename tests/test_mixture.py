"""Data sources and their mixture: n^0.43 weights, determinism, workers == in-process, pseudo views,
trajectory examples, bin fitting over all sources, the start-up doctor, per-source metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.data.collate import ExampleSpec, batch_indices
from posevla.data.datasets import GroundingDataset, TrajectoryDataset, iterate_batches
from posevla.data.mixture import Mixture, build_mixture, per_source_metrics
from posevla.tokens import BinCounts
from posevla.data.sources import SourceSpec, bins_coverage, check_sources, detect_source_kind, fit_source_bins, load_source
from posevla.errors import ConfigError, DataError, TrainingError

FIXTURES = Path(__file__).parent / "fixtures"
BOP = FIXTURES / "bop_tiny"
LEROBOT = FIXTURES / "lerobot_v3_tiny"
SPEC = ExampleSpec(image_size=64, num_views=3, n_image_tokens=16, prompt_len=16)


class _Items:
    """A stand-in dataset of `n` items whose examples are their indices."""

    def __init__(self, n: int) -> None:
        self.n, self.spec = n, SPEC

    def __len__(self) -> int:
        return self.n

    def example(self, index: int, epoch: int = 0) -> int:
        return index


def _sources(generated: Path) -> list[SourceSpec]:
    return [
        SourceSpec("generated", str(generated)),
        SourceSpec("bop", str(BOP)),
        SourceSpec("lerobot", str(LEROBOT), stride=1),
    ]


@pytest.fixture(scope="module")
def loaded(tiny_dataset):
    return [load_source(s) for s in _sources(tiny_dataset)]


@pytest.fixture(scope="module")
def codec_tok(loaded):
    from posevla.models import PoseTextTokenizer
    from posevla.tokens import BinCounts, PoseCodec

    codec = PoseCodec(fit_source_bins(loaded, BinCounts(trans_xy=16, trans_z=16, size=16, rot=36, loc=32)))
    tok = PoseTextTokenizer.build_scratch()
    tok.add_pose_tokens(codec.vocabulary() + [";"])
    return codec, tok


def test_default_weights_are_n_to_the_043_and_overridable():
    m = Mixture([_Items(100), _Items(10_000)], ["a", "b"], batch_size=8, seed=0)
    np.testing.assert_allclose(m.weights, [100**0.43, 10_000**0.43])
    np.testing.assert_allclose(m.probs, m.weights / m.weights.sum())
    assert m.describe()[1]["share"] == pytest.approx(m.probs[1], abs=1e-4)
    # an explicit weight replaces n^0.43 for that source only (same scale)
    m2 = Mixture([_Items(100), _Items(10_000)], ["a", "b"], batch_size=8, seed=0, weights=[None, 5.0])
    np.testing.assert_allclose(m2.weights, [100**0.43, 5.0])
    # empirical shares over many steps follow the weights (fixed slots + randomly assigned rest)
    m3 = Mixture([_Items(50), _Items(7), _Items(300)], ["a", "b", "c"], batch_size=5, seed=1, weights=[1.0, 2.0, 3.0])
    counts = np.zeros(3)
    for k in range(600):
        plan = m3.plan(k)
        assert len(plan) == 5
        for s, i, _ in plan:
            counts[s] += 1
            assert 0 <= i < len(m3.datasets[s])
    np.testing.assert_allclose(counts / counts.sum(), [1 / 6, 2 / 6, 3 / 6], atol=0.03)
    with pytest.raises(ConfigError, match="weight"):
        SourceSpec("bop", "x", weight=0.0)
    with pytest.raises(ConfigError, match="kind"):
        SourceSpec("kitti", "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="distinct names"):
        Mixture([_Items(3), _Items(3)], ["a", "a"], batch_size=2, seed=0)


def test_plan_is_a_pure_function_of_seed_and_step():
    def make(seed):
        return Mixture([_Items(13), _Items(4), _Items(40)], ["a", "b", "c"], batch_size=6, seed=seed)

    a, b = make(3), make(3)
    assert [a.plan(k) for k in (7, 0, 3)] == [b.plan(k) for k in (7, 0, 3)]  # any order of queries
    assert [a.plan(k) for k in range(5)] != [make(4).plan(k) for k in range(5)]
    # one source: exactly the single-dataset order of batch_indices
    one = Mixture([_Items(11)], ["a"], batch_size=3, seed=9)
    for k in range(8):
        epoch, idx = batch_indices(11, 3, 9, k)
        assert one.plan(k) == [(0, int(i), epoch) for i in idx]
    # a source smaller than its slots per batch cycles through fresh permutations
    tiny = Mixture([_Items(2)], ["a"], batch_size=5, seed=0)
    rows = [r for k in range(4) for r in tiny.plan(k)]
    for e in range(10):
        assert sorted(i for _, i, ep in rows if ep == e) == [0, 1]


def test_single_source_mixture_gives_the_single_dataset_batches(tiny_dataset, loaded, codec_tok):
    codec, tok = codec_tok
    mix = build_mixture(loaded[:1], SPEC, batch_size=2, seed=5)
    ds = GroundingDataset(loaded[0].scenes, SPEC, seed=5)
    ref = iterate_batches(ds, 2, 5, 0, codec, tok, prefetch=0)
    for k in range(3):
        _, want = next(ref)
        got = mix.batch(k, codec, tok)
        assert torch.equal(got.pop("source"), torch.zeros(2, dtype=torch.int64))
        assert got.pop("prior_draw").shape == (2, 2)  # the modality-dropout draws of the training loop
        assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


def test_workers_give_the_in_process_batches(loaded, codec_tok):
    codec, tok = codec_tok
    mix = build_mixture(loaded, SPEC, batch_size=3, seed=2)
    rng = torch.get_rng_state()
    inproc = mix.batches(4, codec, tok, num_workers=0, prefetch=0)
    workers = mix.batches(4, codec, tok, num_workers=2)
    next(workers)
    assert torch.equal(torch.get_rng_state(), rng)  # starting workers leaves the trainer's RNG alone
    workers.close()
    workers = mix.batches(4, codec, tok, num_workers=2)
    seen = set()
    for _ in range(4):
        (sa, ba), (sb, bb) = next(inproc), next(workers)
        assert sa == sb and ba.keys() == bb.keys()
        for key in ba:
            assert torch.equal(ba[key], bb[key]), key
        seen |= set(ba["source"].tolist())
    workers.close()
    assert seen == {0, 1, 2}


def test_worker_errors_reach_the_trainer(loaded, codec_tok):
    codec, tok = codec_tok
    mix = build_mixture(loaded[:1], SPEC, batch_size=2, seed=0)
    mix.datasets[0].entries[:] = [(99, "mug")] * len(mix.datasets[0].entries)  # scene 99 does not exist
    with pytest.raises(IndexError):
        next(mix.batches(0, codec, tok, num_workers=1))


def test_bop_pseudo_views_redrawn_per_epoch_and_cached_identically(loaded, codec_tok):
    codec, _ = codec_tok
    scenes = loaded[1].scenes
    crops = SourceSpec("bop", str(BOP)).crops(scenes)
    assert crops is not None and crops.wrist_area == (0.15, 0.65)
    assert SourceSpec("generated", "x").crops(scenes) is None  # rendered multi-view data is used as stored
    cached = GroundingDataset(scenes, SPEC, pseudo_views=crops, seed=1, negative_prob=0.0)
    plain = GroundingDataset(scenes, SPEC, pseudo_views=crops, seed=1, negative_prob=0.0, cache_views=False)
    for epoch in (0, 1, 0):
        for i in range(len(cached)):
            a, b = cached.example(i, epoch), plain.example(i, epoch)
            assert codec.serialize(a.views) == codec.serialize(b.views)
            for pa, pb in zip(a.prepared, b.prepared):
                assert np.array_equal(pa.pixels, pb.pixels) and np.array_equal(pa.depth, pb.depth)
    e0, e1 = cached.example(0, 0), cached.example(0, 1)
    assert all(p.pixels.any() for p in e0.prepared)  # three real (virtual) cameras, no empty slot
    assert not np.array_equal(e0.prepared[1].pixels, e1.prepared[1].pixels)  # fresh crops next epoch


def test_trajectory_examples_from_lerobot(loaded, codec_tok):
    codec, _ = codec_tok
    ds = TrajectoryDataset(loaded[2].robot, SPEC, config=SourceSpec("lerobot", "x", stride=1).trajectory_config())
    assert len(ds) == 7  # every (episode, frame)
    ex = ds.example(0)
    assert ex.prompt == "pick up the red block" and ex.cameras == ["head", None, None]
    text = codec.serialize(ex.views)
    assert "arm 0<loc" in text and "arm 4<loc" in text and "<size" not in text
    assert ds.example(5).prompt == "open the drawer"
    assert TrajectoryDataset(loaded[2].robot, SPEC, frame_step=2).entries == [(0, 0), (0, 2), (1, 0), (1, 2)]


def test_bins_are_fitted_on_stage1_labels_and_waypoints(loaded):
    from posevla.data.trajectory import collect_waypoint_translations

    kw = BinCounts(trans_xy=8, trans_z=8, size=8, rot=12, loc=16)
    both = fit_source_bins([loaded[0], loaded[2]], kw)
    only = fit_source_bins([loaded[0]], kw)
    way = collect_waypoint_translations(loaded[2].robot, config=loaded[2].spec.trajectory_config())
    z = both.edges("trans_z")
    assert z[0] <= way[:, 2].min() and z[-1] >= way[:, 2].max()
    assert not np.array_equal(z, only.edges("trans_z"))
    assert "waypoints from lerobot:lerobot_v3_tiny" in both.description
    with pytest.raises(DataError, match="size"):
        fit_source_bins([loaded[2]], kw)


def test_detect_source_kind(tiny_dataset):
    assert detect_source_kind(tiny_dataset) == "generated"
    assert detect_source_kind(BOP) == "bop"
    assert detect_source_kind(LEROBOT) == "lerobot"


def test_doctor_refuses_a_bad_source(tiny_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dataset, bad)
    d = json.loads((bad / "dataset.json").read_text())
    d["info"]["depth_scale"] = 1e-3  # depth PNGs are 1e-4 m units: every depth is 10x the labelled z
    (bad / "dataset.json").write_text(json.dumps(d))
    logs: list[str] = []
    good = check_sources([SourceSpec("bop", str(BOP))], log=logs.append)
    assert good[0].ok and "ok" in logs[0]
    with pytest.raises(TrainingError) as e:
        check_sources([SourceSpec("bop", str(BOP)), SourceSpec("generated", str(bad), name="planted")], log=logs.append)
    msg = str(e.value)
    assert "'planted'" in msg and "depth scale" in msg and "severity" in msg and "--no-doctor" in msg
    with pytest.raises(DataError, match="not found"):
        check_sources([SourceSpec("bop", str(tmp_path / "missing"))])


def test_per_source_metrics_average_over_answer_tokens():
    out = {
        "token_loss": torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0]),
        "token_correct": torch.tensor([True, False, True, True, False]),
        "token_row": torch.tensor([0, 0, 1, 2, 2]),
    }
    m = per_source_metrics(out, torch.tensor([1, 0, 1]), ["a", "b", "c"])
    assert set(m) == {"a", "b"}  # source c has no rows in this batch
    assert m["a"] == {"loss": 2.0, "token_acc": 1.0, "samples": 1, "tokens": 1}
    assert m["b"] == {"loss": pytest.approx(3.5), "token_acc": 0.5, "samples": 2, "tokens": 4}


def test_cli_fit_bins_over_stage1_and_stage2_data(tiny_dataset, tmp_path, capsys):
    from posevla.cli import main
    from posevla.tokens import BinSpec

    out = tmp_path / "bins.json"
    main(["fit-bins", "--data", str(tiny_dataset), str(LEROBOT), "--out", str(out), "--bins.trans-xy", "8",
          "--bins.trans-z", "8", "--bins.size", "8"])
    bins = BinSpec.load(out)
    assert bins.counts == BinCounts(trans_xy=8, trans_z=8, size=8)
    assert "objects from generated:" in bins.description and "waypoints from lerobot:" in bins.description
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fit-bins", "--data", str(LEROBOT), "--out", str(out)])
    assert e.value.code == 1 and "size" in capsys.readouterr().err


def test_sources_are_overridable_from_the_cli():
    import tyro

    from posevla.training.config import TrainConfig
    from posevla.training.configs import get_config

    base = get_config("stage2-tiny")
    cfg = tyro.cli(TrainConfig, default=base,
                   args=["--data.sources.1.weight", "3", "--data.num-workers", "2", "--data.no-doctor"])
    assert cfg.data.sources[1].weight == 3.0 and cfg.data.sources[0] == base.data.sources[0]
    assert cfg.data.num_workers == 2 and not cfg.data.doctor
    debug = get_config("debug")
    assert debug.data.token_sources() == (SourceSpec("generated", debug.data.train_data),)
    # a resolved config read back from a checkpoint's JSON
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.data.sources == cfg.data.sources


@pytest.mark.slow
def test_bench_data_reports_loader_and_trainer_throughput(tmp_path, capsys):
    from posevla.cli import main

    main(["bench", "data", "--num-scenes", "3", "--width", "96", "--height", "64", "--workers", "0", "1",
          "--train-steps", "1", "--json"])
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{\n"):])
    assert [r["workers"] for r in res["loader"]] == [0, 1]
    assert all(r["cold_samples_per_s"] > 0 and r["warm_samples_per_s"] > 0 for r in res["loader"])
    assert res["trainer"]["samples_per_s"] > 0 and res["ratio_workers"] == 1
    assert res["ratio"] == pytest.approx(res["loader"][1]["warm_samples_per_s"] / res["trainer"]["samples_per_s"],
                                         rel=0.02)


def test_bins_coverage_warns_about_clipped_labels(loaded):
    from posevla.tokens import BinSpec

    kw = BinCounts(trans_xy=8, trans_z=8, size=8, rot=12, loc=16)
    assert bins_coverage(loaded, fit_source_bins(loaded, kw)) == []
    narrow = BinSpec(np.linspace(-0.01, 0.01, 9), np.linspace(0.5, 0.6, 9), np.linspace(0.01, 1.0, 9), n_rot=12, n_loc=16)
    msgs = bins_coverage(loaded, narrow)
    assert any("lerobot:lerobot_v3_tiny" in m and "trans_z" in m and "fit-bins" in m for m in msgs)
