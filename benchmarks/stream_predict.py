"""`adapler-export predict --file` on many texts against the one graph alone, in one run (issue 27).

1. The texts: SST-2's training sentences (`train.tsv`, in file order), repeated to `--texts` lines, written to a
   plain file (one text a line) in a temporary folder.
2. The one graph alone (`onnxruntime-graph` backend, `--threads`): the same texts (the first `--graph-texts`
   of them) tokenized beforehand (not timed), `backend.run` timed on batches of `--batch-size`, twice: in file order (each batch padded to its
   longest text) and sorted by length over the whole input (the least padding any batching can reach: the
   bar the streaming command is held to). The sorted pass runs again after the command, to see drift on a
   shared machine.
3. `adapler-export predict --artifact A --file FILE --json --batch-size B --threads T > /dev/null` under
   `/usr/bin/time -v`: wall time, texts per second (start-up, reading, tokenisation, JSON included) and peak
   resident memory.

Writes `docs/results/stream-predict.json` (`--output`). Run on a quiet machine:

    python benchmarks/stream_predict.py --artifact sst2-small-fp32 --texts 100000 --threads 1
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS_DIR, machine_info, write_json  # noqa: E402

TIME = "/usr/bin/time"


def texts_file(data_dir: Path, count: int, folder: Path) -> Path:
    """SST-2's training sentences, repeated to `count` lines."""
    from adapler_export.data import read_texts

    sentences = read_texts(data_dir / "train.tsv")
    path = folder / f"sst2-train-x{count}.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            handle.write(sentences[index % len(sentences)] + "\n")
    return path


def time_graph(backend, rows, batch_size: int, pad_token_id: int, max_length: int, order) -> dict:
    """`backend.run` alone on batches of `batch_size` rows taken in `order`: texts per second, padded tokens."""
    from adapler_export.serving.tokenization import Rows, pad_rows

    seconds, cpu_seconds, padded = 0.0, 0.0, 0
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = Rows([rows.ids[i] for i in chosen], None, [None] * len(chosen), [False] * len(chosen),
                     [False] * len(chosen))
        encoded = pad_rows(batch, max_length, pad_token_id)
        padded += encoded.input_ids.size
        began, began_cpu = time.perf_counter(), time.process_time()
        backend.run(*encoded.model_inputs())
        seconds += time.perf_counter() - began
        cpu_seconds += time.process_time() - began_cpu
    return {"texts": len(order), "seconds": round(seconds, 3), "texts_per_second": round(len(order) / seconds, 1),
            "cpu_seconds": round(cpu_seconds, 3), "texts_per_cpu_second": round(len(order) / cpu_seconds, 1),
            "padded_tokens": padded}


