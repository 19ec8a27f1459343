"""Embeddings at the centre: one extraction per representation, learning on embeddings.

Counting tests show that ``report``, ``compare`` and the demo build each network once
and embed each image once per backbone; equality tests show that the embeddings-first
entry points give exactly the numbers of the image path; one head and one metric are
each one table entry that every front end shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CountingBackbone, random_image

from featx.backbones import KerasBackbone
from featx.cli import main
from featx.evaluation import compare, evaluate
from featx.extract import Extractor
from featx.heads import HEADS, make_head
from featx.reporting import report

N_PER_CLASS = 6
CLASSES = ("amber", "moss", "slate")


def _write(root: Path, n: int, seed: int) -> Path:
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            pixels = np.asarray(random_image(seed + 100 * c + i, size=(36, 36)), np.float32)
            pixels[..., c] += 90  # each class tinted, so heads have something to learn
            from PIL import Image

            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    return _write(tmp_path / "flat", N_PER_CLASS, 0)


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    for split, n, seed in [("train", 6, 0), ("validation", 3, 1000), ("test", 3, 2000)]:
        _write(root / split, n, seed)
    return root


class Counter:
    """Counts network builds and the real (non-padding) images each network embeds."""

    def __init__(self, monkeypatch) -> None:
        self.builds: list[str] = []
        self.embedded: dict[str, int] = {}
        real_build, real_embed = KerasBackbone._build, KerasBackbone.embed
        counter = self

        def build(backbone):
            counter.builds.append(backbone.name)
            return real_build(backbone)

        def embed(backbone, batch):
            rows = int(np.asarray(batch).reshape(len(batch), -1).any(axis=1).sum())
            counter.embedded[backbone.name] = counter.embedded.get(backbone.name, 0) + rows
            return real_embed(backbone, batch)

        monkeypatch.setattr(KerasBackbone, "_build", build)
        monkeypatch.setattr(KerasBackbone, "embed", embed)


NETWORKS = [
    {"backbone": "VGG16", "weights": None, "input_size": 32},
    {"backbone": "MobileNetV2", "weights": None, "input_size": 32},
]


def test_report_builds_each_network_once_and_embeds_each_image_once(flat, tmp_path, monkeypatch):
    counter = Counter(monkeypatch)
    result = report(flat, backbones=NETWORKS, heads=("logreg", "svm"), method="pca", cv=3,
                    out=tmp_path / "r.html", cache_dir=None)  # fmt: skip
    n = len(CLASSES) * N_PER_CLASS
    assert sorted(counter.builds) == ["MobileNetV2", "VGG16"]
    assert counter.embedded == {"VGG16": n, "MobileNetV2": n}
    table = result["comparison"]
    assert [(r["backbone"], r["head"]) for r in table] == [
        ("VGG16 (random weights)", "logreg"),
        ("VGG16 (random weights)", "svm"),
        ("MobileNetV2 (random weights)", "logreg"),
        ("MobileNetV2 (random weights)", "svm"),
    ]
    assert all(r["n_test"] == n for r in table)  # every image scored once, out of fold


def test_compare_two_backbones_three_heads_embeds_each_image_once(split_root, monkeypatch):
    counter = Counter(monkeypatch)
    table = compare(split_root, backbones=NETWORKS, heads=["logreg", "svm", "knn"],
                    baselines=False, cache_dir=None).table  # fmt: skip
    n = len(CLASSES) * 12  # train, validation and test
    assert sorted(counter.builds) == ["MobileNetV2", "VGG16"]
    assert counter.embedded == {"VGG16": n, "MobileNetV2": n}
    assert len(table) == 6 and set(table["head"]) == {"logreg", "svm", "knn"}
    assert set(table["protocol"]) == {"train-validation-test"}


def test_demo_embeds_each_image_once_per_backbone(split_root, tmp_path, monkeypatch):
    from featx.demo import run_demo

    counter = Counter(monkeypatch)
    result = run_demo(split_root, backbone="VGG16", weights=None, input_size=32,
                      heads=("logreg",), method="pca", cache_dir=tmp_path / "cache",
                      verbose=False, log=lambda _: None)  # fmt: skip
    n = len(CLASSES) * 12
    assert counter.builds == ["VGG16"]
    assert counter.embedded == {"VGG16": n}
    assert result["extract"]["cold"]["cache_misses"] == n
    assert result["extract"]["warm"]["cache_misses"] == 0  # the cache at work, shown
    assert [p["label"] for p in result["report"]["panels"]] == [
        "VGG16 (random weights)",
        "raw pixels 16x16",
    ]


# -- embeddings in, the same numbers out ---------------------------------------------------------


def _numbers(summary: dict) -> dict:
    keep = ("protocol", "accuracy", "accuracy_std", "balanced_accuracy", "macro_f1",
            "chosen_params", "n_train", "n_test", "confusion_matrix", "classes")  # fmt: skip
    return {k: summary.get(k) for k in keep}


def test_evaluate_on_embeddings_equals_the_image_path(flat, split_root):
    backbone = CountingBackbone()
    for source in (flat, split_root):
        from_images = evaluate(source, backbone=backbone, cv=3, cache_dir=None).summary()
        extractor = Extractor(backbone, cache_dir=None, verbose=False)
        if source == flat:
            given = {"source": extractor.extract(source)}
        else:
            given = {s: extractor.extract(source / s) for s in ("train", "validation", "test")}
        from_embeddings = evaluate(**given, cv=3).summary()
        assert _numbers(from_embeddings) == _numbers(from_images)
        assert from_embeddings["accuracy"] > 0.5


def test_compare_and_report_on_embeddings_equal_the_image_path(split_root, tmp_path):
    backbone = CountingBackbone()
    images = compare(split_root, backbones=[backbone], heads=["logreg", "knn"],
                     baselines=False, cache_dir=None).table  # fmt: skip
    extractor = Extractor(backbone, cache_dir=None, verbose=False)
    splits = {s: extractor.extract(split_root / s) for s in ("train", "validation", "test")}
    embedded = compare(embeddings={"counting": splits}, heads=["logreg", "knn"]).table
    columns = ["head", "accuracy", "balanced_accuracy", "macro_f1", "chosen_params", "n_test"]
    assert embedded[columns].to_dict("records") == images[columns].to_dict("records")

    page = report(split_root, backbones=[backbone], heads=("logreg",), method="pca",
                  out=None, cache_dir=None)  # fmt: skip
    again = report(embeddings={"counting": splits}, heads=("logreg",), method="pca", out=None,
                   cache_dir=None)  # fmt: skip
    assert again["panels"][0]["metrics"] == page["panels"][0]["metrics"]
    assert again["comparison"][0]["accuracy"] == page["comparison"][0]["accuracy"]
    assert again["comparison"][0]["protocol"] == "train-validation-test"


# -- one head, one metric: one entry each --------------------------------------------------------


def test_the_knn_head_is_everywhere_the_table_is_read(flat, tmp_path, capsys):
    assert "knn" in HEADS
    head = make_head("knn")
    from sklearn.neighbors import KNeighborsClassifier

    assert isinstance(head.named_steps["clf"], KNeighborsClassifier)
    assert head.named_steps["clf"].metric == "cosine"
    assert main(["heads"]) == 0 and "knn" in capsys.readouterr().out
    status = main(["evaluate", str(flat), "--backbone", "VGG16", "--weights", "none",
                   "--size", "32", "--head", "knn", "--cv", "3", "--cache-dir", "none",
                   "--quiet", "--json"])  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["head"] == "knn" and set(result["grid"]) == {"clf__n_neighbors"}
    status = main(["tune", str(flat), "--weights", "none", "--backbone", "VGG16",
                   "--sizes", "32", "--tta", "none", "--poolings", "avg", "--heads", "knn",
                   "--grid", "knn:n_neighbors=1,3", "--cv", "2", "--inner-cv", "2",
                   "--cache-dir", str(tmp_path / "c"), "--json"])  # fmt: skip
    assert status == 0
    found = json.loads(capsys.readouterr().out)
    assert "clf__n_neighbors" in json.dumps(found["best"])


def test_the_centroid_metric_is_on_the_page_the_figure_and_the_json(flat, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    import matplotlib.axes

    from featx.separation import METRIC_NAMES

    assert "centroid_accuracy" in METRIC_NAMES
    titles: list[str] = []
    real_set_title = matplotlib.axes.Axes.set_title

    def set_title(ax, label, *args, **kwargs):
        titles.append(str(label))
        return real_set_title(ax, label, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    out, png = tmp_path / "r.html", tmp_path / "r.png"
    status = main(["report", str(flat), "--backbone", "VGG16", "--weights", "none",
                   "--size", "32", "--method", "pca", "--heads", "none", "--out", str(out),
                   "--png", str(png), "--cache-dir", "none", "--quiet", "--json"])  # fmt: skip
    assert status == 0
    panel = json.loads(capsys.readouterr().out)["panels"][0]
    assert 0.0 <= panel["metrics"]["centroid_accuracy"] <= 1.0
    page = out.read_text(encoding="utf-8")
    assert "centroid_accuracy" in page  # the separation table's column and its help
    assert any("centroid" in t for t in titles)  # the figure's panel title
    status = main(["report", str(flat), "--backbone", "VGG16", "--weights", "none",
                   "--size", "32", "--method", "pca", "--heads", "none", "--out", str(out),
                   "--cache-dir", "none", "--quiet"])  # fmt: skip
    assert status == 0 and "centroid" in capsys.readouterr().out  # the CLI's table


def test_centroid_accuracy_leaves_each_image_out():
    from featx.separation import centroid_accuracy

    # Two tight classes and one point of class 0 sitting on class 1: with itself left out
    # of its class's mean it is misread; kept in, it would pull that mean towards itself.
    X = np.array([[1.0, 0.0], [1.0, 0.05], [1.0, -0.05], [0.0, 1.0], [0.05, 1.0], [0.0, 0.9]])
    y = [0, 0, 0, 1, 1, 0]
    assert centroid_accuracy(X, y) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        centroid_accuracy(X, [0] * 6)


# -- input sizes: one meaning everywhere ---------------------------------------------------------


def test_a_list_of_sizes_means_concatenated_everywhere(flat, tmp_path):
    with pytest.raises(ValueError, match="A list of sizes, layers or backbones means"):
        Extractor("VGG16", weights=None, input_size=[32, 48], cache_dir=None)
    one = Extractor("VGG16", weights=None, input_size=(32, 48), cache_dir=None, verbose=False)
    assert one.input_size == (32, 48) and one.dim == 512  # a tuple is one input
    result = report(flat, backbones=[{"backbone": "VGG16", "weights": None,
                                      "input_size": [32, 40, 48]}],
                    heads=(), method="pca", out=None, cache_dir=None)  # fmt: skip
    assert result["panels"][0]["dim"] == 3 * 512  # three sizes, concatenated
    table = compare(flat, backbones=[{"backbone": "VGG16", "input_size": [32, 48]}],
                    weights=None, heads=["logreg"], baselines=False, cv=3,
                    cache_dir=None).table  # fmt: skip
    assert table["dim"].tolist() == [1024] and table["input_size"].tolist() == ["32+48"]


def test_the_cli_reads_sizes_and_backbones_one_way(flat, tmp_path, capsys):
    from featx.cli import parse_backbones

    assert parse_backbones(["MobileNetV2,VGG16:weights=none:size=32+48"]) == [
        {"backbone": "MobileNetV2"},
        {"backbone": "VGG16", "weights": None, "input_size": [32, 48]},
    ]
    for spec in (["VGG16:weights=none", "MobileNetV2:weights=none"],
                 ["VGG16:weights=none,MobileNetV2:weights=none"]):  # fmt: skip
        status = main(["compare", str(flat), "--backbones", *spec, "--size", "32",
                       "--no-baselines", "--cv", "3", "--cache-dir", "none", "--quiet",
                       "--json"])  # fmt: skip
        assert status == 0
        rows = json.loads(capsys.readouterr().out)["rows"]
        assert [r["backbone"] for r in rows] == [
            "VGG16 (random weights)",
            "MobileNetV2 (random weights)",
        ]
    status = main(["extract", str(flat), "--backbone", "VGG16", "--weights", "none",
                   "--size", "32,40", "--cache-dir", "none", "--quiet", "--json"])  # fmt: skip
    assert status == 1  # one network at one size: the error names the combined extractor
    assert "CombinedExtractor" in capsys.readouterr().err


def test_cache_command_takes_none_without_making_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "info", "--cache-dir", "none"]) == 1
    assert "disables caching" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
