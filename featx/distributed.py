"""Distributed extraction on a Ray cluster: ``Extractor(engine="ray")``.

Only the computation of cache misses is distributed; everything else is the local
engine's flow (:mod:`featx.extract`): the driver resolves the source, hashes each input,
looks the hashes up in the cache and, at the end, returns the rows in input order.

The misses become a Ray Data dataset of ``(job, path)`` rows, ``job`` being the miss's
position in the driver's list. A pool of actors (``map_batches`` with a callable class),
each holding one copy of the network, reads each file, hashes and decodes it with
featx's own decoder and runs the network on batches of exactly ``batch_size`` images,
the last zero-padded: the same calls on the same shapes as the local engine, so the
vectors are bit-identical. Decoding runs inside the actors, not in separate tasks, so
that a cluster whose CPUs are all held by actors (a 2-CPU machine with 2 actors) cannot
starve it, and decoded pixels never travel through the object store.

The driver streams the results back and writes them through the same cache writer as a
local run, under the same content keys and fingerprint: a distributed run and a local
run share their vectors, and the cache needs no shared filesystem (only the driver
writes it). Input order comes from the job ids, never from Ray's output order.

A worker that dies (killed, out of memory, its node lost) is restarted and its batch
retried (Ray Data's actor pool sets ``max_restarts`` and ``max_task_retries`` to -1, no
limit, by default; featx keeps that); each job is taken once on the driver,
so nothing is lost or counted twice, and the batches already written stay in the cache.

Ray is optional (``pip install "featx[ray]"``) and imported only here, when a run
starts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from featx._pipeline import CacheWriter, ComputeTask, Decoding, progress, quote, read_file
from featx.images import DecodeError
from featx.sources import ImageSet

__all__ = ["ENGINES", "RayOptions", "check_engine_options", "compute_on_ray"]

ENGINES = ("local", "ray")
# The driver stores vectors in shards of at least this many, or at least this often.
WRITE_EVERY = 1024
WRITE_SECONDS = 5.0
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


class RayOptions(NamedTuple):
    """The Ray engine's resources: copies of the network, and what each one holds."""

    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


