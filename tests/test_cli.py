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
    for verb in ("demo", "generate", "train", "eval grounding", "tokens report"):
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
        main(["train", "debug", "--train-data", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "run")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "nope" in err and "fix" in err


def test_eval_on_missing_checkpoint(tmp_path, tiny_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "grounding", "--checkpoint", str(tmp_path), "--data", str(tiny_dataset)])
    assert e.value.code == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_quick_demo_end_to_end(tmp_path):
    """`posevla demo --quick` through the installed console entry: report and summary written."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "posevla.cli", "demo", "--quick", "--out-dir", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for who in ("model", "baseline"):
        assert set(summary["grounding"][who]) >= {"ap3d", "ap15", "ap25", "rot_err_deg", "trans_err_cm", "acc_5deg_5cm"}
    assert set(summary["timing_s"]) >= {"generate", "stage1", "eval", "total"}
    assert {"torch", "transformers", "mujoco", "posevla"} <= set(summary["versions"])
    html = (out / "report.html").read_text()
    assert "loss_curve.png" in html and "baseline" in html
    assert (out / "loss_curve.png").exists()
    assert list((out / "eval" / "overlays").glob("*.png"))
