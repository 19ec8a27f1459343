"""Decoding: every image mode becomes an upright RGB array; every bad file a named DecodeError."""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CountingBackbone, random_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featx import Extractor
from featx.images import DecodeError, decode

SIZE = (16, 16)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose IHDR claims ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def extractor(tmp_path: Path, backbone: CountingBackbone | None = None, **kw) -> Extractor:
    return Extractor(
        backbone or CountingBackbone(), cache_dir=tmp_path / "cache", verbose=False, **kw
    )


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


# -- good inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_output_is_uint8_rgb_of_the_requested_height_and_width(mode):
    img = random_image(0, size=(40, 24))
    img = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257) if mode == "I;16" else img
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(encode(img.convert(mode), fmt), (12, 20))
    assert out.shape == (12, 20, 3)
    assert out.dtype == np.uint8


def test_grayscale_becomes_three_equal_channels():
    out = decode(encode(Image.new("L", (10, 6), 77), "PNG"), SIZE)
    assert (out == 77).all()


def palette_with_transparent_corner() -> bytes:
    """A 4x4 palette PNG: index 0 (transparent) in the top-left pixel, index 1 (red) elsewhere."""
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    return data


def test_transparent_palette_pixels_are_composited_on_white_by_default():
    out = decode(palette_with_transparent_corner(), (4, 4))
    assert tuple(out[0, 0]) == (255, 255, 255)  # not the palette's black
    assert tuple(out[3, 3]) == RED


def test_background_sets_the_colour_behind_transparent_pixels():
    out = decode(palette_with_transparent_corner(), (4, 4), background=(0, 128, 255))
    assert tuple(out[0, 0]) == (0, 128, 255)
    assert tuple(out[3, 3]) == RED


@pytest.mark.parametrize(
    ("mode", "opaque", "expected"),
    [("RGBA", (0, 0, 255, 255), BLUE), ("LA", (60, 255), (60, 60, 60))],
)
def test_alpha_images_are_composited_on_the_background(mode, opaque, expected):
    img = Image.new(mode, (2, 1), opaque)
    img.putpixel((0, 0), (*opaque[:-1], 0))  # fully transparent
    out = decode(encode(img, "PNG"), (1, 2))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == expected
    black = decode(encode(img, "PNG"), (1, 2), background=(0, 0, 0))
    assert tuple(black[0, 0]) == (0, 0, 0)


def test_cmyk_jpeg_decodes_to_its_rgb_colour():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode(data, SIZE).astype(int)
    assert np.abs(out - RED).max() <= 3


