"""The static report: one titled panel per backbone or layer, drawn with matplotlib.

matplotlib is imported only when a figure is written (with the non-interactive Agg
backend), so computing embeddings never pulls in a plotting library.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featx.report_model import MISCLASSIFIED_EDGE, ReportData, class_colours
from featx.separation import headline

__all__ = ["write_figure"]


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
            # The page's markers: a class-coloured circle; a triangle with a dark edge where
            # leave-one-out k-NN gets the image wrong (drawn last, so errors stay visible).
            for mask, marker, edge in ((~wrong, "o", colours[c]), (wrong, "^", MISCLASSIFIED_EDGE)):
                rows_c = (data.y == c) & mask
                ax.scatter(
                    panel.coords[rows_c, 0],
                    panel.coords[rows_c, 1],
                    s=9 if marker == "o" else 13,
                    c=colours[c],
                    marker=marker,
                    edgecolors=edge,
                    linewidths=0.4 if marker == "o" else 0.6,
                    alpha=0.75,
                    label=_text(name) if marker == "o" else None,
                )
        ax.set_title(f"{_text(panel.label)}\n{headline(panel.metrics)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    from matplotlib.lines import Line2D

    handles, labels = axes.flat[0].get_legend_handles_labels()
    key = Line2D([], [], linestyle="", marker="^", markersize=4, markerfacecolor="#9a9a9a",
                 markeredgecolor=MISCLASSIFIED_EDGE, markeredgewidth=0.6, alpha=0.75)  # fmt: skip
    fig.legend(
        [*handles, key],
        [*labels, "misclassified\n(leave-one-out k-NN)"],
        loc="center right",
        markerscale=2.0,
        fontsize=8,
        title="class",
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
