"""The full static baseline, the library's ONNX Runtime chain on the bench exports, and smoke runs of the
bench scripts (the fast link itself is tested in tests/test_link.py).

Fast (well under a minute on 2 cores): the checkpoint is the offline MiniLM backbone with untrained
Contribution Predictors and eta = 0.9, which drops a good share of the tokens without any training.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sst2_dir

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def bench_ckpt(tmp_path_factory) -> Path:
    from adapler_export.checkpoint import AdapLeRConfig, Checkpoint, load_backbone, save_checkpoint
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    torch.manual_seed(0)
    backbone, tokenizer = load_backbone("minilm", 2)
    model = AdapLeRForSequenceClassification(backbone, eta_init=0.9).eval()
    config = AdapLeRConfig(backbone="minilm", num_layers=model.num_layers, hidden_size=model.config.hidden_size,
                           labels=["negative", "positive"], max_length=64)
    path = tmp_path_factory.mktemp("bench") / "ckpt"
    save_checkpoint(Checkpoint(model, tokenizer, config), path)
    return path


@pytest.fixture(scope="module")
def loaded(bench_ckpt):
    from adapler_export.checkpoint import load_checkpoint

    return load_checkpoint(bench_ckpt)


@pytest.fixture(scope="module")
def exports(loaded, tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    import common

    work = tmp_path_factory.mktemp("bench-work")
    return common.export_models(loaded, work, log=lambda m: None)


def sst2_texts(count: int) -> list:
    from adapler_export.data import load_dev

    return load_dev("sst2", sst2_dir()).texts[:count]


@pytest.mark.slow  # a MiniLM model and a benchmark script: minutes on 2 cores
def test_full_onnx_matches_forward_full(loaded, exports):
    from adapler_export.baseline import FullModelBackend, PyTorchFullBackend
    from adapler_export.evaluation import encode

    model = loaded.model
    backend = FullModelBackend(exports["full"], model.num_layers, device="cpu")
    ids, mask = encode(loaded.tokenizer, sst2_texts(12), 64)
    rng = np.random.default_rng(0)
    long_ids = rng.integers(1000, model.config.vocab_size, size=(2, 300)).astype(np.int32)
    long_mask = np.ones_like(long_ids)
    long_mask[1, 200:] = 0
    for i, m in ((ids, mask), (long_ids, long_mask)):
        want = model.forward_full(torch.from_numpy(i), torch.from_numpy(m)).detach().numpy()
        out = backend.run(i, m)
        assert np.abs(out.logits - want).max() <= 1e-4
        assert len(out.kept) == model.num_layers
        for kept in out.kept:  # no removal: every live position, in order, -1 padding
            np.testing.assert_array_equal(kept, np.where(m == 1, np.arange(m.shape[1])[None], -1))
        np.testing.assert_allclose(PyTorchFullBackend(model).run(i, m).logits, want, atol=1e-6)


@pytest.mark.slow
def test_onnxruntime_backend_matches_reference_when_dropping(loaded, exports):
    sys.path.insert(0, str(BENCH))
    import common

    from adapler_export.backends.pytorch import PyTorchBackend
    from adapler_export.evaluation import encode

    backend = common.onnxruntime_chain(loaded.model, exports["segments"], threads=None)
    reference = PyTorchBackend(loaded.model)
    texts = sst2_texts(24)
    dropped = 0
    for batch in (texts[:1], texts[1:2], texts[2:10], texts):
        ids, mask = encode(loaded.tokenizer, batch, 64)
        got, want = backend.run(ids, mask), reference.run(ids, mask)
        assert np.abs(got.logits - want.logits).max() <= 1e-4
        for g, w in zip(got.kept, want.kept):
            np.testing.assert_array_equal(g, w)
        dropped += int(mask.sum() - (got.kept[-1] >= 0).sum())
    assert dropped > 0, "the test checkpoint should drop tokens"


def is_fraction_of(value, count: int) -> bool:
    """`value` is k / `count` for a whole k in 0..count (an agreement or accuracy over `count` examples)."""
    return 0.0 <= value <= 1.0 and abs(value * count - round(value * count)) < 1e-9


REQUIRED = ("backend", "device", "batch", "workload", "wallclock_speedup", "flops_speedup", "adaptive_s", "full_s",
            "examples", "threads", "padded_flops_speedup", "adaptive_peak_rss_delta_mb", "full_peak_rss_delta_mb")


@pytest.mark.slow
def test_bench_cpu_quick_writes_results(bench_ckpt, loaded, exports, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(BENCH / "bench_cpu.py"), "--ckpt", str(bench_ckpt), "--quick", "--name", "t",
           "--output-dir", str(out), "--work-dir", str(exports["dir"].parent), "--batches", "1,2",
           "--long-examples", "2", "--sst2-examples", "8", "--threads", "1", "--data-dir", str(sst2_dir())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using cached exports" in proc.stdout
    result = json.loads((out / "t-bench.json").read_text())
    assert (out / "t-bench.png").stat().st_size > 0
    assert result["quick"] and result["machine"]["cpu_model"] and result["machine"]["versions"]["onnxruntime"]
    assert {(r["backend"], r["workload"], r["batch"]) for r in result["rows"]} == \
        {(b, w, n) for b in ("onnxruntime", "pytorch") for w in ("sst2-dev", "long-256-512") for n in (1, 2)}
    for row in result["rows"]:
        for key in REQUIRED:
            assert key in row, key
        assert row["device"] == "cpu" and row["wallclock_speedup"] > 0 and row["flops_speedup"] > 1.0
        assert is_fraction_of(row["adaptive_vs_full"]["label_agreement"], row["examples"]), row
        if row["backend"] == "onnxruntime":  # same kept tokens as the PyTorch reference, batch by batch
            assert row["adaptive_vs_pytorch_adaptive"]["kept_identical_fraction"] == 1.0
            assert row["adaptive_vs_pytorch_adaptive"]["max_abs_logit_diff"] <= 1e-4
    by_backend = {(r["backend"], r["workload"], r["batch"]): r["adaptive_vs_full"]["label_agreement"]
                  for r in result["rows"]}
    for (backend, workload, batch), agreement in by_backend.items():  # same kept tokens and logits: same labels
        assert agreement == by_backend[("pytorch", workload, batch)], (backend, workload, batch)
    long_rows = [r for r in result["rows"] if r["workload"] == "long-256-512"]
    assert all(256 <= r["mean_input_length"] <= 512 for r in long_rows)
    profile = result["profile_onnxruntime_batch1"]["sst2-dev"]
    assert profile["segments_ms"] > 0 and profile["explanation"]
    assert len(profile["per_link_ms"]) == loaded.config.num_layers


@pytest.mark.slow
def test_memory_probe_reports_a_peak(bench_ckpt, exports, tmp_path):
    sys.path.insert(0, str(BENCH))
    import bench_cpu

    batch = tmp_path / "b.npz"
    np.savez(batch, input_ids=np.full((2, 16), 1000, np.int32), attention_mask=np.ones((2, 16), np.int32))
    probe = bench_cpu.run_probe({"backend": "onnxruntime", "model": "adaptive", "ckpt": str(bench_ckpt), "threads": 1,
                                 "segments": [str(p) for p in exports["segments"]], "full": str(exports["full"]),
                                 "batch_file": str(batch)})
    assert probe["peak_rss_delta_mb"] >= 0 and probe["rss_after_load_mb"] > 0 and probe["shape"] == [2, 16]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would benchmark")
def test_bench_gpu_without_gpu_exits_with_a_message():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--quick"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr


@pytest.mark.slow
def test_bench_gpu_code_path_on_the_cpu(bench_ckpt, tmp_path):
    """bench_gpu.py's own code (the library's PyTorch segment backend and full model, the parity columns,
    the JSON) run on the CPU: what a GPU run does, minus the CUDA timers and memory probes."""
    out = tmp_path / "gpu"
    cmd = [sys.executable, str(BENCH / "bench_gpu.py"), "--cpu-smoke", "--quick", "--ckpt", str(bench_ckpt),
           "--precisions", "fp32", "--workloads", "sst2", "--batches", "1,4", "--sst2-examples", "8", "--link", "torch",
           "--name", "t", "--output-dir", str(out), "--data-dir", str(sst2_dir())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "t-bench-gpu.json").read_text())
    assert {r["batch"] for r in result["rows"]} == {1, 4} and result["link"]["implementation"] == "torch-reference"
    for row in result["rows"]:
        assert row["adaptive_vs_cpu_reference"]["kept_identical_fraction"] == 1.0
        assert row["adaptive_vs_cpu_reference"]["max_abs_logit_diff"] <= 1e-4
        assert row["flops_speedup"] > 1.0 and is_fraction_of(row["adaptive_accuracy"], row["examples"]), row


@pytest.mark.slow
def test_ort_variants_agree_bit_for_bit(bench_ckpt, exports, tmp_path):
    """ort_variants.py checks every variant of the library chain against the reference link before timing."""
    out = tmp_path / "variants.json"
    cmd = [sys.executable, str(BENCH / "ort_variants.py"), "--ckpt", str(bench_ckpt), "--examples", "6", "--batch", "2",
           "--repeats", "1", "--threads", "2", "--work-dir", str(exports["dir"].parent), "--data-dir", str(sst2_dir()),
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"reference", "fast-link", "fast-link+raw", "full", "threads=1", "full threads=1"}
    assert all(v["ms_per_example"] > 0 for v in variants.values())


@pytest.mark.slow
def test_graph_pairs_times_graphs_against_each_other(bench_ckpt, exports, tmp_path):
    """graph_pairs.py: whole-model graphs (here full.onnx under two names) on the same batches; a ratio
    names two --graph names; an unknown name is one line of error (exit 2)."""
    full = exports["full"]
    out = tmp_path / "pairs.json"
    cmd = [sys.executable, str(BENCH / "graph_pairs.py"), "--ckpt", str(bench_ckpt), "--graph", f"a={full}",
           "--graph", f"b={full}", "--ratio", "a/b", "--threads", "1", "--examples", "6", "--repeats", "2",
           "--warmup", "1", "--data-dir", str(sst2_dir()), "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["examples"] == 6 and set(row["ms_per_example"]) == {"a", "b"} and row["ratios"]["a/b"] > 0
    bad = subprocess.run(cmd[:-2] + ["--ratio", "a/c"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--ratio a/c: both must be --graph names" in bad.stderr


@pytest.mark.slow
def test_one_graph_ablation_splits_the_overhead(bench_ckpt, exports, tmp_path):
    """one_graph_ablation.py: the eight graphs timed in their sessions side by side; the ablations keep every live
    token (the script asserts it), the split adds up to the overhead at full length, and both CP forms are built
    (the product's distribution is one Softmax); a session count of 0 is one line of error (exit 2)."""
    out = tmp_path / "ablation.json"
    cmd = [sys.executable, str(BENCH / "one_graph_ablation.py"), "--ckpt", str(bench_ckpt), "--samples", "6",
           "--repeats", "1", "--sessions", "2", "--warmup", "1", "--data-dir", str(sst2_dir()),
           "--work-dir", str(exports["dir"].parent), "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["full int8", "full int8, plain", "one graph int8", "one graph int8, before",
                          "one graph int8, CP int8", "every token kept", "kept, CP logits only", "kept, no CP"]
    assert all(len(r["ms_per_example_by_session"]) == 2 and r["ms_per_example"] > 0 for r in rows.values())
    assert rows["one graph int8"]["flops_speedup"] > 1
    assert all("efficiency" in rows[name] for name in ("one graph int8, before", "one graph int8, CP int8"))
    assert "efficiency" not in rows["full int8, plain"]
    split = result["overhead_split"]
    assert split["cp_softmax_ms"] + split["cp_mlp_ms"] + split["links_and_plumbing_ms"] == \
        pytest.approx(split["total_at_full_length_ms"])
    assert 0 <= result["softmax_vs_weighted_labels"]["agree"] <= result["softmax_vs_weighted_labels"]["examples"] == 6
    bad_out = tmp_path / "bad.json"
    bad = subprocess.run(cmd[:-1] + [str(bad_out), "--sessions", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--sessions must be at least 1, got 0" in bad.stderr and not bad_out.exists()


@pytest.mark.slow
def test_accumulation_memory_measures_each_configuration_in_its_own_process(tmp_path):
    """accumulation_memory.py: one row per (stage, BxN) from the real stage code, every configuration stepping
    on the same number of examples; a malformed configuration is one line of error (exit 2)."""
    out = tmp_path / "memory"
    cmd = [sys.executable, str(BENCH / "accumulation_memory.py"), "--task", "sst2", "--data-dir", str(sst2_dir()),
           "--examples", "4", "--configs", "4x1,2x2", "--stages", "3", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["stage"], r["batch"], r["accumulation"]) for r in rows] == [(3, 4, 1), (3, 2, 2)]
    assert all(r["examples_per_step"] == 4 and r["peak_mb"] >= r["resident_before_mb"] > 0 for r in rows)
    bad = subprocess.run(cmd[:-2] + ["--configs", "8by4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'8by4' is not BATCHxACCUMULATION" in bad.stderr


@pytest.mark.slow
def test_truncation_finetunes_reads_each_runs_stage1_model_with_both_rules(tmp_path):
    """truncation_finetunes.py: a work directory's selected stage-1 epoch, evaluated on the dev reviews longer
    than 512 wordpieces under both rules; a directory without a finished stage 1 is one line of error."""
    from adapler_export.checkpoint import load_backbone
    from adapler_export.modeling_adapler import AdapLeRForSequenceClassification

    data = tmp_path / "imdb"
    data.mkdir()
    words = "a fine film with a story that drags until the end".split()
    long_review = " ".join(words * 70)  # ~770 wordpieces
    (data / "dev.tsv").write_text("sentence\tlabel\n" + f"{long_review}\t1\n{long_review} bad\t0\nshort one\t1\n")
    (data / "train.tsv").write_text("sentence\tlabel\nok\t1\n")
    work = tmp_path / "work" / "run"
    stage = work / "stage1-0123456789"
    (stage / "epoch_1").mkdir(parents=True)
    torch.manual_seed(0)
    backbone, _ = load_backbone("minilm", 2)
    torch.save(AdapLeRForSequenceClassification(backbone).state_dict(), stage / "epoch_1" / "model.pt")
    (stage / "done.json").write_text(json.dumps({"epoch": 1, "dev_accuracy": 0.5, "history": []}))
    out = tmp_path / "finetunes"
    cmd = [sys.executable, str(BENCH / "truncation_finetunes.py"), "--task", "imdb", "--data-dir", str(data),
           "--run", f"head={work}", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(out.with_suffix(".json").read_text())["runs"]["head"]
    assert run["long_examples"] == 2 and run["stage1_epoch"] == 2 and run["dev_examples"] == 3
    assert {"long_accuracy_read_head", "long_accuracy_read_head+tail"} <= run.keys()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run(cmd[:-4] + ["--run", f"head={empty}", "--output", str(out)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "expected one finished stage 1" in bad.stderr and "Traceback" not in bad.stderr
