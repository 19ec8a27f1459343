"""keras-hub presets as featx backbones: find a preset's files, read its converter, build it.

``backbone="hub:<preset>"`` names a keras-hub image backbone: a built-in preset name
(``featx backbones --hub`` lists those the installed keras-hub knows, e.g.
``hub:dinov2_small``), a ``kaggle://`` or ``hf://`` handle of a preset saved in
keras-hub's format, or a local preset directory (what ``save_to_preset`` writes).
:class:`featx.backbones.HubBackbone` embeds with it; this module holds what featx knows
about keras-hub:

- :data:`FAMILIES`, the one table of the backbone classes featx embeds with and what
  their output is: a feature map (CNNs: pooled ``avg``/``max``), a token sequence
  (ViTs: ``cls``, ``mean`` of the patch tokens, ``cls+mean``), or an image tower's own
  pooled embedding (CLIP, SigLIP: ``head``);
- :func:`resolve_preset`: the preset's ``config.json``, ``image_converter.json`` and
  weight files, from a local directory, keras-hub's download caches (kagglehub,
  Hugging Face), featx's copy of a few well-known architectures
  (:data:`KNOWN_ARCHITECTURES`, for random-weight baselines offline), or a download;
- :func:`build_network`: the network from that config, its weights loaded;
- :func:`list_presets`: the image presets the installed keras-hub knows.

A preset's preprocessing is its ``ImageConverter``'s and nothing else: featx reads its
scale, offset and crop policy (:class:`Converter`) and never takes ``preprocess=`` for
a preset.

Importing this module imports neither TensorFlow nor keras-hub.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILIES",
    "HUB_PREFIX",
    "KNOWN_ARCHITECTURES",
    "OUTPUT_POOLINGS",
    "Converter",
    "HubFamily",
    "Preset",
    "PresetUnavailableError",
    "build_network",
    "hub_name",
    "image_model",
    "import_keras_hub",
    "is_hub_name",
    "list_presets",
    "resolve_preset",
]

HUB_PREFIX = "hub:"
INSTALL = 'pip install "featx[hub]"'

# What each kind of network output can be pooled by; the first is the default.
OUTPUT_POOLINGS: dict[str, tuple[str, ...]] = {
    "feature_map": ("avg", "max", "avg+max"),
    "tokens": ("cls", "mean", "cls+mean"),
    "embedding": ("head",),
}


class PresetUnavailableError(RuntimeError):
    """A preset's files are neither local nor in a download cache, and cannot be downloaded."""


@dataclass(frozen=True)
class HubFamily:
    """One row of :data:`FAMILIES`: a keras-hub backbone class and the shape of its output.

    Attributes
    ----------
    class_name : str
        The keras-hub class, e.g. ``"DINOV2Backbone"``.
    output : {"feature_map", "tokens", "embedding"}
        What the network returns: ``(n, h, w, c)``, ``(n, tokens, dim)``, or ``(n, dim)``.
    prefix : callable, optional
        Token models: the number of tokens before the patch tokens (class, distillation
        and register tokens), from the backbone's config.
    class_token : callable, optional
        Token models: whether token 0 is a class token, from the backbone's config.
    tower : bool
        A two-tower model (image and text); featx embeds its image tower.
    """

    class_name: str
    output: str
    prefix: Callable[[dict[str, Any]], int] | None = None
    class_token: Callable[[dict[str, Any]], bool] | None = None
    tower: bool = False

    def poolings(self, config: dict[str, Any]) -> tuple[str, ...]:
        """The poolings valid for a network of this family with ``config``; default first."""
        if self.output == "tokens" and not self.class_token(config):
            return ("mean",)
        return OUTPUT_POOLINGS[self.output]


def _registers(config: dict[str, Any]) -> int:
    return 1 + int(config.get("num_register_tokens", 0))


def _always(config: dict[str, Any]) -> bool:
    return True


def _vit_class_token(config: dict[str, Any]) -> bool:
    return bool(config.get("use_class_token", True))


