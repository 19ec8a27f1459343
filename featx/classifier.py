"""Image classifiers end to end: fit from a folder, save, load, predict top-k classes.

A classifier is a scikit-learn ``Pipeline(EmbeddingTransformer, head)`` fitted on image
paths and class names, so it predicts class names directly.

File format (``save_classifier``): one header line ``FEATX-CLASSIFIER 1``, one line of JSON
metadata (featx and scikit-learn versions, classes, backbone settings), then the joblib
pickle of the pipeline. The Keras model is never pickled: the transformer rebuilds it
from its parameters (a registry name and a weights path) when first used. The file holds
no cache folder of the machine that saved it: a transformer's ``cache_dir`` path is saved
as ``"auto"``, so the loading user's default cache is used (``None``, no cache, is kept).

**Model files are pickles: load only files from a source you trust.** Loading a pickle
can run arbitrary code. ``load_classifier`` reads the header and metadata first and
refuses a file that lacks them, before unpickling anything; that guards against loading
the wrong file, not against a malicious one.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fit_classifier", "load_classifier", "predict_top_k", "save_classifier"]

MAGIC = b"FEATX-CLASSIFIER 1\n"


def fit_classifier(
    source: Any,
    *,
    head: str = "logreg",
    head_params: dict[str, Any] | None = None,
    labels: list[Any] | None = None,
    **extractor_params: Any,
):
    """Fit ``Pipeline(EmbeddingTransformer(**extractor_params), make_head(head))``.

    ``source`` is a class-per-folder directory (or any labelled source featx reads, with
    ``labels=`` for unlabelled ones). Labels are class names, so the fitted pipeline
    predicts names. A weights file path is made absolute, so the saved classifier works
    from any working directory.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.classifier import fit_classifier
    >>> rng = np.random.default_rng(0)
    >>> images = np.concatenate([rng.integers(0, 60, (6, 40, 40, 3)),
    ...                          rng.integers(190, 255, (6, 40, 40, 3))]).astype(np.uint8)
    >>> model = fit_classifier(images, labels=["dark"] * 6 + ["light"] * 6,
    ...                        backbone="VGG16", weights=None, input_size=32, cache_dir=None)
    >>> model.predict(images[:1]).tolist()
    ['dark']
    """
    from sklearn.pipeline import make_pipeline

    from featx.heads import make_head
    from featx.sources import resolve_source
    from featx.transformer import EmbeddingTransformer

    images = resolve_source(source, labels=labels)
    if images.y is None or images.classes is None:
        raise ValueError(
            "fit_classifier needs labels: pass a class-per-folder directory, a DataFrame with "
            "a label column, or labels=."
        )
    weights = extractor_params.get("weights")
    if isinstance(weights, (str, os.PathLike)) and weights != "imagenet":
        extractor_params["weights"] = str(Path(weights).resolve())
    names = np.asarray(images.classes, dtype=object)[images.y]
    inputs = images.inputs if images.are_files else np.stack(images.inputs)
    pipeline = make_pipeline(
        EmbeddingTransformer(**extractor_params), make_head(head, **(head_params or {}))
    )
    return pipeline.fit(inputs, names)


def save_classifier(model: Any, path: str | os.PathLike) -> None:
    """Write a fitted classifier to ``path`` (featx header + metadata + joblib pickle)."""
    import joblib
    import sklearn

    from featx import __version__

    transformer = model.steps[0][1] if hasattr(model, "steps") else None
    # No machine path travels in the file: a cache folder of the trainer's becomes "auto"
    # (the loading user's default, $FEATX_CACHE_DIR or ./cache); None (no cache) stays.
    own_cache = getattr(transformer, "cache_dir", None)
    portable = own_cache not in (None, "auto")
    try:
        if portable:
            transformer.cache_dir = "auto"
        metadata = {
            "featx": __version__,
            "sklearn": sklearn.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "classes": [str(c) for c in getattr(model, "classes_", [])],
            "transformer": _jsonable(transformer.get_params()) if transformer is not None else None,
        }
        payload = io.BytesIO()
        joblib.dump(model, payload, compress=3)
    finally:
        if portable:
            transformer.cache_dir = own_cache
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(json.dumps(metadata).encode() + b"\n")
        f.write(payload.getvalue())
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a classifier file, without unpickling it.

    Raises
    ------
    ValueError
        If the file does not start with featx's header.
    """
    with open(path, "rb") as f:
        return _read_header(f, path)


def load_classifier(path: str | os.PathLike):
    """Load a classifier written by :func:`save_classifier`.

    Model files are pickles: load only files from a source you trust. A file without
    featx's header is refused before anything is unpickled.
    """
    import joblib

    with open(path, "rb") as f:
        _read_header(f, path)
        return joblib.load(f)


def predict_top_k(model: Any, images: Any, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, the ``k`` most probable classes as ``(name, probability)``, best first.

    Like Keras' ``decode_predictions``, but for the classifier's own classes.
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    probabilities = model.predict_proba(images)
    classes = [str(c) for c in model.classes_]
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [(classes[j], float(row[j])) for j in top]
        for row, top in zip(probabilities, order, strict=True)
    ]


def _read_header(f, path) -> dict[str, Any]:
    head = f.read(len(MAGIC))
    if head != MAGIC:
        raise ValueError(
            f"{str(path)!r} is not a featx classifier file: it lacks featx's header "
            f"(starts with {head[:16]!r}). featx loads only model files it wrote with "
            "save_classifier; model files are pickles, so load them only from a trusted "
            "source."
        )
    line = f.readline()
    try:
        return json.loads(line)
    except ValueError:
        raise ValueError(
            f"{str(path)!r}: featx's header is there but its metadata is corrupt."
        ) from None


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        for k, v in params.items()
    }
