"""TensorRT engine builder for the AdapLeR segment graphs and the single graph.

Written against the ``tensorrt`` Python API; falls back to ``tensorrt_rtx`` (TensorRT for RTX), which
builds real engines ahead of time on a CPU-only machine. What the two flavors differ in, and how this
module handles it (see also ../../shared/DESIGN.md §8):

* **Strongly typed networks.** TensorRT 11 and TensorRT-RTX removed the precision builder flags: an fp16
  engine is built from an fp16 ONNX graph (:func:`convert_onnx_to_fp16`), never from a flag. The
  ``STRONGLY_TYPED`` network-creation flag is passed wherever the module has it. TF32 is switched off by
  default so that fp32 engines stay within the fp32 parity bound (``allow_tf32=True`` turns it back on).
* **Optimization profile.** One profile per engine, min/opt/max per input from the caller
  (:func:`segment_profiles` computes them for the segments: every segment can see any length
  1..max_seq because the links can drop tokens).
* **Timing cache.** Full TensorRT: loaded from ``timing_cache_path`` when it exists and saved back
  (atomically) after the build. TensorRT-RTX: timing-cache calls are deprecated no-ops (since 1.2); the
  builder skips them and records why. TensorRT-RTX compiles its kernels just in time when the execution
  context is created; those are cached by an ``IRuntimeCache``, which the runtime side handles
  (``adapler_export.backends.tensorrt``, ``runtime_cache_path``).
* **Target GPUs (TensorRT-RTX only).** TensorRT-RTX 1.7 offers ``ComputeCapability`` SM75, SM80, SM86,
  SM89, SM120, SM121 and CURRENT; there is no SM90 (Hopper) target. Without a GPU the default
  (:data:`RTX_PORTABLE_TARGETS`) is SM80 + SM86 + SM89 + SM120: Ampere (datacenter and RTX), Ada and
  Blackwell RTX. SM75 (Turing) is left out because NVIDIA advises per-device Turing engines (mixing it
  into a portable build costs performance); SM121 (GB10) is available on request. When a CUDA GPU is
  visible the default is CURRENT (an engine for that GPU only), the only choice that can cover a GPU
  outside the enum, such as an H100. Full TensorRT always builds for the GPU of the build machine.
* **Plans are written atomically** (temporary file in the same folder, fsync, rename).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import AdaplerError

log = logging.getLogger(__name__)

#: module names tried by :func:`import_tensorrt`, in order
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx")
#: environment variable that forces one flavor ("tensorrt" or "tensorrt_rtx")
TENSORRT_ENV = "ADAPLER_TENSORRT"
#: TensorRT-RTX targets used for CPU-only ahead-of-time builds (see the module docstring)
RTX_PORTABLE_TARGETS = ("SM80", "SM86", "SM89", "SM120")

PLUGIN_NAME = "TokenCompact"
PLUGIN_NAMESPACE = "adapler"
PLUGIN_VERSION = "1"
PLUGIN_DOMAIN = "adapler"

#: outputs whose whole exclusive computation :func:`convert_onnx_to_fp16` keeps in fp32
FP32_PATH_OUTPUTS = ("scores",)
#: float graph inputs/outputs :func:`convert_onnx_to_fp16` keeps fp32 at the interface
FP32_IO = ("scores", "logits")
#: op types :func:`convert_onnx_to_fp16` keeps in fp32 (LayerNorm/softmax accumulation, DESIGN §8)
FP32_OPS = ("LayerNormalization", "Softmax")


# --------------------------------------------------------------------------------------- errors


class TensorRTUnavailable(AdaplerError, ImportError):
    """Neither ``tensorrt`` nor ``tensorrt_rtx`` could be imported (or the one asked for)."""


class EngineBuildError(AdaplerError, RuntimeError):
    """Parsing the ONNX graph or building the engine failed."""


class PluginUnavailable(EngineBuildError):
    """The single-graph build needs full TensorRT and the built ``TokenCompact`` plugin library."""


# ------------------------------------------------------------------------------ import / logger


def import_tensorrt(prefer: str | None = None):
    """Import TensorRT: ``(module, flavor)`` with flavor ``"tensorrt"`` or ``"tensorrt_rtx"``.

    ``prefer`` (or ``$ADAPLER_TENSORRT``) names the only flavor to try; otherwise full ``tensorrt`` is
    tried first and ``tensorrt_rtx`` second. Raises :class:`TensorRTUnavailable` listing what was tried.
    """
    prefer = prefer or os.environ.get(TENSORRT_ENV) or None
    if prefer is not None and prefer not in TENSORRT_MODULES:
        raise ValueError(f"unknown TensorRT flavor {prefer!r}; expected one of {TENSORRT_MODULES}")
    names = (prefer,) if prefer else TENSORRT_MODULES
    tried = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken install raising OSError at load time
            tried.append(f"import {name}: {type(exc).__name__}: {exc}")
            continue
        if not hasattr(module, "Builder"):  # e.g. the `tensorrt` meta-package stub without bindings
            tried.append(f"import {name}: module has no Builder (incomplete install at "
                         f"{getattr(module, '__file__', '?')})")
            continue
        return module, name
    raise TensorRTUnavailable(
        "TensorRT is not available. Tried:\n  " + "\n  ".join(tried)
        + "\nInstall full TensorRT (`pip install tensorrt`, needs an NVIDIA GPU to run engines) or "
          "TensorRT for RTX (`pip install tensorrt_rtx`, builds ahead of time on CPU).")


class _LogCapture:
    """The one TensorRT logger of the process (TensorRT keeps the first logger it is given and ignores
    later ones), forwarding to Python logging and recording messages for the current build."""

    _instances: dict[int, Any] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, trt):
        with cls._lock:
            inst = cls._instances.get(id(trt))
            if inst is None:
                inst = cls._instances[id(trt)] = cls._make(trt)
            return inst

    @staticmethod
    def _make(trt):
        sev = trt.ILogger.Severity
        levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR,
                  sev.WARNING: logging.WARNING, sev.INFO: logging.INFO, sev.VERBOSE: logging.DEBUG}

        class CapturingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.records = threading.local()
                self.verbose = False
                self.demote = False  # log everything at DEBUG (expected errors, e.g. probing without a GPU)

            def log(self, severity, msg):
                level = levels.get(severity, logging.INFO)
                if level == logging.DEBUG and not self.verbose:
                    return
                py_level = logging.DEBUG if self.demote or level == logging.INFO else level
                log.log(py_level, "[TensorRT] %s", msg)
                rec = getattr(self.records, "messages", None)
                if rec is not None and level >= logging.WARNING:
                    rec.append((logging.getLevelName(level), str(msg)))

            def start(self):
                self.records.messages = []

            def stop(self):
                msgs = getattr(self.records, "messages", None) or []
                self.records.messages = None
                return msgs

        return CapturingLogger()


def tensorrt_logger(trt):
    """The shared logger object for ``trt`` (pass it to Builder/Runtime you create yourself)."""
    return _LogCapture.get(trt)


# ------------------------------------------------------------------------------- data classes

ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
Profile = Mapping[str, Sequence[Sequence[int]]]


@dataclass
class TensorSpec:
    name: str
    dtype: str  # "float32", "float16", "int32", "int64", ...
    shape: list[int]  # -1 for dynamic dims


@dataclass
class EngineInfo:
    """What a build produced: for manifest.json (``to_dict``) and for the runtime."""

    plan_path: str
    onnx_path: str
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # TensorRT (or TensorRT-RTX) version
    precision: str  # "fp32" | "fp16" (from the graph's float I/O types: strongly typed)
    profiles: list[dict[str, dict[str, list[int]]]]  # per profile: input -> {"min","opt","max"}
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    build_seconds: float
    plan_bytes: int
    onnx_bytes: int
    strongly_typed: bool
    tf32: bool
    compute_capabilities: list[str] | None  # TensorRT-RTX targets; None = the build machine's GPU
    timing_cache: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineInfo":
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        return cls(**d)

    def profile_shapes(self, index: int = 0) -> dict[str, ShapeTriple]:
        """Profile ``index`` as ``{input: (min, opt, max)}`` tuples (the form the builder takes)."""
        return {name: (tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                for name, p in self.profiles[index].items()}


# ----------------------------------------------------------------------------------- profiles


def segment_profiles(num_segments: int, hidden_size: int, max_batch: int, max_seq: int,
                     opt_batch: int | None = None, opt_seq: int | Sequence[int] | None = None,
                     min_batch: int = 1, min_seq: int = 1) -> list[dict[str, ShapeTriple]]:
    """Optimization profiles for segments ``0..num_segments-1`` (``num_segments`` = L + 1).

    Segment 0 takes ``input_ids`` / ``attention_mask`` [B, S] int32; segments 1..L take ``hidden``
    [B, S, H] + ``attention_mask`` [B, S]. Every segment may see any length ``min_seq..max_seq``
    (``min_seq`` defaults to 1: a link can keep [CLS] only), so min/max are the same for all of them.
    ``opt_seq`` may be one length or one per segment (e.g. the lengths expected after each link at the
    operating point); it defaults to ``max_seq`` and ``opt_batch`` to ``max_batch``.
    """
    if num_segments < 2:
        raise ValueError(f"num_segments must be >= 2 (embeddings + head), got {num_segments}")
    if not 1 <= min_batch <= max_batch or not 1 <= min_seq <= max_seq or hidden_size < 1:
        raise ValueError(f"need 1 <= min_batch <= max_batch, 1 <= min_seq <= max_seq, hidden_size >= 1; got "
                         f"batch {min_batch}..{max_batch}, seq {min_seq}..{max_seq}, hidden {hidden_size}")
    opt_batch = max_batch if opt_batch is None else int(opt_batch)
    if opt_seq is None:
        opt_seqs = [max_seq] * num_segments
    elif isinstance(opt_seq, int):
        opt_seqs = [opt_seq] * num_segments
    else:
        opt_seqs = [int(s) for s in opt_seq]
        if len(opt_seqs) != num_segments:
            raise ValueError(f"opt_seq has {len(opt_seqs)} entries for {num_segments} segments")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch {opt_batch} outside [{min_batch}, {max_batch}]")
    profiles = []
    for k, s_opt in enumerate(opt_seqs):
        if not min_seq <= s_opt <= max_seq:
            raise ValueError(f"opt_seq {s_opt} (segment {k}) outside [{min_seq}, {max_seq}]")
        mask = ((min_batch, min_seq), (opt_batch, s_opt), (max_batch, max_seq))
        if k == 0:
            profiles.append({"input_ids": mask, "attention_mask": mask})
        else:
            profiles.append({
                "hidden": ((min_batch, min_seq, hidden_size), (opt_batch, s_opt, hidden_size),
                           (max_batch, max_seq, hidden_size)),
                "attention_mask": mask,
            })
    return profiles


def single_profile(max_batch: int, max_seq: int, opt_batch: int | None = None,
                   opt_seq: int | None = None, min_batch: int = 1,
                   min_seq: int = 1) -> dict[str, ShapeTriple]:
    """Profile for single.onnx (inputs ``input_ids`` / ``attention_mask`` [B, S] int32)."""
    return segment_profiles(2, 1, max_batch, max_seq, opt_batch, opt_seq, min_batch, min_seq)[0]


def plan_filename(index: int, precision: str) -> str:
    """``segment_00.fp32.plan`` (docs/INTERFACES.md artifact layout)."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    return f"segment_{index:02d}.{precision}.plan"


