"""Write a Triton model repository for a build artifact.

Layout written by :func:`write_model_repository` (atomically: a temp folder beside ``repo_dir``, then a
rename)::

    <repo>/README.md                          how to start it (both servers), what each model does
    <repo>/adapler_text/config.pbtxt          Python backend: TEXT -> LABEL, LABEL_ID, PROBABILITIES, KEPT_TOKENS
    <repo>/adapler_text/1/model.py            (template: adapler_export/serving/model.py)
    <repo>/adapler_text/1/artifact/           copy of the build artifact (artifact_mode="copy"/"hardlink";
                                              with "reference" config.pbtxt holds its absolute path instead)
  only with the single TensorRT engine (``with_tensorrt_plan=True``, or auto when the artifact has one):
    <repo>/adapler_plan/config.pbtxt          tensorrt_plan, dynamic dims (-1)
    <repo>/adapler_plan/1/model.plan          engines/single.<precision>.plan
    <repo>/adapler_tokenizer/config.pbtxt     Python backend: TEXT -> input_ids, attention_mask (INT32)
    <repo>/adapler_tokenizer/1/model.py       (template: adapler_export/serving/tokenizer_model.py)
    <repo>/adapler_tokenizer/1/tokenizer/
    <repo>/adapler_ensemble/config.pbtxt      ensemble: adapler_tokenizer -> adapler_plan
    <repo>/adapler_ensemble/1/                (empty version folder, required)
    <repo>/plugins/libadapler_plugins.so      TokenCompact plugin (load with --backend-config=tensorrt,plugins=…)

Every ``config.pbtxt`` is generated from Triton's ``ModelConfig`` protobuf (``tritonclient.grpc.
model_config_pb2``) and parsed back from the file before the repository is moved into place; ensembles are
checked against the models and tensors they name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import textwrap
from typing import Iterable, Sequence

from ..errors import AdaplerError
from .runtime import manifest_labels, manifest_max_length, read_manifest

TEXT_MODEL = "adapler_text"
PLAN_MODEL = "adapler_plan"
TOKENIZER_MODEL = "adapler_tokenizer"
ENSEMBLE_MODEL = "adapler_ensemble"
PLUGIN_LIB = "libadapler_plugins.so"

_HERE = pathlib.Path(__file__).resolve().parent
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64",
                   9: "TYPE_BOOL", 2: "TYPE_UINT8", 3: "TYPE_INT8", 16: "TYPE_BF16"}


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
# Artifact inspection
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TensorSpec:
    name: str
    data_type: str  # TYPE_*
    dims: list[int]  # without the batch dimension


@dataclasses.dataclass
class ArtifactInfo:
    path: pathlib.Path
    manifest: dict
    labels: list[str] | None
    max_length: int
    precision: str
    single_engine: pathlib.Path | None
    plugin: pathlib.Path | None

    @property
    def num_labels(self) -> int | None:
        return len(self.labels) if self.labels else None


def inspect_artifact(artifact_dir: str | os.PathLike, precision: str | None = None) -> ArtifactInfo:
    path = pathlib.Path(artifact_dir).resolve()
    if not path.is_dir():
        raise RepositoryError(f"artifact {path} is not a directory")
    if not (path / "tokenizer").is_dir():
        raise RepositoryError(f"artifact {path} has no tokenizer/ folder")
    manifest = read_manifest(path)
    tok = None
    if not any(isinstance(manifest.get(k), int) for k in ("max_length", "max_seq_length", "max_seq_len")):
        try:
            from .runtime import load_tokenizer

            tok = load_tokenizer(path)
        except Exception:  # noqa: BLE001 - fall back to the default below
            tok = None
    precision = precision or str(manifest.get("precision") or "")
    engines = sorted((path / "engines").glob("single.*.plan")) if (path / "engines").is_dir() else []
    single = None
    if precision:
        cand = path / "engines" / f"single.{precision}.plan"
        single = cand if cand.is_file() else None
    elif len(engines) == 1:
        single = engines[0]
        precision = single.name.split(".")[1]
    plugin = path / "plugins" / PLUGIN_LIB
    return ArtifactInfo(
        path=path,
        manifest=manifest,
        labels=manifest_labels(manifest),
        max_length=manifest_max_length(manifest, tok),
        precision=precision or "fp32",
        single_engine=single,
        plugin=plugin if plugin.is_file() else None,
    )


def _onnx_io(onnx_path: pathlib.Path) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    """Inputs/outputs of ``single.onnx`` (graph only, no weights), batch dim dropped."""
    if not onnx_path.is_file():
        return None
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dt = _ONNX_TO_TRITON.get(t.elem_type)
        if dt is None:
            raise RepositoryError(f"{onnx_path}: tensor {v.name} has ONNX type {t.elem_type} Triton cannot carry")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorSpec(v.name, dt, dims[1:] if dims else [])

    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def engine_profile_max(manifest: dict) -> tuple[int | None, int | None]:
    """(max batch, max sequence) of the single engine's profile where the manifest records it
    (``engines.single.profile.input_ids = [min, opt, max]`` shapes; or ``engines.single.max_batch`` /
    ``max_seq``)."""
    eng = manifest.get("engines")
    if not isinstance(eng, dict):
        return None, None
    single = eng.get("single") if isinstance(eng.get("single"), dict) else {}
    prof = single.get("profile") or (single.get("profiles") or [None])[0]
    if isinstance(prof, dict) and isinstance(prof.get("input_ids"), (list, tuple)) and len(prof["input_ids"]) == 3:
        try:
            return int(prof["input_ids"][2][0]), int(prof["input_ids"][2][1])
        except (TypeError, ValueError, IndexError):
            pass

    def num(v):
        return v if isinstance(v, int) and v > 0 else None

    return num(single.get("max_batch")) or num(eng.get("max_batch")), num(single.get("max_seq"))


def plan_io(info: ArtifactInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """I/O of the single engine: from ``onnx/single.onnx`` when present, else ``manifest['single_io']``
    ({"inputs"/"outputs": [{"name", "data_type", "dims"}]}), else the contract's defaults
    (``input_ids``/``attention_mask`` INT32 [-1] -> ``logits`` FP32 [C])."""
    io = _onnx_io(info.path / "onnx" / "single.onnx")
    if io is not None:
        inputs, outputs = io
        for t in outputs:  # single.onnx declares logits [batch, ?]: the label count is known here
            if t.name == "logits" and t.dims == [-1] and info.num_labels:
                t.dims = [info.num_labels]
        return inputs, outputs
    sio = info.manifest.get("single_io")
    if isinstance(sio, dict) and sio.get("inputs") and sio.get("outputs"):
        def conv(items):
            return [TensorSpec(d["name"], d["data_type"], list(d["dims"])) for d in items]

        return conv(sio["inputs"]), conv(sio["outputs"])
    return (
        [TensorSpec("input_ids", "TYPE_INT32", [-1]), TensorSpec("attention_mask", "TYPE_INT32", [-1])],
        [TensorSpec("logits", "TYPE_FP32", [info.num_labels or -1])],
    )


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


def _params(cfg, params: dict[str, str]) -> None:
    for k, v in params.items():
        cfg.parameters[k].string_value = str(v)


def text_model_config(*, max_batch: int, max_queue_delay_us: int, num_labels: int | None, instances: int,
                      instance_kind: str, params: dict[str, str], name: str = TEXT_MODEL):
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    _add_io(cfg, "input", [TensorSpec("TEXT", "TYPE_STRING", [1])])
    _add_io(cfg, "output", [
        TensorSpec("LABEL", "TYPE_STRING", [1]),
        TensorSpec("LABEL_ID", "TYPE_INT32", [1]),
        TensorSpec("PROBABILITIES", "TYPE_FP32", [num_labels or -1]),
        TensorSpec("KEPT_TOKENS", "TYPE_STRING", [1]),
    ])
    if max_batch > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    g = cfg.instance_group.add()
    g.count = instances
    g.kind = pb2.ModelInstanceGroup.Kind.Value(instance_kind)
    _params(cfg, params)
    return cfg


def tokenizer_model_config(*, max_batch: int, max_queue_delay_us: int, instances: int, params: dict[str, str]):
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=TOKENIZER_MODEL, backend="python", max_batch_size=max_batch)
    _add_io(cfg, "input", [TensorSpec("TEXT", "TYPE_STRING", [1])])
    _add_io(cfg, "output", [TensorSpec("input_ids", "TYPE_INT32", [-1]),
                            TensorSpec("attention_mask", "TYPE_INT32", [-1])])
    if max_batch > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    g = cfg.instance_group.add()
    g.count = instances
    g.kind = pb2.ModelInstanceGroup.Kind.KIND_CPU
    _params(cfg, params)
    return cfg


def plan_model_config(*, max_batch: int, max_queue_delay_us: int, inputs: Sequence[TensorSpec],
                      outputs: Sequence[TensorSpec]):
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=PLAN_MODEL, platform="tensorrt_plan", max_batch_size=max_batch,
                          default_model_filename="model.plan")
    _add_io(cfg, "input", inputs)
    _add_io(cfg, "output", outputs)
    if max_batch > 0:
        # Only requests of the same padded length are joined (no ragged batching): see tokenizer padding.
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    g = cfg.instance_group.add()
    g.count = 1
    g.kind = pb2.ModelInstanceGroup.Kind.KIND_GPU
    return cfg


def ensemble_model_config(*, max_batch: int, plan_inputs: Sequence[TensorSpec], plan_outputs: Sequence[TensorSpec]):
    pb2, _ = _pb2()
    cfg = pb2.ModelConfig(name=ENSEMBLE_MODEL, platform="ensemble", max_batch_size=max_batch)
    _add_io(cfg, "input", [TensorSpec("TEXT", "TYPE_STRING", [1])])
    _add_io(cfg, "output", plan_outputs)
    step = cfg.ensemble_scheduling.step.add()
    step.model_name = TOKENIZER_MODEL
    step.model_version = -1
    step.input_map["TEXT"] = "TEXT"
    step.output_map["input_ids"] = "_input_ids"
    step.output_map["attention_mask"] = "_attention_mask"
    step = cfg.ensemble_scheduling.step.add()
    step.model_name = PLAN_MODEL
    step.model_version = -1
    names = {s.name for s in plan_inputs}
    if names != {"input_ids", "attention_mask"}:
        raise RepositoryError(f"single engine inputs are {sorted(names)}; the ensemble needs input_ids, attention_mask")
    step.input_map["input_ids"] = "_input_ids"
    step.input_map["attention_mask"] = "_attention_mask"
    for s in plan_outputs:
        step.output_map[s.name] = s.name
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
    models: list[str]
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
    artifact_dir: str | os.PathLike,
    repo_dir: str | os.PathLike,
    *,
    max_batch: int = 32,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    instance_kind: str = "KIND_CPU",
    backend_kind: str = "auto",
    with_tensorrt_plan: bool | None = None,
    precision: str | None = None,
    artifact_mode: str = "copy",
    pad_to_multiple_of: int = 8,
    python_path: str | None = None,
    backend_factory: str | None = None,
    overwrite: bool = False,
) -> RepositoryInfo:
    """Write the repository (see the module docstring) and return what was written.

    ``artifact_mode``: ``copy`` (default; self-contained repository), ``hardlink`` (same, without
    duplicating bytes where the file system allows), ``reference`` (config.pbtxt holds the artifact's
    absolute path: the repository is then only valid on this machine while the artifact stays put).
    ``with_tensorrt_plan``: ``None`` = write the plan/tokenizer/ensemble models when the artifact has a
    single engine; ``True`` requires one. ``python_path``: folders the Python-backend stub prepends to
    ``sys.path`` to import ``adapler_export`` (default: where this package is imported from).
    """
    if artifact_mode not in ("copy", "hardlink", "reference"):
        raise RepositoryError(f"artifact_mode must be copy, hardlink or reference, not {artifact_mode!r}")
    if max_batch < 1:
        raise RepositoryError("max_batch must be >= 1")
    info = inspect_artifact(artifact_dir, precision)
    want_plan = with_tensorrt_plan if with_tensorrt_plan is not None else info.single_engine is not None
    if want_plan and info.single_engine is None:
        raise RepositoryError(
            f"--with-tensorrt-plan: artifact {info.path} has no engines/single.{info.precision}.plan "
            "(build it where TensorRT exists)"
        )
    if want_plan and info.plugin is None:
        raise RepositoryError(
            f"--with-tensorrt-plan: artifact {info.path} has no plugins/{PLUGIN_LIB}; the single engine's "
            "TokenCompact layers cannot be deserialized without it"
        )
    repo = pathlib.Path(repo_dir).resolve()
    if repo.exists() and not overwrite:
        raise RepositoryError(f"{repo} exists (pass overwrite=True / --force to replace it)")
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-", dir=repo.parent))
    try:
        models = [TEXT_MODEL]
        # --- adapler_text ---------------------------------------------------------------------------
        version = tmp / TEXT_MODEL / "1"
        version.mkdir(parents=True)
        shutil.copy2(_HERE / "model.py", version / "model.py")
        if artifact_mode == "reference":
            artifact_param = str(info.path)
        else:
            _copy_tree(info.path, version / "artifact", artifact_mode)
            artifact_param = "artifact"
        params = {
            "artifact_dir": artifact_param,
            "backend_kind": backend_kind,
            "python_path": python_path if python_path is not None else str(_HERE.parents[1]),
            "pad_to_multiple_of": "1",
        }
        if backend_factory:
            params["backend_factory"] = backend_factory
        _write_config(
            text_model_config(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                              num_labels=info.num_labels, instances=instances, instance_kind=instance_kind,
                              params=params),
            tmp / TEXT_MODEL / "config.pbtxt",
        )
        # --- single engine: plan + tokenizer + ensemble -----------------------------------------------
        if want_plan:
            inputs, outputs = plan_io(info)
            profile_batch, profile_seq = engine_profile_max(info.manifest)
            plan_batch = min(max_batch, profile_batch) if profile_batch else max_batch
            plan_seq = min(info.max_length, profile_seq) if profile_seq else info.max_length
            (tmp / PLAN_MODEL / "1").mkdir(parents=True)
            shutil.copy2(info.single_engine, tmp / PLAN_MODEL / "1" / "model.plan")
            _write_config(plan_model_config(max_batch=plan_batch, max_queue_delay_us=max_queue_delay_us,
                                            inputs=inputs, outputs=outputs), tmp / PLAN_MODEL / "config.pbtxt")
            tv = tmp / TOKENIZER_MODEL / "1"
            tv.mkdir(parents=True)
            shutil.copy2(_HERE / "tokenizer_model.py", tv / "model.py")
            shutil.copytree(info.path / "tokenizer", tv / "tokenizer")
            _write_config(
                tokenizer_model_config(max_batch=plan_batch, max_queue_delay_us=max_queue_delay_us,
                                       instances=instances,
                                       params={"max_length": str(plan_seq),
                                               "pad_to_multiple_of": str(pad_to_multiple_of)}),
                tmp / TOKENIZER_MODEL / "config.pbtxt",
            )
            (tmp / ENSEMBLE_MODEL / "1").mkdir(parents=True)
            _write_config(ensemble_model_config(max_batch=plan_batch, plan_inputs=inputs, plan_outputs=outputs),
                          tmp / ENSEMBLE_MODEL / "config.pbtxt")
            (tmp / "plugins").mkdir()
            shutil.copy2(info.plugin, tmp / "plugins" / PLUGIN_LIB)
            models += [PLAN_MODEL, TOKENIZER_MODEL, ENSEMBLE_MODEL]
        validate_repository(tmp)
        command = tritonserver_command(repo, want_plan)
        (tmp / "README.md").write_text(_readme(repo, info, models, artifact_mode, max_batch, command), encoding="utf-8")
        (tmp / "repository.json").write_text(json.dumps({
            "artifact": str(info.path), "artifact_mode": artifact_mode, "models": models,
            "max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "precision": info.precision,
            "labels": info.labels, "max_length": info.max_length,
        }, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        # --- move into place ------------------------------------------------------------------------
        old = None
        if repo.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{repo.name}.old-", dir=repo.parent))
            os.rmdir(old)
            os.rename(repo, old)
        os.rename(tmp, repo)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RepositoryInfo(repo, models, info.path, artifact_mode, want_plan, command)


def tritonserver_command(repo: pathlib.Path, with_plan: bool) -> str:
    cmd = f"tritonserver --model-repository={repo}"
    if with_plan:
        cmd += f" --backend-config=tensorrt,plugins={repo}/plugins/{PLUGIN_LIB}"
    return cmd


def _readme(repo: pathlib.Path, info: ArtifactInfo, models: list[str], artifact_mode: str, max_batch: int,
            command: str) -> str:
    labels = ", ".join(info.labels) if info.labels else "(not in manifest: LABEL_<i>)"
    art = ("`adapler_text/1/artifact/` (a copy: the repository is self-contained)" if artifact_mode != "reference"
           else f"`{info.path}` (referenced by absolute path in `adapler_text/config.pbtxt`: keep it there)")
    text = f"""\
    # Triton model repository for an AdapLeR artifact

    Written by `adapler_export.serving.write_model_repository` from `{info.path}`.
    Models: {", ".join(f"`{m}`" for m in models)}. Labels: {labels}. max_length: {info.max_length} wordpieces.
    Artifact used by `adapler_text`: {art}.

    ## `adapler_text` (Python backend; ONNX Runtime on CPU, TensorRT segments on GPU)
    Input `TEXT` (BYTES, shape [batch, 1], batch <= {max_batch}, UTF-8). Outputs per row: `LABEL` (BYTES, label
    name), `LABEL_ID` (INT32), `PROBABILITIES` (FP32 [C]), `KEPT_TOKENS` (BYTES: JSON
    `{{"tokens", "kept_positions", "kept_tokens", "truncated"}}`; `kept_tokens[k]` = the wordpieces that enter
    encoder layer k, i.e. the model's rationale). Empty text is classified as `[CLS] [SEP]`; text longer than
    {info.max_length} wordpieces is truncated (warning in the server log, `"truncated": true`); non-UTF-8 text
    gets an error for that request only.

    Needs, in the Python that runs the backend stub: numpy, transformers, onnxruntime and the
    `adapler_export` package (the config's `python_path` parameter puts its folder on `sys.path`).

    ### Start it on this machine (tritonserver from the `nvidia-pytriton` wheel, loopback only)
    ```
    adapler-export serve --repo {repo}
    # or, from Python:
    python -c "from adapler_export.serving import TritonServer; s = TritonServer('{repo}').start(); print(s.describe()); input()"
    ```
    (`TritonServer` builds a backends folder with the wheel's Python backend plus the stub for this Python,
    sets LD_LIBRARY_PATH to the wheel's libraries, picks free 127.0.0.1 ports and waits for readiness.)

    ### Query it
    ```
    python examples/triton_client.py --url 127.0.0.1:<http port> "a gorgeous, witty, seductive movie."
    ```
    """
    if "adapler_plan" in models:
        text += f"""
    ## `adapler_plan` + `adapler_tokenizer` + `adapler_ensemble` (TensorRT single engine, GPU)
    `adapler_plan` serves `engines/single.{info.precision}.plan` (TokenCompact plugin layers inside) with
    dynamic sequence dims (-1); `adapler_ensemble` = `adapler_tokenizer` (TEXT -> input_ids, attention_mask
    INT32) -> `adapler_plan`. Needs a Triton server with the TensorRT backend of the **same TensorRT version**
    the engine was built with, a GPU, and the plugin library loaded:
    ```
    {command}
    ```
    (or `LD_PRELOAD={repo}/plugins/{PLUGIN_LIB} tritonserver --model-repository={repo}`). That loads all
    models; `adapler_text` then needs numpy, transformers, onnxruntime and `adapler_export` in the server's
    Python. To serve the engine path alone (it needs only `pip install transformers` there):
    ```
    {command} --model-control-mode=explicit --load-model={ENSEMBLE_MODEL}
    ```
    The ensemble's outputs are the engine's (`logits`, `kept_positions_<k>`); `adapler_tokenizer` pads each
    request to a multiple of 8 wordpieces (<= {info.max_length}) so equal-length requests can be batched.
    The pytriton wheel has no TensorRT backend: locally `adapler-export serve` loads only the Python models.
    Check it against the local backend: `ADAPLER_TRITON_PLAN_URL=<host:http port> pytest tests/test_serving.py
    -k tensorrt_ensemble` (with the artifact as the `built_artifact` fixture).
    """
    return textwrap.dedent(text)
