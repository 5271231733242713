"""AdapLeR over a Hugging Face BERT-family encoder (the PyTorch reference).

Readable in one file, like a transformers modeling file. The backbone is an
`AutoModelForSequenceClassification` of the BERT family: BERT, MiniLM, RoBERTa and ELECTRA (encoder layers
at `<base>.encoder.layer`, BERT's module names) or DistilBERT (`<base>.transformer.layer`, its own names).
An `EncoderLayout` says where a family keeps its layers and which module of one layer plays each role;
the encoder layer is re-implemented once, functionally, over those roles (`encoder_layer`), so that the
same code runs the soft-removal training forward, the hard-removal inference forward and the ONNX
segments, with an additive attention bias that carries soft removal.

Method details follow ../shared/ADAPLER_METHOD.md (the paper's official code):
- CP_l scores the tokens *entering* layer l (CP_0 scores the embedding output);
- s~ = softmax of the CP logits over live tokens ([CLS] forced live), threshold delta_l = eta_l / n with
  n the live count ([CLS] included), keep iff s~ >= delta, [CLS] always kept, [SEP] droppable;
- soft removal (training) updates the running mask as mask * exp(mask * e) and adds the same
  mask * e to the attention logits of each key (the official layer code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

import torch
from torch import nn

from .link import CompactResult, compact_by_keep_torch, initial_positions_torch, keep_mask_torch

CP_HIDDEN = 32
ATTENTION_MASK_VALUE = -10000.0  # the official code's additive mask; representable in fp16
SOFT_REMOVAL_BETA = 0.1
ETA_MIN, ETA_MAX, THETA_MIN = 0.01, 1.0, 0.001


class UnsupportedBackbone(ValueError):
    pass


class ContributionPredictor(nn.Module):
    """Per-token Dense(H->32) -> activation -> Dense(32->1): one logit per token."""

    def __init__(self, hidden_size: int, activation: nn.Module):
        super().__init__()
        self.dense_in = nn.Linear(hidden_size, CP_HIDDEN)
        self.activation = activation
        self.dense_out = nn.Linear(CP_HIDDEN, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.activation(self.dense_in(hidden))).squeeze(-1)


def with_cls_live(mask: torch.Tensor) -> torch.Tensor:
    """The mask with slot 0 ([CLS]) forced to 1, as a float tensor (a pad, not a concatenation with ones:
    two ONNX nodes instead of six, in every segment)."""
    return nn.functional.pad(mask.to(torch.float32)[:, 1:], (1, 0), value=1.0)


def cp_distribution(cp_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s~: softmax of the CP logits weighted by the (soft) mask, [CLS] forced live. fp32, rows sum to 1.

    Dead slots get exactly 0. Written without -inf so that it exports cleanly and never produces NaN.
    """
    weights = with_cls_live(mask)
    logits = cp_logits.to(torch.float32)
    logits = torch.where(weights > 0, logits, ATTENTION_MASK_VALUE)
    exp = torch.exp(logits - logits.amax(dim=-1, keepdim=True)) * weights
    return exp / exp.sum(dim=-1, keepdim=True)


