"""`adapler-export explain` (issue 13, item 3): token depths, the HTML page, the PNG, the terminal view, the
CLI's bad-input rules, and the page in a real headless browser where one is installed."""
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from adapler_export.cli import main
from adapler_export.errors import AdaplerError
from adapler_export.rationale import (PNG_MAX_TOKENS, depth_colour, depth_description, explain, render_html,
                                      render_png, render_text, token_depths, write_png)
from adapler_export.serving.runtime import Prediction, TextClassifier
from conftest import require

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MALICIOUS = 'a <br /> charming <script>alert("x")</script> film & <img src=http://example.com/x.png>'
TEXTS = ["a charming and often affecting film .", "the plot was dull , the acting awful", MALICIOUS]


def prediction(tokens, kept, label="positive", truncated=False, empty_input=False) -> Prediction:
    probabilities = np.array([0.25, 0.75], dtype=np.float32)
    return Prediction(label=label, label_id=1, probabilities=probabilities, logits=np.log(probabilities),
                      tokens=list(tokens), kept_positions=[list(k) for k in kept], truncated=truncated,
                      empty_input=empty_input)


# 3 layers: link 0 drops "a" (depth 0), link 1 drops "film" and [SEP] (depth 1), link 2 drops "charm" (depth 2)
HAND = prediction(["[CLS]", "a", "charm", "##ing", "film", "[SEP]"], [[0, 2, 3, 4, 5], [0, 2, 3], [0, 3]])
HAND_DEPTHS = [3, 0, 2, 3, 1, 1]


