"""posevla.tokens: pose-token bins, answer text codec, constrained-decoding grammar, quantisation report.

Pure numpy/python (no torch).  See docs/design.md (section tokens/) and spec §1.3.
"""

from posevla.tokens.bins import BINSPEC_VERSION, EDGE_FAMILIES, FAMILIES, BinCounts, BinSpec
from posevla.tokens.codec import (
    EOS_STRINGS,
    NO_OBJECT,
    SEPARATOR,
    TOKEN_PREFIX,
    PoseCodec,
    PoseEntry,
    ViewAnswer,
    sort_near_to_far,
)
from posevla.tokens.grammar import GivenAnchorGrammar, GrammarState, PoseGrammar
from posevla.tokens.report import format_report, quantization_report

__all__ = [
    "BINSPEC_VERSION",
    "EDGE_FAMILIES",
    "FAMILIES",
    "BinCounts",
    "BinSpec",
    "EOS_STRINGS",
    "NO_OBJECT",
    "SEPARATOR",
    "TOKEN_PREFIX",
    "PoseCodec",
    "PoseEntry",
    "ViewAnswer",
    "sort_near_to_far",
    "GivenAnchorGrammar",
    "GrammarState",
    "PoseGrammar",
    "format_report",
    "quantization_report",
]
