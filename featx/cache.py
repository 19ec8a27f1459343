"""The on-disk embedding cache: immutable ``.npy`` shards plus a SQLite index.

Layout under the cache directory (see ``cache/README.md``)::

    featx-v1/
        index.sqlite          # WAL-mode SQLite: fingerprints, shards, vectors
        shards/<fp[:16]>/<uuid>.npy

A vector's key is ``(fingerprint, content key)``: the fingerprint covers the
network and the image policy, the content key is a hash of the image bytes.
Writing a batch is: ``np.save`` to a hidden temporary file, ``fsync``, atomic
``os.replace`` to its final name, then one SQLite transaction that records the
shard (with its checksum) and its rows. A process killed at any point leaves
either nothing, an unreferenced file (ignored, removable by ``clear``), or a
complete shard with its index rows; never an index row without its vector.
SQLite's locking makes concurrent writers safe; ``INSERT OR IGNORE`` keeps the
first vector written for a key. Shards are checksummed; a shard that fails its
checksum or has vanished is dropped from the index and its images recomputed.

``EmbeddingCache(None)`` is a disabled cache with the same interface, so callers
have one code path whether caching is on or off (as joblib's ``Memory(None)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_FORMAT", "EmbeddingCache", "default_cache_dir"]

CACHE_FORMAT = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (
    fp TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    id TEXT PRIMARY KEY, fp TEXT NOT NULL, path TEXT NOT NULL, n INTEGER NOT NULL,
    checksum TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    fp TEXT NOT NULL, key TEXT NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (fp, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_by_shard ON vectors (shard);
"""
_CHUNK = 500  # keys per SELECT, below SQLite's host-parameter limit everywhere
_BUSY_TIMEOUT = 120.0  # seconds a connection waits for another process's lock


def default_cache_dir() -> str:
    """``$FEATX_CACHE_DIR`` if set, else ``./cache``."""
    return os.environ.get("FEATX_CACHE_DIR") or "cache"


