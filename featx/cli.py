"""The ``featx`` command: each subcommand parses its arguments and calls one public function."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featx.backbones import ALL_POOLINGS as POOLINGS
from featx.exporting import EXPORT_FORMATS
from featx.heads import HEAD_KINDS, HEADS, grid_key

__all__ = ["main", "parse_backbone_spec", "parse_backbones"]

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
    p.add_argument("--head", default="logreg", choices=HEADS, help="`featx heads` lists them")
    p.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        help="a head parameter KEY=VALUE (repeatable), e.g. --param C=10",
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
            help="default: avg for feature maps, cls for keras-hub ViTs",
        )
    p.add_argument("--layer", default=None, help="embed this layer instead of the last block")
    p.add_argument(
        "--resize",
        choices=RESIZES,
        default=None,
        help="default: the keras-hub preset's converter, else stretch",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute precision: bfloat16 for CPUs with AVX512-BF16, float16 for GPUs",
    )
    p.add_argument("--batch-size", type=int, default=32)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx", description="Frozen pretrained Keras CNNs as cached feature extractors."
    )
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
    p.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0)
    _add_backbone_options(p, default_weights="imagenet")
    p.add_argument(
        "--out",
        default=None,
        help="also write the embeddings: FILE.npz (one file), or a FOLDER written "
        "row by row (memory-mappable X.npy + meta.npz; for sets larger than "
        "memory)",
    )
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")

    p = sub.add_parser("train", help="fit an image classifier on a class-per-folder directory")
    p.add_argument("source", help="a class-per-folder directory")
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
    p.add_argument("--top", type=int, default=3)
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
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="write a classifier as one Keras / SavedModel / TFLite model")
    p.add_argument("model", help="a classifier file written by `featx train`")
    p.add_argument("--out", required=True, help="the .keras file, SavedModel folder or .tflite")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="keras")
    p.add_argument("--quantize", choices=("dynamic",), help="tflite only: weights stored as int8")
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
        p.add_argument("--tta-combine", choices=("mean", "concat"), default="mean")
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
                default=["logreg"],
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
    p.add_argument("--method", choices=("umap", "pca", "tsne"), default="umap")
    p.add_argument("--out", default="report.html", help="the HTML page (default report.html)")
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
    p.add_argument("--title", default=None)
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
        help="input sizes to try; + concatenates (default 160,224,160+224)",
    )
    p.add_argument("--tta", default="none,flip", help="views to try (default none,flip)")
    p.add_argument("--poolings", default="avg,avg+max", help="poolings to try")
    p.add_argument(
        "--augment",
        default="0",
        help="augmented copies per training image to try, e.g. 0,2 (default 0)",
    )
    p.add_argument(
        "--heads",
        type=_heads,
        default=["logreg", "svm"],
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
        default=["logreg"],
        help="heads whose out-of-sample probabilities are averaged, comma-separated",
    )
    p.add_argument(
        "--near-threshold",
        type=int,
        default=None,
        help="hash bits (of 64) within which images are near-duplicates (default 4)",
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
    p.add_argument("-k", type=int, default=8, help="neighbours per query (default 8)")
    _add_backbone_options(p, default_weights="imagenet")

    p = sub.add_parser("backbones", help="list the registry (--hub: the keras-hub presets)")
    p.add_argument(
        "--hub",
        action="store_true",
        help='the keras-hub image presets, as backbone "hub:NAME" (pip install "featx[hub]")',
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("heads", help="list the heads: kinds, what they are, their grids")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cache", help="show, check or clear the embedding cache")
    p.add_argument("action", choices=("info", "verify", "clear"))
    p.add_argument(
        "--cache-dir",
        type=_none_or,
        default="auto",
        help="cache folder (default $FEATX_CACHE_DIR or ./cache)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the first thing to run: extract, cache and classify")
    p.add_argument(
        "--data",
        default=None,
        help="a root with train/ validation/ test/, or a class-per-folder directory "
        "(default: scikit-learn's digits)",
    )
    p.add_argument(
        "--heads",
        type=_heads,
        default=["logreg", "svm", "mlp"],
        help="comma-separated heads to compare",
    )
    p.add_argument(
        "--method",
        choices=("umap", "pca", "tsne"),
        default="umap",
        help="projection of the report's maps",
    )
    _add_backbone_options(p, default_weights="imagenet")
    return parser


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

    extractor = Extractor(
        args.backbone,
        **_network(args),
        **_run(args),
        on_error=args.on_error,
        engine=args.engine,
        address=args.address,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
        ray_gpus_per_actor=args.ray_gpus_per_actor,
    )
    to_npz = bool(args.out) and args.out.lower().endswith(".npz")
    # Resolved here so that the summary can report the files a folder scan left out.
    images = resolve_source(
        args.source, path_column=args.path_column, label_column=args.label_column
    )
    embeddings = extractor.extract(images, out=None if to_npz else args.out)
    if to_npz:
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
    from featx.classifier import fit_classifier, save_classifier

    model = fit_classifier(
        args.source,
        head=args.head,
        head_params=dict(args.param),
        backbone=args.backbone,
        **_network(args),
        **_run(args),
    )
    save_classifier(model, args.out)
    size = os.path.getsize(args.out)
    result = {
        "out": args.out,
        "bytes": size,
        "classes": [str(c) for c in model.classes_],
        "head": args.head,
        "backbone": args.backbone,
    }
    return result, f"wrote {args.out} ({size / 1e6:.2f} MB, {len(model.classes_)} classes)"


def _predict(args: argparse.Namespace) -> Result:
    from featx.classifier import iter_predictions, load_classifier

    model = load_classifier(args.model, trusted=args.trust, trust_pickle=args.trust_pickle)
    if args.top < 1:
        raise ValueError(f"--top {args.top}: expected at least 1.")
    classes = [str(c) for c in model.classes_]
    k = min(args.top, len(classes))
    out = Path(args.csv) if args.csv else None
    partial = out.with_name(out.name + ".partial") if out else None
    rows: list[dict[str, Any]] = []
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
                    rows.append(_json_row(row))
                else:
                    print(_text_row(row), flush=True)
            if f is not None:
                f.flush()
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
    if args.json:
        summary["predictions"] = rows
    return summary, "\n".join(lines)


def _export(args: argparse.Namespace) -> Result:
    from featx.classifier import load_classifier
    from featx.exporting import export

    model = load_classifier(args.model, trusted=args.trust)
    result = export(model, args.out, format=args.format, quantize=args.quantize)
    return result, (
        f"wrote {result['path']} ({result['format']}, {result['bytes'] / 1e6:.1f} MB, "
        f"{len(result['classes'])} classes, input {result['input_size'][0]}x"
        f"{result['input_size'][1]} uint8 RGB); classes and input in {result['metadata']}"
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
    return {**result.summary(), "csv": args.csv}, result.table.to_string(index=False)


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
        log=None if args.quiet or args.json else print,
    )
    if args.csv:
        found.results.to_csv(args.csv, index=False)
    columns = ["name", "params", "score", "outer_accuracy", "dim", "ms_per_image"]
    table = found.results[columns].to_string(index=False)
    score = "mean outer-fold accuracy" if found.protocol == "nested-cv" else "test accuracy"
    text = (
        f"{table}\n{found.protocol}: {score} of the tuned pipeline {found.accuracy:.4f} "
        f"(baseline {found.results['name'].iloc[0]}: {found.baseline_accuracy:.4f}); "
        f"chosen: {found.results.loc[found.results['best'], 'name'].iloc[0]} "
        f"{found.best['params']}"
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
        log=(lambda _: None) if args.json else print,
    )
    return result, f"summary: {result['summary']}"


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featx`` command; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    args = _parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        # With --json, stdout carries exactly one JSON object: anything else printed during
        # the run (Keras' download progress, for one) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result, text = _COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        message = str(exc)
        if getattr(exc, "reason", None) is not None:  # a DecodeError: the CLI's own option
            message = message.replace('Pass on_error="skip"', "Pass --on-error skip")
        print(f"featx {args.command}: error: {message}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=True) if as_json else text)
    failed_check = args.command == "cache" and args.action == "verify" and not result["ok"]
    return 1 if failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
