"""Separation metrics: how well a representation keeps classes apart.

Computed per backbone (or layer) in the full embedding space and in its 2-D map:

- k-NN accuracy (leave-one-out): each image is labelled by the majority of its k nearest
  other images. High when classes form their own neighbourhoods.
- silhouette: for each image, (b - a) / max(a, b), where a is its mean distance to its own
  class and b to the nearest other class; averaged. From -1 (mixed) to 1 (separate).
- trustworthiness of the map (``sklearn.manifold.trustworthiness``): how far the 2-D
  neighbours of each point are also its neighbours in the full space; 1 is perfect.
- centroid accuracy (leave-one-out): each image labelled by the nearest class mean.
- per class: the nearest other class (smallest mean distance) and the margin (the class's
  mean silhouette against it: above 0, its images sit closer to each other than to that class).

In the full space, distances follow the cosine geometry usual for CNN embeddings: rows are
scaled to unit length, and the Euclidean (chord) distance between unit vectors orders
neighbours exactly as cosine distance does. It ignores each backbone's overall feature
scale (randomly initialised networks output values near 1e-11). ``geometry="standardized"``
uses Euclidean distance on standardised features instead. Quadratic-cost metrics run on a
seeded, stratified sample above ``max_samples``; the result says how many points each used.

:data:`METRICS` is the one list of these metrics: their names, headings, help and
computation. The report page, the figure and ``featx report`` read it, so a new metric
is one :class:`Metric` entry.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(6, 1, (30, 5))])
>>> y = np.repeat([0, 1], 30)
>>> knn_accuracy(X, y)
1.0
>>> round(silhouette(X, y), 2) > 0.5
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

__all__ = [
    "GEOMETRIES",
    "METRICS",
    "METRIC_HELP",
    "METRIC_NAMES",
    "PER_CLASS_HELP",
    "Metric",
    "Space",
    "centroid_accuracy",
    "class_separation",
    "embedding_space",
    "format_metric",
    "headline",
    "knn_accuracy",
    "knn_predict",
    "separation_metrics",
    "silhouette",
    "stratified_sample",
]


@dataclass(frozen=True)
class Metric:
    """One separation metric: how it is computed, named and shown.

    The page's table, its panel titles, the figure's titles and ``featx report``'s
    table all read :data:`METRICS`: a new metric is one entry there.

    Attributes
    ----------
    name : str
        Its key in :func:`separation_metrics`' result and ``--json``.
    short : str
        Its heading in titles and tables.
    help : str
        One sentence for the page's legend.
    compute : callable
        ``compute(space)`` -> float or None, from a :class:`Space`.
    headline : bool
        Shown in every panel's title (page and figure).
    """

    name: str
    short: str
    help: str
    compute: Callable[[Space], float | None]
    headline: bool = False


@dataclass
class Space:
    """What a metric sees of one representation: full space, map, labels, samples."""

    X: np.ndarray  # (n, d) in the metrics' geometry (unit-length rows for "cosine")
    coords: np.ndarray  # (n, 2)
    y: np.ndarray  # (n,) labels
    k: int
    knn_rows: np.ndarray  # rows of the k-NN metrics (all, or a stratified sample)
    predicted: np.ndarray  # leave-one-out k-NN label of every knn row, -1 elsewhere
    sample: np.ndarray  # rows of the O(n^2) metrics

    @property
    def several(self) -> bool:
        return len(np.unique(self.y[self.sample])) > 1


def _knn(space: Space) -> float:
    rows = space.knn_rows
    return float(np.mean(space.predicted[rows] == space.y[rows]))


def _knn_2d(space: Space) -> float:
    rows = space.knn_rows
    return knn_accuracy(space.coords[rows], space.y[rows], space.k)


def _silhouette_full(space: Space) -> float | None:
    s = space.sample
    return silhouette(space.X[s], space.y[s]) if space.several else None


def _silhouette_map(space: Space) -> float | None:
    s = space.sample
    return silhouette(space.coords[s], space.y[s]) if space.several else None


def _trust(space: Space) -> float:
    from sklearn.manifold import trustworthiness

    s = space.sample
    k = max(1, min(space.k, len(s) // 2 - 1))
    return float(trustworthiness(space.X[s], space.coords[s], n_neighbors=k))


def _centroid(space: Space) -> float | None:
    rows = space.knn_rows
    return centroid_accuracy(space.X[rows], space.y[rows]) if space.several else None


METRICS: tuple[Metric, ...] = (
    Metric(
        "knn_accuracy",
        "k-NN",
        "Leave-one-out k-NN accuracy in the full embedding space (cosine): each image "
        "labelled by the majority of its k nearest other images.",
        _knn,
        headline=True,
    ),
    Metric(
        "knn_accuracy_2d",
        "k-NN 2-D",
        "The same k-NN accuracy on the 2-D map: how much class structure the picture keeps.",
        _knn_2d,
    ),
    Metric(
        "silhouette",
        "silhouette",
        "Mean silhouette in the full space (unit-length embeddings), from -1 (classes "
        "mixed) to 1 (compact, well-separated classes); near 0 is usual in high "
        "dimensions, so compare backbones with each other.",
        _silhouette_full,
        headline=True,
    ),
    Metric("silhouette_2d", "silhouette 2-D", "Mean silhouette on the 2-D map.", _silhouette_map),
    Metric(
        "trustworthiness",
        "trust",
        "How far each point's neighbours on the map are also its neighbours in the full "
        "space (1 = the map invents no false neighbours).",
        _trust,
        headline=True,
    ),
    Metric(
        "centroid_accuracy",
        "centroid",
        "Leave-one-out nearest-class-mean accuracy in the full space (cosine): each image "
        "labelled by the class whose mean embedding (without it) is closest. High when "
        "classes are single compact blobs; below k-NN when a class has several modes.",
        _centroid,
        headline=True,
    ),
)
METRIC_NAMES = tuple(m.name for m in METRICS)
PER_CLASS_HELP = {
    "nearest_class": "Per class: the other class whose images are, on average, closest.",
    "margin": "Per class: mean silhouette against that nearest class; above 0 the class "
    "keeps to itself, below 0 it overlaps.",
}
# Every name a report explains: the metrics, then the per-class columns.
METRIC_HELP = {**{m.name: m.help for m in METRICS}, **PER_CLASS_HELP}


def format_metric(value: Any) -> str:
    """A metric as tables show it: three decimals, or "-" where it is undefined."""
    return "-" if value is None else f"{value:.3f}"


def headline(metrics: dict[str, Any], separator: str = " | ") -> str:
    """The panel-title line of a panel's metrics: its headline metrics, in table order."""
    return separator.join(
        f"{m.short} {format_metric(metrics.get(m.name))}" for m in METRICS if m.headline
    )


