"""Task data the library needs: GLUE-style TSV folders, CSV files, HF `datasets` when a hub is reachable,
plain text files; the dev texts parity runs on.

Every loader returns `TaskData` (texts, the second texts of sentence pairs, integer labels per split) and
raises `AdaplerError` with the file and line on malformed input, so the CLI can print one clear line. Only
the splits asked for are read: a malformed train.tsv does not block a command that needs only dev.tsv.
`training/` (tokenised batches) and `calibration/` build on this module; it imports neither.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import AdaplerError
from .serving.tokenization import HEAD
from .storage import sha256_file

# Tasks we know: label names, the column that holds the text (and, for sentence-pair tasks, the column that
# holds the second text), the label column (default "label"), the training max length (wordpieces, [CLS]/[SEP]
# included) and how a longer text is cut to it (`truncation`, one of serving.tokenization.TRUNCATIONS: "head"
# or "head+tail"), the dev metrics `evaluate` reports besides accuracy, and where the hub keeps the same data.
TASKS = {
    "sst2": {"labels": ["negative", "positive"], "text_column": "sentence", "max_length": 64, "truncation": HEAD,
             "hf": ("glue", "sst2"), "splits": {"train": "train", "dev": "validation"}},
    # Long documents: reviews average 305 wordpieces, 14 % exceed 512 (BERT's position limit).
    # The hub's split has all 25,000 test reviews; ../shared/data/imdb/dev.tsv is a fixed 2,000 of them.
    # Truncation: "head"; "head+tail" (Sun et al. 2019, `train --truncation`) scored no better at inference on the
    # head-trained model (benchmarks/truncation_rules.py); a head+tail fine-tune is not measured yet.
    "imdb": {"labels": ["negative", "positive"], "text_column": "sentence", "hf_text_column": "text",
             "max_length": 512, "truncation": HEAD, "hf": ("stanfordnlp/imdb",),
             "splits": {"train": "train", "dev": "test"}},
    # Sentence pairs. GLUE's own files: MRPC starts with a byte-order mark and keeps its label in `Quality`.
    # MRPC pairs average 53 wordpieces ([CLS]/[SEP]/[SEP] included), p95 74, max 103: 128 truncates none.
    # The paper reports F1 of class 1 (paraphrase) beside accuracy.
    "mrpc": {"labels": ["not_equivalent", "equivalent"], "text_column": "#1 String", "pair_column": "#2 String",
             "label_column": "Quality", "hf_text_column": "sentence1", "hf_pair_column": "sentence2",
             "max_length": 128, "truncation": HEAD, "metrics": ["accuracy", "f1"], "hf": ("glue", "mrpc"),
             "splits": {"train": "train", "dev": "validation"}},
    # RTE pairs average 70 wordpieces, p95 157, max 289: 256 truncates 2 of the 2,490 training pairs, no dev pair
    # (128, the GLUE scripts' default, would cut 304 and 33).
    "rte": {"labels": ["entailment", "not_entailment"], "text_column": "sentence1", "pair_column": "sentence2",
            "max_length": 256, "truncation": HEAD, "hf": ("glue", "rte"),
            "splits": {"train": "train", "dev": "validation"}},
}
DEFAULT_MAX_LENGTH = 64
DEFAULT_TRUNCATION = HEAD
DEFAULT_METRICS = ("accuracy",)


def task_max_length(task: str) -> int:
    """The training max length a task is known to need (64 for unknown tasks, as for SST-2)."""
    return TASKS.get(task, {}).get("max_length", DEFAULT_MAX_LENGTH)


def task_truncation(task: str) -> str:
    """How the task's over-long texts are cut to its max length ("head" for unknown tasks)."""
    return TASKS.get(task, {}).get("truncation", DEFAULT_TRUNCATION)


def task_metrics(task: str) -> tuple:
    """The dev metrics a task reports: accuracy, and F1 of class 1 where the task's papers report it."""
    return tuple(TASKS.get(task, {}).get("metrics", DEFAULT_METRICS))


def task_reads_pairs(task: str) -> bool:
    """Whether the task's examples are sentence pairs (a second text column)."""
    return "pair_column" in TASKS.get(task, {})


SPLIT_FILES = {"train": "train", "dev": "dev"}


# The seed of `Split.subset` when a command takes `--samples` (its help says so: `samples_help`).
DEV_SUBSET_SEED = 0
# What `calibrate --split` chooses thresholds on: dev, or the training examples the checkpoint never trained on
# (`load_unseen_train`).
CALIBRATE_SPLITS = ("dev", "unseen-train")


