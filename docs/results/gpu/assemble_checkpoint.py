#!/usr/bin/env python
"""Make a checkpoint of a stage-3 epoch that a lent-GPU run trained but could not finish.

The GPU session of 2026-11-27 (docs/results/gpu/README.md) ran the official IMDB recipe until the lease's
time ran out, after 2 of the 5 stage-3 epochs. The pipeline writes a checkpoint only at the end, so the
epoch weights it kept on disk (stage3-*/epoch_<k>/model.pt, fp16 for the trip back) are turned into a
checkpoint here, with the run's own records (stage-3 progress.json, the stage-1 log) and the choice the
official selection rule makes among the epochs that were trained (with the most-accurate fallback when it
keeps none). Nothing is retrained; the dev metrics are recomputed on this machine.

    python docs/results/gpu/assemble_checkpoint.py --weights /tmp/dl3/imdb-s3 --progress /tmp/dl3/imdb-stage3-progress.json \
        --stage1-log /tmp/dl1/train-imdb.log --task imdb --output imdb-gpu
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import join_parts  # noqa: E402  (the parts transfer.py writes)


def stage1_record(log_text: str) -> dict:
    """{"dev_accuracy", "epoch", "best_epochs", "history"} as the pipeline records it, from its log lines."""
    history = [{"epoch": int(e) - 1, "train_loss": float(loss), "dev_accuracy": float(acc)} for e, loss, acc in
               re.findall(r"stage 1 epoch (\d+): train loss ([\d.]+), dev accuracy ([\d.]+)", log_text)]
    best = re.search(r"averaged over stage-1 epochs \[([\d, ]+)\]", log_text)
    best_epochs = [int(v) for v in best.group(1).split(",")] if best else []
    top = max(history, key=lambda h: (h["dev_accuracy"], h["epoch"]))
    return {"dev_accuracy": top["dev_accuracy"], "epoch": top["epoch"], "best_epochs": best_epochs,
            "history": history}


def main(argv=None) -> int:
    import json

    import torch

    from adapler_export.checkpoint import DEFAULT_BACKBONE, AdapLeRConfig, Checkpoint, load_backbone, save_checkpoint
    from adapler_export.data import data_record, load_task, task_max_length, task_truncation
    from adapler_export.evaluation import evaluate_adaptive
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification
    from adapler_export.serving.tokenization import TRUNCATIONS, Cut
    from adapler_export.storage import resolve_output_dir
    from training.stage3_adapler import Stage3Config, select_epoch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, required=True, help="prefix of the fp16 weight parts (<prefix>.w0 ...)")
    ap.add_argument("--progress", type=Path, required=True, help="the stage-3 progress.json of the run")
    ap.add_argument("--stage1-log", type=Path, required=True, help="the training log with the stage-1 lines")
    ap.add_argument("--task", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--epochs-planned", type=int, default=Stage3Config().epochs)
    ap.add_argument("--truncation", choices=TRUNCATIONS, help="the run's truncation rule (default: the task's)")
    a = ap.parse_args(argv)

    progress = json.loads(a.progress.read_text())
    stage1 = stage1_record(a.stage1_log.read_text())
    state = torch.load(io.BytesIO(join_parts(a.weights)), map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    data = load_task(a.task)
    backbone, tokenizer = load_backbone(DEFAULT_BACKBONE, len(data.labels), dict(enumerate(data.labels)))
    model = AdapLeRForSequenceClassification(backbone)
    model.load_state_dict(state)
    model.eval()
    eta = [round(float(v), 6) for v in model.eta.detach()]
    record = next(h for h in progress["history"] if [round(e, 6) for e in h["eta"]] == eta)
    selected, how = select_epoch(progress["history"], stage1["dev_accuracy"], 0.01, "most-accurate")
    if selected["epoch"] != record["epoch"]:
        raise SystemExit(f"the weights are epoch {record['epoch'] + 1}'s; the selection rule picks epoch "
                         f"{selected['epoch'] + 1}")
    cut = Cut(task_max_length(a.task), a.truncation or task_truncation(a.task))  # what the run trained with
    final = evaluate_adaptive(model, tokenizer, data["dev"].texts, data["dev"].labels, cut)
    print(f"dev accuracy {final.accuracy:.4f} (stage 1 {stage1['dev_accuracy']:.4f}), FLOPs speedup "
          f"{final.flops_speedup:.2f}x, kept per layer {[round(k, 1) for k in final.kept_per_layer]}")
    stopped = (f"stage 3 stopped after {len(progress['history'])} of {a.epochs_planned} epochs (the lent GPU's "
               "time ran out); the checkpoint was assembled from the selected epoch's weights, carried back in "
               "fp16, by docs/results/gpu/assemble_checkpoint.py")
    config = AdapLeRConfig(
        backbone=DEFAULT_BACKBONE, num_layers=model.num_layers, hidden_size=model.config.hidden_size,
        labels=data.labels, max_length=cut.max_length, truncation=cut.truncation, task=a.task,
        lambda_final=selected["lambda"],
        data=data_record(data, len(data["train"])),
        training={"config": "official recipe (every option at its default) on one NVIDIA H100", "note": stopped,
                  "stage1": stage1,
                  "stage3": {"selected_epoch": selected["epoch"], "lambda_final": selected["lambda"],
                             "selection": how, "selection_fallback": "most-accurate",
                             "finetuned_accuracy": stage1["dev_accuracy"], "history": progress["history"]},
                  "saliency": "gradient x input at the embedding output, averaged over stage-1 epochs "
                              f"{stage1['best_epochs']}"},
        metrics={"stage1_dev_accuracy": stage1["dev_accuracy"], **final.to_dict()},
    )
    path = save_checkpoint(Checkpoint(model, tokenizer, config), resolve_output_dir(a.output, "checkpoints"))
    print(f"checkpoint written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
