"""Views of an image: test-time views (mirror, crops) and seeded train-time augmentation.

A :class:`View` maps one resized image (``(height, width, 3)``, values in 0-255) to
another of the same shape, deterministically: its output depends only on the pixels,
the view's parameters and the image's content key. Each view has an ``identity()``
that the extractor adds to its fingerprint, so every view is cached apart and an
interrupted run, resumed, computes exactly the vectors an uninterrupted one would.

Test-time augmentation (``tta=``) embeds a few fixed views of every image and
averages (or concatenates) their embeddings:

``"flip"``
    the image and its horizontal mirror;
``"crop"``
    the image and a centre crop of 87.5% of each side, resized back (a zoom);
``"flip+crop"``
    all four combinations.

Train-time augmentation (``augment=``) embeds ``copies`` randomly transformed copies
of every training image, as Keras' ``ImageDataGenerator`` would make them: horizontal
flips, small rotations, zoom, shifts, and brightness, contrast and saturation jitter.
The random draw of copy ``i`` of an image is seeded by the policy's ``seed``, ``i`` and
the image's content hash, so it is the same in every run and on every machine, and
independent of batch order. The geometry is one affine map per copy, applied by
:func:`scipy.ndimage.affine_transform` (bilinear, borders reflected, as Keras'
``RandomRotation`` and ``RandomZoom`` default to); Keras' own random layers draw from a
stream that depends on call order, which would make a copy depend on its batch.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "TTA_COMBINE",
    "AugmentPolicy",
    "AugmentedCopy",
    "Compose",
    "Crop",
    "Flip",
    "View",
    "resolve_augment",
    "resolve_tta",
]

TTA_COMBINE = ("mean", "concat")
# Bumped whenever a view's pixels change for the same parameters: part of every identity.
VIEWS_VERSION = 1
_TTA_NAMES = ("flip", "crop")
CENTER_CROP = 0.875


class View:
    """A deterministic image transformation applied before the network.

    Subclasses implement :meth:`identity` (JSON-ready, covering every parameter that
    changes the output) and :meth:`apply`.
    """

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, pixels: np.ndarray, key: str) -> np.ndarray:
        """Transform one ``(height, width, 3)`` image; ``key`` is its content hash."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.identity(), sort_keys=True)})"


class Flip(View):
    """The horizontal mirror.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.augment import Flip
    >>> Flip().apply(np.arange(6).reshape(1, 2, 3), "key")[0, 0].tolist()
    [3, 4, 5]
    """

    def identity(self) -> dict[str, Any]:
        return {"view": "flip", "version": VIEWS_VERSION}

    def apply(self, pixels: np.ndarray, key: str) -> np.ndarray:
        return np.ascontiguousarray(pixels[:, ::-1])


class Crop(View):
    """The centre ``scale`` x ``scale`` part of the image, resized back to full size.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.augment import Crop
    >>> Crop(0.5).apply(np.zeros((8, 8, 3), np.uint8), "key").shape
    (8, 8, 3)
    """

    def __init__(self, scale: float = CENTER_CROP) -> None:
        if not 0.0 < float(scale) <= 1.0:
            raise ValueError(f"Crop(scale={scale!r}): expected a fraction of each side in (0, 1].")
        self.scale = float(scale)

    def identity(self) -> dict[str, Any]:
        return {"view": "crop", "scale": self.scale, "version": VIEWS_VERSION}

    def apply(self, pixels: np.ndarray, key: str) -> np.ndarray:
        return _affine(pixels, zoom=1.0 / self.scale)


class Compose(View):
    """Several views, applied in order (e.g. an augmented copy, then its mirror)."""

    def __init__(self, views: Sequence[View]) -> None:
        self.views = list(views)

    def identity(self) -> dict[str, Any]:
        return {"view": "compose", "views": [v.identity() for v in self.views]}

    def apply(self, pixels: np.ndarray, key: str) -> np.ndarray:
        for view in self.views:
            pixels = view.apply(pixels, key)
        return pixels


