"""Where outputs go and how they are written: the cache folders, atomic folders, digests.

Rules every command follows (one place, here):
- a bare name resolves under $ADAPLER_HOME (default ~/.cache/adapler); anything with a path separator or a
  leading "." is a path;
- an output is written in a hidden temporary folder beside its final place and renamed into place only
  when complete: a failure (or Ctrl-C / SIGTERM, which the CLI turns into an exception) leaves nothing;
- nothing the command did not create is ever deleted or replaced: an existing non-empty folder is
  replaced only if it is an earlier output of the same kind *and* the caller passed `force`; an output
  equal to, inside, or containing one of the command's inputs is refused;
- files and folders follow the user's umask (temporary folders are created 0700 by the OS; fixed here).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import AdaplerError

# What marks a folder as an earlier output of each kind (replaceable with --force).
OUTPUT_MARKERS = {
    "checkpoint": "adapler_config.json",
    "artifact": "manifest.json",
    "repository": ".adapler-triton-repository",
    "calibration report": "calibration.json",
}


def adapler_home() -> Path:
    return Path(os.environ.get("ADAPLER_HOME", Path.home() / ".cache" / "adapler")).expanduser()


def checkpoints_dir() -> Path:
    return adapler_home() / "checkpoints"


def artifacts_dir() -> Path:
    return adapler_home() / "artifacts"


def resolve_output_dir(name_or_path: str, kind: str = "checkpoints") -> Path:
    """A bare name goes under the cache; anything with a path separator (or starting with .) is a path."""
    name_or_path = str(name_or_path)
    if os.sep in name_or_path or name_or_path.startswith("."):
        return Path(name_or_path).expanduser().resolve()
    return adapler_home() / kind / name_or_path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a hidden temporary path beside `path`; it replaces `path` only if the block succeeds (write and
    validate there), and is removed on every way out."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(final: Path, kind: str, force: bool = False, inputs=()) -> None:
    """Refuse, with one line, any output place whose use could lose the user's files."""
    final = Path(final).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if _related(final, source):
            raise AdaplerError(f"output {final} overlaps the input {source}; choose another --output")
    if not final.exists():
        return
    if not final.is_dir():
        raise AdaplerError(f"output {final} exists and is not a folder; choose another --output")
    if not any(final.iterdir()):
        return
    marker = OUTPUT_MARKERS[kind]
    if not (final / marker).is_file():
        raise AdaplerError(f"output {final} is a non-empty folder that is not an adapler-export {kind}; "
                           f"refusing to replace it (choose another --output)")
    if not force:
        raise AdaplerError(f"{kind} {final} already exists; pass --force to replace it")


def check_output_file(path, force: bool = False, inputs=(), option: str = "--output") -> Path:
    """The resolved `path` of a single-file output, or one line saying why it may not be written there.

    Checked before any work: the folder must exist (nothing is created on a typo), an existing file is
    replaced only with `force` (a folder never is), and the output may not be, or lie inside, an input."""
    final = Path(path).expanduser().resolve()
    if not final.parent.is_dir():
        raise AdaplerError(f"{option} {path}: folder {final.parent} does not exist")
    if final.is_dir():
        raise AdaplerError(f"{option} {final} is a folder; name a file")
    for source in inputs:
        if source is not None and _related(final, Path(source).expanduser().resolve()):
            raise AdaplerError(f"{option} {final} overlaps the input {source}; choose another place")
    if final.exists() and not force:
        raise AdaplerError(f"{option} {final} already exists; pass --force to replace it")
    return final


class atomic_directory:  # noqa: N801 - used as a context manager, reads like a function
    """Yield a temporary folder beside `final`; rename it into place only on success.

    `kind`/`force`/`inputs` apply `check_output_dir` first (before any work is done by the caller if it
    calls `check_output_dir` itself earlier, which the CLI does). A replaced earlier output is removed
    only after the new one is in place.
    """

    def __init__(self, final, kind: str | None = None, force: bool = False, inputs=()):
        self.final = Path(final).expanduser().resolve()
        self.kind, self.force, self.inputs = kind, force, inputs
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.kind is not None:
            check_output_dir(self.final, self.kind, self.force, self.inputs)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: follow the umask instead
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.final.exists():
            if any(self.final.iterdir()) and self.kind is not None:
                check_output_dir(self.final, self.kind, self.force)  # still ours to replace?
            backup = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            self.final.rename(backup)
            self.tmp.rename(self.final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            self.tmp.rename(self.final)
        return False


# ----- the cache: what is there, and removing it ---------------------------------------------------------
CACHE_KINDS = {"checkpoints": "checkpoint", "artifacts": "artifact", "work": None}  # folder -> output kind


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def cache_entries() -> list:
    """(kind folder, name, path, bytes) of everything under $ADAPLER_HOME that adapler-export made."""
    home, entries = adapler_home(), []
    for folder in CACHE_KINDS:
        base = home / folder
        if base.is_dir():
            for path in sorted(p for p in base.iterdir() if p.is_dir()):
                entries.append((folder, path.name, path, folder_size(path)))
    return entries


def remove_cache_entries(folder: str, names=()) -> list:
    """Remove entries of one cache folder (all of them when `names` is empty); returns what was removed.
    Only folders adapler-export made are touched (a checkpoint/artifact needs its marker file)."""
    if folder not in CACHE_KINDS:
        raise AdaplerError(f"unknown cache folder {folder!r} (choose from {', '.join(CACHE_KINDS)})")
    present = {name: path for kind, name, path, _ in cache_entries() if kind == folder}
    unknown = [n for n in names if n not in present]
    if unknown:
        raise AdaplerError(f"no {folder} entry named {unknown[0]!r} under {adapler_home() / folder}")
    removed = []
    for name in names or sorted(present):
        path, kind = present[name], CACHE_KINDS[folder]
        if kind is not None and not (path / OUTPUT_MARKERS[kind]).is_file() and any(path.iterdir()):
            raise AdaplerError(f"{path} is not an adapler-export {kind}; not removing it")
        shutil.rmtree(path)
        removed.append(path)
    return removed
