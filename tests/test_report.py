"""featx.report: the whole flow to a self-contained HTML page, a figure and a JSON summary."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import MOBILENET_WEIGHTS, SHARED, CountingBackbone, random_image, require_shared
from PIL import Image

import featx.projection
from featx.backbones import RawPixels
from featx.cli import main, parse_backbone_spec
from featx.reporting import load_comparison, load_tuning, report
from featx.tuning import tune

HOSTILE = "<img src=x onerror=alert(1)>"
MATH = "$\\nope$ & co"  # unbalanced mathtext: matplotlib raises unless '$' is escaped
CLASSES = ["cat", HOSTILE, MATH]


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """3 classes x 8 images; the class names are HTML and mathtext that must stay text."""
    root = tmp_path / "photos"
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(8):
            image = random_image(100 * c + i, size=(40, 40))
            shade = np.asarray(image, dtype=np.float32) * 0.3
            shade[..., c] += 150  # each class tinted with its own primary colour
            Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _report(folder: Path, tmp_path: Path, **params):
    defaults = {
        "backbones": [RawPixels(8), RawPixels(4)],
        "method": "pca",
        "out": tmp_path / "out" / "report.html",
        "heads": ("logreg",),
        "cv": 3,
        "cache_dir": tmp_path / "cache",
    }
    return report(folder, **{**defaults, **params})


def test_report_page_figure_and_summary(hostile_folder, tmp_path):
    png, svg = tmp_path / "out" / "fig.png", tmp_path / "out" / "fig.svg"
    result = _report(hostile_folder, tmp_path, png=png, svg=svg)

    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # Self-contained: every script inline, nothing fetched from a CDN or server.
    assert "<script src" not in page.replace(" ", "").replace("<scriptsrc", "<script src")
    assert not re.search(r"<link[^>]+href=", page)
    assert "cdn.bokeh.org" not in page
    # Every image has a thumbnail; user strings are never raw HTML in the page.
    assert page.count("data:image/jpeg;base64,") == 24
    assert HOSTILE not in page
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in svg.read_text()[:500]

    assert result["n_points"] == 24
    assert result["classes"] == sorted(CLASSES)
    labels = [panel["label"] for panel in result["panels"]]
    assert labels == ["raw pixels 8x8", "raw pixels 4x4"]
    for panel in result["panels"]:
        assert set(panel["metrics"]) >= {
            "knn_accuracy", "knn_accuracy_2d", "silhouette", "silhouette_2d", "trustworthiness"
        }  # fmt: skip
        assert {row["class"] for row in panel["per_class"]} == set(CLASSES)
        assert panel["dim"] in (192, 48)
    assert [row["head"] for row in result["comparison"]] == ["logreg", "logreg"]
    assert [row["backbone"] for row in result["comparison"]] == labels
    json.dumps(result.summary())  # JSON-ready as it is


def test_classes_separate_in_the_metrics(hostile_folder, tmp_path):
    result = _report(hostile_folder, tmp_path, heads=())
    assert result["comparison"] is None
    assert all(panel["metrics"]["knn_accuracy"] > 0.9 for panel in result["panels"])


def test_maps_are_cached_between_runs(hostile_folder, tmp_path, monkeypatch):
    calls = []
    original = featx.projection.project

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(featx.projection, "project", counting)
    first = _report(hostile_folder, tmp_path, heads=())
    assert len(calls) == 2
    second = _report(hostile_folder, tmp_path, heads=())
    assert len(calls) == 2  # both maps came from the cache
    for a, b in zip(first["panels"], second["panels"], strict=True):
        assert a["metrics"] == b["metrics"]
        assert b["cache_misses"] == 0


def test_arrays_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(0, 90, (8, 24, 24, 3)),
                             rng.integers(160, 256, (8, 24, 24, 3))]).astype(np.uint8)  # fmt: skip
    result = report(images, labels=["night"] * 8 + ["day"] * 8, backbones=[RawPixels(4)],
                    method="pca", out=tmp_path / "r.html", heads=("logreg",), cv=2,
                    cache_dir=None)  # fmt: skip
    assert result["classes"] == ["day", "night"]
    assert result["comparison"][0]["accuracy"] == 1.0
    assert (tmp_path / "r.html").read_text().count("data:image/jpeg;base64,") == 16


def test_dataset_root_shows_every_split(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(["a", "b"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                random_image(50 * c + 10 * i + n).save(folder / f"{i}.png")
    result = report(root, backbones=[RawPixels(4)], method="pca", out=None, heads=(),
                    cache_dir=None)  # fmt: skip
    assert result["n_points"] == 18
    assert result["classes"] == ["a", "b"]


def test_unlabelled_images_are_refused(tmp_path):
    paths = []
    for i in range(6):
        random_image(i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    with pytest.raises(ValueError, match="A report needs labelled images"):
        report(paths, backbones=[RawPixels(4)], method="pca", out=None, cache_dir=None)


def test_bad_method_is_named(hostile_folder, tmp_path):
    with pytest.raises(ValueError, match="method='mds' is not supported"):
        _report(hostile_folder, tmp_path, method="mds")


def test_layers_of_one_backbone(hostile_folder, tmp_path):
    result = _report(
        hostile_folder,
        tmp_path,
        backbones=[{"backbone": "MobileNetV2", "weights": None, "input_size": 32}],
        layers=["block_1_expand_relu", None],
        heads=(),
    )
    panels = result["panels"]
    assert [p["label"] for p in panels] == [
        "MobileNetV2 (random weights) / block_1_expand_relu",
        "MobileNetV2 (random weights) / last block",
    ]
    assert [p["dim"] for p in panels] == [96, 1280]
    assert panels[0]["layer"] == "block_1_expand_relu"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VGG16", {"backbone": "VGG16"}),
        ("VGG16:weights=imagenet:pooling=max", {"backbone": "VGG16", "weights": "imagenet",
                                                "pooling": "max"}),
        ("ResNet50:size=224x160:seed=3", {"backbone": "ResNet50", "input_size": (224, 160),
                                          "seed": 3}),
        ("MobileNetV2:weights=C:/w/m.h5:label=a: b", {"backbone": "MobileNetV2",
                                                      "weights": "C:/w/m.h5", "label": "a: b"}),
        ("MobileNetV2:layer=block_6_expand_relu", {"backbone": "MobileNetV2",
                                                   "layer": "block_6_expand_relu"}),
    ],
)  # fmt: skip
def test_parse_backbone_spec(text, expected):
    assert parse_backbone_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [(":weights=none", "has no backbone name"), ("VGG16:size=big", "size='big' should be N")],
)
def test_parse_backbone_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_backbone_spec(text)


def test_load_comparison(tmp_path):
    rows = [{"backbone": "a", "head": "logreg", "accuracy": 0.9}]
    (tmp_path / "c.json").write_text(json.dumps({"rows": rows, "csv": None}))
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    assert load_comparison(tmp_path / "c.json").to_dict(orient="records") == rows
    assert load_comparison(tmp_path / "c.csv").to_dict(orient="records") == rows
    (tmp_path / "bad.json").write_text(json.dumps({"n_images": 3}))
    with pytest.raises(ValueError, match="not a featx compare table"):
        load_comparison(tmp_path / "bad.json")


def _element(page: Path | str, element_id: str) -> str:
    """The HTML of the page's element ``element_id`` (its tables and sections are plain HTML
    around the Bokeh maps), up to its closing tag."""
    text = page.read_text(encoding="utf-8") if isinstance(page, Path) else page
    start = re.search(rf"<(\w+)[^>]*\bid='{element_id}'", text)
    assert start, f"no element with id {element_id!r} on the page"
    tag = start.group(1)
    end = text.index(f"</{tag}>", start.start())
    return text[start.start() : end]


def _rows(table: str) -> list[list[str]]:
    """Each row's cells as text (tags stripped, entities decoded)."""
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in
         re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    ]  # fmt: skip


