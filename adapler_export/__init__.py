"""adapler-export: AdapLeR text classifiers from PyTorch training to ONNX, TensorRT and Triton.

What a Python user classifying texts needs, from the top level::

    from adapler_export import TextClassifier

    classifier = TextClassifier("sst2-fp32")  # a build artifact: a path, or a name under $ADAPLER_HOME
    for prediction in classifier.classify_iter(texts, batch_size=32):  # any iterable, read lazily
        print(prediction.label, prediction.probabilities)

The names are imported when first used (PEP 562), so `import adapler_export` (every command line run) stays
light: the classifier's modules load only for a program that asks for them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "TextClassifier": "adapler_export.serving.runtime",  # artifact -> predictions (classify, classify_iter)
    "Prediction": "adapler_export.serving.runtime",  # label, probabilities, tokens, kept positions per link
    "DEFAULT_BATCH_SIZE": "adapler_export.serving.runtime",
    "iter_inputs": "adapler_export.data",  # a texts file (or "-", standard input) read lazily, as predict reads it
    "explain": "adapler_export.rationale",  # a prediction -> how many layers read each token
    "AdaplerError": "adapler_export.errors",  # every user error: one line
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adapler_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