def _normalise_profiles(profile: Profile | Sequence[Profile]) -> list[dict[str, ShapeTriple]]:
    profiles = [profile] if isinstance(profile, Mapping) else list(profile)
    if not profiles:
        raise ValueError("at least one optimization profile is needed")
    out = []
    for p in profiles:
        q = {}
        for name, triple in p.items():
            if len(triple) != 3:
                raise ValueError(f"profile for {name!r} must be (min, opt, max), got {triple!r}")
            mn, op, mx = (tuple(int(d) for d in s) for s in triple)
            if not len(mn) == len(op) == len(mx):
                raise ValueError(f"profile for {name!r}: ranks differ: {mn} {op} {mx}")
            if any(not 0 <= a <= b <= c for a, b, c in zip(mn, op, mx)):
                raise ValueError(f"profile for {name!r}: need 0 <= min <= opt <= max per dim: {mn} {op} {mx}")
            q[name] = (mn, op, mx)
        out.append(q)
    return out


# ------------------------------------------------------------------------------------ helpers


def _dtype_name(trt, dt) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
             "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8",
             "FP8": "float8", "INT4": "int4", "FP4": "float4"}
    return names.get(getattr(dt, "name", str(dt)), str(dt).lower())


def _atomic_write(path: Path, data) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns()}.tmp")
    try:
        with open(tmp, "xb") as f:  # honours the umask, unlike mkstemp's 0600
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _cuda_device_count() -> int:
    """Visible CUDA devices, without initialising a framework; 0 when no driver/GPU."""
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except Exception:
        try:
            from cuda import cuda as driver  # older cuda-python
        except Exception:
            driver = None
    if driver is not None:
        try:
            err, = driver.cuInit(0)
            if int(err) != 0:
                return 0
            err, count = driver.cuDeviceGetCount()
            return int(count) if int(err) == 0 else 0
        except Exception:
            return 0
    try:
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1")
        if lib.cuInit(0) != 0:
            return 0
        n = ctypes.c_int(0)
        return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0
    except Exception:
        return 0


