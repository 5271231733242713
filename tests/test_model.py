"""The AdapLeR reference model: keep rule, soft vs hard removal, batching, checkpoints, FLOPs."""
import numpy as np
import torch

from adapler_export.checkpoint import AdapLeRConfig, Checkpoint, load_backbone, load_checkpoint, save_checkpoint
from adapler_export.flops import flops_speedup, layer_flops
from adapler_export.link import keep_mask_torch
from adapler_export.modeling_adapler import (AdapLeRForSequenceClassification, attention_bias_from_mask,
                                             cp_distribution, cp_distribution_hard)

from conftest import tiny_model


def random_batch(rng, b=5, s=12, vocab=200):
    lengths = rng.integers(2, s + 1, size=b)
    lengths[0] = s
    mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, vocab, size=(b, s)).astype(np.int32) * mask
    ids[:, 0] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_keep_rule_hand_made():
    # Row: [CLS] a b [SEP] pad pad; n = 4 ([CLS] counted), eta = 0.4 -> delta = 0.1
    scores = torch.tensor([[0.0, 0.5, 0.1, 0.0999, 0.2, 0.2]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.int32)
    keep = keep_mask_torch(scores, mask, 0.4)
    # [CLS] kept with score 0, 0.1 >= delta kept, [SEP] at 0.0999 dropped, padding never live
    assert keep.tolist() == [[True, True, True, False, False, False]]


def test_cp_distribution_is_masked_softmax_with_cls_forced_live():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # [CLS] forced live, slot 3 dead
    s = cp_distribution(logits, mask)
    want = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    torch.testing.assert_close(s[0, :3], want)
    assert s[0, 3].item() == 0.0


def test_hard_cp_distribution_is_the_weighted_one_on_zero_one_masks():
    """Inference's single softmax gives the training form's values on 0/1 masks, dead slots exactly 0, [CLS]
    forced live, rows that are all padding too (no NaN); fp16 logits are scored in fp32."""
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 4, size=(5, 9)).astype(np.float32))
    mask = torch.tensor([[1] * 9, [1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1, 0, 0, 0], [0] * 9,
                         [0, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.int32)
    hard, weighted = cp_distribution_hard(logits, mask), cp_distribution(logits, mask)
    assert hard.dtype == torch.float32 and bool(torch.isfinite(hard).all())
    torch.testing.assert_close(hard, weighted, rtol=1e-6, atol=1e-7)
    dead = (mask == 0) & (torch.arange(9)[None] > 0)
    assert bool((hard[dead] == 0).all()) and bool((hard[~dead] > 0).all())
    torch.testing.assert_close(hard.sum(-1), torch.ones(5))
    from_half = cp_distribution_hard(logits.half(), mask)
    torch.testing.assert_close(from_half, cp_distribution_hard(logits.half().float(), mask), rtol=0, atol=0)


def test_hard_mask_bias_equals_the_soft_rule_on_zero_one_masks():
    """An integer mask takes the short formula (no log): exactly the soft rule's values on 0 / 1."""
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.int32)
    for dtype in (torch.float32, torch.float16):
        hard, soft = attention_bias_from_mask(mask, dtype), attention_bias_from_mask(mask.float(), dtype)
        assert hard.shape == soft.shape == (2, 1, 1, 5) and hard.dtype == soft.dtype == dtype
        assert torch.equal(hard, soft) and set(hard.unique().tolist()) == {0.0, -10000.0}


def test_exported_layer_segment_computes_no_shapes_and_no_log(tmp_path):
    """The ONNX of one layer segment: heads split by one Reshape with a constant [0, -1, heads, size] (no
    Shape/Gather/Concat chain) and the hard-mask bias without Log: per-node costs dominate at batch 1."""
    import onnx

    from adapler_export.segments import export_segments

    model = tiny_model(seed=2, layers=2)
    export_segments(model, tmp_path, "fp32")
    nodes = onnx.load(str(tmp_path / "segment_01.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("MatMul") >= 6
    for op in ("Shape", "Gather", "Log"):
        assert op not in ops, f"segment_01.onnx computes {op}: {sorted(set(ops))}"
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t).tolist() for n in nodes
                 if n.op_type == "Constant" and n.attribute[0].name == "value"}
    head_reshapes = [constants.get(n.input[1]) for n in nodes if n.op_type == "Reshape"
                     and constants.get(n.input[1], [None])[:2] == [0, -1]]
    heads, size = model.config.num_attention_heads, model.config.hidden_size
    assert head_reshapes == [[0, -1, heads, size // heads]] * 3 + [[0, -1, size]]  # q, k, v split; merge


def test_hard_removal_drops_tokens_and_reports_positions():
    model = tiny_model()
    ids, mask = random_batch(np.random.default_rng(0))
    out = model.forward_hard(ids, mask)
    lengths = torch.stack(out.lengths).float()
    assert lengths[-1].mean() < mask.sum(1).float().mean(), "the fixture must drop tokens"
    for kept, length in zip(out.kept, out.lengths):
        assert (kept[:, 0] == 0).all(), "[CLS] first and always kept"
        assert ((kept >= 0).sum(1) == length).all()
    for earlier, later in zip(out.kept, out.kept[1:]):  # a dropped token never comes back
        for r in range(ids.shape[0]):
            assert set(later[r][later[r] >= 0].tolist()) <= set(earlier[r][earlier[r] >= 0].tolist())


def test_soft_removal_with_huge_lambda_equals_hard_removal():
    model = tiny_model()
    ids, mask = random_batch(np.random.default_rng(1))
    with torch.no_grad():
        soft = model.forward_soft(ids.long(), mask, lam=1e20)
    hard = model.forward_hard(ids, mask)
    torch.testing.assert_close(soft.logits, hard.logits, atol=1e-5, rtol=1e-5)
    for index, kept in enumerate(hard.kept):  # the soft masks after removal are hard and agree
        # every link, the last included: as many tokens left (soft lengths count the mask after removal)
        torch.testing.assert_close(soft.lengths[index], (kept >= 0).sum(1).to(soft.lengths[index].dtype))
        if index + 1 == len(soft.masks):  # no mask after the last link: the count above is its comparison
            continue
        soft_live = soft.masks[index + 1]
        for r in range(ids.shape[0]):
            assert sorted(torch.nonzero(soft_live[r] > 0.5).flatten().tolist()) == \
                sorted(kept[r][kept[r] >= 0].tolist())


def test_batched_hard_removal_equals_one_at_a_time():
    model = tiny_model(seed=3)
    ids, mask = random_batch(np.random.default_rng(2), b=6)
    batched = model.forward_hard(ids, mask)
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        single = model.forward_hard(ids[r:r + 1, :n], mask[r:r + 1, :n])
        torch.testing.assert_close(batched.logits[r], single.logits[0], atol=1e-5, rtol=1e-5)
        for kb, ks in zip(batched.kept, single.kept):
            assert kb[r][kb[r] >= 0].tolist() == ks[0][ks[0] >= 0].tolist()


def test_forward_full_matches_hugging_face():
    model = tiny_model()
    ids, mask = random_batch(np.random.default_rng(4))
    with torch.no_grad():
        want = model.backbone(input_ids=ids.long(), attention_mask=mask.long()).logits
        got = model.forward_full(ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_real_minilm_backbone_loads_offline():
    backbone, tokenizer = load_backbone("minilm", 2)
    assert backbone.config.num_hidden_layers == 6 and backbone.config.hidden_size == 384
    model = AdapLeRForSequenceClassification(backbone).eval()
    enc = tokenizer(["a charming and often affecting journey"], return_tensors="pt")
    with torch.no_grad():
        want = backbone(**enc).logits
        got = model.forward_full(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip_is_exact(tmp_path):
    backbone, tokenizer = load_backbone("minilm", 2, {0: "negative", 1: "positive"})
    model = AdapLeRForSequenceClassification(backbone).eval()
    with torch.no_grad():
        model.eta.copy_(torch.linspace(0.1, 0.9, model.num_layers))
        model.cps[2].dense_in.weight.add_(0.5)
    config = AdapLeRConfig(backbone="minilm", num_layers=6, hidden_size=384, labels=["negative", "positive"])
    path = save_checkpoint(Checkpoint(model, tokenizer, config), tmp_path / "ckpt")
    loaded = load_checkpoint(str(path))
    want, got = model.state_dict(), loaded.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert loaded.config.eta == [float(v) for v in model.eta.detach()]
    assert not list(tmp_path.glob(".ckpt.tmp-*")), "no temp directory left behind"


def test_flops_accounting():
    h, i = 384, 1536
    assert layer_flops(10, h, i) == 8 * 10 * h * h + 4 * 100 * h + 4 * 10 * h * i
    # nothing dropped: the CPs make the adaptive model slightly more expensive
    assert flops_speedup([20, 30], [[20, 30]] * 6, 6, h, i) < 1.0
    # half the tokens from layer 0 on: close to 2x
    assert 1.8 < flops_speedup([40], [[20]] * 6, 6, h, i) < 2.1
