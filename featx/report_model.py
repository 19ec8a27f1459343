"""What a report shows: its data model, shared by the writers and :func:`featx.report`.

:func:`featx.reporting.report` computes a :class:`ReportData`; the writers
(:mod:`featx.html_report`, :mod:`featx.figure`) draw one. Both import this module and
never each other, so data flows one way: report -> ReportData -> writers.
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.results import Result, jsonable

__all__ = [
    "MISCLASSIFIED_EDGE",
    "BestClassifier",
    "Misclassified",
    "Panel",
    "ReportData",
    "ReportResult",
    "best_row",
    "class_colours",
    "comparison_conclusion",
    "leaders",
    "readable_params",
    "report_summary",
    "separation_conclusion",
]

# The edge of a point that leave-one-out k-NN misclassifies (a triangle, on the page and in
# the figure alike).
MISCLASSIFIED_EDGE = "#111111"
# matplotlib's tab10 then the light half of tab20: the same colours on the page and figure.
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]


def class_colours(n: int) -> list[str]:
    """``n`` distinct colours as ``#rrggbb``, the same for a class in every view.

    Examples
    --------
    >>> class_colours(3)
    ['#1f77b4', '#ff7f0e', '#2ca02c']
    >>> len(set(class_colours(40)))
    40
    """
    if n <= len(_PALETTE):
        return _PALETTE[:n]
    extra = []
    for i in range(n - len(_PALETTE)):  # evenly spaced hues, alternating lightness
        r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.45 + 0.2 * (i % 2), 0.65)
        extra.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return _PALETTE + extra


@dataclass
class Panel:
    """One backbone (or layer) on the page."""

    label: str
    coords: np.ndarray  # (n, 2), aligned onto the first panel's
    metrics: dict[str, Any]  # see featx.separation.separation_metrics
    predicted: np.ndarray  # leave-one-out k-NN label index of every point
    details: dict[str, Any] = field(default_factory=dict)  # dim, cost, fingerprint, ...


@dataclass
class Misclassified:
    """One image the best classifier got wrong, predicted by a head that never saw it."""

    name: str  # its path, or "<split> #<row>" where there is none
    true: str
    predicted: str
    confidence: float | None  # the head's probability of the predicted class
    thumbnail: str = ""  # a data: URI (the gallery's images only), or ""


@dataclass
class BestClassifier:
    """The comparison's best row, class by class: its confusion matrix, per-class precision
    and recall, and the images it got wrong (most confident first)."""

    representation: str  # the row's backbone label
    head: str
    params: str  # what the search chose, readable (see readable_params)
    protocol: str
    accuracy: float  # the table's figure (the mean over folds under nested CV)
    classes: list[str]
    confusion: np.ndarray  # rows: true class; columns: predicted; in ``classes`` order
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    errors: list[Misclassified]

    @property
    def n_scored(self) -> int:
        """Images with an out-of-sample prediction (all under nested CV, else the test split)."""
        return int(self.confusion.sum())

    def most_confused(self, n: int = 3) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal cells as (true, predicted, count), largest first.

        Examples
        --------
        >>> import numpy as np
        >>> best = BestClassifier("net", "logreg", "", "nested-cv", 0.8, ["a", "b", "c"],
        ...                       np.array([[5, 2, 0], [0, 4, 1], [3, 0, 6]]), [], [])
        >>> best.most_confused(2)
        [('c', 'a', 3), ('a', 'b', 2)]
        """
        off = self.confusion.astype(np.int64).copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        cells = [np.unravel_index(i, off.shape) for i in order]
        return [(self.classes[t], self.classes[p], int(off[t, p])) for t, p in cells if off[t, p]]

    def summary(self) -> dict[str, Any]:
        return {
            "backbone": self.representation,
            "head": self.head,
            "params": self.params,
            "protocol": self.protocol,
            "accuracy": self.accuracy,
            "n_scored": self.n_scored,
            "classes": self.classes,
            "confusion_matrix": self.confusion.tolist(),
            "per_class": self.per_class,
            "n_errors": len(self.errors),
            "errors": [
                {
                    "path": e.name,
                    "true": e.true,
                    "predicted": e.predicted,
                    "confidence": e.confidence,
                }
                for e in self.errors
            ],
        }


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
    audit: Any = None  # a featx.auditing.AuditResult ("Data issues"), or None
    classifier: BestClassifier | None = None  # the comparison's best row, class by class
    classifier_note: str = ""  # why there is no classifier section, where there is a table

    @property
    def n_total(self) -> int:
        return len(self.y) if self.n_points is None else self.n_points


