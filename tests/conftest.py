"""Shared fixtures: one CI-sized checkpoint trained for real (all three stages) and artifacts built from it.

Everything lives under a session temp $ADAPLER_HOME, so tests never touch the user's cache. The
checkpoint is trained once per session (a few minutes on 2 cores) and reused by the export, parity,
calibration, engine and serving tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = REPO.parent / "shared" / "data" / "sst2"

# CI-sized training: enough for the CPs to learn to drop tokens, small enough for minutes on 2 cores.
CI_TRAIN_ARGS = ["--max-train-samples", "4000", "--epochs-stage1", "2", "--epochs-stage3", "3",
                 "--lambda-schedule", "50:50", "--max-eval-samples", "300"]


def sst2_dir() -> Path:
    env = os.environ.get("ADAPLER_DATA_DIR")
    path = Path(env) / "sst2" if env else SST2_DIR
    if not path.is_dir():
        pytest.skip(f"SST-2 data not found at {path} (set ADAPLER_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def adapler_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("adapler_home")
    previous = os.environ.get("ADAPLER_HOME")
    os.environ["ADAPLER_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("ADAPLER_HOME", None)
    else:
        os.environ["ADAPLER_HOME"] = previous


@pytest.fixture(scope="session")
def ci_checkpoint(adapler_home) -> Path:
    """A real AdapLeR checkpoint: MiniLM backbone, SST-2 subset, three stages."""
    from adapler_export.cli import main

    data = sst2_dir()
    reuse = os.environ.get("ADAPLER_TEST_CHECKPOINT")
    if reuse:  # developers: reuse a checkpoint trained with CI_TRAIN_ARGS instead of training again
        import shutil

        shutil.copytree(reuse, adapler_home / "checkpoints" / "ci")
        return adapler_home / "checkpoints" / "ci"
    rc = main(["train", "--task", "sst2", "--data-dir", str(data), "--output", "ci", *CI_TRAIN_ARGS])
    assert rc == 0
    return adapler_home / "checkpoints" / "ci"


@pytest.fixture(scope="session")
def built_artifact(ci_checkpoint) -> Path:
    """fp32 ONNX Runtime artifact of the CI checkpoint, verified on the full dev set by `build`."""
    from adapler_export.cli import main

    out = ci_checkpoint.parent.parent / "artifacts" / "ci-fp32"
    rc = main(["build", "--ckpt", str(ci_checkpoint), "--data-dir", str(sst2_dir()), "--output", str(out)])
    assert rc == 0
    return out
