#!/usr/bin/env python
"""Where the one graph's time goes at batch 1: ONNX Runtime's profiler, time per op type and per part of the model.

The graph is opened with the library's session options (`backends.onnxruntime.session_options`, graph
optimizations on), the optimized graph is saved beside the profile, and every profiled kernel is attributed to
a part of the model by its node's first output (names survive ONNX Runtime's fusions as output names):

  layer       the encoder layers' own work (attention, FFN, LayerNorm) and the shape / mask ops around them
  cp          the Contribution Predictors and their masked softmax (`segmentK//scores/...`)
  link        the links (`linkK/...`, the input mask state `input/...`) and the output Identities
  embeddings  segment 0's embeddings
  head        the pooler and classifier

For each part and op type: microseconds per example (sum of kernel times / examples) and nodes run. The wall
time per example (session.run) is reported beside the sum of kernel times (the rest: ONNX Runtime's own per-node
overhead between kernels, and the Python call).

    python benchmarks/profile_one_graph.py --artifact sst2-small-cal2-fp32 --output docs/results/x-profile.json
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Table, log  # noqa: E402

PARTS = ("layer", "cp", "link", "embeddings", "head")


def part_of(output: str, node_name: str) -> str:
    name = output or node_name
    top = name.split("/")[0]
    if top.startswith("link") or top in ("input",) or top.startswith("kept_positions") or top == "logits":
        return "link"
    if "/scores/" in name:
        return "cp"
    if top == "segment0":
        return "embeddings"
    if "/pooler/" in name or "/classifier/" in name:
        return "head"
    return "layer"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", help="an artifact (its onnx/model.onnx)")
    p.add_argument("--graph", help="or a one-graph file directly (with --tokenizer-of an artifact)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=None, help="first N dev sentences (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--output", required=True)
    return p.parse_args(argv)


def profile_graph(graph: Path, batches: list, threads: int, warmup: int, work: Path) -> dict:
    """Run `batches` through `graph` with the profiler on; returns the per-part / per-op-type summary."""
    import onnx

    from adapler_export.backends.onnxruntime import open_session, session_options
    from adapler_export.specs import PAIR_MODEL_INPUTS

    options = session_options(threads)
    options.optimized_model_filepath = str(work / "optimized.onnx")
    plain = open_session(graph, options, ["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    inputs = [i.name for i in plain.get_inputs()]
    feeds_of = [dict(zip(PAIR_MODEL_INPUTS, common.batch_inputs(b))) for b in batches]
    feeds_of = [{k: v for k, v in f.items() if k in inputs} for f in feeds_of]
    for feeds in feeds_of[:warmup]:
        plain.run(names, feeds)
    start = time.perf_counter()
    for feeds in feeds_of:
        plain.run(names, feeds)
    wall = time.perf_counter() - start
    del plain

    optimized = onnx.load(str(work / "optimized.onnx"), load_external_data=False)
    output_of = {n.name: (n.output[0] if n.output else "") for n in optimized.graph.node}
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "profile")
    session = open_session(graph, options, ["CPUExecutionProvider"])
    warm = feeds_of[:warmup]
    for feeds in warm + feeds_of:
        session.run(names, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    cutoff = runs[len(warm)]["ts"]  # the warm-up runs are not counted
    runs = runs[len(warm):]
    by_part = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < cutoff:
            continue
        node = event["name"][: -len("_kernel_time")]
        op = event.get("args", {}).get("op_name", "?")
        cell = by_part[part_of(output_of.get(node, ""), node)][op]
        cell[0] += event["dur"]
        cell[1] += 1
    n = len(feeds_of)
    parts = {part: {op: {"us_per_example": total / n, "nodes_per_example": count / n}
                    for op, (total, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])}
             for part, ops in by_part.items()}
    totals = {part: sum(v["us_per_example"] for v in ops.values()) for part, ops in parts.items()}
    kernel_total = sum(totals.values())
    model_run_us = float(np.median([e["dur"] for e in runs])) if runs else None
    return {"examples": n, "wall_us_per_example_unprofiled": 1e6 * wall / n,
            "model_run_us_median_profiled": model_run_us,
            "kernel_us_per_example": kernel_total,
            "nodes_per_example": sum(c["nodes_per_example"] for ops in parts.values() for c in ops.values()),
            "optimized_graph_nodes": len(optimized.graph.node),
            "part_us_per_example": dict(sorted(totals.items(), key=lambda kv: -kv[1])),
            "part_share_of_kernel_time": {p: t / kernel_total for p, t in totals.items()},
            "parts": parts}


def main(argv=None) -> int:
    args = parse_args(argv)
    from adapler_export.artifact import open_artifact

    from transformers import AutoTokenizer

    artifact_dir, manifest = open_artifact(args.artifact)
    graph = Path(args.graph) if args.graph else artifact_dir / manifest.one_graph["file"]
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir / "tokenizer")
    from adapler_export.data import load_dev

    dev = load_dev(manifest.task, args.data_dir, args.samples)
    workload = common.dev_workload(tokenizer, dev, manifest.cut)
    batches = common.make_batches(workload, 1, common.pad_id(tokenizer))
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        summary = profile_graph(graph, batches, args.threads, args.warmup, Path(tmp))
    result = {**common.result_header(Path(args.output).stem, "profile_one_graph.py", argv, False),
              "artifact": str(artifact_dir), "graph": str(graph), "eta": manifest.eta, "batch": 1,
              "threads": args.threads, "workload": workload.summary(), **summary, "machine": common.machine_info()}
    table = Table(["part", "op", "us/example", "nodes/example"])
    for part, ops in summary["parts"].items():
        for op, cell in list(ops.items())[:8]:
            table.add(part, op, cell["us_per_example"], cell["nodes_per_example"])
    log(table.render())
    log(json.dumps({k: result[k] for k in ("wall_us_per_example_unprofiled", "model_run_us_median_profiled",
                                           "kernel_us_per_example", "nodes_per_example", "optimized_graph_nodes",
                                           "part_us_per_example")}, indent=1))
    common.write_json(Path(args.output), result)
    log(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
