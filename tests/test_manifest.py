"""Manifests: a .csv or .parquet table of image paths (and labels) as an extraction source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CountingBackbone

from featx import DecodeError, Extractor
from featx.cli import main


@pytest.fixture
def extractor(tmp_path: Path) -> Extractor:
    return Extractor(CountingBackbone(), cache_dir=tmp_path / "cache", verbose=False)


def _relative_table(root: Path) -> pd.DataFrame:
    """Paths relative to ``root`` (the folder the manifest is written to), in a shuffled order."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*g"))
    order = np.random.default_rng(0).permutation(len(files))
    files = [files[i] for i in order]
    return pd.DataFrame({"path": files, "label": [f.split("/")[0] for f in files]})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_paths_resolve_against_its_folder_with_labels(
    extractor, image_folder, suffix, monkeypatch, tmp_path
):
    table = _relative_table(image_folder)
    manifest = image_folder / f"manifest{suffix}"
    getattr(table, f"to_{suffix[1:]}")(manifest, index=False)
    monkeypatch.chdir(tmp_path)  # relative to the manifest, not to the working directory

    emb = extractor.extract(manifest)
    assert emb.paths == [os.path.join(image_folder, p) for p in table["path"]]
    assert emb.classes == ["cat", "dog", "fish"]
    assert [emb.classes[i] for i in emb.y] == table["label"].tolist()
    from_frame = extractor.extract(table.assign(path=emb.paths))
    assert np.array_equal(emb.X, from_frame.X) and from_frame.cache_misses == 0


def test_manifest_with_absolute_paths_and_custom_columns(extractor, image_folder, tmp_path):
    files = sorted(str(p) for p in (image_folder / "dog").iterdir())
    manifest = tmp_path / "elsewhere" / "dogs.csv"
    manifest.parent.mkdir()
    pd.DataFrame({"file": files, "breed": [3, 1, 3, 1]}).to_csv(manifest, index=False)
    emb = extractor.extract(manifest, path_column="file", label_column="breed")
    assert emb.paths == files
    assert emb.classes == ["1", "3"] and emb.y.tolist() == [1, 0, 1, 0]


def test_manifest_without_labels_is_unlabelled(extractor, image_folder):
    pd.DataFrame({"path": ["cat/00.jpg", "dog/01.png"]}).to_csv(image_folder / "m.csv")
    emb = extractor.extract(image_folder / "m.csv")
    assert emb.y is None and len(emb) == 2


def test_numbered_file_names_stay_paths(extractor, tmp_path, image_folder):
    (tmp_path / "007").write_bytes((image_folder / "cat" / "00.jpg").read_bytes())
    pd.DataFrame({"path": ["007"]}).to_csv(tmp_path / "m.csv", index=False)
    assert extractor.extract(tmp_path / "m.csv").paths == [str(tmp_path / "007")]


def test_manifest_without_the_path_column_names_file_and_columns(extractor, tmp_path):
    pd.DataFrame({"file": ["a.jpg"], "label": ["cat"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(
        ValueError, match=r"manifest '.*m\.csv' has no path column 'path'; its columns are"
    ):
        extractor.extract(tmp_path / "m.csv")


def test_manifest_without_the_named_label_column(extractor, tmp_path):
    pd.DataFrame({"path": ["a.jpg"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"no label column 'breed'; its columns are \['path'\]"):
        extractor.extract(tmp_path / "m.parquet", label_column="breed")


def test_empty_manifest_is_a_clear_error(extractor, tmp_path):
    (tmp_path / "m.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match=r"manifest '.*m\.csv' has no rows"):
        extractor.extract(tmp_path / "m.csv")


@pytest.mark.parametrize("name, content", [("m.parquet", b"not parquet"), ("m.csv", b"")])
def test_unreadable_manifest_is_a_clear_error(extractor, tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"Cannot read the manifest '.*{name}'"):
        extractor.extract(tmp_path / name)


def test_missing_image_raises_or_is_skipped_like_any_path(extractor, image_folder):
    pd.DataFrame({"path": ["cat/00.jpg", "cat/gone.jpg"]}).to_csv(image_folder / "m.csv")
    gone = str(image_folder / "cat" / "gone.jpg")
    with pytest.raises(DecodeError, match=rf"Cannot decode '{gone}': cannot be read"):
        extractor.extract(image_folder / "m.csv")
    emb = extractor.extract(image_folder / "m.csv", on_error="skip")
    assert len(emb) == 1 and [name for name, _ in emb.failed] == [gone]


def test_cli_extracts_a_manifest_with_a_label_column(image_folder, tmp_path, capsys):
    table = _relative_table(image_folder).rename(columns={"path": "file", "label": "kind"})
    table.to_csv(image_folder / "m.csv", index=False)
    argv = ["extract", str(image_folder / "m.csv"), "--path-column", "file"]
    options = ["--weights", "none", "--size", "32", "--cache-dir", "none", "--json", "--quiet"]
    assert main([*argv, "--label-column", "kind", *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 12 and summary["n_classes"] == 3
