"""The demo's outputs: ``summary.json`` (the headline figures, contracts "The demo's summary") and ``report.html``.

:func:`demo_summary` assembles the figures of the phases `posevla.pipeline.run_demo` ran; :func:`write_demo_report`
lays them out as a self-contained page (the verdict on stage 1 in words, closed-loop success of both policies
with Wilson intervals, loss curves, the grounding tables, box overlays and videos) and prints the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posevla.eval.report import markdown_table, write_html_report
from posevla.runtime import package_versions
from posevla.tokens.report import format_report

__all__ = ["GROUNDING_KEYS", "demo_summary", "write_demo_report"]

#: The grounding metrics the summary and the report show per predictor.
GROUNDING_KEYS = ("ap3d", "ap15", "ap25", "rot_err_deg", "trans_err_cm", "acc_5deg_5cm")
_POLICIES = ("pose_pretrained", "scratch")


def demo_summary(
    cfg: Any, ev: dict[str, Any], stage1: Any, qrep: dict[str, Any], timing: dict[str, float],
    gen_train: dict[str, Any], robot: dict[str, Any] | None,
) -> dict[str, Any]:
    """The summary.json document of one demo run (`cfg` is its `posevla.pipeline.DemoConfig`)."""
    summary: dict[str, Any] = {
        "grounding": {
            **{who: {k: ev[who][k] for k in GROUNDING_KEYS} for who in ("model", "model_given_2d", "baseline")},
            "image_reliance": ev["image_reliance"],
            "n_scenes": ev["n_scenes"],
            "verdict": ev["verdict"],
        },
        "timing_s": timing,
        "data": {
            "train_scenes": cfg.train_scenes,
            "val_scenes": cfg.val_scenes,
            "generate_scenes_per_s": gen_train.get("scenes_per_s"),
        },
        "training": {"steps": stage1.steps, "final_loss": stage1.final_loss, "batch_size": cfg.batch_size},
        "quantization": qrep,
        "versions": package_versions(),
        "quick": cfg.quick,
    }
    if robot is not None:
        summary["closed_loop"] = robot["closed_loop"]
        summary["data"]["metaworld_demos"] = robot["demos"].get("successes")
        summary["data"]["demos_per_min"] = robot["demos"].get("demos_per_min")
        summary["data"]["constant_dims"] = robot["constant_dims"]
        summary["robot_training"] = robot["training"]
    return summary


def _replanning(cfg: Any) -> str:
    if cfg.replan_every is None:
        return "executing each predicted 16-step chunk whole"
    return f"re-planning every {cfg.replan_every} of 16 predicted actions"


def _robot_parts(cfg: Any, robot: dict[str, Any], headline: dict[str, Any]) -> tuple[list, list, list, list, list]:
    """(closed-loop rows, per-task rows, sections, images, videos) of the robot phases."""
    cl = robot["closed_loop"]
    cl_rows = []
    for name in _POLICIES:
        r = cl[name]
        headline[f"{name} success"] = f"{r['successes']}/{r['episodes']}"
        cl_rows.append({"policy": name, "successes": r["successes"], "episodes": r["episodes"],
                        "rate %": 100 * r["rate"], "ci95 low %": 100 * r["ci95"][0],
                        "ci95 high %": 100 * r["ci95"][1]})
    per_task = []
    for task in cl["tasks"]:
        row: dict[str, Any] = {"task": task}
        for n in _POLICIES:
            r = cl["per_task"][n][task]
            row[f"{n} successes"] = f"{r['successes']}/{r['episodes']}"
            row[f"{n} rate %"] = 100 * r["rate"]
        per_task.append(row)
    tr = robot["training"]
    text = (
        f"{robot['demos'].get('successes')} scripted-expert MetaWorld demos ({', '.join(cl['tasks'])}; "
        f"seeds from {cfg.seed}) → stage 2 from this run's stage-1 checkpoint, {tr['stage2']['steps']} steps "
        f"(waypoints + stage-1 scenes) → post-training of the action expert, {cfg.posttrain_steps} steps at "
        f"batch {cfg.posttrain_batch_size}, once from the stage-2 checkpoint (pose_pretrained) and once from "
        f"scratch (no pose pre-training), same data, seed and budget → {cl['episodes_per_task']} closed-loop "
        f"episodes per task for each policy on the same environment seeds (from {cfg.eval_seed}), at most "
        f"{cfg.eval_max_steps} steps, {_replanning(cfg)}."
        + (f" Dims constant in the demos (centred only): {', '.join(robot['constant_dims'])}."
           if robot["constant_dims"] else "")
    )
    images = [("stage-2 training loss", "stage2_loss.png")] + [
        (f"post-training loss: {n}", f"posttrain_{n}_loss.png") for n in _POLICIES
    ]
    videos = [(f"{name}: {Path(v).stem}", f"closed_loop/{name}/{v}")
              for name, card in robot["cards"].items() for v in card["videos"]]
    return cl_rows, per_task, [("Robot phases", text)], images, videos


def write_demo_report(
    out: Path, cfg: Any, ev: dict[str, Any], stage1: Any, qrep: dict[str, Any], timing: dict[str, float],
    robot: dict[str, Any] | None,
) -> Path:
    """Write ``out/report.html`` (the loss curves and overlays it shows are already in `out`) and print the
    grounding and closed-loop tables; returns the page's path."""
    verdict = ev["verdict"]
    rows = [{"predictor": n, **{k: ev[n][k] for k in GROUNDING_KEYS}} for n in ("model", "model_given_2d", "baseline")]
    per_cat = [
        {"category": c, **{f"model {k}": v for k, v in d.items() if k in ("ap3d", "ap25")},
         **{f"baseline {k}": ev["baseline"]["per_category"].get(c, {}).get(k) for k in ("ap3d", "ap25")}}
        for c, d in sorted(ev["model"]["per_category"].items())
    ]
    headline: dict[str, Any] = {
        "model AP3D": ev["model"]["ap3d"],
        "baseline AP3D": ev["baseline"]["ap3d"],
        "model AP@0.25": ev["model"]["ap25"],
        "baseline AP@0.25": ev["baseline"]["ap25"],
        "model given 2D AP3D": ev["model_given_2d"]["ap3d"],
        "model given 2D trans err (cm)": ev["model_given_2d"]["trans_err_cm"],
        "baseline trans err (cm)": ev["baseline"]["trans_err_cm"],
    }
    sections = [
        ("Verdict", verdict["text"]),
        ("What ran", f"{cfg.train_scenes} train / {cfg.val_scenes} held-out scenes, {stage1.steps} steps of "
         f"stage-1 training (batch {cfg.batch_size}, {cfg.stage1_views} camera view(s) per sample), evaluation "
         f"on {ev['n_scenes']} held-out scenes. "
         "Baseline = each category's mean depth, size and rotation at the object's true 2D centre. "
         "model = the model detects (finds the objects and their 2D boxes itself); model_given_2d = the true "
         "objects and 2D boxes are given and the model predicts their 3D poses (the baseline's information)."),
    ]
    images = [("stage-1 training loss", "loss_curve.png")]
    tables = [("3D grounding: model vs baseline", rows), ("Per category", per_cat)]
    videos: list[tuple[str, str]] = []
    cl_rows: list[dict[str, Any]] = []
    if robot is not None:
        cl_rows, per_task, robot_sections, robot_images, videos = _robot_parts(cfg, robot, headline)
        tables[:0] = [("Closed loop: MetaWorld success (Wilson 95 % interval)", cl_rows)]
        tables.append(("Closed loop per task", per_task))
        sections += robot_sections
        images += robot_images
    headline["total time (s)"] = timing["total"]
    sections.append(("Pose-token quantisation", format_report(qrep)))
    images += [(f"held-out scene {Path(p).stem}", f"eval/{p}") for p in ev.get("overlays", [])]
    tables.append(("Wall time per phase (s)", [timing]))
    page = out / "report.html"
    write_html_report(
        page,
        title="posevla demo: pose pre-training, then MetaWorld post-training vs from scratch"
        if robot is not None else "posevla demo: stage-1 pose pre-training on generated MuJoCo scenes",
        summary=headline,
        sections=sections,
        images=images,
        tables=tables,
        videos=videos,
    )
    print("\n" + markdown_table(rows))
    print(f"\n[demo] stage 1: {verdict['text']}")
    if cl_rows:
        print("\n" + markdown_table(cl_rows))
    return page