def report_summary(data: ReportData, **extra: Any) -> dict[str, Any]:
    """The JSON-ready description of a report (what ``featx report --json`` prints)."""

    def records(table: Any) -> list[dict[str, Any]] | None:
        return None if table is None else json.loads(table.to_json(orient="records"))

    return jsonable(
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
            "audit": None if data.audit is None else data.audit.summary(),
            "best_classifier": None if data.classifier is None else data.classifier.summary(),
            **{k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in extra.items()},
        }
    )


@dataclass
class ReportResult(Result):
    """What :func:`featx.report` made: the data drawn and the files written.

    ``summary()`` is what ``featx report --json`` prints (``out``, ``png``, ``svg``,
    ``n_points``, ``n_shown``, ``classes``, ``panels`` with their metrics, ``comparison``,
    ``tuning``, ``seconds``); ``to_frame()`` has one row per panel and metric columns;
    ``result["panels"]`` reads the summary.
    """

    data: ReportData
    out: str | os.PathLike | None = None
    png: str | os.PathLike | None = None
    svg: str | os.PathLike | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    _summary: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            self._summary = report_summary(
                self.data, out=self.out, png=self.png, svg=self.svg, seconds=self.seconds
            )
        return self._summary

    def to_frame(self) -> Any:
        import pandas as pd

        from featx.separation import METRIC_NAMES

        return pd.DataFrame(
            [
                {
                    "label": p.label,
                    "dim": p.details.get("dim"),
                    **{name: p.metrics.get(name) for name in METRIC_NAMES},
                }
                for p in self.data.panels
            ]
        )


# -- what the tables conclude ---------------------------------------------------------------

# Two figures closer than this are a tie at the tables' three decimals.
_TIE = 5e-4


def best_row(table: Any) -> int | None:
    """The position of the comparison's best row (highest accuracy, the first on ties).

    Examples
    --------
    >>> import pandas as pd
    >>> best_row(pd.DataFrame({"accuracy": [0.8, 0.9, 0.9]}))
    1
    >>> best_row(pd.DataFrame({"backbone": ["a"]})) is None
    True
    """
    if table is None or len(table) == 0 or "accuracy" not in table.columns:
        return None
    accuracy = np.asarray(table["accuracy"], dtype=float)
    if np.isnan(accuracy).all():
        return None
    return int(np.nanargmax(accuracy))


def leaders(values: Any) -> list[int]:
    """Positions of the values that tie with the largest at three decimals (the rows a
    table marks best); none where fewer than two values are compared.

    Examples
    --------
    >>> leaders([0.9, 0.95, 0.9502, None])
    [1, 2]
    >>> leaders([0.9])
    []
    """
    scores = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if len(scores) < 2 or np.isnan(scores).all():
        return []
    return np.flatnonzero(np.nanmax(scores) - scores < _TIE).tolist()


