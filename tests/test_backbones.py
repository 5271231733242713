"""Every backbone family the README promises (issue 11): BERT, RoBERTa, ELECTRA and DistilBERT.

Each is a tiny randomly initialised model built here (tests/tiny_models.py, no download): hidden 32, 2
layers, 2 heads, a small vocabulary (WordPiece; RoBERTa: byte-level BPE with `<s>`/`</s>`). For each, the
AdapLeR wrapper computes the library model's function, stage 3 trains every part, and a saved checkpoint
builds into an fp32 artifact whose parity has 0 flips while tokens really are dropped. A backbone outside
the family is refused with a message naming what is missing, by the library and by `train` (exit 2).
"""
import pytest
import torch

from adapler_export.checkpoint import load_checkpoint
from adapler_export.evaluation import encode
from adapler_export.modeling_adapler import (BERT_LAYOUT, DISTILBERT_LAYOUT, AdapLeRForSequenceClassification,
                                             UnsupportedBackbone)
from adapler_export.segments import export_segments
from adapler_export.data import load_dev
from conftest import assert_backends_match_pytorch, assert_segments_reproduce_pytorch, sst2_dir
from test_bad_input import assert_clean_error, run_cli, write_split
from tiny_models import (LABELS, TINY_FAMILIES, TINY_MAX_LENGTH, build_tiny, make_tiny_checkpoint,
                         make_tiny_tokenizer, tiny_model)
from training.stage3_adapler import Stage3Config, compute_gradients

LAYERS = 2
TEXTS = ["a charming , often affecting journey .", "the worst film of the year", "funny ?",
         "not too bleak , but desperate and dull , with characters that are just like the story"]


def tiny(family: str, tmp_path, **kwargs):
    """(model, tokenizer) of `family`; the model's vocabulary is the tokenizer's."""
    tokenizer = make_tiny_tokenizer(tmp_path / "vocab", family)
    return tiny_model(vocab_size=len(tokenizer), layers=LAYERS, family=family, **kwargs), tokenizer


def tokenized(tokenizer):
    ids, mask = encode(tokenizer, TEXTS, TINY_MAX_LENGTH)  # padded with the family's own padding id
    return torch.from_numpy(ids).long(), torch.from_numpy(mask).long()


def perturb_(model, seed: int = 0):
    """Noise on every backbone weight: a fresh model's LayerNorms are all (1, 0) and its biases 0, so a
    swapped LayerNorm or a lost bias would go unseen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_forward_full_is_the_library_model(family, tmp_path):
    model, tokenizer = tiny(family, tmp_path)
    perturb_(model)
    assert model.layout is (DISTILBERT_LAYOUT if family == "distilbert" else BERT_LAYOUT)
    layer_activation = model.layout.parts(model.layers[0]).activation
    assert all(cp.activation is layer_activation for cp in model.cps), "the CPs use the encoder's activation"
    if family == "electra":  # embeddings 16 wide, encoder 32: forward_full fails if the projection is skipped
        assert model.config.embedding_size != model.config.hidden_size and model.embedding_projection is not None
    ids, mask = tokenized(tokenizer)
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and tokenizer.pad_token_id == model.config.pad_token_id
    with torch.no_grad():
        want = model.backbone(input_ids=ids, attention_mask=mask).logits
        got = model.forward_full(ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_stage3_steps_train_every_part(family, tmp_path):
    """A few stage-3 steps: finite gradients for the CPs, eta and theta, and for every backbone weight."""
    model, tokenizer = tiny(family, tmp_path, seed=1, cp_gain=5.0)
    model.train()
    ids, mask = tokenized(tokenizer)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 0, 1, 0]),
             "saliency": torch.rand(ids.shape, generator=generator) * mask}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if name in ("eta", "theta")}
    for _ in range(3):
        optimizer.zero_grad()
        losses = compute_gradients(model, batch, 10.0, Stage3Config())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        grads = {name: p.grad for name, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
            [name for name, g in grads.items() if g is None or not torch.isfinite(g).all()]
        assert grads["theta"][1:].abs().min() > 0, "theta_0 is 1 by definition, the others learn"
        for name in ["eta"] + [f"cps.{k}.dense_in.weight" for k in range(LAYERS)] + \
                [n for n in grads if n.startswith("backbone.") and n.endswith(".weight")]:
            assert grads[name].abs().max() > 0, f"{name} gets no gradient"
        optimizer.step()
        model.clamp_parameters_()
    assert not torch.equal(before["eta"], model.eta) and not torch.equal(before["theta"], model.theta)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_checkpoint_round_trip_and_fp32_build_parity(family, tmp_path):
    """save/load keep every weight and the tokenizer; the fp32 build's parity (segment chain and one graph
    against the PyTorch reference on SST-2 dev texts) has 0 flips while the links drop tokens."""
    sst2_dir()  # skips without SST-2
    settings = {"seed": 0, "eta": 0.6, "cp_gain": 8.0}  # about half the tokens dropped per link
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", layers=LAYERS, family=family, **settings)
    loaded = load_checkpoint(checkpoint)
    original = tiny_model(vocab_size=len(loaded.tokenizer), layers=LAYERS, family=family, **settings)
    assert loaded.config.backbone == f"tiny-random-{family}" and loaded.model.layout is original.layout
    want, got = original.state_dict(), loaded.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ids, mask = tokenized(loaded.tokenizer)
    assert (ids[:, 0] == loaded.tokenizer.cls_token_id).all()
    assert loaded.tokenizer.pad_token_id == loaded.model.config.pad_token_id

    result = build_tiny(checkpoint, tmp_path / "artifact", samples=32)
    assert result.parity.passed and result.parity.flips == 0, result.parity.table()
    dev = load_dev("sst2", sst2_dir(), 32)  # recomputed here too, not only the build's own parity
    recomputed = assert_backends_match_pytorch(checkpoint, result.path, dev.texts)
    assert all(r["rows"] == 32 and r["dropped"] > 0 for r in recomputed.values()), recomputed
    reports = result.manifest.parity["end_to_end"]
    assert set(reports) >= {"onnxruntime", "onnxruntime-graph"}
    for kind, report in reports.items():
        assert report["passed"] and report["flips"] == 0, (kind, report["failures"])
    links, examples = result.parity.links, result.parity.examples
    assert all(link["decisions"] > 0 for link in links)
    kept_at_last_link = links[-1]["mean_kept_reference"] * examples
    assert kept_at_last_link < 0.8 * links[0]["decisions"], "the links must really drop tokens"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_fp16_segments_export(family, tmp_path):
    """fp16 segments export and validate against PyTorch (ELECTRA's projection computes in fp32 with the
    embeddings, as segment 0's CP needs)."""
    model, tokenizer = tiny(family, tmp_path, cp_gain=8.0)
    specs = export_segments(model, tmp_path / "onnx", "fp16")
    assert [s.file_name for s in specs] == [f"segment_{k:02d}.onnx" for k in range(LAYERS + 1)]
    ids, mask = (t.numpy().astype("int32") for t in tokenized(tokenizer))
    assert assert_segments_reproduce_pytorch(model, tmp_path / "onnx", specs, "fp16", ids, mask) == 2 * LAYERS + 1


# ----- outside the family ------------------------------------------------------------------------------------
def tiny_gpt2():
    import transformers as hf

    config = hf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                           eos_token_id=0, pad_token_id=0, num_labels=len(LABELS))
    return hf.GPT2ForSequenceClassification(config)


