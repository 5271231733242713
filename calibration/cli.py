"""``adapler-export calibrate`` and ``adapler-export quantize``: argparse wiring for the CLI.

Wire into ``adapler_export/cli.py`` (both commands come with the one call)::

    from calibration.cli import add_calibrate_parser
    add_calibrate_parser(sub)

Each parser sets ``func`` (``args.func(args) -> int``); user errors raise ``AdaplerError``, which the CLI
prints as one line with exit status 2. Every argument is checked before any work. Results go to stdout
once (the sweep table, the chosen point, where things were written); progress and diagnostics to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys

from adapler_export.arguments import COUNT, NON_NEGATIVE, POSITIVE, integer, use_threads


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _scales(text: str) -> list:
    """Comma-separated numbers (their range is checked with the other options: CalibrateOptions.validate)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated numbers, e.g. 0,0.5,1,2,4") from None


def _json_default(value):
    return str(value)


def cmd_calibrate(args) -> int:
    from .sweep import CalibrateOptions, calibrate

    options = CalibrateOptions(target_speedup=args.target_speedup, max_accuracy_drop=args.max_accuracy_drop,
                               reference=args.reference, data_dir=args.data_dir, split=args.split,
                               samples=args.samples,
                               scales=args.scales, num_scales=args.num_scales, refine=not args.no_refine,
                               measure=args.measure, measure_samples=args.measure_samples,
                               measure_repeats=args.repeats, threads=1 if args.threads is None else args.threads,
                               report_dir=args.report_dir, force=args.force).validate()
    use_threads(args.threads)
    result = calibrate(args.ckpt, args.output, options, log=_log)
    if args.json:
        record = dict(result.record)
        record["checkpoint"] = str(result.checkpoint) if result.checkpoint else None
        record["files"] = {k: str(v) for k, v in result.files.items()}
        print(json.dumps(record, indent=2, default=_json_default))
        return 0
    print(result.table())
    if result.chosen is not None:
        c = result.chosen
        print(f"chosen: {c.label}: accuracy {c.accuracy * 100:.2f}%, FLOPs speedup {c.flops_speedup:.2f}x"
              + (f", measured {c.measured_speedup:.2f}x" if c.measured_speedup is not None else "")
              + f"; eta {' '.join(f'{e:.3f}' for e in c.eta)}")
        print(f"calibrated checkpoint: {result.checkpoint}")
    else:
        print("no target given: sweep report only, no checkpoint written")
    print(f"report: {result.files['json']}  plots: {result.files['tradeoff_png']}, {result.files['kept_png']}")
    return 0


def cmd_quantize(args) -> int:
    from adapler_export.progress import progress

    from .int8 import QuantizeOptions, quantize_artifact, quantize_summary

    options = QuantizeOptions(scheme=args.scheme, calib_samples=args.calib_samples, calib_split=args.calib_split,
                              calibrate_method=args.method, per_channel=args.per_channel,
                              reduce_range=None if args.reduce_range == "auto" else args.reduce_range == "on",
                              symmetric_activations=args.symmetric, quantize_attention=args.quantize_attention,
                              quantize_ffn_out=args.quantize_ffn_out, quantize_outputs=args.quantize_outputs,
                              data_dir=args.data_dir, samples=args.samples, bench=not args.no_bench,
                              threads=1 if args.threads is None else args.threads, tensorrt=args.tensorrt,
                              max_batch=args.max_batch, max_seq=args.max_seq, force=args.force).validate()
    use_threads(args.threads)
    result = quantize_artifact(args.artifact, args.output, options, ckpt=args.ckpt, log=_log, progress=progress)
    summary = quantize_summary(result)
    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
        return 0
    print(result.parity.table())
    acc = summary["accuracy"]
    print(f"dev accuracy: fp32 reference {acc['fp32_reference'] * 100:.2f}%  int8 {acc['int8'] * 100:.2f}%  "
          f"({acc['examples']} examples)")
    speed = summary["speed"] or {}
    for key, value in speed.items():
        if key.startswith("batch_"):
            print(f"speed {key.replace('_', ' ')}: fp32 {value['fp32_ms']:.2f} ms  int8 {value['int8_ms']:.2f} ms "
                  f"per sentence ({value['speedup']:.2f}x, ONNX Runtime CPU, {speed['threads']} thread(s))")
    engines = summary["engines"]
    if engines["plans"]:
        print(f"TensorRT INT8 engines ({engines['flavor']} {engines['version']}): {', '.join(engines['plans'])}")
    if args.tensorrt:
        for kind, reason in engines["not_built"].items():
            print(f"TensorRT INT8 {kind} engine(s) not built: {reason}")
    print(f"artifact: {result.path}")
    return 0


