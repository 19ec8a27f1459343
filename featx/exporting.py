"""Export a featx classifier as one Keras model: uint8 RGB pixels in, class probabilities out.

The model is the classifier itself, as Keras layers: the family's own preprocessing
(folded into one per-pixel affine layer, found by probing ``preprocess_input``), the
frozen backbone with its layer and pooling, and the head with its ``StandardScaler``,
``normalize="l2"`` (a ``UnitNormalization`` layer) and PCA folded into the weights of
its first dense layer: logistic regression as ``Dense`` + softmax, the MLP as its dense
stack. It runs where TensorFlow runs (TF Serving, TFLite), without featx or
scikit-learn. Inputs are images already resized to the classifier's input size, as
featx resizes them (Pillow, the classifier's ``resize`` mode).

Every export checks itself before it is written: the Keras head must give the
scikit-learn head's probabilities on sample embeddings within 1e-5, or the export fails.
A JSON file beside the model (``<path>.json``, inside the folder for a SavedModel) holds
the class names in output order, the input size and what made the model.

Heads that export: :data:`EXPORTABLE_HEADS`. The SVMs and SGD (calibrated ensembles) and
k-NN do not yet, nor classifiers over several sizes, layers or backbones, test-time
views, or a precision other than float32: each is refused with an error that says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXPORTABLE_HEADS", "EXPORT_FORMATS", "QUANTIZATIONS", "export"]

#: What :func:`export` writes: a ``.keras`` file, a TensorFlow SavedModel folder
#: (``keras.Model.export``), or a ``.tflite`` flatbuffer (TensorFlow's converter).
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
#: The head kinds whose fitted classifier becomes Keras layers.
EXPORTABLE_HEADS = ("logreg", "mlp")
#: TFLite quantisations: none (float32) or dynamic-range (weights stored as int8).
QUANTIZATIONS = (None, "dynamic")
_HEAD_TOLERANCE = 1e-5


def export(
    classifier: Any,
    path: str | os.PathLike,
    *,
    format: str = "keras",
    quantize: str | None = None,
) -> dict[str, Any]:
    """Write ``classifier`` (from :func:`featx.fit_classifier` or ``load_classifier``) as
    one model that maps a batch of uint8 RGB images to class probabilities.

    Parameters
    ----------
    path : path
        A ``.keras`` file, a SavedModel folder, or a ``.tflite`` file, by ``format``.
    format : {"keras", "savedmodel", "tflite"}
    quantize : {None, "dynamic"}
        TFLite only: ``"dynamic"`` stores the weights as int8 (about 4x smaller). Its
        probabilities are not featx's: measure its accuracy on your validation images
        before you ship it (on a random-weight MobileNetV2 it predicts one class).

    Returns
    -------
    dict
        ``path``, ``format``, ``bytes``, ``metadata`` (the JSON file's path), ``classes``,
        ``input_size`` and ``head_max_difference`` (the self-check's largest difference).

    Raises
    ------
    ValueError, TypeError
        For a classifier that cannot be exported (the message says what and which can),
        an unknown format, or a path that does not fit the format.
    """
    import keras

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not supported. Expected one of {EXPORT_FORMATS}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize={quantize!r} is not supported. Expected one of {QUANTIZATIONS}."
        )
    if quantize is not None and format != "tflite":
        raise ValueError(f"quantize={quantize!r} applies to format='tflite' only.")
    path = Path(path)
    suffix = {"keras": ".keras", "tflite": ".tflite"}.get(format)
    if suffix and path.suffix != suffix:
        raise ValueError(
            f"format={format!r} writes a {suffix} file; {str(path)!r} does not end so."
        )
    transformer, head = _parts(classifier)
    config, backbone = _backbone(transformer)
    height, width = backbone.input_size
    classes = [str(c) for c in classifier.classes_]

    pixels = keras.Input((height, width, 3), dtype="uint8", name="pixels")
    # Rescaling casts its input to float32 (scale 1: the pixels stay 0-255). No Lambda
    # or custom layer anywhere, so Keras' safe_mode loads the file without featx.
    x = keras.layers.Rescaling(1.0, name="to_float")(pixels)
    x = _affine_layer(_preprocess_affine(config), "preprocess")(x)
    network = backbone.model
    network.trainable = False
    x = network(x, training=False)
    if len(x.shape) > 2:
        pooled = [
            layer(name=f"pool_{name}")(x)
            for name, layer in (
                ("avg", keras.layers.GlobalAveragePooling2D),
                ("max", keras.layers.GlobalMaxPooling2D),
            )
            if name in backbone.pooling.split("+")
        ]
        x = keras.layers.Concatenate(name="pool")(pooled) if len(pooled) > 1 else pooled[0]
    embedding = keras.Model(pixels, x, name="embedding")
    head_layers = _head_layers(head, len(classes))
    probabilities = _apply(head_layers, embedding.output)
    model = keras.Model(pixels, probabilities, name="featx_classifier")
    difference = _check_head(head, head_layers, embedding.output.shape[-1])

    metadata = {
        "classes": classes,
        "input_size": [height, width],
        "input": (
            f"uint8 RGB images of {height}x{width}, resized as featx does (Pillow, "
            f"resize={transformer.resize or 'stretch'!r}); output: probabilities in the order "
            "of classes"
        ),
        "backbone": backbone.name,
        "pooling": backbone.pooling,
        "layer": config.layer[0],
        "head": type(head[-1]).__name__,
        "format": format,
        "quantize": quantize,
    }
    from featx import __version__

    metadata["featx"] = __version__
    if format == "keras":
        model.save(path)
        meta_path = path.with_name(path.name + ".json")
    elif format == "savedmodel":
        model.export(str(path), verbose=False)
        meta_path = path / "featx.json"
    else:
        meta_path = path.with_name(path.name + ".json")
        _write_atomic(path, _tflite(model, quantize))
    _write_atomic(meta_path, json.dumps(metadata, indent=2).encode())
    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    return {
        "path": str(path),
        "format": format,
        "bytes": size,
        "metadata": str(meta_path),
        "classes": classes,
        "input_size": [height, width],
        "head_max_difference": difference,
    }


def _parts(classifier: Any) -> tuple[Any, Any]:
    from featx.transformer import EmbeddingTransformer

    steps = getattr(classifier, "steps", None)
    if not steps or not isinstance(steps[0][1], EmbeddingTransformer) or len(steps) < 2:
        raise TypeError(
            f"classifier is a {type(classifier).__name__}; export needs a featx classifier, "
            "Pipeline(EmbeddingTransformer, head), from fit_classifier or load_classifier."
        )
    transformer = steps[0][1]
    if transformer.tta is not None:
        raise ValueError(
            f"The classifier embeds test-time views (tta={transformer.tta!r}), which do not "
            "export yet. Fit it without tta= to export it."
        )
    head = classifier[1:]
    if len(head) == 1 and hasattr(head[0], "steps"):
        head = head[0]  # make_head's own pipeline inside the classifier's
    return transformer, head


def _backbone(transformer: Any) -> tuple[Any, Any]:
    from featx.backbones import KerasBackbone, resolve_backbone
    from featx.config import CONFIG_KEYS, BackboneConfig
    from featx.hub import is_hub_name

    params = transformer.get_params()
    config = BackboneConfig(**{k: params[k] for k in CONFIG_KEYS if k != "label"})
    if not config.is_single:
        raise ValueError(
            f"The classifier concatenates {len(config.members())} representations (several "
            "sizes, layers or backbones), which do not export yet: one exported model is one "
            "network at one size. Fit it with one backbone, input size and layer to export it."
        )
    if config.precision != "float32":
        raise ValueError(
            f"The classifier's backbone computes in {config.precision}; only float32 exports."
        )
    if is_hub_name(config.backbone[0]):
        raise ValueError(
            f"The classifier embeds with the keras-hub preset {config.backbone[0]!r}, which "
            "does not export yet (its converter and token pooling are not folded into the "
            "exported model). Export a classifier on a registry backbone or your own model."
        )
    backbone = resolve_backbone(config.backbone[0], **config.network_kwargs())
    if not isinstance(backbone, KerasBackbone):
        raise ValueError(
            f"The classifier's backbone {backbone.name!r} is not a Keras network, so there "
            "is no model to export."
        )
    return config, backbone


def _preprocess_affine(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """The family's ``preprocess_input`` as ``y = x @ kernel + bias`` per pixel.

    Every keras.applications family preprocesses each pixel by an affine map of its RGB
    values (scaling, mean and std, the caffe families' RGB->BGR flip): probed on the unit
    colours and checked on random pixels, or refused.
    """
    from featx.backbones import get_spec

    name = config.backbone[0]
    if not isinstance(name, str) or Path(name).suffix in (".keras", ".h5"):
        return np.eye(3, dtype=np.float32), np.zeros(3, np.float32)  # a model file: as is
    preprocess = get_spec(name).preprocess_input()

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(preprocess(x.astype(np.float32).copy()), dtype=np.float64)

    probes = np.zeros((4, 1, 1, 3), np.float32)
    probes[1:, 0, 0] = 100.0 * np.eye(3)
    out = run(probes)[:, 0, 0]
    bias = out[0]
    kernel = (out[1:] - bias) / 100.0  # row j: the output of a unit of input channel j
    rng = np.random.default_rng(0)
    sample = rng.uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = run(sample)
    if np.abs(sample.astype(np.float64) @ kernel + bias - expected).max() > 1e-3:
        raise ValueError(
            f"The {name} family's preprocess_input is not a per-pixel affine map of the RGB "
            "values, so it cannot be folded into the exported model."
        )
    return kernel.astype(np.float32), bias.astype(np.float32)


def _affine_layer(weights: tuple[np.ndarray, np.ndarray], name: str) -> Any:
    import keras

    kernel, bias = weights
    layer = keras.layers.Dense(kernel.shape[1], name=name, trainable=False)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, bias])
    return layer


def _head_layers(head: Any, n_classes: int) -> list[Any]:
    """The fitted head as Keras layers, its scaler and PCA folded into the first dense."""
    import keras
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import Normalizer, StandardScaler

    layers: list[Any] = []
    kernel: np.ndarray | None = None  # the affine map z = x @ kernel + bias so far
    bias: np.ndarray | None = None

    def compose(k: np.ndarray, b: np.ndarray) -> None:
        nonlocal kernel, bias
        k, b = k.astype(np.float64), b.astype(np.float64)
        if kernel is None:
            kernel, bias = k, b
        else:
            kernel, bias = kernel @ k, bias @ k + b

    *transforms, clf = [step for _, step in head.steps]
    for step in transforms:
        if isinstance(step, Normalizer) and step.norm == "l2" and kernel is None:
            layers.append(keras.layers.UnitNormalization(name="l2"))
        elif isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean else np.zeros(step.n_features_in_)
            scale = step.scale_ if step.with_std else np.ones(step.n_features_in_)
            compose(np.diag(1.0 / scale), -mean / scale)
        elif isinstance(step, PCA):
            k = step.components_.T
            if step.whiten:
                k = k / np.sqrt(step.explained_variance_)
            compose(k, -step.mean_ @ k)
        else:
            raise ValueError(_not_exportable(f"a {type(step).__name__} step"))

    def dense(k: np.ndarray, b: np.ndarray, name: str, activation: str | None = None) -> None:
        nonlocal kernel, bias
        compose(k, b)
        layers.append(_affine_layer((kernel.astype(np.float32), bias.astype(np.float32)), name))
        if activation is not None:
            layers.append(keras.layers.Activation(activation, name=f"{name}_{activation}"))
        kernel = bias = None

    def output(k: np.ndarray, b: np.ndarray) -> None:
        if k.shape[1] == 1 and n_classes == 2:  # binary: [1 - s(z), s(z)] = softmax([0, z])
            k = np.hstack([np.zeros_like(k), k])
            b = np.concatenate([np.zeros(1), b])
        dense(k, b, "logits", "softmax")

    if isinstance(clf, LogisticRegression):
        output(clf.coef_.T, clf.intercept_)
    elif isinstance(clf, MLPClassifier):
        activations = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": None}
        if clf.activation not in activations:
            raise ValueError(_not_exportable(f"an MLP with activation={clf.activation!r}"))
        for i, (k, b) in enumerate(zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True)):
            dense(k, b, f"hidden_{i + 1}", activations[clf.activation])
        output(clf.coefs_[-1], clf.intercepts_[-1])
    else:
        raise ValueError(_not_exportable(f"the {type(clf).__name__} head"))
    return layers


def _not_exportable(what: str) -> str:
    return (
        f"The classifier's head has {what}, which does not export yet. Heads that export: "
        f"{', '.join(EXPORTABLE_HEADS)} (with normalize='l2' and pca= folded in). Fit one "
        "of them to export a model (featx train --head logreg)."
    )


def _apply(layers: list[Any], x: Any) -> Any:
    for layer in layers:
        x = layer(x)
    return x


def _check_head(head: Any, layers: list[Any], dim: int) -> float:
    """Largest difference of the Keras head from the scikit-learn head on sample
    embeddings (drawn around the scaler's mean and spread); raises above tolerance."""
    import keras

    rng = np.random.default_rng(0)
    scaler = head.named_steps.get("scale")
    mean = getattr(scaler, "mean_", np.zeros(dim))
    spread = getattr(scaler, "scale_", np.ones(dim))
    sample = (mean + spread * rng.normal(size=(64, dim))).astype(np.float32)
    x = keras.Input((dim,))
    keras_head = keras.Model(x, _apply(layers, x))
    got = np.asarray(keras_head.predict(sample, verbose=0), dtype=np.float64)
    difference = float(np.abs(got - head.predict_proba(sample)).max())
    if difference > _HEAD_TOLERANCE:
        raise RuntimeError(
            f"The exported head differs from the classifier's by {difference:.2g} in "
            f"probability (tolerance {_HEAD_TOLERANCE:g}); nothing was written. Please "
            "report this with the head's parameters."
        )
    return difference


def _tflite(model: Any, quantize: str | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
