"""``adapler-export triton`` and ``adapler-export serve``: argparse wiring for the CLI.

Wire into ``adapler_export/cli.py``::

    from .serving.cli_commands import add_serve_parser, add_triton_parser
    add_triton_parser(sub)
    add_serve_parser(sub)

Each parser sets ``func`` (``args.func(args) -> int``). User errors raise ``AdaplerError`` subclasses
(``RepositoryError``, ``TritonServerError``), which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import sys
import tempfile
import time

from ..errors import AdaplerError

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_texts_file(task: str = "sst2") -> pathlib.Path | None:
    """``$ADAPLER_DATA_DIR/<task>/dev.tsv``, else ``../shared/data/<task>/dev.tsv`` beside the repository."""
    cands = []
    if os.environ.get("ADAPLER_DATA_DIR"):
        cands.append(pathlib.Path(os.environ["ADAPLER_DATA_DIR"]) / task / "dev.tsv")
    cands.append(_REPO_ROOT.parent / "shared" / "data" / task / "dev.tsv")
    return next((p for p in cands if p.is_file()), None)


def read_texts(path: str | os.PathLike, limit: int | None = None, column: str = "sentence") -> list[str]:
    """Texts from a GLUE ``.tsv`` (header with ``sentence``; quoting disabled) or a plain file (one per line)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise AdaplerError(f"texts file {path} not found")
    texts: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None) or []
            if column not in header:
                raise AdaplerError(f"{path}: no {column!r} column in header {header}")
            col = header.index(column)
            texts = [row[col] for row in reader if len(row) > col]
        else:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        raise AdaplerError(f"{path}: no texts")
    return texts[:limit] if limit else texts


# ----- triton: write the repository -------------------------------------------------------------------
def cmd_triton(args) -> int:
    from .repository import write_model_repository

    info = write_model_repository(
        args.artifact, args.out, max_batch=args.max_batch, max_queue_delay_us=args.queue_delay_us,
        instances=args.instances, backend_kind=args.backend, precision=args.precision,
        with_tensorrt_plan=True if args.with_tensorrt_plan else None, artifact_mode=args.artifact_mode,
        overwrite=args.force,
    )
    print(f"model repository written to {info.path}")
    print(f"models: {', '.join(info.models)}")
    print(f"see {info.path / 'README.md'}; in a Triton container"
          f"{' with TensorRT and a GPU' if info.with_tensorrt_plan else ''}:\n  {info.tritonserver_command}")
    print(f"here (nvidia-pytriton's tritonserver): adapler-export serve --repo {info.path}")
    if args.check:
        from .client import AdaplerClient
        from .server import TritonServer

        server = TritonServer(info.path)
        try:
            server.start(timeout=args.timeout)
            with AdaplerClient(server.http_url) as client:
                result = client.classify(["a gorgeous, witty, seductive movie.", ""])
            print(f"check: server ready in {server.startup_seconds:.1f}s; "
                  + "; ".join(f"{r['label']} {max(r['probabilities']):.3f}" for r in result))
            server.cleanup()
        finally:
            if server.proc is not None:
                server.stop()
                _log(f"server log kept: {server.log_file}")
    return 0


def add_triton_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("triton", help="write a Triton model repository for a build artifact")
    p.add_argument("--artifact", required=True, help="build artifact directory (adapler-export build output)")
    p.add_argument("--repo", "--out", dest="out", required=True, help="repository directory to write (atomically)")
    p.add_argument("--max-batch", type=int, default=32, help="max_batch_size of the models (default 32)")
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help="dynamic batching max_queue_delay_microseconds (default 2000)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--backend", default="auto", help="load_backend kind for adapler_text (default auto)")
    p.add_argument("--precision", choices=["fp32", "fp16"], help="which engines/single.<precision>.plan")
    p.add_argument("--with-tensorrt-plan", action="store_true",
                   help="also write adapler_plan/adapler_tokenizer/adapler_ensemble (needs the single engine; "
                        "default: written when the artifact has one)")
    p.add_argument("--artifact-mode", choices=["copy", "hardlink", "reference"], default="copy",
                   help="copy the artifact into the repository (default), hardlink it, or reference its path")
    p.add_argument("--force", action="store_true", help="replace an existing repository")
    p.add_argument("--check", action="store_true",
                   help="start the local tritonserver on the new repository, classify two texts, stop")
    p.add_argument("--timeout", type=float, default=300.0, help="readiness timeout for --check (s)")
    p.set_defaults(func=cmd_triton)
    return p


