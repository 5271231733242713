"""TensorRT runtimes behind the backend interface of docs/INTERFACES.md.

Two runtimes, both ``run(input_ids, attention_mask) -> BackendOutput(logits, kept)``:

* :class:`TensorRTSegmentsBackend` (the primary path, DESIGN §8): one engine per segment
  (``engines/segment_XX.<precision>.plan``), run in order on one CUDA stream with device buffers; between
  segment k and k+1 the link k compacts the tokens on the device. The link is the CUDA kernel of
  ``plugins/token_compact`` (``adapler_export.link_cuda.token_compact_cuda``), with the PyTorch reference
  (``adapler_export.link.token_compact_torch`` on CUDA tensors) as a fallback. Each link reads S' back
  to the host once (it sizes the next segment's input). Only optimization profile 0 is used.
* :class:`TensorRTSingleBackend`: the single engine whose links are ``adapler::TokenCompact`` plugin
  layers; its outputs have data-dependent shapes, so every output goes through an ``IOutputAllocator``.

Device memory is PyTorch CUDA tensors (torch's caching allocator makes per-call buffers cheap, and the
reference link runs on them). Everything here needs an NVIDIA GPU and a CUDA build of PyTorch;
constructing a backend without them raises :class:`TensorRTBackendUnavailable`. Works with full
``tensorrt`` and with ``tensorrt_rtx`` (which compiles kernels just in time when an execution context is
created; ``runtime_cache_path`` keeps them across processes).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engines import (EngineBuildError, TensorRTUnavailable, _atomic_write, import_tensorrt,
                       load_plugin_library, tensorrt_logger)
from ..errors import AdaplerError
from . import Backend, BackendOutput, as_int32_inputs

log = logging.getLogger(__name__)

SEGMENT_PLAN_RE = re.compile(r"segment_(\d+)\.(fp32|fp16|int8)\.plan$")


class TensorRTBackendUnavailable(AdaplerError, RuntimeError):
    """No GPU / no CUDA PyTorch / no TensorRT / no engines: this backend cannot run here."""


# ------------------------------------------------------------------------------- device helpers


def _require_cuda(device: str | int | None):
    try:
        import torch
    except Exception as exc:
        raise TensorRTBackendUnavailable(f"the TensorRT backends need PyTorch with CUDA: {exc}") from exc
    if not torch.cuda.is_available():
        raise TensorRTBackendUnavailable(
            f"the TensorRT backends need an NVIDIA GPU and a CUDA build of PyTorch (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False)")
    dev = torch.device(device if device is not None else "cuda")
    if dev.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {dev}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(dev)  # TensorRT uses the current device / context
    return torch, dev


_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32",
                 "INT64": "int64", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def _torch_dtype(torch, trt_dtype):
    name = _TORCH_DTYPES.get(trt_dtype.name)
    if name is None:
        raise TypeError(f"unsupported TensorRT dtype {trt_dtype}")
    return getattr(torch, name)


# ---------------------------------------------------------------------------------- one engine


class _Engine:
    """A deserialized engine with one execution context on profile 0."""

    def __init__(self, trt, runtime, plan_path: Path, torch, device, stream, *,
                 runtime_cache: "_RuntimeCache | None" = None, cuda_graphs: bool = False,
                 shape_specialization: str | None = None):
        self.trt, self.torch, self.device, self.stream = trt, torch, device, stream
        self.plan_path = Path(plan_path)
        data = self.plan_path.read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            hint = ""
            if hasattr(runtime, "get_engine_validity"):
                validity, diag = runtime.get_engine_validity(data)
                hint = f" (engine validity {validity}, diagnostics {int(diag)})"
            raise EngineBuildError(f"could not deserialize {self.plan_path}{hint}: built by another TensorRT "
                                   f"version or for another GPU? Rebuild it on this machine.")
        del data
        e = self.engine
        self.names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.inputs = [n for n in self.names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(torch, e.get_tensor_dtype(n)) for n in self.names}
        self.profile = {n: [tuple(d) for d in e.get_tensor_profile_shape(n, 0)] for n in self.inputs}

        self.runtime_config = None
        if hasattr(e, "create_runtime_config"):
            rc = e.create_runtime_config()
            if runtime_cache is not None:
                runtime_cache.attach(rc)
            if cuda_graphs and hasattr(rc, "cuda_graph_strategy"):
                rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            if shape_specialization and hasattr(rc, "dynamic_shapes_kernel_specialization_strategy"):
                rc.dynamic_shapes_kernel_specialization_strategy = getattr(
                    trt.DynamicShapesKernelSpecializationStrategy, shape_specialization.upper())
            self.runtime_config = rc
            self.context = e.create_execution_context(rc)
        else:
            self.context = e.create_execution_context()
        if self.context is None:
            raise EngineBuildError(f"could not create an execution context for {self.plan_path} "
                                   f"(out of GPU memory?)")
        if e.num_optimization_profiles > 1:
            self.context.set_optimization_profile_async(0, stream.cuda_stream)

    def max_shape(self, name: str) -> tuple:
        return self.profile[name][2]

    def check_inputs(self, shapes: dict[str, tuple]) -> None:
        for name, shape in shapes.items():
            mn, mx = self.profile[name][0], self.profile[name][2]
            if len(shape) != len(mx) or any(not a <= s <= b for a, s, b in zip(mn, shape, mx)):
                raise ValueError(f"{self.plan_path.name}: input {name!r} shape {tuple(shape)} is outside the "
                                 f"engine's profile [{mn} .. {mx}]; rebuild with a larger profile")

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Enqueue on ``self.stream``; returns device outputs (not synchronised)."""
        torch, ctx = self.torch, self.context
        for name in self.inputs:
            t = feeds[name]
            if t.dtype != self.dtypes[name]:
                raise TypeError(f"{self.plan_path.name}: input {name!r} is {t.dtype}, engine wants "
                                f"{self.dtypes[name]}")
            if not t.is_contiguous():
                t = feeds[name] = t.contiguous()
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{self.plan_path.name}: set_input_shape({name!r}, {tuple(t.shape)}) refused "
                                 f"(profile {self.profile[name]})")
            ctx.set_tensor_address(name, t.data_ptr())
        missing = ctx.infer_shapes()
        if missing:
            raise RuntimeError(f"{self.plan_path.name}: shapes not specified for {missing}")
        outs = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.plan_path.name}: output {name!r} has a data-dependent shape "
                                   f"{shape}; use TensorRTSingleBackend for such engines")
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outs[name] = out
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.plan_path.name}: execute_async_v3 failed (see the TensorRT log)")
        return outs


