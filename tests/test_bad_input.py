"""Bad input: one clear line on stderr, a non-zero exit, and nothing half-written."""
import subprocess
import sys

import pytest

from adapler_export.data import load_folder

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


@pytest.mark.parametrize("option,fragment", [
    ("--grad-accumulation", "gradient accumulation must be at least 1 (got 0)"),
    ("--batch-size", "batch size must be at least 1 (got 0)"),
])
def test_training_counts_below_one_are_refused_before_any_work(tmp_path, option, fragment):
    data = tmp_path / "data"
    write_split(data, "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    write_split(data, "dev.tsv", "sentence\tlabel\nfine\t1\n")
    result = run_cli("train", "--data-dir", str(data), option, "0", "--output", "x", env_home=tmp_path)
    assert_clean_error(result, fragment, tmp_path)
    assert not (tmp_path / "work").exists(), "refused before a work directory was made"


def test_bad_label(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train.tsv", "sentence\tlabel\ngood movie\tmaybe\n")
    write_split(data, "dev.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(Exception, match="label 'maybe'"):
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
