"""Test helpers: a real tiny AdapLeR checkpoint and artifact, and a backend that fails on a marker token.

* :func:`make_tiny_checkpoint` — a randomly initialised 2-layer BERT (hidden 32) over a small WordPiece
  vocabulary, wrapped in ``AdapLeRForSequenceClassification`` and saved with ``save_checkpoint``: the
  real model code, the real checkpoint format, seconds to build. Predictions are meaningless (random
  weights); kept tokens and the chain are the real ones.
* :func:`make_tiny_artifact` — that checkpoint through ``build.build_artifact`` (export, polygraphy,
  parity against the PyTorch reference, manifest).
* :func:`with_single_engine_record` — a copy of an artifact whose manifest records a single TensorRT
  engine (placeholder plan and plugin files: no TensorRT here), written through ``write_manifest``; for
  repository-writing tests only (nothing loads the plan).
* :func:`load_marker_failing_backend` — a ``backend_factory`` for the Triton model: the artifact's real
  backend, except that a batch holding the token ``explode`` raises. The Triton model imports it through
  ``ADAPLER_PYTHONPATH`` (the folder of this file), as it imports any user factory.

Top-level imports stay light (no torch): the Triton Python-backend stub imports this module.
"""
from __future__ import annotations

import os
import pathlib
import shutil

FAIL_MARKER = "explode"
TESTS_DIR = pathlib.Path(__file__).resolve().parent
SST2_DIR = TESTS_DIR.parents[0].parent / "shared" / "data" / "sst2"
TINY_MAX_LENGTH = 48
TINY_ETAS = (1.0, 1.0)  # high enough that random contribution predictors drop tokens at every link

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("the a an and or but not no it 's is was be this that of to in on for with as at by from film "
          "movie story good great bad best worst fun funny dull boring charming witty moving love bleak "
          "desperate gorgeous seductive journey often affecting performance characters director one all "
          "more most too very so than just like even if about " + FAIL_MARKER).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()\"")


def tiny_vocab() -> list:
    """Special tokens, some whole words, and every character alone and as a continuation (##c), so that
    any ASCII word tokenizes without [UNK]."""
    return list(dict.fromkeys(_SPECIAL + _WORDS + _CHARS + ["##" + c for c in _CHARS]))


def make_tiny_tokenizer(scratch: pathlib.Path):
    """A lower-casing BERT WordPiece tokenizer over :func:`tiny_vocab` (``scratch``: for transformers 4,
    which builds it from a vocab.txt file)."""
    from transformers import BertTokenizerFast

    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    try:  # transformers 5 builds the WordPiece model from a dict
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=TINY_MAX_LENGTH)
    except (TypeError, ValueError):  # transformers 4: from a vocab file
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(scratch / "vocab.txt"), do_lower_case=True,
                                      model_max_length=TINY_MAX_LENGTH)
    if tokenizer.convert_tokens_to_ids(FAIL_MARKER) != vocab[FAIL_MARKER]:
        raise RuntimeError("the tiny tokenizer did not take the tiny vocabulary")
    return tokenizer


