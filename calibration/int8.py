"""INT8: static quantization of the segment graphs (ONNX Runtime, QDQ format) and TensorRT INT8 engines.

`quantize_artifact(fp32_artifact)` writes an int8 artifact with the build's layout (manifest precision
"int8", onnx/segment_XX.onnx as QDQ graphs, onnx/single.onnx, tokenizer/, parity.json):

- **Calibration data = the real inputs each segment sees.** N task sentences (train split by default, so
  the dev set stays for parity) go through the fp32 PyTorch segments chained by the reference link
  (`adapler_export.parity.capture_segment_io`) at the artifact's thresholds; segment k is calibrated on
  exactly the hidden states / compacted masks that reach it.
- **What is quantized:** MatMul nodes with a constant weight — Q, K, V, attention output, FFN up
  projection: per-channel int8 weights (output-channel axis), 8-bit activations on their inputs.
  **Kept in fp32:** the CP scoring path (every node that feeds `scores` only: the keep decisions compare s~
  with eta/n, and fp32 there keeps them close), softmax and LayerNorm (never in `op_types_to_quantize`),
  the activation x activation attention MatMuls (Q.K^T and P.V; `MatMulConstBOnly`), the pooler/classifier
  Gemms (tiny; they protect the logits), the residual stream (`keep_unquantized_consumers_fp32`), MatMul
  outputs (`OpTypesToExcludeOutputQuantization`) and the **FFN down projection** (weight [I, H], I > H):
  its input is the GELU output, whose heavy tail makes a per-tensor 8-bit scale coarse. Measured on the CI
  MiniLM checkpoint (400 dev sentences): quantizing everything gave 93.3 % label agreement with the fp32
  reference and 2.5 % keep-decision flips; without MatMul-output Q/DQ 97.3 %; keeping the FFN down
  projection fp32 as well 99.0 % / 0.55 %, at about 1.4x over fp32 instead of ~2x on ONNX Runtime CPU.
  `quantize_ffn_out` / `quantize_outputs` turn them back on.
- **Two flavours of the same quantization.** ONNX Runtime on x86 CPUs fuses uint8 (asymmetric) activations
  x int8 weights into QLinearMatMul, while symmetric int8 activations mostly stay DequantizeLinear +
  fp32 MatMul (measured on one MiniLM layer, 1 thread: u8s8 0.28 ms vs fp32 0.40 ms at batch 1 and 2.6 vs
  8.3 ms at batch 32; s8s8 no faster than fp32). TensorRT's explicit quantization accepts only symmetric
  signed int8 (zero point 0). So `onnx/segment_XX.onnx` (the ONNX Runtime graphs) use uint8 asymmetric
  activations by default, and `--tensorrt` adds `onnx/tensorrt_int8/segment_XX.onnx` with symmetric int8
  activations (`ActivationSymmetric`), from the same recorded calibration inputs, for the engines; those
  graphs are parity-checked too (run by ONNX Runtime, as a proxy for what the engines compute).
- **Parity** against the PyTorch fp32 reference with int8 tolerances (`INT8_TOLERANCES`: reported, bounded
  loosely: label agreement >= 97 %, keep-decision flips <= 5 %, mean |dlogit| <= 0.3; max |dlogit| reported,
  not bounded). The artifact is written only when they hold. Dev accuracy of both and the speed of the
  int8 chain against the fp32 chain (ONNX Runtime, same threads) are recorded in manifest.json.

`adapler-export verify` on an int8 artifact uses `Tolerances.for_precision("int8")`, which today falls into
the fp16 bounds (99.5 % agreement): stricter than int8 is meant to meet. The int8 parity that counts is the
one this module records; see calibration/README.md.

TensorRT: `build_int8_engines` builds one strongly typed engine per QDQ segment graph with
`adapler_export.engines.build_segment_engine` (explicit quantization: the Q/DQ nodes carry the scales, no
calibrator, no precision flag). Plans are `engines/segment_XX.int8.plan`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapler_export.errors import AdaplerError, ParityError
from adapler_export.parity import Tolerances

#: int8 parity bounds: reported in full, bounded loosely (see the module docstring)
INT8_TOLERANCES = Tolerances.for_precision("int8")
CALIBRATION_METHODS = ("minmax", "minmax-moving-average")
TENSORRT_GRAPHS = "tensorrt_int8"  # onnx/<this>/segment_XX.onnx: the symmetric QDQ graphs engines are built from


@dataclass
class QuantizeOptions:
    calib_samples: int = 256
    calib_split: str = "train"
    calib_batch: int = 1  # batch 1: no padded rows in the calibration ranges
    calibrate_method: str = "minmax"
    per_channel: bool = True
    symmetric_activations: bool = False  # ONNX Runtime graphs: uint8 asymmetric (fast on x86); True: int8 zp 0
    quantize_attention: bool = False  # also the activation x activation MatMuls (Q.K^T, P.V)
    fp32_residuals: bool = True  # non-MatMul consumers (residual Adds) read the fp32 tensor, not its Q/DQ copy
    quantize_ffn_out: bool = False  # the FFN down projection (its GELU input has heavy tails: see the docstring)
    quantize_outputs: bool = False  # also Q/DQ on MatMul outputs (lets ONNX Runtime fuse QLinearMatMul)
    data_dir: str | None = None
    samples: int | None = None  # dev examples for parity and accuracy (None: all)
    batch_size: int = 32
    tolerances: Tolerances = field(default_factory=lambda: INT8_TOLERANCES)
    bench: bool = True
    bench_samples: int = 64
    bench_repeats: int = 5
    threads: int = 1
    tensorrt: bool = False
    max_batch: int = 32
    max_seq: int | None = None


@dataclass
class QuantizeResult:
    path: Path
    parity: object  # ParityReport
    manifest: dict


class SegmentFeeds:
    """`onnxruntime.quantization.CalibrationDataReader` over recorded segment inputs."""

    def __init__(self, feeds: list):
        from onnxruntime.quantization import CalibrationDataReader

        class _Reader(CalibrationDataReader):
            def __init__(self, items):
                self.items, self.index = items, 0

            def get_next(self):
                if self.index >= len(self.items):
                    return None
                self.index += 1
                return self.items[self.index - 1]

            def rewind(self):
                self.index = 0

        self.reader = _Reader(list(feeds))


def record_segment_inputs(model, specs, tokenizer, texts, max_length: int, eta, batch: int = 1) -> list:
    """Per segment, the list of input feeds it sees when the fp32 reference pipeline (reference link, the
    artifact's eta) runs on `texts`."""
    import torch

    from adapler_export.evaluation import encode
    from adapler_export.parity import capture_segment_io
    from calibration.sweep import temporary_eta

    per_segment = [[] for _ in specs]
    with temporary_eta(model, eta), torch.no_grad():
        for start in range(0, len(texts), batch):
            ids, mask = encode(tokenizer, texts[start: start + batch], max_length)
            for k, (feeds, _) in enumerate(capture_segment_io(model, specs, "fp32", ids, mask)):
                per_segment[k].append({name: np.ascontiguousarray(v) for name, v in feeds.items()})
    return per_segment


def quantization_plan(model_proto, options: QuantizeOptions) -> dict:
    """Which nodes get quantized and which stay fp32 (and why), for one segment graph."""
    from adapler_export.engines import exclusive_ancestor_nodes

    graph_outputs = {o.name for o in model_proto.graph.output}
    cp_path = exclusive_ancestor_nodes(model_proto, ["scores"]) if "scores" in graph_outputs else set()
    shapes = {i.name: list(i.dims) for i in model_proto.graph.initializer}
    for n in model_proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t.dims:
            shapes[n.output[0]] = list(n.attribute[0].t.dims)
    quantize, excluded = [], {}
    for node in model_proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.name in cp_path:
            excluded[node.name] = "CP scoring path (keep decisions)"
        elif node.op_type == "Gemm":
            excluded[node.name] = "pooler/classifier head"
        elif weight is None and not options.quantize_attention:
            excluded[node.name] = "activation x activation attention MatMul"
        elif weight is not None and len(weight) == 2 and weight[0] > weight[1] and not options.quantize_ffn_out:
            excluded[node.name] = "FFN down projection (heavy-tailed GELU input)"
        else:
            quantize.append(node.name)
    return {"quantize": quantize, "excluded": excluded, "cp_path_nodes": sorted(cp_path)}


def quantize_segment(src: Path, dst: Path, feeds: list, options: QuantizeOptions,
                     symmetric: bool | None = None) -> dict:
    """Static QDQ quantization of one segment graph; returns what was done. A graph with nothing to
    quantize (segment 0: embeddings + CP) is copied unchanged."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    symmetric = options.symmetric_activations if symmetric is None else symmetric
    model = onnx.load(str(src))
    plan = quantization_plan(model, options)  # names unnamed CP nodes in `model`
    info = {"segment": src.name, "quantized_nodes": plan["quantize"], "excluded": plan["excluded"],
            "calibration_batches": len(feeds)}
    if not plan["quantize"]:
        shutil.copyfile(src, dst)
        info["status"] = "unchanged: no MatMul outside the CP path"
        return info
    extra = {"ActivationSymmetric": bool(symmetric), "WeightSymmetric": True,
             "MatMulConstBOnly": not options.quantize_attention,
             "CalibMovingAverage": options.calibrate_method == "minmax-moving-average",
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
             "OpTypesToExcludeOutputQuantization": [] if options.quantize_outputs else ["MatMul"]}
    with tempfile.TemporaryDirectory(prefix="adapler-int8-") as tmp, _quiet_preprocess_hint():
        named = Path(tmp) / src.name
        onnx.save(model, str(named))
        quantize_static(str(named), str(dst), SegmentFeeds(feeds).reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=options.per_channel, reduce_range=False,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=plan["quantize"],
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    out = onnx.load(str(dst))
    if options.fp32_residuals:
        info["rewired_to_fp32"] = keep_unquantized_consumers_fp32(out)
        onnx.save(out, str(dst))
    onnx.checker.check_model(out)
    counts = {}
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    info.update(status="quantized", qdq_nodes=counts,
                activations="int8 symmetric" if symmetric else "uint8 asymmetric")
    return info


@contextlib.contextmanager
def _quiet_preprocess_hint():
    """quantize_static logs "consider pre-processing" twice per graph on the root logger. Pre-processing
    (`quant_pre_process`) is skipped on purpose: its ONNX Runtime graph optimizations fuse into
    com.microsoft contrib ops that TensorRT cannot parse, and the exported segments are already clean."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def keep_unquantized_consumers_fp32(model) -> int:
    """The QDQ quantizer hands the *dequantized* tensor to every consumer of a quantized activation, so the
    residual Adds (hidden + attention, LayerNorm out + FFN) and Shape ops would read the int8-rounded
    residual stream. Give every consumer that is not a MatMul the original fp32 tensor again (the Q/DQ pair
    stays for the MatMuls). MatMul outputs are left alone: their Q/DQ is what lets ONNX Runtime fuse
    QLinearMatMul. Returns the number of inputs rewired."""
    producers = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    swaps = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight (initializer) DQ
        source = producers.get(q.input[0])
        if source is not None and source.op_type in ("MatMul", "Gemm"):
            continue
        swaps[node.output[0]] = q.input[0]
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in swaps:
                node.input[i] = swaps[name]
                rewired += 1
    return rewired


class _Recording:
    """Wraps a backend and keeps every batch's logits (to score accuracy from a parity run)."""

    def __init__(self, backend):
        self.backend, self.name, self.logits = backend, backend.name, []

    def run(self, input_ids, attention_mask):
        out = self.backend.run(input_ids, attention_mask)
        self.logits.append(out.logits)
        return out

    def accuracy(self, labels) -> float:
        return float((np.concatenate(self.logits).argmax(-1) == np.asarray(labels)).mean())


def bench_chains(fp32_paths, int8_paths, etas, tokenizer, texts, max_length, threads=1, repeats=5,
                 batches=(1, 32)) -> dict:
    """ONNX Runtime chain, int8 vs fp32, same thresholds and threads: median ms per sentence."""
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.evaluation import encode
    from calibration.measure import time_round_robin

    fp32 = OnnxRuntimeBackend(fp32_paths, etas, device="cpu", threads=threads)
    int8 = OnnxRuntimeBackend(int8_paths, etas, device="cpu", threads=threads)
    result = {"backend": "onnxruntime (CPU)", "threads": threads, "repeats": repeats, "sentences": len(texts),
              "statistic": "median round, ms per sentence"}
    for batch in batches:
        inputs = [encode(tokenizer, texts[i: i + batch], max_length) for i in range(0, len(texts), batch)]
        timings = time_round_robin({"fp32": fp32.run, "int8": int8.run}, inputs, repeats=repeats)
        scale = len(inputs) / len(texts)  # time_round_robin divides by the number of batches
        fp32_ms, int8_ms = timings["fp32"]["median_ms"] * scale, timings["int8"]["median_ms"] * scale
        result[f"batch_{batch}"] = {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}
    return result


def default_int8_output(artifact: Path) -> Path:
    name = artifact.name
    stem = name[: -len("-fp32")] if name.endswith("-fp32") else name
    return artifact.parent / f"{stem}-int8"


def quantize_artifact(artifact_dir, output=None, options: QuantizeOptions | None = None, ckpt=None, log=print,
                      progress=None) -> QuantizeResult:
    import onnxruntime

    from adapler_export.backends import read_manifest
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.build import tool_versions
    from adapler_export.checkpoint import atomic_directory, checkpoint_digest, load_checkpoint, resolve_output_dir
    from adapler_export.parity import compare_backends
    from adapler_export.segments import build_single_graph, segment_specs
    from training.data import load_task

    options = options or QuantizeOptions()
    if options.calibrate_method not in CALIBRATION_METHODS:
        raise AdaplerError(f"calibration method must be one of {CALIBRATION_METHODS}, got {options.calibrate_method!r}")
    if options.calib_samples < 1:
        raise AdaplerError(f"--calib-samples must be >= 1, got {options.calib_samples}")
    artifact = Path(artifact_dir).expanduser().resolve()
    manifest = read_manifest(artifact)
    if manifest.get("precision") != "fp32":
        raise AdaplerError(f"{artifact} is a {manifest.get('precision')} artifact: quantize an fp32 one "
                           "(`adapler-export build --ckpt ...`)")
    out = resolve_output_dir(output, "artifacts") if output else default_int8_output(artifact)
    if out.resolve() == artifact:
        raise AdaplerError("the int8 artifact would overwrite its fp32 source; pass another --output")
    checkpoint = load_checkpoint(ckpt or manifest["checkpoint"]["path"])
    digest = checkpoint_digest(checkpoint.path)
    if digest != manifest["checkpoint"]["digest"]:
        raise AdaplerError(f"checkpoint {checkpoint.path} (digest {digest}) is not the one {artifact} was built "
                           f"from ({manifest['checkpoint']['digest']}); pass --ckpt")
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    etas = [float(e) for e in manifest["eta"]]
    specs = segment_specs(manifest["num_layers"], manifest["hidden_size"], len(manifest["labels"]), "fp32")
    fp32_paths = [artifact / "onnx" / s.file_name for s in specs]
    missing = [str(p) for p in fp32_paths if not p.is_file()]
    if missing:
        raise AdaplerError(f"artifact {artifact} is missing {missing[0]}")
    data = load_task(manifest["task"], options.data_dir)
    if options.calib_split not in data.splits:
        raise AdaplerError(f"no {options.calib_split!r} split for calibration (have {sorted(data.splits)})")
    calib = data[options.calib_split].subset(options.calib_samples, seed=1)
    dev = data["dev"].subset(options.samples)
    started = time.time()

    log(f"recording segment inputs: {len(calib)} {options.calib_split} sentences through the fp32 reference "
        f"pipeline (eta {' '.join(f'{e:.3f}' for e in etas)})")
    feeds = record_segment_inputs(model, specs, tokenizer, calib.texts, manifest["max_length"], etas,
                                  batch=options.calib_batch)
    with atomic_directory(out) as tmp:
        onnx_dir = tmp / "onnx"
        onnx_dir.mkdir()
        segments = []
        pairs = list(zip(specs, feeds))
        for spec, seg_feeds in (progress(pairs, "quantize") if progress else pairs):
            info = quantize_segment(artifact / "onnx" / spec.file_name, onnx_dir / spec.file_name, seg_feeds, options)
            segments.append(info)
            log(f"  {spec.file_name}: {info['status']}, {len(info['quantized_nodes'])} MatMul int8, "
                f"{len(info['excluded'])} kept fp32")
        build_single_graph(onnx_dir, specs, etas, onnx_dir / "single.onnx")
        shutil.copytree(artifact / "tokenizer", tmp / "tokenizer")
        int8_paths = [onnx_dir / s.file_name for s in specs]

        reference = _Recording(PyTorchBackend(model))
        candidate = _Recording(OnnxRuntimeBackend(int8_paths, etas, device="cpu", threads=options.threads))
        candidate.name = "onnxruntime-int8"
        with _eta_of(model, etas):
            report = compare_backends(reference, candidate, tokenizer, dev.texts, manifest["max_length"], "int8",
                                      batch_size=options.batch_size, tolerances=options.tolerances,
                                      progress=progress)
        accuracy = {"examples": len(dev), "split": "dev", "fp32_reference": reference.accuracy(dev.labels),
                    "int8": candidate.accuracy(dev.labels)}
        accuracy["drop_points"] = (accuracy["fp32_reference"] - accuracy["int8"]) * 100
        log(report.table())
        log(f"dev accuracy: fp32 reference {accuracy['fp32_reference'] * 100:.2f}%, int8 {accuracy['int8'] * 100:.2f}% "
            f"({len(dev)} examples)")
        bench = None
        if options.bench:
            bench = bench_chains(fp32_paths, int8_paths, etas, tokenizer, dev.texts[: options.bench_samples],
                                 manifest["max_length"], threads=options.threads, repeats=options.bench_repeats)
            log("speed (ONNX Runtime CPU, %d thread(s)): " % options.threads + ", ".join(
                f"{k}: fp32 {v['fp32_ms']:.2f} ms, int8 {v['int8_ms']:.2f} ms/sentence ({v['speedup']:.2f}x)"
                for k, v in bench.items() if k.startswith("batch_")))
        engines, trt_graphs = {}, None
        if options.tensorrt:
            trt_dir = onnx_dir / TENSORRT_GRAPHS
            trt_dir.mkdir()
            log("TensorRT graphs: symmetric int8 activations (explicit quantization needs zero point 0)")
            for spec, seg_feeds in pairs:
                quantize_segment(artifact / "onnx" / spec.file_name, trt_dir / spec.file_name, seg_feeds, options,
                                 symmetric=True)
            trt_paths = [trt_dir / s.file_name for s in specs]
            trt_candidate = _Recording(OnnxRuntimeBackend(trt_paths, etas, device="cpu", threads=options.threads))
            trt_candidate.name = "onnxruntime-int8-symmetric (TensorRT graphs)"
            with _eta_of(model, etas):
                trt_report = compare_backends(PyTorchBackend(model), trt_candidate, tokenizer, dev.texts,
                                              manifest["max_length"], "int8", batch_size=options.batch_size,
                                              tolerances=options.tolerances)
            log(trt_report.table())
            trt_graphs = {"folder": f"onnx/{TENSORRT_GRAPHS}", "activations": "int8 symmetric (zero point 0)",
                          "parity_via_onnxruntime": trt_report.to_dict(),
                          "accuracy": trt_candidate.accuracy(dev.labels)}
            if trt_report.passed:
                engines = build_int8_engines(trt_dir, len(specs), tmp / "engines", manifest["hidden_size"],
                                             options.max_batch, options.max_seq or manifest["max_length"], log=log)
            else:  # engines from graphs that miss the int8 bounds would only fail `verify` on the GPU
                engines = {"status": "not built",
                           "reason": "the symmetric int8 graphs fail parity: " + "; ".join(trt_report.failures)}
                log(f"TensorRT int8 engines not built: {engines['reason']}")
        quantization = {
            "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
            "format": "QDQ", "weights": "int8 symmetric, " + ("per-channel (axis 1)" if options.per_channel
                                                              else "per-tensor"),
            "activations": "int8 symmetric (zero point 0)" if options.symmetric_activations else "uint8 asymmetric",
            "calibrate_method": options.calibrate_method, "op_types": ["MatMul"],
            "quantize_attention": options.quantize_attention, "quantize_ffn_out": options.quantize_ffn_out,
            "quantize_matmul_outputs": options.quantize_outputs, "fp32_residuals": options.fp32_residuals,
            "calibration_data": {"split": options.calib_split, "examples": len(calib), "source": calib.source,
                                 "sha256": calib.sha256, "subset_seed": 1, "batch": options.calib_batch,
                                 "pipeline": "fp32 PyTorch segments + reference link at the manifest's eta"},
            "segments": segments,
            "tensorrt_graphs": trt_graphs,
        }
        new_manifest = dict(manifest)
        new_manifest.update({
            "precision": "int8", "backend": "onnxruntime", "engines": engines,
            "source_artifact": {"path": str(artifact), "precision": manifest["precision"]},
            "quantization": quantization, "tools": tool_versions(),
            "parity": {"report": report.to_dict(), "tolerances": "int8 (calibration.int8.INT8_TOLERANCES)",
                       "accuracy": accuracy, "speed": bench},
            "single_graph": {**manifest.get("single_graph", {}), "file": "single.onnx"},
            "build_seconds": round(time.time() - started, 1),
        })
        (tmp / "parity.json").write_text(json.dumps({"end_to_end": report.to_dict(), "accuracy": accuracy,
                                                     "speed": bench}, indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(new_manifest, indent=2) + "\n")
        if not report.passed:
            raise ParityError(f"int8 parity failed ({'; '.join(report.failures)}); no artifact written")
    log(f"int8 artifact written to {out}")
    return QuantizeResult(out, report, new_manifest)


def _eta_of(model, etas):
    from calibration.sweep import temporary_eta

    return temporary_eta(model, etas)


# ----- TensorRT explicit quantization ------------------------------------------------------------------------
def int8_plan_filename(index: int) -> str:
    return f"segment_{index:02d}.int8.plan"


def build_int8_engines(onnx_dir, num_segments: int, engines_dir, hidden_size: int, max_batch: int, max_seq: int,
                       opt_batch: int = 1, prefer: str | None = None, log=print) -> dict:
    """Strongly typed INT8 engines from the QDQ segment graphs (TensorRT explicit quantization), with
    `adapler_export.engines.build_segment_engine`. Never raises for a TensorRT that cannot do it: the
    returned record says what was built, or why not (the ONNX Runtime int8 artifact stands either way)."""
    from adapler_export.engines import build_segment_engine, import_tensorrt, segment_profiles

    onnx_dir, engines_dir = Path(onnx_dir), Path(engines_dir)
    try:
        trt, flavor = import_tensorrt(prefer)
    except AdaplerError as exc:
        log(f"TensorRT INT8 engines not built: {exc}")
        return {"status": "not built", "reason": str(exc)}
    profiles = segment_profiles(num_segments, hidden_size, max_batch, max_seq, opt_batch=opt_batch, opt_seq=max_seq)
    log(f"building {num_segments} INT8 segment engines from the QDQ graphs with {flavor} {trt.__version__}")
    engines_dir.mkdir(parents=True, exist_ok=True)
    records, failures = [], []
    for k, profile in enumerate(profiles):
        onnx_path = onnx_dir / f"segment_{k:02d}.onnx"
        plan = engines_dir / int8_plan_filename(k)
        try:
            info = build_segment_engine(onnx_path, plan, profile, prefer=prefer)
        except Exception as exc:  # noqa: BLE001 - recorded, see the docstring
            failures.append({"segment": onnx_path.name, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
            log(f"  {onnx_path.name}: FAILED ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        record = info.to_dict()
        record["precision"] = "int8 (explicit QDQ)"
        record["plan_path"] = str(Path(info.plan_path).relative_to(engines_dir.parent))
        record["onnx_path"] = str(Path(info.onnx_path).relative_to(engines_dir.parent))
        int8_layers = _int8_layer_count(trt, plan) if _has_gpu() else None
        if int8_layers is not None:
            record["int8_layers"] = int8_layers
        records.append(record)
        log(f"  {onnx_path.name} -> {plan.name} ({info.build_seconds:.1f}s, {info.plan_bytes / 1e6:.1f} MB)")
    status = "built" if not failures else ("partial" if records else "failed")
    if failures and not records:
        shutil.rmtree(engines_dir, ignore_errors=True)
    return {"flavor": flavor, "version": trt.__version__, "status": status, "segments": records,
            "failures": failures, "precision": "int8",
            "runtime": "calibration.int8.load_int8_tensorrt_backend(artifact), or "
                       "`adapler-export verify --artifact DIR --backend tensorrt`, on a GPU machine"}


def _has_gpu() -> bool:
    from adapler_export.engines import _cuda_device_count

    try:
        return _cuda_device_count() > 0
    except Exception:  # noqa: BLE001
        return False


def _int8_layer_count(trt, plan: Path) -> int | None:
    """Layers the engine runs in int8, from the engine inspector (None when it cannot say)."""
    try:
        from adapler_export.engines import tensorrt_logger

        runtime = trt.Runtime(tensorrt_logger(trt))
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            return None
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return sum(1 for layer in info.get("Layers", []) if "Int8" in json.dumps(layer))
    except Exception:  # noqa: BLE001 - informational only; CPU-only TensorRT-RTX cannot deserialize
        return None


def load_int8_tensorrt_backend(artifact_dir, **kwargs):
    """The TensorRT segment backend over `engines/segment_XX.int8.plan` (GPU machines)."""
    from adapler_export.backends import read_manifest
    from adapler_export.backends.tensorrt import TensorRTSegmentsBackend

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    plans = [artifact_dir / "engines" / int8_plan_filename(k) for k in range(len(manifest["segments"]))]
    missing = [str(p) for p in plans if not p.is_file()]
    if missing:
        raise AdaplerError(f"{artifact_dir} has no INT8 engines ({missing[0]}); "
                           "run `adapler-export quantize --artifact FP32_DIR --tensorrt`")
    return TensorRTSegmentsBackend(plans, manifest["eta"], **kwargs)


def verify_tensorrt_int8(artifact_dir, data_dir=None, samples: int | None = None, batch_size: int = 32,
                         tolerances: Tolerances | None = None):
    """Parity of the INT8 TensorRT engines against the PyTorch reference (needs a GPU)."""
    from adapler_export.backends import read_manifest
    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.build import parity_texts
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.parity import compare_backends

    manifest = read_manifest(artifact_dir)
    checkpoint = load_checkpoint(manifest["checkpoint"]["path"])
    candidate = load_int8_tensorrt_backend(artifact_dir)
    texts = parity_texts(manifest["task"], data_dir, samples)
    with _eta_of(checkpoint.model, manifest["eta"]):
        return compare_backends(PyTorchBackend(checkpoint.model), candidate, checkpoint.tokenizer, texts,
                                manifest["max_length"], "int8", batch_size=batch_size,
                                tolerances=tolerances or INT8_TOLERANCES)


def quantize_summary(result: QuantizeResult) -> dict:
    manifest = result.manifest
    return {"artifact": str(result.path), "parity": result.parity.to_dict(),
            "accuracy": manifest["parity"]["accuracy"], "speed": manifest["parity"]["speed"],
            "engines": {k: v for k, v in manifest.get("engines", {}).items() if k != "segments"}
            | ({"plans": [s["plan_path"] for s in manifest["engines"].get("segments", [])]}
               if manifest.get("engines") else {})}


__all__ = ["INT8_TOLERANCES", "QuantizeOptions", "QuantizeResult", "quantize_artifact", "build_int8_engines",
           "load_int8_tensorrt_backend", "verify_tensorrt_int8", "record_segment_inputs", "quantization_plan",
           "quantize_segment", "keep_unquantized_consumers_fp32"]


if __name__ == "__main__":  # python -m calibration.int8 ARTIFACT [SAMPLES]: TensorRT INT8 engine parity (GPU)
    import sys

    report = verify_tensorrt_int8(sys.argv[1], samples=int(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(report.table())
    sys.exit(0 if report.passed else 1)
