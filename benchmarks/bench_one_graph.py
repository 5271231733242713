#!/usr/bin/env python
"""The adaptive model as ONE standard ONNX graph (model.onnx) vs the chained segments vs the full static model.

All three in ONNX Runtime on the CPU with the same session options (`backends.onnxruntime.session_options`):

  one-graph   `backends.onnxruntime_graph.OneGraphBackend`: model.onnx (segments + links in standard ops), one session
  chain       `backends.onnxruntime.OnnxRuntimeBackend`: the segment graphs, one session each, host NumPy link
  full        `baseline.FullModelBackend`: full.onnx, no CPs, no removal (the baseline of every speedup)

For each thread count (1, 2), workload (SST-2 dev; 256-512-token texts; IMDB reviews; a pair model's MRPC or RTE dev
pairs) and batch size (1, 8, 32): the same
padded batches, round robin batch by batch (who goes first rotates), median over repeats. Before timing, the
one graph's kept positions must equal the chain's on every batch. Plus the peak resident memory of each on
[8, 512] inputs (a fresh process per model). Writes `<name>-one-graph.json` and `.png`.

    python benchmarks/bench_one_graph.py --ckpt sst2                           # -> docs/results/sst2-one-graph.*
    python benchmarks/bench_one_graph.py --ckpt /tmp/ah/checkpoints/ci --quick   # smoke run ($TMPDIR)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py; also puts the repository on sys.path)
from common import Table, log  # noqa: E402

RESULT_SUFFIX = "-one-graph"  # <output-dir>/<name>-one-graph.json and .png
MODELS = ("one-graph", "chain", "full")
MEMORY_SHAPE = (8, 512)
DEFINITIONS = {
    "<model>_ms_per_example": "median over repeats of one pass over the workload's batches, per example",
    "one_graph_vs_full / chain_vs_full": "median over repeats of (full time / that model's time) for one pass, "
                                         "timed round robin batch by batch with the same batches",
    "one_graph_vs_chain": "median over repeats of (chain time / one-graph time): > 1 means the one graph is faster",
    "flops_speedup": "adapler_export.flops: full model on each example's live tokens / adaptive model on the "
                     "tokens each layer kept (the paper's number; both adaptive forms keep the same tokens)",
    "padded_flops_speedup": "the same on the shapes really executed (B x S_max vs B x S'_k)",
    "<model>_efficiency": "<model>_vs_full / flops_speedup: the share of the saved FLOPs that became saved time",
    "peak_rss_delta_mb": "fresh process per model: peak resident set (VmHWM) while running one [8, 512] batch "
                         "twice, minus the RSS after the model's sessions were opened",
}


def parse_args(argv=None):
    p = common.bench_parser(__doc__, RESULT_SUFFIX, long_examples=32, repeats=5, warmup=8)
    p.add_argument("--threads", type=common.int_list, default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 16 SST-2 sentences, 4 long texts, 1 repeat, 1 warm-up batch, no memory probe")
    args = p.parse_args(argv)
    common.apply_quick(args, sst2_examples=16, long_examples=4, repeats=1)
    return args


# ----------------------------------------------------------------------------------------------- models
def open_model(kind: str, paths: dict, etas: list, num_layers: int, hidden: int, num_labels: int, threads: int,
               text_pair: bool = False):
    """One of MODELS on the CPU; `paths`: {"segments": [...], "full": ..., "graph": ...}; `text_pair`: a
    sentence-pair model (segment 0 takes token types). No torch needed."""
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.baseline import FullModelBackend
    from adapler_export.specs import segment_specs

    if kind == "one-graph":
        return OneGraphBackend(paths["graph"], num_layers, device="cpu", threads=threads, etas=etas)
    if kind == "chain":
        specs = segment_specs(num_layers, hidden, num_labels, "fp32", text_pair)
        return OnnxRuntimeBackend(paths["segments"], specs, etas, device="cpu", threads=threads)
    if kind == "full":
        return FullModelBackend(paths["full"], num_layers, device="cpu", threads=threads)
    raise ValueError(kind)


def check_same_decisions(graph_outputs: list, chain_outputs: list, where: str) -> float:
    """The one graph must keep exactly the chain's tokens; returns the max |Δlogit| between them."""
    diff = 0.0
    for a, b in zip(graph_outputs, chain_outputs):
        for k, (ka, kb) in enumerate(zip(a.kept, b.kept)):
            if ka.shape != kb.shape or not np.array_equal(ka, kb):
                raise SystemExit(f"{where}: link {k}: the one graph keeps other tokens than the chain")
        diff = max(diff, float(np.abs(a.logits - b.logits).max()))
    return diff


