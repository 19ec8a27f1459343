"""Cosine nearest neighbours over embeddings: exact for small sets, an index for large ones.

:class:`NeighbourIndex` answers "which rows are closest to these vectors?" in cosine
similarity. Below ``exact_max`` rows (default 20,000) it is exact: blocks of unit vectors
multiplied against all rows, never more than one ``block x n`` similarity matrix in
memory. Above it, an approximate ``pynndescent`` index (installed with umap-learn), built
once and kept beside the cache (``<cache>/neighbours/``), keyed by the embeddings'
fingerprint and a hash of their vectors, so the next run on the same embeddings loads it.

Examples
--------
>>> import numpy as np
>>> from featx.knn import NeighbourIndex
>>> X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
>>> index = NeighbourIndex(X)
>>> rows, sims = index.query(np.array([[1.0, 0.05]]), k=2)
>>> rows.tolist()
[[0, 1]]
>>> index.neighbours_of_rows(k=1)[0].ravel().tolist()
[1, 0, 3, 2]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache import resolve_cache_dir
from featx.embeddings import CHUNK_ROWS, iter_chunks

__all__ = ["EXACT_MAX", "NeighbourIndex", "unit_rows", "vectors_hash"]

#: Above this many rows, neighbours come from an approximate pynndescent index.
EXACT_MAX = 20_000
_BLOCK = 1024
_INDEX_VERSION = 1


def unit_rows(X: Any) -> np.ndarray:
    """``X`` as float32 rows of unit length (zero rows stay zero), a block at a time."""
    out = np.empty(X.shape, np.float32)
    for rows, chunk in iter_chunks(X, CHUNK_ROWS):
        chunk = np.asarray(chunk, np.float32)
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        out[rows] = chunk / np.where(norms > 0, norms, 1.0)
    return out


def vectors_hash(X: Any) -> str:
    """A BLAKE2b hash of the vectors' bytes (read a block at a time)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((X.shape, str(X.dtype))).encode())
    for _, chunk in iter_chunks(X, CHUNK_ROWS):
        digest.update(np.ascontiguousarray(chunk).tobytes())
    return digest.hexdigest()


