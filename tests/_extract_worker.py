"""One real extraction in its own process, for the crash-safety and concurrency tests.

Usage::

    python _extract_worker.py LIST_FILE CACHE_DIR|none OUT_PREFIX

Embeds the image paths listed one per line in ``LIST_FILE`` with a seeded random
MobileNetV2 at 32 px, batches of 8, and writes ``OUT_PREFIX.npy`` (the embeddings)
and ``OUT_PREFIX.json`` (paths, cache hits and misses, warnings raised). With
``FEATX_TEST_BATCH_DELAY`` set, each batch waits that many seconds after computing, so
that a test can kill the process while it is writing the cache; with ``FEATX_TEST_GO``
set, it waits for that file to exist before extracting, so that workers start together.

With ``FEATX_TEST_BACKBONE=numpy`` the network is :class:`NumpyBackbone` instead, a
deterministic TensorFlow-free stand-in, so that a process starts in a fraction of a second
and a test can afford dozens of them. Three more variables stretch the phases of a cache
write, so that a kill lands in the one a test aims at (the worker monkeypatches
:mod:`featx.cache`; featx has no test hooks): ``FEATX_TEST_WRITE_DELAY`` pauses halfway
through writing a shard's temporary file, ``FEATX_TEST_RENAME_DELAY`` after the shard is
renamed into place and before its index transaction, ``FEATX_TEST_COMMIT_DELAY`` inside
the index transaction, just before ``COMMIT``, while the file ``OUT_PREFIX.committing``
exists.

Imported by the tests (``test_cache.py``) for what drives it: :func:`start` and
:func:`finish`, :func:`start_together` (several workers released at once),
:func:`run_and_kill` (the one kill harness: SIGKILL a worker at a chosen point of its cache
writes) and :func:`reference` (the clean result, once per session); and for what a worker
leaves on disk: :func:`index_counts`, :func:`shard_files`, :func:`temp_files`,
:func:`indexed_paths`, :func:`unindexed_shards` and :func:`phase_on_disk`.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import Backbone
from featx.cache import CACHE_FORMAT, SHARD_SUFFIX

N_IMAGES = 200
WORKER = Path(__file__).resolve()
ROOT = f"featx-v{CACHE_FORMAT}"
SHARDS_GLOB = f"{ROOT}/shards/*/*{SHARD_SUFFIX}"
TEMP_GLOB = f"{ROOT}/shards/*/.*{SHARD_SUFFIX}.tmp"  # a shard being written
INDEX = Path(ROOT) / "index.sqlite"


def write_images(folder: Path, n: int) -> list[str]:
    """Write ``n`` distinct seeded 40x40 JPEGs into ``folder``; return their paths in order."""
    from conftest import random_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.jpg"
        random_image(1000 + i, size=(40, 40)).save(path, quality=90)
        paths.append(str(path))
    return paths


class NumpyBackbone(Backbone):
    """A TensorFlow-free stand-in network: the mean and deviation of each 4x4 pixel block.

    Deterministic, the same in every process, and each image's vector is computed from
    that image alone, so a resumed run must reproduce a clean one bit for bit.
    """

    name = "numpy-blocks"

    def __init__(self) -> None:
        self.input_size = (16, 16)
        self.dim = 96

    def identity(self) -> dict:
        return {"architecture": "numpy-blocks", "weights": "v1", "input_size": [16, 16]}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        blocks = batch.reshape(n, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, 16, 3)
        stats = np.concatenate([blocks.mean(axis=2), blocks.std(axis=2)], axis=1)
        return stats.reshape(n, self.dim).astype(np.float32)


def reference(
    tmp_path_factory, n: int = N_IMAGES, backbone: str = "mobilenet"
) -> tuple[list[str], Any]:
    """The session's ``n`` images and their embeddings from a run without a cache.

    Kept under the session's base temporary folder, so the test modules share one run.
    """
    name = "extract-reference" if backbone == "mobilenet" else f"extract-reference-{backbone}-{n}"
    root = tmp_path_factory.getbasetemp() / name
    out = root / "reference"
    if not out.with_suffix(".json").is_file():
        paths = write_images(root / "images", n)
        X, report = finish(start(paths, None, out, backbone=backbone), out)
        assert report["paths"] == paths and report["cache_misses"] == n
    X, report = load(out)
    return report["paths"], X


def index_counts(cache_dir: Path) -> tuple[int, int]:
    """``(rows, distinct keys)`` of the cache's SQLite index, read as another process would."""
    with closing(sqlite3.connect(cache_dir / INDEX)) as conn:
        return conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM vectors").fetchone()


def shard_files(cache_dir: Path) -> list[Path]:
    """The shard files in place under their final names, sorted."""
    return sorted(cache_dir.glob(SHARDS_GLOB))


def temp_files(cache_dir: Path) -> list[Path]:
    """The temporary files of shards being written (or left by a writer killed mid-write)."""
    return sorted(cache_dir.glob(TEMP_GLOB))


