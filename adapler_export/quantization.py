"""INT8 for ONNX Runtime on the CPU: dynamic quantization of the weight MatMuls, with settings chosen from
the CPU's flags. What `adapler-export build --int8` and `adapler-export quantize` write (measured against the
static QDQ scheme in docs/results/int8-schemes.json).

Dynamic quantization needs no calibration data (each activation gets its scale from its own min/max at run
time), so it lives in the library: `build` writes an int8 artifact in one step without `calibration/`.

Measured on README command 1's SST-2 model (872 dev sentences, 1 thread, AMD EPYC with VNNI): 1.95x / 2.25x faster
than the fp32 one graph at batch 1 / 32, where static QDQ gave 1.48x / 1.69x; label agreement with the fp32
reference 98.05 %, keep decisions flipped 1.01 %, dev accuracy 82.80 % (fp32 82.68 %).

**What is quantized:** every MatMul whose B input is a constant weight (Q, K, V, the attention output, the
FFN up and down projections): weights int8 (symmetric, zero point 0, a scale per output channel: one per
tensor was as fast but agreed on only 95.18 % of labels), activations uint8 quantized per call
(`DynamicQuantizeLinear` -> `MatMulInteger`, standard ONNX ops that ONNX Runtime fuses into its integer
kernels). **Kept fp32:** the CP scoring path (every node that feeds a `scores` tensor and nothing else: the
keep decisions compare s~ with eta/n, so the CPs stay exact), the activation x activation attention MatMuls
(Q.K^T, P.V), Gemm heads, LayerNorm, Softmax, GELU, residual adds and the embeddings.

**Settings from the CPU** (`choose_int8_settings`): ONNX Runtime's x86 u8s8 kernels without VNNI multiply
pairs with `vpmaddubsw`, whose int16 sum saturates when both 8-bit operands are large; ONNX Runtime's own
documentation and trackers report the accuracy loss (wrong labels included) and the remedy, `reduce_range`
(7-bit weights), which halves the largest product. With VNNI (`avx512_vnni`, `avx_vnni`: 32-bit
accumulation in one instruction) nothing saturates and full-range weights are more exact. So:
x86 with VNNI -> reduce_range off; x86 without VNNI -> on; other machines (ARM's dot-product kernels do
not saturate) -> off. The choice, the flags it read and the CPU are recorded in the manifest's
`quantization.cpu`, and `verify` re-runs the int8 parity on whatever machine it runs on (`cpu_note` says
when that machine's choice would differ).
"""
from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .chain import SCORES
from .errors import AdaplerError

SCHEME = "dynamic"  # the manifest's quantization["scheme"] for what this module writes
CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo names of the x86 8-bit dot-product instructions
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")


@dataclass(frozen=True)
class Int8Settings:
    """How the weights are quantized and why (`choose_int8_settings`)."""
    per_channel: bool  # a scale per output column of each weight; False: one per weight tensor
    reduce_range: bool  # 7-bit weights (no int16 saturation in the non-VNNI x86 kernels)
    isa: str  # what decided reduce_range: "avx512_vnni" | "avx_vnni" | "x86 without VNNI" | the machine name
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_cpu_flags(path: Path = CPUINFO) -> frozenset:
    """The first CPU's flags in /proc/cpuinfo (empty where there is no such file, e.g. macOS)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / ARM
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model_name(path: Path = CPUINFO) -> str:
    try:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def choose_int8_settings(flags=None, machine: str | None = None, per_channel: bool = True) -> Int8Settings:
    """reduce_range from the CPU (this one unless `flags` / `machine` are given); see the module docstring.
    `per_channel` True by default: a weight scale per output column kept label agreement with the fp32 reference
    at 98.05 % on SST-2 dev where one scale per tensor gave 95.18 % (below the int8 bound), for a few percent of
    speed (docs/results/int8-schemes.json)."""
    flags = read_cpu_flags() if flags is None else frozenset(flags)
    machine = (machine or platform.machine()).lower()
    x86 = machine in X86_MACHINES or "avx2" in flags or "sse2" in flags
    vnni = [f for f in VNNI_FLAGS if f in flags]
    if x86 and vnni:
        return Int8Settings(per_channel, False, vnni[0], f"{vnni[0]}: 32-bit integer dot products, no saturation; "
                                                         "full-range int8 weights")
    if x86:
        return Int8Settings(per_channel, True, "x86 without VNNI",
                            "no avx512_vnni / avx_vnni: the u8s8 kernels sum pairs in int16 (vpmaddubsw), which "
                            "saturates; 7-bit weights (reduce_range) avoid it")
    return Int8Settings(per_channel, False, machine or "unknown", "not x86: no int16 pair-sum saturation")


def cpu_record(settings: Int8Settings, flags=None) -> dict:
    """The manifest's `quantization.cpu`: the machine, the flags that matter, and what they decided."""
    flags = read_cpu_flags() if flags is None else frozenset(flags)
    return {"model": cpu_model_name(), "machine": platform.machine(), "isa": settings.isa,
            "flags": sorted(f for f in flags if f in FLAGS_OF_INTEREST), "reduce_range": settings.reduce_range,
            "rule": "x86 with avx512_vnni or avx_vnni: reduce_range off; x86 without: on; other: off"}


