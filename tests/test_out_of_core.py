"""Embeddings larger than memory: extraction into a file, memory-mapped loading, partial_fit.

That peak memory does not grow with the number of rows is shown by
benchmarks/out_of_core.py (a million 1280-d vectors), not by a timed test.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import CountingBackbone

from featx import Embeddings, Extractor
from featx.cache import EmbeddingCache
from featx.cli import main
from featx.embeddings import NpyRowWriter, iter_chunks
from featx.images import DecodeError
from featx.outofcore import fit_out_of_core


def _extractor(backbone, cache_dir) -> Extractor:
    return Extractor(backbone, cache_dir=cache_dir, verbose=False, batch_size=4)


# -- extraction into a folder ---------------------------------------------------------------


def test_extract_out_equals_in_memory_extraction_exactly(image_folder, tmp_path):
    backbone = CountingBackbone()
    in_memory = _extractor(backbone, None).extract(image_folder)
    # Half the images cached first, so the file is filled from hits and computed misses.
    cache = tmp_path / "c"
    half = sorted(image_folder.glob("*/*"))[:6]
    _extractor(backbone, cache).extract([str(p) for p in half])
    streamed = _extractor(backbone, cache).extract(image_folder, out=tmp_path / "emb")
    assert isinstance(streamed.X, np.memmap) and not streamed.X.flags.writeable
    assert (streamed.cache_hits, streamed.cache_misses) == (6, 6)
    np.testing.assert_array_equal(streamed.X, in_memory.X)
    loaded = Embeddings.load(tmp_path / "emb", mmap_mode="r")
    assert isinstance(loaded.X, np.memmap)
    np.testing.assert_array_equal(loaded.X, in_memory.X)
    np.testing.assert_array_equal(loaded.y, in_memory.y)
    assert loaded.paths == in_memory.paths and loaded.classes == in_memory.classes
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["X.npy", "meta.npz"]


def test_extract_out_leaves_out_failed_images(image_folder, tmp_path):
    (image_folder / "dog" / "broken.jpg").write_bytes(b"not an image")
    extractor = Extractor(CountingBackbone(), cache_dir=None, verbose=False, batch_size=4,
                          on_error="skip")  # fmt: skip
    in_memory = extractor.extract(image_folder)
    streamed = extractor.extract(image_folder, out=tmp_path / "emb")
    assert len(streamed.failed) == 1 and len(streamed) == 12
    np.testing.assert_array_equal(streamed.X, in_memory.X)
    np.testing.assert_array_equal(streamed.index, in_memory.index)
    assert not list((tmp_path / "emb").glob(".*"))  # no temporary file left


def test_extract_out_refuses_bad_paths(image_folder, tmp_path):
    extractor = _extractor(CountingBackbone(), None)
    with pytest.raises(ValueError, match="cannot be written row by row"):
        extractor.extract(image_folder, out=tmp_path / "emb.npz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="it is a file"):
        extractor.extract(image_folder, out=tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        extractor.extract(image_folder, out=tmp_path / "busy")


def test_extract_out_overwrites_a_previous_embeddings_folder(image_folder, tmp_path):
    extractor = _extractor(CountingBackbone(), None)
    extractor.extract(image_folder, out=tmp_path / "emb")
    again = extractor.extract(image_folder, out=tmp_path / "emb")
    assert len(again) == 12


def test_cli_extract_out_folder(image_folder, tmp_path):
    argv = ["extract", str(image_folder), "--backbone", "VGG16", "--weights", "none", "--size",
            "32", "--quiet", "--cache-dir", "none", "--out", str(tmp_path / "emb")]  # fmt: skip
    assert main(argv) == 0
    loaded = Embeddings.load(tmp_path / "emb", mmap_mode="r")
    assert loaded.X.shape == (12, 512) and isinstance(loaded.X, np.memmap)


# -- saving and loading ---------------------------------------------------------------------


def _embeddings(n=7, dim=5) -> Embeddings:
    rng = np.random.default_rng(0)
    return Embeddings(X=rng.normal(size=(n, dim)).astype(np.float32), y=np.arange(n) % 2,
                      classes=["a", "b"], paths=[f"p{i}" for i in range(n)],
                      index=np.arange(n), failed=[], fingerprint="fp", spec={"k": 1})  # fmt: skip


@pytest.mark.parametrize("name", ["emb.npz", "emb"])
def test_save_and_load_memory_mapped(tmp_path, name):
    emb = _embeddings()
    emb.save(tmp_path / name)
    loaded = Embeddings.load(tmp_path / name, mmap_mode="r")
    assert isinstance(loaded.X, np.memmap)
    np.testing.assert_array_equal(loaded.X, emb.X)
    assert loaded.paths == emb.paths and loaded.spec == emb.spec
    np.testing.assert_array_equal(Embeddings.load(tmp_path / name).X, emb.X)


def test_load_refuses_what_cannot_be_mapped(tmp_path):
    emb = _embeddings()
    with (
        zipfile.ZipFile(tmp_path / "zipped.npz", "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("X.npy", "w") as f,
    ):
        np.lib.format.write_array(f, emb.X)
    with pytest.raises(ValueError, match="compressed"):
        Embeddings.load(tmp_path / "zipped.npz", mmap_mode="r")
    emb.save(tmp_path / "emb.npz")
    with pytest.raises(ValueError, match="mmap_mode='w'"):
        Embeddings.load(tmp_path / "emb.npz", mmap_mode="w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        Embeddings.load(tmp_path / "empty")


# -- the cache into a file ------------------------------------------------------------------


def test_read_into_a_file_equals_get_and_reads_each_shard_once(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "c")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 3)).astype(np.float32)
    keys = [f"k{i}" for i in range(40)]
    for start in range(0, 40, 8):  # five shards
        cache.put("fp", keys[start : start + 8], vectors[start : start + 8])
    wanted = [keys[i] for i in rng.permutation(40)] + ["k3", "missing", "k3"]
    reads = []
    original = EmbeddingCache._read_shard
    monkeypatch.setattr(
        EmbeddingCache, "_read_shard", lambda self, *a: reads.append(a[0]) or original(self, *a)
    )
    with NpyRowWriter(tmp_path / "X.npy", (len(wanted), 3)) as writer:
        found = cache.read_into("fp", wanted, writer)
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 5
    expected_found, expected = cache.get("fp", wanted, dim=3)
    np.testing.assert_array_equal(found, expected_found)
    assert found.tolist()[-3:] == [True, False, True]
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), expected)


def test_row_writer_and_chunks(tmp_path):
    with NpyRowWriter(tmp_path / "X.npy", (10, 2)) as writer:
        writer[np.array([9, 3, 4, 5])] = np.arange(8, dtype=np.float32).reshape(4, 2)
        writer[0] = [7, 7]
        with pytest.raises(IndexError, match="outside the file's 10 rows"):
            writer[np.array([10])] = [[1, 1]]
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert X[9].tolist() == [0, 1] and X[3:6].tolist() == [[2, 3], [4, 5], [6, 7]]
    assert X[0].tolist() == [7, 7] and X[1].tolist() == [0, 0]
    order = np.array([9, 0, 3])
    chunks = list(iter_chunks(X, 2, rows=order))
    assert [rows.tolist() for rows, _ in chunks] == [[0, 9], [3]]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), X[[0, 9, 3]])
    with pytest.raises(ValueError, match="chunk_rows=0"):
        next(iter_chunks(X, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunks_of_a_memmap_equal_its_rows_in_any_order(tmp_path, dtype):
    data = np.random.default_rng(0).normal(size=(500, 6)).astype(dtype)
    np.save(tmp_path / "X.npy", data)
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    for source, expected in [(X, data), (X[100:], data[100:])]:  # a whole file, a view
        order = np.random.default_rng(1).permutation(len(expected))
        for rows, block in iter_chunks(source, 64, rows=order):
            assert block.dtype == np.float32
            np.testing.assert_array_equal(block, expected[rows].astype(np.float32))
        blocks = [block for _, block in iter_chunks(source, 64)]
        np.testing.assert_array_equal(np.concatenate(blocks), expected.astype(np.float32))


# -- the partial_fit head -------------------------------------------------------------------


def _separable(tmp_path, n_per_class=300, dim=20, n_classes=4):
    """Class-sorted rows (as folders give them) of a separable mixture, memory-mapped."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(size=(len(y), dim)).astype(np.float32) + 4.0 * np.eye(dim)[y]
    np.save(tmp_path / "X.npy", X)
    return np.load(tmp_path / "X.npy", mmap_mode="r"), y


