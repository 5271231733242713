"""Threshold calibration: sweep the keep thresholds on dev data and pick an operating point.

The learned per-layer thresholds eta_l (keep token i at layer l iff s~_i >= eta_l / n) trade accuracy
for speed. Calibration re-chooses them after training, on dev data, for a stated target:

1. **Global sweep.** eta_l * s for a grid of scales s (0 = no removal, 1 = the checkpoint's own eta, up
   to the scale at which every layer reaches eta = 1), clipped to [0, 1]. For every point: dev accuracy,
   FLOPs speedup from the lengths the hard-removal model really runs (`evaluate_adaptive`), tokens kept
   per layer; optionally the *measured* speedup of the ONNX Runtime pipeline (`calibration.measure`).
2. **Operating point.** `--target-speedup X`: the most accurate point whose FLOPs speedup is >= X.
   `--max-accuracy-drop P`: the fastest point whose accuracy is >= reference - P accuracy points, where
   the reference is the no-removal accuracy (default: the backbone with every token kept, measured on the
   same examples) or the checkpoint's own accuracy (its learned eta, `reference="checkpoint"`).
3. **Per-layer refinement** (greedy coordinate search): starting from the chosen global point, multiply
   one layer's scale at a time by a few factors and keep a change only when it is better *against the
   target* (more accurate at >= X, or faster within the drop); repeat while it pays.
4. **Derived checkpoint**: a copy of the original with the new eta (adapler_heads.safetensors and
   adapler_config.json, plus a `calibration` record), written atomically (`adapler_export.storage`); the
   original is never touched, and an earlier output is replaced only with `force`.

The no-removal point (s = 0) is the baseline, not an operating point. eta = 0 is a valid link threshold
(delta = 0: every live token is kept, in every backend), so the sweep evaluates it like any other point;
but a checkpoint that removes nothing is no calibration result, so it is never written into one.

Every argument is checked (`CalibrateOptions.validate`, the output places) before the checkpoint is even
loaded: a bad one costs a second, not a sweep.

Choosing on dev data and reporting dev accuracy is optimistic (the refinement especially can fit noise on
a few hundred sentences); the record says which examples were used so that a held-out check can follow.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adapler_export.checkpoint import (ADAPLER_CONFIG, ADAPLER_HEADS, checkpoint_digest, load_checkpoint,
                                       resolve_checkpoint)
from adapler_export.data import CALIBRATE_SPLITS, DEV_SUBSET_SEED, load_dev, load_unseen_train
from adapler_export.errors import AdaplerError
from adapler_export.evaluation import evaluate_adaptive
from adapler_export.serving.tokenization import Cut, encode_rows
from adapler_export.link import ETA_RANGE
from adapler_export.progress import progress
from adapler_export.storage import atomic_directory, check_output_dir, resolve_output_dir

REFERENCES = ("no-removal", "checkpoint")
DEFAULT_MULTIPLIERS = (0.5, 0.75, 1.5, 2.0)
CALIBRATION_SUBDIR = "calibration"
REPORT_FILE = "calibration.json"
ETA_MAX = ETA_RANGE[1]


# ----- points ------------------------------------------------------------------------------------------------
@dataclass
class SweepPoint:
    """One evaluated threshold setting."""
    label: str
    kind: str  # "no-removal" | "global" | "refined"
    scale: float | None  # the global scale (None for refined points)
    layer_scales: list  # per layer: the multiplier of the original eta (0 = no removal at that layer)
    eta: list  # the thresholds evaluated, 0.0 = keep every live token
    accuracy: float
    flops_speedup: float
    kept_per_layer: list
    kept_fraction_per_layer: list
    examples: int
    pareto: bool = False
    measured_ms: float | None = None  # ONNX Runtime pipeline, batch 1, median per sentence
    measured_speedup: float | None = None  # vs the same chain with every token kept
    measured_speedup_vs_full_graph: float | None = None  # vs one ONNX graph of the plain backbone

    @property
    def removes(self) -> bool:
        """True when every link removes something (eta > 0): a writable operating point."""
        return all(e > 0 for e in self.eta)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SweepPoint":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def scaled_eta(base_eta, layer_scales) -> list:
    """eta_l * s_l clipped to [0, 1]; s_l = 0 means no removal at layer l (eta 0 keeps every live token)."""
    base_eta, layer_scales = list(base_eta), list(layer_scales)
    if len(base_eta) != len(layer_scales):
        raise ValueError(f"{len(layer_scales)} scales for {len(base_eta)} layers")
    out = []
    for eta, scale in zip(base_eta, layer_scales):
        scale = float(scale)
        if not math.isfinite(scale) or scale < 0:
            raise AdaplerError(f"threshold scales must be finite and >= 0, got {scale!r}")
        if scale == 0:
            out.append(0.0)
        else:  # fp32 like the link; a positive product never rounds to 0 for eta >= 1e-6
            out.append(float(np.float32(min(ETA_MAX, float(eta) * scale))))
    return out


def default_scales(base_eta, count: int = 20, smallest: float = 0.1) -> list:
    """0 (no removal), a geometric grid from `smallest` to 1.0 (the checkpoint's own thresholds), then a
    linear grid from 1.0 to the scale where every layer reaches eta = 1. About `count` points.

    Two thirds of the points lie above 1: that is where a trained model's speed/accuracy trade-off lives
    (below its learned thresholds little is dropped). With learned eta near 0.6-0.8 (IMDB) a geometric
    grid over the whole range left one point between 2.4x and 9.5x."""
    if count < 3:
        raise AdaplerError(f"a sweep needs at least 3 scales, got {count}")
    low = min(float(e) for e in base_eta)
    if not low > 0:
        raise AdaplerError(f"the checkpoint has a non-positive eta {list(base_eta)}; cannot scale it")
    top = max(1.0, math.ceil(1000.0 / low) / 1000.0)  # rounded up: every layer really reaches eta = 1
    below = max(2, (count - 2) // 3)
    grid = [*np.geomspace(min(smallest, 1.0), 1.0, below), *np.linspace(1.0, top, count - 1 - below)]
    scales = {0.0, 1.0, top, *(float(f"{g:.4g}") for g in grid)}
    return sorted(s for s in scales if s <= top)


def mark_pareto(points: list) -> list:
    """Mark (in place) and return the points no other point beats on both accuracy and FLOPs speedup."""
    for p in points:
        p.pareto = not any((q.accuracy >= p.accuracy and q.flops_speedup >= p.flops_speedup)
                           and (q.accuracy > p.accuracy or q.flops_speedup > p.flops_speedup)
                           for q in points if q is not p)
    front = [p for p in points if p.pareto]
    return sorted(front, key=lambda p: p.flops_speedup)


def reference_accuracy(points: list, reference: str) -> float:
    """The accuracy a --max-accuracy-drop is measured from: the no-removal point or the checkpoint's eta."""
    if reference not in REFERENCES:
        raise AdaplerError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if reference == "no-removal":
        found = [p for p in points if p.kind == "no-removal"]
    else:
        found = [p for p in points if p.kind == "global" and p.scale == 1.0]
    if not found:
        raise AdaplerError(f"the sweep has no {reference} point (scale {'0' if reference == 'no-removal' else '1'})")
    return found[0].accuracy


def _eps(value: float) -> float:
    return 1e-9 * max(1.0, abs(value))


def check_target_speedup(target_speedup) -> None:
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) \
            or not (math.isfinite(target_speedup) and target_speedup > 0):
        raise AdaplerError(f"--target-speedup must be a positive number, got {target_speedup!r}")


