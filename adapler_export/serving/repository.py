"""Write a Triton model repository for a build artifact.

Layout written by :func:`write_model_repository` (atomically, through ``storage.atomic_directory``: a
temporary folder beside ``repo_dir``, renamed into place when complete; an existing repository is
replaced only with ``overwrite``, and nothing else is ever replaced)::

    <repo>/README.md                          how to start it (both servers), what each model does
    <repo>/.adapler-triton-repository         what was written from which artifact (JSON; marks the folder)
    <repo>/adapler_text/config.pbtxt          Python backend: TEXT -> LABEL, LABEL_ID, PROBABILITIES,
                                              TRUNCATED, EMPTY_INPUT, RATIONALE (serving/contract.py)
    <repo>/adapler_text/1/model.py            (template: adapler_export/serving/model.py)
    <repo>/adapler_text/1/artifact/           copy of the build artifact (artifact_mode="copy"/"hardlink";
                                              with "reference" config.pbtxt holds its absolute path instead)
  only with a single TensorRT engine in the artifact (``with_tensorrt_plan=True``, or auto when it has one):
    <repo>/adapler_plan/config.pbtxt          tensorrt_plan, dynamic dims (-1), I/O from the engine record
    <repo>/adapler_plan/1/model.plan          the artifact's single engine
    <repo>/adapler_tokenizer/config.pbtxt     Python backend: TEXT -> input_ids, attention_mask (INT32), EMPTY_INPUT
    <repo>/adapler_tokenizer/1/model.py       (template: adapler_export/serving/tokenizer_model.py, with
                                              tokenization.py and contract.py beside it)
    <repo>/adapler_tokenizer/1/tokenizer/
    <repo>/adapler_ensemble/config.pbtxt      ensemble: adapler_tokenizer -> adapler_plan
    <repo>/adapler_ensemble/1/                (empty version folder, required)
    <repo>/plugins/libadapler_plugins.so      TokenCompact plugin (load with --backend-config=tensorrt,plugins=…)

The artifact is read only through ``artifact.open_artifact`` (its files checked against their digests
first, so a missing segment fails here, not when a server loads the model). Every ``config.pbtxt`` is
generated from Triton's ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``) and parsed back
from the file before the repository is moved into place; ensembles are checked against the models and
tensors they name.
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
from .contract import (EMPTY_INPUT, ENSEMBLE_MODEL, PLAN_MODEL, TEXT_INPUT, TEXT_MODEL, TEXT_OUTPUTS, TOKENIZER_MODEL,
                       TOKENIZER_OUTPUTS)

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
# The artifact's single engine
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TensorSpec:
    name: str
    data_type: str  # TYPE_*
    dims: list  # without the batch dimension


@dataclasses.dataclass
class SingleEngine:
    """The single engine an artifact records (paths inside the artifact)."""

    plan: pathlib.Path
    plugin: pathlib.Path
    inputs: list  # TensorSpec
    outputs: list
    max_batch: int  # of its optimization profile
    max_seq: int


def single_engine(artifact_dir: pathlib.Path, manifest: Manifest) -> SingleEngine | None:
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
    expected = sorted(name for name in TOKENIZER_OUTPUTS if name != EMPTY_INPUT)
    if sorted(t.name for t in inputs) != expected:
        raise RepositoryError(f"{where}: inputs {[t.name for t in inputs]}, the ensemble feeds {expected}")
    return SingleEngine(plan, plugin, inputs, outputs, int(max_batch), int(max_seq))


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


def _python_model_config(name: str, *, max_batch: int, max_queue_delay_us: int, outputs: Sequence[TensorSpec],
                         instances: int, instance_kind: str, params: dict):
    """A Python-backend model taking ``TEXT`` (BYTES [1] per row), dynamically batched."""
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    _add_io(cfg, "input", [TensorSpec(TEXT_INPUT, "TYPE_STRING", [1])])
    _add_io(cfg, "output", outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = cfg.instance_group.add()
    group.count = instances
    group.kind = pb2.ModelInstanceGroup.Kind.Value(instance_kind)
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def text_model_config(*, max_batch: int, max_queue_delay_us: int, num_labels: int, instances: int,
                      instance_kind: str, params: dict):
    outputs = [TensorSpec(name, data_type, [num_labels] if name == "PROBABILITIES" else list(dims))
               for name, (data_type, dims) in TEXT_OUTPUTS.items()]
    return _python_model_config(TEXT_MODEL, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                outputs=outputs, instances=instances, instance_kind=instance_kind, params=params)


def tokenizer_model_config(*, max_batch: int, max_queue_delay_us: int, instances: int, params: dict):
    return _python_model_config(TOKENIZER_MODEL, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                outputs=[TensorSpec(name, *spec) for name, spec in TOKENIZER_OUTPUTS.items()],
                                instances=instances,
                                instance_kind="KIND_CPU", params=params)


def plan_model_config(*, max_batch: int, max_queue_delay_us: int, inputs: Sequence[TensorSpec],
                      outputs: Sequence[TensorSpec]):
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=PLAN_MODEL, platform="tensorrt_plan", max_batch_size=max_batch,
                          default_model_filename="model.plan")
    _add_io(cfg, "input", inputs)
    _add_io(cfg, "output", outputs)
    # Only requests of the same padded length are joined (no ragged batching): see the tokenizer's padding.
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = cfg.instance_group.add()
    group.count = 1
    group.kind = pb2.ModelInstanceGroup.Kind.KIND_GPU
    return cfg


def ensemble_model_config(*, max_batch: int, plan_outputs: Sequence[TensorSpec]):
    """adapler_tokenizer -> adapler_plan; outputs: the engine's, and the tokenizer's EMPTY_INPUT flag."""
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=ENSEMBLE_MODEL, platform="ensemble", max_batch_size=max_batch)
    _add_io(cfg, "input", [TensorSpec(TEXT_INPUT, "TYPE_STRING", [1])])
    empty = TensorSpec(EMPTY_INPUT, *TOKENIZER_OUTPUTS[EMPTY_INPUT])
    _add_io(cfg, "output", list(plan_outputs) + [empty])
    tokenize = cfg.ensemble_scheduling.step.add()
    tokenize.model_name, tokenize.model_version = TOKENIZER_MODEL, -1
    tokenize.input_map[TEXT_INPUT] = TEXT_INPUT
    run = cfg.ensemble_scheduling.step.add()
    run.model_name, run.model_version = PLAN_MODEL, -1
    for name in TOKENIZER_OUTPUTS:
        if name == EMPTY_INPUT:
            tokenize.output_map[name] = name
        else:  # an internal tensor between the two steps
            tokenize.output_map[name] = f"_{name}"
            run.input_map[name] = f"_{name}"
    for spec in plan_outputs:
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
    that ensemble steps name models of this repository and tensors those models declare. Returns
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
        if cfg.backend == "python":
            for v in versions:
                if not (v / "model.py").is_file():
                    raise RepositoryError(f"{where}: {v}/model.py missing")
        if cfg.platform == "tensorrt_plan":
            fname = cfg.default_model_filename or "model.plan"
            for v in versions:
                if not (v / fname).is_file():
                    raise RepositoryError(f"{where}: {v / fname} missing")
        configs[model_dir.name] = cfg
    for name, cfg in configs.items():
        if cfg.platform != "ensemble":
            continue
        produced = {t.name for t in cfg.input}
        for step in cfg.ensemble_scheduling.step:
            sub = configs.get(step.model_name)
            if sub is None:
                raise RepositoryError(f"{name}: step model {step.model_name!r} not in {repo}")
            sub_in = {t.name for t in sub.input}
            sub_out = {t.name for t in sub.output}
            for model_tensor, ens_tensor in step.input_map.items():
                if model_tensor not in sub_in:
                    raise RepositoryError(f"{name}: {step.model_name} has no input {model_tensor!r}")
                if ens_tensor not in produced:
                    raise RepositoryError(f"{name}: tensor {ens_tensor!r} used before it is produced")
            for model_tensor, ens_tensor in step.output_map.items():
                if model_tensor not in sub_out:
                    raise RepositoryError(f"{name}: {step.model_name} has no output {model_tensor!r}")
                produced.add(ens_tensor)
        missing = {t.name for t in cfg.output} - produced
        if missing:
            raise RepositoryError(f"{name}: outputs {sorted(missing)} are produced by no step")
        if cfg.max_batch_size:
            for step in cfg.ensemble_scheduling.step:
                if configs[step.model_name].max_batch_size < cfg.max_batch_size:
                    raise RepositoryError(f"{name}: {step.model_name} max_batch_size below the ensemble's")
    return configs


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
        backend = cfg.backend or {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}.get(cfg.platform, cfg.platform)
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
    tritonserver_command: str


def _copy_tree(src: pathlib.Path, dst: pathlib.Path, mode: str) -> None:
    if mode == "hardlink":
        def link(s, d):
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)

        shutil.copytree(src, dst, copy_function=link)
    else:
        shutil.copytree(src, dst)


def _write_config(cfg, path: pathlib.Path) -> None:
    _, text_format = _pb2()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(cfg), encoding="utf-8")
    parse_config(path)  # round-trip


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
    allows), ``reference`` (config.pbtxt holds the artifact's absolute path: the repository is then only
    valid on this machine while the artifact stays put). ``with_tensorrt_plan``: ``None`` = write the
    plan/tokenizer/ensemble models when the artifact has a single engine; ``True`` requires one.
    ``python_path``: folders the Python-backend stub prepends to ``sys.path`` to import
    ``adapler_export`` (default: where this package is imported from). ``backend_factory``:
    ``module:function`` the Triton model calls instead of ``backends.load_backend`` (same signature).
    """
    if artifact_mode not in ("copy", "hardlink", "reference"):
        raise RepositoryError(f"artifact_mode must be copy, hardlink or reference, not {artifact_mode!r}")
    if max_batch < 1:
        raise RepositoryError("max_batch must be >= 1")
    artifact_dir, manifest = open_artifact(artifact, check_files=True)
    engine = single_engine(artifact_dir, manifest)
    want_plan = with_tensorrt_plan if with_tensorrt_plan is not None else engine is not None
    if want_plan and engine is None:
        reason = manifest.engines.not_built.get("single", "build it where full TensorRT and a GPU exist")
        raise RepositoryError(f"--with-tensorrt-plan: artifact {artifact_dir} has no single TensorRT engine "
                              f"({reason})")
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
                                        instance_kind=instance_kind, params=params),
                      tmp / TEXT_MODEL / "config.pbtxt")
        if want_plan:
            _write_engine_models(tmp, artifact_dir, engine, max_batch=min(max_batch, engine.max_batch),
                                 max_seq=min(manifest.max_length, engine.max_seq),
                                 max_queue_delay_us=max_queue_delay_us, instances=instances,
                                 pad_to_multiple_of=pad_to_multiple_of)
            models += [PLAN_MODEL, TOKENIZER_MODEL, ENSEMBLE_MODEL]
        validate_repository(tmp)
        command = tritonserver_command(repo, want_plan)
        (tmp / "README.md").write_text(_readme(repo, artifact_dir, manifest, models, artifact_mode, max_batch,
                                               command), encoding="utf-8")
        (tmp / REPOSITORY_MARKER).write_text(json.dumps({
            "artifact": str(artifact_dir), "artifact_mode": artifact_mode, "models": models,
            "max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "precision": manifest.precision,
            "labels": manifest.labels, "max_length": manifest.max_length,
        }, indent=2) + "\n", encoding="utf-8")
    return RepositoryInfo(repo, models, artifact_dir, artifact_mode, want_plan, command)


