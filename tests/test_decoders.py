"""The two decoders: Pillow (the default) and libjpeg-turbo + OpenCV for JPEGs ("fast").

The fast path must give Pillow's pixels wherever no resize happens, near them where one
does, take Pillow's path for everything else, and fail exactly as Pillow's path does.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import simplejpeg
from conftest import CountingBackbone, random_image
from PIL import Image, ImageOps

from featx import Extractor
from featx.cli import main
from featx.images import DECODERS, DecodeError, decode

ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def smooth(width: int, height: int) -> Image.Image:
    """A photo-like image: smooth colour waves, no symmetry."""
    y, x = np.mgrid[0:height, 0:width]
    waves = [128 + 100 * np.sin(x / 17 + c) + 20 * np.cos(y / 11 * c + 1) for c in (1, 2, 3)]
    return Image.fromarray(np.clip(np.stack(waves, -1), 0, 255).astype(np.uint8))


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every call of simplejpeg.decode_jpeg: its keyword arguments and output shape."""
    seen: list[dict] = []
    real = simplejpeg.decode_jpeg

    def spy(data, **kw):
        out = real(data, **kw)
        seen.append({**kw, "shape": out.shape})
        return out

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    return seen


JPEG_KINDS = {
    "baseline 4:2:0": ("RGB", {"quality": 90}),
    "4:4:4": ("RGB", {"quality": 90, "subsampling": 0}),
    "progressive": ("RGB", {"quality": 90, "progressive": True}),
    "grayscale": ("L", {"quality": 90}),
}


@pytest.mark.parametrize("kind", JPEG_KINDS)
def test_fast_gives_pillows_pixels_when_nothing_is_resized(kind, calls):
    mode, params = JPEG_KINDS[kind]
    data = encode(smooth(400, 300).convert(mode), **params)
    fast = decode(data, (300, 400), decoder="fast")
    assert len(calls) == 1  # the fast path decoded it
    np.testing.assert_array_equal(fast, decode(data, (300, 400), decoder="pillow"))


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("size", [(224, 224), (160, 160), (64, 48)])
@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
def test_fast_resizes_close_to_pillow(kind, size, resize):
    mode, params = JPEG_KINDS[kind]
    data = encode(smooth(400, 300).convert(mode), **params)
    fast = decode(data, size, resize=resize, decoder="fast").astype(int)
    pillow = decode(data, size, resize=resize, decoder="pillow").astype(int)
    assert fast.shape == pillow.shape == (*size, 3)
    # Measured 0.25-0.93 mean, 2-5 max: the filters differ, the picture does not.
    assert np.abs(fast - pillow).mean() < 1.5
    assert np.abs(fast - pillow).max() <= 12


def test_center_crop_drops_the_same_borders_in_both_decoders():
    pixels = np.full((100, 200, 3), 200, np.uint8)
    pixels[:, :50] = (255, 0, 0)  # a red border left and right, outside the central square
    pixels[:, 150:] = (255, 0, 0)
    data = encode(Image.fromarray(pixels), quality=95)
    for decoder in DECODERS:
        out = decode(data, (32, 32), resize="center_crop", decoder=decoder).astype(int)
        # Pillow's filter reaches a little past the crop box: the edge columns see the red.
        assert np.abs(out[:, 1:-1] - 200).max() <= 6, decoder
        stretched = decode(data, (32, 32), decoder=decoder).astype(int)
        assert stretched[:, 0, 1].max() < 40  # the test can tell: stretch keeps the border


