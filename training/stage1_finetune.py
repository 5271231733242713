"""Stage 1: fine-tune the backbone classifier (no Contribution Predictors).

The weights of the `keep_best_epochs` most accurate dev epochs are kept (`epoch_<k>/model.pt`): stage 2
averages their saliencies (the official recipe), and the best dev accuracy is what AdapLeR is held to.
Resumable per epoch (Accelerate state: model, optimiser, scheduler, RNG).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from adapler_export.data import task_metrics
from adapler_export.evaluation import F1, evaluate_full_scores, scores_text
from adapler_export.progress import progress
from adapler_export.serving.tokenization import HEAD, Cut

from .common import (accumulation_groups, adamw_with_warmup, average_gradients, check_replicas, epoch_model_path,
                     load_model_state, local_rows, make_accelerator, optimizer_steps, read_marker, save_model_state,
                     sum_over_processes, write_json_atomic)
from .data import EncodedDataset


@dataclass
class Stage1Config:
    """Defaults: the official fine-tuning run (run_classification_bert.py) unless noted."""
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    adam_eps: float = 1e-8
    max_length: int = 64
    truncation: str = HEAD  # how a text longer than max_length is cut (tokenization.TRUNCATIONS)
    seed: int = 42
    keep_best_epochs: int = 3  # the saliency targets average this many best epochs (official: 3)
    length_grouped: bool = True  # batches of similar lengths (little padding); not in the official code
    grad_accumulation: int = 1  # batches per optimiser step (effective batch: batch_size * grad_accumulation)

    @property
    def cut(self) -> Cut:
        return Cut(self.max_length, self.truncation)


def best_epochs(history: list, count: int) -> list:
    """The `count` most accurate epochs, best first; on a tie the later epoch ranks higher (as the official
    `np.argsort(scores)[-3:]`, which is stable on short lists)."""
    ranked = sorted(history, key=lambda h: (h["dev_accuracy"], h["epoch"]), reverse=True)
    return [h["epoch"] for h in ranked[:count]]


def run_stage1(model, tokenizer, data, cfg: Stage1Config, stage_dir: Path, log=print) -> dict:
    """Fine-tune `model.backbone` in place (it ends with the best epoch's weights); return
    {"dev_accuracy", "epoch", "best_epochs", "history"}."""
    done = read_marker(stage_dir / "done.json")
    if done is not None:
        log(f"stage 1: already done (dev accuracy {done['dev_accuracy']:.4f}); loading epoch {done['epoch']}")
        load_model_state(model, epoch_model_path(stage_dir, done["epoch"]))
        return done

    accelerator = make_accelerator(cfg.seed)
    train = EncodedDataset(tokenizer, data["train"], cfg.cut)
    dev = data["dev"]
    steps_per_epoch = optimizer_steps(
        len(train.loader(cfg.batch_size, shuffle=True, length_grouped=cfg.length_grouped)), cfg.grad_accumulation)
    optimizer, scheduler = adamw_with_warmup(model.backbone.named_parameters(), cfg.lr, cfg.weight_decay,
                                             steps_per_epoch * cfg.epochs, cfg.warmup_ratio, cfg.adam_eps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
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
        loader = train.loader(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch, length_grouped=cfg.length_grouped)
        running = 0.0
        bar = progress(accumulation_groups(loader, cfg.grad_accumulation), f"stage 1 epoch {epoch + 1}/{cfg.epochs}",
                       total=steps_per_epoch, enabled=accelerator.is_local_main_process)
        for step, group in enumerate(bar):
            optimizer.zero_grad()
            for batch in group:
                batch, share = local_rows(accelerator, batch)
                if share == 0:  # a batch with fewer rows than processes
                    continue
                logits = unwrapped.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            token_type_ids=batch.get("token_type_ids")).logits
                loss = torch.nn.functional.cross_entropy(logits, batch["labels"]) * share / len(group)
                accelerator.backward(loss)
                running += loss.detach()  # a tensor: no per-step wait for the GPU
            average_gradients(accelerator, unwrapped.backbone.parameters())
            accelerator.clip_grad_norm_(unwrapped.backbone.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running / (step + 1):.4f}")
        scores = evaluate_full_scores(unwrapped, tokenizer, dev.texts, dev.labels, cfg.cut, pairs=dev.pairs,
                                      metrics=task_metrics(data.task))
        accuracy = scores["accuracy"]
        train_loss = sum_over_processes(accelerator, running) / max(1, steps_per_epoch)
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "dev_accuracy": accuracy,
                        **({"dev_f1": scores[F1]} if F1 in scores else {})})
        log(f"stage 1 epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, "
            f"{scores_text(accuracy, scores.get(F1))}")
        check_replicas(accelerator, unwrapped, f"stage 1 epoch {epoch + 1}")
        if accelerator.is_main_process:
            keep = best_epochs(history, cfg.keep_best_epochs)
            if epoch in keep:
                save_model_state(unwrapped, epoch_model_path(stage_dir, epoch))
            for old in history:  # only the best epochs' weights stay on disk
                if old["epoch"] not in keep:
                    shutil.rmtree(epoch_model_path(stage_dir, old["epoch"]).parent, ignore_errors=True)
            shutil.rmtree(stage_dir / "last", ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(stage_dir / "last"))  # every process: its RNG state (weights by the main one)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(progress_file, {"epoch": epoch, "history": history})

    keep = best_epochs(history, cfg.keep_best_epochs)
    best = next(h for h in history if h["epoch"] == keep[0])
    load_model_state(unwrapped, epoch_model_path(stage_dir, best["epoch"]))
    result = {"dev_accuracy": best["dev_accuracy"], "epoch": best["epoch"], "best_epochs": keep,
              "history": history}
    accelerator.wait_for_everyone()  # every process has loaded the best epoch before "last" goes
    if accelerator.is_main_process:
        write_json_atomic(stage_dir / "done.json", result)
        shutil.rmtree(stage_dir / "last", ignore_errors=True)
    accelerator.wait_for_everyone()
    return result
