"""Test helpers: a real tiny AdapLeR checkpoint and artifact, a backend that fails on a marker token, and a
stand-in for Triton's stock onnxruntime backend.

* :func:`make_tiny_checkpoint` — a randomly initialised 2-layer BERT (hidden 32) over a small WordPiece
  vocabulary, wrapped in ``AdapLeRForSequenceClassification`` and saved with ``save_checkpoint``: the
  real model code, the real checkpoint format, seconds to build. Predictions are meaningless (random
  weights); kept tokens and the chain are the real ones.
* :func:`make_tiny_artifact` — that checkpoint through ``build.build_artifact`` (export, polygraphy,
  parity against the PyTorch reference, manifest).
* :func:`with_single_engine_record` — a copy of an artifact whose manifest records a single TensorRT
  engine (placeholder plan and plugin files: no TensorRT here), written through ``write_manifest``; for
  repository-writing tests only (nothing loads the plan).
* :func:`without_one_graph` — a copy of an artifact as built before the one graph existed (no
  ``onnx/model.onnx``, no ``one_graph`` record), written through ``write_manifest``.
* :func:`load_marker_failing_backend` — a ``backend_factory`` for the Triton model: the artifact's real
  backend, except that a batch holding the token ``explode`` raises. The Triton model imports it through
  ``ADAPLER_PYTHONPATH`` (the folder of this file), as it imports any user factory.
* :class:`OnnxRuntimeStandIn` / :func:`onnxruntime_stand_in` — a Python-based Triton backend named
  ``onnxruntime`` for the wheel's server, which ships no stock ONNX Runtime backend (see the class).

Top-level imports stay light (no torch): the Triton Python-backend stub imports this module.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

from tiny_models import (DATA_DIR, FAIL_MARKER, TINY_ETAS, TINY_MAX_LENGTH,  # noqa: F401 (used by tests)
                         make_tiny_artifact, make_tiny_checkpoint)

TESTS_DIR = pathlib.Path(__file__).resolve().parent


def with_single_engine_record(artifact, output, max_batch: int = 8) -> pathlib.Path:
    """A copy of ``artifact`` whose manifest records a single TensorRT engine with plugin layers.

    The plan and plugin library are placeholder bytes (building them needs full TensorRT and a GPU); the
    record has the fields ``engines.build_artifact_engines`` writes (profile from ``engines.input_profile``,
    the network's I/O), and the manifest is rewritten by the one writer, ``write_manifest``.
    """
    from adapler_export.artifact import read_manifest, write_manifest
    from adapler_export.engines import PLUGIN_LIBRARY, PLUGINS_DIR, SINGLE_GRAPH, input_profile, plan_relpath

    output = pathlib.Path(output)
    shutil.copytree(artifact, output)
    manifest = read_manifest(output)
    plan, plugin = plan_relpath(SINGLE_GRAPH, manifest.precision), f"{PLUGINS_DIR}/{PLUGIN_LIBRARY}"
    for rel, content in ((plan, b"placeholder engine"), (plugin, b"placeholder plugin library")):
        (output / rel).parent.mkdir(parents=True, exist_ok=True)
        (output / rel).write_bytes(content)
    segment0 = manifest.specs()[0]
    logits, *kept = manifest.single_graph["outputs"]
    manifest.engines.single = {
        "plan_path": plan, "onnx_path": f"onnx/{SINGLE_GRAPH}", "precision": manifest.precision,
        "profiles": [input_profile(segment0.inputs, max_batch, manifest.max_length)], "plugin_library": plugin,
        "inputs": {name: {"dtype": dtype, "shape": [-1, -1]} for name, (dtype, _) in segment0.inputs.items()},
        "outputs": {logits: {"dtype": "float32", "shape": [-1, len(manifest.labels)]},
                    **{name: {"dtype": "int32", "shape": [-1, -1]} for name in kept}},
        "targets": None, "tf32": False, "timing_cache": "placeholder", "build_seconds": 0.0,
        "plan_bytes": len(b"placeholder engine"), "onnx_bytes": 0,
    }
    manifest.engines.not_built.pop("single", None)
    write_manifest(output, manifest)
    return output


def without_one_graph(artifact, output) -> pathlib.Path:
    """A copy of ``artifact`` without its one graph, as artifacts built before it existed are."""
    from adapler_export.artifact import read_manifest, write_manifest

    output = pathlib.Path(output)
    shutil.copytree(artifact, output)
    manifest = read_manifest(output)
    (output / manifest.one_graph["file"]).unlink()
    manifest.one_graph = None
    write_manifest(output, manifest)
    return output


def load_marker_failing_backend(artifact_dir, kind: str = "auto", **kwargs):
    """``backend_factory`` for the Triton model: the real backend, raising on a batch with ``explode``."""
    from adapler_export.backends import load_backend

    backend = load_backend(artifact_dir, kind, **kwargs)
    marker_id = _marker_id(artifact_dir)
    real_run = backend.run

    def run(input_ids, attention_mask, *token_types):
        import numpy as np

        if np.any((np.asarray(input_ids) == marker_id) & (np.asarray(attention_mask) == 1)):
            raise RuntimeError(f"test backend: the input holds the marker token {FAIL_MARKER!r}")
        return real_run(input_ids, attention_mask, *token_types)

    backend.run = run
    return backend


def _marker_id(artifact_dir) -> int:
    from adapler_export.artifact import resolve_artifact
    from adapler_export.serving.tokenization import load_tokenizer

    return load_tokenizer(resolve_artifact(artifact_dir) / "tokenizer").convert_tokens_to_ids(FAIL_MARKER)


def python_path_env() -> dict:
    """Environment for a TritonServer whose Triton model imports this module as a backend factory."""
    env = dict(os.environ)
    env["ADAPLER_PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("ADAPLER_PYTHONPATH")) if p)
    return env


# ---- a stand-in for Triton's stock onnxruntime backend ---------------------------------------------------------
_ORT_TYPES = {"tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32",
              "tensor(float16)": "TYPE_FP16", "tensor(bool)": "TYPE_BOOL"}


class OnnxRuntimeStandIn:
    """``TritonPythonModel`` of a Python-based backend named ``onnxruntime``.

    The nvidia-pytriton wheel's server ships only the Python backend. Given ``<backends>/onnxruntime/model.py``
    (``TritonServer(python_backends=...)``) it runs a model whose config says ``backend: "onnxruntime"``
    through the Python backend instead: the server then parses, completes and validates ``adapler_onnx``'s
    config exactly as written, batches its requests and runs the ensemble in front of it. Only the execution
    differs from the stock backend: ONNX Runtime's Python API here, its C++ API there. Like the stock backend it

    * refuses a config whose inputs differ from the graph's, or whose outputs the graph lacks, by name, type,
      or dims (with ``max_batch_size`` > 0 the graph's first dim must be dynamic and is left out; a config dim
      must equal the graph's where the graph's is fixed);
    * runs the requests of one ``execute`` (the dynamic batcher joins only requests of equal input shapes) as
      one batch and gives each request its rows, so a joined batch's variable-length outputs are as long as
      its longest row.

    It logs each joined batch (``onnxruntime stand-in: ran N requests as one batch``).
    """

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"],
                            config.get("default_model_filename") or "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        graph_inputs = {t.name: t for t in self.session.get_inputs()}
        graph_outputs = {t.name: t for t in self.session.get_outputs()}
        if sorted(graph_inputs) != sorted(t["name"] for t in config["input"]):
            raise ValueError(f"config inputs {[t['name'] for t in config['input']]}, graph {sorted(graph_inputs)}")
        for where, tensors, graph in (("input", config["input"], graph_inputs),
                                      ("output", config["output"], graph_outputs)):
            for tensor in tensors:
                self._check(where, tensor, graph.get(tensor["name"]))
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def _check(self, where: str, tensor: dict, graph_tensor) -> None:
        name, dims = tensor["name"], [int(d) for d in tensor["dims"]]
        if graph_tensor is None:
            raise ValueError(f"{where} {name!r} is not in the graph")
        graph_dims = [d if isinstance(d, int) else -1 for d in graph_tensor.shape]
        if self.batching:
            if graph_dims[0] != -1:
                raise ValueError(f"{where} {name!r}: max_batch_size > 0 needs a dynamic first dim, graph has "
                                 f"{graph_dims}")
            graph_dims = graph_dims[1:]
        if _ORT_TYPES.get(graph_tensor.type) != tensor["data_type"]:
            raise ValueError(f"{where} {name!r} is {tensor['data_type']}, the graph's {graph_tensor.type}")
        if len(dims) != len(graph_dims) or any(g != -1 and g != d for g, d in zip(graph_dims, dims)):
            raise ValueError(f"{where} {name!r} has dims {dims}, the graph {graph_dims}")

    def execute(self, requests):
        import numpy as np
        import triton_python_backend_utils as pb_utils

        feeds = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
                 for r in requests]
        rows = [len(f[self.inputs[0]]) for f in feeds]
        joined = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        results = self.session.run(self.outputs, joined)
        if len(requests) > 1:
            pb_utils.Logger.log_info(f"onnxruntime stand-in: ran {len(requests)} requests as one batch of "
                                     f"{sum(rows)} rows")
        bounds = np.cumsum([0] + rows)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, value[a:b]) for name, value in zip(self.outputs,
                                                                                                  results)])
                for a, b in zip(bounds[:-1], bounds[1:])]


def onnxruntime_stand_in(folder) -> dict:
    """``TritonServer(python_backends=...)`` for :class:`OnnxRuntimeStandIn`: writes ``folder/model.py``, which
    imports it from this folder (the backend stub ignores PYTHONPATH)."""
    model_py = pathlib.Path(folder) / "model.py"
    model_py.write_text(f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\n"
                        "from serving_fixtures import OnnxRuntimeStandIn as TritonPythonModel  # noqa: E402,F401\n",
                        encoding="utf-8")
    return {"onnxruntime": model_py}
