"""Split an AdapLeR checkpoint into per-layer segments and export them to ONNX.

Segment k (docs/INTERFACES.md):  0 = embeddings + CP_0;  k = 1..L-1 = encoder layer k-1 + CP_k;
L = encoder layer L-1 + classifier. Link k (between segment k and k+1) applies eta_k. Each export is
described by a `SegmentSpec` (inputs, outputs, dynamic axes, like Optimum's export configs) and is
validated right after it is written: onnx.checker, shape inference, and ONNX Runtime against PyTorch.

fp16 segments keep the CP and its softmax in fp32 (the scores decide what is kept; fp16 there would
flip decisions), and every attention softmax in fp32; LayerNormalization computes in fp32 by default.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import AdaplerError
from .storage import atomic_file
from .specs import OPSET, PRECISIONS, TOKEN_TYPE_IDS, SegmentSpec, segment_specs  # noqa: F401  (re-exported)
from .tolerances import Tolerances
from .modeling_adapler import (AdapLeRForSequenceClassification, attention_bias_from_mask, cp_distribution_hard,
                               encoder_layer)



class _CPScores(nn.Module):
    """CP_k in fp32 whatever the segment's precision, producing s~ (fp32)."""

    def __init__(self, cp: nn.Module):
        super().__init__()
        self.cp = cp

    def forward(self, hidden, attention_mask):
        return cp_distribution_hard(self.cp(hidden.float()), attention_mask)


class EmbeddingSegment(nn.Module):
    """Segment 0; `token_type_ids` is an input of a sentence-pair model's segment (else all zeros)."""

    def __init__(self, model: AdapLeRForSequenceClassification):
        super().__init__()
        self.model, self.scores = model, _CPScores(model.cps[0])

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model.embed(input_ids, token_type_ids)
        dtype = next(self.model.layers.parameters()).dtype
        return hidden.to(dtype), self.scores(hidden, attention_mask)


class LayerSegment(nn.Module):
    def __init__(self, model: AdapLeRForSequenceClassification, index: int):
        super().__init__()
        self.layer, self.layout, self.scores = model.layers[index - 1], model.layout, _CPScores(model.cps[index])

    def forward(self, hidden, attention_mask):
        out = encoder_layer(self.layer, hidden, attention_bias_from_mask(attention_mask, hidden.dtype), self.layout)
        return out, self.scores(out, attention_mask)


class HeadSegment(nn.Module):
    def __init__(self, model: AdapLeRForSequenceClassification):
        super().__init__()
        self.model, self.layer = model, model.layers[model.num_layers - 1]

    def forward(self, hidden, attention_mask):
        out = encoder_layer(self.layer, hidden, attention_bias_from_mask(attention_mask, hidden.dtype),
                            self.model.layout)
        return self.model.head(out).float()


def segment_modules(model: AdapLeRForSequenceClassification) -> list:
    modules = [EmbeddingSegment(model)] + [LayerSegment(model, k) for k in range(1, model.num_layers)] + \
        [HeadSegment(model)]
    return [m.eval() for m in modules]


def precision_model(model: AdapLeRForSequenceClassification, precision: str) -> AdapLeRForSequenceClassification:
    """fp16: a copy whose backbone is half precision; the CPs stay fp32 (see module docstring)."""
    if precision not in PRECISIONS:
        raise AdaplerError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model.eval()
    import copy

    half = copy.deepcopy(model).eval()
    half.backbone.half()
    # The embeddings' LayerNorm output (ELECTRA: projected) feeds the fp32 CP_0 and is cast to fp16 for the
    # encoder, so the embedding block computes in fp32; its tables (most of a small model's bytes) are
    # *stored* in fp16.
    half.base.embeddings.float()
    if half.embedding_projection is not None:
        half.embedding_projection.float()
    for name, child in list(half.base.embeddings.named_children()):
        if isinstance(child, nn.Embedding):
            setattr(half.base.embeddings, name, Fp16StoredEmbedding(child))
    return half


