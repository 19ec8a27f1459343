"""The numbers behind a scaling estimate: featx's local engine against its Ray engine.

On one image folder (default ``../shared/datasets/clothing10/train``), MobileNetV2 at
``--size`` px with random weights, batch 32, in one run:

1. **stages**: reading + hashing a file (the driver's content key, MB/s) and decoding it
   (``featx.images.decode``), one thread, then the forward pass on pre-decoded fixed-shape
   batches (TensorFlow's own threads), each in wall and CPU ms per image;
2. **cache**: writing vectors in shards of 32 (the local engine's batches) and of 1,024
   (what the Ray engine's driver writes) with ``EmbeddingCache.put`` (vectors/s, MB/s),
   reading them back (``EmbeddingCache.get``), and a warm ``Extractor.extract`` of the
   whole folder (hashing every file, all hits);
3. **engines, cold** (each into its own empty cache): the local engine, then Ray's startup
   (``ray.init`` of a local cluster with ``--cpus`` CPUs), then the Ray engine with 1 and 2
   actors. Each engine runs on ``--small`` images and on all of them; the two wall times
   give a per-run overhead and a steady rate (``wall = overhead + n / rate``). Every Ray
   result is checked equal to the local one.

Run from the repository root::

    PYTHONPATH=. python benchmarks/ray_scaling.py                 # clothing10/train, 160 px
    PYTHONPATH=. python benchmarks/ray_scaling.py --limit 600 --small 200   # quick

The shared data folder is ``$FEATX_SHARED``, else ``../shared`` next to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(os.environ.get("FEATX_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DEFAULT_DATA = SHARED / "datasets" / "clothing10" / "train"


def _spread(paths: list[str], n: int) -> list[str]:
    """``n`` paths spread evenly over the sorted list (so over every class folder)."""
    if n >= len(paths):
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]


def _stages(paths: list[str], size: int) -> dict:
    from featx._pipeline import content_key as _content_key
    from featx.backbones import resolve_backbone
    from featx.images import decode

    contents = []
    start, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        with open(p, "rb") as f:
            contents.append(f.read())
        _content_key(contents[-1])
    hash_s, hash_cpu = time.perf_counter() - start, time.process_time() - cpu
    n_bytes = sum(len(c) for c in contents)

    start, cpu = time.perf_counter(), time.process_time()
    pixels = [decode(c, (size, size)) for c in contents]
    decode_s, decode_cpu = time.perf_counter() - start, time.process_time() - cpu

    backbone = resolve_backbone("MobileNetV2", weights=None, input_size=size)
    batch = np.zeros((32, size, size, 3), np.float32)
    backbone.prepare(batch.shape)
    backbone.embed(batch)  # warm-up
    n_batches = max(1, len(pixels) // 32)
    start, cpu = time.perf_counter(), time.process_time()
    for b in range(n_batches):
        batch[:] = np.stack(pixels[32 * b : 32 * b + 32])
        backbone.embed(batch)
    forward_s, forward_cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(paths)
    return {
        "n_images": len(paths),
        "mean_file_kb": round(n_bytes / len(paths) / 1024, 1),
        "read_hash_mb_per_s": round(n_bytes / hash_s / 1e6, 1),
        "read_hash_ms_per_image": round(1000 * hash_s / n, 3),
        "read_hash_cpu_ms_per_image": round(1000 * hash_cpu / n, 3),
        "decode_ms_per_image": round(1000 * decode_s / n, 3),
        "decode_cpu_ms_per_image": round(1000 * decode_cpu / n, 3),
        "forward_ms_per_image_batch32": round(1000 * forward_s / (32 * n_batches), 3),
        # TensorFlow's threads use every core: CPU time above wall time is that parallelism.
        "forward_cpu_ms_per_image_batch32": round(1000 * forward_cpu / (32 * n_batches), 3),
    }


def _cache(n: int, dim: int = 1280, batch: int = 32) -> dict:
    from featx.cache import EmbeddingCache

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    keys = [f"{i:040x}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp)
        fp = "f" * 64
        cache.register(fp, dim, {"benchmark": True})
        start = time.perf_counter()
        for b in range(0, n, batch):
            cache.put(fp, keys[b : b + batch], vectors[b : b + batch])
        write_s = time.perf_counter() - start
        cache.close()
        cache = EmbeddingCache(tmp)
        start = time.perf_counter()
        found, X = cache.get(fp, keys, dim)
        read_s = time.perf_counter() - start
        assert found.all() and np.array_equal(X, vectors)
        cache.close()
    mb = vectors.nbytes / 1e6
    return {
        "n_vectors": n,
        "dim": dim,
        "vectors_per_shard": batch,
        "write_vectors_per_s": round(n / write_s),
        "write_mb_per_s": round(mb / write_s, 1),
        "read_vectors_per_s": round(n / read_s),
        "read_mb_per_s": round(mb / read_s, 1),
    }


def _extract(paths: list[str], size: int, cache_dir: str, **engine) -> tuple[float, object]:
    from featx import Extractor

    ex = Extractor(
        "MobileNetV2", weights=None, input_size=size, cache_dir=cache_dir, verbose=False, **engine
    )
    start = time.perf_counter()
    emb = ex.extract(paths)
    return time.perf_counter() - start, emb


def _fit(n_small: int, wall_small: float, n_all: int, wall_all: float) -> dict:
    rate = (n_all - n_small) / (wall_all - wall_small)
    return {
        f"wall_s_{n_small}": round(wall_small, 2),
        f"wall_s_{n_all}": round(wall_all, 2),
        "images_per_s_end_to_end": round(n_all / wall_all, 1),
        "steady_images_per_s": round(rate, 1),
        "overhead_s": round(wall_small - n_small / rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--small", type=int, default=500, help="images of the short runs")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the Ray")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    paths = sorted(str(p) for p in args.data.rglob("*.jpg"))
    paths = _spread(paths, args.limit or len(paths))
    small = _spread(paths, args.small)
    results: dict = {
        "command": "PYTHONPATH=. python benchmarks/ray_scaling.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_start": os.getloadavg(),
    }
    results["stages"] = _stages(paths[:640], args.size)
    print(json.dumps(results["stages"]), flush=True)
    # Shards of 32: the local engine's (one per batch); of 1,024: the Ray engine's driver.
    results["cache"] = [_cache(len(paths), batch=b) for b in (32, 1024)]
    print(json.dumps(results["cache"]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        walls, reference = {}, {}
        for name, subset in (("small", small), ("all", paths)):
            walls[name], reference[name] = _extract(subset, args.size, f"{tmp}/local-{name}")
        results["local"] = _fit(len(small), walls["small"], len(paths), walls["all"])
        print("local", json.dumps(results["local"]), flush=True)
        warm_s, warm = _extract(paths, args.size, f"{tmp}/local-all")
        assert warm.cache_hits == len(paths)
        results["warm_extract_images_per_s"] = round(len(paths) / warm_s, 1)

        import ray

        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        results["ray_startup_s"] = round(time.perf_counter() - start, 2)
        for actors in (1, 2):
            for name, subset in (("small", small), ("all", paths)):
                walls[name], emb = _extract(
                    subset, args.size, f"{tmp}/ray{actors}-{name}", engine="ray", ray_actors=actors
                )
                assert np.array_equal(emb.X, reference[name].X), "Ray differs from local"
            results[f"ray_{actors}_actors"] = _fit(
                len(small), walls["small"], len(paths), walls["all"]
            )
            print(f"ray {actors}", json.dumps(results[f"ray_{actors}_actors"]), flush=True)
        ray.shutdown()
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
