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
  ``AdaplerError`` naming the text's index (counted from 0). ``classify`` then returns nothing;
  ``classify_iter`` has yielded the results of some texts before it (never one after it).
* **Many texts** (:meth:`TextClassifier.classify_iter`; ``classify`` is the same, as a list): read lazily,
  ``window`` texts ahead of the oldest one without a result, classified ``batch_size`` at a time, each batch
  made of texts of about the same length (the oldest unclassified text and its nearest in length within the
  window), so little padding is computed; each result is yielded as soon as it and every result before it
  are known, in input order. Memory is bounded by the window and the batch, never by the input. A row's result
  does not depend on the rows batched with it beyond floating-point noise (padding is masked; the link's
  threshold is per row): ``tests/test_streaming.py`` pins it.
* **Kept tokens** (the rationale): ``kept_positions[k]`` = the original positions that link *k* kept,
  i.e. the wordpieces entering encoder layer *k* (docs/INTERFACES.md); ``kept_tokens[k]`` = those
  wordpieces. Both are lists with one list per link, in the object, in ``as_dict()`` and in the Triton
  model's ``RATIONALE`` JSON alike.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..artifact import open_artifact
from ..errors import AdaplerError
from .tokenization import Rows, TextInputError, check_text, encode_rows, load_tokenizer, pad_id, pad_rows

DEFAULT_BATCH_SIZE = 32  # texts per backend call (`predict --batch-size`)
WINDOW_BATCHES = 32  # the default window: this many batches of texts read ahead (1,024 texts at batch 32)


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


def kept_positions_for_row(kept: Sequence, row: int, n_tokens: int) -> list:
    """Per link: the positions row ``row`` kept (padding's -1 left out); ``kept``: each link's positions
    [B, S'_k], as arrays or as nested lists (``tolist()`` once per batch is cheaper than per row)."""
    out = []
    for k, positions in enumerate(kept):
        row_positions = [int(p) for p in positions[row] if p >= 0]
        if any(p >= n_tokens for p in row_positions):
            raise AdaplerError(f"link {k} kept a position past row {row}'s {n_tokens} tokens: {row_positions}")
        out.append(row_positions)
    return out


