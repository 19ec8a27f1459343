"""Embeddings: the hub of featx's flow, and their files.

Everything after extraction (heads, evaluation, projection, reports, audits) takes an
:class:`Embeddings`: the vectors of a set of images in input order, with their labels,
paths, failures and the fingerprint of the network that made them.

Files. :meth:`Embeddings.save` writes one ``.npz`` (readable by plain ``np.load``), a
``.parquet`` table (one row per image: ``index``, ``path``, ``label`` and an ``embedding``
vector column, for pandas, Spark or DuckDB; needs pyarrow), or a folder holding ``X.npy``
(memory-mappable) and ``meta.npz`` (everything else), which is also what
``Extractor.extract(out=FOLDER)`` streams into. All three are read by
:meth:`Embeddings.load`.

Sets larger than memory. A million 1280-d float32 embeddings take 5.1 GB.
:class:`NpyRowWriter` writes rows into a ``.npy`` file with ``os.pwrite`` (rows in any
order, each contiguous run in one call), and :func:`iter_chunks` reads a memory-mapped
array a block of rows at a time. Neither keeps the file's pages mapped in the process:
pages written through a memory map, or read through one, count in the process's resident
memory until they are unmapped, so a process that touched a whole 5 GB memmap would
*look* 5 GB large even though the kernel may drop those pages at will. Here they stay in
the page cache, outside the process.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from featx.embeddings import NpyRowWriter, iter_chunks
>>> path = os.path.join(tempfile.mkdtemp(), "X.npy")
>>> with NpyRowWriter(path, shape=(5, 3)) as writer:
...     writer[np.array([4, 0])] = np.ones((2, 3), np.float32)
>>> X = np.load(path, mmap_mode="r")
>>> [chunk.sum() for _, chunk in iter_chunks(X, 2)]
[np.float32(3.0), np.float32(0.0), np.float32(3.0)]
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHUNK_ROWS",
    "EMBEDDINGS_META",
    "EMBEDDINGS_X",
    "Embeddings",
    "FolderWriter",
    "NpyRowWriter",
    "check_labelled",
    "iter_chunks",
    "parquet_available",
    "release",
]


@dataclass(repr=False)
class Embeddings:
    """The result of an extraction, rows in input order.

    Attributes
    ----------
    X : ndarray of shape (n, dim), float32
        One embedding per successfully read input.
    y : ndarray of shape (n,) or None
        Integer labels indexing ``classes``, where the source has labels.
    classes : list of str or None
        Class names (folder names, or the sorted distinct labels).
    paths : list of str or None
        The file of each row, where inputs are files.
    index : ndarray of shape (n,)
        Position of each row in the source (differs from ``arange(n)`` when inputs failed).
    failed : list of (name, reason)
        Inputs left out (``on_error="skip"``), with why.
    fingerprint : str
        Hash of everything about the network and image policy that changes the vectors.
    spec : dict
        What the fingerprint covers, readable.
    cache_hits, cache_misses : int
        Inputs read from the cache, and inputs computed by the network.
    seconds : float
        Wall time of the extraction.
    """

    X: np.ndarray
    y: np.ndarray | None
    classes: list[str] | None
    paths: list[str] | None
    index: np.ndarray
    failed: list[tuple[str, str]]
    fingerprint: str
    spec: dict[str, Any]
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.X)

    def __repr__(self) -> str:
        """One line: shape, classes, fingerprint (``print`` shows it too), never every row.

        Examples
        --------
        >>> import numpy as np
        >>> from featx.embeddings import Embeddings
        >>> labels = [str(i % 12) for i in range(300)]
        >>> Embeddings.from_arrays(np.zeros((300, 8), np.float32), labels)
        Embeddings(300 x 8 float32, 12 classes ['0', '1', '10', ..., '9'])
        """
        X = self.X
        parts = [f"{len(X)} x {X.shape[1] if X.ndim == 2 else '?'} {X.dtype}"]
        if isinstance(X, np.memmap):
            parts[0] += " memory-mapped"
        if self.classes is not None:
            names = [repr(c) for c in self.classes]
            shown = names if len(names) <= 4 else [*names[:3], "...", names[-1]]
            parts.append(f"{len(names)} classes [{', '.join(shown)}]")
        if self.fingerprint:
            parts.append(f"fingerprint {self.fingerprint[:12]}")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def labelled(self) -> bool:
        return self.y is not None and self.classes is not None

    @classmethod
    def from_arrays(
        cls, X: Any, y: Any = None, *, classes: Sequence[str] | None = None, name: str = "X"
    ) -> Embeddings:
        """Embeddings computed elsewhere: ``X`` (n, d) and optional labels ``y``.

        ``y`` holds class names (any values, sorted into ``classes``), or integer indices
        into ``classes`` when ``classes=`` is given.

        Examples
        --------
        >>> import numpy as np
        >>> from featx.embeddings import Embeddings
        >>> e = Embeddings.from_arrays(np.zeros((3, 2)), ["dog", "cat", "dog"])
        >>> e.classes, e.y.tolist()
        (['cat', 'dog'], [1, 0, 1])
        """
        if y is None:
            X = np.asarray(X) if getattr(X, "ndim", None) != 2 else X
            if X.ndim != 2:
                raise ValueError(f"{name} must be (n_samples, n_features); got {X.shape}.")
            codes, names = None, None
        else:
            X, y = check_labelled(X, y, name=name)
            if classes is None:
                values, codes = np.unique(y, return_inverse=True)
                names = [str(v) for v in values]
            else:
                names = [str(c) for c in classes]
                codes = np.asarray(y)
                if codes.dtype.kind not in "iu" or (
                    len(codes) and not (codes.min() >= 0 and codes.max() < len(names))
                ):
                    raise ValueError(
                        f"With classes= given, y must hold integer indices into its "
                        f"{len(names)} classes; got {codes[:5].tolist()}..."
                    )
        return cls(X=X, y=None if codes is None else codes.astype(np.int64), classes=names,
                   paths=None, index=np.arange(len(X)), failed=[], fingerprint="",
                   spec={})  # fmt: skip

    def take(self, rows: Any) -> Embeddings:
        """The rows ``rows`` (positions in this object), everything else kept."""
        rows = np.asarray(rows, dtype=np.int64)
        return Embeddings(
            X=self.X[rows],
            y=None if self.y is None else self.y[rows],
            classes=self.classes,
            paths=None if self.paths is None else [self.paths[i] for i in rows],
            index=self.index[rows],
            failed=list(self.failed),
            fingerprint=self.fingerprint,
            spec=self.spec,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            seconds=self.seconds,
        )

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """Several sets of the same representation as one: rows in order, labels matched
        by class name (``classes`` is the sorted union), ``index`` counting on from each
        part's number of inputs (its rows plus its failures)."""
        parts = list(parts)
        if not parts:
            raise ValueError("Embeddings.concat needs at least one Embeddings.")
        prints = {p.fingerprint for p in parts if p.fingerprint}
        if len(prints) > 1:
            raise ValueError(
                "Embeddings.concat got embeddings of different representations (fingerprints "
                f"{sorted(f[:12] for f in prints)}); concatenate rows of one network only."
            )
        labelled = [p.labelled for p in parts]
        if any(labelled) and not all(labelled):
            raise ValueError("Embeddings.concat: some parts have labels and others none.")
        classes = sorted({c for p in parts for c in p.classes}) if all(labelled) else None
        ys, index, offset = [], [], 0
        for p in parts:
            if classes is not None:
                position = {name: i for i, name in enumerate(classes)}
                ys.append(np.asarray([position[c] for c in p.classes], np.int64)[p.y])
            index.append(p.index + offset)
            offset += len(p) + len(p.failed)
        with_paths = all(p.paths is not None for p in parts)
        return cls(
            X=np.concatenate([p.X for p in parts]),
            y=np.concatenate(ys) if classes is not None else None,
            classes=classes,
            paths=[path for p in parts for path in p.paths] if with_paths else None,
            index=np.concatenate(index),
            failed=[f for p in parts for f in p.failed],
            fingerprint=parts[0].fingerprint,
            spec=parts[0].spec,
            cache_hits=sum(p.cache_hits for p in parts),
            cache_misses=sum(p.cache_misses for p in parts),
            seconds=sum(p.seconds for p in parts),
        )

    def summary(self) -> dict[str, Any]:
        """The run's numbers as a JSON-ready dict (what ``featx extract --json`` prints)."""
        return {
            "n_images": len(self),
            "dim": self.dim,
            "seconds": round(self.seconds, 4),
            "images_per_second": round(len(self) / self.seconds, 2) if self.seconds else None,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "failed": [{"input": name, "reason": reason} for name, reason in self.failed],
            "n_classes": None if self.classes is None else len(self.classes),
            "fingerprint": self.fingerprint,
            "backbone": self.spec.get("backbone", {}).get("architecture"),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path``: one ``.npz`` or ``.parquet`` file, or a folder that can be
        memory-mapped.

        A path ending in ``.npz`` gets one file (readable by plain ``np.load`` too). A path
        ending in ``.parquet`` gets a table with one row per image, for pandas, Spark or
        DuckDB: ``index`` (the row's position in the source), ``path`` (where inputs are
        files), ``label`` (the class name, where labelled) and ``embedding`` (a
        fixed-size list of float32); the fingerprint, spec, classes and failures ride in
        the file's metadata under ``featx``. It needs pyarrow (``pip install pyarrow``).
        Any other path is a folder holding ``X.npy`` (the vectors, readable with
        ``np.load(..., mmap_mode="r")``) and ``meta.npz`` (everything else), what
        :meth:`featx.Extractor.extract` writes with ``out=``. Each is read by :meth:`load`.

        Examples
        --------
        >>> import numpy as np, pandas as pd, tempfile, os
        >>> from featx.embeddings import Embeddings
        >>> path = os.path.join(tempfile.mkdtemp(), "e.parquet")
        >>> Embeddings.from_arrays(np.eye(3, 4, dtype=np.float32), ["b", "a", "b"]).save(path)
        >>> table = pd.read_parquet(path)
        >>> table.columns.tolist(), table["label"].tolist(), table["embedding"][1].tolist()
        (['index', 'label', 'embedding'], ['b', 'a', 'b'], [0.0, 1.0, 0.0, 0.0])
        >>> Embeddings.load(path).classes
        ['a', 'b']
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".npz", ".parquet"):
            # Written whole under a temporary name, then moved over the target: a failure
            # (a full disk) leaves what was there before, and no partial file.
            write = _write_parquet if suffix == ".parquet" else _write_npz
            tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                write(self, tmp)
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise _write_error(path, exc) from exc
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return
        arrays = self.meta_arrays()
        folder = _embeddings_folder(path)
        tmp_x, tmp_meta = (
            folder / f".{EMBEDDINGS_X}.partial",
            folder / f".{EMBEDDINGS_META}.partial",
        )
        try:  # both staged first: a failure here leaves the folder as it was
            with NpyRowWriter(tmp_x, self.X.shape) as writer:
                for rows, chunk in iter_chunks(self.X):
                    writer[rows] = chunk
            with open(tmp_meta, "wb") as f:
                np.savez(f, **arrays)
        except OSError as exc:
            tmp_x.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
            raise _write_error(path, exc) from exc
        # Then moved into place, meta.npz last; the old meta goes first, so a crash between
        # the moves leaves a folder that load() refuses rather than a new X with an old meta.
        (folder / EMBEDDINGS_META).unlink(missing_ok=True)
        os.replace(tmp_x, folder / EMBEDDINGS_X)
        os.replace(tmp_meta, folder / EMBEDDINGS_META)

    def meta_arrays(self) -> dict[str, Any]:
        arrays: dict[str, Any] = {
            "index": self.index,
            "fingerprint": np.array(self.fingerprint),
            "spec": np.array(json.dumps(self.spec)),
            "failed": np.array(json.dumps(self.failed, ensure_ascii=True)),
        }
        if self.y is not None:
            arrays["y"] = self.y
        if self.classes is not None:
            arrays["classes"] = np.array(self.classes)
        if self.paths is not None:
            arrays["paths"] = np.array(self.paths)
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap_mode: str | None = None) -> Embeddings:
        """Read what :meth:`save` (or ``extract(out=...)``) wrote.

        Parameters
        ----------
        path : path
            A ``.npz`` or ``.parquet`` file, or an embeddings folder.
        mmap_mode : {None, "r", "r+", "c"}, default None
            ``"r"`` maps ``X`` read-only from disk instead of loading it: rows are read
            when used, so a set larger than memory can be passed to
            :func:`featx.heads.fit_out_of_core` or read with
            :func:`featx.outofcore.iter_chunks`. Works for folders and for ``.npz`` files
            written by :meth:`save` (stored uncompressed).
        """
        path = Path(path)
        if mmap_mode not in (None, "r", "r+", "c"):
            raise ValueError(
                f"mmap_mode={mmap_mode!r} is not supported. Expected None, 'r', 'r+' or 'c'."
            )
        if path.is_dir():
            if not (path / EMBEDDINGS_X).exists() or not (path / EMBEDDINGS_META).exists():
                raise FileNotFoundError(
                    f"{str(path)!r} is not an embeddings folder: expected {EMBEDDINGS_X} and "
                    f"{EMBEDDINGS_META} in it (written by Embeddings.save or extract(out=...))."
                )
            X = np.load(path / EMBEDDINGS_X, mmap_mode=mmap_mode, allow_pickle=False)
            meta_path = path / EMBEDDINGS_META
        elif path.suffix.lower() == ".parquet":
            if mmap_mode is not None:
                raise ValueError(
                    f"{str(path)!r} is a Parquet table, which cannot be memory-mapped. Load it "
                    "with mmap_mode=None, or save it as an embeddings folder for that."
                )
            return _read_parquet(cls, path)
        else:
            X = _npz_member(path, "X", mmap_mode)
            meta_path = path
        with np.load(meta_path, allow_pickle=False) as data:
            return cls(
                X=X,
                index=data["index"],
                y=data.get("y"),
                classes=data["classes"].tolist() if "classes" in data else None,
                paths=data["paths"].tolist() if "paths" in data else None,
                failed=[tuple(f) for f in json.loads(str(data["failed"]))],
                fingerprint=str(data["fingerprint"]),
                spec=json.loads(str(data["spec"])),
            )


