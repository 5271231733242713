"""The one graph's segments read their attention bias and CP weights from the link's flags (onnx_graph: "what a
segment derives from its mask"): fewer nodes at batch 1, the same numbers as the segments as exported."""
from __future__ import annotations

import numpy as np
import pytest


def _run(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_shared_mask_features_change_no_number(tiny_artifact, tiny_checkpoint, tmp_path, precision):
    """Bit-identical logits and kept positions with and without the rewrite, on the check batch (a padded row, a
    hole, a dead row) and on random batches; the links no longer build an int32 mask, and every segment after a
    link reads the link's flags."""
    from adapler_export.artifact import open_artifact
    from adapler_export.onnx_graph import _load_segments, compose_one_graph, example_batch
    from adapler_export.quantization import choose_int8_settings, quantize_segments

    path, manifest = open_artifact(tiny_artifact)
    specs, onnx_dir = manifest.specs(), path / "onnx"
    if precision == "int8":
        onnx_dir = tmp_path / "onnx"
        onnx_dir.mkdir()
        quantize_segments(path / "onnx", onnx_dir, specs, choose_int8_settings())
    segments = _load_segments(onnx_dir, specs)
    exported = compose_one_graph(segments, specs, manifest.eta, share_mask_features=False)
    lean = compose_one_graph(_load_segments(onnx_dir, specs), specs, manifest.eta)
    assert len(lean.graph.node) < len(exported.graph.node)
    names = {n.name for n in lean.graph.node}
    assert not any(n.endswith("/mask_out") for n in names), "no int32 mask is built between segments"
    for k in range(1, len(specs)):
        assert f"segment{k}/mask/live_per_key" in names
    rng = np.random.default_rng(0)
    vocab = 40
    batches = [example_batch(vocab)]
    for batch, seq in ((1, 1), (1, 9), (3, 7), (5, 13)):
        ids = rng.integers(5, vocab, (batch, seq)).astype(np.int32)
        mask = (rng.random((batch, seq)) < 0.8).astype(np.int32)
        mask[:, 0] = 1
        batches.append((ids, mask))
    for ids, mask in batches:
        feeds = {"input_ids": ids, "attention_mask": mask}
        for a, b in zip(_run(exported, feeds), _run(lean, feeds)):
            np.testing.assert_array_equal(a, b)


def test_only_the_two_known_forms_are_replaced():
    """A feature is replaced only when it is where(mask == 1, a, b) per key or where(mask == 1 or slot 0, a, b) per
    token (the CP weights: slot 0 forced); one that depends on more than each slot's own value (here the live
    count), or that lets slot 0 follow the mask, keeps its segment as exported."""
    from onnx import TensorProto, helper, numpy_helper

    from adapler_export.onnx_graph import PER_TOKEN_CLS, classify_mask_features

    def graph(nodes):
        nodes = [helper.make_node("Cast", ["attention_mask"], ["m_f"], to=TensorProto.FLOAT)] + nodes
        nodes.append(helper.make_node("Add", ["x", "feature"], ["y"]))
        constants = {"one": np.array([1], np.int64), "big": np.array([1 << 30], np.int64),
                     "pads": np.array([0, 1, 0, 0], np.int64), "three": np.array(3.0, np.float32),
                     "one_f": np.array(1.0, np.float32)}
        return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("attention_mask", TensorProto.INT32,
                                                                            ["b", "s"]),
                                              helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s"])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s"])],
                                 [numpy_helper.from_array(v, k) for k, v in constants.items()])

    def slot0_forced(value):  # with_cls_live: the mask from slot 1 on, padded in front with `value`
        return [helper.make_node("Slice", ["m_f", "one", "big", "one"], ["tail"]),
                helper.make_node("Pad", ["tail", "pads", value], ["feature"])]

    found = classify_mask_features(graph(slot0_forced("one_f")), "attention_mask")
    assert found is not None and list(found[1]) == ["feature"]
    form, a, b, dtype = found[1]["feature"]
    assert (form, float(a), float(b), dtype) == (PER_TOKEN_CLS, 1.0, 0.0, np.float32)
    assert classify_mask_features(graph(slot0_forced("three")), "attention_mask") is None  # slot 0 3.0, live 1.0
    assert classify_mask_features(graph([helper.make_node("Mul", ["m_f", "three"], ["feature"])]),
                                  "attention_mask") is None  # slot 0 follows the mask
    counted = [helper.make_node("ReduceSum", ["m_f", "one"], ["n"], keepdims=1),
               helper.make_node("Mul", ["m_f", "n"], ["feature"])]
    assert classify_mask_features(graph(counted), "attention_mask") is None


def test_each_cp_distribution_is_one_softmax(tiny_artifact):
    """Every segment's CP distribution is a single Softmax of the masked logits (`cp_distribution_hard`), not the
    weighted form's ReduceMax / Sub / Exp / Mul / ReduceSum / Div."""
    from adapler_export.artifact import open_artifact
    from adapler_export.onnx_graph import _load_segments, compose_one_graph

    path, manifest = open_artifact(tiny_artifact)
    specs = manifest.specs()
    graph = compose_one_graph(_load_segments(path / "onnx", specs), specs, manifest.eta).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    cps = [k for k in range(len(specs)) if f"segment{k}/scores" in producers]
    assert cps and all(producers[f"segment{k}/scores"] == "Softmax" for k in cps)
    scoring = [n.op_type for n in graph.node if "/scores/" in n.output[0]]
    assert not {"Exp", "ReduceSum", "ReduceMax"} & set(scoring), scoring
