"""Sentence-pair tasks end to end (issue 11): GLUE's MRPC and RTE files, token types through the tokenizer, the
model, training, segment 0, the one graph, the backends, parity, the classifier and `predict`.

A tiny random BERT pair model (tests/tiny_models.py) whose second token type moves the embeddings far, so that
logits and kept tokens depend on the token types: an export or a backend that dropped them would be caught.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adapler_export.artifact import read_manifest
from adapler_export.backends import load_backend
from adapler_export.backends.pytorch import PyTorchBackend
from adapler_export.checkpoint import load_checkpoint
from adapler_export.cli import main
from adapler_export.data import TASKS, load_task, read_text_pairs, task_metrics, task_reads_pairs
from adapler_export.errors import AdaplerError
from adapler_export.evaluation import classification_scores, encode, evaluate_adaptive
from adapler_export.serving.runtime import TextClassifier
from adapler_export.serving.tokenization import encode as serving_encode
from adapler_export.serving.tokenization import pair_lengths
from adapler_export.specs import TOKEN_TYPE_IDS

from conftest import assert_backends_match_pytorch, task_dir
from tiny_models import make_tiny_checkpoint, make_tiny_tokenizer

PAIRS = [("a charming film .", "the story is good ."), ("it was dull", "a boring , bleak movie"),
         ("fun !", "not fun at all , and too long for a film like this one"), ("", "only the second text")]


# ----- data -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,train,dev,dev_first", [
    ("mrpc", (3667, [1194, 2473]), (408, [129, 279]), ("He said the foodservice pie business doesn 't fit",
                                                       "\" The foodservice pie business does not fit")),
    ("rte", (2490, [1249, 1241]), (277, [146, 131]), ("Dana Reeve, the widow of the actor Christopher Reeve",
                                                     "Christopher Reeve had an accident.")),
])
def test_glue_pair_files_load(task, train, dev, dev_first):
    """GLUE's own files (MRPC: a byte-order mark, the label in `Quality`; RTE: text labels) give every row, the
    labels as integers of the task's names, and both texts."""
    data = load_task(task, task_dir(task))
    for split, (rows, counts) in (("train", train), ("dev", dev)):
        part = data[split]
        assert len(part) == len(part.pairs) == rows
        assert np.bincount(part.labels).tolist() == counts
        assert all(isinstance(t, str) and t for t in part.texts + part.pairs)
    assert data["dev"].texts[0].startswith(dev_first[0]) and data["dev"].pairs[0].startswith(dev_first[1])
    assert data.labels == TASKS[task]["labels"] and task_reads_pairs(task)
    if task == "rte":  # first dev row: "not_entailment"
        assert data["dev"].labels[0] == TASKS["rte"]["labels"].index("not_entailment") == 1
    subset = data["dev"].subset(10, seed=3)
    index = data["dev"].texts.index(subset.texts[4])
    assert subset.pairs[4] == data["dev"].pairs[index] and subset.labels[4] == data["dev"].labels[index]


