"""Shared fixtures: one CI-sized checkpoint trained for real (all three stages) and artifacts built from it.

Everything lives under a session temp $ADAPLER_HOME, so tests never touch the user's cache. The
checkpoint is trained once per session (a few minutes on 2 cores) and reused by the export, parity,
calibration, engine and serving tests; when README command 1 already trained it (`sst2` in the
user's $ADAPLER_HOME, as it was when pytest started) a copy of that is used instead, and the run's summary
says which (`ci_checkpoint: ...`).

Prerequisites (data, tools): :func:`require` skips with the reason on a developer's machine and fails
under ``CI=true``, where `.ci/run` is meant to provide them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

# tests import tiny_model from here
from tiny_models import DATA_DIR, make_tiny_artifact, make_tiny_checkpoint, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = DATA_DIR / "sst2"
# The user's $ADAPLER_HOME as it was before any fixture pointed ADAPLER_HOME at a test folder: where
# README command 1 left `sst2`.
USER_ADAPLER_HOME = Path(os.environ.get("ADAPLER_HOME") or Path.home() / ".cache" / "adapler").expanduser()
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# CI-sized training: the default recipe on 4,000 SST-2 sentences (a short stage 3: scaled rates, the fine-tuned
# start at a third of the backbone rate, a 1.6x speed set point), minutes on 2 cores. The README's first command
# trains exactly this as `sst2`; the tests reuse that checkpoint. CI_TRAINING: the recorded (resolved) settings that
# make a checkpoint this one.
CI_TRAIN_ARGS = ["--max-train-samples", "4000"]
README_CHECKPOINT = "sst2"
CI_TRAINING = {"max_train_samples": 4000, "max_eval_samples": None, "stage1.epochs": 5, "stage1.lr": 2e-5,
               "stage3_init": "finetuned", "stage3.epochs": 5, "stage3.lambda_base": 10.0,
               "stage3.lambda_mult": 10.0, "stage3.phi": 0.0005, "stage3.eta_lr": 5e-4, "stage3.lr": 1e-5,
               "stage3.cp_lr": 3e-5, "stage3.lr_reference_steps": 4700, "stage3.target_speedup": 1.6,
               "stage3.constraint_weight": 5.0, "stage3.target_mode": "set-point"}
CHECKPOINT_SOURCE: list = []  # what ci_checkpoint did this session, for the run's summary


# A test that needs one of these is slow (`-m "not slow"` leaves it out), whether or not its file says so: a
# model trained for real (or copied), a real Triton server, a compiled plugin (minutes, or tens of seconds each).
SLOW_FIXTURES = {"ci_training", "ci_checkpoint", "built_artifact", "tiny_server", "pair_server", "real_server",
                 "kernel_build", "harness_build"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ----- prerequisites -----------------------------------------------------------------------------------------
def require(condition, reason: str) -> None:
    """Nothing when `condition` holds; else skip saying `reason`, or, under CI=true, fail: CI provides the
    data and the tools (`.ci/run`), so one missing there is a broken CI, not a reason to stay green."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, install: str):
    """Import `name` (a module an extra of `.ci/run`'s install provides), or :func:`require` it."""
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        found = False
    require(found, f"{name} is not installed (`{install}`)")
    return importlib.import_module(name)


def task_dir(task: str) -> Path:
    """The task's data folder ($ADAPLER_DATA_DIR/<task>, else ../shared/data/<task>), or :func:`require` it."""
    path = DATA_DIR / task
    require(path.is_dir(), f"{task} data not found at {path} (set ADAPLER_DATA_DIR)")
    return path


def sst2_dir() -> Path:
    return task_dir("sst2")


def polygraphy_command() -> str:
    """The polygraphy console script of this environment (a dependency of adapler-export), else the PATH's."""
    beside_python = Path(sys.executable).with_name("polygraphy")
    found = str(beside_python) if beside_python.is_file() else shutil.which("polygraphy")
    require(found, f"no polygraphy command beside {sys.executable} or on PATH (`pip install polygraphy`)")
    return found


