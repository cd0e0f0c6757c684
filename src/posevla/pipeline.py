"""`posevla demo`: the main job, end to end on the embedded data, on a laptop CPU. This module holds its phases.

  generate MuJoCo tabletop scenes (train / held-out)  →  scripted-expert MetaWorld demos (LeRobot v3)
  →  fit pose-token bins on the scenes and the demos' waypoints (+ quantisation report)
  →  stage-1 pre-training of the tiny PoseVLM  →  3D grounding evaluation (model vs category-mean
  baseline, same run)  →  stage 2 (waypoints + stage-1 scenes, from the stage-1 checkpoint)
  →  post-training of the action expert twice with the same budget: from the stage-2 checkpoint
  ("pose_pretrained") and from scratch ("scratch")  →  closed-loop MetaWorld evaluation of both on the
  same environment seeds (Wilson 95 % intervals)  →  runs/demo/report.html + runs/demo/summary.json

Every phase is timed; the summary follows the contract in the project's contracts ("The demo's summary";
`posevla.eval.demo_report`). Re-running reuses generated scenes and demos when their parameters match.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from posevla.data.actions import constant_dims
from posevla.data.fitting import collect_labels
from posevla.data.formats.lerobot import load_lerobot_v3
from posevla.data.formats.omni3d import load_omni3d
from posevla.data.sources import SourceSpec, fit_source_bins, load_source
from posevla.errors import ConfigError, check_float, check_int
from posevla.eval.demo_report import demo_summary, write_demo_report
from posevla.eval.predict import evaluate_checkpoint
from posevla.eval.sim import evaluate_policy_checkpoint
from posevla.sim import REPLAN_EVERY, resolve_task
from posevla.sim.demos import REPORT_FILE, ExpertDemoConfig, write_expert_demos
from posevla.sim.objects import category_names
from posevla.sim.tabletop import GENERATOR_VERSION, generate_dataset
from posevla.tokens import BinSpec
from posevla.tokens.report import format_report, quantization_report
from posevla.training.configs import get_config
from posevla.training.config import TrainConfig
from posevla.training.curves import plot_loss_curve
from posevla.training.trainer import TrainResult, train

__all__ = ["DEFAULT_TASKS", "DEMO_CATEGORIES", "DemoConfig", "quick_config", "short_run", "run_demo"]

#: MetaWorld tasks of the demo: the scripted experts solve every seed tried (0-3) in 55-90 frames, and
#: each needs only a reach/push along one direction, which a small policy can plausibly learn.
DEFAULT_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3")

#: Object categories of the demo scenes: the whole catalogue (17 YCB meshes + 3 primitives).
DEMO_CATEGORIES = tuple(category_names())


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo; the defaults are the honest full run (target ≤ 30 min on 2 cores).

    Time budget of the default run on 2 CPU cores. The stage-1 part is from its last full measured run
    (README). The robot phases are extrapolated from quick runs: per-step and per-call times were
    measured, then multiplied by the default counts. Measured end to end at the defaults (fresh clone, 2 cores):
    generate 43 s, demos 129 s, stage1 669 s (3,000 steps), eval 28 s, stage2 126 s, posttrain 94 s + 89 s,
    closed_loop 165 s; total 22.5 min (24.6 min with creating the venv). A faster 2-core machine ran the same
    defaults in 11.0 min (11.9 min with the venv): generate 21 s, demos 61 s, stage1 340 s, eval 12 s, stage2
    53 s, posttrain 45 s + 45 s, closed_loop 82 s.

    | phase                  | work at the defaults                                | estimate |
    |------------------------|-----------------------------------------------------|----------|
    | generate               | 1100 scenes, 2 workers                              | ~1.5 min |
    | stage1                 | 3000 steps, batch 8, head view only (~0.19-0.23 s/step) | ~10-12 min |
    | eval (grounding)       | 100 held-out scenes                                 | ~1.5 min |
    | demos                  | 3 tasks x 10 expert episodes, 55-90 frames each, 3 cameras at 128 px, ~27 env steps/s | ~1.5 min |
    | stage2                 | 150 steps, batch 8 (as stage 1)                     | ~1.5 min |
    | posttrain              | 2 x 200 steps, batch 8 (~0.7-1.5 s/step)            | ~5-10 min |
    | closed_loop            | 2 policies x 3 tasks x 5 episodes, <= 100 steps, a query every 16 steps (~1-3 s per query) | ~4-8 min |

    The robot phases are dominated by the action-expert steps and the policy queries. Each query runs
    10 flow steps through the VLM prefix. Under CPU contention from other processes every figure grows
    several-fold. Cut `posttrain_steps` or `eval_episodes_per_task` to stay inside a fixed budget.
    """

    out_dir: str = "runs/demo"
    train_scenes: int = 1000
    val_scenes: int = 100
    width: int = 256
    height: int = 192
    categories: tuple[str, ...] = DEMO_CATEGORIES
    """Object categories of the demo scenes (default: the whole catalogue). With
    20 categories a scene rarely holds two objects of one kind; with 10, duplicates are common and the one-view
    stage 1 did not start reading its images within 2,400 steps in three runs (docs/design.md)."""
    seed: int = 0
    workers: int = 2
    steps: int = 3000
    """Stage-1 steps. The head-view model starts reading its images after 1,100-2,000 steps (the step varies from
    run to run, even between runs of one seed: float rounding differs); 3,000 leaves it time to use them."""
    stage1_views: int = 1
    """Camera slots per stage-1 sample: the head view only by default. On the CPU budget a three-view tiny
    model does not start reading its images within 1,200 steps (the answer has to find its image tokens
    among 3× as many); one view does after 1,100-2,000 steps on the demo's scenes and costs ~2.5× less per
    step. Stage 2 and post-training use all three cameras (the weights do not depend on the slot count)."""
    batch_size: int = 8
    lr: float = 2e-3
    eval_scenes: int = 100
    regenerate: bool = False
    """Regenerate the scenes even if a matching dataset exists."""
    robot: bool = True
    """Run the robot phases after the grounding part (demos, stage 2, post-training, closed loop)."""
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """MetaWorld v3 tasks of the demos and the closed-loop evaluation."""
    demos_per_task: int = 10
    """Successful scripted-expert episodes per task (seeds `seed`, `seed + 1`, ...)."""
    demo_image_size: int = 128
    """Camera images of demos and evaluation (square; the tiny model's input size)."""
    stage2_steps: int = 150
    posttrain_steps: int = 200
    """Post-training steps; the pose-pretrained and the from-scratch policy get the same budget."""
    posttrain_batch_size: int = 8
    eval_episodes_per_task: int = 5
    eval_seed: int = 100_000
    """First environment seed of the closed-loop evaluation (never one of the demos' seeds)."""
    eval_max_steps: int = 100
    """Step limit of an evaluation episode (the experts need 55-90 steps on the default tasks)."""
    replan_every: int | None = REPLAN_EVERY
    """Actions executed from each predicted 16-step chunk before the policy is queried again (default: the
    whole chunk, as the paper deploys; fewer reacts faster but costs a query each time)."""
    videos_per_task: int = 1
    quick: bool = False
    """Tiny smoke run (for CI / tests): few scenes, few steps, one task. Numbers are not meaningful."""
    progress: bool = True

    def __post_init__(self) -> None:
        for flag, v, lo in (
            ("--train-scenes", self.train_scenes, 1), ("--val-scenes", self.val_scenes, 1),
            ("--width", self.width, 16), ("--height", self.height, 16), ("--workers", self.workers, 1),
            ("--steps", self.steps, 1), ("--stage1-views", self.stage1_views, 1), ("--batch-size", self.batch_size, 1),
            ("--eval-scenes", self.eval_scenes, 1), ("--demos-per-task", self.demos_per_task, 1),
            ("--demo-image-size", self.demo_image_size, 16), ("--stage2-steps", self.stage2_steps, 1),
            ("--posttrain-steps", self.posttrain_steps, 1), ("--posttrain-batch-size", self.posttrain_batch_size, 1),
            ("--eval-episodes-per-task", self.eval_episodes_per_task, 1), ("--eval-seed", self.eval_seed, 0),
            ("--eval-max-steps", self.eval_max_steps, 1), ("--videos-per-task", self.videos_per_task, 0),
            ("--seed", self.seed, 0),
        ):
            check_int(v, flag, lo=lo)
        check_float(self.lr, "--lr", lo=0.0, lo_open=True)
        if self.replan_every is not None:
            check_int(self.replan_every, "--replan-every", lo=1)


