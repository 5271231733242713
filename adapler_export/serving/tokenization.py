"""Text to token ids, once, for the library classifier and both Triton Python models.

Standalone on purpose (numpy and transformers only, nothing from ``adapler_export``): the repository
writer copies this file beside the ``adapler_tokenizer`` model, the front of the TensorRT ensemble, which
runs in a Triton container where the project need not be installed.

The tokenizer is read with ``PreTrainedTokenizerFast`` from the artifact's ``tokenizer.json`` (what
``save_pretrained`` writes for every fast tokenizer): ``AutoTokenizer`` would import torch to read a model
configuration, and a serving process has no use for torch.

It is also the one place where the library turns text into token ids: training, evaluation, parity and
calibration call :func:`encode` / :func:`encode_rows` too (through ``evaluation.encode``), so a model is
served exactly as it was trained and checked.

Rules (documented for users in ``runtime.py``):
* ``[CLS] … [SEP]``, at most ``max_length`` wordpieces, the special tokens included; a text with more is cut
  (``truncated``) by the model's truncation rule (:data:`TRUNCATIONS`; a model records it beside
  ``max_length``: the task table, the checkpoint's config, the artifact's manifest, the Triton parameters):

  - ``head`` (the default): the first ``max_length - 2`` wordpieces, the tokenizer's own truncation;
  - ``head+tail``: the first ``budget // 4`` and the last ``budget - budget // 4`` wordpieces (``budget`` =
    ``max_length`` less the special tokens: 127 + 383 at 512), joined. Sun et al. 2019, "How to Fine-Tune
    BERT for Text Classification" (§5.3.1, "Dealing with long texts"), found head+tail (the first 128 and last
    382 wordpieces) better than head-only on IMDB, where a review often states its verdict at the end. A
    quarter of the budget for the head lets the rule scale with ``max_length``; at 512 it is one wordpiece off
    their split. Wordpieces, not words: either cut may fall inside a word, as ``head``'s does.

  Texts are first cut to :data:`MAX_TEXT_CHARS` characters, a bound on tokenizer work far beyond what
  ``max_length`` wordpieces cover (``head+tail`` then keeps the tail of that prefix).
* Sentence pairs (``pairs``: the second text of each row): ``[CLS] text [SEP] pair [SEP]`` with token types 0
  for ``[CLS] text [SEP]`` and 1 for ``pair [SEP]`` (the tokenizer's own template: all 0 for RoBERTa-style
  tokenizers), cut by Hugging Face's default pair truncation, ``longest_first`` (:func:`pair_lengths`): the
  ``head`` rule of pairs. ``head+tail`` is for single texts; with pairs it is refused (ValueError).
* ``empty``: the text (and its pair) holds no token (empty, whitespace, or only characters the tokenizer
  drops such as control characters); it is still encoded (``[CLS] [SEP]``) so that result N is text N.
* Rows are padded to the longest, rounded up to ``pad_to_multiple_of`` and never past ``max_length``;
  int32 arrays, as the segments take.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np

MAX_TEXT_CHARS = 1 << 20  # 1 Mi characters
HEAD, HEAD_TAIL = "head", "head+tail"
TRUNCATIONS = (HEAD, HEAD_TAIL)  # how an over-long text is cut (the module docstring's Rules)


class TextInputError(ValueError):
    """A text that cannot be tokenized: not a string, not valid Unicode / UTF-8 (one line)."""


def check_truncation(rule, pairs: bool = False) -> str:
    """``rule`` if it is one of :data:`TRUNCATIONS` (and applies to sentence pairs where ``pairs``), else a
    ValueError naming the rules."""
    if rule not in TRUNCATIONS:
        raise ValueError(f"unknown truncation rule {rule!r}: the rules are {', '.join(TRUNCATIONS)}")
    if pairs and rule != HEAD:
        raise ValueError(f"truncation {rule!r} cuts single texts; sentence pairs are cut by longest_first "
                         f"(truncation {HEAD!r})")
    return rule


@dataclasses.dataclass(frozen=True)
class Cut:
    """How a model's inputs are cut to length: at most ``max_length`` wordpieces (special tokens included), an
    over-long text cut by the rule ``truncation``. A model is trained, checked and served with one Cut
    (``AdapLeRConfig.cut``, ``Manifest.cut``); the library's encoding functions take it where they took
    ``max_length``."""
    max_length: int
    truncation: str = HEAD

    def __post_init__(self):
        check_truncation(self.truncation)

    @classmethod
    def of(cls, cut) -> "Cut":
        """``cut`` as a Cut: a Cut, or a bare ``max_length`` (int), which is cut by ``head``."""
        if isinstance(cut, cls):
            return cut
        if isinstance(cut, bool) or not isinstance(cut, (int, np.integer)):
            raise TypeError(f"expected a Cut or a max_length (int), got {type(cut).__name__}")
        return cls(int(cut))

    def __str__(self) -> str:
        return f"{self.max_length} wordpieces ({self.truncation})"


@dataclasses.dataclass
class Rows:
    """Tokenized rows before padding."""
    ids: list  # token ids per row, special tokens included
    type_ids: list | None  # token types per row for sentence pairs; None: single texts (all 0)
    tokens: list  # wordpieces per row
    truncated: list  # bool per row
    empty: list  # bool per row


@dataclasses.dataclass
class Encoded:
    input_ids: np.ndarray  # [B, S] int32
    attention_mask: np.ndarray  # [B, S] int32
    tokens: list  # wordpieces per row (no padding)
    truncated: list  # bool per row
    empty: list  # bool per row
    token_type_ids: np.ndarray | None = None  # [B, S] int32 for sentence pairs; None: single texts (all 0)

    def model_inputs(self) -> tuple:
        """The arrays a backend's ``run`` takes: ``(input_ids, attention_mask)``, and ``token_type_ids`` for
        sentence pairs (single texts leave it out: every model reads all-zero token types then)."""
        pair = () if self.token_type_ids is None else (self.token_type_ids,)
        return (self.input_ids, self.attention_mask) + pair


def load_tokenizer(folder):
    """The artifact's tokenizer (``<artifact>/tokenizer``) as a fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    folder = pathlib.Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer.json (the artifact's tokenizer/ folder is "
                                "incomplete; rebuild the artifact)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    # encode() applies truncation itself; padding is done on the arrays
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    return tokenizer


