"""Export a featx classifier as one Keras model: uint8 RGB pixels in, class probabilities out.

The model is the classifier itself, as built-in Keras layers: the family's own
preprocessing (folded into one per-pixel affine layer, found by probing
``preprocess_input``), the frozen backbone with its layer and pooling, and the head with
its ``StandardScaler`` (the mean subtracted by a ``Normalization`` layer, the scale folded
into the first dense layer), ``normalize="l2"`` (a ``UnitNormalization`` layer) and PCA
folded into that dense layer too:

- logistic regression: ``Dense`` + softmax;
- the MLP: its dense stack;
- SGD (``loss="log_loss"``): scikit-learn's one-vs-rest probabilities, sigmoid(z) per class
  divided by their sum, written as softmax(-softplus(-z));
- the linear SVM (calibrated): per calibration fold, its decision function and Platt's
  sigmoid folded into one ``Dense`` (z = -(a f + b)), normalised as scikit-learn does
  (binary: [1 - p, p]; multiclass: divided by the sum, as above), the folds averaged
  (``Average``).

No ``Lambda`` and no custom layer, so the ``.keras`` file loads with ``safe_mode`` and
without featx. It runs where TensorFlow runs (TF Serving, TFLite), without featx or
scikit-learn, and as ONNX (tf2onnx 1.17 on TensorFlow 2.21, run by onnxruntime 1.32).
Inputs are images already resized to the classifier's input size, as featx resizes them
(Pillow, the classifier's ``resize`` mode), unless ``resize=True`` puts the resize in the
model.

Every export checks itself before it is written: the Keras head must give the
scikit-learn head's probabilities on sample embeddings within 1e-5, or the export fails.
A JSON file beside the model (``<path>.json``, inside the folder for a SavedModel) holds
the class names in output order, the input size and what made the model.

Heads that export: :data:`EXPORTABLE_HEADS`. Two heads of featx's table are refused,
by design rather than for now, with an error that names those that export:

- the RBF SVM (``"svm"``): its multiclass decision function counts one-vs-one votes, a
  step function of each pairwise decision, which no built-in Keras layer computes
  exactly (a steep sigmoid would only approximate it, and flip near ties); its
  support vectors (thousands per fold, three folds) would also make the model large. A
  binary RBF SVM has no votes and could export; it is refused too, to keep one rule;
- k-NN (``"knn"``): choosing the nearest training images is a top-k selection, which
  Keras offers only as an op (``keras.ops.top_k``), not as a layer that loads in
  ``safe_mode`` without a ``Lambda``.

A classifier on a keras-hub preset exports too: the converter's scale and offset become
the per-pixel affine layer, a ViT's class token is ``Cropping1D`` + ``Flatten`` and the
mean of its patch tokens ``Cropping1D`` past the class and register tokens +
``GlobalAveragePooling1D``. Its ``.keras`` file holds keras-hub's layers, so loading it
needs ``import keras_hub`` first (it still loads in ``safe_mode``, without featx); the
SavedModel, TFLite and ONNX files do not.

Classifiers over several sizes, layers or backbones, test-time views, or a precision
other than float32 do not export: each is refused with an error that
says so. ``UnitNormalization`` leaves an embedding whose squared norm is below 1e-12
unnormalised (scikit-learn's ``Normalizer`` does not); pretrained networks' embeddings are
many orders of magnitude longer, a random-weight MobileNetV2 at 32 px is not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXPORTABLE_HEADS",
    "EXPORT_FORMATS",
    "ONNX_OPSET",
    "QUANTIZATIONS",
    "REPRESENTATIVE_IMAGES",
    "export",
]

#: What :func:`export` writes: a ``.keras`` file, a TensorFlow SavedModel folder
#: (``keras.Model.export``), a ``.tflite`` flatbuffer (TensorFlow's converter), or an
#: ``.onnx`` file (the SavedModel converted by tf2onnx: ``pip install "featx[onnx]"``).
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "onnx")
#: The ONNX opset :func:`export` writes (onnxruntime 1.17 and later run it).
ONNX_OPSET = 17
#: The head kinds whose fitted classifier becomes Keras layers.
EXPORTABLE_HEADS = ("logreg", "linear-svm", "mlp", "sgd")
#: TFLite quantisations: none (float32), dynamic-range (weights stored as int8), or full
#: integer (weights and activations int8, calibrated on representative images).
QUANTIZATIONS = (None, "dynamic", "int8")
#: At most this many representative images calibrate an int8 model (a seeded sample).
REPRESENTATIVE_IMAGES = 200
_HEAD_TOLERANCE = 1e-5


def export(
    classifier: Any,
    path: str | os.PathLike,
    *,
    format: str = "keras",
    quantize: str | None = None,
    resize: bool = False,
    representative: Any = None,
) -> dict[str, Any]:
    """Write ``classifier`` (from :func:`featx.fit_classifier` or ``load_classifier``) as
    one model that maps a batch of uint8 RGB images to class probabilities.

    Parameters
    ----------
    path : path
        A ``.keras`` file, a SavedModel folder, a ``.tflite`` or an ``.onnx`` file, by
        ``format``.
    format : {"keras", "savedmodel", "tflite", "onnx"}
        ``"onnx"`` needs ``pip install "featx[onnx]"`` (tf2onnx, onnx); the model's input
        is ``pixels`` (uint8), its output ``probabilities``, opset :data:`ONNX_OPSET`.
    quantize : {None, "dynamic", "int8"}
        TFLite only: ``"dynamic"`` stores the weights as int8 (about 4x smaller);
        ``"int8"`` quantises weights and activations (full-integer kernels, uint8 input,
        float32 probabilities out), calibrated on ``representative``. Their probabilities
        are not featx's: measure the accuracy on your validation images before you ship
        one (on a random-weight MobileNetV2 they predict one class).
    resize : bool, default False
        Take uint8 RGB images of any size (input shape ``(None, None, 3)``, one size per
        batch) and resize them inside the model (``keras.layers.Resizing``, bilinear with
        antialiasing; ``crop_to_aspect_ratio`` for a ``resize="center_crop"`` classifier).
        Keras and SavedModel only: TFLite has no antialiased resize.
        This is not Pillow's resize, nor featx's JPEG draft decoding: on 50 clothing10
        test photos with the shared MobileNetV2 weights and a logistic regression it
        moved probabilities by at most 0.162 (mean 0.0027) from featx's and kept
        all 50 argmaxes (``benchmarks/export_bench.py``).
    representative : folder, list of image paths, or uint8 array (N, H, W, 3)
        Required for ``quantize="int8"``: images like those the model will see (the
        training images). At most :data:`REPRESENTATIVE_IMAGES` are used, a seeded sample.

    Returns
    -------
    dict
        ``path``, ``format``, ``bytes``, ``metadata`` (the JSON file's path), ``classes``,
        ``input_size`` and ``head_max_difference`` (the self-check's largest difference).

    Raises
    ------
    ValueError, TypeError
        For a classifier that cannot be exported (the message says what and which can),
        an unknown format or quantisation, or a path that does not fit the format.
    OSError
        For a path that cannot be written (its folder missing, a file, or read-only; a
        folder where a file goes), before the model is built. A write that fails midway
        leaves nothing behind.
    """
    import keras

    path = _check_arguments(path, format, quantize, resize, representative)
    transformer, head = _parts(classifier)
    config, backbone = _backbone(transformer)
    height, width = backbone.input_size
    # The extractor's rule: the resize given, else the backbone's own (a preset's
    # converter), else stretch.
    policy = transformer.resize or getattr(backbone, "resize", None) or "stretch"
    classes = [str(c) for c in classifier.classes_]
    calibration = None
    if quantize == "int8":
        calibration = _representative_pixels(representative, (height, width), policy)

    pixels = keras.Input(
        (None, None, 3) if resize else (height, width, 3), dtype="uint8", name="pixels"
    )
    if resize:
        # Antialiased bilinear, as Pillow's reduction is: without antialiasing, the
        # clothing10 photos' 160 px pixels moved by 4.1 on average against featx's, 1.1 with.
        x = keras.layers.Resizing(
            height,
            width,
            antialias=True,
            crop_to_aspect_ratio=policy == "center_crop",
            name="resize",
        )(pixels)
    else:
        # Rescaling casts its input to float32 (scale 1: the pixels stay 0-255). No Lambda
        # or custom layer anywhere, so Keras' safe_mode loads the file without featx.
        x = keras.layers.Rescaling(1.0, name="to_float")(pixels)
    x = _pixel_affine_layer(_preprocess_affine(config, backbone))(x)
    network = backbone.model
    network.trainable = False
    x = _pool(backbone, network(x, training=False))
    keras_head = _head_model(head, len(classes), x.shape[-1])
    difference = _check_head(head, keras_head)
    model = keras.Model(pixels, keras_head(x), name="featx_classifier")

    size_text = "any size (resized inside the model" if resize else f"{height}x{width}"
    how = (
        f"by keras.layers.Resizing to {height}x{width}, antialiased bilinear, {policy})"
        if resize
        else f", resized as featx does (Pillow, resize={policy!r})"
    )
    metadata = {
        "classes": classes,
        "input_size": [height, width],
        "input": (
            f"uint8 RGB images of {size_text}{how}; output: probabilities in the order of classes"
        ),
        "resize": resize,
        "backbone": backbone.name,
        "pooling": backbone.pooling,
        "layer": config.layer[0],
        "head": type(head[-1]).__name__,
        "format": format,
        "quantize": quantize,
    }
    from featx import __version__

    metadata["featx"] = __version__
    meta_path = _write(model, path, format, quantize, calibration, metadata)
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


def _check_arguments(
    path: str | os.PathLike, format: str, quantize: str | None, resize: bool, representative: Any
) -> Path:
    """Every refusal that needs no model, before the backbone is built: the arguments and
    whether ``path`` can be written."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not supported. Expected one of {EXPORT_FORMATS}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"quantize={quantize!r} is not supported. Expected one of {QUANTIZATIONS}."
        )
    if quantize is not None and format != "tflite":
        raise ValueError(f"quantize={quantize!r} applies to format='tflite' only.")
    if quantize == "int8" and representative is None:
        raise ValueError(
            "quantize='int8' calibrates on representative images: pass representative= a "
            "folder, a list of image paths or a uint8 array of training images (CLI: "
            "--representative DIR)."
        )
    if representative is not None and quantize != "int8":
        raise ValueError("representative= calibrates quantize='int8' only.")
    if not isinstance(resize, bool):
        raise TypeError(f"resize={resize!r}: expected True or False.")
    if resize and format in ("tflite", "onnx"):
        raise ValueError(
            f"resize=True does not export to format={format!r}: antialiased resizing (what "
            "brings Keras' Resizing close to featx's Pillow resize) is TensorFlow's "
            "ScaleAndTranslate, which neither TFLite nor ONNX has. Resize to the "
            "classifier's input size before the model, or export format='keras' or "
            "'savedmodel' with resize."
        )
    path = Path(path)
    suffix = {"keras": ".keras", "tflite": ".tflite", "onnx": ".onnx"}.get(format)
    if suffix and path.suffix != suffix:
        raise ValueError(
            f"format={format!r} writes a {suffix} file; {str(path)!r} does not end so."
        )
    parent = path.parent
    if not parent.is_dir():
        what = "is a file" if parent.exists() else "does not exist"
        raise OSError(f"Cannot write {str(path)!r}: its folder {str(parent)!r} {what}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"Cannot write {str(path)!r}: its folder {str(parent)!r} is not writable.")
    if path.is_dir() and format != "savedmodel":
        raise OSError(f"Cannot write {str(path)!r}: it is a folder.")
    if format == "savedmodel" and path.exists() and not path.is_dir():
        raise OSError(f"Cannot write the SavedModel folder {str(path)!r}: it is a file.")
    return path


def _write(
    model: Any,
    path: Path,
    format: str,
    quantize: str | None,
    calibration: np.ndarray | None,
    metadata: dict[str, Any],
) -> Path:
    """Write the model and its metadata under temporary names, then move them into
    place: a failed export leaves nothing behind, not even a partial file."""
    import shutil

    meta = json.dumps(metadata, indent=2).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if format == "keras":
            tmp = tmp.with_suffix(".keras")  # Keras insists on the suffix
            model.save(tmp)
        elif format == "savedmodel":
            model.export(str(tmp), verbose=False)
            (tmp / "featx.json").write_bytes(meta)
        elif format == "onnx":
            tmp.write_bytes(_onnx(model))
        else:
            tmp.write_bytes(_tflite(model, quantize, calibration))
        if format == "savedmodel":
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
            return path / "featx.json"
        meta_path = path.with_name(path.name + ".json")
        _write_atomic(meta_path, meta)
        os.replace(tmp, path)
        return meta_path
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _representative_pixels(source: Any, size: tuple[int, int], policy: str) -> np.ndarray:
    """Up to :data:`REPRESENTATIVE_IMAGES` of ``source`` as featx's pixels of ``size``."""
    from featx._pipeline import read_file
    from featx.images import array_to_rgb, decode
    from featx.sources import resolve_source

    images = resolve_source(source)
    chosen = np.arange(len(images))
    if len(chosen) > REPRESENTATIVE_IMAGES:
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(chosen, REPRESENTATIVE_IMAGES, replace=False))
    pixels = []
    for i in chosen:
        item, name = images.inputs[i], images.names[i]
        if isinstance(item, str):
            pixels.append(decode(read_file(item), size, resize=policy, name=name))
        else:
            pixels.append(array_to_rgb(np.asarray(item), size, resize=policy, name=name))
    return np.stack(pixels)


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
    backbone = resolve_backbone(config.backbone[0], **config.network_kwargs())
    if not isinstance(backbone, KerasBackbone):
        raise ValueError(
            f"The classifier's backbone {backbone.name!r} is not a Keras network, so there "
            "is no model to export."
        )
    return config, backbone


def _pool(backbone: Any, x: Any) -> Any:
    """The backbone's pooling as built-in layers: a feature map's global average and max,
    a token sequence's class token (``Cropping1D`` + ``Flatten``) and mean of the patch
    tokens (``Cropping1D`` past the class and register tokens + ``GlobalAveragePooling1D``)."""
    import keras

    if len(x.shape) == 2:  # a pooled embedding already (CLIP, SigLIP towers; pooling=None)
        return x
    names = backbone.pooling.split("+")
    if len(x.shape) == 4:
        layers = {
            "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D,
        }
        pooled = [layers[name](name=f"pool_{name}")(x) for name in names]
    else:
        tokens = x.shape[1]
        pooled = []
        for name in names:
            if name == "cls":
                first = keras.layers.Cropping1D((0, tokens - 1), name="class_token")(x)
                pooled.append(keras.layers.Flatten(name="pool_cls")(first))
            else:
                patches = keras.layers.Cropping1D((backbone.token_prefix, 0), name="patches")(x)
                pooled.append(keras.layers.GlobalAveragePooling1D(name="pool_mean")(patches))
    return keras.layers.Concatenate(name="pool")(pooled) if len(pooled) > 1 else pooled[0]


def _preprocess_affine(config: Any, backbone: Any) -> tuple[np.ndarray, np.ndarray]:
    """The family's ``preprocess_input`` (a preset's converter) as ``y = x @ kernel + bias``
    per pixel.

    Every keras.applications family preprocesses each pixel by an affine map of its RGB
    values (scaling, mean and std, the caffe families' RGB->BGR flip): probed on the unit
    colours and checked on random pixels, or refused. A keras-hub converter multiplies by
    its scale and adds its offset (each a number or one per channel).
    """
    from featx.backbones import HubBackbone, get_spec

    if isinstance(backbone, HubBackbone):
        converter = backbone.converter
        scale = np.ones(3) if converter.scale is None else converter.scale
        offset = np.zeros(3) if converter.offset is None else converter.offset
        kernel = np.diag(np.broadcast_to(np.asarray(scale, np.float64), (3,)))
        bias = np.broadcast_to(np.asarray(offset, np.float64), (3,))
        return kernel.astype(np.float32), bias.astype(np.float32)
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


def _pixel_affine_layer(weights: tuple[np.ndarray, np.ndarray]) -> Any:
    """The per-pixel affine map as a 1x1 convolution: a ``Dense`` on images becomes
    reshapes around a matrix product in TFLite, with dynamic-shape ops that the int8
    XNNPACK delegate refuses to prepare."""
    import keras

    kernel, bias = weights
    layer = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    return layer


def _affine_layer(weights: tuple[np.ndarray, np.ndarray], name: str) -> Any:
    import keras

    kernel, bias = weights
    layer = keras.layers.Dense(kernel.shape[1], name=name, trainable=False)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, bias])
    return layer