def _family_rows() -> list[HubFamily]:
    feature_maps = [
        "CSPNetBackbone",
        "DenseNetBackbone",
        "EfficientNetBackbone",
        "MobileNetBackbone",
        "ResNetBackbone",
        "VGGBackbone",
        "XceptionBackbone",
    ]
    return [
        *(HubFamily(name, "feature_map") for name in feature_maps),
        HubFamily("DINOV2Backbone", "tokens", _registers, _always),
        HubFamily("DINOV3Backbone", "tokens", _registers, _always),
        HubFamily("ViTBackbone", "tokens", lambda c: int(_vit_class_token(c)), _vit_class_token),
        # DeiT: a class token, then a distillation token, then the patches.
        HubFamily("DeiTBackbone", "tokens", lambda c: 2, _always),
        HubFamily("CLIPBackbone", "embedding", tower=True),
        HubFamily("SigLIPBackbone", "embedding", tower=True),
        HubFamily("MetaCLIP2Backbone", "embedding", tower=True),
    ]


#: The keras-hub backbone classes featx embeds with, by class name.
FAMILIES: dict[str, HubFamily] = {row.class_name: row for row in _family_rows()}


@dataclass(frozen=True)
class Converter:
    """A preset's ``ImageConverter``: what featx feeds the network, from 0-255 RGB pixels.

    Pixels are multiplied by ``scale`` and ``offset`` is added (each a number or one per
    channel, or ``None``); ``crop_to_aspect_ratio`` keeps the aspect ratio by cropping
    the centre (featx's ``resize="center_crop"``), otherwise the image is stretched.
    ``image_size`` is the size the preset was made for (featx's default input size).

    Examples
    --------
    >>> from featx.hub import Converter
    >>> c = Converter.from_config({"image_size": [224, 224], "scale": 0.5, "offset": -1.0})
    >>> c.resize, c.image_size, c.identity()["scale"]
    ('center_crop', (224, 224), 0.5)
    """

    image_size: tuple[int, int] | None
    scale: Any
    offset: Any
    interpolation: str
    antialias: bool
    crop_to_aspect_ratio: bool
    pad_to_aspect_ratio: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Converter:
        """From an ``image_converter.json``'s ``"config"`` (keras-hub's defaults filled in)."""
        size = config.get("image_size")
        return cls(
            image_size=None if size is None or None in size else (int(size[0]), int(size[1])),
            scale=config.get("scale"),
            offset=config.get("offset"),
            interpolation=str(config.get("interpolation", "bilinear")),
            antialias=bool(config.get("antialias", False)),
            crop_to_aspect_ratio=bool(config.get("crop_to_aspect_ratio", True)),
            pad_to_aspect_ratio=bool(config.get("pad_to_aspect_ratio", False)),
        )

    @property
    def resize(self) -> str:
        """featx's resize policy for this converter: ``"center_crop"`` or ``"stretch"``.

        Raises
        ------
        ValueError
            For a converter that pads to the aspect ratio, which featx's decoder does not do.
        """
        if self.pad_to_aspect_ratio:
            raise ValueError(
                "The preset's ImageConverter pads images to its aspect ratio "
                "(pad_to_aspect_ratio=True), which featx's decoder does not do (it stretches "
                "or crops the centre); featx refuses it rather than feed the network "
                "differently from its converter."
            )
        return "center_crop" if self.crop_to_aspect_ratio else "stretch"

    def identity(self) -> dict[str, Any]:
        """Everything about the converter that changes the network's input."""
        return {
            "scale": self.scale,
            "offset": self.offset,
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
            "pad_to_aspect_ratio": self.pad_to_aspect_ratio,
        }


@dataclass(frozen=True)
class Preset:
    """A resolved preset: where it came from, its configs, and its local weight files.

    Attributes
    ----------
    name : str
        As the user gave it (after ``hub:``).
    handle : str
        The preset's canonical address: its ``kaggle://`` / ``hf://`` handle, or the
        absolute path of a local preset directory.
    version : str or None
        The Kaggle version, or the Hugging Face commit of the files read; ``None`` for a
        local directory (its files' content hash identifies it).
    source : str
        Where the configs were read: ``"directory"``, ``"cache"``, ``"download"`` or
        ``"featx"`` (:data:`KNOWN_ARCHITECTURES`).
    config : dict
        The backbone's serialised Keras config (``config.json``).
    converter : Converter
    family : HubFamily
    weights_files : tuple of str
        Local paths of the weight files, when the preset's weights were asked for.
    """

    name: str
    handle: str
    version: str | None
    source: str
    config: dict[str, Any]
    converter: Converter
    family: HubFamily
    weights_files: tuple[str, ...] = ()

    @property
    def class_name(self) -> str:
        return self.family.class_name

    @property
    def label(self) -> str:
        """How messages name it: ``hub:dinov2_small``, ``hub:<folder name>``."""
        return hub_name(HUB_PREFIX + self.name)

    def architecture_id(self) -> str:
        """The class and a hash of its config, less what does not change the computation
        (name, trainable, dtype: precision is its own field) and the input shape (featx
        sets it from ``input_size``)."""
        config = {
            k: v
            for k, v in self.config["config"].items()
            if k not in ("name", "trainable", "dtype", "image_shape", "input_shape")
        }
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        return f"hub:{self.class_name}:config-sha256={digest}"


