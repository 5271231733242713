#!/usr/bin/env python
"""One-command proof of the TokenCompact CUDA kernel (plugins/token_compact) on a GPU machine.

    python plugins/token_compact/tools/gpu_proof.py [--quick] [--json out.json] [--require-gpu]
    python plugins/token_compact/tools/gpu_proof.py --host-emulation     # no GPU: see 2b below

Needs on the GPU machine: a CUDA build of PyTorch, nvcc (and cmake, else nvcc is called directly).
TensorRT is not needed: the kernels are reached through their C API (ctypes,
adapler_export/link_cuda.py), the same code the TensorRT plugin's enqueue() calls.

What it does:
  1. CPU checks, everywhere: the host links of adapler_export.link (token_compact_fast, the ONNX
     Runtime chain's, and token_compact_torch) against the reference every check here uses,
     token_compact_numpy (itself checked slot by slot against the rule in tests/test_link.py), on
     random batches with fully dead rows, CLS-only rows, random masks with holes and scores exactly at
     the threshold; plus the C API's argument validation (pure host code) when the library can be
     built here.
  2. GPU checks, where torch sees a CUDA GPU: builds the library, then for B in {1,3,8,32},
     S in {1,2,17,64,128,512}, H in {64,384,768,1023}, fp32 and fp16 (and extra shapes: S up to 8192,
     S = 0, B = 0, misaligned buffers, every vector width of the gather), runs three API flavours
     (convenience call; pass 1 + device-S' pass 2 with an INT64 size output, as the TensorRT plugin
     does; pass 1 + host read + host-S' pass 2) on fresh random inputs with every output buffer
     poisoned (NaN / 0x7f bytes) beforehand, and requires bit-exact equality with the reference, the
     poison intact past the [B,S'] prefix, and the exact error code for each bad argument.
  2b. With --host-emulation (any machine with g++ and the CUDA headers): the same checks on the same
     kernel source compiled as host C++ against tools/host_emu, which emulates blocks, warps,
     __syncthreads, ballots and shuffles on the CPU. It proves the indexing, the scan, the padding and
     the three API flavours; it cannot prove anything about the GPU's compiler, memory model or speed.
  3. Timing: the kernel (device time of both passes, CUDA events; and the full call including the
     device->host copy of S') against the PyTorch op sequence (adapler_export.link.token_compact_torch
     on the GPU), median of repeats, printed as a table.

Exit status: 0 when every check that ran passed (the GPU part may have been skipped: it says so and
why), 1 on any failure, 2 with --require-gpu when the GPU part could not run.

`compact_with_kernel(hidden, scores, mask, positions, eta)` is the hook for the adaptive model's GPU
runtime: torch CUDA tensors in, CompactResult of torch CUDA tensors out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROOF_COMMAND = "python plugins/token_compact/tools/gpu_proof.py"

# ------------------------------------------------------------------------------------ reference


def expected(hidden, scores, mask, positions, eta):
    """What the kernel must produce, as (hidden, mask, positions, new_len): the project's reference link
    (adapler_export.link.token_compact_numpy). S = 0, which the C API accepts and the host link does not
    take, has no slot to keep: one padding slot per row."""
    from adapler_export.link import token_compact_numpy

    b, s, h = hidden.shape
    if s == 0:
        return np.zeros((b, 1, h), hidden.dtype), np.zeros((b, 1), np.int32), np.full((b, 1), -1, np.int32), 1
    return tuple(token_compact_numpy(hidden, scores, mask, positions, eta))


# ---------------------------------------------------------------------------------- input cases

KINDS = ("mixed", "prefix", "holes", "cls_only", "all_dead", "ties")
# eta values the grids draw from: both ends of [0, 1] (0 keeps every live token) and a few between
ETAS = (1.0, 0.5, 0.37, 1e-3, 0.0)


def make_case(rng: np.random.Generator, b: int, s: int, h: int, dtype, kind: str, eta: float):
    """Random link inputs. Scores are a softmax over each row's live slots (sum 1, exactly 0 at dead
    slots), like the CP scores; positions are a shuffled original index with -1 on dead slots."""
    mask = np.zeros((b, s), dtype=np.int32)
    for r in range(b):
        row_kind = kind
        if kind == "mixed":  # one batch mixing every row type
            row_kind = ("prefix", "cls_only", "all_dead", "holes", "ties")[r % 5] if b > 1 else "prefix"
        if row_kind == "all_dead" or s == 0:
            continue
        if row_kind == "holes":  # random mask, slot 0 included (the rule is defined for it too)
            mask[r] = rng.random(s) < rng.uniform(0.2, 0.9)
        else:
            mask[r, : int(rng.integers(1, s + 1))] = 1
    logits = rng.normal(0.0, 2.0, size=(b, s)).astype(np.float32)
    scores = np.where(mask == 1, np.exp(logits - logits.max(axis=1, keepdims=True) if s else logits), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.nan_to_num(scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
    for r in range(b):
        n = int(mask[r].sum())
        row_kind = ("prefix", "cls_only", "all_dead", "holes", "ties")[r % 5] if kind == "mixed" and b > 1 else kind
        if n == 0:
            continue
        delta = np.float32(np.float32(eta) / np.float32(n))
        live = np.flatnonzero(mask[r])
        if row_kind == "cls_only":  # every token but [CLS] falls below the threshold
            scores[r, live] = np.float32(delta) * np.float32(0.5)
            scores[r, 0] = 1.0
        elif row_kind == "ties":  # scores exactly at, just below and just above delta
            for k, i in enumerate(live):
                scores[r, i] = (delta, np.nextafter(delta, np.float32(0)), np.nextafter(delta, np.float32(1)))[k % 3]
    positions = np.where(mask == 1, rng.permutation(max(s, 1))[:s][None, :].repeat(b, axis=0), -1).astype(np.int32)
    hidden = rng.normal(0.0, 1.0, size=(b, s, h)).astype(dtype)
    return hidden, scores, mask, positions


def results_equal(a, b) -> tuple[bool, str]:
    """Bit-exact comparison of two (hidden, mask, positions, new_len) results."""
    ah, am, ap, an = a
    bh, bm, bp, bn = b
    if int(an) != int(bn):
        return False, f"new_len {an} != {bn}"
    if ah.shape != bh.shape or ah.dtype != bh.dtype:
        return False, f"hidden {ah.shape}/{ah.dtype} != {bh.shape}/{bh.dtype}"
    view = np.uint16 if ah.dtype == np.float16 else np.uint32
    if not np.array_equal(np.ascontiguousarray(ah).view(view), np.ascontiguousarray(bh).view(view)):
        return False, "hidden differs"
    if not np.array_equal(am, bm):
        return False, "mask differs"
    if not np.array_equal(ap, bp):
        return False, "positions differ"
    return True, ""


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"  FAIL {what}")
        return ok


# ----------------------------------------------------------------------------------- CPU checks


def cpu_checks(checks: Checks, rng: np.random.Generator, quick: bool) -> None:
    import torch

    from adapler_export.link import token_compact_fast, token_compact_torch

    def on_torch(hidden, scores, mask, positions, eta):
        r = token_compact_torch(*(torch.from_numpy(a) for a in (hidden, scores, mask, positions)), eta)
        return r.hidden.numpy(), r.mask.numpy(), r.positions.numpy(), r.new_len

    print("[cpu] host links under test: token_compact_fast, token_compact_torch (reference: token_compact_numpy)")
    shapes = [(1, 1, 4), (1, 2, 3), (3, 17, 5), (8, 64, 8), (5, 128, 3)] + ([] if quick else [(32, 512, 2)])
    for b, s, h in shapes:
        for kind in KINDS:
            for dtype in (np.float32, np.float16):
                eta = float(rng.choice(ETAS))
                args = make_case(rng, b, s, h, dtype, kind, eta)
                want = expected(*args, eta)
                for name, link in (("token_compact_fast", token_compact_fast), ("token_compact_torch", on_torch)):
                    ok, why = results_equal(tuple(link(*args, eta)), want)
                    checks.check(ok, f"{name} vs reference B={b} S={s} H={h} {np.dtype(dtype).name} {kind}: {why}")
    # properties the contract states
    h, m, p, n = expected(np.ones((2, 4, 3), np.float32), np.zeros((2, 4), np.float32),
                          np.zeros((2, 4), np.int32), np.full((2, 4), -1, np.int32), 0.5)
    checks.check(n == 1 and not m.any() and (p == -1).all() and not h.any(), "all-dead batch gives one padding slot")
    args = make_case(rng, 6, 40, 2, np.float32, "prefix", 0.9)
    got = expected(*args, 0.9)
    ok = all(got[1][r, 0] == 1 and got[2][r, 0] == args[3][r, 0] for r in range(6))
    checks.check(ok, "[CLS] is always kept in live rows")
    print(f"[cpu] {checks.passed} checks passed, {len(checks.failed)} failed")


# ------------------------------------------------------------------------------ build and load


def build_library(build_dir: Path, arch: str | None) -> Path:
    """Build libadapler_token_compact.so (cmake when present, nvcc directly otherwise)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH")
    build_dir.mkdir(parents=True, exist_ok=True)
    src = REPO / "plugins" / "token_compact"
    lib = build_dir / "lib" / "libadapler_token_compact.so"
    if shutil.which("cmake"):
        cfg = ["cmake", "-S", str(REPO / "plugins"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
               f"-DCMAKE_CUDA_COMPILER={nvcc}"]
        if arch:
            cfg.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
        try:
            subprocess.run(cfg, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            subprocess.run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2), "--target",
                            "adapler_token_compact"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        except subprocess.CalledProcessError as exc:  # e.g. a CMake older than 3.18: nvcc directly
            print(f"[lib] the CMake build failed, compiling with nvcc directly:\n{(exc.stdout or '')[-2000:]}")
            lib = build_dir / "libadapler_token_compact.so"
    else:
        lib = build_dir / "libadapler_token_compact.so"
    if lib.parent == build_dir:
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (arch.split(";") if arch else ["80", "90"])]
        subprocess.run([nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler=-fPIC,-fvisibility=hidden", "-cudart",
                        "static", *gencode, "-I", str(src), str(src / "tokenCompactKernel.cu"), "-o", str(lib)],
                       check=True)
    if not lib.is_file():
        raise RuntimeError(f"build finished but {lib} is missing")
    return lib


