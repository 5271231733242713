"""Stage 3: train the Contribution Predictors, eta and theta with soft removal (ADAPLER_METHOD.md).

Loss = CE + gamma * sum_l (L - l) * KL(target_l || s~_l) + phi * sum_l n_l, with two optimisers:
- backbone + CPs (AdamW, warm-up, weight decay, clip 1) learn from CE + KL;
- eta and theta (Adam, lr 5e-4, clip 1) learn from CE + the length term (theta, which only scales the
  target's [CLS] entry, learns from the KL term: it has no other path).
One backward pass serves both: the length term is computed on detached CP scores, so it reaches eta
alone, and the KL term uses CP scores computed under a detached mask, so it never trains eta.
lambda is annealed per epoch, lambda = base * mult**epoch; at evaluation removal is hard.
Model selection (official): the fastest epoch whose dev accuracy is within `selection_tolerance` of the
stage-1 dev accuracy, else the most accurate epoch.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapler_export.evaluation import evaluate_adaptive
from adapler_export.modeling_adapler import soft_removal_exponent, with_cls_live

from adapler_export.progress import progress

from .common import adamw_with_warmup, make_accelerator, read_marker, write_json_atomic
from .data import EncodedDataset


@dataclass
class Stage3Config:
    epochs: int = 3
    lambda_base: float = 50.0
    lambda_mult: float = 50.0
    batch_size: int = 32
    lr: float = 3e-5
    # The official code trains the CPs at the backbone's 3e-5 over 5 epochs of BERT-base; with a 3-epoch
    # budget the randomly initialised CPs need a larger step to become informative (see docs/results).
    cp_lr: float = 1e-3
    eta_lr: float = 5e-4
    weight_decay: float = 0.01
    gamma: float = 0.005  # KL weight (official SST-2 README value)
    phi: float = 0.0005  # length-loss weight (official SST-2 README value)
    max_length: int = 64
    seed: int = 42
    selection_tolerance: float = 0.01
    max_train_samples_per_epoch: int | None = None

    def lam(self, epoch: int) -> float:
        return self.lambda_base * self.lambda_mult ** epoch


def saliency_targets(saliency, mask, theta_l):
    """Target distribution for one layer: saliency over the tokens still live, [CLS] scaled by theta."""
    weights = with_cls_live(mask.detach())
    target = saliency * weights
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    cls = target[:, :1] * theta_l
    target = torch.cat([cls, target[:, 1:]], dim=1)
    return target / target.sum(-1, keepdim=True).clamp_min(1e-12)


def adapler_loss(model, batch, lam: float, cfg: Stage3Config):
    out = model.forward_soft(batch["input_ids"], batch["attention_mask"], lam)
    ce = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    kl_total, length_total = 0.0, 0.0
    layers = model.num_layers
    for index in range(layers):
        mask = out.masks[index]
        theta = model.theta[index] if index > 0 else torch.ones((), dtype=torch.float32)
        target = saliency_targets(batch["saliency"], mask, theta)
        log_target = torch.log(target.clamp_min(1e-12))
        log_scores = torch.log(out.kl_scores[index].clamp_min(1e-12))
        kl = (target * (log_target - log_scores)).sum(-1)
        has_live = (with_cls_live(mask) > 0.5).sum(-1) > 1
        if has_live.any():
            kl_total = kl_total + (layers - index) * kl[has_live].mean()
        # Length term: same soft removal on detached scores -> the gradient reaches eta only.
        n = with_cls_live(mask.detach()).sum(-1, keepdim=True)
        exponent = soft_removal_exponent(out.scores[index].detach(), model.eta[index] / n, lam)
        length_total = length_total + (mask.detach() * torch.exp(exponent)).sum(-1).mean()
    loss = ce + cfg.gamma * kl_total + cfg.phi * length_total
    return loss, {"ce": ce.item(), "kl": float(kl_total.detach()) if torch.is_tensor(kl_total) else 0.0,
                  "length": float(length_total.detach())}


def run_stage3(model, tokenizer, data, saliencies, cfg: Stage3Config, stage_dir: Path, stage1_accuracy: float,
               log=print) -> dict:
    done = read_marker(stage_dir / "done.json")
    if done is not None:
        log(f"stage 3: already done (selected epoch {done['selected_epoch']})")
        model.load_state_dict(torch.load(stage_dir / "selected" / "model.pt", weights_only=True))
        return done

    accelerator = make_accelerator(cfg.seed)
    train = EncodedDataset(tokenizer, data["train"], cfg.max_length, saliency=saliencies)
    dev = data["dev"]
    per_epoch = len(train) if cfg.max_train_samples_per_epoch is None else min(len(train),
                                                                                cfg.max_train_samples_per_epoch)
    steps_per_epoch = (per_epoch + cfg.batch_size - 1) // cfg.batch_size
    main_params = [(n, p) for n, p in model.named_parameters() if n not in ("eta", "theta")]
    backbone_params = [(n, p) for n, p in main_params if not n.startswith("cps.")]
    cp_params = [(n, p) for n, p in main_params if n.startswith("cps.")]
    optimizer, scheduler = adamw_with_warmup(backbone_params, cfg.lr, cfg.weight_decay, steps_per_epoch * cfg.epochs,
                                             extra_groups=[(cp_params, cfg.cp_lr)])
    threshold_optimizer = torch.optim.Adam([model.eta, model.theta], lr=cfg.eta_lr)
    model, optimizer, threshold_optimizer, scheduler = accelerator.prepare(
        model, optimizer, threshold_optimizer, scheduler)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)

    history, start_epoch = [], 0
    state = read_marker(stage_dir / "progress.json")
    if state is not None:
        accelerator.load_state(str(stage_dir / "last"))
        history, start_epoch = state["history"], state["epoch"] + 1
        log(f"stage 3: resuming after epoch {state['epoch']}")

    for epoch in range(start_epoch, cfg.epochs):
        lam = cfg.lam(epoch)
        model.train()
        loader = train.loader(cfg.batch_size, shuffle=True, seed=cfg.seed + 1000 + epoch)
        loader = accelerator.prepare_data_loader(loader)
        totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "length": 0.0}
        bar = progress(loader, f"stage 3 epoch {epoch + 1}/{cfg.epochs} (lambda={lam:g})",
                       total=steps_per_epoch, enabled=accelerator.is_local_main_process)
        steps = 0
        for batch in bar:
            if steps >= steps_per_epoch:
                break
            loss, parts = adapler_loss(unwrapped, batch, lam, cfg)
            optimizer.zero_grad()
            threshold_optimizer.zero_grad()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_([p for _, p in main_params], 1.0)
            accelerator.clip_grad_norm_([unwrapped.eta, unwrapped.theta], 1.0)
            optimizer.step()
            threshold_optimizer.step()
            scheduler.step()
            unwrapped.clamp_parameters_()
            steps += 1
            totals["loss"] += loss.item()
            for key, value in parts.items():
                totals[key] += value
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{totals['loss'] / steps:.4f}", ce=f"{totals['ce'] / steps:.4f}",
                                eta=f"{unwrapped.eta.mean().item():.3f}")
        result = evaluate_adaptive(unwrapped, tokenizer, dev.texts, dev.labels, cfg.max_length)
        record = {"epoch": epoch, "lambda": lam, **{k: v / max(1, steps) for k, v in totals.items()},
                  "dev_accuracy": result.accuracy, "flops_speedup": result.flops_speedup,
                  "kept_per_layer": result.kept_per_layer, "eta": unwrapped.eta.tolist()}
        history.append(record)
        log(f"stage 3 epoch {epoch + 1}: lambda {lam:g}, dev accuracy {result.accuracy:.4f}, "
            f"FLOPs speedup {result.flops_speedup:.2f}x, kept/layer "
            f"{', '.join(f'{k:.1f}' for k in result.kept_per_layer)}, eta {[round(e, 3) for e in record['eta']]}")
        if accelerator.is_main_process:
            epoch_dir = stage_dir / f"epoch_{epoch}"
            epoch_dir.mkdir(parents=True, exist_ok=True)
            torch.save(unwrapped.state_dict(), epoch_dir / ".model.pt.tmp")
            (epoch_dir / ".model.pt.tmp").replace(epoch_dir / "model.pt")
            shutil.rmtree(stage_dir / "last", ignore_errors=True)
            accelerator.save_state(str(stage_dir / "last"))
            write_json_atomic(stage_dir / "progress.json", {"epoch": epoch, "history": history})

    eligible = [h for h in history if h["dev_accuracy"] >= stage1_accuracy - cfg.selection_tolerance]
    selected = max(eligible, key=lambda h: h["flops_speedup"]) if eligible else \
        max(history, key=lambda h: h["dev_accuracy"])
    chosen = stage_dir / f"epoch_{selected['epoch']}" / "model.pt"
    (stage_dir / "selected").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chosen, stage_dir / "selected" / "model.pt")
    unwrapped.load_state_dict(torch.load(chosen, weights_only=True))
    result = {"selected_epoch": selected["epoch"], "lambda_final": selected["lambda"],
              "selection": "fastest within tolerance" if eligible else "most accurate (none within tolerance)",
              "history": history}
    write_json_atomic(stage_dir / "done.json", result)
    shutil.rmtree(stage_dir / "last", ignore_errors=True)
    return result
