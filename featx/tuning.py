"""Automatic search for a better representation from the same frozen network.

:func:`tune` searches a small space (input size, or several sizes concatenated;
test-time views; pooling; train-time augmentation; head and its regularisation),
chooses on data that the final score never sees, refits the best pipeline, and
reports every configuration tried with its cost.

Embeddings are extracted once per (input size, view, augmented copy), as ordinary
cache entries, always with ``pooling="avg+max"`` (``"cls+mean"`` for keras-hub ViTs): the
``"avg"`` and ``"max"`` embeddings are the two halves of that vector (bit-identical to
extracting them alone), so a pooling costs no second forward pass, and any later search
reads every pooling back from the cache. Every configuration is then assembled from these
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.model_selection import ParameterGrid
from threadpoolctl import threadpool_limits

from featx.augment import Compose, View, resolve_augment, resolve_tta, view_label
from featx.backbones import ALL_POOLINGS, Backbone, resolve_backbone
from featx.config import as_sizes, size_label
from featx.extract import Extractor
from featx.heads import default_grid, make_head, resolve_grid
from featx.learning import (
    Candidate,
    Features,
    LearningData,
    ProtocolRun,
    fit_candidate,
    run_protocol,
    search,
)
from featx.results import Result, jsonable
from featx.splits import INNER_FOLDS, Splits, align_splits, resolve_splits

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

__all__ = ["DEFAULT_SPACE", "TuneResult", "tune"]

DEFAULT_SPACE: dict[str, list[Any]] = {
    "input_size": [160, 224, [160, 224]],
    "tta": [None, "flip"],
    "pooling": ["avg", "avg+max"],
    "augment": [None],
    "head": ["logreg", "svm"],
}


@dataclass
class TuneResult(Result):
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
        return jsonable(
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

    def to_frame(self) -> pd.DataFrame:
        """Every configuration tried: :attr:`results`."""
        return self.results


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
        sizes = "+".join(str(size_label(s)) for s in self.input_size)
        parts = [f"{sizes}px", self.pooling, f"tta={self.tta or 'none'}"]
        if self.augment:
            parts.append(f"aug={self.augment}")
        return " ".join([*parts, self.head])

    def as_dict(self) -> dict[str, Any]:
        sizes = [size_label(s) for s in self.input_size]
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
    layer: str | None = None,
    precision: str = "float32",
    space: Mapping[str, Sequence[Any]] | None = None,
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    cv: int = 5,
    inner_cv: int = INNER_FOLDS,
    resize: str | None = None,
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
    backbone, weights, layer, precision
        One network, as for :class:`~featx.Extractor`.
    space : dict, optional
        Values to search per dimension; missing keys take :data:`DEFAULT_SPACE`'s:
        ``input_size`` (ints, or lists of ints to concatenate), ``tta`` (None, "flip",
        "crop", "flip+crop"), ``pooling`` ("avg", "max", "avg+max"; for a keras-hub ViT
        "cls", "mean", "cls+mean"), ``augment``
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
    start = time.perf_counter()
    log = log or (lambda _: None)
    space = _space(space)
    configs = [
        _Config(as_sizes(size), tta, pooling, _copies(augment), head)
        for size, tta, pooling, augment, head in itertools.product(
            space["input_size"], space["tta"], space["pooling"], space["augment"], space["head"]
        )
    ]
    grids = {kind: _head_grid(kind, (grids or {}).get(kind)) for kind in space["head"]}
    splits = resolve_splits(source, train, validation, test)
    network = {
        "backbone": backbone,
        "weights": weights,
        "layer": layer,
        "precision": precision,
        "resize": resize,
        "seed": seed,
    }
    options = {"cache_dir": cache_dir, "batch_size": batch_size, "verbose": verbose}
    blocks = _Blocks(network, space, options, splits, log)
    candidates = [
        Candidate(c.name, c.features, make_head(c.head), tuple(grids[c.head]), c.augment or 0)
        for c in configs
    ]
    data = LearningData(splits.protocol, blocks.classes, blocks.y, _Assembled(blocks, configs))
    protocol = {
        "cv": cv,
        "inner_cv": inner_cv,
        "seed": seed,
        "grouped": True,
        "search_single": True,
        "log": log,
    }
    with threadpool_limits(limits=1, user_api="blas"):
        if splits.protocol == "nested-cv":
            run = run_protocol(data, candidates, also_score=range(len(candidates)), **protocol)
            found = _nested(run, configs)
            # The final pipeline: the best configuration on average, its head parameters
            # chosen by grouped inner CV on all the data.
            best = found["best"]
            scores, seconds = search(
                data,
                [candidates[best]],
                "all",
                data.rows("all"),
                inner_cv=inner_cv,
                seed=seed,
                log=log,
            )
            run.fit_seconds[best] = run.fit_seconds.get(best, 0.0) + seconds.get(0, 0.0)
            params = candidates[best].grid[int(np.argmax(scores[0]))]
            fit_rows = {"all": data.rows("all")}
        else:
            run = run_protocol(data, candidates, also_score=[0], **protocol)
            found = _fixed(run, configs)
            best = found["best"]
            params = candidates[best].grid[run.folds[0].best(best)[0]]
            fit_rows = run.folds[0].fit_rows
    best_config = configs[best]
    head = fit_candidate(data, candidates[best], params, fit_rows, names=True)
    pipeline = _pipeline(best_config, head, blocks, network, options)
    return TuneResult(
        results=_table(found, configs, data, blocks, run),
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

    def __init__(self, network: dict[str, Any], space, options, splits: Splits, log) -> None:
        poolings = set(space["pooling"])
        if isinstance(network["backbone"], Backbone):  # its own pooling: nothing to slice
            if len(poolings) > 1:
                raise ValueError(
                    f"space['pooling']={space['pooling']} searches poolings, but the backbone "
                    f"{network['backbone'].name!r} is a Backbone object with its own pooling. "
                    "Search poolings with a registry name, a keras.Model or a model file."
                )
            self.pooling = poolings.pop()
        else:
            # Both poolings come from one forward pass: always cache both, so that any
            # pooling of any later search is read back, not recomputed.
            self.pooling = _pooling_union(poolings)
        if splits.precomputed:
            raise ValueError(
                "tune() embeds the images at every size and view it searches; it cannot "
                "search precomputed Embeddings. Pass the images (a folder, a dataset root, "
                "or train=/test= sources)."
            )
        self.sources = splits.sources
        self.log = log
        self._network = network
        self._options = options
        self._backbones: dict[Any, Any] = {}
        self._data: dict[str, dict[str, np.ndarray]] = {}
        self._ms: dict[str, float | None] = {}
        self._first_size = as_sizes(space["input_size"][0])[0]
        copies = [c for c in space["augment"] if c]
        self.policy = resolve_augment(max(copies)) if copies else None
        self._read_labels()

    def _backbone(self, size: Any):
        if size not in self._backbones:
            n = self._network
            self._backbones[size] = resolve_backbone(
                n["backbone"],
                weights=n["weights"],
                input_size=size,
                pooling=self.pooling,
                layer=n["layer"],
                seed=n["seed"],
                precision=n["precision"],
            )
        return self._backbones[size]

    def _read_labels(self) -> None:
        """Labels and paths per split, from the plain extraction at the first size."""
        extractor = self._extractor(self._first_size, None)
        embedded = {
            split: extractor.extract(src, on_error="raise") for split, src in self.sources.items()
        }
        self.classes, self.y = align_splits(embedded)
        self.paths = {split: e.paths for split, e in embedded.items()}

    def _extractor(self, size: Any, view: View | None) -> Extractor:
        return Extractor(
            self._backbone(size), resize=self._network["resize"], view=view, **self._options
        )

    def block(self, size: Any, view: View | None) -> dict[str, np.ndarray]:
        """Embeddings of every split for one (size, view), at the extraction pooling."""
        extractor = self._extractor(size, view)
        key = extractor.fingerprint
        if key not in self._data:
            out = {}
            # Augmented copies are only ever trained on: the test split never needs them.
            augmented = view is not None and "augment" in json.dumps(view.identity())
            for split, src in self.sources.items():
                if augmented and split == "test":
                    continue
                e = extractor.extract(src, on_error="raise")
                out[split] = e.X
                self.log(
                    f"  {size_label(size)}px {view_label(view)} {split}: {len(e)} images, "
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
                    ms = self._ms[self._extractor(size, view).fingerprint]
                    if ms is None:
                        return None
                    total += ms
        return round(total, 3)


class _Assembled(Mapping):
    """The representations of the search, assembled from blocks on first use."""

    def __init__(self, blocks: _Blocks, configs: list[_Config]) -> None:
        self._blocks = blocks
        self._configs = {c.features: c for c in configs}
        self._made: dict[tuple, Features] = {}

    def __getitem__(self, key: tuple) -> Features:
        if key not in self._made:
            config = self._configs[key]
            originals = self._blocks.features(config)
            copies = [self._blocks.features(config, c) for c in range(config.augment or 0)]
            self._made[key] = Features(originals, copies)
        return self._made[key]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)


def _pooling_union(poolings: set[str]) -> str:
    """The pooling whose vector holds every searched one: "avg+max" for feature maps,
    "cls+mean" for keras-hub ViTs' tokens."""
    unions = {union for union in ALL_POOLINGS if "+" in union and poolings <= _parts(union)}
    if not unions:
        raise ValueError(
            f"space['pooling']={sorted(poolings)} mixes poolings of different network "
            "outputs; search feature-map poolings (avg, max, avg+max) or token poolings "
            "(cls, mean, cls+mean), as the backbone's output is."
        )
    return unions.pop()


