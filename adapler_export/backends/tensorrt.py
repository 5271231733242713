"""TensorRT runtimes of an artifact (registry entries `tensorrt` and `tensorrt-single`).

- `open_segments` -> `TensorRTSegmentsBackend`: the segment engines (`manifest.engines.segments`), chained by
  `chain.run_chain` on torch CUDA tensors, one CUDA stream. The link is the CUDA kernel of
  plugins/token_compact (`link_cuda.token_compact_cuda`) or the PyTorch reference on the GPU
  (`link.token_compact_torch`): `link="cuda" | "torch" | "auto"`; "auto" takes the kernel where its library
  loads and says which it took. Each link reads S' back to the host once (it sizes the next segment's input).
  Batches above the engines' profile are run in chunks.
- `open_single` -> `TensorRTSingleBackend`: the one engine whose links are `adapler::TokenCompact` plugin
  layers (full TensorRT + the artifact's plugin library); its outputs have data-dependent shapes, so they
  go through an `IOutputAllocator`.

Everything comes from the `Manifest`: plans, the flavor and version that built them, segment I/O names
(`manifest.specs()`), thresholds, the single graph's outputs. A backend that cannot run here (no CUDA GPU,
no CUDA PyTorch, no TensorRT of the flavor that built the plans, another TensorRT version, no engines of
that kind) raises `errors.BackendUnavailable` saying which.

TensorRT-RTX compiles kernels just in time when an execution context is created; its `IRuntimeCache`
keeps them across processes in `engines/<kind>.<precision>.runtime_cache` (not artifact content: the
manifest does not digest it), loaded when the backend opens and saved when it closes.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import numpy as np

from ..chain import run_chain
from ..engines import import_tensorrt, tensorrt_logger
from ..errors import AdaplerError, BackendUnavailable
from ..link import token_compact_torch
from ..specs import TOKEN_TYPE_IDS
from . import Backend, BackendOutput, SegmentChainBackend, given_inputs

logger = logging.getLogger(__name__)
LINKS = ("auto", "cuda", "torch")


# ----- opening: the checks every TensorRT backend makes --------------------------------------------------------
def _require_cuda_torch():
    import torch

    if not torch.cuda.is_available():
        cuda = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise BackendUnavailable(f"TensorRT engines need an NVIDIA GPU: torch {torch.__version__} ({cuda}) sees no "
                                 f"CUDA device here")
    return torch


def _open_runtime(manifest, flavor_needed: str | None = None):
    """(trt, runtime) of the flavor and version that built the artifact's plans."""
    record = manifest.engines
    if flavor_needed is not None and record.flavor != flavor_needed:
        raise BackendUnavailable(f"this engine needs {flavor_needed}; the artifact's engines were built with "
                                 f"{record.flavor} {record.version}")
    trt, flavor = import_tensorrt(record.flavor)  # TensorRTUnavailable is a BackendUnavailable
    if str(trt.__version__) != record.version:
        raise BackendUnavailable(f"the engines were built with {flavor} {record.version}, this machine has "
                                 f"{trt.__version__}: plans load only in the version that built them; rebuild "
                                 f"the artifact here")
    return trt, trt.Runtime(tensorrt_logger(flavor))


class _RuntimeCache:
    """TensorRT-RTX's cache of just-in-time compiled kernels, shared by a backend's engines, kept in a file."""

    def __init__(self, path: Path):
        self.path, self.cache = Path(path), None

    def attach(self, runtime_config) -> None:
        if self.cache is None:
            self.cache = runtime_config.create_runtime_cache()
            if self.path.is_file() and not self.cache.deserialize(self.path.read_bytes()):
                logger.info("runtime cache %s is from another GPU, driver or version: compiling anew", self.path)
        runtime_config.set_runtime_cache(self.cache)

    def save(self) -> None:
        if self.cache is None:
            return
        try:
            self.path.write_bytes(memoryview(self.cache.serialize()))
        except OSError as exc:  # a read-only artifact: the kernels are compiled again next time
            logger.warning("could not save the TensorRT-RTX runtime cache %s: %s", self.path, exc)


