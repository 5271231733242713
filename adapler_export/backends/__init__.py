"""Backends: runners with one interface, the polygraphy way.

    backend.run(input_ids [B,S], attention_mask [B,S], token_type_ids [B,S] = None) -> BackendOutput(logits, kept)

`Backend.run` validates the inputs once and calls the backend's `_run_impl`. Token types are an input of the
graphs of sentence-pair models only (`takes_token_types`, decided by the graph's own inputs): such a backend
gets all zeros where none are given; any other backend (single-text models, artifacts built before pairs)
accepts only all-zero token types, which is what it was trained on, and is called as before.
`logits` is [B,C] fp32; `kept[k]` holds the original positions link k kept, [B, S'_k] int32 with -1 padding.
Backends that run the model as segments derive from `SegmentChainBackend`, which supplies the one chain
(`chain.run_chain`) and asks only for `run_segment` (and, where the link runs elsewhere than on host NumPy
arrays, `link`).

The registry maps a backend kind to the function that opens an artifact with it:

    onnxruntime       segment graphs in ONNX Runtime, linked on the host (CPU; CUDA EP where installed)
    onnxruntime-graph the whole model as one standard ONNX graph (onnx/model.onnx) in one session
    tensorrt          segment engines linked by the CUDA kernel (GPU + TensorRT)
    tensorrt-single   one engine with TokenCompact plugin layers (GPU + full TensorRT + plugin library)

`load_backend(artifact, "auto")` picks one and says which and why; a named kind never falls back to
another one: if it cannot run here, the error says why.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..chain import run_chain
from ..errors import AdaplerError
from ..link import CompactResult, token_compact
from ..specs import TOKEN_TYPE_IDS


@dataclass
class BackendOutput:
    logits: np.ndarray
    kept: list


def validate_inputs(input_ids, attention_mask, token_type_ids=None) -> tuple:
    """The one input check every backend gets: [B, S] integer arrays of equal shape, B >= 1, S >= 1,
    mask values 0/1, token types (where given) of the same shape. Returns C-contiguous int32 copies (or the
    inputs themselves when they already are): (input_ids, attention_mask, token_type_ids or None)."""
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise AdaplerError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be "
                           f"[B, S]")
    arrays = [("input_ids", input_ids), ("attention_mask", attention_mask)]
    if token_type_ids is not None:
        token_type_ids = np.asarray(token_type_ids)
        if token_type_ids.shape != input_ids.shape:
            raise AdaplerError(f"token_type_ids {token_type_ids.shape} must have the shape of input_ids "
                               f"{input_ids.shape}")
        arrays.append((TOKEN_TYPE_IDS, token_type_ids))
    if input_ids.shape[0] == 0:
        raise AdaplerError("empty batch: pass at least one row")
    if input_ids.shape[1] == 0:
        raise AdaplerError("empty sequence: every row needs at least the [CLS] token")
    for name, array in arrays:
        if not np.issubdtype(array.dtype, np.integer):
            raise AdaplerError(f"{name} must be integers, got {array.dtype}")
    if attention_mask.size and not np.isin(attention_mask, (0, 1)).all():
        raise AdaplerError("attention_mask must hold only 0 and 1")
    input_ids, attention_mask = (np.ascontiguousarray(a, dtype=np.int32) for a in (input_ids, attention_mask))
    if token_type_ids is not None:
        token_type_ids = np.ascontiguousarray(token_type_ids, dtype=np.int32)
    return input_ids, attention_mask, token_type_ids


def given_inputs(input_ids, attention_mask, token_type_ids=None) -> tuple:
    """(input_ids, attention_mask), and token_type_ids where given: the arrays in the graphs' input order."""
    return (input_ids, attention_mask) + (() if token_type_ids is None else (token_type_ids,))


