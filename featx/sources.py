"""Image sources: what ``Extractor.extract`` accepts, resolved into one flat list of inputs.

Accepted sources:

- a class-per-folder directory: each non-hidden subfolder is a class (sorted by
  name, as ``keras.utils.image_dataset_from_directory`` does), searched
  recursively (symlinks followed, loops detected); a folder without
  subfolders gives unlabelled images. Folders give the files whose extension is
  in :func:`image_extensions`: ``IMAGE_EXTENSIONS``, plus ``.heic``/``.heif``
  where ``pillow-heif`` is installed and ``.avif`` where Pillow reads AVIF. Image
  files of other formats (``OTHER_IMAGE_EXTENSIONS``: HEIC without
  ``pillow-heif``, SVG, JPEG XL, camera raw, ...) are left out, counted by
  extension in ``ImageSet.skipped``, and named in one warning that says how to
  read them. Hidden files and files that are not images (``.txt``, ``.json``,
  ``Thumbs.db``, ...) are ignored without a word;
- a single image file path;
- a list of file paths (``str`` or ``os.PathLike``);
- a pandas DataFrame with a path column (``path_column``, default ``"path"``)
  and an optional label column (``label_column``, default ``"label"`` if present);
- a manifest: the path of a ``.csv`` or ``.parquet`` file holding such a table (the
  input of choice for millions of images); relative paths in it are relative to the
  manifest's own folder;
- a numpy array of images ``(N, H, W, 3)``, uint8 or float in 0-255 (the range
  ``keras.utils.img_to_array`` gives);
- a list of PIL images.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.images import avif_supported, heif_supported

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "OTHER_IMAGE_EXTENSIONS",
    "ImageSet",
    "image_extensions",
    "resolve_source",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
HEIF_EXTENSIONS = (".heic", ".heif")
RAW_EXTENSIONS = (
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dng", ".erf", ".iiq", ".kdc", ".mef", ".mos",
    ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf",
    ".srw", ".x3f",
)  # fmt: skip
# Image formats a folder may hold that featx does not read out of the box, each with how
# to read them: the fix the skipped-files warning gives.
_HOW_TO_READ = (
    (HEIF_EXTENSIONS, "pip install pillow-heif, and featx reads them"),
    ((".avif",), "install a Pillow built with AVIF support (pip install -U pillow)"),
    ((".svg", ".svgz"), "a vector format: rasterise them to PNG first (for example with cairosvg)"),
    ((".jxl",), "convert them to PNG or JPEG first (for example with djxl)"),
    (RAW_EXTENSIONS, "camera raw: develop them to JPEG, PNG or TIFF first (for example rawpy)"),
)
OTHER_IMAGE_EXTENSIONS = tuple(ext for group, _ in _HOW_TO_READ for ext in group)


def image_extensions() -> tuple[str, ...]:
    """The extensions folders pick up: ``IMAGE_EXTENSIONS``, plus those this install decodes.

    ``.heic`` and ``.heif`` are added where ``pillow-heif`` is installed, ``.avif`` where
    Pillow reads AVIF.

    Examples
    --------
    >>> from featx.sources import IMAGE_EXTENSIONS, image_extensions
    >>> set(IMAGE_EXTENSIONS) <= set(image_extensions())
    True
    """
    extra = (HEIF_EXTENSIONS if heif_supported() else ()) + ((".avif",) if avif_supported() else ())
    return IMAGE_EXTENSIONS + extra


@dataclass
class ImageSet:
    """A resolved source: inputs in a fixed order, with their labels where known.

    ``inputs`` holds file paths (``str``), image arrays or PIL images; ``names`` the
    text used for each in messages; ``y`` integer labels indexing ``classes``;
    ``skipped`` the image files a folder held in formats featx cannot read, counted by
    extension (``{".heic": 12}``; empty for other sources).
    """

    inputs: list[Any]
    names: list[str]
    y: np.ndarray | None = None
    classes: list[str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def are_files(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], str)

    def __len__(self) -> int:
        return len(self.inputs)


def resolve_source(
    source: Any,
    *,
    labels: Sequence[Any] | None = None,
    path_column: str = "path",
    label_column: str | None = None,
) -> ImageSet:
    """Resolve any accepted source into an :class:`ImageSet`.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.sources import resolve_source
    >>> s = resolve_source(np.zeros((2, 8, 8, 3), np.uint8), labels=["a", "b"])
    >>> len(s), s.classes, s.y.tolist()
    (2, ['a', 'b'], [0, 1])
    """
    image_set = _resolve(source, path_column, label_column)
    if labels is not None:
        if image_set.y is not None:
            raise ValueError(
                "labels= was given, but the source already has labels (class folders or a "
                "label column). Pass one or the other."
            )
        labels = list(labels)
        if len(labels) != len(image_set):
            raise ValueError(
                f"labels has {len(labels)} entries for {len(image_set)} images; they must match."
            )
        image_set.y, image_set.classes = _encode_labels(labels)
    if not image_set.inputs:
        raise ValueError(f"The source {_describe(source)} holds no images.")
    return image_set


def _resolve(source: Any, path_column: str, label_column: str | None) -> ImageSet:
    if isinstance(source, ImageSet):  # already resolved (a report passes one to every step)
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _from_directory(path)
        if path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS:
            return _from_manifest(path, path_column, label_column)
        if path.is_file():
            return ImageSet([str(path)], [str(path)])
        raise FileNotFoundError(f"The source {str(source)!r} is neither a folder nor a file.")
    if _is_dataframe(source):
        return _from_dataframe(source, path_column, label_column)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (list, tuple)):
        return _from_list(list(source))
    raise TypeError(
        f"The source {_describe(source)} is not understood. Expected a folder, a file path, "
        "a list of paths, a pandas DataFrame, an (N, H, W, 3) array, or a list of PIL images."
    )


def _from_directory(root: Path) -> ImageSet:
    subdirs = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    extensions = image_extensions()
    skipped: Counter[str] = Counter()
    if not subdirs:
        files = _walk_images(root, extensions, skipped)
        if not files:
            raise ValueError(_no_images(root, extensions, skipped))
        _warn_skipped(root, skipped)
        return ImageSet(files, list(files), skipped=_by_extension(skipped))
    loose = [p for p in _list_images(root, extensions)]
    if loose:
        _warn(
            f"{len(loose)} image(s) directly in {str(root)!r} are ignored because it has class "
            f"subfolders ({', '.join(subdirs[:5])}{', ...' if len(subdirs) > 5 else ''}).",
        )
    files, y = [], []
    for index, name in enumerate(subdirs):
        found = _walk_images(root / name, extensions, skipped)
        files.extend(found)
        y.extend([index] * len(found))
    if not files:
        raise ValueError(_no_images(root, extensions, skipped))
    _warn_skipped(root, skipped)
    return ImageSet(
        files, list(files), np.asarray(y, dtype=np.int64), subdirs, _by_extension(skipped)
    )


def _walk_images(folder: Path, extensions: tuple[str, ...], skipped: Counter[str]) -> list[str]:
    """Image files under ``folder``, sorted, following symlinks but never the same folder twice.

    Files in ``OTHER_IMAGE_EXTENSIONS`` that are not in ``extensions`` are counted in
    ``skipped`` by (lower-case) extension; hidden and non-image files are passed over.
    """
    found: list[str] = []
    seen: set[str] = set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        # A symlink loop, two links to one folder, or a link up to a folder above this
        # one (which would pull in the other classes, or the whole disk).
        if real in seen or (real != top and os.path.commonpath([real, top]) == real):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            extension = os.path.splitext(f)[1].lower()
            if extension in extensions:
                found.append(os.path.join(dirpath, f))
            elif extension in OTHER_IMAGE_EXTENSIONS:
                skipped[extension] += 1
    return found


def _list_images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    return sorted(
        entry.path
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(extensions)
    )


def _by_extension(skipped: Counter[str]) -> dict[str, int]:
    return dict(sorted(skipped.items()))


def _skipped_text(skipped: Counter[str]) -> str:
    """Counts by extension, then how to read each kind: the body of the warning."""
    counts = ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items()))
    fixes = []
    for group, how in _HOW_TO_READ:
        present = [ext for ext in group if skipped[ext]]
        if present:
            fixes.append(f"{'/'.join(present)}: {how}")
    return f"{counts}. {'; '.join(fixes)}"


def _warn_skipped(root: Path, skipped: Counter[str]) -> None:
    """One warning for every image file a folder scan left out, so none goes missing unseen."""
    if not skipped:
        return
    _warn(
        f"{sum(skipped.values())} image file(s) in {str(root)!r} are in formats featx cannot "
        f"read and were left out: {_skipped_text(skipped)}. Their counts are in "
        "ImageSet.skipped."
    )


def _no_images(root: Path, extensions: tuple[str, ...], skipped: Counter[str]) -> str:
    message = (
        f"No images found in {str(root)!r}: looked for {', '.join(extensions)} files in "
        "it and in its class subfolders. Expected root/<class>/<image> or root/<image>."
    )
    if skipped:
        message += f" Left out image files featx cannot read: {_skipped_text(skipped)}."
    return message


def _from_dataframe(df: Any, path_column: str, label_column: str | None) -> ImageSet:
    if path_column not in df.columns:
        raise ValueError(
            f"The DataFrame has no path column {path_column!r}; its columns are "
            f"{list(df.columns)}. Pass path_column= to name the one holding image paths."
        )
    if label_column is not None and label_column not in df.columns:
        raise ValueError(
            f"The DataFrame has no label column {label_column!r}; its columns are "
            f"{list(df.columns)}."
        )
    if label_column is None and "label" in df.columns:
        label_column = "label"
    missing = df[path_column].isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"The DataFrame's path column {path_column!r} has {int(missing.sum())} missing "
            f"value(s), the first at index {df.index[missing].tolist()[0]!r}. Drop those rows "
            "first."
        )
    paths = [os.fspath(p) for p in df[path_column].tolist()]
    image_set = ImageSet(paths, list(paths))
    if label_column is not None:
        image_set.y, image_set.classes = _encode_labels(df[label_column].tolist())
    return image_set


def _from_manifest(path: Path, path_column: str, label_column: str | None) -> ImageSet:
    """A ``.csv`` / ``.parquet`` table of image paths (and labels), read as a DataFrame."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            # Paths stay text (a column of numbered files would otherwise become integers).
            table = pd.read_csv(path, dtype={path_column: str})
        else:
            table = pd.read_parquet(path)
    except ImportError as exc:
        raise ImportError(
            f"Reading the Parquet manifest {str(path)!r} needs pyarrow ({exc}). Install it "
            "with pip install pyarrow, or save the manifest as .csv."
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"Cannot read the manifest {str(path)!r} ({type(exc).__name__}: {exc}). Expected "
            f"a {path.suffix.lower()} file with a {path_column!r} column of image paths."
        ) from exc
    if table.empty:
        raise ValueError(
            f"The manifest {str(path)!r} has no rows (columns: {list(table.columns)}). Expected "
            f"one row per image with its path in column {path_column!r}."
        )
    try:
        image_set = _from_dataframe(table, path_column, label_column)
    except ValueError as exc:
        raise ValueError(
            str(exc).replace("The DataFrame", f"The manifest {str(path)!r}", 1)
        ) from None
    # Relative paths are relative to the manifest, so a dataset folder and its manifest
    # move together.
    base = path.parent
    image_set.inputs = [p if os.path.isabs(p) else os.path.join(base, p) for p in image_set.inputs]
    image_set.names = list(image_set.inputs)
    return image_set


