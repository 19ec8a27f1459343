"""The ``featx`` command: each subcommand parses its arguments and calls one public function."""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import functools
import importlib.abc
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featx.backbones import ALL_POOLINGS as POOLINGS
from featx.demo import FLOWERS_URL
from featx.exporting import EXPORT_FORMATS, QUANTIZATIONS
from featx.extract import DECODE_IN
from featx.heads import HEAD_KINDS, HEADS, grid_key
from featx.images import DECODERS

__all__ = ["flag_wording", "main", "parse_backbone_spec", "parse_backbones"]

# Keys of the per-backbone syntax NAME[:key=value]... (see parse_backbone_spec).
SPEC_KEYS = ("weights", "size", "layer", "pooling", "label", "seed")
RESIZES = ("stretch", "center_crop")
PRECISIONS = ("float32", "bfloat16", "float16")


def _none_or(value: str) -> str | None:
    """``none`` (any case) is None: for --weights, --tta and --cache-dir."""
    return None if value.lower() == "none" else value


def _arg_type(parse, option: str):
    """An argparse type from a parser of featx.config, its errors naming ``option``."""

    def convert(value: str):
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{option} {value!r}: {exc}") from None

    return convert


def _size(value: str):
    """``160``, ``160x120`` (height x width); ``160,224`` or ``160+224``: several sizes,
    each image embedded at each and the embeddings concatenated."""
    from featx.config import parse_sizes

    return parse_sizes(value, separators="+,")


def _sizes_space(value: str) -> list[Any]:
    """``160,224,160+224``: candidates for tune; ``+`` concatenates sizes."""
    from featx.config import parse_sizes

    return [parse_sizes(candidate) for candidate in value.split(",")]


def _grid(value: str) -> tuple[str, dict[str, list[Any]]]:
    """``logreg:C=0.01,0.1`` -> ("logreg", {"clf__C": [0.01, 0.1]})."""
    head, sep, rest = value.partition(":")
    key, sep2, raw = rest.partition("=")
    if not sep or not sep2 or head not in HEAD_KINDS:
        raise argparse.ArgumentTypeError(
            f"--grid {value!r}: expected HEAD:KEY=V1,V2 with HEAD one of {', '.join(HEADS)}, "
            "e.g. logreg:C=0.01,0.1"
        )
    values = [json.loads(v) if v.strip() else v for v in raw.split(",")]
    return head, {grid_key(head, key): values}


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param {value!r}: expected KEY=VALUE, e.g. C=10")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _heads(value: str) -> list[str]:
    """Comma-separated head kinds, each checked against the head table."""
    kinds = _names(value)
    unknown = [k for k in kinds if k not in HEAD_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown head {unknown[0]!r}; expected a comma-separated list of "
            f"{', '.join(HEADS)} (`featx heads` describes them)"
        )
    return kinds


def parse_backbone_spec(text: str) -> dict[str, Any]:
    """``NAME[:key=value]...`` -> a backbone entry for :func:`featx.compare` and
    :func:`featx.report` (one :class:`~featx.config.BackboneConfig`).

    Keys: ``weights`` (``imagenet``, ``none`` for seeded random weights, or a file path),
    ``size`` (``N``, ``HxW``, or ``N+M`` for several sizes concatenated), ``layer``,
    ``pooling``, ``label``, ``seed``. A ``:`` starts a new key only when a known key and
    ``=`` follow it, so paths may contain colons.

    Examples
    --------
    >>> parse_backbone_spec("MobileNetV2:weights=none:size=160")
    {'backbone': 'MobileNetV2', 'weights': None, 'input_size': 160}
    >>> parse_backbone_spec("MobileNetV2:weights=w/mobilenet.h5:label=pretrained")
    {'backbone': 'MobileNetV2', 'weights': 'w/mobilenet.h5', 'label': 'pretrained'}
    >>> parse_backbone_spec("ResNet50:size=160+224")
    {'backbone': 'ResNet50', 'input_size': [160, 224]}
    """
    from featx.config import parse_sizes

    pattern = r":(?=(?:" + "|".join(SPEC_KEYS) + r")=)"
    name, *pairs = re.split(pattern, text.strip())
    if not name:
        raise ValueError(f"Backbone spec {text!r} has no backbone name, e.g. 'MobileNetV2'.")
    entry: dict[str, Any] = {"backbone": name}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "weights":
            entry["weights"] = _none_or(value)
        elif key == "size":
            try:
                entry["input_size"] = parse_sizes(value)
            except ValueError:
                raise ValueError(
                    f"Backbone spec {text!r}: size={value!r} should be N or HxW, or sizes "
                    "joined by + (160+224) to concatenate them."
                ) from None
        elif key == "seed":
            entry["seed"] = int(value)
        elif key == "pooling" and value not in POOLINGS:
            raise ValueError(
                f"Backbone spec {text!r}: pooling={value!r}; expected one of {', '.join(POOLINGS)}."
            )
        else:
            entry[key] = value
    return entry


def parse_backbones(values: list[str] | None) -> list[dict[str, Any]] | None:
    """``--backbones``: specs separated by spaces or commas, one entry each.

    A comma followed by a space stays inside its spec (``label=a, b``).

    Examples
    --------
    >>> [e["backbone"] for e in parse_backbones(["MobileNetV2,VGG16:weights=none", "ResNet50"])]
    ['MobileNetV2', 'VGG16', 'ResNet50']
    """
    if not values:
        return None
    specs = [part for value in values for part in re.split(r",(?=\S)", value) if part.strip()]
    return [parse_backbone_spec(spec) for spec in specs]


def _add_head_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--head",
        default=None,
        choices=HEADS,
        help="`featx heads` lists them (default: logreg, or the head of --params-from)",
    )
    p.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        help="a head parameter KEY=VALUE (repeatable), e.g. --param C=10; given parameters "
        "are used as they are (no search)",
    )
    p.add_argument(
        "--params-from",
        metavar="FILE",
        default=None,
        help="use the parameters `featx evaluate --json` chose, saved in FILE (no search)",
    )
    p.add_argument(
        "--inner-cv", type=int, default=3, help="folds of the search without validation/"
    )


