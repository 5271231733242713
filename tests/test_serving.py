"""Serving: the library classifier, Triton repository writing, and real tritonserver processes.

Every artifact here is real: a tiny randomly initialised AdapLeR BERT built by `build_artifact`
(tests/serving_fixtures.py; seconds), and the CI artifact (`built_artifact`, tests/conftest.py).
(a) no server: repository configs (the one-graph model for Triton's stock onnxruntime backend checked
    against the graph file itself), artifact checks, the classifier's documented edge cases, a
    property-based test over arbitrary Unicode.
(b) real servers (the `tritonserver` binary of the nvidia-pytriton wheel) on 127.0.0.1 ports of their
    own, stopped by PID: served predictions are the library's, bad requests get an error or the
    documented result while the server stays healthy, one failing request does not fail the others,
    arbitrary text and bytes never break the server, `serve` leaves nothing behind on Ctrl-C, SIGTERM or
    a failed start, and the CI artifact over HTTP and gRPC matches the local backend under bounded load.
    The wheel ships only the Python backend: the one-graph ensemble runs on it with a stand-in for the
    stock onnxruntime backend (serving_fixtures.OnnxRuntimeStandIn: the server takes adapler_onnx's config
    as written); with the stock backend it needs a Triton container (ADAPLER_TRITON_ONNX_URL, skipped here).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hypothesis import HealthCheck, example, given, settings  # the test extra, beside pytest
from hypothesis import strategies as st

import serving_fixtures as F  # noqa: E402
from conftest import SST2_DIR, require, require_module, sst2_dir  # noqa: E402
from adapler_export.artifact import ManifestError, read_manifest  # noqa: E402
from adapler_export.data import read_texts  # noqa: E402
from adapler_export.errors import AdaplerError  # noqa: E402
from adapler_export.tolerances import Tolerances  # noqa: E402
from adapler_export.serving import contract as C  # noqa: E402
from adapler_export.serving import repository as R  # noqa: E402
from adapler_export.serving.cli_commands import add_serve_parser, add_triton_parser  # noqa: E402
from adapler_export.serving.runtime import TextClassifier, softmax  # noqa: E402
from adapler_export.serving.server import TritonServer, TritonServerError, find_triton  # noqa: E402
from adapler_export.serving.tokenization import encode  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SST2_DEV = SST2_DIR / "dev.tsv"
MARKER_FACTORY = "serving_fixtures:load_marker_failing_backend"
MAX_BATCH = 16
ONE_MIB = 1 << 20


@pytest.fixture(scope="session")
def tritonclient():
    """Triton's client (and its ModelConfig protobuf, which repository writing needs): the serving extra."""
    return require_module("tritonclient.grpc", "pip install -e '.[serving]'")


# Repository writing, clients and servers need tritonclient; the library classifier and the CLI's own
# process handling do not, and run without it.
needs_tritonclient = pytest.mark.usefixtures("tritonclient")


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_triton_parser(sub)
    add_serve_parser(sub)
    return parser


# ---- real tiny artifacts ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """An $ADAPLER_HOME with checkpoints/tiny and artifacts/tiny (built and parity-checked for real)."""
    sst2_dir()
    home = tmp_path_factory.mktemp("tiny-home")
    checkpoint = F.make_tiny_checkpoint(home / "checkpoints" / "tiny")
    F.make_tiny_artifact(checkpoint, home / "artifacts" / "tiny")
    return home


@pytest.fixture(scope="module")
def serving_artifact(tiny_home):
    """The 2-layer tiny model (eta 1.0 at every link) of tiny_home; conftest's `tiny_artifact` is another model."""
    return tiny_home / "artifacts" / "tiny"


@pytest.fixture(scope="module")
def serving_artifact_single(serving_artifact, tmp_path_factory):
    """The tiny artifact with a (placeholder) single engine recorded in its manifest."""
    return F.with_single_engine_record(serving_artifact, tmp_path_factory.mktemp("single") / "artifact")


@pytest.fixture(scope="module")
def tiny_classifier(serving_artifact_single):
    """The library classifier as the Triton model opens it: `auto`, which takes the one graph here."""
    classifier = TextClassifier(serving_artifact_single)
    assert classifier.backend_name == "onnxruntime-graph"
    return classifier


def _damage(artifact: pathlib.Path, how: str) -> str:
    """Break a copy of an artifact; returns what the error must say."""
    if how == "missing segment":
        (artifact / "onnx" / "segment_01.onnx").unlink()
        return "missing onnx/segment_01.onnx"
    if how == "modified file":
        with open(artifact / "tokenizer" / "tokenizer.json", "a", encoding="utf-8") as handle:
            handle.write(" ")
        return "tokenizer/tokenizer.json does not match its recorded sha256"
    (artifact / "manifest.json").unlink()
    return "is not a build artifact"


# =========================================================================================================
# (a) no server
# =========================================================================================================
@needs_tritonclient
def test_text_model_config(serving_artifact, tmp_path):
    info = R.write_model_repository(serving_artifact, tmp_path / "repo", max_batch=8, max_queue_delay_us=500,
                                    with_onnx_graph=False)
    assert info.models == [C.TEXT_MODEL] and not info.with_tensorrt_plan and not info.with_onnx_graph
    cfg = R.parse_config(tmp_path / "repo" / C.TEXT_MODEL / "config.pbtxt")
    pb2, _ = R._pb2()
    assert cfg.name == C.TEXT_MODEL and cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("TEXT", pb2.TYPE_STRING, [1])
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {"LABEL": (pb2.TYPE_STRING, [1]), "LABEL_ID": (pb2.TYPE_INT32, [1]),
                    "PROBABILITIES": (pb2.TYPE_FP32, [2]), "TRUNCATED": (pb2.TYPE_BOOL, [1]),
                    "EMPTY_INPUT": (pb2.TYPE_BOOL, [1]), "RATIONALE": (pb2.TYPE_STRING, [1])}
    assert cfg.parameters["artifact_dir"].string_value == "artifact"
    assert pathlib.Path(cfg.parameters["python_path"].string_value, "adapler_export").is_dir()
    version = tmp_path / "repo" / C.TEXT_MODEL / "1"
    assert (version / "model.py").is_file()
    assert R.repository_artifacts(tmp_path / "repo") == [(version / "artifact").resolve()]  # an intact copy
    marker = json.loads((tmp_path / "repo" / R.REPOSITORY_MARKER).read_text())
    assert marker["artifact"] == str(serving_artifact.resolve()) and marker["labels"] == ["negative", "positive"]
    assert not (tmp_path / "repo" / C.PLAN_MODEL).exists()
    assert set(R.validate_repository(tmp_path / "repo")) == {C.TEXT_MODEL}
    assert R.loadable_models(tmp_path / "repo") == [C.TEXT_MODEL]
    # nothing but the repository is left beside it (temp folder renamed, not copied)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


@needs_tritonclient
def test_reference_mode_points_at_artifact(serving_artifact, tmp_path):
    R.write_model_repository(serving_artifact, tmp_path / "repo", artifact_mode="reference")
    cfg = R.parse_config(tmp_path / "repo" / C.TEXT_MODEL / "config.pbtxt")
    assert cfg.parameters["artifact_dir"].string_value == str(serving_artifact.resolve())
    assert not (tmp_path / "repo" / C.TEXT_MODEL / "1" / "artifact").exists()