def tiny_t5():
    import transformers as hf

    config = hf.T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                         num_labels=len(LABELS))
    return hf.T5ForSequenceClassification(config)


def tiny_pre_layer_norm_roberta():
    """BERT's module paths, but pre-LN: no LayerNorm where the post-LN layer has one."""
    import transformers as hf

    config = hf.RobertaPreLayerNormConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, num_labels=len(LABELS))
    return hf.RobertaPreLayerNormForSequenceClassification(config)


SUPPORTED = "supported families: BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM"


@pytest.mark.parametrize("make,message", [
    (tiny_gpt2, "GPT2ForSequenceClassification: no encoder layers found at transformer.encoder.layer or "
                "transformer.transformer.layer; " + SUPPORTED),
    (tiny_t5, "T5ForSequenceClassification: no encoder layers found at transformer.encoder.layer or "
              "transformer.transformer.layer; " + SUPPORTED),
    (tiny_pre_layer_norm_roberta, "RobertaPreLayerNormForSequenceClassification: the encoder layers at "
                                  "roberta_prelayernorm.encoder.layer lack attention.output.LayerNorm, "
                                  "output.LayerNorm"),
], ids=["gpt2", "t5", "roberta-prelayernorm"])
def test_a_backbone_outside_the_family_is_refused_naming_what_is_missing(make, message):
    with pytest.raises(UnsupportedBackbone) as error:
        AdapLeRForSequenceClassification(make())
    assert message in str(error.value) and SUPPORTED in str(error.value)


def test_train_refuses_an_unsupported_backbone_before_any_training(tmp_path):
    backbone = tmp_path / "tiny-gpt2"
    tiny_gpt2().save_pretrained(backbone)
    make_tiny_tokenizer(tmp_path / "vocab").save_pretrained(backbone)
    data = tmp_path / "data"
    write_split(data, "train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    write_split(data, "dev.tsv", "sentence\tlabel\nfine\t1\n")
    home = tmp_path / "home"
    result = run_cli("train", "--data-dir", str(data), "--backbone", str(backbone), "--output", "x", env_home=home)
    assert_clean_error(result, "GPT2ForSequenceClassification: no encoder layers found at transformer.encoder.layer",
                       home)
    assert not (home / "work").exists(), "refused before any training (no work folder either)"
