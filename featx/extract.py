"""The extractor: images in, pooled embeddings out, each image computed once per fingerprint.

The run, for one call of :meth:`Extractor.extract`:

1. resolve the source into an ordered list of inputs (:mod:`featx.sources`);
2. hash each input's content (file bytes or pixels) in a thread pool;
3. look every hash up in the cache under the extractor's fingerprint;
4. stream the misses: worker threads, at a lower OS priority than the network's
   own, read and decode them (:mod:`featx.images`) ahead of the model, batches of
   exactly ``batch_size`` images (the last one zero-padded) go through one compiled
   function, and a writer thread stores each batch in the cache while the next one
   is computed;
5. return an :class:`Embeddings` in input order, with failures listed.

Every batch has the same shape, so an image's embedding does not depend on the
other images in its batch: an interrupted run, resumed, returns exactly the
vectors an uninterrupted run would.
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.augment import View
from featx.backbones import Backbone, resolve_backbone
from featx.cache import CACHE_FORMAT, EmbeddingCache, default_cache_dir
from featx.distributed import check_engine_options, compute_on_ray
from featx.images import DECODER_VERSION, RESIZE_POLICIES, WHITE, DecodeError, array_to_rgb, decode
from featx.images import to_rgb as _pil_to_rgb
from featx.outofcore import NpyRowWriter, iter_chunks
from featx.sources import ImageSet, resolve_source

__all__ = ["Embeddings", "Extractor"]

ON_ERROR = ("raise", "skip")


@dataclass
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

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

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
        """Write to ``path``: one ``.npz`` file, or a folder that can be memory-mapped.

        A path ending in ``.npz`` gets one file (readable by plain ``np.load`` too). Any
        other path is a folder holding ``X.npy`` (the vectors, readable with
        ``np.load(..., mmap_mode="r")``) and ``meta.npz`` (everything else), what
        :meth:`Extractor.extract` writes with ``out=``. Either is read by :meth:`load`.
        """
        path = Path(path)
        arrays = self._meta_arrays()
        if path.suffix.lower() == ".npz":
            with open(path, "wb") as f:
                np.savez(f, X=self.X, **arrays)
            return
        folder = _embeddings_folder(path)
        tmp = folder / f".{EMBEDDINGS_X}.partial"
        with NpyRowWriter(tmp, self.X.shape) as writer:
            for rows, chunk in iter_chunks(self.X):
                writer[rows] = chunk
        os.replace(tmp, folder / EMBEDDINGS_X)
        _write_meta(folder, arrays)

    def _meta_arrays(self) -> dict[str, Any]:
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
            A ``.npz`` file or an embeddings folder.
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
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, folder / EMBEDDINGS_META)


def _out_folder(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.suffix.lower() == ".npz":
        raise ValueError(
            f"extract(out={str(out)!r}): an .npz archive cannot be written row by row. Pass a "
            "folder path (it gets a memory-mappable X.npy and meta.npz), or call "
            "extract() without out= and then .save() the result to the .npz."
        )
    return _embeddings_folder(path)


def _finish_out(folder: Path, keep: np.ndarray) -> np.ndarray:
    """Move the written vectors into place (without rows that failed); map them read-only."""
    partial = folder / f".{EMBEDDINGS_X}.partial"
    written = np.load(partial, mmap_mode="r")
    if len(keep) < len(written):
        compact = folder / f".{EMBEDDINGS_X}.compact"
        with NpyRowWriter(compact, (len(keep), written.shape[1])) as writer:
            for rows, chunk in iter_chunks(written, rows=keep):
                writer[np.searchsorted(keep, rows)] = chunk
        del written
        os.replace(compact, partial)
    else:
        del written
    os.replace(partial, folder / EMBEDDINGS_X)
    return np.load(folder / EMBEDDINGS_X, mmap_mode="r")


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


class Extractor:
    """Pooled embeddings from a frozen Keras network, cached on disk.

    Parameters
    ----------
    backbone : str, keras.Model, path or Backbone, default "MobileNetV2"
        A registry name (``featx backbones`` lists them), your own ``keras.Model``, the
        path of a saved ``.keras``/``.h5`` model, or a :class:`~featx.backbones.Backbone`.
    weights : "imagenet", None or path, default "imagenet"
        ``"imagenet"`` downloads through Keras' own cache; ``None`` is a seeded random
        initialisation (a baseline, reproducible across processes); a path loads that file.
    input_size : int or (height, width), optional
        Defaults to the backbone's default size.
    pooling : {"avg", "max", "avg+max"}, default "avg"
    layer : str, optional
        Embed this layer's (pooled) output instead of the last convolutional block.
    view : featx.augment.View, optional
        A deterministic transformation of each resized image before the network (a
        mirror, a crop, one seeded augmented copy; see :mod:`featx.augment`). Its
        ``identity()`` is part of the fingerprint, so every view is cached apart.
    resize : {"stretch", "center_crop"}, default "stretch"
        How images reach ``input_size`` (see :mod:`featx.images`).
    background : (r, g, b), default white
        Colour transparent pixels are composited on.
    batch_size : int, default 32
        Every batch runs at exactly this size (the last one padded).
    cache_dir : path, "auto" or None, default "auto"
        ``"auto"`` is ``$FEATX_CACHE_DIR`` or ``./cache``; ``None`` disables caching.
    seed : int, default 0
        Seed of the random initialisation when ``weights=None``.
    preprocess : callable, optional
        For your own models only: maps 0-255 RGB float tensors to the model's input range.
    on_error : {"raise", "skip"}, default "raise"
        What an undecodable input does: stop with an error naming it, or be left out
        and listed in ``Embeddings.failed``.
    workers : int, optional
        Threads reading and decoding images (default: the number of CPUs, at most 8).
    precision : {"float32", "bfloat16", "float16"}, default "float32"
        Compute precision of a registry backbone (see
        :class:`~featx.backbones.KerasBackbone`). ``"bfloat16"`` is faster for large
        networks on CPUs with AVX512-BF16 (ResNet50) and close to float32; ``"float16"``
        is for GPUs. Embeddings are float32 either way, cached apart from float32 ones.
    verbose : bool, default True
        Show a progress bar while computing.
    engine : {"local", "ray"}, default "local"
        Where cache misses are computed: in this process, or on a Ray cluster (a pool of
        actors each holding the network; ``pip install "featx[ray]"``, see
        :mod:`featx.distributed`). Both give bit-identical vectors and share the cache.
    address : str, optional
        The Ray cluster: None starts (or reuses) a local Ray on this machine, ``"auto"``
        joins the cluster this machine belongs to, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``
        names a head node. Only with ``engine="ray"``.
    ray_actors : int, optional
        Copies of the network on the cluster (default: one per ``ray_cpus_per_actor``
        CPUs of the cluster).
    ray_cpus_per_actor, ray_gpus_per_actor : float, default 1 and 0
        Resources each actor holds; its CPUs also set its decoding threads.

    Examples
    --------
    >>> import numpy as np
    >>> from featx import Extractor
    >>> images = np.random.default_rng(0).integers(0, 255, (4, 48, 48, 3), dtype=np.uint8)
    >>> ex = Extractor("MobileNetV2", weights=None, input_size=32, cache_dir=None, verbose=False)
    >>> ex.extract(images).X.shape
    (4, 1280)
    """

    def __init__(
        self,
        backbone: str | Backbone | Any = "MobileNetV2",
        *,
        weights: str | os.PathLike | None = "imagenet",
        input_size: int | tuple[int, int] | None = None,
        pooling: str = "avg",
        layer: str | None = None,
        resize: str = "stretch",
        background: tuple[int, int, int] = WHITE,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = "auto",
        seed: int = 0,
        preprocess: Callable[[Any], Any] | None = None,
        on_error: str = "raise",
        workers: int | None = None,
        precision: str = "float32",
        verbose: bool = True,
        view: View | None = None,
        engine: str = "local",
        address: str | None = None,
        ray_actors: int | None = None,
        ray_cpus_per_actor: float = 1.0,
        ray_gpus_per_actor: float = 0.0,
    ) -> None:
        check_engine_options(engine, address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
        if resize not in RESIZE_POLICIES:
            raise ValueError(
                f"resize={resize!r} is not supported. Expected one of {RESIZE_POLICIES}."
            )
        _check_on_error(on_error)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        background = tuple(int(c) for c in background)
        if len(background) != 3 or not all(0 <= c <= 255 for c in background):
            raise ValueError(f"background={background!r} must be an (r, g, b) triple in 0-255.")
        self.backbone = resolve_backbone(
            backbone,
            weights=weights,
            input_size=input_size,
            pooling=pooling,
            layer=layer,
            seed=seed,
            preprocess=preprocess,
            precision=precision,
        )
        self.resize = resize
        self.background = background
        self.batch_size = int(batch_size)
        self.on_error = on_error
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.verbose = verbose
        self.engine, self.address = engine, address
        self.ray_actors = ray_actors
        self.ray_cpus_per_actor = float(ray_cpus_per_actor)
        self.ray_gpus_per_actor = float(ray_gpus_per_actor)
        self.cache = EmbeddingCache(default_cache_dir() if cache_dir == "auto" else cache_dir)
        self.view = view
        self.spec = {
            "format": CACHE_FORMAT,
            "backbone": self.backbone.identity(),
            "images": {
                "resize": resize,
                "background": list(background),
                "decoder": DECODER_VERSION,
            },
        }
        if view is not None:  # absent otherwise, so plain extractions keep their fingerprints
            self.spec["view"] = view.identity()
        self.fingerprint = hashlib.sha256(
            json.dumps(self.spec, sort_keys=True).encode()
        ).hexdigest()

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backbone.input_size

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def extract(
        self,
        source: Any,
        *,
        labels: Sequence[Any] | None = None,
        path_column: str = "path",
        label_column: str | None = None,
        on_error: str | None = None,
        out: str | os.PathLike | None = None,
        engine: str | None = None,
        address: str | None = None,
    ) -> Embeddings:
        """Embed every image of ``source`` (see :mod:`featx.sources` for what is accepted).

        Parameters
        ----------
        out : path, optional
            Write the embeddings to this folder (``X.npy`` and ``meta.npz``, see
            :meth:`Embeddings.save`) as they are read from the cache and computed, and
            return them with ``X`` memory-mapped read-only from it. The vectors are never
            all in memory at once, so sets larger than memory can be extracted (1M x 1280
            float32 is 5.1 GB). A path ending in ``.npz`` is refused: an archive cannot be
            written row by row.
        engine, address : str, optional
            When given, override the extractor's own ``engine`` and ``address`` for this call.

        Raises
        ------
        DecodeError
            With ``on_error="raise"``, for the first input that cannot be read or decoded.
            Batches computed before it are already in the cache.
        """
        on_error = on_error or self.on_error
        _check_on_error(on_error)
        engine = engine or self.engine
        if address is None and engine == "ray":
            address = self.address
        check_engine_options(
            engine, address, self.ray_actors, self.ray_cpus_per_actor, self.ray_gpus_per_actor
        )
        start = time.perf_counter()
        images = resolve_source(
            source, labels=labels, path_column=path_column, label_column=label_column
        )
        folder = None if out is None else _out_folder(out)
        keys, failed = self._content_keys(images, on_error)
        ok = np.flatnonzero([k is not None for k in keys])
        dim = self.dim
        ok_keys = [keys[i] for i in ok]
        del keys
        if folder is None:
            X: Any = np.zeros((len(ok), dim), dtype=np.float32)
        else:
            X = NpyRowWriter(folder / f".{EMBEDDINGS_X}.partial", (len(ok), dim))
        try:
            found = self.cache.read_into(self.fingerprint, ok_keys, X)
            failed_rows = self._fill_misses(
                images, ok, ok_keys, found, X, failed, on_error, engine, address
            )
        except BaseException:
            if folder is not None:  # what was computed is in the cache; the file goes
                X.close()
                X.path.unlink(missing_ok=True)
            raise
        if folder is not None:
            X.close()
        keep = np.asarray([r for r in range(len(ok)) if r not in failed_rows], dtype=np.int64)
        index = ok[keep]
        if folder is not None:
            X = _finish_out(folder, keep)
        elif len(keep) < len(ok):
            X = X[keep]
        position = {name: i for i, name in enumerate(images.names)}
        embeddings = Embeddings(
            X=X,
            y=None if images.y is None else images.y[index],
            classes=images.classes,
            paths=[images.inputs[i] for i in index] if images.are_files else None,
            index=index,
            failed=sorted(failed, key=lambda f: position[f[0]]),
            fingerprint=self.fingerprint,
            spec=self.spec,
            cache_hits=int(found.sum()),
            cache_misses=len(ok) - int(found.sum()) - len(failed_rows),
            seconds=time.perf_counter() - start,
        )
        if folder is not None:
            _write_meta(folder, embeddings._meta_arrays())
        return embeddings

    def _fill_misses(
        self, images, ok, ok_keys, found, X, failed, on_error, engine, address
    ) -> set[int]:
        """Compute the rows of ``X`` not ``found`` in the cache; return the rows that failed."""
        todo: dict[str, list[int]] = {}
        for row in np.flatnonzero(~found):
            todo.setdefault(ok_keys[row], []).append(int(row))
        failed_rows: set[int] = set()
        if todo:
            self.cache.register(self.fingerprint, self.dim, self.spec)
            if engine == "ray":
                failures = compute_on_ray(self, images, ok, todo, X, on_error, address)
            else:
                failures = self._compute(images, ok, todo, X, on_error)
            for name, reason, rows in failures:
                failed.append((name, reason))
                failed_rows.update(rows)
        return failed_rows

    # -- step 2: content keys -----------------------------------------------------------------

    def _content_keys(self, images: ImageSet, on_error: str) -> tuple[list, list]:
        def key_of(i: int) -> tuple[str | None, str | None]:
            try:
                return _content_key(self._read(images, i)), None
            except DecodeError as exc:
                return None, exc.reason

        keys, failed = [], []
        with ThreadPoolExecutor(self.workers) as pool:
            for i, (key, reason) in enumerate(_bounded_map(pool, key_of, range(len(images)))):
                if reason is not None:
                    if on_error == "raise":
                        raise DecodeError(_quote(images.names[i]), reason)
                    failed.append((images.names[i], reason))
                keys.append(key)
        return keys, failed

    def _read(self, images: ImageSet, i: int) -> bytes | np.ndarray:
        """The raw content of input ``i``: file bytes, or pixels for in-memory images."""
        item = images.inputs[i]
        if isinstance(item, str):
            return _read_file(item)
        if isinstance(item, np.ndarray):
            return item
        return np.asarray(_pil_to_rgb(item, self.background))

    def _decode(self, content: bytes | np.ndarray, name: str) -> tuple[str, np.ndarray]:
        """The content key and the network's input pixels of one input (view applied)."""
        return _decode_input(
            content, name, self.input_size, self.resize, self.background, self.view
        )

    # -- step 4: the streaming computation ----------------------------------------------------

    def _compute(
        self,
        images: ImageSet,
        ok: np.ndarray,
        todo: dict[str, list[int]],
        X: np.ndarray,
        on_error: str,
    ) -> list[tuple[str, str, list[int]]]:
        """Compute the vectors of ``todo`` (content key -> rows of ``X``) into ``X``.

        Returns the inputs that failed to decode, as (name, reason, rows of ``X``).
        """
        self.backbone.prepare((self.batch_size, *self.input_size, 3))
        started = time.perf_counter()  # the cost per image excludes the one-time build
        writer = _CacheWriter(self.cache, self.fingerprint)
        batches = _BatchStream(self, images, ok, list(todo.items()))
        progress = _progress(len(todo), self.backbone.name, self.verbose)
        try:
            for batch, members in batches:
                vectors = self.backbone.embed(batch)[: len(members)]
                writer.put([key for key, _ in members], vectors)
                for (_, rows), vector in zip(members, vectors, strict=True):
                    X[rows] = vector
                progress.update(len(members))
                if on_error == "raise" and batches.failures:
                    break
            if on_error == "raise" and batches.failures:
                name, reason, _ = batches.failures[0]
                raise DecodeError(_quote(name), reason)
        finally:
            batches.close()
            progress.close()
            writer.close()
        n_computed = len(todo) - len(batches.failures)
        self.cache.record_cost(self.fingerprint, n_computed, time.perf_counter() - started)
        return batches.failures