def measure(models: dict, batches: list, examples: int, args, config) -> dict:
    """One row: the three models on the same batches."""
    outputs = {name: [model.run(*common.batch_inputs(b)) for b in batches] for name, model in models.items()}
    times = common.time_round_robin({name: model.run for name, model in models.items()}, batches, args.repeats,
                                    args.warmup)
    graph_vs_full = common.PairTiming(times["one-graph"], times["full"]).summary(examples)
    chain_vs_full = common.PairTiming(times["chain"], times["full"]).summary(examples)
    graph_vs_chain = common.PairTiming(times["one-graph"], times["chain"]).summary(examples)
    flops = common.flops_summary(batches, [o.kept for o in outputs["one-graph"]], config)
    row = {f"{name.replace('-', '_')}_ms_per_example": 1e3 * float(np.median(t.sum(axis=1))) / examples
           for name, t in times.items()}
    row.update({
        "one_graph_vs_full": graph_vs_full["wallclock_speedup"],
        "chain_vs_full": chain_vs_full["wallclock_speedup"],
        "one_graph_vs_chain": graph_vs_chain["wallclock_speedup"],
        "one_graph_vs_chain_min_max": graph_vs_chain["wallclock_speedup_min_max"],
        "one_graph_vs_chain_batch_medians": graph_vs_chain["wallclock_speedup_batch_medians"],
        "one_graph_vs_full_min_max": graph_vs_full["wallclock_speedup_min_max"],
        "chain_vs_full_min_max": chain_vs_full["wallclock_speedup_min_max"],
        "seconds_repeats": {name: [float(v) for v in t.sum(axis=1)] for name, t in times.items()},
        "max_abs_logit_diff_one_graph_vs_chain": check_same_decisions(outputs["one-graph"], outputs["chain"],
                                                                      "timing batches"),
        "max_abs_logit_diff_one_graph_vs_full": max(float(np.abs(a.logits - b.logits).max())
                                                    for a, b in zip(outputs["one-graph"], outputs["full"])),
    })
    row.update(flops)
    row["one_graph_efficiency"] = row["one_graph_vs_full"] / row["flops_speedup"]
    row["chain_efficiency"] = row["chain_vs_full"] / row["flops_speedup"]
    return row


# ----------------------------------------------------------------------------------------------- memory
def run_probe(spec: dict) -> dict:
    """One fresh-process memory probe (run in a subprocess with --probe)."""
    ids, mask = common.probe_batch(spec)
    model = open_model(spec["model"], spec["paths"], spec["etas"], spec["num_layers"], spec["hidden"],
                       spec["num_labels"], spec["threads"], spec["text_pair"])
    probe = common.peak_rss_while(lambda: (model.run(ids, mask), model.run(ids, mask)))
    return {**{key: round(value, 1) for key, value in probe.items()}, "shape": list(ids.shape)}


def memory_probes(ids, mask, common_spec: dict, work_dir: Path, log) -> dict:
    results = {}
    for model in MODELS:
        results[model], error = common.probe_in_fresh_process(Path(__file__).resolve(), {**common_spec, "model": model},
                                                              ids, mask, work_dir, timeout=900)
        if error is not None:
            log(f"memory probe {model} failed: {error}")
            continue
        log(f"memory {model:>9} on {list(ids.shape)}: peak RSS +{results[model]['peak_rss_delta_mb']:.0f} MB over "
            f"{results[model]['rss_after_load_mb']:.0f} MB after loading")
    return results


# ----------------------------------------------------------------------------------------------- main
def build_graph(ckpt, exports: dict, log) -> Path:
    """model.onnx from the cached segments, rebuilt every run (seconds; validated against the chain)."""
    from adapler_export.onnx_graph import build_one_graph

    start = time.time()
    path = build_one_graph(exports["dir"] / "onnx", common.fp32_specs(ckpt.model),
                           [float(e) for e in ckpt.model.eta.detach()])
    log(f"one graph: {path} ({path.stat().st_size / 1e6:.1f} MB, built and checked in {time.time() - start:.1f}s)")
    return path


