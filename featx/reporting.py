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

import base64
import io
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import Backbone
from featx.cache import EmbeddingCache, default_cache_dir
from featx.extract import Embeddings, Extractor
from featx.images import DecodeError, array_to_rgb, decode
from featx.sources import resolve_source

__all__ = [
    "Panel",
    "ReportData",
    "load_comparison",
    "load_tuning",
    "parse_backbone_spec",
    "report",
]

THUMBNAIL_SIZE = 64
# Points drawn per page: above this, a seeded sample keeping every class is shown (metrics
# still use every point; see featx.separation). 20,000 points keep the page near 10 MB.
MAX_POINTS = 20_000
# Above this many points, maps are fitted on a stratified sample of this size and the other
# points placed with transform (Projector's max_fit): benchmarks/umap_scale.py.
MAX_FIT = 50_000
# Keys of the CLI's per-backbone syntax NAME[:key=value]...; see parse_backbone_spec.
SPEC_KEYS = ("weights", "size", "layer", "pooling", "label", "seed")


@dataclass
class Panel:
    """One backbone (or layer) on the page."""

    label: str
    coords: np.ndarray  # (n, 2), aligned onto the first panel's
    metrics: dict[str, Any]  # see featx.separation.separation_metrics
    predicted: np.ndarray  # leave-one-out k-NN label index of every point
    details: dict[str, Any] = field(default_factory=dict)  # dim, cost, fingerprint, ...


@dataclass
class ReportData:
    """Everything the writers draw; rows are images, in the same order in every panel."""

    title: str
    classes: list[str]
    y: np.ndarray
    names: list[str]  # what hovering shows as the image's path or name
    thumbnails: list[str]  # data: URIs of small JPEGs, or "" where none
    panels: list[Panel]
    method: str
    comparison: Any = None  # a featx.compare table (pandas.DataFrame), or None
    tuning: Any = None  # a featx.tune results table (pandas.DataFrame), or None
    tuning_caption: str = ""  # what tuning chose and scored, one line
    n_points: int | None = None  # images in the report; more than len(y) when downsampled
    max_points: int | None = None  # the display budget that chose the rows shown

    @property
    def n_total(self) -> int:
        return len(self.y) if self.n_points is None else self.n_points


