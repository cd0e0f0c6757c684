"""Project-wide error types.

Every error a user can trigger with bad input is a :class:`PoseVLAError` whose message says
*where* (file, record, field), *what* was expected, and *how to fix it*. Code raises these instead of
letting a bare ``KeyError``/``IndexError`` escape from deep inside a loader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class PoseVLAError(Exception):
    """Base class for all errors raised on purpose by posevla."""


class DataError(PoseVLAError, ValueError):
    """Bad input data: a file, record or field that does not match the contract.

    Args:
        message: what is wrong and what was expected.
        file: the file the problem was found in, if any.
        record: the record inside the file (index, id, key), if any.
        field: the field name, if any.
        fix: one sentence telling the user how to fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message, self.file, self.record, self.field, self.fix = message, file, record, field, fix
        where = []
        if file is not None:
            where.append(f"file {file}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        text = (", ".join(where) + ": " if where else "") + message
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class PoseParseError(PoseVLAError, ValueError):
    """A pose-token answer that does not follow the grammar in docs/contracts (spec §1.3)."""


class ConfigError(PoseVLAError, ValueError):
    """An unknown or inconsistent configuration (names the valid choices)."""


class CheckpointError(PoseVLAError, RuntimeError):
    """A checkpoint directory that is missing, corrupt or inconsistent with the data."""


class TrainingError(PoseVLAError, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss)."""


class InferenceError(PoseVLAError, RuntimeError):
    """A model produced an unusable output (e.g. non-finite actions); nothing is returned to the robot."""


# -- value checks of configs and flags ------------------------------------------------------------------------
#
# ``name`` is what the user typed: the CLI flag (``--optim.lr``), which is also the field's dotted path.


def check_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else a :class:`ConfigError` naming ``name``, the range and the value."""
    import numpy as np

    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be an integer {_range(lo, hi)}, got {value!r}")
    return int(value)


def check_float(
    value: Any, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with `lo_open`), else a :class:`ConfigError`."""
    try:
        ok = not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    v = float(value) if ok else math.nan
    if not ok or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        rng = _range(lo, hi, lo_open=lo_open)
        raise ConfigError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


def _range(lo: float | None, hi: float | None, *, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


@contextmanager
def given_as(flag: str) -> Iterator[None]:
    """Put the flag or key a value came from (``--bins-file``) in front of the message of a `PoseVLAError` raised
    while it is used, so the user knows which of their inputs to fix; messages that name it already stay."""
    try:
        yield
    except PoseVLAError as e:
        if e.args and isinstance(e.args[0], str) and flag not in e.args[0]:
            e.args = (f"{flag}: {e.args[0]}", *e.args[1:])
        raise