DEFAULT_K = 5
MAX_SAMPLES = 5000
# Exact k-NN in 1280-d costs n^2 distances: 20,000 points take about 10 s, 200,000 would
# take about 1,000 s on these 2-core machines; above this, the k-NN metrics use a sample.
MAX_KNN = 20_000
MIN_PER_CLASS = 50


def knn_predict(X: Any, y: Any, k: int = DEFAULT_K) -> np.ndarray:
    """Leave-one-out k-NN predictions: each row labelled by its k nearest *other* rows.

    Ties between classes go to the class of the nearest neighbour among the tied ones.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if len(X) < 2:
        raise ValueError(f"k-NN needs at least 2 samples; got {len(X)}.")
    k = max(1, min(k, len(X) - 1))
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    rows = np.arange(len(X))
    # Drop each row itself; with exact duplicates it may not come first.
    is_self = neighbours == rows[:, None]
    keep = np.where(is_self.any(axis=1)[:, None], ~is_self, np.arange(k + 1) < k)
    neighbours = neighbours[keep].reshape(len(X), k)
    labels = y[neighbours]
    predicted = np.empty(len(X), dtype=y.dtype)
    for i, row in enumerate(labels):
        values, counts = np.unique(row, return_counts=True)
        tied = values[counts == counts.max()]
        predicted[i] = row[np.isin(row, tied)][0]  # the nearest of the tied classes
    return predicted


def knn_accuracy(X: Any, y: Any, k: int = DEFAULT_K) -> float:
    """Leave-one-out k-NN accuracy (see :func:`knn_predict`)."""
    return float(np.mean(knn_predict(X, y, k) == np.asarray(y)))


def centroid_accuracy(X: Any, y: Any) -> float:
    """Leave-one-out nearest-class-mean accuracy with cosine similarity.

    Each row is labelled by the class whose mean (of the other rows: its own class's mean
    leaves it out) has the highest cosine similarity to it. A row alone in its class can
    only be labelled with another class.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    >>> centroid_accuracy(X, [0, 0, 1, 1])
    1.0
    """
    from sklearn.preprocessing import normalize

    X = normalize(np.asarray(X, dtype=np.float64))
    values, codes = np.unique(np.asarray(y), return_inverse=True)
    if len(values) < 2:
        raise ValueError("The centroid accuracy needs at least 2 classes.")
    onehot = np.zeros((len(X), len(values)))
    onehot[np.arange(len(X)), codes] = 1.0
    sums = onehot.T @ X  # (classes, d)
    centroids = normalize(sums)
    similarity = X @ centroids.T  # every row against every class's full mean
    own = sums[codes] - X  # its class's sum without itself
    norms = np.linalg.norm(own, axis=1)
    alone = norms < 1e-12
    similarity[np.arange(len(X)), codes] = np.where(
        alone, -np.inf, np.einsum("ij,ij->i", X, own) / np.where(alone, 1.0, norms)
    )
    return float(np.mean(similarity.argmax(axis=1) == codes))


def _class_distances(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes): each row's mean distance to every class's points (itself included)."""
    onehot = np.zeros((len(X), n_classes))
    onehot[np.arange(len(X)), y] = 1.0
    sums = np.concatenate(
        [chunk @ onehot for chunk in pairwise_distances_chunked(X, n_jobs=1)], axis=0
    )
    return sums / np.maximum(onehot.sum(axis=0), 1.0)