@needs_tritonclient
def test_artifacts_resolve_by_name_under_the_cache(tiny_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPLER_HOME", str(tiny_home))
    info = R.write_model_repository("tiny", tmp_path / "repo", artifact_mode="reference")
    assert info.artifact == (tiny_home / "artifacts" / "tiny").resolve()
    assert TextClassifier("tiny").artifact_dir == tiny_home / "artifacts" / "tiny"
    with pytest.raises(ManifestError, match=f"no artifact at {tiny_home / 'artifacts' / 'nosuch'}"):
        R.write_model_repository("nosuch", tmp_path / "repo2")


@needs_tritonclient
@pytest.mark.parametrize("how", ["missing segment", "modified file", "no manifest"])
def test_triton_checks_the_artifact_first(serving_artifact, tmp_path, how):
    """A damaged artifact fails at `triton` with one line, before anything is written (and at `serve
    --repo`, before a server starts, when a repository's copy is damaged)."""
    artifact = tmp_path / "artifact"
    shutil.copytree(serving_artifact, artifact)
    parser = _parser()
    args = parser.parse_args(["triton", "--artifact", str(artifact), "--repo", str(tmp_path / "repo")])
    good = tmp_path / "good-repo"
    R.write_model_repository(artifact, good)
    expected = _damage(artifact, how)
    with pytest.raises(ManifestError, match=expected) as error:
        args.func(args)
    assert "\n" not in str(error.value) and not (tmp_path / "repo").exists()
    _damage(good / C.TEXT_MODEL / "1" / "artifact", how)
    args = parser.parse_args(["serve", "--repo", str(good)])
    with pytest.raises(ManifestError, match=expected):
        args.func(args)


def _config_dict(cfg) -> dict:
    """A ModelConfig as the JSON that Triton hands a Python model (``args["model_config"]``)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)


def _stand_in_check(model_dir: pathlib.Path, config: dict) -> None:
    """The stock onnxruntime backend's load-time check of a config against its graph (the stand-in's)."""
    F.OnnxRuntimeStandIn().initialize({"model_config": json.dumps(config), "model_repository": str(model_dir),
                                       "model_version": "1"})


@needs_tritonclient
@pytest.mark.parametrize("mode", ["copy", "hardlink", "reference"])
def test_onnx_graph_model_config(serving_artifact, tmp_path, mode):
    """Written by default where the artifact has onnx/model.onnx: adapler_onnx for Triton's stock onnxruntime
    backend (dynamic dims, batching, the graph file by artifact_mode) and the tokenizer ensemble in front;
    the config's I/O is the graph's own, as the stock backend checks it at load time."""
    repo = tmp_path / "repo"
    info = R.write_model_repository(serving_artifact, repo, max_batch=8, artifact_mode=mode)
    assert info.with_onnx_graph and not info.with_tensorrt_plan
    assert info.models == [C.TEXT_MODEL, C.ONNX_MODEL, C.TOKENIZER_MODEL, C.ONNX_ENSEMBLE_MODEL]
    configs = R.validate_repository(repo)
    pb2, _ = R._pb2()
    onnx = configs[C.ONNX_MODEL]
    assert (onnx.backend, onnx.platform, onnx.max_batch_size, onnx.default_model_filename) == \
        ("onnxruntime", "", 8, "model.onnx")
    assert onnx.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in onnx.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_AUTO)]
    assert {t.name: (t.data_type, list(t.dims)) for t in onnx.input} == {
        "input_ids": (pb2.TYPE_INT32, [-1]), "attention_mask": (pb2.TYPE_INT32, [-1])}
    assert {t.name: (t.data_type, list(t.dims)) for t in onnx.output} == {
        "logits": (pb2.TYPE_FP32, [2]), "kept_positions_0": (pb2.TYPE_INT32, [-1]),
        "kept_positions_1": (pb2.TYPE_INT32, [-1])}
    graph, source = repo / C.ONNX_MODEL / "1" / "model.onnx", serving_artifact / "onnx" / "model.onnx"
    assert graph.read_bytes() == source.read_bytes()
    if mode == "reference":
        assert graph.is_symlink() and graph.resolve() == source.resolve()
    else:
        assert not graph.is_symlink() and (graph.stat().st_ino == source.stat().st_ino) == (mode == "hardlink")
    config = _config_dict(onnx)
    _stand_in_check(repo / C.ONNX_MODEL, config)  # the config's tensors are the graph's
    for tensor, dims, message in (("logits", ["3"], "dims"), ("kept_positions_0", ["-1", "-1"], "dims")):
        broken = json.loads(json.dumps(config))
        next(t for t in broken["output"] if t["name"] == tensor)["dims"] = dims
        with pytest.raises(ValueError, match=message):
            _stand_in_check(repo / C.ONNX_MODEL, broken)
    ens = configs[C.ONNX_ENSEMBLE_MODEL]
    assert ens.platform == "ensemble" and ens.max_batch_size == 8
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [C.TOKENIZER_MODEL, C.ONNX_MODEL]
    assert {t.name for t in ens.output} == {t.name for t in onnx.output} | {C.EMPTY_INPUT}
    assert configs[C.TOKENIZER_MODEL].parameters["max_length"].string_value == str(F.TINY_MAX_LENGTH)
    command = (f"tritonserver --model-repository={repo.resolve()} --model-control-mode=explicit "
               f"--load-model={C.ONNX_ENSEMBLE_MODEL}")
    assert info.onnx_ensemble_command == command and command in (repo / "README.md").read_text()
    # this wheel has no onnxruntime backend: only the Python models load here
    assert R.loadable_models(repo) == [C.TEXT_MODEL, C.TOKENIZER_MODEL]
    assert R.loadable_models(repo, {"python", "onnxruntime"})[-1] == C.ONNX_ENSEMBLE_MODEL


@needs_tritonclient
def test_with_onnx_graph_needs_the_graph(serving_artifact, tmp_path):
    """An artifact built before the one graph: no one-graph models by default, a one-line error when asked."""
    old = F.without_one_graph(serving_artifact, tmp_path / "old-artifact")
    assert R.write_model_repository(old, tmp_path / "repo").models == [C.TEXT_MODEL]
    with pytest.raises(R.RepositoryError, match="--with-onnx-graph: artifact .* has no one-graph model .*rebuild") \
            as error:
        R.write_model_repository(old, tmp_path / "repo2", with_onnx_graph=True)
    assert "\n" not in str(error.value) and not (tmp_path / "repo2").exists()


@needs_tritonclient
def test_plan_tokenizer_ensemble(serving_artifact_single, tmp_path):
    """With the single engine too: adapler_plan and its ensemble beside the one-graph ones, one tokenizer."""
    repo = tmp_path / "repo"
    info = R.write_model_repository(serving_artifact_single, repo, max_batch=4)  # auto: the artifact has both
    assert info.with_tensorrt_plan and info.with_onnx_graph
    assert info.models == [C.TEXT_MODEL, C.PLAN_MODEL, C.ONNX_MODEL, C.TOKENIZER_MODEL, C.ENSEMBLE_MODEL,
                           C.ONNX_ENSEMBLE_MODEL]
    configs = R.validate_repository(repo)
    plan = configs[C.PLAN_MODEL]
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4
    assert (repo / C.PLAN_MODEL / "1" / "model.plan").read_bytes() == b"placeholder engine"
    assert {t.name: list(t.dims) for t in plan.input} == {"input_ids": [-1], "attention_mask": [-1]}
    outs = {t.name: list(t.dims) for t in plan.output}
    assert outs == {"logits": [2], "kept_positions_0": [-1], "kept_positions_1": [-1]}
    tok = configs[C.TOKENIZER_MODEL]
    assert tok.backend == "python" and [t.name for t in tok.output] == list(C.TOKENIZER_OUTPUTS)
    assert tok.parameters["max_length"].string_value == str(F.TINY_MAX_LENGTH)
    version = repo / C.TOKENIZER_MODEL / "1"
    assert sorted(p.name for p in version.iterdir()) == ["contract.py", "model.py", "tokenization.py", "tokenizer"]
    ens = configs[C.ENSEMBLE_MODEL]
    assert ens.platform == "ensemble"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [C.TOKENIZER_MODEL, C.PLAN_MODEL]
    assert {t.name for t in ens.output} == set(outs) | {C.EMPTY_INPUT}
    assert (repo / "plugins" / R.PLUGIN_LIB).is_file()
    cmd = (f"tritonserver --model-repository={repo.resolve()} "
           f"--backend-config=tensorrt,plugins={repo.resolve()}/plugins/libadapler_plugins.so")
    assert cmd in (repo / "README.md").read_text() and info.tritonserver_command == cmd
    # this wheel has no TensorRT backend: only the Python models load here
    assert R.loadable_models(repo) == [C.TEXT_MODEL, C.TOKENIZER_MODEL]
    assert R.loadable_models(repo, {"python", "tensorrt"}) == [C.PLAN_MODEL, C.TEXT_MODEL, C.TOKENIZER_MODEL,
                                                                C.ENSEMBLE_MODEL]


def test_with_tensorrt_plan_needs_the_engine(serving_artifact, tmp_path):
    with pytest.raises(R.RepositoryError, match="no single TensorRT engine .*not asked for"):
        R.write_model_repository(serving_artifact, tmp_path / "repo", with_tensorrt_plan=True)
    assert list(tmp_path.iterdir()) == []


@needs_tritonclient
def test_atomic_write_and_overwrite(serving_artifact, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    R.write_model_repository(serving_artifact, repo)
    with pytest.raises(AdaplerError, match="already exists; pass --force"):
        R.write_model_repository(serving_artifact, repo)
    marker = repo / "marker"
    marker.write_text("old")

    def broken(_):
        raise R.RepositoryError("injected failure")

    monkeypatch.setattr(R, "validate_repository", broken)
    with pytest.raises(R.RepositoryError, match="injected"):
        R.write_model_repository(serving_artifact, repo, overwrite=True)
    assert marker.read_text() == "old"  # the old repository is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temp folder left
    monkeypatch.undo()
    R.write_model_repository(serving_artifact, repo, overwrite=True, max_batch=3)
    assert not marker.exists()
    assert R.parse_config(repo / C.TEXT_MODEL / "config.pbtxt").max_batch_size == 3
    other = tmp_path / "user-folder"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(AdaplerError, match="not an adapler-export repository"):
        R.write_model_repository(serving_artifact, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(AdaplerError, match="overlaps the input"):
        R.write_model_repository(serving_artifact, serving_artifact / "repo", artifact_mode="reference")


@needs_tritonclient
def test_validation_rejects_broken_configs(serving_artifact_single, tmp_path):
    repo = tmp_path / "repo"
    R.write_model_repository(serving_artifact_single, repo)
    cfg_path = repo / C.TEXT_MODEL / "config.pbtxt"
    good = cfg_path.read_text()
    cfg_path.write_text(good + "\nnot_a_field: 3\n")
    with pytest.raises(R.RepositoryError, match="not_a_field"):
        R.validate_repository(repo)
    cfg_path.write_text(good.replace('name: "adapler_text"', 'name: "other"'))
    with pytest.raises(R.RepositoryError, match="differs from folder"):
        R.validate_repository(repo)
    cfg_path.write_text(good)
    ens = repo / C.ENSEMBLE_MODEL / "config.pbtxt"
    good_plan_ens = ens.read_text()
    ens.write_text(good_plan_ens.replace('key: "logits"', 'key: "no_such_output"'))
    with pytest.raises(R.RepositoryError, match="no_such_output"):
        R.validate_repository(repo)
    ens.write_text(good_plan_ens)
    # the ensemble's tensors must have the types and dims of the models that produce or take them
    onnx_ens = repo / C.ONNX_ENSEMBLE_MODEL / "config.pbtxt"
    good_ens = onnx_ens.read_text()
    logits = 'name: "logits"\n  data_type: TYPE_FP32\n  dims: 2\n'
    assert good_ens.count(logits) == 1
    for broken, message in ((logits.replace("TYPE_FP32", "TYPE_FP16"), "'logits' is TYPE_FP32 in adapler_onnx but "
                                                                       "TYPE_FP16 in adapler_onnx_ensemble"),
                            (logits.replace("dims: 2", "dims: 3"), r"'logits' has dims \[2\] in adapler_onnx but "
                                                                   r"\[3\] in adapler_onnx_ensemble")):
        onnx_ens.write_text(good_ens.replace(logits, broken))
        with pytest.raises(R.RepositoryError, match=message):
            R.validate_repository(repo)
    onnx_ens.write_text(good_ens)
    (repo / C.ONNX_MODEL / "1" / "model.onnx").unlink()
    with pytest.raises(R.RepositoryError, match="adapler_onnx/1/model.onnx missing"):
        R.validate_repository(repo)


def test_classifier_documented_behaviour(tiny_classifier):
    clf = tiny_classifier
    assert clf.max_length == F.TINY_MAX_LENGTH and clf.labels == ["negative", "positive"]
    empty, blank, control, long, normal = clf.classify(
        ["", " \t\n ", "\x00\x01\u200b", "good " * 100, "it 's a charming and often affecting journey ."])
    for p in (empty, blank, control):
        assert p.empty_input and not p.truncated and p.tokens == ["[CLS]", "[SEP]"]
        assert p.kept_positions == [[0], [0]] and p.kept_tokens == [["[CLS]"], ["[CLS]"]]
    assert long.truncated and not long.empty_input and len(long.tokens) == clf.max_length
    assert long.tokens[-1] == "[SEP]"
    assert not normal.truncated and not normal.empty_input and normal.kept_tokens[0][0] == "[CLS]"
    assert len(normal.kept_positions[-1]) < len(normal.tokens)  # the links drop tokens: a real rationale
    assert abs(float(normal.probabilities.sum()) - 1.0) < 1e-6
    # one shape: kept_tokens is a list per link on the object, in as_dict() and in JSON
    record = json.loads(json.dumps(normal.as_dict()))
    assert set(record) == {"label", "label_id", "probabilities", "truncated", "empty_input", "tokens",
                           "kept_positions", "kept_tokens"}
    assert record["kept_tokens"] == normal.kept_tokens and record["kept_positions"] == normal.kept_positions
    assert json.loads(normal.rationale_json()) == normal.rationale()
    assert clf.classify([]) == []
    for bad, message in (("one string", "not one string"), ([None], "text 0 is NoneType, not str"),
                         (["fine", "x\ud800y"], "text 1 is not valid Unicode: lone surrogate '\\\\ud800'")):
        with pytest.raises(AdaplerError, match=message) as error:
            clf.classify(bad)
        assert "\n" not in str(error.value)
    enc = encode(clf.tokenizer, ["good", "good good good"], 32, pad_to_multiple_of=8)
    assert enc.input_ids.dtype == np.int32 and enc.input_ids.shape == (2, 8)
    assert enc.attention_mask.sum(axis=1).tolist() == [3, 5]
    assert np.allclose(softmax(np.array([[0.0, 0.0]])), 0.5)


def test_tokenizer_matches_the_checkpoint_tokenizer(tiny_classifier, tiny_home):
    """The serving tokenizer (tokenizer.json, no torch) gives the ids of the training tokenizer
    (AutoTokenizer on the checkpoint), truncation included."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(tiny_home / "checkpoints" / "tiny"))
    texts = read_texts(SST2_DEV, limit=64) + ["", "  ", "good " * 100, "Héllo WORLD 😀 שלום", "a\x00b\u0301c"]
    enc = encode(tiny_classifier.tokenizer, texts, tiny_classifier.max_length)
    want = reference(texts, truncation=True, max_length=tiny_classifier.max_length)["input_ids"]
    got = [row[mask == 1].tolist() for row, mask in zip(enc.input_ids, enc.attention_mask)]
    assert got == want
    assert enc.tokens == [reference.convert_ids_to_tokens(ids) for ids in want]


