"""Image classifiers end to end: fit from a folder, save, load, predict top-k classes.

A classifier is a scikit-learn ``Pipeline(EmbeddingTransformer, head)`` fitted on image
paths and class names, so it predicts class names directly.

File format 2 (``save_classifier``): one header line ``FEATX-CLASSIFIER 2``, one line of
JSON metadata (featx, scikit-learn and skops versions, classes, backbone settings, the
types beyond featx's allowlist that the file needs), then the pipeline in skops' secure
format (a zip of JSON and ``.npy`` arrays). Loading it constructs only types on an
allowlist (skops' own, for scikit-learn and NumPy, plus :data:`TRUSTED_TYPES`) and runs
no code from the file: a file that names any other type is refused, naming the types,
before anything is built. The Keras model is never in the file: the transformer rebuilds
it from its parameters (a registry name and a weights path) when first used, and a
backbone given as a model file is loaded with Keras' ``safe_mode``. The file holds no cache
folder of the machine that saved it: a transformer's ``cache_dir`` path is saved as
``"auto"``, so the loading user's default cache is used (``None``, no cache, is kept).

Format 1 (``FEATX-CLASSIFIER 1``, featx before cache format 2) held a joblib pickle, and
unpickling can run any code: such a file is loaded only with ``trust_pickle=True``
(``featx predict --trust-pickle``), for a file from a source you trust; save it again
to get format 2.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.results import Result, jsonable
from featx.splits import INNER_FOLDS

__all__ = [
    "FILE_FORMAT",
    "TRUSTED_TYPES",
    "Training",
    "fit_classifier",
    "iter_predictions",
    "load_classifier",
    "predict_top_k",
    "read_metadata",
    "save_classifier",
    "train_classifier",
]

#: The classifier file format :func:`save_classifier` writes.
FILE_FORMAT = 2
_HEADER = b"FEATX-CLASSIFIER "
MAGIC = _HEADER + f"{FILE_FORMAT}\n".encode()

#: Types a featx classifier file may hold beyond skops' default allowlist (scikit-learn's
#: estimators and NumPy/SciPy containers). Each is plain data once built: featx's
#: transformer (its Keras model is not in the file), the k-NN head's class, the calibrated
#: and MLP heads' private scikit-learn parts, and the views of test-time augmentation.
TRUSTED_TYPES: tuple[str, ...] = (
    "featx.transformer.EmbeddingTransformer",
    "featx._neighbours.CappedKNeighborsClassifier",
    "featx.augment.AugmentPolicy",
    "featx.augment.Flip",
    "featx.augment.Crop",
    "featx.augment.Compose",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)


@dataclass
class Training(Result):
    """What :func:`train_classifier` did: the classifier, and how its head was set.

    Attributes
    ----------
    model : Pipeline(EmbeddingTransformer, head)
        The fitted classifier; it predicts class names.
    head : str
    params : dict
        The head's parameters that were chosen or given, as pipeline keys (``clf__C``).
    selection : str
        ``"validation accuracy"`` or ``"3-fold accuracy"`` (how ``params`` were chosen
        from the grid, as :func:`featx.evaluate` chooses), or ``"none"`` (one setting).
    search : list of dict
        Every setting tried, ``{"params", "score"}`` in grid order.
    trained_on : dict
        Images per split the head learned from (``{"train": n, "validation": m}``, or
        ``{"all": n}`` for one source).
    held_out : dict
        Images of a dataset root not trained on (``{"test": k}``): what
        ``featx evaluate ROOT`` scores.
    """

    model: Any
    head: str
    params: dict[str, Any]
    selection: str
    search: list[dict[str, Any]]
    trained_on: dict[str, int]
    held_out: dict[str, int]

    @property
    def score(self) -> float | None:
        """The chosen setting's selection score (None without a search)."""
        return next((s["score"] for s in self.search if s["params"] == self.params), None)

    def summary(self) -> dict[str, Any]:
        return jsonable(
            {
                "head": self.head,
                "params": self.params,
                "selection": self.selection,
                "score": self.score,
                "search": self.search,
                "classes": [str(c) for c in self.model.classes_],
                "trained_on": self.trained_on,
                "held_out": self.held_out,
            }
        )

    def to_frame(self) -> Any:
        """One row per setting tried: its parameters and score."""
        import pandas as pd

        return pd.DataFrame([{**s["params"], "score": s["score"]} for s in self.search])