def check_text(text, index: int, what: str = "text") -> str:
    """``text`` cut to MAX_TEXT_CHARS, or TextInputError: not a str, or a lone surrogate (no UTF-8 form)."""
    if not isinstance(text, str):
        raise TextInputError(f"{what} {index} is {type(text).__name__}, not str")
    text = text[:MAX_TEXT_CHARS]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextInputError(f"{what} {index} is not valid Unicode: lone surrogate {ascii(text[exc.start])} at "
                             f"character {exc.start}") from None
    return text


def decode_texts(array, name: str = "TEXT") -> list:
    """The rows of a Triton BYTES tensor (input ``name``) as str (TextInputError naming the first
    undecodable element)."""
    texts = []
    for index, item in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, (bytes, bytearray, np.bytes_)):
            raise TextInputError(f"{name}[{index}] is {type(item).__name__}, expected UTF-8 bytes")
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TextInputError(f"{name}[{index}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not texts:
        raise TextInputError(f"{name} holds no element")
    return texts


def decode_columns(tensor, names: Sequence[str]) -> list:
    """The texts of each Triton input in ``names`` (TEXT, and TEXT_PAIR for sentence pairs), all of one row
    count; ``tensor(name)``: the request's input tensor (``as_numpy()``), None where the request lacks it."""
    columns = []
    for name in names:
        found = tensor(name)
        if found is None:
            raise TextInputError(f"missing input {name}")
        columns.append(decode_texts(found.as_numpy(), name))
    if any(len(column) != len(columns[0]) for column in columns):
        raise TextInputError(f"{' and '.join(names)} have different row counts")
    return columns


def pair_lengths(first: int, second: int, budget: int) -> tuple:
    """How many wordpieces of a pair's two texts (``first``, ``second`` long) stay within ``budget`` (max_length
    less the special tokens): Hugging Face's ``longest_first`` truncation, as the tokenizers library computes
    it (``truncate_encodings``). The shorter text is kept whole when the longer one can give up enough;
    otherwise both are cut to half the budget, the longer one (the second on a tie) keeping an odd token."""
    if first + second <= budget:
        return first, second
    short, long = sorted((first, second))
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short, long = budget // 2, budget // 2 + budget % 2
    return (long, short) if first > second else (short, long)


def keep_ends(encoding, length: int, direction: str) -> None:
    """Cut ``encoding`` (in place) to its first (``direction`` "right") or last ("left") ``length`` wordpieces.

    In two steps, so that what the cut leaves in ``encoding.overflowing`` is one wordpiece rather than the rest
    of the text in ``length``-sized pieces (``truncate`` replaces the overflowing parts each time):
    ``Encoding.merge`` joins every overflowing piece of one part with every piece of the other, and
    ``post_process`` processes them all, which costs ten times the tokenization of a long review."""
    encoding.truncate(length + 1, direction=direction)
    encoding.truncate(length, direction=direction)


def head_and_tail(encoding, budget: int):
    """``encoding`` (content wordpieces only, more than ``budget``) cut by ``head+tail``: its first
    ``budget // 4`` and last ``budget - budget // 4`` wordpieces, ids, tokens and offsets alike."""
    from tokenizers import Encoding

    head = budget // 4
    tail = Encoding.merge([encoding], growing_offsets=False)  # a copy
    keep_ends(encoding, head, "right")
    keep_ends(tail, budget - head, "left")
    return Encoding.merge([encoding, tail], growing_offsets=False)  # offsets stay those of the text


def encode_rows(tokenizer, texts: Sequence[str], max_length: int, pairs: Sequence[str] | None = None,
                truncation: str = HEAD) -> Rows:
    """Tokenize ``texts`` (and their ``pairs``; all checked with :func:`check_text`) by the rules above, unpadded;
    an over-long text is cut by the rule ``truncation`` (:data:`TRUNCATIONS`; a ValueError for another name,
    or for ``head+tail`` with pairs).

    One tokenizer pass per text, on the Rust tokenizer itself: content tokens, then the tokenizer's own
    truncation (``Encoding.truncate``, by :func:`pair_lengths` for pairs; :func:`head_and_tail` for
    ``head+tail``) and special tokens (``post_process``), which is what a truncating
    ``tokenizer(texts, pairs, ...)`` call does for ``head``, except that it also tells which rows were cut."""
    check_truncation(truncation, pairs is not None)
    texts = [check_text(text, i) for i, text in enumerate(texts)]
    if not texts:
        raise TextInputError("encode() needs at least one text")
    if pairs is not None:
        pairs = [check_text(pair, i, "pair") for i, pair in enumerate(pairs)]
        if len(pairs) != len(texts):
            raise TextInputError(f"{len(texts)} texts but {len(pairs)} pairs: every text needs its pair")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer: load it with "
                        "AutoTokenizer.from_pretrained(..., use_fast=True)")
    # A truncating or padding `tokenizer(...)` call leaves its setting in the Rust tokenizer, which applies it in
    # encode_batch and post_process too: only the rules here may apply (`tokenizer(...)` sets its own again).
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    budget = max_length - backend.num_special_tokens_to_add(pairs is not None)
    firsts = backend.encode_batch(texts, add_special_tokens=False)
    seconds = backend.encode_batch(pairs, add_special_tokens=False) if pairs is not None else [None] * len(firsts)
    rows = Rows([], None if pairs is None else [], [], [], [])
    for first, second in zip(firsts, seconds):
        lengths = (len(first.ids),) if second is None else (len(first.ids), len(second.ids))
        keep = (min(lengths[0], budget),) if second is None else pair_lengths(*lengths, budget)
        rows.empty.append(sum(lengths) == 0)
        rows.truncated.append(keep != lengths)
        if truncation == HEAD_TAIL and keep != lengths:
            first = head_and_tail(first, budget)
        else:
            for encoding, length in zip((first, second), keep):
                encoding.truncate(length)
        row = backend.post_process(first, second, True)
        rows.ids.append(row.ids)
        rows.tokens.append(list(row.tokens))
        if rows.type_ids is not None:
            rows.type_ids.append(row.type_ids)
    return rows


