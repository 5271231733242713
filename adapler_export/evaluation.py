"""Dev-set evaluation of the hard-removal model: accuracy (and F1 where the task reports it), tokens kept per
layer, FLOPs speedup."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .flops import flops_speedup
from .modeling_adapler import AdapLeRForSequenceClassification
from .serving import tokenization
from .serving.tokenization import Cut

ACCURACY, F1 = "accuracy", "f1"


@dataclass
class EvalResult:
    accuracy: float
    flops_speedup: float
    kept_per_layer: list  # mean tokens each layer runs on
    kept_fraction_per_layer: list  # mean of (kept / input length) per layer
    mean_input_length: float
    examples: int
    f1: float | None = None  # F1 of class 1, where the task reports it (MRPC)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.f1 is None:
            data.pop("f1")
        return data


def model_device(model) -> torch.device:
    """Where the model's weights live: batches go there, results come back to the host."""
    return next(model.parameters()).device


def encode(tokenizer, texts, cut: Cut | int, pairs=None) -> tuple:
    """The arrays a backend's `run` takes for `texts` (and their `pairs`), padded to the longest row:
    (input_ids, attention_mask), and token_type_ids for sentence pairs. The library's one tokenisation rule
    (`serving.tokenization.encode`); `cut`: the model's max length and truncation rule (`AdapLeRConfig.cut`,
    `Manifest.cut`), or a bare max length, cut by `head`. Every function below that takes `cut` passes it here."""
    cut = Cut.of(cut)
    return tokenization.encode(tokenizer, list(texts), cut.max_length, pairs=pairs,
                               truncation=cut.truncation).model_inputs()


def encoded_batches(tokenizer, texts, cut: Cut | int, batch_size: int, pairs=None, progress=None, desc: str = ""):
    """`encode` of consecutive batches of `texts` (and `pairs`): what evaluation and parity loop over."""
    cut = Cut.of(cut)
    starts = range(0, len(texts), batch_size)
    for start in (progress(starts, desc) if progress else starts):
        end = start + batch_size
        yield encode(tokenizer, texts[start:end], cut, None if pairs is None else pairs[start:end])


def classification_scores(predictions, labels, metrics=(ACCURACY,)) -> dict:
    """{"accuracy": ...}, and "f1" (F1 of class 1, the positive class, as GLUE reports MRPC) where `metrics`
    asks for it and the labels are binary."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = {ACCURACY: float((predictions == labels).mean())}
    if F1 in metrics and set(np.unique(labels)) <= {0, 1}:
        true_positive = float(((predictions == 1) & (labels == 1)).sum())
        predicted, actual = float((predictions == 1).sum()), float((labels == 1).sum())
        scores[F1] = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
    return scores


def scores_text(accuracy: float, f1: float | None = None) -> str:
    """How logs print dev scores: "dev accuracy 0.8456", with ", dev F1 0.8901" where the task reports F1."""
    return f"dev accuracy {accuracy:.4f}" + (f", dev F1 {f1:.4f}" if f1 is not None else "")


def _tensors(inputs, device) -> list:
    return [torch.from_numpy(array).to(device) for array in inputs]


@torch.no_grad()
def evaluate_adaptive(model: AdapLeRForSequenceClassification, tokenizer, texts, labels, cut: Cut | int,
                      batch_size: int = 64, progress=None, pairs=None, metrics=(ACCURACY,)) -> EvalResult:
    model.eval()
    device = model_device(model)
    predictions, input_lengths, kept = [], [], []
    for inputs in encoded_batches(tokenizer, texts, cut, batch_size, pairs, progress, "evaluate"):
        out = model.forward_hard(*_tensors(inputs, device))
        predictions.append(out.logits.argmax(-1).cpu().numpy())
        input_lengths.append(inputs[1].sum(1))
        kept.append(np.stack([length.cpu().numpy() for length in out.lengths]))
    predictions = np.concatenate(predictions)
    input_lengths = np.concatenate(input_lengths).astype(np.float64)
    kept = np.concatenate(kept, axis=1).astype(np.float64)  # [layers, N]
    config = model.config
    scores = classification_scores(predictions, labels, metrics)
    return EvalResult(
        accuracy=scores[ACCURACY],
        flops_speedup=flops_speedup(input_lengths, kept, model.num_layers, config.hidden_size,
                                    model.intermediate_size),
        kept_per_layer=[float(v) for v in kept.mean(axis=1)],
        kept_fraction_per_layer=[float(v) for v in (kept / input_lengths[None]).mean(axis=1)],
        mean_input_length=float(input_lengths.mean()),
        examples=len(predictions),
        f1=scores.get(F1),
    )


@torch.no_grad()
def evaluate_full_scores(model: AdapLeRForSequenceClassification, tokenizer, texts, labels, cut: Cut | int,
                         batch_size: int = 64, pairs=None, metrics=(ACCURACY,)) -> dict:
    """`classification_scores` of the backbone classifier with no removal."""
    model.eval()
    device = model_device(model)
    predictions = [model.forward_full(*_tensors(inputs, device)).argmax(-1).cpu().numpy()
                   for inputs in encoded_batches(tokenizer, texts, cut, batch_size, pairs)]
    return classification_scores(np.concatenate(predictions), labels, metrics)


def evaluate_full(model: AdapLeRForSequenceClassification, tokenizer, texts, labels, cut: Cut | int,
                  batch_size: int = 64, pairs=None) -> float:
    """Accuracy of the backbone classifier with no removal."""
    return evaluate_full_scores(model, tokenizer, texts, labels, cut, batch_size, pairs)[ACCURACY]