@dataclass(frozen=True)
class AugmentPolicy:
    """A seeded train-time augmentation policy: ``copies`` random copies of every image.

    Parameters
    ----------
    copies : int, default 2
        Augmented copies embedded per training image (the original is always kept).
    flip : bool, default True
        Mirror each copy horizontally with probability 1/2.
    rotation : float, default 10
        Largest rotation, in degrees (uniform in ``[-rotation, rotation]``).
    zoom : float, default 0.1
        Largest relative zoom in or out (scale uniform in ``[1 - zoom, 1 + zoom]``).
    shift : float, default 0.1
        Largest shift, as a fraction of each side.
    brightness, contrast, saturation : float, default 0.1
        Largest relative colour changes (factors uniform in ``[1 - v, 1 + v]``).
    seed : int, default 0
        With the copy index and the image's content hash, seeds every draw.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.augment import AugmentPolicy
    >>> policy = AugmentPolicy(copies=2, seed=0)
    >>> image = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    >>> first, second = (view.apply(image, "content-hash") for view in policy.views())
    >>> first.shape, bool(np.array_equal(first, second))
    ((32, 32, 3), False)
    >>> bool(np.array_equal(first, policy.views()[0].apply(image, "content-hash")))
    True
    """

    copies: int = 2
    flip: bool = True
    rotation: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.copies, bool) or not isinstance(self.copies, (int, np.integer)):
            raise ValueError(f"copies={self.copies!r}: expected an int >= 1.")
        if self.copies < 1:
            raise ValueError(f"copies={self.copies!r}: expected at least 1 (or augment=None).")
        for name in ("rotation", "zoom", "shift", "brightness", "contrast", "saturation"):
            value = getattr(self, name)
            limit = 180.0 if name == "rotation" else 0.9
            if not 0.0 <= float(value) <= limit:
                raise ValueError(f"{name}={value!r}: expected a number in [0, {limit}].")

    def identity(self) -> dict[str, Any]:
        """Everything that changes a copy's pixels (``copies`` does not: copy i is copy i)."""
        fields = asdict(self)
        fields.pop("copies")
        return {"policy": "featx", "version": VIEWS_VERSION, **fields}

    def views(self) -> list[AugmentedCopy]:
        """One view per copy index, ``0 .. copies - 1``."""
        return [AugmentedCopy(self, i) for i in range(self.copies)]


class AugmentedCopy(View):
    """Copy number ``index`` of an :class:`AugmentPolicy`: one random draw per image."""

    def __init__(self, policy: AugmentPolicy, index: int) -> None:
        self.policy = policy
        self.index = int(index)

    def identity(self) -> dict[str, Any]:
        return {"view": "augment", "copy": self.index, **self.policy.identity()}

    def apply(self, pixels: np.ndarray, key: str) -> np.ndarray:
        p = self.policy
        seed = hashlib.blake2b(f"{p.seed}:{self.index}:{key}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(seed, "little"))
        u = rng.uniform(-1.0, 1.0, size=8)  # always 8 draws, so the parameters never shift
        mirror = p.flip and u[0] > 0
        out = _affine(
            pixels,
            zoom=1.0 + p.zoom * u[1],
            angle=p.rotation * u[2],
            shift=(p.shift * u[3], p.shift * u[4]),
            mirror=bool(mirror),
        )
        return _jitter(
            out, 1.0 + p.brightness * u[5], 1.0 + p.contrast * u[6], 1.0 + p.saturation * u[7]
        )


def _affine(
    pixels: np.ndarray,
    *,
    zoom: float = 1.0,
    angle: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    mirror: bool = False,
) -> np.ndarray:
    """Zoom (>1 magnifies), rotate (degrees), shift (fractions of each side), mirror about
    the centre; bilinear, borders reflected. Returns float32 in 0-255."""
    from scipy.ndimage import affine_transform

    image = np.asarray(pixels, dtype=np.float32)
    height, width = image.shape[:2]
    theta = math.radians(angle)
    # The map from output to input coordinates (row, col): inverse rotation and zoom.
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    matrix = np.array([[cos, -sin], [sin, cos]])
    if mirror:
        matrix = matrix @ np.array([[1.0, 0.0], [0.0, -1.0]])
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    moved = centre - np.array([shift[0] * height, shift[1] * width])
    offset = centre - matrix @ moved
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        affine_transform(
            image[:, :, c], matrix, offset=offset, output=out[:, :, c], order=1, mode="reflect"
        )
    return np.clip(out, 0.0, 255.0)


def _jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float):
    grey = image.mean(axis=2, keepdims=True)
    image = grey + saturation * (image - grey)
    image = image.mean() + contrast * (image - image.mean())
    return np.clip(brightness * image, 0.0, 255.0).astype(np.float32)


