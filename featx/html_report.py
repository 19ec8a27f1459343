"""The interactive report: one self-contained HTML file drawn with Bokeh.

Bokeh's JavaScript is written inline (``bokeh.resources.INLINE``), so the page opens
offline with no CDN and no server. Points are drawn with WebGL, which keeps panning and
hovering smooth at tens of thousands of points. All panels share one data source, so
clicking (or box-selecting) an image selects it in every panel; clicking a class in the
legend hides it in every panel. Hovering shows the image's thumbnail, true and predicted
label and path. Every user string (class names, file names, panel labels) is escaped:
tooltips escape fields, titles and legends are drawn as canvas text, and the tables are
built with :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from featx.report_model import ReportData, class_colours
from featx.separation import METRIC_HELP, METRICS, headline

__all__ = ["write_html"]

PANEL_SIZE = 430
COLUMNS = 3
METRIC_COLUMNS = tuple(m.name for m in METRICS)  # the separation table, in METRICS order
COMPARISON_COLUMNS = (
    "backbone",
    "head",
    "accuracy",
    "accuracy_std",
    "balanced_accuracy",
    "macro_f1",
    "ms_per_image",
    "dim",
    "protocol",
    "chosen_params",
)
TUNING_COLUMNS = (
    "name",
    "params",
    "score",
    "outer_accuracy",
    "dim",
    "ms_per_image",
    "baseline",
    "best",
)
_THUMB = """<img class="featx-thumb" src="@thumb" width="64" height="64" alt=""
       style="float:left;margin:0 6px 4px 0">"""
_TIP = """
<div class="featx-tip" style="max-width:260px">%s
  <div><b>@label</b></div>
  <div>predicted: @{pred%%(p)d}</div>
  <div style="clear:both;word-break:break-all;font-size:11px">@path</div>
