"""The whole adaptive model as one standard ONNX graph (`adapler_export.onnx_graph`, issue 12).

- the link subgraph alone against `link.token_compact_numpy` on a few hundred random cases;
- model.onnx (tiny real model, fp32 and fp16) against the segment chain and the PyTorch reference;
- bad input; polygraphy comparing model.onnx (Python comparator and the `polygraphy run` command);
- TensorRT-RTX parsing and building model.onnx ahead of time on this CPU machine.
"""
from __future__ import annotations

import subprocess
import types

import numpy as np
import pytest

from adapler_export import onnx_graph
from adapler_export.errors import AdaplerError, BackendUnavailable
from adapler_export.link import initial_positions_numpy, token_compact_numpy
from conftest import polygraphy_command, require_module, tiny_model

HIDDEN = 8


def link_session(eta, dtype, hidden_size=HIDDEN):
    import onnxruntime as ort

    model = onnx_graph.link_model(eta, dtype, hidden_size)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_link_case(rng, dtype, eta):
    """Batch 1-5, length 1-39, holes anywhere in the mask (slot 0 included), sometimes a fully dead row or
    an all-dead batch, scores softmaxed over the live slots with some set exactly at delta."""
    b, s = int(rng.integers(1, 6)), int(rng.integers(1, 40))
    mask = (rng.random((b, s)) < rng.uniform(0.5, 1.0)).astype(np.int32)
    mask[:, 0] |= rng.random(b) < 0.9  # [CLS] mostly live
    shape = rng.integers(3)
    if shape == 1:
        mask[int(rng.integers(b))] = 0
    elif shape == 2 and rng.random() < 0.3:
        mask[:] = 0
    logits = rng.standard_normal((b, s)) * 2
    exp = np.exp(logits) * mask
    scores = (exp / np.maximum(exp.sum(1, keepdims=True), 1e-30)).astype(np.float32)
    n = mask.sum(1)
    for row in range(b):
        if n[row]:  # ties: a score exactly at delta = fp32 eta / fp32 n is kept
            delta = np.float32(eta) / np.float32(n[row])
            scores[row, rng.integers(s, size=2)] = delta
    hidden = rng.standard_normal((b, s, HIDDEN)).astype(dtype)
    return hidden, scores, mask, initial_positions_numpy(mask)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_link_subgraph_matches_the_reference(dtype):
    rng = np.random.default_rng(12)
    cases, dropping, all_kept = 0, 0, 0
    for eta in (0.0, 1.0, 0.25, float(rng.uniform()), float(rng.uniform())):
        session = link_session(eta, dtype)
        for _ in range(40):
            hidden, scores, mask, positions = random_link_case(rng, dtype, eta)
            want = token_compact_numpy(hidden, scores, mask, positions, eta)
            hidden_out, mask_out, positions_out, new_len = session.run(
                None, {"hidden": hidden, "scores": scores, "mask": mask, "positions": positions})
            assert int(new_len[0]) == want.new_len
            assert hidden_out.dtype == np.dtype(dtype) and hidden_out.shape == want.hidden.shape
            np.testing.assert_array_equal(hidden_out, want.hidden)  # padding zeros may be -0.0 (a multiply)
            np.testing.assert_array_equal(mask_out, want.mask)
            np.testing.assert_array_equal(positions_out, want.positions)
            cases += 1
            live_rows = mask.sum(1) > 0
            kept_fewer = want.mask.sum(1)[live_rows] < mask.sum(1)[live_rows]
            dropping += bool(kept_fewer.any())
            all_kept += bool((~kept_fewer).any())
    # the random cases exercise both sides of the rule, not only rows that keep everything (eta 0) or drop
    assert dropping > cases // 4 and all_kept > 0, (cases, dropping, all_kept)


