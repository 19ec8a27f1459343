"""The cache's own contract: what :class:`featx.cache.EmbeddingCache` keeps survives kills
at every phase of a write, concurrent writers, disk faults and failed index transactions;
``EmbeddingCache.verify`` finds and repairs damage; a cache that cannot be used degrades
to no cache, with a warning.

The kill and most concurrency tests run real extractions in subprocesses
(``_extract_worker.py``), killed with :func:`_extract_worker.run_and_kill`. Most use its
TensorFlow-free mode (``backbone="numpy"``, a deterministic stand-in network): a process
starts in a fraction of a second, so one test can afford two dozen kills. The others run a
seeded random MobileNetV2 (batches of 8): kills of a real TensorFlow extraction, and
several TensorFlow processes filling one cache at once.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _extract_worker import (
    INDEX,
    N_IMAGES,
    PHASES,
    ROOT,
    SHARDS_GLOB,
    NumpyBackbone,
    finish,
    index_counts,
    indexed_paths,
    reference,
    run_and_kill,
    shard_files,
    start,
    start_together,
    temp_files,
    unindexed_shards,
)
from conftest import CountingBackbone

from featx import Extractor
from featx._pipeline import content_key as _content_key
from featx.cache import EmbeddingCache
from featx.cli import main as cli_main

BATCH = 8  # the worker's batch size
N_CHAIN = 400  # images of the kill chain: 50 batches of 8
FINDINGS = (
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
FP = "f" * 64


def assert_same_vectors(X: np.ndarray, reference: np.ndarray, name: str = "") -> None:
    """Equal to float32 rounding. TensorFlow's CPU kernels (2.21, oneDNN) can give an image
    results that differ in the last bits with its position in the batch, so a worker whose
    batches start elsewhere than the reference's matches it to rounding, not bit for bit
    (a vector of another image, or a stale one, is nowhere near)."""
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(X, reference, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """The session's images and their MobileNetV2 vectors from a worker run without a cache."""
    return reference(tmp_path_factory)


@pytest.fixture(scope="module")
def numpy_clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """The chain's images and their vectors from a worker run without a cache."""
    return reference(tmp_path_factory, N_CHAIN, backbone="numpy")


# -- checks -----------------------------------------------------------------------------------


