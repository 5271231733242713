"""Serving: Triton model repository writer, local tritonserver runner, client and load helpers.

* :class:`TextClassifier` — the library classifier (``predict`` and the Triton model run it):
  :class:`Prediction` with label, probabilities, ``truncated``, ``empty_input`` and kept tokens.
* :func:`write_model_repository` — ``adapler_text`` (Python backend: text -> label, probabilities, flags,
  kept tokens; tensors in ``contract.py``) and, with the single TensorRT engine, ``adapler_plan`` /
  ``adapler_tokenizer`` / ``adapler_ensemble``.
* :class:`TritonServer` — the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel on loopback ports.
* :class:`AdaplerClient` — ``classify(texts)`` over HTTP or gRPC.
* :func:`run_load` — bounded concurrent load: p50/p99 latency, throughput, failures.

Names resolve lazily so that importing the package needs neither tritonclient nor protobuf.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "write_model_repository": "repository",
    "validate_repository": "repository",
    "loadable_models": "repository",
    "RepositoryError": "repository",
    "RepositoryInfo": "repository",
    "TritonServer": "server",
    "TritonServerError": "server",
    "find_triton": "server",
    "AdaplerClient": "client",
    "run_load": "load",
    "LoadResult": "load",
    "TextClassifier": "runtime",
    "Prediction": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
