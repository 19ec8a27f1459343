"""Embeddings as a user meets them: a one-line repr, and Parquet files for pandas and Spark."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from featx import Embeddings, Extractor
from featx.cli import main

SMALL = {"weights": None, "input_size": 32, "verbose": False}


@pytest.fixture
def extracted(image_folder, tmp_path):
    (image_folder / "dog" / "broken.jpg").write_bytes(b"not an image")
    extractor = Extractor("VGG16", cache_dir=tmp_path / "cache", on_error="skip", **SMALL)
    return extractor, extractor.extract(image_folder)


def test_print_shows_shape_classes_and_fingerprint_not_every_row(extracted):
    embeddings = extracted[1]
    text = str(embeddings)
    assert text == repr(embeddings) and "\n" not in text and len(text) < 120
    assert text.startswith("Embeddings(12 x 512 float32, 3 classes ['cat', 'dog', 'fish']")
    assert f"fingerprint {embeddings.fingerprint[:12]}" in text and "1 failed" in text
    many = Embeddings.from_arrays(np.zeros((5000, 4), np.float32), np.arange(5000) % 100)
    assert repr(many) == "Embeddings(5000 x 4 float32, 100 classes ['0', '1', '2', ..., '99'])"


def test_extractor_repr_names_network_size_fingerprint_and_cache(extracted, tmp_path):
    extractor, _ = extracted
    assert repr(extractor) == (
        f"Extractor('VGG16', weights=None, input_size=(32, 32), pooling='avg', dim=512, "
        f"fingerprint='{extractor.fingerprint[:12]}', cache='{tmp_path / 'cache'}')"
    )


def test_parquet_round_trip_keeps_rows_labels_paths_and_failures(extracted, tmp_path):
    _, embeddings = extracted
    path = tmp_path / "emb.parquet"
    embeddings.save(path)
    table = pd.read_parquet(path)
    assert table.columns.tolist() == ["index", "path", "label", "embedding"]
    assert table["path"].tolist() == embeddings.paths
    assert table["label"].tolist() == [embeddings.classes[i] for i in embeddings.y]
    np.testing.assert_array_equal(np.stack(table["embedding"]), embeddings.X)
    loaded = Embeddings.load(path)
    np.testing.assert_array_equal(loaded.X, embeddings.X)
    assert (loaded.y.tolist(), loaded.classes) == (embeddings.y.tolist(), embeddings.classes)
    assert loaded.index.tolist() == embeddings.index.tolist()  # the broken file's row skipped
    assert loaded.failed == embeddings.failed and loaded.fingerprint == embeddings.fingerprint
    assert loaded.spec == embeddings.spec
    assert not list(tmp_path.glob(".*partial"))


def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    embeddings = Embeddings.from_arrays(np.zeros((2, 3), np.float32), ["a", "b"])
    with pytest.raises(ImportError, match="pip install pyarrow"):
        embeddings.save(tmp_path / "e.parquet")
    assert not list(tmp_path.iterdir())


def test_a_parquet_file_without_featx_metadata_is_refused(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"path": ["a.jpg"], "label": ["x"]}).to_parquet(path)
    with pytest.raises(ValueError, match="not a featx embeddings table"):
        Embeddings.load(path)


def test_cli_extract_writes_parquet(image_folder, tmp_path, capsys):
    out = tmp_path / "emb.parquet"
    argv = ["extract", str(image_folder), "--backbone", "VGG16", "--weights", "none",
            "--size", "32", "--cache-dir", "none", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    table = pd.read_parquet(out)
    assert len(table) == 12 and sorted(set(table["label"])) == ["cat", "dog", "fish"]
    assert len(table["embedding"][0]) == 512


def test_cli_parquet_without_pyarrow_fails_before_extracting(image_folder, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    out = str(tmp_path / "e.parquet")
    argv = ["extract", str(image_folder), "--backbone", "VGG16", "--weights", "none", "--size",
            "32", "--cache-dir", str(tmp_path / "c"), "--out", out]  # fmt: skip
    assert main(argv) == 1
    assert "pip install pyarrow" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing extracted, nothing cached
