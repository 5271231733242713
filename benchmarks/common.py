"""Helpers shared by the benchmark scripts (bench_cpu.py, bench_gpu.py, bench_one_graph.py, ort_variants.py).

Workloads, batching, the export cache, round-robin timing, FLOPs, memory probes, machine description, the
command-line options the scripts share, result paths, JSON output and the plot. The scripts decide what to
measure.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_cpu.py` from a checkout
    sys.path.insert(0, str(REPO))

LONG_MIN, LONG_MAX = 256, 512
PAIR_WORKLOADS = ("mrpc", "rte")  # dev splits of sentence-pair tasks: workloads for pair models only
RESULTS_DIR = REPO / "docs" / "results"


# ----------------------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """Unpadded examples (token ids with [CLS]/[SEP]) and, where known, labels; for sentence pairs also each
    example's token types (a pair model's third input)."""
    name: str
    examples: list  # list of np.int32 arrays
    labels: np.ndarray | None
    max_length: int
    description: str = ""
    type_ids: list | None = None  # list of np.int32 arrays for sentence pairs; None: single texts

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(e) for e in self.examples], dtype=np.int64)

    def summary(self) -> dict:
        lengths = self.lengths
        return {"name": self.name, "examples": len(self.examples), "max_length": self.max_length,
                "mean_length": float(lengths.mean()), "min_length": int(lengths.min()),
                "max_length_seen": int(lengths.max()), "description": self.description}


def sst2_dev(data_dir: str | None = None):
    """The SST-2 dev split (`adapler_export.data`: a GLUE folder, default the task's), in dataset order."""
    from adapler_export.data import load_dev

    return load_dev("sst2", data_dir)


def dev_workload(tokenizer, dev, cut, limit: int | None = None, task: str = "sst2") -> Workload:
    """The first `limit` examples of the dev split `dev` (`sst2_dev`, or another task's; sentence pairs with
    their token types), unpadded, with their labels, encoded by the library's one tokenisation rule
    (`serving.tokenization.encode_rows`: what the models were trained and are served with); `cut`: the
    checkpoint's max length and truncation rule (`config.cut`), or a bare max length (cut by "head")."""
    from adapler_export.serving.tokenization import Cut, encode_rows

    cut = Cut.of(cut)
    texts, labels = dev.texts[:limit], dev.labels[:limit]
    pairs = None if dev.pairs is None else dev.pairs[:limit]
    rows = encode_rows(tokenizer, texts, cut.max_length, pairs, cut.truncation)
    examples = [np.asarray(ids, dtype=np.int32) for ids in rows.ids]
    type_ids = None if rows.type_ids is None else [np.asarray(t, dtype=np.int32) for t in rows.type_ids]
    what = "sentence pairs" if pairs is not None else "examples"
    return Workload(f"{task}-dev", examples, labels, cut.max_length,
                    f"{task} dev {what} ({dev.source}), tokenized with max_length {cut.max_length} "
                    f"({cut.truncation}), dataset order", type_ids)


def long_workload(tokenizer, texts: list, count: int, min_len: int = LONG_MIN, max_len: int = LONG_MAX,
                  seed: int = 0) -> Workload:
    """Consecutive `texts` (the dev sentences) joined into documents of L wordpieces, L ~ U[min_len, max_len]
    ([CLS]/[SEP] included), cycling through them. Deterministic for a seed."""
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    rng = np.random.default_rng(seed)
    examples, cursor = [], 0
    for _ in range(count):
        target = int(rng.integers(min_len, max_len + 1))
        body = []
        while len(body) < target - 2:
            body.extend(pieces[cursor % len(pieces)])
            cursor += 1
        examples.append(np.asarray([cls_id] + body[: target - 2] + [sep_id], dtype=np.int32))
    return Workload(f"long-{min_len}-{max_len}", examples, None, max_len,
                    f"consecutive SST-2 dev sentences joined to {min_len}-{max_len} wordpieces (uniform, seed {seed})")


def workloads_from_args(args, ckpt, long_max_length: int = LONG_MAX) -> list:
    """`workloads_from_names` for the options of `add_workload_args` and a checkpoint."""
    return workloads_from_names(args.workloads, ckpt.tokenizer, args.data_dir, ckpt.config.cut,
                                ckpt.model.config.max_position_embeddings, args.sst2_examples, args.long_examples,
                                long_max_length)


def workloads_from_names(names: str, tokenizer, data_dir: str | None, cut, max_positions: int,
                         sst2_examples: int | None = None, long_examples: int = 32,
                         long_max_length: int = LONG_MAX) -> list:
    """The comma-separated workloads of a bench command line ("sst2", "long" from the SST-2 dev split in
    `data_dir`; "imdb", "mrpc", "rte" from those tasks' dev splits); long texts are capped at the model's
    position embeddings. A single-text workload runs on a pair model with all token types 0. `cut`: the
    checkpoint's max length and truncation rule (`config.cut`; a bare max length: "head")."""
    import dataclasses

    from adapler_export.serving.tokenization import Cut

    cut = Cut.of(cut)
    capped = dataclasses.replace(cut, max_length=min(cut.max_length, max_positions))
    workloads = []
    for name in [n for n in names.split(",") if n]:
        if name == "sst2":
            workloads.append(dev_workload(tokenizer, sst2_dev(data_dir), cut, sst2_examples))
        elif name == "long":
            max_len = min(long_max_length, max_positions)
            workloads.append(long_workload(tokenizer, sst2_dev(data_dir).texts, long_examples, min(LONG_MIN, max_len),
                                           max_len))
        elif name == "imdb":  # real long documents: the first `long_examples` IMDB dev reviews
            from adapler_export.data import load_dev

            workloads.append(dev_workload(tokenizer, load_dev("imdb"), capped, long_examples, task="imdb"))
        elif name in PAIR_WORKLOADS:  # a GLUE sentence-pair task's dev split (a pair model's own task)
            from adapler_export.data import load_dev

            workloads.append(dev_workload(tokenizer, load_dev(name), capped, sst2_examples, task=name))
        else:
            raise SystemExit(f"unknown workload {name!r} (sst2, long, imdb, {', '.join(PAIR_WORKLOADS)})")
    return workloads


class Batch(tuple):
    """One padded batch. Unpacks as ``(input_ids, attention_mask, example indices)``, as single-text code reads
    it; ``inputs`` is what a model's ``run`` takes: (ids, mask) and, for sentence pairs, the token types."""

    def __new__(cls, ids, mask, index, types=None):
        batch = super().__new__(cls, (ids, mask, index))
        batch.types = types
        return batch

    @property
    def inputs(self) -> tuple:
        return self[:2] + (() if self.types is None else (self.types,))


def batch_inputs(batch) -> tuple:
    """The model inputs of a `Batch`, or of a plain (ids, mask, index) tuple (e.g. bench_gpu's device copies)."""
    return batch.inputs if isinstance(batch, Batch) else tuple(batch[:2])


def make_batches(workload: Workload, batch: int, pad_id: int, sort: bool = False, order=None) -> list:
    """[Batch(input_ids [B,S], attention_mask [B,S], example indices[, token types [B,S]])], right-padded to the
    batch maximum (token types padded with 0). Dataset order by default (what a server sees); `sort` groups
    similar lengths (less padding); `order` (example indices) is the order itself, so that workloads of the same
    examples cut differently (shorter max lengths) get batches of the same examples."""
    if order is None:
        order = np.argsort(workload.lengths, kind="stable") if sort else np.arange(len(workload.examples))
    batches = []
    for start in range(0, len(order), batch):
        index = order[start: start + batch]
        rows = [workload.examples[i] for i in index]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), width), dtype=np.int32)
        types = None if workload.type_ids is None else np.zeros((len(rows), width), dtype=np.int32)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
            if types is not None:
                types[r, : len(row)] = workload.type_ids[index[r]]
        batches.append(Batch(ids, mask, index, types))
    return batches