def check_accuracy_drop(max_accuracy_drop) -> None:
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not (math.isfinite(max_accuracy_drop) and 0 <= max_accuracy_drop <= 100):
        raise AdaplerError(f"--max-accuracy-drop is in accuracy points (0..100), got {max_accuracy_drop!r}")


def select_point(points: list, target_speedup: float | None = None, max_accuracy_drop: float | None = None,
                 reference_acc: float | None = None) -> SweepPoint:
    """The operating point for a target (exactly one of the two).

    - target_speedup X: the most accurate point with FLOPs speedup >= X (ties: the faster one).
    - max_accuracy_drop P (accuracy points, 1.0 = 1 %): the fastest point with accuracy >= reference - P
      (ties: the more accurate one).
    Only points that remove tokens at every link (0 < eta) are candidates. Raises AdaplerError with the best
    reachable value when no point meets the target.
    """
    if (target_speedup is None) == (max_accuracy_drop is None):
        raise AdaplerError("give exactly one of --target-speedup and --max-accuracy-drop")
    candidates = [p for p in points if p.removes]
    if not candidates:
        raise AdaplerError("the sweep has no point that removes tokens (every point is no-removal)")
    if target_speedup is not None:
        check_target_speedup(target_speedup)
        ok = [p for p in candidates if p.flops_speedup >= target_speedup - _eps(target_speedup)]
        if not ok:
            best = max(candidates, key=lambda p: (p.flops_speedup, p.accuracy))
            raise AdaplerError(f"target speedup {target_speedup:g}x is unreachable: the fastest point reaches "
                               f"{best.flops_speedup:.2f}x ({best.label}, accuracy {best.accuracy * 100:.2f}%)")
        return max(ok, key=lambda p: (p.accuracy, p.flops_speedup))
    check_accuracy_drop(max_accuracy_drop)
    if reference_acc is None:
        raise AdaplerError("a maximum accuracy drop needs a reference accuracy")
    floor = reference_acc - max_accuracy_drop / 100.0
    ok = [p for p in candidates if p.accuracy >= floor - 1e-12]
    if not ok:
        best = max(candidates, key=lambda p: (p.accuracy, p.flops_speedup))
        raise AdaplerError(f"no point removing tokens stays within {max_accuracy_drop:g} points of the reference "
                           f"accuracy {reference_acc * 100:.2f}%: the most accurate one reaches "
                           f"{best.accuracy * 100:.2f}% ({best.label}, {best.flops_speedup:.2f}x)")
    return max(ok, key=lambda p: (p.flops_speedup, p.accuracy))


