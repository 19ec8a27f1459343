"""Which network, at which input size, pooled how: a representation's parameters, parsed once.

:class:`BackboneConfig` is the one parameter object every part of featx builds a
network from: the Python API (:class:`~featx.Extractor`, :func:`featx.evaluate`,
:func:`featx.compare`, :func:`featx.report`, :func:`featx.tune`,
:class:`~featx.EmbeddingTransformer`) and every CLI subcommand. Its fields are the only
list of "extractor parameters"; :data:`CONFIG_KEYS` names them.

Input sizes have one meaning everywhere:

- ``160`` is a square 160x160 input;
- a **tuple** ``(160, 120)`` is one input of height 160 and width 120;
- a **list** ``[160, 224]`` is two inputs, each image embedded at both sizes and the
  embeddings concatenated (multi-scale).

On the command line ``160x120`` is one size and ``160+224`` (or ``160,224`` for
``--size``) several, concatenated.

Importing this module imports neither TensorFlow nor scikit-learn.

Examples
--------
>>> from featx.config import BackboneConfig, as_sizes, size_label
>>> as_sizes(160), as_sizes((160, 120)), as_sizes([160, 224])
(((160, 160),), ((160, 120),), ((160, 160), (224, 224)))
>>> config = BackboneConfig("MobileNetV2", weights=None, input_size=[160, 224])
>>> [m.input_size for m in config.members()], config.name
([((160, 160),), ((224, 224),)], 'MobileNetV2 (random weights)')
>>> size_label(config.input_size)
'160+224'
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_KEYS",
    "MAX_INPUT_SIZE",
    "BackboneConfig",
    "as_size",
    "as_sizes",
    "backbone_name",
    "parse_size",
    "parse_sizes",
    "size_label",
]

Size = tuple[int, int]
#: The largest input side featx accepts (one 4096 x 4096 image is 192 MiB as float32).
MAX_INPUT_SIZE = 4096


def as_size(value: Any) -> Size:
    """One input size as ``(height, width)``: from an int (square) or an ``(h, w)`` tuple.

    A list is refused: a list of sizes means several inputs (see :func:`as_sizes`).

    Examples
    --------
    >>> as_size(96), as_size((160, 120))
    ((96, 96), (160, 120))
    """
    if _is_int(value):
        return _positive(int(value), value), _positive(int(value), value)
    if isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) for v in value):
        return _positive(int(value[0]), value), _positive(int(value[1]), value)
    if isinstance(value, list):
        raise ValueError(
            f"input_size={value!r} is a list, which means several input sizes whose "
            "embeddings are concatenated; this takes one size. Pass one int, an (height, "
            "width) tuple, or use featx.combine.CombinedExtractor / EmbeddingTransformer "
            "for several sizes."
        )
    raise ValueError(
        f"input_size={value!r} is not understood. Expected an int (a square input), an "
        "(height, width) tuple, or a list of those (several sizes, concatenated)."
    )


def as_sizes(value: Any) -> tuple[Size | None, ...]:
    """Every input size of ``value``: ``None`` (the backbone's default), one size, or a list.

    Examples
    --------
    >>> as_sizes(None), as_sizes([160, (224, 200)])
    ((None,), ((160, 160), (224, 200)))
    """
    if value is None or _is_int(value) or _is_pair(value):
        return (None if value is None else as_size(value),)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("input_size=[] gives no size. Pass an int or a list of ints.")
        sizes = []
        for item in value:
            if isinstance(item, list) or (isinstance(item, tuple) and not _is_pair(item)):
                raise ValueError(
                    f"input_size={value!r} nests a list of sizes inside a list. Pass a flat "
                    "list of sizes, e.g. [160, 224] or [(160, 120), 224]."
                )
            sizes.append(None if item is None else as_size(item))
        return tuple(sizes)
    return (as_size(value),)  # raises with the explanation


def parse_size(text: str) -> int | Size:
    """Command-line text of one size: ``"160"`` or ``"160x120"`` (height x width).

    Examples
    --------
    >>> parse_size("160"), parse_size("160x120")
    (160, (160, 120))
    """
    parts = str(text).strip().lower().split("x")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} is not understood. Expected N or HxW, e.g. 160x120.")
    sizes = [int(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def parse_sizes(text: str, *, separators: str = "+") -> int | Size | list[int | Size]:
    """Command-line text of one or several sizes joined by ``separators`` (concatenated).

    Examples
    --------
    >>> parse_sizes("160"), parse_sizes("160+224"), parse_sizes("160,224x200", separators="+,")
    (160, [160, 224], [160, (224, 200)])
    """
    parts = [str(text)]
    for separator in separators:
        parts = [piece for part in parts for piece in part.split(separator)]
    sizes = [parse_size(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else sizes


def size_label(value: Any) -> int | str:
    """Short text for table columns: ``160``, ``"160x120"``, ``"160+224"``.

    Examples
    --------
    >>> size_label(160), size_label((160, 120)), size_label([160, 224])
    (160, '160x120', '160+224')
    """
    labels = []
    for size in as_sizes(value):
        if size is None:
            labels.append("default")
        else:
            labels.append(size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}")
    return labels[0] if len(labels) == 1 else "+".join(map(str, labels))


@dataclass(frozen=True)
class BackboneConfig:
    """Which network, weights, input size(s), pooling and layer(s) embed the images.

    Parameters
    ----------
    backbone : str, path, keras.Model, Backbone, or a list of them
        A registry name (``featx backbones``), a keras-hub preset (``"hub:dinov2_small"``,
        ``featx backbones --hub``), a ``.keras``/``.h5`` model file, your own
        ``keras.Model``, a :class:`~featx.backbones.Backbone`; a list concatenates the
        embeddings of several networks.
    weights : "imagenet", None or path, default "imagenet"
        ``None`` is a seeded random initialisation (registry models and keras-hub presets
        only). For a keras-hub preset ``"imagenet"`` means the preset's own weights.
    input_size : int, (height, width), list of them, or None
        A list embeds at every size and concatenates (see the module's description).
    pooling : str, optional
        None is the backbone's default: ``"avg"`` of a feature map (or ``"max"``,
        ``"avg+max"``), ``"cls"`` of a keras-hub ViT's tokens (or ``"mean"``,
        ``"cls+mean"``).
    layer : str, None or a list of them
        Embed this layer instead of the last block; a list concatenates layers.
    resize : {"stretch", "center_crop"}, optional
        None is the backbone's own policy (a keras-hub preset's converter), else
        ``"stretch"``.
    seed : int, default 0
        Seed of the random initialisation when ``weights=None``.
    precision : {"float32", "bfloat16", "float16"}, default "float32"
    preprocess : callable, optional
        For your own models only: maps 0-255 RGB float tensors to the model's input range
        (registry models always use their family's own ``preprocess_input``).
    label : str, optional
        How tables and reports name this representation (display only).

    ``backbone``, ``input_size`` and ``layer`` are stored as tuples of their values
    (``input_size`` as ``(height, width)`` pairs); :meth:`members` lists the single
    networks, one per combination.
    """

    backbone: Any = "MobileNetV2"
    weights: Any = "imagenet"
    input_size: Any = None
    pooling: str | None = None
    layer: Any = None
    resize: str | None = None
    seed: int = 0
    precision: str = "float32"
    preprocess: Any = None
    label: str | None = None

    def __post_init__(self) -> None:
        backbones = self.backbone
        if isinstance(backbones, (list, tuple)):
            if not backbones:
                raise ValueError("backbone=[] gives no backbone. Pass at least one.")
            backbones = tuple(backbones)
        else:
            backbones = (backbones,)
        layers = tuple(self.layer) if isinstance(self.layer, (list, tuple)) else (self.layer,)
        if not layers:
            raise ValueError("layer=[] gives no layer. Pass None (the last block) or names.")
        if isinstance(self.seed, bool) or not _is_int(self.seed):
            raise ValueError(f"seed={self.seed!r} must be an int.")
        weights = self.weights
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        object.__setattr__(self, "backbone", backbones)
        object.__setattr__(self, "input_size", as_sizes(self.input_size))
        object.__setattr__(self, "layer", layers)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def of(cls, value: Any = "MobileNetV2", **defaults: Any) -> BackboneConfig:
        """A config from what a user passes as a backbone: a name, model, Backbone,
        an existing config, or a dict of these fields (with ``defaults`` for the rest).

        Examples
        --------
        >>> BackboneConfig.of({"backbone": "VGG16", "weights": None}, input_size=64).input_size
        ((64, 64),)
        """
        if isinstance(value, BackboneConfig):
            return value
        if isinstance(value, dict):
            fields = dict(value)
            unknown = [k for k in fields if k not in CONFIG_KEYS]
            if unknown or "backbone" not in fields:
                problem = f"unknown key(s) {unknown}" if unknown else "no 'backbone' key"
                raise ValueError(
                    f"The backbone entry {value!r} has {problem}. Expected 'backbone' and "
                    f"optionally: {', '.join(k for k in CONFIG_KEYS if k != 'backbone')}."
                )
            if _is_backbone(fields["backbone"]):
                # A ready-made Backbone is its own network, size and pooling: the call's
                # defaults are for the backbones given by name beside it.
                return cls(fields["backbone"], label=fields.get("label"))
            known = {k: v for k, v in defaults.items() if k in CONFIG_KEYS}
            if not isinstance(fields["backbone"], (str, os.PathLike, list, tuple)):
                # A keras.Model keeps its own weights unless the entry names a file: the
                # call's weights= is meant for the registry backbones beside it.
                known["weights"] = "imagenet"
            return cls(**{**known, **fields})
        return cls.of({"backbone": value}, **defaults)

    # -- one network each ---------------------------------------------------------------------

    @property
    def is_single(self) -> bool:
        """One network at one size and layer (what an :class:`~featx.Extractor` embeds)."""
        return len(self.backbone) == len(self.input_size) == len(self.layer) == 1

    def members(self) -> list[BackboneConfig]:
        """One single-network config per backbone x input size x layer, in that order."""
        return [
            dataclasses.replace(self, backbone=b, input_size=s, layer=lay, label=None)
            for b, s, lay in itertools.product(self.backbone, self.input_size, self.layer)
        ]

    def network_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`featx.backbones.resolve_backbone` (single configs)."""
        if not self.is_single:
            raise ValueError(
                f"{self.name!r} combines {len(self.members())} networks; embed it with "
                "featx.combine.CombinedExtractor, or pass one backbone, size and layer."
            )
        size = self.input_size[0]
        return {
            "weights": self.weights,
            "input_size": size,
            "pooling": self.pooling,
            "layer": self.layer[0],
            "seed": self.seed,
            "precision": self.precision,
            "preprocess": self.preprocess,
        }

    def replace(self, **changes: Any) -> BackboneConfig:
        """A copy with ``changes`` (e.g. ``weights=None`` for the random-weights baseline)."""
        return dataclasses.replace(self, **changes)

    # -- labels -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The given ``label``, else a name built from the backbones and their weights."""
        if self.label is not None:
            return self.label
        random = " (random weights)" if self.weights is None else ""
        return " + ".join(
            backbone_name(b) + (random if isinstance(b, (str, os.PathLike)) else "")
            for b in self.backbone
        )

    @property
    def size_label(self) -> int | str:
        return size_label(list(self.input_size))


def backbone_name(backbone: Any) -> str:
    """The short name of one backbone value: a registry or file name, a model's name."""
    if isinstance(backbone, str) and backbone.startswith("hub:"):
        from featx.hub import hub_name

        return hub_name(backbone)
    if isinstance(backbone, (str, os.PathLike)):
        return Path(os.fspath(backbone)).name
    label = getattr(backbone, "label", None)
    if isinstance(label, str):
        return label
    return str(getattr(backbone, "name", type(backbone).__name__))


CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BackboneConfig))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) for v in value)


def _positive(n: int, given: Any) -> int:
    if n < 1:
        raise ValueError(
            f"input_size={given!r}: sizes must be positive. Pass a size such as 160 or 224, "
            "or leave it out for the backbone's default."
        )
    if n > MAX_INPUT_SIZE:
        raise ValueError(
            f"input_size={given!r} is above featx's limit of {MAX_INPUT_SIZE} pixels a side "
            f"(featx.config.MAX_INPUT_SIZE): one such image would need "
            f"{n * n * 3 * 4 / 2**30:.0f} GiB as float32 before the network. Pass a smaller "
            "size (ImageNet backbones are trained at 224-600)."
        )
    return n


def _is_backbone(value: Any) -> bool:
    """A featx Backbone (duck-typed: this module does not import featx.backbones)."""
    return callable(getattr(value, "identity", None)) and hasattr(value, "embed")
