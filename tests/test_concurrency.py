"""Several processes extracting into one cache at the same time.

The workers are real extractions in subprocesses (``_extract_worker.py``): a seeded
random MobileNetV2, batches of 8, sharing one cache directory.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _extract_worker import N_IMAGES, finish, index_counts, reference, start

from featx.cache import EmbeddingCache


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    return reference(tmp_path_factory)


def _start_together(jobs: dict[str, list[str]], cache_dir: Path, tmp_path: Path) -> dict:
    """Start one worker per job, release them at once, and return ``{name: (X, report)}``."""
    go = tmp_path / "go"
    procs = {
        name: start(paths, cache_dir, tmp_path / name, delay=0.05, go=go)
        for name, paths in jobs.items()
    }
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{name}.ready").exists() for name in jobs):
        assert all(p.poll() is None for p in procs.values()), "a worker died before the start"
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.01)
    go.touch()
    return {name: finish(proc, tmp_path / name) for name, proc in procs.items()}


def test_overlapping_writers_share_one_cache(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    subsets = {"first": slice(0, 150), "second": slice(50, 200)}
    results = _start_together(
        {name: paths[subset] for name, subset in subsets.items()}, cache_dir, tmp_path
    )

    for name, subset in subsets.items():
        X, report = results[name]
        assert report["paths"] == paths[subset]
        np.testing.assert_array_equal(X, clean_X[subset], err_msg=name)
        assert not [w for w in report["warnings"] if "cache" in w.lower()], report["warnings"]
    # Both looked the cache up before either wrote, so both computed (and wrote) the
    # 100 images they share: the index kept exactly one row for each.
    assert sum(report["cache_misses"] for _, report in results.values()) > N_IMAGES
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    assert EmbeddingCache(cache_dir).info()["n_vectors"] == N_IMAGES
    report = EmbeddingCache(cache_dir).verify(grace=0)  # at most unused losers' shards
    assert report["ok"] and report["vectors_dropped"] == 0, report

    X, report = finish(start(paths, cache_dir, tmp_path / "all"), tmp_path / "all")
    np.testing.assert_array_equal(X, clean_X)
    assert (report["cache_hits"], report["cache_misses"]) == (N_IMAGES, 0)


_CACHE_WRITER = """
import sys, warnings
import numpy as np
warnings.simplefilter("error")  # a cache that disables itself (locked database) fails
from featx.cache import EmbeddingCache

cache_dir, worker = sys.argv[1], int(sys.argv[2])
cache = EmbeddingCache(cache_dir)
cache.register("f" * 64, 4, {"test": "concurrency"})
for batch in range(30):
    keys = [f"image-{(worker * 7 + batch * 3 + j) % 120}" for j in range(8)]
    vectors = np.array([[int(k.split("-")[1])] * 4 for k in keys], np.float32)
    cache.put("f" * 64, keys, vectors)
"""


def test_many_processes_creating_and_filling_a_cache_at_once(tmp_path):
    """Without TensorFlow, so that many writers fit: they create the index together."""
    script = tmp_path / "writer.py"
    script.write_text(_CACHE_WRITER)
    cache_dir = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache_dir), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(8)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output

    assert index_counts(cache_dir) == (120, 120)
    keys = [f"image-{i}" for i in range(120)]
    found, vectors = EmbeddingCache(cache_dir).get("f" * 64, keys, dim=4)
    assert found.all()
    np.testing.assert_array_equal(vectors, np.repeat(np.arange(120.0), 4).reshape(120, 4))


def test_opening_a_new_cache_while_another_process_writes_it(tmp_path):
    """The race of two processes opening a new cache at once, made deterministic: a second
    connection holds the write lock on the brand-new index (as a process switching it to
    WAL does) for a moment; opening the cache must wait for it, not disable caching."""
    root = tmp_path / "cache" / "featx-v1"
    root.mkdir(parents=True)
    other = sqlite3.connect(root / "index.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, ["COMMIT"])
    release.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "cannot be used (database is locked)" fails here
            cache = EmbeddingCache(tmp_path / "cache")
    finally:
        release.join()
        other.close()
    cache.put("f" * 64, ["image"], np.ones((1, 4), np.float32))
    found, _ = cache.get("f" * 64, ["image"], dim=4)
    assert cache.enabled and found.all()
