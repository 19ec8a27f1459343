"""Perceptual hashes of image files, for near-duplicates that survive crops and recompression.

Pooled CNN embeddings are poor at near-duplicates: a 90% centre crop of a photo, scaled by
0.8 and re-saved at JPEG quality 75, has a median cosine similarity of only 0.88 to its
original, no better than many different photos of the same class. A perceptual hash
(``imagehash.phash``: the signs of the lowest 8x8 DCT frequencies of a 32x32 grey image) is
robust to rescaling and recompression but not to crops: the same copy is a median 10 bits
(of 64) away from its original. So each image gets :data:`CROPS` hashes, of the whole
image and of centre crops keeping 90% and 80% of each side; two images are compared by
the whole-image hash of each against every hash of the other (:func:`hash_distances`).
A centre crop of 80-100%, any rescaling and JPEG recompression then stay within a few bits
(``benchmarks/audit_planted.py`` measures it); off-centre crops and crops under 80% do not.

Hashes are kept in ``<cache>/hashes.sqlite``, keyed by the file's content key, so a second
audit (or a moved file) decodes nothing. A cache that cannot be written is used read-only,
with one warning.

Examples
--------
>>> import numpy as np
>>> from featx.hashes import hash_distances
>>> a = np.zeros((1, 3, 8), np.uint8); b = a.copy(); b[0, 0, 0] = 0b111
>>> int(hash_distances(a, b)[0, 0])
0
>>> int(hash_distances(a, b, whole_only=True)[0, 0])
3
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from featx._pipeline import bounded_map, content_key, read_file
from featx.cache import resolve_cache_dir
from featx.images import DecodeError, decode

__all__ = [
    "CROPS",
    "HASH_BITS",
    "HASH_VERSION",
    "ImageHashes",
    "describe_failed",
    "hash_distances",
    "image_hashes",
    "near_pairs",
]

#: The fractions of each side kept by the hashed centre crops (1.0: the whole image).
CROPS = (1.0, 0.9, 0.8)
HASH_BITS = 64
#: Bumped whenever the hashes change (algorithm, crops, decode size).
HASH_VERSION = "phash-c100-c90-c80-128px-v1"
_DECODE = (128, 128)
_BLOCK = 2048


class ImageHashes:
    """The perceptual hashes of a list of files: ``bits`` (n, len(CROPS), 8) uint8, and
    ``keys`` (content keys; None where the file could not be read)."""

    def __init__(self, bits: np.ndarray, keys: list[str | None], failed: list[tuple[str, str]]):
        self.bits = bits
        self.keys = keys
        self.failed = failed
        self.computed = 0

    @property
    def ok(self) -> np.ndarray:
        """Rows whose file was read and hashed."""
        return np.array([k is not None for k in self.keys], bool)


def image_hashes(
    paths: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = "auto",
    workers: int | None = None,
) -> ImageHashes:
    """Content keys and perceptual hashes of ``paths`` (from the cache where they are)."""
    import imagehash  # noqa: F401  (fail early, with the install hint below)

    store = _Store(resolve_cache_dir(cache_dir))
    workers = workers or min(8, os.cpu_count() or 1)
    bits = np.zeros((len(paths), len(CROPS), HASH_BITS // 8), np.uint8)
    keys: list[str | None] = [None] * len(paths)
    failed: list[tuple[str, str]] = []

    def key_of(i: int) -> tuple[int, str | None, str | None]:
        try:
            return i, content_key(read_file(str(paths[i]))), None
        except DecodeError as exc:
            return i, None, exc.reason

    # Keys first (one read of each file, no bytes kept), so that cached hashes cost no
    # decode; the files whose hashes are missing are read again below.
    with ThreadPoolExecutor(workers) as pool:
        for i, key, reason in bounded_map(pool, key_of, range(len(paths))):
            if key is None:
                failed.append((str(paths[i]), reason or "cannot be read"))
            keys[i] = key
    known = store.get([k for k in keys if k is not None])
    todo = []
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in known:
            bits[i] = known[key]
        else:
            todo.append(i)

    def compute(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            data = read_file(str(paths[i]))
            keys[i] = content_key(data)  # the bytes hashed are the bytes keyed
            return i, _hash_bytes(data, str(paths[i])), None
        except DecodeError as exc:
            return i, None, exc.reason

    new: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(workers) as pool:
        for i, value, reason in bounded_map(pool, compute, todo):
            if value is None:
                failed.append((str(paths[i]), reason or "cannot be decoded"))
                keys[i] = None
                continue
            bits[i] = value
            new[keys[i]] = value
    store.put(new)
    result = ImageHashes(bits, keys, failed)
    result.computed = len(new)
    return result


def _hash_bytes(data: bytes, name: str) -> np.ndarray:
    import imagehash
    from PIL import Image

    pixels = decode(data, _DECODE, name=name)
    out = np.empty((len(CROPS), HASH_BITS // 8), np.uint8)
    h, w = pixels.shape[:2]
    for c, fraction in enumerate(CROPS):
        ch, cw = round(h * fraction), round(w * fraction)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + ch, left : left + cw]))
        out[c] = np.packbits(imagehash.phash(crop).hash.ravel())
    return out


def hash_distances(a: np.ndarray, b: np.ndarray, *, whole_only: bool = False) -> np.ndarray:
    """Bit distances between the images of ``a`` (m, crops, 8) and ``b`` (n, crops, 8):
    the smallest distance between the whole-image hash of one and any hash of the other
    (``whole_only``: whole against whole)."""
    whole_a, whole_b = a[:, 0], b[:, 0]
    best = _popcount_distance(whole_a, whole_b)
    if not whole_only:
        for c in range(1, a.shape[1]):
            np.minimum(best, _popcount_distance(whole_a, b[:, c]), out=best)
            np.minimum(best, _popcount_distance(a[:, c], whole_b), out=best)
    return best


def _popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = a.view(np.uint64).reshape(len(a)) if a.shape[1] == 8 else None
    z = b.view(np.uint64).reshape(len(b)) if b.shape[1] == 8 else None
    if x is None or z is None:
        raise ValueError(f"hashes must be (n, 8) uint8; got {a.shape} and {b.shape}.")
    return np.bitwise_count(x[:, None] ^ z[None, :]).astype(np.uint8)


def near_pairs(bits: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``bits`` within ``threshold`` bits: ``(i, j, distance)``.

    Exact, a block of rows against all later rows at a time (n = 50,000 compares 1.25e9
    pairs, five popcount matrices each: quadratic, meant for sets of this size)."""
    bits = np.ascontiguousarray(bits)
    first, second, dist = [], [], []
    n = len(bits)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        block = hash_distances(bits[start:stop], bits[start:])
        block[np.tril_indices(stop - start, 0, m=block.shape[1])] = 255  # i < j only
        i, j = np.nonzero(block <= threshold)
        first.append(i + start)
        second.append(j + start)
        dist.append(block[i, j])
    if not first:
        return (np.empty(0, np.int64),) * 2 + (np.empty(0, np.uint8),)
    return np.concatenate(first), np.concatenate(second), np.concatenate(dist)


