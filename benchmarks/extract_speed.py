"""How fast is ``featx extract`` compared with the network alone?

On one image folder, backbone and input size (by default those of ``featx extract
../shared/datasets/clothing10/train --backbone MobileNetV2 --weights
../shared/weights/mobilenet_v2_1.0_160_no_top.weights.h5 --size 160``), in one process:

1. **forward**: every image decoded into memory beforehand, then only the compiled
   function featx itself calls (``extractor.backbone.embed``) timed on fixed-shape batches
   of ``--batch-size``, after a warm-up call (model build and tracing are not timed);
2. **cold**: ``Extractor.extract(folder)`` into an empty temporary cache, with the model
   already built and traced: hashing, decoding, compute and cache writes;
3. **warm**: the same extraction by a new ``Extractor`` into the now full cache.

It also times the stages alone (hashing, decoding, cache writes) and, unless
``--mode inproc``, runs the real command twice as subprocesses (``python -m featx.cli
extract ... --json --quiet --cache-dir TMP``), cold then warm, and checks that the warm run
computes nothing and takes at most 1/20 of the cold run's extraction time.

"other CPU-s" columns are the CPU time used by *other* processes during a measurement
(from ``/proc/stat``): high values mean the machine was shared and the figure is noisy.

Run from the repository root::

    python benchmarks/extract_speed.py --limit 300      # quick
    python benchmarks/extract_speed.py                  # all images
    python benchmarks/extract_speed.py --json           # one JSON object on stdout

The shared data folder is ``$FEATX_SHARED``, else ``../shared`` next to the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATX_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DEFAULT_DATA = SHARED / "datasets" / "clothing10" / "train"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"


# -- measuring ---------------------------------------------------------------------------------


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timing:
    """One measurement: wall seconds, this process's CPU seconds, and other processes' CPU."""

    name: str
    n_images: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    other_cpu_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["images_per_second"] = round(self.images_per_second, 2)
        out["cpu_utilisation"] = round(self.cpu_seconds / self.seconds, 2) if self.seconds else None
        for key in ("seconds", "cpu_seconds", "other_cpu_seconds"):
            if out[key] is not None:
                out[key] = round(out[key], 3)
        return out


@contextlib.contextmanager
def measure(name: str, n_images: int, *, children: bool = False) -> Iterator[Timing]:
    """Time the block: wall clock, own CPU (or children's), and everyone else's CPU."""
    timing = Timing(name, n_images)
    own = _children_cpu if children else time.process_time
    busy0, cpu0, t0 = _busy_cpu_seconds(), own(), time.perf_counter()
    try:
        yield timing
    finally:
        timing.seconds = time.perf_counter() - t0
        timing.cpu_seconds = own() - cpu0
        busy1 = _busy_cpu_seconds()
        if busy0 is not None and busy1 is not None:
            timing.other_cpu_seconds = max(0.0, (busy1 - busy0) - timing.cpu_seconds)


# -- data ------------------------------------------------------------------------------------


def image_paths(folder: Path, limit: int | None) -> list[str]:
    """The images of ``folder`` in featx's order, the first ``limit`` of them."""
    from featx.sources import resolve_source

    paths = resolve_source(str(folder)).inputs
    return paths if limit is None else paths[:limit]


def subset_folder(folder: Path, paths: list[str], into: Path) -> Path:
    """A class-per-folder tree of symlinks to ``paths`` (same classes, same order)."""
    for p in paths:
        link = into / Path(p).relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(p).resolve())
    return into


