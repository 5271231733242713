"""Text in, label / probabilities / kept tokens out: what the ``adapler_text`` Triton model runs.

Kept in the library (not in the Triton ``model.py``) so it can be used and tested without a server.

Documented behaviour
--------------------
* **Empty string**: tokenized as ``[CLS] [SEP]`` and classified like any other input (the result is the
  model's prior for "no evidence"; ``kept_tokens`` lists just ``[CLS]``/``[SEP]``).
* **Over-long text**: cut to the artifact's ``max_length`` wordpieces (``[CLS]`` + the first
  ``max_length - 2`` wordpieces + ``[SEP]``, i.e. the tokenizer's own truncation), flagged with
  ``"truncated": true`` in the kept-tokens JSON; the Triton model also logs a warning. Texts longer than
  :data:`MAX_TEXT_CHARS` characters are first cut to that many characters (a bound on tokenizer work;
  far beyond what ``max_length`` wordpieces can cover).
* **Kept tokens** (the rationale): ``kept[k]`` of the backend = the original positions that link *k*
  kept, i.e. the tokens that enter encoder layer *k* (``docs/INTERFACES.md``). The JSON per text is
  ``{"tokens": [all wordpieces], "kept_positions": [[...] per link], "kept_tokens": [[...] per link],
  "truncated": bool}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

LOGGER = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1 << 20  # 1 Mi characters
DEFAULT_MAX_LENGTH = 128


def read_manifest(artifact_dir: str | pathlib.Path) -> dict:
    path = pathlib.Path(artifact_dir) / "manifest.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def manifest_labels(manifest: dict) -> list[str] | None:
    """Label names in id order, from ``labels`` (list, or {id: name} / {name: id} dict), ``id2label`` or
    ``task.labels``. ``None`` when the manifest does not say."""
    cands = [manifest.get("labels"), manifest.get("id2label")]
    task = manifest.get("task")
    if isinstance(task, dict):
        cands += [task.get("labels"), task.get("id2label")]
    for labels in cands:
        if isinstance(labels, (list, tuple)) and labels:
            return [str(x) for x in labels]
        if isinstance(labels, dict) and labels:
            items = list(labels.items())
            if all(str(k).lstrip("-").isdigit() for k, _ in items):
                return [str(v) for _, v in sorted(items, key=lambda kv: int(kv[0]))]
            if all(isinstance(v, int) for _, v in items):
                return [str(k) for k, _ in sorted(items, key=lambda kv: kv[1])]
    n = manifest.get("num_labels")
    if isinstance(n, int) and n > 0:
        return [f"LABEL_{i}" for i in range(n)]
    return None


def manifest_max_length(manifest: dict, tokenizer: Any = None) -> int:
    for key in ("max_length", "max_seq_length", "max_seq_len"):
        v = manifest.get(key)
        if isinstance(v, int) and v > 0:
            return v
    tok = manifest.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("max_length"), int):
        return tok["max_length"]
    m = getattr(tokenizer, "model_max_length", None)
    if isinstance(m, int) and 0 < m <= 4096:
        return m
    return DEFAULT_MAX_LENGTH


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Encoded:
    input_ids: np.ndarray  # [B, S] int32
    attention_mask: np.ndarray  # [B, S] int32
    tokens: list[list[str]]  # wordpieces per row (no padding)
    truncated: list[bool]


@dataclasses.dataclass
class Prediction:
    label: str
    label_id: int
    probabilities: np.ndarray  # [C] float32
    logits: np.ndarray  # [C] float32
    tokens: list[str]
    kept_positions: list[list[int]]
    truncated: bool

    @property
    def kept_tokens(self) -> list[list[str]]:
        return [[self.tokens[p] for p in layer] for layer in self.kept_positions]

    def rationale(self) -> dict:
        return {
            "tokens": self.tokens,
            "kept_positions": self.kept_positions,
            "kept_tokens": self.kept_tokens,
            "truncated": self.truncated,
        }

    def rationale_json(self) -> str:
        return json.dumps(self.rationale(), ensure_ascii=False)

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "label_id": self.label_id,
            "probabilities": [float(p) for p in self.probabilities],
            "kept_tokens": self.rationale(),
        }


def load_tokenizer(artifact_dir: str | pathlib.Path):
    from transformers import AutoTokenizer

    path = pathlib.Path(artifact_dir) / "tokenizer"
    if not path.is_dir():
        raise FileNotFoundError(f"artifact {artifact_dir} has no tokenizer/ folder")
    return AutoTokenizer.from_pretrained(str(path))


def encode(tokenizer, texts: Sequence[str], max_length: int, pad_to_multiple_of: int = 1) -> Encoded:
    """Tokenize with ``[CLS] … [SEP]``, truncate to ``max_length``, pad to the longest row (rounded up to
    ``pad_to_multiple_of``, never past ``max_length``). int32 outputs, as the segments take."""
    texts = [t[:MAX_TEXT_CHARS] for t in texts]
    if not texts:
        raise ValueError("encode() needs at least one text")
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False, padding=False, verbose=False)["input_ids"]
    truncated = [len(ids) > max_length for ids in full]
    if any(truncated):
        idx = [i for i, t in enumerate(truncated) if t]
        cut = tokenizer([texts[i] for i in idx], add_special_tokens=True, truncation=True,
                        max_length=max_length, padding=False)["input_ids"]
        for i, ids in zip(idx, cut):
            full[i] = ids
    longest = max(len(ids) for ids in full)
    m = max(1, int(pad_to_multiple_of))
    seq = min(max(longest, -(-longest // m) * m), max(max_length, longest))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(full), seq), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(full), seq), dtype=np.int32)
    for i, ids in enumerate(full):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in full]
    return Encoded(input_ids, attention_mask, tokens, truncated)


def kept_positions_for_row(kept: Sequence[np.ndarray], row: int, n_tokens: int) -> list[list[int]]:
    out = []
    for k, arr in enumerate(kept):
        arr = np.asarray(arr)
        pos = [int(p) for p in arr[row].tolist() if p >= 0]
        if any(p >= n_tokens for p in pos):
            raise ValueError(f"link {k} kept position out of range for row {row}: {pos} (n={n_tokens})")
        out.append(pos)
    return out


class TextClassifier:
    """Tokenizer + adaptive backend of one build artifact.

    ``backend``: an object with ``run(input_ids, attention_mask) -> BackendOutput(logits, kept)``;
    default ``adapler_export.backends.load_backend(artifact_dir, kind=backend_kind)``.
    """

    def __init__(
        self,
        artifact_dir: str | pathlib.Path,
        *,
        backend: Any = None,
        backend_kind: str = "auto",
        backend_factory: Callable[..., Any] | None = None,
        pad_to_multiple_of: int = 1,
    ):
        self.artifact_dir = pathlib.Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        self.tokenizer = load_tokenizer(self.artifact_dir)
        self.max_length = manifest_max_length(self.manifest, self.tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of
        if backend is None:
            if backend_factory is None:
                from adapler_export.backends import load_backend as backend_factory  # noqa: N813
            backend = backend_factory(str(self.artifact_dir), kind=backend_kind)
        self.backend = backend
        self.labels = manifest_labels(self.manifest)

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    def label_name(self, i: int) -> str:
        if self.labels and 0 <= i < len(self.labels):
            return self.labels[i]
        return f"LABEL_{i}"

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if len(texts) == 0:
            return []
        enc = encode(self.tokenizer, texts, self.max_length, self.pad_to_multiple_of)
        out = self.backend.run(enc.input_ids, enc.attention_mask)
        logits = np.asarray(out.logits, dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(texts):
            raise RuntimeError(f"backend returned logits of shape {logits.shape} for {len(texts)} texts")
        probs = softmax(logits)
        preds = []
        for i in range(len(texts)):
            label_id = int(np.argmax(logits[i]))
            preds.append(
                Prediction(
                    label=self.label_name(label_id),
                    label_id=label_id,
                    probabilities=probs[i],
                    logits=logits[i],
                    tokens=enc.tokens[i],
                    kept_positions=kept_positions_for_row(out.kept, i, len(enc.tokens[i])),
                    truncated=enc.truncated[i],
                )
            )
        return preds
