"""Heads: sklearn pipelines with named steps, probabilities, and defaults that fit embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import GridSearchCV

from featx.heads import HEADS, default_grid, make_head


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """64-d, 10 classes: closer to embeddings than iris. Train and test halves."""
    X, y = load_digits(return_X_y=True)
    return X[:600], y[:600], X[600:1000], y[600:1000]


@pytest.mark.parametrize("kind", HEADS)
def test_every_head_fits_predicts_and_gives_probabilities(kind, digits):
    X, y, X_test, y_test = digits
    head = make_head(kind).fit(X, y)
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # predict is the argmax of the probabilities, so top-1 of a top-k list agrees with it.
    np.testing.assert_array_equal(head.predict(X_test), head.classes_[proba.argmax(axis=1)])
    assert (head.predict(X_test) == y_test).mean() >= 0.85


@pytest.mark.parametrize("kind", HEADS)
def test_every_head_is_deterministic(kind, iris):
    X, y = iris
    first = make_head(kind).fit(X, y).predict_proba(X)
    second = make_head(kind).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


def test_steps_are_named_for_grids():
    assert list(make_head("logreg").named_steps) == ["scale", "clf"]
    steps = make_head("mlp", normalize="l2", pca=5).named_steps
    assert list(steps) == ["l2", "scale", "pca", "clf"]


def test_normalize_l2_makes_rows_unit_length(iris):
    X, y = iris
    head = make_head("logreg", normalize="l2").fit(X, y)
    unit = head.named_steps["l2"].transform(X)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)


@pytest.mark.parametrize(("pca", "expected"), [(3, 3), (0.5, 1)])
def test_pca_keeps_components_or_variance(pca, expected, iris):
    X, y = iris
    head = make_head("logreg", pca=pca).fit(X, y)
    assert head.named_steps["pca"].n_components_ == expected
    assert head.named_steps["pca"].whiten is False


def test_params_reach_the_classifier():
    assert make_head("logreg", C=0.5).named_steps["clf"].C == 0.5
    assert make_head("mlp", alpha=0.1).named_steps["clf"].alpha == 0.1
    # The SVMs are calibrated: the parameters reach the SVM inside the calibration.
    svm = make_head("svm", C=10, gamma=0.1).named_steps["clf"].estimator
    assert (svm.C, svm.gamma, svm.kernel) == (10, 0.1, "rbf")


def test_defaults_suit_embeddings():
    logreg = make_head("logreg").named_steps["clf"]
    assert logreg.max_iter >= 2000
    mlp = make_head("mlp").named_steps["clf"]
    assert (mlp.hidden_layer_sizes, mlp.early_stopping, mlp.random_state) == ((256,), True, 0)


def test_unknown_kind_suggests_the_close_one():
    with pytest.raises(ValueError, match=r"Unknown head 'logistic'.*Did you mean 'logreg'"):
        make_head("logistic")


def test_unknown_param_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'c' for the 'logreg' head.*max_iter.*Did you mean 'C'"):
        make_head("logreg", c=1.0)


def test_bad_normalize_is_refused():
    with pytest.raises(ValueError, match=r"normalize='l1'.*Expected one of \(None, 'l2'\)"):
        make_head("logreg", normalize="l1")


@pytest.mark.parametrize("pca", [0, 1.5, "all", True])
def test_bad_pca_is_refused(pca):
    with pytest.raises(ValueError, match="pca="):
        make_head("logreg", pca=pca)


def test_default_grids_search_the_regularisation():
    assert {0.01, 0.1, 1.0, 10.0} <= set(default_grid("logreg")["clf__C"])
    assert {1.0, 10.0} <= set(default_grid("svm")["clf__estimator__C"])
    assert {0.001, 0.01, 0.1} <= set(default_grid("linear-svm")["clf__estimator__C"])
    assert default_grid("mlp") == {"clf__alpha": [1e-4, 1e-3, 1e-2]}
    with pytest.raises(ValueError, match="Unknown head"):
        default_grid("random-forest")


def test_default_grid_is_a_copy():
    default_grid("mlp")["clf__alpha"].append(1.0)
    assert default_grid("mlp")["clf__alpha"] == [1e-4, 1e-3, 1e-2]


@pytest.mark.parametrize("kind", HEADS)
def test_default_grid_addresses_the_pipeline(kind, iris):
    X, y = iris
    search = GridSearchCV(make_head(kind), default_grid(kind), cv=3).fit(X, y)
    assert set(search.best_params_) == set(default_grid(kind))
