#!/usr/bin/env python
"""Classify texts with a running AdapLeR Triton server and show each prediction's rationale.

Start a server first, e.g.::

    adapler-export triton --artifact ARTIFACT --repo /tmp/adapler-repo
    adapler-export serve --repo /tmp/adapler-repo          # prints the http/grpc addresses

then::

    python examples/triton_client.py --url 127.0.0.1:PORT "a gorgeous, witty, seductive movie."
    python examples/triton_client.py --url 127.0.0.1:PORT --protocol grpc --file texts.txt --json

As with `adapler-export predict --file`, every line of the file is a text, blank ones included (result N is
line N): a blank or whitespace-only line comes back flagged ``empty_input`` (its label is the model's
prior, not a reading) and is marked ``(empty input)`` here; a text cut to the model's length is marked
``(truncated)``.

A sentence-pair model (an MRPC or RTE artifact; its metadata lists the input ``TEXT_PAIR``) classifies pairs, given
as with `adapler-export predict`: each text argument with its ``--pair``, and ``--file`` lines "first<TAB>second"::

    python examples/triton_client.py --url 127.0.0.1:PORT "He said yes ." --pair "He agreed ."
    python examples/triton_client.py --url 127.0.0.1:PORT --file pairs.tsv --json

An ensemble (tokenizer -> whole-model graph; e.g. the one standard-ONNX graph on a stock Triton server,
``tritonserver --model-repository=/tmp/adapler-repo --model-control-mode=explicit
--load-model=adapler_onnx_ensemble``) answers with the graph's logits and kept positions::

    python examples/triton_client.py --url HOST:PORT --model adapler_onnx_ensemble "a gorgeous movie."
"""

from __future__ import annotations

import argparse
import json
import sys

from adapler_export.data import text_inputs
from adapler_export.errors import AdaplerError
from adapler_export.serving.client import AdaplerClient
from adapler_export.serving.contract import TEXT_MODEL


def shown(text: str, pair: str | None = None) -> str:
    """The input as printed: the text, and a sentence pair's second text after it."""
    return repr(text) if pair is None else f"{text!r} + {pair!r}"


def describe(text: str, result: dict, pair: str | None = None) -> list:
    """The human-readable lines for one result (of a sentence pair with ``pair``)."""
    flags = [name for name, on in (("empty input", result["empty_input"]), ("truncated", result["truncated"]))
             if on]
    probs = " ".join(f"{p:.3f}" for p in result["probabilities"])
    lines = [f"{result['label']:<10} [{probs}]  {shown(text, pair)}" + "".join(f"  ({flag})" for flag in flags)]
    for layer, kept in enumerate(result["kept_tokens"]):
        lines.append(f"    layer {layer}: {len(kept):3d}/{len(result['tokens'])} kept  {' '.join(kept)}")
    return lines


def describe_graph(text: str, result: dict, pair: str | None = None) -> list:
    """The lines for one ensemble result: the graph's logits (no label names there) and kept positions."""
    logits = result["logits"]
    best = max(range(len(logits)), key=logits.__getitem__)
    flag = "  (empty input)" if result["empty_input"] else ""
    lines = [f"class {best}  logits [{' '.join(f'{x:.3f}' for x in logits)}]  {shown(text, pair)}{flag}"]
    for layer, kept in enumerate(result["kept_positions"]):
        lines.append(f"    layer {layer}: {len(kept):3d} kept  positions {kept}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server (HTTP or gRPC port)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--model", default=TEXT_MODEL,
                   help=f"{TEXT_MODEL} (default), or an ensemble: adapler_onnx_ensemble, adapler_ensemble")
    p.add_argument("--pair", action="append", default=[], metavar="TEXT",
                   help="sentence-pair models: the second text of a pair, once per text argument, in order")
    p.add_argument("--file", help="one text per line (blank lines are texts too, flagged empty_input); for a "
                                  "sentence-pair model one pair per line, the two texts separated by a tab")
    p.add_argument("--json", action="store_true", help="print the full results as JSON lines")
    args = p.parse_args(argv)
    if not args.texts and not args.file:
        p.error("give texts or --file")
    with AdaplerClient(args.url, args.protocol, args.model) as client:
        if not client.is_ready():
            print(f"server at {args.url} ({args.protocol}) or model {args.model} is not ready", file=sys.stderr)
            return 1
        try:  # pairs where the model takes TEXT_PAIR, read as `adapler-export predict` reads them
            texts, pairs = text_inputs(args.texts, args.pair, args.file, client.text_pair, f"model {args.model}")
        except AdaplerError as exc:  # missing or non-UTF-8 file, a line without a tab, --pair count: one line
            p.error(str(exc))
        if not texts:
            p.error("give texts or --file")
        graph = args.model != TEXT_MODEL
        results = client.run_graph(texts, pairs) if graph else client.classify(texts, pairs)
    for number, (text, result) in enumerate(zip(texts, results), start=1):
        pair = None if pairs is None else pairs[number - 1]
        if result["empty_input"]:
            print(f"warning: text {number} is empty: its label is the model's prior, not a prediction",
                  file=sys.stderr)
        if args.json:
            print(json.dumps({"text": text, **({} if pair is None else {"pair": pair}), **result},
                             ensure_ascii=False))
        else:
            print("\n".join((describe_graph if graph else describe)(text, result, pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