# ----------------------------------------------------------------------------------------------- exports
def fp32_specs(model) -> list:
    """The `SegmentSpec`s of the model's fp32 segment graphs (what the exports below contain)."""
    from adapler_export.specs import segment_specs

    return segment_specs(model.num_layers, model.config.hidden_size, model.config.num_labels, "fp32",
                         model.text_pair)


def onnxruntime_chain(model, segment_paths: list, threads: int | None):
    """The exported segments in the library's ONNX Runtime backend (the one chain, the host link), at the
    model's thresholds, on the CPU."""
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(segment_paths, fp32_specs(model), [float(e) for e in model.eta.detach()],
                              device="cpu", threads=threads)


def full_graph_inputs(session) -> list:
    """The input names of a whole-model graph session (full.onnx, model.onnx), read off the graph: (input_ids,
    attention_mask[, token_type_ids]) in export order."""
    return [i.name for i in session.get_inputs()]


def plain_quantize_dynamic(src: Path, dst: Path) -> Path:
    """`quantize_dynamic` on the file as it is (what a user tries first): int8 weights (per tensor), activations
    quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def export_models(ckpt, work_dir: Path, log=print) -> dict:
    """Segments (adaptive) and full.onnx (baseline) for a checkpoint, cached in `work_dir` by checkpoint
    digest and tool versions. Both exports are validated against PyTorch when written."""
    import onnx
    import onnxruntime
    import torch

    from adapler_export.baseline import FULL_FILE, export_full_onnx
    from adapler_export.checkpoint import checkpoint_digest
    from adapler_export.segments import export_segments

    model = ckpt.model
    # "format" changes when the export itself does (3: the CP distribution is one Softmax), so caches re-export.
    stamp = {"digest": checkpoint_digest(ckpt.path), "torch": torch.__version__, "onnx": onnx.__version__,
             "onnxruntime": onnxruntime.__version__, "format": 3}
    work_dir = Path(work_dir) / stamp["digest"]
    stamp_path = work_dir / "stamp.json"
    specs = fp32_specs(model)
    segment_paths = [work_dir / "onnx" / s.file_name for s in specs]
    full_path = work_dir / "onnx" / FULL_FILE
    cached = stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and full_path.is_file() \
        and all(p.is_file() for p in segment_paths)
    if not cached:
        log(f"exporting {len(specs)} segments + {FULL_FILE} to {work_dir} (validated against PyTorch)")
        export_segments(model, work_dir / "onnx", "fp32")
        export_full_onnx(model, full_path)
        stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    else:
        log(f"using cached exports in {work_dir}")
    return {"segments": segment_paths, "full": full_path, "digest": stamp["digest"], "dir": work_dir}


# ----------------------------------------------------------------------------------------------- timing
@dataclass
class PairTiming:
    """Per repeat, per batch wall-clock seconds of the adaptive (a) and full (f) models."""
    a: np.ndarray  # [repeats, batches]
    f: np.ndarray

    @property
    def a_totals(self) -> np.ndarray:
        return self.a.sum(axis=1)

    @property
    def f_totals(self) -> np.ndarray:
        return self.f.sum(axis=1)

    def summary(self, examples: int) -> dict:
        ratios = self.f_totals / self.a_totals
        a_med, f_med = float(np.median(self.a_totals)), float(np.median(self.f_totals))
        return {
            "adaptive_s": a_med, "full_s": f_med,
            "adaptive_ms_per_example": 1e3 * a_med / examples, "full_ms_per_example": 1e3 * f_med / examples,
            "adaptive_s_repeats": [float(v) for v in self.a_totals],
            "full_s_repeats": [float(v) for v in self.f_totals],
            "wallclock_speedup": float(np.median(ratios)),
            "wallclock_speedup_of_medians": f_med / a_med,
            "wallclock_speedup_min_max": [float(ratios.min()), float(ratios.max())],
            # The same ratio from per-batch medians (robust to a slow outlier batch in one repeat).
            "wallclock_speedup_batch_medians": float(np.median(self.f, axis=0).sum() / np.median(self.a, axis=0).sum()),
        }


def perf_counter_timer(sync=None):
    """`timer(run, *inputs) -> seconds` on the host clock; `sync()` (e.g. CUDA synchronisation) is called
    before each clock read."""
    sync = sync or (lambda: None)

    def timed(run, *inputs):
        sync()
        start = time.perf_counter()
        run(*inputs)
        sync()
        return time.perf_counter() - start
    return timed


def time_round_robin(runners: dict, batches: list, repeats: int, warmup: int, sync=None, timer=None) -> dict:
    """{name: [repeats, batches] seconds}: warm up, then time every batch by every runner `repeats` times,
    the runner that goes first rotating batch by batch and repeat by repeat, so drift (thermal, other load)
    hits all alike. `timer(run, *inputs) -> seconds` (inputs: `batch_inputs`; default: `perf_counter_timer(sync)`);
    `sync()` also ends the warm-up. The GC is paused while timing."""
    names = list(runners)
    sync = sync or (lambda: None)
    timer = timer or perf_counter_timer(sync)
    # Warm-up: the first `warmup` batches plus the largest one (arenas grow to their peak size now).
    largest = max(range(len(batches)), key=lambda i: math.prod(batches[i][0].shape))
    for i in sorted(set(range(min(warmup, len(batches)))) | {largest}):
        for name in names:
            runners[name](*batch_inputs(batches[i]))
    sync()
    times = {name: np.zeros((repeats, len(batches))) for name in names}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for i, batch in enumerate(batches):
                first = (r + i) % len(names)
                for name in names[first:] + names[:first]:
                    times[name][r, i] = timer(runners[name], *batch_inputs(batch))
    finally:
        if enabled:
            gc.enable()
    return times


def time_interleaved(run_a, run_f, batches: list, repeats: int, warmup: int, sync=None, timer=None) -> PairTiming:
    """`time_round_robin` of the adaptive (a) and the full (f) model: they alternate which goes first."""
    times = time_round_robin({"a": run_a, "f": run_f}, batches, repeats, warmup, sync, timer)
    return PairTiming(times["a"], times["f"])


# ----------------------------------------------------------------------------------------------- FLOPs
def flops_summary(batches: list, kept_per_batch: list, config) -> dict:
    """FLOPs speedup from the tokens each layer really ran on.

    `flops_speedup`: the paper's definition (adapler_export.flops): full model on each example's live
    tokens vs the adaptive model on the tokens it kept, padding ignored.
    `padded_flops_speedup`: what the hardware executes: both models on the padded batch shapes
    (full: B x S_max every layer; adaptive: B x S'_k after link k, CP_k on the tokens entering it).
    kept_per_batch: per batch, the `kept` list of the adaptive run ([B, S'_k] positions, -1 padding).
    """
    from adapler_export.flops import cp_flops, flops_speedup, layer_flops

    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    input_lengths, kept_lengths = [], []
    full_padded = adaptive_padded = 0.0
    for (ids, mask, _), kept in zip(batches, kept_per_batch):
        b, s = mask.shape
        input_lengths.append(mask.sum(1))
        kept_lengths.append(np.stack([(k >= 0).sum(1) for k in kept]))
        full_padded += b * layers * float(layer_flops(s, h, i))
        entering = s
        for k in kept:
            adaptive_padded += b * float(layer_flops(k.shape[1], h, i) + cp_flops(entering, h))
            entering = k.shape[1]
    input_lengths = np.concatenate(input_lengths).astype(np.float64)
    kept_lengths = np.concatenate(kept_lengths, axis=1).astype(np.float64)
    padded_lengths = np.concatenate([np.full(m.shape[0], m.shape[1]) for _, m, _ in batches])
    return {
        "flops_speedup": flops_speedup(input_lengths, kept_lengths, layers, h, i),
        "padded_flops_speedup": full_padded / adaptive_padded,
        "mean_input_length": float(input_lengths.mean()),
        "mean_padded_length": float(padded_lengths.mean()),
        "kept_per_layer": [float(v) for v in kept_lengths.mean(axis=1)],
        "kept_fraction_per_layer": [float(v) for v in (kept_lengths / input_lengths[None]).mean(axis=1)],
        "padded_len_per_layer": [float(np.mean([np.full(m.shape[0], k[j].shape[1]).mean()
                                                for (_, m, _), k in zip(batches, kept_per_batch)]))
                                 for j in range(layers)],
    }


# ----------------------------------------------------------------------------------------------- memory
def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return -1


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """VmHWM: the process's peak resident set since start or the last `reset_peak_rss()`."""
    return _status_kb("VmHWM") / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def physical_cores() -> int | None:
    try:
        cores, current = set(), {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if not line.strip():
                if "core id" in current:
                    cores.add((current.get("physical id"), current["core id"]))
                current = {}
            elif ":" in line:
                key, value = line.split(":", 1)
                current[key.strip()] = value.strip()
        return len(cores) or None
    except OSError:
        return None


def cpu_flags_of_interest() -> list:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))


def memory_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def tool_versions() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "onnx", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    try:
        import adapler_export

        versions["adapler_export"] = adapler_export.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "cpus_available": affinity, "cpu_flags": cpu_flags_of_interest(), "memory_gb": memory_total_gb(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                if k in os.environ},
        "versions": tool_versions(), "git": git_revision(),
    }


def load_average() -> list:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


# ----------------------------------------------------------------------------------------------- command line
def log(message: str) -> None:
    print(message, flush=True)


def int_list(text: str) -> list:
    """argparse type of "1,8,32"."""
    return [int(v) for v in text.split(",") if v]


def add_checkpoint_args(p: argparse.ArgumentParser, result_suffix: str, work_dir: bool = True) -> None:
    """--ckpt, --data-dir, --name, --output-dir (see `output_paths`) and --work-dir (the export cache)."""
    p.add_argument("--ckpt", default="sst2", help="checkpoint name (under $ADAPLER_HOME/checkpoints) or path")
    p.add_argument("--data-dir", default=None, help="GLUE-style SST-2 folder with dev.tsv "
                                                     "(default: $ADAPLER_DATA_DIR/sst2, else ../shared/data/sst2)")
    p.add_argument("--name", default=None,
                   help=f"result name: <output-dir>/<name>{result_suffix}.json (default: ckpt name)")
    p.add_argument("--output-dir", default=None, help="default docs/results (quick mode: a temp folder)")
    if work_dir:
        p.add_argument("--work-dir", default=None, help="export cache (default $ADAPLER_HOME/bench)")


def add_workload_args(p: argparse.ArgumentParser, long_examples: int, repeats: int, warmup: int) -> None:
    """--workloads, --batches (a list), --sst2-examples, --long-examples, --repeats, --warmup."""
    p.add_argument("--workloads", default="sst2,long")
    p.add_argument("--batches", type=int_list, default="1,8,32")
    p.add_argument("--sst2-examples", type=int, default=None,
                   help="first N dev examples of sst2 and of the pair tasks' workloads (default: all)")
    p.add_argument("--long-examples", type=int, default=long_examples)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=warmup, help="warm-up batches (plus the largest batch)")


