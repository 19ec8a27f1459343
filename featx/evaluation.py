"""Honest evaluation of images: extract once per representation, then learn on embeddings.

:func:`evaluate` and :func:`compare` take images (a dataset root, one class-per-folder
source, explicit splits) or precomputed :class:`~featx.Embeddings`, extract each
representation once (from the cache where present), and hand the embeddings to the
learning core, :func:`featx.learning.learn`, which owns the protocols:

``"train-validation-test"``
    a root with ``train/``, ``validation/`` (or ``val/``) and ``test/``, or ``train=``,
    ``validation=`` and ``test=``: every candidate of the grid is fitted on train and
    scored on validation; the best is refitted on train + validation and scored once
    on test.
``"train-test"``
    a root with ``train/`` and ``test/`` only, or ``train=`` and ``test=``: the
    hyperparameters are chosen by stratified 3-fold cross-validation on train, the head
    is refitted on all of train and scored on test.
``"nested-cv"``
    a single labelled source: stratified k-fold cross-validation, the hyperparameters
    chosen afresh inside each outer training fold by an inner stratified 3-fold search.

Test images never reach hyperparameter selection or fitting. Labels are matched across
splits by class name. Every split and fold is seeded, and :func:`compare` evaluates
every backbone and head on the same folds, so its rows are paired comparisons.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from featx.backbones import Backbone, RawPixels, get_spec
from featx.combine import CombinedExtractor, extractor_for
from featx.config import BackboneConfig, size_label
from featx.embeddings import Embeddings
from featx.extract import Extractor
from featx.hub import hub_name, is_hub_name
from featx.learning import LearningData, LearnResult, learn_data, resolve_head
from featx.results import TABLE_WIDTH, Result, jsonable, text_table
from featx.splits import PROTOCOLS, Splits, resolve_splits

__all__ = [
    "PROTOCOLS",
    "Comparison",
    "Embedded",
    "compare",
    "compare_embedded",
    "embed_splits",
    "entries",
    "evaluate",
]

RAW_PIXELS_SIZE = 16


# -- one representation of every split -----------------------------------------------------------


@dataclass
class Embedded:
    """Every split of the data under one representation, as :func:`embed_splits` made it.

    Attributes
    ----------
    splits : Splits
        The protocol and its sources.
    embeddings : dict
        Split name -> :class:`~featx.Embeddings`.
    copies : dict
        Split name -> one :class:`~featx.Embeddings` per augmented copy (never ``"test"``).
    representation : dict
        What tables show of it: ``backbone``, ``weights``, ``input_size``, ``tta``,
        ``members``, ``augment``.
    ms_per_image : float or None
        Extraction cost per image, from the cache's records (else this run's).
    """

    splits: Splits
    embeddings: dict[str, Embeddings]
    copies: dict[str, list[Embeddings]] = field(default_factory=dict)
    representation: dict[str, Any] = field(default_factory=dict)
    ms_per_image: float | None = None

    def data(self, groups: Any = None) -> LearningData:
        """The embeddings as the learning core takes them."""
        return LearningData.from_embeddings(
            Splits(self.splits.protocol, self.embeddings),
            copies=self.copies or None,
            groups=groups,
        )

    @property
    def extraction(self) -> dict[str, dict[str, Any]]:
        return {split: _extraction_summary(e) for split, e in self.embeddings.items()}

    @property
    def dim(self) -> int:
        return next(iter(self.embeddings.values())).dim

    def combined(self) -> Embeddings:
        """Every split's rows as one :class:`~featx.Embeddings` (train, validation, test)."""
        return Embeddings.concat(list(self.embeddings.values()))


