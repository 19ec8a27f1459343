"""The fast paths of featx.solvers give what the plain scikit-learn pipelines give."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import ParameterGrid
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from featx import solvers
from featx.embeddings import Embeddings
from featx.heads import default_grid, make_head
from featx.learning import learn, resolve_jobs


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # As featx.learning fits: on a busy machine OpenBLAS's idle threads spin and make these
    # tiny fits 10x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _blobs(n_per_class: int = 30, n_classes: int = 3, dim: int = 12, seed: int = 0):
    """Overlapping classes, so that settings score differently."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.5, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    order = rng.permutation(len(y))
    return X[order], y[order]


def _plain_accuracies(estimator, settings, X_fit, y_fit, X_eval, y_eval) -> list[float]:
    return [
        float(np.mean(clone(estimator).set_params(**s).fit(X_fit, y_fit).predict(X_eval) == y_eval))
        for s in settings
    ]


# (kind, make_head options, classes): every head with 3 classes; the two fast paths also
# binary, where libsvm and the calibration take a one-column decision function.
HEADS = [
    ("svm", {}, 3),
    ("svm", {}, 2),
    ("svm", {"normalize": "l2", "pca": 6}, 3),
    ("logreg", {}, 3),
    ("logreg", {}, 2),
    ("logreg", {"pca": 0.9}, 3),
    ("mlp", {}, 3),
    ("knn", {}, 3),
    ("linear-svm", {}, 3),
]


