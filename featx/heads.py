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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HEADS",
    "HEAD_KINDS",
    "NORMALIZATIONS",
    "HeadKind",
    "default_grid",
    "grid_key",
    "make_head",
    "params_text",
    "resolve_grid",
]

NORMALIZATIONS = (None, "l2")

# The SVMs get probabilities from Platt scaling over 3 folds, as an ensemble: one SVM per
# fold, each calibrated on the fold it did not see, probabilities averaged. Three folds
# rather than libsvm's five because the RBF SVM is the slowest head; the ensemble needs no
# fourth fit on all the data, and on clothing10 it scored as well as the uncalibrated SVC
# (0.836 vs 0.833 test accuracy at C=10; a single SVM refitted on all the data: 0.817).
_CALIBRATION_FOLDS = 3


@dataclass(frozen=True)
class HeadKind:
    """One row of the head table: everything featx knows about a kind of head.

    Attributes
    ----------
    name : str
        The kind, as ``make_head``, ``--head`` and ``compare(heads=...)`` take it.
    help : str
        One line: what the classifier is and how featx configures it.
    build : callable
        ``build()`` returns ``(clf, configured)``: the pipeline's ``"clf"`` step and the
        estimator inside it that ``make_head(**params)`` configures (they differ for a
        calibrated SVM). It imports scikit-learn itself, so the table does not.
    grid : mapping
        The default search, by bare parameter name, e.g. ``{"C": (0.1, 1.0)}``.
    prefix : str
        Where ``configured`` sits in the pipeline: ``"clf__"`` or ``"clf__estimator__"``.
    """

    name: str
    help: str
    build: Callable[[], tuple[Any, Any]]
    grid: Mapping[str, tuple[Any, ...]]
    prefix: str = "clf__"


def _logreg():
    from sklearn.linear_model import LogisticRegression

    # lbfgs on standardised 1000-2000-d features needs more than the default 100
    # iterations to converge at large C. tol=5e-4 (scikit-learn's default is 1e-4) halves
    # the iterations and keeps every C chosen and every accuracy within 0.003 on intel6,
    # clothing10 and stack10k (benchmarks/results-heads-2026-12-04.md); 1e-3 flipped one
    # intel6 fold's C between two tied values.
    clf = LogisticRegression(C=1.0, max_iter=3000, tol=5e-4)
    return clf, clf


def _svm():
    from sklearn.svm import SVC

    # SVC(probability=True) is deprecated in scikit-learn 1.9; calibration is its
    # replacement, and its predict agrees with predict_proba (libsvm's did not always).
    svc = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=0)
    return _calibrated(svc), svc


def _linear_svm():
    from sklearn.svm import LinearSVC

    # LinearSVC (liblinear) rather than SVC(kernel="linear") (libsvm): the kernel solver
    # scales with n_samples**2 and converges slowly on thousands of 1280-d embeddings, once
    # per calibration fold. dual=True: at the small C embeddings want it converges several
    # times faster than the primal solver "auto" picks when there are more images than
    # dimensions.
    svc = LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0)
    return _calibrated(svc), svc


def _mlp():
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=(256,),
        alpha=1e-4,
        early_stopping=True,
        validation_fraction=0.1,
        max_iter=300,
        random_state=0,
    )
    return clf, clf


def _sgd():
    from sklearn.linear_model import SGDClassifier

    # Logistic regression by stochastic gradient descent: what featx.outofcore's
    # fit_out_of_core trains a chunk at a time, here fitted in memory.
    clf = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
    return clf, clf


def _knn():
    from featx._neighbours import CappedKNeighborsClassifier

    # Cosine distance, as the separation metrics use: the direction of an embedding
    # carries the class, its length mostly the image's contrast. Distance weighting lets
    # the closest images count most, and keeps predict_proba informative. Capped at the
    # training rows, so that small folds do not fail on the larger grid values.
    clf = CappedKNeighborsClassifier(n_neighbors=10, metric="cosine", weights="distance")
    return clf, clf


def _calibrated(estimator: Any) -> Any:
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(estimator, method="sigmoid", cv=_CALIBRATION_FOLDS, ensemble=True)


