"""The on-disk embedding cache: immutable shards plus a SQLite index.

Layout under the cache directory (see ``cache/README.md``)::

    featx-v2/
        index.sqlite          # WAL-mode SQLite: fingerprints, shards, vectors
        shards/<fp[:16]>/<uuid>.npy   # vectors, meta (fingerprint, checksum), keys

A shard carries its rows' content keys and its fingerprint, so every read checks the
index's key -> row mapping against the shard, and a damaged index is rebuilt from the
shards. ``clear`` renames the cache aside under the write lock; a writer that finds its
index replaced writes its batch again into the new one.

A vector's key is ``(fingerprint, content key)``: the fingerprint covers the
network and the image policy, the content key is a hash of the image bytes.
Writing a batch is: the shard's records to a hidden temporary file, ``fsync``, atomic
``os.replace`` to its final name, then one SQLite transaction that records the
shard (with its checksum) and its rows. A process killed at any point leaves
either nothing, an unindexed temporary or shard file (ignored; removed by
``verify``), or a complete shard with its index rows; never an index row without
its vector. A write that fails (disk full) removes its own files.
SQLite's locking makes concurrent writers safe; ``INSERT OR IGNORE`` keeps the
first vector written for a key. Shards are checksummed; a shard that fails its
checksum or has vanished is dropped from the index and its images recomputed.

The index also remembers, for each image file read, its absolute path, its stat (device,
inode, size, modification and change times) and its content key, so that a later run
takes the key of a file whose stat has not changed without reading the file again (the
rule of git's index and of make; see :func:`featx._pipeline.file_key`). These rows are a
hint: losing them (a rebuilt index, an older index without the table, a read-only cache)
only means that files are read and hashed again.

``EmbeddingCache(None)`` is a disabled cache with the same interface, so callers
have one code path whether caching is on or off (as joblib's ``Memory(None)``).
"""

from __future__ import annotations

import contextlib
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

__all__ = [
    "CACHE_FORMAT",
    "FINGERPRINT_FORMAT",
    "SHARD_SUFFIX",
    "VERIFY_FINDINGS",
    "EmbeddingCache",
    "default_cache_dir",
    "resolve_cache_dir",
]

