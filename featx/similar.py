"""Similar images: the nearest images of each query, in cosine similarity of embeddings.

:func:`neighbours` embeds the queries and the searched set with one representation (from
the cache where it can) and returns, for each query, the ``k`` most similar images of the
set. Exact search up to 20,000 images; above it an approximate index (:mod:`featx.knn`)
kept beside the cache. A query that is itself a file of the set is not its own neighbour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.config import BackboneConfig
from featx.embeddings import Embeddings
from featx.results import Result, jsonable

__all__ = ["SimilarResult", "neighbours"]


@dataclass
class SimilarResult(Result):
    """``queries``: one ``{"query", "neighbours": [{"path", "label", "similarity"}]}`` each."""

    queries: list[dict[str, Any]]
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return jsonable({"queries": self.queries, "settings": self.settings})

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [{"query": q["query"], "rank": r + 1, **n}
             for q in self.queries for r, n in enumerate(q["neighbours"])]
        )  # fmt: skip


def neighbours(
    query: Any,
    source: Any,
    *,
    k: int = 8,
    backbone: str | Any = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | list[Any] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    resize: str | None = None,
    precision: str = "float32",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    verbose: bool = False,
) -> SimilarResult:
    """The ``k`` images of ``source`` most similar to each image of ``query``.

    Parameters
    ----------
    query : image path, list of paths, or Embeddings
        The images looked up.
    source : folder, manifest, list of paths, or Embeddings
        The images searched (labels are shown where the source has them).
    k : int, default 8
    backbone, weights, input_size, pooling, layer, resize, precision, seed, batch_size
        The representation, as for :class:`~featx.config.BackboneConfig`; unused where
        both sides are Embeddings (which must come from the same extractor).
    """
    from featx.combine import extractor_for
    from featx.knn import NeighbourIndex

    if int(k) < 1:
        raise ValueError(f"k must be at least 1; got {k!r}.")
    if isinstance(query, (str, os.PathLike)):
        query = [os.fspath(query)]
    extractor = None
    if not (isinstance(query, Embeddings) and isinstance(source, Embeddings)):
        config = BackboneConfig(
            backbone,
            weights=weights,
            input_size=input_size,
            pooling=pooling,
            layer=layer,
            resize=resize,
            seed=seed,
            precision=precision,
        )
        extractor = extractor_for(
            config, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose
        )
    searched = source if isinstance(source, Embeddings) else _searched(extractor, source)
    asked = query if isinstance(query, Embeddings) else extractor.extract(query)
    if searched.fingerprint and asked.fingerprint and searched.fingerprint != asked.fingerprint:
        raise ValueError(
            "The queries and the searched set were embedded by different networks or image "
            "policies; their vectors cannot be compared. Embed both with one Extractor."
        )
    if len(searched) == 0:
        raise ValueError("The searched set has no images.")
    index = NeighbourIndex(searched.X, fingerprint=searched.fingerprint, cache_dir=cache_dir)
    found = {}
    if searched.paths is not None:
        found = {os.path.realpath(p): i for i, p in enumerate(searched.paths)}
    query_names = _names(asked)
    exclude = np.array([found.get(os.path.realpath(n), -1) if asked.paths else -1
                        for n in query_names])  # fmt: skip
    rows, sims = index.query(asked.X, k, exclude=exclude)
    out = []
    for name, row_ids, row_sims in zip(query_names, rows, sims, strict=True):
        hits = []
        for r, s in zip(row_ids, row_sims, strict=True):
            label = None
            if searched.labelled:
                label = searched.classes[int(searched.y[r])]
            path = searched.paths[r] if searched.paths is not None else f"row[{r}]"
            hits.append({"path": path, "label": label, "similarity": round(float(s), 6)})
        out.append({"query": name, "neighbours": hits})
    settings = {
        "k": int(k),
        "fingerprint": searched.fingerprint,
        "index": "exact" if index.exact else "pynndescent",
        "searched": len(searched),
        "cache_hits": searched.cache_hits + asked.cache_hits,
        "cache_misses": searched.cache_misses + asked.cache_misses,
    }
    return SimilarResult(out, settings)


def _searched(extractor: Any, source: Any) -> Embeddings:
    """The searched set: a dataset root's splits together (labels by class), else one source."""
    from featx.splits import split_layout

    layout = split_layout(source)
    if layout is None:
        return extractor.extract(source)
    parts = [extractor.extract(s) for s in layout.sources.values()]
    classes = sorted({c for p in parts for c in (p.classes or [])})
    y = np.concatenate([[classes.index(p.classes[int(v)]) for v in p.y] for p in parts])
    X = np.concatenate([np.asarray(p.X) for p in parts])
    combined = Embeddings.from_arrays(X, y.astype(np.int64), classes=classes)
    combined.paths = [path for p in parts for path in (p.paths or [])]
    combined.fingerprint = parts[0].fingerprint
    combined.cache_hits = sum(p.cache_hits for p in parts)
    combined.cache_misses = sum(p.cache_misses for p in parts)
    return combined


def _names(embeddings: Embeddings) -> Sequence[str]:
    if embeddings.paths is not None:
        return list(embeddings.paths)
    return [f"query[{i}]" for i in range(len(embeddings))]
