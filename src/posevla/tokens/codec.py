"""Pose-token answer text: serialise per-view poses to tokens and parse them back (spec §1.3).

Answer grammar (contracts "Pose-token answer grammar")::

    answer   := view+ [EOS]
    view     := "<image" i ">" ( object+ | name "<no_object>" | <empty> ) "</image" i ">"
    object   := name loc loc loc loc trans [size] rot ";"     # 3D object, 2D box x1 y1 x2 y2
              | name loc loc          trans [size] rot ";"     # waypoint, projected point u v
    trans    := transXY(x) transXY(y) transZ(z)
    size     := size(w) size(h) size(l)
    rot      := rot(roll) rot(pitch) rot(yaw)

Decisions where the spec is silent:

* A view with neither objects nor a negative is written as ``<image1></image1>`` (e.g. a camera slot whose
  view holds no instance of the asked category when the sample is not a negative); the parser accepts it.
* Views must be numbered ``0, 1, ...`` in order (fewer than ``num_views`` is allowed); the EOS marker
  (``<eos>`` or ``</s>``) is optional and never written by :meth:`PoseCodec.serialize`.
* Size tokens are written when ``PoseEntry.size`` is not None, independently of the anchor kind; the parser
  accepts them after ``transZ`` in both cases.
* Whitespace between tokens is ignored; names are stripped.  Names may not contain ``<``, ``>`` or ``;``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from posevla.errors import DataError, PoseParseError
from posevla.tokens.bins import FAMILIES, BinSpec

__all__ = [
    "PoseEntry",
    "ViewAnswer",
    "PoseCodec",
    "sort_near_to_far",
    "TOKEN_PREFIX",
    "EOS_STRINGS",
    "NO_OBJECT",
    "SEPARATOR",
]

#: Token-string prefix of every family (``<transXY0042>``).
TOKEN_PREFIX: dict[str, str] = {
    "loc": "loc", "trans_xy": "transXY", "trans_z": "transZ", "size": "size", "rot": "rot",
}
_MIN_DIGITS: dict[str, int] = {"loc": 4, "trans_xy": 4, "trans_z": 4, "size": 4, "rot": 3}
_PREFIX_TO_FAMILY = {v: k for k, v in TOKEN_PREFIX.items()}
#: End-of-sequence markers accepted (optionally) at the end of an answer.
EOS_STRINGS: tuple[str, ...] = ("<eos>", "</s>")
NO_OBJECT = "<no_object>"
SEPARATOR = ";"
_TAG_RE = re.compile(r"^<(/?)([A-Za-z_]+)(\d*)>$")
_BAD_NAME_CHARS = ("<", ">", ";")


def _vec(value: Any, shapes: tuple[tuple[int, ...], ...], what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in shapes:
        raise DataError(f"{what} must have shape {' or '.join(str(s) for s in shapes)}, got {arr.shape}",
                        field=what)
    return arr


@dataclass(eq=False)
class PoseEntry:
    """One object or waypoint of one view.

    Args:
        name: category (3D data) or waypoint name (``left arm 3``).
        anchor: ``(4,)`` 2D box ``x1, y1, x2, y2`` or ``(2,)`` point ``u, v``, normalised image coords in [0, 1].
        translation: ``(3,)`` camera-frame position in metres (OpenCV: x right, y down, z forward).
        euler_xyz: ``(3,)`` roll, pitch, yaw in radians (scipy ``"xyz"``).
        size: ``(3,)`` box dimensions Omni3D ``[W, H, L]`` in metres (in that order), or None for waypoints.
        score: confidence (1.0 for ground truth; the mean token probability for predictions).
    """

    name: str
    anchor: np.ndarray
    translation: np.ndarray
    euler_xyz: np.ndarray
    size: np.ndarray | None = None
    score: float = 1.0

    def __post_init__(self) -> None:
        self.anchor = _vec(self.anchor, ((4,), (2,)), "anchor")
        self.translation = _vec(self.translation, ((3,),), "translation")
        self.euler_xyz = _vec(self.euler_xyz, ((3,),), "euler_xyz")
        if self.size is not None:
            self.size = _vec(self.size, ((3,),), "size")
        self.score = float(self.score)

    @property
    def is_box(self) -> bool:
        """True when the anchor is a 2D box (4 values), False for a point (2 values)."""
        return self.anchor.shape[0] == 4


@dataclass(eq=False)
class ViewAnswer:
    """The answer for one camera view: either entries, or a negative (``no_object`` = the asked name),
    or nothing (an empty view)."""

    index: int
    entries: list[PoseEntry] = field(default_factory=list)
    no_object: str | None = None


def sort_near_to_far(entries: Iterable[PoseEntry]) -> list[PoseEntry]:
    """Entries sorted by translation z, nearest first (stable: equal depths keep their order)."""
    return sorted(entries, key=lambda e: float(e.translation[2]))


@dataclass(frozen=True)
class _Tok:
    kind: str  # "tag" | "semi" | "text" | "end"
    offset: int
    text: str
    family: str | None = None  # loc/trans_xy/.../rot, "image_open", "image_close", "no_object", "eos"
    value: int | None = None


class PoseCodec:
    """Serialise :class:`ViewAnswer` lists to pose-token text and parse such text back.

    Args:
        bins: the :class:`BinSpec` giving the family sizes and the quantisation.
        num_views: number of view delimiter pairs in the vocabulary (``<image0>`` ... ``</image{n-1}>``).
    """

    def __init__(self, bins: BinSpec, num_views: int = 3) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.bins = bins
        self.num_views = int(num_views)
        self._digits = {
            fam: max(_MIN_DIGITS[fam], len(str(bins.num_bins(fam) - 1))) for fam in FAMILIES
        }

    # ------------------------------------------------------------------ tokens
    def token(self, family: str, index: int) -> str:
        """The token string of id ``index`` in ``family`` (``token("rot", 5) == "<rot005>"``)."""
        n = self.bins.num_bins(family)
        if not 0 <= int(index) < n:
            raise DataError(f"{family} id {index} out of range [0, {n - 1}]", field=family)
        return f"<{TOKEN_PREFIX[family]}{int(index):0{self._digits[family]}d}>"

    def vocabulary(self) -> list[str]:
        """Every pose token in a fixed order: loc, transXY, transZ, size, rot ids ascending, then
        ``<image0> </image0> ... </image{n-1}>`` and ``<no_object>``.  (``;`` is plain text, not included.)"""
        out: list[str] = []
        for fam in FAMILIES:
            out.extend(self.token(fam, i) for i in range(self.bins.num_bins(fam)))
        for v in range(self.num_views):
            out += [f"<image{v}>", f"</image{v}>"]
        out.append(NO_OBJECT)
        return out

    @staticmethod
    def _check_name(name: str, where: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"empty name in {where}", field="name", fix="give every entry a non-empty name")
        bad = [c for c in _BAD_NAME_CHARS if c in name]
        if bad:
            raise DataError(f"name {name!r} in {where} contains reserved character(s) {bad}", field="name",
                            fix="names may not contain '<', '>' or ';'")
        return name.strip()

    def encode_entry_tokens(self, entry: PoseEntry) -> list[str]:
        """``[name, loc.., transXY(x), transXY(y), transZ(z), [size(w,h,l)], rot(r,p,y), ";"]``;
        ``"".join`` of it is the entry's text."""
        name = self._check_name(entry.name, "entry")
        b = self.bins
        toks = [name]
        toks += [self.token("loc", i) for i in b.encode("loc", entry.anchor)]
        t = entry.translation
        toks += [self.token("trans_xy", i) for i in b.encode("trans_xy", t[:2])]
        toks.append(self.token("trans_z", int(b.encode("trans_z", t[2]))))
        if entry.size is not None:
            toks += [self.token("size", i) for i in b.encode("size", entry.size)]
        toks += [self.token("rot", i) for i in b.encode("rot", entry.euler_xyz)]
        toks.append(SEPARATOR)
        return toks

    entry_tokens = encode_entry_tokens  # design.md name

    def serialize(self, views: Sequence[ViewAnswer]) -> str:
        """The answer text for ``views`` (no EOS).  Entries are written in the order given; sort them first
        with :func:`sort_near_to_far` for 3D data.  Views must be numbered 0, 1, ... in order."""
        if len(views) == 0:
            raise DataError("an answer needs at least one view", field="views")
        if len(views) > self.num_views:
            raise DataError(f"{len(views)} views but the codec has {self.num_views}", field="views")
        parts: list[str] = []
        for pos, view in enumerate(views):
            if view.index != pos:
                raise DataError(f"view {pos} has index {view.index}; views must be numbered 0, 1, ... in order",
                                field="index")
            parts.append(f"<image{pos}>")
            if view.no_object is not None:
                if view.entries:
                    raise DataError(f"view {pos} has both entries and no_object={view.no_object!r}",
                                    field="no_object")
                parts.append(self._check_name(view.no_object, f"view {pos}") + NO_OBJECT)
            for entry in view.entries:
                parts.extend(self.encode_entry_tokens(entry))
            parts.append(f"</image{pos}>")
        return "".join(parts)

    # ------------------------------------------------------------------ parsing
    def _error(self, text: str, tok: _Tok, expected: str, problem: str | None = None) -> PoseParseError:
        got = "end of text" if tok.kind == "end" else repr(tok.text)
        head = problem or f"got {got}, expected {expected}"
        ctx_lo = max(0, tok.offset - 30)
        context = text[ctx_lo:tok.offset + 30]
        msg = (f"pose answer broke at character {tok.offset}: {head}"
               f"{'' if problem is None else f' (expected {expected})'}\n  near: {context!r}")
        err = PoseParseError(msg)
        err.offset, err.token, err.expected = tok.offset, (None if tok.kind == "end" else tok.text), expected
        return err

    def _lex(self, text: str) -> list[_Tok]:
        toks: list[_Tok] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "<":
                j = text.find(">", i + 1)
                k = text.find("<", i + 1)
                if j == -1 or (k != -1 and k < j):
                    stop = n if k == -1 else k
                    raise self._error(text, _Tok("text", i, text[i:stop]), "a complete token '<...>'",
                                      f"unterminated token {text[i:stop]!r}")
                raw = text[i:j + 1]
                toks.append(self._classify(text, raw, i))
                i = j + 1
            elif c == ";":
                toks.append(_Tok("semi", i, ";"))
                i += 1
            else:
                j = i
                while j < n and text[j] not in "<;":
                    j += 1
                chunk = text[i:j]
                if chunk.strip():
                    lead = len(chunk) - len(chunk.lstrip())
                    toks.append(_Tok("text", i + lead, chunk.strip()))
                i = j
        toks.append(_Tok("end", n, ""))
        return toks

    def _classify(self, text: str, raw: str, offset: int) -> _Tok:
        if raw in EOS_STRINGS:
            return _Tok("tag", offset, raw, "eos")
        if raw == NO_OBJECT:
            return _Tok("tag", offset, raw, "no_object")
        m = _TAG_RE.match(raw)
        if m:
            slash, word, digits = m.groups()
            if word == "image" and digits:
                if digits != str(int(digits)):
                    raise self._error(text, _Tok("tag", offset, raw), "'<image{i}>' without leading zeros",
                                      f"malformed token {raw!r}")
                return _Tok("tag", offset, raw, "image_close" if slash else "image_open", int(digits))
            fam = _PREFIX_TO_FAMILY.get(word)
            if fam is not None and not slash and digits:
                value = int(digits)
                n = self.bins.num_bins(fam)
                if value >= n:
                    raise self._error(text, _Tok("tag", offset, raw), f"an id in [0, {n - 1}]",
                                      f"{fam} id {value} out of range in {raw!r}")
                if len(digits) != self._digits[fam]:
                    raise self._error(text, _Tok("tag", offset, raw),
                                      f"{self._digits[fam]} digits as in {self.token(fam, 0)!r}",
                                      f"malformed token {raw!r}")
                return _Tok("tag", offset, raw, fam, value)
        raise self._error(text, _Tok("tag", offset, raw), "a pose token, ';' or a name",
                          f"unknown token {raw!r}")

    def parse(self, text: str) -> list[ViewAnswer]:
        """Parse answer text (optionally ending in ``<eos>`` or ``</s>``) into per-view answers.

        Values are decoded with the bin spec (anchors = loc bin centres).  Raises
        :class:`~posevla.errors.PoseParseError` whose message gives the character offset, the offending token
        and what was expected (also as attributes ``offset``, ``token``, ``expected``).
        """
        toks = self._lex(text)
        pos = 0
        b = self.bins

        def peek() -> _Tok:
            return toks[pos]

        def take(family: str, expected: str) -> _Tok:
            nonlocal pos
            t = toks[pos]
            if t.family != family:
                raise self._error(text, t, expected)
            pos += 1
            return t

        def fam_tok(fam: str) -> str:
            return f"<{TOKEN_PREFIX[fam]}{'#' * self._digits[fam]}>"

        views: list[ViewAnswer] = []
        while True:
            t = peek()
            v = len(views)
            if t.kind == "end" or t.family == "eos":
                if not views:
                    raise self._error(text, t, "'<image0>'")
                break
            if t.family != "image_open" or t.value != v:
                exp = f"'<image{v}>'" if v < self.num_views else "end of answer"
                if views:
                    exp += " or end of answer"
                raise self._error(text, t, exp)
            if v >= self.num_views:
                raise self._error(text, t, "end of answer",
                                  f"view index {v} out of range (num_views={self.num_views})")
            pos += 1
            close = f"'</image{v}>'"
            view = ViewAnswer(index=v)
            if peek().family == "image_close":
                t = peek()
                if t.value != v:
                    raise self._error(text, t, close, f"mismatched view index: '<image{v}>' closed by {t.text!r}")
                pos += 1
                views.append(view)
                continue
            while True:
                t = peek()
                if t.kind != "text":
                    if t.family == "image_close" and t.value != v:
                        raise self._error(text, t, close,
                                          f"mismatched view index: '<image{v}>' closed by {t.text!r}")
                    raise self._error(text, t, f"a name or {close}")
                name = t.text
                if ">" in name:
                    raise self._error(text, t, "a name without '<', '>' or ';'", f"stray '>' in {name!r}")
                pos += 1
                t = peek()
                if t.family == "no_object":
                    if view.entries:
                        raise self._error(text, t, "<loc> tokens", "'<no_object>' after objects in the same view")
                    pos += 1
                    view.no_object = name
                    t = peek()
                    if t.family != "image_close" or t.value != v:
                        if t.family == "image_close":
                            raise self._error(text, t, close,
                                              f"mismatched view index: '<image{v}>' closed by {t.text!r}")
                        raise self._error(text, t, close)
                    pos += 1
                    break
                locs: list[int] = []
                while peek().family == "loc" and len(locs) < 4:
                    locs.append(int(peek().value))  # type: ignore[arg-type]
                    pos += 1
                if not locs:
                    raise self._error(text, peek(), fam_tok("loc") + ("" if view.entries else " or '<no_object>'"))
                if len(locs) in (1, 3):
                    raise self._error(text, peek(), f"another {fam_tok('loc')} (an anchor has 2 or 4 loc tokens)")
                tx = take("trans_xy", fam_tok("trans_xy")).value
                ty = take("trans_xy", fam_tok("trans_xy")).value
                tz = take("trans_z", fam_tok("trans_z")).value
                size_ids = None
                if peek().family == "size":
                    size_ids = [take("size", fam_tok("size")).value for _ in range(3)]
                    rot_exp = fam_tok("rot")
                else:
                    rot_exp = f"{fam_tok('size')} or {fam_tok('rot')}"
                rot_ids = [take("rot", rot_exp).value]
                rot_ids += [take("rot", fam_tok("rot")).value for _ in range(2)]
                t = peek()
                if t.kind != "semi":
                    raise self._error(text, t, "';'")
                pos += 1
                view.entries.append(PoseEntry(
                    name=name,
                    anchor=b.decode("loc", locs),
                    translation=np.array([*b.decode("trans_xy", [tx, ty]), b.decode("trans_z", tz)]),
                    euler_xyz=b.decode("rot", rot_ids),
                    size=None if size_ids is None else b.decode("size", size_ids),
                ))
                t = peek()
                if t.family == "image_close":
                    if t.value != v:
                        raise self._error(text, t, close, f"mismatched view index: '<image{v}>' closed by {t.text!r}")
                    pos += 1
                    break
            views.append(view)
        t = peek()
        if t.family == "eos":
            pos += 1
            t = peek()
        if t.kind != "end":
            raise self._error(text, t, "end of text")
        return views
