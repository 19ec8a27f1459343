"""The featx command line: extract, backbones, cache, demo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SUMMARY_FIELDS

from featx import Embeddings
from featx.backbones import list_backbones
from featx.cli import main

EXTRACT = ["--backbone", "VGG16", "--weights", "none", "--size", "32", "--quiet"]


def _run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got: {out!r}"
    return json.loads(lines[0])


def test_extract_json_then_warm_run(image_folder, tmp_path, capsys):
    argv = ["extract", str(image_folder), *EXTRACT, "--cache-dir", str(tmp_path / "c"), "--json"]
    first = _run_json(capsys, argv)
    for key in SUMMARY_FIELDS:
        assert key in first
    assert (first["n_images"], first["dim"], first["cache_misses"]) == (12, 512, 12)
    second = _run_json(capsys, argv)
    assert (second["cache_misses"], second["cache_hits"]) == (0, 12)


def test_extract_writes_npz(image_folder, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    main(["extract", str(image_folder), *EXTRACT, "--cache-dir", "none", "--out", str(out)])
    assert "12 images -> 512-d embeddings" in capsys.readouterr().out
    loaded = Embeddings.load(out)
    assert loaded.X.shape == (12, 512)
    assert loaded.classes == ["cat", "dog", "fish"]
    assert np.isfinite(loaded.X).all()


def test_extract_skip_lists_failures(image_folder, tmp_path, capsys):
    (image_folder / "cat" / "broken.jpg").write_text("not an image")
    argv = ["extract", str(image_folder), *EXTRACT, "--cache-dir", "none", "--json"]
    assert main(argv) == 1
    assert "broken.jpg" in capsys.readouterr().err
    result = _run_json(capsys, [*argv, "--on-error", "skip"])
    assert result["n_images"] == 12
    assert [f["input"] for f in result["failed"]] == [str(image_folder / "cat" / "broken.jpg")]


def test_unknown_backbone_exits_1_with_suggestion(image_folder, capsys):
    code = main(["extract", str(image_folder), "--backbone", "resnet50", "--quiet"])
    assert code == 1
    assert "Did you mean 'ResNet50'" in capsys.readouterr().err


def test_backbones_lists_the_registry(capsys):
    rows = _run_json(capsys, ["backbones", "--json"])["backbones"]
    assert [r["name"] for r in rows] == [s.name for s in list_backbones()]
    mobilenet = next(r for r in rows if r["name"] == "MobileNetV2")
    assert (mobilenet["default_size"], mobilenet["dim"]) == (224, 1280)
    assert main(["backbones"]) == 0
    assert "EfficientNetB7" in capsys.readouterr().out


def test_cache_info_and_clear(image_folder, tmp_path, capsys):
    cache = str(tmp_path / "c")
    main(["extract", str(image_folder), *EXTRACT, "--cache-dir", cache, "--json"])
    capsys.readouterr()
    info = _run_json(capsys, ["cache", "info", "--cache-dir", cache, "--json"])
    assert info["n_vectors"] == 12
    assert info["fingerprints"][0]["spec"]["backbone"]["architecture"] == "VGG16"
    assert _run_json(capsys, ["cache", "clear", "--cache-dir", cache, "--json"])["cleared"] == 12
    assert _run_json(capsys, ["cache", "info", "--cache-dir", cache, "--json"])["n_vectors"] == 0


DEMO = [
    "demo",
    "--backbone",
    "VGG16",
    "--size",
    "32",
    "--heads",
    "logreg",
    "--method",
    "pca",
    "--quiet",
    "--json",
]


def test_demo_compares_the_backbone_with_both_baselines(tmp_path, capsys):
    result = _run_json(capsys, [*DEMO, "--weights", "none", "--cache-dir", str(tmp_path / "c")])
    assert result["extract"]["n_images"] == 1797  # every split, each image embedded once
    assert result["extract"]["warm"]["cache_misses"] == 0
    labels = [row["backbone"] for row in result["rows"]]
    assert labels == ["VGG16 (random init)", "raw pixels 16x16"]
    # Even random features and raw pixels carry the digits far above chance (0.1).
    assert all(row["accuracy"] > 0.8 for row in result["rows"])
    # It ends with a report of both representations, all 1,797 digits on each map.
    report = result["report"]
    assert report["html"] == str(tmp_path / "c" / "demo-report.html")
    assert Path(report["html"]).stat().st_size > 100_000 and Path(report["png"]).exists()
    assert [p["label"] for p in report["panels"]] == labels
    assert all(p["knn_accuracy"] > 0.8 for p in report["panels"])


def test_demo_says_clearly_when_imagenet_weights_are_unavailable(tmp_path, capsys, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    result = _run_json(capsys, [*DEMO, "--cache-dir", str(tmp_path / "c")])
    assert result["pretrained"] is None
    assert "Cannot obtain the ImageNet weights of VGG16" in result["weights_error"]
    # Never silently swapped: only rows labelled as baselines are shown.
    assert [row["backbone"] for row in result["rows"]] == [
        "VGG16 (random weights)",
        "raw pixels 16x16",
    ]


@pytest.mark.skipif(shutil.which("featx") is None, reason="the featx script is not installed")
def test_installed_command_runs(tmp_path):
    done = subprocess.run(
        ["featx", "backbones", "--json"], capture_output=True, text=True, check=True
    )
    assert len(json.loads(done.stdout)["backbones"]) == len(list_backbones())


def test_the_cli_offers_exactly_the_heads_featx_heads_builds(capsys):
    from featx import heads

    with pytest.raises(SystemExit):
        main(["evaluate", "--head", "random-forest"])
    message = capsys.readouterr().err
    assert all(repr(kind) in message for kind in heads.HEADS)
    assert main(["heads", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["heads"]
    assert [row["name"] for row in listed] == list(heads.HEADS)