def add_memory_args(p: argparse.ArgumentParser) -> None:
    """--memory/--no-memory (fresh-process probes), --no-plot and the internal --probe (one probe)."""
    p.add_argument("--memory", dest="memory", action="store_true", default=None, help="default: on unless --quick")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)


def bench_parser(doc: str, result_suffix: str, long_examples: int, repeats: int, warmup: int,
                 export_cache: bool = True, memory_probes: bool = True) -> argparse.ArgumentParser:
    """A bench script's parser with the option groups above (the script adds its own options)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, result_suffix, work_dir=export_cache)
    add_workload_args(p, long_examples, repeats, warmup)
    if memory_probes:
        add_memory_args(p)
    return p


def apply_quick(args, sst2_examples: int, long_examples: int, repeats: int) -> None:
    """--quick, a smoke run: `sst2_examples` sentences (unless given), at most `long_examples` long texts,
    `repeats` repeats and as many warm-up batches; memory probes only where asked for."""
    if args.quick:
        args.sst2_examples = args.sst2_examples or sst2_examples
        args.long_examples = min(args.long_examples, long_examples)
        args.repeats = args.warmup = repeats
    if hasattr(args, "memory"):
        args.memory = (not args.quick) if args.memory is None else args.memory


def output_paths(args, ckpt_path: Path, suffix: str) -> tuple:
    """(result name, JSON path, PNG path): <output-dir>/<name><suffix>.json and .png. The name defaults to
    the checkpoint's (+ "-quick"), the folder to docs/results (quick mode: $TMPDIR/adapler-bench)."""
    name = args.name or ckpt_path.name + ("-quick" if args.quick else "")
    out_dir = Path(args.output_dir) if args.output_dir else \
        (Path(tempfile.gettempdir()) / "adapler-bench" if args.quick else RESULTS_DIR)
    return name, out_dir / f"{name}{suffix}.json", out_dir / f"{name}{suffix}.png"


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass
class BenchRun:
    """A CPU bench command line: its checkpoint, where its results go, its export cache, and the clock and
    the load when it started."""
    ckpt: object
    name: str
    json_path: Path
    png_path: Path
    work_dir: Path
    started: float = field(default_factory=time.time)
    load_start: list = field(default_factory=lambda: load_average())


