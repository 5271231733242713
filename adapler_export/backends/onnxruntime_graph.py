"""ONNX Runtime backend for the one graph (`onnx/model.onnx`, `adapler_export.onnx_graph`): the whole adaptive
model — segments and links in standard ONNX ops — in ONE session. No Python between layers, no host link.

Session options are the segment chain's (`backends.onnxruntime.session_options`: spinning off, the shared
CPU arena), so the two compare as models, not settings. CPU, or the CUDA execution provider where installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import AdaplerError, BackendUnavailable
from ..specs import ETA_METADATA, PAIR_MODEL_INPUTS, TOKEN_TYPE_IDS, model_output_names
from . import Backend, BackendOutput, given_inputs

ONE_GRAPH_RELPATH = "onnx/model.onnx"  # where `adapler-export build` writes it (onnx_graph.ONE_GRAPH)


class OneGraphBackend(Backend):
    """model.onnx in one ONNX Runtime session: `run(ids, mask[, token types]) -> BackendOutput(logits, kept)`;
    the graph's own inputs say whether it takes token types (a sentence-pair model)."""

    name = "onnxruntime-graph"

    def __init__(self, path, num_links: int, device: str = "auto", threads: int | None = None,
                 etas: list | None = None):
        from .onnxruntime import open_session, providers, session_options

        path = Path(path)
        if not path.is_file():
            raise AdaplerError(f"no one graph at {path} (write it with adapler_export.onnx_graph.build_one_graph)")
        self.session = open_session(path, session_options(threads), providers(device))
        self.providers = self.session.get_providers()
        self.output_names = model_output_names(int(num_links))
        found = [o.name for o in self.session.get_outputs()]
        if sorted(found) != sorted(self.output_names):
            raise AdaplerError(f"{path.name} has outputs {found}, expected {self.output_names} ({num_links} links)")
        self.takes_token_types = TOKEN_TYPE_IDS in {i.name for i in self.session.get_inputs()}
        if etas is not None:
            self._check_etas(path, etas)

    def _check_etas(self, path: Path, etas: list) -> None:
        """The graph's thresholds (constants in it) must be the ones the caller (the manifest) states."""
        recorded = self.session.get_modelmeta().custom_metadata_map.get(ETA_METADATA)
        if recorded is None:
            raise AdaplerError(f"{path.name} records no thresholds ({ETA_METADATA} metadata); rebuild it")
        graph_etas = [float(e) for e in json.loads(recorded)]
        stated = [float(np.float32(e)) for e in etas]
        if graph_etas != stated:
            raise AdaplerError(f"{path.name} was built with eta {graph_etas}, the manifest says {stated}: rebuild the "
                               f"artifact")

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        feeds = dict(zip(PAIR_MODEL_INPUTS, given_inputs(input_ids, attention_mask, token_type_ids)))
        logits, *kept = self.session.run(self.output_names, feeds)
        return BackendOutput(logits.astype(np.float32, copy=False), kept)

    def close(self) -> None:
        self.session = None


def open_artifact(artifact_dir: Path, manifest, log=None, **kwargs) -> OneGraphBackend:
    """Registry entry `onnxruntime-graph`: the artifact's one graph in one session (`log` unused). The file is
    the manifest's `one_graph["file"]` where the manifest records one, else `onnx/model.onnx`."""
    relpath = (getattr(manifest, "one_graph", None) or {}).get("file", ONE_GRAPH_RELPATH)
    path = Path(artifact_dir) / relpath
    if not path.is_file():
        raise BackendUnavailable(f"the artifact {artifact_dir} has no {relpath} (built before the one graph "
                                 f"existed): rebuild it with `adapler-export build`")
    return OneGraphBackend(path, manifest.num_layers, etas=manifest.eta, **kwargs)
