"""Start and stop a real local Triton Inference Server.

The `tritonserver` binary comes from the `nvidia-pytriton` wheel (``pytriton/tritonserver/bin``), the
shared libraries it links from the wheel's ``nvidia_pytriton.libs`` folder, and the Python backend
(``libtriton_python.so`` + ``triton_python_backend_utils.py``) from ``pytriton/tritonserver/backends/python``.
The wheel ships the Python-backend *stub* (the process that runs a model's ``model.py``) per Python
version under ``python_backend_stubs/<major.minor>/``; Triton looks for it next to ``libtriton_python.so``,
so :func:`prepare_backend_dir` builds a backends folder of our own (``<workdir>/backends/python/``) with
the three files copied in, the same way pytriton prepares its own workspace.

The stub embeds the Python of *this* interpreter: it is started with ``PATH`` led by this interpreter's
``bin`` folder (so the embedded Python finds this prefix / virtual environment and its site-packages),
``LD_LIBRARY_PATH`` led by this interpreter's ``libpython`` folder and the wheel's library folder, and
``PYTHONPATH`` led by the folder that holds the ``adapler_export`` package, so ``model.py`` can import
``adapler_export`` even when the project is not pip-installed.

Everything listens on 127.0.0.1 only, on free ports picked at start. The server is stopped by its PID
(SIGTERM, then SIGKILL of its process group after a timeout). Its output goes to a log file.

Temporary files: without a ``workdir`` the server makes an ``adapler-triton-*`` folder in the system temp
folder when it starts and removes it in :meth:`TritonServer.cleanup` (the context manager calls it), and
also when a start fails or is interrupted: the error carries the log's first error line, so nothing is
left behind on any exit path (``serve`` turns Ctrl-C and SIGTERM into that path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterable, Mapping, Sequence

from ..errors import AdaplerError

LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_STUB_NAME = "triton_python_backend_stub"
_PY_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class TritonServerError(AdaplerError, RuntimeError):
    """The server could not be found, started, or did not become ready. ``log_tail``: the end of its log
    (the message itself is one line)."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


# Triton's glog lines: "E1127 10:11:12.345678 123 file.cc:45] message"
_LOG_ERROR = re.compile(r"^E\d{4} \S+\s+\d+ [^\]]*\] ?(.*)$")


def log_error_summary(log_text: str) -> str | None:
    """One line that explains a failed start: the first model-load failure of a Triton log, else its last
    error line (not the first: on a machine without a GPU Triton logs a harmless CUDA error first)."""
    errors = [m.group(1).strip() for m in map(_LOG_ERROR.match, log_text.splitlines()) if m and m.group(1).strip()]
    if not errors:
        return None
    chosen = next((e for e in errors if "failed to load" in e), errors[-1])
    message = " ".join(chosen.strip('"').split("\\n")[0].split())  # Triton quotes messages, escapes newlines
    return message if len(message) <= 400 else message[:397] + "..."