def _write_engine_models(tmp: pathlib.Path, artifact_dir: pathlib.Path, engine: SingleEngine, *, max_batch: int,
                         max_seq: int, max_queue_delay_us: int, instances: int, pad_to_multiple_of: int) -> None:
    """adapler_plan (the engine), adapler_tokenizer (its front), adapler_ensemble, plugins/."""
    (tmp / PLAN_MODEL / "1").mkdir(parents=True)
    shutil.copy2(engine.plan, tmp / PLAN_MODEL / "1" / "model.plan")
    _write_config(plan_model_config(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                    inputs=engine.inputs, outputs=engine.outputs), tmp / PLAN_MODEL / "config.pbtxt")
    version = tmp / TOKENIZER_MODEL / "1"
    version.mkdir(parents=True)
    shutil.copy2(_HERE / "tokenizer_model.py", version / "model.py")
    for name in TOKENIZER_MODEL_FILES:
        shutil.copy2(_HERE / name, version / name)
    shutil.copytree(artifact_dir / "tokenizer", version / "tokenizer")
    _write_config(tokenizer_model_config(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                                         instances=instances,
                                         params={"max_length": str(max_seq),
                                                 "pad_to_multiple_of": str(pad_to_multiple_of)}),
                  tmp / TOKENIZER_MODEL / "config.pbtxt")
    (tmp / ENSEMBLE_MODEL / "1").mkdir(parents=True)
    _write_config(ensemble_model_config(max_batch=max_batch, plan_outputs=engine.outputs),
                  tmp / ENSEMBLE_MODEL / "config.pbtxt")
    (tmp / "plugins").mkdir()
    shutil.copy2(engine.plugin, tmp / "plugins" / PLUGIN_LIB)


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