def test_the_tune_search_is_shown_on_the_page_and_in_the_summary(hostile_folder, tmp_path):
    found = tune(
        hostile_folder,
        backbone=CountingBackbone(),
        space={"tta": [None, "flip"], "pooling": ["avg"], "head": ["logreg"]},
        grids={"logreg": {"clf__C": [0.1, 1.0]}},
        cv=2,
        inner_cv=2,
        cache_dir=tmp_path / "cache",
    )
    result = _report(hostile_folder, tmp_path, heads=(), tuning=found)

    rows = result["tuning"]
    assert [r["name"] for r in rows] == found.results["name"].tolist()
    assert all(r["ms_per_image"] > 0 and r["outer_accuracy"] is not None for r in rows)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    rows = _rows(_element(page, "featx-tuning"))
    assert len(rows) == len(found.results) + 1  # the header and every configuration
    names = [row[0] for row in rows[1:]]
    for name, best, cell in zip(found.results["name"], found.results["best"], names, strict=True):
        assert cell.startswith(name) and ("chosen" in cell) == bool(best)
    assert "baseline" in names[0]
    assert not any("clf__" in cell for row in rows for cell in row)  # parameters as people write
    assert f"{found.accuracy:.4f}" in page and f"{found.baseline_accuracy:.4f}" in page

    # The same table from `featx tune --json` / `--csv` output, as `featx report --tune` reads it.
    (tmp_path / "t.json").write_text(json.dumps(found.summary()))
    found.results.to_csv(tmp_path / "t.csv", index=False)
    for saved in ("t.json", "t.csv"):
        table = load_tuning(tmp_path / saved)
        assert table["name"].tolist() == found.results["name"].tolist()
        assert np.allclose(table["score"], found.results["score"])
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r'not a featx tune table.*"results"'):
        load_tuning(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="tuning= got dict"):
        _report(hostile_folder, tmp_path, heads=(), tuning={"results": []})


