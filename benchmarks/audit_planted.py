"""featx audit on planted problems: moved labels and near-duplicate copies.

Run from the repository root (needs ../shared):

    PYTHONPATH=. python benchmarks/audit_planted.py [--data intel6,clothing10]
        [--cache-dir DIR] [--json results.json]

For each dataset (clothing10: its train + validation folders merged into one
class-per-folder set), a seeded copy is built in a temporary folder:

- 4% of the images moved to another (random) class folder (label flips);
- 2% of the images copied as a 90% centre crop, scaled by 0.8, re-saved at JPEG quality
  75, in the same class folder (near-duplicates).

Then ``featx.audit`` (MobileNetV2 weights from ../shared, 160 px, logreg, 5-fold nested CV)
runs on the planted copy and on the unmodified folder, and the script prints:
label-issue recall at the default threshold, the share of planted flips among the k most
suspicious (k = number planted), how often the suggested label is the original, the
near-duplicate recall (the copy in one group with its original), and what the unmodified
folder's audit flags.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("FEATX_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"


def near_copy(path: Path) -> bytes:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    cw, ch = round(w * 0.9), round(h * 0.9)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    image = image.resize((round(cw * 0.8), round(ch * 0.8)), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def flat_copy(sources: list[Path], out: Path) -> dict[str, str]:
    """Every image of the class folders of ``sources`` under ``out/<class>/``; returns
    new path -> original path."""
    origin = {}
    for source in sources:
        for path in sorted(source.glob("*/*.jpg")):
            target = out / path.parent.name / f"{source.name}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            origin[str(target)] = str(path)
    return origin


def plant(root: Path, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    files = sorted(root.glob("*/*.jpg"))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    n_flip, n_copy = round(0.04 * len(files)), round(0.02 * len(files))
    chosen = rng.permutation(len(files))
    flips, copies = {}, {}
    for i in chosen[:n_flip]:
        path = files[i]
        others = [c for c in classes if c != path.parent.name]
        target = root / others[rng.integers(len(others))] / f"moved-{path.name}"
        path.rename(target)
        flips[str(target)] = path.parent.name
    for i in chosen[n_flip : n_flip + n_copy]:
        path = files[i]
        target = path.parent / f"copy-{path.stem}.jpg"
        target.write_bytes(near_copy(path))
        copies[str(target)] = str(path)
    return {"flips": flips, "copies": copies, "n_images": len(files) + n_copy}


HEADS = ["logreg"]
SIZES: list[int] = [160]  # several: the embeddings of each size, concatenated


def run_audit(folder: Path, cache_dir: str) -> tuple[dict, float]:
    import featx

    start = time.perf_counter()
    result = featx.audit(
        folder,
        weights=str(WEIGHTS),
        input_size=SIZES[0] if len(SIZES) == 1 else list(SIZES),
        heads=HEADS,
        cache_dir=cache_dir,
        verbose=False,
    )
    summary = result.summary()
    summary["ranked_paths"] = [row["path"] for row in result.ranking]
    return summary, time.perf_counter() - start


def measure(name: str, sources: list[Path], cache_dir: str, work: Path) -> dict:
    clean = work / f"{name}-clean"
    flat_copy(sources, clean)
    planted_root = work / f"{name}-planted"
    shutil.copytree(clean, planted_root)
    planted = plant(planted_root)
    flips, copies = planted["flips"], planted["copies"]
    summary, seconds = run_audit(planted_root, cache_dir)
    flagged = {i["path"]: i for i in summary["label_issues"]}
    found = [p for p in flips if p in flagged]
    top_k = summary["ranked_paths"][: len(flips)]  # the k most suspicious of all rows
    right = [p for p in found if flagged[p]["suggested"] == flips[p]]
    groups = [set(g["paths"]) for g in summary["duplicates"]]
    copies_found = [c for c, o in copies.items() if any({c, o} <= g for g in groups)]
    planted_paths = set(copies) | set(copies.values())
    extra_groups = [g for g in summary["duplicates"] if not set(g["paths"]) & planted_paths]
    again, again_seconds = run_audit(planted_root, cache_dir)
    clean_summary, _ = run_audit(clean, cache_dir)
    row = {
        "dataset": name,
        "heads": list(HEADS),
        "sizes": list(SIZES),
        "images": planted["n_images"],
        "planted_flips": len(flips),
        "planted_copies": len(copies),
        "label_issues_flagged": len(flagged),
        "label_recall": len(found) / len(flips),
        "label_precision": len(found) / max(1, len(flagged)),
        "planted_in_top_k": sum(p in flips for p in top_k) / len(flips),
        "suggested_is_original": len(right) / max(1, len(found)),
        "near_duplicate_recall": len(copies_found) / len(copies),
        "other_duplicate_groups": len(extra_groups),
        "other_groups": [g["paths"] for g in extra_groups][:20],
        "accuracy": summary["accuracy"],
        "outliers": len(summary["outliers"]),
        "seconds_first": seconds,
        "seconds_second": again_seconds,
        "second_same": again["label_issues"] == summary["label_issues"],
        "clean_label_issues": len(clean_summary["label_issues"]),
        "clean_duplicate_groups": [g["paths"] for g in clean_summary["duplicates"]],
        "clean_top_issues": clean_summary["label_issues"][:20],
        "clean_outliers": clean_summary["outliers"][:10],
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="intel6,clothing10")
    parser.add_argument("--cache-dir", default=os.environ.get("FEATX_CACHE_DIR", "cache"))
    parser.add_argument("--heads", default="logreg", help="comma-separated: a consensus")
    parser.add_argument("--sizes", default="160", help="input sizes; several are concatenated")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    HEADS[:] = args.heads.split(",")
    SIZES[:] = [int(v) for v in args.sizes.split(",")]
    datasets = SHARED / "datasets"
    layouts = {
        "intel6": [datasets / "intel6"],
        "clothing10": [datasets / "clothing10" / "train", datasets / "clothing10" / "validation"],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data.split(","):
            sources = layouts[name]
            if name == "intel6":  # one folder: copy it as class folders of itself
                sources = [datasets / "intel6"]
            row = measure(name, sources, args.cache_dir, Path(tmp))
            rows.append(row)
            printable = {k: v for k, v in row.items() if not k.startswith(("clean_", "other_g"))}
            print(json.dumps(printable, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