EMBEDDINGS_X = "X.npy"
EMBEDDINGS_META = "meta.npz"
# The key of a Parquet file's own metadata that holds what its columns do not.
_PARQUET_KEY = b"featx"


def _write_npz(embeddings: Embeddings, path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, X=embeddings.X, **embeddings.meta_arrays())


def parquet_available() -> None:
    """Raise ImportError, naming the install, where pyarrow (Parquet files) is missing."""
    _pyarrow()


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            f"Parquet embeddings need pyarrow ({exc}). Install it with pip install pyarrow "
            '(pip install "featx[ray]" brings it too), or use a .npz file or a folder.'
        ) from None
    return pa


def _write_parquet(embeddings: Embeddings, path: Path) -> None:
    """One row group per chunk of rows, so a memory-mapped ``X`` is never all in memory."""
    pa = _pyarrow()
    names = None if embeddings.y is None else np.asarray(embeddings.classes, dtype=object)
    fields = [("index", pa.int64())]
    if embeddings.paths is not None:
        fields.append(("path", pa.string()))
    if names is not None:
        fields.append(("label", pa.string()))
    fields.append(("embedding", pa.list_(pa.float32(), embeddings.dim)))
    meta = {
        "fingerprint": embeddings.fingerprint,
        "spec": embeddings.spec,
        "classes": embeddings.classes,
        "failed": embeddings.failed,
    }
    schema = pa.schema(fields, metadata={_PARQUET_KEY: json.dumps(meta, ensure_ascii=True)})
    with pa.parquet.ParquetWriter(path, schema) as writer:
        for rows, block in iter_chunks(embeddings.X):
            columns = {"index": embeddings.index[rows]}
            if embeddings.paths is not None:
                columns["path"] = [embeddings.paths[i] for i in rows]
            if names is not None:
                columns["label"] = names[embeddings.y[rows]]
            vectors = pa.FixedSizeListArray.from_arrays(block.reshape(-1), embeddings.dim)
            arrays = [pa.array(columns[name]) for name, _ in fields[:-1]] + [vectors]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _read_parquet(cls: type[Embeddings], path: Path) -> Embeddings:
    pa = _pyarrow()
    table = pa.parquet.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(_PARQUET_KEY, b"null"))
    if meta is None or "embedding" not in table.column_names:
        raise ValueError(
            f"{str(path)!r} is not a featx embeddings table: it lacks the featx metadata or "
            "the embedding column (written by Embeddings.save or featx extract --out "
            "FILE.parquet)."
        )
    vectors = table["embedding"].combine_chunks()
    dim = vectors.type.list_size
    X = vectors.flatten().to_numpy().astype(np.float32, copy=False).reshape(-1, dim)
    classes = meta["classes"]
    y = None
    if "label" in table.column_names and classes is not None:
        position = {name: i for i, name in enumerate(classes)}
        y = np.asarray([position[v] for v in table["label"].to_pylist()], dtype=np.int64)
    return cls(
        X=X,
        y=y,
        classes=classes,
        paths=table["path"].to_pylist() if "path" in table.column_names else None,
        index=table["index"].to_numpy(),
        failed=[tuple(f) for f in meta["failed"]],
        fingerprint=meta["fingerprint"],
        spec=meta["spec"],
    )


