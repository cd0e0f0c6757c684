"""The malformed-input corpus (tests/corpus): every case must end in a clear posevla error, never a traceback or
a silent pass. ``python tests/corpus/tally.py`` prints the counts by category and outcome, and every message."""

from __future__ import annotations

from collections import Counter

import pytest
from corpus import all_cases, run_case
from corpus.workspace import Workspace

CASES = all_cases()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_is_large_and_covers_every_input():
    per = Counter(c.category for c in CASES)
    assert len(CASES) >= 200, per
    assert set(per) == {"cli", "config", "checkpoint", "omni3d", "bop", "lerobot", "observation"}
    assert min(per.values()) >= 20, per


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_ends_in_a_clear_error(case, workspace):
    result = run_case(case, workspace)
    assert result.outcome == "clear", f"{case.id}: {result.outcome}\n{result.message}"