def make_tiny_checkpoint(output, seed: int = 0) -> pathlib.Path:
    """Write a tiny real AdapLeR checkpoint to ``output`` (a path) and return it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from adapler_export.checkpoint import AdapLeRConfig, Checkpoint, save_checkpoint
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    output = pathlib.Path(output)
    scratch = output.parent / f".{output.name}-vocab"
    tokenizer = make_tiny_tokenizer(scratch)
    torch.manual_seed(seed)
    labels = ["negative", "positive"]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = AdapLeRForSequenceClassification(BertForSequenceClassification(config)).eval()
    with torch.no_grad():
        model.eta.copy_(torch.tensor(TINY_ETAS))
    adapler_config = AdapLeRConfig(backbone="tiny-random-bert", num_layers=model.num_layers,
                                   hidden_size=config.hidden_size, labels=labels, max_length=TINY_MAX_LENGTH,
                                   task="sst2")
    save_checkpoint(Checkpoint(model, tokenizer, adapler_config), output)
    shutil.rmtree(scratch, ignore_errors=True)
    return output


def make_tiny_artifact(checkpoint, output, samples: int = 32) -> pathlib.Path:
    """Build the checkpoint into an fp32 ONNX Runtime artifact (parity on ``samples`` SST-2 dev texts)."""
    from adapler_export.build import BuildOptions, build_artifact

    result = build_artifact(str(checkpoint), str(output), BuildOptions(samples=samples, data_dir=str(SST2_DIR)),
                            log=lambda message: None)
    return pathlib.Path(result.path)


def with_single_engine_record(artifact, output, max_batch: int = 8) -> pathlib.Path:
    """A copy of ``artifact`` whose manifest records a single TensorRT engine with plugin layers.

    The plan and plugin library are placeholder bytes (building them needs full TensorRT and a GPU); the
    record has the fields ``engines.build_artifact_engines`` writes (profile from ``engines.input_profile``,
    the network's I/O), and the manifest is rewritten by the one writer, ``write_manifest``.
    """
    from adapler_export.artifact import read_manifest, write_manifest
    from adapler_export.engines import PLUGIN_LIBRARY, PLUGINS_DIR, SINGLE_GRAPH, input_profile, plan_relpath

    output = pathlib.Path(output)
    shutil.copytree(artifact, output)
    manifest = read_manifest(output)
    plan, plugin = plan_relpath(SINGLE_GRAPH, manifest.precision), f"{PLUGINS_DIR}/{PLUGIN_LIBRARY}"
    for rel, content in ((plan, b"placeholder engine"), (plugin, b"placeholder plugin library")):
        (output / rel).parent.mkdir(parents=True, exist_ok=True)
        (output / rel).write_bytes(content)
    segment0 = manifest.specs()[0]
    logits, *kept = manifest.single_graph["outputs"]
    manifest.engines.single = {
        "plan_path": plan, "onnx_path": f"onnx/{SINGLE_GRAPH}", "precision": manifest.precision,
        "profiles": [input_profile(segment0.inputs, max_batch, manifest.max_length)], "plugin_library": plugin,
        "inputs": {name: {"dtype": dtype, "shape": [-1, -1]} for name, (dtype, _) in segment0.inputs.items()},
        "outputs": {logits: {"dtype": "float32", "shape": [-1, len(manifest.labels)]},
                    **{name: {"dtype": "int32", "shape": [-1, -1]} for name in kept}},
        "targets": None, "tf32": False, "timing_cache": "placeholder", "build_seconds": 0.0,
        "plan_bytes": len(b"placeholder engine"), "onnx_bytes": 0,
    }
    manifest.engines.not_built.pop("single", None)
    write_manifest(output, manifest)
    return output


def load_marker_failing_backend(artifact_dir, kind: str = "auto", **kwargs):
    """``backend_factory`` for the Triton model: the real backend, raising on a batch with ``explode``."""
    from adapler_export.backends import load_backend

    backend = load_backend(artifact_dir, kind, **kwargs)
    marker_id = _marker_id(artifact_dir)
    real_run = backend.run

    def run(input_ids, attention_mask):
        import numpy as np

        if np.any((np.asarray(input_ids) == marker_id) & (np.asarray(attention_mask) == 1)):
            raise RuntimeError(f"test backend: the input holds the marker token {FAIL_MARKER!r}")
        return real_run(input_ids, attention_mask)

    backend.run = run
    return backend


def _marker_id(artifact_dir) -> int:
    from adapler_export.artifact import resolve_artifact
    from adapler_export.serving.tokenization import load_tokenizer

    return load_tokenizer(resolve_artifact(artifact_dir) / "tokenizer").convert_tokens_to_ids(FAIL_MARKER)


def python_path_env() -> dict:
    """Environment for a TritonServer whose Triton model imports this module as a backend factory."""
    env = dict(os.environ)
    env["ADAPLER_PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("ADAPLER_PYTHONPATH")) if p)
    return env
