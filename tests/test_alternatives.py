"""benchmarks/alternatives.py: every alternative beside AdapLeR in one run. The Pareto front and the attention-pruning
rule on hand-made inputs, and the script end to end on the tiny checkpoint with tiny sizes (seconds; timings of a
smoke run mean nothing, only the structure of the output is checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sst2_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "alternatives.py"
sys.path.insert(0, str(SCRIPT.parent))
import alternatives  # noqa: E402


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(0.90, 2.0),  # 0: the most accurate
              (0.85, 1.0),  # 1: faster, less accurate: on the front
              (0.85, 1.5),  # 2: as accurate as 1 and slower: beaten
              (0.80, 1.0),  # 3: as fast as 1 and less accurate: beaten
              (0.70, 0.4),  # 4: the fastest
              (0.95, 3.0),  # 5: slowest but the most accurate of all
              (0.70, 0.4)]  # 6: the same point as 4: neither beats the other
    assert alternatives.pareto_front(points) == [0, 1, 4, 5, 6]
    assert alternatives.pareto_front([(0.5, 1.0)]) == [0]
    assert alternatives.pareto_front([]) == []


def test_timed_subset_spreads_over_the_length_order():
    order = np.arange(100)[::-1]
    assert alternatives.timed_subset(order, None) is order and alternatives.timed_subset(order, 100) is order
    subset = alternatives.timed_subset(order, 5)
    assert subset.tolist() == [99, 74, 49, 25, 0]  # evenly spread, first and last included, order kept


def test_matching_ratios_reproduce_the_kept_fractions():
    # Link 0 keeps everything (nothing to rank by before the first layer); link k keeps the share of what enters it.
    assert alternatives.matching_ratios([0.8, 0.4, 0.1]) == [1.0, 0.4, 0.25]
    assert alternatives.matching_ratios([1.0, 1.0]) == [1.0, 1.0]
    assert alternatives.matching_ratios([0.5, 0.6]) == [1.0, 0.6]  # never above 1 (fractions only fall)
    assert alternatives.matching_ratios([0.5, 0.2, 0.3]) == [1.0, 0.2, 1.0]


def test_attention_keep_flags_keep_the_most_attended_tokens():
    # One head, 5 slots, the last one padding. Every live query attends by the same row of weights.
    received = torch.tensor([0.05, 0.4, 0.1, 0.45, 0.0])
    probs = received.expand(1, 1, 5, 5).clone()
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.int32)
    flags = alternatives.attention_keep_flags(probs, mask, 0.5)  # round(0.5 * 4) = 2 tokens: [CLS] + slot 3
    assert flags.tolist() == [[1.0, 0.0, 0.0, 1.0, 0.0]]
    flags = alternatives.attention_keep_flags(probs, mask, 0.75)  # 3 tokens: [CLS], slots 3 and 1
    assert flags.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0]]
    flags = alternatives.attention_keep_flags(probs, mask, 0.01)  # at least one: [CLS]
    assert flags.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    flags = alternatives.attention_keep_flags(probs, mask, 1.0)  # every live token, never the padding
    assert flags.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]


def run_script(args: list, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPLER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)


def test_alternatives_end_to_end_on_the_tiny_checkpoint(tiny_checkpoint, tmp_path):
    out, home, work = tmp_path / "out", tmp_path / "home", tmp_path / "work"
    common_args = ["--ckpt", str(tiny_checkpoint), "--data-dir", str(sst2_dir()), "--examples", "12",
                   "--batches", "1,4", "--threads", "1", "--repeats", "1", "--warmup", "1", "--shallow-init",
                   "checkpoint", "--shallow-epochs", "1", "--shallow-train-samples", "16", "--shallow-eval-samples",
                   "8", "--work-dir", str(work), "--output-dir", str(out)]
    proc = run_script(common_args + ["--shallow-layers", "1,2", "--scales", "1,1.5,2", "--truncations", "16,8",
                                     "--static-calib-samples", "8", "--timed-examples", "8", "--name", "t"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "t.json").read_text())
    assert (out / "t.png").stat().st_size > 0
    assert "| full fp32 |" in (out / "t.md").read_text() and "| full fp32 |" in proc.stdout

    rows = {r["model"]: r for r in result["rows"]}
    expected = {"full fp32", "full int8 dynamic", "full int8 (product)", "full int8 static", "full ort-optimized", "full, max length=16",
                "full, max length=8", "shallow 1 layers", "shallow 2 layers",
                *(f"AdapLeR s={s} {form}" for s in ("1", "1.5", "2") for form in ("fp32", "int8")),
                "AdapLeR s=1 int8 quantize_dynamic", "AdapLeR s=1 int8 static", *(f"attention pruning (s={s} counts)" for s in ("1", "1.5", "2"))}
    assert set(rows) == expected
    panels = ["threads=1,batch=1", "threads=1,batch=4"]
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and set(row["accuracy_by_batch"]) == {"1", "4"}
        assert row["family"] in alternatives.FAMILIES and row["flops_speedup"] > 0
        for key in ("ms_per_example", "vs_full_fp32", "vs_full_int8", "on_pareto_front"):
            assert set(row[key]) == set(panels), (row["model"], key)
        assert all(v > 0 for v in row["ms_per_example"].values())
    for panel in panels:
        assert rows["full fp32"]["vs_full_fp32"][panel] == 1.0
        assert rows["full int8 dynamic"]["vs_full_int8"][panel] == 1.0
        # The front marked in the rows is the one pareto_front computes from the rows' numbers.
        names = list(rows)
        points = [(alternatives.panel_accuracy(rows[n], panel), rows[n]["ms_per_example"][panel]) for n in names]
        want = {names[i] for i in alternatives.pareto_front(points)}
        assert {n for n in names if rows[n]["on_pareto_front"][panel]} == want
        assert set(result["summary"][panel]["pareto_front"]) == want
        assert "meets_target" in result["summary"][panel]
    # What each family's FLOPs mean: no saving for the full forms, L / N for the shallow models, > 1 when cut.
    for name in ("full fp32", "full int8 dynamic", "full ort-optimized"):
        assert rows[name]["flops_speedup"] == 1.0
    assert rows["shallow 1 layers"]["flops_speedup"] == pytest.approx(3.0)
    assert rows["full, max length=8"]["flops_speedup"] > rows["full, max length=16"]["flops_speedup"] > 1.0
    # Attention pruning runs layer 0 on every token and matches the AdapLeR point's counts after it (rounded).
    pruning, point = rows["attention pruning (s=1 counts)"], rows["AdapLeR s=1 fp32"]
    assert pruning["matches"] == "AdapLeR s=1 fp32"
    assert pruning["kept_per_layer"][0] == pytest.approx(result["workloads"]["main"]["mean_length"])
    assert np.all(np.diff(pruning["kept_per_layer"]) <= 0) and pruning["kept_per_layer"][-1] >= 1.0
    assert point["flops_speedup"] > 1.0 and len(point["kept_per_layer"]) == 3
    assert result["settings"]["order"] and result["machine"]["versions"]["onnxruntime"]
    assert result["complete"] and result["settings"]["accuracy_examples"] == 12
    assert result["settings"]["timed_examples"] == 8

    # A rerun finds the fine-tuned shallow model in $ADAPLER_HOME/work instead of training it again.
    again = run_script(common_args + ["--shallow-layers", "1", "--scales", "1", "--skip",
                                      "int8,optimized,truncation,attention-pruning", "--no-plot", "--name", "u",
                                      "--accuracy-batches", "4"], home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "shallow 1 layers: cached" in again.stdout
    rerun = json.loads((out / "u.json").read_text())
    assert {r["model"] for r in rerun["rows"]} == {"full fp32", "shallow 1 layers", "AdapLeR s=1 fp32"}
    # One accuracy pass (batch 4, what a long-document run asks for); both panels are still timed and plot it.
    assert rerun["settings"]["accuracy_batches"] == [4]
    for row in rerun["rows"]:
        assert set(row["accuracy_by_batch"]) == {"4"} and row["accuracy"] == row["accuracy_by_batch"]["4"]
        assert set(row["ms_per_example"]) == set(panels)
        assert alternatives.panel_accuracy(row, "threads=1,batch=1") == row["accuracy"]


def test_bad_options_are_refused_in_one_line(tiny_checkpoint, tmp_path):
    proc = run_script(["--ckpt", str(tiny_checkpoint), "--skip", "everything"], tmp_path)
    assert proc.returncode == 2 and "--skip: unknown everything" in proc.stderr
    proc = run_script(["--ckpt", str(tiny_checkpoint), "--batches", "1,4", "--accuracy-batches", "8"], tmp_path)
    assert proc.returncode == 2 and "--accuracy-batches: [8] must be among --batches [1, 4]" in proc.stderr
