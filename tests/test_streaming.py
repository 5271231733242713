"""Streaming classification (issue 27): `TextClassifier.classify_iter` and `predict` / `explain --file`.

* Batching and reordering change no prediction beyond floating-point noise: the labels, the kept positions,
  the tokens and the flags identical to one text at a time, the logits and probabilities within the backend's
  fp32 tolerance (`tolerances.py`), on mixed lengths, empty lines and over-long texts, single texts and pairs.
* Memory is bounded by the window and the batch: `classify_iter` reads its input lazily, never more than
  `window` inputs ahead of the last result it gave.
* The command line reads `--file -` from a pipe and writes each result as it comes, in input order.
"""
from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from adapler_export.cli import main
from adapler_export.data import iter_inputs, read_texts
from adapler_export.errors import AdaplerError
from adapler_export.serving.runtime import TextClassifier
from adapler_export.tolerances import Tolerances

from conftest import sst2_dir

OVER_LONG = "a charming , witty and moving film about the director 's journey " * 8  # past 48 wordpieces
ODD_TEXTS = ["", "   ", "\x01\x02", OVER_LONG, "good", "bad " * 30, OVER_LONG[::-1]]  # empty x3, long, short


def mixed_texts(n: int = 72) -> list:
    """SST-2 dev sentences of every length, with empty lines and over-long texts among them."""
    texts = read_texts(sst2_dir() / "dev.tsv", limit=n)
    for position, odd in zip(range(3, n, 11), ODD_TEXTS):
        texts.insert(position, odd)
    return texts


def assert_same_predictions(got: list, want: list, precision: str) -> None:
    """Labels, kept positions, tokens and flags identical; logits and probabilities within the fp32 bound on
    |Δlogit| (a probability moves at most half as much as the logits: softmax's slopes are at most 1/2)."""
    tolerance = Tolerances.for_precision(precision).max_abs_logit
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        where = f"text {index}"
        assert (g.label, g.label_id) == (w.label, w.label_id), where
        assert g.kept_positions == w.kept_positions, where
        assert g.tokens == w.tokens, where
        assert (g.truncated, g.empty_input) == (w.truncated, w.empty_input), where
        np.testing.assert_allclose(g.logits, w.logits, rtol=0, atol=tolerance, err_msg=where)
        np.testing.assert_allclose(g.probabilities, w.probabilities, rtol=0, atol=tolerance, err_msg=where)