def test_pair_folder_with_bom_and_crlf(tmp_path):
    """A folder in GLUE's layout written on Windows (byte-order mark, CRLF line ends) reads the same."""
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = ["1\t1\t2\tHe said \"yes .\tHe said yes", "0\t3\t4\tit rained\tthe sun 's out"]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_bytes(("\ufeff" + "\r\n".join([header] + rows) + "\r\n").encode("utf-8"))
    dev = load_task("mrpc", tmp_path)["dev"]
    assert dev.texts == ["He said \"yes .", "it rained"] and dev.pairs == ["He said yes", "the sun 's out"]
    assert dev.labels.tolist() == [1, 0]
    rte = tmp_path / "rte"
    rte.mkdir()
    (rte / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\r\n0\ta\tb\tnot_entailment\r\n"
                                  b"1\tc\td\tentailment\r\n")
    dev = load_task("rte", rte, splits=("dev",))["dev"]
    assert (dev.texts, dev.pairs, dev.labels.tolist()) == (["a", "c"], ["b", "d"], [1, 0])
    (rte / "dev.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(AdaplerError, match="lacks the columns 'sentence1', 'sentence2' and 'label'"):
        load_task("rte", rte, splits=("dev",))


def test_pair_defaults_and_metrics():
    assert (TASKS["mrpc"]["max_length"], TASKS["rte"]["max_length"]) == (128, 256)
    assert task_metrics("mrpc") == ("accuracy", "f1") and task_metrics("sst2") == ("accuracy",)
    scores = classification_scores([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], ("accuracy", "f1"))
    assert scores == {"accuracy": 0.6, "f1": pytest.approx(2 * 2 / (3 + 3))}
    assert "f1" not in classification_scores([1, 2], [2, 2], ("accuracy", "f1"))  # not binary


def test_read_text_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("first\tsecond\nno pair here\n", encoding="utf-8")
    with pytest.raises(AdaplerError, match="pairs.tsv:2: expected two texts separated by a tab"):
        read_text_pairs(path)
    path.write_text("\ufefffirst\tsecond\twith a tab\r\n\t\n", encoding="utf-8")
    assert read_text_pairs(path) == (["first", ""], ["second\twith a tab", ""])


@pytest.mark.parametrize("task", ["mrpc", "rte"])
def test_read_text_pairs_reads_the_tasks_glue_file(task, tmp_path):
    """A `.tsv` whose header names a pair task's two text columns (GLUE's own dev.tsv) gives those columns, as
    `load_task` reads them; a row without them is one line of error; the same header in a `.txt` is a pair."""
    dev = load_task(task, task_dir(task), splits=("dev",))["dev"]
    assert read_text_pairs(task_dir(task) / "dev.tsv") == (dev.texts, dev.pairs)
    assert read_text_pairs(task_dir(task) / "dev.tsv", limit=3) == (dev.texts[:3], dev.pairs[:3])
    first, second = TASKS[task]["text_column"], TASKS[task]["pair_column"]
    table = tmp_path / "pairs.tsv"
    table.write_text(f"\ufeffid\t{first}\t{second}\r\n1\ta\tb\r\n\r\n2\tc\n", encoding="utf-8")
    with pytest.raises(AdaplerError, match="pairs.tsv:4: expected at least 3 fields, got 2"):
        read_text_pairs(table)
    table.with_suffix(".txt").write_text(f"{first}\t{second}\nx\ty\n", encoding="utf-8")
    assert read_text_pairs(table.with_suffix(".txt")) == ([first, "x"], [second, "y"])


def test_text_inputs_one_rule(tmp_path):
    """Texts with their --pair, then the file's (pairs: tab-separated lines; single texts: one a line)."""
    from adapler_export.data import read_inputs, text_inputs

    path = tmp_path / "pairs.txt"
    path.write_text("c\td\n", encoding="utf-8")
    assert text_inputs(["a"], ["b"], path, True) == (["a", "c"], ["b", "d"])
    assert text_inputs(["a"], [], path, False) == (["a", "c\td"], None)
    assert read_inputs(path, True) == (["c"], ["d"]) and read_inputs(path, False) == (["c\td"], None)
    with pytest.raises(AdaplerError, match="^model m classifies sentence pairs: 1 texts need 1 --pair"):
        text_inputs(["a"], [], None, True, "model m")
    with pytest.raises(AdaplerError, match="^this artifact classifies single texts: --pair is for"):
        text_inputs(["a"], ["b"], None, False)


# ----- tokenisation -------------------------------------------------------------------------------------------
def test_pair_encoding_is_hugging_faces(tmp_path):
    """`encode` with pairs = `tokenizer(texts, pairs, truncation=True)` (longest_first), token types included, at
    every length; `truncated` says which rows were cut."""
    tokenizer = make_tiny_tokenizer(tmp_path)
    texts, pairs = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    for max_length in (3, 4, 5, 7, 8, 12, 48):
        want = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        got = serving_encode(tokenizer, texts, max_length, pairs=pairs)
        for name in ("input_ids", "attention_mask", TOKEN_TYPE_IDS):
            np.testing.assert_array_equal(getattr(got, name), want[name], err_msg=f"{name} at {max_length}")
        full = [len(tokenizer(t, p)["input_ids"]) for t, p in zip(texts, pairs)]
        assert got.truncated == [n > max_length for n in full]
    assert len(encode(tokenizer, texts, 48)) == 2 and len(encode(tokenizer, texts, 48, pairs)) == 3
    assert serving_encode(tokenizer, [""], 8, pairs=[""]).empty == [True]
    with pytest.raises(ValueError, match="every text needs its pair"):
        serving_encode(tokenizer, texts, 8, pairs=pairs[:2])


def test_pair_lengths_rule():
    assert pair_lengths(3, 4, 10) == (3, 4)
    assert pair_lengths(2, 20, 10) == (2, 8)  # the longer text gives up wordpieces
    assert pair_lengths(20, 2, 10) == (8, 2)
    assert pair_lengths(9, 9, 9) == (4, 5) and pair_lengths(12, 9, 9) == (5, 4)  # the longer keeps the odd one


# ----- the model and training -----------------------------------------------------------------------------------
def _pair_batch(tokenizer, max_length=48):
    ids, mask, types = encode(tokenizer, [p[0] for p in PAIRS], max_length, [p[1] for p in PAIRS])
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)


