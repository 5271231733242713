"""INT8 artifacts from an fp32 one (`adapler-export quantize`), by one of two schemes, and TensorRT INT8 engines.

`quantize_artifact(fp32_artifact)` writes an int8 artifact with the build's layout and contract
(`adapler_export.artifact`: manifest precision "int8", `derived_from` the fp32 artifact, a `quantization`
record with its `scheme`; onnx/segment_XX.onnx, onnx/model.onnx (the one graph), onnx/single.onnx, tokenizer/,
parity.json), so every backend opens it through `load_backend`. Parity of every form (segment chain, one graph)
against the fp32 PyTorch reference, `Tolerances.for_precision("int8")`; the artifact is written only when it holds.

- `dynamic` (the default): the library's `adapler_export.quantization` (weight MatMuls int8, activations
  quantized per call, CP scoring path fp32, reduce_range from this CPU's flags): what `build --int8` writes.
  Measured fastest on ONNX Runtime CPU at batch 1 and 32 and at least as accurate (docs/results/int8-schemes.json:
  SST-2, the one graph, 1 thread: 1.95x / 2.25x over fp32 at batch 1 / 32 against 1.48x / 1.69x for static QDQ,
  label agreement 98.05 % against 98.62 %). Needs no calibration data.
- `static-qdq`: the static scheme below (QDQ graphs with activation ranges calibrated on real segment inputs).

`--tensorrt` (either scheme) adds the symmetric static QDQ graphs and engines for TensorRT described below.

The static QDQ scheme:

- **Calibration data = the real inputs each segment sees.** N task sentences (train split by default, so
  the dev set stays for parity) go through the fp32 PyTorch segments chained by the reference link
  (`adapler_export.parity.capture_segment_io`) at the checkpoint's thresholds, which are the artifact's
  (the checkpoint's digest is checked against the manifest); segment k is calibrated on exactly the hidden
  states / compacted masks that reach it.
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
- **Parity** against the PyTorch fp32 reference with `Tolerances.for_precision("int8")` (reported in full,
  bounded loosely: label agreement >= 97 %, keep-decision flips <= 5 %, mean |dlogit| <= 0.3; max |dlogit|
  reported, not bounded) — the same bounds `adapler-export verify` applies to an int8 artifact. The artifact
  is written only when they hold. Dev accuracy of both and the speed of the int8 chain against the fp32
  chain (ONNX Runtime, same threads) are recorded in the manifest's `quantization` record and parity.json.

TensorRT: `build_int8_engines` builds one strongly typed engine per symmetric QDQ segment graph with
`adapler_export.engines.build_engine` (explicit quantization: the Q/DQ nodes carry the scales, no
calibrator, no precision flag), recorded in the manifest's `engines` like the build's, so the registry's
`tensorrt` backend runs them: `adapler-export verify --artifact INT8 --backend tensorrt` on a GPU machine.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapler_export.artifact import INT8_SCHEMES
from adapler_export.chain import SCORES
from adapler_export.errors import AdaplerError, ParityError
from adapler_export.quantization import SCHEME as DYNAMIC, cp_path_nodes, quiet_preprocess_hint
from adapler_export.serving.tokenization import Cut
from calibration.sweep import check_options

CALIBRATION_METHODS = ("minmax", "minmax-moving-average")
CALIBRATION_SPLITS = ("train", "dev")
STATIC = "static-qdq"
TENSORRT_GRAPHS = "tensorrt_int8"  # onnx/<this>/segment_XX.onnx: the symmetric QDQ graphs engines are built from


@dataclass
class QuantizeOptions:
    scheme: str = DYNAMIC  # INT8_SCHEMES: the ONNX Runtime graphs (see the module docstring)
    calib_samples: int = 256
    calib_split: str = "train"
    calib_batch: int = 1  # batch 1: no padded rows in the calibration ranges
    calibrate_method: str = "minmax"
    per_channel: bool | None = None  # None: per channel (both schemes' measured default)
    reduce_range: bool | None = None  # None: from this CPU's flags (adapler_export.quantization)
    symmetric_activations: bool = False  # ONNX Runtime graphs: uint8 asymmetric (fast on x86); True: int8 zp 0
    quantize_attention: bool = False  # also the activation x activation MatMuls (Q.K^T, P.V)
    fp32_residuals: bool = True  # non-MatMul consumers (residual Adds) read the fp32 tensor, not its Q/DQ copy
    quantize_ffn_out: bool = False  # the FFN down projection (its GELU input has heavy tails: see the docstring)
    quantize_outputs: bool = False  # also Q/DQ on MatMul outputs (lets ONNX Runtime fuse QLinearMatMul)
    data_dir: str | None = None
    samples: int | None = None  # dev examples for parity and accuracy (None: all)
    batch_size: int = 32
    bench: bool = True
    bench_samples: int = 64
    bench_repeats: int = 5
    threads: int = 1
    tensorrt: bool = False
    max_batch: int = 32
    max_seq: int | None = None
    force: bool = False  # replace an earlier int8 artifact at the output place

    def validate(self) -> "QuantizeOptions":
        """Every option, checked before any work: each bad one is a one-line AdaplerError."""
        if self.scheme not in INT8_SCHEMES:
            raise AdaplerError(f"--scheme must be one of {INT8_SCHEMES}, got {self.scheme!r}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise AdaplerError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                               f"got {self.calibrate_method!r}")
        if self.calib_split not in CALIBRATION_SPLITS:
            raise AdaplerError(f"--calib-split must be one of {CALIBRATION_SPLITS}, got {self.calib_split!r}")
        check_options([("--calib-samples", self.calib_samples, 1), ("calib_batch", self.calib_batch, 1),
                       ("batch_size", self.batch_size, 1), ("bench_samples", self.bench_samples, 1),
                       ("bench_repeats", self.bench_repeats, 1), ("--threads", self.threads, 1),
                       ("--max-batch", self.max_batch, 1)],
                      [("--samples", self.samples, 1), ("--max-seq", self.max_seq, 1)], self.data_dir)
        return self


@dataclass
class QuantizeResult:
    path: Path
    parity: object  # ParityReport of the int8 ONNX Runtime graphs
    manifest: object  # adapler_export.artifact.Manifest


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


def record_segment_inputs(model, tokenizer, texts, cut: Cut | int, batch: int = 1, pairs=None) -> list:
    """Per segment, the list of input feeds it sees when the fp32 reference pipeline (the PyTorch segments,
    the reference link, the model's eta) runs on `texts` (with their `pairs` for a sentence-pair task)."""
    from adapler_export.evaluation import encoded_batches
    from adapler_export.parity import capture_segment_io

    per_segment = None
    for inputs in encoded_batches(tokenizer, texts, cut, batch, pairs):
        records = capture_segment_io(model, "fp32", *inputs)
        per_segment = per_segment or [[] for _ in records]
        for k, (feeds, _) in enumerate(records):
            per_segment[k].append({name: np.ascontiguousarray(v) for name, v in feeds.items()})
    return per_segment


def quantization_plan(model_proto, options: QuantizeOptions) -> dict:
    """Which nodes get quantized and which stay fp32 (and why), for one segment graph."""
    graph_outputs = {o.name for o in model_proto.graph.output}
    cp_path = cp_path_nodes(model_proto) if SCORES in graph_outputs else set()
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
                     symmetric: bool | None = None, reduce_range: bool = False) -> dict:
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
    with tempfile.TemporaryDirectory(prefix="adapler-int8-") as tmp, quiet_preprocess_hint():
        named = Path(tmp) / src.name
        onnx.save(model, str(named))
        quantize_static(str(named), str(dst), SegmentFeeds(feeds).reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=options.per_channel is not False,
                        reduce_range=reduce_range,
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

    def __init__(self, backend, name: str | None = None):
        self.backend, self.name, self.logits = backend, name or backend.name, []

    def run(self, *inputs):
        out = self.backend.run(*inputs)
        self.logits.append(out.logits)
        return out

    def accuracy(self, labels) -> float:
        return float((np.concatenate(self.logits).argmax(-1) == np.asarray(labels)).mean())


def bench_chains(fp32, int8, tokenizer, texts, cut: Cut | int, repeats=5, batches=(1, 32), pairs=None) -> dict:
    """Two ONNX Runtime chains (int8 vs fp32, same thresholds and threads): median ms per sentence."""
    from adapler_export.evaluation import encoded_batches
    from calibration.measure import time_round_robin

    result = {"backend": "onnxruntime (CPU)", "repeats": repeats, "sentences": len(texts),
              "statistic": "median round, ms per sentence"}
    for batch in batches:
        inputs = list(encoded_batches(tokenizer, texts, cut, batch, pairs))
        timings = time_round_robin({"fp32": fp32.run, "int8": int8.run}, inputs, repeats=repeats)
        scale = len(inputs) / len(texts)  # time_round_robin divides by the number of batches
        fp32_ms, int8_ms = timings["fp32"]["median_ms"] * scale, timings["int8"]["median_ms"] * scale
        result[f"batch_{batch}"] = {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}
    return result


def default_int8_output(artifact: Path) -> Path:
    name = artifact.name
    stem = name[: -len("-fp32")] if name.endswith("-fp32") else name
    return artifact.parent / f"{stem}-int8"


def _load_calibration_data(task: str, options: QuantizeOptions, calibrate: bool) -> tuple:
    """(calibration split or None, dev split): only the splits needed are read (the dynamic scheme without
    --tensorrt calibrates nothing; --calib-split dev needs no train.tsv)."""
    from adapler_export.data import load_task

    if not calibrate:
        return None, load_task(task, options.data_dir, splits=("dev",))["dev"].subset(options.samples)
    splits = ("dev",) if options.calib_split == "dev" else (options.calib_split, "dev")
    data = load_task(task, options.data_dir, splits=splits)
    return data[options.calib_split].subset(options.calib_samples, seed=1), data["dev"].subset(options.samples)


def int8_settings(options: QuantizeOptions):
    """The weight settings: this CPU's choice (`adapler_export.quantization.choose_int8_settings`), with what the
    options fix by hand (per channel by default: docs/results/int8-schemes.json)."""
    from adapler_export.quantization import choose_int8_settings

    chosen = choose_int8_settings()
    per_channel = options.per_channel if options.per_channel is not None else \
        (True if options.scheme == STATIC else chosen.per_channel)
    if options.reduce_range is None:
        return dataclasses.replace(chosen, per_channel=per_channel)
    return dataclasses.replace(chosen, per_channel=per_channel, reduce_range=options.reduce_range,
                               reason=f"reduce_range {'on' if options.reduce_range else 'off'} by hand "
                                      f"(this CPU's choice: {'on' if chosen.reduce_range else 'off'}, {chosen.isa})")


def static_record(options: QuantizeOptions, settings, segments: list) -> dict:
    """The manifest's `quantization` for the static QDQ scheme."""
    import onnxruntime

    from adapler_export.quantization import cpu_record

    return {
        "scheme": STATIC, "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
        "format": "QDQ", "weights": "int8 symmetric, " + ("per-channel (axis 1)" if settings.per_channel
                                                          else "per-tensor"),
        "per_channel": settings.per_channel, "reduce_range": settings.reduce_range, "cpu": cpu_record(settings),
        "activations": "int8 symmetric (zero point 0)" if options.symmetric_activations else "uint8 asymmetric",
        "calibrate_method": options.calibrate_method, "op_types": ["MatMul"],
        "quantize_attention": options.quantize_attention, "quantize_ffn_out": options.quantize_ffn_out,
        "quantize_matmul_outputs": options.quantize_outputs, "fp32_residuals": options.fp32_residuals,
        "segments": segments, "accuracy": None, "speed": None}


def quantize_artifact(artifact_dir, output=None, options: QuantizeOptions | None = None, ckpt=None, log=print,
                      progress=None) -> QuantizeResult:
    """fp32 artifact -> int8 artifact (see the module docstring). Every argument, the source artifact's
    files (their recorded digests), the checkpoint's digest and the output place are checked first."""
    from adapler_export.artifact import EnginesRecord, open_artifact, record_parity, write_manifest
    from adapler_export.backends import load_backend
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.build import tool_versions
    from adapler_export.checkpoint import checkpoint_digest, load_checkpoint
    from adapler_export.onnx_graph import build_one_graph
    from adapler_export.parity import artifact_backend_kinds, compare_backends
    from adapler_export.quantization import quantization_record, quantize_segments
    from adapler_export.segments import build_single_graph
    from adapler_export.specs import model_output_names
    from adapler_export.storage import atomic_directory, check_output_dir, resolve_output_dir

    options = (options or QuantizeOptions()).validate()
    source_dir, source = open_artifact(artifact_dir)
    if source.precision != "fp32":
        raise AdaplerError(f"{source_dir} is a {source.precision} artifact: quantize an fp32 one "
                           "(`adapler-export build --ckpt ...`)")
    out = resolve_output_dir(output, "artifacts") if output else default_int8_output(source_dir)
    check_output_dir(out, "artifact", options.force, inputs=[source_dir])
    checkpoint = load_checkpoint(ckpt or source.checkpoint["path"])
    digest = checkpoint_digest(checkpoint.path)
    if digest != source.checkpoint["digest"]:  # the same digest also means the same eta as the manifest's
        raise AdaplerError(f"checkpoint {checkpoint.path} (digest {digest}) is not the one {source_dir} was built "
                           f"from ({source.checkpoint['digest']}); pass --ckpt with that checkpoint")
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    specs, etas, cut = source.specs(), list(source.eta), source.cut  # the manifest's max length and rule
    static = options.scheme == STATIC
    calib, dev = _load_calibration_data(source.task, options, calibrate=static or options.tensorrt)
    settings = int8_settings(options)
    started = time.time()

    feeds = None
    if calib is not None:
        log(f"recording segment inputs: {len(calib)} {options.calib_split} sentences through the fp32 reference "
            f"pipeline (eta {' '.join(f'{e:.3f}' for e in etas)})")
        feeds = record_segment_inputs(model, tokenizer, calib.texts, cut, batch=options.calib_batch,
                                      pairs=calib.pairs)
    log(f"int8 scheme {options.scheme}: {settings.reason}")
    with atomic_directory(out, kind="artifact", force=options.force, inputs=[source_dir]) as tmp:
        onnx_dir = tmp / "onnx"
        onnx_dir.mkdir()
        if static:
            segments = []
            for spec, seg_feeds in (progress(list(zip(specs, feeds)), "quantize") if progress else zip(specs, feeds)):
                info = quantize_segment(source_dir / "onnx" / spec.file_name, onnx_dir / spec.file_name, seg_feeds,
                                        options, reduce_range=settings.reduce_range)
                segments.append(info)
                log(f"  {spec.file_name}: {info['status']}, {len(info['quantized_nodes'])} MatMul int8, "
                    f"{len(info['excluded'])} kept fp32")
            quantization = static_record(options, settings, segments)
        else:
            quantization = quantization_record(settings, quantize_segments(source_dir / "onnx", onnx_dir, specs,
                                                                           settings))
        if calib is not None:
            quantization["calibration_data"] = {
                "split": options.calib_split, "examples": len(calib), "source": calib.source, "sha256": calib.sha256,
                "subset_seed": 1, "batch": options.calib_batch,
                "used_for": "activation ranges of the static QDQ graphs" + ("" if static else " for TensorRT"),
                "pipeline": "fp32 PyTorch segments + reference link at the artifact's eta"}
        quantization["tensorrt_graphs"] = None
        build_single_graph(onnx_dir, specs, etas, onnx_dir / "single.onnx")
        try:  # the one graph of the int8 segments (standard ops); a graph it cannot join is named, not fatal
            one_graph = {"file": build_one_graph(onnx_dir, specs, etas, precision="int8").relative_to(tmp).as_posix(),
                         "outputs": model_output_names(len(etas))}
        except AdaplerError as exc:
            one_graph = None
            log(f"one graph (onnx/model.onnx) not built for the int8 segments: {exc}")
        shutil.copytree(source_dir / "tokenizer", tmp / "tokenizer")
        not_asked = "not asked for (quantize --tensorrt)"
        manifest = dataclasses.replace(
            source, checkpoint={"path": str(checkpoint.path), "digest": digest}, precision="int8",
            engines=EnginesRecord(not_built={"segments": not_asked, "single": not_asked}), tools=tool_versions(),
            parity={}, files={}, one_graph=one_graph,
            derived_from={"path": str(source_dir), "precision": source.precision},
            quantization=quantization)
        write_manifest(tmp, manifest)  # the int8 graphs are opened through the contract, like any artifact's

        # Parity of every form the artifact has (the segment chain, the one graph) against the PyTorch fp32
        # reference; the report returned is the one graph's where there is one (what `auto` runs on the CPU).
        reports, accuracy = {}, {"examples": len(dev), "split": "dev"}
        for kind in artifact_backend_kinds(manifest):
            log(f"int8 parity ({kind}) against the PyTorch fp32 reference on {len(dev)} dev sentences")
            reference = _Recording(PyTorchBackend(model))
            with load_backend(tmp, kind=kind, check_files=False, device="cpu", threads=options.threads) as backend:
                candidate = _Recording(backend, f"{backend.name}-int8")
                reports[kind] = compare_backends(reference, candidate, tokenizer, dev.texts, cut, "int8",
                                                 batch_size=options.batch_size, progress=progress, pairs=dev.pairs)
            accuracy["fp32_reference"] = reference.accuracy(dev.labels)
            accuracy[f"int8_{kind}"] = candidate.accuracy(dev.labels)
        failed = {k: r for k, r in reports.items() if not r.passed}
        if failed:  # the report is the result (QuantizeResult.parity); on failure, the diagnosis
            for report in failed.values():
                log(report.table())
            raise ParityError("int8 parity failed (" + "; ".join(f"{k}: {', '.join(r.failures)}"
                                                               for k, r in failed.items()) + "); no artifact written")
        main_kind = "onnxruntime-graph" if "onnxruntime-graph" in reports else "onnxruntime"
        report = reports[main_kind]
        accuracy["int8"] = accuracy[f"int8_{main_kind}"]
        accuracy["drop_points"] = (accuracy["fp32_reference"] - accuracy["int8"]) * 100
        quantization["accuracy"] = accuracy
        if options.bench:
            def opened(path, manifest_):
                if manifest_.one_graph:
                    return OneGraphBackend(path / manifest_.one_graph["file"], len(etas), "cpu", options.threads)
                return OnnxRuntimeBackend(manifest_.segment_paths(path), specs, etas, "cpu", options.threads)

            with opened(source_dir, source) as fp32, opened(tmp, manifest) as int8:
                bench_pairs = None if dev.pairs is None else dev.pairs[: options.bench_samples]
                bench = bench_chains(fp32, int8, tokenizer, dev.texts[: options.bench_samples], cut,
                                     repeats=options.bench_repeats, pairs=bench_pairs)
            quantization["speed"] = {**bench, "threads": options.threads,
                                     "form": "one graph (onnx/model.onnx)" if one_graph else "segment chain"}
        parity = {"end_to_end": {k: r.to_dict() for k, r in reports.items()}, "not_run": {}, "accuracy": accuracy,
                  "speed": quantization["speed"]}
        if options.tensorrt:
            trt_dir = onnx_dir / TENSORRT_GRAPHS
            trt_dir.mkdir()
            log("TensorRT graphs: symmetric int8 activations (explicit quantization needs zero point 0)")
            for spec, seg_feeds in zip(specs, feeds):
                quantize_segment(source_dir / "onnx" / spec.file_name, trt_dir / spec.file_name, seg_feeds, options,
                                 symmetric=True)
            trt_paths = [trt_dir / s.file_name for s in specs]
            with OnnxRuntimeBackend(trt_paths, specs, etas, "cpu", options.threads) as trt_graphs:
                trt_candidate = _Recording(trt_graphs, "onnxruntime-int8-symmetric (TensorRT graphs)")
                trt_report = compare_backends(PyTorchBackend(model), trt_candidate, tokenizer, dev.texts, cut,
                                              "int8", batch_size=options.batch_size, pairs=dev.pairs)
            log(f"TensorRT graphs via ONNX Runtime: label agreement {trt_report.label_agreement * 100:.2f}%, keep "
                f"decisions flipped {trt_report.flip_rate * 100:.3f}%: {'passed' if trt_report.passed else 'FAILED'}")
            parity["tensorrt_graphs_via_onnxruntime"] = trt_report.to_dict()
            quantization["tensorrt_graphs"] = {"folder": f"onnx/{TENSORRT_GRAPHS}", "scheme": STATIC,
                                               "activations": "int8 symmetric (zero point 0)",
                                               "accuracy": trt_candidate.accuracy(dev.labels)}
            if trt_report.passed:
                manifest.engines = build_int8_engines(tmp, trt_dir, specs, options.max_batch,
                                                      options.max_seq or cut.max_length, log=log)
            else:  # engines from graphs that miss the int8 bounds would only fail `verify` on the GPU
                reason = "the symmetric int8 graphs fail parity: " + "; ".join(trt_report.failures)
                manifest.engines = EnginesRecord(not_built={"segments": reason, "single": reason})
            if manifest.engines.segments:
                parity["not_run"]["tensorrt"] = ("quantize runs the engines nowhere; on a machine with a CUDA GPU: "
                                                 f"adapler-export verify --artifact {out} --backend tensorrt")
        record_parity(tmp, manifest, parity, started)
    return QuantizeResult(out, report, manifest)


# ----- TensorRT explicit quantization ------------------------------------------------------------------------
def build_int8_engines(artifact_dir: Path, graphs_dir: Path, specs, max_batch: int, max_seq: int, opt_batch: int = 1,
                       log=print):
    """Strongly typed INT8 segment engines (`engines/segment_XX.int8.plan`) from the symmetric QDQ graphs in
    `graphs_dir` (TensorRT explicit quantization), as an `EnginesRecord` like the build's. Never raises for a
    TensorRT that cannot do it: the record says why nothing was built (the ONNX Runtime int8 artifact stands
    either way). No single engine: the plugin engine is built by `build` from fp32/fp16 graphs."""
    from adapler_export.artifact import EnginesRecord
    from adapler_export.engines import build_engine, import_tensorrt, input_profile, plan_relpath

    artifact_dir, graphs_dir = Path(artifact_dir), Path(graphs_dir)
    single = "int8 single-graph engines are not built (quantize builds segment engines)"
    try:
        trt, flavor = import_tensorrt()
    except AdaplerError as exc:
        return EnginesRecord(not_built={"segments": str(exc), "single": single})
    record = EnginesRecord(flavor=flavor, version=str(trt.__version__), not_built={"single": single})
    log(f"building {len(specs)} INT8 segment engines from the QDQ graphs with {flavor} {trt.__version__}")
    for spec in specs:
        profile = input_profile(spec.inputs, max_batch, max_seq, opt_batch)
        onnx_path, plan = graphs_dir / spec.file_name, plan_relpath(spec.file_name, "int8")
        try:
            built = build_engine(onnx_path, artifact_dir / plan, profile, flavor, io=spec)
        except AdaplerError as exc:  # recorded: a partial set of engines is of no use to the tensorrt backend
            shutil.rmtree(artifact_dir / Path(plan).parent, ignore_errors=True)
            reason = f"{spec.file_name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            return EnginesRecord(flavor=flavor, version=record.version, not_built={"segments": reason,
                                                                                    "single": single})
        record.segments.append({"plan_path": plan, "onnx_path": onnx_path.relative_to(artifact_dir).as_posix(),
                                "precision": "int8", "profiles": [profile], "segment": spec.index, **built})
        log(f"  {onnx_path.name} -> {plan} ({built['build_seconds']:.1f}s, {built['plan_bytes'] / 1e6:.1f} MB)")
    return record


def quantize_summary(result: QuantizeResult) -> dict:
    manifest = result.manifest
    engines = manifest.engines
    return {"artifact": str(result.path), "parity": result.parity.to_dict(),
            "accuracy": manifest.quantization["accuracy"], "speed": manifest.quantization["speed"],
            "engines": {"flavor": engines.flavor, "version": engines.version,
                        "plans": [e["plan_path"] for e in engines.segments], "not_built": dict(engines.not_built)}}


__all__ = ["QuantizeOptions", "QuantizeResult", "quantize_artifact", "build_int8_engines", "record_segment_inputs",
           "quantization_plan", "quantize_segment", "keep_unquantized_consumers_fp32"]
