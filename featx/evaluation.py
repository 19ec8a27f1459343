"""Honest evaluation: how well a backbone and a head classify images nobody tuned on.

Three protocols, chosen by what is given:

``"train-validation-test"``
    a dataset root with ``train/``, ``validation/`` (or ``val/``) and ``test/``
    class-per-folder subfolders, or ``train=``, ``validation=`` and ``test=``: every
    candidate of the grid is fitted on train and scored on validation; the best (the
    first, on ties) is refitted on train + validation and scored once on test.
``"train-test"``
    a root with ``train/`` and ``test/`` only, or ``train=`` and ``test=``: the
    hyperparameters are chosen by stratified 3-fold cross-validation on train, the head
    is refitted on all of train and scored on test.
``"nested-cv"``
    a single class-per-folder source: stratified k-fold cross-validation, the
    hyperparameters chosen afresh inside each outer training fold by an inner stratified
    3-fold search. Reports the mean and standard deviation over the folds, and metrics
    pooled over all out-of-fold predictions.

Test images never reach hyperparameter selection or fitting. Labels are matched across
splits by class name, so splits with different sets of class folders still line up.
Every split and fold is seeded, and :func:`compare` evaluates every backbone and head
on the same folds, so its rows are paired comparisons.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold
from threadpoolctl import threadpool_limits

from featx.backbones import Backbone, RawPixels, get_spec
from featx.combine import CombinedExtractor, expand_members
from featx.extract import Embeddings, Extractor
from featx.heads import default_grid, make_head, resolve_grid

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PROTOCOLS", "compare", "evaluate"]

PROTOCOLS = ("train-validation-test", "train-test", "nested-cv")
INNER_FOLDS = 3
RAW_PIXELS_SIZE = 16
_VALIDATION_NAMES = ("validation", "val")
_SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def evaluate(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    backbone: str | Backbone | Any = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
    resize: str = "stretch",
    head: str | Any = "logreg",
    grid: Mapping[str, Any] | None = None,
    cv: int = 5,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    tta: str | Sequence[Any] | None = None,
    tta_combine: str = "mean",
    augment: int | Mapping[str, Any] | Any = None,
) -> dict[str, Any]:
    """Extract embeddings (cached), fit a head with honest model selection, report test metrics.

    Parameters
    ----------
    source : path or labelled source, optional
        A dataset root with ``train/``, ``validation/`` (or ``val/``) and ``test/``
        subfolders, or a single class-per-folder source (then: nested cross-validation).
        Give either ``source`` or ``train=`` and ``test=``.
    train, validation, test : labelled sources, optional
        Explicit splits: class-per-folder folders or DataFrames with a label column.
        Without ``validation``, hyperparameters are chosen by cross-validation on train.
    backbone, weights, input_size, pooling, layer, resize, batch_size
        The network and how images reach it, as for :class:`~featx.Extractor`;
        ``input_size`` (and ``layer``) may be lists, whose embeddings are concatenated,
        and ``pooling="avg+max"`` concatenates both poolings (see :mod:`featx.combine`).
    tta, tta_combine
        Test-time views of every image (``"flip"``, ``"crop"``, ``"flip+crop"``),
        averaged or concatenated (see :mod:`featx.augment`); for training images too,
        so train and test embeddings are alike.
    augment : None, int, dict or AugmentPolicy, optional
        Train-time augmentation: the head also trains on that many seeded copies of
        every training (and validation) image. A copy is always on its original's side
        of every split (grouped folds); only originals are scored.
    head : {"logreg", "svm", "linear-svm", "mlp"} or estimator, default "logreg"
        A :func:`~featx.heads.make_head` kind, or any scikit-learn classifier with
        ``predict_proba`` (cloned, never modified).
    grid : dict, optional
        Hyperparameter candidates, e.g. ``{"C": [0.1, 1]}`` (a bare name reaches the
        classifier; ``"pca__n_components"`` any step). Default: the kind's
        :func:`~featx.heads.default_grid`, or no search for an estimator. ``{}``: no search.
    cv : int, default 5
        Outer folds of nested cross-validation (single-source protocol only).
    cache_dir : path, "auto" or None, default "auto"
        Embedding cache, as for :class:`~featx.Extractor`.
    seed : int, default 0
        Seeds the folds (and the initialisation when ``weights=None``).
    verbose : bool, default False
        Show extraction progress bars.

    Returns
    -------
    dict
        JSON-ready. ``protocol``; ``classes``; ``accuracy``, ``balanced_accuracy`` and
        ``macro_f1`` (means over folds under nested CV), each with a ``*_std`` (``None``
        for a fixed test set); ``per_class`` (precision, recall, f1, support by class
        name) and ``confusion_matrix`` (rows true, columns predicted, in ``classes``
        order; pooled over folds under nested CV); ``chosen_params`` (parameter -> value;
        under nested CV parameter -> the value chosen in each fold); ``search`` (the
        score of every candidate);
        ``fit_seconds`` (selection and fitting); ``n_train``, ``n_validation``,
        ``n_test``; ``extraction`` (cache hits, misses and seconds per split) and
        ``ms_per_image``. Under nested CV also ``folds`` and ``pooled``.

    Raises
    ------
    ValueError
        When the splits are missing, overlap, lack labels, or the test or validation
        set holds a class the training set lacks.

    Examples
    --------
    A tiny split dataset, dark and light images, and the raw-pixels baseline as backbone:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from featx.backbones import RawPixels
    >>> from featx.evaluation import evaluate
    >>> root = Path(tempfile.mkdtemp())
    >>> for split, n in [("train", 6), ("test", 3)]:
    ...     for name, grey in [("dark", 40), ("light", 200)]:
    ...         (root / split / name).mkdir(parents=True)
    ...         for i in range(n):
    ...             image = Image.new("RGB", (8, 8), (grey + 9 * i,) * 3)
    ...             image.save(root / split / name / f"{i}.png")
    >>> r = evaluate(root, backbone=RawPixels(4), grid={"C": [0.1, 1.0]}, cache_dir=None)
    >>> r["protocol"], r["accuracy"], r["n_train"], r["n_test"], r["chosen_params"]
    ('train-test', 1.0, 12, 6, {'clf__C': 0.1})
    """
    splits = _resolve_splits(source, train, validation, test)
    params = {
        "backbone": backbone,
        "weights": weights,
        "input_size": input_size,
        "pooling": pooling,
        "layer": layer,
        "resize": resize,
        "seed": seed,
    }
    extractor = _extractor(params, tta, tta_combine, batch_size, cache_dir, verbose, augment)
    data = _load(splits, extractor)
    result = {
        "backbone": extractor.backbone.name,
        "weights": _weights_label(extractor.backbone, weights),
        "input_size": list(extractor.input_size),
        **_combination(extractor),
        **_run(data, head, grid, cv, seed),
    }
    return _jsonable(result)


def compare(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    backbones: Sequence[str | Mapping[str, Any] | Backbone] = ("MobileNetV2",),
    heads: Sequence[str | Any] = ("logreg",),
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    resize: str = "stretch",
    baselines: bool = True,
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    cv: int = 5,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    tta: str | Sequence[Any] | None = None,
    tta_combine: str = "mean",
    augment: int | Mapping[str, Any] | Any = None,
) -> pd.DataFrame:
    """Every backbone x head on the same data, splits and folds: one row each.

    Each backbone's embeddings are extracted once (and cached), then every head is
    evaluated on them with the protocol :func:`evaluate` would use.

    Parameters
    ----------
    source, train, validation, test
        The data, as for :func:`evaluate`.
    backbones : sequence, default ("MobileNetV2",)
        Registry names (using ``weights`` and ``input_size`` below), dicts of
        :class:`~featx.Extractor` parameters with an optional ``"label"``, e.g.
        ``{"backbone": "MobileNetV2", "weights": PATH, "input_size": 160,
        "label": "MobileNetV2 (pretrained)"}``, or :class:`~featx.backbones.Backbone`
        instances.
    heads : sequence, default ("logreg",)
        :func:`~featx.heads.make_head` kinds or scikit-learn classifiers.
    weights, input_size, pooling, resize, batch_size
        Defaults for the backbones given by name (a dict entry overrides them).
    baselines : bool, default True
        Add two rows per head that show what the network is worth: ``"raw pixels
        16x16"`` (each image downscaled and flattened) and the first backbone with
        random weights (``"<name> (random weights)"``; registry backbones only).
    grids : dict, optional
        Grid per head kind, e.g. ``{"logreg": {"C": [0.1, 1]}}``; others use their default.
    cv, cache_dir, seed, verbose, tta, tta_combine, augment
        As for :func:`evaluate` (``tta`` applies to every backbone; a dict entry may
        give its own ``input_size`` list or ``pooling="avg+max"``).

    Returns
    -------
    pandas.DataFrame
        One row per backbone x head: ``backbone`` (label), ``weights``, ``input_size``,
        ``head``, ``accuracy`` (the mean under nested CV), ``accuracy_std`` (NaN for a
        fixed test set), ``balanced_accuracy``, ``macro_f1``, ``ms_per_image``
        (extraction cost, from the cache's records), ``dim``, ``fit_seconds``,
        ``protocol``, ``n_train``, ``n_test``, ``chosen_params`` (JSON text),
        ``cache_misses`` and ``extract_seconds``. Ready for ``to_csv`` and
        ``to_dict(orient="records")``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from featx.backbones import RawPixels
    >>> from featx.evaluation import compare
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, grey in [("dark", 40), ("light", 200)]:
    ...     (root / name).mkdir()
    ...     for i in range(6):
    ...         Image.new("RGB", (8, 8), (grey + 9 * i,) * 3).save(root / name / f"{i}.png")
    >>> table = compare(root, backbones=[RawPixels(4), RawPixels(2)], heads=["logreg"],
    ...                 baselines=False, cv=3, cache_dir=None)
    >>> for row in table[["backbone", "head", "dim", "accuracy", "protocol"]].itertuples():
    ...     print(*row[1:])
    raw pixels 4x4 logreg 48 1.0 nested-cv
    raw pixels 2x2 logreg 12 1.0 nested-cv
    """
    import pandas as pd

    splits = _resolve_splits(source, train, validation, test)
    entries, defaults = _entries(
        backbones, weights=weights, input_size=input_size, pooling=pooling, resize=resize,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    if not heads:
        raise ValueError('heads= is empty. Pass at least one head, e.g. heads=("logreg",).')
    grids = dict(grids or {})
    if baselines:
        entries += _baselines(entries[0], defaults)
    rows = []
    for entry in entries:
        extractor = _extractor(
            entry.params,
            tta,
            tta_combine,
            entry.params.get("batch_size", batch_size),
            cache_dir,
            verbose,
            augment,
        )
        data = _load(splits, extractor)
        for head in heads:
            grid = grids.get(head) if isinstance(head, str) else None
            result = _run(data, head, grid, cv, seed)
            rows.append(
                {
                    "backbone": entry.label,
                    "weights": _weights_label(extractor.backbone, entry.params.get("weights")),
                    "input_size": _size_label(extractor.input_size),
                    "head": result["head"],
                    "accuracy": result["accuracy"],
                    "accuracy_std": _nan_if_none(result["accuracy_std"]),
                    "balanced_accuracy": result["balanced_accuracy"],
                    "macro_f1": result["macro_f1"],
                    "ms_per_image": _nan_if_none(data.ms_per_image),
                    "dim": data.dim,
                    "fit_seconds": result["fit_seconds"],
                    "protocol": result["protocol"],
                    "n_train": result["n_train"],
                    "n_test": result["n_test"],
                    "chosen_params": json.dumps(_jsonable(result["chosen_params"])),
                    "cache_misses": sum(s["cache_misses"] for s in data.extraction.values()),
                    "extract_seconds": round(
                        sum(s["seconds"] for s in data.extraction.values()), 3
                    ),
                    # Last, so the columns above keep their places; sizes joined by "+".
                    **_combination(extractor),
                }
            )
        del extractor  # one network in memory at a time
    return pd.DataFrame(rows)


# -- which protocol ----------------------------------------------------------------------------


@dataclass
class _Splits:
    protocol: str
    sources: dict[str, Any]  # "train", "validation", "test" (fixed splits) or "all" (nested CV)


def _resolve_splits(source: Any, train: Any, validation: Any, test: Any) -> _Splits:
    explicit = {"train": train, "validation": validation, "test": test}
    given = [name for name, value in explicit.items() if value is not None]
    if source is not None:
        if given:
            raise ValueError(
                f"Both source= and {', '.join(f'{g}=' for g in given)} were given. Pass a "
                "dataset root (or a single labelled source) as source=, or the splits as "
                "train=, test= and optionally validation=, not both."
            )
        layout = _split_layout(source)
        if layout is not None:
            return layout
        return _Splits("nested-cv", {"all": source})
    if train is None or test is None:
        missing = " and ".join(f"{name}=" for name in ("train", "test") if explicit[name] is None)
        raise ValueError(
            f"No {missing} given. Pass source= (a dataset root with train/, validation/ and "
            "test/ subfolders, or one class-per-folder folder for cross-validation), or "
            "train= and test= (and optionally validation=)."
        )
    if validation is None:
        return _Splits("train-test", {"train": train, "test": test})
    return _Splits(
        "train-validation-test", {"train": train, "validation": validation, "test": test}
    )


def _split_layout(source: Any) -> _Splits | None:
    """The splits of a dataset root, or None if ``source`` is not one."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        return None
    root = Path(source)
    present = {name for name in ("train", "test", *_VALIDATION_NAMES) if (root / name).is_dir()}
    if not present & {"train", "test"}:
        return None
    if not {"train", "test"} <= present:
        have, lack = ("train", "test") if "train" in present else ("test", "train")
        raise ValueError(
            f"{str(root)!r} has a {have}/ subfolder but no {lack}/ one. A split dataset needs "
            f"root/train/<class>/ and root/test/<class>/ (and optionally root/validation/"
            f"<class>/); pass train= and test= to name the splits yourself."
        )
    validation = [name for name in _VALIDATION_NAMES if name in present]
    if len(validation) == 2:
        raise ValueError(
            f"{str(root)!r} has both validation/ and val/ subfolders; which one is the "
            "validation set is ambiguous. Remove or rename one of them."
        )
    sources = {"train": root / "train", "test": root / "test"}
    if validation:
        sources["validation"] = root / validation[0]
        return _Splits("train-validation-test", dict(sorted(sources.items(), key=_split_order)))
    return _Splits("train-test", sources)


def _split_order(item: tuple[str, Any]) -> int:
    return ("train", "validation", "test").index(item[0])


# -- extraction and label alignment ------------------------------------------------------------


@dataclass
class _Data:
    protocol: str
    classes: list[str]
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    dim: int
    extraction: dict[str, dict[str, Any]] = field(default_factory=dict)
    ms_per_image: float | None = None
    # Augmented copies per training split (never "test"), each aligned with X[split].
    copies: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def fit_rows(self, split: str, rows: np.ndarray | None = None):
        """Rows of ``split`` with their augmented copies: X, y and each row's group."""
        from featx.tuning import stack_copies

        return stack_copies(self.X[split], self.y[split], self.copies.get(split, []), rows)


def _extractor(
    params: dict[str, Any],
    tta: Any,
    tta_combine: str,
    batch_size: int,
    cache_dir: Any,
    verbose: bool,
    augment: Any = None,
) -> Extractor | CombinedExtractor:
    """The plain extractor, or a combined one for lists, views and augmented copies."""
    params = {k: v for k, v in params.items() if k != "batch_size"}
    lists = any(isinstance(params.get(k), list) for k in ("input_size", "layer", "backbone"))
    if tta is None and not lists and not augment:
        return Extractor(**params, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose)
    backbone = params.pop("backbone")
    return CombinedExtractor(
        expand_members(backbone, **params),
        tta=tta,
        tta_combine=tta_combine,
        augment=augment,
        batch_size=batch_size,
        cache_dir=cache_dir,
        verbose=verbose,
    )


def _combination(extractor: Extractor | CombinedExtractor) -> dict[str, Any]:
    """What a combined extractor adds to a result: its members, views and dimension."""
    if not isinstance(extractor, CombinedExtractor):
        return {"tta": None, "members": None, "augment": None}
    return {
        "augment": None if extractor.augment is None else extractor.augment.copies,
        "input_size": "+".join(str(_size_label(b.input_size)) for b in extractor._backbones),
        "tta": extractor.label.split("tta=")[1] if "tta=" in extractor.label else None,
        "members": extractor.label,
    }


def _load(splits: _Splits, extractor: Extractor | CombinedExtractor) -> _Data:
    embeddings: dict[str, Embeddings] = {}
    for split, source in splits.sources.items():
        embedded = extractor.extract(source)
        if embedded.y is None or embedded.classes is None:
            raise ValueError(
                f"The {_split_name(split)} has no labels. Expected class subfolders "
                "(root/<class>/<image>) or a DataFrame with a label column."
            )
        embeddings[split] = embedded
    _check_disjoint(embeddings)
    reference = embeddings.get("train", embeddings.get("all"))
    classes = list(reference.classes)
    y = {split: _align(e, classes, split) for split, e in embeddings.items()}
    return _Data(
        protocol=splits.protocol,
        classes=classes,
        X={split: e.X for split, e in embeddings.items()},
        y=y,
        dim=reference.dim,
        extraction={split: _extraction_summary(e) for split, e in embeddings.items()},
        ms_per_image=_ms_per_image(extractor, list(embeddings.values())),
        copies={
            split: [e.X for e in extractor.extract_copies(splits.sources[split])]
            for split in embeddings
            if split != "test" and getattr(extractor, "augment", None) is not None
        },
    )


def _align(embedded: Embeddings, classes: list[str], split: str) -> np.ndarray:
    """Labels of ``embedded`` as indices into the training ``classes``, matched by name."""
    names = [embedded.classes[i] for i in np.unique(embedded.y)]
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise ValueError(
            f"The {_split_name(split)} has class(es) {unknown} that the training set lacks "
            f"(training classes: {classes}). A head cannot predict a class it never saw: "
            f"add training images of them, or leave them out of the {split} set."
        )
    position = {name: i for i, name in enumerate(classes)}
    mapping = np.asarray([position.get(name, -1) for name in embedded.classes], dtype=np.int64)
    return mapping[embedded.y]


def _check_disjoint(embeddings: dict[str, Embeddings]) -> None:
    """Refuse splits that share image files: the test score would not be honest."""
    seen: dict[str, str] = {}
    for split, embedded in embeddings.items():
        for path in embedded.paths or []:
            real = os.path.realpath(path)
            if seen.setdefault(real, split) != split:
                raise ValueError(
                    f"{path!r} is in both the {seen[real]} and the {split} set. Splits must "
                    "not share images, or the evaluation is not honest; remove the duplicates."
                )


def _split_name(split: str) -> str:
    return "source" if split == "all" else f"{split} set"


def _extraction_summary(embedded: Embeddings) -> dict[str, Any]:
    return {
        "n_images": len(embedded),
        "cache_hits": embedded.cache_hits,
        "cache_misses": embedded.cache_misses,
        "seconds": round(embedded.seconds, 4),
        "failed": len(embedded.failed),
    }


def _ms_per_image(extractor: Extractor, embeddings: list[Embeddings]) -> float | None:
    """Extraction cost per image: the cache's record of compute time, else this run's."""
    if isinstance(extractor, CombinedExtractor):
        ms = extractor.ms_per_image()
        seconds = None if ms is None else ms / 1000.0
    else:
        seconds = extractor.cache.seconds_per_image(extractor.fingerprint)
    if seconds is None:
        computed = sum(e.cache_misses for e in embeddings)
        if not computed:
            return None
        seconds = sum(e.seconds for e in embeddings if e.cache_misses) / computed
    return round(1000.0 * seconds, 4)


# -- heads, grids and protocols ----------------------------------------------------------------


def _head(head: str | Any) -> tuple[Any, str, dict[str, list[Any]]]:
    """The unfitted estimator, its label, and its default grid."""
    if isinstance(head, str):
        return make_head(head), head, default_grid(head)
    if not (hasattr(head, "fit") and hasattr(head, "predict_proba")):
        raise TypeError(
            f"head={head!r} is not understood. Expected a head kind ('logreg', 'svm', "
            "'linear-svm', 'mlp') or a scikit-learn classifier with predict_proba."
        )
    return clone(head), type(head).__name__, {}


def _run(data: _Data, head: str | Any, grid: Mapping[str, Any] | None, cv: int, seed: int):
    estimator, label, default = _head(head)
    grid = resolve_grid(estimator, default if grid is None else grid)
    common = {
        "protocol": data.protocol,
        "head": label,
        "classes": data.classes,
        "grid": grid,
        "dim": data.dim,
        "extraction": data.extraction,
        "ms_per_image": data.ms_per_image,
        "seed": seed,
    }
    # One BLAS thread while fitting heads: their matrices are small (thousands of rows), so
    # threads bring little, and on a busy machine OpenBLAS's spinning threads made
    # LogisticRegression and MLPClassifier fits 8-30x slower (15.5 s against 0.6 s).
    with threadpool_limits(limits=1, user_api="blas"):
        if data.protocol == "nested-cv":
            return {**common, **_nested_cv(data, estimator, grid, cv, seed)}
        return {**common, **_fixed_split(data, estimator, grid, seed)}


def _fixed_split(data: _Data, estimator: Any, grid: dict, seed: int) -> dict[str, Any]:
    X, y = data.X, data.y
    start = time.perf_counter()
    X_fit, y_fit, groups = data.fit_rows("train")  # with augmented copies, if any
    if "validation" in X:
        model, chosen, search, selection = _select_on_validation(
            estimator,
            grid,
            X_fit,
            y_fit,
            X["validation"],
            y["validation"],
            refit_extra=data.fit_rows("validation")[:2],
        )
    else:
        model, chosen, search, selection = _select_by_inner_cv(
            estimator, grid, X_fit, y_fit, seed, data.classes, groups if data.copies else None
        )
    fit_seconds = time.perf_counter() - start
    metrics = _metrics(y["test"], model.predict(X["test"]), data.classes)
    return {
        **{name: metrics[name] for name in _SUMMARY_METRICS},
        **{f"{name}_std": None for name in _SUMMARY_METRICS},
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
        "chosen_params": chosen,
        "selection": selection,
        "search": search,
        "fit_seconds": round(fit_seconds, 4),
        "n_train": len(y["train"]),
        "n_validation": len(y.get("validation", ())),
        "n_test": len(y["test"]),
    }


def _nested_cv(data: _Data, estimator: Any, grid: dict, cv: int, seed: int) -> dict[str, Any]:
    X, y = data.X["all"], data.y["all"]
    _check_outer_folds(y, cv, data.classes)
    predicted = np.empty_like(y)
    folds = []
    outer = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    for k, (train, test) in enumerate(outer.split(X, y)):
        start = time.perf_counter()
        X_fit, y_fit, groups = data.fit_rows("all", train)  # with augmented copies, if any
        model, chosen, search, selection = _select_by_inner_cv(
            estimator, grid, X_fit, y_fit, seed, data.classes, groups if data.copies else None
        )
        fit_seconds = time.perf_counter() - start
        predicted[test] = model.predict(X[test])
        metrics = _metrics(y[test], predicted[test], data.classes)
        folds.append(
            {
                "fold": k,
                **{name: metrics[name] for name in _SUMMARY_METRICS},
                "chosen_params": chosen,
                "selection": selection,
                "search": search,
                "fit_seconds": round(fit_seconds, 4),
                "n_train": len(train),
                "n_test": len(test),
            }
        )
    pooled = _metrics(y, predicted, data.classes)
    summary: dict[str, Any] = {}
    for name in _SUMMARY_METRICS:
        values = np.asarray([fold[name] for fold in folds])
        summary[name] = float(values.mean())
        summary[f"{name}_std"] = float(values.std())  # ddof=0, as GridSearchCV's std_test_score
    return {
        **summary,
        "per_class": pooled["per_class"],
        "confusion_matrix": pooled["confusion_matrix"],
        "pooled": {name: pooled[name] for name in _SUMMARY_METRICS},
        # Each parameter's choice in every fold, e.g. {"clf__C": [0.01, 0.1, 0.01]}.
        "chosen_params": {
            name: [fold["chosen_params"][name] for fold in folds]
            for name in folds[0]["chosen_params"]
        },
        "selection": folds[0]["selection"],
        "search": [fold["search"] for fold in folds],
        "fit_seconds": round(sum(fold["fit_seconds"] for fold in folds), 4),
        "cv": cv,
        "folds": folds,
        "n_train": round(float(np.mean([fold["n_train"] for fold in folds]))),
        "n_validation": 0,
        "n_test": len(y),
    }


def _select_on_validation(estimator, grid, X_train, y_train, X_val, y_val, refit_extra=None):
    """Fit every candidate on train, keep the best on validation, refit it on both
    (``refit_extra``: the validation rows to refit on, copies included, if not X_val)."""
    candidates = list(ParameterGrid(grid))
    search: list[dict[str, Any]] = [{"params": params, "score": None} for params in candidates]
    if len(candidates) > 1:
        for entry in search:
            model = clone(estimator).set_params(**entry["params"]).fit(X_train, y_train)
            entry["score"] = float(accuracy_score(y_val, model.predict(X_val)))
    best = int(np.argmax([entry["score"] or 0.0 for entry in search]))  # first of equals
    chosen = candidates[best]
    model = clone(estimator).set_params(**chosen)
    X_more, y_more = refit_extra if refit_extra is not None else (X_val, y_val)
    model.fit(np.concatenate([X_train, X_more]), np.concatenate([y_train, y_more]))
    return model, chosen, search, "validation accuracy" if len(candidates) > 1 else "none"


def _select_by_inner_cv(estimator, grid, X, y, seed, classes, groups=None):
    """Stratified inner cross-validation on (X, y) only; the best candidate refitted on all.

    With ``groups`` (augmented copies), folds are grouped: a copy stays with its original,
    and only originals are scored."""
    candidates = list(ParameterGrid(grid))
    if len(candidates) == 1:
        model = clone(estimator).set_params(**candidates[0]).fit(X, y)
        return model, candidates[0], [{"params": candidates[0], "score": None}], "none"
    if groups is None:
        folds = _inner_folds(y, classes)
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        from featx.tuning import grouped_folds

        _, originals = np.unique(groups, return_index=True)
        folds = _inner_folds(y[originals], classes)
        splits = grouped_folds(y, groups, folds, seed)
    search = GridSearchCV(
        clone(estimator),
        grid,
        scoring="accuracy",
        cv=splits,
        refit=True,
        error_score="raise",
    ).fit(X, y)
    results = [
        {"params": params, "score": float(score)}
        for params, score in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    ]
    return search.best_estimator_, search.best_params_, results, f"{folds}-fold accuracy"


def _smallest_class(y: np.ndarray, classes: list[str]) -> tuple[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    return classes[smallest], int(counts[smallest])


def _check_outer_folds(y: np.ndarray, cv: int, classes: list[str]) -> None:
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv={cv!r} is not a number of folds. Expected an int >= 2.")
    name, count = _smallest_class(y, classes)
    if count < cv:
        fix = f"Pass cv={count} or fewer, or add images." if count >= 2 else "Add images of it."
        raise ValueError(
            f"Cross-validation with cv={cv} folds needs at least {cv} images of every class, "
            f"but class {name!r} has {count}. {fix}"
        )


def _inner_folds(y: np.ndarray, classes: list[str]) -> int:
    """INNER_FOLDS, or fewer when a class has fewer training images than that."""
    name, count = _smallest_class(y, classes)
    if count < 2:
        raise ValueError(
            "Choosing hyperparameters by inner cross-validation needs at least 2 training "
            f"images of every class, but class {name!r} has {count}. Add images, pass "
            "validation= to choose on a validation set, or grid={} to skip the search."
        )
    return min(INNER_FOLDS, count)


def _metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": those are simply wrong predictions.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


# -- compare's backbone entries ----------------------------------------------------------------


@dataclass
class _Entry:
    label: str
    params: dict[str, Any]  # Extractor keyword arguments, "backbone" included


_EXTRACTOR_PARAMS = tuple(
    name
    for name in inspect.signature(Extractor.__init__).parameters
    if name not in ("self", "cache_dir", "verbose")
)


def _entries(
    backbones: Sequence[str | Mapping[str, Any] | Backbone], **defaults: Any
) -> tuple[list[_Entry], dict[str, Any]]:
    """One entry per backbone, with the defaults for those given by name; and the defaults."""
    if not backbones:
        raise ValueError("backbones= is empty. Pass at least one backbone.")
    return [_entry(b, defaults) for b in backbones], defaults


def _entry(backbone: str | Mapping[str, Any] | Backbone, defaults: dict[str, Any]) -> _Entry:
    if isinstance(backbone, Backbone):
        return _Entry(_backbone_label(backbone), {"backbone": backbone})
    if isinstance(backbone, Mapping):
        params = dict(backbone)
        label = params.pop("label", None)
        unknown = [key for key in params if key not in _EXTRACTOR_PARAMS]
        if unknown or "backbone" not in params:
            problem = f"unknown key(s) {unknown}" if unknown else "no 'backbone' key"
            raise ValueError(
                f"The backbone entry {dict(backbone)!r} has {problem}. Expected 'backbone' "
                f"and optionally 'label' and Extractor parameters: {', '.join(_EXTRACTOR_PARAMS)}."
            )
        if not isinstance(params["backbone"], (str, os.PathLike, list, Backbone)):
            # A keras.Model keeps its own weights unless the entry names a file: the
            # call's weights= is for the registry backbones beside it.
            params.setdefault("weights", "imagenet")
        params = {**defaults, **params}
        if isinstance(params["backbone"], Backbone):
            params = {"backbone": params["backbone"]}
            return _Entry(label or _backbone_label(params["backbone"]), params)
        names = params["backbone"] if isinstance(params["backbone"], list) else [params["backbone"]]
        # A list of backbones is one entry: their embeddings concatenated.
        text = " + ".join(_name_label(name, params["weights"]) for name in names)
        return _Entry(label or text, params)
    # A name, a model file or a keras.Model: the same as an entry holding only it.
    return _entry({"backbone": backbone}, defaults)


def _baselines(first: _Entry, defaults: dict[str, Any]) -> list[_Entry]:
    entries = []
    name = first.params["backbone"]
    if _is_registry_name(name) and first.params.get("weights") is not None:
        random = {**first.params, "weights": None}
        entries.append(_Entry(f"{get_spec(name).name} (random weights)", random))
    pixels = RawPixels(RAW_PIXELS_SIZE)
    entries.append(_Entry(_backbone_label(pixels), {"backbone": pixels}))
    return entries


def _is_registry_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    try:
        get_spec(name)
    except (KeyError, ValueError):
        return False
    return True


def _backbone_label(backbone: Backbone) -> str:
    if isinstance(backbone, RawPixels):
        return f"raw pixels {backbone.size}x{backbone.size}"
    return str(backbone.name)


def _name_label(backbone: Any, weights: Any) -> str:
    if not isinstance(backbone, (str, os.PathLike)):  # a keras.Model
        return str(getattr(backbone, "name", type(backbone).__name__))
    name = Path(os.fspath(backbone)).name  # a registry name, or a model file's name
    return f"{name} (random weights)" if weights is None else name


def _weights_label(backbone: Backbone, weights: Any) -> str | None:
    """Short text for the weights: "imagenet", "random", a file name, or "own"."""
    identity = str(backbone.identity().get("weights"))
    if isinstance(backbone, RawPixels) or identity == "None":
        return None
    if identity.startswith("random:"):
        return "random"
    if identity.startswith("imagenet:"):
        return "imagenet"
    if identity.startswith("file:") and isinstance(weights, (str, os.PathLike)):
        return Path(weights).name
    return "own"  # a custom model's own weights


def _size_label(size: tuple[int, int]) -> int | str:
    return size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"


# -- plain Python output -----------------------------------------------------------------------


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """Plain Python values only, so ``json.dumps`` takes the result as it is."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)
