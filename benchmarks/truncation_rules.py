#!/usr/bin/env python
"""Which truncation rule reads over-long documents better: `head` or `head+tail` (serving.tokenization).

The rules differ only on the dev examples longer than the model's max_length, so both are evaluated on exactly
those (the rest is identical under either rule): the adaptive model (hard removal, as deployed) and the same
checkpoint with no removal (its backbone classifier). The difference over the whole dev split follows exactly
from the counts. Writes `<output>.json`:

    python benchmarks/truncation_rules.py --ckpt imdb-gpu --output docs/results/imdb-truncation

A checkpoint trained with one rule and evaluated with the other measures the rule at inference only; the JSON
records the rule it was trained with.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint name or path")
    ap.add_argument("--data-dir", default=None, help="the task's GLUE-style folder (default: the task's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", required=True, help="path without suffix")
    args = ap.parse_args(argv)

    import torch

    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_dev
    from adapler_export.evaluation import evaluate_adaptive, evaluate_full_scores
    from adapler_export.serving.tokenization import TRUNCATIONS, Cut, encode_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt)
    config = ckpt.config
    dev = load_dev(config.task, args.data_dir)
    if dev.pairs is not None:
        raise SystemExit(f"{config.task} is a sentence-pair task: pairs are cut by longest_first only")
    rows = encode_rows(ckpt.tokenizer, dev.texts, config.max_length)
    long_index = [i for i, cut in enumerate(rows.truncated) if cut]
    if not long_index:
        raise SystemExit(f"no {config.task} dev example is longer than {config.max_length} wordpieces")
    texts = [dev.texts[i] for i in long_index]
    labels = np.asarray(dev.labels)[long_index]
    common.log(f"{config.task} dev: {len(long_index)} of {len(dev.texts)} examples exceed {config.max_length} "
               f"wordpieces; model trained with truncation {config.truncation!r}")

    results = {}
    for rule in TRUNCATIONS:
        cut = Cut(config.max_length, rule)
        start = time.time()
        adaptive = evaluate_adaptive(ckpt.model, ckpt.tokenizer, texts, labels, cut, args.batch_size)
        full = evaluate_full_scores(ckpt.model, ckpt.tokenizer, texts, labels, cut, args.batch_size)
        results[rule] = {"adaptive_accuracy_long": adaptive.accuracy, "full_accuracy_long": full["accuracy"],
                         "adaptive_correct_long": int(round(adaptive.accuracy * len(texts))),
                         "full_correct_long": int(round(full["accuracy"] * len(texts))),
                         "adaptive_flops_speedup_long": adaptive.flops_speedup,
                         "kept_per_layer_long": adaptive.kept_per_layer, "seconds": round(time.time() - start, 1)}
        common.log(f"{rule:>9}: adaptive {100 * adaptive.accuracy:.2f} % at {adaptive.flops_speedup:.2f}x, no "
                   f"removal {100 * full['accuracy']:.2f} % on the {len(texts)} long reviews "
                   f"({time.time() - start:.0f} s)")

    # The other examples are encoded identically by both rules, so the difference over the whole dev split is the
    # difference in correct long examples over all examples (exact, without evaluating the rest).
    gains = {}
    for name in ("adaptive", "full"):
        gained = results[TRUNCATIONS[1]][f"{name}_correct_long"] - results[TRUNCATIONS[0]][f"{name}_correct_long"]
        gains[f"{name}_correct_gained"] = gained
        gains[f"{name}_points_whole_dev"] = round(100 * gained / len(dev.texts), 3)
        common.log(f"{name}: {TRUNCATIONS[1]} vs {TRUNCATIONS[0]}: {gained:+d} correct of {len(dev.texts)} "
                   f"({100 * gained / len(dev.texts):+.2f} points on the whole dev split)")

    common.write_result(args.output, "truncation_rules.py", argv, {
        "checkpoint": str(ckpt.path), "task": config.task, "max_length": config.max_length,
        "trained_with": config.truncation, "dev_examples": len(dev.texts), "long_examples": len(long_index),
        "other_examples": len(dev.texts) - len(long_index), "rules": results, "head_tail_vs_head": gains})
    return 0


if __name__ == "__main__":
    sys.exit(main())
