"""TensorRT engines of an artifact, built with polygraphy's TensorRT loaders.

    build_artifact_engines(artifact_dir, specs, precision, max_batch, max_seq, opt_batch=1, log=print)
        -> artifact.EnginesRecord

builds `engines/segment_XX.<precision>.plan` for every segment graph of `onnx/`, and, where full TensorRT
and the TokenCompact plugin library are both here, `engines/single.<precision>.plan` from `onnx/single.onnx`
(plus a copy of the library in `plugins/`). What was not built is recorded with the reason.

One engine is polygraphy's usual chain (`polygraphy convert --convert-to trt` does the same):
`NetworkFromOnnxPath(strongly_typed=True)` (wrapped in `LoadPlugins` for the single graph) ->
`CreateConfig` / `CreateConfigRTX` (one optimization profile over batch and sequence, made from the
`SegmentSpec`s; TF32 off so fp32 engines keep the fp32 parity bound) -> `EngineFromNetwork` + `SaveEngine`
where a CUDA GPU is here (the plan is loaded once before it is written), `EngineBytesFromNetwork` where it
is not (TensorRT-RTX compiles ahead of time on the CPU; loading a plan needs a GPU).

Flavors. `import_tensorrt()` tries full `tensorrt` first and `tensorrt_rtx` second. Polygraphy binds its
TensorRT backend to one of them when `polygraphy.backend.trt` is first imported, from
`polygraphy.config.USE_TENSORRT_RTX` ($POLYGRAPHY_USE_TENSORRT_RTX): `polygraphy_tensorrt(flavor)` sets
both before that import, and refuses a process whose backend is already bound to the other flavor.

What polygraphy 0.53 covers for TensorRT-RTX, and the little added here:
- covered: the module switch; the loaders above on `tensorrt_rtx`; `CreateConfigRTX(use_gpu=...,
  compute_capabilities=[(major, minor)])` (`ComputeCapability.CURRENT`, or explicit targets, checked against
  the module's `ComputeCapability` enum); `CreateConfig` refusing precision flags, DLA and calibrators under RTX.
- not covered: TensorRT-RTX's runtime side (IRuntimeConfig, IRuntimeCache for the kernels it compiles just
  in time when a context is created): `backends/tensorrt.py` keeps that cache; and polygraphy's `DataType`
  does not know TensorRT-RTX's dtypes (`trt.nptype` names them here).
- added: TF32 is cleared through polygraphy's `PostprocessConfig` (`CreateConfigRTX` has no `tf32`
  switch and TensorRT-RTX turns TF32 on by default); targets: with no GPU here TensorRT-RTX's default
  (portable Ampere SM80/86, Ada SM89, Blackwell SM120; not Turing), with a GPU `use_gpu=True` (CURRENT).
  TensorRT-RTX has no SM90 target at all: a Hopper GPU (H100) runs full TensorRT engines.
- TensorRT-RTX ignores timing caches (deprecated no-ops since 1.2); full TensorRT loads and saves one
  under $ADAPLER_HOME/tensorrt (shared by every build on the machine, merged by polygraphy).

Networks are strongly typed (TensorRT 11 and TensorRT-RTX have no precision flags): the engine's precision
is the graph's. `segments.export_segments` writes the fp16 graphs (CP scores and softmax in fp32); each
network's inputs/outputs are checked against its `SegmentSpec` before building.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .artifact import PRECISIONS, EnginesRecord
from .errors import AdaplerError, BackendUnavailable
from .storage import adapler_home

TENSORRT_FLAVORS = ("tensorrt", "tensorrt_rtx")
PLUGIN_LIBRARY_ENV = "ADAPLER_PLUGIN_LIBRARY"
PLUGIN_LIBRARY = "libadapler_plugins.so"
PLUGIN_BUILD_COMMAND = ("cmake -S plugins -B plugins/build -DTensorRT_ROOT=/path/to/TensorRT && "
                        "cmake --build plugins/build -j")
ONNX_DIR, ENGINES_DIR, PLUGINS_DIR = "onnx", "engines", "plugins"
SINGLE_GRAPH = "single.onnx"  # what build.py writes beside the segments (segments.build_single_graph)
_REPO_ROOT = Path(__file__).resolve().parents[1]


class TensorRTUnavailable(BackendUnavailable):
    """Neither TensorRT flavor (or not the one asked for) can be imported here."""


class EngineBuildError(AdaplerError):
    """TensorRT could not parse a graph or build its engine."""


# ----- TensorRT and polygraphy ---------------------------------------------------------------------------------
def import_tensorrt(prefer: str | None = None) -> tuple:
    """`(module, flavor)`: full `tensorrt` first, `tensorrt_rtx` second; `prefer` names the only one to try
    (a runtime opens plans with the flavor that built them)."""
    if prefer is not None and prefer not in TENSORRT_FLAVORS:
        raise AdaplerError(f"unknown TensorRT flavor {prefer!r} (expected one of {', '.join(TENSORRT_FLAVORS)})")
    tried = []
    for name in (prefer,) if prefer else TENSORRT_FLAVORS:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or OSError from a broken install's shared libraries
            tried.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(module, "Builder"):  # not the bare `tensorrt` meta package without its bindings
            return module, name
        tried.append(f"{name}: incomplete install (no Builder in {getattr(module, '__file__', '?')})")
    raise TensorRTUnavailable(
        f"TensorRT is not importable ({'; '.join(tried)}): `pip install tensorrt` (needs an NVIDIA GPU) or "
        f"`pip install tensorrt_rtx` (builds engines ahead of time on the CPU)")


def polygraphy_tensorrt(flavor: str):
    """`polygraphy.backend.trt`, bound to `flavor`'s module (see the module docstring)."""
    from polygraphy import config

    rtx = flavor == "tensorrt_rtx"
    if "polygraphy.backend.trt" not in sys.modules:
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if rtx else "0"
        config.USE_TENSORRT_RTX = rtx
    from polygraphy.backend import trt as polygraphy_trt
    from polygraphy.backend.trt import loader

    try:
        bound = loader.trt.__name__  # polygraphy's lazy module: imports the module it was bound to
    except Exception:  # noqa: BLE001 - the bound module does not import here
        bound = "tensorrt_rtx" if config.USE_TENSORRT_RTX else "tensorrt"
    if bound != flavor:
        raise TensorRTUnavailable(
            f"polygraphy's TensorRT backend is already bound to {bound} in this process; {flavor} needs a new "
            f"process (POLYGRAPHY_USE_TENSORRT_RTX={'1' if rtx else '0'} before polygraphy.backend.trt is imported)")
    return polygraphy_trt


