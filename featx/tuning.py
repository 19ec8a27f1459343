"""Automatic search for a better representation from the same frozen network.

:func:`tune` searches a small space (input size, or several sizes concatenated;
test-time views; pooling; train-time augmentation; head and its regularisation),
chooses on data that the final score never sees, refits the best pipeline, and
reports every configuration tried with its cost.

Embeddings are extracted once per (input size, view, augmented copy), as ordinary
cache entries, always with ``pooling="avg+max"``: the ``"avg"`` and ``"max"``
embeddings are the two halves of that vector (bit-identical to extracting them
alone), so a pooling costs no second forward pass, and any later search reads every
pooling back from the cache. Every configuration is then assembled from these
blocks in memory, and a second run reads everything from the cache.

Protocols, chosen by the data given (as :func:`featx.evaluation.evaluate` does):

``"train-validation-test"``
    every configuration and head parameter is fitted on train and scored on
    validation; the best is refitted on train + validation and scored on test, once.
``"train-test"``
    selection by inner cross-validation on train; the best refitted on train, scored
    on test once.
``"nested-cv"``
    a single labelled source. In each of ``cv`` outer folds the whole search runs by
    inner cross-validation on the outer training part, its winner is refitted there
    and scored on the outer test fold: the mean over folds is the honest score of
    *tuning*. Every configuration is also refitted and scored per outer fold (its
    ``outer_accuracy``), for comparison, but never used to choose. The returned
    pipeline is the configuration with the best inner score averaged over the outer
    folds, refitted on all the data.

Augmented copies are grouped with their original image: a copy is always on the
same side of every split as its original, and only originals are scored.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from featx.augment import Compose, View, resolve_augment, resolve_tta, view_label
from featx.backbones import Backbone, resolve_backbone
from featx.extract import Extractor
from featx.heads import default_grid, make_head, resolve_grid

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

__all__ = ["DEFAULT_SPACE", "TuneResult", "grouped_folds", "stack_copies", "tune"]

DEFAULT_SPACE: dict[str, list[Any]] = {
    "input_size": [160, 224, [160, 224]],
    "tta": [None, "flip"],
    "pooling": ["avg", "avg+max"],
    "augment": [None],
    "head": ["logreg", "svm"],
}
INNER_FOLDS = 3


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per configuration x head: ``name``, ``input_size``, ``tta``,
        ``pooling``, ``augment``, ``head``, ``params`` (the head parameters chosen for
        it, JSON text; under nested CV each parameter lists its value chosen in every
        outer fold, e.g. ``{"clf__C": [0.001, 0.003, ...]}``), ``score`` (validation
        accuracy, or mean inner-CV accuracy),
        ``outer_accuracy`` (nested CV only: mean over outer folds, NaN otherwise),
        ``dim``, ``ms_per_image`` (extraction cost per image, every size, view and
        copy included), ``fit_seconds``, ``baseline`` and ``best`` (booleans).
    best : dict
        The chosen configuration: the keys of the space, and ``params``.
    protocol : str
    accuracy : float
        The final score of tuning: test accuracy of the refitted best pipeline, or the
        mean outer-fold accuracy under nested CV.
    accuracy_std : float or None
        Standard deviation over outer folds (nested CV), else ``None``.
    baseline_accuracy : float
        The same score for the baseline configuration (the first value of every
        dimension of the space), with its head parameters chosen the same way.
    pipeline : sklearn.pipeline.Pipeline
        ``EmbeddingTransformer`` + head, refitted on all the non-test data.
    folds : list of dict
        Nested CV only: each outer fold's winner and score.
    seconds : float
        Wall time of the whole search.
    """

    results: pd.DataFrame
    best: dict[str, Any]
    protocol: str
    accuracy: float
    accuracy_std: float | None
    baseline_accuracy: float
    pipeline: Pipeline
    classes: list[str]
    folds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what ``featx tune --json`` prints."""
        from featx.evaluation import _jsonable

        return _jsonable(
            {
                "protocol": self.protocol,
                "best": self.best,
                "accuracy": self.accuracy,
                "accuracy_std": self.accuracy_std,
                "baseline_accuracy": self.baseline_accuracy,
                "gain": self.accuracy - self.baseline_accuracy,
                "classes": self.classes,
                "folds": self.folds,
                "seconds": round(self.seconds, 2),
                "results": json.loads(self.results.to_json(orient="records")),
            }
        )


@dataclass(frozen=True)
class _Config:
    input_size: tuple[Any, ...]
    tta: str | None
    pooling: str
    augment: int | None
    head: str

    @property
    def features(self) -> tuple[Any, ...]:
        return (self.input_size, self.tta, self.pooling, self.augment)

    @property
    def name(self) -> str:
        sizes = "+".join(str(s) for s in self.input_size)
        parts = [f"{sizes}px", self.pooling, f"tta={self.tta or 'none'}"]
        if self.augment:
            parts.append(f"aug={self.augment}")
        return " ".join([*parts, self.head])

    def as_dict(self) -> dict[str, Any]:
        sizes = list(self.input_size)
        return {
            "input_size": sizes[0] if len(sizes) == 1 else sizes,
            "tta": self.tta,
            "pooling": self.pooling,
            "augment": self.augment,
            "head": self.head,
        }


def tune(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    backbone: str | Any = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    space: Mapping[str, Sequence[Any]] | None = None,
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    cv: int = 5,
    inner_cv: int = INNER_FOLDS,
    resize: str = "stretch",
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    log: Any = None,
) -> TuneResult:
    """Search input size, test-time views, pooling, augmentation and head; refit the best.

    Parameters
    ----------
    source, train, validation, test
        The data, as for :func:`featx.evaluation.evaluate`: a dataset root with
        ``train/``, ``validation/`` and ``test/``, one class-per-folder source (nested
        cross-validation), or explicit splits.
    backbone, weights
        One network, as for :class:`~featx.Extractor`.
    space : dict, optional
        Values to search per dimension; missing keys take :data:`DEFAULT_SPACE`'s:
        ``input_size`` (ints, or lists of ints to concatenate), ``tta`` (None, "flip",
        "crop", "flip+crop"), ``pooling`` ("avg", "max", "avg+max"), ``augment``
        (None or a number of seeded copies, see :class:`featx.augment.AugmentPolicy`)
        and ``head`` (:func:`~featx.heads.make_head` kinds). The first value of every
        dimension is the *baseline*.
    grids : dict, optional
        Head parameter grid per head kind, e.g. ``{"logreg": {"clf__C": [0.01, 0.1]}}``
        (default: :func:`~featx.heads.default_grid`).
    cv : int, default 5
        Outer folds (single-source protocol only).
    inner_cv : int, default 3
        Folds of the inner, group-aware selection (nested CV and train-test).
    resize, cache_dir, batch_size, seed, verbose
        As for :func:`featx.evaluation.evaluate`.
    log : callable, optional
        Called with a line of progress text (e.g. ``print``).

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from featx.tuning import tune
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, grey in [("dark", 40), ("light", 200)]:
    ...     (root / name).mkdir()
    ...     for i in range(6):
    ...         Image.new("RGB", (40, 40), (grey + 9 * i,) * 3).save(root / name / f"{i}.png")
    >>> found = tune(root, weights=None, cv=2, inner_cv=2, cache_dir=None,
    ...              space={"input_size": [32], "tta": [None, "flip"], "pooling": ["avg"],
    ...                     "head": ["logreg"]}, grids={"logreg": {"clf__C": [0.1]}})
    >>> found.results[["name", "score"]].shape, found.protocol
    ((2, 2), 'nested-cv')
    >>> found.pipeline.predict([str(root / "dark" / "0.png")]).tolist()
    ['dark']
    """
    from featx.evaluation import _resolve_splits

    start = time.perf_counter()
    log = log or (lambda _: None)
    space = _space(space)
    configs = [
        _Config(_as_sizes(size), tta, pooling, _copies(augment), head)
        for size, tta, pooling, augment, head in itertools.product(
            space["input_size"], space["tta"], space["pooling"], space["augment"], space["head"]
        )
    ]
    grids = {kind: _head_grid(kind, (grids or {}).get(kind)) for kind in space["head"]}
    splits = _resolve_splits(source, train, validation, test)
    blocks = _Blocks(
        backbone, weights, space, resize, cache_dir, batch_size, seed, verbose, splits.sources, log
    )
    search = _Search(configs, grids, blocks, inner_cv, seed, log)
    with threadpool_limits(limits=1, user_api="blas"):
        if splits.protocol == "nested-cv":
            found = search.nested(cv)
        else:
            found = search.fixed("validation" in splits.sources)
    best_config, params = found["best"]
    pipeline = _pipeline(
        best_config,
        params,
        blocks,
        found["fit_rows"],
        backbone,
        weights,
        resize,
        cache_dir,
        batch_size,
        seed,
    )
    rows = search.table(found, best_config)
    return TuneResult(
        results=rows,
        best={**best_config.as_dict(), "params": params},
        protocol=splits.protocol,
        accuracy=found["accuracy"],
        accuracy_std=found.get("accuracy_std"),
        baseline_accuracy=found["baseline_accuracy"],
        pipeline=pipeline,
        classes=blocks.classes,
        folds=found.get("folds", []),
        seconds=time.perf_counter() - start,
    )


# -- the search space ----------------------------------------------------------------------------


def _space(space: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Any]]:
    given = dict(space or {})
    unknown = [k for k in given if k not in DEFAULT_SPACE]
    if unknown:
        raise ValueError(
            f"space= has unknown dimension(s) {unknown}. Expected some of: "
            f"{', '.join(DEFAULT_SPACE)}."
        )
    merged = {}
    for key, default in DEFAULT_SPACE.items():
        values = given.get(key, default)
        if isinstance(values, (str, int)) or values is None:
            values = [values]
        values = list(values)
        if not values:
            raise ValueError(f"space[{key!r}] is empty. Give at least one value.")
        merged[key] = values
    for tta in merged["tta"]:
        resolve_tta(tta)  # refuses an unknown view name now, not after extracting
    for augment in merged["augment"]:
        if augment is not None and not isinstance(augment, int):
            raise ValueError(
                f"space['augment'] holds {augment!r}. Expected None or a number of copies."
            )
    return merged


def _as_sizes(size: Any) -> tuple[Any, ...]:
    if isinstance(size, (list, tuple)) and not (
        isinstance(size, tuple) and len(size) == 2 and all(isinstance(s, int) for s in size)
    ):
        return tuple(size)
    return (size,)


def _copies(augment: Any) -> int | None:
    policy = resolve_augment(augment)
    return None if policy is None else policy.copies


def _head_grid(kind: str, grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every parameter setting of ``kind``'s grid (bare names like ``"C"`` allowed)."""
    return list(
        ParameterGrid(resolve_grid(make_head(kind), default_grid(kind) if grid is None else grid))
    )