def _parts(pooling: str) -> set[str]:
    return {pooling, *pooling.split("+")}


def _pool(block: dict[str, np.ndarray], have: str, want: str) -> dict[str, np.ndarray]:
    if have == want:
        return block
    parts = have.split("+")  # "avg+max" is avg, then max; "cls+mean" is cls, then mean
    width = next(iter(block.values())).shape[1] // len(parts)
    start = parts.index(want) * width
    return {split: X[:, start : start + width] for split, X in block.items()}


# -- what the search found -----------------------------------------------------------------------


def _fixed(run: ProtocolRun, configs: list[_Config]) -> dict[str, Any]:
    fold = run.folds[0]
    return {
        "scores": {
            c: (run.candidates[i].grid[fold.best(i)[0]], fold.best(i)[1])
            for i, c in enumerate(configs)
        },
        "best": fold.winner,
        "accuracy": fold.test_accuracy[fold.winner],
        # The baseline, scored on test beside the winner; it plays no part in the choice.
        "baseline_accuracy": fold.test_accuracy[0],
    }


def _nested(run: ProtocolRun, configs: list[_Config]) -> dict[str, Any]:
    folds = []
    for fold in run.folds:
        index, score = fold.best(fold.winner)
        folds.append(
            {
                "fold": fold.fold,
                "best": configs[fold.winner].name,
                "params": run.candidates[fold.winner].grid[index],
                "inner_score": score,
                "accuracy": fold.test_accuracy[fold.winner],
            }
        )
    accuracies = np.asarray([f["accuracy"] for f in folds])
    # Each configuration's head parameters as chosen in every outer fold, e.g.
    # {"clf__C": [0.01, 0.003, ...]}, with its inner score averaged over the folds.
    scores = {}
    for i, config in enumerate(configs):
        chosen = [run.candidates[i].grid[f.best(i)[0]] for f in run.folds]
        mean = float(np.mean([f.best(i)[1] for f in run.folds]))
        scores[config] = ({k: [p[k] for p in chosen] for k in chosen[0]}, mean)
    best = max(range(len(configs)), key=lambda i: scores[configs[i]][1])  # first of equals
    return {
        "scores": scores,
        "outer": {
            c: float(np.mean([f.test_accuracy[i] for f in run.folds]))
            for i, c in enumerate(configs)
        },
        "best": best,
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "baseline_accuracy": float(np.mean([f.test_accuracy[0] for f in run.folds])),
        "folds": folds,
    }