def tensorrt_logger(flavor: str):
    """The process's TensorRT logger, polygraphy's (TensorRT keeps the first logger a process gives it, so
    builds and runtimes share one); it reports through polygraphy's G_LOGGER."""
    polygraphy_tensorrt(flavor)
    from polygraphy.backend.trt import util

    return util.get_trt_logger()


@contextlib.contextmanager
def _quiet_polygraphy():
    """Polygraphy logs every step at INFO on stdout; builds report through `log` instead (errors still show).
    Its CreateConfig always attaches a timing cache, which TensorRT-RTX answers with a DeprecationWarning."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.WARNING), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Timing cache operations are no-ops", category=DeprecationWarning)
        yield


def _cuda_gpu_visible() -> bool:
    from .backends import cuda_device_available

    return cuda_device_available()


# ----- profiles --------------------------------------------------------------------------------------------------
def input_profile(inputs: dict, max_batch: int, max_seq: int, opt_batch: int = 1, opt_seq: int | None = None) -> dict:
    """One optimization profile for a graph whose inputs are `inputs` (a `SegmentSpec.inputs`):
    `{name: {"min", "opt", "max"}}`. Symbolic dims "batch" and "seq" range over 1..max (a link may keep only
    [CLS], so every segment sees every length); fixed dims (the hidden size) stay fixed."""
    opt_seq = max_seq if opt_seq is None else opt_seq
    for what, opt, top in (("batch", opt_batch, max_batch), ("seq", opt_seq, max_seq)):
        if not (isinstance(top, int) and isinstance(opt, int) and 1 <= opt <= top):
            raise AdaplerError(f"engine profile: need 1 <= opt {what} <= max {what}, got opt {opt!r}, max {top!r}")
    ranges = {"batch": (1, opt_batch, max_batch), "seq": (1, opt_seq, max_seq)}
    profile = {}
    for name, (_, shape) in inputs.items():
        unknown = [d for d in shape if isinstance(d, str) and d not in ranges]
        if unknown:
            raise AdaplerError(f"engine profile: input {name} has a dimension {unknown[0]!r} that is neither "
                               f"'batch' nor 'seq'")
        dims = [ranges[d] if isinstance(d, str) else (d, d, d) for d in shape]
        profile[name] = {key: [d[i] for d in dims] for i, key in enumerate(("min", "opt", "max"))}
    return profile


def plan_relpath(onnx_file: str, precision: str) -> str:
    """`engines/segment_00.fp32.plan` for `segment_00.onnx` (the artifact layout, docs/INTERFACES.md)."""
    return f"{ENGINES_DIR}/{Path(onnx_file).stem}.{precision}.plan"


# ----- one engine ------------------------------------------------------------------------------------------------
def _tensor_io(trt, network) -> tuple:
    """(inputs, outputs) of a parsed network as `{name: {"dtype": numpy name, "shape": [-1 for dynamic]}}`.
    (`trt.nptype`, not polygraphy's DataType, which does not recognise TensorRT-RTX's types.)"""
    def describe(tensors):
        return {t.name: {"dtype": np.dtype(trt.nptype(t.dtype)).name, "shape": list(t.shape)} for t in tensors}

    return (describe(network.get_input(i) for i in range(network.num_inputs)),
            describe(network.get_output(i) for i in range(network.num_outputs)))


def _check_io(found: dict, expected: dict, kind: str, onnx_path: Path) -> None:
    for name, (dtype, _) in expected.items():
        if name not in found:
            raise EngineBuildError(f"{onnx_path.name}: TensorRT finds no {kind} {name!r} (it has {sorted(found)})")
        if found[name]["dtype"] != dtype:
            raise EngineBuildError(f"{onnx_path.name}: {kind} {name} is {found[name]['dtype']} in the network, the "
                                   f"segment spec says {dtype} (networks are strongly typed: the graph sets the "
                                   f"engine's precision)")


def _rtx_targets(trt, compute_capabilities) -> tuple:
    """CreateConfigRTX arguments and what the record says about them."""
    if compute_capabilities is None:
        if _cuda_gpu_visible():
            return {"use_gpu": True}, "this machine's GPU (ComputeCapability.CURRENT)"
        return {}, "TensorRT-RTX default: SM80, SM86, SM89, SM120 (no Turing, no SM90)"
    targets = [(int(major), int(minor)) for major, minor in compute_capabilities]
    available = sorted(n for n in dir(trt.ComputeCapability) if n.startswith("SM"))
    missing = [f"SM{a}{b}" for a, b in targets if f"SM{a}{b}" not in available]
    if missing:
        raise EngineBuildError(f"{', '.join(missing)}: not a TensorRT-RTX {trt.__version__} target (it has "
                               f"{', '.join(available)}); Hopper GPUs such as the H100 (SM90) need full TensorRT")
    return {"compute_capabilities": targets}, ", ".join(f"SM{a}{b}" for a, b in targets)


def _create_config(polygraphy_trt, trt, flavor: str, profile: dict, compute_capabilities, timing_cache):
    """(config loader, targets description) for one profile, TF32 off."""
    shapes = polygraphy_trt.Profile()
    for name, triple in profile.items():
        shapes.add(name, triple["min"], triple["opt"], triple["max"])
    if flavor == "tensorrt":
        if compute_capabilities is not None:
            raise AdaplerError("compute capabilities are a TensorRT-RTX option; full TensorRT builds for the GPU of "
                               "this machine")
        config = polygraphy_trt.CreateConfig(profiles=[shapes], tf32=False, load_timing_cache=timing_cache)
        return config, "this machine's GPU"
    from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

    options, targets = _rtx_targets(trt, compute_capabilities)
    config = polygraphy_trt.PostprocessConfig(CreateConfigRTX(profiles=[shapes], **options),
                                              lambda builder, network, cfg: cfg.clear_flag(trt.BuilderFlag.TF32))
    return config, targets


def build_engine(onnx_path: Path, plan_path: Path, profile: dict, flavor: str, *, io=None, plugins=(),
                 compute_capabilities=None) -> dict:
    """Build one strongly typed engine of `onnx_path` to `plan_path` with the TensorRT `flavor`.

    `profile`: from `input_profile`. `io`: the `SegmentSpec` the network must match (checked before building).
    `plugins`: shared libraries the parser needs (the single graph's TokenCompact nodes).
    `compute_capabilities`: TensorRT-RTX targets as (major, minor) pairs (default: see `_rtx_targets`).
    Returns what the manifest records about the build: network I/O, targets, TF32, timing cache, seconds, sizes.
    """
    from polygraphy import util
    from polygraphy.exception import PolygraphyException

    trt, _ = import_tensorrt(flavor)
    polygraphy_trt = polygraphy_tensorrt(flavor)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"no ONNX graph at {onnx_path}")
    timing_cache = None
    if flavor == "tensorrt":
        timing_cache = adapler_home() / "tensorrt" / f"timing-{trt.__version__}.cache"
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    network_loader = polygraphy_trt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    if plugins:
        network_loader = polygraphy_trt.LoadPlugins(plugins=[str(p) for p in plugins], obj=network_loader)
    started = time.perf_counter()
    with _quiet_polygraphy():
        try:
            network = network_loader()  # (builder, network, parser); the builder call below owns nothing else
            inputs, outputs = _tensor_io(trt, network[1])
            if io is not None:
                _check_io(inputs, io.inputs, "input", onnx_path)
                _check_io(outputs, io.outputs, "output", onnx_path)
            cache = str(timing_cache) if timing_cache else None
            config, targets = _create_config(polygraphy_trt, trt, flavor, profile, compute_capabilities, cache)
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            if _cuda_gpu_visible():  # load the plan once (proves it deserializes here), then save it
                polygraphy_trt.SaveEngine(polygraphy_trt.EngineFromNetwork(network, config, save_timing_cache=cache),
                                          str(plan_path))()
            else:
                util.save_file(polygraphy_trt.EngineBytesFromNetwork(network, config, save_timing_cache=cache)(),
                               str(plan_path))
        except PolygraphyException as exc:
            raise EngineBuildError(f"{flavor} {trt.__version__} could not build {onnx_path.name}: {exc} (TensorRT's "
                                   f"messages above say why)") from None
    return {"inputs": inputs, "outputs": outputs, "targets": targets, "tf32": False,
            "timing_cache": str(timing_cache) if timing_cache else f"not used by {flavor}",
            "build_seconds": round(time.perf_counter() - started, 3), "plan_bytes": plan_path.stat().st_size,
            "onnx_bytes": onnx_path.stat().st_size}


# ----- the single engine: plugin library and the reasons it may not be built ------------------------------------
def find_plugin_library() -> tuple:
    """(path, None) of libadapler_plugins.so — $ADAPLER_PLUGIN_LIBRARY, else plugins/build/**/ of this
    checkout — or (None, why not)."""
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        path = Path(env).expanduser()
        return (path, None) if path.is_file() else (None, f"plugin library not found: ${PLUGIN_LIBRARY_ENV}={env} "
                                                          f"is not a file")
    found = sorted((_REPO_ROOT / "plugins" / "build").glob(f"**/{PLUGIN_LIBRARY}"))
    if found:
        return found[0], None
    return None, (f"plugin library not found (${PLUGIN_LIBRARY_ENV} unset, no plugins/build/**/{PLUGIN_LIBRARY}): "
                  f"build it with `{PLUGIN_BUILD_COMMAND}`")


def single_engine_blocker(flavor: str, version: str, single_onnx: Path) -> tuple:
    """(plugin library, None) when the single engine can be built here, else (None, the reason)."""
    if flavor != "tensorrt":
        return None, (f"full TensorRT is not importable (only {flavor} {version}): {flavor} has no plugin support for "
                      f"libadapler_plugins.so (built against full TensorRT's libnvinfer), so the single engine with "
                      f"TokenCompact plugin layers needs `pip install tensorrt` on a GPU machine")
    library, reason = find_plugin_library()
    if library is None:
        return None, reason
    if not Path(single_onnx).is_file():
        return None, f"{ONNX_DIR}/{SINGLE_GRAPH} is not in the artifact"
    return library, None


# ----- every engine of an artifact -------------------------------------------------------------------------------
def _record(onnx_file: str, precision: str, profile: dict, built: dict, **extra) -> dict:
    return {"plan_path": plan_relpath(onnx_file, precision), "onnx_path": f"{ONNX_DIR}/{onnx_file}",
            "precision": precision, "profiles": [profile], **extra, **built}


def build_artifact_engines(artifact_dir: Path, specs, precision: str, max_batch: int, max_seq: int,
                           opt_batch: int = 1, log=print, *, compute_capabilities=None) -> EnginesRecord:
    """Build the TensorRT engines of the artifact being written at `artifact_dir` (its `onnx/` is complete).

    Segment engines always (or a clear `TensorRTUnavailable` / `EngineBuildError`: the user asked for
    TensorRT); the single engine where full TensorRT and the plugin library are here, else
    `not_built["single"]` says why. Paths in the record are relative to `artifact_dir`.
    """
    artifact_dir = Path(artifact_dir)
    if precision not in PRECISIONS:
        raise AdaplerError(f"engine precision must be one of {PRECISIONS}, got {precision!r}")
    trt, flavor = import_tensorrt()
    record = EnginesRecord(flavor=flavor, version=str(trt.__version__))
    log(f"building {len(specs)} segment engines with {flavor} {trt.__version__} ({precision}, batch 1..{max_batch} "
        f"(opt {opt_batch}), seq 1..{max_seq})")
    for spec in specs:
        profile = input_profile(spec.inputs, max_batch, max_seq, opt_batch)
        plan = plan_relpath(spec.file_name, precision)
        built = build_engine(artifact_dir / ONNX_DIR / spec.file_name, artifact_dir / plan, profile, flavor, io=spec,
                             compute_capabilities=compute_capabilities)
        record.segments.append(_record(spec.file_name, precision, profile, built, segment=spec.index))
        log(f"  {spec.file_name} -> {plan} ({built['build_seconds']:.1f}s, {built['plan_bytes'] / 1e6:.1f} MB)")

    single_onnx = artifact_dir / ONNX_DIR / SINGLE_GRAPH
    library, reason = single_engine_blocker(flavor, record.version, single_onnx)
    if library is not None:
        profile = input_profile(specs[0].inputs, max_batch, max_seq, opt_batch)  # single.onnx takes segment 0's inputs
        try:
            built = build_engine(single_onnx, artifact_dir / plan_relpath(SINGLE_GRAPH, precision), profile, flavor,
                                 plugins=[library])
        except EngineBuildError as exc:  # e.g. Myelin and data-dependent shapes (DESIGN §8): segments still stand
            reason = f"build failed: {exc}"
        else:
            copy = artifact_dir / PLUGINS_DIR / PLUGIN_LIBRARY
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library, copy)
            record.single = _record(SINGLE_GRAPH, precision, profile, built,
                                    plugin_library=f"{PLUGINS_DIR}/{PLUGIN_LIBRARY}")
            log(f"  {SINGLE_GRAPH} -> {record.single['plan_path']} (plugin library {library})")
    if reason is not None:
        record.not_built["single"] = reason
        log(f"single engine not built: {reason}")
    return record
