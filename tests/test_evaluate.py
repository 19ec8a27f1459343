"""Evaluation: each protocol, honest model selection, labels matched by name, compare's table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLOTHING10, MOBILENET_WEIGHTS, SHARED, CountingBackbone, require_shared
from PIL import Image
from sklearn.linear_model import LogisticRegression

from featx import Extractor
from featx.backbones import RawPixels
from featx.evaluation import compare, evaluate

CLASSES = ("apple", "leaf", "sky")
COLOURS = {"apple": (200, 40, 40), "leaf": (40, 170, 60), "sky": (60, 90, 210), "stone": (128,) * 3}
METRIC_KEYS = {
    "protocol",
    "backbone",
    "weights",
    "input_size",
    "head",
    "classes",
    "accuracy",
    "accuracy_std",
    "balanced_accuracy",
    "balanced_accuracy_std",
    "macro_f1",
    "macro_f1_std",
    "per_class",
    "confusion_matrix",
    "chosen_params",
    "selection",
    "search",
    "grid",
    "fit_seconds",
    "n_train",
    "n_validation",
    "n_test",
    "dim",
    "extraction",
    "ms_per_image",
    "seed",
}


def _image(name: str, seed: int) -> Image.Image:
    """A noisy image whose mean colour gives its class away, so accuracies mean something."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(COLOURS[name])[None, None, :] + rng.integers(-40, 40, (20, 20, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _write(folder: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            _image(name, seed + 100 * c + i).save(folder / name / f"{i:02d}.png")
    return folder


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    """root/{train,validation,test}/<class>/: 6, 3 and 3 images of each of 3 classes."""
    root = tmp_path / "data"
    for split, n, seed in [("train", 6, 0), ("validation", 3, 1000), ("test", 3, 2000)]:
        _write(root / split, n, seed)
    return root


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    """root/<class>/: 8 images of each of 3 classes, for cross-validation."""
    return _write(tmp_path / "flat", 8, 0)


def _evaluate(source=None, **params):
    params = {"backbone": CountingBackbone(), "cache_dir": None, **params}
    return evaluate(source, **params)


class RecordingHead(LogisticRegression):
    """A logistic regression that records the rows of every fit and every predict."""

    fits: list[set[bytes]] = []  # noqa: RUF012  (shared by the clones sklearn makes)
    leaks: list[int] = []  # noqa: RUF012

    def fit(self, X, y, sample_weight=None):
        self.rows_ = {row.tobytes() for row in np.asarray(X)}
        RecordingHead.fits.append(self.rows_)
        return super().fit(X, y, sample_weight)

    def predict(self, X):
        RecordingHead.leaks.append(len(self.rows_ & {row.tobytes() for row in np.asarray(X)}))
        return super().predict(X)


@pytest.fixture
def recording_head():
    RecordingHead.fits, RecordingHead.leaks = [], []
    return RecordingHead(C=1.0)


def _rows(folder: Path) -> set[bytes]:
    X = Extractor(CountingBackbone(), cache_dir=None, verbose=False).extract(folder).X
    return {row.tobytes() for row in X}


# -- protocols ---------------------------------------------------------------------------------