def _embeddings_folder(path: Path) -> Path:
    """``path`` as a folder to write embeddings into: new, empty, or holding embeddings."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(
            f"Cannot write embeddings to {str(path)!r}: it is a file. Pass a folder path "
            "(memory-mappable X.npy + meta.npz), or a path ending in .npz for one file."
        )
    if path.is_dir() and any(path.iterdir()) and not (path / EMBEDDINGS_META).exists():
        raise FileExistsError(
            f"Cannot write embeddings to {str(path)!r}: the folder is not empty and holds no "
            f"{EMBEDDINGS_META}. Pass a new or empty folder."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_meta(folder: Path, arrays: dict[str, Any]) -> None:
    tmp = folder / f".{EMBEDDINGS_META}.partial"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(folder, exc, kept=False) from exc
    os.replace(tmp, folder / EMBEDDINGS_META)


def _write_error(path: Path, exc: OSError, kept: bool = True) -> OSError:
    """``exc`` again, saying which embeddings could not be written and what is there now."""
    reason = exc.strerror or str(exc)
    state = (
        "what was there before is unchanged"
        if kept
        else f"the folder has no {EMBEDDINGS_META}, so it is refused until written again"
    )
    return OSError(
        exc.errno,
        f"Cannot write embeddings to {str(path)!r}: {reason}; {state}. Free some space (or "
        "choose another path) and run again.",
    )


class FolderWriter:
    """Streams an embeddings folder: rows written in any order, then moved into place.

    ``X`` is a :class:`NpyRowWriter` on a hidden partial file; :meth:`finish` drops the
    rows that failed, moves the vectors to ``X.npy`` and writes ``meta.npz`` last, so a
    folder with ``meta.npz`` is always complete. :meth:`abort` removes the partial file.
    """

    def __init__(self, out: str | os.PathLike, shape: tuple[int, int]) -> None:
        self.folder = _embeddings_folder(self.check(out))
        self.X = NpyRowWriter(self.folder / f".{EMBEDDINGS_X}.partial", shape)

    @staticmethod
    def check(out: str | os.PathLike) -> Path:
        """Refuse an ``out=`` that cannot be streamed into, before any work is done."""
        path = Path(out)
        if path.suffix.lower() in (".npz", ".parquet"):
            raise ValueError(
                f"extract(out={str(out)!r}): a {path.suffix} file cannot be written row by "
                "row. Pass a folder path (it gets a memory-mappable X.npy and meta.npz), or "
                f"call extract() without out= and then .save() the result to the {path.suffix}."
            )
        if path.exists() and not path.is_dir():
            _embeddings_folder(path)  # raises, saying why
        return path

    def abort(self) -> None:
        self.X.close()
        self.X.path.unlink(missing_ok=True)

    def finish(self, keep: np.ndarray) -> np.ndarray:
        """Move the written rows ``keep`` into place; return them mapped read-only."""
        self.X.close()
        partial = self.X.path
        written = np.load(partial, mmap_mode="r")
        if len(keep) < len(written):
            compact = self.folder / f".{EMBEDDINGS_X}.compact"
            with NpyRowWriter(compact, (len(keep), written.shape[1])) as writer:
                for rows, chunk in iter_chunks(written, rows=keep):
                    writer[np.searchsorted(keep, rows)] = chunk
            del written
            os.replace(compact, partial)
        else:
            del written
        # The old meta.npz goes first: a folder with meta.npz is always complete and paired.
        (self.folder / EMBEDDINGS_META).unlink(missing_ok=True)
        os.replace(partial, self.folder / EMBEDDINGS_X)
        return np.load(self.folder / EMBEDDINGS_X, mmap_mode="r")

    def write_meta(self, embeddings: Embeddings) -> None:
        _write_meta(self.folder, embeddings.meta_arrays())


def _npz_member(path: Path, name: str, mmap_mode: str | None) -> np.ndarray:
    """Array ``name`` of an ``.npz``; memory-mapped in place when asked (stored members only)."""
    if mmap_mode is None:
        with np.load(path, allow_pickle=False) as data:
            return data[name]
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"{str(path)!r} is compressed, so its {name} cannot be memory-mapped. Load it "
                "with mmap_mode=None, or save it again with Embeddings.save (uncompressed)."
            )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header: its name and extra field follow
        f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
               + int.from_bytes(local[28:30], "little"))  # fmt: skip
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode=mmap_mode, offset=offset, shape=shape,
                     order="F" if fortran else "C")  # fmt: skip


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
