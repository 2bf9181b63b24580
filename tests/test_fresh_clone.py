"""A fresh clone: the README's `python -m pytest` passes with no ../shared beside it, and what the README's
examples write inside the clone stays out of git."""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_shared_data_tests_skip_cleanly_without_the_folder(tmp_path):
    """The shared_data tests run with the folder hidden: the whole suite still collects, and each one skips."""
    hidden, report = tmp_path / "no-shared-data", tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(REPO), str(REPO / "tests"),
               "-m", "shared_data", f"--junitxml={report}",
               # its own temporary folder: a numbered one would make pytest prune the oldest of the user's others,
               # which may be a suite still running beside this one (its working folders vanish mid-test)
               f"--basetemp={tmp_path / 'basetemp'}"]
    run = subprocess.run(command, cwd=REPO, env={**os.environ, "RAIN_SHARED_DATA": str(hidden)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # 2 if any test file failed to collect
    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "skipped", "failures", "errors")}
    assert counts["tests"] >= 10 and counts["skipped"] == counts["tests"], counts  # every one of them skipped
    assert counts["failures"] == counts["errors"] == 0, counts
    assert re.search(r"\d+ deselected", run.stdout), run.stdout  # -m ran over the whole collected suite
    reasons = {skip.get("message") for skip in suite.iter("skipped")}
    assert reasons == {f"no shared data at {hidden} (../shared/data beside the clone, or set RAIN_SHARED_DATA)"}


def readme_output_paths() -> list[str]:
    """Folders the README's examples write into, relative to the clone (placeholders like RUN left out)."""
    readme = (REPO / "README.md").read_text()
    outs = re.findall(r"--out ([a-z][\w./-]*)", readme)
    data = re.findall(r"--data (data/[\w-]+)(?=[\s`])", readme)  # prepared folders, not the data/*.toml configs
    exports = re.findall(r"rain export \S+ ([a-z][\w./-]*)", readme)
    return sorted(set(outs + data + exports + ["runs/demo"]))  # runs/demo: `rain demo`'s default --out


def ignored_by_patterns(paths: list[str]) -> set[str]:
    # --no-index: judge .gitignore's patterns alone; otherwise git reports every tracked file as not ignored.
    run = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(paths),
                         capture_output=True, text=True)
    assert run.returncode in (0, 1), run.stderr
    return set(run.stdout.splitlines())


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_readme_outputs_are_ignored_and_tracked_files_are_not():
    outputs = readme_output_paths()
    assert {"data/mine", "runs/mine", "out/my-model"} <= set(outputs), outputs
    inside = [f"{folder}/manifest.json" for folder in outputs]
    assert ignored_by_patterns(inside) == set(inside)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "data/rain-v2.toml" in tracked
    assert ignored_by_patterns(tracked) == set()