def test_fit_out_of_core_learns_separable_data_from_a_memmap(tmp_path):
    X, y = _separable(tmp_path)
    fit = fit_out_of_core(X, y, epochs=3, chunk_rows=100, validation=0.2)
    assert fit.validation_accuracy >= 0.95
    assert (fit.n_train, fit.n_validation) == (960, 240)
    assert [h["epoch"] for h in fit.history] == [1, 2, 3]
    assert list(fit.head.named_steps) == ["scale", "clf"]
    assert np.mean(fit.head.predict(np.asarray(X)) == y) >= 0.95
    assert fit.head.predict_proba(X[:3]).shape == (3, 4)
    again = fit_out_of_core(X, y, epochs=3, chunk_rows=100, validation=0.2)
    np.testing.assert_array_equal(again.head[-1].coef_, fit.head[-1].coef_)  # seeded


def test_fit_out_of_core_shuffles_class_sorted_rows(tmp_path):
    # Chunks of 100 rows in file order would hold one class each; shuffling mixes them.
    X, y = _separable(tmp_path)
    fit = fit_out_of_core(X, y, epochs=1, chunk_rows=100, validation=0.2, normalize="l2")
    assert fit.validation_accuracy >= 0.9
    assert list(fit.head.named_steps) == ["l2", "scale", "clf"]