def cp_distribution_hard(cp_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s~ for a 0/1 mask (inference: `forward_hard` and every exported segment): `cp_distribution`'s values as
    ONE softmax of the masked logits. With 0/1 weights the weighting changes nothing: a dead slot's logit is
    ATTENTION_MASK_VALUE, and exp of it minus the row's maximum (a live logit: [CLS] is forced live) is exactly 0.

    Why this form: ONNX Runtime runs it as one Softmax kernel where the weighted form exports as ReduceMax, Sub,
    Exp, Mul, ReduceSum and Div (five fewer nodes per CP; the time this saves at batch 1 was within the noise
    between ONNX Runtime sessions on the 2-core CPU machine: docs/results/one-graph.md, update 2026-12-08). Both
    forms normalise in fp32 and differ only in rounding (a reciprocal multiply against a division), as torch's and
    ONNX Runtime's exp already do; fp32 parity kept every keep decision on SST-2 dev.
    """
    live = with_cls_live(mask) > 0
    logits = cp_logits if cp_logits.dtype == torch.float32 else cp_logits.to(torch.float32)
    return torch.softmax(torch.where(live, logits, ATTENTION_MASK_VALUE), dim=-1)


def soft_removal_exponent(scores: torch.Tensor, delta: torch.Tensor, lam: float) -> torch.Tensor:
    """e <= 0: the log-space suppression of each token at one layer (ADAPLER_METHOD.md).

    e = clip(min(0, lam/delta*(s - delta) - beta/lam, (s - 1)*beta/(lam*(1 - delta))), -10000, 0).
    Above delta the slope is gentle (tokens barely touched), below it steep (suppressed harder as lam grows).
    """
    beta = SOFT_REMOVAL_BETA
    below = lam / delta * (scores - delta) - beta / lam
    above = (scores - 1.0) * beta / (lam * (1.0 - delta).clamp_min(1e-6))
    e = torch.minimum(torch.minimum(below, above), torch.zeros_like(scores))
    e = e.clamp(ATTENTION_MASK_VALUE, 0.0)
    return torch.cat([torch.zeros_like(e[:, :1]), e[:, 1:]], dim=1)  # [CLS] is never suppressed


SOFT_MASK_FLOOR = 1e-6  # below this a token counts as gone: its mask is no longer updated (official code)


def soft_mask_update(mask: torch.Tensor, exponent: torch.Tensor) -> tuple:
    """One layer of soft removal: returns (new mask, the edit added to the attention logits).

    The edit is the exponent scaled by the current soft mask, mask * e, and the running mask becomes
    mask * exp(mask * e): a token already half gone is pushed out more gently, and a token whose mask is
    at or below SOFT_MASK_FLOOR (gone, or padding) keeps its mask (the official layer code).
    """
    edit = mask * exponent
    alive = mask > SOFT_MASK_FLOOR
    return torch.where(alive, mask * torch.exp(edit), mask), edit


def scale_cls(distribution: torch.Tensor, weight) -> torch.Tensor:
    """The distribution with its [CLS] entry multiplied by `weight`, renormalised to sum 1 (theta's role)."""
    scaled = torch.cat([distribution[:, :1] * weight, distribution[:, 1:]], dim=1)
    return scaled / (scaled.sum(dim=-1, keepdim=True) + 1e-15)


def attention_bias_from_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive key bias [B,1,1,S]: log(mask) for soft (floating) masks, 0 / -10000 for hard ones.

    An integer mask is hard (the inference forward, the segments, the full model): its bias is written
    without the log, (mask - 1) * 10000, the same values in three nodes instead of ten per segment.
    """
    if not mask.is_floating_point():
        return ((mask[:, None, None, :].to(torch.float32) - 1.0) * -ATTENTION_MASK_VALUE).to(dtype)
    bias = torch.where(mask > 0, torch.log(mask.clamp_min(1e-30)), ATTENTION_MASK_VALUE)
    return bias.clamp_min(ATTENTION_MASK_VALUE).to(dtype)[:, None, None, :]


class _ReshapeTail(torch.autograd.Function):
    """`x` [B, S, ...] reshaped to [B, S, *tail]; exported as ONE Reshape node whose target shape
    [0, -1, *tail] copies B (ONNX's 0) and infers S, instead of the Shape/Gather/Unsqueeze/Concat chain
    that `view(batch, seq, ...)` traces to: ten nodes less per layer, each a fixed cost at batch 1.
    (Not [0, 0, *tail]: the TorchScript exporter's shape inference asserts on a 0 without a -1.)"""

    @staticmethod
    def forward(ctx, x, tail):
        return x.reshape(*x.shape[:2], *tail)

    @staticmethod
    def symbolic(g, x, tail):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, -1, *tail], dtype=torch.int64)))


def reshape_tail(x: torch.Tensor, *tail: int) -> torch.Tensor:
    """x.reshape(B, S, *tail); in ONNX export, one Reshape with a constant shape (`_ReshapeTail`)."""
    if torch.onnx.is_in_onnx_export():
        return _ReshapeTail.apply(x, tail)
    return x.reshape(*x.shape[:2], *tail)


