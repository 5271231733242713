#!/usr/bin/env python
"""Batch-1 fixed cost of the one graph, before and after a change to how it is composed, in ONE run.

Three models on the same dev batches, round robin batch by batch (bench_one_graph.py's timing and FLOPs):

  full                 the checkpoint's backbone without CPs (baseline.export_full_onnx): the baseline
  one-graph before     `compose_one_graph(..., share_mask_features=False)`: every segment as exported
  one-graph after      the library's default (segments read their attention bias and CP weights from the
                       link's flags; onnx_graph.py: "what a segment derives from its mask")

For each: ms per example, wall-clock speedup over full, and efficiency = wall-clock speedup / FLOPs speedup
(the share of the saved FLOPs that became saved time). Then ONNX Runtime's profiler on both one graphs
(profile_one_graph.py: kernel time per part of the model and per op type, nodes run per example; the profiler
adds a fixed cost per node, so read its small-op times as relative). Then what one link costs alone
(`onnx_graph.link_model`, H of the model, one session), and the full model at batch 1 for S tokens, fp32 and
dynamic INT8 (`quantization.quantize_dynamic_int8`), round robin over S: per layer, t(S) / L. A layer has a
floor: its weights are read once per call whatever S is (7 MB fp32 per MiniLM layer; the whole model's do not
fit a 32 MB L3 beside everything else, so they stream from memory; one layer timed alone would stay in cache
and hide that), below which dropping tokens saves no time. From t and the tokens each layer of the one graph
kept for each example at batch 1: the wall-clock speedup the layers alone would give (links, CPs, embeddings
and head free), and its efficiency: the bound that cutting non-layer work cannot pass.

    python benchmarks/one_graph_fixed_cost.py --ckpt sst2-small-x2 --output docs/results/sst2-small-x2-fixed-cost.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Table, log  # noqa: E402

MODELS = ("full", "one-graph before", "one-graph after")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=None, help="first N dev sentences (default: all)")
    p.add_argument("--batches", type=common.int_list, default="1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--profile-samples", type=int, default=200, help="sentences profiled per one graph (0: none)")
    p.add_argument("--layer-tokens", type=common.int_list, default="1,2,4,6,8,12,16,20,24,32,40,48,64",
                   help="token counts S of the one-layer timing (empty: none)")
    p.add_argument("--layer-repeats", type=int, default=50)
    p.add_argument("--work-dir", default=None, help="export cache (default $ADAPLER_HOME/bench)")
    p.add_argument("--output", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch  # noqa: F401  (before onnxruntime: the library's import order)

    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.baseline import FullModelBackend
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_dev
    from adapler_export.onnx_graph import build_one_graph
    from adapler_export.storage import adapler_home
    from profile_one_graph import profile_graph

    started, load_start = time.time(), common.load_average()
    ckpt = load_checkpoint(args.ckpt)
    model = ckpt.model
    etas = [float(e) for e in model.eta.detach()]
    exports = common.export_models(ckpt, Path(args.work_dir) if args.work_dir else adapler_home() / "bench", log)
    onnx_dir = exports["dir"] / "onnx"
    tmp = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    graphs = {"one-graph before": build_one_graph(onnx_dir, common.fp32_specs(model), etas, tmp / "before.onnx",
                                                  share_mask_features=False),
              "one-graph after": build_one_graph(onnx_dir, common.fp32_specs(model), etas, tmp / "after.onnx")}
    runners = {"full": FullModelBackend(exports["full"], model.num_layers, device="cpu", threads=args.threads)}
    runners.update({name: OneGraphBackend(path, model.num_layers, device="cpu", threads=args.threads, etas=etas)
                    for name, path in graphs.items()})
    dev = load_dev(ckpt.config.task, args.data_dir, args.samples)
    workload = common.dev_workload(ckpt.tokenizer, dev, ckpt.config.cut)
    n = len(workload.examples)
    rows, kept_batch1 = [], None
    for batch in args.batches:
        batches = common.make_batches(workload, batch, common.pad_id(ckpt.tokenizer))
        outputs = {name: [r.run(*common.batch_inputs(b)) for b in batches] for name, r in runners.items()}
        for a, b in zip(outputs["one-graph before"], outputs["one-graph after"]):  # the change changes no number
            assert np.array_equal(a.logits, b.logits) and all(np.array_equal(x, y) for x, y in zip(a.kept, b.kept))
        flops = common.flops_summary(batches, [o.kept for o in outputs["one-graph after"]], model.config)
        if batch == 1:
            kept_batch1 = {"live": [int(b[1].sum()) for b in batches], "flops_speedup": flops["flops_speedup"],
                           "kept": [[int((k >= 0).sum()) for k in o.kept] for o in outputs["one-graph after"]]}
        times = common.time_round_robin({name: r.run for name, r in runners.items()}, batches, args.repeats,
                                        args.warmup)
        totals = {name: t.sum(axis=1) for name, t in times.items()}
        for name in MODELS:
            speedup = float(np.median(totals["full"] / totals[name]))
            row = {"model": name, "batch": batch, "threads": args.threads, "examples": n,
                   "ms_per_example": 1e3 * float(np.median(totals[name])) / n,
                   "seconds_repeats": [float(v) for v in totals[name]], "vs_full": speedup,
                   "flops_speedup": flops["flops_speedup"], "efficiency": speedup / flops["flops_speedup"]}
            rows.append(row)
            log(f"B={batch:<3} {name:<17} {row['ms_per_example']:7.3f} ms/ex  x{speedup:.3f} vs full  FLOPs "
                f"x{flops['flops_speedup']:.3f}  efficiency {row['efficiency']:.3f}")
    for runner in runners.values():
        runner.close()

    profiles = {}
    if args.profile_samples:
        batches = common.make_batches(common.dev_workload(ckpt.tokenizer, dev, ckpt.config.cut, args.profile_samples),
                                      1, common.pad_id(ckpt.tokenizer))
        for name, path in graphs.items():
            with tempfile.TemporaryDirectory(prefix="profile-") as work:
                summary = profile_graph(path, batches, args.threads, min(args.warmup, len(batches)), Path(work))
            profiles[name] = summary
            log(f"profile {name}: {summary['nodes_per_example']:.0f} nodes per example, kernel time per part (us): "
                + ", ".join(f"{p} {t:.0f}" for p, t in summary["part_us_per_example"].items()))

    link_cost = time_link(model.config.hidden_size, etas[0], args.threads, args.layer_repeats)
    log(f"one link alone (one session, [1, S, {model.config.hidden_size}]): " +
        ", ".join(f"S={k} {v['p10_us']:.1f} us" for k, v in link_cost.items()))
    layer = time_layer(exports["full"], model.num_layers, args.layer_tokens, args.threads, args.layer_repeats,
                       tmp) if args.layer_tokens else None
    bound = None
    if layer:
        log("per layer (full model at batch 1 / L, p10 ms): " + "; ".join(
            f"S={r['tokens']}: fp32 {r['fp32_p10_ms']:.3f}, int8 {r['int8_p10_ms']:.3f}" for r in layer))
        if kept_batch1:
            bound = layer_bound(layer, kept_batch1, model.num_layers)
            log("layers alone (links, CPs, embeddings, head free), batch 1: " + ", ".join(
                f"{kind} x{b['speedup']:.3f} = efficiency {b['efficiency']:.3f}" for kind, b in bound.items()))

    load_end = common.load_average()
    result = {**common.result_header(Path(args.output).stem, "one_graph_fixed_cost.py", argv, False),
              "checkpoint": {"path": str(ckpt.path), "digest": exports["digest"], "eta": etas},
              "workload": workload.summary(), "batch_order": "dataset order",
              "settings": {"threads": args.threads, "repeats": args.repeats, "warmup_batches": args.warmup,
                           "statistic": "median over repeats of one pass; speedups: median of per-repeat ratios"},
              "rows": rows, "profiles": profiles, "link_alone_us": link_cost, "layer_segment_ms": layer,
              "layers_alone_bound": bound,
              "machine": common.machine_info(),
              "load_average_start": load_start, "load_average_end": load_end,
              "seconds": round(time.time() - started, 1), "notes": common.run_notes(load_start, load_end, False)}
    table = Table(["model", "B", "ms/ex", "x full", "FLOPs x", "efficiency"])
    for r in rows:
        table.add(r["model"], r["batch"], r["ms_per_example"], r["vs_full"], r["flops_speedup"], r["efficiency"])
    log(table.render())
    for note in result["notes"]:
        log("NOTE: " + note)
    common.write_json(Path(args.output), result)
    log(f"results: {args.output}")
    return 0


def _timed(run, repeats: int, names: list) -> dict:
    """Round robin over `names` (run(name) once each per round): p10 and median seconds per name."""
    for name in names:
        for _ in range(5):
            run(name)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    return {name: (float(np.percentile(t, 10)), float(np.median(t))) for name, t in times.items()}


def layer_bound(layer: list, kept: dict, num_layers: int) -> dict:
    """The batch-1 speedup of the layers alone: sum over examples of L * t(S) over sum of t(kept_k), t the
    one-layer time interpolated in S (p10), for fp32 and int8; efficiency = that / the FLOPs speedup."""
    tokens = np.array([r["tokens"] for r in layer], float)
    out = {}
    for kind in ("fp32", "int8"):
        times = np.array([r[f"{kind}_p10_ms"] for r in layer])
        t = lambda s: float(np.interp(s, tokens, times))  # noqa: E731
        full = sum(num_layers * t(s) for s in kept["live"])
        adaptive = sum(sum(t(k) for k in ks) for ks in kept["kept"])
        out[kind] = {"speedup": full / adaptive, "efficiency": full / adaptive / kept["flops_speedup"]}
    return out


def time_link(hidden: int, eta: float, threads: int, repeats: int, tokens=(8, 25, 48)) -> dict:
    import onnxruntime as ort

    from adapler_export.backends.onnxruntime import session_options
    from adapler_export.onnx_graph import link_model

    session = ort.InferenceSession(link_model(eta, hidden_size=hidden).SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {s: {"hidden": rng.standard_normal((1, s, hidden), np.float32),
                 "scores": rng.dirichlet(np.ones(s))[None].astype(np.float32), "mask": np.ones((1, s), np.int32),
                 "positions": np.arange(s, dtype=np.int32)[None]} for s in tokens}
    timed = _timed(lambda s: session.run(None, feeds[s]), repeats, list(tokens))
    return {str(s): {"p10_us": 1e6 * p10, "median_us": 1e6 * med} for s, (p10, med) in timed.items()}


def time_layer(full: Path, num_layers: int, tokens: list, threads: int, repeats: int, work: Path) -> list:
    """Per layer: the full model's batch-1 time for S tokens (random ids) / L, fp32 and dynamic INT8."""
    from adapler_export.baseline import FullModelBackend
    from adapler_export.quantization import choose_int8_settings, quantize_dynamic_int8

    int8 = work / "full_int8.onnx"
    quantize_dynamic_int8(full, int8, choose_int8_settings())
    models = {kind: FullModelBackend(path, num_layers, device="cpu", threads=threads)
              for kind, path in (("fp32", full), ("int8", int8))}
    rng = np.random.default_rng(0)
    feeds = {s: (rng.integers(1000, 2000, (1, s)).astype(np.int32), np.ones((1, s), np.int32)) for s in tokens}
    names = [(kind, s) for s in tokens for kind in models]
    timed = _timed(lambda name: models[name[0]].run(*feeds[name[1]]), repeats, names)
    return [{"tokens": s, **{f"{kind}_{stat}_ms": 1e3 * timed[(kind, s)][i] / num_layers for kind in models
                             for i, stat in enumerate(("p10", "median"))}} for s in tokens]


if __name__ == "__main__":
    sys.exit(main())
