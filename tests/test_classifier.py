"""Saved image classifiers: fit, save, load in a fresh process, predict top-k; refuse strangers."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import CLOTHING10, MOBILENET_WEIGHTS, ROOT, require_shared
from sklearn.base import BaseEstimator, ClassifierMixin

from featx.augment import Crop, Flip
from featx.classifier import (
    MAGIC,
    fit_classifier,
    iter_predictions,
    load_classifier,
    predict_top_k,
    read_metadata,
    save_classifier,
)
from featx.cli import main
from featx.heads import HEADS, make_head
from featx.images import DecodeError

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


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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
    *rows, summary = _json_lines(done.stdout)
    assert summary["images"] == len(rows) == 5
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


class Tripwire(BaseEstimator, ClassifierMixin):
    """A head whose building from a file creates a marker file: a type outside featx's
    allowlist that must not be built unless the caller trusts it."""

    def __init__(self, marker: str = "") -> None:
        self.marker = marker

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        self.__dict__.update(state)


TRIPWIRE = f"{__name__}.Tripwire"


def _format_1_file(path, payload_object) -> None:
    """A classifier file as featx wrote it before format 2: header 1, metadata, a pickle."""
    with open(path, "wb") as f:
        f.write(b"FEATX-CLASSIFIER 1\n" + json.dumps({"classes": ["a"]}).encode() + b"\n")
        joblib.dump(payload_object, f)


def test_a_file_without_featx_header_is_refused_before_unpickling(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    path = tmp_path / "stranger.joblib"
    joblib.dump(_Booby(str(marker)), path)
    with pytest.raises(ValueError, match="not a featx classifier file"):
        load_classifier(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert "lacks featx's header" in capsys.readouterr().err
    assert not marker.exists()


def test_a_format_1_pickle_loads_only_when_trusted(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    path = tmp_path / "old.featx"
    _format_1_file(path, _Booby(str(marker)))
    assert read_metadata(path) == {"classes": ["a"]}
    with pytest.raises(ValueError, match=r"format 1.*trust_pickle=True"):
        load_classifier(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()
    load_classifier(path, trust_pickle=True)  # the caller's word: the pickle runs
    assert marker.exists()


def test_a_pickle_behind_the_format_2_header_is_refused_unbuilt(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "forged.featx"
    with open(path, "wb") as f:
        f.write(MAGIC + b"{}\n")
        joblib.dump(_Booby(str(marker)), f)
    with pytest.raises(ValueError, match="damaged or not in skops' format"):
        load_classifier(path)
    assert not marker.exists()


def test_a_type_outside_the_allowlist_is_refused_by_name_until_trusted(tmp_path, capsys):
    marker = tmp_path / "built"
    head = Tripwire(str(marker)).fit(np.zeros((4, 2)), ["a", "b", "a", "b"])
    path = tmp_path / "custom.featx"
    with pytest.raises(TypeError, match=rf"\({re.escape(TRIPWIRE)}\) outside featx.s allowlist"):
        save_classifier(head, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    save_classifier(head, path, trusted=[TRIPWIRE])
    assert read_metadata(path)["trusted"] == [TRIPWIRE]
    with pytest.raises(ValueError, match=f"1 type\\(s\\) \\({TRIPWIRE}\\).*trusted="):
        load_classifier(path)
    assert main(["predict", str(path), "x.jpg"]) == 1
    assert "--trust NAME" in capsys.readouterr().err
    assert not marker.exists()
    loaded = load_classifier(path, trusted=[TRIPWIRE])
    assert marker.exists() and loaded.classes_.tolist() == ["a", "b"]


def test_a_newer_file_format_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "future.featx"
    path.write_bytes(b"FEATX-CLASSIFIER 3\n{}\n")
    with pytest.raises(ValueError, match=r"format 3, written by a newer featx.*Upgrade"):
        load_classifier(path)


@pytest.mark.parametrize("kind", HEADS)
def test_every_head_round_trips_through_the_safe_format(kind, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)).astype(np.float32)
    y = np.array(["a", "b", "c"] * 20)
    head = make_head(kind, normalize="l2", pca=6).fit(X, y)
    save_classifier(head, tmp_path / "head.featx")
    loaded = load_classifier(tmp_path / "head.featx")
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert read_metadata(tmp_path / "head.featx")["trusted"] == []


def test_tta_and_augment_settings_travel_in_the_file(image_folder, tmp_path):
    model = fit_classifier(image_folder, tta=[None, Crop(0.8), Flip()], augment=2, **SMALL)
    save_classifier(model, tmp_path / "m.featx")
    loaded = load_classifier(tmp_path / "m.featx")
    images = sorted(str(p) for p in image_folder.glob("*/*"))
    assert list(map(repr, loaded[0].tta)) == list(map(repr, model[0].tta))
    assert loaded[0].augment == 2 and loaded[0].fingerprint_ == model[0].fingerprint_
    np.testing.assert_allclose(loaded.predict_proba(images), model.predict_proba(images))


def test_a_network_object_and_its_preprocess_function_cannot_travel_in_a_file(
    image_folder, tmp_path
):
    import keras

    inputs = keras.Input((32, 32, 3))
    network = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="mine")
    options = {k: v for k, v in SMALL.items() if k != "weights"}  # the model's own weights
    options.update(backbone=network, preprocess=lambda x: x / 255.0)
    model = fit_classifier(image_folder, **options)
    with pytest.raises(TypeError, match=r"backbone is a Functional object.*model file path"):
        save_classifier(model, tmp_path / "m.featx")
    model[0].backbone = str(tmp_path / "net.keras")  # as if saved: the function still stops it
    with pytest.raises(TypeError, match="preprocess function"):
        save_classifier(model, tmp_path / "m.featx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_iter_predictions_streams_chunks_skips_unreadable_images_and_keeps_labels(
    fitted, image_folder
):
    (image_folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    rows = list(iter_predictions(fitted, image_folder, k=2, chunk_size=5, on_error="skip"))
    images = sorted(str(p) for p in image_folder.glob("*/*"))
    assert [row["image"] for row in rows] == images
    broken = [row for row in rows if "error" in row]
    assert [row["image"] for row in broken] == [str(image_folder / "dog" / "broken.jpg")]
    assert broken[0]["label"] == "dog"
    good = [row for row in rows if "error" not in row]
    assert [row["label"] for row in good] == [Path(row["image"]).parent.name for row in good]
    expected = predict_top_k(fitted, [row["image"] for row in good], k=2)
    assert [[c for c, _ in row["top"]] for row in good] == [[c for c, _ in t] for t in expected]
    np.testing.assert_allclose(
        [[p for _, p in row["top"]] for row in good],
        [[p for _, p in t] for t in expected],
        atol=1e-5,  # other chunks batch the images differently: float32 rounding only
    )
    with pytest.raises(DecodeError, match=r"broken\.jpg"):
        list(iter_predictions(fitted, image_folder, chunk_size=5))


def test_predict_folders_to_csv_with_skipped_images_and_accuracy(
    fitted, image_folder, tmp_path, capsys
):
    path = tmp_path / "model.featx"
    save_classifier(fitted, path)
    (image_folder / "cat" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "predictions.csv"
    loose = str(next(image_folder.glob("fish/*")))
    argv = ["predict", str(path), str(image_folder), loose, "--csv", str(out), "--top", "2"]
    assert main([*argv, "--chunk", "4", "--on-error", "skip", "--json"]) == 0
    *rows, result = _json_lines(capsys.readouterr().out)
    assert (result["images"], result["failed"], result["labelled"]) == (14, 1, 12)
    labelled = [row for row in rows if "label" in row and "top" in row]
    correct = sum(row["top"][0]["class"] == row["label"] for row in labelled)
    assert result["accuracy"] == pytest.approx(correct / 12)
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == [
        "image",
        "label",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "error",
    ]
    assert table["image"].tolist() == [row["image"] for row in rows]
    assert table["image"].iloc[-1] == loose and table["label"].iloc[-1] == ""
    failed = table[table["error"] != ""]
    assert failed["image"].tolist() == [str(image_folder / "cat" / "broken.png")]
    assert not (tmp_path / "predictions.csv.partial").exists()
    assert main([*argv, "--on-error", "raise"]) == 1
    assert "Pass --on-error skip" in capsys.readouterr().err


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
    *rows, _ = _json_lines(done.stdout)
    predicted = [row["top"][0]["class"] for row in rows]
    assert predicted == model.predict(test).tolist()
    assert np.mean(np.array(predicted) == np.array(truth)) >= 0.8


def test_a_failed_save_leaves_the_previous_file_and_no_partial_one(fitted, tmp_path, monkeypatch):
    import errno

    path = tmp_path / "model.featx"
    save_classifier(fitted, path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_classifier(fitted, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "model.featx"]


def test_predict_json_streams_one_line_per_image_as_chunks_are_done(
    fitted, image_folder, tmp_path, monkeypatch
):
    import featx.classifier

    path = tmp_path / "model.featx"
    save_classifier(fitted, path)
    real = featx.classifier.iter_predictions
    produced = []  # rows the predictor has yielded, at each line written

    def counting(*args, **kwargs):
        for row in real(*args, **kwargs):
            produced.append(row["image"])
            yield row

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.seen: list[int] = []

        def write(self, text):
            if text.strip():
                self.seen.append(len(produced))
            return super().write(text)

    out = Recorder()
    monkeypatch.setattr(featx.classifier, "iter_predictions", counting)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["predict", str(path), str(image_folder), "--chunk", "4", "--json"]) == 0
    *rows, summary = _json_lines(out.getvalue())
    assert [row["image"] for row in rows] == produced and len(rows) == 12
    # Each line left as soon as its row was predicted, before the next chunk was embedded.
    assert out.seen[:12] == list(range(1, 13))
    assert summary["images"] == 12 and "image" not in summary and "predictions" not in summary
