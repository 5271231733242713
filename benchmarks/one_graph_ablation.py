#!/usr/bin/env python
"""Where the INT8 one graph's batch-1 time goes beyond the layers, by wall clock: ablations timed side by side.

ONNX Runtime's profiler adds a fixed cost to every node, so it overstates small ops (profile_one_graph.py); this
script instead times whole graphs that differ by one part, round robin batch by batch in one run:

  full int8                  the checkpoint's backbone, dynamic INT8 as `build --int8` quantizes (the baseline)
  full int8, plain           the same backbone through `quantize_dynamic(..., weight_type=QInt8)` as it is: one
                             weight scale per tensor (what alternatives.py calls full INT8 dynamic)
  one graph int8             what `build --int8` writes: the product (tokens dropped at the trained thresholds)
  one graph int8, before     the same from segments exported with the CP distribution in its weighted form
                             (`cp_distribution`: ReduceMax, Sub, Exp, Mul, ReduceSum, Div) instead of one Softmax
                             (`cp_distribution_hard`, what the export writes now)
  one graph int8, CP int8    the product with the CP MLPs quantized too (`quantize_segments(keep_cp_fp32=False)`)
  every token kept           the product's graph at thresholds 0: the same nodes, no token dropped; its time over
                             full int8 is all the graph's own overhead at full length
  kept, CP logits only       ... with each link reading its CP's logits (scores' softmax pruned away)
  kept, no CP                ... with each link reading a constant (the CPs pruned away): what is left over
                             full int8 is the links and what the segments derive from the link's flags

Differences of these rows split the overhead: CP softmax, CP MLP, links and plumbing. The three "kept" rows
compare with an impossible threshold (-3e38), so they keep exactly the live tokens "every token kept" keeps.

Each model is opened in `--sessions` separate sessions, all timed round robin: two sessions of one file differ by
up to 6 % at batch 1 on the 2-core CPU machine (where each session's buffers land), as much as some differences
measured here, so a model's time is the median over its sessions and repeats, and the spread across its sessions
is reported beside it.

    python benchmarks/one_graph_ablation.py --ckpt sst2 --output docs/results/sst2-int8-ablation.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Table, log  # noqa: E402

FULL, PRODUCT, BEFORE = "full int8", "one graph int8", "one graph int8, before"
FULL_PLAIN, CP_INT8 = "full int8, plain", "one graph int8, CP int8"
KEPT, LOGITS, NO_CP = "every token kept", "kept, CP logits only", "kept, no CP"
MODELS = (FULL, FULL_PLAIN, PRODUCT, BEFORE, CP_INT8, KEPT, LOGITS, NO_CP)
FULL_MODELS = (FULL, FULL_PLAIN)  # no CPs, no links: the baselines
ADAPTIVE = (PRODUCT, BEFORE, CP_INT8)  # drop tokens at the trained thresholds
NEVER = -3e38  # below any score or logit: the ablations keep every live token
NEVER_NAME = "ablation_never"  # the initializer holding NEVER


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=None, help="first N dev examples (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sessions", type=int, default=3, help="sessions per model, timed side by side")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--work-dir", default=None, help="export cache (default $ADAPLER_HOME/bench)")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    for option in ("sessions", "repeats", "threads"):
        if getattr(args, option) < 1:
            p.error(f"--{option} must be at least 1, got {getattr(args, option)}")
    return args


def link_reads(model, source):
    """The one graph with each link's comparison reading `source(scores, producers)` (scores: the tensor it read)
    against NEVER; unread nodes pruned."""
    from onnx import numpy_helper

    from adapler_export.onnx_graph import prune_unused

    producers = {o: n for n in model.graph.node for o in n.output}
    model.graph.initializer.append(numpy_helper.from_array(np.array([[NEVER]], np.float32), NEVER_NAME))
    compares = [n for n in model.graph.node if n.op_type == "GreaterOrEqual" and n.output[0].startswith("link")]
    for node in compares:
        node.input[0], node.input[1] = source(node.input[0], producers), NEVER_NAME
    nodes, initializers = prune_unused(list(model.graph.node), list(model.graph.initializer),
                                       [o.name for o in model.graph.output])
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    return model


def cp_logits(scores: str, producers: dict) -> str:
    """The logits under a CP's softmax: Softmax(Where(live, logits, mask value))."""
    softmax = producers[scores]
    where = producers[softmax.input[0]]
    assert softmax.op_type == "Softmax" and where.op_type == "Where", (softmax.op_type, where.op_type)
    return where.input[1]


