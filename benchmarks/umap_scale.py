"""UMAP and the HTML report at 200,000 points, and what fitting on a sample costs.

Run from the repository root:

    PYTHONPATH=. python benchmarks/umap_scale.py [--n 200000] [--trust-n 20000]
        [--max-fit 50000] [--max-points 20000] [--steps warmup,trust,report,full]
        [--json results.json]

The data: ``n`` structured synthetic embeddings in 1280-d: 15 classes (one of them only
3 points) whose centres sit in an 8-d latent space, mapped to 1280-d through a fixed
random linear map and a ReLU (pooled CNN features are non-negative), plus noise.

Steps, each in a fresh Python process (own peak RSS, ``VmHWM``):

- ``warmup``: a 2,000-point UMAP fitted on 1,000 points and the rest placed by
  ``transform``, so that numba's on-disk cache (``featx.projection.enable_numba_cache``)
  holds the compiled code of both; its time is the compile cost a first run pays.
- ``trust``: at ``--trust-n`` points, a full UMAP fit against fits on a stratified sample
  (``Projector(max_fit=...)``: a quarter and a tenth of the points) with the rest placed by
  ``transform``; for each, wall time and featx.separation's trustworthiness and 2-D k-NN
  accuracy (``separation_metrics``), so users know what the shortcut costs.
- ``report``: ``featx.report(embeddings={...})`` over all ``n`` points (maps fitted
  on ``--max-fit`` points and the rest transformed, display budget 20,000 points): wall
  time by stage, peak RSS, HTML size, points shown, and that every class is shown.
- ``full``: a full UMAP fit of all ``n`` points (umap-learn's ``low_memory=True``, its
  default), for comparison with the sampled fit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _fresh import child, machine, run_step

N_CLASSES = 15
DIM = 1280


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.full(N_CLASSES - 1, (n - 3) // (N_CLASSES - 1))
    sizes[: (n - 3) - sizes.sum()] += 1
    y = np.repeat(np.arange(N_CLASSES), [*sizes, 3])
    centres = rng.normal(0.0, 2.5, (N_CLASSES, 8))
    projection = rng.normal(0.0, 1.0, (8, DIM)) / np.sqrt(8)
    X = np.empty((n, DIM), np.float32)
    for start in range(0, n, 20_000):
        rows = slice(start, min(n, start + 20_000))
        latent = centres[y[rows]] + rng.normal(0.0, 1.0, (len(y[rows]), 8))
        noise = rng.normal(0.0, 0.3, (len(y[rows]), DIM))
        X[rows] = np.maximum(latent @ projection, 0.0) + noise
    return X, y


def _map_quality(X, y, max_fit, seed=0) -> dict:
    from featx.projection import project
    from featx.separation import embedding_space, separation_metrics

    start = time.perf_counter()
    coords = project(embedding_space(X), "umap", seed=seed, y=y, standardize=False,
                     max_fit=max_fit).embedding_  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = separation_metrics(X, coords, y, [str(c) for c in range(N_CLASSES)], seed=seed)
    return {"max_fit": max_fit, "seconds": round(seconds, 1),
            "trustworthiness": metrics["trustworthiness"],
            "knn_accuracy_2d": metrics["knn_accuracy_2d"],
            "knn_accuracy": metrics["knn_accuracy"]}  # fmt: skip


def step_warmup(args) -> dict:
    from featx.projection import project

    start = time.perf_counter()
    project(np.random.default_rng(0).normal(size=(2000, 64)), "umap", seed=0, max_fit=1000)
    return {"seconds": round(time.perf_counter() - start, 1)}


def step_trust(args) -> dict:
    X, y = synthetic(args.trust_n, seed=1)
    rows = [_map_quality(X, y, m) for m in (None, args.trust_n // 4, args.trust_n // 10)]
    return {"n": args.trust_n, "fits": rows}


def step_report(args) -> dict:
    from featx.reporting import report

    X, y = synthetic(args.n)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.html"
        start = time.perf_counter()
        result = report(embeddings={"synthetic 1280-d": (X, y)}, out=out, heads=(),
                        cache_dir=None, max_fit=args.max_fit,
                        max_points=args.max_points)  # fmt: skip
        seconds = time.perf_counter() - start
        size = out.stat().st_size
        page = out.read_text(encoding="utf-8")
    metrics = result["panels"][0]["metrics"]
    # The label of every point drawn, from the page's data source.
    drawn = json.loads(re.search(r'\["label",(\[[^\]]*\])\]', page).group(1))
    return {"n": args.n, "seconds": round(seconds, 1),
            "stages": {k: round(v, 1) for k, v in result["seconds"].items()},
            "n_shown": result["n_shown"], "html_mb": round(size / 1e6, 2),
            "classes": len(result["classes"]), "classes_drawn": len(set(drawn)),
            "smallest_class_drawn": min(drawn.count(c) for c in set(drawn)),
            "classes_in_per_class_table": len(result["panels"][0]["per_class"]),
            "showing_text": f"showing {result['n_shown']} of {args.n} points" in page,
            "knn_accuracy": metrics["knn_accuracy"], "n_knn": metrics["n_knn"],
            "trustworthiness": metrics["trustworthiness"]}  # fmt: skip


def step_full(args) -> dict:
    X, y = synthetic(args.n)
    return {"n": args.n, **_map_quality(X, y, None)}


STEPS = {"warmup": step_warmup, "trust": step_trust, "report": step_report, "full": step_full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--trust-n", type=int, default=20_000)
    parser.add_argument("--max-fit", type=int, default=50_000)
    parser.add_argument("--max-points", type=int, default=20_000, help="display budget")
    parser.add_argument("--steps", default="warmup,trust,report")
    parser.add_argument("--json", default=None)
    parser.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        child(STEPS[args.step](args))
        return
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "steps": {},
    }
    for step in args.steps.split(","):
        argv = ["--n", str(args.n), "--trust-n", str(args.trust_n), "--max-fit",
                str(args.max_fit), "--max-points", str(args.max_points)]  # fmt: skip
        result = run_step(__file__, step, argv)
        results["steps"][step] = result
        print(f"{step}: {json.dumps(result)}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