def _add_backbone_options(
    p: argparse.ArgumentParser, default_weights: str | None, *, searched: bool = False
) -> None:
    """The one set of network options (:class:`~featx.config.BackboneConfig`'s fields)
    and run options every subcommand that extracts takes. ``searched``: tune, which
    searches sizes and poolings instead of taking one."""
    p.add_argument(
        "--backbone",
        default="MobileNetV2",
        help="registry name, hub:PRESET (featx backbones --hub), or a .keras/.h5 file",
    )
    p.add_argument(
        "--weights",
        type=_none_or,
        default=default_weights,
        help="imagenet | none (seeded random init) | PATH to a weights file",
    )
    if not searched:
        p.add_argument(
            "--size",
            type=_arg_type(_size, "--size"),
            default=None,
            help="input size N or HxW; N,M (or N+M) embeds at each size and concatenates",
        )
        p.add_argument(
            "--pooling",
            choices=POOLINGS,
            default=None,
            help="global pooling (avg+max concatenates both); none given: avg for feature maps, "
            "cls for keras-hub ViTs",
        )
    p.add_argument("--layer", default=None, help="embed this layer instead of the last block")
    p.add_argument(
        "--resize",
        choices=RESIZES,
        default=None,
        help="how images reach the input size: stretched, or centre-cropped to its shape; none "
        "given: the keras-hub preset's converter, else stretch",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute precision: bfloat16 for CPUs with AVX512-BF16, float16 for GPUs",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights none")
    p.add_argument(
        "--cache-dir",
        type=_none_or,
        default="auto",
        help="cache folder (default $FEATX_CACHE_DIR or ./cache); none disables it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_split_options(p: argparse.ArgumentParser, nested: str) -> None:
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        help=f"a root with train/ validation/ test/, or one class-per-folder directory ({nested})",
    )
    p.add_argument("--train", default=None, help="explicit training source")
    p.add_argument("--validation", default=None, help="explicit validation source")
    p.add_argument("--test", default=None, help="explicit test source")
    p.add_argument("--cv", type=int, default=5, help="(outer) folds for a single folder")


def _add_backbones_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        metavar="SPEC",
        help=f"{what}: NAME[:weights=W][:size=N|N+M][:layer=L][:pooling=P][:label=TEXT], "
        "separated by spaces or commas, e.g. MobileNetV2 MobileNetV2:weights=none "
        "(default: --backbone with the options below)",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, where it says something: not for flags,
    options without one, or help texts that already explain theirs."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _shows_default(action) and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and default not in (None, False, [], argparse.SUPPRESS)