def describe_cpu() -> str:
    """This CPU in one line: model, what decides the int8 settings, the flags of interest."""
    record = cpu_record(choose_int8_settings())
    return f"{record['model']}, {record['isa']}, flags {' '.join(record['flags']) or 'none of interest'}"


def cpu_note(record: dict | None, flags=None, machine: str | None = None) -> str | None:
    """A line for `verify` / the backends when the int8 settings recorded for the artifact are not the ones this
    machine would choose (None when they are, or the artifact records none)."""
    if not record or "cpu" not in record:
        return None
    here = choose_int8_settings(flags, machine)
    recorded = record["cpu"]
    if here.reduce_range == recorded.get("reduce_range"):
        return None
    return (f"int8 settings were chosen on {recorded.get('isa')} (reduce_range {recorded.get('reduce_range')}); "
            f"this CPU is {here.isa} and would use reduce_range {here.reduce_range}: check parity here "
            f"(adapler-export verify), or quantize again on this machine")


# ----- which nodes ------------------------------------------------------------------------------------------
def _is_scores(name: str) -> bool:
    return name == SCORES or name.endswith("/" + SCORES)


def cp_path_nodes(model) -> set:
    """Names of the nodes whose every path to the graph's outputs runs through a `scores` tensor (a segment's
    `scores` output, or `segmentK/scores` inside the one graph): the CP scoring path. Unnamed nodes get a name
    here, since the quantizer selects nodes by name."""
    for i, node in enumerate(n for n in model.graph.node if not n.name):
        node.name = f"_adapler_node_{i}"
    producers = {o: n for n in model.graph.node for o in n.output}

    def ancestors(names, stop_at_scores: bool) -> set:
        seen, stack = set(), list(names)
        while stack:
            tensor = stack.pop()
            if stop_at_scores and _is_scores(tensor):
                continue
            node = producers.get(tensor)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(i for i in node.input if i)
        return seen

    scores = [t for t in producers if _is_scores(t)]
    main = ancestors([o.name for o in model.graph.output], stop_at_scores=True)
    return ancestors(scores, stop_at_scores=False) - main


def weight_matmuls(model) -> list:
    """Names of the MatMul nodes whose B input is a constant (initializer or Constant node): the weights."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in constants]


@contextlib.contextmanager
def quiet_preprocess_hint():
    """The quantizers log "consider pre-processing" on the root logger for every graph. Pre-processing
    (`quant_pre_process`) is skipped on purpose: its graph optimizations fuse into com.microsoft contrib ops
    (which TensorRT and other runtimes cannot parse), and the exported graphs are already clean."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