def _resolve_targets(trt, flavor: str, compute_capabilities):
    """TensorRT-RTX ComputeCapability enum values (or None for full TensorRT)."""
    if flavor != "tensorrt_rtx" or not hasattr(trt, "ComputeCapability"):
        if compute_capabilities not in (None, "auto"):
            raise ValueError("compute_capabilities is a TensorRT-RTX option; full TensorRT builds for "
                             "the GPU of the build machine")
        return None
    if compute_capabilities in (None, "auto"):
        compute_capabilities = ["CURRENT"] if _cuda_device_count() > 0 else list(RTX_PORTABLE_TARGETS)
    elif isinstance(compute_capabilities, str):
        compute_capabilities = [compute_capabilities]
    out = []
    for cc in compute_capabilities:
        name = str(cc).upper().replace(".", "")
        if re.fullmatch(r"\d+", name):
            name = "SM" + name
        if not hasattr(trt.ComputeCapability, name) or name == "NONE":
            available = [n for n in dir(trt.ComputeCapability)
                         if n.isupper() and n not in ("NONE",) and not n.startswith("_")]
            raise ValueError(f"compute capability {cc!r} is not a TensorRT-RTX target; available: {available}")
        out.append((name, getattr(trt.ComputeCapability, name)))
    if any(n == "CURRENT" for n, _ in out) and len(out) != 1:
        raise ValueError("CURRENT must be the only compute capability")
    return out


