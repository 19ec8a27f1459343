"""Fitting heads: featx's code before the fast paths against today's, on the same embeddings.

One command runs, for each dataset and head, ``featx.learn`` from an older commit (a git
worktree made here, by default of the commit before :mod:`featx.solvers`) and from this
checkout, each in a fresh subprocess that loads the same saved embeddings, and prints
wall seconds, accuracy and the chosen parameters side by side:

- **intel6**: one folder, 2,158 images, 5-fold nested CV (the default for a folder);
- **clothing10**: its own train / validation / test (3,068 / 341 / 372): C chosen on
  validation, refitted on train + validation, scored on test;
- **stack10k**: 10,000 rows: every clothing10 image (train + validation) with two
  augmented copies (``featx.augment.AugmentPolicy(copies=2)``, trimmed to 9,628 rows)
  for training, the 372 test originals to test, hyperparameters chosen by grouped 3-fold
  inner CV (an image and its copies always on one side).

Embeddings: MobileNetV2 at 160 px with the shared pretrained weights
(``$FEATX_SHARED``, else ``../shared``), global average pooling, 1,280-d, extracted
through featx's cache (``--cache-dir``) and saved once as ``.npz`` into ``--work``.

``seconds`` is the wall time of the ``featx.learn`` call (fitting, selection, scoring),
with scikit-learn's modules imported before the clock starts (about 1.1 s, once per
process, on both sides); with ``--repeat N`` each side calls it up to N times in its
process, stopping before a call that would take its total past ``--repeat-budget`` seconds
(default 60: the short fits, whose seconds vary most, are the ones repeated), and the table
shows the median, the notes every time (the old side's seconds differ by up to 30% between
runs of the same command on machines of this kind);
both sides run with the same BLAS limit (featx sets one BLAS thread while fitting); the
new side uses ``n_jobs`` threads (default: every CPU). ``ratio`` is new / old in the same
run. Run from the repository root on a quiet machine::

    python benchmarks/heads_speed.py                      # everything (~45 min, 2 CPUs)
    python benchmarks/heads_speed.py --datasets intel6 --heads logreg --old HEAD
    python benchmarks/heads_speed.py --datasets clothing10 --heads logreg --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATX_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
# The last commit of main before featx.solvers: plain scikit-learn fits, one per setting.
OLD = "e22e75c"
DATASETS = ("intel6", "clothing10", "stack10k")
HEADS = ("logreg", "svm", "linear-svm", "mlp")
STACK_ROWS = 10_000


def embed(work: Path, cache_dir: str) -> None:
    """Save every dataset's embeddings as ``work/<name>.npz`` (X, y, classes, groups, split)."""
    from featx import Extractor
    from featx.augment import AugmentPolicy

    network = {"weights": str(WEIGHTS), "input_size": 160, "cache_dir": cache_dir}
    plain = Extractor("MobileNetV2", **network)
    data = SHARED / "datasets"
    if not (work / "intel6.npz").exists():
        e = plain.extract(data / "intel6")
        _save(work / "intel6.npz", e.X, e.y, e.classes, np.arange(len(e.X)), ["all"] * len(e.X))
    parts = {s: plain.extract(data / "clothing10" / s) for s in ("train", "validation", "test")}
    classes = parts["train"].classes
    if not (work / "clothing10.npz").exists():
        X = np.concatenate([parts[s].X for s in parts])
        y = np.concatenate([parts[s].y for s in parts])
        split = [s for s in parts for _ in range(len(parts[s].X))]
        _save(work / "clothing10.npz", X, y, classes, np.arange(len(X)), split)
    if not (work / "stack10k.npz").exists():
        originals = [data / "clothing10" / s for s in ("train", "validation")]
        rows = [(parts["train"], parts["validation"])]
        for view in AugmentPolicy(copies=2, seed=0).views():
            copy = Extractor("MobileNetV2", view=view, **network)
            rows.append(tuple(copy.extract(folder) for folder in originals))
        train_X = [np.concatenate([a.X, b.X]) for a, b in rows]
        train_y = np.concatenate([parts["train"].y, parts["validation"].y])
        n_train = STACK_ROWS - len(parts["test"].X)
        image = np.arange(len(train_y))
        X = np.concatenate(train_X)[:n_train]
        y = np.tile(train_y, len(rows))[:n_train]
        groups = np.tile(image, len(rows))[:n_train]
        X = np.concatenate([X, parts["test"].X])
        y = np.concatenate([y, parts["test"].y])
        groups = np.concatenate([groups, len(image) + np.arange(len(parts["test"].X))])
        split = ["train"] * n_train + ["test"] * len(parts["test"].X)
        _save(work / "stack10k.npz", X, y, classes, groups, split)


def _save(path: Path, X, y, classes, groups, split) -> None:
    np.savez(path, X=X, y=y, classes=np.asarray(classes), groups=groups, split=np.asarray(split))