def test_token_types_flow_through_every_forward(pair_checkpoint):
    ckpt = load_checkpoint(pair_checkpoint)
    assert ckpt.config.text_pair and ckpt.model.text_pair
    ids, mask, types = _pair_batch(ckpt.tokenizer)
    assert types.any()
    model = ckpt.model
    with torch.no_grad():
        full = model.forward_full(ids, mask, types)
        assert not torch.allclose(full, model.forward_full(ids, mask))
        hard, hard_zeros = model.forward_hard(ids, mask, types), model.forward_hard(ids, mask)
        assert not torch.allclose(hard.logits, hard_zeros.logits)
        assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(hard.kept, hard_zeros.kept))
        soft = model.forward_soft(ids, mask, 1e20, token_type_ids=types)
        assert not torch.allclose(soft.logits, model.forward_soft(ids, mask, 1e20).logits)
        np.testing.assert_array_equal(model.forward_full(ids, mask, torch.zeros_like(ids)).numpy(),
                                      model.forward_full(ids, mask).numpy())  # default: zeros, bit for bit


def test_training_steps_on_pairs(pair_checkpoint):
    """The training batches carry the token types, and a few stage-3 steps on pairs train the second type's
    embedding (it gets a gradient only when the types reach the model)."""
    from training.data import EncodedDataset
    from training.stage3_adapler import Stage3Config, compute_gradients, make_optimizers

    from adapler_export.data import Split

    ckpt = load_checkpoint(pair_checkpoint)
    model = ckpt.model.train()
    split = Split([p[0] for p in PAIRS], np.array([1, 0, 0, 1]), pairs=[p[1] for p in PAIRS])
    dataset = EncodedDataset(ckpt.tokenizer, split, 48, saliency=None)
    batch = next(iter(dataset.loader(4, shuffle=False)))
    np.testing.assert_array_equal(batch[TOKEN_TYPE_IDS].numpy(), _pair_batch(ckpt.tokenizer)[2].numpy())
    batch["saliency"] = torch.rand(batch["input_ids"].shape) * batch["attention_mask"]
    cfg = Stage3Config(lr_reference_steps=None)  # the official learning rates, not scaled up for a 3-step run
    optimizer, scheduler, threshold_optimizer, _ = make_optimizers(model, cfg, total_steps=3)
    types = model.base.embeddings.token_type_embeddings.weight
    before = types.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        threshold_optimizer.zero_grad()
        parts = compute_gradients(model, batch, 100.0, cfg)
        assert types.grad is not None and types.grad[1].abs().sum() > 0
        optimizer.step()
        threshold_optimizer.step()
        scheduler.step()
    assert all(np.isfinite(float(v)) for v in parts.values())
    assert not torch.equal(types.detach()[1], before[1])


def test_evaluate_reports_f1_for_mrpc(pair_checkpoint):
    ckpt = load_checkpoint(pair_checkpoint)
    dev = load_task("mrpc", task_dir("mrpc"), splits=("dev",))["dev"].subset(24)
    result = evaluate_adaptive(ckpt.model, ckpt.tokenizer, dev.texts, dev.labels, 48, pairs=dev.pairs,
                               metrics=task_metrics("mrpc"))
    assert result.f1 is not None and "f1" in result.to_dict()
    without_pairs = evaluate_adaptive(ckpt.model, ckpt.tokenizer, dev.texts, dev.labels, 48)
    assert without_pairs.f1 is None and "f1" not in without_pairs.to_dict()
    assert result.kept_per_layer != without_pairs.kept_per_layer