def run_predict(artifact: str, path: Path, batch_size: int, threads: int) -> dict:
    """The command under /usr/bin/time -v, its standard output thrown away: wall time and peak memory."""
    command = ["adapler-export", "predict", "--artifact", artifact, "--file", str(path), "--json",
               "--batch-size", str(batch_size), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ADAPLER_PROGRESS": "0"}
    with open(os.devnull, "w") as devnull:
        result = subprocess.run([TIME, "-v", *command], stdout=devnull, stderr=subprocess.PIPE, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"predict failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report = result.stderr
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", report).group(1)
    seconds = sum(float(part) * 60 ** power for power, part in enumerate(reversed(wall.split(":"))))
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    user = float(re.search(r"User time \(seconds\): (\S+)", report).group(1))
    system = float(re.search(r"System time \(seconds\): (\S+)", report).group(1))
    warnings = sum(1 for line in report.splitlines() if line.startswith("warning:"))
    return {"command": " ".join(command) + " > /dev/null", "wall_seconds": round(seconds, 2),
            "cpu_seconds": round(user + system, 2), "peak_rss_mb": round(peak_kb / 1024, 1),
            "warnings_on_stderr": warnings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="an fp32 artifact (name under $ADAPLER_HOME or path)")
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--graph-texts", type=int, help="texts for each pass of the graph alone (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--output", default=str(RESULTS_DIR / "stream-predict.json"))
    parser.add_argument("--note", default="", help="what a reader must know about this run (kept in the JSON)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from adapler_export.artifact import open_artifact
    from adapler_export.backends import load_backend
    from adapler_export.serving.tokenization import encode_rows, load_tokenizer, pad_id

    artifact_dir, manifest = open_artifact(args.artifact)
    with tempfile.TemporaryDirectory(prefix="stream-predict-") as folder:
        path = texts_file(Path(args.data_dir), args.texts, Path(folder))
        texts = path.read_text(encoding="utf-8").splitlines()[:args.graph_texts]
        tokenizer = load_tokenizer(artifact_dir / "tokenizer")
        rows = encode_rows(tokenizer, texts, manifest.max_length, truncation=manifest.truncation)
        lengths = np.array([len(ids) for ids in rows.ids])
        del texts
        backend = load_backend(artifact_dir, "onnxruntime-graph", threads=args.threads)
        file_order = list(range(len(rows.ids)))
        by_length = sorted(file_order, key=lambda i: lengths[i])
        pad = pad_id(tokenizer)
        time_graph(backend, rows, args.batch_size, pad, manifest.max_length, by_length[:2000])  # warm-up
        load_before = os.getloadavg()
        graph_sorted = time_graph(backend, rows, args.batch_size, pad, manifest.max_length, by_length)
        graph_file_order = time_graph(backend, rows, args.batch_size, pad, manifest.max_length, file_order)
        backend.close()
        predict = run_predict(str(artifact_dir), path, args.batch_size, args.threads)
        predict["texts_per_second"] = round(args.texts / predict["wall_seconds"], 1)
        predict["texts_per_cpu_second"] = round(args.texts / predict["cpu_seconds"], 1)
        backend = load_backend(artifact_dir, "onnxruntime-graph", threads=args.threads)
        graph_sorted_after = time_graph(backend, rows, args.batch_size, pad, manifest.max_length, by_length)
        load_after = os.getloadavg()
    bar = statistics.mean([graph_sorted["texts_per_second"], graph_sorted_after["texts_per_second"]])
    result = {
        "what": "adapler-export predict --file (streaming: lazy read, batches of about one length within a window, "
                "results in input order) against the one graph alone at the same batch size, in one run",
        "artifact": {"path": str(artifact_dir), "precision": manifest.precision, "task": manifest.task,
                     "max_length": manifest.max_length},
        "input": {"texts": args.texts, "source": f"{args.data_dir}/train.tsv sentences in file order, repeated"},
        "graph_alone_input": {"texts": len(lengths), "which": "the input's first texts",
                              "mean_wordpieces": round(float(lengths.mean()), 2), "max_wordpieces": int(lengths.max()),
                              "truncated": int(sum(rows.truncated)), "empty": int(sum(rows.empty))},
        "batch_size": args.batch_size, "threads": args.threads,
        "graph_alone": {"sorted_by_length": graph_sorted, "file_order": graph_file_order,
                        "sorted_by_length_after_predict": graph_sorted_after},
        "predict": predict,
        "ratio_predict_to_graph_sorted": round(predict["texts_per_second"] / bar, 3),
        "ratio_predict_to_graph_file_order": round(predict["texts_per_second"]
                                                   / graph_file_order["texts_per_second"], 3),
        "targets": {"peak_rss_mb_at_most": 1536, "ratio_at_least": 0.7},
        "note": args.note,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "machine": machine_info(),
    }
    write_json(Path(args.output), result)
    print(f"graph alone, batch {args.batch_size}, {args.threads} thread(s): sorted by length "
          f"{graph_sorted['texts_per_second']} / {graph_sorted_after['texts_per_second']} texts/s (before / after), "
          f"file order {graph_file_order['texts_per_second']} texts/s")
    print(f"predict --file --json: {args.texts} texts in {predict['wall_seconds']} s = {predict['texts_per_second']} "
          f"texts/s, peak RSS {predict['peak_rss_mb']} MB; {result['ratio_predict_to_graph_sorted']}x the sorted "
          f"graph, {result['ratio_predict_to_graph_file_order']}x the file-order graph")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
