"""The compaction link: every host implementation against a brute-force loop of the rule."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from adapler_export.link import (initial_positions, live_positions, token_compact, token_compact_fast,
                                 token_compact_numpy, token_compact_torch)


def brute_force(hidden, scores, mask, positions, eta):
    """Straight from the rule in docs/INTERFACES.md, one slot at a time."""
    b, s, h = hidden.shape
    rows = []
    for r in range(b):
        n = int(sum(1 for i in range(s) if mask[r, i] == 1))
        delta = np.float32(eta) / np.float32(n) if n else np.float32(np.inf)
        kept = [i for i in range(s) if mask[r, i] == 1 and (i == 0 or np.float32(scores[r, i]) >= delta)]
        rows.append(kept)
    new_len = max(1, max(len(k) for k in rows))
    out_h = np.zeros((b, new_len, h), hidden.dtype)
    out_m = np.zeros((b, new_len), np.int32)
    out_p = np.full((b, new_len), -1, np.int32)
    for r, kept in enumerate(rows):
        for j, i in enumerate(kept):
            out_h[r, j], out_m[r, j], out_p[r, j] = hidden[r, i], 1, positions[r, i]
    return out_h, out_m, out_p, new_len


def random_case(rng, b, s, h, dtype=np.float32, dead_rows=0, all_dropped_rows=0):
    hidden = rng.standard_normal((b, s, h)).astype(dtype)
    lengths = rng.integers(1, s + 1, size=b)
    mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
    mask[:dead_rows] = 0
    logits = rng.standard_normal((b, s)).astype(np.float32) * 2
    exp = np.exp(logits) * np.maximum(mask, np.eye(1, s, dtype=np.int32))
    scores = (exp / exp.sum(1, keepdims=True)).astype(np.float32)
    scores[dead_rows:dead_rows + all_dropped_rows, 1:] = 0.0  # everything but [CLS] below any threshold
    positions = np.where(mask == 1, np.arange(s)[None], -1).astype(np.int32)
    return hidden, scores, mask, positions


@pytest.mark.parametrize("b,s,h", [(1, 1, 8), (3, 17, 16), (8, 64, 32), (2, 512, 8), (5, 2, 4)])
@pytest.mark.parametrize("eta", [0.0, 0.01, 0.25, 0.9, 1.0])
def test_every_host_implementation_matches_brute_force(b, s, h, eta):
    rng = np.random.default_rng(b * 1000 + s + int(eta * 100))
    case = random_case(rng, b, s, h, dead_rows=1 if b > 3 else 0, all_dropped_rows=1 if b > 1 else 0)
    want = brute_force(*case, eta)
    got = token_compact_numpy(*case, eta)
    assert got.new_len == want[3]
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
    fast = token_compact_fast(*case, eta)
    assert fast.new_len == want[3]
    for g, w in zip(fast[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
    for impl in (token_compact_torch, token_compact):  # the dispatcher takes the torch path for tensors
        tg = impl(*(torch.from_numpy(x) for x in case), eta)
        assert tg.new_len == want[3]
        for g, w in zip(tg[:3], want[:3]):
            np.testing.assert_array_equal(g.numpy(), w)


def test_rule_on_hand_made_scores():
    # n = 4 live tokens ([CLS] included) -> delta = 0.5 / 4 = 0.125
    scores = np.array([[0.01, 0.125, 0.124, 0.741, 0.9]], np.float32)  # slot 4 is padding
    mask = np.array([[1, 1, 1, 1, 0]], np.int32)
    hidden = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
    positions = np.array([[0, 1, 2, 3, -1]], np.int32)
    out = token_compact_numpy(hidden, scores, mask, positions, 0.5)
    # [CLS] kept despite its low score, 0.125 >= delta kept, 0.124 dropped, padding never kept
    np.testing.assert_array_equal(out.positions, [[0, 1, 3]])
    np.testing.assert_array_equal(out.hidden[0, :, 0], [0, 1, 3])
    assert out.new_len == 3


def test_fp16_hidden_is_gathered_exactly():
    rng = np.random.default_rng(0)
    case = random_case(rng, 4, 33, 24, dtype=np.float16)
    got = token_compact_numpy(*case, 0.3)
    want = brute_force(*case, 0.3)
    assert got.hidden.dtype == np.float16
    np.testing.assert_array_equal(got.hidden, want[0])


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), float("inf"), "x", None])
def test_eta_outside_range_is_rejected(eta):
    case = random_case(np.random.default_rng(0), 1, 4, 2)
    for impl in (token_compact_numpy, token_compact_fast):
        with pytest.raises(ValueError, match="eta"):
            impl(*case, eta)
    with pytest.raises(ValueError, match="eta"):
        token_compact_torch(*(torch.from_numpy(x) for x in case), eta)


def test_eta_zero_keeps_every_live_token_and_compacts_padding():
    """eta = 0 has one meaning: delta = 0, every live token kept (no special case anywhere); holes in the
    mask are still compacted away."""
    hidden = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
    scores = np.array([[0.0, 0.0, 0.5, 0.0, 0.5, 0.0]], np.float32)  # zero scores: still >= delta = 0
    mask = np.array([[1, 1, 1, 0, 1, 0]], np.int32)
    out = token_compact_numpy(hidden, scores, mask, initial_positions(mask), 0.0)
    np.testing.assert_array_equal(out.positions, [[0, 1, 2, 4]])
    np.testing.assert_array_equal(out.positions, live_positions(mask))


def test_fast_gather_returns_inputs_untouched_when_nothing_drops():
    hidden, scores, mask, positions = random_case(np.random.default_rng(3), 1, 9, 4)
    mask[:] = 1
    positions = initial_positions(mask)
    out = token_compact_fast(hidden, scores, mask, positions, 0.0)
    assert out.hidden is hidden and out.new_len == 9


def test_initial_positions_numpy_and_torch_agree():
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
    np.testing.assert_array_equal(initial_positions(mask), [[0, 1, -1], [0, -1, -1]])
    np.testing.assert_array_equal(initial_positions(torch.from_numpy(mask)).numpy(), initial_positions(mask))


def test_host_link_and_onnxruntime_chain_import_no_torch():
    """The Triton Python model and ONNX Runtime users need no torch: the link imports it only for tensors."""
    code = ("import sys, numpy as np; import adapler_export.link as L, adapler_export.backends.onnxruntime, "
            "adapler_export.artifact, adapler_export.chain; "
            "m = np.ones((1, 3), np.int32); L.token_compact(np.zeros((1, 3, 2), np.float32), "
            "np.full((1, 3), 0.4, np.float32), m, L.initial_positions(m), 0.5); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'onnx', 'tensorrt', 'tensorrt_rtx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_shape_mismatch_is_rejected():
    hidden, scores, mask, positions = random_case(np.random.default_rng(0), 2, 5, 3)
    with pytest.raises(ValueError, match="shape"):
        token_compact_numpy(hidden, scores[:, :4], mask, positions, 0.5)
