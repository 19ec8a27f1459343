"""The learning core: heads chosen, fitted and scored on embeddings, honestly.

:func:`learn` takes embeddings (never images) and runs one of three protocols
(:mod:`featx.splits`):

``"train-validation-test"``
    every candidate is fitted on train and scored on validation; the best (the first,
    on ties) is refitted on train + validation and scored once on test.
``"train-test"``
    the hyperparameters are chosen by stratified inner cross-validation on train
    (3 folds, or fewer when a class has fewer images); the head is refitted on all of
    train and scored on test.
``"nested-cv"``
    stratified k-fold cross-validation, the hyperparameters chosen afresh inside each
    outer training fold by an inner search. Reports the mean and standard deviation
    over the folds, and metrics pooled over all out-of-fold predictions.

Test rows never reach selection or fitting. Augmented copies of a training image (and
the images of one group, with ``groups=``) stay on one side of every fold, and only
originals are scored. Every fold is seeded, so two calls on the same embeddings agree,
and :func:`featx.compare` scores every representation on the same folds.

Besides the metrics, a result carries **out-of-sample probabilities** for its rows
(:attr:`LearnResult.proba`): under nested CV every row's comes from the fold that held
it out; on fixed splits the test rows' come from the final model, and with
``oof=True`` the train and validation rows' from a cross-fit of the chosen head.

:func:`run_protocol` is the engine underneath: candidates are (representation, head,
parameter grid) triples, so :func:`featx.tune` searches representations with the same
protocols, folds and selection rule.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.embeddings import Embeddings
from featx.results import Result, jsonable
from featx.splits import (
    INNER_FOLDS,
    Splits,
    align_splits,
    check_outer_folds,
    inner_folds,
    outer_folds,
    resolve_splits,
    stack_copies,
)

__all__ = [
    "SUMMARY_METRICS",
    "Candidate",
    "Features",
    "FoldRun",
    "LearnResult",
    "LearningData",
    "ProtocolRun",
    "Selection",
    "classification_metrics",
    "fit_candidate",
    "learn",
    "resolve_head",
    "resolve_jobs",
    "run_protocol",
    "search",
    "select_and_fit",
]

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


# -- the data ---------------------------------------------------------------------------------


@dataclass
class Features:
    """One representation of every split: ``X[split]``, and its augmented copies
    (``copies[i][split]``, rows aligned with ``X[split]``; never for ``"test"``)."""

    X: dict[str, np.ndarray]
    copies: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(next(iter(self.X.values())).shape[1])


@dataclass
class LearningData:
    """Labels per split and one or more representations of the same rows.

    ``features`` maps a representation's key to its :class:`Features`; it may be a lazy
    mapping (:func:`featx.tune` assembles representations on first use).
    """

    protocol: str
    classes: list[str]
    y: dict[str, np.ndarray]
    features: Mapping[Hashable, Features]
    groups: dict[str, np.ndarray] | None = None

    @classmethod
    def from_embeddings(
        cls,
        splits: Splits | Embeddings | Mapping[str, Embeddings],
        *,
        copies: Mapping[str, Sequence[Embeddings]] | None = None,
        groups: Any = None,
        key: Hashable = "X",
    ) -> LearningData:
        """One representation from :class:`~featx.Embeddings` per split (labels aligned by
        class name, shared files refused), with optional augmented copies per split."""
        if not isinstance(splits, Splits):
            splits = resolve_splits(splits)
        if not splits.precomputed:
            raise TypeError(
                "LearningData.from_embeddings takes Embeddings for every split; got "
                f"{ {k: type(v).__name__ for k, v in splits.sources.items()} }. Extract them "
                "first (featx.Extractor.extract), or call featx.evaluate with the images."
            )
        embeddings: dict[str, Embeddings] = dict(splits.sources)
        classes, y = align_splits(embeddings)
        dims = {split: e.dim for split, e in embeddings.items()}
        if len(set(dims.values())) > 1:
            raise ValueError(f"The splits have embeddings of different dimensions: {dims}.")
        prints = {e.fingerprint for e in embeddings.values() if e.fingerprint}
        if len(prints) > 1:
            raise ValueError(
                "The splits were embedded by different networks or image policies "
                f"(fingerprints {sorted(p[:12] for p in prints)}); a head trained on one "
                "representation cannot be scored on another. Extract every split with the "
                "same Extractor."
            )
        n_copies = {split: len(c) for split, c in (copies or {}).items()}
        if len(set(n_copies.values())) > 1:
            raise ValueError(f"Every split needs the same number of copies; got {n_copies}.")
        copy_blocks = [
            {split: np.asarray(copies[split][i].X) for split in copies}
            for i in range(next(iter(n_copies.values()), 0))
        ]
        features = Features({split: e.X for split, e in embeddings.items()}, copy_blocks)
        return cls(splits.protocol, classes, y, {key: features}, _groups(groups, y))

    def rows(self, split: str) -> np.ndarray:
        return np.arange(len(self.y[split]))


def _groups(groups: Any, y: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    if groups is None:
        return None
    if not isinstance(groups, Mapping):
        if "all" not in y:
            raise ValueError(
                "groups= as one array applies to one source (nested CV); for splits pass a "
                "dict of split name -> one group per image, e.g. {'train': g_train, ...}."
            )
        groups = {"all": groups}
    out = {}
    for split, values in groups.items():
        values = np.asarray(values)
        if split not in y or len(values) != len(y[split]):
            raise ValueError(
                f"groups[{split!r}] has {len(values)} entries; expected one per image of the "
                f"{split} split ({len(y.get(split, ()))})."
            )
        out[split] = values
    splits = list(out)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = np.intersect1d(out[a], out[b])
            if len(shared):
                raise ValueError(
                    f"Group {shared[0]!r} has images in both the {a} and the {b} split; a "
                    "group must stay on one side, or the evaluation is not honest."
                )
    return out


@dataclass(frozen=True)
class Candidate:
    """One configuration to choose among: a representation, a head and its settings."""

    name: str
    features: Hashable
    estimator: Any
    grid: tuple[dict[str, Any], ...]
    copies: int = 0


# -- fitting and scoring ----------------------------------------------------------------------


class _Fitter:
    """Fits candidates on rows of the data (copies stacked in), and keeps their fit time.

    Work comes in independent tasks (one inner fold's or one validation split's whole
    grid, one refit), which :meth:`map` runs on ``n_jobs`` threads: scikit-learn's
    solvers spend their time in BLAS, libsvm and liblinear, which release the GIL, and
    threads share the embeddings instead of copying them to other processes.
    """

    def __init__(self, data: LearningData, n_jobs: int = 1) -> None:
        self.data = data
        self.n_jobs = n_jobs
        self.seconds: dict[int, float] = {}
        self._lock = threading.Lock()

    def map(self, function: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        """``function(task)`` for every task, in order, on up to ``n_jobs`` threads."""
        if self.n_jobs == 1 or len(tasks) < 2:
            return [function(task) for task in tasks]
        from joblib import Parallel, delayed

        jobs = min(self.n_jobs, len(tasks))
        return Parallel(n_jobs=jobs, backend="threading")(delayed(function)(t) for t in tasks)

    def arrays(self, cand: Candidate, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The training matrix and labels of ``rows`` (split -> indices), copies stacked in."""
        features = self.data.features[cand.features]
        Xs, ys = [], []
        for split, index in rows.items():
            copies = [copy[split] for copy in features.copies[: cand.copies]]
            X, y, _ = stack_copies(features.X[split], self.data.y[split], copies, index)
            Xs.append(X)
            ys.append(y)
        return (np.concatenate(Xs) if len(Xs) > 1 else Xs[0]), np.concatenate(ys)

    def fit(self, c: int, cand: Candidate, params: dict, rows: dict[str, np.ndarray], names=False):
        from sklearn.base import clone

        X, y = self.arrays(cand, rows)
        labels = np.asarray(self.data.classes, dtype=object)[y] if names else y
        started = time.perf_counter()
        model = clone(cand.estimator).set_params(**params)
        model.fit(X, labels)
        self.took(c, time.perf_counter() - started)
        return model

    def fit_predict(
        self,
        c: int,
        cand: Candidate,
        params: dict,
        rows: dict[str, np.ndarray],
        held: dict[str, np.ndarray],
        start: Any = None,
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """``cand`` at ``params`` fitted on ``rows`` (from ``start``, a solution the search
        found); its probabilities (one column per class) and predictions on ``held``
        (split -> rows, in that order)."""
        from featx.solvers import fit_predict

        X, y, X_held = self.data_for(cand, rows, held)
        started = time.perf_counter()
        model, proba, predicted = fit_predict(cand.estimator, params, X, y, X_held, start)
        self.took(c, time.perf_counter() - started)
        out = np.zeros((len(X_held), len(self.data.classes)), dtype=np.float32)
        if len(X_held):
            out[:, np.asarray(model.classes_, dtype=np.int64)] = proba
        return model, out, np.asarray(predicted)

    def data_for(
        self, cand: Candidate, rows: dict[str, np.ndarray], held: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What one fit reads: the training matrix and labels of ``rows`` (copies stacked
        in), and the rows ``held`` out to predict (split -> rows, in that order). Every
        fit that predicts reads its input here."""
        X, y = self.arrays(cand, rows)
        features = self.data.features[cand.features]
        X_held = np.concatenate([features.X[split][index] for split, index in held.items()])
        return X, y, X_held

    def grid(self, task: _Task) -> tuple[_Task, Any, float]:
        """The task's settings fitted on its rows and scored on its held-out rows:
        ``(task, featx.solvers.GridScores, seconds)``."""
        from featx.solvers import score_grid

        cand = task.cand
        X, y, X_held = self.data_for(cand, task.fit_rows, {task.split: task.held})
        started = time.perf_counter()
        settings = [cand.grid[i] for i in task.settings]
        scores = score_grid(
            cand.estimator, settings, X, y, X_held, self.data.y[task.split][task.held]
        )
        return task, scores, time.perf_counter() - started

    def took(self, c: int, seconds: float) -> None:
        """Count ``seconds`` of fitting to candidate ``c`` (from any thread)."""
        with self._lock:
            self.seconds[c] = self.seconds.get(c, 0.0) + seconds

    def plan(
        self,
        candidates: Sequence[Candidate],
        split: str,
        rows: np.ndarray,
        *,
        validation: tuple[str, np.ndarray] | None,
        inner_cv: int,
        seed: int,
        grouped: bool,
        search_single: bool,
    ) -> tuple[list[tuple], str]:
        """The tasks that score every candidate's every setting (on ``validation``, or by
        inner CV on ``rows`` of ``split``), and how they score; no tasks when a lone
        setting needs no search."""
        settings = sum(len(c.grid) for c in candidates)
        if settings == 1 and not search_single:
            return [], "none"
        if validation is not None:
            folds, how = [({split: rows}, *validation)], "validation accuracy"
        else:
            groups = None if self.data.groups is None else self.data.groups.get(split)
            inner, n_folds = inner_folds(
                self.data.y[split],
                rows,
                inner_cv,
                seed,
                self.data.classes,
                grouped=grouped,
                copies=max(c.copies for c in candidates),
                groups=groups,
            )
            folds, how = [({split: t}, split, v) for t, v in inner], f"{n_folds}-fold accuracy"
        # Fewer tasks than threads (one validation split): grids are scored in parts.
        parts = -(-self.n_jobs // (len(candidates) * len(folds)))
        tasks = []
        for c, cand in enumerate(candidates):
            for part in _parts(cand, parts):
                for f, (fit_rows, held_split, held) in enumerate(folds):
                    tasks.append(_Task(c, cand, fit_rows, held_split, held, f, part))
        return tasks, how

    def scores(
        self,
        candidates: Sequence[Candidate],
        done: Sequence[tuple[_Task, Any, float]],
        log: Callable[[str], Any] | None,
    ) -> list[list[float | None]]:
        """Each candidate's settings scored: the mean over its folds."""
        if not done:
            return [[None]]
        per: dict[int, dict[int, np.ndarray]] = {}
        for task, grid_scores, seconds in done:
            folds = per.setdefault(task.c, {})
            fold = folds.setdefault(task.fold, np.full(len(task.cand.grid), np.nan))
            fold[list(task.settings)] = grid_scores.accuracies
            self.took(task.c, seconds)
        scores: list[list[float | None]] = []
        for c, cand in enumerate(candidates):
            row: list[float | None] = [float(v) for v in np.mean(list(per[c].values()), axis=0)]
            scores.append(row)
            if log is not None:
                best = _best(row)
                log(f"  {cand.name}: {row[best]:.4f} {cand.grid[best]}")
        return scores

    def select(
        self,
        candidates: Sequence[Candidate],
        split: str,
        rows: np.ndarray,
        *,
        log: Callable[[str], Any] | None = None,
        **options: Any,
    ) -> tuple[list[list[float | None]], str]:
        """Every candidate's every setting scored (:meth:`plan`'s ``options``), now.
        Returns the scores and how they were obtained."""
        tasks, how = self.plan(candidates, split, rows, **options)
        return self.scores(candidates, self.map(self.grid, tasks), log), how


@dataclass(frozen=True)
class _Task:
    """Settings ``settings`` (indices into ``cand.grid``) of candidate ``c`` fitted on
    ``fit_rows`` and scored on rows ``held`` of ``split``: inner fold ``fold``."""

    c: int
    cand: Candidate
    fit_rows: dict[str, np.ndarray]
    split: str
    held: np.ndarray
    fold: int
    settings: tuple[int, ...]


def _parts(cand: Candidate, parts: int) -> list[tuple[int, ...]]:
    """``cand``'s settings in (about) ``parts`` groups that can be scored apart."""
    from featx.solvers import split_grid

    return [tuple(group) for group in split_grid(cand.estimator, cand.grid, parts)]


def _best(scores: Sequence[float | None]) -> int:
    """The best score's index, the first of equals (``None``: no search, 0)."""
    return int(np.argmax([s if s is not None else 0.0 for s in scores]))


# -- the protocols ----------------------------------------------------------------------------


@dataclass
class FoldRun:
    """One outer fold (or the single fixed split): what was chosen and how it scored."""

    fold: int | None
    fit_rows: dict[str, np.ndarray]
    test_split: str
    test_rows: np.ndarray
    scores: list[list[float | None]]  # per candidate, per setting
    selection: str
    winner: int
    model: Any
    predicted: np.ndarray  # label index of every test row
    proba: np.ndarray  # (test rows, classes)
    test_accuracy: dict[int, float]  # the winner's, and each also-scored candidate's
    fit_seconds: float

    def best(self, c: int) -> tuple[int, float | None]:
        """Candidate ``c``'s best setting and its score."""
        index = _best(self.scores[c])
        return index, self.scores[c][index]


@dataclass
class ProtocolRun:
    """Everything :func:`run_protocol` measured."""

    protocol: str
    candidates: list[Candidate]
    folds: list[FoldRun]
    fit_seconds: dict[int, float]


def run_protocol(
    data: LearningData,
    candidates: Sequence[Candidate],
    *,
    cv: int = 5,
    inner_cv: int = INNER_FOLDS,
    seed: int = 0,
    grouped: bool | None = None,
    search_single: bool = False,
    also_score: Sequence[int] = (),
    log: Callable[[str], Any] | None = None,
    n_jobs: int = 1,
) -> ProtocolRun:
    """Choose among ``candidates`` under ``data.protocol``; refit and score the winner.

    ``grouped`` folds the inner search by group even without copies (default: when
    some candidate trains on copies). ``search_single`` scores a lone setting too
    (otherwise it is fitted without a search). The candidates ``also_score`` are refitted
    at their best setting and scored on every test part as well, beside the winner.
    ``n_jobs`` threads run the independent fits (every outer fold's inner folds at once);
    the result does not depend on it.
    """
    candidates = list(candidates)
    if not candidates or any(not c.grid for c in candidates):
        raise ValueError("run_protocol needs at least one candidate, each with a setting.")
    grouped = any(c.copies for c in candidates) if grouped is None else grouped
    fitter = _Fitter(data, n_jobs)
    options = {
        "inner_cv": inner_cv,
        "seed": seed,
        "grouped": grouped,
        "search_single": search_single,
    }
    # parts: (fold number, rows to fit, test split, test rows, selection tasks, how)
    parts = []
    if data.protocol == "nested-cv":
        y = data.y["all"]
        check_outer_folds(y, cv, data.classes)
        groups = None if data.groups is None else data.groups.get("all")
        for k, (train, test) in enumerate(outer_folds(y, cv, seed, groups)):
            tasks, how = fitter.plan(candidates, "all", train, validation=None, **options)
            parts.append((k, {"all": train}, "all", test, tasks, how))
    else:
        _, train, validation, fit_rows = _training_rows(data)
        tasks, how = fitter.plan(candidates, "train", train, validation=validation, **options)
        parts.append((None, fit_rows, "test", data.rows("test"), tasks, how))
    # Every selection task of every fold at once, then every fold's refit at once.
    done = fitter.map(fitter.grid, [task for part in parts for task in part[4]])
    chosen = []
    for k, fit_rows, test_split, test, tasks, how in parts:
        if log is not None and k is not None:
            log(f"outer fold {k + 1}/{cv}")
        mine, done = done[: len(tasks)], done[len(tasks) :]
        scores = fitter.scores(candidates, mine, log)
        chosen.append((k, fit_rows, test_split, test, scores, how, mine))
    folds = fitter.map(
        lambda part: _finish(fitter, candidates, also_score, *part),
        chosen,
    )
    return ProtocolRun(data.protocol, candidates, folds, fitter.seconds)


def _training_rows(data: LearningData):
    """Where a fixed-split protocol chooses and fits: the training split and its rows, the
    validation rows to choose on (or None: inner CV on the training rows), and every row
    the winner is refitted on (train + validation). A single source ("all") is one
    training split with no validation."""
    split = "all" if "all" in data.y else "train"
    rows = data.rows(split)
    if "validation" not in data.y:
        return split, rows, None, {split: rows}
    validation = ("validation", data.rows("validation"))
    return split, rows, validation, {split: rows, "validation": validation[1]}


@dataclass
class Selection:
    """What :func:`select_and_fit` chose, and the head it refitted."""

    params: dict[str, Any]
    selection: str  # "validation accuracy", "3-fold accuracy", or "none" (one setting)
    scores: list[float | None]  # one per setting of the grid, in grid order
    grid: tuple[dict[str, Any], ...]
    model: Any
    n_fit: int

    @property
    def score(self) -> float | None:
        return self.scores[self.grid.index(self.params)]


def select_and_fit(
    data: LearningData,
    estimator: Any,
    grid: Mapping[str, Sequence[Any]],
    *,
    inner_cv: int = INNER_FOLDS,
    seed: int = 0,
    names: bool = False,
    n_jobs: int | None = None,
) -> Selection:
    """Choose ``estimator``'s parameters from ``grid`` as :func:`learn` chooses them, and
    refit on every training row; no test split is needed (nor used, if there is one).

    Training splits of ``data``: ``"train"`` and optionally ``"validation"`` (choose on
    validation, refit on both), or ``"all"`` (choose by stratified inner
    cross-validation, refit on all). With ``names``, the head learns class names.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.embeddings import Embeddings
    >>> from featx.heads import make_head
    >>> from featx.learning import LearningData, select_and_fit
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> X = rng.normal(size=(40, 8)) + 2 * (y == "dog")[:, None]
    >>> data = LearningData.from_embeddings(Embeddings.from_arrays(X, y))  # one source: "all"
    >>> chosen = select_and_fit(data, make_head("logreg"), {"clf__C": [0.01, 1.0]})
    >>> chosen.selection, chosen.n_fit, chosen.score > 0.9
    ('3-fold accuracy', 40, True)
    """
    from sklearn.model_selection import ParameterGrid
    from threadpoolctl import threadpool_limits

    candidate = Candidate("head", next(iter(data.features)), estimator, tuple(ParameterGrid(grid)))
    split, rows, validation, fit_rows = _training_rows(data)
    fitter = _Fitter(data, resolve_jobs(n_jobs))
    # As learn_data: one BLAS thread per fit, the cores to independent fits.
    with threadpool_limits(limits=1, user_api="blas"):
        scores, how = fitter.select(
            [candidate], split, rows, validation=validation, inner_cv=inner_cv, seed=seed,
            grouped=False, search_single=False, log=None,
        )  # fmt: skip
        params = candidate.grid[_best(scores[0])]
        model = fitter.fit(0, candidate, params, fit_rows, names=names)
    n_fit = sum(len(r) for r in fit_rows.values())
    return Selection(params, how, scores[0], candidate.grid, model, n_fit)


def _finish(fitter, candidates, also, fold, fit_rows, test_split, test, scores, how, searched):
    """Refit the winner on ``fit_rows`` (starting from the solutions its search found at the
    chosen setting, where the head can), predict the test rows; score ``also`` beside it."""
    from featx.solvers import mean_start

    def refit(c: int) -> tuple[Any, np.ndarray, np.ndarray]:
        best = _best(scores[c])
        start = mean_start(
            [
                g.starts[task.settings.index(best)]
                for task, g, _ in searched
                if task.c == c and best in task.settings
            ]
        )
        return fitter.fit_predict(
            c, candidates[c], candidates[c].grid[best], fit_rows, {test_split: test}, start
        )

    winner = int(np.argmax([s if s is not None else 0.0 for s in (r[_best(r)] for r in scores)]))
    started = time.perf_counter()
    model, proba, predicted = refit(winner)
    seconds = sum(task_seconds for _, _, task_seconds in searched)
    fit_seconds = time.perf_counter() - started
    y_test = fitter.data.y[test_split][test]
    accuracy = {winner: float(np.mean(predicted == y_test))}
    for c in also:
        if c not in accuracy:
            accuracy[c] = float(np.mean(refit(c)[2] == y_test))
    return FoldRun(
        fold,
        fit_rows,
        test_split,
        test,
        scores,
        how,
        winner,
        model,
        predicted,
        proba,
        accuracy,
        seconds + fit_seconds,
    )


# -- the learning core ------------------------------------------------------------------------


def resolve_head(head: str | Any) -> tuple[Any, str, dict[str, list[Any]]]:
    """The unfitted estimator of ``head`` (a kind or a classifier), its label, its grid."""
    from sklearn.base import clone

    from featx.heads import HEADS, default_grid, make_head

    if isinstance(head, str):
        return make_head(head), head, default_grid(head)
    if not (hasattr(head, "fit") and hasattr(head, "predict_proba")):
        raise TypeError(
            f"head={head!r} is not understood. Expected a head kind "
            f"({', '.join(map(repr, HEADS))}) or a scikit-learn classifier with predict_proba."
        )
    return clone(head), type(head).__name__, {}


@dataclass
class LearnResult(Result):
    """What :func:`learn` (and :func:`featx.evaluate`) found.

    ``summary()`` is the JSON-ready report (see :func:`featx.evaluate`'s Returns);
    ``to_frame()`` has one row per outer fold (one row on fixed splits).

    Attributes
    ----------
    protocol, classes, head
    run : ProtocolRun
        Every fold's choice, scores and fitted model.
    y : dict
        Labels per split (indices into ``classes``).
    proba : dict
        Out-of-sample class probabilities per split, ``(n, len(classes))``; rows without
        one (train/validation rows unless ``oof=True``) are NaN.
    model : estimator or None
        The final head on fixed splits (refitted on train [+ validation]); None under
        nested CV, where each fold has its own (``run.folds[k].model``).
    """

    protocol: str
    classes: list[str]
    head: str
    grid: dict[str, list[Any]]
    dim: int
    seed: int
    cv: int
    run: ProtocolRun
    y: dict[str, np.ndarray]
    proba: dict[str, np.ndarray]
    model: Any = None
    representation: dict[str, Any] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    ms_per_image: float | None = None

    def summary(self) -> dict[str, Any]:
        common = {
            **self.representation,
            "protocol": self.protocol,
            "head": self.head,
            "classes": self.classes,
            "grid": self.grid,
            "dim": self.dim,
            "extraction": self.extraction,
            "ms_per_image": self.ms_per_image,
            "seed": self.seed,
        }
        if self.protocol == "nested-cv":
            return jsonable({**common, **self._nested()})
        return jsonable({**common, **self._fixed()})

    def _search(self, fold: FoldRun) -> list[dict[str, Any]]:
        cand = self.run.candidates[0]
        return [{"params": p, "score": s} for p, s in zip(cand.grid, fold.scores[0], strict=True)]

    def _fixed(self) -> dict[str, Any]:
        fold = self.run.folds[0]
        y_test = self.y["test"]
        metrics = classification_metrics(y_test, fold.predicted, self.classes)
        return {
            **{name: metrics[name] for name in SUMMARY_METRICS},
            **{f"{name}_std": None for name in SUMMARY_METRICS},
            "per_class": metrics["per_class"],
            "confusion_matrix": metrics["confusion_matrix"],
            "chosen_params": self.run.candidates[0].grid[fold.best(0)[0]],
            "selection": fold.selection,
            "search": self._search(fold),
            "fit_seconds": round(fold.fit_seconds, 4),
            "n_train": len(self.y["train"]),
            "n_validation": len(self.y.get("validation", ())),
            "n_test": len(y_test),
        }

    def _nested(self) -> dict[str, Any]:
        y = self.y["all"]
        predicted = np.empty_like(y)
        folds = []
        grid = self.run.candidates[0].grid
        for fold in self.run.folds:
            predicted[fold.test_rows] = fold.predicted
            metrics = classification_metrics(y[fold.test_rows], fold.predicted, self.classes)
            folds.append(
                {
                    "fold": fold.fold,
                    **{name: metrics[name] for name in SUMMARY_METRICS},
                    "chosen_params": grid[fold.best(0)[0]],
                    "selection": fold.selection,
                    "search": self._search(fold),
                    "fit_seconds": round(fold.fit_seconds, 4),
                    "n_train": len(fold.fit_rows["all"]),
                    "n_test": len(fold.test_rows),
                }
            )
        pooled = classification_metrics(y, predicted, self.classes)
        summary: dict[str, Any] = {}
        for name in SUMMARY_METRICS:
            values = np.asarray([fold[name] for fold in folds])
            summary[name] = float(values.mean())
            summary[f"{name}_std"] = float(values.std())  # ddof=0, as GridSearchCV's
        return {
            **summary,
            "per_class": pooled["per_class"],
            "confusion_matrix": pooled["confusion_matrix"],
            "pooled": {name: pooled[name] for name in SUMMARY_METRICS},
            # Each parameter's choice in every fold, e.g. {"clf__C": [0.01, 0.1, 0.01]}.
            "chosen_params": {
                name: [fold["chosen_params"][name] for fold in folds]
                for name in folds[0]["chosen_params"]
            },
            "selection": folds[0]["selection"],
            "search": [fold["search"] for fold in folds],
            "fit_seconds": round(sum(fold["fit_seconds"] for fold in folds), 4),
            "cv": self.cv,
            "folds": folds,
            "n_train": round(float(np.mean([fold["n_train"] for fold in folds]))),
            "n_validation": 0,
            "n_test": len(y),
        }

    def to_frame(self) -> Any:
        """One row per outer fold (nested CV) or one row (fixed splits)."""
        import pandas as pd

        summary = self.summary()
        if self.protocol == "nested-cv":
            rows = [
                {k: (v if not isinstance(v, (dict, list)) else str(v)) for k, v in f.items()}
                for f in summary["folds"]
            ]
            return pd.DataFrame(rows)
        keep = ("protocol", "head", *SUMMARY_METRICS, "fit_seconds", "n_train", "n_test")
        return pd.DataFrame([{k: summary[k] for k in keep}])

    @property
    def oof(self) -> dict[str, np.ndarray]:
        """Alias of :attr:`proba`: each row's probabilities from a model that never saw it."""
        return self.proba


def learn(
    data: Embeddings | Mapping[str, Embeddings] | Splits | LearningData,
    head: str | Any = "logreg",
    grid: Mapping[str, Any] | None = None,
    *,
    cv: int = 5,
    inner_cv: int = INNER_FOLDS,
    seed: int = 0,
    groups: Any = None,
    oof: bool = False,
    n_jobs: int | None = None,
) -> LearnResult:
    """Fit and score a head on embeddings, with honest model selection.

    Parameters
    ----------
    data : Embeddings, dict of split -> Embeddings, or LearningData
        One labelled :class:`~featx.Embeddings` (nested cross-validation), or
        ``{"train": ..., "test": ...}`` with an optional ``"validation"`` (fixed splits).
    head : str or estimator, default "logreg"
        A :func:`~featx.heads.make_head` kind, or any scikit-learn classifier with
        ``predict_proba`` (cloned, never modified).
    grid : dict, optional
        Hyperparameter candidates, e.g. ``{"C": [0.1, 1]}`` (a bare name reaches the
        classifier). Default: the kind's default grid, or no search for an estimator.
    cv, inner_cv : int
        Outer folds (nested CV) and the most inner folds of the search.
    seed : int
        Seeds every fold.
    groups : array or dict, optional
        A group per image (e.g. a patient or a photo session): no group is ever on both
        sides of a fold (nested CV: one array; splits: ``{"train": ..., ...}``, and
        groups must not cross splits).
    oof : bool, default False
        On fixed splits, also cross-fit the chosen head on train (+ validation) so that
        every row has an out-of-sample probability (``cv`` folds). Nested CV has them
        for free.
    n_jobs : int, optional
        Threads for the independent fits (all the inner folds of every outer fold run
        at once). Default: one per CPU this process may use. The result is the same for
        any value.

    Returns
    -------
    LearnResult

    Examples
    --------
    >>> import numpy as np
    >>> from featx.embeddings import Embeddings
    >>> from featx.learning import learn
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["cat", "dog"], 20)
    >>> X = rng.normal(size=(40, 8)) + 2 * (y == "dog")[:, None]
    >>> result = learn(Embeddings.from_arrays(X, y), "logreg", {"C": [0.1, 1.0]}, cv=4)
    >>> result["protocol"], result["accuracy"] > 0.9, result.proba["all"].shape
    ('nested-cv', True, (40, 2))
    """
    from featx.heads import resolve_grid

    if not isinstance(data, LearningData):
        data = LearningData.from_embeddings(
            data if isinstance(data, Splits) else resolve_splits(data), groups=groups
        )
    elif groups is not None:
        data.groups = _groups(groups, data.y)
    estimator, label, default = resolve_head(head)
    grid = resolve_grid(estimator, default if grid is None else grid)
    return learn_data(
        data, estimator, label, grid, cv=cv, inner_cv=inner_cv, seed=seed, oof=oof, n_jobs=n_jobs
    )


def learn_data(
    data: LearningData,
    estimator: Any,
    label: str,
    grid: dict[str, list[Any]],
    *,
    cv: int,
    inner_cv: int,
    seed: int,
    oof: bool,
    key: Hashable | None = None,
    n_jobs: int | None = None,
) -> LearnResult:
    """:func:`learn` on prepared data and a resolved head (the representation ``key``)."""
    from sklearn.model_selection import ParameterGrid
    from threadpoolctl import threadpool_limits

    key = next(iter(data.features)) if key is None else key
    features = data.features[key]
    candidate = Candidate(
        label, key, estimator, tuple(ParameterGrid(grid)), copies=len(features.copies)
    )
    # One BLAS thread while fitting heads: their matrices are small (thousands of rows), so
    # threads bring little, and on a busy machine OpenBLAS's spinning threads made
    # LogisticRegression and MLPClassifier fits 8-30x slower (15.5 s against 0.6 s). The
    # cores go to independent fits instead (n_jobs threads).
    with threadpool_limits(limits=1, user_api="blas"):
        jobs = resolve_jobs(n_jobs)
        run = run_protocol(data, [candidate], cv=cv, inner_cv=inner_cv, seed=seed, n_jobs=jobs)
        proba = _out_of_sample(data, run, candidate, cv, seed, oof, jobs)
    return LearnResult(
        protocol=data.protocol,
        classes=list(data.classes),
        head=label,
        grid=grid,
        dim=features.dim,
        seed=seed,
        cv=cv,
        run=run,
        y=data.y,
        proba=proba,
        model=None if data.protocol == "nested-cv" else run.folds[0].model,
    )


def _out_of_sample(data, run, candidate, cv, seed, oof, n_jobs) -> dict[str, np.ndarray]:
    n_classes = len(data.classes)
    proba = {s: np.full((len(y), n_classes), np.nan, np.float32) for s, y in data.y.items()}
    for fold in run.folds:
        proba[fold.test_split][fold.test_rows] = fold.proba
    if oof and data.protocol != "nested-cv":
        fitter = _Fitter(data, n_jobs)
        fold = run.folds[0]
        params = candidate.grid[fold.best(0)[0]]
        splits = list(fold.fit_rows)  # train, and validation if any
        y = np.concatenate([data.y[s] for s in splits])
        where = [(s, i) for s in splits for i in range(len(data.y[s]))]
        groups = None
        if data.groups is not None and all(s in data.groups for s in splits):
            groups = np.concatenate([data.groups[s] for s in splits])
        n = check_outer_folds(y, min(cv, _smallest(y)), data.classes) if len(y) else 0

        def rows_of(index: np.ndarray) -> dict[str, np.ndarray]:
            return {
                s: np.asarray([where[i][1] for i in index if where[i][0] == s], np.int64)
                for s in splits
            }

        parts = [(rows_of(train), rows_of(held)) for train, held in outer_folds(y, n, seed, groups)]
        done = fitter.map(lambda part: fitter.fit_predict(0, candidate, params, *part)[1], parts)
        for (_, held), held_proba in zip(parts, done, strict=True):
            start = 0
            for s, out in held.items():
                proba[s][out] = held_proba[start : start + len(out)]
                start += len(out)
    return proba


def resolve_jobs(n_jobs: int | None) -> int:
    """How many threads fit heads: ``None`` or ``-1`` means one per CPU this process may use.

    Examples
    --------
    >>> from featx.learning import resolve_jobs
    >>> resolve_jobs(3), resolve_jobs(None) >= 1
    (3, True)
    """
    if n_jobs is None or n_jobs == -1:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(
            f"n_jobs={n_jobs!r} is not a number of threads. Expected an int >= 1, or None/-1 "
            "for one per CPU."
        )
    return n_jobs


def _smallest(y: np.ndarray) -> int:
    return int(np.bincount(y)[np.unique(y)].min())


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and
    the confusion matrix (rows true, columns predicted, in ``classes`` order)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": those are simply wrong predictions.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def search(
    data: LearningData,
    candidates: Sequence[Candidate],
    split: str,
    rows: np.ndarray,
    *,
    inner_cv: int = INNER_FOLDS,
    seed: int = 0,
    grouped: bool = True,
    log: Callable[[str], Any] | None = None,
) -> tuple[list[list[float]], dict[int, float]]:
    """Every candidate's every setting scored by inner CV on ``rows`` of ``split`` (the
    selection step of :func:`run_protocol` on its own); and each candidate's fit seconds."""
    fitter = _Fitter(data)
    scores, _ = fitter.select(
        candidates,
        split,
        rows,
        validation=None,
        inner_cv=inner_cv,
        seed=seed,
        grouped=grouped,
        search_single=True,
        log=log,
    )
    return scores, fitter.seconds  # type: ignore[return-value]


def fit_candidate(
    data: LearningData,
    candidate: Candidate,
    params: dict[str, Any],
    rows: dict[str, np.ndarray],
    *,
    names: bool = False,
) -> Any:
    """``candidate`` at ``params`` fitted on ``rows`` (split -> row indices), copies
    stacked in; with ``names``, on class names rather than class indices."""
    return _Fitter(data).fit(0, candidate, params, rows, names=names)
