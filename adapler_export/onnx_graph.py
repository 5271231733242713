"""The whole adaptive model as ONE graph of standard ONNX ops (opset 17, no custom op): `onnx/model.onnx`.

`single.onnx` joins the segments with `adapler::TokenCompact` nodes, which only full TensorRT with our plugin
can run. Here the link itself is written in standard ops, so any ONNX runtime (ONNX Runtime on CPU or CUDA,
OpenVINO, DirectML, Triton's stock `onnxruntime` backend) and TensorRT-RTX (no plugins) run the adaptive
model as one file:

    input_ids, attention_mask  [batch, seq] int32   (and token_type_ids, for a sentence-pair model: segment 0's inputs)
      -> segment 0 -> link 0 -> segment 1 -> ... -> link L-1 -> segment L
    logits [batch, C] fp32;  kept_positions_k [batch, kept_len_k] int32 per link (-1 padding)

The link (the rule of docs/INTERFACES.md and `link.py`), per row b of [B, S]:

    live    = mask == 1                                       padding is never live
    n       = ReduceSum(live)                                 [CLS] counted
    delta   = fp32 eta / fp32 n                               Div: IEEE fp32, as the reference
    keep    = live AND (score >= delta OR slot == 0)          ties kept; [CLS] kept when live
    count   = ReduceSum(keep);  S' = max(1, ReduceMax(count))
    key     = slot - S * keep                                 kept: [-S, -1], dropped: [0, S-1]; unique per slot
    order   = TopK(key, K = S', smallest first)               kept slots first, each group in slot order
    live'   = TopK's keys < 0                                 which output slots hold kept tokens
    hidden' = GatherND(hidden, order, batch_dims=1) * live'   padding slots zero
    mask'   = live';  positions' = Where(live', GatherElements(positions, order), -1)

Why these ops (measured on the 2-core CPU machine, ONNX Runtime 1.31; ../shared/DESIGN.md §9):
- ONNX Runtime's CPU `Where` has no bool kernel, so the flags combine with And/Or.
- The key is unique per slot and exact in fp32 (S < 2**23): the order is the stable one whatever a runtime's
  TopK does with ties, and the sorted keys give the output mask without another Range/Less over S'.
- The hidden padding is zeroed by a multiply, not `Where`: ONNX Runtime's `Where` broadcast over H took
  5.4 ms at [32, 470, 384] against 1.2 ms for `Mul` (values equal the reference's; a padding zero is -0.0
  where the token gathered into that slot was negative).
- Everything about the mask that the next link needs (live flags, n, slot index, S, the [CLS] slot) comes out
  of this one in a node or none (`LinkState`), instead of being derived from the int32 mask again; the next
  segment's attention bias and CP weights too (one Where each on those flags instead of the segment's own
  derivation from an int32 mask, which is then not built at all: "what a segment derives from its mask").
- The comparison with delta stays fp32 in fp16 graphs (the scores are fp32 outputs of every segment);
  only the hidden path carries the segments' dtype.
- Cost (ONNX Runtime, 2 threads, H = 384): about the NumPy host link's, without its session calls — tens
  of microseconds at [1, 25]; a few ms at [32, 512], nearly all of it the gather and the zeroing multiply
  (memory traffic: 1.5 + 1.2 ms on a quiet machine), noise next to the layers at that size.

The thresholds are constants of the graph (fp32 initializers) and recorded in the model's metadata
(`adapler.eta`), so a runtime can check them against the artifact's manifest.

torch is not imported here except to make the random token ids of the check after writing
(`segments.example_token_ids`); the backend (`backends/onnxruntime_graph.py`) needs only onnxruntime.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .chain import SCORES, hidden_output
from .errors import AdaplerError
from .link import check_eta, token_compact_numpy
from .storage import atomic_file
from .specs import ETA_METADATA, LOGITS, MODEL_INPUTS, OPSET, TOKEN_TYPE_IDS, kept_output, model_output_names
from .tolerances import Tolerances

ONE_GRAPH = "model.onnx"  # beside the segments in the artifact's onnx/ folder
INPUTS = MODEL_INPUTS  # a single-text model's; a sentence-pair model's graph takes segment 0's inputs, token types too
FORM_METADATA = "adapler.form"
FORM = "one-graph"
# ONNX Runtime 1.31 loads models of IR version <= 13 (onnx >= 1.23 writes 14 by default).
MAX_IR_VERSION = 13
PROTOBUF_LIMIT = 2**31  # bytes: onnx.save cannot write one file beyond it
LINK_INPUTS = ("hidden", "scores", "mask", "positions")
LINK_OUTPUTS = ("hidden_out", "mask_out", "positions_out", "new_len")


output_names = model_output_names


# ----- building blocks ----------------------------------------------------------------------------------------
class _Graph:
    """Nodes and initializers being collected, with shared scalar constants made once."""

    def __init__(self):
        self.nodes, self.initializers, self._constants = [], [], {}

    def node(self, op: str, inputs: list, outputs, **attributes) -> str | list:
        """Append one node; returns its output name (or names, when `outputs` is a list)."""
        from onnx import helper

        names = [outputs] if isinstance(outputs, str) else list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), names, name=names[0], **attributes))
        return outputs

    def constant(self, value, dtype, shape=()) -> str:
        """A shared initializer holding `value` (a scalar, or 1-D with `shape=(n,)`)."""
        from onnx import numpy_helper

        array = np.array(value, dtype=dtype).reshape(shape)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = f"const_{array.dtype.name}_{'x'.join(map(str, array.shape)) or 'scalar'}_{len(self._constants)}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class LinkState(NamedTuple):
    """Names of the tensors a link reads besides hidden and scores: the mask and positions of the contract,
    and what the previous link already knows about them (a link computes each of these for the next one
    in one node or none, instead of deriving them from the mask again)."""
    mask: str  # [B, S] int32
    positions: str  # [B, S] int32, -1 on padding
    live: str  # [B, S] bool: mask == 1
    n: str  # [B, 1] fp32: live tokens per row
    index: str  # [S] fp32: 0, 1, ..., S-1
    seq: str  # [1] or scalar fp32: S
    first: str  # [S] bool: index == 0 (slot 0, where [CLS] is)


def state_from_mask(graph: _Graph, prefix: str, mask: str, positions: str | None = None) -> LinkState:
    """The state of a mask seen for the first time; `positions` None: the initial positions (slot index
    where live, -1 elsewhere), as `link.initial_positions`."""
    from onnx import TensorProto

    p, node = prefix, graph.node
    live = node("Equal", [mask, graph.constant(1, np.int32)], p + "live")
    n = node("ReduceSum", [node("Cast", [live], p + "live_f32", to=TensorProto.FLOAT),
                           graph.constant([1], np.int64, (1,))], p + "n", keepdims=1)
    seq = node("Gather", [node("Shape", [mask], p + "shape"), graph.constant(1, np.int64)], p + "seq", axis=0)
    seq_f = node("Cast", [seq], p + "seq_f32", to=TensorProto.FLOAT)
    index = node("Range", [graph.constant(0, np.float32), seq_f, graph.constant(1, np.float32)], p + "slot_index")
    if positions is None:
        index_i32 = node("Cast", [index], p + "slot_index_i32", to=TensorProto.INT32)
        positions = node("Where", [live, index_i32, graph.constant(-1, np.int32)], p + "initial_positions")
    first = node("Equal", [index, graph.constant(0, np.float32)], p + "is_first_slot")
    return LinkState(mask, positions, live, n, index, seq_f, first)


def link_nodes(graph: _Graph, prefix: str, hidden: str, scores: str, state: LinkState, eta, hidden_dtype,
               positions_out: str | None = None) -> tuple:
    """The link's nodes for threshold `eta`; returns (hidden_out, new_len, the state after the link: its
    `mask` and `positions` are the link's mask_out and positions_out). `new_len` is S' as [1] int64."""
    from onnx import TensorProto

    eta32 = np.float32(_checked_eta(eta))
    p, node = prefix, graph.node
    # Which slots stay (fp32 comparison, whatever the hidden dtype).
    delta = node("Div", [graph.constant(eta32, np.float32), state.n], p + "delta")
    above = node("GreaterOrEqual", [scores, delta], p + "at_or_above_delta")
    keep = node("And", [state.live, node("Or", [above, state.first], p + "above_or_first")], p + "keep")
    keep_f = node("Cast", [keep], p + "keep_f32", to=TensorProto.FLOAT)
    # How many: count per row (exact in fp32), S' = max(1, batch max).
    count = node("ReduceSum", [keep_f, graph.constant([1], np.int64, (1,))], p + "count", keepdims=1)
    new_len_f = node("Max", [node("ReduceMax", [count], p + "max_count", axes=[0], keepdims=0),
                             graph.constant([1], np.float32, (1,))], p + "new_len_f32")
    new_len = node("Cast", [new_len_f], p + "new_len", to=TensorProto.INT64)
    # Where from: kept slots first, each group in slot order. The key is unique per slot (kept: index - S
    # in [-S, -1], dropped: index in [0, S-1]), so no tie is left for TopK to break; the sorted keys say
    # which output slots hold kept tokens (negative) and which are padding.
    key = node("Sub", [state.index, node("Mul", [keep_f, state.seq], p + "keep_times_seq")], p + "order_key")
    top_key, order = node("TopK", [key, new_len], [p + "order_key_top", p + "order"], axis=1, largest=0, sorted=1)
    slot_live = node("Less", [top_key, graph.constant(0, np.float32)], p + "slot_live")
    # Gather, then pad: slots at or past the row's count are zero / mask 0 / position -1 (the hidden by a
    # multiply: see the module docstring).
    gathered = node("GatherND", [hidden, node("Unsqueeze", [order, graph.constant([2], np.int64, (1,))],
                                              p + "order_nd")], p + "gathered_hidden", batch_dims=1)
    slot_live_h = node("Unsqueeze", [node("Cast", [slot_live], p + "slot_live_h", to=_onnx_type(hidden_dtype)),
                                     graph.constant([2], np.int64, (1,))], p + "slot_live_h3")
    hidden_out = node("Mul", [gathered, slot_live_h], p + "hidden_out")
    gathered_positions = node("GatherElements", [state.positions, order], p + "gathered_positions", axis=1)
    positions = node("Where", [slot_live, gathered_positions, graph.constant(-1, np.int32)],
                     positions_out or p + "positions_out")
    mask = node("Cast", [slot_live], p + "mask_out", to=TensorProto.INT32)
    index = node("Slice", [state.index, graph.constant([0], np.int64, (1,)), new_len], p + "next_slot_index")
    first = node("Equal", [index, graph.constant(0, np.float32)], p + "next_is_first_slot")
    return hidden_out, new_len, LinkState(mask, positions, slot_live, count, index, new_len_f, first)


def _checked_eta(eta) -> float:
    try:
        return check_eta(eta)
    except ValueError as exc:
        raise AdaplerError(f"one graph: {exc}") from None


def _model(graph: _Graph, name: str, inputs: list, outputs: list, ir_version: int, metadata: dict | None = None):
    from onnx import helper

    model = helper.make_model(helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="adapler-export")
    model.ir_version = ir_version
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def link_model(eta, hidden_dtype="float32", hidden_size: int = 8):
    """The link alone as an ONNX model (inputs `LINK_INPUTS`, outputs `LINK_OUTPUTS`): what tests compare
    with `link.token_compact_numpy`, and the smallest thing to hand another runtime."""
    from onnx import TensorProto, helper

    graph = _Graph()
    hidden, scores, mask, positions = LINK_INPUTS
    hidden_out, new_len, after = link_nodes(graph, "link/", hidden, scores, state_from_mask(graph, "", mask, positions),
                                            eta, hidden_dtype)
    for name, out in zip(LINK_OUTPUTS, (hidden_out, after.mask, after.positions, new_len)):
        graph.node("Identity", [out], name)
    bs, bs_out = ["batch", "seq"], ["batch", "kept_len"]
    inputs = [helper.make_tensor_value_info("hidden", _onnx_type(hidden_dtype), bs + [hidden_size]),
              helper.make_tensor_value_info("scores", TensorProto.FLOAT, bs),
              helper.make_tensor_value_info("mask", TensorProto.INT32, bs),
              helper.make_tensor_value_info("positions", TensorProto.INT32, bs)]
    outputs = [helper.make_tensor_value_info("hidden_out", _onnx_type(hidden_dtype), bs_out + [hidden_size]),
               helper.make_tensor_value_info("mask_out", TensorProto.INT32, bs_out),
               helper.make_tensor_value_info("positions_out", TensorProto.INT32, bs_out),
               helper.make_tensor_value_info("new_len", TensorProto.INT64, [1])]
    return _model(graph, "adapler_link", inputs, outputs, 8)


# ----- what a segment derives from its mask ------------------------------------------------------------------
# Each encoder segment turns its int32 attention mask into an additive key bias [B,1,1,S] and the CP's weights
# ([B,S], [CLS] forced live) with a handful of small ops. Inside the one graph the mask comes from the link
# before, which already holds it as bool flags (`LinkState.live`, `.first`): the segment's derivation is
# replaced by one Where (or nothing) on those flags, and the int32 mask is not built at all. Each replaced
# tensor is first identified by *running* the segment's own derivation on probe masks (a padded row, a hole,
# a dead row, a row with slot 0 dead) and finding it equal, value for value and in dtype, to one of the two
# forms below; anything else is left exactly as exported. Exact: the same values reach the same consumers.
PER_KEY = "per-key"  # where(mask == 1, a, b) as [B,1,1,S]: the attention bias
PER_TOKEN_CLS = "per-token-cls"  # where(mask == 1 or slot 0, a, b) as [B,S]: the CP weights and their flags
# The first probe has slots of both kinds for both forms (a and b are read off it).
PROBE_MASKS = (np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], np.int32),
               np.array([[1]], np.int32), np.array([[1, 1, 0], [0, 0, 0]], np.int32))


def _mask_derivation(graph, mask: str) -> tuple:
    """(nodes computed from `mask` and constants alone, in graph order; the tensors among their outputs that
    other nodes read: the mask features; the constant-only nodes they need; every tensor name they read)."""
    constants = {i.name for i in graph.initializer}
    derived, cone, constant_nodes = {mask}, [], []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if all(i in constants for i in inputs):
            constants.update(node.output)
            constant_nodes.append(node)
        elif any(i in derived for i in inputs) and all(i in derived or i in constants for i in inputs):
            derived.update(node.output)
            cone.append(node)
    cone_ids = {id(n) for n in cone}
    read_outside = {i for n in graph.node if id(n) not in cone_ids for i in n.input}
    read_outside |= {o.name for o in graph.output}
    features = [o for n in cone for o in n.output if o in read_outside]
    read, used = {i for n in cone for i in n.input}, []  # only the constant nodes the derivation reads, transitively
    for node in reversed(constant_nodes):
        if any(o in read for o in node.output):
            used.append(node)
            read.update(node.input)
    return cone, features, used[::-1], read


def _run_derivation(initializers: list, mask: str, cone: list, features: list, constant_nodes: list, masks) \
        -> list | None:
    """The features computed by the segment's own nodes for each probe mask (None if ONNX Runtime cannot run it)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = helper.make_model(helper.make_graph(list(constant_nodes) + list(cone), "mask_derivation",
                                                [helper.make_tensor_value_info(mask, TensorProto.INT32, ["b", "s"])],
                                                [helper.make_empty_tensor_value_info(f) for f in features],
                                                initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        del model.graph.output[:]
        model.graph.output.extend(types[f] for f in features)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [session.run(features, {mask: m}) for m in masks]
    except Exception:  # noqa: BLE001 - a derivation this check cannot run is simply not replaced
        return None


