"""Training a head on embeddings larger than memory, a chunk of rows at a time.

:func:`fit_out_of_core` reads ``X`` only through :func:`featx.embeddings.iter_chunks`, so a
memory-mapped set (``Embeddings.load(path, mmap_mode="r")`` or ``extract(out=FOLDER)``)
of any size trains in the memory of a few chunks. The head it returns is
:func:`featx.heads.make_head`'s ``"sgd"`` head, fitted by ``partial_fit``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from featx.embeddings import check_labelled, iter_chunks
from featx.heads import NORMALIZATIONS, make_head

__all__ = ["OutOfCoreFit", "fit_out_of_core"]


@dataclass
class OutOfCoreFit:
    """What :func:`fit_out_of_core` returns.

    Attributes
    ----------
    head : sklearn.pipeline.Pipeline
        Fitted; steps ``"l2"`` (if normalising), ``"scale"`` and ``"clf"``
        (``SGDClassifier(loss="log_loss")``), so it predicts (and ``predict_proba``) like
        :func:`make_head`'s heads.
    validation_accuracy : float or None
        Accuracy on the held-out rows after the last epoch (None without validation).
    history : list of dict
        Per epoch: ``epoch``, ``validation_accuracy``, ``seconds``.
    n_train, n_validation : int
    seconds : float
    """

    head: Pipeline
    validation_accuracy: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    n_train: int = 0
    n_validation: int = 0
    seconds: float = 0.0


def fit_out_of_core(
    X: Any,
    y: Any,
    *,
    classes: Any = None,
    normalize: str | None = None,
    epochs: int = 5,
    chunk_rows: int = 8192,
    validation: float = 0.1,
    alpha: float = 1e-4,
    seed: int = 0,
) -> OutOfCoreFit:
    """Train a linear head on embeddings too large for memory, a chunk of rows at a time.

    ``X`` is read only in chunks of ``chunk_rows`` rows (a ``np.memmap`` such as
    ``Embeddings.load(path, mmap_mode="r").X`` or ``extract(..., out=...)``'s ``X``), so
    memory holds a few chunks whatever the number of rows:

    1. a seeded stratified ``validation`` fraction of the rows is held out;
    2. one pass of ``StandardScaler.partial_fit`` over the training rows;
    3. ``epochs`` passes of ``SGDClassifier(loss="log_loss").partial_fit``, each over the
       training rows in a new seeded random order (so chunks mix classes even when the
       rows are sorted by class, as folders are), reading each chunk's rows in file order;
    4. the validation accuracy after every epoch is recorded.

    Parameters
    ----------
    X : array-like of shape (n, dim)
        Embeddings; a memory-mapped array is never loaded whole.
    y : array-like of shape (n,)
        Labels (in memory: 8 bytes a row).
    classes : array-like, optional
        Every label there is (default: the distinct values of ``y``); ``y`` may not hold others.
    normalize : {None, "l2"}, default None
        Scale each embedding to unit length first (as :func:`make_head`).
    epochs : int, default 5
    chunk_rows : int, default 8192
    validation : float, default 0.1
        Fraction of rows held out to measure accuracy (0 for none).
    alpha : float, default 1e-4
        ``SGDClassifier``'s regularisation.
    seed : int, default 0

    Returns
    -------
    OutOfCoreFit
        ``.head`` is the fitted pipeline; ``.validation_accuracy`` and ``.history`` say how
        well it did.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.outofcore import fit_out_of_core
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 200)
    >>> X = rng.normal(size=(600, 16)).astype(np.float32) + 3 * np.eye(16)[y]
    >>> fit = fit_out_of_core(X, y, epochs=3, chunk_rows=100)
    >>> fit.validation_accuracy > 0.9, fit.head.predict_proba(X[:2]).shape
    (True, (2, 3))
    """
    start = time.perf_counter()
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize={normalize!r} is not supported. Expected one of {NORMALIZATIONS}."
        )
    X, y = check_labelled(X, y)
    known = np.unique(y) if classes is None else np.asarray(classes)
    unknown = np.setdiff1d(np.unique(y), known)
    if len(unknown):
        raise ValueError(
            f"y holds labels not in classes=: {unknown[:5].tolist()}. Expected only "
            f"{known[:10].tolist()}; pass every label in classes=."
        )
    if len(known) < 2:
        raise ValueError(f"A classifier needs at least 2 classes; got {known.tolist()}.")
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation={validation!r} must be a fraction in [0, 1).")
    if int(epochs) < 1:
        raise ValueError(f"epochs={epochs!r} must be at least 1.")
    rng = np.random.default_rng(seed)
    train, held_out = _holdout(y, validation, seed)
    l2 = Normalizer(norm="l2") if normalize == "l2" else None

    def prepared(block: np.ndarray) -> np.ndarray:
        return block if l2 is None else l2.transform(block)

    scaler = StandardScaler()
    for _, block in iter_chunks(X, chunk_rows, rows=train):
        scaler.partial_fit(prepared(block))
    clf = make_head("sgd", alpha=alpha, random_state=seed).named_steps["clf"]
    steps: list[tuple[str, Any]] = [("l2", l2)] if l2 is not None else []
    head = Pipeline([*steps, ("scale", scaler), ("clf", clf)])
    history = []
    for epoch in range(1, int(epochs) + 1):
        mark = time.perf_counter()
        order = rng.permutation(train)
        for rows, block in iter_chunks(X, chunk_rows, rows=order):
            clf.partial_fit(scaler.transform(prepared(block)), y[rows], classes=known)
        accuracy = _accuracy(head, X, y, held_out, chunk_rows)
        history.append({"epoch": epoch, "validation_accuracy": accuracy,
                        "seconds": round(time.perf_counter() - mark, 3)})  # fmt: skip
    return OutOfCoreFit(
        head=head,
        validation_accuracy=history[-1]["validation_accuracy"],
        history=history,
        n_train=len(train),
        n_validation=len(held_out),
        seconds=time.perf_counter() - start,
    )


def _holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices into (train, held out), each sorted."""
    rows = np.arange(len(y))
    if fraction == 0:
        return rows, rows[:0]
    rng = np.random.default_rng(seed)
    held = [
        members[rng.permutation(len(members))[: round(fraction * len(members))]]
        for members in (np.flatnonzero(y == c) for c in np.unique(y))
    ]
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(rows, held_out), held_out


def _accuracy(head: Pipeline, X: Any, y: np.ndarray, rows: np.ndarray, chunk_rows: int):
    if len(rows) == 0:
        return None
    correct = sum(
        int((head.predict(block) == y[index]).sum())
        for index, block in iter_chunks(X, chunk_rows, rows=rows)
    )
    return round(correct / len(rows), 4)
