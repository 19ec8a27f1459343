"""The ``featx`` command: each subcommand parses its arguments and calls one public function."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

__all__ = ["main"]


def _weights(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _size(value: str) -> int | tuple[int, int]:
    parts = value.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {value!r}: expected N or HxW") from None
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    raise argparse.ArgumentTypeError(f"--size {value!r}: expected N or HxW")


def _cache_dir(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _add_backbone_options(p: argparse.ArgumentParser, default_weights: str | None) -> None:
    p.add_argument("--backbone", default="MobileNetV2", help="registry name, or a .keras/.h5 file")
    p.add_argument(
        "--weights",
        type=_weights,
        default=default_weights,
        help="imagenet | none (seeded random init) | PATH to a weights file",
    )
    p.add_argument("--size", type=_size, default=None, help="input size N or HxW")
    p.add_argument("--pooling", choices=("avg", "max"), default="avg")
    p.add_argument("--layer", default=None, help="embed this layer instead of the last block")
    p.add_argument("--resize", choices=("stretch", "center_crop"), default="stretch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of --weights none")
    p.add_argument(
        "--cache-dir",
        type=_cache_dir,
        default="auto",
        help="cache folder (default $FEATX_CACHE_DIR or ./cache); none disables it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx", description="Frozen pretrained Keras CNNs as cached feature extractors."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="embed a folder or list of images into the cache")
    p.add_argument("source", help="a class-per-folder directory or an image file")
    _add_backbone_options(p, default_weights="imagenet")
    p.add_argument("--out", default=None, help="also write the embeddings to FILE.npz")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")

    p = sub.add_parser("backbones", help="list the registry")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cache", help="show or clear the embedding cache")
    p.add_argument("action", choices=("info", "clear"))
    p.add_argument("--cache-dir", default="auto")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the first thing to run: extract, cache and classify")
    p.add_argument("--data", default=None, help="a class-per-folder directory (default: digits)")
    _add_backbone_options(p, default_weights=None)
    return parser


Result = tuple[dict[str, Any], str]


def _extract(args: argparse.Namespace) -> Result:
    from featx.extract import Extractor

    extractor = Extractor(
        args.backbone,
        weights=args.weights,
        input_size=args.size,
        pooling=args.pooling,
        layer=args.layer,
        resize=args.resize,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        seed=args.seed,
        on_error=args.on_error,
        verbose=not args.quiet,
    )
    embeddings = extractor.extract(args.source)
    if args.out:
        embeddings.save(args.out)
    summary = embeddings.summary()
    summary["out"] = args.out
    lines = [
        f"{summary['n_images']} images -> {summary['dim']}-d embeddings in "
        f"{summary['seconds']:.2f} s ({summary['images_per_second']} images/s)",
        f"cache: {summary['cache_hits']} hits, {summary['cache_misses']} computed "
        f"({extractor.cache.location or 'disabled'})",
    ]
    lines += [f"failed: {f['input']}: {f['reason']}" for f in summary["failed"]]
    if args.out:
        lines.append(f"wrote {args.out}")
    return summary, "\n".join(lines)


def _backbones(args: argparse.Namespace) -> Result:
    from featx.backbones import list_backbones

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


def _cache(args: argparse.Namespace) -> Result:
    from featx.cache import EmbeddingCache, default_cache_dir

    cache = EmbeddingCache(default_cache_dir() if args.cache_dir == "auto" else args.cache_dir)
    if args.action == "clear":
        n = cache.clear()
        return (
            {"location": str(cache.location), "cleared": n},
            f"cleared {n} cached vectors from {cache.location}",
        )
    info = cache.info()
    lines = [
        f"cache at {info['location']}: {info['n_vectors']} vectors, {info['bytes'] / 1e6:.1f} MB"
    ]
    for entry in info["fingerprints"]:
        spec = entry["spec"]["backbone"]
        lines.append(
            f"  {entry['fingerprint'][:12]}  {spec['architecture'][:40]:<40} "
            f"{'x'.join(map(str, spec['input_size'])):>9} {spec['pooling']:<4} "
            f"{entry['n_vectors']:>8} x {entry['dim']}  weights {spec['weights'][:40]}"
        )
    return info, "\n".join(lines)


def _demo(args: argparse.Namespace) -> Result:
    from featx.demo import run_demo

    result = run_demo(
        data=args.data,
        backbone=args.backbone,
        weights=args.weights,
        input_size=args.size,
        pooling=args.pooling,
        layer=args.layer,
        resize=args.resize,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        seed=args.seed,
        verbose=not args.quiet,
        log=(lambda _: None) if args.json else print,
    )
    return result, f"report: {result['summary']}"


_COMMANDS = {"extract": _extract, "backbones": _backbones, "cache": _cache, "demo": _demo}


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
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=True) if as_json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
