"""featx train: split roots, checks before any image is read, and evaluate's selection."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import CountingBackbone, random_image
from PIL import Image

from featx.classifier import load_classifier, train_classifier
from featx.cli import main
from featx.evaluation import evaluate

NETWORK = ["--backbone", "VGG16", "--weights", "none", "--size", "32", "--quiet"]


def _write(folder, per_class: dict[str, int], seed: int = 0):
    for c, (name, n) in enumerate(per_class.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            random_image(seed + 100 * c + i).save(folder / name / f"{i:02d}.png")
    return folder


def _noisy(c: int, seed: int) -> Image.Image:
    """A class's colour, shifted per image and noisy: separable, but not at every setting."""
    rng = np.random.default_rng(seed)
    colour = np.array([[90, 120, 150], [120, 150, 90], [150, 90, 120]][c]) + rng.normal(0, 35, 3)
    pixels = colour[None, None] + rng.normal(0, 30, (24, 24, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def split_root(tmp_path):
    """root/{train,validation,test}/<class>/: 8, 4 and 3 images of 3 classes, on which the
    head's settings score differently on validation (C=10 best, not the default C=1)."""
    root = tmp_path / "data"
    for split, n, seed in [("train", 8, 0), ("validation", 4, 1000), ("test", 3, 2000)]:
        for c, name in enumerate(["cat", "dog", "fish"]):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _noisy(c, seed + 100 * c + i).save(root / split / name / f"{i:02d}.png")
    return root


def test_train_on_a_split_root_learns_train_and_validation_and_leaves_test(
    split_root, tmp_path, capsys
):
    out = tmp_path / "m.featx"
    argv = ["train", str(split_root), "--out", str(out), *NETWORK, "--cache-dir", "none"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["cat", "dog", "fish"]  # not train, validation, test
    assert result["trained_on"] == {"train": 24, "validation": 12}
    assert result["held_out"] == {"test": 9}
    assert result["selection"] == "validation accuracy" and list(result["params"]) == ["clf__C"]
    assert load_classifier(out).classes_.tolist() == ["cat", "dog", "fish"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"chose C={result['params']['clf__C']:g} by validation accuracy" in text
    assert "trained on train/ + validation/: 36 images, 3 classes" in text
    assert f"test/ (9 images) held out: featx evaluate {split_root} scores it" in text


def test_train_chooses_what_evaluate_chooses_and_takes_its_json(split_root, tmp_path, capsys):
    options = {"backbone": CountingBackbone(), "cache_dir": None, "verbose": False}
    evaluated = evaluate(split_root, **options)
    trained = train_classifier(split_root, **options)
    assert trained.params == evaluated["chosen_params"]
    assert [s["score"] for s in trained.search] == [s["score"] for s in evaluated["search"]]
    assert len({s["score"] for s in trained.search}) > 1  # the settings really differ
    assert trained.params == {"clf__C": 10.0}  # not the head's default, C=1
    assert trained.model[-1].named_steps["clf"].C == 10.0

    saved = tmp_path / "evaluate.json"
    assert main(["evaluate", str(split_root), *NETWORK, "--cache-dir", "none", "--json"]) == 0
    saved.write_text(capsys.readouterr().out)
    chosen = json.loads(saved.read_text())["chosen_params"]
    out = tmp_path / "m.featx"
    argv = ["train", str(split_root), "--out", str(out), *NETWORK, "--cache-dir", "none"]
    assert main([*argv, "--params-from", str(saved), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["params"], result["selection"]) == (chosen, "none")
    assert chosen["clf__C"] == load_classifier(out)[-1].named_steps["clf"].C
    assert main([*argv, "--params-from", str(saved), "--head", "svm"]) == 1
    assert "chosen for the logreg head" in capsys.readouterr().err


def test_one_class_fails_before_any_image_is_read(tmp_path, capsys):
    root = _write(tmp_path / "one", {"cat": 5})
    backbone = CountingBackbone()
    with pytest.raises(ValueError, match=r"at least 2 classes; .* has 1: 'cat' \(5 images\)"):
        train_classifier(root, backbone=backbone, cache_dir=None)
    assert backbone.seen == []
    argv = ["train", str(root), "--out", str(tmp_path / "m.featx"), *NETWORK]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")]) == 1
    assert "at least 2 classes" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_class_with_one_image_fails_before_the_search_or_warns_without_one(tmp_path, capsys):
    root = _write(tmp_path / "few", {"cat": 5, "dog": 1})
    backbone = CountingBackbone()
    with pytest.raises(ValueError, match=r"Class 'dog' has 1 image.*head_params="):
        train_classifier(root, backbone=backbone, cache_dir=None)
    assert backbone.seen == []
    argv = ["train", str(root), "--out", str(tmp_path / "m.featx"), *NETWORK, "--cache-dir", "none"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Class 'dog' has 1 image" in err and "(--param)" in err and "head_params" not in err
    with pytest.warns(UserWarning, match="'dog' has only 1 training image"):
        assert main([*argv, "--param", "C=1"]) == 0
    assert "parameters given: C=1" in capsys.readouterr().out


def test_a_class_named_train_is_a_class(tmp_path):
    root = _write(tmp_path / "vehicles", {"bus": 4, "train": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = train_classifier(root, backbone=CountingBackbone(), cache_dir=None)
    assert trained.model.classes_.tolist() == ["bus", "train"]
    assert trained.trained_on == {"all": 8} and trained.held_out == {}
    assert np.isfinite([s["score"] for s in trained.search]).all()