def indexed_paths(cache_dir: Path) -> set[Path]:
    """The shard files the index lists, whether or not they exist."""
    root = cache_dir / ROOT
    with closing(sqlite3.connect(cache_dir / INDEX)) as conn:
        return {root / path for (path,) in conn.execute("SELECT path FROM shards")}


def unindexed_shards(cache_dir: Path) -> set[Path]:
    """Shard files in place that the index does not list (orphans, or a commit to come)."""
    files = shard_files(cache_dir)  # none before the schema exists: skip the query then
    return set(files) - indexed_paths(cache_dir) if files else set()


PHASES = {
    "no-cache-yet": "killed before the cache was created",
    "temp-file": "killed while writing a shard (its temporary file is on disk)",
    "in-transaction": "killed inside the index transaction (shard on disk, rows uncommitted)",
    "orphan-shard": "killed between the shard's rename and its index transaction",
    "clean": "killed at a clean boundary (every shard file indexed, no temporary file)",
}


def phase_on_disk(cache_dir: Path, committing: Path) -> str:
    """Which of :data:`PHASES` a kill landed in, judged only from what the process left on
    disk (``committing``: the worker's ``OUT_PREFIX.committing`` marker)."""
    if not (cache_dir / INDEX).exists():
        return "no-cache-yet"
    if temp_files(cache_dir):
        return "temp-file"
    if unindexed_shards(cache_dir):
        return "in-transaction" if committing.exists() else "orphan-shard"
    return "clean"


