"""Closed-loop rollouts: Wilson intervals, chunk/replan bookkeeping, expert ~100 %, random ~0 %, eval card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posevla.sim import PolicyOutput
from posevla.sim.metaworld import expert_chunk_policy, make
from posevla.errors import ConfigError, DataError
from posevla.eval.card import latency_summary, success_summary, wilson_interval
from posevla.eval.rollout import evaluate, random_policy, rollout
from posevla.eval.video import VIDEO_FORMAT, draw_waypoints, waypoint_overlay

pytestmark = pytest.mark.sim  # runs MuJoCo (rendering, MetaWorld)

SMALL = {"image_size": 64, "cameras": {"head": "corner", "wrist": "gripperPOV"}}


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [  # reference values of the 95 % Wilson score interval (z = 1.96)
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (8, 10, 0.4902, 0.9433),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (50, 100, 0.4038, 0.5962),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_and_summaries_validate():
    with pytest.raises(DataError):
        wilson_interval(3, 2)
    with pytest.raises(DataError):
        wilson_interval(-1, 2)
    with pytest.raises(DataError):
        wilson_interval(1.0, 2)  # type: ignore[arg-type]
    s = success_summary(5, 10)
    assert s["rate"] == 0.5 and s["ci95"] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    lat = latency_summary([0.001] * 19 + [0.021])
    assert lat["calls"] == 20 and lat["p50_ms"] == pytest.approx(1.0) and lat["p95_ms"] == pytest.approx(2.0)
    assert latency_summary([])["p50_ms"] is None


def test_chunks_replan_and_errors():
    env = make("reach-v3", render=False, max_steps=20)
    try:
        calls = []

        def policy(obs):
            calls.append(obs["observation.ee_pose"].copy())
            return np.zeros((5, 4), np.float32)

        r = rollout(env, policy, episodes=2, seeds=[7, 9], replan_every=3)
        assert [e.seed for e in r.episodes] == [7, 9] and [e.steps for e in r.episodes] == [20, 20]
        assert [e.policy_calls for e in r.episodes] == [7, 7] and len(calls) == 14  # ceil(20 / 3)
        assert r.summary()["chunk_horizon"] == [5] and not r.successes
        # a chunk shorter than replan_every is used up, then the policy is asked again
        r = rollout(env, lambda obs: np.zeros(4), episodes=1, seeds=0, replan_every=4, max_steps=6)
        assert r.episodes[0].policy_calls == 6
        with pytest.raises(DataError, match=r"expected a finite chunk \(H, 4\)"):
            rollout(env, lambda obs: np.zeros((2, 7)), episodes=1)
        # NaN actions never reach the simulator: the episode fails with the reason, the next one runs
        sent = []
        real_step = env.step
        env.step = lambda a: (sent.append(np.asarray(a)), real_step(a))[1]
        calls = iter(range(100))
        r = rollout(env, lambda obs: np.full((2, 4), np.nan) if next(calls) == 1 else np.zeros((2, 4)),
                    episodes=2, seeds=[3, 4], replan_every=2, max_steps=6)
        assert r.episodes[0].error and "non-finite" in r.episodes[0].error and r.episodes[0].steps == 2
        assert r.episodes[1].error is None and r.episodes[1].steps == 6
        assert all(np.all(np.isfinite(a)) for a in sent) and len(sent) == 8
        assert r.summary()["failed_with_error"][0]["seed"] == 3
        # a simulator that crashes mid-episode fails that episode only
        def crashing_step(a, n=iter(range(100))):
            if next(n) == 3:
                raise RuntimeError("physics went unstable")
            return real_step(a)
        env.step = crashing_step
        r = rollout(env, lambda obs: np.zeros((2, 4)), episodes=2, seeds=[5, 6], max_steps=5)
        assert "physics went unstable" in r.episodes[0].error and not r.episodes[0].success
        assert r.episodes[1].error is None and r.episodes[1].steps == 5
        env.step = real_step
        with pytest.raises(ConfigError, match="max_steps"):
            rollout(env, lambda obs: np.zeros(4), episodes=1, max_steps=21)
        with pytest.raises(ConfigError, match="replan_every"):
            rollout(env, lambda obs: np.zeros(4), episodes=1, replan_every=0)
        with pytest.raises(ConfigError, match="seeds"):
            rollout(env, lambda obs: np.zeros(4), seeds=[1, 1])
        with pytest.raises(ConfigError, match="video_dir"):
            rollout(env, lambda obs: np.zeros(4), episodes=1, videos=1)
        with pytest.raises(ConfigError, match="images"):
            rollout(env, lambda obs: np.zeros(4), episodes=1, videos=1, video_dir="unused")
    finally:
        env.close()


def test_random_policy_fails():
    env = make("pick-place-v3", render=False, max_steps=120)
    try:
        r = rollout(env, random_policy(4, horizon=8, seed=0), episodes=4, seeds=100_000, replan_every=4)
    finally:
        env.close()
    assert r.successes == 0 and r.ci95[1] < 0.5
    assert all(e.policy_calls == 30 for e in r.episodes)


def test_expert_chunks_succeed_with_eval_card_and_video(tmp_path):
    current = {}

    def make_env(task):
        current["env"] = make(task, max_steps=150, **SMALL)
        return current["env"]

    def expert(obs):  # expert chunks of 4 actions for whichever task is being evaluated
        return expert_chunk_policy(current["env"], horizon=4)(obs)

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    card = evaluate(
        make_env, expert, tasks=["reach-v3", "button-press-topdown-v3"], episodes_per_task=2,
        seeds=100_000, replan_every=2, out_dir=tmp_path / "eval", videos_per_task=1,
        overlay_fn=waypoint_overlay("head"), policy_name="scripted expert", checkpoint=ckpt,
    )
    assert card["overall"]["successes"] == 4 and card["overall"]["rate"] == 1.0
    assert card["overall"]["ci95"] == pytest.approx([0.5101, 1.0], abs=1e-4)
    assert card["chunk"] == {"replan_every": 2, "horizon": 4}
    assert card["seeds"] == {"reach-v3": [100_000, 100_001], "button-press-topdown-v3": [100_000, 100_001]}
    assert card["versions"]["metaworld"] == "3.1.1" and card["versions"]["mujoco"] != "not installed"
    assert len(card["checkpoint"]["sha256"]) == 64 and card["latency"]["p95_ms"] >= card["latency"]["p50_ms"]
    for task in ("reach-v3", "button-press-topdown-v3"):
        assert card["per_task"][task]["rate"] == 1.0 and card["per_task"][task]["mean_steps_to_success"] > 10
    on_disk = json.loads((tmp_path / "eval" / "eval_card.json").read_text())
    assert on_disk["overall"] == card["overall"]
    assert "| reach-v3 |" in (tmp_path / "eval" / "results.md").read_text()
    assert len(card["videos"]) == 2 and all(v.endswith("." + VIDEO_FORMAT) for v in card["videos"])
    video = tmp_path / "eval" / card["videos"][0]
    assert video.stat().st_size > 1000
    if VIDEO_FORMAT == "mp4":
        import imageio.v2 as iio

        with iio.get_reader(video) as reader:
            first = reader.get_data(0)
            n = reader.count_frames()
        assert first.shape == (14 + 2 * 64, 2 * 2 * 64, 3)  # caption strip + head|wrist, upscaled x2
        assert n == card["episodes"][0]["steps"] + 1


def test_draw_waypoints_lands_on_projection():
    env = make("reach-v3", 0, **SMALL)
    try:
        obs = env.last_obs
        K, T = obs["observation.cameras.head.K"], obs["observation.cameras.head.T_world_cam"]
        img = np.zeros((64, 64, 3), np.uint8)
        p = obs["observation.ee_pose"][:3].astype(float)
        out = draw_waypoints(img, p[None], K, T, color=(255, 0, 0), radius=1)
        from posevla.geometry import invert_T, project_points, transform_points

        u, v = np.round(project_points(K, transform_points(invert_T(T), p[None]))[0]).astype(int)
        assert out[v, u, 0] == 255 and out.sum() > 0 and img.sum() == 0
        # an overlay without waypoints leaves the frame alone
        same = waypoint_overlay("head")(img, obs, PolicyOutput(actions=np.zeros((1, 4))))
        assert same is img
    finally:
        env.close()