class Fp16StoredEmbedding(nn.Module):
    """An embedding table stored in fp16 (half the bytes on disk) whose gathered rows are fp32: a Gather on
    an fp16 initializer followed by a Cast in the exported graph."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = nn.Parameter(embedding.weight.detach().half(), requires_grad=False)
        self.padding_idx = embedding.padding_idx
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, self.padding_idx).float()


def example_token_ids(rng, vocab: int, shape) -> np.ndarray:
    """Random token ids valid for any vocabulary size: ordinary wordpieces (id >= 1000 in BERT vocabularies,
    the upper half of a small one) and BERT's [CLS] id in slot 0 where the vocabulary has it."""
    low = min(1000, vocab // 2)
    ids = rng.integers(low, max(vocab, low + 1), size=shape).astype(np.int32)
    ids[:, 0] = min(101, vocab - 1)
    return ids


def example_token_types(type_vocab: int, shape) -> np.ndarray:
    """Token types of a sentence pair filling every row: 0 for the first half, 1 (where the model has a second
    type) for the rest."""
    types = np.zeros(shape, dtype=np.int32)
    types[:, shape[1] // 2:] = min(1, type_vocab - 1)
    return types


def example_inputs(spec: SegmentSpec, batch: int = 2, seq: int = 7, vocab: int = 1000, seed: int = 0,
                   type_vocab: int = 2):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in spec.inputs.items():
        dims = [batch if d == "batch" else seq if d == "seq" else d for d in shape]
        if name == "input_ids":
            value = example_token_ids(rng, vocab, dims).astype(dtype)
        elif name == TOKEN_TYPE_IDS:
            value = example_token_types(type_vocab, dims).astype(dtype)
        elif name == "attention_mask":
            value = np.ones(dims, dtype=dtype)
            value[-1, seq // 2:] = 0  # a padded row
        else:
            value = rng.standard_normal(dims).astype(dtype)
        feeds[name] = value
    return feeds


def _torch_export(module: nn.Module, feeds: dict, spec: SegmentSpec, path: Path) -> None:
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic_axes(), opset_version=OPSET, do_constant_folding=True,
                          dynamo=False)


def validate_onnx(path: Path, spec: SegmentSpec) -> onnx.ModelProto:
    """onnx.checker + shape inference + the I/O contract (names, dtypes, symbolic dims)."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    io = {v.name: v for v in list(inferred.graph.input) + list(inferred.graph.output)}
    for name, (dtype, shape) in {**spec.inputs, **spec.outputs}.items():
        if name not in io:
            raise AdaplerError(f"{path.name}: missing graph input/output {name!r}")
        elem = onnx.helper.tensor_dtype_to_np_dtype(io[name].type.tensor_type.elem_type)
        if np.dtype(elem) != np.dtype(dtype):
            raise AdaplerError(f"{path.name}: {name} has dtype {np.dtype(elem)}, expected {dtype}")
        dims = io[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise AdaplerError(f"{path.name}: {name} has rank {len(dims)}, expected {len(shape)}")
    return inferred


def export_module(module: nn.Module, feeds: dict, spec: SegmentSpec, path: Path, precision: str,
                  tolerance: float | None = None) -> None:
    """Export `module` to `path` with `spec`'s names and dynamic axes, then validate it: checker, strict
    shape inference, the I/O contract, and ONNX Runtime against PyTorch on `feeds` (max error relative to
    the largest reference value; default tolerance: `Tolerances.for_precision(precision).export_relative`)."""
    import onnxruntime as ort

    _torch_export(module, feeds, spec, path)
    validate_onnx(path, spec)
    module.eval()  # torch.onnx.export restores the wrapper's (default) train mode recursively
    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in feeds.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    try:
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:  # ONNX Runtime raises its own exception types (e.g. NOT_IMPLEMENTED)
        hint = " (this ONNX Runtime build lacks an fp16 kernel: build fp32, or use --backend tensorrt)" \
            if precision == "fp16" else ""
        raise AdaplerError(f"{path.name}: ONNX Runtime cannot run the {precision} graph: "
                           f"{str(exc).splitlines()[0]}{hint}") from exc
    tol = tolerance if tolerance is not None else Tolerances.for_precision(precision).export_relative
    for name, want, have in zip(spec.outputs, expected, got):
        want = want.float().numpy()
        err = float(np.abs(want - have.astype(np.float32)).max())
        if not np.isfinite(err) or err > tol * max(1.0, float(np.abs(want).max())):
            raise AdaplerError(f"{path.name}: ONNX Runtime output {name} differs from PyTorch by {err:.3g}")


def export_segments(model: AdapLeRForSequenceClassification, out_dir: Path, precision: str = "fp32",
                    progress=None) -> list:
    """Export every segment to `out_dir/segment_XX.onnx`, each validated by `export_module` on random
    inputs; returns the specs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    specs = segment_specs(model.num_layers, config.hidden_size, config.num_labels, precision, model.text_pair)
    pairs = list(zip(specs, segment_modules(precision_model(model, precision))))
    for spec, module in (progress(pairs, f"export {precision}") if progress else pairs):
        feeds = example_inputs(spec, vocab=config.vocab_size, type_vocab=getattr(config, "type_vocab_size", 1))
        export_module(module, feeds, spec, out_dir / spec.file_name, precision)
    return specs


# ----- the single graph: segments joined by adapler::TokenCompact nodes --------------------------------------
LINK_DOMAIN, LINK_OP, LINK_VERSION = "adapler", "TokenCompact", 1
# TensorRT's ONNX parser looks an unknown op up as a plugin creator by these node attributes (else the
# empty namespace and version "1"): they are written into the file, not added at engine-build time.
LINK_NODE_ATTRIBUTES = {"plugin_namespace": LINK_DOMAIN, "plugin_version": str(LINK_VERSION)}


def build_single_graph(segment_dir: Path, specs: list, etas: list, out_path: Path) -> None:
    """Join the segment graphs into one ONNX model whose links are custom-domain nodes.

    `adapler::TokenCompact(hidden, scores, mask, positions) -> (hidden_out, mask_out, positions_out, new_len)`
    with float attribute `eta` (see plugins/token_compact/README.md). Outputs: `logits` and, per link,
    `kept_positions_k` (the original positions each row kept). For TensorRT with the plugin library.
    """
    from onnx import TensorProto, compose, helper

    nodes, initializers, value_info = [], [], []
    graph_inputs = graph_outputs = None
    hidden_name = mask_name = None
    positions_name = "positions_init"
    # Initial positions: where(attention_mask == 1, range(seq), -1), computed in the graph.
    nodes += [
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one_i64"], ["seq_len"], axis=0),
        helper.make_node("Range", ["zero_i64", "seq_len", "one_i64"], ["range_i64"]),
        helper.make_node("Cast", ["range_i64"], ["range_i32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["range_i32", "zero_axes"], ["range_row"]),
        helper.make_node("Equal", ["attention_mask", "one_i32"], ["is_live"]),
        helper.make_node("Where", ["is_live", "range_row", "minus_one_i32"], [positions_name]),
    ]
    initializers += [
        helper.make_tensor("zero_i64", TensorProto.INT64, [], [0]),
        helper.make_tensor("one_i64", TensorProto.INT64, [], [1]),
        helper.make_tensor("zero_axes", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one_i32", TensorProto.INT32, [], [1]),
        helper.make_tensor("minus_one_i32", TensorProto.INT32, [], [-1]),
    ]
    kept_outputs = []
    for spec in specs:
        seg = onnx.load(str(segment_dir / spec.file_name))
        prefix = f"s{spec.index}_"
        seg = compose.add_prefix(seg, prefix)
        rename = {}
        if spec.index == 0:
            rename = {prefix + name: name for name in spec.inputs}  # the model's inputs are segment 0's
            graph_inputs = [i for i in onnx.load(str(segment_dir / spec.file_name)).graph.input]
        else:
            rename = {prefix + "hidden": hidden_name, prefix + "attention_mask": mask_name}
        for node in seg.graph.node:
            node.input[:] = [rename.get(n, n) for n in node.input]
            nodes.append(node)
        initializers += list(seg.graph.initializer)
        value_info += list(seg.graph.value_info)
        if spec.index == len(specs) - 1:
            graph_outputs = [helper.make_tensor_value_info(prefix + "logits", TensorProto.FLOAT, ["batch", None])]
            nodes.append(helper.make_node("Identity", [prefix + "logits"], ["logits"]))
            graph_outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])]
            break
        hidden_out = prefix + ("hidden" if spec.index == 0 else "hidden_out")
        k = spec.index
        link_outs = [f"link{k}_hidden", f"link{k}_mask", f"link{k}_positions", f"link{k}_new_len"]
        nodes.append(helper.make_node(LINK_OP, [hidden_out, prefix + "scores",
                                                "attention_mask" if k == 0 else mask_name, positions_name],
                                      link_outs, domain=LINK_DOMAIN, name=f"link_{k}", eta=float(etas[k]),
                                      **LINK_NODE_ATTRIBUTES))
        hidden_name, mask_name, positions_name = link_outs[0], link_outs[1], link_outs[2]
        nodes.append(helper.make_node("Identity", [positions_name], [f"kept_positions_{k}"]))
        kept_outputs.append(helper.make_tensor_value_info(f"kept_positions_{k}", TensorProto.INT32,
                                                          ["batch", f"kept_len_{k}"]))
    graph = helper.make_graph(nodes, "adapler_single", graph_inputs, graph_outputs + kept_outputs, initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(LINK_DOMAIN, LINK_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="adapler-export")
    model.ir_version = onnx.load(str(segment_dir / specs[0].file_name)).ir_version
    onnx.checker.check_model(model)  # custom-domain nodes are checked structurally
    with atomic_file(out_path) as tmp:
        onnx.save(model, str(tmp))
