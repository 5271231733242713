#!/usr/bin/env python
"""Classify texts with a running AdapLeR Triton server and show each prediction's rationale.

Start a server first, e.g.::

    adapler-export triton --artifact ARTIFACT --repo /tmp/adapler-repo
    adapler-export serve --repo /tmp/adapler-repo          # prints the http/grpc addresses

then::

    python examples/triton_client.py --url 127.0.0.1:PORT "a gorgeous, witty, seductive movie."
    python examples/triton_client.py --url 127.0.0.1:PORT --protocol grpc --file texts.txt --json
"""

from __future__ import annotations

import argparse
import json
import sys

from adapler_export.serving.client import AdaplerClient


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server (HTTP or gRPC port)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--model", default="adapler_text")
    p.add_argument("--file", help="one text per line")
    p.add_argument("--json", action="store_true", help="print the full results as JSON lines")
    args = p.parse_args(argv)
    texts = list(args.texts)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        p.error("give texts or --file")
    with AdaplerClient(args.url, args.protocol, args.model) as client:
        if not client.is_ready():
            print(f"server at {args.url} ({args.protocol}) or model {args.model} is not ready", file=sys.stderr)
            return 1
        for text, result in zip(texts, client.classify(texts)):
            if args.json:
                print(json.dumps({"text": text, **result}, ensure_ascii=False))
                continue
            probs = " ".join(f"{p:.3f}" for p in result["probabilities"])
            print(f"{result['label']:<10} [{probs}]  {text}")
            rationale = result["kept_tokens"]
            for layer, kept in enumerate(rationale["kept_tokens"]):
                print(f"    layer {layer}: {len(kept):3d}/{len(rationale['tokens'])} kept  {' '.join(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
