"""The one chain, the one artifact contract and the one-way dependencies (issue 9), on a tiny real model."""
import ast
import re
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adapler_export.artifact import (FORMAT_VERSION, ManifestError, open_artifact, read_manifest, verify_files,
                                     write_manifest)
from adapler_export.backends import Backend, BackendOutput, load_backend, validate_inputs
from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
from adapler_export.backends.pytorch import PyTorchBackend, PyTorchSegmentsBackend
from adapler_export.checkpoint import load_checkpoint
from adapler_export.cli import build_precision, main
from adapler_export.errors import AdaplerError, BackendUnavailable
from adapler_export.parity import compare_backends, link_decisions
from adapler_export.segments import LINK_NODE_ATTRIBUTES, export_segments

from conftest import REPO, assert_segments_reproduce_pytorch, sst2_dir, tiny_model
from tiny_models import make_tiny_tokenizer

TEXTS = ["a charming and often affecting film .", "the plot was dull , the acting awful",
         "it is not very good", "fun !", "this movie , with a story that is great and a plot that is boring ."]


def copy_artifact(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def rewrite(artifact: Path, change) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    change(data)
    (artifact / "manifest.json").write_text(json.dumps(data))


# ----- the chain ----------------------------------------------------------------------------------------------
def test_every_chain_backend_equals_the_reference_forward(tiny_artifact, tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    enc = ckpt.tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    reference = PyTorchBackend(ckpt.model).run(ids, mask)
    assert any(k.shape[1] < ids.shape[1] for k in reference.kept), "the tiny model must really drop tokens"
    for backend in (load_backend(tiny_artifact, "onnxruntime"), load_backend(tiny_artifact, "onnxruntime-graph"),
                    PyTorchSegmentsBackend(ckpt.model)):
        got = backend.run(ids, mask)
        np.testing.assert_allclose(got.logits, reference.logits, atol=1e-5)
        for k, (g, r) in enumerate(zip(got.kept, reference.kept)):
            np.testing.assert_array_equal(g, r, err_msg=f"{backend.name} link {k}")


def test_each_link_applies_its_own_threshold(tiny_checkpoint, tmp_path):
    """Distinct thresholds per link (the tiny fixtures share one eta, so a chain that mixed the links up would
    pass them): the ONNX Runtime and PyTorch segment chains keep, at every link, what the reference keeps, and
    the thresholds in reverse order keep something else (the check can tell the order)."""
    ckpt = load_checkpoint(tiny_checkpoint)
    etas = [0.3, 0.95, 0.6]
    assert len(etas) == ckpt.model.num_layers
    with torch.no_grad():
        ckpt.model.eta.copy_(torch.tensor(etas))
    enc = ckpt.tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    reference = PyTorchBackend(ckpt.model).run(ids, mask)
    specs = export_segments(ckpt.model, tmp_path, "fp32")
    for backend in (OnnxRuntimeBackend([tmp_path / s.file_name for s in specs], specs, etas),
                    PyTorchSegmentsBackend(ckpt.model)):
        got = backend.run(ids, mask)
        np.testing.assert_allclose(got.logits, reference.logits, atol=1e-5, err_msg=backend.name)
        for k, (g, r) in enumerate(zip(got.kept, reference.kept)):
            np.testing.assert_array_equal(g, r, err_msg=f"{backend.name} link {k}")
    reversed_order = OnnxRuntimeBackend([tmp_path / s.file_name for s in specs], specs, etas[::-1]).run(ids, mask)
    assert any(g.shape != r.shape or not np.array_equal(g, r) for g, r in zip(reversed_order.kept, reference.kept))


class OneFlipBackend(Backend):
    """The reference's answers, except one keep decision: the first row's last token kept by the last link
    is dropped (logits untouched)."""
    name = "one-flip"

    def __init__(self, reference):
        self.reference, self.takes_token_types, self.flipped = reference, reference.takes_token_types, False

    def _run_impl(self, input_ids, attention_mask, token_type_ids=None):
        out = self.reference.run(input_ids, attention_mask)
        if self.flipped:
            return out
        kept = [k.copy() for k in out.kept]
        row = kept[-1][0]
        row[np.flatnonzero(row >= 0)[-1]] = -1
        self.flipped = True
        return BackendOutput(out.logits, kept)


def test_fp32_parity_fails_on_a_single_flipped_decision(tiny_checkpoint):
    """The tolerance table's fp32 promise (every keep decision the reference's) holds for one flip among
    hundreds of decisions; fp16's bounded flip rate lets that one through."""
    ckpt = load_checkpoint(tiny_checkpoint)
    reference = PyTorchBackend(ckpt.model)
    texts = TEXTS * 8
    fp32 = compare_backends(reference, OneFlipBackend(reference), ckpt.tokenizer, texts, 48, "fp32")
    assert (fp32.flips, fp32.max_abs_logit_diff) == (1, 0.0) and fp32.decisions > 200, fp32
    assert not fp32.passed and any("flip" in failure for failure in fp32.failures), fp32.failures
    fp16 = compare_backends(reference, OneFlipBackend(reference), ckpt.tokenizer, texts, 48, "fp16")
    assert fp16.flips == 1 and fp16.passed, fp16.failures
    assert compare_backends(reference, reference, ckpt.tokenizer, texts, 48, "fp32").passed


def test_eta_zero_means_the_same_in_every_backend(tiny_checkpoint, tmp_path):
    """eta = 0 keeps every live token, compacting padding holes, in the reference, the PyTorch segments and
    ONNX Runtime alike (it used to skip the link in ONNX Runtime only)."""
    ckpt = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ckpt.model.eta[1] = 0.0
    specs = export_segments(ckpt.model, tmp_path, "fp32")
    ort_backend = OnnxRuntimeBackend([tmp_path / s.file_name for s in specs], specs, ckpt.model.eta.tolist())
    ids = np.array([[2, 9, 10, 11, 3], [2, 12, 3, 0, 0]], np.int32)
    mask = np.array([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], np.int32)  # a hole in row 0
    reference = PyTorchBackend(ckpt.model).run(ids, mask)
    for backend in (ort_backend, PyTorchSegmentsBackend(ckpt.model)):
        got = backend.run(ids, mask)
        for g, r in zip(got.kept, reference.kept):
            np.testing.assert_array_equal(g, r)
    before, after = link_decisions(reference.kept, mask)[1]
    np.testing.assert_array_equal(before, after)  # link 1 (eta 0) kept everything that reached it


def test_inputs_are_validated_once_for_every_backend(tiny_artifact):
    backend = load_backend(tiny_artifact, "onnxruntime")
    good = np.ones((1, 4), np.int64)
    assert validate_inputs(good, good)[0].dtype == np.int32
    for ids, mask, fragment in [(np.ones((0, 4)), np.ones((0, 4)), "empty batch"),
                                (np.ones((2, 4)), np.ones((2, 3)), "must both be"),
                                (np.ones((1, 4), np.float32), np.ones((1, 4), np.int32), "integers"),
                                (np.ones((1, 4), np.int32), np.full((1, 4), 2, np.int32), "only 0 and 1")]:
        with pytest.raises(AdaplerError, match=fragment):
            backend.run(ids, mask)
    padded_row = backend.run(np.array([[2, 9, 3], [0, 0, 0]]), np.array([[1, 1, 1], [0, 0, 0]]))
    assert np.isfinite(padded_row.logits).all()


def test_flips_are_counted_per_link_over_that_links_decisions(tmp_path):
    class Fixed:
        def __init__(self, name, kept):
            self.name, self.kept = name, kept

        def run(self, ids, mask):
            return BackendOutput(np.zeros((1, 2), np.float32), self.kept)

    tokenizer = make_tiny_tokenizer(tmp_path)  # "a b": [CLS] a b [SEP], 4 live tokens
    ref = Fixed("ref", [np.array([[0, 1, 2, 3]]), np.array([[0, 1, -1, -1]])])
    cand = Fixed("cand", [np.array([[0, 1, 2, 3]]), np.array([[0, 2, -1, -1]])])
    report = compare_backends(ref, cand, tokenizer, ["a b"], 8, "fp32")
    assert [link["decisions"] for link in report.links] == [4, 4]
    assert [link["flips"] for link in report.links] == [0, 2]
    # link 2 of a 3-link model whose first link dropped half: its rate is over the 2 tokens that reached it
    ref.kept = ref.kept + [np.array([[0, -1]])]
    cand.kept = [ref.kept[0], ref.kept[1], np.array([[0, 1]])]
    report = compare_backends(ref, cand, tokenizer, ["a b"], 8, "fp32")
    assert report.links[2]["decisions"] == 2 and report.links[2]["flip_rate"] == 0.5


# ----- the artifact contract ------------------------------------------------------------------------------------
def test_manifest_round_trip_and_digests(tiny_artifact):
    path, manifest = open_artifact(tiny_artifact)
    assert manifest.format_version == FORMAT_VERSION
    assert len(manifest.specs()) == manifest.num_layers + 1
    assert {"onnx/segment_00.onnx", "onnx/single.onnx", "parity.json"} <= set(manifest.files)
    assert manifest.parity["end_to_end"]["onnxruntime"]["flips"] == 0
    assert manifest.parity["end_to_end"]["onnxruntime-graph"]["flips"] == 0
    assert manifest.one_graph["file"] == "onnx/model.onnx" and "onnx/model.onnx" in manifest.files
    assert "tensorrt" in manifest.engines.not_built["segments"]


@pytest.mark.parametrize("change,fragment", [
    (lambda d: d.update(etas=d["eta"]), "unknown key 'etas'"),
    (lambda d: d.pop("labels"), "missing key 'labels'"),
    (lambda d: d.update(format_version=1), "format_version 1"),
    (lambda d: d["eta"].__setitem__(0, 1.5), "eta[0]"),
    (lambda d: d["eta"].__setitem__(0, "0.5"), "eta[0]"),
    (lambda d: d.update(eta=d["eta"][:-1]), "one threshold per layer"),
    (lambda d: d["engines"].update(thresholds=[]), "unknown key 'thresholds'"),
    (lambda d: d.update(precision="fp8"), "precision 'fp8'"),
], ids=["alias-key", "missing-key", "old-version", "eta-range", "eta-type", "eta-count", "engines-key",
        "precision"])
def test_manifest_reader_names_file_and_key(tiny_artifact, tmp_path, change, fragment):
    artifact = copy_artifact(tiny_artifact, tmp_path)
    rewrite(artifact, change)
    with pytest.raises(ManifestError, match=re.escape(fragment)) as info:
        read_manifest(artifact)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)


def test_digests_catch_a_modified_or_missing_file(tiny_artifact, tmp_path):
    artifact = copy_artifact(tiny_artifact, tmp_path)
    manifest = read_manifest(artifact)
    (artifact / "onnx" / "segment_01.onnx").write_bytes(b"corrupted")
    with pytest.raises(ManifestError, match="segment_01.onnx does not match"):
        verify_files(artifact, manifest)
    (artifact / "onnx" / "segment_01.onnx").unlink()
    with pytest.raises(ManifestError, match="missing onnx/segment_01.onnx"):
        load_backend(artifact, "onnxruntime")


def test_writer_refuses_an_off_contract_manifest(tiny_artifact, tmp_path):
    artifact = copy_artifact(tiny_artifact, tmp_path)
    manifest = read_manifest(artifact)
    manifest.eta = [float("nan")] * manifest.num_layers
    with pytest.raises(ManifestError, match="eta"):
        write_manifest(artifact, manifest)


def test_verify_checks_digests_and_names_backends_it_cannot_run(tiny_artifact, tmp_path, capsys):
    assert main(["verify", "--artifact", str(tiny_artifact), "--samples", "16", "--data-dir", str(sst2_dir()),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["reports"]["onnxruntime"]["flips"] == 0
    assert result["reports"]["onnxruntime-graph"]["flips"] == 0
    assert main(["verify", "--artifact", str(tiny_artifact), "--backend", "tensorrt", "--samples", "8",
                 "--data-dir", str(sst2_dir())]) == 2
    assert "tensorrt" in capsys.readouterr().err
    artifact = copy_artifact(tiny_artifact, tmp_path)
    (artifact / "tokenizer" / "tokenizer_config.json").write_text("{}")
    assert main(["verify", "--artifact", str(artifact), "--samples", "8", "--data-dir", str(sst2_dir())]) == 2
    assert "tokenizer_config.json does not match" in capsys.readouterr().err


def test_named_tensorrt_backend_never_falls_back(tiny_artifact):
    with pytest.raises(BackendUnavailable):
        load_backend(tiny_artifact, "tensorrt")


def test_auto_says_what_it_chose_and_why(tiny_artifact):
    said = []
    backend = load_backend(tiny_artifact, "auto", log=said.append)
    assert backend.name == "onnxruntime-graph", "on a CPU the one graph is the default where the artifact has it"
    assert said and said[0].startswith("backend: onnxruntime-graph (") and "no TensorRT engines" in said[0]


def test_single_graph_link_nodes_carry_plugin_attributes_on_disk(tiny_artifact):
    import onnx

    nodes = [n for n in onnx.load(str(tiny_artifact / "onnx" / "single.onnx")).graph.node
             if n.op_type == "TokenCompact"]
    assert nodes
    for node in nodes:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert {k: attributes[k].decode() for k in LINK_NODE_ATTRIBUTES} == LINK_NODE_ATTRIBUTES
        assert node.domain == "adapler"


# ----- defects, each with its test ---------------------------------------------------------------------------
@pytest.mark.parametrize("fp16,dtype,want", [(False, None, "fp32"), (True, None, "fp16"), (False, "fp16", "fp16"),
                                             (True, "fp16", "fp16"), (False, "fp32", "fp32")])
def test_build_precision_from_flags(fp16, dtype, want):
    assert build_precision(fp16, dtype) == want


def test_fp16_with_dtype_fp32_is_refused_whatever_the_spelling(tiny_checkpoint, tmp_path, capsys):
    for argv in (["--fp16", "--dtype", "fp32"], ["--fp16", "--dtype=fp32"]):
        assert main(["build", "--ckpt", str(tiny_checkpoint), *argv, "--output", str(tmp_path / "x")]) == 2
        assert "contradict" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_works_for_a_small_vocabulary(tmp_path):
    model = tiny_model(vocab_size=60, layers=2)
    specs = export_segments(model, tmp_path, "fp32")
    ids = np.array([[2, 59, 7, 33, 3], [2, 58, 3, 0, 0]], np.int32)  # the vocabulary's last ids included
    mask = (np.arange(5) < np.array([[5], [3]])).astype(np.int32)
    assert assert_segments_reproduce_pytorch(model, tmp_path, specs, "fp32", ids, mask) == 2 + 2 + 1


# ----- dependencies point one way ----------------------------------------------------------------------------
def imported_modules(path: Path) -> set:
    """Every module a file imports, at top level or inside functions (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_library_never_imports_training_or_calibration():
    offenders = []
    for path in (REPO / "adapler_export").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "adapler_export":
            continue  # the composition root
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("training", "calibration")}
        offenders += [f"{path.relative_to(REPO)} imports {m}" for m in sorted(bad)]
    assert not offenders, offenders


def test_training_and_calibration_do_not_import_each_other():
    for package, other in (("training", "calibration"), ("calibration", "training")):
        for path in (REPO / package).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.split(".")[0] == other}
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def library_import_graph() -> dict:
    graph = {}
    for path in (REPO / "adapler_export").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    deps.add(candidate if (REPO / Path(*candidate.split("."))).with_suffix(".py").is_file()
                             else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("adapler_export"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adapler_export"):
                deps.add(node.module)
        graph[module] = {d for d in deps if d != module and d.startswith("adapler_export")}
    return graph


def test_no_import_cycles_in_the_library_lazy_imports_included():
    graph = library_import_graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph.get(node, ()):
            if dep == "adapler_export" or dep not in graph:
                continue
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles[:3]