</div>
"""
TOOLTIP, TOOLTIP_TEXT = _TIP % _THUMB, _TIP % ""
# A 1x1 transparent GIF stands in for a thumbnail that could not be made.
NO_THUMBNAIL = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="


def write_html(data: ReportData, path: str | os.PathLike) -> Path:
    """Write ``data`` as one HTML file with every script and style inline; returns the path."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, gridplot
    from bokeh.models import ColumnDataSource, Div
    from bokeh.resources import INLINE

    colours = class_colours(len(data.classes))
    columns: dict[str, Any] = {
        "label": [data.classes[c] for c in data.y],
        "colour": [colours[c] for c in data.y],
        "path": list(data.names),
        "thumb": [t or NO_THUMBNAIL for t in data.thumbnails],
    }
    for p, panel in enumerate(data.panels):
        wrong = panel.predicted != data.y
        columns[f"x{p}"] = panel.coords[:, 0].astype(float)
        columns[f"y{p}"] = panel.coords[:, 1].astype(float)
        columns[f"pred{p}"] = [data.classes[c] for c in panel.predicted]
        columns[f"marker{p}"] = ["triangle" if w else "circle" for w in wrong]
        columns[f"edge{p}"] = [
            "#111111" if w else colour for w, colour in zip(wrong, columns["colour"], strict=True)
        ]
    source = ColumnDataSource(columns, name="featx-points")

    figures, by_class = [], [[] for _ in data.classes]
    for p, panel in enumerate(data.panels):
        fig, renderers = _panel(data, p, panel, source, colours, any(data.thumbnails))
        figures.append(fig)
        for c, renderer in enumerate(renderers):
            by_class[c].append(renderer)
    _sync_class_visibility(by_class)
    _add_legend(figures[0], data.classes, by_class)

    grid = gridplot(figures, ncols=min(COLUMNS, len(figures)), merge_tools=False)
    header = Div(text=_header(data), name="featx-header")
    tables = Div(text=_tables(data), name="featx-tables", width=PANEL_SIZE * COLUMNS)
    page = file_html(column(header, grid, tables), resources=INLINE, title=data.title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _panel(data: ReportData, p: int, panel, source, colours: list[str], with_thumbnails: bool):
    from bokeh.models import CDSView, GroupFilter, HoverTool, TapTool
    from bokeh.plotting import figure

    fig = figure(
        title=f"{panel.label}  |  {headline(panel.metrics, '  ')}",
        width=PANEL_SIZE,
        height=PANEL_SIZE,
        tools="pan,wheel_zoom,box_select,reset,save",
        active_scroll="wheel_zoom",
        output_backend="webgl",
        name=f"featx-panel-{p}",
        match_aspect=True,
    )
    fig.xaxis.visible = fig.yaxis.visible = False
    fig.grid.visible = False
    renderers = []
    for c, name in enumerate(data.classes):
        renderers.append(
            fig.scatter(
                x=f"x{p}",
                y=f"y{p}",
                source=source,
                view=CDSView(filter=GroupFilter(column_name="label", group=name)),
                marker=f"marker{p}",
                size=7,
                fill_color=colours[c],
                line_color=f"edge{p}",
                line_width=1.2,
                fill_alpha=0.75,
                nonselection_fill_alpha=0.08,
                nonselection_line_alpha=0.08,
                selection_line_color="#000000",
                selection_line_width=2,
                name=f"featx-class-{p}-{c}",
            )
        )
    fig.add_tools(
        HoverTool(
            renderers=renderers,
            tooltips=(TOOLTIP if with_thumbnails else TOOLTIP_TEXT) % {"p": p},
            limit=1,  # the nearest image only, however many overlap under the cursor
            name=f"featx-hover-{p}",
        )
    )
    fig.add_tools(TapTool(renderers=renderers))
    return fig, renderers


def _sync_class_visibility(by_class: list[list]) -> None:
    """Hiding a class in one panel (legend click) hides it in every panel."""
    from bokeh.models import CustomJS

    for renderers in by_class:
        for renderer in renderers:
            others = [r for r in renderers if r is not renderer]
            renderer.js_on_change(
                "visible",
                CustomJS(
                    args={"others": others},
                    code=(
                        "for (const r of others) { if (r.visible !== cb_obj.visible) "
                        "r.visible = cb_obj.visible }"
                    ),
                ),
            )


def _add_legend(fig, classes: list[str], by_class: list[list]) -> None:
    from bokeh.models import Legend, LegendItem

    items = [
        LegendItem(label=name, renderers=[renderers[0]])
        for name, renderers in zip(classes, by_class, strict=True)
    ]
    legend = Legend(
        items=items, click_policy="hide", title="class (click to hide)", name="featx-legend"
    )
    fig.add_layout(legend, "right")
    fig.width += 150


def _header(data: ReportData) -> str:
    esc = html.escape
    n_wrong = ", ".join(
        f"{esc(p.label)}: {int((p.predicted != data.y).sum())}" for p in data.panels
    )
    return (
        f"<h1 style='font:600 20px sans-serif;margin:8px 0'>{esc(data.title)}</h1>"
        f"<p style='font:13px sans-serif;margin:4px 0'>{data.n_total} images, "
        f"{len(data.classes)} classes;{_shown(data)} {esc(data.method.upper())} maps aligned "
        "onto the first panel (Procrustes). Hover a point for its image; click or box-select "
        "to highlight the same images in every panel; click a class in the legend to hide "
        f"it. Triangles with a dark edge are misclassified by leave-one-out k-NN ({n_wrong}).</p>"
    )


def _shown(data: ReportData) -> str:
    if len(data.y) == data.n_total:
        return ""
    return (
        f" <b id='featx-shown'>showing {len(data.y)} of {data.n_total} points</b> (a seeded "
        f"sample within max_points={data.max_points} that keeps every class; metrics use "
        "every point);"
    )


def _tables(data: ReportData) -> str:
    esc = html.escape
    style = (
        "<style>.featx-table{border-collapse:collapse;font:13px sans-serif;margin:6px 0 14px}"
        ".featx-table td,.featx-table th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}.featx-table td:first-child,.featx-table th:first-child"
        "{text-align:left}.featx-help{font:12px sans-serif;color:#333}</style>"
    )
    head = "".join(
        f"<th>{esc(name)}</th>" for name in ("panel", "dim", "ms/image", *METRIC_COLUMNS)
    )
    body = ""
    for panel in data.panels:
        cells = [
            esc(panel.label),
            str(panel.details.get("dim", "")),
            _fmt(panel.details.get("ms_per_image")),
        ]
        cells += [_fmt(panel.metrics.get(name)) for name in METRIC_COLUMNS]
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    parts = [
        style,
        "<h2 style='font:600 16px sans-serif'>Separation</h2>",
        f"<table class='featx-table' id='featx-metrics'><tr>{head}</tr>{body}</table>",
        "<ul class='featx-help'>",
    ]
    parts += [f"<li><b>{esc(name)}</b>: {esc(text)}</li>" for name, text in METRIC_HELP.items()]
    n_sampled = data.panels[0].metrics.get("n_sampled")
    parts.append(
        f"</ul><p class='featx-help'>k = {data.panels[0].metrics.get('k')}; "
        f"silhouettes, margins and trustworthiness use {n_sampled} of {data.n_total} "
        f"points, k-NN accuracies {data.panels[0].metrics.get('n_knn', data.n_total)}.</p>"
    )
    parts.append(_per_class_table(data))
    parts.append(_comparison_table(data.comparison))
    parts.append(_tuning_table(data))
    if data.audit is not None:
        from featx.audit_page import audit_section

        parts.append("<h2 style='font:600 16px sans-serif'>Data issues (featx audit)</h2>")
        parts.append(audit_section(data.audit))
    return "".join(parts)


def _per_class_table(data: ReportData) -> str:
    esc = html.escape
    head = "<th>class</th><th>n</th>" + "".join(
        f"<th>{esc(p.label)}: nearest class</th><th>margin</th>" for p in data.panels
    )
    rows = {}
    for panel in data.panels:
        for row in panel.metrics["per_class"]:
            rows.setdefault(row["class"], [str(row["n"])]).extend(
                [esc(_fmt(row["nearest_class"])), _fmt(row["margin"])]
            )
    body = "".join(
        f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for name, cells in rows.items()
    )
    return (
        "<h2 style='font:600 16px sans-serif'>Per class</h2>"
        f"<table class='featx-table' id='featx-per-class'><tr>{head}</tr>{body}</table>"
    )


def _comparison_table(table: Any) -> str:
    return _table(table, COMPARISON_COLUMNS, "Classifiers (featx compare)", "featx-comparison")


def _tuning_table(data: ReportData) -> str:
    caption = f"<p class='featx-help'>{html.escape(data.tuning_caption)}</p>"
    table = _table(data.tuning, TUNING_COLUMNS, "Search (featx tune)", "featx-tuning")
    return table + caption if table and data.tuning_caption else table


def _table(table: Any, columns: tuple[str, ...], title: str, element_id: str) -> str:
    """A DataFrame's ``columns`` (those it has) as an escaped HTML table under ``title``."""
    esc = html.escape
    if table is None or len(table) == 0:
        return ""
    names = [c for c in columns if c in table.columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in names)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_fmt(row[c]))}</td>" for c in names) + "</tr>"
        for _, row in table.iterrows()
    )
    return (
        f"<h2 style='font:600 16px sans-serif'>{esc(title)}</h2>"
        f"<table class='featx-table' id='{element_id}'><tr>{head}</tr>{body}</table>"
    )


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