def readable_params(value: Any) -> str:
    """Chosen hyperparameters as people write them, without scikit-learn's step prefixes.

    ``value`` is a comparison's ``chosen_params`` (JSON text or a dict): one value per
    parameter, or under nested CV one per outer fold. Empty: nothing was chosen.

    Examples
    --------
    >>> readable_params('{"clf__estimator__C": 10.0}')
    'C = 10'
    >>> readable_params({"clf__C": [0.01, 0.1, 0.01], "clf__alpha": [1e-4, 1e-4, 1e-4]})
    'C = 0.01 in 2 folds, 0.1 in 1; alpha = 0.0001'
    >>> readable_params("{}")
    ''
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    short = {name: name.rsplit("__", 1)[-1] for name in value}
    if len(set(short.values())) < len(short):  # two steps' parameters share a name
        short = {name: name for name in value}
    parts = []
    for name, chosen in value.items():
        if isinstance(chosen, list):  # one choice per outer fold
            counts: dict[str, int] = {}
            for v in chosen:
                counts[_value(v)] = counts.get(_value(v), 0) + 1
            if len(counts) == 1:
                text = next(iter(counts))
            else:
                ranked = sorted(counts.items(), key=lambda kv: -kv[1])
                text = ", ".join(
                    f"{v} in {n} folds" if i == 0 else f"{v} in {n}"
                    for i, (v, n) in enumerate(ranked)
                )
        else:
            text = _value(chosen)
        parts.append(f"{short[name]} = {text}")
    return "; ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def separation_conclusion(panels: list[Panel]) -> str:
    """One sentence: which panel separates the classes best by k-NN accuracy, by how much,
    and where its classes overlap most.

    Examples
    --------
    >>> import numpy as np
    >>> def panel(label, knn):
    ...     rows = [{"class": "cat", "n": 5, "nearest_class": "dog", "margin": 0.2}]
    ...     return Panel(label, np.zeros((5, 2)), {"knn_accuracy": knn, "per_class": rows},
    ...                  np.zeros(5))
    >>> text = separation_conclusion([panel("random", 0.482), panel("pretrained", 0.882)])
    >>> print(text.replace(". ", ".\\n"))
    pretrained beats random by 0.400 k-NN accuracy (0.882 against 0.482).
    Its classes overlap most at "cat", with "dog" (margin 0.200).
    """
    scores = [(p.label, p.metrics.get("knn_accuracy")) for p in panels]
    ranked = sorted(((label, v) for label, v in scores if v is not None), key=lambda s: -s[1])
    if not ranked:
        return ""
    text = _ranking(ranked, "k-NN accuracy")
    best = next(p for p in panels if p.label == ranked[0][0])
    margins = [r for r in best.metrics.get("per_class", []) if r.get("margin") is not None]
    if margins:
        worst = min(margins, key=lambda r: r["margin"])
        owner = "Its" if len(panels) > 1 else "The"
        text += (
            f' {owner} classes overlap most at "{worst["class"]}", with '
            f'"{worst["nearest_class"]}" (margin {worst["margin"]:.3f}).'
        )
    return text


def comparison_conclusion(table: Any) -> str:
    """One sentence: the best classifier, and by how much it beats the best of each other
    representation (or, with one representation, each other head).

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"backbone": ["pretrained", "pretrained", "random"],
    ...                       "head": ["logreg", "svm", "logreg"],
    ...                       "accuracy": [0.899, 0.902, 0.500]})
    >>> comparison_conclusion(table)
    'pretrained + svm beats random + logreg by 0.402 accuracy (0.902 against 0.500).'
    """
    if best_row(table) is None:
        return ""
    rows = table.reset_index(drop=True)
    rows = rows[rows["accuracy"].notna()]
    has = {c: c in rows.columns for c in ("backbone", "head")}
    if has["backbone"] and rows["backbone"].nunique() > 1:
        best = rows.loc[rows.groupby("backbone", sort=False)["accuracy"].idxmax()]
        names = [
            f"{r['backbone']} + {r['head']}" if has["head"] else str(r["backbone"])
            for _, r in best.iterrows()
        ]
        where = ""
    else:
        best = rows
        names = [str(r["head"]) if has["head"] else f"row {i + 1}" for i, r in best.iterrows()]
        where = f"On {best['backbone'].iloc[0]}, " if has["backbone"] and len(best) > 1 else ""
    ranked = sorted(zip(names, best["accuracy"].astype(float), strict=True), key=lambda s: -s[1])
    return where + _ranking(ranked, "accuracy")


def _ranking(ranked: list[tuple[str, float]], metric: str) -> str:
    """'A beats B by 0.400 and C by 0.290 METRIC (0.882 against 0.482 and 0.592).'"""
    (first, top), rest = ranked[0], ranked[1:]
    if not rest:
        return f"{first}: {metric} {top:.3f}."
    tied = [name for name, v in rest if top - v < _TIE]
    behind = [(name, v) for name, v in rest if top - v >= _TIE]
    if tied:
        text = f"{_and([first, *tied])} tie at {metric} {top:.3f}"
        if not behind:
            return text + "."
        return text + (
            f", ahead of {_and([n for n, _ in behind])} ({_and([f'{v:.3f}' for _, v in behind])})."
        )
    return (
        f"{first} beats {_and([f'{n} by {top - v:.3f}' for n, v in behind])} {metric} "
        f"({top:.3f} against {_and([f'{v:.3f}' for _, v in behind])})."
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
