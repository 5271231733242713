"""Backends: runners with one interface, like polygraphy's runners.

    backend.run(input_ids [B,S], attention_mask [B,S]) -> BackendOutput(logits [B,C] fp32, kept)

`kept[k]` holds the original positions link k kept, [B, S'_k] int32 with -1 padding. Implementations:
`pytorch` (the reference: hard removal in PyTorch), `onnxruntime` (segment graphs linked by the reference
link, CPU or CUDA EP), `tensorrt` (segment engines linked by the CUDA kernel) and `tensorrt-single`
(one engine with plugin layers).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AdaplerError


@dataclass
class BackendOutput:
    logits: np.ndarray
    kept: list


class Backend:
    name = "backend"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> BackendOutput:  # pragma: no cover
        raise NotImplementedError


def as_int32_inputs(input_ids, attention_mask):
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise AdaplerError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be [B, S]")
    if input_ids.shape[1] == 0:
        raise AdaplerError("empty sequence: every row needs at least the [CLS] token")
    return input_ids.astype(np.int32, copy=False), attention_mask.astype(np.int32, copy=False)


def read_manifest(artifact_dir) -> dict:
    path = Path(artifact_dir) / "manifest.json"
    if not path.is_file():
        raise AdaplerError(f"{artifact_dir} is not a build artifact (no manifest.json); run `adapler-export build`")
    return json.loads(path.read_text())


def load_backend(artifact_dir, kind: str = "auto", **kwargs) -> Backend:
    """Open a build artifact with the best backend available (`auto`: TensorRT segments on a GPU with
    engines, else ONNX Runtime with the CUDA EP where present, else ONNX Runtime on the CPU)."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if kind == "auto":
        if manifest.get("engines", {}).get("segments") and _cuda_available():
            try:
                from .tensorrt import load_tensorrt_backend

                return load_tensorrt_backend(artifact_dir, kind="tensorrt", **kwargs)
            except AdaplerError:
                pass
        kind = "onnxruntime"
    if kind == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_artifact(artifact_dir, manifest, **kwargs)
    if kind in ("tensorrt", "tensorrt-single"):
        from .tensorrt import load_tensorrt_backend

        return load_tensorrt_backend(artifact_dir, kind=kind, **kwargs)
    raise AdaplerError(f"unknown backend {kind!r} (auto, onnxruntime, tensorrt, tensorrt-single)")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
