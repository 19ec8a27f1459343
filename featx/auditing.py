"""What is wrong with the data: label issues, duplicates, leaks between splits, outliers.

:func:`audit` embeds every split once (from the cache where it can), then

- **label issues**: out-of-sample probabilities from the learning core (nested CV for one
  folder; for fixed splits the chosen head cross-fitted on train + validation, and the
  final head on test), ranked by confident learning (``cleanlab``): a row is an issue
  when cleanlab's ``find_label_issues`` (``filter_by="prune_by_noise_rate"``, its
  default) calls it one; its ``score`` is ``1 - p(given label)`` (cleanlab's
  self-confidence), higher is more suspicious. Several ``heads`` average their
  probabilities first (a consensus);
- **duplicates**: files with the same bytes (``"exact"``), and files whose perceptual
  hashes (:mod:`featx.hashes`) are within ``near_threshold`` bits (``"near"``), joined
  into groups; a group with members in more than one split is a **leak**;
- **leak-free score**: the accuracy again with every duplicate group on one side of every
  fold (nested CV: grouped folds), or, on fixed splits, over the test rows that duplicate
  no training or validation row;
- **outliers**: rows far from all others: the mean cosine distance to their
  ``k`` nearest neighbours (:mod:`featx.knn`), flagged above the far-out fence
  ``Q3 + 3 IQR`` of those scores.

Examples
--------
>>> import numpy as np
>>> from featx.auditing import outlier_scores
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(size=(50, 4)) + 10, [[10, -10, 10, -10]]])
>>> scores, flagged = outlier_scores(X, k=5)
>>> int(np.argmax(scores)), int(flagged[0])
(50, 50)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.config import BackboneConfig
from featx.embeddings import Embeddings
from featx.evaluation import Embedded, embed_splits
from featx.results import Result, jsonable
from featx.splits import resolve_splits

__all__ = [
    "EXAMPLE_ISSUES",
    "EXAMPLE_NEIGHBOURS",
    "NEAR_THRESHOLD",
    "OUTLIER_K",
    "AuditResult",
    "audit",
    "audit_embedded",
    "class_neighbours",
    "duplicate_groups",
    "label_issues",
    "outlier_scores",
]

#: Hash bits within which two images are near-duplicates (of 64; see featx.hashes).
NEAR_THRESHOLD = 4
#: Neighbours of the outlier score.
OUTLIER_K = 10
#: Label issues (most suspicious first) given their nearest neighbours of the given and
#: of the suggested class, for the page; every issue is in ``label_issues`` regardless.
EXAMPLE_ISSUES = 50
EXAMPLE_NEIGHBOURS = 4
_SPLIT_ORDER = ("train", "validation", "test", "all")


@dataclass
class AuditResult(Result):
    """What :func:`audit` found. ``summary()`` is the ``featx audit --json`` object.

    ``examples`` (not in the summary) holds, for the first ``EXAMPLE_ISSUES`` label issues,
    their nearest training images of the given and of the suggested class: what the page
    (:func:`featx.audit_page.write_audit_html`) shows beside each issue.
    """

    label_issues: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    accuracy: dict[str, Any]
    settings: dict[str, Any]
    classes: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        leaks = [g for g in self.duplicates if g["cross_split"]]
        return jsonable(
            {
                "label_issues": self.label_issues,
                "duplicates": self.duplicates,
                "outliers": self.outliers,
                "accuracy": self.accuracy,
                "counts": {
                    "images": len(self.ranking),
                    "label_issues": len(self.label_issues),
                    "duplicate_groups": len(self.duplicates),
                    "exact_groups": sum(g["kind"] == "exact" for g in self.duplicates),
                    "near_groups": sum(g["kind"] == "near" for g in self.duplicates),
                    "leaks": len(leaks),
                    "outliers": len(self.outliers),
                    "unreadable": len(self.failed),
                },
                "classes": self.classes,
                "settings": self.settings,
            }
        )

    def to_frame(self) -> Any:
        """Every row's label check, most suspicious first (``issue`` marks the flagged)."""
        import pandas as pd

        return pd.DataFrame(self.ranking)


# -- the parts, each a function of arrays ----------------------------------------------------