def train_classifier(
    source: Any,
    *,
    head: str = "logreg",
    head_params: Mapping[str, Any] | None = None,
    grid: Mapping[str, Any] | str | None = "default",
    labels: Sequence[Any] | None = None,
    inner_cv: int = INNER_FOLDS,
    seed: int = 0,
    **extractor_params: Any,
) -> Training:
    """Fit ``Pipeline(EmbeddingTransformer(**extractor_params), make_head(head))``, its
    head's parameters chosen as :func:`featx.evaluate` chooses them.

    Parameters
    ----------
    source : path or labelled source
        A class-per-folder directory (or any labelled source featx reads, with ``labels=``
        for unlabelled ones), or a dataset root with ``train/``, ``validation/`` (or
        ``val/``) and ``test/``: then the classifier learns from train (and validation),
        and test is left for :func:`featx.evaluate`.
    head, head_params
        The head kind (:data:`featx.heads.HEADS`) and fixed :func:`~featx.heads.make_head`
        parameters (``{"C": 10}``).
    grid : "default", dict or None, default "default"
        The settings to choose among: the head's default grid, a grid such as
        ``{"C": [0.1, 1]}`` (one value each: fixed parameters, no search), or None (no
        search). Chosen on validation where the root has one, else by stratified
        ``inner_cv``-fold cross-validation; then refitted on every training image.
    inner_cv, seed
        Folds of that cross-validation, and their seed.
    **extractor_params
        :class:`~featx.EmbeddingTransformer` parameters (``backbone``, ``weights``,
        ``input_size``, ``cache_dir``, ...). A weights file path is made absolute, so the
        saved classifier works from any working directory.

    Returns
    -------
    Training

    Raises
    ------
    ValueError
        Before any image is read: for unlabelled data, fewer than 2 classes, a validation
        class the training images lack, or a class with one image where the search needs
        cross-validation. A class with one image otherwise only warns.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.classifier import train_classifier
    >>> rng = np.random.default_rng(0)
    >>> images = np.concatenate([rng.integers(0, 60, (6, 40, 40, 3)),
    ...                          rng.integers(190, 255, (6, 40, 40, 3))]).astype(np.uint8)
    >>> trained = train_classifier(images, labels=["dark"] * 6 + ["light"] * 6, backbone="VGG16",
    ...                            weights=None, input_size=32, cache_dir=None, verbose=False)
    >>> trained.selection, sorted(trained.params), trained.trained_on
    ('3-fold accuracy', ['clf__C'], {'all': 12})
    >>> trained.model.predict(images[:1]).tolist()
    ['dark']
    """
    from sklearn.pipeline import make_pipeline

    from featx.heads import default_grid, make_head, resolve_grid
    from featx.learning import Features, LearningData, select_and_fit
    from featx.sources import resolve_source
    from featx.splits import split_layout, training_splits
    from featx.transformer import EmbeddingTransformer

    folders = None if labels is not None else training_splits(source)
    parts = {"all": source} if folders is None else folders
    images = {split: resolve_source(part, labels=labels) for split, part in parts.items()}
    held_out = {}
    if folders is not None and (root := split_layout(source)) is not None:
        held_out = {"test": len(resolve_source(root.sources["test"]))}
    estimator = make_head(head, **(head_params or {}))
    if grid == "default":
        grid = default_grid(head)
    resolved = resolve_grid(estimator, grid or {})
    settings = int(np.prod([len(v) for v in resolved.values()]))
    classes = _check_trainable(images, source, cross_validated=settings > 1 and len(images) == 1)

    weights = extractor_params.get("weights")
    if isinstance(weights, (str, os.PathLike)) and weights != "imagenet":
        extractor_params["weights"] = str(Path(weights).resolve())
    transformer = EmbeddingTransformer(**extractor_params)
    inputs = {s: i.inputs if i.are_files else np.stack(i.inputs) for s, i in images.items()}
    transformer.fit(next(iter(inputs.values())))
    position = {name: i for i, name in enumerate(classes)}
    y = {
        split: np.asarray([position[part.classes[c]] for c in part.y], dtype=np.int64)
        for split, part in images.items()
    }
    X = {split: transformer.embed(rows).X for split, rows in inputs.items()}
    data = LearningData("train", classes, y, {"X": Features(X)})
    chosen = select_and_fit(data, estimator, resolved, inner_cv=inner_cv, seed=seed, names=True)
    return Training(
        model=make_pipeline(transformer, chosen.model),
        head=head,
        params=chosen.params,
        selection=chosen.selection,
        search=[{"params": p, "score": v} for p, v in zip(chosen.grid, chosen.scores, strict=True)],
        trained_on={split: len(rows) for split, rows in y.items()},
        held_out=held_out,
    )


