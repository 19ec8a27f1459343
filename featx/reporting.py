"""Reports: how several backbones (or layers of one) separate the classes of a dataset.

:func:`report` runs the whole flow for a labelled source: embeddings of every backbone
(from the cache where present), a 2-D map of each (cached too), maps aligned onto the first
panel's, separation metrics (:mod:`featx.separation`) and a classifier comparison
(:func:`featx.compare`). It then writes an interactive, self-contained HTML page
(:mod:`featx.html_report`) and, if asked, a static PNG/SVG figure (:mod:`featx.figure`).
Plotting libraries are imported only by those writers.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> from featx.backbones import RawPixels
>>> from featx.reporting import report
>>> root = Path(tempfile.mkdtemp())
>>> for name, colour in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
...     (root / name).mkdir()
...     for i in range(8):
...         shade = tuple(c + 4 * i for c in colour)
...         Image.new("RGB", (8, 8), shade).save(root / name / f"{i}.png")
>>> result = report(root, backbones=[RawPixels(4), RawPixels(2)], method="pca",
...                 out=root / "report.html", heads=(), cache_dir=None)
>>> [panel["metrics"]["knn_accuracy"] for panel in result["panels"]]
[1.0, 1.0]
>>> (root / "report.html").exists()
True
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import Backbone
from featx.cache import EmbeddingCache
from featx.config import BackboneConfig
from featx.embeddings import Embeddings
from featx.evaluation import (
    Comparison,
    Embedded,
    compare_embedded,
    embed_splits,
    entries,
    unique_label,
)
from featx.images import thumbnail_uris
from featx.learning import classification_metrics
from featx.report_model import (
    BestClassifier,
    Misclassified,
    Panel,
    ReportData,
    ReportResult,
    best_row,
    readable_params,
)
from featx.sources import resolve_source
from featx.splits import Splits, resolve_splits, split_layout

__all__ = ["load_comparison", "load_tuning", "report"]

THUMBNAIL_SIZE = 64
# The gallery of the best classifier's errors: this many, most confident first, in larger
# thumbnails (every error is in summary()["best_classifier"]).
MAX_ERRORS = 60
ERROR_THUMBNAIL_SIZE = 96
# Points drawn per page: above this, a seeded sample keeping every class is shown (metrics
# still use every point; see featx.separation). 20,000 points keep the page near 10 MB.
MAX_POINTS = 20_000
# Above this many points, maps are fitted on a stratified sample of this size and the other
# points placed with transform (Projector's max_fit): benchmarks/umap_scale.py.
MAX_FIT = 50_000


def report(
    source: Any = None,
    *,
    embeddings: Mapping[str, Any] | None = None,
    labels: Sequence[Any] | None = None,
    backbones: Sequence[str | Mapping[str, Any] | Backbone | BackboneConfig] = ("MobileNetV2",),
    layers: Sequence[str | None] | None = None,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | list[Any] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    resize: str | None = None,
    precision: str = "float32",
    method: str = "umap",
    out: str | os.PathLike | None = "report.html",
    png: str | os.PathLike | None = None,
    svg: str | os.PathLike | None = None,
    heads: Sequence[str] = ("logreg",),
    comparison: Any = None,
    tuning: Any = None,
    cv: int = 5,
    k: int = 5,
    thumbnails: bool = True,
    audit: bool = False,
    title: str | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    max_points: int | None = MAX_POINTS,
    max_fit: int | None = MAX_FIT,
) -> ReportResult:
    """Compare how backbones (or layers) separate classes; write HTML and a figure.

    Each backbone embeds every image once (each split of a dataset root on its own, from
    the cache where present); its map, its metrics and its rows of the classifier table
    are all computed from those embeddings.

    Parameters
    ----------
    source : path, DataFrame, array or list
        Labelled images: a class-per-folder directory, a dataset root with ``train/``,
        ``validation/`` and ``test/`` (all splits are shown together), a DataFrame
        with ``path`` and ``label`` columns, or any source :meth:`~featx.Extractor.extract`
        takes together with ``labels``.
    embeddings : mapping of panel label to Embeddings, (X, y), dict of splits or Embedded
        Instead of ``source``: embeddings already computed, one panel each (e.g.
        ``{"MobileNetV2": Embeddings.load("emb", mmap_mode="r")}``, or
        ``{"MobileNetV2": {"train": e1, "test": e2}}`` to keep a fixed test set for the
        classifier table; the map shows every split). Every panel must describe the same
        images with the same labels. Thumbnails come from ``Embeddings.paths`` where
        those files exist. ``heads`` are evaluated on them as on extracted images. An
        :class:`~featx.evaluation.Embedded` (what :func:`~featx.evaluation.embed_splits`
        returns) also keeps its network's details for the tables.
    labels : sequence, optional
        One label per image, for sources that carry none (arrays, lists of paths).
    backbones : sequence, default ("MobileNetV2",)
        One panel each: registry names (using ``weights``, ``input_size``, ``pooling``),
        dicts of :class:`~featx.Extractor` parameters with an optional ``"label"``
        (per-backbone weights: ``{"backbone": "MobileNetV2", "weights": None}``), or
        :class:`~featx.backbones.Backbone` instances.
    layers : sequence of str or None, optional
        Instead of several backbones, one panel per layer of the first backbone (``None``
        is its last block), e.g. ``["block_3_expand_relu", "block_9_expand_relu", None]``.
    weights, input_size, pooling, layer, resize, precision, batch_size, seed
        Defaults for backbones given by name (see :class:`~featx.config.BackboneConfig`).
    method : {"umap", "pca", "tsne"}, default "umap"
    out : path or None, default "report.html"
        The interactive HTML page (self-contained, works offline).
    png, svg : path, optional
        The static figure.
    heads : sequence of str, default ("logreg",)
        Heads of the classifier comparison, each at its default parameters, under
        ``cv``-fold cross-validation (or the dataset's own splits). Empty: no comparison.
    comparison : featx.evaluation.Comparison or pandas.DataFrame, optional
        A :func:`featx.compare` result to show instead of computing one. The
        :class:`~featx.evaluation.Comparison` itself keeps each row's predictions, so the
        page also shows the best row's confusion matrix, per-class precision and recall
        and misclassified images; a table alone (or :func:`load_comparison` of a saved
        one) shows the table only.
    tuning : featx.tuning.TuneResult or pandas.DataFrame, optional
        A :func:`featx.tune` search to show: every configuration tried with its selection
        score, outer-fold accuracy, dimension and cost (``featx report --tune FILE``
        reads ``featx tune --json`` or ``--csv`` output with :func:`load_tuning`).
    cv, k
        Folds of the comparison; neighbours of the k-NN metrics.
    thumbnails : bool, default True
        Embed a small thumbnail of every image for hovering.
    audit : bool, default False
        Add a "Data issues" section: :func:`featx.audit` on the first panel's embeddings
        (its ``heads``, or logreg; ``cv``, ``seed``; nothing extracted again): label issues
        beside their neighbours, duplicates and leaks, outliers, naive and leak-free
        scores. ``summary()["audit"]`` is its ``featx audit --json`` object.
    title : str, optional
    cache_dir : path, "auto" or None
        Embeddings and maps are cached here.
    max_points : int or None, default 20000
        Most points drawn per panel. Above it, the page shows a seeded sample in which
        every class keeps at least ``min(its size, 50)`` points, and says so; metrics
        still use every point (k-NN ones a 20,000-point sample, see
        :func:`featx.separation.separation_metrics`). ``None`` draws every point.
    max_fit : int or None, default 50000
        Above this many points, each map is fitted on a stratified sample of this size
        and the other points placed on it (:class:`~featx.projection.Projector`'s
        ``max_fit``). ``None`` fits every point.

    Returns
    -------
    ReportResult
        ``summary()`` (what ``featx report --json`` prints, and what ``result[key]``
        reads): ``out``, ``png``, ``svg``, ``n_points``, ``n_shown`` (points drawn),
        ``classes``, ``panels`` (label, metrics, per-class separation, dim, cost),
        ``comparison`` and ``tuning`` (rows), ``best_classifier`` (the comparison's best
        row: confusion matrix, per-class precision and recall, every out-of-sample error
        with its path, true and predicted class and confidence) and ``seconds``;
        ``to_frame()``: one row per panel; ``.data``: the
        :class:`~featx.report_model.ReportData` drawn.
    """
    start = time.perf_counter()
    from featx.projection import METHODS

    if method not in METHODS:
        raise ValueError(
            f"method={method!r} is not supported. Expected one of: {', '.join(METHODS)}."
        )
    if (source is None) == (embeddings is None):
        raise ValueError(
            "report() needs exactly one of source= (labelled images) and embeddings= "
            "(precomputed embeddings); got " + ("neither." if source is None else "both.")
        )
    tuning_fields = _tuning_fields(tuning)  # checked before any work
    timings: dict[str, float] = {}
    images = None
    if embeddings is not None:
        represented = _precomputed(embeddings)
    else:
        configs = entries(
            backbones, weights=weights, input_size=input_size, pooling=pooling,
            layer=layer, resize=resize, seed=seed, precision=precision,
        )  # fmt: skip
        if layers:
            first = configs[0]
            configs = [
                first.replace(layer=name, label=f"{first.name} / {name or 'last block'}")
                for name in layers
            ]
        splits = split_layout(source)  # a dataset root: every split on the maps
        if splits is None:
            images = resolve_source(source, labels=labels)
            if images.y is None:
                raise ValueError(
                    "A report needs labelled images: a class-per-folder directory, a dataset "
                    "root with train/ and test/, a DataFrame with a label column, or labels=."
                )
            splits = Splits("nested-cv", {"all": images})
        represented = {}
        for config in configs:  # one extraction per backbone and split, one network at a time
            represented[unique_label(config.name, represented)] = embed_splits(
                splits, config, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose
            )
    embedded = [(label, e.combined(), _details(e)) for label, e in represented.items()]
    cache = EmbeddingCache(cache_dir)
    timings["extract"] = time.perf_counter() - start

    common = _common_rows([emb for _, emb, _ in embedded])
    first_emb = embedded[0][1]
    rows = np.searchsorted(first_emb.index, common)
    y = np.asarray(first_emb.y[rows])
    for label, emb, _ in embedded[1:]:
        if not np.array_equal(emb.y[np.searchsorted(emb.index, common)], y):
            raise ValueError(
                f"Panel {label!r} labels its images differently from {embedded[0][0]!r}; "
                "every panel must describe the same images with the same labels."
            )
    classes = list(first_emb.classes)
    paths = first_emb.paths

    mark = time.perf_counter()
    maps = []
    for _, emb, _ in embedded:
        X = emb.X[np.searchsorted(emb.index, common)]
        maps.append(_cached_map(X, y, method, seed, cache, max_fit))
    aligned = [_align_all(maps[0], m) for m in maps]
    timings["project"] = time.perf_counter() - mark

    from featx.separation import separation_metrics, stratified_sample

    mark = time.perf_counter()
    panels = []
    for (label, emb, details), coords in zip(embedded, aligned, strict=True):
        X = emb.X[np.searchsorted(emb.index, common)]
        metrics = separation_metrics(X, coords, y, classes, k=k, seed=seed)
        predicted = metrics.pop("predicted")
        panels.append(Panel(label, coords, metrics, predicted, details))
    timings["metrics"] = time.perf_counter() - mark

    # The rows drawn: all, or a sample (every class kept) of those k-NN predicted.
    shown = np.arange(len(common))
    if max_points is not None and len(common) > max_points:
        labelled = np.flatnonzero(panels[0].predicted >= 0)
        shown = labelled[stratified_sample(y[labelled], int(max_points), seed=seed)]
        for panel in panels:
            panel.coords, panel.predicted = panel.coords[shown], panel.predicted[shown]

    mark = time.perf_counter()
    if comparison is None and heads:
        # The heads learn on the embeddings the maps were made of: nothing is extracted again.
        comparison = compare_embedded(
            represented, heads=list(heads), grids={h: {} for h in heads}, cv=cv, seed=seed
        )
    classifier, classifier_note = None, ""
    if isinstance(comparison, Comparison):
        classifier = _best_classifier(comparison, represented, images, thumbnails)
        comparison = comparison.table
    elif best_row(comparison) is not None:
        classifier_note = (
            "The confusion matrix, per-class precision and recall and the misclassified "
            "images need the classifier's predictions, which a table alone does not keep: "
            "pass featx.compare's result itself (comparison=result, not result.table), or "
            "let the report compute the table (heads=, --heads) rather than read it (--compare)."
        )
    timings["compare"] = time.perf_counter() - mark

    audited = None
    if audit:
        from featx.auditing import audit_embedded

        mark = time.perf_counter()
        audited = audit_embedded(
            next(iter(represented.values())), heads=list(heads) or ["logreg"], cv=cv,
            seed=seed, cache_dir=cache_dir,
        )  # fmt: skip
        timings["audit"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if images is not None:
        items = [images.inputs[int(common[i])] for i in shown]
    else:
        items = [paths[rows[i]] if paths else None for i in shown]
    data = ReportData(
        title=title or f"featx: {_source_name(source if source is not None else embeddings)}",
        classes=classes,
        y=y[shown],
        names=[paths[rows[i]] for i in shown] if paths else [f"#{common[i]}" for i in shown],
        thumbnails=thumbnail_uris(items, THUMBNAIL_SIZE) if thumbnails else [""] * len(shown),
        panels=panels,
        method=method,
        comparison=comparison,
        **tuning_fields,
        n_points=len(common),
        max_points=max_points,
        audit=audited,
        classifier=classifier,
        classifier_note=classifier_note,
    )
    if out is not None:
        from featx.html_report import write_html

        write_html(data, out)
    for path in (png, svg):
        if path is not None:
            from featx.figure import write_figure

            write_figure(data, path)
    timings["write"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    return ReportResult(data, out=out, png=png, svg=svg, seconds=timings)


def _best_classifier(
    compared: Comparison, represented: Mapping[str, Embedded], images: Any, thumbnails: bool
) -> BestClassifier | None:
    """The comparison's best row, class by class, from its out-of-sample predictions."""
    i = best_row(compared.table)
    if i is None or len(compared.results) != len(compared.table):
        return None
    row, result = compared.table.iloc[i], compared.results[i]
    true, predicted, confidence, where = [], [], [], []
    for fold in result.run.folds:  # every row once: the test split, or every outer fold
        true.append(result.y[fold.test_split][fold.test_rows])
        predicted.append(fold.predicted)
        confidence.append(fold.proba[np.arange(len(fold.predicted)), fold.predicted])
        where += [(fold.test_split, int(r)) for r in fold.test_rows]
    y_true, y_pred = np.concatenate(true), np.concatenate(predicted)
    probability = np.concatenate(confidence)
    classes = list(result.classes)
    metrics = classification_metrics(y_true, y_pred, classes)
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-probability[wrong], kind="stable")]  # most confident first
    embedded = represented.get(str(row["backbone"]))
    named = [_item(embedded, images, *where[j]) for j in wrong]
    items = [item for _, item in named]
    errors = [
        Misclassified(
            name=name,
            true=classes[y_true[j]],
            predicted=classes[y_pred[j]],
            confidence=round(float(probability[j]), 4),
        )
        for j, (name, _) in zip(wrong, named, strict=True)
    ]
    if thumbnails:
        shown = thumbnail_uris(items[:MAX_ERRORS], ERROR_THUMBNAIL_SIZE)
        for error, uri in zip(errors, shown, strict=False):
            error.thumbnail = uri
    return BestClassifier(
        representation=str(row["backbone"]),
        head=str(row["head"]),
        params=readable_params(row.get("chosen_params")),
        protocol=result.protocol,
        accuracy=float(row["accuracy"]),
        classes=classes,
        confusion=np.asarray(metrics["confusion_matrix"], dtype=np.int64),
        per_class=[{"class": name, **v} for name, v in metrics["per_class"].items()],
        errors=errors,
    )


