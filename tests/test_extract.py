"""The extractor and its cache: each image computed once, nothing stale reused (a changed
image, a changed fingerprint, a weights file replaced at the same path).

The cache's own contract (kills, concurrent writers, disk faults, verify) is in
``test_cache.py``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SUMMARY_FIELDS, CountingBackbone, random_image

import featx._pipeline
import featx.extract
from featx import Embeddings, Extractor
from featx._pipeline import content_key
from featx.cache import EmbeddingCache


def _extractor(backbone, cache_dir, **params) -> Extractor:
    return Extractor(backbone, cache_dir=cache_dir, verbose=False, batch_size=4, **params)


def test_second_run_computes_nothing_and_returns_the_same(image_folder, tmp_path):
    backbone = CountingBackbone()
    first = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert len(backbone.seen) == 12
    assert (first.cache_misses, first.cache_hits) == (12, 0)

    second = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert len(backbone.seen) == 12
    assert (second.cache_misses, second.cache_hits) == (0, 12)
    np.testing.assert_array_equal(first.X, second.X)
    assert first.paths == second.paths
    np.testing.assert_array_equal(first.y, second.y)


def test_one_new_image_computes_exactly_one(image_folder, tmp_path):
    backbone = CountingBackbone()
    _extractor(backbone, tmp_path / "c").extract(image_folder)
    random_image(999).save(image_folder / "dog" / "new.png")
    result = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert len(backbone.seen) == 13
    assert (result.cache_misses, result.cache_hits) == (1, 12)
    assert len(result) == 13


def test_duplicate_content_is_computed_once(tmp_path):
    path = tmp_path / "a.png"
    random_image(1).save(path)
    copy = tmp_path / "b.png"
    copy.write_bytes(path.read_bytes())
    backbone = CountingBackbone()
    result = _extractor(backbone, None).extract([str(path), str(copy), str(path)])
    assert len(backbone.seen) == 1
    assert len(result) == 3
    np.testing.assert_array_equal(result.X[0], result.X[1])


def test_disabled_cache_uses_the_same_path_and_recomputes(image_folder):
    backbone = CountingBackbone()
    a = _extractor(backbone, None).extract(image_folder)
    b = _extractor(backbone, None).extract(image_folder)
    assert len(backbone.seen) == 24
    np.testing.assert_array_equal(a.X, b.X)
    assert a.cache_hits == b.cache_hits == 0


def test_image_modified_in_place_is_embedded_again(image_folder, tmp_path):
    backbone = CountingBackbone()
    before = _extractor(backbone, tmp_path / "c").extract(image_folder)
    target = image_folder / "cat" / "01.png"
    random_image(12345).save(target)
    after = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert after.cache_misses == 1
    row = after.paths.index(str(target))
    assert not np.array_equal(before.X[row], after.X[row])


def test_cache_dir_auto_follows_the_environment(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "from_env"))
    extractor = _extractor(CountingBackbone(), "auto")
    extractor.extract(image_folder)
    assert extractor.cache.location == tmp_path / "from_env"
    assert extractor.cache.info()["n_vectors"] == 12


def _fingerprint(**params) -> str:
    size = params.pop("size", 16)
    tag = params.pop("tag", "v1")
    return Extractor(CountingBackbone(size, tag), cache_dir=None, **params).fingerprint


@pytest.mark.parametrize(
    "change",
    [{"tag": "v2"}, {"size": 24}, {"resize": "center_crop"}, {"background": (0, 0, 0)}],
    ids=["weights", "input_size", "resize", "background"],
)
def test_fingerprint_changes_with_what_changes_the_vectors(change):
    assert _fingerprint(**change) != _fingerprint()


def test_fingerprint_is_stable_and_ignores_batch_size():
    assert _fingerprint() == _fingerprint()
    # Batch size changes only the last bits (~1e-6) and is deliberately not part of the key.
    assert _fingerprint(batch_size=8) == _fingerprint(batch_size=64)


@pytest.mark.parametrize(
    "change",
    [
        {"weights": None, "seed": 1},
        {"input_size": 64},
        {"pooling": "max"},
        {"layer": "block_3_expand"},
    ],
    ids=["seed", "input_size", "pooling", "layer"],
)
def test_keras_fingerprint_changes_with_weights_size_pooling_layer(change):
    base = {"weights": None, "input_size": 32}
    a = Extractor("MobileNetV2", cache_dir=None, **base).fingerprint
    b = Extractor("MobileNetV2", cache_dir=None, **{**base, **change}).fingerprint
    assert a != b


def test_a_changed_fingerprint_never_reuses_vectors(image_folder, tmp_path):
    old, new = CountingBackbone(tag="old"), CountingBackbone(tag="new")
    _extractor(old, tmp_path / "c").extract(image_folder)
    result = _extractor(new, tmp_path / "c").extract(image_folder)
    assert result.cache_misses == 12
    assert len(new.seen) == 12


def test_embedding_does_not_depend_on_batch_neighbours():
    """Fixed-shape batches: a subset, at other positions and with other padding, gives the
    very same bits as the full run (what makes resumed runs exact)."""
    images = np.random.default_rng(0).integers(0, 255, (11, 40, 40, 3), dtype=np.uint8)
    params = {
        "weights": None,
        "input_size": 32,
        "batch_size": 4,
        "cache_dir": None,
        "verbose": False,
    }
    full = Extractor("VGG16", **params).extract(images)
    part = Extractor("VGG16", **params).extract(images[3:8])
    np.testing.assert_array_equal(full.X[3:8], part.X)


def test_save_and_load_round_trip(image_folder, tmp_path):
    result = _extractor(CountingBackbone(), None).extract(image_folder)
    result.save(tmp_path / "e.npz")
    loaded = Embeddings.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(loaded.X, result.X)
    np.testing.assert_array_equal(loaded.y, result.y)
    assert loaded.classes == ["cat", "dog", "fish"]
    assert loaded.paths == result.paths
    assert loaded.fingerprint == result.fingerprint


def test_summary_has_the_documented_fields(image_folder):
    summary = _extractor(CountingBackbone(), None).extract(image_folder).summary()
    for key in SUMMARY_FIELDS:
        assert key in summary
    assert summary["n_images"] == 12 and summary["dim"] == 6


@pytest.mark.parametrize(
    ("param", "match"),
    [
        ({"resize": "squash"}, "resize='squash'"),
        ({"on_error": "ignore"}, "on_error='ignore'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"background": (300, 0, 0)}, "background="),
    ],
)
def test_bad_parameters_are_refused(param, match):
    with pytest.raises(ValueError, match=match):
        Extractor(CountingBackbone(), cache_dir=None, **param)


def test_extract_warns_nothing_on_a_clean_run(image_folder, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _extractor(CountingBackbone(), tmp_path / "c").extract(image_folder)
    assert [str(w.message) for w in caught] == []
    assert len(result) == 12 and result.cache_misses == 12


def test_raw_pixels_baseline_goes_through_the_same_pipeline(image_folder):
    from featx.backbones import RawPixels

    result = Extractor(RawPixels(8), cache_dir=None, verbose=False).extract(image_folder)
    assert result.X.shape == (12, 8 * 8 * 3)
    assert result.X.min() >= 0.0 and result.X.max() <= 1.0
    assert result.classes == ["cat", "dog", "fish"]


# -- weights replaced at the same path --------------------------------------------------------

# An image modified in place is embedded again (test_image_modified_in_place_is_embedded_again
# above); a weights file's fingerprint follows its content
# (test_backbones.py::test_weights_file_is_fingerprinted_by_content). Below, the same end to
# end, through the cache.


def _weights_file(path: Path, seed: int) -> None:
    from featx.backbones import KerasBackbone

    KerasBackbone("MobileNetV2", weights=None, input_size=32, seed=seed).model.save_weights(path)


def _keras(weights, cache_dir) -> Extractor:
    return Extractor(
        "MobileNetV2",
        weights=weights,
        input_size=32,
        batch_size=4,
        cache_dir=cache_dir,
        verbose=False,
    )


@pytest.fixture(scope="module")
def small_images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)


def test_weights_replaced_at_the_same_path_are_not_served_stale(small_images, tmp_path):
    path = tmp_path / "model.weights.h5"
    _weights_file(path, seed=1)
    first = _keras(path, tmp_path / "c").extract(small_images)
    _weights_file(path, seed=2)  # a new checkpoint over the old one
    second = _keras(path, tmp_path / "c").extract(small_images)
    assert second.cache_misses == 6 and second.fingerprint != first.fingerprint
    np.testing.assert_array_equal(second.X, _keras(path, None).extract(small_images).X)
    assert not np.array_equal(first.X, second.X)


def test_weights_replaced_after_the_extractor_is_built_are_not_cached_stale(small_images, tmp_path):
    path, original = tmp_path / "model.weights.h5", tmp_path / "original.weights.h5"
    _weights_file(original, seed=1)
    shutil.copy(original, path)
    long_lived = _keras(path, tmp_path / "c")  # e.g. built in a notebook cell
    _weights_file(path, seed=2)
    with pytest.raises(RuntimeError, match="changed since this extractor was created"):
        long_lived.extract(small_images)
    shutil.copy(original, path)  # the original weights again: their vectors must be served
    expected = _keras(path, None).extract(small_images).X
    np.testing.assert_array_equal(_keras(path, tmp_path / "c").extract(small_images).X, expected)


# -- the cache remembers each file's stat and content key ---------------------------------


@pytest.fixture
def settled(monkeypatch):
    """Files written a moment ago count as settled (they are remembered at once)."""
    monkeypatch.setattr(featx._pipeline, "SETTLE_NS", 0)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files read to compute a content key (the decoder's reads are not counted)."""
    seen: list[str] = []
    original = featx._pipeline.read_file

    def counting(path: str) -> bytes:
        seen.append(path)
        return original(path)

    monkeypatch.setattr(featx._pipeline, "read_file", counting)
    return seen


