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
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapler_export.backends import BackendOutput, as_int32_inputs
from adapler_export.backends.onnxruntime import OnnxRuntimeBackend, session_options
from adapler_export.link import token_compact_numpy


class SweepOrtBackend(OnnxRuntimeBackend):
    """The ONNX Runtime segment chain with settable thresholds; eta <= 0 at a link means "no removal":
    the link is skipped (every token goes on, nothing is compacted)."""

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

    def run(self, input_ids, attention_mask) -> BackendOutput:
        input_ids, mask = as_int32_inputs(input_ids, attention_mask)
        hidden, scores = self.sessions[0].run(None, {"input_ids": input_ids, "attention_mask": mask})
        positions = np.where(mask == 1, np.arange(mask.shape[1], dtype=np.int32)[None], -1).astype(np.int32)
        kept, logits = [], None
        for index, session in enumerate(self.sessions[1:]):
            if self.etas[index] > 0:
                hidden, mask, positions, _ = token_compact_numpy(hidden, scores, mask, positions, self.etas[index])
            kept.append(positions)
            outputs = session.run(None, {"hidden": hidden, "attention_mask": mask})
            if index + 1 < len(self.etas):
                hidden, scores = outputs
            else:
                logits = outputs[0]
        return BackendOutput(logits.astype(np.float32), kept)


class _FullGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.forward_full(input_ids, attention_mask).float()


def export_full_graph(model, path: Path) -> Path:
    """One ONNX graph of the plain backbone classifier (no CPs, no links), checked against PyTorch."""
    import onnxruntime as ort

    from adapler_export.segments import OPSET

    module = _FullGraph(model).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2204, 3185, 102, 0, 0]], dtype=torch.int32)
    mask = (ids != 0).to(torch.int32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=OPSET, do_constant_folding=True, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "logits": {0: "batch"}})
    module.eval()
    with torch.no_grad():
        want = module(ids, mask).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    if not np.allclose(want, got, atol=1e-3):
        raise RuntimeError(f"full-graph export differs from PyTorch by {np.abs(want - got).max():.3g}")
    return path


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
