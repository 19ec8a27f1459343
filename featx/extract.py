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

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from featx._pipeline import (
    CacheWriter,
    ComputeTask,
    Decoding,
    bounded_map,
    check_on_error,
    content_key,
    decode_files,
    extraction_spec,
    file_key,
    fingerprint,
    progress,
    quote,
    read_file,
    yield_to_compute,
)
from featx.augment import View
from featx.backbones import Backbone, resolve_backbone
from featx.cache import EmbeddingCache
from featx.config import BackboneConfig, backbone_name
from featx.distributed import RayOptions, check_engine_options, compute_on_ray
from featx.embeddings import Embeddings, FolderWriter
from featx.images import DECODERS, RESIZE_POLICIES, WHITE, DecodeError
from featx.images import to_rgb as _pil_to_rgb
from featx.sources import ImageSet, resolve_source

# Inputs keyed per task of the worker threads (one task per file cost more than the stat
# of a remembered file).
_KEY_CHUNK = 32
_REMEMBER_EVERY = 10_000  # files' stats and keys written to the cache per transaction
#: Where :class:`Extractor` decodes images (its ``decode_in``).
DECODE_IN = ("auto", "threads", "processes")
# "auto" decodes in processes from this many CPUs and files to decode: below them the
# pool's start (0.6 s on a 16-CPU machine) and each image's copy back cost more than the
# interpreter lock does (threads were faster on 2 CPUs).
PROCESS_MIN_CPUS = 8
PROCESS_MIN_FILES = 1000
# Files per task sent to a decoding process (fewer, larger messages between processes).
PROCESS_CHUNK = 16

__all__ = ["Embeddings", "Extractor"]


