"""Golden numbers of fixed-seed tiny models (``tests/golden/golden.json``, regenerated only by
``tests/golden/make_golden.py``): a change to initialisation, loss scaling, data order or decoding fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def _compute():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN_DIR / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compute


@pytest.fixture(scope="module")
def numbers(tiny_dataset, tmp_path_factory):
    return _compute()(tiny_dataset, tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN_DIR / "golden.json").read_text())


def test_stage1_losses_of_the_first_steps(numbers, golden):
    np.testing.assert_allclose(numbers["stage1_losses"], golden["stage1_losses"], rtol=1e-5)


def test_one_decoded_answer(numbers, golden):
    assert numbers["answer_ids"] == golden["answer_ids"]
    np.testing.assert_allclose(numbers["answer_logprobs"], golden["answer_logprobs"], rtol=1e-4, atol=1e-5)


def test_one_post_training_action_chunk(numbers, golden):
    np.testing.assert_allclose(numbers["posttrain_losses"], golden["posttrain_losses"], rtol=1e-5)
    np.testing.assert_allclose(numbers["action_chunk"], golden["action_chunk"], rtol=1e-4, atol=1e-5)