@dataclasses.dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of the pytriton-shipped Triton server live."""

    root: pathlib.Path  # .../pytriton/tritonserver
    binary: pathlib.Path  # root/bin/tritonserver
    libs: pathlib.Path  # .../nvidia_pytriton.libs (or root/external_libs in editable installs)
    python_backend: pathlib.Path  # root/backends/python
    stub: pathlib.Path  # root/python_backend_stubs/<py>/triton_python_backend_stub
    caches: pathlib.Path | None  # root/caches
    backends: tuple = ()  # the backends it ships: root/backends/<name>/libtriton_<name>.so (nvidia-pytriton
    #                       0.7: python only; no onnxruntime, tensorrt, ...)


def find_triton(python_version: str | None = None) -> TritonDistribution:
    """Locate the tritonserver binary, its libraries, the Python backend and the stub for this Python.

    Raises :class:`TritonServerError` with the path that is missing (and how to get it) otherwise.
    ``TRITONSERVER_ROOT`` may point at another folder with the same layout (``bin/``, ``backends/``,
    ``python_backend_stubs/``).
    """
    version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    override = os.environ.get("TRITONSERVER_ROOT")
    if override:
        root = pathlib.Path(override)
        libs_candidates = [root / "external_libs", root / "lib"]
    else:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonServerError(
                "the `nvidia-pytriton` package is not installed: it ships the tritonserver binary used "
                "here (pip install nvidia-pytriton), or set TRITONSERVER_ROOT to a folder with bin/tritonserver"
            )
        pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
        root = pkg / "tritonserver"
        libs_candidates = [pkg.parent / "nvidia_pytriton.libs", root / "external_libs"]
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonServerError(f"tritonserver binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        raise TritonServerError(f"tritonserver binary at {binary} is not executable")
    libs = next((p for p in libs_candidates if p.is_dir()), None)
    if libs is None:
        raise TritonServerError(
            "tritonserver's bundled libraries not found (looked in "
            + ", ".join(str(p) for p in libs_candidates)
            + ")"
        )
    python_backend = root / "backends" / "python"
    for name in _PY_BACKEND_FILES:
        if not (python_backend / name).is_file():
            raise TritonServerError(f"Triton Python backend file missing: {python_backend / name}")
    stub = root / "python_backend_stubs" / version / _STUB_NAME
    if not stub.is_file():
        available = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise TritonServerError(
            f"no Triton Python backend stub for Python {version} at {stub} "
            f"(the installed nvidia-pytriton ships stubs for: {', '.join(available) or 'none'}); "
            "run with one of those Python versions"
        )
    caches = root / "caches"
    shipped = tuple(sorted(p.name for p in (root / "backends").iterdir() if (p / f"libtriton_{p.name}.so").is_file()))
    return TritonDistribution(root, binary, libs, python_backend, stub, caches if caches.is_dir() else None, shipped)


def prepare_backend_dir(dist: TritonDistribution, dest: str | os.PathLike,
                        python_backends: Mapping[str, str | os.PathLike] | None = None) -> pathlib.Path:
    """Write ``dest/python/`` = the Python backend + this Python's stub, and ``dest/<name>/model.py`` for each
    Python-based backend of ``python_backends`` ({backend name: its model.py}). Returns ``dest`` (the folder
    to pass as ``--backend-directory``). Idempotent."""
    dest = pathlib.Path(dest)
    py_dir = dest / "python"
    py_dir.mkdir(parents=True, exist_ok=True)
    for name in _PY_BACKEND_FILES:
        shutil.copy2(dist.python_backend / name, py_dir / name)
    shutil.copy2(dist.stub, py_dir / _STUB_NAME)
    os.chmod(py_dir / _STUB_NAME, 0o755)
    for name, model_py in (python_backends or {}).items():
        if name in dist.backends or name == "python":
            raise TritonServerError(f"Python-based backend {name!r}: the server ships a backend of that name")
        (dest / name).mkdir(exist_ok=True)
        shutil.copy2(model_py, dest / name / "model.py")
    return dest


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct ports that are free on ``host`` right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _package_parent() -> pathlib.Path:
    """The folder holding the ``adapler_export`` package (what ``PYTHONPATH`` must contain)."""
    return pathlib.Path(__file__).resolve().parents[2]


def server_env(dist: TritonDistribution, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and the Python-backend stubs it spawns."""
    env = dict(os.environ if base is None else base)
    libdirs = []
    py_libdir = sysconfig.get_config_var("LIBDIR")
    if py_libdir and any(pathlib.Path(py_libdir).glob("libpython3*.so*")):
        libdirs.append(py_libdir)  # the stub links libpython<ver>.so: use this interpreter's
    libdirs.append(str(dist.libs))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libdirs)
    # The embedded interpreter derives its prefix from `python3` on PATH: put ours first.
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", os.defpath)])
    pp = [str(_package_parent())]
    if env.get("PYTHONPATH"):
        pp.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pp)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