# -- embeddings, one block per (size, view, copy) ------------------------------------------------


class _Blocks:
    """Extracts and keeps the embeddings every configuration is assembled from."""

    def __init__(
        self, backbone, weights, space, resize, cache_dir, batch_size, seed, verbose, sources, log
    ) -> None:
        poolings = set(space["pooling"])
        if isinstance(backbone, Backbone):  # its own pooling: nothing to slice
            if len(poolings) > 1:
                raise ValueError(
                    f"space['pooling']={space['pooling']} searches poolings, but the backbone "
                    f"{backbone.name!r} is a Backbone object with its own pooling. Search "
                    "poolings with a registry name, a keras.Model or a model file."
                )
            self.pooling = poolings.pop()
        else:
            # Both poolings come from one forward pass: always cache both, so that any
            # pooling of any later search is read back, not recomputed.
            self.pooling = "avg+max"
        self.sources = sources
        self.log = log
        self._options = {"cache_dir": cache_dir, "batch_size": batch_size, "verbose": verbose}
        self._resize = resize
        self._backbone_args = (backbone, weights, seed)
        self._backbones: dict[Any, Any] = {}
        self._data: dict[tuple, dict[str, np.ndarray]] = {}
        self._ms: dict[tuple, float | None] = {}
        self._first_size = _as_sizes(space["input_size"][0])[0]
        copies = [c for c in space["augment"] if c]
        self.policy = resolve_augment(max(copies)) if copies else None
        self._read_labels()

    def _backbone(self, size: Any):
        if size not in self._backbones:
            backbone, weights, seed = self._backbone_args
            self._backbones[size] = resolve_backbone(
                backbone, weights=weights, input_size=size, pooling=self.pooling, seed=seed
            )
        return self._backbones[size]

    def _read_labels(self) -> None:
        """Labels and paths per split, from the plain extraction at the first size."""
        from featx.evaluation import _align, _check_disjoint

        embedded = {}
        extractor = self._extractor(self._first_size, None)
        for split, src in self.sources.items():
            e = extractor.extract(src, on_error="raise")
            if e.y is None or e.classes is None:
                raise ValueError(
                    f"The {split} data has no labels. Expected class subfolders "
                    "(root/<class>/<image>) or a DataFrame with a label column."
                )
            embedded[split] = e
        _check_disjoint(embedded)
        reference = embedded.get("train", embedded.get("all"))
        self.classes = list(reference.classes)
        self.y = {split: _align(e, self.classes, split) for split, e in embedded.items()}
        self.paths = {split: e.paths for split, e in embedded.items()}

    def _extractor(self, size: Any, view: View | None) -> Extractor:
        return Extractor(self._backbone(size), resize=self._resize, view=view, **self._options)

    def block(self, size: Any, view: View | None) -> dict[str, np.ndarray]:
        """Embeddings of every split for one (size, view), at the extraction pooling."""
        key = _block_key(size, view)
        if key not in self._data:
            extractor = self._extractor(size, view)
            out = {}
            # Augmented copies are only ever trained on: the test split never needs them.
            augmented = "augment" in key[1]
            for split, src in self.sources.items():
                if augmented and split == "test":
                    continue
                e = extractor.extract(src, on_error="raise")
                out[split] = e.X
                self.log(
                    f"  {size}px {view_label(view)} {split}: {len(e)} images, "
                    f"{e.cache_misses} computed, {e.seconds:.1f} s"
                )
            seconds = extractor.cache.seconds_per_image(extractor.fingerprint)
            self._ms[key] = None if seconds is None else 1000.0 * seconds
            self._data[key] = out
        return self._data[key]

    def features(self, config: _Config, copy: int | None = None) -> dict[str, np.ndarray]:
        """The configuration's embeddings per split: originals, or augmented copy ``copy``."""
        parts = []
        for size in config.input_size:
            views = resolve_tta(config.tta)
            if copy is not None:
                aug = self.policy.views()[copy]
                views = [aug if v is None else Compose([aug, v]) for v in views]
            pooled = [_pool(self.block(size, v), self.pooling, config.pooling) for v in views]
            parts.append(
                {
                    split: np.mean([p[split] for p in pooled], axis=0, dtype=np.float64).astype(
                        np.float32
                    )
                    if len(pooled) > 1
                    else pooled[0][split]
                    for split in pooled[0]
                }
            )
        return {split: np.concatenate([p[split] for p in parts], axis=1) for split in parts[0]}

    def cost(self, config: _Config) -> float | None:
        """ms per image: every size and view, plus each augmented copy's (measured) cost."""
        total = 0.0
        copies = self.policy.views()[: config.augment or 0] if self.policy else []
        for size in config.input_size:
            for v in resolve_tta(config.tta):
                for view in [v] + [c if v is None else Compose([c, v]) for c in copies]:
                    self.block(size, view)
                    ms = self._ms[_block_key(size, view)]
                    if ms is None:
                        return None
                    total += ms
        return round(total, 3)


