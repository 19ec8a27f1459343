"""featx demo: the online story served from file:// URLs, the offline digits, your own data.

No test touches the network: the flower archive and the weights are written here and
served from ``file://`` URLs, with Keras' cache in ``tmp_path``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.cli import main
from featx.demo import COURSE_FIGURES, fetch, run_demo

FLOWERS = ("daisy", "roses", "tulips")
QUICK = {"input_size": 32, "heads": ("logreg",), "method": "pca", "verbose": False}


def _photos(folder: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class-coloured noisy photos, so that the classes can be learnt."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(FLOWERS):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            colour = np.roll([200, 60, 60], c) + rng.normal(0, 25, 3)
            pixels = colour[None, None] + rng.normal(0, 30, (48, 48, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / name / f"{i}.jpg"
            )
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """What Keras' URLs serve, in their layout: flower_photos.tgz holding flower_photos/
    (class folders and a LICENSE.txt), and MobileNetV2 weights (random, small input)."""
    import keras

    root = tmp_path_factory.mktemp("served")
    photos = _photos(root / "src" / "flower_photos")
    (photos / "LICENSE.txt").write_text("photos under CC-BY, as the real archive says")
    archive = root / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="flower_photos")
    weights = root / "mobilenet_small.weights.h5"
    keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(weights)
    return {"archive": archive, "weights": weights}


def test_online_the_course_task_end_to_end_from_keras_cache(served, tmp_path):
    lines: list[str] = []
    keras_home = tmp_path / "keras"
    result = run_demo(
        cache_dir=tmp_path / "cache",
        log=lines.append,
        data_url=served["archive"].as_uri(),
        weights_url=served["weights"].as_uri(),
        keras_cache_dir=keras_home,
        **QUICK,
    )
    text = "\n".join(lines)
    # Downloaded once into Keras' cache, each with its size said.
    size = served["archive"].stat().st_size / 1e6
    assert f"downloading the flower photos ({size:,.1f} MB) from file://" in text
    assert "downloading ImageNet MobileNetV2 (" in text
    assert (keras_home / "datasets" / "flower_photos" / "flower_photos" / "daisy").is_dir()
    assert (keras_home / "models" / "mobilenet_small.weights.h5").is_file()
    assert result["offline"] is None
    assert result["data"].startswith("flower_photos, the course's task (30 photos, 3 classes")
    # Extracted cold, then warm from the cache.
    assert result["extract"]["label"] == "MobileNetV2 (imagenet)"
    assert result["extract"]["cold"]["cache_misses"] == 30
    assert (result["extract"]["warm"]["cache_misses"], result["extract"]["warm"]["cache_hits"]) == (
        0,
        30,
    )
    assert "again, the same images:" in text and "30 from the cache at" in text
    # Compared with both baselines, beside the course's figures, with a conclusion.
    assert [row["backbone"] for row in result["rows"]] == [
        "MobileNetV2 (imagenet)",
        "MobileNetV2 (random weights)",
        "raw pixels 16x16",
    ]
    assert [f["accuracy"] for f in result["course"][:3]] == [a for _, a in COURSE_FIGURES]
    pretrained = [r["accuracy"] for r in result["rows"] if r["backbone"].endswith("(imagenet)")]
    assert result["course"][3]["accuracy"] == max(pretrained)  # featx's own row beside them
    assert "beside the course's own figures" in text
    assert result["conclusion"].startswith("pretrained features ")
    assert f"conclusion: {result['conclusion']}" in lines
    # The audit and one exported model, then the page.
    assert result["audit"]["counts"]["images"] == 30 and Path(result["audit"]["page"]).is_file()
    assert result["export"]["classes"] == list(FLOWERS)
    import keras

    model = keras.models.load_model(result["export"]["path"])
    probabilities = model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0)
    assert probabilities.shape == (1, 3) and abs(float(probabilities.sum()) - 1) < 1e-5
    assert Path(result["report"]["html"]).stat().st_size > 10_000
    # A second run downloads nothing: both come from Keras' cache.
    again: list[str] = []
    photos = fetch(
        served["archive"].as_uri(), keras_cache_dir=keras_home, extract=True, log=again.append
    )
    weights = fetch(served["weights"].as_uri(), keras_cache_dir=keras_home, log=again.append)
    assert (
        again == [] and (photos / "roses").is_dir() and weights.name == "mobilenet_small.weights.h5"
    )


def test_an_unreachable_url_is_said_at_once_and_nothing_is_written(tmp_path):
    from featx.demo import UnreachableError

    with pytest.raises(UnreachableError, match=r"cannot reach .*No such file"):
        fetch((tmp_path / "gone.tgz").as_uri(), keras_cache_dir=tmp_path / "k", extract=True)
    assert not (tmp_path / "k").exists()


def test_offline_the_digits_say_what_they_show(tmp_path, capsys):
    argv = ["demo", "--backbone", "VGG16", "--size", "32", "--heads", "logreg", "--method",
            "pca", "--quiet", "--cache-dir", str(tmp_path / "c"),
            "--data-url", (tmp_path / "nowhere" / "flower_photos.tgz").as_uri()]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # One honest line about being offline, and no claim of weights that never loaded.
    assert lines[0].startswith("featx demo: offline (cannot reach ")
    assert lines[0].endswith("running on scikit-learn's digits instead.")
    assert sum("offline" in line.replace(str(tmp_path), "") for line in lines) == 1
    assert not any("imagenet" in line for line in lines)
    # The cache at work, on the network that did run.
    assert "extract VGG16 (random weights): 1,797 images -> 512-d" in "\n".join(lines)
    assert any(line.endswith(f"1,797 from the cache at {tmp_path / 'c'})") for line in lines)
    conclusion = next(line for line in lines if line.startswith("conclusion: "))
    assert "no pretrained network ran" in conclusion and "Digits are not photos" in conclusion
    assert "Pretraining shows on photos: run featx demo" in conclusion
    table = [line for line in lines if line.startswith(("representation", "VGG16", "raw"))]
    assert len(table) == 3 and max(map(len, table)) <= 100


def test_digits_with_random_weights_against_raw_pixels(tmp_path, capsys):
    argv = ["demo", "--backbone", "VGG16", "--size", "32", "--heads", "logreg", "--method",
            "pca", "--quiet", "--json", "--weights", "none", "--cache-dir", str(tmp_path / "c"),
            "--data-url", (tmp_path / "nowhere.tgz").as_uri()]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["extract"]["n_images"] == 1797  # every split, each image embedded once
    assert result["extract"]["warm"]["cache_misses"] == 0
    labels = [row["backbone"] for row in result["rows"]]
    assert labels == ["VGG16 (random weights)", "raw pixels 16x16"]
    # Even random features and raw pixels carry the digits far above chance (0.1).
    assert all(row["accuracy"] > 0.8 for row in result["rows"])
    raw, random = (row["accuracy"] for row in reversed(result["rows"]))
    relation = "as well as or better than" if raw >= random else "a little worse than"
    assert f"raw pixels ({raw:.3f}) do {relation} the random-weight network" in result["conclusion"]
    report = result["report"]
    assert report["html"] == str(tmp_path / "c" / "demo-report.html")
    assert Path(report["html"]).stat().st_size > 100_000 and Path(report["png"]).exists()
    assert [p["label"] for p in report["panels"]] == labels


def test_your_photos_and_weights_file_with_a_short_label(served, tmp_path):
    root = tmp_path / "my photos"
    for split, n, seed in [("train", 8, 0), ("validation", 4, 100), ("test", 4, 200)]:
        _photos(root / split, n, seed)
    lines: list[str] = []
    result = run_demo(
        root, weights=served["weights"], cache_dir=tmp_path / "c", log=lines.append, **QUICK
    )
    assert result["data"] == f"{root} (48 photos, 3 classes, 24/12/12 split)"
    assert result["rows"][0]["backbone"] == "MobileNetV2 (mobilenet_small)"
    assert "course" not in result  # the course's figures are for its own task only
    assert result["export"]["classes"] == list(FLOWERS)
    assert not any("downloading" in line for line in lines)
    table = [line for line in "\n".join(lines).splitlines() if line.startswith(("Mobile", "raw"))]
    assert len(table) == 3 and max(map(len, table)) <= 100
