"""Triton Python-backend model ``adapler_text``: text in; label, probabilities, kept tokens out.

This file is a *template*: :func:`adapler_export.serving.repository.write_model_repository` copies it to
``<repo>/adapler_text/1/model.py``. It runs inside Triton's Python-backend stub and needs ``numpy``,
``transformers`` and the ``adapler_export`` package importable there.

Config parameters (``config.pbtxt``, all strings):
  ``artifact_dir``   the build artifact; relative paths are relative to this version folder
                     (``artifact`` = the copy written beside this file).
  ``backend_kind``   passed to ``adapler_export.backends.load_backend`` (``auto``: ONNX Runtime on CPU,
                     TensorRT segments where a GPU and engines exist).
  ``python_path``    ``os.pathsep``-separated folders put in front of ``sys.path`` (the folder holding
                     ``adapler_export`` when it is not installed: the stub ignores ``PYTHONPATH``).
  ``backend_factory`` optional ``module:function`` replacing ``load_backend`` (tests).

Per request (one request may carry several rows, and the dynamic batcher joins requests):
  * undecodable (non-UTF-8) ``TEXT`` -> that request alone gets an ``INVALID_ARG`` error;
  * over-long text -> truncated to ``max_length`` wordpieces, warning logged, ``"truncated": true``;
  * empty string -> classified as ``[CLS] [SEP]`` (documented result);
  * a backend failure on the joined batch -> each request is retried alone, so one bad request cannot
    fail the others; the model instance stays up.
"""

import importlib
import json
import os
import sys
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils


def _extend_sys_path(extra):
    entries = []
    for chunk in (extra or "", os.environ.get("ADAPLER_PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")):
        entries += [p for p in chunk.split(os.pathsep) if p]
    for p in reversed(entries):
        if p not in sys.path:
            sys.path.insert(0, p)


def _error(message, code=None):
    if code is not None and hasattr(pb_utils.TritonError, code):
        return pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))
    return pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        _extend_sys_path(params.get("python_path"))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        artifact = params.get("artifact_dir") or "artifact"
        if not os.path.isabs(artifact):
            artifact = os.path.join(version_dir, artifact)
        factory = None
        if params.get("backend_factory"):
            mod, _, fn = params["backend_factory"].partition(":")
            factory = getattr(importlib.import_module(mod), fn)

        from adapler_export.serving.runtime import TextClassifier

        self.classifier = TextClassifier(
            artifact,
            backend_kind=params.get("backend_kind") or "auto",
            backend_factory=factory,
            pad_to_multiple_of=int(params.get("pad_to_multiple_of") or 1),
        )
        self.max_rows = int(self.model_config.get("max_batch_size") or 0)
        pb_utils.Logger.log_info(
            f"adapler_text: artifact {artifact}, backend {self.classifier.backend_name}, "
            f"max_length {self.classifier.max_length}, labels {self.classifier.labels}"
        )

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _decode(request):
        tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if tensor is None:
            raise ValueError("missing input TEXT")
        arr = tensor.as_numpy()
        if arr.size == 0:
            raise ValueError("TEXT holds no element")
        texts = []
        for i, item in enumerate(arr.reshape(-1)):
            if isinstance(item, (bytes, bytearray, np.bytes_)):
                try:
                    texts.append(bytes(item).decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ValueError(f"TEXT[{i}] is not valid UTF-8: {e}") from None
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise ValueError(f"TEXT[{i}] has type {type(item).__name__}, expected bytes")
        return texts

    def _responses(self, preds):
        labels = np.array([[p.label.encode("utf-8")] for p in preds], dtype=np.object_)
        label_ids = np.array([[p.label_id] for p in preds], dtype=np.int32)
        probs = np.stack([p.probabilities for p in preds]).astype(np.float32)
        kept = np.array([[p.rationale_json().encode("utf-8")] for p in preds], dtype=np.object_)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("LABEL", labels),
                pb_utils.Tensor("LABEL_ID", label_ids),
                pb_utils.Tensor("PROBABILITIES", probs),
                pb_utils.Tensor("KEPT_TOKENS", kept),
            ]
        )

    def _classify(self, texts):
        preds = self.classifier.classify(texts)
        for i, p in enumerate(preds):
            if p.truncated:
                pb_utils.Logger.log_warn(
                    f"adapler_text: input of {len(texts[i])} characters truncated to "
                    f"{self.classifier.max_length} wordpieces"
                )
        return preds

    # -- Triton entry points --------------------------------------------------------------------------
    def execute(self, requests):
        responses = [None] * len(requests)
        batch, spans = [], []  # joined texts of the good requests, and (request index, start, end)
        for r, request in enumerate(requests):
            try:
                texts = self._decode(request)
            except ValueError as e:
                responses[r] = pb_utils.InferenceResponse(error=_error(str(e), "INVALID_ARG"))
                continue
            spans.append((r, len(batch), len(batch) + len(texts)))
            batch += texts
        if batch:
            try:
                preds = self._classify(batch)
                for r, a, b in spans:
                    responses[r] = self._responses(preds[a:b])
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                if len(spans) == 1:
                    r, a, b = spans[0]
                    responses[r] = self._failure(batch[a:b])
                else:
                    for r, a, b in spans:
                        try:
                            responses[r] = self._responses(self._classify(batch[a:b]))
                        except Exception:  # noqa: BLE001
                            responses[r] = self._failure(batch[a:b])
        return responses

    def _failure(self, texts):
        msg = traceback.format_exc(limit=3)
        pb_utils.Logger.log_error(f"adapler_text: inference failed for {len(texts)} text(s): {msg}")
        return pb_utils.InferenceResponse(error=_error(f"inference failed: {msg.strip().splitlines()[-1]}", "INTERNAL"))

    def finalize(self):
        self.classifier = None