def test_fit_out_of_core_errors(tmp_path):
    X, y = _separable(tmp_path)
    with pytest.raises(ValueError, match="labels not in classes="):
        fit_out_of_core(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="one label per row"):
        fit_out_of_core(X, y[:-1])
    with pytest.raises(ValueError, match="one label per row"):
        fit_out_of_core(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_out_of_core(X[:300], y[:300])
    with pytest.raises(ValueError, match=r"validation=1\.5"):
        fit_out_of_core(X, y, validation=1.5)
    with pytest.raises(ValueError, match="normalize='l1'"):
        fit_out_of_core(X, y, normalize="l1")
    with pytest.raises(ValueError, match="epochs=0"):
        fit_out_of_core(X, y, epochs=0)


def test_extract_out_that_fails_leaves_the_folder_reusable(image_folder, tmp_path):
    (image_folder / "dog" / "broken.jpg").write_bytes(b"not an image")
    extractor = _extractor(CountingBackbone(), tmp_path / "c")
    with pytest.raises(DecodeError, match=r"broken\.jpg"):
        extractor.extract(image_folder, out=tmp_path / "emb")
    assert list((tmp_path / "emb").iterdir()) == []
    (image_folder / "dog" / "broken.jpg").unlink()
    assert len(extractor.extract(image_folder, out=tmp_path / "emb")) == 12


def test_cli_train_accepts_the_sgd_head(image_folder, tmp_path, capsys):
    from featx.classifier import load_classifier
    from featx.heads import HEADS

    out = tmp_path / "m.featx"
    argv = ["train", str(image_folder), "--out", str(out), "--head", "sgd", "--backbone",
            "VGG16", "--weights", "none", "--size", "32", "--cache-dir", "none", "--quiet",
            "--json"]  # fmt: skip
    assert "sgd" in HEADS and main(argv) == 0
    assert json.loads(capsys.readouterr().out)["head"] == "sgd"
    model = load_classifier(out)
    assert type(model[-1][-1]).__name__ == "SGDClassifier"  # the head pipeline's classifier