def _parser_errors(parser) -> list[str]:
    errs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        try:
            where = f"node {e.node()} ({e.node_name()}, {e.node_operator()})"
        except Exception:
            where = "node ?"
        errs.append(f"{where}: {e.desc()}")
    return errs


def _io_specs(trt, network):
    ins = [TensorSpec(t.name, _dtype_name(trt, t.dtype), list(t.shape))
           for t in (network.get_input(i) for i in range(network.num_inputs))]
    outs = [TensorSpec(t.name, _dtype_name(trt, t.dtype), list(t.shape))
            for t in (network.get_output(i) for i in range(network.num_outputs))]
    return ins, outs


def _precision_of(specs: Iterable[TensorSpec]) -> str:
    return "fp16" if any(s.dtype in ("float16", "bfloat16") for s in specs) else "fp32"


# ------------------------------------------------------------------------------------ building


def build_engine(onnx_path, plan_path, profile: Profile | Sequence[Profile], *,
                 timing_cache_path=None, compute_capabilities=None, allow_tf32: bool = False,
                 workspace_bytes: int | None = None, optimization_level: int | None = None,
                 plugin_libraries: Sequence[str | os.PathLike] = (), prefer: str | None = None,
                 onnx_bytes: bytes | None = None, precision: str | None = None,
                 verbose: bool = False) -> EngineInfo:
    """Parse ``onnx_path`` and build a strongly typed engine to ``plan_path`` (written atomically).

    ``profile``: ``{input: (min, opt, max)}`` or a list of them (one optimization profile each); every
    dynamic network input must be in each profile. ``onnx_bytes`` parses these bytes instead of the file
    (``onnx_path`` still locates external weights). ``precision`` (``"fp32"``/``"fp16"``), when given, must
    match the graph's float I/O, checked before building. The rest: see the module docstring.
    """
    trt, flavor = import_tensorrt(prefer)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if onnx_bytes is None and not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {onnx_path}")
    profiles = _normalise_profiles(profile)
    targets = _resolve_targets(trt, flavor, compute_capabilities)
    logger = tensorrt_logger(trt)
    logger.verbose = verbose
    logger.start()
    messages: list = []
    try:
        loaded = [str(load_plugin_library(p, trt=trt)) for p in plugin_libraries]
        t0 = time.perf_counter()
        builder = trt.Builder(logger)
        if builder is None:
            raise EngineBuildError("trt.Builder() failed (see the TensorRT log)")
        flags, strongly_typed = 0, False
        nflag = getattr(trt, "NetworkDefinitionCreationFlag", None)
        if nflag is not None and hasattr(nflag, "STRONGLY_TYPED"):
            flags |= 1 << int(nflag.STRONGLY_TYPED)
            strongly_typed = True
        network = builder.create_network(flags)
        if strongly_typed and hasattr(network, "get_flag"):
            strongly_typed = bool(network.get_flag(nflag.STRONGLY_TYPED))
        elif not strongly_typed:
            strongly_typed = flavor == "tensorrt_rtx"  # always strongly typed
        parser = trt.OnnxParser(network, logger)
        if onnx_bytes is not None:
            ok = parser.parse(onnx_bytes, str(onnx_path))
        else:
            ok = parser.parse_from_file(str(onnx_path))
        if not ok:
            raise EngineBuildError(f"TensorRT ({flavor} {trt.__version__}) could not parse {onnx_path}:\n  "
                                   + "\n  ".join(_parser_errors(parser) or ["(no parser error recorded)"]))
        inputs, outputs = _io_specs(trt, network)
        graph_precision = _precision_of(inputs + outputs)
        if precision is not None and precision != graph_precision:
            raise EngineBuildError(f"{onnx_path} is an {graph_precision} graph but an {precision} engine was "
                                   f"asked for (networks are strongly typed: convert the ONNX graph)")

        config = builder.create_builder_config()
        input_names = {t.name for t in inputs}
        recorded_profiles = []
        for k, p in enumerate(profiles):
            unknown = set(p) - input_names
            if unknown:
                raise ValueError(f"profile {k} names inputs the graph does not have: {sorted(unknown)}; "
                                 f"graph inputs: {sorted(input_names)}")
            opt_profile = builder.create_optimization_profile()
            for spec in inputs:
                if spec.name not in p:
                    if any(d < 0 for d in spec.shape):
                        raise ValueError(f"profile {k} lacks dynamic input {spec.name!r} {spec.shape}")
                    continue
                mn, op, mx = p[spec.name]
                if len(mn) != len(spec.shape):
                    raise ValueError(f"profile {k}: {spec.name!r} has rank {len(spec.shape)} "
                                     f"{spec.shape}, profile gives {mn}/{op}/{mx}")
                for i, d in enumerate(spec.shape):
                    if d >= 0 and not mn[i] == op[i] == mx[i] == d:
                        raise ValueError(f"profile {k}: {spec.name!r} dim {i} is fixed at {d} in the graph, "
                                         f"profile gives {mn[i]}/{op[i]}/{mx[i]}")
                opt_profile.set_shape(spec.name, trt.Dims(mn), trt.Dims(op), trt.Dims(mx))
            recorded_profiles.append({
                name: dict(zip(("min", "opt", "max"), (list(d) for d in opt_profile.get_shape(name))))
                for name in p})
            if config.add_optimization_profile(opt_profile) < 0:
                raise EngineBuildError(f"optimization profile {k} rejected: {p}")

        tf32 = False
        if hasattr(trt.BuilderFlag, "TF32"):
            if allow_tf32:
                config.set_flag(trt.BuilderFlag.TF32)
            else:
                config.clear_flag(trt.BuilderFlag.TF32)
            tf32 = bool(config.get_flag(trt.BuilderFlag.TF32))
        if workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if optimization_level is not None:
            config.builder_optimization_level = int(optimization_level)

        cc_names = None
        if targets is not None:
            config.num_compute_capabilities = len(targets)
            for i, (name, value) in enumerate(targets):
                if not config.set_compute_capability(value, i):
                    raise EngineBuildError(f"set_compute_capability({name}, {i}) was refused")
            cc_names = [n for n, _ in targets]

        timing, cache = _attach_timing_cache(trt, flavor, config, timing_cache_path)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"TensorRT ({flavor} {trt.__version__}) failed to build {onnx_path}")
        build_seconds = time.perf_counter() - t0
        _atomic_write(plan_path, serialized)
        plan_bytes = int(serialized.nbytes)
        del serialized
        if cache is not None:
            data = cache.serialize()
            _atomic_write(Path(timing_cache_path), data)
            timing["saved_bytes"] = int(data.nbytes)
    finally:
        messages = logger.stop()
    if messages and any(lvl in ("ERROR", "CRITICAL") for lvl, _ in messages):
        log.info("TensorRT reported errors while building %s (build succeeded)", plan_path)
    info = EngineInfo(
        plan_path=str(plan_path), onnx_path=str(onnx_path), flavor=flavor, version=str(trt.__version__),
        precision=graph_precision, profiles=recorded_profiles, inputs=inputs,
        outputs=outputs, build_seconds=round(build_seconds, 3), plan_bytes=plan_bytes,
        onnx_bytes=len(onnx_bytes) if onnx_bytes is not None else onnx_path.stat().st_size,
        strongly_typed=strongly_typed, tf32=tf32, compute_capabilities=cc_names, timing_cache=timing,
        plugins=loaded, warnings=[f"{lvl}: {msg}" for lvl, msg in messages][:50])
    log.info("built %s (%s %s, %s, %.1fs, %d bytes)", plan_path, flavor, info.version, info.precision,
             info.build_seconds, plan_bytes)
    return info


