"""Real TensorRT engine builds (adapler_export.engines) and the TensorRT runtimes.

On a CPU-only machine the builds run with TensorRT for RTX (`pip install tensorrt_rtx`), which compiles
ahead of time without a GPU. What needs a GPU (deserialising, running, the single engine with the plugin)
skips with the command that runs it:

    # a machine with an NVIDIA GPU, a CUDA build of PyTorch and full TensorRT (or tensorrt_rtx):
    pip install tensorrt            # or: pip install tensorrt_rtx
    pytest tests/test_engines.py -v
    # the single engine also needs the plugin library:
    ADAPLER_PLUGIN_LIB=/path/to/libadapler_plugins.so pytest tests/test_engines.py -v -k single

Without a GPU the runtimes' orchestration (chunking, links, kept positions, the IOutputAllocator read-back)
is still checked, against a stand-in for the TensorRT runtime that executes the graphs with ONNX Runtime.

The test graphs are tiny torch modules with the segment interface of docs/INTERFACES.md (segment 0:
input_ids/attention_mask -> hidden/scores; middle: hidden/attention_mask -> hidden_out/scores; last:
hidden/attention_mask -> logits), exported with dynamic batch/seq axes at opset 17.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from adapler_export import engines as E  # noqa: E402

H, VOCAB, LABELS = 16, 50, 3
MAX_BATCH, MAX_SEQ, OPT_BATCH = 8, 64, 4
OPT_SEQS = [32, 16, 8]

try:
    TRT, FLAVOR = E.import_tensorrt()
except E.TensorRTUnavailable as _exc:
    TRT, FLAVOR, _TRT_ERROR = None, None, str(_exc)
else:
    _TRT_ERROR = ""

needs_trt = pytest.mark.skipif(TRT is None, reason="needs tensorrt or tensorrt_rtx: `pip install tensorrt_rtx` "
                                                   "(CPU builds) then `pytest tests/test_engines.py`")
HAS_GPU = E._cuda_device_count() > 0 and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(
    not HAS_GPU or TRT is None,
    reason="needs an NVIDIA GPU, CUDA PyTorch and TensorRT: on such a machine run "
           "`pip install tensorrt && pytest tests/test_engines.py -v -k gpu`")


# ------------------------------------------------------------------------------ tiny segments


def _cp_scores(cp: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s~: CP logits soft-maxed over live tokens ([CLS] forced live), fp32, exactly 0 on dead slots."""
    logits = cp(hidden.float()).squeeze(-1)
    live = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1).to(torch.float32)
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values) * live
    return e / e.sum(dim=1, keepdim=True)


