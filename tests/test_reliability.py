"""Reliability: kills at every phase of a cache write, concurrent writers, disk faults,
stale inputs, and what ``EmbeddingCache.verify`` finds and repairs.

The kill and most concurrency tests run the TensorFlow-free worker mode of
``_extract_worker.py`` (``backbone="numpy"``, a deterministic stand-in network): a
process starts in a fraction of a second, so one test can afford two dozen kills. The
real-TensorFlow crash tests are in ``test_resume.py``; one test below runs four real
TensorFlow extractions at once.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import time
import warnings
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from _extract_worker import (
    INDEX,
    N_IMAGES,
    SHARDS_GLOB,
    NumpyBackbone,
    finish,
    index_counts,
    reference,
    start,
)
from conftest import CountingBackbone

from featx import Extractor
from featx._pipeline import content_key as _content_key
from featx.cache import EmbeddingCache
from featx.cli import main as cli_main

N_CHAIN = 400  # images of the kill chain: 50 batches of 8
TEMP_GLOB = "featx-v1/shards/*/.*.npy.tmp"
FINDINGS = (
    "dangling_vectors",
    "bad_rows",
    "missing_shards",
    "unreadable_shards",
    "checksum_failures",
    "unreferenced_shards",
    "orphan_files",
    "temp_files",
)


@pytest.fixture(scope="module")
def numpy_clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """The chain's images and their vectors from a worker run without a cache."""
    return reference(tmp_path_factory, N_CHAIN, backbone="numpy")


# -- what is on disk --------------------------------------------------------------------------


def _shard_files(cache_dir: Path) -> set[str]:
    return {p.relative_to(cache_dir / "featx-v1").as_posix() for p in cache_dir.glob(SHARDS_GLOB)}


def _temp_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob(TEMP_GLOB))


def _indexed_paths(cache_dir: Path) -> set[str]:
    with closing(sqlite3.connect(cache_dir / INDEX)) as conn:
        return {path for (path,) in conn.execute("SELECT path FROM shards")}


def _unindexed_shards(cache_dir: Path) -> set[str]:
    files = _shard_files(cache_dir)  # none before the schema exists: skip the query then
    return files - _indexed_paths(cache_dir) if files else set()


def _age(cache_dir: Path, seconds: float = 3600) -> None:
    """Make every file under the shards folder ``seconds`` old, as if left long ago."""
    then = time.time() - seconds
    for path in (cache_dir / "featx-v1" / "shards").rglob("*"):
        os.utime(path, (then, then))


def _assert_clean(report: dict) -> None:
    """A verify report that found nothing at all."""
    assert report["ok"], report
    assert report["integrity"] == "ok", report
    assert {name: report[name] for name in FINDINGS} == dict.fromkeys(FINDINGS, 0), report