def fit(npz: str, head: str, repeat: str = "1", budget: str = "inf") -> dict:
    """Up to ``repeat`` ``featx.learn`` calls on saved embeddings (no more once another would
    pass ``budget`` seconds in all, going by the first), by whichever featx is importable:
    the first call's result, and every call's seconds."""
    import featx
    from featx.embeddings import Embeddings

    saved = np.load(npz)
    classes = [str(c) for c in saved["classes"]]
    split = saved["split"]

    def part(name: str) -> Embeddings:
        mask = split == name
        return Embeddings.from_arrays(saved["X"][mask], saved["y"][mask], classes=classes)

    if set(split) == {"all"}:
        data, groups = part("all"), None
    else:
        data = {s: part(s) for s in dict.fromkeys(split.tolist())}
        groups = {s: saved["groups"][split == s] for s in data}
        if len(np.unique(saved["groups"])) == len(split):
            groups = None  # one image per row: nothing to keep together
    # scikit-learn's estimators are imported by featx.learn's first call (about 1.1 s on
    # 2 cores, the same on both sides): imported here, so the clock times the fitting.
    import sklearn.calibration
    import sklearn.linear_model
    import sklearn.metrics
    import sklearn.model_selection
    import sklearn.neural_network
    import sklearn.pipeline
    import sklearn.preprocessing
    import sklearn.svm  # noqa: F401

    times, summaries = [], []
    for _ in range(int(repeat)):
        if times and sum(times) + times[0] > float(budget):
            break
        started = time.perf_counter()
        result = featx.learn(data, head, groups=groups)
        times.append(round(time.perf_counter() - started, 3))
        summaries.append(result.summary())
    summary = summaries[0]
    if any(s["chosen_params"] != summary["chosen_params"] for s in summaries):
        sys.exit(f"{head} on {npz}: the repeated fits chose differently")
    return {
        "seconds": round(float(np.median(times)), 3),
        "times": times,
        "accuracy": round(summary["accuracy"], 4),
        "chosen": summary["chosen_params"],
        "search": summary["search"],
        "protocol": summary["protocol"],
        "n": len(split),
    }


def run_fit(side: Path, npz: Path, head: str, repeat: int = 1, budget: float = 60.0) -> dict:
    """:func:`fit` in a fresh Python that imports featx from ``side``."""
    env = {**os.environ, "PYTHONPATH": str(side), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--step", "fit", str(npz), head, str(repeat), str(budget)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=side)
    if done.returncode != 0:
        sys.exit(f"{head} on {npz.name} failed with featx from {side}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_checkout(ref: str, where: Path) -> Path:
    path = where / f"featx-{ref}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), ref],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--old", default=OLD, help="the git commit to compare against")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--cache-dir", default=str(ROOT / "cache"))
    parser.add_argument("--work", default=None, help="where embeddings and the old tree go")
    parser.add_argument(
        "--repeat", type=int, default=1, help="fits per side and case; the table shows the median"
    )
    parser.add_argument(
        "--repeat-budget", type=float, default=60.0, help="no repeat past this many seconds"
    )
    args = parser.parse_args()
    if args.step:
        print(json.dumps(fit(*args.step[1:])))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="featx-heads-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"$ python benchmarks/heads_speed.py {' '.join(sys.argv[1:])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; old {args.old}, new {commit}")
    embed(work, args.cache_dir)
    old = old_checkout(args.old, work)
    print()
    print(
        "| data | head | protocol | old s | new s | new/old | old acc | new acc | old chosen "
        "| new chosen |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    notes: list[str] = []
    spreads: list[str] = []
    try:
        for name in args.datasets.split(","):
            for head in args.heads.split(","):
                npz = work / f"{name}.npz"
                before = run_fit(old, npz, head, args.repeat, args.repeat_budget)
                after = run_fit(ROOT, npz, head, args.repeat, args.repeat_budget)
                print(
                    f"| {name} ({after['n']}) | {head} | {after['protocol']} | "
                    f"{before['seconds']:.1f} | {after['seconds']:.1f} | "
                    f"{after['seconds'] / before['seconds']:.3f} | {before['accuracy']:.4f} | "
                    f"{after['accuracy']:.4f} | {_params(before['chosen'])} | "
                    f"{_params(after['chosen'])} |",
                    flush=True,
                )
                notes.extend(_differences(f"{name} {head}", before, after))
                if args.repeat > 1:
                    n = min(len(after["times"]), len(before["times"]))
                    pairs = zip(after["times"][:n], before["times"][:n], strict=True)
                    ratios = sorted(a / b for a, b in pairs)
                    spreads.append(
                        f"- {name} {head}: old s {before['times']}, new s {after['times']}; "
                        f"new/old of the i-th fits "
                        f"{ratios[0]:.3f}-{ratios[-1]:.3f}"
                    )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    print()
    print("\n".join(notes) or "Every choice is the same on both sides.")
    if spreads:
        print("\n".join(spreads))


def _differences(what: str, before: dict, after: dict) -> list[str]:
    """Where the two sides chose differently: how the old search scored both choices."""
    nested = before["protocol"] == "nested-cv"
    searches = before["search"] if nested else [before["search"]]
    notes = []
    for fold, search in enumerate(searches):
        scores = {json.dumps(entry["params"], sort_keys=True): entry["score"] for entry in search}

        def chosen(side: dict, fold: int = fold) -> str:
            params = {k: (v[fold] if nested else v) for k, v in side["chosen"].items()}
            return json.dumps(params, sort_keys=True)

        old, new = chosen(before), chosen(after)
        if old != new:
            notes.append(
                f"- {what}, fold {fold + 1}: old chose {old} ({scores[old]:.4f} in the old "
                f"search), new chose {new} ({scores[new]:.4f} in the old search)."
            )
    return notes


def _params(chosen: dict) -> str:
    return ", ".join(f"{k.rsplit('__', 1)[-1]}={v}" for k, v in chosen.items())


if __name__ == "__main__":
    main()
