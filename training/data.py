"""Task data: GLUE-style TSV folders, CSV files, and Hugging Face `datasets` when a hub is reachable.

Every loader returns `TaskData` (texts + integer labels per split) and raises `AdaplerError` with the
file and line on malformed input, so the CLI can print one clear line.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapler_export.errors import AdaplerError

# Tasks we know: label names and the column that holds the text.
TASKS = {
    "sst2": {"labels": ["negative", "positive"], "text_column": "sentence", "hf": ("glue", "sst2"),
             "splits": {"train": "train", "dev": "validation"}},
}
SPLIT_FILES = {"train": "train", "dev": "dev"}


@dataclass
class Split:
    texts: list
    labels: np.ndarray
    source: str = ""
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, count: int | None, seed: int = 0) -> "Split":
        """A deterministic random subset (the same seed always gives the same rows)."""
        if count is None or count >= len(self):
            return self
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        order.sort()
        return Split([self.texts[i] for i in order], self.labels[order], self.source, self.sha256)


@dataclass
class TaskData:
    task: str
    labels: list
    splits: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]


def default_data_dir(task: str) -> Path | None:
    """$ADAPLER_DATA_DIR/<task>, else the workplace's ../shared/data/<task> beside the repository."""
    env = os.environ.get("ADAPLER_DATA_DIR")
    candidates = [Path(env) / task] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates.append(repo.parent / "shared" / "data" / task)
    return next((c for c in candidates if c.is_dir()), None)


def _read_table(path: Path, text_column: str, label_names: list) -> Split:
    from adapler_export.checkpoint import sha256_file

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # GLUE TSVs contain unbalanced quotes: read with quoting disabled; CSV files use normal quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise AdaplerError(f"{path}: empty file (expected a header with '{text_column}' and 'label')")
        header = [h.strip() for h in header]
        text_col = next((c for c in (text_column, "text", "sentence") if c in header), None)
        if text_col is None or "label" not in header:
            raise AdaplerError(f"{path}: header {header} lacks a text column ('{text_column}' or 'text') "
                               "and a 'label' column")
        ti, li = header.index(text_col), header.index("label")
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise AdaplerError(f"{path}:{line_no}: expected {len(header)} fields, got {len(row)}")
            raw = row[li].strip()
            try:
                label = int(raw)
            except ValueError:
                if raw not in label_names:
                    raise AdaplerError(f"{path}:{line_no}: label {raw!r} is neither an integer nor one of "
                                       f"{label_names}") from None
                label = label_names.index(raw)
            if not 0 <= label < len(label_names):
                raise AdaplerError(f"{path}:{line_no}: label {label} outside 0..{len(label_names) - 1}")
            texts.append(row[ti])
            labels.append(label)
    if not texts:
        raise AdaplerError(f"{path}: no examples")
    return Split(texts, np.asarray(labels, dtype=np.int64), str(path), sha256_file(path))


def load_folder(task: str, data_dir: Path) -> TaskData:
    spec = TASKS.get(task, {"labels": ["0", "1"], "text_column": "sentence"})
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AdaplerError(f"data folder {data_dir} does not exist")
    data = TaskData(task, list(spec["labels"]))
    for split, stem in SPLIT_FILES.items():
        for suffix in (".tsv", ".csv"):
            path = data_dir / f"{stem}{suffix}"
            if path.is_file():
                data.splits[split] = _read_table(path, spec["text_column"], data.labels)
                break
    missing = [s for s in SPLIT_FILES if s not in data.splits]
    if missing:
        raise AdaplerError(f"data folder {data_dir} has no {' / '.join(f'{SPLIT_FILES[m]}.tsv' for m in missing)}"
                           " (GLUE layout: train.tsv and dev.tsv, or .csv)")
    return data


def load_hf_datasets(task: str) -> TaskData:  # pragma: no cover - needs a hub
    try:
        import datasets
    except ImportError as exc:
        raise AdaplerError("no --data-dir given and the `datasets` package is not installed") from exc
    spec = TASKS[task]
    try:
        raw = datasets.load_dataset(*spec["hf"])
    except Exception as exc:  # network errors come in many types
        raise AdaplerError(f"could not load {spec['hf']} from the hub: {exc}") from exc
    data = TaskData(task, list(spec["labels"]))
    for split, hf_split in spec["splits"].items():
        part = raw[hf_split]
        data.splits[split] = Split(list(part[spec["text_column"]]), np.asarray(part["label"], dtype=np.int64),
                                   f"hf:{'/'.join(spec['hf'])}:{hf_split}")
    return data


def load_task(task: str, data_dir: str | Path | None = None) -> TaskData:
    if data_dir is not None:
        return load_folder(task, Path(data_dir))
    if task not in TASKS:
        raise AdaplerError(f"unknown task {task!r}: pass --data-dir with train/dev files (known: {sorted(TASKS)})")
    found = default_data_dir(task)
    if found is not None:
        return load_folder(task, found)
    return load_hf_datasets(task)


# ----- tokenisation and batching ------------------------------------------------------------------------
class EncodedDataset(torch.utils.data.Dataset):
    """Pre-tokenised examples (unpadded); `collate` pads each batch to its own longest row."""

    def __init__(self, tokenizer, split: Split, max_length: int, saliency: list | None = None):
        encoded = tokenizer(list(split.texts), truncation=True, max_length=max_length)
        self.input_ids = encoded["input_ids"]
        self.labels = split.labels
        self.saliency = saliency
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index):
        item = {"input_ids": self.input_ids[index], "label": int(self.labels[index]), "index": index}
        if self.saliency is not None:
            item["saliency"] = self.saliency[index]
        return item

    def collate(self, items):
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[row, : len(it["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([it["label"] for it in items]),
                 "index": torch.tensor([it["index"] for it in items])}
        if self.saliency is not None:
            sal = torch.zeros((len(items), longest), dtype=torch.float32)
            for row, it in enumerate(items):
                sal[row, : len(it["saliency"])] = torch.as_tensor(it["saliency"])
            batch["saliency"] = sal
        return batch

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)  # deterministic data order for a given seed
        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           collate_fn=self.collate)