@dataclass
class Split:
    texts: list  # the (first) text of each example
    labels: np.ndarray
    source: str = ""
    sha256: str = ""
    pairs: list | None = None  # sentence-pair tasks: the second text of each example; None: single texts
    # The (count, seed) of each `subset` that drew this split from its file, in order; () is the whole file. A
    # checkpoint records them (`record`), so the rows its training left out can be given back (`complement`).
    draws: tuple = ()

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, count: int | None, seed: int = DEV_SUBSET_SEED) -> "Split":
        """A deterministic random subset (the same seed always gives the same rows)."""
        if count is not None and count < 1:  # -N would slice off N rows from the end ("all but N")
            raise AdaplerError(f"cannot draw {count} examples: a subset needs at least 1")
        if count is None or count >= len(self):
            return self
        return replace(self._rows(self._subset_rows(count, seed)), draws=self.draws + ((count, seed),))

    def record(self) -> dict:
        """What a checkpoint records of a split it was trained or selected on (`data_record`)."""
        return {"source": self.source, "sha256": self.sha256, "examples": len(self),
                "draws": [{"count": count, "seed": seed} for count, seed in self.draws]}

    def complement(self, count: int | None, seed: int = DEV_SUBSET_SEED) -> "Split":
        """The rows `subset(count, seed)` leaves out, in file order, less those repeating an example it holds
        (the same text, and second text): a file's duplicates would otherwise let a subset's examples in."""
        if count is None or count >= len(self):
            return self._rows(np.zeros(0, dtype=np.int64))
        inside = self._subset_rows(count, seed)
        held = {self._example(i) for i in inside}
        return self._rows(np.array([i for i in np.setdiff1d(np.arange(len(self)), inside)
                                    if self._example(i) not in held], dtype=np.int64))

    def _example(self, row: int) -> tuple:
        return self.texts[row], None if self.pairs is None else self.pairs[row]

    def _subset_rows(self, count: int, seed: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).permutation(len(self))[:count])

    def _rows(self, rows: np.ndarray) -> "Split":
        pairs = None if self.pairs is None else [self.pairs[i] for i in rows]
        # `draws` starts empty here: `subset` adds its draw itself; what `complement` picks is not a draw a
        # record could replay, and no checkpoint records it.
        return Split([self.texts[i] for i in rows], self.labels[rows], self.source, self.sha256, pairs)


def samples_help(purpose: str) -> str:
    """The `--samples` help of every command that reads dev data (they all go through `Split.subset`)."""
    return f"dev examples {purpose}: a fixed random subset (seed {DEV_SUBSET_SEED}), not the first N (default: all)"


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


def not_utf8(path, exc: UnicodeDecodeError) -> AdaplerError:
    """The one-line error for a data or texts file that is not UTF-8."""
    return AdaplerError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})")


def _read_table(path: Path, spec: dict, label_names: list) -> Split:
    try:
        return _read_table_rows(path, spec, label_names)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None


