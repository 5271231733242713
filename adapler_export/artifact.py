"""The artifact contract: one versioned manifest type, one reader, one writer (docs/INTERFACES.md).

An artifact is a folder written by `build` (or `quantize`):

    manifest.json   this contract (every key below, nothing else)
    onnx/           segment_XX.onnx, single.onnx (links as adapler::TokenCompact nodes)
    tokenizer/      save_pretrained
    engines/        TensorRT plans where built (what was not built, and why, is in `engines.not_built`)
    plugins/        libadapler_plugins.so where the single engine was built
    polygraphy/     per-segment inputs/outputs (polygraphy JSON)
    parity.json     the parity reports

`files` records the SHA-256 of every file the artifact consists of; `verify_files` checks them, so a
missing segment or a corrupted plan is found before anything loads it. Runtime caches that a runtime may
rewrite (TensorRT timing / runtime caches) are not part of the recorded content.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdaplerError
from .link import check_eta
from .serving.tokenization import HEAD, Cut, check_truncation
from .specs import TOKEN_TYPE_IDS, SegmentSpec
from .storage import artifacts_dir, sha256_file, write_text_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")
# How an int8 artifact's graphs were quantized (`Manifest.quantization["scheme"]`): "dynamic" (the library's
# `quantization` module: weight MatMuls int8, activations quantized per call; what `build --int8` and `quantize`
# write) or "static-qdq" (calibration/int8.py: QDQ with calibrated activation ranges). An int8 manifest written
# before schemes existed has no key: it is static-qdq, the only scheme then.
INT8_SCHEMES = ("dynamic", "static-qdq")
LEGACY_INT8_SCHEME = "static-qdq"
# Keys every int8 manifest's `quantization` has, per scheme (the rest of the record is the scheme's own detail).
INT8_RECORD_KEYS = {"dynamic": ("tool", "per_channel", "reduce_range", "cp_path", "cpu", "segments"),
                    "static-qdq": ("tool", "segments")}
CPU_RECORD_KEYS = ("isa", "flags", "reduce_range")  # quantization["cpu"]: what the CPU's flags decided
# Files a runtime may create or rewrite inside an artifact: not content, never digested.
VOLATILE_SUFFIXES = (".cache", ".runtime_cache")


class ManifestError(AdaplerError):
    """manifest.json is missing, unreadable, or breaks the contract."""


@dataclass
class EnginesRecord:
    """TensorRT engines in the artifact. `segments`/`single` hold the engine records that
    `engines.build_artifact_engines` writes (`plan_path` relative to the artifact, profiles, I/O, sizes);
    `not_built` says, per engine kind, why it is absent."""
    flavor: str | None = None  # "tensorrt" | "tensorrt_rtx"
    version: str | None = None
    segments: list = field(default_factory=list)
    single: dict | None = None
    not_built: dict = field(default_factory=dict)  # kind ("segments", "single") -> reason

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "EnginesRecord":
        _check_keys(data, cls, where)
        record = cls(**data)
        if not isinstance(record.segments, list) or not all(isinstance(e, dict) and "plan_path" in e
                                                            for e in record.segments):
            raise ManifestError(f"{where}.segments must be a list of engine records with 'plan_path'")
        return record


@dataclass
class Manifest:
    checkpoint: dict  # {"path": str, "digest": str}
    backbone: str
    task: str
    labels: list
    max_length: int
    num_layers: int
    hidden_size: int
    eta: list  # per link k = 0..L-1
    precision: str
    opset: int
    segments: list  # SegmentSpec.to_dict() per segment 0..L
    single_graph: dict  # {"file", "link_op", "outputs"}: links as adapler::TokenCompact (full TensorRT + plugin)
    one_graph: dict | None = None  # {"file", "outputs"}: the whole model in standard ONNX ops; None: not built
    # How a text longer than max_length is cut (serving.tokenization.TRUNCATIONS): the checkpoint's rule.
    # Manifests written before the rule existed lack the key: their models were all cut by "head".
    truncation: str = HEAD
    engines: EnginesRecord = field(default_factory=EnginesRecord)
    tools: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)  # form ("onnxruntime", "polygraphy_segments", ...) -> report
    files: dict = field(default_factory=dict)  # relative path -> sha256
    build_seconds: float = 0.0
    derived_from: dict | None = None  # quantize: {"path", "precision"} of the source artifact
    # int8 only: how the graphs were quantized ("scheme", INT8_RECORD_KEYS, and where the CPU decided the
    # settings, "cpu": {"isa", "flags", "reduce_range", ...}); None for fp32 / fp16.
    quantization: dict | None = None
    format_version: int = FORMAT_VERSION

    # ----- views ---------------------------------------------------------------------------------------
    def specs(self) -> list:
        return [SegmentSpec.from_dict(s) for s in self.segments]

    @property
    def text_pair(self) -> bool:
        """A sentence-pair model: segment 0 (and so every whole-model graph) takes token_type_ids. Artifacts
        built before pairs existed take ids and mask only, as a single-text model's do."""
        return TOKEN_TYPE_IDS in self.segments[0]["inputs"]

    @property
    def cut(self) -> Cut:
        """How the model's inputs are cut: max_length and the truncation rule (what every consumer encodes by)."""
        return Cut(self.max_length, self.truncation)

    @property
    def int8_scheme(self) -> str | None:
        """How an int8 artifact was quantized (INT8_SCHEMES); None for fp32 / fp16."""
        if self.precision != "int8":
            return None
        return (self.quantization or {}).get("scheme", LEGACY_INT8_SCHEME)

    def segment_paths(self, artifact_dir) -> list:
        return [Path(artifact_dir) / "onnx" / s["file"] for s in self.segments]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["engines"] = dataclasses.asdict(self.engines)
        return data

    # ----- validation ----------------------------------------------------------------------------------
    def validate(self, where: str = MANIFEST) -> "Manifest":
        if self.format_version != FORMAT_VERSION:
            raise ManifestError(f"{where}: format_version {self.format_version!r}, this adapler-export reads "
                                f"{FORMAT_VERSION}; rebuild the artifact with `adapler-export build`")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"{where}: precision {self.precision!r} is not one of {PRECISIONS}")
        for key in ("max_length", "num_layers", "hidden_size", "opset"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ManifestError(f"{where}: {key} must be a positive integer, got {value!r}")
        if not isinstance(self.labels, list) or len(self.labels) < 2 or not all(isinstance(x, str)
                                                                                 for x in self.labels):
            raise ManifestError(f"{where}: labels must be a list of at least two names, got {self.labels!r}")
        if not isinstance(self.eta, list) or len(self.eta) != self.num_layers:
            raise ManifestError(f"{where}: eta must list one threshold per layer ({self.num_layers}), "
                                f"got {self.eta!r}")
        for k, eta in enumerate(self.eta):
            if isinstance(eta, bool) or not isinstance(eta, (int, float)):
                raise ManifestError(f"{where}: eta[{k}] is {eta!r}, not a number")
            try:
                check_eta(eta)
            except ValueError as exc:
                raise ManifestError(f"{where}: eta[{k}]: {exc}") from None
        if not isinstance(self.segments, list) or len(self.segments) != self.num_layers + 1:
            raise ManifestError(f"{where}: segments must describe {self.num_layers + 1} segments")
        try:
            self.specs()
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: a segment record is malformed ({exc})") from None
        try:
            check_truncation(self.truncation, self.text_pair)
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        if not isinstance(self.checkpoint, dict) or set(self.checkpoint) != {"path", "digest"}:
            raise ManifestError(f"{where}: checkpoint must be {{'path', 'digest'}}, got {self.checkpoint!r}")
        if not isinstance(self.files, dict):
            raise ManifestError(f"{where}: files must map relative paths to sha256 digests")
        self._validate_quantization(where)
        return self

    def _validate_quantization(self, where: str) -> None:
        record = self.quantization
        if self.precision != "int8":
            if record is not None:
                raise ManifestError(f"{where}: quantization is recorded for a {self.precision} artifact")
            return
        if not isinstance(record, dict):
            raise ManifestError(f"{where}: an int8 artifact must record its quantization")
        scheme = self.int8_scheme
        if scheme not in INT8_SCHEMES:
            raise ManifestError(f"{where}: quantization.scheme {scheme!r} is not one of {INT8_SCHEMES}")
        if "scheme" not in record:  # written before schemes: its own keys were never checked
            return
        missing = [k for k in INT8_RECORD_KEYS[scheme] if k not in record]
        if missing:
            raise ManifestError(f"{where}: quantization is missing key {missing[0]!r}")
        cpu = record.get("cpu")
        if cpu is not None or scheme == "dynamic":
            if not isinstance(cpu, dict) or any(k not in cpu for k in CPU_RECORD_KEYS):
                raise ManifestError(f"{where}: quantization.cpu must record {', '.join(CPU_RECORD_KEYS)}")
        for key in ("per_channel", "reduce_range"):
            if key in record and not isinstance(record[key], bool):
                raise ManifestError(f"{where}: quantization.{key} must be true or false, got {record[key]!r}")


def _check_keys(data, cls, where: str) -> None:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r} (this adapler-export writes "
                            f"{', '.join(sorted(fields))})")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ManifestError(f"{where}: missing key {missing[0]!r}")


