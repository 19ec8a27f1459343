"""Several embeddings of one image, combined: scales, poolings, views, layers, backbones.

A :class:`CombinedExtractor` holds a list of *members*, each a set of
:class:`~featx.Extractor` parameters (a backbone at one input size, pooling and
layer), and a list of test-time *views* (:mod:`featx.augment`). Every member embeds
every view through an ordinary cached :class:`~featx.Extractor`, so each
(member, view) pair is its own cache entry; views are then averaged (or
concatenated) per member, and members are concatenated. With one member and no
extra view it is exactly the plain extractor, fingerprint included.

:meth:`CombinedExtractor.extract_copies` embeds the seeded augmented copies of
:mod:`featx.augment` the same way, one cache entry per copy index; a copy goes
through the same views and members as an original, so both have the same dimension.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from featx._pipeline import fingerprint
from featx.augment import (
    TTA_COMBINE,
    AugmentPolicy,
    Compose,
    View,
    resolve_augment,
    resolve_tta,
    view_label,
)
from featx.backbones import Backbone, resolve_backbone
from featx.config import BackboneConfig, backbone_name, size_label
from featx.embeddings import Embeddings
from featx.extract import Extractor

__all__ = ["CombinedExtractor", "expand_members", "extractor_for", "member_label"]


def expand_members(
    backbone: str | Backbone | Any | Sequence[Any] = "MobileNetV2", **params: Any
) -> list[BackboneConfig]:
    """One single-network config for every backbone x input size x layer given.

    ``input_size`` may be one size (``160`` or ``(160, 120)``) or a list of sizes
    (``[160, 224]``); ``backbone`` and ``layer`` may be lists too. The other keyword
    arguments are :class:`~featx.config.BackboneConfig` fields.

    Examples
    --------
    >>> from featx.combine import expand_members
    >>> [m.size_label for m in expand_members("MobileNetV2", input_size=[160, 224])]
    [160, 224]
    """
    return BackboneConfig(backbone, **params).members()


def extractor_for(
    config: BackboneConfig,
    *,
    tta: Any = None,
    tta_combine: str = "mean",
    augment: Any = None,
    **options: Any,
) -> Extractor | CombinedExtractor:
    """The extractor of one representation: a plain :class:`~featx.Extractor` for one
    network without views or copies, else a :class:`CombinedExtractor`.

    ``options`` are ``batch_size``, ``cache_dir``, ``verbose`` (and ``on_error``,
    ``workers``).
    """
    if config.is_single and tta is None and not augment:
        return Extractor.from_config(config, **options)
    return CombinedExtractor(
        config.members(), tta=tta, tta_combine=tta_combine, augment=augment, **options
    )


class CombinedExtractor:
    """Concatenated embeddings of several members (scales, backbones, layers) and views.

    Parameters
    ----------
    members : sequence of dict or str
        Extractor parameters per member (keys among ``backbone``, ``weights``,
        ``input_size``, ``pooling``, ``layer``, ``resize``, ``seed``), or registry names.
        :func:`expand_members` builds them from lists.
    tta : None, "flip", "crop", "flip+crop" or list of views, default None
        Test-time views embedded for every image (see :func:`featx.augment.resolve_tta`).
    tta_combine : {"mean", "concat"}, default "mean"
        Average the views' embeddings (same dimension), or concatenate them.
    augment : None, int, dict or AugmentPolicy, default None
        The train-time policy used by :meth:`extract_copies`.
    batch_size, cache_dir, verbose, on_error, workers
        As for :class:`~featx.Extractor`.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.combine import CombinedExtractor, expand_members
    >>> images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    >>> members = expand_members("MobileNetV2", weights=None, input_size=[32, 48],
    ...                          pooling="avg+max")
    >>> combined = CombinedExtractor(members, tta="flip", cache_dir=None)
    >>> combined.extract(images).X.shape
    (3, 5120)
    >>> [row["dim"] for row in combined.costs()]
    [2560, 2560]
    """

    def __init__(
        self,
        members: Sequence[Mapping[str, Any] | str | Backbone],
        *,
        tta: str | Sequence[View | str | None] | None = None,
        tta_combine: str = "mean",
        augment: int | AugmentPolicy | dict | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = "auto",
        verbose: bool = False,
        on_error: str = "raise",
        workers: int | None = None,
    ) -> None:
        if tta_combine not in TTA_COMBINE:
            raise ValueError(
                f"tta_combine={tta_combine!r} is not supported. Expected one of {TTA_COMBINE}."
            )
        if not members:
            raise ValueError("members= is empty. Pass at least one backbone's parameters.")
        self.members = [m for value in members for m in _member(value).members()]
        self.views = resolve_tta(tta)
        self.tta_combine = tta_combine
        self.augment = resolve_augment(augment)
        self._options = {
            "batch_size": batch_size,
            "cache_dir": cache_dir,
            "verbose": verbose,
            "on_error": on_error,
            "workers": workers,
        }
        # One network per member, shared by all its views' extractors.
        self.backbones: list[Backbone] = [
            resolve_backbone(m.backbone[0], **m.network_kwargs()) for m in self.members
        ]
        self._extractors: dict[tuple[int, str], Extractor] = {}
        self.spec = {
            "members": [self._extractor(i, None).spec for i in range(len(self.members))],
            "views": [None if v is None else v.identity() for v in self.views],
            "tta_combine": tta_combine,
        }
        if len(self.members) == 1 and self.views == [None]:
            self.fingerprint = self._extractor(0, None).fingerprint
        else:
            self.fingerprint = fingerprint(self.spec)

    @property
    def backbone(self) -> Backbone:
        """The first member's network (what single-backbone reports name)."""
        return self.backbones[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """The first member's input size."""
        return self.backbones[0].input_size

    @property
    def label(self) -> str:
        """The members and views, e.g. ``"MobileNetV2@160 + MobileNetV2@224, tta=flip"``."""
        text = " + ".join(member_label(m) for m in self.members)
        if self.views != [None]:
            text += ", tta=" + "/".join(view_label(v) for v in self.views[1:])
            text += "" if self.tta_combine == "mean" else " (concat)"
        return text

    @property
    def dim(self) -> int:
        per_view = len(self.views) if self.tta_combine == "concat" else 1
        return sum(b.dim for b in self.backbones) * per_view

    def _extractor(self, member: int, view: View | None) -> Extractor:
        key = (member, json.dumps(None if view is None else view.identity(), sort_keys=True))
        extractor = self._extractors.get(key)
        if extractor is None:
            extractor = self._extractors[key] = Extractor(
                self.backbones[member],
                resize=self.members[member].resize,
                view=view,
                **self._options,
            )
        return extractor

    def extract(self, source: Any, **kwargs: Any) -> Embeddings:
        """Embed ``source`` through every member and view; arguments as for
        :meth:`featx.Extractor.extract`. Returns one :class:`~featx.Embeddings`."""
        return self._extract(source, self.views, kwargs)

    def extract_copies(self, source: Any, **kwargs: Any) -> list[Embeddings]:
        """The augmented copies of ``source``: one :class:`~featx.Embeddings` per copy index,
        rows aligned with :meth:`extract`'s. Raises if ``augment`` is not set."""
        if self.augment is None:
            raise ValueError("extract_copies needs augment= (e.g. augment=2 copies).")
        return [
            self._extract(
                source,
                [copy if v is None else Compose([copy, v]) for v in self.views],
                kwargs,
            )
            for copy in self.augment.views()
        ]

    def _extract(self, source: Any, views: list[View | None], kwargs: dict) -> Embeddings:
        start = time.perf_counter()
        parts: list[list[Embeddings]] = [
            [self._extractor(i, v).extract(source, **kwargs) for v in views]
            for i in range(len(self.members))
        ]
        flat = [e for member in parts for e in member]
        first = flat[0]
        index = first.index
        for e in flat[1:]:
            index = np.intersect1d(index, e.index)
        blocks = []
        for member in parts:
            rows = [e.X[np.searchsorted(e.index, index)] for e in member]
            if self.tta_combine == "mean" and len(rows) > 1:
                blocks.append(np.mean(rows, axis=0, dtype=np.float64).astype(np.float32))
            else:
                blocks.extend(rows)
        keep = np.searchsorted(first.index, index)
        failed = {name: reason for e in flat for name, reason in e.failed}
        return Embeddings(
            X=blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1),
            y=None if first.y is None else first.y[keep],
            classes=first.classes,
            paths=None if first.paths is None else [first.paths[k] for k in keep],
            index=index,
            failed=sorted(failed.items()),
            fingerprint=first.fingerprint if len(flat) == 1 else self.fingerprint,
            spec=first.spec if len(flat) == 1 else self.spec,
            cache_hits=sum(e.cache_hits for e in flat),
            cache_misses=sum(e.cache_misses for e in flat),
            seconds=time.perf_counter() - start,
        )

    def costs(self) -> list[dict[str, Any]]:
        """Per member: its label, dimension, and extraction cost in ms per image (all views
        summed, from the cache's records; ``None`` until it has computed something).

        With augmentation, ``augment_ms_per_image`` is the extra cost per training image.
        """
        rows = []
        for i, member in enumerate(self.members):
            per_view = [self._ms(self._extractor(i, v)) for v in self.views]
            rows.append(
                {
                    "member": member_label(member),
                    "views": [view_label(v) for v in self.views],
                    "dim": self.backbones[i].dim
                    * (len(self.views) if self.tta_combine == "concat" else 1),
                    "ms_per_image": None if None in per_view else round(sum(per_view), 3),
                }
            )
        return rows

    def ms_per_image(self) -> float | None:
        """Total extraction cost of one image (all members and views), or ``None``."""
        costs = [row["ms_per_image"] for row in self.costs()]
        return None if None in costs else round(sum(costs), 3)

    @staticmethod
    def _ms(extractor: Extractor) -> float | None:
        seconds = extractor.cache.seconds_per_image(extractor.fingerprint)
        return None if seconds is None else 1000.0 * seconds


def _member(member: BackboneConfig | Mapping[str, Any] | str | Backbone) -> BackboneConfig:
    if isinstance(member, (BackboneConfig, Mapping, str, os.PathLike, Backbone)):
        return BackboneConfig.of(dict(member) if isinstance(member, Mapping) else member)
    raise ValueError(
        f"The member {member!r} is not understood. Expected a BackboneConfig, a registry "
        "name, a Backbone, or a dict with a 'backbone' key and BackboneConfig fields."
    )


def member_label(member: BackboneConfig) -> str:
    """Short text for a member: ``"MobileNetV2@160 avg+max"``, with the layer if any."""
    text = " + ".join(backbone_name(b) for b in member.backbone)
    if member.input_size != (None,):
        text += f"@{size_label(list(member.input_size))}"
    if member.pooling not in (None, "avg"):
        text += f" {member.pooling}"
    layers = [lay for lay in member.layer if lay]
    if layers:
        text += f" [{', '.join(layers)}]"
    return text