def test_split_root_selects_on_validation_and_reports_test(split_root, tmp_path):
    result = _evaluate(split_root, cache_dir=tmp_path / "c", grid={"C": [0.01, 1.0, 100.0]})
    assert set(result) >= METRIC_KEYS
    assert result["protocol"] == "train-validation-test"
    assert result["selection"] == "validation accuracy"
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (18, 9, 9)
    assert result["classes"] == list(CLASSES)
    assert result["chosen_params"]["clf__C"] in [0.01, 1.0, 100.0]
    assert [c["params"]["clf__C"] for c in result["search"]] == [0.01, 1.0, 100.0]
    assert result["accuracy"] == 1.0
    assert result["accuracy_std"] is None
    assert set(result["per_class"]) == set(CLASSES)
    assert result["per_class"]["sky"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}
    assert result["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert set(result["extraction"]) == {"train", "validation", "test"}
    assert result["extraction"]["train"]["cache_misses"] == 18
    assert result["ms_per_image"] > 0
    json.dumps(result.summary(), allow_nan=False)  # plain Python values only


def test_val_is_an_alias_of_validation(split_root):
    (split_root / "validation").rename(split_root / "val")
    result = _evaluate(split_root)
    assert result["protocol"] == "train-validation-test"
    assert result["n_validation"] == 9


def test_both_validation_and_val_is_ambiguous(split_root):
    shutil.copytree(split_root / "validation", split_root / "val")
    with pytest.raises(ValueError, match="both validation/ and val/"):
        _evaluate(split_root)


def test_train_without_test_is_refused(split_root):
    shutil.rmtree(split_root / "test")
    with pytest.raises(ValueError, match="train/ subfolder but no test/"):
        _evaluate(split_root)


def test_root_without_validation_chooses_by_inner_cv(split_root):
    shutil.rmtree(split_root / "validation")
    result = _evaluate(split_root)
    assert result["protocol"] == "train-test"
    assert result["selection"] == "3-fold accuracy"
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (18, 0, 9)


def test_single_folder_runs_nested_cross_validation(flat_root):
    grid = {"C": [0.1, 10.0]}
    result = _evaluate(flat_root, cv=4, grid=grid)
    assert set(result) >= METRIC_KEYS
    assert result["protocol"] == "nested-cv"
    assert len(result["folds"]) == 4
    assert sum(fold["n_test"] for fold in result["folds"]) == result["n_test"] == 24
    assert result["n_train"] == 18
    assert all(fold["chosen_params"]["clf__C"] in grid["C"] for fold in result["folds"])
    assert result["chosen_params"] == {
        "clf__C": [fold["chosen_params"]["clf__C"] for fold in result["folds"]]
    }
    assert result["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in result["folds"]]))
    assert result["accuracy_std"] == pytest.approx(np.std([f["accuracy"] for f in result["folds"]]))
    assert result["pooled"]["accuracy"] == 1.0
    assert np.asarray(result["confusion_matrix"]).sum() == 24
    assert set(result["extraction"]) == {"all"}
    json.dumps(result.summary(), allow_nan=False)


def test_explicit_train_and_test(split_root):
    result = _evaluate(train=split_root / "train", test=split_root / "test")
    assert result["protocol"] == "train-test"
    assert (result["n_train"], result["n_test"]) == (18, 9)
    with_validation = _evaluate(
        train=split_root / "train", validation=split_root / "validation", test=split_root / "test"
    )
    assert with_validation["protocol"] == "train-validation-test"
    assert with_validation["n_validation"] == 9


def test_results_are_deterministic(flat_root):
    first, second = _evaluate(flat_root, cv=3).summary(), _evaluate(flat_root, cv=3).summary()
    for result in (first, second):
        result.pop("fit_seconds")
        result.pop("extraction")
        result.pop("ms_per_image")
        for fold in result["folds"]:
            fold.pop("fit_seconds")
    assert first == second


# -- honesty -----------------------------------------------------------------------------------


def test_test_rows_never_reach_selection_or_fitting(split_root, recording_head):
    result = _evaluate(split_root, head=recording_head, grid={"C": [0.1, 1.0, 10.0]})
    test_rows = _rows(split_root / "test")
    train_rows = _rows(split_root / "train")
    validation_rows = _rows(split_root / "validation")
    assert len(test_rows) == 9
    assert all(fit.isdisjoint(test_rows) for fit in RecordingHead.fits)
    # Three candidates fitted on train alone, then the chosen one on train + validation.
    assert RecordingHead.fits[:3] == [train_rows] * 3
    assert RecordingHead.fits[3:] == [train_rows | validation_rows]
    assert result["chosen_params"]["C"] in [0.1, 1.0, 10.0]


def test_nested_cv_never_scores_a_row_it_trained_on(flat_root, recording_head):
    _evaluate(flat_root, head=recording_head, grid={"C": [0.1, 10.0]}, cv=3)
    all_rows = _rows(flat_root)
    # 3 outer folds x (2 candidates x 3 inner folds + 1 refit), each on part of the data.
    assert len(RecordingHead.fits) == 3 * (2 * 3 + 1)
    assert all(len(fit) < len(all_rows) for fit in RecordingHead.fits)
    assert RecordingHead.leaks and not any(RecordingHead.leaks)


def test_inner_cv_on_train_never_sees_test(split_root, recording_head):
    _evaluate(
        train=split_root / "train",
        test=split_root / "test",
        head=recording_head,
        grid={"C": [1, 2]},
    )
    test_rows = _rows(split_root / "test")
    assert all(fit.isdisjoint(test_rows) for fit in RecordingHead.fits)
    assert not any(RecordingHead.leaks)


def test_splits_sharing_images_are_refused(split_root):
    with pytest.raises(ValueError, match="in both the train and the test set"):
        _evaluate(train=split_root / "train", test=split_root / "train")


# -- labels by class name ----------------------------------------------------------------------


def test_labels_are_matched_by_class_name(split_root):
    shutil.rmtree(split_root / "test" / "apple")  # test folders: leaf, sky (indices 0, 1)
    result = _evaluate(split_root)
    assert result["accuracy"] == 1.0  # would be 0 if matched by folder position
    assert result["per_class"]["apple"]["support"] == 0
    assert result["per_class"]["sky"]["support"] == 3
    assert result["confusion_matrix"][0] == [0, 0, 0]


def test_a_test_class_missing_from_train_is_refused(split_root):
    _write(split_root / "test", 2, 5000, classes=("stone",))
    with pytest.raises(
        ValueError, match=r"test set has class\(es\) \['stone'\].*training set lacks"
    ):
        _evaluate(split_root)


def test_an_unlabelled_source_is_refused(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    for i in range(4):
        _image("sky", i).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="source has no labels"):
        _evaluate(folder)


# -- arguments ---------------------------------------------------------------------------------


def test_source_and_splits_together_are_refused(split_root):
    with pytest.raises(ValueError, match="Both source= and train="):
        _evaluate(split_root, train=split_root / "train")


def test_train_without_test_argument_is_refused(split_root):
    with pytest.raises(ValueError, match="No test= given"):
        _evaluate(train=split_root / "train")


def test_unknown_grid_key_is_refused(split_root):
    with pytest.raises(ValueError, match=r"grid names 'Cs'.*Did you mean 'clf__C'"):
        _evaluate(split_root, grid={"Cs": [1.0]})


def test_too_many_folds_for_a_class_is_refused(flat_root):
    with pytest.raises(ValueError, match=r"cv=10 folds needs at least 10 images.*Pass cv=8"):
        _evaluate(flat_root, cv=10)


def test_an_empty_grid_fits_the_defaults_once(split_root, recording_head):
    result = _evaluate(split_root, head=recording_head, grid={})
    assert len(RecordingHead.fits) == 1
    assert result["chosen_params"] == {}
    assert result["selection"] == "none"


def test_a_head_without_probabilities_is_refused(split_root):
    from sklearn.svm import LinearSVC

    with pytest.raises(TypeError, match="predict_proba"):
        _evaluate(split_root, head=LinearSVC())


# -- compare -----------------------------------------------------------------------------------

COLUMNS = [
    "backbone",
    "weights",
    "input_size",
    "head",
    "accuracy",
    "accuracy_std",
    "balanced_accuracy",
    "macro_f1",
    "ms_per_image",
    "dim",
    "fit_seconds",
]


def test_compare_extracts_each_backbone_once_for_all_heads(split_root, tmp_path):
    counting = CountingBackbone()
    params = {
        "backbones": [counting, RawPixels(4)],
        "heads": ("logreg", "linear-svm"),
        "baselines": False,
        "cache_dir": tmp_path / "c",
    }
    table = compare(split_root, **params).table
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert table[["backbone", "head"]].values.tolist() == [
        ["counting", "logreg"],
        ["counting", "linear-svm"],
        ["raw pixels 4x4", "logreg"],
        ["raw pixels 4x4", "linear-svm"],
    ]
    assert table["dim"].tolist() == [6, 6, 48, 48]
    assert len(counting.seen) == 36  # every image once, although two heads used it
    assert table["cache_misses"].tolist() == [36, 36, 36, 36]
    assert (table["accuracy"] == 1.0).all()
    assert table["accuracy_std"].isna().all()  # a fixed test set has no spread
    assert (table["ms_per_image"] > 0).all()
    assert table["protocol"].eq("train-validation-test").all()

    again = compare(split_root, **params).table
    assert len(counting.seen) == 36
    assert (again["cache_misses"] == 0).all()
    assert again["ms_per_image"].tolist() == table["ms_per_image"].tolist()  # from the cache
    columns = ["backbone", "head", "accuracy", "chosen_params"]
    assert again[columns].equals(table[columns])


def test_compare_under_cross_validation_reports_the_spread(flat_root):
    table = compare(
        flat_root, backbones=[CountingBackbone()], heads=["logreg"], baselines=False, cv=3,
        cache_dir=None,
    ).table  # fmt: skip
    assert table["protocol"].tolist() == ["nested-cv"]
    assert table["accuracy_std"].notna().all()
    assert table["ms_per_image"].notna().all()  # measured, since there is no cache
    records = table.to_dict(orient="records")
    assert json.loads(json.dumps(records))[0]["backbone"] == "counting"


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    """A MobileNetV2 weights file (seed 1): stands in for pretrained weights, offline."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "small.weights.h5"
    model.save_weights(path)
    return path


def test_compare_adds_the_random_weights_and_raw_pixels_baselines(split_root, small_weights):
    entry = {"backbone": "MobileNetV2", "weights": small_weights, "input_size": 32}
    table = compare(split_root, backbones=[entry], heads=["logreg"], cache_dir=None).table
    assert table[["backbone", "input_size", "dim"]].values.tolist() == [
        ["MobileNetV2", 32, 1280],
        ["MobileNetV2 (random weights)", 32, 1280],
        ["raw pixels 16x16", 16, 768],
    ]
    assert table["weights"].tolist()[:2] == ["small.weights.h5", "random"]
    assert table["weights"].isna().tolist() == [False, False, True]
    assert table["accuracy"].between(0, 1).all()


def test_compare_uses_an_entry_label(split_root):
    table = compare(
        split_root,
        backbones=[{"backbone": CountingBackbone(), "label": "stats"}],
        heads=["logreg"],
        cache_dir=None,
    ).table
    # A Backbone instance has no random-weights version: only the raw-pixels baseline.
    assert table["backbone"].tolist() == ["stats", "raw pixels 16x16"]


def test_compare_takes_a_keras_model_in_an_entry_with_its_own_weights(split_root, small_weights):
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, outputs, name="mine")
    kernel = model.get_layer("conv").get_weights()[0].copy()
    entries = [
        {"backbone": "MobileNetV2", "input_size": 32},
        {"backbone": model, "input_size": 24, "preprocess": lambda x: x / 255.0},
        {"backbone": model, "input_size": 24, "label": "my model"},
    ]
    # weights= is the file for the registry model; the keras.Model keeps its own.
    table = compare(
        split_root,
        backbones=entries,
        heads=["logreg"],
        weights=small_weights,
        baselines=False,
        cache_dir=None,
    ).table
    assert table[["backbone", "weights", "dim"]].values.tolist() == [
        ["MobileNetV2", "small.weights.h5", 1280],
        ["mine", "own", 4],
        ["my model", "own", 4],
    ]
    np.testing.assert_array_equal(model.get_layer("conv").get_weights()[0], kernel)


def test_compare_refuses_an_unknown_entry_key(split_root):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['size'\].*input_size"):
        compare(split_root, backbones=[{"backbone": "MobileNetV2", "size": 32}], cache_dir=None)


# -- the real data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clothing_cache(tmp_path_factory) -> Path:
    """One cache for the three heads: clothing10 is extracted once."""
    require_shared()
    return tmp_path_factory.mktemp("clothing-cache")


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(
    ("head", "at_least"),
    # Measured (choose on validation, refit on train+validation, score on test):
    # logreg 0.852 (C=0.01), svm 0.836 (C=10), mlp 0.852 (alpha=1e-4).
    [("logreg", 0.83), ("svm", 0.80), ("mlp", 0.80)],
)
def test_clothing10_accuracy_with_the_shared_weights(head, at_least, clothing_cache):
    result = evaluate(
        CLOTHING10,
        backbone="MobileNetV2",
        weights=MOBILENET_WEIGHTS,
        input_size=160,
        head=head,
        cache_dir=clothing_cache,
    )
    assert result["protocol"] == "train-validation-test"
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (3068, 341, 372)
    assert result["accuracy"] >= at_least


@pytest.mark.shared
@pytest.mark.slow
def test_intel6_pretraining_beats_random_weights_and_pixels(tmp_path_factory):
    require_shared()
    intel6 = SHARED / "datasets" / "intel6"
    table = compare(
        intel6,
        backbones=[{"backbone": "MobileNetV2", "weights": MOBILENET_WEIGHTS, "input_size": 160}],
        heads=("logreg",),
        cv=5,
        cache_dir=tmp_path_factory.mktemp("intel6-cache"),
    ).table
    accuracy = dict(zip(table["backbone"], table["accuracy"], strict=True))
    # Measured (5-fold nested CV, mean +- std over folds): pretrained 0.908 +- 0.008,
    # random weights 0.561 +- 0.025, raw pixels 16x16 0.515 +- 0.028.
    assert accuracy["MobileNetV2"] >= accuracy["MobileNetV2 (random weights)"] + 0.25
    assert accuracy["MobileNetV2"] > accuracy["raw pixels 16x16"]
    assert accuracy["MobileNetV2"] >= 0.85
    assert table["accuracy_std"].notna().all()
