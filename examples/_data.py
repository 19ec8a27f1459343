"""Where the examples find the shared weights and photos, and how they take a small sample.

Not part of featx: the examples' own plumbing, so that each script stays about featx.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from featx.sources import resolve_source

ROOT = Path(__file__).resolve().parents[1]


def arguments(doc: str, extra=None) -> argparse.Namespace:
    """The options every example takes; ``extra(parser)`` adds a script's own."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    if extra is not None:
        extra(parser)
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("FEATX_SHARED", ROOT.parent / "shared")),
        help="the folder with weights/ and datasets/ (default $FEATX_SHARED or ../shared)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="use at most N photos of each class (a seeded sample) for a quick run",
    )
    parser.add_argument("--cache-dir", default="cache", help="featx's embedding cache")
    args = parser.parse_args()
    if not (args.shared / "weights").is_dir():
        parser.error(
            f"--shared {args.shared} has no weights/ folder. Point it (or $FEATX_SHARED) at "
            "the folder holding weights/ and datasets/."
        )
    return args


def photos(folder: Path, per_class: int | None, seed: int = 0) -> pd.DataFrame:
    """A class-per-folder tree as a ``path``/``label`` table, optionally sampled per class."""
    found = resolve_source(folder)  # featx's own listing: the files extract() would read
    table = pd.DataFrame({"path": found.inputs, "label": np.asarray(found.classes)[found.y]})
    if per_class is not None:
        shuffled = table.sample(frac=1.0, random_state=seed)
        table = shuffled.groupby("label").head(per_class).sort_index().reset_index(drop=True)
    return table
