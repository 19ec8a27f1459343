"""Image decoding and resizing: from bytes, arrays or PIL images to fixed-size RGB arrays.

The policy, in the order it is applied:

1. **Size limit.** Images above ``MAX_PIXELS`` (default 100 megapixels, about
   300 MB of RGB pixels) are refused from their header alone, before any pixel
   is decoded, so a decompression bomb cannot exhaust memory.
2. **Formats.** Whatever Pillow opens; HEIC/HEIF photos (as iPhones save them) too
   when ``pillow-heif`` is installed (its opener is registered on the first HEIF
   file, see :func:`heif_supported`). Without it, a HEIC file is refused with an
   error that names ``pip install pillow-heif``.
3. **JPEG draft.** A JPEG much larger than the target is decoded at a reduced
   DCT scale (1/2, 1/4 or 1/8) that still leaves both sides at least as large
   as the target's larger side. This is libjpeg's own scaling: faster, and a
   good low-pass filter before the final resize.
4. **EXIF orientation** is applied, so a rotated phone photo embeds as upright.
5. **Animated images** (GIF, WebP, APNG) use their first frame.
6. **Colour and bit depth.** Grayscale and palette images become RGB; CMYK is
   converted by Pillow's JPEG/TIFF handling; images with transparency (RGBA, LA,
   palette with a transparent colour) are composited on ``background`` (default
   white, 255, 255, 255). Deeper images are read by their range, never clipped:

   - 16-bit images (``I;16``), and 32-bit integer images (``I``) with values above
     255, are scaled from 0-65535 to 0-255 (divide by 257); ``I`` images within
     0-255 are used as is; ``I`` images with values below 0 or above 65535 are refused;
   - 32-bit float images (``F``, such as float TIFFs) with all values in [0, 1]
     are scaled by 255; those within [0, 255] are used as is; any other range
     (negative values, values above 255, NaN or infinite values) is refused, with
     the range found, since any guess would change the picture. An image whose
     values all lie in [0, 1] is read as 0-1 even if it was meant as a very dark
     0-255 image.
7. **Resize** to the target (height, width) by one of two documented policies:

   - ``"stretch"`` (default): the whole image is resized to the target, changing
     the aspect ratio if needed (what ``keras.utils.load_img(target_size=...)``
     and ``image_dataset_from_directory`` do);
   - ``"center_crop"``: the shorter side is resized to the target, then the
     centre is cropped (keeps the aspect ratio, loses the borders).

Two decoders apply this policy (``decoder=``, one of :data:`DECODERS`):

- ``"pillow"`` (default): Pillow for every format, with its antialiased bilinear filter.
- ``"fast"``: JPEGs in RGB or grayscale are decoded by libjpeg-turbo through
  ``simplejpeg`` (at 1/2, 1/4 or 1/8 DCT scale by the same rule as step 3) and resized by
  OpenCV: area averaging plus a small low-pass that matches the width of Pillow's
  antialiased filter where the image shrinks, bilinear where it grows. Both release the
  GIL. The EXIF orientation is applied to the decoded array. Where nothing is resized its
  pixels are Pillow's; resized, MobileNetV2 vectors stay within a mean cosine of 0.997 of
  the Pillow path's (a plain bilinear resize, 2x cheaper still, gave 0.961: rejected).
  It costs about 15% less CPU per clothing10 photo than the Pillow path; a cold
  extraction on 2 CPU cores ran 1.01-1.09x as fast with it (``benchmarks/speed_table.py``
  measures both, ``--decoder-fidelity`` the vectors): too little to change every cached vector and
  published figure by default, worth it where decoding is the bottleneck (a GPU fed by a
  few cores). Every other input (PNG, CMYK JPEG, GIF, TIFF, ...), and any JPEG that
  libjpeg-turbo reports damaged, takes the Pillow path, so errors read the same.

``DECODER_VERSION`` changes whenever this policy changes in a way that changes
pixels; it is part of every cache fingerprint, so vectors decoded under an older
policy are not reused. Its history:

- 1: the first policy.
- 2: float images in [0, 1] are scaled by 255 (version 1 clipped every float image
  to 0-255, so a 0-1 float TIFF became a near-black image of 0s and 1s); float
  images outside [0, 255] and integer images outside 0-65535 are refused instead of
  clipped. 8-bit and 16-bit images decode exactly as in version 1.

The ``"fast"`` decoder's vectors carry its name in their fingerprint (``decoded_by``), so
the two decoders' vectors never mix, and the Pillow path's fingerprints are unchanged.
"""