def _check_trainable(images: dict[str, Any], source: Any, *, cross_validated: bool) -> list[str]:
    """The classes to learn, or a clear error before any image is read."""
    where = f"{str(source)!r}" if isinstance(source, (str, os.PathLike)) else "the source"
    for split, part in images.items():
        if part.y is None or part.classes is None:
            raise ValueError(
                f"Training needs labels, and {where if split == 'all' else f'{split}/'} has "
                "none: pass a class-per-folder directory (root/<class>/<image>), a DataFrame "
                "with a label column, or labels=."
            )
    first = next(iter(images.values()))
    per_class = np.bincount(first.y, minlength=len(first.classes))
    counts = {name: int(n) for name, n in zip(first.classes, per_class, strict=True) if n}
    validation = images.get("validation")
    if validation is not None:
        extra = sorted({validation.classes[c] for c in validation.y} - set(counts))
        if extra:
            raise ValueError(
                f"validation/ of {where} has class(es) {extra} that train/ lacks (train/ has "
                f"{sorted(counts)}). A classifier cannot learn a class it never sees: add "
                "training images of them, or leave them out of validation/."
            )
    if len(counts) < 2:
        found = ", ".join(f"{name!r} ({n} images)" for name, n in counts.items()) or "none"
        raise ValueError(
            f"A classifier needs at least 2 classes; {where} has {len(counts)}: {found}. Put "
            "each class's images in its own subfolder (root/<class>/<image>)."
        )
    name, count = min(counts.items(), key=lambda item: item[1])
    if count < 2:
        if cross_validated:
            raise ValueError(
                f"Class {name!r} has 1 image, and choosing the head's parameters by "
                "cross-validation needs at least 2 of every class. Add images of it, or give "
                "the head's parameters (head_params=) to fit without a search."
            )
        warnings.warn(
            f"Class {name!r} has only 1 training image: the classifier learns it from that "
            "one example.",
            stacklevel=3,
        )
    return sorted(counts)


def fit_classifier(
    source: Any,
    *,
    head: str = "logreg",
    head_params: dict[str, Any] | None = None,
    labels: list[Any] | None = None,
    grid: Mapping[str, Any] | str | None = None,
    **extractor_params: Any,
):
    """Fit ``Pipeline(EmbeddingTransformer(**extractor_params), make_head(head))``:
    :func:`train_classifier`'s model, without a search by default.

    ``source`` is a class-per-folder directory (or any labelled source featx reads, with
    ``labels=`` for unlabelled ones), or a dataset root with ``train/`` (learned from,
    with ``validation/``) and ``test/`` (left out). Labels are class names, so the fitted
    pipeline predicts names. ``grid="default"`` chooses the head's parameters as
    :func:`featx.evaluate` does. A weights file path is made absolute, so the saved
    classifier works from any working directory.

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
    return train_classifier(
        source, head=head, head_params=head_params, grid=grid, labels=labels, **extractor_params
    ).model


def save_classifier(model: Any, path: str | os.PathLike, *, trusted: Sequence[str] = ()) -> None:
    """Write a fitted classifier to ``path`` in format 2 (header, metadata, skops payload).

    The file is written beside ``path`` and renamed over it, so a crash or a full disk
    never leaves a half-written classifier under its name.

    Parameters
    ----------
    trusted : sequence of str, default ()
        Types beyond featx's allowlist that ``model`` holds (your own estimator, say) and
        that you accept in the file. They are named in its metadata, and whoever loads the
        file must trust them too (``load_classifier(path, trusted=...)``).

    Raises
    ------
    TypeError
        If ``model`` holds an object that cannot be saved as data (a Keras model or a
        ``Backbone`` given as ``backbone=``, a ``preprocess`` function) or a type outside
        the allowlist and ``trusted``.
    """
    import sklearn
    import skops

    from featx import __version__

    transformer = model.steps[0][1] if hasattr(model, "steps") else None
    _check_portable(transformer)
    # No machine path travels in the file: a cache folder of the trainer's becomes "auto"
    # (the loading user's default, $FEATX_CACHE_DIR or ./cache); None (no cache) stays.
    own_cache = getattr(transformer, "cache_dir", None)
    portable = own_cache not in (None, "auto")
    try:
        if portable:
            transformer.cache_dir = "auto"
        payload = _dumps(model)
        params = transformer.get_params() if transformer is not None else None
    finally:
        if portable:
            transformer.cache_dir = own_cache
    import skops.io

    beyond = _beyond_allowlist(skops.io.get_untrusted_types(data=payload))
    refused = [name for name in beyond if name not in trusted]
    if refused:
        raise TypeError(
            f"The classifier holds {_types(refused)} outside featx's allowlist of types a "
            "classifier file may hold, so it cannot be saved as a file that loads without "
            "running code. A custom preprocess function or a network given as an object "
            "cannot travel in a file: pass backbone= a registry name or a model file path. "
            "For your own estimator, pass save_classifier(..., trusted=[...]) with these "
            "names; whoever loads the file must trust them too."
        )
    metadata = {
        "format": FILE_FORMAT,
        "featx": __version__,
        "sklearn": sklearn.__version__,
        "skops": skops.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": [str(c) for c in getattr(model, "classes_", [])],
        "transformer": _jsonable(params) if params is not None else None,
        "trusted": beyond,
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(json.dumps(metadata).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a classifier file (format 1 or 2), without building the model.

    Raises
    ------
    ValueError
        If the file does not start with featx's header.
    """
    with open(path, "rb") as f:
        return _read_header(f, path)[1]