# ----- export, parity, serving ------------------------------------------------------------------------------
# pair_checkpoint and pair_artifact: tests/conftest.py (test_serving.py serves the same artifact)
def test_pair_artifact_takes_token_types_and_passes_parity(pair_artifact, pair_checkpoint):
    """Segment 0, single.onnx and model.onnx take token_type_ids; parity (fp32, 96 MRPC dev pairs) of the segment
    chain and of the one graph, recomputed here against the PyTorch reference: no flipped keep decision."""
    import onnx

    manifest = read_manifest(pair_artifact)
    assert manifest.text_pair and list(manifest.specs()[0].inputs) == ["input_ids", "attention_mask", TOKEN_TYPE_IDS]
    for graph in ("onnx/segment_00.onnx", "onnx/single.onnx", "onnx/model.onnx"):
        names = [i.name for i in onnx.load(str(pair_artifact / graph), load_external_data=False).graph.input]
        assert names == ["input_ids", "attention_mask", TOKEN_TYPE_IDS], graph
    assert set(manifest.parity["end_to_end"]) == {"onnxruntime", "onnxruntime-graph"}, "build checked both"
    dev = load_task("mrpc", task_dir("mrpc"), splits=("dev",))["dev"]
    found = assert_backends_match_pytorch(pair_checkpoint, pair_artifact, dev.texts[:96], dev.pairs[:96])
    for kind, result in found.items():
        assert result["rows"] == 96 and result["dropped"] > 0, (kind, result)


def test_dropping_the_token_types_changes_the_answer(pair_artifact, pair_checkpoint):
    """Every backend of the pair artifact equals the reference with the token types, and differs from it
    (logits and kept tokens) without them: an export that ignored them would fail here."""
    ckpt = load_checkpoint(pair_checkpoint)
    ids, mask, types = (t.numpy() for t in _pair_batch(ckpt.tokenizer))
    reference = PyTorchBackend(ckpt.model).run(ids, mask, types)
    for kind in ("onnxruntime", "onnxruntime-graph"):
        with load_backend(pair_artifact, kind) as backend:
            assert backend.takes_token_types
            got, dropped = backend.run(ids, mask, types), backend.run(ids, mask, np.zeros_like(types))
        np.testing.assert_allclose(got.logits, reference.logits, atol=1e-5, err_msg=kind)
        for g, r in zip(got.kept, reference.kept):
            np.testing.assert_array_equal(g, r, err_msg=kind)
        assert np.abs(dropped.logits - reference.logits).max() > 10 * 1e-5, kind  # 10x the agreement above
        assert any(d.shape != r.shape or not np.array_equal(d, r) for d, r in zip(dropped.kept, reference.kept))


def test_pair_classifier(pair_artifact, pair_checkpoint):
    classifier = TextClassifier(pair_artifact)
    assert classifier.text_pair
    texts, pairs = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    predictions = classifier.classify(texts, pairs)
    ckpt = load_checkpoint(pair_checkpoint)
    reference = PyTorchBackend(ckpt.model).run(*encode(ckpt.tokenizer, texts, 48, pairs))
    assert [p.label_id for p in predictions] == reference.logits.argmax(-1).tolist()
    assert predictions[0].tokens == ["[CLS]", *ckpt.tokenizer.tokenize(texts[0]), "[SEP]",
                                     *ckpt.tokenizer.tokenize(pairs[0]), "[SEP]"]
    assert not predictions[3].empty_input  # the first text is empty, the second is not
    with pytest.raises(AdaplerError, match="classifies sentence pairs"):
        classifier.classify(texts)
    with pytest.raises(AdaplerError, match="every text needs its pair"):
        classifier.classify(texts, pairs[:1])


