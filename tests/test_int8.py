"""INT8 that stacks with token dropping: `build --int8` and `quantize` (dynamic INT8 of the weight MatMuls), the
settings chosen from the CPU's flags, the manifest's quantization record, and every consumer of the int8 one
graph (verify, predict, explain, the Triton repository with the Python-backend model and the one-graph ensemble).

The tiny checkpoint (tests/conftest.py) keeps these fast: its predictions are meaningless, its graphs, links,
parity and contract are the real ones.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import sst2_dir


@pytest.fixture(scope="module")
def int8_artifact(tiny_checkpoint, tmp_path_factory):
    """`build --int8` of the tiny checkpoint, through the CLI (parity on 64 SST-2 dev sentences)."""
    from adapler_export.cli import main

    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    assert main(["build", "--ckpt", str(tiny_checkpoint), "--int8", "--output", str(out), "--samples", "64",
                 "--data-dir", str(sst2_dir())]) == 0
    return out


def _ops(path) -> dict:
    import collections

    import onnx

    model = onnx.load(str(path))
    return {"ops": collections.Counter(n.op_type for n in model.graph.node),
            "domains": {o.domain for o in model.opset_import}, "model": model}


# ----- CPU flags -> settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, machine, reduce_range, isa", [
    ({"sse2", "avx2", "avx512f", "avx512_vnni"}, "x86_64", False, "avx512_vnni"),
    ({"sse2", "avx2", "avx_vnni"}, "x86_64", False, "avx_vnni"),
    ({"sse2", "avx2", "avx512f", "avx512bw"}, "x86_64", True, "x86 without VNNI"),
    ({"sse2", "avx2"}, "AMD64", True, "x86 without VNNI"),
    ({"fp", "asimd", "asimddp"}, "aarch64", False, "aarch64"),
])
def test_settings_follow_the_cpu_flags(flags, machine, reduce_range, isa):
    """VNNI (32-bit dot products) -> full-range weights; x86 without it -> reduce_range (no int16 saturation);
    not x86 -> off."""
    from adapler_export.quantization import choose_int8_settings, cpu_note

    settings = choose_int8_settings(flags, machine)
    assert (settings.reduce_range, settings.isa) == (reduce_range, isa)
    record = {"cpu": {"isa": settings.isa, "reduce_range": settings.reduce_range, "flags": sorted(flags)}}
    assert cpu_note(record, flags, machine) is None, "the machine it was chosen on needs no note"
    other = {"sse2", "avx2"} if not reduce_range else {"sse2", "avx2", "avx512_vnni"}
    note = cpu_note(record, other, "x86_64")
    assert note and f"reduce_range {not reduce_range}" in note


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from adapler_export.quantization import read_cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


# ----- the artifact -----------------------------------------------------------------------------------------
def test_build_int8_writes_a_dynamic_int8_one_graph(int8_artifact):
    """The manifest records the scheme and what this CPU decided; parity of both forms (segment chain, one graph)
    passed with the int8 tolerances; the one graph is standard ONNX with integer MatMuls, and the CP scoring path
    (every MatMul that feeds only `scores`) stays fp32."""
    from adapler_export.artifact import open_artifact
    from adapler_export.quantization import choose_int8_settings, read_cpu_flags
    from adapler_export.tolerances import Tolerances

    path, manifest = open_artifact(int8_artifact)
    here = choose_int8_settings()
    assert manifest.precision == "int8" and manifest.int8_scheme == "dynamic"
    record = manifest.quantization
    assert record["reduce_range"] == here.reduce_range and record["cpu"]["isa"] == here.isa
    assert set(record["cpu"]["flags"]) <= read_cpu_flags() and record["cp_path"] == "fp32"
    assert record["per_channel"] is True  # the measured default (docs/results/int8-schemes.json)
    int8 = Tolerances.for_precision("int8").to_dict()
    for kind in ("onnxruntime", "onnxruntime-graph"):
        report = manifest.parity["end_to_end"][kind]
        assert report["passed"] and report["tolerances"] == int8 and report["examples"] == 64
    assert manifest.parity["polygraphy_segments"]["checked"] == "the fp32 export, before quantization"
    assert not (path / "polygraphy").exists()

    graph = _ops(path / manifest.one_graph["file"])
    assert graph["domains"] == {""}, "standard ONNX ops only"
    assert graph["ops"]["MatMulInteger"] == 6 * manifest.num_layers  # Q, K, V, out, FFN up, FFN down per layer
    producers = {o: n for n in graph["model"].graph.node for o in n.output}
    nodes = {n.name: n for n in graph["model"].graph.node}
    for k, segment in enumerate(record["segments"]):
        for node in segment["excluded"]:  # CP MatMuls: fp32 MatMul on fp32 inputs (compose prefixes segmentK/)
            matmul = nodes[f"segment{k}/{node}"]
            assert matmul.op_type == "MatMul"
            assert all(producers.get(i) is None or producers[i].op_type != "DynamicQuantizeLinear"
                       for i in matmul.input)
    assert sum(len(s["excluded"]) for s in record["segments"]) == 2 * manifest.num_layers  # dense_in, dense_out


def test_quantize_defaults_to_the_dynamic_scheme(tiny_artifact, int8_artifact, tmp_path, capsys):
    """`quantize` of the fp32 artifact writes what `build --int8` writes (same graphs, same keep decisions), derived
    from the fp32 artifact, with accuracy and speed of the one graph recorded; the source is untouched."""
    from adapler_export.artifact import open_artifact
    from adapler_export.cli import main

    out = tmp_path / "quantized"
    assert main(["quantize", "--artifact", str(tiny_artifact), "--output", str(out), "--samples", "32",
                 "--data-dir", str(sst2_dir()), "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    _, manifest = open_artifact(out)
    _, built = open_artifact(int8_artifact)
    assert manifest.int8_scheme == "dynamic" and manifest.derived_from["precision"] == "fp32"
    assert "calibration_data" not in manifest.quantization, "dynamic quantization calibrates nothing"
    assert summary["parity"]["backend"].startswith("onnxruntime-graph")
    assert set(manifest.parity["end_to_end"]) == {"onnxruntime", "onnxruntime-graph"}
    assert summary["speed"]["form"] == "one graph (onnx/model.onnx)" and summary["speed"]["batch_1"]["int8_ms"] > 0
    ours = [(s["segment"], s["quantized_nodes"]) for s in manifest.quantization["segments"]]
    assert ours == [(s["segment"], s["quantized_nodes"]) for s in built.quantization["segments"]]


def test_int8_manifest_contract(int8_artifact, tmp_path):
    """An int8 manifest must say how it was quantized (the keys of its scheme, the CPU record); fp32 / fp16 may
    not carry a record; an int8 manifest written before schemes existed reads as static-qdq."""
    import dataclasses

    from adapler_export.artifact import ManifestError, read_manifest

    manifest = read_manifest(int8_artifact)
    record = manifest.quantization
    cases = [(dict(precision="int8", quantization=None), "must record its quantization"),
             (dict(quantization={**record, "scheme": "magic"}), "quantization.scheme 'magic'"),
             (dict(quantization={k: v for k, v in record.items() if k != "cpu"}), "missing key 'cpu'"),
             (dict(quantization={**record, "cpu": {"isa": "x"}}), "quantization.cpu must record"),
             (dict(quantization={**record, "reduce_range": "yes"}), "reduce_range must be true or false"),
             (dict(precision="fp32"), "recorded for a fp32 artifact")]
    for change, message in cases:
        with pytest.raises(ManifestError, match=message):
            dataclasses.replace(manifest, **change).validate()
    legacy = dataclasses.replace(manifest, quantization={"tool": "onnxruntime.quantization.quantize_static"})
    assert legacy.validate().int8_scheme == "static-qdq"


# ----- every consumer runs the int8 one graph ---------------------------------------------------------------
def test_verify_predict_explain_run_the_int8_graph(int8_artifact, capsys):
    from adapler_export.cli import main

    assert main(["verify", "--artifact", str(int8_artifact), "--samples", "32", "--data-dir", str(sst2_dir()),
                 "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["passed"] and set(verified["reports"]) == {"onnxruntime", "onnxruntime-graph"}
    assert all(r["precision"] == "int8" for r in verified["reports"].values())
    assert any(note.startswith("int8 parity checked on this CPU") for note in verified["notes"])

    assert main(["predict", "--artifact", str(int8_artifact), "--json", "a charming film", "dull"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 2 and all(abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)
    assert "backend: onnxruntime-graph" in captured.err

    assert main(["explain", "--artifact", str(int8_artifact), "a charming film"]) == 0
    assert "charming" in capsys.readouterr().out


def test_triton_repository_serves_the_int8_graph(int8_artifact, tmp_path):
    """The repository writer takes the int8 artifact: the stock onnxruntime model is its one graph (same bytes),
    the Python-backend model opens the artifact (auto: the one graph); configs validate."""
    from adapler_export.artifact import open_artifact
    from adapler_export.serving import contract as C
    from adapler_export.serving import repository as R
    from adapler_export.storage import sha256_file

    path, manifest = open_artifact(int8_artifact)
    repo = tmp_path / "repo"
    info = R.write_model_repository(path, repo, max_batch=8)
    assert {C.TEXT_MODEL, C.ONNX_MODEL, C.ONNX_ENSEMBLE_MODEL} <= set(info.models)
    R.validate_repository(repo)
    assert sha256_file(repo / C.ONNX_MODEL / "1" / "model.onnx") == manifest.files[manifest.one_graph["file"]]


@pytest.mark.slow
def test_triton_server_answers_like_the_library_on_int8(int8_artifact, tmp_path_factory):
    """A real (Python-backend) Triton server on the int8 artifact's repository: `adapler_text` and the one-graph
    ensemble (on the stand-in for the stock onnxruntime backend) answer as the library's TextClassifier does."""
    pytest.importorskip("tritonclient.http")
    import serving_fixtures as F

    from adapler_export.serving import contract as C
    from adapler_export.serving import repository as R
    from adapler_export.serving.client import AdaplerClient
    from adapler_export.serving.runtime import TextClassifier
    from adapler_export.serving.server import TritonServer, TritonServerError, find_triton

    try:
        find_triton()
    except TritonServerError as exc:
        pytest.skip(f"no local tritonserver: {exc}")
    repo = tmp_path_factory.mktemp("int8-repo") / "repo"
    R.write_model_repository(int8_artifact, repo, max_batch=8)
    server = TritonServer(repo, workdir=tmp_path_factory.mktemp("int8-triton"),
                          python_backends=F.onnxruntime_stand_in(tmp_path_factory.mktemp("stand-in")))
    texts = ["a charming film .", "it was dull", "", "good " * 60]
    local = TextClassifier(int8_artifact).classify(texts)
    server.start(timeout=300)
    try:
        with AdaplerClient(server.http_url, model_name=C.TEXT_MODEL, max_batch=8) as client:
            served = client.classify(texts)
        with AdaplerClient(server.http_url, model_name=C.ONNX_ENSEMBLE_MODEL, max_batch=1) as client:
            graph = [client.run_graph([t])[0] for t in texts]
    finally:
        assert server.stop() == 0
    for got, want in zip(served, local):
        assert got["label"] == want.label and got["kept_positions"] == want.kept_positions
    for got, want in zip(graph, local):
        assert int(np.argmax(got["logits"])) == want.label_id and got["kept_positions"] == want.kept_positions
        np.testing.assert_allclose(got["logits"], want.logits, atol=1e-4)