class _Layer(torch.nn.Module):
    """Token-wise MLP plus a masked mean over live tokens (so the mask and the length matter)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(H, H)
        self.mix = torch.nn.Linear(H, H)
        self.ln = torch.nn.LayerNorm(H)

    def forward(self, hidden, mask):
        m = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.ln(hidden + torch.relu(self.lin(hidden)) + self.mix(pooled))


def _cp():
    return torch.nn.Sequential(torch.nn.Linear(H, 4), torch.nn.GELU(), torch.nn.Linear(4, 1))


class Seg0(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, H)
        self.ln = torch.nn.LayerNorm(H)
        self.cp = _cp()

    def forward(self, input_ids, attention_mask):
        hidden = self.ln(self.emb(input_ids))
        return hidden, _cp_scores(self.cp, hidden, attention_mask)


class SegMid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer, self.cp = _Layer(), _cp()

    def forward(self, hidden, attention_mask):
        out = self.layer(hidden, attention_mask)
        return out, _cp_scores(self.cp, out, attention_mask)


class SegLast(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer, self.head = _Layer(), torch.nn.Linear(H, LABELS)

    def forward(self, hidden, attention_mask):
        return self.head(torch.tanh(self.layer(hidden, attention_mask)[:, 0])).float()


def _export(module, path: Path, inputs, input_names, output_names):
    dyn = {n: {0: "batch", 1: "seq"} for n in input_names + output_names if n != "logits"}
    if "logits" in output_names:
        dyn["logits"] = {0: "batch"}
    torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                      dynamic_axes=dyn, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("segments")
    mods = [Seg0(), SegMid(), SegLast()]
    ids = torch.randint(1, VOCAB, (2, 8), dtype=torch.int32)
    mask = torch.ones(2, 8, dtype=torch.int32)
    hid = torch.randn(2, 8, H)
    paths = [
        _export(mods[0], d / "segment_00.onnx", (ids, mask), ["input_ids", "attention_mask"], ["hidden", "scores"]),
        _export(mods[1], d / "segment_01.onnx", (hid, mask), ["hidden", "attention_mask"], ["hidden_out", "scores"]),
        _export(mods[2], d / "segment_02.onnx", (hid, mask), ["hidden", "attention_mask"], ["logits"]),
    ]
    return {"dir": d, "modules": mods, "onnx": paths}


@pytest.fixture(scope="module")
def fp16_graphs(tiny_model):
    out = []
    for p in tiny_model["onnx"]:
        out.append(E.convert_onnx_to_fp16(p, p.with_name(p.stem + ".fp16.onnx")))
    return out


def _profiles():
    return E.segment_profiles(3, H, MAX_BATCH, MAX_SEQ, opt_batch=OPT_BATCH, opt_seq=OPT_SEQS)


def _expected_profile(profile):
    return {name: {"min": list(mn), "opt": list(op), "max": list(mx)} for name, (mn, op, mx) in profile.items()}


# ------------------------------------------------------------------------------------- no TensorRT


def test_segment_profiles_shapes():
    profs = E.segment_profiles(4, 384, max_batch=32, max_seq=128, opt_batch=8, opt_seq=[128, 64, 32, 16])
    assert len(profs) == 4
    assert set(profs[0]) == {"input_ids", "attention_mask"}
    assert profs[0]["input_ids"] == ((1, 1), (8, 128), (32, 128))
    for k in (1, 2, 3):
        assert set(profs[k]) == {"hidden", "attention_mask"}
        # every segment may see any length 1..max_seq: the links can drop tokens down to [CLS]
        assert profs[k]["hidden"][0] == (1, 1, 384) and profs[k]["hidden"][2] == (32, 128, 384)
        assert profs[k]["attention_mask"][0] == (1, 1) and profs[k]["attention_mask"][2] == (32, 128)
    assert [p["attention_mask"][1][1] for p in profs] == [128, 64, 32, 16]
    assert E.segment_profiles(2, 8, 4, 16)[1]["hidden"][1] == (4, 16, 8)  # opt defaults to max


@pytest.mark.parametrize("kwargs", [
    dict(num_segments=1, hidden_size=8, max_batch=4, max_seq=16),
    dict(num_segments=3, hidden_size=8, max_batch=4, max_seq=16, opt_seq=32),
    dict(num_segments=3, hidden_size=8, max_batch=4, max_seq=16, opt_seq=[8, 8]),
    dict(num_segments=3, hidden_size=8, max_batch=4, max_seq=16, opt_batch=5),
    dict(num_segments=3, hidden_size=8, max_batch=0, max_seq=16),
])
def test_segment_profiles_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        E.segment_profiles(**kwargs)


def test_plan_filename_follows_artifact_layout():
    assert E.plan_filename(0, "fp32") == "segment_00.fp32.plan"
    assert E.plan_filename(12, "fp16") == "segment_12.fp16.plan"
    with pytest.raises(ValueError):
        E.plan_filename(0, "int8")


def test_import_tensorrt_lists_what_was_tried(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name in E.TENSORRT_MODULES:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    monkeypatch.delenv(E.TENSORRT_ENV, raising=False)
    with pytest.raises(E.TensorRTUnavailable) as err:
        E.import_tensorrt()
    assert "import tensorrt:" in str(err.value) and "import tensorrt_rtx:" in str(err.value)
    with pytest.raises(ValueError):
        E.import_tensorrt("onnxruntime")


def test_fp16_conversion_keeps_scores_path_fp32(tiny_model, fp16_graphs):
    ort = pytest.importorskip("onnxruntime")
    F, F16, I32 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT32
    types = []
    for p in fp16_graphs:
        m = onnx.load(str(p))
        types.append({v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)})
    assert types[0] == {"input_ids": I32, "attention_mask": I32, "hidden": F16, "scores": F}
    assert types[1] == {"hidden": F16, "attention_mask": I32, "hidden_out": F16, "scores": F}
    assert types[2] == {"hidden": F16, "attention_mask": I32, "logits": F}
    for p in fp16_graphs:  # the fp32 path is fp32 end to end: no fp32 -> fp16 -> fp32 round trip left
        m = onnx.shape_inference.infer_shapes(onnx.load(str(p)))
        g = m.graph
        elem = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
        elem.update({t.name: t.data_type for t in g.initializer})
        casts = {n.output[0]: n for n in g.node if n.op_type == "Cast"}
        to = {name: next(a.i for a in n.attribute if a.name == "to") for name, n in casts.items()}
        for name, n in casts.items():
            if to[name] != F:
                continue
            src = n.input[0]
            while src in casts and to[src] == F16:
                src = casts[src].input[0]
                assert elem.get(src) != F, f"{p.name}: {n.name} undoes a cast of fp32 {src} to fp16"
    # numerically close to the fp32 graph (ONNX Runtime CPU)
    rng = np.random.default_rng(0)
    mask = np.ones((3, 12), np.int32)
    mask[1, 7:] = 0
    hid = rng.standard_normal((3, 12, H)).astype(np.float32)
    s32 = ort.InferenceSession(str(tiny_model["onnx"][1]), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(str(fp16_graphs[1]), providers=["CPUExecutionProvider"])
    h32, sc32 = s32.run(None, {"hidden": hid, "attention_mask": mask})
    h16, sc16 = s16.run(None, {"hidden": hid.astype(np.float16), "attention_mask": mask})
    assert sc16.dtype == np.float32 and h16.dtype == np.float16
    np.testing.assert_allclose(sc16, sc32, atol=2e-3)
    np.testing.assert_allclose(h16.astype(np.float32), h32, atol=2e-2)
    assert np.all(sc16[1, 7:] == 0.0)  # dead slots stay exactly 0


# ----------------------------------------------------------------------------------- real builds


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_segment_engines(tiny_model, fp16_graphs, tmp_path, precision):
    graphs = tiny_model["onnx"] if precision == "fp32" else fp16_graphs
    profiles = _profiles()
    cache = tmp_path / "timing.cache"
    infos = E.build_segment_engines(graphs, tmp_path / "engines", precision, profiles, timing_cache_path=cache)
    assert len(infos) == 3
    for k, (info, prof) in enumerate(zip(infos, profiles)):
        plan = Path(info.plan_path)
        assert plan.name == E.plan_filename(k, precision) and plan.is_file()
        assert info.plan_bytes == plan.stat().st_size > 10_000  # a real engine, not a stub
        assert info.flavor == FLAVOR and info.version == TRT.__version__
        assert info.precision == precision and info.strongly_typed and info.tf32 is False
        assert info.profiles == [_expected_profile(prof)]  # as TensorRT recorded them
        assert info.profile_shapes(0) == {n: tuple(map(tuple, t)) for n, t in prof.items()}
        assert info.build_seconds > 0
        dtypes = {t.name: t.dtype for t in info.inputs + info.outputs}
        hid = "float16" if precision == "fp16" else "float32"
        if k == 0:
            assert dtypes == {"input_ids": "int32", "attention_mask": "int32", "hidden": hid, "scores": "float32"}
        elif k == 1:
            assert dtypes == {"hidden": hid, "attention_mask": "int32", "hidden_out": hid, "scores": "float32"}
        else:
            assert dtypes == {"hidden": hid, "attention_mask": "int32", "logits": "float32"}
        if FLAVOR == "tensorrt_rtx":
            want = ["CURRENT"] if HAS_GPU else list(E.RTX_PORTABLE_TARGETS)
            assert info.compute_capabilities == want
            assert info.timing_cache["status"].startswith("skipped")
        else:
            assert info.compute_capabilities is None
            assert cache.is_file() and info.timing_cache["saved_bytes"] > 0
    # nothing but the plans in the engines folder (atomic writes leave no temporary files)
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [E.plan_filename(k, precision)
                                                                        for k in range(3)]
    # the records round-trip through JSON (manifest.json)
    E.write_engine_infos(tmp_path / "engines.json", infos)
    import json
    back = [E.EngineInfo.from_dict(d) for d in json.loads((tmp_path / "engines.json").read_text())]
    assert back == infos


@needs_trt
def test_plan_is_sound(tiny_model, tmp_path):
    """Without a GPU nothing can deserialize a plan (TensorRT needs a CUDA context), so check what can be
    checked: the runtime's header validation finds no malformation or version mismatch in our plan,
    and does flag a corrupted copy. With a GPU the plan is also deserialized."""
    info = E.build_segment_engine(tiny_model["onnx"][1], tmp_path / "seg.plan", _profiles()[1])
    report = E.check_plan(info.plan_path)
    assert report["bytes"] == info.plan_bytes
    if report["validity"] is not None:
        assert "MALFORMED_ENGINE" not in report["diagnostic_flags"]
        assert "VERSION_MISMATCH" not in report["diagnostic_flags"]
        corrupt = tmp_path / "corrupt.plan"
        data = bytearray(Path(info.plan_path).read_bytes())
        data[:64] = bytes(64)
        corrupt.write_bytes(bytes(data))
        assert E.check_plan(corrupt)["malformed"] is True
    if HAS_GPU:
        assert report["deserializable"] is True
    else:
        assert report["deserializable"] is None


@needs_trt
def test_rebuild_replaces_plan_atomically(tiny_model, tmp_path):
    plan = tmp_path / "seg.plan"
    plan.write_bytes(b"old")
    info = E.build_segment_engine(tiny_model["onnx"][2], plan, _profiles()[2])
    assert plan.read_bytes()[:3] != b"old" and plan.stat().st_size == info.plan_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["seg.plan"]


@needs_trt
def test_explicit_compute_capability(tiny_model, tmp_path):
    if FLAVOR != "tensorrt_rtx":
        with pytest.raises(ValueError):
            E.build_segment_engine(tiny_model["onnx"][1], tmp_path / "x.plan", _profiles()[1],
                                   compute_capabilities=["SM89"])
        return
    info = E.build_segment_engine(tiny_model["onnx"][1], tmp_path / "x.plan", _profiles()[1],
                                  compute_capabilities=["sm86", "89"])
    assert info.compute_capabilities == ["SM86", "SM89"]
    with pytest.raises(ValueError, match="available"):
        E.build_segment_engine(tiny_model["onnx"][1], tmp_path / "y.plan", _profiles()[1],
                               compute_capabilities=["SM90"])  # TensorRT-RTX has no Hopper target


@needs_trt
@pytest.mark.parametrize("bad,match", [
    ({"attention_mask": ((1, 1), (2, 4), (4, 8))}, "lacks dynamic input 'hidden'"),
    ({"hidden": ((1, 1, H), (2, 4, H), (4, 8, H)), "attention_mask": ((1, 1), (2, 4), (4, 8)),
      "extra": ((1,), (1,), (1,))}, "does not have"),
    ({"hidden": ((1, 1), (2, 4), (4, 8)), "attention_mask": ((1, 1), (2, 4), (4, 8))}, "rank"),
    ({"hidden": ((1, 1, H + 1), (2, 4, H + 1), (4, 8, H + 1)), "attention_mask": ((1, 1), (2, 4), (4, 8))},
     "fixed"),
    ({"hidden": ((1, 1, H), (2, 9, H), (4, 8, H)), "attention_mask": ((1, 1), (2, 4), (4, 8))}, "min <= opt"),
])
def test_profile_validation(tiny_model, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        E.build_segment_engine(tiny_model["onnx"][1], tmp_path / "x.plan", bad)
    assert not (tmp_path / "x.plan").exists()


@needs_trt
def test_precision_mismatch_is_an_error(tiny_model, tmp_path):
    with pytest.raises(E.EngineBuildError, match="strongly typed"):
        E.build_segment_engines(tiny_model["onnx"][:1], tmp_path, "fp16", _profiles()[:1])
    assert list(tmp_path.iterdir()) == []  # refused before building: no misnamed plan left behind


# ------------------------------------------------------------------------------- single engine


def _single_link_graph(path: Path, with_attrs: bool = False):
    from onnx import TensorProto as T, helper

    attrs = {"eta": 0.5}
    if with_attrs:
        attrs.update(plugin_version="1", plugin_namespace="adapler")
    node = helper.make_node("TokenCompact", ["hidden", "scores", "mask", "positions"],
                            ["hidden_out", "mask_out", "positions_out", "new_len"], domain="adapler",
                            name="link_0", **attrs)
    g = helper.make_graph(
        [node], "link",
        [helper.make_tensor_value_info("hidden", T.FLOAT, ["B", "S", 8]),
         helper.make_tensor_value_info("scores", T.FLOAT, ["B", "S"]),
         helper.make_tensor_value_info("mask", T.INT32, ["B", "S"]),
         helper.make_tensor_value_info("positions", T.INT32, ["B", "S"])],
        [helper.make_tensor_value_info("hidden_out", T.FLOAT, None),
         helper.make_tensor_value_info("positions_out", T.INT32, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("adapler", 1)])
    onnx.save(model, str(path))
    return model


def test_prepare_single_graph_adds_plugin_attributes(tmp_path):
    model = _single_link_graph(tmp_path / "single.onnx")
    model, n = E.prepare_single_graph(model)
    assert n == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"adapler"
    assert attrs["eta"] == pytest.approx(0.5)
    bad = _single_link_graph(tmp_path / "bad.onnx")
    bad.graph.node[0].attribute[0].f = 1.5
    with pytest.raises(E.EngineBuildError, match="eta"):
        E.prepare_single_graph(bad)


@needs_trt
def test_unknown_plugin_is_a_clear_parse_error(tmp_path):
    _single_link_graph(tmp_path / "single.onnx", with_attrs=True)
    prof = {"hidden": ((1, 1, 8), (2, 4, 8), (4, 16, 8))}
    prof.update({n: ((1, 1), (2, 4), (4, 16)) for n in ("scores", "mask", "positions")})
    if E.find_plugin_creator(TRT) is not None:
        pytest.skip("a TokenCompact plugin is registered in this process")
    with pytest.raises(E.EngineBuildError, match="TokenCompact"):
        E.build_engine(tmp_path / "single.onnx", tmp_path / "x.plan", prof)


@needs_trt
def test_single_engine_needs_full_tensorrt_and_plugin(tmp_path):
    _single_link_graph(tmp_path / "single.onnx")
    prof = E.single_profile(4, 16)
    with pytest.raises(E.PluginUnavailable):
        E.build_single_engine(tmp_path / "single.onnx", tmp_path / "single.plan", tmp_path / "missing.so", prof)


PLUGIN_LIB = os.environ.get("ADAPLER_PLUGIN_LIB")


@pytest.mark.skipif(FLAVOR != "tensorrt" or not PLUGIN_LIB or not HAS_GPU,
                    reason="needs full TensorRT, a GPU and the built plugin: `pip install tensorrt` then "
                           "`ADAPLER_PLUGIN_LIB=/path/to/libadapler_plugins.so pytest tests/test_engines.py -k single`")
def test_gpu_single_engine_link_only(tmp_path):
    """A graph that is only the link, built with the plugin and run with data-dependent outputs."""
    from adapler_export.backends.tensorrt import _Engine, _make_output_allocator
    from adapler_export.link import token_compact_numpy

    _single_link_graph(tmp_path / "single.onnx")
    prof = {"hidden": ((1, 1, 8), (2, 8, 8), (4, 16, 8))}
    prof.update({n: ((1, 1), (2, 8), (4, 16)) for n in ("scores", "mask", "positions")})
    info = E.build_single_engine(tmp_path / "single.onnx", tmp_path / "single.plan", PLUGIN_LIB, prof)
    assert Path(info.plan_path).is_file()
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((3, 10, 8)).astype(np.float32)
    mask = np.ones((3, 10), np.int32)
    mask[1, 6:] = 0
    logits = rng.standard_normal((3, 10)).astype(np.float32)
    scores = np.exp(logits) * mask
    scores = (scores / scores.sum(1, keepdims=True)).astype(np.float32)
    positions = np.where(mask == 1, np.arange(10)[None], -1).astype(np.int32)
    ref = token_compact_numpy(hidden, scores, mask, positions, 0.5)

    dev = torch.device("cuda")
    stream = torch.cuda.Stream()
    runtime = TRT.Runtime(E.tensorrt_logger(TRT))
    eng = _Engine(TRT, runtime, Path(info.plan_path), torch, dev, stream)
    alloc = _make_output_allocator(TRT, torch, dev)
    feeds = {n: torch.from_numpy(a).to(dev) for n, a in
             dict(hidden=hidden, scores=scores, mask=mask, positions=positions).items()}
    with torch.cuda.stream(stream):
        for n, t in feeds.items():
            eng.context.set_input_shape(n, tuple(t.shape))
            eng.context.set_tensor_address(n, t.data_ptr())
        for n in eng.outputs:
            eng.context.set_output_allocator(n, alloc)
        assert eng.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
    shape = alloc.shapes["hidden_out"]
    assert shape == (3, ref.new_len, 8)
    got_h = alloc.buffers["hidden_out"][: 3 * ref.new_len * 8 * 4].view(torch.float32).reshape(shape).cpu().numpy()
    got_p = alloc.buffers["positions_out"][: 3 * ref.new_len * 4].view(torch.int32).reshape(3, -1).cpu().numpy()
    np.testing.assert_array_equal(got_p, ref.positions)
    np.testing.assert_array_equal(got_h, ref.hidden)


# -------------------------------------------------------------------------------- the runtimes


def test_runtime_without_gpu_is_a_clear_error(tmp_path):
    from adapler_export.backends.tensorrt import TensorRTBackendUnavailable, TensorRTSegmentsBackend

    if HAS_GPU:
        pytest.skip("a GPU is present")
    plans = []
    for k in range(3):
        plans.append(tmp_path / E.plan_filename(k, "fp32"))
        plans[-1].write_bytes(b"x")
    with pytest.raises(TensorRTBackendUnavailable, match="GPU"):
        TensorRTSegmentsBackend(plans, [0.5, 0.5])


def _reference_chain(modules, ids, mask, etas):
    """The tiny model run like the reference: segments in torch (fp32, CPU), links by link.py."""
    from adapler_export.link import token_compact_torch

    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    positions = torch.where(mask_t == 1, torch.arange(ids.shape[1], dtype=torch.int32)[None],
                            torch.tensor(-1, dtype=torch.int32))
    kept = []
    with torch.no_grad():
        hidden, scores = modules[0](ids_t, mask_t)
        for k, eta in enumerate(etas):
            hidden, mask_t, positions, _ = token_compact_torch(hidden, scores, mask_t, positions, eta)
            kept.append(positions.numpy())
            out = modules[k + 1](hidden, mask_t)
            if k + 1 == len(modules) - 1:
                logits = out
            else:
                hidden, scores = out
    return logits.numpy(), kept


@needs_gpu
@pytest.mark.parametrize("link", ["torch", "auto"])
def test_gpu_segments_backend_matches_reference(tiny_model, tmp_path, link):
    from adapler_export.backends.tensorrt import TensorRTSegmentsBackend

    infos = E.build_segment_engines(tiny_model["onnx"], tmp_path / "engines", "fp32", _profiles())
    etas = [0.6, 0.8]
    rng = np.random.default_rng(2)
    b, s = 11, 20  # > MAX_BATCH: exercises chunking
    ids = rng.integers(1, VOCAB, (b, s)).astype(np.int32)
    mask = np.ones((b, s), np.int32)
    for row in range(b):
        mask[row, rng.integers(2, s + 1):] = 0
    ref_logits, ref_kept = _reference_chain(tiny_model["modules"], ids[:MAX_BATCH], mask[:MAX_BATCH], etas)
    with TensorRTSegmentsBackend([i.plan_path for i in infos], etas, link=link,
                                 runtime_cache_path=tmp_path / "rt.cache") as backend:
        out = backend.run(ids, mask)
    assert out.logits.shape == (b, LABELS) and out.logits.dtype == np.float32
    assert len(out.kept) == 2
    np.testing.assert_allclose(out.logits[:MAX_BATCH], ref_logits, atol=1e-3)
    for k in range(2):
        got = out.kept[k][:MAX_BATCH]
        width = ref_kept[k].shape[1]
        np.testing.assert_array_equal(got[:, :width], ref_kept[k])
        assert np.all(got[:, width:] == -1)


# ------------------------------------------------- runtime orchestration with a stand-in TensorRT


class _FakeTRT:
    """The slice of the TensorRT runtime API the backends use, executing the ONNX graph with ONNX Runtime
    on host memory (torch CPU tensors: their data_ptr() are host addresses). It checks the orchestration
    (shapes, addresses, chunking, links, kept positions) on a machine without a GPU; the real API calls
    are exercised by the GPU tests."""

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class _DT:
        def __init__(self, name):
            self.name = name

    _NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}
    _ONNX = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT32: "INT32"}
    __version__ = "fake"

    def __init__(self, onnx_of_plan, profiles):
        self.onnx_of_plan, self.profiles = onnx_of_plan, profiles

    def Runtime(self, logger):  # noqa: N802 - mirrors the TensorRT API
        return self

    def deserialize_cuda_engine(self, data):
        path = self.onnx_of_plan[bytes(data)]
        return _FakeEngine(self, path, self.profiles[path])


class _FakeEngine:
    num_optimization_profiles = 1

    def __init__(self, trt, path, profile):
        import onnxruntime as ort

        self.trt, self.profile = trt, profile
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model = onnx.load(str(path))
        self.io = ([(v.name, "INPUT", v) for v in model.graph.input]
                   + [(v.name, "OUTPUT", v) for v in model.graph.output])
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return next(m for n, m, _ in self.io if n == name)

    def get_tensor_dtype(self, name):
        v = next(v for n, _, v in self.io if n == name)
        return _FakeTRT._DT(_FakeTRT._ONNX[v.type.tensor_type.elem_type])

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profile[name]]

    def create_execution_context(self):
        return _FakeContext(self)


class _FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.out_shapes = engine, {}, {}, {}

    def set_input_shape(self, name, shape):
        mn, _, mx = self.engine.profile[name]
        if not all(a <= s <= b for a, s, b in zip(mn, shape, mx)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _array(self, name, shape):
        import ctypes

        dt = np.dtype(_FakeTRT._NP[self.engine.get_tensor_dtype(name).name])
        n = int(np.prod(shape))
        buf = (ctypes.c_byte * (n * dt.itemsize)).from_address(self.addresses[name])
        return np.frombuffer(buf, dtype=dt).reshape(shape)

    def infer_shapes(self):
        feeds = {n: np.zeros(s, _FakeTRT._NP[self.engine.get_tensor_dtype(n).name]) for n, s in self.shapes.items()}
        feeds = {n: (np.ones_like(a) if a.dtype == np.int32 else a) for n, a in feeds.items()}
        outs = self.engine.session.run(None, feeds)
        self.out_shapes = {o.name: r.shape for o, r in zip(self.engine.session.get_outputs(), outs)}
        return []

    def get_tensor_shape(self, name):
        return self.shapes.get(name) or self.out_shapes[name]

    def execute_async_v3(self, stream):
        feeds = {n: self._array(n, s).copy() for n, s in self.shapes.items()}
        outs = self.engine.session.run(None, feeds)
        for o, r in zip(self.engine.session.get_outputs(), outs):
            self._array(o.name, r.shape)[...] = r
        return True


def test_segments_backend_orchestration_with_fake_tensorrt(tiny_model, tmp_path, monkeypatch):
    import contextlib

    from adapler_export.backends import tensorrt as B

    plans, onnx_of_plan, prof_of = [], {}, {}
    for k, (path, prof) in enumerate(zip(tiny_model["onnx"], _profiles())):
        plan = tmp_path / E.plan_filename(k, "fp32")
        plan.write_bytes(f"plan {k}".encode())
        plans.append(plan)
        onnx_of_plan[plan.read_bytes()] = path
        prof_of[path] = prof
    fake = _FakeTRT(onnx_of_plan, prof_of)

    class _Stream:
        cuda_stream = 0

        def __init__(self, device=None):
            pass

        def synchronize(self):
            pass

    monkeypatch.setattr(B, "_require_cuda", lambda device: (torch, torch.device("cpu")))
    monkeypatch.setattr(B, "import_tensorrt", lambda prefer=None: (fake, "fake"))
    monkeypatch.setattr(B, "tensorrt_logger", lambda trt: None)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

    etas = [0.6, 0.8]
    backend = B.TensorRTSegmentsBackend(plans, etas, link="torch")
    assert backend.max_batch == MAX_BATCH and backend.max_seq == MAX_SEQ and backend.link.name == "torch"
    rng = np.random.default_rng(3)
    b, s = 11, 20  # more rows than the profile's max batch: two chunks
    ids = rng.integers(1, VOCAB, (b, s)).astype(np.int64)
    mask = np.ones((b, s), np.int64)
    for row in range(b):
        mask[row, rng.integers(2, s + 1):] = 0
    out = backend.run(ids, mask)
    assert out.logits.shape == (b, LABELS) and out.logits.dtype == np.float32 and len(out.kept) == 2
    for lo, hi in ((0, MAX_BATCH), (MAX_BATCH, b)):
        ref_logits, ref_kept = _reference_chain(tiny_model["modules"], ids[lo:hi].astype(np.int32),
                                                mask[lo:hi].astype(np.int32), etas)
        np.testing.assert_allclose(out.logits[lo:hi], ref_logits, atol=1e-4)
        for k in range(2):
            width = ref_kept[k].shape[1]
            np.testing.assert_array_equal(out.kept[k][lo:hi, :width], ref_kept[k])
            assert np.all(out.kept[k][lo:hi, width:] == -1)
    assert any(k.shape[1] < s for k in out.kept), "the links should have dropped tokens"
    with pytest.raises(ValueError, match="max"):
        backend.run(np.ones((1, MAX_SEQ + 1), np.int32), np.ones((1, MAX_SEQ + 1), np.int32))
    # a plan set that breaks the segment contract is refused
    with pytest.raises(E.EngineBuildError, match="contract"):
        B.TensorRTSegmentsBackend([plans[0], plans[2], plans[1]], etas, link="torch")


class _FakeSingleEngine:
    """Stands in for the single engine: runs the tiny model's reference chain on the inputs and hands the
    results out through the backend's IOutputAllocator, as TensorRT does for data-dependent shapes."""

    num_optimization_profiles = 1
    names = [("input_ids", "INPUT", "INT32"), ("attention_mask", "INPUT", "INT32"), ("logits", "OUTPUT", "FLOAT"),
             ("kept_1", "OUTPUT", "INT32"), ("kept_0", "OUTPUT", "INT32")]

    def __init__(self, modules, etas):
        self.modules, self.etas, self.num_io_tensors = modules, etas, len(self.names)
        self.profile = {"input_ids": [(1, 1), (4, 16), (MAX_BATCH, MAX_SEQ)],
                        "attention_mask": [(1, 1), (4, 16), (MAX_BATCH, MAX_SEQ)]}

    def get_tensor_name(self, i):
        return self.names[i][0]

    def get_tensor_mode(self, name):
        return next(m for n, m, _ in self.names if n == name)

    def get_tensor_dtype(self, name):
        return _FakeTRT._DT(next(d for n, _, d in self.names if n == name))

    def get_tensor_profile_shape(self, name, index):
        return self.profile[name]

    def create_execution_context(self):
        engine = self

        class Ctx(_FakeContext):
            allocators = {}

            def set_output_allocator(self, name, alloc):
                self.allocators[name] = alloc
                return True

            def get_tensor_shape(self, name):
                return self.shapes.get(name, (-1, -1))

            def execute_async_v3(self, stream):
                import ctypes

                ids, mask = (self._array(n, self.shapes[n]).copy() for n in ("input_ids", "attention_mask"))
                logits, kept = _reference_chain(engine.modules, ids, mask, engine.etas)
                for name, arr in [("logits", logits.astype(np.float32))] + [(f"kept_{k}", a) for k, a in
                                                                            enumerate(kept)]:
                    alloc = self.allocators[name]
                    ptr = alloc.reallocate_output_async(name, 0, arr.nbytes, 256, stream)
                    ctypes.memmove(ptr, np.ascontiguousarray(arr).ctypes.data, arr.nbytes)
                    alloc.notify_shape(name, arr.shape)
                return True

        return Ctx(self)