def _open_runtime(prefer):
    try:
        trt, flavor = import_tensorrt(prefer)
    except TensorRTUnavailable as exc:
        raise TensorRTBackendUnavailable(str(exc)) from exc
    logger = tensorrt_logger(trt)
    runtime = trt.Runtime(logger)
    if runtime is None:
        raise TensorRTBackendUnavailable(f"trt.Runtime() failed ({flavor} {trt.__version__})")
    return trt, flavor, runtime


class _RuntimeCache:
    """TensorRT-RTX's cache of just-in-time compiled kernels, persisted to a file; one cache shared by
    every engine of a backend (attached to each engine's IRuntimeConfig). A no-op without the API."""

    def __init__(self, path):
        self.path = Path(path) if path else None
        self.cache = None
        self._tried = False

    def attach(self, runtime_config) -> None:
        if self.path is None or not hasattr(runtime_config, "create_runtime_cache"):
            return
        if self.cache is None and not self._tried:
            self._tried = True
            self.cache = runtime_config.create_runtime_cache()
            if self.cache is not None and self.path.is_file():
                try:
                    ok = self.cache.deserialize(self.path.read_bytes())  # needs a current CUDA context
                except Exception as exc:
                    ok = False
                    log.warning("runtime cache %s unreadable: %s", self.path, exc)
                if not ok:
                    log.info("runtime cache %s does not match this GPU/driver/version; starting anew",
                             self.path)
        if self.cache is not None and not runtime_config.set_runtime_cache(self.cache):
            log.warning("set_runtime_cache refused; kernels will be compiled again next time")

    def save(self):
        if self.cache is None or self.path is None:
            return
        data = self.cache.serialize()
        if data is not None and data.nbytes:
            _atomic_write(self.path, data)


# ------------------------------------------------------------------------------------- the link