# The on-disk layout, named in the folder ``featx-v<CACHE_FORMAT>``. Format 1 kept only the
# vectors in a shard; format 2 keeps each row's content key and the fingerprint beside them,
# so a read checks the index's key -> row mapping and a lost index is rebuilt from the
# shards. A format-1 cache found beside a new one is migrated into it once.
CACHE_FORMAT = 2
# Part of every fingerprint (see featx._pipeline.extraction_spec): bumping it retires every
# cached vector. It is not the layout: a new layout keeps the vectors (they are migrated).
FINGERPRINT_FORMAT = 1
SHARD_SUFFIX = ".npy"  # three .npy records in one file: vectors, then meta, then keys
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (
    fp TEXT PRIMARY KEY, dim INTEGER NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL,
    n_computed INTEGER NOT NULL DEFAULT 0, compute_seconds REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS shards (
    id TEXT PRIMARY KEY, fp TEXT NOT NULL, path TEXT NOT NULL, n INTEGER NOT NULL,
    checksum TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    fp TEXT NOT NULL, key TEXT NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (fp, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_by_shard ON vectors (shard);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, stat TEXT NOT NULL, key TEXT NOT NULL) WITHOUT ROWID;
"""
_CHUNK = 500  # keys per SELECT, below SQLite's host-parameter limit everywhere
_BUSY_TIMEOUT = 120.0  # seconds a connection waits for another process's lock
_TEMP_SUFFIX = f"{SHARD_SUFFIX}.tmp"  # a shard being written: ``.<uuid>.npy.tmp``
_PUT_ATTEMPTS = 20  # a put that finds the cache cleared under it starts again, this often
# How old an unindexed file must be before verify() deletes it: younger ones may belong to
# a writer running right now, between its write and its index commit (which waits at most
# _BUSY_TIMEOUT for the lock).
VERIFY_GRACE_SECONDS = 600.0
# What verify() counts, each a key of its report (see its docstring).
VERIFY_FINDINGS = (
    "dangling_vectors",
    "bad_rows",
    "missing_shards",
    "unreadable_shards",
    "checksum_failures",
    "key_mismatches",
    "unreferenced_shards",
    "orphan_files",
    "temp_files",
)


def default_cache_dir() -> str:
    """``$FEATX_CACHE_DIR`` if set, else ``./cache``."""
    return os.environ.get("FEATX_CACHE_DIR") or "cache"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """What every ``cache_dir=`` option means: ``"auto"`` is :func:`default_cache_dir`,
    ``None`` (or the text ``"none"``) disables caching, anything else is a folder.

    Examples
    --------
    >>> from featx.cache import resolve_cache_dir
    >>> resolve_cache_dir(None), resolve_cache_dir("none"), resolve_cache_dir("/tmp/c")
    (None, None, PosixPath('/tmp/c'))
    """
    if cache_dir is None or (isinstance(cache_dir, str) and cache_dir.lower() == "none"):
        return None
    if isinstance(cache_dir, str) and cache_dir == "auto":
        return Path(default_cache_dir())
    return Path(cache_dir)


def _checksum(vectors: np.ndarray, keys: np.ndarray) -> str:
    """BLAKE2b of a shard's vectors and keys: it covers the key -> row mapping too."""
    digest = hashlib.blake2b(np.ascontiguousarray(vectors).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(keys).tobytes())
    return digest.hexdigest()


def _key_array(keys: list[str]) -> np.ndarray:
    return np.array([key.encode() for key in keys], dtype=np.bytes_)


class _ShardError(Exception):
    """A shard file that cannot be trusted: ``kind`` is a verify finding, ``problem`` words."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind, self.problem = kind, problem


def _write_shard(file: Any, vectors: np.ndarray, keys: np.ndarray, meta: dict) -> None:
    """Vectors first (``np.load(shard)`` gives them), then the meta JSON, then the keys."""
    np.save(file, vectors, allow_pickle=False)
    np.save(file, np.array(json.dumps(meta, sort_keys=True).encode()), allow_pickle=False)
    np.save(file, keys, allow_pickle=False)


def _load_shard(
    path: Path, n: int | None = None, dim: int | None = None, checksum: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(vectors, keys, meta)`` of a sound shard file, checked against what the index says
    (``n``, ``dim``, ``checksum``; None: not known) and against its own checksum; else
    :class:`_ShardError`."""
    try:
        with open(path, "rb") as f:
            vectors = np.lib.format.read_array(f, allow_pickle=False)
            meta_record = np.lib.format.read_array(f, allow_pickle=False)
            keys = np.lib.format.read_array(f, allow_pickle=False)
        meta = json.loads(bytes(meta_record.item()))
    except FileNotFoundError:
        raise _ShardError("missing_shards", "the file is missing") from None
    # EOFError: an empty file; ValueError: a truncated one or a bad header.
    except (OSError, ValueError, EOFError, TypeError, AttributeError) as exc:
        raise _ShardError("unreadable_shards", f"it cannot be read ({exc})") from None
    rows = vectors.shape[0] if vectors.ndim else -1
    shape_ok = vectors.ndim == 2 and n in (None, rows) and dim in (None, vectors.shape[1])
    if not shape_ok or vectors.dtype != np.float32:
        expected = f"({'n' if n is None else n}, {'dim' if dim is None else dim}) float32"
        problem = f"it has shape {vectors.shape} {vectors.dtype}, expected {expected}"
        raise _ShardError("unreadable_shards", problem)
    if keys.ndim != 1 or keys.dtype.kind != "S" or len(keys) != rows or not isinstance(meta, dict):
        raise _ShardError("unreadable_shards", "its keys or metadata are not in format 2")
    actual = _checksum(vectors, keys)
    if actual != meta.get("checksum") or checksum not in (None, actual):
        raise _ShardError("checksum_failures", "its checksum does not match")
    return vectors, keys, meta


class EmbeddingCache:
    """Embeddings on disk, keyed by backbone fingerprint and image content.

    Parameters
    ----------
    location : path, "auto" or None
        The cache directory (``"auto"``: :func:`default_cache_dir`); ``None`` disables
        caching (every lookup misses, writes are dropped). A directory that cannot be
        written disables it with a warning.

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
        self.location = resolve_cache_dir(location)
        self.root = None if self.location is None else self.location / f"featx-v{CACHE_FORMAT}"
        self._local = threading.local()
        self._unusable: str | None = None  # why a given location could not be used
        self._specs: dict[str, dict] = {}  # fingerprint -> spec, written into each shard
        self.read_only = False  # a cache that can be read but not written (a shared mount)
        self.rebuilt: str | None = None  # where a damaged index was moved aside, if it was
        if self.root is not None:
            try:
                self._open()
            except (OSError, sqlite3.Error) as exc:
                if not self._open_read_only(exc):
                    warnings.warn(
                        f"The cache directory {str(self.location)!r} cannot be used ({exc}); "
                        "embeddings will be computed but not cached. Pass cache_dir= a "
                        "writable folder, or cache_dir=None to silence this.",
                        stacklevel=3,
                    )
                    self.root = None
                    self._unusable = str(exc)
            else:
                self._migrate_format_1()

    def _open(self) -> None:
        """Open (or create) the index for reading and writing; a damaged one is rebuilt."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            conn.executescript(_SCHEMA)
            conn.execute("SELECT COUNT(*) FROM shards").fetchone()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._rebuild(exc)

    def _open_read_only(self, exc: BaseException) -> bool:
        """Serve an existing index that cannot be written (a read-only mount): True if so."""
        index = None if self.root is None else self.root / "index.sqlite"
        if index is None or not index.is_file():
            return False
        self.close()
        self.read_only = True
        try:
            self._connect().execute("SELECT COUNT(*) FROM vectors").fetchone()
        except sqlite3.Error:
            self.close()
            self.read_only = False
            return False
        warnings.warn(
            f"The cache {str(self.location)!r} cannot be written ({exc}); it is used read-only:"
            " cached vectors are read, the others computed and not stored.",
            stacklevel=4,
        )
        return True

    def _rebuild(self, exc: BaseException) -> None:
        """Move a damaged index (and its WAL files) aside, start a new one and fill it from
        the shard files, which carry their fingerprint and keys; say so once."""
        self.close()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.root / f"index.sqlite.damaged-{stamp}-{uuid.uuid4().hex[:6]}"
        for suffix in ("", "-wal", "-shm"):
            path = self.root / f"index.sqlite{suffix}"
            if path.exists():
                os.replace(path, f"{aside}{suffix}")
        self.rebuilt = str(aside)
        self._connect().executescript(_SCHEMA)
        n_shards, n_vectors, n_bad = self._reindex()
        unusable = f"; {n_bad} shard files that failed their checks were left out" if n_bad else ""
        warnings.warn(
            f"The cache index {str(self.root / 'index.sqlite')!r} was damaged ({exc}). It was "
            f"moved aside to {str(aside)!r} and rebuilt from the shard files: {n_vectors} "
            f"vectors in {n_shards} shards are kept{unusable}.",
            stacklevel=4,
        )

    def _reindex(self) -> tuple[int, int, int]:
        """Index every sound shard file; return (shards, vectors, files left out)."""
        conn = self._connect()
        n_shards = n_vectors = n_bad = 0
        for path in sorted((self.root / "shards").glob(f"*/*{SHARD_SUFFIX}")):
            if path.name.startswith("."):
                continue
            try:
                vectors, keys, meta = _load_shard(path)
                fp, checksum = str(meta["fingerprint"]), meta["checksum"]
                created = path.stat().st_mtime
            except (_ShardError, KeyError, OSError):
                n_bad += 1  # left on disk as an orphan: verify removes it
                continue
            shard, relative = path.stem, path.relative_to(self.root).as_posix()
            rows = [(fp, key.decode(), shard, row) for row, key in enumerate(keys.tolist())]
            with _Transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO fingerprints (fp, dim, spec, created) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        fp,
                        vectors.shape[1],
                        json.dumps(meta.get("spec", {}), sort_keys=True),
                        created,
                    ),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        shard,
                        fp,
                        relative,
                        len(keys),
                        checksum,
                        created,
                    ),
                )
                n_vectors += conn.executemany(
                    "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?)", rows
                ).rowcount
            n_shards += 1
        return n_shards, n_vectors, n_bad

    def _migrate_format_1(self) -> None:
        """Move the vectors of a format-1 cache beside this one into it, once, then remove it.

        Format 1 shards hold no keys, so the old index's key -> row mapping is taken as it is
        (each shard's checksum is checked first). Processes opening the cache together take
        turns on a lock file; a migration cut short is resumed by the next open (vectors
        already moved are not written twice)."""
        old = self.location / "featx-v1"
        if not (old / "index.sqlite").is_file():
            return
        try:
            with open(self.root / ".migrating.lock", "a") as lock:
                _lock_exclusive(lock)
                if not (old / "index.sqlite").is_file():  # another process finished it
                    return
                moved, lost = self._copy_format_1(old)
                aside = self.location / f".featx-v1.migrated-{uuid.uuid4().hex[:6]}"
                os.replace(old, aside)
            _remove_tree(aside)
        except (OSError, sqlite3.Error) as exc:
            warnings.warn(
                f"The format-1 cache {str(old)!r} could not be migrated to format 2 ({exc}); "
                "it is left as it is and its vectors will be computed again. Delete that "
                "folder to silence this.",
                stacklevel=4,
            )
            return
        left_out = f"; {lost} whose shards failed their checks were left out" if lost else ""
        warnings.warn(
            f"The cache {str(self.location)!r} was in format 1; {moved} vectors were moved to "
            f"format 2 (shards that carry their keys){left_out}.",
            stacklevel=4,
        )

    def _copy_format_1(self, old: Path) -> tuple[int, int]:
        from urllib.parse import quote

        source = sqlite3.connect(
            f"file:{quote(str(old / 'index.sqlite'))}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT
        )
        moved = lost = 0
        try:
            conn = self._connect()
            fingerprints = source.execute("SELECT fp, dim, spec, created FROM fingerprints")
            with _Transaction(conn):
                conn.executemany(
                    "INSERT OR IGNORE INTO fingerprints (fp, dim, spec, created) "
                    "VALUES (?, ?, ?, ?)",
                    fingerprints.fetchall(),
                )
            shards = source.execute("SELECT id, fp, path, n, checksum FROM shards").fetchall()
            for shard, fp, relative, n, checksum in shards:
                pairs = source.execute(
                    "SELECT key, row FROM vectors WHERE shard = ? AND fp = ? AND row >= 0 "
                    "AND row < ? ORDER BY row",
                    (shard, fp, n),
                ).fetchall()
                try:
                    data = np.load(old / relative, allow_pickle=False)
                    sound = data.shape[0] == n and data.dtype == np.float32 and data.ndim == 2
                    digest = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()
                except (OSError, ValueError, EOFError):
                    sound, digest = False, None
                if not sound or digest != checksum:
                    lost += len(pairs)
                    continue
                keys = [key for key, _ in pairs]
                have = self.get(fp, keys, data.shape[1])[0]
                wanted = [i for i in range(len(pairs)) if not have[i]]
                if wanted:
                    rows = np.array([pairs[i][1] for i in wanted])
                    self.put(fp, [keys[i] for i in wanted], data[rows])
                moved += len(pairs)
        finally:
            source.close()
        return moved, lost

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            path = self.root / "index.sqlite"
            if self.read_only:  # no journal, no lock files: nothing is written
                from urllib.parse import quote

                conn = sqlite3.connect(
                    f"file:{quote(str(path))}?mode=ro&immutable=1",
                    uri=True,
                    timeout=_BUSY_TIMEOUT,
                    isolation_level=None,
                )
            else:
                conn = self._connect_writable(path)
            self._local.conn = conn
        return conn

    def _connect_writable(self, path: Path) -> sqlite3.Connection:
        """Connect to the index at ``path`` and record which file it is.

        A clear in another process may move the cache aside at any moment. The file is
        identified before and after connecting, and only a connection made while the
        same file stayed in place is kept: otherwise the identity recorded could be the
        new index's while the connection is the old one's (and this process would never
        see that it was cleared), or SQLite's journal could land beside another index
        ("disk I/O error"). A change seen meanwhile means connecting again.
        """
        for attempt in range(_PUT_ATTEMPTS):
            before = _identity(path)
            conn = None
            try:
                conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError:
                if conn is not None:
                    conn.close()
                if _identity(path) == before or attempt == _PUT_ATTEMPTS - 1:
                    raise  # not a race with a clear: a real error
                self.root.mkdir(parents=True, exist_ok=True)
                continue
            after = _identity(path)
            if before is not None and after == before:
                self._local.identity = after
                return conn
            conn.close()  # created just now, or replaced meanwhile: once more, to be sure
            self.root.mkdir(parents=True, exist_ok=True)
        raise sqlite3.OperationalError(
            f"the cache index {str(path)!r} kept being replaced while it was opened "
            f"({_PUT_ATTEMPTS} attempts): another process is clearing it in a loop"
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._local.identity = None

    def _replaced(self) -> bool:
        """Whether the index this thread is connected to is no longer the cache's index
        (another process cleared the cache, or rebuilt a damaged index, meanwhile)."""
        identity = getattr(self._local, "identity", None)
        return identity is not None and _identity(self.root / "index.sqlite") != identity

    def _reconnect_if_replaced(self) -> None:
        if self._replaced():
            self.close()
            self._open()

    # -- reading ------------------------------------------------------------------------------

    def get(self, fingerprint: str, keys: list[str], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Look up ``keys``; return ``(found, vectors)`` with ``vectors[~found]`` left as zeros."""
        vectors = np.zeros((len(keys), dim), dtype=np.float32)
        return self.read_into(fingerprint, keys, vectors), vectors

    def read_into(self, fingerprint: str, keys: list[str], out: Any) -> np.ndarray:
        """Write the cached vector of ``keys[i]`` into ``out[i]``; return which were found.

        ``out`` is anything of shape ``(len(keys), dim)`` that takes ``out[rows] = vectors``
        with an integer array ``rows``: an array, or a :class:`~featx.embeddings.NpyRowWriter`
        filling a file larger than memory. Rows of keys not found are left untouched.
        Each shard file is read once, whatever the order of ``keys``, and memory holds one
        shard at a time besides the key lookup tables (about 200 bytes a key).
        """
        return self._read_into(fingerprint, keys, out, may_rebuild=True)

    def _read_into(
        self, fingerprint: str, keys: list[str], out: Any, may_rebuild: bool
    ) -> np.ndarray:
        dim = int(out.shape[1])
        found = np.zeros(len(keys), dtype=bool)
        if not self.enabled or not keys:
            return found
        self._reconnect_if_replaced()
        first: dict[str, int] = {}
        repeats: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key in first:
                repeats.setdefault(key, []).append(i)
            else:
                first[key] = i
        by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)
        unique = list(first)
        conn = self._connect()
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            try:
                rows = conn.execute(
                    f"SELECT key, shard, row FROM vectors WHERE fp = ? AND key IN "
                    f"({','.join('?' * len(chunk))})",
                    [fingerprint, *chunk],
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc) or self.read_only or not may_rebuild:
                    raise
                self._rebuild(exc)  # then look again, in the index rebuilt from the shards
                return self._read_into(fingerprint, keys, out, may_rebuild=False)
            for key, shard, row in rows:
                by_shard[shard].append((row, first[key]))
                for i in repeats.get(key, ()):  # the same image given more than once
                    by_shard[shard].append((row, i))
        del unique
        for shard in list(by_shard):
            wanted = by_shard.pop(shard)
            loaded = self._read_shard(shard, dim)
            if loaded is None:
                continue
            data, shard_keys = loaded
            source = np.fromiter((row for row, _ in wanted), np.int64, len(wanted))
            target = np.fromiter((i for _, i in wanted), np.int64, len(wanted))
            expected = _key_array([keys[i] for i in target])
            mismatched = shard_keys[source] != expected
            if mismatched.any():  # the index's rows are wrong: trust the shard's own keys
                source, target = self._correct_rows(
                    fingerprint, shard, shard_keys, source, target, expected, mismatched
                )
            out[target] = data[source]
            found[target] = True
        return found

    def _correct_rows(
        self,
        fingerprint: str,
        shard: str,
        shard_keys: np.ndarray,
        source: np.ndarray,
        target: np.ndarray,
        expected: np.ndarray,
        mismatched: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of a shard whose index entries name the wrong row: find each key in the
        shard itself, fix (or drop) its index row, and return the rows to read."""
        where = {key: row for row, key in enumerate(shard_keys.tolist())}
        fixes, drops = {}, set()
        keep = ~mismatched
        source = source.copy()
        for j in np.flatnonzero(mismatched):
            key = expected[j]
            if key in where:
                source[j] = where[key]
                keep[j] = True
                fixes[key.decode()] = where[key]
            else:
                drops.add(key.decode())
        warnings.warn(
            f"The cache index named the wrong rows of shard {shard} for {int(mismatched.sum())}"
            f" images; the shard's own keys were used ({len(fixes)} found, {len(drops)} to "
            "compute again) and the index was corrected.",
            stacklevel=4,
        )
        if not self.read_only:
            conn = self._connect()
            with _Transaction(conn):
                conn.executemany(
                    "UPDATE vectors SET row = ? WHERE fp = ? AND key = ? AND shard = ?",
                    [(row, fingerprint, key, shard) for key, row in fixes.items()],
                )
                conn.executemany(
                    "DELETE FROM vectors WHERE fp = ? AND key = ? AND shard = ?",
                    [(fingerprint, key, shard) for key in drops],
                )
        return source[keep], target[keep]

    def _read_shard(self, shard: str, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A shard's ``(vectors, keys)``, checked; None (with a warning, and the shard
        dropped) if it cannot be trusted."""
        conn = self._connect()
        meta = conn.execute(
            "SELECT path, n, checksum FROM shards WHERE id = ?", (shard,)
        ).fetchone()
        problem = "its index entry is missing"
        if meta is not None:
            path, n, checksum = meta
            try:
                data, keys, _ = _load_shard(self.root / path, n, dim, checksum)
            except _ShardError as exc:
                if exc.kind == "missing_shards" and self._replaced():
                    return None  # the cache was cleared meanwhile: nothing to warn about
                problem = exc.problem
            else:
                return data, keys
        warnings.warn(
            f"Cache shard {shard} is dropped because {problem}; its images will be recomputed.",
            stacklevel=4,
        )
        self._drop_shard(shard)
        return None

    def _drop_shard(self, shard: str) -> int:
        """Remove a shard's rows and file; return how many vector rows went with it."""
        if self.read_only:  # its images are computed again, and the cache is left as it is
            return 0
        conn = self._connect()
        with _Transaction(conn):
            row = conn.execute("SELECT path FROM shards WHERE id = ?", (shard,)).fetchone()
            dropped = conn.execute("DELETE FROM vectors WHERE shard = ?", (shard,)).rowcount
            conn.execute("DELETE FROM shards WHERE id = ?", (shard,))
        if row is not None:
            (self.root / row[0]).unlink(missing_ok=True)
        return dropped

    def file_keys(self, paths: list[str]) -> dict[str, tuple[str, str]]:
        """The ``(stat, content key)`` remembered for each of ``paths`` (absolute) that has
        one; empty when the cache is off or its index has no such rows to give."""
        if not self.enabled or not paths:
            return {}
        known: dict[str, tuple[str, str]] = {}
        try:
            self._reconnect_if_replaced()
            conn = self._connect()
            for start in range(0, len(paths), _CHUNK):
                # The file system's bytes: a name that is not UTF-8 has no SQLite text.
                chunk = [os.fsencode(p) for p in paths[start : start + _CHUNK]]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT path, stat, key FROM files WHERE path IN ({marks})", chunk
                )
                known.update((os.fsdecode(path), (stat, key)) for path, stat, key in rows)
        except (OSError, sqlite3.Error):  # e.g. a read-only index written by an older featx
            return {}
        return known

    # -- writing ------------------------------------------------------------------------------

    def register(self, fingerprint: str, dim: int, spec: dict[str, Any]) -> None:
        """Record what a fingerprint stands for (shown by ``featx cache info``)."""
        if not self.enabled or self.read_only:
            return
        self._specs[fingerprint] = json.loads(json.dumps(spec, sort_keys=True))
        conn = self._connect()
        with _Transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO fingerprints (fp, dim, spec, created) VALUES (?, ?, ?, ?)",
                (fingerprint, dim, json.dumps(spec, sort_keys=True), time.time()),
            )

    def record_cost(self, fingerprint: str, n_computed: int, seconds: float) -> None:
        """Add a run's compute time, so the cost per image is known even when all is cached."""
        if not self.enabled or self.read_only or n_computed <= 0:
            return
        conn = self._connect()
        with _Transaction(conn):
            conn.execute(
                "UPDATE fingerprints SET n_computed = n_computed + ?, "
                "compute_seconds = compute_seconds + ? WHERE fp = ?",
                (n_computed, seconds, fingerprint),
            )

    def dim(self, fingerprint: str) -> int | None:
        """The vector length recorded for ``fingerprint`` (None if it was never registered):
        a run served from the cache needs it before, or instead of, building the network."""
        if not self.enabled or not (self.root / "index.sqlite").exists():
            return None
        row = (
            self._connect()
            .execute("SELECT dim FROM fingerprints WHERE fp = ?", (fingerprint,))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def seconds_per_image(self, fingerprint: str) -> float | None:
        """Mean wall time per computed image under ``fingerprint`` (None if never computed)."""
        if not self.enabled:
            return None
        row = (
            self._connect()
            .execute(
                "SELECT n_computed, compute_seconds FROM fingerprints WHERE fp = ?", (fingerprint,)
            )
            .fetchone()
        )
        return None if row is None or not row[0] else row[1] / row[0]

    def remember_file_keys(self, entries: list[tuple[str, str, str]]) -> None:
        """Remember ``(absolute path, stat, content key)`` of files just read (see
        :meth:`file_keys`); nothing is lost but the hint if that cannot be written."""
        if not self.enabled or self.read_only or not entries:
            return
        try:
            self._reconnect_if_replaced()
            conn = self._connect()
            with _Transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO files (path, stat, key) VALUES (?, ?, ?)",
                    [(os.fsencode(path), stat, key) for path, stat, key in entries],
                )
        except (OSError, sqlite3.Error):  # a full disk, a lock held past the timeout
            pass

    def put(self, fingerprint: str, keys: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]``: one shard file, one transaction.

        A read-only cache stores nothing (it said so once, when opened). If another process
        clears the cache meanwhile, the batch is written again into the new cache."""
        if not self.enabled or self.read_only or not keys:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(keys):
            raise ValueError(
                f"EmbeddingCache.put got {len(keys)} content keys but {vectors.shape[0]} "
                f"vectors (array of shape {vectors.shape}); it stores vectors[i] under "
                "keys[i], so pass one key per row of vectors."
            )
        key_array = _key_array(keys)
        checksum = _checksum(vectors, key_array)
        meta = {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "spec": self._spec(fingerprint),
            "checksum": checksum,
        }
        for attempt in range(_PUT_ATTEMPTS):
            self._reconnect_if_replaced()
            try:
                shard, relative = self._write_file(fingerprint, vectors, key_array, meta)
            except OSError:
                if attempt + 1 < _PUT_ATTEMPTS and self._replaced():
                    continue  # its folder was moved away by a clear: write it again
                raise
            try:
                conn = self._connect()
                with _Transaction(conn):
                    if self._replaced() or not (self.root / relative).exists():
                        raise _ClearedError
                    conn.execute(
                        "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                        (shard, fingerprint, relative, len(keys), checksum, time.time()),
                    )
                    conn.executemany(
                        "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?)",
                        [(fingerprint, key, shard, row) for row, key in enumerate(keys)],
                    )
                return
            except _ClearedError:
                # The cache was cleared between the file and the commit: the file went with
                # the old cache (or is unindexed in the new one), so write the batch again.
                _unlink_quietly(self.root / relative)
                continue
            except BaseException:
                self._discard_unindexed(shard, relative)
                raise
        raise OSError(
            f"The cache {str(self.location)!r} was cleared {_PUT_ATTEMPTS} times while one "
            "batch was being written; it is not cached."
        )

    def _spec(self, fingerprint: str) -> dict:
        """What ``fingerprint`` stands for, as registered (kept in each shard for rebuilds)."""
        if fingerprint not in self._specs:
            row = (
                self._connect()
                .execute("SELECT spec FROM fingerprints WHERE fp = ?", (fingerprint,))
                .fetchone()
            )
            self._specs[fingerprint] = {} if row is None else json.loads(row[0])
        return self._specs[fingerprint]

    def _write_file(
        self, fingerprint: str, vectors: np.ndarray, keys: np.ndarray, meta: dict
    ) -> tuple[str, str]:
        """Write a shard file under a temporary name, then move it into place."""
        shard = uuid.uuid4().hex
        folder = self.root / "shards" / fingerprint[:16]
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"shards/{fingerprint[:16]}/{shard}{SHARD_SUFFIX}"
        tmp = folder / f".{shard}{_TEMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                _write_shard(f, vectors, keys, meta)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / relative)
        except BaseException:
            # Disk full or interrupted mid-write: leave no partial temporary file behind.
            _unlink_quietly(tmp)
            raise
        _fsync_dir(folder)
        return shard, relative

    def _discard_unindexed(self, shard: str, relative: str) -> None:
        """Delete the file of a shard whose index transaction failed (it was rolled back).

        Only once the index is seen not to hold the shard; if even that cannot be read,
        the file stays, an orphan that :meth:`verify` removes later.
        """
        try:
            indexed = (
                self._connect().execute("SELECT 1 FROM shards WHERE id = ?", (shard,)).fetchone()
            )
        except sqlite3.Error:
            return
        if indexed is None:
            _unlink_quietly(self.root / relative)

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
        query = (
            "SELECT fp, dim, spec, n_computed, compute_seconds FROM fingerprints ORDER BY created"
        )
        for fp, dim, spec, n_computed, seconds in conn.execute(query):
            count = "SELECT COUNT(*) FROM vectors WHERE fp = ?"
            n_vectors = conn.execute(count, (fp,)).fetchone()[0]
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
                    "ms_per_image": round(1000 * seconds / n_computed, 3) if n_computed else None,
                }
            )
        total = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        return {
            "location": str(self.location),
            "enabled": True,
            "read_only": self.read_only,
            "format": CACHE_FORMAT,
            "fingerprints": entries,
            "n_vectors": sum(e["n_vectors"] for e in entries),
            "bytes": total,
        }

    def clear(self) -> int:
        """Delete every cached vector; return how many there were.

        Raises
        ------
        PermissionError
            If the cache is read-only (nothing can be deleted there).
        """
        if self.read_only:
            raise PermissionError(
                f"The cache {str(self.location)!r} is read-only (it could not be opened for "
                "writing), so it cannot be cleared. Clear it where it is writable, or use "
                "another --cache-dir."
            )
        if not self.enabled:
            return 0
        self._reconnect_if_replaced()
        conn = self._connect()
        aside = self.location / f".featx-v{CACHE_FORMAT}.cleared-{uuid.uuid4().hex[:8]}"
        # Under the write lock no other process is between its check and its commit, so a
        # writer either committed before the move (and is cleared) or sees the move.
        with _Transaction(conn):
            n = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            os.replace(self.root, aside)
        self.close()
        self._open()
        for leftover in self.location.glob(f".featx-v{CACHE_FORMAT}.cleared-*"):
            _remove_tree(leftover)  # this one, and any an interrupted clear left
        return n

    def verify(self, repair: bool = True, *, grace: float = VERIFY_GRACE_SECONDS) -> dict[str, Any]:
        """Check the shard files against the index and, with ``repair``, fix what is wrong.

        What is checked:

        - SQLite's ``PRAGMA integrity_check`` of the index;
        - every vector row points at a shard row, at a row that shard has
          (``dangling_vectors``, ``bad_rows``);
        - every shard file exists (``missing_shards``), loads as float32 of the recorded
          shape ``(n, dim)`` (``unreadable_shards``) and matches its checksum
          (``checksum_failures``);
        - every shard row is used by some vector row (``unreferenced_shards``: the losers
          of processes that computed the same images at the same time);
        - every shard file has a shard row (``orphan_files``: left by a process killed
          between writing a shard and committing its index rows), and no temporary
          ``.<uuid>.npy.tmp`` file is left (``temp_files``: a process killed mid-write).

        With ``repair``, the rows of bad or missing shards are dropped (the next run
        recomputes their images), unreferenced shards, orphan and temporary files are
        deleted. An orphan or temporary file younger than ``grace`` seconds (by mtime) may
        belong to a writer running right now in another process: it is left alone and
        counted as pending, which is not a problem. Pass ``grace=0`` to delete them too,
        when no other process is using the cache.

        Returns
        -------
        dict
            JSON-ready: ``ok`` (no problem left), ``integrity`` (``"ok"`` or SQLite's
            message), ``n_vectors`` and ``n_shards`` after repair, the count of each
            problem found, ``vectors_dropped``, ``shards_dropped``,
            ``orphan_files_removed``, ``temp_files_removed``, ``orphan_files_pending``,
            ``temp_files_pending``, and ``problems``, a few of them in words.

        Examples
        --------
        >>> import numpy as np, tempfile
        >>> from featx.cache import EmbeddingCache
        >>> cache = EmbeddingCache(tempfile.mkdtemp())
        >>> cache.put("fp", ["k1", "k2"], np.ones((2, 4), np.float32))
        >>> report = cache.verify()
        >>> report["ok"], report["n_vectors"], report["n_shards"]
        (True, 2, 1)
        """
        for _ in range(_PUT_ATTEMPTS):
            report = self._verify_report(repair, grace)
            if not (self.enabled and self._replaced()):
                break
            # Cleared by another process meanwhile: what was checked is gone, and findings
            # such as missing shards were the clear's doing. Check the new cache instead.
            self._reconnect_if_replaced()
        return report

    def _verify_report(self, repair: bool, grace: float) -> dict[str, Any]:
        report: dict[str, Any] = {
            "location": None if self.location is None else str(self.location),
            "enabled": self.enabled,
            "ok": True,
            "repaired": bool(repair) and self.enabled and not self.read_only,
            "read_only": self.read_only,
            "index_rebuilt": self.rebuilt,
            "integrity": "ok",
            "n_vectors": 0,
            "n_shards": 0,
            **dict.fromkeys(VERIFY_FINDINGS, 0),
            "vectors_dropped": 0,
            "shards_dropped": 0,
            "orphan_files_removed": 0,
            "temp_files_removed": 0,
            "orphan_files_pending": 0,
            "temp_files_pending": 0,
            "problems": [],
        }
        if self._unusable is not None:
            report["ok"] = False
            report["problems"].append(f"the cache cannot be used: {self._unusable}")
        if not self.enabled:
            return report
        repair = bool(repair) and not self.read_only
        try:
            fixed = self._verify(report, repair, grace)
        except sqlite3.DatabaseError as exc:  # a repair could not be written, say
            report["ok"] = False
            report["problems"].append(f"the index cannot be read or written: {exc}")
            return report
        found = sum(report[name] for name in VERIFY_FINDINGS)
        sound = report["integrity"] == "ok" or report["index_rebuilt"] is not None
        report["ok"] = sound and found == fixed
        return report

    def _verify(self, report: dict[str, Any], repair: bool, grace: float) -> int:
        """The work of :meth:`verify`: fill ``report``, return how many findings were fixed."""
        problems: list[str] = report["problems"]

        def note(message: str) -> None:
            if len(problems) < 20:
                problems.append(message)

        # Files first, then the index: a file renamed into place after this listing is
        # not seen at all, and one renamed before it is judged on a later index read.
        now = time.time()
        shard_files: dict[str, tuple[Path, float]] = {}
        temp_files: list[tuple[Path, float]] = []
        try:
            listing = sorted((self.root / "shards").glob("*/*"))
        except OSError:  # a folder removed while listed: the cache was cleared meanwhile
            listing = []
        for path in listing:
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # removed meanwhile by another process
                continue
            if path.name.startswith(".") and path.name.endswith(_TEMP_SUFFIX):
                temp_files.append((path, mtime))
            elif path.name.endswith(".npy") and not path.name.startswith("."):
                shard_files[path.relative_to(self.root).as_posix()] = (path, mtime)

        conn = self._connect()
        try:
            checks = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.DatabaseError as exc:  # "database disk image is malformed"
            checks = [str(exc)]
        if checks != ["ok"]:
            report["integrity"] = "; ".join(checks[:10])
            note(f"SQLite integrity check: {report['integrity']}")
            if not repair:
                return 0
            # Repaired by moving it aside and rebuilding it from the shard files.
            self._rebuild(sqlite3.DatabaseError(report["integrity"]))
            report["index_rebuilt"] = self.rebuilt
            conn = self._connect()
            known_now = {p for (p,) in conn.execute("SELECT path FROM shards")}
            shard_files = {k: v for k, v in shard_files.items() if k not in known_now}
        fixed = 0

        row_checks = {
            "dangling_vectors": (
                "NOT EXISTS (SELECT 1 FROM shards s WHERE s.id = vectors.shard)",
                "vector rows point at no shard",
            ),
            "bad_rows": (
                "EXISTS (SELECT 1 FROM shards s WHERE s.id = vectors.shard "
                "AND (vectors.row < 0 OR vectors.row >= s.n OR vectors.fp != s.fp))",
                "vector rows point outside their shard",
            ),
        }
        for name, (where, what) in row_checks.items():
            n = conn.execute(f"SELECT COUNT(*) FROM vectors WHERE {where}").fetchone()[0]
            report[name] = n
            if n:
                note(f"{n} {what}")
            if n and repair:
                with _Transaction(conn):
                    gone = conn.execute(f"DELETE FROM vectors WHERE {where}").rowcount
                report["vectors_dropped"] += gone
                fixed += n

        dims = dict(conn.execute("SELECT fp, dim FROM fingerprints").fetchall())
        handled: set[str] = set()
        for shard, fp, relative, n, checksum in conn.execute(
            "SELECT id, fp, path, n, checksum FROM shards ORDER BY created"
        ).fetchall():
            try:
                _, keys, _ = _load_shard(self.root / relative, n, dims.get(fp), checksum)
            except _ShardError as exc:
                gone = conn.execute("SELECT 1 FROM shards WHERE id = ?", (shard,)).fetchone()
                if exc.kind == "missing_shards" and gone is None:
                    continue  # removed meanwhile by another verify (an unused shard)
                report[exc.kind] += 1
                note(f"shard {relative}: {exc.problem}")
                if repair:
                    report["vectors_dropped"] += self._drop_shard(shard)
                    report["shards_dropped"] += 1
                    handled.add(relative)
                    fixed += 1
                continue
            fixed += self._verify_keys(conn, shard, relative, keys, report, repair, note)

        unreferenced = conn.execute(
            "SELECT id, path FROM shards s WHERE NOT EXISTS "
            "(SELECT 1 FROM vectors v WHERE v.shard = s.id)"
        ).fetchall()
        report["unreferenced_shards"] = len(unreferenced)
        if unreferenced:
            note(f"{len(unreferenced)} shards are used by no vector row")
        for shard, relative in unreferenced if repair else []:
            # Committed rows never gain vectors later, so no grace period is needed here.
            with _Transaction(conn):
                gone = conn.execute(
                    "DELETE FROM shards WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM vectors WHERE shard = ?)",
                    (shard, shard),
                ).rowcount
            if gone:
                _unlink_quietly(self.root / relative)
                report["shards_dropped"] += 1
                handled.add(relative)
            fixed += 1

        known = handled | {path for (path,) in conn.execute("SELECT path FROM shards")}
        stale = now - grace
        for kind, candidates in (
            ("orphan_files", [v for k, v in shard_files.items() if k not in known]),
            ("temp_files", temp_files),
        ):
            for path, mtime in candidates:
                if mtime > stale:
                    report[f"{kind}_pending"] += 1
                    continue
                report[kind] += 1
                note(f"{path.relative_to(self.root).as_posix()} is not in the index")
                if not repair:
                    continue
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    note(f"cannot delete {path}: {exc}")
                    continue
                report[f"{kind}_removed"] += 1
                fixed += 1

        report["n_vectors"] = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        report["n_shards"] = conn.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
        return fixed

    def _verify_keys(self, conn, shard, relative, keys, report, repair, note) -> int:
        """Check a sound shard's index rows against the keys it holds; fix wrong rows (to the
        row that holds the key, or dropped if none does). Returns how many were fixed."""
        where = {key.decode(): row for row, key in enumerate(keys.tolist())}
        wrong = [
            (fp, key, where.get(key))
            for fp, key, row in conn.execute(
                # Rows outside the shard are counted (and fixed) as bad_rows already.
                "SELECT fp, key, row FROM vectors WHERE shard = ? AND row >= 0 AND row < ?",
                (shard, len(keys)),
            )
            if where.get(key) != row
        ]
        if not wrong:
            return 0
        report["key_mismatches"] += len(wrong)
        note(f"shard {relative}: {len(wrong)} index rows name a row that holds another image")
        if not repair:
            return 0
        with _Transaction(conn):
            for fp, key, row in wrong:
                if row is None:
                    conn.execute(
                        "DELETE FROM vectors WHERE fp = ? AND key = ? AND shard = ?",
                        (fp, key, shard),
                    )
                    report["vectors_dropped"] += 1
                else:
                    conn.execute(
                        "UPDATE vectors SET row = ? WHERE fp = ? AND key = ? AND shard = ?",
                        (row, fp, key, shard),
                    )
        return len(wrong)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front, so concurrent
    writers wait on SQLite's busy timeout instead of failing mid-transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (SQLITE_FULL, SQLITE_IOERR): a second
        # ROLLBACK would then raise and hide the error that matters.
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")


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


class _ClearedError(Exception):
    """The cache was cleared (its root moved away) while a batch was being written."""


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is now (device, inode); None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _lock_exclusive(file: Any) -> None:
    """Wait for an exclusive lock on an open file (released when it is closed)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; migrations may then run twice
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)


def _remove_tree(path: Path) -> None:
    """Delete a folder moved aside; a file another process adds meanwhile is retried."""
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05)


def _is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the index file itself is damaged (not busy, not denied)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text
    )


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


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
