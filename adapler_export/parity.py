"""Parity: a candidate backend against the PyTorch reference (../shared/DESIGN.md §4).

Small composable checks:
- `compare_backends`: end to end on a dataset. Max / mean |Δlogit|, predicted-label agreement, and for
  every link the fraction of the keep decisions made at that link that differ (flips).
- `polygraphy_segment_check`: each segment graph alone, fed the exact inputs the PyTorch reference saw,
  compared by polygraphy's `Comparator` / `CompareFunc.simple` with ONNX Runtime as the runner. The
  inputs and reference outputs are saved as polygraphy JSON so anyone can re-run
  `polygraphy run onnx/segment_XX.onnx --onnxrt --load-inputs ... --load-outputs ...`.
- `verify_artifact`: an artifact's recorded digests, then `compare_backends` for every backend kind it
  has, naming the kinds this machine cannot run. An int8 artifact's integer kernels depend on the CPU, so its
  parity is re-checked here on this machine's kernels, and a note says when the settings recorded for it
  (`quantization.cpu`) are not the ones this CPU would choose.
Tolerances come from `tolerances.Tolerances`, nowhere else.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import Backend
from .errors import BackendUnavailable, ParityError
from .evaluation import encoded_batches
from .serving.tokenization import Cut
from .tolerances import Tolerances, agreement_bound


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
    label_agreement_bound: float  # `tolerances.agreement_bound`: what the labels are judged by
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
                 f"label agreement {self.label_agreement * 100:.2f}% (bound {self.label_agreement_bound * 100:.2f}%)   "
                 f"flips {self.flips}/{self.decisions} ({self.flip_rate * 100:.3f}%)",
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


def link_decisions(kept: list, mask: np.ndarray) -> list:
    """Per link k: (tokens that reached link k, tokens link k kept), both [B, S] bool over input positions.

    The tokens that reach link 0 are the live input tokens; those that reach link k > 0 are the ones link
    k-1 kept. A keep decision is made at link k for exactly the tokens that reached it."""
    seq = mask.shape[1]
    reached, out = mask == 1, []
    for positions in kept:
        kept_k = kept_matrix(positions, seq)
        out.append((reached, kept_k))
        reached = kept_k
    return out


def compare_backends(reference: Backend, candidate: Backend, tokenizer, texts, cut: Cut | int, precision: str,
                     batch_size: int = 32, tolerances: Tolerances | None = None, progress=None,
                     pairs=None) -> ParityReport:
    """End-to-end parity on `texts` (with their `pairs`: sentence pairs, token types fed). A link's flip rate is
    over the decisions made *at that link*: the tokens that reached it in the reference or in the candidate (a
    token dropped earlier by both is no decision of a later link, so it neither dilutes nor inflates that
    link's rate). `cut`: how the texts are cut to length (`Manifest.cut`; a bare max length: `head`)."""
    tolerances = tolerances or Tolerances.for_precision(precision)
    diffs, agree = [], 0
    flips = decisions = kept_ref = kept_cand = None
    for inputs in encoded_batches(tokenizer, texts, cut, batch_size, pairs, progress,
                                  f"parity {candidate.name}"):
        mask = inputs[1]
        ref, cand = reference.run(*inputs), candidate.run(*inputs)
        diffs.append(np.abs(ref.logits - cand.logits).ravel())
        agree += int((ref.logits.argmax(-1) == cand.logits.argmax(-1)).sum())
        if flips is None:
            n_links = len(ref.kept)
            flips, decisions = np.zeros(n_links, np.int64), np.zeros(n_links, np.int64)
            kept_ref, kept_cand = np.zeros(n_links), np.zeros(n_links)
        if len(cand.kept) != len(ref.kept):
            raise ParityError(f"{candidate.name} reports {len(cand.kept)} links, the reference {len(ref.kept)}")
        per_link = zip(link_decisions(ref.kept, mask), link_decisions(cand.kept, mask))
        for k, ((reached_r, kept_r), (reached_c, kept_c)) in enumerate(per_link):
            decided = reached_r | reached_c
            flips[k] += int(((kept_r != kept_c) & decided).sum())
            decisions[k] += int(decided.sum())
            kept_ref[k] += kept_r.sum()
            kept_cand[k] += kept_c.sum()
    diffs = np.concatenate(diffs)
    n = len(texts)
    links = [asdict(LinkParity(k, int(decisions[k]), int(flips[k]), float(flips[k] / max(1, decisions[k])),
                               float(kept_ref[k] / n), float(kept_cand[k] / n))) for k in range(len(flips))]
    total_flips, total_decisions = int(flips.sum()), int(decisions.sum())
    report = ParityReport(candidate.name, precision, n, float(diffs.max()), float(diffs.mean()), agree / n,
                          agreement_bound(agree, n, tolerances.label_confidence),
                          total_flips, total_decisions, total_flips / max(1, total_decisions), links,
                          tolerances.to_dict())
    t = tolerances
    if not np.isfinite(diffs).all():
        report.failures.append("non-finite logits")
    if t.max_abs_logit is not None and report.max_abs_logit_diff > t.max_abs_logit:
        report.failures.append(f"max |Δlogit| {report.max_abs_logit_diff:.3g} > {t.max_abs_logit:g}")
    if report.mean_abs_logit_diff > t.mean_abs_logit:
        report.failures.append(f"mean |Δlogit| {report.mean_abs_logit_diff:.3g} > {t.mean_abs_logit:g}")
    if report.flip_rate > t.max_flip_rate:
        report.failures.append(f"flip rate {report.flip_rate:.4%} > {t.max_flip_rate:.2%}")
    if report.label_agreement_bound < t.min_label_agreement:
        report.failures.append(f"label agreement {report.label_agreement:.4%} of {n}: even its "
                               f"{t.label_confidence:.0%} upper bound {report.label_agreement_bound:.2%} is "
                               f"< {t.min_label_agreement:.2%}")
    return report


# ----- per-segment check with polygraphy -------------------------------------------------------------------
def capture_segment_io(model, precision: str, input_ids: np.ndarray, attention_mask: np.ndarray,
                       token_type_ids: np.ndarray | None = None) -> list:
    """Run the PyTorch segments (at the artifact's precision) through the one chain with the reference link
    and record each segment's inputs and outputs as NumPy feeds: what a segment graph must reproduce.
    `token_type_ids`: the token types of a sentence-pair model's inputs."""
    import torch

    from .backends.pytorch import PyTorchSegmentsBackend

    records = []

    def record(index, feeds, outputs):
        records.append(({n: v.detach().cpu().numpy() for n, v in feeds.items()},
                        {n: v.detach().cpu().numpy() for n, v in outputs.items()}))

    backend = PyTorchSegmentsBackend(model, precision)
    types = None if token_type_ids is None else torch.from_numpy(token_type_ids.astype(np.int32))
    backend.run_tensors(torch.from_numpy(input_ids.astype(np.int32)),
                        torch.from_numpy(attention_mask.astype(np.int32)), on_segment=record, token_type_ids=types)
    return records


@contextlib.contextmanager
def polygraphy_diagnostics():
    """Polygraphy prints its log on stdout; ours carries results only. Inside this block its messages go to
    stderr, and only errors (one line per segment is ours to print, not polygraphy's [W]/[I] lines)."""
    from polygraphy.logger import G_LOGGER

    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        G_LOGGER.module_severity = severity


def polygraphy_segment_check(onnx_dir: Path, specs, records, precision: str, save_dir: Path | None = None) -> dict:
    """Compare every segment graph (ONNX Runtime via polygraphy) with the recorded PyTorch outputs."""
    with polygraphy_diagnostics():
        return _polygraphy_segment_check(onnx_dir, specs, records, precision, save_dir)


def _polygraphy_segment_check(onnx_dir: Path, specs, records, precision: str, save_dir: Path | None) -> dict:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json

    tolerances = Tolerances.for_precision(precision)
    atol, rtol = tolerances.segment_atol, tolerances.segment_rtol
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
        accuracy = Comparator.compare_accuracy(combined, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
        passed = bool(accuracy)
        result["segments"].append({"segment": spec.file_name, "passed": passed})
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            stem = spec.file_name.replace(".onnx", "")
            save_json([feeds], str(save_dir / f"{stem}.inputs.json"))
            reference.save(str(save_dir / f"{stem}.outputs.json"))
    result["passed"] = all(s["passed"] for s in result["segments"])
    return result


# ----- verify an artifact -----------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """Parity of every backend kind that was asked for: a report where it ran, the reason where it could not."""
    artifact: str
    reports: dict = field(default_factory=dict)  # kind -> ParityReport
    not_run: dict = field(default_factory=dict)  # kind -> reason
    notes: list = field(default_factory=list)  # e.g. int8 settings chosen on another kind of CPU

    @property
    def passed(self) -> bool:
        return bool(self.reports) and all(r.passed for r in self.reports.values())

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "passed": self.passed,
                "reports": {k: r.to_dict() for k, r in self.reports.items()}, "not_run": dict(self.not_run),
                "notes": list(self.notes)}

    def table(self) -> str:
        parts = [r.table() for r in self.reports.values()]
        parts += [f"{kind}: not run here: {reason}" for kind, reason in self.not_run.items()]
        parts += [f"note: {note}" for note in self.notes]
        return "\n".join(parts)


def artifact_backend_kinds(manifest) -> list:
    """Every backend kind that can run this artifact somewhere: ONNX Runtime always (and on the one graph
    where the artifact has it), TensorRT kinds where the artifact has their engines."""
    kinds = ["onnxruntime"] + (["onnxruntime-graph"] if manifest.one_graph else [])
    if manifest.engines.segments:
        kinds.append("tensorrt")
    if manifest.engines.single:
        kinds.append("tensorrt-single")
    return kinds


def verify_artifact(artifact_dir, backends=None, ckpt=None, data_dir=None, samples=None, batch_size: int = 32,
                    progress=None, log=None) -> VerifyResult:
    """Re-check an artifact: its files against their recorded digests, then end-to-end parity against the
    checkpoint it was built from, for each backend kind in `backends` (default: every kind the artifact
    has). A kind this machine cannot run (`BackendUnavailable`) is reported as not run, with the reason."""
    from .artifact import open_artifact
    from .backends.pytorch import PyTorchBackend
    from .checkpoint import checkpoint_digest, load_checkpoint
    from .data import parity_texts

    path, manifest = open_artifact(artifact_dir, check_files=True)
    checkpoint = load_checkpoint(ckpt or manifest.checkpoint["path"])
    digest = checkpoint_digest(checkpoint.path)
    if digest != manifest.checkpoint["digest"]:
        raise ParityError(f"checkpoint {checkpoint.path} (digest {digest}) is not the one {path} was built from "
                          f"({manifest.checkpoint['digest']}); pass --ckpt with that checkpoint")
    kinds = list(backends) if backends else artifact_backend_kinds(manifest)
    texts, pairs = parity_texts(manifest.task, data_dir, samples)
    result = VerifyResult(str(path))
    if manifest.precision == "int8":
        from .quantization import cpu_note, describe_cpu

        result.notes.append(f"int8 parity checked on this CPU ({describe_cpu()}), with the kernels ONNX Runtime "
                            "picks here")
        note = cpu_note(manifest.quantization)
        if note:
            result.notes.append(note)
    result.reports, result.not_run = compare_artifact_backends(
        path, manifest, kinds, PyTorchBackend(checkpoint.model), checkpoint.tokenizer, texts,
        batch_size=batch_size, progress=progress, log=log, pairs=pairs)
    return result


def compare_artifact_backends(artifact_dir, manifest, kinds, reference: Backend, tokenizer, texts,
                              batch_size: int = 32, tolerances: Tolerances | None = None, progress=None,
                              log=None, pairs=None) -> tuple:
    """`compare_backends` for each backend kind of an artifact (build and verify both use this): returns
    ({kind: ParityReport}, {kind: why it cannot run here}). `log` receives the backends' own choices;
    `pairs`: the second texts of a sentence-pair task."""
    from .backends import load_backend

    reports, not_run = {}, {}
    for kind in kinds:
        try:
            candidate = load_backend(artifact_dir, kind=kind, log=log, check_files=False)
        except BackendUnavailable as exc:
            not_run[kind] = str(exc)
            continue
        with candidate:
            reports[kind] = compare_backends(reference, candidate, tokenizer, texts, manifest.cut,
                                             manifest.precision, batch_size=batch_size, tolerances=tolerances,
                                             progress=progress, pairs=pairs)
    return reports, not_run
