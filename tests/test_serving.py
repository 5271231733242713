"""Serving: Triton repository writing (no server), and a real tritonserver on loopback ports.

(a) config writing / parsing / validation, runtime edge cases, CLI wiring: no server needed.
(b) real servers (the `tritonserver` binary of the nvidia-pytriton wheel), each on 127.0.0.1 ports of its
    own, stopped by PID:
    * a stand-in artifact with the dev backend (`adapler_export.serving.testing`): proves the server
      mechanics and per-request error isolation without a trained model;
    * the real build artifact (`built_artifact` fixture from tests/conftest.py): SST-2 dev sentences over
      HTTP and gRPC must give exactly the predictions of the local backend
      (`adapler_export.backends.load_backend`); bad requests get an error or the documented result while
      the server stays healthy; a bounded load run has no failures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import signal

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="serving needs `pip install 'tritonclient[all]'` (extra: serving)")

from adapler_export.serving import repository as R  # noqa: E402
from adapler_export.serving.cli_commands import add_serve_parser, add_triton_parser, read_texts  # noqa: E402
from adapler_export.serving.runtime import TextClassifier, encode, softmax  # noqa: E402
from adapler_export.serving.server import TritonServer, TritonServerError, find_triton  # noqa: E402
from adapler_export.serving.testing import load_dev_backend, make_dev_artifact  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SST2_DEV = REPO_ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
DEV_FACTORY = "adapler_export.serving.testing:load_dev_backend"
MAX_BATCH = 16


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _dev_texts(n: int) -> list[str]:
    if SST2_DEV.is_file():
        return read_texts(SST2_DEV, limit=n)
    return [f"a good and charming film number {i} ." for i in range(n)]


@pytest.fixture(scope="module")
def dev_artifact(tmp_path_factory):
    return make_dev_artifact(tmp_path_factory.mktemp("dev") / "artifact", max_length=32)


@pytest.fixture(scope="module")
def dev_artifact_single(tmp_path_factory):
    return make_dev_artifact(tmp_path_factory.mktemp("dev1") / "artifact", max_length=32, with_single_engine=True)


# =========================================================================================================
# (a) no server
# =========================================================================================================
def test_text_model_config(dev_artifact, tmp_path):
    info = R.write_model_repository(dev_artifact, tmp_path / "repo", max_batch=8, max_queue_delay_us=500)
    assert info.models == [R.TEXT_MODEL] and not info.with_tensorrt_plan
    cfg = R.parse_config(tmp_path / "repo" / R.TEXT_MODEL / "config.pbtxt")
    pb2, _ = R._pb2()
    assert cfg.name == R.TEXT_MODEL and cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("TEXT", pb2.TYPE_STRING, [1])
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {"LABEL": (pb2.TYPE_STRING, [1]), "LABEL_ID": (pb2.TYPE_INT32, [1]),
                    "PROBABILITIES": (pb2.TYPE_FP32, [2]), "KEPT_TOKENS": (pb2.TYPE_STRING, [1])}
    assert cfg.parameters["artifact_dir"].string_value == "artifact"
    assert pathlib.Path(cfg.parameters["python_path"].string_value, "adapler_export").is_dir()
    version = tmp_path / "repo" / R.TEXT_MODEL / "1"
    assert (version / "model.py").is_file()
    assert (version / "artifact" / "manifest.json").is_file() and (version / "artifact" / "tokenizer").is_dir()
    assert not (tmp_path / "repo" / R.PLAN_MODEL).exists()
    assert set(R.validate_repository(tmp_path / "repo")) == {R.TEXT_MODEL}
    assert R.loadable_models(tmp_path / "repo") == [R.TEXT_MODEL]
    # nothing but the repository is left beside it (temp folder renamed, not copied)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_reference_mode_points_at_artifact(dev_artifact, tmp_path):
    R.write_model_repository(dev_artifact, tmp_path / "repo", artifact_mode="reference")
    cfg = R.parse_config(tmp_path / "repo" / R.TEXT_MODEL / "config.pbtxt")
    assert cfg.parameters["artifact_dir"].string_value == str(pathlib.Path(dev_artifact).resolve())
    assert not (tmp_path / "repo" / R.TEXT_MODEL / "1" / "artifact").exists()


def test_plan_tokenizer_ensemble(dev_artifact_single, tmp_path):
    repo = tmp_path / "repo"
    info = R.write_model_repository(dev_artifact_single, repo, max_batch=4)  # auto: the artifact has one
    assert info.with_tensorrt_plan
    assert info.models == [R.TEXT_MODEL, R.PLAN_MODEL, R.TOKENIZER_MODEL, R.ENSEMBLE_MODEL]
    configs = R.validate_repository(repo)
    plan = configs[R.PLAN_MODEL]
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4
    assert (repo / R.PLAN_MODEL / "1" / "model.plan").read_bytes() == b"not a real engine"
    ins = {t.name: list(t.dims) for t in plan.input}
    assert ins == {"input_ids": [-1], "attention_mask": [-1]}
    outs = {t.name: list(t.dims) for t in plan.output}
    assert outs["logits"] == [2] and outs["kept_00"] == [-1]
    tok = configs[R.TOKENIZER_MODEL]
    assert tok.backend == "python" and {t.name for t in tok.output} == {"input_ids", "attention_mask"}
    assert (repo / R.TOKENIZER_MODEL / "1" / "tokenizer").is_dir()
    ens = configs[R.ENSEMBLE_MODEL]
    assert ens.platform == "ensemble"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [R.TOKENIZER_MODEL, R.PLAN_MODEL]
    assert (repo / "plugins" / R.PLUGIN_LIB).is_file()
    readme = (repo / "README.md").read_text()
    cmd = (f"tritonserver --model-repository={repo.resolve()} "
           f"--backend-config=tensorrt,plugins={repo.resolve()}/plugins/libadapler_plugins.so")
    assert cmd in readme and info.tritonserver_command == cmd
    # this wheel has no TensorRT backend: only the Python models load here
    assert R.loadable_models(repo) == [R.TEXT_MODEL, R.TOKENIZER_MODEL]
    assert R.loadable_models(repo, {"python", "tensorrt"})[-1] == R.ENSEMBLE_MODEL


def test_with_tensorrt_plan_needs_the_engine(dev_artifact, tmp_path):
    with pytest.raises(R.RepositoryError, match="single.fp32.plan"):
        R.write_model_repository(dev_artifact, tmp_path / "repo", with_tensorrt_plan=True)
    assert not (tmp_path / "repo").exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_and_overwrite(dev_artifact, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    R.write_model_repository(dev_artifact, repo)
    with pytest.raises(R.RepositoryError, match="exists"):
        R.write_model_repository(dev_artifact, repo)
    marker = repo / "marker"
    marker.write_text("old")

    def broken(_):
        raise R.RepositoryError("injected failure")

    monkeypatch.setattr(R, "validate_repository", broken)
    with pytest.raises(R.RepositoryError, match="injected"):
        R.write_model_repository(dev_artifact, repo, overwrite=True)
    assert marker.read_text() == "old"  # the old repository is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temp folder left
    monkeypatch.undo()
    R.write_model_repository(dev_artifact, repo, overwrite=True, max_batch=3)
    assert not marker.exists()
    assert R.parse_config(repo / R.TEXT_MODEL / "config.pbtxt").max_batch_size == 3


def test_validation_rejects_broken_configs(dev_artifact_single, tmp_path):
    repo = tmp_path / "repo"
    R.write_model_repository(dev_artifact_single, repo)
    cfg_path = repo / R.TEXT_MODEL / "config.pbtxt"
    good = cfg_path.read_text()
    cfg_path.write_text(good + "\nnot_a_field: 3\n")
    with pytest.raises(R.RepositoryError, match="not_a_field"):
        R.validate_repository(repo)
    cfg_path.write_text(good.replace('name: "adapler_text"', 'name: "other"'))
    with pytest.raises(R.RepositoryError, match="differs from folder"):
        R.validate_repository(repo)
    cfg_path.write_text(good)
    ens = repo / R.ENSEMBLE_MODEL / "config.pbtxt"
    ens.write_text(ens.read_text().replace('key: "logits"', 'key: "no_such_output"'))
    with pytest.raises(R.RepositoryError, match="no_such_output"):
        R.validate_repository(repo)


def test_runtime_edge_cases(dev_artifact):
    clf = TextClassifier(dev_artifact, backend_factory=load_dev_backend)
    assert clf.max_length == 32 and clf.labels == ["negative", "positive"]
    empty, long, normal = clf.classify(["", "good " * 100, "a bleak and dull film ."])
    assert empty.tokens == ["[CLS]", "[SEP]"] and not empty.truncated
    assert all(layer == [0, 1] for layer in empty.kept_positions)
    assert long.truncated and len(long.tokens) == 32 and long.tokens[-1] == "[SEP]" and long.label == "positive"
    assert normal.label == "negative" and normal.kept_tokens[0][0] == "[CLS]"
    assert abs(float(normal.probabilities.sum()) - 1.0) < 1e-6
    doc = json.loads(normal.rationale_json())
    assert set(doc) == {"tokens", "kept_positions", "kept_tokens", "truncated"}
    enc = encode(clf.tokenizer, ["good", "good good good"], 32, pad_to_multiple_of=8)
    assert enc.input_ids.dtype == np.int32 and enc.input_ids.shape == (2, 8)
    assert enc.attention_mask.sum(axis=1).tolist() == [3, 5]
    assert clf.classify([]) == []
    assert np.allclose(softmax(np.array([[0.0, 0.0]])), 0.5)


def test_find_triton_errors(monkeypatch, tmp_path):
    pytest.importorskip("pytriton", reason="the tritonserver binary comes with `pip install nvidia-pytriton`")
    dist = find_triton()
    assert dist.binary.is_file() and dist.stub.is_file()
    with pytest.raises(TritonServerError, match="stub for Python 2.7"):
        find_triton("2.7")
    monkeypatch.setenv("TRITONSERVER_ROOT", str(tmp_path))
    with pytest.raises(TritonServerError, match="tritonserver binary not found"):
        find_triton()


def test_load_is_loopback_only():
    from adapler_export.serving.load import is_loopback, run_load

    assert is_loopback("127.0.0.1:8000") and is_loopback("http://localhost:1") and is_loopback("[::1]:5")
    with pytest.raises(ValueError, match="not a loopback"):
        run_load("10.1.2.3:8000", ["x"])


def test_cli_parsers(dev_artifact, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_triton_parser(sub)
    add_serve_parser(sub)
    args = parser.parse_args(["triton", "--artifact", str(dev_artifact), "--repo", str(tmp_path / "repo"), "--max-batch", "4"])
    assert args.func(args) == 0
    assert "model repository written" in capsys.readouterr().out
    assert R.parse_config(tmp_path / "repo" / R.TEXT_MODEL / "config.pbtxt").max_batch_size == 4
    args = parser.parse_args(["serve", "--repo", "x", "--load", "--concurrency", "2", "--protocol", "both"])
    assert args.load and args.concurrency == 2 and args.protocol == "both"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve"])  # --repo or --artifact is required


# =========================================================================================================
# (b) real servers
# =========================================================================================================
def _start(repo, tmp_path_factory) -> TritonServer:
    try:
        find_triton()
    except TritonServerError as e:
        pytest.skip(f"no local tritonserver: {e}")
    work = tmp_path_factory.mktemp("triton-work")
    server = TritonServer(repo, workdir=work)
    server.start(timeout=300)
    assert server.is_ready() and server.http_url.startswith("127.0.0.1:")
    print(f"\ntritonserver pid {server.pid} ready in {server.startup_seconds:.1f}s "
          f"(http {server.http_url}, grpc {server.grpc_url})")
    return server


def _stop(server: TritonServer) -> None:
    """Stop by PID (SIGTERM; SIGKILL of its process group after the timeout): the server and the
    Python-backend stubs it spawned (same process group) are gone afterwards."""
    pid = server.pid
    assert server.stop() == 0
    assert pid is not None and _pid_gone(pid), f"tritonserver pid {pid} still alive"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def _client(server, protocol):
    from adapler_export.serving.client import AdaplerClient

    return AdaplerClient(server.url(protocol), protocol, max_batch=MAX_BATCH)


def _reference(artifact, backend, texts, chunk):
    clf = TextClassifier(artifact, backend=backend)
    preds = []
    for i in range(0, len(texts), chunk):
        preds += clf.classify(texts[i:i + chunk])
    return clf, preds


def _assert_same(server_results, ref_preds, exact_probs=False):
    assert len(server_results) == len(ref_preds)
    for got, ref in zip(server_results, ref_preds):
        assert got["label"] == ref.label and got["label_id"] == ref.label_id
        np.testing.assert_allclose(got["probabilities"], ref.probabilities, rtol=0, atol=0 if exact_probs else 1e-6)
        assert got["kept_tokens"]["tokens"] == ref.tokens
        assert got["kept_tokens"]["kept_positions"] == ref.kept_positions
        assert got["kept_tokens"]["kept_tokens"] == ref.kept_tokens


def _bad_requests(server, clf_max_length):
    """Every malformed request gets an error (or the documented result); the server stays healthy."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    for proto, mod in (("http", httpclient), ("grpc", grpcclient)):
        with _client(server, proto) as c:
            raw = c._client

            def infer(inputs, _raw=raw):
                return _raw.infer(R.TEXT_MODEL, inputs)

            # wrong dtype
            bad = mod.InferInput("TEXT", [1, 1], "INT32")
            bad.set_data_from_numpy(np.array([[7]], dtype=np.int32))
            with pytest.raises(InferenceServerException, match="(?i)data.?type|BYTES|INT32"):
                infer([bad])
            # wrong input name / missing input
            other = mod.InferInput("NOT_TEXT", [1, 1], "BYTES")
            other.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match="unexpected inference input 'NOT_TEXT'"):
                infer([other])
            with pytest.raises(InferenceServerException, match="missing required input"):
                infer([])
            # empty batch
            empty = mod.InferInput("TEXT", [0, 1], "BYTES")
            empty.set_data_from_numpy(np.zeros((0, 1), dtype=np.object_))
            with pytest.raises(InferenceServerException, match="got 0"):
                infer([empty])
            # wrong shape, too many rows
            wide = mod.InferInput("TEXT", [1, 2], "BYTES")
            wide.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match="unexpected shape"):
                infer([wide])
            with pytest.raises(InferenceServerException, match="(?i)batch"):
                c.infer_raw(["x"] * (MAX_BATCH + 1))
            # undecodable text: error for that request
            with pytest.raises(InferenceServerException, match="UTF-8"):
                c.infer_raw(np.array([[b"\xff\xfe bad"]], dtype=np.object_))
            # documented results: empty string -> [CLS] [SEP]; over-long text -> truncated
            e, long = c.classify(["", "this film is good . " * 400])
            assert e["kept_tokens"]["tokens"] == ["[CLS]", "[SEP]"] and e["kept_tokens"]["truncated"] is False
            assert abs(sum(e["probabilities"]) - 1.0) < 1e-5
            assert long["kept_tokens"]["truncated"] is True
            assert len(long["kept_tokens"]["tokens"]) == clf_max_length
            assert c.is_ready()
            assert c.classify(["a good film ."])[0]["label"]
    assert server.is_alive() and server.is_ready()
    assert "truncated to" in server.log_tail(200000)


