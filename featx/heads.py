"""Classical heads: scikit-learn pipelines that classify embeddings.

Every head is a :class:`~sklearn.pipeline.Pipeline` with named steps, so a search
grid addresses any part of it:

``"l2"``
    :class:`~sklearn.preprocessing.Normalizer`, with ``normalize="l2"`` only;
``"scale"``
    :class:`~sklearn.preprocessing.StandardScaler`, always (pooled CNN features have
    very different scales per channel);
``"pca"``
    :class:`~sklearn.decomposition.PCA`, with ``pca=`` only;
``"clf"``
    the classifier.

Every head has ``predict_proba`` (top-k predictions need it), and its ``predict`` is
the argmax of those probabilities.
"""

from __future__ import annotations

import difflib
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

__all__ = [
    "HEADS",
    "NORMALIZATIONS",
    "OutOfCoreFit",
    "default_grid",
    "fit_out_of_core",
    "make_head",
    "resolve_grid",
]

HEADS = ("logreg", "svm", "linear-svm", "mlp", "sgd")
NORMALIZATIONS = (None, "l2")

# The SVMs get probabilities from Platt scaling over 3 folds, as an ensemble: one SVM per
# fold, each calibrated on the fold it did not see, probabilities averaged. Three folds
# rather than libsvm's five because the RBF SVM is the slowest head; the ensemble needs no
# fourth fit on all the data, and on clothing10 it scored as well as the uncalibrated SVC
# (0.836 vs 0.833 test accuracy at C=10; a single SVM refitted on all the data: 0.817).
_CALIBRATION_FOLDS = 3

_GRIDS: dict[str, dict[str, list[Any]]] = {
    "logreg": {"clf__C": [0.001, 0.01, 0.1, 1.0, 10.0]},
    # Small C underfits an RBF SVM on embeddings (clothing10 validation accuracy: 0.58 at
    # C=0.1, 0.81 at C=10), so the grid starts at 0.1 and reaches larger C instead.
    "svm": {"clf__estimator__C": [0.1, 1.0, 10.0, 100.0]},
    # Standardised embeddings with more dimensions than images per class want a strongly
    # regularised linear SVM (clothing10 validation accuracy: 0.84 at C=1e-3, 0.79 at
    # C=0.1, 0.73 at C=1), and liblinear needs 10-100x longer at C >= 0.1.
    "linear-svm": {"clf__estimator__C": [0.0001, 0.001, 0.01, 0.1]},
    "mlp": {"clf__alpha": [1e-4, 1e-3, 1e-2]},
    "sgd": {"clf__alpha": [1e-5, 1e-4, 1e-3]},
}


def _classifier(kind: str) -> tuple[BaseEstimator, BaseEstimator]:
    """The ``clf`` step of ``kind``, and the estimator inside it that ``**params`` configure."""
    if kind == "logreg":
        # lbfgs on standardised 1000-2000-d features needs more than the default 100
        # iterations to converge at large C.
        clf = LogisticRegression(C=1.0, max_iter=3000)
        return clf, clf
    if kind == "svm":
        # SVC(probability=True) is deprecated in scikit-learn 1.9; calibration is its
        # replacement, and its predict agrees with predict_proba (libsvm's did not always).
        svc = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=0)
        return _calibrated(svc), svc
    if kind == "linear-svm":
        # LinearSVC (liblinear) rather than SVC(kernel="linear") (libsvm): the kernel
        # solver scales with n_samples**2 and converges slowly on thousands of 1280-d
        # embeddings, once per calibration fold. dual=True: at the small C embeddings want
        # it converges several times faster than the primal solver "auto" picks when
        # there are more images than dimensions.
        svc = LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0)
        return _calibrated(svc), svc
    if kind == "sgd":
        # Logistic regression by stochastic gradient descent: what fit_out_of_core trains a
        # chunk at a time, here fitted in memory.
        clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
        return clf, clf
    clf = MLPClassifier(
        hidden_layer_sizes=(256,),
        alpha=1e-4,
        early_stopping=True,
        validation_fraction=0.1,
        max_iter=300,
        random_state=0,
    )
    return clf, clf