def _bmp_folder(root: Path) -> list[Path]:
    """Two classes of BMP files: bytes can be changed without changing the size."""
    paths = []
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            paths.append(root / name / f"{i}.bmp")
            random_image(100 * c + i).save(paths[-1])
    return paths


def test_a_warm_run_reads_no_file_whose_stat_is_unchanged(image_folder, tmp_path, settled, reads):
    backbone = CountingBackbone()
    first = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert len(reads) == 12
    reads.clear()
    second = _extractor(backbone, tmp_path / "c").extract(image_folder)
    assert reads == []
    assert (second.cache_misses, second.cache_hits) == (0, 12)
    np.testing.assert_array_equal(first.X, second.X)


def _changed_bytes(target: Path, other: Path) -> bytes:
    """``target``'s bytes with its last 30 (pixels) taken from ``other``: same size."""
    data = bytearray(target.read_bytes())
    data[-30:] = other.read_bytes()[-30:]
    return bytes(data)


def _rewrite_in_place(target: Path, other: Path) -> None:
    """New bytes, same size, same inode, modification time put back: only ctime moves."""
    st = target.stat()
    data = _changed_bytes(target, other)
    with open(target, "r+b") as f:
        f.write(data)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_ino == st.st_ino


def _replace_keeping_times(target: Path, other: Path) -> None:
    """Another file of the same size and modification time renamed over it: a new inode."""
    st = target.stat()
    data = _changed_bytes(target, other)
    new = target.with_suffix(".tmp")
    new.write_bytes(data)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, target)