# ----- serve: run the server (and optionally a bounded load) -----------------------------------------------
def cmd_serve(args) -> int:
    from .load import run_load
    from .repository import write_model_repository
    from .server import TritonServer

    tmp = None
    if args.repo:
        repo = pathlib.Path(args.repo)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="adapler-serve-")
        repo = pathlib.Path(tmp.name) / "repository"
        write_model_repository(args.artifact, repo, max_batch=args.max_batch, artifact_mode="reference",
                               backend_kind=args.backend)
        _log(f"repository written to {repo} (temporary; artifact referenced by path)")
    server = TritonServer(repo, models=args.models, http_port=args.http_port, grpc_port=args.grpc_port,
                          log_file=args.log_file)
    try:
        server.start(timeout=args.timeout)
        info = server.describe()
        _log(f"tritonserver pid {info['pid']} ready in {info['startup_seconds']:.1f}s: "
             f"http {info['http']}  grpc {info['grpc']}  log {info['log']}")
        if args.load is None:
            _log("serving; Ctrl-C stops it")
            while server.is_alive():
                time.sleep(1.0)
            _log(f"tritonserver exited; log tail:\n{server.log_tail(3000)}")
            return 1
        texts = read_texts(args.texts or default_texts_file() or _missing_texts(), limit=args.load_texts)
        protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
        results = []
        for proto in protocols:
            res = run_load(server.url(proto), texts, protocol=proto, concurrency=args.concurrency,
                           requests_per_client=args.requests, max_seconds=args.duration,
                           batch_size=args.batch_size)
            results.append(res)
            if not args.json:
                print(res.summary(), flush=True)
        if args.json:
            print(json.dumps({"server": info, "load": [r.as_dict() for r in results]}, indent=2))
        ok = all(r.failures == 0 for r in results)
        if ok:
            server.cleanup()  # stops it; removes its work folder (the log too, unless --log-file elsewhere)
        return 0 if ok else 1
    finally:
        if server.is_alive() or server.proc is not None:
            server.stop()
            _log(f"server log kept: {server.log_file}")
        if tmp is not None:
            tmp.cleanup()


def _missing_texts():
    raise AdaplerError("no texts for --load: pass --texts FILE (.tsv with a sentence column, or one per line)")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="run the local Triton server (nvidia-pytriton's tritonserver) on 127.0.0.1; "
                      "with --load, run a bounded load test and stop")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", help="a repository written by `adapler-export triton`")
    src.add_argument("--artifact", help="a build artifact (a temporary repository is written for it)")
    p.add_argument("--models", nargs="+", help="models to load (default: all this server can run)")
    p.add_argument("--max-batch", type=int, default=32, help="with --artifact: max_batch_size")
    p.add_argument("--backend", default="auto", help="with --artifact: load_backend kind")
    p.add_argument("--http-port", type=int, help="default: a free port")
    p.add_argument("--grpc-port", type=int, help="default: a free port")
    p.add_argument("--log-file", help="server log (default: in a temporary work folder)")
    p.add_argument("--timeout", type=float, default=300.0, help="readiness timeout (s)")
    p.add_argument("--load", action="store_const", const=True, help="run a bounded load test, print it, stop")
    p.add_argument("--texts", help="texts for --load (default: SST-2 dev from ../shared/data)")
    p.add_argument("--load-texts", type=int, default=None, help="use only the first N texts")
    p.add_argument("--protocol", choices=["http", "grpc", "both"], default="http")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=200, help="requests per client (default 200)")
    p.add_argument("--duration", type=float, default=60.0, help="time cap per protocol (s, default 60)")
    p.add_argument("--batch-size", type=int, default=1, help="texts per request (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_serve)
    return p
