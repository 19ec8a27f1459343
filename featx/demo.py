"""``featx demo``: the first thing a new user runs, offline.

It embeds a small image set (scikit-learn's bundled handwritten digits by default,
or a class-per-folder directory), runs the extraction a second time to show that
the cache makes it nearly free, and fits a logistic regression on the embeddings
to show they carry the classes. Later stages (heads, projections, reports) grow
from here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from featx.extract import Extractor

__all__ = ["load_digits_images", "run_demo"]

DIGITS_SIZE = 96


def load_digits_images() -> tuple[np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits as uint8 RGB images, with their labels as strings."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=3), [str(t) for t in digits.target]


def run_demo(
    data: str | os.PathLike | None = None,
    *,
    backbone: str = "MobileNetV2",
    weights: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    verbose: bool = True,
    log: Callable[[str], Any] = print,
    **extractor_params: Any,
) -> dict[str, Any]:
    """Extract (cold, then warm from the cache) and score a logistic regression.

    Returns a dict of the figures it printed.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if data is None:
        source, labels = load_digits_images()
        data_name = "scikit-learn digits (1,797 images, 10 classes)"
        input_size = input_size or DIGITS_SIZE
    else:
        source, labels, data_name = os.fspath(data), None, os.fspath(data)

    def make() -> Extractor:
        return Extractor(
            backbone,
            weights=weights,
            input_size=input_size,
            cache_dir=cache_dir,
            verbose=verbose,
            **extractor_params,
        )

    weights_text = "random init (seeded baseline)" if weights is None else str(weights)
    log(f"featx demo: {backbone} ({weights_text}) on {data_name}")
    cold = make().extract(source, labels=labels)
    log(
        f"  extract: {len(cold)} images -> {cold.dim}-d in {cold.seconds:.2f} s "
        f"({cold.cache_misses} computed, {cold.cache_hits} from cache)"
    )
    warm = make().extract(source, labels=labels)
    log(
        f"  again:   {len(warm)} images in {warm.seconds:.2f} s "
        f"({warm.cache_misses} computed, {warm.cache_hits} from cache)"
    )
    if cold.y is None or cold.classes is None or len(cold.classes) < 2:
        raise ValueError(
            f"The demo needs labelled images of at least two classes; {data_name} "
            "has none. Pass --data a class-per-folder directory."
        )

    X_train, X_test, y_train, y_test = train_test_split(
        warm.X, warm.y, test_size=0.25, stratify=warm.y, random_state=0
    )
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = float(head.fit(X_train, y_train).score(X_test, y_test))
    chance = float(np.bincount(y_test).max() / len(y_test))
    log(
        f"  logistic regression on the embeddings: test accuracy {accuracy:.3f} "
        f"(majority class {chance:.3f}; 25% stratified hold-out)"
    )
    if weights is None:
        log(
            "  These are random-weight features, a baseline. For photos use pretrained "
            "weights: --weights imagenet (downloads once) or --weights PATH."
        )
    cache_text = cold.summary()
    result = {
        "data": data_name,
        "backbone": backbone,
        "weights": weights_text,
        "n_images": len(cold),
        "n_classes": len(cold.classes),
        "dim": cold.dim,
        "cold": {
            k: cache_text[k] for k in ("seconds", "images_per_second", "cache_misses", "cache_hits")
        },
        "warm": {
            k: warm.summary()[k]
            for k in ("seconds", "images_per_second", "cache_misses", "cache_hits")
        },
        "failed": cache_text["failed"],
        "test_accuracy": round(accuracy, 4),
        "majority_baseline": round(chance, 4),
    }
    result["summary"] = (
        f"{len(cold)} images, {len(cold.classes)} classes, {cold.dim}-d; "
        f"test accuracy {accuracy:.3f} vs majority {chance:.3f}; "
        f"warm re-run {warm.cache_misses} computed in {warm.seconds:.2f} s"
    )
    return result
