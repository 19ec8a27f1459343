"""Docs are tests: the README's code runs, its commands are the ones CI runs, ruff is clean."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_demo_and_test_commands():
    first = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first[0].endswith("featx demo")
    assert "pytest" in first[1]


def test_ci_runs_exactly_the_readme_test_command():
    test_command = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


@pytest.mark.parametrize("code", _blocks("python"), ids=lambda c: c.splitlines()[-1][:40])
def test_readme_python_runs(code, tmp_path, monkeypatch):
    """Each block holds its own assertions (what a reader is told to expect)."""
    assert "assert " in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})


def test_cache_folder_has_its_readme():
    assert "index.sqlite" in (ROOT / "cache" / "README.md").read_text()


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    done = subprocess.run(
        ["ruff", *command, "featx", "tests", "benchmarks", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


def test_readme_commands_leave_the_checkout_clean():
    """What the README's featx commands write in the checkout (--out, --png, ...) is ignored
    by git, so following them leaves `git status` clean."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split()
            if not words or words[0] != "featx":
                continue
            for option, value in itertools.pairwise(words):
                if option in ("--out", "--png", "--svg", "--csv") and not value.isupper():
                    written.append(value)
                    if words[1] == "export":  # the class names travel beside the model
                        written.append(value + ".json")
    assert "intel6.png" in written  # the report's figure, as the README writes it
    relative = [path for path in written if not path.startswith(("/", ".."))]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *relative], cwd=ROOT, capture_output=True, text=True
    )
    assert sorted(done.stdout.split()) == sorted(relative)
