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
* ``[CLS] … [SEP]``, cut to ``max_length`` wordpieces by the tokenizer's own truncation (``truncated``);
  texts are first cut to :data:`MAX_TEXT_CHARS` characters, a bound on tokenizer work far beyond what
  ``max_length`` wordpieces cover.
* Sentence pairs (``pairs``: the second text of each row): ``[CLS] text [SEP] pair [SEP]`` with token types 0
  for ``[CLS] text [SEP]`` and 1 for ``pair [SEP]`` (the tokenizer's own template: all 0 for RoBERTa-style
  tokenizers), cut by Hugging Face's default pair truncation, ``longest_first`` (:func:`pair_lengths`).
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


class TextInputError(ValueError):
    """A text that cannot be tokenized: not a string, not valid Unicode / UTF-8 (one line)."""


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


def encode_rows(tokenizer, texts: Sequence[str], max_length: int, pairs: Sequence[str] | None = None) -> Rows:
    """Tokenize ``texts`` (and their ``pairs``; all checked with :func:`check_text`) by the rules above, unpadded.

    One tokenizer pass per text, on the Rust tokenizer itself: content tokens, then the tokenizer's own
    truncation (``Encoding.truncate``, by :func:`pair_lengths` for pairs) and special tokens
    (``post_process``), which is what a truncating ``tokenizer(texts, pairs, ...)`` call does, except that it
    also tells which rows were cut."""
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
        for encoding, length in zip((first, second), keep):
            encoding.truncate(length)
        row = backend.post_process(first, second, True)
        rows.ids.append(row.ids)
        rows.tokens.append(list(row.tokens))
        if rows.type_ids is not None:
            rows.type_ids.append(row.type_ids)
    return rows


def encode(tokenizer, texts: Sequence[str], max_length: int, pad_to_multiple_of: int = 1,
           pairs: Sequence[str] | None = None) -> Encoded:
    """:func:`encode_rows`, padded: int32 arrays of the longest row, rounded up to ``pad_to_multiple_of`` and
    never past ``max_length``."""
    rows = encode_rows(tokenizer, texts, max_length, pairs)
    longest = max(len(ids) for ids in rows.ids)
    multiple = max(1, int(pad_to_multiple_of))
    seq = min(-(-longest // multiple) * multiple, max(max_length, longest))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(rows.ids), seq), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows.ids), seq), dtype=np.int32)
    token_type_ids = None if rows.type_ids is None else np.zeros((len(rows.ids), seq), dtype=np.int32)
    for i, ids in enumerate(rows.ids):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        if token_type_ids is not None:
            token_type_ids[i, : len(ids)] = rows.type_ids[i]
    return Encoded(input_ids, attention_mask, rows.tokens, rows.truncated, rows.empty, token_type_ids)
