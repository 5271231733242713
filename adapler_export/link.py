"""The compaction link (`TokenCompact`): reference implementations.

One definition, several implementations (see docs/INTERFACES.md): this module is the reference that
the PyTorch model, the ONNX Runtime pipeline, the CUDA kernel (plugins/token_compact) and the TensorRT
plugin are all checked against.

Rule, per row:  n = live tokens ([CLS] included), delta = fp32(eta) / fp32(n),
keep_i = live_i and (i == 0 or score_i >= delta).  Kept tokens move to the front in order; the new
length S' is the batch maximum of kept counts; padding slots are zero / mask 0 / position -1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class CompactResult(NamedTuple):
    hidden: object  # [B, S', H]
    mask: object  # [B, S'] int32
    positions: object  # [B, S'] int32, -1 on padding
    new_len: int


def check_eta(eta: float) -> float:
    eta = float(eta)
    if not (0.0 < eta <= 1.0) or eta != eta:
        raise ValueError(f"eta must lie in (0, 1], got {eta!r}")
    return eta


def keep_mask_numpy(scores: np.ndarray, mask: np.ndarray, eta: float) -> np.ndarray:
    """Boolean [B, S]: which slots the link keeps."""
    eta32 = np.float32(check_eta(eta))
    live = mask.astype(np.int32) == 1
    n = live.sum(axis=1, keepdims=True).astype(np.float32)
    with np.errstate(divide="ignore"):
        delta = eta32 / n  # inf for a fully dead row: nothing passes, and the row has no live CLS
    keep = live & (scores.astype(np.float32) >= delta)
    keep[:, 0] = live[:, 0]  # [CLS] is always kept (when the row is live at all)
    return keep


def compact_by_keep_numpy(hidden: np.ndarray, keep: np.ndarray, positions: np.ndarray) -> CompactResult:
    counts = keep.sum(axis=1)
    b, _, h = hidden.shape
    new_len = max(int(counts.max()) if b else 1, 1)
    # A stable argsort of "dropped" puts the kept slots first, in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :new_len]
    slot_live = np.arange(new_len)[None, :] < counts[:, None]
    out_h = np.take_along_axis(hidden, order[:, :, None], axis=1)
    out_h[~slot_live] = 0
    out_p = np.where(slot_live, np.take_along_axis(positions, order, axis=1), -1).astype(np.int32)
    return CompactResult(out_h, slot_live.astype(np.int32), out_p, new_len)


def token_compact_numpy(hidden: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                        positions: np.ndarray, eta: float) -> CompactResult:
    if hidden.ndim != 3 or scores.shape != hidden.shape[:2] or mask.shape != scores.shape \
            or positions.shape != scores.shape:
        raise ValueError(f"shape mismatch: hidden {hidden.shape}, scores {scores.shape}, "
                         f"mask {mask.shape}, positions {positions.shape}")
    return compact_by_keep_numpy(hidden, keep_mask_numpy(scores, mask, eta), positions)


def keep_mask_torch(scores: torch.Tensor, mask: torch.Tensor, eta) -> torch.Tensor:
    live = mask == 1
    n = live.sum(dim=1, keepdim=True).to(torch.float32)
    eta_t = eta if torch.is_tensor(eta) else torch.tensor(check_eta(eta), dtype=torch.float32)
    delta = eta_t.to(torch.float32) / n
    keep = live & (scores.to(torch.float32) >= delta)
    keep[:, 0] = live[:, 0]
    return keep


def compact_by_keep(hidden: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor) -> CompactResult:
    """Order-preserving compaction given keep flags (a stable sort puts kept slots first)."""
    counts = keep.sum(dim=1)
    new_len = max(int(counts.max().item()) if keep.shape[0] else 1, 1)
    # argsort of ~keep is stable: kept slots first, in their original order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]
    slot_live = torch.arange(new_len, device=keep.device)[None, :] < counts[:, None]
    gathered = torch.gather(hidden, 1, order[:, :, None].expand(-1, -1, hidden.shape[2]))
    out_h = torch.where(slot_live[:, :, None], gathered, torch.zeros((), dtype=hidden.dtype))  # +0.0, as the kernel
    out_p = torch.where(slot_live, torch.gather(positions, 1, order), torch.full_like(order, -1))
    return CompactResult(out_h, slot_live.to(torch.int32), out_p.to(torch.int32), new_len)


def token_compact_torch(hidden: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                        positions: torch.Tensor, eta) -> CompactResult:
    return compact_by_keep(hidden, keep_mask_torch(scores, mask, eta), positions)
