"""featx.projection: seeded maps, out-of-sample transform, alignment, numba's disk cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.projection import Projector, align, project


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 8, (3, 16))
    y = np.repeat([0, 1, 2], 40)
    return centres[y] + rng.normal(0, 1, (120, 16)), y


@parametrize_with_checks([Projector(method="pca")])
def test_scikit_learn_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("method", ["umap", "pca", "tsne"])
def test_same_seed_same_map(blobs, method):
    X, _ = blobs
    first = project(X, method, seed=3).embedding_
    again = project(X, method, seed=3).embedding_
    assert first.shape == (len(X), 2)
    np.testing.assert_array_equal(first, again)


def test_umap_keeps_clusters_apart_and_places_new_points(blobs):
    X, y = blobs
    projector = project(X, "umap", seed=0)
    coords = projector.embedding_
    centres = np.array([coords[y == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(coords[y == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread
    # A new point near cluster 1's centre lands near cluster 1 on the map.
    new = X[y == 1].mean(axis=0, keepdims=True)
    placed = projector.transform(new)[0]
    nearest = np.argmin(np.linalg.norm(centres - placed, axis=1))
    assert nearest == 1


def test_pca_transform_matches_fit(blobs):
    X, _ = blobs
    projector = project(X, "pca")
    np.testing.assert_allclose(projector.transform(X), projector.embedding_, atol=1e-4)


def test_tsne_cannot_transform(blobs):
    X, _ = blobs
    projector = project(X[:40], "tsne")
    with pytest.raises(ValueError, match="t-SNE cannot place new points"):
        projector.transform(X[:3])


def test_bad_method():
    with pytest.raises(ValueError, match="Unknown projection method 'umpa'"):
        project(np.zeros((10, 3)), "umpa")


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 4 samples; got n_samples=3"):
        project(np.random.default_rng(0).normal(size=(3, 5)), "pca")


def test_transform_checks_dimension(blobs):
    X, _ = blobs
    projector = project(X, "pca")
    with pytest.raises(ValueError, match="X has 4 features, but Projector is expecting 16"):
        projector.transform(X[:, :4])


def test_tiny_sets_still_map():
    X = np.random.default_rng(1).normal(size=(6, 5))
    assert project(X, "umap").embedding_.shape == (6, 2)
    assert project(X, "tsne").embedding_.shape == (6, 2)


def test_align_undoes_rotation_reflection_scale_and_shift():
    a = np.random.default_rng(0).normal(size=(50, 2))
    reflect_rotate = np.array([[0.6, 0.8], [0.8, -0.6]])  # orthogonal, det -1
    moved = a @ reflect_rotate * 7.5 - 4.0
    np.testing.assert_allclose(align(a, moved), align(a, a), atol=1e-9)
    # Unit size and centred, whatever the input scale.
    aligned = align(a, moved)
    assert np.linalg.norm(aligned) == pytest.approx(1.0)
    np.testing.assert_allclose(aligned.mean(axis=0), 0.0, atol=1e-12)


def test_align_needs_the_same_points():
    with pytest.raises(ValueError, match="same points"):
        align(np.zeros((5, 2)), np.zeros((6, 2)))


@pytest.mark.parametrize(("setting", "expect_enabled"), [(None, True), ("0", False)])
def test_numba_disk_cache_is_switched_on_for_umap(tmp_path, monkeypatch, setting, expect_enabled):
    # smooth_knn_dist is one of umap-learn's njit functions that it does not cache itself.
    code = (
        "import featx.projection as p, umap.umap_ as u\n"
        "print(p.enable_numba_cache(), type(u.smooth_knn_dist._cache).__name__)\n"
    )
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    if setting is None:
        monkeypatch.delenv("FEATX_NUMBA_CACHE", raising=False)
    else:
        monkeypatch.setenv("FEATX_NUMBA_CACHE", setting)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    count, cache_kind = done.stdout.split()[-2:]
    if expect_enabled:
        assert int(count) > 50
        assert cache_kind == "FunctionCache"
    else:
        assert int(count) == 0
        assert cache_kind == "NullCache"


def test_max_fit_fits_a_stratified_sample_and_places_the_rest(blobs):
    from sklearn.decomposition import PCA

    X, y = blobs
    projector = Projector("pca", max_fit=30, standardize=False).fit(X, y)
    assert projector.embedding_.shape == (120, 2)
    assert len(projector.fit_rows_) == 30
    assert sorted(np.unique(y[projector.fit_rows_])) == [0, 1, 2]  # every class on the map
    # The fitted rows' map is a fit on those rows alone; the others are transformed onto it.
    reference = PCA(n_components=2, random_state=0).fit(X[projector.fit_rows_])
    np.testing.assert_allclose(projector.embedding_, reference.transform(X), rtol=1e-4, atol=1e-4)
    again = Projector("pca", max_fit=30, standardize=False).fit(X, y)
    np.testing.assert_array_equal(again.fit_rows_, projector.fit_rows_)  # seeded


def test_max_fit_umap_maps_every_point(blobs):
    X, y = blobs
    coords = project(X, "umap", seed=0, y=y, max_fit=60).embedding_
    assert coords.shape == (120, 2) and np.isfinite(coords).all()
    centres = np.array([coords[y == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(coords[y == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a, b in [(0, 1), (0, 2), (1, 2)]]
    assert min(gaps) > 2 * spread  # the transformed points land in their own clusters


def test_max_fit_errors(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="t-SNE cannot"):
        Projector("tsne", max_fit=50).fit(X)
    with pytest.raises(ValueError, match="max_fit=2 must be None or an integer >= 4"):
        Projector("pca", max_fit=2).fit(X)
    with pytest.raises(ValueError, match="one label a sample"):
        Projector("pca", max_fit=50).fit(X, y[:10])
    assert len(Projector("pca", max_fit=500).fit(X).fit_rows_) == 120  # under budget: all