class Extractor:
    """Pooled embeddings from a frozen Keras network, cached on disk.

    Parameters
    ----------
    backbone : str, keras.Model, path or Backbone, default "MobileNetV2"
        A registry name (``featx backbones`` lists them), a keras-hub preset
        (``"hub:dinov2_small"``; ``featx backbones --hub``), your own ``keras.Model``, the
        path of a saved ``.keras``/``.h5`` model, or a :class:`~featx.backbones.Backbone`.
    weights : "imagenet", None or path, default "imagenet"
        ``"imagenet"`` downloads through Keras' own cache (a keras-hub preset: its own
        weights, through keras-hub's); ``None`` is a seeded random initialisation (a
        baseline, reproducible across processes); a path loads that file.
    input_size : int or (height, width), optional
        Defaults to the backbone's default size.
    pooling : str, optional
        The backbone's default when None: ``"avg"`` for feature maps (also ``"max"``,
        ``"avg+max"``), ``"cls"`` for keras-hub ViTs (also ``"mean"``, ``"cls+mean"``);
        see :class:`~featx.backbones.HubBackbone`.
    layer : str, optional
        Embed this layer's (pooled) output instead of the last convolutional block.
    view : featx.augment.View, optional
        A deterministic transformation of each resized image before the network (a
        mirror, a crop, one seeded augmented copy; see :mod:`featx.augment`). Its
        ``identity()`` is part of the fingerprint, so every view is cached apart.
    resize : {"stretch", "center_crop"}, optional
        How images reach ``input_size`` (see :mod:`featx.images`). None: the policy the
        backbone's preprocessing prescribes (a keras-hub preset's converter), else
        ``"stretch"``; a policy that contradicts the preset's converter is refused.
    background : (r, g, b), default white
        Colour transparent pixels are composited on.
    decoder : {"pillow", "fast"}, default "pillow"
        Who decodes and resizes images (see :mod:`featx.images`): Pillow, or
        libjpeg-turbo and OpenCV for RGB and grayscale JPEGs (Pillow for the rest),
        about 15% cheaper per photo with vectors within a mean cosine of 0.997. Part of
        the fingerprint.
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
        Threads (or processes, see ``decode_in``) reading and decoding images. Default:
        the number of CPUs, at most 8, for threads (on a 16-CPU GPU machine 16 threads
        were slower than 8); one less than the number of CPUs for processes.
    decode_in : {"auto", "threads", "processes"}, default "auto"
        Where images are decoded. Threads share Python's interpreter lock: on a 16-CPU
        GPU machine, Pillow decoding at 224 px stopped scaling at about 6.5 busy cores
        (1,700 photos/s by 8 or 16 threads, 2,600 by 15 processes; featx cold 1.3-1.6x
        faster in processes with Pillow, 1.1x with the fast decoder;
        benchmarks/results-gpu-2026-12-04.md). Processes (joblib's
        loky workers, started once, about 0.6 s, and reused) cost a copy of each image
        back, so on few CPUs threads are faster. ``"auto"`` decodes in processes when the
        backbone computes on a GPU, the machine has at least 8 CPUs and at least 1,000
        files are to be decoded; else in threads. In-memory images always decode in
        threads. Vectors are bit-identical either way (not part of the fingerprint).
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
        pooling: str | None = None,
        layer: str | None = None,
        resize: str | None = None,
        background: tuple[int, int, int] = WHITE,
        decoder: str = "pillow",
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = "auto",
        seed: int = 0,
        preprocess: Callable[[Any], Any] | None = None,
        on_error: str = "raise",
        workers: int | None = None,
        decode_in: str = "auto",
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
        if resize is not None and resize not in RESIZE_POLICIES:
            raise ValueError(
                f"resize={resize!r} is not supported. Expected one of {RESIZE_POLICIES}."
            )
        check_on_error(on_error)
        if decoder not in DECODERS:
            raise ValueError(
                f"decoder={decoder!r} is not supported. Expected one of {DECODERS}: 'pillow' "
                "(the default) or 'fast' (libjpeg-turbo and OpenCV for JPEGs)."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        if decode_in not in DECODE_IN:
            raise ValueError(
                f"decode_in={decode_in!r} is not supported. Expected one of {DECODE_IN}: "
                "'auto' (processes on a GPU machine with 8 or more CPUs), 'threads' or "
                "'processes'."
            )
        background = tuple(int(c) for c in background)
        if len(background) != 3 or not all(0 <= c <= 255 for c in background):
            raise ValueError(f"background={background!r} must be an (r, g, b) triple in 0-255.")
        config = BackboneConfig(
            backbone, weights=weights, input_size=input_size, pooling=pooling, layer=layer,
            resize=resize, seed=seed, precision=precision, preprocess=preprocess,
        )  # fmt: skip
        if not config.is_single:
            raise ValueError(
                f"An Extractor embeds with one network at one input size and layer; got "
                f"{len(config.members())} (backbone={backbone!r}, input_size={input_size!r}, "
                f"layer={layer!r}). A list of sizes, layers or backbones means their "
                "embeddings concatenated: use featx.combine.CombinedExtractor or "
                "featx.EmbeddingTransformer. For one non-square size pass a tuple (height, "
                "width)."
            )
        self.config = config
        self.backbone = resolve_backbone(config.backbone[0], **config.network_kwargs())
        self.resize = resize = _resize_policy(resize, self.backbone)
        self.background = background
        self.decoder = decoder
        self.batch_size = int(batch_size)
        self.on_error = on_error
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.decode_in = decode_in
        # Processes leave one CPU to this process (batches, the network's calls, the cache).
        self._processes = workers or max(1, (os.cpu_count() or 1) - 1)
        self.verbose = verbose
        self.engine, self.address = engine, address
        self.ray = RayOptions(ray_actors, float(ray_cpus_per_actor), float(ray_gpus_per_actor))
        self.cache = EmbeddingCache(cache_dir)
        self.view = view
        self.spec = extraction_spec(
            self.backbone.identity(), resize, background, view, decoder=decoder
        )
        self.fingerprint = fingerprint(self.spec)

    def __repr__(self) -> str:
        """One line: the network, its size and output, the fingerprint and the cache.

        Examples
        --------
        >>> from featx import Extractor
        >>> Extractor("MobileNetV2", weights=None, input_size=96, cache_dir=None)
        ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        Extractor('MobileNetV2', weights=None, input_size=(96, 96), pooling='avg', dim=1280,
                  fingerprint='...', cache=None)
        """
        config = self.config
        weights = config.weights
        if isinstance(weights, str) and weights != "imagenet":
            weights = Path(weights).name  # a file: its name (the fingerprint holds its hash)
        fields = [
            repr(backbone_name(config.backbone[0])),
            f"weights={weights!r}",
            f"input_size={self.input_size}",
            f"pooling={self.backbone.pooling if hasattr(self.backbone, 'pooling') else None!r}",
        ]
        if config.layer[0] is not None:
            fields.append(f"layer={config.layer[0]!r}")
        if self.view is not None:
            fields.append(f"view={self.view!r}")
        location = self.cache.location
        fields += [
            f"dim={self.dim}",
            f"fingerprint={self.fingerprint[:12]!r}",
            f"cache={None if location is None else str(location)!r}",
        ]
        if self.engine != "local":
            fields.append(f"engine={self.engine!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    @classmethod
    def from_config(cls, config: BackboneConfig, **options: Any) -> Extractor:
        """The extractor of a single-network :class:`~featx.config.BackboneConfig`;
        ``options`` are the other parameters (``cache_dir``, ``batch_size``, ``view``, ...)."""
        fields = {
            "weights": config.weights, "input_size": config.input_size[0],
            "pooling": config.pooling, "layer": config.layer[0], "resize": config.resize,
            "seed": config.seed, "precision": config.precision, "preprocess": config.preprocess,
        }  # fmt: skip
        return cls(config.backbone[0] if len(config.backbone) == 1 else list(config.backbone),
                   **fields, **options)  # fmt: skip

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.input_size, self.resize, self.background, self.view, self.decoder)

    def _task(self) -> ComputeTask:
        return ComputeTask(self.backbone, self.decoding, self.batch_size, self.cache,
                           self.fingerprint, self.verbose, self.workers)  # fmt: skip

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
        check_on_error(on_error)
        engine = engine or self.engine
        if address is None and engine == "ray":
            address = self.address
        check_engine_options(engine, address, *self.ray)
        start = time.perf_counter()
        images = resolve_source(
            source, labels=labels, path_column=path_column, label_column=label_column
        )
        if out is not None:
            FolderWriter.check(out)
        keys, failed = self._content_keys(images, on_error)
        ok = np.flatnonzero([k is not None for k in keys])
        # A fingerprint the cache knows gives the length without building the network
        # (a keras-hub preset takes about a second to build), so a warm run builds nothing.
        dim = self.cache.dim(self.fingerprint) or self.dim
        ok_keys = [keys[i] for i in ok]
        del keys
        writer = None if out is None else FolderWriter(out, (len(ok), dim))
        X: Any = np.zeros((len(ok), dim), dtype=np.float32) if writer is None else writer.X
        try:
            found = self.cache.read_into(self.fingerprint, ok_keys, X)
            failed_rows = self._fill_misses(
                images, ok, ok_keys, found, X, failed, on_error, engine, address
            )
        except BaseException:
            if writer is not None:  # what was computed is in the cache; the file goes
                writer.abort()
            raise
        keep = np.asarray([r for r in range(len(ok)) if r not in failed_rows], dtype=np.int64)
        index = ok[keep]
        if writer is not None:
            X = writer.finish(keep)
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
        if writer is not None:
            writer.write_meta(embeddings)
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
                failures = compute_on_ray(
                    self._task(), self.ray, images, ok, todo, X, on_error, address
                )
            else:
                failures = self._compute(images, ok, todo, X, on_error)
            for name, reason, rows in failures:
                failed.append((name, reason))
                failed_rows.update(rows)
        return failed_rows

    # -- step 2: content keys -----------------------------------------------------------------

    def _content_keys(self, images: ImageSet, on_error: str) -> tuple[list, list]:
        """Every input's content key (None for one that cannot be read) and the failures.

        Inputs are keyed in chunks on the worker threads. A file whose stat the cache
        remembers with its key is not read again (:func:`featx._pipeline.file_key`); the
        keys of the files read are remembered for the next run.
        """
        files = {i: os.path.abspath(x) for i, x in enumerate(images.inputs) if isinstance(x, str)}
        known = self.cache.file_keys(sorted(set(files.values())))

        def keys_of(chunk: range) -> list[tuple[str | None, str | None, tuple | None]]:
            out: list[tuple[str | None, str | None, tuple | None]] = []
            for i in chunk:
                try:
                    if i in files:
                        key, learned = file_key(images.inputs[i], files[i], known)
                    else:
                        key, learned = content_key(self._read(images, i)), None
                    out.append((key, None, learned))
                except DecodeError as exc:
                    out.append((None, exc.reason, None))
            return out

        n = len(images)
        chunks = [range(s, min(s + _KEY_CHUNK, n)) for s in range(0, n, _KEY_CHUNK)]
        keys, failed, remember = [], [], []
        with ThreadPoolExecutor(self.workers) as pool:
            for chunk, results in zip(chunks, bounded_map(pool, keys_of, chunks), strict=True):
                for i, (key, reason, learned) in zip(chunk, results, strict=True):
                    if reason is not None:
                        if on_error == "raise":
                            self.cache.remember_file_keys(remember)
                            raise DecodeError(quote(images.names[i]), reason)
                        failed.append((images.names[i], reason))
                    if learned is not None:
                        remember.append(learned)
                    keys.append(key)
                if len(remember) >= _REMEMBER_EVERY:  # memory stays bounded on huge sets
                    self.cache.remember_file_keys(remember)
                    remember = []
        self.cache.remember_file_keys(remember)
        return keys, failed

    def _read(self, images: ImageSet, i: int) -> bytes | np.ndarray:
        """The raw content of input ``i``: file bytes, or pixels for in-memory images."""
        item = images.inputs[i]
        if isinstance(item, str):
            return read_file(item)
        if isinstance(item, np.ndarray):
            return item
        return np.asarray(_pil_to_rgb(item, self.background))

    def _decode(self, content: bytes | np.ndarray, name: str) -> tuple[str, np.ndarray]:
        """The content key and the network's input pixels of one input (view applied)."""
        return self.decoding.decode(content, name)

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
        writer = CacheWriter(self.cache, self.fingerprint)
        batches = _BatchStream(self, images, ok, list(todo.items()))
        bar = progress(len(todo), self.backbone.name, self.verbose)
        try:
            for batch, members in batches:
                vectors = self.backbone.embed(batch)[: len(members)]
                writer.put([key for key, _ in members], vectors)
                for (_, rows), vector in zip(members, vectors, strict=True):
                    X[rows] = vector
                bar.update(len(members))
                if on_error == "raise" and batches.failures:
                    break
            if on_error == "raise" and batches.failures:
                name, reason, _ = batches.failures[0]
                raise DecodeError(quote(name), reason)
        finally:
            batches.close()
            bar.close()
            writer.close()
        n_computed = len(todo) - len(batches.failures)
        self.cache.record_cost(self.fingerprint, n_computed, time.perf_counter() - started)
        return batches.failures