class _Store:
    """``<cache>/hashes.sqlite``: content key -> hash bytes, for one :data:`HASH_VERSION`."""

    def __init__(self, root: Path | None) -> None:
        self.path = None if root is None else Path(root) / "hashes.sqlite"

    def _connect(self, write: bool) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        if not write:
            if not self.path.is_file():
                return None
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hashes "
            "(version TEXT, key TEXT, bits BLOB, PRIMARY KEY (version, key))"
        )
        return conn

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        try:
            conn = self._connect(write=False)
        except sqlite3.Error:
            return found
        if conn is None:
            return found
        shape = (len(CROPS), HASH_BITS // 8)
        try:
            wanted = sorted(set(keys))
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    f"SELECT key, bits FROM hashes WHERE version = ? AND key IN ({marks})",
                    [HASH_VERSION, *part],
                )
                for key, blob in rows:
                    if len(blob) == shape[0] * shape[1]:
                        found[key] = np.frombuffer(blob, np.uint8).reshape(shape)
        except sqlite3.Error:
            return {}  # a damaged or foreign file: everything is recomputed
        finally:
            conn.close()
        return found

    def put(self, new: dict[str, np.ndarray]) -> None:
        if not new or self.path is None:
            return
        try:
            conn = self._connect(write=True)
            with contextlib.closing(conn), conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO hashes VALUES (?, ?, ?)",
                    [(HASH_VERSION, k, v.tobytes()) for k, v in new.items()],
                )
        except (sqlite3.Error, OSError) as exc:
            warnings.warn(
                f"The image hashes could not be kept in {str(self.path)!r} ({exc}); they are "
                "used for this run and computed again next time.",
                RuntimeWarning,
                stacklevel=4,
            )


def describe_failed(failed: list[tuple[str, str]]) -> str:
    """One line for the files that could not be hashed."""
    head = ", ".join(f"{name} ({why})" for name, why in failed[:3])
    more = " ..." if len(failed) > 3 else ""
    return f"{len(failed)} file(s) could not be hashed: {head}{more}"
