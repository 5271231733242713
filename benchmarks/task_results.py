#!/usr/bin/env python
"""One results table per task: stage 1 vs AdapLeR (trained, then calibrated), accuracy and speed.

Accuracy, FLOPs speedup and tokens kept per layer come from each checkpoint's own dev evaluation
(`adapler_config.json` "metrics", written by `train`, `calibrate` or docs/results/gpu/assemble_checkpoint.py);
wall-clock speedups from `bench_one_graph.py` results of the same checkpoints (the adaptive model as one ONNX
Runtime graph vs the full static model, interleaved, medians). Writes `<output>.json` with one row per
(model, backend, threads, batch):

    python benchmarks/task_results.py --task imdb --stage1-from imdb-gpu \
        --model adapler-trained=imdb-gpu:docs/results/imdb-gpu-one-graph.json \
        --model adapler-calibrated=imdb-gpu-3x:docs/results/imdb-gpu-3x-one-graph.json:eval-3x.json \
        --output docs/results/imdb-minilm
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)


def checkpoint_metrics(name: str) -> dict:
    from adapler_export.checkpoint import ADAPLER_CONFIG, resolve_checkpoint

    path = resolve_checkpoint(name)
    return {"path": str(path), **json.loads((path / ADAPLER_CONFIG).read_text())}


def rows_for(task: str, model: str, config: dict, bench: dict | None, stage1_accuracy: float) -> list:
    metrics = config["metrics"]
    base = {"task": task, "model": model, "accuracy": metrics["accuracy"],
            "accuracy_drop_points": round(100 * (stage1_accuracy - metrics["accuracy"]), 2),
            "flops_speedup": metrics["flops_speedup"], "kept_per_layer": metrics["kept_per_layer"],
            "eta": config.get("eta"), "dev_examples": metrics["examples"]}
    if metrics.get("f1") is not None:  # tasks whose papers report F1 (MRPC) beside accuracy
        base["f1"] = metrics["f1"]
    if bench is None:
        return [{**base, "backend": None, "batch": None, "wallclock_speedup": None}]
    rows = []
    for r in bench["rows"]:
        rows.append({**base, "backend": "onnxruntime-graph (CPU)", "threads": r["threads"], "batch": r["batch"],
                     "bench_workload": r["workload"], "bench_examples": r["examples"],
                     "bench_flops_speedup": r["flops_speedup"], "wallclock_speedup": r["one_graph_vs_full"],
                     "wallclock_to_flops": r["one_graph_vs_full"] / r["flops_speedup"],
                     "chain_wallclock_speedup": r["chain_vs_full"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--stage1-from", required=True, help="a checkpoint whose training record holds stage 1's accuracy")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CKPT[:BENCH_JSON[:EVALUATE_JSON]]",
                    help="EVALUATE_JSON: `adapler-export evaluate --json` output to use instead of the checkpoint's "
                         "own metrics (a calibrated checkpoint records those of its calibration subset)")
    ap.add_argument("--output", required=True, help="path without suffix")
    a = ap.parse_args(argv)

    stage1 = checkpoint_metrics(a.stage1_from)["metrics"]
    stage1_accuracy = stage1["stage1_dev_accuracy"]
    rows = [{"task": a.task, "model": "stage1", "accuracy": stage1_accuracy, "accuracy_drop_points": 0.0,
             "flops_speedup": 1.0, "kept_per_layer": None, "backend": None, "batch": None,
             "wallclock_speedup": 1.0, "note": "the fine-tuned backbone, no token removal (the speed baseline)",
             **({"f1": stage1["stage1_dev_f1"]} if stage1.get("stage1_dev_f1") is not None else {})}]
    memory = {}
    for spec in a.model:
        name, _, rest = spec.partition("=")
        ckpt, _, rest = rest.partition(":")
        bench_path, _, evaluate_path = rest.partition(":")
        bench = json.loads(Path(bench_path).read_text()) if bench_path else None
        config = checkpoint_metrics(ckpt)
        if evaluate_path:
            config["metrics"] = json.loads(Path(evaluate_path).read_text())
        rows += rows_for(a.task, name, config, bench, stage1_accuracy)
        if bench is not None and bench.get("memory"):
            memory[name] = bench["memory"]
    result = {"task": a.task, "stage1_dev_accuracy": stage1_accuracy, "rows": rows, "peak_memory": memory,
              "definitions": {"accuracy_drop_points": "stage-1 accuracy minus the model's, in points",
                              "wallclock_speedup": "bench_one_graph.py one_graph_vs_full (median, interleaved)",
                              "wallclock_to_flops": "wallclock_speedup / the benchmark batch's FLOPs speedup"}}
    out = Path(a.output).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        wall = "-" if r.get("wallclock_speedup") is None else f"{r['wallclock_speedup']:.2f}x"
        f1 = f" F1 {r['f1']:.3f}" if r.get("f1") is not None else ""
        print(f"{r['model']:<20} acc {r['accuracy']:.4f}{f1} drop {r['accuracy_drop_points']:+.2f} pt  FLOPs "
              f"{r['flops_speedup']:.2f}x  threads {r.get('threads', '-')}  B={r['batch']}  wall {wall}"
              + (f" ({r['wallclock_to_flops']:.2f} of FLOPs)" if r.get("wallclock_to_flops") else ""))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