def _condition(form: str, mask: np.ndarray) -> np.ndarray:
    if form == PER_KEY:
        return (mask == 1)[:, None, None, :]
    cond = mask == 1
    cond[:, 0] = True
    return cond


def _feature_form(values: list, masks) -> tuple | None:
    """(form, a, b, dtype) when the feature equals where(cond, a, b) of one of the two forms on every probe."""
    for form in (PER_KEY, PER_TOKEN_CLS):
        first = _condition(form, masks[0])
        if values[0].shape != first.shape:
            continue
        a, b = values[0][first].flat[0], values[0][~first].flat[0]
        if all(v.shape == _condition(form, m).shape and np.array_equal(v, np.where(_condition(form, m), a, b)
                                                                       .astype(v.dtype))
               for v, m in zip(values, masks)):
            return form, a, b, values[0].dtype
    return None


def classify_mask_features(graph, mask: str) -> tuple | None:
    """(nodes of the mask derivation, {feature tensor: (form, a, b, dtype)}) for a segment graph whose input `mask`
    is its int32 attention mask; None when some feature is not of a known form (leave the segment as exported)."""
    cone, features, constant_nodes, read = _mask_derivation(graph, mask)
    if not features:
        return None
    initializers = [t for t in graph.initializer if t.name in read]
    runs = _run_derivation(initializers, mask, cone, features, constant_nodes, PROBE_MASKS)
    if runs is None:
        return None
    forms = {}
    for i, feature in enumerate(features):
        form = _feature_form([r[i] for r in runs], PROBE_MASKS)
        if form is None:
            return None
        forms[feature] = form
    return cone, forms


