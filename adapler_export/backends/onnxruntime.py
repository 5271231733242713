"""ONNX Runtime backend: the segment graphs, chained from Python, linked by the reference link rule.

Session settings matter on small CPUs (../shared/DESIGN.md §7): with default settings every session's
intra-op threads spin and the chain of sessions fights over the cores (39 ms against 6.6 ms for one
graph); `session.intra_op.allow_spinning = 0` removes that.

The chain is `chain.run_chain`; the link is `link.token_compact` on host arrays (the reference rule
with a faster gather, bit-identical to `link.token_compact_numpy`).

Memory: every session used to keep its own CPU arena at its own peak, so a chain of L+1 sessions held
about L+1 times the activation memory of one graph (peak RSS growth 2.2 GB vs 0.46 GB on [8, 505] long
texts, MiniLM-L6). `session_options` now registers one CPU arena in ONNX Runtime's environment (once per
process) and makes sessions allocate from it (`session.use_env_allocators`): the segments run one after
another, so they reuse the same memory. Speed unchanged (interleaved runs: 1.00-1.02x).

One graph fusion is left out on the CPU (`open_session`, `CPU_DISABLED_OPTIMIZERS`): SkipLayerNormalization
(residual Add + LayerNormalization in one kernel). Measured on README command 1's SST-2 model (ONNX Runtime 1.31,
AMD EPYC, 1 thread, round robin on the same dev batches): with it, the dynamic-INT8 full model was 9 % slower at
batch 1 (3.35 vs 3.08 ms) and 10 % at batch 32 (4.42 vs 3.98 ms), and the INT8 one graph, once its dims were
annotated so that the fusion applies, 13 % slower at batch 1 (3.34 vs 2.94 ms); the fp32 full model did not move
(8.21 vs 8.17 ms). Every CPU session of the library, the full baselines included, runs without it, so every
comparison keeps the same settings. On a GPU the fusion stays.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import AdaplerError
from . import SegmentChainBackend


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


CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)  # slower on the CPU: see the module docstring


def open_session(path, options, chosen_providers: list):
    """An `InferenceSession` of the graph at `path` with the library's choices: on the CPU (the first provider),
    without the fusions of `CPU_DISABLED_OPTIMIZERS`. The benchmarks open their sessions here too."""
    import onnxruntime as ort

    disabled = list(CPU_DISABLED_OPTIMIZERS) if chosen_providers[0] == "CPUExecutionProvider" else []
    return ort.InferenceSession(str(path), options, providers=chosen_providers, disabled_optimizers=disabled)


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


class OnnxRuntimeBackend(SegmentChainBackend):
    """The segment graphs in ONNX Runtime sessions, linked on the host by `link.token_compact`."""

    name = "onnxruntime"

    def __init__(self, segment_paths: list, specs: list, etas: list, device: str = "auto",
                 threads: int | None = None):
        super().__init__(specs, etas)
        if len(segment_paths) != len(self.specs):
            raise AdaplerError(f"{len(segment_paths)} segment files for {len(self.specs)} segment specs")
        options, chosen = session_options(threads), providers(device)
        self.sessions = [open_session(p, options, chosen) for p in segment_paths]
        self.output_names = [list(spec.outputs) for spec in self.specs]
        self.providers = self.sessions[0].get_providers()

    def run_segment(self, index: int, feeds: dict) -> dict:
        return dict(zip(self.output_names[index], self.sessions[index].run(self.output_names[index], feeds)))


def open_artifact(artifact_dir: Path, manifest, log=None, **kwargs) -> OnnxRuntimeBackend:
    """Registry entry `onnxruntime`: the artifact's segment graphs (`log` unused: nothing to choose)."""
    return OnnxRuntimeBackend(manifest.segment_paths(artifact_dir), manifest.specs(), manifest.eta, **kwargs)
