"""The malformed-input corpus: bad input a user can give posevla, each with the error it must end in.

A `Case` is one bad input: a Python call (a reader, a loader, the policy) or a command line, run in a folder of
its own, and the names its message must contain (the file, record, field, flag or key). `run_case` runs it and
sorts the outcome into one of

* ``clear``: a `PoseVLAError` (a command: a non-zero exit) whose message holds every name and says how to fix
  it (a ``fix:`` line, or what the value must be / was expected to be, or the command to run);
* ``unclear``: such an error that misses a name or the hint;
* ``traceback``: any other exception, or a Python traceback printed by a command;
* ``silent``: nothing raised, exit status 0.

`tests/test_corpus.py` runs every case and wants ``clear``; ``python tests/corpus/tally.py`` prints the counts
by category and outcome, and every message, for a person to read.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posevla.errors import PoseVLAError

from .workspace import Workspace

#: What a message must contain besides the names: how to fix it, or what was expected.
HINT = re.compile(
    r"\bfix\b|\bmust\b|expected|\bexpects?\b|one of|valid (?:keys|sizes|choices|names)|did you mean|\bneeds?\b|"
    r"\buse\b|\bpass\b|\brun\b|\bresume from\b|\bstart a new run\b|\bre-?(?:write|generate|export|train)\b|"
    r"\bdelete\b|\bremove\b|re-?create|`posevla |helptext|usage:|\brequired\b|\bvalid\b|registered|\bgive\b|"
    r"\bname (?:at least|the)\b",
    re.IGNORECASE,
)

OUTCOMES = ("clear", "unclear", "traceback", "silent")


@dataclass(frozen=True)
class Case:
    """One malformed input.

    Attributes:
        id: unique name, ``<category>/<what>``.
        category: cli, config, checkpoint, omni3d, bop, lerobot, observation.
        names: substrings the message must contain (file, record, field, flag, key).
        call: ``(ws, tmp) -> anything``: the Python call that must raise (``tmp`` is the case's own folder).
        argv: ``(ws, tmp) -> argv``: the command line ``posevla <argv>`` that must exit non-zero.
    """

    id: str
    category: str
    names: tuple[str, ...]
    call: Callable[[Workspace, Path], Any] | None = None
    argv: Callable[[Workspace, Path], Sequence[str]] | None = None


@dataclass(frozen=True)
class Result:
    outcome: str
    message: str


def case(category: str, what: str, names: Sequence[str] | str, *, call=None, argv=None) -> Case:
    """A `Case` (exactly one of `call` / `argv`)."""
    assert (call is None) != (argv is None), what
    names = (names,) if isinstance(names, str) else tuple(names)
    return Case(f"{category}/{what}", category, names, call=call, argv=argv)


class InCase(str):
    """An argument of `api`: a path inside the case's own folder."""


def api(target: str, *args: Any, **kwargs: Any) -> Callable[[Workspace, Path], Any]:
    """A case call ``target(*args, **kwargs)``, `target` as ``"package.module:Name.attr"``; `InCase` arguments
    become paths in the case's folder."""
    def call(ws: Workspace, tmp: Path) -> Any:
        import importlib

        mod, _, attr = target.partition(":")
        fn: Any = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
        fix = lambda v: tmp / v if isinstance(v, InCase) else v  # noqa: E731
        return fn(*map(fix, args), **{k: fix(v) for k, v in kwargs.items()})

    return call


def _classify(text: str, names: Sequence[str]) -> Result:
    text = text.strip()
    missing = [n for n in names if n not in text]
    if missing or not HINT.search(text):
        why = f"missing {missing}" if missing else "no hint how to fix it"
        return Result("unclear", f"[{why}] {text}")
    return Result("clear", text)


def _run_cli(argv: Sequence[str]) -> tuple[int, str]:
    from posevla.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "500"  # rich (tyro's errors) wraps at the terminal width: keep paths on one line
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    text = err.getvalue() + "\n" + out.getvalue()
    return code, re.sub(r"[│╭╮╰╯─]+", " ", text)


def run_case(c: Case, ws: Workspace) -> Result:
    """Run one case in a fresh folder and sort its outcome (module docstring)."""
    tmp = ws.case_dir(c.id)
    try:
        if c.argv is not None:
            code, text = _run_cli([str(a) for a in c.argv(ws, tmp)])
            if "Traceback (most recent call last)" in text:
                return Result("traceback", text)
            if code == 0:
                return Result("silent", f"exit 0: {text[-2000:]}")
            return _classify(text, c.names)
        c.call(ws, tmp)
    except PoseVLAError as e:
        return _classify(str(e), c.names)
    except Exception:  # noqa: BLE001 - that is the outcome being measured
        return Result("traceback", traceback.format_exc())
    return Result("silent", "no error was raised")


def all_cases() -> list[Case]:
    """Every case of the corpus, by category."""
    from . import bop, checkpoints, cli, configs, lerobot, observations, omni3d

    cases = [c for m in (cli, configs, checkpoints, omni3d, bop, lerobot, observations) for c in m.CASES]
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids {dup}"
    return cases