def _silhouette_parts(X: np.ndarray, y: np.ndarray, n_classes: int):
    means = _class_distances(X, y, n_classes)
    counts = np.bincount(y, minlength=n_classes)
    own = counts[y]
    a = means[np.arange(len(X)), y] * own / np.maximum(own - 1, 1)  # leave itself out
    others = means.copy()
    others[np.arange(len(X)), y] = np.inf
    others[:, counts == 0] = np.inf
    b = others.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(own > 1, (b - a) / np.maximum(a, b), 0.0)  # singletons score 0
    return np.nan_to_num(s), means, counts


def silhouette(X: Any, y: Any) -> float:
    """Mean silhouette with Euclidean distance (equal to ``sklearn.metrics.silhouette_score``)."""
    y = np.asarray(y)
    _, codes = np.unique(y, return_inverse=True)
    if len(np.unique(codes)) < 2:
        raise ValueError("The silhouette needs at least 2 classes.")
    s, _, _ = _silhouette_parts(np.asarray(X, dtype=np.float64), codes, int(codes.max()) + 1)
    return float(s.mean())


def class_separation(X: Any, y: Any, classes: list[str]) -> list[dict[str, Any]]:
    """Per class: its nearest other class, the margin against it, and its size.

    ``y`` holds integer labels indexing ``classes``. The margin is the class's mean
    silhouette computed against its nearest class: (b - a) / max(a, b) per image, with a the
    mean distance to its own class and b the mean distance to the nearest class's images.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    n_classes = len(classes)
    _, means, counts = _silhouette_parts(X, y, n_classes)
    rows = []
    for c, name in enumerate(classes):
        members = y == c
        if not members.any():
            continue
        centre = means[members].mean(axis=0)
        centre[c] = np.inf
        centre[counts == 0] = np.inf
        if not np.isfinite(centre).any():
            rows.append(
                {"class": name, "n": int(members.sum()), "nearest_class": None, "margin": None}
            )
            continue
        nearest = int(np.argmin(centre))
        own = counts[c]
        a = means[members, c] * own / max(own - 1, 1)
        b = means[members, nearest]
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(own > 1, (b - a) / np.maximum(a, b), 0.0)
        rows.append(
            {
                "class": name,
                "n": int(members.sum()),
                "nearest_class": classes[nearest],
                "margin": round(float(np.nan_to_num(s).mean()), 4),
            }
        )
    return rows


GEOMETRIES = ("cosine", "standardized")


def embedding_space(X: Any, geometry: str = "cosine") -> np.ndarray:
    """X as the metrics see it: unit-length rows (``"cosine"``) or standardised columns."""
    from sklearn.preprocessing import normalize

    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is not supported. Expected one of {GEOMETRIES}.")
    X = np.asarray(X, dtype=np.float64)
    return normalize(X) if geometry == "cosine" else StandardScaler().fit_transform(X)


def separation_metrics(
    X: Any,
    coords: Any,
    y: Any,
    classes: list[str],
    *,
    geometry: str = "cosine",
    k: int = DEFAULT_K,
    max_samples: int = MAX_SAMPLES,
    max_knn: int = MAX_KNN,
    seed: int = 0,
) -> dict[str, Any]:
    """All separation metrics of one representation and its 2-D map.

    Parameters
    ----------
    X : array-like (n, d)
        Embeddings, as extracted.
    coords : array-like (n, 2)
        Their map (e.g. :class:`~featx.projection.Projector`'s ``embedding_``).
    y : array-like (n,)
        Integer labels indexing ``classes``.
    classes : list of str
    geometry : {"cosine", "standardized"}, default "cosine"
        Distances in the full space (see the module's description).
    k : int, default 5
        Neighbours for k-NN accuracy and trustworthiness.
    max_samples : int, default 5000
        Silhouettes, per-class margins and trustworthiness cost O(n^2): above this many
        points they use a seeded, stratified sample of this size.
    max_knn : int, default 20000
        Above this many points, both k-NN accuracies are leave-one-out within a seeded
        sample of this size that keeps every class (:func:`stratified_sample`); a sparser
        sample has farther neighbours, so the accuracy may read a little lower than over
        all points. ``predicted`` is then -1 outside the sample.
    seed : int, default 0

    Returns
    -------
    dict
        One value per :data:`METRICS` entry (``knn_accuracy``, ``knn_accuracy_2d``,
        ``silhouette``, ``silhouette_2d``, ``trustworthiness``, ``centroid_accuracy``;
        ``None`` where undefined), ``per_class`` (list of dicts), ``predicted`` (the leave-one-out
        k-NN label of every point, full space), ``k``, ``n``, ``n_sampled``, ``n_knn``
        (points the k-NN metrics used).
    """
    X = embedding_space(X, geometry)
    coords = np.asarray(coords, dtype=np.float64)
    y = np.asarray(y)
    if len(X) != len(coords) or len(X) != len(y):
        raise ValueError(
            f"X, coords and y must describe the same points: got {len(X)}, {len(coords)} "
            f"and {len(y)} rows."
        )
    knn_rows = np.arange(len(y)) if len(y) <= max_knn else stratified_sample(y, max_knn, seed)
    predicted = np.full(len(y), -1, dtype=np.int64 if y.dtype.kind in "iu" else y.dtype)
    predicted[knn_rows] = knn_predict(X[knn_rows], y[knn_rows], k)
    if len(knn_rows) == len(y):
        predicted = predicted.astype(y.dtype)
    sample = stratified_sample(y, max_samples, seed)
    space = Space(X, coords, y, k, knn_rows, predicted, sample)
    values = {}
    for metric in METRICS:
        value = metric.compute(space)
        values[metric.name] = None if value is None else round(float(value), 4)
    return {
        **values,
        "per_class": class_separation(X[sample], y[sample], classes),
        "predicted": predicted,
        "k": k,
        "n": len(X),
        "n_sampled": len(sample),
        "n_knn": len(knn_rows),
    }


def stratified_sample(
    y: Any, size: int, seed: int = 0, *, min_per_class: int = MIN_PER_CLASS
) -> np.ndarray:
    """Sorted row indices of a seeded sample of ``size`` rows that keeps every class.

    Each class keeps ``min(its count, min_per_class)`` rows (so a class of 3 among 100,000
    stays visible), and the rest of the budget is shared in proportion to what each class
    has left. All rows when ``len(y) <= size``.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0] * 1000 + [1] * 3)
    >>> rows = stratified_sample(y, 100, seed=0)
    >>> len(rows), int((y[rows] == 1).sum())
    (100, 3)
    """
    y = np.asarray(y)
    n = len(y)
    if n <= size:
        return np.arange(n)
    values, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    if size < len(values):
        raise ValueError(
            f"A sample of {size} rows cannot keep all {len(values)} classes. Pass a budget "
            f"of at least {len(values)} rows."
        )
    floor = np.minimum(counts, max(1, min(min_per_class, size // len(values))))
    spare = counts - floor
    share = (size - floor.sum()) * spare / max(spare.sum(), 1)
    extra = np.floor(share).astype(np.int64)
    short = size - floor.sum() - extra.sum()  # largest remainders get one more row
    extra[np.argsort(-(share - extra), kind="stable")[:short]] += 1
    take = np.minimum(floor + extra, counts)
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picked = [
        order[start + rng.choice(count, want, replace=False)]
        for start, count, want in zip(starts, counts, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))