def validation_checks(checks: Checks, lib, device: bool) -> None:
    """Every argument error returns its own code before any CUDA call. Pointers here are fake but
    aligned addresses that are never dereferenced (validation fails first)."""
    from adapler_export.link_cuda import STATUS_CODES as C, CudaLinkError

    def code(fn, *a):
        try:
            fn(*a)
            return 0
        except CudaLinkError as exc:
            return exc.status

    P = 1 << 20  # fake, 16-byte aligned
    ws = lib.workspace_size(2, 8)
    above_one = float(np.nextafter(np.float32(1), np.float32(2)))  # the first float32 past the range [0, 1]
    checks.check(ws > 0 and lib.workspace_size(1, lib.max_seq_len + 1) == 0, "workspace size query")
    checks.check(lib.max_seq_len == 8192, "max sequence length is 8192")
    cases = [
        ("S > max", lambda: code(lib.pass1, P, P, 1, lib.max_seq_len + 1, 0.5, P, 1 << 30), C["ADAPLER_ERR_SEQ_TOO_LONG"]),
        ("eta = 1 + 1 ulp", lambda: code(lib.pass1, P, P, 2, 8, above_one, P, ws), C["ADAPLER_ERR_BAD_ETA"]),
        ("eta = 1.5", lambda: code(lib.pass1, P, P, 2, 8, 1.5, P, ws), C["ADAPLER_ERR_BAD_ETA"]),
        ("eta = NaN", lambda: code(lib.pass1, P, P, 2, 8, float("nan"), P, ws), C["ADAPLER_ERR_BAD_ETA"]),
        ("eta = -0.1", lambda: code(lib.pass1, P, P, 2, 8, -0.1, P, ws), C["ADAPLER_ERR_BAD_ETA"]),
        ("null scores", lambda: code(lib.pass1, None, P, 2, 8, 0.5, P, ws), C["ADAPLER_ERR_NULL_POINTER"]),
        ("null workspace", lambda: code(lib.pass1, P, P, 2, 8, 0.5, None, ws), C["ADAPLER_ERR_NULL_POINTER"]),
        ("negative batch", lambda: code(lib.pass1, P, P, -1, 8, 0.5, P, ws), C["ADAPLER_ERR_BAD_SHAPE"]),
        ("workspace too small", lambda: code(lib.pass1, P, P, 2, 8, 0.5, P, ws - 1), C["ADAPLER_ERR_WORKSPACE_TOO_SMALL"]),
        ("misaligned workspace", lambda: code(lib.pass1, P, P, 2, 8, 0.5, P + 4, ws), C["ADAPLER_ERR_MISALIGNED"]),
        ("misaligned scores", lambda: code(lib.pass1, P + 2, P, 2, 8, 0.5, P, ws), C["ADAPLER_ERR_MISALIGNED"]),
        ("bad dtype", lambda: code(lib.pass2, P, P, 7, 2, 8, 4, 1, P, ws, P, P, P), C["ADAPLER_ERR_BAD_DTYPE"]),
        ("H = 0", lambda: code(lib.pass2, P, P, 0, 2, 8, 0, 1, P, ws, P, P, P), C["ADAPLER_ERR_BAD_SHAPE"]),
        ("new_len = 0", lambda: code(lib.pass2, P, P, 0, 2, 8, 4, 0, P, ws, P, P, P), C["ADAPLER_ERR_BAD_NEW_LEN"]),
        ("new_len > S", lambda: code(lib.pass2, P, P, 0, 2, 8, 4, 9, P, ws, P, P, P), C["ADAPLER_ERR_BAD_NEW_LEN"]),
        ("fp16 hidden odd address", lambda: code(lib.pass2, P + 1, P, 1, 2, 8, 4, 1, P, ws, P, P, P), C["ADAPLER_ERR_MISALIGNED"]),
        ("convenience: bad dtype first", lambda: code(lib.compact, None, None, None, None, 9, 2, 8, 4, 0.0, None, 0, None, None, None), C["ADAPLER_ERR_BAD_DTYPE"]),
        ("convenience: eta", lambda: code(lib.compact, P, P, P, P, 0, 2, 8, 4, 2.0, P, ws, P, P, P), C["ADAPLER_ERR_BAD_ETA"]),
        ("convenience: null mask", lambda: code(lib.compact, P, P, None, P, 0, 2, 8, 4, 0.5, P, ws, P, P, P), C["ADAPLER_ERR_NULL_POINTER"]),
        ("read_new_len null ws", lambda: code(lib.read_new_len, None, ws), C["ADAPLER_ERR_NULL_POINTER"]),
    ]
    for name, fn, want in cases:
        got = fn()
        checks.check(got == want, f"validation {name}: got {got}, want {want}")
    if not device:
        # Valid arguments reach CUDA: without a driver/GPU that is ADAPLER_ERR_CUDA, never a crash.
        got = code(lib.pass1, P, P, 2, 8, 0.5, P, ws)
        checks.check(got == C["ADAPLER_ERR_CUDA"], f"no GPU: valid call reports ADAPLER_ERR_CUDA (got {got})")