def _readme(repo: pathlib.Path, artifact_dir: pathlib.Path, manifest: Manifest, models: list, artifact_mode: str,
            max_batch: int, command: str) -> str:
    art = ("`adapler_text/1/artifact/` (a copy: the repository is self-contained)" if artifact_mode != "reference"
           else f"`{artifact_dir}` (referenced by absolute path in `adapler_text/config.pbtxt`: keep it there)")
    text = f"""\
    # Triton model repository for an AdapLeR artifact

    Written by `adapler_export.serving.write_model_repository` from `{artifact_dir}`.
    Models: {", ".join(f"`{m}`" for m in models)}. Labels: {", ".join(manifest.labels)}. max_length:
    {manifest.max_length} wordpieces. Artifact used by `adapler_text`: {art}.

    ## `adapler_text` (Python backend; ONNX Runtime on CPU, TensorRT segments on GPU)
    Input `TEXT` (BYTES, shape [batch, 1], batch <= {max_batch}, UTF-8). Outputs per row: `LABEL` (BYTES,
    label name), `LABEL_ID` (INT32), `PROBABILITIES` (FP32 [{len(manifest.labels)}]), `TRUNCATED` (BOOL: cut to
    {manifest.max_length} wordpieces, warning in the server log), `EMPTY_INPUT` (BOOL: the text holds no
    token, e.g. empty or whitespace; its label is the model's prior, not a reading), `RATIONALE` (BYTES: JSON
    `{{"tokens", "kept_positions", "kept_tokens"}}`; `kept_tokens[k]` = the wordpieces that enter encoder
    layer k). Non-UTF-8 text gets an error for that request only.

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
    return textwrap.dedent(text)