def _resize_policy(resize: str | None, backbone: Backbone) -> str:
    """The resize policy: the one given, else the backbone's own, else ``"stretch"``."""
    own = getattr(backbone, "resize", None)
    if resize is not None and own is not None and resize != own:
        raise ValueError(
            f"resize={resize!r} contradicts the preprocessing of {backbone.name!r}, whose "
            f"image converter resizes by {own!r} (featx follows a preset's converter, as it "
            "does its scale and offset). Leave resize out."
        )
    return resize or own or "stretch"


class _BatchStream:
    """Decode jobs in worker threads or processes, in order, into fixed-shape float32
    batches.

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
        i = self._input(job)
        return self._extractor._decode(
            self._extractor._read(self._images, i), self._images.names[i]
        )

    def _run(self) -> None:
        ex = self._extractor
        shape = (ex.batch_size, *ex.input_size, 3)
        try:
            with ThreadPoolExecutor(ex.workers, initializer=yield_to_compute) as pool:
                if self.in_processes:
                    results = self._decoded_in_processes()
                else:
                    results = bounded_map(pool, self._try_decode, self._jobs)
                batch, members = np.zeros(shape, np.float32), []
                for job, result in zip(self._jobs, results, strict=True):
                    if self._stop.is_set():
                        return
                    key, pixels, reason = result
                    if reason is not None:
                        name = self._images.names[self._input(job)]
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

    @property
    def in_processes(self) -> bool:
        """Whether these jobs decode in processes (the extractor's ``decode_in``)."""
        ex = self._extractor
        if ex.decode_in == "threads" or not self._jobs:
            return False
        if not all(isinstance(self._images.inputs[self._input(job)], str) for job in self._jobs):
            return False  # in-memory images: no file a process could read
        if ex.decode_in == "processes":
            return True
        return (
            len(self._jobs) >= PROCESS_MIN_FILES
            and (os.cpu_count() or 1) >= PROCESS_MIN_CPUS
            and ex.backbone.runs_on_gpu()
        )

    def _input(self, job: tuple[str, list[int]]) -> int:
        """The input a job decodes (its first row's; the others share its content)."""
        return int(self._ok[job[1][0]])

    def _decoded_in_processes(self) -> Iterator[tuple[Any, Any, Any]]:
        """``(key, pixels, reason)`` per job, in order, decoded by joblib's loky workers
        (reused across calls), a bounded number of chunks in flight."""
        from joblib import Parallel, delayed

        ex, images = self._extractor, self._images
        files = [(images.inputs[i], images.names[i]) for i in map(self._input, self._jobs)]
        chunks = (files[k : k + PROCESS_CHUNK] for k in range(0, len(files), PROCESS_CHUNK))
        parallel = Parallel(
            n_jobs=ex._processes, backend="loky", return_as="generator", pre_dispatch="2*n_jobs"
        )
        for decoded in parallel(delayed(decode_files)(ex.decoding, chunk) for chunk in chunks):
            yield from decoded

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