def _from_array(array: np.ndarray) -> ImageSet:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"The array has shape {array.shape}, which looks like one image, not a batch. "
            "Pass an (N, H, W, 3) array: array[None] for a single image."
        )
    if array.ndim == 3:  # (N, H, W) grayscale
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"An image array must have shape (N, H, W, 3) (or (N, H, W) for grayscale); got "
            f"{array.shape}."
        )
    if array.dtype != np.uint8 and array.dtype.kind == "f" and array.size and array.max() <= 1.0:
        _warn(
            "The float image array has all values in [0, 1]; featx expects 0-255 (as "
            "keras.utils.img_to_array gives). Multiply by 255 if these are unit-scaled images.",
        )
    return ImageSet(list(array), [f"array[{i}]" for i in range(len(array))])


def _from_list(items: list[Any]) -> ImageSet:
    if not items:
        return ImageSet([], [])
    from PIL import Image

    if all(isinstance(i, (str, os.PathLike)) for i in items):
        paths = [os.fspath(i) for i in items]
        return ImageSet(paths, list(paths))
    if all(isinstance(i, Image.Image) for i in items):
        return ImageSet(items, [f"image[{i}]" for i in range(len(items))])
    if all(isinstance(i, np.ndarray) for i in items):
        return ImageSet(items, [f"array[{i}]" for i in range(len(items))])
    kinds = sorted({type(i).__name__ for i in items})
    what = f"mixes {', '.join(kinds)}" if len(kinds) > 1 else f"holds {kinds[0]} items"
    raise TypeError(
        f"The list {what}. Expected a list of file paths (str or pathlib.Path), of PIL "
        "images, or of arrays, all of one kind."
    )


def _encode_labels(labels: list[Any]) -> tuple[np.ndarray, list[str]]:
    values = sorted(set(labels), key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(values)}
    return np.asarray([index[v] for v in labels], dtype=np.int64), [str(v) for v in values]


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) < 80 else f"{type(obj).__name__} {text[:60]}..."


def _warn(message: str) -> None:
    """Warn at the first caller outside featx, so the warning points at the user's own line."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
