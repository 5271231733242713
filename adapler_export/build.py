"""`build`: checkpoint -> verified deployable artifact (../shared/DESIGN.md §3).

Steps: export the segments (validated one by one), join them into single.onnx with link nodes, save the
tokenizer, build TensorRT engines where asked, check every segment with polygraphy, run end-to-end parity
against the PyTorch reference, write manifest.json. Everything happens in a temporary directory that is
renamed into place only when parity passes: a failed build leaves no artifact.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .backends.onnxruntime import OnnxRuntimeBackend
from .backends.pytorch import PyTorchBackend
from .checkpoint import atomic_directory, checkpoint_digest, load_checkpoint, resolve_output_dir
from .errors import AdaplerError, ParityError
from .parity import ParityReport, Tolerances, capture_segment_io, compare_backends, polygraphy_segment_check
from .segments import OPSET, build_single_graph, export_segments

BACKENDS = ("onnxruntime", "tensorrt")


@dataclass
class BuildOptions:
    precision: str = "fp32"
    backend: str = "onnxruntime"
    samples: int | None = None  # dev examples for parity (None: the whole dev set)
    data_dir: str | None = None
    max_batch: int = 32
    max_seq: int | None = None  # default: the checkpoint's max length
    opt_batch: int = 1
    batch_size: int = 32  # parity batches
    tolerances: Tolerances | None = None


@dataclass
class BuildResult:
    path: Path
    parity: ParityReport
    manifest: dict


def parity_texts(task: str, data_dir: str | None, samples: int | None) -> list:
    from training.data import load_task

    dev = load_task(task, data_dir)["dev"]
    return list(dev.texts if samples is None else dev.subset(samples).texts)


def tool_versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    versions = {"adapler_export": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import polygraphy

        versions["polygraphy"] = polygraphy.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def build_artifact(ckpt_name: str, output: str | None = None, options: BuildOptions | None = None,
                   log=print, progress=None) -> BuildResult:
    options = options or BuildOptions()
    if options.backend not in BACKENDS:
        raise AdaplerError(f"--backend must be one of {BACKENDS}, got {options.backend!r}")
    ckpt = load_checkpoint(ckpt_name)
    model, config = ckpt.model, ckpt.config
    max_seq = options.max_seq or config.max_length
    out = resolve_output_dir(output, "artifacts") if output else \
        resolve_output_dir(f"{ckpt.path.name}-{options.precision}", "artifacts")
    texts = parity_texts(config.task, options.data_dir, options.samples)
    started = time.time()
    etas = [float(e) for e in model.eta.detach()]

    with atomic_directory(out) as tmp:
        onnx_dir = tmp / "onnx"
        log(f"exporting {model.num_layers + 1} segments ({options.precision}) from {ckpt.path}")
        specs = export_segments(model, onnx_dir, options.precision, progress=progress)
        build_single_graph(onnx_dir, specs, etas, onnx_dir / "single.onnx")
        ckpt.tokenizer.save_pretrained(tmp / "tokenizer")

        engines = {}
        if options.backend == "tensorrt":
            engines = _build_engines(onnx_dir, specs, tmp / "engines", options, model.config.hidden_size, max_seq,
                                     log)

        log("checking every segment graph with polygraphy (ONNX Runtime vs recorded PyTorch outputs)")
        from .evaluation import encode

        ids, mask = encode(ckpt.tokenizer, texts[: min(8, len(texts))], config.max_length)
        records = capture_segment_io(model, specs, options.precision, ids, mask)
        segment_check = polygraphy_segment_check(onnx_dir, specs, records, options.precision,
                                                 save_dir=tmp / "polygraphy")
        if not segment_check["passed"]:
            failed = [s["segment"] for s in segment_check["segments"] if not s["passed"]]
            raise ParityError(f"polygraphy: segment graphs differ from PyTorch: {', '.join(failed)}")

        candidate = OnnxRuntimeBackend([onnx_dir / s.file_name for s in specs], etas)
        report = compare_backends(PyTorchBackend(model), candidate, ckpt.tokenizer, texts, config.max_length,
                                  options.precision, batch_size=options.batch_size, tolerances=options.tolerances,
                                  progress=progress)
        log(report.table())
        manifest = {
            "format_version": 1,
            "checkpoint": {"path": str(ckpt.path), "digest": checkpoint_digest(ckpt.path)},
            "backbone": config.backbone, "task": config.task, "labels": config.labels,
            "max_length": config.max_length, "num_layers": model.num_layers,
            "hidden_size": model.config.hidden_size, "eta": etas, "precision": options.precision,
            "backend": options.backend, "opset": OPSET,
            "segments": [s.to_dict() for s in specs],
            "single_graph": {"file": "single.onnx", "link_op": "adapler::TokenCompact",
                             "outputs": ["logits"] + [f"kept_positions_{k}" for k in range(model.num_layers)]},
            "engines": engines, "tools": tool_versions(),
            "parity": {"report": report.to_dict(), "segments": segment_check},
            "build_seconds": round(time.time() - started, 1),
        }
        (tmp / "parity.json").write_text(json.dumps({"end_to_end": report.to_dict(), "segments": segment_check},
                                                    indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if not report.passed:
            raise ParityError(f"parity failed ({'; '.join(report.failures)}); no artifact written")
    log(f"artifact written to {out}")
    return BuildResult(out, report, manifest)


def _build_engines(onnx_dir: Path, specs, engines_dir: Path, options: BuildOptions, hidden: int, max_seq: int,
                   log) -> dict:
    """TensorRT segment engines (tensorrt, else tensorrt_rtx ahead of time on the CPU)."""
    from .engines import build_segment_engines, import_tensorrt, segment_profiles

    trt, flavor = import_tensorrt()
    profiles = segment_profiles(len(specs), hidden, options.max_batch, max_seq, opt_batch=options.opt_batch,
                                opt_seq=max_seq)
    log(f"building {len(specs)} segment engines with {flavor} {trt.__version__} ({options.precision}, "
        f"batch 1..{options.max_batch}, seq 1..{max_seq})")
    engines_dir.mkdir(parents=True, exist_ok=True)
    infos = build_segment_engines([onnx_dir / s.file_name for s in specs], engines_dir, options.precision, profiles,
                                  timing_cache_path=engines_dir / "timing.cache")
    records = []
    for info in infos:
        record = info.to_dict()
        # Paths inside the artifact are relative so the directory can move.
        record["plan_path"] = str(Path(info.plan_path).relative_to(engines_dir.parent))
        record["onnx_path"] = str(Path(info.onnx_path).relative_to(engines_dir.parent))
        records.append(record)
    return {"flavor": flavor, "version": trt.__version__, "segments": records,
            "engine_parity": "run `adapler-export verify --artifact DIR --backend tensorrt` on a GPU machine"}