def quick_config(cfg: DemoConfig) -> DemoConfig:
    return dataclasses.replace(
        cfg, train_scenes=12, val_scenes=3, steps=4, batch_size=4, eval_scenes=3, workers=1,
        tasks=cfg.tasks[:1], demos_per_task=1, demo_image_size=64, stage2_steps=2, posttrain_steps=2,
        posttrain_batch_size=2, eval_episodes_per_task=1, eval_max_steps=16, videos_per_task=1,
    )


def _generate(root: Path, n: int, seed: int, cfg: DemoConfig) -> dict[str, Any]:
    marker = root / "generation.json"
    want = {
        "num_scenes": n,
        "seed": seed,
        "width": cfg.width,
        "height": cfg.height,
        "categories": list(cfg.categories),
        "version": GENERATOR_VERSION,
    }
    if not cfg.regenerate and marker.exists() and (root / "dataset.json").exists():
        have = json.loads(marker.read_text())
        if have.get("params") == want:
            print(f"[demo] reusing {root} ({n} scenes)")
            return have["stats"] | {"reused": True}
    stats = generate_dataset(
        root, n, seed=seed, width=cfg.width, height=cfg.height, workers=cfg.workers, progress=cfg.progress,
        categories=cfg.categories,
    )
    marker.write_text(json.dumps({"params": want, "stats": stats}, indent=2, default=float))
    return stats


