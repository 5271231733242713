#!/usr/bin/env python
"""Adaptive (AdapLeR segments + links) vs the full static model, side by side, on the CPU.

For every backend (ONNX Runtime: segment graphs + NumPy link vs full.onnx, same session options;
PyTorch: `forward_hard` vs `forward_full`), workload (SST-2 dev; long texts of 256-512 wordpieces) and
batch size (1, 8, 32) it times both models on the same padded batches, interleaved batch by batch, and
reports the wall-clock speedup (full time / adaptive time, median of per-repeat ratios) beside the FLOPs
speedup of the tokens really kept. Plus: peak memory of each model (fresh-process probes), a profile of
the adaptive ONNX Runtime pipeline at batch 1, a JSON file and a PNG plot. See benchmarks/README.md.

    python benchmarks/bench_cpu.py --ckpt sst2                 # final run -> docs/results/sst2-bench.json
    python benchmarks/bench_cpu.py --ckpt /tmp/ah3/checkpoints/ci --quick   # smoke run (seconds)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py; also puts the repository on sys.path)
from common import Table, log  # noqa: E402

RESULT_SUFFIX = "-bench"  # <output-dir>/<name>-bench.json and .png

DEFINITIONS = {
    "wallclock_speedup": "median over repeats of (full-model time / adaptive time) for one pass over the "
                         "workload's batches; both timed on the same batches, interleaved batch by batch",
    "wallclock_speedup_of_medians": "median full time / median adaptive time",
    "wallclock_speedup_batch_medians": "sum of per-batch median full times / same for adaptive",
    "flops_speedup": "adapler_export.flops: full model on each example's live tokens / adaptive model on the "
                     "tokens each layer kept (CPs included, padding ignored: the paper's number)",
    "padded_flops_speedup": "the same on the shapes really executed: B x S_max for the full model, "
                            "B x S'_k after link k for the adaptive one (what padding to the batch max leaves)",
    "efficiency": "wallclock_speedup / flops_speedup (1.0 = the runtime turns every FLOP saved into time)",
    "adaptive_s / full_s": "median seconds for one pass over all batches of the workload",
    "peak_rss_delta_mb": "fresh process per (backend, model, workload, batch): peak resident set (VmHWM) "
                         "while running the workload's largest batch twice, minus the RSS after loading the "
                         "model and opening its sessions (activations, arena growth, link copies; not weights)",
    "python_heap_peak_mb": "tracemalloc peak during the same runs (NumPy arrays and Python objects: the link's "
                           "copies and the outputs handed back; not ONNX Runtime's or PyTorch's own buffers)",
}


def parse_args(argv=None):
    p = common.bench_parser(__doc__, RESULT_SUFFIX, long_examples=64, repeats=5, warmup=8)
    p.add_argument("--backends", default="onnxruntime,pytorch")
    p.add_argument("--long-max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: CPUs available)")
    p.add_argument("--sort", action="store_true", help="batch examples sorted by length (less padding)")
    p.add_argument("--profile", dest="profile", action="store_true", default=None)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-examples", type=int, default=256)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 16 SST-2 sentences, 4 long texts, 1 repeat, 1 warm-up, no memory probes")
    args = p.parse_args(argv)
    common.apply_quick(args, sst2_examples=16, long_examples=4, repeats=1)
    if args.quick:
        args.profile_examples = min(args.profile_examples, 8)
    args.profile = True if args.profile is None else args.profile
    return args


# ----------------------------------------------------------------------------------------------- runners
def make_runners(backend: str, ckpt, exports: dict, threads: int):
    """(adaptive, full) objects with `.run(input_ids, attention_mask) -> BackendOutput`."""
    if backend == "onnxruntime":
        from adapler_export.baseline import FullModelBackend

        return (common.onnxruntime_chain(ckpt.model, exports["segments"], threads),
                FullModelBackend(exports["full"], ckpt.model.num_layers, device="cpu", threads=threads))
    if backend == "pytorch":
        import torch

        from adapler_export.backends.pytorch import PyTorchBackend
        from adapler_export.baseline import PyTorchFullBackend

        torch.set_num_threads(threads)
        return PyTorchBackend(ckpt.model), PyTorchFullBackend(ckpt.model)
    raise SystemExit(f"unknown backend {backend!r} (onnxruntime, pytorch)")


def session_settings(threads: int) -> dict:
    from adapler_export.backends.onnxruntime import session_options

    options = session_options(threads)
    return {"intra_op_num_threads": options.intra_op_num_threads,
            "inter_op_num_threads": options.inter_op_num_threads,
            "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning"),
            "graph_optimization_level": str(options.graph_optimization_level)}


# ----------------------------------------------------------------------------------------------- profile
class _TimedSession:
    """Stands in for an InferenceSession and adds the time of each `run` to a counter."""

    def __init__(self, session, index, counters):
        self._session, self._index, self._counters = session, index, counters

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._session.run(*args, **kwargs)
        self._counters["segment"][self._index] += time.perf_counter() - start
        return out

    def __getattr__(self, name):
        return getattr(self._session, name)


def profile_ort_adaptive(adaptive, full, batches: list, repeats: int) -> dict:
    """Where the adaptive ONNX Runtime pipeline's time goes: segment sessions, links, Python glue.

    The backend's own `run` is executed with its sessions wrapped in timers and its link wrapped likewise
    (so the profile follows whatever the backend does), then compared with the full graph on the same
    batches and with the fixed cost of one session call (each graph at B=1, S=1)."""
    n_seg = len(adaptive.sessions)
    counters = {"segment": np.zeros(n_seg), "link": np.zeros(n_seg - 1), "link_calls": 0}
    seg_tokens = np.zeros(n_seg)
    original_sessions, original_link = adaptive.sessions, adaptive.link

    def timed_link(*a, **kw):
        start = time.perf_counter()
        out = original_link(*a, **kw)
        counters["link"][counters["link_calls"] % (n_seg - 1)] += time.perf_counter() - start
        counters["link_calls"] += 1
        return out

    total = full_total = 0.0
    adaptive.sessions = [_TimedSession(s, i, counters) for i, s in enumerate(original_sessions)]
    adaptive.link = timed_link
    try:
        for _ in range(repeats):
            for ids, mask, _ in batches:
                counters["link_calls"] = 0
                start = time.perf_counter()
                out = adaptive.run(ids, mask)
                total += time.perf_counter() - start
                start = time.perf_counter()
                full.run(ids, mask)
                full_total += time.perf_counter() - start
                seg_tokens[0] += mask.shape[1]
                for k, kept in enumerate(out.kept):
                    seg_tokens[k + 1] += kept.shape[1]
    finally:
        adaptive.sessions = original_sessions
        del adaptive.link  # the backend's own link again
    calls = repeats * len(batches)
    seg, link = counters["segment"], counters["link"]
    floor = call_floor(adaptive, full)
    ms = lambda v: 1e3 * float(v) / calls  # noqa: E731  per batch
    profile = {
        "batches": len(batches), "repeats": repeats, "batch": int(batches[0][0].shape[0]),
        "adaptive_ms_per_batch": ms(total), "full_ms_per_batch": ms(full_total),
        "segments_ms": ms(seg.sum()), "links_ms": ms(link.sum()),
        "python_glue_ms": ms(total - seg.sum() - link.sum()),
        "per_segment_ms": [ms(v) for v in seg], "per_link_ms": [ms(v) for v in link],
        "per_segment_mean_seq": [float(v) / calls for v in seg_tokens],
        "call_floor": floor,
    }
    return profile


def call_floor(adaptive, full, calls: int = 60) -> dict:
    """The fixed cost of each graph: one call at B=1, S=1 (almost no arithmetic left: what remains is
    per-call and per-node dispatch), and the cost of an ORT call as such (a one-node Identity graph with
    the same session options). Minimum over `calls` calls, which other load can only inflate."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from adapler_export.backends.onnxruntime import session_options

    ids = np.array([[101]], np.int32)
    one = np.ones((1, 1), np.int32)
    # Each segment's inputs at B = 1, S = 1, named by its spec, in the chain's order: (input_ids, mask)
    # for segment 0, (hidden, mask) after it.
    unit_feeds = [dict(zip(adaptive.specs[0].inputs, (ids, one)))]
    for spec in adaptive.specs[1:]:
        _, hidden_shape = next(iter(spec.inputs.values()))
        hidden = np.zeros([1 if isinstance(d, str) else d for d in hidden_shape], spec.hidden_dtype)
        unit_feeds.append(dict(zip(spec.inputs, (hidden, one))))

    def min_time(fn):
        for _ in range(5):
            fn()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.min(times))

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.INT32, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["b", "s"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what opset 17 needs; newer onnx writes an IR version older runtimes refuse
    identity = ort.InferenceSession(model.SerializeToString(), session_options(full.session.get_session_options()
                                                                               .intra_op_num_threads),
                                    providers=["CPUExecutionProvider"])
    full_feeds = dict(zip(common.full_graph_inputs(full.session), (ids, one)))
    per_session = [min_time(lambda k=k, feeds=feeds: adaptive.run_segment(k, feeds))
                   for k, feeds in enumerate(unit_feeds)]
    return {"per_segment_ms": per_session, "segments_sum_ms": float(sum(per_session)),
            "full_ms": min_time(lambda: full.session.run(None, full_feeds)),
            "adaptive_run_ms": min_time(lambda: adaptive.run(ids, one)),
            "empty_call_ms": min_time(lambda: identity.run(None, {"x": one})),
            "note": f"each graph at B=1, S=1, minimum of {calls} calls: the cost that does not shrink with the "
                    "sequence; empty_call_ms: one ORT call on a one-node graph"}


def length_fit(batches: list, times: np.ndarray) -> dict:
    """Least-squares time = fixed + per_token * S over batch-1 runs (per-batch medians over repeats)."""
    lengths = np.array([m.shape[1] for _, m, _ in batches], dtype=np.float64)
    med = 1e3 * np.median(times, axis=0)
    if len(np.unique(lengths)) < 2:
        return {"fixed_ms": None, "per_token_ms": None}
    per_token, fixed = np.polyfit(lengths, med, 1)
    return {"fixed_ms": float(fixed), "per_token_ms": float(per_token),
            "fixed_share_at_mean_length": float(fixed / (fixed + per_token * lengths.mean()))}


def optimized_node_counts(paths: list, threads: int) -> list:
    """Nodes left in each graph after ONNX Runtime's own optimisations (same session options): every
    node costs a fixed dispatch time, whatever the sequence length."""
    import onnx

    from adapler_export.backends.onnxruntime import open_session, session_options

    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            options = session_options(threads)
            options.optimized_model_filepath = str(Path(tmp) / Path(path).name)
            options.log_severity_level = 3
            open_session(path, options, ["CPUExecutionProvider"])
            counts.append(len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node))
    return counts