class _Engine:
    """One plan, deserialized, with one execution context on optimization profile 0; runs on torch tensors."""

    def __init__(self, trt, runtime, plan_path: Path, torch, runtime_cache: _RuntimeCache):
        self.trt, self.torch, self.name = trt, torch, plan_path.name
        data = plan_path.read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BackendUnavailable(f"{plan_path} does not load on this GPU (see the TensorRT log above); rebuild "
                                     f"the artifact on this machine")
        engine = self.engine
        runtime_config = engine.create_runtime_config() if hasattr(engine, "create_runtime_config") else None
        if hasattr(runtime_config, "create_runtime_cache"):  # TensorRT-RTX (full TensorRT has no runtime cache)
            runtime_cache.attach(runtime_config)
            self.context = engine.create_execution_context(runtime_config)
        else:
            self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable(f"{plan_path}: no execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: getattr(torch, np.dtype(trt.nptype(engine.get_tensor_dtype(n))).name) for n in names}
        # Every input has the same batch and sequence range (engines.input_profile).
        maximum = engine.get_tensor_profile_shape(self.inputs[0], 0)[2]
        self.max_batch, self.max_seq = int(maximum[0]), int(maximum[1])

    def bind_inputs(self, feeds: dict) -> None:
        for name in self.inputs:
            tensor = feeds[name]
            if tensor.dtype != self.dtypes[name]:
                raise AdaplerError(f"{self.name}: input {name} is {tensor.dtype}, the engine takes {self.dtypes[name]}")
            tensor = feeds[name] = tensor.contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise AdaplerError(f"{self.name}: input {name} of shape {tuple(tensor.shape)} is outside the "
                                   f"engine's profile (batch 1..{self.max_batch}, seq 1..{self.max_seq})")
            self.context.set_tensor_address(name, tensor.data_ptr())

    def execute(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise AdaplerError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")

    def run(self, feeds: dict, stream, device) -> dict:
        """Queue the engine on `stream`; outputs are new tensors whose shapes follow from the inputs."""
        self.bind_inputs(feeds)
        outputs = {}
        for name in self.outputs:
            out = self.torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        self.execute(stream)
        return outputs


def _pad_cat(arrays: list) -> np.ndarray:
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in arrays])


def run_in_chunks(run_chunk, inputs: tuple, max_batch: int, max_seq: int) -> BackendOutput:
    """`run_chunk(*arrays)` on slices of at most `max_batch` rows of every array of `inputs` (ids, mask and,
    where the engines take them, token types; the engines' profile); kept positions padded with -1 to a
    common width."""
    rows, seq = inputs[0].shape
    if seq > max_seq:
        raise AdaplerError(f"sequence length {seq} exceeds the engines' maximum {max_seq}; rebuild "
                           f"the engines with a larger `adapler-export build --max-seq`")
    if rows <= max_batch:
        return run_chunk(*inputs)
    parts = [run_chunk(*(a[i:i + max_batch] for a in inputs)) for i in range(0, rows, max_batch)]
    return BackendOutput(np.concatenate([p.logits for p in parts]),
                         [_pad_cat([p.kept[k] for p in parts]) for k in range(len(parts[0].kept))])


class _SavesOnClose:
    """`close()` runs the backend's `_on_close` callbacks once (saving the runtime cache)."""

    _on_close: list = []

    def close(self) -> None:
        for callback in self._on_close:
            callback()
        self._on_close = []


# ----- segments ------------------------------------------------------------------------------------------------
def choose_link(link: str, artifact_dir: Path | None, log=print):
    """(link function, description). "cuda": the plugins/token_compact kernel (BackendUnavailable when its
    library does not load); "torch": the PyTorch reference on the GPU; "auto": the kernel where it loads,
    else the reference, and `log` says which and why."""
    if link not in LINKS:
        raise AdaplerError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
    if link in ("auto", "cuda"):
        from .. import link_cuda

        try:
            library = link_cuda.load_library(artifact_dir=artifact_dir)
        except (link_cuda.CudaLinkUnavailable, OSError) as exc:
            if link == "cuda":
                raise BackendUnavailable(f"the CUDA TokenCompact link is not available: {exc}") from exc
            reason = str(exc).splitlines()[0]
        else:
            chosen = (functools.partial(link_cuda.token_compact_cuda, library=library), f"CUDA kernel ({library.path})")
            if link == "auto":
                log(f"tensorrt: link = {chosen[1]}")
            return chosen
        log(f"tensorrt: link = PyTorch reference on the GPU (the CUDA kernel is not available: {reason})")
    return token_compact_torch, "PyTorch reference on the GPU"


