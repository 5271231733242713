"""Stage 2: gradient x input saliencies from the fine-tuned model (the CP training targets).

Per example: the gradient of the gold label's logit with respect to the embedding output
(hidden_states[0]), times that output, L2 norm over the hidden dimension; padding is 0; no further
normalisation (the official code's default). One vector per example, reused for every layer's CP.
As in the official recipe the vectors are averaged over the best stage-1 epochs' models (each epoch's
vectors are stored as they are computed, so an interrupted stage resumes per epoch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adapler_export.evaluation import model_device
from adapler_export.progress import progress
from adapler_export.serving.tokenization import Cut

from .common import load_model_state, read_marker, write_json_atomic
from .data import EncodedDataset


def compute_saliencies(model, tokenizer, split, cut: Cut | int, batch_size: int = 64, show=True) -> list:
    """One saliency vector per example of `split`, encoded as stages 1 and 3 encode it (`cut`)."""
    model.eval()  # dropout off: the saliency of the model as it predicts
    device = model_device(model)
    dataset = EncodedDataset(tokenizer, split, cut)
    saliencies = [None] * len(dataset)
    # Length-grouped batches pad little; every example's saliency is its own, whatever batch it is in.
    batches = dataset.loader(batch_size, shuffle=False, length_grouped=True)
    for batch in progress(batches, "stage 2 saliency", enabled=show):
        batch = {key: value.to(device) for key, value in batch.items()}
        embeddings = model.embed(batch["input_ids"], batch.get("token_type_ids")).detach().requires_grad_(True)
        logits = model.forward_full(batch["input_ids"], batch["attention_mask"], embeddings=embeddings)
        gold = logits.gather(1, batch["labels"][:, None]).sum()
        (grad,) = torch.autograd.grad(gold, embeddings)
        sal = ((grad * embeddings).norm(dim=-1) * batch["attention_mask"]).detach().cpu().numpy()
        for row, index in enumerate(batch["index"].tolist()):
            saliencies[index] = sal[row, : int(batch["attention_mask"][row].sum())].astype(np.float32)
    return saliencies


def save_saliencies(path: Path, saliencies: list) -> None:
    """One flat array plus offsets (examples have different lengths), written atomically."""
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in saliencies])])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, values=np.concatenate(saliencies), offsets=offsets)
    tmp.replace(path)


def load_saliencies(path: Path) -> list:
    stored = np.load(path, allow_pickle=False)
    return np.split(stored["values"], stored["offsets"][1:-1])


def run_stage2(model, tokenizer, data, cut: Cut | int, checkpoints: dict, stage_dir: Path, log=print,
               batch_size: int = 64) -> list:
    """Saliencies of `data["train"]` averaged over `checkpoints` ({stage-1 epoch: weights path}), computed
    `batch_size` examples at a time (the pipeline passes the training batch: a saliency is a forward and a
    backward pass, so a larger batch than training's could need more memory than training did).
    The model is left with the weights of the last checkpoint it loaded (the caller reloads what it needs)."""
    path = stage_dir / "saliency.npz"
    marker = read_marker(stage_dir / "done.json")
    if marker is not None and path.is_file():
        log(f"stage 2: already done ({marker['examples']} examples, epochs {marker['epochs']})")
        return load_saliencies(path)
    per_epoch = []
    for epoch, weights in checkpoints.items():
        epoch_path = stage_dir / f"saliency_epoch_{epoch}.npz"
        if epoch_path.is_file():
            per_epoch.append(load_saliencies(epoch_path))
            continue
        load_model_state(model, weights)
        per_epoch.append(compute_saliencies(model, tokenizer, data["train"], cut, batch_size=batch_size))
        save_saliencies(epoch_path, per_epoch[-1])
        log(f"stage 2: saliencies of stage-1 epoch {epoch} ({len(per_epoch)}/{len(checkpoints)})")
    saliencies = [np.mean(vectors, axis=0).astype(np.float32) for vectors in zip(*per_epoch)]
    save_saliencies(path, saliencies)
    for epoch in checkpoints:
        (stage_dir / f"saliency_epoch_{epoch}.npz").unlink(missing_ok=True)
    write_json_atomic(stage_dir / "done.json", {"examples": len(saliencies), "epochs": list(checkpoints)})
    log(f"stage 2: {len(saliencies)} saliency vectors, averaged over stage-1 epochs {list(checkpoints)}")
    return saliencies
