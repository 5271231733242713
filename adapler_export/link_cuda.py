"""The `TokenCompact` link on the GPU: ctypes binding of ``libadapler_token_compact.so``.

The CUDA kernels live in ``plugins/token_compact`` (``tokenCompactKernel.cu``, C API in
``tokenCompact.h``); the same code runs inside the TensorRT plugin. This module calls it on device
memory owned by PyTorch (CUDA tensors) or CuPy (arrays), for the per-segment TensorRT runtime that
needs S' on the host between two engines.

:func:`token_compact_cuda` has the signature and the semantics of the reference
:func:`adapler_export.link.token_compact_numpy` / ``token_compact_torch``: same rule, same
``CompactResult(hidden [B,S',H], mask [B,S'] int32, positions [B,S'] int32, new_len)``, with the
arrays on the GPU in the caller's framework. It queues both kernels on the caller's current stream
and synchronises once, after a single device-to-host copy of S'.

Library search order (first hit wins):
  1. ``$ADAPLER_PLUGIN_DIR`` (a folder holding the library, or the library file itself);
  2. ``<artifact_dir>/plugins/`` when an artifact directory is given;
  3. the CMake build folders of this checkout: ``plugins/build/lib`` (``cmake -S plugins -B plugins/build``),
     ``plugins/token_compact/build/lib`` and ``build/token_compact/lib``.
In each folder ``libadapler_token_compact.so`` is preferred; ``libadapler_plugins.so`` (the TensorRT
plugin library, which exports the same C API) is the fallback, usable only where libnvinfer loads.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

from .link import CompactResult, check_eta

ENV_PLUGIN_DIR = "ADAPLER_PLUGIN_DIR"
KERNEL_LIBRARY = "libadapler_token_compact.so"
PLUGIN_LIBRARY = "libadapler_plugins.so"
BUILD_COMMAND = "cmake -S plugins -B plugins/build && cmake --build plugins/build -j"
GPU_PROOF_COMMAND = "python plugins/token_compact/tools/gpu_proof.py"

#: the C API version this binding is written for (ADAPLER_TC_API_VERSION)
API_VERSION = 1

# Values of the C enums (tokenCompact.h); part of the library's ABI.
DTYPE_FLOAT32 = 0
DTYPE_FLOAT16 = 1
STATUS_NAMES = {
    0: "ADAPLER_SUCCESS",
    1: "ADAPLER_ERR_NULL_POINTER",
    2: "ADAPLER_ERR_BAD_DTYPE",
    3: "ADAPLER_ERR_BAD_ETA",
    4: "ADAPLER_ERR_SEQ_TOO_LONG",
    5: "ADAPLER_ERR_BAD_SHAPE",
    6: "ADAPLER_ERR_WORKSPACE_TOO_SMALL",
    7: "ADAPLER_ERR_BAD_NEW_LEN",
    8: "ADAPLER_ERR_MISALIGNED",
    9: "ADAPLER_ERR_CUDA",
}
STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}

_REPO_ROOT = Path(__file__).resolve().parent.parent


class CudaLinkUnavailable(RuntimeError):
    """The CUDA link cannot run here: the library is not built/found, or there is no CUDA GPU."""


class CudaLinkError(RuntimeError):
    """The C API returned an error status."""

    def __init__(self, status: int, message: str, cuda_error: int = 0):
        self.status = status
        self.name = STATUS_NAMES.get(status, f"status {status}")
        self.cuda_error = cuda_error
        super().__init__(message)


# ------------------------------------------------------------------------------------ loading


def candidate_paths(artifact_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every path :func:`find_library` looks at, in order."""
    folders: list[Path] = []
    env = os.environ.get(ENV_PLUGIN_DIR)
    out: list[Path] = []
    if env:
        p = Path(env)
        if p.suffix == ".so" or p.is_file():
            out.append(p)
        else:
            folders.append(p)
    if artifact_dir is not None:
        folders.append(Path(artifact_dir) / "plugins")
    folders += [_REPO_ROOT / "plugins" / "build" / "lib",
                _REPO_ROOT / "plugins" / "token_compact" / "build" / "lib",
                _REPO_ROOT / "build" / "token_compact" / "lib"]
    for folder in folders:
        out += [folder / KERNEL_LIBRARY, folder / PLUGIN_LIBRARY]
    return out


