"""Parity: a candidate backend against the PyTorch reference (../shared/DESIGN.md §4).

Two checks, each small and composable:
- `compare_backends`: end to end on a dataset. Max / mean |Δlogit|, predicted-label agreement, and for
  every link the fraction of (example, input token) keep decisions that differ (flips).
- `polygraphy_segment_check`: each segment graph alone, fed the exact inputs the PyTorch reference saw,
  compared by polygraphy's `Comparator` / `CompareFunc.simple` with ONNX Runtime as the runner. The
  inputs and reference outputs are saved as polygraphy JSON so anyone can re-run
  `polygraphy run onnx/segment_XX.onnx --onnxrt --load-inputs ... --load-outputs ...`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backends import Backend
from .evaluation import encode


@dataclass
class Tolerances:
    max_abs_logit: float | None  # None: reported, not bounded
    mean_abs_logit: float
    max_flip_rate: float
    min_label_agreement: float

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerances":
        if precision == "fp32":
            return cls(max_abs_logit=1e-3, mean_abs_logit=1e-4, max_flip_rate=0.0, min_label_agreement=0.995)
        if precision == "int8":  # quantised weights: reported, bounded loosely (calibration/README.md)
            return cls(max_abs_logit=None, mean_abs_logit=0.3, max_flip_rate=0.05, min_label_agreement=0.97)
        # fp16 may flip decisions whose score sits within rounding of the threshold: bounded, reported.
        return cls(max_abs_logit=None, mean_abs_logit=0.05, max_flip_rate=0.005, min_label_agreement=0.995)


@dataclass
class LinkParity:
    link: int
    decisions: int
    flips: int
    flip_rate: float
    mean_kept_reference: float
    mean_kept_candidate: float


@dataclass
class ParityReport:
    backend: str
    precision: str
    examples: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    label_agreement: float
    flips: int
    decisions: int
    flip_rate: float
    links: list
    tolerances: dict
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def table(self) -> str:
        lines = [f"parity: {self.backend} ({self.precision}) vs PyTorch reference, {self.examples} examples",
                 f"  max |Δlogit| {self.max_abs_logit_diff:.3g}   mean |Δlogit| {self.mean_abs_logit_diff:.3g}   "
                 f"label agreement {self.label_agreement * 100:.2f}%   flips {self.flips}/{self.decisions} "
                 f"({self.flip_rate * 100:.3f}%)",
                 "  link  flips  decisions  flip rate  kept(ref)  kept(cand)"]
        for link in self.links:
            lines.append(f"  {link['link']:>4}  {link['flips']:>5}  {link['decisions']:>9}  "
                         f"{link['flip_rate'] * 100:>8.3f}%  {link['mean_kept_reference']:>9.2f}  "
                         f"{link['mean_kept_candidate']:>10.2f}")
        lines.append("  PASSED" if self.passed else "  FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)


def kept_matrix(kept_positions: np.ndarray, seq_len: int) -> np.ndarray:
    """[B, S'] positions (-1 padding) -> [B, seq_len] bool: was original token i kept?"""
    out = np.zeros((kept_positions.shape[0], seq_len), dtype=bool)
    rows, cols = np.nonzero(kept_positions >= 0)
    out[rows, kept_positions[rows, cols]] = True
    return out


def compare_backends(reference: Backend, candidate: Backend, tokenizer, texts, max_length: int, precision: str,
                     batch_size: int = 32, tolerances: Tolerances | None = None, progress=None) -> ParityReport:
    tolerances = tolerances or Tolerances.for_precision(precision)
    diffs, agree = [], 0
    link_flips = link_decisions = None
    kept_ref = kept_cand = None
    starts = list(range(0, len(texts), batch_size))
    for start in (progress(starts, f"parity {candidate.name}") if progress else starts):
        ids, mask = encode(tokenizer, texts[start: start + batch_size], max_length)
        ref, cand = reference.run(ids, mask), candidate.run(ids, mask)
        diffs.append(np.abs(ref.logits - cand.logits).ravel())
        agree += int((ref.logits.argmax(-1) == cand.logits.argmax(-1)).sum())
        if link_flips is None:
            n_links = len(ref.kept)
            link_flips, link_decisions = np.zeros(n_links, np.int64), np.zeros(n_links, np.int64)
            kept_ref, kept_cand = np.zeros(n_links), np.zeros(n_links)
        live = mask == 1
        for k, (r, c) in enumerate(zip(ref.kept, cand.kept)):
            rk, ck = kept_matrix(r, mask.shape[1]), kept_matrix(c, mask.shape[1])
            link_flips[k] += int((rk != ck)[live].sum())
            link_decisions[k] += int(live.sum())
            kept_ref[k] += rk.sum()
            kept_cand[k] += ck.sum()
    diffs = np.concatenate(diffs)
    n = len(texts)
    links = [asdict(LinkParity(k, int(link_decisions[k]), int(link_flips[k]),
                               float(link_flips[k] / max(1, link_decisions[k])), float(kept_ref[k] / n),
                               float(kept_cand[k] / n))) for k in range(len(link_flips))]
    flips, decisions = int(link_flips.sum()), int(link_decisions.sum())
    report = ParityReport(candidate.name, precision, n, float(diffs.max()), float(diffs.mean()), agree / n, flips,
                          decisions, flips / max(1, decisions), links, asdict(tolerances))
    t = tolerances
    if not np.isfinite(diffs).all():
        report.failures.append("non-finite logits")
    if t.max_abs_logit is not None and report.max_abs_logit_diff > t.max_abs_logit:
        report.failures.append(f"max |Δlogit| {report.max_abs_logit_diff:.3g} > {t.max_abs_logit:g}")
    if report.mean_abs_logit_diff > t.mean_abs_logit:
        report.failures.append(f"mean |Δlogit| {report.mean_abs_logit_diff:.3g} > {t.mean_abs_logit:g}")
    if report.flip_rate > t.max_flip_rate:
        report.failures.append(f"flip rate {report.flip_rate:.4%} > {t.max_flip_rate:.2%}")
    if report.label_agreement < t.min_label_agreement:
        report.failures.append(f"label agreement {report.label_agreement:.4%} < {t.min_label_agreement:.2%}")
    return report


# ----- per-segment check with polygraphy -------------------------------------------------------------------
def capture_segment_io(model, specs, precision: str, input_ids: np.ndarray, attention_mask: np.ndarray) -> list:
    """Run the PyTorch segments (at the artifact's precision) chained by the reference link and record each
    segment's inputs and outputs as NumPy feeds: the exact tensors a segment graph must reproduce."""
    from .link import token_compact_torch
    from .segments import precision_model, segment_modules

    modules = segment_modules(precision_model(model, precision))
    records = []
    ids, mask = torch.from_numpy(input_ids.astype(np.int32)), torch.from_numpy(attention_mask.astype(np.int32))
    positions = model.initial_positions(mask)
    with torch.no_grad():
        feeds = {"input_ids": ids, "attention_mask": mask}
        for k, (spec, module) in enumerate(zip(specs, modules)):
            outputs = module(*feeds.values())
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            records.append(({n: v.numpy() for n, v in feeds.items()},
                            {n: v.numpy() for n, v in zip(spec.outputs, outputs)}))
            if k == len(specs) - 1:
                break
            hidden, scores = outputs
            hidden, mask, positions, _ = token_compact_torch(hidden, scores, mask, positions, float(model.eta[k]))
            feeds = {"hidden": hidden, "attention_mask": mask}
    return records


def polygraphy_segment_check(onnx_dir: Path, specs, records, precision: str, save_dir: Path | None = None) -> dict:
    """Compare every segment graph (ONNX Runtime via polygraphy) with the recorded PyTorch outputs."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # one line per segment is ours to print, not 20 of polygraphy's
    atol, rtol = (1e-4, 1e-4) if precision == "fp32" else (2e-2, 2e-2)
    result = {"tool": "polygraphy", "atol": atol, "rtol": rtol, "segments": []}
    for spec, (feeds, expected) in zip(specs, records):
        path = onnx_dir / spec.file_name
        runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]),
                              name=f"onnxrt:{spec.file_name}")
        run_results = Comparator.run([runner], data_loader=[feeds])
        reference = RunResults()
        reference.append(("pytorch", [IterationResult(outputs=expected, runner_name="pytorch")]))
        combined = RunResults()
        combined.append(("pytorch", reference["pytorch"]))
        for name, iters in run_results.items():
            combined.append((name, iters))
        accuracy = Comparator.compare_accuracy(combined, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
        passed = bool(accuracy)
        result["segments"].append({"segment": spec.file_name, "passed": passed})
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            stem = spec.file_name.replace(".onnx", "")
            save_json([feeds], str(save_dir / f"{stem}.inputs.json"))
            reference.save(str(save_dir / f"{stem}.outputs.json"))
    result["passed"] = all(s["passed"] for s in result["segments"])
    return result


def verify_artifact(artifact_dir, backend: str = "onnxruntime", ckpt=None, data_dir=None, samples=None,
                    batch_size: int = 32, progress=None) -> ParityReport:
    """Re-run end-to-end parity on any artifact against the checkpoint it was built from."""
    from .backends import load_backend, read_manifest
    from .backends.pytorch import PyTorchBackend
    from .build import parity_texts
    from .checkpoint import load_checkpoint

    manifest = read_manifest(artifact_dir)
    checkpoint = load_checkpoint(ckpt or manifest["checkpoint"]["path"])
    candidate = load_backend(artifact_dir, kind=backend)
    texts = parity_texts(manifest["task"], data_dir, samples)
    return compare_backends(PyTorchBackend(checkpoint.model), candidate, checkpoint.tokenizer, texts,
                            manifest["max_length"], manifest["precision"], batch_size=batch_size, progress=progress)