def _read_table_rows(path: Path, spec: dict, label_names: list) -> Split:
    """The rows of a GLUE-style table: the task's text column (and pair column), labels as integers or names."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # GLUE TSVs contain unbalanced quotes: read with quoting disabled; CSV files use normal quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    text_column, pair_column = spec["text_column"], spec.get("pair_column")
    label_column = spec.get("label_column", "label")
    texts, pairs, labels = [], [], []
    # utf-8-sig: files saved by Windows tools (and GLUE's MRPC) start with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        wanted = f"'{text_column}'" + (f", '{pair_column}'" if pair_column else "") + f" and '{label_column}'"
        if header is None:
            raise AdaplerError(f"{path}: empty file (expected a header with {wanted})")
        header = [h.strip() for h in header]
        # A single-text task also takes the common names of a text column.
        text_col = next((c for c in ((text_column,) if pair_column else (text_column, "text", "sentence"))
                         if c in header), None)
        if text_col is None or label_column not in header or (pair_column and pair_column not in header):
            raise AdaplerError(f"{path}: header {header} lacks the columns {wanted}")
        ti, li = header.index(text_col), header.index(label_column)
        pi = header.index(pair_column) if pair_column else None
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
            if pi is not None:
                pairs.append(row[pi])
            labels.append(label)
    if not texts:
        raise AdaplerError(f"{path}: no examples")
    return Split(texts, np.asarray(labels, dtype=np.int64), str(path), sha256_file(path),
                 pairs if pair_column else None)


def load_folder(task: str, data_dir: Path, splits=tuple(SPLIT_FILES)) -> TaskData:
    spec = TASKS.get(task, {"labels": ["0", "1"], "text_column": "sentence"})
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AdaplerError(f"data folder {data_dir} does not exist")
    data = TaskData(task, list(spec["labels"]))
    for split in splits:
        stem = SPLIT_FILES[split]
        for suffix in (".tsv", ".csv"):
            path = data_dir / f"{stem}{suffix}"
            if path.is_file():
                data.splits[split] = _read_table(path, spec, data.labels)
                break
    missing = [s for s in splits if s not in data.splits]
    if missing:
        raise AdaplerError(f"data folder {data_dir} has no {' / '.join(f'{SPLIT_FILES[m]}.tsv' for m in missing)}"
                           " (GLUE layout: train.tsv and dev.tsv, or .csv)")
    return data


def load_hf_datasets(task: str, splits=tuple(SPLIT_FILES)) -> TaskData:  # pragma: no cover - needs a hub
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
    for split in splits:
        hf_split = spec["splits"][split]
        part = raw[hf_split]
        pairs = list(part[spec.get("hf_pair_column", spec["pair_column"])]) if "pair_column" in spec else None
        data.splits[split] = Split(list(part[spec.get("hf_text_column", spec["text_column"])]),
                                   np.asarray(part["label"], dtype=np.int64), f"hf:{'/'.join(spec['hf'])}:{hf_split}",
                                   pairs=pairs)
    return data


def load_task(task: str, data_dir: str | Path | None = None, splits=tuple(SPLIT_FILES)) -> TaskData:
    """The task's splits (`splits`: which ones to read; the others are not opened)."""
    splits = tuple(splits)
    unknown = [s for s in splits if s not in SPLIT_FILES]
    if unknown:
        raise AdaplerError(f"unknown split {unknown[0]!r} (have {', '.join(SPLIT_FILES)})")
    if data_dir is not None:
        return load_folder(task, Path(data_dir), splits)
    if task not in TASKS:
        raise AdaplerError(f"unknown task {task!r}: pass --data-dir with train/dev files (known: {sorted(TASKS)})")
    found = default_data_dir(task)
    if found is not None:
        return load_folder(task, found, splits)
    return load_hf_datasets(task, splits)


def load_dev(task: str, data_dir: str | Path | None = None, samples: int | None = None) -> Split:
    """The dev split alone (evaluate, build, verify, calibrate), optionally a deterministic subset."""
    return load_task(task, data_dir, splits=("dev",))["dev"].subset(samples)


def data_record(data: TaskData, stage3_train_examples: int) -> dict:
    """What a checkpoint records of the data it was trained on (`AdapLeRConfig.data`): each split's file, its
    sha256, how many examples and how they were drawn from it (`Split.record`)."""
    return {**{split: data[split].record() for split in ("train", "dev")},
            "stage3_train_examples": stage3_train_examples}


def load_unseen_train(task: str, data_dir: str | Path | None, data_record: dict, training: dict,
                      samples: int | None = None) -> Split:
    """The training examples a checkpoint never trained on (`calibrate --split unseen-train`): the rows of the
    train file outside the subset its training drew (`Split.complement` of the draw its data record holds),
    optionally a deterministic subset of them. `data_record` and `training` are the checkpoint's
    `AdapLeRConfig.data` and `.training`. The train file must be the one it was trained on (same sha256):
    another file's rows outside that subset could be rows it trained on."""
    recorded = (data_record or {}).get("train") or {}
    draws = recorded.get("draws")
    if draws is None:
        draws = _draws_before_the_record_held_them(training)
    if "sha256" not in recorded or draws is None:
        raise AdaplerError("the checkpoint does not record which training examples it was trained on: "
                           "calibrate on dev (--split dev)")
    if len(draws) > 1:
        raise AdaplerError("the checkpoint's training examples were drawn in several steps, which calibrate "
                           "cannot undo: calibrate on dev (--split dev)")
    train = load_task(task, data_dir, splits=("train",))["train"]
    if train.sha256 != recorded["sha256"]:
        raise AdaplerError(f"{train.source} is not the train file the checkpoint was trained on (sha256 "
                           f"{train.sha256[:12]}…, recorded {recorded['sha256'][:12]}…): its unseen examples "
                           "cannot be told apart")
    unseen = train.complement(**draws[0]) if draws else train.complement(None)  # no draw: it trained on all
    if len(unseen) == 0:
        raise AdaplerError(f"the checkpoint was trained on every example of {train.source}: none is unseen; "
                           "calibrate on dev (--split dev)")
    return unseen.subset(samples)


