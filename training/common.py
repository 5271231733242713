"""Pieces every training stage shares: the Accelerate setup, optimisers, progress bars, stage markers."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from adapler_export.serving.tokenization import HEAD


# Settings added after work directories existed, with the values every earlier run had: a setting at one of
# these values stays out of the work-directory key, so earlier runs keep their directories and resume.
KEY_NEUTRAL_VALUES = {"truncation": (None, HEAD), "grad_accumulation": (1,),
                      "official_steps": (None,)}  # no learning-rate scaling: what every run before it did


def work_settings(settings: dict) -> dict:
    """A stage config's settings (a dict) as its work-directory key takes them: without the settings at their
    key-neutral values (truncation "head", no gradient accumulation); "head+tail" or accumulating batches
    are part of the key (other inputs or other steps, other models)."""
    return {k: v for k, v in settings.items() if not (k in KEY_NEUTRAL_VALUES and v in KEY_NEUTRAL_VALUES[k])}


def accumulation_groups(loader, accumulation: int, batches: int | None = None):
    """The loader's batches in groups of `accumulation`, one group per optimiser step (the last group of an
    epoch may be shorter); `batches` caps how many batches are drawn. A step averages its group's gradients:
    each batch's loss is scaled by 1 / len(group), so N batches of B rows step as one batch of N*B rows
    (exactly, up to rounding, when the batches are the same size)."""
    group, drawn = [], 0
    for batch in loader:
        if batches is not None and drawn >= batches:
            break
        group.append(batch)
        drawn += 1
        if len(group) == accumulation:
            yield group
            group = []
    if group:
        yield group


def optimizer_steps(batches: int, accumulation: int) -> int:
    """Optimiser steps for `batches` batches, `accumulation` batches per step."""
    return -(-batches // accumulation)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(seed: int):
    """One CPU process here; `accelerate launch` gives multi-GPU / multi-node DDP with the same code."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator()
    set_seed(seed)
    if accelerator.device.type == "cuda":
        # TF32 matrix products, as TensorFlow (the official code) uses by default on Ampere and later GPUs.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def warmup_then_linear_decay(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over `warmup_ratio` of the steps, then linear decay to 0 (the official schedule)."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def adamw_with_warmup(params, lr: float, weight_decay: float, total_steps: int, warmup_ratio: float = 0.06,
                      eps: float = 1e-8, extra_groups: list | None = None):
    """AdamW (no decay on biases and LayerNorm weights) with linear warm-up and decay.
    `extra_groups`: [(named_params, lr)] trained at their own learning rate (the CPs in stage 3)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = []
    for named, group_lr in [(list(params), lr)] + list(extra_groups or []):
        named = list(named)
        groups.append({"params": [p for n, p in named if not any(k in n for k in no_decay)],
                       "weight_decay": weight_decay, "lr": group_lr})
        groups.append({"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0,
                       "lr": group_lr})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, eps=eps)
    return optimizer, warmup_then_linear_decay(optimizer, total_steps, warmup_ratio)


def save_model_state(model, path: Path) -> None:
    """The model's weights, written atomically (a crash never leaves half a file under `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def load_model_state(model, path: Path) -> None:
    # map_location: a work directory written on a GPU machine resumes on a CPU one (and back)
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


def epoch_model_path(stage_dir: Path, epoch: int) -> Path:
    """Where a stage keeps one epoch's weights (0-based epoch)."""
    return stage_dir / f"epoch_{epoch}" / "model.pt"


def read_marker(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
