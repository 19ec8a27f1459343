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

__all__ = ["Panel", "ReportData", "ReportResult", "class_colours", "report_summary"]

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
