"""Pieces every training stage shares: the Accelerate setup, optimisers, progress bars, stage markers."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from adapler_export.errors import AdaplerError
from adapler_export.serving.tokenization import HEAD


# Settings added after work directories existed, with the values every earlier run had: a setting at one of
# these values stays out of the work-directory key, so earlier runs keep their directories and resume.
KEY_NEUTRAL_VALUES = {"truncation": (None, HEAD), "grad_accumulation": (1,),
                      "lr_reference_steps": (None,),  # no learning-rate scaling: what every run before it did
                      # no speed target, and the multiplier's step (used only with a target) at its default
                      "target_speedup": (None,), "constraint_weight": (5.0,),
                      "target_mode": ("floor",)}


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


def cpu_only() -> bool:
    """Whether the training processes run on CPUs: what `make_accelerator` and `is_main_process` must agree on."""
    return not torch.cuda.is_available()


def make_accelerator(seed: int):
    """This process's place among the processes that train one model together (see `local_rows` and
    `average_gradients`): one process by default; `torchrun --nproc_per_node N -m adapler_export train ...`
    on CPUs (gloo) and `accelerate launch --multi_gpu --num_processes N -m adapler_export train ...` on GPUs
    (NCCL) give N. `cpu=True` without CUDA: Accelerate otherwise ignores torchrun's ranks on a CPU machine
    and each process trains alone (and `accelerate launch --cpu` starts only one process: it needs MPI)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    # split_batches: every process walks the same global batches (`local_rows`), so a learning-rate scheduler
    # steps once per optimiser step; without it Accelerate steps each scheduler once per process and every
    # schedule of N processes ends after 1/N of the run.
    accelerator = Accelerator(cpu=cpu_only(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    set_seed(seed)
    if accelerator.device.type == "cuda":
        # TF32 matrix products, as TensorFlow (the official code) uses by default on Ampere and later GPUs.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def is_main_process() -> bool:
    """Whether this process speaks for the processes that train together (always, when it trains alone)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only()).is_main_process


def local_rows(accelerator, batch: dict) -> tuple:
    """This process's contiguous share of one global batch, on its device, and the share's fraction of the
    batch's rows. Every process walks the same batches in the same order (the loaders are not sharded), so
    `--batch-size` is the global batch whatever the process count, the schedules count the same steps, and
    N processes train what one process trains: each scales its loss by its fraction of the rows and
    `average_gradients` sums, which gives the gradient of the whole batch's mean loss (up to summation order)."""
    rows = len(batch["labels"])
    start = rows * accelerator.process_index // accelerator.num_processes
    stop = rows * (accelerator.process_index + 1) // accelerator.num_processes
    local = {key: value[start:stop].to(accelerator.device) for key, value in batch.items()}
    return local, (stop - start) / rows


def average_gradients(accelerator, parameters) -> None:
    """Sum every process's (row-weighted) gradients into each process's .grad, in one all-reduce.

    By hand, not through DDP's hooks: the stages run the unwrapped model, and stage 3 takes two separate
    gradients per batch (backbone + CPs, then eta + theta), which DDP's one-backward-per-forward reducer does
    not cover. Gloo and NCCL give every process the same reduced values, so the optimisers stay in step."""
    if accelerator.num_processes == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for param in params:
        param.grad = flat[offset:offset + param.numel()].view_as(param).clone()
        offset += param.numel()


def sum_over_processes(accelerator, value) -> float:
    """A row-weighted running total (a float or a tensor) summed over the processes: the whole batch's value."""
    if accelerator.num_processes == 1:
        return float(value)
    return float(accelerator.reduce(torch.as_tensor(value, dtype=torch.float32, device=accelerator.device), "sum"))


def check_replicas(accelerator, model, what: str) -> None:
    """Refuse to go on if the processes no longer hold one model: eta, theta and a checksum of every weight
    gathered from each process must be identical (they are, bit for bit, when `average_gradients` is used)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        mine = torch.cat([model.eta.detach().reshape(-1), model.theta.detach().reshape(-1),
                          torch.stack([p.detach().double().abs().sum().float() for p in model.parameters()])])
    every = accelerator.gather(mine.to(accelerator.device)[None]).cpu()
    if not bool((every == every[0]).all()):
        raise AdaplerError(f"{what}: the {accelerator.num_processes} training processes hold different models "
                           f"(largest difference {float((every - every[0]).abs().max()):.3g})")


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