def test_link_subgraph_on_hand_made_rows():
    # n = 4 live ([CLS] included), eta 0.5 -> delta 0.125: [CLS] kept below it, 0.125 kept (tie), 0.124 dropped,
    # padding never kept; row 2 is fully dead; S' = 3.
    scores = np.array([[0.01, 0.125, 0.124, 0.741, 0.9], [0.3, 0.3, 0.3, 0.3, 0.3]], np.float32)
    mask = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], np.int32)
    hidden = np.arange(10, dtype=np.float32).reshape(2, 5, 1) + 1
    hidden_out, mask_out, positions_out, new_len = link_session(0.5, "float32", 1).run(
        None, {"hidden": hidden, "scores": scores, "mask": mask, "positions": initial_positions_numpy(mask)})
    assert new_len.tolist() == [3]
    assert positions_out.tolist() == [[0, 1, 3], [-1, -1, -1]]
    assert mask_out.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert hidden_out[..., 0].tolist() == [[1, 2, 4], [0, 0, 0]]


def test_link_subgraph_all_dead_batch_gives_one_padding_slot():
    mask = np.zeros((3, 4), np.int32)
    hidden_out, mask_out, positions_out, new_len = link_session(0.0, "float32").run(
        None, {"hidden": np.ones((3, 4, HIDDEN), np.float32), "scores": np.zeros((3, 4), np.float32), "mask": mask,
               "positions": initial_positions_numpy(mask)})
    assert new_len.tolist() == [1] and hidden_out.shape == (3, 1, HIDDEN)
    assert not hidden_out.any() and not mask_out.any() and (positions_out == -1).all()


# ----- the whole model -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{precision: (model, onnx dir, specs, etas, model.onnx)} for one tiny model (eta 0.6: drops tokens)."""
    from adapler_export.segments import export_segments

    model = tiny_model(seed=3, eta=0.6)
    etas = [float(e) for e in model.eta.detach()]
    out = {}
    for precision in ("fp32", "fp16"):
        onnx_dir = tmp_path_factory.mktemp(f"one_graph_{precision}")
        specs = export_segments(model, onnx_dir, precision)
        out[precision] = (model, onnx_dir, specs, etas, onnx_graph.build_one_graph(onnx_dir, specs, etas))
    return out