def _calibrated(estimator: BaseEstimator) -> CalibratedClassifierCV:
    return CalibratedClassifierCV(estimator, method="sigmoid", cv=_CALIBRATION_FOLDS, ensemble=True)


def make_head(
    kind: str = "logreg",
    *,
    normalize: str | None = None,
    pca: int | float | None = None,
    **params: Any,
) -> Pipeline:
    """A scikit-learn pipeline that classifies embeddings, with defaults chosen for them.

    Parameters
    ----------
    kind : {"logreg", "svm", "linear-svm", "mlp", "sgd"}, default "logreg"
        ``"logreg"``: ``LogisticRegression(C=1.0, max_iter=3000)``.
        ``"svm"``: ``SVC(kernel="rbf", C=1.0)``, calibrated (Platt scaling, an ensemble of
        3 cross-fitted SVMs).
        ``"linear-svm"``: ``LinearSVC(C=1.0)``, calibrated the same way.
        ``"mlp"``: ``MLPClassifier`` with one hidden layer of 256 units, early stopping on
        10% of the training data, at most 300 epochs.
        ``"sgd"``: ``SGDClassifier(loss="log_loss", alpha=1e-4)``, logistic regression by
        stochastic gradient descent; :func:`fit_out_of_core` trains the same head on data
        larger than memory.
    normalize : {None, "l2"}, default None
        ``"l2"`` scales each embedding to unit length before standardising (cosine geometry).
    pca : int or float, optional
        Keep this many principal components (int), or enough to explain this fraction of
        the variance (float in (0, 1)), after standardising.
    **params
        Parameters of the classifier (for the SVMs, of the SVC inside the calibration),
        e.g. ``C=10`` or ``alpha=1e-3``.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``"l2"`` (if normalising), ``"scale"``, ``"pca"`` (if given) and ``"clf"``.
        Unfitted; every seed is fixed, so two fits on the same data agree.

    Raises
    ------
    ValueError
        For an unknown ``kind``, ``normalize``, classifier parameter, or a bad ``pca``.

    Notes
    -----
    The SVMs' calibration needs at least 3 images of every class, and the MLP's early
    stopping holds out 10% of the data, which must include every class (about
    ``10 * n_classes`` images at least).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from featx.heads import make_head
    >>> X, y = load_iris(return_X_y=True)
    >>> head = make_head("logreg", normalize="l2", C=10).fit(X, y)
    >>> list(head.named_steps)
    ['l2', 'scale', 'clf']
    >>> head.predict_proba(X[:2]).shape
    (2, 3)
    """
    kind = _check_kind(kind)
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize={normalize!r} is not supported. Expected one of {NORMALIZATIONS}."
        )
    clf, configured = _classifier(kind)
    if params:
        valid = sorted(configured.get_params(deep=False))
        unknown = [name for name in params if name not in valid]
        if unknown:
            lower = {name.lower(): name for name in valid}
            hints = "".join(
                f" Did you mean {lower[close[0]]!r} for {name!r}?"
                for name in unknown
                if (close := difflib.get_close_matches(name.lower(), list(lower), n=1))
            )
            raise ValueError(
                f"Unknown parameter(s) {', '.join(map(repr, unknown))} for the {kind!r} head "
                f"({type(configured).__name__}). Expected some of: {', '.join(valid)}.{hints}"
            )
        configured.set_params(**params)
    steps: list[tuple[str, Any]] = []
    if normalize == "l2":
        steps.append(("l2", Normalizer(norm="l2")))
    steps.append(("scale", StandardScaler()))
    if pca is not None:
        steps.append(("pca", PCA(n_components=_check_pca(pca), whiten=False, random_state=0)))
    steps.append(("clf", clf))
    return Pipeline(steps)


