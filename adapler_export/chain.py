"""The segment chain, written once: segment 0 -> (link k -> segment k+1)... -> logits.

Every backend that runs the adaptive model as separate segments (ONNX Runtime sessions, TensorRT
engines, PyTorch segment modules in parity and benchmarks) supplies two things, polygraphy-style:

    run_segment(k, feeds: dict[name, array]) -> dict[name, array]   # segment k's graph / engine / module
    link(hidden, scores, mask, positions, eta) -> CompactResult      # link.token_compact, the CUDA kernel...

and `run_chain` does the rest: initial positions, which outputs feed which inputs (from the
`SegmentSpec`s, not from literals), the kept positions per link. The arrays are whatever the backend
works in (NumPy on the host, torch tensors on a device); `link.initial_positions` dispatches on type.
The PyTorch model's `forward_hard` stays the readable reference the chain is compared with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .link import CompactResult, initial_positions

SCORES = "scores"


@dataclass
class ChainResult:
    logits: object  # [B, C]
    kept: list  # per link: [B, S'_k] int32 positions kept, -1 padding


def hidden_output(spec) -> str:
    """The hidden-state output of a non-final segment (the spec's first output that is not the scores)."""
    return next(name for name in spec.outputs if name != SCORES)


def run_chain(specs: Sequence, etas: Sequence[float], run_segment: Callable[[int, dict], dict],
              link: Callable[..., CompactResult], input_ids, attention_mask,
              on_segment: Callable[[int, dict, dict], None] | None = None) -> ChainResult:
    """Run segments 0..L with links 0..L-1 between them.

    `on_segment(k, feeds, outputs)` sees each segment's exact inputs and outputs (parity records them).
    """
    if len(specs) != len(etas) + 1:
        raise ValueError(f"{len(specs)} segments need {len(specs) - 1} link thresholds, got {len(etas)}")
    first_inputs = list(specs[0].inputs)
    mask = attention_mask
    feeds = dict(zip(first_inputs, (input_ids, attention_mask)))
    positions = initial_positions(mask)
    kept = []
    for k, spec in enumerate(specs):
        outputs = run_segment(k, feeds)
        if on_segment is not None:
            on_segment(k, feeds, outputs)
        if k == len(specs) - 1:
            return ChainResult(outputs[next(iter(spec.outputs))], kept)
        hidden, mask, positions, _ = link(outputs[hidden_output(spec)], outputs[SCORES], mask, positions, etas[k])
        kept.append(positions)
        next_inputs = list(specs[k + 1].inputs)  # (hidden, attention_mask) in the spec's order
        feeds = dict(zip(next_inputs, (hidden, mask)))
    raise AssertionError("unreachable")  # pragma: no cover
