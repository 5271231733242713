"""Triton Python-backend model ``adapler_text``: text in; label, probabilities, flags, kept tokens out.

This file is a *template*: :func:`adapler_export.serving.repository.write_model_repository` copies it to
``<repo>/adapler_text/1/model.py``. It runs inside Triton's Python-backend stub and needs ``numpy``,
``transformers``, ``onnxruntime`` and the ``adapler_export`` package importable there; nothing on its
import path imports torch (``tokenization.py`` says why the tokenizer is read without ``AutoTokenizer``).

Config parameters (``config.pbtxt``, all strings):
  ``artifact_dir``    the build artifact; relative paths are relative to this version folder
                      (``artifact`` = the copy written beside this file).
  ``backend_kind``    passed to ``adapler_export.backends.load_backend`` (``auto``: TensorRT segments where a
                      GPU and engines exist, else the one graph ``onnx/model.onnx`` in one ONNX Runtime
                      session, ``onnxruntime-graph``; the choice and its reason are logged).
  ``python_path``     ``os.pathsep``-separated folders put in front of ``sys.path`` (the folder holding
                      ``adapler_export`` when it is not installed: the stub ignores ``PYTHONPATH``); the
                      folders of ``$ADAPLER_PYTHONPATH`` are added too.
  ``backend_factory`` optional ``module:function`` with ``load_backend``'s signature, used instead of it.

Tensors: ``serving/contract.py`` (``TEXT``, and ``TEXT_PAIR`` for a sentence-pair artifact). Per request (one
request may carry several rows, and the dynamic batcher joins requests):
  * undecodable (non-UTF-8) ``TEXT`` / ``TEXT_PAIR``, or a ``TEXT_PAIR`` of another row count than ``TEXT``
    -> that request alone gets an ``INVALID_ARG`` error;
  * over-long text -> truncated to ``max_length`` wordpieces by the artifact's rule (``manifest.truncation``:
    ``head`` or ``head+tail``), warning logged, ``TRUNCATED`` true;
  * empty or whitespace-only text -> classified as ``[CLS] [SEP]``, ``EMPTY_INPUT`` true;
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


def _error(message, code):
    if hasattr(pb_utils.TritonError, code):
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
            module, _, function = params["backend_factory"].partition(":")
            factory = getattr(importlib.import_module(module), function)

        from adapler_export.serving import contract
        from adapler_export.serving.runtime import TextClassifier
        from adapler_export.serving.tokenization import TextInputError, decode_columns

        self.contract, self.decode_columns, self.input_error = contract, decode_columns, TextInputError
        self.classifier = TextClassifier(
            artifact,
            backend_kind=params.get("backend_kind") or "auto",
            backend_factory=factory,
            log=lambda message: pb_utils.Logger.log_info(f"adapler_text: {message}"),
            pad_to_multiple_of=int(params.get("pad_to_multiple_of") or 1),
        )
        pb_utils.Logger.log_info(
            f"adapler_text: artifact {self.classifier.artifact_dir}, backend {self.classifier.backend_name}, "
            f"max_length {self.classifier.max_length} ({self.classifier.truncation}), labels {self.classifier.labels}"
        )

    # -- helpers --------------------------------------------------------------------------------------
    def _decode(self, request):
        """The request's texts: one list per input of ``contract.text_inputs`` (TEXT, and TEXT_PAIR for pairs)."""
        return self.decode_columns(lambda name: pb_utils.get_input_tensor_by_name(request, name),
                                   self.contract.text_inputs(self.classifier.text_pair))

    def _response(self, predictions):
        def column(values, dtype):
            return np.array([[v] for v in values], dtype=dtype)

        c = self.contract
        tensors = {
            "LABEL": column([p.label.encode("utf-8") for p in predictions], np.object_),
            "LABEL_ID": column([p.label_id for p in predictions], np.int32),
            "PROBABILITIES": np.stack([p.probabilities for p in predictions]).astype(np.float32),
            c.TRUNCATED: column([p.truncated for p in predictions], np.bool_),
            c.EMPTY_INPUT: column([p.empty_input for p in predictions], np.bool_),
            c.RATIONALE: column([p.rationale_json().encode("utf-8") for p in predictions], np.object_),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, tensors[name])
                                                          for name in c.TEXT_OUTPUTS])

    def _classify(self, columns):
        """Predictions for ``columns`` (the texts, and their pairs for a sentence-pair artifact)."""
        predictions = self.classifier.classify(*columns)
        for text, p in zip(columns[0], predictions):
            if p.truncated:
                pb_utils.Logger.log_warn(f"adapler_text: input of {len(text)} characters truncated to "
                                         f"{self.classifier.max_length} wordpieces ({self.classifier.truncation})")
        return predictions

    def _failure(self, texts):
        trace = traceback.format_exc(limit=3)
        pb_utils.Logger.log_error(f"adapler_text: inference failed for {len(texts)} text(s): {trace}")
        return pb_utils.InferenceResponse(
            error=_error(f"inference failed: {trace.strip().splitlines()[-1]}", "INTERNAL"))

    # -- Triton entry points --------------------------------------------------------------------------
    def execute(self, requests):
        responses = [None] * len(requests)
        batch, spans = None, []  # joined columns of the good requests, and (request index, start, end)
        for r, request in enumerate(requests):
            try:
                columns = self._decode(request)
            except self.input_error as e:
                responses[r] = pb_utils.InferenceResponse(error=_error(str(e), "INVALID_ARG"))
                continue
            batch = batch or [[] for _ in columns]
            spans.append((r, len(batch[0]), len(batch[0]) + len(columns[0])))
            for joined, column in zip(batch, columns):
                joined += column
        if not batch:
            return responses
        try:
            predictions = self._classify(batch)
            for r, a, b in spans:
                responses[r] = self._response(predictions[a:b])
        except Exception:  # noqa: BLE001 - isolate the failing request(s): retry each alone
            for r, a, b in spans:
                alone = [column[a:b] for column in batch]
                try:
                    responses[r] = self._response(self._classify(alone))
                except Exception:  # noqa: BLE001
                    responses[r] = self._failure(alone[0])
        return responses

    def finalize(self):
        if getattr(self, "classifier", None) is not None:
            self.classifier.close()
            self.classifier = None