from __future__ import annotations

import base64
import functools
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

__all__ = [
    "DECODERS",
    "DECODER_VERSION",
    "MAX_PIXELS",
    "RESIZE_POLICIES",
    "DecodeError",
    "avif_supported",
    "decode",
    "heif_supported",
    "thumbnail_uris",
    "to_rgb",
]

DECODER_VERSION = 2
#: The decoders :func:`decode` offers: Pillow alone (the default), or libjpeg-turbo +
#: OpenCV for JPEGs.
DECODERS = ("pillow", "fast")
MAX_PIXELS = 100_000_000
RESIZE_POLICIES = ("stretch", "center_crop")
WHITE = (255, 255, 255)


class DecodeError(ValueError):
    """An input that cannot be turned into an image, with the reason why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f'Cannot decode {name}: {reason}. Pass on_error="skip" to continue without it.'
        )


def decode(
    data: bytes,
    size: tuple[int, int],
    *,
    resize: str = "stretch",
    background: tuple[int, int, int] = WHITE,
    name: str = "image",
    max_pixels: int = MAX_PIXELS,
    decoder: str = "pillow",
) -> np.ndarray:
    """Decode encoded image bytes to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    ``decoder`` is one of :data:`DECODERS` (see the module's documentation).

    Raises
    ------
    DecodeError
        For empty, unrecognised, truncated, corrupt or oversized data.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> from featx.images import decode
    >>> buf = io.BytesIO(); Image.new("L", (40, 30), 128).save(buf, "PNG")
    >>> decode(buf.getvalue(), (16, 16)).shape
    (16, 16, 3)
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} is not supported. Expected one of {DECODERS}.")
    if not data:
        raise DecodeError(name, "the file is empty (0 bytes)")
    # No warnings.catch_warnings() here: it swaps the process-wide filter list, which is
    # not thread-safe, and decode() runs in worker threads. Pillow's own bomb check
    # (DecompressionBombError above 2 * PIL.Image.MAX_IMAGE_PIXELS) stays a backstop.
    if _iso_format(data) == "HEIF":
        heif_supported()  # registers pillow-heif's opener, where it is installed
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise DecodeError(name, _too_large(f"{width}x{height}", width * height, max_pixels))
        if img.format == "JPEG":
            # Pillow's draft: the smallest DCT scale that keeps both sides at least the
            # target's larger side; img.size becomes the scaled size, nothing is decoded.
            side = max(size)
            img.draft(img.mode, (side, side))
            if decoder == "fast" and img.mode in ("RGB", "L"):
                pixels = _decode_jpeg_fast(data, img, size, resize)
                if pixels is not None:
                    return pixels
        img.load()
        if img.format == "JPEG":
            # In place: same pixels without copying a whole decoded photo (the hot path).
            ImageOps.exif_transpose(img, in_place=True)
        else:
            # A copy: animated images must not re-read their frame over the transposed one.
            img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img, background, name=name)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(name, _unidentified(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Raised (or turned into an error by the caller's filters) from the header alone.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 0
        if pixels > max_pixels:
            raise DecodeError(name, _too_large("the image", pixels, max_pixels)) from None
        reason = f"above Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): {exc}"
        raise DecodeError(name, reason) from None
    except OSError as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"{reason} (the file has {len(data):,} bytes)"
        raise DecodeError(name, reason) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's plugins raise many types on malformed data (ValueError, SyntaxError,
        # EOFError, struct.error, NotImplementedError, RuntimeError, OverflowError, ...):
        # any of them means this input cannot be decoded, never that the run must stop.
        raise DecodeError(name, f"corrupt image data ({type(exc).__name__}: {exc})") from None
    return resize_rgb(rgb, size, resize)


# Pillow's exif_transpose, as array operations: orientation tag -> (H, W, C) -> (H', W', C).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _decode_jpeg_fast(
    data: bytes, img: Image.Image, size: tuple[int, int], policy: str
) -> np.ndarray | None:
    """A JPEG through libjpeg-turbo (simplejpeg) at the scale Pillow's draft chose for
    ``img``, and OpenCV, or None where the Pillow path must decide: the libraries missing,
    or data libjpeg-turbo reports damaged."""
    try:
        import cv2
        import simplejpeg
    except ImportError:  # pragma: no cover - both are dependencies of featx
        return None
    width, height = img.size  # after the draft: the scaled size, which libjpeg gives too
    try:
        # strict: a truncated or corrupt stream raises instead of decoding grey rows.
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height, min_width=width)
    except ValueError:
        return None
    orientation = img.getexif().get(0x0112, 1)
    if orientation in _ORIENTATIONS:
        rgb = _ORIENTATIONS[orientation](rgb)
    return _resize_array(cv2, rgb, size, policy)


def _resize_array(cv2: Any, rgb: np.ndarray, size: tuple[int, int], policy: str) -> np.ndarray:
    """OpenCV's resize of a uint8 (H, W, 3) array by one of ``RESIZE_POLICIES``."""
    height, width = size
    h, w = rgb.shape[:2]
    if policy == "center_crop":
        scale = max(width / w, height / h)
        crop_w = min(w, round(width / scale))
        crop_h = min(h, round(height / scale))
        left = (w - crop_w) // 2
        top = (h - crop_h) // 2
        rgb = rgb[top : top + crop_h, left : left + crop_w]
        h, w = crop_h, crop_w
    elif policy != "stretch":
        raise ValueError(f"resize={policy!r} is not supported. Expected one of {RESIZE_POLICIES}.")
    rgb = np.ascontiguousarray(rgb)
    if (h, w) == (height, width):
        return rgb
    shrink_y, shrink_x = h / height, w / width
    method = cv2.INTER_AREA if shrink_y >= 1 and shrink_x >= 1 else cv2.INTER_LINEAR
    out = cv2.resize(rgb, (width, height), interpolation=method)
    if shrink_y > 1 or shrink_x > 1:
        # Pillow's antialiased bilinear filter reduces by s with a triangle of variance
        # s^2/6 (input pixels); area averaging is a box of variance s^2/12. The missing
        # s^2/12 is 1/12 of an output pixel^2: a 3-tap [1, 22, 1]/24 filter along each
        # shrinking axis adds it. MobileNetV2 vectors of clothing10's test photos against
        # Pillow's: mean cosine 0.997 at 160 and 224 px, against 0.995 and 0.992 for area
        # averaging alone and 0.980 and 0.961 for a plain bilinear resize.
        out = cv2.sepFilter2D(
            out, -1, _LOW_PASS[shrink_x > 1], _LOW_PASS[shrink_y > 1],
            borderType=cv2.BORDER_REFLECT,
        )  # fmt: skip
    return out


# The 1-d kernels of _resize_array: one tap (the axis does not shrink), or variance 1/12.
_LOW_PASS = {
    False: np.ones(1, np.float32),
    True: np.array([1, 22, 1], np.float32) / 24,
}


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


# Major and compatible brands of the ISO base media file format (the "ftyp" box).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _iso_format(data: bytes) -> str | None:
    """``"HEIF"`` or ``"AVIF"`` for an ISO-BMFF image file, from its ``ftyp`` box; else None."""
    if data[4:8] != b"ftyp":
        return None
    end = min(max(int.from_bytes(data[:4], "big"), 16), 256)  # the box's size, bounded
    # The major brand, a 4-byte version, then the compatible brands.
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:  # AVIF files often also list mif1
        return "AVIF"
    return "HEIF" if brands & _HEIF_BRANDS else None


@functools.cache
def heif_supported() -> bool:
    """Whether HEIC/HEIF photos can be decoded: True once ``pillow-heif``'s opener is registered.

    The first call imports ``pillow_heif`` (an optional dependency, ``pip install
    pillow-heif``) and registers its Pillow opener; later calls return the answer kept.
    """
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


@functools.cache
def avif_supported() -> bool:
    """Whether this Pillow decodes AVIF images (recent Pillow wheels do)."""
    return bool(features.check("avif"))


def _unidentified(data: bytes) -> str:
    """Why Pillow could not identify ``data``: a known format with a broken header, or not."""
    iso = _iso_format(data)
    if iso == "HEIF" and not heif_supported():
        return (
            "a HEIC/HEIF image, which Pillow cannot read without a plugin; install it with "
            "pip install pillow-heif and featx reads HEIC/HEIF files"
        )
    if iso == "AVIF" and not avif_supported():
        return (
            "an AVIF image, and this Pillow was built without AVIF support; install a Pillow "
            "that has it (pip install -U pillow: recent wheels include it)"
        )
    fmt = next((f for sig, f in _SIGNATURES if data.startswith(sig)), None)
    if fmt is None and iso is not None:
        Image.init()
        fmt = iso if iso in Image.OPEN else None  # a registered plugin refused it
    if fmt is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WEBP"
    if fmt is None:
        return f"not a recognised image format ({len(data):,} bytes starting {data[:8]!r})"
    detail = ""
    try:  # Image.open() hides the plugin's own error; ask the plugin directly.
        Image.init()
        Image.OPEN[fmt][0](io.BytesIO(data))
    except Exception as exc:
        detail = f" ({type(exc).__name__}: {exc})" if str(exc) else f" ({type(exc).__name__})"
    return f"starts like a {fmt} file but its header is corrupt{detail}"


def _too_large(what: str, pixels: int, limit: int) -> str:
    return (
        f"{what} is {pixels:,} pixels, above featx's limit of {limit:,} pixels "
        f"({limit / 1e6:g} megapixels, featx.images.MAX_PIXELS); refused from the header, "
        "before decoding"
    )


def to_rgb(
    img: Image.Image, background: tuple[int, int, int] = WHITE, *, name: str = "image"
) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (first frame; transparency on ``background``).

    16-bit, 32-bit integer and 32-bit float images are read by their range (see the
    module's policy, step 6).

    Raises
    ------
    DecodeError
        For an integer image outside 0-65535, or a float image outside [0, 255] or
        holding NaN or infinite values; ``name`` names it in the message.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> from featx.images import to_rgb
    >>> unit = Image.fromarray(np.full((2, 2), 0.5, np.float32), mode="F")
    >>> to_rgb(unit).getpixel((0, 0))
    (128, 128, 128)
    """
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if low < 0 or high > 65535:
            raise DecodeError(
                name,
                f"it is a 32-bit integer image with values from {low:g} to {high:g}; expected "
                f"0-255 (used as is) or 0-65535 (16-bit, scaled to 0-255). {_TO_8_BIT}",
            )
        scale = 65535.0 if mode.startswith("I;16") or high > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = _float_to_8_bit(np.asarray(img, dtype=np.float64), name)
        return Image.fromarray(arr, "L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


_TO_8_BIT = (
    "Convert it to 8-bit first, for example np.interp(x, (x.min(), x.max()), (0, 255)) "
    "saved as a uint8 PNG"
)


def _float_to_8_bit(arr: np.ndarray, name: str) -> np.ndarray:
    """A 32-bit float image as uint8: [0, 1] scaled by 255, [0, 255] as is, else refused."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = arr.size - int(finite.sum())
        raise DecodeError(
            name,
            f"it is a 32-bit float image holding {bad:,} NaN or infinite value(s) of "
            f"{arr.size:,}; expected finite values in [0, 1] or [0, 255]. Replace them "
            f"(np.nan_to_num) and c{_TO_8_BIT[1:]}",
        )
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        # Float images are most often unit-scaled; clipping them (decoder version 1)
        # gave a near-black image of 0s and 1s.
        arr = arr * 255.0
    elif low < 0 or high > 255:
        raise DecodeError(
            name,
            f"it is a 32-bit float image with values from {low:g} to {high:g}; expected "
            f"values in [0, 1] (scaled by 255) or [0, 255] (used as is). {_TO_8_BIT}",
        )
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def resize_rgb(img: Image.Image, size: tuple[int, int], policy: str = "stretch") -> np.ndarray:
    """Resize an RGB image to ``size`` = (height, width) by ``policy``; return uint8 HWC."""
    return np.asarray(_resize(img, size, policy), dtype=np.uint8)


def _resize(img: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """Resize any Pillow image (RGB or a float "F" channel) by one of ``RESIZE_POLICIES``."""
    height, width = size
    if policy == "stretch":
        if img.size == (width, height):
            return img
        return img.resize((width, height), Image.Resampling.BILINEAR)
    if policy != "center_crop":
        raise ValueError(f"resize={policy!r} is not supported. Expected one of {RESIZE_POLICIES}.")
    w, h = img.size
    scale = max(width / w, height / h)
    left = (w * scale - width) / 2
    top = (h * scale - height) / 2
    # Resize and crop in one resampling pass: the box is in source coordinates. Where one
    # side fits exactly, rounding can put its edges a hair outside the image (150x110 to
    # 112x112: top = -7e-15), which Pillow refuses: clip them onto it.
    box = (
        max(0.0, left / scale),
        max(0.0, top / scale),
        min(float(w), (left + width) / scale),
        min(float(h), (top + height) / scale),
    )
    return img.resize((width, height), Image.Resampling.BILINEAR, box=box)


def array_to_rgb(
    image: np.ndarray, size: tuple[int, int], *, resize: str = "stretch", name: str = "array"
) -> np.ndarray:
    """Resize one ``(H, W, 3)`` (or ``(H, W)``) array, uint8 or float in 0-255, to ``size``.

    Float images stay float (no rounding to 8 bits) when they already have the target
    size; otherwise each channel is resized in floating point.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise DecodeError(name, f"an image array must be (H, W, 3); got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        raise DecodeError(name, "RGBA arrays are ambiguous; composite the alpha channel first")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DecodeError(name, "the array holds NaN or infinite values")
    if arr.dtype == np.uint8:
        return resize_rgb(Image.fromarray(arr, "RGB"), size, resize)
    if arr.dtype.kind not in "fiu":
        raise DecodeError(name, f"unsupported array dtype {arr.dtype}; expected uint8 or float")
    arr = arr.astype(np.float32)
    if arr.shape[:2] == tuple(size):
        return arr
    channels = [
        np.asarray(_resize(Image.fromarray(arr[:, :, c], "F"), size, resize)) for c in range(3)
    ]
    return np.stack(channels, axis=2).astype(np.float32)


def thumbnail_uris(items: Sequence[Any], size: int = 64) -> list[str]:
    """A ``size`` x ``size`` JPEG of each image (a path, pixels or PIL image), centre-cropped,
    as a ``data:`` URI; empty where there is no image (``None``) or it cannot be read."""
    shape = (int(size), int(size))
    out = []
    for item in items:
        try:
            if item is None:
                out.append("")
                continue
            if isinstance(item, str):
                with open(item, "rb") as f:
                    pixels = decode(f.read(), shape, resize="center_crop")
            elif isinstance(item, np.ndarray):
                pixels = array_to_rgb(item, shape, resize="center_crop")
            else:
                pixels = np.asarray(item.convert("RGB").resize(shape))
        except (OSError, DecodeError):
            out.append("")
            continue
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
        out.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out
