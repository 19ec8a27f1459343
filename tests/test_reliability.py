"""Reliability, round two (issue 19): each case found by the adversarial pass, reproduced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.backbones import KerasBackbone as Backbone
from featx.cli import main
from featx.config import MAX_INPUT_SIZE, BackboneConfig
from featx.images import MAX_PIXELS, DecodeError, decode


@pytest.mark.parametrize("size", [0, -1, MAX_INPUT_SIZE + 1, 100_000])
def test_sizes_out_of_range_are_refused_with_one_clear_message(size):
    with pytest.raises(ValueError, match=f"input_size={size}") as info:
        Backbone("MobileNetV2", weights=None, input_size=size)
    assert "positive" in str(info.value) or str(MAX_INPUT_SIZE) in str(info.value)
    with pytest.raises(ValueError, match=f"input_size={size}"):
        BackboneConfig("MobileNetV2", weights=None, input_size=size)


def test_size_zero_is_not_the_default_size():
    # It used to run at 224 (input_size or default): 0 is a mistake, not "the default".
    assert Backbone("MobileNetV2", weights=None).input_size == (224, 224)
    with pytest.raises(ValueError, match="positive"):
        Backbone("MobileNetV2", weights=None, input_size=0)


@pytest.mark.parametrize("size", ["0", "100000"])
def test_cli_sizes_are_refused_before_any_work(tmp_path, capsys, size):
    folder = tmp_path / "a"
    folder.mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(folder / "x.png")
    argv = ["extract", str(tmp_path), "--weights", "none", "--size", size]
    assert main([*argv, "--out", str(tmp_path / "e.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"--size {size}" in err and "input_size" not in err and "Traceback" not in err
    assert not (tmp_path / "e.npz").exists()


def test_the_cli_names_its_own_option_for_undecodable_files(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "a" / "fine.png")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image at all")
    argv = ["extract", str(tmp_path), "--weights", "none", "--size", "32", "--cache-dir", "none"]
    assert main([*argv, "--out", str(tmp_path / "e.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--on-error skip" in err and 'on_error="skip"' not in err
    with pytest.raises(DecodeError, match='on_error="skip"'):  # the API keeps its own name
        decode(b"not an image at all", (32, 32), name="broken.jpg")


def test_the_megapixel_limit_message_does_not_contradict_itself():
    side = int(np.sqrt(MAX_PIXELS)) + 1  # just above the limit
    image = Image.new("1", (side, side))
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    with pytest.raises(DecodeError) as info:
        decode(buffer.getvalue(), (32, 32), name="big.png")
    message = str(info.value)
    # Exact counts: "100.0 megapixels, above the limit of 100.0 megapixels" read as nonsense.
    assert f"{side * side:,} pixels" in message
    assert f"limit of {MAX_PIXELS:,}" in message


def test_a_saved_classifier_carries_no_machine_cache_path(tmp_path, monkeypatch):
    from featx.classifier import load_classifier, read_metadata, save_classifier
    from featx.transformer import EmbeddingTransformer

    trainer_cache = tmp_path / "trainer-home" / "private-cache"
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(8):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
        labels.append("ab"[i % 2])
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    embed = EmbeddingTransformer(
        "MobileNetV2", weights=None, input_size=32, cache_dir=trainer_cache, verbose=False
    )
    model = make_pipeline(embed, LogisticRegression()).fit(paths, labels)
    save_classifier(model, tmp_path / "model.featx")
    assert embed.cache_dir == trainer_cache  # the trainer's own object is untouched
    assert read_metadata(tmp_path / "model.featx")["transformer"]["cache_dir"] == "auto"

    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("FEATX_CACHE_DIR", str(user_cache))
    loaded = load_classifier(tmp_path / "model.featx")
    assert loaded.steps[0][1].cache_dir == "auto"
    import pickle

    assert b"private-cache" not in pickle.dumps(loaded)  # nowhere in the saved objects
    assert list(loaded.predict(paths)) == list(model.predict(paths))
    assert user_cache.is_dir()  # the loading user's default cache was used


def _full_disk(monkeypatch):
    """np.savez writes a little, then fails as a full disk does."""
    import errno

    def savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)


def _embeddings(seed: int):
    from featx.embeddings import Embeddings

    rng = np.random.default_rng(seed)
    return Embeddings.from_arrays(rng.normal(size=(6, 4)).astype(np.float32), list("aabbcc"))


@pytest.mark.parametrize("name", ["out.npz", "out-folder"])
def test_a_full_disk_keeps_the_embeddings_that_were_there(tmp_path, monkeypatch, name):
    import errno

    from featx.embeddings import Embeddings

    out = tmp_path / name
    good = _embeddings(0)
    good.save(out)
    with monkeypatch.context() as patch:
        _full_disk(patch)
        with pytest.raises(OSError) as info:
            _embeddings(1).save(out)
    assert info.value.errno == errno.ENOSPC
    assert str(out) in str(info.value) and "unchanged" in str(info.value)
    kept = Embeddings.load(out)
    np.testing.assert_array_equal(kept.X, good.X)
    np.testing.assert_array_equal(kept.y, good.y)
    leftovers = [p.name for p in tmp_path.rglob("*") if "partial" in p.name]
    assert leftovers == []


def test_a_folder_never_pairs_new_vectors_with_old_metadata(tmp_path, monkeypatch):
    """The streaming writer: if meta.npz cannot be written, load refuses the folder."""
    from featx.embeddings import Embeddings, FolderWriter

    out = tmp_path / "emb"
    _embeddings(0).save(out)
    new = _embeddings(1)
    writer = FolderWriter(out, new.X.shape)
    writer.X[np.arange(6)] = new.X
    writer.finish(np.arange(6))
    with monkeypatch.context() as patch:
        _full_disk(patch)
        with pytest.raises(OSError, match=r"no meta\.npz"):
            writer.write_meta(new)
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        Embeddings.load(out)


def test_cli_extract_out_on_a_full_disk_names_the_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "a" / "x.png")
    out = tmp_path / "e.npz"
    out.write_bytes(b"an older file the user kept")
    _full_disk(monkeypatch)
    argv = ["extract", str(tmp_path / "a"), "--weights", "none", "--size", "32"]
    assert main([*argv, "--cache-dir", "none", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "No space left" in err and "Traceback" not in err
    assert out.read_bytes() == b"an older file the user kept"


# -- the cache: a damaged index, a read-only cache ---------------------------------------------


def _filled_cache(root, n_shards: int = 60, rows: int = 50):
    from featx.cache import EmbeddingCache

    cache = EmbeddingCache(root)
    cache.register("fp", 8, {"what": "test vectors"})
    rng = np.random.default_rng(0)
    keys = []
    for s in range(n_shards):
        batch = [f"key-{s}-{r}" for r in range(rows)]
        cache.put("fp", batch, rng.normal(size=(rows, 8)).astype(np.float32))
        keys += batch
    cache.close()
    return keys


def test_a_truncated_index_is_moved_aside_and_rebuilt_once(tmp_path):
    from featx.cache import CACHE_FORMAT, EmbeddingCache

    keys = _filled_cache(tmp_path)
    expected = EmbeddingCache(tmp_path).get("fp", keys, dim=8)[1]
    index = tmp_path / f"featx-v{CACHE_FORMAT}" / "index.sqlite"
    assert index.stat().st_size > 20_000
    with open(index, "r+b") as f:
        f.truncate(5000)
    with pytest.warns(UserWarning, match="damaged") as caught:
        cache = EmbeddingCache(tmp_path)
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1
    message = f"rebuilt from the shard files: {len(keys)} vectors in 60 shards are kept."
    assert message in str(caught[0].message)
    assert cache.enabled and cache.rebuilt and Path(cache.rebuilt).is_file()
    found, got = cache.get("fp", keys, dim=8)  # every vector kept, from the shards' own keys
    assert found.all()
    np.testing.assert_array_equal(got, expected)
    assert cache.info()["fingerprints"][0]["spec"] == {"what": "test vectors"}
    vectors = np.ones((2, 8), np.float32)
    cache.put("fp", ["a", "b"], vectors)
    found, got = cache.get("fp", ["a", "b"], dim=8)
    assert found.all() and np.array_equal(got, vectors)
    report = cache.verify(grace=0)
    assert report["ok"] and report["n_vectors"] == len(keys) + 2
    assert report["orphan_files_removed"] == 0
    assert cache.verify()["ok"] and cache.clear() == len(keys) + 2


def test_verify_rebuilds_an_index_damaged_while_open(tmp_path):
    from featx.cache import CACHE_FORMAT, EmbeddingCache

    keys = _filled_cache(tmp_path)
    cache = EmbeddingCache(tmp_path)
    cache.close()
    index = tmp_path / f"featx-v{CACHE_FORMAT}" / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[4096 : 4096 * 3] = b"\xff" * (4096 * 2)  # overwrite pages in place
    index.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        report = EmbeddingCache(tmp_path).verify(grace=0)
    assert report["index_rebuilt"] and report["ok"], report
    assert report["n_vectors"] == len(keys) and report["orphan_files"] == 0
    assert EmbeddingCache(tmp_path).verify()["ok"]


def _read_only_mount(tmp_path):
    """A real read-only mount (tmpfs, remounted ro) when this process may mount; else None."""
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        return None
    target = tmp_path / "ro"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(target)],
                          capture_output=True)  # fmt: skip
    return target if done.returncode == 0 else None


def _remount_ro(target) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)


def test_a_read_only_cache_serves_its_vectors_and_writes_nothing(tmp_path, monkeypatch):
    import sqlite3
    import subprocess

    from featx.cache import EmbeddingCache

    target = _read_only_mount(tmp_path)
    try:
        root = target if target is not None else tmp_path / "simulated"
        keys = _filled_cache(root, n_shards=3, rows=40)
        writer = EmbeddingCache(root)
        expected = writer.get("fp", keys, dim=8)[1]
        writer.close()  # no file of the mount left open, so it can be remounted read-only
        del writer
        before = sorted((p.name, p.stat().st_size) for p in root.rglob("*"))
        if target is not None:
            _remount_ro(target)
        else:  # no mount here: opening for writing fails as it does on a read-only mount
            real = sqlite3.connect

            def connect(database, *args, **kwargs):
                if not kwargs.get("uri"):
                    raise sqlite3.OperationalError("attempt to write a readonly database")
                return real(database, *args, **kwargs)

            monkeypatch.setattr(sqlite3, "connect", connect)
        with pytest.warns(UserWarning, match="read-only"):
            cache = EmbeddingCache(root)
        assert cache.enabled and cache.read_only
        found, got = cache.get("fp", [*keys, "new"], dim=8)
        assert found[:-1].all() and not found[-1]
        np.testing.assert_array_equal(got[:-1], expected)
        cache.put("fp", ["new"], np.ones((1, 8), np.float32))  # dropped, no error
        info = cache.info()
        assert info["n_vectors"] == len(keys) and info["read_only"] is True
        report = cache.verify()
        assert report["ok"] and report["read_only"] and not report["repaired"]
        with pytest.raises(PermissionError, match="read-only"):
            cache.clear()
        cache.close()
        assert sorted((p.name, p.stat().st_size) for p in root.rglob("*")) == before
    finally:
        if target is not None:
            import gc

            gc.collect()  # a failed assertion may leave a connection open: unmount lazily
            subprocess.run(["umount", "-l", str(target)], check=False)


# -- the cache: keys in the shards, format 1 migrated, clear racing an extract ----------------


def test_swapped_index_rows_are_caught_by_the_shards_keys(tmp_path):
    import sqlite3

    from featx.cache import CACHE_FORMAT, EmbeddingCache

    keys = _filled_cache(tmp_path, n_shards=2, rows=5)
    cache = EmbeddingCache(tmp_path)
    expected = cache.get("fp", keys, dim=8)[1]
    cache.close()
    with sqlite3.connect(tmp_path / f"featx-v{CACHE_FORMAT}" / "index.sqlite") as db:
        # Within a shard: key-0-1 <-> key-0-3. Across shards: key-0-0 names key-1-0's place.
        row = "SELECT shard, row FROM vectors WHERE key = ?"
        (_, r1), (_, r3), (s2, r0) = (db.execute(row, (k,)).fetchone() for k in
                                        ("key-0-1", "key-0-3", "key-1-0"))  # fmt: skip
        db.execute("UPDATE vectors SET row = ? WHERE key = 'key-0-1'", (r3,))
        db.execute("UPDATE vectors SET row = ? WHERE key = 'key-0-3'", (r1,))
        db.execute("UPDATE vectors SET shard = ?, row = ? WHERE key = 'key-0-0'", (s2, r0))

    report = EmbeddingCache(tmp_path).verify(repair=False)
    assert not report["ok"] and report["key_mismatches"] == 3, report

    cache = EmbeddingCache(tmp_path)
    with pytest.warns(UserWarning, match="wrong rows") as caught:
        found, got = cache.get("fp", keys, dim=8)
    assert len(caught) == 2  # one per shard read
    # No image gets another's vector: the swapped pair is read from the right rows, the
    # key whose shard does not hold it is not found (it is computed again).
    assert found.tolist() == [k != "key-0-0" for k in keys]
    np.testing.assert_array_equal(got[found], expected[found])
    report = cache.verify(grace=0)  # the reads corrected the index already
    assert report["ok"] and report["key_mismatches"] == 0, report
    assert report["n_vectors"] == len(keys) - 1


def test_verify_corrects_swapped_rows(tmp_path):
    import sqlite3

    from featx.cache import CACHE_FORMAT, EmbeddingCache

    keys = _filled_cache(tmp_path, n_shards=1, rows=4)
    expected = EmbeddingCache(tmp_path).get("fp", keys, dim=8)[1]
    with sqlite3.connect(tmp_path / f"featx-v{CACHE_FORMAT}" / "index.sqlite") as db:
        db.execute("UPDATE vectors SET row = 3 - row")
    report = EmbeddingCache(tmp_path).verify()
    assert report["ok"] and report["key_mismatches"] == 4 and report["vectors_dropped"] == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found, got = EmbeddingCache(tmp_path).get("fp", keys, dim=8)
    assert found.all()
    np.testing.assert_array_equal(got, expected)


FORMAT_1_SCHEMA = """
CREATE TABLE fingerprints (
    fp TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL,
    n_computed INTEGER NOT NULL DEFAULT 0, compute_seconds REAL NOT NULL DEFAULT 0);
