"""Rationales people can see: how deep each token of a prediction went, as HTML, PNG or plain text.

Everything here renders a :class:`~adapler_export.serving.runtime.Prediction`; nothing re-runs the model
or the link rule. The one computation is a token's **depth**, the number of encoder layers that read it
(:func:`token_depths`). Link *k* sits before encoder layer *k* (docs/INTERFACES.md: CP_0 scores the
embedding output), so ``kept_positions[k]`` are the tokens layer *k* reads and

* depth = 1 + the index of the last link that kept the token, i.e. it was read by layers 1..depth
  (layers counted from 1 here, as people count them);
* depth 0: link 0 dropped it, so no encoder layer read it (only the embeddings and CP_0 saw it);
* depth L: kept by every link, read by all L layers. ``[CLS]`` is always kept, so its depth is L.

The links compact tokens in turn, so each link keeps a subset of what the previous one kept; a prediction
that says otherwise cannot be drawn as "read by layers 1..k" and is refused.
"""
from __future__ import annotations

import dataclasses
import html
import itertools
import textwrap
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import AdaplerError
from .serving.tokenization import HEAD, HEAD_TAIL
from .storage import atomic_file

CONTINUATION = "##"  # a WordPiece that continues the previous one (BERT-family tokenizers)
PNG_MAX_TOKENS = 300  # beyond this the PNG says "... N more": a figure for docs, not a dump
TEXT_WIDTH = 100  # characters per line of the terminal view

# The colour scale, from "read by no layer" to "read by all layers" (ColorBrewer Blues' ends).
SHALLOW_RGB = (0xF7, 0xFB, 0xFF)
DEEP_RGB = (0x08, 0x30, 0x6B)


# ----- the one computation ------------------------------------------------------------------------------
def token_depths(prediction, num_layers: int) -> list:
    """Per token of ``prediction.tokens``: how many encoder layers read it (0..num_layers)."""
    kept = prediction.kept_positions
    if len(kept) != num_layers:
        raise AdaplerError(f"the prediction has {len(kept)} links' kept positions, the model {num_layers} layers")
    depths = [0] * len(prediction.tokens)
    previous = set(range(len(depths)))
    for link, positions in enumerate(kept):
        positions = set(positions)
        if not positions <= previous:
            raise AdaplerError(f"link {link} kept positions {sorted(positions - previous)} that link "
                               f"{link - 1} had dropped (or that are past the tokens): not a rationale")
        for position in positions:
            depths[position] = link + 1
        previous = positions
    return depths


def depth_description(depth: int, num_layers: int) -> str:
    """The words for a depth, in the legend, the tooltips and the terminal view alike."""
    if depth == 0:
        return "dropped before layer 1 (read by no layer)"
    if depth == num_layers:
        return f"read by all {num_layers} layers" if num_layers > 1 else "read by the only layer"
    return "read by layer 1" if depth == 1 else f"read by layers 1..{depth}"


def depth_colour(depth: int, num_layers: int) -> str:
    """``#rrggbb`` on the scale from SHALLOW_RGB (depth 0) to DEEP_RGB (depth num_layers)."""
    share = depth / num_layers if num_layers else 1.0
    return "#" + "".join(f"{round(a + (b - a) * share):02x}" for a, b in zip(SHALLOW_RGB, DEEP_RGB))


def ink_colour(depth: int, num_layers: int) -> str:
    """Black text on the light half of the scale, white on the dark half (readable either way)."""
    return "#ffffff" if num_layers and depth / num_layers > 0.5 else "#000000"


# ----- what every view shows ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenView:
    token: str  # the wordpiece as the tokenizer wrote it
    text: str  # what is shown: the wordpiece without its continuation mark
    joins_previous: bool  # a continuation wordpiece: drawn with no space before it
    depth: int
    special: bool  # [CLS] / [SEP]: the model's markers, not the user's text


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One text's prediction, ready to render."""
    label: str
    probability: float  # of the predicted label
    num_layers: int
    max_length: int
    tokens: tuple  # TokenView per wordpiece, [CLS] and [SEP] included
    kept_per_layer: tuple  # tokens read by layer 1..L
    truncated: bool
    empty_input: bool
    truncation: str = HEAD  # how an over-long text was cut (the artifact's rule, tokenization.TRUNCATIONS)

    @property
    def markers(self) -> list:
        return [view.token for view in self.tokens if view.special]

    def notes(self) -> list:
        """What a reader must know to read the shading right (every view states these)."""
        notes = []
        if self.truncated and self.truncation == HEAD_TAIL:
            notes.append(f"Truncated: the model reads at most {self.max_length} wordpieces (markers included), "
                         f"the beginning and the end of the text (head+tail); the middle was not read and is not "
                         f"shown.")
        elif self.truncated:
            notes.append(f"Truncated: the model reads at most {self.max_length} wordpieces (markers included); "
                         f"the rest of the text was not read and is not shown.")
        if self.empty_input:
            notes.append("Empty input (no token): the label is the model's prior for no evidence, "
                         "not a reading of the text.")
        if self.markers:
            notes.append(f"{' and '.join(self.markers)} are the model's markers, not text (shown dimmed); "
                         f"{self.markers[0]} is always kept.")
        return notes


