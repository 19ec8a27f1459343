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
    assert f"input_size={size}" in err and "Traceback" not in err
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
    from featx.cache import EmbeddingCache

    keys = _filled_cache(tmp_path)
    index = tmp_path / "featx-v1" / "index.sqlite"
    assert index.stat().st_size > 20_000
    with open(index, "r+b") as f:
        f.truncate(5000)
    with pytest.warns(UserWarning, match="damaged") as caught:
        cache = EmbeddingCache(tmp_path)
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1
    assert cache.enabled and cache.rebuilt and Path(cache.rebuilt).is_file()
    found, _ = cache.get("fp", keys[:10], dim=8)
    assert not found.any()  # nothing trusted from the damaged index
    vectors = np.ones((2, 8), np.float32)
    cache.put("fp", ["a", "b"], vectors)
    found, got = cache.get("fp", ["a", "b"], dim=8)
    assert found.all() and np.array_equal(got, vectors)
    report = cache.verify(grace=0)  # the old shards are unindexed files now: removed
    assert report["ok"] and report["orphan_files_removed"] == 60
    assert cache.verify()["ok"] and cache.clear() == 2


def test_verify_rebuilds_an_index_damaged_while_open(tmp_path):
    from featx.cache import EmbeddingCache

    _filled_cache(tmp_path)
    cache = EmbeddingCache(tmp_path)
    cache.close()
    index = tmp_path / "featx-v1" / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[4096 : 4096 * 3] = b"\xff" * (4096 * 2)  # overwrite pages in place
    index.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        report = EmbeddingCache(tmp_path).verify(grace=0)
    assert report["index_rebuilt"] and report["ok"], report
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