def _draws_before_the_record_held_them(training: dict) -> list | None:
    """Checkpoints written before `data_record` held `draws` (2026-11-28): `training` drew its train subset
    with `Split.subset(max_train_samples, seed)`, both in the options it recorded (`AdapLeRConfig.training`'s
    "config"); None where it recorded no such options (an assembled checkpoint records a sentence there)."""
    settings = (training or {}).get("config")
    if not isinstance(settings, dict) or "seed" not in settings:
        return None
    count = settings.get("max_train_samples")
    return [] if count is None else [{"count": count, "seed": settings["seed"]}]


def parity_texts(task: str, data_dir: str | Path | None, samples: int | None) -> tuple:
    """(texts, pairs) a build or verify checks parity on: the dev texts, and for a sentence-pair task their
    second texts (else None)."""
    dev = load_dev(task, data_dir, samples)
    return list(dev.texts), None if dev.pairs is None else list(dev.pairs)


def default_texts_file(task: str = "sst2") -> Path | None:
    """The task's dev file (for servers and load tests that need example texts), if present."""
    folder = default_data_dir(task)
    path = folder / "dev.tsv" if folder else None
    return path if path is not None and path.is_file() else None


STDIN = "-"  # a texts file named "-" is standard input (`predict --file -`)
UTF8_BOM = b"\xef\xbb\xbf"
UNIVERSAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")  # one line, its end kept


class _TextSource:
    """A texts file (or standard input, `STDIN`) read lazily, one physical line at a time, as UTF-8 (a byte-order
    mark skipped). Opened when made, so a missing file is an error before any work; a line that is not UTF-8 is
    the one-line `not_utf8` error (with its byte offset in the file) when reading reaches it."""

    def __init__(self, path):
        self.stdin = str(path) == STDIN
        self.name = "standard input" if self.stdin else str(path)
        self.suffix = "" if self.stdin else Path(path).suffix
        if not self.stdin and not Path(path).is_file():
            raise AdaplerError(f"texts file {path} not found")
        if self.stdin:  # a replaced sys.stdin (a test's) may have no byte stream: its lines, as UTF-8
            self.handle = getattr(sys.stdin, "buffer", None) or (line.encode("utf-8", "surrogatepass")
                                                                 for line in sys.stdin)
        else:
            self.handle = open(path, "rb")  # noqa: SIM115 (closed by close())
        self.offset = 0  # bytes read so far: where a decoding error is

    def lines(self):
        """The decoded lines, line ends kept, cut where a file opened with `newline=""` cuts them (at "\\n",
        "\\r\\n" and "\\r": what `csv` expects)."""
        for number, raw in enumerate(self.handle):
            if number == 0 and raw.startswith(UTF8_BOM):
                raw, self.offset = raw[len(UTF8_BOM):], len(UTF8_BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                exc.start += self.offset
                raise not_utf8(self.name, exc) from None
            self.offset += len(raw)
            yield from UNIVERSAL_LINE.findall(text) if "\r" in text else (text,)

    def close(self) -> None:
        if not self.stdin:
            self.handle.close()


def _plain_lines(source: _TextSource):
    """One text a line, cut exactly as `str.splitlines` cuts the whole file (so `\\r\\n`, `\\r` and the other
    line boundaries end a text too, and a final newline makes no extra text), one physical line at a time."""
    for line in source.lines():
        yield from line.splitlines()


def _single_texts(source: _TextSource, column: str):
    """Texts from a GLUE `.tsv` (header with `column`; quoting disabled) or a plain file (one text a line).
    Blank lines of a plain file are kept as empty texts (the classifier flags them), so line N of the input is
    result N."""
    if source.suffix != ".tsv":
        yield from _plain_lines(source)
        return
    reader = csv.reader(source.lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None) or []
    if column not in header:
        raise AdaplerError(f"{source.name}: no {column!r} column in header {header}")
    col = header.index(column)
    yield from (row[col] for row in reader if len(row) > col)


# The two text columns of the sentence-pair tasks' own files (GLUE's MRPC: `#1 String`, `#2 String`; RTE: `sentence1`,
# `sentence2`): a `.tsv` of pairs whose header names them is read as such a table.
PAIR_COLUMNS = tuple((spec["text_column"], spec["pair_column"]) for spec in TASKS.values() if "pair_column" in spec)


def _pair_table_columns(first_line: str) -> tuple | None:
    """(first, second) column indices where `first_line` is a header naming a pair task's two text columns;
    else None."""
    header = [cell.strip() for cell in first_line.rstrip("\r\n").split("\t")]
    for first, second in PAIR_COLUMNS:
        if first in header and second in header:
            return header.index(first), header.index(second)
    return None


def _text_pairs(source: _TextSource):
    """(text, pair) from a plain file with one sentence pair a line, the two texts separated by a tab (the first
    tab of the line; no header). Line N of the input is result N.

    A `.tsv` whose first line is a header naming a sentence-pair task's two text columns (`PAIR_COLUMNS`: GLUE's
    own MRPC or RTE file, e.g. ../shared/data/mrpc/dev.tsv) gives those two columns of its rows instead, read as
    `load_task` reads them (quoting disabled, blank rows skipped)."""
    lines = source.lines()
    first_line = next(lines, None)
    if first_line is None:
        return
    columns = _pair_table_columns(first_line) if source.suffix.lower() == ".tsv" else None
    if columns is None:
        source_lines = itertools.chain([first_line], lines)
        for number, line in enumerate((text for line in source_lines for text in line.splitlines()), start=1):
            text, tab, pair = line.partition("\t")
            if not tab:
                raise AdaplerError(f"{source.name}:{number}: expected two texts separated by a tab (a sentence "
                                   "pair)")
            yield text, pair
        return
    for number, row in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE), start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(columns):
            raise AdaplerError(f"{source.name}:{number}: expected at least {max(columns) + 1} fields, got {len(row)}")
        yield row[columns[0]], row[columns[1]]


