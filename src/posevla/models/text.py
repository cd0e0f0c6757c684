"""Text side of the Pose-VLM: tokenizer wrapper and the fixed example layout.

`PoseTextTokenizer` wraps a `transformers.PreTrainedTokenizerFast`:

* ``tiny`` / scratch models use a byte-level BPE trained *offline and deterministically* on a fixed built-in
  corpus (prompt words, object names, digits; ~600 ids) with the special tokens ``<pad> <eos> <bos> <image>``.
* a real PaliGemma directory uses the checkpoint's own tokenizer (Gemma SentencePiece; ``<image>``,
  ``<bos>``, ``<eos>``, ``<pad>`` and ``<loc0000>``… are already in its vocabulary).

Pose tokens (``<loc…>``, ``<transXY…>``, …) are added as special tokens so each is exactly one id.

**How text is split (why category names tokenize the same everywhere in an answer).** `encode_text` first
splits the string on pose-token strings and on ``;`` (regex), encodes each pose token / ``;`` as its single
id and every remaining text chunk on its own through the BPE. In an answer a name always sits alone between
two such delimiters (``<image0>cup<loc…>`` or ``…;cup<loc…>``), so its ids are exactly
``encode_text(name)`` = ``name_ids([name])[0]``, whatever precedes it; that is what the grammar
(`PoseGrammar(names=...)`) relies on. The scratch BPE additionally pre-splits on whitespace, punctuation and
single digits before byte-level encoding, so a word has the same ids in the prompt (``detect the cup``) as in
the answer. With Gemma's SentencePiece a word in the middle of a prompt may carry a leading-space piece
(``▁cup``) and so differ from the answer's ``cup``; only the answer ids matter for the grammar.

Example layout (fixed, so batching and generation need no bookkeeping)::

    [<image>] * n_image_tokens  <bos> prompt "\\n" <pad>…   | answer … <eos>
    \\______________ prefix: n_image_tokens + prompt_len ______/ \\_ answer (causal) _/

The prefix is right-padded to a fixed length with attention 0 on the pads, so every prefix of a batch has
the same length and the first answer token is always predicted at position ``prefix_len - 1``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from posevla.errors import ConfigError, DataError

__all__ = [
    "PoseTextTokenizer",
    "build_example",
    "collate_text",
    "SCRATCH_SPECIAL_TOKENS",
    "IGNORE_INDEX",
    "SEPARATOR",
]

IGNORE_INDEX = -100
#: Object separator of the answer grammar; ordinary text, but always encoded as its own chunk.
SEPARATOR = ";"
SCRATCH_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<image>")
SCRATCH_VOCAB_SIZE = 600
_META_FILE = "posevla_tokenizer.json"

# A fixed corpus for the scratch BPE: prompt words, robot instructions, object names (YCB, household,
# Omni3D-style categories), arm names and digits. Changing it changes the scratch vocabulary: bump
# `_CORPUS_VERSION` so saved checkpoints (which carry their own tokenizer.json) stay self-describing.
_CORPUS_VERSION = 1
_PROMPT_WORDS = """
detect the a an of in on to and with from into onto at by for is are this that it its then
pick up place put push pull open close turn press lift move grasp grab hold drop stack insert remove
slide rotate twist pour wipe hang fold unfold reach touch knock sweep shelf drawer door lid button
handle top bottom left right front back side middle center near far next above below inside outside
red green blue yellow orange purple pink black white gray grey brown small large big tall short
arm arms left arm right arm gripper robot table scene camera view object objects target goal
"""
_OBJECT_NAMES = """
cup mug bowl plate spoon fork knife bottle can jar box block cube ball banana apple orange lemon
pear peach plum strawberry potato tomato carrot sponge towel book laptop phone mouse keyboard
monitor chair sofa bed lamp pillow plant vase clock toaster microwave oven sink fridge cabinet
bin basket bag shoe hat glasses scissors hammer screwdriver wrench drill clamp marker pen pencil
tape mustard ketchup soup sugar cracker gelatin pudding coffee tea milk juice cereal chips
master chef can tomato soup can mustard bottle tuna fish can sugar box cracker box pudding box
gelatin box potted meat can power drill wood block foam brick large clamp extra large clamp
bleach cleanser pitcher base mug bowl scissors large marker medium clamp windex bottle
chain dice lego duplo timer wooden puzzle rubiks cube airplane toy car
bathtub bookcase counter desk dresser door window picture curtain blinds television
bicycle motorcycle pedestrian car truck bus traffic cone barrier
shoe camera cereal box chair cup laptop bike book bottle
"""
_DIGITS = " ".join(str(i) for i in range(100))


def _scratch_corpus() -> list[str]:
    lines = [ln.strip() for ln in (_PROMPT_WORDS + _OBJECT_NAMES).strip().splitlines() if ln.strip()]
    lines.append(_DIGITS)
    lines += [f"detect the {w}" for ln in _OBJECT_NAMES.split("\n") for w in ln.split()]
    lines += [f"left arm {k}" for k in range(10)] + [f"right arm {k}" for k in range(10)]
    lines += [f"arm {k}" for k in range(10)]
    lines += ["; \n . , : ! ? ( ) - _ / ' \""]
    return lines


def _build_scratch_backend():
    """Train the scratch byte-level BPE (deterministic: fixed corpus, fixed order, no randomness)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Context-free pre-splitting: whitespace, punctuation and single digits are their own pieces, so a word
    # gets the same ids wherever it occurs. Nothing is dropped, so decode(encode(s)) == s.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SCRATCH_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SCRATCH_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_scratch_corpus(), trainer=trainer)
    return tok


