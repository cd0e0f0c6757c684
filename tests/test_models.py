"""Tests of posevla.models: config, tokenizer/layout, prior embedders, PoseVLM loss/mask/priors/generation,
and loading a PaliGemma-format directory. Everything runs on a tiny model on one CPU thread."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from posevla.errors import ConfigError, DataError
from posevla.models import MODEL_CONFIGS, PoseTextTokenizer, PoseVLM, get_model_config
from posevla.models.config import fake_answers, to_hf_config
from posevla.models.priors import PatchEmbedMlp
from posevla.models.text import IGNORE_INDEX
from posevla.tokens import BinCounts, BinSpec, PoseCodec, PoseGrammar

torch.set_num_threads(1)

NAMES = ["cup", "bowl", "master chef can"]


@pytest.fixture(scope="module")
def codec():
    rng = np.random.default_rng(0)
    bins = BinSpec.fit(
        rng.normal(0, 0.3, 500), rng.uniform(0.3, 3.0, 500), rng.uniform(0.02, 0.5, 500),
        BinCounts(trans_xy=64, trans_z=64, size=32, rot=36), description="test",
    )
    return PoseCodec(bins, num_views=3)


@pytest.fixture(scope="module")
def cfg():
    return get_model_config("tiny")


@pytest.fixture(scope="module")
def model(cfg, codec):
    torch.manual_seed(0)
    m = PoseVLM.build(cfg, None, codec.vocabulary(), bins=codec.bins)
    m.eval()
    return m


def _answer(codec, rng, n_views=3):
    return codec.serialize(fake_answers(rng, n_views))


def _batch(model, codec, B=3, seed=0, with_answer=True):
    return model.cfg.fake_batch(B, model.tokenizer, codec if with_answer else None, seed=seed)


# ----------------------------------------------------------------------------------------- config
def test_config_names_and_hf_config():
    tiny = get_model_config("tiny")
    assert tiny.tokens_per_view == 64 and tiny.n_image_tokens == 192 and tiny.prefix_len == 192 + tiny.prompt_len
    big = get_model_config("paligemma-3b")
    assert big.tokens_per_view == 256
    assert (big.vision_hidden, big.vision_layers, big.vision_mlp) == (1152, 27, 4304)
    text = (big.text_hidden, big.text_layers, big.text_heads, big.text_kv_heads, big.head_dim, big.text_mlp)
    assert text == (2048, 18, 8, 1, 256, 16384)
    with pytest.raises(ConfigError, match="tiny"):
        get_model_config("huge")
    hf = to_hf_config(big, vocab_size=257152, image_token_id=257152, pad_id=0, bos_id=2, eos_id=1)
    assert hf.text_config.vocab_size == 257152 and hf.projection_dim == 2048
    assert hf.vision_config.patch_size == 14 and hf.text_config.num_image_tokens == 256
    assert set(MODEL_CONFIGS) >= {"tiny", "paligemma-3b"}
    assert type(tiny).from_dict(tiny.to_dict()) == tiny
    assert get_model_config("tiny", base="/x").base == "/x"


# -------------------------------------------------------------------------------------- tokenizer
def test_tokenizer(model, codec, tmp_path):
    tok = model.tokenizer
    vocab = codec.vocabulary()
    for t in vocab[:: max(1, len(vocab) // 200)] + vocab[-7:]:
        assert len(tok.encode_text(t)) == 1, t
    ids_map = tok.pose_token_ids(vocab)
    assert ids_map[";"] == tok.encode_text(";")[0] and len(ids_map) == len(vocab) + 1
    assert len(set(ids_map.values())) == len(ids_map)

    answer = _answer(codec, np.random.default_rng(1))
    ids = tok.encode_text(answer)
    assert tok.decode(ids) == answer
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == answer
    codec.parse(tok.decode(ids))

    # every name occurrence in the answer is encoded exactly as name_ids gives it
    name_ids = dict(zip(NAMES, tok.name_ids(NAMES)))
    text = "<image0>master chef can<no_object></image0><image1>cup" + "".join(vocab[:13]) + ";bowl"
    got = tok.encode_text(text)
    open0 = ids_map["<image0>"]
    k = got.index(open0) + 1
    assert got[k : k + len(name_ids["master chef can"])] == name_ids["master chef can"]
    k = got.index(ids_map[";"]) + 1
    assert got[k:] == name_ids["bowl"]
    # the scratch BPE is context free: a word has the same ids in the prompt
    prompt = tok.encode_text("detect the master chef can")
    n = name_ids["master chef can"]
    assert prompt[-len(n):] == n

    # deterministic scratch build, save/load round trip
    fresh = PoseTextTokenizer.build_scratch()
    assert fresh.hf.get_vocab() == PoseTextTokenizer.build_scratch().hf.get_vocab()
    assert len(fresh) < len(tok) and fresh.encode_text("detect the cup") == tok.encode_text("detect the cup")
    tok.save(tmp_path / "tok")
    back = PoseTextTokenizer.load(tmp_path / "tok")
    assert back.encode_text(answer) == ids and len(back) == len(tok) and back.pose_tokens == tok.pose_tokens
    assert (back.bos_id, back.eos_id, back.pad_id, back.image_token_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.image_token_id)


def test_example_layout(model):
    tok, cfg = model.tokenizer, model.cfg
    ans = "<image0>cup<no_object></image0>"
    ex = tok.build_example("detect the cup", ans, n_image_tokens=4, prompt_len=12)
    P = 16
    assert (ex["input_ids"][:4] == tok.image_token_id).all() and ex["input_ids"][4] == tok.bos_id
    n_text = 1 + len(tok.encode_text("detect the cup")) + len(tok.encode_text("\n"))
    assert ex["attention_mask"][: 4 + n_text].all() and not ex["attention_mask"][4 + n_text : P].any()
    assert (ex["input_ids"][4 + n_text : P] == tok.pad_id).all()
    assert (ex["token_type_ids"][:P] == 0).all() and (ex["token_type_ids"][P:] == 1).all()
    assert (ex["labels"][:P] == IGNORE_INDEX).all()
    assert list(ex["labels"][P:]) == tok.encode_text("<image0>cup<no_object></image0>") + [tok.eos_id]
    pre = tok.build_example("detect the cup", None, n_image_tokens=4, prompt_len=12)
    assert len(pre["input_ids"]) == P and (pre["input_ids"] == ex["input_ids"][:P]).all()
    with pytest.raises(DataError, match="prompt_len"):
        tok.build_example("detect the cup " * 10, None, n_image_tokens=4, prompt_len=12)
    ex2 = tok.build_example("detect the bowl", "<image0></image0>", n_image_tokens=4, prompt_len=12)
    b = tok.collate([ex, ex2])
    L = len(ex["input_ids"])
    assert b["input_ids"].shape == (2, L) and b["input_ids"].dtype == torch.long
    short = len(ex2["input_ids"])
    assert (b["labels"][1, short:] == IGNORE_INDEX).all() and (b["attention_mask"][1, short:] == 0).all()
    assert (b["input_ids"][1, short:] == tok.pad_id).all()


# ---------------------------------------------------------------------------------------- priors
def test_patch_embed_order_matches_siglip(model):
    torch.manual_seed(0)
    conv = model.hf.model.vision_tower.embeddings.patch_embedding  # Conv2d(3, D, p, stride=p)
    p = conv.kernel_size[0]
    pe = PatchEmbedMlp(3, p, conv.out_channels)
    x = torch.randn(2, 3, 4 * p, 3 * p)
    with torch.no_grad():
        ref = conv(x).flatten(2).transpose(1, 2)  # SigLIP's token order
        ours = pe.patchify(x) @ conv.weight.flatten(1).T + conv.bias
        out = pe(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 12, conv.out_channels)


# ------------------------------------------------------------------------------- loss and priors
def test_loss_backward_and_answer_only(model, codec):
    m = copy.deepcopy(model)
    m.train()
    m.cfg = m.cfg.replace(prior_dropout=(0.0, 0.0))
    b = _batch(m, codec)
    out = m.compute_loss(b)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert int(out["n_tokens"]) == int((b["labels"] != IGNORE_INDEX).sum())
    assert 0.0 <= float(out["token_acc"]) <= 1.0
    out["loss"].backward()
    for name in ("depth_embed.fc1.weight", "ray_embed.fc2.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    emb = m.hf.get_input_embeddings().weight
    assert emb.grad is not None and m.hf.lm_head.weight is emb

    m.eval()
    with torch.no_grad():
        base = m.compute_loss(b)["loss"]
        # the loss is the mean CE over answer positions only
        logits = m.logits(b)[:, :-1]
        tgt = b["labels"][:, 1:]
        sel = tgt != IGNORE_INDEX
        manual = torch.nn.functional.cross_entropy(logits[sel], tgt[sel])
        torch.testing.assert_close(base, manual)
        # a prefix pad's input id (not the last prefix slot, which predicts the first answer token) is ignored
        P = m.prefix_len
        pad_pos = int(torch.nonzero(b["attention_mask"][0, :P] == 0)[0])
        assert pad_pos < P - 1
        b2 = {k: v.clone() for k, v in b.items()}
        b2["input_ids"][0, pad_pos] = m.tokenizer.encode_text("cup")[0]
        torch.testing.assert_close(m.compute_loss(b2)["loss"], base)
        # changing an answer label changes the loss
        b3 = {k: v.clone() for k, v in b.items()}
        b3["labels"][0, P + 2] = (int(b3["labels"][0, P + 2]) + 1) % m.tokenizer.vocab_size
        assert not torch.allclose(m.compute_loss(b3)["loss"], base)


def test_priors(model, codec):
    m = model
    m.eval()
    b = _batch(m, codec, B=2)
    with torch.no_grad():
        full = m.logits(b)
        zero = dict(b, ray=torch.zeros_like(b["ray"]), depth=torch.zeros_like(b["depth"]))
        z = m.logits(zero)
        assert (full - z).abs().max() > 1e-4  # priors change the output
        # sample 0 without priors (mask 0) == zero prior maps == keys absent; sample 1 untouched
        masked = dict(b, prior_mask=torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        mz = m.logits(masked)
        torch.testing.assert_close(mz[0], z[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mz[1], full[1], atol=1e-5, rtol=1e-5)
        absent = {k: v for k, v in b.items() if k not in ("ray", "depth", "prior_mask")}
        torch.testing.assert_close(m.logits(absent), z, atol=1e-5, rtol=1e-5)
        # each prior acts on its own: depth only differs from ray only
        d_only = m.logits(dict(b, prior_mask=torch.tensor([[1.0, 0.0]] * 2)))
        r_only = m.logits(dict(b, prior_mask=torch.tensor([[0.0, 1.0]] * 2)))
        assert (d_only - r_only).abs().max() > 1e-4
    # modality dropout only in training mode
    m2 = copy.deepcopy(m)
    m2.cfg = m2.cfg.replace(prior_dropout=(1.0, 1.0))
    with torch.no_grad():
        torch.testing.assert_close(m2.logits(b), full, atol=1e-5, rtol=1e-5)  # eval: no dropout
        m2.train()
        torch.testing.assert_close(m2.logits(b), z, atol=1e-5, rtol=1e-5)  # train, p=1: all dropped
        m2.cfg = m2.cfg.replace(prior_dropout=(1.0, 0.0))
        torch.testing.assert_close(
            m2.logits(b), m.logits(dict(b, prior_mask=torch.tensor([[0.0, 1.0]] * 2))), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train_mode", [False, True])
def test_prefix_lm_mask(model, codec, train_mode):
    m = copy.deepcopy(model)
    m.cfg = m.cfg.replace(prior_dropout=(0.0, 0.0))
    m.train(train_mode)
    b = _batch(m, codec, B=1)
    P = m.prefix_len
    L = b["input_ids"].shape[1]
    with torch.no_grad():
        ref = m.logits(b)[0]
        # causality: perturbing answer token t changes nothing before t, and changes t
        t = P + 5
        b1 = {k: v.clone() for k, v in b.items()}
        b1["input_ids"][0, t:] = m.tokenizer.encode_text("<loc0007>")[0]
        out = m.logits(b1)[0]
        torch.testing.assert_close(out[:t], ref[:t], atol=1e-5, rtol=1e-5)
        assert (out[t] - ref[t]).abs().max() > 1e-4
        # bidirectional prefix: a late prompt token changes the outputs at the first image token
        n_valid = int(b["attention_mask"][0, :P].sum())
        b2 = {k: v.clone() for k, v in b.items()}
        b2["input_ids"][0, n_valid - 2] = m.tokenizer.encode_text("bowl")[0]
        out2 = m.logits(b2)[0]
        assert (out2[0] - ref[0]).abs().max() > 1e-4
        # answer tokens never influence the prefix
        torch.testing.assert_close(out[:P], ref[:P], atol=1e-5, rtol=1e-5)
        assert L > t


# ------------------------------------------------------------------------------------ generation
class _CloseAfterOneEntry:
    """Test-only wrapper that makes a random model's greedy answer short: after the first entry of a view
    only the closing tag is allowed (the wrapped grammar still checks every token)."""

    def __init__(self, g):
        self.g = g

    def start(self):
        return self.g.start()

    def advance(self, s, t):
        return self.g.advance(s, t)

    def is_done(self, s):
        return self.g.is_done(s)

    def allowed_mask(self, s, V):
        mask = self.g.allowed_mask(s, V)
        if s[0] == "next":
            mask = np.zeros_like(mask)
            mask[self.g._close[s[1]]] = True
        return mask


def test_generation_cache_and_grammar(model, codec):
    m = copy.deepcopy(model).double()
    tok = m.tokenizer
    b = _batch(m, codec, B=2, with_answer=False)
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
    grammar = PoseGrammar(tok.pose_token_ids(codec.vocabulary()), tok.eos_id, tok.name_ids(NAMES),
                          num_views=3, kind="object", allow_empty_view=False)
    gs = [_CloseAfterOneEntry(grammar), _CloseAfterOneEntry(grammar)]
    res = m.generate(b, gs, max_new_tokens=80)
    res_nc = m.generate(b, gs, max_new_tokens=80, use_cache=False)
    for r, rn in zip(res, res_nc):
        assert r.ids == rn.ids
        np.testing.assert_allclose(r.logprobs, rn.logprobs, atol=1e-6)
        assert r.finished and r.ids[-1] == tok.eos_id and len(r.logprobs) == len(r.ids)
        assert all(lp <= 0 for lp in r.logprobs)
        views = codec.parse(tok.decode(r.ids))
        assert [v.index for v in views] == [0, 1, 2]
    # unconstrained generation and a length limit
    free = m.generate(b, [None, None], max_new_tokens=4)
    assert all(len(r.ids) <= 4 for r in free)
    assert not m.training
    with pytest.raises(DataError, match="prefix-only"):
        m.generate(_batch(m, codec, B=2), [None, None], max_new_tokens=2)


def test_rebuild_from_saved_tokenizer_loads_state_dict(model, codec, tmp_path):
    """What a checkpoint reload does: the saved tokenizer already holds the pose tokens; same shapes."""
    model.tokenizer.save(tmp_path / "tok")
    tok = PoseTextTokenizer.load(tmp_path / "tok")
    m2 = PoseVLM.build(model.cfg, tok, codec.vocabulary(), bins=codec.bins)
    assert m2.vocab_size == model.vocab_size
    m2.load_state_dict(model.state_dict())
    m2.eval()
    b = _batch(model, codec, B=1)
    with torch.no_grad():
        torch.testing.assert_close(m2.logits(b), model.logits(b))


# ------------------------------------------------------------------------------ HF-format directory
def test_load_hf_dir(tmp_path, cfg, codec):
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(1)
    tok = PoseTextTokenizer.build_scratch()
    locs = [f"<loc{i:04d}>" for i in range(1024)]
    tok.add_pose_tokens(locs)  # like Gemma: <loc…> already in the checkpoint's vocabulary
    n_tok = len(tok)
    n_rows = n_tok + 8  # like PaliGemma: the matrix has a few more rows than the tokenizer uses
    hf_cfg = to_hf_config(cfg, vocab_size=n_rows, image_token_id=tok.image_token_id, pad_id=tok.pad_id,
                          bos_id=tok.bos_id, eos_id=tok.eos_id)
    ref = PaliGemmaForConditionalGeneration(hf_cfg)
    d = tmp_path / "paligemma-tiny"
    ref.save_pretrained(str(d))
    tok.hf.save_pretrained(str(d))
    loc_ids = [tok.token_to_id(t) for t in locs[:5]]

    m = PoseVLM.from_hf_dir(d, cfg, codec.vocabulary(), bins=codec.bins)
    m2 = PoseVLM.build(cfg.replace(base=str(d)), None, codec.vocabulary(), bins=codec.bins)
    ref_sd = ref.state_dict()
    for mm in (m, m2):
        sd = mm.hf.state_dict()
        for k, v in ref_sd.items():
            if "embed_tokens" in k or k == "lm_head.weight":
                continue
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0, msg=k)
        emb = mm.hf.get_input_embeddings().weight.detach()
        old = ref.get_input_embeddings().weight.detach()
        assert emb.shape[0] == len(mm.tokenizer) > n_rows
        torch.testing.assert_close(emb[:n_tok], old[:n_tok], rtol=0, atol=0)  # original rows unchanged
        mean = old[:n_tok].mean(0)
        new = emb[n_tok:]
        assert (new - mean).abs().max() < 1e-3 * mean.abs().max().clamp_min(1.0)  # mean-initialised
        assert mm.hf.lm_head.weight is mm.hf.get_input_embeddings().weight
        assert [mm.tokenizer.token_to_id(t) for t in locs[:5]] == loc_ids  # existing tokens keep their ids
        assert mm.vocab_size == len(mm.tokenizer)
    with pytest.raises(ConfigError, match="does not match"):
        PoseVLM.build(cfg.replace(base=str(d), text_layers=2), None, None)
    # the loaded model runs
    b = _batch(m, codec, B=1)
    assert torch.isfinite(m.compute_loss(b)["loss"])


def test_family_decision_sums_the_loc_mass():
    """'Another object' (mass spread over many loc tokens) must beat a single <no_object> token at 0.3."""
    from posevla.models.posevlm import PoseVLM

    V = 16
    groups = torch.tensor([0] * 10 + list(range(10 + 5, V + 5)))  # ids 0..9: one family; others alone
    probs = torch.full((1, V), 1e-6)
    probs[0, :10] = 0.07  # family total 0.7
    probs[0, 12] = 0.3  # the single most likely token
    logits = probs.log()
    kept = PoseVLM._keep_best_family(logits, groups)
    assert int(kept.argmax()) in range(10)
    probs[0, :10] = 0.01  # family total 0.1 < 0.3
    kept = PoseVLM._keep_best_family(probs.log(), groups)
    assert int(kept.argmax()) == 12


def test_ordinal_loss_prefers_near_misses():
    """With ordinal soft targets, mass one bin off costs less than mass far off; sigma=0 is plain CE."""
    import numpy as np

    from posevla.models import PoseVLM, get_model_config
    from posevla.tokens import BinSpec, PoseCodec

    bins = BinSpec.fit(np.linspace(-1, 1, 40), np.linspace(0.2, 2, 40), np.linspace(0.01, 0.3, 40),
                       BinCounts(trans_xy=8, trans_z=8, size=8, rot=12, loc=16))
    model = PoseVLM.build(get_model_config("tiny"), None, PoseCodec(bins).vocabulary())
    tok = model.tokenizer
    ids = [tok.token_to_id(f"<transZ{k:04d}>") for k in range(8)]
    V = tok.vocab_size
    tgt = torch.tensor([ids[3]])

    def logits_peaked_at(j):
        x = torch.full((1, V), -10.0)
        x[0, j] = 5.0
        return x

    near = model._ordinal_cross_entropy(logits_peaked_at(ids[4]), tgt, 1.0)
    far = model._ordinal_cross_entropy(logits_peaked_at(ids[7]), tgt, 1.0)
    exact = model._ordinal_cross_entropy(logits_peaked_at(ids[3]), tgt, 1.0)
    assert exact < near < far
    plain_near = torch.nn.functional.cross_entropy(logits_peaked_at(ids[4]), tgt)
    plain_far = torch.nn.functional.cross_entropy(logits_peaked_at(ids[7]), tgt)
    assert torch.isclose(plain_near, plain_far)


def test_prior_embedding_stays_on_the_image_feature_scale():
    """Each prior token is layer-normalised, so a prior cannot drown SigLIP's (unit-scale) features,
    whatever the scale of its input (e.g. depth in metres vs a far background)."""
    torch.manual_seed(0)
    pe = PatchEmbedMlp(2, 8, 32)
    for scale in (1.0, 1000.0):
        out = pe(torch.rand(2, 2, 16, 16) * scale)  # (2, 4, 32)
        rms = out.pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.ones_like(rms), atol=0.05), (scale, rms)