def test_classifier_imports_no_torch(serving_artifact):
    """What the Triton model runs (runtime, tokenizer, ONNX Runtime backend) never imports torch."""
    code = ("import sys\n"
            "from adapler_export.serving.runtime import TextClassifier\n"
            f"clf = TextClassifier({str(serving_artifact)!r})\n"
            "print(clf.classify(['a charming film', ''])[1].empty_input)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-3:] == ["True", "[]", ""], out.stdout


# Arbitrary text: any code point (surrogates included), control / format / combining / separator characters
# (NUL, right-to-left marks, zero-width joiners), and long repetitions; plus 1 MiB strings as examples.
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=300),
    st.text(st.characters(categories=["Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp", "So"]), max_size=80),
    st.builds(lambda piece, n: piece * n, st.text(st.characters(exclude_categories=()), min_size=1, max_size=6),
              st.integers(1, 2000)),
)
TEXT_EXAMPLES = ["", "\x00", "a\x00b", "مرحبا بالعالم", "\u202eevil\u202c", "שלום עולם", "e\u0301" * 200,
                 "👩\u200d👩\u200d👧 🇫🇷", "\ud83d\ude00", "word " * (ONE_MIB // 5 + 1), "\x00" * ONE_MIB,
                 "é" * ONE_MIB]


def _classify_or_error(clf, text):
    """(prediction dict, None) or (None, error line): the only two outcomes allowed."""
    try:
        return clf.classify([text])[0].as_dict(), None
    except AdaplerError as exc:
        assert "\n" not in str(exc)
        return None, str(exc)


def _check_invariants(text: str, result: dict | None, error: str | None, clf) -> None:
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text[:ONE_MIB])
    if has_surrogate:
        assert result is None and "lone surrogate" in error
        return
    assert error is None
    tokens = result["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) <= clf.max_length
    assert result["empty_input"] == (len(tokens) == 2)
    assert result["empty_input"] or text.strip()  # whitespace-only text is always flagged
    assert not result["truncated"] or len(tokens) == clf.max_length
    probs = np.array(result["probabilities"])
    assert np.isfinite(probs).all() and abs(probs.sum() - 1.0) < 1e-5
    assert result["label"] == clf.labels[result["label_id"]]
    previous = list(range(len(tokens)))
    for kept in result["kept_positions"]:  # each link keeps [CLS] and an ordered subset of what it got
        assert kept[0] == 0 and kept == sorted(kept) and set(kept) <= set(previous)
        previous = kept


def _with_examples(test, values):
    for value in values:
        test = example(value)(test)
    return test


def _run_property(test, name: str, tried: list) -> None:
    test()
    print(f"\n{name}: {len(tried)} inputs tried (longest {max(tried)} characters or bytes)")


def test_classifier_over_arbitrary_text(tiny_classifier):
    """Every text gets a prediction or a one-line error (lone surrogates only); never a crash."""
    tried = []

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ANY_TEXT)
    def check(text):
        tried.append(len(text))
        result, error = _classify_or_error(tiny_classifier, text)
        _check_invariants(text, result, error, tiny_classifier)

    _run_property(_with_examples(check, TEXT_EXAMPLES), "library classifier", tried)


