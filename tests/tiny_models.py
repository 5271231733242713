"""Tiny real models for tests: randomly initialised AdapLeR models over a small vocabulary, no download.

BERT (the default), RoBERTa, ELECTRA and DistilBERT (`TINY_FAMILIES`): BERT, ELECTRA and DistilBERT read a
small WordPiece vocabulary, RoBERTa a small byte-level BPE one with its own special tokens.

The real model code, the real checkpoint format and the real build: seconds instead of minutes.
Predictions are meaningless (random weights); kept tokens, the chain and the contract are the real ones.
Top-level imports stay light (no torch): the Triton Python-backend stub imports serving_fixtures, which
imports this module.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

FAIL_MARKER = "explode"
TESTS_DIR = pathlib.Path(__file__).resolve().parent


def data_dir() -> pathlib.Path:
    """The folder of task folders the tests read: $ADAPLER_DATA_DIR, else ../shared/data (the README's order;
    the one place the tests decide it)."""
    env = os.environ.get("ADAPLER_DATA_DIR")
    return pathlib.Path(env) if env else TESTS_DIR.parents[1] / "shared" / "data"


DATA_DIR = data_dir()
SST2_DIR = DATA_DIR / "sst2"
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


def make_tiny_tokenizer(scratch: pathlib.Path, family: str = "bert"):
    """A lower-casing BERT WordPiece tokenizer over :func:`tiny_vocab` (``scratch``: for transformers 4,
    which builds it from a vocab.txt file); for ``family="roberta"`` :func:`make_tiny_bpe_tokenizer`."""
    from transformers import BertTokenizerFast

    if family == "roberta":
        return make_tiny_bpe_tokenizer()

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


ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as RoBERTa's config expects


def make_tiny_bpe_tokenizer():
    """A RoBERTa tokenizer (byte-level BPE, `<s>`/`</s>`, padding id 1) trained offline on the tiny words."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(_WORDS)], vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=ROBERTA_SPECIAL)
    merges = [tuple(pair) for pair in json.loads(bpe._tokenizer.to_str())["model"]["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges, model_max_length=TINY_MAX_LENGTH)
    if tokenizer.convert_tokens_to_ids(ROBERTA_SPECIAL) != list(range(len(ROBERTA_SPECIAL))):
        raise RuntimeError("the tiny BPE tokenizer's special tokens are not RoBERTa's ids")
    return tokenizer


LABELS = ["negative", "positive"]
PAIR_TYPE_GAIN = 50.0  # scales the second token type's embedding of a tiny pair model: its types matter a lot
TINY_FAMILIES = ("bert", "roberta", "electra", "distilbert")


def tiny_backbone(family: str, vocab_size: int, layers: int, labels=LABELS):
    """A randomly initialised `*ForSequenceClassification` of `family`: hidden 32, 2 heads, FFN 64.
    ELECTRA's embeddings are 16 wide, so its `embeddings_project` (16 -> 32) is on the path."""
    import transformers as hf

    labels = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {n: i for i, n in enumerate(labels)}}
    if family == "distilbert":
        return hf.DistilBertForSequenceClassification(hf.DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=layers, n_heads=2, hidden_dim=64, max_position_embeddings=64,
            **labels))
    sizes = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64, **labels}
    if family == "bert":
        return hf.BertForSequenceClassification(hf.BertConfig(**sizes))
    if family == "roberta":  # positions start after the padding id: 48 tokens need 50 position rows
        return hf.RobertaForSequenceClassification(hf.RobertaConfig(
            **sizes, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    if family == "electra":
        return hf.ElectraForSequenceClassification(hf.ElectraConfig(**sizes, embedding_size=16))
    raise ValueError(f"unknown tiny family {family!r} (one of {TINY_FAMILIES})")


def tiny_model(seed: int = 0, eta=0.6, vocab_size: int = 200, layers: int = 3, cp_gain: float = 40.0,
               labels=LABELS, text_pair: bool = False, family: str = "bert"):
    """A random AdapLeR model over a tiny `family` backbone; `cp_gain` scales the CPs' output layer so that
    they are opinionated enough to really drop tokens; `eta` is one value for every layer or one per layer.
    `text_pair`: a sentence-pair model whose second token type moves the embeddings far (PAIR_TYPE_GAIN), so
    that logits and kept tokens depend on the token types."""
    import torch

    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    torch.manual_seed(seed)
    model = AdapLeRForSequenceClassification(tiny_backbone(family, vocab_size, layers, labels),
                                             text_pair=text_pair).eval()
    with torch.no_grad():
        model.eta.copy_(torch.as_tensor(eta, dtype=model.eta.dtype).expand_as(model.eta))
        for cp in model.cps:
            cp.dense_out.weight.mul_(cp_gain)
        if text_pair:
            model.base.embeddings.token_type_embeddings.weight[1].mul_(PAIR_TYPE_GAIN)
    return model


def make_tiny_checkpoint(output, seed: int = 0, layers: int = 2, eta=TINY_ETAS, cp_gain: float = 1.0,
                         task: str = "sst2", family: str = "bert") -> pathlib.Path:
    """Write a tiny real AdapLeR checkpoint of `task` (a sentence-pair model for mrpc / rte) over a tiny
    `family` backbone to `output` (a path) and return it."""
    from adapler_export.checkpoint import AdapLeRConfig, Checkpoint, save_checkpoint
    from adapler_export.data import TASKS, task_reads_pairs

    output = pathlib.Path(output)
    scratch = output.parent / f".{output.name}-vocab"
    tokenizer = make_tiny_tokenizer(scratch, family)
    labels = TASKS[task]["labels"]
    model = tiny_model(seed, eta, vocab_size=len(tokenizer), layers=layers, cp_gain=cp_gain, labels=labels,
                       text_pair=task_reads_pairs(task), family=family)
    adapler_config = AdapLeRConfig(backbone=f"tiny-random-{family}", num_layers=layers, hidden_size=32,
                                   labels=labels, max_length=TINY_MAX_LENGTH, task=task)
    save_checkpoint(Checkpoint(model, tokenizer, adapler_config), output)
    shutil.rmtree(scratch, ignore_errors=True)
    return output


def build_tiny(checkpoint, output, samples: int = 32, task: str = "sst2"):
    """Build the checkpoint into an fp32 ONNX Runtime artifact (parity on ``samples`` dev examples of `task`,
    the checkpoint's); returns the `build.BuildResult`."""
    from adapler_export.build import BuildOptions, build_artifact

    return build_artifact(str(checkpoint), str(output), BuildOptions(samples=samples, data_dir=str(DATA_DIR / task)),
                          log=lambda message: None)


def make_tiny_artifact(checkpoint, output, samples: int = 32, task: str = "sst2") -> pathlib.Path:
    """:func:`build_tiny`, returning the artifact's path."""
    return pathlib.Path(build_tiny(checkpoint, output, samples, task).path)
