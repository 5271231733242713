"""Write a Triton model repository for a build artifact.

Layout written by :func:`write_model_repository` (atomically, through ``storage.atomic_directory``: a
temporary folder beside ``repo_dir``, renamed into place when complete; an existing repository is
replaced only with ``overwrite``, and nothing else is ever replaced)::

    <repo>/README.md                          how to start it (both servers), what each model does
    <repo>/.adapler-triton-repository         what was written from which artifact (JSON; marks the folder)
    <repo>/adapler_text/config.pbtxt          Python backend: TEXT -> LABEL, LABEL_ID, PROBABILITIES,
                                              TRUNCATED, EMPTY_INPUT, RATIONALE (serving/contract.py); a
                                              sentence-pair artifact's models take TEXT_PAIR too
    <repo>/adapler_text/1/model.py            (template: adapler_export/serving/model.py)
    <repo>/adapler_text/1/artifact/           copy of the build artifact (artifact_mode="copy"/"hardlink";
                                              with "reference" config.pbtxt holds its absolute path instead)
  with the one standard-ONNX graph (every artifact built since it exists; ``with_onnx_graph=None``, the
  default, writes these where the artifact has it, False leaves them out, True requires it):
    <repo>/adapler_onnx/config.pbtxt          backend "onnxruntime" (Triton's stock backend), dynamic dims (-1)
    <repo>/adapler_onnx/1/model.onnx          the artifact's onnx/model.onnx (copy / hard link / symbolic link
                                              by artifact_mode)
    <repo>/adapler_onnx_ensemble/config.pbtxt ensemble: adapler_tokenizer -> adapler_onnx
    <repo>/adapler_onnx_ensemble/1/           (empty version folder, required)
  with a single TensorRT engine in the artifact (``with_tensorrt_plan``: the same three choices):
    <repo>/adapler_plan/config.pbtxt          tensorrt_plan, dynamic dims (-1), I/O from the engine record
    <repo>/adapler_plan/1/model.plan          the artifact's single engine
    <repo>/adapler_ensemble/config.pbtxt      ensemble: adapler_tokenizer -> adapler_plan
    <repo>/adapler_ensemble/1/                (empty version folder, required)
    <repo>/plugins/libadapler_plugins.so      TokenCompact plugin (load with --backend-config=tensorrt,plugins=…)
  with either (one tokenizer model in front of both ensembles):
    <repo>/adapler_tokenizer/config.pbtxt     Python backend: TEXT -> input_ids, attention_mask (INT32), EMPTY_INPUT
                                              (pairs: TEXT, TEXT_PAIR -> ... and token_type_ids)
    <repo>/adapler_tokenizer/1/model.py       (template: adapler_export/serving/tokenizer_model.py, with
                                              tokenization.py and contract.py beside it)
    <repo>/adapler_tokenizer/1/tokenizer/

Why the one-graph models are written by default: the artifact contract now always holds the graph, and it
is the only form of the adaptive model that a stock Triton server runs with no code of this project on the
inference path (no Python backend for the model, no plugin); it costs one more file (a hard link with
``artifact_mode="hardlink"``, a symbolic link with ``"reference"``).

The artifact is read only through ``artifact.open_artifact`` (its files checked against their digests
first, so a missing segment fails here, not when a server loads the model). Every ``config.pbtxt`` is
generated from Triton's ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``) and parsed back
from the file before the repository is moved into place; ensembles are checked against the models and
tensors they name, and the types (and dims) those models declare.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import textwrap
from typing import Iterable, Sequence

from ..artifact import Manifest, open_artifact
from ..errors import AdaplerError
from ..storage import OUTPUT_MARKERS, atomic_directory
from ..engines import PLUGIN_LIBRARY as PLUGIN_LIB
from ..specs import model_output_names
from .tokenization import Cut
from .contract import (EMPTY_INPUT, ENSEMBLE_MODEL, ONNX_ENSEMBLE_MODEL, ONNX_MODEL, PLAN_MODEL, TEXT_MODEL,
                       TEXT_OUTPUTS, TEXT_PAIR_INPUT, TOKENIZER_MODEL, text_inputs, tokenizer_outputs)

_HERE = pathlib.Path(__file__).resolve().parent
REPOSITORY_MARKER = OUTPUT_MARKERS["repository"]
# Files the tokenizer model needs beside its model.py (it runs where adapler_export need not be installed).
TOKENIZER_MODEL_FILES = ("tokenization.py", "contract.py")
# numpy dtype names (engine records) -> Triton data types
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


class RepositoryError(AdaplerError, ValueError):
    """The artifact cannot be turned into a repository, or a written config does not validate."""


def _pb2():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:  # pragma: no cover - tritonclient[grpc] is a dependency of serving
        raise RepositoryError(
            "writing Triton configs needs `tritonclient[grpc]` (it ships Triton's model_config proto)"
        ) from e
    return model_config_pb2, text_format


# ---------------------------------------------------------------------------------------------------------
# The artifact's whole-model graphs: the single TensorRT engine, the one standard-ONNX graph
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TensorSpec:
    name: str
    data_type: str  # TYPE_*
    dims: list  # without the batch dimension


@dataclasses.dataclass
class GraphModel:
    """A whole-model graph of the artifact (ids and mask, and a sentence-pair model's token types, in; logits
    and kept positions out), served as a Triton model of its own behind ``adapler_tokenizer`` in an ensemble."""

    name: str  # the Triton model: PLAN_MODEL or ONNX_MODEL
    ensemble: str  # the ensemble in front of it
    source: pathlib.Path  # the graph file in the artifact
    filename: str  # its name in the model's version folder (Triton's default for the runtime)
    runtime: dict  # {"platform": ...} or {"backend": ...} of config.pbtxt
    instance_kind: str  # KIND_GPU, or KIND_AUTO: Triton puts the instances on a GPU where there is one
    inputs: list  # TensorSpec
    outputs: list
    max_batch: int | None  # the graph's own batch limit (an engine profile); None: none
    max_seq: int
    text_pair: bool  # a sentence-pair model: the tokenizer and the ensemble take TEXT_PAIR too
    plugin: pathlib.Path | None = None  # a plugin library the server must load for it


def single_engine(artifact_dir: pathlib.Path, manifest: Manifest) -> GraphModel | None:
    """The artifact's single engine with plugin layers (``manifest.engines.single``, the record
    ``engines.build_artifact_engines`` writes), or None where the build made none."""
    record = manifest.engines.single
    if record is None:
        return None
    where = f"{artifact_dir / 'manifest.json'}: engines.single"
    try:
        max_batch, max_seq = record["profiles"][0]["input_ids"]["max"]
        plan, plugin = artifact_dir / record["plan_path"], artifact_dir / record["plugin_library"]
        inputs, outputs = _triton_tensors(record["inputs"], where), _triton_tensors(record["outputs"], where)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RepositoryError(f"{where} is not a single-engine record (plan_path, plugin_library, inputs, "
                              f"outputs, an input_ids profile): {exc!r}") from None
    _check_graph_inputs(inputs, manifest.text_pair, where)
    return GraphModel(PLAN_MODEL, ENSEMBLE_MODEL, plan, "model.plan", {"platform": "tensorrt_plan"}, "KIND_GPU",
                      inputs, outputs, int(max_batch), int(max_seq), manifest.text_pair, plugin)


def one_graph(artifact_dir: pathlib.Path, manifest: Manifest) -> GraphModel | None:
    """The artifact's one standard-ONNX graph (``manifest.one_graph``), or None where the build made none.

    Its tensors are the whole-model contract, which ``build`` checks on the graph itself
    (``onnx_graph.validate_one_graph``) before recording it, and ``open_artifact`` checked the file's digest:
    ``input_ids`` and ``attention_mask`` (and a sentence-pair model's ``token_type_ids``: segment 0's inputs) int32
    [batch, seq]; ``logits`` fp32 [batch, C]; ``kept_positions_k``
    int32 [batch, kept_len_k] per link, -1 padding. The graph is not loaded here (hundreds of MB for a base
    model)."""
    record = manifest.one_graph
    if not record:
        return None
    where = f"{artifact_dir / 'manifest.json'}: one_graph"
    try:
        path, outputs = artifact_dir / record["file"], list(record["outputs"])
    except (KeyError, TypeError) as exc:
        raise RepositoryError(f"{where} is not a one-graph record (file, outputs): {exc!r}") from None
    expected = model_output_names(manifest.num_layers)
    if outputs != expected:
        raise RepositoryError(f"{where}: outputs {outputs}, the model contract for {manifest.num_layers} layers "
                              f"names {expected}")
    inputs = [TensorSpec(name, "TYPE_INT32", [-1]) for name in manifest.specs()[0].inputs]
    _check_graph_inputs(inputs, manifest.text_pair, where)
    logits, *kept = outputs
    outputs = [TensorSpec(logits, "TYPE_FP32", [len(manifest.labels)])] + [TensorSpec(k, "TYPE_INT32", [-1])
                                                                            for k in kept]
    return GraphModel(ONNX_MODEL, ONNX_ENSEMBLE_MODEL, path, "model.onnx", {"backend": "onnxruntime"}, "KIND_AUTO",
                      inputs, outputs, None, manifest.max_length, manifest.text_pair)


def _check_graph_inputs(inputs: list, text_pair: bool, where: str) -> None:
    expected = sorted(name for name in tokenizer_outputs(text_pair) if name != EMPTY_INPUT)
    if sorted(t.name for t in inputs) != expected:
        raise RepositoryError(f"{where}: inputs {[t.name for t in inputs]}, the ensemble feeds {expected}")


def _triton_tensors(tensors: dict, where: str) -> list:
    """``{name: {"dtype", "shape"}}`` (batch dimension first) as Triton tensors without the batch dimension."""
    out = []
    for name, tensor in tensors.items():
        if tensor["dtype"] not in _TRITON_TYPES:
            raise RepositoryError(f"{where}: tensor {name} has type {tensor['dtype']}, which Triton cannot carry")
        out.append(TensorSpec(name, _TRITON_TYPES[tensor["dtype"]], [int(d) for d in tensor["shape"][1:]]))
    return out


# ---------------------------------------------------------------------------------------------------------
# Config builders (protobuf -> text)
# ---------------------------------------------------------------------------------------------------------
def _add_io(cfg, field: str, specs: Iterable[TensorSpec]) -> None:
    pb2, _ = _pb2()
    for s in specs:
        t = getattr(cfg, field).add()
        t.name = s.name
        t.data_type = pb2.DataType.Value(s.data_type)
        t.dims.extend(s.dims)


def _text_tensors(text_pair: bool) -> list:
    """``TEXT`` (and a sentence-pair artifact's ``TEXT_PAIR``): BYTES [1] per row."""
    return [TensorSpec(name, "TYPE_STRING", [1]) for name in text_inputs(text_pair)]


def _python_model_config(name: str, *, max_batch: int, max_queue_delay_us: int, outputs: Sequence[TensorSpec],
                         instances: int, instance_kind: str, params: dict, text_pair: bool):
    """A Python-backend model taking ``TEXT`` (and ``TEXT_PAIR``), dynamically batched."""
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    _add_io(cfg, "input", _text_tensors(text_pair))
    _add_io(cfg, "output", outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = cfg.instance_group.add()
    group.count = instances
    group.kind = pb2.ModelInstanceGroup.Kind.Value(instance_kind)
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def text_model_config(*, max_batch: int, max_queue_delay_us: int, num_labels: int, instances: int,
                      instance_kind: str, params: dict, text_pair: bool = False):
    outputs = [TensorSpec(name, data_type, [num_labels] if name == "PROBABILITIES" else list(dims))
               for name, (data_type, dims) in TEXT_OUTPUTS.items()]
    return _python_model_config(TEXT_MODEL, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                outputs=outputs, instances=instances, instance_kind=instance_kind, params=params,
                                text_pair=text_pair)


def tokenizer_model_config(*, max_batch: int, max_queue_delay_us: int, instances: int, params: dict,
                           text_pair: bool = False):
    return _python_model_config(TOKENIZER_MODEL, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                outputs=[TensorSpec(name, *spec) for name, spec
                                         in tokenizer_outputs(text_pair).items()],
                                instances=instances, instance_kind="KIND_CPU", params=params, text_pair=text_pair)


def graph_model_config(graph: GraphModel, *, max_batch: int, max_queue_delay_us: int, instances: int):
    """The whole-model graph as a batching model: dims without the batch dimension, -1 where they vary.

    ``max_batch_size`` > 0 (not 0 with the batch in the dims): every graph tensor has the batch first, so the
    dynamic batcher may join requests. It joins only requests whose variable-size inputs have equal shapes
    (no ragged batching here): the tokenizer pads each request to a multiple of 8 wordpieces so that some do.
    A joined batch's ``kept_positions_k`` are as long as its longest kept row (data-dependent; -1 dims are
    allowed for outputs); each request gets its own rows, -1-padded to that length, the contract's padding.
    """
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=graph.name, max_batch_size=max_batch, default_model_filename=graph.filename,
                          **graph.runtime)
    _add_io(cfg, "input", graph.inputs)
    _add_io(cfg, "output", graph.outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = cfg.instance_group.add()
    group.count = instances
    group.kind = pb2.ModelInstanceGroup.Kind.Value(graph.instance_kind)
    return cfg


def ensemble_model_config(graph: GraphModel, *, max_batch: int):
    """adapler_tokenizer -> the graph; inputs TEXT (and TEXT_PAIR); outputs: the graph's, and the tokenizer's
    EMPTY_INPUT flag."""
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=graph.ensemble, platform="ensemble", max_batch_size=max_batch)
    _add_io(cfg, "input", _text_tensors(graph.text_pair))
    outputs = tokenizer_outputs(graph.text_pair)
    empty = TensorSpec(EMPTY_INPUT, *outputs[EMPTY_INPUT])
    _add_io(cfg, "output", list(graph.outputs) + [empty])
    tokenize = cfg.ensemble_scheduling.step.add()
    tokenize.model_name, tokenize.model_version = TOKENIZER_MODEL, -1
    for name in text_inputs(graph.text_pair):
        tokenize.input_map[name] = name
    run = cfg.ensemble_scheduling.step.add()
    run.model_name, run.model_version = graph.name, -1
    for name in outputs:
        if name == EMPTY_INPUT:
            tokenize.output_map[name] = name
        else:  # an internal tensor between the two steps
            tokenize.output_map[name] = f"_{name}"
            run.input_map[name] = f"_{name}"
    for spec in graph.outputs:
        run.output_map[spec.name] = spec.name
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
def parse_config(path: str | os.PathLike):
    """Parse a ``config.pbtxt`` into Triton's ``ModelConfig`` (raises RepositoryError with the reason)."""
    pb2, text_format = _pb2()
    cfg = pb2.ModelConfig()
    try:
        text_format.Parse(pathlib.Path(path).read_text(encoding="utf-8"), cfg)
    except text_format.ParseError as e:
        raise RepositoryError(f"{path}: {e}") from e
    return cfg


def validate_repository(repo_dir: str | os.PathLike) -> dict[str, object]:
    """Parse every ``*/config.pbtxt`` and check what Triton would reject at load time: name = folder,
    backend/platform set, a version folder, non-empty I/O with types, the files each kind needs, and
    that ensemble steps name models of this repository and tensors those models declare, of the types
    (and, both batching alike, the dims; -1 matches any) those models declare. Returns
    {model name: ModelConfig}."""
    pb2, _ = _pb2()
    repo = pathlib.Path(repo_dir)
    configs = {}
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = parse_config(cfg_path)
        model_dir = cfg_path.parent
        where = f"{cfg_path}"
        if cfg.name and cfg.name != model_dir.name:
            raise RepositoryError(f"{where}: name {cfg.name!r} differs from folder {model_dir.name!r}")
        if not (cfg.backend or cfg.platform):
            raise RepositoryError(f"{where}: neither backend nor platform set")
        if not cfg.input or not cfg.output:
            raise RepositoryError(f"{where}: needs inputs and outputs")
        for t in list(cfg.input) + list(cfg.output):
            if t.data_type == pb2.DataType.TYPE_INVALID or not t.name:
                raise RepositoryError(f"{where}: tensor {t.name!r} has no name or type")
            if cfg.platform != "ensemble" and not list(t.dims):
                raise RepositoryError(f"{where}: tensor {t.name!r} has no dims")
        versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise RepositoryError(f"{where}: no numeric version folder")
        model_file = ("model.py" if cfg.backend == "python" else
                      cfg.default_model_filename or _DEFAULT_MODEL_FILES.get(cfg.platform or cfg.backend))
        for v in versions if model_file else ():
            if not (v / model_file).is_file():
                raise RepositoryError(f"{where}: {v / model_file} missing")
        configs[model_dir.name] = cfg
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            _validate_ensemble(repo, name, cfg, configs)
    return configs


_PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}
# Triton's default model file names by platform / backend (``default_model_filename`` overrides them)
_DEFAULT_MODEL_FILES = {"tensorrt_plan": "model.plan", "tensorrt": "model.plan", "onnxruntime_onnx": "model.onnx",
                        "onnxruntime": "model.onnx"}


