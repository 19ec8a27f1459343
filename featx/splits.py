"""Splits and folds: which rows train, which choose, which score.

Three protocols, chosen by the data given (:func:`resolve_splits`):

``"train-validation-test"``
    a dataset root with ``train/``, ``validation/`` (or ``val/``) and ``test/``
    class-per-folder subfolders, or ``train=``, ``validation=`` and ``test=``;
``"train-test"``
    a root with ``train/`` and ``test/`` only, or ``train=`` and ``test=``;
``"nested-cv"``
    one labelled source (a folder, a DataFrame, an :class:`~featx.Embeddings`).

Each split may be images (anything :mod:`featx.sources` reads) or precomputed
:class:`~featx.Embeddings`; a mapping ``{"train": ..., "test": ...}`` names the splits
too. Labels are matched across splits by class name (:func:`align_splits`), and splits
that share an image file are refused (:func:`check_disjoint`).

Folds. Outer and inner folds are stratified and seeded. Augmented copies of an image
(and, when ``groups`` are given, all images of a group) always fall on one side of a
fold, and only originals are scored (:func:`stack_copies`, :func:`grouped_folds`,
:func:`inner_folds`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.embeddings import Embeddings

__all__ = [
    "INNER_FOLDS",
    "PROTOCOLS",
    "SPLIT_NAMES",
    "Splits",
    "align_splits",
    "check_disjoint",
    "check_outer_folds",
    "grouped_folds",
    "inner_folds",
    "outer_folds",
    "resolve_splits",
    "split_layout",
    "stack_copies",
    "training_splits",
]

PROTOCOLS = ("train-validation-test", "train-test", "nested-cv")
SPLIT_NAMES = ("train", "validation", "test")
INNER_FOLDS = 3
_VALIDATION_NAMES = ("validation", "val")


@dataclass
class Splits:
    """The protocol and its sources: ``"train"``, ``"validation"``, ``"test"`` (fixed
    splits) or ``"all"`` (nested CV), each images or :class:`~featx.Embeddings`."""

    protocol: str
    sources: dict[str, Any]

    @property
    def precomputed(self) -> bool:
        """Every split is already embedded."""
        return all(isinstance(s, Embeddings) for s in self.sources.values())


def resolve_splits(
    source: Any = None, train: Any = None, validation: Any = None, test: Any = None
) -> Splits:
    """The protocol of the data given, and each split's source.

    Examples
    --------
    >>> from featx.splits import resolve_splits
    >>> resolve_splits(train="a/", test="b/").protocol
    'train-test'
    """
    explicit = {"train": train, "validation": validation, "test": test}
    given = [name for name, value in explicit.items() if value is not None]
    if source is not None:
        if given:
            raise ValueError(
                f"Both source= and {', '.join(f'{g}=' for g in given)} were given. Pass a "
                "dataset root (or a single labelled source) as source=, or the splits as "
                "train=, test= and optionally validation=, not both."
            )
        if isinstance(source, Mapping) and not _is_dataframe(source):
            return _from_mapping(source)
        layout = split_layout(source)
        if layout is not None:
            return layout
        return Splits("nested-cv", {"all": source})
    if train is None or test is None:
        missing = " and ".join(f"{name}=" for name in ("train", "test") if explicit[name] is None)
        raise ValueError(
            f"No {missing} given. Pass source= (a dataset root with train/, validation/ and "
            "test/ subfolders, or one class-per-folder folder for cross-validation), or "
            "train= and test= (and optionally validation=)."
        )
    if validation is None:
        return Splits("train-test", {"train": train, "test": test})
    return Splits("train-validation-test", {"train": train, "validation": validation, "test": test})


def _from_mapping(source: Mapping[str, Any]) -> Splits:
    names = [str(k) for k in source]
    unknown = [n for n in names if n not in (*SPLIT_NAMES, "val")]
    if unknown or "train" not in names or "test" not in names:
        raise ValueError(
            f"The splits {names} are not understood. Expected a mapping with 'train' and "
            "'test' (and optionally 'validation'), e.g. {'train': emb_train, 'test': emb_test}."
        )
    validation = source.get("validation", source.get("val"))
    return resolve_splits(train=source["train"], validation=validation, test=source["test"])


def split_layout(source: Any) -> Splits | None:
    """The splits of a dataset root (``train/``, ``test/``, optionally ``validation/`` or
    ``val/``), or None if ``source`` is not one."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        return None
    root = Path(source)
    present = {name for name in ("train", "test", *_VALIDATION_NAMES) if (root / name).is_dir()}
    if not present & {"train", "test"}:
        return None
    if not {"train", "test"} <= present:
        have, lack = ("train", "test") if "train" in present else ("test", "train")
        raise ValueError(
            f"{str(root)!r} has a {have}/ subfolder but no {lack}/ one. A split dataset needs "
            f"root/train/<class>/ and root/test/<class>/ (and optionally root/validation/"
            f"<class>/); pass train= and test= to name the splits yourself."
        )
    validation = _validation_folder(root)
    sources = {"train": root / "train", "test": root / "test"}
    if validation is not None:
        sources = {"train": sources["train"], "validation": validation,
                   "test": sources["test"]}  # fmt: skip
        return Splits("train-validation-test", sources)
    return Splits("train-test", sources)