class LayerParts(NamedTuple):
    """The roles of one post-LN encoder layer, in `encoder_layer`'s order: attribute paths in an
    `EncoderLayout`, the layer's own modules (and head counts) once resolved by `EncoderLayout.parts`."""
    query: object
    key: object
    value: object
    heads: object  # int: number of attention heads
    head_size: object  # int: size of one head
    attention_dense: object
    attention_dropout: object  # None in a layout: the family has no dropout there
    attention_norm: object
    ffn_in: object
    activation: object
    ffn_out: object
    ffn_dropout: object
    output_norm: object


@dataclass(frozen=True)
class EncoderLayout:
    """Where a backbone family keeps its encoder layers (`layers`, under the base model) and which module
    of one layer plays each role of `encoder_layer` (`paths`); `token_type_ids`: its embeddings take them."""
    families: str
    layers: str
    paths: LayerParts
    token_type_ids: bool = True

    def parts(self, layer: nn.Module) -> LayerParts:
        return LayerParts(*(_identity if path is None else attrgetter(path)(layer) for path in self.paths))

    def missing(self, layer: nn.Module) -> list:
        """The paths this layout names that `layer` lacks."""
        return [path for path in self.paths if path is not None and _lookup(layer, path) is None]


def _identity(x):
    return x


def _lookup(obj, path: str):
    """`obj.<path>` (a dotted path), or None where a step is missing."""
    try:
        return attrgetter(path)(obj)
    except AttributeError:
        return None


BERT_LAYOUT = EncoderLayout("BERT, MiniLM, RoBERTa, ELECTRA", "encoder.layer", LayerParts(
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    heads="attention.self.num_attention_heads", head_size="attention.self.attention_head_size",
    attention_dense="attention.output.dense", attention_dropout="attention.output.dropout",
    attention_norm="attention.output.LayerNorm", ffn_in="intermediate.dense",
    activation="intermediate.intermediate_act_fn", ffn_out="output.dense", ffn_dropout="output.dropout",
    output_norm="output.LayerNorm"))
DISTILBERT_LAYOUT = EncoderLayout("DistilBERT", "transformer.layer", LayerParts(
    query="attention.q_lin", key="attention.k_lin", value="attention.v_lin", heads="attention.n_heads",
    head_size="attention.attention_head_size", attention_dense="attention.out_lin", attention_dropout=None,
    attention_norm="sa_layer_norm", ffn_in="ffn.lin1", activation="ffn.activation", ffn_out="ffn.lin2",
    ffn_dropout="ffn.dropout", output_norm="output_layer_norm"), token_type_ids=False)
LAYOUTS = (BERT_LAYOUT, DISTILBERT_LAYOUT)
SUPPORTED_FAMILIES = "BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM"


def find_layout(backbone: nn.Module) -> EncoderLayout:
    """The layout of `backbone`'s family, or `UnsupportedBackbone` naming what is missing."""
    name, prefix = type(backbone).__name__, backbone.base_model_prefix
    for layout in LAYOUTS:
        layers = _lookup(backbone, f"{prefix}.{layout.layers}")
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            missing = layout.missing(layers[0])
            if missing:
                raise UnsupportedBackbone(
                    f"{name}: the encoder layers at {prefix}.{layout.layers} lack {', '.join(missing)} (the "
                    f"{layout.families} layout); supported families: {SUPPORTED_FAMILIES}")
            return layout
    tried = " or ".join(f"{prefix}.{layout.layers}" for layout in LAYOUTS)
    raise UnsupportedBackbone(f"{name}: no encoder layers found at {tried}; supported families: {SUPPORTED_FAMILIES}")