def _validate_ensemble(repo: pathlib.Path, name: str, cfg, configs: dict) -> None:
    produced = {t.name: (t, cfg) for t in cfg.input}  # ensemble tensor -> (its declaration, whose config)
    for step in cfg.ensemble_scheduling.step:
        sub = configs.get(step.model_name)
        if sub is None:
            raise RepositoryError(f"{name}: step model {step.model_name!r} not in {repo}")
        sub_in = {t.name: t for t in sub.input}
        sub_out = {t.name: t for t in sub.output}
        for model_tensor, ens_tensor in step.input_map.items():
            if model_tensor not in sub_in:
                raise RepositoryError(f"{name}: {step.model_name} has no input {model_tensor!r}")
            if ens_tensor not in produced:
                raise RepositoryError(f"{name}: tensor {ens_tensor!r} used before it is produced")
            _check_same_tensor(name, ens_tensor, produced[ens_tensor], (sub_in[model_tensor], sub))
        for model_tensor, ens_tensor in step.output_map.items():
            if model_tensor not in sub_out:
                raise RepositoryError(f"{name}: {step.model_name} has no output {model_tensor!r}")
            produced[ens_tensor] = (sub_out[model_tensor], sub)
    for t in cfg.output:
        if t.name not in produced:
            raise RepositoryError(f"{name}: output {t.name!r} is produced by no step")
        _check_same_tensor(name, t.name, produced[t.name], (t, cfg))
    if cfg.max_batch_size:
        for step in cfg.ensemble_scheduling.step:
            if configs[step.model_name].max_batch_size < cfg.max_batch_size:
                raise RepositoryError(f"{name}: {step.model_name} max_batch_size below the ensemble's")