class _BatchStream:
    """Decode jobs in worker threads, in order, into fixed-shape float32 batches.

    A background thread keeps at most a few batches ready, so memory stays bounded
    whatever the number of images. Failed inputs are collected, their rows set to NaN.
    """

    def __init__(
        self,
        extractor: Extractor,
        images: ImageSet,
        ok: np.ndarray,
        jobs: list[tuple[str, list[int]]],
    ) -> None:
        self._extractor, self._images, self._ok, self._jobs = extractor, images, ok, jobs
        self._queue: queue.Queue = queue.Queue(maxsize=3)
        self._stop = threading.Event()
        self.failures: list[tuple[str, str, list[int]]] = []
        self._thread = threading.Thread(target=self._run, name="featx-decode", daemon=True)
        self._thread.start()

    def _decode_job(self, job: tuple[str, list[int]]) -> tuple[str, np.ndarray]:
        _, rows = job
        i = int(self._ok[rows[0]])
        name = self._images.names[i]
        return self._extractor._decode(self._extractor._read(self._images, i), name)

    def _run(self) -> None:
        ex = self._extractor
        shape = (ex.batch_size, *ex.input_size, 3)
        try:
            with ThreadPoolExecutor(ex.workers, initializer=_yield_to_compute) as pool:
                batch, members = np.zeros(shape, np.float32), []
                for job, result in zip(
                    self._jobs, _bounded_map(pool, self._try_decode, self._jobs), strict=True
                ):
                    if self._stop.is_set():
                        return
                    key, pixels, reason = result
                    if reason is not None:
                        name = self._images.names[int(self._ok[job[1][0]])]
                        self.failures.append((name, reason, job[1]))
                        continue
                    batch[len(members)] = pixels
                    members.append((key, job[1]))
                    if len(members) == ex.batch_size:
                        self._put((batch, members))
                        batch, members = np.zeros(shape, np.float32), []
                if members:
                    self._put((batch, members))
        except BaseException as exc:  # surfaced in the consuming thread
            self._put(exc)
        finally:
            self._put(None)

    def _try_decode(self, job):
        try:
            key, pixels = self._decode_job(job)
            return key, pixels, None
        except DecodeError as exc:
            return None, None, exc.reason

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[tuple[str, list[int]]]]]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _CacheWriter:
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