def test_find_triton_errors(monkeypatch, tmp_path):
    require_module("pytriton", "the tritonserver binary comes with `pip install -e '.[serving]'` (nvidia-pytriton)")
    dist = find_triton()
    assert dist.binary.is_file() and dist.stub.is_file() and "python" in dist.backends
    with pytest.raises(TritonServerError, match="stub for Python 2.7"):
        find_triton("2.7")
    monkeypatch.setenv("TRITONSERVER_ROOT", str(tmp_path))
    with pytest.raises(TritonServerError, match="tritonserver binary not found"):
        find_triton()


def test_load_is_loopback_only():
    from adapler_export.serving.load import is_loopback, run_load

    assert is_loopback("127.0.0.1:8000") and is_loopback("http://localhost:1") and is_loopback("[::1]:5")
    with pytest.raises(ValueError, match="not a loopback"):
        run_load("10.1.2.3:8000", ["x"])


@needs_tritonclient
def test_cli_parsers(serving_artifact, tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["triton", "--artifact", str(serving_artifact), "--repo", str(tmp_path / "repo"),
                              "--max-batch", "4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "model repository written" in out and f"--load-model={C.ONNX_ENSEMBLE_MODEL}" in out
    assert R.parse_config(tmp_path / "repo" / C.TEXT_MODEL / "config.pbtxt").max_batch_size == 4
    for flags, want in (([], None), (["--with-onnx-graph"], True), (["--no-onnx-graph"], False)):
        args = parser.parse_args(["triton", "--artifact", "a", "--repo", "r", *flags])
        assert args.with_onnx_graph is want
    with pytest.raises(SystemExit):
        parser.parse_args(["triton", "--artifact", "a", "--repo", "r", "--with-onnx-graph", "--no-onnx-graph"])
    args = parser.parse_args(["serve", "--repo", "x", "--load", "--concurrency", "2", "--protocol", "both"])
    assert args.load and args.concurrency == 2 and args.protocol == "both"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve"])  # --repo or --artifact is required


# =========================================================================================================
# (b) real servers
# =========================================================================================================
def _need_triton() -> None:
    try:
        find_triton()
    except TritonServerError as e:  # the serving extra (nvidia-pytriton) ships it: CI must have it
        require(False, f"no local tritonserver: {e}")


def _start(repo, tmp_path_factory, env=None, stand_in: bool = False) -> TritonServer:
    """A server on `repo`; `stand_in`: with the stand-in for the stock onnxruntime backend, so that the
    one-graph models load too."""
    _need_triton()
    python_backends = F.onnxruntime_stand_in(tmp_path_factory.mktemp("stand-in")) if stand_in else None
    server = TritonServer(repo, workdir=tmp_path_factory.mktemp("triton-work"), env=env,
                          python_backends=python_backends)
    server.start(timeout=300)
    assert server.is_ready() and server.http_url.startswith("127.0.0.1:")
    print(f"\ntritonserver pid {server.pid} ready in {server.startup_seconds:.1f}s "
          f"(http {server.http_url}, grpc {server.grpc_url})")
    return server


def _stop(server: TritonServer) -> None:
    """Stop by PID (SIGTERM; SIGKILL of its process group after the timeout): the server and the
    Python-backend stubs it spawned (same process group) are gone afterwards."""
    pid = server.pid
    assert server.stop() == 0
    assert pid is not None and _pid_gone(pid), f"tritonserver pid {pid} still alive"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def _client(server, protocol):
    from adapler_export.serving.client import AdaplerClient

    return AdaplerClient(server.url(protocol), protocol, max_batch=MAX_BATCH)


def _reference(artifact, backend, texts, chunk):
    clf = TextClassifier(artifact, backend=backend)
    preds = []
    for i in range(0, len(texts), chunk):
        preds += clf.classify(texts[i:i + chunk])
    return clf, preds


def _assert_same(server_results, ref_preds):
    """Served results are the library's predictions (`Prediction.as_dict()`), key for key."""
    assert len(server_results) == len(ref_preds)
    for got, ref in zip(server_results, ref_preds):
        want = ref.as_dict()
        np.testing.assert_allclose(got.pop("probabilities"), want.pop("probabilities"), rtol=0, atol=1e-6)
        assert got == want


def _ensemble_answers(url: str, ensemble: str, texts: list, concurrency: int = 8, pairs: list | None = None) -> list:
    """The ensemble's answer per text (`AdaplerClient.run_graph`; per sentence pair with `pairs`): one text per
    request, from `concurrency` clients at once, so that the dynamic batchers join requests of equal padded
    length."""
    from adapler_export.serving.client import AdaplerClient

    def run(indices):
        with AdaplerClient(url, model_name=ensemble, max_batch=1) as client:
            return [(i, client.run_graph([texts[i]], None if pairs is None else [pairs[i]])[0]) for i in indices]

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(run, [range(k, len(texts), concurrency) for k in range(concurrency)]))
    answers = dict(pair for part in parts for pair in part)
    return [answers[i] for i in range(len(texts))]


def _compare_with_library(answers: list, predictions: list) -> dict:
    """Ensemble answers vs the library's predictions: how many labels, kept positions and empty flags agree,
    and the largest |logit difference|."""
    pairs = list(zip(answers, predictions, strict=True))
    return {"texts": len(pairs),
            "labels": sum(int(np.argmax(a["logits"])) == p.label_id for a, p in pairs),
            "kept": sum(a["kept_positions"] == p.kept_positions for a, p in pairs),
            "empty": sum(a["empty_input"] == p.empty_input for a, p in pairs),
            "max_abs_logit": max(float(np.max(np.abs(np.subtract(a["logits"], p.logits)))) for a, p in pairs)}


def _assert_ensemble_is_the_library(url: str, ensemble: str, predictions: list, texts: list,
                                    logit_atol: float = 1e-4, pairs: list | None = None) -> None:
    """fp32: every label, kept position and empty flag the library's, logits within `logit_atol`."""
    stats = _compare_with_library(_ensemble_answers(url, ensemble, texts, pairs=pairs), predictions)
    print(f"\n{ensemble} vs the library's TextClassifier: {stats}")
    n = len(texts)
    assert (stats["labels"], stats["kept"], stats["empty"]) == (n, n, n), stats
    assert stats["max_abs_logit"] <= logit_atol, stats


def _assert_stubs_import_no_torch(server: TritonServer) -> None:
    """The Python-backend stub processes (children of tritonserver) have no torch library mapped."""
    children = [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()
                and _parent_pid(p) == server.pid]
    stubs = [pid for pid in children if "triton_python_backend_stub" in _cmdline(pid)]
    assert stubs, f"no Python-backend stub among tritonserver's children {children}"
    for pid in stubs:
        maps = pathlib.Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, f"stub {pid} loaded torch"
        assert "onnxruntime" in maps or C.TOKENIZER_MODEL in _cmdline(pid)  # the text model's backend loaded


def _parent_pid(proc_dir: pathlib.Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _bad_requests(server, max_length):
    """Every malformed request gets an error (or the documented result); the server stays healthy."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    for proto, mod in (("http", httpclient), ("grpc", grpcclient)):
        with _client(server, proto) as c:
            raw = c._client

            def infer(inputs, _raw=raw):
                return _raw.infer(C.TEXT_MODEL, inputs)

            # wrong dtype
            bad = mod.InferInput("TEXT", [1, 1], "INT32")
            bad.set_data_from_numpy(np.array([[7]], dtype=np.int32))
            with pytest.raises(InferenceServerException, match="(?i)data.?type|BYTES|INT32"):
                infer([bad])
            # wrong input name / missing input
            other = mod.InferInput("NOT_TEXT", [1, 1], "BYTES")
            other.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match="unexpected inference input 'NOT_TEXT'"):
                infer([other])
            with pytest.raises(InferenceServerException, match="missing required input"):
                infer([])
            # empty batch
            empty = mod.InferInput("TEXT", [0, 1], "BYTES")
            empty.set_data_from_numpy(np.zeros((0, 1), dtype=np.object_))
            with pytest.raises(InferenceServerException, match="got 0"):
                infer([empty])
            # wrong shape, too many rows
            wide = mod.InferInput("TEXT", [1, 2], "BYTES")
            wide.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match="unexpected shape"):
                infer([wide])
            with pytest.raises(InferenceServerException, match="(?i)batch"):
                c.infer_raw(["x"] * (MAX_BATCH + 1))
            # undecodable text: error for that request
            with pytest.raises(InferenceServerException, match="not valid UTF-8"):
                c.infer_raw(np.array([[b"\xff\xfe bad"]], dtype=np.object_))
            # documented results: empty / blank text flagged; over-long text truncated
            e, blank, long = c.classify(["", "   ", "this film is good . " * 400])
            for flagged in (e, blank):
                assert flagged["tokens"] == ["[CLS]", "[SEP]"] and flagged["empty_input"] is True
                assert flagged["truncated"] is False and abs(sum(flagged["probabilities"]) - 1.0) < 1e-5
            assert long["truncated"] is True and long["empty_input"] is False
            assert len(long["tokens"]) == max_length
            assert c.is_ready()
            assert c.classify(["a good film ."])[0]["label"]
    assert server.is_alive() and server.is_ready()
    assert "truncated to" in server.log_tail(200000)


# ---- the tiny artifact --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(serving_artifact_single, tmp_path_factory):
    """adapler_text (backend: the real one, failing on the marker token) + adapler_tokenizer, and the
    one-graph adapler_onnx + adapler_onnx_ensemble on the stand-in backend; the single engine's adapler_plan
    needs TensorRT, not here."""
    repo = tmp_path_factory.mktemp("tiny-repo") / "repo"
    R.write_model_repository(serving_artifact_single, repo, max_batch=MAX_BATCH, backend_factory=MARKER_FACTORY)
    server = _start(repo, tmp_path_factory, env=F.python_path_env(), stand_in=True)
    assert server._models_to_load() == [C.ONNX_MODEL, C.TEXT_MODEL, C.TOKENIZER_MODEL, C.ONNX_ENSEMBLE_MODEL]
    yield server
    _stop(server)


@needs_tritonclient
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tiny_server_matches_local(tiny_server, tiny_classifier, protocol):
    texts = read_texts(SST2_DEV, limit=40) + ["", "   ", "good " * 100, "Héllo 😀 שלום"]
    _, ref = _reference(tiny_classifier.artifact_dir, tiny_classifier.backend, texts, MAX_BATCH)
    with _client(tiny_server, protocol) as c:
        _assert_same(c.classify(texts), ref)


@needs_tritonclient
def test_tiny_server_bad_requests(tiny_server):
    _bad_requests(tiny_server, F.TINY_MAX_LENGTH)


@needs_tritonclient
def test_tiny_server_isolates_a_failing_request(tiny_server, tiny_classifier):
    """Concurrent requests joined by the dynamic batcher: the one whose text makes the backend raise gets
    an error; the others get their results."""
    from tritonclient.utils import InferenceServerException

    texts = ["a good film ."] * 6 + [f"it will {F.FAIL_MARKER} ."] + ["a bleak film ."] * 6
    want = [p.label for p in tiny_classifier.classify(texts[:6] + texts[7:])]

    def one(t):
        with _client(tiny_server, "http") as c:
            try:
                return c.classify([t])[0]["label"]
            except InferenceServerException as e:
                return f"error: {e}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, texts))
    assert got[6].startswith("error:") and F.FAIL_MARKER in got[6]
    assert got[:6] + got[7:] == want
    assert tiny_server.is_ready()


@needs_tritonclient
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tiny_server_tokenizer_model(tiny_server, tiny_classifier, protocol):
    """adapler_tokenizer (the ensemble's front): INT32 ids/mask as the library encodes them, padded to a
    multiple of 8, EMPTY_INPUT, and a per-request error for non-UTF-8 text."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(tiny_server.url(protocol))
    try:
        for text in ["a good film .", "", " \t ", "good " * 100]:
            inp = mod.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            res = client.infer(C.TOKENIZER_MODEL, [inp])
            ref = encode(tiny_classifier.tokenizer, [text], tiny_classifier.max_length, pad_to_multiple_of=8)
            assert res.as_numpy("input_ids").dtype == np.int32
            np.testing.assert_array_equal(res.as_numpy("input_ids"), ref.input_ids)
            np.testing.assert_array_equal(res.as_numpy("attention_mask"), ref.attention_mask)
            assert res.as_numpy(C.EMPTY_INPUT).tolist() == [[not text.strip()]]
        inp = mod.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"\xff"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="not valid UTF-8"):
            client.infer(C.TOKENIZER_MODEL, [inp])
    finally:
        client.close()


@needs_tritonclient
def test_tiny_server_onnx_ensemble_is_the_library(tiny_server, tiny_classifier):
    """adapler_onnx_ensemble (adapler_tokenizer -> the one graph in adapler_onnx, on the stand-in for the
    stock backend: the server loads the configs as written) answers as the library classifier does, with
    concurrent requests joined by the dynamic batcher (each request gets its rows of the joined batch)."""
    texts = read_texts(SST2_DEV, limit=48) + ["", "   ", "good " * 100, "Héllo 😀 שלום"]
    predictions = [tiny_classifier.classify([t])[0] for t in texts]
    # Whether the dynamic batcher joins two requests is the scheduler's choice (a busy 2-core machine may run
    # each alone): up to five rounds of concurrent requests, every answer checked, until one round joined some.
    for attempt in range(5):
        _assert_ensemble_is_the_library(tiny_server.http_url, C.ONNX_ENSEMBLE_MODEL, predictions, texts)
        joined = re.findall(r"onnxruntime stand-in: ran (\d+) requests as one batch",
                            tiny_server.log_tail(10 ** 7))
        if joined:
            break
    print(f"requests per joined batch of adapler_onnx: {joined} (round {attempt + 1})")
    assert joined, "no two requests joined in five rounds: the batched path was not exercised"


# ---- a sentence-pair artifact (MRPC): pair_artifact, tests/conftest.py ----------------------------------------
PAIR_EXAMPLES = [("a charming film .", "the story is good ."), ("it was dull", "a boring , bleak movie"),
                 ("", "only the second text")]


def _mrpc_dev_pairs(limit: int) -> tuple:
    from adapler_export.data import load_task

    dev = load_task("mrpc", F.DATA_DIR / "mrpc", splits=("dev",))["dev"]
    return dev.texts[:limit] + ["", "only a first text", "good " * 60], dev.pairs[:limit] + ["", "", "bad " * 60]


@needs_tritonclient
def test_pair_repository_configs(pair_artifact, tmp_path):
    """Every text-taking model of a pair artifact takes TEXT and TEXT_PAIR; the tokenizer gives the token types
    the one graph takes; the ensemble maps them between the two."""
    repo = tmp_path / "repo"
    R.write_model_repository(pair_artifact, repo)
    configs = R.validate_repository(repo)

    def names(tensors):
        return [t.name for t in tensors]

    for model in (C.TEXT_MODEL, C.TOKENIZER_MODEL, C.ONNX_ENSEMBLE_MODEL):
        assert names(configs[model].input) == [C.TEXT_INPUT, C.TEXT_PAIR_INPUT], model
    assert "token_type_ids" in names(configs[C.TOKENIZER_MODEL].output)
    assert names(configs[C.ONNX_MODEL].input) == ["input_ids", "attention_mask", "token_type_ids"]
    steps = configs[C.ONNX_ENSEMBLE_MODEL].ensemble_scheduling.step
    assert dict(steps[0].input_map) == {C.TEXT_INPUT: C.TEXT_INPUT, C.TEXT_PAIR_INPUT: C.TEXT_PAIR_INPUT}
    assert steps[1].input_map["token_type_ids"] == steps[0].output_map["token_type_ids"]
    assert "`TEXT_PAIR`" in (repo / "README.md").read_text()


@pytest.fixture(scope="module")
def pair_server(pair_artifact, tmp_path_factory):
    """adapler_text, adapler_tokenizer and the one-graph ensemble (stand-in backend) of the pair artifact."""
    repo = tmp_path_factory.mktemp("pair-repo") / "repo"
    R.write_model_repository(pair_artifact, repo, max_batch=MAX_BATCH)
    server = _start(repo, tmp_path_factory, stand_in=True)
    yield server
    _stop(server)


@needs_tritonclient
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pair_server_matches_local(pair_server, pair_artifact, protocol):
    """A text-pair request (TEXT + TEXT_PAIR) answers as the library's classify(texts, pairs); a request without
    TEXT_PAIR is refused and the server stays up."""
    from tritonclient.utils import InferenceServerException

    texts, pairs = _mrpc_dev_pairs(24)
    classifier = TextClassifier(pair_artifact)
    reference = [p for i in range(0, len(texts), MAX_BATCH)
                 for p in classifier.classify(texts[i:i + MAX_BATCH], pairs[i:i + MAX_BATCH])]
    with _client(pair_server, protocol) as c:
        _assert_same(c.classify(texts, pairs), reference)
        with pytest.raises(InferenceServerException, match=C.TEXT_PAIR_INPUT):
            c.classify(texts[:2])
        assert c.is_ready()


@needs_tritonclient
def test_pair_server_onnx_ensemble_is_the_library(pair_server, pair_artifact):
    """adapler_onnx_ensemble on pairs: the tokenizer's token types reach the one graph (its answers are the
    library's, kept positions included)."""
    texts, pairs = _mrpc_dev_pairs(32)
    classifier = TextClassifier(pair_artifact)
    predictions = [classifier.classify([t], [p])[0] for t, p in zip(texts, pairs)]
    _assert_ensemble_is_the_library(pair_server.http_url, C.ONNX_ENSEMBLE_MODEL, predictions, texts, pairs=pairs)


def _example_client():
    """examples/triton_client.py, imported."""
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        import triton_client
    finally:
        sys.path.remove(str(REPO_ROOT / "examples"))
    return triton_client


@needs_tritonclient
def test_pair_server_bounded_load(pair_server):
    """run_load on a pair model sends TEXT_PAIR with every text (0 failures, both protocols); without pairs it
    stops before any request with one line, as it does with pairs for a single-text model."""
    from adapler_export.serving.load import run_load

    texts, pairs = _mrpc_dev_pairs(12)
    for protocol in ("http", "grpc"):
        res = run_load(pair_server.url(protocol), texts, pairs=pairs, protocol=protocol, concurrency=2,
                       requests_per_client=4, batch_size=3, max_seconds=120, warmup=1)
        assert (res.failures, res.ok, res.errors) == (0, 8, []), res.summary()
    with pytest.raises(AdaplerError, match=f"{C.TEXT_MODEL} takes {C.TEXT_PAIR_INPUT} .*needs pairs"):
        run_load(pair_server.http_url, texts)
    with pytest.raises(ValueError, match="every text needs its pair"):
        run_load(pair_server.http_url, texts, pairs=pairs[:3])
    assert pair_server.is_ready()


@needs_tritonclient
def test_serve_load_sends_pairs(pair_artifact, capsys):
    """`serve --artifact PAIR --load`: the load sends sentence pairs, by default its task's dev pairs (MRPC
    dev), and every request succeeds over HTTP and gRPC."""
    from adapler_export.cli import main

    _need_triton()
    code = main(["serve", "--artifact", str(pair_artifact), "--load", "--protocol", "both", "--concurrency", "2",
                 "--requests", "3", "--batch-size", "2", "--load-texts", "10", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert [(r["protocol"], r["ok"], r["failures"]) for r in report["load"]] == [("http", 6, 0), ("grpc", 6, 0)]


@needs_tritonclient
def test_serve_load_refuses_a_pair_file_without_tabs(pair_artifact, serving_artifact, tmp_path, capsys, monkeypatch):
    """A pair artifact (or a repository whose adapler_text takes TEXT_PAIR) given --texts with a line holding no
    tab: one line, exit 2, and no server started. A single-text artifact reads the same file as texts."""
    from adapler_export.cli import main
    from adapler_export.serving import cli_commands

    def no_server(self, *args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(TritonServer, "start", no_server)
    texts = tmp_path / "texts.txt"
    texts.write_text("a charming film .\tthe story is good .\nno second text here\n", encoding="utf-8")
    repo = tmp_path / "repo"
    R.write_model_repository(pair_artifact, repo)
    for source in (["--artifact", str(pair_artifact)], ["--repo", str(repo)]):
        assert main(["serve", *source, "--load", "--texts", str(texts)]) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"adapler-export: error: {texts}:2: expected two texts separated by a tab "
                                    "(a sentence pair)"], err
    args = _parser().parse_args(["serve", "--artifact", str(serving_artifact), "--load", "--texts", str(texts)])
    manifest = read_manifest(serving_artifact)
    assert cli_commands._load_inputs(args, manifest) == (["a charming film .\tthe story is good .",
                                                           "no second text here"], None)


def test_serve_load_inputs_follow_the_task(pair_artifact, serving_artifact, tmp_path):
    """--load's default: an artifact's own task's dev examples (MRPC dev pairs for MRPC, IMDB reviews for IMDB),
    SST-2 dev for an SST-2 artifact as before; --texts for pairs: "first<TAB>second" lines, or the task's GLUE .tsv."""
    from adapler_export.data import load_dev
    from adapler_export.serving import cli_commands

    parser = _parser()
    pair_manifest, single_manifest = read_manifest(pair_artifact), read_manifest(serving_artifact)
    dev = load_dev("mrpc")
    args = parser.parse_args(["serve", "--artifact", "a", "--load", "--load-texts", "5"])
    assert cli_commands._load_inputs(args, pair_manifest) == (dev.texts[:5], dev.pairs[:5])
    assert cli_commands._load_inputs(args, single_manifest) == (read_texts(SST2_DEV, limit=5), None)
    imdb_dev = F.DATA_DIR / "imdb" / "dev.tsv"  # a single-text artifact of another task: that task's dev texts
    if imdb_dev.is_file():
        imdb_manifest = dataclasses.replace(single_manifest, task="imdb")
        assert cli_commands._load_inputs(args, imdb_manifest) == (read_texts(imdb_dev, limit=5), None)
    glue = parser.parse_args(["serve", "--artifact", "a", "--load", "--texts", str(F.DATA_DIR / "mrpc" / "dev.tsv")])
    assert cli_commands._load_inputs(glue, pair_manifest) == (dev.texts, dev.pairs)
    lines = tmp_path / "pairs.txt"
    lines.write_text("one\ttwo\nthree\tfour\n", encoding="utf-8")
    args = parser.parse_args(["serve", "--artifact", "a", "--load", "--texts", str(lines)])
    assert cli_commands._load_inputs(args, pair_manifest) == (["one", "three"], ["two", "four"])


@needs_tritonclient
def test_client_example_classifies_pairs(pair_server, pair_artifact, tmp_path, capsys):
    """examples/triton_client.py on a pair model (it finds TEXT_PAIR in the model's metadata): texts with their
    --pair and --file lines "first<TAB>second", answered as the library classifies the pairs; the ensemble too;
    a text without its pair or a line without a tab is one line of error."""
    triton_client = _example_client()
    texts, pairs = [t for t, _ in PAIR_EXAMPLES], [p for _, p in PAIR_EXAMPLES]
    want = TextClassifier(pair_artifact).classify(texts, pairs)
    url = pair_server.http_url
    file = tmp_path / "pairs.txt"
    file.write_text("".join(f"{t}\t{p}\n" for t, p in PAIR_EXAMPLES[1:]), encoding="utf-8")
    argv = ["--url", url, PAIR_EXAMPLES[0][0], "--pair", PAIR_EXAMPLES[0][1], "--file", str(file), "--json"]
    assert triton_client.main(argv) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["pair"]) for r in results] == PAIR_EXAMPLES
    assert [r["label_id"] for r in results] == [p.label_id for p in want]
    assert [r["kept_positions"] for r in results] == [p.kept_positions for p in want]
    assert triton_client.main(["--url", pair_server.grpc_url, "--protocol", "grpc", "--model", C.ONNX_ENSEMBLE_MODEL,
                               "--file", str(file), "--json"]) == 0
    graph = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [int(np.argmax(r["logits"])) for r in graph] == [p.label_id for p in want[1:]]
    assert triton_client.main(["--url", url, PAIR_EXAMPLES[0][0], "--pair", PAIR_EXAMPLES[0][1]]) == 0
    assert f"{PAIR_EXAMPLES[0][0]!r} + {PAIR_EXAMPLES[0][1]!r}" in capsys.readouterr().out
    file.write_text("a film\tanother\nno tab\n", encoding="utf-8")
    for bad, message in ((["--file", str(file)], f"{file}:2: expected two texts separated by a tab"),
                         (["a film"], f"model {C.TEXT_MODEL} classifies sentence pairs: 1 texts need 1 --pair")):
        with pytest.raises(SystemExit) as exit_:
            triton_client.main(["--url", url, *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@needs_tritonclient
def test_client_example_keeps_blank_lines(tiny_server, tmp_path, capsys):
    """examples/triton_client.py --file: line N is result N, blank lines flagged like `predict --file`."""
    triton_client = _example_client()
    texts = tmp_path / "texts.txt"
    texts.write_text("a charming film .\n\n   \na dull one .\n", encoding="utf-8")
    assert triton_client.main(["--url", tiny_server.http_url, "--file", str(texts), "--json"]) == 0
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in results] == ["a charming film .", "", "   ", "a dull one ."]
    assert [r["empty_input"] for r in results] == [False, True, True, False]
    assert err.count("is empty") == 2 and "text 2 is empty" in err
    assert triton_client.main(["--url", tiny_server.http_url, "--file", str(texts)]) == 0
    assert capsys.readouterr().out.count("(empty input)") == 2


@needs_tritonclient
def test_tiny_server_model_setup(tiny_server):
    """The model says in the server log which backend `auto` chose and why (the one graph in one ONNX Runtime
    session), and its stubs hold no torch."""
    log = tiny_server.log_tail(500000)
    assert re.search(r"adapler_text: backend: onnxruntime-graph \(.+one-graph model.+\)", log)  # choice, reason
    assert re.search(r"adapler_text: artifact .+, backend onnxruntime-graph, max_length", log)
    _assert_stubs_import_no_torch(tiny_server)


@needs_tritonclient
def test_tiny_server_over_arbitrary_text_and_bytes(tiny_server, tiny_classifier):
    """Any text (lone surrogates sent as their 'surrogatepass' bytes) and any bytes through the BYTES input:
    the library's prediction, or a one-line INVALID_ARG error for undecodable input; the server stays
    healthy throughout."""
    from tritonclient.utils import InferenceServerException

    tried = []
    client = _client(tiny_server, "http")

    def served(payload: bytes):
        try:
            return client.classify([payload])[0], None
        except InferenceServerException as exc:
            assert "\n" not in exc.message()
            return None, exc.message()

    def check_payload(payload: bytes):
        tried.append(len(payload))
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            result, error = served(payload)
            assert result is None and "not valid UTF-8" in error, error
            return
        local, local_error = _classify_or_error(tiny_classifier, text)
        assert local_error is None
        result, error = served(payload)
        assert error is None, error
        assert result == local

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ANY_TEXT)
    def check_text(text):
        check_payload(text.encode("utf-8", "surrogatepass"))

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=400))
    def check_bytes(payload):
        check_payload(payload)

    check_text = _with_examples(check_text, TEXT_EXAMPLES)
    check_bytes = _with_examples(check_bytes, [b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"ok\x00\x00", b"\x00"])
    try:
        _run_property(check_text, "server, text", tried)
        tried.clear()
        _run_property(check_bytes, "server, bytes", tried)
    finally:
        client.close()
    assert tiny_server.is_ready()
    with _client(tiny_server, "grpc") as c:
        assert c.is_ready()