def batches_of(pixels: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Fixed-shape float32 batches, the last one zero-padded (as featx builds them)."""
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = np.zeros((batch_size, *pixels.shape[1:]), np.float32)
        chunk = pixels[start : start + batch_size]
        batch[: len(chunk)] = chunk
        out.append(batch)
    return out


# -- the in-process measurements ---------------------------------------------------------------


def run_inprocess(args: argparse.Namespace, source: Path, paths: list[str]) -> dict[str, Any]:
    """Setup, stages, forward, cold, warm, forward again; return everything measured."""
    from featx import Extractor
    from featx.cache import EmbeddingCache
    from featx.images import decode
    from featx.sources import resolve_source

    n = len(paths)
    settings: dict[str, Any] = {
        "weights": str(args.weights),
        "input_size": args.size,
        "batch_size": args.batch_size,
        "verbose": False,
    }
    if args.workers:
        settings["workers"] = args.workers
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        cold_cache = Path(tmp) / "cache"
        ex = Extractor(args.backbone, **{**settings, "cache_dir": cold_cache})
        shape = (ex.batch_size, *ex.input_size, 3)
        result["workers"] = ex.workers

        # Setup, untimed in "cold": build the model and trace the one batch shape.
        with measure("setup (build + trace + 1st call)", ex.batch_size) as setup:
            ex.backbone.embed(np.zeros(shape, np.float32))

        # Stages alone, with the extractor's own thread count.
        images = resolve_source(str(source))
        with measure("stage: read + hash", n) as hashing:
            keys, _ = ex._content_keys(images, "raise")
        assert len(keys) == n

        def decode_one(path: str) -> np.ndarray:
            with open(path, "rb") as f:
                data = f.read()
            return decode(data, ex.input_size, resize=ex.resize, background=ex.background)

        with measure("stage: read + decode", n) as decoding, ThreadPoolExecutor(ex.workers) as pool:
            pixels = np.stack(list(pool.map(decode_one, images.inputs)))
        batches = batches_of(pixels, ex.batch_size)
        del pixels

        def forward(label: str) -> tuple[Timing, np.ndarray]:
            outputs = []
            with measure(label, n) as timing:
                for batch in batches:
                    outputs.append(ex.backbone.embed(batch))
            return timing, np.concatenate(outputs)[:n]

        forward1, X_forward = forward("forward (pre-decoded)")

        with measure("featx cold (traced model)", n) as cold:
            cold_emb = ex.extract(str(source))
        cold.extra = {"cache_hits": cold_emb.cache_hits, "cache_misses": cold_emb.cache_misses}

        warm_ex = Extractor(args.backbone, **{**settings, "cache_dir": cold_cache})
        with measure("featx warm (new Extractor)", n) as warm:
            warm_emb = warm_ex.extract(str(source))
        warm.extra = {"cache_hits": warm_emb.cache_hits, "cache_misses": warm_emb.cache_misses}

        forward2, _ = forward("forward again (noise check)")
        batches.clear()  # free the pre-decoded images

        # Cache writes alone: the same number of shards, written one after another.
        scratch = EmbeddingCache(Path(tmp) / "write-only")
        vectors = np.random.default_rng(0).standard_normal((n, ex.dim)).astype(np.float32)
        with measure("stage: cache writes", n) as writes:
            for start in range(0, n, ex.batch_size):
                stop = min(start + ex.batch_size, n)
                scratch.put("bench", keys[start:stop], vectors[start:stop])
        scratch.close()

    forward_ips = (forward1.images_per_second + forward2.images_per_second) / 2
    result.update(
        {
            "timings": [
                t.as_dict()
                for t in (setup, hashing, decoding, writes, forward1, forward2, cold, warm)
            ],
            "forward_images_per_second_mean": round(forward_ips, 2),
            "cold_over_forward": round(cold.images_per_second / forward_ips, 3),
            # CPU seconds are steadier than wall time on a shared machine; when both runs
            # are CPU-bound, the wall-clock ratio tends towards this one.
            "cold_over_forward_by_cpu": round(
                (forward1.cpu_seconds + forward2.cpu_seconds) / 2 / cold.cpu_seconds, 3
            ),
            "warm_over_cold": round(warm.images_per_second / cold.images_per_second, 2),
            "cold_plus_setup_seconds": round(cold.seconds + setup.seconds, 3),
            "featx_reported_seconds": {
                "cold": round(cold_emb.seconds, 3),
                "warm": round(warm_emb.seconds, 3),
            },
            "stages_serial_seconds": round(
                hashing.seconds + decoding.seconds + forward1.seconds + writes.seconds, 3
            ),
            "max_abs_diff": {
                "cold_vs_forward": float(np.abs(cold_emb.X - X_forward).max()),
                "warm_vs_cold": float(np.abs(warm_emb.X - cold_emb.X).max()),
            },
        }
    )
    return result


# -- the command line, as subprocesses -------------------------------------------------------


def run_cli(args: argparse.Namespace, source: Path, n: int) -> dict[str, Any]:
    """``python -m featx.cli extract`` twice into one fresh cache: cold, then warm."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="featx-bench-cli-") as tmp:
        command = [
            sys.executable,
            "-m",
            "featx.cli",
            "extract",
            str(source),
            "--backbone",
            args.backbone,
            "--weights",
            str(args.weights),
            "--size",
            str(args.size),
            "--batch-size",
            str(args.batch_size),
            "--json",
            "--quiet",
            "--cache-dir",
            tmp,
        ]
        for label in ("cli cold", "cli warm"):
            with measure(label, n, children=True) as timing:
                proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            timing.extra = {
                key: summary[key]
                for key in ("n_images", "seconds", "cache_hits", "cache_misses", "failed")
            }
            runs.append(timing)
    cold, warm = runs
    cold_s, warm_s = cold.extra["seconds"], warm.extra["seconds"]
    ok = warm.extra["cache_misses"] == 0 and warm_s <= cold_s / 20
    return {
        "command": " ".join([*command[:-1], "TMP"]),
        "timings": [t.as_dict() for t in runs],
        "cold_seconds": cold_s,
        "warm_seconds": warm_s,
        "warm_cache_misses": warm.extra["cache_misses"],
        "cold_over_warm": round(cold_s / warm_s, 1) if warm_s else None,
        "acceptance": "PASS" if ok else "FAIL",
    }


# -- report ----------------------------------------------------------------------------------


def _row(t: dict[str, Any]) -> str:
    other = t["other_cpu_seconds"]
    return (
        f"{t['name']:<34}{t['n_images']:>7}{t['seconds']:>10.2f}{t['images_per_second']:>10.1f}"
        f"{t['cpu_seconds']:>9.1f}{t['cpu_utilisation'] or 0:>7.2f}"
        f"{'' if other is None else f'{other:.1f}':>10}"
    )


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"featx extract speed: {s['n_images']} images from {s['data']}\n"
        f"  {s['backbone']} @ {s['size']}px, batch {s['batch_size']}, workers "
        f"{report.get('inprocess', {}).get('workers', 'default')}, {s['cpus']} CPUs, "
        f"TF {s['tensorflow']}, intra/inter-op threads {s['tf_threads']} (0: TF's default)"
    )
    header = (
        f"{'measurement':<34}{'images':>7}{'seconds':>10}{'img/s':>10}"
        f"{'CPU-s':>9}{'util':>7}{'other CPU-s':>12}"
    )
    if "inprocess" in report:
        r = report["inprocess"]
        print("\n" + header + "\n" + "-" * len(header))
        for t in r["timings"]:
            print(_row(t))
        ratio_cf, ratio_wc = r["cold_over_forward"], r["warm_over_cold"]
        print(
            f"\nforward (mean of 2)          {r['forward_images_per_second_mean']:.1f} img/s\n"
            f"cold / forward               {ratio_cf:.3f}  (featx keeps {ratio_cf:.0%} of the "
            "network's own speed)\n"
            f"  by CPU time                {r['cold_over_forward_by_cpu']:.3f}  (forward CPU-s / "
            "cold CPU-s: steadier when the machine is shared)\n"
            f"warm / cold                  {ratio_wc:.1f}x faster\n"
            f"cold incl. setup             {r['cold_plus_setup_seconds']:.2f} s"
            " (setup = model build + trace, measured separately)\n"
            f"  + TensorFlow import          {s['tf_import_seconds']:.2f} s"
            " (the CLI's cold run also pays it)\n"
            f"stages run one after another {r['stages_serial_seconds']:.2f} s"
            " (hash + decode + forward + writes)\n"
            f"max |diff| cold vs forward   {r['max_abs_diff']['cold_vs_forward']:.3g}, "
            f"warm vs cold {r['max_abs_diff']['warm_vs_cold']:.3g}"
        )
    if "cli" in report:
        c = report["cli"]
        print(f"\nCLI: {c['command']}\n" + header + "\n" + "-" * len(header))
        for t in c["timings"]:
            print(
                _row(t) + f"   (featx seconds {t['extra']['seconds']:.2f}, "
                f"misses {t['extra']['cache_misses']})"
            )
        print(
            f"\ncold {c['cold_seconds']:.2f} s, warm {c['warm_seconds']:.2f} s, warm misses "
            f"{c['warm_cache_misses']}, cold/warm {c['cold_over_warm']}x -> {c['acceptance']} "
            "(needs 0 misses and warm <= cold/20)"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table (or one JSON object with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class-per-folder images")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--backbone", default="MobileNetV2")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--workers", type=int, default=None, help="decode threads (featx's default)")
    p.add_argument("--mode", choices=("all", "inproc", "cli"), default="all")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print
    paths = image_paths(args.data, args.limit)
    t0 = time.perf_counter()
    import tensorflow as tf  # timed: the CLI's cold "seconds" include this import

    tf_import_seconds = time.perf_counter() - t0

    report: dict[str, Any] = {
        "settings": {
            "data": str(args.data),
            "weights": str(args.weights),
            "backbone": args.backbone,
            "size": args.size,
            "batch_size": args.batch_size,
            "limit": args.limit,
            "n_images": len(paths),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "tf_import_seconds": round(tf_import_seconds, 2),
            "tf_threads": [
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            ],
        }
    }
    with tempfile.TemporaryDirectory(prefix="featx-bench-src-") as tmp:
        source = args.data if args.limit is None else subset_folder(args.data, paths, Path(tmp))
        if args.mode in ("all", "inproc"):
            log(f"in-process measurements on {len(paths)} images ...")
            report["inprocess"] = run_inprocess(args, source, paths)
        if args.mode in ("all", "cli"):
            log("running the CLI twice ...")
            report["cli"] = run_cli(args, source, len(paths))
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