def embed_splits(
    splits: Splits,
    config: BackboneConfig,
    *,
    tta: Any = None,
    tta_combine: str = "mean",
    augment: Any = None,
    batch_size: int = 32,
    cache_dir: Any = "auto",
    verbose: bool = False,
) -> Embedded:
    """Embed every split of ``splits`` with one representation: one extraction each.

    Splits given as :class:`~featx.Embeddings` are used as they are.
    """
    if splits.precomputed:
        if tta is not None or augment:
            raise ValueError(
                "tta= and augment= make new embeddings of the images; with precomputed "
                "Embeddings there are no images to embed. Extract the views or copies "
                "yourself (featx.combine.CombinedExtractor), or pass the images."
            )
        embeddings = dict(splits.sources)
        first = next(iter(embeddings.values()))
        return Embedded(splits, embeddings, representation=_spec_representation(first))
    if any(isinstance(s, Embeddings) for s in splits.sources.values()):
        raise ValueError(
            "Some splits are Embeddings and others images. Pass every split as images, or "
            "every split as Embeddings of the same extractor."
        )
    extractor = extractor_for(
        config,
        tta=tta,
        tta_combine=tta_combine,
        augment=augment,
        batch_size=batch_size,
        cache_dir=cache_dir,
        verbose=verbose,
    )
    embeddings = {split: extractor.extract(source) for split, source in splits.sources.items()}
    for split, embedded in embeddings.items():
        if not embedded.labelled:
            raise ValueError(
                f"The {'source' if split == 'all' else split + ' set'} has no labels. Expected "
                "class subfolders (root/<class>/<image>) or a DataFrame with a label column."
            )
    copies = {}
    if getattr(extractor, "augment", None) is not None:
        copies = {
            split: extractor.extract_copies(source)
            for split, source in splits.sources.items()
            if split != "test"
        }
    return Embedded(
        splits,
        embeddings,
        copies,
        representation=_representation(config, extractor),
        ms_per_image=_ms_per_image(extractor, list(embeddings.values())),
    )


def _representation(config: BackboneConfig, extractor: Extractor | CombinedExtractor) -> dict:
    first = extractor.backbones[0] if isinstance(extractor, CombinedExtractor) else None
    backbone = first or extractor.backbone
    row = {
        "backbone": backbone.name,
        "weights": _weights_label(backbone, config.weights),
        "input_size": list(backbone.input_size),
        "tta": None,
        "members": None,
        "augment": None,
    }
    if isinstance(extractor, CombinedExtractor):
        row.update(
            augment=None if extractor.augment is None else extractor.augment.copies,
            input_size="+".join(str(size_label(b.input_size)) for b in extractor.backbones),
            tta=extractor.label.split("tta=")[1] if "tta=" in extractor.label else None,
            members=extractor.label,
        )
    return row


def _spec_representation(embedded: Embeddings) -> dict[str, Any]:
    """What the spec of precomputed embeddings says of their network."""
    spec = embedded.spec or {}
    members = spec.get("members")
    backbone = (members[0] if members else spec).get("backbone", {})
    weights = str(backbone.get("weights"))
    prefixes = {"random:": "random", "imagenet:": "imagenet", "file:": "file", "values:": "own"}
    label = next((name for p, name in prefixes.items() if weights.startswith(p)), None)
    size = backbone.get("input_size")
    return {
        "backbone": backbone.get("architecture"),
        "weights": label,
        "input_size": size,
        "tta": None,
        "members": None if not members else f"{len(members)} members",
        "augment": None,
    }


def _extraction_summary(embedded: Embeddings) -> dict[str, Any]:
    return {
        "n_images": len(embedded),
        "cache_hits": embedded.cache_hits,
        "cache_misses": embedded.cache_misses,
        "seconds": round(embedded.seconds, 4),
        "failed": len(embedded.failed),
    }


def _ms_per_image(extractor: Extractor | CombinedExtractor, embeddings: list[Embeddings]):
    """Extraction cost per image: the cache's record of compute time, else this run's."""
    if isinstance(extractor, CombinedExtractor):
        ms = extractor.ms_per_image()
        seconds = None if ms is None else ms / 1000.0
    else:
        seconds = extractor.cache.seconds_per_image(extractor.fingerprint)
    if seconds is None:
        computed = sum(e.cache_misses for e in embeddings)
        if not computed:
            return None
        seconds = sum(e.seconds for e in embeddings if e.cache_misses) / computed
    return round(1000.0 * seconds, 4)