def _attach_timing_cache(trt, flavor, config, timing_cache_path):
    if timing_cache_path is None:
        return {"status": "not requested"}, None
    if flavor == "tensorrt_rtx":
        return {"path": str(timing_cache_path),
                "status": "skipped: timing-cache calls are no-ops in TensorRT-RTX (deprecated in 1.2); "
                          "JIT kernels are cached at run time with IRuntimeCache"}, None
    path = Path(timing_cache_path)
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    status = "loaded" if blob else "created"
    if cache is None or not config.set_timing_cache(cache, False):
        # a cache from another GPU / version: start from an empty one rather than fail the build
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        status = "mismatch: replaced"
    return {"path": str(path), "status": status, "loaded_bytes": len(blob)}, cache


def build_segment_engine(onnx_path, plan_path, profile: Profile | Sequence[Profile],
                         timing_cache_path=None, **kwargs) -> EngineInfo:
    """Build one segment engine (see :func:`build_engine` for the keyword options)."""
    return build_engine(onnx_path, plan_path, profile, timing_cache_path=timing_cache_path, **kwargs)


def build_segment_engines(onnx_paths: Sequence[str | os.PathLike], engines_dir, precision: str,
                          profiles: Sequence[Profile], timing_cache_path=None,
                          **kwargs) -> list[EngineInfo]:
    """Build ``engines_dir/segment_XX.<precision>.plan`` for every segment graph, in order.

    ``profiles`` is one per segment (:func:`segment_profiles`). The precision must match the graphs
    (strongly typed: an fp16 plan needs fp16 graphs); a mismatch raises.
    """
    if len(onnx_paths) != len(profiles):
        raise ValueError(f"{len(onnx_paths)} graphs but {len(profiles)} profiles")
    return [build_segment_engine(onnx_path, Path(engines_dir) / plan_filename(k, precision), prof,
                                 timing_cache_path=timing_cache_path, precision=precision, **kwargs)
            for k, (onnx_path, prof) in enumerate(zip(onnx_paths, profiles))]


