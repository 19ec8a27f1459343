"""Reliability, round two (issue 19): each case found by the adversarial pass, reproduced."""

from __future__ import annotations

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
