#!/usr/bin/env python
"""Training runs side by side (issue 26: does the default recipe drop tokens on small data?).

Reads each named checkpoint's `adapler_config.json` (written by `train`) and writes one record per run: the
command that trained it (given here), data size, stage-1 dev accuracy, every stage-3 epoch (lambda, steps,
training seconds, dev accuracy, FLOPs speed-up, tokens kept per layer, learned eta), the selected epoch and
the learning-rate scale the run used:

    python benchmarks/schedule_runs.py --output docs/results/schedule-small-data.json \
        --run "before-n1000=base-n1000=1=adapler-export train --task sst2 --output base-n1000 ..." ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)


def run_record(label: str, checkpoint: str, lr_scale: float | None, command: str) -> dict:
    from adapler_export.checkpoint import ADAPLER_CONFIG, resolve_checkpoint

    config = json.loads((resolve_checkpoint(checkpoint) / ADAPLER_CONFIG).read_text())
    training, metrics = config["training"], config["metrics"]
    stage3_cfg = training["config"]["stage3"]
    history = training["stage3"]["history"]
    steps = sum(h["steps"] for h in history)
    # recorded by train since the scaling exists; else given with the run (trials before it had its final form)
    scale = training["stage3"].get("lr_scale", lr_scale)
    return {
        "label": label, "command": command, "task": config["task"],
        "stage3_train_examples": config["data"]["stage3_train_examples"],
        "stage1_dev_accuracy": metrics["stage1_dev_accuracy"],
        **({"stage1_dev_f1": metrics["stage1_dev_f1"]} if "stage1_dev_f1" in metrics else {}),
        "stage3_steps": steps, "lr_scale": scale,
        # recorded since the run-length defaults exist (earlier runs: the pre-trained start, no target)
        "stage3_init": training["config"].get("stage3_init", "pretrained"),
        "target_speedup": stage3_cfg.get("target_speedup"),
        # recorded since the set point and the fine-tuned start's backbone rate exist (earlier: a floor, 3e-5)
        "target_mode": stage3_cfg.get("target_mode", "floor"), "stage3_backbone_lr": stage3_cfg.get("lr"),
        "selected_epoch": training["stage3"]["selected_epoch"] + 1, "selection": training["stage3"]["selection"],
        "dev_accuracy": metrics["accuracy"], **({"dev_f1": metrics["f1"]} if metrics.get("f1") is not None else {}),
        "accuracy_drop_points": round(100 * (metrics["stage1_dev_accuracy"] - metrics["accuracy"]), 2),
        "flops_speedup": metrics["flops_speedup"], "kept_per_layer": metrics["kept_per_layer"],
        "eta": config["eta"], "training_seconds": training["seconds"],
        "epochs": [{"epoch": h["epoch"] + 1, "lambda": h["lambda"], "steps": h["steps"],
                    "train_seconds": h["train_seconds"], "dev_accuracy": h["dev_accuracy"],
                    **({"dev_f1": h["dev_f1"]} if "dev_f1" in h else {}), "flops_speedup": h["flops_speedup"],
                    "kept_per_layer": h["kept_per_layer"], "eta": h["eta"],
                    **({"train_decided_speedup": 1 / h["decided_fraction"]} if "decided_fraction" in h else {}),
                    **({"multiplier": h["multiplier"]} if "multiplier" in h else {})} for h in history],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=CHECKPOINT=LR_SCALE=COMMAND",
                        help="a run: its label, its checkpoint (name or path), the learning-rate scale it ran at "
                             "('-': the one the checkpoint records) and the command that trained it")
    parser.add_argument("--note", default="", help="what the machine was doing (load, threads)")
    parser.add_argument("--output", required=True, help="JSON file")
    args = parser.parse_args()
    runs = []
    for spec in args.run:
        label, checkpoint, lr_scale, command = spec.split("=", 3)
        runs.append(run_record(label, checkpoint, None if lr_scale == "-" else float(lr_scale), command))
    Path(args.output).write_text(json.dumps({"note": args.note, "machine": common.machine_info(),
                                             "runs": runs}, indent=2) + "\n")
    for r in runs:
        print(f"{r['label']}: stage 1 {r['stage1_dev_accuracy']:.4f}, trained {r['dev_accuracy']:.4f} at "
              f"{r['flops_speedup']:.2f}x (epoch {r['selected_epoch']}), eta {[round(e, 2) for e in r['eta']]}, "
              f"lr scale {r['lr_scale']:.1f}, stage-3 s/epoch {[e['train_seconds'] for e in r['epochs']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
