"""What `featx tune` gains over the plain 160 px logistic regression (issue 7's done-when).

Run from the repository root (about 15 min on 2 cores with an empty cache, 8 with a
warm one):

    python benchmarks/tune_gain.py [--cache-dir cache] [--datasets intel6,clothing10]

With the shared MobileNetV2 weights, per dataset:

- ``plain 160 px logreg``: ``featx.evaluate(..., input_size=160, head="logreg")``, the
  pipeline a user gets without tuning (C from featx's default grid 0.001-10, chosen by
  inner CV or on validation);
- ``tune's baseline row``: 160 px, no views, with the tune's own fine C grid chosen the
  same way as every other configuration: the strictest control, since it gets the
  regularisation search for free;
- ``featx tune``: the whole search, scored honestly.

intel6 (one folder): 5-fold nested CV; every row uses the same outer folds
(``StratifiedKFold(5, shuffle=True, random_state=0)`` over the same image order), and the
tuned score is the mean over outer folds of each fold's own winner, chosen by 5-fold
inner CV on that fold's training part. clothing10 (train/validation/test): the choice is
made on validation, and the test split is scored once, for the winner and the baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import featx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATX_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"

SEARCHES = {
    "intel6": {
        "space": {
            "input_size": [160, [160, 224], [160, 288], [160, 224, 288]],
            "tta": [None, "flip"],
            "pooling": ["avg"],
            "head": ["logreg"],
        },
        "grids": {"logreg": {"C": [0.001, 0.003, 0.01, 0.03]}},
        "protocol": {"cv": 5, "inner_cv": 5},
    },
    "clothing10": {
        "space": {
            "input_size": [160, 224, [160, 224]],
            "tta": [None, "flip"],
            "pooling": ["avg", "avg+max"],
            "head": ["logreg"],
        },
        "grids": {"logreg": {"C": [0.003, 0.01, 0.03]}},
        "protocol": {},
    },
}

LEGEND = {
    True: "Every configuration tried (`score`: mean inner-CV accuracy; `outer_accuracy`: the "
    "configuration refitted and scored in every outer fold, for comparison only):",
    False: "Every configuration tried (`score`: validation accuracy, C chosen on validation; "
    "the test split was scored for the winner and the baseline only):",
}


def measure(name: str, cache_dir: str) -> dict:
    data = SHARED / "datasets" / name
    search = SEARCHES[name]
    network = {"backbone": "MobileNetV2", "weights": WEIGHTS, "cache_dir": cache_dir}
    start = time.perf_counter()
    plain = featx.evaluate(data, input_size=160, head="logreg", **network)
    plain_seconds = time.perf_counter() - start
    found = featx.tune(
        data, space=search["space"], grids=search["grids"], **search["protocol"], **network
    )
    return {"plain": plain, "plain_seconds": plain_seconds, "found": found}


def markdown(name: str, m: dict) -> str:
    found, plain = m["found"], m["plain"]
    score = "outer-fold mean (5-fold nested CV)" if found.protocol == "nested-cv" else "test"
    best = found.results[found.results["best"]].iloc[0]
    strict = found.baseline_accuracy
    base = found.results[found.results["baseline"]].iloc[0]
    columns = ["name", "params", "score", "dim", "ms_per_image"]
    if found.protocol == "nested-cv":
        columns.insert(3, "outer_accuracy")
    lines = [
        f"### {name}: {found.protocol}, scores are {score}",
        "",
        "| pipeline | accuracy | vs plain | dim | ms/image |",
        "|---|---:|---:|---:|---:|",
        f"| plain 160 px logreg (`featx.evaluate`) | {plain['accuracy']:.4f} | | 1280 | "
        f"{plain['ms_per_image']:.1f} |",
        f"| tune's baseline row (160 px, same C search) | {strict:.4f} | "
        f"{100 * (strict - plain['accuracy']):+.2f} | {base['dim']} | {base['ms_per_image']:.1f} |",
        f"| **featx tune** (chosen: {best['name']}) | **{found.accuracy:.4f}** | "
        f"**{100 * (found.accuracy - plain['accuracy']):+.2f}** | {best['dim']} | "
        f"{best['ms_per_image']:.1f} |",
        "",
        f"Gain over tune's own baseline row: {100 * (found.accuracy - strict):+.2f} points. "
        f"Search {found.seconds:.0f} s; plain evaluate {m['plain_seconds']:.0f} s.",
        "",
        LEGEND[found.protocol == "nested-cv"],
        "",
        "```",
        found.results[columns].round(4).to_string(index=False),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=str(ROOT / "cache"))
    parser.add_argument("--datasets", default="intel6,clothing10")
    args = parser.parse_args()
    for name in args.datasets.split(","):
        print(markdown(name, measure(name, args.cache_dir)), flush=True)


if __name__ == "__main__":
    main()