class _Link:
    """TokenCompact on CUDA tensors: ``(hidden, scores, mask, positions, eta) -> (hidden, mask, positions, S')``.

    ``impl``: ``"cuda"``: the plugins/token_compact kernel through ``adapler_export.link_cuda``
    (``token_compact_cuda``, which queues both passes on the current stream, i.e. the backend's stream,
    and reads S' back once); ``"torch"``: the PyTorch reference (``link.token_compact_torch``) on the
    device; ``"auto"``: cuda where its library loads, else torch with a warning.
    ``library``: the TokenCompact library path (default: link_cuda's search, with ``artifact_dir``).
    """

    def __init__(self, impl: str, torch, library=None, artifact_dir=None):
        if impl not in ("auto", "cuda", "torch"):
            raise ValueError(f"link must be 'auto', 'cuda' or 'torch', got {impl!r}")
        self.torch = torch
        self.fn: Callable = None  # type: ignore[assignment]
        self.name = "torch"
        if impl in ("auto", "cuda"):
            try:
                from .. import link_cuda

                lib = link_cuda.load_library(library, artifact_dir=artifact_dir)
                self.fn = functools.partial(link_cuda.token_compact_cuda, library=lib)
                self.name = f"cuda ({lib.path})" if hasattr(lib, "path") else "cuda"
            except Exception as exc:
                if impl == "cuda":
                    raise TensorRTBackendUnavailable(f"the CUDA TokenCompact link is not available: {exc}") from exc
                log.warning("CUDA TokenCompact link unavailable (%s); using the PyTorch reference link on the GPU",
                            exc)
        if self.fn is None:
            from ..link import token_compact_torch

            self.fn = token_compact_torch

    def __call__(self, hidden, scores, mask, positions, eta: float):
        res = self.fn(hidden, scores, mask, positions, eta)
        hidden_o, mask_o, pos_o, new_len = res[0], res[1], res[2], int(res[3])
        return hidden_o, mask_o.to(self.torch.int32), pos_o.to(self.torch.int32), new_len


# ------------------------------------------------------------------------------ segments runtime


def _pad_cat(arrays: Sequence[np.ndarray], fill) -> np.ndarray:
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)
                           for a in arrays], axis=0)


class _Base(Backend):
    name = "tensorrt"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self):
        caches = getattr(self, "_caches", [])
        for c in caches:
            try:
                c.save()
            except Exception as exc:
                log.warning("could not save runtime cache %s: %s", c.path, exc)
        self._caches = []