def encoder_layer(layer: nn.Module, hidden: torch.Tensor, bias: torch.Tensor, layout: EncoderLayout,
                  return_attention: bool = False):
    """One post-LN encoder layer (its modules found through `layout`) with an additive attention bias.

    Attention-probability dropout is left out on purpose (the official AdapLeR layer disables it);
    hidden dropout follows the module's train/eval mode. `return_attention`: (output, attention probabilities
    [B, heads, S, S]), for attention-score token pruning (benchmarks/alternatives.py), a baseline of the paper's.
    """
    part = layout.parts(layer)
    heads, head_dim = part.heads, part.head_size

    def split(x):
        return reshape_tail(x, heads, head_dim).transpose(1, 2)

    query, key, value = split(part.query(hidden)), split(part.key(hidden)), split(part.value(hidden))
    logits = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim)) + bias
    probs = torch.softmax(logits.float(), dim=-1).to(value.dtype)
    context = reshape_tail(torch.matmul(probs, value).transpose(1, 2), heads * head_dim)
    hidden = part.attention_norm(part.attention_dropout(part.attention_dense(context)) + hidden)
    inter = part.activation(part.ffn_in(hidden))
    out = part.output_norm(part.ffn_dropout(part.ffn_out(inter)) + hidden)
    return (out, probs) if return_attention else out


@dataclass
class SoftOutput:
    logits: torch.Tensor
    scores: list  # s~ per layer, [B,S], the distribution compared with delta (and fitted to the targets)
    masks: list  # soft mask entering each layer (its CP and its delta), [B,S]; [CLS] is 1
    lengths: list  # per layer: soft live count after its removal, [CLS] and [SEP] included, [B] (differentiable)


@dataclass
class HardOutput:
    logits: torch.Tensor
    kept: list = field(default_factory=list)  # per layer: original positions kept, [B,S_l] int32, -1 padding
    lengths: list = field(default_factory=list)  # per layer: kept count per row, [B] int