def _checksum(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


class EmbeddingCache:
    """Embeddings on disk, keyed by backbone fingerprint and image content.

    Parameters
    ----------
    location : path or None
        The cache directory; ``None`` disables caching (every lookup misses, writes
        are dropped). A directory that cannot be written disables it with a warning.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from featx.cache import EmbeddingCache
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> cache.put("fp", ["k1", "k2"], np.ones((2, 4), np.float32))
    >>> found, vectors = cache.get("fp", ["k2", "k3"], dim=4)
    >>> found.tolist()
    [True, False]
    """

    def __init__(self, location: str | os.PathLike | None) -> None:
        self.location = None if location is None else Path(location)
        self.root = None if location is None else self.location / f"featx-v{CACHE_FORMAT}"
        self._local = threading.local()
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self._connect().executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                warnings.warn(
                    f"The cache directory {str(self.location)!r} cannot be used ({exc}); "
                    "embeddings will be computed but not cached. Pass cache_dir= a writable "
                    "folder, or cache_dir=None to silence this.",
                    stacklevel=3,
                )
                self.root = None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.root / "index.sqlite", timeout=_BUSY_TIMEOUT, isolation_level=None
            )
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reading ------------------------------------------------------------------------------

    def get(self, fingerprint: str, keys: list[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Look up ``keys``; return ``(found, vectors)`` with ``vectors[~found]`` left as zeros."""
        found = np.zeros(len(keys), dtype=bool)
        vectors = np.zeros((len(keys), dim), dtype=np.float32)
        if not self.enabled or not keys:
            return found, vectors
        positions: dict[str, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            positions[key].append(i)
        by_shard: dict[str, list[tuple[int, str]]] = defaultdict(list)
        unique = list(positions)
        conn = self._connect()
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            rows = conn.execute(
                f"SELECT key, shard, row FROM vectors WHERE fp = ? AND key IN "
                f"({','.join('?' * len(chunk))})",
                [fingerprint, *chunk],
            ).fetchall()
            for key, shard, row in rows:
                by_shard[shard].append((row, key))
        for shard, wanted in by_shard.items():
            data = self._read_shard(shard, dim)
            if data is None:
                continue
            for row, key in wanted:
                where = positions[key]
                vectors[where] = data[row]
                found[where] = True
        return found, vectors

    def _read_shard(self, shard: str, dim: int) -> np.ndarray | None:
        conn = self._connect()
        meta = conn.execute(
            "SELECT path, n, checksum FROM shards WHERE id = ?", (shard,)
        ).fetchone()
        problem = "its index entry is missing"
        if meta is not None:
            path, n, checksum = meta
            try:
                data = np.load(self.root / path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                problem = f"it cannot be read ({exc})"
            else:
                if data.shape != (n, dim) or data.dtype != np.float32:
                    problem = f"it has shape {data.shape} {data.dtype}, expected ({n}, {dim})"
                elif _checksum(data) != checksum:
                    problem = "its checksum does not match"
                else:
                    return data
        warnings.warn(
            f"Cache shard {shard} is dropped because {problem}; its images will be recomputed.",
            stacklevel=4,
        )
        self._drop_shard(shard)
        return None

    def _drop_shard(self, shard: str) -> None:
        conn = self._connect()
        with _Transaction(conn):
            row = conn.execute("SELECT path FROM shards WHERE id = ?", (shard,)).fetchone()
            conn.execute("DELETE FROM vectors WHERE shard = ?", (shard,))
            conn.execute("DELETE FROM shards WHERE id = ?", (shard,))
        if row is not None:
            (self.root / row[0]).unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------------

    def register(self, fingerprint: str, dim: int, spec: dict[str, Any]) -> None:
        """Record what a fingerprint stands for (shown by ``featx cache info``)."""
        if not self.enabled:
            return
        conn = self._connect()
        with _Transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?, ?)",
                (fingerprint, dim, json.dumps(spec, sort_keys=True), time.time()),
            )

    def put(self, fingerprint: str, keys: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]``: one shard file, one transaction."""
        if not self.enabled or not keys:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for {vectors.shape[0]} vectors")
        shard = uuid.uuid4().hex
        folder = self.root / "shards" / fingerprint[:16]
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"shards/{fingerprint[:16]}/{shard}.npy"
        tmp = folder / f".{shard}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / relative)
        _fsync_dir(folder)
        conn = self._connect()
        with _Transaction(conn):
            conn.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                (shard, fingerprint, relative, len(keys), _checksum(vectors), time.time()),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?)",
                [(fingerprint, key, shard, row) for row, key in enumerate(keys)],
            )

    # -- management ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the cache holds: per fingerprint its spec, vector count, shard count and bytes."""
        if not self.enabled:
            return {
                "location": None if self.location is None else str(self.location),
                "enabled": False,
                "fingerprints": [],
                "n_vectors": 0,
                "bytes": 0,
            }
        conn = self._connect()
        entries = []
        for fp, dim, spec in conn.execute(
            "SELECT fp, dim, spec FROM fingerprints ORDER BY created"
        ):
            n_vectors = conn.execute("SELECT COUNT(*) FROM vectors WHERE fp = ?", (fp,)).fetchone()[
                0
            ]
            paths = [p for (p,) in conn.execute("SELECT path FROM shards WHERE fp = ?", (fp,))]
            size = sum((self.root / p).stat().st_size for p in paths if (self.root / p).exists())
            entries.append(
                {
                    "fingerprint": fp,
                    "dim": dim,
                    "spec": json.loads(spec),
                    "n_vectors": n_vectors,
                    "n_shards": len(paths),
                    "bytes": size,
                }
            )
        total = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        return {
            "location": str(self.location),
            "enabled": True,
            "format": CACHE_FORMAT,
            "fingerprints": entries,
            "n_vectors": sum(e["n_vectors"] for e in entries),
            "bytes": total,
        }

    def clear(self) -> int:
        """Delete every cached vector; return how many there were."""
        if not self.enabled:
            return 0
        n = self._connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        self.close()
        shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self._connect().executescript(_SCHEMA)
        return n


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front, so concurrent
    writers wait on SQLite's busy timeout instead of failing mid-transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the database.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers
    SQLITE_BUSY at once, without its busy handler, to a connection that would deadlock
    waiting for it: two processes opening a new cache together would make one of them
    give up on caching ("database is locked").
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
