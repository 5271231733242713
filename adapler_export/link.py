"""The compaction link (`TokenCompact`): the rule, once, and its host implementations side by side.

Every implementation of the link — NumPy (reference and fast gather, here), PyTorch (here, used by the
reference model and on CUDA tensors), the CUDA kernel (`plugins/token_compact`, `link_cuda.py`) and the
TensorRT plugin — is tested against `token_compact_numpy`. The contract is docs/INTERFACES.md:

    n = live tokens of the row ([CLS] included);  delta = fp32(eta) / fp32(n)
    keep_i = live_i and (i == 0 or score_i >= delta)
    kept tokens move to the front in order; S' = max(1, batch max of kept counts);
    padding slots are zero / mask 0 / position -1.

eta lies in [0, 1]. eta = 0 gives delta = 0, so every live token is kept (padding holes are still
compacted away): the same meaning in every backend, no special case (calibration evaluates it).

torch is imported only when a torch tensor is passed, so ONNX Runtime users (the Triton Python model)
need no torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class CompactResult(NamedTuple):
    hidden: object  # [B, S', H]
    mask: object  # [B, S'] int32
    positions: object  # [B, S'] int32, -1 on padding
    new_len: int


ETA_RANGE = (0.0, 1.0)


def check_eta(eta) -> float:
    """The one validity rule for a link threshold: a finite number in [0, 1]."""
    try:
        value = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}") from None
    if math.isnan(value) or not ETA_RANGE[0] <= value <= ETA_RANGE[1]:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return value


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


# ----- NumPy -------------------------------------------------------------------------------------------------
def initial_positions_numpy(mask: np.ndarray) -> np.ndarray:
    """Positions entering link 0: the token index where the mask is live, -1 on padding."""
    mask = np.asarray(mask)
    return np.where(mask == 1, np.arange(mask.shape[1], dtype=np.int32)[None], -1).astype(np.int32)


def keep_mask_numpy(scores: np.ndarray, mask: np.ndarray, eta) -> np.ndarray:
    """Boolean [B, S]: which slots the link keeps."""
    eta32 = np.float32(check_eta(eta))
    live = np.asarray(mask).astype(np.int32) == 1
    n = live.sum(axis=1, keepdims=True).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = eta32 / n  # a fully dead row: inf (or nan for eta 0); it has no live slot to keep anyway
    keep = live & (np.asarray(scores).astype(np.float32) >= delta)
    keep[:, 0] = live[:, 0]  # [CLS] is always kept (when the row is live at all)
    return keep


def _order_and_slots(keep: np.ndarray):
    counts = keep.sum(axis=1)
    new_len = max(int(counts.max()) if keep.shape[0] else 1, 1)
    # A stable argsort of "dropped" puts the kept slots first, in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :new_len]
    slot_live = np.arange(new_len)[None, :] < counts[:, None]
    return order, slot_live, new_len


def compact_by_keep_numpy(hidden: np.ndarray, keep: np.ndarray, positions: np.ndarray) -> CompactResult:
    """The reference compaction: per-element gathers, easy to read."""
    order, slot_live, new_len = _order_and_slots(keep)
    out_h = np.take_along_axis(hidden, order[:, :, None], axis=1)
    out_h[~slot_live] = 0
    out_p = np.where(slot_live, np.take_along_axis(positions, order, axis=1), -1).astype(np.int32)
    return CompactResult(out_h, slot_live.astype(np.int32), out_p, new_len)


def compact_by_keep_fast(hidden: np.ndarray, keep: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> \
        CompactResult:
    """Bit-identical to `compact_by_keep_numpy`, gathered faster (the ONNX Runtime chain's link).

    Every slot of every row kept (batch 1, nothing dropped): the inputs are returned as they are (no
    copy). Otherwise whole hidden rows are gathered with one `np.take` over [B*S, H]: the reference's
    per-element `take_along_axis` cost 0.05 ms at [1, 25, 384] and 24 ms at [32, 512, 384] per link; a row
    gather costs about what copying the kept rows costs.
    """
    b, s, h = hidden.shape
    if b and s and bool(keep.all()):
        return CompactResult(hidden, np.asarray(mask, dtype=np.int32), positions, s)
    order, slot_live, new_len = _order_and_slots(keep)
    flat = (np.arange(b)[:, None] * s + order).reshape(-1)
    out_h = np.take(hidden.reshape(b * s, h), flat, axis=0).reshape(b, new_len, h)
    dead = ~slot_live
    if dead.any():
        out_h[dead] = 0
    out_p = np.where(slot_live, np.take(positions.reshape(-1), flat).reshape(b, new_len), -1).astype(np.int32)
    return CompactResult(out_h, slot_live.astype(np.int32), out_p, new_len)


def _check_shapes(hidden, scores, mask, positions) -> None:
    if len(hidden.shape) != 3 or tuple(scores.shape) != tuple(hidden.shape[:2]) \
            or tuple(mask.shape) != tuple(scores.shape) or tuple(positions.shape) != tuple(scores.shape):
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, scores {tuple(scores.shape)}, "
                         f"mask {tuple(mask.shape)}, positions {tuple(positions.shape)}")


def token_compact_numpy(hidden: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                        positions: np.ndarray, eta) -> CompactResult:
    """The reference: every other implementation is checked against this one."""
    _check_shapes(hidden, scores, mask, positions)
    return compact_by_keep_numpy(hidden, keep_mask_numpy(scores, mask, eta), positions)


def token_compact_fast(hidden: np.ndarray, scores: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                       eta) -> CompactResult:
    """`token_compact_numpy`'s results, bit for bit, with the faster gather."""
    _check_shapes(hidden, scores, mask, positions)
    return compact_by_keep_fast(hidden, keep_mask_numpy(scores, mask, eta), positions, mask)


def live_positions(mask: np.ndarray) -> np.ndarray:
    """What a link that keeps every live token outputs as `positions_out` ("no removal")."""
    mask = np.asarray(mask)
    keep = mask == 1
    order, slot_live, _ = _order_and_slots(keep)
    return np.where(slot_live, order, -1).astype(np.int32)


# ----- PyTorch (CPU or CUDA tensors) ---------------------------------------------------------------------
def initial_positions_torch(mask):
    import torch

    index = torch.arange(mask.shape[1], dtype=torch.int32, device=mask.device)[None].expand_as(mask)
    return torch.where(mask == 1, index, torch.full_like(index, -1)).to(torch.int32)


def keep_mask_torch(scores, mask, eta):
    import torch

    live = mask == 1
    n = live.sum(dim=1, keepdim=True).to(torch.float32)
    if torch.is_tensor(eta):
        eta_t = eta.detach().to(device=scores.device, dtype=torch.float32)
    else:
        eta_t = torch.tensor(check_eta(eta), dtype=torch.float32, device=scores.device)
    delta = eta_t / n
    keep = live & (scores.to(torch.float32) >= delta)
    keep[:, 0] = live[:, 0]
    return keep


def compact_by_keep_torch(hidden, keep, positions) -> CompactResult:
    """Order-preserving compaction given keep flags (a stable sort puts kept slots first)."""
    import torch

    counts = keep.sum(dim=1)
    new_len = max(int(counts.max().item()) if keep.shape[0] else 1, 1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]
    slot_live = torch.arange(new_len, device=keep.device)[None, :] < counts[:, None]
    gathered = torch.gather(hidden, 1, order[:, :, None].expand(-1, -1, hidden.shape[2]))
    out_h = torch.where(slot_live[:, :, None], gathered, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
    out_p = torch.where(slot_live, torch.gather(positions, 1, order), torch.full_like(order, -1))
    return CompactResult(out_h, slot_live.to(torch.int32), out_p.to(torch.int32), new_len)


def token_compact_torch(hidden, scores, mask, positions, eta) -> CompactResult:
    _check_shapes(hidden, scores, mask, positions)
    return compact_by_keep_torch(hidden, keep_mask_torch(scores, mask, eta), positions)


# ----- dispatch on the array type ------------------------------------------------------------------------
def initial_positions(mask):
    return initial_positions_torch(mask) if _is_torch(mask) else initial_positions_numpy(mask)


def token_compact(hidden, scores, mask, positions, eta) -> CompactResult:
    """The link on host NumPy arrays (fast gather) or torch tensors (any device)."""
    if _is_torch(hidden):
        return token_compact_torch(hidden, scores, mask, positions, eta)
    return token_compact_fast(hidden, scores, mask, positions, eta)
