"""Tests for posevla.tokens: bins, codec, grammar, report."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from posevla.errors import DataError, PoseParseError
from posevla.tokens import (
    BinCounts,
    BinSpec,
    PoseCodec,
    PoseEntry,
    PoseGrammar,
    ViewAnswer,
    format_report,
    quantization_report,
    sort_near_to_far,
)

EPS = 1e-9


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fitted() -> BinSpec:
    rng = np.random.default_rng(0)
    xy = rng.normal(0.0, 0.5, size=(4000, 2))
    z = rng.uniform(0.3, 6.0, size=4000)
    size = rng.lognormal(-1.5, 0.6, size=(4000, 3))
    return BinSpec.fit(xy, z, size, BinCounts(trans_xy=256, trans_z=256, size=128), description="synthetic")


@pytest.fixture(scope="module")
def small() -> BinSpec:
    """Hand-checkable bins: 10 uniform edges per fitted family."""
    return BinSpec(np.linspace(-1, 1, 11), np.linspace(0, 10, 11), np.linspace(0, 1, 11))


def _wrap(a):
    return np.mod(np.asarray(a) + math.pi, 2 * math.pi) - math.pi


# ---------------------------------------------------------------------------------------------- bins
def test_encode_decode_within_half_bin(fitted: BinSpec) -> None:
    rng = np.random.default_rng(1)
    for fam in ("trans_xy", "trans_z", "size"):
        e = fitted.edges(fam)
        x = rng.uniform(e[0], e[-1], size=5000)
        x[:3] = [e[0], e[-1], e[len(e) // 2]]
        ids = fitted.encode(fam, x)
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < fitted.num_bins(fam)
        err = np.abs(fitted.decode(fam, ids) - x)
        assert np.all(err <= fitted.half_bin_width(fam, ids) + EPS), fam
    # loc
    x = np.concatenate([rng.uniform(0, 1, 5000), [0.0, 1.0, 0.5, 1 - 1e-12]])
    ids = fitted.encode("loc", x)
    assert ids.min() >= 0 and ids.max() <= 1023
    assert np.all(np.abs(fitted.decode("loc", ids) - x) <= 0.5 / 1024 + EPS)
    # rotation, including near +-pi and values outside [-pi, pi] that must wrap
    x = np.concatenate([rng.uniform(-math.pi, math.pi, 5000),
                        [math.pi, -math.pi, math.pi - 1e-9, -math.pi + 1e-9, 3 * math.pi / 2, -7.0, 0.0]])
    ids = fitted.encode("rot", x)
    assert ids.min() >= 0 and ids.max() <= 359
    err = np.abs(_wrap(fitted.decode("rot", ids) - x))
    assert np.all(err <= math.pi / 359 + EPS)
    assert fitted.encode("rot", 0.0) == 180 and fitted.decode("rot", 0) == pytest.approx(-math.pi)


def test_out_of_range_values_clip(fitted: BinSpec) -> None:
    assert fitted.encode("trans_z", [-100.0, 1e6]).tolist() == [0, fitted.num_bins("trans_z") - 1]
    assert fitted.encode("loc", [-0.3, 1.7]).tolist() == [0, 1023]
    with pytest.raises(DataError):
        fitted.encode("size", [np.nan])
    with pytest.raises(DataError):
        fitted.decode("rot", [360])


def test_fit_with_duplicates_gives_strictly_increasing_edges() -> None:
    rng = np.random.default_rng(2)
    z = np.concatenate([np.full(3000, 1.0), np.full(500, 2.5), rng.uniform(0.5, 4, 200), np.full(800, 4.0)])
    const = np.full(100, 0.2)
    spec = BinSpec.fit(z, z, const, BinCounts(trans_xy=512, trans_z=64, size=32))
    for fam in ("trans_xy", "trans_z", "size"):
        e = spec.edges(fam)
        assert np.all(np.diff(e) > 0), fam
        assert e.shape[0] == spec.num_bins(fam) + 1
    for fam, vals in (("trans_xy", z), ("trans_z", z), ("size", const)):
        ids = spec.encode(fam, vals)
        assert np.all(np.abs(spec.decode(fam, ids) - vals) <= spec.half_bin_width(fam, ids) + EPS)
    with pytest.raises(DataError):
        BinSpec.fit([], z, const)


def test_binspec_save_load_and_fingerprint(tmp_path, fitted: BinSpec) -> None:
    p = fitted.save(tmp_path / "sub" / "bins.json")
    d = json.loads(p.read_text())
    assert d["version"] == 1 and d["description"] == "synthetic" and "posevla" in d["created_with"]
    assert d["families"]["trans_xy"]["count"] == 256 and len(d["families"]["trans_xy"]["edges"]) == 257
    loaded = BinSpec.load(p)
    assert loaded == fitted and loaded.fingerprint() == fitted.fingerprint()
    assert np.array_equal(loaded.edges("size"), fitted.edges("size"))
    other = BinSpec.fit([0.0, 1.0], [1.0, 2.0], [0.1, 0.2], BinCounts(trans_xy=8, trans_z=8, size=8))
    assert other.fingerprint() != fitted.fingerprint() and len(fitted.fingerprint()) == 16


def _corrupt(tmp_path, fitted: BinSpec, mutate, name: str):
    d = fitted.to_dict()
    mutate(d)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d["families"]["trans_z"]["edges"].__setitem__(5, -1.0), "families.trans_z.edges"),
        (lambda d: d["families"]["size"].__setitem__("count", 7), "families.size.edges"),
        (lambda d: d["families"].pop("rot"), "families.rot"),
        (lambda d: d.pop("version"), "version"),
        (lambda d: d["families"]["loc"].__setitem__("count", 1000), "fingerprint"),
    ],
)
def test_binspec_load_corrupted(tmp_path, fitted: BinSpec, mutate, field) -> None:
    p = _corrupt(tmp_path, fitted, mutate, "bins.json")
    with pytest.raises(DataError) as ei:
        BinSpec.load(p)
    assert ei.value.file == str(p) and ei.value.field == field and ei.value.fix
    assert str(p) in str(ei.value)


def test_binspec_load_missing_and_bad_json(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        BinSpec.load(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text('{"version": 1, "families": ')
    with pytest.raises(DataError, match="not valid JSON"):
        BinSpec.load(p)


# ---------------------------------------------------------------------------------------------- codec
def test_exact_serialisation(small: BinSpec) -> None:
    codec = PoseCodec(small)
    cup = PoseEntry("cup", [0.128, 0.4, 0.254, 0.588], [0.05, -0.35, 2.5], [0.0, math.pi / 2, -math.pi / 2],
                    [0.15, 0.25, 0.05])
    views = [ViewAnswer(0, [cup]), ViewAnswer(1, [], no_object="cup"), ViewAnswer(2)]
    text = codec.serialize(views)
    assert text == (
        "<image0>cup<loc0131><loc0409><loc0260><loc0602><transXY0005><transXY0003><transZ0002>"
        "<size0001><size0002><size0000><rot180><rot269><rot090>;</image0>"
        "<image1>cup<no_object></image1><image2></image2>"
    )
    assert "".join(codec.encode_entry_tokens(cup)) == text[len("<image0>"):-len("</image0><image1>cup<no_object>"
                                                                                "</image1><image2></image2>")]
    wp = PoseEntry("left arm 3", [0.5, 0.25], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0])
    assert codec.serialize([ViewAnswer(0, [wp])]) == (
        "<image0>left arm 3<loc0512><loc0256><transXY0005><transXY0005><transZ0000><rot180><rot180><rot180>;"
        "</image0>"
    )


def test_vocabulary(small: BinSpec) -> None:
    codec = PoseCodec(small)
    vocab = codec.vocabulary()
    assert len(vocab) == len(set(vocab)) == 1024 + 10 + 10 + 10 + 360 + 6 + 1
    assert vocab[0] == "<loc0000>" and vocab[1023] == "<loc1023>" and vocab[1024] == "<transXY0000>"
    assert vocab[-7:] == ["<image0>", "</image0>", "<image1>", "</image1>", "<image2>", "</image2>", "<no_object>"]
    assert "<rot359>" in vocab and "<rot000>" in vocab
    wide = PoseCodec(BinSpec(np.linspace(0, 1, 12002), [0, 1], [0, 1], n_rot=1200))
    assert wide.token("trans_xy", 7) == "<transXY00007>" and wide.token("rot", 7) == "<rot0007>"


def _random_entries(rng, n, box: bool, names):
    out = []
    for _ in range(n):
        anchor = np.sort(rng.uniform(0, 1, 4).reshape(2, 2), axis=0).T.reshape(-1) if box else rng.uniform(0, 1, 2)
        out.append(PoseEntry(
            str(rng.choice(names)), anchor,
            [rng.normal(0, 0.4), rng.normal(0, 0.4), rng.uniform(0.5, 5.0)],
            rng.uniform(-math.pi, math.pi, 3),
            rng.lognormal(-1.5, 0.4, 3) if box else None,
        ))
    return out


def _assert_close(bins: BinSpec, a: PoseEntry, b: PoseEntry) -> None:
    assert a.name.strip() == b.name
    assert a.anchor.shape == b.anchor.shape
    assert np.all(np.abs(a.anchor - b.anchor) <= 0.5 / bins.n_loc + EPS)
    for fam, x, y in (("trans_xy", a.translation[:2], b.translation[:2]),
                      ("trans_z", a.translation[2:], b.translation[2:])):
        assert np.all(np.abs(x - y) <= bins.half_bin_width(fam, bins.encode(fam, x)) + EPS)
    assert np.all(np.abs(_wrap(a.euler_xyz - b.euler_xyz)) <= math.pi / (bins.n_rot - 1) + EPS)
    if a.size is None:
        assert b.size is None
    else:
        assert np.all(np.abs(a.size - b.size) <= bins.half_bin_width("size", bins.encode("size", a.size)) + EPS)


def test_round_trip_objects_waypoints_negatives(fitted: BinSpec) -> None:
    codec = PoseCodec(fitted)
    rng = np.random.default_rng(3)
    objs = sort_near_to_far(_random_entries(rng, 5, True, ["cup", "coffee mug", "chair"]))
    assert [e.translation[2] for e in objs] == sorted(e.translation[2] for e in objs)
    views = [ViewAnswer(0, objs), ViewAnswer(1, [], no_object="sofa"),
             ViewAnswer(2, _random_entries(rng, 2, True, ["cup"]))]
    parsed = codec.parse(codec.serialize(views) + "<eos>")
    assert [v.index for v in parsed] == [0, 1, 2]
    assert parsed[1].no_object == "sofa" and parsed[1].entries == []
    for va, vb in zip(views, parsed):
        assert len(va.entries) == len(vb.entries)
        for a, b in zip(va.entries, vb.entries):
            _assert_close(fitted, a, b)

    names = [f"{side} arm {k}" for side in ("left", "right") for k in range(5)]
    wps = [ViewAnswer(0, _random_entries(rng, 10, False, names)), ViewAnswer(1, [])]
    text = codec.serialize(wps)
    assert "<image1></image1>" in text
    parsed = codec.parse("  " + text.replace(";", "; ") + " </s>")
    assert parsed[1].entries == [] and parsed[1].no_object is None
    for a, b in zip(wps[0].entries, parsed[0].entries):
        _assert_close(fitted, a, b)


_GOOD = ("<image0>cup<loc0131><loc0409><loc0260><loc0602><transXY0005><transXY0003><transZ0002>"
         "<size0001><size0002><size0000><rot180><rot269><rot090>;</image0>")


def _bad_cases():
    rots = "<rot180><rot269><rot090>"
    return [
        # (text, offset of the failure, substring of the message)
        (_GOOD.replace(";", ""), _GOOD.index(";"), "expected ';'"),                         # missing ;
        (_GOOD[:-len("</image0>")], len(_GOOD) - len("</image0>"), "end of text"),        # missing </image0>
        (_GOOD.replace(rots, "<rot180><rot269>"), _GOOD.index(rots) + 16, "<rot###>"),    # 2 rot tokens
        (_GOOD.replace("<transXY0003>", "<transQ0001>"), _GOOD.index("<transXY0003>"), "unknown token"),
        (_GOOD.replace("<rot269>", "<rot999>"), _GOOD.index("<rot269>"), "out of range"),
        (_GOOD.replace("</image0>", "</image1>"), _GOOD.index("</image0>"), "mismatched"),
        (_GOOD.replace("<image0>", "<image1>"), 0, "'<image0>'"),
        (_GOOD.replace("<loc0602>", ""), _GOOD.index("<loc0602>"), "another <loc####>"),   # 3 loc tokens
        (_GOOD.replace("<loc0602>", "<loc0602><loc0001>"), _GOOD.index("<transXY0005>"), "got '<loc0001>'"),
        (_GOOD.replace("cup", "  "), _GOOD.index("<loc0131>") - 1, "a name"),                 # empty name
        (_GOOD.replace("<transZ0002>", "<transZ0002> oops "), _GOOD.index("<transZ0002>") + 13, "'oops'"),
        (_GOOD + "<image1>cup<no_object></image1><eos>junk", len(_GOOD) + 36, "'junk'"),
        (_GOOD.replace("<rot180>", "<rot180"), _GOOD.index("<rot180>"), "unterminated"),
        ("", 0, "'<image0>'"),
        ("<image0>cup<no_object>;</image0>", 22, "'</image0>'"),
        ("<image0></image0><image1></image1><image2></image2><image3></image3>", 51, "out of range"),
    ]


@pytest.mark.parametrize("text,offset,what", _bad_cases())
def test_parse_rejects_malformed(small: BinSpec, text: str, offset: int, what: str) -> None:
    codec = PoseCodec(small)
    with pytest.raises(PoseParseError) as ei:
        codec.parse(text)
    msg = str(ei.value)
    assert f"character {offset}" in msg, msg
    assert what in msg, msg
    assert ei.value.offset == offset


def test_parse_good_example(small: BinSpec) -> None:
    (view,) = PoseCodec(small).parse(_GOOD)
    (e,) = view.entries
    assert e.name == "cup" and e.is_box and e.size is not None
    assert e.anchor[0] == pytest.approx(131.5 / 1024) and e.translation[2] == pytest.approx(2.5)


# ---------------------------------------------------------------------------------------------- grammar
_WORDS = ["cup", "holder", "mug", "left", "right", "arm", "0", "1", "2"]


def _toy_vocab(codec: PoseCodec):
    pose = codec.vocabulary() + [";"]
    token_ids = {s: i for i, s in enumerate(pose)}
    word_ids = {w: len(pose) + i for i, w in enumerate(_WORDS)}
    eos = len(pose) + len(_WORDS)
    id_to_str = {i: s for s, i in token_ids.items()}
    id_to_str.update({i: " " + w for w, i in word_ids.items()})  # sentencepiece-like leading space
    id_to_str[eos] = "<eos>"
    return token_ids, word_ids, eos, id_to_str


def _text_to_ids(text: str, token_ids, word_ids) -> list[int]:
    out = []
    for piece in re.findall(r"<[^>]*>|;|[^<;]+", text):
        if piece in token_ids:
            out.append(token_ids[piece])
        else:
            out.extend(word_ids[w] for w in piece.split())
    return out


@pytest.mark.parametrize("kind", ["object", "waypoint"])
def test_grammar_walk_serialized_answer(small: BinSpec, kind: str) -> None:
    codec = PoseCodec(small)
    token_ids, word_ids, eos, _ = _toy_vocab(codec)
    rng = np.random.default_rng(4)
    if kind == "object":
        names = [["cup"], ["cup", "holder"], ["mug"]]
        views = [ViewAnswer(0, _random_entries(rng, 3, True, ["cup", "cup holder"])),
                 ViewAnswer(1, [], no_object="mug"), ViewAnswer(2)]
    else:
        names = [["left", "arm", "0"], ["left", "arm", "1"], ["right", "arm", "0"]]
        views = [ViewAnswer(0, _random_entries(rng, 4, False, ["left arm 0", "right arm 0"])),
                 ViewAnswer(1, _random_entries(rng, 1, False, ["left arm 1"])), ViewAnswer(2)]
    g = PoseGrammar(token_ids, eos, [[word_ids[w] for w in n] for n in names], kind=kind)
    ids = _text_to_ids(codec.serialize(views), token_ids, word_ids) + [eos]
    state = g.start()
    for tid in ids:
        assert not g.is_done(state)
        assert tid in g.allowed(state)
        state = g.advance(state, tid)
    assert g.is_done(state)
    assert g.advance(state, eos) == state  # padding after EOS


@pytest.mark.parametrize("kind", ["object", "waypoint"])
def test_grammar_random_walk_parses(small: BinSpec, kind: str) -> None:
    codec = PoseCodec(small)
    token_ids, word_ids, eos, id_to_str = _toy_vocab(codec)
    name_words = [["cup"], ["cup", "holder"], ["mug"]] if kind == "object" else \
        [["left", "arm", "0"], ["left", "arm", "1"], ["right", "arm", "2"], ["arm", "0"]]
    g = PoseGrammar(token_ids, eos, [[word_ids[w] for w in n] for n in name_words], kind=kind)
    allowed_names = {" ".join(n) for n in name_words}
    vocab_size = eos + 1
    rng = np.random.default_rng(5)
    n_objects = 0
    for _ in range(30):
        state, ids = g.start(), []
        while not g.is_done(state) and len(ids) < 5000:
            allowed = g.allowed(state)
            assert allowed == sorted(allowed) and allowed
            mask = g.allowed_mask(state, vocab_size)
            assert mask.sum() == len(allowed) and mask[allowed].all()
            tid = int(rng.choice(allowed))
            ids.append(tid)
            state = g.advance(state, tid)
        assert g.is_done(state), "random walk did not terminate"
        views = codec.parse("".join(id_to_str[i] for i in ids))
        assert [v.index for v in views] == [0, 1, 2]
        for v in views:
            for e in v.entries:
                assert e.name in allowed_names
                assert e.anchor.shape == ((4,) if kind == "object" else (2,))
                assert (e.size is not None) == (kind == "object")
                n_objects += 1
            assert v.no_object is None or v.no_object in allowed_names
    assert n_objects > 0


def test_grammar_rejects_disallowed(small: BinSpec) -> None:
    codec = PoseCodec(small)
    token_ids, word_ids, eos, _ = _toy_vocab(codec)
    names = [[word_ids["cup"]], [word_ids["cup"], word_ids["holder"]]]
    g = PoseGrammar(token_ids, eos, names, allow_negative=False, allow_empty_view=False)
    s = g.start()
    assert g.allowed(s) == [token_ids["<image0>"]]
    for bad in (token_ids["<loc0000>"], eos, token_ids["<image1>"], word_ids["cup"]):
        with pytest.raises(PoseParseError):
            g.advance(s, bad)
    s = g.advance(s, token_ids["<image0>"])
    with pytest.raises(PoseParseError):  # empty view not allowed
        g.advance(s, token_ids["</image0>"])
    with pytest.raises(PoseParseError):  # name not in the trie
        g.advance(s, word_ids["mug"])
    s = g.advance(s, word_ids["cup"])
    assert set(g.allowed(s)) == {word_ids["holder"]} | {token_ids[f"<loc{i:04d}>"] for i in range(1024)}
    with pytest.raises(PoseParseError):  # negatives not allowed
        g.advance(s, token_ids["<no_object>"])
    for _ in range(4):
        s = g.advance(s, token_ids["<loc0001>"])
    with pytest.raises(PoseParseError):  # 5th loc
        g.advance(s, token_ids["<loc0001>"])
    with pytest.raises(PoseParseError):
        g.advance(s, token_ids["<transZ0001>"])
    wp = PoseGrammar(token_ids, eos, names, kind="waypoint")
    s = wp.advance(wp.advance(wp.start(), token_ids["<image0>"]), word_ids["cup"])
    s = wp.advance(wp.advance(s, token_ids["<loc0001>"]), token_ids["<loc0002>"])
    assert wp.allowed(s) == sorted(token_ids[f"<transXY{i:04d}>"] for i in range(10))


# ---------------------------------------------------------------------------------------------- report
def test_quantization_report(fitted: BinSpec) -> None:
    rng = np.random.default_rng(6)
    rep = quantization_report(
        fitted, trans_xy=rng.normal(0, 0.5, (500, 2)), trans_z=rng.uniform(0.3, 6, 500),
        size=rng.lognormal(-1.5, 0.6, (500, 3)), rot=rng.uniform(-math.pi, math.pi, (500, 3)),
        loc=rng.uniform(0, 1, (500, 4)),
    )
    fams = rep["families"]
    assert set(fams) == {"loc", "trans_xy", "trans_z", "size", "rot"}
    assert fams["rot"]["unit"] == "deg" and fams["rot"]["max_abs_err"] <= 180 / 359 + 1e-6
    assert fams["loc"]["max_abs_err_px"] <= 224 * 0.5 / 1024 + 1e-9
    assert fams["trans_z"]["unit"] == "mm" and 0 < fams["trans_z"]["mean_abs_err"] < 50
    assert 0 < fams["size"]["bins_used"] <= fams["size"]["bins_total"] == 128
    table = format_report(rep)
    assert "trans_xy" in table and "bins used" in table and rep["fingerprint"] in table


def test_grammar_entry_bound_caps_the_answer_length():
    """With max_entries_per_view, a decoder that always wants 'one more object' still ends within max_length."""
    import numpy as np

    from posevla.tokens import BinSpec, PoseCodec, PoseGrammar

    bins = BinSpec.fit(np.linspace(-1, 1, 30), np.linspace(0.2, 2, 30), np.linspace(0.01, 0.3, 30),
                       BinCounts(trans_xy=4, trans_z=4, size=4, rot=8, loc=8))
    codec = PoseCodec(bins)
    vocab = codec.vocabulary() + [";"]
    token_ids = {t: i for i, t in enumerate(vocab)}
    name, eos = [len(vocab), len(vocab) + 1], len(vocab) + 2
    g = PoseGrammar(token_ids, eos, [name], num_views=3, allow_empty_view=False, max_entries_per_view=2)
    state, out = g.start(), []
    while not g.is_done(state):
        allowed = g.allowed(state)
        # always prefer another entry (the name tokens) over closing the view
        tok = next((t for t in name if t in allowed), min(allowed))
        state = g.advance(state, tok)
        out.append(tok)
        assert len(out) <= g.max_length()
    assert out.count(token_ids[";"]) == 3 * 2  # exactly the bound in every view
    assert len(out) == g.max_length()  # the bound is tight for this decoder