def test_cli_report_json(hostile_folder, tmp_path, capsys):
    out = tmp_path / "cli" / "r.html"
    comparison = tmp_path / "compare.json"
    comparison.write_text(json.dumps({"rows": [{"backbone": HOSTILE, "head": "svm",
                                                "accuracy": 0.5}]}))  # fmt: skip
    status = main([
        "report", str(hostile_folder),
        "--backbones", "MobileNetV2:weights=none:size=32:label=random", "VGG16:weights=none",
        "--size", "32", "--method", "pca", "--compare", str(comparison),
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json", "--quiet",
    ])  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in result["panels"]] == ["random", "VGG16 (random weights)"]
    assert [p["input_size"] for p in result["panels"]] == [[32, 32], [32, 32]]
    assert result["comparison"] == [{"backbone": HOSTILE, "head": "svm", "accuracy": 0.5}]
    assert result["out"] == str(out) and out.exists()


def test_cli_report_errors_are_one_line(hostile_folder, tmp_path, capsys):
    for source, backbone, expected in [
        (hostile_folder, "NoSuchNet", "Unknown backbone 'NoSuchNet'"),
        (tmp_path / "missing", "VGG16", "is neither a folder nor a file"),
    ]:
        status = main(["report", str(source), "--backbones", backbone, "--cache-dir", "none",
                       "--out", str(tmp_path / "r.html")])  # fmt: skip
        assert status == 1
        err = capsys.readouterr().err
        assert err.startswith("featx report: error:") and expected in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.shared
def test_pretrained_backbone_separates_intel6_better_than_random(tmp_path, capsys):
    require_shared()
    out = tmp_path / "intel6.html"
    status = main([
        "report", str(SHARED / "datasets" / "intel6"),
        "--backbones", f"MobileNetV2:weights={MOBILENET_WEIGHTS}:label=pretrained",
        "MobileNetV2:weights=none:label=random", "--size", "160",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--png",
        str(tmp_path / "intel6.png"), "--json", "--quiet",
    ])  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    pretrained, random = (panel["metrics"] for panel in result["panels"])
    assert result["n_points"] == 2158
    assert pretrained["knn_accuracy"] > 0.85 and random["knn_accuracy"] < 0.5
    # Small in 1,280 dimensions, but positive (classes keep apart) against negative (mixed).
    assert pretrained["silhouette"] > 0.03 > 0 > random["silhouette"]
    assert pretrained["silhouette_2d"] > random["silhouette_2d"] + 0.3
    accuracy = {row["backbone"]: row["accuracy"] for row in result["comparison"]}
    assert accuracy["pretrained"] > accuracy["random"] + 0.2
    assert out.stat().st_size < 20e6


