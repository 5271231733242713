"""Dev-set evaluation of the hard-removal model: accuracy, tokens kept per layer, FLOPs speedup."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .flops import flops_speedup
from .modeling_adapler import AdapLeRForSequenceClassification


@dataclass
class EvalResult:
    accuracy: float
    flops_speedup: float
    kept_per_layer: list  # mean tokens each layer runs on
    kept_fraction_per_layer: list  # mean of (kept / input length) per layer
    mean_input_length: float
    examples: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_device(model) -> torch.device:
    """Where the model's weights live: batches go there, results come back to the host."""
    return next(model.parameters()).device


def encode(tokenizer, texts, max_length: int):
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


@torch.no_grad()
def evaluate_adaptive(model: AdapLeRForSequenceClassification, tokenizer, texts, labels, max_length: int,
                      batch_size: int = 64, progress=None) -> EvalResult:
    model.eval()
    device = model_device(model)
    predictions, input_lengths, kept = [], [], []
    starts = range(0, len(texts), batch_size)
    for start in (progress(starts, "evaluate") if progress else starts):
        ids, mask = encode(tokenizer, texts[start: start + batch_size], max_length)
        out = model.forward_hard(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        predictions.append(out.logits.argmax(-1).cpu().numpy())
        input_lengths.append(mask.sum(1))
        kept.append(np.stack([length.cpu().numpy() for length in out.lengths]))
    predictions = np.concatenate(predictions)
    input_lengths = np.concatenate(input_lengths).astype(np.float64)
    kept = np.concatenate(kept, axis=1).astype(np.float64)  # [layers, N]
    config = model.config
    return EvalResult(
        accuracy=float((predictions == np.asarray(labels)).mean()),
        flops_speedup=flops_speedup(input_lengths, kept, model.num_layers, config.hidden_size,
                                    model.intermediate_size),
        kept_per_layer=[float(v) for v in kept.mean(axis=1)],
        kept_fraction_per_layer=[float(v) for v in (kept / input_lengths[None]).mean(axis=1)],
        mean_input_length=float(input_lengths.mean()),
        examples=len(predictions),
    )


@torch.no_grad()
def evaluate_full(model: AdapLeRForSequenceClassification, tokenizer, texts, labels, max_length: int,
                  batch_size: int = 64) -> float:
    """Accuracy of the backbone classifier with no removal."""
    model.eval()
    device = model_device(model)
    correct = 0
    for start in range(0, len(texts), batch_size):
        ids, mask = encode(tokenizer, texts[start: start + batch_size], max_length)
        logits = model.forward_full(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        correct += int((logits.argmax(-1).cpu().numpy() == np.asarray(labels[start: start + batch_size])).sum())
    return correct / len(texts)
