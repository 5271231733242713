"""PyTorch backends: the reference (the checkpoint's hard-removal forward) and the segment modules.

- `PyTorchBackend`: `AdapLeRForSequenceClassification.forward_hard` in fp32 — the reference every other
  backend is compared with (readable, written once in modeling_adapler.py).
- `PyTorchSegmentsBackend`: the exportable segment modules (`segments.segment_modules`, at an artifact's
  precision) run by the one chain, on any device, with any link (the reference, or the CUDA kernel).
  Parity records each segment's exact inputs/outputs through it; GPU proofs and benchmarks run it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..chain import run_chain
from . import Backend, BackendOutput, SegmentChainBackend


class PyTorchBackend(Backend):
    name = "pytorch"

    def __init__(self, model):
        self.model = model.eval()
        self.takes_token_types = model.text_pair  # a single-text model reads all-zero types, as it was trained

    @classmethod
    def from_checkpoint(cls, name_or_path) -> "PyTorchBackend":
        from ..checkpoint import load_checkpoint

        return cls(load_checkpoint(name_or_path).model)

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        types = None if token_type_ids is None else torch.from_numpy(token_type_ids)
        out = self.model.forward_hard(torch.from_numpy(input_ids), torch.from_numpy(attention_mask), types)
        return BackendOutput(out.logits.float().numpy(), [k.numpy().astype(np.int32) for k in out.kept])


class PyTorchSegmentsBackend(SegmentChainBackend):
    """Segment modules chained by `chain.run_chain`. `link`: a callable with the link's signature
    (default `link.token_compact`, which runs the torch reference on tensors of any device)."""

    name = "pytorch-segments"

    def __init__(self, model, precision: str = "fp32", device="cpu", link=None):
        from ..segments import precision_model, segment_modules, segment_specs

        config = model.config
        specs = segment_specs(model.num_layers, config.hidden_size, config.num_labels, precision, model.text_pair)
        super().__init__(specs, [float(e) for e in model.eta.detach()])
        self.device = torch.device(device)
        self.modules = [m.to(self.device) for m in segment_modules(precision_model(model, precision))]
        if link is not None:
            self.link = link

    def run_segment(self, index: int, feeds: dict) -> dict:
        with torch.inference_mode():
            outputs = self.modules[index](*feeds.values())
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.specs[index].outputs, outputs))

    def run_tensors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, on_segment=None,
                    token_type_ids: torch.Tensor | None = None):
        """Tensors in (on the backend's device), `ChainResult` of tensors out: for timing and recording."""
        return run_chain(self.specs, self.etas, self.run_segment, self.link, input_ids, attention_mask,
                         on_segment=on_segment, token_type_ids=token_type_ids)

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None) -> BackendOutput:
        def on_device(array):
            return None if array is None else torch.from_numpy(array).to(self.device)

        result = self.run_tensors(on_device(input_ids), on_device(attention_mask),
                                  token_type_ids=on_device(token_type_ids))
        return BackendOutput(result.logits.float().cpu().numpy(), [k.cpu().numpy() for k in result.kept])