def _check_same_tensor(ensemble: str, tensor: str, have: tuple, want: tuple) -> None:
    """An ensemble tensor as one side declares it vs the other: same type; same dims (-1 matching any) when
    both configs batch alike (Triton adds the batch dimension to those that batch)."""
    pb2, _ = _pb2()
    (a, a_cfg), (b, b_cfg) = have, want
    if a.data_type != b.data_type:
        raise RepositoryError(f"{ensemble}: tensor {tensor!r} is {pb2.DataType.Name(a.data_type)} in {a_cfg.name} "
                              f"but {pb2.DataType.Name(b.data_type)} in {b_cfg.name}")
    if bool(a_cfg.max_batch_size) != bool(b_cfg.max_batch_size) or not (a.dims and b.dims):
        return
    if len(a.dims) != len(b.dims) or any(x != y and -1 not in (x, y) for x, y in zip(a.dims, b.dims)):
        raise RepositoryError(f"{ensemble}: tensor {tensor!r} has dims {list(a.dims)} in {a_cfg.name} but "
                              f"{list(b.dims)} in {b_cfg.name}")


def loadable_models(repo_dir: str | os.PathLike, available_backends: Iterable[str] = ("python",)) -> list[str]:
    """Models of the repository whose backend is available (ensembles when all their steps are);
    ensembles last."""
    avail = set(available_backends)
    configs = validate_repository(repo_dir)

    def ok(name: str, seen=()) -> bool:
        cfg = configs.get(name)
        if cfg is None or name in seen:
            return False
        if cfg.platform == "ensemble":
            return all(ok(s.model_name, seen + (name,)) for s in cfg.ensemble_scheduling.step)
        backend = cfg.backend or _PLATFORM_BACKENDS.get(cfg.platform, cfg.platform)
        return backend in avail

    names = [n for n in sorted(configs) if ok(n)]
    return sorted(names, key=lambda n: configs[n].platform == "ensemble")