@needs_tritonclient
def test_stop_escalates_to_sigkill(serving_artifact, tmp_path_factory):
    """stop() with no grace: SIGKILL of the server's process group; stubs and their shared memory go too."""
    repo = tmp_path_factory.mktemp("kill-repo") / "repo"
    R.write_model_repository(serving_artifact, repo)
    server = _start(repo, tmp_path_factory)
    pid, prefix = server.pid, server._shm_prefix
    assert list(pathlib.Path("/dev/shm").glob(prefix + "*")), "the Python backend's shm region exists"
    assert server.stop(timeout=0.01) == -signal.SIGKILL
    assert _pid_gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not list(pathlib.Path("/dev/shm").glob(prefix + "*"))


def test_port_clash_is_retried(tmp_path, monkeypatch):
    """A picked port taken before tritonserver binds it: the start is retried on fresh ports."""
    import socket

    from adapler_export.serving import server as S

    _need_triton()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    calls = []
    real_free_ports = S.free_ports

    def flaky_free_ports(n, host=S.LOOPBACK):
        calls.append(n)
        ports = real_free_ports(n, host)
        return [busy.getsockname()[1]] + ports[1:] if len(calls) == 1 else ports

    monkeypatch.setattr(S, "free_ports", flaky_free_ports)
    (tmp_path / "empty-repo").mkdir()
    server = TritonServer(tmp_path / "empty-repo", models=[], workdir=tmp_path / "work")
    try:
        server.start(timeout=60)
        assert len(calls) == 2 and server.http_port != busy.getsockname()[1] and server.is_ready()
        assert "already in use" in (tmp_path / "work" / "tritonserver.log").read_text()
    finally:
        server.stop()
        busy.close()