def _mixture(n_per_class=(400, 400, 3), dim=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    X = rng.normal(size=(len(y), dim)) + 6 * np.eye(dim)[y]
    return X.astype(np.float32), np.array(["big", "other", "tiny"])[y]


def test_report_over_precomputed_embeddings_downsamples_the_page(tmp_path):
    X, y = _mixture()
    out = tmp_path / "report.html"
    result = report(embeddings={"first": (X, y), "second": (X[:, :6], y)}, method="pca",
                    out=out, cache_dir=None, max_points=100, heads=())  # fmt: skip
    assert result["n_points"] == 803 and result["n_shown"] == 100
    assert result["classes"] == ["big", "other", "tiny"]
    assert [p["label"] for p in result["panels"]] == ["first", "second"]
    assert result["panels"][0]["metrics"]["n_knn"] == 803  # metrics over every point
    assert result["comparison"] is None
    page = out.read_text(encoding="utf-8")
    assert "showing 100 of 803 points" in page
    shown = json.loads(re.search(r'\["label",(\[[^\]]*\])\]', page).group(1))  # point labels
    assert len(shown) == 100 and shown.count("tiny") == 3  # the class of 3 stays visible
    again = report(embeddings={"first": (X, y), "second": (X[:, :6], y)}, method="pca",
                   out=None, cache_dir=None, max_points=100, heads=())  # fmt: skip
    assert again["panels"][0]["metrics"] == result["panels"][0]["metrics"]


def test_report_over_embeddings_objects_keeps_paths(image_folder, tmp_path):
    from featx import Extractor

    extractor = Extractor(RawPixels(4), cache_dir=None, verbose=False)
    emb = extractor.extract(image_folder, out=tmp_path / "emb")
    from featx import Embeddings

    loaded = Embeddings.load(tmp_path / "emb", mmap_mode="r")
    result = report(embeddings={"pixels": loaded}, method="pca", out=tmp_path / "r.html",
                    cache_dir=None, heads=())  # fmt: skip
    assert result["n_points"] == result["n_shown"] == len(emb) == 12
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == 12  # thumbnails from Embeddings.paths
    assert "showing" not in page


def test_report_embeddings_errors(hostile_folder):
    X, y = _mixture()
    with pytest.raises(ValueError, match=r"exactly one of source= .* got both"):
        report(hostile_folder, embeddings={"a": (X, y)}, out=None)
    with pytest.raises(ValueError, match="got neither"):
        report(out=None)
    with pytest.raises(ValueError, match="labels its images differently"):
        report(embeddings={"a": (X, y), "b": (X, y[::-1])}, out=None, method="pca",
               cache_dir=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"Expected an Embeddings .* or an \(X, y\) pair"):
        report(embeddings={"a": X}, out=None)
    with pytest.raises(ValueError, match="one label per row"):
        report(embeddings={"a": (X, y[:5])}, out=None)


def test_cli_report_max_points(hostile_folder, tmp_path, capsys):
    out = tmp_path / "r.html"
    status = main([
        "report", str(hostile_folder), "--backbones", "VGG16:weights=none", "--size", "32",
        "--method", "pca", "--heads", "none", "--max-points", "6", "--cache-dir", "none",
        "--out", str(out), "--json", "--quiet",
    ])  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_points"], result["n_shown"]) == (24, 6)
    assert "showing 6 of 24 points" in out.read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8").count("data:image/jpeg;base64,") == 6


# -- what the page concludes, and the best classifier class by class -------------------------

KNOWN = ("blue", "green", "red")
_CHANNEL = {"red": 0, "green": 1, "blue": 2}
# The test split, as (the class folder an image is filed under, the colour it shows): a red
# image filed as blue and two green ones filed as red, which a head cannot get right.
KNOWN_TEST = (
    [("blue", "blue")] * 3 + [("blue", "red")] + [("green", "green")] * 3
    + [("red", "red")] * 4 + [("red", "green")] * 2
)  # fmt: skip
# Rows: true class; columns: predicted; in KNOWN order.
KNOWN_CONFUSION = [[3, 0, 1], [0, 3, 0], [0, 2, 4]]
# The red image filed as blue has a file name that is HTML: the gallery shows it as text.
HOSTILE_FILE = "<img src=x onerror=alert(3)>.png"


def known_split_root(root: Path) -> Path:
    """A train/test root of three colours whose best classifier's errors are known: the
    three mislabelled test images of KNOWN_TEST. Red's first training image shows green, so
    leave-one-out k-NN misclassifies the first point of class red."""

    def save(split: str, folder: str, look: str, i: int) -> None:
        pixels = np.asarray(random_image(1000 + 7 * i + len(folder), (24, 24)), np.float32) * 0.3
        pixels[..., _CHANNEL[look]] += 160
        hostile = split == "test" and (folder, look) == ("blue", "red")
        name = f"{i:02d} {HOSTILE_FILE}" if hostile else f"{i:02d}.png"
        path = root / split / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)

    for folder in KNOWN:
        for i in range(8):
            save("train", folder, "green" if (folder, i) == ("red", 0) else folder, i)
    for i, (folder, look) in enumerate(KNOWN_TEST):
        save("test", folder, look, 20 + i)
    return root


