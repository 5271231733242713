"""The library text classifier: text in; label, probabilities, kept tokens out.

`adapler-export predict` and the Triton model ``adapler_text`` both run :class:`TextClassifier`, so a
served prediction is the library's prediction.

Documented behaviour
--------------------
* **Artifact**: opened with ``artifact.open_artifact`` (a path, or a bare name under the cache; files
  checked against their recorded digests), the backend with ``backends.load_backend`` (``auto`` says
  through ``log`` what it chose and why).
* **Empty input** (empty, whitespace only, or only characters the tokenizer drops, such as control
  characters): encoded as ``[CLS] [SEP]`` and classified so that result N is text N, and flagged with
  ``empty_input = True``: its label is the model's prior for no evidence, not a reading of the text.
* **Over-long text**: cut to the artifact's ``max_length`` wordpieces by the rule the model was trained with
  (``manifest.truncation``, ``truncation`` here): ``head``, ``[CLS]`` + the first ``max_length - 2``
  wordpieces + ``[SEP]`` (the tokenizer's own truncation); ``head+tail``, ``[CLS]`` + the first quarter and
  the last three quarters of those ``max_length - 2`` + ``[SEP]`` (``tokenization.py`` says why); flagged
  ``truncated = True``.
* **Sentence pairs** (artifacts of a pair task, ``manifest.text_pair``: MRPC, RTE): ``classify(texts, pairs)``
  with one second text per text, encoded ``[CLS] text [SEP] pair [SEP]`` with token types 0 / 1; an over-long
  pair is cut by Hugging Face's default ``longest_first`` rule (the longer text gives up wordpieces first).
  ``tokens`` and the kept positions cover both texts. A pair artifact without pairs, or pairs for a
  single-text artifact, is a one-line ``AdaplerError``.
* **Unusable text** (not a ``str``; a lone surrogate, which has no UTF-8 form): a one-line
  ``AdaplerError`` naming the text's index; nothing of the batch is classified.
* **Kept tokens** (the rationale): ``kept_positions[k]`` = the original positions that link *k* kept,
  i.e. the wordpieces entering encoder layer *k* (docs/INTERFACES.md); ``kept_tokens[k]`` = those
  wordpieces. Both are lists with one list per link, in the object, in ``as_dict()`` and in the Triton
  model's ``RATIONALE`` JSON alike.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import numpy as np

from ..artifact import open_artifact
from ..errors import AdaplerError
from .tokenization import TextInputError, encode, load_tokenizer


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Prediction:
    label: str
    label_id: int
    probabilities: np.ndarray  # [C] float32
    logits: np.ndarray  # [C] float32
    tokens: list  # every wordpiece of the (possibly truncated) text, [CLS] and [SEP] included
    kept_positions: list  # per link: the positions it kept
    truncated: bool
    empty_input: bool

    @property
    def kept_tokens(self) -> list:
        """Per link: the wordpieces it kept (``kept_positions`` as tokens)."""
        return [[self.tokens[p] for p in layer] for layer in self.kept_positions]

    def rationale(self) -> dict:
        """What the Triton model sends as ``RATIONALE`` JSON."""
        return {"tokens": self.tokens, "kept_positions": self.kept_positions, "kept_tokens": self.kept_tokens}

    def rationale_json(self) -> str:
        return json.dumps(self.rationale(), ensure_ascii=False)

    def as_dict(self) -> dict:
        """The JSON shape of a prediction: the same keys from `predict --json` and `AdaplerClient.classify`."""
        return {"label": self.label, "label_id": self.label_id,
                "probabilities": [float(p) for p in self.probabilities],
                "truncated": self.truncated, "empty_input": self.empty_input, **self.rationale()}


def kept_positions_for_row(kept: Sequence[np.ndarray], row: int, n_tokens: int) -> list:
    out = []
    for k, positions in enumerate(kept):
        row_positions = [int(p) for p in np.asarray(positions)[row].tolist() if p >= 0]
        if any(p >= n_tokens for p in row_positions):
            raise AdaplerError(f"link {k} kept a position past row {row}'s {n_tokens} tokens: {row_positions}")
        out.append(row_positions)
    return out


class TextClassifier:
    """Tokenizer + adaptive backend of one build artifact.

    ``backend``: an opened backend (``run(input_ids, attention_mask) -> BackendOutput``) to use instead of
    opening one; ``backend_factory``: a function with ``backends.load_backend``'s signature (default: that
    function) called with ``backend_kind`` and ``log``.
    """

    def __init__(self, artifact, *, backend=None, backend_kind: str = "auto",
                 backend_factory: Callable | None = None, log: Callable[[str], None] | None = None,
                 check_files: bool = True, pad_to_multiple_of: int = 1):
        self.artifact_dir, self.manifest = open_artifact(artifact, check_files=check_files)
        try:
            self.tokenizer = load_tokenizer(self.artifact_dir / "tokenizer")
        except (OSError, ValueError) as exc:
            raise AdaplerError(f"artifact {self.artifact_dir}: cannot load its tokenizer "
                               f"({str(exc).splitlines()[0]})") from exc
        self.max_length = self.manifest.max_length
        self.truncation = self.manifest.truncation  # how an over-long text is cut (tokenization.TRUNCATIONS)
        self.labels = list(self.manifest.labels)
        self.text_pair = self.manifest.text_pair
        self.pad_to_multiple_of = pad_to_multiple_of
        if backend is None:
            if backend_factory is None:
                from ..backends import load_backend as backend_factory  # noqa: N813
            # open_artifact just checked the files: the factory need not digest them again
            backend = backend_factory(self.artifact_dir, kind=backend_kind, log=log, check_files=False)
        self.backend = backend

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
        """One :class:`Prediction` per text (per sentence pair: ``pairs`` holds the second texts), in order."""
        if isinstance(texts, (str, bytes)) or isinstance(pairs, (str, bytes)):
            raise AdaplerError("classify() takes a list of texts, not one string")
        if self.text_pair and pairs is None:
            raise AdaplerError(f"artifact {self.artifact_dir} classifies sentence pairs (task {self.manifest.task}): "
                               "pass the second text of each pair")
        if not self.text_pair and pairs is not None:
            raise AdaplerError(f"artifact {self.artifact_dir} classifies single texts (task {self.manifest.task}): "
                               "it takes no second text")
        texts = list(texts)
        if not texts:
            return []
        try:
            enc = encode(self.tokenizer, texts, self.max_length, self.pad_to_multiple_of,
                         None if pairs is None else list(pairs), truncation=self.truncation)
        except TextInputError as exc:
            raise AdaplerError(str(exc)) from None
        out = self.backend.run(*enc.model_inputs())
        logits = np.asarray(out.logits, dtype=np.float32)
        if logits.shape != (len(texts), len(self.labels)):
            raise AdaplerError(f"backend {self.backend_name} returned logits of shape {logits.shape} for "
                               f"{len(texts)} texts and {len(self.labels)} labels")
        probabilities = softmax(logits)
        predictions = []
        for i in range(len(texts)):
            label_id = int(np.argmax(logits[i]))
            predictions.append(Prediction(
                label=self.labels[label_id], label_id=label_id, probabilities=probabilities[i], logits=logits[i],
                tokens=enc.tokens[i], kept_positions=kept_positions_for_row(out.kept, i, len(enc.tokens[i])),
                truncated=enc.truncated[i], empty_input=enc.empty[i]))
        return predictions
