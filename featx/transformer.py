"""A scikit-learn transformer: images in, embeddings out, inside any pipeline.

:class:`EmbeddingTransformer` wraps an :class:`~featx.extract.Extractor` behind the
scikit-learn estimator contract: ``__init__`` stores parameters only, ``fit`` checks
them and records what the network is (learning nothing from the images), and
``transform`` embeds. The Keras model is built on the first ``transform`` and dropped
when pickling, so a saved pipeline stays small and rebuilds its network when loaded.

Because the cache is keyed on the network's fingerprint and the image content, the
clones that ``GridSearchCV`` and ``cross_val_score`` make share it: each image is
computed once, whatever the number of folds and candidates.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featx.augment import AugmentPolicy, View
from featx.backbones import Backbone
from featx.combine import CombinedExtractor
from featx.config import CONFIG_KEYS, BackboneConfig
from featx.embeddings import Embeddings
from featx.sources import resolve_source

__all__ = ["EmbeddingTransformer"]

# The transformer's own parameters beside the BackboneConfig fields (label is display only).
_NETWORK_PARAMS = tuple(k for k in CONFIG_KEYS if k != "label")
_OPTIONS = ("batch_size", "cache_dir", "verbose", "tta", "tta_combine", "augment")


class EmbeddingTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed images with a frozen Keras network, for use in scikit-learn pipelines.

    Each row of ``X`` is one image: a file path or an array. ``transform`` returns one
    pooled embedding per row, in input order. Embeddings are cached on disk (see
    :class:`~featx.extract.Extractor`), so refitting a pipeline, cross-validation and
    grid search compute each image once.

    Parameters
    ----------
    backbone : str, keras.Model, path or Backbone, default "MobileNetV2"
        A registry name (``featx backbones`` lists them), a keras-hub preset
        (``"hub:dinov2_small"``), your own ``keras.Model``, the path of a saved
        ``.keras``/``.h5`` model, or a :class:`~featx.backbones.Backbone`.
    weights : "imagenet", None or path, default "imagenet"
        ``None`` is a seeded random initialisation (a baseline).
    input_size : int, (height, width) or list of them, optional
        Defaults to the backbone's default size. A list (``[160, 224]``) embeds every
        image at each size and concatenates the embeddings (multi-scale).
    pooling : str, optional
        None is the backbone's default (``"avg"``; ``"cls"`` for keras-hub ViTs);
        ``"avg+max"`` (``"cls+mean"``) concatenates both poolings of one forward pass.
    layer : str or list of str, optional
        Embed this layer's (pooled) output instead of the last convolutional block; a
        list concatenates several layers (``None`` in it is the last block).
    resize : {"stretch", "center_crop"}, optional
        None is the backbone's own policy (a keras-hub preset's converter), else "stretch".
    tta : None, "flip", "crop", "flip+crop" or list of views, default None
        Test-time augmentation: embed these deterministic views of every image (the
        image itself included) and combine them (see :mod:`featx.augment`).
    tta_combine : {"mean", "concat"}, default "mean"
        Average the views' embeddings, or concatenate them.
    augment : None, int, dict or AugmentPolicy, default None
        Train-time augmentation policy for :meth:`transform_copies`: that many seeded,
        cached augmented copies of each image. A scikit-learn ``Pipeline`` cannot add
        rows, so ``fit``/``transform`` never use it; :func:`featx.tuning.tune` and
        :func:`featx.evaluation.evaluate` train heads on originals plus copies, grouped.
    batch_size : int, default 32
    cache_dir : path, "auto" or None, default "auto"
        ``"auto"`` is ``$FEATX_CACHE_DIR`` or ``./cache``; ``None`` disables caching.
    seed : int, default 0
        Seed of the random initialisation when ``weights=None``.
    precision : {"float32", "bfloat16", "float16"}, default "float32"
        Compute precision of a registry backbone; ``"float16"`` is for GPUs (see
        :class:`~featx.extract.Extractor`).
    preprocess : callable, optional
        The preprocessing of your own ``keras.Model`` (registry backbones always use their
        family's ``preprocess_input``). Pass a module-level function so pipelines pickle.
    path_column : str, default "path"
        When ``X`` is a DataFrame: the column of image paths. A one-column DataFrame
        may name its column anything.
    verbose : bool, default False
        Show a progress bar while computing.

    Attributes
    ----------
    fingerprint_ : str
        Hash of everything about the network and image policy that changes the
        embeddings (the cache key's first half).
    n_features_out_ : int
        The embedding dimension.

    Notes
    -----
    Accepted ``X``: a list of paths (``str`` or ``pathlib.Path``), of PIL images or of
    arrays; a 1-D array or pandas Series of paths; an ``(n, 1)`` array of paths (what
    ``ColumnTransformer`` passes for a list of one column); a DataFrame; an image array
    ``(n, height, width, 3)`` or ``(n, height, width)``, uint8 or float in 0-255. Labels
    are never read from ``X``: pass ``y`` to the pipeline.

    ``fit`` reads no image. An image that cannot be decoded makes ``transform`` raise
    :class:`~featx.images.DecodeError` naming it, since skipping it would misalign the
    rows with ``y``.

    Changing a parameter that changes the embeddings (``set_params`` or assignment)
    requires calling ``fit`` again: ``transform`` raises instead of returning vectors
    from another network than the fitted one.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from featx import EmbeddingTransformer
    >>> images = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    >>> labels = [0, 1, 0, 1, 0, 1]
    >>> embed = EmbeddingTransformer("MobileNetV2", weights=None, input_size=32, cache_dir=None)
    >>> model = make_pipeline(embed, LogisticRegression()).fit(images, labels)
    >>> model.predict(images).shape
    (6,)
    >>> embed.transform(images[:2]).shape
    (2, 1280)
    >>> embed.get_feature_names_out()[:2].tolist()
    ['embeddingtransformer0', 'embeddingtransformer1']
    """

    def __init__(
        self,
        backbone: str | os.PathLike | Backbone | Any = "MobileNetV2",
        weights: str | os.PathLike | None = "imagenet",
        input_size: int | tuple[int, int] | None = None,
        pooling: str | None = None,
        layer: str | None = None,
        resize: str | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = "auto",
        seed: int = 0,
        precision: str = "float32",
        path_column: str = "path",
        verbose: bool = False,
        tta: str | list[View | str | None] | None = None,
        tta_combine: str = "mean",
        augment: int | dict | AugmentPolicy | None = None,
        preprocess: Any = None,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.input_size = input_size
        self.pooling = pooling
        self.layer = layer
        self.resize = resize
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.seed = seed
        self.precision = precision
        self.path_column = path_column
        self.verbose = verbose
        self.tta = tta
        self.tta_combine = tta_combine
        self.augment = augment
        self.preprocess = preprocess

    def fit(self, X: Any, y: Any = None) -> EmbeddingTransformer:
        """Check the parameters and the kind of ``X``; read no image.

        The network is not built here for registry backbones (their dimension is known
        in advance); it is built on the first :meth:`transform`.

        Parameters
        ----------
        X : image inputs
            See the class Notes for what is accepted.
        y : ignored

        Returns
        -------
        self : EmbeddingTransformer
        """
        params = self._extractor_params()
        extractor = _combined(params)
        resolve_source(_rows(X, self.path_column))  # the kind of X, checked now: no image read
        self.fingerprint_ = extractor.fingerprint
        self.n_features_out_ = extractor.dim
        self._extractor = extractor
        self._extractor_built_with = params
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed every image of ``X``.

        Parameters
        ----------
        X : image inputs
            See the class Notes for what is accepted.

        Returns
        -------
        embeddings : ndarray of shape (n_images, n_features_out_), float32
            One row per row of ``X``, in the same order.

        Raises
        ------
        DecodeError
            For the first image that cannot be read or decoded.
        ValueError
            When a parameter that changes the embeddings was changed since ``fit``.
        """
        check_is_fitted(self)
        rows = _rows(X, self.path_column)
        return self._get_extractor().extract(rows, on_error="raise").X

    def embed(self, X: Any, on_error: str = "raise") -> Embeddings:
        """Embed every image of ``X`` as :class:`~featx.Embeddings`, which keep what failed.

        With ``on_error="skip"``, an image that cannot be read is left out: the result's
        ``index`` gives the row of ``X`` of each vector and ``failed`` the rest, with why.

        Examples
        --------
        >>> import os, tempfile
        >>> from PIL import Image
        >>> from featx import EmbeddingTransformer
        >>> folder = tempfile.mkdtemp()
        >>> Image.new("RGB", (40, 40)).save(os.path.join(folder, "a.png"))
        >>> paths = [os.path.join(folder, name) for name in ("a.png", "missing.png")]
        >>> embed = EmbeddingTransformer("VGG16", weights=None, input_size=32,
        ...                              cache_dir=None).fit(paths)
        >>> found = embed.embed(paths, on_error="skip")
        >>> found.X.shape, found.index.tolist(), os.path.basename(found.failed[0][0])
        ((1, 512), [0], 'missing.png')
        """
        check_is_fitted(self)
        rows = _rows(X, self.path_column)
        return self._get_extractor().extract(rows, on_error=on_error)

    def transform_copies(self, X: Any) -> list[np.ndarray]:
        """Embed the ``augment`` policy's copies of every image of ``X``.

        Returns
        -------
        list of ndarray of shape (n_images, n_features_out_)
            One array per copy index, rows aligned with :meth:`transform`'s. Stack them
            with :func:`featx.splits.stack_copies` and split by its groups.

        Examples
        --------
        >>> import numpy as np
        >>> from featx import EmbeddingTransformer
        >>> images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
        >>> embed = EmbeddingTransformer("MobileNetV2", weights=None, input_size=32,
        ...                              augment=2, cache_dir=None).fit(images)
        >>> [copy.shape for copy in embed.transform_copies(images)]
        [(3, 1280), (3, 1280)]
        """
        check_is_fitted(self)
        rows = _rows(X, self.path_column)
        return [e.X for e in self._get_extractor().extract_copies(rows, on_error="raise")]

    @property
    def _n_features_out(self) -> int:
        # What ClassNamePrefixFeaturesOutMixin.get_feature_names_out counts.
        return self.n_features_out_

    def _extractor_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*_NETWORK_PARAMS, *_OPTIONS)}

    def _get_extractor(self) -> CombinedExtractor:
        """The fitted extractor; rebuilt after unpickling or when parameters changed."""
        params = self._extractor_params()
        extractor = self.__dict__.get("_extractor")
        built_with = self.__dict__.get("_extractor_built_with")
        if extractor is not None and built_with is not None and _same_params(built_with, params):
            return extractor
        extractor = _combined(params)
        if extractor.fingerprint != self.fingerprint_:
            changed = (
                [k for k in params if not _same_value(built_with[k], params[k])]
                if built_with is not None
                else []
            )
            what = f" ({', '.join(changed)})" if changed else ""
            raise ValueError(
                f"This {type(self).__name__} was fitted with another network or image policy "
                f"than its parameters now give{what}: fingerprint {self.fingerprint_[:12]} at "
                f"fit, {extractor.fingerprint[:12]} now. Its parameters were changed since fit, "
                "or the model or weights file changed on disk. Call fit again."
            )
        self._extractor = extractor
        self._extractor_built_with = params
        return extractor

    def __getstate__(self) -> dict[str, Any]:
        # The Extractor holds the Keras model, compiled functions and a SQLite connection:
        # none belongs in a pickle, and all are rebuilt on the first transform.
        state = super().__getstate__()
        state.pop("_extractor", None)
        state.pop("_extractor_built_with", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Rows are images (paths or pixel arrays), not numeric feature vectors.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        # The output is float32 embeddings whatever the input dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags


def _combined(params: dict[str, Any]) -> CombinedExtractor:
    """One extractor for every size, layer and view the parameters ask for."""
    config = BackboneConfig(**{name: params[name] for name in _NETWORK_PARAMS})
    return CombinedExtractor(
        config.members(),
        tta=params["tta"],
        tta_combine=params["tta_combine"],
        augment=params["augment"],
        batch_size=params["batch_size"],
        cache_dir=params["cache_dir"],
        verbose=params["verbose"],
        on_error="raise",
    )


def _rows(X: Any, path_column: str) -> list[Any] | np.ndarray:
    """``X`` as a source of one image per row, without any labels it carries."""
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(
            f"X={X!r} is a single path; a transformer needs one row per image. Pass a list "
            "of image paths (for a class-per-folder tree, featx.Extractor.extract reads the "
            "folder and its labels)."
        )
    if _is_pandas(X, "DataFrame"):
        columns = list(X.columns)
        if path_column in columns:
            column = path_column
        elif len(columns) == 1:
            column = columns[0]
        else:
            raise ValueError(
                f"The DataFrame has no path column {path_column!r}; its columns are "
                f"{columns}. Pass path_column= naming the column of image paths, or select "
                "that one column (as ColumnTransformer does)."
            )
        return _checked(X[column].to_numpy(dtype=object), f"column {column!r}")
    if _is_pandas(X, "Series"):
        return _checked(X.to_numpy(dtype=object), "the Series")
    if isinstance(X, np.ndarray):
        if X.dtype.kind not in "OUS":
            return X  # an image array; featx.sources checks its shape
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise ValueError(
                f"An array of paths must have shape (n,) or (n, 1); got {X.shape}. Select the "
                "column of image paths."
            )
        return _checked(X, "X")
    if isinstance(X, (list, tuple)):
        return _checked(X, "X")
    raise TypeError(
        f"X of type {type(X).__name__} is not understood. Expected a list of image paths, a "
        "1-D array, Series or one-column DataFrame of paths, or an (n, height, width, 3) "
        "image array."
    )


def _checked(items: Any, where: str) -> list[Any]:
    """``items`` as a list, with a clear error for a missing path."""
    rows = list(items)
    for i, item in enumerate(rows):
        if item is None or isinstance(item, float) or type(item).__name__ == "NAType":
            raise ValueError(
                f"Row {i} of {where} is {item!r}, not an image path. Drop the rows without "
                "an image first."
            )
    return rows


def _is_pandas(obj: Any, kind: str) -> bool:
    return type(obj).__name__ == kind and type(obj).__module__.startswith("pandas")


def _same_value(a: Any, b: Any) -> bool:
    """Equal plain values, or the very same object (models and backbones have no equality)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (str, int, float, tuple, list, dict, os.PathLike, AugmentPolicy)):
        return a == b
    return False


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