class TensorRTSegmentsBackend(_Base):
    """Segment engines chained on one CUDA stream, linked by TokenCompact on the device.

    ``plan_paths``: segment 0..L plans in order. ``etas``: eta of link 0..L-1 (``len = L``).
    ``link``: ``"auto"`` | ``"cuda"`` | ``"torch"`` (see :class:`_Link`); ``link_library`` names the
    TokenCompact library (default: ``adapler_export.link_cuda``'s search order, plus ``artifact_dir``).
    ``runtime_cache_path`` (TensorRT-RTX): file that keeps the just-in-time compiled kernels across
    processes. ``prefer``: ``"tensorrt"`` / ``"tensorrt_rtx"``, the flavor that built the plans.
    ``cuda_graphs`` / ``shape_specialization``: TensorRT-RTX runtime options (``WHOLE_GRAPH_CAPTURE``;
    ``"lazy"`` | ``"eager"`` | ``"none"``).
    """

    name = "tensorrt"

    def __init__(self, plan_paths: Sequence[str | os.PathLike], etas: Sequence[float], *,
                 device: str | int | None = None, link: str = "auto", link_library=None,
                 runtime_cache_path=None, cuda_graphs: bool = False, shape_specialization: str | None = None,
                 prefer: str | None = None, artifact_dir=None):
        self._caches = []
        plan_paths = [Path(p) for p in plan_paths]
        if len(plan_paths) < 2:
            raise ValueError(f"need at least 2 segment plans (embeddings ... head), got {len(plan_paths)}")
        if len(etas) != len(plan_paths) - 1:
            raise ValueError(f"{len(plan_paths)} segments need {len(plan_paths) - 1} etas, got {len(etas)}")
        self.etas = [float(e) for e in etas]
        for k, e in enumerate(self.etas):
            if not 0.0 < e <= 1.0:
                raise ValueError(f"eta of link {k} is {e}, outside (0, 1]")
        for p in plan_paths:
            if not p.is_file():
                raise TensorRTBackendUnavailable(f"engine plan not found: {p}")
        torch, self.device = _require_cuda(device)
        self.torch = torch
        trt, self.flavor, runtime = _open_runtime(prefer)
        self.stream = torch.cuda.Stream(device=self.device)
        cache = _RuntimeCache(runtime_cache_path)
        self._caches.append(cache)
        with torch.cuda.device(self.device):
            self.engines = [_Engine(trt, runtime, p, torch, self.device, self.stream, runtime_cache=cache,
                                    cuda_graphs=cuda_graphs, shape_specialization=shape_specialization)
                            for p in plan_paths]
        self._check_interface()
        self.max_batch = min(e.max_shape("attention_mask")[0] for e in self.engines)
        self.max_seq = self.engines[0].max_shape("attention_mask")[1]
        self.link = _Link(link, torch, link_library, artifact_dir)
        log.info("TensorRT segments backend: %d engines (%s), link %s, max batch %d, max seq %d",
                 len(self.engines), self.flavor, self.link.name, self.max_batch, self.max_seq)

    def _check_interface(self):
        last = len(self.engines) - 1
        for k, e in enumerate(self.engines):
            if k == 0:
                want_in, want_out = {"input_ids", "attention_mask"}, {"hidden", "scores"}
            elif k < last:
                want_in, want_out = {"hidden", "attention_mask"}, {"hidden_out", "scores"}
            else:
                want_in, want_out = {"hidden", "attention_mask"}, {"logits"}
            if set(e.inputs) != want_in or set(e.outputs) != want_out:
                raise EngineBuildError(f"{e.plan_path.name} (segment {k}) has inputs {e.inputs} / outputs "
                                       f"{e.outputs}; the segment contract wants {sorted(want_in)} / "
                                       f"{sorted(want_out)} (docs/INTERFACES.md)")
            if "scores" in e.outputs and e.dtypes["scores"] != self.torch.float32:
                raise EngineBuildError(f"{e.plan_path.name}: scores must be fp32, engine has {e.dtypes['scores']}")
        for k in range(1, len(self.engines)):
            produced = self.engines[k - 1].dtypes["hidden" if k == 1 else "hidden_out"]
            if produced != self.engines[k].dtypes["hidden"]:
                raise EngineBuildError(f"segment {k - 1} produces {produced} hidden states but segment {k} "
                                       f"takes {self.engines[k].dtypes['hidden']}: mixed precisions")

    @classmethod
    def from_artifact(cls, artifact_dir, precision: str | None = None, **kwargs) -> "TensorRTSegmentsBackend":
        """Open ``<artifact>/engines/segment_XX.<precision>.plan`` with the etas of manifest.json.

        The TensorRT flavor that built the engines (manifest ``engines.flavor``) is the one imported: a
        TensorRT-RTX plan cannot be deserialized by full TensorRT, nor the other way round.
        """
        artifact_dir = Path(artifact_dir)
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        precision = precision or manifest.get("precision")
        engines_record = manifest.get("engines") if isinstance(manifest.get("engines"), dict) else {}
        if engines_record.get("flavor") and "prefer" not in kwargs:
            kwargs["prefer"] = engines_record["flavor"]
        plans = sorted((int(m.group(1)), m.group(2), p) for p in (artifact_dir / "engines").glob("segment_*.plan")
                       if (m := SEGMENT_PLAN_RE.search(p.name)))
        if precision is None:
            found = sorted({pr for _, pr, _ in plans})
            if len(found) != 1:
                raise TensorRTBackendUnavailable(f"{artifact_dir}: say which precision to run, engines exist "
                                                 f"for {found}")
            precision = found[0]
        plans = [p for i, pr, p in plans if pr == precision]
        if not plans:
            raise TensorRTBackendUnavailable(f"{artifact_dir}/engines has no segment_XX.{precision}.plan")
        etas = _manifest_etas(manifest)
        kwargs.setdefault("runtime_cache_path", artifact_dir / "engines" / f"runtime_cache.{precision}.bin")
        kwargs.setdefault("artifact_dir", artifact_dir)
        return cls(plans, etas, **kwargs)

    def run(self, input_ids, attention_mask) -> BackendOutput:
        ids, mask = as_int32_inputs(input_ids, attention_mask)
        ids, mask = np.ascontiguousarray(ids), np.ascontiguousarray(mask)
        b, s = ids.shape
        if b == 0:
            raise ValueError("empty batch")
        if s > self.max_seq:
            raise ValueError(f"sequence length {s} exceeds the engines' max {self.max_seq}; rebuild the engines "
                             f"with a larger --max-length")
        if b <= self.max_batch:
            return self._run_chunk(ids, mask)
        parts = [self._run_chunk(ids[i:i + self.max_batch], mask[i:i + self.max_batch])
                 for i in range(0, b, self.max_batch)]
        return BackendOutput(np.concatenate([p.logits for p in parts], axis=0),
                             [_pad_cat([p.kept[k] for p in parts], -1) for k in range(len(self.etas))])

    def _run_chunk(self, ids: np.ndarray, mask: np.ndarray) -> BackendOutput:
        torch = self.torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            d_ids = torch.from_numpy(ids).to(self.device, non_blocking=False)
            d_mask = torch.from_numpy(mask).to(self.device, non_blocking=False)
            seq = torch.arange(ids.shape[1], dtype=torch.int32, device=self.device)[None].expand_as(d_mask)
            positions = torch.where(d_mask == 1, seq, torch.full_like(seq, -1)).contiguous()
            kept_dev = []
            out = self.engines[0].run({"input_ids": d_ids, "attention_mask": d_mask})
            hidden, scores = out["hidden"], out["scores"]
            for k, eta in enumerate(self.etas):
                hidden, d_mask, positions, _ = self.link(hidden, scores, d_mask, positions, eta)
                kept_dev.append(positions)
                out = self.engines[k + 1].run({"hidden": hidden, "attention_mask": d_mask})
                if "logits" in out:
                    logits = out["logits"]
                else:
                    hidden, scores = out["hidden_out"], out["scores"]
            logits_h = logits.float().cpu()  # on self.stream: waits for the last engine
            kept_h = [p.cpu().numpy() for p in kept_dev]
            self.stream.synchronize()
        return BackendOutput(logits_h.numpy().astype(np.float32, copy=False), kept_h)


