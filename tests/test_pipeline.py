"""The CI-sized end-to-end run: all three training stages on an SST-2 subset, then `evaluate`."""
import json

import pytest

from adapler_export.checkpoint import load_checkpoint
from adapler_export.cli import main

from conftest import sst2_dir

pytestmark = pytest.mark.slow


def test_trained_model_drops_tokens_and_is_accurate(ci_checkpoint, capsys):
    ckpt = load_checkpoint(ci_checkpoint)
    training = ckpt.config.training
    assert {"stage1", "stage3", "saliency"} <= set(training)
    assert ckpt.config.data["train"]["examples"] == 4000
    assert ckpt.config.data["train"]["draws"] == [{"count": 4000, "seed": 42}]  # which 4,000: Split.subset's draw
    assert len(ckpt.config.data["train"]["sha256"]) == 64
    assert main(["evaluate", "--ckpt", str(ci_checkpoint), "--data-dir", str(sst2_dir()), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "flops_speedup", "kept_per_layer"} <= set(result)
    assert result["examples"] == 872
    assert result["accuracy"] > 0.75, "far above chance (0.5) on SST-2 dev"
    assert result["kept_fraction_per_layer"][-1] < 1.0, "the adaptive model must really drop tokens"
    assert result["flops_speedup"] > 1.0
    kept = result["kept_per_layer"]
    assert all(a >= b for a, b in zip(kept, kept[1:])), "a dropped token never comes back"


def settings_newer_than(checkpoint) -> list:
    """Training settings this code has that the checkpoint's recorded config lacks (it was trained earlier)."""
    import dataclasses

    from training.pipeline import TrainConfig

    recorded = json.loads((checkpoint / "adapler_config.json").read_text())["training"]["config"]
    current = dataclasses.asdict(TrainConfig())
    newer = [key for key in current if key not in recorded]
    for stage in ("stage1", "stage3"):
        newer += [f"{stage}.{key}" for key in current[stage] if key not in recorded.get(stage, {})]
    return newer


def test_training_resumes_finished_stages(ci_training, tmp_path, monkeypatch, capsys):
    """Re-running the same command reuses every finished stage (no retraining) and rewrites the checkpoint.
    On a copy of the checkpoint and its work folder in a home of its own: the shared fixture stays as it was."""
    from conftest import CI_TRAIN_ARGS, copy_checkpoint

    checkpoint, work = ci_training
    if work is None:
        pytest.skip(f"{checkpoint} came without its work folder ($ADAPLER_HOME/work/{checkpoint.name}): "
                    "nothing to resume from")
    newer = settings_newer_than(checkpoint)
    if newer:  # its stage folders are keyed without them: this code would train them again, rightly
        pytest.skip(f"{checkpoint} was trained before the settings {', '.join(newer)} existed: its work folder "
                    "is not this code's to resume")
    home = tmp_path / "home"
    copy = copy_checkpoint(checkpoint, work, home, "ci")
    monkeypatch.setenv("ADAPLER_HOME", str(home))
    before = (copy / "adapler_heads.safetensors").read_bytes()
    # The data folder is part of the stage-1 work key: the command the checkpoint was trained with, so README
    # command 1's (no --data-dir) resumes as well as the one conftest trains (with it).
    recorded = json.loads((copy / "adapler_config.json").read_text())["training"]["config"]["data_dir"]
    argv = ["train", "--task", "sst2", *(["--data-dir", recorded] if recorded else []), "--output", "ci",
            *CI_TRAIN_ARGS]
    assert main(argv) == 2, "an existing checkpoint is replaced only with --force"
    assert "pass --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    err = capsys.readouterr().err
    assert "stage 1: already done" in err and "stage 2: already done" in err and "stage 3: already done" in err
    assert (copy / "adapler_heads.safetensors").read_bytes() == before