def load_classifier(
    path: str | os.PathLike, *, trusted: Sequence[str] = (), trust_pickle: bool = False
):
    """Load a classifier written by :func:`save_classifier`, running no code from the file.

    Parameters
    ----------
    trusted : sequence of str, default ()
        Types beyond featx's allowlist (:data:`TRUSTED_TYPES`) to accept, for a file
        saved with ``trusted=`` from a source you trust.
    trust_pickle : bool, default False
        Load a format-1 file (a pickle, written by an older featx). Unpickling runs
        whatever the file says: only for files from a source you trust.

    Raises
    ------
    ValueError
        If the file lacks featx's header, is damaged, is a format-1 pickle and
        ``trust_pickle`` is false, or names a type outside the allowlist and ``trusted``
        (the error names the types). Nothing from the file is built before these checks.
    """
    with open(path, "rb") as f:
        version, _ = _read_header(f, path)
        if version == 1:
            if not trust_pickle:
                raise ValueError(
                    f"{str(path)!r} is a featx classifier file of format 1, a pickle written "
                    "by an older featx: loading a pickle runs whatever code it holds, so featx "
                    "does not load it by default. If you trust its source, load it with "
                    "load_classifier(path, trust_pickle=True) (featx predict --trust-pickle) "
                    "and save it again with save_classifier: format 2 loads without running "
                    "code."
                )
            import joblib

            return joblib.load(f)
        payload = f.read()
    import skops.io

    try:
        # skops reads only the payload's schema to list its types: nothing is built.
        untrusted = skops.io.get_untrusted_types(data=payload)
    except Exception as error:
        raise ValueError(
            f"{str(path)!r}: featx's header is there but the model inside is damaged or not "
            f"in skops' format ({type(error).__name__}: {error}). Save the classifier again."
        ) from None
    refused = [name for name in _beyond_allowlist(untrusted) if name not in trusted]
    if refused:
        raise ValueError(
            f"{str(path)!r} holds {_types(refused)} outside featx's allowlist of types a "
            "classifier file may hold; building an unknown type can run code, so the file "
            "was not loaded. If you trust its source and these types, pass "
            "load_classifier(path, trusted=[...]) with these names (featx predict --trust "
            "NAME)."
        )
    # Every type the payload needs is now either on featx's allowlist or trusted by the
    # caller; skops checks the same list again as it builds.
    return skops.io.loads(payload, trusted=untrusted)


def predict_top_k(model: Any, images: Any, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, the ``k`` most probable classes as ``(name, probability)``, best first.

    Like Keras' ``decode_predictions``, but for the classifier's own classes.
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    return _top_k(model.predict_proba(images), [str(c) for c in model.classes_], k)


def _top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [(classes[j], float(row[j])) for j in top]
        for row, top in zip(probabilities, order, strict=True)
    ]


