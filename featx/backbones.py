"""The backbone registry: every ``keras.applications`` model, with its own preprocessing.

Each :class:`BackboneSpec` is one row of a table: Keras name, the
``keras.applications`` submodule whose ``preprocess_input`` belongs to it,
default and minimum input size, and the embedding dimension of its last
convolutional block. A :class:`KerasBackbone` takes its preprocessing from the
spec and nowhere else, so a registry model cannot be paired with another
family's preprocessing. User-built ``keras.Model`` objects and saved model files
are accepted too; they bring their own preprocessing (identity by default). keras-hub
presets (``"hub:dinov2_small"``, :class:`HubBackbone`) bring their own ``ImageConverter``;
:mod:`featx.hub` holds what featx knows about them.

Importing this module does not import TensorFlow: the table is plain data and
models are built on first use.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.config import as_size
from featx.hub import (
    OUTPUT_POOLINGS,
    Converter,
    HubFamily,
    PresetUnavailableError,
    build_network,
    hub_name,
    image_model,
    import_keras_hub,
    is_hub_name,
    resolve_preset,
)

__all__ = [
    "ALL_POOLINGS",
    "POOLINGS",
    "PRECISIONS",
    "Backbone",
    "BackboneSpec",
    "HubBackbone",
    "KerasBackbone",
    "RawPixels",
    "WeightsUnavailableError",
    "get_spec",
    "list_backbones",
    "resolve_backbone",
]

# Pooling of a feature map, the keras.applications models' output (and your own models').
POOLINGS = OUTPUT_POOLINGS["feature_map"]
#: Every pooling any backbone takes: feature maps', token models' (keras-hub ViTs) and
#: the image towers' own ("head"). Which apply depends on the network's output.
ALL_POOLINGS = tuple(p for kind in OUTPUT_POOLINGS.values() for p in kind)
# Compute precision -> the Keras dtype policy the network is built under. Variables stay
# float32 in every case (Keras' mixed policies); embeddings are always returned as float32.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and could not be obtained: Keras' ImageNet
    download for ``weights="imagenet"``, or a keras-hub preset not cached and offline."""


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build a ``keras.applications`` model and feed it.

    Attributes
    ----------
    name : str
        The Keras name, e.g. ``"MobileNetV2"``.
    module : str
        The ``keras.applications`` submodule holding the family's ``preprocess_input``.
    default_size : int
        Input side length the ImageNet weights were trained at.
    min_size : int
        Smallest input side length the architecture accepts.
    dim : int
        Channels of the last convolutional block, i.e. the pooled embedding size.
    """

    name: str
    module: str
    default_size: int
    min_size: int
    dim: int

    def constructor(self) -> Callable[..., Any]:
        """The ``keras.applications`` constructor for this model."""
        import keras

        return getattr(keras.applications, self.name)

    def preprocess_input(self) -> Callable[[Any], Any]:
        """The family's own ``preprocess_input``: the only one this model is ever fed with."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input


def _specs(module: str, min_size: int, rows: list[tuple[str, int, int]]) -> list[BackboneSpec]:
    return [BackboneSpec(name, module, size, min_size, dim) for name, size, dim in rows]


_REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *_specs("xception", 71, [("Xception", 299, 2048)]),
        *_specs("vgg16", 32, [("VGG16", 224, 512)]),
        *_specs("vgg19", 32, [("VGG19", 224, 512)]),
        *_specs(
            "resnet",
            32,
            [("ResNet50", 224, 2048), ("ResNet101", 224, 2048), ("ResNet152", 224, 2048)],
        ),
        *_specs(
            "resnet_v2",
            32,
            [("ResNet50V2", 224, 2048), ("ResNet101V2", 224, 2048), ("ResNet152V2", 224, 2048)],
        ),
        *_specs("inception_v3", 75, [("InceptionV3", 299, 2048)]),
        *_specs("inception_resnet_v2", 75, [("InceptionResNetV2", 299, 1536)]),
        *_specs("mobilenet", 32, [("MobileNet", 224, 1024)]),
        *_specs("mobilenet_v2", 32, [("MobileNetV2", 224, 1280)]),
        *_specs(
            "mobilenet_v3", 32, [("MobileNetV3Small", 224, 576), ("MobileNetV3Large", 224, 960)]
        ),
        *_specs(
            "densenet",
            32,
            [("DenseNet121", 224, 1024), ("DenseNet169", 224, 1664), ("DenseNet201", 224, 1920)],
        ),
        *_specs("nasnet", 32, [("NASNetMobile", 224, 1056), ("NASNetLarge", 331, 4032)]),
        *_specs(
            "efficientnet",
            32,
            [
                ("EfficientNetB0", 224, 1280),
                ("EfficientNetB1", 240, 1280),
                ("EfficientNetB2", 260, 1408),
                ("EfficientNetB3", 300, 1536),
                ("EfficientNetB4", 380, 1792),
                ("EfficientNetB5", 456, 2048),
                ("EfficientNetB6", 528, 2304),
                ("EfficientNetB7", 600, 2560),
            ],
        ),
        *_specs(
            "efficientnet_v2",
            32,
            [
                ("EfficientNetV2B0", 224, 1280),
                ("EfficientNetV2B1", 240, 1280),
                ("EfficientNetV2B2", 260, 1408),
                ("EfficientNetV2B3", 300, 1536),
                ("EfficientNetV2S", 384, 1280),
                ("EfficientNetV2M", 480, 1280),
                ("EfficientNetV2L", 480, 1280),
            ],
        ),
        *_specs(
            "convnext",
            32,
            [
                ("ConvNeXtTiny", 224, 768),
                ("ConvNeXtSmall", 224, 768),
                ("ConvNeXtBase", 224, 1024),
                ("ConvNeXtLarge", 224, 1536),
                ("ConvNeXtXLarge", 224, 2048),
            ],
        ),
    ]
}


