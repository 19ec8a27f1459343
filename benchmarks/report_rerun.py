"""What a second `featx report` costs, and what numba's on-disk cache saves.

Run from the repository root:

    python benchmarks/report_rerun.py [--data ../shared/datasets/intel6] [--size 160]

Part 1 runs issue 4's command twice, each in a new process, on an empty featx cache and an
empty numba cache (both in a temporary folder):

    featx report DATA --backbones MobileNetV2:weights=W:label=pretrained \\
        MobileNetV2:weights=none:label="random weights" --size 160 --json ...

and prints both wall times, their ratio, where the time went, and the pretrained and
random backbones' k-NN accuracy and silhouette.

Part 2 fits UMAP on the same 2,000 random points in three new processes: with featx's
numba caching off (every process compiles what umap-learn does not cache itself), then on,
twice (the first compiles and stores, the second loads); each setting starts from an empty
numba cache. Each process reports the time of its ``featx.projection.project`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATX_SHARED", ROOT.parent / "shared"))

UMAP_JOB = """
import time, numpy as np
from featx.projection import project
X = np.random.default_rng(0).normal(size=(2000, 64))
start = time.perf_counter()
project(X, "umap", seed=0)
print(time.perf_counter() - start)
"""


def run_report(data: Path, weights: Path, size: int, work: Path, env: dict) -> dict:
    command = [
        sys.executable, "-m", "featx.cli", "report", str(data),
        "--backbones", f"MobileNetV2:weights={weights}:label=MobileNetV2 pretrained",
        "MobileNetV2:weights=none:label=MobileNetV2 random weights",
        "--size", str(size), "--cache-dir", str(work / "cache"),
        "--out", str(work / "report.html"), "--png", str(work / "report.png"),
        "--json", "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"featx report failed:\n{done.stderr[-3000:]}")
    return {"wall": wall, **json.loads(done.stdout)}


def umap_seconds(env: dict) -> float:
    done = subprocess.run(
        [sys.executable, "-c", UMAP_JOB], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "datasets" / "intel6"))
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5")
    )
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "NUMBA_CACHE_DIR": str(work / "numba"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        first = run_report(Path(args.data), Path(args.weights), args.size, work, env)
        second = run_report(Path(args.data), Path(args.weights), args.size, work, env)
        html_mb = (work / "report.html").stat().st_size / 1e6

        print(f"featx report {args.data} (MobileNetV2 @{args.size}, pretrained vs random)")
        print(f"  {first['n_points']} images, HTML {html_mb:.1f} MB, load {os.getloadavg()}")
        print(f"  {'run':<8}{'wall s':>8}" + "".join(f"{k:>10}" for k in first["seconds"]))
        for name, run in (("first", first), ("second", second)):
            steps = "".join(f"{v:>10.1f}" for v in run["seconds"].values())
            print(f"  {name:<8}{run['wall']:>8.1f}{steps}")
        print(f"  second / first = {second['wall'] / first['wall']:.3f} (target < 0.5)")
        for panel in second["panels"]:
            m = panel["metrics"]
            print(
                f"  {panel['label']:<28} k-NN {m['knn_accuracy']:.3f}  k-NN 2-D "
                f"{m['knn_accuracy_2d']:.3f}  silhouette {m['silhouette']:.3f}  "
                f"trustworthiness {m['trustworthiness']:.3f}"
            )

        # Each setting starts from its own empty numba cache (umap-learn's few cache=True
        # functions would otherwise be stored by the first run and loaded by the next).
        off = umap_seconds({**env, "NUMBA_CACHE_DIR": str(work / "numba-off"),
                            "FEATX_NUMBA_CACHE": "0"})  # fmt: skip
        fresh = {**env, "NUMBA_CACHE_DIR": str(work / "numba-on")}
        cold = umap_seconds(fresh)
        warm = umap_seconds(fresh)
        print("UMAP fit of 2,000 x 64 points in a new process (compile included):")
        print(f"  featx numba caching off: {off:.1f} s")
        print(f"  on, first process:       {cold:.1f} s (compiles and stores)")
        print(f"  on, second process:      {warm:.1f} s (loads; {off / warm:.1f}x faster)")


if __name__ == "__main__":
    main()
