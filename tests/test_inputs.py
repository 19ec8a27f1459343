"""Inputs never silently wrong or silently missing: deep images read by their range, and
image files a folder scan cannot read counted, named and explained."""

from __future__ import annotations

import io
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CountingBackbone, random_image
from PIL import Image

import featx.extract
from featx import Extractor
from featx.cli import main
from featx.images import DECODER_VERSION, DecodeError, avif_supported, decode, heif_supported
from featx.sources import resolve_source

SIZE = (20, 24)  # (height, width): decode() leaves an image of this size unresized
# An iPhone photo's first bytes: an ISO-BMFF "ftyp" box of major brand heic.
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
SVG_TEXT = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'


def gray(seed: int = 0) -> np.ndarray:
    """A seeded 8-bit grayscale image of ``SIZE`` covering the whole 0-255 range."""
    arr = np.random.default_rng(seed).integers(0, 256, SIZE).astype(np.uint8)
    arr[0, 0], arr[0, 1] = 0, 255
    return arr


def encoded(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def float_tiff(values: np.ndarray) -> bytes:
    return encoded(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


@pytest.fixture
def no_pillow_heif(monkeypatch):
    """pillow-heif absent, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import` raises ImportError
    heif_supported.cache_clear()
    yield
    heif_supported.cache_clear()


@pytest.fixture
def fake_pillow_heif(monkeypatch):
    """A stand-in pillow_heif module that records each registration of its opener."""
    module = types.ModuleType("pillow_heif")
    module.registered = 0

    def register_heif_opener() -> None:
        module.registered += 1

    module.register_heif_opener = register_heif_opener
    monkeypatch.setitem(sys.modules, "pillow_heif", module)
    heif_supported.cache_clear()
    yield module
    heif_supported.cache_clear()


def class_folder(root: Path, *extra: str) -> list[Path]:
    """``root/cat`` with two JPEGs and the ``extra`` files; returns the JPEG paths."""
    folder = root / "cat"
    folder.mkdir(parents=True)
    jpegs = [folder / f"{i}.jpg" for i in range(2)]
    for i, path in enumerate(jpegs):
        random_image(i).save(path)
    for name in extra:
        if name.lower().endswith((".heic", ".heif")):
            (folder / name).write_bytes(HEIC_BYTES)
        else:
            (folder / name).write_text(SVG_TEXT if name.endswith(".svg") else "{}")
    return jpegs


# -- deep images: read by their range -------------------------------------------------------


def test_a_unit_float_tiff_decodes_like_its_8_bit_twin():
    # Decoder version 1 clipped it to 0-255: a near-black image of 0s and 1s.
    eight_bit = gray()
    pixels = decode(float_tiff(eight_bit / 255.0), SIZE)
    assert pixels.max() == 255
    assert np.abs(pixels[..., 0].astype(int) - eight_bit).max() <= 1
    assert (pixels == pixels[..., :1]).all()  # gray on all three channels


def test_a_float_tiff_in_0_255_is_used_as_is():
    eight_bit = gray(1)
    pixels = decode(float_tiff(eight_bit.astype(np.float32)), SIZE)
    assert np.array_equal(pixels[..., 0], eight_bit)


@pytest.mark.parametrize(
    ("values", "found"),
    [
        (gray() / 127.5 - 1.0, "from -1 to 1"),  # a [-1, 1] network input saved as is
        (gray() * 4.0, "from 0 to 1020"),
        (gray() - 300.0, "from -300 to -45"),
    ],
)
def test_a_float_tiff_out_of_range_is_refused_naming_the_range(values, found):
    with pytest.raises(DecodeError) as info:
        decode(float_tiff(values), SIZE, name="'scan.tif'")
    message = str(info.value)
    assert "'scan.tif'" in message
    assert f"32-bit float image with values {found}" in message
    assert "[0, 1] (scaled by 255) or [0, 255] (used as is)" in message
    assert "Convert it to 8-bit first" in message


def test_a_float_tiff_with_nan_is_refused_counting_the_bad_values():
    values = gray() / 255.0
    values[1, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(DecodeError, match="holding 3 NaN or infinite value"):
        decode(float_tiff(values), SIZE)


def test_a_16_bit_png_is_scaled_from_0_65535_to_0_255():
    eight_bit = gray(2)
    sixteen = Image.fromarray(eight_bit.astype(np.uint16) * 257)
    data = encoded(sixteen, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert np.array_equal(decode(data, SIZE)[..., 0], eight_bit)


def test_a_32_bit_integer_tiff_beyond_16_bits_is_refused_not_clipped():
    values = gray().astype(np.int32) * 1000  # up to 255,000
    data = encoded(Image.fromarray(values, "I"), "TIFF")
    with pytest.raises(DecodeError, match=r"integer image with values from 0 to 255000"):
        decode(data, SIZE)


def test_the_extractor_embeds_a_unit_float_tiff_like_its_png_and_lists_a_bad_one(tmp_path):
    eight_bit = gray(3)
    (tmp_path / "a.png").write_bytes(encoded(Image.fromarray(eight_bit, "L"), "PNG"))
    (tmp_path / "b.tif").write_bytes(float_tiff(eight_bit / 255.0))
    (tmp_path / "c.tif").write_bytes(float_tiff(eight_bit * 2.0))
    extractor = Extractor(CountingBackbone(), cache_dir=None, verbose=False, on_error="skip")
    emb = extractor.extract(tmp_path)
    assert [Path(p).name for p in emb.paths] == ["a.png", "b.tif"]
    np.testing.assert_allclose(emb.X[0], emb.X[1], atol=0.5)
    assert [(Path(name).name, reason) for name, reason in emb.failed] == [
        (
            "c.tif",
            "it is a 32-bit float image with values from 0 to 510; expected values in [0, 1] "
            "(scaled by 255) or [0, 255] (used as is). Convert it to 8-bit first, for example "
            "np.interp(x, (x.min(), x.max()), (0, 255)) saved as a uint8 PNG",
        )
    ]


def test_an_in_memory_unit_float_pil_image_embeds_like_its_8_bit_twin():
    eight_bit = gray(4)
    unit = Image.fromarray((eight_bit / 255.0).astype(np.float32), mode="F")
    images = [Image.fromarray(eight_bit, "L"), unit]
    emb = Extractor(CountingBackbone(), cache_dir=None, verbose=False).extract(images)
    np.testing.assert_allclose(emb.X[0], emb.X[1], atol=0.5)


def test_the_fingerprint_changes_with_the_decoder_version(monkeypatch):
    current = Extractor(CountingBackbone(), cache_dir=None, verbose=False)
    assert current.spec["images"]["decoder"] == DECODER_VERSION
    monkeypatch.setattr("featx._pipeline.DECODER_VERSION", DECODER_VERSION - 1)
    older = Extractor(CountingBackbone(), cache_dir=None, verbose=False)
    assert older.spec["images"]["decoder"] == DECODER_VERSION - 1
    assert older.fingerprint != current.fingerprint  # old vectors are simply not found


# -- image files a folder scan cannot read ---------------------------------------------------


def test_heic_and_svg_in_a_class_folder_are_counted_and_named_in_one_warning(
    tmp_path, no_pillow_heif
):
    jpegs = class_folder(tmp_path / "photos", "IMG_0001.HEIC", "logo.svg")
    with pytest.warns(UserWarning) as caught:
        images = resolve_source(tmp_path / "photos")
    assert images.inputs == [str(p) for p in jpegs]
    assert images.skipped == {".heic": 1, ".svg": 1}
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 image file(s)" in message and "1 .heic, 1 .svg" in message
    assert "pip install pillow-heif" in message
    assert "rasterise them to PNG first (for example with cairosvg)" in message
    assert caught[0].filename == __file__  # points at the caller's line


def test_non_image_and_hidden_files_are_ignored_without_a_warning(tmp_path, no_pillow_heif):
    extra = ("notes.txt", "labels.json", "Thumbs.db", ".DS_Store", "._IMG_0001.HEIC")
    jpegs = class_folder(tmp_path / "photos", *extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = resolve_source(tmp_path / "photos")
    assert images.inputs == [str(p) for p in jpegs]
    assert images.skipped == {}


def test_an_unlabelled_folder_counts_what_it_skips_too(tmp_path, no_pillow_heif):
    random_image(0).save(tmp_path / "a.png")
    for name in ("b.heic", "c.HEIF", "d.cr2", "e.nef"):
        (tmp_path / name).write_bytes(HEIC_BYTES)
    with pytest.warns(UserWarning, match=r"camera raw: develop them to JPEG") as caught:
        images = resolve_source(tmp_path)
    assert images.inputs == [str(tmp_path / "a.png")]
    assert images.skipped == {".cr2": 1, ".heic": 1, ".heif": 1, ".nef": 1}
    assert len(caught) == 1


def test_a_folder_of_only_heic_photos_says_why_it_holds_no_images(tmp_path, no_pillow_heif):
    folder = tmp_path / "iphone" / "beach"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"IMG_{i}.HEIC").write_bytes(HEIC_BYTES)
    with pytest.raises(ValueError, match=r"featx cannot read: 3 \.heic\. \.heic: pip install"):
        resolve_source(tmp_path / "iphone")


def test_heic_bytes_without_pillow_heif_are_refused_naming_pillow_heif(no_pillow_heif):
    with pytest.raises(DecodeError, match=r"HEIC/HEIF image.*pip install pillow-heif"):
        decode(HEIC_BYTES, SIZE, name="'IMG_0001.HEIC'")


def test_with_pillow_heif_installed_heic_files_are_read(tmp_path, fake_pillow_heif):
    jpegs = class_folder(tmp_path / "photos", "IMG_0001.HEIC", "logo.svg")
    with pytest.warns(UserWarning, match=r"1 image file\(s\).*1 \.svg") as caught:
        images = resolve_source(tmp_path / "photos")
    assert "pillow-heif" not in str(caught[0].message)
    assert images.inputs == [str(p) for p in jpegs] + [str(tmp_path / "photos/cat/IMG_0001.HEIC")]
    assert images.skipped == {".svg": 1}
    with pytest.warns(UserWarning, match="svg"):
        resolve_source(tmp_path / "photos")
    assert fake_pillow_heif.registered == 1  # registered once, however many scans and files
    with pytest.raises(DecodeError):  # the stand-in reads nothing, but was asked first
        decode(HEIC_BYTES, SIZE)
    assert fake_pillow_heif.registered == 1


@pytest.mark.skipif(not avif_supported(), reason="this Pillow has no AVIF support")
def test_where_pillow_reads_avif_folders_pick_avif_files_up(tmp_path):
    random_image(0).save(tmp_path / "a.avif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = resolve_source(tmp_path)
    assert (images.inputs, images.skipped) == ([str(tmp_path / "a.avif")], {})
    assert decode((tmp_path / "a.avif").read_bytes(), SIZE).shape == (*SIZE, 3)


def test_where_pillow_cannot_read_avif_avif_files_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("featx.sources.avif_supported", lambda: False)
    random_image(0).save(tmp_path / "a.png")
    (tmp_path / "b.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(64))
    with pytest.warns(UserWarning, match=r"1 \.avif\. \.avif: install a Pillow built with AVIF"):
        images = resolve_source(tmp_path)
    assert (images.inputs, images.skipped) == ([str(tmp_path / "a.png")], {".avif": 1})


def test_featx_extract_reports_the_skipped_files(tmp_path, monkeypatch, capsys, no_pillow_heif):
    class_folder(tmp_path / "photos", "IMG_0001.HEIC", "IMG_0002.heic", "logo.svg")
    real = featx.extract.Extractor

    def counting_extractor(*args, **kwargs):  # the CLI's extractor, without TensorFlow
        return real(CountingBackbone(), cache_dir=None, verbose=False)

    monkeypatch.setattr(featx.extract, "Extractor", counting_extractor)
    argv = ["extract", str(tmp_path / "photos"), "--weights", "none", "--quiet"]
    with pytest.warns(UserWarning, match="pillow-heif"):
        assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n_images"], summary["skipped"]) == (2, {".heic": 2, ".svg": 1})
    with pytest.warns(UserWarning, match="pillow-heif"):
        assert main(argv) == 0
    assert "skipped: 3 image file(s) in formats featx cannot read (2 .heic, 1 .svg)" in (
        capsys.readouterr().out
    )