def _weights_label(backbone: Backbone, weights: Any) -> str | None:
    """Short text for the weights: "imagenet", "random", a file name, or "own"."""
    identity = str(backbone.identity().get("weights"))
    if isinstance(backbone, RawPixels) or identity == "None":
        return None
    if identity.startswith("random:"):
        return "random"
    if identity.startswith("imagenet:"):
        return "imagenet"
    if identity.startswith("file:") and isinstance(weights, (str, os.PathLike)):
        return Path(weights).name
    return "own"  # a custom model's own weights


# -- evaluate ------------------------------------------------------------------------------------


def evaluate(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    backbone: str | Backbone | Any = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | list[Any] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    resize: str | None = None,
    precision: str = "float32",
    head: str | Any = "logreg",
    grid: Mapping[str, Any] | None = None,
    cv: int = 5,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    tta: str | Sequence[Any] | None = None,
    tta_combine: str = "mean",
    augment: int | Mapping[str, Any] | Any = None,
    groups: Any = None,
    oof: bool = False,
) -> LearnResult:
    """Extract embeddings (cached), fit a head with honest model selection, report test metrics.

    Parameters
    ----------
    source : path, labelled source, Embeddings, or dict of split -> either, optional
        A dataset root with ``train/``, ``validation/`` (or ``val/``) and ``test/``
        subfolders, a single class-per-folder source or labelled :class:`~featx.Embeddings`
        (then: nested cross-validation), or ``{"train": ..., "test": ...}``. Give either
        ``source`` or ``train=`` and ``test=``.
    train, validation, test : labelled sources or Embeddings, optional
        Explicit splits. Without ``validation``, hyperparameters are chosen by
        cross-validation on train.
    backbone, weights, input_size, pooling, layer, resize, precision, batch_size
        The network and how images reach it, as for :class:`~featx.config.BackboneConfig`:
        ``input_size`` (and ``layer``) may be lists, whose embeddings are concatenated,
        and ``pooling="avg+max"`` concatenates both poolings. Unused for Embeddings.
    tta, tta_combine
        Test-time views of every image (``"flip"``, ``"crop"``, ``"flip+crop"``),
        averaged or concatenated (see :mod:`featx.augment`); for training images too,
        so train and test embeddings are alike.
    augment : None, int, dict or AugmentPolicy, optional
        Train-time augmentation: the head also trains on that many seeded copies of
        every training (and validation) image. A copy is always on its original's side
        of every split (grouped folds); only originals are scored.
    head : str or estimator, default "logreg"
        A :func:`~featx.heads.make_head` kind (:data:`featx.heads.HEADS`), or any
        scikit-learn classifier with ``predict_proba`` (cloned, never modified).
    grid : dict, optional
        Hyperparameter candidates, e.g. ``{"C": [0.1, 1]}`` (a bare name reaches the
        classifier; ``"pca__n_components"`` any step). Default: the kind's
        :func:`~featx.heads.default_grid`, or no search for an estimator. ``{}``: no search.
    cv : int, default 5
        Outer folds of nested cross-validation (single-source protocol only).
    cache_dir : path, "auto" or None, default "auto"
        Embedding cache, as for :class:`~featx.Extractor`.
    seed : int, default 0
        Seeds the folds (and the initialisation when ``weights=None``).
    verbose : bool, default False
        Show extraction progress bars.
    groups, oof
        As for :func:`featx.learning.learn`: a group per image kept on one side of every
        fold, and out-of-sample probabilities for train and validation rows.

    Returns
    -------
    featx.learning.LearnResult
        ``result["accuracy"]`` and the rest read its JSON-ready ``summary()``:
        ``protocol``; ``classes``; ``accuracy``, ``balanced_accuracy`` and
        ``macro_f1`` (means over folds under nested CV), each with a ``*_std`` (``None``
        for a fixed test set); ``per_class`` (precision, recall, f1, support by class
        name) and ``confusion_matrix`` (rows true, columns predicted, in ``classes``
        order; pooled over folds under nested CV); ``chosen_params`` (parameter -> value;
        under nested CV parameter -> the value chosen in each fold); ``search`` (the
        score of every candidate); ``fit_seconds`` (selection and fitting); ``n_train``,
        ``n_validation``, ``n_test``; ``extraction`` (cache hits, misses and seconds per
        split) and ``ms_per_image``. Under nested CV also ``folds`` and ``pooled``.
        ``result.proba`` holds the out-of-sample probabilities, ``result.model`` the
        final head on fixed splits.

    Raises
    ------
    ValueError
        When the splits are missing, overlap, lack labels, or the test or validation
        set holds a class the training set lacks.

    Examples
    --------
    A tiny split dataset, dark and light images, and the raw-pixels baseline as backbone:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from featx.backbones import RawPixels
    >>> from featx.evaluation import evaluate
    >>> root = Path(tempfile.mkdtemp())
    >>> for split, n in [("train", 6), ("test", 3)]:
    ...     for name, grey in [("dark", 40), ("light", 200)]:
    ...         (root / split / name).mkdir(parents=True)
    ...         for i in range(n):
    ...             image = Image.new("RGB", (8, 8), (grey + 9 * i,) * 3)
    ...             image.save(root / split / name / f"{i}.png")
    >>> r = evaluate(root, backbone=RawPixels(4), grid={"C": [0.1, 1.0]}, cache_dir=None)
    >>> r["protocol"], r["accuracy"], r["n_train"], r["n_test"], r["chosen_params"]
    ('train-test', 1.0, 12, 6, {'clf__C': 0.1})
    """
    from featx.heads import resolve_grid

    splits = resolve_splits(source, train, validation, test)
    estimator, label, default = resolve_head(head)
    resolved = resolve_grid(estimator, default if grid is None else grid)
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
    embedded = embed_splits(
        splits,
        config,
        tta=tta,
        tta_combine=tta_combine,
        augment=augment,
        batch_size=batch_size,
        cache_dir=cache_dir,
        verbose=verbose,
    )
    return _learn(embedded, estimator, label, resolved, cv, seed, groups, oof)


