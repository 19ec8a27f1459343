"""Projection: 2-D maps of embeddings with UMAP (umap-learn), PCA or t-SNE (scikit-learn).

A :class:`Projector` is a scikit-learn transformer: ``fit`` learns the map of a set of
embeddings (``embedding_`` holds their coordinates), ``transform`` places new points on it
(UMAP and PCA; t-SNE has no out-of-sample transform). Features are standardised first, as
the heads do, so that backbones whose features differ in scale by orders of magnitude
(randomly initialised networks) map alike. A seed makes every method reproducible.

UMAP runs on numba, which compiles its functions on first use: about 15-20 s per process
on these 2-core machines. umap-learn does not ask numba to keep most of that work on disk,
so :func:`enable_numba_cache` turns numba's own on-disk cache on for umap-learn and
pynndescent; a second process then loads the compiled code instead of compiling again
(measured by ``benchmarks/report_rerun.py``).

Examples
--------
>>> import numpy as np
>>> from featx.projection import project
>>> X = np.random.default_rng(0).normal(size=(60, 8))
>>> projector = project(X, method="pca", seed=0)
>>> projector.embedding_.shape
(60, 2)
>>> projector.transform(X[:5]).shape
(5, 2)
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["METHODS", "Projector", "align", "enable_numba_cache", "project"]

METHODS = ("umap", "pca", "tsne")
MIN_SAMPLES = 4
_TRANSFORM_CHUNK = 20_000  # rows placed per transform call under max_fit


class Projector(TransformerMixin, BaseEstimator):
    """A seeded low-dimensional map of embeddings.

    Parameters
    ----------
    method : {"umap", "pca", "tsne"}, default "umap"
        umap-learn's UMAP, or scikit-learn's PCA or TSNE.
    n_components : int, default 2
        Dimension of the map.
    standardize : bool, default True
        Scale each feature to zero mean and unit variance first.
    n_neighbors : int, default 15
        UMAP's neighbourhood size (lowered for fewer samples).
    min_dist : float, default 0.1
        UMAP's minimum distance between mapped points.
    metric : str, default "euclidean"
        Distance in the embedding space (UMAP and t-SNE).
    perplexity : float, default 30.0
        t-SNE's perplexity (lowered for fewer samples).
    random_state : int, default 0
        Seed; the same seed and data give the same map.
    max_fit : int, optional
        Above this many samples, fit the map on a seeded sample of ``max_fit`` of them
        (stratified by ``y`` if ``fit`` is given labels, every class kept) and place the
        others with ``transform``, in chunks. The way to map hundreds of thousands of
        points in bounded time and memory (UMAP and PCA; t-SNE cannot place new points).
        ``benchmarks/umap_scale.py`` measures what it costs in trustworthiness.

    Attributes
    ----------
    embedding_ : ndarray of shape (n_samples, n_components)
        The coordinates of the fitted samples.
    fit_rows_ : ndarray
        Indices of the samples the map was fitted on (all of them without ``max_fit``).
    n_features_in_ : int
        Embedding dimension seen in ``fit``.
    """

    def __init__(
        self,
        method: str = "umap",
        n_components: int = 2,
        standardize: bool = True,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "euclidean",
        perplexity: float = 30.0,
        random_state: int = 0,
        max_fit: int | None = None,
    ) -> None:
        self.method = method
        self.n_components = n_components
        self.standardize = standardize
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.perplexity = perplexity
        self.random_state = random_state
        self.max_fit = max_fit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # maps are float32, whatever goes in
        return tags

    def fit(self, X: Any, y: Any = None) -> Projector:
        """Learn the map of ``X`` (n_samples, n_features).

        ``y`` is used only to stratify the ``max_fit`` sample, so every class is on the
        fitted map; without it the sample is uniform.
        """
        if self.method not in METHODS:
            raise ValueError(
                f"Unknown projection method {self.method!r}. Expected one of: {', '.join(METHODS)}."
            )
        X = validate_data(self, X, dtype=np.float64)
        if len(X) < MIN_SAMPLES:
            raise ValueError(
                f"A projection needs at least {MIN_SAMPLES} samples; got n_samples={len(X)}. "
                "Pass more images."
            )
        self.fit_rows_ = self._fit_rows(len(X), y)
        self.scaler_ = StandardScaler().fit(X[self.fit_rows_]) if self.standardize else None
        self.model_ = self._make_model(len(self.fit_rows_))
        coords = self._fit_model(self._scale(X[self.fit_rows_]))
        if len(self.fit_rows_) == len(X):
            self.embedding_ = coords
            return self
        self.embedding_ = np.empty((len(X), coords.shape[1]), dtype=np.float32)
        self.embedding_[self.fit_rows_] = coords
        rest = np.setdiff1d(np.arange(len(X)), self.fit_rows_)
        for start in range(0, len(rest), _TRANSFORM_CHUNK):
            rows = rest[start : start + _TRANSFORM_CHUNK]
            self.embedding_[rows] = self._transform(X[rows])
        return self

    def _fit_rows(self, n: int, y: Any) -> np.ndarray:
        if self.max_fit is None or n <= self.max_fit:
            return np.arange(n)
        if (
            isinstance(self.max_fit, bool)
            or not isinstance(self.max_fit, numbers.Integral)
            or (self.max_fit < MIN_SAMPLES)
        ):
            raise ValueError(
                f"max_fit={self.max_fit!r} must be None or an integer >= {MIN_SAMPLES}."
            )
        if self.method == "tsne":
            raise ValueError(
                f"max_fit={self.max_fit} needs a method that places new points on a fitted "
                f"map, and t-SNE cannot ({n} samples given). Use method='umap' or 'pca', or "
                "max_fit=None to fit t-SNE on every point."
            )
        if y is None:
            rng = np.random.default_rng(self.random_state)
            return np.sort(rng.choice(n, int(self.max_fit), replace=False))
        from featx.separation import stratified_sample

        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"y has {len(y)} labels for {n} samples; pass one label a sample.")
        return stratified_sample(y, int(self.max_fit), seed=self.random_state)

    def _fit_model(self, Z: np.ndarray) -> np.ndarray:
        if self.method == "umap":
            with warnings.catch_warnings():
                # "n_jobs value 1 overridden to 1 by setting random_state": the seed we asked for.
                warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random")
                return np.asarray(self.model_.fit_transform(Z), dtype=np.float32)
        return np.asarray(self.model_.fit_transform(Z), dtype=np.float32)

    def transform(self, X: Any) -> np.ndarray:
        """Place new embeddings on the fitted map (UMAP and PCA)."""
        check_is_fitted(self, "embedding_")
        if self.method == "tsne":
            raise ValueError(
                "t-SNE cannot place new points on a fitted map. Refit on all points, or use "
                'method="umap" or method="pca", which can.'
            )
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._transform(X)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random")
            return np.asarray(self.model_.transform(self._scale(X)), dtype=np.float32)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit and return the fitted coordinates (``embedding_``)."""
        return self.fit(X, y).embedding_

    def _scale(self, X: np.ndarray) -> np.ndarray:
        return X if self.scaler_ is None else self.scaler_.transform(X)

    def _make_model(self, n_samples: int):
        if self.method == "pca":
            from sklearn.decomposition import PCA

            return PCA(n_components=self.n_components, random_state=self.random_state)
        if self.method == "tsne":
            from sklearn.manifold import TSNE

            return TSNE(
                n_components=self.n_components,
                perplexity=min(self.perplexity, (n_samples - 1) / 3),
                metric=self.metric,
                init="pca",
                random_state=self.random_state,
            )
        enable_numba_cache()
        import umap

        return umap.UMAP(
            n_components=self.n_components,
            n_neighbors=max(2, min(self.n_neighbors, n_samples - 1)),
            min_dist=self.min_dist,
            metric=self.metric,
            # Spectral initialisation needs more points than components + 1.
            init="spectral" if n_samples > 2 * (self.n_components + 1) else "random",
            random_state=self.random_state,
        )