def _manifest_etas(manifest: dict) -> list[float]:
    for key in ("eta", "etas", "thresholds"):
        v = manifest.get(key)
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
            return [float(x) for x in v]
    links = manifest.get("links")
    if isinstance(links, list) and links and all(isinstance(x, dict) and "eta" in x for x in links):
        return [float(x["eta"]) for x in links]
    raise AdaplerError("manifest.json has no per-link eta list (looked for 'eta', 'etas', 'thresholds', "
                       "'links[].eta')")


# --------------------------------------------------------------------------- single-engine runtime


def _make_output_allocator(trt, torch, device):
    class OutputAllocator(trt.IOutputAllocator):
        """Grows one byte buffer per output on demand; records the shapes TensorRT reports."""

        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple] = {}

        def _reallocate(self, name, size):
            size = max(int(size), 1)
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < size:
                buf = self.buffers[name] = torch.empty(size, dtype=torch.uint8, device=device)
            return buf.data_ptr()

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self._reallocate(tensor_name, size)

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self._reallocate(tensor_name, size)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class TensorRTSingleBackend(_Base):
    """The single engine with ``TokenCompact`` plugin layers (needs full TensorRT and the plugin library).

    ``kept_outputs``: the engine outputs holding ``positions_out`` of link 0..L-1, in order; default:
    every output but ``logits``, in natural name order (``kept_0, kept_1, ..., kept_10``).
    """

    name = "tensorrt-single"

    def __init__(self, plan_path, plugin_library_path, *, kept_outputs: Sequence[str] | None = None,
                 logits_output: str = "logits", device: str | int | None = None, runtime_cache_path=None,
                 prefer: str | None = None):
        self._caches = []
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise TensorRTBackendUnavailable(f"engine plan not found: {plan_path}")
        torch, self.device = _require_cuda(device)
        self.torch = torch
        trt, self.flavor, runtime = _open_runtime(prefer)
        load_plugin_library(plugin_library_path, trt=trt)  # before deserialising: the plan names the plugin
        self.stream = torch.cuda.Stream(device=self.device)
        cache = _RuntimeCache(runtime_cache_path)
        self._caches.append(cache)
        with torch.cuda.device(self.device):
            self.engine = _Engine(trt, runtime, plan_path, torch, self.device, self.stream, runtime_cache=cache)
        e = self.engine
        if set(e.inputs) != {"input_ids", "attention_mask"}:
            raise EngineBuildError(f"{plan_path.name}: inputs {e.inputs}, expected input_ids / attention_mask")
        if logits_output not in e.outputs:
            raise EngineBuildError(f"{plan_path.name}: no output {logits_output!r} (outputs {e.outputs})")
        self.logits_output = logits_output
        self.kept_outputs = list(kept_outputs) if kept_outputs is not None else sorted(
            (n for n in e.outputs if n != logits_output), key=_natural_key)
        unknown = set(self.kept_outputs) - set(e.outputs)
        if unknown:
            raise EngineBuildError(f"{plan_path.name}: no outputs {sorted(unknown)} (outputs {e.outputs})")
        self.allocator = _make_output_allocator(trt, torch, self.device)
        for name in e.outputs:
            if not e.context.set_output_allocator(name, self.allocator):
                raise RuntimeError(f"set_output_allocator({name!r}) refused")
        self.max_batch, self.max_seq = e.max_shape("attention_mask")

    def run(self, input_ids, attention_mask) -> BackendOutput:
        torch, e = self.torch, self.engine
        ids, mask = as_int32_inputs(input_ids, attention_mask)
        ids, mask = np.ascontiguousarray(ids), np.ascontiguousarray(mask)
        if ids.shape[0] > self.max_batch:
            parts = [self.run(ids[i:i + self.max_batch], mask[i:i + self.max_batch])
                     for i in range(0, ids.shape[0], self.max_batch)]
            return BackendOutput(np.concatenate([p.logits for p in parts], axis=0),
                                 [_pad_cat([p.kept[k] for p in parts], -1) for k in range(len(self.kept_outputs))])
        e.check_inputs({"input_ids": ids.shape, "attention_mask": mask.shape})
        ctx = e.context
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            feeds = {"input_ids": torch.from_numpy(ids).to(self.device),
                     "attention_mask": torch.from_numpy(mask).to(self.device)}
            for name, t in feeds.items():
                if not ctx.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"set_input_shape({name!r}, {tuple(t.shape)}) refused")
                ctx.set_tensor_address(name, t.data_ptr())
            self.allocator.shapes.clear()
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{e.plan_path.name}: execute_async_v3 failed (see the TensorRT log)")
            self.stream.synchronize()
            results = {}
            for name in [self.logits_output] + self.kept_outputs:
                shape = self.allocator.shapes.get(name) or tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT reported no shape for output {name!r}")
                dtype = e.dtypes[name]
                n = int(np.prod(shape)) if shape else 1
                itemsize = torch.empty((), dtype=dtype).element_size()
                buf = self.allocator.buffers[name][: n * itemsize]
                results[name] = buf.view(dtype).reshape(shape).cpu().numpy()
        logits = results[self.logits_output].astype(np.float32, copy=False)
        kept = [results[n].astype(np.int32, copy=False) for n in self.kept_outputs]
        return BackendOutput(logits, kept)


