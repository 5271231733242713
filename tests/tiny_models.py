"""Tiny real models for tests: a randomly initialised BERT AdapLeR model over a small WordPiece vocabulary.

The real model code, the real checkpoint format and the real build: seconds instead of minutes.
Predictions are meaningless (random weights); kept tokens, the chain and the contract are the real ones.
Top-level imports stay light (no torch): the Triton Python-backend stub imports serving_fixtures, which
imports this module.
"""
from __future__ import annotations

import pathlib
import shutil

FAIL_MARKER = "explode"
TESTS_DIR = pathlib.Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR.parents[0].parent / "shared" / "data"
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


LABELS = ["negative", "positive"]
PAIR_TYPE_GAIN = 50.0  # scales the second token type's embedding of a tiny pair model: its types matter a lot


def tiny_model(seed: int = 0, eta=0.6, vocab_size: int = 200, layers: int = 3, cp_gain: float = 40.0,
               labels=LABELS, text_pair: bool = False):
    """A random BERT AdapLeR model; `cp_gain` scales the CPs' output layer so that they are opinionated
    enough to really drop tokens; `eta` is one value for every layer or one per layer. `text_pair`: a
    sentence-pair model whose second token type moves the embeddings far (PAIR_TYPE_GAIN), so that logits
    and kept tokens depend on the token types."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = AdapLeRForSequenceClassification(BertForSequenceClassification(config), text_pair=text_pair).eval()
    with torch.no_grad():
        model.eta.copy_(torch.as_tensor(eta, dtype=model.eta.dtype).expand_as(model.eta))
        for cp in model.cps:
            cp.dense_out.weight.mul_(cp_gain)
        if text_pair:
            model.base.embeddings.token_type_embeddings.weight[1].mul_(PAIR_TYPE_GAIN)
    return model


def make_tiny_checkpoint(output, seed: int = 0, layers: int = 2, eta=TINY_ETAS, cp_gain: float = 1.0,
                         task: str = "sst2") -> pathlib.Path:
    """Write a tiny real AdapLeR checkpoint of `task` (a sentence-pair model for mrpc / rte) to `output` (a
    path) and return it."""
    from adapler_export.checkpoint import AdapLeRConfig, Checkpoint, save_checkpoint
    from adapler_export.data import TASKS, task_reads_pairs

    output = pathlib.Path(output)
    scratch = output.parent / f".{output.name}-vocab"
    tokenizer = make_tiny_tokenizer(scratch)
    labels = TASKS[task]["labels"]
    model = tiny_model(seed, eta, vocab_size=len(tokenizer), layers=layers, cp_gain=cp_gain, labels=labels,
                       text_pair=task_reads_pairs(task))
    adapler_config = AdapLeRConfig(backbone="tiny-random-bert", num_layers=layers, hidden_size=32, labels=labels,
                                   max_length=TINY_MAX_LENGTH, task=task)
    save_checkpoint(Checkpoint(model, tokenizer, adapler_config), output)
    shutil.rmtree(scratch, ignore_errors=True)
    return output


def make_tiny_artifact(checkpoint, output, samples: int = 32, task: str = "sst2") -> pathlib.Path:
    """Build the checkpoint into an fp32 ONNX Runtime artifact (parity on ``samples`` dev examples of `task`,
    the checkpoint's)."""
    from adapler_export.build import BuildOptions, build_artifact

    result = build_artifact(str(checkpoint), str(output), BuildOptions(samples=samples, data_dir=str(DATA_DIR / task)),
                            log=lambda message: None)
    return pathlib.Path(result.path)
