"""`build`: checkpoint -> verified deployable artifact (../shared/DESIGN.md §3, docs/INTERFACES.md).

Steps: export the segments (validated one by one), check every segment with polygraphy, for int8 quantize them
(`quantization`: dynamic INT8 of the weight MatMuls, settings from this CPU's flags), join them into single.onnx
with link nodes and into model.onnx (the whole model in standard ONNX ops, validated against the chain), save
the tokenizer, build TensorRT engines where asked, write the manifest (the contract, with every file's
digest), then run end-to-end parity against the PyTorch reference for every backend kind the artifact has and
this machine can run (the others are named, with the reason), with the precision's tolerances.
Everything happens in a temporary folder renamed into place only when parity passes: a failed build
leaves no artifact, and an existing folder is replaced only if it is an earlier artifact and `force`.

int8 (`build --int8`) is built here, not in `calibration/`: dynamic quantization needs no calibration data.
The segments are exported and polygraphy-checked in fp32 (the export is what polygraphy can judge exactly), then
quantized; the int8 forms are judged end to end against the fp32 PyTorch reference (`Tolerances` "int8").
INT8 TensorRT engines need calibrated static graphs: `adapler-export quantize --artifact <fp32> --tensorrt`.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .artifact import EnginesRecord, Manifest, record_parity, write_manifest
from .checkpoint import checkpoint_digest, load_checkpoint
from .data import parity_texts
from .errors import AdaplerError, ParityError
from .evaluation import encode
from .onnx_graph import build_one_graph
from .quantization import choose_int8_settings, quantization_record, quantize_segments
from .parity import (ParityReport, Tolerances, artifact_backend_kinds, capture_segment_io,
                     compare_artifact_backends, polygraphy_segment_check)
from .segments import LINK_DOMAIN, LINK_OP, build_single_graph, export_segments
from .specs import OPSET, model_output_names
from .storage import atomic_directory, check_output_dir, resolve_output_dir

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
POLYGRAPHY_EXAMPLES = 8


@dataclass
class BuildOptions:
    precision: str = "fp32"  # PRECISIONS
    backend: str = "onnxruntime"
    samples: int | None = None  # dev examples for parity (None: the whole dev set)
    data_dir: str | None = None
    max_batch: int = 32
    max_seq: int | None = None  # default: the checkpoint's max length
    opt_batch: int = 1
    batch_size: int = 32  # parity batches
    tolerances: Tolerances | None = None
    force: bool = False  # replace an earlier artifact at the output


@dataclass
class BuildResult:
    path: Path
    parity: ParityReport
    manifest: Manifest


def tool_versions() -> dict:
    import onnx
    import onnxruntime
    import polygraphy
    import torch
    import transformers

    return {"adapler_export": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__,
            "python": platform.python_version()}


def default_artifact_name(ckpt_path: Path, precision: str) -> str:
    return f"{ckpt_path.name}-{precision}"


def build_artifact(ckpt_name: str, output: str | None = None, options: BuildOptions | None = None,
                   log=print, progress=None) -> BuildResult:
    options = options or BuildOptions()
    if options.backend not in BACKENDS:
        raise AdaplerError(f"--backend must be one of {BACKENDS}, got {options.backend!r}")
    if options.precision not in PRECISIONS:
        raise AdaplerError(f"precision must be one of {PRECISIONS}, got {options.precision!r}")
    int8 = options.precision == "int8"
    if int8 and options.backend == "tensorrt":
        raise AdaplerError("--int8 builds the ONNX Runtime (CPU) int8 artifact; INT8 TensorRT engines come from "
                           "calibrated graphs: `adapler-export quantize --artifact <fp32 artifact> --tensorrt`")
    ckpt = load_checkpoint(ckpt_name)
    out = resolve_output_dir(output or default_artifact_name(ckpt.path, options.precision), "artifacts")
    check_output_dir(out, "artifact", options.force, inputs=[ckpt.path])  # before any work
    model, config = ckpt.model, ckpt.config
    max_seq = options.max_seq or config.max_length
    texts, pairs = parity_texts(config.task, options.data_dir, options.samples)
    started = time.time()
    etas = [float(e) for e in model.eta.detach()]

    export_precision = "fp32" if int8 else options.precision  # int8: quantized from the checked fp32 export
    with atomic_directory(out, kind="artifact", force=options.force, inputs=[ckpt.path]) as tmp:
        onnx_dir = tmp / "onnx"
        log(f"exporting {model.num_layers + 1} segments ({export_precision}) from {ckpt.path}")
        specs = export_segments(model, onnx_dir, export_precision, progress=progress)

        log("checking every segment graph with polygraphy (ONNX Runtime vs recorded PyTorch outputs)")
        inputs = encode(ckpt.tokenizer, texts[:POLYGRAPHY_EXAMPLES], config.cut,
                        None if pairs is None else pairs[:POLYGRAPHY_EXAMPLES])
        records = capture_segment_io(model, export_precision, *inputs)
        # int8: the check is of the fp32 export, so its inputs/outputs are not kept beside the int8 graphs
        segment_check = polygraphy_segment_check(onnx_dir, specs, records, export_precision,
                                                 save_dir=None if int8 else tmp / "polygraphy")
        if not segment_check["passed"]:
            failed = [s["segment"] for s in segment_check["segments"] if not s["passed"]]
            raise ParityError(f"polygraphy: segment graphs differ from PyTorch: {', '.join(failed)}")
        quantization = None
        if int8:
            segment_check["checked"] = "the fp32 export, before quantization"
            settings = choose_int8_settings()
            log(f"quantizing the segments to int8 (dynamic; reduce_range {settings.reduce_range}: {settings.reason})")
            quantization = quantization_record(settings, quantize_segments(onnx_dir, onnx_dir, specs, settings))

        build_single_graph(onnx_dir, specs, etas, onnx_dir / "single.onnx")
        log("joining segments and links into one standard-ONNX graph (onnx/model.onnx)")
        one_graph = build_one_graph(onnx_dir, specs, etas, precision=options.precision)
        ckpt.tokenizer.save_pretrained(tmp / "tokenizer")

        engines = EnginesRecord(not_built={"segments": "not asked for (build --backend tensorrt)",
                                           "single": "not asked for (build --backend tensorrt)"})
        if options.backend == "tensorrt":
            from .engines import build_artifact_engines

            engines = build_artifact_engines(tmp, specs, options.precision, options.max_batch, max_seq,
                                             opt_batch=options.opt_batch, log=log)

        manifest = Manifest(
            checkpoint={"path": str(ckpt.path), "digest": checkpoint_digest(ckpt.path)},
            backbone=config.backbone, task=config.task, labels=list(config.labels), max_length=config.max_length,
            truncation=config.truncation,
            num_layers=model.num_layers, hidden_size=model.config.hidden_size, eta=etas,
            precision=options.precision, opset=OPSET, segments=[s.to_dict() for s in specs],
            single_graph={"file": "single.onnx", "link_op": f"{LINK_DOMAIN}::{LINK_OP}",
                          "outputs": model_output_names(model.num_layers)},
            one_graph={"file": one_graph.relative_to(tmp).as_posix(), "outputs": model_output_names(model.num_layers)},
            engines=engines, tools=tool_versions(), quantization=quantization)
        write_manifest(tmp, manifest)  # the backends open the folder through the contract

        from .backends.pytorch import PyTorchBackend

        reports, not_run = compare_artifact_backends(
            tmp, manifest, artifact_backend_kinds(manifest), PyTorchBackend(model), ckpt.tokenizer, texts,
            batch_size=options.batch_size, tolerances=options.tolerances, progress=progress, log=log, pairs=pairs)
        for kind, reason in not_run.items():
            log(f"parity of {kind}: not run here ({reason})")
        for report in reports.values():
            log(report.table())
        parity = {"end_to_end": {k: r.to_dict() for k, r in reports.items()}, "not_run": not_run,
                  "polygraphy_segments": segment_check}
        record_parity(tmp, manifest, parity, started)
        failed = {k: r for k, r in reports.items() if not r.passed}
        if failed:
            raise ParityError("parity failed (" + "; ".join(f"{k}: {', '.join(r.failures)}" for k, r in failed.items())
                              + "); no artifact written")
    log(f"artifact written to {out}")
    return BuildResult(out, reports["onnxruntime"], manifest)