# ---- `serve`: every way out stops the server and removes its temporary files --------------------------------
def _serve_process(tmp_path, *serve_args):
    """`adapler-export serve ...` in a subprocess whose temp folder is tmp_path/tmp (to see what it leaves)."""
    _need_triton()
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "adapler_export.cli", "serve", *serve_args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _left_in_temp(tmp_path) -> list:
    """What the process left in its temp folder, but tritonserver's own `.ses` session file (one per temp
    folder, shared by every tritonserver that uses it: not ours to remove)."""
    return sorted(p.name for p in (tmp_path / "tmp").iterdir() if p.name != ".ses")


class _StderrLines:
    """The stderr lines of a process, read by a thread (a wait never blocks past its timeout)."""

    def __init__(self, proc):
        self._queue: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=lambda: [self._queue.put(line.rstrip("\n")) for line in proc.stderr],
                         daemon=True).start()

    def until(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self._queue.get(timeout=1.0))
            except queue.Empty:
                continue
            if needle in self.seen[-1]:
                return self.seen[-1]
        raise AssertionError(f"{needle!r} not seen in {timeout:.0f}s; stderr so far: {self.seen}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signals(serving_artifact, tmp_path, signum):
    proc = _serve_process(tmp_path, "--artifact", str(serving_artifact))
    try:
        stderr = _StderrLines(proc)
        server_pid = int(stderr.until("tritonserver pid", timeout=180).split()[2])
        stderr.until("serving; Ctrl-C stops it", timeout=10)
        assert any((tmp_path / "tmp").iterdir())  # the temporary repository and work folder exist
        proc.send_signal(signum)
        proc.wait(timeout=120)
        last = stderr.until("adapler-export serve:", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    expected = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert last == f"adapler-export serve: {expected}; server stopped and temporary files removed"
    assert _pid_gone(server_pid)
    assert _left_in_temp(tmp_path) == []


def test_serve_failed_start_is_one_line_and_leaves_nothing(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
                                                  'input [{name: "X" data_type: TYPE_FP32 dims: [1]}]\n'
                                                  'output [{name: "Y" data_type: TYPE_FP32 dims: [1]}]\n')
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('model import fails on purpose')\n")
    proc = _serve_process(tmp_path, "--repo", str(repo))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("adapler-export")]
    assert line.startswith("adapler-export: error: tritonserver exited with code") and "on purpose" in line
    assert _left_in_temp(tmp_path) == []


# ---- the CI artifact ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_artifact(built_artifact):
    return pathlib.Path(built_artifact)


@pytest.fixture(scope="module")
def real_server(real_artifact, tmp_path_factory):
    repo = tmp_path_factory.mktemp("real-repo") / "repo"
    info = R.write_model_repository(real_artifact, repo, max_batch=MAX_BATCH)
    assert {C.TEXT_MODEL, C.ONNX_ENSEMBLE_MODEL} <= set(info.models)
    server = _start(repo, tmp_path_factory, stand_in=True)
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def real_reference(real_artifact):
    from adapler_export.backends import load_backend

    texts = read_texts(SST2_DEV, limit=96)
    clf, preds = _reference(real_artifact, load_backend(real_artifact, kind="auto"), texts, MAX_BATCH)
    return texts, clf, preds


@pytest.fixture(scope="module")
def pytorch_reference(real_artifact, real_reference, ci_checkpoint):
    """The PyTorch reference (hard removal, fp32) of the artifact's checkpoint (the session's ci_checkpoint)."""
    ckpt = ci_checkpoint
    assert pathlib.Path(read_manifest(real_artifact).checkpoint["path"]).resolve() == pathlib.Path(ckpt).resolve()
    from adapler_export.backends.pytorch import PyTorchBackend

    texts = real_reference[0]
    return _reference(real_artifact, PyTorchBackend.from_checkpoint(ckpt), texts, MAX_BATCH)[1]


@needs_tritonclient
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_real_server_matches_local_backend(real_server, real_reference, pytorch_reference, protocol):
    texts, _, ref = real_reference
    with _client(real_server, protocol) as c:
        got = c.classify(texts)
    labels = read_texts(SST2_DEV, limit=len(texts), column="label")
    acc = np.mean([g["label_id"] == int(y) for g, y in zip(got, labels)])
    # and the PyTorch reference: same labels and kept tokens
    assert [g["label"] for g in got] == [p.label for p in pytorch_reference]
    assert [g["kept_positions"] for g in got] == [p.kept_positions for p in pytorch_reference]
    for g, p in zip(got, pytorch_reference):
        np.testing.assert_allclose(g["probabilities"], p.probabilities, rtol=0, atol=1e-4)
    _assert_same(got, ref)
    _assert_stubs_import_no_torch(real_server)
    print(f"{protocol}: {len(texts)} SST-2 dev sentences, same as local backend; accuracy {acc:.3f}")
    # the trained CI model (about 0.8 on all of dev): 0.7 on 96 sentences is ~4 standard deviations above chance
    assert acc >= 0.7, f"served accuracy {acc:.3f} on {len(texts)} SST-2 dev sentences"


@needs_tritonclient
def test_real_server_bad_requests(real_server, real_reference):
    _, clf, _ = real_reference
    _bad_requests(real_server, clf.max_length)


@needs_tritonclient
def test_real_server_bounded_load(real_server):
    from adapler_export.serving.load import run_load

    texts = read_texts(SST2_DEV, limit=200)
    res = run_load(real_server.http_url, texts, protocol="http", concurrency=8, requests_per_client=25,
                   max_seconds=120)
    print("\n" + res.summary())
    assert res.failures == 0 and res.errors == [] and res.ok == res.requests, res.summary()  # none lost
    assert res.requests == 8 * 25 or res.stopped_by == "time", res.summary()
    assert res.ok > 0 and res.p50_ms is not None and res.p99_ms >= res.p50_ms
    assert real_server.is_ready()


@needs_tritonclient
def test_real_server_onnx_ensemble_is_the_library(real_server, real_reference):
    """The CI artifact's adapler_onnx_ensemble (on the stand-in backend) on SST-2 dev sentences: the labels,
    kept positions and empty flags of the library's TextClassifier, logits within 1e-4."""
    texts, _, predictions = real_reference
    _assert_ensemble_is_the_library(real_server.http_url, C.ONNX_ENSEMBLE_MODEL, predictions, texts)


def _wheel_backends() -> str:
    try:
        return ", ".join(find_triton().backends)
    except TritonServerError as exc:
        return f"none ({exc})"


@pytest.mark.skipif(not os.environ.get("ADAPLER_TRITON_ONNX_URL"),
                    reason="needs Triton's stock onnxruntime backend, which the nvidia-pytriton wheel does not ship "
                           f"(its tritonserver has the backends: {_wheel_backends()}). In a Triton container "
                           "(`pip install transformers` there, for the tokenizer model) run `tritonserver "
                           "--model-repository=REPO --model-control-mode=explicit "
                           f"--load-model={C.ONNX_ENSEMBLE_MODEL}` on a repository written by `adapler-export "
                           "triton --artifact ARTIFACT --repo REPO` (ARTIFACT: the built_artifact fixture's), "
                           "then set ADAPLER_TRITON_ONNX_URL=host:http_port")
@needs_tritonclient
def test_onnx_ensemble_on_stock_onnxruntime_backend(real_artifact):
    """adapler_onnx_ensemble on Triton's stock onnxruntime backend: the library's answers on SST-2 dev."""
    texts = read_texts(SST2_DEV, limit=200)
    clf = TextClassifier(real_artifact)
    _assert_ensemble_is_the_library(os.environ["ADAPLER_TRITON_ONNX_URL"], C.ONNX_ENSEMBLE_MODEL,
                                    clf.classify(texts), texts)


@pytest.mark.skipif(not os.environ.get("ADAPLER_TRITON_PLAN_URL"),
                    reason="needs a Triton server with the TensorRT backend and a GPU serving the repository "
                           "written with --with-tensorrt-plan; set ADAPLER_TRITON_PLAN_URL=host:http_port "
                           "(see the repository README)")
@needs_tritonclient
def test_tensorrt_ensemble_matches_local(real_artifact):
    """adapler_ensemble (tokenizer -> single engine with TokenCompact plugin layers) vs the local backend."""
    manifest = read_manifest(real_artifact)
    texts = read_texts(SST2_DEV, limit=200)
    clf = TextClassifier(real_artifact)
    if manifest.precision == "fp32":  # another runtime: the fp32 end-to-end tolerance of every backend
        _assert_ensemble_is_the_library(os.environ["ADAPLER_TRITON_PLAN_URL"], C.ENSEMBLE_MODEL,
                                        clf.classify(texts), texts, Tolerances.for_precision("fp32").max_abs_logit)
    else:  # fp16 may flip near-threshold decisions (../shared/DESIGN.md §4)
        stats = _compare_with_library(_ensemble_answers(os.environ["ADAPLER_TRITON_PLAN_URL"], C.ENSEMBLE_MODEL,
                                                        texts), clf.classify(texts))
        print(f"\nadapler_ensemble ({manifest.precision}): {stats}")
        assert stats["labels"] / len(texts) >= 0.98