def explain_profile(p: dict, flops_speedup: float, padded_flops_speedup: float) -> list:
    """Plain-language reasons for the gap between wall-clock and FLOPs speedup at batch 1.

    Splits adaptive time - FLOPs-proportional time (full / F) into (1) the full model's own
    length-independent cost a (batch-1 fit time = a + b*S): no removal can touch it, so even a free
    pipeline needs a + (full - a) / F; (2) the pipeline's overhead beyond that: links, Python glue,
    fixed extra cost of the chain (chain vs full graph at S = 1), and the rest."""
    lines = []
    adaptive, full, f = p["adaptive_ms_per_batch"], p["full_ms_per_batch"], flops_speedup
    ideal = full / f
    floor = p["call_floor"]
    lines.append(f"adaptive {adaptive:.3f} ms vs full {full:.3f} ms per example: wall-clock {full / adaptive:.3f}x, "
                 f"FLOPs {f:.3f}x (padded shapes {padded_flops_speedup:.3f}x) -> efficiency {full / adaptive / f:.2f}")
    gap = adaptive - ideal
    if gap <= 0:
        lines.append(f"no gap: the adaptive pipeline is at or beyond its FLOPs-proportional time ({ideal:.3f} ms)")
        return lines
    share = lambda v: f"{v:.3f} ms ({100 * v / gap:.0f}% of the gap)"  # noqa: E731
    lines.append(f"FLOPs-proportional adaptive time: {ideal:.3f} ms; gap {gap:.3f} ms, of which:")
    fit = (p.get("time_vs_length_fit") or {}).get("full") or {}
    bound_time = ideal
    if fit.get("fixed_ms") is not None:
        share0 = min(max(fit["fixed_share_at_mean_length"], 0.0), 1.0)
        a = share0 * full
        bound_time = a + (full - a) / f
        lines.append(f"  (1) the full model's length-independent cost: {share(bound_time - ideal)}. At batch 1 its time "
                     f"is {fit['fixed_ms']:.3f} ms + {fit['per_token_ms']:.4f} ms/token (least squares over the "
                     f"batch-1 runs): {100 * share0:.0f}% of it does not shrink with S (weights read from memory for "
                     f"every example, per-op dispatch). Even a free pipeline cannot beat {bound_time:.3f} ms, i.e. "
                     f"{full / bound_time:.3f}x wall-clock, efficiency {full / bound_time / f:.2f}")
    overhead = adaptive - bound_time
    lines.append(f"  (2) the adaptive pipeline's own overhead: {share(overhead)}:")
    lines.append(f"      links ({len(p['per_link_ms'])} compactions): {p['links_ms']:.3f} ms; Python glue: "
                 f"{p['python_glue_ms']:.3f} ms")
    fixed_extra = floor["adaptive_run_ms"] - floor["full_ms"]
    nodes = p.get("graph_nodes") or {}
    node_text = f", {sum(nodes['segments'])} graph nodes after ORT optimisation vs {nodes['full']}" if nodes else ""
    lines.append(f"      fixed cost of the chain (whole pipeline vs full graph at S = 1: {floor['adaptive_run_ms']:.3f} "
                 f"vs {floor['full_ms']:.3f} ms): {fixed_extra:.3f} ms ({len(floor['per_segment_ms'])} ORT calls "
                 f"instead of 1 at {floor['empty_call_ms']:.3f} ms each{node_text}: per-segment attention bias and "
                 f"CP subgraphs; links and glue at S = 1 included)")
    rest = overhead - p["links_ms"] - p["python_glue_ms"] - max(fixed_extra, 0.0)
    lines.append(f"      the rest: {rest:.3f} ms (CP cost beyond its FLOPs, kernels on short sequences; negative: the "
                 f"terms above overlap or the run was noisy)")
    if padded_flops_speedup < flops_speedup * 0.98:
        lines.append(f"  padding to the batch maximum: the executed shapes give {padded_flops_speedup:.3f}x, "
                     f"not {flops_speedup:.3f}x")
    return lines


