#!/usr/bin/env python
"""Adaptive (PyTorch segments + CUDA link) vs the full static model on a CUDA GPU.

The adaptive pipeline is `adapler_export.backends.pytorch.PyTorchSegmentsBackend`: the exported segment
modules (the exact computation of the ONNX segments, fp16 with the CPs in fp32) chained on the GPU by the
library's one chain, linked by the CUDA `TokenCompact` kernel (`adapler_export.link_cuda`) or, where that
library is not built, by the PyTorch reference link on CUDA tensors (`link.token_compact_torch`; the JSON
records which). The baseline is `forward_full` in the same precision (`baseline.PyTorchFullBackend`). Per precision (fp32, fp16), workload (SST-2 dev; long texts of
256-512 wordpieces) and batch (1, 8, 32): CUDA-event timings, interleaved, medians, wall-clock vs FLOPs
speedup, peak allocated GPU memory of each model.

    python benchmarks/bench_gpu.py --ckpt sst2          # -> docs/results/sst2-bench-gpu.json (+ .png)

Without a CUDA GPU it prints why and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Table, log  # noqa: E402

NO_GPU_EXIT = 2
RESULT_SUFFIX = "-bench-gpu"  # <output-dir>/<name>-bench-gpu.json and .png


def parse_args(argv=None):
    p = common.bench_parser(__doc__, RESULT_SUFFIX, long_examples=256, repeats=10, warmup=16, export_cache=False,
                            memory_probes=False)
    p.add_argument("--precisions", default="fp32,fp16")
    p.add_argument("--link", default="auto", choices=["auto", "cuda", "torch"],
                   help="auto: the CUDA kernel where its library loads, else the PyTorch reference link")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--sort", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke mode: 32 SST-2 sentences, 8 long texts, 2 repeats, "
                                                        "2 warm-up batches")
    # Exercises this script's code on the CPU (perf_counter instead of CUDA events, no GPU memory): for
    # tests on machines without a GPU. Its numbers are not GPU numbers.
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.apply_quick(args, sst2_examples=32, long_examples=8, repeats=2)
    return args


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (CPU-only build)"
        return (f"no CUDA GPU visible to PyTorch {torch.__version__} (CUDA build: {build}); "
                "run benchmarks/bench_cpu.py here, and this script on a machine with an NVIDIA GPU")
    return None


def resolve_link(choice: str):
    """(function, description). The CUDA kernel is imported lazily; fallback recorded, never silent."""
    from adapler_export.link import token_compact_torch

    if choice == "torch":
        return token_compact_torch, {"implementation": "torch-reference", "reason": "--link torch"}
    try:
        from adapler_export import link_cuda

        library = link_cuda.load_library()
        path = getattr(library, "path", None)

        def cuda_link(hidden, scores, mask, positions, eta):
            return link_cuda.token_compact_cuda(hidden, scores, mask, positions, eta, library=library)
        return cuda_link, {"implementation": "cuda-kernel", "library": str(path) if path else None}
    except Exception as exc:  # ImportError, CudaLinkUnavailable, OSError: the library is not there
        if choice == "cuda":
            raise SystemExit(f"--link cuda: the CUDA link is unavailable: {exc}")
        return token_compact_torch, {"implementation": "torch-reference",
                                     "reason": "CUDA link unavailable: " + " ".join(str(exc).split())[:400]}


def device_models(model, precision: str, device, link) -> tuple:
    """(adaptive, full) tensor callables on `device`: the segment backend's `run_tensors` (ChainResult of
    device tensors) and the full model's `logits`. They run a copy of the model (both share its weights in
    fp32), so the caller's stays on the CPU as the reference."""
    import copy

    from adapler_export.backends.pytorch import PyTorchSegmentsBackend
    from adapler_export.baseline import PyTorchFullBackend

    on_device = copy.deepcopy(model)
    adaptive = PyTorchSegmentsBackend(on_device, precision, device, link=link)
    full = PyTorchFullBackend(on_device, device, precision)
    return adaptive.run_tensors, full.logits


