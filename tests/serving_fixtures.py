"""Test helpers: a real tiny AdapLeR checkpoint and artifact, and a backend that fails on a marker token.

* :func:`make_tiny_checkpoint` — a randomly initialised 2-layer BERT (hidden 32) over a small WordPiece
  vocabulary, wrapped in ``AdapLeRForSequenceClassification`` and saved with ``save_checkpoint``: the
  real model code, the real checkpoint format, seconds to build. Predictions are meaningless (random
  weights); kept tokens and the chain are the real ones.
* :func:`make_tiny_artifact` — that checkpoint through ``build.build_artifact`` (export, polygraphy,
  parity against the PyTorch reference, manifest).
* :func:`with_single_engine_record` — a copy of an artifact whose manifest records a single TensorRT
  engine (placeholder plan and plugin files: no TensorRT here), written through ``write_manifest``; for
  repository-writing tests only (nothing loads the plan).
* :func:`load_marker_failing_backend` — a ``backend_factory`` for the Triton model: the artifact's real
  backend, except that a batch holding the token ``explode`` raises. The Triton model imports it through
  ``ADAPLER_PYTHONPATH`` (the folder of this file), as it imports any user factory.

Top-level imports stay light (no torch): the Triton Python-backend stub imports this module.
"""
from __future__ import annotations

import os
import pathlib
import shutil

from tiny_models import (FAIL_MARKER, TINY_ETAS, TINY_MAX_LENGTH, make_tiny_artifact,  # noqa: F401 (used by tests)
                         make_tiny_checkpoint)

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


def load_marker_failing_backend(artifact_dir, kind: str = "auto", **kwargs):
    """``backend_factory`` for the Triton model: the real backend, raising on a batch with ``explode``."""
    from adapler_export.backends import load_backend

    backend = load_backend(artifact_dir, kind, **kwargs)
    marker_id = _marker_id(artifact_dir)
    real_run = backend.run

    def run(input_ids, attention_mask):
        import numpy as np

        if np.any((np.asarray(input_ids) == marker_id) & (np.asarray(attention_mask) == 1)):
            raise RuntimeError(f"test backend: the input holds the marker token {FAIL_MARKER!r}")
        return real_run(input_ids, attention_mask)

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
