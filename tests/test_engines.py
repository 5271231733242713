"""TensorRT engines (adapler_export.engines) and runtimes (adapler_export.backends.tensorrt), on a tiny real model.

The builds are real: TensorRT for RTX (`pip install tensorrt_rtx`) compiles engines ahead of time on a CPU,
and full TensorRT builds them where it is installed. What needs a GPU (loading and running plans, the
single engine with the plugin) skips with the command that runs it:

    # NVIDIA GPU, CUDA PyTorch, tensorrt or tensorrt_rtx:
    nice -n 10 python -m pytest -q tests/test_engines.py -k gpu
    # the single engine also needs full TensorRT and the plugin library:
    cmake -S plugins -B plugins/build -DTensorRT_ROOT=/path/to/TensorRT && cmake --build plugins/build -j
    export ADAPLER_PLUGIN_LIBRARY=$PWD/plugins/build/lib/libadapler_plugins.so
    python -m pytest -q tests/test_engines.py -k single

Without a GPU the segments runtime's own work (chunking above the profile, chaining torch tensors through
`chain.run_chain`, padding kept positions) is checked with ONNX Runtime standing in for the engines.
"""
from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from adapler_export import engines
from adapler_export.artifact import EnginesRecord, Manifest, read_manifest, write_manifest
from adapler_export.backends import load_backend
from adapler_export.backends import tensorrt as trt_backends
from adapler_export.backends.onnxruntime import OnnxRuntimeBackend
from adapler_export.backends.pytorch import PyTorchBackend
from adapler_export.errors import AdaplerError, BackendUnavailable
from adapler_export.link import token_compact_torch
from adapler_export.segments import build_single_graph, export_segments, segment_specs
from adapler_export.specs import OPSET
from adapler_export.tolerances import Tolerances

from conftest import require, tiny_model

pytestmark = pytest.mark.slow  # TensorRT engine builds: about a minute on 2 cores
MAX_BATCH, MAX_SEQ, OPT_BATCH, LAYERS = 4, 32, 2, 2
try:
    TRT, FLAVOR, NO_TRT = (*engines.import_tensorrt(), None)
except engines.TensorRTUnavailable as exc:
    TRT, FLAVOR, NO_TRT = None, None, str(exc)
GPU = torch.cuda.is_available()
NEEDS_TENSORRT = ("needs tensorrt or tensorrt_rtx: `pip install tensorrt_rtx` (builds on the CPU), then "
                  "`python -m pytest tests/test_engines.py`")


@pytest.fixture(scope="session")
def tensorrt_importable():
    """TensorRT-RTX is part of `.ci/run`'s install (the tensorrt-rtx extra): a skip here, a failure under CI=true."""
    require(TRT is not None, f"{NEEDS_TENSORRT} ({NO_TRT if TRT is None else ''})")


needs_tensorrt = pytest.mark.usefixtures("tensorrt_importable")
needs_gpu = pytest.mark.skipif(TRT is None or not GPU, reason=(
    "needs an NVIDIA GPU, CUDA PyTorch and TensorRT: on such a machine `pip install tensorrt` (or tensorrt_rtx), "
    "then `python -m pytest -q tests/test_engines.py -k gpu`"))
no_gpu_here = pytest.mark.skipif(GPU, reason="a CUDA GPU is here: the gpu tests run the engines instead")


def _ids(batch: int, seq: int, seed: int = 0, vocab: int = 200):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 2  # [CLS]-like first token
    mask = np.ones((batch, seq), dtype=np.int32)
    for row in range(1, batch):  # rows of different lengths: padding in the batch
        mask[row, seq - 3 * row:] = 0
    return ids, mask