# ---------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RepositoryInfo:
    path: pathlib.Path
    models: list
    artifact: pathlib.Path
    artifact_mode: str
    with_tensorrt_plan: bool
    with_onnx_graph: bool
    tritonserver_command: str  # every model (a Triton container with what each needs)
    onnx_ensemble_command: str | None  # the one-graph ensemble alone, on a stock Triton server


def _place_file(src: pathlib.Path, dst: pathlib.Path, mode: str) -> None:
    """``dst`` = ``src`` by ``artifact_mode``: a copy, a hard link (a copy where the file system refuses one),
    or a symbolic link to the absolute path (``reference``: valid while the artifact stays put)."""
    if mode == "reference":
        os.symlink(src.resolve(), dst)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _copy_tree(src: pathlib.Path, dst: pathlib.Path, mode: str) -> None:
    shutil.copytree(src, dst, copy_function=lambda s, d: _place_file(pathlib.Path(s), pathlib.Path(d), mode))


def _write_config(cfg, path: pathlib.Path) -> None:
    _, text_format = _pb2()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    parse_config(path)  # round-trip


def _wanted(what: str, option: str, asked: bool | None, graph: GraphModel | None, missing: str) -> bool:
    """Whether to write a graph model: ``asked`` None = where the artifact has the graph; True requires it."""
    if asked and graph is None:
        raise RepositoryError(f"{option}: {what} ({missing})")
    return graph is not None if asked is None else asked