def feature_from_state(graph: "_Graph", prefix: str, form: tuple, state: LinkState, made: dict) -> str:
    """The tensor `form` = (PER_KEY | PER_TOKEN_CLS, a, b, dtype) from the link state's flags (each made once per
    segment, kept in `made`)."""
    kind, a, b, dtype = form
    key = (kind, a.item(), b.item(), np.dtype(dtype).str)
    if key in made:
        return made[key]
    if kind == PER_KEY:
        cond = made.get(PER_KEY) or graph.node("Unsqueeze", [state.live, graph.constant([1, 2], np.int64, (2,))],
                                               prefix + "live_per_key")
    else:
        cond = made.get(PER_TOKEN_CLS) or graph.node("Or", [state.live, state.first], prefix + "live_or_first")
    made[kind] = cond
    if np.dtype(dtype) == np.bool_ and bool(a) and not bool(b):
        made[key] = cond
    else:
        made[key] = graph.node("Where", [cond, graph.constant(a, dtype), graph.constant(b, dtype)],
                               f"{prefix}{kind}_{len(made)}")
    return made[key]


def prune_unused(nodes: list, initializers: list, outputs: list) -> tuple:
    """Drop nodes none of whose outputs is read (repeatedly), then initializers nothing reads."""
    nodes = list(nodes)
    while True:
        read = {i for n in nodes for i in n.input} | set(outputs)
        kept = [n for n in nodes if any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    read = {i for n in nodes for i in n.input}
    return nodes, [t for t in initializers if t.name in read]


# ----- the whole model ---------------------------------------------------------------------------------------
def _load_segments(onnx_dir: Path, specs) -> list:
    import onnx

    models = []
    for spec in specs:
        path = Path(onnx_dir) / spec.file_name
        if not path.is_file():
            raise AdaplerError(f"one graph: no segment graph {path}")
        model = onnx.load(str(path))
        opsets = {o.domain or "": o.version for o in model.opset_import}
        if set(opsets) != {""} or opsets[""] != OPSET:
            raise AdaplerError(f"one graph: {spec.file_name} imports opsets {opsets}; the link subgraph is written "
                               f"for the default domain at opset {OPSET} only")
        models.append(model)
    return models


def compose_one_graph(segments: list, specs, etas, share_mask_features: bool = True):
    """One `onnx.ModelProto`: the segment graphs (loaded models, in order) joined by link subgraphs.
    `share_mask_features`: segments after a link read their attention bias and CP weights from the link's flags
    (see "what a segment derives from its mask"); False: every segment as exported (the graph before that
    change, for comparisons)."""
    from onnx import TensorProto, compose, helper

    if len(specs) != len(etas) + 1 or len(segments) != len(specs):
        raise AdaplerError(f"one graph: {len(specs)} segments need {len(specs) - 1} thresholds, got {len(etas)}")
    etas = [_checked_eta(e) for e in etas]
    graph = _Graph()
    feeds = {name: name for name in specs[0].inputs}  # segment input -> tensor of the whole graph
    state = state_from_mask(graph, "input/", INPUTS[1])
    kept = []
    for spec, segment in zip(specs, segments):
        prefix = f"segment{spec.index}/"
        seg = compose.add_prefix(segment, prefix).graph
        # Each segment input becomes an Identity of the tensor that feeds it (ONNX Runtime drops them), so
        # the segment's nodes, subgraphs included, stay exactly as exported.
        for name, source in feeds.items():
            graph.node("Identity", [source], prefix + name)
        mask_input = prefix + INPUTS[1]
        derivation = classify_mask_features(seg, mask_input) if share_mask_features and spec.index > 0 else None
        if derivation is not None:
            made, replace = {}, {}
            for feature, form in derivation[1].items():
                replace[feature] = feature_from_state(graph, f"{prefix}mask/", form, state, made)
            for node in seg.node:
                for i, name in enumerate(node.input):
                    if name in replace:
                        node.input[i] = replace[name]
        graph.nodes.extend(seg.node)
        graph.initializers.extend(seg.initializer)
        if spec is specs[-1]:
            graph.node("Identity", [prefix + next(iter(spec.outputs))], LOGITS)
            break
        k = spec.index
        hidden, _, state = link_nodes(graph, f"link{k}/", prefix + hidden_output(spec), prefix + SCORES, state,
                                      etas[k], spec.hidden_dtype, positions_out=kept_output(k))
        kept.append(helper.make_tensor_value_info(kept_output(k), TensorProto.INT32, ["batch", f"kept_len_{k}"]))
        feeds = dict(zip(specs[k + 1].inputs, (hidden, state.mask)))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "seq"]) for name in specs[0].inputs]
    num_labels = specs[-1].outputs[next(iter(specs[-1].outputs))][1][-1]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", num_labels])] + kept
    graph.nodes, graph.initializers = prune_unused(graph.nodes, graph.initializers, [o.name for o in outputs])
    ir_version = max(s.ir_version for s in segments)
    if ir_version > MAX_IR_VERSION:
        raise AdaplerError(f"one graph: the segments have IR version {ir_version}; ONNX Runtime 1.31 loads at most "
                           f"{MAX_IR_VERSION}")
    metadata = {FORM_METADATA: FORM, ETA_METADATA: json.dumps([float(np.float32(e)) for e in etas])}
    return _model(graph, "adapler_one_graph", inputs, outputs, ir_version, metadata)


