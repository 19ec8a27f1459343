"""The static report: one titled panel per backbone or layer, drawn with matplotlib.

matplotlib is imported only when a figure is written (with the non-interactive Agg
backend), so computing embeddings never pulls in a plotting library.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np

from featx.reporting import ReportData

__all__ = ["class_colours", "write_figure"]

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


def write_figure(data: ReportData, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the panels as PNG, SVG or PDF (by the file's extension); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(data.panels)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    colours = class_colours(len(data.classes))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 1.8, 4.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, data.panels, strict=False):
        wrong = panel.predicted != data.y
        for c, name in enumerate(data.classes):
            for mask, marker in ((~wrong, "o"), (wrong, "x")):
                rows_c = (data.y == c) & mask
                ax.scatter(
                    panel.coords[rows_c, 0],
                    panel.coords[rows_c, 1],
                    s=6,
                    c=colours[c],
                    marker=marker,
                    linewidths=0.8,
                    alpha=0.75,
                    label=_text(name) if marker == "o" else None,
                )
        m = panel.metrics
        silhouette = "-" if m["silhouette"] is None else f"{m['silhouette']:.3f}"
        ax.set_title(
            f"{_text(panel.label)}\nk-NN {m['knn_accuracy']:.3f} | silhouette {silhouette} | "
            f"trust {m['trustworthiness']:.3f}",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="center right",
        markerscale=2.5,
        fontsize=8,
        title="class (x = k-NN error)",
        title_fontsize=8,
    )
    fig.suptitle(_text(f"{data.title} ({data.method.upper()}, {_count(data)} images)"), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (4.6 * cols + 1.8), 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _text(value: str) -> str:
    """User text shown literally: '$' would otherwise start matplotlib's math mode."""
    return str(value).replace("$", r"\$")


def _count(data: ReportData) -> str:
    if len(data.y) == data.n_total:
        return str(data.n_total)
    return f"{len(data.y)} of {data.n_total}"