def _retarget_link(target: Path, other: Path) -> None:
    """``target`` becomes a link to a changed copy of what it was (the path stays)."""
    data = _changed_bytes(target, other)
    copy = target.parent.parent.parent / "elsewhere.bmp"
    copy.write_bytes(data)
    target.unlink()
    target.symlink_to(copy)


@pytest.mark.parametrize("change", [_rewrite_in_place, _replace_keeping_times, _retarget_link])
def test_a_changed_file_is_read_and_embedded_again(tmp_path, settled, reads, change):
    paths = _bmp_folder(tmp_path / "images")
    backbone = CountingBackbone()
    before = _extractor(backbone, tmp_path / "c").extract(tmp_path / "images")
    change(paths[0], paths[4])
    reads.clear()
    after = _extractor(backbone, tmp_path / "c").extract(tmp_path / "images")
    assert reads == [str(paths[0])]
    assert (after.cache_misses, after.cache_hits) == (1, 5)
    fresh = _extractor(CountingBackbone(), None).extract(tmp_path / "images")
    np.testing.assert_array_equal(after.X, fresh.X)
    assert not np.array_equal(before.X[0], after.X[0])


def test_a_file_changed_within_the_settling_time_is_not_remembered(tmp_path, reads):
    paths = _bmp_folder(tmp_path / "images")
    _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "images")
    absolute = [os.path.abspath(p) for p in paths]
    assert EmbeddingCache(tmp_path / "c").file_keys(absolute) == {}
    reads.clear()
    _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "images")
    assert len(reads) == 6  # read again: written less than 2 s ago