class Spans(HTMLParser):
    """The page's token and legend spans: (class, title, text), and every tag seen."""

    def __init__(self):
        super().__init__()
        self.spans, self.tags, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "span":
            attrs = dict(attrs)
            self._open = [attrs.get("class", ""), attrs.get("title"), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(tuple(self._open))
            self._open = None


def token_spans(page: str) -> list:
    parser = Spans()
    parser.feed(page)
    return [span for span in parser.spans if span[1] is not None]  # the legend's swatches have no title


def span_depth(span) -> int:
    return int(re.search(r"\bd(\d+)\b", span[0]).group(1))


# ----- the one computation ------------------------------------------------------------------------------
def test_depths_of_a_hand_made_prediction():
    assert token_depths(HAND, 3) == HAND_DEPTHS


def test_depth_is_one_plus_the_last_link_that_kept_the_token():
    every = prediction(["[CLS]", "x", "[SEP]"], [[0, 1, 2], [0, 1, 2]])
    assert token_depths(every, 2) == [2, 2, 2]  # kept by every link: read by every layer
    none = prediction(["[CLS]", "x", "[SEP]"], [[0], [0]])
    assert token_depths(none, 2) == [2, 0, 0]  # dropped by link 0: read by no layer; [CLS] always kept


def test_depths_refuse_what_is_not_a_rationale():
    with pytest.raises(AdaplerError, match="2 links' kept positions, the model 3 layers"):
        token_depths(prediction(["[CLS]", "x"], [[0, 1], [0]]), 3)
    with pytest.raises(AdaplerError, match=r"link 1 kept positions \[1\] that link 0 had dropped"):
        token_depths(prediction(["[CLS]", "x", "[SEP]"], [[0, 2], [0, 1]]), 2)


def test_depth_words_and_colours():
    assert depth_description(0, 4) == "dropped before layer 1 (read by no layer)"
    assert depth_description(1, 4) == "read by layer 1"
    assert depth_description(3, 4) == "read by layers 1..3"
    assert depth_description(4, 4) == "read by all 4 layers"
    colours = [depth_colour(d, 4) for d in range(5)]
    assert len(set(colours)) == 5 and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    darkness = [sum(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colours]
    assert darkness == sorted(darkness, reverse=True), "deeper tokens must be darker"


# ----- HTML ---------------------------------------------------------------------------------------------
def test_html_shades_every_token_by_its_depth():
    page = render_html([explain(HAND, 3, 48)])
    spans = token_spans(page)
    assert [s[2] for s in spans] == ["[CLS]", "a", "charm", "ing", "film", "[SEP]"]
    assert [span_depth(s) for s in spans] == HAND_DEPTHS
    assert spans[2][1] == "charm: read by layers 1..2" and spans[3][1] == "##ing: read by all 3 layers"
    assert spans[1][1] == "a: dropped before layer 1 (read by no layer)"
    assert "marker" in spans[0][0] and "marker" in spans[-1][0] and "marker" not in spans[1][0]
    assert re.search(r">charm</span><span[^>]*>ing</span>", page), "a ##piece joins the previous piece"
    assert re.search(r">a</span> <span[^>]*>charm</span>", page), "words are apart"
    assert "Text 1: positive (p = 0.750)" in page
    assert "[CLS] and [SEP] are the model&#x27;s markers" in page
    legend = re.search(r'<p class="legend">.*?</p>', page).group(0)
    assert "dropped before layer 1" in legend and "read by all 3 layers" in legend
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", page)
    assert rows == [("1", "5"), ("2", "3"), ("3", "2")]  # tokens each layer read


def test_html_renders_markup_in_the_text_as_text():
    tokens = ["[CLS]", "<", "br", "/", ">", "<script>", 'alert("x")', "</script>", "&", "<img", "src=x>", "[SEP]"]
    hostile = prediction(tokens, [list(range(len(tokens)))] * 2)
    page = render_html([explain(hostile, 2, 48)], title="<script>title</script>")
    assert "<script" not in page.lower() and "<br" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;" in page and ">&lt;</span>" in page and ">&amp;</span>" in page
    assert [s[2] for s in token_spans(page)] == tokens  # every token comes back, as text
    parser = Spans()
    parser.feed(page)
    assert set(parser.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section",
                                "span", "table", "tr", "th", "td"}


def test_html_is_self_contained():
    page = render_html([explain(HAND, 3, 48)])
    for outside in ("http", "src=", "url(", "@import", "<script", "<link", "<img"):
        assert outside not in page.lower(), outside
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page


def test_truncated_and_empty_inputs_say_so():
    long = explain(prediction(["[CLS]", "x", "[SEP]"], [[0, 1, 2]], truncated=True), 1, 48)
    empty = explain(prediction(["[CLS]", "[SEP]"], [[0]], empty_input=True), 1, 48)
    page = render_html([long, empty])
    assert "Truncated: the model reads at most 48 wordpieces" in page
    assert "label is the model&#x27;s prior" in page
    text = render_text([long, empty])
    assert "at most 48 wordpieces" in text and "the label is the model's prior" in text


def test_one_page_is_one_model():
    with pytest.raises(AdaplerError, match="layer counts"):
        render_html([explain(HAND, 3, 48), explain(prediction(["[CLS]", "[SEP]"], [[0]]), 1, 48)])


# ----- terminal and PNG ---------------------------------------------------------------------------------
def test_text_view_puts_the_depth_after_each_token():
    view = render_text([explain(HAND, 3, 48)])
    assert "[CLS]:3 a:0 charm:2 ##ing:3 film:1 [SEP]:1" in view
    assert "layer 1: 5/6, layer 2: 3/6, layer 3: 2/6" in view


def read_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_png_is_a_real_image_even_for_math_like_and_long_texts(tmp_path):
    tokens = ["[CLS]"] + ["$\\notacommand{$", "50%", "\\alpha", "_b_", "word", "##s"] * 80 + ["[SEP]"]  # 482 tokens
    kept = [list(range(0, len(tokens), 2)), list(range(0, len(tokens), 4))]
    assert len(tokens) > PNG_MAX_TOKENS  # the "... N more" path
    long = explain(prediction(tokens, kept, truncated=True), 2, 512)
    path = render_png([explain(HAND, 3, 48)], tmp_path / "short.png")
    image = read_png(path)
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10, "the figure is not blank"
    with pytest.raises(AdaplerError, match="layer counts"):
        render_png([explain(HAND, 3, 48), long], tmp_path / "mixed.png")
    image = read_png(render_png([long], tmp_path / "long.png"))
    assert image.shape[1] == 1500 and 300 < image.shape[0] < 3000  # wrapped into a readable height


def test_png_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "figure.png"
    target.write_bytes(b"the user's earlier figure")

    def fail(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("adapler_export.rationale.render_png", fail)
    with pytest.raises(RuntimeError):
        write_png(target, [explain(HAND, 3, 48)])
    assert target.read_bytes() == b"the user's earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"], "no temporary file is left"


# ----- on a real (tiny) artifact ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_predictions(tiny_artifact):
    classifier = TextClassifier(tiny_artifact, backend_kind="onnxruntime")
    return classifier, classifier.classify(TEXTS)


def test_depths_agree_with_the_classifiers_kept_positions(tiny_predictions):
    classifier, predictions = tiny_predictions
    layers = classifier.manifest.num_layers
    dropped = 0
    for p in predictions:
        depths = token_depths(p, layers)
        for link, kept in enumerate(p.kept_positions):
            assert sorted(i for i, d in enumerate(depths) if d > link) == sorted(kept), f"link {link}"
        assert depths[0] == layers
        dropped += sum(d < layers for d in depths)
    assert dropped > 0, "the tiny model must really drop tokens, or this test shows nothing"


def test_cli_writes_html_and_png(tiny_artifact, tiny_predictions, tmp_path, capsys):
    classifier, predictions = tiny_predictions
    html_path, png_path = tmp_path / "why.html", tmp_path / "why.png"
    assert main(["explain", "--artifact", str(tiny_artifact), "--backend", "onnxruntime", *TEXTS,
                 "--html", str(html_path), "--png", str(png_path)]) == 0
    out = capsys.readouterr().out
    assert f"html written to {html_path}" in out and f"png written to {png_path}" in out
    page = html_path.read_text(encoding="utf-8")
    spans = token_spans(page)
    assert [s[2] for s in spans] == [t[2:] if t.startswith("##") else t for p in predictions for t in p.tokens]
    expected = [d for p in predictions for d in token_depths(p, classifier.manifest.num_layers)]
    assert [span_depth(s) for s in spans] == expected
    assert "<script" not in page.lower() and "http" not in page and "src=" not in page
    read_png(png_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["why.html", "why.png"]


def test_cli_prints_the_text_view(tiny_artifact, tiny_predictions, capsys):
    _, predictions = tiny_predictions
    assert main(["explain", "--artifact", str(tiny_artifact), "--backend", "onnxruntime", TEXTS[0]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Text 1: {predictions[0].label}")
    assert all(f"{token}:" in out for token in predictions[0].tokens)


@pytest.mark.parametrize("extra,fragment", [
    ([], "no text given"),
    (["x", "--html", "{tmp}/missing/out.html"], "folder {tmp}/missing does not exist"),
    (["x", "--png", "{tmp}/missing/out.png"], "folder {tmp}/missing does not exist"),
    (["x", "--html", "{tmp}/same", "--png", "{tmp}/same"], "--html and --png name the same file"),
    (["x", "--html", "{tmp}"], "is a folder"),
    (["x", "--html", "{tmp}/texts.txt", "--file", "{tmp}/texts.txt"], "overlaps the input"),
], ids=["no-text", "html-folder-missing", "png-folder-missing", "same-file", "folder", "input"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, fragment):
    (tmp_path / "texts.txt").write_text("a film\n")
    # a missing artifact: the output checks come first, before any work (and before the artifact is opened)
    argv = ["explain", "--artifact", str(tmp_path / "no-artifact"), *[a.format(tmp=tmp_path) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adapler-export: error:")
    assert fragment.format(tmp=tmp_path) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"], "nothing written"


def test_cli_exit_status_of_a_real_process(tmp_path):
    command = [sys.executable, "-m", "adapler_export.cli", "explain", "--artifact", "nothing"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ADAPLER_HOME": str(tmp_path)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "adapler-export: error: no text given (pass texts as arguments or --file FILE)"


def test_cli_replaces_an_existing_file_only_with_force(tiny_artifact, tmp_path, capsys):
    target = tmp_path / "why.html"
    target.write_text("the user's page")
    argv = ["explain", "--artifact", str(tiny_artifact), "--backend", "onnxruntime", "a film", "--html", str(target)]
    assert main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "the user's page"
    assert main([*argv, "--force"]) == 0
    assert "<!DOCTYPE html>" in target.read_text()


# ----- a real browser -----------------------------------------------------------------------------------
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="session")
def headless_browser() -> str:
    """The browser binary, or a skip that says why (before the artifact is built: session scope, listed
    first)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    require(False, f"no headless browser binary on PATH (looked for {', '.join(BROWSERS)}; on Debian "
                   f"`apt-get install chromium-headless-shell`, as .ci/run does)")


def run_browser(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_page_renders_in_a_headless_browser(headless_browser, tiny_artifact, tiny_predictions, tmp_path):
    browser = headless_browser
    _, predictions = tiny_predictions
    page = tmp_path / "why.html"
    assert main(["explain", "--artifact", str(tiny_artifact), "--backend", "onnxruntime", *TEXTS,
                 "--html", str(page)]) == 0
    dom = run_browser(browser, tmp_path, "--dump-dom", page.as_uri()).stdout
    spans = token_spans(dom)  # the DOM the browser built, not the file
    assert [s[2] for s in spans] == [t[2:] if t.startswith("##") else t for p in predictions for t in p.tokens]
    assert "<script" not in dom.lower() and dom.count("<section>") == len(TEXTS)
    shot = tmp_path / "shot.png"
    run_browser(browser, tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri())
    image = read_png(shot)
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, "the screenshot is blank"
    layers = len(predictions[0].kept_positions)
    shading = {bytes.fromhex(depth_colour(depth, layers)[1:]) for depth in range(layers + 1)}
    assert shading <= {bytes(c) for c in colours}, "every depth's colour is on screen (legend and tokens)"