def start(
    paths: list[str],
    cache_dir: Path | None,
    out: Path,
    *,
    delay: float = 0.0,
    go: Path | None = None,
    backbone: str = "mobilenet",
    write_delay: float = 0.0,
    rename_delay: float = 0.0,
    commit_delay: float = 0.0,
) -> subprocess.Popen:
    """Start a worker process on ``paths``; its results go to ``out.npy`` and ``out.json``.

    With ``go``, the worker builds its extractor and imports TensorFlow, creates
    ``out.ready``, and waits for the file ``go`` to exist before extracting.
    ``backbone="numpy"`` runs :class:`NumpyBackbone`; the ``*_delay`` arguments stretch
    the phases of each cache write (see the module's docstring).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(paths) + "\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", FEATX_TEST_BATCH_DELAY=str(delay))
    env["FEATX_TEST_GO"] = str(go or "")
    env["FEATX_TEST_BACKBONE"] = backbone
    env["FEATX_TEST_WRITE_DELAY"] = str(write_delay)
    env["FEATX_TEST_RENAME_DELAY"] = str(rename_delay)
    env["FEATX_TEST_COMMIT_DELAY"] = str(commit_delay)
    # Output goes to a file: a pipe nobody reads while the test polls could fill and block.
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(listing), str(cache_dir or "none"), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_together(
    jobs: dict[str, list[str]], cache_dir: Path, folder: Path, *, timeout: float = 180, **options
) -> dict[str, subprocess.Popen]:
    """Start one worker per job (``{name: paths}``, results to ``folder / name``) with
    :func:`start`'s ``options``, release them at once once all are ready; return
    ``{name: Popen}``."""
    go = folder / "go"
    procs = {
        name: start(paths, cache_dir, folder / name, go=go, **options)
        for name, paths in jobs.items()
    }
    deadline = time.monotonic() + timeout
    while not all((folder / f"{name}.ready").exists() for name in jobs):
        assert all(p.poll() is None for p in procs.values()), "a worker died before the start"
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.01)
    go.touch()
    return procs


@dataclass(frozen=True)
class Kill:
    """What :func:`run_and_kill` saw: how long after the start it killed the worker, how
    many shard files were then in place, and the phase (of :data:`PHASES`) it landed in."""

    seconds: float
    shard_files: int
    phase: str

    def __str__(self) -> str:
        return (
            f"killed after {self.seconds:.2f}s with {self.shard_files} shard files ({self.phase})"
        )


def run_and_kill(
    paths: list[str],
    cache_dir: Path,
    out: Path,
    *,
    new_shards: int = 0,
    temp: bool = False,
    committing: bool = False,
    pause: tuple[float, float] = (0.0, 0.0),
    rng: random.Random | None = None,
    timeout: float = 60,
    **options,
) -> Kill:
    """Start a worker (:func:`start` with ``options``) and SIGKILL it at a chosen point.

    The point: once ``new_shards`` more shard files are in place than before the start,
    then (with ``temp``) once a shard's temporary file exists, then (with ``committing``)
    once the worker is inside its index transaction, then after a pause drawn uniformly
    from ``pause`` seconds by ``rng`` (seeded ``Random(0)`` if not given). With the
    defaults, the kill comes that pause after the start. Fails if the point does not come
    within ``timeout`` seconds, or if the worker ended before the kill.
    """
    rng = random.Random(0) if rng is None else rng
    extra = rng.uniform(*pause)
    before = len(shard_files(cache_dir))
    marker = Path(f"{out}.committing")
    proc = start(paths, cache_dir, out, **options)
    started = time.monotonic()
    point = f"new_shards={new_shards}, temp={temp}, committing={committing}"

    def wait_for(condition) -> None:
        while proc.poll() is None and not condition():
            assert time.monotonic() < started + timeout, f"{out.name}: {point} never came"
            time.sleep(0.001)

    try:
        wait_for(lambda: len(shard_files(cache_dir)) >= before + new_shards)
        if temp:
            wait_for(lambda: bool(temp_files(cache_dir)))
        if committing:
            wait_for(marker.exists)
        time.sleep(extra)
        seconds = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"{out.name} ({point}): the worker ended by itself before the kill:\n"
        f"{out.with_suffix('.log').read_text()}"
    )
    return Kill(seconds, len(shard_files(cache_dir)), phase_on_disk(cache_dir, marker))


def finish(proc: subprocess.Popen, out: Path, timeout: float = 180) -> tuple:
    """Wait for a worker; return ``(X, report)``, failing with its output if it failed."""
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, (
        f"worker exited with {proc.returncode}:\n{out.with_suffix('.log').read_text()}"
    )
    return load(out)


def load(out: Path) -> tuple:
    import numpy as np

    return np.load(out.with_suffix(".npy")), json.loads(out.with_suffix(".json").read_text())


def main(listing: str, cache_dir: str, out: str) -> None:
    caught: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message}")

    # Record warnings from every thread (the cache writer warns from its own).
    warnings.simplefilter("always")
    warnings.showwarning = record

    from featx import Extractor

    paths = Path(listing).read_text().split()
    numpy_mode = os.environ.get("FEATX_TEST_BACKBONE") == "numpy"
    ex = Extractor(
        NumpyBackbone() if numpy_mode else "MobileNetV2",
        weights=None,
        input_size=None if numpy_mode else 32,
        batch_size=8,
        cache_dir=None if cache_dir == "none" else cache_dir,
        verbose=False,
    )
    _stretch_cache_writes(out)
    delay = float(os.environ.get("FEATX_TEST_BATCH_DELAY") or 0)
    if delay:
        compute = ex.backbone.embed

        def slow_embed(batch):
            vectors = compute(batch)
            time.sleep(delay)
            return vectors

        ex.backbone.embed = slow_embed
    go = os.environ.get("FEATX_TEST_GO")
    if go:  # a start line shared with other workers: say we are ready, wait for the signal
        if not numpy_mode:
            import tensorflow  # noqa: F401  (its import takes seconds; pay it before the line)

        Path(out + ".ready").touch()
        while not Path(go).exists():
            time.sleep(0.005)
    emb = ex.extract(paths)
    tmp = Path(out + ".tmp.npy")
    np.save(tmp, emb.X)
    os.replace(tmp, out + ".npy")
    report = {
        "paths": emb.paths,
        "cache_hits": emb.cache_hits,
        "cache_misses": emb.cache_misses,
        "failed": emb.failed,
        "warnings": caught,
    }
    Path(out + ".json").write_text(json.dumps(report))


def _stretch_cache_writes(out: str) -> None:
    """Monkeypatch :mod:`featx.cache` to pause in the phases named by the environment."""
    import featx.cache

    write = float(os.environ.get("FEATX_TEST_WRITE_DELAY") or 0)
    rename = float(os.environ.get("FEATX_TEST_RENAME_DELAY") or 0)
    commit = float(os.environ.get("FEATX_TEST_COMMIT_DELAY") or 0)
    if write:
        save = np.save

        def save_slowly(file, arr, *args, **kwargs):
            if not str(getattr(file, "name", "")).endswith(".npy.tmp"):
                return save(file, arr, *args, **kwargs)
            buffer = io.BytesIO()
            save(buffer, arr, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            time.sleep(write)  # a kill now leaves a partial temporary file
            file.write(data[len(data) // 2 :])

        np.save = save_slowly
    if rename:
        fsync_dir = featx.cache._fsync_dir

        def fsync_dir_slowly(folder):
            fsync_dir(folder)
            time.sleep(rename)  # put() renamed the shard and has not begun its transaction

        featx.cache._fsync_dir = fsync_dir_slowly
    if commit:
        transaction = featx.cache._Transaction
        put = featx.cache.EmbeddingCache.put
        marker = Path(out + ".committing")
        in_put = threading.local()

        class SlowCommit(transaction):
            def __exit__(self, exc_type, exc, tb):
                if exc_type is None and getattr(in_put, "active", False):
                    marker.touch()
                    time.sleep(commit)  # the shard and vector rows are inserted, uncommitted
                try:
                    return super().__exit__(exc_type, exc, tb)
                finally:
                    marker.unlink(missing_ok=True)

        def tracked_put(self, *args, **kwargs):
            in_put.active = True
            try:
                return put(self, *args, **kwargs)
            finally:
                in_put.active = False

        featx.cache._Transaction = SlowCommit
        featx.cache.EmbeddingCache.put = tracked_put


if __name__ == "__main__":
    main(*sys.argv[1:4])