def write_artifact(path: Path, model, precision: str, build_engines: bool = True) -> Path:
    """An artifact folder as `build` writes it (onnx/, engines/, manifest.json), without tokenizer or parity."""
    specs = export_segments(model, path / "onnx", precision)
    etas = [float(e) for e in model.eta.detach()]
    build_single_graph(path / "onnx", specs, etas, path / "onnx" / "single.onnx")
    record = EnginesRecord(not_built={"segments": "not asked for (build --backend tensorrt)"})
    if build_engines:
        record = engines.build_artifact_engines(path, specs, precision, MAX_BATCH, MAX_SEQ, OPT_BATCH,
                                                log=lambda message: None)
    manifest = Manifest(
        checkpoint={"path": "tiny", "digest": "0" * 64}, backbone="tiny-random-bert", task="sst2",
        labels=["negative", "positive"], max_length=MAX_SEQ, num_layers=LAYERS, hidden_size=32, eta=etas,
        precision=precision, opset=OPSET, segments=[s.to_dict() for s in specs],
        single_graph={"file": "single.onnx", "link_op": "adapler::TokenCompact",
                      "outputs": ["logits"] + [f"kept_positions_{k}" for k in range(LAYERS)]},
        engines=record)
    write_manifest(path, manifest)
    return path