def load_tensorrt_backend(artifact_dir, kind: str = "tensorrt", **kwargs):
    """Open an artifact's TensorRT engines: ``kind`` ``"tensorrt"`` (segments) or ``"tensorrt-single"``.

    The single engine is looked for at ``engines/single.<precision>.plan`` with the plugin at
    ``plugins/libadapler_plugins.so``.
    """
    artifact_dir = Path(artifact_dir)
    if kind in ("tensorrt", "tensorrt-segments", "trt"):
        return TensorRTSegmentsBackend.from_artifact(artifact_dir, **kwargs)
    if kind in ("tensorrt-single", "trt-single"):
        precision = kwargs.pop("precision", None)
        if precision is None:
            manifest = json.loads((artifact_dir / "manifest.json").read_text())
            precision = manifest.get("precision", "fp32")
        return TensorRTSingleBackend(artifact_dir / "engines" / f"single.{precision}.plan",
                                     artifact_dir / "plugins" / "libadapler_plugins.so", **kwargs)
    raise ValueError(f"unknown TensorRT backend kind {kind!r}")


__all__ = ["TensorRTBackendUnavailable", "TensorRTSegmentsBackend", "TensorRTSingleBackend",
           "load_tensorrt_backend", "BackendOutput", "TensorRTUnavailable"]