def manifest_from_dict(data: dict, where: str = MANIFEST) -> Manifest:
    _check_keys(data, Manifest, where)
    data = dict(data)
    data["engines"] = EnginesRecord.from_dict(data.get("engines", {}), f"{where}: engines")
    return Manifest(**data).validate(where)


def resolve_artifact(name_or_path) -> Path:
    """A path, or a bare name under $ADAPLER_HOME/artifacts (as checkpoints resolve)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if os.sep in text or text.startswith(".") or path.exists():
        return path.resolve()
    return artifacts_dir() / text


def read_manifest(artifact_dir) -> Manifest:
    """The one reader: a clear one-line error naming the file and the key for anything off-contract."""
    artifact = resolve_artifact(artifact_dir)
    path = artifact / MANIFEST
    if not artifact.is_dir():
        raise ManifestError(f"no artifact at {artifact}; build one with `adapler-export build --ckpt NAME`")
    if not path.is_file():
        raise ManifestError(f"{artifact} is not a build artifact (no {MANIFEST}); run `adapler-export build`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); rebuild the artifact") from None
    return manifest_from_dict(data, str(path))


def _no_constants(name):
    raise ValueError(f"{name} is not a JSON number")


def content_files(artifact_dir: Path) -> list:
    """Every file that is part of the artifact's content (relative, sorted)."""
    artifact_dir = Path(artifact_dir)
    out = []
    for path in sorted(artifact_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.endswith(VOLATILE_SUFFIXES):
            out.append(path.relative_to(artifact_dir).as_posix())
    return out


def write_manifest(artifact_dir, manifest: Manifest) -> Path:
    """The one writer: records the digest of every content file, validates, writes atomically."""
    artifact_dir = Path(artifact_dir)
    manifest.files = {rel: sha256_file(artifact_dir / rel) for rel in content_files(artifact_dir)}
    manifest.validate()
    data = manifest.to_dict()
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return write_text_atomic(artifact_dir / MANIFEST, text)


def record_parity(artifact_dir, manifest: Manifest, parity: dict, started: float) -> None:
    """The last step of writing an artifact: parity.json, and the manifest with the parity results, the
    build time and the digests of everything (parity.json included)."""
    artifact_dir = Path(artifact_dir)
    write_text_atomic(artifact_dir / "parity.json", json.dumps(parity, indent=2) + "\n")
    manifest.parity = parity
    manifest.build_seconds = round(time.time() - started, 1)
    write_manifest(artifact_dir, manifest)


def verify_files(artifact_dir, manifest: Manifest) -> None:
    """Every recorded file present with its recorded digest; raises ManifestError naming the first bad one."""
    artifact_dir = resolve_artifact(artifact_dir)
    if not manifest.files:
        raise ManifestError(f"{artifact_dir / MANIFEST}: records no files; rebuild the artifact")
    for rel, digest in manifest.files.items():
        path = artifact_dir / rel
        if not path.is_file():
            raise ManifestError(f"artifact {artifact_dir} is missing {rel}")
        if sha256_file(path) != digest:
            raise ManifestError(f"artifact {artifact_dir}: {rel} does not match its recorded sha256 "
                                f"(modified or corrupted); rebuild the artifact")


def open_artifact(artifact_dir, check_files: bool = True) -> tuple:
    """(path, manifest) of a readable, intact artifact: what every consumer starts with."""
    path = resolve_artifact(artifact_dir)
    manifest = read_manifest(path)
    if check_files:
        verify_files(path, manifest)
    return path, manifest