def list_backbones() -> list[BackboneSpec]:
    """All registry entries, sorted by name.

    Examples
    --------
    >>> from featx.backbones import list_backbones
    >>> [s.name for s in list_backbones()][:3]
    ['ConvNeXtBase', 'ConvNeXtLarge', 'ConvNeXtSmall']
    """
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> BackboneSpec:
    """Look up a registry entry by its Keras name.

    Raises
    ------
    ValueError
        For an unknown name, listing every known name and the closest matches.

    Examples
    --------
    >>> from featx.backbones import get_spec
    >>> get_spec("MobileNetV2").dim
    1280
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    by_lower = {n.lower(): n for n in _REGISTRY}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(by_lower[c]) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}. Expected one of: {', '.join(sorted(_REGISTRY))}.{hint}"
    )


_REMEMBERED_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, remember: bool = False) -> str:
    """A file's SHA-256. ``remember``: keep it per (path, size, modification time), for
    files that are only ever replaced, never rewritten in place (downloaded presets,
    gigabytes each, are hashed once per process instead of at every backbone)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if remember and key in _REMEMBERED_HASHES:
        return _REMEMBERED_HASHES[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    if remember:
        _REMEMBERED_HASHES[key] = digest.hexdigest()
    return digest.hexdigest()


def _callable_identity(fn: Callable[..., Any]) -> str:
    """A stable name for a preprocessing function, its source hash where the name is not enough."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return name
    return f"{name}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"


class Backbone:
    """What the extractor needs from a network.

    A backbone has a fixed ``input_size`` (height, width), an embedding ``dim``, an
    ``identity()`` dict covering everything about the network that changes its
    output, and ``embed(batch)``, mapping a float32 batch of RGB images with values
    in 0-255, shape ``(n, height, width, 3)``, to float32 embeddings ``(n, dim)``.
    Subclass it to plug a non-Keras model (or a test double) into the extractor.
    """

    name: str = "backbone"
    input_size: tuple[int, int]
    dim: int
    #: The resize policy the network's own preprocessing prescribes (a keras-hub preset's
    #: converter crops or stretches), or None: the extractor's ``resize=`` decides.
    resize: str | None = None

    @property
    def label(self) -> str:
        """How tables and reports name this backbone (its ``name`` unless overridden)."""
        return str(self.name)

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        """One-time set-up before batches of ``batch_shape`` arrive (build, trace)."""

    def embed(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def runs_on_gpu(self) -> bool:
        """Whether ``embed`` computes on a GPU: the extractor then decodes images in
        processes by default (``Extractor(decode_in="auto")``). False unless overridden."""
        return False


class RawPixels(Backbone):
    """The raw-pixels baseline: each image downscaled to ``size`` x ``size`` and flattened.

    Goes through the same decoding, resizing and cache as a network, so comparing it with
    a backbone measures what the network adds, not a difference in data handling.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.backbones import RawPixels
    >>> RawPixels(8).embed(np.full((2, 8, 8, 3), 255.0, np.float32)).shape
    (2, 192)
    """

    name = "RawPixels"

    def __init__(self, size: int = 16) -> None:
        self.size = int(size)
        self.input_size = (self.size, self.size)
        self.dim = self.size * self.size * 3

    @property
    def label(self) -> str:
        return f"raw pixels {self.size}x{self.size}"

    def identity(self) -> dict[str, Any]:
        return {
            "architecture": "raw-pixels",
            "weights": None,
            "input_size": list(self.input_size),
            "dtype": "float32",
        }

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return (batch.reshape(len(batch), -1) / 255.0).astype(np.float32)


class KerasBackbone(Backbone):
    """A frozen Keras network, pooled, called in inference mode through one compiled function.

    Parameters
    ----------
    model : str, BackboneSpec, keras.Model or path
        A registry name, a spec, a built ``keras.Model``, or the path of a saved
        ``.keras`` / ``.h5`` model.
    weights : "imagenet", None or path
        Registry models: ``"imagenet"`` (Keras' own download and cache), ``None``
        (random initialisation, seeded by ``seed``) or a weights file. Custom models
        keep their own weights unless a weights file path is given.
    input_size : int or (height, width), optional
        Defaults to the registry's default size, or the custom model's fixed input shape.
    pooling : {"avg", "max", "avg+max"}, optional
        Global pooling over the spatial axes of the feature map (default ``"avg"``);
        ``"avg+max"`` concatenates both (twice the dimension, from one forward pass).
    layer : str, optional
        Take this layer's output instead of the last convolutional block.
    seed : int
        Seed for ``weights=None``; it is part of the fingerprint.
    preprocess : callable, optional
        Custom models only: maps 0-255 float RGB tensors to the model's input range.
        Registry models always use their family's ``preprocess_input``.

    keras-hub presets (``"hub:..."``) are :class:`HubBackbone`; :func:`resolve_backbone`
    builds either from a name.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of a registry model, built under the Keras dtype policy
        ``"mixed_bfloat16"`` or ``"mixed_float16"`` (weights stay float32; pooling and
        the returned embeddings are float32). ``"bfloat16"`` is for CPUs with AVX512-BF16
        or AMX (and TPUs/recent GPUs); ``"float16"`` is for GPUs: on a machine without
        one it is slow and warns. A non-float32 precision is part of the fingerprint, so
        its vectors never mix with float32 ones in the cache.
    """

    def __init__(
        self,
        model: str | BackboneSpec | Any,
        *,
        weights: str | os.PathLike | None = "imagenet",
        input_size: int | tuple[int, int] | None = None,
        pooling: str | None = None,
        layer: str | None = None,
        seed: int = 0,
        preprocess: Callable[[Any], Any] | None = None,
        precision: str = "float32",
    ) -> None:
        pooling = _check_pooling(pooling, POOLINGS, "this network outputs a feature map")
        self._set_run_options(pooling, precision, layer, seed)
        if is_hub_name(model):
            raise TypeError(
                f"{model!r} is a keras-hub preset: build it with HubBackbone({model!r}, ...) "
                "or resolve_backbone, which choose the right class from the name."
            )
        if isinstance(model, str) and _looks_like_model_file(model):
            model = Path(model)
        if isinstance(model, (str, BackboneSpec)):
            self._init_registry(
                get_spec(model) if isinstance(model, str) else model,
                weights,
                input_size,
                preprocess,
            )
        elif precision != "float32":
            raise ValueError(
                f"precision={precision!r} applies to registry backbones, which featx builds "
                "itself. For your own model, build it under keras.config.set_dtype_policy("
                f"{PRECISIONS[precision]!r}) and leave precision at 'float32'."
            )
        elif isinstance(model, os.PathLike):
            self._init_saved(Path(model), weights, input_size, preprocess)
        else:
            self._init_custom(model, weights, input_size, preprocess)

    # -- construction -------------------------------------------------------------------------

    def _set_run_options(self, pooling: str, precision: str, layer: str | None, seed: int) -> None:
        _check_precision(precision)
        self.pooling = pooling
        self.precision = precision
        self.layer = layer
        self.seed = int(seed)
        self._model = None
        self._functions: dict[tuple[int, ...], Any] = {}
        self._spec: BackboneSpec | None = None
        self._saved_model_path: str | None = None

    def _init_registry(self, spec, weights, input_size, preprocess) -> None:
        if preprocess is not None:
            raise ValueError(
                f"preprocess= was given for the registry backbone {spec.name!r}. Registry "
                f"backbones always use their own family's preprocess_input "
                f"(keras.applications.{spec.module}.preprocess_input); drop preprocess=, or "
                "pass your own keras.Model to use custom preprocessing."
            )
        self._spec = spec
        self.name = spec.name
        self.input_size = as_size(spec.default_size if input_size is None else input_size)
        if min(self.input_size) < spec.min_size:
            raise ValueError(
                f"input_size={self.input_size} is too small for {spec.name}: it needs at least "
                f"{spec.min_size}x{spec.min_size}. Pass input_size>={spec.min_size} "
                f"(default {spec.default_size})."
            )
        self._preprocess = None  # the spec's own, resolved when compiling
        self._preprocess_id = f"keras.applications.{spec.module}.preprocess_input"
        self._architecture = spec.name
        if weights is None:
            self._weights_arg = None
            self._weights_id = (
                f"random:seed={self.seed}:keras-{_version('keras')}:tf-{_version('tensorflow')}"
            )
        elif weights == "imagenet":
            self._weights_arg = "imagenet"
            self._weights_id = f"imagenet:keras-{_version('keras')}"
        else:
            path = _existing_file(weights, "weights")
            self._weights_arg = str(path)
            self._weights_id = f"file:sha256={_sha256_file(path)}"
        # Registry dims are static; a layer changes them, so that case is read off the model.
        self._dim = None if self.layer else spec.dim

    def _init_saved(self, path: Path, weights, input_size, preprocess) -> None:
        path = _existing_file(path, "backbone")
        self._saved_model_path = str(path)
        self.name = path.name
        self._architecture = f"saved:sha256={_sha256_file(path)}"
        self._init_custom_common(weights, input_size, preprocess, model=None)

    def _init_custom(self, model, weights, input_size, preprocess) -> None:
        import keras

        if not isinstance(model, keras.Model):
            raise TypeError(
                f"backbone={model!r} is not understood. Expected a registry name (see "
                "`featx backbones`), a keras.Model, or the path of a .keras/.h5 model file."
            )
        self._model_obj = model
        self.name = model.name
        arch = _architecture_signature(model)
        self._architecture = f"custom:sha256={hashlib.sha256(arch.encode()).hexdigest()}"
        self._init_custom_common(weights, input_size, preprocess, model=model)

    def _init_custom_common(self, weights, input_size, preprocess, model) -> None:
        if weights is None:
            raise ValueError(
                "weights=None (seeded random initialisation) applies to registry backbones "
                "only. Initialise your own model as you want it, and leave weights at its "
                "default or pass a weights file."
            )
        self._weights_arg = (
            None if weights == "imagenet" else str(_existing_file(weights, "weights"))
        )
        self._preprocess = preprocess or _identity
        self._preprocess_id = "identity" if preprocess is None else _callable_identity(preprocess)
        self._dim = None
        if model is not None:
            self._model = self._finish(model)
            self._weights_id = self._weights_value_hash()
        else:
            self._weights_id = (
                "saved" if self._weights_arg is None else f"file:sha256={_sha256_file(weights)}"
            )
        if input_size is None:
            built = self.model
            shape = tuple(built.input_shape[1:3])
            if None in shape:
                raise ValueError(
                    f"The model {self.name!r} accepts any input size {built.input_shape}; "
                    "pass input_size= to choose one."
                )
            input_size = shape
        self.input_size = as_size(input_size)

    def _finish(self, base):
        """Freeze, load custom weights, and cut at ``layer``."""
        import keras

        if self._spec is None and self._weights_arg is not None:
            self._check_weights_unchanged()
            by_name = self._weights_arg.endswith(".h5") and not self._weights_arg.endswith(
                ".weights.h5"
            )
            base.load_weights(self._weights_arg, **({"by_name": True} if by_name else {}))
        base.trainable = False
        if self.layer is None:
            return base
        try:
            output = base.get_layer(self.layer).output
        except ValueError:
            names = [lyr.name for lyr in base.layers]
            close = difflib.get_close_matches(self.layer, names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"layer={self.layer!r} is not a layer of {self.name}. It has {len(names)} "
                f"layers, from {names[0]!r} to {names[-1]!r} (list them with "
                f"`model.summary()`).{hint}"
            ) from None
        cut = keras.Model(base.inputs, output, name=f"{base.name}_{self.layer}")
        cut.trainable = False
        return cut

    @property
    def model(self):
        """The frozen ``keras.Model`` (built on first access)."""
        if self._model is None:
            self._model = self._finish(self._build())
        return self._model

    def _build(self):
        import keras

        _require_tensorflow_backend()
        if self._saved_model_path is not None:
            return keras.models.load_model(self._saved_model_path, compile=False)
        with _dtype_policy(PRECISIONS[self.precision]):
            return self._build_registry()

    def _build_registry(self):
        _warn_float16_without_gpu(self.precision)
        ctor = self._spec.constructor()
        shape = (*self.input_size, 3)
        if self._weights_arg is None:
            with _seeded(self.seed):
                return ctor(include_top=False, weights=None, input_shape=shape)
        if self._weights_arg != "imagenet":
            self._check_weights_unchanged()
        try:
            return ctor(include_top=False, weights=self._weights_arg, input_shape=shape)
        except Exception as exc:
            if self._weights_arg != "imagenet":
                raise
            raise WeightsUnavailableError(
                f"Cannot obtain the ImageNet weights of {self.name}: {exc}. Keras downloads "
                "them once into ~/.keras/models; without network access pass weights= the "
                "path of a local weights file (or weights=None for a random baseline)."
            ) from exc

    def _check_weights_unchanged(self) -> None:
        """The fingerprint hashed the weights file when this backbone was created; refuse to
        load different content from that path now, or its vectors would be cached under
        the old weights' fingerprint."""
        identity = getattr(self, "_weights_id", "")  # unset while an in-memory model loads
        if not identity.startswith("file:sha256="):
            return
        if _sha256_file(self._weights_arg) != identity.removeprefix("file:sha256="):
            raise RuntimeError(
                f"The weights file {self._weights_arg!r} changed since this extractor was "
                "created (its content hash differs). Create a new Extractor to use the new "
                "weights."
            )

    def _weights_value_hash(self) -> str:
        digest = hashlib.sha256()
        for w in self._model.weights:
            digest.update(np.ascontiguousarray(np.asarray(w)).tobytes())
        return f"values:sha256={digest.hexdigest()}"

    def _rebuildable(self) -> bool:
        """Whether the network can be built again from names and files (not in memory only)."""
        return self._spec is not None or self._saved_model_path is not None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable without its compiled functions (rebuilt where it lands, e.g. a Ray
        actor), and without the built network when it can be rebuilt from its name or file,
        so shipping it to a worker costs bytes, not megabytes."""
        state = dict(self.__dict__)
        state["_functions"] = {}
        if self._rebuildable():
            state["_model"] = None
        return state

    # -- the Backbone interface ---------------------------------------------------------------

    @property
    def dim(self) -> int:
        if self._dim is None:
            shape = self.model.output_shape
            if isinstance(shape, list):
                raise ValueError(
                    f"{self.name} has {len(shape)} outputs; featx needs one feature map. "
                    "Pass layer= to choose one."
                )
            self._dim = int(shape[-1])
        return self._dim * len(self.pooling.split("+"))

    def identity(self) -> dict[str, Any]:
        identity = {
            "architecture": self._architecture,
            "weights": self._weights_id,
            "input_size": list(self.input_size),
            "pooling": self.pooling,
            "layer": self.layer,
            "preprocess": self._preprocess_id,
            "dtype": "float32",  # of the embeddings, whatever the compute precision
        }
        # Only added when not float32, so the fingerprints (and caches) made before
        # precision= existed stay valid.
        if self.precision != "float32":
            identity["precision"] = self.precision
        return identity

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        self._function(tuple(batch_shape)).get_concrete_function()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._function(batch.shape)(batch).numpy()

    def runs_on_gpu(self) -> bool:
        return _has_gpu()

    def _function(self, shape: tuple[int, ...]):
        fn = self._functions.get(shape)
        if fn is None:
            fn = self._functions[shape] = self._compile(shape)
        return fn

    def _compile(self, shape: tuple[int, ...]):
        import tensorflow as tf

        _quiet_retracing_warning()

        model, pool = self.model, self._pool
        preprocess = self._preprocessor()

        # One traced function per batch shape: the extractor pads every batch to the same
        # shape, so an image's embedding does not depend on its neighbours (exact resumes).
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=False)
        def embed(images):
            # Pool in float32: averaging thousands of bfloat16 values in bfloat16 loses digits.
            return pool(tf.cast(model(preprocess(images), training=False), tf.float32))

        return embed

    def _preprocessor(self) -> Callable[[Any], Any]:
        """The one function from 0-255 RGB to the network's input (traced into the graph)."""
        return self._spec.preprocess_input() if self._spec else self._preprocess

    def _pool(self, features):
        """Global pooling of a feature map over its spatial axes (traced into the graph)."""
        import tensorflow as tf

        if len(features.shape) <= 2:
            return features
        axes = list(range(1, len(features.shape) - 1))
        reduce = {"avg": tf.reduce_mean, "max": tf.reduce_max}
        pooled = [reduce[name](features, axis=axes) for name in self.pooling.split("+")]
        return tf.concat(pooled, axis=-1) if len(pooled) > 1 else pooled[0]


#: What ``weights=`` takes to mean a keras-hub preset's own pretrained weights ("imagenet"
#: too, the default of every featx function, whatever data the preset was trained on).
PRESET_WEIGHTS = ("preset", "imagenet")


class HubBackbone(KerasBackbone):
    """A keras-hub preset, frozen, fed by the preset's own ``ImageConverter``.

    Parameters
    ----------
    preset : str
        ``"hub:"`` and a keras-hub preset: a built-in name (``"hub:dinov2_small"``;
        ``featx backbones --hub`` lists them), a ``kaggle://`` or ``hf://`` handle of a
        preset in keras-hub's format, or a local preset directory.
    weights : "preset", "imagenet", None or path
        ``"preset"`` (or ``"imagenet"``, the default everywhere in featx) loads the
        preset's own weights, downloaded once by keras-hub and read from its cache after;
        ``None`` builds the preset's architecture with random weights seeded by ``seed``
        (offline too for the presets of :data:`featx.hub.KNOWN_ARCHITECTURES`, else from
        the preset's cached or downloaded config); a path loads that weights file.
    input_size : int or (height, width), optional
        Default: the converter's image size. DINOv2/DINOv3 interpolate their position
        embeddings to any square size (at 224 a ViT-S/14 sees 256 patches; at its 518, 1,369).
    pooling : str, optional
        What applies depends on the network's output (:data:`featx.hub.FAMILIES`): CNNs'
        feature maps take ``"avg"`` (default), ``"max"``, ``"avg+max"``; ViTs' tokens
        take ``"cls"`` (default: the class token), ``"mean"`` (the mean of the patch
        tokens, without class, distillation or register tokens) and ``"cls+mean"``
        (both, concatenated); CLIP/SigLIP image towers give their own pooled embedding
        (``"head"``).
    layer : str, optional
        A level of the backbone's ``pyramid_outputs`` (``"P3"`` of a ResNet,
        ``"stage6"`` of a DINOv2), or a layer name; pooled as the output is.
    seed : int
    preprocess : None
        Refused: a preset's preprocessing is its converter's (scale, offset and crop, in
        the fingerprint).
    precision : {"float32", "bfloat16", "float16"}

    The preset's handle, version and a content hash of its weight files, a hash of its
    config, and its converter are in :meth:`identity`, so a changed preset never reuses
    cached vectors. :attr:`resize` is the converter's crop policy (``"center_crop"``
    when it keeps the aspect ratio, as most presets do); the extractor uses it.

    Examples
    --------
    >>> from featx.backbones import HubBackbone
    >>> b = HubBackbone("hub:dinov2_small", weights=None, input_size=224)  # offline too
    >>> b.pooling, b.resize, b.input_size
    ('cls', 'center_crop', (224, 224))
    """

    def __init__(
        self,
        preset: str,
        *,
        weights: str | os.PathLike | None = "preset",
        input_size: int | tuple[int, int] | None = None,
        pooling: str | None = None,
        layer: str | None = None,
        seed: int = 0,
        preprocess: Callable[[Any], Any] | None = None,
        precision: str = "float32",
    ) -> None:
        name = hub_name(str(preset))
        if preprocess is not None:
            raise ValueError(
                f"preprocess= was given for the keras-hub preset {name!r}. A preset is always "
                "fed by its own ImageConverter (scale, offset and crop, part of the "
                "fingerprint); drop preprocess=, or wrap the network as your own keras.Model "
                "to use custom preprocessing."
            )
        pretrained = isinstance(weights, str) and weights in PRESET_WEIGHTS
        try:
            self._preset = resolve_preset(str(preset), pretrained=pretrained)
        except PresetUnavailableError as exc:
            if pretrained:
                raise WeightsUnavailableError(str(exc)) from exc
            raise
        family: HubFamily = self._preset.family
        valid = family.poolings(self._preset.config["config"])
        output = f"{name} ({family.class_name}) outputs {_OUTPUT_WORDS[family.output]}"
        pooling = _check_pooling(pooling, valid, output)
        self._set_run_options(pooling, precision, layer, seed)
        self.name = name
        converter = self._preset.converter
        self.resize = converter.resize
        size = converter.image_size if input_size is None else input_size
        if size is None:
            raise ValueError(
                f"The converter of {name} sets no image size; pass input_size= to choose one."
            )
        self.input_size = as_size(size)
        self._architecture = self._preset.architecture_id()
        self._preprocess_id = "hub-converter:" + json.dumps(converter.identity(), sort_keys=True)
        self._dim = None
        if pretrained:
            self._weights_arg = "preset"
            self._weights_id = self._preset_weights_id()
        elif weights is None:
            self._weights_arg = None
            self._weights_id = (
                f"random:seed={self.seed}:keras-{_version('keras')}:keras-hub-"
                f"{_version('keras-hub')}:tf-{_version('tensorflow')}"
            )
        else:
            path = _existing_file(weights, "weights")
            self._weights_arg = str(path)
            self._weights_id = f"file:sha256={_sha256_file(path)}"

    @property
    def converter(self) -> Converter:
        """The preset's image converter: scale, offset and crop policy."""
        return self._preset.converter

    @property
    def token_prefix(self) -> int:
        """How many tokens (class, distillation, registers) come before the patch tokens of
        a token network's output: those ``pooling="mean"`` leaves out."""
        return self._preset.family.prefix(self._preset.config["config"])

    def _preset_weights_id(self) -> str:
        """The preset's handle and version (not a local directory's path), and a content
        hash of its weight files."""
        digest = hashlib.sha256()
        for path in self._preset.weights_files:
            digest.update(_sha256_file(path, remember=True).encode())
        if self._preset.source == "directory":  # its content is its identity, not its path
            return f"hub:directory:sha256={digest.hexdigest()}"
        handle, version = self._preset.handle, self._preset.version
        if version is not None and not handle.endswith(f"/{version}"):
            handle = f"{handle}@{version}"
        return f"hub:{handle}:sha256={digest.hexdigest()}"

    def _rebuildable(self) -> bool:
        return True

    def _build(self):
        _require_tensorflow_backend()
        import_keras_hub()
        _warn_float16_without_gpu(self.precision)
        policy = PRECISIONS[self.precision]
        weights_file = None
        if self._weights_arg == "preset":
            self._check_preset_unchanged()
        elif self._weights_arg is not None:
            self._check_weights_unchanged()
            weights_file = self._weights_arg
        with _dtype_policy(policy), _seeded(self.seed):
            backbone = build_network(self._preset, self.input_size, policy, weights_file)
        return image_model(backbone, self._preset, self.input_size, self.layer)

    def _check_preset_unchanged(self) -> None:
        """Where this backbone lands (a Ray worker), find the preset's files again if they
        are not here, and refuse weights other than those the fingerprint hashed."""
        if not all(os.path.exists(p) for p in self._preset.weights_files):
            self._preset = resolve_preset(self._preset.handle, pretrained=True)
        if self._preset_weights_id() != self._weights_id:
            raise RuntimeError(
                f"The weight files of {self.name} changed since this extractor was created "
                f"(now {self._preset_weights_id()}, was {self._weights_id}). Create a new "
                "Extractor to use them."
            )

    def _finish(self, base):
        base.trainable = False  # the layer was cut in featx.hub.image_model
        return base

    def _preprocessor(self) -> Callable[[Any], Any]:
        import tensorflow as tf

        converter = self._preset.converter
        scale = None if converter.scale is None else tf.constant(converter.scale, tf.float32)
        offset = None if converter.offset is None else tf.constant(converter.offset, tf.float32)

        def convert(images):
            if scale is not None:
                images = images * scale
            return images if offset is None else images + offset

        return convert

    def _pool(self, features):
        if len(features.shape) != 3:
            return super()._pool(features)
        import tensorflow as tf

        prefix = self._preset.family.prefix(self._preset.config["config"])
        parts = {
            "cls": lambda: features[:, 0],
            "mean": lambda: tf.reduce_mean(features[:, prefix:], axis=1),
        }
        pooled = [parts[name]() for name in self.pooling.split("+")]
        return tf.concat(pooled, axis=-1) if len(pooled) > 1 else pooled[0]


def _check_pooling(pooling: str | None, valid: tuple[str, ...], output: str) -> str:
    """``pooling``, or the first of ``valid`` (the default) for None; else a clear error."""
    if pooling is None:
        return valid[0]
    if pooling not in valid:
        where = (
            f"; {pooling!r} is for another kind of output ({', '.join(ALL_POOLINGS)} in all)"
            if pooling in ALL_POOLINGS
            else ""
        )
        raise ValueError(
            f"pooling={pooling!r} is not supported here: {output}. Expected one of {valid}{where}."
        )
    return pooling


_OUTPUT_WORDS = {
    "feature_map": "a feature map",
    "tokens": "a sequence of tokens",
    "embedding": "its image tower's pooled embedding",
}


# Config keys that do not change what a frozen network computes: names, and the trainable
# flag featx itself turns off.
_NOT_COMPUTATION = ("name", "trainable")


def _architecture_signature(model) -> str:
    """Layer types, their configs and weight shapes, in order, without layer names.

    Keras numbers auto-generated names per process (``conv2d_3``), so names would give
    the same network a new fingerprint each time it is rebuilt. Together with the hash
    of the weight values, this identifies the computation.
    """

    def strip_names(value):
        if isinstance(value, dict):
            return {k: strip_names(v) for k, v in value.items() if k not in _NOT_COMPUTATION}
        if isinstance(value, (list, tuple)):
            return [strip_names(v) for v in value]
        return value

    layers = []
    for layer in model.layers:
        try:
            config = strip_names(layer.get_config())
        except Exception:  # layers of subclassed models need not implement get_config
            config = None
        layers.append([type(layer).__qualname__, config, [list(w.shape) for w in layer.weights]])
    return json.dumps(layers, sort_keys=True, default=repr)


class _RetracingFilter(logging.Filter):
    """Each backbone traces its function once, but all of them share one code location,
    so TensorFlow counts several backbones in one process as "retracing" and warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing_warning() -> None:
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _RetracingFilter) for f in logger.filters):
        logger.addFilter(_RetracingFilter())


def _identity(x):
    return x


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Keras' initialisers, then put Python's and NumPy's global RNGs back as they
    were, so building a baseline does not reseed the user's program."""
    import keras

    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _warn_float16_without_gpu(precision: str) -> None:
    if precision == "float16" and not _has_gpu():
        warnings.warn(
            "precision='float16' is meant for GPUs; this machine has none, so float16 "
            "runs emulated and slower than float32. Use 'bfloat16' on CPUs with "
            "AVX512-BF16 or AMX, else 'float32'.",
            stacklevel=5,
        )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported. Expected one of "
            f"{', '.join(map(repr, PRECISIONS))}: 'bfloat16' for CPUs with AVX512-BF16 or "
            "AMX, 'float16' for GPUs."
        )


@contextlib.contextmanager
def _dtype_policy(policy: str) -> Iterator[None]:
    """Build layers under ``policy``, then put the global Keras policy back as it was."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _looks_like_model_file(name: str) -> bool:
    return name.endswith((".keras", ".h5")) or os.sep in name


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what}={str(path)!r} is not an existing file. Expected "
            + (
                "'imagenet', None, or the path of a weights file."
                if what == "weights"
                else "a registry name (see `featx backbones`) or a .keras/.h5 model file."
            )
        )
    return p


def _require_tensorflow_backend() -> None:
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"featx runs Keras on TensorFlow, but the Keras backend is {backend!r}. "
            "Set KERAS_BACKEND=tensorflow before importing keras."
        )


def resolve_backbone(
    backbone: str | Backbone | Any,
    *,
    weights: str | os.PathLike | None = "imagenet",
    input_size: int | tuple[int, int] | None = None,
    pooling: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    preprocess: Callable[[Any], Any] | None = None,
    precision: str = "float32",
) -> Backbone:
    """Turn whatever the user passed as ``backbone`` into a :class:`Backbone`.

    Examples
    --------
    >>> from featx.backbones import resolve_backbone
    >>> b = resolve_backbone("MobileNetV2", weights=None, input_size=96)
    >>> b.input_size, b.dim
    ((96, 96), 1280)
    """
    if isinstance(backbone, Backbone):
        if precision != "float32" and getattr(backbone, "precision", "float32") != precision:
            raise ValueError(
                f"precision={precision!r} was given with a ready-made {type(backbone).__name__}"
                f" ({backbone.name!r}), which keeps its own precision. Pass the precision to "
                "the backbone when creating it, or pass the backbone by name."
            )
        return backbone
    _check_precision(precision)
    cls = HubBackbone if is_hub_name(backbone) else KerasBackbone
    return cls(
        backbone,
        weights=weights,
        input_size=input_size,
        pooling=pooling,
        layer=layer,
        seed=seed,
        preprocess=preprocess,
        precision=precision,
    )
