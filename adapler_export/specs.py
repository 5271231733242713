"""What each segment graph takes and gives: the I/O contract of docs/INTERFACES.md as data.

Light on purpose (no torch, no onnx): the artifact manifest, the backends and the Triton model read it.
Like Optimum's export configs, a `SegmentSpec` names inputs and outputs with dtypes and symbolic dims;
exports, validation, engines' profiles and runtimes all take names from here, never from literals.
"""
from __future__ import annotations

from dataclasses import dataclass

OPSET = 17
PRECISIONS = ("fp32", "fp16")

# The whole-model forms (single.onnx with custom link nodes, model.onnx in standard ops) share their I/O, which is
# segment 0's: ids and mask, and for a sentence-pair model the token types (0 first text, 1 second) as well.
TOKEN_TYPE_IDS = "token_type_ids"
MODEL_INPUTS = ("input_ids", "attention_mask")
PAIR_MODEL_INPUTS = MODEL_INPUTS + (TOKEN_TYPE_IDS,)
LOGITS = "logits"
ETA_METADATA = "adapler.eta"  # model metadata: the thresholds a whole-model graph was built with


def model_inputs(text_pair: bool) -> tuple:
    """The inputs of segment 0 and of the whole-model graphs of a single-text or a sentence-pair model."""
    return PAIR_MODEL_INPUTS if text_pair else MODEL_INPUTS


def kept_output(k: int) -> str:
    """The whole-model graph output holding link k's kept positions."""
    return f"kept_positions_{k}"


def model_output_names(num_links: int) -> list:
    return [LOGITS] + [kept_output(k) for k in range(num_links)]


@dataclass
class SegmentSpec:
    """What one segment graph takes and gives (names, dtypes, shapes with symbolic dims)."""
    index: int
    inputs: dict  # name -> (numpy dtype name, shape with "batch"/"seq"/ints)
    outputs: dict
    description: str = ""

    @property
    def file_name(self) -> str:
        return f"segment_{self.index:02d}.onnx"

    def dynamic_axes(self) -> dict:
        axes = {}
        for name, (_, shape) in {**self.inputs, **self.outputs}.items():
            axes[name] = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        return axes

    def to_dict(self) -> dict:
        return {"index": self.index, "file": self.file_name, "description": self.description,
                "inputs": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.inputs.items()},
                "outputs": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.outputs.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "SegmentSpec":
        """The inverse of `to_dict` (what artifact manifests store)."""
        def io(section):
            return {k: (v["dtype"], list(v["shape"])) for k, v in data[section].items()}

        spec = cls(int(data["index"]), io("inputs"), io("outputs"), str(data.get("description", "")))
        if data.get("file", spec.file_name) != spec.file_name:
            raise ValueError(f"segment {spec.index} is stored as {data['file']!r}, expected {spec.file_name!r}")
        return spec

    @property
    def hidden_dtype(self) -> str:
        """The floating dtype the segment's hidden states use (its precision)."""
        hidden = {**self.inputs, **self.outputs}.get("hidden") or self.outputs.get("hidden_out")
        return hidden[0] if hidden else "float32"


def segment_specs(num_layers: int, hidden: int, num_labels: int, precision: str, text_pair: bool = False) -> list:
    """Segments 0..L; `text_pair`: segment 0 takes token_type_ids too (a sentence-pair model)."""
    ht = "float16" if precision == "fp16" else "float32"
    bs, bsh = ["batch", "seq"], ["batch", "seq", hidden]
    specs = [SegmentSpec(0, {name: ("int32", bs) for name in model_inputs(text_pair)},
                         {"hidden": (ht, bsh), "scores": ("float32", bs)}, "embeddings + CP_0")]
    for k in range(1, num_layers):
        specs.append(SegmentSpec(k, {"hidden": (ht, bsh), "attention_mask": ("int32", bs)},
                                 {"hidden_out": (ht, bsh), "scores": ("float32", bs)},
                                 f"encoder layer {k - 1} + CP_{k}"))
    specs.append(SegmentSpec(num_layers, {"hidden": (ht, bsh), "attention_mask": ("int32", bs)},
                             {"logits": ("float32", ["batch", num_labels])},
                             f"encoder layer {num_layers - 1} + classifier"))
    return specs
