"""EmbeddingTransformer under scikit-learn's estimator contract, and its cache in model selection.

``sklearn.utils.estimator_checks.parametrize_with_checks`` does not apply here: its
checks feed numeric ``(n_samples, n_features)`` matrices, and this transformer's rows
are images (paths or pixel arrays). Rather than tag those checks away, the tests below
check the same contract explicitly: ``__init__`` stores parameters only, ``clone`` and
``get_params``/``set_params``, ``NotFittedError`` before ``fit``, pickling, feature names
and ``set_output``, and behaviour inside ``Pipeline``, ``ColumnTransformer``,
``cross_val_score`` and ``GridSearchCV``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import CountingBackbone, random_image
from PIL import Image
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline

import featx
from featx import DecodeError, EmbeddingTransformer

TINTS = [(230, 40, 40), (40, 200, 40), (40, 40, 230)]
TINY_KERAS = {"weights": None, "input_size": 32, "cache_dir": None}


def _run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that imports the same featx as these tests."""
    source_root = str(Path(featx.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )


class SharedCountingBackbone(CountingBackbone):
    """A CountingBackbone whose count survives ``clone``.

    ``clone`` deep-copies every parameter, so an instance counter would be copied along
    with each of GridSearchCV's clones and lose their work. This one counts on the class,
    per tag (give each test its own tag).
    """

    computed: ClassVar[Counter[str]] = Counter()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        real_rows = batch.reshape(len(batch), -1).any(axis=1)  # padding rows are all zero
        self.computed[self.tag] += int(real_rows.sum())
        return super().embed(batch)

    @property
    def count(self) -> int:
        return self.computed[self.tag]


@pytest.fixture
def shared_backbone(request: pytest.FixtureRequest) -> SharedCountingBackbone:
    tag = request.node.nodeid
    SharedCountingBackbone.computed.pop(tag, None)
    return SharedCountingBackbone(tag=tag)


def _write_images(folder: Path, n: int, *, mode: str = "RGB") -> list[str]:
    """``n`` distinct lossless images, so pixels read back equal the pixels written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        random_image(100 + i, mode=mode).save(path)
        paths.append(str(path))
    return paths


def _tinted_dataset(folder: Path, n_per_class: int) -> tuple[list[str], np.ndarray]:
    """Images whose class sets their tint, so a linear model on pooled colours can learn it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, y = [], []
    for i in range(n_per_class * len(TINTS)):
        label = i % len(TINTS)
        base = random_image(1000 + i)
        image = Image.blend(base, Image.new("RGB", base.size, TINTS[label]), 0.5)
        path = folder / f"{i:03d}.png"
        image.save(path)
        paths.append(str(path))
        y.append(label)
    return paths, np.asarray(y)


def _pixels(paths: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


# -- the estimator contract -------------------------------------------------------------------


def test_init_stores_params_only_and_fit_validates_them():
    transformer = EmbeddingTransformer(backbone="MobilenetV2", weights=None, batch_size=8)
    assert vars(transformer) == transformer.get_params()
    with pytest.raises(ValueError, match=r"Unknown backbone 'MobilenetV2'.*Did you mean"):
        transformer.fit(["a.png"])
    with pytest.raises(ValueError, match="pooling='mean' is not supported"):
        EmbeddingTransformer(pooling="mean", **TINY_KERAS).fit(["a.png"])


def test_constructing_and_fitting_builds_no_model(tmp_path):
    # fit learns nothing from images and, for a registry backbone, knows the dimension
    # without building the network: TensorFlow is not even imported.
    code = (
        "import sys\n"
        "from featx import EmbeddingTransformer\n"
        "t = EmbeddingTransformer('VGG16', weights=None, input_size=32, cache_dir=None)\n"
        "t.fit(['never-read.png'])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
        "print(t.n_features_out_)\n"
    )
    done = _run_python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["512"]


def test_fit_reads_no_image_and_transform_raises_on_an_unreadable_one(tmp_path, shared_backbone):
    missing = str(tmp_path / "missing.png")
    transformer = EmbeddingTransformer(shared_backbone, cache_dir=None).fit([missing])
    assert shared_backbone.count == 0
    assert transformer.n_features_out_ == 6
    with pytest.raises(DecodeError, match=r"missing\.png"):
        transformer.transform([missing])


def test_transform_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        EmbeddingTransformer(CountingBackbone(), cache_dir=None).transform(["a.png"])
    with pytest.raises(NotFittedError):
        EmbeddingTransformer(CountingBackbone(), cache_dir=None).get_feature_names_out()


def test_clone_and_params_round_trip(tmp_path, shared_backbone):
    paths = _write_images(tmp_path / "img", 3)
    transformer = EmbeddingTransformer(shared_backbone, cache_dir=None, batch_size=2)
    fitted = transformer.fit(paths)
    assert fitted is transformer

    copy = clone(transformer)
    assert copy.get_params().keys() == transformer.get_params().keys()
    assert copy.backbone is not shared_backbone  # clone deep-copies parameters
    with pytest.raises(NotFittedError):
        copy.transform(paths)  # a clone is unfitted
    np.testing.assert_array_equal(copy.fit_transform(paths), transformer.transform(paths))
    assert copy.fingerprint_ == transformer.fingerprint_

    params = transformer.get_params()
    assert EmbeddingTransformer().set_params(**params).get_params() == params


def test_set_params_backbone_really_changes_the_network(tmp_path):
    paths = _write_images(tmp_path / "img", 3)
    transformer = EmbeddingTransformer("VGG16", **TINY_KERAS).fit(paths)
    assert transformer.transform(paths).shape == (3, 512)

    transformer.set_params(backbone="MobileNetV2")
    # Not silently the old network (embetter's trap), nor a new one the fit never saw.
    with pytest.raises(ValueError, match=r"changed since fit.*Call fit again"):
        transformer.transform(paths)
    embeddings = transformer.fit(paths).transform(paths)
    assert embeddings.shape == (3, 1280)
    assert len(transformer.get_feature_names_out()) == 1280


def test_changed_backbone_changes_the_fingerprint_and_needs_a_refit(tmp_path):
    paths = _write_images(tmp_path / "img", 3)
    transformer = EmbeddingTransformer(CountingBackbone(tag="v1"), cache_dir=tmp_path / "c")
    first = transformer.fit(paths).fingerprint_

    transformer.backbone = CountingBackbone(tag="v2")  # plain assignment is caught too
    with pytest.raises(ValueError, match=r"\(backbone\).*Call fit again"):
        transformer.transform(paths)
    assert transformer.fit(paths).fingerprint_ != first


def test_params_that_do_not_change_the_vectors_need_no_refit(tmp_path, shared_backbone):
    paths = _write_images(tmp_path / "img", 5)
    transformer = EmbeddingTransformer(shared_backbone, cache_dir=None, batch_size=4).fit(paths)
    before = transformer.transform(paths)
    transformer.set_params(batch_size=2, cache_dir=tmp_path / "c", verbose=False)
    np.testing.assert_array_equal(transformer.transform(paths), before)
    assert shared_backbone.count == 10


# -- pickling ---------------------------------------------------------------------------------


def test_pickle_and_joblib_drop_the_model_and_rebuild_it(tmp_path):
    paths = _write_images(tmp_path / "img", 4)
    transformer = EmbeddingTransformer("VGG16", **TINY_KERAS).fit(paths)
    expected = transformer.transform(paths)  # the Keras model is built and cached now

    joblib_file = tmp_path / "transformer.joblib"
    joblib.dump(transformer, joblib_file)
    as_bytes = pickle.dumps(transformer)
    assert len(as_bytes) < 50_000
    assert joblib_file.stat().st_size < 50_000

    for loaded in (pickle.loads(as_bytes), joblib.load(joblib_file)):
        assert "_extractor" not in vars(loaded)
        assert loaded.fingerprint_ == transformer.fingerprint_
        np.testing.assert_allclose(loaded.transform(paths), expected, rtol=1e-5, atol=1e-6)


def test_a_saved_pipeline_predicts_the_same_in_a_new_process(tmp_path):
    paths, y = _tinted_dataset(tmp_path / "img", n_per_class=3)
    model = make_pipeline(EmbeddingTransformer("VGG16", **TINY_KERAS), LogisticRegression())
    model.fit(paths, y)
    expected = model.predict(paths)
    model_file = tmp_path / "model.joblib"
    joblib.dump(model, model_file)
    assert model_file.stat().st_size < 50_000

    code = (
        "import json, sys\n"
        "import joblib, numpy as np\n"
        "model = joblib.load(sys.argv[1])\n"
        "paths = json.loads(sys.argv[2])\n"
        "np.save(sys.argv[3], model[0].transform(paths))\n"
        "print(json.dumps(model.predict(paths).tolist()))\n"
    )
    features_file = tmp_path / "features.npy"
    done = _run_python(code, str(model_file), json.dumps(paths), str(features_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected.tolist()
    np.testing.assert_allclose(
        np.load(features_file), model[0].transform(paths), rtol=1e-4, atol=1e-5
    )


# -- feature names and set_output -------------------------------------------------------------


def test_feature_names_and_pandas_output_keep_the_index(tmp_path):
    paths = _write_images(tmp_path / "img", 3)
    transformer = EmbeddingTransformer(CountingBackbone(), cache_dir=None).fit(paths)
    names = [f"embeddingtransformer{i}" for i in range(6)]
    assert transformer.get_feature_names_out().tolist() == names

    transformer.set_output(transform="pandas")
    frame = pd.DataFrame({"path": paths}, index=["a", "b", "c"])
    out = transformer.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert out.columns.tolist() == names
    assert out.index.tolist() == ["a", "b", "c"]
    assert out.dtypes.eq(np.float32).all()

    series = pd.Series(paths, index=[10, 20, 30])
    assert transformer.fit_transform(series).index.tolist() == [10, 20, 30]
    assert transformer.transform(paths).index.tolist() == [0, 1, 2]


# -- accepted inputs --------------------------------------------------------------------------


def _as_kind(kind: str, paths: list[str]):
    column = np.asarray(paths, dtype=object)
    return {
        "list of str": paths,
        "list of Path": [Path(p) for p in paths],
        "tuple": tuple(paths),
        "1-D str array": np.asarray(paths),
        "1-D object array": column,
        "(n, 1) object array": column[:, None],
        "Series": pd.Series(paths, index=np.arange(len(paths))[::-1]),
        "DataFrame with path column": pd.DataFrame({"x": 1.0, "path": paths}),
        "DataFrame with a label column": pd.DataFrame({"path": paths, "label": [9, 8, 7, 6]}),
        "one-column DataFrame": pd.DataFrame({"file": paths}),
        "uint8 image array": _pixels(paths),
        "list of arrays": list(_pixels(paths)),
        "list of PIL images": [Image.open(p) for p in paths],
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "list of str",
        "list of Path",
        "tuple",
        "1-D str array",
        "1-D object array",
        "(n, 1) object array",
        "Series",
        "DataFrame with path column",
        "DataFrame with a label column",
        "one-column DataFrame",
        "uint8 image array",
        "list of arrays",
        "list of PIL images",
    ],
)
def test_every_input_kind_gives_the_same_rows(tmp_path, kind):
    paths = _write_images(tmp_path / "img", 4)
    transformer = EmbeddingTransformer(CountingBackbone(), cache_dir=None).fit(paths)
    expected = transformer.transform(paths)
    X = _as_kind(kind, paths)
    np.testing.assert_array_equal(clone(transformer).fit_transform(X), expected)


def test_path_column_picks_one_column_of_several(tmp_path):
    paths = _write_images(tmp_path / "img", 3)
    transformer = EmbeddingTransformer(CountingBackbone(), cache_dir=None, path_column="file")
    frame = pd.DataFrame({"file": paths, "other": list("abc")})
    expected = transformer.fit(paths).transform(paths)
    np.testing.assert_array_equal(transformer.transform(frame), expected)


def test_grayscale_array_matches_grayscale_files(tmp_path):
    paths = _write_images(tmp_path / "img", 3, mode="L")
    transformer = EmbeddingTransformer(CountingBackbone(), cache_dir=None).fit(paths)
    pixels = _pixels(paths)
    assert pixels.ndim == 3  # (N, H, W)
    np.testing.assert_array_equal(transformer.transform(pixels), transformer.transform(paths))


def test_float_array_in_0_255_matches_uint8():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    transformer = EmbeddingTransformer(CountingBackbone(16), cache_dir=None).fit(pixels)
    np.testing.assert_allclose(
        transformer.transform(pixels.astype(np.float64)), transformer.transform(pixels)
    )


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        (pd.DataFrame({"a": ["x.png"], "b": ["y.png"]}), ValueError, r"columns are \['a', 'b'\]"),
        ("images/", TypeError, "single path"),
        (np.zeros((4, 10)), ValueError, r"\(N, H, W, 3\)"),
        (np.array([["a.png", "b.png"]], dtype=object), ValueError, r"shape \(n,\) or \(n, 1\)"),
        (["a.png", None], ValueError, "Row 1 of X is None"),
        (pd.Series(["a.png", np.nan]), ValueError, "Row 1 of the Series is nan"),
        ({"path": ["a.png"]}, TypeError, "dict is not understood"),
    ],
    ids=[
        "no path column",
        "a single path",
        "tabular array",
        "wide path array",
        "None",
        "NaN",
        "dict",
    ],
)
def test_bad_inputs_are_named(X, error, match):
    transformer = EmbeddingTransformer(CountingBackbone(), cache_dir=None)
    with pytest.raises(error, match=match):
        transformer.fit(X)


# -- inside scikit-learn's meta-estimators ----------------------------------------------------


@pytest.mark.parametrize("columns", ["path", ["path"]], ids=["Series", "one-column DataFrame"])
def test_column_transformer_with_a_numeric_column(tmp_path, columns):
    paths = _write_images(tmp_path / "img", 4)
    frame = pd.DataFrame({"path": paths, "x": [0.5, 1.5, 2.5, 3.5]})
    embed = EmbeddingTransformer(CountingBackbone(), cache_dir=None)
    columns_transformer = ColumnTransformer(
        [("img", embed, columns), ("num", "passthrough", ["x"])]
    )
    out = columns_transformer.fit_transform(frame)
    assert out.shape == (4, 6 + 1)
    np.testing.assert_array_equal(out[:, :6], clone(embed).fit_transform(paths))
    np.testing.assert_array_equal(out[:, 6], frame["x"])
    names = columns_transformer.get_feature_names_out().tolist()
    assert names == [f"img__embeddingtransformer{i}" for i in range(6)] + ["num__x"]


def test_cross_val_score_learns_the_classes(tmp_path):
    paths, y = _tinted_dataset(tmp_path / "img", n_per_class=6)
    model = Pipeline(
        [
            ("embed", EmbeddingTransformer(CountingBackbone(), cache_dir=tmp_path / "c")),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    )
    scores = cross_val_score(model, paths, y, cv=3)
    assert scores.shape == (3,)
    assert scores.min() == 1.0


def _grid_search(backbone, cache_dir, paths, y) -> GridSearchCV:
    model = make_pipeline(
        EmbeddingTransformer(backbone, cache_dir=cache_dir, batch_size=8),
        LogisticRegression(max_iter=1000),
    )
    search = GridSearchCV(model, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3)
    return search.fit(paths, y)


def test_grid_search_extracts_each_image_exactly_once(tmp_path, shared_backbone):
    paths, y = _tinted_dataset(tmp_path / "img", n_per_class=10)
    search = _grid_search(shared_backbone, tmp_path / "cache", paths, y)
    # 3 candidates x 3 folds, each embedding 20 training and 10 test images, plus the
    # refit on all 30: 300 embeddings asked for, 30 computed, every other one cached.
    assert shared_backbone.count == len(paths) == 30
    assert search.best_score_ == 1.0
    assert search.predict(paths).tolist() == y.tolist()
    assert shared_backbone.count == 30  # predicting reads the cache too


def test_grid_search_without_the_cache_computes_every_fold_again(tmp_path, shared_backbone):
    paths, y = _tinted_dataset(tmp_path / "img", n_per_class=10)
    _grid_search(shared_backbone, None, paths, y)
    assert shared_backbone.count == 3 * 3 * len(paths) + len(paths)  # 300, ten times more