class RecordingBackend:
    """A backend that remembers the padded shape and the row lengths of every call."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.name = backend.name

    def run(self, input_ids, attention_mask, token_type_ids=None):
        self.calls.append(attention_mask.sum(axis=1).tolist())
        return self.backend.run(input_ids, attention_mask, token_type_ids)


@pytest.fixture(scope="module")
def one_at_a_time(tiny_artifact):
    """Each text of `mixed_texts` classified alone, by each ONNX Runtime form of the tiny artifact."""
    texts = mixed_texts()
    alone = {}
    for kind in ("onnxruntime", "onnxruntime-graph"):
        classifier = TextClassifier(tiny_artifact, backend_kind=kind, threads=1)
        alone[kind] = [classifier.classify([text], batch_size=1)[0] for text in texts]
    return texts, alone


@pytest.mark.parametrize("kind", ["onnxruntime", "onnxruntime-graph"])
@pytest.mark.parametrize("batch_size,window", [(4, 4), (8, 24), (32, None), (5, 1000)])
def test_batched_and_reordered_equal_one_at_a_time(tiny_artifact, one_at_a_time, kind, batch_size, window):
    texts, alone = one_at_a_time
    classifier = TextClassifier(tiny_artifact, backend_kind=kind, threads=1)
    assert {p.empty_input for p in alone[kind]} == {True, False}  # the fixture has both kinds of text
    assert {p.truncated for p in alone[kind]} == {True, False}
    got = list(classifier.classify_iter(iter(texts), batch_size=batch_size, window=window))
    assert_same_predictions(got, alone[kind], classifier.manifest.precision)
    assert_same_predictions(classifier.classify(texts, batch_size=batch_size, window=window), alone[kind],
                            classifier.manifest.precision)


def test_batches_are_full_and_ordered_by_length(tiny_artifact):
    """With the input inside one window, every batch but the last is full, and batches of about one length pad
    less than half as much as batches in file order."""
    texts = mixed_texts()
    classifier = TextClassifier(tiny_artifact, threads=1)
    classifier.backend = recording = RecordingBackend(classifier.backend)
    lengths = [len(p.tokens) for p in list(classifier.classify_iter(texts, batch_size=8))]  # window: 256 texts
    calls = recording.calls
    assert [len(call) for call in calls] == [8] * (len(texts) // 8) + [len(texts) % 8] * (len(texts) % 8 > 0)
    assert sorted(itertools.chain(*calls)) == sorted(lengths)
    padded = sum(max(call) * len(call) for call in calls)
    in_file_order = sum(max(lengths[i:i + 8]) * len(lengths[i:i + 8]) for i in range(0, len(lengths), 8))
    assert padded - sum(lengths) <= 0.5 * (in_file_order - sum(lengths))


def test_pairs_batched_equal_one_at_a_time(pair_artifact):
    """Sentence pairs: (text, pair) tuples, batched, as one pair at a time; the CLI's `--file` of tab lines too."""
    texts = mixed_texts(30)
    pairs = texts[::-1]
    classifier = TextClassifier(pair_artifact, threads=1)
    alone = [classifier.classify([text], [pair], batch_size=1)[0] for text, pair in zip(texts, pairs)]
    assert_same_predictions(list(classifier.classify_iter(zip(texts, pairs), batch_size=8, window=16)), alone,
                            classifier.manifest.precision)
    assert_same_predictions(classifier.classify(texts, pairs, batch_size=8), alone, classifier.manifest.precision)
    with pytest.raises(AdaplerError, match="input 0: .* classifies sentence pairs"):
        list(classifier.classify_iter(["a film"]))
    with pytest.raises(AdaplerError, match="3 texts but 2 pairs"):
        classifier.classify(["a", "b", "c"], ["x", "y"])


def test_classify_iter_reads_lazily(tiny_artifact):
    """Never more than `window` inputs read ahead of the last result given: a generator far longer than what is
    asked for is read only that far, and results come before the input ends."""
    classifier = TextClassifier(tiny_artifact, threads=1)
    pool = mixed_texts(40)
    pulled = itertools.count()
    counted = {"pulled": 0}

    def many():  # 5,000 texts: an eager reader would take them all before its first result
        for text in itertools.islice(itertools.cycle(pool), 5000):
            counted["pulled"] = next(pulled) + 1
            yield text

    batch_size, window = 4, 12
    results = classifier.classify_iter(many(), batch_size=batch_size, window=window)
    for given, prediction in enumerate(itertools.islice(results, 100), start=1):
        assert counted["pulled"] - given < window, (given, counted["pulled"])
        assert prediction.tokens[0] == "[CLS]"
    assert counted["pulled"] < 100 + window


def test_classify_iter_bad_input(tiny_artifact):
    classifier = TextClassifier(tiny_artifact, threads=1)
    with pytest.raises(AdaplerError, match="not one string"):
        classifier.classify_iter("a film")
    with pytest.raises(AdaplerError, match="window \\(3\\) must hold at least one batch \\(4\\)"):
        classifier.classify_iter(["a"], batch_size=4, window=3)
    with pytest.raises(AdaplerError, match="batch_size must be an integer >= 1"):
        classifier.classify_iter(["a"], batch_size=0)
    with pytest.raises(AdaplerError, match="input 1 is a tuple: .* classifies single texts"):
        list(classifier.classify_iter(["a", ("b", "c")]))
    # a lone surrogate: the error names its index; the results before it (and none after) were given
    given = []
    with pytest.raises(AdaplerError, match="^text 9 is not valid Unicode"):
        for prediction in classifier.classify_iter(["good"] * 9 + ["bad \ud800"] + ["fine"] * 20, batch_size=2,
                                                   window=2):
            given.append(prediction)
    assert len(given) <= 9
    assert classifier.classify([]) == []