# ----- quantize ---------------------------------------------------------------------------------------------
def is_ffn_down(model, node_name: str) -> bool:
    """A weight MatMul whose weight is [I, H] with I > H: the FFN down projection (its input is the GELU output)."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    shape = shapes.get(node.input[1])
    return shape is not None and len(shape) == 2 and shape[0] > shape[1]


def quantize_dynamic_int8(src, dst, settings: Int8Settings | None = None, keep_cp_fp32: bool = True,
                          keep_ffn_down_fp32: bool = False) -> dict:
    """Dynamic INT8 of one ONNX graph (a segment, the one graph `model.onnx`, or any model such as the full
    static backbone): the weight MatMuls as the module docstring says, the CP scoring path kept fp32 unless
    `keep_cp_fp32` is False. Writes `dst` (a graph with nothing to quantize is copied unchanged) and returns
    what was done: {"quantized_nodes", "excluded": {node: why}, "status"}."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = settings or choose_int8_settings()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise AdaplerError(f"no ONNX graph at {src}")
    model = onnx.load(str(src))
    cp_path = cp_path_nodes(model)  # also names unnamed nodes
    weights = weight_matmuls(model)
    excluded = {n: "CP scoring path (keep decisions stay fp32)" for n in weights if n in cp_path and keep_cp_fp32}
    if keep_ffn_down_fp32:
        excluded.update({n: "FFN down projection (heavy-tailed GELU input)" for n in weights
                         if n not in excluded and is_ffn_down(model, n)})
    quantize = [n for n in weights if n not in excluded]
    info = {"graph": src.name, "quantized_nodes": quantize, "excluded": excluded}
    if not quantize:
        shutil.copyfile(src, dst)
        return {**info, "status": "unchanged: no weight MatMul outside the CP path"}
    with tempfile.TemporaryDirectory(prefix="adapler-int8-") as tmp, quiet_preprocess_hint():
        named = Path(tmp) / src.name
        onnx.save(model, str(named))
        del model
        quantize_dynamic(str(named), str(dst), op_types_to_quantize=["MatMul"], nodes_to_quantize=quantize,
                         per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    return {**info, "status": "quantized"}


def quantize_segments(src_dir, dst_dir, specs, settings: Int8Settings, keep_cp_fp32: bool = True) -> list:
    """`quantize_dynamic_int8` for every segment graph of `specs` (`src_dir` -> `dst_dir`, which may be the same
    folder); returns the per-segment records."""
    records = []
    for spec in specs:
        src, dst = Path(src_dir) / spec.file_name, Path(dst_dir) / spec.file_name
        with tempfile.TemporaryDirectory(prefix="adapler-int8-") as tmp:
            out = Path(tmp) / spec.file_name  # src may be dst: write beside, then move
            info = quantize_dynamic_int8(src, out, settings, keep_cp_fp32)
            shutil.move(str(out), str(dst))
        records.append({"segment": spec.file_name, **{k: v for k, v in info.items() if k != "graph"}})
    return records


def quantization_record(settings: Int8Settings, segments: list, keep_cp_fp32: bool = True) -> dict:
    """The manifest's `quantization` for a dynamic int8 artifact (artifact.py checks its keys)."""
    import onnxruntime

    return {"scheme": SCHEME, "tool": "onnxruntime.quantization.quantize_dynamic",
            "onnxruntime": onnxruntime.__version__, "op_types": ["MatMul"],
            "weights": "int8 symmetric, " + ("per-channel" if settings.per_channel else "per-tensor")
                       + (", 7-bit range (reduce_range)" if settings.reduce_range else ""),
            "activations": "uint8 asymmetric, scale and zero point from each tensor at run time "
                           "(DynamicQuantizeLinear)",
            "per_channel": settings.per_channel, "reduce_range": settings.reduce_range,
            "cp_path": "fp32" if keep_cp_fp32 else "int8", "cpu": cpu_record(settings), "reason": settings.reason,
            "segments": segments, "accuracy": None, "speed": None}


__all__ = ["Int8Settings", "SCHEME", "choose_int8_settings", "cp_path_nodes", "cpu_note", "cpu_record", "describe_cpu",
           "quantization_record", "quantize_dynamic_int8", "quantize_segments", "read_cpu_flags", "weight_matmuls"]