def graph_etas(model) -> list:
    """The thresholds a one graph was built with (its `adapler.eta` metadata)."""
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(FORM_METADATA) != FORM or ETA_METADATA not in props:
        raise AdaplerError("not an adapler one graph (no adapler.form / adapler.eta metadata)")
    return [float(e) for e in json.loads(props[ETA_METADATA])]


def validate_one_graph(path: Path, specs) -> None:
    """onnx.checker (full check), strict shape inference, and the I/O contract: inputs `input_ids` and
    `attention_mask` (and `token_type_ids` where segment 0 takes them) int32 [batch, seq]; outputs `logits`
    fp32 [batch, C] and one int32 rank-2 `kept_positions_k` per link."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    want = {name: ("int32", 2) for name in specs[0].inputs}
    want[LOGITS] = ("float32", 2)
    want.update({kept_output(k): ("int32", 2) for k in range(len(specs) - 1)})
    io = {v.name: v.type.tensor_type for v in list(inferred.graph.input) + list(inferred.graph.output)}
    for name, (dtype, rank) in want.items():
        if name not in io:
            raise AdaplerError(f"{path.name}: missing graph input/output {name!r}")
        elem = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(io[name].elem_type))
        if elem != np.dtype(dtype) or len(io[name].shape.dim) != rank:
            raise AdaplerError(f"{path.name}: {name} is {elem} of rank {len(io[name].shape.dim)}, expected {dtype} "
                               f"of rank {rank}")
    extra = sorted(set(io) - set(want))
    if extra:
        raise AdaplerError(f"{path.name}: unexpected graph input/output {extra[0]!r}")


def example_batch(vocab: int, seq: int = 11, seed: int = 0, type_vocab: int | None = None) -> tuple:
    """A check batch: a full row, a padded row, a row with a hole, a fully padded row. `type_vocab`: also the
    token types of sentence pairs (`segments.example_token_types`), for a graph that takes them."""
    from .segments import example_token_ids, example_token_types

    ids = example_token_ids(np.random.default_rng(seed), vocab, (4, seq))
    mask = np.ones((4, seq), np.int32)
    mask[1, seq // 2:] = 0
    mask[2, 3] = 0
    mask[3] = 0
    return (ids, mask) if type_vocab is None else (ids, mask, example_token_types(type_vocab, ids.shape))


def _table_rows(segment0, name: str) -> int:
    """Rows of the embedding table that input `name` indexes (segment 0's Gather on an initializer)."""
    tables = {t.name: t.dims for t in segment0.graph.initializer}
    for node in segment0.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name and node.input[0] in tables:
            return int(tables[node.input[0]][0])
    raise AdaplerError(f"one graph: cannot find the embedding table that {name} index in segment 0")


def check_against_chain(path: Path, onnx_dir: Path, specs, etas, feeds: tuple, precision: str) -> dict:
    """Run the one graph and the segment chain (`OnnxRuntimeBackend`: same segments, host reference link) on
    `feeds` = (input_ids, attention_mask[, token_type_ids]); kept positions must be identical and the logits
    within the precision's export tolerance. Returns the differences."""
    from .backends.onnxruntime import OnnxRuntimeBackend
    from .backends.onnxruntime_graph import OneGraphBackend

    with OneGraphBackend(path, len(etas), device="cpu", threads=1) as graph, \
            OnnxRuntimeBackend([Path(onnx_dir) / s.file_name for s in specs], specs, etas, "cpu", 1) as chain:
        chain.link = token_compact_numpy  # the reference link itself
        got, want = graph.run(*feeds), chain.run(*feeds)
    for k, (a, b) in enumerate(zip(got.kept, want.kept)):
        if a.shape != b.shape or not np.array_equal(a, b):
            raise AdaplerError(f"{path.name}: link {k} keeps other tokens than the segment chain "
                               f"({a.tolist()} vs {b.tolist()})")
    err = float(np.abs(got.logits - want.logits).max())
    tol = Tolerances.for_precision(precision).export_relative
    if not np.isfinite(err) or err > tol * max(1.0, float(np.abs(want.logits).max())):
        raise AdaplerError(f"{path.name}: logits differ from the segment chain by {err:.3g}")
    return {"max_abs_logit_diff": err, "kept_identical": True}


def build_one_graph(onnx_dir: Path, specs, etas, out_path: Path | None = None, check_inputs: tuple | None = None,
                    precision: str | None = None, share_mask_features: bool = True) -> Path:
    """Write `model.onnx` (default `onnx_dir/model.onnx`): the segment graphs `onnx_dir/segment_XX.onnx`
    (named by `specs`) joined by link subgraphs at thresholds `etas` (one per link, each in [0, 1]).

    Validated before it is moved into place: checker + strict shape inference + I/O contract, then ONNX
    Runtime against the segment chain on `check_inputs` ((input_ids, attention_mask[, token_type_ids]); default
    `example_batch`, which has a padded row, a hole and a fully padded row), within `precision`'s export
    tolerance (default: the segments' hidden dtype, fp16 or fp32; int8 segments are fp32 graphs: pass "int8").
    `share_mask_features`: see `compose_one_graph` (False only to compare with the graph as it was before).
    Written atomically.
    """
    import onnx

    onnx_dir = Path(onnx_dir)
    out_path = Path(out_path) if out_path is not None else onnx_dir / ONE_GRAPH
    etas = [_checked_eta(e) for e in etas]
    segments = _load_segments(onnx_dir, specs)
    model = compose_one_graph(segments, specs, etas, share_mask_features)
    type_vocab = _table_rows(segments[0], TOKEN_TYPE_IDS) if TOKEN_TYPE_IDS in specs[0].inputs else None
    feeds = check_inputs or example_batch(_table_rows(segments[0], INPUTS[0]), type_vocab=type_vocab)
    del segments
    precision = precision or ("fp16" if specs[0].hidden_dtype == "float16" else "fp32")
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise AdaplerError(f"one graph: {model.ByteSize() / 2**30:.1f} GiB is over ONNX's 2 GiB single-file limit; "
                           f"use the segments (each is its own file)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_path) as tmp:
        onnx.save(model, str(tmp))
        del model
        validate_one_graph(tmp, specs)
        check_against_chain(tmp, onnx_dir, specs, etas, feeds, precision)
    return out_path
