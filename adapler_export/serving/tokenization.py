"""Text to token ids, once, for the library classifier and both Triton Python models.

Standalone on purpose (numpy and transformers only, nothing from ``adapler_export``): the repository
writer copies this file beside the ``adapler_tokenizer`` model, the front of the TensorRT ensemble, which
runs in a Triton container where the project need not be installed.

The tokenizer is read with ``PreTrainedTokenizerFast`` from the artifact's ``tokenizer.json`` (what
``save_pretrained`` writes for every fast tokenizer): ``AutoTokenizer`` would import torch to read a model
configuration, and a serving process has no use for torch.

Rules (documented for users in ``runtime.py``):
* ``[CLS] … [SEP]``, cut to ``max_length`` wordpieces by the tokenizer's own truncation (``truncated``);
  texts are first cut to :data:`MAX_TEXT_CHARS` characters, a bound on tokenizer work far beyond what
  ``max_length`` wordpieces cover.
* ``empty``: the text holds no token (empty, whitespace, or only characters the tokenizer drops such as
  control characters); it is still encoded (``[CLS] [SEP]``) so that result N is text N.
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
class Encoded:
    input_ids: np.ndarray  # [B, S] int32
    attention_mask: np.ndarray  # [B, S] int32
    tokens: list  # wordpieces per row (no padding)
    truncated: list  # bool per row
    empty: list  # bool per row


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


def check_text(text, index: int) -> str:
    """``text`` cut to MAX_TEXT_CHARS, or TextInputError: not a str, or a lone surrogate (no UTF-8 form)."""
    if not isinstance(text, str):
        raise TextInputError(f"text {index} is {type(text).__name__}, not str")
    text = text[:MAX_TEXT_CHARS]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextInputError(f"text {index} is not valid Unicode: lone surrogate {ascii(text[exc.start])} at "
                             f"character {exc.start}") from None
    return text


def decode_texts(array) -> list:
    """The rows of a Triton BYTES tensor as str (TextInputError naming the first undecodable element)."""
    texts = []
    for index, item in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, (bytes, bytearray, np.bytes_)):
            raise TextInputError(f"TEXT[{index}] is {type(item).__name__}, expected UTF-8 bytes")
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TextInputError(f"TEXT[{index}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not texts:
        raise TextInputError("TEXT holds no element")
    return texts


def encode(tokenizer, texts: Sequence[str], max_length: int, pad_to_multiple_of: int = 1) -> Encoded:
    """Tokenize ``texts`` (checked with :func:`check_text`) by the rules above.

    One tokenizer pass per text, on the Rust tokenizer itself: content tokens, then the tokenizer's own
    truncation (``Encoding.truncate``) and special tokens (``post_process``), which is what a truncating
    ``tokenizer(...)`` call does, except that it also tells which texts were cut."""
    texts = [check_text(text, i) for i, text in enumerate(texts)]
    if not texts:
        raise TextInputError("encode() needs at least one text")
    backend = tokenizer.backend_tokenizer
    budget = max_length - backend.num_special_tokens_to_add(False)
    rows, truncated, empty = [], [], []
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        empty.append(len(encoding.ids) == 0)
        truncated.append(len(encoding.ids) > budget)
        if truncated[-1]:
            encoding.truncate(budget)
        rows.append(backend.post_process(encoding, None, True))
    longest = max(len(row.ids) for row in rows)
    multiple = max(1, int(pad_to_multiple_of))
    seq = min(-(-longest // multiple) * multiple, max(max_length, longest))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(rows), seq), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), seq), dtype=np.int32)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.ids)] = row.ids
        attention_mask[i, : len(row.ids)] = 1
    return Encoded(input_ids, attention_mask, [list(row.tokens) for row in rows], truncated, empty)