def _table(found, configs, data: LearningData, blocks: _Blocks, run: ProtocolRun):
    import pandas as pd

    rows = []
    for i, config in enumerate(configs):
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
                "dim": data.features[config.features].dim,
                "ms_per_image": blocks.cost(config),
                "fit_seconds": round(run.fit_seconds.get(i, 0.0), 2),
                "baseline": i == 0,
                "best": i == found["best"],
            }
        )
    table = pd.DataFrame(rows)
    table["augment"] = table["augment"].astype("Int64")  # copies, or <NA>: not 2.0
    table["input_size"] = table["input_size"].map(
        lambda s: "+".join(map(str, s)) if isinstance(s, list) else s
    )
    return table


# -- the refitted pipeline -----------------------------------------------------------------------


def _pipeline(config: _Config, head, blocks: _Blocks, network: dict, options: dict):
    """``EmbeddingTransformer`` + ``head`` (already fitted on class names)."""
    from sklearn.pipeline import Pipeline

    from featx.transformer import EmbeddingTransformer

    sizes = [_size_value(s) for s in config.input_size]
    embed = EmbeddingTransformer(
        network["backbone"],
        weights=network["weights"],
        input_size=sizes[0] if len(sizes) == 1 else sizes,
        pooling=config.pooling,
        layer=network["layer"],
        precision=network["precision"],
        tta=config.tta,
        augment=config.augment,
        resize=network["resize"],
        cache_dir=options["cache_dir"],
        batch_size=options["batch_size"],
        seed=network["seed"],
    )
    first = next(iter(blocks.paths.values())) or []
    embed.fit(first[:1] or np.zeros((1, 32, 32, 3), np.uint8))
    # Fitted on class names, so the pipeline predicts names, as featx.classifier's do.
    return Pipeline([("embed", embed), ("head", head)])


def _size_value(size: tuple[int, int] | None) -> Any:
    """A size as the user would write it: 160 for a square, (h, w) otherwise."""
    if size is None or size[0] != size[1]:
        return size
    return size[0]
