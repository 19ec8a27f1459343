"""The HTML report in a real browser: headless Chromium, driven by Playwright, offline.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` package (the
``test`` extra; Playwright's own browser download is not used). Outside CI a machine
without Chromium skips these tests; in CI (``CI`` set) a missing Chromium fails them.
Screenshots go to ``$FEATX_SCREENSHOT_DIR`` when set (and to pytest's tmp_path always).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import random_image

from featx.backbones import RawPixels
from featx.html_report import write_html
from featx.reporting import Panel, ReportData, report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for this closed network: no background connections, no sandbox as root, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT_CLASS = "<script>alert(1)</script>"
IMG_CLASS = "<img src=x onerror=alert(2)>"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (pip install -e '.[test]')")
    if CHROMIUM is None:
        _missing("Chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1500, "height": 1100},
        )
        yield context
        context.close()


def _missing(what: str) -> None:
    message = f"The browser test needs {what}."
    if os.environ.get("CI"):
        pytest.fail(message + " .ci/run installs it.")
    pytest.skip(message)


class Page:
    """One opened report, with everything the page said that should not have happened."""

    def __init__(self, context, path: Path) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", self._dialog)
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function(
            "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.index.find_one("
            "Bokeh.documents[0].get_model_by_name('featx-panel-0'))",
            timeout=60_000,
        )

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def js(self, code: str, arg=None):
        return self.page.evaluate(code, arg)

    def point(self, panel: int, i: int) -> tuple[float, float]:
        """Where point ``i`` of ``panel`` is drawn, in page pixels."""
        box = self.js(
            """([panel, i]) => {
              const doc = Bokeh.documents[0];
              const view = Bokeh.index.find_one(doc.get_model_by_name('featx-panel-' + panel));
              const data = doc.get_model_by_name('featx-points').data;
              const r = view.el.getBoundingClientRect();
              return [r.left + view.frame.x_scale.compute(data['x' + panel][i]),
                      r.top + view.frame.y_scale.compute(data['y' + panel][i])];
            }""",
            [panel, i],
        )
        return box[0], box[1]

    def drawn(self, panel: int) -> int:
        """Points drawn in ``panel``: the class renderers' filtered rows, added up."""
        return self.js(
            """(panel) => {
              const doc = Bokeh.documents[0];
              let n = 0;
              for (const r of doc.get_model_by_name('featx-panel-' + panel).renderers)
                if (r.name && r.name.startsWith('featx-class-')) n += r.view.indices.count;
              return n;
            }""",
            panel,
        )

    def visible(self, c: int) -> list[bool]:
        """Whether class ``c`` is shown, in each panel."""
        return self.js(
            """(c) => {
              const doc = Bokeh.documents[0], out = [];
              for (let p = 0; doc.get_model_by_name('featx-panel-' + p); p++)
                out.push(doc.get_model_by_name('featx-class-' + p + '-' + c).visible);
              return out;
            }""",
            c,
        )

    def box(self, selector: str) -> dict[str, float]:
        return self.page.locator(selector).first.bounding_box()

    def hover(self, panel: int, i: int, exact: bool = True):
        """Hover point ``i``; with ``exact=False`` any tooltip will do (dense clouds)."""
        self.page.mouse.move(*self.point(panel, i))
        tip = self.page.locator("div.featx-tip")
        if exact:
            path = self.js(
                "(i) => Bokeh.documents[0].get_model_by_name('featx-points').data.path[i]", i
            )
            tip = tip.filter(has_text=path)
        tip.first.wait_for(state="visible", timeout=20_000)
        # One tooltip, for the nearest image, however many points overlap under the cursor.
        assert self.page.locator("div.featx-tip:visible").count() == 1
        return tip.first