def report(
    source: Any = None,
    *,
    embeddings: Mapping[str, Any] | None = None,
    labels: Sequence[Any] | None = None,
    backbones: Sequence[str | Mapping[str, Any] | Backbone] = ("MobileNetV2",),
    layers: Sequence[str | None] | None = None,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    resize: str = "stretch",
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
    title: str | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    max_points: int | None = MAX_POINTS,
    max_fit: int | None = MAX_FIT,
) -> dict[str, Any]:
    """Compare how backbones (or layers) separate classes; write HTML and a figure.

    Parameters
    ----------
    source : path, DataFrame, array or list
        Labelled images: a class-per-folder directory, a dataset root with ``train/``,
        ``validation/`` and ``test/`` (all splits are shown together), a DataFrame
        with ``path`` and ``label`` columns, or any source :meth:`~featx.Extractor.extract`
        takes together with ``labels``.
    embeddings : mapping of panel label to Embeddings or (X, y), optional
        Instead of ``source``: embeddings already computed, one panel each (e.g.
        ``{"MobileNetV2": Embeddings.load("emb", mmap_mode="r")}``). Every panel must
        describe the same images with the same labels. Thumbnails come from
        ``Embeddings.paths`` where those files exist; ``heads`` are not run (there are no
        images to cross-validate a backbone on): pass ``comparison=`` to show a table.
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
    weights, input_size, pooling, resize, batch_size, seed
        Defaults for backbones given by name.
    method : {"umap", "pca", "tsne"}, default "umap"
    out : path or None, default "report.html"
        The interactive HTML page (self-contained, works offline).
    png, svg : path, optional
        The static figure.
    heads : sequence of str, default ("logreg",)
        Heads of the classifier comparison, each at its default parameters, under
        ``cv``-fold cross-validation (or the dataset's own splits). Empty: no comparison.
    comparison : pandas.DataFrame, optional
        A :func:`featx.compare` table to show instead of computing one.
    tuning : featx.tuning.TuneResult or pandas.DataFrame, optional
        A :func:`featx.tune` search to show: every configuration tried with its selection
        score, outer-fold accuracy, dimension and cost (``featx report --tune FILE``
        reads ``featx tune --json`` or ``--csv`` output with :func:`load_tuning`).
    cv, k
        Folds of the comparison; neighbours of the k-NN metrics.
    thumbnails : bool, default True
        Embed a small thumbnail of every image for hovering.
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
    dict
        JSON-ready: ``out``, ``png``, ``svg``, ``n_points``, ``n_shown`` (points drawn),
        ``classes``, ``panels`` (label,
        metrics, per-class separation, dim, cost), ``comparison`` and ``tuning`` (rows)
        and ``seconds``.
    """
    from featx.evaluation import _entries, _split_layout, compare

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
    if embeddings is not None:
        embedded = _precomputed(embeddings)
        images, splits, entries = None, None, []
    else:
        entries, _ = _entries(
            backbones, weights=weights, input_size=input_size, pooling=pooling, resize=resize,
            batch_size=batch_size, seed=seed,
        )  # fmt: skip
        if layers:
            first = entries[0]
            entries = [
                type(first)(
                    f"{first.label} / {layer or 'last block'}", {**first.params, "layer": layer}
                )
                for layer in layers
            ]
        splits = _split_layout(source)  # a dataset root: every split on the maps
        images = resolve_source(_labelled_source(splits) if splits else source, labels=labels)
        if images.y is None:
            raise ValueError(
                "A report needs labelled images: a class-per-folder directory, a dataset root "
                "with train/ and test/, a DataFrame with a label column, or labels=."
            )
        embedded = []
        for entry in entries:
            extractor = Extractor(**entry.params, cache_dir=cache_dir, verbose=verbose)
            emb = extractor.extract(images)
            embedded.append((entry.label, emb, _details(emb, extractor)))
            del extractor  # one network in memory at a time
    cache = EmbeddingCache(default_cache_dir() if cache_dir == "auto" else cache_dir)
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
    if comparison is None and heads and images is not None:
        comparison = compare(
            source if splits else images,  # a dataset root keeps its own train/test protocol
            backbones=[{**e.params, "label": e.label} for e in entries],
            heads=list(heads),
            baselines=False,
            grids={h: {} for h in heads},
            cv=cv,
            cache_dir=cache_dir,
            seed=seed,
        )
    timings["compare"] = time.perf_counter() - mark

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
        thumbnails=_thumbnails(items) if thumbnails else [""] * len(shown),
        panels=panels,
        method=method,
        comparison=comparison,
        **tuning_fields,
        n_points=len(common),
        max_points=max_points,
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
    return _summary(data, out=out, png=png, svg=svg, seconds=timings)


def _summary(data: ReportData, **extra: Any) -> dict[str, Any]:
    """The JSON-ready description of a report (what ``featx report --json`` prints)."""
    from featx.evaluation import _jsonable

    def records(table: Any) -> list[dict[str, Any]] | None:
        return None if table is None else json.loads(table.to_json(orient="records"))

    return _jsonable(
        {
            "title": data.title,
            "n_points": data.n_total,
            "n_shown": len(data.y),
            "classes": data.classes,
            "method": data.method,
            "panels": [
                {
                    "label": p.label,
                    **p.details,
                    "metrics": {k: v for k, v in p.metrics.items() if k != "per_class"},
                    "per_class": p.metrics["per_class"],
                }
                for p in data.panels
            ],
            "comparison": records(data.comparison),
            "tuning": records(data.tuning),
            **{k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in extra.items()},
        }
    )


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


