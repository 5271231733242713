"""`build --backend tensorrt`: real segment engines for the CI checkpoint (TensorRT, else TensorRT-RTX
ahead of time on the CPU). Running them needs a GPU: `verify --backend tensorrt` says so clearly here."""
import json

import pytest

from adapler_export.cli import main

from conftest import sst2_dir

pytestmark = pytest.mark.slow


def tensorrt_flavor():
    from adapler_export.engines import TensorRTUnavailable, import_tensorrt

    try:
        return import_tensorrt()[1]
    except TensorRTUnavailable as exc:
        pytest.skip(f"neither tensorrt nor tensorrt_rtx is importable ({exc}); pip install tensorrt-rtx")


@pytest.fixture(scope="module")
def tensorrt_artifacts(ci_checkpoint, tmp_path_factory):
    flavor = tensorrt_flavor()
    out = {}
    for precision in ("fp32", "fp16"):
        path = tmp_path_factory.mktemp("trt") / f"ci-trt-{precision}"
        assert main(["build", "--ckpt", str(ci_checkpoint), "--backend", "tensorrt", "--dtype", precision,
                     "--samples", "32", "--max-batch", "8", "--data-dir", str(sst2_dir()), "--output", str(path)]) == 0
        out[precision] = path
    return flavor, out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_segment_engines_built_with_profiles(tensorrt_artifacts, precision):
    flavor, artifacts = tensorrt_artifacts
    artifact = artifacts[precision]
    manifest = json.loads((artifact / "manifest.json").read_text())
    engines = manifest["engines"]
    assert engines["flavor"] == flavor
    assert len(engines["segments"]) == manifest["num_layers"] + 1
    for k, record in enumerate(engines["segments"]):
        plan = artifact / record["plan_path"]
        assert plan.name == f"segment_{k:02d}.{precision}.plan"
        assert plan.stat().st_size > 100_000, "a real serialized engine"
        assert record["precision"] == precision
        profile = record["profiles"][0]["attention_mask"]
        assert profile["min"] == [1, 1] and profile["max"] == [8, manifest["max_length"]]
        if k > 0:
            hidden = record["profiles"][0]["hidden"]
            assert hidden["max"] == [8, manifest["max_length"], manifest["hidden_size"]]


def test_running_engines_without_a_gpu_is_a_clear_error(tensorrt_artifacts, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_engines.py -k gpu runs the engines")
    _, artifacts = tensorrt_artifacts
    assert main(["verify", "--artifact", str(artifacts["fp32"]), "--backend", "tensorrt", "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "adapler-export: error:" in err and ("GPU" in err or "CUDA" in err)