def _learn(embedded: Embedded, estimator, label, grid, cv, seed, groups=None, oof=False):
    result = learn_data(
        embedded.data(groups), estimator, label, grid, cv=cv, inner_cv=3, seed=seed, oof=oof
    )
    result.representation = embedded.representation
    result.extraction = embedded.extraction
    result.ms_per_image = embedded.ms_per_image
    return result


# -- compare -------------------------------------------------------------------------------------


@dataclass
class Comparison(Result):
    """What :func:`compare` measured: one row per representation x head.

    Attributes
    ----------
    table : pandas.DataFrame
        The rows (see :func:`compare`'s Returns); ``to_frame()`` returns it.
    results : list of featx.learning.LearnResult
        Each row's full result (folds, chosen parameters, probabilities), in row order.
    """

    table: Any
    results: list[LearnResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"rows": json.loads(self.table.to_json(orient="records"))}

    def to_frame(self) -> Any:
        return self.table

    def __len__(self) -> int:
        return len(self.table)

    def text(self, width: int = TABLE_WIDTH) -> str:
        """The rows as a plain-text table at most ``width`` characters wide (what
        ``featx compare`` prints; ``summary()`` and ``table`` have every column): the
        accuracy with its spread over folds, and the parameters chosen."""
        from featx.heads import params_text

        rows = [
            {
                **row,
                "accuracy": f"{row['accuracy']:.3f}"
                + ("" if math.isnan(row["accuracy_std"]) else f"±{row['accuracy_std']:.3f}"),
                "chosen": params_text(json.loads(row["chosen_params"])),
            }
            for row in self.table.to_dict(orient="records")
        ]
        columns = [
            ("backbone", "representation", ""),
            ("head", "head", ""),
            ("accuracy", "accuracy", ">"),
            ("macro_f1", "macro F1", ".3f"),
            ("ms_per_image", "ms/image", ".2f"),
            ("dim", "dim", "d"),
            ("chosen", "chosen", ""),
        ]
        protocol = self.table["protocol"].iloc[0] if len(self.table) else ""
        how = {
            "nested-cv": "mean±std over the outer folds, parameters chosen inside each",
            "train-validation-test": "on test, parameters chosen on validation",
            "train-test": "on test, parameters chosen by 3-fold cross-validation on train",
        }
        return (
            text_table(rows, columns, width=width)
            + f"\n{protocol}: accuracy {how.get(protocol, '')}"
        )