# ------------------------------------------------------------------------------ single engine


_loaded_plugin_libraries: dict[tuple[int, str], Any] = {}


def load_plugin_library(path, trt=None):
    """Load a plugin library into TensorRT's plugin registry (once per process and path).

    Uses ``IPluginRegistry.load_library`` (the library must export ``getCreators`` or register itself
    with ``REGISTER_TENSORRT_PLUGIN``); falls back to ``ctypes.CDLL(RTLD_GLOBAL)`` for self-registering
    libraries. Returns the resolved path.
    """
    if trt is None:
        trt, _ = import_tensorrt()
    path = Path(path).resolve()
    if not path.is_file():
        raise PluginUnavailable(f"plugin library not found: {path} (build plugins/token_compact first)")
    key = (id(trt), str(path))
    if key in _loaded_plugin_libraries:
        return path
    # libadapler_plugins.so registers its creator from a static initialiser and exports no getCreators,
    # so a plain dlopen (RTLD_GLOBAL, as Triton and trtexec --staticPlugins do) is the primary path.
    handle, errors = None, []
    import ctypes
    try:
        handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        errors.append(f"ctypes.CDLL: {exc}")
    if handle is None or find_plugin_creator(trt) is None:
        try:
            handle = trt.get_plugin_registry().load_library(str(path)) or handle
        except Exception as exc:
            errors.append(f"load_library: {exc}")
    if handle is None:
        raise PluginUnavailable(f"could not load plugin library {path}: " + "; ".join(errors))
    _loaded_plugin_libraries[key] = handle
    return path


def find_plugin_creator(trt, name: str = PLUGIN_NAME, version: str = PLUGIN_VERSION,
                        namespace: str = PLUGIN_NAMESPACE):
    registry = trt.get_plugin_registry()
    try:
        return registry.get_creator(name, version, namespace)
    except Exception:
        return None


def prepare_single_graph(model) -> tuple[Any, int]:
    """Make every ``TokenCompact`` node findable by TensorRT's ONNX parser.

    The parser maps an unknown op to the plugin whose name is the op type, using the node's string
    attributes ``plugin_version`` / ``plugin_namespace``. Adds them where missing (in place) and checks
    the ``eta`` attribute. Returns ``(model, number of TokenCompact nodes)``.
    """
    import onnx
    from onnx import helper

    count = 0
    for node in model.graph.node:
        if node.op_type != PLUGIN_NAME:
            continue
        count += 1
        attrs = {a.name: a for a in node.attribute}
        eta = attrs.get("eta")
        if eta is None or eta.type != onnx.AttributeProto.FLOAT:
            raise EngineBuildError(f"TokenCompact node {node.name!r} needs a float attribute 'eta'")
        if not 0.0 < eta.f <= 1.0:
            raise EngineBuildError(f"TokenCompact node {node.name!r}: eta={eta.f} outside (0, 1]")
        for key, value in (("plugin_version", PLUGIN_VERSION), ("plugin_namespace", PLUGIN_NAMESPACE)):
            if key not in attrs:
                node.attribute.append(helper.make_attribute(key, value))
            elif helper.get_attribute_value(attrs[key]) not in (value, value.encode()):
                raise EngineBuildError(f"TokenCompact node {node.name!r}: {key}="
                                       f"{helper.get_attribute_value(attrs[key])!r}, expected {value!r}")
    return model, count


