#!/usr/bin/env python
"""Which truncation rule is better to *fine-tune* with: stage-1 models trained with `head` and with `head+tail`.

`truncation_rules.py` reads over-long documents with both rules through one checkpoint; this script compares
fine-tunes. Each `--run NAME=WORK_DIR` is a `train` work directory ($ADAPLER_HOME/work/<output>) whose stage 1
finished; its selected stage-1 epoch (the classifier AdapLeR is held to) is evaluated on the dev examples
longer than the task's max length, read with either rule, and its dev accuracy on the whole split is taken
from the stage's own record. Compare runs whose settings differ only in `--truncation`. Writes `<output>.json`:

    python benchmarks/truncation_finetunes.py --task imdb --run head=$ADAPLER_HOME/work/imdb-cpu \\
        --run head+tail=$ADAPLER_HOME/work/imdb-cpu-ht --output docs/results/imdb-truncation-finetunes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)


def finished_stage1(work_dir: Path) -> tuple:
    """(the stage-1 record, the selected epoch's weights) of a work directory, or SystemExit saying why not."""
    from training.common import epoch_model_path, read_marker

    stages = sorted(work_dir.glob("stage1-*/done.json"))
    if len(stages) != 1:
        raise SystemExit(f"{work_dir}: expected one finished stage 1 (stage1-*/done.json), found {len(stages)}")
    record = read_marker(stages[0])
    return record, epoch_model_path(stages[0].parent, record["epoch"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="imdb")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbone", default=None, help="the runs' backbone (default: the offline MiniLM)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=WORK_DIR", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", required=True, help="path without suffix")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.run:
        name, _, path = item.partition("=")
        if not name or not path or not Path(path).is_dir():
            ap.error(f"--run {item}: expected NAME=WORK_DIR with an existing directory")
        runs[name] = Path(path)

    import torch

    from adapler_export.checkpoint import DEFAULT_BACKBONE, load_backbone
    from adapler_export.data import load_dev, task_max_length
    from adapler_export.evaluation import evaluate_full_scores
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification
    from adapler_export.serving.tokenization import TRUNCATIONS, Cut, encode_rows
    from training.common import load_model_state

    torch.set_num_threads(args.threads)
    records = {name: finished_stage1(path) for name, path in runs.items()}  # refuse before any evaluation
    dev = load_dev(args.task, args.data_dir)
    if dev.pairs is not None:
        raise SystemExit(f"{args.task} is a sentence-pair task: pairs are cut by longest_first only")
    max_length = task_max_length(args.task)
    # One model and one tokenisation of dev for every run: the runs share the backbone's architecture and
    # tokenizer, and each run's state dict replaces every weight (strict load).
    backbone, tokenizer = load_backbone(args.backbone or DEFAULT_BACKBONE, 2)
    model = AdapLeRForSequenceClassification(backbone).eval()
    long_index = [i for i, cut in enumerate(encode_rows(tokenizer, dev.texts, max_length).truncated) if cut]
    texts, labels = [dev.texts[i] for i in long_index], np.asarray(dev.labels)[long_index]
    results = {}
    for name, (record, weights) in records.items():
        load_model_state(model, weights)
        row = {"work_dir": str(runs[name]), "stage1_epoch": record["epoch"] + 1,
               "dev_accuracy": record["dev_accuracy"], "history": record["history"],
               "dev_examples": len(dev.texts), "long_examples": len(long_index)}
        for rule in TRUNCATIONS:
            start = time.time()
            accuracy = evaluate_full_scores(model, tokenizer, texts, labels, Cut(max_length, rule),
                                            args.batch_size)["accuracy"]
            row[f"long_accuracy_read_{rule}"] = accuracy
            row[f"long_correct_read_{rule}"] = int(round(accuracy * len(texts)))
            common.log(f"{name}: stage 1 epoch {row['stage1_epoch']}, dev {100 * row['dev_accuracy']:.2f} %; "
                       f"the {len(texts)} long reviews read with {rule}: {100 * accuracy:.2f} % "
                       f"({time.time() - start:.0f} s)")
        results[name] = row

    common.write_result(args.output, "truncation_finetunes.py", argv,
                        {"task": args.task, "max_length": max_length, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