def compare(
    source: Any = None,
    *,
    train: Any = None,
    validation: Any = None,
    test: Any = None,
    embeddings: Mapping[str, Any] | None = None,
    backbones: Sequence[str | Mapping[str, Any] | Backbone | BackboneConfig] = ("MobileNetV2",),
    heads: Sequence[str | Any] = ("logreg",),
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | list[Any] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    resize: str | None = None,
    precision: str = "float32",
    baselines: bool | None = None,
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    cv: int = 5,
    cache_dir: str | os.PathLike | None = "auto",
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = False,
    tta: str | Sequence[Any] | None = None,
    tta_combine: str = "mean",
    augment: int | Mapping[str, Any] | Any = None,
) -> Comparison:
    """Every backbone x head on the same data, splits and folds: one row each.

    Each backbone's embeddings are extracted once (and cached), then every head is
    evaluated on them by :func:`featx.learning.learn`, with the protocol :func:`evaluate`
    would use.

    Parameters
    ----------
    source, train, validation, test
        The data, as for :func:`evaluate` (images, or Embeddings of one representation).
    embeddings : dict, optional
        Instead of images: representation label -> :class:`~featx.Embeddings` (nested CV)
        or dict of split -> Embeddings, e.g. ``{"MobileNetV2": {"train": e1, "test": e2}}``.
        One row per label x head; ``backbones`` and the options below are unused.
    backbones : sequence, default ("MobileNetV2",)
        Registry names (using ``weights``, ``input_size``, ... below), dicts of
        :class:`~featx.config.BackboneConfig` fields with an optional ``"label"``, e.g.
        ``{"backbone": "MobileNetV2", "weights": PATH, "input_size": 160,
        "label": "MobileNetV2 (pretrained)"}``, configs, or
        :class:`~featx.backbones.Backbone` instances.
    heads : sequence, default ("logreg",)
        :func:`~featx.heads.make_head` kinds or scikit-learn classifiers.
    weights, input_size, pooling, layer, resize, precision, batch_size
        Defaults for the backbones given by name (a dict entry overrides them).
    baselines : bool, optional
        Add two rows per head that show what the network is worth: ``"raw pixels
        16x16"`` (each image downscaled and flattened) and the first backbone with
        random weights (``"<name> (random weights)"``; registry backbones only).
        Default: on for images, off for ``embeddings=`` (no images to embed).
    grids : dict, optional
        Grid per head kind, e.g. ``{"logreg": {"C": [0.1, 1]}}``; others use their default.
    cv, cache_dir, seed, verbose, tta, tta_combine, augment
        As for :func:`evaluate` (``tta`` applies to every backbone; a dict entry may
        give its own ``input_size`` list or ``pooling="avg+max"``).

    Returns
    -------
    Comparison
        ``.table`` (also ``to_frame()``), a DataFrame with one row per backbone x head:
        ``backbone`` (label), ``weights``, ``input_size``, ``head``, ``accuracy`` (the
        mean under nested CV), ``accuracy_std`` (NaN for a fixed test set),
        ``balanced_accuracy``, ``macro_f1``, ``ms_per_image`` (extraction cost, from the
        cache's records), ``dim``, ``fit_seconds``, ``protocol``, ``n_train``,
        ``n_test``, ``chosen_params`` (JSON text), ``cache_misses``, ``extract_seconds``,
        ``tta``, ``members`` and ``augment``. ``summary()`` is ``{"rows": [...]}``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from featx.backbones import RawPixels
    >>> from featx.evaluation import compare
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, grey in [("dark", 40), ("light", 200)]:
    ...     (root / name).mkdir()
    ...     for i in range(6):
    ...         Image.new("RGB", (8, 8), (grey + 9 * i,) * 3).save(root / name / f"{i}.png")
    >>> table = compare(root, backbones=[RawPixels(4), RawPixels(2)], heads=["logreg"],
    ...                 baselines=False, cv=3, cache_dir=None).table
    >>> for row in table[["backbone", "head", "dim", "accuracy", "protocol"]].itertuples():
    ...     print(*row[1:])
    raw pixels 4x4 logreg 48 1.0 nested-cv
    raw pixels 2x2 logreg 12 1.0 nested-cv
    """
    _resolve_heads(heads, grids)  # an unknown head fails before any work
    if embeddings is not None:
        if source is not None or any(v is not None for v in (train, validation, test)):
            raise ValueError(
                "compare() takes images (source= or train=/test=) or embeddings=, not both."
            )
        if baselines:
            raise ValueError(
                "baselines=True embeds the images with raw pixels and random weights, but "
                "embeddings= has no images. Pass baselines=False, or the images."
            )
        represented: dict[str, Any] = dict(_precomputed_rows(embeddings))
    else:
        splits = resolve_splits(source, train, validation, test)
        defaults = {
            "weights": weights,
            "input_size": input_size,
            "pooling": pooling,
            "layer": layer,
            "resize": resize,
            "seed": seed,
            "precision": precision,
        }
        configs = entries(backbones, **defaults)
        if baselines or baselines is None:
            configs += _baselines(configs[0])
        options = {
            "tta": tta,
            "tta_combine": tta_combine,
            "augment": augment,
            "batch_size": batch_size,
            "cache_dir": cache_dir,
            "verbose": verbose,
        }
        represented = {}
        for c in configs:  # embedded lazily: one network, one representation at a time
            label = unique_label(c.name, represented)
            represented[label] = partial(embed_splits, splits, c, **options)
    return compare_embedded(represented, heads=heads, grids=grids, cv=cv, seed=seed)