def build_single_engine(single_onnx_path, plan_path, plugin_library_path,
                        profile: Profile | Sequence[Profile], *, allow_tensorrt_rtx: bool = False,
                        **kwargs) -> EngineInfo:
    """Build the single engine (links as ``adapler::TokenCompact`` plugin layers).

    Needs full TensorRT and the built plugin library (``plugins/libadapler_plugins.so``); raises
    :class:`PluginUnavailable` otherwise. TensorRT-RTX also has IPluginV3, but a library built against
    TensorRT's headers is not ABI compatible with it: ``allow_tensorrt_rtx=True`` tries anyway, for a
    library built against TensorRT-RTX.
    """
    import onnx

    trt, flavor = import_tensorrt(kwargs.pop("prefer", None))
    if flavor != "tensorrt" and not allow_tensorrt_rtx:
        raise PluginUnavailable(
            f"the single engine needs full TensorRT (found only {flavor} {trt.__version__}); run it where "
            f"`pip install tensorrt` and a GPU exist, with plugins/token_compact built into "
            f"libadapler_plugins.so (see plugins/token_compact/README.md)")
    if plugin_library_path is None:
        raise PluginUnavailable("build_single_engine needs plugin_library_path (libadapler_plugins.so)")
    load_plugin_library(plugin_library_path, trt=trt)
    if find_plugin_creator(trt) is None:
        raise PluginUnavailable(f"{plugin_library_path} did not register plugin {PLUGIN_NAMESPACE}::"
                                f"{PLUGIN_NAME} version {PLUGIN_VERSION}")
    single_onnx_path = Path(single_onnx_path)
    model = onnx.load(str(single_onnx_path), load_external_data=False)
    model, n_links = prepare_single_graph(model)
    if n_links == 0:
        raise EngineBuildError(f"{single_onnx_path} has no {PLUGIN_NAME} nodes")
    info = build_engine(single_onnx_path, plan_path, profile, prefer=flavor,
                        onnx_bytes=model.SerializeToString(), **kwargs)
    info.plugins = info.plugins or [str(Path(plugin_library_path).resolve())]
    return info


# ------------------------------------------------------------------------------ fp16 graphs


def exclusive_ancestor_nodes(model, outputs: Iterable[str]) -> set[str]:
    """Names of nodes that feed ``outputs`` and no other graph output (e.g. the CP scoring path)."""
    producers = {o: n for n in model.graph.node for o in n.output}

    def ancestors(names):
        seen, stack = set(), list(names)
        while stack:
            node = producers.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(i for i in node.input if i)
        return seen

    targets = [o for o in outputs if o in producers]
    others = [o.name for o in model.graph.output if o.name not in targets]
    exclusive = ancestors(targets) - ancestors(others)
    nodes = [n for n in model.graph.node if id(n) in exclusive]
    unnamed = [n for n in nodes if not n.name]
    for i, n in enumerate(unnamed):  # the converter blocks nodes by name
        n.name = f"_adapler_fp32_{i}"
    return {n.name for n in nodes}