def _check_left_consistent(cache_dir: Path, paths: list[str], clean_X: np.ndarray) -> int:
    """Every indexed vector is readable (no warning) and equal to the clean one; returns
    how many images are indexed."""
    if not (cache_dir / INDEX).exists():
        return 0
    cache = EmbeddingCache(cache_dir)  # completes the schema if the kill came mid-creation
    rows, distinct = index_counts(cache_dir)
    assert rows == distinct
    fingerprint = Extractor(NumpyBackbone(), cache_dir=None).fingerprint
    keys = [_content_key(Path(p).read_bytes()) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped (missing or corrupt) shard fails here
        found, vectors = cache.get(fingerprint, keys, NumpyBackbone().dim)
    cache.close()
    assert found.sum() == rows, "an index row has no vector"
    np.testing.assert_array_equal(vectors[found], clean_X[found])
    return rows


def _extract_here(paths: list[str], cache_dir: Path):
    """The worker's extraction, in this process (no process start-up to pay)."""
    ex = Extractor(NumpyBackbone(), batch_size=8, cache_dir=cache_dir, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cache warning of any kind
        result = ex.extract(paths)
    ex.cache.close()
    return result


def _cache_warnings(report: dict) -> list[str]:
    return [w for w in report["warnings"] if "cache" in w.lower()]


# -- kills ------------------------------------------------------------------------------------


@dataclass
class KillPoint:
    """When to SIGKILL a worker: after ``new_shards`` more shard files exist, then (with
    ``temp``) once a temporary file exists, or (with ``committing``) once the worker is
    inside its index transaction, then after a random pause drawn from ``pause``."""

    name: str
    new_shards: int = 0
    temp: bool = False
    committing: bool = False
    pause: tuple[float, float] = (0.0, 0.0)
    delays: dict = field(default_factory=dict)


STRETCH = 0.3  # seconds a worker pauses inside the aimed-at phase
JITTER = {"write_delay": 0.02, "rename_delay": 0.02, "commit_delay": 0.02}


def _schedule() -> list[KillPoint]:
    points = []
    for r in range(4):
        points += [
            KillPoint(f"{r}:startup", pause=(0.0, 0.35)),
            KillPoint(f"{r}:after-{1 + r % 2}-shards", new_shards=1 + r % 2),
            KillPoint(f"{r}:writing", new_shards=r % 2, temp=True, delays={"write_delay": STRETCH}),
            KillPoint(f"{r}:renamed", new_shards=1 + r % 2, delays={"rename_delay": STRETCH}),
            KillPoint(
                f"{r}:committing",
                new_shards=r % 2,
                committing=True,
                delays={"commit_delay": STRETCH},
            ),
            KillPoint(f"{r}:random", new_shards=1, pause=(0.0, 0.08), delays=JITTER),
        ]
    return points


PHASES = {
    "no-cache-yet": "killed before the cache was created",
    "temp-file": "killed while writing a shard (its temporary file is on disk)",
    "in-transaction": "killed inside the index transaction (shard on disk, rows uncommitted)",
    "orphan-shard": "killed between the shard's rename and its index transaction",
    "clean": "killed at a clean boundary (every shard file indexed, no temporary file)",
}


def _phase_on_disk(cache_dir: Path, committing: Path) -> str:
    """Which phase a kill landed in, judged only from what the process left on disk."""
    if not (cache_dir / INDEX).exists():
        return "no-cache-yet"
    if _temp_files(cache_dir):
        return "temp-file"
    if _unindexed_shards(cache_dir):
        return "in-transaction" if committing.exists() else "orphan-shard"
    return "clean"


def _kill_at(point: KillPoint, paths, cache_dir: Path, out: Path, rng: random.Random) -> str:
    """Run a worker, SIGKILL it at ``point``; return the phase it was killed in."""
    before = len(_shard_files(cache_dir)) if cache_dir.exists() else 0
    committing = Path(f"{out}.committing")
    proc = start(paths, cache_dir, out, backbone="numpy", delay=0.02, **point.delays)
    deadline = time.monotonic() + 60

    def wait_for(condition) -> None:
        while proc.poll() is None and not condition():
            assert time.monotonic() < deadline, f"{point.name}: the kill point never came"
            time.sleep(0.001)

    try:
        wait_for(lambda: len(_shard_files(cache_dir)) >= before + point.new_shards)
        if point.temp:
            wait_for(lambda: bool(_temp_files(cache_dir)))
        if point.committing:
            wait_for(committing.exists)
        time.sleep(rng.uniform(*point.pause))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"{point.name}: the worker ended before the kill:\n{out.with_suffix('.log').read_text()}"
    )
    return _phase_on_disk(cache_dir, committing)


def _repair_after_kill(cache_dir: Path, indexed: int, phase: str) -> None:
    """verify() leaves a just-killed writer's files alone (they could be a live writer's);
    verify(grace=0) removes them; neither touches an indexed vector."""
    if not (cache_dir / INDEX).exists():
        return
    temps, orphans = len(_temp_files(cache_dir)), len(_unindexed_shards(cache_dir))
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
    assert not _temp_files(cache_dir) and not _unindexed_shards(cache_dir)
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
    rng = random.Random(20240601)
    phases: Counter = Counter()
    landed = []
    for i, point in enumerate(_schedule()):
        phase = _kill_at(point, paths, cache_dir, tmp_path / f"run-{i:02d}", rng)
        phases[phase] += 1
        indexed = _check_left_consistent(cache_dir, paths, clean_X)
        landed.append(f"{point.name}: {phase}, {indexed} indexed")
        assert indexed < N_CHAIN, f"{point.name}: the chain ran out of work"
        _repair_after_kill(cache_dir, indexed, phase)

        resumed = tmp_path / f"resumed-{i:02d}"
        if cache_dir.exists():
            shutil.copytree(cache_dir, resumed)
        result = _extract_here(paths, resumed)
        np.testing.assert_array_equal(result.X, clean_X, err_msg=point.name)
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
    point = KillPoint("renamed", new_shards=2, delays={"rename_delay": STRETCH})
    phase = _kill_at(point, paths, cache_dir, tmp_path / "killed", random.Random(0))
    assert phase == "orphan-shard"
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
    assert not _unindexed_shards(cache_dir)


# -- concurrency ------------------------------------------------------------------------------


def _start_together(jobs: dict, cache_dir: Path, tmp_path: Path, **options) -> dict:
    """Start one worker per job, release them at once; return ``{name: Popen}``."""
    go = tmp_path / "go"
    procs = {
        name: start(paths, cache_dir, tmp_path / name, go=go, **options)
        for name, paths in jobs.items()
    }
    deadline = time.monotonic() + 180
    while not all((tmp_path / f"{name}.ready").exists() for name in jobs):
        assert all(p.poll() is None for p in procs.values()), "a worker died before the start"
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.01)
    go.touch()
    return procs