def explain(prediction, num_layers: int, max_length: int, truncation: str = HEAD) -> Explanation:
    """The :class:`Explanation` of one prediction of ``TextClassifier.classify`` (``max_length`` and
    ``truncation``: the classifier's, how an over-long text was cut)."""
    depths = token_depths(prediction, num_layers)
    # encode() puts the markers first and last ([CLS] ... [SEP]); an empty text is just the two
    markers = {0, len(depths) - 1}
    views = tuple(TokenView(token=token, text=token[len(CONTINUATION):] if _continues(token) else token,
                            joins_previous=_continues(token), depth=depth, special=position in markers)
                  for position, (token, depth) in enumerate(zip(prediction.tokens, depths)))
    return Explanation(label=prediction.label,
                       probability=float(prediction.probabilities[prediction.label_id]), num_layers=num_layers,
                       max_length=max_length, tokens=views,
                       kept_per_layer=tuple(len(kept) for kept in prediction.kept_positions),
                       truncated=bool(prediction.truncated), empty_input=bool(prediction.empty_input),
                       truncation=truncation)


def _continues(token: str) -> bool:
    return token.startswith(CONTINUATION) and len(token) > len(CONTINUATION)


def shared_num_layers(explanations: Sequence[Explanation]) -> int:
    """The one layer count of a page: its legend and colours are drawn once for every text on it."""
    counts = {explanation.num_layers for explanation in explanations}
    if len(counts) != 1:
        raise AdaplerError(f"one page shows the texts of one model; got layer counts {sorted(counts)}")
    return counts.pop()


def heading(number: int, explanation: Explanation) -> str:
    return f"Text {number}: {explanation.label} (p = {explanation.probability:.3f})"


def kept_summary(explanation: Explanation) -> str:
    total = len(explanation.tokens)
    return "tokens read per layer: " + ", ".join(
        f"layer {layer}: {count}/{total}" for layer, count in enumerate(explanation.kept_per_layer, start=1))


# ----- terminal -----------------------------------------------------------------------------------------
def render_text(explanations: Sequence[Explanation]) -> str:
    """Each text as its tokens in order, each followed by its depth (``charming:3``); blocks apart by a blank
    line (:func:`render_text_block` one at a time)."""
    return "\n\n".join(render_text_block(number, explanation)
                       for number, explanation in enumerate(explanations, start=1)) + "\n"