def _block_key(size: Any, view: View | None) -> tuple[Any, str]:
    return size, json.dumps(None if view is None else view.identity(), sort_keys=True)


def _pool(block: dict[str, np.ndarray], have: str, want: str) -> dict[str, np.ndarray]:
    if have == want:
        return block
    half = next(iter(block.values())).shape[1] // 2  # "avg+max" is avg, then max
    part = slice(0, half) if want == "avg" else slice(half, None)
    return {split: X[:, part] for split, X in block.items()}


# -- grouped copies ------------------------------------------------------------------------------


def stack_copies(
    X: np.ndarray, y: np.ndarray, copies: Sequence[np.ndarray], rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals ``X[rows]`` followed by each copy's same rows; and the group of each row.

    The group is the original image's row number, so splitting by group keeps every
    image and its copies on one side.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.tuning import stack_copies
    >>> X, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])
    >>> Xs, ys, groups = stack_copies(X, y, [X + 100], rows=np.array([0, 2]))
    >>> groups.tolist(), ys.tolist(), Xs[:, 0].tolist()
    ([0, 2, 0, 2], [0, 0, 0, 0], [0.0, 4.0, 100.0, 104.0])
    """
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    Xs = np.concatenate([X[rows], *(c[rows] for c in copies)])
    ys = np.tile(y[rows], 1 + len(copies))
    groups = np.tile(rows, 1 + len(copies))
    return Xs, ys, groups


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold over rows: ``(train, validation)`` row indices per fold.

    No group is on both sides of a fold, and the validation side keeps one row per group
    (its first: the original image, as :func:`stack_copies` orders them), so copies are
    trained on but never scored.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.tuning import grouped_folds
    >>> groups = np.tile(np.arange(6), 2)
    >>> y = np.tile([0, 1, 0, 1, 0, 1], 2)
    >>> folds = grouped_folds(y, groups, n_splits=3, seed=0)
    >>> all(not set(groups[t]) & set(groups[v]) for t, v in folds)
    True
    >>> [len(v) for _, v in folds]
    [2, 2, 2]
    """
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = []
    for train, val in splitter.split(np.zeros(len(y)), y, groups):
        _, first = np.unique(groups[val], return_index=True)
        folds.append((train, val[np.sort(first)]))
    return folds