def test_build_int8_refuses_what_it_cannot_build(tiny_checkpoint, tmp_path, capsys):
    """One line, exit 2, nothing written: INT8 TensorRT engines come from `quantize --tensorrt`, and --int8 does not
    combine with another precision."""
    from adapler_export.cli import main

    cases = [(["--int8", "--backend", "tensorrt"], "quantize --artifact <fp32 artifact> --tensorrt"),
             (["--int8", "--fp16"], "--fp16 and --int8 contradict each other"),
             (["--int8", "--dtype", "fp32"], "--int8 and --dtype fp32 contradict each other")]
    for args, message in cases:
        out = tmp_path / "never"
        assert main(["build", "--ckpt", str(tiny_checkpoint), "--output", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
        assert not out.exists()


def test_cpu_sessions_leave_out_the_skip_layer_norm_fusion(tmp_path):
    """`backends.onnxruntime.open_session` (every CPU session of the library, full baselines included) runs without
    SkipLayerNormalization, measured slower on the CPU for INT8 graphs; plain ONNX Runtime fuses the same graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from adapler_export.backends.onnxruntime import open_session, session_options

    hidden = 8
    nodes = [helper.make_node("Add", ["x", "residual"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4, hidden])  # noqa: E731
    weights = [helper.make_tensor("gamma", TensorProto.FLOAT, [hidden], [1.0] * hidden),
               helper.make_tensor("beta", TensorProto.FLOAT, [hidden], [0.0] * hidden)]
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x"), value("residual")], [value("y")], weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "add_ln.onnx"
    onnx.save(model, str(path))

    def fused_ops(open_it) -> set:
        options = session_options(1)
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        open_it(options)
        return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}

    assert "SkipLayerNormalization" in fused_ops(
        lambda o: ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"]))
    ops = fused_ops(lambda o: open_session(path, o, ["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