def cuda_include_dir() -> Path:
    """The CUDA toolkit's include folder (nvcc may be a wrapper script, so ask nvcc itself)."""
    nvcc = shutil.which("nvcc")
    if nvcc:
        r = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                           capture_output=True, text=True)
        m = re.search(r'INCLUDES="-I([^"]+)"', r.stdout + r.stderr)
        if m and (Path(m.group(1)) / "cuda_runtime.h").is_file():
            return Path(m.group(1))
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").is_file():
            return Path(cand) / "include"
    raise RuntimeError("CUDA headers (cuda_runtime.h) not found: install the CUDA toolkit or set CUDA_HOME")


def build_host_emulation(build_dir: Path) -> Path:
    """Compile tokenCompactKernel.cu as host C++ against tools/host_emu (a CPU emulation of CUDA
    blocks, warps and barriers) into a library with the same C API. Needs g++ and the CUDA headers."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    src = REPO / "plugins" / "token_compact"
    emu = src / "tools" / "host_emu"
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / "libadapler_token_compact_emu.so"
    cmd = [cxx, "-std=c++17", "-O2", "-g", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wno-unknown-pragmas",
           "-DADAPLER_HOST_EMULATION", "-I", str(cuda_include_dir()), "-I", str(emu), "-I", str(src),
           "-include", "cuda_host_emu.h", "-x", "c++", str(src / "tokenCompactKernel.cu"), "-x", "none",
           str(emu / "cuda_host_emu.cpp"), "-o", str(lib)]
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return lib


class HostTorch:
    """torch with torch.cuda's stream/sync calls answered on the CPU: lets the GPU checks below run on
    host memory against the host-emulated library (or a host model of it, in the tests)."""

    def __init__(self):
        import types

        import torch
        self._t = torch
        self.cuda = types.SimpleNamespace(current_stream=lambda device=None: types.SimpleNamespace(cuda_stream=0),
                                          synchronize=lambda device=None: None, current_device=lambda: 0)

    def __getattr__(self, name):
        return getattr(self._t, name)


# ----------------------------------------------------------------------------------- GPU checks


def compact_with_kernel(hidden, scores, mask, positions, eta, library=None):
    """Hook for the adaptive model's GPU runtime: torch CUDA tensors in, CompactResult (torch CUDA
    tensors, new_len int) out; same contract as adapler_export.link.token_compact_torch. `library`:
    a loaded TokenCompactLibrary, else the usual search (adapler_export.link_cuda)."""
    from adapler_export.link_cuda import token_compact_cuda
    return token_compact_cuda(hidden, scores, mask, positions, eta, library=library)


def _poison(torch, n: int, dtype, device):
    if dtype in (torch.float32, torch.float16):
        return torch.full((n,), float("nan"), dtype=dtype, device=device)
    return torch.full((n,), 0x7F7F7F7F, dtype=torch.int32, device=device)


def _poison_intact(torch, t, start: int) -> bool:
    tail = t[start:]
    if tail.numel() == 0:
        return True
    if tail.dtype in (torch.float32, torch.float16):
        return bool(torch.isnan(tail).all())
    return bool((tail == 0x7F7F7F7F).all())


def run_flavours(torch, lib, args_np, eta, device, misalign: bool = False):
    """Run the three API flavours on fresh poisoned buffers; yields (flavour, result, extra_ok, why)."""
    from adapler_export.link_cuda import DTYPE_FLOAT16, DTYPE_FLOAT32

    hidden_np, scores_np, mask_np, pos_np = args_np
    b, s, h = hidden_np.shape
    upper = max(s, 1)
    tdt = torch.float16 if hidden_np.dtype == np.float16 else torch.float32
    dcode = DTYPE_FLOAT16 if tdt == torch.float16 else DTYPE_FLOAT32
    off = 1 if misalign else 0  # one element off: exercises the narrow-vector / misaligned paths

    def dev(a, dtype):
        flat = torch.empty(a.size + off, dtype=dtype, device=device)
        t = flat[off:]
        t.copy_(torch.from_numpy(np.ascontiguousarray(a).reshape(-1)))
        return t.view(a.shape) if a.size else t.view(a.shape)

    hidden = dev(hidden_np, tdt)
    scores = dev(scores_np, torch.float32)
    mask = dev(mask_np, torch.int32)
    pos = dev(pos_np, torch.int32)
    ws_bytes = lib.workspace_size(b, s)
    stream = int(torch.cuda.current_stream(device).cuda_stream)
    for flavour in ("convenience", "device_size", "host_size"):
        out_h = _poison(torch, b * upper * h + off + 64, tdt, device)[off:]
        out_m = _poison(torch, b * upper + 64, torch.int32, device)
        out_p = _poison(torch, b * upper + 64, torch.int32, device)
        ws = torch.full((ws_bytes,), 0x7F, dtype=torch.uint8, device=device)
        size64 = torch.full((1,), -7, dtype=torch.int64, device=device)
        ptr = lambda t: int(t.data_ptr())  # noqa: E731
        if flavour == "convenience":
            n = lib.compact(ptr(hidden), ptr(scores), ptr(mask), ptr(pos), dcode, b, s, h, eta, ptr(ws), ws_bytes,
                            ptr(out_h), ptr(out_m), ptr(out_p), stream)
            extra_ok, why = True, ""
        elif flavour == "device_size":  # what the TensorRT plugin's enqueue does
            lib.pass1(ptr(scores), ptr(mask), b, s, eta, ptr(ws), ws_bytes, stream)
            lib.pass2_device(ptr(hidden), ptr(pos), dcode, b, s, h, ptr(ws), ws_bytes, ptr(out_h), ptr(out_m),
                             ptr(out_p), ptr(size64), None, stream)
            torch.cuda.synchronize(device)
            n = int(size64.item())
            extra_ok, why = True, ""
        else:  # host S' between the passes
            lib.pass1(ptr(scores), ptr(mask), b, s, eta, ptr(ws), ws_bytes, stream)
            n = lib.read_new_len(ptr(ws), ws_bytes, stream)
            lib.pass2(ptr(hidden), ptr(pos), dcode, b, s, h, n, ptr(ws), ws_bytes, ptr(out_h), ptr(out_m),
                      ptr(out_p), stream)
            extra_ok, why = True, ""
        torch.cuda.synchronize(device)
        if not 1 <= n <= upper:
            yield flavour, None, False, f"new_len {n} outside [1, {upper}]"
            continue
        tails_ok = (_poison_intact(torch, out_h, b * n * h) and _poison_intact(torch, out_m, b * n)
                    and _poison_intact(torch, out_p, b * n))
        if not tails_ok:
            extra_ok, why = False, "wrote past the [B,S'] prefix"
        res = (out_h[: b * n * h].view(b, n, h).cpu().numpy(), out_m[: b * n].view(b, n).cpu().numpy(),
               out_p[: b * n].view(b, n).cpu().numpy(), n)
        yield flavour, res, extra_ok, why


def gpu_checks(checks: Checks, torch, lib, rng, quick: bool, device=None, tensor_api: bool = True) -> None:
    """The correctness grid. `device`/`tensor_api` exist for the CPU dry run of this script's own
    plumbing (tests/test_plugin_build.py runs it against a host model of the library)."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device())
    lib.set_device(device.index or 0)
    bs = (1, 3, 8, 32)
    ss = (1, 2, 17, 64, 128, 512)
    hs = (64, 384, 768, 1023)
    if quick:  # still one batch of 32 x 512 (two scan tiles), and the 16- and 2/4-byte gathers
        bs, ss, hs = (1, 3, 32), (1, 17, 512), (64, 1023)
    grid = [(b, s, h, dt) for b in bs for s in ss for h in hs for dt in (np.float32, np.float16)]
    # extras: long rows, empty shapes, the 8-byte gather path (fp16 H=1020), misaligned buffers
    extras = [(2, 1024, 64, np.float16, False), (2, 4096, 64, np.float32, False), (1, 8192, 16, np.float16, False),
              (3, 0, 8, np.float32, False), (0, 5, 8, np.float32, False), (4, 33, 1020, np.float16, False),
              (4, 33, 768, np.float16, True), (4, 33, 1023, np.float32, True)]
    t0 = time.time()
    n_cases = 0
    for i, (b, s, h, dt) in enumerate(grid + [e[:4] for e in extras]):
        misalign = i >= len(grid) and extras[i - len(grid)][4]
        kind = KINDS[i % len(KINDS)]
        eta = float(rng.choice(ETAS))
        args = make_case(rng, b, s, h, dt, kind, eta)
        want = expected(*args, eta)
        for flavour, got, extra_ok, why in run_flavours(torch, lib, args, eta, device, misalign):
            label = f"B={b} S={s} H={h} {np.dtype(dt).name} {kind}{' misaligned' if misalign else ''} [{flavour}]"
            if got is None:
                checks.check(False, f"{label}: {why}")
                continue
            ok, diff = results_equal(got, want)
            checks.check(ok and extra_ok, f"{label}: {diff or why}")
        n_cases += 1
    if tensor_api:  # the high-level tensor API (torch) on mixed cases, through the hook
        for b, s, h, dt in ((8, 128, 768, np.float16), (3, 17, 1023, np.float32), (1, 1, 64, np.float32)):
            args = make_case(rng, b, s, h, dt, "mixed", 0.5)
            r = compact_with_kernel(*(torch.from_numpy(a).to(device) for a in args), 0.5, library=lib)
            got = (r.hidden.cpu().numpy(), r.mask.cpu().numpy(), r.positions.cpu().numpy(), r.new_len)
            ok, why = results_equal(got, expected(*args, 0.5))
            checks.check(ok, f"token_compact_cuda (torch) B={b} S={s} H={h} {np.dtype(dt).name}: {why}")
    print(f"[checks] {n_cases} cases x 3 API flavours in {time.time() - t0:.1f} s")


