"""featx audit on clothing10's own train / validation / test, and featx similar's warm time.

Run from the repository root (needs ../shared):

    PYTHONPATH=. python benchmarks/audit_splits.py [--cache-dir DIR] [--json results.json]
        [--out audit.html]

1. ``featx.audit`` on the published split root (MobileNetV2 weights from ../shared, 160 px,
   logreg cross-fitted on train + validation, its final head scored on test): every
   duplicate group that crosses splits (printed, so a person can look at the files), and
   the naive vs leak-free test accuracy.
2. ``featx similar`` on a test photo, searched in ``train/``: the in-process time of
   ``featx.neighbours`` with a warm cache (median of 5 calls after one warm-up), and the
   wall time of the whole ``featx similar`` command (a fresh process, so it includes
   Python's and TensorFlow's imports), median of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("FEATX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
ROOT = SHARED / "datasets" / "clothing10"
OPTIONS = {"backbone": "MobileNetV2", "weights": str(WEIGHTS), "input_size": 160}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="cache-bench-audit")
    parser.add_argument("--json", default=None)
    parser.add_argument("--out", default=None, help="also write the audit page here")
    args = parser.parse_args()

    import featx

    start = time.perf_counter()
    result = featx.audit(str(ROOT), cache_dir=args.cache_dir, **OPTIONS)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = featx.audit(str(ROOT), cache_dir=args.cache_dir, **OPTIONS)
    second = time.perf_counter() - start
    summary = result.summary()
    assert again.summary()["label_issues"] == summary["label_issues"]
    if args.out:
        from featx.audit_page import write_audit_html

        write_audit_html(result, args.out, title="featx audit: clothing10")
    leaks = [g for g in summary["duplicates"] if g["cross_split"]]
    print(f"audit of {ROOT}: first {first:.1f} s, second {second:.1f} s")
    print("counts:", json.dumps(summary["counts"]))
    print("accuracy:", json.dumps(summary["accuracy"]))
    print(f"{len(leaks)} cross-split groups:")
    for group in leaks:
        print(f"  {group['kind']} sim={group['similarity']:.3f}")
        for path, split, label in zip(group["paths"], group["splits"], group["labels"],
                                      strict=True):  # fmt: skip
            print(f"    {split:10s} {label:10s} {path}")

    query = sorted((ROOT / "test" / "pants").glob("*.jpg"))[0]
    train = ROOT / "train"
    featx.neighbours(str(query), str(train), k=8, cache_dir=args.cache_dir, **OPTIONS)  # warm
    api = []
    for _ in range(5):
        start = time.perf_counter()
        found = featx.neighbours(str(query), str(train), k=8, cache_dir=args.cache_dir,
                                 **OPTIONS)  # fmt: skip
        api.append(time.perf_counter() - start)
    assert found.settings["cache_misses"] == 0, found.settings
    featx_command = str(Path(sys.executable).parent / "featx")
    command = [featx_command, "similar", str(query), "--in", str(train), "--weights",
               str(WEIGHTS), "--size", "160", "--cache-dir", args.cache_dir, "--json"]  # fmt: skip
    cli = []
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        cli.append(time.perf_counter() - start)
    neighbours = json.loads(done.stdout)["queries"][0]["neighbours"]
    print(f"similar {query.name} in train/: featx.neighbours warm median "
          f"{statistics.median(api):.3f} s (of {[round(t, 3) for t in api]}); "
          f"featx similar command median {statistics.median(cli):.2f} s "
          f"(of {[round(t, 2) for t in cli]})")  # fmt: skip
    for n in neighbours:
        print(f"  {n['similarity']:.4f} [{n['label']}] {n['path']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "audit_seconds": [first, second],
                    "counts": summary["counts"],
                    "accuracy": summary["accuracy"],
                    "cross_split": leaks,
                    "similar_api_seconds": api,
                    "similar_cli_seconds": cli,
                    "neighbours": neighbours,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