def _item(embedded: Embedded | None, images: Any, split: str, row: int) -> tuple[str, Any]:
    """A split's row as the gallery names and shows it: its file, or its position and
    pixels (arrays given), or its position alone."""
    if embedded is None:
        return f"{split} #{row}", None
    emb = embedded.embeddings[split]
    if emb.paths is not None:
        return emb.paths[row], emb.paths[row]
    position = int(emb.index[row])
    name = f"#{position}" if split == "all" else f"{split} #{position}"
    if images is not None and split == "all":
        return name, images.inputs[position]
    return name, None


def _tuning_fields(tuning: Any) -> dict[str, Any]:
    """``ReportData``'s tuning table and caption from a TuneResult or its results table."""
    import pandas as pd

    if tuning is None:
        return {}
    if isinstance(tuning, pd.DataFrame):
        return {"tuning": tuning}
    results = getattr(tuning, "results", None)
    if not isinstance(results, pd.DataFrame):
        raise TypeError(
            f"tuning= got {type(tuning).__name__}. Expected the featx.tune(...) result "
            "(a TuneResult), its .results DataFrame, or load_tuning(path) of `featx tune "
            "--json`/`--csv` output."
        )
    score = "mean outer-fold accuracy" if tuning.protocol == "nested-cv" else "test accuracy"
    chosen = results.loc[results["best"], "name"].iloc[0] if results["best"].any() else "-"
    caption = (
        f"{tuning.protocol}: {score} of the tuned pipeline ({chosen}) "
        f"{tuning.accuracy:.4f}, baseline ({results['name'].iloc[0]}) "
        f"{tuning.baseline_accuracy:.4f}."
    )
    return {"tuning": results, "tuning_caption": caption}


