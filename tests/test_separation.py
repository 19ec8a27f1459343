"""featx.separation: k-NN (leave-one-out), silhouette, per-class margins, trustworthiness."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from featx.separation import (
    class_separation,
    embedding_space,
    knn_accuracy,
    knn_predict,
    separation_metrics,
    silhouette,
)


def _blobs(seed: int = 0, n: int = 40, gap: float = 8.0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [gap, 0.0], [4 * gap, 0.0]])
    y = np.repeat([0, 1, 2], n)
    X = np.concatenate([centres[y], rng.normal(0, 1, (3 * n, 6))], axis=1)
    X[:, :2] += rng.normal(0, 1, (3 * n, 2))
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_silhouette_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(150, 7))
    y = rng.integers(0, 4, 150)
    X[y == 2] += 1.5
    assert silhouette(X, y) == pytest.approx(silhouette_score(X, y), abs=1e-12)


def test_knn_leaves_each_point_out():
    # Points 0 and 1 coincide with different labels; with itself left out, each takes the other's.
    X = np.array([[0.0], [0.0], [10.0], [10.5]])
    y = np.array([0, 1, 2, 2])
    predicted = knn_predict(X, y, k=1)
    assert list(predicted[:2]) == [1, 0]
    assert list(predicted[2:]) == [2, 2]


def test_knn_tie_goes_to_the_nearest():
    # k=2: one neighbour of each class; the nearer one (class 1) wins.
    X = np.array([[0.0], [1.0], [3.0]])
    y = np.array([5, 1, 0])
    assert knn_predict(X, y, k=2)[0] == 1


def test_knn_accuracy_separable_and_mixed():
    X, y = _blobs()
    assert knn_accuracy(X, y) == 1.0
    shuffled = np.random.default_rng(0).permutation(y)
    assert knn_accuracy(X, shuffled) < 0.6


def test_class_separation_names_the_nearest_class():
    X, y = _blobs(gap=6.0)
    rows = {row["class"]: row for row in class_separation(X, y, ["a", "b", "far"])}
    assert rows["a"]["nearest_class"] == "b"
    assert rows["far"]["nearest_class"] == "b"
    assert rows["a"]["n"] == 40
    assert rows["far"]["margin"] > rows["a"]["margin"] > 0


def test_class_separation_negative_margin_when_overlapping():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    X[40:, 0] += 10  # class "apart" sits away; "mixed" and "also mixed" share one cloud
    y = np.array([0, 1] * 20 + [2] * 40)
    rows = {r["class"]: r for r in class_separation(X, y, ["mixed", "also mixed", "apart"])}
    assert rows["mixed"]["nearest_class"] == "also mixed"
    assert rows["mixed"]["margin"] < 0.05
    assert rows["apart"]["margin"] > 0.5


def test_separation_metrics_all_fields():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    X = np.array([[0, 0, 0, 0], [10, 0, 0, 0], [0, 10, 0, 0]])[y] + rng.normal(0, 1, (120, 4))
    metrics = separation_metrics(X, X[:, :2], y, ["a", "b", "c"], geometry="standardized")
    assert metrics["knn_accuracy"] == 1.0
    assert metrics["knn_accuracy_2d"] == 1.0
    assert metrics["silhouette"] > 0.3
    assert metrics["silhouette_2d"] > metrics["silhouette"]  # the noise dimensions are gone
    assert 0.7 < metrics["trustworthiness"] <= 1.0
    assert len(metrics["predicted"]) == len(y)
    assert [r["class"] for r in metrics["per_class"]] == ["a", "b", "c"]
    assert metrics["n"] == metrics["n_sampled"] == len(y)


def test_scrambled_map_is_untrustworthy():
    X, y = _blobs()
    rng = np.random.default_rng(0)
    good = separation_metrics(X, X[:, :2], y, ["a", "b", "c"])
    bad = separation_metrics(X, rng.normal(size=(len(X), 2)), y, ["a", "b", "c"])
    assert bad["trustworthiness"] < good["trustworthiness"] - 0.2
    assert bad["knn_accuracy_2d"] < 0.6


def test_large_sets_use_a_stratified_sample():
    X, y = _blobs(n=200)
    metrics = separation_metrics(X, X[:, :2], y, ["a", "b", "c"], max_samples=90)
    assert metrics["n"] == 600 and metrics["n_sampled"] == 90
    assert [r["n"] for r in metrics["per_class"]] == [30, 30, 30]
    assert len(metrics["predicted"]) == 600  # k-NN uses every point


def test_cosine_geometry_ignores_scale():
    X, y = _blobs()
    X = X + 50  # away from the origin, so directions differ by class
    tiny = separation_metrics(X * 1e-11, X[:, :2], y, ["a", "b", "c"])
    plain = separation_metrics(X, X[:, :2], y, ["a", "b", "c"])
    assert tiny["silhouette"] == pytest.approx(plain["silhouette"], abs=1e-6)
    assert tiny["knn_accuracy"] == plain["knn_accuracy"]
    np.testing.assert_allclose(np.linalg.norm(embedding_space(X), axis=1), 1.0)


def test_bad_input():
    X, y = _blobs()
    with pytest.raises(ValueError, match="same points: got 120, 119 and 120 rows"):
        separation_metrics(X, X[1:, :2], y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="geometry='manhattan' is not supported"):
        separation_metrics(X, X[:, :2], y, ["a", "b", "c"], geometry="manhattan")
    with pytest.raises(ValueError, match="at least 2 classes"):
        silhouette(X, np.zeros(len(X)))


def test_stratified_sample_keeps_a_class_of_three_among_100k():
    from featx.separation import stratified_sample

    y = np.concatenate([np.repeat(np.arange(5), 20_000), [9, 9, 9]])
    rows = stratified_sample(y, 1_000, seed=0)
    assert len(rows) == 1_000 and len(np.unique(rows)) == 1_000
    assert np.all(np.diff(rows) > 0)
    assert int((y[rows] == 9).sum()) == 3
    counts = np.bincount(y[rows])[:5]
    assert counts.min() >= 199 and counts.max() <= 200  # the rest shared in proportion
    np.testing.assert_array_equal(rows, stratified_sample(y, 1_000, seed=0))
    assert not np.array_equal(rows, stratified_sample(y, 1_000, seed=1))
    np.testing.assert_array_equal(stratified_sample(y[:50], 100), np.arange(50))
    with pytest.raises(ValueError, match="cannot keep all 6 classes"):
        stratified_sample(y, 5)


def test_knn_metrics_use_a_sample_above_max_knn():
    X, y = _blobs(n=200)
    metrics = separation_metrics(X, X[:, :2], y, ["a", "b", "c"], max_knn=150)
    assert metrics["n_knn"] == 150 and metrics["n"] == 600
    predicted = metrics["predicted"]
    assert int((predicted >= 0).sum()) == 150
    sampled = predicted >= 0
    assert metrics["knn_accuracy"] == round(float(np.mean(predicted[sampled] == y[sampled])), 4)
