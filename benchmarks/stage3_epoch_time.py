#!/usr/bin/env python
"""Stage-3 training time per epoch with the short-run defaults and with the official recipe (issue 26).

A short run's defaults change three learning rates (CPs and eta scaled, the fine-tuned backbone's lowered) and add
the speed target (per step: the decided lengths, a few comparisons per layer, and one more term in eta's loss);
this measures what that costs on the clock. Each round trains one stage-3 epoch (run_stage3, a fresh model each
time, the same data and saliencies) with the defaults (scaled rates, set point 1.6x, backbone 1e-5) and with
`lr_reference_steps` and the target off (the official recipe), alternating so that a busy machine slows both
alike; the epoch's own `train_seconds` (training only, no dev evaluation) is reported:

    OMP_NUM_THREADS=1 python benchmarks/stage3_epoch_time.py --samples 1000 --rounds 2 --output FILE.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="SST-2 training sentences")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", help="JSON file")
    args = parser.parse_args()

    import torch
    from training.stage2_saliency import compute_saliencies
    from training.stage3_adapler import Stage3Config, run_stage3

    from adapler_export.checkpoint import DEFAULT_BACKBONE, load_backbone
    from adapler_export.data import TaskData, load_task
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    torch.set_num_threads(1)
    data = load_task("sst2")
    data = TaskData(data.task, data.labels, {"train": data["train"].subset(args.samples, 42),
                                             "dev": data["dev"].subset(32, 42)})

    def fresh_model():
        torch.manual_seed(42)
        backbone, tokenizer = load_backbone(DEFAULT_BACKBONE, len(data.labels), dict(enumerate(data.labels)))
        return AdapLeRForSequenceClassification(backbone), tokenizer

    model, tokenizer = fresh_model()
    saliencies = compute_saliencies(model, tokenizer, data["train"], 64, show=False)
    seconds = {"default": [], "official": []}
    # (recipe options, the start it is resolved for, as the pipeline resolves it)
    recipes = {"default": ({}, "finetuned"),
               "official": ({"lr_reference_steps": None, "target_speedup": None}, "pretrained")}
    for _ in range(args.rounds):
        for name, (recipe, start) in recipes.items():
            model, tokenizer = fresh_model()
            cfg = Stage3Config(epochs=1, selection_fallback="most-accurate", **recipe).with_start(start)
            with tempfile.TemporaryDirectory() as work:
                result = run_stage3(model, tokenizer, data, saliencies, cfg, Path(work), 0.0, log=lambda m: None)
            seconds[name].append(result["history"][0]["train_seconds"])
            common.log(f"{name}: {seconds[name][-1]} s")
    summary = {"samples": args.samples, "steps_per_epoch": result["history"][0]["steps"], "seconds": seconds,
               "median_default_over_official":
                   statistics.median(seconds["default"]) / statistics.median(seconds["official"]),
               "recipes": {"default": "Stage3Config() on a short run: scaled CP and eta rates, set point 1.6x, "
                                      "backbone 1e-5",
                           "official": "lr_reference_steps None, target_speedup None"},
               "load_average": common.load_average(), "machine": common.machine_info()}
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
