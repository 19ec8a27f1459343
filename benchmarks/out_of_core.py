"""A featx cache of a million embeddings: write it, read it out of core, train a head on it.

Run from the repository root:

    PYTHONPATH=. python benchmarks/out_of_core.py [--n 1000000] [--dim 1280] [--shard 32]
        [--dir /tmp/featx-out-of-core] [--epochs 3] [--keep] [--json results.json]

Three steps, each in a fresh Python process so that each has its own peak resident memory
(``VmHWM`` of ``/proc/self/status``):

1. **write**: ``n`` structured synthetic vectors (a Gaussian mixture of 10 classes in
   ``dim`` dimensions, rows sorted by class as a class-per-folder dataset is), written
   through ``EmbeddingCache.put`` in shards of ``--shard`` rows, what ``Extractor.extract``
   writes (one shard per batch of 32 by default). Content keys are hashes of the row
   number, as extraction's are hashes of image bytes.
2. **read**: the vectors of all ``n`` keys assembled from the cache into a ``.npy`` file
   (``EmbeddingCache.read_into`` filling a ``featx.embeddings.NpyRowWriter``: the path
   ``Extractor.extract(..., out=FOLDER)`` takes for cache hits), then opened with
   ``np.load(mmap_mode="r")``; a sample of rows is checked against the generator.
3. **train**: ``featx.outofcore.fit_out_of_core`` on the memory-mapped array (StandardScaler
   pass + ``--epochs`` SGD epochs, 10% held out), and its validation accuracy.

Each step prints its wall time and peak RSS next to the size of the whole array. The
cache and the ``.npy`` file are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _fresh import child, machine, run_step

N_CLASSES = 10
FINGERPRINT = "benchmark-out-of-core"


def keys_of(start: int, stop: int) -> list[str]:
    return [hashlib.blake2b(f"image-{i}".encode(), digest_size=20).hexdigest()
            for i in range(start, stop)]  # fmt: skip


def labels(n: int) -> np.ndarray:
    return (np.arange(n) * N_CLASSES // n).astype(np.int64)


def rows_of(start: int, stop: int, n: int, dim: int) -> np.ndarray:
    """Rows start..stop of the mixture; row i depends only on i (seeded by i's block)."""
    means = np.random.default_rng(12345).normal(0.0, 0.06, (N_CLASSES, dim)).astype(np.float32)
    y = labels(n)[start:stop]
    out = np.empty((stop - start, dim), np.float32)
    for block in range(start // 1024, (stop - 1) // 1024 + 1):
        lo, hi = max(start, block * 1024), min(stop, (block + 1) * 1024)
        noise = np.random.default_rng([7, block]).normal(0.0, 1.0, (1024, dim)).astype(np.float32)
        out[lo - start : hi - start] = noise[lo - block * 1024 : hi - block * 1024]
    return out + means[y]


def step_write(args) -> dict:
    from featx.cache import EmbeddingCache

    cache = EmbeddingCache(args.dir / "cache")
    cache.register(FINGERPRINT, args.dim, {"benchmark": "out_of_core"})
    start = time.perf_counter()
    block = 64 * args.shard  # generate many shards' rows at once, store them shard by shard
    for lo in range(0, args.n, block):
        hi = min(args.n, lo + block)
        keys, rows = keys_of(lo, hi), rows_of(lo, hi, args.n, args.dim)
        for at in range(0, hi - lo, args.shard):
            cache.put(FINGERPRINT, keys[at : at + args.shard], rows[at : at + args.shard])
    seconds = time.perf_counter() - start
    info = cache.info()["fingerprints"][0]
    return {"seconds": round(seconds, 1), "vectors_per_second": round(args.n / seconds),
            "n_shards": info["n_shards"], "cache_bytes": info["bytes"]}  # fmt: skip


def step_read(args) -> dict:
    from featx.cache import EmbeddingCache
    from featx.embeddings import NpyRowWriter

    start = time.perf_counter()
    keys = keys_of(0, args.n)
    mark = time.perf_counter()
    keys_seconds = round(mark - start, 1)
    cache = EmbeddingCache(args.dir / "cache")
    path = args.dir / "X.npy"
    with NpyRowWriter(path, (args.n, args.dim)) as writer:
        found = cache.read_into(FINGERPRINT, keys, writer)
    read = time.perf_counter() - mark
    # Of which the index lookups alone (the same queries again, in chunks of 500 keys):
    mark = time.perf_counter()
    conn, n_rows = cache._connect(), 0
    for lo in range(0, len(keys), 500):
        chunk = keys[lo : lo + 500]
        n_rows += len(conn.execute(
            f"SELECT key, shard, row FROM vectors WHERE fp = ? AND key IN "
            f"({','.join('?' * len(chunk))})", [FINGERPRINT, *chunk]).fetchall())  # fmt: skip
    lookup = time.perf_counter() - mark
    X = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(0)
    checked = np.sort(rng.choice(args.n, 200, replace=False))
    exact = all(np.array_equal(X[i], rows_of(i, i + 1, args.n, args.dim)[0]) for i in checked)
    return {"seconds": round(time.perf_counter() - start, 1), "read_into_seconds": round(read, 1),
            "keys_seconds": keys_seconds, "index_lookup_seconds": round(lookup, 1),
            "found": int(found.sum()),
            "sampled_rows_exact": bool(exact), "npy_bytes": path.stat().st_size}  # fmt: skip


def step_train(args) -> dict:
    from featx.outofcore import fit_out_of_core

    X = np.load(args.dir / "X.npy", mmap_mode="r")
    fit = fit_out_of_core(X, labels(args.n), epochs=args.epochs, seed=0)
    return {"seconds": round(fit.seconds, 1), "validation_accuracy": fit.validation_accuracy,
            "history": fit.history, "n_train": fit.n_train}  # fmt: skip


STEPS = {"write": step_write, "read": step_read, "train": step_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--shard", type=int, default=32, help="rows per cache shard")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/featx-out-of-core"))
    parser.add_argument("--keep", action="store_true", help="keep the cache and X.npy")
    parser.add_argument("--steps", default="write,read,train")
    parser.add_argument("--json", default=None)
    parser.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a child process: one step, one JSON line
        child(STEPS[args.step](args))
        return
    array_mb = args.n * args.dim * 4 / 1e6
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "n": args.n, "dim": args.dim, "shard": args.shard, "whole_array_mb": round(array_mb),
        "steps": {},
    }  # fmt: skip
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        for step in args.steps.split(","):
            argv = ["--n", str(args.n), "--dim", str(args.dim), "--shard", str(args.shard),
                    "--epochs", str(args.epochs), "--dir", str(args.dir)]  # fmt: skip
            result = run_step(__file__, step, argv)
            result["peak_rss_vs_array"] = round(result["peak_rss_mb"] / array_mb, 3)
            results["steps"][step] = result
            print(f"{step}: {json.dumps(result)}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
