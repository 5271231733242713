"""The baseline the adaptive pipeline is measured against: the same checkpoint as ONE static model.

No Contribution Predictors, no removal: embeddings + every encoder layer + classifier in one ONNX graph
(`full.onnx`, dynamic `batch`/`seq` axes, opset 17), i.e. `AdapLeRForSequenceClassification.forward_full`.
Runners with the backend interface (`run(input_ids, attention_mask[, token_type_ids]) -> BackendOutput`; a
sentence-pair model's full graph takes its token types, as its segment 0 does):

- `FullModelBackend`: ONNX Runtime, with exactly the adaptive backend's session options
  (`adapler_export.backends.onnxruntime.session_options`), so a speed ratio compares models, not settings;
- `PyTorchFullBackend`: `forward_full` in PyTorch (CPU or CUDA, fp32 or fp16).

`kept` is what "no removal" means in the interface: for each of the L links, the live positions of every
row (order preserved, [B, S'] with S' = the longest row, -1 padding), the same list object L times.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backends import Backend, BackendOutput, given_inputs
from .errors import AdaplerError
from .link import live_positions
from .modeling_adapler import AdapLeRForSequenceClassification, attention_bias_from_mask, encoder_layer
from .segments import PRECISIONS, SegmentSpec, example_inputs, export_module, precision_model
from .specs import PAIR_MODEL_INPUTS, TOKEN_TYPE_IDS, model_inputs
from .storage import atomic_file

FULL_FILE = "full.onnx"


class FullModel(nn.Module):
    """`forward_full` as an exportable module. fp32: exactly `model.forward_full`. fp16 (a model from
    `segments.precision_model`): the embedding output is cast to the encoder's dtype, as segment 0 does."""

    def __init__(self, model: AdapLeRForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        model = self.model
        dtype = next(model.layers.parameters()).dtype
        if dtype == torch.float32:
            return model.forward_full(input_ids, attention_mask, token_type_ids).float()
        hidden = model.embed(input_ids, token_type_ids).to(dtype)
        bias = attention_bias_from_mask(attention_mask, dtype)
        for layer in model.layers:
            hidden = encoder_layer(layer, hidden, bias, model.layout)
        return model.head(hidden).float()


def full_model_spec(num_labels: int, text_pair: bool = False) -> SegmentSpec:
    """full.onnx's I/O contract, in the segments' terms (`segments.export_module` validates against it): segment
    0's inputs (token types too for a sentence-pair model), the logits."""
    ids = ("int32", ["batch", "seq"])
    return SegmentSpec(0, {name: ids for name in model_inputs(text_pair)},
                       {"logits": ("float32", ["batch", num_labels])},
                       "the full model: embeddings, every layer, classifier; no removal")


def export_full_onnx(model: AdapLeRForSequenceClassification, out_path, precision: str = "fp32",
                     validate_inputs: dict | None = None, tolerance: float | None = None) -> Path:
    """Export `forward_full` as one ONNX graph, validated like every segment (`segments.export_module`) on
    `validate_inputs` or a random padded batch. Written atomically."""
    if precision not in PRECISIONS:
        raise AdaplerError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = FullModel(precision_model(model, precision)).eval()
    spec = full_model_spec(model.config.num_labels, model.text_pair)
    feeds = validate_inputs or example_inputs(spec, seq=9, vocab=model.config.vocab_size,
                                              type_vocab=getattr(model.config, "type_vocab_size", 1))
    feeds = {k: np.ascontiguousarray(feeds[k], dtype=np.int32) for k in spec.inputs}
    with atomic_file(out_path) as tmp:
        export_module(module, feeds, spec, tmp, precision, tolerance)
    return out_path


class FullModelBackend(Backend):
    """full.onnx in ONNX Runtime, same session options and providers as `OnnxRuntimeBackend`."""

    name = "onnxruntime-full"

    def __init__(self, path, num_layers: int, device: str = "auto", threads: int | None = None):
        from .backends.onnxruntime import open_session, providers, session_options

        path = Path(path)
        if not path.is_file():
            raise AdaplerError(f"no full model at {path} (export it with adapler_export.baseline.export_full_onnx)")
        self.session = open_session(path, session_options(threads), providers(device))
        self.providers = self.session.get_providers()
        self.num_layers = int(num_layers)
        self.takes_token_types = TOKEN_TYPE_IDS in {i.name for i in self.session.get_inputs()}

    def _run_impl(self, input_ids, mask, token_type_ids=None) -> BackendOutput:
        feeds = dict(zip(PAIR_MODEL_INPUTS, given_inputs(input_ids, mask, token_type_ids)))
        logits = self.session.run(None, feeds)[0]
        positions = live_positions(mask)
        return BackendOutput(logits.astype(np.float32, copy=False), [positions] * self.num_layers)


class PyTorchFullBackend(Backend):
    """`forward_full` in PyTorch: fp32 on the CPU is the reference; `device`/`precision` for GPU runs."""

    name = "pytorch-full"

    def __init__(self, model: AdapLeRForSequenceClassification, device: str = "cpu", precision: str = "fp32"):
        self.device = torch.device(device)
        self.module = FullModel(precision_model(model, precision)).eval().to(self.device)
        self.num_layers = model.num_layers
        self.takes_token_types = model.text_pair

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        """Tensors in, tensor out, on the backend's device (for timing without host copies)."""
        with torch.inference_mode():
            return self.module(input_ids, attention_mask, token_type_ids)

    def _run_impl(self, input_ids, mask, token_type_ids=None) -> BackendOutput:
        arrays = given_inputs(input_ids, mask, token_type_ids)
        logits = self.logits(*(torch.from_numpy(a).to(self.device) for a in arrays))
        positions = live_positions(mask)
        return BackendOutput(logits.float().cpu().numpy(), [positions] * self.num_layers)
