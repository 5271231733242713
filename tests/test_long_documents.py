"""Issue 13: the IMDB task (long documents) and the bad input long reviews bring."""
from pathlib import Path

import numpy as np
import pytest

from adapler_export.data import load_folder, load_task, task_max_length
from adapler_export.errors import AdaplerError
from training.pipeline import TrainConfig, apply_options, apply_setting

from conftest import task_dir


def test_imdb_task_reads_the_shared_files():
    data = load_task("imdb", task_dir("imdb"))
    assert len(data["train"]) == 25_000 and len(data["dev"]) == 2_000
    assert data.labels == ["negative", "positive"]
    assert int(data["dev"].labels.sum()) == 1_031  # positives, as ../shared/data/README.md lists
    assert int(data["train"].labels.sum()) == 12_500
    assert any("<br />" in text for text in data["dev"].texts[:50])  # reviews as released, tags kept


def test_imdb_trains_at_512_wordpieces_unless_told():
    assert task_max_length("imdb") == 512 and task_max_length("sst2") == 64
    assert task_max_length("my-own-task") == 64
    cfg = apply_options(apply_setting(TrainConfig(task="imdb"), "official"), {"max_length": None})
    assert cfg.max_length is None  # resolved from the task when training starts
    assert apply_options(TrainConfig(task="imdb"), {"max_length": 256}).max_length == 256


def write(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def test_windows_line_endings_and_byte_order_mark(tmp_path):
    """A file saved by a Windows editor: UTF-8 BOM and CRLF line ends read as the plain file does."""
    rows = "sentence\tlabel\r\nA long review, with a <br /> tag.\t1\r\nBad.\t0\r\n"
    write(tmp_path, "train.tsv", b"\xef\xbb\xbf" + rows.encode())
    write(tmp_path, "dev.tsv", rows.replace("\r\n", "\n").encode())
    data = load_folder("imdb", tmp_path)
    assert data["train"].texts == data["dev"].texts == ["A long review, with a <br /> tag.", "Bad."]
    np.testing.assert_array_equal(data["train"].labels, [1, 0])


def test_label_outside_the_label_set_names_file_and_line(tmp_path):
    write(tmp_path, "train.tsv", b"sentence\tlabel\ngreat\t1\nmeh\t7\n")
    write(tmp_path, "dev.tsv", b"sentence\tlabel\nok\t1\n")
    with pytest.raises(AdaplerError, match=r"train.tsv:3: label 7 outside 0..1"):
        load_folder("imdb", tmp_path)


def test_not_utf8_is_one_clear_error(tmp_path):
    write(tmp_path, "train.tsv", "sentence\tlabel\ncaf\xe9 review\t1\n".encode("latin-1"))
    write(tmp_path, "dev.tsv", b"sentence\tlabel\nok\t1\n")
    with pytest.raises(AdaplerError, match=r"train.tsv is not UTF-8 text"):
        load_folder("imdb", tmp_path)


def test_an_empty_review_is_an_example_with_no_words(tmp_path):
    """Documented result: a labelled row with an empty text is kept (it tokenises to [CLS] [SEP]); a
    wholly blank line is skipped."""
    write(tmp_path, "train.tsv", b"sentence\tlabel\n\t1\ngood\t1\n\t\n")
    write(tmp_path, "dev.tsv", b"sentence\tlabel\nok\t1\n")
    data = load_folder("imdb", tmp_path)
    assert data["train"].texts == ["", "good"]


def test_a_review_longer_than_the_model_is_cut_and_flagged(tiny_artifact):
    """Predict cuts an over-long review to the artifact's max length (the head: the first wordpieces, as
    training did) and says so in `truncated`; an empty review is flagged as such."""
    from adapler_export.serving.runtime import TextClassifier

    classifier = TextClassifier(tiny_artifact)
    review = " ".join(["a wonderful film with a terrible ending"] * 200)
    long, empty, head = classifier.classify([review, "", " ".join(review.split()[:6])])
    assert long.truncated and not long.empty_input and not head.truncated
    assert len(long.tokens) == classifier.max_length
    assert long.tokens[0] == "[CLS]" and long.tokens[-1] == "[SEP]"
    assert long.tokens[: len(head.tokens) - 1] == head.tokens[:-1]  # the head is what is kept
    assert empty.empty_input and not empty.truncated