def write_model_repository(
    artifact,
    repo_dir: str | os.PathLike,
    *,
    max_batch: int = 32,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    instance_kind: str = "KIND_CPU",
    backend_kind: str = "auto",
    with_tensorrt_plan: bool | None = None,
    with_onnx_graph: bool | None = None,
    artifact_mode: str = "copy",
    pad_to_multiple_of: int = 8,
    python_path: str | None = None,
    backend_factory: str | None = None,
    overwrite: bool = False,
) -> RepositoryInfo:
    """Write the repository (see the module docstring) and return what was written.

    ``artifact``: a path, or a bare name under the cache (``artifact.resolve_artifact``); it is checked
    (manifest, files, digests) before anything is written. ``artifact_mode``: ``copy`` (default;
    self-contained repository), ``hardlink`` (same, without duplicating bytes where the file system
    allows), ``reference`` (config.pbtxt holds the artifact's absolute path and the graph models' files are
    symbolic links into it: the repository is then only valid on this machine while the artifact stays put).
    ``with_tensorrt_plan`` / ``with_onnx_graph``: ``None`` = write that graph's model, the tokenizer and the
    ensemble when the artifact has the graph (the single engine / ``onnx/model.onnx``); ``True`` requires it;
    ``False`` leaves it out. ``python_path``: folders the Python-backend stub prepends to ``sys.path`` to import
    ``adapler_export`` (default: where this package is imported from). ``backend_factory``:
    ``module:function`` the Triton model calls instead of ``backends.load_backend`` (same signature).
    """
    if artifact_mode not in ("copy", "hardlink", "reference"):
        raise RepositoryError(f"artifact_mode must be copy, hardlink or reference, not {artifact_mode!r}")
    if max_batch < 1:
        raise RepositoryError("max_batch must be >= 1")
    artifact_dir, manifest = open_artifact(artifact, check_files=True)
    engine, graph = single_engine(artifact_dir, manifest), one_graph(artifact_dir, manifest)
    want_plan = _wanted(f"artifact {artifact_dir} has no single TensorRT engine", "--with-tensorrt-plan",
                        with_tensorrt_plan, engine,
                        manifest.engines.not_built.get("single", "build it where full TensorRT and a GPU exist"))
    want_onnx = _wanted(f"artifact {artifact_dir} has no one-graph model (onnx/model.onnx)", "--with-onnx-graph",
                        with_onnx_graph, graph, "built before the one graph existed: rebuild it with "
                                                "`adapler-export build`")
    graphs = [g for g, wanted in ((engine, want_plan), (graph, want_onnx)) if wanted]
    repo = pathlib.Path(repo_dir).expanduser().resolve()
    with atomic_directory(repo, kind="repository", force=overwrite, inputs=(artifact_dir,)) as tmp:
        models = [TEXT_MODEL]
        version = tmp / TEXT_MODEL / "1"
        version.mkdir(parents=True)
        shutil.copy2(_HERE / "model.py", version / "model.py")
        if artifact_mode == "reference":
            artifact_param = str(artifact_dir)
        else:
            _copy_tree(artifact_dir, version / "artifact", artifact_mode)
            artifact_param = "artifact"
        params = {
            "artifact_dir": artifact_param,
            "backend_kind": backend_kind,
            "python_path": python_path if python_path is not None else str(_HERE.parents[1]),
            "pad_to_multiple_of": "1",
        }
        if backend_factory:
            params["backend_factory"] = backend_factory
        _write_config(text_model_config(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                        num_labels=len(manifest.labels), instances=instances,
                                        instance_kind=instance_kind, params=params, text_pair=manifest.text_pair),
                      tmp / TEXT_MODEL / "config.pbtxt")
        if graphs:
            _write_graph_models(tmp, artifact_dir, graphs, max_batch=max_batch, cut=manifest.cut,
                                max_queue_delay_us=max_queue_delay_us, instances=instances,
                                pad_to_multiple_of=pad_to_multiple_of, artifact_mode=artifact_mode)
            models += [g.name for g in graphs] + [TOKENIZER_MODEL] + [g.ensemble for g in graphs]
        validate_repository(tmp)
        command = tritonserver_command(repo, want_plan)
        onnx_command = ensemble_command(repo, ONNX_ENSEMBLE_MODEL) if want_onnx else None
        (tmp / "README.md").write_text(_readme(repo, artifact_dir, manifest, models, artifact_mode, max_batch,
                                               command, onnx_command), encoding="utf-8")
        (tmp / REPOSITORY_MARKER).write_text(json.dumps({
            "artifact": str(artifact_dir), "artifact_mode": artifact_mode, "models": models,
            "max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "precision": manifest.precision,
            "labels": manifest.labels, "max_length": manifest.max_length, "truncation": manifest.truncation,
        }, indent=2) + "\n", encoding="utf-8")
    return RepositoryInfo(repo, models, artifact_dir, artifact_mode, want_plan, want_onnx, command, onnx_command)