def label_issues(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, score, flagged)``: rows most suspicious first, each row's score
    ``1 - p(given)``, and cleanlab's verdict per row."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(y)
    proba = np.asarray(proba, np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(y, proba, method="self_confidence")
    flagged = find_label_issues(y, proba, filter_by="prune_by_noise_rate")
    score = 1.0 - quality
    order = np.argsort(-score, kind="stable")
    return order, score, np.asarray(flagged, bool)


def duplicate_groups(
    keys: Sequence[str | None], bits: np.ndarray | None, threshold: int = NEAR_THRESHOLD
) -> list[tuple[list[int], str, float]]:
    """Groups of rows with equal ``keys`` (exact) or hashes within ``threshold`` bits
    (near): ``(rows, kind, similarity)``, similarity ``1 - bits/64`` of the closest pair
    joining the group (1.0 for exact groups)."""
    from featx.hashes import HASH_BITS, near_pairs

    n = len(keys)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in first_of:
            union(first_of[key], i)
        else:
            first_of[key] = i
    exact_members: dict[int, list[int]] = {}
    for i in range(n):
        exact_members.setdefault(find(i), []).append(i)
    closest: dict[int, int] = {}
    if bits is not None and n > 1:
        ok = np.flatnonzero([k is not None for k in keys])
        a, b, d = near_pairs(bits[ok], threshold)
        for i, j, dist in zip(ok[a], ok[b], d, strict=True):
            ri, rj = find(int(i)), find(int(j))
            if ri == rj:
                continue
            best = min(closest.get(ri, 255), closest.get(rj, 255), int(dist))
            union(ri, rj)
            closest[find(ri)] = best
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for root, rows in groups.items():
        if len(rows) < 2:
            continue
        exact = len(exact_members.get(root, [])) == len(rows)
        if exact:
            out.append((rows, "exact", 1.0))
        else:
            out.append((rows, "near", 1.0 - closest.get(root, 0) / HASH_BITS))
    out.sort(key=lambda g: (g[1] != "exact", -g[2], g[0][0]))
    return out


def outlier_scores(
    X: Any, k: int = OUTLIER_K, *, index: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean cosine distance to its ``k`` nearest other rows, and the rows above
    the far-out fence ``Q3 + 3 * IQR`` (most unusual first)."""
    from featx.knn import NeighbourIndex

    index = index or NeighbourIndex(X, cache_dir=None)
    _, sims = index.neighbours_of_rows(k)
    scores = 1.0 - sims.mean(axis=1)
    q1, q3 = np.percentile(scores, [25, 75])
    fence = q3 + 3.0 * (q3 - q1)
    flagged = np.flatnonzero(scores > fence)
    return scores, flagged[np.argsort(-scores[flagged], kind="stable")]


def class_neighbours(
    unit: np.ndarray,
    y: np.ndarray,
    candidates: np.ndarray,
    queries: Sequence[int],
    wanted: Sequence[int],
    k: int = EXAMPLE_NEIGHBOURS,
) -> list[list[tuple[int, float]]]:
    """For each row ``queries[i]``, its ``k`` most similar rows among ``candidates`` of
    class ``wanted[i]`` (never itself): ``[(row, cosine), ...]``, closest first.

    ``unit`` holds unit-length rows; one product per class asked for."""
    queries = np.asarray(queries, np.int64)
    wanted = np.asarray(wanted, np.int64)
    out: list[list[tuple[int, float]]] = [[] for _ in queries]
    pool = np.asarray(candidates, np.int64)
    for c in np.unique(wanted):
        rows = pool[np.asarray(y)[pool] == c]
        asking = np.flatnonzero(wanted == c)
        if len(rows) == 0 or len(asking) == 0:
            continue
        S = np.asarray(unit[rows]) @ np.asarray(unit[queries[asking]]).T  # (rows, asking)
        S[rows[:, None] == queries[asking][None, :]] = -np.inf  # not its own neighbour
        top = min(int(k), len(rows))
        for j, q in enumerate(asking):
            best = np.argpartition(-S[:, j], top - 1)[:top]
            best = best[np.argsort(-S[best, j], kind="stable")]
            out[q] = [(int(rows[b]), float(S[b, j])) for b in best if np.isfinite(S[b, j])]
    return out


# -- the audit -------------------------------------------------------------------------------


def audit(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    backbone: str | Any = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | list[Any] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    resize: str | None = None,
    precision: str = "float32",
    heads: Sequence[str | Any] = ("logreg",),
    cv: int = 5,
    search: bool = True,
    seed: int = 0,
    near_threshold: int = NEAR_THRESHOLD,
    outlier_k: int = OUTLIER_K,
    leak_free: bool = True,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    verbose: bool = False,
) -> AuditResult:
    """Audit a labelled image set: label issues, duplicates and leaks, outliers.

    Parameters
    ----------
    source, train, validation, test
        As for :func:`featx.evaluate`: a class-per-folder directory (nested CV), a root
        with ``train/``, ``validation/``, ``test/``, a manifest, labelled
        :class:`~featx.Embeddings`, or explicit splits.
    backbone, weights, input_size, pooling, layer, resize, precision, batch_size
        The representation (:class:`~featx.config.BackboneConfig`); unused for Embeddings.
    heads : sequence of str or estimators, default ("logreg",)
        The heads whose out-of-sample probabilities are averaged for the label check.
    cv, seed
        Folds (outer folds of nested CV; cross-fitting folds on fixed splits), and their seed.
    search : bool, default True
        Choose each head's parameters from its grid by inner cross-validation. ``False``
        fits each at its default parameters (several times faster; for large sets).
    near_threshold : int, default NEAR_THRESHOLD (4)
        Hash bits (of 64) within which two images are near-duplicates.
    outlier_k : int, default OUTLIER_K (10)
        Neighbours of the outlier score.
    leak_free : bool, default True
        Also score with every duplicate group kept on one side of every fold (nested CV
        runs the protocol a second time when there are duplicates).
    cache_dir : path, "auto" or None
        The embedding cache; the perceptual hashes are kept beside it.

    Returns
    -------
    AuditResult
    """
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
    splits = resolve_splits(source, train, validation, test)
    embedded = embed_splits(
        splits, config, batch_size=batch_size, cache_dir=cache_dir, verbose=verbose
    )
    return audit_embedded(
        embedded,
        heads=heads,
        cv=cv,
        search=search,
        seed=seed,
        near_threshold=near_threshold,
        outlier_k=outlier_k,
        leak_free=leak_free,
        cache_dir=cache_dir,
    )


def audit_embedded(
    embedded: Embedded,
    *,
    heads: Sequence[str | Any] = ("logreg",),
    cv: int = 5,
    search: bool = True,
    seed: int = 0,
    near_threshold: int = NEAR_THRESHOLD,
    outlier_k: int = OUTLIER_K,
    leak_free: bool = True,
    cache_dir: str | os.PathLike | None = "auto",
) -> AuditResult:
    """:func:`audit` on embeddings already made (one representation of every split)."""
    from featx.hashes import image_hashes
    from featx.knn import NeighbourIndex
    from featx.learning import learn

    if isinstance(heads, str) or not isinstance(heads, Sequence):
        heads = [heads]
    if not heads:
        raise ValueError("heads= is empty. Pass at least one head, e.g. heads=['logreg'].")
    int_threshold = int(near_threshold)
    if not 0 <= int_threshold < 64:
        raise ValueError(f"near_threshold must be 0-63 bits; got {near_threshold!r}.")
    embeddings = embedded.embeddings
    names = [s for s in _SPLIT_ORDER if s in embeddings]
    for split in names:
        e = embeddings[split]
        if not e.labelled:
            raise ValueError(
                f"The {split} embeddings have no labels: a label audit needs a class per "
                "image. Pass a class-per-folder directory, a manifest with a label column, "
                "or Embeddings with y."
            )
    data = Embedded(embedded.splits, embeddings).data()
    classes = data.classes
    if len(classes) < 2:
        raise ValueError(
            f"The data has one class ({classes[0]!r}); a label audit needs at least two. "
            "Add the other class folders, or audit duplicates with featx.hashes."
        )
    # Every row once, in split order.
    split_of = np.concatenate([[s] * len(embeddings[s]) for s in names])
    y = np.concatenate([data.y[s] for s in names])
    paths = _paths(embeddings, names)
    shown = [p if p is not None else f"row[{i}]" for i, p in enumerate(paths)]
    X = (
        np.concatenate([np.asarray(embeddings[s].X) for s in names])
        if len(names) > 1
        else (embeddings[names[0]].X)
    )

    # Label issues: out-of-sample probabilities, averaged over the heads.
    grid = None if search else {}
    results = [learn(data, head, grid=grid, cv=cv, seed=seed, oof=True) for head in heads]
    proba = np.mean([np.concatenate([r.proba[s] for s in names]) for r in results], axis=0)
    order, score, flagged = label_issues(y, proba)
    suggested = proba.argmax(axis=1)
    ranking = [
        {
            "path": shown[i],
            "split": str(split_of[i]),
            "given": classes[int(y[i])],
            "suggested": classes[int(suggested[i])],
            "score": float(score[i]),
            "issue": bool(flagged[i]),
        }
        for i in order
    ]
    issues = [{k: r[k] for k in ("path", "given", "suggested", "score", "split")}
              for r in ranking if r["issue"]]  # fmt: skip

    # Duplicates: content keys and perceptual hashes of the files.
    failed: list[tuple[str, str]] = []
    if all(p is not None for p in paths):
        hashed = image_hashes(paths, cache_dir=cache_dir)
        keys, bits, failed = hashed.keys, hashed.bits, hashed.failed
    else:  # arrays without files: identical vectors stand in for identical content
        keys = [_row_key(row) for row in np.asarray(X)]
        bits = None
    groups = duplicate_groups(keys, bits, int_threshold)
    duplicates = []
    for rows, kind, similarity in groups:
        group_splits = [str(split_of[r]) for r in rows]
        duplicates.append(
            {
                "paths": [shown[r] for r in rows],
                "kind": kind,
                "similarity": round(float(similarity), 6),
                "cross_split": len(set(group_splits)) > 1,
                "splits": group_splits,
                "labels": [classes[int(y[r])] for r in rows],
            }
        )

    # Scores: naive, and with every duplicate group on one side.
    accuracy = _accuracies(results[0], data, groups, split_of, y, cv, seed, heads[0], grid,
                           leak_free)  # fmt: skip

    # Outliers.
    first = next(iter(embeddings.values()))
    index = NeighbourIndex(X, fingerprint=first.fingerprint, cache_dir=cache_dir, seed=seed)
    scores, flagged_out = outlier_scores(X, outlier_k, index=index)
    outliers = [
        {"path": shown[i], "score": float(scores[i]),
         "label": classes[int(y[i])], "split": str(split_of[i])}
        for i in flagged_out
    ]  # fmt: skip

    # The first issues with their nearest training images of the given and suggested class.
    shown_issues = [int(i) for i in order if flagged[i]][:EXAMPLE_ISSUES]
    training = np.flatnonzero(split_of != "test")
    examples = []
    if shown_issues:
        given_nb = class_neighbours(index.unit, y, training, shown_issues, y[shown_issues])
        suggested_nb = class_neighbours(
            index.unit, y, training, shown_issues, suggested[shown_issues]
        )
        for i, g, s in zip(shown_issues, given_nb, suggested_nb, strict=True):
            examples.append(
                {
                    "path": shown[i],
                    "given": [{"path": shown[r], "similarity": sim} for r, sim in g],
                    "suggested": [{"path": shown[r], "similarity": sim} for r, sim in s],
                }
            )

    settings = {
        "protocol": data.protocol,
        "heads": [r.head for r in results],
        "cv": cv,
        "search": bool(search),
        "seed": seed,
        "label_issue_rule": "cleanlab find_label_issues(filter_by='prune_by_noise_rate'); "
        "score = 1 - p(given label), out-of-sample",
        "near_threshold_bits": int_threshold,
        "hash": "phash of the whole image and centre crops of 90% and 80%",
        "outlier_k": outlier_k,
        "outlier_rule": "mean cosine distance to k nearest > Q3 + 3 IQR",
        "representation": embedded.representation,
        "fingerprint": first.fingerprint,
        "neighbour_index": "exact" if index.exact else "pynndescent",
    }
    return AuditResult(
        issues, ranking, duplicates, outliers, accuracy, settings, classes, failed, examples
    )


def _accuracies(first, data, groups, split_of, y, cv, seed, head, grid, leak_free):
    from featx.learning import learn

    naive = float(first.summary()["accuracy"])
    out: dict[str, Any] = {"naive": naive, "leak_free": None, "protocol": data.protocol}
    if not leak_free:
        return out
    group_of = np.arange(len(y))
    for rows, _, _ in groups:
        group_of[rows] = rows[0]
    if data.protocol == "nested-cv":
        if not groups:
            out.update(leak_free=naive, note="no duplicates: the folds had no leaks")
            return out
        grouped = learn(data, head, grid=grid, cv=cv, seed=seed, groups=group_of)
        out.update(leak_free=float(grouped.summary()["accuracy"]))
    else:
        test = np.flatnonzero(split_of == "test")
        seen = {group_of[i] for i in np.flatnonzero(split_of != "test")}
        leaked = np.array([group_of[i] in seen for i in test], bool)
        predicted = first.proba["test"].argmax(axis=1)
        correct = predicted == data.y["test"]
        clean = correct[~leaked]
        out.update(
            leak_free=float(clean.mean()) if len(clean) else None,
            leaked_test_rows=int(leaked.sum()),
            leaked_accuracy=float(correct[leaked].mean()) if leaked.any() else None,
        )
    if out["leak_free"] is not None:
        out["leaks_worth"] = naive - out["leak_free"]
    return out


def _paths(embeddings: Mapping[str, Embeddings], names: list[str]) -> list[str | None]:
    paths: list[str | None] = []
    for split in names:
        e = embeddings[split]
        paths.extend(e.paths if e.paths is not None else [None] * len(e))
    return paths


def _row_key(row: np.ndarray) -> str:
    from featx._pipeline import content_key

    return content_key(np.ascontiguousarray(row))
