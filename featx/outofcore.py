"""Embeddings larger than memory: ``.npy`` files written row by row and read in chunks.

A million 1280-d float32 embeddings take 5.1 GB. :class:`NpyRowWriter` writes rows into a
``.npy`` file with ``os.pwrite`` (rows in any order, each contiguous run in one call), and
:func:`iter_chunks` reads a memory-mapped array a block of rows at a time. Neither keeps
the file's pages mapped in the process: pages written through a memory map, or read
through one, count in the process's resident memory until they are unmapped, so a
process that touched a whole 5 GB memmap would *look* 5 GB large even though the kernel
may drop those pages at will. Here they stay in the page cache, outside the process.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from featx.outofcore import NpyRowWriter, iter_chunks
>>> path = os.path.join(tempfile.mkdtemp(), "X.npy")
>>> with NpyRowWriter(path, shape=(5, 3)) as writer:
...     writer[np.array([4, 0])] = np.ones((2, 3), np.float32)
>>> X = np.load(path, mmap_mode="r")
>>> [chunk.sum() for _, chunk in iter_chunks(X, 2)]
[np.float32(3.0), np.float32(0.0), np.float32(3.0)]
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHUNK_ROWS", "NpyRowWriter", "check_labelled", "iter_chunks", "release"]

# Rows per chunk when reading: 8192 x 1280 float32 is 42 MB.
CHUNK_ROWS = 8192


class NpyRowWriter:
    """A ``.npy`` file of float32 rows, written in any order; unwritten rows are zeros.

    ``writer[rows] = values`` writes ``values[i]`` at row ``rows[i]`` (an int, a slice or
    an integer array); it is the only operation, so code that fills an in-memory array
    with ``X[rows] = values`` fills the file the same way. The file is created at its
    full size at once (sparse where the file system allows it).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int]) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                  "fortran_order": False, "shape": self.shape}  # fmt: skip
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(os.dup(self._fd), "wb") as f:
                np.lib.format.write_array_header_2_0(f, header)
                self.offset = f.tell()
            os.ftruncate(self._fd, self.offset + self.shape[0] * self.shape[1] * 4)
        except BaseException:
            self.close()
            raise
        self._row_bytes = self.shape[1] * 4

    def __setitem__(self, rows: Any, values: Any) -> None:
        values = np.asarray(values, dtype=np.float32)
        positions = np.arange(self.shape[0])[rows] if not _is_int_array(rows) else rows
        positions = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        values = np.broadcast_to(values, (len(positions), self.shape[1]))
        if len(positions) and (positions.min() < 0 or positions.max() >= self.shape[0]):
            raise IndexError(
                f"Rows {positions.min()}..{positions.max()} are outside the file's "
                f"{self.shape[0]} rows."
            )
        order = np.argsort(positions, kind="stable")
        positions, values = positions[order], values[order]
        # One pwrite per run of consecutive rows.
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for run in np.split(np.arange(len(positions)), breaks):
            if len(run) == 0:
                continue
            block = np.ascontiguousarray(values[run[0] : run[-1] + 1])
            where = self.offset + int(positions[run[0]]) * self._row_bytes
            _pwrite_all(self._fd, memoryview(block).cast("B"), where)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_int_array(rows: Any) -> bool:
    return isinstance(rows, (list, np.ndarray)) and np.asarray(rows).dtype.kind in "iu"


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def iter_chunks(
    X: np.ndarray, chunk_rows: int = CHUNK_ROWS, rows: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row indices, float32 copy of those rows)`` of ``X``, ``chunk_rows`` at a time.

    ``rows`` (optional) selects and orders the rows to read, e.g. a shuffled permutation;
    each chunk's rows are read in increasing order (sequential reads on disk) and returned
    in that order. A ``np.memmap`` of a whole ``.npy`` file is read with ``os.preadv``
    (one call per run of consecutive rows), not through its mapping: pages touched through
    a mapping count as the process's memory, and scattered rows read through it peaked
    at 1.1 GB against 0.37 GB with ``preadv`` (benchmarks/out_of_core.py, 1M rows; the
    kernel maps up to 64 KB around a page on a read fault). Other arrays are
    indexed, and a memmap view releases its pages after each chunk (:func:`release`).
    """
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r} must be a positive integer.")
    chunk_rows = int(chunk_rows)
    n = len(X)
    total = n if rows is None else len(rows)
    reader = _FileRows(X) if _is_whole_file(X) else None
    try:
        for start in range(0, total, chunk_rows):
            if rows is None:
                index = np.arange(start, min(n, start + chunk_rows))
            else:
                index = np.sort(np.asarray(rows[start : start + chunk_rows], dtype=np.int64))
            if reader is not None:
                block = reader.read(index)
            elif rows is None:
                block = np.array(X[start : start + chunk_rows], dtype=np.float32)
            else:
                block = np.asarray(X[index], dtype=np.float32)
            release(X)
            yield index, block
    finally:
        if reader is not None:
            reader.close()


def _is_whole_file(X: Any) -> bool:
    """A memmap over a whole C-ordered array of its file (not a view into one)."""
    return (
        isinstance(X, np.memmap)
        and isinstance(X.base, mmap.mmap)
        and X.ndim == 2
        and X.flags.c_contiguous
        and getattr(X, "filename", None) is not None
    )


class _FileRows:
    """Rows of a memory-mapped array read with ``preadv`` from its file."""

    def __init__(self, X: np.memmap) -> None:
        self.dtype, self.width, self.offset = X.dtype, X.shape[1], int(X.offset)
        self.row_bytes = X.shape[1] * X.dtype.itemsize
        self.n = len(X)
        self.fd = os.open(X.filename, os.O_RDONLY)

    def read(self, index: np.ndarray) -> np.ndarray:
        if len(index) and (index[0] < 0 or index[-1] >= self.n):
            raise IndexError(f"Rows {index[0]}..{index[-1]} are outside the {self.n} rows.")
        block = np.empty((len(index), self.width), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        starts = np.concatenate([[0], breaks]).astype(np.int64)
        ends = np.concatenate([breaks, [len(index)]]).astype(np.int64)
        flat = memoryview(block).cast("B")
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if lo == hi:
                continue
            target = flat[lo * self.row_bytes : hi * self.row_bytes]
            where = self.offset + int(index[lo]) * self.row_bytes
            while len(target):
                got = os.preadv(self.fd, [target], where)
                if got == 0:
                    raise EOFError(f"The file ends before row {index[lo]}.")
                target, where = target[got:], where + got
        return block.astype(np.float32, copy=False)

    def close(self) -> None:
        os.close(self.fd)


def release(X: Any) -> None:
    """Drop the pages a ``np.memmap`` holds in this process (they stay in the page cache).

    A no-op for arrays that are not memory-mapped files.
    """
    while X is not None and not isinstance(X, np.memmap):
        X = getattr(X, "base", None)
    handle = getattr(X, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed, or a platform refusing it
            handle.madvise(mmap.MADV_DONTNEED)


def check_labelled(X: Any, y: Any, *, name: str = "X") -> tuple[Any, np.ndarray]:
    """``(X, y)`` with one label per row of a 2-D ``X``; a memory-mapped ``X`` is not copied."""
    if getattr(X, "ndim", None) != 2:
        X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(
            f"{name} must be (n_samples, n_features) with one label per row; got X of shape "
            f"{X.shape} and {len(y)} labels."
        )
    return X, y