def _yield_to_compute() -> None:
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


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items, ahead: int = 64) -> Iterator:
    """``pool.map`` that keeps at most ``ahead`` tasks in flight (memory stays bounded)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DecodeError(_quote(path), f"cannot be read ({exc.strerror or exc})") from None


def _decode_input(
    content: bytes | np.ndarray,
    name: str,
    size: tuple[int, int],
    resize: str,
    background: tuple[int, int, int],
    view: View | None,
) -> tuple[str, np.ndarray]:
    """The content key and the network's input pixels of one input (every engine's path).

    The key is the hash of the content actually decoded, even if the file changed since
    it was first hashed.
    """
    key = _content_key(content)
    if isinstance(content, bytes):
        pixels = decode(content, size, resize=resize, background=background, name=_quote(name))
    else:
        pixels = array_to_rgb(content, size, resize=resize, name=name)
    # A view is seeded by the content key, so its output is the same in every run.
    return key, pixels if view is None else view.apply(pixels, key)


def _content_key(content: bytes | np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=20)
    if isinstance(content, bytes):
        digest.update(b"bytes:")
        digest.update(content)
    else:
        array = np.ascontiguousarray(content)
        digest.update(f"array:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _quote(name: str) -> str:
    return name if name.startswith(("array[", "image[")) else repr(name)


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not supported. Expected one of {ON_ERROR}.")


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, name: str, verbose: bool):
    if not verbose or total == 0:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"featx {name}", unit="img", dynamic_ncols=True)