def _validation_folder(root: Path) -> Path | None:
    validation = [name for name in _VALIDATION_NAMES if (root / name).is_dir()]
    if len(validation) == 2:
        raise ValueError(
            f"{str(root)!r} has both validation/ and val/ subfolders; which one is the "
            "validation set is ambiguous. Remove or rename one of them."
        )
    return root / validation[0] if validation else None


def training_splits(source: Any) -> dict[str, Path] | None:
    """The folders a classifier is trained on in a dataset root: ``train/``, and
    ``validation/`` (or ``val/``) where there is one; ``test/`` is left for evaluation.

    None where ``source`` is not a root whose ``train/`` holds class folders (one
    class-per-folder source, in which a class may well be called "train").

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from featx.splits import training_splits
    >>> root = Path(tempfile.mkdtemp())
    >>> for split in ("train", "val", "test"):
    ...     (root / split / "cat").mkdir(parents=True)
    >>> sorted(training_splits(root)), training_splits(root / "train")
    (['train', 'validation'], None)
    """
    if not isinstance(source, (str, os.PathLike)) or not (Path(source) / "train").is_dir():
        return None
    root = Path(source)
    if not any(entry.is_dir() for entry in (root / "train").iterdir()):
        return None  # a class named "train", holding images
    validation = _validation_folder(root)
    found = {"train": root / "train"}
    return found if validation is None else {**found, "validation": validation}


def split_name(split: str) -> str:
    """How messages name a split: ``"source"`` for nested CV's one, else ``"<split> set"``."""
    return "source" if split == "all" else f"{split} set"


# -- labels across splits ------------------------------------------------------------------