def parse_backbone_spec(text: str) -> dict[str, Any]:
    """``NAME[:key=value]...`` -> a backbone entry for :func:`report` and :func:`compare`.

    Keys: ``weights`` (``imagenet``, ``none`` for seeded random weights, or a file path),
    ``size``, ``layer``, ``pooling``, ``label``, ``seed``. A ``:`` starts a new key only
    when a known key and ``=`` follow it, so paths may contain colons.

    Examples
    --------
    >>> parse_backbone_spec("MobileNetV2:weights=none:size=160")
    {'backbone': 'MobileNetV2', 'weights': None, 'input_size': 160}
    >>> parse_backbone_spec("MobileNetV2:weights=w/mobilenet.h5:label=pretrained")
    {'backbone': 'MobileNetV2', 'weights': 'w/mobilenet.h5', 'label': 'pretrained'}
    """
    pattern = r":(?=(?:" + "|".join(SPEC_KEYS) + r")=)"
    name, *pairs = re.split(pattern, text.strip())
    if not name:
        raise ValueError(f"Backbone spec {text!r} has no backbone name, e.g. 'MobileNetV2'.")
    entry: dict[str, Any] = {"backbone": name}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "weights":
            entry["weights"] = None if value.lower() == "none" else value
        elif key == "size":
            entry["input_size"] = _size_value(value, text)
        elif key == "seed":
            entry["seed"] = int(value)
        else:
            entry[key] = value
    return entry


def _size_value(value: str, text: str) -> int | tuple[int, int]:
    parts = value.lower().split("x")
    if not all(p.isdigit() for p in parts) or len(parts) > 2:
        raise ValueError(f"Backbone spec {text!r}: size={value!r} should be N or HxW.")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


# -- steps ----------------------------------------------------------------------------------


def _labelled_source(splits) -> Any:
    """A dataset root's splits as one DataFrame of every split's images."""
    import pandas as pd

    frames = []
    for split, folder in splits.sources.items():
        found = resolve_source(folder)
        if found.y is None:
            raise ValueError(f"The {split} split {str(folder)!r} has no class subfolders.")
        frames.append(
            pd.DataFrame(
                {
                    "path": found.inputs,
                    "label": [found.classes[i] for i in found.y],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


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


def _details(emb: Embeddings, extractor: Extractor) -> dict[str, Any]:
    identity = extractor.backbone.identity()
    seconds_per_image = extractor.cache.seconds_per_image(extractor.fingerprint)
    return {
        "backbone": identity.get("architecture"),
        "weights": str(identity.get("weights")),
        "layer": identity.get("layer"),
        "input_size": list(extractor.input_size),
        "dim": emb.dim,
        "ms_per_image": None if seconds_per_image is None else round(1000 * seconds_per_image, 3),
        "cache_hits": emb.cache_hits,
        "cache_misses": emb.cache_misses,
        "extract_seconds": round(emb.seconds, 3),
        "fingerprint": emb.fingerprint,
    }


def _thumbnails(items: Sequence[Any]) -> list[str]:
    """A small JPEG of each image (a path, pixels or PIL image), as a data: URI.

    Empty where there is no image (``None``) or it cannot be read.
    """
    from PIL import Image

    size = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    out = []
    for item in items:
        try:
            if item is None:
                out.append("")
                continue
            if isinstance(item, str):
                with open(item, "rb") as f:
                    pixels = decode(f.read(), size, resize="center_crop")
            elif isinstance(item, np.ndarray):
                pixels = array_to_rgb(item, size, resize="center_crop")
            else:
                pixels = np.asarray(item.convert("RGB").resize(size))
        except (OSError, DecodeError):
            out.append("")
            continue
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
        out.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out


def _precomputed(embeddings: Mapping[str, Any]) -> list[tuple[str, Embeddings, dict]]:
    """``report(embeddings=...)``'s panels as (label, Embeddings, details)."""
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError(
            "embeddings= must be a non-empty mapping of panel label to Embeddings or (X, y), "
            f"e.g. {{'MobileNetV2': emb}}; got {type(embeddings).__name__}."
        )
    panels = []
    for label, value in embeddings.items():
        if isinstance(value, Embeddings):
            emb = value
        elif isinstance(value, tuple) and len(value) == 2:
            emb = _as_embeddings(label, *value)
        else:
            raise ValueError(
                f"embeddings[{label!r}] is a {type(value).__name__}. Expected an Embeddings "
                "(from Extractor.extract or Embeddings.load) or an (X, y) pair."
            )
        if emb.y is None or emb.classes is None:
            raise ValueError(
                f"embeddings[{label!r}] has no labels; a report needs them. Pass (X, y)."
            )
        details = {"dim": emb.dim, "n": len(emb), "fingerprint": emb.fingerprint or None}
        panels.append((str(label), emb, details))
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
