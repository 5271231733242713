#!/usr/bin/env python
"""Cheap runtime variants of the adaptive ONNX Runtime pipeline, timed against each other.

Every variant is the library's `OnnxRuntimeBackend` (the one chain, `chain.run_chain`) over the same segment
graphs and produces the same outputs (checked bit for bit against the reference variant on every batch
before timing); they differ only in the link and in how a segment is called, the subjects of this script:

  reference      the reference link, `link.token_compact_numpy` (argsort + take_along_axis)
  fast-link      `link.token_compact_fast` (the backend's default): identity when nothing is dropped, else
                 one row gather (np.take on [B*S, H]) instead of per-element fancy indexing
  fast-link+raw  the same, calling the C++ session directly (`session._sess.run`, output names prepared)
  threads=1      fast-link with single-threaded sessions (the full model then also gets 1 thread)

and, beside them, the full static graph with the same session options ("full" and "full threads=1").
Timing: round robin over variants, batch by batch, rotating who goes first; medians over repeats.

    python benchmarks/ort_variants.py --ckpt sst2 --workload sst2 --batch 1
    python benchmarks/ort_variants.py --ckpt sst2 --global-pool          # shared global thread pool
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Table  # noqa: E402


def build_sessions(paths, threads, global_pool=False):
    from adapler_export.backends.onnxruntime import open_session, session_options

    options = session_options(threads)
    if global_pool:
        options.use_per_session_threads = False
    return [open_session(p, options, ["CPUExecutionProvider"]) for p in paths]


def chain_variant(backend, link=None, raw: bool = False):
    """`backend` (an OnnxRuntimeBackend) with another link and/or its segments called through the C++
    session directly; the chain stays the library's. Returns `run(ids, mask) -> (logits, kept)`."""
    import onnxruntime as ort

    variant = copy.copy(backend)
    if link is not None:
        variant.link = link
    if raw:
        options = ort.RunOptions()
        calls = [session._sess.run for session in backend.sessions]

        def run_segment(index, feeds):
            names = backend.output_names[index]
            return dict(zip(names, calls[index](names, feeds, options)))
        variant.run_segment = run_segment

    def run(ids, mask):
        out = variant.run(ids, mask)
        return out.logits, out.kept
    return run


def make_full(session, raw=False):
    call = session._sess.run if raw else session.run
    outputs = [o.name for o in session.get_outputs()]
    inputs = common.full_graph_inputs(session)
    return lambda ids, mask: (call(outputs, dict(zip(inputs, (ids, mask))))[0], None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="sst2")
    p.add_argument("--data-dir", default=None, help="GLUE-style SST-2 folder (default: the task's)")
    p.add_argument("--workload", default="sst2", choices=["sst2", "long"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--examples", type=int, default=None, help="default: 400 (sst2) / 32 (long)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--global-pool", action="store_true",
                   help="all sessions share ONNX Runtime's global thread pool (set_global_thread_pool_sizes)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch  # noqa: F401
    import onnxruntime as ort

    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.link import token_compact_fast, token_compact_numpy
    from adapler_export.storage import adapler_home

    threads = args.threads or len(os.sched_getaffinity(0))
    if args.global_pool:
        ort.set_global_thread_pool_sizes(threads, 1)
    ckpt = load_checkpoint(args.ckpt)
    exports = common.export_models(ckpt, Path(args.work_dir) if args.work_dir else adapler_home() / "bench")
    dev = common.sst2_dev(args.data_dir)
    if args.workload == "sst2":
        workload = common.dev_workload(ckpt.tokenizer, dev, ckpt.config.cut, args.examples or 400)
    else:
        workload = common.long_workload(ckpt.tokenizer, dev.texts, args.examples or 32)
    batches = common.make_batches(workload, args.batch, common.pad_id(ckpt.tokenizer))

    chain = common.onnxruntime_chain(ckpt.model, exports["segments"], threads)
    if args.global_pool:  # the subject of --global-pool: the same chain over sessions sharing one thread pool
        chain.sessions = build_sessions(exports["segments"], threads, global_pool=True)
    full = build_sessions([exports["full"]], threads, args.global_pool)[0]
    variants = {
        "reference": chain_variant(chain, token_compact_numpy),
        "fast-link": chain_variant(chain, token_compact_fast),
        "fast-link+raw": chain_variant(chain, token_compact_fast, raw=True),
        "full": make_full(full),
    }
    if not args.global_pool and threads > 1:
        variants["threads=1"] = chain_variant(common.onnxruntime_chain(ckpt.model, exports["segments"], 1),
                                              token_compact_fast)
        variants["full threads=1"] = make_full(build_sessions([exports["full"]], 1)[0])

    # Same outputs, bit for bit, before any timing.
    for ids, mask, _ in batches:
        want_logits, want_kept = variants["reference"](ids, mask)
        for name, run in variants.items():
            if name.startswith("full"):
                continue
            logits, kept = run(ids, mask)
            assert all(np.array_equal(a, b) for a, b in zip(kept, want_kept)), name
            assert np.abs(logits - want_logits).max() <= (0 if name in ("fast-link", "fast-link+raw") else 1e-4), name

    names = list(variants)
    times = common.time_round_robin(variants, batches, args.repeats, warmup=8)
    totals = {n: t.sum(axis=1) for n, t in times.items()}
    table = Table(["variant", "ms/example", "vs reference", "speedup over full (same threads)"])
    result = {"workload": workload.summary(), "batch": args.batch, "threads": threads,
              "global_pool": args.global_pool, "repeats": args.repeats, "load_average": common.load_average(),
              "machine": common.cpu_model(), "variants": {}}
    for n in names:
        med = float(np.median(totals[n]))
        full_name = "full threads=1" if n == "threads=1" else "full"
        ratio = float(np.median(totals[full_name] / totals[n]))
        vs_ref = float(np.median(totals["reference"] / totals[n]))
        result["variants"][n] = {"ms_per_example": 1e3 * med / len(workload.examples),
                                 "speedup_vs_reference": vs_ref, "wallclock_speedup_vs_full": ratio}
        table.add(n, 1e3 * med / len(workload.examples), vs_ref, "-" if n.startswith("full") else ratio)
    print(f"{workload.name}, batch {args.batch}, {len(workload.examples)} examples x {args.repeats}, threads {threads}"
          f"{', global pool' if args.global_pool else ''}; load average {common.load_average()}")
    print(table.render())
    if args.json:
        common.write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