def _version() -> str:
    """featx's version and the versions that decide its vectors, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    from featx import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    others = ", ".join(f"{name} {installed(name)}" for name in ("keras", "tensorflow"))
    return f"featx {__version__} (Python {sys.version.split()[0]}, {others})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx",
        description="Frozen pretrained Keras CNNs as cached feature extractors.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="embed a folder or list of images into the cache")
    p.add_argument(
        "source",
        help="a class-per-folder directory, an image file, or a .csv / "
        ".parquet manifest of image paths (and labels)",
    )
    p.add_argument("--path-column", default="path", help="the manifest's path column")
    p.add_argument(
        "--label-column",
        default=None,
        help="the manifest's label column (default: 'label' if present)",
    )
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="pillow",
        help="Pillow for every image, or fast: JPEGs through libjpeg-turbo and OpenCV, "
        "about 15%% less CPU per photo, vectors within a mean cosine of 0.997",
    )
    p.add_argument(
        "--decode-in",
        choices=DECODE_IN,
        default="auto",
        help="decode in threads or in processes (auto: processes when the network runs "
        "on a GPU, the machine has 8 or more CPUs and there are 1,000 or more files)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="compute in this process, or on a Ray cluster (pip install featx[ray])",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: a local Ray)",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        help="copies of the network on the cluster (default: one per CPU)",
    )
    p.add_argument(
        "--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each copy of the network holds"
    )
    p.add_argument(
        "--ray-gpus-per-actor", type=float, default=0.0, help="GPUs each copy of the network holds"
    )
    _add_backbone_options(p, default_weights="imagenet")
    p.add_argument(
        "--out",
        default=None,
        help="also write the embeddings: FILE.npz (one file), FILE.parquet (one row per "
        "image: index, path, label and an embedding vector column, for pandas or Spark; "
        "needs pyarrow), or a FOLDER written row by row (memory-mappable X.npy + meta.npz; "
        "for sets larger than memory)",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="skip: leave out an unreadable image, list it in the summary, and go on",
    )

    p = sub.add_parser(
        "train",
        help="fit an image classifier, its head's parameters chosen as evaluate chooses them",
    )
    p.add_argument(
        "source",
        help="a class-per-folder directory, or a root with train/ (validation/) test/: "
        "learns from train/ and validation/, leaves test/ to featx evaluate",
    )
    p.add_argument("--out", required=True, help="where to write the classifier file")
    _add_head_options(p)
    _add_backbone_options(p, default_weights="imagenet")

    p = sub.add_parser("predict", help="top-k classes of images with a saved classifier")
    p.add_argument("model", help="a classifier file written by `featx train`")
    p.add_argument(
        "images",
        nargs="+",
        help="image files, folders (class folders are read as true labels) or manifests",
    )
    p.add_argument(
        "--top", type=int, default=3, help="classes shown per image, most probable first"
    )
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="write one row per image (image, label, class_1, probability_1, ..., error) as "
        "each chunk is done, to FILE.partial, renamed to FILE at the end",
    )
    p.add_argument(
        "--chunk", type=int, default=256, help="images embedded and classified at a time"
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="skip: an unreadable image gets a row with its error, and the run goes on",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="TYPE",
        help="accept this type beyond featx's allowlist in the file (repeatable; only for "
        "a file from a source you trust)",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a format-1 classifier file (a pickle: it can run code; only for a file "
        "from a source you trust)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines on stdout: one object per image as each chunk is done, then one "
        "summary object (it has no 'image' key)",
    )

    p = sub.add_parser(
        "export", help="write a classifier as one Keras / SavedModel / TFLite / ONNX model"
    )
    p.add_argument("model", help="a classifier file written by `featx train`")
    p.add_argument(
        "--out", required=True, help="the .keras file, SavedModel folder, .tflite or .onnx file"
    )
    p.add_argument("--format", choices=EXPORT_FORMATS, default="keras")
    p.add_argument(
        "--quantize",
        choices=[q for q in QUANTIZATIONS if q],
        help="tflite only: dynamic stores the weights as int8; int8 quantises weights and "
        "activations, calibrated on --representative",
    )
    p.add_argument(
        "--representative",
        metavar="DIR",
        help="with --quantize int8: a folder of images like the training images (the "
        "classifier file records no path, so its training folder must be named here)",
    )
    p.add_argument(
        "--resize",
        action="store_true",
        help="the model takes uint8 images of any size and resizes them itself "
        "(keras and savedmodel)",
    )
    p.add_argument("--trust", action="append", default=[], metavar="TYPE")
    p.add_argument("--json", action="store_true")

    for name, help_text in [
        ("evaluate", "fit and score a head under an honest protocol"),
        ("compare", "score several backbones x heads, with baselines"),
    ]:
        p = sub.add_parser(name, help=help_text)
        _add_split_options(p, "cross-validated")
        _add_backbone_options(p, default_weights="imagenet")
        p.add_argument(
            "--tta",
            type=_none_or,
            default=None,
            help="test-time views averaged: none | flip | crop | flip+crop",
        )
        p.add_argument(
            "--tta-combine",
            choices=("mean", "concat"),
            default="mean",
            help="average the views' embeddings, or concatenate them",
        )
        p.add_argument(
            "--augment",
            type=int,
            default=0,
            help="also train on K seeded augmented copies of each training image",
        )
        if name == "evaluate":
            p.add_argument(
                "--head", default="logreg", choices=HEADS, help="`featx heads` lists them"
            )
        else:
            _add_backbones_option(p, "one row group each")
            p.add_argument(
                "--heads",
                type=_heads,
                default="logreg",
                help=f"comma-separated, from {', '.join(HEADS)}",
            )
            p.add_argument(
                "--no-baselines",
                action="store_true",
                help="leave out the raw-pixel and random-weight baselines",
            )
            p.add_argument("--csv", default=None, help="also write the table to FILE.csv")

    p = sub.add_parser(
        "report",
        help="maps and separation metrics of backbones or layers: "
        "an interactive HTML page and a PNG/SVG figure",
    )
    p.add_argument("source", help="a class-per-folder directory or a root with train/ test/")
    _add_backbones_option(p, "one panel each")
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers of the first backbone, one panel each "
        "('last' is its last block)",
    )
    p.add_argument(
        "--method", choices=("umap", "pca", "tsne"), default="umap", help="projection of the maps"
    )
    p.add_argument("--out", default="report.html", help="the HTML page")
    p.add_argument("--png", default=None, help="also write the figure as PNG")
    p.add_argument("--svg", default=None, help="also write the figure as SVG")
    p.add_argument(
        "--heads",
        default="logreg",
        help=f"heads of the classifier table, comma-separated from {', '.join(HEADS)}, or 'none'",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="FILE",
        help="show this `featx compare --json` (or --csv) output instead",
    )
    p.add_argument(
        "--tune",
        default=None,
        metavar="FILE",
        help="also show this `featx tune --json` (or --csv) search",
    )
    p.add_argument("--k", type=int, default=5, help="neighbours of the k-NN metrics")
    p.add_argument("--no-thumbnails", action="store_true", help="no image thumbnails on hover")
    p.add_argument(
        "--audit",
        action="store_true",
        help="add a 'Data issues' section: featx audit on the first backbone's embeddings",
    )
    p.add_argument("--title", default=None, help="the page's title (default: the source's name)")
    p.add_argument(
        "--max-points",
        type=int,
        default=20_000,
        help="most points drawn per panel; above it a seeded sample keeping every "
        "class is drawn (metrics use every point; 0: draw all)",
    )
    p.add_argument("--cv", type=int, default=5, help="folds of the classifier table")
    _add_backbone_options(p, default_weights="imagenet")

    p = sub.add_parser("tune", help="search size, views, pooling, augmentation and head")
    _add_split_options(p, "nested cross-validation")
    p.add_argument("--inner-cv", type=int, default=3, help="folds of the inner selection")
    p.add_argument(
        "--sizes",
        type=_arg_type(_sizes_space, "--sizes"),
        default="160,224,160+224",
        help="input sizes to try; + concatenates",
    )
    p.add_argument("--tta", default="none,flip", help="views to try")
    p.add_argument("--poolings", default="avg,avg+max", help="poolings to try")
    p.add_argument(
        "--augment",
        default="0",
        help="augmented copies per training image to try, e.g. 0,2",
    )
    p.add_argument(
        "--heads",
        type=_heads,
        default="logreg,svm",
        help=f"heads to try, from {', '.join(HEADS)}",
    )
    p.add_argument(
        "--grid",
        type=_grid,
        action="append",
        default=[],
        help="a head's grid HEAD:KEY=V1,V2 (repeatable), e.g. logreg:C=0.01,0.1",
    )
    p.add_argument("--csv", default=None, help="also write the table to FILE.csv")
    _add_backbone_options(p, default_weights="imagenet", searched=True)

    p = sub.add_parser(
        "audit", help="what is wrong with the data: label issues, duplicates, leaks, outliers"
    )
    _add_split_options(p, "cross-validated")
    _add_backbone_options(p, default_weights="imagenet")
    p.add_argument(
        "--heads",
        type=_heads,
        default="logreg",
        help="heads whose out-of-sample probabilities are averaged, comma-separated",
    )
    p.add_argument(
        "--near-threshold",
        type=int,
        default=None,
        help="hash bits (of 64) within which images are near-duplicates (default: 4)",
    )
    p.add_argument(
        "--no-search",
        action="store_true",
        help="each head at its default parameters, no inner search (faster, for large sets)",
    )
    p.add_argument("--csv", default=None, metavar="DIR", help="also write the tables to DIR/")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="also write the page: issues beside their neighbours, duplicates, outliers",
    )

    p = sub.add_parser("similar", help="the nearest images of each query, from the cache")
    p.add_argument("queries", nargs="+", help="image files to look up")
    p.add_argument("--in", dest="source", required=True, help="the images searched")
    p.add_argument("-k", type=int, default=8, help="neighbours per query")
    _add_backbone_options(p, default_weights="imagenet")

    p = sub.add_parser("backbones", help="list the registry (--hub: the keras-hub presets)")
    p.add_argument(
        "--hub",
        action="store_true",
        help='the keras-hub image presets, as backbone "hub:NAME" (pip install "featx[hub]")',
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("heads", help="list the heads: kinds, what they are, their grids")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("cache", help="show, check or clear the embedding cache")
    p.add_argument("action", choices=("info", "verify", "clear"))
    p.add_argument(
        "--cache-dir",
        type=_none_or,
        default="auto",
        help="cache folder (default $FEATX_CACHE_DIR or ./cache)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser(
        "demo",
        help="the first thing to run: pretrained features against baselines, on photos",
    )
    p.add_argument(
        "--data",
        default=None,
        help="your photos: a class-per-folder directory (split 60/20/20) or a root with "
        "train/ validation/ test/ (default: Keras' flower photos, downloaded once; offline, "
        "scikit-learn's digits)",
    )
    p.add_argument(
        "--data-url",
        default=FLOWERS_URL,
        metavar="URL",
        help="where the flower photos archive is downloaded from (a mirror; file:// works)",
    )
    p.add_argument(
        "--weights-url",
        default=None,
        metavar="URL",
        help="where MobileNetV2's ImageNet weights are downloaded from (default: Keras' own "
        "file for the input size)",
    )
    p.add_argument(
        "--heads",
        type=_heads,
        default="logreg,svm,mlp",
        help="comma-separated heads to compare",
    )
    p.add_argument(
        "--method",
        choices=("umap", "pca", "tsne"),
        default="umap",
        help="projection of the report's maps",
    )
    _add_backbone_options(p, default_weights="imagenet")
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
        command.set_defaults(command_parser=command)  # whose options errors are worded in
        # Also after the subcommand (featx demo -v); SUPPRESS keeps a -v given before it.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
        )
    return parser


_VERBOSE_HELP = "show TensorFlow's start-up log (hidden by default)"


Result = tuple[dict[str, Any], str]


def _network(args: argparse.Namespace) -> dict[str, Any]:
    """The network options, as :class:`~featx.config.BackboneConfig` fields (no backbone)."""
    params = {
        "weights": args.weights,
        "layer": args.layer,
        "resize": args.resize,
        "seed": args.seed,
        "precision": args.precision,
    }
    if hasattr(args, "size"):
        params.update(input_size=args.size, pooling=args.pooling)
    return params


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """How to run the extraction: batch size, cache, progress."""
    return {"batch_size": args.batch_size, "cache_dir": args.cache_dir, "verbose": not args.quiet}


def _extract(args: argparse.Namespace) -> Result:
    from featx.extract import Extractor
    from featx.sources import resolve_source

    # One file (.npz, .parquet) is written whole at the end; a folder is streamed into.
    to_file = bool(args.out) and args.out.lower().endswith((".npz", ".parquet"))
    if to_file and args.out.lower().endswith(".parquet"):
        from featx.embeddings import parquet_available

        parquet_available()  # before any work: a missing pyarrow is said at once
    extractor = Extractor(
        args.backbone,
        **_network(args),
        **_run(args),
        decoder=args.decoder,
        decode_in=args.decode_in,
        on_error=args.on_error,
        engine=args.engine,
        address=args.address,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
        ray_gpus_per_actor=args.ray_gpus_per_actor,
    )
    # Resolved here so that the summary can report the files a folder scan left out.
    images = resolve_source(
        args.source, path_column=args.path_column, label_column=args.label_column
    )
    embeddings = extractor.extract(images, out=None if to_file else args.out)
    if to_file:
        embeddings.save(args.out)
    summary = embeddings.summary()
    summary["out"] = args.out
    summary["skipped"] = images.skipped
    lines = [
        f"{summary['n_images']} images -> {summary['dim']}-d embeddings in "
        f"{summary['seconds']:.2f} s ({summary['images_per_second']} images/s)",
        f"cache: {summary['cache_hits']} hits, {summary['cache_misses']} computed "
        f"({extractor.cache.location or 'disabled'})",
    ]
    lines += [f"failed: {f['input']}: {f['reason']}" for f in summary["failed"]]
    if images.skipped:
        counts = ", ".join(f"{n} {ext}" for ext, n in images.skipped.items())
        lines.append(
            f"skipped: {sum(images.skipped.values())} image file(s) in formats featx cannot "
            f"read ({counts}); the warning above says how to read them"
        )
    if args.out:
        lines.append(f"wrote {args.out}")
    return summary, "\n".join(lines)


def _train(args: argparse.Namespace) -> Result:
    from featx.classifier import save_classifier, train_classifier
    from featx.heads import params_text

    head, grid, how = _train_settings(args)
    trained = train_classifier(
        args.source,
        head=head,
        head_params=dict(args.param),
        grid=grid,
        inner_cv=args.inner_cv,
        backbone=args.backbone,
        **_network(args),
        **_run(args),
    )
    model = trained.model
    save_classifier(model, args.out)
    size = os.path.getsize(args.out)
    summary = trained.summary()
    result = {"out": args.out, "bytes": size, "backbone": args.backbone, **summary}
    scores = [s["score"] for s in trained.search]
    if trained.selection != "none":
        how = (
            f"chose {params_text(trained.params)} by {trained.selection} {trained.score:.4f} "
            f"(of {len(scores)} settings, {min(scores):.4f}-{max(scores):.4f}), as featx "
            "evaluate chooses"
        )
    how = how or "default parameters"
    on = " + ".join("all images" if s == "all" else f"{s}/" for s in trained.trained_on)
    lines = [
        f"{trained.head}: {how}",
        f"trained on {on}: {sum(trained.trained_on.values())} images, "
        f"{len(model.classes_)} classes",
    ]
    if trained.held_out:
        lines.append(
            f"test/ ({trained.held_out['test']} images) held out: featx evaluate "
            f"{args.source} scores it"
        )
    lines.append(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return result, "\n".join(lines)


def _train_settings(args: argparse.Namespace) -> tuple[str, Any, str]:
    """The head, the grid train_classifier chooses from, and what the text says of them."""
    from featx.heads import params_text

    head = args.head or "logreg"
    if args.params_from is None:
        if args.param:
            return head, None, "parameters given: " + ", ".join(f"{k}={v}" for k, v in args.param)
        return head, "default", ""
    if args.param:
        raise ValueError("--param and --params-from both set parameters; pass one of them.")
    try:
        saved = json.loads(Path(args.params_from).read_text())
        chosen, saved_head = saved["chosen_params"], saved["head"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"--params-from {args.params_from}: expected the JSON that featx evaluate --json "
            f"prints, with 'head' and 'chosen_params' ({type(exc).__name__}: {exc})."
        ) from None
    if args.head is not None and args.head != saved_head:
        raise ValueError(
            f"--head {args.head}, but {args.params_from} holds parameters chosen for the "
            f"{saved_head} head. Leave out --head, or pass --head {saved_head}."
        )
    # Nested cross-validation chose once per outer fold: the most frequent choice.
    fixed = {
        key: max(value, key=value.count) if isinstance(value, list) else value
        for key, value in chosen.items()
    }
    text = f"parameters from {args.params_from}: {params_text(chosen)}"
    return saved_head, {key: [value] for key, value in fixed.items()}, text


def _predict(args: argparse.Namespace) -> Result:
    from featx.classifier import iter_predictions, load_classifier

    model = load_classifier(args.model, trusted=args.trust, trust_pickle=args.trust_pickle)
    if args.top < 1:
        raise ValueError(f"--top {args.top}: expected at least 1.")
    classes = [str(c) for c in model.classes_]
    k = min(args.top, len(classes))
    out = Path(args.csv) if args.csv else None
    partial = out.with_name(out.name + ".partial") if out else None
    counts = {"images": 0, "failed": 0, "labelled": 0, "correct": 0}
    with open(partial, "w", newline="") if partial else contextlib.nullcontext() as f:
        writer = None
        if f is not None:
            writer = csv.writer(f)
            ranks = [(f"class_{i}", f"probability_{i}") for i in range(1, k + 1)]
            writer.writerow(["image", "label", *[c for pair in ranks for c in pair], "error"])
        for source in _prediction_sources(args.images):
            for row in iter_predictions(
                model, source, k=k, chunk_size=args.chunk, on_error=args.on_error
            ):
                counts["images"] += 1
                if "error" in row:
                    counts["failed"] += 1
                elif row["label"] is not None:
                    counts["labelled"] += 1
                    counts["correct"] += row["top"][0][0] == row["label"]
                if writer is not None:
                    writer.writerow(_csv_row(row, k))
                if args.json:
                    # Streamed, not gathered: memory stays one chunk's, whatever the count.
                    print(json.dumps(_json_row(row), ensure_ascii=True), file=args.stdout)
                else:
                    print(_text_row(row), flush=True)
            if f is not None:
                f.flush()
            if args.json:
                args.stdout.flush()
    if partial:
        os.replace(partial, out)
    summary: dict[str, Any] = {**counts}
    if counts["labelled"]:
        summary["accuracy"] = round(counts["correct"] / counts["labelled"], 6)
    lines = [f"{counts['images']} images, {counts['failed']} not read"]
    if counts["labelled"]:
        lines.append(
            f"accuracy against the folders' labels: {summary['accuracy']:.4f} "
            f"({counts['correct']} of {counts['labelled']})"
        )
    if out:
        summary["csv"] = str(out)
        lines.append(f"wrote {out}")
    return summary, "\n".join(lines)


def _export(args: argparse.Namespace) -> Result:
    from featx.classifier import load_classifier
    from featx.exporting import export

    model = load_classifier(args.model, trusted=args.trust)
    result = export(
        model,
        args.out,
        format=args.format,
        quantize=args.quantize,
        resize=args.resize,
        representative=args.representative,
    )
    return result, (
        f"wrote {result['path']} ({result['format']}, {result['bytes'] / 1e6:.1f} MB, "
        f"{len(result['classes'])} classes, input "
        + ("any size, resized to " if args.resize else "")
        + f"{result['input_size'][0]}x{result['input_size'][1]} uint8 RGB); classes and "
        f"input in {result['metadata']}"
    )


def _prediction_sources(items: list[str]) -> Iterator[Any]:
    """The arguments of featx predict as sources, in order: each folder or manifest on its
    own (so class folders give labels), consecutive image files together."""
    from featx.sources import MANIFEST_EXTENSIONS

    files: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir() or (path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS):
            if files:
                yield files
                files = []
            yield item
        else:
            files.append(item)
    if files:
        yield files


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": row["image"]}
    if row["label"] is not None:
        out["label"] = row["label"]
    if "error" in row:
        out["error"] = row["error"]
    else:
        out["top"] = [{"class": c, "probability": round(p, 6)} for c, p in row["top"]]
    return out


def _csv_row(row: dict[str, Any], k: int) -> list[Any]:
    ranked = [] if "error" in row else [v for c, p in row["top"] for v in (c, f"{p:.6f}")]
    ranked += [""] * (2 * k - len(ranked))
    return [row["image"], row["label"] or "", *ranked, row.get("error", "")]


def _text_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['image']}: not read: {row['error']}"
    return f"{row['image']}: " + ", ".join(f"{c} {p:.3f}" for c, p in row["top"])


def _splits(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "source": args.source,
        "train": args.train,
        "validation": args.validation,
        "test": args.test,
        "cv": args.cv,
    }


def _evaluate(args: argparse.Namespace) -> Result:
    from featx.evaluation import evaluate

    result = evaluate(
        **_splits(args),
        backbone=args.backbone,
        head=args.head,
        tta=args.tta,
        tta_combine=args.tta_combine,
        augment=args.augment or None,
        **_network(args),
        **_run(args),
    ).summary()
    chosen = ", ".join(f"{k}={v}" for k, v in (result.get("chosen_params") or {}).items())
    text = (
        f"{result.get('protocol')}: accuracy {result['accuracy']:.4f}, balanced accuracy "
        f"{result['balanced_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}"
        + (f" (chosen {chosen})" if chosen else "")
    )
    return result, text


def _compare(args: argparse.Namespace) -> Result:
    from featx.evaluation import compare

    result = compare(
        **_splits(args),
        backbones=parse_backbones(args.backbones) or [args.backbone],
        heads=args.heads,
        baselines=not args.no_baselines,
        tta=args.tta,
        tta_combine=args.tta_combine,
        augment=args.augment or None,
        **_network(args),
        **_run(args),
    )
    if args.csv:
        result.table.to_csv(args.csv, index=False)
    return {**result.summary(), "csv": args.csv}, result.text()


def _report(args: argparse.Namespace) -> Result:
    from featx.reporting import load_comparison, load_tuning, report
    from featx.separation import METRICS, format_metric

    layers = None
    if args.layers:
        layers = [None if n == "last" else n for n in _names(args.layers)]
    heads = [] if args.heads.strip().lower() == "none" else _heads(args.heads)
    result = report(
        args.source,
        backbones=parse_backbones(args.backbones) or [args.backbone],
        layers=layers,
        method=args.method,
        out=args.out,
        png=args.png,
        svg=args.svg,
        heads=heads,
        comparison=load_comparison(args.compare) if args.compare else None,
        tuning=load_tuning(args.tune) if args.tune else None,
        cv=args.cv,
        k=args.k,
        thumbnails=not args.no_thumbnails,
        audit=args.audit,
        title=args.title,
        max_points=args.max_points or None,
        **_network(args),
        **_run(args),
    )
    columns = [(m, max(len(m.short), 5) + 2) for m in METRICS]
    lines = [f"{'panel':<40}" + "".join(f"{m.short:>{w}}" for m, w in columns)]
    for panel in result["panels"]:
        values = panel["metrics"]
        cells = "".join(f"{format_metric(values.get(m.name)):>{w}}" for m, w in columns)
        lines.append(f"{panel['label'][:39]:<40}{cells}")
    written = [p for p in (result["out"], result["png"], result["svg"]) if p]
    lines.append(f"wrote {', '.join(written)} in {result['seconds']['total']:.1f} s")
    return result.summary(), "\n".join(lines)


def _tune(args: argparse.Namespace) -> Result:
    from featx.tuning import tune

    space = {
        "input_size": args.sizes,
        "tta": [_none_or(v) for v in _names(args.tta)],
        "pooling": _names(args.poolings),
        "augment": [int(v) or None for v in _names(args.augment)],
        "head": args.heads,
    }
    network = _network(args)
    found = tune(
        **_splits(args),
        backbone=args.backbone,
        weights=network["weights"],
        layer=network["layer"],
        precision=network["precision"],
        space=space,
        grids=dict(args.grid) or None,
        inner_cv=args.inner_cv,
        resize=network["resize"],
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        seed=network["seed"],
        verbose=False,
        # Progress on stderr: stdout carries the table (or --json's one object).
        log=None if args.quiet else functools.partial(print, file=sys.stderr, flush=True),
    )
    if args.csv:
        found.results.to_csv(args.csv, index=False)
    from featx.heads import params_text
    from featx.results import text_table

    rows = [
        {**row, "params": params_text(json.loads(row["params"]))}
        for row in found.results.to_dict(orient="records")
    ]
    columns = [
        ("name", "configuration", ""),
        ("params", "params", ""),
        ("score", "score", ".4f"),
        ("outer_accuracy", "outer acc.", ".4f"),
        ("dim", "dim", "d"),
        ("ms_per_image", "ms/image", ".2f"),
    ]
    table = text_table(rows, columns)
    score = "mean outer-fold accuracy" if found.protocol == "nested-cv" else "test accuracy"
    text = (
        f"{table}\n{found.protocol}: {score} of the tuned pipeline {found.accuracy:.4f} "
        f"(baseline {found.results['name'].iloc[0]}: {found.baseline_accuracy:.4f}); "
        f"chosen: {found.results.loc[found.results['best'], 'name'].iloc[0]} "
        f"{params_text(found.best['params'])}"
    )
    return {**found.summary(), "csv": args.csv}, text


def _audit(args: argparse.Namespace) -> Result:
    from featx.auditing import NEAR_THRESHOLD, audit

    result = audit(
        **_splits(args),
        backbone=args.backbone,
        heads=args.heads,
        search=not args.no_search,
        near_threshold=NEAR_THRESHOLD if args.near_threshold is None else args.near_threshold,
        **_network(args),
        **_run(args),
    )
    summary = result.summary()
    if args.csv:
        _write_audit_tables(result, Path(args.csv))
        summary["csv"] = args.csv
    if args.out:
        from featx.audit_page import write_audit_html

        write_audit_html(result, args.out, title=f"featx audit: {args.source or 'splits'}")
        summary["out"] = args.out
    counts, accuracy = summary["counts"], summary["accuracy"]
    lines = [
        f"{counts['images']} images: {counts['label_issues']} label issues, "
        f"{counts['duplicate_groups']} duplicate groups ({counts['exact_groups']} exact, "
        f"{counts['near_groups']} near, {counts['leaks']} across splits), "
        f"{counts['outliers']} outliers"
    ]
    free = accuracy.get("leak_free")
    lines.append(
        f"accuracy {accuracy['naive']:.4f} naive"
        + ("" if free is None else f", {free:.4f} leak-free")
    )
    for issue in summary["label_issues"][:10]:
        lines.append(
            f"  label? {issue['path']}: given {issue['given']}, looks like "
            f"{issue['suggested']} ({issue['score']:.3f})"
        )
    for group in summary["duplicates"][:10]:
        where = " LEAK " + "/".join(sorted(set(group["splits"]))) if group["cross_split"] else ""
        lines.append(f"  {group['kind']} duplicates{where}: " + ", ".join(group["paths"]))
    for row in summary["outliers"][:10]:
        lines.append(f"  outlier {row['path']} ({row['score']:.3f})")
    if args.out:
        lines.append(f"wrote {args.out}")
    return summary, "\n".join(lines)


def _write_audit_tables(result: Any, folder: Path) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    tables = {
        "label_issues.csv": pd.DataFrame(
            summary["label_issues"], columns=["path", "given", "suggested", "score", "split"]
        ),
        "ranking.csv": result.to_frame(),
        "duplicates.csv": pd.DataFrame(
            [
                {"group": g, "path": path, "split": split, "label": label, "kind": d["kind"],
                 "similarity": d["similarity"], "cross_split": d["cross_split"]}
                for g, d in enumerate(summary["duplicates"])
                for path, split, label in zip(d["paths"], d["splits"], d["labels"], strict=True)
            ],
            columns=["group", "path", "split", "label", "kind", "similarity", "cross_split"],
        ),
        "outliers.csv": pd.DataFrame(
            summary["outliers"], columns=["path", "score", "label", "split"]
        ),
    }  # fmt: skip
    for name, table in tables.items():
        table.to_csv(folder / name, index=False)


def _similar(args: argparse.Namespace) -> Result:
    from featx.similar import neighbours

    result = neighbours(
        args.queries, args.source, k=args.k, backbone=args.backbone, **_network(args), **_run(args)
    )
    summary = result.summary()
    lines = []
    for q in summary["queries"]:
        lines.append(q["query"])
        for n in q["neighbours"]:
            label = f" [{n['label']}]" if n["label"] is not None else ""
            lines.append(f"  {n['similarity']:.4f}  {n['path']}{label}")
    return summary, "\n".join(lines)


def _backbones(args: argparse.Namespace) -> Result:
    from featx.backbones import list_backbones

    if args.hub:
        return _hub_presets()
    rows = [
        {
            "name": s.name,
            "default_size": s.default_size,
            "min_size": s.min_size,
            "dim": s.dim,
            "preprocess": f"keras.applications.{s.module}.preprocess_input",
        }
        for s in list_backbones()
    ]
    text = "\n".join(
        [f"{'backbone':<20}{'size':>6}{'min':>6}{'dim':>7}  preprocessing"]
        + [
            f"{r['name']:<20}{r['default_size']:>6}{r['min_size']:>6}{r['dim']:>7}  "
            f"{r['preprocess']}"
            for r in rows
        ]
    )
    return {"backbones": rows}, text


def _hub_presets() -> Result:
    from featx.hub import HUB_PREFIX, OUTPUT_POOLINGS, list_presets

    rows = [{"backbone": HUB_PREFIX + r["preset"], **r} for r in list_presets()]
    text = "\n".join(
        [f"{'backbone':<44}{'family':<22}{'params':>14}  output (poolings)"]
        + [
            f"{r['backbone']:<44}{r['family']:<22}{r['params'] or 0:>14,}  {r['output']} "
            f"({', '.join(OUTPUT_POOLINGS[r['output']])})"
            for r in rows
        ]
    )
    return {"presets": rows}, text


def _heads_command(args: argparse.Namespace) -> Result:
    rows = [
        {
            "name": kind.name,
            "help": kind.help,
            "grid": {grid_key(kind.name, k): list(v) for k, v in kind.grid.items()},
        }
        for kind in HEAD_KINDS.values()
    ]
    lines = []
    for row in rows:
        grid = "; ".join(f"{k.rsplit('__', 1)[-1]}={v}" for k, v in row["grid"].items())
        lines.append(f"{row['name']:<12}{row['help']}\n{'':<12}grid: {grid or '-'}")
    return {"heads": rows}, "\n".join(lines)


def _cache(args: argparse.Namespace) -> Result:
    from featx.cache import EmbeddingCache

    if args.cache_dir is None:
        raise ValueError("featx cache needs a cache folder; --cache-dir none disables caching.")
    cache = EmbeddingCache(args.cache_dir)
    if args.action == "clear":
        n = cache.clear()
        return (
            {"location": str(cache.location), "cleared": n},
            f"cleared {n} cached vectors from {cache.location}",
        )
    if args.action == "verify":
        report = cache.verify()
        status = "ok" if report["ok"] else "PROBLEMS: " + "; ".join(report["problems"])
        return report, f"{status} ({report['n_vectors']} vectors, {report['n_shards']} shards)"
    info = cache.info()
    lines = [
        f"cache at {info['location']}: {info['n_vectors']} vectors, {info['bytes'] / 1e6:.1f} MB"
    ]
    for entry in info["fingerprints"]:
        spec = entry["spec"].get("backbone", {})
        size = "x".join(map(str, spec.get("input_size") or []))
        lines.append(
            f"  {entry['fingerprint'][:12]}  {str(spec.get('architecture'))[:40]:<40} "
            f"{size:>9} {spec.get('pooling', '-')!s:<4} "
            f"{entry['n_vectors']:>8} x {entry['dim']}  weights {str(spec.get('weights'))[:40]}"
        )
    return info, "\n".join(lines)


def _demo(args: argparse.Namespace) -> Result:
    from featx.demo import run_demo

    result = run_demo(
        data=args.data,
        heads=tuple(args.heads),
        method=args.method,
        backbone=args.backbone,
        **_network(args),
        **_run(args),
        log=(lambda _: None) if args.json else functools.partial(print, flush=True),
        data_url=args.data_url,
        weights_url=args.weights_url,
    )
    return result, ""  # the demo has told its story as it went


_COMMANDS = {
    "extract": _extract,
    "train": _train,
    "predict": _predict,
    "export": _export,
    "evaluate": _evaluate,
    "compare": _compare,
    "tune": _tune,
    "report": _report,
    "backbones": _backbones,
    "heads": _heads_command,
    "audit": _audit,
    "similar": _similar,
    "cache": _cache,
    "demo": _demo,
}


# Python parameters spelt differently on the command line: parameter -> the flag's dest.
_PARAMETER_DESTS = {
    "input_size": "size",
    "chunk_size": "chunk",
    "head_params": "param",
    "trusted": "trust",
}
_VALUE = r"""None|True|False|'[^']*'|"[^"]*"|\(\d+, \d+\)|[\w.+/:-]+"""
_NAMED = re.compile(rf"(?<![\w.-])(?P<name>[a-z_]+)(?P<op>>=|=)(?P<value>{_VALUE})?")
_CALL = re.compile(r"[\w.]+\([^()]*\)")