# ----------------------------------------------------------------------------------------------- memory
def run_probe(spec: dict) -> dict:
    """One fresh-process memory probe (called in a subprocess with --probe)."""
    import tracemalloc

    from adapler_export.checkpoint import load_checkpoint

    ids, mask = common.probe_batch(spec)
    ckpt = load_checkpoint(spec["ckpt"])
    exports = {"segments": [Path(p) for p in spec["segments"]], "full": Path(spec["full"])}
    adaptive, full = make_runners(spec["backend"], ckpt, exports, spec["threads"])
    runner = adaptive if spec["model"] == "adaptive" else full
    del adaptive, full

    def run_twice():
        tracemalloc.start()
        with _inference_mode(spec["backend"]):
            runner.run(ids, mask)
            runner.run(ids, mask)
        heap_peak_mb.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()

    heap_peak_mb = []
    probe = common.peak_rss_while(run_twice)
    return {**probe, "python_heap_peak_mb": heap_peak_mb[0], "shape": list(ids.shape)}


def memory_probes(configs: list, ckpt_path: str, exports: dict, threads: int, work_dir: Path, log) -> dict:
    """configs: [(backend, workload name, batch, (ids, mask))]. Returns {(backend, workload, batch, model): probe}."""
    results = {}
    for backend, workload, batch, (ids, mask) in configs:
        for model in ("adaptive", "full"):
            spec = {"backend": backend, "model": model, "ckpt": ckpt_path, "threads": threads,
                    "segments": [str(p) for p in exports["segments"]], "full": str(exports["full"])}
            probe, error = common.probe_in_fresh_process(Path(__file__).resolve(), spec, ids, mask, work_dir,
                                                         timeout=600)
            if error is not None:
                log(f"memory probe {backend}/{model}/{workload}/B={batch} failed: {error}")
            results[(backend, workload, batch, model)] = probe
    return results