def project(
    embeddings: Any,
    method: str = "umap",
    *,
    n_components: int = 2,
    seed: int = 0,
    y: Any = None,
    **params: Any,
) -> Projector:
    """Fit a :class:`Projector` on embeddings and return it (coordinates in ``embedding_``).

    Parameters
    ----------
    embeddings : Embeddings or array-like of shape (n_samples, n_features)
        A :class:`~featx.Embeddings` (its ``X`` is used) or a matrix.
    method : {"umap", "pca", "tsne"}, default "umap"
    n_components : int, default 2
    seed : int, default 0
        ``random_state`` of the method.
    **params
        Other :class:`Projector` parameters (``n_neighbors``, ``min_dist``, ``metric``,
        ``perplexity``, ``standardize``, ``max_fit``).
    y : array-like, optional
        Labels, to stratify the ``max_fit`` sample (default: ``embeddings.y`` if any).

    Returns
    -------
    Projector
        Fitted; ``.embedding_`` holds the map, ``.transform`` places new points.
    """
    X = getattr(embeddings, "X", embeddings)
    y = getattr(embeddings, "y", None) if y is None else y
    return Projector(method, n_components=n_components, random_state=seed, **params).fit(X, y)


def align(reference: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Rotate, reflect, scale and shift ``coords`` onto ``reference`` (orthogonal Procrustes).

    Both are maps of the same points in the same order. Each is centred and scaled to
    unit size, then ``coords`` is turned by the orthogonal matrix that best matches
    ``reference``, so that the same image sits in a comparable place in both panels.
    The shapes inside a map are unchanged (only rigid motion and uniform scaling).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).normal(size=(20, 2))
    >>> turned = a @ np.array([[0.0, -1.0], [1.0, 0.0]]) * 5 + 3
    >>> bool(np.allclose(align(a, turned), align(a, a), atol=1e-9))
    True
    """
    from scipy.linalg import orthogonal_procrustes

    reference = np.asarray(reference, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64)
    if reference.shape != coords.shape:
        raise ValueError(
            f"align() needs two maps of the same points: shapes {reference.shape} and "
            f"{coords.shape} differ."
        )
    ref = _normalised(reference)
    moved = _normalised(coords)
    rotation, _ = orthogonal_procrustes(moved, ref)
    return moved @ rotation


def _normalised(coords: np.ndarray) -> np.ndarray:
    centred = coords - coords.mean(axis=0)
    size = np.linalg.norm(centred)
    return centred / size if size > 0 else centred


_NUMBA_CACHE_ENABLED = False


def enable_numba_cache() -> int:
    """Keep umap-learn's and pynndescent's numba-compiled code on disk between processes.

    Most of their ``@numba.njit`` functions are not declared ``cache=True``, so every new
    process compiled them again (15-20 s here). This turns on numba's own file cache for
    those functions (in ``__pycache__`` beside the source, or ``$NUMBA_CACHE_DIR``; numba
    keys entries by source file, signature and CPU, and recompiles when any changes).
    Set ``FEATX_NUMBA_CACHE=0`` to leave numba as it is. Returns the number of functions
    whose caching was turned on.
    """
    global _NUMBA_CACHE_ENABLED
    if _NUMBA_CACHE_ENABLED or os.environ.get("FEATX_NUMBA_CACHE", "1") == "0":
        return 0
    import umap  # noqa: F401  (loads the modules whose functions are cached)
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    enabled = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, CPUDispatcher) and isinstance(value._cache, NullCache):
                try:
                    value.enable_caching()
                except RuntimeError:  # no writable place for this file's cache: leave it
                    continue
                enabled += 1
    _NUMBA_CACHE_ENABLED = True
    return enabled
