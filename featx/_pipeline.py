"""The extraction machinery both engines share: read, hash, decode, write, report progress.

The local engine (:mod:`featx.extract`) and the Ray engine (:mod:`featx.distributed`)
import these pieces, so that both read the same bytes, compute the same content keys,
decode to the same pixels and write the cache the same way: their vectors are
bit-identical, and a run of one resumes a run of the other.

- :func:`fingerprint` and :func:`extraction_spec`: the one definition of what an
  extraction's vectors depend on;
- :class:`Decoding`: input size, resize policy, background and view, and
  :meth:`Decoding.decode` (content key plus the network's input pixels);
- :class:`ComputeTask`: everything an engine needs to compute cache misses;
- :class:`CacheWriter`: cache writes in a background thread;
- :func:`read_file`, :func:`content_key`, :func:`file_key`, :func:`bounded_map`,
  :func:`progress`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.augment import View
from featx.cache import FINGERPRINT_FORMAT, EmbeddingCache
from featx.images import DECODER_VERSION, DecodeError, array_to_rgb, decode

__all__ = [
    "DECODE_NICENESS",
    "ON_ERROR",
    "CacheWriter",
    "ComputeTask",
    "Decoding",
    "bounded_map",
    "check_on_error",
    "content_key",
    "decode_files",
    "extraction_spec",
    "file_key",
    "fingerprint",
    "progress",
    "quote",
    "read_file",
    "yield_to_compute",
]

ON_ERROR = ("raise", "skip")


def fingerprint(spec: dict[str, Any]) -> str:
    """The hash that keys cached vectors: SHA-256 of ``spec`` as sorted JSON.

    Every extractor (plain or combined) and every search names its vectors by it.
    """
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def extraction_spec(
    backbone_identity: dict[str, Any],
    resize: str,
    background: tuple[int, int, int],
    view: View | None = None,
    decoder: str = "pillow",
) -> dict[str, Any]:
    """What one network's vectors depend on: the network, the image policy, the view."""
    images = {"resize": resize, "background": list(background), "decoder": DECODER_VERSION}
    if decoder != "pillow":  # absent for the default, so its fingerprints stay as they were
        images["decoded_by"] = decoder
    spec: dict[str, Any] = {
        "format": FINGERPRINT_FORMAT,
        "backbone": backbone_identity,
        "images": images,
    }
    if view is not None:  # absent otherwise, so plain extractions keep their fingerprints
        spec["view"] = view.identity()
    return spec


@dataclass(frozen=True)
class Decoding:
    """How an input becomes the network's pixels: size, resize policy, background, view
    and decoder."""

    input_size: tuple[int, int]
    resize: str
    background: tuple[int, int, int]
    view: View | None = None
    decoder: str = "pillow"

    def decode(self, content: bytes | np.ndarray, name: str) -> tuple[str, np.ndarray]:
        """The content key and the network's input pixels of one input (every engine's path).

        The key is the hash of the content actually decoded, even if the file changed
        since it was first hashed.
        """
        key = content_key(content)
        if isinstance(content, bytes):
            pixels = decode(
                content, self.input_size, resize=self.resize, background=self.background,
                name=quote(name), decoder=self.decoder,
            )  # fmt: skip
        else:
            pixels = array_to_rgb(content, self.input_size, resize=self.resize, name=name)
        # A view is seeded by the content key, so its output is the same in every run.
        return key, pixels if self.view is None else self.view.apply(pixels, key)


@dataclass
class ComputeTask:
    """What an engine needs to compute an extractor's cache misses."""

    backbone: Any  # featx.backbones.Backbone
    decoding: Decoding
    batch_size: int
    cache: EmbeddingCache
    fingerprint: str
    verbose: bool = False
    workers: int = 1


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not supported. Expected one of {ON_ERROR}.")


