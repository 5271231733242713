"""A small stand-in artifact and backend for exercising the serving stack without a trained model.

``make_dev_artifact(dir)`` writes ``tokenizer/`` (a BERT WordPiece tokenizer over a small vocabulary),
``manifest.json`` (labels, max_length, eta per link) and, optionally, dummy ``engines/single.<p>.plan``
and ``plugins/libadapler_plugins.so`` files plus an ``onnx/single.onnx`` graph declaring the single
engine's I/O (for repository-writing tests; they are not runnable engines).

``load_dev_backend(artifact_dir, kind=...)`` returns :class:`DevBackend`: the ``Backend`` interface of
``docs/INTERFACES.md`` with a lexicon classifier and a real ``TokenCompact`` keep/compaction rule over
deterministic pseudo-scores, so kept positions look and behave like the real ones. A text containing the
word ``explode`` makes ``run`` raise (to test per-request failure isolation).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

POSITIVE = ["good", "great", "charming", "affecting", "gorgeous", "witty", "fun", "best", "love", "moving"]
NEGATIVE = ["bad", "bleak", "desperate", "dull", "boring", "worst", "mess", "awful", "tedious", "flat"]
FILLER = ["it", "'", "s", "a", "and", "often", "journey", ".", ",", "the", "movie", "film", "is", "this", "of",
          "to", "un", "##flin", "##ching", "##ly", "explode", "very", "not", "with", "in"]


@dataclasses.dataclass
class BackendOutput:
    logits: np.ndarray
    kept: list


def make_dev_artifact(out_dir, *, max_length: int = 32, etas=(0.9, 0.8, 0.7), precision: str = "fp32",
                      with_single_engine: bool = False) -> pathlib.Path:
    from transformers import BertTokenizerFast

    out = pathlib.Path(out_dir)
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    try:  # transformers >= 5: `vocab` (dict or path)
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_length)
    except TypeError:  # transformers 4: `vocab_file`
        vocab_file = out / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=max_length)
        vocab_file.unlink()
    if len(tok) != len(vocab):
        raise RuntimeError(f"dev tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    tok.save_pretrained(str(out / "tokenizer"))
    manifest = {
        "backbone": "dev-lexicon",
        "task": "sst2",
        "labels": ["negative", "positive"],
        "eta": list(etas),
        "precision": precision,
        "max_length": max_length,
        "dev_backend": True,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if with_single_engine:
        (out / "engines").mkdir(exist_ok=True)
        (out / "engines" / f"single.{precision}.plan").write_bytes(b"not a real engine")
        (out / "plugins").mkdir(exist_ok=True)
        (out / "plugins" / "libadapler_plugins.so").write_bytes(b"not a real library")
        _write_single_onnx_stub(out / "onnx" / "single.onnx", len(etas))
    return out


def _write_single_onnx_stub(path: pathlib.Path, n_links: int) -> None:
    """A graph with the single engine's I/O signature (contents irrelevant: only I/O is read)."""
    import onnx
    from onnx import TensorProto, helper

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "seq"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    outs = [logits] + [helper.make_tensor_value_info(f"kept_{k:02d}", TensorProto.INT32, ["batch", f"kept_len_{k}"])
                       for k in range(n_links)]
    nodes = [helper.make_node("Constant", [], ["logits"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1, 2], [0.0, 0.0]))]
    nodes += [helper.make_node("Identity", ["attention_mask"], [f"kept_{k:02d}"]) for k in range(n_links)]
    graph = helper.make_graph(nodes, "single_stub", [ids, mask], outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def token_compact(scores, mask, positions, eta):
    """The link rule of docs/INTERFACES.md (NumPy; used by the dev backend only)."""
    B = mask.shape[0]
    n = mask.sum(axis=1).astype(np.float32)
    keep = np.zeros_like(mask, dtype=bool)
    for b in range(B):
        if n[b] == 0:
            continue
        delta = np.float32(eta) / np.float32(n[b])
        keep[b] = (mask[b] == 1) & ((np.arange(mask.shape[1]) == 0) | (scores[b] >= delta))
    counts = keep.sum(axis=1)
    s_new = max(int(counts.max()), 1)
    pos_out = np.full((B, s_new), -1, dtype=np.int32)
    mask_out = np.zeros((B, s_new), dtype=np.int32)
    for b in range(B):
        idx = np.nonzero(keep[b])[0]
        pos_out[b, : len(idx)] = positions[b, idx]
        mask_out[b, : len(idx)] = 1
    return mask_out, pos_out


class DevBackend:
    name = "dev-lexicon"

    def __init__(self, artifact_dir):
        from transformers import AutoTokenizer

        art = pathlib.Path(artifact_dir)
        self.manifest = json.loads((art / "manifest.json").read_text())
        tok = AutoTokenizer.from_pretrained(str(art / "tokenizer"))
        self.pos_ids = set(tok.convert_tokens_to_ids(POSITIVE))
        self.neg_ids = set(tok.convert_tokens_to_ids(NEGATIVE))
        self.explode_id = tok.convert_tokens_to_ids("explode")
        self.etas = [float(e) for e in self.manifest["eta"]]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> BackendOutput:
        input_ids = np.asarray(input_ids)
        attention_mask = np.asarray(attention_mask)
        if input_ids.dtype != np.int32 or attention_mask.dtype != np.int32:
            raise TypeError("int32 inputs expected")
        if ((input_ids == self.explode_id) & (attention_mask == 1)).any():
            raise RuntimeError("dev backend: 'explode' in the input")
        B, S = input_ids.shape
        pos = np.where(attention_mask == 1, np.arange(S, dtype=np.int32)[None, :], -1).astype(np.int32)
        mask = attention_mask.copy()
        kept = []
        for eta in self.etas:
            ids_now = np.where(pos >= 0, np.take_along_axis(input_ids, np.maximum(pos, 0), axis=1), 0)
            raw = ((ids_now.astype(np.int64) * 2654435761) % 997 + 1).astype(np.float32) * mask
            scores = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-9)
            mask, pos_new = token_compact(scores, mask, pos, eta)
            pos = pos_new
            kept.append(pos.copy())
        logits = np.zeros((B, 2), dtype=np.float32)
        for b in range(B):
            row = input_ids[b][attention_mask[b] == 1]
            logits[b, 1] = sum(int(t) in self.pos_ids for t in row) + 0.1
            logits[b, 0] = sum(int(t) in self.neg_ids for t in row)
        return BackendOutput(logits, kept)


def load_dev_backend(artifact_dir, kind: str = "auto") -> DevBackend:
    return DevBackend(artifact_dir)