def start_run(args, suffix: str) -> BenchRun:
    """Load the checkpoint of `add_checkpoint_args`' options, create the export cache."""
    import torch  # noqa: F401  (before onnxruntime: the library's import order)

    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.storage import adapler_home

    ckpt = load_checkpoint(args.ckpt)
    work_dir = Path(args.work_dir) if args.work_dir else adapler_home() / "bench"
    work_dir.mkdir(parents=True, exist_ok=True)
    return BenchRun(ckpt, *output_paths(args, ckpt.path, suffix), work_dir)


def result_header(name: str, script: str, argv, quick: bool) -> dict:
    """The first keys of every result file."""
    return {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)]),
            "quick": quick}


def run_circumstances(run: BenchRun, load_end: list) -> dict:
    """The machine, the load before and after, and how long the run took."""
    return {"machine": machine_info(), "load_average_start": run.load_start, "load_average_end": load_end,
            "seconds": round(time.time() - run.started, 1)}


def run_notes(load_start: list, load_end: list, quick: bool) -> list:
    """Quick-mode and busy-machine warnings, as in every CPU result."""
    notes = []
    cpus = os.cpu_count() or 1
    if quick:
        notes.append("QUICK MODE: few examples, 1 repeat: a smoke test, not a measurement")
    busy = max(load_start[:1] + load_end[:1] or [0])
    if busy > 0.5 * cpus:
        notes.append(f"machine was busy (1-min load average {busy} on {cpus} CPUs): timings are contaminated")
    return notes