def _write_graph_models(tmp: pathlib.Path, artifact_dir: pathlib.Path, graphs: list, *, max_batch: int,
                        cut: Cut, max_queue_delay_us: int, instances: int, pad_to_multiple_of: int,
                        artifact_mode: str) -> None:
    """Each graph's model and its ensemble, the tokenizer in front of them, plugins/ where a graph needs one.

    One tokenizer serves every ensemble: it truncates, by the artifact's rule (``cut.truncation``), to the
    shortest sequence any graph takes (the engine's profile may end before max_length) and its
    max_batch_size is the largest graph's."""
    batches = {g.name: min(max_batch, g.max_batch or max_batch) for g in graphs}
    for g in graphs:
        (tmp / g.name / "1").mkdir(parents=True)
        _place_file(g.source, tmp / g.name / "1" / g.filename, artifact_mode)
        _write_config(graph_model_config(g, max_batch=batches[g.name], max_queue_delay_us=max_queue_delay_us,
                                         instances=instances), tmp / g.name / "config.pbtxt")
        (tmp / g.ensemble / "1").mkdir(parents=True)
        _write_config(ensemble_model_config(g, max_batch=batches[g.name]), tmp / g.ensemble / "config.pbtxt")
        if g.plugin is not None:
            (tmp / "plugins").mkdir(exist_ok=True)
            shutil.copy2(g.plugin, tmp / "plugins" / PLUGIN_LIB)
    version = tmp / TOKENIZER_MODEL / "1"
    version.mkdir(parents=True)
    shutil.copy2(_HERE / "tokenizer_model.py", version / "model.py")
    for name in TOKENIZER_MODEL_FILES:
        shutil.copy2(_HERE / name, version / name)
    shutil.copytree(artifact_dir / "tokenizer", version / "tokenizer")
    max_seq = min([cut.max_length] + [g.max_seq for g in graphs])
    _write_config(tokenizer_model_config(max_batch=max(batches.values()), max_queue_delay_us=max_queue_delay_us,
                                         instances=instances,
                                         params={"max_length": str(max_seq), "truncation": cut.truncation,
                                                 "pad_to_multiple_of": str(pad_to_multiple_of)},
                                         text_pair=graphs[0].text_pair),
                  tmp / TOKENIZER_MODEL / "config.pbtxt")


