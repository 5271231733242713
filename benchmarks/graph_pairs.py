#!/usr/bin/env python
"""Whole-model ONNX graphs timed against each other in ONNX Runtime (CPU), batch by batch, round robin.

For questions of the form "did this change to the exporter make the graphs faster, and did it move the
adaptive model's speedup over the full one?": give the graphs (for example model.onnx and full.onnx as two
revisions of the exporter wrote them) and the ratios to report. Every graph runs with the library's
session options (`backends.onnxruntime.session_options`) on the same padded batches of a task's dev split,
encoded by the checkpoint's tokenizer and cut (`common.dev_workload`); the runner that goes first rotates
batch by batch (`common.time_round_robin`); medians over repeats.

    python benchmarks/graph_pairs.py --ckpt p0015n20k \\
        --graph old-graph=/tmp/old/onnx/model.onnx --graph new-graph=/tmp/new/onnx/model.onnx \\
        --graph old-full=/tmp/old/onnx/full.onnx --graph new-full=/tmp/new/onnx/full.onnx \\
        --ratio old-full/old-graph --ratio new-full/new-graph --ratio old-graph/new-graph --threads 1,2

A ratio A/B is the median over repeats of (A's time / B's time): > 1 means B is faster.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py; also puts the repository on sys.path)
from common import log  # noqa: E402


def name_and_path(text: str) -> tuple:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--graph wants NAME=PATH to an existing .onnx file, got {text!r}")
    return name, Path(path)


def ratio_names(text: str) -> tuple:
    slow, sep, fast = text.partition("/")
    if not sep or not slow or not fast:
        raise argparse.ArgumentTypeError(f"--ratio wants A/B (two --graph names), got {text!r}")
    return slow, fast


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint name or directory: its tokenizer, task and cut")
    p.add_argument("--graph", type=name_and_path, action="append", required=True, help="NAME=PATH (repeat)")
    p.add_argument("--ratio", type=ratio_names, action="append", default=[], help="A/B: report A's time / B's")
    p.add_argument("--threads", type=common.int_list, default="1,2", help="comma-separated intra-op threads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--examples", type=int, default=None, help="first N dev examples (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    names = [n for n, _ in args.graph]
    if len(set(names)) != len(names):
        p.error(f"--graph names must differ: {names}")
    for slow, fast in args.ratio:
        if slow not in names or fast not in names:
            p.error(f"--ratio {slow}/{fast}: both must be --graph names ({', '.join(names)})")
    return args


def open_runner(path: Path, threads: int):
    """`run(*batch_inputs)` over one graph; feeds what the graph takes (token types only if it has them)."""
    from adapler_export.backends.onnxruntime import open_session, session_options

    session = open_session(path, session_options(threads), ["CPUExecutionProvider"])
    names = common.full_graph_inputs(session)
    return lambda *inputs: session.run(None, dict(zip(names, inputs)))


def main(argv=None) -> int:
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_dev

    args = parse_args(argv)
    ckpt = load_checkpoint(args.ckpt)  # a name under $ADAPLER_HOME/checkpoints or a path
    task = ckpt.config.task
    workload = common.dev_workload(ckpt.tokenizer, load_dev(task, args.data_dir), ckpt.config.cut, args.examples, task)
    batches = common.make_batches(workload, args.batch, common.pad_id(ckpt.tokenizer))
    examples = sum(len(b[0]) for b in batches)
    rows = []
    for threads in args.threads:
        runners = {name: open_runner(path, threads) for name, path in args.graph}
        times = common.time_round_robin(runners, batches, args.repeats, args.warmup)
        per_pass = {name: t.sum(axis=1) for name, t in times.items()}
        row = {"threads": threads, "batch": args.batch, "workload": workload.name, "examples": examples,
               "ms_per_example": {n: 1e3 * float(np.median(v)) / examples for n, v in per_pass.items()},
               "ratios": {f"{a}/{b}": float(np.median(per_pass[a] / per_pass[b])) for a, b in args.ratio}}
        rows.append(row)
        log(f"threads {threads}, batch {args.batch}: " + ", ".join(f"{n} {ms:.3f} ms" for n, ms in
                                                                   row["ms_per_example"].items()))
        for key, value in row["ratios"].items():
            log(f"  {key}: {value:.3f}x")
    if args.output:
        common.write_json(args.output, {"graphs": {n: str(p) for n, p in args.graph}, "ckpt": str(args.ckpt),
                                        "machine": common.machine_info(), "rows": rows,
                                        "definition": "ratio A/B = median over repeats of A's time / B's time"})
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