def iter_inputs(path, text_pair: bool, column: str = "sentence"):
    """The examples of a texts file, lazily, as (text, pair) (pair None for a single-text model): the one rule
    for every command that classifies a file. A sentence-pair model reads `_text_pairs` (one pair a line,
    tab-separated, or a pair task's GLUE table), any other model `_single_texts` (one text a line, or a GLUE
    `.tsv`'s `column`). `path` "-" (`STDIN`) is standard input, read as a plain file.

    Read as the examples are asked for: a file of any size takes the memory of one line. A missing file is an
    error at once; a line that is not UTF-8, a malformed row or a file with no text at all is an error when
    reading reaches it (after the examples before it were given)."""
    source = _TextSource(path)
    examples = _text_pairs(source) if text_pair else ((text, None) for text in _single_texts(source, column))
    return _closing_nonempty(examples, source)


def _closing_nonempty(examples, source: _TextSource):
    try:
        seen = False
        for example in examples:
            seen = True
            yield example
        if not seen:
            raise AdaplerError(f"{source.name}: no texts")
    finally:
        source.close()


def read_texts(path, limit: int | None = None, column: str = "sentence") -> list:
    """The texts of a texts file (`iter_inputs` for a single-text model), the first `limit` where given."""
    examples = iter_inputs(path, False, column)
    with contextlib.closing(examples):
        return [text for text, _ in itertools.islice(examples, limit or None)]


def read_text_pairs(path, limit: int | None = None) -> tuple:
    """(texts, pairs) of a file of sentence pairs (`iter_inputs` for a sentence-pair model), the first `limit`
    where given."""
    examples = iter_inputs(path, True)
    with contextlib.closing(examples):
        rows = list(itertools.islice(examples, limit or None))
    return [text for text, _ in rows], [pair for _, pair in rows]


def read_inputs(path, text_pair: bool, limit: int | None = None) -> tuple:
    """(texts, pairs) of a texts file, all in memory (`iter_inputs` lazily): pairs None for a single-text model."""
    if text_pair:
        return read_text_pairs(path, limit)
    return read_texts(path, limit), None


def iter_text_inputs(texts, pairs, file, text_pair: bool, subject: str = "this artifact"):
    """(text, pair) to classify, lazily (pair None for a single-text model): `texts` (given as arguments), each
    with its `pairs` entry (`--pair`) for a sentence-pair model, then `file`'s (`iter_inputs`; "-": standard
    input). The arguments are checked at once; `subject` names the model in the errors."""
    texts, pairs = list(texts), list(pairs or [])
    if text_pair and len(pairs) != len(texts):
        raise AdaplerError(f"{subject} classifies sentence pairs: {len(texts)} texts need {len(texts)} --pair "
                           f"texts, got {len(pairs)}")
    if not text_pair and pairs:
        raise AdaplerError(f"{subject} classifies single texts: --pair is for sentence-pair artifacts")
    given = zip(texts, pairs) if text_pair else ((text, None) for text in texts)
    return itertools.chain(given, iter_inputs(file, text_pair)) if file else iter(given)


def text_inputs(texts, pairs, file, text_pair: bool, subject: str = "this artifact") -> tuple:
    """(texts, pairs) of `iter_text_inputs`, all in memory; pairs is None for a single-text model."""
    examples = list(iter_text_inputs(texts, pairs, file, text_pair, subject))
    texts = [text for text, _ in examples]
    return texts, [pair for _, pair in examples] if text_pair else None
