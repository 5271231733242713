"""`adapler-export build --backend tensorrt` on the CI checkpoint: real segment engines (full TensorRT, else
TensorRT-RTX ahead of time on the CPU) recorded in the manifest's `engines`, the single engine's absence
explained, and the engines' parity run where a GPU is (reported as not run, with the reason, where not).

    ADAPLER_TEST_CHECKPOINT=/tmp/ah/checkpoints/ci nice -n 10 python -m pytest -q tests/test_build_tensorrt.py
"""
import json

import pytest

from adapler_export.artifact import read_manifest
from adapler_export.cli import main
from adapler_export.engines import TensorRTUnavailable, import_tensorrt, input_profile

from conftest import require, sst2_dir

pytestmark = pytest.mark.slow
MAX_BATCH = 8


def tensorrt_flavor() -> tuple:
    try:
        trt, flavor = import_tensorrt()
    except TensorRTUnavailable as exc:
        require(False, f"{exc}; then `python -m pytest tests/test_build_tensorrt.py`")
    return flavor, str(trt.__version__)


@pytest.fixture(scope="module")
def tensorrt_artifacts(ci_checkpoint, tmp_path_factory):
    flavor = tensorrt_flavor()
    out = {}
    for precision in ("fp32", "fp16"):
        path = tmp_path_factory.mktemp("trt") / f"ci-trt-{precision}"
        assert main(["build", "--ckpt", str(ci_checkpoint), "--backend", "tensorrt", "--dtype", precision,
                     "--samples", "32", "--max-batch", str(MAX_BATCH), "--data-dir", str(sst2_dir()),
                     "--output", str(path)]) == 0
        out[precision] = path
    return flavor, out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_records_every_segment_engine(tensorrt_artifacts, ci_checkpoint, precision):
    (flavor, version), artifacts = tensorrt_artifacts
    artifact = artifacts[precision]
    manifest = read_manifest(artifact)
    engines, specs = manifest.engines, manifest.specs()
    layers = json.loads((ci_checkpoint / "adapler_config.json").read_text())["num_layers"]
    assert (engines.flavor, engines.version) == (flavor, version)
    assert len(engines.segments) == len(specs) == manifest.num_layers + 1 == layers + 1
    for spec, record in zip(specs, engines.segments):
        assert record["plan_path"] == f"engines/segment_{spec.index:02d}.{precision}.plan"
        assert (artifact / record["plan_path"]).stat().st_size > 100_000, "a real serialized engine"
        assert record["plan_path"] in manifest.files
        assert record["precision"] == precision
        assert record["profiles"] == [input_profile(spec.inputs, MAX_BATCH, manifest.max_length)]
        assert {n: t["dtype"] for n, t in record["inputs"].items()} == {n: d for n, (d, _) in spec.inputs.items()}
    hidden = engines.segments[1]["profiles"][0]["hidden"]
    assert hidden["min"] == [1, 1, manifest.hidden_size]
    assert hidden["max"] == [MAX_BATCH, manifest.max_length, manifest.hidden_size]


def test_build_says_why_there_is_no_single_engine(tensorrt_artifacts):
    (flavor, _), artifacts = tensorrt_artifacts
    manifest = read_manifest(artifacts["fp32"])
    if manifest.engines.single is not None:
        pytest.skip("full TensorRT and the plugin library are here: the single engine was built")
    reason = manifest.engines.not_built["single"]
    expected = "no plugin support" if flavor == "tensorrt_rtx" else "plugin library not found"
    assert expected in reason, reason  # not any other failure
    assert not (artifacts["fp32"] / "plugins").exists()


def test_build_runs_engine_parity_where_it_can(tensorrt_artifacts):
    import torch

    _, artifacts = tensorrt_artifacts
    parity = read_manifest(artifacts["fp32"]).parity
    if torch.cuda.is_available():
        assert "tensorrt" in parity["end_to_end"]
    else:
        assert "tensorrt" not in parity["end_to_end"] and "GPU" in parity["not_run"]["tensorrt"]


def test_verify_tensorrt_without_a_gpu_is_a_clear_error(tensorrt_artifacts, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: `python -m pytest -q tests/test_engines.py -k gpu` runs the engines")
    _, artifacts = tensorrt_artifacts
    assert main(["verify", "--artifact", str(artifacts["fp32"]), "--backend", "tensorrt", "--samples", "8",
                 "--data-dir", str(sst2_dir())]) == 2
    err = capsys.readouterr().err
    assert "adapler-export: error:" in err and "tensorrt" in err and "GPU" in err