# The one list of heads: make_head, default_grid, resolve_grid, the CLI's --head choices
# and --grid prefixes, `featx heads`, and every error message read it. Adding a head is
# adding a row.
HEAD_KINDS: dict[str, HeadKind] = {
    kind.name: kind
    for kind in [
        HeadKind(
            "logreg",
            "LogisticRegression(C=1.0, max_iter=3000, tol=5e-4) on standardised embeddings.",
            _logreg,
            {"C": (0.001, 0.01, 0.1, 1.0, 10.0)},
        ),
        HeadKind(
            "svm",
            "RBF SVC(C=1.0, gamma='scale'), calibrated (Platt scaling, an ensemble of 3 "
            "cross-fitted SVMs).",
            _svm,
            # Small C underfits an RBF SVM on embeddings (clothing10 validation accuracy:
            # 0.58 at C=0.1, 0.81 at C=10), so the grid starts at 0.1 and reaches larger C.
            {"C": (0.1, 1.0, 10.0, 100.0)},
            prefix="clf__estimator__",
        ),
        HeadKind(
            "linear-svm",
            "LinearSVC(C=1.0), calibrated the same way as the SVM.",
            _linear_svm,
            # Standardised embeddings with more dimensions than images per class want a
            # strongly regularised linear SVM (clothing10 validation accuracy: 0.84 at
            # C=1e-3, 0.79 at C=0.1, 0.73 at C=1), and liblinear needs 10-100x longer at
            # C >= 0.1.
            {"C": (0.0001, 0.001, 0.01, 0.1)},
            prefix="clf__estimator__",
        ),
        HeadKind(
            "mlp",
            "MLPClassifier with one hidden layer of 256 units, early stopping on 10% of the "
            "training data, at most 300 epochs.",
            _mlp,
            {"alpha": (1e-4, 1e-3, 1e-2)},
        ),
        HeadKind(
            "sgd",
            "SGDClassifier(loss='log_loss', alpha=1e-4): logistic regression by stochastic "
            "gradient descent, the head featx.outofcore.fit_out_of_core trains on sets "
            "larger than memory.",
            _sgd,
            {"alpha": (1e-5, 1e-4, 1e-3)},
        ),
        HeadKind(
            "knn",
            "KNeighborsClassifier(n_neighbors=10, metric='cosine', weights='distance'): "
            "the nearest training images vote (never more neighbours than there are).",
            _knn,
            {"n_neighbors": (5, 10, 20)},
        ),
    ]
}
HEADS: tuple[str, ...] = tuple(HEAD_KINDS)


def grid_key(kind: str, name: str) -> str:
    """The pipeline parameter that the bare name ``name`` means for ``kind``.

    Examples
    --------
    >>> from featx.heads import grid_key
    >>> grid_key("svm", "C"), grid_key("logreg", "C"), grid_key("mlp", "scale__with_mean")
    ('clf__estimator__C', 'clf__C', 'scale__with_mean')
    """
    return name if "__" in name else _check_kind(kind).prefix + name


def params_text(params: Mapping[str, Any]) -> str:
    """Chosen head parameters as a reader writes them, without the pipeline's prefixes.

    A list is one choice per fold (nested cross-validation): the most frequent value is
    shown, with how many folds chose it.

    Examples
    --------
    >>> from featx.heads import params_text
    >>> params_text({"clf__estimator__C": 10.0}), params_text({})
    ('C=10', '-')
    >>> params_text({"clf__C": [0.01, 0.1, 0.01], "scale__with_mean": [True] * 3})
    'C=0.01 (2/3 folds), with_mean=True'
    """

    def value(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = []
    for key, chosen in params.items():
        name = key.rsplit("__", 1)[-1]
        if isinstance(chosen, list):
            texts = [value(v) for v in chosen]
            common = max(texts, key=texts.count)  # the first of the most frequent
            share = (
                ""
                if texts.count(common) == len(texts)
                else (f" ({texts.count(common)}/{len(texts)} folds)")
            )
            parts.append(f"{name}={common}{share}")
        else:
            parts.append(f"{name}={value(chosen)}")
    return ", ".join(parts) or "-"


def make_head(
    kind: str = "logreg",
    *,
    normalize: str | None = None,
    pca: int | float | None = None,
    **params: Any,
) -> Any:
    """A scikit-learn pipeline that classifies embeddings, with defaults chosen for them.

        Parameters
        ----------
        kind : str, default "logreg"
            A row of :data:`HEAD_KINDS` (``featx heads`` lists them):

    {kinds}
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
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    head = _check_kind(kind)
    kind = head.name
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize={normalize!r} is not supported. Expected one of {NORMALIZATIONS}."
        )
    clf, configured = head.build()
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

    The kind's row of :data:`HEAD_KINDS`: regularisation strength (``C`` for the linear
    models and SVMs, wide, because standardised embeddings with more dimensions than
    images often want strong regularisation; ``alpha`` for the MLP and SGD), or the
    number of neighbours for k-NN.

    Examples
    --------
    >>> from featx.heads import default_grid
    >>> default_grid("mlp")
    {'clf__alpha': [0.0001, 0.001, 0.01]}
    >>> sorted(default_grid("svm"))
    ['clf__estimator__C']
    """
    head = _check_kind(kind)
    return {grid_key(head.name, name): list(values) for name, values in head.grid.items()}


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


def _check_kind(kind: str) -> HeadKind:
    if isinstance(kind, str) and kind in HEAD_KINDS:
        return HEAD_KINDS[kind]
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


def _kinds_text() -> str:
    return "\n".join(f"        ``{k.name!r}``: {k.help}" for k in HEAD_KINDS.values())


make_head.__doc__ = (make_head.__doc__ or "").replace("{kinds}", _kinds_text())
