"""ONNX Runtime backend: the segment graphs, chained from Python, linked by the reference link rule.

Session settings matter on small CPUs (../shared/DESIGN.md §7): with default settings every session's
intra-op threads spin and the chain of sessions fights over the cores (39 ms against 6.6 ms for one
graph); `session.intra_op.allow_spinning = 0` removes that.

The link runs `token_compact_fast`: the reference rule (`link.keep_mask_numpy`) with a cheaper gather,
bit-identical to `link.token_compact_numpy` (pure copies). The reference's per-element
`take_along_axis` cost 0.05 ms at [1, 25, 384] and 24 ms at [32, 512, 384] per link; a row gather costs
about what copying the kept rows costs, and nothing at all when every slot of every row is kept.

Memory: every session used to keep its own CPU arena at its own peak, so a chain of L+1 sessions held
about L+1 times the activation memory of one graph (peak RSS growth 2.2 GB vs 0.46 GB on [8, 505] long
texts, MiniLM-L6). `session_options` now registers one CPU arena in ONNX Runtime's environment (once per
process) and makes sessions allocate from it (`session.use_env_allocators`): the segments run one after
another, so they reuse the same memory. Speed unchanged (interleaved runs: 1.00-1.02x).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import AdaplerError
from ..link import CompactResult, keep_mask_numpy
from . import Backend, BackendOutput, as_int32_inputs


_SHARED_ARENA = {"registered": False, "lock": threading.Lock()}


def register_shared_cpu_arena() -> bool:
    """Register, once per process, a CPU arena allocator in ONNX Runtime's environment; sessions created
    with `session.use_env_allocators = 1` allocate from it instead of from an arena of their own."""
    import onnxruntime as ort

    with _SHARED_ARENA["lock"]:
        if not _SHARED_ARENA["registered"]:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _SHARED_ARENA["registered"] = True
            except (AttributeError, RuntimeError) as exc:  # pragma: no cover - older/odd builds: own arenas
                _SHARED_ARENA["error"] = str(exc)
        return _SHARED_ARENA["registered"]


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if register_shared_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def token_compact_fast(hidden: np.ndarray, scores: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                       eta: float) -> CompactResult:
    """`TokenCompact` with the reference's keep rule and outputs, bit for bit, gathered faster.

    Every slot of every row kept (batch 1, nothing dropped): the inputs are returned as they are (no
    copy). Otherwise kept rows are gathered with one `np.take` over [B*S, H] (the reference's stable
    argsort order), and padding slots are zeroed.
    """
    keep = keep_mask_numpy(scores, mask, eta)
    b, s, h = hidden.shape
    counts = keep.sum(axis=1)
    new_len = max(int(counts.max()) if b else 1, 1)
    if new_len == s and b and int(counts.min()) == s:
        return CompactResult(hidden, mask, positions, new_len)
    slot_live = np.arange(new_len)[None, :] < counts[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :new_len]
    flat = (np.arange(b)[:, None] * s + order).reshape(-1)
    out_h = np.take(hidden.reshape(b * s, h), flat, axis=0).reshape(b, new_len, h)
    dead = ~slot_live
    if dead.any():
        out_h[dead] = 0
    out_p = np.where(slot_live, np.take(positions.reshape(-1), flat).reshape(b, new_len), -1).astype(np.int32)
    return CompactResult(out_h, slot_live.astype(np.int32), out_p, new_len)


def providers(device: str = "auto") -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise AdaplerError("ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, segment_paths: list, etas: list, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        if len(segment_paths) != len(etas) + 1:
            raise AdaplerError(f"{len(segment_paths)} segments need {len(segment_paths) - 1} thresholds, "
                               f"got {len(etas)}")
        options, chosen = session_options(threads), providers(device)
        self.sessions = [ort.InferenceSession(str(p), options, providers=chosen) for p in segment_paths]
        self.etas = [float(e) for e in etas]
        self.providers = self.sessions[0].get_providers()
        self.hidden_dtype = np.float16 if "float16" in self.sessions[0].get_outputs()[0].type else np.float32
        self.link = token_compact_fast  # same results as link.token_compact_numpy (tests/test_benchmarks.py)

    @classmethod
    def from_artifact(cls, artifact_dir: Path, manifest: dict, **kwargs):
        paths = [Path(artifact_dir) / "onnx" / seg["file"] for seg in manifest["segments"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise AdaplerError(f"artifact {artifact_dir} is missing {missing[0]}")
        return cls(paths, manifest["eta"], **kwargs)

    def run(self, input_ids, attention_mask) -> BackendOutput:
        input_ids, mask = as_int32_inputs(input_ids, attention_mask)
        hidden, scores = self.sessions[0].run(None, {"input_ids": input_ids, "attention_mask": mask})
        positions = np.where(mask == 1, np.arange(mask.shape[1], dtype=np.int32)[None], -1).astype(np.int32)
        kept = []
        for index, session in enumerate(self.sessions[1:]):
            if self.etas[index] > 0:  # a threshold of 0 disables the link: every token goes on (calibration)
                hidden, mask, positions, _ = self.link(hidden, scores, mask, positions, self.etas[index])
            kept.append(positions)
            outputs = session.run(None, {"hidden": hidden, "attention_mask": mask})
            if index + 1 < len(self.etas):
                hidden, scores = outputs
            else:
                logits = outputs[0]
        return BackendOutput(logits.astype(np.float32), kept)