def add_calibrate_parser(subparsers) -> None:
    """Register ``calibrate`` and ``quantize``."""
    from adapler_export.data import CALIBRATE_SPLITS, samples_help

    p = subparsers.add_parser("calibrate", help="sweep the keep thresholds on dev data and pick an operating point")
    p.add_argument("--ckpt", required=True, help="checkpoint name or path (never modified)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-speedup", type=POSITIVE, metavar="X",
                        help="the most accurate point with FLOPs speedup >= X")
    target.add_argument("--max-accuracy-drop", type=NON_NEGATIVE, metavar="P",
                        help="the fastest point within P accuracy points (1.0 = 1%%) of the reference")
    p.add_argument("--reference", choices=["no-removal", "checkpoint"], default="no-removal",
                   help="what --max-accuracy-drop is measured from: every token kept (default) or the "
                        "checkpoint's own eta")
    p.add_argument("--output", help="calibrated checkpoint name (under $ADAPLER_HOME/checkpoints) or path "
                                    "(default: beside the source, <name>-cal-x<X> / <name>-cal-drop<P>)")
    p.add_argument("--report-dir", help="where calibration.json and the plots go when no target is given "
                                        "(default: $ADAPLER_HOME/calibration/<name>)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier calibrated checkpoint (or sweep report) at the output place; "
                        "a folder that is not one is never replaced")
    p.add_argument("--data-dir", help="GLUE-style folder with dev.tsv (default: the task's)")
    p.add_argument("--split", choices=CALIBRATE_SPLITS, default="dev",
                   help="what to calibrate on: the dev split (default), or the training examples the checkpoint "
                        "never trained on (those outside its --max-train-samples subset; the same train file), "
                        "which leaves dev a held-out test")
    p.add_argument("--samples", type=COUNT, help=samples_help("to calibrate on") + "; of --split")
    p.add_argument("--scales", type=_scales, help="global scales to sweep, e.g. 0,0.5,1,2 (default: ~20 "
                                                  "from 0 to every eta = 1)")
    p.add_argument("--num-scales", type=integer(3), default=20, help="size of the default grid")
    p.add_argument("--no-refine", action="store_true", help="skip the per-layer refinement")
    p.add_argument("--measure", action="store_true",
                   help="also measure wall-clock speedup (ONNX Runtime, batch 1) on a fixed dev subset")
    p.add_argument("--measure-samples", type=COUNT, default=64)
    p.add_argument("--repeats", type=COUNT, default=5, help="timing rounds (the median is reported)")
    p.add_argument("--threads", type=COUNT, help="PyTorch and ONNX Runtime threads (measurement default: 1)")
    p.add_argument("--json", action="store_true", help="print the calibration record as JSON")
    p.set_defaults(func=cmd_calibrate)

    q = subparsers.add_parser("quantize", help="INT8 artifact from an fp32 one (dynamic INT8 of the weight MatMuls by "
                                               "default; static QDQ calibrated on real segment inputs on request)")
    q.add_argument("--artifact", required=True,
                   help="an fp32 artifact: a name under $ADAPLER_HOME/artifacts or a path")
    q.add_argument("--output", help="int8 artifact name (under $ADAPLER_HOME/artifacts) or path "
                                    "(default: beside the source, <name>-int8)")
    q.add_argument("--ckpt", help="reference checkpoint (default: the one in the manifest)")
    q.add_argument("--scheme", default="dynamic", choices=["dynamic", "static-qdq"],
                   help="the ONNX Runtime graphs: dynamic (default: weights int8, activations quantized per call, "
                        "no calibration; fastest on the CPU, docs/results/int8-schemes.json) or static-qdq "
                        "(activation ranges calibrated on --calib-samples sentences)")
    q.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                   help="7-bit weights: auto (default) chooses from this CPU's flags (on for x86 without VNNI)")
    q.add_argument("--calib-samples", type=COUNT, default=256,
                   help="sentences to calibrate on (static-qdq and --tensorrt)")
    q.add_argument("--calib-split", default="train", choices=["train", "dev"])
    q.add_argument("--method", default="minmax", choices=["minmax", "minmax-moving-average"],
                   help="activation ranges (histogram methods need equal shapes; compacted inputs are ragged)")
    scales = q.add_mutually_exclusive_group()
    scales.add_argument("--per-tensor", dest="per_channel", action="store_false", default=None,
                        help="one weight scale per tensor")
    scales.add_argument("--per-channel", dest="per_channel", action="store_true",
                        help="a weight scale per output channel (the default of both schemes)")
    q.add_argument("--symmetric", action="store_true",
                   help="symmetric int8 activations in the ONNX Runtime graphs too (default: uint8, faster on x86)")
    q.add_argument("--quantize-attention", action="store_true", help="also quantize Q.K^T and P.V")
    q.add_argument("--quantize-ffn-out", action="store_true",
                   help="also quantize the FFN down projection (faster, much less accurate: see README)")
    q.add_argument("--quantize-outputs", action="store_true", help="also Q/DQ on MatMul outputs")
    q.add_argument("--data-dir", help="task data (train for calibration, dev for parity)")
    q.add_argument("--samples", type=COUNT, help=samples_help("for parity"))
    q.add_argument("--tensorrt", action="store_true",
                   help="also build TensorRT INT8 segment engines (tensorrt, else tensorrt_rtx) from symmetric "
                        "QDQ graphs")
    q.add_argument("--max-batch", type=COUNT, default=32, help="TensorRT profile: largest batch")
    q.add_argument("--max-seq", type=COUNT, help="TensorRT profile: longest sequence (default: max length)")
    q.add_argument("--no-bench", action="store_true", help="skip the int8 vs fp32 timing")
    q.add_argument("--force", action="store_true",
                   help="replace an earlier artifact at the output place; a folder that is not one is never replaced")
    q.add_argument("--threads", type=COUNT, help="PyTorch and ONNX Runtime threads (default: 1)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quantize)