def import_keras_hub():
    """keras-hub, or an ImportError naming the install command."""
    try:
        import keras_hub
    except ImportError as exc:
        raise ImportError(
            f"keras-hub backbones (backbone='hub:...') need keras-hub, which is not "
            f"installed ({exc}). Install it with: {INSTALL}"
        ) from exc
    return keras_hub


def is_hub_name(value: Any) -> bool:
    """Whether ``value`` names a keras-hub preset (``"hub:..."``)."""
    return isinstance(value, str) and value.startswith(HUB_PREFIX)


def hub_name(value: str) -> str:
    """The short name of a ``hub:`` backbone: ``hub:dinov2_small``, ``hub:<folder name>``.

    Examples
    --------
    >>> from featx.hub import hub_name
    >>> hub_name("hub:dinov2_small"), hub_name("hub:/presets/my_vit/")
    ('hub:dinov2_small', 'hub:my_vit')
    """
    rest = value.removeprefix(HUB_PREFIX)
    if "://" in rest:
        return value
    return HUB_PREFIX + (Path(rest).name or rest)


# -- finding a preset's files ----------------------------------------------------------------

CONFIG_FILE = "config.json"
CONVERTER_FILE = "image_converter.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"


def resolve_preset(value: str, *, pretrained: bool) -> Preset:
    """Find the preset ``value`` names (``"hub:..."`` or the bare preset) and read it.

    Parameters
    ----------
    pretrained : bool
        Whether its weight files are needed too (else only its configs, for a
        random-weight baseline).

    Raises
    ------
    ImportError
        keras-hub is not installed (the message names ``pip install "featx[hub]"``).
    ValueError
        An unknown preset name (with the closest image presets), a checkpoint that is not
        in keras-hub's preset format, a class featx does not embed with, or a preset
        without an ``ImageConverter``.
    PresetUnavailableError
        Its files are not local and cannot be downloaded (offline).
    """
    keras_hub = import_keras_hub()
    name = value.removeprefix(HUB_PREFIX)
    local = Path(name).expanduser()
    if local.is_dir():
        handle = str(local.resolve())
    elif name in keras_hub.models.Backbone.presets:
        handle = keras_hub.models.Backbone.presets[name]["kaggle_handle"]
    elif "://" in name:
        handle = name
    else:
        raise ValueError(_unknown_preset(value, name))

    files = _Files(value, handle, pretrained)
    if local.is_dir():
        source = "directory"
        config, converter = files.json(CONFIG_FILE), files.json(CONVERTER_FILE, optional=True)
    elif not pretrained and files.cached(CONFIG_FILE) is None and name in KNOWN_ARCHITECTURES:
        # A random baseline of a well-known preset builds offline from featx's copy.
        source = "featx"
        config, converter = KNOWN_ARCHITECTURES[name]
    else:
        source = "cache" if files.cached(CONFIG_FILE) else "download"
        config, converter = files.json(CONFIG_FILE), files.json(CONVERTER_FILE, optional=True)

    if "registered_name" not in config:
        raise ValueError(
            f"{value!r} is not a keras-hub preset: its config.json is a "
            f"{'Hugging Face Transformers' if 'model_type' in config else 'foreign'} "
            "checkpoint's. featx reads presets in keras-hub's own format (a config.json with "
            "'registered_name'). Convert it once with keras_hub.models.Backbone.from_preset("
            f"{name!r}).save_to_preset(DIR) and its converter likewise, then pass "
            "backbone='hub:DIR'; or use a built-in preset (`featx backbones --hub`)."
        )
    class_name = config.get("class_name", "?")
    if class_name not in FAMILIES:
        raise ValueError(
            f"{value!r} is a {class_name}, which featx does not embed images with. featx "
            f"embeds with these keras-hub classes: {', '.join(sorted(FAMILIES))} "
            "(`featx backbones --hub` lists their presets)."
        )
    if converter is None:
        raise ValueError(
            f"{value!r} ships no ImageConverter ({CONVERTER_FILE}), so featx cannot know "
            "how it preprocesses images, and it never guesses. Save the preset's converter "
            "with it (converter.save_to_preset(DIR)), or wrap the network as your own "
            "keras.Model and pass preprocess=."
        )
    weights = files.weights() if pretrained else ()
    return Preset(
        name=name,
        handle=handle,
        version=None if local.is_dir() else files.version(),
        source=source,
        config=config,
        converter=Converter.from_config(converter["config"]),
        family=FAMILIES[class_name],
        weights_files=weights,
    )