class NeighbourIndex:
    """Cosine k-nearest neighbours of the rows of ``X``.

    Parameters
    ----------
    X : array of shape (n, d)
        The vectors searched (a memory map is read a block at a time).
    exact_max : int, default EXACT_MAX
        Exact search up to this many rows; above it, pynndescent.
    fingerprint : str, optional
        The embeddings' fingerprint; with a cache, the approximate index is stored under
        it (and the vectors' hash) and loaded on the next run.
    cache_dir : path, "auto" or None, default "auto"
        Where the approximate index is kept (``<cache>/neighbours/``); None keeps nothing.
    seed : int, default 0
        Seeds the approximate index.
    """

    def __init__(
        self,
        X: Any,
        *,
        exact_max: int = EXACT_MAX,
        fingerprint: str | None = None,
        cache_dir: str | os.PathLike | None = "auto",
        seed: int = 0,
    ) -> None:
        if getattr(X, "ndim", None) != 2 or len(X) == 0:
            raise ValueError(
                f"NeighbourIndex needs a non-empty (n, d) array of vectors; got shape "
                f"{getattr(X, 'shape', None)}."
            )
        self.n = len(X)
        self.exact = self.n <= exact_max
        self.unit = unit_rows(X)
        self.seed = seed
        self.loaded = False
        self._ann = None
        if not self.exact:
            self._ann = self._approximate(fingerprint, cache_dir)

    # -- queries --------------------------------------------------------------------------

    def query(
        self, Q: Any, k: int, *, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows most similar to each query vector: ``(rows, similarities)``,
        each ``(len(Q), k)``, most similar first. ``exclude[i]``: a row never returned
        for query ``i`` (e.g. the query itself), or -1."""
        Q = unit_rows(np.atleast_2d(np.asarray(Q, np.float32)))
        if Q.shape[1] != self.unit.shape[1]:
            raise ValueError(
                f"The queries have {Q.shape[1]} dimensions and the indexed vectors "
                f"{self.unit.shape[1]}. Embed the queries with the same backbone and options."
            )
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}.")
        extra = 0 if exclude is None else 1
        want = min(k + extra, self.n)
        if self.exact:
            rows, sims = self._exact(Q, want)
        else:
            rows, distances = self._ann.query(Q, k=want)
            sims = 1.0 - distances
        if exclude is not None:
            rows, sims = _drop(rows, sims, np.asarray(exclude), k)
        return rows[:, :k], sims[:, :k].astype(np.float32)

    def neighbours_of_rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row's ``k`` nearest *other* rows: ``(rows, similarities)``, (n, k) each."""
        k = min(int(k), self.n - 1)
        if k < 1:
            raise ValueError("Neighbours of rows need at least two rows.")
        if self.exact:
            rows = np.empty((self.n, k), np.int64)
            sims = np.empty((self.n, k), np.float32)
            for start in range(0, self.n, _BLOCK):
                block = slice(start, min(self.n, start + _BLOCK))
                r, s = self._exact(self.unit[block], k + 1)
                own = np.arange(block.start, block.stop)
                rows[block], sims[block] = _drop(r, s, own, k)
            return rows, sims
        graph_rows, graph_dist = self._ann.neighbor_graph
        if graph_rows.shape[1] < k + 1:
            return self.query(self.unit, k, exclude=np.arange(self.n))
        own = np.arange(self.n)
        return _drop(graph_rows, (1.0 - graph_dist).astype(np.float32), own, k)

    def _exact(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.empty((len(Q), k), np.int64)
        sims = np.empty((len(Q), k), np.float32)
        for start in range(0, len(Q), _BLOCK):
            block = slice(start, min(len(Q), start + _BLOCK))
            S = Q[block] @ self.unit.T
            top = (
                np.argpartition(-S, k - 1, axis=1)[:, :k]
                if k < self.n
                else np.tile(np.arange(self.n), (len(S), 1))
            )
            top_s = np.take_along_axis(S, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            rows[block] = np.take_along_axis(top, order, axis=1)
            sims[block] = np.take_along_axis(top_s, order, axis=1)
        return rows, sims

    # -- the approximate index ------------------------------------------------------------

    def _approximate(self, fingerprint: str | None, cache_dir: Any):
        import joblib

        path = None
        root = resolve_cache_dir(cache_dir)
        if root is not None and fingerprint:
            name = f"{fingerprint[:16]}-{vectors_hash(self.unit)}-v{_INDEX_VERSION}.joblib"
            path = Path(root) / "neighbours" / name
            if path.is_file():
                with contextlib.suppress(Exception):  # a damaged file is rebuilt
                    index = joblib.load(path)
                    self.loaded = True
                    return index
        index = self._build()
        if path is not None:
            _save_atomic(index, path)
        return index

    def _build(self):
        from pynndescent import NNDescent

        index = NNDescent(
            self.unit,
            metric="cosine",
            n_neighbors=30,
            random_state=self.seed,
            low_memory=True,
            compressed=False,
        )
        index.prepare()
        return index


def _drop(rows: np.ndarray, sims: np.ndarray, own: np.ndarray, k: int):
    """Remove row ``own[i]`` from line ``i`` (where present), keep the first ``k``."""
    keep = rows != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in order
    rows = np.take_along_axis(rows, order, axis=1)[:, :k]
    sims = np.take_along_axis(sims, order, axis=1)[:, :k]
    return rows, sims


def _save_atomic(index: Any, path: Path) -> None:
    import joblib

    tmp = path.parent / f".{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(index, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full cache: the index is simply not kept
        import warnings

        with contextlib.suppress(OSError):
            tmp.unlink()
        warnings.warn(
            f"The neighbour index could not be kept in {str(path.parent)!r} ({exc}); it "
            "will be built again next time.",
            RuntimeWarning,
            stacklevel=3,
        )
