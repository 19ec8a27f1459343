"""Search for a better representation from the same frozen network, then show it.

``featx.tune`` tries input sizes (alone and concatenated), the mirror view and the
head's regularisation on intel6 by nested cross-validation: each outer fold chooses on
its own training part only, so the tuned score is honest. The table lists every
configuration with its accuracy, dimension and cost; the report draws the chosen
representation's map and carries the same table.

    python examples/multiscale_tune.py                 # 2,158 photos, ~10 min on 2 cores
    python examples/multiscale_tune.py --per-class 20  # a quick look
    python examples/multiscale_tune.py --sizes 160+224+288  # one multi-scale candidate
"""

from __future__ import annotations

from _data import arguments, photos

import featx
from featx.config import parse_sizes


def _sizes(parser):
    parser.add_argument(
        "--sizes",
        default="160,160+224,160+288,160+224+288",
        help="input sizes to search, comma-separated; + concatenates (the first is the baseline)",
    )


args = arguments(__doc__, _sizes)
weights = args.shared / "weights" / "mobilenet_v2_1.0_160_no_top.weights.h5"
images = photos(args.shared / "datasets" / "intel6", args.per_class)

found = featx.tune(
    images,
    backbone="MobileNetV2",
    weights=weights,
    space={
        # The first value of each dimension is the baseline (by default plain 160 px).
        "input_size": [parse_sizes(candidate) for candidate in args.sizes.split(",")],
        "tta": [None, "flip"],
        "pooling": ["avg"],
        "head": ["logreg"],
    },
    grids={"logreg": {"C": [0.001, 0.003, 0.01, 0.03]}},
    cv=5,
    inner_cv=5,
    cache_dir=args.cache_dir,
)
columns = ["name", "score", "outer_accuracy", "dim", "ms_per_image", "best"]
print(found.results[columns].to_string(index=False))
print(
    f"tuned {found.accuracy:.4f} vs baseline {found.baseline_accuracy:.4f} "
    f"(nested CV); refitted on all photos: {found.best}"
)

# The baseline's map beside the chosen sizes' (concatenated embeddings).
network = {"backbone": "MobileNetV2", "weights": weights}
sizes = found.best["input_size"]
maps = [{**network, "input_size": 160, "label": "160 px (baseline)"}]
if sizes != 160:
    label = "+".join(map(str, sizes)) if isinstance(sizes, list) else str(sizes)
    maps.append({**network, "input_size": sizes, "label": f"{label} px (chosen)"})
summary = featx.report(
    images, backbones=maps, tuning=found, out="intel6-tune.html", cache_dir=args.cache_dir
)
print(f"report: intel6-tune.html, {summary['n_shown']} points, {len(summary['panels'])} map(s)")
