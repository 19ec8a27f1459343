"""Crash safety: a real extraction killed with SIGKILL resumes to exactly the clean result.

Each test runs the extraction in a subprocess (``_extract_worker.py``: a seeded random
MobileNetV2, batches of 8), kills it at some moment, inspects what it left on disk,
then runs it again into the same cache.
"""

from __future__ import annotations

import random
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _extract_worker import N_IMAGES, SHARDS_GLOB, finish, index_counts, reference, start

from featx._pipeline import content_key as _content_key
from featx.cache import EmbeddingCache

pytestmark = pytest.mark.slow

BATCH = 8
DELAY = 0.1  # seconds per batch, so that the kill points below land mid-run
TEMP_GLOB = "featx-v1/shards/*/.*.tmp"  # a shard being written


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    return reference(tmp_path_factory)


def _shard_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob(SHARDS_GLOB))


def _run_and_kill(
    paths, cache_dir, out, *, delay=DELAY, after_shards=0, writing=False, wait=None, between=None
):
    """Start a worker and SIGKILL it once ``after_shards`` shard files exist and then, with
    ``writing``, as soon as a shard's temporary file exists, or after a random time drawn
    from ``wait`` (seconds); with ``between``, at a random time from the start instead.

    Returns the moment of the kill, for failure messages.
    """
    start_by = None if between is None else random.uniform(*between)
    pause = 0.0 if wait is None else random.uniform(*wait)
    proc = start(paths, cache_dir, out, delay=delay)
    started = time.monotonic()
    try:
        while proc.poll() is None and start_by is None:
            if len(_shard_files(cache_dir)) >= after_shards:
                break
            time.sleep(0.002)
        while proc.poll() is None and writing and not any(cache_dir.glob(TEMP_GLOB)):
            time.sleep(0.001)
        time.sleep(pause if start_by is None else start_by)
        elapsed = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the worker ended by itself before the kill point:\n{out.with_suffix('.log').read_text()}"
    )
    return f"killed after {elapsed:.2f}s with {len(_shard_files(cache_dir))} shard files"


def _check_left_consistent(cache_dir: Path, paths: list[str], clean_X: np.ndarray) -> int:
    """Every row the killed process indexed has its intact vector, equal to the clean one.

    Returns the number of indexed images.
    """
    if not (cache_dir / "featx-v1" / "index.sqlite").exists():
        return 0  # killed before the cache was created
    cache = EmbeddingCache(cache_dir)
    info = cache.info()  # must not raise on a cache left by a killed process
    rows, distinct = index_counts(cache_dir)
    assert rows == distinct == info["n_vectors"]
    if rows == 0:
        return 0
    (entry,) = info["fingerprints"]
    keys = [_content_key(Path(p).read_bytes()) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped shard (missing or corrupt) fails here
        found, vectors = cache.get(entry["fingerprint"], keys, entry["dim"])
    cache.close()
    assert found.sum() == rows, "an index row has no vector"
    np.testing.assert_array_equal(vectors[found], clean_X[found])
    return rows


KILL_POINTS = {
    # Right as a shard file lands: usually before its index transaction.
    "as-shard-2-lands": {"after_shards": 2},
    # While the 7th shard is being written and fsynced under its temporary name.
    "writing-shard-7": {"after_shards": 6, "writing": True},
    # Anywhere in the compute/write cycle of the batches after the 13th.
    "random-phase-after-shard-13": {"after_shards": 13, "wait": (0.0, DELAY)},
    # At full speed: the decode thread, the model and the writer all busy.
    "full-speed-after-shard-20": {"after_shards": 20, "delay": 0.0},
    # Mostly while starting up, or creating the cache.
    "random-early-time": {"between": (0.2, 5.0)},
}


@pytest.mark.parametrize("kill", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_killed_run_resumes_bit_identical(clean, tmp_path, kill):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    how = _run_and_kill(paths, cache_dir, tmp_path / "killed", **kill)

    indexed = _check_left_consistent(cache_dir, paths, clean_X)
    assert indexed < N_IMAGES, f"the kill came too late to interrupt anything ({how})"
    if "after_shards" in kill:
        # Shards are written one at a time: all but the newest file are indexed.
        assert indexed >= BATCH * (kill["after_shards"] - 1), how

    X, report = finish(start(paths, cache_dir, tmp_path / "resumed"), tmp_path / "resumed")
    assert report["paths"] == paths
    np.testing.assert_array_equal(X, clean_X, err_msg=how)
    assert report["cache_hits"] == indexed, how
    assert report["cache_misses"] == N_IMAGES - indexed, how
    assert not [w for w in report["warnings"] if "cache" in w.lower()], report["warnings"]
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    # What the kill left (a temporary or unindexed shard file) is garbage verify removes.
    repaired = EmbeddingCache(cache_dir).verify(grace=0)
    assert repaired["ok"] and repaired["vectors_dropped"] == 0, repaired
    assert repaired["n_vectors"] == N_IMAGES


def test_corrupted_shard_is_detected_and_recomputed(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    finish(start(paths, cache_dir, tmp_path / "first"), tmp_path / "first")
    victim = _shard_files(cache_dir)[3]
    data = bytearray(victim.read_bytes())
    data[-40:-8] = bytes(b ^ 0xFF for b in data[-40:-8])  # inside the float data
    victim.write_bytes(bytes(data))

    X, report = finish(start(paths, cache_dir, tmp_path / "second"), tmp_path / "second")
    np.testing.assert_array_equal(X, clean_X)
    assert report["cache_misses"] == BATCH
    assert any("checksum does not match" in w for w in report["warnings"]), report["warnings"]
    assert not victim.exists()

    # The recomputed vectors are cached again: a third run reads everything.
    X, report = finish(start(paths, cache_dir, tmp_path / "third"), tmp_path / "third")
    np.testing.assert_array_equal(X, clean_X)
    assert (report["cache_hits"], report["cache_misses"]) == (N_IMAGES, 0)
    assert not [w for w in report["warnings"] if "cache" in w.lower()], report["warnings"]
