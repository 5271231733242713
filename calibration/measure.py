"""Measured speedup of sweep points: wall-clock of the ONNX Runtime adaptive pipeline.

One segment export serves the whole sweep: the link thresholds are runtime parameters of the ONNX Runtime
chain (`OnnxRuntimeBackend(etas=...)`). Two baselines, both on the same backend and threads:

- **keep-all chain** (the primary one): the same segment graphs with every link switched off (eta = 0 is
  "no removal": the link is skipped, nothing is compacted; the CPs still run). This isolates what removing
  tokens buys in this runtime.
- **full graph**: one ONNX graph of the plain backbone classifier (`forward_full`, no CPs, no links): what a
  deployment without AdapLeR would run. ../shared/DESIGN.md §7 measured the chain at 10-15 % slower than
  one graph when nothing is dropped, so this ratio is the honest end-to-end one.

Timing: a fixed subset of dev sentences, batch 1 (no padding), one warm-up pass, then `repeats` rounds in
which every configuration runs the whole subset once (round-robin, so a load change on a shared machine
hits all of them alike); the figure is the median round, divided by the number of sentences.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from adapler_export.backends.onnxruntime import OnnxRuntimeBackend, session_options


class SweepOrtBackend(OnnxRuntimeBackend):
    """The ONNX Runtime segment chain with settable thresholds; eta <= 0 at a link means "no removal":
    the link is skipped (every token goes on, nothing is compacted), as `OnnxRuntimeBackend.run` does."""

    name = "onnxruntime-sweep"

    def __init__(self, segment_paths: list, etas: list | None = None, threads: int | None = 1):
        super().__init__(segment_paths, etas if etas is not None else [1.0] * (len(segment_paths) - 1),
                         device="cpu", threads=threads)

    def set_etas(self, etas) -> "SweepOrtBackend":
        etas = [float(e) for e in etas]
        if len(etas) != len(self.sessions) - 1:
            raise ValueError(f"{len(self.sessions)} segments need {len(self.sessions) - 1} thresholds")
        self.etas = etas
        return self



def export_full_graph(model, path: Path) -> Path:
    """One ONNX graph of the plain backbone classifier (no CPs, no links), checked against PyTorch."""
    from adapler_export.baseline import export_full_onnx

    return export_full_onnx(model, path)


def encode_single(tokenizer, texts, max_length: int) -> list:
    """Batch-1 inputs (no padding), int32."""
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        out.append((enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)))
    return out


def time_round_robin(configs: dict, inputs: list, repeats: int = 5, warmup: int = 1) -> dict:
    """configs: name -> callable(ids, mask). Returns name -> {"median_ms", "rounds_ms"} (per sentence)."""
    for _ in range(warmup):
        for fn in configs.values():
            for ids, mask in inputs:
                fn(ids, mask)
    rounds = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            start = time.perf_counter()
            for ids, mask in inputs:
                fn(ids, mask)
            rounds[name].append((time.perf_counter() - start) * 1000.0 / len(inputs))
    return {name: {"median_ms": float(np.median(v)), "rounds_ms": [round(x, 4) for x in v]}
            for name, v in rounds.items()}


def measure_points(model, tokenizer, texts, max_length: int, points: list, samples: int = 64, repeats: int = 5,
                   threads: int = 1, log=print) -> dict:
    """Attach measured_ms / measured_speedup / measured_speedup_vs_full_graph to `points` (in place)."""
    import onnxruntime as ort

    from adapler_export.segments import export_segments

    subset = list(texts)[:samples]
    inputs = encode_single(tokenizer, subset, max_length)
    with tempfile.TemporaryDirectory(prefix="adapler-measure-") as tmp:
        tmp = Path(tmp)
        log(f"measuring: exporting the fp32 segments once (thresholds are runtime parameters), {len(inputs)} "
            f"sentences, batch 1, {repeats} rounds, {threads} ONNX Runtime thread(s)")
        specs = export_segments(model, tmp / "onnx", "fp32")
        chain = SweepOrtBackend([tmp / "onnx" / s.file_name for s in specs], threads=threads)
        full = ort.InferenceSession(str(export_full_graph(model, tmp / "full.onnx")), session_options(threads),
                                    providers=["CPUExecutionProvider"])

        def run_chain(etas):
            def fn(ids, mask):
                chain.set_etas(etas)
                return chain.run(ids, mask)
            return fn

        layers = len(specs) - 1
        configs = {"keep_all_chain": run_chain([0.0] * layers),
                   "full_graph": lambda ids, mask: full.run(None, {"input_ids": ids, "attention_mask": mask})}
        names = {}  # eta tuple -> config name
        for p in points:
            eta = tuple(p.eta)
            if eta not in names and any(e > 0 for e in eta):
                names[eta] = "eta " + " ".join(f"{e:.4f}" for e in eta)
                configs[names[eta]] = run_chain(list(eta))
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