def compare_embedded(
    represented: Mapping[str, Embedded | Callable[[], Embedded]],
    *,
    heads: Sequence[str | Any] = ("logreg",),
    grids: Mapping[str, Mapping[str, Any]] | None = None,
    cv: int = 5,
    seed: int = 0,
) -> Comparison:
    """Every head on every representation already embedded: :func:`compare`'s rows.

    ``represented`` maps a row label to an :class:`Embedded` (as :func:`embed_splits`
    returns) or to a function returning one, called when its rows are due, so that only
    one representation is in memory at a time. :func:`featx.report` passes what it
    extracted for its maps, so the comparison extracts nothing.
    """
    resolved, head_grids = _resolve_heads(heads, grids)
    import pandas as pd

    rows, results = [], []
    for label, value in represented.items():
        embedded = value() if callable(value) else value
        data = embedded.data()
        for (estimator, head_label, _), grid in zip(resolved, head_grids, strict=True):
            result = learn_data(
                data, estimator, head_label, grid, cv=cv, inner_cv=3, seed=seed, oof=False
            )
            result.representation = embedded.representation
            result.extraction = embedded.extraction
            result.ms_per_image = embedded.ms_per_image
            rows.append(_row(label, embedded, result))
            results.append(result)
        del embedded
    return Comparison(pd.DataFrame(rows), results)


