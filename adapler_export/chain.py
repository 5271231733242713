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
from .specs import PAIR_MODEL_INPUTS

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
              on_segment: Callable[[int, dict, dict], None] | None = None, token_type_ids=None) -> ChainResult:
    """Run segments 0..L with links 0..L-1 between them. `token_type_ids`: for a segment 0 that takes them
    (a sentence-pair model); a segment 0 without that input never sees them.

    `on_segment(k, feeds, outputs)` sees each segment's exact inputs and outputs (parity records them).
    """
    if len(specs) != len(etas) + 1:
        raise ValueError(f"{len(specs)} segments need {len(specs) - 1} link thresholds, got {len(etas)}")
    inputs = dict(zip(PAIR_MODEL_INPUTS, (input_ids, attention_mask, token_type_ids)))
    missing = [name for name in specs[0].inputs if inputs.get(name) is None]
    if missing:
        raise ValueError(f"segment 0 takes {', '.join(missing)}: pass it to the chain")
    mask = attention_mask
    feeds = {name: inputs[name] for name in specs[0].inputs}
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
