"""The console script: help, verbs, clear errors with a non-zero exit, and the quick demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from posevla.cli import main


def test_help_lists_verbs(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for verb in ("demo", "generate", "train", "eval grounding", "eval sim", "metaworld-demos", "tokens report"):
        assert verb in out


def test_unknown_verb_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_unknown_config_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "stage1-tiyn"])
    assert e.value.code == 1
    assert "Did you mean stage1-tiny" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "debug", "--data.train-data", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "run")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "nope" in err and "fix" in err


def test_eval_on_missing_checkpoint(tmp_path, tiny_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "grounding", "--checkpoint", str(tmp_path), "--data", str(tiny_dataset)])
    assert e.value.code == 1
    assert "no checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`posevla demo --quick` once, through the console entry (stage 1 → ... → closed loop)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "posevla.cli", "demo", "--quick", "--out-dir", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.mark.sim
def test_quick_demo_end_to_end(quick_demo):
    """The quick demo writes report and summary: grounding, closed loop for both policies, timing."""
    out = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    for who in ("model", "model_given_2d", "baseline"):
        assert set(summary["grounding"][who]) >= {"ap3d", "ap15", "ap25", "rot_err_deg", "trans_err_cm", "acc_5deg_5cm"}
    verdict = summary["grounding"]["verdict"]
    assert set(verdict) == {"beats_baseline_given_2d", "beats_baseline_detecting", "reads_images", "text"}
    # stage 1 used the head camera only; stage 2 (initialised from it) all three slots
    s1 = json.loads((out / "stage1" / "config.json").read_text())
    s2 = json.loads((out / "stage2" / "config.json").read_text())
    assert s1["train"]["model"]["num_views"] == 1 and s1["model"]["num_views"] == 1
    assert s2["model"]["num_views"] == 3
    assert set(summary["timing_s"]) >= {"generate", "stage1", "stage2", "posttrain", "eval", "total"}
    assert {"torch", "transformers", "mujoco", "posevla"} <= set(summary["versions"])
    cl = summary["closed_loop"]
    assert cl["env"] == "metaworld" and cl["tasks"] == ["reach-v3"] and cl["episodes_per_task"] == 1
    for who in ("pose_pretrained", "scratch"):
        r = cl[who]
        assert set(r) >= {"successes", "episodes", "rate", "ci95"}
        assert r["episodes"] == 1 and 0 <= r["successes"] <= 1
        assert 0.0 <= r["ci95"][0] <= r["rate"] <= r["ci95"][1] <= 1.0
    # same budget for both policies; stage 2 started from this run's stage 1
    post = {w: json.loads((out / f"posttrain_{w}" / "config.json").read_text())["train"] for w in ("pose_pretrained", "scratch")}
    assert post["scratch"]["init_checkpoint"] is None
    assert "stage2" in post["pose_pretrained"]["init_checkpoint"]
    for k in ("steps", "batch_size", "seed", "data", "optim", "action"):
        assert post["pose_pretrained"][k] == post["scratch"][k]
    assert "stage1" in json.loads((out / "stage2" / "config.json").read_text())["train"]["init_checkpoint"]
    # the token bins stage 1 trained with cover the demos' waypoints (stage 2 reuses them)
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.data.trajectory import collect_waypoint_translations
    from posevla.tokens import BinSpec

    bins = BinSpec.load(out / "stage1" / "bins.json")
    z = collect_waypoint_translations(load_lerobot_v3(out / "data" / "lerobot"))[:, 2]
    assert "waypoints" in bins.description
    inside = (z >= bins.trans_z_edges[0]) & (z <= bins.trans_z_edges[-1])
    assert inside.mean() > 0.9, f"only {inside.mean():.0%} of waypoint depths fall inside the depth bins"
    # both policies saw the same environment seeds
    cards = {w: json.loads((out / "closed_loop" / w / "eval_card.json").read_text()) for w in ("pose_pretrained", "scratch")}
    assert cards["pose_pretrained"]["seeds"] == cards["scratch"]["seeds"] == {"reach-v3": [100000]}
    html = (out / "report.html").read_text()
    assert "loss_curve.png" in html and "baseline" in html and verdict["text"] in html
    assert "pose_pretrained" in html and "scratch" in html and "Wilson" in html
    assert (out / "loss_curve.png").exists()
    assert list((out / "eval" / "overlays").glob("*.png"))
    assert (out / "data" / "lerobot" / "meta" / "info.json").exists()


def _posttrain_checkpoint(out):
    return out / "posttrain_scratch"


@pytest.mark.sim
def test_eval_sim_smoke(quick_demo, tmp_path):
    """`posevla eval sim` on the quick demo's post-trained policy: one short episode, eval card written."""
    ev = tmp_path / "sim"
    main(["eval", "sim", "--env", "metaworld", "--tasks", "reach-v3", "--checkpoint", str(_posttrain_checkpoint(quick_demo)),
          "--episodes-per-task", "1", "--seed", "100000", "--replan-every", "4", "--max-steps", "8",
          "--videos-per-task", "0", "--out", str(ev), "--no-progress"])
    card = json.loads((ev / "eval_card.json").read_text())
    assert card["tasks"] == ["reach-v3"] and card["overall"]["episodes"] == 1
    assert card["chunk"]["replan_every"] == 4 and card["max_steps"] == 8
    assert (ev / "results.md").exists()


