"""Issue 10: never lose a user's files, one-line errors, clean exits, results on stdout (tiny real model)."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapler_export.cli import main

from conftest import sst2_dir

CLI = [sys.executable, "-m", "adapler_export.cli"]


def run_cli(*args, home, cwd=None, umask=None, timeout=600):
    env = {**os.environ, "ADAPLER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, preexec_fn=preexec)


def one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("adapler-export: error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]


def build_args(ckpt, out, *extra):
    return ["build", "--ckpt", str(ckpt), "--output", str(out), "--samples", "8", "--data-dir", str(sst2_dir()),
            *extra]


# ----- 1. data loss ----------------------------------------------------------------------------------------------
def test_build_never_replaces_a_users_folder(tiny_checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert main(build_args(tiny_checkpoint, notes)) == 2
    assert "not an adapler-export artifact" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine" and len(list(notes.iterdir())) == 1
    assert main(build_args(tiny_checkpoint, notes, "--force")) == 2, "--force never replaces a non-artifact"
    assert (notes / "todo.txt").read_text() == "mine"


def test_build_refuses_the_current_folder_and_its_own_checkpoint(tiny_checkpoint, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    one_line_error(run_cli(*build_args(tiny_checkpoint, "."), home=tmp_path, cwd=work), "refusing to replace")
    assert (work / "keep.txt").exists()
    before = sorted(p.name for p in Path(tiny_checkpoint).iterdir())
    for out in (tiny_checkpoint, Path(tiny_checkpoint) / "inside"):
        assert main(build_args(tiny_checkpoint, out, "--force")) == 2
    assert sorted(p.name for p in Path(tiny_checkpoint).iterdir()) == before


def test_rebuilding_an_artifact_needs_force(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(build_args(tiny_checkpoint, out)) == 0
    assert main(build_args(tiny_checkpoint, out)) == 2
    assert "pass --force" in capsys.readouterr().err
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(build_args(tiny_checkpoint, out, "--force")) == 0
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert not list(tmp_path.glob(".art.*")), "no temporary or backup folder left"


def test_train_refuses_a_users_folder_before_any_work(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    result = run_cli("train", "--data-dir", sst2_dir(), "--output", notes, home=tmp_path)
    one_line_error(result, "refusing to replace")
    assert (notes / "a.txt").read_text() == "mine"
    assert not (tmp_path / "work").exists(), "refused before any training work (no clock: the work folder says it)"


# ----- 2. one line instead of a traceback -------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["model.safetensors", "adapler_heads.safetensors"])
def test_truncated_checkpoint_weights(tiny_checkpoint, tmp_path, victim):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    data = (broken / victim).read_bytes()
    (broken / victim).write_bytes(data[: len(data) // 2])
    one_line_error(run_cli("evaluate", "--ckpt", broken, "--samples", "4", "--data-dir", sst2_dir(), home=tmp_path),
                   "is unreadable")


def test_invalid_manifest_json(tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    (art / "manifest.json").write_text("{ not json")
    one_line_error(run_cli("verify", "--artifact", art, home=tmp_path), "manifest.json is not valid JSON")


def test_artifacts_resolve_by_name_under_the_cache(tiny_artifact, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_artifact, home / "artifacts" / "tiny")
    result = run_cli("verify", "--artifact", "tiny", "--samples", "4", "--data-dir", sst2_dir(), home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    one_line_error(run_cli("verify", "--artifact", "nothing-here", home=home), "no artifact at")


# ----- 5. SIGTERM cleans up ------------------------------------------------------------------------------------------
def test_sigterm_during_build_leaves_nothing(tiny_checkpoint, tmp_path):
    env = {**os.environ, "ADAPLER_HOME": str(tmp_path)}
    out = tmp_path / "art"
    proc = subprocess.Popen([*CLI, *build_args(tiny_checkpoint, out)[:-4], "--data-dir", str(sst2_dir())],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".art.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".art*")), "no half-written or hidden folder left"


# ----- 6. results on stdout, diagnostics on stderr -------------------------------------------------------------
def test_build_stdout_is_the_result_alone(tiny_checkpoint, tmp_path):
    result = run_cli(*build_args(tiny_checkpoint, tmp_path / "art"), home=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"artifact: {tmp_path / 'art'}"]
    assert "\r" not in result.stderr, "no progress-bar frames when stderr is not a terminal"
    assert "[W]" not in result.stdout + result.stderr


# ----- 7. a malformed train.tsv does not block commands that need only dev ---------------------------------------
def test_malformed_train_split_does_not_block_build_or_evaluate(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\nbroken\trow\twith\textra\n")
    shutil.copy(sst2_dir() / "dev.tsv", data / "dev.tsv")
    assert main(["evaluate", "--ckpt", str(tiny_checkpoint), "--samples", "8", "--data-dir", str(data)]) == 0
    assert main(["build", "--ckpt", str(tiny_checkpoint), "--output", str(tmp_path / "a"), "--samples", "8",
                 "--data-dir", str(data)]) == 0
    assert main(["train", "--data-dir", str(data), "--output", str(tmp_path / "c")]) == 2
    assert "train.tsv:2" in capsys.readouterr().err


# ----- 8. outputs follow the umask ---------------------------------------------------------------------------------
def test_outputs_follow_the_umask(tiny_checkpoint, tmp_path):
    out = tmp_path / "art"
    result = run_cli(*build_args(tiny_checkpoint, out), home=tmp_path, umask=0o022)
    assert result.returncode == 0, result.stderr[-2000:]
    for path in [out, out / "onnx", out / "manifest.json", out / "onnx" / "segment_00.onnx"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path} is {oct(mode)}: others cannot read it"


# ----- the cache ---------------------------------------------------------------------------------------------------
def test_cache_list_and_clean(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADAPLER_HOME", str(tmp_path))
    (tmp_path / "work" / "run-1").mkdir(parents=True)
    (tmp_path / "work" / "run-1" / "stage1.bin").write_bytes(b"x" * 2_000_000)
    (tmp_path / "artifacts" / "stray").mkdir(parents=True)
    (tmp_path / "artifacts" / "stray" / "notes.txt").write_text("not ours")
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "run-1" in listing and "2.0 MB" in listing
    assert main(["cache", "clean"]) == 0
    assert not (tmp_path / "work" / "run-1").exists()
    assert main(["cache", "clean", "artifacts", "stray"]) == 2
    assert (tmp_path / "artifacts" / "stray" / "notes.txt").exists()