def align_splits(embeddings: Mapping[str, Embeddings]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The training classes, and every split's labels as indices into them.

    Raises when a split has no labels, when splits share an image file, or when a later
    split holds a class the training split lacks.
    """
    for split, embedded in embeddings.items():
        if embedded.y is None or embedded.classes is None:
            raise ValueError(
                f"The {split_name(split)} has no labels. Expected class subfolders "
                "(root/<class>/<image>), a DataFrame with a label column, or Embeddings "
                "with y and classes."
            )
    check_disjoint(embeddings)
    reference = embeddings.get("train", embeddings.get("all"))
    if reference is None:
        raise ValueError(f"No 'train' or 'all' split among {list(embeddings)}.")
    classes = list(reference.classes)
    return classes, {split: _align(e, classes, split) for split, e in embeddings.items()}


def _align(embedded: Embeddings, classes: list[str], split: str) -> np.ndarray:
    """Labels of ``embedded`` as indices into the training ``classes``, matched by name."""
    names = [embedded.classes[i] for i in np.unique(embedded.y)]
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise ValueError(
            f"The {split_name(split)} has class(es) {unknown} that the training set lacks "
            f"(training classes: {classes}). A head cannot predict a class it never saw: "
            f"add training images of them, or leave them out of the {split} set."
        )
    position = {name: i for i, name in enumerate(classes)}
    mapping = np.asarray([position.get(name, -1) for name in embedded.classes], dtype=np.int64)
    return mapping[np.asarray(embedded.y)]


def check_disjoint(embeddings: Mapping[str, Embeddings]) -> None:
    """Refuse splits that share image files: the test score would not be honest."""
    seen: dict[str, str] = {}
    for split, embedded in embeddings.items():
        for path in embedded.paths or []:
            real = os.path.realpath(path)
            if seen.setdefault(real, split) != split:
                raise ValueError(
                    f"{path!r} is in both the {seen[real]} and the {split} set. Splits must "
                    "not share images, or the evaluation is not honest; remove the duplicates."
                )


# -- folds ----------------------------------------------------------------------------------


def smallest_class(y: np.ndarray, classes: Sequence[str]) -> tuple[str, int]:
    """The least frequent class present in ``y``, and its count."""
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    smallest = present[np.argmin(counts[present])]
    return classes[smallest], int(counts[smallest])


def check_outer_folds(y: np.ndarray, cv: Any, classes: Sequence[str]) -> int:
    """``cv`` if every class has at least ``cv`` images; else a clear error."""
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv={cv!r} is not a number of folds. Expected an int >= 2.")
    name, count = smallest_class(y, classes)
    if count < cv:
        fix = f"Pass cv={count} or fewer, or add images." if count >= 2 else "Add images of it."
        raise ValueError(
            f"Cross-validation with cv={cv} folds needs at least {cv} images of every class, "
            f"but class {name!r} has {count}. {fix}"
        )
    return int(cv)


def outer_folds(
    y: np.ndarray, cv: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer folds of nested CV: stratified, seeded, grouped when ``groups`` are given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def inner_folds(
    y: np.ndarray,
    rows: np.ndarray,
    n_splits: int,
    seed: int,
    classes: Sequence[str],
    *,
    grouped: bool = False,
    copies: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """The inner folds over the original rows ``rows``: ``(train rows, validation rows)``.

    ``n_splits`` is lowered to the smallest class's count (at least 2 are needed). Plain
    stratified k-fold, or, when ``grouped`` (augmented copies) or ``groups`` are given,
    stratified group k-fold over the rows stacked with ``copies`` copies each (as
    :func:`stack_copies` stacks them), so that no image or group is on both sides.
    Returns the folds (absolute row indices, sorted) and the number of folds.
    """
    y_rows = y[rows]
    name, count = smallest_class(y_rows, classes)
    if count < 2:
        raise ValueError(
            "Choosing hyperparameters by inner cross-validation needs at least 2 training "
            f"images of every class, but class {name!r} has {count}. Add images, pass "
            "validation= to choose on a validation set, or grid={} to skip the search."
        )
    n_splits = min(int(n_splits), count)
    if not grouped and groups is None:
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(rows[t], rows[v]) for t, v in splitter.split(np.zeros(len(rows)), y_rows)], (
            n_splits
        )
    origin = np.tile(rows, 1 + copies)
    ids = origin if groups is None else np.asarray(groups)[origin]
    scored = np.arange(len(origin)) < len(rows)
    folds = grouped_folds(np.tile(y_rows, 1 + copies), ids, n_splits, seed, scored=scored)
    return [(np.unique(origin[t]), np.unique(origin[v])) for t, v in folds], n_splits


def stack_copies(
    X: np.ndarray, y: np.ndarray, copies: Sequence[np.ndarray], rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals ``X[rows]`` followed by each copy's same rows; and the group of each row.

    The group is the original image's row number, so splitting by group keeps every
    image and its copies on one side.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.splits import stack_copies
    >>> X, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 0])
    >>> Xs, ys, groups = stack_copies(X, y, [X + 100], rows=np.array([0, 2]))
    >>> groups.tolist(), ys.tolist(), Xs[:, 0].tolist()
    ([0, 2, 0, 2], [0, 0, 0, 0], [0.0, 4.0, 100.0, 104.0])
    """
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    Xs = np.concatenate([X[rows], *(c[rows] for c in copies)]) if copies else X[rows]
    ys = np.tile(y[rows], 1 + len(copies))
    groups = np.tile(rows, 1 + len(copies))
    return Xs, ys, groups


def grouped_folds(
    y: np.ndarray,
    groups: np.ndarray,
    n_splits: int,
    seed: int,
    *,
    scored: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold over rows: ``(train, validation)`` row indices per fold.

    No group is on both sides of a fold. The validation side keeps only the ``scored``
    rows (default: one row per group, its first: the original image, as
    :func:`stack_copies` orders them), so copies are trained on but never scored.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.splits import grouped_folds
    >>> groups = np.tile(np.arange(6), 2)
    >>> y = np.tile([0, 1, 0, 1, 0, 1], 2)
    >>> folds = grouped_folds(y, groups, n_splits=3, seed=0)
    >>> all(not set(groups[t]) & set(groups[v]) for t, v in folds)
    True
    >>> [len(v) for _, v in folds]
    [2, 2, 2]
    """
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = []
    for train, val in splitter.split(np.zeros(len(y)), y, groups):
        if scored is None:
            _, first = np.unique(groups[val], return_index=True)
            folds.append((train, val[np.sort(first)]))
        else:
            folds.append((train, val[np.asarray(scored)[val]]))
    return folds


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")