def test_single_text_artifact_keeps_working(tiny_artifact):
    """An artifact without token_type_ids (every single-text artifact, and those built before pairs) runs as
    before: all-zero token types are accepted, others refused, and pairs are refused by the classifier."""
    manifest = read_manifest(tiny_artifact)
    assert not manifest.text_pair and TOKEN_TYPE_IDS not in manifest.specs()[0].inputs
    ids = np.array([[2, 9, 10, 3], [2, 11, 3, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    for kind in ("onnxruntime", "onnxruntime-graph"):
        with load_backend(tiny_artifact, kind) as backend:
            assert not backend.takes_token_types
            plain = backend.run(ids, mask)
            np.testing.assert_array_equal(backend.run(ids, mask, np.zeros_like(ids)).logits, plain.logits)
            with pytest.raises(AdaplerError, match="takes no token types"):
                backend.run(ids, mask, np.ones_like(ids))
    classifier = TextClassifier(tiny_artifact)
    assert not classifier.text_pair and classifier.classify(["a film"])[0].label
    with pytest.raises(AdaplerError, match="classifies single texts"):
        classifier.classify(["a film"], ["another"])


def test_predict_cli_with_pairs(pair_artifact, tmp_path, capsys):
    argv = ["predict", "--artifact", str(pair_artifact), "--json"]
    assert main(argv + ["a charming film .", "--pair", "the story is good ."]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "a charming film ." and record["pair"] == "the story is good ."
    assert record["label"] in TASKS["mrpc"]["labels"] and "[SEP]" in record["tokens"][1:-1]
    texts = tmp_path / "pairs.txt"
    texts.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    assert main(argv + ["--file", str(texts)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classifier = TextClassifier(pair_artifact)
    want = classifier.classify([p[0] for p in PAIRS], [p[1] for p in PAIRS])
    assert [line["label_id"] for line in lines] == [p.label_id for p in want]
    assert main(argv + ["a film", "another"]) == 2
    assert "2 texts need 2 --pair texts, got 0" in capsys.readouterr().err


def test_predict_cli_refuses_pairs_for_a_single_text_artifact(tiny_artifact, capsys):
    assert main(["predict", "--artifact", str(tiny_artifact), "a film", "--pair", "x"]) == 2
    assert "--pair is for sentence-pair artifacts" in capsys.readouterr().err


def test_full_model_baseline_takes_the_token_types(pair_checkpoint, tmp_path):
    """The static full model calibration measures against reads a pair model's token types too."""
    from adapler_export.baseline import FullModelBackend, PyTorchFullBackend, export_full_onnx

    ckpt = load_checkpoint(pair_checkpoint)
    inputs = [t.numpy() for t in _pair_batch(ckpt.tokenizer)]
    with torch.no_grad():
        want = ckpt.model.forward_full(*(torch.from_numpy(a) for a in inputs)).numpy()
    with FullModelBackend(export_full_onnx(ckpt.model, tmp_path / "full.onnx"), ckpt.model.num_layers) as full:
        assert full.takes_token_types
        np.testing.assert_allclose(full.run(*inputs).logits, want, atol=1e-5)
    np.testing.assert_allclose(PyTorchFullBackend(ckpt.model).run(*inputs).logits, want, atol=1e-6)


# ----- benchmarks -----------------------------------------------------------------------------------------------
def test_bench_one_graph_times_a_pair_model_on_its_pairs(pair_checkpoint, tmp_path):
    """The CPU benchmark's pair workloads: batches carry the token types of the one tokenisation rule, and
    bench_one_graph times the three forms of a pair model on MRPC dev pairs (the one graph keeping exactly the
    chain's tokens on every batch, which the script checks before timing)."""
    import pathlib
    import subprocess
    import sys

    from adapler_export.data import load_dev

    task_dir("mrpc")
    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    import common

    ckpt = load_checkpoint(pair_checkpoint)
    dev = load_dev("mrpc")
    workload = common.workloads_from_names("mrpc", ckpt.tokenizer, None, ckpt.config.max_length,
                                           ckpt.model.config.max_position_embeddings, sst2_examples=6)[0]
    batches = common.make_batches(workload, 4, common.pad_id(ckpt.tokenizer))
    want = serving_encode(ckpt.tokenizer, dev.texts[:4], ckpt.config.max_length, pairs=dev.pairs[:4])
    ids, mask, index = batches[0]  # single-text code unpacks a batch as before
    np.testing.assert_array_equal(ids, want.input_ids)
    assert batches[0].types is not None and batches[0].types.any()
    np.testing.assert_array_equal(batches[0].types, want.token_type_ids)
    assert [a.shape for a in common.batch_inputs(batches[0])] == [ids.shape] * 3

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(bench / "bench_one_graph.py"), "--ckpt", str(pair_checkpoint),
                           "--quick", "--workloads", "mrpc", "--sst2-examples", "8", "--batches", "1,4",
                           "--threads", "1", "--output-dir", str(out), "--no-plot", "--work-dir",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next(out.glob("*-one-graph.json")).read_text())
    assert [(r["workload"], r["batch"]) for r in result["rows"]] == [("mrpc-dev", 1), ("mrpc-dev", 4)]
    assert "sentence pairs" in result["workloads"][0]["description"]
    assert all(r["max_abs_logit_diff_one_graph_vs_chain"] < 1e-4 for r in result["rows"])