class _Files:
    """A preset's files: from its directory, keras-hub's download caches, or a download."""

    def __init__(self, value: str, handle: str, pretrained: bool) -> None:
        self.value, self.handle, self.pretrained = value, handle, pretrained
        self.read: dict[str, str] = {}

    def cached(self, filename: str) -> str | None:
        """The local copy of ``filename`` without any network access, or None."""
        if os.path.isdir(self.handle):
            path = os.path.join(self.handle, filename)
            return path if os.path.isfile(path) else None
        scheme, _, rest = self.handle.partition("://")
        try:
            if scheme == "kaggle":
                from kagglehub.cache import Cache
                from kagglehub.handle import parse_model_handle

                model = parse_model_handle(rest)
                return Cache().load_from_cache(model, filename) if model.is_versioned() else None
            if scheme == "hf":
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(rest, filename)
                return found if isinstance(found, str) else None
        except (ImportError, ValueError):
            return None
        return None

    def get(self, filename: str, optional: bool = False) -> str | None:
        """The local path of ``filename``: the directory's, a cached copy, or downloaded."""
        path = self.cached(filename)
        if path is None and not os.path.isdir(self.handle):
            path = self._download(filename, optional)
        if path is None and not optional:
            raise FileNotFoundError(
                f"The preset {self.value!r} has no {filename} (in {self.handle}). A keras-hub "
                "preset directory holds config.json, image_converter.json and "
                "model.weights.h5, as Backbone.save_to_preset and "
                "ImageConverter.save_to_preset write them."
            )
        if path is not None:
            self.read[filename] = path
        return path

    def _download(self, filename: str, optional: bool) -> str | None:
        from keras_hub.src.utils.preset_utils import get_file

        try:
            return get_file(self.handle, filename)
        except FileNotFoundError:
            if optional:
                return None
            raise
        except Exception as exc:  # requests', kagglehub's, huggingface_hub's network errors
            raise PresetUnavailableError(
                f"Cannot obtain {filename} of the keras-hub preset {self.value!r} "
                f"({self.handle}): it is not in the local download cache and the download "
                f"failed ({type(exc).__name__}: {exc}). keras-hub downloads a preset once "
                "(kagglehub caches it under $KAGGLEHUB_CACHE, default ~/.cache/kagglehub; "
                "Hugging Face under $HF_HOME). Without network access, run once where there "
                "is network, or copy a preset directory here and pass backbone='hub:DIR'"
                + (
                    ", or use weights=None for a random-weight baseline of the architecture."
                    if self.pretrained
                    else ". Random-weight baselines build offline from featx's copy of the "
                    f"architecture for {', '.join(KNOWN_ARCHITECTURES)}."
                )
            ) from exc

    def json(self, filename: str, optional: bool = False) -> dict[str, Any] | None:
        path = self.get(filename, optional)
        if path is None:
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def weights(self) -> tuple[str, ...]:
        single = self.get(WEIGHTS_FILE, optional=True)
        if single is not None:
            return (single,)
        index = self.get(SHARDED_WEIGHTS_FILE, optional=True)
        if index is None:
            raise FileNotFoundError(
                f"The preset {self.value!r} has no weights ({WEIGHTS_FILE} or sharded "
                f"{SHARDED_WEIGHTS_FILE}) in {self.handle}. Pass weights=None for random "
                "weights, or a weights file path."
            )
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(
            {s for v in weight_map.values() for s in (v if isinstance(v, list) else [v])}
        )
        return (index, *(self.get(shard) for shard in shards))

    def version(self) -> str | None:
        """The Kaggle version (in the handle, else of the files kagglehub downloaded: the
        folder they are in), or the Hugging Face commit of the files read."""
        scheme, _, rest = self.handle.partition("://")
        if scheme == "kaggle":
            parts = rest.split("/")
            if len(parts) == 5:
                return parts[4]
            folders = {Path(path).parent.name for path in self.read.values()}
            return folders.pop() if len(folders) == 1 and next(iter(folders)).isdigit() else None
        if scheme == "hf":
            for path in self.read.values():
                parts = Path(path).parts
                if "snapshots" in parts:
                    return parts[parts.index("snapshots") + 1]
        return None