def check_engine_options(
    engine: str,
    address: str | None,
    actors: int | None,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> None:
    """Refuse a bad engine setting before any work starts, saying what is expected."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported. Expected one of {ENGINES}.")
    if address is not None and (not isinstance(address, str) or not _ADDRESS.match(address)):
        raise ValueError(
            f"address={address!r} is not a Ray cluster address. Expected None (start a local "
            "Ray on this machine), 'auto' (the cluster this machine belongs to), "
            "'HOST:PORT' (the head node's GCS) or 'ray://HOST:PORT' (Ray Client)."
        )
    if engine == "local" and address is not None:
        raise ValueError(
            f"address={address!r} was given with engine='local'. Pass engine='ray' to run on "
            "that cluster, or drop address=."
        )
    whole = isinstance(actors, (int, np.integer)) and not isinstance(actors, bool)
    if actors is not None and not (whole and actors >= 1):
        raise ValueError(f"ray_actors={actors!r} must be a positive integer, or None.")
    if not cpus_per_actor > 0:
        raise ValueError(f"ray_cpus_per_actor={cpus_per_actor!r} must be positive.")
    if not gpus_per_actor >= 0:
        raise ValueError(f"ray_gpus_per_actor={gpus_per_actor!r} must be 0 or more.")


def compute_on_ray(
    task: ComputeTask,
    options: RayOptions,
    images: ImageSet,
    ok: np.ndarray,
    todo: dict[str, list[int]],
    X: np.ndarray,
    on_error: str,
    address: str | None,
) -> list[tuple[str, str, list[int]]]:
    """Compute ``todo`` (content key -> rows of ``X``) on Ray, into ``X``; the cache is
    written by this process. Returns the inputs that failed, as (name, reason, rows):
    the local engine's result, bit for bit."""
    if not images.are_files:
        raise ValueError(
            "engine='ray' reads image files on the cluster's workers; this source holds "
            "in-memory images (arrays or PIL images), which are already in this process. "
            "Use engine='local' for them, or save them as files (or a manifest of paths) first."
        )
    ray = _connect(address)
    jobs = list(todo.items())
    paths = [images.inputs[int(ok[rows[0]])] for _, rows in jobs]
    dataset = _dataset(ray, paths, task, options)
    started = time.perf_counter()
    writer = CacheWriter(task.cache, task.fingerprint)
    bar = progress(len(jobs), f"{task.backbone.name} on Ray", task.verbose)
    failures: list[tuple[str, str, list[int]]] = []
    done = np.zeros(len(jobs), dtype=bool)
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    flushed = time.monotonic()
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for job, key, vector, reason in zip(
                batch["job"], batch["key"], batch["vector"], batch["reason"], strict=True
            ):
                if done[job]:  # a retried batch delivered twice: each job is taken once
                    continue
                done[job] = True
                rows = jobs[job][1]
                if reason:
                    failures.append((images.names[int(ok[rows[0]])], str(reason), rows))
                    continue
                keys.append(str(key))
                vectors.append(vector)
                X[rows] = vector
            # The driver writes for the whole cluster: shards of ~1,000 vectors store many
            # times faster than one per batch (benchmarks/results-ray-2026-11-23.md), and a
            # few seconds' work at most is recomputed if the driver dies.
            due = time.monotonic() - flushed > WRITE_SECONDS
            if keys and (len(keys) >= WRITE_EVERY or due):
                writer.put(keys, np.stack(vectors))
                keys, vectors, flushed = [], [], time.monotonic()
            bar.update(len(batch["job"]))
            if on_error == "raise" and failures:
                break
        if on_error == "raise" and failures:
            name, reason, _ = min(failures, key=lambda f: f[2][0])
            raise DecodeError(quote(name), reason)
        if not done.all():
            raise RuntimeError(
                f"The Ray run returned {int(done.sum())} of {len(jobs)} images without an "
                "error; this is a bug in featx's Ray engine, please report it."
            )
    finally:
        if keys:  # what was computed is kept, even when the run stops on an error
            writer.put(keys, np.stack(vectors))
        bar.close()
        writer.close()
    task.cache.record_cost(
        task.fingerprint, len(jobs) - len(failures), time.perf_counter() - started
    )
    return failures


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(
            f"engine='ray' needs Ray Data, which is not installed ({exc}). Install it with "
            "pip install \"featx[ray]\", or use engine='local'."
        ) from exc
    return ray


def _connect(address: str | None):
    """Attach to Ray: the running session, the cluster at ``address``, or a new local one."""
    ray = _import_ray()
    _check_reachable(address)
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                # Workers' TensorFlow start-up chatter stays in the worker logs; errors still
                # reach the driver as exceptions.
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except ConnectionError as exc:
            raise ConnectionError(
                f"Cannot reach a Ray cluster at address={address!r}: {exc}. Start one with "
                "`ray start --head` (then address='auto' on its machines), check the host "
                "and port, or pass address=None for a local Ray on this machine."
            ) from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # featx shows its own, counting images
    context.enable_auto_log_stats = False
    # Ray Data's per-run INFO lines and its notice that its bars are off; warnings and
    # errors still show.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return ray


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast on a head node that does not answer: Ray itself retries for minutes."""
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(
            f"Cannot reach a Ray cluster at address={address!r}: {exc}. Start one with "
            "`ray start --head` (then address='auto' on its machines), check the host and "
            "port, or pass address=None for a local Ray on this machine."
        ) from None


def _dataset(ray, paths: list[str], task: ComputeTask, options: RayOptions):
    import pyarrow as pa

    batch_size = task.batch_size
    table = pa.table({"job": np.arange(len(paths), dtype=np.int64), "path": paths})
    # One block per batch: a dead worker costs one batch's recomputation, no more.
    blocks = max(1, -(-len(paths) // batch_size))
    actors = options.actors or _default_actors(ray, options.cpus_per_actor)
    return ray.data.from_arrow(table, override_num_blocks=blocks).map_batches(
        _EmbedActor,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor,
        fn_constructor_kwargs={
            "backbone": task.backbone,
            "decoding": task.decoding,
            "batch_size": batch_size,
            "threads": max(1, int(options.cpus_per_actor)),
        },
    )


def _default_actors(ray, cpus_per_actor: float) -> int:
    """One actor per ``cpus_per_actor`` CPUs of the cluster."""
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // cpus_per_actor))


class _EmbedActor:
    """One copy of the network on a Ray worker: file paths in, vectors (or reasons) out."""

    def __init__(self, backbone: Any, decoding: Decoding, batch_size: int, threads: int) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.backbone, self.decoding = backbone, decoding
        self.batch_size = batch_size
        self.backbone.prepare((batch_size, *backbone.input_size, 3))
        self.pool = ThreadPoolExecutor(threads)

    def _decode(self, path: str) -> tuple[str, np.ndarray | None, str]:
        try:
            key, pixels = self.decoding.decode(read_file(path), path)
            return key, pixels, ""
        except DecodeError as exc:
            return "", None, exc.reason

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = list(self.pool.map(self._decode, batch["path"]))
        n, size = len(decoded), self.backbone.input_size
        vectors = np.zeros((n, self.backbone.dim), np.float32)
        good = [i for i, (_, pixels, _) in enumerate(decoded) if pixels is not None]
        # Exactly the local engine's batches: batch_size images, the last zero-padded.
        for start in range(0, len(good), self.batch_size):
            members = good[start : start + self.batch_size]
            images = np.zeros((self.batch_size, *size, 3), np.float32)
            for slot, i in enumerate(members):
                images[slot] = decoded[i][1]
            vectors[members] = self.backbone.embed(images)[: len(members)]
        return {
            "job": batch["job"],
            "key": np.array([key for key, _, _ in decoded], dtype=object),
            "vector": vectors,
            "reason": np.array([reason for _, _, reason in decoded], dtype=object),
        }