def objective(target_speedup: float | None, max_accuracy_drop: float | None, reference_acc: float | None):
    """A key that orders points by how well they serve the target (bigger is better)."""
    if target_speedup is not None:
        def key(p):
            feasible = p.removes and p.flops_speedup >= target_speedup - _eps(target_speedup)
            return (feasible, p.accuracy, p.flops_speedup) if feasible else (False, p.flops_speedup, p.accuracy)
    else:
        floor = reference_acc - max_accuracy_drop / 100.0

        def key(p):
            feasible = p.removes and p.accuracy >= floor - 1e-12
            return (feasible, p.flops_speedup, p.accuracy) if feasible else (False, p.accuracy, p.flops_speedup)
    return key


# ----- evaluation ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def temporary_eta(model, eta):
    """Set `model.eta` in place for the duration of the block, restoring the exact original values."""
    saved = model.eta.detach().clone()
    with torch.no_grad():
        model.eta.copy_(torch.as_tensor(list(eta), dtype=model.eta.dtype))
    try:
        yield model
    finally:
        with torch.no_grad():
            model.eta.copy_(saved)


class Evaluator:
    """Evaluates threshold settings on a fixed set of examples, caching by eta. Silent: the points are
    results, printed once as a table by the caller (progress bars show on a terminal)."""

    def __init__(self, model, tokenizer, texts, labels, cut: Cut | int, batch_size: int = 64, pairs=None):
        self.model, self.tokenizer, self.cut, self.batch_size = model, tokenizer, Cut.of(cut), batch_size
        self.base_eta = [float(e) for e in model.eta.detach()]
        # Sort by token length so batches carry little padding (results do not depend on the order).
        lengths = [len(ids) for ids in encode_rows(tokenizer, texts, self.cut.max_length, pairs,
                                                   self.cut.truncation).ids]
        order = np.argsort(lengths, kind="stable")
        self.texts = [texts[i] for i in order]
        self.pairs = None if pairs is None else [pairs[i] for i in order]
        self.labels = np.asarray(labels)[order]
        self.cache: dict = {}
        self.evaluations = 0

    def evaluate(self, layer_scales, label: str, kind: str, scale: float | None = None) -> SweepPoint:
        eta = scaled_eta(self.base_eta, layer_scales)
        key = tuple(eta)
        if key not in self.cache:
            with temporary_eta(self.model, eta):
                result = evaluate_adaptive(self.model, self.tokenizer, self.texts, self.labels, self.cut,
                                           batch_size=self.batch_size, pairs=self.pairs)
            self.cache[key] = result
            self.evaluations += 1
        r = self.cache[key]
        return SweepPoint(label, kind, scale, [float(s) for s in layer_scales], eta, r.accuracy, r.flops_speedup,
                          r.kept_per_layer, r.kept_fraction_per_layer, r.examples)


