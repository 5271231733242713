#!/usr/bin/env python
"""Peak memory and time of training steps with and without gradient accumulation (`--grad-accumulation`).

Each configuration `BxN` (N batches of B examples per optimiser step, so every configuration steps on B*N
examples) runs in a fresh process: the real stage-1 or stage-3 code (`training.stage1_finetune.run_stage1`,
`training.stage3_adapler.run_stage3`) for one epoch over the task's `--examples` longest training examples
(at 512 wordpieces for IMDB: the worst case), a few short dev examples for the epoch's evaluation. Peak RSS
is the process's high-water mark; "training adds" is that peak minus the resident memory just before the
stage started (the model, tokenizer and data loaded). Stage 3 trains on random positive saliencies: the
memory of a step does not depend on their values, and no stage 2 pass inflates the peak. Writes
`<output>.json`:

    python benchmarks/accumulation_memory.py --task imdb --configs 32x1,8x4 --stages 1,3 --threads 1 \\
        --output docs/results/imdb-accumulation-memory
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)


def parse_configs(text: str) -> list:
    """"32x1,8x4" -> [(32, 1), (8, 4)]."""
    configs = []
    for item in text.split(","):
        try:
            batch, accumulation = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--configs: {item!r} is not BATCHxACCUMULATION (e.g. 8x4)") from None
        if batch < 1 or accumulation < 1:
            raise ValueError(f"--configs: {item!r}: batch and accumulation must be at least 1")
        configs.append((batch, accumulation))
    return configs


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_child(args) -> dict:
    """One configuration, in this process; returns its row."""
    import numpy as np
    import torch

    from adapler_export.checkpoint import load_backbone
    from adapler_export.data import Split, TaskData, load_task, task_max_length
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification
    from adapler_export.serving.tokenization import encode_rows
    from training.common import seed_everything
    from training.stage1_finetune import Stage1Config, run_stage1
    from training.stage3_adapler import Stage3Config, run_stage3

    torch.set_num_threads(args.threads)
    seed_everything(0)
    data = load_task(args.task, args.data_dir)
    if data["train"].pairs is not None:
        raise SystemExit(f"{args.task} is a sentence-pair task: this benchmark takes single-text tasks")
    labels = dict(enumerate(data.labels))
    backbone, tokenizer = load_backbone(args.backbone, len(data.labels), labels)
    model = AdapLeRForSequenceClassification(backbone)
    max_length = task_max_length(args.task)

    def pick(split, count, longest):
        """The `count` longest (shortest) examples and their encoded lengths. Only the longest (shortest)
        candidates by characters are tokenised (a 25,000-review split takes a minute)."""
        chars = np.array([len(t) for t in split.texts])
        candidates = np.argsort(-chars if longest else chars, kind="stable")[:4 * count]
        lengths = np.array([len(ids) for ids in encode_rows(tokenizer, [split.texts[i] for i in candidates],
                                                             max_length).ids])
        chosen = np.argsort(-lengths if longest else lengths, kind="stable")[:count]
        order = candidates[chosen]
        picked = Split([split.texts[i] for i in order], np.asarray(split.labels)[order], split.source, split.sha256)
        return picked, lengths[chosen]

    train, train_lengths = pick(data["train"], args.examples, longest=True)
    dev, _ = pick(data["dev"], 8, longest=False)
    task = TaskData(data.task, data.labels, {"train": train, "dev": dev})
    common_options = dict(epochs=1, batch_size=args.batch, grad_accumulation=args.accumulation,
                          max_length=max_length)
    before = resident_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        if args.stage == 1:
            run_stage1(model, tokenizer, task, Stage1Config(keep_best_epochs=1, **common_options), Path(work),
                       log=lambda m: None)
        else:
            rng = np.random.default_rng(0)
            saliencies = [rng.random(n).astype(np.float32) + 0.01 for n in train_lengths]
            run_stage3(model, tokenizer, task, saliencies,
                       Stage3Config(selection_fallback="most-accurate", **common_options), Path(work),
                       finetuned_accuracy=0.0, log=lambda m: None)
    seconds = time.perf_counter() - started
    return {"stage": args.stage, "batch": args.batch, "accumulation": args.accumulation,
            "examples_per_step": args.batch * args.accumulation, "examples": args.examples,
            "mean_wordpieces": round(float(train_lengths.mean()), 1), "resident_before_mb": round(before, 1),
            "peak_mb": round(peak_mb(), 1), "training_adds_mb": round(peak_mb() - before, 1),
            "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="imdb")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbone", default=None, help="default: the offline MiniLM")
    ap.add_argument("--configs", default="32x1,8x4", help="BATCHxACCUMULATION,... (default 32x1,8x4)")
    ap.add_argument("--stages", default="1,3", help="which trained stages to measure (1, 3 or 1,3)")
    ap.add_argument("--examples", type=int, default=32, help="the task's longest training examples, one epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=None, help="path without suffix (default: print only)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--accumulation", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.backbone is None:
        from adapler_export.checkpoint import DEFAULT_BACKBONE
        args.backbone = DEFAULT_BACKBONE
    if args.child:
        print(json.dumps(run_child(args)))
        return 0

    try:
        configs = parse_configs(args.configs)
    except ValueError as exc:
        ap.error(str(exc))
    stages = args.stages.split(",")
    if any(s not in ("1", "3") for s in stages):
        ap.error(f"--stages {args.stages}: the trained stages are 1 and 3")
    stages = [int(s) for s in stages]
    rows = []
    for stage in stages:
        for batch, accumulation in configs:
            command = [sys.executable, __file__, "--child", "--task", args.task, "--backbone", args.backbone,
                       "--examples", str(args.examples), "--threads", str(args.threads), "--stage", str(stage),
                       "--batch", str(batch), "--accumulation", str(accumulation)]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-2000:].rstrip() + "\n")
                common.log(f"stage {stage}, {batch}x{accumulation}: the measuring process failed "
                           f"(exit {done.returncode})")
                return 2
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            common.log(f"stage {stage} {batch}x{accumulation}: peak {row['peak_mb']:.0f} MB (training adds "
                       f"{row['training_adds_mb']:.0f} MB), {row['seconds']:.1f} s for {args.examples} examples "
                       f"of {row['mean_wordpieces']:.0f} wordpieces")
    if args.output:
        common.write_result(args.output, "accumulation_memory.py", argv,
                            {"task": args.task, "backbone": args.backbone, "threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