def _resolve_heads(heads: Sequence[str | Any], grids: Mapping[str, Mapping[str, Any]] | None):
    """Each head's estimator, label and grid (``grids`` of a kind replacing its default)."""
    from featx.heads import resolve_grid

    if isinstance(heads, str) or not heads:
        raise ValueError(
            f"heads= must be a non-empty sequence of heads; got {heads!r}. Pass e.g. "
            'heads=("logreg",) or heads=["logreg", "svm"].'
        )
    resolved = [resolve_head(h) for h in heads]
    grids = dict(grids or {})
    head_grids = []
    for h, (estimator, _, default) in zip(heads, resolved, strict=True):
        given = grids.get(h) if isinstance(h, str) else None
        head_grids.append(resolve_grid(estimator, default if given is None else given))
    return resolved, head_grids


def unique_label(label: str, taken: Mapping[str, Any]) -> str:
    """``label``, or ``label (2)``, ... where two rows would share it."""
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = f"{label} ({n})"
    return candidate


def _row(label: str, embedded: Embedded, result: LearnResult) -> dict[str, Any]:
    summary = result.summary()
    rep = embedded.representation
    extraction = embedded.extraction
    size = rep.get("input_size")
    return {
        "backbone": label,
        "weights": rep.get("weights"),
        "input_size": size_label(tuple(size)) if isinstance(size, list) else size,
        "head": summary["head"],
        "accuracy": summary["accuracy"],
        "accuracy_std": _nan_if_none(summary["accuracy_std"]),
        "balanced_accuracy": summary["balanced_accuracy"],
        "macro_f1": summary["macro_f1"],
        "ms_per_image": _nan_if_none(embedded.ms_per_image),
        "dim": embedded.dim,
        "fit_seconds": summary["fit_seconds"],
        "protocol": summary["protocol"],
        "n_train": summary["n_train"],
        "n_test": summary["n_test"],
        "chosen_params": json.dumps(jsonable(summary["chosen_params"])),
        "cache_misses": sum(s["cache_misses"] for s in extraction.values()),
        "extract_seconds": round(sum(s["seconds"] for s in extraction.values()), 3),
        # Last, so the columns above keep their places; sizes joined by "+".
        "tta": rep.get("tta"),
        "members": rep.get("members"),
        "augment": rep.get("augment"),
    }


def _precomputed_rows(embeddings: Mapping[str, Any]) -> dict[str, Embedded]:
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError(
            "embeddings= must be a non-empty mapping of label -> Embeddings (or of split "
            f"name -> Embeddings), e.g. {{'MobileNetV2': emb}}; got {type(embeddings).__name__}."
        )
    out = {}
    for label, value in embeddings.items():
        splits = resolve_splits(value)
        if not splits.precomputed:
            raise ValueError(
                f"embeddings[{label!r}] holds {type(value).__name__}, not Embeddings. Pass "
                "an Embeddings (Extractor.extract, Embeddings.load) or a dict of split -> "
                "Embeddings."
            )
        out[str(label)] = embed_splits(splits, BackboneConfig())
    return out


def entries(
    backbones: Sequence[str | Mapping[str, Any] | Backbone | BackboneConfig], **defaults: Any
) -> list[BackboneConfig]:
    """One :class:`~featx.config.BackboneConfig` per backbone entry, ``defaults`` for the
    fields an entry does not set (what :func:`compare` and :func:`featx.report` take)."""
    if isinstance(backbones, (str, Mapping, Backbone, BackboneConfig)):
        backbones = [backbones]
    if not backbones:
        raise ValueError("backbones= is empty. Pass at least one backbone.")
    return [BackboneConfig.of(b, **defaults) for b in backbones]


def _baselines(first: BackboneConfig) -> list[BackboneConfig]:
    configs = []
    name = first.backbone[0] if len(first.backbone) == 1 else None
    if _is_registry_name(name) and first.weights is not None:
        configs.append(first.replace(weights=None, label=f"{get_spec(name).name} (random weights)"))
    elif is_hub_name(name) and first.weights is not None:
        configs.append(first.replace(weights=None, label=f"{hub_name(name)} (random weights)"))
    configs.append(BackboneConfig(RawPixels(RAW_PIXELS_SIZE)))
    return configs


def _is_registry_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    try:
        get_spec(name)
    except (KeyError, ValueError):
        return False
    return True


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)