def flag_wording(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the Python parameters it names spelt as ``parser``'s options:
    ``weights=None`` -> ``--weights none``, ``on_error="skip"`` -> ``--on-error skip``,
    ``source=`` -> ``SOURCE``. A call spelt out (``load_classifier(path, trust_pickle=True)``)
    stays Python, and so does a parameter the command has no option for.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="featx evaluate")
    >>> _ = parser.add_argument("source", nargs="?")
    >>> _ = parser.add_argument("--test")
    >>> _ = parser.add_argument("--weights", type=_none_or)
    >>> flag_wording("Both source= and test= were given; or pass weights=None.", parser)
    'Both SOURCE and --test were given; or pass --weights none.'
    """
    options: dict[str, tuple[str, argparse.Action]] = {}
    for action in parser._actions:
        if action.option_strings:
            options[action.dest] = (max(action.option_strings, key=len), action)
        elif action.dest != "help":
            options[action.dest] = (str(action.metavar or action.dest.upper()), action)
    for name, dest in _PARAMETER_DESTS.items():
        if dest in options:
            options.setdefault(name, options[dest])

    def spelt(match: re.Match) -> str:
        if match["name"] not in options:
            return match[0]
        flag, action = options[match["name"]]
        value = match["value"]
        if value is None:
            return flag
        if match["op"] == ">=":
            return f"{flag} {value} or more"
        if value == "None":
            return f"{flag} none" if action.type is _none_or else f"no {flag}"
        if value == "True" and action.nargs == 0:
            return flag
        value = re.sub(r"^\((\d+), (\d+)\)$", r"\1x\2", value.strip("'\""))
        return f"{flag} {value}"

    parts, start = [], 0
    for call in _CALL.finditer(message):
        parts += [_NAMED.sub(spelt, message[start : call.start()]), call[0]]
        start = call.end()
    return "".join([*parts, _NAMED.sub(spelt, message[start:])])


def _error_text(exc: BaseException, args: argparse.Namespace) -> str:
    """What the command line says of an error: in its own options' words."""
    parser = args.command_parser
    reason = getattr(exc, "reason", None)  # a DecodeError
    if reason is not None and not hasattr(args, "on_error"):
        # This command cannot skip images: the fix is in the file.
        return (
            f"Cannot decode {exc.name}: {reason}. Remove or replace the file (featx extract "
            "SOURCE --on-error skip lists every file that cannot be read)."
        )
    return flag_wording(str(exc), parser)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, when something first imports it, with its start-up log held back.

    TensorFlow 2.21 logs through absl before absl is initialised, so TF_CPP_MIN_LOG_LEVEL
    does not reach those lines: each of its two libraries prints "All log messages before
    absl::InitializeLog() ...", oneDNN's notice and "Could not find cuda drivers", and
    the first device listing "failed call to cuInit ... (303)" on a machine without a GPU.
    Only the import and that listing are held back (stderr's file descriptor, where the C++
    code writes), and shown after all if the import fails. The import stays lazy, so
    commands that fail on their arguments still fail at once.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; the real finders do the finding
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with _stderr_held_back():
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # where CUDA is probed (cuInit)
        module.get_logger().setLevel("ERROR")


@contextlib.contextmanager
def _stderr_held_back() -> Iterator[None]:
    """What is written to file descriptor 2 inside, dropped; replayed if it raises."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featx`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if not args.verbose:
        # Only the command is quietened: featx's library leaves TensorFlow's logging alone.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlow) for f in sys.meta_path
        ):
            sys.meta_path.insert(0, _QuietTensorFlow())
    as_json = getattr(args, "json", False)
    args.stdout = sys.stdout  # featx predict --json streams its rows here
    wording = functools.partial(flag_wording, parser=args.command_parser)
    try:
        # With --json, stdout carries exactly one JSON object: anything else printed during
        # the run (Keras' download progress, for one) goes to stderr.
        with (
            contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(),
            warnings.catch_warnings(),
        ):
            show = warnings.showwarning
            warnings.showwarning = lambda message, *where, **kw: show(
                wording(str(message)), *where, **kw
            )
            result, text = _COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        print(f"featx {args.command}: error: {_error_text(exc, args)}", file=sys.stderr)
        return 1
    if as_json or text:
        print(json.dumps(result, ensure_ascii=True) if as_json else text)
    failed_check = args.command == "cache" and args.action == "verify" and not result["ok"]
    return 1 if failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
