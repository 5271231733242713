"""Bad input: one clear line on stderr, a non-zero exit, and nothing half-written."""
import subprocess
import sys

import numpy as np
import pytest

from adapler_export.data import load_folder
from adapler_export.errors import AdaplerError

CLI = [sys.executable, "-m", "adapler_export.cli"]


def run_cli(*args, env_home):
    env = {"ADAPLER_HOME": str(env_home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HOME": str(env_home)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def write_split(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def assert_clean_error(result, fragment, home):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("adapler-export: error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (home / "checkpoints").exists() or not any((home / "checkpoints").iterdir()), \
        "no partial checkpoint may be left behind"


def test_missing_data_folder(tmp_path):
    result = run_cli("train", "--data-dir", str(tmp_path / "nope"), "--output", "x", env_home=tmp_path)
    assert_clean_error(result, "does not exist", tmp_path)


@pytest.mark.parametrize("train_text,dev_text,fragment", [
    ("sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n", "sentence\tlabel\nfine\t1\n",
     "train.tsv:3: expected 2 fields, got 3"),  # malformed row, reported with file and line
    ("sentence\tlabel\n", "sentence\tlabel\nfine\t1\n", "no examples"),  # empty dataset
    ("sentence\tlabel\ngood\t1\n", None, "has no dev.tsv"),  # missing split
], ids=["malformed-row", "empty-dataset", "missing-split"])
def test_bad_data_folder(tmp_path, train_text, dev_text, fragment):
    data = tmp_path / "data"
    write_split(data, "train.tsv", train_text)
    if dev_text is not None:
        write_split(data, "dev.tsv", dev_text)
    result = run_cli("train", "--data-dir", str(data), "--output", "x", env_home=tmp_path)
    assert_clean_error(result, fragment, tmp_path)


# A number outside its range, for each command that takes one: refused by the option's type
# (adapler_export/arguments.py) before anything loads. Before, some of these ended in a traceback
# (--threads -1, --stage3-train-samples 0, --samples 0, --seed -1, --lr-stage1 -1, --concurrency 0,
# --queue-delay-us -1, --http-port 70000), others ran on silently (--samples -1 meant "all but one",
# --max-train-samples -1 likewise, --instances 0 wrote a repository, --lr-stage1 0 trained nothing).
BAD_NUMBERS = [
    (["train", "--threads", "-1"], "--threads: must be an integer >= 1, got -1"),
    (["train", "--threads", "0"], "--threads: must be an integer >= 1, got 0"),
    (["train", "--grad-accumulation", "0"], "--grad-accumulation: must be an integer >= 1, got 0"),
    (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["train", "--max-train-samples", "-1"], "--max-train-samples: must be an integer >= 1, got -1"),
    (["train", "--stage3-train-samples", "0"], "--stage3-train-samples: must be an integer >= 1, got 0"),
    (["train", "--seed", "-1"], "--seed: must be an integer in 0..4294967295, got -1"),
    (["train", "--lr-stage1", "0"], "--lr-stage1: must be a finite number > 0, got 0"),
    (["train", "--eta-lr", "nan"], "--eta-lr: must be a finite number > 0, got nan"),
    (["train", "--phi", "-0.1"], "--phi: must be a finite number >= 0, got -0.1"),
    (["train", "--epochs-stage3", "two"], "--epochs-stage3: expected an integer >= 1, got 'two'"),
    (["train", "--lambda-schedule", "50:-1"], "--lambda-schedule: expected BASE:MULT, two positive numbers"),
    (["evaluate", "--ckpt", "x", "--samples", "0"], "--samples: must be an integer >= 1, got 0"),
    (["evaluate", "--ckpt", "x", "--samples", "-1"], "--samples: must be an integer >= 1, got -1"),
    (["build", "--ckpt", "x", "--max-seq", "-1"], "--max-seq: must be an integer >= 1, got -1"),
    (["build", "--ckpt", "x", "--max-batch", "0"], "--max-batch: must be an integer >= 1, got 0"),
    (["verify", "--artifact", "x", "--samples", "0"], "--samples: must be an integer >= 1, got 0"),
    (["triton", "--artifact", "x", "--repo", "r", "--queue-delay-us", "-1"],
     "--queue-delay-us: must be an integer >= 0, got -1"),
    (["triton", "--artifact", "x", "--repo", "r", "--instances", "0"], "--instances: must be an integer >= 1, got 0"),
    (["serve", "--artifact", "x", "--load", "--concurrency", "0"], "--concurrency: must be an integer >= 1, got 0"),
    (["serve", "--artifact", "x", "--http-port", "70000"], "--http-port: must be an integer in 0..65535, got 70000"),
    (["serve", "--artifact", "x", "--load", "--duration", "0"], "--duration: must be a finite number > 0, got 0"),
    (["calibrate", "--ckpt", "x", "--num-scales", "2"], "--num-scales: must be an integer >= 3, got 2"),
    (["quantize", "--artifact", "x", "--threads", "0"], "--threads: must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("args,fragment", BAD_NUMBERS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_numbers_out_of_range_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys, args, fragment):
    from adapler_export.cli import main

    monkeypatch.setenv("ADAPLER_HOME", str(tmp_path))
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("adapler-export: error: ") and fragment in lines[0], lines[0]
    assert f"(see adapler-export {args[0]} --help)" in lines[0]
    assert not any(tmp_path.iterdir()), "refused before anything was written"


def test_usage_errors_are_one_line_too(capsys):
    """argparse's own errors (a missing or unknown argument) have the same one-line form, and --help still
    prints the whole usage."""
    from adapler_export.cli import main

    for args, fragment in ((["build"], "the following arguments are required: --ckpt"),
                           (["nosuch"], "invalid choice: 'nosuch'"), (["evaluate", "--ckpt", "x", "--bogus"],
                                                                      "unrecognized arguments: --bogus")):
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("adapler-export: error: ") and fragment in lines[0], lines
    assert main(["evaluate", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: adapler-export evaluate")


def test_a_subset_of_fewer_than_one_example_is_refused():
    """The library's own guard (the command line refuses these first): a negative count would slice off
    examples from the end ("all but N"), zero would leave nothing to train or evaluate on."""
    from adapler_export.data import Split
    from adapler_export.errors import AdaplerError

    split = Split([f"text {i}" for i in range(10)], np.arange(10) % 2)
    for count in (0, -1):
        with pytest.raises(AdaplerError, match=f"cannot draw {count} examples"):
            split.subset(count)
    assert len(split.subset(3)) == 3 and split.subset(None) is split and split.subset(10) is split


def test_bad_label(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train.tsv", "sentence\tlabel\ngood movie\tmaybe\n")
    write_split(data, "dev.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(AdaplerError, match="label 'maybe'"):
        load_folder("sst2", data)


def test_unknown_backbone(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    write_split(data, "dev.tsv", "sentence\tlabel\nfine\t1\n")
    result = run_cli("train", "--data-dir", str(data), "--backbone", str(tmp_path / "no-such-model"),
                     "--output", "x", env_home=tmp_path)
    assert_clean_error(result, "cannot load backbone", tmp_path)


def test_missing_checkpoint_name(tmp_path):
    result = run_cli("evaluate", "--ckpt", "sst2-never-trained", env_home=tmp_path)
    assert_clean_error(result, "no checkpoint named 'sst2-never-trained'", tmp_path)


def test_csv_folder_is_read(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train.csv", 'text,label\n"a, quoted, sentence",positive\nplain,0\n')
    write_split(data, "dev.csv", "text,label\nfine,1\n")
    task = load_folder("sst2", data)
    assert task["train"].texts == ["a, quoted, sentence", "plain"]
    assert task["train"].labels.tolist() == [1, 0]


def test_threads_option_is_one_rule_for_every_command(monkeypatch):
    """`--threads N` of train, evaluate, calibrate and quantize: the same type and the same effect
    (`arguments.use_threads`); left out, PyTorch keeps its default."""
    import torch

    from adapler_export.arguments import use_threads
    from adapler_export.cli import build_parser

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    use_threads(None)
    use_threads(3)
    assert calls == [3]
    parser = build_parser()
    for args in (["train"], ["evaluate", "--ckpt", "x"], ["calibrate", "--ckpt", "x"], ["quantize", "--artifact", "x"]):
        assert parser.parse_args([*args, "--threads", "2"]).threads == 2
        assert parser.parse_args(args).threads is None