def _head_model(head: Any, n_classes: int, dim: int) -> Any:
    """The fitted head as a Keras model of built-in layers (embedding in, probabilities
    out), its scaler and PCA folded into the first dense layer of every branch."""
    import keras
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import Normalizer, StandardScaler

    embedding = keras.Input((dim,), name="embedding")
    x = embedding
    prefix: tuple[np.ndarray, np.ndarray] | None = None  # affine map not yet in a layer
    *transforms, clf = [step for _, step in head.steps]
    for step in transforms:
        if isinstance(step, Normalizer) and step.norm == "l2" and prefix is None:
            x = keras.layers.UnitNormalization(name="l2")(x)
        elif isinstance(step, StandardScaler):
            mean = step.mean_ if step.with_mean else np.zeros(step.n_features_in_)
            scale = step.scale_ if step.with_std else np.ones(step.n_features_in_)
            if prefix is None:
                # Subtract the mean in its own layer, exactly, before any product: folded
                # into the dense layer's bias it cancels against x @ kernel in float32 and
                # loses digits wherever a feature's mean is large against its spread.
                x = keras.layers.Normalization(
                    mean=mean.astype(np.float32), variance=np.ones_like(mean), name="center"
                )(x)
                mean = np.zeros_like(mean)
            prefix = _compose(prefix, np.diag(1.0 / scale), -mean / scale)
        elif isinstance(step, PCA):
            k = step.components_.T
            if step.whiten:
                k = k / np.sqrt(step.explained_variance_)
            prefix = _compose(prefix, k, -step.mean_ @ k)
        else:
            raise ValueError(_not_exportable(f"a {type(step).__name__} step in its head"))

    if isinstance(clf, LogisticRegression):
        out = _softmax_output(x, prefix, clf.coef_.T, clf.intercept_, n_classes, "logits")
    elif isinstance(clf, MLPClassifier):
        activations = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": None}
        if clf.activation not in activations:
            raise ValueError(_not_exportable(f"an MLP head with activation={clf.activation!r}"))
        for i, (k, b) in enumerate(zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True)):
            x = _dense(x, _compose(prefix, k, b), f"hidden_{i + 1}", activations[clf.activation])
            prefix = None
        out = _softmax_output(x, prefix, clf.coefs_[-1], clf.intercepts_[-1], n_classes, "logits")
    elif isinstance(clf, SGDClassifier) and clf.loss == "log_loss":
        out = _ovr_sigmoid_output(x, prefix, clf.coef_.T, clf.intercept_, n_classes, "logits")
    elif isinstance(clf, CalibratedClassifierCV) and clf.method == "sigmoid":
        out = _calibrated_output(x, prefix, clf, n_classes)
    else:
        raise ValueError(_not_exportable(_head_name(clf)))
    return keras.Model(embedding, out, name="head")