class TextClassifier:
    """Tokenizer + adaptive backend of one build artifact.

    ``backend``: an opened backend (``run(input_ids, attention_mask) -> BackendOutput``) to use instead of
    opening one; ``backend_factory``: a function with ``backends.load_backend``'s signature (default: that
    function) called with ``backend_kind`` and ``log``, and ``threads`` where given (ONNX Runtime's intra-op
    threads; default: every core).

    >>> classifier = TextClassifier("sst2-fp32")  # doctest: +SKIP
    >>> lines = (line.rstrip("\\n") for line in open("texts.txt", encoding="utf-8"))  # doctest: +SKIP
    >>> for prediction in classifier.classify_iter(lines, batch_size=32):  # doctest: +SKIP
    ...     print(prediction.label, prediction.probabilities)
    """

    def __init__(self, artifact, *, backend=None, backend_kind: str = "auto",
                 backend_factory: Callable | None = None, log: Callable[[str], None] | None = None,
                 check_files: bool = True, pad_to_multiple_of: int = 1, threads: int | None = None):
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
            options = {} if threads is None else {"threads": threads}
            backend = backend_factory(self.artifact_dir, kind=backend_kind, log=log, check_files=False, **options)
        self.backend = backend

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 batch_size: int = DEFAULT_BATCH_SIZE, window: int | None = None) -> list:
        """One :class:`Prediction` per text (per sentence pair: ``pairs`` holds the second texts), in order:
        :meth:`classify_iter`'s, as a list."""
        if isinstance(texts, (str, bytes)) or isinstance(pairs, (str, bytes)):
            raise AdaplerError("classify() takes a list of texts, not one string")
        if self.text_pair and pairs is None:
            raise AdaplerError(f"artifact {self.artifact_dir} classifies sentence pairs (task {self.manifest.task}): "
                               "pass the second text of each pair")
        if not self.text_pair and pairs is not None:
            raise AdaplerError(f"artifact {self.artifact_dir} classifies single texts (task {self.manifest.task}): "
                               "it takes no second text")
        if pairs is not None:
            texts, pairs = list(texts), list(pairs)
            if len(pairs) != len(texts):
                raise AdaplerError(f"{len(texts)} texts but {len(pairs)} pairs: every text needs its pair")
        inputs = texts if pairs is None else zip(texts, pairs)
        return list(self.classify_iter(inputs, batch_size=batch_size, window=window))

    def classify_iter(self, inputs: Iterable, *, batch_size: int = DEFAULT_BATCH_SIZE,
                      window: int | None = None) -> Iterator[Prediction]:
        """One :class:`Prediction` per input, in input order, each as soon as it (and every one before it) is
        known. ``inputs``: texts (``str``), or for a sentence-pair artifact ``(text, pair)`` tuples; any
        iterable, read lazily: at most ``window`` inputs (default ``WINDOW_BATCHES * batch_size``; at least
        ``batch_size``) are read ahead of the oldest one not yet yielded. Texts run ``batch_size`` at a time,
        each batch of texts of about the same length (the module docstring's "Many texts")."""
        if isinstance(inputs, (str, bytes)):
            raise AdaplerError("classify_iter() takes an iterable of texts, not one string")
        for name, value in (("batch_size", batch_size), ("window", window)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise AdaplerError(f"{name} must be an integer >= 1, got {value!r}")
        window = WINDOW_BATCHES * batch_size if window is None else window
        if window < batch_size:
            raise AdaplerError(f"window ({window}) must hold at least one batch ({batch_size})")
        return self._stream(iter(inputs), batch_size, window)

    def _stream(self, inputs: Iterator, batch_size: int, window: int) -> Iterator[Prediction]:
        # Every input from `head` (the oldest not yet yielded) up to `read` is either waiting (`rows`, and its
        # index in `by_length`, oldest first) or classified (`done`): never more than `window` of them.
        rows, done, by_length = {}, {}, collections.defaultdict(collections.deque)
        head = read = 0
        exhausted = False
        while True:
            if not exhausted and read < head + window:
                chunk = list(itertools.islice(inputs, head + window - read))
                exhausted = read + len(chunk) < head + window
                for index, row in zip(itertools.count(read), self._encode(chunk, read)):
                    rows[index] = row
                    by_length[len(row[0])].append(index)
                read += len(chunk)
            if not rows:
                return
            batch = self._batch_around(head, rows, by_length, batch_size)
            done.update(zip(batch, self._run([rows.pop(index) for index in batch])))
            while head in done:
                yield done.pop(head)
                head += 1

    @staticmethod
    def _batch_around(head: int, rows: dict, by_length: dict, batch_size: int) -> list:
        """The oldest waiting input (``head``) and the waiting inputs nearest to it in length (a shorter one
        before a longer one at the same distance: it adds no padding), up to ``batch_size``, taken out of
        ``by_length``."""
        length = len(rows[head][0])
        batch = []
        for distance in range(max(by_length) + 1):
            for candidate in (length - distance, length + distance) if distance else (length,):
                waiting = by_length.get(candidate)
                while waiting and len(batch) < batch_size:
                    batch.append(waiting.popleft())
                if waiting is not None and not waiting:
                    del by_length[candidate]
            if len(batch) == batch_size or not by_length:
                break
        return batch

    def _encode(self, chunk: list, first_index: int) -> list:
        """(ids, type ids, tokens, truncated, empty) per input of ``chunk`` (``first_index``: the first's index,
        for the errors)."""
        if not chunk:
            return []
        texts, pairs = [], [] if self.text_pair else None
        for index, item in enumerate(chunk, start=first_index):
            if self.text_pair:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise AdaplerError(f"input {index}: artifact {self.artifact_dir} classifies sentence pairs "
                                       f"(task {self.manifest.task}): give (text, pair) tuples")
                text, pair = item
                pairs.append(self._checked(pair, index, "pair"))
            elif isinstance(item, (tuple, list)):
                raise AdaplerError(f"input {index} is a {type(item).__name__}: artifact {self.artifact_dir} "
                                   f"classifies single texts (task {self.manifest.task})")
            else:
                text = item
            texts.append(self._checked(text, index, "text"))
        try:
            encoded = encode_rows(self.tokenizer, texts, self.max_length, pairs, truncation=self.truncation)
        except TextInputError as exc:
            raise AdaplerError(str(exc)) from None
        type_ids = encoded.type_ids or [None] * len(texts)
        return list(zip(encoded.ids, type_ids, encoded.tokens, encoded.truncated, encoded.empty))

    @staticmethod
    def _checked(text, index: int, what: str) -> str:
        try:
            return check_text(text, index, what)
        except TextInputError as exc:
            raise AdaplerError(str(exc)) from None

    def _run(self, batch: list) -> list:
        """The predictions of ``batch`` (``_encode``'s rows), in one backend call."""
        ids, type_ids, tokens, truncated, empty = (list(column) for column in zip(*batch))
        enc = pad_rows(Rows(ids, None if type_ids[0] is None else type_ids, tokens, truncated, empty),
                       self.max_length, pad_id(self.tokenizer), self.pad_to_multiple_of)
        out = self.backend.run(*enc.model_inputs())
        logits = np.asarray(out.logits, dtype=np.float32)
        if logits.shape != (len(batch), len(self.labels)):
            raise AdaplerError(f"backend {self.backend_name} returned logits of shape {logits.shape} for "
                               f"{len(batch)} texts and {len(self.labels)} labels")
        probabilities = softmax(logits)
        kept = [np.asarray(positions).tolist() for positions in out.kept]
        predictions = []
        for i in range(len(batch)):
            label_id = int(np.argmax(logits[i]))
            predictions.append(Prediction(
                label=self.labels[label_id], label_id=label_id, probabilities=probabilities[i], logits=logits[i],
                tokens=tokens[i], kept_positions=kept_positions_for_row(kept, i, len(tokens[i])),
                truncated=truncated[i], empty_input=empty[i]))
        return predictions