class PoseTextTokenizer:
    """Tokenizer of the Pose-VLM (text + pose tokens). See the module docstring for the splitting rule.

    Args:
        hf_tokenizer: a `transformers` fast tokenizer with ``<image>``, a BOS, an EOS and a PAD token.
        image_token: the image placeholder string.
    """

    def __init__(self, hf_tokenizer, image_token: str = "<image>") -> None:
        self.hf = hf_tokenizer
        self.image_token = image_token
        vocab = self.hf.get_vocab()
        missing = [
            what
            for what, t in (
                ("image", image_token),
                ("bos", self.hf.bos_token),
                ("eos", self.hf.eos_token),
                ("pad", self.hf.pad_token),
            )
            if t is None or t not in vocab
        ]
        if missing:
            raise ConfigError(
                f"tokenizer lacks the {missing} token(s) (image token {image_token!r}); a PaliGemma "
                "tokenizer needs <image>, <bos>, <eos> and <pad>"
            )
        self._pose_tokens: list[str] = []
        self._split_re: re.Pattern[str] | None = None
        self._rebuild_split_re()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def build_scratch(cls) -> PoseTextTokenizer:
        """The scratch tokenizer (byte-level BPE on the built-in corpus, no pose tokens yet)."""
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(
            tokenizer_object=_build_scratch_backend(),
            pad_token="<pad>",
            bos_token="<bos>",
            eos_token="<eos>",
            clean_up_tokenization_spaces=False,
        )
        return cls(hf)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PoseTextTokenizer:
        """Load a tokenizer saved with `save` or a PaliGemma checkpoint's own tokenizer files."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"tokenizer directory {directory} does not exist; pass the folder PoseTextTokenizer.save "
                              "wrote (a checkpoint's tokenizer/), or restore it from a copy")
        try:
            hf = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:  # noqa: BLE001 - re-raised with the directory and a fix
            raise ConfigError(
                f"could not load a tokenizer from {directory}: {exc}. The directory needs tokenizer.json "
                "(+ tokenizer_config.json) as written by PoseTextTokenizer.save or a PaliGemma checkpoint"
            ) from exc
        image_token = "<image>"
        meta = directory / _META_FILE
        pose: list[str] = []
        if meta.exists():
            try:
                m = json.loads(meta.read_text())
                image_token = str(m.get("image_token", image_token))
                pose = [str(t) for t in m.get("pose_tokens", [])]
            except (json.JSONDecodeError, AttributeError, TypeError) as exc:
                raise ConfigError(
                    f"{meta} is not the tokenizer's pose-token list ({exc}); restore it from a copy, or use another "
                    "checkpoint (it is written by PoseTextTokenizer.save)"
                ) from exc
        self = cls(hf, image_token=image_token)
        if pose:
            self.add_pose_tokens(pose)  # already present: only registers them for splitting
        return self

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json (+ config files) and a small meta file listing the pose tokens."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))
        (directory / _META_FILE).write_text(
            json.dumps({"image_token": self.image_token, "pose_tokens": self._pose_tokens}, indent=0)
        )

    # -- vocabulary --------------------------------------------------------------------------------
    def add_pose_tokens(self, pose_tokens: Sequence[str]) -> list[int]:
        """Add the pose tokens missing from the vocabulary as special tokens; return the ids added.

        Tokens already in the vocabulary (Gemma's ``<loc0000>``…) keep their ids. Afterwards each pose token
        encodes to exactly one id.
        """
        from tokenizers import AddedToken

        vocab = self.hf.get_vocab()
        missing = [t for t in dict.fromkeys(pose_tokens) if t not in vocab]
        before = len(self.hf)
        if missing:
            self.hf.add_tokens(
                [AddedToken(t, special=True, normalized=False, single_word=False) for t in missing],
                special_tokens=True,
            )
        added = list(range(before, len(self.hf)))
        known = set(self._pose_tokens)
        self._pose_tokens += [t for t in dict.fromkeys(pose_tokens) if t not in known]
        self._rebuild_split_re()
        bad = [t for t in pose_tokens if len(self.hf.encode(t, add_special_tokens=False)) != 1]
        if bad:
            raise ConfigError(f"pose tokens {bad[:5]} do not encode to a single id after being added")
        return added

    def _rebuild_split_re(self) -> None:
        specials = sorted(set(self._pose_tokens) | {self.image_token}, key=len, reverse=True)
        alts = [re.escape(t) for t in specials] + [re.escape(SEPARATOR)]
        self._split_re = re.compile("(" + "|".join(alts) + ")")

    @property
    def pose_tokens(self) -> list[str]:
        return list(self._pose_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (base vocabulary + added tokens)."""
        return len(self.hf)

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int:
        return int(self.hf.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def image_token_id(self) -> int:
        return int(self.hf.convert_tokens_to_ids(self.image_token))

    def token_to_id(self, token: str) -> int:
        ids = self.hf.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"token {token!r} is not a single id in this tokenizer (got {ids})")
        return int(ids[0])

    # -- encode / decode ---------------------------------------------------------------------------
    def encode_text(self, s: str) -> list[int]:
        """Ids of `s`: pose tokens, ``<image>`` and ``;`` one id each; other text chunk by chunk.

        No BOS/EOS is added.
        """
        out: list[int] = []
        assert self._split_re is not None
        for piece in self._split_re.split(s):
            if not piece:
                continue
            out.extend(self.hf.encode(piece, add_special_tokens=False))
        return [int(i) for i in out]

    def decode(self, ids: Iterable[int], *, skip_control: bool = True) -> str:
        """Text of `ids`, keeping pose tokens; `skip_control` drops ``<pad> <bos> <eos> <image>``."""
        ids = [int(i) for i in ids]
        if skip_control:
            drop = {self.pad_id, self.bos_id, self.eos_id, self.image_token_id}
            ids = [i for i in ids if i not in drop]
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def name_ids(self, names: Sequence[str]) -> list[list[int]]:
        """Id sequences of names (categories, ``left arm 0``…) exactly as they appear inside an answer."""
        out = []
        for n in names:
            ids = self.encode_text(n)
            if not ids:
                raise DataError(f"name {n!r} encodes to no tokens", field="names", fix="use a non-empty name")
            if any(i in self._pose_token_id_set() or i == self.token_to_id(SEPARATOR) for i in ids):
                raise DataError(
                    f"name {n!r} contains a pose token or ';'", field="names", fix="remove it from the name"
                )
            out.append(ids)
        return out

    def _pose_token_id_set(self) -> set[int]:
        vocab = self.hf.get_vocab()
        return {vocab[t] for t in self._pose_tokens if t in vocab}

    def pose_token_ids(self, vocabulary: Sequence[str]) -> dict[str, int]:
        """``{token string: id}`` for the grammar: every pose token, plus ``";"`` (ordinary text, one id)."""
        vocab = self.hf.get_vocab()
        missing = [t for t in vocabulary if t not in vocab]
        if missing:
            raise ConfigError(
                f"{len(missing)} pose tokens are not in the tokenizer (first: {missing[:3]}); call "
                "add_pose_tokens(codec.vocabulary()) first"
            )
        out = {t: int(vocab[t]) for t in vocabulary}
        sep = self.encode_text(SEPARATOR)
        if len(sep) != 1:
            raise ConfigError(f"';' must encode to one id, got {sep}")
        out[SEPARATOR] = sep[0]
        return out

    # -- examples ----------------------------------------------------------------------------------
    def build_example(
        self, prompt: str, answer: str | None, *, n_image_tokens: int, prompt_len: int
    ) -> dict[str, np.ndarray]:
        return build_example(self, prompt, answer, n_image_tokens=n_image_tokens, prompt_len=prompt_len)

    def collate(self, examples: Sequence[dict[str, np.ndarray]]):
        return collate_text(examples, pad_id=self.pad_id)


def build_example(
    tokenizer: PoseTextTokenizer,
    prompt: str,
    answer: str | None,
    *,
    n_image_tokens: int,
    prompt_len: int,
) -> dict[str, np.ndarray]:
    """One example in the fixed layout (see the module docstring), as int64 numpy arrays.

    Keys: ``input_ids, attention_mask, token_type_ids`` (0 prefix, 1 answer), ``labels`` (−100 except on
    the answer ids and the final EOS). With ``answer=None`` only the prefix is returned (for generation).
    Raises DataError if the prompt does not fit in `prompt_len`.
    """
    text = [tokenizer.bos_id] + tokenizer.encode_text(prompt) + tokenizer.encode_text("\n")
    if len(text) > prompt_len:
        raise DataError(
            f"prompt {prompt if len(prompt) <= 80 else prompt[:77] + '...'!r} takes {len(text)} tokens with <bos> and "
            f"'\\n' but prompt_len is {prompt_len}",
            field="prompt",
            fix="shorten the prompt or raise PoseVLMConfig.prompt_len",
        )
    n_pad = prompt_len - len(text)
    prefix = [tokenizer.image_token_id] * n_image_tokens + text + [tokenizer.pad_id] * n_pad
    attn = [1] * (n_image_tokens + len(text)) + [0] * n_pad
    ttype = [0] * len(prefix)
    labels = [IGNORE_INDEX] * len(prefix)
    if answer is not None:
        ans = tokenizer.encode_text(answer) + [tokenizer.eos_id]
        prefix = prefix + ans
        attn = attn + [1] * len(ans)
        ttype = ttype + [1] * len(ans)
        labels = labels + ans
    return {
        "input_ids": np.asarray(prefix, dtype=np.int64),
        "attention_mask": np.asarray(attn, dtype=np.int64),
        "token_type_ids": np.asarray(ttype, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def collate_text(examples: Sequence[dict[str, np.ndarray]], *, pad_id: int = 0) -> dict:
    """Stack examples into torch tensors, right-padding answers (pad id, attention 0, type 1, label -100)."""
    import torch

    if not examples:
        raise DataError("collate_text got an empty list of examples")
    L = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 1, "labels": IGNORE_INDEX}
    out = {}
    for key, value in fill.items():
        arr = np.full((len(examples), L), value, dtype=np.int64)
        for i, e in enumerate(examples):
            arr[i, : len(e[key])] = e[key]
        out[key] = torch.from_numpy(arr)
    return out
