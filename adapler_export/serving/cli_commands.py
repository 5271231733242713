"""``adapler-export triton`` and ``adapler-export serve``: argparse wiring for the CLI.

Wired into ``adapler_export/cli.py``::

    from .serving.cli_commands import add_serve_parser, add_triton_parser
    add_triton_parser(sub)
    add_serve_parser(sub)

Each parser sets ``func`` (``args.func(args) -> int``). User errors raise ``AdaplerError`` subclasses
(``ManifestError``, ``RepositoryError``, ``TritonServerError``), which the CLI prints as one line.

``serve`` stops the server and removes every temporary file it made on each way out: normal end, a
failed start, Ctrl-C (exit 130), SIGTERM (exit 143), SIGHUP (exit 129), printing one line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import signal
import sys
import tempfile
import threading
import time

from ..arguments import COUNT, PORT, POSITIVE, integer
from ..data import default_texts_file, load_dev, read_inputs, read_texts
from ..errors import AdaplerError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- triton: write the repository -------------------------------------------------------------------
def cmd_triton(args) -> int:
    from .repository import write_model_repository

    info = write_model_repository(
        args.artifact, args.out, max_batch=args.max_batch, max_queue_delay_us=args.queue_delay_us,
        instances=args.instances, backend_kind=args.backend,
        with_tensorrt_plan=True if args.with_tensorrt_plan else None, with_onnx_graph=args.with_onnx_graph,
        artifact_mode=args.artifact_mode, overwrite=args.force,
    )
    print(f"model repository written to {info.path} (artifact {info.artifact} checked)")
    print(f"models: {', '.join(info.models)}")
    print(f"see {info.path / 'README.md'}; in a Triton container"
          f"{' with TensorRT and a GPU' if info.with_tensorrt_plan else ''}:\n  {info.tritonserver_command}")
    if info.onnx_ensemble_command:
        print(f"the one-graph ensemble alone on a stock Triton server (onnxruntime backend; transformers in its "
              f"Python):\n  {info.onnx_ensemble_command}")
    print(f"here (nvidia-pytriton's tritonserver, Python models only): adapler-export serve --repo {info.path}")
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
        finally:
            server.cleanup()
    return 0


def add_triton_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("triton", help="write a Triton model repository for a build artifact")
    p.add_argument("--artifact", required=True,
                   help="build artifact: a path, or a name under $ADAPLER_HOME/artifacts (checked first)")
    p.add_argument("--repo", "--out", dest="out", required=True, help="repository directory to write (atomically)")
    p.add_argument("--max-batch", type=COUNT, default=32, help="max_batch_size of the models (default 32)")
    p.add_argument("--queue-delay-us", type=integer(0), default=2000,
                   help="dynamic batching max_queue_delay_microseconds (default 2000)")
    p.add_argument("--instances", type=COUNT, default=1, help="model instances (default 1)")
    p.add_argument("--backend", default="auto", help="load_backend kind for adapler_text (default auto)")
    p.add_argument("--with-tensorrt-plan", action="store_true",
                   help="also write adapler_plan/adapler_tokenizer/adapler_ensemble (needs the single engine; "
                        "default: written when the artifact has one)")
    onnx = p.add_mutually_exclusive_group()
    onnx.add_argument("--with-onnx-graph", dest="with_onnx_graph", action="store_const", const=True, default=None,
                      help="require adapler_onnx/adapler_tokenizer/adapler_onnx_ensemble: the one standard-ONNX "
                           "graph for Triton's stock onnxruntime backend (default: written when the artifact has "
                           "onnx/model.onnx, as every artifact built since it exists does)")
    onnx.add_argument("--no-onnx-graph", dest="with_onnx_graph", action="store_const", const=False,
                      help="leave the one-graph models out")
    p.add_argument("--artifact-mode", choices=["copy", "hardlink", "reference"], default="copy",
                   help="copy the artifact into the repository (default), hardlink it, or reference its path")
    p.add_argument("--force", action="store_true", help="replace an existing repository")
    p.add_argument("--check", action="store_true",
                   help="start the local tritonserver on the new repository, classify two texts, stop")
    p.add_argument("--timeout", type=POSITIVE, default=300.0, help="readiness timeout for --check (s)")
    p.set_defaults(func=cmd_triton)
    return p


# ----- serve: run the server (and optionally a bounded load) -----------------------------------------------
class Stopped(BaseException):
    """A stop signal, raised in the main thread so that the same cleanup runs as for Ctrl-C. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals_raise():
    """Within the block, the first SIGINT/SIGTERM/SIGHUP raises (KeyboardInterrupt for SIGINT, else
    :class:`Stopped`); later ones are ignored, so that the cleanup they started is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    received = []

    def handler(signum, frame):
        if received:
            return
        received.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def cmd_serve(args) -> int:
    try:
        with stop_signals_raise(), contextlib.ExitStack() as cleanup:
            return _serve(args, cleanup)
    except KeyboardInterrupt:
        _log("adapler-export serve: interrupted; server stopped and temporary files removed")
        return 128 + signal.SIGINT
    except Stopped as stop:
        _log(f"adapler-export serve: stopped by {stop}; server stopped and temporary files removed")
        return 128 + stop.signum


def _serve(args, cleanup: contextlib.ExitStack) -> int:
    """The serve command; everything it makes is registered on ``cleanup`` (unwound on any way out)."""
    from ..artifact import read_manifest
    from .load import run_load
    from .repository import repository_artifacts, write_model_repository
    from .server import TritonServer, log_error_summary

    if args.repo:
        repo = pathlib.Path(args.repo)
        if not repo.is_dir():
            raise AdaplerError(f"no model repository at {repo}; write one with `adapler-export triton`")
        artifacts = repository_artifacts(repo)  # configs and artifact digests: fail here, not in the server log
        manifest = read_manifest(artifacts[0]) if artifacts else None  # adapler_text's artifact
    else:
        manifest = read_manifest(args.artifact)
    if args.load:  # the texts (pairs for a sentence-pair artifact) first: a bad file fails before any work
        texts, pairs = _load_inputs(args, manifest)
    if not args.repo:
        repo = pathlib.Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="adapler-serve-"))) / "repo"
        # Only what this server runs: the pytriton wheel ships no onnxruntime backend for the one-graph model.
        write_model_repository(args.artifact, repo, max_batch=args.max_batch, artifact_mode="reference",
                               backend_kind=args.backend, with_onnx_graph=False)
        _log(f"repository written to {repo} (temporary; artifact referenced by path)")
    server = TritonServer(repo, models=args.models, http_port=args.http_port, grpc_port=args.grpc_port,
                          log_file=args.log_file)
    cleanup.callback(server.cleanup)
    server.start(timeout=args.timeout)
    info = server.describe()
    _log(f"tritonserver pid {info['pid']} ready in {info['startup_seconds']:.1f}s: "
         f"http {info['http']}  grpc {info['grpc']}" + (f"  log {args.log_file}" if args.log_file else ""))
    if not args.load:
        _log("serving; Ctrl-C stops it")
        while server.is_alive():
            time.sleep(0.5)
        code = server.proc.returncode if server.proc is not None else None
        reason = log_error_summary(server.log_tail(200000))
        raise AdaplerError(f"tritonserver exited with code {code}" + (f": {reason}" if reason else ""))
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    results = []
    for proto in protocols:
        res = run_load(server.url(proto), texts, pairs=pairs, protocol=proto, concurrency=args.concurrency,
                       requests_per_client=args.requests, max_seconds=args.duration, batch_size=args.batch_size)
        results.append(res)
        if not args.json:
            print(res.summary(), flush=True)
    if args.json:
        print(json.dumps({"server": info, "load": [r.as_dict() for r in results]}, indent=2))
    return 0 if all(r.failures == 0 for r in results) else 1


def _load_inputs(args, manifest) -> tuple:
    """(texts, pairs) for --load. A sentence-pair artifact (whose adapler_text takes TEXT_PAIR) gets pairs: --texts
    FILE read as `predict --file` reads it for pairs (`data.read_inputs`: one pair a line, tab-separated, or the
    task's GLUE .tsv), by default its task's dev split (`data.load_dev`: MRPC dev for an MRPC artifact). A
    single-text artifact gets texts (pairs None): --texts FILE, by default its task's dev file (IMDB reviews for an
    IMDB artifact), SST-2 dev where the task has no data folder here."""
    if manifest is None or not manifest.text_pair:
        default = (manifest is not None and default_texts_file(manifest.task)) or default_texts_file()
        return read_texts(args.texts or default or _missing_texts(), limit=args.load_texts), None
    if args.texts:
        return read_inputs(args.texts, True, limit=args.load_texts)
    try:
        dev = load_dev(manifest.task)
    except AdaplerError as exc:
        raise AdaplerError(f"no sentence pairs for --load ({exc}): pass --texts FILE (one pair a line, the two "
                           "texts separated by a tab)") from None
    limit = args.load_texts or None
    return list(dev.texts[:limit]), list(dev.pairs[:limit])


def _missing_texts():
    raise AdaplerError("no texts for --load: pass --texts FILE (.tsv with a sentence column, or one per line)")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="run the local Triton server (nvidia-pytriton's tritonserver) on 127.0.0.1; "
                      "with --load, run a bounded load test and stop")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", help="a repository written by `adapler-export triton`")
    src.add_argument("--artifact", help="a build artifact, path or name (a temporary repository is written for it)")
    p.add_argument("--models", nargs="+", help="models to load (default: all this server can run)")
    p.add_argument("--max-batch", type=COUNT, default=32, help="with --artifact: max_batch_size")
    p.add_argument("--backend", default="auto", help="with --artifact: load_backend kind")
    p.add_argument("--http-port", type=PORT, help="default: a free port")
    p.add_argument("--grpc-port", type=PORT, help="default: a free port")
    p.add_argument("--log-file", help="keep the server log here (default: in the temporary work folder, removed "
                                      "on exit)")
    p.add_argument("--timeout", type=POSITIVE, default=300.0, help="readiness timeout (s)")
    p.add_argument("--load", action="store_true", help="run a bounded load test, print it, stop")
    p.add_argument("--texts", help="texts for --load: one a line, or a .tsv with a sentence column (default: the "
                                   "artifact's task's dev file, else SST-2 dev, from the data folder); for a "
                                   "sentence-pair artifact (mrpc, rte) one pair a line, the two texts separated by a "
                                   "tab, or the task's GLUE .tsv (default: the artifact's task's dev split)")
    p.add_argument("--load-texts", type=COUNT, default=None, help="use only the first N texts")
    p.add_argument("--protocol", choices=["http", "grpc", "both"], default="http")
    p.add_argument("--concurrency", type=COUNT, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=COUNT, default=200, help="requests per client (default 200)")
    p.add_argument("--duration", type=POSITIVE, default=60.0, help="time cap per protocol (s, default 60)")
    p.add_argument("--batch-size", type=COUNT, default=1, help="texts per request (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_serve)
    return p