def default_grid(kind: str) -> dict[str, list[Any]]:
    """The hyperparameters worth searching for ``kind``, keyed as pipeline parameters.

    Regularisation strength only: ``C`` for the linear models and SVMs (wide, because
    standardised embeddings with more dimensions than images often want strong
    regularisation), ``alpha`` for the MLP.

    Examples
    --------
    >>> from featx.heads import default_grid
    >>> default_grid("mlp")
    {'clf__alpha': [0.0001, 0.001, 0.01]}
    >>> sorted(default_grid("svm"))
    ['clf__estimator__C']
    """
    return {name: list(values) for name, values in _GRIDS[_check_kind(kind)].items()}


def resolve_grid(estimator: Any, grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``grid`` with its keys resolved to ``estimator``'s parameters, values as lists.

    A bare name reaches the classifier: ``"C"`` becomes ``"clf__C"`` (or
    ``"clf__estimator__C"`` inside a calibrated SVM), as a full pipeline key stays itself.
    A key the estimator lacks fails here, before any work, naming the closest matches.

    Examples
    --------
    >>> from featx.heads import make_head, resolve_grid
    >>> resolve_grid(make_head("svm"), {"C": [1, 10]})
    {'clf__estimator__C': [1, 10]}
    >>> resolve_grid(make_head("logreg"), {"clf__C": 0.1})
    {'clf__C': [0.1]}
    """
    valid = set(estimator.get_params(deep=True))
    resolved: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = next((k for k in (key, f"clf__{key}", f"clf__estimator__{key}") if k in valid), None)
        if name is None:
            raise ValueError(_unknown_grid_key(key, estimator, valid))
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            values = [values]
        if len(values) == 0:
            raise ValueError(f"The grid gives no values for {key!r}; give at least one.")
        resolved[name] = list(values)
    return resolved


def _unknown_grid_key(key: str, estimator: Any, valid: set[str]) -> str:
    tunable = sorted(name for name in valid if "__" in name) or sorted(valid)
    # Match on the bare parameter name too: "c" finds "clf__C".
    aliases: dict[str, str] = {}
    for name in tunable:
        aliases.setdefault(name.lower(), name)
        aliases.setdefault(name.rsplit("__", 1)[-1].lower(), name)
    close = difflib.get_close_matches(key.lower(), list(aliases), n=3)
    suggestions = list(dict.fromkeys(aliases[c] for c in close))
    hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    return (
        f"The grid names {key!r}, which {type(estimator).__name__} does not have. Expected "
        f"one of: {', '.join(tunable)} (a bare name like 'C' reaches the classifier).{hint}"
    )


def _check_kind(kind: str) -> str:
    if kind in HEADS:
        return kind
    close = difflib.get_close_matches(str(kind).lower(), HEADS, n=2, cutoff=0.4)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown head {kind!r}. Expected one of: {', '.join(HEADS)}.{hint}")


def _check_pca(pca: int | float) -> int | float:
    if isinstance(pca, bool) or not isinstance(pca, numbers.Real):
        raise ValueError(
            f"pca={pca!r} is not understood. Expected a number of components (int >= 1) or "
            "a fraction of variance to keep (float in (0, 1))."
        )
    if isinstance(pca, numbers.Integral):
        if pca < 1:
            raise ValueError(f"pca={pca!r} components: expected at least 1.")
        return int(pca)
    if not 0.0 < pca < 1.0:
        raise ValueError(
            f"pca={pca!r}: a float is the fraction of variance to keep and must lie in (0, 1). "
            "Pass an int for a number of components."
        )
    return float(pca)


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
    >>> from featx.heads import fit_out_of_core
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 200)
    >>> X = rng.normal(size=(600, 16)).astype(np.float32) + 3 * np.eye(16)[y]
    >>> fit = fit_out_of_core(X, y, epochs=3, chunk_rows=100)
    >>> fit.validation_accuracy > 0.9, fit.head.predict_proba(X[:2]).shape
    (True, (2, 3))
    """
    from featx.outofcore import check_labelled, iter_chunks

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
    clf, _ = _classifier("sgd")
    clf.set_params(alpha=alpha, random_state=seed)
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
    from featx.outofcore import iter_chunks

    if len(rows) == 0:
        return None
    correct = sum(
        int((head.predict(block) == y[index]).sum())
        for index, block in iter_chunks(X, chunk_rows, rows=rows)
    )
    return round(correct / len(rows), 4)
