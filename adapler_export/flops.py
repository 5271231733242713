"""FLOPs accounting from the sequence lengths each layer actually runs on.

Per encoder layer on s tokens (multiply-add = 2 FLOPs): Q, K, V and output projections 8·s·H²,
attention scores and weighted sum 4·s²·H, feed-forward 4·s·H·I. A Contribution Predictor on s tokens
costs 2·s·(32·H + 32). Embeddings and the classifier are the same for both models and left out.
Speedup = FLOPs(full model on the unpadded input) / FLOPs(adaptive model), summed over examples.
"""
from __future__ import annotations

import numpy as np

from .modeling_adapler import CP_HIDDEN


# The formulas take numpy arrays (evaluation) and torch tensors alike (soft_flops_fraction, training).
def _layer_flops(seq, hidden: int, intermediate: int):
    return 8.0 * seq * hidden**2 + 4.0 * seq**2 * hidden + 4.0 * seq * hidden * intermediate


def _cp_flops(seq, hidden: int):
    return 2.0 * seq * (CP_HIDDEN * hidden + CP_HIDDEN)


def layer_flops(seq, hidden: int, intermediate: int):
    return _layer_flops(np.asarray(seq, dtype=np.float64), hidden, intermediate)


def cp_flops(seq, hidden: int):
    return _cp_flops(np.asarray(seq, dtype=np.float64), hidden)


def full_model_flops(input_lengths, num_layers: int, hidden: int, intermediate: int) -> np.ndarray:
    """Per example: the backbone without removal on its live tokens."""
    return num_layers * layer_flops(input_lengths, hidden, intermediate)


def _adaptive_flops(input_lengths, kept_per_layer, hidden: int, intermediate: int):
    """Per example, for numpy arrays or torch tensors: kept_per_layer holds one length array per layer, the
    tokens layer l runs on; CP_l runs on the tokens entering it (the input for l = 0, layer l-1's kept tokens
    after that)."""
    entering = [input_lengths, *kept_per_layer[:-1]]
    return sum(_layer_flops(kept, hidden, intermediate) + _cp_flops(before, hidden)
               for kept, before in zip(kept_per_layer, entering))


def adaptive_flops(input_lengths, kept_lengths, hidden: int, intermediate: int) -> np.ndarray:
    """Per example. kept_lengths: [num_layers, N] (see _adaptive_flops)."""
    return _adaptive_flops(np.asarray(input_lengths, dtype=np.float64),
                           list(np.asarray(kept_lengths, dtype=np.float64)), hidden, intermediate)


def flops_speedup(input_lengths, kept_lengths, num_layers: int, hidden: int, intermediate: int) -> float:
    full = full_model_flops(input_lengths, num_layers, hidden, intermediate).sum()
    return float(full / adaptive_flops(input_lengths, kept_lengths, hidden, intermediate).sum())


def soft_flops_fraction(input_lengths, kept_lengths: list, hidden: int, intermediate: int):
    """The adaptive model's FLOPs over the full model's, summed over a batch, from torch tensors: input_lengths
    [B] and kept_lengths, one [B] per layer (soft live counts in training, so the result is differentiable in
    them). The same accounting as flops_speedup, whose reciprocal it is for hard lengths."""
    adaptive = _adaptive_flops(input_lengths, kept_lengths, hidden, intermediate).sum()
    return adaptive / (len(kept_lengths) * _layer_flops(input_lengths, hidden, intermediate).sum())