def find_library(artifact_dir: str | os.PathLike | None = None) -> Path:
    """Path of the first library in the search order that exists; raises CudaLinkUnavailable."""
    tried = candidate_paths(artifact_dir)
    for p in tried:
        if p.is_file():
            return p
    raise CudaLinkUnavailable(
        "the TokenCompact CUDA library was not found; looked at:\n  " + "\n  ".join(map(str, tried))
        + f"\nbuild it with `{BUILD_COMMAND}` (needs nvcc), or set {ENV_PLUGIN_DIR} to its folder")


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_i32, c_i64, c_sz, c_f, vp = (ctypes.c_int, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t,
                                          ctypes.c_float, ctypes.c_void_p)
    sigs = {
        "adaplerGetErrorString": (ctypes.c_char_p, [c_int]),
        "adaplerGetLastCudaError": (c_int, []),
        "adaplerTokenCompactApiVersion": (c_int, []),
        "adaplerTokenCompactMaxSeqLen": (c_int, []),
        "adaplerSetDevice": (c_int, [c_int]),
        "adaplerTokenCompactWorkspaceSize": (c_sz, [c_i64, c_i64]),
        # scores, mask, B, S, eta, workspace, wsBytes, stream
        "adaplerTokenCompactPass1": (c_int, [vp, vp, c_i64, c_i64, c_f, vp, c_sz, vp]),
        # hidden, positions, dtype, B, S, H, workspace, wsBytes, hiddenOut, maskOut, posOut, n64, n32, stream
        "adaplerTokenCompactPass2Device": (c_int, [vp, vp, c_int, c_i64, c_i64, c_i64, vp, c_sz, vp, vp, vp,
                                                   vp, vp, vp]),
        # hidden, positions, dtype, B, S, H, newLen, workspace, wsBytes, hiddenOut, maskOut, posOut, stream
        "adaplerTokenCompactPass2": (c_int, [vp, vp, c_int, c_i64, c_i64, c_i64, c_i32, vp, c_sz, vp, vp, vp,
                                             vp]),
        # workspace, wsBytes, int32* host, stream
        "adaplerTokenCompactReadNewLen": (c_int, [vp, c_sz, ctypes.POINTER(c_i32), vp]),
        # hidden, scores, mask, positions, dtype, B, S, H, eta, workspace, wsBytes, hiddenOut, maskOut,
        # posOut, int32* newLenHost, stream
        "adaplerTokenCompact": (c_int, [vp, vp, vp, vp, c_int, c_i64, c_i64, c_i64, c_f, vp, c_sz, vp, vp, vp,
                                        ctypes.POINTER(c_i32), vp]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)  # AttributeError here means a library of another API version
        fn.restype, fn.argtypes = res, args


class TokenCompactLibrary:
    """Thin typed wrapper of the C API (raw device pointers as ints; streams as ints, 0 = default).

    Every method raises :class:`CudaLinkError` on a non-zero status. Use :func:`token_compact_cuda`
    for tensors; this class is for callers that manage their own buffers (and for the tests).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._lib = ctypes.CDLL(str(self.path))
            _declare(self._lib)
        except (OSError, AttributeError) as exc:
            raise CudaLinkUnavailable(f"cannot load {self.path}: {exc}") from exc
        version = self._lib.adaplerTokenCompactApiVersion()
        if version != API_VERSION:
            raise CudaLinkUnavailable(f"{self.path} implements C API version {version}, this binding "
                                      f"needs {API_VERSION}: rebuild it (`{BUILD_COMMAND}`)")
        self.max_seq_len = int(self._lib.adaplerTokenCompactMaxSeqLen())

    # -- helpers
    def error_string(self, status: int) -> str:
        return self._lib.adaplerGetErrorString(int(status)).decode()

    def check(self, status: int, what: str) -> None:
        if status == 0:
            return
        cuda_error = int(self._lib.adaplerGetLastCudaError()) if status == STATUS_CODES["ADAPLER_ERR_CUDA"] else 0
        detail = f" (cudaError_t {cuda_error})" if cuda_error else ""
        raise CudaLinkError(status, f"{what}: {self.error_string(status)}{detail}", cuda_error)

    # -- the C API
    def set_device(self, device: int) -> None:
        self.check(self._lib.adaplerSetDevice(int(device)), "adaplerSetDevice")

    def workspace_size(self, batch: int, seq: int) -> int:
        return int(self._lib.adaplerTokenCompactWorkspaceSize(int(batch), int(seq)))

    def pass1(self, scores: int, mask: int, batch: int, seq: int, eta: float, workspace: int,
              workspace_bytes: int, stream: int = 0) -> None:
        self.check(self._lib.adaplerTokenCompactPass1(scores, mask, batch, seq, eta, workspace, workspace_bytes,
                                                      stream), "adaplerTokenCompactPass1")

    def pass2_device(self, hidden: int, positions: int, dtype: int, batch: int, seq: int, hidden_size: int,
                     workspace: int, workspace_bytes: int, hidden_out: int, mask_out: int, positions_out: int,
                     new_len_out64: int | None = None, new_len_out32: int | None = None, stream: int = 0) -> None:
        self.check(self._lib.adaplerTokenCompactPass2Device(
            hidden, positions, dtype, batch, seq, hidden_size, workspace, workspace_bytes, hidden_out, mask_out,
            positions_out, new_len_out64, new_len_out32, stream), "adaplerTokenCompactPass2Device")

    def pass2(self, hidden: int, positions: int, dtype: int, batch: int, seq: int, hidden_size: int,
              new_len: int, workspace: int, workspace_bytes: int, hidden_out: int, mask_out: int,
              positions_out: int, stream: int = 0) -> None:
        self.check(self._lib.adaplerTokenCompactPass2(
            hidden, positions, dtype, batch, seq, hidden_size, new_len, workspace, workspace_bytes, hidden_out,
            mask_out, positions_out, stream), "adaplerTokenCompactPass2")

    def read_new_len(self, workspace: int, workspace_bytes: int, stream: int = 0) -> int:
        out = ctypes.c_int32(-1)
        self.check(self._lib.adaplerTokenCompactReadNewLen(workspace, workspace_bytes, ctypes.byref(out), stream),
                   "adaplerTokenCompactReadNewLen")
        return int(out.value)

    def compact(self, hidden: int, scores: int, mask: int, positions: int, dtype: int, batch: int, seq: int,
                hidden_size: int, eta: float, workspace: int, workspace_bytes: int, hidden_out: int,
                mask_out: int, positions_out: int, stream: int = 0) -> int:
        """Both passes + one device->host copy of S' + one stream sync; returns S'."""
        out = ctypes.c_int32(-1)
        self.check(self._lib.adaplerTokenCompact(
            hidden, scores, mask, positions, dtype, batch, seq, hidden_size, eta, workspace, workspace_bytes,
            hidden_out, mask_out, positions_out, ctypes.byref(out), stream), "adaplerTokenCompact")
        return int(out.value)


_cache: dict[Path, TokenCompactLibrary] = {}
_cache_lock = threading.Lock()


def load_library(path: str | os.PathLike | None = None,
                 artifact_dir: str | os.PathLike | None = None) -> TokenCompactLibrary:
    """Load (once per process) the library at ``path``, or the first one in the search order."""
    p = Path(path).resolve() if path is not None else find_library(artifact_dir).resolve()
    with _cache_lock:
        if p not in _cache:
            _cache[p] = TokenCompactLibrary(p)
        return _cache[p]


# ------------------------------------------------------------------------- tensor front-end


def _framework(x: Any) -> str:
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    raise TypeError(f"expected a torch CUDA tensor or a cupy array, got {type(x).__name__} "
                    f"(use adapler_export.link.token_compact_numpy for host arrays)")


class _TorchOps:
    def __init__(self):
        import torch
        self.t = torch
        if not torch.cuda.is_available():
            raise CudaLinkUnavailable("no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); "
                                      f"run the GPU checks elsewhere: `{GPU_PROOF_COMMAND}`")

    def prepare(self, x, dtypes: Sequence[Any], name: str, convert_to=None):
        if not x.is_cuda:
            raise ValueError(f"{name} is on {x.device}; token_compact_cuda needs CUDA tensors "
                             f"(token_compact_torch is the CPU implementation)")
        if x.dtype not in dtypes:
            if convert_to is None:
                raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
            x = x.to(convert_to)
        return x.contiguous()

    def device_index(self, x) -> int:
        return x.device.index if x.device.index is not None else self.t.cuda.current_device()

    def stream(self, x) -> int:
        return int(self.t.cuda.current_stream(x.device).cuda_stream)

    def empty(self, n: int, dtype, like):
        return self.t.empty(n, dtype=dtype, device=like.device)

    @staticmethod
    def ptr(x) -> int:
        return int(x.data_ptr())


class _CupyOps:
    def __init__(self):
        import cupy
        self.cp = cupy
        try:
            ok = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception as exc:  # cupy raises CUDARuntimeError without a driver/GPU
            raise CudaLinkUnavailable(f"no CUDA GPU visible to CuPy: {exc}") from exc
        if not ok:
            raise CudaLinkUnavailable("no CUDA GPU visible to CuPy")

    def prepare(self, x, dtypes, name: str, convert_to=None):
        cp = self.cp
        if x.dtype not in [cp.dtype(d) for d in dtypes]:
            if convert_to is None:
                raise TypeError(f"{name} must be one of {list(dtypes)}, got {x.dtype}")
            x = x.astype(convert_to)
        return cp.ascontiguousarray(x)

    @staticmethod
    def device_index(x) -> int:
        return int(x.device.id)

    def stream(self, x) -> int:
        return int(self.cp.cuda.get_current_stream().ptr)

    def empty(self, n: int, dtype, like):
        with like.device:
            return self.cp.empty(n, dtype=dtype)

    @staticmethod
    def ptr(x) -> int:
        return int(x.data.ptr)


def token_compact_cuda(hidden, scores, mask, positions, eta, *, library: TokenCompactLibrary | None = None,
                       out: Iterable[Any] | None = None) -> CompactResult:
    """`TokenCompact` on the GPU, same contract as :func:`adapler_export.link.token_compact_torch`.

    hidden [B,S,H] fp32|fp16, scores [B,S] (fp32; other float types are converted), mask and positions
    [B,S] (int32; other integer types are converted), all on one CUDA device, as torch tensors or cupy
    arrays. Returns ``CompactResult`` whose arrays are views of freshly allocated buffers (or of
    ``out``: three flat buffers of at least B*max(S,1)*H, B*max(S,1), B*max(S,1) elements with
    hidden's dtype / int32 / int32, reused across calls by a runtime that wants no allocation).
    Runs on the framework's current stream and returns after one device->host copy of S'.
    """
    eta = check_eta(eta)
    fw = _framework(hidden)
    ops = _TorchOps() if fw == "torch" else _CupyOps()
    lib = library if library is not None else load_library()

    if fw == "torch":
        t = ops.t
        hidden = ops.prepare(hidden, (t.float32, t.float16), "hidden")
        scores = ops.prepare(scores, (t.float32,), "scores", convert_to=t.float32)
        mask = ops.prepare(mask, (t.int32,), "mask", convert_to=t.int32)
        positions = ops.prepare(positions, (t.int32,), "positions", convert_to=t.int32)
        dtype_code = DTYPE_FLOAT32 if hidden.dtype == t.float32 else DTYPE_FLOAT16
        i32, u8 = t.int32, t.uint8
    else:
        cp = ops.cp
        hidden = ops.prepare(hidden, ("float32", "float16"), "hidden")
        scores = ops.prepare(scores, ("float32",), "scores", convert_to="float32")
        mask = ops.prepare(mask, ("int32",), "mask", convert_to="int32")
        positions = ops.prepare(positions, ("int32",), "positions", convert_to="int32")
        dtype_code = DTYPE_FLOAT32 if hidden.dtype == cp.float32 else DTYPE_FLOAT16
        i32, u8 = cp.int32, cp.uint8

    if hidden.ndim != 3 or tuple(scores.shape) != tuple(hidden.shape[:2]) \
            or tuple(mask.shape) != tuple(scores.shape) or tuple(positions.shape) != tuple(scores.shape):
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, scores {tuple(scores.shape)}, "
                         f"mask {tuple(mask.shape)}, positions {tuple(positions.shape)}")
    dev = ops.device_index(hidden)
    for name, x in (("scores", scores), ("mask", mask), ("positions", positions)):
        if ops.device_index(x) != dev:
            raise ValueError(f"{name} is on GPU {ops.device_index(x)}, hidden on GPU {dev}")
    b, s, h = (int(d) for d in hidden.shape)
    if s > lib.max_seq_len:
        raise ValueError(f"sequence length {s} exceeds the kernel's limit {lib.max_seq_len}")
    upper = max(s, 1)

    if out is not None:
        hidden_buf, mask_buf, pos_buf = out
        if hidden_buf.dtype != hidden.dtype or mask_buf.dtype != i32 or pos_buf.dtype != i32:
            raise TypeError("out buffers must have hidden's dtype, int32, int32")
        sizes = [(x.size if fw == "cupy" else x.numel()) for x in (hidden_buf, mask_buf, pos_buf)]
        if sizes[0] < b * upper * h or sizes[1] < b * upper or sizes[2] < b * upper:
            raise ValueError(f"out buffers too small for [B={b}, S={s}, H={h}]")
    else:
        hidden_buf = ops.empty(b * upper * h, hidden.dtype, hidden)
        mask_buf = ops.empty(b * upper, i32, hidden)
        pos_buf = ops.empty(b * upper, i32, hidden)
    ws_bytes = lib.workspace_size(b, s)
    workspace = ops.empty(ws_bytes, u8, hidden)

    lib.set_device(dev)
    new_len = lib.compact(ops.ptr(hidden), ops.ptr(scores), ops.ptr(mask), ops.ptr(positions), dtype_code, b, s,
                          h, eta, ops.ptr(workspace), ws_bytes, ops.ptr(hidden_buf), ops.ptr(mask_buf),
                          ops.ptr(pos_buf), ops.stream(hidden))
    # The result is the dense prefix of each buffer (row stride S').
    out_h = hidden_buf[: b * new_len * h].reshape(b, new_len, h)
    out_m = mask_buf[: b * new_len].reshape(b, new_len)
    out_p = pos_buf[: b * new_len].reshape(b, new_len)
    return CompactResult(out_h, out_m, out_p, new_len)