def global_sweep(evaluator: Evaluator, scales) -> list:
    points = []
    layers = len(evaluator.base_eta)
    for s in progress(list(scales), "sweep"):
        if s == 0:
            points.append(evaluator.evaluate([0.0] * layers, "no removal (s=0)", "no-removal", 0.0))
        else:
            points.append(evaluator.evaluate([s] * layers, f"global s={s:g}", "global", float(s)))
    return points


def refine_per_layer(evaluator: Evaluator, start: SweepPoint, key: Callable, multipliers=DEFAULT_MULTIPLIERS,
                     passes: int = 2) -> tuple:
    """Greedy coordinate search on one layer's scale at a time. Returns (best point, tried points, steps)."""
    best, tried, steps = start, [], []
    seen = {tuple(start.eta)}
    layers = len(start.layer_scales)
    for pass_index in range(passes):
        improved = False
        for layer in progress(range(layers), f"refine (pass {pass_index + 1})"):
            for m in multipliers:
                scales = list(best.layer_scales)
                scales[layer] = scales[layer] * m
                eta = tuple(scaled_eta(evaluator.base_eta, scales))
                if eta in seen:
                    continue  # evaluated already, or clipped at eta = 1: nothing new
                seen.add(eta)
                label = f"refined #{len(tried) + 1}: L{layer} x{m:g}"
                point = evaluator.evaluate(scales, label, "refined")
                tried.append(point)
                if key(point) > key(best):
                    steps.append({"pass": pass_index, "layer": layer, "multiplier": m, "accuracy": point.accuracy,
                                  "flops_speedup": point.flops_speedup, "layer_scales": point.layer_scales})
                    best, improved = point, True
        if not improved:
            break
    return best, tried, steps