def test_best_classifier_class_by_class_on_a_known_report(tmp_path):
    root = known_split_root(tmp_path / "known")
    out = tmp_path / "known.html"
    result = report(root, backbones=[RawPixels(4)], method="pca", out=out, heads=("logreg",),
                    cache_dir=None)  # fmt: skip

    best = result["best_classifier"]
    assert (best["backbone"], best["head"], best["protocol"]) == (
        "raw pixels 4x4", "logreg", "train-test"
    )  # fmt: skip
    assert best["classes"] == list(KNOWN)
    assert best["confusion_matrix"] == KNOWN_CONFUSION
    assert best["n_scored"] == len(KNOWN_TEST) and best["n_errors"] == 3
    assert best["accuracy"] == pytest.approx(10 / 13)
    recall = {row["class"]: row["recall"] for row in best["per_class"]}
    precision = {row["class"]: row["precision"] for row in best["per_class"]}
    assert recall == pytest.approx({"blue": 3 / 4, "green": 1.0, "red": 4 / 6})
    assert precision == pytest.approx({"blue": 1.0, "green": 3 / 5, "red": 4 / 5})
    # Every error is a test image filed under the class it does not show.
    errors = {(Path(e["path"]).parent.name, e["true"], e["predicted"]) for e in best["errors"]}
    assert errors == {("blue", "blue", "red"), ("red", "red", "green")}
    assert all("/test/" in e["path"] for e in best["errors"])
    confidences = [e["confidence"] for e in best["errors"]]
    assert confidences == sorted(confidences, reverse=True)  # most confident first

    page = out.read_text(encoding="utf-8")
    rows = _rows(_element(page, "featx-confusion"))
    assert rows[0][1:] == list(KNOWN)  # the predicted classes across
    assert [row[0] for row in rows[1:]] == list(KNOWN)  # the true classes down
    counts = [[int(c or 0) for c in row[1:]] for row in rows[1:]]
    assert counts == KNOWN_CONFUSION
    per_class = _rows(_element(page, "featx-precision-recall"))
    assert per_class[0] == ["class", "precision", "recall", "F1", "images"]
    assert per_class[3][:3] == ["red", "0.800", "0.667"]
    gallery = _element(page, "featx-gallery")
    assert gallery.count("<figure") == 3 and gallery.count("data:image/jpeg;base64,") == 3
    assert "Most confused: &quot;red&quot; taken for &quot;green&quot; (2 images)" in page
    assert HOSTILE_FILE not in page and html.escape(HOSTILE_FILE) in gallery
    assert any(e["path"].endswith(HOSTILE_FILE) for e in best["errors"])