def random_batches(vocab: int, count: int = 12, seed: int = 0):
    """Batches of 1-6 rows, lengths 1-40, right padding plus holes, some fully padded rows."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        b, s = int(rng.integers(1, 7)), int(rng.integers(1, 41))
        ids = rng.integers(5, vocab, (b, s)).astype(np.int32)
        ids[:, 0] = 2  # [CLS]
        mask = (np.arange(s)[None] < rng.integers(1, s + 1, (b, 1))).astype(np.int32)
        if s > 3:
            mask[0, int(rng.integers(1, s))] = 0
        if b > 1 and index % 3 == 0:
            mask[-1] = 0
        yield ids, mask


def assert_same_kept(got, want):
    assert len(got.kept) == len(want.kept)
    for k, (a, b) in enumerate(zip(got.kept, want.kept)):
        assert a.dtype == np.int32 and a.shape == b.shape, f"link {k}: {a.shape} vs {b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=f"link {k}")


def test_model_onnx_is_valid_standard_onnx(graphs):
    import onnx

    for model, _, specs, etas, path in graphs.values():
        graph = onnx.load(str(path))
        assert {o.domain for o in graph.opset_import} == {""} and graph.opset_import[0].version == 17
        assert all(node.domain == "" for node in graph.graph.node)
        assert graph.ir_version <= onnx_graph.MAX_IR_VERSION
        assert onnx_graph.graph_etas(graph) == [float(np.float32(e)) for e in etas]
        onnx_graph.validate_one_graph(path, specs)
        assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask"]
        assert [o.name for o in graph.graph.output] == onnx_graph.output_names(len(etas))


def test_fp32_graph_matches_the_chain_and_pytorch(graphs):
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.backends.pytorch import PyTorchBackend

    model, onnx_dir, specs, etas, path = graphs["fp32"]
    graph = OneGraphBackend(path, len(etas), device="cpu", etas=etas)
    chain = OnnxRuntimeBackend([onnx_dir / s.file_name for s in specs], specs, etas, device="cpu")
    reference = PyTorchBackend(model)
    dropped = 0
    for ids, mask in random_batches(model.config.vocab_size):
        got, want, chained = graph.run(ids, mask), reference.run(ids, mask), chain.run(ids, mask)
        assert_same_kept(got, want)  # 0 flips
        assert_same_kept(got, chained)
        assert float(np.abs(got.logits - want.logits).max()) <= 1e-4
        assert float(np.abs(got.logits - chained.logits).max()) <= 1e-5
        dropped += int(mask.sum() - (got.kept[-1] >= 0).sum())
    assert dropped > 0, "the tiny model should drop tokens, or this test compares nothing interesting"


def test_fp16_graph_matches_the_fp16_chain(graphs):
    from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend

    model, onnx_dir, specs, etas, path = graphs["fp16"]
    graph = OneGraphBackend(path, len(etas), device="cpu")
    chain = OnnxRuntimeBackend([onnx_dir / s.file_name for s in specs], specs, etas, device="cpu")
    for ids, mask in random_batches(model.config.vocab_size, seed=1):
        got, want = graph.run(ids, mask), chain.run(ids, mask)
        assert_same_kept(got, want)
        assert got.logits.dtype == np.float32
        assert float(np.abs(got.logits - want.logits).max()) <= 1e-3


# ----- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_build_refuses_eta_outside_0_1(graphs, tmp_path, bad):
    _, onnx_dir, specs, etas, _ = graphs["fp32"]
    out = tmp_path / "model.onnx"
    with pytest.raises(AdaplerError, match="eta"):
        onnx_graph.build_one_graph(onnx_dir, specs, [bad] + etas[1:], out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_build_refuses_wrong_threshold_count_and_missing_segment(graphs, tmp_path):
    _, onnx_dir, specs, etas, _ = graphs["fp32"]
    with pytest.raises(AdaplerError, match="thresholds"):
        onnx_graph.build_one_graph(onnx_dir, specs, etas[:-1], tmp_path / "model.onnx")
    with pytest.raises(AdaplerError, match="no segment graph"):
        onnx_graph.build_one_graph(tmp_path, specs, etas, tmp_path / "model.onnx")


def test_backend_refuses_an_empty_batch_and_runs_a_fully_padded_row(graphs):
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend
    from adapler_export.backends.pytorch import PyTorchBackend

    model, _, _, etas, path = graphs["fp32"]
    with OneGraphBackend(path, len(etas), device="cpu") as graph:
        with pytest.raises(AdaplerError, match="empty batch"):
            graph.run(np.zeros((0, 5), np.int32), np.zeros((0, 5), np.int32))
        ids = np.full((2, 6), 7, np.int32)
        mask = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], np.int32)
        got, want = graph.run(ids, mask), PyTorchBackend(model).run(ids, mask)
    assert_same_kept(got, want)
    assert all((kept[1] == -1).all() for kept in got.kept)  # the padded row keeps nothing
    assert np.isfinite(got.logits).all() and float(np.abs(got.logits - want.logits).max()) <= 1e-4


def test_backend_refuses_a_graph_built_with_other_thresholds(graphs):
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend

    _, _, _, etas, path = graphs["fp32"]
    with pytest.raises(AdaplerError, match="built with eta"):
        OneGraphBackend(path, len(etas), device="cpu", etas=[0.5] * len(etas))
    with pytest.raises(AdaplerError, match="outputs"):
        OneGraphBackend(path, len(etas) + 1, device="cpu")


def test_registry_opener_reads_onnx_model_onnx(graphs, tmp_path):
    from adapler_export.backends.onnxruntime_graph import OneGraphBackend, open_artifact

    _, _, _, etas, path = graphs["fp32"]
    manifest = types.SimpleNamespace(num_layers=len(etas), eta=etas)
    with pytest.raises(BackendUnavailable, match="onnx/model.onnx"):
        open_artifact(tmp_path, manifest)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(path.read_bytes())
    with open_artifact(tmp_path, manifest, device="cpu", threads=1) as backend:
        assert isinstance(backend, OneGraphBackend) and backend.providers == ["CPUExecutionProvider"]


# ----- polygraphy ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def polygraphy_files(graphs, tmp_path_factory):
    """PyTorch reference outputs for two batches, saved the way polygraphy loads them."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json

    from adapler_export.backends.pytorch import PyTorchBackend

    model, _, _, etas, _ = graphs["fp32"]
    reference = PyTorchBackend(model)
    feeds, iterations = [], []
    for ids, mask in list(random_batches(model.config.vocab_size, count=3, seed=5))[:2]:
        out = reference.run(ids, mask)
        feeds.append({"input_ids": ids, "attention_mask": mask})
        outputs = dict(zip(onnx_graph.output_names(len(etas)), [out.logits] + out.kept))
        iterations.append(IterationResult(outputs=outputs, runner_name="pytorch"))
    folder = tmp_path_factory.mktemp("polygraphy")
    save_json(feeds, str(folder / "inputs.json"))
    results = RunResults()
    results.append(("pytorch", iterations))
    results.save(str(folder / "outputs.json"))
    return folder, feeds, results