def test_four_writers_and_a_live_verify_share_one_cache(numpy_clean, tmp_path):
    """Four processes fill one cache with overlapping image sets while this process runs
    verify() (default grace) over and over: verify never harms a live writer."""
    paths, clean_X = numpy_clean
    cache_dir = tmp_path / "cache"
    subsets = {f"w{i}": slice(70 * i, 70 * i + 190) for i in range(4)}  # overlapping
    procs = _start_together(
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


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    return reference(tmp_path_factory)


@pytest.mark.slow
def test_four_tensorflow_processes_fill_one_cache(clean, tmp_path):
    paths, clean_X = clean
    cache_dir = tmp_path / "cache"
    subsets = {f"tf{i}": slice(30 * i, 30 * i + 110) for i in range(4)}
    procs = _start_together(
        {name: paths[s] for name, s in subsets.items()}, cache_dir, tmp_path, delay=0.02
    )
    results = {name: finish(proc, tmp_path / name, timeout=300) for name, proc in procs.items()}

    for name, s in subsets.items():
        X, report = results[name]
        assert report["paths"] == paths[s]
        np.testing.assert_array_equal(X, clean_X[s], err_msg=name)
        assert not _cache_warnings(report), report["warnings"]
    assert sum(report["cache_misses"] for _, report in results.values()) >= N_IMAGES
    assert index_counts(cache_dir) == (N_IMAGES, N_IMAGES)
    report = EmbeddingCache(cache_dir).verify(grace=0)
    assert report["ok"] and report["vectors_dropped"] == 0, report
    assert report["n_vectors"] == N_IMAGES

    X, report = finish(start(paths, cache_dir, tmp_path / "all"), tmp_path / "all")
    np.testing.assert_array_equal(X, clean_X)
    assert (report["cache_hits"], report["cache_misses"]) == (N_IMAGES, 0)


# -- disk faults ------------------------------------------------------------------------------


def _extractor(cache_dir) -> Extractor:
    return Extractor(CountingBackbone(), cache_dir=cache_dir, verbose=False, batch_size=4)


def test_cache_dir_that_cannot_be_created_warns_and_still_extracts(image_folder):
    expected = _extractor(None).extract(image_folder).X
    with pytest.warns(UserWarning, match="cannot be used"):
        extractor = _extractor("/proc/featx-cannot-exist/cache")
    result = extractor.extract(image_folder)
    np.testing.assert_array_equal(result.X, expected)
    assert not extractor.cache.enabled
    report = extractor.cache.verify()
    assert report["ok"] is False and "cannot be used" in report["problems"][0]


def test_disabled_cache_verifies_ok_with_zeros():
    report = EmbeddingCache(None).verify()
    assert report["ok"] is True and report["enabled"] is False
    assert report["n_vectors"] == report["n_shards"] == 0
    assert all(report[name] == 0 for name in FINDINGS)
    json.dumps(report)


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


def _is_shard_folder(path, *args, parents=False, **kwargs) -> bool:
    return path.parent.name == "shards" and parents  # put()'s call, not pathlib's retry


def _is_regular_file(fd) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


WRITE_FAULTS = {
    "np.save-half-written": (np, "save", _is_temp_file, _save_half_then_disk_full),
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

    assert not _temp_files(cache_dir)
    assert _shard_files(cache_dir) == _indexed_paths(cache_dir)  # nothing half-done
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


FP = "f" * 64


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
    assert len(_shard_files(tmp_path / "c")) == 1 and not _temp_files(tmp_path / "c")
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
    assert not _shard_files(tmp_path / "c") and not _temp_files(tmp_path / "c")
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
    (orphan,) = _unindexed_shards(tmp_path / "c")
    assert _rows(cache) == (1, 1)

    report = cache.verify(repair=False)
    assert report["ok"] and report["orphan_files_pending"] == 1  # could be a live writer's
    _age(tmp_path / "c")
    report = cache.verify(repair=False)
    assert not report["ok"] and report["orphan_files"] == 1
    assert (tmp_path / "c" / "featx-v1" / orphan).exists()  # repair=False changes nothing
    report = cache.verify()
    assert report["ok"] and report["orphan_files_removed"] == 1
    assert not (tmp_path / "c" / "featx-v1" / orphan).exists()
    assert cache.get(FP, ["a"], dim=4)[0].all()


# -- verify's findings ------------------------------------------------------------------------


def test_verify_finds_every_kind_of_damage_and_repairs_it(tmp_path):
    root = tmp_path / "c" / "featx-v1"
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
    report = EmbeddingCache(tmp_path / "c").verify()
    assert report["ok"] is False and report["integrity"] != "ok"
    json.dumps(report)


# -- staleness --------------------------------------------------------------------------------

# Covered elsewhere: an image modified in place is embedded again
# (test_extract.py::test_image_modified_in_place_is_embedded_again); a weights file's
# fingerprint follows its content (test_backbones.py::test_weights_file_is_fingerprinted_by
# _content). Below, the same end to end, through the cache.


def _weights_file(path: Path, seed: int) -> None:
    from featx.backbones import KerasBackbone

    KerasBackbone("MobileNetV2", weights=None, input_size=32, seed=seed).model.save_weights(path)


def _keras(weights, cache_dir) -> Extractor:
    return Extractor(
        "MobileNetV2",
        weights=weights,
        input_size=32,
        batch_size=4,
        cache_dir=cache_dir,
        verbose=False,
    )


@pytest.fixture(scope="module")
def small_images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)


def test_weights_replaced_at_the_same_path_are_not_served_stale(small_images, tmp_path):
    path = tmp_path / "model.weights.h5"
    _weights_file(path, seed=1)
    first = _keras(path, tmp_path / "c").extract(small_images)
    _weights_file(path, seed=2)  # a new checkpoint over the old one
    second = _keras(path, tmp_path / "c").extract(small_images)
    assert second.cache_misses == 6 and second.fingerprint != first.fingerprint
    np.testing.assert_array_equal(second.X, _keras(path, None).extract(small_images).X)
    assert not np.array_equal(first.X, second.X)


def test_weights_replaced_after_the_extractor_is_built_are_not_cached_stale(small_images, tmp_path):
    path, original = tmp_path / "model.weights.h5", tmp_path / "original.weights.h5"
    _weights_file(original, seed=1)
    shutil.copy(original, path)
    long_lived = _keras(path, tmp_path / "c")  # e.g. built in a notebook cell
    _weights_file(path, seed=2)
    with pytest.raises(RuntimeError, match="changed since this extractor was created"):
        long_lived.extract(small_images)
    shutil.copy(original, path)  # the original weights again: their vectors must be served
    expected = _keras(path, None).extract(small_images).X
    np.testing.assert_array_equal(_keras(path, tmp_path / "c").extract(small_images).X, expected)