@needs_trt
def test_single_backend_reads_data_dependent_outputs(tiny_model, tmp_path, monkeypatch):
    import contextlib

    from adapler_export.backends import tensorrt as B

    etas = [0.6, 0.8]
    fake_engine = _FakeSingleEngine(tiny_model["modules"], etas)

    class _Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return fake_engine

    class _TRT:  # the real IOutputAllocator base class (constructible without a GPU), the rest faked
        IOutputAllocator = TRT.IOutputAllocator
        TensorIOMode = _FakeTRT.TensorIOMode
        Runtime = _Runtime
        __version__ = "fake"

    class _Stream:
        cuda_stream = 0

        def __init__(self, device=None):
            pass

        def synchronize(self):
            pass

    plan = tmp_path / "single.fp32.plan"
    plan.write_bytes(b"plan")
    monkeypatch.setattr(B, "_require_cuda", lambda device: (torch, torch.device("cpu")))
    monkeypatch.setattr(B, "import_tensorrt", lambda prefer=None: (_TRT, "fake"))
    monkeypatch.setattr(B, "tensorrt_logger", lambda trt: None)
    monkeypatch.setattr(B, "load_plugin_library", lambda path, trt=None: path)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

    backend = B.TensorRTSingleBackend(plan, tmp_path / "libadapler_plugins.so")
    assert backend.kept_outputs == ["kept_0", "kept_1"]  # natural order, not engine order
    rng = np.random.default_rng(4)
    ids = rng.integers(1, VOCAB, (5, 12)).astype(np.int32)
    mask = np.ones((5, 12), np.int32)
    mask[2, 4:] = 0
    ref_logits, ref_kept = _reference_chain(tiny_model["modules"], ids, mask, etas)
    for _ in range(2):  # the second call reuses the allocator's buffers
        out = backend.run(ids, mask)
        np.testing.assert_allclose(out.logits, ref_logits, atol=1e-6)
        assert [k.shape for k in out.kept] == [k.shape for k in ref_kept]
        for got, want in zip(out.kept, ref_kept):
            np.testing.assert_array_equal(got, want)