def save_result(result: dict, json_path: Path, png_path: Path, plot: list | None, title: str) -> None:
    """Write the JSON and, given rows for `plot_rows`, the plot; say where they are."""
    write_json(json_path, result)
    if plot is not None:
        png = plot_rows(plot, png_path, title)
        if png:
            log(f"plot: {png}")
    log(f"results: {json_path}")


# ----------------------------------------------------------------------------------------------- memory probes
PROBE = "PROBE "  # the line a probe process answers with


def probe_in_fresh_process(script: Path, spec: dict, ids, mask, work_dir: Path, timeout: int) -> tuple:
    """Run `script --probe SPEC` in a fresh Python process (a peak memory of its own) on the batch
    (ids, mask), passed in a file named by spec["batch_file"]: (its answer, None), or (None, the end of its
    error output)."""
    with tempfile.TemporaryDirectory(prefix="probe-", dir=work_dir) as tmp:
        batch_file = Path(tmp) / "batch.npz"
        np.savez(batch_file, input_ids=ids, attention_mask=mask)
        spec = {**spec, "batch_file": str(batch_file)}
        proc = subprocess.run([sys.executable, str(script), "--probe", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout)
    answers = [ln for ln in proc.stdout.splitlines() if ln.startswith(PROBE)]
    if proc.returncode != 0 or not answers:
        return None, proc.stderr.strip()[-300:]
    return json.loads(answers[-1][len(PROBE):]), None


def answer_probe(measure, spec: str) -> int:
    """In the probe process: print `measure(spec)` for `probe_in_fresh_process` to read."""
    print(PROBE + json.dumps(measure(json.loads(spec))), flush=True)
    return 0


def probe_batch(spec: dict) -> tuple:
    """In the probe process: the (input_ids, attention_mask) batch of the spec."""
    data = np.load(spec["batch_file"])
    return data["input_ids"], data["attention_mask"]


def peak_rss_while(run) -> dict:
    """Peak resident memory (VmHWM) while `run()` runs, over the RSS just before it (after a GC).

    The peak is at least the RSS it started from. Linux reads its RSS counters approximately (per-CPU batched
    counters, a few dozen pages per CPU), so VmHWM read after a run that freed memory can sit a fraction of a MB
    below the VmRSS read before it (seen in CI: -0.09 MB). That is counter lag, not a negative peak: floored at 0."""
    gc.collect()
    base = rss_mb()
    reset_peak_rss()
    run()
    return {"rss_after_load_mb": base, "peak_rss_delta_mb": max(peak_rss_mb() - base, 0.0)}


# ----------------------------------------------------------------------------------------------- output
REQUIRED_ROW_KEYS = ("backend", "device", "batch", "workload", "wallclock_speedup", "flops_speedup",
                     "adaptive_s", "full_s", "examples", "threads")


def write_result(output: str | Path, script: str, argv, fields: dict) -> Path:
    """`<output>.json`: a script's result fields with what produced them (script, its argv, machine, git
    revision); logged, and the path returned."""
    out = Path(output).with_suffix(".json")
    write_json(out, {"script": f"benchmarks/{script}", "argv": sys.argv[1:] if argv is None else argv, **fields,
                     "machine": machine_info(), "git": git_revision()})
    log(f"wrote {out}")
    return out


def write_json(path: Path, data: dict) -> None:
    from adapler_export.storage import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def plot_rows(rows: list, path: Path, title: str) -> Path | None:
    """Bars per backend: wall-clock speedup beside the FLOPs speedups, per workload and batch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    backends = sorted({(r["backend"], r.get("precision", "fp32")) for r in rows})
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.5), squeeze=False)
    for ax, (backend, precision) in zip(axes[0], backends):
        mine = [r for r in rows if r["backend"] == backend and r.get("precision", "fp32") == precision]
        labels, wall, flops, padded = [], [], [], []
        for workload in workloads:
            for r in sorted((r for r in mine if r["workload"] == workload), key=lambda r: r["batch"]):
                labels.append(f"{workload}\nB={r['batch']}")
                wall.append(r["wallclock_speedup"])
                flops.append(r["flops_speedup"])
                padded.append(r.get("padded_flops_speedup") or np.nan)
        x = np.arange(len(labels))
        ax.bar(x - 0.27, wall, 0.27, label="wall-clock (full / adaptive)", color="tab:blue")
        ax.bar(x, flops, 0.27, label="FLOPs (unpadded)", color="tab:orange")
        ax.bar(x + 0.27, padded, 0.27, label="FLOPs (padded shapes)", color="tab:gray")
        for xi, w, fl in zip(x, wall, flops):
            ax.text(xi - 0.27, w, f"{w:.2f}", ha="center", va="bottom", fontsize=7)
            ax.text(xi, fl, f"{fl:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(f"{backend} ({mine[0]['device']}, {precision})" if mine else backend)
        ax.set_ylabel("speedup over the full static model")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def median(values) -> float:
    return float(statistics.median(values))


@dataclass
class Table:
    """A plain-text table for the console."""
    header: list
    rows: list = field(default_factory=list)

    def add(self, *cells):
        self.rows.append([c if isinstance(c, str) else (f"{c:.3g}" if isinstance(c, float) else str(c))
                          for c in cells])

    def render(self) -> str:
        widths = [max(len(str(h)), *(len(r[i]) for r in self.rows)) if self.rows else len(str(h))
                  for i, h in enumerate(self.header)]
        lines = ["  ".join(str(h).rjust(w) for h, w in zip(self.header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in self.rows]
        return "\n".join(lines)