CREATE TABLE shards (
    id TEXT PRIMARY KEY, fp TEXT NOT NULL, path TEXT NOT NULL, n INTEGER NOT NULL,
    checksum TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE vectors (
    fp TEXT NOT NULL, key TEXT NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (fp, key)) WITHOUT ROWID;
"""


def _format_1_cache(location: Path, shards: list[tuple[list[str], np.ndarray]]) -> None:
    """A cache as featx wrote it before format 2: .npy shards of vectors alone, keys only in
    the index (the schema is unchanged)."""
    import hashlib
    import sqlite3
    import uuid

    root = location / "featx-v1"
    (root / "shards" / "fp").mkdir(parents=True)
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(FORMAT_1_SCHEMA)
    db.execute("INSERT INTO fingerprints (fp, dim, spec, created) VALUES ('fp', 8, '{}', 0)")
    for keys, vectors in shards:
        shard = uuid.uuid4().hex
        relative = f"shards/fp/{shard}.npy"
        np.save(root / relative, vectors)
        checksum = hashlib.blake2b(vectors.tobytes(), digest_size=16).hexdigest()
        db.execute("INSERT INTO shards VALUES (?, 'fp', ?, ?, ?, 0)",
                   (shard, relative, len(keys), checksum))  # fmt: skip
        db.executemany("INSERT INTO vectors VALUES ('fp', ?, ?, ?)",
                       [(k, shard, r) for r, k in enumerate(keys)])  # fmt: skip
    db.commit()
    db.close()


def test_a_format_1_cache_is_migrated_once_and_keeps_its_vectors(tmp_path):
    from featx.cache import EmbeddingCache

    rng = np.random.default_rng(1)
    batches = [([f"k{s}-{r}" for r in range(6)], rng.normal(size=(6, 8)).astype(np.float32))
               for s in range(3)]  # fmt: skip
    bad_keys, bad = ["bad-0", "bad-1"], np.ones((2, 8), np.float32)
    _format_1_cache(tmp_path, [*batches, (bad_keys, bad)])
    victim = sorted((tmp_path / "featx-v1" / "shards" / "fp").iterdir())
    shard_of_bad = next(p for p in victim if np.load(p).shape[0] == 2)
    np.save(shard_of_bad, np.zeros((2, 8), np.float32))  # its checksum no longer matches

    with pytest.warns(UserWarning, match="format 1") as caught:
        cache = EmbeddingCache(tmp_path)
    message = str(caught[0].message)
    assert "18 vectors were moved" in message and "2 whose shards failed" in message
    assert not (tmp_path / "featx-v1").exists() and not list(tmp_path.glob(".featx-v1*"))
    keys = [k for ks, _ in batches for k in ks]
    found, got = cache.get("fp", [*keys, *bad_keys], dim=8)
    assert found.tolist() == [True] * 18 + [False, False]
    np.testing.assert_array_equal(got[:18], np.concatenate([v for _, v in batches]))
    assert cache.verify(grace=0)["ok"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # migrated once: the next open says nothing
        assert EmbeddingCache(tmp_path).info()["n_vectors"] == 18


def test_clear_during_an_extract_in_another_process_loses_none_of_its_later_writes(tmp_path):
    import time

    from _extract_worker import finish, indexed_paths, shard_files, start, write_images

    from featx.cache import EmbeddingCache

    paths = write_images(tmp_path / "images", 120)  # 15 batches of 8
    clean, _ = finish(start(paths, None, tmp_path / "clean", backbone="numpy"), tmp_path / "clean")
    cache_dir = tmp_path / "cache"
    # Each batch pauses between its shard's rename and its index commit: clears land there.
    proc = start(paths, cache_dir, tmp_path / "run", backbone="numpy", rename_delay=0.15)
    deadline = time.monotonic() + 60
    while not shard_files(cache_dir):
        assert proc.poll() is None and time.monotonic() < deadline, "the worker never wrote"
        time.sleep(0.01)
    cleared = 0
    for _ in range(6):  # clears from this process, each with its own cache object
        cleared += EmbeddingCache(cache_dir).clear()  # no "Directory not empty" traceback
        time.sleep(0.1)
    after_last_clear = len(shard_files(cache_dir))
    X, report = finish(proc, tmp_path / "run")
    np.testing.assert_array_equal(X, clean)
    assert not report["failed"]
    # What the extract wrote after the last clear is in the index, not in a lost one.
    assert proc.returncode == 0
    files = set(shard_files(cache_dir))
    assert files == indexed_paths(cache_dir) and len(files) > after_last_clear
    report = EmbeddingCache(cache_dir).verify(grace=0)
    assert report["ok"] and report["orphan_files"] == report["orphan_files_pending"] == 0
    n_left = report["n_vectors"]
    assert n_left >= 8 * (len(files) - 1) and n_left + cleared >= 8
    again, rerun = finish(start(paths, cache_dir, tmp_path / "again", backbone="numpy"),
                          tmp_path / "again")  # fmt: skip
    np.testing.assert_array_equal(again, clean)
    assert rerun["cache_hits"] == n_left
    assert not list(cache_dir.glob(".featx-v*.cleared-*"))


def test_a_clear_while_another_process_connects_is_seen_and_nothing_is_written_aside(
    tmp_path, monkeypatch
):
    """A clear elsewhere lands between the connection's 'which file is the index' checks:
    the connection must end up on the new index, so what it writes next is found."""
    import os

    import featx.cache as cache_module
    from featx.cache import EmbeddingCache

    EmbeddingCache(tmp_path).put("fp", ["old"], np.ones((1, 4), np.float32))
    root = EmbeddingCache(tmp_path).root
    real_enable_wal = cache_module._enable_wal
    cleared = []

    def clear_elsewhere_first(conn):
        if not cleared:  # the moment a clear in another process moves the cache aside
            os.replace(root, tmp_path / ".featx-v2.cleared-elsewhere")
            other = EmbeddingCache(tmp_path)  # ... and starts the new, empty one
            other.close()
            cleared.append(True)
        return real_enable_wal(conn)

    monkeypatch.setattr(cache_module, "_enable_wal", clear_elsewhere_first)
    cache = EmbeddingCache(tmp_path)
    monkeypatch.setattr(cache_module, "_enable_wal", real_enable_wal)
    assert cleared
    cache.put("fp", ["new"], np.full((1, 4), 2.0, np.float32))
    found, vectors = EmbeddingCache(tmp_path).get("fp", ["old", "new"], 4)
    assert found.tolist() == [False, True]  # "new" is in the cache everyone sees
    np.testing.assert_array_equal(vectors[1], 2.0)