def test_remembered_keys_are_the_content_keys(tmp_path, settled):
    paths = _bmp_folder(tmp_path / "images")
    _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "images")
    known = EmbeddingCache(tmp_path / "c").file_keys([os.path.abspath(p) for p in paths])
    assert sorted(known) == sorted(os.path.abspath(p) for p in paths)
    for p in paths:
        assert known[os.path.abspath(p)][1] == content_key(p.read_bytes())


def test_an_index_without_remembered_files_still_serves_every_vector(tmp_path, settled, reads):
    """An index written before featx remembered files (no ``files`` table): the hint is
    missing, nothing else; opening it for writing adds the table again."""
    backbone = CountingBackbone()
    _bmp_folder(tmp_path / "images")
    first = _extractor(backbone, tmp_path / "c").extract(tmp_path / "images")
    index = next((tmp_path / "c").glob("featx-v*/index.sqlite"))
    with sqlite3.connect(index) as conn:
        conn.execute("DROP TABLE files")
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.file_keys([str(tmp_path / "images" / "cat" / "0.bmp")]) == {}
    reads.clear()
    second = _extractor(backbone, tmp_path / "c").extract(tmp_path / "images")
    assert len(reads) == 6 and second.cache_hits == 6
    np.testing.assert_array_equal(first.X, second.X)
    reads.clear()
    _extractor(backbone, tmp_path / "c").extract(tmp_path / "images")
    assert reads == []


def test_a_file_name_that_is_not_utf8_is_remembered(tmp_path, settled, reads):
    (tmp_path / "photos").mkdir()
    raw = os.path.join(os.fsencode(tmp_path / "photos"), b"bad_\xff.bmp")
    random_image(3).save(tmp_path / "photos" / "good.bmp")
    random_image(4).save(os.fsdecode(raw), format="BMP")  # a str with a surrogate escape
    first = _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "photos")
    assert first.failed == [] and len(reads) == 2
    reads.clear()
    second = _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "photos")
    assert reads == [] and second.cache_hits == 2
    np.testing.assert_array_equal(first.X, second.X)


def test_files_are_remembered_in_several_transactions(tmp_path, settled, reads, monkeypatch):
    monkeypatch.setattr(featx.extract, "_REMEMBER_EVERY", 2)
    monkeypatch.setattr(featx.extract, "_KEY_CHUNK", 2)
    paths = _bmp_folder(tmp_path / "images")
    written: list[int] = []
    original = EmbeddingCache.remember_file_keys

    def counting(self, entries):
        written.append(len(entries))
        original(self, entries)

    monkeypatch.setattr(EmbeddingCache, "remember_file_keys", counting)
    _extractor(CountingBackbone(), tmp_path / "c").extract(tmp_path / "images")
    assert sum(written) == 6 and max(written) < 6
    known = EmbeddingCache(tmp_path / "c").file_keys([os.path.abspath(p) for p in paths])
    assert len(known) == 6
