"""Heads fitted fast on a whole grid: work that every setting shares is done once.

:mod:`featx.learning` scores every setting of a grid on the same training rows (a
validation split, or each inner fold). Fitting each setting as its own pipeline repeats
what the settings share; here it is done once per training set:

- **the preprocessing** (``l2``, ``scale``, ``pca``: every pipeline step before the
  classifier) is fitted once for all the settings that do not change it;
- **logistic regression** follows its regularisation path: C from small to large, each
  fit warm-started from the last solution (on clothing10's 3,068 training embeddings
  lbfgs took 165 iterations for the default grid instead of 249, and the warm solutions
  were no further from the exact optimum than the cold ones); the final refit starts from
  the mean of the chosen C's solutions on the inner folds (95 iterations down to 32 for
  clothing10's refit on train + validation, the same test accuracy);
- **the RBF SVM** gets its squared distances computed once, by BLAS, for the training and
  evaluation rows together; every setting (each C, and each calibration fold of
  ``CalibratedClassifierCV``) fits libsvm on a slice of ``exp(-gamma * D)`` instead of
  recomputing kernel rows in libsvm's own loops (15x faster per fit on 774 1,280-d
  embeddings, with the same support vectors and predictions).

What comes out is what the plain pipeline gives: the same scaler, the same calibration
folds, ``gamma="scale"`` from the same rows, and a fitted model made of scikit-learn's own
classes (the SVM's support vectors are put back into an ``SVC(kernel="rbf")``, and its
probabilities are checked against the fast path's before it is returned). Classifiers
without a path of their own (the MLP, k-NN, user estimators) are fitted setting by
setting, their preprocessing still shared.

:func:`score_grid` scores a grid; :func:`fit_predict` fits one setting and predicts,
optionally starting from the solutions the grid found (:func:`mean_start`).
This module imports scikit-learn: :mod:`featx.learning` imports it when it fits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

__all__ = ["GridScores", "fit_predict", "mean_start", "score_grid", "split_grid"]

# The SVM rebuilt from the fast fit must give the fast path's probabilities to this, or
# the plain pipeline is fitted instead (a later scikit-learn could change SVC's internals).
_REBUILT_TOLERANCE = 1e-6
_WARM_SOLVERS = ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga")


@dataclass(frozen=True)
class GridScores:
    """What :func:`score_grid` found: each setting's accuracy, and where a later fit at
    that setting may start (logistic regression: its ``(coef_, intercept_)``; else None)."""

    accuracies: list[float]
    starts: list[Any]


def score_grid(
    estimator: Any,
    settings: Sequence[dict[str, Any]],
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_eval: np.ndarray,
    y_eval: np.ndarray,
) -> GridScores:
    """The accuracy on ``(X_eval, y_eval)`` of ``estimator`` at each setting, fitted on
    ``(X_fit, y_fit)``: what ``clone(estimator).set_params(**s).fit(...).predict(...)``
    scores for each ``s``, with the work the settings share done once.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.heads import make_head
    >>> from featx.solvers import score_grid
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40)
    >>> X = rng.normal(size=(80, 5)) + 1.2 * y[:, None]
    >>> settings = [{"clf__estimator__C": 0.1}, {"clf__estimator__C": 10.0}]
    >>> fit, held = (X[::2], y[::2]), (X[1::2], y[1::2])
    >>> fast = score_grid(make_head("svm"), settings, *fit, *held).accuracies
    >>> plain = [
    ...     np.mean(make_head("svm").set_params(**s).fit(*fit).predict(held[0]) == held[1])
    ...     for s in settings
    ... ]
    >>> fast == plain, fast
    (True, [0.875, 0.85])
    """
    accuracies = [0.0] * len(settings)
    starts: list[Any] = [None] * len(settings)
    for pre, clf, indices, clf_settings in _groups(estimator, settings):
        Z_fit, Z_eval = _preprocess(pre, X_fit, y_fit, X_eval)
        predictions, group_starts = _PATHS.get(_kind(clf), _each)(
            clf, clf_settings, Z_fit, y_fit, Z_eval
        )
        for i, predicted, start in zip(indices, predictions, group_starts, strict=True):
            accuracies[i] = float(np.mean(np.asarray(predicted) == np.asarray(y_eval)))
            starts[i] = start
    return GridScores(accuracies, starts)


def split_grid(estimator: Any, settings: Sequence[dict[str, Any]], parts: int) -> list[list[int]]:
    """The settings' indices in groups that :func:`score_grid` can score apart (on other
    threads), each group in the order its path runs.

    Settings are independent fits, cut into at most ``parts`` contiguous groups; but a
    regularisation path is cut the same way whatever ``parts`` is, so that its solutions
    (and so the scores) never depend on the number of threads: into two runs of C, the
    smaller first, when it has four settings or more. The start of a path (small C, from
    zero) costs the most iterations (clothing10, at scikit-learn's default tol: 60 and 54
    for C = 0.001 and 0.01, then 37, 8 and 6 warm), so [0.001, 0.01] | [0.1, 1, 10] gives
    two threads about equal work.

    Examples
    --------
    >>> from featx.heads import make_head
    >>> from featx.solvers import split_grid
    >>> grid = [{"clf__C": c} for c in (10.0, 0.001, 1.0, 0.01, 0.1)]
    >>> split_grid(make_head("logreg"), grid, 1)
    [[1, 3], [4, 2, 0]]
    >>> split_grid(make_head("svm"), [{"clf__estimator__C": c} for c in (1, 10, 100)], 2)
    [[0], [1, 2]]
    """
    order = list(range(len(settings)))
    _, clf = _split(estimator)
    if _kind(clf) == "logreg":
        key = estimator.steps[-1][0] + "__C" if isinstance(estimator, Pipeline) else "C"
        paths: dict[str, list[int]] = {}
        for i in order:
            rest = repr(sorted((k, v) for k, v in settings[i].items() if k != key))
            paths.setdefault(rest, []).append(i)
        groups = []
        for members in paths.values():
            members.sort(key=lambda i: settings[i].get(key, clf.C))
            groups.extend(_contiguous(members, 2 if len(members) >= 4 else 1))
        return groups
    return _contiguous(order, parts)


def _contiguous(order: list[int], parts: int) -> list[list[int]]:
    """``order`` cut into ``parts`` runs (at most one per item), the shorter runs first."""
    parts = max(1, min(int(parts), len(order)))
    small, extra = divmod(len(order), parts)
    groups, start = [], 0
    for part in range(parts):
        size = small + (1 if part >= parts - extra else 0)
        groups.append(order[start : start + size])
        start += size
    return groups


def mean_start(starts: Sequence[Any]) -> Any:
    """One start from several (the chosen setting's, one per inner fold): their mean, or
    None when any is missing or they disagree in shape (a class absent from a fold)."""
    if not starts or any(start is None for start in starts):
        return None
    if len({tuple(part.shape for part in start) for start in starts}) > 1:
        return None
    return tuple(np.mean([start[i] for start in starts], axis=0) for i in range(len(starts[0])))


def fit_predict(
    estimator: Any,
    params: dict[str, Any],
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_eval: np.ndarray,
    start: Any = None,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """``estimator`` at ``params`` fitted on ``(X_fit, y_fit)``, with its
    ``predict_proba`` and ``predict`` on ``X_eval``.

    The model is the plain scikit-learn estimator, fitted. An RBF SVM is fitted on one
    precomputed kernel and rebuilt as ``SVC(kernel="rbf")``; its probabilities on
    ``X_eval`` come from the kernel (the rebuilt model gives the same on a sample).
    Logistic regression starts from ``start`` (a :class:`GridScores` start) when given:
    the optimum is unique, so only the number of iterations changes.
    """
    model = clone(estimator).set_params(**params)
    pre, clf = _split(model)
    kind = _kind(clf)
    if kind == "svm":
        Z_fit, Z_eval = _preprocess(pre, X_fit, y_fit, X_eval)
        kernels = _Kernels(Z_fit, Z_eval)
        fast = _on_kernels(clf, kernels).fit(kernels.fit_rows, y_fit)
        proba = fast.predict_proba(kernels.eval_rows)
        rebuilt = _rebuilt(fast, clf, kernels)
        sample = slice(0, min(len(Z_eval), 32))
        if np.allclose(
            rebuilt.predict_proba(Z_eval[sample]), proba[sample], rtol=0, atol=_REBUILT_TOLERANCE
        ):
            if pre is not None:
                model.steps = [*pre.steps, (model.steps[-1][0], rebuilt)]
            else:
                model = rebuilt
            return model, proba, rebuilt.classes_[np.argmax(proba, axis=1)]
        model = clone(estimator).set_params(**params)
    elif kind == "logreg" and start is not None and not clf.warm_start:
        Z_fit, Z_eval = _preprocess(pre, X_fit, y_fit, X_eval)
        clf.set_params(warm_start=True)
        clf.coef_, clf.intercept_ = (np.array(part) for part in start)
        clf.fit(Z_fit, y_fit)
        clf.set_params(warm_start=False)  # the model's parameters are the head's own
        if pre is not None:
            model.steps = [*pre.steps, (model.steps[-1][0], clf)]
        else:
            model = clf
        return model, model.predict_proba(X_eval), model.predict(X_eval)
    model.fit(X_fit, y_fit)
    return model, model.predict_proba(X_eval), model.predict(X_eval)


# -- the shared preprocessing -----------------------------------------------------------------


def _split(estimator: Any) -> tuple[Pipeline | None, Any]:
    """``(the steps before the classifier as a pipeline, or None; the classifier)``."""
    if not isinstance(estimator, Pipeline):
        return None, estimator
    if len(estimator.steps) == 1:
        return None, estimator.steps[-1][1]
    return Pipeline(estimator.steps[:-1]), estimator.steps[-1][1]


def _groups(
    estimator: Any, settings: Sequence[dict[str, Any]]
) -> Iterator[tuple[Pipeline | None, Any, list[int], list[dict[str, Any]]]]:
    """The settings in groups that share their preprocessing: the group's unfitted
    preprocessing and classifier, its settings' indices, and each setting's classifier
    parameters (by the classifier's own names)."""
    prefix = estimator.steps[-1][0] + "__" if isinstance(estimator, Pipeline) else ""

    def shared(setting: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in setting.items() if prefix and not k.startswith(prefix)}

    groups: dict[str, list[int]] = {}
    for i, setting in enumerate(settings):
        groups.setdefault(repr(sorted(shared(setting).items())), []).append(i)
    for indices in groups.values():
        pre, clf = _split(clone(estimator).set_params(**shared(settings[indices[0]])))
        own = [
            {k[len(prefix) :]: v for k, v in settings[i].items() if k.startswith(prefix)}
            for i in indices
        ]
        yield pre, clf, indices, own


def _preprocess(
    pre: Pipeline | None, X_fit: np.ndarray, y_fit: np.ndarray, X_eval: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if pre is None:
        return np.asarray(X_fit), np.asarray(X_eval)
    return pre.fit_transform(X_fit, y_fit), pre.transform(X_eval)


def _kind(clf: Any) -> str | None:
    """The fast path ``clf`` takes, if any."""
    if type(clf) is LogisticRegression and clf.solver in _WARM_SOLVERS:
        return "logreg"
    if isinstance(clf, CalibratedClassifierCV):
        # The ensemble of cross-fitted SVMs is what featx's svm head is; other calibrations
        # refit on all the rows, which the kernel path does not model.
        if clf.method != "sigmoid" or clf.ensemble not in (True, "auto"):
            return None
        clf = clf.estimator
    # scikit-learn 1.9 deprecates `probability` (its default is the string "deprecated").
    if type(clf) is SVC and clf.kernel == "rbf" and clf.probability is not True:
        return "svm"
    return None


# -- the paths: every setting's predictions on Z_eval, and where a refit may start -----------

_Path = tuple[list[np.ndarray], list[Any]]


def _each(clf: Any, settings: list[dict[str, Any]], Z_fit, y_fit, Z_eval) -> _Path:
    """Any classifier, fitted setting by setting."""
    predictions = [clone(clf).set_params(**s).fit(Z_fit, y_fit).predict(Z_eval) for s in settings]
    return predictions, [None] * len(settings)


def _logreg_path(clf, settings: list[dict[str, Any]], Z_fit, y_fit, Z_eval) -> _Path:
    """Logistic regression along C, small to large, each fit starting from the last
    solution; settings that differ in more than C follow paths of their own."""
    out: list[np.ndarray] = [np.empty(0)] * len(settings)
    starts: list[Any] = [None] * len(settings)
    paths: dict[str, list[int]] = {}
    for i, s in enumerate(settings):
        paths.setdefault(repr(sorted((k, v) for k, v in s.items() if k != "C")), []).append(i)
    for members in paths.values():
        warm = clone(clf).set_params(warm_start=True)
        for i in sorted(members, key=lambda i: settings[i].get("C", clf.C)):
            warm.set_params(**settings[i]).fit(Z_fit, y_fit)
            out[i] = warm.predict(Z_eval)
            starts[i] = (warm.coef_.copy(), warm.intercept_.copy())
    return out, starts


def _svm_path(clf, settings: list[dict[str, Any]], Z_fit, y_fit, Z_eval) -> _Path:
    """The RBF SVM, every setting on one distance matrix."""
    kernels = _Kernels(Z_fit, Z_eval)
    predictions = [
        _on_kernels(clone(clf).set_params(**s), kernels)
        .fit(kernels.fit_rows, y_fit)
        .predict(kernels.eval_rows)
        for s in settings
    ]
    return predictions, [None] * len(settings)


_PATHS = {"logreg": _logreg_path, "svm": _svm_path}


# -- the RBF SVM on a precomputed kernel ------------------------------------------------------


class _Kernels:
    """Squared Euclidean distances from the rows to fit and to predict to the rows to fit,
    float64 as libsvm computes them, shared by every SVM of a grid. Rows are addressed by
    index: a one-column integer array stands for the rows themselves."""

    def __init__(self, Z_fit: np.ndarray, Z_eval: np.ndarray) -> None:
        fit = np.asarray(Z_fit, dtype=np.float64)
        rows = np.concatenate([fit, np.asarray(Z_eval, dtype=np.float64)])
        squares = np.einsum("ij,ij->i", rows, rows)
        distances = rows @ fit.T
        distances *= -2.0
        distances += squares[:, None]
        distances += squares[None, : len(fit)]
        np.maximum(distances, 0.0, out=distances)
        self.Z = fit
        self.distances = distances
        self.fit_rows = np.arange(len(fit))[:, None]
        self.eval_rows = np.arange(len(fit), len(rows))[:, None]
        self._computed: dict[tuple[bytes, bytes, float], np.ndarray] = {}

    def kernel(self, rows: np.ndarray, columns: np.ndarray, gamma: float) -> np.ndarray:
        """``exp(-gamma * D[rows, columns])``, computed once per grid: the settings of a
        grid differ in C, and the calibration folds (so each SVM's rows and gamma) do not."""
        key = (rows.tobytes(), columns.tobytes(), gamma)
        if key not in self._computed:
            block = self.distances[np.ix_(rows, columns)]
            block *= -gamma
            self._computed[key] = np.exp(block, out=block)
        return self._computed[key]

    def __deepcopy__(self, memo: dict) -> _Kernels:
        # scikit-learn's clone deep-copies parameters; every SVM of a grid shares these.
        return self


class _KernelSVC(ClassifierMixin, BaseEstimator):
    """``svc`` (an RBF ``SVC``) fitted on rows given as indices into ``kernels``."""

    def __init__(self, kernels: _Kernels | None = None, svc: SVC | None = None) -> None:
        self.kernels = kernels
        self.svc = svc

    def fit(self, rows: np.ndarray, y: np.ndarray) -> _KernelSVC:
        self.rows_ = np.asarray(rows).reshape(-1)
        self.gamma_ = _gamma(self.svc.gamma, self.kernels.Z[self.rows_])
        self.fitted_ = clone(self.svc).set_params(kernel="precomputed")
        self.fitted_.fit(self._kernel(self.rows_), y)
        self.classes_ = self.fitted_.classes_
        return self

    def _kernel(self, rows: np.ndarray) -> np.ndarray:
        return self.kernels.kernel(np.asarray(rows).reshape(-1), self.rows_, self.gamma_)

    def decision_function(self, rows: np.ndarray) -> np.ndarray:
        return self.fitted_.decision_function(self._kernel(rows))

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.fitted_.predict(self._kernel(rows))


def _gamma(gamma: Any, Z: np.ndarray) -> float:
    """``SVC``'s own reading of ``gamma`` on the rows it fits."""
    if gamma == "scale":
        variance = Z.var()
        return 1.0 / (Z.shape[1] * variance) if variance != 0 else 1.0
    if gamma == "auto":
        return 1.0 / Z.shape[1]
    return float(gamma)


def _on_kernels(clf: Any, kernels: _Kernels) -> Any:
    """``clf`` (an RBF ``SVC`` or a calibrated one) with its SVC on ``kernels``."""
    if isinstance(clf, CalibratedClassifierCV):
        return clone(clf).set_params(estimator=_KernelSVC(kernels, clf.estimator))
    return _KernelSVC(kernels, clf)


def _rebuilt(fast: Any, clf: Any, kernels: _Kernels) -> Any:
    """The fitted ``clf`` of plain scikit-learn classes, from ``fast`` (its kernel twin)."""
    if isinstance(fast, _KernelSVC):
        return _rbf_svc(fast, clf, kernels)
    rebuilt = clone(clf)
    rebuilt.__dict__.update(
        {k: v for k, v in fast.__dict__.items() if k.endswith("_") and not k.startswith("_")}
    )
    rebuilt.n_features_in_ = kernels.Z.shape[1]
    rebuilt.calibrated_classifiers_ = []
    for member in fast.calibrated_classifiers_:
        member = _shallow(member)
        member.estimator = _rbf_svc(member.estimator, clf.estimator, kernels)
        rebuilt.calibrated_classifiers_.append(member)
    return rebuilt


def _shallow(obj: Any) -> Any:
    twin = object.__new__(type(obj))
    twin.__dict__.update(obj.__dict__)
    return twin


def _rbf_svc(fast: _KernelSVC, svc: SVC, kernels: _Kernels) -> SVC:
    """An ``SVC(kernel="rbf")`` with ``fast``'s solution: its support vectors are the rows
    that ``fast`` selected, ``gamma`` the value it computed."""
    rebuilt = clone(svc)
    fitted = fast.fitted_
    rebuilt.__dict__.update(
        {k: v for k, v in fitted.__dict__.items() if k not in fitted.get_params(deep=False)}
    )
    Z = kernels.Z[fast.rows_]
    rebuilt.support_vectors_ = np.ascontiguousarray(Z[fitted.support_])
    rebuilt.shape_fit_ = Z.shape
    rebuilt.n_features_in_ = Z.shape[1]
    rebuilt._gamma = fast.gamma_
    return rebuilt