@pytest.fixture(scope="module")
def small_report(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A real report of 3 classes x 10 photos, two of them named like attacks."""
    root = tmp_path_factory.mktemp("browser")
    rows = []
    for c, label in enumerate(["plain", SCRIPT_CLASS, IMG_CLASS]):
        for i in range(10):
            path = root / "images" / f"{c}-{i}.png"
            path.parent.mkdir(exist_ok=True)
            pixels = np.asarray(random_image(40 * c + i, size=(48, 48)), dtype=np.float32) * 0.4
            pixels[..., c] += 140
            from PIL import Image

            Image.fromarray(pixels.astype(np.uint8)).save(path)
            rows.append({"path": str(path), "label": label})
    table = pd.DataFrame(rows)
    out = root / "report.html"
    report(table, backbones=[RawPixels(8), RawPixels(4)], method="pca", out=out,
           heads=("logreg",), cv=3, cache_dir=None, audit=True)  # fmt: skip
    return out, table


def _screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FEATX_SCREENSHOT_DIR"):
        target = Path(os.environ["FEATX_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_report_in_chromium(browser, small_report, tmp_path):
    path, table = small_report
    page = Page(browser, path)
    n = len(table)

    # Every point and every thumbnail is on the page, in both panels.
    assert page.js("() => Bokeh.documents[0].get_model_by_name('featx-points').get_length()") == n
    thumbs = page.js(
        "() => Bokeh.documents[0].get_model_by_name('featx-points').data.thumb"
        ".filter(t => t.startsWith('data:image/jpeg;base64,')).length"
    )
    assert thumbs == n
    assert page.drawn(0) == page.drawn(1) == n

    # Hovering shows the thumbnail, true and predicted label and path; hostile labels are text.
    i = int(np.flatnonzero(table["label"] == SCRIPT_CLASS)[3])
    tip = page.hover(1, i)
    assert tip.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
    text = tip.inner_text()
    assert SCRIPT_CLASS in text and "predicted:" in text and table["path"][i] in text
    page.page.mouse.move(5, 5)

    # The tables show class names as text too.
    per_class = page.page.locator("table#featx-per-class").inner_text()  # in Bokeh's shadow DOM
    assert SCRIPT_CLASS in per_class and IMG_CLASS in per_class

    # So does the best classifier's confusion matrix.
    matrix = page.page.locator("table#featx-confusion").inner_text()
    assert SCRIPT_CLASS in matrix and IMG_CLASS in matrix

    # The "Data issues" section (report --audit) is there, its class names text as well.
    issues = page.page.locator("#featx-audit").inner_text()
    assert "Label issues" in issues and "Duplicates" in issues and "Outliers" in issues
    assert "leak-free" in issues

    # Clicking a point selects that image in every panel (one shared selection).
    page.page.mouse.click(*page.point(0, i))
    selected = page.js(
        "() => Bokeh.documents[0].get_model_by_name('featx-points').selected.indices"
    )
    assert i in selected

    # Clicking a class in the legend hides it in every panel; clicking again shows it.
    button = page.page.locator("#featx-legend button[data-class='1']")
    assert button.inner_text() == SCRIPT_CLASS  # the hostile class name, as text
    button.click()
    assert page.visible(1) == [False, False] and button.get_attribute("aria-pressed") == "false"
    button.click()
    assert page.visible(1) == [True, True]

    shot = _screenshot(page, tmp_path, "report-small.png")
    assert shot.stat().st_size > 20_000
    assert page.dialogs == [], f"a user string ran as code: {page.dialogs}"
    assert page.errors == [], page.errors


def test_twenty_thousand_points_stay_responsive(browser, tmp_path):
    n, classes = 20_000, [f"class {c}" for c in range(8)]
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(classes), n)
    centres = rng.normal(0, 6, (len(classes), 2))
    panels = []
    for p in range(3):
        coords = (centres[y] + rng.normal(0, 1, (n, 2))).astype(np.float32)
        predicted = np.where(rng.random(n) < 0.1, (y + 1) % len(classes), y)
        metrics = {"knn_accuracy": 0.9, "knn_accuracy_2d": 0.9, "silhouette": 0.3,
                   "silhouette_2d": 0.5, "trustworthiness": 0.9, "k": 5, "n": n,
                   "n_sampled": 5000,
                   "per_class": [{"class": c, "n": int((y == i).sum()), "nearest_class": None,
                                  "margin": None} for i, c in enumerate(classes)]}  # fmt: skip
        panels.append(Panel(f"panel {p}", coords, metrics, predicted, {"dim": 1280}))
    data = ReportData("20,000 points", classes, y, [f"img/{i}.jpg" for i in range(n)],
                      [""] * n, panels, "umap")  # fmt: skip
    path = write_html(data, tmp_path / "big.html")

    start = time.perf_counter()
    page = Page(browser, path)
    assert [page.drawn(p) for p in range(3)] == [n, n, n]
    assert "img/" in page.hover(2, 12_345, exact=False).inner_text()
    seconds = time.perf_counter() - start
    _screenshot(page, tmp_path, "report-20000.png")
    assert page.errors == [], page.errors
    # Responsive means drawn and answering within a user's patience, even on a loaded
    # 2-core machine (about 6 s here; a page that froze would blow far past this).
    assert seconds < 30.0, f"20,000 points x 3 panels took {seconds:.1f} s to load and hover"


def test_audit_page_in_chromium(browser, tmp_path):
    """The audit page of a folder with hostile class and file names, in a real browser."""
    from test_audit import IMG_LABEL, SCRIPT_LABEL, hostile_audit

    from featx.audit_page import write_audit_html

    result, _, hostile_file = hostile_audit(tmp_path / "data", tmp_path / "cache")
    path = write_audit_html(result, tmp_path / "audit.html", title=f"audit {SCRIPT_LABEL}")
    page = browser.new_page()
    errors, dialogs = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")

    # Hostile strings are shown as text, and nothing they hold became an element.
    text = page.locator("body").inner_text()
    assert SCRIPT_LABEL in text and IMG_LABEL in text and hostile_file.name in text
    assert page.title() == f"audit {SCRIPT_LABEL}"
    assert page.locator("script").count() == 0
    assert page.locator("img[src='x'], img[src='y']").count() == 0

    # Each finding is drawn, every thumbnail decoded by the browser.
    first = page.locator(".fa-issue").first
    assert first.locator("figure").count() >= 3  # the issue and neighbours of both classes
    assert "looks like" in first.inner_text()
    assert page.locator(".fa-group").count() == len(result["duplicates"])
    assert page.locator("#featx-audit-outliers figure").count() == len(result["outliers"])
    broken = page.evaluate(
        "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
    )
    assert broken == 0 and page.evaluate("() => document.images.length") > 5
    shot = tmp_path / "audit.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("FEATX_SCREENSHOT_DIR"):
        target = Path(os.environ["FEATX_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "audit.png")
    assert shot.stat().st_size > 20_000
    assert dialogs == [], f"a user string ran as code: {dialogs}"
    assert errors == [], errors
    page.close()


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_legend_layout_and_confusion_matrix_in_chromium(browser, tmp_path):
    """A small report whose best classifier's errors are known (tests/test_report.py), in a
    1,400 px window: legend swatches, the maps' layout, the confusion matrix, the gallery."""
    from PIL import Image
    from test_report import HOSTILE_FILE, KNOWN, KNOWN_CONFUSION, known_split_root

    root = known_split_root(tmp_path / "known")
    path = tmp_path / "known.html"
    report(root, backbones=[RawPixels(4), RawPixels(2)], method="pca", out=path,
           heads=("logreg",), cache_dir=None)  # fmt: skip
    page = Page(browser, path)
    page.page.set_viewport_size({"width": 1400, "height": 1000})
    page.page.wait_for_timeout(500)  # Bokeh lays the maps out again for the new width

    # The bug this guards against: a swatch drawn like its class's first point. Red's first
    # point is misclassified by k-NN (drawn as a dark-edged triangle) in both panels.
    points = page.js("() => Bokeh.documents[0].get_model_by_name('featx-points').data")
    first_red = points["label"].index("red")
    assert points["marker0"][first_red] == points["marker1"][first_red] == "triangle"

    for c, name in enumerate(KNOWN):
        colour = points["colour"][points["label"].index(name)]
        swatch = page.page.locator(f"#featx-legend button[data-class='{c}'] svg.fx-swatch")
        assert swatch.get_attribute("data-marker") == "circle"
        shape = swatch.locator("circle")
        assert shape.get_attribute("fill") == shape.get_attribute("stroke") == colour
        # And as drawn: the class colour at 75% over white in the middle, no dark edge.
        shot = tmp_path / f"swatch-{c}.png"
        swatch.screenshot(path=str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
        centre = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2]
        expected = 0.75 * np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) + 0.25 * 255
        assert np.abs(centre - expected).max() < 12, (name, centre, expected)
        assert pixels.max(axis=2).min() > 60, f"a dark edge on the {name} swatch"
    key = page.page.locator("#featx-key svg.fx-swatch")
    assert key.get_attribute("data-marker") == "triangle"
    assert key.locator("polygon").get_attribute("stroke") == "#111111"

    # Layout: the maps share the window's width; the legend stays outside the plot areas;
    # no Bokeh logo.
    frames = page.js(
        """() => [0, 1].map((p) => {
          const doc = Bokeh.documents[0];
          const view = Bokeh.index.find_one(doc.get_model_by_name('featx-panel-' + p));
          const r = view.el.getBoundingClientRect(), f = view.frame.bbox;
          return {x: r.left + f.left, y: r.top + f.top, width: f.width, height: f.height};
        })"""
    )
    assert all(frame["width"] > 600 for frame in frames), frames
    assert frames[0]["x"] + frames[0]["width"] <= frames[1]["x"]  # side by side
    legend = page.box("#featx-legend")
    assert not any(_overlap(legend, frame) for frame in frames)
    assert page.page.locator(".bk-logo").count() == 0

    # The best classifier's confusion matrix: one row and column per class, the known counts.
    rows = page.page.locator("#featx-confusion tr")
    assert rows.count() == len(KNOWN) + 1
    assert rows.nth(0).locator("th").all_inner_texts()[1:] == list(KNOWN)
    for t, name in enumerate(KNOWN):
        row = rows.nth(t + 1)
        assert row.locator("th").inner_text() == name
        cells = [int(text or 0) for text in row.locator("td").all_inner_texts()]
        assert cells == KNOWN_CONFUSION[t]
    # The diagonal is drawn apart from the errors (blue against red).
    first = rows.nth(3).locator("td")
    assert "47, 110, 186" in first.nth(2).evaluate("e => getComputedStyle(e).backgroundColor")
    assert "196, 52, 40" in first.nth(1).evaluate("e => getComputedStyle(e).backgroundColor")

    # The gallery: the three misclassified test images, each decoded, with both classes.
    figures = page.page.locator("#featx-gallery figure")
    assert figures.count() == 3
    captions = [text.split("\n") for text in figures.locator("figcaption").all_inner_texts()]
    # Lines: the true class; "→ predicted probability"; the file name.
    pairs = sorted((lines[0], lines[1].split()[1]) for lines in captions)
    assert pairs == [("blue", "red"), ("red", "green"), ("red", "green")], captions
    assert all(re.fullmatch(r"→ \w+ [01]\.\d\d", lines[1]) for lines in captions), captions
    assert all(lines[2].endswith(".png") for lines in captions)
    assert any(lines[2].endswith(HOSTILE_FILE) for lines in captions)  # a file name as text
    assert page.js(
        "() => [...document.querySelectorAll('#featx-gallery img')].every(i => i.naturalWidth > 0)"
    )
    _screenshot(page, tmp_path, "report-known.png")
    assert page.page.locator("img[src='x']").count() == 0
    assert page.dialogs == [], f"a user string ran as code: {page.dialogs}"
    assert page.errors == [], page.errors
