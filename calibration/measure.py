"""Measured speedup of sweep points: wall-clock of the ONNX Runtime adaptive pipeline.

One segment export serves the whole sweep: the link thresholds are runtime parameters of the ONNX Runtime
chain, so every point runs the same `OnnxRuntimeBackend` sessions with its own thresholds
(`with_thresholds`). Two baselines, both on the same backend and threads:

- **keep-all chain** (the primary one): the same segment graphs with eta = 0 at every link: delta = 0, so
  every live token goes on (at batch 1 there is no padding, and the link hands its inputs back as they
  are); the CPs still run. This isolates what removing tokens buys in this runtime.
- **full graph**: one ONNX graph of the plain backbone classifier (`forward_full`, no CPs, no links): what a
  deployment without AdapLeR would run. ../shared/DESIGN.md §7 measured the chain at 10-15 % slower than
  one graph when nothing is dropped, so this ratio is the honest end-to-end one.

Timing: a fixed subset of dev sentences, batch 1 (no padding), one warm-up pass, then `repeats` rounds in
which every configuration runs the whole subset once (round-robin, so a load change on a shared machine
hits all of them alike); the figure is the median round, divided by the number of sentences.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from adapler_export.backends import SegmentChainBackend
from adapler_export.evaluation import encoded_batches
from adapler_export.link import check_eta
from adapler_export.serving.tokenization import Cut


def with_thresholds(backend: SegmentChainBackend, etas) -> SegmentChainBackend:
    """The same backend (same sessions, same chain, same link) with other link thresholds."""
    etas = [check_eta(e) for e in etas]
    if len(etas) != len(backend.etas):
        raise ValueError(f"{len(backend.specs)} segments need {len(backend.etas)} thresholds, got {len(etas)}")
    variant = copy.copy(backend)
    variant.etas = etas
    return variant


def encode_single(tokenizer, texts, cut: Cut | int, pairs=None) -> list:
    """Batch-1 inputs (no padding), int32: the arrays a backend's `run` takes, per text (per pair)."""
    return list(encoded_batches(tokenizer, texts, cut, 1, pairs))


def time_round_robin(configs: dict, inputs: list, repeats: int = 5, warmup: int = 1) -> dict:
    """configs: name -> callable(ids, mask[, token types]); `inputs`: the arrays of each call. Returns name ->
    {"median_ms", "rounds_ms"} (per sentence)."""
    for _ in range(warmup):
        for fn in configs.values():
            for arrays in inputs:
                fn(*arrays)
    rounds = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            start = time.perf_counter()
            for arrays in inputs:
                fn(*arrays)
            rounds[name].append((time.perf_counter() - start) * 1000.0 / len(inputs))
    return {name: {"median_ms": float(np.median(v)), "rounds_ms": [round(x, 4) for x in v]}
            for name, v in rounds.items()}


def measure_points(model, tokenizer, texts, cut: Cut | int, points: list, samples: int = 64, repeats: int = 5,
                   threads: int = 1, log=print, pairs=None) -> dict:
    """Attach measured_ms / measured_speedup / measured_speedup_vs_full_graph to `points` (in place).
    `pairs`: the second texts of a sentence-pair task."""
    import onnxruntime as ort

    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.baseline import FullModelBackend, export_full_onnx
    from adapler_export.segments import export_segments

    inputs = encode_single(tokenizer, list(texts)[:samples], cut, None if pairs is None else pairs[:samples])
    with tempfile.TemporaryDirectory(prefix="adapler-measure-") as tmp:
        tmp = Path(tmp)
        log(f"measuring: exporting the fp32 segments once (thresholds are runtime parameters), {len(inputs)} "
            f"sentences, batch 1, {repeats} rounds, {threads} ONNX Runtime thread(s)")
        specs = export_segments(model, tmp / "onnx", "fp32")
        chain = OnnxRuntimeBackend([tmp / "onnx" / s.file_name for s in specs], specs, [0.0] * (len(specs) - 1),
                                   device="cpu", threads=threads)
        full = FullModelBackend(export_full_onnx(model, tmp / "full.onnx"), model.num_layers, device="cpu",
                                threads=threads)
        configs = {"keep_all_chain": chain.run, "full_graph": full.run}
        names = {}  # eta tuple -> config name
        for p in points:
            eta = tuple(p.eta)
            if eta not in names and any(e > 0 for e in eta):
                names[eta] = "eta " + " ".join(f"{e:.4f}" for e in eta)
                configs[names[eta]] = with_thresholds(chain, eta).run
        timings = time_round_robin(configs, inputs, repeats=repeats)
    base, full_ms = timings["keep_all_chain"]["median_ms"], timings["full_graph"]["median_ms"]
    for p in points:
        name = names.get(tuple(p.eta))
        ms = timings[name]["median_ms"] if name is not None else base
        p.measured_ms = ms
        p.measured_speedup = base / ms
        p.measured_speedup_vs_full_graph = full_ms / ms
    log(f"  keep-all chain {base:.2f} ms/sentence, full graph {full_ms:.2f} ms/sentence")
    return {"backend": "onnxruntime (CPU)", "onnxruntime": ort.__version__, "threads": threads, "batch": 1,
            "sentences": len(inputs), "repeats": repeats, "statistic": "median round, ms per sentence",
            "keep_all_chain_ms": base, "full_graph_ms": full_ms,
            "rounds_ms": {k: v["rounds_ms"] for k, v in timings.items()}}