def resolve_tta(tta: str | Sequence[View | str | None] | None) -> list[View | None]:
    """The views of a ``tta=`` setting; ``None`` stands for the unchanged image.

    Examples
    --------
    >>> from featx.augment import resolve_tta
    >>> resolve_tta(None)
    [None]
    >>> [None if v is None else v.identity()["view"] for v in resolve_tta("flip+crop")]
    [None, 'flip', 'crop', 'compose']
    """
    if tta is None or (isinstance(tta, str) and tta.lower() in ("", "none")):
        return [None]
    if isinstance(tta, str):
        names = [name.strip().lower() for name in tta.split("+")]
        unknown = [n for n in names if n not in _TTA_NAMES]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"tta={tta!r} is not understood. Expected None, 'flip', 'crop' or 'flip+crop' "
                "(or a list of featx.augment.View objects)."
            )
        views: list[View | None] = [None]
        if "flip" in names:
            views.append(Flip())
        if "crop" in names:
            views.append(Crop())
            if "flip" in names:
                views.append(Compose([Crop(), Flip()]))
        return views
    views = [None if v is None or v == "identity" else v for v in tta]
    bad = [v for v in views if v is not None and not isinstance(v, View)]
    if bad or not views:
        raise ValueError(
            f"tta={tta!r} is not understood. A list must hold featx.augment.View objects "
            "(None for the unchanged image), e.g. [None, Flip()]."
        )
    return views


def resolve_augment(augment: int | AugmentPolicy | dict | None) -> AugmentPolicy | None:
    """The policy of an ``augment=`` setting: ``None``/0 (off), a number of copies, a dict
    of :class:`AugmentPolicy` fields, or a policy.

    Examples
    --------
    >>> from featx.augment import resolve_augment
    >>> resolve_augment(3).copies, resolve_augment(None)
    (3, None)
    """
    if augment is None or augment is False or (isinstance(augment, int) and augment == 0):
        return None
    if isinstance(augment, AugmentPolicy):
        return augment
    if isinstance(augment, dict):
        try:
            return AugmentPolicy(**augment)
        except TypeError as exc:
            raise ValueError(
                f"augment={augment!r}: {exc}. Expected fields of featx.augment.AugmentPolicy."
            ) from None
    if isinstance(augment, (int, np.integer)) and not isinstance(augment, bool):
        return AugmentPolicy(copies=int(augment))
    raise ValueError(
        f"augment={augment!r} is not understood. Expected None, a number of copies, a dict "
        "of AugmentPolicy fields, or a featx.augment.AugmentPolicy."
    )


def view_label(view: View | None) -> str:
    """Short text for a view in tables: ``"identity"``, ``"flip"``, ``"crop"``, ..."""
    if view is None:
        return "identity"
    identity = view.identity()
    if identity["view"] == "compose":
        return "+".join(view_label(v) for v in view.views)  # type: ignore[attr-defined]
    if identity["view"] == "augment":
        return f"augment#{identity['copy']}"
    return str(identity["view"])