def repository_artifacts(repo_dir) -> list:
    """The artifacts the repository's ``adapler_text`` models use, each checked with ``open_artifact``
    (files and digests): a damaged copy fails here with one line, before a server is started."""
    repo = pathlib.Path(repo_dir)
    checked = []
    for name, cfg in validate_repository(repo).items():
        if "artifact_dir" not in cfg.parameters:
            continue
        path = pathlib.Path(cfg.parameters["artifact_dir"].string_value)
        if not path.is_absolute():
            path = repo / name / "1" / path
        checked.append(open_artifact(path, check_files=True)[0])
    return checked


def tritonserver_command(repo: pathlib.Path, with_plan: bool) -> str:
    cmd = f"tritonserver --model-repository={repo}"
    if with_plan:
        cmd += f" --backend-config=tensorrt,plugins={repo}/plugins/{PLUGIN_LIB}"
    return cmd


def ensemble_command(repo: pathlib.Path, ensemble: str) -> str:
    """Serve one ensemble alone (Triton loads the models it runs): no ``adapler_text``, so the server's
    Python needs no ``adapler_export``, only what the tokenizer model imports (numpy, transformers)."""
    return f"tritonserver --model-repository={repo} --model-control-mode=explicit --load-model={ensemble}"


def _readme(repo: pathlib.Path, artifact_dir: pathlib.Path, manifest: Manifest, models: list, artifact_mode: str,
            max_batch: int, command: str, onnx_command: str | None) -> str:
    art = ("`adapler_text/1/artifact/` (a copy: the repository is self-contained)" if artifact_mode != "reference"
           else f"`{artifact_dir}` (referenced by absolute path in `adapler_text/config.pbtxt`: keep it there)")
    pair = (f", and `{TEXT_PAIR_INPUT}` (the same shape: the second text of each sentence pair; task "
            f"{manifest.task}, so the ensembles below take it too, and `adapler_tokenizer` also gives "
            "`token_type_ids`)" if manifest.text_pair else "")
    text = f"""\
    # Triton model repository for an AdapLeR artifact

    Written by `adapler_export.serving.write_model_repository` from `{artifact_dir}`.
    Models: {", ".join(f"`{m}`" for m in models)}. Labels: {", ".join(manifest.labels)}. max_length:
    {manifest.max_length} wordpieces; a longer text is cut by the rule `{manifest.truncation}` (the model's
    training rule, `adapler_export/serving/tokenization.py`). Artifact used by `adapler_text`: {art}.

    ## `adapler_text` (Python backend; `load_backend` auto: the one graph on CPU, TensorRT segments on GPU)
    Input `TEXT` (BYTES, shape [batch, 1], batch <= {max_batch}, UTF-8){pair}. Outputs per row: `LABEL` (BYTES,
    label name), `LABEL_ID` (INT32), `PROBABILITIES` (FP32 [{len(manifest.labels)}]), `TRUNCATED` (BOOL: cut to
    {manifest.max_length} wordpieces by `{manifest.truncation}`, warning in the server log), `EMPTY_INPUT` (BOOL:
    the text holds no token, e.g. empty or whitespace; its label is the model's prior, not a reading),
    `RATIONALE` (BYTES: JSON `{{"tokens", "kept_positions", "kept_tokens"}}`; `kept_tokens[k]` = the wordpieces
    that enter encoder layer k). Non-UTF-8 text gets an error for that request only.

    Needs, in the Python that runs the backend stub: numpy, transformers, onnxruntime and the
    `adapler_export` package (the config's `python_path` parameter puts its folder on `sys.path`; so do
    the folders in `$ADAPLER_PYTHONPATH`). It imports no torch.

    ### Start it on this machine (tritonserver from the `nvidia-pytriton` wheel, loopback only)
    ```
    adapler-export serve --repo {repo}
    ```
    (builds a backends folder with the wheel's Python backend plus the stub for this Python, sets
    LD_LIBRARY_PATH to the wheel's libraries, picks free 127.0.0.1 ports and waits for readiness; Ctrl-C or
    SIGTERM stops the server and removes its temporary files.)

    ### Query it
    ```
    python examples/triton_client.py --url 127.0.0.1:<http port> "a gorgeous, witty, seductive movie."
    ```
    """
    if PLAN_MODEL in models:
        text += f"""
    ## `adapler_plan` + `adapler_tokenizer` + `adapler_ensemble` (TensorRT single engine, GPU)
    `adapler_plan` serves the artifact's single engine ({manifest.precision}; TokenCompact plugin layers
    inside) with dynamic sequence dims (-1); `adapler_ensemble` = `adapler_tokenizer` (TEXT -> input_ids,
    attention_mask INT32, EMPTY_INPUT) -> `adapler_plan`. Needs a Triton server with the TensorRT backend of
    the **same TensorRT version** the engine was built with, a GPU, and the plugin library loaded:
    ```
    {command}
    ```
    (or `LD_PRELOAD={repo}/plugins/{PLUGIN_LIB} tritonserver --model-repository={repo}`). That loads all
    models; `adapler_text` then needs numpy, transformers, onnxruntime and `adapler_export` in the server's
    Python. To serve the engine path alone (it needs only `pip install transformers` there):
    ```
    {command} --model-control-mode=explicit --load-model={ENSEMBLE_MODEL}
    ```
    The ensemble's outputs are the engine's (`logits`, `kept_positions_<k>`) and `EMPTY_INPUT`;
    `adapler_tokenizer` pads each request to a multiple of 8 wordpieces so equal-length requests can be
    batched. The pytriton wheel has no TensorRT backend: locally `adapler-export serve` loads only the
    Python models. Check it against the local backend: `ADAPLER_TRITON_PLAN_URL=<host:http port> pytest
    tests/test_serving.py -k tensorrt_ensemble` (with the artifact as the `built_artifact` fixture).
    """
    if ONNX_MODEL in models:
        text += f"""
    ## `adapler_onnx` + `adapler_tokenizer` + `adapler_onnx_ensemble` (one standard-ONNX graph, stock Triton)
    `adapler_onnx` serves the artifact's `onnx/model.onnx` ({manifest.precision}): the whole adaptive model,
    token-dropping links included, in standard ONNX ops, for Triton's stock `onnxruntime` backend (instances
    `KIND_AUTO`: on a GPU where the server has one, else on the CPU). Inputs `input_ids`, `attention_mask`
    (INT32, dims [-1]); outputs `logits` (FP32 [{len(manifest.labels)}]) and `kept_positions_<k>` (INT32 [-1]:
    the original positions link k kept, -1 padding; the length depends on the data, and a batch that the
    dynamic batcher joined is padded to its longest row). `adapler_onnx_ensemble` = `adapler_tokenizer`
    (TEXT -> input_ids, attention_mask, EMPTY_INPUT) -> `adapler_onnx`. No code of this project runs in
    the server but the tokenizer model, which needs `pip install transformers` in the server's Python:
    ```
    {onnx_command}
    ```
    The pytriton wheel that `adapler-export serve` runs ships only the Python backend (no `onnxruntime`):
    locally the ensemble does not load. Check it against the library: `ADAPLER_TRITON_ONNX_URL=<host:http
    port> pytest tests/test_serving.py -k stock_onnxruntime` (with the artifact as the `built_artifact` fixture).
    """
    return textwrap.dedent(text)