# ---------------------------------------------------------------------------------------- timing


def timing(torch, lib, rng, quick: bool) -> list[dict]:
    from adapler_export.link import token_compact_torch
    from adapler_export.link_cuda import DTYPE_FLOAT16, DTYPE_FLOAT32

    device = torch.device("cuda", torch.cuda.current_device())
    shapes = [(1, 128, 768, np.float16), (8, 128, 768, np.float16), (32, 128, 768, np.float16),
              (8, 512, 768, np.float16), (32, 512, 768, np.float16), (32, 512, 768, np.float32),
              (32, 512, 1024, np.float16), (64, 384, 768, np.float16)]
    if quick:
        shapes = shapes[:3]
    reps, warm = (20, 5) if quick else (100, 10)
    rows = []
    for b, s, h, dt in shapes:
        eta = 0.5
        args = make_case(rng, b, s, h, dt, "prefix", eta)
        tdt = torch.float16 if dt == np.float16 else torch.float32
        hidden, scores, mask, pos = (torch.from_numpy(a).to(device) for a in args)
        ws_bytes = lib.workspace_size(b, s)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        out_h = torch.empty(b * s * h, dtype=tdt, device=device)
        out_m = torch.empty(b * s, dtype=torch.int32, device=device)
        out_p = torch.empty(b * s, dtype=torch.int32, device=device)
        size64 = torch.empty(1, dtype=torch.int64, device=device)
        stream = int(torch.cuda.current_stream(device).cuda_stream)
        dcode = DTYPE_FLOAT16 if tdt == torch.float16 else DTYPE_FLOAT32
        P = lambda t: int(t.data_ptr())  # noqa: E731

        def kernel_device_only():
            lib.pass1(P(scores), P(mask), b, s, eta, P(ws), ws_bytes, stream)
            lib.pass2_device(P(hidden), P(pos), dcode, b, s, h, P(ws), ws_bytes, P(out_h), P(out_m), P(out_p),
                             P(size64), None, stream)

        def kernel_full():
            return lib.compact(P(hidden), P(scores), P(mask), P(pos), dcode, b, s, h, eta, P(ws), ws_bytes,
                               P(out_h), P(out_m), P(out_p), stream)

        def torch_ref():
            return token_compact_torch(hidden, scores, mask, pos, eta).new_len  # .item() inside: syncs

        def events(fn):
            times = []
            for k in range(warm + reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                if k >= warm:
                    times.append(start.elapsed_time(end))
            return statistics.median(times)

        def wall(fn):
            times = []
            for k in range(warm + reps):
                torch.cuda.synchronize(device)
                t = time.perf_counter()
                fn()
                torch.cuda.synchronize(device)
                if k >= warm:
                    times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)

        new_len = kernel_full()
        row = dict(B=b, S=s, H=h, dtype=np.dtype(dt).name, new_len=new_len,
                   kernel_gpu_ms=events(kernel_device_only), kernel_call_ms=wall(kernel_full),
                   torch_ms=wall(torch_ref))
        row["speedup"] = row["torch_ms"] / row["kernel_call_ms"] if row["kernel_call_ms"] > 0 else math.nan
        rows.append(row)
    print("\n[timing] median of %d runs; kernel_gpu = both passes, device time (CUDA events, no host sync);" % reps)
    print("         kernel_call = full C call incl. the D2H copy of S' and the sync; torch = token_compact_torch on GPU")
    hdr = f"{'B':>4} {'S':>5} {'H':>5} {'dtype':>8} {'S_new':>6} {'kernel_gpu ms':>14} {'kernel_call ms':>15} {'torch ms':>9} {'speedup':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['B']:>4} {r['S']:>5} {r['H']:>5} {r['dtype']:>8} {r['new_len']:>6} {r['kernel_gpu_ms']:>14.4f} "
              f"{r['kernel_call_ms']:>15.4f} {r['torch_ms']:>9.4f} {r['speedup']:>7.1f}x")
    return rows



