#!/usr/bin/env python
"""Which INT8 form of the one graph (onnx/model.onnx) is fastest on ONNX Runtime CPU, and what it costs in parity.

Candidates, all on the same dev sentences, batch by batch round robin (who goes first rotates), median of repeats:

  one-graph fp32            the fp32 artifact's model.onnx (the baseline of every ratio)
  static-qdq                the one graph of a `quantize --scheme static-qdq` artifact (calibration/int8.py: QDQ,
                            uint8 activations calibrated on train sentences, per-channel weights, FFN down fp32)
  dynamic <w> [rr] [...]    `adapler_export.quantization.quantize_dynamic_int8` of the fp32 model.onnx: weight
                            MatMuls int8 (<w>: per-tensor or per-channel), reduce_range (rr) or not, CP path fp32;
                            ffn-down-fp32: the FFN down projection kept fp32 too (as the static scheme does)
  dynamic ... cp-int8       the same with the CP scoring path quantized too (what fp32 CPs buy in keep decisions)
  full fp32 / full dynamic  the checkpoint's backbone without CPs (baseline.export_full_onnx) and its dynamic INT8

Parity of every adaptive candidate against the PyTorch fp32 reference (`parity.compare_backends`, batch 32: label
agreement, keep-decision flips per link, |Δlogit|, the int8 tolerances), dev accuracy at batch 1 and 32.

    python benchmarks/int8_schemes.py --ckpt sst2-small --fp32-artifact sst2-small-fp32 \
        --static-artifact sst2-small-int8-static --output docs/results/int8-schemes.json
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
import common  # noqa: E402  (benchmarks/common.py; also puts the repository on sys.path)
from common import Table, log  # noqa: E402

DYNAMIC = [  # (name, per_channel, reduce_range, keep_cp_fp32, keep_ffn_down_fp32)
    ("dynamic per-tensor", False, False, True, False),
    ("dynamic per-channel", True, False, True, False),
    ("dynamic per-tensor ffn-down-fp32", False, False, True, True),
    ("dynamic per-channel ffn-down-fp32", True, False, True, True),
    ("dynamic per-tensor rr", False, True, True, False),
    ("dynamic per-tensor cp-int8", False, False, False, False),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint the artifacts were built from")
    p.add_argument("--fp32-artifact", required=True)
    p.add_argument("--static-artifact", help="an int8 artifact of the static QDQ scheme (left out: not measured)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=None, help="first N dev sentences (default: all)")
    p.add_argument("--batches", type=common.int_list, default="1,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--no-full", action="store_true", help="skip the full static model rows")
    p.add_argument("--output", default=str(common.RESULTS_DIR / "int8-schemes.json"))
    return p.parse_args(argv)


class Replay:
    """The reference's outputs recorded once, replayed in the same batch order (compare_backends runs the
    reference on every batch; PyTorch is the slow part, and it is the same every time)."""
    name = "pytorch-reference"

    def __init__(self, backend):
        self.backend, self.outputs, self.index, self.recording = backend, [], 0, True

    def run(self, *inputs):
        if self.recording:
            self.outputs.append(self.backend.run(*inputs))
            return self.outputs[-1]
        self.index += 1
        return self.outputs[self.index - 1]

    def replay(self):
        self.recording, self.index = False, 0
        return self


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch  # noqa: F401  (before onnxruntime: the library's import order)

    from adapler_export.artifact import open_artifact
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.baseline import FullModelBackend
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_dev
    from adapler_export.parity import compare_backends
    from adapler_export.quantization import Int8Settings, choose_int8_settings, quantize_dynamic_int8

    torch.set_num_threads(args.threads)
    started, load_start = time.time(), common.load_average()
    ckpt = load_checkpoint(args.ckpt)
    fp32_dir, fp32 = open_artifact(args.fp32_artifact)
    dev = load_dev(fp32.task, args.data_dir, args.samples)
    workload = common.dev_workload(ckpt.tokenizer, dev, fp32.cut)
    n = len(workload.examples)
    chosen = choose_int8_settings()
    log(f"{n} dev sentences; this CPU's int8 choice: reduce_range {chosen.reduce_range} ({chosen.isa})")

    tmp = Path(tempfile.mkdtemp(prefix="int8-schemes-"))
    graphs = {"one-graph fp32": fp32_dir / fp32.one_graph["file"]}
    if args.static_artifact:
        static_dir, static = open_artifact(args.static_artifact)
        scheme = (static.quantization or {}).get("scheme", "static-qdq")
        if static.precision != "int8" or scheme != "static-qdq":
            raise SystemExit(f"{static_dir} is not a static-qdq int8 artifact ({static.precision}, {scheme})")
        graphs["static-qdq"] = static_dir / static.one_graph["file"]
    quantized = {}
    for name, per_channel, reduce_range, keep_cp, keep_ffn_down in DYNAMIC:
        path = tmp / (name.replace(" ", "_") + ".onnx")
        info = quantize_dynamic_int8(graphs["one-graph fp32"], path,
                                     Int8Settings(per_channel, reduce_range, "benchmark", "benchmark grid"), keep_cp,
                                     keep_ffn_down)
        quantized[name] = {"per_channel": per_channel, "reduce_range": reduce_range, "cp_path": "fp32" if keep_cp
                           else "int8", "ffn_down": "fp32" if keep_ffn_down else "int8",
                           "quantized_matmuls": len(info["quantized_nodes"])}
        graphs[name] = path
    etas = list(fp32.eta)
    models = {name: OneGraphBackend(path, fp32.num_layers, device="cpu", threads=args.threads, etas=etas)
              for name, path in graphs.items()}
    if not args.no_full:
        from adapler_export.storage import adapler_home

        exports = common.export_models(ckpt, adapler_home() / "bench", log)  # the cache bench_one_graph.py uses
        full_int8 = tmp / "full_dynamic.onnx"
        quantize_dynamic_int8(exports["full"], full_int8, chosen)
        models["full fp32"] = FullModelBackend(exports["full"], fp32.num_layers, device="cpu", threads=args.threads)
        models["full dynamic"] = FullModelBackend(full_int8, fp32.num_layers, device="cpu", threads=args.threads)

    # parity against the PyTorch fp32 reference, batch 32 (as build / verify run it)
    reference = Replay(PyTorchBackend(ckpt.model))
    parity = {}
    for name in graphs:
        report = compare_backends(reference, models[name], ckpt.tokenizer, dev.texts, fp32.cut,
                                  "fp32" if name == "one-graph fp32" else "int8", batch_size=32, pairs=dev.pairs)
        reference.replay()
        parity[name] = report.to_dict()
        log(f"parity {name:<28} labels {report.label_agreement * 100:6.2f}%  flips {report.flips}/{report.decisions} "
            f"({report.flip_rate * 100:.3f}%)  mean |Δlogit| {report.mean_abs_logit_diff:.4f}  "
            f"{'passed' if report.passed else 'FAILED: ' + '; '.join(report.failures)}")

    rows = []
    labels = np.asarray(workload.labels)
    pad = common.pad_id(ckpt.tokenizer)
    for batch in args.batches:
        batches = common.make_batches(workload, batch, pad)
        accuracy = {}
        for name, model in models.items():  # the predictions of the timed batches: accuracy at this batch size
            predicted = np.empty(n, np.int64)
            for b in batches:
                predicted[b[2]] = model.run(*common.batch_inputs(b)).logits.argmax(-1)
            accuracy[name] = float((predicted == labels).mean())
        times = common.time_round_robin({name: m.run for name, m in models.items()}, batches, args.repeats,
                                        args.warmup)
        totals = {name: t.sum(axis=1) for name, t in times.items()}
        base = totals["one-graph fp32"]
        full = totals.get("full fp32")
        for name in models:
            row = {"model": name, "batch": batch, "threads": args.threads, "examples": n,
                   "ms_per_example": 1e3 * float(np.median(totals[name])) / n,
                   "seconds_repeats": [float(v) for v in totals[name]],
                   "vs_one_graph_fp32": float(np.median(base / totals[name])),
                   "dev_accuracy": accuracy[name]}
            if full is not None:
                row["vs_full_fp32"] = float(np.median(full / totals[name]))
            rows.append(row)
            log(f"B={batch:<3} {name:<28} {row['ms_per_example']:7.3f} ms/ex  x{row['vs_one_graph_fp32']:.2f} vs "
                f"one-graph fp32" + (f"  x{row['vs_full_fp32']:.2f} vs full fp32" if full is not None else "")
                + f"  acc {accuracy[name] * 100:.2f}%")
    for model in models.values():
        model.close()

    result = {
        **common.result_header(Path(args.output).stem, "int8_schemes.py", argv, False),
        "checkpoint": {"path": str(ckpt.path), "eta": etas, "task": fp32.task},
        "fp32_artifact": str(fp32_dir), "static_artifact": args.static_artifact,
        "workload": workload.summary(), "batch_order": "dataset order (each batch padded to its longest)",
        "settings": {"threads": args.threads, "repeats": args.repeats, "warmup_batches": args.warmup,
                     "statistic": "median over repeats of one pass over all batches; ratios: median of per-repeat "
                                  "ratios", "session_options": "backends.onnxruntime.session_options"},
        "this_cpu_int8_choice": chosen.to_dict(),
        "dynamic_variants": quantized,
        "parity": parity,
        "rows": rows,
        "machine": common.machine_info(), "load_average_start": load_start, "load_average_end": common.load_average(),
        "seconds": round(time.time() - started, 1),
        "notes": common.run_notes(load_start, common.load_average(), False),
    }
    result["summary"] = summarize(result)
    table = Table(["model", "B", "ms/ex", "x one-graph fp32", "x full fp32", "acc %"])
    for r in rows:
        table.add(r["model"], r["batch"], r["ms_per_example"], r["vs_one_graph_fp32"],
                  r.get("vs_full_fp32", float("nan")), r["dev_accuracy"] * 100)
    log(table.render())
    log(json.dumps(result["summary"], indent=1))
    common.write_json(Path(args.output), result)
    log(f"results: {args.output}")
    return 0


def summarize(result: dict) -> dict:
    """The fastest passing int8 candidate per batch size, and the flips the CP path costs in int8."""
    passed = {name for name, p in result["parity"].items() if p["passed"] and name != "one-graph fp32"}
    out = {}
    for batch in sorted({r["batch"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["batch"] == batch and r["model"] in passed]
        if rows:
            best = min(rows, key=lambda r: r["ms_per_example"])
            out[f"fastest_passing_batch_{batch}"] = {"model": best["model"], "ms_per_example": best["ms_per_example"],
                                                     "vs_one_graph_fp32": best["vs_one_graph_fp32"]}
    p = result["parity"]
    if "dynamic per-tensor" in p and "dynamic per-tensor cp-int8" in p:  # [CP fp32, CP int8]
        out["flip_rate_cp_fp32_vs_cp_int8"] = [p["dynamic per-tensor"]["flip_rate"],
                                               p["dynamic per-tensor cp-int8"]["flip_rate"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