def plot_row_views(rows: list) -> list:
    """The rows as common.plot_rows draws them: one panel per (adaptive form, threads)."""
    views = []
    for row in rows:
        for form, key in (("one-graph", "one_graph_vs_full"), ("chain", "chain_vs_full")):
            views.append({"backend": f"{form}, {row['threads']} thread{'s' * (row['threads'] > 1)}", "device": "cpu",
                          "precision": "fp32", "workload": row["workload"], "batch": row["batch"],
                          "wallclock_speedup": row[key], "flops_speedup": row["flops_speedup"],
                          "padded_flops_speedup": row["padded_flops_speedup"]})
    return views


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        return common.answer_probe(run_probe, args.probe)
    run = common.start_run(args, RESULT_SUFFIX)
    ckpt, load_start, work_dir = run.ckpt, run.load_start, run.work_dir
    model, tokenizer = ckpt.model, ckpt.tokenizer
    thread_counts, batch_sizes = args.threads, args.batches

    exports = common.export_models(ckpt, work_dir, log)
    paths = {"segments": [str(p) for p in exports["segments"]], "full": str(exports["full"]),
             "graph": str(build_graph(ckpt, exports, log))}
    etas = [float(e) for e in model.eta.detach()]
    shape = {"num_layers": model.num_layers, "hidden": model.config.hidden_size,
             "num_labels": model.config.num_labels, "text_pair": model.text_pair}
    workloads = common.workloads_from_args(args, ckpt)
    pad_id = common.pad_id(tokenizer)
    log(f"load average at start: {load_start} on {os.cpu_count()} CPUs")

    rows = []
    for threads in thread_counts:
        models = {kind: open_model(kind, paths, etas, threads=threads, **shape) for kind in MODELS}
        for workload in workloads:
            for batch in batch_sizes:
                batches = common.make_batches(workload, batch, pad_id)
                row = {"threads": threads, "workload": workload.name, "batch": batch,
                       "examples": len(workload.examples), "batches": len(batches), "repeats": args.repeats}
                row.update(measure(models, batches, len(workload.examples), args, model.config))
                rows.append(row)
                log(f"threads {threads} {workload.name:>12} B={batch:<3} ms/ex: one graph "
                    f"{row['one_graph_ms_per_example']:7.3f}  chain {row['chain_ms_per_example']:7.3f}  full "
                    f"{row['full_ms_per_example']:7.3f} | one graph vs chain {row['one_graph_vs_chain']:.3f}x, vs full "
                    f"{row['one_graph_vs_full']:.3f}x (chain {row['chain_vs_full']:.3f}x), FLOPs "
                    f"{row['flops_speedup']:.3f}x")
        for runner in models.values():
            runner.close()
        del models

    memory = None
    if args.memory:
        long_texts = common.long_workload(tokenizer, common.sst2_dev(args.data_dir).texts, MEMORY_SHAPE[0],
                                          MEMORY_SHAPE[1], MEMORY_SHAPE[1])
        ids, mask, _ = common.make_batches(long_texts, MEMORY_SHAPE[0], pad_id)[0]
        probe_spec = {"paths": paths, "etas": etas, "threads": max(thread_counts), **shape}
        memory = memory_probes(ids, mask, probe_spec, work_dir, log)

    load_end = common.load_average()
    result = {
        **common.result_header(run.name, "bench_one_graph.py", argv, args.quick),
        "checkpoint": {"path": str(ckpt.path), "digest": exports["digest"], "backbone": ckpt.config.backbone,
                       "task": ckpt.config.task, "num_layers": model.num_layers, "eta": etas,
                       "hidden_size": model.config.hidden_size, "max_length": ckpt.config.max_length,
                       "truncation": ckpt.config.truncation},
        **common.run_circumstances(run, load_end),
        "settings": {"repeats": args.repeats, "warmup_batches": args.warmup, "threads": thread_counts,
                     "batches": batch_sizes, "session_options": "backends.onnxruntime.session_options(threads) for "
                                                                "every session of the three models"},
        "workloads": [w.summary() for w in workloads],
        "definitions": DEFINITIONS,
        "rows": rows,
        "memory": {"shape": list(MEMORY_SHAPE), "threads": max(thread_counts), "models": memory} if memory else None,
        "summary": summarize(rows, memory),
        "notes": common.run_notes(load_start, load_end, args.quick),
    }
    print_summary(result, log)
    common.save_result(result, run.json_path, run.png_path, None if args.no_plot else plot_row_views(rows),
                       f"{run.name}: one graph and chained segments vs the full static model (ONNX Runtime, "
                       f"{common.cpu_model()})")
    return 0


def summarize(rows: list, memory: dict | None) -> dict:
    """The issue's targets, read off the rows."""
    def pick(workload_prefix, batch):
        return [r for r in rows if r["workload"].startswith(workload_prefix) and r["batch"] == batch]

    summary = {"one_graph_never_slower_than_chain": all(r["one_graph_vs_chain"] >= 1.0 for r in rows),
               "min_one_graph_vs_chain": min(r["one_graph_vs_chain"] for r in rows),
               "sst2_batch1_efficiency": {f"{r['threads']} threads": {"one_graph": r["one_graph_efficiency"],
                                                                      "chain": r["chain_efficiency"]}
                                          for r in pick("sst2", 1)},
               "long_efficiency": {f"{r['threads']} threads, B={r['batch']}": {"one_graph": r["one_graph_efficiency"],
                                                                             "chain": r["chain_efficiency"]}
                                   for r in rows if r["workload"].startswith("long")}}
    if memory and all(memory.get(m) for m in ("one-graph", "chain")):
        summary["peak_rss_delta_mb"] = {m: memory[m]["peak_rss_delta_mb"] for m in MODELS if memory.get(m)}
    return summary


def print_summary(result: dict, log) -> None:
    table = Table(["thr", "workload", "B", "graph ms/ex", "chain ms/ex", "full ms/ex", "graph/chain x",
                   "graph/full x", "chain/full x", "FLOPs x", "eff graph", "eff chain"])
    for r in result["rows"]:
        table.add(r["threads"], r["workload"], r["batch"], r["one_graph_ms_per_example"], r["chain_ms_per_example"],
                  r["full_ms_per_example"], r["one_graph_vs_chain"], r["one_graph_vs_full"], r["chain_vs_full"],
                  r["flops_speedup"], r["one_graph_efficiency"], r["chain_efficiency"])
    log("")
    log(table.render())
    log(json.dumps(result["summary"], indent=1))
    for note in result["notes"]:
        log("NOTE: " + note)


if __name__ == "__main__":
    sys.exit(main())
