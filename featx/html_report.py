"""The interactive report: one self-contained HTML file, its maps drawn with Bokeh.

Bokeh's JavaScript is written inline (``bokeh.resources.INLINE``), so the page opens
offline with no CDN and no server. Points are drawn with WebGL, which keeps panning and
hovering smooth at tens of thousands of points. All panels share one data source, so
clicking (or box-selecting) an image selects it in every panel; clicking a class in the
legend (plain HTML above the maps) hides it in every panel. Hovering shows the image's
thumbnail, true and predicted label and path. The tables, the best classifier's confusion
matrix and its gallery of misclassified images are plain HTML around the maps.

Every user string (class names, file names, panel labels) is escaped: tooltips escape
fields, titles are drawn as canvas text, and the HTML is built with :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from featx.report_model import (
    MISCLASSIFIED_EDGE,
    BestClassifier,
    ReportData,
    class_colours,
    comparison_conclusion,
    leaders,
    readable_params,
    separation_conclusion,
)
from featx.separation import METRICS, PER_CLASS_HELP, format_metric, headline

__all__ = ["write_html"]

COLUMNS = 3  # panels per row, at most
# Height over width of a map: a little wider than tall, so two rows of maps and their
# titles fit a laptop screen; match_aspect keeps the data's own aspect inside the frame.
MAP_ASPECT = 0.78
# The gallery's images (the first MAX_ERRORS are inlined by featx.reporting).
GALLERY_SIZE = 96
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

_STYLE = """
html,body{margin:0;background:#f7f7f8}
.fx{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",sans-serif;
 color:#1d1d1f;margin:0 auto;padding:10px 22px 48px;max-width:1860px}
.fx h1{font-size:22px;margin:8px 0 2px}
.fx>h2{font-size:17px;margin:30px 0 6px;padding-top:12px;border-top:1px solid #dedee3}
.fx h3{font-size:14px;margin:14px 0 4px}
.fx .fx-lead{color:#444;margin:2px 0 10px;max-width:1200px}
.fx ul.fx-findings{margin:6px 0 12px;padding-left:20px;font-size:15px}
.fx ul.fx-findings li{margin:2px 0}
.fx .fx-conclusion{font-size:15px;font-weight:600;margin:6px 0 8px;padding:6px 10px;
 background:#eef5ef;border-left:4px solid #2f7d3f;max-width:1200px}
.fx .fx-note{color:#555;font-size:12.5px;margin:4px 0 8px;max-width:1200px}
.fx dl.fx-help{display:grid;grid-template-columns:max-content 1fr;gap:1px 12px;
 font-size:12.5px;color:#444;margin:6px 0;max-width:1200px}
.fx dl.fx-help dt{font-weight:600}
.fx dl.fx-help dd{margin:0}
.fx table.fx-table{border-collapse:collapse;margin:6px 0 8px;background:#fff;
 font-variant-numeric:tabular-nums;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.fx .fx-table th{background:#eceef2;font-weight:600;padding:6px 10px;text-align:right;
 border-bottom:2px solid #c9ced6;white-space:nowrap}
.fx .fx-table td{padding:4px 10px;text-align:right;border-bottom:1px solid #e4e4e8}
.fx .fx-table th:first-child,.fx .fx-table td:first-child,.fx .fx-table .fx-text
 {text-align:left}
.fx .fx-table tr.fx-best td{background:#e6f2e8;font-weight:600}
.fx .fx-badge{display:inline-block;margin-left:6px;padding:0 6px;border-radius:8px;
 background:#2f7d3f;color:#fff;font-size:11px;font-weight:600;vertical-align:1px}
.fx .fx-badge.fx-base{background:#8a8f98}
.fx .fx-legend{display:flex;flex-wrap:wrap;align-items:center;gap:6px 8px;margin:8px 0 4px}
.fx .fx-legend-title{font-weight:600;margin-right:4px}
.fx .fx-class{display:inline-flex;align-items:center;gap:6px;padding:2px 10px 2px 7px;
 border:1px solid #c9ced6;border-radius:14px;background:#fff;font:inherit;cursor:pointer}
.fx .fx-class:hover{border-color:#666}
.fx .fx-class[aria-pressed=false]{opacity:.45;text-decoration:line-through}
.fx .fx-key{display:inline-flex;align-items:center;gap:6px;color:#444;margin-left:10px}
.fx .fx-maps{background:#fff;border:1px solid #e1e1e6;padding:6px 4px}
.fx .fx-side{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.fx .fx-side>div{max-width:100%}
.fx table.fx-confusion{border-collapse:collapse;background:#fff;
 font-variant-numeric:tabular-nums;font-size:12.5px}
.fx .fx-confusion td{width:var(--cell);min-width:var(--cell);height:var(--cell);
 padding:0;text-align:center;border:1px solid #fff}
.fx .fx-scroll{overflow-x:auto;max-width:100%}
.fx .fx-confusion th{font-weight:500;padding:2px 6px;white-space:nowrap;color:#333}
.fx .fx-confusion th.fx-row{text-align:right}
.fx .fx-confusion th.fx-col{vertical-align:bottom;padding:4px 2px}
.fx .fx-confusion th.fx-col span{writing-mode:vertical-rl;transform:rotate(180deg)}
.fx .fx-confusion th.fx-axis{font-weight:600;color:#555}
.fx .fx-bar{display:inline-block;height:8px;background:#4c78a8;margin-right:6px;
 vertical-align:0}
.fx .fx-gallery{display:flex;flex-wrap:wrap;gap:10px}
.fx .fx-gallery figure{margin:0;width:116px;background:#fff;border:1px solid #e1e1e6;
 padding:5px;font-size:12px}
.fx .fx-gallery img{width:96px;height:96px;display:block;margin:0 auto 4px;background:#eee}
.fx .fx-gallery figcaption{overflow-wrap:anywhere;color:#333;line-height:1.3}
.fx .fx-gallery .fx-file{color:#666;font-size:11px;word-break:break-all}
.fx .fx-true{color:#1b5e20;font-weight:600}
.fx .fx-wrong{color:#b3261e;font-weight:600}
.fx .fx-dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:3px;
 vertical-align:0}
.fx #featx-shown{color:#9a3412}
"""

# Clicking a class in the legend shows or hides it in every panel (renderer names are
# featx-class-<panel>-<class>); the class is an index, so no user string reaches the code.
_LEGEND_SCRIPT = """
<script>
document.getElementById('featx-legend').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-class]');
  if (!button || !window.Bokeh || Bokeh.documents.length === 0) return;
  const doc = Bokeh.documents[0];
  const visible = button.getAttribute('aria-pressed') !== 'true';
  for (let p = 0; ; p++) {
    const renderer = doc.get_model_by_name('featx-class-' + p + '-' + button.dataset.class);
    if (!renderer) break;
    renderer.visible = visible;
  }
  button.setAttribute('aria-pressed', String(visible));
});
</script>
"""


def write_html(data: ReportData, path: str | os.PathLike) -> Path:
    """Write ``data`` as one HTML file with every script and style inline; returns the path."""
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    layout = _maps(data)
    script, maps = components(layout)
    # Only the bundles the maps use (bokeh and its WebGL part: 1.5 MB, not all 3.9 MB).
    bokeh_js, bokeh_css = bundle_for_objs_and_resources([layout], INLINE)
    sections = [
        _separation(data),
        _comparison(data),
        _best_classifier(data),
        _per_class_separation(data),
        _tuning(data),
    ]
    if data.audit is not None:
        from featx.audit_page import audit_section

        sections.append(f"<h2>Data issues (featx audit)</h2>{audit_section(data.audit)}")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(data.title)}</title>{bokeh_js}{bokeh_css}<style>{_STYLE}</style>"
        "</head><body><main class='fx'>"
        f"{_header(data)}{_legend(data)}<div class='fx-maps'{_maps_width(data)}>{maps}</div>"
        f"{''.join(sections)}</main>{script}{_LEGEND_SCRIPT}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# -- the maps ---------------------------------------------------------------------------------


def _maps(data: ReportData):
    from bokeh.layouts import gridplot
    from bokeh.models import ColumnDataSource

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
            MISCLASSIFIED_EDGE if w else colour
            for w, colour in zip(wrong, columns["colour"], strict=True)
        ]
    source = ColumnDataSource(columns, name="featx-points")
    figures = [
        _panel(data, p, panel, source, colours, any(data.thumbnails))
        for p, panel in enumerate(data.panels)
    ]
    return gridplot(
        figures,
        ncols=min(COLUMNS, len(figures)),
        merge_tools=False,
        toolbar_location=None,  # each map keeps its own toolbar; no shared one (nor its logo)
        sizing_mode="stretch_width",
    )


def _maps_width(data: ReportData) -> str:
    """A lone map spans at most 1,000 px: wider, it would be taller than a laptop screen."""
    return " style='max-width:1000px'" if len(data.panels) == 1 else ""


def _panel(data: ReportData, p: int, panel, source, colours: list[str], with_thumbnails: bool):
    from bokeh.models import CDSView, GroupFilter, HoverTool, TapTool, Title
    from bokeh.plotting import figure

    width = 600
    fig = figure(
        title=panel.label,
        width=width,
        height=round(width * MAP_ASPECT),
        sizing_mode="scale_width",
        tools="pan,wheel_zoom,box_select,reset,save",
        active_scroll="wheel_zoom",
        toolbar_location="right",  # beside the frame: titles above keep their width
        output_backend="webgl",
        name=f"featx-panel-{p}",
        match_aspect=True,
    )
    fig.toolbar.logo = None
    fig.title.text_font_size = "14px"
    fig.add_layout(
        Title(text=headline(panel.metrics, "   "), text_font_size="12px",
              text_font_style="normal", text_color="#444444"),
        "above",
    )  # fmt: skip
    fig.xaxis.visible = fig.yaxis.visible = False
    fig.grid.visible = False
    fig.outline_line_color = "#dddddd"
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
    return fig


def _marker(kind: str, fill: str, edge: str) -> str:
    """The swatch of a point as the maps draw it (size, fill alpha and edge width alike)."""
    shape = (
        "<circle cx='7' cy='7' r='5'"
        if kind == "circle"
        else "<polygon points='7,1.5 12.5,11.5 1.5,11.5'"
    )
    return (
        f"<svg class='fx-swatch' data-marker='{kind}' width='14' height='14' "
        f"viewBox='0 0 14 14' aria-hidden='true'>{shape} fill='{fill}' fill-opacity='0.75' "
        f"stroke='{edge}' stroke-width='1.2'/></svg>"
    )


def _legend(data: ReportData) -> str:
    """The classes above the maps: each swatch is its class's marker; a click hides it."""
    esc = html.escape
    colours = class_colours(len(data.classes))
    buttons = "".join(
        f"<button type='button' class='fx-class' data-class='{c}' aria-pressed='true' "
        f"title='show or hide {esc(name, quote=True)} in every map'>"
        f"{_marker('circle', colours[c], colours[c])}{esc(name)}</button>"
        for c, name in enumerate(data.classes)
    )
    return (
        "<div class='fx-legend' id='featx-legend'>"
        "<span class='fx-legend-title'>class (click to hide)</span>"
        f"{buttons}<span class='fx-key' id='featx-key'>"
        f"{_marker('triangle', '#9a9a9a', MISCLASSIFIED_EDGE)}"
        "dark-edged triangle: misclassified by leave-one-out k-NN</span></div>"
    )


# -- the text ---------------------------------------------------------------------------------


def _header(data: ReportData) -> str:
    esc = html.escape
    n_wrong = ", ".join(
        f"{esc(p.label)} {int((p.predicted != data.y).sum()):,}" for p in data.panels
    )
    findings = [separation_conclusion(data.panels), comparison_conclusion(data.comparison)]
    items = "".join(f"<li>{esc(text)}</li>" for text in findings if text)
    return (
        f"<h1>{esc(data.title)}</h1>"
        f"<p class='fx-lead'>{data.n_total:,} images, {len(data.classes)} classes;"
        f"{_shown(data)} {esc(data.method.upper())} maps aligned onto the first panel "
        "(Procrustes). Hover a point for its image; click or box-select to highlight the same "
        "images in every panel; click a class to hide it everywhere. Misclassified by "
        f"leave-one-out k-NN: {n_wrong}.</p>"
        + (f"<ul class='fx-findings' id='featx-findings'>{items}</ul>" if items else "")
    )


def _shown(data: ReportData) -> str:
    if len(data.y) == data.n_total:
        return ""
    return (
        f" <b id='featx-shown'>showing {len(data.y):,} of {data.n_total:,} points</b> (a seeded "
        f"sample within max_points={data.max_points} that keeps every class; metrics use "
        "every point);"
    )


def _sample_note(data: ReportData) -> str:
    """Which points the metrics used: all of them, or the samples they are bounded by."""
    metrics = data.panels[0].metrics
    n = metrics.get("n", data.n_total)
    n_sampled, n_knn = metrics.get("n_sampled", n), metrics.get("n_knn", n)
    k = f"k = {metrics.get('k')} neighbours. "
    if n_sampled == n and n_knn == n:
        return k + f"Every metric uses all {n:,} images."
    knn = f"all {n:,} images" if n_knn == n else f"a seeded sample of {n_knn:,}"
    return k + (
        f"Silhouettes, margins and trustworthiness use a seeded sample of {n_sampled:,} of "
        f"the {n:,} images (they cost n²); the k-NN accuracies use {knn}."
    )


# -- the tables -------------------------------------------------------------------------------


def _separation(data: ReportData) -> str:
    esc = html.escape
    best = leaders([p.metrics.get("knn_accuracy") for p in data.panels])
    # data-metric: the key the same number has in `featx report --json`.
    head = "".join(
        f"<th title='{esc(m.help, quote=True)}' data-metric='{esc(m.name, quote=True)}'>"
        f"{esc(m.short)}</th>"
        for m in METRICS
    )
    body = ""
    for i, panel in enumerate(data.panels):
        label = esc(panel.label) + (_badge("best") if i in best else "")
        cells = [_num(panel.details.get("dim"), "{:,}"), _num(panel.details.get("ms_per_image"))]
        cells += [format_metric(panel.metrics.get(m.name)) for m in METRICS]
        body += _row([label, *cells], best=i in best)
    help_items = [(m.short, m.help) for m in METRICS] + [
        (name.replace("_", " "), text) for name, text in PER_CLASS_HELP.items()
    ]
    return (
        "<h2>Separation</h2>"
        f"<p class='fx-conclusion'>{esc(separation_conclusion(data.panels))}</p>"
        "<table class='fx-table' id='featx-metrics'><tr><th>panel</th><th>dim</th>"
        f"<th>ms/image</th>{head}</tr>{body}</table>"
        f"<p class='fx-note'>{esc(_sample_note(data))}</p><dl class='fx-help'>"
        + "".join(f"<dt>{esc(name)}</dt><dd>{esc(text)}</dd>" for name, text in help_items)
        + "</dl>"
    )


# The comparison's columns as the page shows them: (heading, column, format).
_COMPARISON = (
    ("representation", "backbone", None),
    ("head", "head", None),
    ("accuracy", "accuracy", "{:.3f}"),
    ("balanced accuracy", "balanced_accuracy", "{:.3f}"),
    ("macro F1", "macro_f1", "{:.3f}"),
    ("ms/image", "ms_per_image", "{:.3f}"),
    ("dim", "dim", "{:,}"),
)
# How each protocol scored the rows, and (where a search chose parameters) how it chose.
_PROTOCOLS = {
    "nested-cv": (
        "Nested cross-validation: accuracy is the mean over the outer folds (± their standard "
        "deviation)",
        "; each fold's parameters were chosen by an inner search on its training part only.",
    ),
    "train-validation-test": (
        "Accuracy measured once on the test split, each head fitted on train + validation",
        ", its parameters chosen on the validation split first.",
    ),
    "train-test": (
        "Accuracy measured once on the test split, each head fitted on train",
        ", its parameters chosen by cross-validation on train first.",
    ),
}


def _comparison(data: ReportData) -> str:
    esc = html.escape
    table = data.comparison
    if table is None or len(table) == 0:
        return ""
    best = leaders(table["accuracy"]) if "accuracy" in table.columns else []
    params = [readable_params(v) for v in table.get("chosen_params", [None] * len(table))]
    columns = [(h, c, f) for h, c, f in _COMPARISON if c in table.columns]
    protocols = list(dict.fromkeys(table["protocol"])) if "protocol" in table.columns else []
    headings = [h for h, _, _ in columns] + (["protocol"] if len(protocols) > 1 else [])
    headings += ["parameters"] if any(params) else []
    body = ""
    for i, (_, row) in enumerate(table.iterrows()):
        cells = []
        for _, column, fmt in columns:
            value = row[column]
            if column == "accuracy" and _finite(row.get("accuracy_std")):
                cells.append(f"{value:.3f} ± {row['accuracy_std']:.3f}")
            else:
                cells.append(esc(_num(value, fmt)))
        cells[0] += _badge("best") if i in best else ""
        if len(protocols) > 1:
            cells.append(esc(str(row["protocol"])))
        if any(params):
            cells.append(esc(params[i]) or "head defaults")
        text = tuple(i for i, c in enumerate(cells) if i >= len(columns) or columns[i][2] is None)
        body += _row(cells, best=i in best, text=text)
    notes = [
        how + (search if any(params) else ".")
        for how, search in (_PROTOCOLS[p] for p in protocols if p in _PROTOCOLS)
    ]
    return (
        "<h2>Classifiers (featx compare)</h2>"
        f"<p class='fx-conclusion'>{esc(comparison_conclusion(table))}</p>"
        "<table class='fx-table' id='featx-comparison'><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in headings)
        + f"</tr>{body}</table>"
        + "".join(f"<p class='fx-note'>{esc(n)}</p>" for n in notes)
    )


def _per_class_separation(data: ReportData) -> str:
    esc = html.escape
    head = "<th>class</th><th>n</th>" + "".join(
        f"<th>{esc(p.label)}: nearest class</th><th>margin</th>" for p in data.panels
    )
    rows: dict[str, list[str]] = {}
    for panel in data.panels:
        for row in panel.metrics["per_class"]:
            rows.setdefault(row["class"], [f"{row['n']:,}"]).extend(
                [esc(_num(row["nearest_class"])), format_metric(row["margin"])]
            )
    names = tuple(range(2, 2 + 2 * len(data.panels), 2))  # the nearest-class columns
    body = "".join(_row([esc(name), *cells], text=names) for name, cells in rows.items())
    return (
        "<h2>Per class: separation</h2><p class='fx-note'>Each class's nearest other class in "
        "the full space, and its margin against it (above 0 the class keeps to itself).</p>"
        f"<table class='fx-table' id='featx-per-class'><tr>{head}</tr>{body}</table>"
    )


def _tuning(data: ReportData) -> str:
    esc = html.escape
    table = data.tuning
    if table is None or len(table) == 0:
        return ""
    columns = [("configuration", "name", None), ("parameters", "params", None),
               ("selection score", "score", "{:.4f}"),
               ("outer accuracy", "outer_accuracy", "{:.4f}"), ("dim", "dim", "{:,}"),
               ("ms/image", "ms_per_image", "{:.3f}")]  # fmt: skip
    columns = [(h, c, f) for h, c, f in columns if c in table.columns]
    body = ""
    for _, row in table.iterrows():
        best = bool(row.get("best", False))
        cells = [
            esc(readable_params(row[c]) if c == "params" else _num(row[c], f))
            for _, c, f in columns
        ]
        cells[0] += (_badge("chosen") if best else "") + (
            _badge("baseline", "fx-base") if bool(row.get("baseline", False)) else ""
        )
        body += _row(cells, best=best, text=(0, 1))
    caption = f"<p class='fx-note'>{esc(data.tuning_caption)}</p>" if data.tuning_caption else ""
    return (
        "<h2>Search (featx tune)</h2>"
        "<table class='fx-table' id='featx-tuning'><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h, _, _ in columns)
        + f"</tr>{body}</table>{caption}"
    )


# -- the best classifier ----------------------------------------------------------------------


def _best_classifier(data: ReportData) -> str:
    esc = html.escape
    best = data.classifier
    if best is None:
        note = esc(data.classifier_note)
        return f"<p class='fx-note' id='featx-no-classifier'>{note}</p>" if note else ""
    params = f" ({esc(best.params)})" if best.params else ""
    scored = (
        f"out-of-fold predictions for all {best.n_scored:,} images"
        if best.protocol == "nested-cv"
        else f"the {best.n_scored:,} test images"
    )
    confused = best.most_confused(3)
    worst = min(best.per_class, key=lambda r: (r["recall"], r["class"]))
    findings = (
        "Most confused: "
        + ", ".join(
            f"{_quoted(t)} taken for {_quoted(p)} ({n:,} image{'s' * (n > 1)})"
            for t, p, n in confused
        )
        + f". Lowest recall: {_quoted(worst['class'])} ({worst['recall']:.3f})."
        if confused
        else "No image misclassified."
    )
    return (
        f"<h2 id='featx-best'>Best classifier: {esc(best.representation)} + {esc(best.head)}"
        f"{params}</h2>"
        f"<p class='fx-conclusion'>{findings}</p>"
        f"<p class='fx-note'>From {scored} ({esc(best.protocol)}); accuracy "
        f"{best.accuracy:.3f} in the table above.</p>"
        f"<div class='fx-side'><div><h3>Confusion matrix</h3>{_confusion(data, best)}</div>"
        f"<div><h3>Per class</h3>{_precision_recall(best)}</div></div>"
        f"{_gallery(data, best)}"
    )


def _confusion(data: ReportData, best: BestClassifier) -> str:
    """Counts, rows true and columns predicted: the diagonal in blue by recall, the errors
    in red by their share of the row (scaled to the largest error, so small ones show)."""
    esc = html.escape
    matrix = best.confusion.astype(np.int64)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    share = matrix / totals
    off = share.copy()
    np.fill_diagonal(off, 0)
    scale = max(float(off.max()), 1e-9)
    # Column names stand upright when short (digits), else run up the column.
    upright = all(len(name) <= 3 for name in best.classes)
    head = "".join(
        f"<th>{esc(name)}</th>" if upright else f"<th class='fx-col'><span>{esc(name)}</span></th>"
        for name in best.classes
    )
    rows = []
    for t, name in enumerate(best.classes):
        cells = []
        for p, count in enumerate(matrix[t]):
            if t == p:
                alpha, rgb = 0.12 + 0.78 * share[t, p], "47,110,186"
            else:
                alpha, rgb = (0.15 + 0.75 * off[t, p] / scale if count else 0.0), "196,52,40"
            ink = "#fff" if alpha > 0.55 else "#1d1d1f"
            tip = (
                f"true {name}, predicted {best.classes[p]}: {count:,} "
                f"({100 * share[t, p]:.1f}% of {name})"
            )
            cells.append(
                f"<td style='background:rgba({rgb},{alpha:.2f});color:{ink}' "
                f"title='{esc(tip, quote=True)}'>{count if count or t == p else ''}</td>"
            )
        rows.append(f"<tr><th class='fx-row'>{esc(name)}</th>{''.join(cells)}</tr>")
    # Cells shrink with many classes so that the matrix fits beside its table (it scrolls
    # sideways beyond that): 36 px up to 12 classes, 18 px from 28.
    cell = max(18, min(36, round(500 / len(best.classes))))
    font = "12.5px" if cell >= 28 else "10px"
    return (
        f"<div class='fx-scroll'><table class='fx-confusion' id='featx-confusion' "
        f"style='--cell:{cell}px;font-size:{font}'>"
        f"<tr><th class='fx-axis'>true \\ predicted</th>{head}</tr>{''.join(rows)}</table></div>"
    )


def _precision_recall(best: BestClassifier) -> str:
    esc = html.escape
    body = ""
    for row in best.per_class:
        cells = [esc(row["class"])]
        for key in ("precision", "recall"):
            width = round(60 * row[key])
            cells.append(f"<span class='fx-bar' style='width:{width}px'></span>{row[key]:.3f}")
        cells += [f"{row['f1']:.3f}", f"{row['support']:,}"]
        body += _row(cells)
    return (
        "<table class='fx-table' id='featx-precision-recall'><tr><th>class</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
        f"{body}</table>"
    )


def _gallery(data: ReportData, best: BestClassifier) -> str:
    esc = html.escape
    errors = best.errors
    head = f"<h3>Misclassified images ({len(errors):,})</h3>"
    if not errors:
        return head + "<p class='fx-note'>None.</p>"
    shown = [e for e in errors if e.thumbnail]
    if not shown:
        return head + (
            "<p class='fx-note'>No thumbnails to show (thumbnails turned off, or no image "
            "files behind the embeddings); every error is in <code>featx report --json</code> "
            "under best_classifier.</p>"
        )
    colours = dict(zip(data.classes, class_colours(len(data.classes)), strict=True))
    figures = []
    for error in shown:
        base = os.path.basename(error.name) or error.name
        confidence = "" if error.confidence is None else f" {error.confidence:.2f}"
        figures.append(
            f"<figure title='{esc(error.name, quote=True)}'>"
            f"<img src='{error.thumbnail}' width='{GALLERY_SIZE}' height='{GALLERY_SIZE}' "
            f"alt=''><figcaption>{_dot(colours.get(error.true))}"
            f"<span class='fx-true'>{esc(error.true)}</span><br>&rarr; "
            f"{_dot(colours.get(error.predicted))}<span class='fx-wrong'>"
            f"{esc(error.predicted)}</span>{confidence}<br>"
            f"<span class='fx-file'>{esc(base)}</span></figcaption></figure>"
        )
    more = (
        f" Showing the {len(shown):,} most confident; every error is in "
        "<code>featx report --json</code> under best_classifier."
        if len(shown) < len(errors)
        else ""
    )
    return (
        head + "<p class='fx-note'>Each image's true class (green) &rarr; the class predicted "
        f"(red) with the head's probability for it; most confident first.{more}</p>"
        f"<div class='fx-gallery' id='featx-gallery'>{''.join(figures)}</div>"
    )


# -- small pieces -----------------------------------------------------------------------------


def _row(cells: list[str], best: bool = False, text: tuple[int, ...] = ()) -> str:
    """A table row of cells already escaped; the cells at ``text`` (and the first) align
    left, numbers right."""
    tds = "".join(
        f"<td class='fx-text'>{c}</td>" if i in text else f"<td>{c}</td>"
        for i, c in enumerate(cells)
    )
    return f"<tr class='fx-best'>{tds}</tr>" if best else f"<tr>{tds}</tr>"


def _badge(text: str, extra: str = "") -> str:
    return f"<span class='fx-badge {extra}'>{text}</span>"


def _quoted(name: str) -> str:
    """A class name in a sentence: quoted, so that classes "1" and "0" read as names."""
    return f"&quot;{html.escape(name)}&quot;"


def _dot(colour: str | None) -> str:
    return f"<span class='fx-dot' style='background:{colour}'></span>" if colour else ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any, fmt: str | None = None) -> str:
    """A table value: '-' where missing, else ``fmt`` (floats: three decimals by default)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt is not None and isinstance(value, (int, float, np.integer, np.floating)):
        return fmt.format(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