def render_text_block(number: int, explanation: Explanation) -> str:
    """Text ``number``'s block of the terminal view (no blank line around it)."""
    layers = explanation.num_layers
    lines = [heading(number, explanation),
             f"  depth = how many of the {layers} layers read the token (0: "
             f"{depth_description(0, layers)}; {layers}: {depth_description(layers, layers)})"]
    lines += [f"  {note}" for note in explanation.notes()]
    lines += [f"  {kept_summary(explanation)}"]
    tokens = " ".join(f"{view.token}:{view.depth}" for view in explanation.tokens)
    lines += textwrap.wrap(tokens, TEXT_WIDTH, initial_indent="  ", subsequent_indent="  ",
                           break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


# ----- HTML ---------------------------------------------------------------------------------------------
PAGE_CSS = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #111; }
section { border-top: 1px solid #ccc; padding: 0.5em 0 1.5em; }
.note { color: #444; font-size: 0.9em; margin: 0.3em 0; }
.legend span, .tokens span { padding: 0.1em 0.2em; border-radius: 0.2em; }
.legend { font-size: 0.85em; line-height: 2.2; }
.legend span { white-space: nowrap; }
.tokens { line-height: 2; }
.tokens .marker { opacity: 0.45; font-size: 0.8em; }
table { border-collapse: collapse; font-size: 0.9em; margin-top: 0.8em; }
td, th { border: 1px solid #ccc; padding: 0.15em 0.6em; text-align: right; }
"""


def _depth_css(num_layers: int) -> str:
    return "\n".join(f".d{depth} {{ background: {depth_colour(depth, num_layers)}; "
                     f"color: {ink_colour(depth, num_layers)}; }}" for depth in range(num_layers + 1))


def _escape(text) -> str:
    return html.escape(str(text), quote=True)


def _html_legend(num_layers: int) -> str:
    swatches = " ".join(f'<span class="d{depth}">{_escape(depth_description(depth, num_layers))}</span>'
                        for depth in range(num_layers + 1))
    return f'<p class="legend">Shading: {swatches}</p>'


def _html_token(view: TokenView, num_layers: int) -> str:
    classes = f"d{view.depth}" + (" marker" if view.special else "")
    title = f"{view.token}: {depth_description(view.depth, num_layers)}"
    span = f'<span class="{classes}" title="{_escape(title)}">{_escape(view.text)}</span>'
    return span if view.joins_previous else " " + span


def _html_table(explanation: Explanation) -> str:
    total = len(explanation.tokens)
    rows = "".join(f"<tr><td>{layer}</td><td>{count}</td><td>{count / total:.0%}</td></tr>"
                   for layer, count in enumerate(explanation.kept_per_layer, start=1))
    return (f"<table><tr><th>layer</th><th>tokens read (of {total})</th><th>share</th></tr>{rows}</table>")


def _html_section(number: int, explanation: Explanation) -> str:
    notes = "".join(f'<p class="note">{_escape(note)}</p>' for note in explanation.notes())
    tokens = "".join(_html_token(view, explanation.num_layers) for view in explanation.tokens)
    return (f"<section>\n<h2>{_escape(heading(number, explanation))}</h2>\n{notes}\n"
            f"{_html_legend(explanation.num_layers)}\n<p class=\"tokens\">{tokens.lstrip()}</p>\n"
            f"{_html_table(explanation)}\n</section>")


def render_html(explanations: Sequence[Explanation], title: str = "AdapLeR rationales") -> str:
    """One self-contained page (inline CSS; no script, font, image or link to anything outside it)."""
    shared_num_layers(explanations)
    return "".join(html_parts(explanations, title))


def html_parts(explanations: Iterable[Explanation], title: str = "AdapLeR rationales"):
    """:func:`render_html`'s page in pieces, one section per explanation as it comes (so a page of any length
    is written in the memory of one text). The page shows one model: a text of another layer count is an
    error."""
    explanations = iter(explanations)
    first = next(explanations, None)
    if first is None:
        raise AdaplerError("no explanation to show: a page needs at least one text")
    num_layers = first.num_layers
    yield (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f'<meta name="generator" content="adapler-export explain">\n<title>{_escape(title)}</title>\n'
           f"<style>{PAGE_CSS + _depth_css(num_layers)}\n</style>\n</head>\n<body>\n<h1>{_escape(title)}</h1>\n"
           f'<p class="note">Each wordpiece is shaded by how many encoder layers read it before the model\'s '
           f"Contribution Predictors dropped it; hover a token for its layers.</p>\n")
    for number, explanation in enumerate(itertools.chain([first], explanations), start=1):
        shared_num_layers([first, explanation])
        yield ("" if number == 1 else "\n") + _html_section(number, explanation)
    yield "\n</body>\n</html>\n"


# ----- PNG ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Canvas:
    """Draws top to bottom on one axes whose data units are points (1/72 in), so that text sizes and
    box sizes share a unit; the figure's height is set once everything is drawn."""
    ax: object
    width: float  # points
    y: float = 0.0  # points from the top
    font: float = 7.0  # token font size (points); a monospace font makes widths predictable
    margin: float = 12.0

    @property
    def char_width(self) -> float:
        return 0.61 * self.font  # DejaVu Sans Mono's advance is 0.602 em

    @property
    def line_height(self) -> float:
        return 1.75 * self.font

    def line(self, text: str, size: float = 8.0, weight: str = "normal", colour: str = "#222222") -> None:
        self.y += 1.5 * size
        self.ax.text(self.margin, self.y, text, fontsize=size, fontweight=weight, color=colour, va="baseline",
                     parse_math=False)
        self.y += 0.4 * size

    def boxes(self, items: Sequence) -> None:
        """``items``: (text, colour, ink, joins_previous, alpha); wrapped at the canvas width."""
        from matplotlib.patches import Rectangle

        x, gap, pad = self.margin, 0.6 * self.char_width, 1.0
        self.y += 2.0
        for text, colour, ink, joins_previous, alpha in items:
            width = len(text) * self.char_width + 2 * pad
            x += 0 if joins_previous else gap
            if x + width > self.width - self.margin and x > self.margin + gap:
                x, self.y = self.margin + gap, self.y + self.line_height
            self.ax.add_patch(Rectangle((x, self.y), width, self.line_height - 1.5, facecolor=colour,
                                        edgecolor="none", alpha=alpha))
            self.ax.text(x + pad, self.y + (self.line_height - 1.5) / 2, text, fontsize=self.font,
                         family="monospace", color=ink, va="center", ha="left", alpha=alpha, parse_math=False)
            x += width
        self.y += self.line_height + 2.0


def _png_legend(canvas: _Canvas, num_layers: int) -> None:
    canvas.boxes([(f"{depth}: {depth_description(depth, num_layers)}", depth_colour(depth, num_layers),
                   ink_colour(depth, num_layers), False, 1.0) for depth in range(num_layers + 1)])


def _png_text(canvas: _Canvas, number: int, explanation: Explanation, max_tokens: int) -> None:
    layers = explanation.num_layers
    canvas.line(heading(number, explanation), size=9, weight="bold")
    for note in explanation.notes():
        canvas.line(note, size=7, colour="#444444")
    shown = explanation.tokens[:max_tokens]
    canvas.boxes([(view.text, depth_colour(view.depth, layers), ink_colour(view.depth, layers),
                   view.joins_previous, 0.45 if view.special else 1.0) for view in shown])
    if len(explanation.tokens) > len(shown):
        canvas.line(f"... {len(explanation.tokens) - len(shown)} more tokens (all are in the HTML view)", size=7)
    canvas.line(kept_summary(explanation), size=7)
    canvas.y += 8


def render_png(explanations: Sequence[Explanation], path, max_tokens: int = PNG_MAX_TOKENS,
               width_inches: float = 10.0, dpi: int = 150) -> Path:
    """The same shading as the HTML, as a PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    width = width_inches * 72
    fig = plt.figure(figsize=(width_inches, 1.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    canvas = _Canvas(ax, width)
    canvas.line("AdapLeR rationales: each wordpiece shaded by how many encoder layers read it", size=10,
                weight="bold")
    _png_legend(canvas, shared_num_layers(explanations))
    for number, explanation in enumerate(explanations, start=1):
        _png_text(canvas, number, explanation, max_tokens)
    ax.set_xlim(0, width)
    ax.set_ylim(canvas.y, 0)  # y grows downward, in points: the figure is exactly as tall as what was drawn
    fig.set_size_inches(width_inches, canvas.y / 72)
    try:
        with warnings.catch_warnings():
            # DejaVu has no CJK or emoji: those draw as boxes here (the HTML shows them); one warning a glyph
            # would only bury the command's output
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(path, dpi=dpi, format="png")  # format given: an atomic write's temporary name has no .png
    finally:
        plt.close(fig)
    return Path(path)


# ----- from texts to files ------------------------------------------------------------------------------
def explain_texts(classifier, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
    """One :class:`Explanation` per text (per sentence pair, with ``pairs``), from a ``TextClassifier``'s
    predictions."""
    return [explain(prediction, classifier.manifest.num_layers, classifier.max_length, classifier.truncation)
            for prediction in classifier.classify(texts, pairs)]


def iter_explanations(classifier, inputs: Iterable, **stream) -> Iterator[Explanation]:
    """One :class:`Explanation` per input, in order, as the predictions come: ``TextClassifier.classify_iter``
    (``inputs`` and ``stream``, its ``batch_size`` and ``window``, as there)."""
    for prediction in classifier.classify_iter(inputs, **stream):
        yield explain(prediction, classifier.manifest.num_layers, classifier.max_length, classifier.truncation)


def write_html(path, explanations: Iterable[Explanation]) -> Path:
    """The page, written atomically (a failure leaves the earlier file, or none), a section at a time."""
    with atomic_file(Path(path)) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for part in html_parts(explanations):
                handle.write(part)
    return Path(path)


def write_png(path, explanations: Sequence[Explanation]) -> Path:
    """The figure, written atomically (a failure leaves the earlier file, or none)."""
    with atomic_file(Path(path)) as tmp:
        render_png(explanations, tmp)
    return Path(path)