class TensorRTSegmentsBackend(_SavesOnClose, SegmentChainBackend):
    """Segment engines run by `chain.run_chain` on torch tensors of `device`, on `stream`.

    `engines[k]` runs segment k: `run(feeds, stream, device) -> outputs` with `max_batch` / `max_seq`
    (`_Engine`); `link` has the link's signature. `open_segments` builds one from an artifact.
    """

    name = "tensorrt"

    def __init__(self, engines: list, specs: list, etas: list, link, device, stream=None, link_name: str = "",
                 on_close=()):
        super().__init__(specs, etas)
        if len(engines) != len(self.specs):
            raise AdaplerError(f"{len(engines)} engines for {len(self.specs)} segments")
        import torch

        self.torch, self.engines, self.device, self.stream = torch, list(engines), device, stream
        self.link, self.link_name, self._on_close = link, link_name, list(on_close)
        self.max_batch = min(e.max_batch for e in self.engines)
        self.max_seq = min(e.max_seq for e in self.engines)

    def run_segment(self, index: int, feeds: dict) -> dict:
        return self.engines[index].run(feeds, self.stream, self.device)

    def _run_chunk(self, *inputs) -> BackendOutput:
        """`inputs`: ids, mask and, where segment 0 takes them, token types (`given_inputs`)."""
        torch = self.torch
        with torch.inference_mode(), torch.cuda.stream(self.stream):  # stream None (CPU tests): no-op
            ids, mask, *types = (torch.from_numpy(a).to(self.device) for a in inputs)
            result = run_chain(self.specs, self.etas, self.run_segment, self.link, ids, mask,
                               token_type_ids=types[0] if types else None)
            return BackendOutput(result.logits.float().cpu().numpy(), [k.cpu().numpy() for k in result.kept])

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        return run_in_chunks(self._run_chunk, given_inputs(input_ids, attention_mask, token_type_ids), self.max_batch,
                             self.max_seq)


def _engine_plans(artifact_dir: Path, records: list) -> list:
    plans = [Path(artifact_dir) / r["plan_path"] for r in records]
    missing = [str(p) for p in plans if not p.is_file()]
    if missing:
        raise BackendUnavailable(f"engine plan missing: {missing[0]}")
    return plans


def _not_built(manifest, kind: str, default: str) -> str:
    return manifest.engines.not_built.get(kind, default)


def open_segments(artifact_dir: Path, manifest, link: str = "auto", log=print, **unused) -> TensorRTSegmentsBackend:
    """Registry entry `tensorrt`: the artifact's segment engines on the current CUDA device."""
    if unused:
        raise AdaplerError(f"the tensorrt backend takes link= and log=, not {', '.join(sorted(unused))}")
    if not manifest.engines.segments:
        why = _not_built(manifest, "segments", "it was built without --backend tensorrt")
        raise BackendUnavailable(f"{artifact_dir} has no TensorRT segment engines ({why}); rebuild it with "
                                 f"`adapler-export build --backend tensorrt`")
    plans = _engine_plans(artifact_dir, manifest.engines.segments)
    torch = _require_cuda_torch()
    trt, runtime = _open_runtime(manifest)
    function, link_name = choose_link(link, artifact_dir, log)
    device = torch.device("cuda", torch.cuda.current_device())
    cache = _RuntimeCache(Path(artifact_dir) / "engines" / f"segments.{manifest.precision}.runtime_cache")
    engines = [_Engine(trt, runtime, plan, torch, cache) for plan in plans]
    return TensorRTSegmentsBackend(engines, manifest.specs(), manifest.eta, function, device,
                                   torch.cuda.Stream(device=device), link_name, on_close=[cache.save])