def iter_predictions(
    model: Any,
    source: Any,
    *,
    k: int = 3,
    chunk_size: int = 256,
    on_error: str = "raise",
    path_column: str = "path",
) -> Iterator[dict[str, Any]]:
    """Predict ``source`` chunk by chunk, yielding one row per input, in input order.

    For folders, manifests and lists too large to hold at once: ``chunk_size`` images are
    embedded (through the cache) and classified at a time, and each row is yielded as
    soon as its chunk is done.

    Parameters
    ----------
    model : Pipeline(EmbeddingTransformer, head)
        A classifier from :func:`fit_classifier` or :func:`load_classifier`.
    source : any source featx reads
        Image files, a folder (class folders are read as the true labels), a manifest, a
        DataFrame or an array of images.
    on_error : {"raise", "skip"}
        With ``"skip"``, an image that cannot be read gives a row with its ``error``
        instead of stopping the run.

    Yields
    ------
    dict
        ``{"image", "top": [(class, probability), ...], "label"}`` (``label`` is the
        source's own label, or None), or ``{"image", "error", "label"}`` for a skipped
        image.
    """
    from featx._pipeline import check_on_error
    from featx.sources import resolve_source
    from featx.transformer import EmbeddingTransformer

    check_on_error(on_error)
    if k < 1:
        raise ValueError(f"k={k} must be at least 1.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1.")
    steps = getattr(model, "steps", None)
    if not steps or not isinstance(steps[0][1], EmbeddingTransformer):
        raise TypeError(
            f"model is a {type(model).__name__}; iter_predictions needs a featx classifier, "
            "Pipeline(EmbeddingTransformer, head), from fit_classifier or load_classifier."
        )
    transformer, head = steps[0][1], model[1:]
    images = resolve_source(source, path_column=path_column)
    labels = None if images.y is None else np.asarray(images.classes, dtype=object)[images.y]
    classes = [str(c) for c in model.classes_]
    for start in range(0, len(images), chunk_size):
        inputs = images.inputs[start : start + chunk_size]
        names = images.names[start : start + chunk_size]
        found = transformer.embed(
            inputs if images.are_files else np.stack(inputs), on_error=on_error
        )
        tops = _top_k(head.predict_proba(found.X), classes, k) if len(found) else []
        by_row = dict(zip(found.index.tolist(), tops, strict=True))
        # The rows left out, in input order, as Embeddings.failed lists them.
        reasons = iter([reason for _, reason in found.failed])
        for row, name in enumerate(names):
            label = None if labels is None else str(labels[start + row])
            if row in by_row:
                yield {"image": name, "top": by_row[row], "label": label}
            else:
                yield {"image": name, "error": next(reasons, "not read"), "label": label}


def _read_header(f, path) -> tuple[int, dict[str, Any]]:
    head = f.readline(64)
    version = head[len(_HEADER) : -1] if head.startswith(_HEADER) and head.endswith(b"\n") else b""
    if not version.isdigit():
        raise ValueError(
            f"{str(path)!r} is not a featx classifier file: it lacks featx's header "
            f"(starts with {head[:18]!r}). featx loads only model files it wrote with "
            "save_classifier (featx train)."
        )
    if int(version) > FILE_FORMAT:
        raise ValueError(
            f"{str(path)!r} is a featx classifier file of format {int(version)}, written by a "
            f"newer featx; this one reads formats 1 to {FILE_FORMAT}. Upgrade featx "
            "(pip install -U featx)."
        )
    line = f.readline()
    try:
        return int(version), json.loads(line)
    except ValueError:
        raise ValueError(
            f"{str(path)!r}: featx's header is there but its metadata is corrupt."
        ) from None


def _check_portable(transformer: Any) -> None:
    """Refuse, before any work, the transformer settings that are code, not data."""
    backbone = getattr(transformer, "backbone", None)
    if backbone is not None and not isinstance(backbone, (str, os.PathLike)):
        raise TypeError(
            f"The classifier's backbone is a {type(backbone).__name__} object, which cannot "
            "travel in a classifier file: the file holds the backbone as a registry name or "
            "a model file path. Save your network with model.save('net.keras') and fit the "
            "classifier with backbone='net.keras'."
        )
    if getattr(transformer, "preprocess", None) is not None:
        raise TypeError(
            "The classifier has a preprocess function, which cannot travel in a classifier "
            "file (a file that loads without running code holds no code). Put the "
            "preprocessing inside the saved Keras model, and fit with backbone='net.keras'."
        )


def _dumps(model: Any) -> bytes:
    import zipfile

    import skops.io

    try:
        return skops.io.dumps(model, compression=zipfile.ZIP_DEFLATED)
    except Exception as error:
        raise TypeError(
            f"The classifier cannot be saved as data ({type(error).__name__}: {error}). A "
            "classifier file holds the backbone by its registry name or model file path and "
            "its weights path: a Keras model or Backbone object given as backbone=, or a "
            "preprocess function, cannot travel in it."
        ) from None


def _beyond_allowlist(untrusted: list[str]) -> list[str]:
    """Of the types skops does not trust by default, those not in :data:`TRUSTED_TYPES`."""
    return sorted(name for name in untrusted if name not in TRUSTED_TYPES)


def _types(names: Sequence[str]) -> str:
    return f"{len(names)} type(s) ({', '.join(names)})"


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        for k, v in params.items()
    }