def test_iter_inputs_reads_as_read_inputs(tmp_path):
    """The lazy reader and the list reader are one rule: blank lines kept, \\r\\n and a final newline, BOM."""
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffa film\r\n\r\n  \nthe end\n".encode("utf-8"))
    assert list(iter_inputs(path, False)) == [("a film", None), ("", None), ("  ", None), ("the end", None)]
    assert read_texts(path) == ["a film", "", "  ", "the end"]
    path.write_bytes(b"good\nabc\xff\n")
    examples = iter_inputs(path, False)
    assert next(examples) == ("good", None)  # read as far as asked: the bad line is an error when reached
    with pytest.raises(AdaplerError, match="is not UTF-8 text \\(invalid start byte at byte 8\\)"):
        next(examples)
    with pytest.raises(AdaplerError, match="not found"):
        iter_inputs(tmp_path / "missing.txt", False)  # at once, before anything is read


def test_predict_file_from_a_pipe(tiny_artifact, tmp_path):
    """`--file -` fed by a pipe: one JSON line per input line, in order, equal to the library's predictions;
    the empty line and the over-long text warned about on stderr as before."""
    texts = mixed_texts(40)
    command = [sys.executable, "-m", "adapler_export", "predict", "--artifact", str(tiny_artifact), "--file", "-",
               "--json", "--batch-size", "8", "--threads", "1"]
    result = subprocess.run(command, input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    want = TextClassifier(tiny_artifact, threads=1).classify(texts, batch_size=1)
    assert [r["label"] for r in records] == [p.label for p in want]
    assert [r["kept_positions"] for r in records] == [p.kept_positions for p in want]
    for number, prediction in enumerate(want, start=1):
        if prediction.empty_input:
            assert f"warning: text {number} is empty (no token)" in result.stderr
        if prediction.truncated:
            assert f"warning: text {number} truncated to 48 wordpieces (head)" in result.stderr
    assert "\r" not in result.stderr  # no progress bar where stderr is not a terminal


def test_predict_writes_each_result_as_it_comes(tiny_artifact):
    """Results reach the pipe while the input is still open: the first window's answers come back before the
    rest of the input is written."""
    command = [sys.executable, "-m", "adapler_export", "predict", "--artifact", str(tiny_artifact), "--file", "-",
               "--json", "--batch-size", "2", "--threads", "1"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, bufsize=1) as process:
        deadline = threading.Timer(240, process.kill)  # a command that waits for the end of input fails, not hangs
        deadline.start()
        try:
            # the default window at batch 2 is 64 texts: 70 lines let at least 6 results out
            process.stdin.write("a charming film\n" * 70)
            process.stdin.flush()
            first = json.loads(process.stdout.readline())
            assert first["text"] == "a charming film"
            process.stdin.write("the end\n")
            process.stdin.close()
            rest = process.stdout.read().splitlines()
        finally:
            deadline.cancel()
            process.kill()
    assert len(rest) == 70 and json.loads(rest[-1])["text"] == "the end"


def test_predict_and_explain_cli_batched(tiny_artifact, tmp_path, capsys):
    """--file with --batch-size: the same results in the same order as the library one at a time; explain's
    text view and HTML page of a file."""
    texts = mixed_texts(20)
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", "--artifact", str(tiny_artifact), "--file", str(path), "--json", "--batch-size", "3",
                 "--threads", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = TextClassifier(tiny_artifact, threads=1).classify(texts, batch_size=1)
    assert [(r["text"], r["label"], r["kept_positions"]) for r in records] == \
        [(t, p.label, p.kept_positions) for t, p in zip(texts, want)]
    assert main(["explain", "--artifact", str(tiny_artifact), "--file", str(path), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("Text ")] == \
        [f"Text {n}" for n in range(1, len(texts) + 1)]
    page = tmp_path / "page.html"
    assert main(["explain", "--artifact", str(tiny_artifact), "--file", str(path), "--html", str(page)]) == 0
    assert page.read_text(encoding="utf-8").count("<section>") == len(texts)
    assert main(["predict", "--artifact", str(tiny_artifact), "--file", str(path), "--batch-size", "0"]) == 2
    assert "--batch-size: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_top_level_exports():
    import adapler_export

    code = "import sys, adapler_export; print('adapler_export.serving.runtime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    from adapler_export import TextClassifier as exported

    assert exported is TextClassifier and "TextClassifier" in dir(adapler_export)