def test_tables_say_what_they_conclude_and_read_like_people_write(tmp_path):
    X, y = _mixture(n_per_class=(30, 30, 30))
    comparison = pd.DataFrame(
        [
            {"backbone": "pretrained", "head": "logreg", "accuracy": 0.9, "accuracy_std": 0.01,
             "protocol": "nested-cv", "chosen_params": json.dumps({"clf__C": [0.01, 0.1, 0.01]})},
            {"backbone": "pretrained", "head": "svm", "accuracy": 0.85, "accuracy_std": 0.02,
             "protocol": "nested-cv",
             "chosen_params": json.dumps({"clf__estimator__C": [10.0, 10.0, 10.0]})},
            {"backbone": "random weights", "head": "logreg", "accuracy": 0.5,
             "accuracy_std": 0.03, "protocol": "nested-cv", "chosen_params": "{}"},
        ]
    )  # fmt: skip
    out = tmp_path / "r.html"
    result = report(embeddings={"full": (X, y), "half": (X[:, :2], y)}, comparison=comparison,
                    method="pca", out=out, cache_dir=None)  # fmt: skip
    page = out.read_text(encoding="utf-8")
    knn = {p["label"]: p["metrics"]["knn_accuracy"] for p in result["panels"]}
    assert knn["full"] > knn["half"]  # the conclusion below is computed, not written in

    separation = _element(page, "featx-metrics")
    best = [row for row in re.findall(r"<tr[^>]*>", separation) if "fx-best" in row]
    assert (
        len(best) == 1 and "full" in _rows(separation)[1][0] and "best" in _rows(separation)[1][0]
    )
    gap = knn["full"] - knn["half"]
    assert (
        f"full beats half by {gap:.3f} k-NN accuracy ({knn['full']:.3f} against "
        f"{knn['half']:.3f})." in page
    )
    rows = _rows(_element(page, "featx-comparison"))
    assert rows[0] == ["representation", "head", "accuracy", "parameters"]
    assert rows[1] == ["pretrainedbest", "logreg", "0.900 ± 0.010", "C = 0.01 in 2 folds, 0.1 in 1"]
    assert rows[2][3] == "C = 10" and rows[3][3] == "head defaults"
    assert (
        "pretrained + logreg beats random weights + logreg by 0.400 accuracy (0.900 against 0.500)."
        in page
    )
    assert "chosen_params" not in page and "clf__" not in page and "{}" not in rows[3][3]
    assert "Every metric uses all 90 images." in page
    # A table alone has no predictions: the page says why there is no confusion matrix.
    assert result["best_classifier"] is None
    assert "id='featx-no-classifier'" in page and "comparison=result" in page


def test_figure_draws_misclassified_points_as_the_page_does(monkeypatch, tmp_path):
    import matplotlib.axes

    from featx.figure import write_figure
    from featx.report_model import MISCLASSIFIED_EDGE, Panel, ReportData

    drawn = []
    original = matplotlib.axes.Axes.scatter

    def spy(self, x, y, **kwargs):
        drawn.append((len(x), kwargs["marker"], kwargs["edgecolors"], kwargs["c"]))
        return original(self, x, y, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    y = np.array([0, 0, 1, 1, 1])
    predicted = np.array([0, 1, 1, 1, 0])  # one error in each class
    panel = Panel(
        "p", np.random.default_rng(0).normal(size=(5, 2)), {"knn_accuracy": 0.6}, predicted
    )
    write_figure(ReportData("t", ["a", "b"], y, list("abcde"), [""] * 5, [panel], "pca"),
                 tmp_path / "f.png")  # fmt: skip
    colours = ["#1f77b4", "#ff7f0e"]
    assert drawn == [
        (1, "o", colours[0], colours[0]), (1, "^", MISCLASSIFIED_EDGE, colours[0]),
        (2, "o", colours[1], colours[1]), (1, "^", MISCLASSIFIED_EDGE, colours[1]),
    ]  # fmt: skip
