"""The scripts in examples/ run end to end on a small sample of the shared photos."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED, require_shared

EXAMPLES = ROOT / "examples"


def _run(script: str, tmp_path: Path, per_class: int, *extra: str) -> str:
    require_shared()
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / script),
            "--shared",
            str(SHARED),
            "--per-class",
            str(per_class),
            "--cache-dir",
            str(tmp_path / "cache"),
            *extra,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_tested():
    tested = set(re.findall(r'_run\("(\w+\.py)"', Path(__file__).read_text()))
    assert tested == {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}


@pytest.mark.shared
@pytest.mark.slow
def test_photos_to_classifier(tmp_path):
    out = _run("photos_to_classifier.py", tmp_path, per_class=12)
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    predictions = re.findall(r"^(\S+\.jpg) \((\w[\w-]*)\): (\S+) (\d\.\d\d), ", out, re.M)
    assert len(predictions) == 4
    assert all(0 < float(p) <= 1 for *_, p in predictions)
    assert (tmp_path / "clothes.featx").is_file()


@pytest.mark.shared
@pytest.mark.slow
def test_custom_squeezenet(tmp_path):
    out = _run("custom_squeezenet.py", tmp_path, per_class=12)
    rows = dict(re.findall(r"^\s*(.+?)\s+(0\.\d+)\s+0\.\d+\s+\d+\s+[\d.]+$", out, re.M))
    assert set(rows) == {
        "MobileNetV2 (shared weights)",
        "SqueezeNet v1.1 (ImageNet)",
        "MobileNetV2 (random weights)",
        "raw pixels 16x16",
    }
    # Real ImageNet weights in a user's own model carry real information (6 classes).
    assert float(rows["SqueezeNet v1.1 (ImageNet)"]) > float(rows["raw pixels 16x16"]) + 0.1


@pytest.mark.shared
@pytest.mark.slow
def test_multiscale_tune(tmp_path):
    out = _run("multiscale_tune.py", tmp_path, per_class=12)
    assert len(re.findall(r"px avg tta=(none|flip) logreg", out)) == 8
    assert re.search(r"tuned 0\.\d+ vs baseline 0\.\d+ \(nested CV\)", out)
    chosen_160 = re.search(r"refitted on all photos: \{'input_size': 160,", out)
    maps = 1 if chosen_160 else 2  # the baseline's map, and the chosen sizes' if they differ
    assert re.search(rf"report: intel6-tune\.html, \d+ points, {maps} map\(s\)", out)
    page = (tmp_path / "intel6-tune.html").read_text()
    assert "featx-tuning" in page


@pytest.mark.shared
@pytest.mark.slow
def test_multiscale_tune_with_a_multi_size_winner(tmp_path):
    # Only three-size candidates: the winner, refitted and mapped, is a concatenation of
    # three sizes (3 x 1,280-d), the path that once crashed after the search.
    out = _run("multiscale_tune.py", tmp_path, 6, "--sizes", "160+224+288")
    assert len(re.findall(r"160\+224\+288px avg tta=(none|flip) logreg", out)) == 2
    assert "refitted on all photos: {'input_size': [160, 224, 288]," in out
    assert re.search(r"report: intel6-tune\.html, 36 points, 2 map\(s\)", out)
