"""One real extraction in its own process, for the crash-safety and concurrency tests.

Usage::

    python _extract_worker.py LIST_FILE CACHE_DIR|none OUT_PREFIX

Embeds the image paths listed one per line in ``LIST_FILE`` with a seeded random
MobileNetV2 at 32 px, batches of 8, and writes ``OUT_PREFIX.npy`` (the embeddings)
and ``OUT_PREFIX.json`` (paths, cache hits and misses, warnings raised). With
``FEATX_TEST_BATCH_DELAY`` set, each batch waits that many seconds after computing, so
that a test can kill the process while it is writing the cache; with ``FEATX_TEST_GO``
set, it waits for that file to exist before extracting, so that workers start together.

Imported by the tests for :func:`start` and :func:`finish` (which drive it),
:func:`reference` (the clean result, once per session) and :func:`index_counts`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

N_IMAGES = 200
WORKER = Path(__file__).resolve()
SHARDS_GLOB = "featx-v1/shards/*/*.npy"
INDEX = Path("featx-v1") / "index.sqlite"


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


def reference(tmp_path_factory, n: int = N_IMAGES) -> tuple[list[str], Any]:
    """The session's ``n`` images and their embeddings from a run without a cache.

    Kept under the session's base temporary folder, so the test modules share one run.
    """
    root = tmp_path_factory.getbasetemp() / "extract-reference"
    out = root / "reference"
    if not out.with_suffix(".json").is_file():
        paths = write_images(root / "images", n)
        X, report = finish(start(paths, None, out), out)
        assert report["paths"] == paths and report["cache_misses"] == n
    X, report = load(out)
    return report["paths"], X


def index_counts(cache_dir: Path) -> tuple[int, int]:
    """``(rows, distinct keys)`` of the cache's SQLite index, read as another process would."""
    with closing(sqlite3.connect(cache_dir / INDEX)) as conn:
        return conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM vectors").fetchone()


def start(
    paths: list[str],
    cache_dir: Path | None,
    out: Path,
    *,
    delay: float = 0.0,
    go: Path | None = None,
) -> subprocess.Popen:
    """Start a worker process on ``paths``; its results go to ``out.npy`` and ``out.json``.

    With ``go``, the worker builds its extractor and imports TensorFlow, creates
    ``out.ready``, and waits for the file ``go`` to exist before extracting.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(paths) + "\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", FEATX_TEST_BATCH_DELAY=str(delay))
    env["FEATX_TEST_GO"] = str(go or "")
    # Output goes to a file: a pipe nobody reads while the test polls could fill and block.
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(listing), str(cache_dir or "none"), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


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

    import numpy as np

    from featx import Extractor

    paths = Path(listing).read_text().split()
    ex = Extractor(
        "MobileNetV2",
        weights=None,
        input_size=32,
        batch_size=8,
        cache_dir=None if cache_dir == "none" else cache_dir,
        verbose=False,
    )
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


if __name__ == "__main__":
    main(*sys.argv[1:4])