# ------------------------------------------------------------------------------------------ end to end


def end_to_end(checks: Checks, ckpt: str, link_fn, device, samples: int, label: str) -> list:
    """The adaptive model as PyTorch segments on `device`, chained by the library's one chain and linked by
    `link_fn` (the CUDA kernel on a GPU) — `PyTorchSegmentsBackend` — against the CPU fp32 reference
    (`forward_hard`) on dev sentences, by `parity.compare_backends` with the precision's tolerances (fp32:
    every keep decision kept, |dlogit| <= 1e-3; fp16: bounded like a build)."""
    import copy

    from adapler_export.backends.pytorch import PyTorchBackend, PyTorchSegmentsBackend
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import parity_texts
    from adapler_export.parity import compare_backends

    loaded = load_checkpoint(ckpt)
    texts, pairs = parity_texts(loaded.config.task, None, samples)
    reference = PyTorchBackend(loaded.model)
    rows = []
    for precision in ("fp32", "fp16"):  # a copy on the device: the reference stays on the CPU
        candidate = PyTorchSegmentsBackend(copy.deepcopy(loaded.model), precision, device, link=link_fn)
        report = compare_backends(reference, candidate, loaded.tokenizer, texts, loaded.config.cut, precision,
                                  pairs=pairs)
        line = (f"[e2e {label}] {precision}: {report.examples} dev sentences, max |dlogit| "
                f"{report.max_abs_logit_diff:.3g}, label agreement {report.label_agreement:.4f}, "
                f"flips {report.flips}/{report.decisions}")
        if not report.passed:
            line += ": " + "; ".join(report.failures)
        if checks.check(report.passed, line):
            print(f"  ok   {line}")
        rows.append(report.to_dict())
    return rows

# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--require-gpu", action="store_true", help="exit 2 when the GPU part cannot run")
    ap.add_argument("--build-dir", type=Path, default=REPO / "plugins" / "build" / "gpu_proof")
    ap.add_argument("--library", type=Path, help="use this libadapler_token_compact.so instead of building")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default: fresh)")
    ap.add_argument("--host-emulation", action="store_true",
                    help="also compile the kernel source as host C++ with a CPU emulation of CUDA blocks, warps "
                         "and barriers (tools/host_emu) and run the GPU correctness checks on it; no GPU needed, "
                         "no timing, not a substitute for the GPU run")
    ap.add_argument("--ckpt", default=None,
                    help="checkpoint for the end-to-end check (default: $ADAPLER_HOME/checkpoints/sst2 if present)")
    ap.add_argument("--e2e-samples", type=int, default=256, help="SST-2 dev sentences for the end-to-end check")
    ap.add_argument("--e2e-cpu-wiring", action="store_true",
                    help="without a GPU: run the end-to-end chaining on the CPU with the reference link "
                         "(checks the wiring of this script, not the kernel)")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    print(f"gpu_proof: seed {seed}")
    checks = Checks()
    report: dict = {"seed": seed}

    cpu_checks(checks, rng, a.quick)

    try:
        import torch
    except ImportError:
        torch = None
    has_gpu = torch is not None and torch.cuda.is_available()
    skip_reason = None
    if torch is None:
        skip_reason = "PyTorch is not installed"
    elif not has_gpu:
        skip_reason = f"no CUDA GPU visible to PyTorch {torch.__version__} (torch.cuda.is_available() is False)"

    lib = None
    build_error = None
    try:
        from adapler_export.link_cuda import load_library
        if a.library is not None:
            lib = load_library(a.library)
        else:
            arch = None
            if has_gpu:
                major, minor = torch.cuda.get_device_capability()
                arch = f"{major}{minor}"
            lib = load_library(build_library(a.build_dir, arch))
        print(f"[lib] {lib.path}")
    except Exception as exc:  # no nvcc here, or a build error (reported below)
        build_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, subprocess.CalledProcessError) and exc.stdout:
            build_error += "\n" + exc.stdout[-3000:]
    if lib is not None:
        validation_checks(checks, lib, device=has_gpu)
    elif has_gpu:
        checks.check(False, f"building/loading the kernel library failed: {build_error}")
    else:
        print(f"[lib] not built here ({build_error}); the C API validation checks were skipped")

    if a.host_emulation:
        try:
            emu = load_library(build_host_emulation(a.build_dir))
            print(f"[emu] HOST EMULATION of the kernel source: {emu.path} (CPU, not a GPU run)")
            validation_checks(checks, emu, device=True)  # device=True: never touch the fake pointers
            t0 = time.time()
            gpu_checks(checks, HostTorch(), emu, rng, a.quick, device=torch.device("cpu"), tensor_api=False)
            print(f"[emu] done in {time.time() - t0:.1f} s")
            report["host_emulation"] = True
        except Exception:
            traceback.print_exc()
            checks.check(False, "host emulation raised")

    if has_gpu and lib is not None:
        print(f"[gpu] {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
        try:
            gpu_checks(checks, torch, lib, rng, a.quick)
            report["timing"] = timing(torch, lib, rng, a.quick)
        except Exception:
            traceback.print_exc()
            checks.check(False, "GPU checks raised")
    ckpt = a.ckpt
    if ckpt is None:
        from adapler_export.storage import checkpoints_dir
        ckpt = str(checkpoints_dir() / "sst2") if (checkpoints_dir() / "sst2").is_dir() else None
    if ckpt is not None and has_gpu and lib is not None:
        from adapler_export.link_cuda import token_compact_cuda
        try:
            report["end_to_end"] = end_to_end(
                checks, ckpt, lambda *x: token_compact_cuda(*x, library=lib), torch.device("cuda"),
                a.e2e_samples, "GPU, CUDA link")
        except Exception:
            traceback.print_exc()
            checks.check(False, "end-to-end GPU check raised")
    elif ckpt is not None and a.e2e_cpu_wiring:
        from adapler_export.link import token_compact_torch
        report["end_to_end_cpu_wiring"] = end_to_end(checks, ckpt, token_compact_torch, torch.device("cpu"),
                                                     a.e2e_samples, "CPU wiring, reference link")
    elif ckpt is None:
        print("[e2e] no checkpoint (pass --ckpt): the end-to-end check was skipped")
    report.update(passed=checks.passed, failed=checks.failed, gpu_skipped=skip_reason)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))

    print(f"\n{checks.passed} passed, {len(checks.failed)} failed")
    if skip_reason:
        print(f"GPU part SKIPPED: {skip_reason}. Run `{PROOF_COMMAND}` on a machine with an NVIDIA GPU, "
              f"a CUDA build of PyTorch and nvcc.")
    if checks.failed:
        return 1
    if skip_reason and a.require_gpu:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