def load_tuning(path: str | os.PathLike):
    """A saved :func:`featx.tune` table: ``featx tune --json`` output or its ``--csv`` file."""
    return _saved_table(path, "results", "featx tune")


def load_comparison(path: str | os.PathLike):
    """A saved :func:`featx.compare` table: ``featx compare --json`` output or ``--csv`` file."""
    return _saved_table(path, "rows", "featx compare")


def _saved_table(path: str | os.PathLike, key: str, command: str):
    """The rows a ``COMMAND --json`` output keeps under ``key``, or a ``--csv`` file."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    rows = content.get(key) if isinstance(content, dict) else content
    if not isinstance(rows, list):
        raise ValueError(
            f"{str(path)!r} is not a {command} table. Expected the output of "
            f'`{command} --json` (an object with "{key}") or of `--csv`.'
        )
    return pd.DataFrame(rows)


# -- steps ----------------------------------------------------------------------------------


def _common_rows(embeddings: list[Embeddings]) -> np.ndarray:
    """Source positions every backbone embedded (the same unless an input failed)."""
    common = embeddings[0].index
    for emb in embeddings[1:]:
        common = np.intersect1d(common, emb.index)
    if len(common) == 0:
        raise ValueError("No image was embedded by every backbone; nothing to show.")
    return np.asarray(common)


def _cached_map(
    X: np.ndarray, y: np.ndarray, method: str, seed: int, cache: EmbeddingCache,
    max_fit: int | None,
) -> np.ndarray:  # fmt: skip
    """The 2-D map of X, memoised on disk beside the embeddings (joblib.Memory)."""
    if max_fit is not None and len(X) <= max_fit:
        max_fit = None  # the same map, and the same memo entry, as without a budget
    if cache.location is None:
        return _fit_map(X, y, method, seed, "", max_fit)
    import joblib

    memory = joblib.Memory(cache.location / "projections", verbose=0)
    return memory.cache(_fit_map)(X, y, method, seed, _method_version(method), max_fit)


def _fit_map(
    X: np.ndarray, y: np.ndarray, method: str, seed: int, version: str, max_fit: int | None
) -> np.ndarray:
    """The map of the cosine geometry the metrics use: unit-length rows, not standardised."""
    from featx.projection import project
    from featx.separation import embedding_space

    if method == "tsne":
        max_fit = None  # t-SNE cannot place points on a fitted map: it maps every point
    return project(
        embedding_space(X, "cosine"), method, seed=seed, y=y, standardize=False, max_fit=max_fit
    ).embedding_


def _method_version(method: str) -> str:
    """Part of the map's cache key: a new umap-learn or scikit-learn may map differently."""
    from importlib.metadata import version

    return version("umap-learn" if method == "umap" else "scikit-learn")


