"""The shared fixtures do what the README says: README command 1's `sst2` is found in the user's
$ADAPLER_HOME as it was when pytest started (not in the test run's own home), and a prerequisite missing under
CI=true fails instead of skipping."""
import json
import os
import subprocess
import sys
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def readme_like_checkpoint(home: Path, **changes) -> Path:
    """An `sst2` whose recorded training config is README command 1's (the fields readme_checkpoint reads)."""
    config = {"seed": 42, "task": "sst2"}
    for key, value in {**conftest.CI_TRAINING, **changes}.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = home / "checkpoints" / conftest.README_CHECKPOINT
    path.mkdir(parents=True)
    record = {"training": {"config": config}, "data": {"train": {"draws": [{"count": 4000, "seed": 42}]}}}
    (path / "adapler_config.json").write_text(json.dumps(record))
    return path


def conftest_in_a_fresh_python(home: Path, code: str) -> str:
    """Import conftest with ADAPLER_HOME=`home` (as a user's shell sets it), run `code`, return what it prints."""
    env = {**os.environ, "ADAPLER_HOME": str(home)}
    env.pop("CI", None)
    done = subprocess.run([sys.executable, "-c", f"import os, conftest\n{code}"], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_readme_checkpoint_is_looked_for_in_the_users_home_from_before_the_switch(tmp_path):
    user, run = tmp_path / "user-home", tmp_path / "run-home"
    expected = readme_like_checkpoint(user)
    # what the adapler_home fixture does before ci_checkpoint asks: ADAPLER_HOME now names the run's folder
    found = conftest_in_a_fresh_python(user, f"os.environ['ADAPLER_HOME'] = {str(run)!r}\n"
                                             "print(conftest.readme_checkpoint())")
    assert found == str(expected)


def test_readme_checkpoint_with_other_settings_is_not_reused(tmp_path):
    readme_like_checkpoint(tmp_path / "a", **{"stage3.phi": 0.001})
    assert conftest.readme_checkpoint(tmp_path / "a") is None
    readme_like_checkpoint(tmp_path / "b")
    assert conftest.readme_checkpoint(tmp_path / "b") == tmp_path / "b" / "checkpoints" / conftest.README_CHECKPOINT
    (tmp_path / "b" / "checkpoints" / conftest.README_CHECKPOINT / "adapler_config.json").write_text("{}")
    assert conftest.readme_checkpoint(tmp_path / "b") is None


def test_a_missing_prerequisite_skips_locally_and_fails_under_ci(tmp_path):
    test = tmp_path / "test_needs_data.py"
    test.write_text("from conftest import task_dir\n\ndef test_it():\n    task_dir('no-such-task')\n")
    for ci, outcome in (("", "1 skipped"), ("true", "1 failed")):
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                               "--rootdir", str(tmp_path), "--confcutdir", str(tmp_path), str(test)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert outcome in done.stdout, done.stdout[-2000:]
        assert "no-such-task data not found" in done.stdout


def test_every_mutant_of_the_mutation_check_still_applies():
    """tests/mutations.py (run by hand: minutes) mutates one line per rule; each line must still be there once,
    or the check would stop mutating anything."""
    import mutations

    assert len({m.path for m in mutations.MUTANTS}) >= 5
    for mutant in mutations.MUTANTS:
        text = (conftest.REPO / mutant.path).read_text(encoding="utf-8")
        assert text.count(mutant.old) == 1, f"{mutant.name}: update MUTANTS in tests/mutations.py"
        assert mutant.old != mutant.new
