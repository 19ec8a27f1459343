"""featx audit at scale: 200,000 synthetic 1,280-d vectors, memory-mapped from disk.

Run from the repository root:

    PYTHONPATH=. python benchmarks/audit_scale.py [--n 200000] [--json results.json]

The vectors are those of ``benchmarks/umap_scale.py`` (12 classes in an 8-d latent space
mapped to 1,280-d, plus noise), with planted problems: 1% of rows repeated exactly
(duplicates), 1% of labels moved to another class, and 20 rows far from every class.
They are saved with ``Embeddings.save`` (float32, 1.0 GB) and each step runs in a fresh
Python process (its own peak RSS, ``VmHWM``) that loads them with ``mmap_mode="r"``:

- ``audit``: ``featx.audit(embeddings, heads=["logreg"], search=False, cv=3)`` (logreg at
  its default C: 3 fits for the out-of-fold probabilities, 3 more for the leak-free score,
  since the planted duplicates make it rerun with grouped folds), the index of neighbours
  built (pynndescent, above 20,000 rows) and kept in the cache folder;
- ``again`` (with ``--steps make,audit,again``): the same audit, the index loaded.

Printed: seconds and peak RSS of each step next to the vectors' size, and the planted
problems found (label-issue recall, duplicate recall, outliers found).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fresh import child, machine, run_step
from umap_scale import synthetic


def planted(n: int, seed: int = 0):
    X, y = synthetic(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    n_dup, n_flip, n_out = n // 100, n // 100, 20
    picks = rng.choice(n, n_dup * 2 + n_flip + n_out, replace=False)
    dup_from, dup_to = picks[:n_dup], picks[n_dup : 2 * n_dup]
    flips = picks[2 * n_dup : 2 * n_dup + n_flip]
    outliers = picks[2 * n_dup + n_flip :]
    X[dup_to] = X[dup_from]
    y[dup_to] = y[dup_from]
    classes = int(y.max()) + 1
    original = y[flips].copy()
    y[flips] = (y[flips] + rng.integers(1, classes, n_flip)) % classes
    X[outliers] = rng.normal(0.0, 1.0, (n_out, X.shape[1])).astype(np.float32) * 4.0
    return X, y, {"dup_from": dup_from, "dup_to": dup_to, "flips": flips,
                  "original": original, "outliers": outliers}  # fmt: skip


def step_make(args) -> dict:
    from featx.embeddings import Embeddings

    X, y, truth = planted(args.n)
    Embeddings.from_arrays(X, np.array([f"class {c:02d}" for c in y])).save(args.folder)
    np.savez(Path(args.folder) / "truth.npz", **truth)
    return {"n": args.n, "gb": round(X.nbytes / 1e9, 2)}


def step_audit(args) -> dict:
    from featx.auditing import audit
    from featx.embeddings import Embeddings

    embeddings = Embeddings.load(args.folder, mmap_mode="r")
    assert isinstance(embeddings.X, np.memmap)
    start = time.perf_counter()
    result = audit(embeddings, heads=["logreg"], search=False, cv=3, cache_dir=args.cache)
    seconds = time.perf_counter() - start
    truth = np.load(Path(args.folder) / "truth.npz")
    summary = result.summary()
    flagged = {int(i["path"][4:-1]) for i in summary["label_issues"]}
    flips = set(truth["flips"].tolist())
    pairs = {frozenset((int(a), int(b))) for a, b in zip(truth["dup_from"], truth["dup_to"],
                                                          strict=True)}  # fmt: skip
    grouped = {frozenset(int(p[4:-1]) for p in g["paths"]) for g in summary["duplicates"]}
    found_pairs = sum(any(pair <= g for g in grouped) for pair in pairs)
    outliers = {int(o["path"][4:-1]) for o in summary["outliers"]}
    return {
        "seconds": round(seconds, 1),
        "neighbour_index": summary["settings"]["neighbour_index"],
        "label_issues": len(flagged),
        "label_issue_recall": round(len(flagged & flips) / len(flips), 3),
        "label_issue_precision": round(len(flagged & flips) / max(1, len(flagged)), 3),
        "duplicate_groups": len(grouped),
        "duplicate_recall": round(found_pairs / len(pairs), 3),
        "outliers": len(outliers),
        "planted_outliers_found": len(outliers & set(truth["outliers"].tolist())),
        "accuracy": summary["accuracy"],
    }


STEPS = {"make": step_make, "audit": step_audit, "again": step_audit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", default="make,audit")
    parser.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        child(STEPS[args.step](args))
        return
    with tempfile.TemporaryDirectory() as folder:
        argv = ["--n", str(args.n), "--folder", f"{folder}/emb", "--cache", f"{folder}/cache"]
        results = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                   "machine": machine()}  # fmt: skip
        for step in args.steps.split(","):
            results[step] = run_step(__file__, step, argv)
            print(step, json.dumps(results[step]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