def export_weighted(model, out_dir: Path) -> None:
    """The fp32 segments as exported before the CP distribution became one Softmax (the weighted form)."""
    import adapler_export.segments as segments
    from adapler_export.modeling_adapler import cp_distribution

    exported = segments.cp_distribution_hard
    segments.cp_distribution_hard = cp_distribution
    try:
        segments.export_segments(model, out_dir, "fp32")
    finally:
        segments.cp_distribution_hard = exported


def build_graphs(ckpt, exports: dict, work: Path) -> dict:
    import onnx

    from adapler_export.onnx_graph import build_one_graph
    from adapler_export.quantization import choose_int8_settings, quantize_dynamic_int8, quantize_segments

    model, specs = ckpt.model, common.fp32_specs(ckpt.model)
    etas = [float(e) for e in model.eta.detach()]
    settings = choose_int8_settings()
    quantize_dynamic_int8(exports["full"], work / "full-int8.onnx", settings)
    weighted = work / "weighted"
    export_weighted(model, weighted)
    paths = {FULL: work / "full-int8.onnx",
             FULL_PLAIN: common.plain_quantize_dynamic(exports["full"], work / "full-plain.onnx")}
    for name, src, keep_cp_fp32 in ((PRODUCT, exports["dir"] / "onnx", True), (BEFORE, weighted, True),
                                    (CP_INT8, exports["dir"] / "onnx", False)):
        int8_dir = work / ("int8-" + src.name + ("" if keep_cp_fp32 else "-cp-int8"))
        int8_dir.mkdir()
        quantize_segments(src, int8_dir, specs, settings, keep_cp_fp32=keep_cp_fp32)
        paths[name] = build_one_graph(int8_dir, specs, etas, work / f"{int8_dir.name}.onnx", precision="int8")
    kept = build_one_graph(work / "int8-onnx", specs, [0.0] * len(etas), work / "kept.onnx", precision="int8")
    paths[KEPT] = kept
    for name, source, file in ((LOGITS, cp_logits, "logits.onnx"), (NO_CP, lambda *_: NEVER_NAME, "no-cp.onnx")):
        onnx.save(link_reads(onnx.load(kept), source), work / file)
        paths[name] = work / file
    return paths, etas


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch  # noqa: F401  (before onnxruntime: the library's import order)

    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.baseline import FullModelBackend
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_dev
    from adapler_export.storage import adapler_home

    started, load_start = time.time(), common.load_average()
    ckpt = load_checkpoint(args.ckpt)
    model = ckpt.model
    exports = common.export_models(ckpt, Path(args.work_dir) if args.work_dir else adapler_home() / "bench", log)
    with tempfile.TemporaryDirectory(prefix="one-graph-ablation-") as tmp:
        paths, etas = build_graphs(ckpt, exports, Path(tmp))
        def opened(name):
            backend = FullModelBackend if name in FULL_MODELS else OneGraphBackend
            return backend(paths[name], model.num_layers, device="cpu", threads=args.threads)

        sessions = {name: [opened(name) for _ in range(args.sessions)] for name in MODELS}
        runners = {(name, i): r for name, rs in sessions.items() for i, r in enumerate(rs)}
        dev = load_dev(ckpt.config.task, args.data_dir, args.samples)
        workload = common.dev_workload(ckpt.tokenizer, dev, ckpt.config.cut)
        batches = common.make_batches(workload, 1, common.pad_id(ckpt.tokenizer))
        outputs = {name: [sessions[name][0].run(*common.batch_inputs(b)) for b in batches]
                   for name in MODELS if name not in FULL_MODELS}
        live = [int(b[1].sum()) for b in batches]
        for name in (KEPT, LOGITS, NO_CP):  # the ablations keep every live token, as thresholds 0 do
            assert all(int((k >= 0).sum()) == n for o, n in zip(outputs[name], live) for k in o.kept), name
        flops = {name: common.flops_summary(batches, [o.kept for o in outputs[name]], model.config)["flops_speedup"]
                 for name in ADAPTIVE}
        labels = {name: [int(np.argmax(o.logits)) for o in outputs[name]] for name in ADAPTIVE}
        times = common.time_round_robin({name: r.run for name, r in runners.items()}, batches, args.repeats,
                                        args.warmup)
        for runner in runners.values():
            runner.close()
    n = len(batches)
    # [sessions, repeats] seconds per pass; ratios pair session i of one model with session i of the baseline
    totals = {name: np.stack([times[(name, i)].sum(axis=1) for i in range(args.sessions)]) for name in MODELS}
    rows = []
    for name in MODELS:
        speedup = float(np.median(totals[FULL] / totals[name]))
        per_session = 1e3 * np.median(totals[name], axis=1) / n
        row = {"model": name, "ms_per_example": 1e3 * float(np.median(totals[name])) / n,
               "ms_per_example_by_session": [float(v) for v in per_session],
               "seconds_repeats": totals[name].tolist(), "vs_full_int8": speedup,
               "over_full_int8_ms": 1e3 * float(np.median(totals[name] - totals[FULL])) / n}
        if name in flops:
            row.update(flops_speedup=flops[name], efficiency=speedup / flops[name])
        rows.append(row)
    over = {r["model"]: r["over_full_int8_ms"] for r in rows}
    split = {"cp_softmax_ms": over[KEPT] - over[LOGITS], "cp_mlp_ms": over[LOGITS] - over[NO_CP],
             "links_and_plumbing_ms": over[NO_CP], "total_at_full_length_ms": over[KEPT],
             "softmax_change_saves_ms": over[BEFORE] - over[PRODUCT]}
    same_labels = sum(a == b for a, b in zip(labels[PRODUCT], labels[BEFORE]))
    cp_int8_labels = sum(a == b for a, b in zip(labels[PRODUCT], labels[CP_INT8]))
    table = Table(["model", "ms/ex", "sessions ms/ex", "x full int8", "over full int8 ms", "FLOPs x", "efficiency"])
    for r in rows:
        by_session = r["ms_per_example_by_session"]
        spread = f"{min(by_session):.3f}-{max(by_session):.3f}"
        table.add(r["model"], r["ms_per_example"], spread, r["vs_full_int8"], r["over_full_int8_ms"],
                  r.get("flops_speedup", "-"), r.get("efficiency", "-"))
    log(table.render())
    log("overhead at full length (ms/example): " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    log(f"labels: the Softmax form and the weighted form agree on {same_labels} of {n} examples; the CP in int8 "
        f"agrees with the product on {cp_int8_labels}")
    load_end = common.load_average()
    result = {**common.result_header(Path(args.output).stem, "one_graph_ablation.py", argv, False),
              "checkpoint": {"path": str(ckpt.path), "digest": exports["digest"], "eta": etas},
              "workload": workload.summary(), "batch": 1, "batch_order": "dataset order",
              "settings": {"threads": args.threads, "repeats": args.repeats, "sessions_per_model": args.sessions,
                           "warmup_batches": args.warmup,
                           "statistic": "median over repeats of one pass; ratios: median of per-repeat ratios"},
              "rows": rows, "overhead_split": split,
              "softmax_vs_weighted_labels": {"agree": same_labels, "examples": n},
              "cp_int8_vs_product_labels": {"agree": cp_int8_labels, "examples": n},
              "machine": common.machine_info(), "load_average_start": load_start, "load_average_end": load_end,
              "seconds": round(time.time() - started, 1), "notes": common.run_notes(load_start, load_end, False)}
    for note in result["notes"]:
        log("NOTE: " + note)
    common.write_json(Path(args.output), result)
    log(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