# ----- the single engine -----------------------------------------------------------------------------------------
def _output_allocator(trt, torch, device):
    class OutputAllocator(trt.IOutputAllocator):
        """One growing byte buffer per output; records the shapes TensorRT reports after the run."""

        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers, self.shapes = {}, {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < max(int(size), 1):
                buffer = self.buffers[tensor_name] = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
            return buffer.data_ptr()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


class TensorRTSingleBackend(_SavesOnClose, Backend):
    """The single engine (links as TokenCompact plugin layers): outputs `output_names` = logits, then the
    kept positions of link 0..L-1 (the single graph's outputs, in order)."""

    name = "tensorrt-single"

    def __init__(self, engine: _Engine, input_names: list, output_names: list, device, stream, on_close=()):
        import torch

        self.torch, self.engine, self.device, self.stream = torch, engine, device, stream
        self.input_names, self.output_names, self._on_close = list(input_names), list(output_names), list(on_close)
        self.takes_token_types = TOKEN_TYPE_IDS in self.input_names
        unknown = sorted(set(self.output_names) - set(engine.outputs))
        if unknown:
            raise AdaplerError(f"{engine.name} has no outputs {unknown} (it has {engine.outputs})")
        self.allocator = _output_allocator(engine.trt, torch, device)
        for name in engine.outputs:
            engine.context.set_output_allocator(name, self.allocator)

    def _run_chunk(self, *inputs) -> BackendOutput:
        """`inputs`: the engine's inputs in `input_names` order (ids, mask and, where it takes them, token types)."""
        torch, engine = self.torch, self.engine
        with torch.cuda.stream(self.stream):
            feeds = {name: torch.from_numpy(array).to(self.device) for name, array in zip(self.input_names, inputs)}
            engine.bind_inputs(feeds)
            engine.execute(self.stream)
            self.stream.synchronize()
            results = []
            for name in self.output_names:
                shape, dtype = self.allocator.shapes[name], engine.dtypes[name]
                count = int(np.prod(shape))
                data = self.allocator.buffers[name][: count * torch.empty((), dtype=dtype).element_size()]
                results.append(data.view(dtype).reshape(shape).cpu().numpy())
        return BackendOutput(results[0].astype(np.float32, copy=False),
                             [r.astype(np.int32, copy=False) for r in results[1:]])

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        return run_in_chunks(self._run_chunk, given_inputs(input_ids, attention_mask, token_type_ids),
                             self.engine.max_batch, self.engine.max_seq)


def open_single(artifact_dir: Path, manifest, log=None, **unused) -> TensorRTSingleBackend:
    """Registry entry `tensorrt-single`: the single engine with the artifact's plugin library (full TensorRT)."""
    if unused:
        raise AdaplerError(f"the tensorrt-single backend takes no options, got {', '.join(sorted(unused))}")
    single = manifest.engines.single
    if single is None:
        why = _not_built(manifest, "single", "it was built without --backend tensorrt")
        raise BackendUnavailable(f"{artifact_dir} has no single TensorRT engine: {why}")
    plan, library = _engine_plans(artifact_dir, [single])[0], Path(artifact_dir) / single["plugin_library"]
    torch = _require_cuda_torch()
    trt, runtime = _open_runtime(manifest, flavor_needed="tensorrt")
    try:  # registers the TokenCompact creator (static initializer) before the plan that names it is read
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise BackendUnavailable(f"the plugin library {library} does not load here: {exc}") from exc
    device = torch.device("cuda", torch.cuda.current_device())
    cache = _RuntimeCache(Path(artifact_dir) / "engines" / f"single.{manifest.precision}.runtime_cache")
    engine = _Engine(trt, runtime, plan, torch, cache)
    return TensorRTSingleBackend(engine, list(manifest.specs()[0].inputs), manifest.single_graph["outputs"], device,
                                 torch.cuda.Stream(device=device), on_close=[cache.save])