def cuda_event_timer():
    """`timer(run, *inputs) -> seconds` for common.time_round_robin: CUDA events around the call,
    synchronised after it."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(run, *inputs):
        start.record()
        run(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return timed


def peak_memory_mb(run, ids, mask) -> float:
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run(ids, mask)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def gpu_info(device) -> dict:
    import torch

    props = torch.cuda.get_device_properties(device)
    info = {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
        info["nvidia_smi"] = out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = None if args.cpu_smoke else no_gpu_reason()
    if reason:
        print(f"bench_gpu: {reason}", file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    from adapler_export.checkpoint import load_checkpoint

    device = torch.device("cpu" if args.cpu_smoke else args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ckpt = load_checkpoint(args.ckpt)
    model, tokenizer = ckpt.model.eval(), ckpt.tokenizer
    reference = ckpt.model  # stays on the CPU: fp32 reference for the parity columns
    name, json_path, png_path = common.output_paths(args, ckpt.path, RESULT_SUFFIX)
    link, link_info = resolve_link(args.link)
    log(f"link: {link_info}")
    workloads = common.workloads_from_args(args, ckpt)
    pad_id = common.pad_id(tokenizer)
    started, load_start = time.time(), common.load_average()
    rows = []
    for precision in [p for p in args.precisions.split(",") if p]:
        adaptive, run_full = device_models(model, precision, device, link)
        for workload in workloads:
            for batch in args.batches:
                host = common.make_batches(workload, batch, pad_id, sort=args.sort)
                batches = [(torch.from_numpy(i).to(device), torch.from_numpy(m).to(device), idx) for i, m, idx in host]
                with torch.inference_mode():
                    outs_a = [adaptive(i, m) for i, m, _ in batches]
                    outs_f = [run_full(i, m) for i, m, _ in batches]
                    big = max(batches, key=lambda b: b[0].numel())
                    if device.type == "cuda":
                        timing = common.time_interleaved(adaptive, run_full, batches, args.repeats, args.warmup,
                                                         sync=torch.cuda.synchronize, timer=cuda_event_timer())
                        mem_a, mem_f = peak_memory_mb(adaptive, *big[:2]), peak_memory_mb(run_full, *big[:2])
                    else:  # --cpu-smoke
                        timing = common.time_interleaved(adaptive, run_full, batches, args.repeats, args.warmup)
                        mem_a = mem_f = None
                    # Parity columns against the CPU fp32 reference (forward_hard), on up to 4 batches.
                    ref_diff, ref_kept_same, ref_kept_total = 0.0, 0, 0
                    for (ids, mask, _), out in list(zip(host, outs_a))[:4]:
                        ref = reference.forward_hard(torch.from_numpy(ids), torch.from_numpy(mask))
                        ref_diff = max(ref_diff, float((out.logits.float().cpu() - ref.logits).abs().max()))
                        for kg, kr in zip(out.kept, ref.kept):
                            ref_kept_total += 1
                            ref_kept_same += int(tuple(kg.shape) == tuple(kr.shape) and bool((kg.cpu() == kr).all()))
                kept_np = [[k.cpu().numpy() for k in out.kept] for out in outs_a]
                row = {"backend": "pytorch-cuda" if device.type == "cuda" else "pytorch-cpu-smoke",
                       "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "precision": precision,
                       "link": link_info["implementation"], "batch": batch, "workload": workload.name,
                       "examples": len(workload.examples), "batches": len(batches), "threads": torch.get_num_threads(),
                       "repeats": args.repeats, "sorted_by_length": args.sort,
                       "timer": "cuda events" if device.type == "cuda" else "perf_counter"}
                row.update(timing.summary(len(workload.examples)))
                row.update(common.flops_summary(host, kept_np, model.config))
                row["efficiency"] = row["wallclock_speedup"] / row["flops_speedup"]
                row["adaptive_peak_gpu_mb"] = None if mem_a is None else round(mem_a, 1)
                row["full_peak_gpu_mb"] = None if mem_f is None else round(mem_f, 1)
                pred_a = np.concatenate([o.logits.argmax(-1).cpu().numpy() for o in outs_a])
                pred_f = np.concatenate([o.argmax(-1).cpu().numpy() for o in outs_f])
                row["adaptive_vs_full"] = {"label_agreement": float((pred_a == pred_f).mean())}
                row["adaptive_vs_cpu_reference"] = {"max_abs_logit_diff": ref_diff,
                                                    "kept_identical_fraction": ref_kept_same / max(ref_kept_total, 1)}
                if workload.labels is not None:
                    labels = workload.labels[np.concatenate([b[2] for b in host])]
                    row["adaptive_accuracy"] = float((pred_a == labels).mean())
                    row["full_accuracy"] = float((pred_f == labels).mean())
                rows.append(row)
                log(f"{precision} {workload.name:>12} B={batch:<3} adaptive {row['adaptive_ms_per_example']:8.3f} ms/ex"
                    f"  full {row['full_ms_per_example']:8.3f} ms/ex  wall-clock {row['wallclock_speedup']:.3f}x"
                    f"  FLOPs {row['flops_speedup']:.3f}x (padded {row['padded_flops_speedup']:.3f}x)")
        del adaptive, run_full
        if device.type == "cuda":
            torch.cuda.empty_cache()

    result = {
        **common.result_header(name, "bench_gpu.py", argv, args.quick),
        "checkpoint": {"path": str(ckpt.path), "backbone": ckpt.config.backbone, "num_layers": model.num_layers,
                       "max_length": ckpt.config.max_length, "truncation": ckpt.config.truncation,
                       "eta": [float(e) for e in model.eta.detach().cpu()]},
        "machine": {**common.machine_info(), "gpu": gpu_info(device) if device.type == "cuda" else None},
        "link": link_info, "load_average_start": load_start, "load_average_end": common.load_average(),
        "seconds": round(time.time() - started, 1),
        "settings": {"repeats": args.repeats, "warmup_batches": args.warmup, "sorted_by_length": args.sort,
                     "inputs": "pre-uploaded to the GPU (host-to-device copies not timed); the adaptive "
                               "pipeline's device-to-host read of S' per link is timed"},
        "workloads": [w.summary() for w in workloads],
        "definitions": {
            "wallclock_speedup": "median over repeats of (full time / adaptive time), CUDA events around each "
                                 "call, synchronised after each call",
            "flops_speedup": "see bench_cpu.py / benchmarks/README.md",
            "adaptive_peak_gpu_mb": "torch.cuda.max_memory_allocated during one run of the workload's largest "
                                    "batch, minus the memory allocated before it (activations, not weights)"},
        "rows": rows,
        "notes": (["QUICK MODE: a smoke test, not a measurement"] if args.quick else []) +
                 (["CPU SMOKE RUN: the script's code path on the CPU, not GPU numbers"] if args.cpu_smoke else []),
    }
    table = Table(["precision", "workload", "B", "adaptive ms/ex", "full ms/ex", "wall-clock x", "FLOPs x",
                   "padded FLOPs x", "mem a/f MB"])
    for r in rows:
        table.add(r["precision"], r["workload"], r["batch"], r["adaptive_ms_per_example"], r["full_ms_per_example"],
                  r["wallclock_speedup"], r["flops_speedup"], r["padded_flops_speedup"],
                  "-" if r["adaptive_peak_gpu_mb"] is None else
                  f"{r['adaptive_peak_gpu_mb']:.0f}/{r['full_peak_gpu_mb']:.0f}")
    log(table.render())
    common.save_result(result, json_path, png_path, rows,
                       f"{name}: adaptive vs full on {rows[0]['device']}" if rows else name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