class TritonServer:
    """A tritonserver process on loopback ports of its own.

    >>> with TritonServer("/path/to/repo", models=["adapler_text"]) as srv:
    ...     print(srv.http_url, srv.grpc_url)

    ``models``: names to load (``--model-control-mode=explicit``); ``None`` loads every model in the
    repository whose backend is available here (``python``, the ``python_backends``, and ensembles over
    those; not ``tensorrt_plan`` nor ``onnxruntime``, which this wheel does not ship).

    ``python_backends``: {backend name: a ``model.py``}: Triton's Python-based backends. The server looks for
    ``libtriton_<name>.so`` of a model's ``backend`` and, where there is none, for
    ``<backends>/<name>/model.py``, which it runs through the Python backend with the model's config as
    written. The tests use this to stand in for the stock ``onnxruntime`` backend.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        models: Sequence[str] | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        enable_metrics: bool = False,
        workdir: str | os.PathLike | None = None,
        log_file: str | os.PathLike | None = None,
        log_verbose: int = 0,
        exit_timeout_s: int = 5,
        backend_config: Iterable[str] = (),
        extra_args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        python_version: str | None = None,
        python_backends: Mapping[str, str | os.PathLike] | None = None,
    ):
        self.model_repository = pathlib.Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} does not exist")
        self.models = list(models) if models is not None else None
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.enable_metrics = enable_metrics
        self._own_workdir = workdir is None
        self.workdir = pathlib.Path(workdir) if workdir else None  # own one: made by start()
        self._log_file = pathlib.Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.exit_timeout_s = int(exit_timeout_s)
        self.backend_config = list(backend_config)
        self.extra_args = list(extra_args)
        self._base_env = env
        self._python_version = python_version
        self._python_backends = dict(python_backends or {})
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = None
        self.startup_seconds: float | None = None
        self._log_handle = None

    # -- urls -------------------------------------------------------------------------------------------
    @property
    def log_file(self) -> pathlib.Path | None:
        """The server log: ``log_file`` as given, else ``tritonserver.log`` in the work folder."""
        if self._log_file is not None:
            return self._log_file
        return self.workdir / "tritonserver.log" if self.workdir is not None else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def url(self, protocol: str = "http") -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    # -- lifecycle -------------------------------------------------------------------------------------
    def _models_to_load(self) -> list[str]:
        if self.models is not None:
            return self.models
        from .repository import loadable_models  # local import: repository imports protobuf

        return loadable_models(self.model_repository, available_backends={"python", *self._python_backends})

    def command(self) -> list[str]:
        dist = self._dist
        args = [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backend_dir}",
            "--model-control-mode=explicit",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--allow-metrics={'true' if self.enable_metrics else 'false'}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            # On SIGTERM Triton waits for in-flight requests *and* open client connections up to this.
            f"--exit-timeout-secs={self.exit_timeout_s}",
            # A unique shared-memory prefix per server: two servers (or a leftover one) never collide.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        if self.enable_metrics:
            args += [f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}"]
        if dist.caches is not None:
            args.append(f"--cache-directory={dist.caches}")
        for name in self._models_to_load():
            args.append(f"--load-model={name}")
        args += [f"--backend-config={c}" for c in self.backend_config]
        args += self.extra_args
        return args

    def start(self, timeout: float = 180.0) -> "TritonServer":
        """Start the server and wait until it and every loaded model is ready. Retries twice when a
        picked port was taken in between. A failed or interrupted start stops what it started and
        removes the work folder it made (the error says why in one line)."""
        if self.is_alive():
            raise TritonServerError(f"server already running (pid {self.proc.pid})")
        try:
            self._dist = find_triton(self._python_version)
            if self.workdir is None:
                self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="adapler-triton-"))
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._backend_dir = prepare_backend_dir(self._dist, self.workdir / "backends", self._python_backends)
            for attempt in range(3):
                ports = free_ports(3)
                self.http_port = self._requested_ports[0] or ports[0]
                self.grpc_port = self._requested_ports[1] or ports[1]
                self.metrics_port = self._requested_ports[2] or ports[2]
                try:
                    self._launch_and_wait(timeout)
                    return self
                except TritonServerError:
                    port_clash = "already in use" in self.log_tail(8000).lower()
                    self.stop()
                    if not port_clash or any(self._requested_ports[:2]) or attempt == 2:
                        raise
                    LOGGER.warning("port clash starting tritonserver (attempt %d), retrying", attempt + 1)
        except BaseException:  # a failure, Ctrl-C or a signal turned into an exception: leave nothing
            self.cleanup()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch_and_wait(self, timeout: float) -> None:
        self._shm_prefix = f"adapler{os.getpid()}x{secrets.token_hex(3)}"
        cmd = self.command()
        env = server_env(self._dist, self._base_env)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_file, "ab", buffering=0)
        self._log_offset = self._log_handle.tell()
        self._log_handle.write(("$ " + " ".join(cmd) + "\n").encode())
        LOGGER.info("starting tritonserver: %s (log: %s)", " ".join(cmd), self.log_file)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.workdir),
            start_new_session=True,  # own process group: stop() can reach the stubs it spawned
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout)
        self.startup_seconds = time.monotonic() - t0
        LOGGER.info("tritonserver pid %d ready in %.1fs on http %s grpc %s", self.proc.pid,
                    self.startup_seconds, self.http_url, self.grpc_url)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        base = f"http://{self.http_url}"
        models = self._models_to_load()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise self._start_error(f"tritonserver exited with code {code} before becoming ready")
            if _http_status(base + "/v2/health/ready") == 200 and all(
                _http_status(f"{base}/v2/models/{m}/ready") == 200 for m in models
            ):
                return
            if time.monotonic() > deadline:
                raise self._start_error(f"tritonserver (pid {self.proc.pid}) not ready after {timeout:.0f}s")
            time.sleep(0.25)

    def _start_error(self, what: str) -> TritonServerError:
        """One line: what happened, the log's first error, and where the log stays (when it does)."""
        tail = self.log_tail(200000)
        reason = log_error_summary(tail)
        kept = f" (log: {self.log_file})" if self._log_file is not None or not self._own_workdir else ""
        return TritonServerError(f"{what}{': ' + reason if reason else ''}{kept}", log_tail=tail[-6000:])

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_ready(self) -> bool:
        return self.is_alive() and _http_status(f"http://{self.http_url}/v2/health/ready") == 200

    def log_tail(self, n_chars: int = 6000) -> str:
        if self.log_file is None:
            return ""
        try:
            data = self.log_file.read_bytes()[getattr(self, "_log_offset", 0):]
        except OSError:
            return ""
        return data[-n_chars:].decode("utf-8", errors="replace")

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the server by PID, wait ``timeout`` s (default: the server's exit timeout + 20 s), then
        SIGKILL its process group. Returns the exit code (None if it was never started)."""
        if timeout is None:
            timeout = self.exit_timeout_s + 20.0
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    LOGGER.warning("tritonserver pid %d ignored SIGTERM for %.0fs: SIGKILL", proc.pid, timeout)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group we created (start_new_session)
                    proc.wait(timeout=10)
            code = proc.returncode
            # Stubs exit with their parent; a straggler of *our* process group (a Linux PID that leads a
            # live group is never reused) gets 5 s, then SIGKILL.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                for _ in range(50):
                    os.killpg(proc.pid, 0)
                    time.sleep(0.1)
                LOGGER.warning("processes of tritonserver's group %d outlived it: SIGKILL", proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
            self._remove_shm()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return code

    def _remove_shm(self) -> None:
        """Shared-memory regions of *this* server's Python backend (unique prefix) left by a killed stub."""
        prefix = getattr(self, "_shm_prefix", None)
        shm = pathlib.Path("/dev/shm")
        if not prefix or not shm.is_dir():
            return
        for p in shm.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def cleanup(self) -> None:
        """Stop, and remove the work folder when this object made it (the log too, unless ``log_file``
        put it elsewhere). Safe to call more than once."""
        self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start() if not self.is_alive() else self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def describe(self) -> dict:
        return {
            "pid": self.pid,
            "http": self.http_url,
            "grpc": self.grpc_url,
            "log": str(self.log_file) if self.log_file is not None else None,
            "repository": str(self.model_repository),
            "startup_seconds": self.startup_seconds,
        }

    def __repr__(self) -> str:
        return f"TritonServer({json.dumps(self.describe())})"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """PR_SET_PDEATHSIG: the server gets SIGTERM if the Python that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass
