"""Client helpers for the ``adapler_text`` model and the ensembles, over HTTP or gRPC (``tritonclient``).

>>> with AdaplerClient("127.0.0.1:8000") as c:
...     c.classify(["a gorgeous, witty, seductive movie.", ""])
[{'label': 'positive', 'label_id': 1, 'probabilities': [0.01, 0.99], 'truncated': False, 'empty_input': False,
  'tokens': [...], 'kept_positions': [[...], ...], 'kept_tokens': [[...], ...]},
 {'label': ..., 'empty_input': True, 'tokens': ['[CLS]', '[SEP]'], ...}]

Each result has the keys and meaning of ``runtime.Prediction.as_dict()`` (what `predict --json` prints). A
sentence-pair artifact's models take the second texts too: ``classify(texts, pairs)``, ``run_graph(texts, pairs)``;
``text_pair`` says (from the model's metadata) whether a model does.
The ensembles (``adapler_onnx_ensemble``, ``adapler_ensemble``: tokenizer -> whole-model graph) answer with
the graph's outputs, which ``run_graph`` returns per text: ``{"logits", "kept_positions", "empty_input"}``.
Server-side errors surface as ``tritonclient.utils.InferenceServerException``. Light on purpose:
tritonclient and numpy only.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..specs import LOGITS, kept_output
from .contract import EMPTY_INPUT, RATIONALE, TEXT_INPUT, TEXT_MODEL, TEXT_OUTPUTS, TEXT_PAIR_INPUT, TRUNCATED


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):]
    return url


class AdaplerClient:
    def __init__(self, url: str, protocol: str = "http", model_name: str = TEXT_MODEL, timeout_s: float = 60.0,
                 max_batch: int | None = None):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.url = _strip_scheme(url)
        self.protocol = protocol
        self.model_name = model_name
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as mod

            self._client = mod.InferenceServerClient(self.url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as mod

            self._client = mod.InferenceServerClient(self.url)
        self._mod = mod
        self._max_batch = max_batch
        self._graph_outputs: list | None = None
        self._metadata: dict | None = None

    # -- plumbing --------------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "AdaplerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model_name))
        except Exception:  # noqa: BLE001 - not ready is the answer to any failure here
            return False

    @property
    def max_batch(self) -> int:
        if self._max_batch is None:
            if self.protocol == "http":
                cfg = self._client.get_model_config(self.model_name)
            else:
                cfg = self._client.get_model_config(self.model_name, as_json=True)["config"]
            self._max_batch = int(cfg.get("max_batch_size") or 0) or 1
        return self._max_batch

    def _kwargs(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _text_input(self, name: str, texts_or_array):
        arr = texts_or_array
        if not isinstance(arr, np.ndarray):
            arr = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in arr], dtype=np.object_)
        inp = self._mod.InferInput(name, list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        return inp

    def infer_raw(self, texts_or_array, outputs: Sequence[str] = tuple(TEXT_OUTPUTS), pairs=None) -> dict:
        """One request with exactly the given ``TEXT`` array (and ``TEXT_PAIR``, ``pairs``; no chunking): returns
        ``outputs``."""
        inputs = [self._text_input(TEXT_INPUT, texts_or_array)]
        if pairs is not None:
            inputs.append(self._text_input(TEXT_PAIR_INPUT, pairs))
        outs = [self._mod.InferRequestedOutput(n) for n in outputs]
        res = self._client.infer(self.model_name, inputs, outputs=outs, **self._kwargs())
        return {n: res.as_numpy(n) for n in outputs}

    def _chunks(self, texts: Sequence[str], pairs: Sequence[str] | None = None):
        """(texts, pairs) chunks of the model's max batch (pairs None for single texts)."""
        if isinstance(texts, (str, bytes)) or isinstance(pairs, (str, bytes)):
            raise TypeError("pass a sequence of texts, not one string")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs: every text needs its pair")
        n = self.max_batch
        return ((texts[start:start + n], None if pairs is None else pairs[start:start + n])
                for start in range(0, len(texts), n))

    def metadata(self) -> dict:
        """The model's metadata (``name``, ``inputs``, ``outputs``: each ``{"name", "datatype", "shape"}``), the
        same dict over HTTP and gRPC; asked once."""
        if self._metadata is None:
            if self.protocol == "http":
                self._metadata = self._client.get_model_metadata(self.model_name)
            else:
                self._metadata = self._client.get_model_metadata(self.model_name, as_json=True)
        return self._metadata

    @property
    def text_pair(self) -> bool:
        """Whether the model takes ``TEXT_PAIR`` (a sentence-pair artifact's models: ``classify(texts, pairs)``),
        from its metadata."""
        return any(i["name"] == TEXT_PAIR_INPUT for i in self.metadata()["inputs"])

    def graph_outputs(self) -> list:
        """The model's ``logits`` and ``kept_positions_<k>`` outputs, in link order (from its metadata)."""
        if self._graph_outputs is None:
            names = {o["name"] for o in self.metadata()["outputs"]}
            kept = []
            while kept_output(len(kept)) in names:
                kept.append(kept_output(len(kept)))
            self._graph_outputs = [LOGITS] + kept
        return self._graph_outputs

    # -- API -------------------------------------------------------------------------------------------
    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
        """Classify ``texts`` (with their ``pairs`` for a sentence-pair artifact; chunked to the model's max
        batch): one dict per text, shaped like ``runtime.Prediction.as_dict()``."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("classify() takes a sequence of texts; use classify_one() for one")
        results: list = []
        for chunk, pair_chunk in self._chunks(texts, pairs):
            out = self.infer_raw(chunk, pairs=pair_chunk)
            for i in range(out["LABEL"].shape[0]):
                results.append({
                    "label": out["LABEL"][i, 0].decode("utf-8"),
                    "label_id": int(out["LABEL_ID"][i, 0]),
                    "probabilities": [float(x) for x in out["PROBABILITIES"][i]],
                    "truncated": bool(out[TRUNCATED][i, 0]),
                    "empty_input": bool(out[EMPTY_INPUT][i, 0]),
                    **json.loads(out[RATIONALE][i, 0]),
                })
        return results

    def classify_one(self, text: str) -> dict:
        return self.classify([text])[0]

    def run_graph(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
        """Run an ensemble (``model_name``: tokenizer -> whole-model graph) on ``texts`` (and ``pairs``; chunked
        to its max batch): per text ``{"logits": [C floats], "kept_positions": [[positions link k kept] per
        link], "empty_input": bool}``, the -1 padding of the kept positions removed."""
        logits_name, *kept_names = names = self.graph_outputs()
        results: list = []
        for chunk, pair_chunk in self._chunks(texts, pairs):
            out = self.infer_raw(chunk, names + [EMPTY_INPUT], pairs=pair_chunk)
            for i in range(out[logits_name].shape[0]):
                results.append({
                    "logits": [float(x) for x in out[logits_name][i]],
                    "kept_positions": [[int(p) for p in out[name][i] if p >= 0] for name in kept_names],
                    "empty_input": bool(out[EMPTY_INPUT][i, 0]),
                })
        return results
