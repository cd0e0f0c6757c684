"""Token-id state machine for grammar-constrained decoding of pose answers.

:class:`PoseGrammar` works on model-vocabulary ids, so it can mask logits step by step.  The language it
accepts is the answer grammar of :mod:`posevla.tokens.codec` restricted to one entry kind and a fixed set
of names::

    answer := view_0 ... view_{num_views-1} EOS
    view_i := <image i> ( object+ | name <no_object> | <empty> ) </image i>
    object := name loc*4 transXY transXY transZ size*3 rot*3 ";"      (kind="object")
            | name loc*2 transXY transXY transZ rot*3 ";"             (kind="waypoint")

``<no_object>`` is allowed only when ``allow_negative``; the empty view only when ``allow_empty_view``.
Names come from a trie over their token-id sequences (a name may be a prefix of another: at such a node both
continuing the name and starting the loc tokens are allowed).  Text produced under the grammar, once
detokenised, always parses with :meth:`PoseCodec.parse`.

States are small hashable tuples, so a batch of decoders can each hold one; ``advance`` returns a new state.
After EOS the state is *done*; a done state allows (and stays done on) EOS only, so finished rows of a batch
can be padded with EOS.

:class:`GivenAnchorGrammar` forces a known answer's structure, names and ``<loc>`` anchors and leaves every
pose value to the model (the given-2D evaluation mode).
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

import numpy as np

from posevla.errors import ConfigError, PoseParseError
from posevla.tokens.codec import NO_OBJECT, SEPARATOR, TOKEN_PREFIX

__all__ = ["PoseGrammar", "GrammarState"]

#: A grammar state: a tuple whose first element names the phase (see PoseGrammar).
GrammarState = tuple

_POSE_RE = re.compile(r"^<(loc|transXY|transZ|size|rot)(\d+)>$")
_PREFIX_TO_FAMILY = {v: k for k, v in TOKEN_PREFIX.items()}


class PoseGrammar:
    """Constrained-decoding grammar over token ids.

    Args:
        token_ids: pose-token string -> model id, for every string of ``PoseCodec.vocabulary()`` plus ``";"``
            (other keys are ignored).
        eos_id: the model's end-of-sequence id.
        names: token-id sequences of the allowed names (categories, ``left arm 0`` ...); non-empty.
        num_views: number of views every answer has (``<image0>`` ... ``</image{num_views-1}>``).
        kind: ``"object"`` (4 loc + size tokens) or ``"waypoint"`` (2 loc tokens, no size).
        allow_negative: allow ``name <no_object>`` as a view's content.
        allow_empty_view: allow ``<image i></image i>``.
        max_entries_per_view: after this many entries a view must close (None = unbounded). With a bound,
            every answer fits in :meth:`max_length` tokens, so decoding can never be cut off mid-entry.

    State phases: ``("open", v)`` expects ``<image v>``; ``("view", v)`` just after it; ``("name", v, node,
    first, n)`` inside a name (trie node, whether it is the view's first entry, entries before it); ``("neg", v)`` after
    ``<no_object>``; ``("field", v, k, n)`` at field ``k`` of an entry; ``("next", v, n)`` after ``;`` (``n``
    entries so far in the view); ``("eos",)``
    after the last view; ``("done",)`` after EOS.
    """

    def __init__(
        self,
        token_ids: dict[str, int],
        eos_id: int,
        names: Sequence[Sequence[int]],
        *,
        num_views: int = 3,
        kind: Literal["object", "waypoint"] = "object",
        allow_negative: bool = True,
        allow_empty_view: bool = True,
        max_entries_per_view: int | None = None,
    ) -> None:
        if max_entries_per_view is not None and max_entries_per_view < 1:
            raise ConfigError(f"max_entries_per_view must be >= 1 or None, got {max_entries_per_view}")
        self.max_entries_per_view = max_entries_per_view
        if kind not in ("object", "waypoint"):
            raise ConfigError(f"kind must be 'object' or 'waypoint', got {kind!r}")
        if num_views < 1:
            raise ConfigError(f"num_views must be >= 1, got {num_views}")
        self.kind = kind
        self.num_views = int(num_views)
        self.allow_negative = bool(allow_negative)
        self.allow_empty_view = bool(allow_empty_view)
        self.eos_id = int(eos_id)

        fam_ids: dict[str, list[int]] = {f: [] for f in TOKEN_PREFIX}
        for s, i in token_ids.items():
            m = _POSE_RE.match(s)
            if m:
                fam_ids[_PREFIX_TO_FAMILY[m.group(1)]].append(int(i))
        needed = ["loc", "trans_xy", "trans_z", "rot"] + (["size"] if kind == "object" else [])
        missing = [f for f in needed if not fam_ids[f]]
        required = [SEPARATOR] + [f"<image{v}>" for v in range(num_views)] + [
            f"</image{v}>" for v in range(num_views)] + ([NO_OBJECT] if allow_negative else [])
        missing += [s for s in required if s not in token_ids]
        if missing:
            raise ConfigError(f"token_ids lacks {missing}; pass every string of PoseCodec.vocabulary() and ';'")
        self._fam = {f: np.array(sorted(ids), dtype=np.int64) for f, ids in fam_ids.items()}
        self._fam_set = {f: frozenset(ids) for f, ids in fam_ids.items()}
        self._open = [int(token_ids[f"<image{v}>"]) for v in range(num_views)]
        self._close = [int(token_ids[f"</image{v}>"]) for v in range(num_views)]
        self._semi = int(token_ids[SEPARATOR])
        self._no_object = int(token_ids[NO_OBJECT]) if allow_negative else None

        loc_n = 4 if kind == "object" else 2
        self._fields: tuple[str, ...] = tuple(
            ["loc"] * loc_n + ["trans_xy", "trans_xy", "trans_z"] + (["size"] * 3 if kind == "object" else [])
            + ["rot"] * 3 + [SEPARATOR]
        )

        # name trie: node 0 is the root
        if not names:
            raise ConfigError("names is empty; pass the token-id sequences of at least one name")
        self._children: list[dict[int, int]] = [{}]
        self._terminal: list[bool] = [False]
        for seq in names:
            if len(seq) == 0:
                raise ConfigError("a name has an empty token-id sequence")
            node = 0
            for tid in seq:
                tid = int(tid)
                nxt = self._children[node].get(tid)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][tid] = nxt
                    self._children.append({})
                    self._terminal.append(False)
                node = nxt
            self._terminal[node] = True

        pose_ids: set[int] = set(self._open) | set(self._close) | {self._semi}
        for ids in fam_ids.values():
            pose_ids |= set(ids)
        if self._no_object is not None:
            pose_ids.add(self._no_object)
        name_ids = {t for ch in self._children for t in ch}
        clash = (name_ids & (pose_ids | {self.eos_id})) | ({self.eos_id} & pose_ids)
        if clash:
            raise ConfigError(f"token ids {sorted(clash)[:10]} are used both by names/EOS and by pose tokens")

        self._cache: dict[tuple, tuple[np.ndarray, frozenset[int]]] = {}

    # ------------------------------------------------------------------ API
    def start(self) -> GrammarState:
        """The initial state (expects ``<image0>``)."""
        return ("open", 0)

    def is_done(self, state: GrammarState) -> bool:
        """True once EOS has been consumed."""
        return state[0] == "done"

    done = is_done  # design.md name

    def _compute_allowed(self, state: GrammarState) -> np.ndarray:
        phase = state[0]
        ids: list[int] = []
        if phase == "open":
            ids = [self._open[state[1]]]
        elif phase == "view":
            ids = list(self._children[0])
            if self.allow_empty_view:
                ids.append(self._close[state[1]])
        elif phase == "name":
            _, v, node, first, _n = state
            ids = list(self._children[node])
            if self._terminal[node]:
                arr = np.concatenate([np.array(ids, dtype=np.int64), self._fam["loc"]])
                if first and self._no_object is not None:
                    arr = np.append(arr, self._no_object)
                return np.unique(arr)
        elif phase == "neg":
            ids = [self._close[state[1]]]
        elif phase == "field":
            f = self._fields[state[2]]
            if f == SEPARATOR:
                ids = [self._semi]
            else:
                return self._fam[f]
        elif phase == "next":
            ids = [self._close[state[1]]]
            if self.max_entries_per_view is None or state[2] < self.max_entries_per_view:
                ids += list(self._children[0])
        elif phase in ("eos", "done"):
            ids = [self.eos_id]
        else:
            raise ValueError(f"not a PoseGrammar state: {state!r}")
        return np.unique(np.array(ids, dtype=np.int64))

    def _allowed_cached(self, state: GrammarState) -> tuple[np.ndarray, frozenset[int]]:
        hit = self._cache.get(state)
        if hit is None:
            arr = self._compute_allowed(state)
            arr.setflags(write=False)
            hit = (arr, frozenset(arr.tolist()))
            self._cache[state] = hit
        return hit

    def allowed(self, state: GrammarState) -> list[int]:
        """Sorted ids allowed next in ``state``."""
        return self._allowed_cached(state)[0].tolist()

    def allowed_mask(self, state: GrammarState, vocab_size: int) -> np.ndarray:
        """``(vocab_size,)`` bool mask of the ids allowed next."""
        arr = self._allowed_cached(state)[0]
        if arr.size and arr[-1] >= vocab_size:
            raise ConfigError(f"allowed id {int(arr[-1])} does not fit vocab_size {vocab_size}")
        mask = np.zeros(int(vocab_size), dtype=np.bool_)
        mask[arr] = True
        return mask

    def advance(self, state: GrammarState, token_id: int) -> GrammarState:
        """The state after ``token_id``; raises PoseParseError when ``token_id`` is not allowed."""
        tid = int(token_id)
        arr, allowed = self._allowed_cached(state)
        if tid not in allowed:
            preview = arr[:8].tolist()
            raise PoseParseError(
                f"token id {tid} not allowed in grammar state {state!r}; allowed ({arr.size} ids): "
                f"{preview}{' ...' if arr.size > 8 else ''}"
            )
        phase = state[0]
        if phase == "open":
            return ("view", state[1])
        if phase in ("view", "next"):
            v = state[1]
            if tid == self._close[v]:
                return self._after_close(v)
            n = state[2] if phase == "next" else 0  # entries already in this view
            return ("name", v, self._children[0][tid], phase == "view", n)
        if phase == "name":
            _, v, node, first, n = state
            child = self._children[node].get(tid)
            if child is not None:
                return ("name", v, child, first, n)
            if tid == self._no_object:
                return ("neg", v)
            return ("field", v, 1, n)  # a loc token: first field consumed
        if phase == "neg":
            return self._after_close(state[1])
        if phase == "field":
            _, v, k, n = state
            k += 1
            return ("next", v, n + 1) if k == len(self._fields) else ("field", v, k, n)
        return ("done",)  # "eos" or "done"

    def max_length(self) -> int:
        """Most tokens an answer can take, EOS included (needs ``max_entries_per_view``)."""
        if self.max_entries_per_view is None:
            raise ConfigError("max_length() needs max_entries_per_view to be set")
        depth = self._name_depth()
        per_entry = depth + len(self._fields)
        per_view = 2 + max(self.max_entries_per_view * per_entry, depth + 1)
        return self.num_views * per_view + 1

    def _name_depth(self, node: int = 0) -> int:
        return max((1 + self._name_depth(c) for c in self._children[node].values()), default=0)

    def _after_close(self, v: int) -> GrammarState:
        return ("open", v + 1) if v + 1 < self.num_views else ("eos",)


class GivenAnchorGrammar:
    """Decoding with the ground-truth answer's structure, names and ``<loc>`` anchors forced.

    The model chooses every pose value (``<transXY>``, ``<transZ>``, ``<size>``, ``<rot>``) itself, in the
    context of its own earlier choices; everything else is the ground-truth token. This gives the model the
    information the category-mean baseline gets (the true 2D location), so the two compare like for like.
    """

    def __init__(self, answer_ids: Sequence[int], value_families: Sequence[np.ndarray]) -> None:
        self.answer = [int(t) for t in answer_ids]
        self.families = [np.asarray(f, np.int64) for f in value_families]
        self._family_of = {int(t): k for k, f in enumerate(self.families) for t in f}

    def start(self) -> int:
        return 0

    def advance(self, state: int, token: int) -> int:
        return state + 1

    def is_done(self, state: int) -> bool:
        return state >= len(self.answer)

    def max_length(self) -> int:
        return len(self.answer)

    def allowed_mask(self, state: int, vocab_size: int) -> np.ndarray:
        mask = np.zeros(vocab_size, bool)
        if state >= len(self.answer):
            return mask
        t = self.answer[state]
        k = self._family_of.get(t)
        if k is None:
            mask[t] = True
        else:
            mask[self.families[k]] = True
        return mask
