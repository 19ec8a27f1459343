"""The audit page: what :func:`featx.audit` found, as one self-contained HTML file.

:func:`write_audit_html` writes a static page (no script at all, and a Content Security
Policy that forbids any, so nothing in it can run): the naive and leak-free scores, each
label issue as its thumbnail beside its nearest training images of the given and of the
suggested class, the duplicate groups side by side with the split and label of each
member (leaks marked), and a strip of the outliers. Thumbnails are small JPEGs inlined as
``data:`` URIs, so the page opens offline and can be mailed. Every user string (class
names, paths) is escaped with :func:`html.escape`.

:func:`audit_section` is the same content as an HTML fragment: the "Data issues" section
that ``featx report --audit`` adds to the report.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from featx.auditing import AuditResult
from featx.images import thumbnail_uris

__all__ = ["MAX_GROUPS", "MAX_OUTLIERS", "THUMBNAIL_SIZE", "audit_section", "write_audit_html"]

THUMBNAIL_SIZE = 96
#: Duplicate groups and outliers drawn (all of them are in --json and --csv).
MAX_GROUPS = 60
MAX_OUTLIERS = 40

_STYLE = """
.fa{font:13px/1.35 sans-serif;color:#1d1d1d}
.fa h2{font:600 17px sans-serif;margin:18px 0 6px}
.fa p.fa-help{color:#444;margin:4px 0 8px;max-width:1100px}
.fa table.fa-scores{border-collapse:collapse;margin:6px 0}
.fa table.fa-scores td,.fa table.fa-scores th{border:1px solid #ccc;padding:3px 10px;
 text-align:right}
.fa table.fa-scores th:first-child,.fa table.fa-scores td:first-child{text-align:left}
.fa figure{margin:0;display:inline-block;vertical-align:top;width:104px}
.fa figure img{width:96px;height:96px;border:1px solid #bbb;background:#eee;display:block}
.fa figure.fa-small{width:78px}
.fa figure.fa-small img{width:72px;height:72px}
.fa figcaption{font-size:11px;word-break:break-all;color:#333;margin-top:2px}
.fa .fa-row{display:flex;gap:18px;align-items:flex-start;border-top:1px solid #ddd;
 padding:8px 0}
.fa .fa-block{display:flex;flex-direction:column;gap:3px}
.fa .fa-head{font-weight:600;font-size:12px}
.fa .fa-given{color:#a11}
.fa .fa-suggested{color:#075}
.fa .fa-leak{background:#b00;color:#fff;padding:0 5px;border-radius:3px;font-weight:600}
.fa .fa-strip{display:flex;flex-wrap:wrap;gap:8px}
.fa .fa-none{color:#666;font-style:italic}
"""


def write_audit_html(
    result: AuditResult, path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Write ``result`` as one self-contained HTML page at ``path``; returns the path."""
    title = title or "featx audit"
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        # No script may run in this page, whatever its strings hold.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1 style='font:600 21px sans-serif;margin:8px 0'>{html.escape(title)}</h1>"
        f"{audit_section(result)}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def audit_section(result: AuditResult) -> str:
    """The audit as an HTML fragment (its own ``<style>``, scoped to ``.fa``)."""
    summary = result.summary()
    groups = summary["duplicates"][:MAX_GROUPS]
    outliers = summary["outliers"][:MAX_OUTLIERS]
    wanted = [e["path"] for e in result.examples]
    for example in result.examples:
        wanted += [n["path"] for n in example["given"] + example["suggested"]]
    for group in groups:
        wanted += group["paths"]
    wanted += [o["path"] for o in outliers]
    unique = list(dict.fromkeys(wanted))
    thumbs = dict(zip(unique, thumbnail_uris(unique, THUMBNAIL_SIZE), strict=True))
    parts = [
        f"<style>{_STYLE}</style><div class='fa' id='featx-audit'>",
        _counts(summary),
        _scores(summary["accuracy"]),
        _issues(summary, result.examples, thumbs),
        _duplicates(summary["duplicates"], groups, thumbs),
        _outliers(summary["outliers"], outliers, thumbs),
        _settings(summary["settings"]),
        "</div>",
    ]
    return "".join(parts)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(path: str, thumbs: dict[str, str], caption: str, small: bool = False) -> str:
    uri = thumbs.get(path) or ""
    image = f"<img src='{uri}' alt=''>" if uri else "<img alt='(no image)'>"
    name = os.path.basename(path) or path
    cls = " class='fa-small'" if small else ""
    return (
        f"<figure{cls} title='{_esc(path)}'>{image}<figcaption>{caption}"
        f"<br>{_esc(name)}</figcaption></figure>"
    )


def _counts(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    return (
        f"<p id='featx-audit-counts'>{c['images']} images, {len(summary['classes'])} classes: "
        f"<b>{c['label_issues']}</b> label issues, <b>{c['duplicate_groups']}</b> duplicate "
        f"groups ({c['exact_groups']} exact, {c['near_groups']} near, "
        f"<b>{c['leaks']}</b> across splits), <b>{c['outliers']}</b> outliers"
        + (f", {c['unreadable']} unreadable files" if c["unreadable"] else "")
        + ".</p>"
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _scores(accuracy: dict[str, Any]) -> str:
    rows = [("naive", accuracy.get("naive")), ("leak-free", accuracy.get("leak_free"))]
    if accuracy.get("leaks_worth") is not None:
        rows.append(("what the leaks were worth", accuracy["leaks_worth"]))
    if accuracy.get("leaked_test_rows") is not None:
        rows.append(("test rows duplicating a training row", accuracy["leaked_test_rows"]))
        rows.append(("accuracy on those rows", accuracy.get("leaked_accuracy")))
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows)
    protocol = accuracy.get("protocol", "")
    how = (
        "nested cross-validation, then again with every duplicate group inside one fold"
        if protocol == "nested-cv"
        else "on the test split, then on its rows that duplicate no training or validation row"
    )
    return (
        "<h2>Scores</h2>"
        f"<p class='fa-help'>Accuracy of the first head, {_esc(how)}.</p>"
        f"<table class='fa-scores' id='featx-audit-scores'><tr><th>accuracy</th>"
        f"<th>value</th></tr>{body}</table>"
    )


def _issues(summary: dict[str, Any], examples: list[dict[str, Any]], thumbs) -> str:
    issues = summary["label_issues"]
    head = (
        f"<h2>Label issues ({len(issues)})</h2><p class='fa-help'>Most suspicious first. "
        "Each image beside its nearest training images filed under the label it was given "
        "and under the label the out-of-sample probabilities suggest. Score: 1 - p(given "
        "label).</p>"
    )
    if not issues:
        return head + "<p class='fa-none'>No label issues at the default threshold.</p>"
    by_path = {issue["path"]: issue for issue in issues}
    rows = []
    for rank, example in enumerate(examples, 1):
        issue = by_path[example["path"]]
        caption = (
            f"<b>#{rank}</b> score {issue['score']:.3f}<br>given "
            f"<span class='fa-given'>{_esc(issue['given'])}</span><br>looks like "
            f"<span class='fa-suggested'>{_esc(issue['suggested'])}</span>"
        )
        blocks = [_figure(issue["path"], thumbs, caption)]
        for key, css, word in (("given", "fa-given", "given"),
                               ("suggested", "fa-suggested", "suggested")):  # fmt: skip
            if key == "suggested" and issue["suggested"] == issue["given"]:
                continue
            figures = (
                "".join(
                    _figure(n["path"], thumbs, f"{n['similarity']:.3f}", small=True)
                    for n in example[key]
                )
                or "<span class='fa-none'>no training image of this class</span>"
            )
            blocks.append(
                f"<div class='fa-block'><div class='fa-head'>nearest "
                f"<span class='{css}'>{_esc(issue[key])}</span> ({word})</div>"
                f"<div>{figures}</div></div>"
            )
        rows.append(f"<div class='fa-row fa-issue'>{''.join(blocks)}</div>")
    more = ""
    if len(issues) > len(examples):
        more = (
            f"<p class='fa-help'>Showing the first {len(examples)} of {len(issues)}; every "
            "issue is in <code>featx audit --json</code> and <code>--csv DIR</code>.</p>"
        )
    return head + "".join(rows) + more


def _duplicates(every: list[dict[str, Any]], groups: list[dict[str, Any]], thumbs) -> str:
    head = (
        f"<h2>Duplicates ({len(every)} groups)</h2><p class='fa-help'>Exact: the same bytes. "
        "Near: perceptual hashes within the threshold (crops, rescaling, recompression). "
        "A group with members in more than one split is a leak.</p>"
    )
    if not every:
        return head + "<p class='fa-none'>No duplicates.</p>"
    rows = []
    for group in groups:
        leak = (
            " <span class='fa-leak'>LEAK "
            + _esc("/".join(sorted(set(group["splits"]))))
            + "</span>"
            if group["cross_split"]
            else ""
        )
        label = f"{_esc(group['kind'])}, similarity {group['similarity']:.3f}{leak}"
        members = zip(group["paths"], group["splits"], group["labels"], strict=True)
        figures = "".join(
            _figure(path, thumbs, ("" if split == "all" else f"{_esc(split)}<br>") + _esc(name))
            for path, split, name in members
        )
        rows.append(
            f"<div class='fa-row fa-group'><div class='fa-block'><div class='fa-head'>{label}"
            f"</div><div>{figures}</div></div></div>"
        )
    more = (
        f"<p class='fa-help'>Showing {len(groups)} of {len(every)} groups.</p>"
        if len(every) > len(groups)
        else ""
    )
    return head + "".join(rows) + more


def _outliers(every: list[dict[str, Any]], shown: list[dict[str, Any]], thumbs) -> str:
    head = (
        f"<h2>Outliers ({len(every)})</h2><p class='fa-help'>Far from every other image: "
        "the mean cosine distance to the nearest neighbours, most unusual first.</p>"
    )
    if not every:
        return head + "<p class='fa-none'>No outliers.</p>"
    figures = "".join(
        _figure(o["path"], thumbs, f"{o['score']:.3f}<br>{_esc(o['label'])}") for o in shown
    )
    return head + f"<div class='fa-strip' id='featx-audit-outliers'>{figures}</div>"


def _settings(settings: dict[str, Any]) -> str:
    keys = ("protocol", "heads", "cv", "label_issue_rule", "near_threshold_bits", "hash",
            "outlier_k", "outlier_rule", "representation")  # fmt: skip
    items = "".join(
        f"<li><b>{_esc(k)}</b>: {_esc(settings[k])}</li>" for k in keys if k in settings
    )
    return f"<h2>Settings</h2><ul class='fa-help'>{items}</ul>"
