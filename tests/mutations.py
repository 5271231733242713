"""Mutation check of the test suite: break one rule at a time and show that the fast tests notice.

Each mutant below changes one line of one source file (the link rule, the chain, a tolerance, the manifest
reader, the INT8 path) in a temporary copy of the repository (`git archive` of a commit, never the shared
working tree), runs a fixed fast subset of the tests there, and must make at least one of them fail. The
unmutated copy must pass the same subset first, or the check proves nothing. In the style of
tests/test_plugin_build.py's BREAKAGES.

    python tests/mutations.py [--commit REV] [--output docs/results/mutations.txt] [--only NAME ...]

Exit status 0 when every mutant was caught, 1 when one survived (or the unmutated copy failed), 2 on bad
use. Run by hand (minutes on 2 cores), not by pytest: every mutant is a full pytest run.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ADAPLER_DATA_DIR") or REPO.parent / "shared" / "data")

# Fast tests (about a minute on 2 cores) that between them exercise every mutated rule.
SUBSET = ["tests/test_link.py", "tests/test_model.py", "tests/test_contract.py", "tests/test_int8.py",
          "tests/test_one_graph.py", "tests/test_calibration.py", "tests/test_schedule.py", "tests/test_training.py",
          "tests/test_export.py"]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # occurs exactly once in the file
    new: str
    why: str  # what the mutant breaks, in words


MUTANTS = [
    Mutant("link-tie-dropped", "adapler_export/link.py",
           "keep = live & (np.asarray(scores).astype(np.float32) >= delta)",
           "keep = live & (np.asarray(scores).astype(np.float32) > delta)",
           "the link rule (NumPy reference): a score exactly at delta is dropped instead of kept"),
    Mutant("chain-etas-reversed", "adapler_export/chain.py",
           "link(outputs[hidden_output(spec)], outputs[SCORES], mask, positions, etas[k])",
           "link(outputs[hidden_output(spec)], outputs[SCORES], mask, positions, etas[len(etas) - 1 - k])",
           "the chain: link k applies the threshold of link L-1-k"),
    Mutant("tolerance-fp32-flips-allowed", "adapler_export/tolerances.py",
           "return cls(max_abs_logit=1e-3, mean_abs_logit=1e-4, max_flip_rate=0.0, min_label_agreement=0.995)",
           "return cls(max_abs_logit=1e-3, mean_abs_logit=1e-4, max_flip_rate=0.01, min_label_agreement=0.995)",
           "a tolerance: fp32 parity lets 1 % of the keep decisions flip (the table says fp32 keeps every one)"),
    Mutant("parity-labels-point-rule", "adapler_export/parity.py",
           "    if report.label_agreement_bound < t.min_label_agreement:",
           "    if report.label_agreement < t.min_label_agreement:",
           "the parity label rule: a sample's point rate is judged instead of its confidence bound"),
    Mutant("manifest-digests-unchecked", "adapler_export/artifact.py",
           "        if sha256_file(path) != digest:",
           "        if False:",
           "the manifest reader: a file whose sha256 differs from the manifest's record is accepted"),
    Mutant("int8-cp-path-quantized", "calibration/int8.py",
           "        if node.name in cp_path:",
           "        if False:",
           "the INT8 path (static QDQ): the CP scoring MatMuls (the keep decisions) are quantized, not kept fp32"),
    Mutant("int8-dynamic-cp-path-quantized", "adapler_export/quantization.py",
           "for n in weights if n in cp_path and keep_cp_fp32}",
           "for n in weights if False}",
           "the INT8 path (dynamic, the default): the CP scoring MatMuls are quantized, not kept fp32"),
    Mutant("speed-target-ignored", "training/stage3_adapler.py",
           "backward(scale * (ce + cfg.phi * length + multiplier * fraction), inputs=[model.eta, cls_weights])",
           "backward(scale * (ce + cfg.phi * length), inputs=[model.eta, cls_weights])",
           "stage 3's speed target: eta's loss never gains the multiplier's term, so a short run stays near 1x"),
    Mutant("short-run-official-start", "training/pipeline.py",
           'cfg.stage3_init = "finetuned" if short else "pretrained"',
           'cfg.stage3_init = "pretrained"',
           "the short-run recipe: a stage 3 on little data restarts from the pre-trained backbone"),
    Mutant("set-point-as-floor", "training/stage3_adapler.py",
           'return weight * (shortfall if mode == "set-point" else max(0.0, shortfall))',
           "return weight * max(0.0, shortfall)",
           "the set point: past the target the multiplier stays 0, so phi pushes the model beyond it"),
    Mutant("finetuned-start-official-rate", "training/stage3_adapler.py",
           "return dataclasses.replace(self, lr=FINETUNED_START_LR, cp_lr=self.cp_lr or OFFICIAL_STAGE3_LR)",
           "return dataclasses.replace(self, lr=OFFICIAL_STAGE3_LR)",
           "the fine-tuned start's backbone rate: it trains at the official 3e-5, which drifted on 10,000 sentences"),
]


def export_tree(commit: str, target: Path) -> None:
    """The files of `commit` (tracked content only: no caches, no build outputs) under `target`."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutations.py: {mutant.name}: the line to mutate occurs {text.count(mutant.old)} times in "
                         f"{mutant.path} (expected once); update MUTANTS")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def run_subset(root: Path, subset: list) -> tuple:
    """(exit status, failed test ids, seconds, imported package file) of pytest on `subset` inside `root`."""
    env = {**os.environ, "PYTHONPATH": str(root), "ADAPLER_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1",
           "ADAPLER_HOME": str(root / ".adapler_home")}
    env.pop("CI", None)
    where = subprocess.run([sys.executable, "-c", "import adapler_export, calibration; "
                            "print(adapler_export.__file__); print(calibration.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(root.resolve()) for p in where):
        raise SystemExit(f"mutations.py: the copy imports {where}, not its own packages: nothing would be mutated")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           "-o", "addopts=", *subset], cwd=root, env=env, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)))
    return done.returncode, failed, time.monotonic() - started, where[0], done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default="HEAD", help="the commit to copy (default HEAD)")
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MUTANTS], help="these mutants only")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", args.commit], cwd=REPO, capture_output=True, text=True)
    if commit.returncode != 0:
        print(f"mutations.py: error: --commit {args.commit}: not a commit of {REPO}", file=sys.stderr)
        return 2
    commit = commit.stdout.strip()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    lines = [f"Mutation check of the test suite (tests/mutations.py), commit {commit[:12]}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}",
             f"subset: pytest -m 'not slow' {' '.join(SUBSET)}", ""]

    def say(line=""):
        lines.append(line)
        print(line, flush=True)

    for line in lines[:2]:
        print(line, flush=True)
    survived = 0
    with tempfile.TemporaryDirectory(prefix="adapler-mutations-") as scratch:
        base = Path(scratch) / "unmutated"
        export_tree(commit, base)
        rc, failed, seconds, imported, out = run_subset(base, SUBSET)
        summary = out.strip().splitlines()[-1] if out.strip() else ""
        say(f"unmutated: exit {rc} in {seconds:.0f} s ({summary}); imports {Path(imported).parent}")
        if rc != 0:
            say(f"  the unmutated copy fails ({', '.join(failed)}): the check proves nothing; fix that first")
            survived += 1
        for mutant in mutants:
            root = Path(scratch) / mutant.name
            export_tree(commit, root)
            apply(mutant, root)
            rc, failed, seconds, _, out = run_subset(root, SUBSET)
            caught = rc != 0 and failed
            survived += not caught
            say(f"{mutant.name}: {'CAUGHT' if caught else 'SURVIVED'} ({len(failed)} failed, {seconds:.0f} s) - "
                f"{mutant.why}")
            say(f"  {mutant.path}: {mutant.old.strip()}  ->  {mutant.new.strip()}")
            for test in failed[:8]:
                say(f"  failed: {test}")
            if len(failed) > 8:
                say(f"  ... and {len(failed) - 8} more")
    say("")
    say(f"every one of the {len(mutants)} mutants was caught" if survived == 0
        else f"{survived} of the {len(mutants)} mutants survived (or the unmutated copy failed)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if survived == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