# ----- derived checkpoint ----------------------------------------------------------------------------------
def write_derived_checkpoint(source: Path, output: Path, eta: list, record: dict, metrics: dict | None = None,
                             extra_files: Callable[[Path], None] | None = None, force: bool = False) -> Path:
    """Copy `source` to `output` (atomically) with eta replaced in adapler_heads.safetensors and
    adapler_config.json, and `record` stored as the config's `calibration`. `source` is only read; an
    earlier checkpoint at `output` is replaced only with `force`; an output overlapping the source, or a
    folder that is not a checkpoint, never (`adapler_export.storage.atomic_directory`)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, output = Path(source).resolve(), Path(output).resolve()
    if not all(0.0 < e <= ETA_MAX for e in eta):
        raise AdaplerError(f"a calibrated eta must remove tokens at every layer (0 < eta <= 1), got {eta}")
    with atomic_directory(output, kind="checkpoint", force=force, inputs=[source]) as tmp:
        for item in source.iterdir():
            if item.name in (ADAPLER_HEADS, ADAPLER_CONFIG) or item.name == CALIBRATION_SUBDIR:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        with safe_open(str(source / ADAPLER_HEADS), framework="pt") as handle:
            metadata = handle.metadata() or {}
            heads = {k: handle.get_tensor(k) for k in handle.keys()}
        if heads["eta"].shape != (len(eta),):
            raise AdaplerError(f"{source / ADAPLER_HEADS}: eta has shape {tuple(heads['eta'].shape)}, "
                               f"calibration produced {len(eta)} values")
        heads["eta"] = torch.tensor(eta, dtype=heads["eta"].dtype)
        save_file(heads, str(tmp / ADAPLER_HEADS), metadata={**metadata, "calibrated": "1"})
        config = json.loads((source / ADAPLER_CONFIG).read_text())
        config["eta"] = [float(v) for v in heads["eta"]]
        if metrics is not None:
            config["metrics"] = metrics
        config["calibration"] = record
        (tmp / ADAPLER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if extra_files is not None:
            extra_files(tmp)
    return output


# ----- the whole calibration ----------------------------------------------------------------------------------
def check_options(counts, optional_counts=(), data_dir=None) -> None:
    """The option checks calibrate and quantize share: (flag, value, lowest) integers (`optional_counts`:
    None = not given) and an existing --data-dir."""
    for flag, value, low in list(counts) + [c for c in optional_counts if c[1] is not None]:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise AdaplerError(f"{flag} must be an integer >= {low}, got {value!r}")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise AdaplerError(f"--data-dir {data_dir} is not a folder")


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class CalibrateOptions:
    target_speedup: float | None = None
    max_accuracy_drop: float | None = None  # accuracy points
    reference: str = "no-removal"
    data_dir: str | None = None
    split: str = "dev"  # what to calibrate on: "dev", or "unseen-train" (training examples it never trained on)
    samples: int | None = None  # examples of that split (None: all)
    scales: list | None = None
    num_scales: int = 20
    refine: bool = True
    multipliers: tuple = DEFAULT_MULTIPLIERS
    refine_passes: int = 2
    batch_size: int = 64
    measure: bool = False
    measure_samples: int = 64
    measure_repeats: int = 5
    threads: int = 1  # ONNX Runtime intra-op threads while measuring
    report_dir: str | None = None  # where calibration.json + plots go when no checkpoint is written
    force: bool = False  # replace an earlier calibrated checkpoint (or report) at the output place

    @property
    def has_target(self) -> bool:
        return self.target_speedup is not None or self.max_accuracy_drop is not None

    def validate(self) -> "CalibrateOptions":
        """Every option, checked before any work: each bad one is a one-line AdaplerError."""
        if self.target_speedup is not None and self.max_accuracy_drop is not None:
            raise AdaplerError("give at most one of --target-speedup and --max-accuracy-drop")
        if self.target_speedup is not None:
            check_target_speedup(self.target_speedup)
        if self.max_accuracy_drop is not None:
            check_accuracy_drop(self.max_accuracy_drop)
        if self.split not in CALIBRATE_SPLITS:
            raise AdaplerError(f"--split must be one of {', '.join(CALIBRATE_SPLITS)}, got {self.split!r}")
        if self.reference not in REFERENCES:
            raise AdaplerError(f"--reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.has_target and self.report_dir is not None:
            raise AdaplerError("--report-dir is for sweeps without a target; with a target the report goes into "
                               f"the calibrated checkpoint's {CALIBRATION_SUBDIR}/ folder")
        check_options([("--num-scales", self.num_scales, 3), ("--measure-samples", self.measure_samples, 1),
                       ("--repeats", self.measure_repeats, 1), ("--threads", self.threads, 1),
                       ("batch_size", self.batch_size, 1), ("refine_passes", self.refine_passes, 1)],
                      [("--samples", self.samples, 1)], self.data_dir)
        if self.scales is not None and (not self.scales or not all(_finite(s) and s >= 0 for s in self.scales)):
            raise AdaplerError(f"--scales must be numbers >= 0 (0 = no removal), got {self.scales!r}")
        if not self.multipliers or not all(_finite(m) and m > 0 for m in self.multipliers):
            raise AdaplerError(f"refinement multipliers must be positive numbers, got {self.multipliers!r}")
        return self


@dataclass
class CalibrationResult:
    record: dict
    points: list
    chosen: SweepPoint | None
    checkpoint: Path | None
    report_dir: Path
    files: dict = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.points, self.chosen)


def format_table(points: list, chosen: SweepPoint | None = None) -> str:
    """The sweep as a text table with fixed-width columns (one per layer for the kept tokens, so the
    values of a layer line up whatever their digits): global points by speed, then refined ones."""
    layers = max((len(p.kept_per_layer) for p in points), default=0)
    measured = any(p.measured_speedup is not None for p in points)
    columns = [("", 3, "<"), ("point", 30, "<"), ("acc %", 8, ">"), ("FLOPs x", 9, ">")]
    columns += [(f"L{k}", 7, ">") for k in range(layers)]
    if measured:
        columns += [("ms", 9, ">"), ("meas x", 8, ">"), ("vs full", 8, ">")]

    def line(cells) -> str:
        return "".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, columns))

    lines = [line(name for name, _, _ in columns)]
    for p in sorted(points, key=lambda p: (p.kind == "refined", p.flops_speedup)):
        cells = [("*" if p is chosen else " ") + ("P" if p.pareto else " "), p.label[:29],
                 f"{p.accuracy * 100:.2f}", f"{p.flops_speedup:.2f}", *(f"{k:.1f}" for k in p.kept_per_layer)]
        if measured:
            cells += [f"{p.measured_ms:.2f}", f"{p.measured_speedup:.2f}", f"{p.measured_speedup_vs_full_graph:.2f}"] \
                if p.measured_speedup is not None else ["-"] * 3
        lines.append(line(cells))
    note = "   * chosen, P Pareto front (accuracy vs FLOPs speedup); L0..: mean tokens each layer runs on"
    if measured:
        note += "; measured: ONNX Runtime, batch 1, vs the keep-all chain and vs one full graph"
    lines.append(note)
    return "\n".join(lines)


def default_output_name(source: Path, options: CalibrateOptions) -> str:
    if options.target_speedup is not None:
        return f"{source.name}-cal-x{options.target_speedup:g}"
    return f"{source.name}-cal-drop{options.max_accuracy_drop:g}"


def _versions() -> dict:
    import onnxruntime
    import transformers

    from adapler_export import __version__

    return {"adapler_export": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__}


def _refine(evaluator: Evaluator, chosen: SweepPoint, options: CalibrateOptions, ref_acc: float, log) -> tuple:
    """(best point, points tried, the refinement record)."""
    refinement = {"enabled": bool(options.refine), "multipliers": list(options.multipliers),
                  "evaluations": 0, "improved": False, "steps": []}
    if not options.refine:
        return chosen, [], refinement
    before = evaluator.evaluations
    key = objective(options.target_speedup, options.max_accuracy_drop, ref_acc)
    log(f"per-layer refinement from {chosen.label} ({len(options.multipliers)} multipliers per layer, "
        f"<= {options.refine_passes} passes)")
    best, tried, steps = refine_per_layer(evaluator, chosen, key, options.multipliers, options.refine_passes)
    refinement.update(evaluations=evaluator.evaluations - before, improved=best is not chosen, steps=steps,
                      start={"label": chosen.label, "accuracy": chosen.accuracy, "flops_speedup": chosen.flops_speedup})
    log(f"refinement paid: {chosen.accuracy * 100:.2f}% / {chosen.flops_speedup:.2f}x -> {best.accuracy * 100:.2f}% / "
        f"{best.flops_speedup:.2f}x" if best is not chosen else
        "refinement did not pay against the target: keeping the global point")
    return best, tried, refinement


def calibrate(ckpt_name, output: str | None = None, options: CalibrateOptions | None = None,
              log=print) -> CalibrationResult:
    """Sweep, select, refine, measure (optionally), write the derived checkpoint + report.

    Every argument and the output place are checked first (before the checkpoint is loaded)."""
    options = (options or CalibrateOptions()).validate()
    has_target = options.has_target
    if output is not None and not has_target:
        raise AdaplerError("--output names the calibrated checkpoint: give --target-speedup or --max-accuracy-drop")
    source = resolve_checkpoint(str(ckpt_name))
    if has_target:
        out_ckpt = resolve_output_dir(output, "checkpoints") if output else \
            source.parent / default_output_name(source, options)
        report_dir = out_ckpt / CALIBRATION_SUBDIR
        check_output_dir(out_ckpt, "checkpoint", options.force, inputs=[source])
    else:
        out_ckpt = None
        report_dir = Path(options.report_dir).expanduser().resolve() if options.report_dir else \
            resolve_output_dir(source.name, "calibration")
        check_output_dir(report_dir, "calibration report", options.force, [source])

    ckpt = load_checkpoint(source)
    model, config = ckpt.model, ckpt.config
    examples = load_dev(config.task, options.data_dir, options.samples) if options.split == "dev" else \
        load_unseen_train(config.task, options.data_dir, config.data, config.training, options.samples)
    base_eta = [float(e) for e in model.eta.detach()]
    scales = sorted(set(float(s) for s in options.scales)) if options.scales else default_scales(base_eta,
                                                                                                 options.num_scales)
    if 1.0 not in scales:
        scales = sorted(scales + [1.0])
    if 0.0 not in scales:
        scales = [0.0] + scales
    log(f"calibrating {source} on {len(examples)} {options.split} examples ({examples.source}); learned eta "
        f"{' '.join(f'{e:.3f}' for e in base_eta)}; {len(scales)} global scales")
    evaluator = Evaluator(model, ckpt.tokenizer, examples.texts, examples.labels, config.cut, options.batch_size,
                          pairs=examples.pairs)
    points = global_sweep(evaluator, scales)
    ref_acc = reference_accuracy(points, options.reference)

    chosen, refinement = None, None
    if has_target:
        chosen = select_point(points, options.target_speedup, options.max_accuracy_drop, ref_acc)
        log(f"best global point: {chosen.label} (accuracy {chosen.accuracy * 100:.2f}%, "
            f"{chosen.flops_speedup:.2f}x)")
        chosen, tried, refinement = _refine(evaluator, chosen, options, ref_acc, log)
        points += tried
    mark_pareto(points)

    measurement = None
    if options.measure:
        from .measure import measure_points

        to_measure = [p for p in points if p.kind != "refined"] + ([chosen] if chosen and chosen.kind == "refined"
                                                                   else [])
        measurement = measure_points(model, ckpt.tokenizer, examples.texts, config.cut, to_measure,
                                     samples=options.measure_samples, repeats=options.measure_repeats,
                                     threads=options.threads, log=log, pairs=examples.pairs)

    original = next(p for p in points if p.kind == "global" and p.scale == 1.0)
    no_removal = next(p for p in points if p.kind == "no-removal")
    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(source), "digest": checkpoint_digest(source), "eta": base_eta,
                   "metrics": config.metrics},
        "data": {"task": config.task, "split": options.split, "source": examples.source, "sha256": examples.sha256,
                 "examples": len(examples), "subset_seed": DEV_SUBSET_SEED if options.samples else None},
        "target": (None if not has_target else
                   {"kind": "speedup", "flops_speedup": options.target_speedup} if options.target_speedup is not None
                   else {"kind": "max_accuracy_drop", "points": options.max_accuracy_drop,
                         "reference": options.reference, "reference_accuracy": ref_acc}),
        "reference": {"no_removal_accuracy": no_removal.accuracy, "checkpoint_accuracy": original.accuracy,
                      "checkpoint_flops_speedup": original.flops_speedup},
        "speedup_definition": "FLOPs(full model on live tokens) / FLOPs(adaptive model incl. CPs), from the "
                              "lengths hard removal runs (adapler_export.flops)",
        "chosen": chosen.to_dict() if chosen else None,
        "eta": chosen.eta if chosen else base_eta,
        "refinement": refinement,
        "measurement": measurement,
        "points": [p.to_dict() for p in points],
        "note": ("selected and reported on the same dev examples: optimistic; check on held-out data"
                 if options.split == "dev" else "selected on training examples the checkpoint never trained on: "
                 "dev is left a held-out test"),
        "tools": _versions(),
    }
    files = {"json": report_dir / REPORT_FILE, "tradeoff_png": report_dir / "tradeoff.png",
             "kept_png": report_dir / "kept_per_layer.png"}

    def write_report(folder: Path) -> None:
        from .plots import plot_kept_per_layer, plot_tradeoff

        folder.mkdir(parents=True, exist_ok=True)
        plot_tradeoff(points, chosen, folder / files["tradeoff_png"].name, record["target"], original=original)
        plot_kept_per_layer(original, chosen, folder / files["kept_png"].name,
                            mean_input_length=_mean_input(evaluator))
        (folder / REPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")

    if has_target:
        metrics = dict(config.metrics or {})
        metrics.update(accuracy=chosen.accuracy, flops_speedup=chosen.flops_speedup,
                       kept_per_layer=chosen.kept_per_layer, kept_fraction_per_layer=chosen.kept_fraction_per_layer,
                       examples=chosen.examples, source="calibration")
        write_derived_checkpoint(source, out_ckpt, chosen.eta, {k: v for k, v in record.items() if k != "points"},
                                 metrics=metrics, extra_files=lambda tmp: write_report(tmp / CALIBRATION_SUBDIR),
                                 force=options.force)
    else:
        check_output_dir(report_dir, "calibration report", options.force, [source])  # again: the sweep took a while
        with atomic_directory(report_dir) as tmp:
            write_report(tmp)
    return CalibrationResult(record, points, chosen, out_ckpt, report_dir, files)


def _mean_input(evaluator: Evaluator) -> float | None:
    result = next(iter(evaluator.cache.values()), None)
    return None if result is None else result.mean_input_length