# -- the search ----------------------------------------------------------------------------------


class _Search:
    def __init__(self, configs, grids, blocks: _Blocks, inner_cv: int, seed: int, log) -> None:
        self.configs, self.grids, self.blocks = configs, grids, blocks
        self.inner_cv, self.seed, self.log = inner_cv, seed, log
        self._features: dict[tuple, tuple[dict, list[dict]]] = {}
        self.fit_seconds: dict[_Config, float] = {}

    def data(self, config: _Config) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        """Originals per split, and each augmented copy per split."""
        key = config.features
        if key not in self._features:
            originals = self.blocks.features(config)
            copies = [self.blocks.features(config, c) for c in range(config.augment or 0)]
            self._features[key] = (originals, copies)
        return self._features[key]

    def _fit(self, config: _Config, params: dict, splits: dict[str, np.ndarray], names=False):
        """Fit the head on the rows ``splits`` (split -> row indices), copies included;
        with ``names``, on class names rather than class indices."""
        originals, copies = self.data(config)
        Xs, ys = [], []
        for split, rows in splits.items():
            X, y, _ = stack_copies(
                originals[split], self.blocks.y[split], [c[split] for c in copies], rows
            )
            Xs.append(X)
            ys.append(y)
        started = time.perf_counter()
        model = make_head(config.head).set_params(**params)
        y = np.concatenate(ys)
        labels = np.asarray(self.blocks.classes, dtype=object)[y] if names else y
        model.fit(np.concatenate(Xs), labels)
        self.fit_seconds[config] = self.fit_seconds.get(config, 0.0) + time.perf_counter() - started
        return model

    def _score(self, model, config: _Config, split: str, rows: np.ndarray) -> float:
        X = self.data(config)[0][split][rows]
        return float(accuracy_score(self.blocks.y[split][rows], model.predict(X)))

    def _select(self, split: str, rows: np.ndarray, val_rows: np.ndarray | None, val_split: str):
        """Every config x params scored (on validation, or by grouped inner CV on ``rows``).

        Returns {config: (best params, score)}.
        """
        y = self.blocks.y[split]
        if val_rows is None:
            n_copies = max((c.augment or 0) for c in self.configs)
            groups = np.tile(rows, 1 + n_copies)
            folds = grouped_folds(np.tile(y[rows], 1 + n_copies), groups, self.inner_cv, self.seed)
            # Folds of original rows (positions in ``rows``); copies follow their original.
            inner = [(np.unique(groups[t]), np.unique(groups[v])) for t, v in folds]
        scores = {}
        for config in self.configs:
            best = None
            for params in self.grids[config.head]:
                if val_rows is None:
                    score = float(
                        np.mean(
                            [
                                self._score(self._fit(config, params, {split: t}), config, split, v)
                                for t, v in inner
                            ]
                        )
                    )
                else:
                    model = self._fit(config, params, {split: rows})
                    score = self._score(model, config, val_split, val_rows)
                if best is None or score > best[1]:
                    best = (params, score)
            scores[config] = best
            self.log(f"  {config.name}: {best[1]:.4f} {best[0]}")
        return scores

    def fixed(self, has_validation: bool) -> dict[str, Any]:
        y = self.blocks.y
        train = np.arange(len(y["train"]))
        test = np.arange(len(y["test"]))
        if has_validation:
            val = np.arange(len(y["validation"]))
            scores = self._select("train", train, val, "validation")
            fit_rows = {"train": train, "validation": val}
        else:
            scores = self._select("train", train, None, "train")
            fit_rows = {"train": train}
        best = max(self.configs, key=lambda c: scores[c][1])  # first of equals
        baseline = self.configs[0]
        # The test split, touched once for the winner (and once for the baseline, reported
        # beside it; it plays no part in the choice).
        accuracy = self._score(self._fit(best, scores[best][0], fit_rows), best, "test", test)
        base_accuracy = (
            accuracy
            if best == baseline
            else self._score(
                self._fit(baseline, scores[baseline][0], fit_rows), baseline, "test", test
            )
        )
        return {
            "scores": {c: s for c, s in scores.items()},
            "best": (best, scores[best][0]),
            "accuracy": accuracy,
            "baseline_accuracy": base_accuracy,
            "fit_rows": fit_rows,
        }

    def nested(self, cv: int) -> dict[str, Any]:
        y = self.blocks.y["all"]
        outer = StratifiedKFold(n_splits=cv, shuffle=True, random_state=self.seed)
        inner_scores: dict[_Config, list[float]] = {c: [] for c in self.configs}
        chosen: dict[_Config, list[dict]] = {c: [] for c in self.configs}
        outer_scores: dict[_Config, list[float]] = {c: [] for c in self.configs}
        folds = []
        for k, (train, test) in enumerate(outer.split(np.zeros(len(y)), y)):
            self.log(f"outer fold {k + 1}/{cv}")
            scores = self._select("all", train, None, "all")
            for config, (params, score) in scores.items():
                inner_scores[config].append(score)
                chosen[config].append(params)
                model = self._fit(config, params, {"all": train})
                outer_scores[config].append(self._score(model, config, "all", test))
            winner = max(self.configs, key=lambda c: scores[c][1])
            folds.append(
                {
                    "fold": k,
                    "best": winner.name,
                    "params": scores[winner][0],
                    "inner_score": scores[winner][1],
                    "accuracy": outer_scores[winner][-1],
                }
            )
        accuracies = np.asarray([f["accuracy"] for f in folds])
        # Each configuration's head parameters as chosen in every outer fold, e.g.
        # {"clf__C": [0.01, 0.003, ...]}, with its inner score averaged over the folds.
        mean_inner = {
            c: ({k: [p[k] for p in chosen[c]] for k in chosen[c][0]}, float(np.mean(s)))
            for c, s in inner_scores.items()
        }
        best = max(self.configs, key=lambda c: mean_inner[c][1])
        # The final pipeline: the best configuration on average, its head parameters chosen
        # by grouped inner CV on all the data.
        params = self._select_params(best)
        return {
            "scores": mean_inner,
            "outer": {c: float(np.mean(s)) for c, s in outer_scores.items()},
            "best": (best, params),
            "accuracy": float(accuracies.mean()),
            "accuracy_std": float(accuracies.std()),
            "baseline_accuracy": float(np.mean(outer_scores[self.configs[0]])),
            "folds": folds,
            "fit_rows": {"all": np.arange(len(y))},
        }

    def _select_params(self, config: _Config) -> dict[str, Any]:
        saved = self.configs
        self.configs = [config]
        try:
            rows = np.arange(len(self.blocks.y["all"]))
            return self._select("all", rows, None, "all")[config][0]
        finally:
            self.configs = saved

    def table(self, found: dict[str, Any], best: _Config) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for config in self.configs:
            params, score = found["scores"][config]
            rows.append(
                {
                    "name": config.name,
                    **config.as_dict(),
                    "params": json.dumps(params),
                    "score": round(score, 4),
                    "outer_accuracy": round(found["outer"][config], 4)
                    if "outer" in found
                    else float("nan"),
                    "dim": self.data(config)[0][next(iter(self.blocks.sources))].shape[1],
                    "ms_per_image": self.blocks.cost(config),
                    "fit_seconds": round(self.fit_seconds.get(config, 0.0), 2),
                    "baseline": config == self.configs[0],
                    "best": config == best,
                }
            )
        table = pd.DataFrame(rows)
        table["augment"] = table["augment"].astype("Int64")  # copies, or <NA>: not 2.0
        table["input_size"] = table["input_size"].map(
            lambda s: "+".join(map(str, s)) if isinstance(s, list) else s
        )
        return table


# -- the refitted pipeline -----------------------------------------------------------------------


def _pipeline(
    config, params, blocks, fit_rows, backbone, weights, resize, cache_dir, batch_size, seed
):
    """``EmbeddingTransformer`` + the head refitted on ``fit_rows`` (already embedded)."""
    from sklearn.pipeline import Pipeline

    from featx.transformer import EmbeddingTransformer

    search = _Search([config], {config.head: [params]}, blocks, INNER_FOLDS, seed, lambda _: None)
    head = search._fit(config, params, fit_rows, names=True)
    sizes = list(config.input_size)
    embed = EmbeddingTransformer(
        backbone,
        weights=weights,
        input_size=sizes[0] if len(sizes) == 1 else sizes,
        pooling=config.pooling,
        tta=config.tta,
        augment=config.augment,
        resize=resize,
        cache_dir=cache_dir,
        batch_size=batch_size,
        seed=seed,
    )
    first = next(iter(blocks.paths.values())) or []
    embed.fit(first[:1] or np.zeros((1, 32, 32, 3), np.uint8))
    # Fitted on class names, so the pipeline predicts names, as featx.classifier's do.
    return Pipeline([("embed", embed), ("head", head)])