class AdapLeRForSequenceClassification(nn.Module):
    """A sequence classifier with one Contribution Predictor per encoder layer and learned eta/theta."""

    def __init__(self, backbone: nn.Module, eta_init: float = 0.25, text_pair: bool = False):
        super().__init__()
        self.backbone = backbone
        # Trained on sentence pairs: its token types (0 first text, 1 second) are an input of the exported graphs.
        # Every forward takes them either way; a single-text model reads the default, all zeros.
        self.text_pair = bool(text_pair)
        self.layout = find_layout(backbone)
        config = backbone.config
        self.num_layers = len(self.layers)
        act = self.layout.parts(self.layers[0]).activation  # the CPs use the encoder's own activation
        self.cps = nn.ModuleList(
            ContributionPredictor(config.hidden_size, act if isinstance(act, nn.Module) else nn.GELU())
            for _ in range(self.num_layers))
        self.eta = nn.Parameter(torch.full((self.num_layers,), float(eta_init)))
        # theta_l scales the [CLS] entry of the saliency target of layer l (1.0 for l = 0 by definition).
        self.theta = nn.Parameter(torch.ones(self.num_layers))

    # ----- pieces, shared with the ONNX segments -------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return getattr(self.backbone, self.backbone.base_model_prefix)

    @property
    def layers(self) -> nn.ModuleList:
        return attrgetter(self.layout.layers)(self.base)

    @property
    def intermediate_size(self) -> int:
        """Width of the feed-forward block (for FLOPs; DistilBERT's config calls it `hidden_dim`)."""
        return self.layout.parts(self.layers[0]).ffn_in.out_features

    @property
    def config(self):
        return self.backbone.config

    @property
    def embedding_projection(self) -> nn.Module | None:
        """ELECTRA's `embeddings_project` (embedding size -> hidden size), where the backbone has one."""
        return getattr(self.base, "embeddings_project", None)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's input: word + position + token-type embeddings (token types default to all zeros:
        one text, and the only type a RoBERTa-style backbone with `type_vocab_size` 1 has; RoBERTa derives
        its position ids from input_ids inside its embeddings), then ELECTRA's projection where there is one.
        DistilBERT's embeddings take no token types."""
        if self.layout.token_type_ids:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            hidden = self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        else:
            hidden = self.base.embeddings(input_ids=input_ids)
        project = self.embedding_projection
        return hidden if project is None else project(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's own classifier on [CLS] (slot 0, never dropped)."""
        backbone = self.backbone
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None and isinstance(backbone.classifier, nn.Linear):  # BERT, MiniLM: pooler + linear
            return backbone.classifier(backbone.dropout(pooler(hidden)))
        if hasattr(backbone, "pre_classifier"):  # DistilBERT: linear, ReLU, dropout, linear
            return backbone.classifier(backbone.dropout(torch.relu(backbone.pre_classifier(hidden[:, 0]))))
        return backbone.classifier(hidden)  # RoBERTa/ELECTRA heads take the sequence and pick [CLS] themselves

    def clamp_parameters_(self) -> None:
        with torch.no_grad():
            self.eta.clamp_(ETA_MIN, ETA_MAX)
            self.theta.clamp_(min=THETA_MIN)

    # ----- forwards --------------------------------------------------------------------------------------
    def forward_full(self, input_ids, attention_mask, token_type_ids=None, embeddings: torch.Tensor | None = None) \
            -> torch.Tensor:
        """The backbone classifier with no removal (stage 1 model, saliency extraction, FLOPs baseline)."""
        hidden = self.embed(input_ids, token_type_ids) if embeddings is None else embeddings
        bias = attention_bias_from_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = encoder_layer(layer, hidden, bias, self.layout)
        return self.head(hidden)

    def forward_soft(self, input_ids, attention_mask, lam: float, cls_weights: torch.Tensor | None = None,
                     token_type_ids=None) -> SoftOutput:
        """Training forward: tokens are suppressed smoothly; the sequence length never changes.

        Everything is differentiable: eta_l acts through delta_l = eta_l / n on layer l's mask, and that
        mask feeds every later layer's attention, CP distribution, n and length. `cls_weights` [L] is the
        CP-side [CLS] weight (the official theta_PR: ones, used only to read the gradient theta learns
        from; layer l uses cls_weights[l], layer 0 none).
        """
        hidden = self.embed(input_ids, token_type_ids)
        mask = attention_mask.to(torch.float32)
        bias = attention_bias_from_mask(mask, torch.float32)
        out = SoftOutput(None, [], [], [])
        for index, layer in enumerate(self.layers):
            scores = cp_distribution(self.cps[index](hidden), mask)
            if cls_weights is not None and index > 0:
                scores = scale_cls(scores, cls_weights[index].clamp_min(THETA_MIN))
            n = with_cls_live(mask).sum(dim=-1, keepdim=True)  # soft live count, [CLS] included
            exponent = soft_removal_exponent(scores, self.eta[index] / n, lam)
            out.scores.append(scores)
            out.masks.append(mask)
            mask, edit = soft_mask_update(mask, exponent)
            out.lengths.append(mask.sum(dim=-1))
            # The attention bias accumulates the edits (log of the mask while it is above the floor).
            bias = (bias + edit[:, None, None, :]).clamp_min(ATTENTION_MASK_VALUE)
            hidden = encoder_layer(layer, hidden, bias.to(hidden.dtype), self.layout)
        out.logits = self.head(hidden)
        return out

    def link(self, index: int, hidden, scores, mask, positions) -> CompactResult:
        keep = keep_mask_torch(scores, mask, self.eta[index].detach())
        return compact_by_keep_torch(hidden, keep, positions)

    @torch.no_grad()
    def forward_hard(self, input_ids, attention_mask, token_type_ids=None) -> HardOutput:
        """Inference forward: dropped tokens are physically removed; each row keeps its own tokens and
        the compacted length is the batch maximum (shorter rows padded and masked)."""
        attention_mask = attention_mask.to(torch.int32)
        hidden = self.embed(input_ids, token_type_ids)
        mask, positions = attention_mask, initial_positions_torch(attention_mask)
        out = HardOutput(None)
        for index, layer in enumerate(self.layers):
            scores = cp_distribution_hard(self.cps[index](hidden), mask)
            hidden, mask, positions, _ = self.link(index, hidden, scores, mask, positions)
            out.kept.append(positions)
            out.lengths.append(mask.sum(dim=1))
            hidden = encoder_layer(layer, hidden, attention_bias_from_mask(mask, hidden.dtype), self.layout)
        out.logits = self.head(hidden)
        return out