def toposort_graph(graph) -> None:
    """Sort ``graph.node`` topologically in place (stable: keeps the order where it is already valid).

    ONNX Runtime's float16 converter appends its Cast nodes at the end; ONNX requires sorted nodes.
    """
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = [{producers[x] for x in n.input if x in producers} for n in graph.node]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    missing = [len(d) for d in deps]
    import heapq
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise EngineBuildError("the graph has a cycle; cannot sort it")
    nodes = [graph.node[i] for i in order]
    copies = [type(n)() for n in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _dedup_nodes(graph) -> int:
    """Drop exact duplicate nodes (ONNX Runtime's converter emits one Cast per consumer, same output)."""
    seen, keep, dropped = set(), [], 0
    for n in graph.node:
        key = n.SerializeToString(deterministic=True)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        keep.append(n)
    if dropped:
        copies = [type(n)() for n in keep]
        for c, n in zip(copies, keep):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
    return dropped


def _fold_cast_round_trips(graph, model=None) -> int:
    """Remove fp32 -> fp16 -> fp32 round trips: ``Cast(to=FLOAT)`` of ``Cast(to=FLOAT16)`` of an fp32 tensor
    is replaced by that fp32 tensor. The float16 converter puts one between every pair of blocked (fp32)
    nodes, which would round the whole "fp32" path through fp16; this makes it fp32 end to end.
    """
    import onnx

    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    def cast_to(node):
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    typed = list(graph.input) + list(graph.value_info) + list(graph.output)
    if model is not None:  # type every intermediate tensor (the converter does not record them all)
        try:
            typed += list(onnx.shape_inference.infer_shapes(model).graph.value_info)
        except Exception as exc:  # inference is a help here, not a requirement
            log.debug("shape inference failed while folding casts: %s", exc)
    float32_tensors = {v.name for v in typed if v.type.tensor_type.elem_type == f32}
    float32_tensors |= {t.name for t in graph.initializer if t.data_type == f32}
    for n in graph.node:  # outputs of casts to fp32 are fp32 whatever value_info says
        if cast_to(n) == f32:
            float32_tensors.update(n.output)
    producers = {o: n for n in graph.node for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    removed = set()
    folded = 0
    for n in graph.node:
        if cast_to(n) != f32:
            continue
        # walk up a chain of casts to fp16 (fp32 -> fp16, then possibly fp16 -> fp16) to an fp32 source
        up, origin = producers.get(n.input[0]), None
        while up is not None and cast_to(up) == f16:
            if up.input[0] in float32_tensors:
                origin = up.input[0]
                break
            up = producers.get(up.input[0])
        if origin is None:
            continue
        if n.output[0] in graph_outputs:  # keep the output name: Identity of the fp32 tensor
            n.op_type, n.input[0] = "Identity", origin
            del n.attribute[:]
            folded += 1
            continue
        rename[n.output[0]] = origin
        removed.add(id(n))
    if not rename and not folded:
        return 0
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    # casts to fp16 that nothing reads any more
    used = {i for n in graph.node if id(n) not in removed for i in n.input} | graph_outputs
    for n in graph.node:
        if cast_to(n) == f16 and n.output[0] not in used:
            removed.add(id(n))
    keep = [n for n in graph.node if id(n) not in removed]
    copies = [type(n)() for n in keep]
    for c, n in zip(copies, keep):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    live = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in live]
    for v in stale:
        graph.value_info.remove(v)
    return len(rename) + folded


def convert_onnx_to_fp16(src, dst, *, fp32_io: Sequence[str] = FP32_IO,
                         fp32_path_outputs: Sequence[str] = FP32_PATH_OUTPUTS,
                         fp32_ops: Sequence[str] = FP32_OPS) -> Path:
    """Write an fp16 version of ``src`` to ``dst`` for strongly typed fp16 engines.

    Float I/O named in ``fp32_io`` (``scores``, ``logits``) stays fp32; so does every node whose only
    purpose is computing a ``fp32_path_outputs`` output (the CP scores whose comparison with the threshold
    decides what is kept: DESIGN §8), and every op type in ``fp32_ops``. The other float I/O
    (``hidden``, ``hidden_out``) becomes fp16, as docs/INTERFACES.md allows. Uses ONNX Runtime's
    float16 converter (``onnxruntime.transformers.float16``).
    """
    import onnx
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    io_names = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    keep_io = [n for n in fp32_io if n in io_names]
    block_nodes = sorted(exclusive_ancestor_nodes(model, fp32_path_outputs))
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=keep_io or False, op_block_list=block_ops, node_block_list=block_nodes)
    _dedup_nodes(converted.graph)
    _fold_cast_round_trips(converted.graph, converted)
    toposort_graph(converted.graph)
    onnx.checker.check_model(converted)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(dst, converted.SerializeToString())
    return dst


# ------------------------------------------------------------------------------ plan checks


def check_plan(plan_path, prefer: str | None = None) -> dict[str, Any]:
    """What can be said about a plan without running it.

    Returns ``{"bytes", "validity", "diagnostics", "diagnostic_flags", "malformed", "deserializable"}``.
    ``Runtime.get_engine_validity`` (TensorRT-RTX, newer TensorRT) reads the header: with no GPU it says
    INVALID with no diagnostic flag for a sound plan, and MALFORMED_ENGINE for a corrupt one.
    ``deserializable`` is only tried where a GPU is visible (deserialising needs CUDA), else None.
    """
    trt, flavor = import_tensorrt(prefer)
    data = Path(plan_path).read_bytes()
    runtime = trt.Runtime(tensorrt_logger(trt))
    out: dict[str, Any] = {"bytes": len(data), "flavor": flavor, "validity": None, "diagnostics": None,
                           "diagnostic_flags": [], "malformed": None, "deserializable": None}
    gpu = _cuda_device_count() > 0
    logger = tensorrt_logger(trt)
    if hasattr(runtime, "get_engine_validity"):
        logger.demote = not gpu  # without a GPU the check logs an (expected) "cannot read GPU" error
        try:
            validity, diag = runtime.get_engine_validity(data)
        finally:
            logger.demote = False
        out["validity"] = getattr(validity, "name", str(validity))
        out["diagnostics"] = int(diag)
        enum = getattr(trt, "EngineInvalidityDiagnostics", None)
        if enum is not None:
            out["diagnostic_flags"] = [n for n, v in enum.__members__.items() if int(diag) & int(v)]
            out["malformed"] = bool(int(diag) & int(enum.MALFORMED_ENGINE))
    if gpu:
        engine = runtime.deserialize_cuda_engine(data)
        out["deserializable"] = engine is not None
    return out


def write_engine_infos(path, infos: Sequence[EngineInfo]) -> None:
    """Write build records as JSON (for a manifest or a sidecar)."""
    _atomic_write(Path(path), json.dumps([i.to_dict() for i in infos], indent=2).encode())
