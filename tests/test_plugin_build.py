"""Build checks of plugins/ (CUDA kernels, TensorRT plugin) that run on a CPU-only machine, and the
GPU/TensorRT checks that run where those exist (skipped elsewhere, naming the command to run there).

Runs here:
  * nvcc compiles every .cu under plugins/ for sm_80 and sm_90 (warnings are errors);
  * the CMake configure + build of the kernel library (libadapler_token_compact.so), which prints
    that the TensorRT plugin is skipped when TensorRT is absent;
  * the library's C API argument validation through ctypes (host code: no GPU needed), and that a
    valid call without a GPU reports ADAPLER_ERR_CUDA instead of crashing;
  * adapler_export.link_cuda: library search order, clear errors without library or GPU;
  * the TensorRT plugin source against our stand-in of TensorRT 11's plugin API (tests/trt_api_stub,
    -Werror), and against real TensorRT headers where $ADAPLER_TRT_INCLUDE_DIRS names some;
  * plugins/token_compact/tools/gpu_proof.py: its CPU checks, and a dry run of its GPU checking code
    against a host model of the library (plus broken models, to show the checks can fail);
  * the real kernel source compiled as host C++ with a CPU emulation of CUDA blocks, warps and
    barriers (plugins/token_compact/tools/host_emu), through gpu_proof's correctness grid;
  * the plugin library (plugin source against the stand-in + the kernels under host emulation) loaded
    and driven by tests/trt_api_stub/plugin_harness.cpp, which plays TensorRT's side: dlopen and
    loadLibrary registration, fields, types, formats, shapes and size-tensor rules, workspace,
    serialization, and enqueue() bit for bit against the rule -- and deliberately broken plugins
    that it must catch.
Runs only on a GPU / TensorRT machine: the real GPU proof, the plugin build against TensorRT.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
TOKEN_COMPACT = PLUGINS / "token_compact"
GPU_PROOF = TOKEN_COMPACT / "tools" / "gpu_proof.py"
STUB_DIR = Path(__file__).resolve().parent / "trt_api_stub"
SKIP_MSG = "TensorRT not found: skipping the plugin; the kernel library is still built"
NICE = ["nice", "-n", "10"] if shutil.which("nice") else []


def _nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    return None


def _cuda_include(nvcc: str) -> Path:
    """The toolkit's include folder, as nvcc itself reports it (nvcc may be a wrapper script)."""
    r = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True,
                       text=True)
    m = re.search(r'INCLUDES="-I([^"]+)"', r.stdout + r.stderr)
    if m and (Path(m.group(1)) / "cuda_runtime_api.h").is_file():
        return Path(m.group(1))
    for cand in (Path(os.path.realpath(nvcc)).parent.parent / "include",
                 Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"):
        if (cand / "cuda_runtime_api.h").is_file():
            return cand
    pytest.skip("cuda_runtime_api.h not found next to nvcc")


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: install the CUDA toolkit to compile plugins/")


def _has_cuda_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _tensorrt_root() -> Path | None:
    """A TensorRT with C++ headers: $TensorRT_ROOT, or the system locations of NVIDIA's packages."""
    cands = [os.environ.get("TensorRT_ROOT"), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"]
    for c in cands:
        if not c:
            continue
        root = Path(c)
        for inc in (root / "include", root / "include" / "x86_64-linux-gnu", root / "include" / "aarch64-linux-gnu"):
            if (inc / "NvInferRuntime.h").is_file() and (inc / "NvInferVersion.h").is_file():
                return root
    return None


def _load_gpu_proof():
    spec = importlib.util.spec_from_file_location("adapler_gpu_proof", GPU_PROOF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------- nvcc


@needs_nvcc
@pytest.mark.parametrize("cu", sorted(PLUGINS.rglob("*.cu")), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_nvcc_compiles_for_sm80_and_sm90(cu, tmp_path):
    obj = tmp_path / (cu.stem + ".o")
    cmd = NICE + [NVCC, "-c", "-std=c++17", "-O3", "-Werror", "all-warnings", "-Xcompiler=-Wall,-Wextra,-fPIC",
                  "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                  "-I", str(cu.parent), str(cu), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert obj.stat().st_size > 0
    # both SASS targets are embedded (cuobjdump ships with full toolkits only)
    cuobjdump = shutil.which("cuobjdump") or str(Path(NVCC).parent / "cuobjdump")
    if os.path.isfile(cuobjdump):
        elfs = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True).stdout
        assert "sm_80" in elfs and "sm_90" in elfs, elfs


def test_every_plugin_has_a_cu_file():
    # the parametrized test above would silently test nothing if the sources moved
    assert (TOKEN_COMPACT / "tokenCompactKernel.cu").is_file()


# -------------------------------------------------------------------------------------- cmake


@pytest.fixture(scope="session")
def kernel_build(tmp_path_factory):
    """CMake configure + build of plugins/ (kernel library always; plugin only with TensorRT)."""
    if NVCC is None:
        pytest.skip("nvcc not found: install the CUDA toolkit to build plugins/")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = tmp_path_factory.mktemp("plugins_build")
    env = dict(os.environ, CUDACXX=NVCC)
    cfg = subprocess.run(NICE + ["cmake", "-S", str(PLUGINS), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(NICE + ["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    return types.SimpleNamespace(dir=build, lib=build / "lib" / "libadapler_token_compact.so",
                                 configure_log=cfg.stdout + cfg.stderr)


def test_cmake_builds_kernel_library(kernel_build):
    assert kernel_build.lib.is_file()
    # the C API is exported, nothing else of ours
    lib = ctypes.CDLL(str(kernel_build.lib))
    for sym in ("adaplerGetErrorString", "adaplerTokenCompactWorkspaceSize", "adaplerTokenCompactPass1",
                "adaplerTokenCompactPass2Device", "adaplerTokenCompactPass2", "adaplerTokenCompactReadNewLen",
                "adaplerTokenCompact", "adaplerSetDevice", "adaplerGetLastCudaError"):
        assert hasattr(lib, sym), sym
    if shutil.which("nm"):
        syms = subprocess.run(["nm", "-D", "--defined-only", str(kernel_build.lib)], capture_output=True,
                              text=True).stdout
        ours = {line.split()[-1] for line in syms.splitlines() if line.split()[-1].startswith("adapler")}
        assert ours and all(s.startswith("adapler") for s in ours)
        assert not re.search(r"\bT _ZN\S*tokenCompact", syms), "kernel internals leaked into the dynamic symbols"


def test_cmake_reports_skipped_plugin_without_tensorrt(kernel_build):
    if _tensorrt_root() is not None:
        assert "TensorRT found" in kernel_build.configure_log or "TensorRT headers found" in kernel_build.configure_log
    else:
        assert SKIP_MSG in kernel_build.configure_log, kernel_build.configure_log
        assert not (kernel_build.dir / "lib" / "libadapler_plugins.so").exists()


def test_c_api_validation(kernel_build):
    """Each bad argument gets its own status code, before any CUDA call (so it holds without a GPU)."""
    from adapler_export.link_cuda import TokenCompactLibrary
    gp = _load_gpu_proof()
    checks = gp.Checks()
    gp.validation_checks(checks, TokenCompactLibrary(kernel_build.lib), device=_has_cuda_gpu())
    assert not checks.failed, checks.failed
    assert checks.passed >= 20


def test_error_strings_are_distinct(kernel_build):
    from adapler_export.link_cuda import STATUS_NAMES, TokenCompactLibrary
    lib = TokenCompactLibrary(kernel_build.lib)
    texts = [lib.error_string(c) for c in STATUS_NAMES]
    assert len(set(texts)) == len(texts)
    assert all(t.startswith(STATUS_NAMES[c]) for c, t in zip(STATUS_NAMES, texts))
    assert lib.error_string(12345) == "unknown adapler status code"


# -------------------------------------------------------------------------------- link_cuda


def test_link_cuda_search_order(kernel_build, tmp_path, monkeypatch):
    import adapler_export.link_cuda as lc
    env_dir, art = tmp_path / "env", tmp_path / "artifact"
    (art / "plugins").mkdir(parents=True)
    env_dir.mkdir()
    shutil.copy(kernel_build.lib, art / "plugins" / lc.KERNEL_LIBRARY)
    monkeypatch.delenv(lc.ENV_PLUGIN_DIR, raising=False)
    assert lc.find_library(art) == art / "plugins" / lc.KERNEL_LIBRARY
    shutil.copy(kernel_build.lib, env_dir / lc.KERNEL_LIBRARY)
    monkeypatch.setenv(lc.ENV_PLUGIN_DIR, str(env_dir))
    assert lc.find_library(art) == env_dir / lc.KERNEL_LIBRARY  # the environment wins
    monkeypatch.setenv(lc.ENV_PLUGIN_DIR, str(env_dir / lc.KERNEL_LIBRARY))  # a file works too
    assert lc.find_library(None) == env_dir / lc.KERNEL_LIBRARY
    # the plugin library is the fallback within a folder
    (env_dir / lc.KERNEL_LIBRARY).unlink()
    shutil.copy(kernel_build.lib, env_dir / lc.PLUGIN_LIBRARY)
    monkeypatch.setenv(lc.ENV_PLUGIN_DIR, str(env_dir))
    assert lc.find_library(None) == env_dir / lc.PLUGIN_LIBRARY
    lib = lc.load_library(env_dir / lc.PLUGIN_LIBRARY)
    assert lib.max_seq_len == 8192 and lib.workspace_size(4, 16) > 0


def test_link_cuda_missing_library_is_a_clear_error(tmp_path, monkeypatch):
    import adapler_export.link_cuda as lc
    monkeypatch.setenv(lc.ENV_PLUGIN_DIR, str(tmp_path / "nowhere"))
    monkeypatch.setattr(lc, "_REPO_ROOT", tmp_path)  # hide this checkout's build folders
    with pytest.raises(lc.CudaLinkUnavailable, match="cmake -S plugins -B plugins/build"):
        lc.find_library(tmp_path / "artifact")
    with pytest.raises(lc.CudaLinkUnavailable, match="cannot load"):
        lc.TokenCompactLibrary(tmp_path / "nope.so")


@pytest.mark.skipif(_has_cuda_gpu(), reason="a CUDA GPU is present: the GPU path runs in test_gpu_proof_on_gpu")
def test_link_cuda_without_gpu_is_a_clear_error(kernel_build):
    import torch
    from adapler_export.link_cuda import CudaLinkUnavailable, load_library, token_compact_cuda
    lib = load_library(kernel_build.lib)
    args = (torch.zeros(1, 2, 4), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.int32),
            torch.arange(2, dtype=torch.int32)[None])
    with pytest.raises(CudaLinkUnavailable, match="gpu_proof.py"):
        token_compact_cuda(*args, 0.5, library=lib)
    with pytest.raises(ValueError, match="eta"):
        token_compact_cuda(*args, 1.5, library=lib)  # eta lies in [0, 1]
    with pytest.raises(TypeError, match="torch CUDA tensor or a cupy array"):
        token_compact_cuda(*(a.numpy() for a in args), 0.5, library=lib)


# ------------------------------------------------------------------------------ TensorRT plugin

CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(NVCC is None or CXX is None, reason="needs nvcc (for the CUDA headers) and g++")
WARNINGS = ["-Wall", "-Wextra", "-Werror"]  # every source builds clean with all warnings as errors


@needs_cxx
@pytest.mark.parametrize("defines", [[], ["-DADAPLER_REGISTER_EMPTY_NAMESPACE"], ["-DADAPLER_SIZE_TENSOR_INT32"]],
                         ids=["default", "empty-namespace", "int32-size-tensor"])
def test_plugin_source_against_api_stub(defines):
    """The plugin compiles against our stand-in of TensorRT 11's plugin API, overrides and all."""
    cmd = NICE + [CXX, "-std=c++17", "-fsyntax-only", "-Wpedantic", *WARNINGS, *defines, "-I", str(STUB_DIR),
                  "-I", str(TOKEN_COMPACT), "-isystem", str(_cuda_include(NVCC)),
                  str(TOKEN_COMPACT / "tokenCompactPlugin.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


_TRT_INCLUDE_DIRS = [Path(d) for d in os.environ.get("ADAPLER_TRT_INCLUDE_DIRS", "").split(os.pathsep) if d]


@needs_cxx
@pytest.mark.skipif(not _TRT_INCLUDE_DIRS, reason="set ADAPLER_TRT_INCLUDE_DIRS to TensorRT include folders "
                    "(os.pathsep-separated, e.g. the include/ of NVIDIA/TensorRT release tags) to compile against them")
@pytest.mark.parametrize("include_dir", _TRT_INCLUDE_DIRS, ids=str)
def test_plugin_source_against_tensorrt_headers(include_dir):
    """The plugin against NVIDIA's real headers (as SYSTEM includes, like the CMake build), -Werror."""
    assert (include_dir / "NvInferRuntime.h").is_file(), include_dir
    cmd = NICE + [CXX, "-std=c++17", "-fsyntax-only", "-Wpedantic", *WARNINGS, "-isystem", str(include_dir),
                  "-isystem", str(_cuda_include(NVCC)), "-I", str(TOKEN_COMPACT),
                  str(TOKEN_COMPACT / "tokenCompactPlugin.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plugin_builds_against_tensorrt(tmp_path):
    root = _tensorrt_root()
    if root is None or NVCC is None:
        pytest.skip("TensorRT C++ headers/libraries are not installed here (no PyPI or Debian package ships "
                    "NvInferRuntime.h); on a TensorRT machine run: cmake -S plugins -B plugins/build "
                    "-DTensorRT_ROOT=/path/to/TensorRT && cmake --build plugins/build -j")
    env = dict(os.environ, CUDACXX=NVCC)
    cfg = subprocess.run(NICE + ["cmake", "-S", str(PLUGINS), "-B", str(tmp_path), f"-DTensorRT_ROOT={root}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(NICE + ["cmake", "--build", str(tmp_path), "-j", "2"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    assert "TensorRT found" in cfg.stdout, cfg.stdout  # TensorRT_ROOT was given: no silent CUDA-only build
    assert (tmp_path / "lib" / "libadapler_plugins.so").is_file()


# ------------------------------------------------------------------------------------ gpu_proof


def test_gpu_proof_cpu_part(kernel_build):
    r = subprocess.run([sys.executable, str(GPU_PROOF), "--quick", "--library", str(kernel_build.lib)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M), r.stdout
    if not _has_cuda_gpu():
        assert "GPU part SKIPPED: no CUDA GPU" in r.stdout


class _HostModelLibrary:
    """A host (numpy) model of libadapler_token_compact's C API, working on the memory behind CPU
    torch tensors through their addresses and keeping its state in the workspace like the real one.
    It lets the GPU-checking code of gpu_proof.py run on a CPU; `bug` makes it deliberately wrong."""

    max_seq_len = 8192

    def __init__(self, bug: str | None = None):
        self.bug = bug

    @staticmethod
    def _align(x):
        return (x + 255) // 256 * 256

    def workspace_size(self, b, s):
        return 256 + self._align(4 * b) + self._align(4 * b * s)

    def set_device(self, device):
        pass

    @staticmethod
    def _arr(ptr, n, dtype):
        dtype = np.dtype(dtype)
        if n == 0:
            return np.zeros(0, dtype)
        return np.ctypeslib.as_array((ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)).view(dtype)

    def _ws(self, ws, b, s):
        return (self._arr(ws, 1, np.int32), self._arr(ws + 256, b, np.int32),
                self._arr(ws + 256 + self._align(4 * b), b * s, np.int32))

    def pass1(self, scores, mask, b, s, eta, ws, ws_bytes, stream=0):
        sc, mk = self._arr(scores, b * s, np.float32).reshape(b, s), self._arr(mask, b * s, np.int32).reshape(b, s)
        new_len, counts, idx = self._ws(ws, b, s)
        top = 1
        for r in range(b):
            n = int((mk[r] == 1).sum())
            with np.errstate(divide="ignore", invalid="ignore"):  # a dead row: inf, or nan for eta 0
                delta = np.float32(np.float32(eta) / np.float32(n))
            kept = [i for i in range(s) if mk[r, i] == 1 and (i == 0 or sc[r, i] >= delta)]
            counts[r] = len(kept)
            idx[r * s: r * s + len(kept)] = kept
            top = max(top, len(kept))
        new_len[0] = top

    def _pass2(self, hidden, positions, dtype, b, s, h, n, ws, out_h, out_m, out_p):
        dt = np.float16 if dtype == 1 else np.float32
        hid = self._arr(hidden, b * s * h, dt).reshape(b, s, h)
        pos = self._arr(positions, b * s, np.int32).reshape(b, s)
        _, counts, idx = self._ws(ws, b, s)
        # the "stride" bug: rows laid out with the launch's upper bound max(S,1) instead of S'
        stride = max(s, 1) if self.bug == "stride" else n
        oh = self._arr(out_h, b * stride * h, dt).reshape(b, stride, h)
        om, op = self._arr(out_m, b * stride, np.int32).reshape(b, stride), self._arr(out_p, b * stride, np.int32).reshape(b, stride)
        for r in range(b):
            for j in range(n):
                if j < counts[r]:
                    src = idx[r * s + j]
                    oh[r, j], om[r, j], op[r, j] = hid[r, src], 1, pos[r, src]
                else:
                    if self.bug != "no_zero":
                        oh[r, j] = 0
                    om[r, j], op[r, j] = 0, -1

    def pass2_device(self, hidden, positions, dtype, b, s, h, ws, ws_bytes, out_h, out_m, out_p, n64=None,
                     n32=None, stream=0):
        n = int(self._ws(ws, b, s)[0][0])
        if n64:
            self._arr(n64, 1, np.int64)[0] = n
        self._pass2(hidden, positions, dtype, b, s, h, n, ws, out_h, out_m, out_p)

    def pass2(self, hidden, positions, dtype, b, s, h, n, ws, ws_bytes, out_h, out_m, out_p, stream=0):
        self._pass2(hidden, positions, dtype, b, s, h, n, ws, out_h, out_m, out_p)

    def read_new_len(self, ws, ws_bytes, stream=0):
        return int(self._arr(ws, 1, np.int32)[0])

    def compact(self, hidden, scores, mask, positions, dtype, b, s, h, eta, ws, ws_bytes, out_h, out_m, out_p,
                stream=0):
        self.pass1(scores, mask, b, s, eta, ws, ws_bytes)
        self.pass2_device(hidden, positions, dtype, b, s, h, ws, ws_bytes, out_h, out_m, out_p)
        return self.read_new_len(ws, ws_bytes)


@pytest.mark.parametrize("bug", [None, "no_zero", "stride"])
def test_gpu_proof_gpu_checks_dry_run(bug):
    """gpu_proof's GPU-checking code, run on the CPU against a host model of the library: passes for a
    correct model, and catches a missing zero padding and a wrong row stride."""
    import torch
    gp = _load_gpu_proof()
    checks = gp.Checks()
    gp.gpu_checks(checks, gp.HostTorch(), _HostModelLibrary(bug), np.random.default_rng(0), quick=True,
                  device=torch.device("cpu"), tensor_api=False)
    if bug is None:
        assert not checks.failed, checks.failed[:5]
        assert checks.passed > 50
    else:
        assert checks.failed, f"the checks missed the {bug!r} bug"


def test_kernels_under_host_emulation(kernel_build, tmp_path):
    """The real kernel source, compiled as host C++ with a CPU emulation of CUDA blocks, warps and
    barriers (plugins/token_compact/tools/host_emu), through gpu_proof's full correctness grid:
    bit-exact against the reference, poisoned outputs, all three API flavours. In a subprocess, so an
    out-of-bounds write that crashes it fails this test instead of killing pytest."""
    # --quick: B x S x H = {1,3,32} x {1,17,512} x {64,1023}, fp32 and fp16, plus the extras (S up to
    # 8192, empty shapes, misaligned buffers, every gather width); the full grid emulates in ~0.5-1 min
    # on 2 cores: `python plugins/token_compact/tools/gpu_proof.py --host-emulation`.
    r = subprocess.run(NICE + [sys.executable, str(GPU_PROOF), "--host-emulation", "--quick",
                               "--build-dir", str(tmp_path),
                               "--library", str(kernel_build.lib), "--seed", "1234"],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "[emu] HOST EMULATION" in r.stdout and re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M), r.stdout
    n = int(re.search(r"\[checks\] (\d+) cases", r.stdout).group(1))
    assert n >= 3 * 3 * 2 * 2 + 8, r.stdout  # the quick grid and the extras ran


@pytest.mark.skipif(not _has_cuda_gpu() or NVCC is None,
                    reason="needs a CUDA GPU (a CUDA build of PyTorch) and nvcc: run "
                           "`python plugins/token_compact/tools/gpu_proof.py` on a GPU machine")
def test_gpu_proof_on_gpu(tmp_path):
    r = subprocess.run([sys.executable, str(GPU_PROOF), "--quick", "--require-gpu", "--build-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=1800, cwd=REPO)
    print(r.stdout[-5000:])
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]


# ------------------------------------------------- the plugin, driven like TensorRT, on the CPU
#
# libadapler_plugins.so without TensorRT: tokenCompactPlugin.cpp against the stand-in header, linked with
# the kernel source compiled as host C++ under tools/host_emu -- the same objects and link flags as the
# CMake target, with the CUDA kernels emulated. The library leaves TensorRT's functions (getPluginRegistry,
# the IExprBuilder members) undefined, as it does against libnvinfer; the harness executable, linked
# -rdynamic, provides them when it dlopen()s the library.

# The harness's sections (main() of plugin_harness.cpp), each of which must make checks: a section that
# stopped running shows as missing or 0, whatever the total.
HARNESS_SECTIONS = ("loading", "creator", "identity-and-clone", "types", "formats", "shapes", "workspace", "enqueue")


@pytest.fixture(scope="session")
def harness_build(tmp_path_factory):
    """Builds (and caches) the emulated kernel objects, plugin libraries and harness executables."""
    if NVCC is None or CXX is None:
        pytest.skip("needs nvcc (for the CUDA headers) and g++")
    out = tmp_path_factory.mktemp("plugin_harness")
    cuda = ["-isystem", str(_cuda_include(NVCC))]
    emu = TOKEN_COMPACT / "tools" / "host_emu"

    def run(cmd):
        r = subprocess.run(NICE + cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, " ".join(map(str, cmd)) + "\n" + r.stdout + r.stderr

    base = [CXX, "-std=c++17", "-O2", "-g", "-fPIC", *WARNINGS]
    kernel, emu_obj = out / "tokenCompactKernel_emu.o", out / "cuda_host_emu.o"
    # -Wno-unknown-pragmas: the kernel's `#pragma unroll` is nvcc's; g++ would only ignore it
    run(base + ["-c", "-Wno-unknown-pragmas", "-DADAPLER_HOST_EMULATION", "-I", str(emu), "-I", str(TOKEN_COMPACT),
                *cuda, "-include", "cuda_host_emu.h", "-x", "c++", str(TOKEN_COMPACT / "tokenCompactKernel.cu"),
                "-o", str(kernel)])
    run(base + ["-c", "-I", str(emu), *cuda, str(emu / "cuda_host_emu.cpp"), "-o", str(emu_obj)])
    cache: dict = {}

    def plugin(defines: tuple = (), source: Path = TOKEN_COMPACT / "tokenCompactPlugin.cpp", tag: str = "") -> Path:
        """The plugin library, and a copy at another path (the harness loads both)."""
        lib = out / f"lib{tag or 'default'}{'_'.join(defines)}" / "libadapler_plugins.so"
        if lib not in cache:
            lib.parent.mkdir(exist_ok=True)
            run(base + ["-shared", *defines, "-I", str(STUB_DIR), "-I", str(TOKEN_COMPACT), *cuda, str(source),
                        str(kernel), str(emu_obj), "-Wl,-z,nodelete", "-o", str(lib)])
            shutil.copy(lib, lib.parent / "copy_of_libadapler_plugins.so")
            cache[lib] = lib
        return lib

    def harness(defines: tuple = ()) -> Path:
        exe = out / f"plugin_harness{'_'.join(defines)}"
        if exe not in cache:
            run(base + [*defines, "-rdynamic", "-I", str(STUB_DIR), "-I", str(TOKEN_COMPACT), *cuda,
                        str(STUB_DIR / "plugin_harness.cpp"), "-ldl", "-o", str(exe)])
            cache[exe] = exe
        return exe

    return types.SimpleNamespace(plugin=plugin, harness=harness, dir=out)


def _run_harness(exe: Path, lib: Path) -> tuple[int, int, str]:
    """(passed, failed, output); in a subprocess, so a crash fails the test instead of pytest."""
    r = subprocess.run([str(exe), str(lib), str(lib.parent / "copy_of_libadapler_plugins.so")],
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, f"exit {r.returncode}, no summary line\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    passed, failed = int(m.group(1)), int(m.group(2))
    assert (r.returncode == 0) == (failed == 0), r.stdout[-4000:]
    return passed, failed, r.stdout + r.stderr


@pytest.mark.parametrize("defines", [(), ("-DADAPLER_SIZE_TENSOR_INT32", "-DADAPLER_REGISTER_EMPTY_NAMESPACE")],
                         ids=["default", "int32-size-tensor+empty-namespace"])
def test_plugin_harness(harness_build, defines):
    """The plugin library as TensorRT uses it (see tests/trt_api_stub/plugin_harness.cpp): every check passes."""
    passed, failed, out = _run_harness(harness_build.harness(defines), harness_build.plugin(defines))
    print(out[-3000:])
    assert failed == 0, out[-6000:]
    ran = {name: int(n) for name, n in re.findall(r"^\[section\] (\S+) (\d+)$", out, re.M)}
    assert list(ran) == list(HARNESS_SECTIONS) and all(n > 0 for n in ran.values()), ran
    assert passed == sum(ran.values()) + 3, out[-3000:]  # and the three checks before the first section


# Deliberate breakages of the plugin source, each of which the harness must catch: (old, new) replaced
# exactly once in a copy of tokenCompactPlugin.cpp.
BREAKAGES = {
    # issue 9: `opt` derived from the input S again (a size tensor for every link after the first)
    "opt-from-input-dims": ("IDimensionExpr const* opt = exprBuilder.constant(mParams.optSeq);",
                            "IDimensionExpr const* opt = seq;"),
    # eta = 0 refused again
    "eta-range": ("return eta >= 0.0F && eta <= 1.0F;", "return eta > 0.0F && eta <= 1.0F;"),
    # enqueue claims the workspace its shapes need instead of what TensorRT provides
    "workspace-claimed": ("size_t const wsBytes = availableWorkspace(batch, seq);",
                          "size_t const wsBytes = adaplerTokenCompactWorkspaceSize(batch, seq);"),
    # getOutputDataTypes accepts any input types again
    "input-types": ("|| inputTypes[2] != DataType::kINT32 || inputTypes[3] != DataType::kINT32)",
                    "|| false)"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_plugin_harness_catches_breakage(harness_build, tmp_path, breakage):
    old, new = BREAKAGES[breakage]
    source = (TOKEN_COMPACT / "tokenCompactPlugin.cpp").read_text()
    assert source.count(old) == 1, f"the {breakage!r} breakage no longer applies: update BREAKAGES"
    broken = tmp_path / "tokenCompactPlugin.cpp"
    broken.write_text(source.replace(old, new))
    passed, failed, out = _run_harness(harness_build.harness(), harness_build.plugin(source=broken, tag=breakage))
    assert failed > 0, f"the harness missed the {breakage!r} breakage\n{out[-3000:]}"
