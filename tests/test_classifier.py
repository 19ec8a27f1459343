"""Saved image classifiers: fit, save, load in a fresh process, predict top-k; refuse strangers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
from conftest import CLOTHING10, MOBILENET_WEIGHTS, ROOT, require_shared

from featx.classifier import (
    fit_classifier,
    load_classifier,
    predict_top_k,
    read_metadata,
    save_classifier,
)
from featx.cli import main

SMALL = {
    "backbone": "VGG16",
    "weights": None,
    "input_size": 32,
    "cache_dir": None,
    "verbose": False,
}


def _fresh_process(*args: str) -> subprocess.CompletedProcess:
    """Run the featx CLI in a new interpreter, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "featx.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture
def fitted(image_folder):
    return fit_classifier(image_folder, **SMALL)


def test_predicts_class_names_and_ranked_probabilities(fitted, image_folder):
    images = sorted(str(p) for p in image_folder.glob("*/*"))
    tops = predict_top_k(fitted, images, k=3)
    assert len(tops) == 12
    for top in tops:
        assert [name for name, _ in top] != [] and len(top) == 3
        assert {name for name, _ in top} == {"cat", "dog", "fish"}
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1.0) < 1e-6
    assert [top[0][0] for top in tops] == fitted.predict(images).tolist()


def test_saved_file_is_small_and_predicts_the_same_in_a_new_process(fitted, image_folder, tmp_path):
    path = tmp_path / "model.featx"
    save_classifier(fitted, path)
    assert path.stat().st_size < 5_000_000
    assert read_metadata(path)["classes"] == ["cat", "dog", "fish"]
    images = sorted(str(p) for p in image_folder.glob("*/*"))[:5]
    done = _fresh_process("predict", str(path), *images, "--top", "2", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["predictions"]
    expected = predict_top_k(fitted, images, k=2)
    assert [[t["class"] for t in row["top"]] for row in rows] == [
        [name for name, _ in top] for top in expected
    ]
    np.testing.assert_allclose(
        [[t["probability"] for t in row["top"]] for row in rows],
        [[p for _, p in top] for top in expected],
        atol=1e-5,
    )


class _Booby:
    """Unpickling this creates a file: the proof that nothing was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_without_featx_header_is_refused_before_unpickling(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    path = tmp_path / "stranger.joblib"
    joblib.dump(_Booby(str(marker)), path)
    with pytest.raises(ValueError, match="not a featx classifier file"):
        load_classifier(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert "trusted source" in capsys.readouterr().err
    assert not marker.exists()


def test_train_then_predict_from_the_command_line(image_folder, tmp_path, capsys):
    out = tmp_path / "m.featx"
    assert (
        main(
            [
                "train",
                str(image_folder),
                "--out",
                str(out),
                "--backbone",
                "VGG16",
                "--weights",
                "none",
                "--size",
                "32",
                "--cache-dir",
                "none",
                "--quiet",
                "--param",
                "C=10",
                "--json",
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert trained["classes"] == ["cat", "dog", "fish"]
    assert load_classifier(out).steps[-1][1].named_steps["clf"].C == 10
    image = str(next(image_folder.glob("dog/*")))
    assert main(["predict", str(out), image, "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_fit_needs_labels():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="needs labels"):
        fit_classifier(images, **SMALL)


def test_top_k_must_be_positive(fitted, image_folder):
    with pytest.raises(ValueError, match="k=0"):
        predict_top_k(fitted, [str(next(image_folder.glob("cat/*")))], k=0)


@pytest.mark.shared
def test_pretrained_classifier_file_predicts_in_a_new_process(tmp_path):
    """The shared MobileNetV2 + logreg, trained on part of clothing10's train split, saved
    (< 5 MB), reloaded in a fresh process, predicts held-out test photos."""
    require_shared()
    classes = ["hat", "pants", "shoes", "shorts"]
    train = [str(p) for c in classes for p in sorted((CLOTHING10 / "train" / c).glob("*.jpg"))[:40]]
    labels = [c for c in classes for _ in range(40)]
    test = [str(p) for c in classes for p in sorted((CLOTHING10 / "test" / c).glob("*.jpg"))[:8]]
    truth = [c for c in classes for _ in range(8)]
    model = fit_classifier(
        train,
        labels=labels,
        backbone="MobileNetV2",
        weights=MOBILENET_WEIGHTS,
        input_size=160,
        cache_dir=tmp_path / "cache",
        verbose=False,
    )
    path = tmp_path / "clothes.featx"
    save_classifier(model, path)
    assert path.stat().st_size < 5_000_000
    done = _fresh_process("predict", str(path), *test, "--top", "3", "--json")
    assert done.returncode == 0, done.stderr
    predicted = [row["top"][0]["class"] for row in json.loads(done.stdout)["predictions"]]
    assert predicted == model.predict(test).tolist()
    assert np.mean(np.array(predicted) == np.array(truth)) >= 0.8