class Backend:
    """Base class: a public `run` that validates once, an `_run_impl` per backend.

    `takes_token_types`: the model's graphs take token_type_ids (a sentence-pair model), and `_run_impl` gets
    them as a third array; otherwise `_run_impl(input_ids, attention_mask)` and only all-zero types pass."""

    name = "backend"
    takes_token_types = False

    def run(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        input_ids, attention_mask, token_type_ids = validate_inputs(input_ids, attention_mask, token_type_ids)
        if self.takes_token_types:
            types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            return self._run_impl(input_ids, attention_mask, types)
        if token_type_ids is not None and token_type_ids.any():
            raise AdaplerError(f"{self.name}: this model takes no token types (a single-text model, or an artifact "
                               "built before sentence pairs were supported), but token_type_ids holds nonzero values")
        return self._run_impl(input_ids, attention_mask)

    def _run_impl(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None) -> BackendOutput:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        """Release what the backend holds (sessions, engines, caches); safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SegmentChainBackend(Backend):
    """A backend that runs segment k with `run_segment(k, feeds)` and links with `link(...)`; the chain
    itself is `chain.run_chain`. `specs`/`etas` come from the artifact's manifest (or the model)."""

    def __init__(self, specs: list, etas: list):
        self.specs, self.etas = list(specs), [float(e) for e in etas]
        if len(self.specs) != len(self.etas) + 1:
            raise AdaplerError(f"{len(self.specs)} segments need {len(self.specs) - 1} thresholds, "
                               f"got {len(self.etas)}")
        self.takes_token_types = TOKEN_TYPE_IDS in self.specs[0].inputs

    def run_segment(self, index: int, feeds: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def link(self, hidden, scores, mask, positions, eta) -> CompactResult:
        return token_compact(hidden, scores, mask, positions, eta)

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        result = run_chain(self.specs, self.etas, self.run_segment, self.link, input_ids, attention_mask,
                           token_type_ids=token_type_ids)
        return BackendOutput(np.asarray(result.logits, dtype=np.float32), [np.asarray(k) for k in result.kept])


# ----- registry ----------------------------------------------------------------------------------------------
# kind -> "module:function" opening an artifact: function(artifact_dir, manifest, log=None, **kwargs) -> Backend
# (`log` receives the backend's own choices, e.g. which link implementation it runs).
# Imported lazily: ONNX Runtime users never import TensorRT or torch.
BACKENDS = {
    "onnxruntime": "adapler_export.backends.onnxruntime:open_artifact",
    "onnxruntime-graph": "adapler_export.backends.onnxruntime_graph:open_artifact",
    "tensorrt": "adapler_export.backends.tensorrt:open_segments",
    "tensorrt-single": "adapler_export.backends.tensorrt:open_single",
}
KINDS = ("auto",) + tuple(BACKENDS)


def register_backend(kind: str, opener: str) -> None:
    """Add a backend kind: `opener` is "module:function" (function(artifact_dir, manifest, log, **kwargs))."""
    BACKENDS[kind] = opener


def _opener(kind: str) -> Callable:
    if kind not in BACKENDS:
        raise AdaplerError(f"unknown backend {kind!r} (choose from {', '.join(KINDS)})")
    module, function = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), function)


def cuda_device_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - a declared dependency
        return False
    return bool(torch.cuda.is_available())


def choose_backend(manifest) -> tuple:
    """(kind, reason) for `auto`: TensorRT segment engines where the artifact has them and a CUDA GPU is
    here; else ONNX Runtime, on the one graph where the artifact has it (one session, no Python between
    layers: faster than the chain at batch 1, as fast at larger batches; docs/results/*one-graph*), else on
    the segment chain."""
    if manifest.engines.segments and cuda_device_available():
        return "tensorrt", "TensorRT segment engines and a CUDA GPU are present"
    if manifest.engines.segments:
        why = "the artifact has TensorRT engines but this machine has no CUDA GPU"
    else:
        built = manifest.engines.not_built.get("segments")
        why = "the artifact has no TensorRT engines" + (f": {built}" if built else "")
    if manifest.one_graph:
        return "onnxruntime-graph", f"{why}; the one-graph model runs in a single ONNX Runtime session"
    return "onnxruntime", why


def load_backend(artifact_dir, kind: str = "auto", log: Callable[[str], None] | None = None,
                 check_files: bool = True, **kwargs) -> Backend:
    """Open a build artifact (path or name under the cache) with backend `kind`.

    `auto` says what it chose and why through `log`; it does not try another kind when the chosen one
    fails (a TensorRT problem is an error to see, not a silent switch to the CPU).
    """
    from ..artifact import open_artifact

    path, manifest = open_artifact(artifact_dir, check_files=check_files)
    if log is not None and manifest.precision == "int8":  # integer kernels differ by CPU: say when this one differs
        from ..quantization import cpu_note

        note = cpu_note(manifest.quantization)
        if note:
            log(f"note: {note}")
    if kind == "auto":
        kind, reason = choose_backend(manifest)
        if log is not None:
            log(f"backend: {kind} ({reason})")
    if log is not None:
        kwargs["log"] = log
    return _opener(kind)(path, manifest, **kwargs)