def test_16_bit_png_is_scaled_to_8_bits_by_dividing_by_257():
    levels = np.array([[0, 257 * 100, 257 * 200 + 128, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode(data, (1, 4))
    assert out[0, :, 0].tolist() == [0, 100, 200, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_animated_gif_uses_its_first_frame():
    frames = [solid(RED), solid(BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode(data, SIZE)
    assert (out == RED).all()


def test_one_pixel_image_fills_the_target():
    out = decode(encode(solid((10, 200, 30), (1, 1)), "PNG"), SIZE)
    assert out.shape == (*SIZE, 3)
    assert (out == (10, 200, 30)).all()


def upright_scene() -> Image.Image:
    """48 wide x 32 tall: red top half, green bottom-left, blue bottom-right (no symmetry)."""
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:16] = RED
    pixels[16:, :24] = GREEN
    pixels[16:, 24:] = BLUE
    return Image.fromarray(pixels)


def stored_sideways(orientation: int) -> Image.Image:
    """The pixels a camera stores for ``upright_scene`` with EXIF ``orientation`` (6 or 8)."""
    # Orientation 6 means "rotate 90 degrees clockwise to display", so the sensor stored
    # the scene turned 90 degrees counter-clockwise (and the reverse for 8).
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    return upright_scene().transpose(turn)


def with_orientation(img: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(img, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize(("fmt", "tolerance"), [("PNG", 0), ("JPEG", 4)])
def test_exif_rotated_image_decodes_upright(fmt, tolerance, orientation):
    params = {"quality": 95} if fmt == "JPEG" else {}
    upright = decode(encode(upright_scene(), fmt, **params), (32, 48)).astype(int)
    rotated = decode(with_orientation(stored_sideways(orientation), fmt, orientation), (32, 48))
    ignored = decode(encode(stored_sideways(orientation), fmt, **params), (32, 48))
    assert np.abs(rotated.astype(int) - upright).max() <= tolerance
    assert np.abs(ignored.astype(int) - upright).max() > 200  # the test can tell


class HalvesBackbone(CountingBackbone):
    """A counting backbone whose vector (mean colour of the top and left halves) sees rotation."""

    name = "halves"

    def identity(self) -> dict:
        return {**super().identity(), "architecture": "halves"}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        super().embed(batch)
        height, width = batch.shape[1:3]
        top = batch[:, : height // 2].mean(axis=(1, 2))
        left = batch[:, :, : width // 2].mean(axis=(1, 2))
        return np.concatenate([top, left], axis=1).astype(np.float32)


@pytest.mark.parametrize("orientation", [6, 8])
def test_extractor_embeds_an_exif_rotated_jpeg_as_its_upright_twin(tmp_path, orientation):
    upright = write(tmp_path / "upright.jpg", encode(upright_scene(), "JPEG", quality=95))
    rotated_bytes = with_orientation(stored_sideways(orientation), "JPEG", orientation)
    rotated = write(tmp_path / "rotated.jpg", rotated_bytes)
    sideways = write(tmp_path / "sideways.jpg", encode(stored_sideways(orientation), "JPEG"))
    X = extractor(tmp_path, HalvesBackbone()).extract([upright, rotated, sideways]).X
    np.testing.assert_allclose(X[1], X[0], atol=1.0)
    assert np.abs(X[2] - X[0]).max() > 50  # without the EXIF tag it really is sideways


def bordered_wide_image() -> bytes:
    """64 wide x 32 tall: green, with 8-pixel red borders on the left and right."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:] = GREEN
    pixels[:, :8] = RED
    pixels[:, -8:] = RED
    return encode(Image.fromarray(pixels), "PNG")


def test_center_crop_keeps_the_aspect_ratio_and_drops_the_borders():
    out = decode(bordered_wide_image(), SIZE, resize="center_crop")
    assert out.shape == (*SIZE, 3)
    assert out[..., 0].max() == 0  # no red at all
    assert (out[..., 1] == 255).all()


@pytest.mark.parametrize("source", [(150, 110), (110, 150), (300, 220), (97, 131)])
def test_center_crop_where_one_side_fits_exactly_up_to_rounding(source):
    # 150x110 to 112x112 scales by 112/110, and 110 * (112/110) is 111.99999999999999:
    # the crop box's top came out at -7e-15, which Pillow refused ("box offset can't be
    # negative"), as it did for one intel6 photo.
    image = encode(Image.new("RGB", source, GREEN), "JPEG", quality=95)
    for size in [(112, 112), (100, 100), (64, 48)]:
        out = decode(image, size, resize="center_crop")
        assert out.shape == (*size, 3)
        assert abs(int(out[..., 1].mean()) - 255) <= 2


def test_stretch_squeezes_the_whole_image_borders_included():
    out = decode(bordered_wide_image(), SIZE, resize="stretch")
    assert out.shape == (*SIZE, 3)
    assert (out[:, 0, 0] > 200).all()
    assert (out[:, -1, 0] > 200).all()
    assert (out[:, 8, 1] == 255).all()


def test_unknown_resize_policy_is_refused():
    with pytest.raises(ValueError, match="resize='squash' is not supported"):
        decode(bordered_wide_image(), SIZE, resize="squash")


def test_content_decides_the_format_not_the_extension(tmp_path):
    jpeg_bytes = encode(random_image(3), "JPEG")
    misnamed = write(tmp_path / "actually_a_jpeg.png", jpeg_bytes)
    emb = extractor(tmp_path).extract([misnamed])
    assert emb.failed == []
    assert emb.paths == [str(misnamed)]
    expected = decode(jpeg_bytes, SIZE).astype(np.float32).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(emb.X[0, :3], expected, rtol=1e-5)


def test_decoding_in_threads_leaves_the_warning_filters_alone():
    # warnings.catch_warnings() in decode() would race between worker threads and leave
    # DecompressionBombWarning turned into an error for the rest of the user's process.
    before = list(warnings.filters)
    data = encode(random_image(6, size=(8, 8)), "PNG")
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda _: decode(data, SIZE), range(3000)))
    assert len(outputs) == 3000
    assert warnings.filters == before


# -- bad inputs --------------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    return encode(random_image(7, size=(64, 48)), "JPEG", quality=90)


def png_bytes() -> bytes:
    return encode(random_image(8, size=(32, 24)), "PNG")


def flip_in_chunk(data: bytes, kind: bytes, offset: int = 2) -> bytes:
    """Flip one byte inside the body of the first ``kind`` chunk, so its CRC no longer matches."""
    at = data.index(kind) + 4 + offset
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


TRUNCATED = r"(?i)truncated.*\(the file has [\d,]+ bytes\)"
BAD_FILES = {
    "empty.jpg": (lambda: b"", r"the file is empty \(0 bytes\)"),
    "notes.jpg": (
        lambda: b"Shopping list: eggs, milk, bread.\n",
        r"not a recognised image format \(34 bytes starting b'Shopping'\)",
    ),
    "random.png": (
        lambda: np.random.default_rng(0).bytes(2000),
        r"not a recognised image format \(2,000 bytes",
    ),
    # Every cut point fails: featx leaves ImageFile.LOAD_TRUNCATED_IMAGES off.
    "cut_at_10_percent.jpg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) // 10], TRUNCATED),
    "cut_at_50_percent.jpg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], TRUNCATED),
    "cut_at_90_percent.jpg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) * 9 // 10], TRUNCATED),
    "cut_after_header.jpg": (lambda: jpeg_bytes()[:3], "starts like a JPEG file but its header"),
    "cut_at_50_percent.png": (lambda: png_bytes()[: len(png_bytes()) // 2], TRUNCATED),
    "bad_ihdr_crc.png": (
        lambda: flip_in_chunk(png_bytes(), b"IHDR"),
        r"starts like a PNG file but its header is corrupt.*checksum",
    ),
    "bad_idat.png": (lambda: flip_in_chunk(png_bytes(), b"IDAT", 40), "broken data stream"),
    "bomb.png": (
        lambda: png_header_only(20000, 20000),
        "400,000,000 pixels, above featx's limit of 100,000,000 pixels",
    ),
    "just_over_the_limit.png": (
        lambda: png_header_only(11000, 10000),
        "11000x10000 is 110,000,000 pixels, above featx's limit of 100,000,000 pixels",
    ),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("filename", BAD_FILES)
def test_bad_file_raises_decode_error_naming_the_file_and_the_reason(tmp_path, filename):
    make, reason = BAD_FILES[filename]
    path = write(tmp_path / filename, make())
    with pytest.raises(DecodeError, match=reason) as info:
        extractor(tmp_path).extract([path])
    assert repr(str(path)) in str(info.value)
    assert 'Pass on_error="skip"' in str(info.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("pixels", [(20000, 20000), (11000, 10000)])
def test_oversized_header_is_refused_quickly_without_decoding(pixels, monkeypatch):
    # "Quickly" as work done, not as a wall-clock time: the header is read, no pixel is
    # decoded (ImageFile.load never runs) and no image buffer is allocated.
    from PIL import ImageFile

    loads: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(image):
        loads.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(DecodeError, match=r"pixels.*refused from the header"):
        decode(png_header_only(*pixels), SIZE, name="'bomb.png'")
    assert loads == []
    assert len(png_header_only(*pixels)) < 100  # only a header was there to read


def test_max_pixels_sets_the_size_limit():
    small = encode(random_image(1, size=(100, 80)), "PNG")
    assert decode(small, SIZE).shape == (*SIZE, 3)
    limit = "100x80 is 8,000 pixels, above featx's limit of 5,000 pixels"
    with pytest.raises(DecodeError, match=limit):
        decode(small, SIZE, max_pixels=5000)


def test_decode_error_keeps_the_name_and_reason_apart():
    with pytest.raises(DecodeError) as info:
        decode(b"", SIZE, name="'x.jpg'")
    assert info.value.name == "'x.jpg'"
    assert info.value.reason == "the file is empty (0 bytes)"
    assert isinstance(info.value, ValueError)


def dds_with_unknown_pixel_format() -> bytes:
    data = bytearray(encode(random_image(2, size=(8, 8)), "DDS"))
    data[80:84] = b"\x00\x00\x00\x00"  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)


def test_plugin_errors_of_any_type_become_decode_errors():
    # Pillow's DDS plugin raises NotImplementedError here; others raise RuntimeError,
    # OverflowError or AttributeError on malformed data. None of them may stop a run.
    with pytest.raises(DecodeError, match=r"corrupt image data \(NotImplementedError"):
        decode(dds_with_unknown_pixel_format(), SIZE, name="'texture.dds'")


# -- the Extractor on a folder mixing good and bad files ---------------------------------------


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Three good images and four bad ones, interleaved in sorted order."""
    root = tmp_path / "mixed"
    root.mkdir()
    random_image(1).save(root / "a_good.jpg")
    write(root / "b_empty.jpg", b"")
    random_image(2).save(root / "c_good.png")
    write(root / "d_text.jpg", b"not an image")
    random_image(3).save(root / "e_good.jpg")
    write(root / "f_truncated.jpg", jpeg_bytes()[:1000])
    write(root / "g_bomb.png", png_header_only(20000, 20000))
    return root


def test_on_error_raise_stops_at_the_first_bad_file(tmp_path, mixed_folder):
    with pytest.raises(DecodeError, match='Pass on_error="skip"') as info:
        extractor(tmp_path).extract(mixed_folder, on_error="raise")
    assert repr(str(mixed_folder / "b_empty.jpg")) in str(info.value)
    assert "empty (0 bytes)" in str(info.value)


def test_on_error_skip_keeps_the_good_images_and_lists_the_bad(tmp_path, mixed_folder):
    backbone = CountingBackbone()
    ex = extractor(tmp_path, backbone, on_error="skip")
    emb = ex.extract(mixed_folder)
    assert emb.paths == [str(mixed_folder / n) for n in ("a_good.jpg", "c_good.png", "e_good.jpg")]
    assert emb.X.shape == (3, 6)
    assert emb.index.tolist() == [0, 2, 4]
    failed = dict(emb.failed)
    bad = ("b_empty.jpg", "d_text.jpg", "f_truncated.jpg", "g_bomb.png")
    assert list(failed) == [str(mixed_folder / name) for name in bad]
    assert "empty" in failed[str(mixed_folder / "b_empty.jpg")]
    assert "not a recognised image format" in failed[str(mixed_folder / "d_text.jpg")]
    assert "truncated" in failed[str(mixed_folder / "f_truncated.jpg")]
    assert "pixels, above" in failed[str(mixed_folder / "g_bomb.png")]
    assert ex.cache.info()["n_vectors"] == 3
    assert len(backbone.seen) == 3
    assert emb.cache_misses == 3  # what the network computed; failures are not misses

    again = ex.extract(mixed_folder)
    assert len(backbone.seen) == 3  # nothing recomputed, and no bad file was cached
    assert (again.cache_hits, again.cache_misses) == (3, 0)
    assert again.failed == emb.failed
    np.testing.assert_array_equal(again.X, emb.X)


@pytest.mark.parametrize("bad", ["a_folder", "missing.jpg"])
def test_a_path_that_cannot_be_read_fails_by_name(tmp_path, bad):
    good = tmp_path / "good.jpg"
    random_image(4).save(good)
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(DecodeError, match="cannot be read") as info:
        extractor(tmp_path).extract([good, tmp_path / bad])
    assert repr(str(tmp_path / bad)) in str(info.value)


def test_paths_that_cannot_be_read_are_listed_under_skip(tmp_path):
    good = tmp_path / "good.jpg"
    random_image(4).save(good)
    (tmp_path / "a_folder").mkdir()
    bad = [str(tmp_path / "a_folder"), str(tmp_path / "missing.jpg")]
    emb = extractor(tmp_path).extract([good, *bad], on_error="skip")
    assert emb.paths == [str(good)]
    assert [name for name, _ in emb.failed] == bad
    assert "cannot be read (Is a directory)" in emb.failed[0][1]
    assert "cannot be read (No such file or directory)" in emb.failed[1][1]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod 000 files"
)
def test_file_without_read_permission_fails_by_name(tmp_path):
    locked = tmp_path / "locked.jpg"
    random_image(5).save(locked)
    locked.chmod(0)
    try:
        with pytest.raises(DecodeError, match="cannot be read"):
            extractor(tmp_path).extract([locked])
    finally:
        locked.chmod(0o644)


# -- fuzz --------------------------------------------------------------------------------------

VALID = [
    encode(random_image(9, size=(24, 16)), "JPEG"),
    encode(random_image(9, size=(24, 16)), "PNG"),
    encode(random_image(9, size=(24, 16)).convert("P"), "GIF"),
    encode(random_image(9, size=(8, 8)), "DDS"),
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid JPEG, PNG, GIF or DDS file with a few bytes flipped, cut off or inserted."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.filterwarnings("ignore")  # corrupt files make Pillow warn; only errors matter here
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.one_of(st.binary(max_size=512), mutated_images()))
def test_decode_returns_an_image_or_raises_decode_error_never_anything_else(data):
    started = time.monotonic()
    try:
        out = decode(data, SIZE, name="'fuzz'")
    except DecodeError as exc:
        assert exc.reason
        return
    finally:
        # A hang bound, not a speed target: inputs of at most a few kB decode in
        # milliseconds; 10 s leaves room for a loaded machine.
        assert time.monotonic() - started < 10.0
    assert out.shape == (*SIZE, 3)
    assert out.dtype == np.uint8