def scene() -> Image.Image:
    """60 wide x 40 tall: four coloured quadrants and a gradient, no symmetry."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:20, :30] = (230, 30, 30)
    pixels[:20, 30:] = (30, 230, 30)
    pixels[20:, :30] = (30, 30, 230)
    pixels[20:, 30:] = np.linspace(0, 255, 30)[None, :, None].astype(np.uint8)
    return Image.fromarray(pixels)


# What a camera stores for each orientation: the displayed scene under the inverse map.
STORED = {
    1: [],
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_90],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_270],
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_decodes_upright_as_pillow_does(orientation, calls):
    stored = scene()
    for step in STORED[orientation]:
        stored = stored.transpose(step)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encode(stored, quality=95, subsampling=0, exif=exif)
    fast = decode(data, (40, 60), decoder="fast")
    assert calls and calls[-1]["shape"] == (stored.height, stored.width, 3)
    # Pillow's own exif_transpose is the reference: identical pixels, no resize involved.
    np.testing.assert_array_equal(fast, decode(data, (40, 60), decoder="pillow"))
    upright = np.asarray(scene(), dtype=int)
    assert np.abs(fast.astype(int) - upright).mean() < 3
    if orientation != 1:  # the test can tell: ignoring the tag leaves the scene turned
        plain = decode(encode(stored, quality=95, subsampling=0), (40, 60), decoder="fast")
        plain = plain.astype(int)
        assert np.abs(plain - upright).mean() > 30


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale_as_pillows_draft(calls):
    data = encode(smooth(2000, 1600), quality=90)
    fast = decode(data, (224, 224), decoder="fast").astype(int)
    # Pillow's draft rule: min(2000 // 224, 1600 // 224) = 7 -> scale 1/4 -> 500 x 400.
    assert calls[-1]["shape"] == (400, 500, 3)
    decode(data, (100, 100), decoder="fast")
    assert calls[-1]["shape"] == (200, 250, 3)  # 1/8
    pillow = decode(data, (224, 224), decoder="pillow").astype(int)
    assert np.abs(fast - pillow).mean() < 2.5  # measured 1.2


def test_other_formats_and_cmyk_jpegs_take_pillows_path_unchanged(calls):
    img = random_image(3, size=(50, 40))
    inputs = [encode(img, "PNG"), encode(img.convert("CMYK"), quality=90), encode(img, "GIF")]
    for data in inputs:
        np.testing.assert_array_equal(
            decode(data, (24, 24), decoder="fast"), decode(data, (24, 24), decoder="pillow")
        )
    assert calls == []


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_a_damaged_jpeg_fails_with_the_same_error_in_both_decoders(cut):
    data = encode(random_image(7, size=(64, 48)), quality=90)
    data = data[: int(len(data) * cut)]
    messages = []
    for decoder in DECODERS:
        with pytest.raises(DecodeError, match=r"(?i)truncated") as info:
            decode(data, (16, 16), name="'x.jpg'", decoder=decoder)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_a_corrupt_jpeg_body_fails_as_pillow_fails():
    data = bytearray(encode(smooth(64, 64), quality=90))
    start = data.index(b"\xff\xda") + 20  # inside the entropy-coded scan
    data[start : start + 200] = bytes(200)
    results = []
    for decoder in DECODERS:
        try:
            results.append(decode(bytes(data), (16, 16), decoder=decoder))
        except DecodeError as exc:
            results.append(str(exc))
    # Either both decode (libjpeg accepts the zeros as data) or both raise the same error.
    if isinstance(results[0], str) or isinstance(results[1], str):
        assert results[0] == results[1]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height``."""
    data = bytearray(encode(smooth(16, 16), quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_oversized_jpeg_header_is_refused_before_libjpeg_turbo_runs(calls):
    with pytest.raises(DecodeError, match=r"400,000,000 pixels.*refused from the header"):
        decode(jpeg_claiming(20000, 20000), (16, 16), decoder="fast")
    assert calls == []


def test_an_unknown_decoder_is_refused_with_the_choices(tmp_path):
    data = encode(smooth(16, 16))
    with pytest.raises(ValueError, match=r"decoder='turbo'.*\('pillow', 'fast'\)"):
        decode(data, (8, 8), decoder="turbo")
    with pytest.raises(ValueError, match=r"decoder='turbo'.*'pillow'.*'fast'"):
        Extractor(CountingBackbone(), cache_dir=None, decoder="turbo")


def test_the_decoder_is_part_of_the_fingerprint_and_vectors_do_not_mix(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(smooth(300, 200), quality=90))
    backbone = CountingBackbone()
    runs = {
        decoder: Extractor(backbone, cache_dir=tmp_path / "cache", decoder=decoder, verbose=False)
        for decoder in DECODERS
    }
    assert runs["fast"].fingerprint != runs["pillow"].fingerprint
    assert runs["fast"].spec["images"]["decoded_by"] == "fast"
    # The default's spec is as it was before the fast decoder: old caches stay valid.
    assert runs["pillow"].spec["images"] == {"resize": "stretch", "background": [255] * 3,
                                             "decoder": 2}  # fmt: skip
    assert Extractor(backbone, cache_dir=None).fingerprint == runs["pillow"].fingerprint
    for extractor in runs.values():
        extractor.extract([path])
    assert len(backbone.seen) == 2  # the second decoder did not reuse the first's vectors
    for extractor in runs.values():
        extractor.extract([path])
    assert len(backbone.seen) == 2  # each found its own


def test_extract_command_takes_the_decoder(tmp_path, capsys):
    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    (folder / "one.jpg").write_bytes(encode(smooth(120, 90), quality=90))
    args = ["extract", str(tmp_path / "photos"), "--backbone", "VGG16", "--weights", "none"]
    args += ["--size", "32", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--json"]
    prints = []
    for decoder in DECODERS:
        assert main([*args, "--decoder", decoder]) == 0
        prints.append(json.loads(capsys.readouterr().out))
    assert prints[0]["fingerprint"] != prints[1]["fingerprint"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--decoder", "turbo"])
    assert exit_.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


def test_fast_decoding_matches_pillows_exif_transpose_on_a_real_photo_layout():
    # A portrait photo stored landscape with orientation 6, larger than the target: the
    # draft scale is chosen on the stored (unrotated) sides, as Pillow does.
    stored = smooth(900, 600)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encode(stored, quality=90, exif=exif)
    fast = decode(data, (300, 200), decoder="fast").astype(int)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), dtype=int)
    assert reference.shape == (900, 600, 3)
    pillow = decode(data, (300, 200), decoder="pillow").astype(int)
    assert fast.shape == pillow.shape == (300, 200, 3)
    assert np.abs(fast - pillow).mean() < 1.5
