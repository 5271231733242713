"""Bounded load on a local Triton server: N concurrent clients, a capped number of requests and time.

Loopback only by default (the server this package starts listens on 127.0.0.1); pass
``allow_remote=True`` to aim elsewhere on purpose.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from typing import Sequence

import numpy as np

from ..errors import AdaplerError
from .client import AdaplerClient, _strip_scheme
from .contract import TEXT_MODEL, TEXT_PAIR_INPUT


@dataclasses.dataclass
class LoadResult:
    protocol: str
    concurrency: int
    requests: int  # completed (ok + failed)
    ok: int
    failures: int
    duration_s: float
    throughput_rps: float  # successful requests / s
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    stopped_by: str  # "count" | "time"
    errors: list[str]  # the first few distinct error messages

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        def f(x):
            return "n/a" if x is None else f"{x:.1f}"

        return (f"{self.protocol} c={self.concurrency}: {self.ok}/{self.requests} ok, {self.failures} failed, "
                f"{self.throughput_rps:.1f} req/s, p50 {f(self.p50_ms)} ms, p90 {f(self.p90_ms)} ms, "
                f"p99 {f(self.p99_ms)} ms, max {f(self.max_ms)} ms over {self.duration_s:.1f} s "
                f"(stopped by {self.stopped_by})")


def is_loopback(url: str) -> bool:
    host = _strip_scheme(url).rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def run_load(
    url: str,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    protocol: str = "http",
    concurrency: int = 8,
    requests_per_client: int = 200,
    max_seconds: float = 60.0,
    batch_size: int = 1,
    model_name: str = TEXT_MODEL,
    warmup: int = 4,
    allow_remote: bool = False,
) -> LoadResult:
    """``concurrency`` threads, each with its own client, send up to ``requests_per_client`` requests of
    ``batch_size`` texts (cycling through ``texts``, and for a sentence-pair model through ``pairs`` alike: text
    i goes with pair i), all stopping at ``max_seconds``. Latency is per request, wall clock at the client.
    ``warmup`` requests (not counted) go first, one client. The model's metadata must agree with ``pairs``: a
    model taking ``TEXT_PAIR`` needs them, another takes none (``AdaplerError`` before any request)."""
    if not texts:
        raise ValueError("run_load needs texts")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs: every text needs its pair")
    if concurrency < 1 or requests_per_client < 1 or batch_size < 1:
        raise ValueError("concurrency, requests_per_client and batch_size must be >= 1")
    if not allow_remote and not is_loopback(url):
        raise ValueError(f"{url} is not a loopback address (pass allow_remote=True to load it anyway)")
    texts = list(texts)
    pairs = None if pairs is None else list(pairs)

    def batch_at(j: int) -> tuple:
        """``batch_size`` texts (and their pairs) from position ``j``, cycling."""
        rows = [(j + k) % len(texts) for k in range(batch_size)]
        return [texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows]

    with AdaplerClient(url, protocol, model_name, max_batch=batch_size) as c:
        if c.text_pair != (pairs is not None):
            raise AdaplerError(f"{model_name} takes {TEXT_PAIR_INPUT} (a sentence-pair model): the load needs pairs"
                               if c.text_pair else
                               f"{model_name} takes no {TEXT_PAIR_INPUT} (a single-text model): pairs are for "
                               "sentence-pair models")
        for i in range(warmup):
            c.classify(*batch_at(i % len(texts)))

    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    errors: list[str] = []
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    deadline_box = [0.0]
    timed_out = threading.Event()

    def worker(w: int) -> None:
        client = AdaplerClient(url, protocol, model_name, max_batch=batch_size, timeout_s=max(5.0, max_seconds))
        try:
            start_barrier.wait()
            for r in range(requests_per_client):
                if time.monotonic() >= deadline_box[0]:
                    timed_out.set()
                    break
                batch, pair_batch = batch_at((w * requests_per_client + r) * batch_size)
                t0 = time.perf_counter()
                try:
                    client.infer_raw(batch, pairs=pair_batch)
                    latencies[w].append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - counted, first messages kept
                    failures[w] += 1
                    with lock:
                        msg = str(e)[:300]
                        if len(errors) < 5 and msg not in errors:
                            errors.append(msg)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    deadline_box[0] = time.monotonic() + max_seconds
    t_start = time.perf_counter()
    start_barrier.wait()
    for t in threads:
        t.join(timeout=max_seconds + 30)
    duration = time.perf_counter() - t_start

    lat = np.array([x for per in latencies for x in per], dtype=np.float64) * 1e3
    ok = int(lat.size)
    failed = int(sum(failures))

    def pct(q):
        return float(np.percentile(lat, q)) if ok else None

    return LoadResult(
        protocol=protocol, concurrency=concurrency, requests=ok + failed, ok=ok, failures=failed,
        duration_s=duration, throughput_rps=ok / duration if duration > 0 else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        mean_ms=float(lat.mean()) if ok else None, max_ms=float(lat.max()) if ok else None,
        stopped_by="time" if timed_out.is_set() else "count", errors=errors,
    )