@pytest.mark.sim
def test_eval_sim_refuses_demo_seeds(quick_demo, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "sim", "--tasks", "reach-v3", "--checkpoint", str(_posttrain_checkpoint(quick_demo)),
              "--episodes-per-task", "1", "--seed", "0", "--max-steps", "4"])
    assert e.value.code == 1
    assert "--seed 100000" in capsys.readouterr().err


def test_eval_sim_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "sim", "--tasks", "reach-v3", "--checkpoint", str(tmp_path / "nope")])
    assert e.value.code == 1
    assert "nope" in capsys.readouterr().err


def test_eval_sim_unknown_task(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "sim", "--tasks", "reach-v9000", "--checkpoint", str(tmp_path)])
    assert e.value.code == 1
    assert "unknown MetaWorld task" in capsys.readouterr().err


@pytest.mark.sim
def test_metaworld_demos_smoke(tmp_path, capsys):
    """`posevla metaworld-demos`: one successful 48x48 reach episode written as LeRobot v3."""
    out = tmp_path / "demos"
    main(["metaworld-demos", "--tasks", "reach-v3", "--episodes-per-task", "1", "--seed", "0", "--image-size", "48",
          "--no-depth", "--out", str(out), "--no-progress"])
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    rep = json.loads((out / "meta" / "metaworld_demos.json").read_text())
    assert rep["successes"] == 1 and rep["episodes"][0]["task"] == "reach-v3"
    assert "demos/min" in capsys.readouterr().out


def test_metaworld_demos_unknown_task(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["metaworld-demos", "--tasks", "pick-plcae-v3", "--out", str(tmp_path / "d")])
    assert e.value.code == 2  # refused while the flags are parsed (the config validates itself)
    err = capsys.readouterr().err
    assert "unknown MetaWorld task" in err and "pick-place-v3" in err


def test_demo_rejects_overlapping_eval_seeds(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--eval-seed", "3", "--out-dir", str(tmp_path / "d")])
    assert e.value.code == 1
    assert "--eval-seed" in capsys.readouterr().err



@pytest.mark.sim
def test_eval_sim_through_a_server_matches_in_process(quick_demo):
    """`posevla eval sim --server URL`: the same per-seed outcomes as evaluating the checkpoint in process."""
    from posevla.eval.sim import evaluate_policy_checkpoint
    from posevla.policy import Policy
    from posevla.serving.server import serve_in_thread

    ckpt = _posttrain_checkpoint(quick_demo)
    kw = dict(env="metaworld", tasks=("reach-v3",), episodes_per_task=2, seed=100_000, replan_every=4,
              max_steps=10, videos_per_task=0)
    local = evaluate_policy_checkpoint(ckpt, device="cpu", **kw)
    with serve_in_thread(Policy.from_checkpoint(ckpt, device="cpu", seed=0)) as h:
        remote = evaluate_policy_checkpoint(None, server=h.url, **kw)
    keys = ("seed", "success", "steps", "success_step", "policy_calls", "total_reward")
    assert [{k: e[k] for k in keys} for e in remote["episodes"]] == [{k: e[k] for k in keys} for e in local["episodes"]]
    assert remote["extra"]["server"] == h.url and remote["extra"]["served_checkpoint"]


@pytest.mark.sim
def test_run_robot_real_time_loop_through_a_server(quick_demo, tmp_path, capsys):
    """`posevla run-robot`: a simulated robot at a fixed rate, chunks requested in the background, RTC and naive."""
    from posevla.policy import Policy
    from posevla.serving.server import serve_in_thread

    with serve_in_thread(Policy.from_checkpoint(_posttrain_checkpoint(quick_demo), device="cpu")) as h:
        for mode in ("rtc", "naive"):
            main(["run-robot", "--server", h.url, "--task", "reach-v3", "--max-steps", "12", "--rate-hz", "20",
                  "--mode", mode, "--execution-horizon", "4", "--inference-delay", "1",
                  "--out", str(tmp_path / mode)])
            run = json.loads((tmp_path / mode / "run.json").read_text())
            assert run["mode"] == mode and run["applied"] + run["starved"] == run["steps"] > 0
            assert run["requests"] >= 2 and run["switches"] >= 1 and run["mean_jump"] is not None
    with pytest.raises(SystemExit) as e:
        main(["run-robot", "--server", "ws://127.0.0.1:9", "--task", "reach-v3", "--connect-timeout-s", "1"])
    assert e.value.code == 1 and "no policy server" in capsys.readouterr().err