def _align_all(reference: np.ndarray, coords: np.ndarray) -> np.ndarray:
    from featx.projection import align

    return align(reference, coords).astype(np.float32)


def _details(embedded: Embedded) -> dict[str, Any]:
    """What the page and ``--json`` say of a panel's representation."""
    emb = embedded.combined()
    spec = emb.spec or {}
    members = spec.get("members")
    identity = (members[0] if members else spec).get("backbone", {})
    ms = embedded.ms_per_image
    details = {
        "backbone": identity.get("architecture"),
        "weights": str(identity.get("weights")) if identity else None,
        "layer": identity.get("layer"),
        "input_size": embedded.representation.get("input_size"),
        "dim": emb.dim,
        "ms_per_image": None if ms is None else round(ms, 3),
        "cache_hits": emb.cache_hits,
        "cache_misses": emb.cache_misses,
        "extract_seconds": round(emb.seconds, 3),
        "fingerprint": emb.fingerprint or None,
    }
    if members:
        details["members"] = len(members)
    return details


def _precomputed(embeddings: Mapping[str, Any]) -> dict[str, Embedded]:
    """``report(embeddings=...)``'s panels: label -> every split of its embeddings."""
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError(
            "embeddings= must be a non-empty mapping of panel label to Embeddings, (X, y) or "
            f"a dict of splits, e.g. {{'MobileNetV2': emb}}; got {type(embeddings).__name__}."
        )
    panels = {}
    for label, value in embeddings.items():
        if isinstance(value, Embedded):  # as featx.evaluation.embed_splits made it
            panels[str(label)] = value
            continue
        if isinstance(value, tuple) and len(value) == 2:
            value = _as_embeddings(label, *value)
        if not isinstance(value, (Embeddings, Mapping)):
            raise ValueError(
                f"embeddings[{label!r}] is a {type(value).__name__}. Expected an Embeddings "
                "(from Extractor.extract or Embeddings.load), a dict of split -> Embeddings, "
                "or an (X, y) pair."
            )
        splits = resolve_splits(value)
        for split, emb in splits.sources.items():
            if not isinstance(emb, Embeddings):
                raise ValueError(
                    f"embeddings[{label!r}][{split!r}] is a {type(emb).__name__}, not an "
                    "Embeddings."
                )
            if emb.y is None or emb.classes is None:
                raise ValueError(
                    f"embeddings[{label!r}] has no labels; a report needs them. Pass (X, y)."
                )
        panels[str(label)] = embed_splits(splits, BackboneConfig())
    return panels


def _as_embeddings(label: str, X: Any, y: Any) -> Embeddings:
    from featx.embeddings import check_labelled

    X, y = check_labelled(X, y, name=f"embeddings[{label!r}]'s X")
    values, codes = np.unique(y, return_inverse=True)
    return Embeddings(X=X, y=codes, classes=[str(v) for v in values], paths=None,
                      index=np.arange(len(y)), failed=[], fingerprint="", spec={})  # fmt: skip


def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.resolve().name or str(path)
    if isinstance(source, Mapping):
        return ", ".join(map(str, source))
    return type(source).__name__
