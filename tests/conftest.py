"""Shared fixtures: one CI-sized checkpoint trained for real (all three stages) and artifacts built from it.

Everything lives under a session temp $ADAPLER_HOME, so tests never touch the user's cache. The
checkpoint is trained once per session (a few minutes on 2 cores) and reused by the export, parity,
calibration, engine and serving tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import make_tiny_checkpoint, tiny_model  # noqa: F401 (tests import tiny_model from here)

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = REPO.parent / "shared" / "data" / "sst2"

# CI-sized training: enough for the CPs to learn to drop tokens, small enough for minutes on 2 cores.
# The README's first command trains exactly this as `sst2-small`; the tests reuse that checkpoint.
CI_TRAIN_ARGS = ["--setting", "fast", "--max-train-samples", "4000", "--epochs-stage1", "2", "--lr-stage1", "5e-5",
                 "--selection-fallback", "most-accurate", "--max-eval-samples", "300"]
README_CHECKPOINT = "sst2-small"
CI_TRAINING = {"max_train_samples": 4000, "max_eval_samples": 300, "stage1.epochs": 2, "stage1.lr": 5e-5,
               "stage3_init": "finetuned", "stage3.epochs": 3, "stage3.lambda_base": 50.0,
               "stage3.lambda_mult": 50.0, "stage3.phi": 0.002, "stage3.eta_lr": 5e-3, "stage3.cp_lr": 1e-3}


def save_tiny_checkpoint(path: Path, seed: int = 0, eta: float = 0.6, layers: int = 3) -> Path:
    """A tiny random model whose CPs are opinionated enough to drop many tokens (tests/tiny_models.py)."""
    return make_tiny_checkpoint(path, seed=seed, layers=layers, eta=eta, cp_gain=40.0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real fp32 artifact of the tiny checkpoint (parity on 64 SST-2 dev sentences)."""
    from adapler_export.build import BuildOptions, build_artifact

    out = tmp_path_factory.mktemp("tiny_art") / "artifact"
    return build_artifact(str(tiny_checkpoint), str(out), BuildOptions(samples=64, data_dir=str(sst2_dir())),
                          log=lambda message: None).path


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


def readme_checkpoint() -> Path | None:
    """The checkpoint the README's first command trained (user's cache), if it has the CI settings."""
    import json

    base = Path(os.environ.get("ADAPLER_HOME", Path.home() / ".cache" / "adapler")).expanduser()
    path = base / "checkpoints" / README_CHECKPOINT
    try:
        recorded = json.loads((path / "adapler_config.json").read_text())
        config = recorded["training"]["config"]
        recorded["data"]["train"]["draws"]  # written before the data record held its draws: train anew
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for key, want in CI_TRAINING.items():
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != want:
            return None
    return path if config.get("seed") == 42 and config.get("task") == "sst2" else None


@pytest.fixture(scope="session")
def ci_checkpoint(adapler_home) -> Path:
    """A real AdapLeR checkpoint: MiniLM backbone, SST-2 subset, three stages."""
    from adapler_export.cli import main

    import shutil

    data = sst2_dir()
    reuse = os.environ.get("ADAPLER_TEST_CHECKPOINT") or readme_checkpoint()
    if reuse:  # a checkpoint trained with CI_TRAIN_ARGS already exists: no need to train again
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