def _unknown_preset(value: str, name: str) -> str:
    presets = [row["preset"] for row in list_presets()]
    close = difflib.get_close_matches(name, presets, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(HUB_PREFIX + c) for c in close)}?" if close else ""
    return (
        f"Unknown keras-hub preset {value!r}: not a built-in preset of keras-hub "
        f"{import_keras_hub().__version__}, a kaggle:// or hf:// handle, or an existing preset "
        f"directory.{hint} `featx backbones --hub` lists the {len(presets)} image presets "
        "featx can embed with."
    )


def list_presets() -> list[dict[str, Any]]:
    """The installed keras-hub's built-in presets of the classes in :data:`FAMILIES`.

    Each row: ``preset`` (the name after ``hub:``), ``family`` (the class), ``output``
    (``feature_map``, ``tokens`` or ``embedding``), ``params`` and ``description``.
    """
    keras_hub = import_keras_hub()
    rows = []
    for family in FAMILIES.values():
        cls = getattr(keras_hub.models, family.class_name, None)
        if cls is None:  # an older keras-hub without this family
            continue
        for name, preset in cls.presets.items():
            meta = preset.get("metadata", {})
            rows.append(
                {
                    "preset": name,
                    "family": family.class_name,
                    "output": family.output,
                    "params": meta.get("params"),
                    "description": meta.get("description", ""),
                }
            )
    return sorted(rows, key=lambda r: (r["family"], r["preset"]))


# -- building ----------------------------------------------------------------------------------


def build_network(preset: Preset, input_size: tuple[int, int], dtype: str, weights: Any = None):
    """The keras-hub backbone of ``preset`` at ``input_size`` under the dtype policy ``dtype``.

    ``weights``: a weights file path to load, else ``preset.weights_files`` when it was
    resolved with them; with neither, the network keeps its initial weights (seed Keras
    before calling).
    """
    import keras

    import_keras_hub()  # registers keras-hub's classes with Keras' deserialiser
    config = dict(preset.config)
    inner = {**config["config"], "dtype": dtype}
    for key in ("image_shape", "input_shape"):  # EfficientNet names it input_shape
        if key in inner:
            inner[key] = [*input_size, 3]
    config["config"] = inner
    try:
        backbone = keras.saving.deserialize_keras_object(config)
    except Exception as exc:
        raise ValueError(
            f"keras-hub cannot build {preset.class_name} ({preset.label}) at "
            f"input_size={input_size}: {exc}"
        ) from exc
    path = weights or (preset.weights_files[0] if preset.weights_files else None)
    if path is not None:
        try:
            backbone.load_weights(path)
        except Exception as exc:
            raise ValueError(
                f"The weights {path!r} do not fit {preset.class_name} "
                f"({preset.label}) at input_size={input_size}: {exc}. Weights "
                "whose position embeddings have a fixed size load only at the preset's own "
                f"size ({preset.converter.image_size}); leave input_size out to use it."
            ) from exc
    return backbone


