"""Stage 2: gradient x input saliencies from the fine-tuned model (the CP training targets).

Per example: the gradient of the gold label's logit with respect to the embedding output
(hidden_states[0]), times that output, L2 norm over the hidden dimension; padding is 0; no further
normalisation (the official code's default). One vector per example, reused for every layer's CP.
The official recipe averages the saliencies of the three best stage-1 epochs; we take the best epoch's
model alone (one third of the cost) and say so in the checkpoint's training record.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adapler_export.progress import progress

from .common import read_marker, write_json_atomic
from .data import EncodedDataset


def compute_saliencies(model, tokenizer, split, max_length: int, batch_size: int = 64, show=True) -> list:
    model.eval()  # dropout off: the saliency of the model as it predicts
    dataset = EncodedDataset(tokenizer, split, max_length)
    saliencies = [None] * len(dataset)
    for batch in progress(dataset.loader(batch_size, shuffle=False), "stage 2 saliency", enabled=show):
        embeddings = model.embed(batch["input_ids"]).detach().requires_grad_(True)
        logits = model.forward_full(batch["input_ids"], batch["attention_mask"], embeddings=embeddings)
        gold = logits.gather(1, batch["labels"][:, None]).sum()
        (grad,) = torch.autograd.grad(gold, embeddings)
        sal = ((grad * embeddings).norm(dim=-1) * batch["attention_mask"]).detach().numpy()
        for row, index in enumerate(batch["index"].tolist()):
            saliencies[index] = sal[row, : int(batch["attention_mask"][row].sum())].astype(np.float32)
    return saliencies


def run_stage2(model, tokenizer, data, max_length: int, stage_dir: Path, log=print) -> list:
    path = stage_dir / "saliency.npz"
    marker = read_marker(stage_dir / "done.json")
    if marker is not None and path.is_file():
        log(f"stage 2: already done ({marker['examples']} examples)")
        stored = np.load(path, allow_pickle=False)
        return np.split(stored["values"], stored["offsets"][1:-1])
    saliencies = compute_saliencies(model, tokenizer, data["train"], max_length)
    lengths = np.array([len(s) for s in saliencies])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".saliency.tmp.npz")
    np.savez(tmp, values=np.concatenate(saliencies), offsets=offsets)
    tmp.replace(path)
    write_json_atomic(stage_dir / "done.json", {"examples": len(saliencies)})
    log(f"stage 2: {len(saliencies)} saliency vectors")
    return saliencies
