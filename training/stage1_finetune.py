"""Stage 1: fine-tune the backbone classifier (no Contribution Predictors).

The model of the best dev epoch is kept; it produces the saliency targets (stage 2) and is the accuracy
AdapLeR is held to. Resumable per epoch (Accelerate state: model, optimiser, scheduler, RNG).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from adapler_export.evaluation import evaluate_full

from adapler_export.progress import progress

from .common import adamw_with_warmup, make_accelerator, read_marker, write_json_atomic
from .data import EncodedDataset


@dataclass
class Stage1Config:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_length: int = 64
    seed: int = 42


def run_stage1(model, tokenizer, data, cfg: Stage1Config, stage_dir: Path, log=print) -> dict:
    """Fine-tune `model.backbone` in place; return {"dev_accuracy", "epoch", "history"}."""
    done = read_marker(stage_dir / "done.json")
    if done is not None:
        log(f"stage 1: already done (dev accuracy {done['dev_accuracy']:.4f}); loading {stage_dir / 'best'}")
        model.load_state_dict(torch.load(stage_dir / "best" / "model.pt", weights_only=True))
        return done

    accelerator = make_accelerator(cfg.seed)
    train = EncodedDataset(tokenizer, data["train"], cfg.max_length)
    dev = data["dev"]
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    optimizer, scheduler = adamw_with_warmup(model.backbone.named_parameters(), cfg.lr, cfg.weight_decay,
                                             steps_per_epoch * cfg.epochs)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_for_checkpointing(scheduler)
    history, start_epoch = [], 0
    progress_file = stage_dir / "progress.json"
    state = read_marker(progress_file)
    if state is not None:
        accelerator.load_state(str(stage_dir / "last"))
        history, start_epoch = state["history"], state["epoch"] + 1
        log(f"stage 1: resuming after epoch {state['epoch']}")

    unwrapped = accelerator.unwrap_model(model)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader = accelerator.prepare_data_loader(train.loader(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch))
        running = 0.0
        bar = progress(loader, f"stage 1 epoch {epoch + 1}/{cfg.epochs}",
                       enabled=accelerator.is_local_main_process)
        for step, batch in enumerate(bar):
            logits = unwrapped.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unwrapped.backbone.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running / (step + 1):.4f}")
        accuracy = evaluate_full(unwrapped, tokenizer, dev.texts, dev.labels, cfg.max_length)
        history.append({"epoch": epoch, "train_loss": running / max(1, len(loader)), "dev_accuracy": accuracy})
        log(f"stage 1 epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, dev accuracy {accuracy:.4f}")
        if accelerator.is_main_process:
            if accuracy >= max(h["dev_accuracy"] for h in history):
                (stage_dir / "best").mkdir(parents=True, exist_ok=True)
                torch.save(unwrapped.state_dict(), stage_dir / "best" / ".model.pt.tmp")
                (stage_dir / "best" / ".model.pt.tmp").replace(stage_dir / "best" / "model.pt")
            shutil.rmtree(stage_dir / "last", ignore_errors=True)
            accelerator.save_state(str(stage_dir / "last"))
            write_json_atomic(progress_file, {"epoch": epoch, "history": history})

    best = max(history, key=lambda h: h["dev_accuracy"])
    unwrapped.load_state_dict(torch.load(stage_dir / "best" / "model.pt", weights_only=True))
    result = {"dev_accuracy": best["dev_accuracy"], "epoch": best["epoch"], "history": history}
    write_json_atomic(stage_dir / "done.json", result)
    shutil.rmtree(stage_dir / "last", ignore_errors=True)
    return result