@pytest.fixture(scope="module")
def model():
    return tiny_model(layers=LAYERS)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    require(TRT is not None, f"neither TensorRT flavor is importable ({NO_TRT if TRT is None else ''}): "
                             "`pip install tensorrt_rtx`")
    root = tmp_path_factory.mktemp("trt")
    return {p: write_artifact(root / p, model, p) for p in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def onnx_only_artifact(model, tmp_path_factory):
    return write_artifact(tmp_path_factory.mktemp("ort") / "fp32", model, "fp32", build_engines=False)


# ----- importing TensorRT -----------------------------------------------------------------------------------------
def test_import_tensorrt_tries_full_tensorrt_first_then_rtx(monkeypatch):
    tried = []
    fake_rtx = types.SimpleNamespace(Builder=object, __version__="9.9")

    def import_module(name):
        tried.append(name)
        if name == "tensorrt_rtx":
            return fake_rtx
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(engines.importlib, "import_module", import_module)
    assert engines.import_tensorrt() == (fake_rtx, "tensorrt_rtx") and tried == ["tensorrt", "tensorrt_rtx"]
    with pytest.raises(engines.TensorRTUnavailable, match="tensorrt: ImportError"):
        engines.import_tensorrt("tensorrt")
    with pytest.raises(AdaplerError, match="unknown TensorRT flavor"):
        engines.import_tensorrt("tensorrt_llm")


def test_build_without_any_tensorrt_is_a_clear_error(monkeypatch, tmp_path):
    def no_tensorrt(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(engines.importlib, "import_module", no_tensorrt)
    specs = segment_specs(LAYERS, 32, 2, "fp32")
    with pytest.raises(BackendUnavailable, match=r"pip install tensorrt_rtx"):
        engines.build_artifact_engines(tmp_path, specs, "fp32", MAX_BATCH, MAX_SEQ)


@needs_tensorrt
def test_polygraphy_is_bound_to_the_flavor_that_builds():
    """Polygraphy picks its TensorRT module once per process; asking for the other one is a clear error."""
    polygraphy_trt = engines.polygraphy_tensorrt(FLAVOR)
    assert polygraphy_trt.loader.trt.__name__ == FLAVOR
    other = next(f for f in engines.TENSORRT_FLAVORS if f != FLAVOR)
    with pytest.raises(BackendUnavailable, match=f"already bound to {FLAVOR} in this process; {other} needs a new"):
        engines.polygraphy_tensorrt(other)


# ----- profiles ------------------------------------------------------------------------------------------------------
def test_profiles_come_from_the_segment_specs():
    specs = segment_specs(LAYERS, 32, 2, "fp16")
    first = engines.input_profile(specs[0].inputs, 8, 64, opt_batch=4)
    assert first == {name: {"min": [1, 1], "opt": [4, 64], "max": [8, 64]} for name in specs[0].inputs}
    middle = engines.input_profile(specs[1].inputs, 8, 64, opt_batch=4, opt_seq=16)
    assert list(middle) == list(specs[1].inputs)
    hidden = next(name for name, (_, shape) in specs[1].inputs.items() if len(shape) == 3)
    assert middle[hidden] == {"min": [1, 1, 32], "opt": [4, 16, 32], "max": [8, 64, 32]}


@pytest.mark.parametrize("max_batch, max_seq, opt_batch", [(0, 64, 1), (4, 64, 5), (4, 0, 1), (4, 64, 0)])
def test_bad_profile_ranges_are_clear_errors(max_batch, max_seq, opt_batch):
    with pytest.raises(AdaplerError, match="engine profile"):
        engines.input_profile(segment_specs(LAYERS, 32, 2, "fp32")[0].inputs, max_batch, max_seq, opt_batch)


# ----- real builds -----------------------------------------------------------------------------------------------
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_segment_engines_are_built_and_recorded(artifacts, precision):
    artifact = artifacts[precision]
    manifest = read_manifest(artifact)
    record = manifest.engines
    assert (record.flavor, record.version) == (FLAVOR, str(TRT.__version__))
    specs = manifest.specs()
    assert len(record.segments) == len(specs) == LAYERS + 1
    for spec, engine in zip(specs, record.segments):
        assert engine["plan_path"] == f"engines/segment_{spec.index:02d}.{precision}.plan"
        plan = artifact / engine["plan_path"]
        assert plan.stat().st_size == engine["plan_bytes"] > 100_000, "a real serialized engine"
        assert engine["plan_path"] in manifest.files, "plans are digested artifact content"
        assert engine["profiles"] == [engines.input_profile(spec.inputs, MAX_BATCH, MAX_SEQ, OPT_BATCH)]
        # the network TensorRT parsed has the spec's I/O: fp16 hidden states, fp32 scores and logits
        for kind in ("inputs", "outputs"):
            want = {name: dtype for name, (dtype, _) in getattr(spec, kind).items()}
            assert {name: tensor["dtype"] for name, tensor in engine[kind].items()} == want
        assert engine["precision"] == precision and engine["tf32"] is False
    hidden = specs[1].inputs["hidden"][0]
    assert hidden == ("float16" if precision == "fp16" else "float32")
    assert "segments" not in record.not_built and record.single is None
    assert not (artifact / "plugins").exists()


@needs_tensorrt
def test_single_engine_not_built_says_why(artifacts):
    reason = read_manifest(artifacts["fp32"]).engines.not_built["single"]
    if FLAVOR == "tensorrt_rtx":
        assert "full TensorRT is not importable" in reason and "no plugin support" in reason
    else:  # full TensorRT without the plugin library built here (with it, the single engine is built)
        assert "plugin library not found" in reason, reason


@needs_tensorrt
@pytest.mark.skipif(FLAVOR != "tensorrt_rtx", reason="TensorRT-RTX: plan headers are checked without a GPU")
def test_plans_are_sound_tensorrt_rtx_engines(artifacts):
    runtime = TRT.Runtime(TRT.Logger(TRT.Logger.INTERNAL_ERROR))
    malformed = int(TRT.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    for record in read_manifest(artifacts["fp16"]).engines.segments:
        data = bytearray((artifacts["fp16"] / record["plan_path"]).read_bytes())
        _, diagnostics = runtime.get_engine_validity(bytes(data))
        assert not int(diagnostics) & malformed
        data[:4] = bytes(4)  # a damaged header (the "vtrt" magic) is recognised as such
        _, diagnostics = runtime.get_engine_validity(bytes(data))
        assert int(diagnostics) & malformed


@needs_tensorrt
def test_build_config_has_one_profile_and_no_tf32(artifacts):
    """The config polygraphy builds with: the segment's profile, TF32 cleared (CreateConfigRTX has no switch)."""
    polygraphy_trt = engines.polygraphy_tensorrt(FLAVOR)
    spec = read_manifest(artifacts["fp32"]).specs()[1]
    profile = engines.input_profile(spec.inputs, MAX_BATCH, MAX_SEQ, OPT_BATCH)
    builder, network, _ = polygraphy_trt.NetworkFromOnnxPath(str(artifacts["fp32"] / "onnx" / spec.file_name),
                                                             strongly_typed=True)()
    config_loader, _ = engines._create_config(polygraphy_trt, TRT, FLAVOR, profile, None, None)
    with engines._quiet_polygraphy():
        config = config_loader(builder, network)
    assert config.num_optimization_profiles == 1 and not config.get_flag(TRT.BuilderFlag.TF32)


@needs_tensorrt
@pytest.mark.skipif(FLAVOR != "tensorrt_rtx", reason="compute capabilities are a TensorRT-RTX option")
def test_tensorrt_rtx_targets(artifacts, tmp_path):
    spec = read_manifest(artifacts["fp32"]).specs()[0]
    onnx_path = artifacts["fp32"] / "onnx" / spec.file_name
    profile = engines.input_profile(spec.inputs, MAX_BATCH, MAX_SEQ)
    built = engines.build_engine(onnx_path, tmp_path / "sm86.plan", profile, FLAVOR, io=spec,
                                 compute_capabilities=[(8, 6)])
    assert built["targets"] == "SM86" and (tmp_path / "sm86.plan").stat().st_size == built["plan_bytes"]
    with pytest.raises(engines.EngineBuildError, match="SM90.*H100.*full TensorRT"):
        engines.build_engine(onnx_path, tmp_path / "sm90.plan", profile, FLAVOR, compute_capabilities=[(9, 0)])


@needs_tensorrt
def test_graph_that_breaks_its_spec_is_refused(artifacts, tmp_path):
    fp16_spec = read_manifest(artifacts["fp16"]).specs()[1]
    fp32_graph = artifacts["fp32"] / "onnx" / fp16_spec.file_name
    profile = engines.input_profile(fp16_spec.inputs, MAX_BATCH, MAX_SEQ)
    with pytest.raises(engines.EngineBuildError, match="hidden is float32 in the network.*strongly typed"):
        engines.build_engine(fp32_graph, tmp_path / "x.plan", profile, FLAVOR, io=fp16_spec)
    assert not (tmp_path / "x.plan").exists()


@needs_tensorrt
def test_unparseable_graph_is_a_clear_error(tmp_path):
    bad = tmp_path / "segment_00.onnx"
    bad.write_bytes(b"not an onnx graph")
    profile = engines.input_profile(segment_specs(LAYERS, 32, 2, "fp32")[0].inputs, MAX_BATCH, MAX_SEQ)
    with pytest.raises(engines.EngineBuildError, match=f"{FLAVOR} .* could not build segment_00.onnx"):
        engines.build_engine(bad, tmp_path / "x.plan", profile, FLAVOR)


# ----- the single engine's preconditions ------------------------------------------------------------------------
def test_single_engine_reasons(monkeypatch, tmp_path):
    single = tmp_path / "onnx" / "single.onnx"
    library = tmp_path / "libadapler_plugins.so"
    monkeypatch.setattr(engines, "_REPO_ROOT", tmp_path / "checkout")  # a checkout with no plugins/build
    monkeypatch.delenv(engines.PLUGIN_LIBRARY_ENV, raising=False)

    _, why = engines.single_engine_blocker("tensorrt_rtx", "1.7", single)
    assert "full TensorRT is not importable (only tensorrt_rtx 1.7)" in why and "no plugin support" in why
    _, why = engines.single_engine_blocker("tensorrt", "11.0", single)
    assert why.startswith("plugin library not found") and "cmake -S plugins -B plugins/build -DTensorRT_ROOT=" in why
    monkeypatch.setenv(engines.PLUGIN_LIBRARY_ENV, str(library))
    _, why = engines.single_engine_blocker("tensorrt", "11.0", single)
    assert why == f"plugin library not found: ${engines.PLUGIN_LIBRARY_ENV}={library} is not a file"
    library.write_bytes(b"\x7fELF")
    assert engines.single_engine_blocker("tensorrt", "11.0", single) == (None,
                                                                         "onnx/single.onnx is not in the artifact")
    single.parent.mkdir()
    single.write_bytes(b"graph")
    assert engines.single_engine_blocker("tensorrt", "11.0", single) == (library, None)
    monkeypatch.delenv(engines.PLUGIN_LIBRARY_ENV)
    built = tmp_path / "checkout" / "plugins" / "build" / "lib" / engines.PLUGIN_LIBRARY
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF")
    assert engines.find_plugin_library() == (built, None)


# ----- opening engines: never a silent fallback -----------------------------------------------------------------
@no_gpu_here
@needs_tensorrt
def test_open_segments_without_a_gpu_says_so(artifacts):
    artifact = artifacts["fp32"]
    with pytest.raises(BackendUnavailable, match="need an NVIDIA GPU.*no CUDA device"):
        trt_backends.open_segments(artifact, read_manifest(artifact))
    with pytest.raises(BackendUnavailable, match="GPU"):  # a named kind never falls back to ONNX Runtime
        load_backend(artifact, kind="tensorrt")
    said = []
    with load_backend(artifact, kind="auto", log=said.append) as backend:
        assert backend.name == "onnxruntime" and "no CUDA GPU" in said[0]


def test_artifact_without_engines_says_why(onnx_only_artifact):
    manifest = read_manifest(onnx_only_artifact)
    with pytest.raises(BackendUnavailable, match=r"no TensorRT segment engines \(not asked for .*--backend tensorrt"):
        load_backend(onnx_only_artifact, kind="tensorrt")
    with pytest.raises(BackendUnavailable, match="no single TensorRT engine"):
        trt_backends.open_single(onnx_only_artifact, manifest)
    with pytest.raises(AdaplerError, match="takes link= and log=, not device"):
        trt_backends.open_segments(onnx_only_artifact, manifest, device="cuda:1")


@needs_tensorrt
def test_single_engine_absence_reason_reaches_the_user(artifacts):
    manifest = read_manifest(artifacts["fp32"])
    reason = manifest.engines.not_built["single"]
    with pytest.raises(BackendUnavailable, match="no single TensorRT engine: " + re.escape(reason[:40])):
        load_backend(artifacts["fp32"], kind="tensorrt-single")


@needs_tensorrt
def test_engines_of_another_version_are_refused(artifacts, monkeypatch):
    manifest = read_manifest(artifacts["fp32"])
    manifest.engines = dataclasses.replace(manifest.engines, version="0.0.1")
    with pytest.raises(BackendUnavailable, match=f"built with {FLAVOR} 0.0.1, this machine has"):
        trt_backends._open_runtime(manifest)
    manifest.engines = dataclasses.replace(manifest.engines, version=str(TRT.__version__), flavor="tensorrt_rtx")
    with pytest.raises(BackendUnavailable, match="needs tensorrt; .* built with tensorrt_rtx"):
        trt_backends._open_runtime(manifest, flavor_needed="tensorrt")


# ----- the link choice -------------------------------------------------------------------------------------------
def test_link_choice_is_never_silent():
    from adapler_export import link_cuda

    with pytest.raises(AdaplerError, match="link must be one of auto, cuda, torch"):
        trt_backends.choose_link("numpy", None)
    assert trt_backends.choose_link("torch", None) == (token_compact_torch, "PyTorch reference on the GPU")
    try:
        link_cuda.load_library()
    except link_cuda.CudaLinkUnavailable:
        pass
    else:
        pytest.skip("the TokenCompact CUDA library is built here: `auto` picks it")
    with pytest.raises(BackendUnavailable, match="CUDA TokenCompact link is not available"):
        trt_backends.choose_link("cuda", None)
    said = []
    function, name = trt_backends.choose_link("auto", None, said.append)
    assert function is token_compact_torch and len(said) == 1
    assert said[0].startswith("tensorrt: link = PyTorch reference on the GPU (the CUDA kernel is not available: ")


# ----- the segments runtime's own work, with ONNX Runtime standing in for the engines -------------------------------
class OnnxRuntimeEngine:
    """What `TensorRTSegmentsBackend` needs of an engine (`run(feeds, stream, device)`, profile maxima), run by
    ONNX Runtime on CPU torch tensors."""

    def __init__(self, path: Path, spec, max_batch: int, max_seq: int):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs, self.max_batch, self.max_seq, self.batches = list(spec.outputs), max_batch, max_seq, []

    def run(self, feeds, stream, device):
        assert all(isinstance(t, torch.Tensor) and t.device == device for t in feeds.values())
        self.batches.append(len(next(iter(feeds.values()))))
        outputs = self.session.run(self.outputs, {name: t.numpy() for name, t in feeds.items()})
        return {name: torch.from_numpy(array) for name, array in zip(self.outputs, outputs)}


def test_segments_backend_chains_and_chunks_like_onnxruntime(onnx_only_artifact):
    manifest = read_manifest(onnx_only_artifact)
    specs, paths = manifest.specs(), manifest.segment_paths(onnx_only_artifact)
    stand_ins = [OnnxRuntimeEngine(p, s, max_batch=2, max_seq=24) for p, s in zip(paths, specs)]
    backend = trt_backends.TensorRTSegmentsBackend(stand_ins, specs, manifest.eta, token_compact_torch,
                                                   torch.device("cpu"))
    ids, mask = _ids(5, 20)
    got = backend.run(ids, mask)
    want = OnnxRuntimeBackend(paths, specs, manifest.eta).run(ids, mask)
    assert stand_ins[0].batches == [2, 2, 1], "batches above the profile run in chunks"
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-6)
    assert len(got.kept) == LAYERS and any(k.shape[1] < 20 for k in want.kept), "the tiny model drops tokens"
    for g, w in zip(got.kept, want.kept):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(AdaplerError, match="sequence length 25 exceeds the engines' maximum 24"):
        backend.run(*_ids(1, 25))


# ----- on a GPU ------------------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("link", ["torch", "cuda"])
def test_gpu_segment_engines_match_the_reference(artifacts, model, precision, link):
    if link == "cuda":
        from adapler_export import link_cuda

        try:
            link_cuda.load_library()
        except link_cuda.CudaLinkUnavailable as exc:
            pytest.skip(f"{exc}".splitlines()[0] + f"; build it: `{link_cuda.BUILD_COMMAND}`")
    ids, mask = _ids(7, MAX_SEQ)  # 7 rows: two chunks of the profile's 4
    reference = PyTorchBackend(model).run(ids, mask)
    tolerance = Tolerances.for_precision(precision)
    with load_backend(artifacts[precision], kind="tensorrt", link=link) as backend:
        got = backend.run(ids, mask)
    error = np.abs(got.logits - reference.logits)
    assert error.mean() <= tolerance.mean_abs_logit
    if precision == "fp32":
        assert error.max() <= tolerance.max_abs_logit
        for g, r in zip(got.kept, reference.kept):
            np.testing.assert_array_equal(g, r)


@needs_gpu
def test_gpu_single_engine_matches_the_segments(model, tmp_path):
    library, why = engines.find_plugin_library()
    if FLAVOR != "tensorrt" or library is None:
        pytest.skip(f"the single engine needs full TensorRT and the plugin library ({why or FLAVOR}): "
                    f"`{engines.PLUGIN_BUILD_COMMAND}`, then `python -m pytest -q tests/test_engines.py -k single`")
    artifact = write_artifact(tmp_path / "single", model, "fp32")
    manifest = read_manifest(artifact)
    if manifest.engines.single is None:
        pytest.fail(f"single engine not built: {manifest.engines.not_built['single']}")
    assert (artifact / manifest.engines.single["plugin_library"]).is_file()
    ids, mask = _ids(6, MAX_SEQ)
    with load_backend(artifact, kind="tensorrt-single") as single, load_backend(artifact, kind="tensorrt") as chain:
        got, want = single.run(ids, mask), chain.run(ids, mask)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-3)
    for g, w in zip(got.kept, want.kept):
        np.testing.assert_array_equal(g, w)