def _check_left_consistent(
    cache_dir: Path, paths: list[str], clean_X: np.ndarray, fingerprint: str | None = None
) -> int:
    """Every row a killed process indexed has its intact vector (read without a warning),
    equal to the clean one; with ``fingerprint``, it is the one indexed.

    Returns the number of indexed images.
    """
    if not (cache_dir / INDEX).exists():
        return 0  # killed before the cache was created
    cache = EmbeddingCache(cache_dir)  # completes the schema if the kill came mid-creation
    info = cache.info()  # must not raise on a cache left by a killed process
    rows, distinct = index_counts(cache_dir)
    assert rows == distinct == info["n_vectors"]
    if rows == 0:
        cache.close()
        return 0
    (entry,) = info["fingerprints"]
    assert fingerprint in (None, entry["fingerprint"]), info
    keys = [_content_key(Path(p).read_bytes()) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped shard (missing or corrupt) fails here
        found, vectors = cache.get(entry["fingerprint"], keys, entry["dim"])
    cache.close()
    assert found.sum() == rows, "an index row has no vector"
    np.testing.assert_array_equal(vectors[found], clean_X[found])
    return rows


def _assert_clean(report: dict) -> None:
    """A verify report that found nothing at all."""
    assert report["ok"], report
    assert report["integrity"] == "ok", report
    assert {name: report[name] for name in FINDINGS} == dict.fromkeys(FINDINGS, 0), report


def _age(cache_dir: Path, seconds: float = 3600) -> None:
    """Make every file under the shards folder ``seconds`` old, as if left long ago."""
    then = time.time() - seconds
    for path in (cache_dir / ROOT / "shards").rglob("*"):
        os.utime(path, (then, then))


def _extract_here(paths: list[str], cache_dir: Path):
    """The numpy worker's extraction, in this process (no process start-up to pay)."""
    ex = Extractor(NumpyBackbone(), batch_size=8, cache_dir=cache_dir, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cache warning of any kind
        result = ex.extract(paths)
    ex.cache.close()
    return result


def _extractor(cache_dir) -> Extractor:
    return Extractor(CountingBackbone(), cache_dir=cache_dir, verbose=False, batch_size=4)


def _cache_warnings(report: dict) -> list[str]:
    return [w for w in report["warnings"] if "cache" in w.lower()]


# -- kills ------------------------------------------------------------------------------------

NUMPY_WORKER = {"backbone": "numpy", "delay": 0.02}
STRETCH = 0.3  # seconds a worker pauses inside the aimed-at phase
JITTER = {"write_delay": 0.02, "rename_delay": 0.02, "commit_delay": 0.02}


def _schedule() -> list[tuple[str, dict]]:
    """The chain's kill points: ``(name, run_and_kill's arguments)``."""
    points = []
    for r in range(4):
        points += [
            (f"{r}:startup", {"pause": (0.0, 0.35)}),
            (f"{r}:after-{1 + r % 2}-shards", {"new_shards": 1 + r % 2}),
            (f"{r}:writing", {"new_shards": r % 2, "temp": True, "write_delay": STRETCH}),
            (f"{r}:renamed", {"new_shards": 1 + r % 2, "rename_delay": STRETCH}),
            (
                f"{r}:committing",
                {"new_shards": r % 2, "committing": True, "commit_delay": STRETCH},
            ),
            (f"{r}:random", {"new_shards": 1, "pause": (0.0, 0.08), **JITTER}),
        ]
    return points


def _repair_after_kill(cache_dir: Path, indexed: int, phase: str) -> None:
    """verify() leaves a just-killed writer's files alone (they could be a live writer's);
    verify(grace=0) removes them; neither touches an indexed vector."""
    if not (cache_dir / INDEX).exists():
        return
    temps, orphans = len(temp_files(cache_dir)), len(unindexed_shards(cache_dir))
    assert (temps > 0) == (phase == "temp-file")
    assert (orphans > 0) == (phase in ("in-transaction", "orphan-shard"))
    cache = EmbeddingCache(cache_dir)
    report = cache.verify()
    _assert_clean(report)
    assert (report["temp_files_pending"], report["orphan_files_pending"]) == (temps, orphans)
    assert report["n_vectors"] == indexed

    report = cache.verify(grace=0)
    assert report["ok"], report
    assert (report["temp_files_removed"], report["orphan_files_removed"]) == (temps, orphans)
    assert report["vectors_dropped"] == report["shards_dropped"] == 0, report
    assert report["n_vectors"] == indexed
    assert not temp_files(cache_dir) and not unindexed_shards(cache_dir)
    _assert_clean(cache.verify(grace=0))
    cache.close()


@pytest.mark.slow
def test_two_dozen_kills_each_resume_bit_identical(numpy_clean, tmp_path):
    """One cache, 24 runs each SIGKILLed at a chosen phase of its writes, each resumed.

    After every kill: what is indexed is intact, verify() passes and cleans up, and a
    resume (in a copy of the cache, so that the chain goes on) returns exactly the clean
    vectors, computing only what was not indexed. The next run of the chain resumes in
    the cache itself, and the last one runs to the end.
    """
    paths, clean_X = numpy_clean
    cache_dir = tmp_path / "cache"
    fingerprint = Extractor(NumpyBackbone(), cache_dir=None).fingerprint
    rng = random.Random(20240601)
    phases: Counter = Counter()
    landed = []
    for i, (name, when) in enumerate(_schedule()):
        out = tmp_path / f"run-{i:02d}"
        phase = run_and_kill(paths, cache_dir, out, rng=rng, **NUMPY_WORKER, **when).phase
        phases[phase] += 1
        indexed = _check_left_consistent(cache_dir, paths, clean_X, fingerprint)
        landed.append(f"{name}: {phase}, {indexed} indexed")
        assert indexed < N_CHAIN, f"{name}: the chain ran out of work"
        _repair_after_kill(cache_dir, indexed, phase)

        resumed = tmp_path / f"resumed-{i:02d}"
        if cache_dir.exists():
            shutil.copytree(cache_dir, resumed)
        result = _extract_here(paths, resumed)
        np.testing.assert_array_equal(result.X, clean_X, err_msg=name)
        assert (result.cache_hits, result.cache_misses) == (indexed, N_CHAIN - indexed)
        _assert_clean(EmbeddingCache(resumed).verify(grace=0))
        shutil.rmtree(resumed)

    X, report = finish(
        start(paths, cache_dir, tmp_path / "last", backbone="numpy"), tmp_path / "last"
    )
    np.testing.assert_array_equal(X, clean_X)
    assert report["cache_hits"] == indexed
    assert not _cache_warnings(report), report["warnings"]
    assert index_counts(cache_dir) == (N_CHAIN, N_CHAIN)
    _assert_clean(EmbeddingCache(cache_dir).verify(grace=0))

    summary = {PHASES[p]: n for p, n in phases.most_common()}
    print("\nkill points by phase:", json.dumps(summary, indent=1), *landed, sep="\n")
    assert sum(phases.values()) == 24
    # The aimed-at phases were hit (each is aimed at 4 times, the random points add more).
    for phase in ("temp-file", "in-transaction", "orphan-shard", "clean"):
        assert phases[phase] >= 3, (phase, summary)


def test_cli_verify_prints_one_json_object_after_a_kill(numpy_clean, tmp_path, capsys):
    paths, clean_X = numpy_clean
    paths, clean_X = paths[:160], clean_X[:160]
    cache_dir = tmp_path / "cache"
    kill = run_and_kill(
        paths,
        cache_dir,
        tmp_path / "killed",
        new_shards=2,
        rng=random.Random(0),
        rename_delay=STRETCH,
        **NUMPY_WORKER,
    )
    assert kill.phase == "orphan-shard"
    X, _ = finish(
        start(paths, cache_dir, tmp_path / "resumed", backbone="numpy"), tmp_path / "resumed"
    )
    np.testing.assert_array_equal(X, clean_X)
    capsys.readouterr()

    assert cli_main(["cache", "verify", "--cache-dir", str(cache_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert printed["ok"] is True
    assert printed["n_vectors"] == 160
    # The killed writer's shard is recent: it could be a live writer's, so it stays.
    assert printed["orphan_files_pending"] == 1 and printed["orphan_files_removed"] == 0
    _age(cache_dir)
    assert cli_main(["cache", "verify", "--cache-dir", str(cache_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is True and printed["orphan_files_removed"] == 1
    assert not unindexed_shards(cache_dir)


DELAY = 0.1  # seconds per batch of the TensorFlow kills, so that their kill points land mid-run
KILL_POINTS = {
    # Right as a shard file lands: usually before its index transaction.
    "as-shard-2-lands": {"new_shards": 2},
    # While the 7th shard is being written and fsynced under its temporary name.
    "writing-shard-7": {"new_shards": 6, "temp": True},
    # Anywhere in the compute/write cycle of the batches after the 13th.
    "random-phase-after-shard-13": {"new_shards": 13, "pause": (0.0, DELAY)},
    # At full speed: the decode thread, the model and the writer all busy.
    "full-speed-after-shard-20": {"new_shards": 20, "delay": 0.0},
    # Mostly while starting up, or creating the cache.
    "random-early-time": {"pause": (0.2, 5.0)},
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kill"), KILL_POINTS.items(), ids=KILL_POINTS.keys())
def test_killed_run_resumes_bit_identical(clean, tmp_path, name, kill):
    """A real TensorFlow extraction killed with SIGKILL resumes to exactly the clean result."""
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    how = str(
        run_and_kill(
            paths,
            cache_dir,
            tmp_path / "killed",
            rng=random.Random(name),
            timeout=300,  # TensorFlow's start-up
            **{"delay": DELAY, **kill},
        )
    )

    indexed = _check_left_consistent(cache_dir, paths, clean_X)
    assert indexed < N_IMAGES, f"the kill came too late to interrupt anything ({how})"
    if "new_shards" in kill:
        # Shards are written one at a time: all but the newest file are indexed.
        assert indexed >= BATCH * (kill["new_shards"] - 1), how

    X, report = finish(start(paths, cache_dir, tmp_path / "resumed"), tmp_path / "resumed")
    assert report["paths"] == paths
    np.testing.assert_array_equal(X, clean_X, err_msg=how)
    assert report["cache_hits"] == indexed, how
    assert report["cache_misses"] == N_IMAGES - indexed, how
    assert not _cache_warnings(report), report["warnings"]
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    # What the kill left (a temporary or unindexed shard file) is garbage verify removes.
    repaired = EmbeddingCache(cache_dir).verify(grace=0)
    assert repaired["ok"] and repaired["vectors_dropped"] == 0, repaired
    assert repaired["n_vectors"] == N_IMAGES


# -- concurrency ------------------------------------------------------------------------------


def test_four_writers_and_a_live_verify_share_one_cache(numpy_clean, tmp_path):
    """Four processes fill one cache with overlapping image sets while this process runs
    verify() (default grace) over and over: verify never harms a live writer."""
    paths, clean_X = numpy_clean
    cache_dir = tmp_path / "cache"
    subsets = {f"w{i}": slice(70 * i, 70 * i + 190) for i in range(4)}  # overlapping
    procs = start_together(
        {name: paths[s] for name, s in subsets.items()},
        cache_dir,
        tmp_path,
        backbone="numpy",
        delay=0.005,
        **JITTER,
    )
    verifies = 0
    cache = EmbeddingCache(cache_dir)
    while any(p.poll() is None for p in procs.values()):
        report = cache.verify()
        assert report["ok"], report
        assert report["vectors_dropped"] == report["temp_files_removed"] == 0, report
        assert report["orphan_files_removed"] == 0, report
        verifies += 1
        time.sleep(0.02)
    cache.close()
    assert verifies >= 3, "the writers finished before verify could overlap them"

    for name, s in subsets.items():
        X, report = finish(procs[name], tmp_path / name)
        np.testing.assert_array_equal(X, clean_X[s], err_msg=name)
        assert not _cache_warnings(report), report["warnings"]
    assert index_counts(cache_dir) == (N_CHAIN, N_CHAIN)
    report = EmbeddingCache(cache_dir).verify(grace=0)
    assert report["ok"] and report["vectors_dropped"] == 0, report
    result = _extract_here(paths, cache_dir)
    np.testing.assert_array_equal(result.X, clean_X)
    assert (result.cache_hits, result.cache_misses) == (N_CHAIN, 0)


def test_overlapping_writers_share_one_cache(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    subsets = {"first": slice(0, 150), "second": slice(50, 200)}
    procs = start_together(
        {name: paths[subset] for name, subset in subsets.items()}, cache_dir, tmp_path, delay=0.05
    )
    results = {name: finish(proc, tmp_path / name) for name, proc in procs.items()}

    for name, subset in subsets.items():
        X, report = results[name]
        assert report["paths"] == paths[subset]
        assert_same_vectors(X, clean_X[subset], name)
        assert not _cache_warnings(report), report["warnings"]
    # Both looked the cache up before either wrote, so both computed (and wrote) the
    # 100 images they share: the index kept exactly one row for each.
    assert sum(report["cache_misses"] for _, report in results.values()) > N_IMAGES
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    assert EmbeddingCache(cache_dir).info()["n_vectors"] == N_IMAGES
    report = EmbeddingCache(cache_dir).verify(grace=0)  # at most unused losers' shards
    assert report["ok"] and report["vectors_dropped"] == 0, report

    X, report = finish(start(paths, cache_dir, tmp_path / "all"), tmp_path / "all")
    assert_same_vectors(X, clean_X)
    assert (report["cache_hits"], report["cache_misses"]) == (N_IMAGES, 0)


@pytest.mark.slow
def test_four_tensorflow_processes_fill_one_cache(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    subsets = {f"tf{i}": slice(30 * i, 30 * i + 110) for i in range(4)}
    procs = start_together(
        {name: paths[s] for name, s in subsets.items()}, cache_dir, tmp_path, delay=0.02
    )
    results = {name: finish(proc, tmp_path / name, timeout=300) for name, proc in procs.items()}

    for name, s in subsets.items():
        X, report = results[name]
        assert report["paths"] == paths[s]
        assert_same_vectors(X, clean_X[s], name)
        assert not _cache_warnings(report), report["warnings"]
    assert sum(report["cache_misses"] for _, report in results.values()) >= N_IMAGES
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    report = EmbeddingCache(cache_dir).verify(grace=0)
    assert report["ok"] and report["vectors_dropped"] == 0, report
    assert report["n_vectors"] == N_IMAGES

    X, report = finish(start(paths, cache_dir, tmp_path / "all"), tmp_path / "all")
    assert_same_vectors(X, clean_X)
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
    root = tmp_path / "cache" / ROOT
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


# -- a cache that cannot be used, disk faults -------------------------------------------------


def test_cache_dir_that_cannot_be_created_warns_and_still_extracts(image_folder):
    expected = _extractor(None).extract(image_folder).X
    with pytest.warns(UserWarning, match="cannot be used"):
        extractor = _extractor("/proc/featx-cannot-exist/cache")
    result = extractor.extract(image_folder)
    np.testing.assert_array_equal(result.X, expected)
    assert not extractor.cache.enabled
    report = extractor.cache.verify()
    assert report["ok"] is False and "cannot be used" in report["problems"][0]


def test_unwritable_cache_dir_warns_and_still_extracts(image_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot be used"):
        extractor = _extractor(blocker / "cache")
    result = extractor.extract(image_folder)
    assert len(result) == 12
    assert not extractor.cache.enabled


def test_disabled_cache_verifies_ok_with_zeros():
    report = EmbeddingCache(None).verify()
    assert report["ok"] is True and report["enabled"] is False
    assert report["n_vectors"] == report["n_shards"] == 0
    assert all(report[name] == 0 for name in FINDINGS)
    json.dumps(report)


def test_failing_cache_write_warns_and_keeps_results(image_folder, tmp_path, monkeypatch):
    extractor = _extractor(tmp_path / "c")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extractor.cache, "put", disk_full)
    with pytest.warns(UserWarning, match="No space left on device"):
        result = extractor.extract(image_folder)
    assert len(result) == 12
    assert extractor.cache.info()["n_vectors"] == 0


def _fail_second_call(monkeypatch, module, name, counts, error):
    """Replace ``module.name`` by ``error(real, *args)`` on its second call for which
    ``counts(*args)`` is true: the first batch is written, the second one fails."""
    real = getattr(module, name)
    calls = []

    def patched(*args, **kwargs):
        if counts(*args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                return error(real, *args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, patched)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _save_half_then_disk_full(real, file, arr, *args, **kwargs):
    buffer = io.BytesIO()
    real(buffer, arr, *args, **kwargs)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    _disk_full()


def _read_only(real, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


def _is_temp_file(file, *args, **kwargs) -> bool:
    return str(getattr(file, "name", file)).endswith(".npy.tmp")


def _is_vectors_record(file, arr=None, *args, **kwargs) -> bool:
    """np.save of a shard's vectors (a shard file holds the vectors, its meta and its keys)."""
    return _is_temp_file(file) and getattr(arr, "ndim", 0) == 2


def _is_shard_folder(path, *args, parents=False, **kwargs) -> bool:
    return path.parent.name == "shards" and parents  # put()'s call, not pathlib's retry


def _is_regular_file(fd) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


WRITE_FAULTS = {
    "np.save-half-written": (np, "save", _is_vectors_record, _save_half_then_disk_full),
    "fsync": (os, "fsync", _is_regular_file, lambda real, *a: _disk_full()),
    "rename": (os, "replace", _is_temp_file, lambda real, *a: _disk_full()),
    "read-only-mkdir": (Path, "mkdir", _is_shard_folder, _read_only),
}


@pytest.mark.parametrize("fault", WRITE_FAULTS.values(), ids=WRITE_FAULTS.keys())
def test_disk_full_mid_write_leaves_nothing_behind(image_folder, tmp_path, monkeypatch, fault):
    expected = _extractor(None).extract(image_folder).X
    cache_dir = tmp_path / "c"
    _fail_second_call(monkeypatch, *fault)
    with pytest.warns(UserWarning, match="the rest of this run is not cached") as caught:
        result = _extractor(cache_dir).extract(image_folder)
    assert any(code in str(w.message) for w in caught for code in ("No space", "Read-only"))
    np.testing.assert_array_equal(result.X, expected)
    monkeypatch.undo()

    assert not temp_files(cache_dir)
    assert set(shard_files(cache_dir)) == indexed_paths(cache_dir)  # nothing half-done
    first = EmbeddingCache(cache_dir).verify(grace=0)
    _assert_clean(first)
    assert first["n_vectors"] == 4  # the batch written before the fault

    # With a healthy disk again, the next run caches normally.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _extractor(cache_dir).extract(image_folder)
    np.testing.assert_array_equal(again.X, expected)
    assert (again.cache_hits, again.cache_misses) == (4, 8)
    assert _extractor(cache_dir).extract(image_folder).cache_hits == 12


# -- index transactions -----------------------------------------------------------------------


def _rows(cache: EmbeddingCache) -> tuple[int, int]:
    conn = cache._connect()
    return (
        conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0],
        conn.execute("SELECT COUNT(*) FROM shards").fetchone()[0],
    )


def test_index_full_inside_the_transaction_leaves_no_rows_and_no_file(tmp_path):
    """SQLITE_FULL inside the index transaction: SQLite rolls it back by itself, and the
    error that reaches the caller says so (not "cannot rollback")."""
    cache = EmbeddingCache(tmp_path / "c")
    cache.put(FP, ["a", "b"], np.ones((2, 4), np.float32))
    conn = cache._connect()
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    keys = [f"key-{i:05d}-{'x' * 40}" for i in range(3000)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        cache.put(FP, keys, np.zeros((3000, 4), np.float32))
    assert _rows(cache) == (2, 1)
    assert len(shard_files(tmp_path / "c")) == 1 and not temp_files(tmp_path / "c")
    _assert_clean(cache.verify(grace=0))

    conn.execute("PRAGMA max_page_count = 1073741823")  # space again: the cache works on
    cache.put(FP, ["c"], np.full((1, 4), 3, np.float32))
    found, vectors = cache.get(FP, ["a", "c", keys[0]], dim=4)
    assert found.tolist() == [True, True, False] and vectors[1, 0] == 3


def test_failed_statement_mid_transaction_rolls_back_the_shard_row(tmp_path):
    """A vector INSERT fails after the shard row went in: the whole batch is rolled back."""
    cache = EmbeddingCache(tmp_path / "c")
    cache._connect().execute(
        "CREATE TRIGGER poison BEFORE INSERT ON vectors WHEN NEW.key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        cache.put(FP, ["fine", "poison"], np.ones((2, 4), np.float32))
    assert _rows(cache) == (0, 0)
    assert not shard_files(tmp_path / "c") and not temp_files(tmp_path / "c")
    cache.put(FP, ["fine"], np.ones((1, 4), np.float32))  # not left inside a transaction
    _assert_clean(cache.verify(grace=0))
    assert _rows(cache) == (1, 1)


def test_shard_left_by_a_failed_transaction_is_an_orphan_verify_removes(tmp_path, monkeypatch):
    """As when the process dies before it can delete its shard: the file stays, unindexed;
    verify() keeps it while it is recent, removes it once older than the grace period."""
    cache = EmbeddingCache(tmp_path / "c")
    cache.put(FP, ["a"], np.ones((1, 4), np.float32))
    monkeypatch.setattr(EmbeddingCache, "_discard_unindexed", lambda *args: None)
    cache._connect().execute(
        "CREATE TRIGGER poison BEFORE INSERT ON vectors BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        cache.put(FP, ["b"], np.ones((1, 4), np.float32))
    cache._connect().execute("DROP TRIGGER poison")
    (orphan,) = unindexed_shards(tmp_path / "c")
    assert _rows(cache) == (1, 1)

    report = cache.verify(repair=False)
    assert report["ok"] and report["orphan_files_pending"] == 1  # could be a live writer's
    _age(tmp_path / "c")
    report = cache.verify(repair=False)
    assert not report["ok"] and report["orphan_files"] == 1
    assert orphan.exists()  # repair=False changes nothing
    report = cache.verify()
    assert report["ok"] and report["orphan_files_removed"] == 1
    assert not orphan.exists()
    assert cache.get(FP, ["a"], dim=4)[0].all()


# -- damage: what verify finds and repairs, what a read recomputes ----------------------------


def test_verify_finds_every_kind_of_damage_and_repairs_it(tmp_path):
    root = tmp_path / "c" / ROOT
    cache = EmbeddingCache(tmp_path / "c")
    cache.register(FP, 4, {"test": "verify"})
    for i in range(7):
        cache.put(FP, [f"k{i}-{j}" for j in range(3)], np.full((3, 4), i, np.float32))
    cache.put(FP, ["k6-0"], np.zeros((1, 4), np.float32))  # lost the race for k6-0: unused
    conn = cache._connect()
    shards = conn.execute("SELECT id, path FROM shards ORDER BY created").fetchall()
    (root / shards[0][1]).unlink()  # missing
    data = bytearray((root / shards[1][1]).read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (root / shards[1][1]).write_bytes(bytes(data))  # checksum
    (root / shards[2][1]).write_bytes((root / shards[2][1]).read_bytes()[:100])  # truncated
    np.save(root / shards[3][1], np.ones((3, 5), np.float32))  # wrong shape
    conn.execute("DELETE FROM shards WHERE id = ?", (shards[4][0],))  # its 3 rows dangle
    conn.execute("INSERT INTO vectors VALUES (?, 'k-extra', ?, 9)", (FP, shards[5][0]))  # bad row
    (root / shards[5][1]).parent.joinpath(".dead.npy.tmp").write_bytes(b"partial")  # temp
    _age(tmp_path / "c")
    before = sorted(p.name for p in root.rglob("*"))

    report = cache.verify(repair=False)
    assert not report["ok"]
    assert {name: report[name] for name in FINDINGS} == {
        "dangling_vectors": 3,
        "bad_rows": 1,
        "missing_shards": 1,
        "unreadable_shards": 2,
        "checksum_failures": 1,
        "key_mismatches": 0,
        "unreferenced_shards": 1,
        "orphan_files": 1,  # the file of the shard whose row was deleted
        "temp_files": 1,
    }, report
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing changed

    report = cache.verify()
    assert report["ok"], report
    assert report["vectors_dropped"] == 4 * 3 + 3 + 1
    assert report["shards_dropped"] == 4 + 1
    assert (report["orphan_files_removed"], report["temp_files_removed"]) == (1, 1)
    assert (report["n_vectors"], report["n_shards"]) == (6, 2)
    _assert_clean(cache.verify(grace=0))

    keys = [f"k{i}-{j}" for i in range(7) for j in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found, vectors = cache.get(FP, keys, dim=4)
    assert found.tolist() == [False] * 15 + [True] * 6
    np.testing.assert_array_equal(vectors[15:, 0], [5, 5, 5, 6, 6, 6])


@pytest.mark.slow
def test_corrupted_shard_is_detected_and_recomputed(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    finish(start(paths, cache_dir, tmp_path / "first"), tmp_path / "first")
    victim = shard_files(cache_dir)[3]
    data = bytearray(victim.read_bytes())
    data[200:232] = bytes(b ^ 0xFF for b in data[200:232])  # inside the float data
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
    assert not _cache_warnings(report), report["warnings"]


def test_empty_shard_file_is_recomputed_not_a_crash(image_folder, tmp_path):
    """A zero-byte shard (a file system that kept the rename but lost the data) used to
    make every later run fail with numpy's EOFError."""
    first = _extractor(tmp_path / "c").extract(image_folder)
    victim = sorted((tmp_path / "c").glob(SHARDS_GLOB))[0]
    victim.write_bytes(b"")
    report = EmbeddingCache(tmp_path / "c").verify(repair=False)
    assert not report["ok"] and report["unreadable_shards"] == 1
    with pytest.warns(UserWarning, match="cannot be read"):
        again = _extractor(tmp_path / "c").extract(image_folder)
    np.testing.assert_array_equal(again.X, first.X)
    assert again.cache_misses == 4
    _assert_clean(EmbeddingCache(tmp_path / "c").verify(grace=0))


def test_verify_reports_a_damaged_index_without_crashing(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    for i in range(40):
        cache.put(FP, [f"k{i}-{j}-{'x' * 30}" for j in range(50)], np.ones((50, 4), np.float32))
    cache.close()
    index = tmp_path / "c" / INDEX
    data = bytearray(index.read_bytes())
    data[5 * 4096 : 5 * 4096 + 3000] = b"Z" * 3000  # a page of the vectors table
    index.write_bytes(bytes(data))
    report = EmbeddingCache(tmp_path / "c").verify(repair=False)
    assert report["ok"] is False and report["integrity"] != "ok"
    json.dumps(report)
    # With repair (the default) the damaged index is moved aside and rebuilt from the shards.
    with pytest.warns(UserWarning, match="damaged"):
        report = EmbeddingCache(tmp_path / "c").verify(grace=0)
    assert report["integrity"] != "ok" and report["index_rebuilt"], report
    assert report["ok"] and report["orphan_files_removed"] == 0, report
    assert (report["n_vectors"], report["n_shards"]) == (2000, 40)
    again = EmbeddingCache(tmp_path / "c").verify()
    assert again["ok"] and again["integrity"] == "ok" and again["n_vectors"] == 2000


# -- what the index records -------------------------------------------------------------------


def test_cache_holds_one_row_per_image(image_folder, tmp_path):
    _extractor(tmp_path / "c").extract(image_folder)
    _extractor(tmp_path / "c").extract(image_folder)
    with sqlite3.connect(tmp_path / "c" / ROOT / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 12


def test_cost_per_image_is_recorded_and_survives_warm_runs(image_folder, tmp_path):
    first = _extractor(tmp_path / "c")
    first.extract(image_folder)
    cost = first.cache.seconds_per_image(first.fingerprint)
    assert cost is not None and cost > 0
    again = _extractor(tmp_path / "c")
    again.extract(image_folder)  # all cached: computes nothing, so the record is unchanged
    assert again.cache.seconds_per_image(again.fingerprint) == cost
    assert again.cache.info()["fingerprints"][0]["ms_per_image"] > 0