# ---- stand-in artifact + dev backend ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_server(dev_artifact_single, tmp_path_factory):
    """adapler_text + adapler_tokenizer (the Python models; adapler_plan needs TensorRT, not here)."""
    repo = tmp_path_factory.mktemp("dev-repo") / "repo"
    R.write_model_repository(dev_artifact_single, repo, max_batch=MAX_BATCH, backend_factory=DEV_FACTORY)
    server = _start(repo, tmp_path_factory)
    assert server._models_to_load() == [R.TEXT_MODEL, R.TOKENIZER_MODEL]
    yield server
    _stop(server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dev_server_matches_local(dev_server, dev_artifact_single, protocol):
    texts = _dev_texts(40) + ["", "good " * 100]
    _, ref = _reference(dev_artifact_single, load_dev_backend(dev_artifact_single), texts, MAX_BATCH)
    with _client(dev_server, protocol) as c:
        _assert_same(c.classify(texts), ref, exact_probs=True)


def test_dev_server_bad_requests(dev_server):
    _bad_requests(dev_server, 32)


def test_dev_server_isolates_a_failing_request(dev_server):
    """Concurrent requests joined by the dynamic batcher: the one whose text makes the backend raise gets
    an error; the others get their results."""
    from tritonclient.utils import InferenceServerException

    texts = ["a good film ."] * 6 + ["explode"] + ["a bleak film ."] * 6

    def one(t):
        with _client(dev_server, "http") as c:
            try:
                return c.classify([t])[0]["label"]
            except InferenceServerException as e:
                return f"error: {e}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, texts))
    assert got[6].startswith("error:") and "explode" in got[6]
    assert got[:6] == ["positive"] * 6 and got[7:] == ["negative"] * 6
    assert dev_server.is_ready()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dev_server_tokenizer_model(dev_server, dev_artifact_single, protocol):
    """adapler_tokenizer (the ensemble's front): INT32 ids/mask as the runtime encodes them, padded to a
    multiple of 8, and a per-request error for non-UTF-8 text."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    mod = httpclient if protocol == "http" else grpcclient
    texts = ["a good film .", "", "good " * 100]
    clf = TextClassifier(dev_artifact_single, backend_factory=load_dev_backend)
    client = mod.InferenceServerClient(dev_server.url(protocol))
    try:
        for t in texts:
            inp = mod.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[t.encode()]], dtype=np.object_))
            res = client.infer(R.TOKENIZER_MODEL, [inp])
            ref = encode(clf.tokenizer, [t], clf.max_length, pad_to_multiple_of=8)
            assert res.as_numpy("input_ids").dtype == np.int32
            np.testing.assert_array_equal(res.as_numpy("input_ids"), ref.input_ids)
            np.testing.assert_array_equal(res.as_numpy("attention_mask"), ref.attention_mask)
        inp = mod.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"\xff"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="UTF-8"):
            client.infer(R.TOKENIZER_MODEL, [inp])
    finally:
        client.close()


def test_server_start_failure_is_clear(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
                                                  'input [{name: "X" data_type: TYPE_FP32 dims: [1]}]\n'
                                                  'output [{name: "Y" data_type: TYPE_FP32 dims: [1]}]\n')
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('model import fails on purpose')\n")
    server = TritonServer(repo, models=["broken"], workdir=tmp_path / "work")
    with pytest.raises(TritonServerError, match="exited|not ready"):
        server.start(timeout=120)
    assert server.proc is None
    assert "model import fails on purpose" in (tmp_path / "work" / "tritonserver.log").read_text()


# ---- the real artifact -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_artifact(request):
    try:
        return pathlib.Path(request.getfixturevalue("built_artifact"))
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no `built_artifact` fixture")


@pytest.fixture(scope="module")
def real_server(real_artifact, tmp_path_factory):
    repo = tmp_path_factory.mktemp("real-repo") / "repo"
    info = R.write_model_repository(real_artifact, repo, max_batch=MAX_BATCH)
    assert R.TEXT_MODEL in info.models
    server = _start(repo, tmp_path_factory)
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def real_reference(real_artifact):
    from adapler_export.backends import load_backend

    texts = read_texts(SST2_DEV, limit=96)
    clf, preds = _reference(real_artifact, load_backend(str(real_artifact), kind="auto"), texts, MAX_BATCH)
    return texts, clf, preds


@pytest.fixture(scope="module")
def pytorch_reference(real_artifact, real_reference):
    """The PyTorch reference (hard removal, fp32) of the artifact's checkpoint, where it is on disk."""
    from adapler_export.backends import read_manifest

    ckpt = (read_manifest(real_artifact).get("checkpoint") or {}).get("path")
    if not ckpt or not pathlib.Path(ckpt).is_dir():
        return None
    from adapler_export.backends.pytorch import PyTorchBackend

    texts = real_reference[0]
    return _reference(real_artifact, PyTorchBackend.from_checkpoint(ckpt), texts, MAX_BATCH)[1]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_real_server_matches_local_backend(real_server, real_reference, pytorch_reference, protocol):
    texts, _, ref = real_reference
    with _client(real_server, protocol) as c:
        got = c.classify(texts)
    _assert_same(got, ref)
    if pytorch_reference is not None:  # and the PyTorch reference: same labels and kept tokens
        assert [g["label"] for g in got] == [p.label for p in pytorch_reference]
        assert [g["kept_tokens"]["kept_positions"] for g in got] == [p.kept_positions for p in pytorch_reference]
        for g, p in zip(got, pytorch_reference):
            np.testing.assert_allclose(g["probabilities"], p.probabilities, rtol=0, atol=1e-4)
    labels = read_texts(SST2_DEV, limit=len(texts), column="label")
    acc = np.mean([g["label_id"] == int(y) for g, y in zip(got, labels)])
    print(f"{protocol}: {len(texts)} SST-2 dev sentences, same as local backend; accuracy {acc:.3f}")


def test_real_server_bad_requests(real_server, real_reference):
    _, clf, _ = real_reference
    _bad_requests(real_server, clf.max_length)


def test_real_server_bounded_load(real_server):
    from adapler_export.serving.load import run_load

    texts = read_texts(SST2_DEV, limit=200)
    res = run_load(real_server.http_url, texts, protocol="http", concurrency=8, requests_per_client=25,
                   max_seconds=120)
    print("\n" + res.summary())
    assert res.failures == 0 and res.ok > 0 and res.p50_ms is not None and res.p99_ms >= res.p50_ms
    assert real_server.is_ready()


def test_stop_escalates_to_sigkill(dev_artifact, tmp_path_factory):
    """stop() with no grace: SIGKILL of the server's process group; stubs and their shared memory go too."""
    repo = tmp_path_factory.mktemp("kill-repo") / "repo"
    R.write_model_repository(dev_artifact, repo, backend_factory=DEV_FACTORY)
    server = _start(repo, tmp_path_factory)
    pid, prefix = server.pid, server._shm_prefix
    assert list(pathlib.Path("/dev/shm").glob(prefix + "*")), "the Python backend's shm region exists"
    assert server.stop(timeout=0.01) == -signal.SIGKILL
    assert _pid_gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not list(pathlib.Path("/dev/shm").glob(prefix + "*"))


@pytest.mark.skipif(not os.environ.get("ADAPLER_TRITON_PLAN_URL"),
                    reason="needs a Triton server with the TensorRT backend and a GPU serving the repository "
                           "written with --with-tensorrt-plan; set ADAPLER_TRITON_PLAN_URL=host:http_port "
                           "(see the repository README)")
def test_tensorrt_ensemble_matches_local(real_artifact):
    """adapler_ensemble (tokenizer -> single engine with TokenCompact plugin layers) vs the local backend."""
    import tritonclient.http as httpclient

    from adapler_export.backends import load_backend

    precision = R.inspect_artifact(real_artifact).precision
    texts = read_texts(SST2_DEV, limit=200)
    clf = TextClassifier(real_artifact, backend=load_backend(str(real_artifact), kind="auto"))
    client = httpclient.InferenceServerClient(os.environ["ADAPLER_TRITON_PLAN_URL"])
    agree = kept_same = 0
    try:
        for text in texts:
            inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            res = client.infer(R.ENSEMBLE_MODEL, [inp])
            ref = clf.classify([text])[0]
            agree += int(np.argmax(res.as_numpy("logits")[0])) == ref.label_id
            n_links = len(ref.kept_positions)
            kept = [[int(p) for p in res.as_numpy(f"kept_positions_{k}")[0] if p >= 0] for k in range(n_links)]
            kept_same += kept == ref.kept_positions
    finally:
        client.close()
    print(f"\nadapler_ensemble ({precision}): labels {agree}/{len(texts)}, kept tokens {kept_same}/{len(texts)}")
    if precision == "fp32":
        assert agree == kept_same == len(texts)
    else:  # fp16 may flip near-threshold decisions (../shared/DESIGN.md §4)
        assert agree / len(texts) >= 0.98


def test_port_clash_is_retried(tmp_path, monkeypatch):
    """A picked port taken before tritonserver binds it: the start is retried on fresh ports."""
    import socket

    from adapler_export.serving import server as S

    try:
        find_triton()
    except TritonServerError as e:
        pytest.skip(f"no local tritonserver: {e}")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    calls = []
    real_free_ports = S.free_ports

    def flaky_free_ports(n, host=S.LOOPBACK):
        calls.append(n)
        ports = real_free_ports(n, host)
        return [busy.getsockname()[1]] + ports[1:] if len(calls) == 1 else ports

    monkeypatch.setattr(S, "free_ports", flaky_free_ports)
    (tmp_path / "empty-repo").mkdir()
    server = TritonServer(tmp_path / "empty-repo", models=[], workdir=tmp_path / "work")
    try:
        server.start(timeout=60)
        assert len(calls) == 2 and server.http_port != busy.getsockname()[1] and server.is_ready()
        assert "already in use" in (tmp_path / "work" / "tritonserver.log").read_text()
    finally:
        server.stop()
        busy.close()