# ----------------------------------------------------------------------------------------------- main
def compare_outputs(a_outputs: list, b_outputs: list, kept: bool = True) -> dict:
    """Logit (and kept-position) agreement of two runs over the same batches."""
    diff, agree, total, kept_same, kept_total = 0.0, 0, 0, 0, 0
    for a, b in zip(a_outputs, b_outputs):
        diff = max(diff, float(np.abs(a.logits - b.logits).max()))
        agree += int((a.logits.argmax(-1) == b.logits.argmax(-1)).sum())
        total += a.logits.shape[0]
        for ka, kb in zip(a.kept, b.kept):
            kept_total += 1
            kept_same += int(ka.shape == kb.shape and np.array_equal(ka, kb))
    result = {"max_abs_logit_diff": diff, "label_agreement": agree / max(total, 1)}
    if kept:
        result["kept_identical_fraction"] = kept_same / max(kept_total, 1)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        return common.answer_probe(run_probe, args.probe)
    run = common.start_run(args, RESULT_SUFFIX)
    ckpt, load_start = run.ckpt, run.load_start
    model, tokenizer = ckpt.model, ckpt.tokenizer
    threads = args.threads or len(os.sched_getaffinity(0))
    backends = [b for b in args.backends.split(",") if b]
    batch_sizes = args.batches

    exports = export_models_logged(ckpt, run.work_dir, log)
    workloads = common.workloads_from_args(args, ckpt, args.long_max_length)
    for w in workloads:
        s = w.summary()
        log(f"workload {s['name']}: {s['examples']} examples, length {s['min_length']}-{s['max_length_seen']} "
            f"(mean {s['mean_length']:.1f})")
    log(f"load average at start: {load_start} on {os.cpu_count()} CPUs; threads {threads}")

    rows, outputs, profiles = [], {}, {}
    pad_id = common.pad_id(tokenizer)
    for backend in backends:
        adaptive, full = make_runners(backend, ckpt, exports, threads)
        for workload in workloads:
            for batch in batch_sizes:
                batches = common.make_batches(workload, batch, pad_id, sort=args.sort)
                recorded = {"a": [], "f": []}
                with _inference_mode(backend):
                    # One untimed pass for the outputs (kept tokens for FLOPs, logits for agreement).
                    for ids, mask, _ in batches:
                        recorded["a"].append(adaptive.run(ids, mask))
                        recorded["f"].append(full.run(ids, mask))
                    timing = common.time_interleaved(adaptive.run, full.run, batches, args.repeats, args.warmup)
                row = {"backend": backend, "device": "cpu", "precision": "fp32", "batch": batch,
                       "workload": workload.name, "examples": len(workload.examples), "batches": len(batches),
                       "threads": threads, "repeats": args.repeats, "sorted_by_length": args.sort}
                row.update(timing.summary(len(workload.examples)))
                row.update(common.flops_summary(batches, [o.kept for o in recorded["a"]], model.config))
                if batch == 1:  # time vs input length: how much of each call does not shrink with S
                    row["time_vs_length_fit"] = {"adaptive": length_fit(batches, timing.a),
                                                 "full": length_fit(batches, timing.f)}
                row["efficiency"] = row["wallclock_speedup"] / row["flops_speedup"]
                row["adaptive_vs_full"] = compare_outputs(recorded["a"], recorded["f"], kept=False)
                if workload.labels is not None:
                    order = np.concatenate([b[2] for b in batches])
                    labels = workload.labels[order]
                    for key, tag in (("a", "adaptive_accuracy"), ("f", "full_accuracy")):
                        pred = np.concatenate([o.logits.argmax(-1) for o in recorded[key]])
                        row[tag] = float((pred == labels).mean())
                outputs[(backend, workload.name, batch)] = recorded["a"]
                rows.append(row)
                log(f"{backend:>11} {workload.name:>12} B={batch:<3} adaptive {row['adaptive_ms_per_example']:8.3f} "
                    f"ms/ex  full {row['full_ms_per_example']:8.3f} ms/ex  wall-clock {row['wallclock_speedup']:.3f}x"
                    f"  FLOPs {row['flops_speedup']:.3f}x (padded {row['padded_flops_speedup']:.3f}x)")
        if backend == "onnxruntime" and args.profile:
            nodes = optimized_node_counts(list(exports["segments"]) + [exports["full"]], threads)
            graph_nodes = {"segments": nodes[:-1], "full": nodes[-1]}
            for workload in workloads:
                subset = common.Workload(workload.name, workload.examples[: args.profile_examples], None,
                                         workload.max_length)
                batches = common.make_batches(subset, 1, pad_id)
                p = profile_ort_adaptive(adaptive, full, batches, max(1, min(args.repeats, 3)))
                p["graph_nodes"] = graph_nodes
                kept = [adaptive.run(ids, mask).kept for ids, mask, _ in batches]
                fl = common.flops_summary(batches, kept, model.config)
                p["flops_speedup"], p["padded_flops_speedup"] = fl["flops_speedup"], fl["padded_flops_speedup"]
                p["wallclock_speedup"] = p["full_ms_per_batch"] / p["adaptive_ms_per_batch"]
                p["efficiency"] = p["wallclock_speedup"] / p["flops_speedup"]
                row1 = next((r for r in rows if r["backend"] == "onnxruntime" and r["workload"] == workload.name
                             and r["batch"] == 1), None)
                p["time_vs_length_fit"] = row1 and row1.get("time_vs_length_fit")
                p["explanation"] = explain_profile(p, fl["flops_speedup"], fl["padded_flops_speedup"])
                profiles[workload.name] = p
        del adaptive, full

    # ORT vs PyTorch adaptive outputs on the same batches: a runtime change must not move these.
    for row in rows:
        if row["backend"] == "onnxruntime" and ("pytorch", row["workload"], row["batch"]) in outputs:
            row["adaptive_vs_pytorch_adaptive"] = compare_outputs(
                outputs[("onnxruntime", row["workload"], row["batch"])],
                outputs[("pytorch", row["workload"], row["batch"])])

    if args.memory:
        log("memory probes (a fresh process per backend/model/workload/batch) ...")
        configs = []
        for backend in backends:
            for workload in workloads:
                for batch in batch_sizes:
                    batches = common.make_batches(workload, batch, pad_id, sort=args.sort)
                    ids, mask, _ = max(batches, key=lambda b: b[0].size)
                    configs.append((backend, workload.name, batch, (ids, mask)))
        probes = memory_probes(configs, str(ckpt.path), exports, threads, run.work_dir, log)
        for row in rows:
            for model_kind in ("adaptive", "full"):
                probe = probes.get((row["backend"], row["workload"], row["batch"], model_kind))
                row[f"{model_kind}_peak_rss_delta_mb"] = probe and round(probe["peak_rss_delta_mb"], 1)
                row[f"{model_kind}_python_heap_peak_mb"] = probe and round(probe["python_heap_peak_mb"], 2)
                row[f"{model_kind}_rss_after_load_mb"] = probe and round(probe["rss_after_load_mb"], 1)
                row["memory_probe_shape"] = probe and probe["shape"]
    else:
        for row in rows:
            for model_kind in ("adaptive", "full"):
                row[f"{model_kind}_peak_rss_delta_mb"] = None
                row[f"{model_kind}_python_heap_peak_mb"] = None

    load_end = common.load_average()
    result = {
        **common.result_header(run.name, "bench_cpu.py", argv, args.quick),
        "checkpoint": {"path": str(ckpt.path), "digest": exports["digest"], "backbone": ckpt.config.backbone,
                       "task": ckpt.config.task, "num_layers": model.num_layers,
                       "hidden_size": model.config.hidden_size, "max_length": ckpt.config.max_length,
                       "truncation": ckpt.config.truncation,
                       "eta": [float(e) for e in model.eta.detach()],
                       "dev_metrics": {k: ckpt.config.metrics.get(k) for k in ("accuracy", "flops_speedup")}},
        **common.run_circumstances(run, load_end),
        "settings": {"repeats": args.repeats, "warmup_batches": args.warmup, "threads": threads,
                     "sorted_by_length": args.sort, "ort_session_options": session_settings(threads),
                     "torch_threads": _torch_threads(), "batches": batch_sizes, "backends": backends},
        "workloads": [w.summary() for w in workloads],
        "definitions": DEFINITIONS,
        "rows": rows,
        "profile_onnxruntime_batch1": profiles,
        "notes": common.run_notes(load_start, load_end, args.quick),
    }
    print_summary(result, log)
    common.save_result(result, run.json_path, run.png_path, None if args.no_plot else rows,
                       f"{run.name}: adaptive vs full static model, {common.cpu_model()}, threads={threads}")
    return 0


def export_models_logged(ckpt, work_dir, log):
    start = time.time()
    exports = common.export_models(ckpt, work_dir, log)
    log(f"exports ready in {time.time() - start:.1f}s")
    return exports


class _inference_mode:
    """torch.inference_mode for the PyTorch backend (both models alike), nothing for ONNX Runtime."""

    def __init__(self, backend):
        self.ctx = None
        if backend == "pytorch":
            import torch

            self.ctx = torch.inference_mode()

    def __enter__(self):
        if self.ctx:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx:
            return self.ctx.__exit__(*exc)
        return False


def _torch_threads():
    import torch

    return torch.get_num_threads()


def print_summary(result: dict, log) -> None:
    table = Table(["backend", "workload", "B", "adaptive ms/ex", "full ms/ex", "wall-clock x", "FLOPs x",
                   "padded FLOPs x", "efficiency", "mem a/f MB"])
    for r in result["rows"]:
        mem = "-" if r.get("adaptive_peak_rss_delta_mb") is None else \
            f"{r['adaptive_peak_rss_delta_mb']:.0f}/{r['full_peak_rss_delta_mb']:.0f}"
        table.add(r["backend"], r["workload"], r["batch"], r["adaptive_ms_per_example"], r["full_ms_per_example"],
                  r["wallclock_speedup"], r["flops_speedup"], r["padded_flops_speedup"], r["efficiency"], mem)
    log("")
    log(table.render())
    for workload, p in result["profile_onnxruntime_batch1"].items():
        log("")
        log(f"profile: adaptive ONNX Runtime pipeline, batch 1, {workload} ({p['batches']} examples x {p['repeats']})")
        seg = Table(["part", "ms/example", "mean seq"])
        for k, (t, s) in enumerate(zip(p["per_segment_ms"], p["per_segment_mean_seq"])):
            seg.add(f"segment {k}", t, s)
        for k, t in enumerate(p["per_link_ms"]):
            seg.add(f"link {k}", t, "")
        seg.add("python glue", p["python_glue_ms"], "")
        seg.add("adaptive total", p["adaptive_ms_per_batch"], "")
        seg.add("full graph", p["full_ms_per_batch"], "")
        log(seg.render())
        for line in p["explanation"]:
            log(line)
    for note in result["notes"]:
        log("NOTE: " + note)


if __name__ == "__main__":
    sys.exit(main())
