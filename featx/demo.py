"""``featx demo``: the first thing a new user runs, end to end and offline.

1. **Data**: scikit-learn's bundled handwritten digits, written once as a small photo
   folder with ``train/``, ``validation/`` and ``test/`` splits (or ``--data DIR``).
2. **Extract**: the backbone's embeddings, cached; a second run shows the cache at work.
3. **Learn**: logistic regression, an RBF SVM and a small MLP on the embeddings, each
   tuned on the validation split and reported on the test split, beside two baselines:
   raw pixels and the same backbone with random weights.

The backbone's weights default to ``"imagenet"`` (downloaded once by Keras). When they
cannot be obtained, the demo says so and shows the baselines only: it never swaps in
random weights silently. ``--weights PATH`` serves offline users.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import WeightsUnavailableError

__all__ = ["run_demo", "write_digits"]

DIGITS_SIZE = 96
HEADS = ("logreg", "svm", "mlp")
# A compact search keeps the first run to a minute or two on a laptop; `featx evaluate`
# and `featx compare` search the heads' full default grids.
DEMO_GRIDS = {
    "logreg": {"clf__C": [0.01, 0.1, 1.0]},
    "svm": {"clf__estimator__C": [1.0, 10.0]},
    "linear-svm": {"clf__estimator__C": [0.01, 0.1]},
    "mlp": {"clf__alpha": [1e-4, 1e-2]},
}


def write_digits(root: str | os.PathLike) -> Path:
    """Write scikit-learn's 1,797 digits as PNGs in ``root/{train,validation,test}/<digit>/``.

    A stratified 60/20/20 split, seeded; files already there are left as they are.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    if (root / "test").is_dir():
        return root
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train, rest = train_test_split(index, test_size=0.4, stratify=digits.target, random_state=0)
    validation, test = train_test_split(
        rest, test_size=0.5, stratify=digits.target[rest], random_state=0
    )
    tmp = root.with_name(root.name + ".partial")
    for split, rows in (("train", train), ("validation", validation), ("test", test)):
        for i in rows:
            folder = tmp / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{i:04d}.png")
    os.replace(tmp, root)
    return root


def run_demo(
    data: str | os.PathLike | None = None,
    *,
    backbone: str = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    heads: tuple[str, ...] = HEADS,
    method: str = "umap",
    verbose: bool = True,
    log: Callable[[str], Any] = print,
    **extractor_params: Any,
) -> dict[str, Any]:
    """Extract, learn, compare and report; return the figures it printed as a dict.

    The report (``<cache>/demo-report.html`` and ``.png``) maps every compared
    representation with ``method`` ("umap", "pca" or "tsne").
    """
    from featx.backbones import RawPixels
    from featx.cache import resolve_cache_dir
    from featx.config import BackboneConfig
    from featx.evaluation import compare_embedded, embed_splits
    from featx.reporting import report
    from featx.splits import resolve_splits

    cache_root = resolve_cache_dir(cache_dir) or Path("cache")
    if data is None:
        data = write_digits(cache_root / "demo-digits")
        data_name = "scikit-learn digits (1,797 images, 10 classes, 60/20/20 split)"
        input_size = input_size or DIGITS_SIZE
    else:
        data_name = os.fspath(data)
    splits = resolve_splits(data)
    run = {"batch_size": extractor_params.pop("batch_size", 32), "cache_dir": cache_dir,
           "verbose": verbose}  # fmt: skip
    network = {"backbone": backbone, "input_size": input_size, **extractor_params}
    pretrained = BackboneConfig.of({**network, "weights": weights})

    weights_text = "random init" if weights is None else _weights_text(weights)
    log(f"featx demo: {backbone} ({weights_text}) on {data_name}")
    result: dict[str, Any] = {"data": data_name, "backbone": backbone, "weights": weights_text}
    represented: dict[str, Any] = {}  # label -> every split embedded once
    try:
        cold = embed_splits(splits, pretrained, **run)
    except WeightsUnavailableError as exc:
        log(f"  {exc}")
        log(
            "  Showing the baselines only (raw pixels, random weights). For pretrained "
            "features run: featx demo --weights PATH"
        )
        result["pretrained"] = None
        result["weights_error"] = str(exc)
    else:
        warm = embed_splits(splits, pretrained, **run)  # the same images: all from the cache
        first, again = cold.combined(), warm.combined()
        log(
            f"  extract: {len(first)} images -> {first.dim}-d in {first.seconds:.2f} s "
            f"({first.cache_misses} computed, {first.cache_hits} from cache)"
        )
        log(
            f"  again:   {len(again)} images in {again.seconds:.2f} s "
            f"({again.cache_misses} computed, {again.cache_hits} from cache)"
        )
        result["pretrained"] = weights is not None
        result["extract"] = {
            "cold": _numbers(first),
            "warm": _numbers(again),
            "n_images": len(first),
            "dim": first.dim,
        }
        represented[f"{backbone} ({weights_text})"] = warm
    if weights is not None or not represented:
        random = BackboneConfig.of({**network, "weights": None})
        represented[f"{backbone} (random weights)"] = embed_splits(splits, random, **run)
    raw = BackboneConfig.of(RawPixels(16))
    represented["raw pixels 16x16"] = embed_splits(splits, raw, **run)

    # Learn and see on the embeddings just made: nothing below extracts again.
    compared = compare_embedded(
        represented, heads=heads, grids={h: DEMO_GRIDS[h] for h in heads if h in DEMO_GRIDS}
    )
    table = compared.table
    columns = [
        c
        for c in (
            "backbone",
            "head",
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "ms_per_image",
            "dim",
            "fit_seconds",
        )
        if c in table.columns
    ]
    log("")
    log(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = table.loc[table["accuracy"].idxmax()]
    result["rows"] = table[columns].to_dict(orient="records")
    result["best"] = {
        "backbone": str(best["backbone"]),
        "head": str(best["head"]),
        "accuracy": float(best["accuracy"]),
    }
    result["summary"] = (
        f"best: {best['backbone']} + {best['head']}, test accuracy {best['accuracy']:.3f} "
        f"({len(table)} configurations compared)"
    )

    # See: each representation's map and separation, with the comparison beneath.
    pages = report(
        embeddings=represented,
        comparison=compared,  # with its predictions: the page's confusion matrix and errors
        method=method,
        out=cache_root / "demo-report.html",
        png=cache_root / "demo-report.png",
        title=f"featx demo: {data_name}",
        cache_dir=cache_dir,
    )
    result["report"] = {"html": str(pages["out"]), "png": str(pages["png"]),
                        "panels": [{"label": p["label"], **{k: p["metrics"][k] for k in (
                            "knn_accuracy", "silhouette", "trustworthiness")}}
                                   for p in pages["panels"]]}  # fmt: skip
    log("")
    for panel in result["report"]["panels"]:
        log(
            f"  {panel['label']:<36} k-NN {panel['knn_accuracy']:.3f}  "
            f"silhouette {panel['silhouette']:.3f}"
        )
    log(f"report: {pages['out']} (figure: {pages['png']})")
    result["summary"] += f"; report: {pages['out']}"
    return result


def _weights_text(weights: str | os.PathLike) -> str:
    """``imagenet``, or a weights file's name (a whole path would widen every table)."""
    return Path(weights).name if str(weights) != "imagenet" else "imagenet"


def _numbers(embeddings) -> dict[str, Any]:
    summary = embeddings.summary()
    return {k: summary[k] for k in ("seconds", "images_per_second", "cache_misses", "cache_hits")}