class CacheWriter:
    """Writes batches to the cache in a background thread, so disk I/O overlaps compute.

    A failed write (disk full, permissions) warns once and turns caching off for the
    rest of the run: the embeddings are still returned.
    """

    def __init__(self, cache: EmbeddingCache, fingerprint: str) -> None:
        self._cache, self._fingerprint = cache, fingerprint
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="featx-cache-writer", daemon=True)
        self._thread.start()

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        if self._cache.enabled and not self._failed:
            self._queue.put((keys, np.array(vectors, dtype=np.float32)))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._failed:
                continue
            try:
                self._cache.put(self._fingerprint, *item)
            except Exception as exc:
                self._failed = True
                warnings.warn(
                    f"Writing to the cache at {str(self._cache.location)!r} failed ({exc}); "
                    "the rest of this run is not cached.",
                    stacklevel=2,
                )
        self._cache.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


# How much lower than the network's threads decoding threads run (Linux nice levels).
DECODE_NICENESS = 10


def yield_to_compute() -> None:
    """Lower the calling decode thread's scheduling priority (Linux; elsewhere a no-op).

    The network's parallel ops wait for their slowest thread; a decode thread taking a core
    from one of them stalls the whole op. At a lower priority, decoding fills the cores'
    idle moments instead (measured: benchmarks/results-2026-11-23.md).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICENESS)
    except OSError:
        pass


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items, ahead: int = 64) -> Iterator:
    """``pool.map`` that keeps at most ``ahead`` tasks in flight (memory stays bounded)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def decode_files(
    decoding: Decoding, items: list[tuple[str, str]]
) -> list[tuple[str | None, np.ndarray | None, str | None]]:
    """Read and decode files, ``(path, name)`` each: ``(key, pixels, None)`` for each one
    decoded, ``(None, None, reason)`` for each one that could not be.

    The unit of work of a decoding process (a module-level function, so it pickles by
    name): the same :func:`read_file` and :meth:`Decoding.decode` as the threads run.
    """
    out: list[tuple[str | None, np.ndarray | None, str | None]] = []
    for path, name in items:
        try:
            key, pixels = decoding.decode(read_file(path), name)
            out.append((key, pixels, None))
        except DecodeError as exc:
            out.append((None, None, exc.reason))
    return out


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeError(quote(path), f"cannot be read ({exc.strerror or exc})") from None


def content_key(content: bytes | np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=20)
    if isinstance(content, bytes):
        digest.update(b"bytes:")
        digest.update(content)
    else:
        array = np.ascontiguousarray(content)
        digest.update(f"array:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# A file changed less than this long before it was looked at is read every time, never
# remembered: on a file system whose clock ticks coarsely (FAT: 2 s) a second change within
# the same tick would leave its stat as it was.
SETTLE_NS = 2_000_000_000


def file_key(
    path: str, absolute: str, known: dict[str, tuple[str, str]]
) -> tuple[str, tuple[str, str, str] | None]:
    """The content key of the file at ``path``, and the ``(absolute, stat, key)`` row to
    remember for it (None when there is nothing new to remember).

    ``known`` maps absolute paths to the ``(stat, key)`` remembered by the cache. A file
    whose device, inode, size, modification and change times are those remembered is not
    read: its key is the one remembered (a write changes the change time, a replacement
    the inode). Otherwise its bytes are read and hashed as :func:`content_key` does.
    """
    now = time.time_ns()
    try:
        st = os.stat(path)
    except OSError:
        return content_key(read_file(path)), None  # read_file says why it cannot be read
    stat = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    remembered = known.get(absolute)
    if remembered is not None and remembered[0] == stat:
        return remembered[1], None
    key = content_key(read_file(path))  # read after the stat: a change between is seen later
    settled = max(st.st_mtime_ns, st.st_ctime_ns) < now - SETTLE_NS
    return key, (absolute, stat, key) if settled else None


def quote(name: str) -> str:
    return name if name.startswith(("array[", "image[")) else repr(name)


class NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, name: str, verbose: bool):
    if not verbose or total == 0:
        return NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"featx {name}", unit="img", dynamic_ncols=True)