def encode(tokenizer, texts: Sequence[str], max_length: int, pad_to_multiple_of: int = 1,
           pairs: Sequence[str] | None = None, truncation: str = HEAD) -> Encoded:
    """:func:`encode_rows`, padded (:func:`pad_rows`)."""
    rows = encode_rows(tokenizer, texts, max_length, pairs, truncation)
    return pad_rows(rows, max_length, pad_id(tokenizer), pad_to_multiple_of)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_rows(rows: Rows, max_length: int, pad_token_id: int, pad_to_multiple_of: int = 1) -> Encoded:
    """``rows`` as int32 arrays of the longest row, rounded up to ``pad_to_multiple_of`` and never past
    ``max_length``."""
    longest = max(len(ids) for ids in rows.ids)
    multiple = max(1, int(pad_to_multiple_of))
    seq = min(-(-longest // multiple) * multiple, max(max_length, longest))
    input_ids = np.full((len(rows.ids), seq), pad_token_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows.ids), seq), dtype=np.int32)
    token_type_ids = None if rows.type_ids is None else np.zeros((len(rows.ids), seq), dtype=np.int32)
    for i, ids in enumerate(rows.ids):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        if token_type_ids is not None:
            token_type_ids[i, : len(ids)] = rows.type_ids[i]
    return Encoded(input_ids, attention_mask, rows.tokens, rows.truncated, rows.empty, token_type_ids)