# polygraphy's relative error divides by the reference, 0 in many kept positions: a harmless numpy warning
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_polygraphy_comparator_agrees_with_pytorch(graphs, polygraphy_files):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc

    from adapler_export.parity import polygraphy_diagnostics

    _, feeds, reference = polygraphy_files
    path = graphs["fp32"][4]
    with polygraphy_diagnostics():
        runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name="onnxrt:model.onnx")
        combined = RunResults()
        combined.append(("pytorch", reference["pytorch"]))
        for name, iterations in Comparator.run([runner], data_loader=feeds).items():
            combined.append((name, iterations))
        accuracy = Comparator.compare_accuracy(combined, compare_func=SimpleCompareFunc(atol=1e-4, rtol=1e-4))
    assert bool(accuracy)


def test_polygraphy_run_command_compares_model_onnx(graphs, polygraphy_files):
    """What CI (and a user) types: `polygraphy run model.onnx --onnxrt --load-inputs --load-outputs`."""
    folder, _, _ = polygraphy_files
    path = graphs["fp32"][4]
    command = [polygraphy_command(), "run", str(path), "--onnxrt", "--providers", "cpu",
               "--load-inputs", str(folder / "inputs.json"), "--load-outputs", str(folder / "outputs.json"),
               "--atol", "1e-4", "--rtol", "1e-4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout


# ----- TensorRT-RTX --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_builds_model_onnx_ahead_of_time(graphs, tmp_path, precision):
    """TensorRT-RTX (no plugins) parses the one graph — data-dependent TopK K, GatherND with batch_dims,
    GatherElements, Range/Slice over S' — and builds one engine with a dynamic batch/sequence profile, on
    the CPU (ahead of time: its kernels are compiled when a GPU loads the plan)."""
    require_module("tensorrt_rtx", "pip install -e '.[tensorrt-rtx]'")
    from adapler_export import engines

    _, _, specs, etas, path = graphs[precision]
    profile = engines.input_profile(specs[0].inputs, max_batch=8, max_seq=48, opt_batch=1)
    record = engines.build_engine(path, tmp_path / f"model.{precision}.plan", profile, "tensorrt_rtx")
    assert (tmp_path / f"model.{precision}.plan").stat().st_size == record["plan_bytes"] > 0
    assert record["inputs"] == {name: {"dtype": "int32", "shape": [-1, -1]} for name in onnx_graph.INPUTS}
    assert record["outputs"]["logits"] == {"dtype": "float32", "shape": [-1, 2]}
    for k in range(len(etas)):
        assert record["outputs"][onnx_graph.kept_output(k)] == {"dtype": "int32", "shape": [-1, -1]}