def image_model(backbone, preset: Preset, input_size: tuple[int, int], layer: str | None):
    """A ``keras.Model`` from one ``(n, height, width, 3)`` tensor to what featx pools:
    the backbone's output, its ``pyramid_outputs[layer]`` or layer ``layer``'s output;
    for a two-tower model, the image tower's pooled embedding.

    Raises
    ------
    ValueError
        For a ``layer`` the network does not have, listing the pyramid levels it has.
    """
    import keras

    if preset.family.tower:
        if layer is not None:
            raise ValueError(
                f"layer={layer!r}: {preset.label} is a two-tower "
                f"{preset.class_name}, embedded by its image tower's own pooled output; it "
                "has no intermediate layers to choose. Leave layer out."
            )
        images = keras.Input((*input_size, 3), name="images")
        try:
            return keras.Model(images, backbone.get_vision_embeddings(images))
        except Exception as exc:
            raise ValueError(
                f"The image tower of {preset.label} cannot take input_size="
                f"{input_size}: {exc}. Leave input_size out for its own size "
                f"({preset.converter.image_size})."
            ) from exc
    images = backbone.inputs[0]
    if layer is None:
        return keras.Model(images, backbone.outputs[0])
    levels = dict(getattr(backbone, "pyramid_outputs", None) or {})
    if layer in levels:
        return keras.Model(images, levels[layer])
    try:
        return keras.Model(images, backbone.get_layer(layer).output)
    except ValueError:
        pass
    names = [lyr.name for lyr in backbone.layers]
    close = difflib.get_close_matches(layer, [*levels, *names], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    pyramid = (
        f"its pyramid levels {', '.join(map(repr, levels))}, or "
        if levels
        else "(it has no pyramid_outputs) "
    )
    raise ValueError(
        f"layer={layer!r} is not a layer of {preset.label} "
        f"({preset.class_name}). Expected {pyramid}one of its {len(names)} layers, from "
        f"{names[0]!r} to {names[-1]!r}.{hint}"
    )


# -- well-known architectures, for random-weight baselines offline -------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _dinov2(hidden: int, heads: int, layers: int, registers: int, swiglu: bool) -> tuple:
    """The configs keras-hub's tools/checkpoint_conversion/convert_dinov2_checkpoints.py
    writes for a DINOv2 checkpoint (its Hugging Face config through keras-hub's
    convert_dinov2.py: 518 px, patch 14, MLP ratio 4; register models interpolate their
    position embeddings with antialiasing)."""
    module = "keras_hub.src.models.dinov2"
    backbone = {
        "module": f"{module}.dinov2_backbone",
        "class_name": "DINOV2Backbone",
        "registered_name": "keras_hub>DINOV2Backbone",
        "config": {
            "patch_size": 14,
            "num_layers": layers,
            "hidden_dim": hidden,
            "num_heads": heads,
            "intermediate_dim": hidden * 4,
            "layer_scale_init_value": 1.0,
            "num_register_tokens": registers,
            "use_mask_token": True,
            "use_swiglu_ffn": swiglu,
            "dropout_rate": 0.0,
            "drop_path_rate": 0.0,
            "image_shape": [518, 518, 3],
            "position_embedding_shape": [518, 518],
            "antialias_in_interpolation": registers > 0,
            "apply_layernorm": False,
        },
    }
    converter = {
        "module": f"{module}.dinov2_image_converter",
        "class_name": "DINOV2ImageConverter",
        "registered_name": "keras_hub>DINOV2ImageConverter",
        "config": {
            "image_size": [518, 518],
            "scale": [1.0 / 255.0 / s for s in _IMAGENET_STD],
            "offset": [-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)],
            "interpolation": "bicubic",
            "antialias": False,
            "crop_to_aspect_ratio": True,
            "pad_to_aspect_ratio": False,
        },
    }
    return backbone, converter


#: featx's copy of the configs of a few well-known presets (backbone config, converter
#: config), so that their random-weight baselines (``weights=None``) build offline. A
#: preset's own config.json, where it is local, takes precedence; the fingerprint hashes
#: whichever config was used.
KNOWN_ARCHITECTURES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    f"dinov2_{prefix}{size}": _dinov2(hidden, heads, layers, registers, size == "giant")
    for prefix, registers in (("", 0), ("with_registers_", 4))
    for size, hidden, heads, layers in (
        ("small", 384, 6, 12),
        ("base", 768, 12, 12),
        ("large", 1024, 16, 24),
        ("giant", 1536, 24, 40),
    )
}
