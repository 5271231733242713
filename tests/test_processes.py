"""Training on several processes: two processes (torchrun, gloo) train ONE model, the one a single process trains.

`training.common.local_rows` gives each process its share of every global batch and `average_gradients`
sums the row-weighted gradients, so two processes at `--batch-size 8` take the steps one process takes at
`--batch-size 8`, up to summation order. A tiny random BERT backbone saved as a Hugging Face folder (no
download) and 48 SST-2 sentences: all three stages in well under a minute per run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import require
from tiny_models import SST2_DIR, make_tiny_tokenizer, tiny_backbone

TRAIN_ROWS, DEV_ROWS = 48, 24
TINY_TRAIN = ["--task", "sst2", "--setting", "fast", "--epochs-stage1", "1", "--epochs-stage3", "2",
              "--saliency-epochs", "1", "--batch-size", "8", "--max-length", "32", "--selection-fallback",
              "most-accurate", "--threads", "1"]
# Two half batches sum to one whole batch only up to float summation order: the learned thresholds of the two
# runs agree far closer than one eta step (the fast setting's eta learning rate is 5e-3).
ETA_ATOL = 1e-4
WEIGHT_ATOL = 1e-4
SOFTMAX_INVARIANT = ("dense_out.bias", "attention.self.key.bias")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    require(SST2_DIR.is_dir(), f"SST-2 data not found at {SST2_DIR} (set ADAPLER_DATA_DIR)")
    root = tmp_path_factory.mktemp("processes")
    data = root / "data"
    data.mkdir()
    lines = (SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:1 + TRAIN_ROWS]) + "\n", encoding="utf-8")
    dev = (SST2_DIR / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (data / "dev.tsv").write_text("\n".join(dev[:1 + DEV_ROWS]) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    backbone_dir = root / "tiny-bert"
    tokenizer = make_tiny_tokenizer(root / "scratch")
    model = tiny_backbone("bert", len(tokenizer), layers=2, labels=["negative", "positive"])
    # No dropout: each process would draw its own masks for its half of a batch, one process one mask for all
    # of it, and the runs would differ by that noise rather than by how the gradients are summed.
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    return root, data, backbone_dir


def _train(root, data, backbone, name: str, processes: int) -> tuple:
    env = {**os.environ, "ADAPLER_HOME": str(root / f"home-{name}"), "OMP_NUM_THREADS": "1"}
    args = ["-m", "adapler_export", "train", *TINY_TRAIN, "--data-dir", str(data), "--backbone", str(backbone),
            "--output", name]
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--standalone", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / f"home-{name}" / "checkpoints" / name, result


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tiny_setup):
    root, data, backbone = tiny_setup
    one, single = _train(root, data, backbone, "one", 1)
    two, double = _train(root, data, backbone, "two", 2)

    # Says how many trained, once: one log, one "written" line, from the main process only.
    assert "on 1 process (cpu)" in single.stderr
    assert "on 2 processes (cpu, gloo)" in double.stderr
    assert double.stderr.count("training sst2 on") == 1
    assert double.stdout.count("checkpoint written to") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())

    # Every weight, but those whose gradient is zero in exact arithmetic: a bias added to every logit of one
    # softmax (a CP's output bias, an attention key's bias) gets rounding noise that Adam scales to whole steps,
    # and it changes no output. Measured: 3.7e-9 after stage 1, 4e-6 after stage 3 (the step itself is pinned
    # by the gradient test below).
    for name in ("model.safetensors", "adapler_heads.safetensors"):
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys()
        for key in a:
            if not key.endswith(SOFTMAX_INVARIANT):
                torch.testing.assert_close(b[key], a[key], atol=WEIGHT_ATOL, rtol=0, msg=key)
    rec_a = json.loads((one / "adapler_config.json").read_text())
    rec_b = json.loads((two / "adapler_config.json").read_text())
    stage3_a, stage3_b = rec_a["training"]["stage3"], rec_b["training"]["stage3"]
    assert stage3_a["selected_epoch"] == stage3_b["selected_epoch"]
    for ha, hb in zip(stage3_a["history"], stage3_b["history"], strict=True):
        assert ha["steps"] == hb["steps"]  # the global batch, not half of it per process
        torch.testing.assert_close(torch.tensor(hb["eta"]), torch.tensor(ha["eta"]), atol=ETA_ATOL, rtol=0)
    assert rec_b["metrics"]["accuracy"] == rec_a["metrics"]["accuracy"]
    torch.testing.assert_close(torch.tensor(rec_b["metrics"]["kept_per_layer"]),
                               torch.tensor(rec_a["metrics"]["kept_per_layer"]), atol=0.05, rtol=0)


def test_two_processes_take_the_gradient_of_the_whole_batch(tmp_path):
    """One stage-3 step of an odd batch (7 rows: 3 + 4): the gradients two processes sum equal one process's,
    up to float summation order, relative to the largest gradient (gradients that are zero in exact arithmetic
    carry noise of ~1e-11 either way)."""
    script = Path(__file__).parent / "scripts" / "process_gradients.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in ([sys.executable, str(script), str(tmp_path / "one.pt")],
                    [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                     str(script), str(tmp_path / "two.pt")]):
        # check=True alone would hide why a process failed: the assertion carries its output's end.
        done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
        assert done.returncode == 0, \
            f"{command[1:4]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and {"eta", "theta"} <= one.keys()
    scale = max(float(g.abs().max()) for g in one.values())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6 * scale, msg=name)
    # Negative control: one process's half of the batch is not the whole batch's gradient.
    assert not torch.allclose(one["eta"] * 0.5, two["eta"], rtol=1e-3)


@pytest.mark.slow
def test_a_model_trained_apart_is_refused(tiny_setup, monkeypatch):
    """Negative control: without the gradient sum the two processes train two models, and training stops
    with one line saying so instead of writing either."""
    root, data, backbone = tiny_setup
    shim = root / "shim"
    shim.mkdir(exist_ok=True)
    # sitecustomize runs in every process torchrun starts: it switches the gradient sum off.
    (shim / "sitecustomize.py").write_text(
        "import training.common as c\nc.average_gradients = lambda *a, **k: None\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "ADAPLER_HOME": str(root / "home-apart"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "adapler_export", "train", *TINY_TRAIN, "--data-dir", str(data), "--backbone", str(backbone),
               "--output", "apart"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "training processes hold different models" in result.stderr
    assert not (root / "home-apart" / "checkpoints" / "apart").exists()
    shutil.rmtree(root / "home-apart", ignore_errors=True)