@pytest.mark.parametrize(("kind", "options", "n_classes"), HEADS, ids=lambda v: str(v))
def test_grid_scores_equal_the_plain_pipelines(kind, options, n_classes):
    X, y = _blobs(n_per_class=120 // n_classes, n_classes=n_classes)
    head = make_head(kind, **options)
    settings = list(ParameterGrid(default_grid(kind)))
    fit, held = slice(0, 80), slice(80, None)
    fast = solvers.score_grid(head, settings, X[fit], y[fit], X[held], y[held]).accuracies
    plain = _plain_accuracies(head, settings, X[fit], y[fit], X[held], y[held])
    if kind in ("svm", "logreg") and not options:
        assert len(set(plain)) > 1  # the settings differ on this data: the test has teeth
    if kind == "logreg":
        # Warm-started lbfgs stops at its tolerance somewhere else on the path than a cold
        # start; on this small set the predictions agree.
        assert np.allclose(fast, plain, atol=1 / len(y[held]) + 1e-9)
    else:
        assert fast == plain


def test_a_grid_over_the_preprocessing_shares_only_what_it_can():
    X, y = _blobs()
    head = make_head("svm", pca=4)
    settings = list(
        ParameterGrid({"pca__n_components": [2, 5], "clf__estimator__C": [0.3, 3.0, 30.0]})
    )
    fast = solvers.score_grid(head, settings, X[:60], y[:60], X[60:], y[60:]).accuracies
    assert fast == _plain_accuracies(head, settings, X[:60], y[:60], X[60:], y[60:])


@pytest.mark.parametrize(
    "estimator",
    [make_head("svm"), make_head("svm", normalize="l2", pca=5), CalibratedClassifierCV(SVC())],
    ids=["svm", "svm-l2-pca", "bare-calibrated-svc"],
)
def test_the_svm_refit_is_the_plain_model(estimator):
    X, y = _blobs(n_per_class=40)
    key = "C" if not hasattr(estimator, "steps") else "clf__estimator__C"
    key = "estimator__C" if isinstance(estimator, CalibratedClassifierCV) else key
    params = {key: 3.0}
    model, proba, predicted = solvers.fit_predict(estimator, params, X[:80], y[:80], X[80:])
    plain = clone(estimator).set_params(**params).fit(X[:80], y[:80])
    assert np.array_equal(predicted, plain.predict(X[80:]))
    # libsvm stops within its tolerance (1e-3 on the dual); a kernel computed by BLAS
    # rather than libsvm's loops moves that stopping point by rounding only.
    assert np.abs(proba - plain.predict_proba(X[80:])).max() < 1e-4
    # The model is scikit-learn's own, fitted, and predicts new images like the plain one.
    fresh = _blobs(n_per_class=10, seed=1)[0]
    assert np.array_equal(model.predict(fresh), plain.predict(fresh))
    assert np.abs(model.predict_proba(fresh) - plain.predict_proba(fresh)).max() < 1e-4
    calibrated = model.steps[-1][1] if hasattr(model, "steps") else model
    for member in calibrated.calibrated_classifiers_:
        assert type(member.estimator) is SVC and member.estimator.kernel == "rbf"
        assert member.estimator.gamma == "scale"


def test_a_refit_model_saves_with_the_plain_models_types():
    import skops.io

    X, y = _blobs()
    model, _, _ = solvers.fit_predict(make_head("svm"), {}, X[:60], y[:60], X[60:])
    plain = make_head("svm").fit(X[:60], y[:60])
    types = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert types == skops.io.get_untrusted_types(data=skops.io.dumps(plain))
    assert not [t for t in types if t.startswith("featx")]


def test_a_rebuilt_svm_that_disagrees_falls_back_to_the_plain_fit(monkeypatch):
    X, y = _blobs()
    monkeypatch.setattr(solvers, "_REBUILT_TOLERANCE", -1.0)  # no rebuilt model passes
    fitted = []
    real_fit = SVC.fit

    def counting_fit(self, *args, **kwargs):
        fitted.append(self.kernel)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(SVC, "fit", counting_fit)
    model, proba, predicted = solvers.fit_predict(make_head("svm"), {}, X[:60], y[:60], X[60:])
    plain = make_head("svm").fit(X[:60], y[:60])
    assert fitted.count("rbf") == 6  # the fallback's 3 calibrated SVMs, and the reference's
    assert np.allclose(proba, plain.predict_proba(X[60:]))
    assert np.array_equal(predicted, plain.predict(X[60:]))
    assert np.array_equal(model.predict(X[60:]), predicted)


def test_logreg_path_solutions_are_the_plain_solutions():
    X, y = _blobs(n_per_class=40)
    head = make_head("logreg")
    settings = list(ParameterGrid(default_grid("logreg")))
    path = solvers.score_grid(head, settings, X[:90], y[:90], X[90:], y[90:]).accuracies
    for setting, score in zip(settings, path, strict=True):
        tight = clone(head).set_params(**setting, clf__tol=1e-10, clf__max_iter=100_000)
        exact = float(np.mean(tight.fit(X[:90], y[:90]).predict(X[90:]) == y[90:]))
        assert score == pytest.approx(exact, abs=1 / 30 + 1e-9)


def test_a_logreg_refit_from_the_searchs_solutions_is_the_plain_refit():
    X, y = _blobs(n_per_class=60)
    head, setting = make_head("logreg"), {"clf__C": 0.1}
    inner = [
        solvers.score_grid(head, [setting], X[rows], y[rows], X[150:], y[150:]).starts[0]
        for rows in (slice(0, 100), slice(50, 150))
    ]
    start = solvers.mean_start(inner)
    model, proba, predicted = solvers.fit_predict(head, setting, X[:150], y[:150], X[150:], start)
    plain = clone(head).set_params(**setting).fit(X[:150], y[:150])
    assert np.array_equal(predicted, plain.predict(X[150:]))
    # Two stopping points of lbfgs, each within the head's tolerance of the optimum (the
    # bound was 1e-3 with scikit-learn's default tol=1e-4; it scales with tol).
    tol = plain.steps[-1][1].tol
    assert np.abs(proba - plain.predict_proba(X[150:])).max() < 10 * tol
    assert model.steps[-1][1].n_iter_[0] < plain.steps[-1][1].n_iter_[0]
    # warm_start is not left switched on: the model's parameters are the head's
    assert model.steps[-1][1].get_params() == plain.steps[-1][1].get_params()
    # Starts of different shapes (a class missing from a fold) give no start at all.
    assert solvers.mean_start([inner[0], (inner[1][0][:2], inner[1][1][:2])]) is None


@pytest.mark.parametrize("protocol", ["nested-cv", "train-validation-test"])
@pytest.mark.parametrize("kind", ["svm", "logreg"])
def test_learn_gives_the_same_result_on_any_number_of_threads(kind, protocol):
    X, y = _blobs(n_per_class=25)
    if protocol == "nested-cv":
        data = Embeddings.from_arrays(X, y)
    else:  # one validation split: the grid itself is scored in parts on the threads
        cuts = {"train": slice(0, 45), "validation": slice(45, 60), "test": slice(60, None)}
        data = {name: Embeddings.from_arrays(X[cut], y[cut]) for name, cut in cuts.items()}
    one = learn(data, kind, cv=3, n_jobs=1)
    three = learn(data, kind, cv=3, n_jobs=3)
    assert one["protocol"] == protocol
    assert one["accuracy"] == three["accuracy"]
    assert one["chosen_params"] == three["chosen_params"]
    assert one["search"] == three["search"]
    for split in one.proba:
        assert np.array_equal(one.proba[split], three.proba[split], equal_nan=True)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_bad_n_jobs_is_refused(bad):
    with pytest.raises(ValueError, match="n_jobs"):
        resolve_jobs(bad)