def _demo_seed_ranges_overlap(cfg: DemoConfig) -> None:
    """The evaluation seeds must not be seeds the demos could have used (attempt k = seed + k)."""
    attempts = 2 * cfg.demos_per_task + 5  # ExpertDemoConfig.attempts_per_task's default attempt limit
    demo = range(cfg.seed, cfg.seed + attempts)
    ev = range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes_per_task)
    if demo.start < ev.stop and ev.start < demo.stop:
        raise ConfigError(
            f"evaluation seeds {ev.start}..{ev.stop - 1} overlap the demo seeds {demo.start}..{demo.stop - 1}; "
            "pass a larger --eval-seed (e.g. 100000)"
        )


def _write_demos(root: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Scripted-expert demos at `root` (LeRobot v3); reused when a previous run wrote the same ones."""
    mw = ExpertDemoConfig(tasks=cfg.tasks, episodes_per_task=cfg.demos_per_task, seed=cfg.seed,
                          image_size=cfg.demo_image_size)
    want = {"tasks": list(mw.tasks), "episodes_per_task": mw.episodes_per_task, "seed": mw.seed,
            "image_size": mw.image_size, "depth": mw.depth, "max_steps": mw.max_steps,
            "frames_after_success": mw.frames_after_success}
    report_file = root / REPORT_FILE
    if not cfg.regenerate and report_file.exists() and (root / "meta" / "info.json").exists():
        have = json.loads(report_file.read_text())
        if {k: have.get("config", {}).get(k) for k in want} == want:
            print(f"[demo] reusing {root} ({have['successes']} MetaWorld demos)")
            return have | {"reused": True}
    return write_expert_demos(root, mw, overwrite=True, progress=cfg.progress).to_dict()


def _fit_demo_bins(out: Path, train_dir: Path, lerobot_dir: Path) -> Path:
    """Token bins fitted over the stage-1 scenes and the stage-2 demo waypoints, saved as `out/bins.json`."""
    s1, s2 = get_config("stage1-tiny"), get_config("stage2-tiny")
    lerobot_spec = next(sp for sp in s2.data.sources if sp.kind == "lerobot")
    loaded = [
        load_source(SourceSpec(kind="generated", path=str(train_dir))),
        load_source(dataclasses.replace(lerobot_spec, path=str(lerobot_dir))),
    ]
    bins = fit_source_bins(loaded, s1.bins, description=f"fitted on {train_dir} (boxes) + {lerobot_dir} (waypoints)")
    path = out / "bins.json"
    bins.save(path)
    return path


def short_run(cfg: TrainConfig, steps: int, **changes: Any) -> TrainConfig:
    """`cfg` shortened to `steps` steps as the demo runs it: warm-up at most a tenth of the run, a log line
    at least every 50th of it, and a checkpoint at the end (plus every `save_every`, when given)."""
    save_every = changes.pop("save_every", max(steps, 1))
    optim = {"warmup_steps": min(cfg.optim.warmup_steps, max(1, steps // 10)), **changes.pop("optim", {})}
    return dataclasses.replace(
        cfg,
        steps=steps,
        optim=dataclasses.replace(cfg.optim, **optim),
        save_every=save_every,
        log_every=max(1, min(10, steps // 50)),
        **changes,
    )


def _robot_phases(
    cfg: DemoConfig, out: Path, train_dir: Path, stage1_ckpt: Path, timing: dict[str, float]
) -> dict[str, Any]:
    """Demos → stage 2 → post-training (pose-pretrained and scratch, same budget) → closed-loop eval."""
    # demos (written before stage 1 by run_demo; reused here)
    t = time.time()
    lerobot_dir = out / "data" / "lerobot"
    demos = _write_demos(lerobot_dir, cfg)
    timing.setdefault("demos", round(time.time() - t, 2))

    # stage 2: from this run's stage-1 checkpoint, on the demos' waypoints + the stage-1 scenes
    t = time.time()
    base2 = get_config("stage2-tiny")
    kinds = {s.kind: s for s in base2.data.sources}
    sources = (dataclasses.replace(kinds["lerobot"], path=str(lerobot_dir)),
               dataclasses.replace(kinds["generated"], path=str(train_dir)))
    r2 = train(short_run(base2, cfg.stage2_steps, init_checkpoint=str(stage1_ckpt), out_dir=str(out / "stage2"),
                         data=dataclasses.replace(base2.data, sources=sources), batch_size=cfg.batch_size,
                         progress=cfg.progress))
    timing["stage2"] = round(time.time() - t, 2)

    # post-training: the same budget (steps, batch, seed, data) from stage 2 and from scratch
    t = time.time()
    base = get_config("posttrain-tiny")
    constant = constant_dims(load_lerobot_v3(lerobot_dir), base.action)
    if constant:
        print(f"[demo] constant in the demos (centred, not scaled): {', '.join(constant)}")
    action = dataclasses.replace(base.action, constant_dims=tuple(base.action.constant_dims) + constant)
    post: dict[str, TrainResult] = {}
    for name, init in (("pose_pretrained", str(r2.checkpoint)), ("scratch", None)):
        tt = time.time()
        post[name] = train(short_run(
            base, cfg.posttrain_steps, init_checkpoint=init, out_dir=str(out / f"posttrain_{name}"),
            data=dataclasses.replace(base.data, train_data=str(lerobot_dir)), action=action,
            batch_size=cfg.posttrain_batch_size, progress=cfg.progress,
        ))
        timing[f"posttrain_{name}"] = round(time.time() - tt, 2)
    timing["posttrain"] = round(time.time() - t, 2)

    # closed loop: both policies, the same tasks and environment seeds
    t = time.time()
    cards = {
        name: evaluate_policy_checkpoint(
            res.checkpoint, env="metaworld", tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes_per_task,
            seed=cfg.eval_seed, replan_every=cfg.replan_every, max_steps=cfg.eval_max_steps,
            out_dir=out / "closed_loop" / name, videos_per_task=cfg.videos_per_task, image_size=cfg.demo_image_size,
            policy_name=name, progress=cfg.progress,
        )
        for name, res in post.items()
    }
    timing["closed_loop"] = round(time.time() - t, 2)

    keys = ("successes", "episodes", "rate", "ci95")
    closed_loop: dict[str, Any] = {
        "env": "metaworld",
        "tasks": list(cfg.tasks),
        "episodes_per_task": cfg.eval_episodes_per_task,
        **{name: {k: card["overall"][k] for k in keys} for name, card in cards.items()},
        "per_task": {name: {task: {k: r[k] for k in keys} for task, r in card["per_task"].items()}
                     for name, card in cards.items()},
        "first_seed": cfg.eval_seed,
        "replan_every": cfg.replan_every,
        "max_steps": cfg.eval_max_steps,
        "latency_ms_p50": {name: card["latency"]["p50_ms"] for name, card in cards.items()},
    }
    plot_loss_curve(r2.history, out / "stage2_loss.png", title="stage 2 (waypoints + scenes)")
    for name, res in post.items():
        plot_loss_curve(res.history, out / f"posttrain_{name}_loss.png", title=f"post-training: {name}")
    return {
        "closed_loop": closed_loop,
        "cards": cards,
        "demos": demos,
        "constant_dims": list(constant),
        "training": {
            "stage2": {"steps": r2.steps, "final_loss": r2.final_loss, "batch_size": cfg.batch_size},
            **{f"posttrain_{n}": {"steps": r.steps, "final_loss": r.final_loss, "batch_size": cfg.posttrain_batch_size}
               for n, r in post.items()},
        },
    }


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict[str, Any]:
    """Run the whole pipeline; returns the summary dict (also written to summary.json)."""
    if cfg.quick:
        cfg = quick_config(cfg)
    if cfg.robot:
        _demo_seed_ranges_overlap(cfg)
        if not cfg.tasks:
            raise ConfigError("--tasks is empty: name at least one MetaWorld task (or pass --no-robot)")
        cfg = dataclasses.replace(cfg, tasks=tuple(resolve_task("metaworld", t) for t in cfg.tasks))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = time.time()

    # 1. data
    t = time.time()
    train_dir, val_dir = out / "data" / "train", out / "data" / "val"
    gen_train = _generate(train_dir, cfg.train_scenes, cfg.seed, cfg)
    _generate(val_dir, cfg.val_scenes, cfg.seed + 1_000_003, cfg)
    timing["generate"] = round(time.time() - t, 2)

    # 1b. robot demos come first, so the token bins cover stage-2 waypoints too (spec open question 1):
    # MetaWorld cameras see the gripper at 1-2 m, far outside the tabletop scenes' 0.3-0.9 m depth range.
    bins_path = None
    if cfg.robot:
        t = time.time()
        _write_demos(out / "data" / "lerobot", cfg)
        timing["demos"] = round(time.time() - t, 2)
        bins_path = _fit_demo_bins(out, train_dir, out / "data" / "lerobot")

    # 2. stage 1
    t = time.time()
    base = get_config("stage1-tiny")
    stage1 = train(short_run(
        base, cfg.steps, bins_file=None if bins_path is None else str(bins_path),
        data=dataclasses.replace(base.data, train_data=str(train_dir)), out_dir=str(out / "stage1"),
        batch_size=cfg.batch_size, optim={"lr": cfg.lr},
        model=dataclasses.replace(base.model, num_views=cfg.stage1_views), save_every=max(cfg.steps // 3, 1),
        progress=cfg.progress,
    ))
    timing["stage1"] = round(time.time() - t, 2)

    # quantisation report on the held-out labels, with the bins the model was trained with
    bins = BinSpec.load(out / "stage1" / "bins.json")
    labels = collect_labels(load_omni3d(val_dir / "dataset.json"))
    qrep = quantization_report(bins, trans_xy=labels["trans_xy"], trans_z=labels["trans_z"], size=labels["size"],
                               rot=labels["rot"])
    (out / "tokens_report.txt").write_text(format_report(qrep))

    # 3. evaluation
    t = time.time()
    ev = evaluate_checkpoint(stage1.checkpoint, val_dir, train_data=train_dir, out_dir=out / "eval",
                             max_scenes=cfg.eval_scenes, progress=cfg.progress)
    timing["eval"] = round(time.time() - t, 2)

    # 4. robot phases: demos, stage 2, post-training (pose-pretrained vs scratch), closed loop
    robot = _robot_phases(cfg, out, train_dir, stage1.checkpoint, timing) if cfg.robot else None
    timing["total"] = round(time.time() - t_all, 2)

    summary = demo_summary(cfg, ev, stage1, qrep, timing, gen_train, robot)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    plot_loss_curve(stage1.history, out / "loss_curve.png")
    write_demo_report(out, cfg, ev, stage1, qrep, timing, robot)
    print(f"\nwall time per phase (s): {timing}")
    print(f"report: {out / 'report.html'}\nsummary: {out / 'summary.json'}")
    return summary