def _compose(
    first: tuple[np.ndarray, np.ndarray] | None, kernel: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``first`` followed by ``x @ kernel + bias``, in float64."""
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    if first is None:
        return kernel, bias
    return first[0] @ kernel, first[1] @ kernel + bias


def _dense(x: Any, weights: tuple[np.ndarray, np.ndarray], name: str, activation=None) -> Any:
    import keras

    kernel, bias = weights
    x = _affine_layer((kernel.astype(np.float32), bias.astype(np.float32)), name)(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def _softmax_output(x, prefix, kernel, bias, n_classes: int, name: str) -> Any:
    """softmax(x @ kernel + bias); a binary model's one column z gives softmax([0, z]),
    which is [1 - sigmoid(z), sigmoid(z)]."""
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    if kernel.shape[1] == 1 and n_classes == 2:
        kernel = np.hstack([np.zeros_like(kernel), kernel])
        bias = np.concatenate([np.zeros(1), bias])
    return _dense(x, _compose(prefix, kernel, bias), name, "softmax")


def _ovr_sigmoid_output(x, prefix, kernel, bias, n_classes: int, name: str) -> Any:
    """scikit-learn's one-vs-rest probabilities: sigmoid(z) per class divided by their
    sum, written as softmax(log sigmoid(z)) = softmax(-softplus(-z)) (built-in layers
    only, and no division by a sum that can underflow)."""
    import keras

    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    if kernel.shape[1] == 1 and n_classes == 2:
        return _softmax_output(x, prefix, kernel, bias, n_classes, name)
    x = _dense(x, _compose(prefix, -kernel, -bias), name, "softplus")
    x = keras.layers.Rescaling(-1.0, name=f"{name}_log_sigmoid")(x)
    return keras.layers.Activation("softmax", name=f"{name}_normalise")(x)


def _calibrated_output(x, prefix, clf: Any, n_classes: int) -> Any:
    """CalibratedClassifierCV(method="sigmoid") over a linear model, as scikit-learn
    computes it: per fold, the decision function f = x @ w + w0, Platt's
    p = sigmoid(-(a f + b)) per class, normalised (binary: [1 - p, p]; otherwise divided
    by the sum); the folds' probabilities averaged."""
    import keras

    branches = []
    for i, fold in enumerate(clf.calibrated_classifiers_):
        estimator = fold.estimator
        if not _is_linear(estimator):
            raise ValueError(_not_exportable(_head_name(clf)))
        coef = np.asarray(estimator.coef_, np.float64).T
        intercept = np.asarray(estimator.intercept_, np.float64)
        a = np.array([c.a_ for c in fold.calibrators], np.float64)
        b = np.array([c.b_ for c in fold.calibrators], np.float64)
        # z = -(a f + b): the calibrated logit of each of the fold's columns.
        kernel, bias = -coef * a, -(intercept * a + b)
        if n_classes == 2:
            branch = _softmax_output(x, prefix, kernel, bias, 2, f"fold_{i + 1}")
        else:
            # A class the fold never saw keeps probability 0 in scikit-learn: its logit is
            # a constant that vanishes in the softmax.
            columns = np.searchsorted(clf.classes_, estimator.classes_)
            full_kernel = np.zeros((kernel.shape[0], n_classes))
            full_bias = np.full(n_classes, -1e4)
            full_kernel[:, columns], full_bias[columns] = kernel, bias
            branch = _ovr_sigmoid_output(
                x, prefix, full_kernel, full_bias, n_classes, f"fold_{i + 1}"
            )
        branches.append(branch)
    if len(branches) == 1:
        return branches[0]
    return keras.layers.Average(name="folds")(branches)


def _is_linear(estimator: Any) -> bool:
    """A linear decision function x @ coef_.T + intercept_ (LinearSVC, logistic
    regression, SGD; not an SVC, whose coef_ exists only for a linear kernel)."""
    from sklearn.svm import SVC

    return hasattr(estimator, "coef_") and not isinstance(estimator, SVC)


def _head_name(clf: Any) -> str:
    inner = getattr(clf, "estimator", None)
    if inner is None:
        return f"the {type(clf).__name__} head"
    kernel = getattr(inner, "kernel", None)
    inner_name = f"{kernel}-kernel {type(inner).__name__}" if kernel else type(inner).__name__
    return f"the {type(clf).__name__}({inner_name}) head"


def _not_exportable(what: str) -> str:
    return (
        f"The classifier has {what}, which does not export. Heads that export: "
        f"{', '.join(EXPORTABLE_HEADS)} (with normalize='l2' and pca= folded in). Fit one "
        "of them to export a model (featx train --head logreg)."
    )


def _check_head(head: Any, keras_head: Any) -> float:
    """Largest difference of the Keras head from the scikit-learn head on sample
    embeddings (drawn around the scaler's mean and spread); raises above tolerance."""
    rng = np.random.default_rng(0)
    dim = keras_head.input.shape[-1]
    scaler = head.named_steps.get("scale")
    mean = getattr(scaler, "mean_", np.zeros(dim))
    spread = getattr(scaler, "scale_", np.ones(dim))
    sample = (mean + spread * rng.normal(size=(64, dim))).astype(np.float32)
    got = np.asarray(keras_head.predict(sample, verbose=0), dtype=np.float64)
    difference = float(np.abs(got - head.predict_proba(sample)).max())
    if difference > _HEAD_TOLERANCE:
        raise RuntimeError(
            f"The exported head differs from the classifier's by {difference:.2g} in "
            f"probability (tolerance {_HEAD_TOLERANCE:g}); nothing was written. Please "
            "report this with the head's parameters."
        )
    return difference


def _tflite(model: Any, quantize: str | None, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":

        def representative_dataset():
            for image in calibration:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
        # Full integer: every op must have an int8 kernel, or the conversion fails (no
        # silent float fallback). The uint8 pixels go in as they are; probabilities come
        # out as float32.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def _onnx(model: Any) -> bytes:
    """The model as ONNX: its SavedModel, frozen and converted by tf2onnx (converting the
    Keras model or a tf.function left the Normalization layer's statistics as inputs)."""
    import tempfile

    try:
        import tf2onnx
        from tf2onnx import tf_loader
    except ImportError as exc:
        raise ImportError(
            f"format='onnx' needs tf2onnx and onnx ({exc}). Install them with: "
            'pip install "featx[onnx]"'
        ) from None
    with tempfile.TemporaryDirectory(prefix="featx-onnx-") as folder:
        model.export(folder, verbose=False)
        graph_def, inputs, outputs = tf_loader.from_saved_model(
            folder, None, None, tag="serve", signatures=["serving_default"]
        )
    proto, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=inputs,
        output_names=outputs,
        opset=ONNX_OPSET,
        tensors_to_rename={inputs[0]: "pixels", outputs[0]: "probabilities"},
    )
    return proto.SerializeToString()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
