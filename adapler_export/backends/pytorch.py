"""The reference backend: the checkpoint's hard-removal forward in PyTorch (fp32)."""
from __future__ import annotations

import numpy as np
import torch

from . import Backend, BackendOutput, as_int32_inputs


class PyTorchBackend(Backend):
    name = "pytorch"

    def __init__(self, model):
        self.model = model.eval()

    @classmethod
    def from_checkpoint(cls, name_or_path) -> "PyTorchBackend":
        from ..checkpoint import load_checkpoint

        return cls(load_checkpoint(name_or_path).model)

    def run(self, input_ids, attention_mask) -> BackendOutput:
        input_ids, attention_mask = as_int32_inputs(input_ids, attention_mask)
        out = self.model.forward_hard(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return BackendOutput(out.logits.float().numpy(), [k.numpy().astype(np.int32) for k in out.kept])
