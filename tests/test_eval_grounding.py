"""posevla.eval: grounding metrics (AP3D / AP15 / AP25, pose errors), overlays, HTML report, loss plot."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from posevla.errors import DataError
from posevla.eval.grounding import (
    SUMMARY_KEYS,
    Box3D,
    average_precision,
    evaluate_grounding,
)
from posevla.eval.overlays import draw_boxes, overlay_predictions, save_grid
from posevla.eval.report import markdown_table, write_html_report
from posevla.training.curves import plot_loss_curve


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def box(cat="mug", center=(0.0, 0.0, 3.0), dims=(1.0, 1.0, 1.0), yaw=0.0, score=1.0) -> Box3D:
    return Box3D(cat, np.asarray(center, float), np.asarray(dims, float), rot_y(yaw), score)


# 101-point interpolated AP for TP, FP, TP with 2 GT (hand-computed):
# precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3;
# recall points 0.00..0.50 (51) take 1, 0.51..1.00 (50) take 2/3.
AP_TP_FP_TP = 100.0 * (51 * 1.0 + 50 * (2.0 / 3.0)) / 101
# FP, TP, TP: precision 0, 1/2, 2/3 -> envelope 2/3 everywhere.
AP_FP_TP_TP = 100.0 * 2.0 / 3.0


def test_perfect_predictions():
    gt = {
        ("s0", 0): [box("mug", (0, 0, 3), yaw=20), box("bowl", (1.5, 0.2, 4), (0.4, 0.2, 0.6), yaw=-35)],
        ("s0", 1): [box("mug", (-1, 0.3, 2.5), (0.3, 0.5, 0.2), yaw=80)],
        ("s1", 0): [box("bowl", (0.2, 0, 5), (0.5, 0.3, 0.5))],
    }
    pred = {k: [Box3D(b.category, b.center, b.dims, b.R, 0.9) for b in v] for k, v in gt.items()}
    r = evaluate_grounding(pred, gt)
    assert r.ap3d == pytest.approx(100.0)
    assert r.ap15 == pytest.approx(100.0) and r.ap25 == pytest.approx(100.0)
    assert all(a == pytest.approx(100.0) for a in r.ap_per_threshold)
    assert r.rot_err_deg == pytest.approx(0.0, abs=1e-3)
    assert r.trans_err_cm == pytest.approx(0.0, abs=1e-9)
    assert r.acc_5deg_5cm == pytest.approx(100.0) and r.acc_10deg_5cm == pytest.approx(100.0)
    assert r.n_gt == 4 and r.n_pred == 4 and r.n_matched == 4
    assert set(r.per_category) == {"mug", "bowl"}
    assert r.per_category["bowl"]["n_gt"] == 2
    d = r.to_dict()
    assert list(d)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert set(r.summary()) == set(SUMMARY_KEYS)
    json.dumps(d)  # JSON-ready


def test_no_predictions_scores_zero():
    gt = {0: [box()], 1: [box("bowl")]}
    r = evaluate_grounding({}, gt)
    assert r.ap3d == 0.0 and r.ap15 == 0.0 and r.ap25 == 0.0
    assert r.acc_5deg_5cm == 0.0 and r.n_matched == 0
    assert math.isnan(r.rot_err_deg)
    assert r.to_dict()["rot_err_deg"] is None
    assert average_precision({0: []}, gt, "mug", 0.25) == 0.0


def test_iou_between_thresholds():
    # Unit cubes shifted by d along x: IoU = (1 - d) / (1 + d) = 0.2 for d = 2/3.
    gt = {0: [box(center=(0, 0, 3))]}
    pred = {0: [box(center=(2 / 3, 0, 3), score=0.5)]}
    r = evaluate_grounding(pred, gt)
    assert r.ap15 == pytest.approx(100.0)
    assert r.ap25 == pytest.approx(0.0)
    assert r.ap3d == pytest.approx(100.0 * 3 / 10)  # counted at 0.05, 0.10, 0.15 of 10 thresholds
    assert average_precision(pred, gt, "mug", 0.15) == pytest.approx(1.0)
    assert average_precision(pred, gt, "mug", 0.25) == 0.0
    assert r.trans_err_cm == pytest.approx(100 * 2 / 3)


def test_duplicate_prediction_lowers_precision():
    gt = {0: [box(center=(0, 0, 3)), box(center=(3, 0, 3))]}
    pred = {
        0: [
            box(center=(0, 0, 3), score=0.9),  # TP
            box(center=(0.02, 0, 3), score=0.8),  # duplicate of the first GT -> FP
            box(center=(3, 0, 3), score=0.7),  # TP
        ]
    }
    r = evaluate_grounding(pred, gt)
    assert r.ap25 == pytest.approx(AP_TP_FP_TP, abs=1e-9)
    assert r.ap3d == pytest.approx(AP_TP_FP_TP, abs=1e-9)
    assert r.ap25 < 100.0
    # Pose errors: each GT takes its best-IoU prediction, so the duplicate does not hurt them.
    assert r.acc_5deg_5cm == pytest.approx(100.0)


def test_score_ordering_matters():
    gt = {0: [box(center=(0, 0, 3))], 1: [box(center=(0, 0, 3))]}
    pred = {
        0: [box(center=(0, 0, 3), score=0.6)],
        1: [box(center=(0, 0, 3), score=0.7), box(center=(5, 0, 3), score=0.95)],  # far-off FP scored highest
    }
    assert average_precision(pred, gt, "mug", 0.5) == pytest.approx(AP_FP_TP_TP / 100)
    pred[1][1] = box(center=(5, 0, 3), score=0.1)  # same boxes, FP now scored lowest
    assert average_precision(pred, gt, "mug", 0.5) == pytest.approx(1.0)


def test_category_without_gt_is_excluded():
    gt = {0: [box("mug")]}
    pred = {0: [box("mug", score=0.9), box("plate", center=(2, 0, 4))]}
    r = evaluate_grounding(pred, gt)
    assert r.ap3d == pytest.approx(100.0) and r.ap15 == pytest.approx(100.0)
    assert math.isnan(r.per_category["plate"]["ap3d"])
    assert r.per_category["plate"]["n_gt"] == 0 and r.per_category["plate"]["n_pred"] == 1
    assert math.isnan(average_precision(pred, gt, "plate", 0.25))
    assert r.to_dict()["per_category"]["plate"]["ap3d"] is None
    # Wrong-category predictions never match.
    r2 = evaluate_grounding({0: [box("plate")]}, gt)
    assert r2.ap3d == 0.0 and r2.n_matched == 0


def test_rotation_error_about_vertical_axis():
    gt = {0: [box(dims=(0.4, 0.8, 0.6))]}
    pred = {0: [box(dims=(0.4, 0.8, 0.6), yaw=10.0)]}
    r = evaluate_grounding(pred, gt)
    assert r.rot_err_deg == pytest.approx(10.0, abs=1e-6)
    assert r.trans_err_cm == pytest.approx(0.0)
    assert r.acc_5deg_5cm == 0.0 and r.acc_10deg_5cm == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("center", (np.nan, 0.0, 3.0)), ("dims", (1.0, 0.0, 1.0)), ("R", np.full((3, 3), np.nan))],
)
def test_bad_box_raises_data_error(field, value):
    bad = box()
    setattr(bad, field, np.asarray(value, float))
    with pytest.raises(DataError) as e:
        evaluate_grounding({("scene7", 2): [box(), bad]}, {("scene7", 2): [box()]})
    msg = str(e.value)
    assert "scene7" in msg and "box 1" in msg and field in msg
    assert e.value.field == field


def test_many_boxes_fast():
    rng = np.random.default_rng(0)
    gt, pred = {}, {}
    for i in range(100):
        bs = [
            box(("mug", "bowl")[k % 2], (rng.uniform(-2, 2), rng.uniform(-1, 1), rng.uniform(3, 8)),
                rng.uniform(0.2, 0.6, 3), yaw=rng.uniform(-90, 90))
            for k in range(4)
        ]
        gt[i] = bs
        pred[i] = [
            Box3D(b.category, b.center + rng.normal(0, 0.05, 3), b.dims * rng.uniform(0.9, 1.1, 3),
                  b.R @ rot_y(rng.normal(0, 3)), float(rng.uniform()))
            for b in bs
        ]
    r = evaluate_grounding(pred, gt)
    assert r.n_gt == 400 and r.n_pred == 400
    assert 0.0 < r.ap25 <= 100.0 and r.ap15 >= r.ap25
    assert 0 < r.rot_err_deg < 10 and 0 < r.trans_err_cm < 20


# ----------------------------------------------------------------------------------------------- overlays

K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])


def test_draw_boxes_changes_pixels_where_box_projects():
    img = np.zeros((120, 160, 3), np.uint8)
    out = draw_boxes(img, K, [box(center=(0, 0, 4), yaw=30)], (255, 0, 0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, img) and img.max() == 0
    changed = np.argwhere(np.any(out != 0, axis=-1))
    assert len(changed) > 50
    # The box (unit cube at z=4) projects to within ~±25 px of the principal point (80, 60).
    ys, xs = changed[:, 0], changed[:, 1]
    assert 20 < np.median(xs) < 140 and 20 < np.median(ys) < 100
    # A box behind the camera draws nothing; one straddling the camera draws without error.
    assert np.array_equal(draw_boxes(img, K, [box(center=(0, 0, -4))], "red"), img)
    straddle = draw_boxes(img, K, [box(center=(0, 0, 0.2), dims=(1, 1, 2))], "red", label=False)
    assert straddle.shape == img.shape


def test_overlay_predictions_and_grid(tmp_path):
    img = np.full((120, 160, 3), 40, np.uint8)
    out = overlay_predictions(img, K, [box(center=(0, 0, 4))], [box(center=(0.3, 0, 4), yaw=20, score=0.8)])
    assert out.shape == img.shape
    assert np.any(np.all(out == (0, 200, 0), axis=-1)) and np.any(np.all(out == (230, 30, 30), axis=-1))
    p = save_grid([out, img, out], tmp_path / "grid" / "g.png", cols=2)
    w, h = Image.open(p).size
    assert (w, h) == (2 * 160 + 3 * 4, 2 * 120 + 3 * 4)
    with pytest.raises(DataError):
        draw_boxes(np.zeros((10, 10), np.uint8), K, [], "red")


# ------------------------------------------------------------------------------------------------ report


def test_html_report_and_markdown(tmp_path):
    rows = [{"category": "mug", "ap3d": AP_TP_FP_TP, "n_gt": 2}, {"category": "bowl", "ap3d": float("nan")}]
    page = tmp_path / "report" / "index.html"
    write_html_report(
        page,
        title="Grounding <demo>",
        summary={"grounding": {"model": {"ap3d": 12.3456, "rot_err_deg": 4.0}}},
        sections=[("Notes", "a < b")],
        images=[("overlays", "figs/grid.png")],
        tables=[("Per category", rows)],
    )
    text = page.read_text()
    assert "Grounding &lt;demo&gt;" in text and "<script" not in text
    assert "<td>83.50</td>" in text and "12.35" in text and "grounding.model.ap3d" in text
    assert 'src="figs/grid.png"' in text and "a &lt; b" in text
    md = markdown_table(rows)
    assert md.splitlines()[0] == "| category | ap3d | n_gt |"
    assert "| mug | 83.50 | 2 |" in md and "| bowl | — |  |" in md


def test_loss_plot_writes_png(tmp_path):
    log = tmp_path / "metrics.jsonl"
    recs = [{"step": s, "loss": 5.0 * math.exp(-s / 30) + 0.1 * (s % 3)} for s in range(1, 60)]
    log.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 60, "eval_ap": 1.0}\n')
    p = plot_loss_curve(log, tmp_path / "loss.png")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > 100
    plot_loss_curve(recs, tmp_path / "loss2.png")
    assert (tmp_path / "loss2.png").stat().st_size > 1000
    with pytest.raises(DataError):
        plot_loss_curve([{"step": 1}], tmp_path / "x.png")


def _ev(model_ap3d, given_ap3d, gap, given_trans=5.0, model_trans=20.0):
    def m(ap3d, trans):
        return {"ap3d": ap3d, "ap25": ap3d / 2, "trans_err_cm": trans}

    return {"model": m(model_ap3d, model_trans), "model_given_2d": m(given_ap3d, given_trans),
            "baseline": m(8.0, 12.7), "image_reliance": {"gap": gap}}


def test_grounding_verdict():
    from posevla.eval.predict import READS_IMAGES_GAP, grounding_verdict

    v = grounding_verdict(_ev(1.0, 27.9, 0.018))
    assert v["beats_baseline_given_2d"] and not v["beats_baseline_detecting"] and v["reads_images"]
    assert "27.9 vs 8.0" in v["text"] and "clearly beats" in v["text"] and "does not (AP3D 1.0)" in v["text"]
    # a win by less than the margin, or with a larger translation error, is not a clear win
    assert not grounding_verdict(_ev(1.0, 11.0, 0.018))["beats_baseline_given_2d"]
    assert not grounding_verdict(_ev(1.0, 27.9, 0.018, given_trans=13.0))["beats_baseline_given_2d"]
    assert grounding_verdict(_ev(20.0, 27.9, 0.018, model_trans=6.0))["beats_baseline_detecting"]
    v = grounding_verdict(_ev(1.0, 27.9, READS_IMAGES_GAP / 4))
    assert not v["reads_images"] and "do not depend on its images" in v["text"]
    # metrics that could not be computed (no matched boxes) are never a win and read "n/a"
    ev = _ev(1.0, 27.9, 0.018)
    ev["model_given_2d"]["trans_err_cm"] = None
    v = grounding_verdict(ev)
    assert not v["beats_baseline_given_2d"] and "n/a vs 12.7 cm" in v["text"]


# -- evaluation modes on a trained checkpoint -------------------------------------------------------------


def _checkpoint(data, out):
    from posevla.training.config import DataConfig
    from posevla.training.configs import get_config
    from posevla.training.trainer import train

    cfg = dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(data)), out_dir=str(out), steps=1,
                              save_every=1)
    return train(cfg).checkpoint


def test_image_reliance_measures_dependence_on_the_pixels(tiny_dataset, tmp_path):
    """The shuffled-images gap is exactly 0 when every sample shows the same scene, and non-zero for a
    model (even an untrained one) that sees different scenes."""
    from posevla.data.formats.omni3d import load_omni3d
    from posevla.data.grounding import LabelFilter, scene_categories
    from posevla.eval.predict import GroundingPredictor, image_reliance

    predictor = GroundingPredictor(_checkpoint(tiny_dataset, tmp_path / "run"))
    scenes = load_omni3d(tiny_dataset / "dataset.json")
    one = scenes[0]
    cat = scene_categories(one, LabelFilter())[0]
    single = dataclasses.replace(one, views=[dataclasses.replace(v, objects=[o for o in v.objects if o.category == cat]) for v in one.views])
    same = image_reliance(predictor, [single] * 4)
    assert same["n_examples"] == 4 and same["gap"] == 0.0
    varied = image_reliance(predictor, scenes)
    assert varied["n_examples"] >= 2 and varied["gap"] != 0.0
    assert varied["loss"] > 0 and torch.isfinite(torch.tensor(varied["loss_shuffled_images"]))


def test_given_2d_forces_the_true_objects_and_anchors(tiny_dataset, tmp_path):
    """Given-2D decoding: structure, names and <loc> anchors are the ground truth's, every pose value is the
    model's own (one of its family), and the answer parses into one box per true object."""
    import numpy as np

    from posevla.data.formats.omni3d import load_omni3d
    from posevla.data.grounding import LabelFilter, build_grounding_example, scene_categories
    from posevla.eval.predict import GroundingPredictor
    from posevla.tokens import GivenAnchorGrammar

    p = GroundingPredictor(_checkpoint(tiny_dataset, tmp_path / "run"))
    scene = load_omni3d(tiny_dataset / "dataset.json")[0]
    lf = LabelFilter()
    cat = scene_categories(scene, lf)[0]
    ex = build_grounding_example(scene, cat, image_size=p.spec.image_size, num_views=p.spec.num_views, label_filter=lf)
    g = p.given_anchor_grammar(ex)
    assert isinstance(g, GivenAnchorGrammar) and g.max_length() == len(g.answer)
    (boxes,) = p.predict([ex], given_2d=True)
    truth = [va.entries for va in ex.views]
    assert [len(b) for b in boxes] == [len(t) for t in truth]
    # replay the decoding: forced tokens equal the truth, free tokens stay in the truth's family
    from posevla.data.collate import collate

    batch = collate([ex], p.codec, p.tokenizer, p.spec, with_answer=False)
    (out,) = p.model.generate(batch, [g], g.max_length())
    assert len(out.ids) == len(g.answer)
    fam = g._family_of
    for got, want in zip(out.ids, g.answer):
        if want in fam:
            assert fam.get(got) == fam[want]
        else:
            assert got == want
    text = p.tokenizer.decode(out.ids)
    for va, tv in zip(p.codec.parse(text), ex.views):
        for e, t in zip(va.entries, tv.entries):
            np.testing.assert_allclose(e.anchor, p.bins.decode("loc", p.bins.encode("loc", t.anchor)))
    mask = g.allowed_mask(len(g.answer), p.model.vocab_size)
    assert not mask.any()  # nothing after the end