def arm_tripwires(monkeypatch) -> list:
    """"Refused before any work", checked without a clock: from now on loading a checkpoint or opening an ONNX
    Runtime session records what was tried (and raises); the returned list must stay empty."""
    import onnxruntime

    import adapler_export.checkpoint as checkpoint

    tried = []

    def tripwire(what):
        def fail(*args, **kwargs):
            tried.append(what)
            raise AssertionError(f"{what} before the refusal")
        return fail

    load = checkpoint.load_checkpoint
    for module in list(sys.modules.values()):  # `from ... import load_checkpoint` copies included
        if getattr(module, "load_checkpoint", None) is load:
            monkeypatch.setattr(module, "load_checkpoint", tripwire("loaded a checkpoint"))
    monkeypatch.setattr(onnxruntime, "InferenceSession", tripwire("opened an ONNX Runtime session"))
    return tried


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """A test that sets torch's thread count (a CLI call with --threads, a benchmark) gives it back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


# ----- parity, recomputed by the test (not read from the build's own parity.json) ------------------------------
def assert_backends_match_pytorch(checkpoint, artifact, texts, pairs=None, kinds=("onnxruntime", "onnxruntime-graph"),
                                  atol: float | None = None, batch_size: int = 64) -> dict:
    """Run `texts` (and `pairs`) through each backend `kind` of `artifact` (fp32) and through the checkpoint's
    PyTorch reference (`forward_hard`): logits within `atol` (default: the tolerance table's fp32 bound), every
    link's kept positions identical (fp32 flips no decision). Returns per kind the
    rows compared, the largest logit difference and how many tokens the links dropped (a check of a model that
    drops nothing would be weak)."""
    import numpy as np

    from adapler_export.artifact import read_manifest
    from adapler_export.backends import load_backend
    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.evaluation import encoded_batches
    from adapler_export.tolerances import Tolerances

    ckpt, manifest = load_checkpoint(checkpoint), read_manifest(artifact)
    assert manifest.precision == "fp32", "fp16 and int8 may flip decisions: compare those with their tolerances"
    atol = Tolerances.for_precision("fp32").max_abs_logit if atol is None else atol
    reference = PyTorchBackend(ckpt.model)
    batches = list(encoded_batches(ckpt.tokenizer, list(texts), manifest.cut, batch_size,
                                   pairs=None if pairs is None else list(pairs)))
    expected = [reference.run(*arrays) for arrays in batches]
    found = {}
    for kind in kinds:
        rows, worst, dropped = 0, 0.0, 0
        with load_backend(artifact, kind) as backend:
            for arrays, want in zip(batches, expected):
                got = backend.run(*arrays)
                worst = max(worst, float(np.abs(got.logits - want.logits).max()))
                np.testing.assert_allclose(got.logits, want.logits, atol=atol, rtol=0, err_msg=kind)
                assert len(got.kept) == len(want.kept) == manifest.num_layers, kind
                for link, (g, w) in enumerate(zip(got.kept, want.kept)):
                    np.testing.assert_array_equal(g, w, err_msg=f"{kind} link {link}")
                dropped += int(arrays[1].sum() - (want.kept[-1] >= 0).sum())
                rows += len(arrays[0])
        found[kind] = {"rows": rows, "max_abs_logit_diff": worst, "dropped": dropped}
    return found


def assert_segments_reproduce_pytorch(model, folder, specs, precision: str, input_ids, attention_mask) -> int:
    """Each exported segment graph under `folder`, run by ONNX Runtime on the inputs the PyTorch segments see
    (the reference chain), gives their outputs within the tolerance table's segment bounds for `precision`.
    Returns how many outputs were compared."""
    import numpy as np
    import onnxruntime as ort

    from adapler_export.parity import capture_segment_io
    from adapler_export.tolerances import Tolerances

    tolerance = Tolerances.for_precision(precision)
    compared = 0
    for spec, (feeds, expected) in zip(specs, capture_segment_io(model, precision, input_ids, attention_mask),
                                       strict=True):
        session = ort.InferenceSession(str(Path(folder) / spec.file_name), providers=["CPUExecutionProvider"])
        for name, got in zip(spec.outputs, session.run(None, feeds)):
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected[name], np.float32),
                                       atol=tolerance.segment_atol, rtol=tolerance.segment_rtol,
                                       err_msg=f"{spec.file_name}:{name}")
            compared += 1
    return compared


# ----- tiny models ---------------------------------------------------------------------------------------------
def save_tiny_checkpoint(path: Path, seed: int = 0, eta: float = 0.6, layers: int = 3) -> Path:
    """A tiny random model whose CPs are opinionated enough to drop many tokens (tests/tiny_models.py)."""
    return make_tiny_checkpoint(path, seed=seed, layers=layers, eta=eta, cp_gain=40.0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real fp32 artifact of the tiny checkpoint (3 layers, eta 0.6; parity on 64 SST-2 dev sentences)."""
    from adapler_export.build import BuildOptions, build_artifact

    out = tmp_path_factory.mktemp("tiny_art") / "artifact"
    return build_artifact(str(tiny_checkpoint), str(out), BuildOptions(samples=64, data_dir=str(sst2_dir())),
                          log=lambda message: None).path


@pytest.fixture(scope="session")
def pair_checkpoint(tmp_path_factory) -> Path:
    """A tiny sentence-pair (MRPC) checkpoint: 3 layers, eta 0.6, its second token type far from the first."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("pair") / "ckpt", layers=3, eta=0.6, cp_gain=40.0,
                                task="mrpc")


@pytest.fixture(scope="session")
def pair_artifact(pair_checkpoint, tmp_path_factory) -> Path:
    """The pair checkpoint built for real: its graphs take token_type_ids (parity on 96 MRPC dev pairs)."""
    task_dir("mrpc")
    return make_tiny_artifact(pair_checkpoint, tmp_path_factory.mktemp("pair-art") / "artifact", samples=96,
                              task="mrpc")


# ----- the CI checkpoint -----------------------------------------------------------------------------------------
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


def readme_checkpoint(home: Path = USER_ADAPLER_HOME) -> Path | None:
    """The checkpoint README command 1 trained under `home` (the user's, captured at import), if it has the CI
    settings."""
    path = Path(home) / "checkpoints" / README_CHECKPOINT
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


def work_folder(checkpoint: Path) -> Path:
    """Where `train` kept a checkpoint's stages: $ADAPLER_HOME/work/<name> beside $ADAPLER_HOME/checkpoints/<name>."""
    return checkpoint.parent.parent / "work" / checkpoint.name


def copy_checkpoint(checkpoint: Path, work: Path | None, home: Path, name: str) -> Path:
    """Copy a checkpoint, and its work folder when given, into `home` as `name`; the sources are only read."""
    target = home / "checkpoints" / name
    shutil.copytree(checkpoint, target)
    if work is not None:
        shutil.copytree(work, home / "work" / name)
    return target


@pytest.fixture(scope="session")
def ci_training(adapler_home) -> tuple:
    """(checkpoint, its work folder or None): a real AdapLeR checkpoint (MiniLM backbone, SST-2 subset, three
    stages): $ADAPLER_TEST_CHECKPOINT or README command 1's `sst2` when there is one (only read: tests
    copy it), else trained here into the session's $ADAPLER_HOME."""
    from adapler_export.cli import main

    data = sst2_dir()
    reuse = os.environ.get("ADAPLER_TEST_CHECKPOINT") or readme_checkpoint()
    if reuse:  # a checkpoint trained with CI_TRAIN_ARGS already exists: no need to train again
        reuse = Path(reuse).expanduser()
        work = work_folder(reuse) if work_folder(reuse).is_dir() else None
        CHECKPOINT_SOURCE.append(f"reused a copy of {reuse} ({'with' if work else 'without'} its work folder)")
        return reuse, work
    CHECKPOINT_SOURCE.append(f"trained here ({adapler_home / 'checkpoints' / 'ci'}; no reusable "
                             f"{USER_ADAPLER_HOME / 'checkpoints' / README_CHECKPOINT})")
    rc = main(["train", "--task", "sst2", "--data-dir", str(data), "--output", "ci", *CI_TRAIN_ARGS])
    assert rc == 0
    return adapler_home / "checkpoints" / "ci", adapler_home / "work" / "ci"


@pytest.fixture(scope="session")
def ci_checkpoint(ci_training, adapler_home) -> Path:
    """The CI checkpoint in the session's $ADAPLER_HOME (a copy when reused). Tests only read it."""
    checkpoint, _ = ci_training
    target = adapler_home / "checkpoints" / "ci"
    return checkpoint if checkpoint == target else copy_checkpoint(checkpoint, None, adapler_home, "ci")


def pytest_terminal_summary(terminalreporter):
    for line in CHECKPOINT_SOURCE:
        terminalreporter.write_line(f"ci_checkpoint: {line}")


@pytest.fixture(scope="session")
def built_artifact(ci_checkpoint) -> Path:
    """fp32 ONNX Runtime artifact of the CI checkpoint, verified on the full dev set by `build`."""
    from adapler_export.cli import main

    out = ci_checkpoint.parent.parent / "artifacts" / "ci-fp32"
    rc = main(["build", "--ckpt", str(ci_checkpoint), "--data-dir", str(sst2_dir()), "--output", str(out)])
    assert rc == 0
    return out
